//! TTL cleanup at scale, against testkit's FakeKube over real HTTP: 10 000
//! states, most of them recent. A pass must list metadata only, page by
//! page, and read whole only the states that are expired and idle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use state_store::naming::{KEY_STATE, state_labels};
use state_store::{
    ConfigMapBackend, Document, RemediationState, StateStore, TaskStatus, TtlPolicy,
};
use testkit::kube::FakeKube;

const STATES: usize = 10_000;
const EXPIRED: usize = 400;
const EXPIRED_IN_PROGRESS: usize = 100;

/// `document` as the ConfigMap `name` in `default`.
fn config_map(name: &str, document: Document) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("default".to_owned()),
            labels: Some(document.labels),
            annotations: Some(document.annotations),
            ..ObjectMeta::default()
        },
        data: Some(document.data),
        ..ConfigMap::default()
    }
}

/// A state document as the store writes it (payload and mirrored
/// annotations), last updated `age` ago.
fn document(task_id: &str, status: TaskStatus, age: SignedDuration) -> Document {
    let mut state = RemediationState::new(task_id, Timestamp::now() - age);
    state.status = status;
    let mut document = Document {
        labels: state_labels(task_id),
        ..Document::default()
    };
    document
        .data
        .insert(KEY_STATE.into(), serde_json::to_string(&state).unwrap());
    let annotations = [
        ("supersede.dev/schema-version", "v1".to_owned()),
        ("supersede.dev/last-update", state.last_update.to_string()),
        ("supersede.dev/status", status.as_str().to_owned()),
    ];
    for (k, v) in annotations {
        document.annotations.insert(k.into(), v);
    }
    document
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_over_ten_thousand_states_reads_only_the_expired_ones() {
    let kube = FakeKube::start().await.unwrap();
    let backend = ConfigMapBackend::new(kube.client(), "default");
    let week = SignedDuration::from_hours(8 * 24);
    // Put in place directly (no request each), as their creates would.
    let seeded = kube
        .seed((0..STATES).map(|i| {
            let task = format!("t{i}");
            let (status, age) = match i {
                i if i < EXPIRED => (TaskStatus::Completed, week),
                i if i < EXPIRED + EXPIRED_IN_PROGRESS => (TaskStatus::InProgress, week),
                _ => (TaskStatus::Completed, SignedDuration::from_hours(1)),
            };
            config_map(&format!("task-{task}-state"), document(&task, status, age))
        }))
        .unwrap();
    assert_eq!(seeded, STATES);
    kube.calls().reset();

    let store = StateStore::new(backend);
    let report = store
        .cleanup_expired(TtlPolicy::default().ttl)
        .await
        .unwrap();

    assert_eq!(report.examined, STATES);
    assert_eq!(report.deleted, EXPIRED);
    assert_eq!(report.kept_in_progress, EXPIRED_IN_PROGRESS);
    assert_eq!(report.read, EXPIRED);
    let calls = kube.calls();
    let count = |verb| usize::try_from(calls.count(Some(verb), Some("configmaps"))).unwrap();
    assert_eq!(count("list"), STATES / 500, "pages of 500");
    assert_eq!(
        count("get"),
        EXPIRED,
        "only the expired, idle states are read whole"
    );
    assert_eq!(count("delete"), EXPIRED);
}
