//! The real `agent-runner` binary: `--version`, configuration errors,
//! `/metrics` over HTTP, and SIGTERM with agents in flight.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use support::{FakeStream, families, http, is_sample_of};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_agent-runner");

/// A running binary whose JSON log lines are collected.
struct Running {
    child: Child,
    logs: Arc<Mutex<Vec<Value>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Running {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let sink = Arc::clone(&logs);
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str(&line) {
                    Ok(value) => sink.lock().unwrap().push(value),
                    Err(_) => panic!("a log line is not JSON: {line}"),
                }
            }
        });
        Self {
            child,
            logs,
            reader,
        }
    }

    /// The first log line with `message`, waiting up to 30 s for it.
    async fn log(&self, message: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self.find(message) {
                return line;
            }
            assert!(Instant::now() < deadline, "no log {message:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn find(&self, message: &str) -> Option<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .cloned()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id().unwrap()).unwrap())
    }
}

async fn get(url: &str) -> (u16, String) {
    let response = http().get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn version_prints_the_version_commit_and_build_date() {
    let output = Command::new(BIN).arg("--version").output().await.unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let expected = format!(
        "agent-runner {} (commit {}, built {})\n",
        env!("CARGO_PKG_VERSION"),
        agent_runner::config::GIT_COMMIT,
        agent_runner::config::BUILD_DATE
    );
    assert_eq!(text, expected);
}

#[tokio::test]
async fn help_documents_every_option_with_its_environment_variable() {
    let output = Command::new(BIN).arg("--help").output().await.unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for (flag, env) in [
        ("--stream", "STREAMS"),
        ("--min-severity", "MIN_SEVERITY"),
        ("--max-queue-age", "MAX_QUEUE_AGE_SECONDS"),
        ("--queue-sweep-interval", "QUEUE_SWEEP_INTERVAL_SECONDS"),
        ("--agent-command", "AGENT_COMMAND"),
        ("--max-concurrent-agents", "MAX_CONCURRENT_AGENTS"),
        ("--agent-timeout", "AGENT_TIMEOUT_SECONDS"),
        ("--metrics-port", "METRICS_PORT"),
        ("--health-port", "HEALTH_PORT"),
        ("--shutdown-timeout", "SHUTDOWN_TIMEOUT_SECONDS"),
        (
            "--sse-reconnect-initial-delay",
            "SSE_RECONNECT_INITIAL_DELAY_SECONDS",
        ),
        (
            "--sse-reconnect-max-delay",
            "SSE_RECONNECT_MAX_DELAY_SECONDS",
        ),
        ("--bind", "BIND_ADDRESS"),
        ("--log-format", "LOG_FORMAT"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        assert!(help.contains(&format!("[env: {env}")), "{env} missing");
    }
}

#[tokio::test]
async fn invalid_settings_exit_2_naming_the_flag_and_flags_win_over_env() {
    let output = Command::new(BIN)
        .args([
            "--stream",
            "prod=http://127.0.0.1:1/",
            "--agent-command",
            "true",
        ])
        .env("AGENT_TIMEOUT_SECONDS", "0")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "agent-runner: invalid --agent-timeout: must be positive (1 to 86400), got 0"
    );

    let output = Command::new(BIN)
        .args([
            "--stream",
            "prod=http://127.0.0.1:1/",
            "--agent-command",
            "true",
            "--agent-timeout",
            "abc",
        ])
        .env("AGENT_TIMEOUT_SECONDS", "10")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "the flag wins over the env");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--agent-timeout"));

    let output = Command::new(BIN)
        .args(["--stream", "Prod=ftp://x/", "--agent-command", "true"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cluster name \"Prod\""));
}

#[tokio::test]
async fn metrics_lists_every_family_and_sigterm_drains_agents_then_exits_0() {
    let stream = FakeStream::start(Vec::new()).await;
    let out = tempfile::tempdir().unwrap();
    // fast-* agents finish in 1 s; the others ignore SIGTERM and would run for an hour.
    let script = format!(
        r#"case "$INCIDENT_ID" in fast-*) sleep 1; echo "$INCIDENT_ID" >> "{out}/finished" ;; *) trap '' TERM; sleep 3600 ;; esac"#,
        out = out.path().display()
    );
    let command = serde_json::to_string(&["sh", "-c", &script]).unwrap();
    let stream_arg = format!("local={}", stream.url());
    let runner = Running::spawn(&[
        "--stream",
        &stream_arg,
        "--agent-command",
        &command,
        "--metrics-port",
        "0",
        "--health-port",
        "0",
        "--shutdown-timeout",
        "3",
        "--agent-kill-grace",
        "1",
    ]);
    let started = runner.log("agent runner started").await;
    let metrics_addr = started["fields"]["metrics_addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let health_addr = started["fields"]["health_addr"]
        .as_str()
        .unwrap()
        .to_owned();
    runner.log("incident stream connected").await;

    let (status, text) = get(&format!("http://{metrics_addr}/metrics")).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for family in families() {
        assert!(
            names.iter().any(|name| is_sample_of(name, family)),
            "{family} missing from /metrics:\n{text}"
        );
    }
    assert!(text.contains(r#"agent_runner_sse_connections_active{cluster="local"} 1"#));
    assert_eq!(get(&format!("http://{health_addr}/readyz")).await.0, 200);

    stream.incident("fast-1", "error");
    stream.incident("slow-1", "critical");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = get(&format!("http://{health_addr}/v1/agents")).await;
        let agents: Value = serde_json::from_str(&body).unwrap();
        if agents["agents"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "two agents never ran: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let signalled = Instant::now();
    kill(runner.pid(), Signal::SIGTERM).unwrap();
    let mut child = runner.child;
    let logs = runner.logs;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the runner exits")
        .unwrap();
    let elapsed = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit 0 after the drain");
    // Every line the runner wrote before exiting has been read.
    tokio::time::timeout(Duration::from_secs(10), runner.reader)
        .await
        .expect("stdout reaches EOF")
        .unwrap();
    assert!(
        elapsed >= Duration::from_secs(3 + 1),
        "waited the shutdown timeout, then the kill grace: {elapsed:?}"
    );
    let logs = logs.lock().unwrap().clone();
    let find = |message: &str| {
        logs.iter()
            .find(|l| l["fields"]["message"] == message)
            .cloned()
            .unwrap_or_else(|| panic!("no log {message:?}"))
    };
    let shutting_down = find("Shutting down gracefully");
    assert_eq!(shutting_down["fields"]["in_flight"], 2);
    let done = find("shutdown complete");
    assert_eq!(done["fields"]["completed"], r#"["local/fast-1"]"#);
    assert_eq!(done["fields"]["interrupted"], r#"["local/slow-1"]"#);
    assert_eq!(
        std::fs::read_to_string(out.path().join("finished")).unwrap(),
        "fast-1\n",
        "the agent that could finish did"
    );
    let killed = logs
        .iter()
        .find(|l| {
            l["fields"]["message"] == "agent did not succeed"
                && l["fields"]["incident_id"] == "slow-1"
        })
        .unwrap();
    assert_eq!(killed["fields"]["status"], "interrupted");
    assert_eq!(killed["fields"]["stopped_by"], "killed");
}
