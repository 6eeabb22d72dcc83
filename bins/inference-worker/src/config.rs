//! The worker's configuration: every flag is also an environment variable,
//! and [`Config::validate`] rejects nonsense at start with a message that
//! names the flag.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use secrecy::SecretString;
use url::Url;

/// Default TCP port.
pub const DEFAULT_PORT: u16 = 8080;
/// Default jobs running at once.
pub const DEFAULT_MAX_CONCURRENT_JOBS: usize = 64;
/// Default reservation budget in units (prompt tokens + max tokens per job):
/// 64 jobs of 4 096 tokens.
pub const DEFAULT_RESERVATION_BUDGET: u64 = 262_144;
/// Default built-in generator delay per token: a plausible decode step.
pub const DEFAULT_TOKEN_DELAY_MS: u64 = 20;
/// Default time running streams get to end after SIGTERM.
pub const DEFAULT_DRAIN_TIMEOUT_SECONDS: u64 = 10;
/// Default cap on a request's `max_tokens`.
pub const DEFAULT_MAX_TOKENS_LIMIT: u32 = 4_096;
/// Default job deadline.
pub const DEFAULT_JOB_DEADLINE_SECONDS: u64 = 300;
/// Default number of finished jobs remembered for late cancels.
pub const DEFAULT_FINISHED_JOBS_MEMORY: usize = 10_000;

/// Command-line and environment configuration of `inference-worker`.
#[derive(Debug, Clone, Parser)]
#[command(name = "inference-worker", version, about)]
pub struct Config {
    /// TCP port to listen on (0 picks a free one).
    #[arg(long, env = "INFERENCE_WORKER_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Address to bind; loopback unless told otherwise.
    #[arg(long, env = "INFERENCE_WORKER_BIND", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,

    /// Most jobs running at once; more are refused with 429.
    #[arg(long, env = "INFERENCE_WORKER_MAX_CONCURRENT_JOBS", default_value_t = DEFAULT_MAX_CONCURRENT_JOBS)]
    pub max_concurrent_jobs: usize,

    /// Units (prompt tokens + max tokens, a KV-cache stand-in) all running jobs may hold.
    #[arg(long, env = "INFERENCE_WORKER_RESERVATION_BUDGET", default_value_t = DEFAULT_RESERVATION_BUDGET)]
    pub reservation_budget: u64,

    /// Built-in generator: milliseconds per token (one decode step).
    #[arg(long, env = "INFERENCE_WORKER_TOKEN_DELAY_MS", default_value_t = DEFAULT_TOKEN_DELAY_MS)]
    pub token_delay_ms: u64,

    /// OpenAI-compatible server to stream tokens from instead of the built-in generator.
    #[arg(long, env = "INFERENCE_WORKER_UPSTREAM")]
    pub upstream: Option<Url>,

    /// Model name sent to the upstream.
    #[arg(
        long,
        env = "INFERENCE_WORKER_UPSTREAM_MODEL",
        default_value = "default"
    )]
    pub upstream_model: String,

    /// Bearer token for the upstream (never logged).
    #[arg(long, env = "INFERENCE_WORKER_UPSTREAM_API_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub upstream_api_key: Option<SecretString>,

    /// Seconds running streams get to end after SIGTERM before the process exits anyway.
    #[arg(long, env = "INFERENCE_WORKER_DRAIN_TIMEOUT_SECONDS", default_value_t = DEFAULT_DRAIN_TIMEOUT_SECONDS)]
    pub drain_timeout_seconds: u64,

    /// Largest `max_tokens` a request may ask for.
    #[arg(long, env = "INFERENCE_WORKER_MAX_TOKENS_LIMIT", default_value_t = DEFAULT_MAX_TOKENS_LIMIT)]
    pub max_tokens_limit: u32,

    /// Seconds a job may run before it ends with DEADLINE_EXCEEDED.
    #[arg(long, env = "INFERENCE_WORKER_JOB_DEADLINE_SECONDS", default_value_t = DEFAULT_JOB_DEADLINE_SECONDS)]
    pub job_deadline_seconds: u64,

    /// Finished jobs remembered so that late cancels are answered knowingly.
    #[arg(long, env = "INFERENCE_WORKER_FINISHED_JOBS_MEMORY", default_value_t = DEFAULT_FINISHED_JOBS_MEMORY)]
    pub finished_jobs_memory: usize,

    /// Log format.
    #[arg(long, env = "INFERENCE_WORKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
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

