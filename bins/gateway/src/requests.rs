//! Where RemediationRequests live: the [`RemediationRequests`] trait, with
//! [`KubeRequests`] (the custom resource through `kube`) and
//! [`MemoryRequests`] (in-process, for `--dev` and tests).
//!
//! Rule kept here: every write is conditional. A create fails with
//! [`Error::AlreadyExists`] when the name is taken; a status write carries
//! the `resourceVersion` it was computed from and fails with
//! [`Error::Conflict`] when the object changed since; a replica's count is
//! a compare-and-swap of its own entry and fails with [`Error::Conflict`]
//! when that entry is not what the replica read. So concurrent counters on
//! several replicas never overwrite each other's increments.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::Error;
use crate::crd::{
    Deduplication, LABEL_FINGERPRINT_HASH, RemediationRequest, RemediationRequestStatus,
};

/// The RemediationRequest operations the gateway needs.
#[async_trait]
pub trait RemediationRequests: Send + Sync + 'static {
    /// Every request labelled with fingerprint hash `hash`, terminal or not.
    async fn list_by_fingerprint_hash(&self, hash: &str) -> Result<Vec<RemediationRequest>, Error>;

    /// Reads one request; `Ok(None)` when it does not exist.
    async fn get(&self, name: &str) -> Result<Option<RemediationRequest>, Error>;

    /// Creates `request` and returns it as stored (its status dropped, as
    /// the API server drops it on a create when the status subresource is
    /// on). [`Error::AlreadyExists`] when the name is taken.
    async fn create(&self, request: &RemediationRequest) -> Result<RemediationRequest, Error>;

    /// Replaces the status if the stored `resourceVersion` still equals
    /// `request.metadata.resourceVersion`; returns the stored object.
    /// [`Error::Conflict`] when it changed, [`Error::NotFound`] when gone.
    async fn replace_status(
        &self,
        request: &RemediationRequest,
    ) -> Result<RemediationRequest, Error>;

    /// Sets replica `replica`'s entry of `status.deduplication.replicas`
    /// to `count` and `lastSeen` to `seen`, changing nothing else, if the
    /// entry still holds what `current` (the request as last read) holds —
    /// a compare-and-swap of that one entry, so replicas counting the same
    /// request never conflict with each other. Creates the deduplication
    /// status (with `firstSeen` = `seen`) when `current` has none.
    /// Returns the stored object; [`Error::Conflict`] when the entry (or
    /// the status's shape) is not what `current` says, [`Error::NotFound`]
    /// when the request is gone.
    async fn swap_replica_count(
        &self,
        current: &RemediationRequest,
        replica: &str,
        count: u64,
        seen: Timestamp,
    ) -> Result<RemediationRequest, Error>;
}

/// The JSON patch (RFC 6902) of [`RemediationRequests::swap_replica_count`]:
/// a `test` of the deepest part of the deduplication status `current` has
/// (the entry's value, or that the entry, the map, the deduplication or the
/// status is absent), then the `add` of what follows it.
pub fn replica_count_patch(
    current: &RemediationRequest,
    replica: &str,
    count: u64,
    seen: Timestamp,
) -> Value {
    let key = replica.replace('~', "~0").replace('/', "~1");
    let seen_json = json!(seen.to_string());
    let status = current.status.as_ref();
    let dedup = status.and_then(|s| s.deduplication.as_ref());
    let fresh = || Deduplication::first_count(replica, count, seen);
    let ops = match (status, dedup) {
        (None, _) => vec![
            json!({"op": "test", "path": "/status", "value": null}),
            json!({"op": "add", "path": "/status", "value": RemediationRequestStatus {
                phase: None,
                deduplication: Some(fresh()),
            }}),
        ],
        (Some(_), None) => vec![
            json!({"op": "test", "path": "/status/deduplication", "value": null}),
            json!({"op": "add", "path": "/status/deduplication", "value": fresh()}),
        ],
        (Some(_), Some(d)) if d.replicas.is_empty() => vec![
            json!({"op": "test", "path": "/status/deduplication/replicas", "value": null}),
            json!({"op": "add", "path": "/status/deduplication/replicas", "value": {replica: count}}),
            json!({"op": "add", "path": "/status/deduplication/lastSeen", "value": seen_json}),
        ],
        (Some(_), Some(d)) => {
            let path = format!("/status/deduplication/replicas/{key}");
            vec![
                json!({"op": "test", "path": path, "value": d.replicas.get(replica)}),
                json!({"op": "add", "path": path, "value": count}),
                json!({"op": "add", "path": "/status/deduplication/lastSeen", "value": seen_json}),
            ]
        }
    };
    Value::Array(ops)
}

