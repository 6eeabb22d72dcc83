//! A tour of `resilience` in under a few seconds, with no cluster and no network
//! beyond loopback:
//!
//! 1. a flaky operation succeeds under `retry` + `CircuitBreaker`;
//! 2. a dependency that stays down trips its breaker, which then fails fast;
//! 3. an `ExpiringQueue` drops a stale entry and serves a fresh one;
//! 4. `Health` is served on 127.0.0.1:0 and `/readyz` is queried once;
//! 5. a child process group is terminated;
//! 6. `Shutdown` drains tracked work;
//! 7. every metric is printed in the Prometheus text format.
//!
//! Run it with `cargo run -p resilience --example flaky_service`
//! (`RUST_LOG=debug` shows every retry and state change).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use resilience::{
    BackoffPolicy, BreakerMetrics, BreakerPolicy, BreakerState, CircuitBreaker, ExpiringQueue,
    QueueMetrics, QueuePolicy, RetryPolicy, Shutdown, Transient, retry_transient,
    spawn_in_process_group, terminate,
};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// The error of our simulated upstream.
#[derive(Debug)]
enum UpstreamError {
    /// 503: try again later.
    Unavailable,
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("upstream answered 503 Service Unavailable")
    }
}

impl std::error::Error for UpstreamError {}

impl Transient for UpstreamError {
    fn is_transient(&self) -> bool {
        true
    }
}

/// Fails the first two attempts, then answers.
async fn flaky_upstream(attempt: u32) -> Result<&'static str, UpstreamError> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    if attempt < 3 {
        Err(UpstreamError::Unavailable)
    } else {
        Ok("42")
    }
}

/// Fast timings so the whole tour takes well under five seconds.
fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        backoff: BackoffPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            ..BackoffPolicy::default()
        },
        max_attempts,
        max_retry_after: Duration::from_millis(100),
        ..RetryPolicy::default()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut registry = Registry::default();
    let shutdown = Shutdown::new();
    let health = shutdown.health();
    shutdown.register(&mut registry);
    health.register(&mut registry);
    let breakers = BreakerMetrics::new();
    breakers.register(&mut registry);
    let queues = QueueMetrics::new();
    queues.register(&mut registry);

    // 1. Retry + breaker around a flaky upstream.
    let upstream = CircuitBreaker::with_metrics(
        "upstream",
        BreakerPolicy {
            failure_threshold: 3,
            cool_down: Duration::from_millis(500),
            ..BreakerPolicy::default()
        },
        &breakers,
    );
    let answer = retry_transient(&fast_retry(5), &shutdown.token(), |attempt| {
        upstream.call(flaky_upstream(attempt))
    })
    .await?;
    println!(
        "1. flaky upstream answered {answer} on attempt 3; breaker `upstream` is {}",
        upstream.state()
    );

    // 2. A dependency that stays down: the breaker opens, then fails fast.
    let down = CircuitBreaker::with_metrics(
        "billing",
        BreakerPolicy {
            failure_threshold: 3,
            cool_down: Duration::from_secs(30),
            ..BreakerPolicy::default()
        },
        &breakers,
    );
    let gave_up = retry_transient(&fast_retry(4), &shutdown.token(), |_| {
        down.call(async { Err::<(), _>(UpstreamError::Unavailable) })
    })
    .await
    .unwrap_err();
    println!("2. {gave_up}");
    assert_eq!(down.state(), BreakerState::Open);

    // 3. An expiring queue: the stale entry is swept, the fresh one served.
    let queue = ExpiringQueue::with_metrics(
        "jobs",
        QueuePolicy {
            capacity: 8,
            max_age: Duration::from_millis(150),
        },
        &queues,
    );
    let (expired_tx, mut expired_rx) = tokio::sync::mpsc::unbounded_channel();
    let sweeper = queue.spawn_sweeper(Duration::from_millis(50), move |expired| {
        let _ = expired_tx.send(expired);
    });
    queue.push("stale-job", 1)?;
    let expired = tokio::time::timeout(Duration::from_secs(2), expired_rx.recv())
        .await?
        .expect("the sweeper reports the stale job");
    queue.push("fresh-job", 5)?;
    println!(
        "3. swept {:?} after {:?} in the queue; popped {:?}",
        expired.item,
        expired.age,
        queue.pop().expect("the fresh job is served")
    );
    sweeper.abort();

    // 4. Health on 127.0.0.1:0, queried once.
    let probe_breaker = down.clone();
    health.add_check("billing", move || {
        let state = probe_breaker.state();
        async move {
            match state {
                BreakerState::Closed => Ok(()),
                other => Err(format!("circuit breaker is {other}")),
            }
        }
    });
    health.set_ready(true);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop_server = CancellationToken::new();
    let server = tokio::spawn(
        axum::serve(listener, health.router())
            .with_graceful_shutdown(stop_server.clone().cancelled_owned())
            .into_future(),
    );
    resilience::tls::ensure_crypto_provider();
    let response = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?
        .get(format!("http://{addr}/readyz"))
        .send()
        .await?;
    println!(
        "4. GET http://{addr}/readyz -> {} {}",
        response.status(),
        response.text().await?
    );

    // 5. Terminate a child process group (sleep exits on SIGTERM).
    let mut child = spawn_in_process_group(Command::new("sleep").arg("30"))?;
    let outcome = terminate(&mut child, Duration::from_secs(1)).await?;
    println!(
        "5. child process {} ({})",
        outcome.as_str(),
        outcome.status()
    );

    // 6. Drain tracked work.
    shutdown.spawn(tokio::time::sleep(Duration::from_millis(50)));
    let report = shutdown.drain(Duration::from_secs(1)).await;
    println!(
        "6. drain completed={} in {:?}; exit code {}",
        report.completed,
        report.elapsed,
        report.exit_code()
    );
    stop_server.cancel();
    server.await??;

    // 7. Everything we measured.
    let mut exposition = String::new();
    encode(&mut exposition, &registry)?;
    println!("7. metrics:\n{exposition}");
    Ok(())
}
