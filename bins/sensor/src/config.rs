//! The sensor's configuration: every flag is also an environment variable,
//! secrets come from files or the environment as [`SecretString`]s and are
//! never printed, and [`Config::validate`] rejects what cannot work at start
//! with a message naming the flag.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use regex::Regex;
use secrecy::{ExposeSecret, SecretString};

use crate::backends::{Backend, BackendChoice, GitHubBackend};

/// Default TCP port.
pub const DEFAULT_PORT: u16 = 8080;
/// Default body limit: 1 MiB (GitHub caps payloads at 25 MB; pushes and
/// pull requests are tens of KiB).
pub const DEFAULT_BODY_LIMIT_BYTES: usize = github_webhook::DEFAULT_BODY_LIMIT;
/// Default branch pattern: `task-42`, `task-42-fix`, not `task-42x`.
pub const DEFAULT_BRANCH_PATTERN: &str = "^task-(?P<task>[0-9]+)(-|$)";
/// Default bound on the state write before answering: well inside GitHub's
/// 10 s, with room for the answer to travel.
pub const DEFAULT_STATE_WRITE_TIMEOUT_SECONDS: u64 = 5;
/// Default bound on a GitHub lookup of a push's pull request.
pub const DEFAULT_GITHUB_LOOKUP_TIMEOUT_SECONDS: u64 = 5;
/// Default number of delivery keys remembered in memory (the durable
/// record is the task's state).
pub const DEFAULT_DEDUPE_CACHE_SIZE: usize = 10_000;
/// Default most state writes in flight at once; beyond it, 503 at once.
pub const DEFAULT_MAX_INFLIGHT_WRITES: usize = 1_024;
/// Default most state writes sent to the API server at once.
pub const DEFAULT_MAX_CONCURRENT_WRITES: usize = 64;
/// Default coordinator workers.
pub const DEFAULT_COORDINATOR_WORKERS: usize = 10;
/// Default time in-flight requests and cancellations get after SIGTERM.
pub const DEFAULT_DRAIN_TIMEOUT_SECONDS: u64 = 25;

/// Command-line and environment configuration of `sensor`.
#[derive(Debug, Clone, Parser)]
#[command(name = "sensor", version, about)]
pub struct Config {
    /// TCP port to listen on (0 picks a free one).
    #[arg(long, env = "SENSOR_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Address to bind; loopback unless told otherwise (in a pod: 0.0.0.0).
    #[arg(long, env = "SENSOR_BIND", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,

    /// In-process memory backends for state, leases, runs and GitHub: no
    /// cluster, no GitHub. Nothing survives the process; for laptops only.
    /// The backend flags below override it kind by kind.
    #[arg(long, env = "SENSOR_DEV", default_value_t = false)]
    pub dev: bool,

    /// Where task states live (default: memory with --dev, else kubernetes).
    #[arg(long, env = "SENSOR_STATE_BACKEND", value_enum)]
    pub state_backend: Option<Backend>,

    /// Where task locks (Leases) live (default: memory with --dev, else kubernetes).
    #[arg(long, env = "SENSOR_LEASE_BACKEND", value_enum)]
    pub lease_backend: Option<Backend>,

    /// Where runs (CodeRuns and their pods) live (default: memory with
    /// --dev, else kubernetes).
    #[arg(long, env = "SENSOR_RUN_BACKEND", value_enum)]
    pub run_backend: Option<Backend>,

    /// Where pull requests and labels live (default: memory with --dev,
    /// else api).
    #[arg(long, env = "SENSOR_GITHUB_BACKEND", value_enum)]
    pub github_backend: Option<GitHubBackend>,

