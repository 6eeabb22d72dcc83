//! The runner's configuration: every setting is a flag and an environment
//! variable (the flag wins), checked at start by [`Config::validate`] with a
//! message that names the flag.
//!
//! Rule kept here: durations are whole seconds in the flags (`*_SECONDS` in
//! the environment), and [`Config::settings`] is the only place that turns
//! them into the [`Settings`] the runner uses, so tests can build `Settings`
//! with sub-second values directly.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use url::Url;

use crate::filter::Severity;

/// Version line of `--version`: version, git commit and build date.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("AGENT_RUNNER_GIT_COMMIT"),
    ", built ",
    env!("AGENT_RUNNER_BUILD_DATE"),
    ")"
);
/// The git commit the binary was built from (`unknown` outside a checkout).
pub const GIT_COMMIT: &str = env!("AGENT_RUNNER_GIT_COMMIT");
/// The date the binary was built (`YYYY-MM-DD`, UTC).
pub const BUILD_DATE: &str = env!("AGENT_RUNNER_BUILD_DATE");

/// Default minimum severity that gets an agent.
pub const DEFAULT_MIN_SEVERITY: Severity = Severity::Warning;
/// Default window in which a repeated incident id is a duplicate.
pub const DEFAULT_DUPLICATE_WINDOW_SECONDS: u64 = 300;
/// Default number of incident ids remembered per stream for duplicate detection.
pub const DEFAULT_DUPLICATE_CACHE_SIZE: usize = 10_000;
/// Default queue capacity.
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 1_000;
/// Default age after which a queued incident is dropped.
pub const DEFAULT_MAX_QUEUE_AGE_SECONDS: u64 = 600;
/// Default interval between sweeps for expired incidents.
pub const DEFAULT_QUEUE_SWEEP_INTERVAL_SECONDS: u64 = 60;
/// Default agents running at once.
pub const DEFAULT_MAX_CONCURRENT_AGENTS: usize = 4;
/// Default time an agent may run.
pub const DEFAULT_AGENT_TIMEOUT_SECONDS: u64 = 300;
/// Default time between SIGTERM and SIGKILL.
pub const DEFAULT_AGENT_KILL_GRACE_SECONDS: u64 = 5;
/// Default bytes of stdout (and of stderr) kept per agent.
pub const DEFAULT_AGENT_OUTPUT_LIMIT_BYTES: usize = 64 * 1024;
/// Default consecutive agent failures that open the breaker.
pub const DEFAULT_BREAKER_FAILURE_THRESHOLD: u32 = 5;
/// Default time the breaker stays open before a probe.
pub const DEFAULT_BREAKER_COOL_DOWN_SECONDS: u64 = 60;
/// Default first reconnection delay.
pub const DEFAULT_SSE_RECONNECT_INITIAL_DELAY_SECONDS: u64 = 1;
/// Default largest reconnection delay (before ±25 % jitter).
pub const DEFAULT_SSE_RECONNECT_MAX_DELAY_SECONDS: u64 = 60;
/// Default silence after which a stream is reconnected.
pub const DEFAULT_SSE_IDLE_TIMEOUT_SECONDS: u64 = 120;
/// Default bound on the time to response headers.
pub const DEFAULT_SSE_CONNECT_TIMEOUT_SECONDS: u64 = 10;
/// Default largest event accepted from a stream.
pub const DEFAULT_SSE_MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Default metrics port.
pub const DEFAULT_METRICS_PORT: u16 = 9090;
/// Default health (and API) port.
pub const DEFAULT_HEALTH_PORT: u16 = 8080;
/// Default time running agents get after SIGTERM before they are stopped.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: u64 = 30;

