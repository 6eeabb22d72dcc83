//! `Shutdown::listen_for_signals` with real signals sent to this process.
//!
//! One test in its own binary: signal handlers are process-wide, and the
//! handlers are installed before any signal is raised, so the default
//! action (terminating the test process) can never run.

use std::time::Duration;

use nix::sys::signal::{Signal, raise};
use resilience::Shutdown;

#[tokio::test]
async fn first_signal_starts_shutdown_and_second_aborts() {
    let shutdown = Shutdown::new();
    let listener = shutdown.listen_for_signals().unwrap();
    assert!(!shutdown.is_shutting_down());

    raise(Signal::SIGTERM).unwrap();
    tokio::time::timeout(Duration::from_secs(10), shutdown.triggered())
        .await
        .expect("SIGTERM must start shutdown");
    assert!(!shutdown.hard_cancel_token().is_cancelled());

    raise(Signal::SIGINT).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        shutdown.hard_cancel_token().cancelled(),
    )
    .await
    .expect("a second signal must abort");
    tokio::time::timeout(Duration::from_secs(10), listener)
        .await
        .unwrap()
        .unwrap();
}
