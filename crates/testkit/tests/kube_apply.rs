#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! FakeKube's server-side apply, through the real `kube::Api`: field
//! managers in `metadata.managedFields`, 409 Conflict on another manager's
//! field, shared ownership of equal values, `force`, updates taking the
//! fields they change, and an apply removing a field it stopped applying.

#![cfg(feature = "kube")]

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use testkit::kube::FakeKube;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";

fn api_error(err: kube::Error) -> (u16, String, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// What kube-lease-manager applies to take a Lease.
fn holder(identity: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "lock"},
        "spec": {"holderIdentity": identity, "leaseDurationSeconds": 15},
    })
}

/// The `managedFields` entries of an object, as JSON.
fn managed<K: Resource + serde::Serialize>(object: &K) -> Vec<Value> {
    serde_json::to_value(object).unwrap()["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The `fieldsV1` of `manager`'s entry for `operation`.
fn fields_of<K: Resource + serde::Serialize>(object: &K, manager: &str, operation: &str) -> Value {
    managed(object)
        .into_iter()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
        .map_or(Value::Null, |e| e["fieldsV1"].clone())
}

/// A request kube's typed API would not send (or whose `Status` details it
/// does not keep): status code and JSON body.
async fn raw(
    kube: &FakeKube,
    method: &str,
    uri: &str,
    content_type: &str,
    user_agent: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::CONTENT_TYPE, content_type);
    if let Some(agent) = user_agent {
        request = request.header(http::header::USER_AGENT, agent);
    }
    let request = request
        .body(kube::client::Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    let response = kube.client().send(request).await.unwrap();
    let code = response.status().as_u16();
    let bytes = response.into_body().collect_bytes().await.unwrap();
    (code, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn applying_another_value_to_a_field_another_manager_owns_is_409_naming_the_field() {
    let kube = FakeKube::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(kube.client(), "ns");
    let taken = leases
        .patch(
            "lock",
            &PatchParams::apply("lock-a"),
            &Patch::Apply(holder("a")),
        )
        .await
        .unwrap();

    let (code, reason, message) = api_error(
        leases
            .patch(
                "lock",
                &PatchParams::apply("lock-b"),
                &Patch::Apply(holder("b")),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        message,
        "Apply failed with 1 conflict: conflict with \"lock-a\": .spec.holderIdentity"
    );

    // Nothing was written: same holder, same resourceVersion.
    let now = leases.get("lock").await.unwrap();
    assert_eq!(now.resource_version(), taken.resource_version());
    assert_eq!(
        now.spec.unwrap().holder_identity.as_deref(),
        Some("a"),
        "the refused apply changed the holder"
    );

    // The Status carries one FieldManagerConflict cause per field, as the
    // API server's does (kube's error type keeps only the message).
    let (code, status) = raw(
        &kube,
        "PATCH",
        &format!("{LEASES}/lock?fieldManager=lock-b"),
        "application/apply-patch+yaml",
        None,
        &holder("b"),
    )
    .await;
    assert_eq!(code, 409);
    assert_eq!(
        status["details"]["causes"],
        json!([{
            "type": "FieldManagerConflict",
            "message": "conflict with \"lock-a\"",
            "field": ".spec.holderIdentity",
        }])
    );
}

#[tokio::test]
async fn two_managers_applying_the_same_value_share_the_field() {
    let kube = FakeKube::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(kube.client(), "ns");
    leases
        .patch(
            "lock",
            &PatchParams::apply("lock-a"),
            &Patch::Apply(holder("a")),
        )
        .await
        .unwrap();
    let shared = leases
        .patch(
            "lock",
            &PatchParams::apply("lock-b"),
            &Patch::Apply(holder("a")),
        )
        .await
        .unwrap();

    let both = json!({"f:spec": {"f:holderIdentity": {}, "f:leaseDurationSeconds": {}}});
    assert_eq!(fields_of(&shared, "lock-a", "Apply"), both);
    assert_eq!(fields_of(&shared, "lock-b", "Apply"), both);
    // Each sharer now conflicts with the other on a change.
    let (code, _, message) = api_error(
        leases
            .patch(
                "lock",
                &PatchParams::apply("lock-a"),
                &Patch::Apply(holder("c")),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409);
    assert!(
        message.contains("conflict with \"lock-b\": .spec.holderIdentity"),
        "{message}"
    );
}

#[tokio::test]
async fn force_takes_the_field_over_from_its_other_managers() {
    let kube = FakeKube::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(kube.client(), "ns");
    leases
        .patch(
            "lock",
            &PatchParams::apply("lock-a"),
            &Patch::Apply(holder("a")),
        )
        .await
        .unwrap();

    let forced = leases
        .patch(
            "lock",
            &PatchParams::apply("lock-b").force(),
            &Patch::Apply(holder("b")),
        )
        .await
        .unwrap();
    assert_eq!(
        forced.spec.as_ref().unwrap().holder_identity.as_deref(),
        Some("b")
    );
    // lock-a still shares leaseDurationSeconds (same value) but lost the holder.
    assert_eq!(
        fields_of(&forced, "lock-a", "Apply"),
        json!({"f:spec": {"f:leaseDurationSeconds": {}}})
    );
    assert_eq!(
        fields_of(&forced, "lock-b", "Apply"),
        json!({"f:spec": {"f:holderIdentity": {}, "f:leaseDurationSeconds": {}}})
    );
    // So lock-a's own apply of its old value now conflicts with lock-b.
    let (code, _, message) = api_error(
        leases
            .patch(
                "lock",
                &PatchParams::apply("lock-a"),
                &Patch::Apply(holder("a")),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, message.as_str()),
        (
            409,
            "Apply failed with 1 conflict: conflict with \"lock-b\": .spec.holderIdentity"
        )
    );
}

#[tokio::test]
async fn an_update_by_another_manager_takes_the_field_so_a_later_apply_conflicts() {
    let kube = FakeKube::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(kube.client(), "ns");
    leases
        .patch(
            "lock",
            &PatchParams::apply("lock-a"),
            &Patch::Apply(holder("a")),
        )
        .await
        .unwrap();

    // A merge patch never conflicts: it takes the field it changes.
    let patch_params = PatchParams {
        field_manager: Some("janitor".to_owned()),
        ..PatchParams::default()
    };
    let patched = leases
        .patch(
            "lock",
            &patch_params,
            &Patch::Merge(json!({"spec": {"holderIdentity": "janitor"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        fields_of(&patched, "janitor", "Update"),
        json!({"f:spec": {"f:holderIdentity": {}}})
    );
    assert_eq!(
        fields_of(&patched, "lock-a", "Apply"),
        json!({"f:spec": {"f:leaseDurationSeconds": {}}})
    );

    let (code, _, message) = api_error(
        leases
            .patch(
                "lock",
                &PatchParams::apply("lock-a"),
                &Patch::Apply(holder("a")),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, message.as_str()),
        (
            409,
            "Apply failed with 1 conflict: conflict with \"janitor\" using coordination.k8s.io/v1: .spec.holderIdentity"
        )
    );

    // A PUT is an update too: the replacer takes what it changed.
    let mut current = leases.get("lock").await.unwrap();
    current.spec.as_mut().unwrap().lease_duration_seconds = Some(99);
    let post = PostParams {
        field_manager: Some("replacer".to_owned()),
        ..PostParams::default()
    };
    let replaced = leases.replace("lock", &post, &current).await.unwrap();
    assert_eq!(
        fields_of(&replaced, "replacer", "Update"),
        json!({"f:spec": {"f:leaseDurationSeconds": {}}})
    );
    assert_eq!(fields_of(&replaced, "lock-a", "Apply"), Value::Null);
}

#[tokio::test]
async fn managed_fields_are_visible_in_the_api_server_shape() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let applied = cms
        .patch(
            "c1",
            &PatchParams::apply("deployer"),
            &Patch::Apply(json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "c1", "labels": {"app": "x"}},
                "data": {"a": "1"},
            })),
        )
        .await
        .unwrap();

    let entries = applied.metadata.managed_fields.clone().unwrap();
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry.manager.as_deref(), Some("deployer"));
    assert_eq!(entry.operation.as_deref(), Some("Apply"));
    assert_eq!(entry.api_version.as_deref(), Some("v1"));
    assert_eq!(entry.fields_type.as_deref(), Some("FieldsV1"));
    assert!(entry.time.is_some());
    assert_eq!(
        entry.fields_v1.as_ref().unwrap().0,
        json!({"f:data": {"f:a": {}}, "f:metadata": {"f:labels": {"f:app": {}}}})
    );

    // A create records its writer as an Update owning every field it set,
    // parents marked with "." (the writer here is the User-Agent's prefix).
    let (code, created) = raw(
        &kube,
        "POST",
        "/api/v1/namespaces/ns/configmaps",
        "application/json",
        Some("kubectl/v1.32.0 (linux/amd64) kubernetes/abc"),
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c2", "labels": {"app": "y"}}, "data": {"k": "v"}}),
    )
    .await;
    assert_eq!(code, 201);
    let entry = &created["metadata"]["managedFields"][0];
    assert_eq!(entry["manager"], "kubectl");
    assert_eq!(entry["operation"], "Update");
    assert_eq!(
        entry["fieldsV1"],
        json!({
            "f:data": {".": {}, "f:k": {}},
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
        })
    );
}

#[tokio::test]
async fn an_apply_that_omits_a_field_it_owned_removes_it_unless_another_manager_owns_it() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let config = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"}, "data": data});
    cms.patch(
        "c1",
        &PatchParams::apply("deployer"),
        &Patch::Apply(config(json!({"a": "1", "b": "2", "c": "3"}))),
    )
    .await
    .unwrap();
    // Another applier shares "c" by applying the same value.
    cms.patch(
        "c1",
        &PatchParams::apply("other"),
        &Patch::Apply(config(json!({"c": "3"}))),
    )
    .await
    .unwrap();

    let after = cms
        .patch(
            "c1",
            &PatchParams::apply("deployer"),
            &Patch::Apply(config(json!({"a": "1"}))),
        )
        .await
        .unwrap();
    let data = after.data.clone().unwrap();
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "c"],
        "b (owned by deployer alone) is removed, c (shared) stays"
    );
    assert_eq!(
        fields_of(&after, "other", "Apply"),
        json!({"f:data": {"f:c": {}}})
    );
}

#[tokio::test]
async fn a_released_lease_can_be_applied_by_the_next_holder() {
    // kube-lease-manager's protocol: take by apply (refused while someone
    // else holds), release by a strategic merge patch clearing the fields.
    let kube = FakeKube::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(kube.client(), "ns");
    leases
        .patch(
            "lock",
            &PatchParams::apply("lock-a"),
            &Patch::Apply(holder("a")),
        )
        .await
        .unwrap();
    let (code, ..) = api_error(
        leases
            .patch(
                "lock",
                &PatchParams::apply("lock-b"),
                &Patch::Apply(holder("b")),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409);

    let release = PatchParams {
        field_manager: Some("lock-a".to_owned()),
        ..PatchParams::default()
    };
    let released = leases
        .patch(
            "lock",
            &release,
            &Patch::Strategic(
                json!({"spec": {"holderIdentity": null, "leaseDurationSeconds": null}}),
            ),
        )
        .await
        .unwrap();
    assert!(
        released.metadata.managed_fields.is_none(),
        "cleared fields leave every manager: {:?}",
        released.metadata.managed_fields
    );

    let taken = leases
        .patch(
            "lock",
            &PatchParams::apply("lock-b"),
            &Patch::Apply(holder("b")),
        )
        .await
        .unwrap();
    assert_eq!(taken.spec.unwrap().holder_identity.as_deref(), Some("b"));
}

#[tokio::test]
async fn apply_to_the_status_subresource_is_owned_with_subresource_status() {
    let kube = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(kube.client(), "ns");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                     "spec": {"containers": [{"name": "c", "image": "i"}]}});
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .unwrap();
    let status = |phase: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
               "status": {"phase": phase}})
    };
    let running = pods
        .patch_status(
            "p",
            &PatchParams::apply("kubelet"),
            &Patch::Apply(status("Running")),
        )
        .await
        .unwrap();
    let entry = managed(&running)
        .into_iter()
        .find(|e| e["manager"] == "kubelet")
        .unwrap();
    assert_eq!(entry["subresource"], "status");
    assert_eq!(entry["fieldsV1"], json!({"f:status": {"f:phase": {}}}));

    let (code, _, message) = api_error(
        pods.patch_status(
            "p",
            &PatchParams::apply("other"),
            &Patch::Apply(status("Failed")),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        (code, message.as_str()),
        (
            409,
            "Apply failed with 1 conflict: conflict with \"kubelet\" with subresource \"status\": .status.phase"
        )
    );
}

