#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! FakeKube's request log and per-group counters, as a test or benchmark
//! reads them: every request once, in order, with who did what and what the
//! client saw, groupable per operation by the `Audit-ID` a client sets.

#![cfg(feature = "kube")]

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent};
use k8s_openapi::api::events::v1::Event as NewEvent;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use testkit::calls::Outcome;
use testkit::faults::{InjectedError, Match};
use testkit::kube::{FakeKube, RequestFilter};

fn config_map(name: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_owned());
    cm
}

/// A client whose every request carries `Audit-ID: id` and a User-Agent,
/// and no retries.
fn correlated_client(kube: &FakeKube, id: &str) -> Client {
    let mut config = kube.config();
    config.default_retry = false;
    config.headers.push((
        HeaderName::from_static("audit-id"),
        HeaderValue::from_str(id).unwrap(),
    ));
    config.headers.push((
        http::header::USER_AGENT,
        HeaderValue::from_static("saga-test/1.0"),
    ));
    Client::try_from(config).unwrap()
}

#[tokio::test]
async fn every_request_is_logged_once_in_order_with_who_did_what_and_the_outcome() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(correlated_client(&kube, "op-1"), "ns");
    let before = kube.requests().last_seq();

    let pp = PostParams {
        field_manager: Some("saga".to_owned()),
        ..PostParams::default()
    };
    cms.create(&pp, &config_map("c1")).await.unwrap();
    cms.get("c1").await.unwrap();
    cms.get("missing").await.unwrap_err();
    kube.faults()
        .fail_next(Match::any().verb("delete"), 1, InjectedError::Status(503));
    cms.delete("c1", &DeleteParams::default())
        .await
        .unwrap_err();

    let log = kube.requests().since(before);
    let seen: Vec<(&str, Option<&str>, Outcome, bool)> = log
        .iter()
        .map(|r| {
            (
                r.verb.as_str(),
                r.name.as_deref(),
                r.outcome.clone(),
                r.applied,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("create", None, Outcome::Ok, true),
            ("get", Some("c1"), Outcome::Ok, true),
            ("get", Some("missing"), Outcome::Error(404), false),
            ("delete", Some("c1"), Outcome::Injected(503), false),
        ]
    );
    assert!(
        log.windows(2).all(|w| w[0].seq < w[1].seq),
        "ordered by number"
    );
    let create = &log[0];
    assert_eq!(
        (
            create.group.as_str(),
            create.version.as_str(),
            create.resource.as_str()
        ),
        ("", "v1", "configmaps")
    );
    assert_eq!(create.namespace.as_deref(), Some("ns"));
    assert_eq!(create.field_manager.as_deref(), Some("saga"));
    assert_eq!(create.correlation.as_deref(), Some("op-1"));
    assert_eq!(create.user_agent.as_deref(), Some("saga-test/1.0"));
    // The counters still count the same calls.
    assert_eq!(kube.calls().count(Some("get"), Some("configmaps")), 2);
}

#[tokio::test]
async fn calls_of_concurrent_operations_are_counted_apart_by_their_audit_id() {
    let kube = FakeKube::start().await.unwrap();
    let setup: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    setup
        .create(&PostParams::default(), &config_map("shared"))
        .await
        .unwrap();

    // Five operations at once, operation i making i + 1 reads.
    let mut tasks = Vec::new();
    for i in 0..5_usize {
        let api: Api<ConfigMap> =
            Api::namespaced(correlated_client(&kube, &format!("cancel-{i}")), "ns");
        tasks.push(tokio::spawn(async move {
            for _ in 0..=i {
                api.get("shared").await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let per_operation = kube
        .requests()
        .count_by_correlation(&RequestFilter::any().verb("get"));
    let expected = (0..5_usize)
        .map(|i| (format!("cancel-{i}"), i + 1))
        .collect();
    assert_eq!(per_operation, expected);
    assert_eq!(
        kube.requests()
            .count(&RequestFilter::any().correlation("cancel-4").name("shared")),
        5
    );
}

#[tokio::test]
async fn answers_carry_the_clients_audit_id_or_a_fresh_one() {
    let kube = FakeKube::start().await.unwrap();
    let request = || {
        http::Request::get("/api/v1/namespaces/ns/configmaps")
            .body(Vec::new())
            .unwrap()
            .map(Into::into)
    };
    let echoed = correlated_client(&kube, "cancel-7")
        .send(request())
        .await
        .unwrap();
    assert_eq!(echoed.headers()["audit-id"], "cancel-7");
    let fresh = kube.client().send(request()).await.unwrap();
    let id = fresh.headers()["audit-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(
        kube.requests().entries().last().unwrap().correlation,
        None,
        "a made-up id is not the client's correlation"
    );
}

#[tokio::test]
async fn a_full_log_evicts_the_oldest_and_says_how_many() {
    let kube = FakeKube::builder()
        .request_log_capacity(3)
        .start()
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    for _ in 0..5 {
        cms.get_opt("c").await.unwrap();
    }
    let log = kube.requests();
    assert_eq!(log.entries().len(), 3);
    assert_eq!(log.evicted(), 2);
    assert_eq!(log.last_seq(), 5);
    assert_eq!(log.entries()[0].seq, 3);
}

#[tokio::test(start_paused = true)]
async fn log_times_follow_paused_tokio_time() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    cms.get_opt("c").await.unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    cms.get_opt("c").await.unwrap();
    let log = kube.requests().entries();
    let gap = log[1].at.duration_since(log[0].at);
    assert!(
        gap >= jiff::SignedDuration::from_secs(600) && gap < jiff::SignedDuration::from_secs(601),
        "{gap:?}"
    );
}

#[tokio::test]
async fn counters_faults_and_the_log_tell_core_and_events_k8s_io_events_apart() {
    let kube = FakeKube::start().await.unwrap();
    let core: Api<CoreEvent> = Api::namespaced(kube.client(), "ns");
    let new: Api<NewEvent> = Api::namespaced(kube.client(), "ns");
    kube.faults().fail_next(
        Match::any().group("events.k8s.io").resource("events"),
        1,
        InjectedError::Status(500),
    );
    core.list(&Default::default()).await.unwrap();
    new.list(&Default::default()).await.unwrap_err();

    let calls = kube.calls();
    assert_eq!(calls.count(Some("list"), Some("events")), 2);
    assert_eq!(calls.count_in_group("", Some("list"), Some("events")), 1);
    assert_eq!(
        calls.count_in_group("events.k8s.io", Some("list"), Some("events")),
        1
    );
    let injected = kube
        .requests()
        .matching(&RequestFilter::any().group("events.k8s.io"));
    assert_eq!(injected.len(), 1);
    assert_eq!(injected[0].outcome, Outcome::Injected(500));
}
