//! Unit tests of the lock algorithm: on [`MemoryLeases`] with paused time
//! (`algorithm`), and every error path on a mockall mock of the backend
//! (`error_paths`).

mod algorithm;
mod error_paths;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use tokio::sync::watch;

use crate::{Error, Lease, LeaseBackend, LeaseEvent, LeaseSpec, LockConfig, MemoryLeases};

pub(crate) const NS: &str = "test";

/// The default configuration with a recognisable identity.
pub(crate) fn config(identity: &str) -> LockConfig {
    LockConfig::new(identity, NS)
}

/// A Lease named `name` held by `holder`, renewed `renewed_ago` ago.
pub(crate) fn held_lease(
    name: &str,
    holder: Option<&str>,
    transitions: i32,
    renewed_ago: Duration,
) -> Lease {
    let renewed = jiff::Timestamp::now() - jiff::SignedDuration::try_from(renewed_ago).unwrap();
    Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            // Labelled as the lock whose prefix is the name's first word.
            labels: Some(BTreeMap::from([
                (
                    crate::MANAGED_BY_LABEL.to_owned(),
                    crate::MANAGED_BY_VALUE.to_owned(),
                ),
                (
                    crate::LOCK_PREFIX_LABEL.to_owned(),
                    name.split('-').next().unwrap_or_default().to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(30),
            acquire_time: Some(MicroTime(renewed)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }),
    }
}

/// The stored version of `lease` as a server would return it.
pub(crate) fn stored(mut lease: Lease, uid: &str, version: u64) -> Lease {
    lease.metadata.uid = Some(uid.into());
    lease.metadata.resource_version = Some(version.to_string());
    lease.metadata.namespace = Some(NS.into());
    lease
}

pub(crate) fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref()?.holder_identity.clone()
}

pub(crate) fn unavailable() -> Error {
    Error::Api {
        status: 503,
        reason: "ServiceUnavailable".into(),
        message: "injected".into(),
        retry_after: None,
    }
}

pub(crate) fn forbidden() -> Error {
    Error::Api {
        status: 403,
        reason: "Forbidden".into(),
        message: "injected".into(),
        retry_after: None,
    }
}

/// Wraps a backend: counts calls per verb, and can freeze every call (a
/// paused or partitioned process) until thawed.
#[derive(Clone)]
pub(crate) struct Instrumented<B> {
    inner: B,
    counts: Arc<[AtomicU64; 6]>,
    frozen: watch::Sender<bool>,
}

#[derive(Clone, Copy)]
pub(crate) enum Verb {
    Get = 0,
    Create = 1,
    Replace = 2,
    Delete = 3,
    List = 4,
    Watch = 5,
}

impl<B: LeaseBackend + Clone> Instrumented<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self {
            inner,
            counts: Arc::new(Default::default()),
            frozen: watch::channel(false).0,
        }
    }

    pub(crate) fn count(&self, verb: Verb) -> u64 {
        self.counts[verb as usize].load(Ordering::SeqCst)
    }

    /// Calls of every verb but watch.
    pub(crate) fn requests(&self) -> u64 {
        [
            Verb::Get,
            Verb::Create,
            Verb::Replace,
            Verb::Delete,
            Verb::List,
        ]
        .iter()
        .map(|v| self.count(*v))
        .sum()
    }

    pub(crate) fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }

    async fn enter(&self, verb: Verb) {
        self.counts[verb as usize].fetch_add(1, Ordering::SeqCst);
        let mut frozen = self.frozen.subscribe();
        // Errors only if the sender is gone, which it is not while `self` lives.
        let _ = frozen.wait_for(|f| !*f).await;
    }
}

impl Instrumented<MemoryLeases> {
    pub(crate) fn memory() -> Self {
        Self::new(MemoryLeases::new())
    }
}

#[async_trait]
impl<B: LeaseBackend + Clone> LeaseBackend for Instrumented<B> {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Lease>, Error> {
        self.enter(Verb::Get).await;
        self.inner.get(namespace, name).await
    }
    async fn create(&self, namespace: &str, lease: &Lease) -> Result<Lease, Error> {
        self.enter(Verb::Create).await;
        self.inner.create(namespace, lease).await
    }
    async fn replace(&self, namespace: &str, lease: &Lease) -> Result<Lease, Error> {
        self.enter(Verb::Replace).await;
        self.inner.replace(namespace, lease).await
    }
    async fn delete(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        version: &str,
    ) -> Result<(), Error> {
        self.enter(Verb::Delete).await;
        self.inner.delete(namespace, name, uid, version).await
    }
    async fn list(&self, namespace: &str, selector: &str) -> Result<Vec<Lease>, Error> {
        self.enter(Verb::List).await;
        self.inner.list(namespace, selector).await
    }
    fn watch(
        &self,
        namespace: &str,
        name: &str,
        since: Option<String>,
    ) -> BoxStream<'static, Result<LeaseEvent, Error>> {
        self.counts[Verb::Watch as usize].fetch_add(1, Ordering::SeqCst);
        self.inner.watch(namespace, name, since)
    }
}

