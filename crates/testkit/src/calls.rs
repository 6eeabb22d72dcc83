//! Call counters shared by every fake server in this crate.
//!
//! A server records each request once, after it has been answered (or
//! dropped), under (verb, resource, [`Outcome`]) and the API group the
//! resource belongs to (`""` for Kubernetes' core group and for FakeGitHub).
//! Tests and benchmarks read the counts to state facts such as "one
//! acquisition costs one create" or "the retry loop sent exactly three
//! updates". Counts that name no group add up every group, so core/v1 and
//! events.k8s.io/v1 `events` are one resource to [`Calls::count`] and two to
//! [`Calls::count_in_group`].
//!
//! The one rule it keeps: **every request is counted exactly once, with the
//! outcome the client actually saw** (an injected 503 is `Injected(503)`, not
//! `Ok`; a dropped connection is `Dropped`).
//!
//! ```
//! use testkit::calls::{Calls, Outcome};
//!
//! let calls = Calls::new();
//! calls.record("create", "leases", Outcome::Ok);
//! calls.record("create", "leases", Outcome::Error(409));
//! calls.record("get", "leases", Outcome::Ok);
//!
//! assert_eq!(calls.count(Some("create"), Some("leases")), 2);
//! assert_eq!(calls.count(None, Some("leases")), 3);
//! assert_eq!(calls.count_outcome(Some("create"), None, &Outcome::Error(409)), 1);
//! assert_eq!(calls.total(), 3);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Thread-safe counters of calls per (API group, verb, resource, outcome).
///
/// Cheap to clone: every clone shares the same counters.
#[derive(Clone, Default)]
pub struct Calls {
    counts: Arc<Mutex<BTreeMap<(String, CallKey), u64>>>,
}

impl Calls {
    /// Empty counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one call to a resource of no API group (the core group).
    pub fn record(&self, verb: &str, resource: &str, outcome: Outcome) {
        self.record_in_group("", verb, resource, outcome);
    }

    /// Counts one call to a resource of API `group` (`""`: the core group).
    pub fn record_in_group(&self, group: &str, verb: &str, resource: &str, outcome: Outcome) {
        let key = CallKey {
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            outcome,
        };
        *self.counts().entry((group.to_owned(), key)).or_insert(0) += 1;
    }

    /// Calls with this verb and resource (`None` = any), whatever the outcome
    /// and the API group.
    pub fn count(&self, verb: Option<&str>, resource: Option<&str>) -> u64 {
        self.sum(|_, k| k.matches(verb, resource))
    }

    /// Calls with this verb and resource (`None` = any) in API `group` only
    /// (`""`: the core group), whatever the outcome.
    pub fn count_in_group(&self, group: &str, verb: Option<&str>, resource: Option<&str>) -> u64 {
        self.sum(|g, k| g == group && k.matches(verb, resource))
    }

    /// Calls with this verb and resource (`None` = any) and exactly this outcome.
    pub fn count_outcome(
        &self,
        verb: Option<&str>,
        resource: Option<&str>,
        outcome: &Outcome,
    ) -> u64 {
        self.sum(|_, k| k.matches(verb, resource) && k.outcome == *outcome)
    }

    /// A copy of every non-zero counter, ordered by verb, resource, outcome;
    /// the counts of a resource's groups are added up.
    pub fn snapshot(&self) -> BTreeMap<CallKey, u64> {
        let mut out = BTreeMap::new();
        for ((_, key), n) in self.counts().iter() {
            *out.entry(key.clone()).or_insert(0) += n;
        }
        out
    }

    /// A copy of every non-zero counter with its API group, ordered by
    /// group, then verb, resource, outcome.
    pub fn snapshot_by_group(&self) -> BTreeMap<(String, CallKey), u64> {
        self.counts().clone()
    }

    /// All calls counted so far.
    pub fn total(&self) -> u64 {
        self.sum(|_, _| true)
    }

    /// Sets every counter back to zero (for example after a test's setup, so
    /// only the operation under test is counted).
    pub fn reset(&self) {
        self.counts().clear();
    }

    fn sum(&self, keep: impl Fn(&str, &CallKey) -> bool) -> u64 {
        self.counts()
            .iter()
            .filter(|((g, k), _)| keep(g, k))
            .map(|(_, n)| *n)
            .sum()
    }

    fn counts(&self) -> MutexGuard<'_, BTreeMap<(String, CallKey), u64>> {
        // Counters stay meaningful after a panicking holder: each update is a
        // single insert.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Calls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.snapshot_by_group()).finish()
    }
}

/// One counter's key (its API group aside, see [`Calls::snapshot_by_group`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey {
    /// The API verb.
    pub verb: String,
    /// The resource (plural, with `/subresource`).
    pub resource: String,
    /// What the client saw.
    pub outcome: Outcome,
}

