//! [`KubeLeases`]: the [`LeaseBackend`] on the Kubernetes API, through `kube`.
//!
//! Rule kept here: no write leaves without its precondition — replace
//! carries `metadata.resourceVersion` (refused locally when missing), delete
//! carries `preconditions {uid, resourceVersion}` — so the API server, not
//! this process, decides every race.
//!
//! The watch of one Lease follows kube-runtime's watcher. Without a
//! resourceVersion from the caller it starts with the Lease's current state
//! in one request, a WATCH (by `metadata.name` field selector) with
//! `sendInitialEvents=true` (kube-runtime's `StreamingList`): the API server
//! sends the Lease as an ADDED event, then a bookmark marked
//! `k8s.io/initial-events-end` (no ADDED before it: the Lease is absent),
//! then every change. A server that refuses initial events (the WatchList
//! feature off: 422 Invalid) is asked the classic way from then on, a LIST
//! for the state and a resourceVersion, then a WATCH from it. Either way the
//! stream resumes from the last seen version (bookmarks included) when the
//! server ends it, and starts over from the current state on `410 Gone`
//! (desynchronised; at once the first time, with backoff when even a fresh
//! start is gone). Failures are reported on the stream and retried with
//! backoff; the stream ends only when its consumer drops it, and holds one
//! task and a 16-event buffer.

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{
    Api, DeleteParams, ListParams, PostParams, Preconditions, WatchEvent, WatchParams,
};
use resilience::{Backoff, BackoffPolicy};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::debug;

use crate::error::Error;
use crate::{Lease, LeaseBackend, LeaseEvent};

/// Leases on a Kubernetes API server. Cheap to clone (a `kube::Client` is).
#[derive(Clone)]
pub struct KubeLeases {
    client: ::kube::Client,
    /// Whether watches may ask for initial events (`sendInitialEvents`);
    /// cleared for good, for every clone, when the server refuses them.
    initial_events: Arc<AtomicBool>,
}

impl std::fmt::Debug for KubeLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeLeases").finish_non_exhaustive()
    }
}

impl KubeLeases {
    /// Leases through `client` (needs get, list, watch, create, update and
    /// delete on `leases.coordination.k8s.io` in the lock's namespace).
    pub fn new(client: ::kube::Client) -> Self {
        Self {
            client,
            initial_events: Arc::new(AtomicBool::new(true)),
        }
    }

    fn api(&self, namespace: &str) -> Api<Lease> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

/// Events buffered between the watch task and its consumer.
const WATCH_CHANNEL: usize = 16;

#[async_trait]
impl LeaseBackend for KubeLeases {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Lease>, Error> {
        self.api(namespace)
            .get_opt(name)
            .await
            .map(|lease| lease.map(lean))
            .map_err(|e| Error::from_kube(e, name))
    }

    async fn create(&self, namespace: &str, lease: &Lease) -> Result<Lease, Error> {
        let name = lease.metadata.name.as_deref().unwrap_or_default();
        self.api(namespace)
            .create(&PostParams::default(), lease)
            .await
            .map(lean)
            .map_err(|e| Error::from_kube(e, name))
    }

    async fn replace(&self, namespace: &str, lease: &Lease) -> Result<Lease, Error> {
        let name = lease.metadata.name.as_deref().unwrap_or_default();
        if lease
            .metadata
            .resource_version
            .as_deref()
            .is_none_or(str::is_empty)
        {
            // The API server would accept it as an unconditional update.
            return Err(Error::InvalidLease {
                name: name.to_owned(),
                reason: "a replace needs metadata.resourceVersion (no unconditional writes)".into(),
            });
        }
        self.api(namespace)
            .replace(name, &PostParams::default(), lease)
            .await
            .map(lean)
            .map_err(|e| Error::from_kube(e, name))
    }

    async fn delete(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        resource_version: &str,
    ) -> Result<(), Error> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: Some(resource_version.to_owned()),
            }),
            ..DeleteParams::default()
        };
        self.api(namespace)
            .delete(name, &params)
            .await
            .map(|_| ())
            .map_err(|e| Error::from_kube(e, name))
    }

    async fn list(&self, namespace: &str, label_selector: &str) -> Result<Vec<Lease>, Error> {
        self.api(namespace)
            .list(&ListParams::default().labels(label_selector))
            .await
            .map(|list| list.items.into_iter().map(lean).collect())
            .map_err(|e| Error::from_kube(e, "(list)"))
    }

    async fn list_page(
        &self,
        namespace: &str,
        label_selector: &str,
        limit: u32,
        continue_token: Option<String>,
    ) -> Result<crate::LeasePage, Error> {
        let mut params = ListParams::default().labels(label_selector).limit(limit);
        if let Some(token) = continue_token {
            params = params.continue_token(&token);
        }
        self.api(namespace)
            .list(&params)
            .await
            .map(|list| crate::LeasePage {
                leases: list.items.into_iter().map(lean).collect(),
                continue_token: list.metadata.continue_.filter(|t| !t.is_empty()),
            })
            .map_err(|e| Error::from_kube(e, "(list)"))
    }

    fn watch(
        &self,
        namespace: &str,
        name: &str,
        since: Option<String>,
    ) -> BoxStream<'static, Result<LeaseEvent, Error>> {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let api: Api<WatchedLease> = Api::namespaced(self.client.clone(), namespace);
        let name = name.to_owned();
        let initial_events = Arc::clone(&self.initial_events);
        tokio::spawn(async move {
            tokio::select! {
                () = tx.closed() => {}
                () = watch_loop(api, name, since, &initial_events, &tx) => {}
            }
        });
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (event, rx))
        })
        .boxed()
    }
}

