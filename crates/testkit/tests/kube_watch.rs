#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! FakeKube's list and watch semantics, through the real `kube::Api` and
//! `kube::runtime::watcher`: selectors, pagination, event order,
//! bookmarks, 410 Expired, timeouts.

#![cfg(feature = "kube")]

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use kube::{Error, ResourceExt};
use serde_json::json;
use testkit::kube::FakeKube;

/// Generous bound for things that should happen at once (never a timing
/// assertion, only a guard against hanging forever).
const PATIENCE: Duration = Duration::from_secs(10);

fn config_map(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_owned());
    cm.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    );
    cm
}

async fn names(api: &Api<ConfigMap>, lp: &ListParams) -> Vec<String> {
    let mut names: Vec<String> = api
        .list(lp)
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    names.sort();
    names
}

async fn seed(api: &Api<ConfigMap>) {
    for (name, labels) in [
        (
            "web",
            vec![("app", "web"), ("tier", "front"), ("replicas", "3")],
        ),
        (
            "api",
            vec![("app", "api"), ("tier", "back"), ("replicas", "5")],
        ),
        ("db", vec![("app", "db"), ("tier", "back")]),
        ("plain", vec![]),
    ] {
        api.create(&PostParams::default(), &config_map(name, &labels))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn label_selectors_support_every_operator() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    seed(&cms).await;
    let cases: [(&str, &[&str]); 11] = [
        ("app=web", &["web"]),
        ("app==api", &["api"]),
        ("tier!=back", &["plain", "web"]),
        ("app in (web, db)", &["db", "web"]),
        ("app notin (web,db)", &["api", "plain"]),
        ("tier", &["api", "db", "web"]),
        ("!tier", &["plain"]),
        ("tier=back,app!=db", &["api"]),
        ("replicas>3", &["api"]),
        ("replicas<4", &["web"]),
        ("", &["api", "db", "plain", "web"]),
    ];
    for (selector, expected) in cases {
        let lp = ListParams::default().labels(selector);
        assert_eq!(names(&cms, &lp).await, expected, "selector {selector:?}");
    }
    let err = cms
        .list(&ListParams::default().labels("app in (web"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Api(s) if s.code == 400 && s.reason == "BadRequest"));
}

#[tokio::test]
async fn field_selectors_filter_on_name_and_namespace() {
    let kube = FakeKube::start().await.unwrap();
    let a: Api<ConfigMap> = Api::namespaced(kube.client(), "a");
    let b: Api<ConfigMap> = Api::namespaced(kube.client(), "b");
    a.create(&PostParams::default(), &config_map("one", &[]))
        .await
        .unwrap();
    a.create(&PostParams::default(), &config_map("two", &[]))
        .await
        .unwrap();
    b.create(&PostParams::default(), &config_map("one", &[]))
        .await
        .unwrap();
    let all: Api<ConfigMap> = Api::all(kube.client());

    let by_name = all
        .list(&ListParams::default().fields("metadata.name=one"))
        .await
        .unwrap();
    let mut found: Vec<String> = by_name
        .items
        .iter()
        .map(|c| c.namespace().unwrap())
        .collect();
    found.sort();
    assert_eq!(found, ["a", "b"]);

    let lp = ListParams::default().fields("metadata.namespace==a,metadata.name!=one");
    assert_eq!(names(&all, &lp).await, ["two"]);

    let err = all
        .list(&ListParams::default().fields("data.k=v"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Api(s) if s.code == 400));
}

#[tokio::test]
async fn list_pages_with_limit_and_continue_and_reports_a_resource_version() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    for i in 0..5 {
        cms.create(&PostParams::default(), &config_map(&format!("c{i}"), &[]))
            .await
            .unwrap();
    }
    let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    assert_eq!(
        first.metadata.resource_version.as_deref(),
        Some(kube.resource_version().to_string().as_str())
    );
    let mut seen: Vec<String> = first.items.iter().map(ResourceExt::name_any).collect();
    let mut token = first.metadata.continue_;
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = cms
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await
            .unwrap();
        seen.extend(page.items.iter().map(ResourceExt::name_any));
        token = page.metadata.continue_;
    }
    assert_eq!(seen, ["c0", "c1", "c2", "c3", "c4"]);
}

