//! Which pods are a run's, and what is left of a run, judged from objects
//! as the API server returned them (by a LIST, a GET or a watch) — one
//! judgement shared by `remains` and `wait_gone`, so both report the same.
//!
//! The rule it keeps: **a pod another object of the run's kind owns is
//! never the run's**, whatever its labels say: a run deleted and created
//! again under the same name has pods with the same label, and a call made
//! with the old run must not touch them.

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;

use super::config::CodeRunConfig;
use crate::workloads::{Remains, Run};

/// Finalizers Kubernetes' garbage collector sets and removes itself
/// (`propagationPolicy` Foreground and Orphan): never foreign.
const GC_FINALIZERS: [&str; 2] = ["foregroundDeletion", "orphan"];

/// Whether `pod` executes `run`.
pub(crate) fn belongs(config: &CodeRunConfig, pod: &Pod, run: &Run) -> bool {
    if let Some(key) = config.pods.label()
        && pod.metadata.labels.as_ref().and_then(|l| l.get(key)) != Some(&run.name)
    {
        return false;
    }
    let mut owners_of_our_kind = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.kind == config.kind && group_of(&o.api_version) == config.group)
        .peekable();
    if owners_of_our_kind.peek().is_none() {
        return !config.pods.requires_owner();
    }
    owners_of_our_kind.any(|o| o.uid == run.uid)
}

/// What is left of `run`, given its object as read (`None`: gone; an
/// object of another uid is a different run, so ours is gone) and the pods
/// that may be its.
pub(crate) fn remains_of<'a>(
    config: &CodeRunConfig,
    run: &Run,
    object: Option<&DynamicObject>,
    pods: impl IntoIterator<Item = &'a Pod>,
    now: jiff::Timestamp,
) -> Remains {
    let object = object.filter(|o| o.metadata.uid.as_deref() == Some(run.uid.as_str()));
    let foreign_finalizers = object
        .filter(|o| o.metadata.deletion_timestamp.is_some())
        .map(|o| {
            o.metadata
                .finalizers
                .iter()
                .flatten()
                .filter(|f| !GC_FINALIZERS.contains(&f.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut ours: Vec<&Pod> = pods
        .into_iter()
        .filter(|p| belongs(config, p, run))
        .collect();
    ours.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let name = |p: &&Pod| p.metadata.name.clone().unwrap_or_default();
    Remains {
        pods: ours.iter().map(name).collect(),
        run_exists: object.is_some(),
        foreign_finalizers,
        pods_held_by_finalizers: ours
            .iter()
            .filter(|p| held_by_finalizers(p, now))
            .map(name)
            .collect(),
    }
}

/// A pod whose deletion has run its course — its containers stopped, or
/// its grace period is over — and that stays only because finalizers hold
/// its object.
fn held_by_finalizers(pod: &Pod, now: jiff::Timestamp) -> bool {
    let meta = &pod.metadata;
    let Some(deleted_at) = &meta.deletion_timestamp else {
        return false;
    };
    if meta.finalizers.as_ref().is_none_or(Vec::is_empty) {
        return false;
    }
    let status = pod.status.as_ref();
    let stopped = matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) || status
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            !cs.is_empty()
                && cs
                    .iter()
                    .all(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()))
        });
    stopped || deleted_at.0 <= now
}

