//! The controller's configuration: every flag is also an environment
//! variable (`CONTROLLER_…`), secrets come from files or the environment as
//! [`SecretString`]s and are never printed, and [`Config::validate`]
//! rejects what cannot work at start with a message naming the flag.
//!
//! The GitHub credential flags and the webhook settings are the sensor's
//! (same names, same checks: [`Config::sensor_config`] hands them to
//! `sensor::Config`), so the two binaries are configured alike.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use sensor::backends::{Backend, BackendChoice, GitHubBackend};
pub use sensor::config::{ConfigError, LogFormat};

/// Default TCP port of the API (and of `/healthz`, `/readyz`, `/metrics`
/// and, with a webhook secret, the webhook route).
pub const DEFAULT_PORT: u16 = 8080;
/// Default time in-flight work gets after SIGTERM.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: u64 = 30;
/// Default coordinator workers (DESIGN §4: at least ten).
pub const DEFAULT_COORDINATOR_WORKERS: usize = 10;
/// Default time between recovery cycles (DESIGN §2).
pub const DEFAULT_RECOVERY_INTERVAL_SECONDS: u64 = 30;
/// Default age after which an idle state is deleted: 7 days (state-store's).
pub const DEFAULT_STATE_TTL_SECONDS: u64 = 7 * 24 * 3600;
/// Default time between TTL cleanup passes: 6 h (state-store's).
pub const DEFAULT_TTL_CLEANUP_INTERVAL_SECONDS: u64 = 6 * 3600;
/// The `--dev` webhook secret when none is given. Printed at start: it
/// protects nothing, the dev server only listens on loopback by default.
pub const DEFAULT_DEV_WEBHOOK_SECRET: &str = "supersede-dev";
/// The dev repository.
pub const DEFAULT_DEV_REPOSITORY: &str = "acme/widgets";
/// The dev pull request of the seeded task.
pub const DEFAULT_DEV_PULL_REQUEST: u64 = 7;
/// The seeded task's branch (the sensor maps it to task `42`).
pub const DEFAULT_DEV_BRANCH: &str = "task-42-fix";
/// The simulated fleet's roles.
pub const DEFAULT_DEV_ROLES: &str = "quality,testing,review";
/// How long a simulated run works before it succeeds.
pub const DEFAULT_DEV_RUN_SECONDS: u64 = 120;
/// How long a simulated run takes to stop after SIGTERM.
pub const DEFAULT_DEV_STOP_SECONDS: u64 = 1;

/// Command-line and environment configuration of `controller`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "controller",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A tool instead of the server.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The server's settings.
    #[command(flatten)]
    pub config: Config,
}

/// The controller's tools.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Simulate an agent's push to the dev server: move the pull request's
    /// head on its in-memory GitHub, then deliver GitHub's `push` webhook
    /// for the branch, signed, and print both answers.
    DevPush(DevPush),
}

/// `controller dev-push`.
#[derive(Debug, Clone, Args)]
pub struct DevPush {
    /// The dev server.
    #[arg(long, env = "CONTROLLER_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The repository (owner/name).
    #[arg(long, default_value = DEFAULT_DEV_REPOSITORY)]
    pub repository: String,
    /// The pull request's number.
    #[arg(long, default_value_t = DEFAULT_DEV_PULL_REQUEST)]
    pub pr: u64,
    /// The pull request's head branch.
    #[arg(long, default_value = DEFAULT_DEV_BRANCH)]
    pub branch: String,
    /// The new head commit (40 hex digits); a random one when unset.
    #[arg(long)]
    pub head: Option<String>,
    /// The webhook secret the delivery is signed with (never logged).
    #[arg(long, env = "CONTROLLER_DEV_WEBHOOK_SECRET", hide_env_values = true, default_value = DEFAULT_DEV_WEBHOOK_SECRET, value_parser = parse_secret)]
    pub secret: SecretString,
}

