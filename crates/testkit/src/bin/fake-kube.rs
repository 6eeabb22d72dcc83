//! `fake-kube`: testkit's fake Kubernetes API server as a process, for
//! pointing kubectl or supersede's binaries at it by hand.
//!
//! Serves plain HTTP on 127.0.0.1 until SIGTERM or SIGINT, and writes a
//! kubeconfig (no credentials) for it:
//!
//! ```text
//! cargo run -p testkit --bin fake-kube -- --port 6443 --kubeconfig /tmp/fake.kubeconfig
//! kubectl --kubeconfig /tmp/fake.kubeconfig get leases
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use testkit::kube::{FakeKube, PodTermination, parse_termination};

/// Fake Kubernetes API server (plain HTTP on 127.0.0.1, state in memory).
#[derive(Debug, Parser)]
#[command(name = "fake-kube", version)]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one; the kubeconfig names it).
    #[arg(long, env = "FAKE_KUBE_PORT", default_value_t = 6443)]
    port: u16,
    /// Where to write the kubeconfig (default: a file in a temporary
    /// directory removed on exit; its path is logged).
    #[arg(long, env = "FAKE_KUBE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Seed of fault injection and generated names.
    #[arg(long, env = "FAKE_KUBE_SEED", default_value_t = 0)]
    seed: u64,
    /// What pods' containers do with SIGTERM: `immediate`,
    /// `stops-after-<duration>` (`stops-after-5s`), `after-grace-period` or
    /// `never` (a pod's `testkit.supersede.dev/termination` label wins).
    #[arg(long, env = "FAKE_KUBE_POD_TERMINATION", default_value = "immediate", value_parser = parse_pod_termination)]
    pod_termination: PodTermination,
}

fn parse_pod_termination(s: &str) -> Result<PodTermination, String> {
    parse_termination(s).ok_or_else(|| {
        format!(
            "unknown pod termination {s:?}: use immediate, stops-after-<duration>, after-grace-period or never"
        )
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "fake-kube failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let kube = FakeKube::builder()
        .port(args.port)
        .seed(args.seed)
        .pod_termination(args.pod_termination)
        .start()
        .await?;
    let kubeconfig = match &args.kubeconfig {
        Some(path) => {
            kube.write_kubeconfig(path)?;
            path.clone()
        }
        None => kube.kubeconfig()?.to_owned(),
    };
    tracing::info!(
        url = %kube.url(),
        kubeconfig = %kubeconfig.display(),
        "fake-kube serving; try: kubectl --kubeconfig {} get leases",
        kubeconfig.display()
    );

    wait_for_signal().await?;
    tracing::info!("fake-kube stopping");
    kube.shutdown().await;
    if args.kubeconfig.is_some() {
        // Ours to clean up: it names a server that no longer exists.
        let _ = std::fs::remove_file(&kubeconfig);
    }
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
