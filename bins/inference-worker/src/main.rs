//! `inference-worker` binary: flags and environment, logging, signals.
//!
//! The rule it keeps: SIGTERM ends every running stream with `SHUTTING_DOWN`
//! and the process exits 0 within `--drain-timeout-seconds`.

use std::process::ExitCode;

use clap::Parser;
use inference_worker::{Config, LogFormat, Worker};
use resilience::Shutdown;
use tracing_subscriber::EnvFilter;

/// Exit code for a configuration the worker cannot run with.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure to start (port taken, bad upstream client).
const EXIT_START: u8 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(error) = config.validate() {
        eprintln!("inference-worker: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    init_tracing(config.log_format);

    let shutdown = Shutdown::new();
    let worker = match Worker::new(config.clone(), shutdown.clone()) {
        Ok(worker) => worker,
        Err(error) => {
            tracing::error!(%error, "cannot build the worker");
            return ExitCode::from(EXIT_START);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen_addr()).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, addr = %config.listen_addr(), "cannot bind");
            return ExitCode::from(EXIT_START);
        }
    };
    if let Err(error) = shutdown.listen_for_signals() {
        tracing::error!(%error, "cannot install signal handlers");
        return ExitCode::from(EXIT_START);
    }
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    worker.spawn(listener);
    tracing::info!(
        %addr,
        source = worker.source_name(),
        max_concurrent_jobs = config.max_concurrent_jobs,
        reservation_budget = config.reservation_budget,
        "inference worker listening"
    );

    shutdown.triggered().await;
    let report = shutdown.drain(config.drain_timeout()).await;
    ExitCode::from(report.exit_code())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}