/// The group of an `apiVersion` (`""` for the core group's `v1`).
fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::workloads::LABEL_CODE_RUN;

    fn run(uid: &str) -> Run {
        Run {
            name: "run-1".into(),
            uid: uid.into(),
            resource_version: "1".into(),
            task_id: "42".into(),
            role: "quality".into(),
            head_sha: "a".into(),
            phase: "Running".into(),
            terminal: false,
            created_at: None,
            superseded_by: None,
            cancel_operation: None,
            superseded_at: None,
            deleting: false,
        }
    }

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn owner(api_version: &str, kind: &str, uid: &str) -> serde_json::Value {
        json!({"apiVersion": api_version, "kind": kind, "name": "run-1", "uid": uid})
    }

    #[test]
    fn a_pod_owned_by_a_run_recreated_under_the_same_name_is_not_the_old_runs() {
        let config = CodeRunConfig::default();
        let labels = json!({LABEL_CODE_RUN: "run-1"});
        let ours = pod(json!({"metadata": {"name": "p1", "labels": labels,
            "ownerReferences": [owner("supersede.dev/v1alpha1", "CodeRun", "old")]}}));
        let theirs = pod(json!({"metadata": {"name": "p2", "labels": labels,
            "ownerReferences": [owner("supersede.dev/v1alpha1", "CodeRun", "new")]}}));
        let unowned = pod(json!({"metadata": {"name": "p3", "labels": labels}}));
        // Another kind owning the pod (a Job, say) says nothing about runs.
        let job_owned = pod(json!({"metadata": {"name": "p4", "labels": labels,
            "ownerReferences": [owner("batch/v1", "Job", "j")]}}));
        let other_label =
            pod(json!({"metadata": {"name": "p5", "labels": {LABEL_CODE_RUN: "run-2"}}}));
        assert!(belongs(&config, &ours, &run("old")));
        assert!(!belongs(&config, &theirs, &run("old")));
        assert!(belongs(&config, &unowned, &run("old")));
        assert!(belongs(&config, &job_owned, &run("old")));
        assert!(!belongs(&config, &other_label, &run("old")));

        let strict = CodeRunConfig {
            pods: super::super::PodMatch::LabelAndOwner(LABEL_CODE_RUN.into()),
            ..CodeRunConfig::default()
        };
        assert!(belongs(&strict, &ours, &run("old")));
        assert!(!belongs(&strict, &unowned, &run("old")));
        let by_owner = CodeRunConfig {
            pods: super::super::PodMatch::Owner,
            ..CodeRunConfig::default()
        };
        assert!(belongs(&by_owner, &ours, &run("old")));
        assert!(!belongs(&by_owner, &other_label, &run("old")));
    }

    #[test]
    fn only_foreign_finalizers_of_a_deleting_run_and_stopped_pods_held_by_finalizers_are_reported()
    {
        let config = CodeRunConfig::default();
        let now: jiff::Timestamp = "2030-01-01T00:00:10Z".parse().unwrap();
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "supersede.dev/v1alpha1", "kind": "CodeRun",
            "metadata": {"name": "run-1", "uid": "old",
                "deletionTimestamp": "2030-01-01T00:00:00Z",
                "finalizers": ["foregroundDeletion", "example.dev/audit"]},
        }))
        .unwrap();
        let labels = json!({LABEL_CODE_RUN: "run-1"});
        let terminating = |name: &str, at: &str, finalizers: serde_json::Value, phase: &str| {
            pod(json!({"metadata": {"name": name, "labels": labels,
                "deletionTimestamp": at, "finalizers": finalizers},
                "status": {"phase": phase}}))
        };
        let pods = [
            terminating(
                "a-stopped-held",
                "2030-01-01T00:00:30Z",
                json!(["x/y"]),
                "Failed",
            ),
            terminating(
                "b-graced-held",
                "2030-01-01T00:00:05Z",
                json!(["x/y"]),
                "Running",
            ),
            terminating(
                "c-still-in-grace",
                "2030-01-01T00:00:30Z",
                json!(["x/y"]),
                "Running",
            ),
            terminating(
                "d-no-finalizer",
                "2030-01-01T00:00:05Z",
                json!([]),
                "Failed",
            ),
        ];
        let left = remains_of(&config, &run("old"), Some(&object), &pods, now);
        assert!(left.run_exists);
        assert_eq!(left.foreign_finalizers, ["example.dev/audit"]);
        assert_eq!(
            left.pods,
            [
                "a-stopped-held",
                "b-graced-held",
                "c-still-in-grace",
                "d-no-finalizer"
            ]
        );
        assert_eq!(
            left.pods_held_by_finalizers,
            ["a-stopped-held", "b-graced-held"]
        );

        let replaced = remains_of(&config, &run("older"), Some(&object), &[], now);
        assert!(
            !replaced.run_exists,
            "an object of another uid is not our run"
        );
        assert!(replaced.foreign_finalizers.is_empty());
    }
}
