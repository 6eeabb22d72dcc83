//! `sensor` binary: flags and environment, logging, signals.
//!
//! The rule it keeps: SIGTERM turns readiness off, stops accepting
//! connections, finishes the requests and state writes in flight and the
//! running cancellations (within `--drain-timeout-seconds`), then exits 0.

use std::process::ExitCode;

use clap::Parser;
use resilience::Shutdown;
use sensor::backends::BackendChoice;
use sensor::{Config, Sensor, wiring};

/// Exit code for a configuration the sensor cannot run with.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure to start (port taken, cluster unreachable).
const EXIT_START: u8 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(error) = config.validate() {
        eprintln!("sensor: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    config.log_format.init_tracing();

    let backends = config.backends();
    if backends != BackendChoice::PRODUCTION {
        tracing::warn!(
            backends = %backends.describe(),
            "memory backends: what they hold is not durable and never leaves this process"
        );
    }
    let parts = wiring::parts(&config).await;
    let shutdown = Shutdown::new();
    let sensor = match parts.and_then(|parts| Sensor::new(&config, parts, shutdown.clone())) {
        Ok(sensor) => sensor,
        Err(error) => {
            tracing::error!(%error, "cannot build the sensor");
            return ExitCode::from(if matches!(error, sensor::Error::Config(_)) {
                EXIT_CONFIG
            } else {
                EXIT_START
            });
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
    if let Err(error) = sensor.spawn(listener) {
        tracing::error!(%error, "cannot serve");
        return ExitCode::from(EXIT_START);
    }
    tracing::info!(
        %addr,
        backends = %backends.describe(),
        repositories = ?config.repositories,
        "sensor listening on POST {}",
        sensor::WEBHOOK_PATH
    );

    shutdown.triggered().await;
    let report = shutdown.drain(config.drain_timeout()).await;
    ExitCode::from(report.exit_code())
}
