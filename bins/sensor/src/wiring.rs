//! The sensor's parts, built from its configuration: the backends it
//! chooses kind by kind ([`crate::backends`]: in-process memory with
//! `--dev`, a cluster and GitHub, or a mix), the coordinator over them, and
//! the GitHub client.
//!
//! The rule it keeps: every choice is the same production code over
//! different backends — the same store, lock, saga and coordinator types —
//! so what `--dev` shows is what runs in a cluster, minus durability
//! (memory keeps nothing past the process and reaches nothing outside it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cancel_coordinator::{
    CancellationCoordinator, CodeRunConfig, CoordinatorConfig, StateAwareCancellation, Workloads,
};
use label_cas::{LabelBackend, PullRequests};
use lease_lock::{LeaseBackend, LeaseLock, LockConfig};
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use octocrab::service::middleware::retry::RetryConfig;
use resilience::{BreakerPolicy, Shutdown};
use secrecy::ExposeSecret;
use state_store::{StateStore, StoreConfig};

use crate::Error;
use crate::app::SensorParts;
use crate::backends::{Backend, BackendChoice, BackendSettings, Backends, Clients, GitHubBackend};
use crate::config::{Config, GitHubCredentials};
use crate::pulls::{GitHubPullLookup, MemoryPullLookup, PullLookup};

/// The lease prefix of the task locks (`cancel-task-<id>`), shared with
/// every other process that cancels (the saga's default).
pub const LOCK_PREFIX: &str = "cancel";

/// The state store's tuning for the sensor: each call bounded by the
/// state write timeout (a call that takes longer cannot make the answer in
/// time anyway), ten attempts instead of twenty so that a write the answer
/// gave up on does not hold its slot for minutes.
pub fn store_config(config: &Config) -> StoreConfig {
    StoreConfig {
        call_timeout: config.state_write_timeout(),
        max_attempts: 10,
        ..StoreConfig::default()
    }
}

/// The coordinator over the given backends: a lease lock per task,
/// `store`, the runs and GitHub's pull requests and labels.
pub fn coordinator(
    config: &Config,
    leases: impl LeaseBackend,
    store: StateStore,
    workloads: Arc<dyn Workloads>,
    pulls: Arc<dyn PullRequests>,
    labels: Arc<dyn LabelBackend>,
) -> Result<CancellationCoordinator, Error> {
    coordinator_reporting(
        config,
        leases,
        store,
        workloads,
        pulls,
        labels,
        label_cas::Metrics::default(),
    )
}

/// [`coordinator`] whose saga reports its label transitions into
/// `label_metrics` (give it [`Backends::label_metrics`], so a process
/// registers one `label_cas_*` set for its label backend and its saga).
pub fn coordinator_reporting(
    config: &Config,
    leases: impl LeaseBackend,
    store: StateStore,
    workloads: Arc<dyn Workloads>,
    pulls: Arc<dyn PullRequests>,
    labels: Arc<dyn LabelBackend>,
    label_metrics: label_cas::Metrics,
) -> Result<CancellationCoordinator, Error> {
    let lock = LeaseLock::new(
        leases,
        LockConfig {
            prefix: LOCK_PREFIX.to_owned(),
            ..LockConfig::new(config.identity.clone(), config.namespace.clone())
        },
    )?;
    // Breakers on both dependencies: without them an outage is retried
    // call by call instead of failing fast, and the breaker alert and
    // dashboard panel have no series to watch.
    let saga = StateAwareCancellation::builder(lock, store, workloads, pulls, labels)
        .label_metrics(label_metrics)
        .breakers(BreakerPolicy::default())
        .build()?;
    let coordinator = CancellationCoordinator::new(
        saga,
        CoordinatorConfig {
            workers: config.coordinator_workers,
            ..CoordinatorConfig::default()
        },
    )?;
    Ok(coordinator)
}

/// What [`Backends::build`] needs from the sensor's configuration: its
/// namespace, the run resource (read from `--coderun-config-file` only when
/// runs live on Kubernetes) and [`store_config`].
pub fn backend_settings(config: &Config) -> Result<BackendSettings, Error> {
    let coderun = if config.backends().runs == Backend::Kubernetes {
        config.coderun_config()?
    } else {
        CodeRunConfig::default()
    };
    Ok(BackendSettings {
        namespace: config.namespace.clone(),
        coderun,
        store: store_config(config),
    })
}

/// The sensor's parts on the backends `config` chooses
/// ([`Config::backends`]): `kube::Client::try_default()` for the kinds on
/// Kubernetes (in a pod: its service account; else `KUBECONFIG`), GitHub
/// through the configured credentials when it is the API.
pub async fn parts(config: &Config) -> Result<SensorParts, Error> {
    let (backends, _) = connect(config).await?;
    parts_over(config, backends)
}

/// The backends `config` chooses ([`Config::backends`]) over the clients
/// they need, with the GitHub credentials read for them (`None` when
/// GitHub is in memory): a service that embeds the sensor (the
/// controller) builds its backends here too.
pub async fn connect(config: &Config) -> Result<(Backends, Option<GitHubCredentials>), Error> {
    let choice = config.backends();
    let credentials = if choice.needs_github_api() {
        Some(config.github_credentials()?)
    } else {
        None
    };
    let clients = Clients::connect(
        &choice,
        credentials.as_ref(),
        config.github_api_url.as_deref(),
    )
    .await?;
    let backends = Backends::build(choice, &backend_settings(config)?, clients)?;
    Ok((backends, credentials))
}

