//! The metric contract, on the running binary: `controller --dev` is
//! started, handed one signed push with `dev-push` (so the families that
//! only have series once a cancellation ran have them), its `/metrics`
//! scraped once the supersession is visible in the API, and every metric the
//! shipped alert rules and dashboard expect from the controller must be in
//! it (see `testkit::metrics_contract`), so that a renamed metric breaks
//! this test instead of silently disabling an alert.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::{Running, SEED_HEAD, dev_push, get, pushed_head, superseded, wait_for};
use testkit::metrics_contract::check_exported;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_dashboard_expect_from_the_controller_is_exported() {
    let controller = Running::start(&["--dev", "--dev-run-seconds", "300"], &[]).await;
    let task = format!("{}/v1/tasks/42", controller.url);
    wait_for(&task, "the seeded runs", |d| d["head_sha"] == SEED_HEAD).await;
    let new = pushed_head(&dev_push(&controller.url, &[]).await);
    wait_for(&task, "the supersession", |d| {
        superseded(d, SEED_HEAD, &new)
    })
    .await;

    let scraped = get(&format!("{}/metrics", controller.url)).await;
    assert_eq!(scraped.status, 200);
    if let Err(broken) = check_exported("controller", &scraped.text, 20) {
        panic!("{broken}");
    }
    assert_eq!(controller.terminate().await.code(), Some(0));
}