/// Command-line and environment configuration of `agent-runner`.
#[derive(Debug, Clone, Parser)]
#[command(name = "agent-runner", version = VERSION, about, long_about = None)]
pub struct Config {
    /// An incident stream as NAME=URL (repeatable; in STREAMS, comma-separated).
    /// NAME is the cluster label on logs and metrics: 1-63 of a-z, 0-9, '-', '_', '.',
    /// starting and ending with a letter or digit. URL is http(s).
    #[arg(
        long = "stream",
        env = "STREAMS",
        value_name = "NAME=URL",
        value_delimiter = ',',
        required = true
    )]
    pub streams: Vec<StreamSource>,

    /// Lowest severity that gets an agent (info < warning < error < critical).
    #[arg(long, env = "MIN_SEVERITY", value_enum, ignore_case = true, default_value_t = DEFAULT_MIN_SEVERITY)]
    pub min_severity: Severity,

    /// Seconds during which a repeated incident id (per stream) is a duplicate. 1-86400.
    #[arg(long = "duplicate-window", env = "DUPLICATE_WINDOW_SECONDS", value_name = "SECONDS", default_value_t = DEFAULT_DUPLICATE_WINDOW_SECONDS)]
    pub duplicate_window_seconds: u64,

    /// Incident ids remembered per stream for duplicate detection (oldest forgotten first). 1-1000000.
    #[arg(long, env = "DUPLICATE_CACHE_SIZE", default_value_t = DEFAULT_DUPLICATE_CACHE_SIZE)]
    pub duplicate_cache_size: usize,

    /// Incidents waiting for an agent at most; when full, a more severe incident evicts
    /// the least severe. 1-100000.
    #[arg(long, env = "MAX_QUEUE_SIZE", default_value_t = DEFAULT_MAX_QUEUE_SIZE)]
    pub max_queue_size: usize,

    /// Seconds an incident may wait in the queue before it is dropped as stale. 1-86400.
    #[arg(long = "max-queue-age", env = "MAX_QUEUE_AGE_SECONDS", value_name = "SECONDS", default_value_t = DEFAULT_MAX_QUEUE_AGE_SECONDS)]
    pub max_queue_age_seconds: u64,

    /// Seconds between sweeps that drop (and log) stale incidents. 1-3600.
    #[arg(long = "queue-sweep-interval", env = "QUEUE_SWEEP_INTERVAL_SECONDS", value_name = "SECONDS", default_value_t = DEFAULT_QUEUE_SWEEP_INTERVAL_SECONDS)]
    pub queue_sweep_interval_seconds: u64,

    /// The agent program and its arguments: whitespace-separated words, or a JSON array
    /// of strings (exec form) when an argument contains spaces. The incident JSON is
    /// written to its stdin; INCIDENT_ID, CLUSTER and SEVERITY are set; its working
    /// directory is a fresh temporary directory removed afterwards.
    #[arg(long, env = "AGENT_COMMAND", value_name = "COMMAND")]
    pub agent_command: AgentCommand,

    /// Agents running at once. 1-1024.
    #[arg(long, env = "MAX_CONCURRENT_AGENTS", default_value_t = DEFAULT_MAX_CONCURRENT_AGENTS)]
    pub max_concurrent_agents: usize,

    /// Seconds an agent may run before SIGTERM (then SIGKILL after the kill grace). 1-86400.
    #[arg(long = "agent-timeout", env = "AGENT_TIMEOUT_SECONDS", value_name = "SECONDS", default_value_t = DEFAULT_AGENT_TIMEOUT_SECONDS)]
    pub agent_timeout_seconds: u64,

    /// Seconds between SIGTERM and SIGKILL when an agent is stopped. 1-300.
    #[arg(long = "agent-kill-grace", env = "AGENT_KILL_GRACE_SECONDS", value_name = "SECONDS", default_value_t = DEFAULT_AGENT_KILL_GRACE_SECONDS)]
    pub agent_kill_grace_seconds: u64,

    /// Bytes of stdout, and of stderr, kept (the last ones) and logged per agent. 0-16777216.
    #[arg(long = "agent-output-limit", env = "AGENT_OUTPUT_LIMIT_BYTES", value_name = "BYTES", default_value_t = DEFAULT_AGENT_OUTPUT_LIMIT_BYTES)]
    pub agent_output_limit_bytes: usize,

    /// Directory in which each agent's temporary workspace is created (default: the
    /// system temporary directory).
    #[arg(long, env = "AGENT_WORKSPACE_ROOT", value_name = "DIR")]
    pub workspace_root: Option<PathBuf>,

    /// Consecutive agent failures (non-zero exit, timeout, spawn error) that open the
    /// circuit breaker. 1-1000.
    #[arg(long, env = "BREAKER_FAILURE_THRESHOLD", default_value_t = DEFAULT_BREAKER_FAILURE_THRESHOLD)]
    pub breaker_failure_threshold: u32,

    /// Seconds the breaker stays open (incidents dropped) before one probe agent runs. 1-3600.
    #[arg(long = "breaker-cool-down", env = "BREAKER_COOL_DOWN_SECONDS", value_name = "SECONDS", default_value_t = DEFAULT_BREAKER_COOL_DOWN_SECONDS)]
    pub breaker_cool_down_seconds: u64,

    /// First delay before reconnecting a stream (doubles per failure, ±25 % jitter). 1-3600.
    #[arg(long = "sse-reconnect-initial-delay", env = "SSE_RECONNECT_INITIAL_DELAY_SECONDS", value_name = "SECONDS", default_value_t = DEFAULT_SSE_RECONNECT_INITIAL_DELAY_SECONDS)]
    pub sse_reconnect_initial_delay_seconds: u64,

    /// Largest reconnection delay before jitter; also caps a server's retry: field.
    /// At least the initial delay, at most 3600.
    #[arg(long = "sse-reconnect-max-delay", env = "SSE_RECONNECT_MAX_DELAY_SECONDS", value_name = "SECONDS", default_value_t = DEFAULT_SSE_RECONNECT_MAX_DELAY_SECONDS)]
    pub sse_reconnect_max_delay_seconds: u64,

    /// Seconds without any byte (heartbeats count) after which a stream is reconnected;
    /// 0 disables. 0-86400.
    #[arg(long = "sse-idle-timeout", env = "SSE_IDLE_TIMEOUT_SECONDS", value_name = "SECONDS", default_value_t = DEFAULT_SSE_IDLE_TIMEOUT_SECONDS)]
    pub sse_idle_timeout_seconds: u64,

    /// Seconds to wait for a stream's response headers. 1-300.
    #[arg(long = "sse-connect-timeout", env = "SSE_CONNECT_TIMEOUT_SECONDS", value_name = "SECONDS", default_value_t = DEFAULT_SSE_CONNECT_TIMEOUT_SECONDS)]
    pub sse_connect_timeout_seconds: u64,

    /// Largest event (or line) accepted from a stream; a larger one ends the connection.
    /// 1024-67108864.
    #[arg(long = "sse-max-event-size", env = "SSE_MAX_EVENT_BYTES", value_name = "BYTES", default_value_t = DEFAULT_SSE_MAX_EVENT_BYTES)]
    pub sse_max_event_bytes: usize,

    /// Address the metrics and health ports bind to. Loopback by default; in a
    /// cluster use 0.0.0.0 so the kubelet and Prometheus can reach them.
    #[arg(long, env = "BIND_ADDRESS", value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,

    /// Port serving /metrics (0 picks a free one; equal to --health-port serves both on one).
    #[arg(long, env = "METRICS_PORT", default_value_t = DEFAULT_METRICS_PORT)]
    pub metrics_port: u16,

    /// Port serving /healthz, /readyz and the /v1/agents API (0 picks a free one).
    #[arg(long, env = "HEALTH_PORT", default_value_t = DEFAULT_HEALTH_PORT)]
    pub health_port: u16,

    /// Seconds running agents get to finish after SIGTERM before they are stopped. 1-3600.
    #[arg(long = "shutdown-timeout", env = "SHUTDOWN_TIMEOUT_SECONDS", value_name = "SECONDS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT_SECONDS)]
    pub shutdown_timeout_seconds: u64,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Log filter (tracing-subscriber EnvFilter syntax, e.g. "info,agent_runner=debug").
    #[arg(long, env = "LOG_FILTER", default_value = "info")]
    pub log_filter: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable text.
    Text,
}

