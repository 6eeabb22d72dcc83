#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! FakeKube's garbage collector on paused tokio time: deleting a custom
//! resource that owns Pods removes them in the background, waits for them
//! in the foreground, or orphans them, as kube-controller-manager's
//! collector does, and the Pods leave through the simulated kubelet.

#![cfg(feature = "kube")]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::{CustomResourceExt, Resource, ResourceExt};
use serde_json::json;
use support::CodeRun;
use testkit::kube::FakeKube;
use tokio::time::{Instant, sleep, sleep_until};

const NS: &str = "ns";

async fn start(gc_delay: Duration) -> (FakeKube, Api<CodeRun>, Api<Pod>) {
    let kube = FakeKube::builder()
        .garbage_collection_delay(gc_delay)
        .crd(CodeRun::crd())
        .start()
        .await
        .unwrap();
    let runs = Api::namespaced(kube.client(), NS);
    let pods = Api::namespaced(kube.client(), NS);
    (kube, runs, pods)
}

async fn code_run(runs: &Api<CodeRun>, name: &str) -> CodeRun {
    runs.create(&PostParams::default(), &support::code_run(name))
        .await
        .unwrap()
}

/// A pod owned by `owners`, with `labels`.
async fn owned_pod(
    pods: &Api<Pod>,
    name: &str,
    owners: &[OwnerReference],
    labels: serde_json::Value,
) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "ownerReferences": owners},
        "spec": {"containers": [{"name": "agent", "image": "agent:1"}], "terminationGracePeriodSeconds": 20},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap()
}

/// The reference a controller puts on what it creates (kube's
/// `controller_owner_ref` leaves `blockOwnerDeletion` unset; Kubernetes'
/// own controllers set it).
fn owner_of(run: &CodeRun) -> OwnerReference {
    OwnerReference {
        block_owner_deletion: Some(true),
        ..run.controller_owner_ref(&()).unwrap()
    }
}

fn deleting<K: Resource>(obj: &K) -> bool {
    obj.meta().deletion_timestamp.is_some()
}

fn delete_with(policy: PropagationPolicy) -> DeleteParams {
    DeleteParams {
        propagation_policy: Some(policy),
        ..DeleteParams::default()
    }
}

#[tokio::test(start_paused = true)]
async fn background_deletion_removes_dependents_after_the_owner_is_gone() {
    let (kube, runs, pods) = start(Duration::from_secs(2)).await;
    let run = code_run(&runs, "run-1").await;
    owned_pod(&pods, "agent-1", &[owner_of(&run)], json!({})).await;
    owned_pod(&pods, "agent-2", &[owner_of(&run)], json!({})).await;
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), NS);
    let mut cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "state"}})).unwrap();
    let mut weak = owner_of(&run);
    weak.block_owner_deletion = None;
    cm.metadata.owner_references = Some(vec![weak]);
    cms.create(&PostParams::default(), &cm).await.unwrap();

    let asked = Instant::now();
    // A custom resource's default propagation is background; its removal
    // is answered with a Status.
    let answer = runs
        .delete("run-1", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        answer.is_right(),
        "a removed custom resource is answered with a Status"
    );
    assert!(
        kube.peek::<CodeRun>(NS, "run-1").is_none(),
        "the owner goes first"
    );
    let waiting = kube.peek::<Pod>(NS, "agent-1").unwrap();
    assert!(!deleting(&waiting), "the collector has not run yet");

    sleep_until(asked + Duration::from_millis(2100)).await;
    for name in ["agent-1", "agent-2"] {
        assert!(
            kube.peek::<Pod>(NS, name).is_none(),
            "{name} collected (and stopped at once)"
        );
    }
    assert!(
        kube.peek::<ConfigMap>(NS, "state").is_none(),
        "non-blocking dependents are collected too"
    );
}

#[tokio::test(start_paused = true)]
async fn foreground_deletion_keeps_the_owner_until_blocking_dependents_are_gone() {
    let (kube, runs, pods) = start(Duration::ZERO).await;
    let run = code_run(&runs, "run-1").await;
    let stubborn = json!({"testkit.supersede.dev/termination": "after-grace-period"});
    owned_pod(&pods, "agent-1", &[owner_of(&run)], stubborn.clone()).await;
    owned_pod(&pods, "agent-2", &[owner_of(&run)], stubborn).await;
    // Wait for the pods to run, so their grace period applies.
    sleep(Duration::from_secs(2)).await;
    // A non-blocking dependent held by its own finalizer does not hold the owner.
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), NS);
    let mut weak = owner_of(&run);
    weak.block_owner_deletion = Some(false);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "state", "ownerReferences": [weak], "finalizers": ["test/hold"]},
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();

    let asked = Instant::now();
    let answer = runs
        .delete("run-1", &delete_with(PropagationPolicy::Foreground))
        .await
        .unwrap();
    let marked = answer.left().expect("the owner stays, so it is answered");
    assert!(deleting(&marked));
    assert_eq!(marked.finalizers(), ["foregroundDeletion"]);

    sleep(Duration::from_millis(1)).await;
    for name in ["agent-1", "agent-2"] {
        assert!(
            deleting(&kube.peek::<Pod>(NS, name).unwrap()),
            "{name} is terminating"
        );
    }
    assert!(deleting(&kube.peek::<ConfigMap>(NS, "state").unwrap()));
    sleep_until(asked + Duration::from_millis(19_900)).await;
    assert!(
        kube.peek::<CodeRun>(NS, "run-1").is_some(),
        "waits for its pods' grace period"
    );

    sleep_until(asked + Duration::from_millis(20_100)).await;
    assert!(kube.peek::<Pod>(NS, "agent-1").is_none());
    assert!(
        kube.peek::<CodeRun>(NS, "run-1").is_none(),
        "gone with its last blocking dependent"
    );
    assert!(
        kube.peek::<ConfigMap>(NS, "state").is_some(),
        "a non-blocking dependent's own finalizer does not hold the owner"
    );
}

