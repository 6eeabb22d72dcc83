//! Cancellation benchmark: how fast `POST /cancel` answers, how fast a
//! cancelled stream stops, whether anything leaks.
//!
//! `cargo run --release -p inference-worker --example cancel_bench` starts the
//! worker in-process (built-in generator, 20 ms per token), opens 1 000
//! concurrent streaming jobs, waits until each has produced a token, cancels
//! them all (100 cancels in flight at a time, over connections opened
//! beforehand), then runs 10 000 short jobs
//! (4 tokens, 100 at a time) and prints one JSON line:
//!
//! - `cancel_p50_ms`, `cancel_p99_ms`: `/cancel` round trip;
//! - `stop_p50_ms`, `stop_p99_ms`: cancel response received → last event of
//!   that job's stream received (0 when the stream ended first);
//! - `tokens_after_cancel`: tokens the worker committed to a stream after
//!   that job's cancel was accepted (its own counter, from `/metrics`;
//!   target 0). Steps already running when a cancel lands and finishing
//!   after it are refused unsent and counted separately
//!   (`inference_worker_tokens_discarded`, printed on stderr);
//! - `reservations_outstanding`: reserved units left once every stream ended
//!   (target 0);
//! - `rss_before_kb`, `rss_after_kb`: VmRSS around the 10 000 short jobs
//!   (stderr adds the RSS after a second batch of the same size, to tell a
//!   leak, which grows per batch, from warm-up, which does not).
//!
//! Progress and checks go to stderr. Sizes can be changed with the
//! environment variables `BENCH_JOBS`, `BENCH_SHORT_JOBS`,
//! `BENCH_TOKEN_DELAY_MS`, `BENCH_CONCURRENCY` (short jobs in flight),
//! `BENCH_CANCEL_CONCURRENCY` (cancels in flight), `BENCH_HOLD_MS` (let the
//! streams run this long before cancelling; also prints their CPU use).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, stream};
use inference_worker::{Config, Worker};
use resilience::Shutdown;
use serde::Serialize;
use serde_json::json;
use testkit::process::{own_cpu_seconds, own_memory, raise_fd_limit};
use tokio::sync::Notify;

#[derive(Serialize)]
struct Report {
    cancel_p50_ms: f64,
    cancel_p99_ms: f64,
    stop_p50_ms: f64,
    stop_p99_ms: f64,
    tokens_after_cancel: u64,
    reservations_outstanding: u64,
    rss_before_kb: u64,
    rss_after_kb: u64,
}

