//! Objects as the world's other parties leave them, to put straight into a
//! [`FakeKube`](super::FakeKube) with [`seed`](super::FakeKube::seed) (no
//! request, so nothing in the log but what the code under test asks):
//! an agent's pod owned by its run, a Lease whose holder died.
//!
//! The rule it keeps: **the objects carry only what the fake and the
//! Kubernetes API give them meaning by** — an owner reference the garbage
//! collector follows, the `testkit.supersede.dev/…` labels the simulated
//! kubelet reads ([`PodBehaviour`](super::PodBehaviour)), a Lease's spec —
//! and whatever labels the caller's own conventions add, so every suite
//! (the sensor's, recovery's, the controller's) seeds the same world.
//!
//! ```
//! use std::time::Duration;
//! use testkit::kube::PodTermination;
//! use testkit::kube::seeding::{abandoned_lease, owned_pod, termination_label};
//! use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
//!
//! let owner = OwnerReference {
//!     api_version: "v1".into(),
//!     kind: "ConfigMap".into(),
//!     name: "run-1".into(),
//!     uid: "u-1".into(),
//!     ..OwnerReference::default()
//! };
//! let pod = owned_pod("run-1-pod", owner, [("app", "agent")], PodTermination::Never);
//! let labels = pod.metadata.labels.unwrap();
//! assert_eq!(labels["testkit.supersede.dev/termination"], "never");
//! assert_eq!(termination_label(PodTermination::StopsAfter(Duration::from_secs(2))), "stops-after-2000ms");
//!
//! let renewed = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(120);
//! let lease = abandoned_lease("cancel-task-7", "dead-pod/1", renewed, [("team", "a")]);
//! assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("dead-pod/1"));
//! ```

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};

use super::PodTermination;

/// The label the simulated kubelet reads a pod's start delay from.
pub const LABEL_STARTS_AFTER: &str = "testkit.supersede.dev/starts-after";
/// The label the simulated kubelet reads what a pod does with SIGTERM from.
pub const LABEL_TERMINATION: &str = "testkit.supersede.dev/termination";

/// The [`LABEL_TERMINATION`] value of `termination` (what
/// [`parse_termination`](super::parse_termination) reads back).
pub fn termination_label(termination: PodTermination) -> String {
    match termination {
        PodTermination::Immediate => "immediate".to_owned(),
        PodTermination::StopsAfter(after) => format!("stops-after-{}ms", after.as_millis()),
        PodTermination::AfterGracePeriod => "after-grace-period".to_owned(),
        PodTermination::Never => "never".to_owned(),
    }
}

/// An agent's pod `name`: one container (`agent`, image `agent:1`), never
/// restarted, a 30 s termination grace period, owned by `owner` as its
/// controller with `blockOwnerDeletion` (the garbage collector deletes it
/// with its owner, in the foreground), carrying `labels`; the simulated
/// kubelet starts it at once and it ends `termination` after SIGTERM.
pub fn owned_pod<K, V>(
    name: &str,
    owner: OwnerReference,
    labels: impl IntoIterator<Item = (K, V)>,
    termination: PodTermination,
) -> Pod
where
    K: Into<String>,
    V: Into<String>,
{
    let mut all: BTreeMap<String, String> = labels
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    all.insert(LABEL_STARTS_AFTER.to_owned(), "0s".to_owned());
    all.insert(LABEL_TERMINATION.to_owned(), termination_label(termination));
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(all),
            owner_references: Some(vec![OwnerReference {
                controller: Some(true),
                block_owner_deletion: Some(true),
                ..owner
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "agent".to_owned(),
                image: Some("agent:1".to_owned()),
                ..Container::default()
            }],
            restart_policy: Some("Never".to_owned()),
            termination_grace_period_seconds: Some(30),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// A Lease `name` held by `holder`, who took it and last renewed it at
/// `renewed` and then stopped (its process died): 30 s lease duration, one
/// transition, carrying `labels`.
pub fn abandoned_lease<K, V>(
    name: &str,
    holder: &str,
    renewed: Timestamp,
    labels: impl IntoIterator<Item = (K, V)>,
) -> Lease
where
    K: Into<String>,
    V: Into<String>,
{
    let renewed = MicroTime(renewed);
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                labels
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(30),
            acquire_time: Some(renewed.clone()),
            renew_time: Some(renewed),
            lease_transitions: Some(1),
            ..LeaseSpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::kube::parse_termination;

    #[test]
    fn every_termination_label_reads_back_as_itself() {
        for t in [
            PodTermination::Immediate,
            PodTermination::StopsAfter(Duration::from_millis(10)),
            PodTermination::AfterGracePeriod,
            PodTermination::Never,
        ] {
            assert_eq!(parse_termination(&termination_label(t)), Some(t));
        }
    }
}
