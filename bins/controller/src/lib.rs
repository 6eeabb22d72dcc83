//! `controller`: supersede's controller — coordinator workers on every
//! replica, the recovery reconciler on the elected leader, TTL cleanup of
//! old task states, and a JSON API over what the tasks, their runs and
//! their cancellations are doing.
//!
//! The rule it keeps: **the binary composes the crates, it never re-does
//! their work.** The backends are the sensor's [`Backends`] chosen kind by
//! kind, the cancellations are `cancel-coordinator`'s, the repairs
//! `recovery`'s, the webhook route the sensor's own — so `--dev`, which
//! puts every backend in memory and adds a simulated agent fleet and a
//! seeded task ([`dev`]), runs the production code, not a demo copy.
//!
//! - `GET /v1/tasks`, `GET /v1/tasks/{task_id}`,
//!   `GET /v1/cancellations?active=true`, and the bearer-token writes
//!   `POST /v1/tasks/{task_id}/retry` and `…/resolve` ([`api`]);
//! - `GET /metrics`, `/healthz`, `/readyz`;
//! - `POST /webhook/github` when a webhook secret is configured (always
//!   with `--dev`), and `POST /dev/github/push` on the dev GitHub.
//!
//! See `docs/controller.md` for every setting and metric, `docs/api.md`
//! for the API.
//!
//! [`Backends`]: sensor::backends::Backends

/// The crate README's example, compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod api;
mod app;
pub mod config;
pub mod dev;
pub mod metrics;

pub use app::{Controller, LEADER_LOCK_PREFIX};
pub use config::{Cli, Command, Config, ConfigError, DevPush, LogFormat};
pub use metrics::ControllerMetrics;

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A backend, the webhook route or the coordinator could not be built.
    #[error(transparent)]
    Sensor(#[from] sensor::Error),
    /// The leadership lock could not be configured.
    #[error("lease lock: {0}")]
    Lock(#[from] lease_lock::Error),
    /// The reconciler could not be configured.
    #[error("recovery: {0}")]
    Recovery(#[from] recovery::Error),
    /// The dev seed could not be written.
    #[error("dev seed: {0}")]
    Seed(#[from] state_store::Error),
    /// Binding or serving failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether starting again later can succeed (an API server not up yet,
    /// a port still in use); a bad configuration stays bad.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Config(_) | Self::Lock(_) | Self::Recovery(_) => false,
            Self::Sensor(e) => e.is_transient(),
            Self::Seed(e) => e.is_transient(),
            Self::Io(_) => true,
        }
    }
}
