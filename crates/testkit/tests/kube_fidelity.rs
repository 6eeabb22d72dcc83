#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Places where FakeKube once answered differently from the API server,
//! each checked through the client that depends on the real answer:
//! strategic merge patches of custom resources, kube-runtime's finalizer
//! helper (JSON patch `test` against `null`), and core/v1 and
//! events.k8s.io/v1 Events as one set of objects.

#![cfg(feature = "kube")]

mod support;

use std::convert::Infallible;
use std::sync::Arc;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, ObjectReference};
use k8s_openapi::api::events::v1::Event as NewEvent;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer};
use kube::{CustomResourceExt, Error, Resource, ResourceExt};
use serde_json::json;
use support::CodeRun;
use testkit::kube::FakeKube;

const NS: &str = "ns";

fn api_error(err: Error) -> (u16, String, String) {
    match err {
        Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn with_code_run() -> (FakeKube, Api<CodeRun>) {
    let kube = FakeKube::builder()
        .crd(CodeRun::crd())
        .start()
        .await
        .unwrap();
    let runs: Api<CodeRun> = Api::namespaced(kube.client(), NS);
    runs.create(&PostParams::default(), &support::code_run("run-1"))
        .await
        .unwrap();
    (kube, runs)
}

#[tokio::test]
async fn strategic_merge_patch_of_a_custom_resource_is_415_and_of_a_built_in_kind_is_applied() {
    let (kube, runs) = with_code_run().await;
    let change = json!({"spec": {"head_sha": "def"}});
    let (code, reason, message) = api_error(
        runs.patch(
            "run-1",
            &PatchParams::default(),
            &Patch::Strategic(change.clone()),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (415, "UnsupportedMediaType"));
    assert_eq!(
        message,
        "the body of the request was in an unknown format - accepted media types include: \
         application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    );
    assert_eq!(
        runs.get("run-1").await.unwrap().spec.head_sha,
        "abc",
        "nothing written"
    );
    let merged = runs
        .patch("run-1", &PatchParams::default(), &Patch::Merge(change))
        .await
        .unwrap();
    assert_eq!(merged.spec.head_sha, "def");

    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), NS);
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c1"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let labelled = cms
        .patch(
            "c1",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"a": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.labels()["a"], "1");

    // `application/apply-patch+json` is no patch type of the API server's.
    let request = http::Request::patch("/api/v1/namespaces/ns/configmaps/c1?fieldManager=t")
        .header("content-type", "application/apply-patch+json")
        .body(b"{}".to_vec())
        .unwrap();
    let response = kube.client().send(request.map(Into::into)).await.unwrap();
    assert_eq!(response.status(), 415);
}

#[tokio::test]
async fn kube_runtimes_finalizer_helper_adds_and_removes_its_finalizer() {
    let (_kube, runs) = with_code_run().await;
    let reconcile = |event: finalizer::Event<CodeRun>| async move {
        let _ = event;
        Ok::<_, Infallible>(Action::await_change())
    };
    // No finalizers yet: the helper tests `/metadata/finalizers` against
    // `null` and adds its own.
    let fresh = Arc::new(runs.get("run-1").await.unwrap());
    finalizer(&runs, "supersede.dev/cleanup", fresh, reconcile)
        .await
        .expect("the finalizer is added");
    let held = runs.get("run-1").await.unwrap();
    assert_eq!(held.finalizers(), ["supersede.dev/cleanup"]);

    runs.delete("run-1", &DeleteParams::default())
        .await
        .unwrap();
    let deleting = Arc::new(runs.get("run-1").await.unwrap());
    assert!(
        deleting.meta().deletion_timestamp.is_some(),
        "held by the finalizer"
    );
    finalizer(&runs, "supersede.dev/cleanup", deleting, reconcile)
        .await
        .expect("cleanup removes the finalizer");
    assert!(
        runs.get_opt("run-1").await.unwrap().is_none(),
        "then the deletion completes"
    );
}

#[tokio::test]
async fn core_and_events_k8s_io_events_are_one_set_of_objects() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), NS);
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "task-42-state"}})).unwrap();
    let cm = cms.create(&PostParams::default(), &cm).await.unwrap();
    let core: Api<CoreEvent> = Api::namespaced(kube.client(), NS);
    let new: Api<NewEvent> = Api::namespaced(kube.client(), NS);
    let mut watch = Box::pin(
        core.watch(
            &WatchParams::default(),
            &kube.resource_version().to_string(),
        )
        .await
        .unwrap(),
    );

    // kube's Recorder writes events.k8s.io Events...
    support::publish_needs_intervention(kube.client(), &cm.object_ref(&())).await;

    // ...which core/v1 readers see, under their own field names.
    let seen = match watch.try_next().await.unwrap() {
        Some(WatchEvent::Added(e)) => e,
        other => panic!("expected the recorder's event, got {other:?}"),
    };
    assert_eq!(seen.involved_object.name.as_deref(), Some("task-42-state"));
    assert_eq!(
        seen.message.as_deref(),
        Some("journal cannot be rolled back")
    );
    assert_eq!(
        seen.reporting_component.as_deref(),
        Some("supersede-recovery")
    );
    let by_object = ListParams::default().fields("involvedObject.name=task-42-state");
    assert_eq!(core.list(&by_object).await.unwrap().items.len(), 1);

    // A core Event is an events.k8s.io Event too.
    let pod_event = CoreEvent {
        metadata: kube::api::ObjectMeta {
            name: Some("agent-pulled".to_owned()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            kind: Some("Pod".to_owned()),
            name: Some("agent-1".to_owned()),
            namespace: Some(NS.to_owned()),
            ..Default::default()
        },
        message: Some("image pulled".to_owned()),
        reason: Some("Pulled".to_owned()),
        reporting_component: Some("kubelet".to_owned()),
        type_: Some("Normal".to_owned()),
        ..Default::default()
    };
    core.create(&PostParams::default(), &pod_event)
        .await
        .unwrap();
    let viewed = new.get("agent-pulled").await.unwrap();
    assert_eq!(
        viewed.regarding.as_ref().unwrap().name.as_deref(),
        Some("agent-1")
    );
    assert_eq!(viewed.note.as_deref(), Some("image pulled"));
    assert_eq!(viewed.reporting_controller.as_deref(), Some("kubelet"));
    let by_regarding = ListParams::default().fields("regarding.name=agent-1");
    let names: Vec<String> = new
        .list(&by_regarding)
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert_eq!(names, ["agent-pulled"]);
    let by_controller = ListParams::default().fields("reportingController=supersede-recovery");
    assert_eq!(new.list(&by_controller).await.unwrap().items.len(), 1);
    let bad = new
        .list(&ListParams::default().fields("involvedObject.name=agent-1"))
        .await
        .unwrap_err();
    assert_eq!(
        api_error(bad).0,
        400,
        "events.k8s.io has no involvedObject field"
    );
    assert_eq!(core.list(&Default::default()).await.unwrap().items.len(), 2);

    // Deleted through one API, gone from both; errors name the API asked.
    new.delete("agent-pulled", &DeleteParams::default())
        .await
        .unwrap();
    let (code, _, message) = api_error(core.get("agent-pulled").await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (404, "events \"agent-pulled\" not found")
    );
    let (_, _, message) = api_error(new.get("agent-pulled").await.unwrap_err());
    assert_eq!(message, "events.events.k8s.io \"agent-pulled\" not found");
}
