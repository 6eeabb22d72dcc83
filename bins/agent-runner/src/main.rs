//! `agent-runner` binary: flags and environment, logging, signals.
//!
//! The rule it keeps: SIGTERM or SIGINT drains (running agents get the
//! shutdown timeout, then are stopped) and the process exits 0; a second
//! signal stops the remaining agents at once.

use std::process::ExitCode;

use agent_runner::{Config, LogFormat, Runner};
use clap::Parser;
use resilience::Shutdown;
use tracing_subscriber::EnvFilter;

/// Exit code for a configuration the runner cannot run with.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure to start (port taken, signal handlers).
const EXIT_START: u8 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(error) = config.validate() {
        eprintln!("agent-runner: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    init_tracing(config.log_format, &config.log_filter);

    let shutdown = Shutdown::new();
    if let Err(error) = shutdown.listen_for_signals() {
        tracing::error!(%error, "cannot install signal handlers");
        return ExitCode::from(EXIT_START);
    }
    let runner = match Runner::start(config.settings(), shutdown).await {
        Ok(runner) => runner,
        Err(error) => {
            tracing::error!(%error, "cannot start the agent runner");
            return ExitCode::from(EXIT_START);
        }
    };
    let report = runner.run_until_shutdown().await;
    ExitCode::from(report.exit_code())
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