/// The server's settings.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// TCP port of the API, probes, metrics and webhook route (0 picks a free one).
    #[arg(long, env = "CONTROLLER_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Address to bind; loopback unless told otherwise (in a pod: 0.0.0.0).
    #[arg(long, env = "CONTROLLER_BIND", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,

    /// One process, no cluster, no GitHub: every backend in memory, the
    /// sensor's webhook route, a simulated agent fleet and a seeded task
    /// (42, on PR 7 of acme/widgets). The backend flags override it kind by
    /// kind. Nothing survives the process.
    #[arg(long, env = "CONTROLLER_DEV", default_value_t = false)]
    pub dev: bool,

    /// Where task states live (default: memory with --dev, else kubernetes).
    #[arg(long, env = "CONTROLLER_STATE_BACKEND", value_enum)]
    pub state_backend: Option<Backend>,

    /// Where Leases live (default: memory with --dev, else kubernetes).
    #[arg(long, env = "CONTROLLER_LEASE_BACKEND", value_enum)]
    pub lease_backend: Option<Backend>,

    /// Where runs (CodeRuns and their pods) live (default: memory with
    /// --dev, else kubernetes).
    #[arg(long, env = "CONTROLLER_RUN_BACKEND", value_enum)]
    pub run_backend: Option<Backend>,

    /// Where pull requests and labels live (default: memory with --dev,
    /// else api).
    #[arg(long, env = "CONTROLLER_GITHUB_BACKEND", value_enum)]
    pub github_backend: Option<GitHubBackend>,

    /// Namespace of the task states, Leases and CodeRuns (in a pod: its own).
    #[arg(long, env = "CONTROLLER_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// This replica's identity in lease holders (in a pod: its name).
    #[arg(long, env = "CONTROLLER_IDENTITY", default_value = "controller")]
    pub identity: String,

    /// A JSON file describing the custom resource that holds runs (a
    /// cancel-coordinator `CodeRunConfig`); unset: supersede's `CodeRun`.
    #[arg(long, env = "CONTROLLER_CODERUN_CONFIG_FILE")]
    pub coderun_config_file: Option<PathBuf>,

    /// Cancellations run at once by this replica's coordinator.
    #[arg(long, env = "CONTROLLER_COORDINATOR_WORKERS", default_value_t = DEFAULT_COORDINATOR_WORKERS)]
    pub coordinator_workers: usize,

    /// Seconds between recovery cycles (±10 %), run by the elected leader.
    #[arg(long, env = "CONTROLLER_RECOVERY_INTERVAL_SECONDS", default_value_t = DEFAULT_RECOVERY_INTERVAL_SECONDS)]
    pub recovery_interval_seconds: u64,

    /// Seconds after which a state nobody touched (not InProgress, no
    /// operation open) is deleted.
    #[arg(long, env = "CONTROLLER_STATE_TTL_SECONDS", default_value_t = DEFAULT_STATE_TTL_SECONDS)]
    pub state_ttl_seconds: u64,

    /// Seconds between TTL cleanup passes.
    #[arg(long, env = "CONTROLLER_TTL_CLEANUP_INTERVAL_SECONDS", default_value_t = DEFAULT_TTL_CLEANUP_INTERVAL_SECONDS)]
    pub ttl_cleanup_interval_seconds: u64,

    /// Seconds in-flight requests, cancellations and the leadership release
    /// get after SIGTERM; running cancellations get four fifths of it, then
    /// leave resumable journals.
    #[arg(long, env = "CONTROLLER_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT_SECONDS)]
    pub shutdown_timeout: u64,

    /// File holding the bearer token of the write endpoints (retry,
    /// resolve); unset: they are off (404).
    #[arg(long, env = "CONTROLLER_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// GitHub API root (GitHub Enterprise Server: `https://HOST/api/v3/`).
    #[arg(long, env = "CONTROLLER_GITHUB_API_URL")]
    pub github_api_url: Option<String>,

    /// File holding a GitHub token (installation or fine-grained).
    #[arg(long, env = "CONTROLLER_GITHUB_TOKEN_FILE")]
    pub github_token_file: Option<PathBuf>,

    /// A GitHub token (prefer --github-token-file; never logged).
    #[arg(long, env = "CONTROLLER_GITHUB_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub github_token: Option<SecretString>,

    /// GitHub App id (with --github-app-key-file and --github-installation-id);
    /// recovery then also redelivers the App's failed webhook deliveries.
    #[arg(long, env = "CONTROLLER_GITHUB_APP_ID")]
    pub github_app_id: Option<u64>,

    /// File holding the GitHub App's private key (PEM).
    #[arg(long, env = "CONTROLLER_GITHUB_APP_KEY_FILE")]
    pub github_app_key_file: Option<PathBuf>,

    /// The App's installation id.
    #[arg(long, env = "CONTROLLER_GITHUB_INSTALLATION_ID")]
    pub github_installation_id: Option<u64>,

    /// Files holding webhook secrets, current first: mounts the sensor's
    /// `POST /webhook/github` on --port (always on with --dev).
    #[arg(
        long = "webhook-secret-file",
        env = "CONTROLLER_WEBHOOK_SECRET_FILES",
        value_delimiter = ','
    )]
    pub webhook_secret_files: Vec<PathBuf>,

    /// A webhook secret (prefer --webhook-secret-file; never logged).
    #[arg(long, env = "CONTROLLER_WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub webhook_secret: Option<SecretString>,

    /// Repositories whose webhooks are handled (`owner/name` or `owner/*`);
    /// default: --dev-repository.
    #[arg(
        long = "repository",
        env = "CONTROLLER_REPOSITORIES",
        value_delimiter = ','
    )]
    pub repositories: Vec<String>,

    /// The webhook secret of --dev when no other is given (printed at start).
    #[arg(long, env = "CONTROLLER_DEV_WEBHOOK_SECRET", hide_env_values = true, default_value = DEFAULT_DEV_WEBHOOK_SECRET, value_parser = parse_secret)]
    pub dev_webhook_secret: SecretString,

    /// The simulated agent fleet (on with --dev): whenever a task's head
    /// changes it starts --dev-roles as runs on the new head.
    #[arg(long, env = "CONTROLLER_DEV_FLEET", default_value_t = false)]
    pub dev_fleet: bool,

    /// Seed task 42 on --dev-pull-request with the fleet's runs on one head
    /// and the label ready-for-qa (on with --dev; needs the fleet).
    #[arg(long, env = "CONTROLLER_DEV_SEED", default_value_t = false)]
    pub dev_seed: bool,

    /// The seeded task's repository.
    #[arg(long, env = "CONTROLLER_DEV_REPOSITORY", default_value = DEFAULT_DEV_REPOSITORY)]
    pub dev_repository: String,

    /// The seeded task's pull request.
    #[arg(long, env = "CONTROLLER_DEV_PULL_REQUEST", default_value_t = DEFAULT_DEV_PULL_REQUEST)]
    pub dev_pull_request: u64,

    /// The seeded task's branch (it must map to a task: `task-<n>-…`).
    #[arg(long, env = "CONTROLLER_DEV_BRANCH", default_value = DEFAULT_DEV_BRANCH)]
    pub dev_branch: String,

    /// The roles the fleet starts for every new head.
    #[arg(long, env = "CONTROLLER_DEV_ROLES", value_delimiter = ',', default_value = DEFAULT_DEV_ROLES)]
    pub dev_roles: Vec<String>,

    /// Seconds a simulated run works before it succeeds.
    #[arg(long, env = "CONTROLLER_DEV_RUN_SECONDS", default_value_t = DEFAULT_DEV_RUN_SECONDS)]
    pub dev_run_seconds: u64,

    /// Seconds a simulated run takes to stop after SIGTERM.
    #[arg(long, env = "CONTROLLER_DEV_STOP_SECONDS", default_value_t = DEFAULT_DEV_STOP_SECONDS)]
    pub dev_stop_seconds: u64,

    /// Log format (default: text with --dev, else json).
    #[arg(long, env = "CONTROLLER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