/// The sensor's parts over `backends`: their store, a coordinator over all
/// of them, and the pull request lookup of their GitHub (in memory, one
/// that knows no pull request).
pub fn parts_over(config: &Config, backends: Backends) -> Result<SensorParts, Error> {
    let lookup: Arc<dyn PullLookup> = match (&backends.choice.github, &backends.clients.github) {
        (GitHubBackend::Api, Some(octocrab)) => Arc::new(GitHubPullLookup::new(octocrab.clone())),
        _ => Arc::new(MemoryPullLookup::new()),
    };
    let coordinator = coordinator_reporting(
        config,
        backends.leases.clone(),
        backends.store.clone(),
        backends.workloads.clone(),
        backends.pulls.clone(),
        backends.labels.clone(),
        backends.label_metrics.clone(),
    )?;
    Ok(SensorParts {
        store: backends.store,
        coordinator: Some(coordinator),
        pulls: lookup,
    })
}

/// `--dev`: every backend in memory. Nothing is durable, nothing leaves
/// the process; the workloads start empty (no run is ever cancelled unless
/// an embedding program adds some).
pub fn memory_parts(config: &Config) -> Result<SensorParts, Error> {
    let backends = Backends::build(
        BackendChoice::MEMORY,
        &backend_settings(config)?,
        Clients::default(),
    )?;
    parts_over(config, backends)
}

/// A cluster and GitHub over clients built elsewhere (tests point them at
/// testkit's fakes): ConfigMap task states, Lease locks, CodeRuns
/// (`KubeCodeRuns`), GitHub's pull requests and labels.
pub fn cluster_parts_with(
    config: &Config,
    client: kube::Client,
    octocrab: Octocrab,
) -> Result<SensorParts, Error> {
    parts_over(config, cluster_backends(config, client, octocrab)?)
}

/// [`cluster_parts_with`] with the runs from `workloads` instead of the
/// cluster's CodeRuns.
pub fn cluster_parts_with_workloads(
    config: &Config,
    client: kube::Client,
    octocrab: Octocrab,
    workloads: Arc<dyn Workloads>,
) -> Result<SensorParts, Error> {
    let mut backends = cluster_backends(config, client, octocrab)?;
    backends.workloads = workloads;
    parts_over(config, backends)
}

fn cluster_backends(
    config: &Config,
    client: kube::Client,
    octocrab: Octocrab,
) -> Result<Backends, Error> {
    let clients = Clients {
        kube: Some(client),
        github: Some(octocrab),
    };
    let settings = BackendSettings {
        coderun: config.coderun_config()?,
        ..backend_settings(config)?
    };
    Backends::build(BackendChoice::PRODUCTION, &settings, clients)
}

/// Makes `/readyz` of `shutdown` fail its `state` check unless the task
/// states can be read (one GET of a name no task has).
pub fn check_state_readiness(store: &StateStore, shutdown: &Shutdown) {
    let store = store.clone();
    shutdown.health().add_check("state", move || {
        let store = store.clone();
        async move {
            store
                .get(READINESS_PROBE_TASK)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    });
}

/// The task name the readiness check reads (no task is named this, so the
/// GET finds nothing and costs one call).
const READINESS_PROBE_TASK: &str = "sensor-readiness-probe";

/// Starts `coordinator`'s workers under `shutdown`: `/readyz` fails its
/// `coordinator` check unless they run; when shutdown starts they stop
/// taking work and give running cancellations `drain` (those still running
/// then stop at a step boundary and leave resumable journals). The stop is
/// tracked, so [`Shutdown::drain`] waits for it.
pub fn run_workers(coordinator: &CancellationCoordinator, shutdown: &Shutdown, drain: Duration) {
    let running = Arc::new(AtomicBool::new(true));
    {
        let running = Arc::clone(&running);
        shutdown.health().add_check("coordinator", move || {
            let running = running.load(Ordering::SeqCst);
            async move {
                if running {
                    Ok(())
                } else {
                    Err("the coordinator's workers are not running".to_owned())
                }
            }
        });
    }
    let workers = coordinator.start();
    let token = shutdown.token();
    shutdown.spawn(async move {
        token.cancelled().await;
        running.store(false, Ordering::SeqCst);
        let aborted = workers.shutdown(drain).await;
        tracing::info!(
            aborted,
            "coordinator stopped; aborted cancellations left resumable journals"
        );
    });
}

/// An octocrab client for `credentials` (retry layer off: label-cas
/// decides what may be retried), against `api_url` or github.com.
pub fn github_client(
    credentials: &GitHubCredentials,
    api_url: Option<&str>,
) -> Result<Octocrab, Error> {
    resilience::tls::ensure_crypto_provider();
    let fail = |what: &str| Error::Backend(format!("GitHub client: {what}"));
    let mut builder = Octocrab::builder().add_retry_config(RetryConfig::None);
    if let Some(url) = api_url {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| fail("--github-api-url does not parse"))?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(fail(
                "--github-api-url carries credentials; give them as a token or App key",
            ));
        }
        builder = builder
            .base_uri(uri)
            .map_err(|_| fail("--github-api-url was refused"))?;
    }
    match credentials {
        GitHubCredentials::Token(token) => builder
            .personal_token(token.clone())
            .build()
            .map_err(|e| fail(&e.to_string())),
        GitHubCredentials::App {
            app_id,
            private_key_pem,
            installation_id,
        } => builder
            .app_from_rsa_pem(AppId(*app_id), private_key_pem.expose_secret().as_bytes())
            .map_err(|_| fail("the GitHub App private key is not an RSA key in PEM format"))?
            .build()
            .map_err(|e| fail(&e.to_string()))?
            .installation(InstallationId(*installation_id))
            .map_err(|e| fail(&e.to_string())),
    }
}
