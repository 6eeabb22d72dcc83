//! The request log: one [`RequestRecord`] per request FakeKube answered, in
//! the order the answers were decided, kept in a bounded ring.
//!
//! What the API server's audit log would show a test or a benchmark: who
//! (field manager, User-Agent, the `Audit-ID` the client chose) did what
//! (verb, group/version/resource, namespace, name), when (on the fake's
//! clock), with what outcome, and whether the request took effect even
//! though its answer was lost. The rule it keeps: **a request is recorded
//! exactly once, with the outcome the client saw**, the same as the
//! [`crate::calls::Calls`] counters it sits beside.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::calls::Outcome;

/// One answered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Position in the log, from 1, in the order answers were decided.
    pub seq: u64,
    /// When the request arrived, on the fake's clock (which follows
    /// `tokio::time::pause()`).
    pub at: jiff::Timestamp,
    /// The Kubernetes verb (`get`, `list`, `watch`, `create`, `update`,
    /// `patch`, `delete`, `deletecollection`; `get` for discovery,
    /// `unknown` for what matched no route).
    pub verb: String,
    /// The API group (`""`: the core group and non-resource paths).
    pub group: String,
    /// The version the client addressed (`""` for non-resource paths).
    pub version: String,
    /// The resource plural with `/subresource` (`pods`, `coderuns/status`),
    /// or `discovery`, `version`, `openapi`, `healthz`, `unknown`.
    pub resource: String,
    /// The namespace in the URL, if any.
    pub namespace: Option<String>,
    /// The object name in the URL, if any.
    pub name: Option<String>,
    /// The `fieldManager` query parameter, if the client gave one.
    pub field_manager: Option<String>,
    /// The `User-Agent` header, if any.
    pub user_agent: Option<String>,
    /// The `Audit-ID` header the client sent, if any: the value to group
    /// one operation's requests by.
    pub correlation: Option<String>,
    /// What the client saw.
    pub outcome: Outcome,
    /// Whether the request took effect (the server served it successfully),
    /// even if a fault then replaced or dropped its answer.
    pub applied: bool,
}

/// Which records a query selects; `None` means "any". Built like
/// [`crate::faults::Match`]: `RequestFilter::any().verb("delete").resource("pods")`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFilter {
    /// The verb, or any.
    pub verb: Option<String>,
    /// The API group (`""`: core), or any.
    pub group: Option<String>,
    /// The resource (with `/subresource`), or any.
    pub resource: Option<String>,
    /// The namespace, or any.
    pub namespace: Option<String>,
    /// The object name, or any.
    pub name: Option<String>,
    /// The field manager, or any.
    pub field_manager: Option<String>,
    /// The correlation (`Audit-ID`), or any.
    pub correlation: Option<String>,
}

impl RequestFilter {
    /// Selects every record.
    pub fn any() -> Self {
        Self::default()
    }

    /// Only this verb.
    #[must_use]
    pub fn verb(mut self, verb: impl Into<String>) -> Self {
        self.verb = Some(verb.into());
        self
    }

    /// Only this API group (`""`: the core group).
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Only this resource (with `/subresource`, compared exactly).
    #[must_use]
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Only this namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Only this object name.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Only this field manager.
    #[must_use]
    pub fn field_manager(mut self, manager: impl Into<String>) -> Self {
        self.field_manager = Some(manager.into());
        self
    }

    /// Only this correlation (`Audit-ID`).
    #[must_use]
    pub fn correlation(mut self, id: impl Into<String>) -> Self {
        self.correlation = Some(id.into());
        self
    }

    /// Whether `record` is selected.
    pub fn matches(&self, record: &RequestRecord) -> bool {
        fn same(want: Option<&String>, have: &str) -> bool {
            want.is_none_or(|w| w == have)
        }
        fn same_opt(want: Option<&String>, have: Option<&String>) -> bool {
            want.is_none_or(|w| have == Some(w))
        }
        same(self.verb.as_ref(), &record.verb)
            && same(self.group.as_ref(), &record.group)
            && same(self.resource.as_ref(), &record.resource)
            && same_opt(self.namespace.as_ref(), record.namespace.as_ref())
            && same_opt(self.name.as_ref(), record.name.as_ref())
            && same_opt(self.field_manager.as_ref(), record.field_manager.as_ref())
            && same_opt(self.correlation.as_ref(), record.correlation.as_ref())
    }
}

/// The bounded, ordered log of every request FakeKube answered, oldest
/// first. Cheap to clone: clones share the log.
///
/// Counting the API calls of one operation among many concurrent ones needs
/// a value the client sets per operation: the `Audit-ID` header (the API
/// server's own correlation header, echoed in its answer as `Audit-Id`),
/// or a field manager.
///
/// ```
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// use http::{HeaderName, HeaderValue};
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use kube::api::{Api, PostParams};
/// use testkit::kube::{FakeKube, RequestFilter};
///
/// let kube = FakeKube::start().await?;
/// let mut config = kube.config();
/// config.headers.push((HeaderName::from_static("audit-id"), HeaderValue::from_static("cancel-42")));
/// let cms: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(config)?, "default");
/// let mut cm = ConfigMap::default();
/// cm.metadata.name = Some("state".into());
/// cms.create(&PostParams::default(), &cm).await?;
/// cms.get("state").await?;
///
/// let per_cancellation = kube.requests().count_by_correlation(&RequestFilter::any());
/// assert_eq!(per_cancellation["cancel-42"], 2);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct RequestLog {
    inner: Arc<Mutex<Ring>>,
}