/// Restart delays of a failing watch: quick at first, never hammering.
fn restart_policy() -> BackoffPolicy {
    BackoffPolicy {
        initial: Duration::from_millis(100),
        multiplier: 2.0,
        max: Duration::from_secs(10),
        jitter: 0.25,
        max_attempts: None,
    }
}

type Sender = mpsc::Sender<Result<LeaseEvent, Error>>;

/// The annotation of the bookmark that ends a watch's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

async fn watch_loop(
    api: Api<WatchedLease>,
    name: String,
    since: Option<String>,
    initial_events: &AtomicBool,
    tx: &Sender,
) {
    let fields = format!("metadata.name={name}");
    let mut version = since;
    let mut backoff = Backoff::new(restart_policy());
    // The version comes from a fresh start (a LIST, or a watch's initial
    // events) and no change arrived since: a 410 now means the server
    // cannot serve even a fresh version, and starting over at once would
    // loop as fast as the server answers.
    let mut just_listed = false;
    loop {
        // No version to resume from: ask for the current state as the
        // watch's initial events, one request instead of LIST + WATCH.
        let streaming = version.is_none() && initial_events.load(Ordering::Relaxed);
        let from = match version.clone() {
            Some(v) => v,
            // Unset: a consistent read of the current state.
            None if streaming => {
                just_listed = true;
                String::new()
            }
            None => match relist(&api, &name, &fields, tx).await {
                Ok(Some(v)) => {
                    just_listed = true;
                    v
                }
                Ok(None) => return,
                Err(()) => {
                    pause(&mut backoff).await;
                    continue;
                }
            },
        };
        let mut params = WatchParams::default().fields(&fields);
        if streaming {
            // With bookmarks (the default), which mark where they end.
            params = params.initial_events();
        }
        let stream = match api.watch(&params, &from).await {
            Ok(stream) => stream,
            Err(::kube::Error::Api(status)) if status.code == 410 => {
                if just_listed {
                    pause(&mut backoff).await;
                }
                version = None;
                continue;
            }
            // The API server without the WatchList feature refuses
            // `sendInitialEvents` as an invalid option: list instead.
            Err(::kube::Error::Api(status)) if streaming && status.code == 422 => {
                debug!(lease = %name, message = %status.message, "the server refuses watches with initial events; listing instead");
                initial_events.store(false, Ordering::Relaxed);
                continue;
            }
            Err(e) => {
                if tx.send(Err(Error::from_kube(e, &name))).await.is_err() {
                    return;
                }
                pause(&mut backoff).await;
                continue;
            }
        };
        let mut stream = std::pin::pin!(stream.into_stream());
        // Until the initial events end: whether they reported the Lease.
        let mut initial = streaming.then_some(false);
        loop {
            let event = match stream.next().await {
                // The server closed the watch (its timeout): resume. Closed
                // before it said anything: do not ask again at once.
                None => {
                    if initial == Some(false) {
                        pause(&mut backoff).await;
                    }
                    break;
                }
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    if tx.send(Err(Error::from_kube(e, &name))).await.is_err() {
                        return;
                    }
                    pause(&mut backoff).await;
                    break;
                }
            };
            let out = match event {
                WatchEvent::Added(lease) | WatchEvent::Modified(lease) => {
                    version = lease.metadata.resource_version.clone().or(version);
                    LeaseEvent::Applied(lease.into())
                }
                WatchEvent::Deleted(lease) => {
                    version = lease.metadata.resource_version.clone().or(version);
                    LeaseEvent::Deleted
                }
                WatchEvent::Bookmark(bookmark) => {
                    let ends_initial = bookmark
                        .metadata
                        .annotations
                        .contains_key(INITIAL_EVENTS_END);
                    match initial {
                        // Before the initial state is complete a version
                        // is no place to resume from: it would skip it.
                        Some(_) if !ends_initial => continue,
                        // The initial events ended without the Lease: absent.
                        Some(false) => {
                            if tx.send(Ok(LeaseEvent::Deleted)).await.is_err() {
                                return;
                            }
                        }
                        Some(true) | None => {}
                    }
                    initial = None;
                    version = Some(bookmark.metadata.resource_version);
                    continue;
                }
                WatchEvent::Error(status) if status.code == 410 => {
                    // Desynchronised: start over from the current state.
                    if just_listed {
                        pause(&mut backoff).await;
                    }
                    version = None;
                    break;
                }
                WatchEvent::Error(status) => {
                    let err = Error::from_kube(::kube::Error::Api(status), &name);
                    if tx.send(Err(err)).await.is_err() {
                        return;
                    }
                    pause(&mut backoff).await;
                    break;
                }
            };
            match initial.as_mut() {
                // The state, as a LIST would have reported it.
                Some(reported) => *reported = true,
                None => {
                    backoff.reset();
                    just_listed = false;
                }
            }
            if tx.send(Ok(out)).await.is_err() {
                return;
            }
        }
    }
}

