#![doc = include_str!("../README.md")]

pub mod backoff;
pub mod breaker;
pub mod error;
pub mod fencing;
pub mod health;
mod metrics;
pub mod queue;
pub mod retry;
pub mod shutdown;
#[cfg(feature = "sse")]
pub mod sse;
pub mod terminate;
#[cfg(feature = "tls")]
pub mod tls;

pub use backoff::{Backoff, BackoffPolicy};
pub use breaker::{
    BreakerMetrics, BreakerPolicy, BreakerState, CallError, CircuitBreaker, CircuitOpen, Permit,
};
pub use error::Error;
pub use fencing::FencingToken;
pub use health::{FailedCheck, Health, Readiness};
pub use queue::{Evicted, Expired, ExpiringQueue, QueueFull, QueueMetrics, QueuePolicy};
pub use retry::{Classification, RetryError, RetryPolicy, Transient, retry, retry_transient};
pub use shutdown::{DrainReport, Shutdown};
#[cfg(feature = "sse")]
pub use sse::{
    Disconnect, DisconnectReason, SseClient, SseEvent, SseItem, SsePolicy, SseSubscription,
    TimeoutPhase,
};
pub use terminate::{TerminationOutcome, spawn_in_process_group, terminate, wait_group};

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    fn assert_send<T: Send>(_: &T) {}

    /// Callers spawn these futures onto multi-threaded runtimes.
    #[test]
    fn public_futures_are_send() {
        let cancel = CancellationToken::new();
        let policy = RetryPolicy::default();
        assert_send(&retry_transient(&policy, &cancel, |_| async {
            Err::<(), std::io::Error>(std::io::ErrorKind::TimedOut.into())
        }));
        let breaker = CircuitBreaker::new("b", BreakerPolicy::default());
        assert_send(&breaker.call(async { Ok::<(), String>(()) }));
        let mut backoff = Backoff::new(BackoffPolicy::default());
        assert_send(&backoff.sleep_or_cancel(&cancel));
        let queue: ExpiringQueue<String> = ExpiringQueue::new("q", QueuePolicy::default());
        assert_send(&queue.pop_wait(&cancel));
        let shutdown = Shutdown::new();
        assert_send(&shutdown.drain(Duration::from_secs(1)));
        assert_send(&shutdown.health().readiness());
        #[cfg(feature = "sse")]
        {
            let client = SseClient::new("http://127.0.0.1:1/", SsePolicy::default()).unwrap();
            let (sink, _items) = tokio::sync::mpsc::channel(1);
            assert_send(&client.run(cancel.clone(), sink));
        }
    }
}
