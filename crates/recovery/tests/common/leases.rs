//! Leases as a dead holder left them, shared by the memory and the
//! FakeKube suites.

use jiff::{SignedDuration, Timestamp};
use lease_lock::Lease;

/// A Lease `name` of the task lock (prefix `cancel`) held by `dead-pod/1`,
/// which stopped renewing it two minutes ago (its process died).
pub fn dead_lease(name: &str) -> Lease {
    testkit::kube::seeding::abandoned_lease(
        name,
        "dead-pod/1",
        Timestamp::now() - SignedDuration::from_secs(120),
        [
            (lease_lock::MANAGED_BY_LABEL, lease_lock::MANAGED_BY_VALUE),
            (lease_lock::LOCK_PREFIX_LABEL, "cancel"),
        ],
    )
}
