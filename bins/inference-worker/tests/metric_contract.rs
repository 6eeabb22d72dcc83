//! The metric contract, on the running binary: `inference-worker` is started
//! on its built-in token generator and streams one short job to its end (so
//! that the families that only have series once something happened have
//! them), its `/metrics`
//! scraped, and every metric the shipped alert rules and dashboard expect
//! from the inference worker must be in it (see `testkit::metrics_contract`), so that a
//! renamed metric breaks this test instead of silently disabling an alert.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use testkit::binary::spawn_until_logged;
use testkit::metrics_contract::check_exported;
use tokio::process::Command;

#[tokio::test]
async fn every_metric_the_rules_and_dashboard_expect_from_the_inference_worker_is_exported() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_inference-worker"));
    command
        .args(["--port", "0", "--log-format", "json"])
        .env_clear()
        .env("RUST_LOG", "info");
    let running = spawn_until_logged(command, "addr", Duration::from_secs(30))
        .await
        .unwrap();

    resilience::tls::ensure_crypto_provider();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let job = http
        .post(format!("http://{}/execute", running.value))
        .json(&serde_json::json!({"job_id": "metric-contract", "prompt": "p", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(job.status(), 200);
    let stream = job.text().await.unwrap();
    assert!(stream.contains("event: end"), "{stream}");
    // The stream's end is counted as the job is torn down: poll (at most
    // 10 s) until it is.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let exposition = loop {
        let response = http
            .get(format!("http://{}/metrics", running.value))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        if text.contains("inference_worker_streams_ended_total{") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ended stream was never counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Err(broken) = check_exported("inference-worker", &exposition, 4) {
        panic!("{broken}");
    }
}
