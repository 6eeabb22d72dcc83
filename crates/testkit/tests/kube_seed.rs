#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Bulk seeding: ten thousand objects put straight into FakeKube, as
//! creates would store them, for reconciler benchmarks; the API then serves
//! them like any others.

#![cfg(feature = "kube")]

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, ObjectMeta};
use serde_json::json;
use testkit::kube::{Error, FakeKube, RequestFilter};

fn config_map(i: usize) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(format!("state-{i:05}")),
            namespace: Some("bench".to_owned()),
            ..Default::default()
        },
        data: Some([("state.json".to_owned(), format!("{{\"task\":{i}}}"))].into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn ten_thousand_objects_are_seeded_without_requests_and_served_like_created_ones() {
    let kube = FakeKube::start().await.unwrap();
    let before = kube.resource_version();
    let seeded = kube.seed((0..10_000).map(config_map)).unwrap();
    assert_eq!(seeded, 10_000);
    assert_eq!(kube.calls().total(), 0, "no request was made");
    assert_eq!(kube.requests().count(&RequestFilter::any()), 0);
    assert_eq!(kube.resource_version(), before + 10_000, "one write each");

    // Paged through the API like any objects (kube-runtime's page size).
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "bench");
    let mut names = BTreeSet::new();
    let mut versions = BTreeSet::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = cms.list(&lp).await.unwrap();
        for cm in &page.items {
            names.insert(cm.name_any());
            versions.insert(cm.resource_version().unwrap());
        }
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(names.len(), 10_000);
    assert_eq!(
        versions.len(),
        10_000,
        "every object its own resourceVersion"
    );
    let one = cms.get("state-04242").await.unwrap();
    assert!(one.uid().is_some() && one.creation_timestamp().is_some());
    assert_eq!(one.data.unwrap()["state.json"], "{\"task\":4242}");
    assert_eq!(
        one.metadata.managed_fields.unwrap()[0].manager.as_deref(),
        Some("testkit")
    );
}

#[tokio::test(start_paused = true)]
async fn seeded_pods_meet_the_kubelet_and_a_refused_object_stops_the_seeding() {
    let kube = FakeKube::start().await.unwrap();
    let pods: Vec<Pod> = (0..3)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("agent-{i}")},
                "spec": {"containers": [{"name": "agent", "image": "agent:1"}]},
            }))
            .unwrap()
        })
        .collect();
    assert_eq!(kube.seed(pods).unwrap(), 3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let running = kube.peek::<Pod>("default", "agent-2").unwrap();
    assert_eq!(running.status.unwrap().phase.as_deref(), Some("Running"));

    let mut bad = config_map(1);
    bad.metadata.name = Some("Not_A_Name".to_owned());
    let err = kube.seed([config_map(0), bad, config_map(2)]).unwrap_err();
    assert!(
        matches!(&err, Error::Seed { name, .. } if name == "Not_A_Name"),
        "{err}"
    );
    assert!(
        kube.peek::<ConfigMap>("bench", "state-00000").is_some(),
        "earlier ones stay"
    );
    assert!(
        kube.peek::<ConfigMap>("bench", "state-00002").is_none(),
        "later ones are not tried"
    );
}
