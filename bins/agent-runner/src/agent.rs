//! Running one agent process for one incident.
//!
//! Rule kept here: however the agent ends — exit, timeout, cancel,
//! shutdown, a failed spawn — its whole process group is gone and its
//! temporary workspace is removed before [`run_agent`] returns, and its
//! output costs at most `output_limit` bytes per stream in memory.
//!
//! The agent gets the incident JSON on stdin (then EOF), `INCIDENT_ID`,
//! `CLUSTER`, `SEVERITY`, `AGENT_ID` and `AGENT_WORKSPACE` in its
//! environment (on top of the runner's own), and a fresh directory as its
//! working directory. Stopping it is [`resilience::terminate()`]: SIGTERM to
//! its process group, the kill grace, then SIGKILL.

use std::fmt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use job_tracker::{CancelReason, JobHandle};
use resilience::{TerminationOutcome, spawn_in_process_group, terminate, wait_group};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::AgentCommand;
use crate::filter::Incident;
use crate::metrics::AgentStatus;

/// How long output readers get to reach EOF after the process group is
/// gone. Only a grandchild that escaped the group (`setsid`) can hold a
/// pipe open longer; we stop reading rather than wait for it.
const OUTPUT_DRAIN_WAIT: Duration = Duration::from_secs(2);

/// How agents are started and stopped.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The program and its arguments.
    pub command: AgentCommand,
    /// The agent timeout (enforced by the job's deadline; logged as the threshold).
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Bytes kept of each of stdout and stderr (the last ones).
    pub output_limit: usize,
    /// Where workspaces are created; `None` for the system temporary directory.
    pub workspace_root: Option<PathBuf>,
}

/// What happened to one agent.
#[derive(Debug)]
pub struct AgentReport {
    /// How it ended.
    pub status: AgentStatus,
    /// Whether its process was started.
    pub started: bool,
    /// Its exit status, once reaped.
    pub exit: Option<ExitStatus>,
    /// How it was stopped, when it was.
    pub termination: Option<TerminationOutcome>,
    /// From spawn (or the attempt) to the end.
    pub duration: Duration,
    /// The end of its stdout.
    pub stdout: Captured,
    /// The end of its stderr.
    pub stderr: Captured,
    /// What went wrong on our side (spawn, workspace), if anything.
    pub error: Option<String>,
}

/// The last bytes of an output stream, and how many there were in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// At most the output limit: the last bytes written.
    pub tail: Vec<u8>,
    /// Bytes written in all.
    pub total: u64,
}

impl Captured {
    /// Whether bytes were dropped to stay within the limit.
    pub fn truncated(&self) -> bool {
        self.total > self.tail.len() as u64
    }
}

impl fmt::Display for Captured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.truncated() {
            write!(
                f,
                "[{} earlier bytes dropped] ",
                self.total - self.tail.len() as u64
            )?;
        }
        f.write_str(String::from_utf8_lossy(&self.tail).trim_end())
    }
}