impl Default for Config {
    /// The command line without flags (ignoring the environment), for
    /// embedding and tests.
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dev: false,
            state_backend: None,
            lease_backend: None,
            run_backend: None,
            github_backend: None,
            namespace: "default".to_owned(),
            identity: "controller".to_owned(),
            coderun_config_file: None,
            coordinator_workers: DEFAULT_COORDINATOR_WORKERS,
            recovery_interval_seconds: DEFAULT_RECOVERY_INTERVAL_SECONDS,
            state_ttl_seconds: DEFAULT_STATE_TTL_SECONDS,
            ttl_cleanup_interval_seconds: DEFAULT_TTL_CLEANUP_INTERVAL_SECONDS,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
            api_token_file: None,
            github_api_url: None,
            github_token_file: None,
            github_token: None,
            github_app_id: None,
            github_app_key_file: None,
            github_installation_id: None,
            webhook_secret_files: Vec::new(),
            webhook_secret: None,
            repositories: Vec::new(),
            dev_webhook_secret: SecretString::from(DEFAULT_DEV_WEBHOOK_SECRET),
            dev_fleet: false,
            dev_seed: false,
            dev_repository: DEFAULT_DEV_REPOSITORY.to_owned(),
            dev_pull_request: DEFAULT_DEV_PULL_REQUEST,
            dev_branch: DEFAULT_DEV_BRANCH.to_owned(),
            dev_roles: DEFAULT_DEV_ROLES.split(',').map(str::to_owned).collect(),
            dev_run_seconds: DEFAULT_DEV_RUN_SECONDS,
            dev_stop_seconds: DEFAULT_DEV_STOP_SECONDS,
            log_format: None,
        }
    }
}