#[tokio::test]
async fn watch_streams_added_modified_deleted_in_resource_version_order() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut events = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();

    cms.create(&PostParams::default(), &config_map("c1", &[]))
        .await
        .unwrap();
    cms.patch(
        "c1",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    cms.delete("c1", &DeleteParams::default()).await.unwrap();

    let seen = next_events(&mut events, 3).await;
    let kinds: Vec<&str> = seen.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    assert!(seen.windows(2).all(|w| w[0].2 < w[1].2), "{seen:?}");
    assert_eq!(kube.calls().count(Some("watch"), Some("configmaps")), 1);
}

#[tokio::test]
async fn watch_from_an_older_version_replays_what_was_missed() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let first = cms
        .create(&PostParams::default(), &config_map("c1", &[]))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &config_map("c2", &[]))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &config_map("c3", &[]))
        .await
        .unwrap();

    let events: Vec<String> = cms
        .watch(
            &WatchParams::default().timeout(1),
            &first.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|e| match e {
            WatchEvent::Added(o) => o.name_any(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(events, ["c2", "c3"]);
}

#[tokio::test]
async fn watch_from_zero_starts_with_the_current_state() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    cms.create(&PostParams::default(), &config_map("c1", &[]))
        .await
        .unwrap();
    let mut events = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(PATIENCE, events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first, WatchEvent::Added(o) if o.name_any() == "c1"));
}

