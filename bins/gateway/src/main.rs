//! `gateway` binary: flags and environment, logging, signals.
//!
//! The rule it keeps: SIGTERM or SIGINT stops accepting, lets in-flight
//! deliveries finish (so none is counted and then cut off unanswered), and
//! exits 0.

use std::process::ExitCode;

use clap::Parser;
use gateway::{Config, Gateway, LogFormat};
use resilience::Shutdown;
use tracing_subscriber::EnvFilter;

/// Exit code for a configuration the gateway cannot run with.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure to start (port taken, no cluster, signal handlers).
const EXIT_START: u8 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(error) = config.validate() {
        eprintln!("gateway: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    init_tracing(config.log_format, &config.log_filter);
    let shutdown = Shutdown::new();
    if let Err(error) = shutdown.listen_for_signals() {
        tracing::error!(%error, "cannot install signal handlers");
        return ExitCode::from(EXIT_START);
    }
    let gateway = if config.dev {
        tracing::info!("--dev: in-memory backends; nothing is durable");
        Gateway::memory(config.settings()).map(|(g, _, _)| g)
    } else {
        resilience::tls::ensure_crypto_provider();
        match kube::Client::try_default().await {
            Ok(client) => Gateway::cluster(client, config.settings()),
            Err(error) => {
                tracing::error!(%error, "no Kubernetes client (KUBECONFIG or in-cluster config); use --dev without a cluster");
                return ExitCode::from(EXIT_START);
            }
        }
    };
    let gateway = match gateway {
        Ok(gateway) => gateway,
        Err(error) => {
            tracing::error!(%error, "cannot build the gateway");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let addr = config.listen_addr();
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%addr, %error, "cannot listen");
            return ExitCode::from(EXIT_START);
        }
    };
    match gateway.serve(listener, shutdown).await {
        Ok(()) => {
            tracing::info!("shutdown complete");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "server failed");
            ExitCode::from(EXIT_START)
        }
    }
}

fn init_tracing(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}