#[tokio::test]
async fn a_dry_run_apply_is_checked_for_conflicts_but_stores_nothing() {
    let kube = FakeKube::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(kube.client(), "ns");
    let taken = leases
        .patch(
            "lock",
            &PatchParams::apply("lock-a"),
            &Patch::Apply(holder("a")),
        )
        .await
        .unwrap();
    let mut dry = PatchParams::apply("lock-b");
    dry.dry_run = true;
    let (code, ..) = api_error(
        leases
            .patch("lock", &dry, &Patch::Apply(holder("b")))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409);
    let would = leases
        .patch("lock", &dry.force(), &Patch::Apply(holder("b")))
        .await
        .unwrap();
    assert_eq!(
        fields_of(&would, "lock-a", "Apply")["f:spec"]["f:holderIdentity"],
        Value::Null
    );
    let stored = leases.get("lock").await.unwrap();
    assert_eq!(stored.resource_version(), taken.resource_version());
    assert_eq!(managed(&stored), managed(&taken));
}

#[tokio::test]
async fn apply_needs_a_field_manager_its_own_version_and_no_managed_fields() {
    let kube = FakeKube::start().await.unwrap();
    let apply = "application/apply-patch+yaml";

    let (code, status) = raw(
        &kube,
        "PATCH",
        &format!("{LEASES}/lock"),
        apply,
        None,
        &holder("a"),
    )
    .await;
    assert_eq!((code, status["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(
        status["message"],
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );

    let mut wrong_version = holder("a");
    wrong_version["apiVersion"] = json!("coordination.k8s.io/v1beta1");
    let (code, status) = raw(
        &kube,
        "PATCH",
        &format!("{LEASES}/lock?fieldManager=a"),
        apply,
        None,
        &wrong_version,
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(
        status["message"],
        "Incorrect version specified in apply patch. Specified patch version: coordination.k8s.io/v1beta1, expected: coordination.k8s.io/v1"
    );

    let mut with_managed = holder("a");
    with_managed["metadata"]["managedFields"] = json!([]);
    let (code, status) = raw(
        &kube,
        "PATCH",
        &format!("{LEASES}/lock?fieldManager=a"),
        apply,
        None,
        &with_managed,
    )
    .await;
    assert_eq!(
        (code, status["message"].as_str()),
        (400, Some("metadata.managedFields must be nil"))
    );

    // `force` belongs to apply; kube refuses to send it with another patch,
    // and so does the API server.
    let (code, status) = raw(
        &kube,
        "PATCH",
        &format!("{LEASES}/lock?fieldManager=a&force=true"),
        "application/merge-patch+json",
        None,
        &json!({"spec": {"holderIdentity": "a"}}),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        status["message"],
        "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch"
    );

    let long = "m".repeat(129);
    let (code, _) = raw(
        &kube,
        "PATCH",
        &format!("{LEASES}/lock?fieldManager={long}"),
        apply,
        None,
        &holder("a"),
    )
    .await;
    assert_eq!(code, 422, "a field manager over 128 bytes is refused");
}
