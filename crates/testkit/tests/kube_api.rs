#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! FakeKube's object semantics, through the real `kube::Api`: create, get,
//! replace, patch, delete, finalizers, the status subresource and CRDs.

#![cfg(feature = "kube")]

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use testkit::kube::FakeKube;

/// A small custom resource with a status subresource, like supersede's CodeRun.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[kube(
    group = "test.supersede.dev",
    version = "v1",
    kind = "Job",
    namespaced,
    status = "JobStatus",
    shortname = "tj"
)]
pub struct JobSpec {
    /// The commit the job works on.
    pub head_sha: String,
}

/// Status of a test job.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Default)]
pub struct JobStatus {
    /// Current phase.
    pub phase: String,
}

fn api_error(err: kube::Error) -> (u16, String, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn lease(name: &str, holder: &str) -> Lease {
    Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    }
}

fn config_map(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        },
        data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn create_fills_server_fields_and_get_returns_the_object() {
    let kube = FakeKube::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(kube.client(), "ns");
    let created = leases
        .create(&PostParams::default(), &lease("l1", "a"))
        .await
        .unwrap();
    assert_eq!(created.namespace().as_deref(), Some("ns"));
    assert!(created.uid().is_some_and(|u| u.len() == 36));
    assert!(created.resource_version().is_some());
    assert!(created.metadata.creation_timestamp.is_some());

    let got = leases.get("l1").await.unwrap();
    assert_eq!(got, created);
    let spec = got.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
}

#[tokio::test]
async fn creating_an_existing_name_is_409_already_exists() {
    let kube = FakeKube::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(kube.client(), "ns");
    leases
        .create(&PostParams::default(), &lease("l1", "a"))
        .await
        .unwrap();
    let err = leases
        .create(&PostParams::default(), &lease("l1", "b"))
        .await
        .unwrap_err();
    let (code, reason, message) = api_error(err);
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(message, "leases.coordination.k8s.io \"l1\" already exists");
    // The same name in another namespace is another object.
    let other: Api<Lease> = Api::namespaced(kube.client(), "other");
    other
        .create(&PostParams::default(), &lease("l1", "b"))
        .await
        .unwrap();
}