struct Ring {
    capacity: usize,
    records: VecDeque<RequestRecord>,
    next_seq: u64,
    evicted: u64,
}

impl RequestLog {
    /// An empty log keeping the last `capacity` records (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Ring {
                capacity: capacity.max(1),
                records: VecDeque::new(),
                next_seq: 1,
                evicted: 0,
            })),
        }
    }

    /// Appends a record, numbering it and evicting the oldest when full.
    pub(crate) fn push(&self, mut record: RequestRecord) {
        let mut ring = self.ring();
        record.seq = ring.next_seq;
        ring.next_seq += 1;
        if ring.records.len() == ring.capacity {
            ring.records.pop_front();
            ring.evicted += 1;
        }
        ring.records.push_back(record);
    }

    /// Every kept record, oldest first.
    pub fn entries(&self) -> Vec<RequestRecord> {
        self.ring().records.iter().cloned().collect()
    }

    /// The kept records after `seq` (a value of [`RequestLog::last_seq`]
    /// taken earlier), oldest first: what happened since.
    pub fn since(&self, seq: u64) -> Vec<RequestRecord> {
        self.ring()
            .records
            .iter()
            .filter(|r| r.seq > seq)
            .cloned()
            .collect()
    }

    /// The number of the last record (0 before the first request).
    pub fn last_seq(&self) -> u64 {
        self.ring().next_seq - 1
    }

    /// The kept records `filter` selects, oldest first.
    pub fn matching(&self, filter: &RequestFilter) -> Vec<RequestRecord> {
        self.ring()
            .records
            .iter()
            .filter(|r| filter.matches(r))
            .cloned()
            .collect()
    }

    /// How many kept records `filter` selects.
    pub fn count(&self, filter: &RequestFilter) -> usize {
        self.ring()
            .records
            .iter()
            .filter(|r| filter.matches(r))
            .count()
    }

    /// How many kept records `filter` selects, per correlation
    /// (`Audit-ID`); records without one are left out.
    pub fn count_by_correlation(&self, filter: &RequestFilter) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in self.ring().records.iter().filter(|r| filter.matches(r)) {
            if let Some(id) = &r.correlation {
                *out.entry(id.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    /// How many records were evicted to respect the capacity (a count over
    /// the log is then a count over its last [`RequestLog::capacity`]).
    pub fn evicted(&self) -> u64 {
        self.ring().evicted
    }

    /// The most records kept.
    pub fn capacity(&self) -> usize {
        self.ring().capacity
    }

    /// Forgets every record (numbering continues).
    pub fn clear(&self) {
        let mut ring = self.ring();
        ring.evicted += ring.records.len() as u64;
        ring.records.clear();
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        // Each update is one push or pop; a panicking holder leaves the ring
        // consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for RequestLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = self.ring();
        f.debug_struct("RequestLog")
            .field("records", &ring.records.len())
            .field("capacity", &ring.capacity)
            .field("evicted", &ring.evicted)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(verb: &str, correlation: Option<&str>) -> RequestRecord {
        RequestRecord {
            seq: 0,
            at: jiff::Timestamp::UNIX_EPOCH,
            verb: verb.to_owned(),
            group: String::new(),
            version: "v1".to_owned(),
            resource: "pods".to_owned(),
            namespace: Some("ns".to_owned()),
            name: None,
            field_manager: None,
            user_agent: None,
            correlation: correlation.map(str::to_owned),
            outcome: Outcome::Ok,
            applied: true,
        }
    }

    #[test]
    fn the_log_is_numbered_bounded_and_counts_what_it_evicted() {
        let log = RequestLog::new(2);
        for verb in ["get", "list", "watch"] {
            log.push(record(verb, None));
        }
        let kept: Vec<(u64, String)> = log.entries().into_iter().map(|r| (r.seq, r.verb)).collect();
        assert_eq!(kept, vec![(2, "list".to_owned()), (3, "watch".to_owned())]);
        assert_eq!(log.evicted(), 1);
        assert_eq!(log.last_seq(), 3);
        assert_eq!(log.since(2).len(), 1);
    }

    #[test]
    fn counts_per_correlation_leave_out_uncorrelated_requests() {
        let log = RequestLog::new(10);
        log.push(record("delete", Some("a")));
        log.push(record("get", Some("a")));
        log.push(record("delete", Some("b")));
        log.push(record("delete", None));
        let all = log.count_by_correlation(&RequestFilter::any());
        assert_eq!(all, [("a".to_owned(), 2), ("b".to_owned(), 1)].into());
        let deletes = log.count_by_correlation(&RequestFilter::any().verb("delete"));
        assert_eq!(deletes, [("a".to_owned(), 1), ("b".to_owned(), 1)].into());
        assert_eq!(log.count(&RequestFilter::any().correlation("a")), 2);
    }
}
