//! The metric contract, on the running binary: `gateway --dev` is started
//! and handed one signal (so the lock's families that only have series once
//! a lock was taken have them), its `/metrics` scraped, and every metric the
//! shipped alert rules and dashboard expect from the gateway must be in it
//! (see `testkit::metrics_contract`), so that a renamed metric breaks this
//! test instead of silently disabling an alert.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use testkit::binary::spawn_until_logged;
use testkit::metrics_contract::check_exported;
use tokio::process::Command;

#[tokio::test]
async fn every_metric_the_rules_and_dashboard_expect_from_the_gateway_is_exported() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .args(["--dev", "--port", "0", "--log-format", "json"])
        .env_clear()
        .env("RUST_LOG", "info");
    let running = spawn_until_logged(command, "addr", Duration::from_secs(30))
        .await
        .unwrap();
    let client = support::http();
    let base = format!("http://{}", running.value);
    let (status, body) = support::post(
        &client,
        &format!("{base}/api/v1/signals"),
        support::signal("fp-metric-contract"),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let response = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let exposition = response.text().await.unwrap();
    if let Err(broken) = check_exported("gateway", &exposition, 5) {
        panic!("{broken}");
    }
}