#[tokio::test]
async fn bookmarks_carry_the_latest_resource_version_when_asked() {
    let kube = FakeKube::builder()
        .bookmark_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let other: Api<ConfigMap> = Api::namespaced(kube.client(), "elsewhere");
    let wp = WatchParams::default();
    assert!(wp.bookmarks, "kube asks for bookmarks by default");
    let mut events = cms.watch(&wp, "0").await.unwrap().boxed();
    // A write this watch does not see still moves the bookmark forward.
    let unrelated = other
        .create(&PostParams::default(), &config_map("x", &[]))
        .await
        .unwrap();
    let target: u64 = unrelated.resource_version().unwrap().parse().unwrap();
    loop {
        let event = tokio::time::timeout(PATIENCE, events.try_next())
            .await
            .expect("a bookmark arrives")
            .unwrap()
            .unwrap();
        match event {
            WatchEvent::Bookmark(b) => {
                let rv: u64 = b.metadata.resource_version.parse().unwrap();
                if rv >= target {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // Without allowWatchBookmarks there are none.
    let quiet: Vec<_> = cms
        .watch(&WatchParams::default().disable_bookmarks().timeout(1), "0")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(quiet.is_empty(), "{quiet:?}");
}

#[tokio::test]
async fn watch_from_a_compacted_version_gets_410_expired() {
    let kube = FakeKube::builder().watch_history(3).start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let first = cms
        .create(&PostParams::default(), &config_map("c0", &[]))
        .await
        .unwrap();
    for i in 1..10 {
        cms.create(&PostParams::default(), &config_map(&format!("c{i}"), &[]))
            .await
            .unwrap();
    }
    let mut events = cms
        .watch(&WatchParams::default(), &first.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    let event = tokio::time::timeout(PATIENCE, events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match event {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
            assert!(status.message.starts_with("too old resource version"));
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert_eq!(
        kube.calls().count_outcome(
            Some("watch"),
            Some("configmaps"),
            &testkit::calls::Outcome::Error(410)
        ),
        1
    );
    // A recent version is still served.
    let recent = kube.resource_version() - 1;
    let replay: Vec<_> = cms
        .watch(&WatchParams::default().timeout(1), &recent.to_string())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(replay.len(), 1);
}

#[tokio::test]
async fn label_selected_watch_sees_objects_move_in_and_out() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    cms.create(
        &PostParams::default(),
        &config_map("c1", &[("stage", "review")]),
    )
    .await
    .unwrap();
    let mut events = cms
        .watch(&WatchParams::default().labels("stage=test"), "0")
        .await
        .unwrap()
        .boxed();
    let relabel = |stage: &str| Patch::Merge(json!({"metadata": {"labels": {"stage": stage}}}));
    cms.patch("c1", &PatchParams::default(), &relabel("test"))
        .await
        .unwrap();
    cms.patch("c1", &PatchParams::default(), &relabel("done"))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let event = tokio::time::timeout(PATIENCE, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        kinds.push(match event {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Deleted(_) => "DELETED",
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(kinds, ["ADDED", "DELETED"]);
}

#[tokio::test]
async fn watch_ends_after_its_timeout_seconds() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let started = std::time::Instant::now();
    let events: Vec<_> = tokio::time::timeout(
        PATIENCE,
        cms.watch(&WatchParams::default().timeout(1), "0")
            .await
            .unwrap()
            .try_collect::<Vec<_>>(),
    )
    .await
    .expect("the watch ends by itself")
    .unwrap();
    assert!(events.is_empty());
    assert!(started.elapsed() >= Duration::from_secs(1));
    // The server forgets the watch once its stream ends.
    let deadline = std::time::Instant::now() + PATIENCE;
    while kube.watch_count() > 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn kube_runtime_watcher_lists_then_follows_changes() {
    for config in [
        watcher::Config::default(),
        watcher::Config::default().streaming_lists(),
    ] {
        let kube = FakeKube::start().await.unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
        cms.create(&PostParams::default(), &config_map("before", &[]))
            .await
            .unwrap();
        let mut stream = watcher(cms.clone(), config).boxed();
        let mut initial = Vec::new();
        loop {
            match tokio::time::timeout(PATIENCE, stream.try_next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                watcher::Event::Init => {}
                watcher::Event::InitApply(o) => initial.push(o.name_any()),
                watcher::Event::InitDone => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(initial, ["before"]);
        cms.create(&PostParams::default(), &config_map("after", &[]))
            .await
            .unwrap();
        let next = tokio::time::timeout(PATIENCE, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(next, watcher::Event::Apply(o) if o.name_any() == "after"));
    }
}

#[tokio::test]
async fn watch_history_is_kept_per_kind_so_writes_to_other_kinds_never_expire_a_watch() {
    use k8s_openapi::api::coordination::v1::Lease;
    let kube = FakeKube::builder().watch_history(3).start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let leases: Api<Lease> = Api::namespaced(kube.client(), "ns");
    let first = cms
        .create(&PostParams::default(), &config_map("c0", &[]))
        .await
        .unwrap();
    let from = first.resource_version().unwrap();
    cms.create(&PostParams::default(), &config_map("c1", &[]))
        .await
        .unwrap();
    // A storm of renewals of another kind, far beyond the history size.
    let mut lease = Lease::default();
    lease.metadata.name = Some("l".to_owned());
    leases.create(&PostParams::default(), &lease).await.unwrap();
    for i in 0..20 {
        let renew = Patch::Merge(json!({"spec": {"holderIdentity": format!("pod-{i}")}}));
        leases
            .patch("l", &PatchParams::default(), &renew)
            .await
            .unwrap();
    }
    let mut events = Box::pin(cms.watch(&WatchParams::default(), &from).await.unwrap());
    match tokio::time::timeout(PATIENCE, events.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Added(cm)) => assert_eq!(cm.name_any(), "c1"),
        other => panic!("expected the missed ConfigMap, got {other:?}"),
    }

    // Writes to the kind itself do push its history out.
    for i in 2..6 {
        cms.create(&PostParams::default(), &config_map(&format!("c{i}"), &[]))
            .await
            .unwrap();
    }
    let mut expired = Box::pin(cms.watch(&WatchParams::default(), &from).await.unwrap());
    match expired.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test]
async fn send_initial_events_needs_resource_version_match_not_older_than_as_on_the_api_server() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    cms.create(&PostParams::default(), &config_map("c0", &[]))
        .await
        .unwrap();
    let watch = |query: &str| {
        let request = http::Request::get(format!(
            "/api/v1/namespaces/ns/configmaps?watch=true&{query}"
        ))
        .body(Vec::new())
        .unwrap();
        let client = kube.client();
        async move {
            let response = client.send(request.map(Into::into)).await.unwrap();
            (response.status().as_u16(), response)
        }
    };
    let status_of = |response: http::Response<kube::client::Body>| async move {
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };

    let (code, response) = watch("sendInitialEvents=true&allowWatchBookmarks=true").await;
    assert_eq!(code, 422);
    assert_eq!(
        status_of(response).await["message"],
        "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
    );
    let (code, response) = watch("resourceVersionMatch=NotOlderThan").await;
    assert_eq!(code, 422);
    let status = status_of(response).await;
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "resourceVersionMatch"
    );
    assert!(status["message"].as_str().unwrap().ends_with(
        "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
    ));
    let (code, _) =
        watch("sendInitialEvents=true&resourceVersionMatch=Exact&allowWatchBookmarks=true").await;
    assert_eq!(code, 422);

    // What kube's streaming list sends is served: ADDED, then the bookmark
    // that ends the initial events.
    let mut stream = Box::pin(
        cms.watch(&WatchParams::streaming_lists(), "")
            .await
            .unwrap(),
    );
    assert!(
        matches!(stream.try_next().await.unwrap(), Some(WatchEvent::Added(cm)) if cm.name_any() == "c0")
    );
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Bookmark(b)) => {
            assert_eq!(
                b.metadata
                    .annotations
                    .get("k8s.io/initial-events-end")
                    .map(String::as_str),
                Some("true")
            );
        }
        other => panic!("expected the initial-events-end bookmark, got {other:?}"),
    }
}

/// The events of one watch, as (kind, name, resourceVersion), until it has
/// delivered `n`.
async fn next_events(
    events: &mut (impl futures::Stream<Item = Result<WatchEvent<ConfigMap>, Error>> + Unpin),
    n: usize,
) -> Vec<(&'static str, String, u64)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let event = tokio::time::timeout(PATIENCE, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let (kind, obj) = match event {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            other => panic!("unexpected {other:?}"),
        };
        let rv = obj.resource_version().unwrap().parse().unwrap();
        seen.push((kind, obj.name_any(), rv));
    }
    seen
}

#[tokio::test]
async fn single_object_watches_see_only_their_objects_events_and_share_the_rest_in_order() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    for name in ["web", "api"] {
        cms.create(&PostParams::default(), &config_map(name, &[]))
            .await
            .unwrap();
    }
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    // Three watches of `web` by field selector, one of everything.
    let mut web = Vec::new();
    for _ in 0..3 {
        let wp = WatchParams::default().fields("metadata.name=web");
        web.push(cms.watch(&wp, &rv).await.unwrap().boxed());
    }
    let mut all = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();

    for i in 0..5 {
        for name in ["api", "web"] {
            cms.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"i": i.to_string()}})),
            )
            .await
            .unwrap();
        }
    }
    cms.delete("web", &DeleteParams::default()).await.unwrap();

    let everything = next_events(&mut all, 11).await;
    assert!(
        everything.windows(2).all(|w| w[0].2 < w[1].2),
        "{everything:?}"
    );
    let expected: Vec<_> = everything
        .iter()
        .filter(|(_, name, _)| name == "web")
        .cloned()
        .collect();
    assert_eq!(expected.len(), 6);
    assert_eq!(expected.last().unwrap().0, "DELETED");
    for events in &mut web {
        // The same events as the unfiltered watch saw of `web`, in the same
        // order; an event of `api` would have come before the DELETED
        // (every watch receives its events in resourceVersion order).
        assert_eq!(next_events(events, 6).await, expected);
    }
    assert_eq!(kube.watch_count(), 4);
}

#[tokio::test]
async fn watch_events_count_each_change_once_per_watch_that_received_it() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    seed(&cms).await;
    let rv = cms.get("web").await.unwrap().resource_version().unwrap();
    let before = kube.watch_events();
    // Three watches pinned to `web`, one pinned to `db`.
    let mut streams = Vec::new();
    for name in ["web", "web", "web", "db"] {
        let params = WatchParams::default().fields(&format!("metadata.name={name}"));
        streams.push(cms.watch(&params, &rv).await.unwrap().boxed());
    }
    let patch = Patch::Merge(json!({"data": {"k": "v"}}));
    cms.patch("web", &PatchParams::default(), &patch)
        .await
        .unwrap();
    for stream in &mut streams[..3] {
        let event = tokio::time::timeout(PATIENCE, stream.try_next())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(event, Some(WatchEvent::Modified(_))), "{event:?}");
    }
    assert_eq!(kube.watch_events() - before, 3);
}