/// One `--stream NAME=URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSource {
    /// The cluster label.
    pub cluster: String,
    /// The SSE endpoint.
    pub url: Url,
}

impl FromStr for StreamSource {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let (name, url) = value
            .split_once('=')
            .ok_or_else(|| format!("{value:?} is not NAME=URL"))?;
        let name = name.trim();
        validate_cluster_name(name)?;
        let url = Url::parse(url.trim()).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{url} must be http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{url} has no host"));
        }
        Ok(Self {
            cluster: name.to_owned(),
            url,
        })
    }
}

impl fmt::Display for StreamSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.cluster, self.url)
    }
}

/// The agent program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCommand {
    /// The program (looked up in PATH when it has no slash).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
}

impl FromStr for AgentCommand {
    type Err = String;

    /// `prog arg1 arg2` (split on whitespace) or `["prog", "arg with space"]`.
    fn from_str(value: &str) -> Result<Self, String> {
        let trimmed = value.trim();
        let words: Vec<String> = if trimmed.starts_with('[') {
            serde_json::from_str(trimmed)
                .map_err(|e| format!("{trimmed:?} is not a JSON array of strings: {e}"))?
        } else {
            trimmed.split_whitespace().map(str::to_owned).collect()
        };
        let mut words = words.into_iter();
        let program = words
            .next()
            .filter(|p| !p.trim().is_empty())
            .ok_or("must name a program")?;
        Ok(Self {
            program,
            args: words.collect(),
        })
    }
}

