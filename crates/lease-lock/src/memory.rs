//! [`MemoryLeases`]: an in-process [`LeaseBackend`] with the API server's
//! semantics, used as the embedded default and as a faithful test double.
//!
//! Rule kept here: it behaves like the API server wherever the lock relies
//! on it — one global resourceVersion counter, uids, 409 on a stale
//! resourceVersion or uid, 409 AlreadyExists, 404, delete preconditions,
//! label selectors, MicroTime precision (microseconds), creationTimestamp
//! precision (seconds) and watch — so the
//! conformance suite passes on it exactly as on [`KubeLeases`](crate::KubeLeases).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use tokio::sync::broadcast;

use crate::error::Error;
use crate::name::is_dns1123_subdomain;
use crate::{Lease, LeaseBackend, LeaseEvent};

/// How many changes a slow watcher may fall behind before it resynchronises
/// from the current state (it then sees the latest state, as after a 410).
const WATCH_BUFFER: usize = 1024;

/// An in-memory Lease store. Cheap to clone: clones share the same store, so
/// several [`LeaseLock`](crate::LeaseLock)s (standing for several processes)
/// can contend on one `MemoryLeases`.
///
/// ```
/// use lease_lock::{LeaseBackend, MemoryLeases};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let leases = MemoryLeases::new();
/// assert!(leases.get("default", "missing").await.unwrap().is_none());
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryLeases {
    inner: Arc<Inner>,
}

struct Inner {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
}

#[derive(Default)]
struct Store {
    leases: BTreeMap<(String, String), Lease>,
    last_version: u64,
    last_uid: u64,
}

#[derive(Clone)]
struct Change {
    namespace: String,
    name: String,
    event: LeaseEvent,
}

impl Default for MemoryLeases {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLeases")
            .field("leases", &self.store().leases.len())
            .finish()
    }
}

impl MemoryLeases {
    /// An empty store.
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        Self {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::default()),
                changes,
            }),
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the map half-written
        // (every mutation is a single insert/remove), so poisoning is ignored.
        self.inner
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, namespace: &str, name: &str, event: LeaseEvent) {
        // No receiver is not an error: nobody is watching.
        let _ = self.inner.changes.send(Change {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            event,
        });
    }
}

#[async_trait]
impl LeaseBackend for MemoryLeases {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Lease>, Error> {
        Ok(self
            .store()
            .leases
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned())
    }

