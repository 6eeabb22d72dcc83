//! `sensor`: receives GitHub's `push` and `pull_request` webhooks, proves
//! they came from GitHub, maps them to a task, records the new head as a
//! durable fact in the task's state, answers well within GitHub's 10 s, and
//! hands the cancellation to the coordinator running in the same process.
//!
//! - `POST /webhook/github`: `X-Hub-Signature-256` over the raw body (two
//!   or more secrets, for rotation) through [`github_webhook`]; 413, 415,
//!   401, 400 for what is refused; `ping` 200; everything that supersedes
//!   nothing 202 `ignored` with a counted reason; a supersession 202
//!   `{"status":"accepted","task_id","head_sha","correlation_id"}` once
//!   stored, 503 when it could not be stored in time.
//! - Dedupe: `X-GitHub-Delivery` with `X-GitHub-Hook-ID`, in a bounded
//!   memory and durably in the task's state, so a redelivery after a
//!   restart is recognised.
//! - `GET /metrics`, `/healthz`, `/readyz`.
//!
//! The library builds the service ([`Sensor`]) so tests and benchmarks run
//! it in-process; `src/main.rs` adds flags, logging and signal handling.
//! See `docs/sensor.md` for the operator's view.
//!
//! ```no_run
//! use resilience::Shutdown;
//! use sensor::{Config, Sensor, wiring};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config { dev: true, repositories: vec!["acme/widgets".into()], ..Config::default() };
//! let shutdown = Shutdown::new();
//! let sensor = Sensor::new(&config, wiring::memory_parts(&config)?, shutdown.clone())?;
//! let listener = tokio::net::TcpListener::bind(config.listen_addr()).await?;
//! sensor.spawn(listener)?;
//! shutdown.listen_for_signals()?;
//! shutdown.triggered().await;
//! let report = shutdown.drain(config.drain_timeout()).await;
//! std::process::exit(i32::from(report.exit_code()));
//! # }
//! ```

mod app;
pub mod backends;
pub mod config;
pub mod mapping;
pub mod metrics;
pub mod plan;
pub mod pulls;
pub mod recent;
pub mod wiring;

pub use app::{Sensor, SensorParts, WEBHOOK_PATH};
pub use config::{Config, ConfigError, GitHubCredentials, LogFormat};
pub use mapping::{AllowLists, TaskMapping};
pub use metrics::SensorMetrics;
pub use pulls::{GitHubPullLookup, LookupError, MemoryPullLookup, OpenPull, PullLookup};

/// Why the sensor could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A backend could not be built (Kubernetes client, GitHub client).
    #[error("{0}")]
    Backend(String),
    /// The task lock could not be configured.
    #[error("lease lock: {0}")]
    Lock(#[from] lease_lock::Error),
    /// The saga or coordinator could not be configured.
    #[error("coordinator: {0}")]
    Coordinator(#[from] cancel_coordinator::Error),
    /// Binding or serving failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether starting again later can succeed (a port still in use, an
    /// API server not up yet); a bad configuration stays bad.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Backend(_) | Self::Io(_))
    }
}
