#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! What a client cannot know: writes that land while their answers are
//! lost (faults after the commit), watch streams cut mid-stream, and an API
//! server restart, as the real `kube::Client` and kube-runtime's watcher see
//! them.

#![cfg(feature = "kube")]

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Error, ResourceExt};
use serde_json::json;
use support::{client_without_retry, config_map};
use testkit::calls::Outcome;
use testkit::faults::{InjectedError, Match};
use testkit::kube::{FakeKube, RequestFilter};

/// Guard against hanging forever; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(30);

fn lease(name: &str, holder: &str) -> Lease {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder},
    }))
    .unwrap()
}

fn api_code(err: &Error) -> Option<(u16, String)> {
    match err {
        Error::Api(s) => Some((s.code, s.reason.clone())),
        _ => None,
    }
}

/// Polls `done` until it holds (paused time makes the sleeps free).
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_create_whose_answer_is_lost_after_commit_landed_and_its_retry_meets_already_exists() {
    let kube = FakeKube::start().await.unwrap();
    // kube's default client retries a 504: the retry finds the object the
    // first attempt created.
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    kube.faults().fail_next_after_commit(
        Match::any().verb("create").resource("configmaps"),
        1,
        InjectedError::Status(504),
    );
    let err = cms
        .create(&PostParams::default(), &config_map("c1"))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((409, "AlreadyExists".to_owned())));
    assert!(
        cms.get_opt("c1").await.unwrap().is_some(),
        "the write landed"
    );

    let creates = kube
        .requests()
        .matching(&RequestFilter::any().verb("create"));
    let seen: Vec<(Outcome, bool)> = creates
        .iter()
        .map(|r| (r.outcome.clone(), r.applied))
        .collect();
    assert_eq!(
        seen,
        vec![(Outcome::Injected(504), true), (Outcome::Error(409), false)]
    );
}

#[tokio::test]
async fn an_update_whose_connection_drops_after_commit_landed() {
    let kube = FakeKube::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client_without_retry(&kube), "ns");
    leases
        .create(&PostParams::default(), &lease("l1", "pod-a"))
        .await
        .unwrap();
    let mut next = leases.get("l1").await.unwrap();
    next.spec.as_mut().unwrap().holder_identity = Some("pod-b".to_owned());
    kube.faults().fail_next_after_commit(
        Match::any().verb("update").resource("leases"),
        1,
        InjectedError::Drop,
    );
    let err = leases
        .replace("l1", &PostParams::default(), &next)
        .await
        .unwrap_err();
    assert_eq!(
        api_code(&err),
        None,
        "a closed connection, not a Status: {err:?}"
    );
    let stored = leases.get("l1").await.unwrap();
    assert_eq!(
        stored.spec.unwrap().holder_identity.as_deref(),
        Some("pod-b"),
        "the update landed"
    );
    assert_eq!(
        kube.calls()
            .count_outcome(Some("update"), Some("leases"), &Outcome::Dropped),
        1
    );
}

#[tokio::test]
async fn after_commit_faults_hide_only_answers_of_requests_that_were_served() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client_without_retry(&kube), "ns");
    cms.create(&PostParams::default(), &config_map("c1"))
        .await
        .unwrap();
    kube.faults().error_rate_after_commit(
        Match::any().verb("patch"),
        1.0,
        InjectedError::Status(500),
    );
    let label = Patch::Merge(json!({"metadata": {"labels": {"phase": "cancelling"}}}));
    let missing = cms
        .patch("absent", &PatchParams::default(), &label)
        .await
        .unwrap_err();
    assert_eq!(
        api_code(&missing),
        Some((404, "NotFound".to_owned())),
        "nothing was served, so nothing is hidden"
    );
    let hidden = cms
        .patch("c1", &PatchParams::default(), &label)
        .await
        .unwrap_err();
    assert_eq!(api_code(&hidden), Some((500, "InternalError".to_owned())));
    assert_eq!(
        cms.get("c1")
            .await
            .unwrap()
            .labels()
            .get("phase")
            .map(String::as_str),
        Some("cancelling")
    );
}

