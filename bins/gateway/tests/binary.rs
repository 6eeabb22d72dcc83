//! The real `gateway` binary: `--help` names every environment variable,
//! a bad flag exits 2 with the flag named, and `--dev` serves a signal,
//! then drains and exits 0 on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

#[tokio::test]
async fn help_documents_every_option_with_its_environment_variable() {
    let output = Command::new(BIN).arg("--help").output().await.unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for (flag, env) in [
        ("--port", "PORT"),
        ("--bind", "BIND_ADDRESS"),
        ("--dev", "DEV"),
        ("--namespace", "NAMESPACE"),
        ("--identity", "POD_NAME"),
        ("--max-body-bytes", "MAX_BODY_BYTES"),
        ("--lease-duration", "LEASE_DURATION_SECONDS"),
        ("--lock-timeout", "LOCK_TIMEOUT_SECONDS"),
        ("--api-timeout", "API_TIMEOUT_SECONDS"),
        ("--shutdown-timeout", "SHUTDOWN_TIMEOUT_SECONDS"),
    ] {
        assert!(help.contains(flag), "{flag} missing in\n{help}");
        assert!(
            help.contains(&format!("[env: {env}=")),
            "{env} missing in\n{help}"
        );
    }
}

#[tokio::test]
async fn a_bad_flag_value_exits_2_naming_the_flag() {
    let output = Command::new(BIN)
        .args(["--dev", "--lease-duration", "1"])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--lease-duration"), "{stderr}");
}

#[tokio::test]
async fn dev_mode_serves_a_signal_then_drains_and_exits_0_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["--dev", "--port", "0"])
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            let log: serde_json::Value = serde_json::from_str(&line).unwrap();
            if log["fields"]["message"] == "gateway listening" {
                return log["fields"]["addr"].as_str().unwrap().to_owned();
            }
        }
    })
    .await
    .unwrap();
    let client = support::http();
    let url = format!("http://{addr}/api/v1/signals");
    let (status, body) = support::post(&client, &url, support::signal("fp-bin")).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = support::post(&client, &url, support::signal("fp-bin")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["occurrenceCount"], 2);
    drop(client);
    let pid = Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