    /// Files holding webhook secrets, current first (one secret per file,
    /// surrounding white space removed). Repeat, or separate with commas.
    #[arg(
        long = "webhook-secret-file",
        env = "SENSOR_WEBHOOK_SECRET_FILES",
        value_delimiter = ','
    )]
    pub webhook_secret_files: Vec<PathBuf>,

    /// The current webhook secret (prefer --webhook-secret-file; never logged).
    #[arg(long, env = "SENSOR_WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub webhook_secret: Option<SecretString>,

    /// The previous webhook secret, accepted during a rotation (never logged).
    #[arg(long, env = "SENSOR_WEBHOOK_SECRET_PREVIOUS", hide_env_values = true, value_parser = parse_secret)]
    pub webhook_secret_previous: Option<SecretString>,

    /// Largest webhook body accepted; larger ones are answered 413.
    #[arg(long, env = "SENSOR_BODY_LIMIT_BYTES", default_value_t = DEFAULT_BODY_LIMIT_BYTES)]
    pub body_limit_bytes: usize,

    /// Refuse form-encoded deliveries (415) instead of decoding them.
    #[arg(long, env = "SENSOR_REFUSE_FORM_ENCODED", default_value_t = false)]
    pub refuse_form_encoded: bool,

    /// Branch-name pattern with a named capture `task`; the task id is
    /// `task-<capture>`. Empty: no branch mapping.
    #[arg(long, env = "SENSOR_BRANCH_PATTERN", default_value = DEFAULT_BRANCH_PATTERN)]
    pub branch_pattern: String,

    /// Pull request label prefix mapping a label to a task (`task-` maps
    /// label `task-42` to task `task-42`). Unset: no label mapping.
    #[arg(long, env = "SENSOR_TASK_LABEL_PREFIX")]
    pub task_label_prefix: Option<String>,

    /// Repositories whose events are handled (`owner/name`, or `owner/*`
    /// for all of an owner's). Repeat, or separate with commas. Required.
    #[arg(
        long = "repository",
        env = "SENSOR_REPOSITORIES",
        value_delimiter = ','
    )]
    pub repositories: Vec<String>,

    /// Senders (GitHub logins) whose pushes supersede; empty: anyone.
    #[arg(long = "sender", env = "SENSOR_SENDERS", value_delimiter = ',')]
    pub senders: Vec<String>,

    /// Whether a closed (or merged) pull request cancels its task's
    /// remaining runs.
    #[arg(long, env = "SENSOR_CANCEL_ON_CLOSE", default_value_t = true, action = clap::ArgAction::Set)]
    pub cancel_on_close: bool,

    /// Seconds the state write may take before the delivery is answered
    /// 503 (so that it shows as failed in GitHub and can be redelivered).
    #[arg(long, env = "SENSOR_STATE_WRITE_TIMEOUT_SECONDS", default_value_t = DEFAULT_STATE_WRITE_TIMEOUT_SECONDS)]
    pub state_write_timeout_seconds: u64,

    /// Seconds a GitHub lookup of a push's pull request may take.
    #[arg(long, env = "SENSOR_GITHUB_LOOKUP_TIMEOUT_SECONDS", default_value_t = DEFAULT_GITHUB_LOOKUP_TIMEOUT_SECONDS)]
    pub github_lookup_timeout_seconds: u64,

    /// Delivery keys remembered in memory (the durable record is the
    /// task's state, which keeps the last 64 per task).
    #[arg(long, env = "SENSOR_DEDUPE_CACHE_SIZE", default_value_t = DEFAULT_DEDUPE_CACHE_SIZE)]
    pub dedupe_cache_size: usize,

    /// Most state writes in flight at once; more deliveries are answered
    /// 503 at once.
    #[arg(long, env = "SENSOR_MAX_INFLIGHT_WRITES", default_value_t = DEFAULT_MAX_INFLIGHT_WRITES)]
    pub max_inflight_writes: usize,

    /// State writes sent to the API server at once; the other admitted
    /// ones wait their turn (within the state write timeout).
    #[arg(long, env = "SENSOR_MAX_CONCURRENT_WRITES", default_value_t = DEFAULT_MAX_CONCURRENT_WRITES)]
    pub max_concurrent_writes: usize,

    /// Cancellations run at once by this process's coordinator.
    #[arg(long, env = "SENSOR_COORDINATOR_WORKERS", default_value_t = DEFAULT_COORDINATOR_WORKERS)]
    pub coordinator_workers: usize,

    /// Namespace of the task states, leases and CodeRuns (in a pod: its own).
    #[arg(long, env = "SENSOR_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// A JSON file describing the custom resource that holds runs (group,
    /// version, kind, plural, where task id, role, head and phase are: a
    /// cancel-coordinator `CodeRunConfig`); unset: supersede's `CodeRun`.
    #[arg(long, env = "SENSOR_CODERUN_CONFIG_FILE")]
    pub coderun_config_file: Option<PathBuf>,

    /// This replica's identity in lease holders (in a pod: its name).
    #[arg(long, env = "SENSOR_IDENTITY", default_value = "sensor")]
    pub identity: String,

    /// GitHub API root (GitHub Enterprise Server: `https://HOST/api/v3/`).
    #[arg(long, env = "SENSOR_GITHUB_API_URL")]
    pub github_api_url: Option<String>,

    /// File holding a GitHub token (installation or fine-grained).
    #[arg(long, env = "SENSOR_GITHUB_TOKEN_FILE")]
    pub github_token_file: Option<PathBuf>,

    /// A GitHub token (prefer --github-token-file; never logged).
    #[arg(long, env = "SENSOR_GITHUB_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub github_token: Option<SecretString>,

    /// GitHub App id (with --github-app-key-file and --github-installation-id).
    #[arg(long, env = "SENSOR_GITHUB_APP_ID")]
    pub github_app_id: Option<u64>,

    /// File holding the GitHub App's private key (PEM).
    #[arg(long, env = "SENSOR_GITHUB_APP_KEY_FILE")]
    pub github_app_key_file: Option<PathBuf>,

    /// The App's installation id.
    #[arg(long, env = "SENSOR_GITHUB_INSTALLATION_ID")]
    pub github_installation_id: Option<u64>,

    /// Seconds in-flight requests and cancellations get after SIGTERM.
    #[arg(long, env = "SENSOR_DRAIN_TIMEOUT_SECONDS", default_value_t = DEFAULT_DRAIN_TIMEOUT_SECONDS)]
    pub drain_timeout_seconds: u64,

    /// Log format.
    #[arg(long, env = "SENSOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable text.
    Text,
}

