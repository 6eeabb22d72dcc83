//! The real `controller` binary in `--dev`: it comes up with task 42
//! seeded, a signed push supersedes the seeded runs — observed only
//! through the HTTP API — an unsigned or wrongly signed push changes
//! nothing, both circuit breakers are exported, SIGTERM drains and exits
//! 0, and a bad flag is named.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Instant;

use serde_json::Value;
use support::{
    Running, SEED_HEAD, client, dev_push, get, keys, pushed_head, send, superseded, wait_for,
};

/// Runs long enough never to finish by themselves during a test.
const DEV: &[&str] = &["--dev", "--dev-run-seconds", "300"];

fn seeded(detail: &Value) -> bool {
    let runs = detail["runs"].as_array().cloned().unwrap_or_default();
    runs.len() == 3
        && runs
            .iter()
            .all(|r| r["head_sha"] == SEED_HEAD && r["phase"] == "Running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_comes_up_seeded_and_a_signed_push_supersedes_the_three_runs_and_moves_the_label() {
    let controller = Running::start(DEV, &[]).await;
    let task = format!("{}/v1/tasks/42", controller.url);
    assert_eq!(get(&format!("{}/readyz", controller.url)).await.status, 200);

    let before = wait_for(&task, "the seeded runs", seeded).await;
    assert_eq!(before["head_sha"], SEED_HEAD);
    assert_eq!(before["labels"], serde_json::json!(["ready-for-qa"]));
    assert_eq!(before["cancellations"], serde_json::json!([]));
    let mut roles: Vec<&str> = before["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["role"].as_str().unwrap())
        .collect();
    roles.sort_unstable();
    assert_eq!(roles, ["quality", "review", "testing"]);

    let started = Instant::now();
    let stdout = dev_push(&controller.url, &[]).await;
    assert!(stdout.contains("webhook answered 202"), "{stdout}");
    let new = pushed_head(&stdout);
    let after = wait_for(&task, "the supersession", |d| {
        superseded(d, SEED_HEAD, &new)
    })
    .await;
    let took = started.elapsed();
    eprintln!("dev flow: push to superseded (observed through the API) in {took:?}");

    let cancellation = &after["cancellations"][0];
    assert!(cancellation["correlation_id"].is_string());
    assert!(cancellation["finished_at"].as_str() >= cancellation["started_at"].as_str());
    let mut cancelled: Vec<&str> = cancellation["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    cancelled.sort_unstable();
    assert_eq!(
        cancelled,
        [
            "task-42-quality-9fceb02",
            "task-42-review-9fceb02",
            "task-42-testing-9fceb02"
        ]
    );

    let metrics = get(&format!("{}/metrics", controller.url)).await.text;
    for series in [
        "supersede_controller_info{",
        "supersede_dev_fleet_runs_started_total{role=\"quality\"} 2",
        "cancel_coordinator_",
        "recovery_",
        "state_store_",
    ] {
        assert!(metrics.contains(series), "no {series} in /metrics");
    }
    assert!(
        !controller.all_logs().contains("supersede-dev\""),
        "the webhook secret reached a log line"
    );

    let status = controller.terminate().await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_or_wrongly_signed_push_is_401_and_changes_nothing() {
    let controller = Running::start(DEV, &[]).await;
    let task = format!("{}/v1/tasks/42", controller.url);
    let before = wait_for(&task, "the seeded runs", seeded).await;

    let body = controller::dev::push::push_payload(
        "acme/widgets",
        "task-42-fix",
        SEED_HEAD,
        "2222222222222222222222222222222222222222",
        1_800_000_000,
    )
    .unwrap();
    let webhook = format!("{}/webhook/github", controller.url);
    let delivery = |signature: Option<String>| {
        let mut request = client()
            .post(&webhook)
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
            .body(body.clone());
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        request
    };
    assert_eq!(send(delivery(None)).await.status, 401);
    let wrong = github_webhook::sign(b"not-the-secret", body.as_bytes());
    assert_eq!(send(delivery(Some(wrong))).await.status, 401);

    // Longer than the fleet's pass and the coordinator's turn: had anything
    // been recorded, it would show.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let after = get(&task).await.json;
    assert_eq!(after, before, "a refused delivery changed the task");
    let listed = get(&format!("{}/v1/tasks", controller.url)).await.json;
    assert_eq!(listed[0]["head_sha"], SEED_HEAD);

    assert_eq!(controller.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_circuit_breakers_are_exported_closed_before_any_failure() {
    let controller = Running::start(DEV, &[]).await;
    let metrics = get(&format!("{}/metrics", controller.url)).await.text;
    for dependency in ["kubernetes", "github"] {
        let series = format!("cancel_coordinator_circuit_breaker_state{{name=\"{dependency}\"}} 0");
        assert!(metrics.contains(&series), "no {series} in /metrics");
    }
    assert_eq!(controller.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_dev_server_lists_its_task_and_sigterm_exits_zero() {
    let controller = Running::start(DEV, &[]).await;
    assert_eq!(
        get(&format!("{}/healthz", controller.url)).await.status,
        200
    );
    let list = get(&format!("{}/v1/tasks", controller.url)).await;
    assert_eq!(
        keys(&list.json[0]),
        [
            "active_operation",
            "head_sha",
            "needs_intervention",
            "status",
            "task_id"
        ]
    );
    let status = controller.terminate().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_bad_flag_is_refused_at_start_with_its_name_and_exit_code_2() {
    let output = tokio::process::Command::new(support::BIN)
        .args(["--dev", "--coordinator-workers", "0"])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("coordinator-workers"), "{stderr}");
}
