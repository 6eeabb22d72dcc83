//! The gateway's configuration: every setting is a flag and an environment
//! variable (the flag wins), checked at start by [`Config::validate`] with
//! a message that names the flag.
//!
//! Rule kept here: durations are whole seconds in the flags (`*_SECONDS`
//! in the environment); [`Config::settings`] is the only place that turns
//! them into the [`Settings`] the gateway runs with, so tests build
//! `Settings` with sub-second values directly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::Error;

/// Default port of the API, the probes and `/metrics`.
pub const DEFAULT_PORT: u16 = 8080;
/// Default largest request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default lease duration of a creation lock.
pub const DEFAULT_LEASE_DURATION_SECONDS: u64 = 15;
/// Default longest wait for a contender that holds a fingerprint's lock.
pub const DEFAULT_LOCK_TIMEOUT_SECONDS: u64 = 10;
/// Default time in-flight requests get after SIGTERM.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: u64 = 20;
/// Default longest wait for one RemediationRequest API call.
pub const DEFAULT_API_TIMEOUT_SECONDS: u64 = 10;

/// Command-line and environment configuration of `gateway`.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway", version, about, long_about = None)]
pub struct Config {
    /// Port serving the API, /healthz, /readyz and /metrics (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Address to bind. Loopback by default; in a cluster use 0.0.0.0.
    #[arg(long, env = "BIND_ADDRESS", value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,

    /// Run on in-memory backends: no cluster, nothing durable (a laptop demo).
    #[arg(long, env = "DEV")]
    pub dev: bool,

    /// Namespace of the RemediationRequests and of the Leases.
    #[arg(long, env = "NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// This replica's name in Lease holder identities (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "gateway")]
    pub identity: String,

    /// Largest request body accepted (larger: 413). 1024-67108864.
    #[arg(long = "max-body-bytes", env = "MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Seconds a creation lock lasts without renewal (a killed replica's
    /// fingerprints are taken over after this). 3-300.
    #[arg(long = "lease-duration", env = "LEASE_DURATION_SECONDS", value_name = "SECONDS", default_value_t = DEFAULT_LEASE_DURATION_SECONDS)]
    pub lease_duration_seconds: u64,

    /// Seconds a delivery waits for another replica creating its request
    /// before it is answered 500. 1-300.
    #[arg(long = "lock-timeout", env = "LOCK_TIMEOUT_SECONDS", value_name = "SECONDS", default_value_t = DEFAULT_LOCK_TIMEOUT_SECONDS)]
    pub lock_timeout_seconds: u64,

    /// Seconds one RemediationRequest API call may take before it is
    /// given up and retried (a server that never answers would otherwise
    /// hold the delivery for minutes). 1-60.
    #[arg(long = "api-timeout", env = "API_TIMEOUT_SECONDS", value_name = "SECONDS", default_value_t = DEFAULT_API_TIMEOUT_SECONDS)]
    pub api_timeout_seconds: u64,

    /// Seconds in-flight requests get to finish after SIGTERM. 1-300.
    #[arg(long = "shutdown-timeout", env = "SHUTDOWN_TIMEOUT_SECONDS", value_name = "SECONDS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT_SECONDS)]
    pub shutdown_timeout_seconds: u64,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Log filter (tracing-subscriber EnvFilter syntax).
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

/// What the gateway runs with (built by [`Config::settings`], or directly).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Namespace of the requests and Leases.
    pub namespace: String,
    /// Holder identity prefix.
    pub identity: String,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Lease duration of a creation lock (renewed every third).
    pub lease_duration: Duration,
    /// Longest wait for a contender.
    pub lock_timeout: Duration,
    /// Longest wait for one RemediationRequest API call.
    pub api_timeout: Duration,
    /// Time in-flight requests get after SIGTERM.
    pub shutdown_timeout: Duration,
}

impl Settings {
    /// Defaults for `namespace` and `identity`.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            identity: identity.into(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            lease_duration: Duration::from_secs(DEFAULT_LEASE_DURATION_SECONDS),
            lock_timeout: Duration::from_secs(DEFAULT_LOCK_TIMEOUT_SECONDS),
            api_timeout: Duration::from_secs(DEFAULT_API_TIMEOUT_SECONDS),
            shutdown_timeout: Duration::from_secs(DEFAULT_SHUTDOWN_TIMEOUT_SECONDS),
        }
    }
}

impl Config {
    /// Checks every value; the message names the flag.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |flag: &str, m: &str| Err(Error::Config(format!("--{flag} {m}")));
        if self.namespace.is_empty()
            || self.namespace.len() > 63
            || !self
                .namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return fail("namespace", "must be a DNS label (1-63 of a-z, 0-9, '-')");
        }
        if self.identity.is_empty() || self.identity.chars().any(char::is_control) {
            return fail("identity", "must be non-empty printable text");
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            return fail("max-body-bytes", "must be 1024-67108864");
        }
        if !(3..=300).contains(&self.lease_duration_seconds) {
            return fail("lease-duration", "must be 3-300 seconds");
        }
        if !(1..=300).contains(&self.lock_timeout_seconds) {
            return fail("lock-timeout", "must be 1-300 seconds");
        }
        if !(1..=60).contains(&self.api_timeout_seconds) {
            return fail("api-timeout", "must be 1-60 seconds");
        }
        if !(1..=300).contains(&self.shutdown_timeout_seconds) {
            return fail("shutdown-timeout", "must be 1-300 seconds");
        }
        Ok(())
    }

    /// The settings these flags mean.
    pub fn settings(&self) -> Settings {
        Settings {
            namespace: self.namespace.clone(),
            identity: self.identity.clone(),
            max_body_bytes: self.max_body_bytes,
            lease_duration: Duration::from_secs(self.lease_duration_seconds),
            lock_timeout: Duration::from_secs(self.lock_timeout_seconds),
            api_timeout: Duration::from_secs(self.api_timeout_seconds),
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_seconds),
        }
    }

    /// Where to listen.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_flag() {
        let ok = Config::try_parse_from(["gateway"]).unwrap();
        assert!(ok.validate().is_ok());
        assert_eq!(ok.port, 8080);
        for (args, flag) in [
            (vec!["gateway", "--namespace", "Bad_NS"], "--namespace"),
            (vec!["gateway", "--lease-duration", "1"], "--lease-duration"),
            (vec!["gateway", "--api-timeout", "0"], "--api-timeout"),
            (vec!["gateway", "--api-timeout", "61"], "--api-timeout"),
            (
                vec!["gateway", "--max-body-bytes", "10"],
                "--max-body-bytes",
            ),
        ] {
            let err = Config::try_parse_from(args)
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains(flag), "{err}");
        }
    }
}
