//! FakeGitHub's webhook sender, received by a real HTTP server: the events
//! a push, a merge, a close, a label or a deletion causes, their headers and
//! HMAC signatures, payloads that octocrab parses and that carry every field
//! GitHub's own do, redeliveries with the same GUID, held deliveries
//! released out of order, lost and failed ones, no retries, and the 10 s
//! limit under paused time.

#![cfg(feature = "github")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod github_common;

use std::collections::BTreeMap;
use std::time::Duration;

use github_common::{Received, Receiver, SECRET, closed_port_url};
use octocrab::models::webhook_events::{WebhookEventPayload, WebhookEventType, verify_signature};
use serde_json::Value;
use testkit::github::{DeliveryId, DeliveryOutcome, Error, FakeGitHub, WebhookConfig, Webhooks};

const OLD: &str = "1111111111111111111111111111111111111111";
const MIDDLE: &str = "1212121212121212121212121212121212121212";
const NEW: &str = "2222222222222222222222222222222222222222";
const ZEROS: &str = "0000000000000000000000000000000000000000";
const NO_LABELS: [&str; 0] = [];

/// A fake delivering to `receiver`, signed with [`SECRET`], with pull
/// request acme/widgets#7 from `feature` at [`OLD`] (whose `opened`
/// delivery has been received).
async fn setup() -> (FakeGitHub, Receiver) {
    let mut receiver = Receiver::start().await;
    let github = FakeGitHub::builder()
        .webhook(WebhookConfig::new(receiver.url.clone()).with_secret(SECRET))
        .start()
        .await
        .unwrap();
    github
        .add_pull("acme", "widgets", 7, OLD, "feature", ["stage:qa"])
        .unwrap();
    let opened = receiver.next().await;
    assert_eq!(opened.json()["action"], "opened");
    (github, receiver)
}

/// The received deliveries by `X-GitHub-Event` and action (GitHub sends a
/// push's events concurrently, in no promised order).
fn by_kind(received: Vec<Received>) -> BTreeMap<String, Received> {
    received
        .into_iter()
        .map(|r| {
            let action = r.json()["action"].as_str().unwrap_or_default().to_owned();
            (format!("{}.{action}", r.event()), r)
        })
        .collect()
}

async fn outcomes(webhooks: &Webhooks, ids: &[DeliveryId]) -> Vec<DeliveryOutcome> {
    let mut all = Vec::new();
    for &id in ids {
        all.push(webhooks.attempted(id).await.unwrap().outcome);
    }
    all
}