impl AgentCommand {
    /// The command with a relative program path (`./agent.sh`,
    /// `agents/run`) made absolute against the current directory: agents
    /// run in their own workspace, where a relative path would not resolve.
    /// A bare name (`python3`) is left for the PATH lookup.
    pub fn absolute(&self) -> Self {
        let program = std::path::Path::new(&self.program);
        let program = if program.is_relative() && program.components().count() > 1 {
            std::env::current_dir()
                .map(|dir| dir.join(program).to_string_lossy().into_owned())
                .unwrap_or_else(|_| self.program.clone())
        } else {
            self.program.clone()
        };
        Self {
            program,
            args: self.args.clone(),
        }
    }
}

impl fmt::Display for AgentCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
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

impl Config {
    /// Checks every value and their combinations; the first problem found
    /// is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let range = |flag: &'static str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else if min == 1 && value == 0 {
                Err(ConfigError {
                    flag,
                    reason: format!("must be positive (1 to {max}), got 0"),
                })
            } else {
                Err(ConfigError {
                    flag,
                    reason: format!("must be between {min} and {max}, got {value}"),
                })
            }
        };
        let size = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        if self.streams.is_empty() {
            return Err(ConfigError {
                flag: "stream",
                reason: "at least one NAME=URL is required".to_owned(),
            });
        }
        let mut names = HashSet::new();
        for stream in &self.streams {
            if !names.insert(stream.cluster.as_str()) {
                return Err(ConfigError {
                    flag: "stream",
                    reason: format!("cluster name {:?} is used twice", stream.cluster),
                });
            }
        }
        range("duplicate-window", self.duplicate_window_seconds, 1, 86_400)?;
        range(
            "duplicate-cache-size",
            size(self.duplicate_cache_size),
            1,
            1_000_000,
        )?;
        range("max-queue-size", size(self.max_queue_size), 1, 100_000)?;
        range("max-queue-age", self.max_queue_age_seconds, 1, 86_400)?;
        range(
            "queue-sweep-interval",
            self.queue_sweep_interval_seconds,
            1,
            3_600,
        )?;
        range(
            "max-concurrent-agents",
            size(self.max_concurrent_agents),
            1,
            1_024,
        )?;
        range("agent-timeout", self.agent_timeout_seconds, 1, 86_400)?;
        range("agent-kill-grace", self.agent_kill_grace_seconds, 1, 300)?;
        range(
            "agent-output-limit",
            size(self.agent_output_limit_bytes),
            0,
            16 * 1024 * 1024,
        )?;
        let program = std::path::Path::new(&self.agent_command.program);
        if program.components().count() > 1 && !program.is_file() {
            return Err(ConfigError {
                flag: "agent-command",
                reason: format!("{} is not a file", program.display()),
            });
        }
        if let Some(root) = &self.workspace_root
            && !root.is_dir()
        {
            return Err(ConfigError {
                flag: "workspace-root",
                reason: format!("{} is not an existing directory", root.display()),
            });
        }
        range(
            "breaker-failure-threshold",
            u64::from(self.breaker_failure_threshold),
            1,
            1_000,
        )?;
        range(
            "breaker-cool-down",
            self.breaker_cool_down_seconds,
            1,
            3_600,
        )?;
        range(
            "sse-reconnect-initial-delay",
            self.sse_reconnect_initial_delay_seconds,
            1,
            3_600,
        )?;
        range(
            "sse-reconnect-max-delay",
            self.sse_reconnect_max_delay_seconds,
            self.sse_reconnect_initial_delay_seconds.max(1),
            3_600,
        )?;
        range("sse-idle-timeout", self.sse_idle_timeout_seconds, 0, 86_400)?;
        range(
            "sse-connect-timeout",
            self.sse_connect_timeout_seconds,
            1,
            300,
        )?;
        range(
            "sse-max-event-size",
            size(self.sse_max_event_bytes),
            1_024,
            64 * 1024 * 1024,
        )?;
        range("shutdown-timeout", self.shutdown_timeout_seconds, 1, 3_600)?;
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log_filter) {
            return Err(ConfigError {
                flag: "log-filter",
                reason: error.to_string(),
            });
        }
        Ok(())
    }

    /// The validated values as the runner uses them.
    pub fn settings(&self) -> Settings {
        let secs = Duration::from_secs;
        Settings {
            streams: self.streams.clone(),
            min_severity: self.min_severity,
            duplicate_window: secs(self.duplicate_window_seconds),
            duplicate_cache_size: self.duplicate_cache_size,
            max_queue_size: self.max_queue_size,
            max_queue_age: secs(self.max_queue_age_seconds),
            queue_sweep_interval: secs(self.queue_sweep_interval_seconds),
            agent_command: self.agent_command.absolute(),
            max_concurrent_agents: self.max_concurrent_agents,
            agent_timeout: secs(self.agent_timeout_seconds),
            agent_kill_grace: secs(self.agent_kill_grace_seconds),
            agent_output_limit: self.agent_output_limit_bytes,
            workspace_root: self.workspace_root.clone(),
            breaker_failure_threshold: self.breaker_failure_threshold,
            breaker_cool_down: secs(self.breaker_cool_down_seconds),
            sse_reconnect_initial_delay: secs(self.sse_reconnect_initial_delay_seconds),
            sse_reconnect_max_delay: secs(self.sse_reconnect_max_delay_seconds),
            sse_idle_timeout: (self.sse_idle_timeout_seconds > 0)
                .then(|| secs(self.sse_idle_timeout_seconds)),
            sse_connect_timeout: secs(self.sse_connect_timeout_seconds),
            sse_max_event_bytes: self.sse_max_event_bytes,
            metrics_addr: SocketAddr::new(self.bind, self.metrics_port),
            health_addr: SocketAddr::new(self.bind, self.health_port),
            shutdown_timeout: secs(self.shutdown_timeout_seconds),
        }
    }
}

