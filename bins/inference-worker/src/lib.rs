//! `inference-worker`: streams tokens of inference jobs over SSE and cancels
//! any of them within one decode step.
//!
//! - `POST /execute` `{"job_id","prompt","max_tokens","temperature","seed"}`
//!   answers with SSE events `started`, `token` (`{"t","i"}`) and `end`
//!   (with usage), or ends with `event: error` and a code: `CANCELLED`,
//!   `DEADLINE_EXCEEDED`, `SHUTTING_DOWN`, `UPSTREAM_ERROR`.
//! - `POST /cancel` `{"job_id"}` always answers `202 {"status":"cancelling"}`
//!   for a well-formed id; after it answered, the job's stream sends no
//!   further token.
//! - Admission: at most `--max-concurrent-jobs` jobs and
//!   `--reservation-budget` units; beyond that 429, nothing started.
//! - `GET /jobs`, `GET /jobs/{id}`, `/metrics`, `/healthz`, `/readyz`.
//!
//! The library builds the service ([`Worker`]) so tests and benchmarks run it
//! in-process; `src/main.rs` adds flags, logging and signal handling.
//!
//! ```no_run
//! use inference_worker::{Config, Worker};
//! use resilience::Shutdown;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let shutdown = Shutdown::new();
//! let config = Config { port: 0, ..Config::default() };
//! let worker = Worker::new(config.clone(), shutdown.clone())?;
//! let listener = tokio::net::TcpListener::bind(config.listen_addr()).await?;
//! println!("listening on {}", listener.local_addr()?);
//! worker.spawn(listener);
//! shutdown.listen_for_signals()?;
//! shutdown.triggered().await;
//! let report = shutdown.drain(config.drain_timeout()).await;
//! std::process::exit(i32::from(report.exit_code()));
//! # }
//! ```

pub mod api;
mod app;
mod body;
pub mod config;
pub mod correlation;
mod decode;
mod metrics;
mod narration;
pub mod source;
mod stop_clock;

pub use app::{BODY_LIMIT_BYTES, Worker};
pub use config::{Config, ConfigError, LogFormat};
pub use source::{
    BuiltinGenerator, GenerateRequest, OpenAiUpstream, SourceError, TokenSource, TokenStream,
};

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The token source could not be built.
    #[error("token source: {0}")]
    Source(#[from] SourceError),
    /// Binding or serving failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether starting again later can succeed (a port still in use, an
    /// upstream not up yet); a bad configuration stays bad.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Config(_) => false,
            Self::Source(error) => error.is_transient(),
            Self::Io(_) => true,
        }
    }
}