    async fn create(&self, namespace: &str, lease: &Lease) -> Result<Lease, Error> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        if !is_dns1123_subdomain(&name) {
            return Err(invalid(&name, "metadata.name must be a DNS-1123 subdomain"));
        }
        let stored = {
            let mut store = self.store();
            let id = (namespace.to_owned(), name.clone());
            if store.leases.contains_key(&id) {
                return Err(Error::AlreadyExists { name });
            }
            store.last_version += 1;
            store.last_uid += 1;
            let mut stored = normalized(lease);
            stored.metadata.namespace = Some(namespace.to_owned());
            stored.metadata.uid = Some(format!("memory-{:016x}", store.last_uid));
            stored.metadata.resource_version = Some(store.last_version.to_string());
            // Whole seconds, like the API server's metav1.Time.
            stored.metadata.creation_timestamp = Some(Time(now_seconds()));
            store.leases.insert(id, stored.clone());
            stored
        };
        self.publish(namespace, &name, LeaseEvent::Applied(stored.clone()));
        Ok(stored)
    }

    async fn replace(&self, namespace: &str, lease: &Lease) -> Result<Lease, Error> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let Some(expected) = lease.metadata.resource_version.clone() else {
            return Err(Error::InvalidLease {
                name,
                reason: "a replace needs metadata.resourceVersion (no unconditional writes)".into(),
            });
        };
        let stored = {
            let mut guard = self.store();
            let store = &mut *guard;
            let current = store
                .leases
                .get_mut(&(namespace.to_owned(), name.clone()))
                .ok_or_else(|| Error::NotFound { name: name.clone() })?;
            if current.metadata.resource_version.as_deref() != Some(expected.as_str()) {
                return Err(Error::Conflict { name });
            }
            if lease.metadata.uid.is_some() && lease.metadata.uid != current.metadata.uid {
                return Err(Error::Conflict { name });
            }
            let mut next = normalized(lease);
            // Server-owned fields are kept, as the API server does on update.
            next.metadata.namespace = current.metadata.namespace.clone();
            next.metadata.uid = current.metadata.uid.clone();
            next.metadata.creation_timestamp = current.metadata.creation_timestamp.clone();
            next.metadata.resource_version = current.metadata.resource_version.clone();
            if next == *current {
                // The API server writes nothing for an update that changes
                // nothing: same resourceVersion, no watch event.
                return Ok(next);
            }
            store.last_version += 1;
            next.metadata.resource_version = Some(store.last_version.to_string());
            *current = next.clone();
            next
        };
        self.publish(namespace, &name, LeaseEvent::Applied(stored.clone()));
        Ok(stored)
    }

    async fn delete(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        resource_version: &str,
    ) -> Result<(), Error> {
        {
            let mut store = self.store();
            let id = (namespace.to_owned(), name.to_owned());
            let current = store.leases.get(&id).ok_or_else(|| Error::NotFound {
                name: name.to_owned(),
            })?;
            if current.metadata.uid.as_deref() != Some(uid)
                || current.metadata.resource_version.as_deref() != Some(resource_version)
            {
                return Err(Error::Conflict {
                    name: name.to_owned(),
                });
            }
            store.leases.remove(&id);
            store.last_version += 1;
        }
        self.publish(namespace, name, LeaseEvent::Deleted);
        Ok(())
    }

    async fn list(&self, namespace: &str, label_selector: &str) -> Result<Vec<Lease>, Error> {
        let selector = Selector::parse(label_selector)?;
        Ok(self
            .store()
            .leases
            .range((namespace.to_owned(), String::new())..)
            .take_while(|((ns, _), _)| ns == namespace)
            .filter(|(_, lease)| selector.matches(lease))
            .map(|(_, lease)| lease.clone())
            .collect())
    }

    async fn list_page(
        &self,
        namespace: &str,
        label_selector: &str,
        limit: u32,
        continue_token: Option<String>,
    ) -> Result<crate::LeasePage, Error> {
        let selector = Selector::parse(label_selector)?;
        let limit = usize::try_from(limit.max(1)).unwrap_or(usize::MAX);
        // The token is the last name of the previous page.
        let after = continue_token.unwrap_or_default();
        let store = self.store();
        let mut matching = store
            .leases
            .range((namespace.to_owned(), after.clone())..)
            .take_while(|((ns, _), _)| ns == namespace)
            .filter(|((_, name), _)| *name > after)
            .filter(|(_, lease)| selector.matches(lease));
        let leases: Vec<Lease> = matching
            .by_ref()
            .take(limit)
            .map(|(_, lease)| lease.clone())
            .collect();
        let continue_token = matching
            .next()
            .and_then(|_| leases.last()?.metadata.name.clone());
        Ok(crate::LeasePage {
            leases,
            continue_token,
        })
    }

    fn watch(
        &self,
        namespace: &str,
        name: &str,
        since: Option<String>,
    ) -> BoxStream<'static, Result<LeaseEvent, Error>> {
        // Subscribe before reading the current state, so no change can fall
        // between the two (at worst a change is seen twice, which
        // level-triggered consumers tolerate).
        let receiver = self.inner.changes.subscribe();
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        let this = self.clone();
        let initial = this.current_event(&namespace, &name, since.as_deref());
        let state = (receiver, this, namespace, name);
        let changes =
            futures::stream::unfold(state, |(mut receiver, this, namespace, name)| async move {
                loop {
                    let event = match receiver.recv().await {
                        Ok(change) if change.namespace == namespace && change.name == name => {
                            change.event
                        }
                        Ok(_) => continue,
                        // Fell behind: report the current state, as a restarted watch would.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            match this.current_event(&namespace, &name, None) {
                                Some(event) => event,
                                None => continue,
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    };
                    return Some((Ok(event), (receiver, this, namespace, name)));
                }
            });
        futures::stream::iter(initial.map(Ok))
            .chain(changes)
            .boxed()
    }
}

