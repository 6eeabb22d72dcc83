//! Leases as a dead holder left them, shared by the memory and the
//! FakeKube suites.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use lease_lock::{Lease, LeaseSpec};

/// A Lease `name` of the task lock (prefix `cancel`) held by `dead-pod/1`,
/// which stopped renewing it two minutes ago (its process died).
pub fn dead_lease(name: &str) -> Lease {
    let renewed = MicroTime(Timestamp::now() - SignedDuration::from_secs(120));
    Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                [
                    (
                        lease_lock::MANAGED_BY_LABEL.to_owned(),
                        lease_lock::MANAGED_BY_VALUE.to_owned(),
                    ),
                    (
                        lease_lock::LOCK_PREFIX_LABEL.to_owned(),
                        "cancel".to_owned(),
                    ),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("dead-pod/1".into()),
            lease_duration_seconds: Some(30),
            acquire_time: Some(renewed.clone()),
            renew_time: Some(renewed),
            lease_transitions: Some(1),
            ..LeaseSpec::default()
        }),
    }
}