/// How long [`KubeRequests`] waits for one API call by default.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// RemediationRequests of one namespace on a cluster.
///
/// Every call is bounded by a timeout ([`DEFAULT_CALL_TIMEOUT`], or
/// [`with_call_timeout`](Self::with_call_timeout)): an API server that
/// accepts the connection and never answers would otherwise hold the
/// delivery (and its sender's connection) for `kube`'s read timeout,
/// about five minutes. A call past its timeout is [`Error::Unreachable`],
/// which callers retry: a write that timed out may still have landed, and
/// every write here is conditional, so its retry finds out (the name is
/// taken, the version or the count entry moved on).
#[derive(Clone)]
pub struct KubeRequests {
    api: Api<RemediationRequest>,
    call_timeout: Duration,
}

impl KubeRequests {
    /// The requests of `namespace` through `client`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// Bounds each API call by `timeout` instead of [`DEFAULT_CALL_TIMEOUT`].
    #[must_use]
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// `call` on `what` (a name, for messages), bounded by the call
    /// timeout, its `kube` error mapped by [`Error::from_kube`].
    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(answer) => answer.map_err(|e| Error::from_kube(e, what)),
            Err(_) => Err(Error::Unreachable(format!(
                "{what}: the API server gave no answer within {:?}",
                self.call_timeout
            ))),
        }
    }
}

#[async_trait]
impl RemediationRequests for KubeRequests {
    async fn list_by_fingerprint_hash(&self, hash: &str) -> Result<Vec<RemediationRequest>, Error> {
        let params = ListParams::default().labels(&format!("{LABEL_FINGERPRINT_HASH}={hash}"));
        self.call("remediationrequests", self.api.list(&params))
            .await
            .map(|list| list.items)
    }

    async fn get(&self, name: &str) -> Result<Option<RemediationRequest>, Error> {
        self.call(name, self.api.get_opt(name)).await
    }

    async fn create(&self, request: &RemediationRequest) -> Result<RemediationRequest, Error> {
        let name = request.metadata.name.clone().unwrap_or_default();
        self.call(&name, self.api.create(&PostParams::default(), request))
            .await
    }

    async fn replace_status(
        &self,
        request: &RemediationRequest,
    ) -> Result<RemediationRequest, Error> {
        let name = request.metadata.name.clone().unwrap_or_default();
        if request.metadata.resource_version.is_none() {
            return Err(Error::Config(format!(
                "a status write of {name} without a resourceVersion would be unconditional"
            )));
        }
        self.call(
            &name,
            self.api
                .replace_status(&name, &PostParams::default(), request),
        )
        .await
    }

    async fn swap_replica_count(
        &self,
        current: &RemediationRequest,
        replica: &str,
        count: u64,
        seen: Timestamp,
    ) -> Result<RemediationRequest, Error> {
        let name = current.metadata.name.clone().unwrap_or_default();
        let patch: kube_json_patch::Patch =
            serde_json::from_value(replica_count_patch(current, replica, count, seen))
                .map_err(|e| Error::Config(format!("count patch of {name}: {e}")))?;
        let params = PatchParams::default();
        let patch = Patch::<()>::Json(patch);
        match self
            .call(&name, self.api.patch_status(&name, &params, &patch))
            .await
        {
            // A failed `test`: the entry or the status's shape changed.
            Err(Error::Api { status: 422, .. }) => Err(Error::Conflict(name)),
            other => other,
        }
    }
}