impl MemoryLeases {
    /// The event describing the current state, unless it is still `since`.
    fn current_event(
        &self,
        namespace: &str,
        name: &str,
        since: Option<&str>,
    ) -> Option<LeaseEvent> {
        let store = self.store();
        match store.leases.get(&(namespace.to_owned(), name.to_owned())) {
            Some(lease)
                if since.is_some() && lease.metadata.resource_version.as_deref() == since =>
            {
                None
            }
            Some(lease) => Some(LeaseEvent::Applied(lease.clone())),
            None => Some(LeaseEvent::Deleted),
        }
    }
}

/// A label selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated (all must hold).
struct Selector(Vec<Requirement>);

enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

impl Selector {
    fn parse(s: &str) -> Result<Self, Error> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else if part.contains([' ', '(', ')']) {
                return Err(Error::Api {
                    status: 400,
                    reason: "BadRequest".into(),
                    message: format!("unsupported label selector {s:?}"),
                    retry_after: None,
                });
            } else {
                Requirement::Exists(part.into())
            };
            out.push(req);
        }
        Ok(Self(out))
    }

    fn matches(&self, lease: &Lease) -> bool {
        let labels = lease.metadata.labels.as_ref();
        let get = |k: &str| labels.and_then(|l| l.get(k));
        self.0.iter().all(|req| match req {
            Requirement::Equals(k, v) => get(k) == Some(v),
            Requirement::NotEquals(k, v) => get(k) != Some(v),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

fn invalid(name: &str, message: &str) -> Error {
    Error::Api {
        status: 422,
        reason: "Invalid".into(),
        message: format!("Lease {name:?} is invalid: {message}"),
        retry_after: None,
    }
}

/// The API server keeps MicroTime to the microsecond; so do we, so that a
/// record read back compares equal to what any other client reads.
fn normalized(lease: &Lease) -> Lease {
    let mut lease = lease.clone();
    if let Some(spec) = lease.spec.as_mut() {
        for t in [&mut spec.acquire_time, &mut spec.renew_time]
            .into_iter()
            .flatten()
        {
            *t = MicroTime(truncate_micros(t.0));
        }
    }
    lease
}

fn truncate_micros(t: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_microsecond(t.as_microsecond()).unwrap_or(t)
}

fn now_seconds() -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn lease(name: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(Default::default()),
        }
    }

    #[tokio::test]
    async fn versions_increase_globally_and_uids_are_kept_on_replace() {
        let m = MemoryLeases::new();
        let a = m.create("ns", &lease("a")).await.unwrap();
        let b = m.create("ns", &lease("b")).await.unwrap();
        let rv = |l: &Lease| {
            l.metadata
                .resource_version
                .clone()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        assert!(rv(&b) > rv(&a));
        let mut changed = a.clone();
        changed.spec.as_mut().unwrap().lease_transitions = Some(1);
        let a2 = m.replace("ns", &changed).await.unwrap();
        assert!(rv(&a2) > rv(&b));
        assert_eq!(a2.metadata.uid, a.metadata.uid);
    }

    #[tokio::test]
    async fn a_replace_that_changes_nothing_writes_nothing() {
        let m = MemoryLeases::new();
        let a = m.create("ns", &lease("a")).await.unwrap();
        let mut events = m.watch("ns", "a", a.metadata.resource_version.clone());
        let same = m.replace("ns", &a).await.unwrap();
        assert_eq!(same.metadata.resource_version, a.metadata.resource_version);
        let next = tokio::time::timeout(std::time::Duration::from_millis(50), events.next()).await;
        assert!(next.is_err(), "no watch event for a no-op write");
    }

    #[test]
    fn selectors_support_equality_inequality_and_existence() {
        let mut l = lease("x");
        l.metadata.labels = Some([("a".to_owned(), "1".to_owned())].into());
        let sel = |s: &str| Selector::parse(s).unwrap().matches(&l);
        assert!(sel("a=1") && sel("a==1") && sel("a") && sel("!b") && sel("a!=2") && sel(""));
        assert!(!sel("a=2") && !sel("b") && !sel("!a") && !sel("a=1,b"));
        assert!(Selector::parse("a in (1)").is_err());
    }
}
