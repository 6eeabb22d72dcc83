//! Deadlock detection over the wait-for graph stored in the Leases.
//!
//! Rule kept here: only a cycle that provably closes on a Lease *we* hold is
//! a deadlock, and of the members of a cycle exactly one — the holder with
//! the greatest identity — backs out, so a deadlock costs one failed
//! acquisition instead of all of them.
//!
//! # Model
//!
//! A caller that waits for a key while holding guards declares them
//! ([`AcquireOptions::holding`](crate::AcquireOptions::holding)). Each
//! declared Lease then carries the annotation
//! `supersede.dev/waiting-for: <lease we wait for>` for as long as the wait
//! lasts. That makes each Lease a node of the wait-for graph with at most
//! one outgoing edge: "the holder of this Lease waits for that Lease".
//! A waiter walks the graph from the Lease it wants, one read per hop
//! (bounded by [`MAX_DEPTH`]); reaching one of its own declared Leases
//! closes a cycle.
//!
//! # Limits
//!
//! - Holds that are not declared are invisible: a caller waiting while it
//!   holds an undeclared guard can still deadlock until its timeout.
//! - The walk reads Leases one by one, not a snapshot; a cycle seen at one
//!   moment may already be breaking. The victim rule keeps the cost of such
//!   a false alarm at one failed acquisition.
//! - A crashed waiter's annotation stays until its Lease expires; Leases
//!   whose `renewTime + duration + max skew` is past are skipped, which
//!   closes that window except for the first lease duration after the crash.
//! - Cycles longer than [`MAX_DEPTH`] are not found (the timeout still ends
//!   the wait).

use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use crate::error::Error;
use crate::gc::idle_longer_than;
use crate::guard::GuardShared;
use crate::lock::{LockInner, holder_of};
use crate::{Lease, WAITING_FOR_ANNOTATION};

/// The longest wait-for chain followed (Lease reads per walk).
pub(crate) const MAX_DEPTH: usize = 16;

/// A wait-for cycle through one of our Leases.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cycle {
    /// `(lease name, holder)` in wait-for order, starting with the Lease we
    /// want and ending with the one of ours that closes the cycle.
    members: Vec<(String, String)>,
}

impl Cycle {
    pub(crate) fn lease_names(&self) -> Vec<String> {
        self.members.iter().map(|(name, _)| name.clone()).collect()
    }

    /// Whether we (the last member) have the greatest holder identity, the
    /// rule every member of the cycle applies to pick the one that backs out.
    pub(crate) fn we_are_victim(&self) -> bool {
        let Some((_, ours)) = self.members.last() else {
            return false;
        };
        self.members.iter().all(|(_, holder)| holder <= ours)
    }
}

/// Marks the declared held Leases as waiting for a Lease. The edge is
/// recorded in each guard at once, before anything is written, so that
/// dropping the marker — however the wait ends, even in the middle of
/// [`publish`](Self::publish) — always removes it again (in the background);
/// an edge left in a guard would be rewritten by every renewal.
pub(crate) struct WaitMarker {
    held: Vec<Arc<GuardShared>>,
}

impl WaitMarker {
    pub(crate) fn new(held: &[Arc<GuardShared>], waiting_for: &str) -> Self {
        for guard in held {
            guard.set_waiting_for(Some(waiting_for.to_owned()));
        }
        Self {
            held: held.to_vec(),
        }
    }

    /// Writes the edge to the held Leases (each write also renews).
    /// Best effort: a failed write is rewritten by the guard's next renewal.
    pub(crate) async fn publish(&self) {
        for guard in &self.held {
            if let Err(e) = guard.write(true).await {
                debug!(lease = %guard.name, error = %e, "could not record waiting-for; deadlock detection is weakened");
            }
        }
    }
}

impl Drop for WaitMarker {
    fn drop(&mut self) {
        for guard in std::mem::take(&mut self.held) {
            guard.set_waiting_for(None);
            let runtime = guard.runtime.clone();
            runtime.spawn(async move {
                if let Err(e) = guard.write(true).await {
                    debug!(lease = %guard.name, error = %e, "could not clear waiting-for; the next renewal will");
                }
            });
        }
    }
}

/// Walks the wait-for graph from `wanted`; returns the cycle if it closes
/// on one of `holding`.
pub(crate) async fn find_cycle(
    lock: &LockInner,
    wanted: &Lease,
    holding: &[Arc<GuardShared>],
) -> Result<Option<Cycle>, Error> {
    // A declared guard that has ended (released, dropped or lost) no longer
    // holds its Lease: whoever holds it now is not us.
    let ours = |name: &str| {
        holding
            .iter()
            .find(|g| g.name == name && !g.ended.is_cancelled())
    };
    let mut members = Vec::new();
    let mut current = wanted.clone();
    for _ in 0..MAX_DEPTH {
        let name = current.metadata.name.clone().unwrap_or_default();
        let Some(holder) = holder_of(&current).map(str::to_owned) else {
            return Ok(None);
        };
        if stopped_renewing(lock, &current) {
            return Ok(None);
        }
        let Some(next) = waiting_for(&current) else {
            return Ok(None);
        };
        if members.iter().any(|(n, _): &(String, String)| *n == name) {
            // A cycle that does not go through us: not ours to break.
            return Ok(None);
        }
        members.push((name, holder));
        if let Some(guard) = ours(&next) {
            members.push((guard.name.clone(), guard.holder.clone()));
            return Ok(Some(Cycle { members }));
        }
        match lock.backend.get(&lock.config.namespace, &next).await? {
            Some(lease) => current = lease,
            None => return Ok(None),
        }
    }
    Ok(None)
}

fn waiting_for(lease: &Lease) -> Option<String> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(WAITING_FOR_ANNOTATION)
        .filter(|v| !v.is_empty())
        .cloned()
}

/// Whether the holder of a Lease met during a walk has stopped renewing it:
/// no activity for two lease durations by its own timestamps. There is no
/// monotonic observation of such a Lease, and the judgment only decides
/// whether its holder still counts as a member of a wait-for cycle (never a
/// takeover), so a wall-clock margin of a whole lease duration is enough.
fn stopped_renewing(lock: &LockInner, lease: &Lease) -> bool {
    let duration = lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(lock.config.lease_duration, Duration::from_secs);
    idle_longer_than(lease, jiff::Timestamp::now(), duration.saturating_mul(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(members: &[(&str, &str)]) -> Cycle {
        Cycle {
            members: members
                .iter()
                .map(|(n, h)| ((*n).to_owned(), (*h).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn exactly_one_member_of_a_cycle_is_the_victim() {
        // A (holder "a/1") holds x, waits for y; B ("b/2") holds y, waits for x.
        let seen_by_a = cycle(&[("y", "b/2"), ("x", "a/1")]);
        let seen_by_b = cycle(&[("x", "a/1"), ("y", "b/2")]);
        assert!(!seen_by_a.we_are_victim());
        assert!(seen_by_b.we_are_victim());
        assert_eq!(seen_by_a.lease_names(), ["y", "x"]);
    }
}