#[tokio::test(start_paused = true)]
async fn foreground_deletion_does_not_wait_for_dependents_that_do_not_block() {
    let (kube, runs, pods) = start(Duration::ZERO).await;
    let run = code_run(&runs, "run-1").await;
    let mut weak = owner_of(&run);
    weak.block_owner_deletion = None;
    owned_pod(
        &pods,
        "agent-1",
        &[weak],
        json!({"testkit.supersede.dev/termination": "after-grace-period"}),
    )
    .await;
    sleep(Duration::from_secs(2)).await;

    runs.delete("run-1", &delete_with(PropagationPolicy::Foreground))
        .await
        .unwrap();
    sleep(Duration::from_millis(1)).await;
    assert!(
        kube.peek::<CodeRun>(NS, "run-1").is_none(),
        "nothing blocks it"
    );
    assert!(
        deleting(&kube.peek::<Pod>(NS, "agent-1").unwrap()),
        "its dependent is still deleted"
    );
}

#[tokio::test(start_paused = true)]
async fn orphan_deletion_keeps_dependents_and_removes_their_owner_references() {
    let (kube, runs, pods) = start(Duration::ZERO).await;
    let run = code_run(&runs, "run-1").await;
    owned_pod(&pods, "agent-1", &[owner_of(&run)], json!({})).await;

    let answer = runs
        .delete("run-1", &delete_with(PropagationPolicy::Orphan))
        .await
        .unwrap();
    let marked = answer
        .left()
        .expect("held by the orphan finalizer when answered");
    assert_eq!(marked.finalizers(), ["orphan"]);

    sleep(Duration::from_millis(1)).await;
    assert!(kube.peek::<CodeRun>(NS, "run-1").is_none());
    let orphan = kube.peek::<Pod>(NS, "agent-1").unwrap();
    assert!(!deleting(&orphan), "orphans keep running");
    assert!(orphan.owner_references().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_dependent_with_a_living_owner_is_kept_and_loses_only_the_dead_reference() {
    let (kube, runs, pods) = start(Duration::ZERO).await;
    let first = code_run(&runs, "run-1").await;
    let second = code_run(&runs, "run-2").await;
    let mut shared = owner_of(&second);
    shared.controller = None;
    owned_pod(&pods, "agent-1", &[owner_of(&first), shared], json!({})).await;

    runs.delete("run-1", &DeleteParams::default())
        .await
        .unwrap();
    sleep(Duration::from_millis(1)).await;
    let kept = kube.peek::<Pod>(NS, "agent-1").unwrap();
    assert!(!deleting(&kept));
    let owners: Vec<String> = kept
        .owner_references()
        .iter()
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(owners, ["run-2"]);
}

#[tokio::test(start_paused = true)]
async fn dependents_of_an_owner_that_is_absent_or_was_recreated_are_collected() {
    let (kube, runs, pods) = start(Duration::ZERO).await;
    let old = code_run(&runs, "run-1").await;
    runs.delete("run-1", &DeleteParams::default())
        .await
        .unwrap();
    code_run(&runs, "run-1").await; // same name, new uid
    owned_pod(&pods, "agent-of-old", &[owner_of(&old)], json!({})).await;
    let mut ghost = owner_of(&old);
    ghost.name = "never-existed".to_owned();
    ghost.uid = "00000000-0000-0000-0000-000000000000".to_owned();
    owned_pod(&pods, "agent-of-ghost", &[ghost], json!({})).await;

    sleep(Duration::from_millis(1)).await;
    assert!(
        kube.peek::<Pod>(NS, "agent-of-old").is_none(),
        "the uid, not the name, identifies the owner"
    );
    assert!(kube.peek::<Pod>(NS, "agent-of-ghost").is_none());
    assert!(
        kube.peek::<CodeRun>(NS, "run-1").is_some(),
        "the new owner is untouched"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unknown_propagation_policy_is_422() {
    let (kube, runs, _) = start(Duration::ZERO).await;
    code_run(&runs, "run-1").await;
    let request = http::Request::delete("/apis/test.supersede.dev/v1/namespaces/ns/coderuns/run-1")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&json!({"propagationPolicy": "Sideways"})).unwrap())
        .unwrap();
    let response = kube.client().send(request.map(Into::into)).await.unwrap();
    assert_eq!(response.status(), 422);
    assert!(kube.peek::<CodeRun>(NS, "run-1").is_some());
}