impl LogFormat {
    /// Installs the global `tracing` subscriber writing this format to
    /// stdout, filtered by `RUST_LOG` (default `info`); JSON lines carry
    /// the current span's fields (`correlation_id`, `task_id`). For a
    /// binary's `main`, once.
    pub fn init_tracing(self) {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt().with_env_filter(filter);
        match self {
            LogFormat::Json => builder
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .init(),
            LogFormat::Text => builder.init(),
        }
    }
}

/// A configuration value that cannot work, named by its flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --{flag}: {reason}")]
pub struct ConfigError {
    /// The flag, without dashes.
    pub flag: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// How the sensor talks to GitHub.
#[derive(Clone)]
pub enum GitHubCredentials {
    /// A token.
    Token(SecretString),
    /// A GitHub App installation.
    App {
        /// The App id.
        app_id: u64,
        /// Its private key (PEM).
        private_key_pem: SecretString,
        /// The installation.
        installation_id: u64,
    },
}

impl std::fmt::Debug for GitHubCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token([redacted])"),
            Self::App {
                app_id,
                installation_id,
                ..
            } => write!(
                f,
                "App {{ app_id: {app_id}, installation_id: {installation_id}, private_key_pem: [redacted] }}"
            ),
        }
    }
}

impl Default for Config {
    /// The command line without flags (ignoring the environment), for
    /// embedding and tests: note it has no secret and no repository, so
    /// it does not validate until given some.
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dev: false,
            state_backend: None,
            lease_backend: None,
            run_backend: None,
            github_backend: None,
            webhook_secret_files: Vec::new(),
            webhook_secret: None,
            webhook_secret_previous: None,
            body_limit_bytes: DEFAULT_BODY_LIMIT_BYTES,
            refuse_form_encoded: false,
            branch_pattern: DEFAULT_BRANCH_PATTERN.to_owned(),
            task_label_prefix: None,
            repositories: Vec::new(),
            senders: Vec::new(),
            cancel_on_close: true,
            state_write_timeout_seconds: DEFAULT_STATE_WRITE_TIMEOUT_SECONDS,
            github_lookup_timeout_seconds: DEFAULT_GITHUB_LOOKUP_TIMEOUT_SECONDS,
            dedupe_cache_size: DEFAULT_DEDUPE_CACHE_SIZE,
            max_inflight_writes: DEFAULT_MAX_INFLIGHT_WRITES,
            max_concurrent_writes: DEFAULT_MAX_CONCURRENT_WRITES,
            coordinator_workers: DEFAULT_COORDINATOR_WORKERS,
            namespace: "default".to_owned(),
            coderun_config_file: None,
            identity: "sensor".to_owned(),
            github_api_url: None,
            github_token_file: None,
            github_token: None,
            github_app_id: None,
            github_app_key_file: None,
            github_installation_id: None,
            drain_timeout_seconds: DEFAULT_DRAIN_TIMEOUT_SECONDS,
            log_format: LogFormat::Json,
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
    /// Checks the values together (files are read: a secret file that
    /// cannot be read fails here, at start); the first problem is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.webhook_secrets()?;
        if !(1..=github_webhook::MAX_BODY_LIMIT).contains(&self.body_limit_bytes) {
            return fail(
                "body-limit-bytes",
                format!(
                    "must be between 1 and {} (GitHub sends at most 25 MB)",
                    github_webhook::MAX_BODY_LIMIT
                ),
            );
        }
        self.branch_regex()?;
        if let Some(prefix) = &self.task_label_prefix
            && (prefix.is_empty() || prefix.len() > 40)
        {
            return fail("task-label-prefix", "must be 1 to 40 characters");
        }
        if self.branch_regex()?.is_none() && self.task_label_prefix.is_none() {
            return fail(
                "branch-pattern",
                "is empty and --task-label-prefix is unset: no event could be mapped to a task",
            );
        }
        if self.repositories.is_empty() {
            return fail(
                "repository",
                "at least one repository (owner/name or owner/*) is required",
            );
        }
        for repo in &self.repositories {
            if !valid_repository_pattern(repo) {
                return fail(
                    "repository",
                    format!("{repo:?} is not owner/name or owner/*"),
                );
            }
        }
        if let Some(bad) = self.senders.iter().find(|s| !valid_login(s)) {
            return fail("sender", format!("{bad:?} is not a GitHub login"));
        }
        if !(1..=9).contains(&self.state_write_timeout_seconds) {
            return fail(
                "state-write-timeout-seconds",
                "must be between 1 and 9: GitHub gives up on a delivery after 10 s",
            );
        }
        if !(1..=60).contains(&self.github_lookup_timeout_seconds) {
            return fail("github-lookup-timeout-seconds", "must be between 1 and 60");
        }
        if !(1..=10_000_000).contains(&self.dedupe_cache_size) {
            return fail("dedupe-cache-size", "must be between 1 and 10000000");
        }
        if !(1..=100_000).contains(&self.max_inflight_writes) {
            return fail("max-inflight-writes", "must be between 1 and 100000");
        }
        if !(1..=self.max_inflight_writes).contains(&self.max_concurrent_writes) {
            return fail(
                "max-concurrent-writes",
                "must be between 1 and --max-inflight-writes",
            );
        }
        if !(1..=1_000).contains(&self.coordinator_workers) {
            return fail("coordinator-workers", "must be between 1 and 1000");
        }
        if !(1..=3_600).contains(&self.drain_timeout_seconds) {
            return fail("drain-timeout-seconds", "must be between 1 and 3600");
        }
        if self.identity.trim().is_empty() {
            return fail("identity", "must not be empty");
        }
        let backends = self.backends();
        if backends.needs_kubernetes() && self.namespace.trim().is_empty() {
            return fail("namespace", "must not be empty");
        }
        if backends.needs_github_api() {
            self.github_credentials()?;
        }
        if backends.runs == Backend::Kubernetes {
            self.coderun_config()?;
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

    /// The run resource's description: `--coderun-config-file`, or
    /// supersede's `CodeRun`.
    pub fn coderun_config(&self) -> Result<cancel_coordinator::CodeRunConfig, ConfigError> {
        let Some(path) = &self.coderun_config_file else {
            return Ok(cancel_coordinator::CodeRunConfig::default());
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                return fail(
                    "coderun-config-file",
                    format!("cannot read {}: {e}", path.display()),
                );
            }
        };
        let config: cancel_coordinator::CodeRunConfig = match serde_json::from_str(&text) {
            Ok(config) => config,
            Err(e) => return fail("coderun-config-file", format!("{}: {e}", path.display())),
        };
        if let Err(e) = config.validate() {
            return fail("coderun-config-file", e.to_string());
        }
        Ok(config)
    }