/// Runs the agent for `incident` until it exits or `job` is cancelled
/// (deadline → timeout, client request → cancelled, shutdown →
/// interrupted). `on_spawn` runs once the process has started.
pub async fn run_agent(
    spec: &AgentSpec,
    incident: &Incident,
    job: &JobHandle,
    on_spawn: impl FnOnce(Option<u32>),
) -> AgentReport {
    let started_at = Instant::now();
    let failed_before_spawn = |error: String| AgentReport {
        status: AgentStatus::Failure,
        started: false,
        exit: None,
        termination: None,
        duration: started_at.elapsed(),
        stdout: Captured::default(),
        stderr: Captured::default(),
        error: Some(error),
    };
    let workspace = match &spec.workspace_root {
        Some(root) => tempfile::Builder::new().prefix("agent-").tempdir_in(root),
        None => tempfile::Builder::new().prefix("agent-").tempdir(),
    };
    let workspace = match workspace {
        Ok(dir) => dir,
        Err(error) => return failed_before_spawn(format!("cannot create the workspace: {error}")),
    };

    let mut command = Command::new(&spec.command.program);
    command
        .args(&spec.command.args)
        .current_dir(workspace.path())
        .env("INCIDENT_ID", &incident.id)
        .env("CLUSTER", &*incident.cluster)
        .env("SEVERITY", incident.severity.as_str())
        .env("AGENT_ID", job.id())
        .env("AGENT_WORKSPACE", workspace.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Last resort if this task is dropped mid-run (a panic elsewhere):
        // the leader is killed rather than left running unsupervised.
        .kill_on_drop(true);
    let mut child = match spawn_in_process_group(&mut command) {
        Ok(child) => child,
        Err(error) => {
            remove_workspace(workspace, job.id(), incident, None);
            return failed_before_spawn(format!(
                "cannot start {:?}: {error}",
                spec.command.program
            ));
        }
    };
    let pid = child.id();
    on_spawn(pid);
    tracing::info!(
        agent_id = job.id(),
        cluster = %incident.cluster,
        incident_id = %incident.id,
        severity = %incident.severity,
        pid,
        "agent started"
    );

    // Feed stdin concurrently: an agent that never reads it must not block us.
    let stdin = child.stdin.take().map(|mut stdin| {
        let input = format!("{}\n", incident.raw);
        tokio::spawn(async move {
            // A closed pipe (the agent ignores stdin) is fine.
            let _ = stdin.write_all(input.as_bytes()).await;
        })
    });
    let stdout = child
        .stdout
        .take()
        .map(|out| tokio::spawn(capture(out, spec.output_limit)));
    let stderr = child
        .stderr
        .take()
        .map(|err| tokio::spawn(capture(err, spec.output_limit)));

    let mut termination = None;
    let (status, exit, error) = tokio::select! {
        biased;
        exited = wait_group(&mut child) => match exited {
            Ok(exit) if exit.success() => (AgentStatus::Success, Some(exit), None),
            Ok(exit) => (AgentStatus::Failure, Some(exit), None),
            Err(error) => (AgentStatus::Failure, None, Some(error.to_string())),
        },
        () = job.cancelled() => {
            let status = match job.reason() {
                Some(CancelReason::Deadline) => AgentStatus::Timeout,
                Some(CancelReason::Shutdown) => AgentStatus::Interrupted,
                Some(CancelReason::ClientRequest | CancelReason::ClientGone) | None => {
                    AgentStatus::Cancelled
                }
            };
            if status == AgentStatus::Timeout {
                tracing::warn!(
                    agent_id = job.id(),
                    cluster = %incident.cluster,
                    incident_id = %incident.id,
                    duration_seconds = started_at.elapsed().as_secs_f64(),
                    threshold_seconds = spec.timeout.as_secs_f64(),
                    kill_grace_seconds = spec.kill_grace.as_secs_f64(),
                    "agent timed out; sending SIGTERM to its process group"
                );
            } else {
                tracing::info!(
                    agent_id = job.id(),
                    cluster = %incident.cluster,
                    incident_id = %incident.id,
                    status = status.as_str(),
                    "stopping agent"
                );
            }
            match terminate(&mut child, spec.kill_grace).await {
                Ok(outcome) => {
                    termination = Some(outcome);
                    (status, Some(outcome.status()), None)
                }
                Err(error) => (status, None, Some(format!("cannot stop the agent: {error}"))),
            }
        }
    };
    let duration = started_at.elapsed();

    if let Some(stdin) = stdin {
        stdin.abort();
    }
    let stdout = collect(stdout).await;
    let stderr = collect(stderr).await;
    remove_workspace(workspace, job.id(), incident, Some(status));

    AgentReport {
        status,
        started: true,
        exit,
        termination,
        duration,
        stdout,
        stderr,
        error,
    }
}

/// Reads `output` to the end, keeping the last `limit` bytes.
async fn capture(mut output: impl AsyncRead + Unpin, limit: usize) -> Captured {
    let mut captured = Captured::default();
    let mut buffer = [0_u8; 8 * 1024];
    loop {
        match output.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                captured.total += n as u64;
                captured
                    .tail
                    .extend_from_slice(buffer.get(..n).unwrap_or_default());
                // Trim in batches so a chatty agent costs O(bytes), not O(bytes × limit).
                if captured.tail.len() > limit.saturating_mul(2).max(buffer.len()) {
                    let excess = captured.tail.len() - limit;
                    captured.tail.drain(..excess);
                }
            }
        }
    }
    if captured.tail.len() > limit {
        let excess = captured.tail.len() - limit;
        captured.tail.drain(..excess);
    }
    captured
}

async fn collect(reader: Option<JoinHandle<Captured>>) -> Captured {
    let Some(mut reader) = reader else {
        return Captured::default();
    };
    match tokio::time::timeout(OUTPUT_DRAIN_WAIT, &mut reader).await {
        Ok(Ok(captured)) => captured,
        Ok(Err(_)) => Captured::default(),
        Err(_) => {
            tracing::warn!(
                "agent output still open after its process group ended (an escaped grandchild?); no longer reading it"
            );
            reader.abort();
            Captured::default()
        }
    }
}

/// Removes the workspace. For an agent that was stopped (timeout, cancel,
/// shutdown) an INFO line confirms it, since that is the cleanup an operator
/// wants to see; an agent that ended by itself already has its INFO line. A
/// failure is always a WARN. `status` is `None` when the agent never started.
fn remove_workspace(
    workspace: tempfile::TempDir,
    agent_id: &str,
    incident: &Incident,
    status: Option<AgentStatus>,
) {
    let path = workspace.path().to_owned();
    let status_label = status.map_or("not_started", AgentStatus::as_str);
    match workspace.close() {
        Ok(()) if status.is_some_and(AgentStatus::was_stopped) => tracing::info!(
            agent_id,
            cluster = %incident.cluster,
            incident_id = %incident.id,
            status = status_label,
            workspace = %path.display(),
            "agent workspace removed"
        ),
        Ok(()) => {}
        Err(error) => tracing::warn!(
            agent_id,
            cluster = %incident.cluster,
            incident_id = %incident.id,
            status = status_label,
            workspace = %path.display(),
            %error,
            "cannot remove the agent workspace"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn capture_keeps_only_the_last_bytes_and_counts_all() {
        let data: Vec<u8> = (0..100_000_u32).map(|i| (i % 251) as u8).collect();
        let captured = capture(&data[..], 1000).await;
        assert_eq!(captured.total, 100_000);
        assert_eq!(captured.tail, data[99_000..]);
        assert!(captured.truncated());
        let small = capture(&b"hello\n"[..], 1000).await;
        assert_eq!(small.to_string(), "hello");
        assert!(!small.truncated());
    }

    #[tokio::test]
    async fn a_zero_limit_keeps_nothing_but_still_drains() {
        let captured = capture(&[7_u8; 50_000][..], 0).await;
        assert_eq!(captured.total, 50_000);
        assert!(captured.tail.is_empty());
    }
}
