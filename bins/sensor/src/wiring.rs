//! The sensor's backends, built from its configuration: in-process memory
//! (`--dev`) or a cluster and GitHub.
//!
//! The rule it keeps: both are the same production code over different
//! backends — the same store, lock, saga and coordinator types — so what
//! `--dev` shows is what runs in a cluster, minus durability (`--dev` keeps
//! nothing past the process and reaches no cluster and no GitHub).

use std::sync::Arc;

use cancel_coordinator::{
    CancellationCoordinator, CoordinatorConfig, KubeCodeRuns, MemoryWorkloads,
    StateAwareCancellation, Workloads,
};
use label_cas::{GitHubLabels, LabelBackend, MemoryPullRequests, PullRequests};
use lease_lock::{KubeLeases, LeaseBackend, LeaseLock, LockConfig, MemoryLeases};
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use octocrab::service::middleware::retry::RetryConfig;
use secrecy::ExposeSecret;
use state_store::{ConfigMapBackend, MemoryBackend, StateStore, StoreConfig};

use crate::Error;
use crate::app::SensorParts;
use crate::config::{Config, GitHubCredentials};
use crate::pulls::{GitHubPullLookup, MemoryPullLookup};

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
    let lock = LeaseLock::new(
        leases,
        LockConfig {
            prefix: LOCK_PREFIX.to_owned(),
            ..LockConfig::new(config.identity.clone(), config.namespace.clone())
        },
    )?;
    let saga = StateAwareCancellation::builder(lock, store, workloads, pulls, labels).build()?;
    let coordinator = CancellationCoordinator::new(
        saga,
        CoordinatorConfig {
            workers: config.coordinator_workers,
            ..CoordinatorConfig::default()
        },
    )?;
    Ok(coordinator)
}

/// `--dev`: every backend in memory. Nothing is durable, nothing leaves
/// the process; the workloads start empty (no run is ever cancelled unless
/// an embedding program adds some).
pub fn memory_parts(config: &Config) -> Result<SensorParts, Error> {
    let store = StateStore::with_config(MemoryBackend::new(), store_config(config));
    let github = Arc::new(MemoryPullRequests::new());
    let coordinator = coordinator(
        config,
        MemoryLeases::new(),
        store.clone(),
        Arc::new(MemoryWorkloads::new()),
        github.clone(),
        github.labels().clone(),
    )?;
    Ok(SensorParts {
        store,
        coordinator: Some(coordinator),
        pulls: Arc::new(MemoryPullLookup::new()),
    })
}

/// A cluster and GitHub: the in-cluster (or kubeconfig) client through
/// `kube::Client::try_default()`, ConfigMap task states, Lease locks,
/// CodeRuns (`KubeCodeRuns`), and GitHub through the configured credentials.
pub async fn cluster_parts(config: &Config) -> Result<SensorParts, Error> {
    resilience::tls::ensure_crypto_provider();
    let client = kube::Client::try_default()
        .await
        .map_err(|e| Error::Backend(format!("Kubernetes client: {e}")))?;
    let credentials = config.github_credentials()?;
    let octocrab = github_client(&credentials, config.github_api_url.as_deref())?;
    cluster_parts_with(config, client, octocrab)
}

/// [`cluster_parts`] over clients built elsewhere (tests point them at
/// testkit's fakes).
pub fn cluster_parts_with(
    config: &Config,
    client: kube::Client,
    octocrab: Octocrab,
) -> Result<SensorParts, Error> {
    let workloads = kube_workloads(config, &client)?;
    cluster_parts_with_workloads(config, client, octocrab, workloads)
}

/// [`cluster_parts_with`] with the runs from `workloads` instead of the
/// cluster's CodeRuns.
pub fn cluster_parts_with_workloads(
    config: &Config,
    client: kube::Client,
    octocrab: Octocrab,
    workloads: Arc<dyn Workloads>,
) -> Result<SensorParts, Error> {
    let store = StateStore::with_config(
        ConfigMapBackend::new(client.clone(), &config.namespace),
        store_config(config),
    );
    let labels = GitHubLabels::from_octocrab(octocrab.clone(), label_cas::Metrics::default());
    let pulls: Arc<dyn PullRequests> = Arc::new(labels.pull_requests());
    let coordinator = coordinator(
        config,
        KubeLeases::new(client),
        store.clone(),
        workloads,
        pulls,
        Arc::new(labels),
    )?;
    Ok(SensorParts {
        store,
        coordinator: Some(coordinator),
        pulls: Arc::new(GitHubPullLookup::new(octocrab)),
    })
}

/// The runs of the cluster: supersede's `CodeRun`s, or the custom resource
/// `--coderun-config-file` describes, in `--namespace`.
fn kube_workloads(config: &Config, client: &kube::Client) -> Result<Arc<dyn Workloads>, Error> {
    let runs = KubeCodeRuns::new(client.clone(), &config.namespace, config.coderun_config()?)?;
    Ok(Arc::new(runs))
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
