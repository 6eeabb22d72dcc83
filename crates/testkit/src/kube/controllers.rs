//! The task that runs the fake's controllers: the simulated kubelet and
//! garbage collector (and whatever else the store's agenda holds).
//!
//! One task per server sleeps until the next action is due on tokio's clock
//! or new work is scheduled, then runs everything due under the store lock.
//! The rule it keeps: **controllers act only from this task, never inside a
//! request**, so a client always sees the window between its request and
//! the controllers' reaction, as on a cluster.

use std::sync::Arc;

use super::server::Shared;

/// Runs until the server shuts down.
pub(crate) async fn run(shared: Arc<Shared>) {
    let wakeup = shared.store().controller_wakeup();
    loop {
        let next = shared.store().run_due();
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            // A permit stored by a schedule made since `run_due` is taken
            // here, so no wake-up is lost.
            () = wakeup.notified() => {}
            () = due => {}
        }
    }
}