fn fail<T>(flag: &'static str, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        flag,
        reason: reason.into(),
    })
}

impl Config {
    /// Checks the values together (files are read: a token or secret file
    /// that cannot be read fails here, at start); the first problem is
    /// returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1_000).contains(&self.coordinator_workers) {
            return fail("coordinator-workers", "must be between 1 and 1000");
        }
        if !(1..=3_600).contains(&self.recovery_interval_seconds) {
            return fail("recovery-interval-seconds", "must be between 1 and 3600");
        }
        if self.state_ttl_seconds < 3_600 {
            return fail(
                "state-ttl-seconds",
                "must be at least 3600: a younger state may still be worked on",
            );
        }
        if !(60..=7 * 24 * 3600).contains(&self.ttl_cleanup_interval_seconds) {
            return fail(
                "ttl-cleanup-interval-seconds",
                "must be between 60 and 604800",
            );
        }
        if !(1..=3_600).contains(&self.shutdown_timeout) {
            return fail("shutdown-timeout", "must be between 1 and 3600");
        }
        if self.identity.trim().is_empty() {
            return fail("identity", "must not be empty");
        }
        self.api_token()?;
        let backends = self.backends();
        if backends.needs_kubernetes() && self.namespace.trim().is_empty() {
            return fail("namespace", "must not be empty");
        }
        let sensor = self.sensor_config();
        if backends.needs_github_api() {
            sensor.github_credentials()?;
        }
        if backends.runs == Backend::Kubernetes {
            sensor.coderun_config()?;
        }
        // The dev flags first: with no --repository the webhook route's
        // repository is --dev-repository, which is then named.
        self.validate_dev(backends)?;
        if self.webhook_enabled() {
            sensor.validate()?;
        }
        Ok(())
    }

    fn validate_dev(&self, backends: BackendChoice) -> Result<(), ConfigError> {
        if !self.fleet_enabled() {
            if self.seed_enabled() {
                return fail(
                    "dev-seed",
                    "needs the fleet (--dev-fleet) to start its runs",
                );
            }
            return Ok(());
        }
        if backends.runs == Backend::Kubernetes && self.coderun_config_file.is_some() {
            return fail(
                "dev-fleet",
                "starts supersede's own CodeRuns only; it cannot run with --coderun-config-file",
            );
        }
        if self.dev_roles.is_empty() || self.dev_roles.len() > 16 {
            return fail("dev-roles", "give 1 to 16 roles");
        }
        if let Some(bad) = self.dev_roles.iter().find(|r| !valid_role(r)) {
            return fail(
                "dev-roles",
                format!("{bad:?} is not 1 to 20 lower-case letters, digits or '-'"),
            );
        }
        if !(1..=86_400).contains(&self.dev_run_seconds) {
            return fail("dev-run-seconds", "must be between 1 and 86400");
        }
        if !(0..=30).contains(&self.dev_stop_seconds) {
            return fail(
                "dev-stop-seconds",
                "must be between 0 and 30 (a pod's own grace period)",
            );
        }
        if self.seed_enabled() {
            let pr = format!("{}#{}", self.dev_repository, self.dev_pull_request);
            if pr.parse::<label_cas::PrRef>().is_err() {
                return fail(
                    "dev-repository",
                    format!("{pr:?} is not owner/name and a pull request number"),
                );
            }
            if self.seeded_task().is_none() {
                return fail(
                    "dev-branch",
                    format!(
                        "{:?} maps to no task (the sensor's branch pattern is {})",
                        self.dev_branch,
                        sensor::config::DEFAULT_BRANCH_PATTERN
                    ),
                );
            }
        }
        Ok(())
    }

    /// The backend of each kind: the explicit `--*-backend` flags, the rest
    /// in memory with `--dev`, else real.
    pub fn backends(&self) -> BackendChoice {
        BackendChoice::resolve(
            self.dev,
            self.state_backend,
            self.lease_backend,
            self.run_backend,
            self.github_backend,
        )
    }

    /// Whether the sensor's webhook route is served: with `--dev`, or when
    /// a webhook secret is configured.
    pub fn webhook_enabled(&self) -> bool {
        self.dev || self.webhook_secret.is_some() || !self.webhook_secret_files.is_empty()
    }

    /// Whether the simulated agent fleet runs.
    pub fn fleet_enabled(&self) -> bool {
        self.dev || self.dev_fleet
    }

    /// Whether task 42 is seeded.
    pub fn seed_enabled(&self) -> bool {
        self.dev || self.dev_seed
    }

    /// The task id the seeded branch maps to under the sensor's branch
    /// mapping (`task-42-fix` → `42`).
    pub fn seeded_task(&self) -> Option<String> {
        let pattern = self.sensor_config().branch_regex().ok()?;
        sensor::TaskMapping::new(pattern, None).task_for_branch(&self.dev_branch)
    }

    /// The sensor's configuration for the webhook route and the GitHub
    /// credentials: this configuration's secrets (the `--dev` one when none
    /// is given), repositories (`--dev-repository` when none is given),
    /// backends, credentials and namespace; the sensor's defaults for the
    /// rest.
    pub fn sensor_config(&self) -> sensor::Config {
        let backends = self.backends();
        let given_secret = self.webhook_secret.is_some() || !self.webhook_secret_files.is_empty();
        let webhook_secret = match (&self.webhook_secret, given_secret) {
            (Some(secret), _) => Some(secret.clone()),
            (None, false) => Some(self.dev_webhook_secret.clone()),
            (None, true) => None,
        };
        let repositories = if self.repositories.is_empty() {
            vec![self.dev_repository.clone()]
        } else {
            self.repositories.clone()
        };
        sensor::Config {
            port: self.port,
            bind: self.bind,
            dev: true,
            state_backend: Some(backends.state),
            lease_backend: Some(backends.leases),
            run_backend: Some(backends.runs),
            github_backend: Some(backends.github),
            webhook_secret_files: self.webhook_secret_files.clone(),
            webhook_secret,
            repositories,
            coordinator_workers: self.coordinator_workers,
            namespace: self.namespace.clone(),
            coderun_config_file: self.coderun_config_file.clone(),
            identity: self.identity.clone(),
            github_api_url: self.github_api_url.clone(),
            github_token_file: self.github_token_file.clone(),
            github_token: self.github_token.clone(),
            github_app_id: self.github_app_id,
            github_app_key_file: self.github_app_key_file.clone(),
            github_installation_id: self.github_installation_id,
            drain_timeout_seconds: self.shutdown_timeout,
            ..sensor::Config::default()
        }
    }

    /// The bearer token of the write endpoints, read from
    /// `--api-token-file` (surrounding white space removed); `None`: the
    /// write endpoints are off.
    pub fn api_token(&self) -> Result<Option<SecretString>, ConfigError> {
        let Some(path) = &self.api_token_file else {
            return Ok(None);
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let token = SecretString::from(text.trim().to_owned());
                if token.expose_secret().len() < 16 {
                    return fail(
                        "api-token-file",
                        format!(
                            "{} holds fewer than 16 characters: too easy to guess",
                            path.display()
                        ),
                    );
                }
                Ok(Some(token))
            }
            // The error names the path and the OS reason, never the content.
            Err(e) => fail(
                "api-token-file",
                format!("cannot read {}: {e}", path.display()),
            ),
        }
    }

    /// The address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }

    /// How long in-flight work gets after SIGTERM.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout)
    }

    /// The log format: `--log-format`, else text with `--dev`, else JSON.
    pub fn log_format(&self) -> LogFormat {
        self.log_format.unwrap_or(if self.dev {
            LogFormat::Text
        } else {
            LogFormat::Json
        })
    }
}