/// What the runner needs, with durations as [`Duration`]s. Built from a
/// validated [`Config`] by [`Config::settings`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// The incident streams.
    pub streams: Vec<StreamSource>,
    /// Lowest severity that gets an agent.
    pub min_severity: Severity,
    /// Window in which a repeated incident id is a duplicate.
    pub duplicate_window: Duration,
    /// Incident ids remembered per stream.
    pub duplicate_cache_size: usize,
    /// Queue capacity.
    pub max_queue_size: usize,
    /// Age at which a queued incident is dropped.
    pub max_queue_age: Duration,
    /// Interval between expiry sweeps.
    pub queue_sweep_interval: Duration,
    /// The agent program.
    pub agent_command: AgentCommand,
    /// Agents running at once.
    pub max_concurrent_agents: usize,
    /// Time an agent may run.
    pub agent_timeout: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub agent_kill_grace: Duration,
    /// Bytes kept of each of an agent's stdout and stderr.
    pub agent_output_limit: usize,
    /// Where workspaces are created; `None` for the system temporary directory.
    pub workspace_root: Option<PathBuf>,
    /// Consecutive failures that open the breaker.
    pub breaker_failure_threshold: u32,
    /// Time the breaker stays open.
    pub breaker_cool_down: Duration,
    /// First reconnection delay.
    pub sse_reconnect_initial_delay: Duration,
    /// Largest reconnection delay before jitter.
    pub sse_reconnect_max_delay: Duration,
    /// Silence after which a stream reconnects; `None` never.
    pub sse_idle_timeout: Option<Duration>,
    /// Bound on the time to response headers.
    pub sse_connect_timeout: Duration,
    /// Largest event accepted.
    pub sse_max_event_bytes: usize,
    /// Where /metrics is served.
    pub metrics_addr: SocketAddr,
    /// Where /healthz, /readyz and /v1/agents are served.
    pub health_addr: SocketAddr,
    /// Time agents get to finish after SIGTERM.
    pub shutdown_timeout: Duration,
}