#[tokio::test]
async fn cutting_watches_closes_every_stream_mid_stream_and_a_watcher_resumes() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    // kube reads an abrupt end of a watch body as a clean end, so the
    // abruptness is checked on the raw body.
    let request =
        http::Request::get("/api/v1/namespaces/ns/configmaps?watch=true&resourceVersion=0")
            .body(Vec::new())
            .unwrap();
    let mut raw = kube
        .client()
        .send(request.map(Into::into))
        .await
        .unwrap()
        .into_body();
    let mut typed = Box::pin(cms.watch(&WatchParams::default(), "0").await.unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let follower = tokio::spawn({
        let seen = seen.clone();
        let stream = watcher(cms.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects();
        async move {
            let mut stream = Box::pin(stream);
            while let Some(item) = stream.next().await {
                if let Ok(cm) = item {
                    seen.lock().unwrap().push(cm.name_any());
                }
            }
        }
    });
    eventually("three watches open", || kube.watch_count() == 3).await;

    kube.cut_watches();
    let raw_end = tokio::time::timeout(PATIENCE, async {
        loop {
            match raw.frame().await {
                Some(Ok(_)) => {}
                other => return other.map(|f| f.map(drop)),
            }
        }
    })
    .await
    .expect("a cut stream ends");
    assert!(
        matches!(raw_end, Some(Err(_))),
        "ended mid-stream, without the final chunk: {raw_end:?}"
    );
    let typed_end = tokio::time::timeout(PATIENCE, typed.try_next())
        .await
        .expect("a cut stream ends");
    assert!(matches!(typed_end, Ok(None) | Err(_)), "{typed_end:?}");
    eventually("no watch left from before the cut", || {
        kube.watch_count() <= 1
    })
    .await;
    cms.create(&PostParams::default(), &config_map("after-cut"))
        .await
        .unwrap();
    let seen_by_watcher = seen.clone();
    eventually("the watcher resumed and saw the new object", move || {
        seen_by_watcher
            .lock()
            .unwrap()
            .iter()
            .any(|n| n == "after-cut")
    })
    .await;
    follower.abort();
}

#[tokio::test(start_paused = true)]
async fn restart_keeps_objects_drops_connections_and_expires_older_resource_versions() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client_without_retry(&kube), "ns");
    let first = cms
        .create(&PostParams::default(), &config_map("c1"))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &config_map("c2"))
        .await
        .unwrap();
    let first_rv = first.resource_version().unwrap();
    let before = kube.resource_version();
    let page = cms
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .unwrap();
    let token = page.metadata.continue_.unwrap();
    let mut open_watch = Box::pin(cms.watch(&WatchParams::default(), &first_rv).await.unwrap());
    let replayed = open_watch.try_next().await.unwrap();
    assert!(matches!(replayed, Some(WatchEvent::Added(cm)) if cm.name_any() == "c2"));

    // A read held in flight when the server goes down loses its answer.
    let slow = kube.faults().latency(
        Match::any().verb("get"),
        Duration::from_secs(10),
        Duration::ZERO,
    );
    let in_flight = tokio::spawn({
        let cms = cms.clone();
        async move { cms.get("c1").await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    kube.restart();
    let lost = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(
        lost.as_ref().is_err_and(|e| api_code(e).is_none()),
        "the connection closed under the request: {lost:?}"
    );
    kube.faults().remove(slow);
    let cut = tokio::time::timeout(PATIENCE, open_watch.try_next())
        .await
        .expect("the open watch ends");
    assert!(matches!(cut, Ok(None) | Err(_)), "{cut:?}");

    // State is kept; history is not.
    assert_eq!(cms.get("c1").await.unwrap().uid(), first.uid());
    // etcd, not the restarted server, keeps LIST snapshots: a continuation
    // of the latest state goes on.
    let continued = cms
        .list(
            &kube::api::ListParams::default()
                .limit(1)
                .continue_token(&token),
        )
        .await
        .unwrap();
    assert_eq!(continued.items[0].name_any(), "c2");
    let mut stale = Box::pin(cms.watch(&WatchParams::default(), &first_rv).await.unwrap());
    match stale.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    let current = kube.resource_version().to_string();
    let mut fresh = Box::pin(cms.watch(&WatchParams::default(), &current).await.unwrap());
    let created = cms
        .create(&PostParams::default(), &config_map("c3"))
        .await
        .unwrap();
    assert!(
        created.resource_version().unwrap().parse::<u64>().unwrap() > before,
        "resourceVersions continue upward"
    );
    let event = tokio::time::timeout(PATIENCE, fresh.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(event, Some(WatchEvent::Added(cm)) if cm.name_any() == "c3"));
}

/// A write tap is no connection: writes made around a restart, including a
/// deletion a resumed watch would have to relist past, are all in it, once
/// each, in resourceVersion order.
#[tokio::test]
async fn a_tap_keeps_every_write_across_a_restart() {
    let kube = FakeKube::start().await.unwrap();
    let tap = kube.tap("", "configmaps");
    let leases = kube.tap("coordination.k8s.io", "leases");
    let maps: Api<ConfigMap> = Api::namespaced(kube.client(), "default");
    maps.create(&PostParams::default(), &config_map("a"))
        .await
        .unwrap();
    kube.restart();
    let maps: Api<ConfigMap> = Api::namespaced(kube.client(), "default");
    maps.delete("a", &Default::default()).await.unwrap();
    maps.create(&PostParams::default(), &config_map("b"))
        .await
        .unwrap();

    let writes = tap.writes();
    let seen: Vec<(&str, testkit::kube::tap::WriteKind)> =
        writes.iter().map(|w| (w.name.as_str(), w.kind)).collect();
    use testkit::kube::tap::WriteKind::{Added, Deleted};
    assert_eq!(seen, [("a", Added), ("a", Deleted), ("b", Added)]);
    assert!(writes.windows(2).all(|w| w[0].rv < w[1].rv));
    assert_eq!(tap.since(writes[0].rv).len(), 2);
    assert!(leases.is_empty(), "another kind's tap saw nothing");
}
