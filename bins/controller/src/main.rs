//! `controller` binary: flags and environment, logging, signals, and the
//! `dev-push` tool.
//!
//! The rule it keeps: SIGTERM turns readiness off, stops accepting
//! connections, lets the requests and cancellations in flight finish
//! (within `--shutdown-timeout`; a cancellation still running after that
//! leaves a resumable journal), releases leadership, and exits 0.

use std::process::ExitCode;

use clap::Parser;
use controller::config::DEFAULT_DEV_WEBHOOK_SECRET;
use controller::{Cli, Command, Config, Controller};
use resilience::Shutdown;
use secrecy::ExposeSecret;
use sensor::backends::BackendChoice;

/// Exit code for a configuration the controller cannot run with.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure to start (port taken, cluster unreachable).
const EXIT_START: u8 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::DevPush(push)) = &cli.command {
        return match controller::dev::push::dev_push(push).await {
            Ok(outcome) => {
                println!(
                    "pushed {} to {}: {} -> {}",
                    push.branch,
                    outcome.pushed.pull_request,
                    outcome.pushed.before,
                    outcome.pushed.head_sha
                );
                println!(
                    "webhook answered {}: {}",
                    outcome.webhook_status, outcome.webhook_answer
                );
                if (200..300).contains(&outcome.webhook_status) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(error) => {
                eprintln!("controller dev-push: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let config = cli.config;
    if let Err(error) = config.validate() {
        eprintln!("controller: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    config.log_format().init_tracing();
    let backends = config.backends();
    if backends != BackendChoice::PRODUCTION {
        tracing::warn!(
            backends = %backends.describe(),
            "memory backends: what they hold is not durable and never leaves this process"
        );
    }

    let shutdown = Shutdown::new();
    let controller = match Controller::connect(&config, shutdown.clone()).await {
        Ok(controller) => controller,
        Err(error) => {
            tracing::error!(%error, "cannot build the controller");
            return ExitCode::from(if matches!(error, controller::Error::Config(_)) {
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
    let addr = listener.local_addr().ok();
    if let Err(error) = controller.spawn(listener).await {
        tracing::error!(%error, "cannot start");
        return ExitCode::from(EXIT_START);
    }
    let addr_text = addr.map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        addr = %addr_text,
        backends = %backends.describe(),
        webhook = config.webhook_enabled(),
        fleet = config.fleet_enabled(),
        "controller listening"
    );
    if config.dev {
        print_dev_banner(&config, &addr_text);
    }

    shutdown.triggered().await;
    let report = shutdown.drain(config.shutdown_timeout()).await;
    ExitCode::from(report.exit_code())
}

/// What a newcomer pastes next (on stderr, so stdout stays log lines). The
/// secret is shown only when it is the built-in one, which protects nothing.
fn print_dev_banner(config: &Config, addr: &str) {
    let port = addr.rsplit(':').next().unwrap_or("8080");
    let url = format!("http://127.0.0.1:{port}");
    let secret_line = if config.dev_webhook_secret.expose_secret() == DEFAULT_DEV_WEBHOOK_SECRET {
        format!(
            "webhook secret: {DEFAULT_DEV_WEBHOOK_SECRET} (the built-in dev secret; --dev-webhook-secret changes it)"
        )
    } else {
        "webhook secret: the one given with --dev-webhook-secret".to_owned()
    };
    let task = config.seeded_task().unwrap_or_default();
    let repo = &config.dev_repository;
    let pr = config.dev_pull_request;
    eprintln!();
    eprintln!(
        "supersede controller --dev on {url}: everything in memory, task {task} seeded on {repo}#{pr}"
    );
    eprintln!("{secret_line}");
    eprintln!();
    eprintln!("  curl -s {url}/v1/tasks/{task}");
    eprintln!(
        "  cargo run -p controller -- dev-push --url {url}   # a new head, and its signed push webhook"
    );
    eprintln!("  curl -s {url}/v1/tasks/{task}");
    eprintln!("  curl -s {url}/metrics | grep supersede_");
    eprintln!();
}
