//! The sensor over HTTP on memory backends: what each delivery is answered,
//! what it records, what it hands to the coordinator, and what is counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use sensor::Config;
use state_store::{Document, Error as StateError, StateBackend, StoredDocument};

/// GitHub's example payloads, signed: each is accepted or ignored as its
/// event requires, and what is accepted is recorded for its task.
#[tokio::test]
async fn every_fixture_is_accepted_or_ignored_as_its_event_requires() {
    let world = World::new();
    let config = Config {
        // The fixtures push `master` and open a pull request from `changes`.
        branch_pattern: "^(?P<task>master|changes)$".into(),
        ..config()
    };
    let sensor = Running::start(&config, world.parts(&config)).await;

    let ping = sensor.deliver("ping", PING, "g-ping").await;
    assert_eq!((ping.status(), ping.field("status")), (200, "pong"));

    let push = sensor.deliver("push", PUSH, "g-push").await;
    assert_eq!((push.status(), push.field("status")), (202, "accepted"));
    assert_eq!(push.field("task_id"), "master");
    assert_eq!(
        push.field("head_sha"),
        "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
    );
    assert_eq!(push.field("correlation_id"), "g-push");

    let opened = sensor.deliver("pull_request", OPENED, "g-opened").await;
    assert_eq!((opened.status(), opened.field("status")), (202, "accepted"));
    let sync = sensor.deliver("pull_request", SYNCHRONIZE, "g-sync").await;
    assert_eq!((sync.status(), sync.field("status")), (202, "accepted"));
    assert_eq!(sync.field("task_id"), "changes");
    let closed = sensor.deliver("pull_request", CLOSED, "g-closed").await;
    assert_eq!((closed.status(), closed.field("status")), (202, "accepted"));
    let labeled = sensor.deliver("pull_request", LABELED, "g-labeled").await;
    assert_eq!(
        (
            labeled.status(),
            labeled.field("status"),
            labeled.field("reason")
        ),
        (202, "ignored", "action")
    );

    let master = world.state("master").await.unwrap();
    assert_eq!(
        master.latest_head.unwrap().sha,
        "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
    );
    let changes = world.state("changes").await.unwrap();
    assert_eq!(
        changes.latest_head.as_ref().unwrap().sha,
        "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
    );
    assert_eq!(
        changes.recent_deliveries,
        ["g-opened:1", "g-sync:1", "g-closed:1"]
    );
    assert_eq!(
        sensor
            .metric(r#"sensor_deliveries_total{event="pull_request",action="other",outcome="ignored",reason="action"}"#)
            .await,
        1.0
    );
    assert_eq!(sensor.stop().await.exit_code(), 0);
}

#[tokio::test]
async fn a_push_to_a_task_branch_records_the_fact_then_cancels_the_stale_runs() {
    let world = World::new();
    world.pull_at(NEW);
    let stale = world.agents_on(OLD);
    let current = world.agents_on(NEW);
    let sensor = Running::start(&config(), world.parts(&config())).await;

    let answer = sensor
        .deliver("push", &push(BRANCH, OLD, NEW, at(10)), "g-1")
        .await;
    assert_eq!(answer.status(), 202, "{answer:?}");
    assert_eq!(answer.field("task_id"), TASK);
    assert_eq!(answer.field("head_sha"), NEW);
    // The fact was stored before the answer.
    let state = world.state(TASK).await.unwrap();
    let head = state.latest_head.unwrap();
    assert_eq!((head.sha.as_str(), head.pushed_at), (NEW, at(10)));
    assert_eq!(
        state.pending_supersessions[0].correlation_id.as_deref(),
        Some("g-1")
    );

    world.until_gone(&stale).await;
    assert!(current.iter().all(|r| world.workloads.get(r).is_some()));
    let state = world
        .state_when(TASK, |s| !s.cancellation_history.is_empty())
        .await;
    let record = state.cancellation_history.last().unwrap();
    assert_eq!(record.new_head_sha, NEW);
    assert_eq!(record.correlation_id.as_deref(), Some("g-1"));
    assert_eq!(
        sensor
            .metric(r#"sensor_handoffs_total{outcome="queued"}"#)
            .await,
        1.0
    );
    assert_eq!(sensor.stop().await.exit_code(), 0);
}

#[tokio::test]
async fn a_closed_pull_request_cancels_every_remaining_run_of_its_task() {
    let world = World::new();
    let runs = world.agents_on(NEW);
    let sensor = Running::start(&config(), world.parts(&config())).await;
    world
        .github
        .set_pull(
            &world.pr,
            label_cas::PullRequest::open(NEW, BRANCH).unwrap(),
        )
        .unwrap();
    world
        .github
        .update(&world.pr, |p| p.state = label_cas::PullState::Closed)
        .unwrap();

    let answer = sensor
        .deliver(
            "pull_request",
            &pull_request("closed", NEW, at(20)),
            "g-close",
        )
        .await;
    assert_eq!(answer.status(), 202, "{answer:?}");
    world.until_gone(&runs).await;

    // Switched off: a close is ignored and nothing is cancelled.
    let world = World::new();
    let runs = world.agents_on(NEW);
    let config = Config {
        cancel_on_close: false,
        ..config()
    };
    let off = Running::start(&config, world.parts(&config)).await;
    let answer = off
        .deliver(
            "pull_request",
            &pull_request("closed", NEW, at(20)),
            "g-close",
        )
        .await;
    assert_eq!(answer.field("reason"), "close_not_cancelling");
    assert!(world.state(TASK).await.is_none());
    assert!(runs.iter().all(|r| world.workloads.get(r).is_some()));
}

#[tokio::test]
async fn out_of_order_deliveries_cannot_resurrect_an_older_head() {
    let world = World::new();
    world.pull_at(NEWER);
    let sensor = Running::start(&config(), world.parts(&config())).await;
    let newer = sensor
        .deliver(
            "pull_request",
            &pull_request("synchronize", NEWER, at(30)),
            "g-b",
        )
        .await;
    assert_eq!(newer.status(), 202);
    let older = sensor
        .deliver(
            "pull_request",
            &pull_request("synchronize", NEW, at(20)),
            "g-a",
        )
        .await;
    // Recorded (its delivery is remembered) but the head stays the newest.
    assert_eq!(older.status(), 202);
    let state = world.state(TASK).await.unwrap();
    assert_eq!(state.latest_head.unwrap().sha, NEWER);
    assert_eq!(state.recent_deliveries, ["g-b:1", "g-a:1"]);
}

#[tokio::test]
async fn a_redelivery_is_recognised_in_memory_in_the_state_after_a_restart_and_per_hook() {
    let world = World::new();
    let body = pull_request("synchronize", NEW, at(10));
    let first = Running::start(&config(), world.parts(&config())).await;
    assert_eq!(
        first
            .deliver("pull_request", &body, "g-1")
            .await
            .field("status"),
        "accepted"
    );
    let again = first.deliver("pull_request", &body, "g-1").await;
    assert_eq!((again.status(), again.field("status")), (202, "duplicate"));
    assert_eq!(again.field("task_id"), TASK);
    assert_eq!(
        first
            .metric(r#"sensor_duplicates_total{found_in="memory"}"#)
            .await,
        1.0
    );
    assert_eq!(first.stop().await.exit_code(), 0);

    // A new process: its memory is empty, the task's state remembers.
    let second = Running::start(&config(), world.parts(&config())).await;
    let redelivered = second.deliver("pull_request", &body, "g-1").await;
    assert_eq!(
        (redelivered.status(), redelivered.field("status")),
        (202, "duplicate")
    );
    assert_eq!(
        second
            .metric(r#"sensor_duplicates_total{found_in="state"}"#)
            .await,
        1.0
    );
    // The same GUID sent by another hook is another delivery.
    let other_hook = second.deliver_from("pull_request", &body, "g-1", "2").await;
    assert_eq!(other_hook.field("status"), "accepted");
    let state = world.state(TASK).await.unwrap();
    assert_eq!(state.recent_deliveries, ["g-1:1", "g-1:2"]);
    let head = state.latest_head.unwrap();
    assert_eq!(
        (head.sha.as_str(), head.delivery_id.as_str()),
        (NEW, "g-1"),
        "one fact for one push"
    );
}

#[tokio::test]
async fn what_is_refused_is_answered_with_its_status_and_counted() {
    let world = World::new();
    let config = Config {
        body_limit_bytes: 64 * 1024,
        ..config()
    };
    let sensor = Running::start(&config, world.parts(&config)).await;
    let body = pull_request("synchronize", NEW, at(1));

    let too_large = sensor
        .send(
            sensor
                .webhook("push", "g-big", "1")
                .header("content-type", "application/json")
                .header(
                    "x-hub-signature-256",
                    github_webhook::sign(SECRET.as_bytes(), &[b' '; 70_000]),
                )
                .body(vec![b' '; 70_000]),
        )
        .await;
    assert_eq!(too_large.status(), 413);
    let wrong_type = sensor
        .send(
            sensor
                .webhook("pull_request", "g-type", "1")
                .header("content-type", "text/plain")
                .body(body.clone()),
        )
        .await;
    assert_eq!(wrong_type.status(), 415);
    assert!(wrong_type.field("message").contains("application/json"));
    let unsigned = sensor
        .send(
            sensor
                .webhook("pull_request", "g-unsigned", "1")
                .header("content-type", "application/json")
                .body(body.clone()),
        )
        .await;
    assert_eq!(unsigned.status(), 401);
    let forged = sensor
        .send(
            sensor
                .webhook("pull_request", "g-forged", "1")
                .header("content-type", "application/json")
                .header(
                    "x-hub-signature-256",
                    github_webhook::sign(b"guess", body.as_bytes()),
                )
                .body(body.clone()),
        )
        .await;
    assert_eq!(forged.status(), 401);
    assert!(!forged.body.to_string().contains("guess"));
    let malformed = sensor
        .deliver("pull_request", "{\"action\":", "g-bad")
        .await;
    assert_eq!(malformed.status(), 400);
    let mut missing: serde_json::Value = serde_json::from_str(&body).unwrap();
    missing["pull_request"]
        .as_object_mut()
        .unwrap()
        .remove("head");
    let missing = sensor
        .deliver("pull_request", &missing.to_string(), "g-missing")
        .await;
    assert_eq!(missing.status(), 400);
    assert!(missing.field("message").contains("head"), "{missing:?}");

    assert!(
        world.state(TASK).await.is_none(),
        "nothing refused was recorded"
    );
    for (reason, n) in [("signature_missing", 1.0), ("signature_mismatch", 1.0)] {
        assert_eq!(
            sensor
                .metric(&format!(
                    r#"sensor_signature_failures_total{{reason="{}"}}"#,
                    &reason[10..]
                ))
                .await,
            n,
            "{reason}"
        );
    }
    assert_eq!(
        sensor
            .metric(r#"sensor_deliveries_total{event="pull_request",action="",outcome="rejected",reason="content_type"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_delivery_signed_with_the_previous_secret_is_accepted_during_rotation() {
    let world = World::new();
    let sensor = Running::start(&config(), world.parts(&config())).await;
    let body = pull_request("synchronize", NEW, at(1));
    let answer = sensor
        .send(
            sensor
                .webhook("pull_request", "g-rotated", "1")
                .header("content-type", "application/json")
                .header(
                    "x-hub-signature-256",
                    github_webhook::sign(PREVIOUS.as_bytes(), body.as_bytes()),
                )
                .body(body),
        )
        .await;
    assert_eq!(answer.field("status"), "accepted");
}

#[tokio::test]
async fn ignored_deliveries_record_nothing_and_say_why() {
    let world = World::new();
    let config = Config {
        senders: vec!["Codertocat".into()],
        ..config()
    };
    let sensor = Running::start(&config, world.parts(&config)).await;
    let cases = [
        ("push", push("main", OLD, NEW, at(1)), "unmapped"),
        ("push", push(BRANCH, NEW, NEW, at(1)), "no_change"),
        (
            "push",
            push(
                BRANCH,
                NEW,
                "0000000000000000000000000000000000000000",
                at(1),
            ),
            "branch_deleted",
        ),
        (
            "push",
            push(BRANCH, OLD, NEW, at(1)).replace("refs/heads/", "refs/tags/"),
            "tag",
        ),
        (
            "create",
            "{\"ref\":\"task-42-fix\",\"ref_type\":\"branch\"}".to_owned(),
            "create",
        ),
        (
            "delete",
            "{\"ref\":\"task-42-fix\",\"ref_type\":\"branch\"}".to_owned(),
            "delete",
        ),
        ("issues", "{\"action\":\"opened\"}".to_owned(), "event"),
        (
            "pull_request",
            pull_request("synchronize", NEW, at(1)).replacen(
                "\"synchronize\"",
                "\"time_travelled\"",
                1,
            ),
            "unknown_action",
        ),
        (
            "push",
            push(BRANCH, OLD, NEW, at(1)).replace(
                "\"full_name\":\"acme/widgets\"",
                "\"full_name\":\"acme/other\"",
            ),
            "repository",
        ),
    ];
    for (i, (event, body, reason)) in cases.iter().enumerate() {
        let answer = sensor.deliver(event, body, &format!("g-{i}")).await;
        assert_eq!(
            (
                answer.status(),
                answer.field("status"),
                answer.field("reason")
            ),
            (202, "ignored", *reason),
            "{event} {answer:?}"
        );
    }
    // Only the implementation agent's pushes supersede.
    let by_human = pull_request("synchronize", NEW, at(1))
        .replace("\"login\":\"Codertocat\"", "\"login\":\"human\"");
    let by_human_answer = sensor.deliver("pull_request", &by_human, "g-h").await;
    assert_eq!(
        by_human_answer.field("reason"),
        "sender",
        "{by_human_answer:?}"
    );
    assert!(world.state(TASK).await.is_none());
}

/// A state backend that fails every call: by never answering (an API
/// server that hangs) or by refusing at once (403).
#[derive(Clone, Copy)]
enum Broken {
    Hanging,
    Refusing,
}

impl Broken {
    async fn fail<T>(self) -> state_store::Result<T> {
        match self {
            Self::Hanging => std::future::pending().await,
            Self::Refusing => Err(unavailable()),
        }
    }
}

#[async_trait::async_trait]
impl StateBackend for Broken {
    async fn get(&self, _: &str) -> state_store::Result<Option<StoredDocument>> {
        self.fail().await
    }
    async fn create(&self, _: &str, _: Document) -> state_store::Result<StoredDocument> {
        self.fail().await
    }
    async fn replace(&self, _: &str, _: &str, _: Document) -> state_store::Result<StoredDocument> {
        self.fail().await
    }
    async fn delete(&self, _: &str, _: &str) -> state_store::Result<()> {
        self.fail().await
    }
    async fn list(
        &self,
        _: &std::collections::BTreeMap<String, String>,
    ) -> state_store::Result<Vec<StoredDocument>> {
        self.fail().await
    }
}

fn unavailable() -> StateError {
    StateError::Api {
        code: 403,
        reason: "Forbidden".into(),
        message: "configmaps is forbidden".into(),
        retry_after: None,
    }
}

#[tokio::test]
async fn a_fact_that_cannot_be_stored_in_time_is_answered_503_never_202() {
    let world = World::on(Arc::new(Broken::Hanging));
    let config = Config {
        state_write_timeout_seconds: 1,
        ..config()
    };
    let sensor = Running::start(&config, world.parts(&config)).await;
    let started = std::time::Instant::now();
    let answer = sensor
        .deliver(
            "pull_request",
            &pull_request("synchronize", NEW, at(1)),
            "g-1",
        )
        .await;
    assert_eq!(
        (answer.status(), answer.field("error")),
        (503, "state_timeout")
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "answered within GitHub's 10 s"
    );
    let readyz = sensor.http.get(sensor.url("/readyz")).send().await.unwrap();
    assert_eq!(
        readyz.status(),
        503,
        "not ready while the state cannot be read"
    );

    let world = World::on(Arc::new(Broken::Refusing));
    let sensor = Running::start(&config, world.parts(&config)).await;
    let answer = sensor
        .deliver(
            "pull_request",
            &pull_request("synchronize", NEW, at(1)),
            "g-2",
        )
        .await;
    assert_eq!(
        (answer.status(), answer.field("error")),
        (503, "state_unavailable")
    );
    assert!(answer.field("message").contains("forbidden"), "{answer:?}");
}

#[tokio::test]
async fn probes_and_metrics_are_served_and_shutdown_drains_to_exit_zero() {
    let world = World::new();
    let sensor = Running::start(&config(), world.parts(&config())).await;
    let healthz = sensor
        .http
        .get(sensor.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    let readyz = sensor.http.get(sensor.url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 200);
    sensor
        .deliver(
            "pull_request",
            &pull_request("synchronize", NEW, at(1)),
            "g-1",
        )
        .await;
    let text = sensor.metrics().await;
    for family in [
        "sensor_deliveries_total",
        "sensor_state_write_duration_seconds_bucket",
        "sensor_answer_duration_seconds_count",
        "state_store_",
        "cancel_",
        "health_ready",
    ] {
        assert!(text.contains(family), "{family} missing from\n{text}");
    }
    assert!(!text.contains("g-1"), "no delivery id in a label");
    sensor.shutdown.trigger();
    let readyz = sensor.http.get(sensor.url("/readyz")).send().await;
    assert!(readyz.is_err() || readyz.unwrap().status() == 503);
    assert_eq!(
        sensor
            .shutdown
            .drain(Duration::from_secs(5))
            .await
            .exit_code(),
        0
    );
}

#[tokio::test]
async fn both_circuit_breakers_are_exported_closed_before_any_failure() {
    let world = World::new();
    let sensor = Running::start(&config(), world.parts(&config())).await;
    let text = sensor.metrics().await;
    for dependency in ["kubernetes", "github"] {
        for series in [
            format!("cancel_coordinator_circuit_breaker_state{{name=\"{dependency}\"}} 0"),
            format!("cancel_coordinator_circuit_breaker_trips_total{{name=\"{dependency}\"}} 0"),
        ] {
            assert!(text.contains(&series), "{series} missing from\n{text}");
        }
    }
}