fn valid_role(role: &str) -> bool {
    (1..=20).contains(&role.len())
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn parse_secret(value: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut argv = vec!["controller"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().config
    }

    #[test]
    fn dev_is_memory_everything_with_the_fleet_the_seed_and_the_webhook() {
        let config = parse(&["--dev"]);
        config.validate().unwrap();
        assert_eq!(config.backends(), BackendChoice::MEMORY);
        assert!(config.webhook_enabled() && config.fleet_enabled() && config.seed_enabled());
        assert_eq!(config.seeded_task().as_deref(), Some("42"));
        assert_eq!(config.dev_roles, ["quality", "testing", "review"]);
        assert_eq!(config.log_format(), LogFormat::Text);
        let sensor = config.sensor_config();
        sensor.validate().unwrap();
        assert_eq!(sensor.repositories, ["acme/widgets"]);
    }

    #[test]
    fn without_dev_it_is_kubernetes_and_github_and_asks_for_credentials() {
        let config = parse(&[]);
        assert_eq!(config.backends(), BackendChoice::PRODUCTION);
        assert!(!config.webhook_enabled() && !config.fleet_enabled());
        assert_eq!(config.validate().unwrap_err().flag, "github-token-file");
        let kube_only = parse(&["--github-backend", "memory"]);
        kube_only.validate().unwrap();
        assert_eq!(kube_only.log_format(), LogFormat::Json);
    }

    #[test]
    fn validation_names_the_bad_flag() {
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (
                vec!["--dev", "--coordinator-workers", "0"],
                "coordinator-workers",
            ),
            (vec!["--dev", "--shutdown-timeout", "0"], "shutdown-timeout"),
            (
                vec!["--dev", "--state-ttl-seconds", "60"],
                "state-ttl-seconds",
            ),
            (vec!["--dev", "--dev-roles", "Quality"], "dev-roles"),
            (vec!["--dev", "--dev-run-seconds", "0"], "dev-run-seconds"),
            (vec!["--dev", "--dev-branch", "feature"], "dev-branch"),
            (vec!["--dev", "--dev-repository", "acme"], "dev-repository"),
            (
                vec!["--dev", "--api-token-file", "/nonexistent/token"],
                "api-token-file",
            ),
            (vec!["--github-backend", "memory", "--dev-seed"], "dev-seed"),
            (
                vec![
                    "--github-backend",
                    "memory",
                    "--dev-fleet",
                    "--coderun-config-file",
                    "/nonexistent/c.json",
                ],
                "coderun-config-file",
            ),
            (vec!["--dev", "--repository", "not-a-repo"], "repository"),
        ];
        for (args, flag) in cases {
            let error = parse(&args).validate().unwrap_err();
            assert_eq!(error.flag, flag, "{args:?}: {error}");
        }
    }

    #[test]
    fn the_api_token_comes_from_a_file_and_is_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  a-long-enough-api-token\n").unwrap();
        let config = Config {
            dev: true,
            api_token_file: Some(path.clone()),
            ..Config::default()
        };
        let token = config.api_token().unwrap().unwrap();
        assert_eq!(token.expose_secret(), "a-long-enough-api-token");
        assert!(!format!("{config:?}").contains("a-long-enough"));
        std::fs::write(&path, "short").unwrap();
        assert_eq!(config.api_token().unwrap_err().flag, "api-token-file");
    }

    #[test]
    fn a_webhook_secret_mounts_the_route_without_dev() {
        let config = parse(&["--github-backend", "memory", "--webhook-secret", "s3cret"]);
        assert!(config.webhook_enabled());
        config.validate().unwrap();
        let sensor = config.sensor_config();
        assert_eq!(sensor.webhook_secrets().unwrap().len(), 1);
    }

    #[test]
    fn dev_push_has_defaults_that_match_the_seeded_task() {
        let cli = Cli::try_parse_from(["controller", "dev-push"]).unwrap();
        let Some(Command::DevPush(push)) = cli.command else {
            panic!("not dev-push")
        };
        assert_eq!(
            (push.repository.as_str(), push.pr, push.branch.as_str()),
            (
                DEFAULT_DEV_REPOSITORY,
                DEFAULT_DEV_PULL_REQUEST,
                DEFAULT_DEV_BRANCH
            )
        );
        assert_eq!(push.secret.expose_secret(), DEFAULT_DEV_WEBHOOK_SECRET);
        assert!(!format!("{push:?}").contains(DEFAULT_DEV_WEBHOOK_SECRET));
        assert!(push.head.is_none());
    }
}