impl CallKey {
    fn matches(&self, verb: Option<&str>, resource: Option<&str>) -> bool {
        verb.is_none_or(|v| v == self.verb) && resource.is_none_or(|r| r == self.resource)
    }
}

impl fmt::Display for CallKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.verb, self.resource, self.outcome)
    }
}

/// What the client saw for one call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// A success (2xx, or a 304 Not Modified).
    Ok,
    /// A real API error produced by the fake's semantics (409 Conflict, 404,
    /// 422, 410 …), not by fault injection.
    Error(u16),
    /// An error response injected by [`crate::faults::Faults`].
    Injected(u16),
    /// The connection was closed without a response (injected).
    Dropped,
}

impl Outcome {
    /// The outcome of a response the fake's own semantics produced:
    /// [`Outcome::Ok`] below 400, [`Outcome::Error`] otherwise.
    pub fn from_status(status: u16) -> Self {
        if status < 400 {
            Self::Ok
        } else {
            Self::Error(status)
        }
    }

    /// The outcome of an injected failure.
    pub fn injected(error: &crate::faults::InjectedError) -> Self {
        error.status().map_or(Self::Dropped, Self::Injected)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Error(code) => write!(f, "error {code}"),
            Self::Injected(code) => write!(f, "injected {code}"),
            Self::Dropped => f.write_str("dropped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::InjectedError;

    #[test]
    fn counts_filter_by_verb_resource_and_outcome() {
        let calls = Calls::new();
        calls.record("update", "leases", Outcome::Error(409));
        calls.record("update", "leases", Outcome::Ok);
        calls.record("update", "configmaps", Outcome::Injected(503));
        calls.record("get", "leases", Outcome::Dropped);

        assert_eq!(calls.count(Some("update"), None), 3);
        assert_eq!(calls.count(Some("update"), Some("leases")), 2);
        assert_eq!(calls.count(None, Some("leases")), 3);
        assert_eq!(calls.count(Some("delete"), None), 0);
        assert_eq!(calls.count_outcome(None, None, &Outcome::Injected(503)), 1);
        assert_eq!(
            calls.count_outcome(Some("get"), Some("leases"), &Outcome::Dropped),
            1
        );
        assert_eq!(calls.total(), 4);
    }

    #[test]
    fn snapshot_is_ordered_and_reset_clears() {
        let calls = Calls::new();
        calls.record("list", "pods", Outcome::Ok);
        calls.record("create", "pods", Outcome::Ok);
        calls.record("create", "pods", Outcome::Ok);
        let snap: Vec<(String, u64)> = calls
            .snapshot()
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect();
        assert_eq!(
            snap,
            vec![
                ("create pods ok".to_owned(), 2),
                ("list pods ok".to_owned(), 1)
            ]
        );
        calls.reset();
        assert_eq!(calls.total(), 0);
    }

    #[test]
    fn groups_are_counted_apart_and_added_up_when_unnamed() {
        let calls = Calls::new();
        calls.record("create", "events", Outcome::Ok);
        calls.record_in_group("events.k8s.io", "create", "events", Outcome::Ok);
        calls.record_in_group("events.k8s.io", "create", "events", Outcome::Ok);
        assert_eq!(calls.count(Some("create"), Some("events")), 3);
        assert_eq!(calls.count_in_group("", Some("create"), Some("events")), 1);
        assert_eq!(
            calls.count_in_group("events.k8s.io", Some("create"), None),
            2
        );
        let merged: Vec<(String, u64)> = calls
            .snapshot()
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect();
        assert_eq!(merged, vec![("create events ok".to_owned(), 3)]);
        assert_eq!(calls.snapshot_by_group().len(), 2);
    }

    #[test]
    fn clones_share_counters() {
        let calls = Calls::new();
        calls.clone().record("get", "pods", Outcome::Ok);
        assert_eq!(calls.total(), 1);
    }

    #[test]
    fn outcomes_map_from_statuses_and_injected_errors() {
        assert_eq!(Outcome::from_status(200), Outcome::Ok);
        assert_eq!(Outcome::from_status(304), Outcome::Ok);
        assert_eq!(Outcome::from_status(409), Outcome::Error(409));
        assert_eq!(
            Outcome::injected(&InjectedError::Status(500)),
            Outcome::Injected(500)
        );
        assert_eq!(
            Outcome::injected(&InjectedError::TooManyRequests {
                retry_after: std::time::Duration::from_secs(1)
            }),
            Outcome::Injected(429)
        );
        assert_eq!(Outcome::injected(&InjectedError::Drop), Outcome::Dropped);
    }
}