#[tokio::test]
async fn missing_objects_are_404_not_found() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let (code, reason, message) = api_error(cms.get("nope").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    assert_eq!(message, "configmaps \"nope\" not found");
    assert_eq!(cms.get_opt("nope").await.unwrap(), None);
    let (code, ..) = api_error(
        cms.delete("nope", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404);
    let (code, ..) = api_error(
        cms.replace("nope", &PostParams::default(), &config_map("nope", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404);
}

#[tokio::test]
async fn replace_with_a_stale_resource_version_is_409_conflict() {
    let kube = FakeKube::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(kube.client(), "ns");
    let v1 = leases
        .create(&PostParams::default(), &lease("l1", "a"))
        .await
        .unwrap();

    let mut mine = v1.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let v2 = leases
        .replace("l1", &PostParams::default(), &mine)
        .await
        .unwrap();
    assert_ne!(v2.resource_version(), v1.resource_version());

    // A writer still holding v1 loses.
    let mut theirs = v1.clone();
    theirs.spec.as_mut().unwrap().holder_identity = Some("c".into());
    let (code, reason, message) = api_error(
        leases
            .replace("l1", &PostParams::default(), &theirs)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(
        message.contains("the object has been modified"),
        "{message}"
    );
    let now = leases.get("l1").await.unwrap();
    assert_eq!(now.spec.unwrap().holder_identity.as_deref(), Some("b"));
}

#[tokio::test]
async fn resource_versions_come_from_one_global_counter() {
    let kube = FakeKube::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(kube.client(), "ns");
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let a = leases
        .create(&PostParams::default(), &lease("l1", "a"))
        .await
        .unwrap();
    let b = cms
        .create(&PostParams::default(), &config_map("c1", &[]))
        .await
        .unwrap();
    let rv = |o: Option<String>| o.unwrap().parse::<u64>().unwrap();
    assert_eq!(rv(b.resource_version()), rv(a.resource_version()) + 1);
    assert_eq!(kube.resource_version(), rv(b.resource_version()));
}

#[tokio::test]
async fn a_write_that_changes_nothing_keeps_the_resource_version() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let created = cms
        .create(&PostParams::default(), &config_map("c1", &[]))
        .await
        .unwrap();
    let same = cms
        .replace("c1", &PostParams::default(), &created)
        .await
        .unwrap();
    assert_eq!(same.resource_version(), created.resource_version());
}

#[tokio::test]
async fn generate_name_appends_five_random_characters() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let mut cm = ConfigMap::default();
    cm.metadata.generate_name = Some("task-42-".into());
    let a = cms.create(&PostParams::default(), &cm).await.unwrap();
    let b = cms.create(&PostParams::default(), &cm).await.unwrap();
    for name in [a.name_any(), b.name_any()] {
        let suffix = name.strip_prefix("task-42-").unwrap();
        assert_eq!(suffix.len(), 5, "{name}");
        assert!(suffix.chars().all(|c| c.is_ascii_alphanumeric()));
    }
    assert_ne!(a.name_any(), b.name_any());

    let nameless = ConfigMap::default();
    let (code, reason, _) = api_error(
        cms.create(&PostParams::default(), &nameless)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
}

#[tokio::test]
async fn invalid_names_are_422_invalid() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let (code, reason, message) = api_error(
        cms.create(&PostParams::default(), &config_map("Not_Valid", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(message.contains("RFC 1123"), "{message}");
}

#[tokio::test]
async fn merge_json_and_strategic_patches_apply_and_carry_resource_version_preconditions() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let created = cms
        .create(
            &PostParams::default(),
            &config_map("c1", &[("a", "1"), ("b", "2")]),
        )
        .await
        .unwrap();
    let pp = PatchParams::default();

    let merged = cms
        .patch(
            "c1",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"a": null, "c": "3"}}})),
        )
        .await
        .unwrap();
    let labels = merged.labels();
    assert_eq!(labels.get("a"), None);
    assert_eq!(labels.get("c").map(String::as_str), Some("3"));

    // kube's `Patch::Json` carries its own json-patch version's type;
    // deserializing lets inference pick it.
    let json_patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/k", "value": "v"},
        {"op": "replace", "path": "/data/k", "value": "w"}
    ]))
    .unwrap();
    let patched = cms
        .patch("c1", &pp, &Patch::Json::<()>(json_patch))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["k"], "w");

    // A failing JSON patch `test` is rejected and changes nothing.
    let failing = serde_json::from_value(json!([
        {"op": "test", "path": "/data/k", "value": "v"},
        {"op": "replace", "path": "/data/k", "value": "x"}
    ]))
    .unwrap();
    let (code, ..) = api_error(
        cms.patch("c1", &pp, &Patch::Json::<()>(failing))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);

    let strategic = cms
        .patch(
            "c1",
            &pp,
            &Patch::Strategic(json!({"data": {"extra": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(strategic.data.unwrap()["extra"], "1");

    // A resourceVersion in a patch body is a precondition.
    let stale =
        json!({"metadata": {"resourceVersion": created.resource_version()}, "data": {"k": "lost"}});
    let (code, reason, _) = api_error(
        cms.patch("c1", &pp, &Patch::Merge(stale))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(cms.get("c1").await.unwrap().data.unwrap()["k"], "w");

    // Patching a missing object is 404.
    let (code, ..) = api_error(
        cms.patch("absent", &pp, &Patch::Merge(json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404);
}

#[tokio::test]
async fn server_side_apply_creates_when_absent_and_merges_when_present() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let pp = PatchParams::apply("testkit").force();
    let applied = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c1", "labels": {"app": "x"}},
        "data": {"a": "1"}
    });
    let created = cms.patch("c1", &pp, &Patch::Apply(&applied)).await.unwrap();
    assert!(created.uid().is_some());
    assert_eq!(created.data.as_ref().unwrap()["a"], "1");

    // Another field manager's apply merges with what the first one owns (the
    // same manager dropping `a` would remove it: see kube_apply.rs).
    let again = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"}, "data": {"b": "2"}});
    let other = PatchParams::apply("testkit-other").force();
    let merged = cms
        .patch("c1", &other, &Patch::Apply(&again))
        .await
        .unwrap();
    assert_eq!(merged.uid(), created.uid());
    let data = merged.data.unwrap();
    assert_eq!((data["a"].as_str(), data["b"].as_str()), ("1", "2"));
}

#[tokio::test]
async fn delete_preconditions_on_uid_and_resource_version_are_409() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let created = cms
        .create(&PostParams::default(), &config_map("c1", &[]))
        .await
        .unwrap();

    let wrong_uid = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("00000000-0000-0000-0000-000000000000".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let (code, reason, message) = api_error(cms.delete("c1", &wrong_uid).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(
        message.contains("Precondition failed: UID in precondition"),
        "{message}"
    );

    let wrong_rv = DeleteParams {
        preconditions: Some(Preconditions {
            uid: None,
            resource_version: Some("1".into()),
        }),
        ..Default::default()
    };
    let (code, _, message) = api_error(cms.delete("c1", &wrong_rv).await.unwrap_err());
    assert_eq!(code, 409);
    assert!(
        message.contains("ResourceVersion in precondition: 1"),
        "{message}"
    );
    assert!(cms.get_opt("c1").await.unwrap().is_some());

    let right = DeleteParams {
        preconditions: Some(Preconditions {
            uid: created.uid(),
            resource_version: created.resource_version(),
        }),
        ..Default::default()
    };
    let gone = cms.delete("c1", &right).await.unwrap();
    let status = gone.right().expect("an immediate delete answers a Status");
    assert_eq!(status.details.unwrap().uid, created.uid().unwrap());
    assert!(cms.get_opt("c1").await.unwrap().is_none());
}

#[tokio::test]
async fn finalizers_keep_a_deleted_object_until_they_are_removed() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let mut cm = config_map("c1", &[]);
    cm.metadata.finalizers = Some(vec!["supersede.dev/cleanup".into()]);
    cms.create(&PostParams::default(), &cm).await.unwrap();

    let terminating = cms
        .delete("c1", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("an object held by a finalizer is answered, not a Status");
    let deleted_at = terminating.metadata.deletion_timestamp.clone();
    assert!(deleted_at.is_some());
    let still = cms.get("c1").await.unwrap();
    assert_eq!(still.metadata.deletion_timestamp, deleted_at);

    // A second delete changes nothing.
    let again = cms
        .delete("c1", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(again.resource_version(), still.resource_version());

    // No new finalizer may be added while deleting.
    let (code, reason, _) = api_error(
        cms.patch(
            "c1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["supersede.dev/cleanup", "other"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));

    cms.patch(
        "c1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("c1").await.unwrap().is_none());
}

#[tokio::test]
async fn crd_registered_from_kube_derive_serves_its_kind_with_a_status_subresource() {
    let kube = FakeKube::start().await.unwrap();
    kube.register_crd(&Job::crd()).unwrap();
    let jobs: Api<Job> = Api::namespaced(kube.client(), "ns");

    let mut job = Job::new(
        "j1",
        JobSpec {
            head_sha: "abc".into(),
        },
    );
    job.status = Some(JobStatus {
        phase: "ignored".into(),
    });
    let created = jobs.create(&PostParams::default(), &job).await.unwrap();
    assert_eq!(
        created.status, None,
        "status is not set through the main resource"
    );
    assert_eq!(created.metadata.generation, Some(1));

    // /status changes only status, and does not bump generation.
    let with_status = jobs
        .patch_status(
            "j1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}, "spec": {"head_sha": "ignored"}})),
        )
        .await
        .unwrap();
    assert_eq!(with_status.status.as_ref().unwrap().phase, "Running");
    assert_eq!(with_status.spec.head_sha, "abc");
    assert_eq!(with_status.metadata.generation, Some(1));

    // The main resource ignores status, and a spec change bumps generation.
    let mut next = with_status.clone();
    next.spec.head_sha = "def".into();
    next.status = Some(JobStatus {
        phase: "Hacked".into(),
    });
    let replaced = jobs
        .replace("j1", &PostParams::default(), &next)
        .await
        .unwrap();
    assert_eq!(replaced.spec.head_sha, "def");
    assert_eq!(replaced.status.as_ref().unwrap().phase, "Running");
    assert_eq!(replaced.metadata.generation, Some(2));

    // replace_status with a stale resourceVersion conflicts like any write.
    let (code, ..) = api_error(
        jobs.replace_status("j1", &PostParams::default(), &created)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409);

    // The CRD object is stored too, with Established status.
    let crds: Api<CustomResourceDefinition> = Api::all(kube.client());
    let crd = crds.get("jobs.test.supersede.dev").await.unwrap();
    let conditions = crd.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
}

#[tokio::test(start_paused = true)]
async fn deleting_a_crd_deletes_its_objects_with_events_before_the_kind_goes() {
    use futures::TryStreamExt;
    use kube::api::{WatchEvent, WatchParams};
    let kube = FakeKube::start().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(kube.client());
    crds.create(&PostParams::default(), &Job::crd())
        .await
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(kube.client(), "ns");
    let job = |name: &str| {
        Job::new(
            name,
            JobSpec {
                head_sha: "a".into(),
            },
        )
    };
    jobs.create(&PostParams::default(), &job("j1"))
        .await
        .unwrap();
    let mut held = job("j2");
    held.metadata.finalizers = Some(vec!["test/hold".into()]);
    jobs.create(&PostParams::default(), &held).await.unwrap();
    assert_eq!(jobs.list(&Default::default()).await.unwrap().items.len(), 2);
    let mut events = Box::pin(
        jobs.watch(
            &WatchParams::default(),
            &kube.resource_version().to_string(),
        )
        .await
        .unwrap()
        .try_filter(|e| std::future::ready(!matches!(e, WatchEvent::Bookmark(_)))),
    );

    let terminating = crds
        .delete("jobs.test.supersede.dev", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("held by its cleanup finalizer");
    assert_eq!(
        terminating.finalizers(),
        ["customresourcecleanup.apiextensions.k8s.io"]
    );
    let (code, _, message) = api_error(
        jobs.create(&PostParams::default(), &job("j3"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, message.as_str()),
        (
            405,
            "create not allowed while custom resource definition is terminating"
        )
    );

    // Every object goes through an ordinary delete: watchers see it.
    match events.try_next().await.unwrap() {
        Some(WatchEvent::Deleted(j)) => assert_eq!(j.name_any(), "j1"),
        other => panic!("expected j1 DELETED, got {other:?}"),
    }
    match events.try_next().await.unwrap() {
        Some(WatchEvent::Modified(j)) => {
            assert_eq!(j.name_any(), "j2");
            assert!(j.metadata.deletion_timestamp.is_some());
        }
        other => panic!("expected j2 terminating, got {other:?}"),
    }
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    let still = crds.get("jobs.test.supersede.dev").await.unwrap();
    let terminating_condition = still
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Terminating")
        .unwrap();
    assert_eq!(
        terminating_condition.reason.as_deref(),
        Some("InstanceDeletionInProgress"),
        "waiting for j2's own finalizer"
    );

    jobs.patch(
        "j2",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    match events.try_next().await.unwrap() {
        Some(WatchEvent::Deleted(j)) => assert_eq!(j.name_any(), "j2"),
        other => panic!("expected j2 DELETED, got {other:?}"),
    }
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    assert!(
        crds.get_opt("jobs.test.supersede.dev")
            .await
            .unwrap()
            .is_none()
    );
    let (code, ..) = api_error(jobs.get("j1").await.unwrap_err());
    assert_eq!(code, 404, "the kind is no longer served");
}

#[tokio::test]
async fn kube_discovery_finds_builtin_and_registered_kinds() {
    let kube = FakeKube::start().await.unwrap();
    kube.register_crd(&Job::crd()).unwrap();
    let discovery = kube::discovery::Discovery::new(kube.client())
        .run()
        .await
        .unwrap();
    let groups: Vec<String> = discovery.groups().map(|g| g.name().to_owned()).collect();
    for group in ["", "coordination.k8s.io", "test.supersede.dev"] {
        assert!(groups.iter().any(|g| g == group), "{group} in {groups:?}");
    }
    let (resource, caps) = kube::discovery::pinned_kind(
        &kube.client(),
        &kube::api::GroupVersionKind::gvk("test.supersede.dev", "v1", "Job"),
    )
    .await
    .unwrap();
    assert_eq!(resource.plural, "jobs");
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));

    let aggregated = kube::discovery::Discovery::new(kube.client())
        .run_aggregated()
        .await
        .unwrap();
    assert!(aggregated.has_group("coordination.k8s.io"));
}

#[tokio::test]
async fn cluster_scoped_namespaces_have_an_active_phase() {
    let kube = FakeKube::start().await.unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(kube.client());
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some("team-a".into());
    let created = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    assert_eq!(created.metadata.namespace, None);
    assert!(namespaces.get("team-a").await.is_ok());
}

#[tokio::test]
async fn metadata_only_requests_get_partial_object_metadata() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    cms.create(&PostParams::default(), &config_map("c1", &[("a", "1")]))
        .await
        .unwrap();
    let meta = cms.get_metadata("c1").await.unwrap();
    assert_eq!(meta.metadata.labels.unwrap()["a"], "1");
    let list = cms.list_metadata(&Default::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let kube = FakeKube::builder()
        .max_body_bytes(1024)
        .start()
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let mut cm = config_map("big", &[]);
    cm.data = Some([("blob".to_owned(), "x".repeat(4096))].into());
    let (code, reason, _) = api_error(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (413, "RequestEntityTooLarge"));
}

#[tokio::test]
async fn kube_event_recorder_writes_events_k8s_io_events() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let cm = cms
        .create(&PostParams::default(), &config_map("task-42-state", &[]))
        .await
        .unwrap();
    let recorder = Recorder::new(
        kube.client(),
        Reporter {
            controller: "supersede-recovery".into(),
            instance: None,
        },
    );
    let event = Event {
        type_: EventType::Warning,
        reason: "NeedsIntervention".into(),
        note: Some("journal cannot be rolled back".into()),
        action: "Recover".into(),
        secondary: None,
    };
    let reference = cm.object_ref(&());
    recorder.publish(&event, &reference).await.unwrap();
    // The same event again becomes a series on the same object.
    recorder.publish(&event, &reference).await.unwrap();

    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(kube.client(), "ns");
    let list = events.list(&Default::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let stored = &list.items[0];
    assert_eq!(stored.reason.as_deref(), Some("NeedsIntervention"));
    assert_eq!(
        stored.regarding.as_ref().unwrap().name.as_deref(),
        Some("task-42-state")
    );
    assert_eq!(stored.series.as_ref().map(|s| s.count), Some(2));
}
