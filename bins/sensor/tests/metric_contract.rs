//! The metric contract, on the running binary: `sensor --dev` is started
//! and handed one signed `pull_request.synchronize` (so the families that
//! only have series once something happened have them), its `/metrics`
//! scraped, and every metric the shipped alert rules and dashboard expect
//! from the sensor must be in it (see `testkit::metrics_contract`), so that a
//! renamed metric breaks this test instead of silently disabling an alert.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use testkit::binary::spawn_until_logged;
use testkit::metrics_contract::check_exported;
use tokio::process::Command;

#[tokio::test]
async fn every_metric_the_rules_and_dashboard_expect_from_the_sensor_is_exported() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sensor"));
    command
        .args([
            "--dev",
            "--port",
            "0",
            "--webhook-secret",
            common::SECRET,
            "--repository",
            "acme/widgets",
            "--log-format",
            "json",
        ])
        .env_clear()
        .env("RUST_LOG", "info");
    let running = spawn_until_logged(command, "addr", Duration::from_secs(30))
        .await
        .unwrap();

    resilience::tls::ensure_crypto_provider();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{}", running.value);
    let body = common::pull_request("synchronize", common::NEW, jiff::Timestamp::now());
    let delivered = http
        .post(format!("{base}{}", sensor::WEBHOOK_PATH))
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", "metric-contract-1")
        .header("x-github-hook-id", "1")
        .header(
            "x-hub-signature-256",
            github_webhook::sign(common::SECRET.as_bytes(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), 202);
    // The delivery was recorded in the task's state before the 202.
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let exposition = response.text().await.unwrap();
    if let Err(broken) = check_exported("sensor", &exposition, 10) {
        panic!("{broken}");
    }
}
