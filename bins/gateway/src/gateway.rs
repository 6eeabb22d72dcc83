//! [`Gateway`]: the service assembled — a [`Deduplicator`] over a
//! RemediationRequest store and a Lease lock, its metrics, the HTTP router —
//! and [`Gateway::serve`], which runs it until shutdown.
//!
//! The rule it keeps: `--dev` and a cluster run the same code over
//! different backends ([`MemoryRequests`] + [`MemoryLeases`], or
//! [`KubeRequests`] + [`KubeLeases`]), so what `--dev` shows is what a
//! cluster runs, minus durability.

use std::sync::Arc;

use axum::Router;
use lease_lock::{CreateOnce, KubeLeases, LeaseBackend, LeaseLock, LockConfig, MemoryLeases};
use prometheus_client::registry::Registry;
use resilience::Shutdown;
use tokio::net::TcpListener;

use crate::Error;
use crate::api::{self, ApiState};
use crate::config::Settings;
use crate::dedupe::{Deduplicator, Recorded};
use crate::metrics::Metrics;
use crate::requests::{KubeRequests, MemoryRequests, RemediationRequests};
use crate::signal::Signal;

/// Lease names of the creation locks: `gateway-<fingerprint hash>`.
pub const LOCK_PREFIX: &str = "gateway";

/// One gateway replica. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    state: Arc<ApiState>,
    settings: Settings,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A replica over `requests` and `leases`.
    pub fn new(
        requests: Arc<dyn RemediationRequests>,
        leases: impl LeaseBackend,
        settings: Settings,
    ) -> Result<Self, Error> {
        let metrics = Metrics::default();
        let lock = LeaseLock::with_metrics(leases, lock_config(&settings), metrics.lock.clone())
            .map_err(|e| Error::Config(format!("lock: {e}")))?;
        let once = CreateOnce::new(lock).with_timeout(settings.lock_timeout);
        let dedupe = Deduplicator::new(once, requests, metrics.clone());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        Ok(Self {
            state: Arc::new(ApiState {
                dedupe,
                metrics,
                registry,
            }),
            settings,
        })
    }

    /// `--dev`: a replica on fresh in-memory backends (returned too, so an
    /// embedding program can look at what was created or add replicas).
    pub fn memory(settings: Settings) -> Result<(Self, MemoryRequests, MemoryLeases), Error> {
        let requests = MemoryRequests::new();
        let leases = MemoryLeases::new();
        let gateway = Self::new(Arc::new(requests.clone()), leases.clone(), settings)?;
        Ok((gateway, requests, leases))
    }

    /// A replica on a cluster through `client`.
    pub fn cluster(client: kube::Client, settings: Settings) -> Result<Self, Error> {
        let requests = KubeRequests::new(client.clone(), &settings.namespace)
            .with_call_timeout(settings.api_timeout);
        Self::new(Arc::new(requests), KubeLeases::new(client), settings)
    }

    /// Records one delivery of `signal` (what the HTTP API does per alert).
    pub async fn record(&self, signal: &Signal) -> Result<Recorded, Error> {
        self.state.dedupe.record(signal).await
    }

    /// Waits until every delivery this replica answered is folded into its
    /// request's stored `occurrenceCount` (see [`Deduplicator::settled`]).
    pub async fn settled(&self) {
        self.state.dedupe.settled().await;
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// The metrics as `/metrics` serves them.
    pub fn encode_metrics(&self) -> String {
        Metrics::encode(&self.state.registry)
    }

    /// Every route: the API, `/metrics`, and `shutdown`'s probes.
    pub fn router(&self, shutdown: &Shutdown) -> Router {
        api::router(Arc::clone(&self.state), self.settings.max_body_bytes)
            .merge(shutdown.health().router())
    }

    /// Serves on `listener` until `shutdown` is triggered, then lets
    /// in-flight requests finish and folds of `occurrenceCount` land (up to
    /// the shutdown timeout): a delivery being counted is answered, not cut
    /// off after its count landed.
    pub async fn serve(&self, listener: TcpListener, shutdown: Shutdown) -> Result<(), Error> {
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let router = self.router(&shutdown);
        shutdown.health().set_ready(true);
        tracing::info!(%addr, namespace = %self.settings.namespace, "gateway listening");
        let stopping = shutdown.clone();
        let server = axum::serve(resilience::shutdown::without_nagle(listener), router)
            .with_graceful_shutdown(async move { stopping.triggered().await });
        let timeout = self.settings.shutdown_timeout;
        let dedupe = self.state.dedupe.clone();
        let server = async move {
            server
                .await
                .map_err(|source| Error::Bind { addr, source })?;
            dedupe.settled().await;
            Ok(())
        };
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => result,
            () = async {
                shutdown.triggered().await;
                tokio::time::sleep(timeout).await;
            } => {
                tracing::warn!(timeout_seconds = timeout.as_secs_f64(), "requests or count folds still in flight at the shutdown timeout; stopping");
                Ok(())
            }
        }
    }
}

/// The creation lock's configuration: renewals every third of the lease,
/// a renew deadline at two thirds.
fn lock_config(settings: &Settings) -> LockConfig {
    let lease = settings.lease_duration;
    LockConfig {
        prefix: LOCK_PREFIX.to_owned(),
        lease_duration: lease,
        renew_interval: lease / 3,
        renew_deadline: lease * 2 / 3,
        acquire_timeout: settings.lock_timeout,
        ..LockConfig::new(settings.identity.clone(), settings.namespace.clone())
    }
}