/// Lists the one Lease, reports its state, returns the list's version.
/// `Ok(None)`: the consumer is gone; `Err(())`: the list failed (reported).
async fn relist(
    api: &Api<WatchedLease>,
    name: &str,
    fields: &str,
    tx: &Sender,
) -> Result<Option<String>, ()> {
    match api.list(&ListParams::default().fields(fields)).await {
        Ok(list) => {
            let event = match list.items.into_iter().next() {
                Some(lease) => LeaseEvent::Applied(lease.into()),
                None => LeaseEvent::Deleted,
            };
            if tx.send(Ok(event)).await.is_err() {
                return Ok(None);
            }
            Ok(Some(list.metadata.resource_version.unwrap_or_default()))
        }
        Err(e) => {
            if tx.send(Err(Error::from_kube(e, name))).await.is_err() {
                return Ok(None);
            }
            Err(())
        }
    }
}

async fn pause(backoff: &mut Backoff) {
    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
    tokio::time::sleep(delay).await;
}

/// `lease` without its `managedFields`: nothing here reads them, every
/// waiter would otherwise copy and keep them with each observation, and a
/// replace that sends none leaves the API server's as they are.
fn lean(mut lease: Lease) -> Lease {
    lease.metadata.managed_fields = None;
    lease
}

/// A Lease as watches and their re-lists read it: `metadata.managedFields`
/// is skipped unparsed rather than decoded and dropped (see [`lean`]); it
/// is what most of a Lease's bytes are, and a waiter reads one event per
/// write to the Lease.
#[derive(Clone, Debug, serde::Deserialize)]
pub(crate) struct WatchedLease {
    #[serde(deserialize_with = "lean_metadata")]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<crate::LeaseSpec>,
}

impl From<WatchedLease> for Lease {
    fn from(watched: WatchedLease) -> Self {
        Self {
            metadata: watched.metadata,
            spec: watched.spec,
        }
    }
}

impl k8s_openapi::Resource for WatchedLease {
    const API_VERSION: &'static str = <Lease as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Lease as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Lease as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Lease as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Lease as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <Lease as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for WatchedLease {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Every field of `ObjectMeta` but `managedFields`, which serde skips.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanMeta {
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    creation_timestamp: Option<Time>,
    #[serde(default)]
    deletion_grace_period_seconds: Option<i64>,
    #[serde(default)]
    deletion_timestamp: Option<Time>,
    #[serde(default)]
    finalizers: Option<Vec<String>>,
    #[serde(default)]
    generate_name: Option<String>,
    #[serde(default)]
    generation: Option<i64>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    owner_references: Option<Vec<OwnerReference>>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    self_link: Option<String>,
    #[serde(default)]
    uid: Option<String>,
}

fn lean_metadata<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = <LeanMeta as serde::Deserialize>::deserialize(d)?;
    Ok(ObjectMeta {
        annotations: m.annotations,
        creation_timestamp: m.creation_timestamp,
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        deletion_timestamp: m.deletion_timestamp,
        finalizers: m.finalizers,
        generate_name: m.generate_name,
        generation: m.generation,
        labels: m.labels,
        managed_fields: None,
        name: m.name,
        namespace: m.namespace,
        owner_references: m.owner_references,
        resource_version: m.resource_version,
        self_link: m.self_link,
        uid: m.uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_lease_is_the_lease_without_its_managed_fields() {
        let json = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "annotations": {"a": "1"},
                "creationTimestamp": "2026-12-03T10:00:00Z",
                "deletionGracePeriodSeconds": 30,
                "deletionTimestamp": "2026-12-03T11:00:00Z",
                "finalizers": ["example.com/keep"],
                "generateName": "lock-",
                "generation": 4,
                "labels": {"app": "x"},
                "managedFields": [{
                    "manager": "kube",
                    "operation": "Update",
                    "apiVersion": "coordination.k8s.io/v1",
                    "time": "2026-12-03T10:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:holderIdentity": {}}}
                }],
                "name": "lock-k",
                "namespace": "ns",
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u-1"
                }],
                "resourceVersion": "17",
                "selfLink": "/apis/coordination.k8s.io/v1/namespaces/ns/leases/lock-k",
                "uid": "u-2"
            },
            "spec": {
                "holderIdentity": "pod-a",
                "leaseDurationSeconds": 30,
                "leaseTransitions": 3,
                "renewTime": "2026-12-03T10:00:01.000000Z"
            }
        });
        let full: Lease = serde_json::from_value(json.clone()).unwrap();
        let watched: WatchedLease = serde_json::from_value(json).unwrap();
        assert!(full.metadata.managed_fields.is_some());
        assert_eq!(Lease::from(watched), lean(full));
    }
}
