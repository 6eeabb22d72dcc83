//! Failed webhook deliveries redelivered through FakeGitHub's App
//! endpoints (`GET /app/hook/deliveries`, `POST …/attempts`, the App's JWT)
//! with `GitHubAppDeliveries`: what the receiver got, and what FakeGitHub's
//! delivery log and call counters recorded, decide.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use cancel_coordinator::{
    CancellationCoordinator, CoordinatorConfig, MemoryWorkloads, StateAwareCancellation,
};
use label_cas::MemoryPullRequests;
use lease_lock::{LeaseLock, LockConfig, MemoryLeases};
use recovery::{
    Action, GitHubAppDeliveries, Kind, RecoveryConfig, RecoveryManager, RedeliveryConfig,
};
use secrecy::SecretString;
use state_store::{MemoryBackend, StateStore};
use testkit::github::{FakeGitHub, TEST_APP_PRIVATE_KEY_PEM, WebhookConfig};

const OLD: &str = "1111111111111111111111111111111111111111";
const NEW: &str = "2222222222222222222222222222222222222222";

/// A webhook receiver that answers `status` and counts the GUIDs it got.
#[derive(Clone, Default)]
struct Receiver {
    status: Arc<AtomicU16>,
    got: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Receiver {
    async fn start(status: u16) -> (Self, url::Url) {
        let receiver = Self::default();
        receiver.status.store(status, Ordering::SeqCst);
        let shared = receiver.clone();
        let app = Router::new().route(
            "/webhook",
            post(move |headers: HeaderMap| {
                let shared = shared.clone();
                async move {
                    let guid = headers
                        .get("x-github-delivery")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    *shared.got.lock().unwrap().entry(guid).or_default() += 1;
                    StatusCode::from_u16(shared.status.load(Ordering::SeqCst)).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (
            receiver,
            format!("http://127.0.0.1:{port}/webhook").parse().unwrap(),
        )
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn times(&self, guid: &str) -> u32 {
        self.got.lock().unwrap().get(guid).copied().unwrap_or(0)
    }
}

/// A reconciler on memory backends whose only GitHub part is the App's
/// deliveries on `fake`.
fn recovery_on(fake: &FakeGitHub, redelivery: RedeliveryConfig) -> RecoveryManager {
    let leases = MemoryLeases::new();
    let lock = |who: &str| {
        LeaseLock::new(
            leases.clone(),
            LockConfig {
                prefix: "cancel".into(),
                ..LockConfig::new(who, "supersede")
            },
        )
        .unwrap()
    };
    let store = StateStore::new(MemoryBackend::new());
    let runs = Arc::new(MemoryWorkloads::new());
    let github = Arc::new(MemoryPullRequests::new());
    let saga = StateAwareCancellation::builder(
        lock("controller-0"),
        store.clone(),
        runs.clone(),
        github.clone(),
        github.labels().clone(),
    )
    .build()
    .unwrap();
    let coordinator = CancellationCoordinator::new(saga, CoordinatorConfig::default()).unwrap();
    let deliveries = GitHubAppDeliveries::new(
        WebhookConfig::DEFAULT_APP_ID,
        &SecretString::from(TEST_APP_PRIVATE_KEY_PEM),
        Some(fake.url().as_str()),
    )
    .unwrap();
    RecoveryManager::builder(store, lock("controller-0-recovery"), runs, coordinator)
        .deliveries(Arc::new(deliveries))
        .config(RecoveryConfig {
            redelivery,
            ..RecoveryConfig::default()
        })
        .build()
        .unwrap()
}

async fn fake_delivering_to(url: url::Url) -> FakeGitHub {
    let fake = FakeGitHub::builder()
        .webhook(WebhookConfig::new(url).with_secret("It's a Secret to Everybody"))
        .start()
        .await
        .unwrap();
    fake.add_pull("acme", "widgets", 7, OLD, "task-42-fix", ["agent:running"])
        .unwrap();
    fake.webhooks().settled().await.unwrap();
    fake
}

#[tokio::test]
async fn a_push_answered_503_is_redelivered_once_and_accepted_and_never_asked_for_again() {
    let (receiver, url) = Receiver::start(202).await;
    let fake = fake_delivering_to(url).await;
    // The sensor is down (its state store unreachable): 503 to the push and
    // its synchronize.
    receiver.answer(503);
    let sent = fake.set_pull_head("acme", "widgets", 7, NEW).unwrap();
    fake.webhooks().settled().await.unwrap();
    let guids: Vec<String> = sent
        .iter()
        .map(|id| fake.webhooks().delivery(*id).unwrap().guid)
        .collect();
    assert_eq!(guids.len(), 2, "a push and a synchronize");
    for guid in &guids {
        assert_eq!(receiver.times(guid), 1);
    }

    receiver.answer(202);
    let recovery = recovery_on(&fake, RedeliveryConfig::default());
    let report = recovery.run_cycle().await.unwrap();
    let found = report.of(Kind::FailedDelivery);
    let mut redelivered: Vec<&str> = found
        .iter()
        .filter(|f| f.action == Action::Repaired)
        .filter_map(|f| f.object.as_deref())
        .collect();
    redelivered.sort_unstable();
    let mut expected: Vec<&str> = guids.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(redelivered, expected, "exactly the two failed deliveries");
    assert_eq!(found.len(), 2, "the accepted `opened` is not a finding");
    fake.webhooks().settled().await.unwrap();

    // What GitHub recorded: one redelivery per failed GUID, accepted.
    let log = fake.webhooks().deliveries();
    for guid in &guids {
        let attempts: Vec<_> = log.iter().filter(|d| &d.guid == guid).collect();
        assert_eq!(attempts.len(), 2, "the first attempt and one redelivery");
        assert!(attempts[1].redelivery);
        assert!(attempts[1].outcome.is_ok(), "{:?}", attempts[1].outcome);
        assert_eq!(receiver.times(guid), 2);
    }
    assert_eq!(fake.calls().count(Some("post"), Some("hook_attempts")), 2);

    // The next cycle finds nothing to redeliver and asks for nothing.
    let again = recovery.run_cycle().await.unwrap();
    assert!(again.of(Kind::FailedDelivery).is_empty(), "{again:?}");
    assert_eq!(fake.calls().count(Some("post"), Some("hook_attempts")), 2);
}

#[tokio::test]
async fn answers_another_attempt_cannot_change_are_not_redelivered_and_a_cycle_is_bounded() {
    let (receiver, url) = Receiver::start(202).await;
    let fake = fake_delivering_to(url).await;
    // A receiver refusing the signature: GitHub would get 401 again.
    receiver.answer(401);
    let refused = fake.set_pull_head("acme", "widgets", 7, NEW).unwrap();
    fake.webhooks().settled().await.unwrap();
    // Then three pushes the receiver could not take (no answer: timed out
    // or down shows as 0; 503 here).
    receiver.answer(503);
    let mut failed = Vec::new();
    for sha in [
        "3333333333333333333333333333333333333333",
        "4444444444444444444444444444444444444444",
        "5555555555555555555555555555555555555555",
    ] {
        failed.extend(fake.set_pull_head("acme", "widgets", 7, sha).unwrap());
    }
    fake.webhooks().settled().await.unwrap();
    receiver.answer(202);

    let recovery = recovery_on(
        &fake,
        RedeliveryConfig {
            per_cycle: 4,
            ..RedeliveryConfig::default()
        },
    );
    let report = recovery.run_cycle().await.unwrap();
    fake.webhooks().settled().await.unwrap();
    let actions: BTreeMap<String, Action> = report
        .of(Kind::FailedDelivery)
        .into_iter()
        .map(|f| (f.object.clone().unwrap(), f.action.clone()))
        .collect();
    for id in &refused {
        let guid = fake.webhooks().delivery(*id).unwrap().guid;
        assert!(
            matches!(&actions[&guid], Action::Deferred(why) if why.contains("401")),
            "{:?}",
            actions[&guid]
        );
        assert_eq!(receiver.times(&guid), 1, "a 401 is not asked for again");
    }
    let repaired = actions.values().filter(|a| **a == Action::Repaired).count();
    assert_eq!(repaired, 4, "the cycle's budget, oldest first");
    assert_eq!(fake.calls().count(Some("post"), Some("hook_attempts")), 4);
    // The oldest four of the six 503s went; the newest two wait a cycle.
    let guids: Vec<String> = failed
        .iter()
        .map(|id| fake.webhooks().delivery(*id).unwrap().guid)
        .collect();
    assert_eq!(guids.len(), 6);
    for (i, guid) in guids.iter().enumerate() {
        assert_eq!(receiver.times(guid), if i < 4 { 2 } else { 1 }, "{i}");
    }

    let next = recovery.run_cycle().await.unwrap();
    fake.webhooks().settled().await.unwrap();
    let redelivered: Vec<&str> = next
        .of(Kind::FailedDelivery)
        .into_iter()
        .filter(|f| f.action == Action::Repaired)
        .filter_map(|f| f.object.as_deref())
        .collect();
    assert_eq!(redelivered, [guids[4].as_str(), guids[5].as_str()]);
    for guid in &guids {
        assert_eq!(receiver.times(guid), 2);
    }
    assert_eq!(fake.calls().count(Some("post"), Some("hook_attempts")), 6);
}

#[tokio::test]
async fn a_delivery_that_keeps_failing_is_left_alone_after_its_attempts() {
    let (receiver, url) = Receiver::start(503).await;
    let fake = FakeGitHub::builder()
        .webhook(WebhookConfig::new(url))
        .start()
        .await
        .unwrap();
    let sent = fake
        .add_pull("acme", "widgets", 7, OLD, "task-42-fix", ["agent:running"])
        .unwrap();
    fake.webhooks().settled().await.unwrap();
    let guid = fake.webhooks().delivery(sent[0]).unwrap().guid;
    let recovery = recovery_on(
        &fake,
        RedeliveryConfig {
            max_attempts: 3,
            backoff: std::time::Duration::ZERO,
            ..RedeliveryConfig::default()
        },
    );
    for _ in 0..4 {
        recovery.run_cycle().await.unwrap();
        fake.webhooks().settled().await.unwrap();
    }
    assert_eq!(
        receiver.times(&guid),
        3,
        "the first attempt and two redeliveries"
    );
    assert_eq!(fake.calls().count(Some("post"), Some("hook_attempts")), 2);
    let last = recovery.run_cycle().await.unwrap();
    assert!(matches!(
        &last.of(Kind::FailedDelivery)[0].action,
        Action::Deferred(why) if why.contains("3 attempts")
    ));
}
