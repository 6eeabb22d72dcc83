//! Which backend holds each kind of object, chosen one by one, and the
//! backends built from that choice: task states, Leases, runs, and GitHub's
//! pull requests and labels.
//!
//! The rule it keeps: **a choice names the production code it runs.** The
//! memory backends are the same trait implementations the conformance
//! suites hold to the Kubernetes and GitHub ones, so Kubernetes through a
//! kubeconfig with GitHub in memory (or any other mix) runs the same store,
//! lock, saga and coordinator as a cluster — nothing in memory survives the
//! process, and a memory backend is never shared with another process.

use std::sync::Arc;

use cancel_coordinator::{CodeRunConfig, KubeCodeRuns, MemoryWorkloads, Workloads};
use clap::ValueEnum;
use label_cas::{GitHubLabels, LabelBackend, MemoryPullRequests, PullRequests};
use lease_lock::{KubeLeases, LeaseBackend, MemoryLeases};
use octocrab::Octocrab;
use state_store::{ConfigMapBackend, MemoryBackend, StateStore, StoreConfig};

use crate::Error;
use crate::config::GitHubCredentials;

/// Where one kind of Kubernetes object lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Backend {
    /// In this process only: nothing is durable, nothing is shared.
    Memory,
    /// On the API server of `kube::Client::try_default()` (in a pod: its
    /// service account; else `KUBECONFIG` or `~/.kube/config`).
    Kubernetes,
}

/// Where pull requests and their labels live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum GitHubBackend {
    /// In this process only: pull requests exist once something in the
    /// process opened them.
    Memory,
    /// GitHub's REST API (github.com, or `--github-api-url`), with a token
    /// or GitHub App credentials.
    Api,
}

/// The backend of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendChoice {
    /// Task states (ConfigMaps).
    pub state: Backend,
    /// Task locks and leadership (Leases).
    pub leases: Backend,
    /// Agent runs and their pods (CodeRuns).
    pub runs: Backend,
    /// Pull requests and labels.
    pub github: GitHubBackend,
}

impl BackendChoice {
    /// Everything in memory (`--dev`).
    pub const MEMORY: Self = Self {
        state: Backend::Memory,
        leases: Backend::Memory,
        runs: Backend::Memory,
        github: GitHubBackend::Memory,
    };

    /// Everything real: Kubernetes and GitHub's API.
    pub const PRODUCTION: Self = Self {
        state: Backend::Kubernetes,
        leases: Backend::Kubernetes,
        runs: Backend::Kubernetes,
        github: GitHubBackend::Api,
    };

    /// Each explicit choice as given; the others in memory when `dev`, else
    /// real.
    ///
    /// ```
    /// use sensor::backends::{Backend, BackendChoice, GitHubBackend};
    ///
    /// let kube_with_memory_github = BackendChoice::resolve(false, None, None, None, Some(GitHubBackend::Memory));
    /// assert_eq!(kube_with_memory_github.state, Backend::Kubernetes);
    /// assert!(kube_with_memory_github.needs_kubernetes() && !kube_with_memory_github.needs_github_api());
    /// assert_eq!(BackendChoice::resolve(true, None, None, None, None), BackendChoice::MEMORY);
    /// ```
    pub fn resolve(
        dev: bool,
        state: Option<Backend>,
        leases: Option<Backend>,
        runs: Option<Backend>,
        github: Option<GitHubBackend>,
    ) -> Self {
        let base = if dev { Self::MEMORY } else { Self::PRODUCTION };
        Self {
            state: state.unwrap_or(base.state),
            leases: leases.unwrap_or(base.leases),
            runs: runs.unwrap_or(base.runs),
            github: github.unwrap_or(base.github),
        }
    }

    /// Whether a Kubernetes client is needed.
    pub fn needs_kubernetes(&self) -> bool {
        [self.state, self.leases, self.runs].contains(&Backend::Kubernetes)
    }

    /// Whether GitHub credentials are needed.
    pub fn needs_github_api(&self) -> bool {
        self.github == GitHubBackend::Api
    }

    /// One word per kind, for the start-up log line
    /// (`state=kubernetes leases=kubernetes runs=memory github=memory`).
    pub fn describe(&self) -> String {
        let name = |b: Backend| match b {
            Backend::Memory => "memory",
            Backend::Kubernetes => "kubernetes",
        };
        format!(
            "state={} leases={} runs={} github={}",
            name(self.state),
            name(self.leases),
            name(self.runs),
            match self.github {
                GitHubBackend::Memory => "memory",
                GitHubBackend::Api => "api",
            }
        )
    }
}

/// What the backends of a choice are built with.
#[derive(Clone, Debug)]
pub struct BackendSettings {
    /// Namespace of the states, Leases and runs.
    pub namespace: String,
    /// The custom resource holding runs.
    pub coderun: CodeRunConfig,
    /// The state store's tuning.
    pub store: StoreConfig,
}

/// The clients a choice needs (`None` where it needs none).
#[derive(Clone, Default)]
pub struct Clients {
    /// The Kubernetes client.
    pub kube: Option<kube::Client>,
    /// The GitHub client.
    pub github: Option<Octocrab>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("kube", &self.kube.is_some())
            .field("github", &self.github.is_some())
            .finish()
    }
}