/// Lets spawned tasks (renewal, background release) run.
pub(crate) async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Wraps a backend with the faults a test switches on.
#[derive(Clone)]
pub(crate) struct Faulty<B> {
    pub(crate) inner: B,
    /// GETs of these Leases never answer (a request stuck on a dead connection).
    pub(crate) stalled_gets: Vec<String>,
    /// Replaces that write the waiting-for annotation never answer.
    pub(crate) stall_annotation_writes: bool,
    /// The first replace panics (a bug in a backend or a layer).
    pub(crate) panic_on_first_replace: bool,
    /// Watches report one event and end, and (like `futures::stream::unfold`)
    /// panic if polled after they ended.
    pub(crate) one_event_watches: bool,
    /// Watches never report anything and never end (a stream stuck on a
    /// dead connection).
    pub(crate) silent_watches: bool,
    /// The writing process's wall clock runs this far behind: the
    /// `acquireTime` and `renewTime` it writes are that much in the past.
    pub(crate) clock_behind: Duration,
    /// Fired right after a create or replace landed, before its answer is
    /// returned: the caller's cancellation (or timeout) arrives together
    /// with the answer.
    pub(crate) cancel_after_write: Option<tokio_util::sync::CancellationToken>,
    replaced: Arc<AtomicU64>,
}

impl<B> Faulty<B> {
    /// `lease` with its times as a clock `clock_behind` behind ours writes them.
    fn skewed(&self, lease: &Lease) -> Lease {
        let mut lease = lease.clone();
        let behind = jiff::SignedDuration::try_from(self.clock_behind).unwrap();
        if let Some(spec) = lease.spec.as_mut() {
            for time in [&mut spec.acquire_time, &mut spec.renew_time] {
                if let Some(t) = time.as_mut() {
                    t.0 -= behind;
                }
            }
        }
        lease
    }

    fn written(&self) {
        if let Some(cancel) = &self.cancel_after_write {
            cancel.cancel();
        }
    }

    pub(crate) fn new(inner: B) -> Self {
        Self {
            inner,
            stalled_gets: Vec::new(),
            stall_annotation_writes: false,
            panic_on_first_replace: false,
            one_event_watches: false,
            silent_watches: false,
            clock_behind: Duration::ZERO,
            cancel_after_write: None,
            replaced: Arc::default(),
        }
    }
}

#[async_trait]
impl<B: LeaseBackend + Clone> LeaseBackend for Faulty<B> {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Lease>, Error> {
        if self.stalled_gets.iter().any(|n| n == name) {
            std::future::pending::<()>().await;
        }
        self.inner.get(namespace, name).await
    }
    async fn create(&self, namespace: &str, lease: &Lease) -> Result<Lease, Error> {
        let created = self.inner.create(namespace, &self.skewed(lease)).await;
        self.written();
        created
    }
    async fn replace(&self, namespace: &str, lease: &Lease) -> Result<Lease, Error> {
        let lease = &self.skewed(lease);
        let first = self.replaced.fetch_add(1, Ordering::SeqCst) == 0;
        assert!(
            !(first && self.panic_on_first_replace),
            "injected: the first replace panics"
        );
        let annotated = lease
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(crate::WAITING_FOR_ANNOTATION));
        if self.stall_annotation_writes && annotated {
            std::future::pending::<()>().await;
        }
        let replaced = self.inner.replace(namespace, lease).await;
        self.written();
        replaced
    }
    async fn delete(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        version: &str,
    ) -> Result<(), Error> {
        self.inner.delete(namespace, name, uid, version).await
    }
    async fn list(&self, namespace: &str, selector: &str) -> Result<Vec<Lease>, Error> {
        self.inner.list(namespace, selector).await
    }
    fn watch(
        &self,
        namespace: &str,
        name: &str,
        since: Option<String>,
    ) -> BoxStream<'static, Result<LeaseEvent, Error>> {
        use futures::StreamExt;
        if self.silent_watches {
            return futures::stream::pending().boxed();
        }
        let events = self.inner.watch(namespace, name, since);
        if !self.one_event_watches {
            return events;
        }
        futures::stream::unfold(events.take(1), |mut s| async move {
            s.next().await.map(|e| (e, s))
        })
        .boxed()
    }
}