fn validate_cluster_name(name: &str) -> Result<(), String> {
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > 63 {
        return Err(format!("cluster name {name:?} must be 1 to 63 characters"));
    }
    if !name.chars().all(valid_char) || !edge(name.chars().next()) || !edge(name.chars().last()) {
        return Err(format!(
            "cluster name {name:?} may contain only a-z, 0-9, '-', '_' and '.', and must start and end with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut argv = vec!["agent-runner"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv)
    }

    fn minimal() -> Vec<&'static str> {
        vec![
            "--stream",
            "prod=http://127.0.0.1:7070/events",
            "--agent-command",
            "echo",
        ]
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let config = parse(&minimal()).unwrap();
        config.validate().unwrap();
        assert_eq!(config.min_severity, Severity::Warning);
        assert_eq!(config.max_queue_age_seconds, 600);
        assert_eq!(config.queue_sweep_interval_seconds, 60);
        assert_eq!(config.agent_timeout_seconds, 300);
        assert_eq!(config.agent_kill_grace_seconds, 5);
        assert_eq!(config.metrics_port, 9090);
        assert_eq!(config.health_port, 8080);
        assert_eq!(config.shutdown_timeout_seconds, 30);
        assert_eq!(config.sse_reconnect_initial_delay_seconds, 1);
        assert_eq!(config.sse_reconnect_max_delay_seconds, 60);
        assert_eq!(config.bind, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn streams_are_repeatable_and_comma_separated() {
        let config = parse(&[
            "--stream",
            "prod=https://a.example/events,staging=http://b.example:8080/",
            "--stream",
            "dev=http://127.0.0.1:1/",
            "--agent-command",
            "echo",
        ])
        .unwrap();
        let names: Vec<_> = config.streams.iter().map(|s| s.cluster.as_str()).collect();
        assert_eq!(names, ["prod", "staging", "dev"]);
        config.validate().unwrap();
    }

    #[test]
    fn bad_stream_values_are_rejected_with_the_reason() {
        for (value, needle) in [
            ("prod", "NAME=URL"),
            ("Prod=http://x/", "may contain only"),
            ("prod-=http://x/", "must start and end"),
            ("=http://x/", "1 to 63"),
            ("prod=ftp://x/", "http or https"),
            ("prod=not a url", "not a URL"),
        ] {
            let err = parse(&["--stream", value, "--agent-command", "echo"]).unwrap_err();
            assert!(err.to_string().contains(needle), "{value}: {err}");
        }
        let twice = parse(&[
            "--stream",
            "a=http://x/",
            "--stream",
            "a=http://y/",
            "--agent-command",
            "echo",
        ])
        .unwrap();
        assert_eq!(
            twice.validate().unwrap_err().to_string(),
            "invalid --stream: cluster name \"a\" is used twice"
        );
    }

    #[test]
    fn agent_timeout_must_be_positive() {
        let mut args = minimal();
        args.extend(["--agent-timeout", "0"]);
        let err = parse(&args).unwrap().validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --agent-timeout: must be positive (1 to 86400), got 0"
        );
    }

    #[test]
    fn max_delay_below_initial_delay_is_rejected() {
        let mut args = minimal();
        args.extend([
            "--sse-reconnect-initial-delay",
            "10",
            "--sse-reconnect-max-delay",
            "5",
        ]);
        let err = parse(&args).unwrap().validate().unwrap_err();
        assert_eq!(err.flag, "sse-reconnect-max-delay");
    }

    #[test]
    fn agent_command_takes_words_or_a_json_array() {
        let words: AgentCommand = "python3 -m agent --fast".parse().unwrap();
        assert_eq!(words.program, "python3");
        assert_eq!(words.args, ["-m", "agent", "--fast"]);
        let exec: AgentCommand = r#"["/bin/sh", "-c", "echo hi; exit 3"]"#.parse().unwrap();
        assert_eq!(exec.args, ["-c", "echo hi; exit 3"]);
        assert!("".parse::<AgentCommand>().is_err());
        assert!("[]".parse::<AgentCommand>().is_err());
        assert!("[1, 2]".parse::<AgentCommand>().is_err());
    }

    #[test]
    fn relative_agent_paths_are_checked_and_made_absolute() {
        let missing = parse(&[
            "--stream",
            "prod=http://127.0.0.1:7070/",
            "--agent-command",
            "./no/such/agent.sh",
        ])
        .unwrap();
        assert_eq!(missing.validate().unwrap_err().flag, "agent-command");
        let relative: AgentCommand = "src/lib.rs --x".parse().unwrap();
        let absolute = relative.absolute();
        assert!(std::path::Path::new(&absolute.program).is_absolute());
        assert!(absolute.program.ends_with("src/lib.rs"));
        assert_eq!(absolute.args, ["--x"]);
        let bare: AgentCommand = "python3".parse().unwrap();
        assert_eq!(bare.absolute(), bare, "left to the PATH lookup");
    }

    #[test]
    fn severity_is_case_insensitive() {
        let mut args = minimal();
        args.extend(["--min-severity", "CRITICAL"]);
        assert_eq!(parse(&args).unwrap().min_severity, Severity::Critical);
    }

    #[test]
    fn version_names_commit_and_build_date() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(VERSION.contains(&format!("commit {GIT_COMMIT}")));
        assert_eq!(BUILD_DATE.len(), 10, "YYYY-MM-DD: {BUILD_DATE}");
    }

    #[test]
    fn settings_turn_zero_idle_timeout_into_none() {
        let mut args = minimal();
        args.extend(["--sse-idle-timeout", "0"]);
        let config = parse(&args).unwrap();
        config.validate().unwrap();
        assert_eq!(config.settings().sse_idle_timeout, None);
        assert_eq!(
            parse(&minimal()).unwrap().settings().sse_idle_timeout,
            Some(Duration::from_secs(120))
        );
    }
}