    /// The webhook secrets, current first: `--webhook-secret`, then the
    /// files in order, then `--webhook-secret-previous`.
    pub fn webhook_secrets(&self) -> Result<github_webhook::WebhookSecrets, ConfigError> {
        let mut secrets = Vec::new();
        secrets.extend(self.webhook_secret.clone());
        for path in &self.webhook_secret_files {
            secrets.push(read_secret(path, "webhook-secret-file")?);
        }
        secrets.extend(self.webhook_secret_previous.clone());
        github_webhook::WebhookSecrets::new(secrets).map_err(|e| ConfigError {
            flag: "webhook-secret-file",
            reason: e.to_string(),
        })
    }

    /// The compiled branch pattern (`None` when empty). It must have a
    /// capture named `task`.
    pub fn branch_regex(&self) -> Result<Option<Regex>, ConfigError> {
        if self.branch_pattern.is_empty() {
            return Ok(None);
        }
        let regex = match Regex::new(&self.branch_pattern) {
            Ok(regex) => regex,
            Err(e) => return fail("branch-pattern", e.to_string()),
        };
        if !regex.capture_names().any(|n| n == Some("task")) {
            return fail(
                "branch-pattern",
                "has no named capture `task` (write (?P<task>...))",
            );
        }
        Ok(Some(regex))
    }