impl Clients {
    /// The clients `choice` needs: `kube::Client::try_default()` when a
    /// kind lives on Kubernetes, octocrab with `credentials` (against
    /// `api_url` or github.com) when GitHub is the API.
    pub async fn connect(
        choice: &BackendChoice,
        credentials: Option<&GitHubCredentials>,
        api_url: Option<&str>,
    ) -> Result<Self, Error> {
        resilience::tls::ensure_crypto_provider();
        let kube = if choice.needs_kubernetes() {
            Some(
                kube::Client::try_default()
                    .await
                    .map_err(|e| Error::Backend(format!("Kubernetes client: {e}")))?,
            )
        } else {
            None
        };
        let github = match (choice.needs_github_api(), credentials) {
            (false, _) => None,
            (true, Some(credentials)) => Some(crate::wiring::github_client(credentials, api_url)?),
            (true, None) => {
                return Err(Error::Backend(
                    "GitHub client: no credentials were given".to_owned(),
                ));
            }
        };
        Ok(Self { kube, github })
    }
}

/// The backends of a choice, ready to wire.
#[derive(Clone)]
pub struct Backends {
    /// What was chosen.
    pub choice: BackendChoice,
    /// The task states.
    pub store: StateStore,
    /// The Leases of every lock.
    pub leases: Arc<dyn LeaseBackend>,
    /// The runs.
    pub workloads: Arc<dyn Workloads>,
    /// The pull requests.
    pub pulls: Arc<dyn PullRequests>,
    /// Their labels.
    pub labels: Arc<dyn LabelBackend>,
    /// label-cas's metrics the GitHub label backend reports into (give them
    /// to the saga too: one `label_cas_*` set per process).
    pub label_metrics: label_cas::Metrics,
    /// The runs, when they are in memory (to start and inspect them).
    pub memory_runs: Option<MemoryWorkloads>,
    /// The pull requests, when they are in memory (to open and push them).
    pub memory_github: Option<Arc<MemoryPullRequests>>,
    /// The clients the real backends use.
    pub clients: Clients,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("choice", &self.choice)
            .finish_non_exhaustive()
    }
}

impl Backends {
    /// The backends of `choice` over `clients` (each real kind needs its
    /// client: a missing one is [`Error::Backend`]).
    pub fn build(
        choice: BackendChoice,
        settings: &BackendSettings,
        clients: Clients,
    ) -> Result<Self, Error> {
        let kube = || {
            clients.kube.clone().ok_or_else(|| {
                Error::Backend("a Kubernetes backend was chosen without a client".to_owned())
            })
        };
        let store = match choice.state {
            Backend::Memory => {
                StateStore::with_config(MemoryBackend::new(), settings.store.clone())
            }
            Backend::Kubernetes => StateStore::with_config(
                ConfigMapBackend::new(kube()?, &settings.namespace),
                settings.store.clone(),
            ),
        };
        let leases: Arc<dyn LeaseBackend> = match choice.leases {
            Backend::Memory => Arc::new(MemoryLeases::new()),
            Backend::Kubernetes => Arc::new(KubeLeases::new(kube()?)),
        };
        let (workloads, memory_runs): (Arc<dyn Workloads>, _) = match choice.runs {
            Backend::Memory => {
                let runs = MemoryWorkloads::new();
                (Arc::new(runs.clone()), Some(runs))
            }
            Backend::Kubernetes => (
                Arc::new(KubeCodeRuns::new(
                    kube()?,
                    &settings.namespace,
                    settings.coderun.clone(),
                )?),
                None,
            ),
        };
        let label_metrics = label_cas::Metrics::default();
        let (pulls, labels, memory_github): (Arc<dyn PullRequests>, Arc<dyn LabelBackend>, _) =
            match choice.github {
                GitHubBackend::Memory => {
                    let github = Arc::new(MemoryPullRequests::new());
                    (github.clone(), github.labels().clone(), Some(github))
                }
                GitHubBackend::Api => {
                    let octocrab = clients.github.clone().ok_or_else(|| {
                        Error::Backend("GitHub's API was chosen without a client".to_owned())
                    })?;
                    let labels = GitHubLabels::from_octocrab(octocrab, label_metrics.clone());
                    (Arc::new(labels.pull_requests()), Arc::new(labels), None)
                }
            };
        Ok(Self {
            choice,
            store,
            leases,
            workloads,
            pulls,
            labels,
            label_metrics,
            memory_runs,
            memory_github,
            clients,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BackendSettings {
        BackendSettings {
            namespace: "default".into(),
            coderun: CodeRunConfig::default(),
            store: StoreConfig::default(),
        }
    }

    #[test]
    fn explicit_choices_win_and_the_rest_follow_dev() {
        let choice = BackendChoice::resolve(true, Some(Backend::Kubernetes), None, None, None);
        assert_eq!(choice.state, Backend::Kubernetes);
        assert_eq!(choice.leases, Backend::Memory);
        assert_eq!(choice.github, GitHubBackend::Memory);
        assert!(choice.needs_kubernetes());
        assert_eq!(
            BackendChoice::resolve(false, None, None, None, None),
            BackendChoice::PRODUCTION
        );
        assert_eq!(
            choice.describe(),
            "state=kubernetes leases=memory runs=memory github=memory"
        );
    }

    #[tokio::test]
    async fn memory_backends_need_no_client_and_expose_their_handles() {
        let backends =
            Backends::build(BackendChoice::MEMORY, &settings(), Clients::default()).unwrap();
        assert!(backends.memory_runs.is_some() && backends.memory_github.is_some());
        assert!(backends.store.get("42").await.unwrap().is_none());
    }

    #[test]
    fn a_real_backend_without_its_client_is_refused() {
        for choice in [
            BackendChoice::resolve(true, None, None, Some(Backend::Kubernetes), None),
            BackendChoice::resolve(true, None, None, None, Some(GitHubBackend::Api)),
        ] {
            let error = Backends::build(choice, &settings(), Clients::default()).unwrap_err();
            assert!(matches!(error, Error::Backend(_)), "{error}");
        }
    }
}