/// RemediationRequests in memory, with the API server's versions and
/// preconditions. Cheap to clone; clones share the store.
#[derive(Clone, Default)]
pub struct MemoryRequests {
    inner: Arc<Mutex<Store>>,
}

#[derive(Default)]
struct Store {
    requests: BTreeMap<String, RemediationRequest>,
    version: u64,
}

impl MemoryRequests {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every request stored (for tests and `--dev` inspection).
    pub fn all(&self) -> Vec<RemediationRequest> {
        self.store().requests.values().cloned().collect()
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // Every mutation is one insert: a panic cannot leave it half-written.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl RemediationRequests for MemoryRequests {
    async fn list_by_fingerprint_hash(&self, hash: &str) -> Result<Vec<RemediationRequest>, Error> {
        Ok(self
            .store()
            .requests
            .values()
            .filter(|r| {
                r.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_FINGERPRINT_HASH))
                    .is_some_and(|h| h == hash)
            })
            .cloned()
            .collect())
    }

    async fn get(&self, name: &str) -> Result<Option<RemediationRequest>, Error> {
        Ok(self.store().requests.get(name).cloned())
    }

    async fn create(&self, request: &RemediationRequest) -> Result<RemediationRequest, Error> {
        let name = request
            .metadata
            .name
            .clone()
            .ok_or_else(|| Error::Config("a request needs a name".into()))?;
        let mut store = self.store();
        if store.requests.contains_key(&name) {
            return Err(Error::AlreadyExists(name));
        }
        store.version += 1;
        let mut stored = request.clone();
        stored.status = None;
        stored.metadata.resource_version = Some(store.version.to_string());
        stored.metadata.uid = Some(format!("memory-{}", store.version));
        stored.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        store.requests.insert(name, stored.clone());
        Ok(stored)
    }

    async fn replace_status(
        &self,
        request: &RemediationRequest,
    ) -> Result<RemediationRequest, Error> {
        let name = request.metadata.name.clone().unwrap_or_default();
        let mut store = self.store();
        let version = store.version + 1;
        let Some(current) = store.requests.get_mut(&name) else {
            return Err(Error::NotFound(name));
        };
        if request.metadata.resource_version.is_none()
            || current.metadata.resource_version != request.metadata.resource_version
        {
            return Err(Error::Conflict(name));
        }
        current.status = request.status.clone();
        current.metadata.resource_version = Some(version.to_string());
        let stored = current.clone();
        store.version = version;
        Ok(stored)
    }

    async fn swap_replica_count(
        &self,
        read: &RemediationRequest,
        replica: &str,
        count: u64,
        seen: Timestamp,
    ) -> Result<RemediationRequest, Error> {
        let name = read.metadata.name.clone().unwrap_or_default();
        let mut store = self.store();
        let version = store.version + 1;
        let Some(current) = store.requests.get_mut(&name) else {
            return Err(Error::NotFound(name));
        };
        if current.replica_count(replica) != read.replica_count(replica) {
            return Err(Error::Conflict(name));
        }
        let status = current
            .status
            .get_or_insert_with(RemediationRequestStatus::default);
        match status.deduplication.as_mut() {
            None => status.deduplication = Some(Deduplication::first_count(replica, count, seen)),
            Some(dedup) => {
                dedup.replicas.insert(replica.to_owned(), count);
                dedup.last_seen = seen;
            }
        }
        current.metadata.resource_version = Some(version.to_string());
        let stored = current.clone();
        store.version = version;
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::crd::tests::spec;

    fn request(status: Option<RemediationRequestStatus>) -> RemediationRequest {
        let mut r = RemediationRequest::new("rr-0123456789abcdef-1", spec("fp"));
        r.status = status;
        r
    }

    fn dedup(replicas: &[(&str, u64)]) -> Option<RemediationRequestStatus> {
        let t = Timestamp::UNIX_EPOCH;
        Some(RemediationRequestStatus {
            phase: None,
            deduplication: Some(Deduplication {
                occurrence_count: 0,
                replicas: replicas
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), *v))
                    .collect(),
                first_seen: t,
                last_seen: t,
            }),
        })
    }

    #[test]
    fn the_count_patch_tests_the_deepest_part_the_read_had() {
        let seen = Timestamp::UNIX_EPOCH;
        let ops = |r: &RemediationRequest, replica: &str| {
            let patch = replica_count_patch(r, replica, 3, seen);
            let first = &patch[0];
            (
                first["op"].as_str().unwrap().to_owned(),
                first["path"].as_str().unwrap().to_owned(),
                first["value"].clone(),
            )
        };
        let none = request(None);
        assert_eq!(
            ops(&none, "a"),
            ("test".into(), "/status".into(), Value::Null)
        );
        let empty = request(Some(RemediationRequestStatus::default()));
        assert_eq!(
            ops(&empty, "a"),
            ("test".into(), "/status/deduplication".into(), Value::Null)
        );
        let no_entries = request(dedup(&[]));
        assert_eq!(
            ops(&no_entries, "a"),
            (
                "test".into(),
                "/status/deduplication/replicas".into(),
                Value::Null
            )
        );
        let others = request(dedup(&[("b", 5)]));
        assert_eq!(
            ops(&others, "a"),
            (
                "test".into(),
                "/status/deduplication/replicas/a".into(),
                Value::Null
            )
        );
        let own = request(dedup(&[("a", 2), ("b", 5)]));
        assert_eq!(
            ops(&own, "a"),
            (
                "test".into(),
                "/status/deduplication/replicas/a".into(),
                json!(2)
            )
        );
        // The set names the same entry and carries the new count.
        let patch = replica_count_patch(&own, "a", 3, seen);
        assert_eq!(patch[1]["path"], "/status/deduplication/replicas/a");
        assert_eq!(patch[1]["value"], 3);
    }

    #[test]
    fn a_replica_identity_is_escaped_as_one_json_pointer_segment() {
        let r = request(dedup(&[("ns/pod~1", 1)]));
        let patch = replica_count_patch(&r, "ns/pod~1", 2, Timestamp::UNIX_EPOCH);
        assert_eq!(
            patch[0]["path"],
            "/status/deduplication/replicas/ns~1pod~01"
        );
        assert_eq!(patch[0]["value"], 1);
    }

    #[tokio::test]
    async fn memory_refuses_a_count_whose_read_is_stale_and_keeps_the_others() {
        let store = MemoryRequests::new();
        let created = store.create(&request(None)).await.unwrap();
        let a1 = store
            .swap_replica_count(&created, "a", 1, Timestamp::UNIX_EPOCH)
            .await
            .unwrap();
        // b's read predates a's count: b's own entry is unchanged, so it lands.
        let b1 = store
            .swap_replica_count(&created, "b", 1, Timestamp::UNIX_EPOCH)
            .await
            .unwrap();
        assert_eq!(b1.counted(), 2);
        // a counting again from the read before its first count: refused.
        let stale = store
            .swap_replica_count(&created, "a", 1, Timestamp::UNIX_EPOCH)
            .await;
        assert!(matches!(stale, Err(Error::Conflict(_))), "{stale:?}");
        let a2 = store
            .swap_replica_count(&a1, "a", 2, Timestamp::UNIX_EPOCH)
            .await
            .unwrap();
        assert_eq!(a2.replica_count("a"), Some(2));
        assert_eq!(a2.replica_count("b"), Some(1));
        assert_eq!(a2.counted(), 3);
    }
}
