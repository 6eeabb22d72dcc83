//! The metric contract, on the running binary: `agent-runner` is started with
//! its stream on a closed loopback port (so it only retries), its `/metrics`
//! scraped, and every metric the shipped alert rules and dashboard expect
//! from the agent runner must be in it (see `testkit::metrics_contract`), so that a
//! renamed metric breaks this test instead of silently disabling an alert.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use testkit::binary::spawn_until_logged;
use testkit::metrics_contract::check_exported;
use tokio::process::Command;

#[tokio::test]
async fn every_metric_the_rules_and_dashboard_expect_from_the_agent_runner_is_exported() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agent-runner"));
    command
        .args([
            // Nothing listens on the loopback's port 9 (discard) in a test
            // sandbox: a refused connection is an unreachable stream.
            "--stream",
            "prod=http://127.0.0.1:9/incidents",
            "--agent-command",
            "true",
            "--metrics-port",
            "0",
            "--health-port",
            "0",
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    let running = spawn_until_logged(command, "metrics_addr", Duration::from_secs(30))
        .await
        .unwrap();

    resilience::tls::ensure_crypto_provider();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = http
        .get(format!("http://{}/metrics", running.value))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let exposition = response.text().await.unwrap();
    if let Err(broken) = check_exported("agent-runner", &exposition, 10) {
        panic!("{broken}");
    }
}