    /// The GitHub credentials: a token (file or env) or an App installation.
    pub fn github_credentials(&self) -> Result<GitHubCredentials, ConfigError> {
        let token = match (&self.github_token_file, &self.github_token) {
            (Some(_), Some(_)) => {
                return fail(
                    "github-token-file",
                    "give --github-token-file or --github-token, not both",
                );
            }
            (Some(path), None) => Some(read_secret(path, "github-token-file")?),
            (None, token) => token.clone(),
        };
        let app = (
            self.github_app_id,
            &self.github_app_key_file,
            self.github_installation_id,
        );
        match (token, app) {
            (Some(token), (None, None, None)) => Ok(GitHubCredentials::Token(token)),
            (None, (Some(app_id), Some(key), Some(installation_id))) => {
                Ok(GitHubCredentials::App {
                    app_id,
                    private_key_pem: read_secret(key, "github-app-key-file")?,
                    installation_id,
                })
            }
            (Some(_), _) => fail(
                "github-token-file",
                "a token and GitHub App settings are both given; choose one",
            ),
            (None, (None, None, None)) => fail(
                "github-token-file",
                "no GitHub credentials: give a token (file or env) or --github-app-id, --github-app-key-file and --github-installation-id (or run with --dev)",
            ),
            (None, _) => fail(
                "github-app-id",
                "a GitHub App needs --github-app-id, --github-app-key-file and --github-installation-id together",
            ),
        }
    }

    /// The address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }

    /// The bound on the state write.
    pub fn state_write_timeout(&self) -> Duration {
        Duration::from_secs(self.state_write_timeout_seconds)
    }

    /// The bound on a pull request lookup.
    pub fn github_lookup_timeout(&self) -> Duration {
        Duration::from_secs(self.github_lookup_timeout_seconds)
    }

    /// How long in-flight work gets after SIGTERM.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_seconds)
    }
}

fn read_secret(path: &Path, flag: &'static str) -> Result<SecretString, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let secret = SecretString::from(text.trim().to_owned());
            if secret.expose_secret().is_empty() {
                return fail(flag, format!("{} is empty", path.display()));
            }
            Ok(secret)
        }
        // The error names the path and the OS reason, never the content.
        Err(e) => fail(flag, format!("cannot read {}: {e}", path.display())),
    }
}

fn parse_secret(value: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(value.to_owned()))
}

/// `owner/name` or `owner/*` with GitHub's characters.
fn valid_repository_pattern(pattern: &str) -> bool {
    let Some((owner, name)) = pattern.split_once('/') else {
        return false;
    };
    valid_login(owner)
        && (name == "*"
            || (!name.is_empty()
                && name.len() <= 100
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))))
}

