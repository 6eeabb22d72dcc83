//! Shared by the integration tests: the two backends under test, and a
//! wrapper that counts calls and can freeze a process's requests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::stream::BoxStream;
use lease_lock::{Error, KubeLeases, Lease, LeaseBackend, LeaseEvent, MemoryLeases};
use testkit::kube::FakeKube;
use tokio::sync::watch;

/// One backend under test, and what keeps it alive.
pub struct Env {
    pub backend: Arc<dyn LeaseBackend>,
    /// The fake API server, for the Kubernetes backend.
    pub fake: Option<FakeKube>,
    pub namespace: String,
}

impl Env {
    pub fn memory() -> Self {
        Self {
            backend: Arc::new(MemoryLeases::new()),
            fake: None,
            namespace: "conformance".into(),
        }
    }

    pub async fn kube() -> Self {
        let fake = FakeKube::start().await.expect("fake kube starts");
        Self {
            backend: Arc::new(KubeLeases::new(fake.client())),
            fake: Some(fake),
            namespace: "conformance".into(),
        }
    }

    /// A view of the same backend as seen by one process.
    pub fn process(&self) -> Instrumented {
        Instrumented::new(Arc::clone(&self.backend))
    }
}

/// Counts calls per verb and can freeze every call (a paused process, or
/// one cut off from the API server) until thawed.
#[derive(Clone)]
pub struct Instrumented {
    inner: Arc<dyn LeaseBackend>,
    counts: Arc<[AtomicU64; 6]>,
    frozen: watch::Sender<bool>,
}

#[derive(Clone, Copy, Debug)]
pub enum Verb {
    Get = 0,
    Create = 1,
    Replace = 2,
    Delete = 3,
    List = 4,
    Watch = 5,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn LeaseBackend>) -> Self {
        Self {
            inner,
            counts: Arc::new(Default::default()),
            frozen: watch::channel(false).0,
        }
    }

    pub fn count(&self, verb: Verb) -> u64 {
        self.counts[verb as usize].load(Ordering::SeqCst)
    }

    /// Calls of every verb but watch.
    pub fn requests(&self) -> u64 {
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

    pub fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }

    async fn enter(&self, verb: Verb) {
        self.counts[verb as usize].fetch_add(1, Ordering::SeqCst);
        let mut frozen = self.frozen.subscribe();
        let _ = frozen.wait_for(|f| !*f).await;
    }
}

#[async_trait]
impl LeaseBackend for Instrumented {
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
