//! Keeping a background loop alive through a panic.
//!
//! Rule kept here: a background loop (the queue sweeper) never dies
//! silently. A panic in it is caught, logged at ERROR with the panic's
//! message, counted in `agent_runner_task_panics_total{task}`, and the loop
//! is started afresh after a backoff (1 s doubling to 60 s, ±25 %; back to
//! 1 s after a run that lasted a minute). It stops when its token fires,
//! whether it is running or waiting to restart.
//!
//! What a panic cannot give back is the work it interrupted: expired
//! incidents the panicking sweep had taken out of the queue but not yet
//! reported are dropped without being counted.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use resilience::{Backoff, BackoffPolicy};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// A run at least this long counts as healthy: the next panic waits the
/// initial delay again instead of growing it.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs the loop `start` builds until `stop` fires or the loop ends by
/// itself, starting a fresh one after each panic. `task` names it in logs
/// and metrics (one of [`crate::metrics::TASKS`]).
pub(crate) async fn supervise<F, Fut>(
    task: &'static str,
    metrics: Metrics,
    stop: CancellationToken,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = Backoff::new(BackoffPolicy::default());
    loop {
        let started = Instant::now();
        // The loop's state dies with the panic: a fresh one is built from
        // `start`, so nothing half-updated is observed afterwards.
        let run = AssertUnwindSafe(start()).catch_unwind();
        let panic = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            result = run => match result {
                Ok(()) => {
                    tracing::debug!(task, "background task ended");
                    return;
                }
                Err(panic) => panic,
            },
        };
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        let restart_in = backoff.next_delay().unwrap_or(HEALTHY_RUN);
        metrics.task_panicked(task);
        tracing::error!(
            task,
            panic = panic_message(panic.as_ref()),
            restart_in_seconds = restart_in.as_secs_f64(),
            "background task panicked; restarting it"
        );
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(restart_in) => {}
        }
    }
}

/// The message `panic!` was given, when it was a string (it almost always is).
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "a panic without a message"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use prometheus_client::registry::Registry;
    use resilience::{ExpiringQueue, QueuePolicy};

    use super::*;

    const SWEEP: Duration = Duration::from_secs(10);
    const MAX_AGE: Duration = Duration::from_secs(60);

    fn queue() -> ExpiringQueue<&'static str> {
        ExpiringQueue::new(
            "test",
            QueuePolicy {
                capacity: 10,
                max_age: MAX_AGE,
            },
        )
    }

    fn panics(metrics: &Metrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let text = Metrics::encode(&registry);
        text.lines()
            .find_map(|l| {
                l.strip_prefix(r#"agent_runner_task_panics_total{task="queue_sweeper"} "#)
            })
            .unwrap_or("missing")
            .to_owned()
    }

    /// Lets the paused clock move `by`, with every timer due on the way firing.
    async fn wait(by: Duration) {
        tokio::time::sleep(by).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_that_panics_once_is_logged_counted_restarted_and_expiry_goes_on() {
        // testkit's capture, not a per-test `set_default`: another test of
        // this binary hitting the same callsite first with no subscriber
        // would leave its interest cached as "never" for this one.
        let (logs, _capture) = testkit::logs::Logs::capture();

        let queue = queue();
        let metrics = Metrics::new(["prod"]);
        let reported = Arc::new(Mutex::new(Vec::new()));
        let panicked = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let supervisor = tokio::spawn(supervise("queue_sweeper", metrics.clone(), stop.clone(), {
            let (queue, reported) = (queue.clone(), Arc::clone(&reported));
            move || {
                let (queue, reported) = (queue.clone(), Arc::clone(&reported));
                let panicked = Arc::clone(&panicked);
                async move {
                    let sweep = queue.sweeper(SWEEP, move |expired| {
                        if !panicked.swap(true, Ordering::SeqCst) {
                            panic!("sweep broke on {}", expired.item);
                        }
                        reported.lock().unwrap().push(expired.item);
                    });
                    sweep.await;
                }
            }
        }));

        queue.push("first", 1).unwrap();
        wait(MAX_AGE + SWEEP + Duration::from_secs(1)).await;
        assert_eq!(panics(&metrics), "1", "the panic is counted");
        assert!(reported.lock().unwrap().is_empty());

        // The restarted sweeper (after at most 1.25 s) keeps the timer going.
        wait(Duration::from_secs(2)).await;
        queue.push("second", 1).unwrap();
        wait(MAX_AGE + SWEEP + Duration::from_secs(1)).await;
        assert_eq!(*reported.lock().unwrap(), ["second"]);
        assert_eq!(queue.len(), 0);
        assert_eq!(panics(&metrics), "1", "one panic, one count");

        let text = logs.text();
        let errors: Vec<serde_json::Value> = logs
            .lines()
            .into_iter()
            .filter(|l| l["level"] == "ERROR")
            .collect();
        assert_eq!(errors.len(), 1, "{text}");
        let fields = &errors[0]["fields"];
        assert_eq!(fields["message"], "background task panicked; restarting it");
        assert_eq!(fields["task"], "queue_sweeper");
        assert_eq!(fields["panic"], "sweep broke on first");
        let restart_in = fields["restart_in_seconds"].as_f64().unwrap();
        assert!((0.75..=1.25).contains(&restart_in), "{restart_in}");

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), supervisor)
            .await
            .expect("the supervisor stops with its token")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_stops_on_shutdown_running_or_waiting_to_restart() {
        // Running: once stopped, nothing sweeps any more.
        let queue = queue();
        let stop = CancellationToken::new();
        let supervisor = tokio::spawn(supervise(
            "queue_sweeper",
            Metrics::new(["prod"]),
            stop.clone(),
            {
                let queue = queue.clone();
                move || {
                    let queue = queue.clone();
                    async move { queue.sweeper(SWEEP, |_| {}).await }
                }
            },
        ));
        wait(SWEEP * 2).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), supervisor)
            .await
            .expect("a running sweeper stops")
            .unwrap();
        queue.push("stale", 1).unwrap();
        wait(MAX_AGE * 3).await;
        assert_eq!(queue.len(), 1, "no sweeper left behind");

        // Waiting to restart after a panic: the wait ends with the token too.
        let stop = CancellationToken::new();
        let metrics = Metrics::new(["prod"]);
        let supervisor = tokio::spawn(supervise(
            "queue_sweeper",
            metrics.clone(),
            stop.clone(),
            || async { panic!("at once") },
        ));
        tokio::task::yield_now().await;
        assert_eq!(panics(&metrics), "1", "it panicked and waits to restart");
        stop.cancel();
        tokio::time::timeout(Duration::from_millis(1), supervisor)
            .await
            .expect("no restart after the stop")
            .unwrap();
    }

    #[test]
    fn panic_messages_are_read_from_str_and_string_payloads() {
        assert_eq!(panic_message(&"static"), "static");
        assert_eq!(panic_message(&String::from("formatted 7")), "formatted 7");
        assert_eq!(panic_message(&7_u8), "a panic without a message");
    }
}
