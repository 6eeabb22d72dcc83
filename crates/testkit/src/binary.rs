//! A binary under test: spawned with its stdout piped, its JSON log lines
//! read until one names where it listens, the rest drained in the
//! background so that it never blocks on a full pipe.
//!
//! The rule it keeps: the address comes from the binary's own log (it binds
//! port 0), never from a port the test guesses, so tests can run in
//! parallel; and the child is killed when the [`Spawned`] is dropped.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running binary and the value its log gave.
#[derive(Debug)]
pub struct Spawned {
    /// The child, killed on drop.
    pub child: Child,
    /// The value of the awaited log field (an address, `127.0.0.1:41234`).
    pub value: String,
}

/// Why a binary could not be started and read.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The process could not be started.
    #[error("cannot start the binary: {0}")]
    Spawn(#[source] std::io::Error),
    /// Its stdout ended, or a line was not JSON, before the field appeared.
    #[error("the binary's log ended or was not JSON before it logged `{field}`: {detail}")]
    Log {
        /// The awaited field.
        field: String,
        /// What was read instead.
        detail: String,
    },
    /// The field did not appear in time.
    #[error("the binary did not log `{field}` within {within:?}")]
    Timeout {
        /// The awaited field.
        field: String,
        /// How long it was given.
        within: Duration,
    },
}

/// Spawns `command` (stdout piped, killed on drop) and waits up to `within`
/// for the first JSON log line whose `fields.<field>` is a string, such as
/// the `addr` a server logs once it listens.
pub async fn spawn_until_logged(
    mut command: Command,
    field: &str,
    within: Duration,
) -> Result<Spawned, SpawnError> {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(SpawnError::Spawn)?;
    let log_error = |detail: String| SpawnError::Log {
        field: field.to_owned(),
        detail,
    };
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| log_error("stdout was not piped".to_owned()))?;
    let mut lines = BufReader::new(stdout).lines();
    let wanted = async {
        loop {
            let line = match lines.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) => return Err(log_error("end of output".to_owned())),
                Err(e) => return Err(log_error(e.to_string())),
            };
            let log: serde_json::Value =
                serde_json::from_str(&line).map_err(|_| log_error(line.clone()))?;
            if let Some(value) = log["fields"][field].as_str() {
                return Ok(value.to_owned());
            }
        }
    };
    let value = tokio::time::timeout(within, wanted)
        .await
        .map_err(|_| SpawnError::Timeout {
            field: field.to_owned(),
            within,
        })??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Spawned { child, value })
}
