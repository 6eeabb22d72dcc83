#![doc = include_str!("../README.md")]
//!
//! `agent-runner`: runs an AI agent process for each incident that arrives
//! on Server-Sent Events streams (one per cluster), with filtering, an
//! expiring queue, timeouts that stop agents gracefully (SIGTERM to the
//! process group, a kill grace, SIGKILL), a circuit breaker over agent
//! failures, Prometheus metrics, health probes and a drain on shutdown.
//!
//! - [`config`]: flags and environment variables, validated at start.
//! - `connection`: one WARN line per failed stream connection, one INFO line
//!   per reconnection with its downtime.
//! - [`filter`]: incidents, severities and the duplicate window.
//! - [`runner`]: streams ▸ filter ▸ queue ▸ breaker ▸ agents, and the drain.
//! - [`agent`]: one agent process, its workspace, output and timeout.
//! - `supervise`: background loops restarted after a panic, never dead silently.
//! - [`metrics`]: the `agent_runner_*` families.
//! - [`api`]: `/metrics` and `/v1/agents`.
//!
//! The library runs the whole service in-process (tests do); `src/main.rs`
//! adds logging and signal handling. See `docs/agent-runner.md`.

pub mod agent;
pub mod api;
pub mod config;
mod connection;
pub mod filter;
pub mod metrics;
pub mod runner;
mod supervise;

use std::net::SocketAddr;

pub use config::{Config, ConfigError, LogFormat, Settings};
pub use filter::{Incident, Severity};
pub use metrics::{AgentStatus, Metrics};
pub use runner::{AgentInfo, RunReport, Runner};

/// Why the runner could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A stream's client could not be built.
    #[error("stream {cluster}: {source}")]
    Stream {
        /// The stream's cluster name.
        cluster: String,
        /// What went wrong.
        #[source]
        source: resilience::Error,
    },
    /// A resilience mechanism failed (signal handlers).
    #[error(transparent)]
    Resilience(#[from] resilience::Error),
}

impl Error {
    /// Whether starting again later may succeed: a port in use may be freed;
    /// configuration problems stay until fixed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Config(_) | Error::Stream { .. } => false,
            Error::Bind { source, .. } => source.kind() == std::io::ErrorKind::AddrInUse,
            Error::Resilience(error) => error.is_transient(),
        }
    }
}
