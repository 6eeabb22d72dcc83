//! [`Controller`]: the backends, the coordinator, the reconciler, TTL
//! cleanup, the API and — in the dev modes — the dev GitHub, the seed and
//! the fleet, wired together and served on one port.
//!
//! The rule it keeps: **everything that runs is tracked by the one
//! [`Shutdown`].** The server, the coordinator's workers, the leader's
//! recovery loop, TTL cleanup and the fleet all stop on its token, so
//! [`Shutdown::drain`] returns only once requests are answered, running
//! cancellations finished or left as resumable journals, and leadership
//! released.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use cancel_coordinator::CancellationCoordinator;
use http::{StatusCode, header};
use lease_lock::{LeaseLock, LockConfig};
use prometheus_client::registry::Registry;
use recovery::{GitHubAppDeliveries, RecoveryConfig, RecoveryManager};
use resilience::Shutdown;
use secrecy::SecretString;
use sensor::backends::{Backend, Backends, GitHubBackend};
use sensor::{GitHubCredentials, PullLookup, Sensor, SensorParts};
use state_store::{StateStore, TtlPolicy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::info;

use crate::Error;
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::dev::fleet::{Fleet, FleetRuns, KubeFleetRuns, MemoryFleetRuns};
use crate::dev::github::DevGitHub;
use crate::dev::seed::Seed;
use crate::metrics::ControllerMetrics;

/// The prefix of the leadership Lease among the controller's replicas
/// (`controller-recovery-leader`): its own, apart from the task locks.
pub const LEADER_LOCK_PREFIX: &str = "controller";

/// How often the fleet looks for new heads: a push shows its new runs
/// within about a second.
const FLEET_INTERVAL: Duration = Duration::from_secs(1);

/// The controller, built and not yet serving. See the [crate](crate)
/// documentation.
pub struct Controller {
    config: Config,
    backends: Backends,
    coordinator: CancellationCoordinator,
    recovery: RecoveryManager,
    leader: LeaseLock,
    lock_metrics: lease_lock::Metrics,
    sensor: Option<Sensor>,
    dev_github: Option<Arc<DevGitHub>>,
    api_token: Option<SecretString>,
    metrics: ControllerMetrics,
    shutdown: Shutdown,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("backends", &self.backends.choice)
            .field("webhook", &self.sensor.is_some())
            .field("write_endpoints", &self.api_token.is_some())
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Validates `config`, connects the clients its backends need
    /// (`kube::Client::try_default()`, octocrab with the GitHub
    /// credentials) and builds the controller over them.
    pub async fn connect(config: &Config, shutdown: Shutdown) -> Result<Self, Error> {
        config.validate()?;
        let (backends, credentials) = sensor::wiring::connect(&config.sensor_config()).await?;
        Self::over(config, backends, credentials.as_ref(), shutdown)
    }

    /// The controller over `backends` built elsewhere (tests point them at
    /// testkit's servers). `credentials`, when they are a GitHub App's,
    /// let recovery redeliver the App's failed webhook deliveries.
    pub fn over(
        config: &Config,
        backends: Backends,
        credentials: Option<&GitHubCredentials>,
        shutdown: Shutdown,
    ) -> Result<Self, Error> {
        config.validate()?;
        let sensor_config = config.sensor_config();
        let dev_github = backends
            .memory_github
            .as_ref()
            .map(|pulls| Arc::new(DevGitHub::new(Arc::clone(pulls))));
        // The sensor's parts give the one coordinator every part shares:
        // the webhook route hands to it, its workers run here, recovery
        // resubmits to it.
        let mut parts: SensorParts = sensor::wiring::parts_over(&sensor_config, backends.clone())?;
        if let Some(github) = &dev_github {
            parts.pulls = Arc::clone(github) as Arc<dyn PullLookup>;
        }
        let coordinator = parts.coordinator.clone().ok_or_else(|| {
            sensor::Error::Backend("the sensor's wiring built no coordinator".to_owned())
        })?;
        let sensor = if config.webhook_enabled() {
            Some(Sensor::new(&sensor_config, parts, shutdown.clone())?)
        } else {
            None
        };

        let lock_metrics = lease_lock::Metrics::default();
        let lock_config = |prefix: &str| LockConfig {
            prefix: prefix.to_owned(),
            ..LockConfig::new(config.identity.clone(), config.namespace.clone())
        };
        let task_locks = LeaseLock::with_metrics(
            backends.leases.clone(),
            lock_config(sensor::wiring::LOCK_PREFIX),
            lock_metrics.clone(),
        )?;
        let leader = LeaseLock::with_metrics(
            backends.leases.clone(),
            lock_config(LEADER_LOCK_PREFIX),
            lock_metrics.clone(),
        )?;
        let mut recovery = RecoveryManager::builder(
            backends.store.clone(),
            task_locks,
            backends.workloads.clone(),
            coordinator.clone(),
        )
        .config(RecoveryConfig {
            interval: Duration::from_secs(config.recovery_interval_seconds),
            ..RecoveryConfig::default()
        })
        .github(backends.pulls.clone(), backends.labels.clone());
        if let Some(client) = &backends.clients.kube
            && backends.choice.state == Backend::Kubernetes
        {
            let reporter = kube::runtime::events::Reporter {
                controller: "supersede-controller".to_owned(),
                instance: Some(config.identity.clone()),
            };
            recovery = recovery.events(
                kube::runtime::events::Recorder::new(client.clone(), reporter),
                config.namespace.clone(),
            );
        }
        if backends.choice.github == GitHubBackend::Api
            && let Some(GitHubCredentials::App {
                app_id,
                private_key_pem,
                ..
            }) = credentials
        {
            recovery = recovery.deliveries(Arc::new(GitHubAppDeliveries::new(
                *app_id,
                private_key_pem,
                config.github_api_url.as_deref(),
            )?));
        }
        let recovery = recovery.build()?;
        let metrics = ControllerMetrics::default();
        metrics.set_info(&backends.choice);
        Ok(Self {
            config: config.clone(),
            api_token: config.api_token()?,
            backends,
            coordinator,
            recovery,
            leader,
            lock_metrics,
            sensor,
            dev_github,
            metrics,
            shutdown,
        })
    }

    /// The backends.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// The task states.
    pub fn store(&self) -> &StateStore {
        &self.backends.store
    }

    /// Seeds the dev task (with `--dev` or `--dev-seed`), starts the
    /// coordinator's workers, the recovery loop (it competes for
    /// leadership), TTL cleanup and the fleet (with `--dev` or
    /// `--dev-fleet`), serves on `listener`, and marks the controller
    /// ready.
    pub async fn spawn(self, listener: TcpListener) -> Result<JoinHandle<()>, Error> {
        let shutdown = self.shutdown.clone();
        let token = shutdown.token();
        if self.config.seed_enabled()
            && let Some(seed) = self.seed()
        {
            seed.plant(&self.backends.store, self.dev_github.as_deref())
                .await?;
        }

        if self.sensor.is_none() {
            // The sensor adds the same check when it is built.
            sensor::wiring::check_state_readiness(&self.backends.store, &shutdown);
        }
        // Coordinator workers: every replica runs them. Running
        // cancellations get four fifths of the shutdown timeout, so the rest
        // (the leadership release, the server) fits in it too.
        sensor::wiring::run_workers(
            &self.coordinator,
            &shutdown,
            self.config.shutdown_timeout().mul_f64(0.8),
        );

        // Recovery on the elected leader; releases leadership on shutdown.
        let lead = self.recovery.spawn(self.leader.clone(), token.clone());
        shutdown.spawn(async move {
            let _ = lead.await;
            info!("recovery stopped; leadership released");
        });

        let ttl = state_store::spawn_ttl_cleanup(
            self.backends.store.clone(),
            TtlPolicy {
                interval: Duration::from_secs(self.config.ttl_cleanup_interval_seconds),
                ttl: Duration::from_secs(self.config.state_ttl_seconds),
            },
            token.clone(),
        );
        shutdown.spawn(async move {
            let _ = ttl.await;
        });

        if let Some(fleet) = self.fleet()? {
            let fleet = fleet.spawn(token.clone());
            shutdown.spawn(async move {
                let _ = fleet.await;
                info!("dev fleet stopped");
            });
        }

        let handle = shutdown.serve(listener, self.router()?);
        shutdown.health().set_ready(true);
        Ok(handle)
    }

    /// Every route: the API, `/metrics`, `/healthz`, `/readyz`, and the
    /// webhook and dev GitHub routes when they are on.
    pub fn router(&self) -> Result<Router, Error> {
        let registry = Arc::new(self.registry());
        let mut router = api::router(ApiState::new(
            self.backends.store.clone(),
            self.backends.workloads.clone(),
            self.backends.labels.clone(),
            self.recovery.clone(),
            self.api_token.clone(),
            self.metrics.clone(),
        ))
        .merge(
            Router::new()
                .route("/metrics", get(serve_metrics))
                .with_state(registry),
        )
        .merge(self.shutdown.health().router());
        if let Some(sensor) = &self.sensor {
            router = router.merge(sensor.webhook_router()?);
        }
        if let Some(github) = &self.dev_github {
            router = router.merge(github.router());
        }
        Ok(router)
    }

    fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        self.metrics
            .register(&mut registry, self.config.fleet_enabled());
        self.backends.store.register(&mut registry);
        self.coordinator.register(&mut registry);
        self.recovery.metrics().register(&mut registry);
        self.backends.label_metrics.register(&mut registry);
        self.lock_metrics.register(&mut registry);
        if let Some(sensor) = &self.sensor {
            sensor.metrics().register(&mut registry);
        }
        self.shutdown.register(&mut registry);
        self.shutdown.health().register(&mut registry);
        registry
    }

    fn seed(&self) -> Option<Seed> {
        let pr = format!(
            "{}#{}",
            self.config.dev_repository, self.config.dev_pull_request
        )
        .parse()
        .ok()?;
        Some(Seed {
            task_id: self.config.seeded_task()?,
            pr,
            branch: self.config.dev_branch.clone(),
        })
    }

    fn fleet(&self) -> Result<Option<Fleet>, Error> {
        if !self.config.fleet_enabled() {
            return Ok(None);
        }
        let run_for = Duration::from_secs(self.config.dev_run_seconds);
        let stop_after = Duration::from_secs(self.config.dev_stop_seconds);
        let runs: Arc<dyn FleetRuns> =
            match (&self.backends.memory_runs, &self.backends.clients.kube) {
                (Some(memory), _) => Arc::new(MemoryFleetRuns::new(memory.clone(), stop_after)),
                (None, Some(client)) => Arc::new(KubeFleetRuns::new(
                    client.clone(),
                    &self.config.namespace,
                    run_for,
                    stop_after,
                )),
                (None, None) => {
                    return Err(Error::Sensor(sensor::Error::Backend(
                        "the fleet's runs live on Kubernetes but there is no client".to_owned(),
                    )));
                }
            };
        Ok(Some(Fleet::new(
            self.backends.store.clone(),
            self.backends.workloads.clone(),
            runs,
            self.backends.memory_github.clone(),
            self.config.dev_roles.clone(),
            run_for,
            FLEET_INTERVAL,
            self.metrics.clone(),
        )))
    }
}

async fn serve_metrics(State(registry): State<Arc<Registry>>) -> axum::response::Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