#[tokio::main]
async fn main() {
    let jobs = env_usize("BENCH_JOBS", 1_000);
    let short_jobs = env_usize("BENCH_SHORT_JOBS", 10_000);
    let token_delay_ms = env_usize("BENCH_TOKEN_DELAY_MS", 20) as u64;
    let concurrency = env_usize("BENCH_CONCURRENCY", 100);
    let cancel_concurrency = env_usize("BENCH_CANCEL_CONCURRENCY", 100);
    // Every job holds a server and a client socket.
    let needed = (jobs * 2 + concurrency * 2 + 256) as u64;
    let limit = raise_fd_limit(needed).unwrap();
    assert!(
        limit >= needed,
        "the hard open-files limit {limit} is below the {needed} this run needs"
    );

    let shutdown = Shutdown::new();
    let config = Config {
        port: 0,
        max_concurrent_jobs: jobs + concurrency,
        reservation_budget: 100_000_000,
        token_delay_ms,
        ..Config::default()
    };
    let worker = Worker::new(config, shutdown.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    worker.spawn(listener);
    resilience::tls::ensure_crypto_provider();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(jobs + concurrency)
        .build()
        .unwrap();
    // Cancels go over their own connections, opened before the run as a
    // client that cancels jobs would keep them: the measurement is the
    // cancel, not a TCP handshake.
    let cancel_http = reqwest::Client::builder()
        .pool_max_idle_per_host(cancel_concurrency)
        .build()
        .unwrap();
    futures::future::join_all((0..cancel_concurrency).map(|_| {
        let (http, base) = (cancel_http.clone(), base.clone());
        async move { http.get(format!("{base}/healthz")).send().await.unwrap() }
    }))
    .await;

    // Phase 1: `jobs` long streams, each running (one token seen) before any cancel.
    let running = Arc::new(AtomicUsize::new(0));
    let all_running = Arc::new(Notify::new());
    let mut streams = Vec::with_capacity(jobs);
    for n in 0..jobs {
        let (http, base) = (http.clone(), base.clone());
        let (running, all_running) = (Arc::clone(&running), Arc::clone(&all_running));
        streams.push(tokio::spawn(async move {
            let body = json!({"job_id": format!("long-{n}"), "prompt": "benchmark prompt", "max_tokens": 4096});
            let response = http.post(format!("{base}/execute")).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200, "job {n} was not admitted");
            let mut events = SseReader::new(response);
            let mut last = None;
            let mut counted = false;
            while let Some((event, data)) = events.next().await {
                if event == "token" && !counted {
                    counted = true;
                    if running.fetch_add(1, Ordering::AcqRel) + 1 == jobs {
                        all_running.notify_one();
                    }
                }
                last = Some((event, data, Instant::now()));
            }
            last.expect("the stream sent events")
        }));
    }
    let waiting = all_running.notified();
    if running.load(Ordering::Acquire) < jobs {
        tokio::time::timeout(Duration::from_secs(120), waiting)
            .await
            .expect("all jobs started within two minutes");
    }
    let hold = Duration::from_millis(env_usize("BENCH_HOLD_MS", 0) as u64);
    let cpu_before = own_cpu_seconds().unwrap();
    tokio::time::sleep(hold).await;
    if !hold.is_zero() {
        eprintln!(
            "steady state: {:.2} CPU cores busy with {jobs} streams",
            (own_cpu_seconds().unwrap() - cpu_before) / hold.as_secs_f64()
        );
    }
    eprintln!("{jobs} jobs streaming; cancelling them");

    // Phase 2: cancel every job, `cancel_concurrency` requests in flight.
    let cancels: Vec<(Duration, Instant)> = stream::iter(0..jobs)
        .map(|n| {
            let (http, base) = (cancel_http.clone(), base.clone());
            async move {
                let start = Instant::now();
                let response = http
                    .post(format!("{base}/cancel"))
                    .json(&json!({"job_id": format!("long-{n}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                let answered = Instant::now();
                (answered - start, answered)
            }
        })
        .buffered(cancel_concurrency)
        .collect()
        .await;
    let mut cancel_ms = Vec::with_capacity(jobs);
    let mut stop_ms = Vec::with_capacity(jobs);
    let mut cancelled = 0;
    for ((latency, answered), stream) in cancels.into_iter().zip(streams) {
        let (event, data, ended) = stream.await.unwrap();
        if event == "error" && data.contains("\"CANCELLED\"") {
            cancelled += 1;
        }
        cancel_ms.push(millis(latency));
        stop_ms.push(millis(ended.saturating_duration_since(answered)));
    }
    assert_eq!(cancelled, jobs, "every stream ends with CANCELLED");
    let tokens_after_cancel =
        metric(&http, &base, "inference_worker_tokens_after_cancel_total").await;
    let stop_sum = metric_f64(&http, &base, "job_tracker_cancel_to_stop_seconds_sum").await;
    let stop_count = metric_f64(&http, &base, "job_tracker_cancel_to_stop_seconds_count").await;
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The first bucket holding 99 % of the observations bounds the p99.
    let p99_bound = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("job_tracker_cancel_to_stop_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            Some((le.to_owned(), count.trim().parse::<f64>().ok()?))
        })
        .find(|(_, count)| *count >= 0.99 * stop_count)
        .map_or_else(|| "?".to_owned(), |(le, _)| le);
    eprintln!(
        "server side (cancel accepted -> job stopped, reservation freed): mean {:.3} ms, \
         p99 <= {p99_bound} s, over {stop_count} jobs",
        stop_sum / stop_count.max(1.0) * 1000.0
    );
    let tokens_discarded = metric(&http, &base, "inference_worker_tokens_discarded_total").await;
    let reservations_outstanding = metric(&http, &base, "job_tracker_reserved_units").await;
    eprintln!(
        "all {jobs} streams ended with CANCELLED; {tokens_discarded} in-flight steps finished after \
         their cancel and were discarded unsent; running {short_jobs} short jobs"
    );

    // Phase 3: many short jobs, to see whether memory grows with jobs served.
    let rss_before_kb = own_memory().unwrap().rss_kb;
    let started = Instant::now();
    let completed = run_short_jobs(&http, &base, "short", short_jobs, concurrency).await;
    let rss_after_kb = own_memory().unwrap().rss_kb;
    assert_eq!(completed, short_jobs, "every short job ends with `end`");
    eprintln!(
        "{short_jobs} short jobs in {:.1} s; reserved units now {}",
        started.elapsed().as_secs_f64(),
        worker.tracker().pool().reserved()
    );
    // A second batch of the same size: growth that repeats per batch would be
    // a leak; growth only in the first is allocator and bounded-memory warm-up
    // (the tracker remembers a bounded number of finished jobs).
    let completed = run_short_jobs(&http, &base, "again", short_jobs, concurrency).await;
    assert_eq!(
        completed, short_jobs,
        "every short job of the second batch ends with `end`"
    );
    let rss_second_kb = own_memory().unwrap().rss_kb;
    eprintln!(
        "RSS: {rss_before_kb} kB before, {rss_after_kb} kB after {short_jobs} short jobs, \
         {rss_second_kb} kB after {short_jobs} more (first batch {:+} kB, second {:+} kB)",
        rss_after_kb as i64 - rss_before_kb as i64,
        rss_second_kb as i64 - rss_after_kb as i64,
    );

    let report = Report {
        cancel_p50_ms: percentile(&mut cancel_ms, 50.0),
        cancel_p99_ms: percentile(&mut cancel_ms, 99.0),
        stop_p50_ms: percentile(&mut stop_ms, 50.0),
        stop_p99_ms: percentile(&mut stop_ms, 99.0),
        tokens_after_cancel,
        reservations_outstanding,
        rss_before_kb,
        rss_after_kb,
    };
    println!("{}", serde_json::to_string(&report).unwrap());

    shutdown.trigger();
    let drained = shutdown.drain(Duration::from_secs(5)).await;
    assert!(drained.completed, "{drained:?}");
}

/// Runs `count` short jobs (4 tokens), `concurrency` at a time, with ids
/// `<prefix>-<n>`; returns how many ended with `end`.
async fn run_short_jobs(
    http: &reqwest::Client,
    base: &str,
    prefix: &str,
    count: usize,
    concurrency: usize,
) -> usize {
    stream::iter(0..count)
        .map(|n| async move {
            let body = json!({"job_id": format!("{prefix}-{n}"), "prompt": "a short prompt", "max_tokens": 4, "seed": n});
            let response = http.post(format!("{base}/execute")).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200, "short job {prefix}-{n} was not admitted");
            let mut events = SseReader::new(response);
            let mut ended = false;
            while let Some((event, _)) = events.next().await {
                ended = event == "end";
            }
            usize::from(ended)
        })
        .buffer_unordered(concurrency)
        .fold(0, |sum, ok| async move { sum + ok })
        .await
}

/// The SSE events of one response, as `(event, data)` pairs.
struct SseReader {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>,
    buffer: Vec<u8>,
}

impl SseReader {
    fn new(response: reqwest::Response) -> Self {
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        }
    }

    async fn next(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block).unwrap();
                let (mut event, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event: ") {
                        event = name.to_owned();
                    } else if let Some(payload) = line.strip_prefix("data: ") {
                        data.push_str(payload);
                    }
                }
                if !event.is_empty() {
                    return Some((event, data));
                }
                continue;
            }
            let chunk = self.body.next().await?.ok()?;
            self.buffer.extend_from_slice(&chunk);
        }
    }
}

async fn metric(http: &reqwest::Client, base: &str, series: &str) -> u64 {
    metric_f64(http, base, series).await as u64
}

async fn metric_f64(http: &reqwest::Client, base: &str, series: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse::<f64>().unwrap())
}

/// Nearest-rank percentile, in milliseconds with microsecond resolution.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    let value = values[rank.clamp(1, values.len()) - 1];
    (value * 1000.0).round() / 1000.0
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