/// A GitHub login: 1–39 alphanumerics or hyphens (bots end in `[bot]`).
fn valid_login(login: &str) -> bool {
    let base = login.strip_suffix("[bot]").unwrap_or(login);
    !base.is_empty()
        && base.len() <= 39
        && base.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config {
            dev: true,
            webhook_secret: Some(SecretString::from("s")),
            repositories: vec!["acme/widgets".into()],
            ..Config::default()
        }
    }

    #[test]
    fn defaults_match_the_command_line_without_flags() {
        let parsed = Config::try_parse_from(["sensor"]).unwrap();
        let default = Config::default();
        assert_eq!(parsed.port, default.port);
        assert_eq!(parsed.body_limit_bytes, 1024 * 1024);
        assert_eq!(parsed.branch_pattern, DEFAULT_BRANCH_PATTERN);
        assert_eq!(parsed.state_write_timeout_seconds, 5);
        assert!(parsed.cancel_on_close && !parsed.dev);
        assert_eq!(parsed.log_format, default.log_format);
        valid().validate().unwrap();
    }

    #[test]
    fn lists_parse_from_repeated_flags_or_commas() {
        let c = Config::try_parse_from([
            "sensor",
            "--repository",
            "acme/widgets,acme/*",
            "--repository",
            "other/x",
            "--sender",
            "agent[bot]",
            "--cancel-on-close",
            "false",
        ])
        .unwrap();
        assert_eq!(c.repositories, ["acme/widgets", "acme/*", "other/x"]);
        assert_eq!(c.senders, ["agent[bot]"]);
        assert!(!c.cancel_on_close);
    }

    #[test]
    fn validation_names_the_bad_flag() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    webhook_secret: None,
                    ..valid()
                },
                "webhook-secret-file",
            ),
            (
                Config {
                    repositories: vec![],
                    ..valid()
                },
                "repository",
            ),
            (
                Config {
                    repositories: vec!["acme".into()],
                    ..valid()
                },
                "repository",
            ),
            (
                Config {
                    branch_pattern: "^task-([0-9]+)".into(),
                    ..valid()
                },
                "branch-pattern",
            ),
            (
                Config {
                    branch_pattern: "(".into(),
                    ..valid()
                },
                "branch-pattern",
            ),
            (
                Config {
                    branch_pattern: String::new(),
                    ..valid()
                },
                "branch-pattern",
            ),
            (
                Config {
                    state_write_timeout_seconds: 10,
                    ..valid()
                },
                "state-write-timeout-seconds",
            ),
            (
                Config {
                    body_limit_bytes: 26 * 1024 * 1024,
                    ..valid()
                },
                "body-limit-bytes",
            ),
            (
                Config {
                    senders: vec!["not a login".into()],
                    ..valid()
                },
                "sender",
            ),
            (
                Config {
                    dev: false,
                    ..valid()
                },
                "github-token-file",
            ),
            (
                Config {
                    dev: false,
                    github_app_id: Some(1),
                    ..valid()
                },
                "github-app-id",
            ),
        ];
        for (config, flag) in cases {
            assert_eq!(config.validate().unwrap_err().flag, flag, "{config:?}");
        }
        let label_only = Config {
            branch_pattern: String::new(),
            task_label_prefix: Some("task-".into()),
            ..valid()
        };
        label_only.validate().unwrap();
    }

    #[test]
    fn each_backend_is_chosen_on_its_own_and_only_what_it_needs_is_required() {
        // Kubernetes through a kubeconfig, GitHub in memory: no credentials.
        let kube_only = Config::try_parse_from([
            "sensor",
            "--repository",
            "acme/widgets",
            "--webhook-secret",
            "s",
            "--github-backend",
            "memory",
        ])
        .unwrap();
        kube_only.validate().unwrap();
        assert_eq!(
            kube_only.backends().describe(),
            "state=kubernetes leases=kubernetes runs=kubernetes github=memory"
        );
        // --dev with runs on Kubernetes reads the run resource's file.
        let runs_on_kube = Config {
            run_backend: Some(Backend::Kubernetes),
            coderun_config_file: Some("/nonexistent/coderun.json".into()),
            ..valid()
        };
        assert_eq!(
            runs_on_kube.validate().unwrap_err().flag,
            "coderun-config-file"
        );
        // --dev with GitHub's API needs its credentials.
        let github_api = Config {
            github_backend: Some(GitHubBackend::Api),
            ..valid()
        };
        assert_eq!(github_api.validate().unwrap_err().flag, "github-token-file");
        assert!(Config::try_parse_from(["sensor", "--state-backend", "etcd"]).is_err());
    }

    #[test]
    fn secrets_come_from_files_in_order_and_are_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join("current");
        let previous = dir.path().join("previous");
        std::fs::write(&current, "new-secret\n").unwrap();
        std::fs::write(&previous, "old-secret").unwrap();
        let config = Config {
            webhook_secret: None,
            webhook_secret_files: vec![current, previous],
            github_token: Some(SecretString::from("ghs_token_value")),
            dev: false,
            ..valid()
        };
        config.validate().unwrap();
        let secrets = config.webhook_secrets().unwrap();
        let body = b"{}";
        let by_old = github_webhook::sign(b"old-secret", body);
        assert_eq!(secrets.verify(Some(&by_old), body), Ok(1));
        let shown = format!("{config:?}");
        assert!(!shown.contains("ghs_token_value"), "{shown}");
        assert!(!shown.contains("new-secret"));
        assert!(matches!(
            config.github_credentials().unwrap(),
            GitHubCredentials::Token(_)
        ));

        let missing = Config {
            webhook_secret_files: vec![dir.path().join("absent")],
            ..valid()
        };
        let error = missing.validate().unwrap_err();
        assert_eq!(error.flag, "webhook-secret-file");
        assert!(error.reason.contains("absent"), "{error}");
    }
}
