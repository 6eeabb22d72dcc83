//! The controller binary as a process: started with flags, its JSON log
//! lines collected, its address read from the `controller listening`
//! line, and its HTTP API called with a small client.

#![allow(dead_code)]

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_controller");

/// Guard against hanging forever; never a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The seeded head (`controller::dev::seed::SEED_HEAD`).
pub const SEED_HEAD: &str = controller::dev::seed::SEED_HEAD;

/// A running controller.
pub struct Running {
    child: Child,
    logs: Arc<Mutex<Vec<Value>>>,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Running {
    /// Starts `controller <args> --port 0 --log-format json` with only
    /// `PATH` and `env` in its environment, and waits until it listens.
    pub async fn start(args: &[&str], env: &[(&str, &Path)]) -> Self {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .args(["--port", "0", "--log-format", "json"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let sink = Arc::clone(&logs);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| panic!("a log line is not JSON: {line}"));
                sink.lock().unwrap().push(value);
            }
        });
        let mut running = Self {
            child,
            logs,
            url: String::new(),
        };
        let listening = running.log("controller listening").await;
        let addr = listening["fields"]["addr"].as_str().unwrap().to_owned();
        running.url = format!("http://{addr}");
        running
    }

    /// The first log line with `message`, waiting for it.
    pub async fn log(&self, message: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.find(message) {
                return line;
            }
            assert!(Instant::now() < deadline, "no log {message:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The first log line with `message`, if there is one yet.
    pub fn find(&self, message: &str) -> Option<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .cloned()
    }

    /// Every log line so far, as text (to look for what must not be there).
    pub fn all_logs(&self) -> String {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn terminate(mut self) -> ExitStatus {
        let pid = Pid::from_raw(i32::try_from(self.child.id().unwrap()).unwrap());
        kill(pid, Signal::SIGTERM).unwrap();
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the controller did not exit after SIGTERM")
            .unwrap()
    }
}

/// An HTTP answer: status and JSON body (`Null` when it is not JSON).
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as JSON.
    pub json: Value,
    /// The body as text.
    pub text: String,
}

/// A client with a bound on every call.
pub fn client() -> reqwest::Client {
    resilience::tls::ensure_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Sends `request` and reads the answer.
pub async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    Answer {
        status,
        headers,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// `GET url`.
pub async fn get(url: &str) -> Answer {
    send(client().get(url)).await
}

/// Polls `GET url` until `done` holds for its JSON, returning it.
pub async fn wait_for(url: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = get(url).await;
        if answer.status == 200 && done(&answer.json) {
            return answer.json;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}; last answer {}",
            answer.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sorted object keys of `value`.
pub fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// `controller dev-push --url <url> <args>`, which must succeed.
pub async fn dev_push(url: &str, args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(["dev-push", "--url", url])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "dev-push failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The new head `dev-push` reported (`… -> <sha>`).
pub fn pushed_head(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("pushed ")?
                .rsplit_once(" -> ")
                .map(|(_, h)| h.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no pushed head in {stdout}"))
}

/// Whether task `detail` shows the supersession of `old` by `new`: one
/// cancellation of the three old runs, the three roles running on `new`
/// and nothing left on `old`, the label moved.
pub fn superseded(detail: &Value, old: &str, new: &str) -> bool {
    let runs = detail["runs"].as_array().cloned().unwrap_or_default();
    let on_new: Vec<&Value> = runs.iter().filter(|r| r["head_sha"] == new).collect();
    let mut roles: Vec<&str> = on_new.iter().filter_map(|r| r["role"].as_str()).collect();
    roles.sort_unstable();
    let cancelled = detail["cancellations"].as_array().is_some_and(|c| {
        c.iter().any(|c| {
            c["outcome"] == "Cancelled"
                && c["superseded_head"] == old
                && c["kept_head"] == new
                && c["runs"].as_array().is_some_and(|r| r.len() == 3)
        })
    });
    detail["head_sha"] == new
        && cancelled
        && roles == ["quality", "review", "testing"]
        && on_new.iter().all(|r| r["phase"] == "Running")
        && runs.iter().all(|r| r["head_sha"] != old)
        && detail["labels"] == serde_json::json!(["needs-qa"])
        && detail["operation"].is_null()
}