/// A configuration value that cannot work, named by its flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --{flag}: {reason}")]
pub struct ConfigError {
    /// The flag, without dashes.
    pub flag: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl Default for Config {
    /// The same values as the command line without flags (ignoring the
    /// environment), for embedding and tests.
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            max_concurrent_jobs: DEFAULT_MAX_CONCURRENT_JOBS,
            reservation_budget: DEFAULT_RESERVATION_BUDGET,
            token_delay_ms: DEFAULT_TOKEN_DELAY_MS,
            upstream: None,
            upstream_model: "default".to_owned(),
            upstream_api_key: None,
            drain_timeout_seconds: DEFAULT_DRAIN_TIMEOUT_SECONDS,
            max_tokens_limit: DEFAULT_MAX_TOKENS_LIMIT,
            job_deadline_seconds: DEFAULT_JOB_DEADLINE_SECONDS,
            finished_jobs_memory: DEFAULT_FINISHED_JOBS_MEMORY,
            log_format: LogFormat::Json,
        }
    }
}

impl Config {
    /// Checks the values together; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn fail(flag: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError {
                flag,
                reason: reason.into(),
            })
        }
        if self.max_concurrent_jobs == 0 {
            return fail("max-concurrent-jobs", "must be at least 1");
        }
        if self.max_tokens_limit == 0 {
            return fail("max-tokens-limit", "must be at least 1");
        }
        if self.reservation_budget < u64::from(self.max_tokens_limit) {
            return fail(
                "reservation-budget",
                format!(
                    "{} is smaller than --max-tokens-limit {}: the largest allowed request could never start",
                    self.reservation_budget, self.max_tokens_limit
                ),
            );
        }
        if self.token_delay_ms > 60_000 {
            return fail(
                "token-delay-ms",
                "must be at most 60000 (one minute per token)",
            );
        }
        if !(1..=3_600).contains(&self.drain_timeout_seconds) {
            return fail("drain-timeout-seconds", "must be between 1 and 3600");
        }
        if !(1..=86_400).contains(&self.job_deadline_seconds) {
            return fail("job-deadline-seconds", "must be between 1 and 86400");
        }
        if self.finished_jobs_memory > 10_000_000 {
            return fail("finished-jobs-memory", "must be at most 10000000");
        }
        if let Some(upstream) = &self.upstream {
            if !matches!(upstream.scheme(), "http" | "https") {
                return fail(
                    "upstream",
                    format!("scheme {:?} is not http or https", upstream.scheme()),
                );
            }
            if upstream.host_str().is_none() {
                return fail("upstream", "has no host");
            }
            if self.upstream_model.trim().is_empty() {
                return fail("upstream-model", "must not be empty when --upstream is set");
            }
        }
        Ok(())
    }

    /// The address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }

    /// The built-in generator's delay per token.
    pub fn token_delay(&self) -> Duration {
        Duration::from_millis(self.token_delay_ms)
    }

    /// How long running streams get after SIGTERM.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_seconds)
    }

    /// How long a job may run.
    pub fn job_deadline(&self) -> Duration {
        Duration::from_secs(self.job_deadline_seconds)
    }
}

fn parse_secret(value: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_command_line_without_flags() {
        let parsed = Config::try_parse_from(["inference-worker"]).unwrap();
        let default = Config::default();
        assert_eq!(parsed.port, default.port);
        assert_eq!(parsed.bind, default.bind);
        assert_eq!(parsed.max_concurrent_jobs, default.max_concurrent_jobs);
        assert_eq!(parsed.reservation_budget, default.reservation_budget);
        assert_eq!(parsed.token_delay_ms, default.token_delay_ms);
        assert_eq!(parsed.drain_timeout_seconds, default.drain_timeout_seconds);
        assert_eq!(parsed.job_deadline_seconds, default.job_deadline_seconds);
        assert_eq!(parsed.log_format, default.log_format);
        assert_eq!(default.listen_addr().to_string(), "127.0.0.1:8080");
        default.validate().unwrap();
    }

    #[test]
    fn flags_parse_and_validation_names_the_bad_flag() {
        let config = Config::try_parse_from([
            "inference-worker",
            "--port",
            "9000",
            "--bind",
            "0.0.0.0",
            "--upstream",
            "http://vllm:8000",
            "--upstream-api-key",
            "sk-1",
            "--log-format",
            "text",
        ])
        .unwrap();
        assert_eq!(config.listen_addr().to_string(), "0.0.0.0:9000");
        assert_eq!(config.log_format, LogFormat::Text);
        config.validate().unwrap();

        let bad = Config {
            max_concurrent_jobs: 0,
            ..Config::default()
        };
        assert_eq!(bad.validate().unwrap_err().flag, "max-concurrent-jobs");
        let bad = Config {
            reservation_budget: 10,
            ..Config::default()
        };
        let error = bad.validate().unwrap_err();
        assert_eq!(error.flag, "reservation-budget");
        assert!(
            error
                .to_string()
                .starts_with("invalid --reservation-budget: 10 is smaller")
        );
        let bad = Config {
            upstream: Some(Url::parse("ftp://x").unwrap()),
            ..Config::default()
        };
        assert_eq!(bad.validate().unwrap_err().flag, "upstream");
        assert!(Config::try_parse_from(["inference-worker", "--port", "http"]).is_err());
    }
}