#[tokio::test]
async fn a_push_to_a_pull_request_delivers_push_and_synchronize_as_github_does() {
    let (github, mut receiver) = setup().await;

    let ids = github
        .push_to_pull("acme", "widgets", 7, &[MIDDLE, NEW])
        .unwrap();

    assert_eq!(ids.len(), 2);
    let received = by_kind(receiver.take(2).await);
    let push = &received["push."];
    let sync = &received["pull_request.synchronize"];
    for r in [push, sync] {
        verify_signature(r.header("x-hub-signature-256"), SECRET, &r.body).unwrap();
        assert!(r.header("x-hub-signature-256").starts_with("sha256="));
        assert_eq!(
            r.header("x-github-hook-id"),
            WebhookConfig::DEFAULT_HOOK_ID.to_string()
        );
        assert_eq!(
            r.header("x-github-hook-installation-target-id"),
            WebhookConfig::DEFAULT_APP_ID.to_string()
        );
        assert_eq!(
            r.header("x-github-hook-installation-target-type"),
            "integration"
        );
        assert!(r.header("user-agent").starts_with("GitHub-Hookshot/"));
        assert_eq!(r.header("content-type"), "application/json");
        assert!(uuid::Uuid::parse_str(r.guid()).is_ok(), "{}", r.guid());
        assert!(r.headers.get("x-hub-signature").is_none(), "no SHA-1");
        assert_eq!(r.json()["installation"]["id"], 1);
        assert_eq!(r.json()["repository"]["full_name"], "acme/widgets");
    }
    assert_ne!(push.guid(), sync.guid());

    let event = push.parsed();
    assert_eq!(event.kind, WebhookEventType::Push);
    let WebhookEventPayload::Push(p) = event.specific else {
        panic!("not a push")
    };
    assert_eq!(p.r#ref, "refs/heads/feature");
    assert_eq!((p.before.as_str(), p.after.as_str()), (OLD, NEW));
    assert!(!p.created && !p.deleted && !p.forced);
    let commits: Vec<&str> = p.commits.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(commits, [MIDDLE, NEW]);
    assert_eq!(p.head_commit.unwrap().id, NEW);

    let event = sync.parsed();
    let WebhookEventPayload::PullRequest(pr) = event.specific else {
        panic!("not a pull_request")
    };
    assert_eq!(pr.number, 7);
    assert_eq!(pr.before.as_deref(), Some(OLD));
    assert_eq!(pr.after.as_deref(), Some(NEW));
    assert_eq!(pr.pull_request.head.sha, NEW);
    assert_eq!(pr.pull_request.head.ref_field, "feature");
    let labels: Vec<&str> = pr
        .pull_request
        .labels
        .iter()
        .flatten()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(labels, ["stage:qa"]);
    assert!(event.installation.is_some());

    // What GitHub's deliveries list would show for them.
    let webhooks = github.webhooks();
    for outcome in outcomes(&webhooks, &ids).await {
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(outcome.status().as_deref(), Some("OK"));
        assert_eq!(outcome.status_code(), Some(202));
    }
    let push_delivery = webhooks.delivery(ids[0]).unwrap();
    assert_eq!(push_delivery.event, "push");
    assert_eq!(push_delivery.guid, push.guid());
    assert_eq!(
        push_delivery.body, push.body,
        "the body sent is the body signed"
    );
    assert_eq!(push_delivery.response_body.as_deref(), Some("thanks"));
}

#[tokio::test]
async fn payloads_carry_every_field_githubs_own_do() {
    let (github, mut receiver) = setup().await;
    let mut ours = BTreeMap::new();
    github.push_to_pull("acme", "widgets", 7, &[NEW]).unwrap();
    ours.extend(by_kind(receiver.take(2).await));
    github.add_label("acme", "widgets", 7, "bug").unwrap();
    ours.extend(by_kind(receiver.take(1).await));
    github.close_pull("acme", "widgets", 7).unwrap();
    ours.extend(by_kind(receiver.take(1).await));
    github
        .add_pull("acme", "widgets", 8, OLD, "other", NO_LABELS)
        .unwrap();
    ours.extend(by_kind(receiver.take(1).await));
    github.webhooks().ping().unwrap();
    ours.extend(by_kind(receiver.take(1).await));

    let fixtures = [
        (
            "push.",
            include_str!("../fixtures/github/push_with-new-branch.payload.json"),
        ),
        (
            "pull_request.synchronize",
            include_str!("../fixtures/github/pull_request_synchronize.payload.json"),
        ),
        (
            "pull_request.labeled",
            include_str!("../fixtures/github/pull_request_labeled.payload.json"),
        ),
        (
            "pull_request.closed",
            include_str!("../fixtures/github/pull_request_closed.payload.json"),
        ),
        (
            "pull_request.opened",
            include_str!("../fixtures/github/pull_request_opened.payload.json"),
        ),
        (
            "ping.",
            include_str!("../fixtures/github/ping.payload.json"),
        ),
    ];
    for (kind, fixture) in fixtures {
        let real: Value = serde_json::from_str(fixture).unwrap();
        let mut missing = Vec::new();
        missing_fields(&real, &ours[kind].json(), kind, &mut missing);
        // An App's ping is about the App, not a repository (the fixture is
        // a repository hook's).
        missing.retain(|path| {
            !(kind == "ping."
                && [
                    "ping..repository",
                    "ping..hook.url",
                    "ping..hook.test_url",
                    "ping..hook.ping_url",
                    "ping..hook.last_response",
                ]
                .iter()
                .any(|p| path.starts_with(p)))
        });
        assert!(missing.is_empty(), "{kind}: missing {missing:?}");
    }
}

/// Paths of fields in `real` that `ours` lacks (objects recursively, arrays
/// by their first element).
fn missing_fields(real: &Value, ours: &Value, path: &str, missing: &mut Vec<String>) {
    match (real, ours) {
        (Value::Object(real), Value::Object(ours)) => {
            for (key, value) in real {
                let at = format!("{path}.{key}");
                match ours.get(key) {
                    Some(mine) => missing_fields(value, mine, &at, missing),
                    None => missing.push(at),
                }
            }
        }
        (Value::Array(real), Value::Array(ours)) => {
            if let (Some(r), Some(o)) = (real.first(), ours.first()) {
                missing_fields(r, o, &format!("{path}[0]"), missing);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn a_redelivery_has_the_same_guid_and_body_and_says_so() {
    let (github, mut receiver) = setup().await;
    let webhooks = github.webhooks();
    let ids = github
        .push_branch("acme", "widgets", "solo", &[NEW])
        .unwrap();
    let first = receiver.next().await;
    webhooks.attempted(ids[0]).await.unwrap();

    let again = webhooks.redeliver(ids[0]).unwrap();

    let second = receiver.next().await;
    assert_eq!(second.guid(), first.guid());
    assert_eq!(second.body, first.body);
    assert_eq!(
        second.header("x-hub-signature-256"),
        first.header("x-hub-signature-256")
    );
    let (original, redelivered) = (
        webhooks.delivery(ids[0]).unwrap(),
        webhooks.attempted(again).await.unwrap(),
    );
    assert_ne!(original.id, redelivered.id);
    assert!(!original.redelivery && redelivered.redelivery);
    assert_eq!(original.guid, redelivered.guid);
}

#[tokio::test]
async fn held_deliveries_arrive_in_the_order_they_are_released() {
    let (github, mut receiver) = setup().await;
    let webhooks = github.webhooks();
    webhooks.hold();
    let first = github
        .push_to_pull("acme", "widgets", 7, &[MIDDLE])
        .unwrap();
    let second = github.push_to_pull("acme", "widgets", 7, &[NEW]).unwrap();
    assert_eq!(webhooks.held(), [first.clone(), second.clone()].concat());
    assert!(receiver.try_next().is_none(), "held means not sent");

    // The newer push's synchronize first, then the older one's.
    let released = webhooks.release(&[second[1], first[1]]).await.unwrap();

    let arrived = receiver.take(2).await;
    let afters: Vec<String> = arrived
        .iter()
        .map(|r| r.json()["after"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(afters, [NEW, MIDDLE]);
    assert!(released.iter().all(|d| d.outcome.is_ok()));
    assert_eq!(
        webhooks.held(),
        [first[0], second[0]],
        "the pushes stay held"
    );

    assert_eq!(webhooks.resume(), [first[0], second[0]]);
    let pushes = receiver.take(2).await;
    assert!(pushes.iter().all(|r| r.event() == "push"));
    assert!(matches!(
        webhooks.release(&[first[0]]).await,
        Err(Error::Delivery {
            reason: "is not held",
            ..
        })
    ));
}

#[tokio::test]
async fn a_failed_delivery_is_recorded_with_its_status_and_never_retried() {
    let (github, mut receiver) = setup().await;
    let webhooks = github.webhooks();
    receiver.answer_with(500);

    let ids = github
        .push_branch("acme", "widgets", "broken", &[NEW])
        .unwrap();

    receiver.next().await;
    let failed = webhooks.attempted(ids[0]).await.unwrap();
    assert!(
        matches!(
            failed.outcome,
            DeliveryOutcome::Answered {
                status_code: 500,
                ..
            }
        ),
        "{:?}",
        failed.outcome
    );
    assert_eq!(
        failed.outcome.status().as_deref(),
        Some("Invalid HTTP Response: 500")
    );
    // GitHub never retries: nothing else arrives, even after a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    webhooks.settled().await.unwrap();
    assert!(receiver.try_next().is_none());
    assert_eq!(
        webhooks.deliveries().len(),
        2,
        "opened and the push, once each"
    );
}

#[tokio::test]
async fn an_unreachable_receiver_is_recorded_as_failed_to_connect() {
    let github = FakeGitHub::builder()
        .webhook(WebhookConfig::new(closed_port_url().await))
        .start()
        .await
        .unwrap();

    let ids = github.push_branch("acme", "widgets", "b", &[NEW]).unwrap();

    let delivery = github.webhooks().attempted(ids[0]).await.unwrap();
    assert_eq!(delivery.outcome, DeliveryOutcome::Unreachable);
    assert_eq!(
        delivery.outcome.status().as_deref(),
        Some("failed to connect to host")
    );
    assert_eq!(delivery.outcome.status_code(), Some(0));
}

#[tokio::test]
async fn lost_deliveries_are_never_sent_and_failed_ones_are_recorded_unsent() {
    let (github, mut receiver) = setup().await;
    let webhooks = github.webhooks();
    webhooks.hold();
    let ids = github.push_to_pull("acme", "widgets", 7, &[NEW]).unwrap();

    webhooks.lose(ids[0]).unwrap();
    webhooks.fail(ids[1]).unwrap();
    webhooks.resume();
    webhooks.settled().await.unwrap();

    assert!(receiver.try_next().is_none(), "neither was sent");
    assert_eq!(
        webhooks.delivery(ids[0]).unwrap().outcome,
        DeliveryOutcome::Lost
    );
    let failed = webhooks.delivery(ids[1]).unwrap();
    assert_eq!(failed.outcome, DeliveryOutcome::Unreachable);
    assert!(failed.delivered_at.is_some());
    // A failed delivery can be redelivered; a lost one was never listed.
    let again = webhooks.redeliver(ids[1]).unwrap();
    assert_eq!(receiver.next().await.guid(), failed.guid);
    assert!(webhooks.attempted(again).await.unwrap().outcome.is_ok());
    assert!(matches!(
        webhooks.redeliver(ids[0]),
        Err(Error::Delivery {
            reason: "was never attempted",
            ..
        })
    ));
}

#[tokio::test]
async fn close_merge_and_reopen_deliver_their_pull_request_events() {
    let (github, mut receiver) = setup().await;

    github.close_pull("acme", "widgets", 7).unwrap();
    let closed = receiver.next().await.json();
    github.reopen_pull("acme", "widgets", 7).unwrap();
    let reopened = receiver.next().await.json();
    let ids = github.merge_pull("acme", "widgets", 7).unwrap();
    let merged = by_kind(receiver.take(2).await);

    assert_eq!(closed["action"], "closed");
    assert_eq!(closed["pull_request"]["merged"], false);
    assert_eq!(closed["pull_request"]["state"], "closed");
    assert_eq!(reopened["action"], "reopened");
    assert_eq!(reopened["pull_request"]["state"], "open");
    assert_eq!(ids.len(), 2);
    let merge = merged["pull_request.closed"].json();
    assert_eq!(merge["pull_request"]["merged"], true);
    let merge_sha = merge["pull_request"]["merge_commit_sha"].as_str().unwrap();
    let base_push = merged["push."].json();
    assert_eq!(base_push["ref"], "refs/heads/master");
    assert_eq!(base_push["after"], merge_sha);
    assert_eq!(
        base_push["head_commit"]["message"],
        "Merge pull request #7 from acme/feature"
    );
    for r in merged.values() {
        r.parsed();
    }
}

#[tokio::test]
async fn label_changes_through_the_api_deliver_labeled_and_unlabeled() {
    let (github, mut receiver) = setup().await;
    let octocrab = github.octocrab().unwrap();

    octocrab
        .issues("acme", "widgets")
        .add_labels(7, &["ready".to_owned(), "stage:qa".to_owned()])
        .await
        .unwrap();
    let labeled = receiver.next().await;
    octocrab
        .issues("acme", "widgets")
        .remove_label(7, "stage:qa")
        .await
        .unwrap();
    let unlabeled = receiver.next().await;
    // An issue that is not a pull request sends no pull_request event.
    github.add_label("acme", "widgets", 99, "x").unwrap();
    github.webhooks().settled().await.unwrap();

    let WebhookEventPayload::PullRequest(pr) = labeled.parsed().specific else {
        panic!("not a pull_request")
    };
    assert_eq!(format!("{:?}", pr.action), "Labeled");
    assert_eq!(
        pr.label.unwrap().name,
        "ready",
        "only the label that was added"
    );
    let names: Vec<String> = pr
        .pull_request
        .labels
        .iter()
        .flatten()
        .map(|l| l.name.clone())
        .collect();
    assert_eq!(names, ["ready", "stage:qa"]);
    let unlabeled = unlabeled.json();
    assert_eq!(unlabeled["action"], "unlabeled");
    assert_eq!(unlabeled["label"]["name"], "stage:qa");
    assert!(receiver.try_next().is_none());
}

#[tokio::test]
async fn deleting_a_branch_or_tag_delivers_a_push_with_deleted_and_zeros() {
    let (github, mut receiver) = setup().await;

    github.delete_branch("acme", "widgets", "feature").unwrap();
    let deletion = by_kind(receiver.take(2).await);
    github.push_tag("acme", "widgets", "v1.0.0", NEW).unwrap();
    let tag = receiver.next().await.json();
    github.delete_tag("acme", "widgets", "v1.0.0").unwrap();
    let untag = receiver.next().await;

    let WebhookEventPayload::Push(p) = deletion["push."].parsed().specific else {
        panic!("not a push")
    };
    assert!(p.deleted && !p.created);
    assert_eq!((p.before.as_str(), p.after.as_str()), (OLD, ZEROS));
    assert!(p.commits.is_empty() && p.head_commit.is_none());
    let closed = deletion["pull_request.closed"].json();
    assert_eq!(closed["pull_request"]["merged"], false);

    assert_eq!(tag["ref"], "refs/tags/v1.0.0");
    assert_eq!(tag["created"], true);
    assert_eq!(tag["commits"], Value::Array(vec![]));
    assert_eq!(tag["head_commit"]["id"], NEW);
    let WebhookEventPayload::Push(p) = untag.parsed().specific else {
        panic!("not a push")
    };
    assert_eq!(p.r#ref, "refs/tags/v1.0.0");
    assert!(p.deleted);
    assert_eq!((p.before.as_str(), p.after.as_str()), (NEW, ZEROS));
}

#[tokio::test]
async fn the_ping_is_the_app_hooks() {
    let (github, mut receiver) = setup().await;

    let id = github.webhooks().ping().unwrap();

    let ping = receiver.next().await;
    let event = ping.parsed();
    assert_eq!(event.kind, WebhookEventType::Ping);
    let WebhookEventPayload::Ping(p) = event.specific else {
        panic!("not a ping")
    };
    let hook = p.hook.unwrap();
    assert_eq!(
        hook.app_id.map(|a| a.0),
        Some(WebhookConfig::DEFAULT_APP_ID)
    );
    assert_eq!(p.hook_id.map(|h| h.0), Some(WebhookConfig::DEFAULT_HOOK_ID));
    let delivery = github.webhooks().attempted(id).await.unwrap();
    assert_eq!(
        (delivery.installation_id, delivery.repository_id),
        (None, None)
    );
    assert!(ping.json().get("installation").is_none());
}

#[tokio::test]
async fn a_push_that_moves_nothing_delivers_nothing() {
    let (github, mut receiver) = setup().await;

    let ids = github.push_to_pull("acme", "widgets", 7, &[OLD]).unwrap();

    assert!(ids.is_empty());
    github.webhooks().settled().await.unwrap();
    assert!(receiver.try_next().is_none());
}

#[tokio::test]
async fn without_a_secret_deliveries_are_unsigned() {
    let mut receiver = Receiver::start().await;
    let github = FakeGitHub::builder()
        .webhook(WebhookConfig::new(receiver.url.clone()))
        .start()
        .await
        .unwrap();

    github.push_branch("acme", "widgets", "b", &[NEW]).unwrap();

    let push = receiver.next().await;
    assert!(push.headers.get("x-hub-signature-256").is_none());
}

#[tokio::test]
async fn nothing_is_delivered_without_a_webhook_and_only_to_127_0_0_1() {
    let github = FakeGitHub::start().await.unwrap();
    let webhooks = github.webhooks();

    assert!(
        github
            .push_branch("acme", "widgets", "b", &[NEW])
            .unwrap()
            .is_empty()
    );
    assert!(matches!(webhooks.ping(), Err(Error::NoWebhook)));
    for url in [
        "http://example.com/hook",
        "http://localhost:8080/hook",
        "https://127.0.0.1:8443/hook",
        "http://10.0.0.1/hook",
    ] {
        let config = WebhookConfig::new(url.parse().unwrap());
        assert!(
            matches!(webhooks.configure(config), Err(Error::NonLocalWebhook(_))),
            "{url}"
        );
    }
    assert!(webhooks.config().is_none());
    assert!(webhooks.deliveries().is_empty());
}

#[tokio::test(start_paused = true)]
async fn under_paused_time_a_receiver_slower_than_10_s_times_out_at_once() {
    let receiver = Receiver::start().await;
    let github = FakeGitHub::builder()
        .webhook(WebhookConfig::new(receiver.url.clone()))
        .start()
        .await
        .unwrap();
    let webhooks = github.webhooks();
    let wall = std::time::Instant::now();

    receiver.delay(Duration::from_secs(9));
    let patient = github.push_branch("acme", "widgets", "a", &[OLD]).unwrap();
    let answered = webhooks.attempted(patient[0]).await.unwrap();
    receiver.delay(Duration::from_secs(11));
    let slow = github.push_branch("acme", "widgets", "b", &[NEW]).unwrap();
    let timed_out = webhooks.attempted(slow[0]).await.unwrap();

    match answered.outcome {
        DeliveryOutcome::Answered {
            status_code: 202,
            duration,
        } => {
            assert!(
                duration >= Duration::from_secs(9) && duration < Duration::from_secs(10),
                "{duration:?}"
            );
        }
        other => panic!("expected an answer, got {other:?}"),
    }
    assert_eq!(timed_out.outcome, DeliveryOutcome::TimedOut);
    assert_eq!(timed_out.outcome.status().as_deref(), Some("timed out"));
    assert!(
        wall.elapsed() < Duration::from_secs(5),
        "paused time: no real 10 s wait ({:?})",
        wall.elapsed()
    );
}
