#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! FakeKube's LIST semantics, as the real `kube::Client` and kube-runtime's
//! watcher rely on them: every page of a paginated LIST shows the first
//! page's snapshot and carries its resourceVersion, continue tokens expire
//! with the API server's `Status`, `remainingItemCount` only without
//! selectors, and reads at a resourceVersion (exact, not older than, any).

#![cfg(feature = "kube")]

use std::collections::BTreeMap;
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, VersionMatch, WatchEvent,
    WatchParams,
};
use kube::{Client, Error, ResourceExt};
use serde_json::{Value, json};
use testkit::kube::FakeKube;

fn config_map(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

async fn seed(cms: &Api<ConfigMap>, names: &[&str]) {
    for name in names {
        cms.create(
            &PostParams::default(),
            &config_map(name, &[("app", "agent")]),
        )
        .await
        .unwrap();
    }
}

fn names(list: &kube::core::ObjectList<ConfigMap>) -> Vec<String> {
    list.items.iter().map(ResourceExt::name_any).collect()
}

fn label(cm: &ConfigMap, key: &str) -> Option<String> {
    cm.labels().get(key).cloned()
}

/// A raw GET, for Status bodies kube's error type does not keep.
async fn raw_get(client: &Client, path: &str) -> (u16, Value) {
    let request = http::Request::get(path).body(Vec::new()).unwrap();
    let response = client.send(request.map(Into::into)).await.unwrap();
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

fn api_error(err: Error) -> (u16, String, String) {
    match err {
        Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn every_page_of_a_list_shows_the_first_pages_snapshot_and_a_watch_from_it_misses_nothing() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    seed(&cms, &["c0", "c1", "c2", "c3", "c4", "c5"]).await;

    let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
    let snapshot = first.metadata.resource_version.clone().unwrap();
    assert_eq!(names(&first), ["c0", "c1"]);

    // Writes between the pages, on both sides of the page boundary.
    let relabel = Patch::Merge(json!({"metadata": {"labels": {"phase": "cancelling"}}}));
    cms.patch("c3", &PatchParams::default(), &relabel)
        .await
        .unwrap();
    cms.delete("c4", &DeleteParams::default()).await.unwrap();
    cms.delete("c0", &DeleteParams::default()).await.unwrap();
    seed(&cms, &["c9"]).await;

    let mut pages = vec![first];
    while let Some(token) = pages
        .last()
        .unwrap()
        .metadata
        .continue_
        .clone()
        .filter(|t| !t.is_empty())
    {
        pages.push(
            cms.list(&ListParams::default().limit(2).continue_token(&token))
                .await
                .unwrap(),
        );
    }
    for page in &pages {
        assert_eq!(
            page.metadata.resource_version.as_deref(),
            Some(snapshot.as_str()),
            "every page is the snapshot"
        );
    }
    let all: Vec<ConfigMap> = pages.iter().flat_map(|p| p.items.clone()).collect();
    let listed: Vec<String> = all.iter().map(ResourceExt::name_any).collect();
    assert_eq!(
        listed,
        ["c0", "c1", "c2", "c3", "c4", "c5"],
        "as it was when the list began"
    );
    let c3 = all.iter().find(|c| c.name_any() == "c3").unwrap();
    assert_eq!(label(c3, "phase"), None, "c3 before its change");

    // Watching from the list's resourceVersion delivers exactly what changed since.
    let mut events = Box::pin(cms.watch(&WatchParams::default(), &snapshot).await.unwrap());
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(match events.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(c) => format!("ADDED {}", c.name_any()),
            WatchEvent::Modified(c) => {
                format!("MODIFIED {} {:?}", c.name_any(), label(&c, "phase"))
            }
            WatchEvent::Deleted(c) => format!("DELETED {}", c.name_any()),
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(
        seen,
        [
            "MODIFIED c3 Some(\"cancelling\")",
            "DELETED c4",
            "DELETED c0",
            "ADDED c9"
        ]
    );
}

#[tokio::test]
async fn a_continue_token_expires_after_the_configured_writes_with_the_api_servers_status() {
    let kube = FakeKube::builder()
        .continue_expires_after_writes(2)
        .start()
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    seed(&cms, &["c0", "c1", "c2", "c3"]).await;
    let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
    let token = first.metadata.continue_.clone().unwrap();
    seed(&cms, &["d0"]).await;
    // Two writes since the snapshot: still good.
    let second = cms
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&second), ["c2"]);
    seed(&cms, &["d1", "d2"]).await;

    let (code, reason, message) = api_error(
        cms.list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (410, "Expired"));
    assert!(
        message.starts_with(
            "The provided continue parameter is too old to display a consistent list result."
        ),
        "{message}"
    );

    // The Status carries a token that goes on from the same place in the latest state.
    let (code, status) = raw_get(
        &kube.client(),
        &format!("/api/v1/namespaces/ns/configmaps?limit=2&continue={token}"),
    )
    .await;
    assert_eq!(code, 410);
    let latest = status["metadata"]["continue"].as_str().unwrap().to_owned();
    let rest = cms
        .list(&ListParams::default().continue_token(&latest))
        .await
        .unwrap();
    assert_eq!(names(&rest), ["c2", "c3", "d0", "d1", "d2"]);
    assert_eq!(
        rest.metadata.resource_version,
        Some(kube.resource_version().to_string())
    );
}

#[tokio::test(start_paused = true)]
async fn a_continue_token_expires_once_its_snapshot_is_older_than_the_compaction_interval() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    seed(&cms, &["c0", "c1", "c2"]).await;
    let first = cms.list(&ListParams::default().limit(1)).await.unwrap();
    // Nobody writes: the snapshot stays the latest state, the token good.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let second = cms
        .list(
            &ListParams::default()
                .limit(1)
                .continue_token(first.metadata.continue_.as_ref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(names(&second), ["c1"]);

    seed(&cms, &["d0"]).await;
    tokio::time::sleep(Duration::from_secs(299)).await;
    let token = second.metadata.continue_.clone().unwrap();
    cms.list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .expect("not yet compacted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, reason, _) = api_error(
        cms.list(&ListParams::default().limit(1).continue_token(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, reason.as_str()),
        (410, "Expired"),
        "five minutes after it was superseded"
    );
}

#[tokio::test]
async fn remaining_item_count_is_given_only_without_selectors() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    seed(&cms, &["c0", "c1", "c2", "c3"]).await;
    let plain = cms.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(plain.metadata.remaining_item_count, Some(3));
    let selected = cms
        .list(&ListParams::default().limit(1).labels("app=agent"))
        .await
        .unwrap();
    assert_eq!(names(&selected), ["c0"]);
    assert!(selected.metadata.continue_.is_some());
    assert_eq!(
        selected.metadata.remaining_item_count, None,
        "unknown with a label selector"
    );
    let by_field = cms
        .list(&ListParams::default().limit(1).fields("metadata.name!=c0"))
        .await
        .unwrap();
    assert_eq!(
        by_field.metadata.remaining_item_count, None,
        "unknown with a field selector"
    );
}

#[tokio::test]
async fn lists_read_exactly_at_or_not_older_than_a_resource_version() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    seed(&cms, &["c0"]).await;
    let before = kube.resource_version();
    seed(&cms, &["c1"]).await;

    let exact = ListParams::default()
        .at(&before.to_string())
        .matching(VersionMatch::Exact);
    let past = cms.list(&exact).await.unwrap();
    assert_eq!(names(&past), ["c0"]);
    assert_eq!(past.metadata.resource_version, Some(before.to_string()));
    let newer = ListParams::default()
        .at(&before.to_string())
        .matching(VersionMatch::NotOlderThan);
    assert_eq!(names(&cms.list(&newer).await.unwrap()), ["c0", "c1"]);

    let future = (kube.resource_version() + 10).to_string();
    let mut config = kube.config();
    config.default_retry = false;
    let no_retry: Api<ConfigMap> = Api::namespaced(Client::try_from(config).unwrap(), "ns");
    let (code, reason, message) = api_error(
        no_retry
            .list(
                &ListParams::default()
                    .at(&future)
                    .matching(VersionMatch::NotOlderThan),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (504, "Timeout"));
    assert!(
        message.starts_with("Timeout: Too large resource version"),
        "{message}"
    );

    let (code, status) = raw_get(
        &kube.client(),
        "/api/v1/namespaces/ns/configmaps?resourceVersionMatch=Exact",
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        status["message"],
        "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
    );
}

#[tokio::test]
async fn a_lagging_watch_cache_serves_resource_version_zero_reads_stale() {
    let kube = FakeKube::builder()
        .watch_cache_lag(1)
        .start()
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    seed(&cms, &["c0", "c1"]).await;
    let any = ListParams::default()
        .at("0")
        .matching(VersionMatch::NotOlderThan);
    let cached = cms.list(&any).await.unwrap();
    assert_eq!(names(&cached), ["c0"], "one event behind");
    assert!(
        cached
            .metadata
            .resource_version
            .unwrap()
            .parse::<u64>()
            .unwrap()
            < kube.resource_version()
    );
    assert_eq!(
        names(&cms.list(&ListParams::default()).await.unwrap()),
        ["c0", "c1"],
        "a quorum read is current"
    );
    let (code, _) = raw_get(
        &kube.client(),
        "/api/v1/namespaces/ns/configmaps/c1?resourceVersion=0",
    )
    .await;
    assert_eq!(code, 404, "the cache has not seen c1 yet");
    cms.get("c1").await.expect("an ordinary GET is current");
}

/// A selector naming a label's value is answered from the store's label
/// index for the current state: the answer must be exactly the scan's —
/// the objects carrying the label now (not those that had it), of the
/// namespace asked, in name order across pages — and a read at an older
/// resourceVersion still shows that snapshot.
#[tokio::test]
async fn a_selector_on_a_labels_value_lists_exactly_the_objects_carrying_it_now() {
    let kube = FakeKube::start().await.unwrap();
    let client = kube.client();
    let (ns, other): (Api<ConfigMap>, Api<ConfigMap>) = (
        Api::namespaced(client.clone(), "ns"),
        Api::namespaced(client.clone(), "other"),
    );
    for (name, tier) in [
        ("c5", "a"),
        ("c1", "b"),
        ("c3", "a"),
        ("c2", "c"),
        ("c4", "a"),
    ] {
        let cm = config_map(name, &[("app", "agent"), ("tier", tier)]);
        ns.create(&PostParams::default(), &cm).await.unwrap();
    }
    let elsewhere = config_map("c0", &[("app", "agent"), ("tier", "a")]);
    other
        .create(&PostParams::default(), &elsewhere)
        .await
        .unwrap();
    let before = ns.list(&ListParams::default()).await.unwrap();
    let before_rv = before.metadata.resource_version.clone().unwrap();

    // c3 leaves tier a, c2 joins it, c5 loses the label, c4 is deleted.
    let tier = |t: Value| Patch::Merge(json!({"metadata": {"labels": {"tier": t}}}));
    ns.patch("c3", &PatchParams::default(), &tier(json!("b")))
        .await
        .unwrap();
    ns.patch("c2", &PatchParams::default(), &tier(json!("a")))
        .await
        .unwrap();
    ns.patch("c5", &PatchParams::default(), &tier(Value::Null))
        .await
        .unwrap();
    ns.delete("c4", &DeleteParams::default()).await.unwrap();

    let list = |selector: &str| ListParams::default().labels(selector);
    assert_eq!(names(&ns.list(&list("tier=a")).await.unwrap()), ["c2"]);
    assert_eq!(
        names(&ns.list(&list("tier in (a,b)")).await.unwrap()),
        ["c1", "c2", "c3"],
        "in name order, whichever value each carries"
    );
    assert_eq!(
        names(&ns.list(&list("app=agent,tier!=b")).await.unwrap()),
        ["c2", "c5"],
        "the whole selector still applies to what the index finds"
    );
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(
        names(&all.list(&list("tier=a")).await.unwrap()),
        ["c2", "c0"],
        "every namespace, in the store's key order (namespace, then name)"
    );

    // Paged one at a time: the same objects, each once.
    let mut paged = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = list("tier in (a,b)").limit(1);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = ns.list(&params).await.unwrap();
        paged.extend(names(&page));
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(paged, ["c1", "c2", "c3"]);

    // At the earlier resourceVersion: the snapshot, not the index.
    let then = ns
        .list(&list("tier=a").at(&before_rv).matching(VersionMatch::Exact))
        .await
        .unwrap();
    assert_eq!(names(&then), ["c3", "c4", "c5"]);

    // A watch's initial state is the same set.
    let params = WatchParams::default()
        .labels("tier=a")
        .initial_events()
        .timeout(1);
    let mut events = Box::pin(ns.watch(&params, "").await.unwrap());
    let mut initial = Vec::new();
    while let Some(event) = events.try_next().await.unwrap() {
        match event {
            WatchEvent::Added(c) => initial.push(c.name_any()),
            WatchEvent::Bookmark(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, ["c2"]);
}
