//! The worker over real HTTP: an SSE client against the in-process server on
//! 127.0.0.1:0, with the built-in generator, a token source the test feeds by
//! hand, and a fake OpenAI-compatible upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::response::sse::{Event, Sse};
use axum::routing::post;
use futures::{Stream, StreamExt, stream};
use inference_worker::{Config, GenerateRequest, TokenSource, TokenStream, Worker};
use job_tracker::{CancelReason, JobOutcome, JobState};
use resilience::Shutdown;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// Generous bound for anything that should take milliseconds.
const WITHIN: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn cancel_of_an_active_job_answers_202_and_ends_the_stream_with_cancelled() {
    let worker = TestWorker::start(Config::default()).await;
    let mut events = worker
        .execute(json!({"job_id": "active-1", "prompt": "hi", "max_tokens": 1000}))
        .await;
    assert_eq!(events.next().await.unwrap().event, "started");
    assert_eq!(events.next().await.unwrap().event, "token");

    let (status, body) = worker.cancel(json!({"job_id": "active-1"})).await;
    assert_eq!(status, 202);
    assert_eq!(body, json!({"status": "cancelling", "job_id": "active-1"}));

    let rest = events.collect_all().await;
    let last = rest.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(
        last.json(),
        json!({"code": "CANCELLED", "message": "Job cancelled by client request"})
    );
    assert!(rest[..rest.len() - 1].iter().all(|e| e.event == "token"));
    assert_eq!(worker.worker.tracker().pool().reserved(), 0);
    assert_eq!(
        worker
            .metric("inference_worker_tokens_after_cancel_total")
            .await,
        0.0
    );
    assert_eq!(
        worker.status_outcome("active-1"),
        JobOutcome::Cancelled(CancelReason::ClientRequest)
    );
}

#[tokio::test]
async fn no_token_is_generated_after_the_cancel_was_accepted() {
    let (source, mut feeds) = HandFedSource::new();
    let worker = TestWorker::start_with(Config::default(), Arc::new(source)).await;
    let mut events = worker
        .execute(json!({"job_id": "gate", "prompt": "p", "max_tokens": 100}))
        .await;
    assert_eq!(events.next().await.unwrap().event, "started");
    let feed = feeds.recv().await.unwrap();

    feed.send(" first".into()).await.unwrap();
    let token = events.next().await.unwrap();
    assert_eq!(token.event, "token");
    assert_eq!(token.json(), json!({"t": " first", "i": 0}));

    let (status, _) = worker.cancel(json!({"job_id": "gate"})).await;
    assert_eq!(status, 202);
    // Anything the source produces from now on was generated after the
    // acceptance; the worker must have stopped pulling (and dropped) the source.
    let _ = feed.send(" late".into()).await;
    tokio::time::timeout(WITHIN, feed.closed())
        .await
        .expect("the decode loop dropped its token source");

    let rest = events.collect_all().await;
    assert_eq!(rest.len(), 1, "only the final event follows: {rest:?}");
    assert_eq!(rest[0].json()["code"], "CANCELLED");
    assert_eq!(worker.metric("inference_worker_tokens_total").await, 1.0);
    assert_eq!(
        worker
            .metric("inference_worker_tokens_after_cancel_total")
            .await,
        0.0
    );
    assert_eq!(
        worker
            .metric("inference_worker_tokens_discarded_total")
            .await,
        0.0
    );
    assert_eq!(
        worker.metric("job_tracker_steps_after_cancel_total").await,
        0.0
    );
    assert_eq!(worker.worker.tracker().get("gate").unwrap().steps, 1);
}

#[tokio::test]
async fn cancel_of_an_unknown_job_answers_202() {
    let worker = TestWorker::start(Config::default()).await;
    let (status, body) = worker.cancel(json!({"job_id": "never-started"})).await;
    assert_eq!(status, 202);
    assert_eq!(
        body,
        json!({"status": "cancelling", "job_id": "never-started"})
    );
    assert_eq!(
        worker
            .metric(r#"job_tracker_cancel_requests_total{outcome="unknown"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn cancel_of_a_finished_job_answers_202_and_changes_nothing() {
    let worker = TestWorker::start(Config {
        token_delay_ms: 0,
        ..Config::default()
    })
    .await;
    let events = worker
        .execute(json!({"job_id": "done-1", "prompt": "one two three", "max_tokens": 5}))
        .await
        .collect_all()
        .await;
    let names: Vec<_> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "started", "token", "token", "token", "token", "token", "end"
        ]
    );
    let indices: Vec<_> = events[1..6]
        .iter()
        .map(|e| e.json()["i"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [0, 1, 2, 3, 4]);
    assert_eq!(
        events[6].json(),
        json!({"job_id": "done-1", "finish_reason": "length",
               "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
    );

    let (status, body) = worker.cancel(json!({"job_id": "done-1"})).await;
    assert_eq!(status, 202);
    assert_eq!(body["status"], "cancelling");
    assert_eq!(worker.status_outcome("done-1"), JobOutcome::Completed);
    let status: Value = worker
        .http
        .get(worker.url("/jobs/done-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "finished");
    assert_eq!(status["outcome"], "completed");
    assert_eq!(status["steps"], 5);
    let missing = worker
        .http
        .get(worker.url("/jobs/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        worker
            .metric(r#"job_tracker_cancel_requests_total{outcome="finished"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn cancelling_twice_answers_202_both_times_and_the_stream_ends_once() {
    let worker = TestWorker::start(Config::default()).await;
    let mut events = worker
        .execute(json!({"job_id": "twice", "prompt": "p", "max_tokens": 1000}))
        .await;
    assert_eq!(events.next().await.unwrap().event, "started");
    let (first, _) = worker.cancel(json!({"job_id": "twice"})).await;
    let (second, body) = worker.cancel(json!({"job_id": "twice"})).await;
    assert_eq!((first, second), (202, 202));
    assert_eq!(body, json!({"status": "cancelling", "job_id": "twice"}));
    let errors: Vec<_> = events
        .collect_all()
        .await
        .into_iter()
        .filter(|e| e.event == "error")
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].json()["code"], "CANCELLED");
}

#[tokio::test]
async fn empty_and_malformed_job_ids_and_bodies_are_rejected_with_400() {
    let worker = TestWorker::start(Config::default()).await;
    for body in [
        json!({"job_id": ""}),
        json!({"job_id": "-starts-with-dash"}),
        json!({"job_id": "has space"}),
        json!({"job_id": "a/b"}),
        json!({"job_id": "x".repeat(129)}),
    ] {
        let (status, error) = worker.cancel(body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(error["code"], "INVALID_JOB_ID", "{body}");
    }
    for raw in ["{not json", r#"{"job":"x"}"#, r#"{"job_id": 7}"#, ""] {
        let response = worker.post_raw("/cancel", raw.to_owned()).await;
        assert_eq!(response.status(), 400, "{raw:?}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["code"], "INVALID_REQUEST", "{raw:?}");
    }
    let huge = json!({"prompt": "word ".repeat(60_000)}).to_string();
    let response = worker.post_raw("/execute", huge).await;
    assert_eq!(response.status(), 413);
    let (status, error) = worker
        .execute_status(json!({"job_id": "bad id", "prompt": "p"}))
        .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("INVALID_JOB_ID"))
    );
    assert_eq!(worker.worker.tracker().active_count(), 0);
}

#[tokio::test]
async fn client_disconnect_cancels_the_job_and_frees_its_reservation() {
    let worker = TestWorker::start(Config::default()).await;
    let mut events = worker
        .execute(json!({"job_id": "gone", "prompt": "four words of prompt", "max_tokens": 1000}))
        .await;
    let started = events.next().await.unwrap();
    assert_eq!(started.json()["reserved_units"], 1004);
    assert_eq!(events.next().await.unwrap().event, "token");
    assert_eq!(worker.worker.tracker().pool().reserved(), 1004);

    drop(events);
    eventually(|| async { worker.metric("job_tracker_reserved_units").await == 0.0 }).await;
    assert_eq!(worker.worker.tracker().active_count(), 0);
    assert_eq!(
        worker.status_outcome("gone"),
        JobOutcome::Cancelled(CancelReason::ClientGone)
    );
    assert_eq!(
        worker
            .metric(r#"inference_worker_streams_ended_total{reason="client_gone"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_job_past_its_deadline_ends_with_deadline_exceeded() {
    let config = Config {
        job_deadline_seconds: 1,
        token_delay_ms: 50,
        ..Config::default()
    };
    let worker = TestWorker::start(config).await;
    let events = worker
        .execute(json!({"job_id": "slow", "prompt": "p", "max_tokens": 1000}))
        .await
        .collect_all()
        .await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(
        last.json(),
        json!({"code": "DEADLINE_EXCEEDED", "message": "Job exceeded its deadline of 1 s"})
    );
    let tokens = events.iter().filter(|e| e.event == "token").count();
    assert!(
        (1..1000).contains(&tokens),
        "{tokens} tokens before the deadline"
    );
    assert_eq!(
        worker.status_outcome("slow"),
        JobOutcome::Cancelled(CancelReason::Deadline)
    );
    assert_eq!(worker.worker.tracker().pool().reserved(), 0);
}

#[tokio::test]
async fn correlation_id_is_echoed_and_carried_by_the_cancel_log_lines() {
    let logs = capture_logs();
    let worker = TestWorker::start(Config::default()).await;
    let response = worker
        .http
        .post(worker.url("/execute"))
        .header("x-correlation-id", "corr-execute-7f3a")
        .json(&json!({"job_id": "logged", "prompt": "p", "max_tokens": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-correlation-id"], "corr-execute-7f3a");
    let mut events = SseReader::new(response);
    assert_eq!(
        events.next().await.unwrap().json()["correlation_id"],
        "corr-execute-7f3a"
    );

    let response = worker
        .http
        .post(worker.url("/cancel"))
        .header("x-correlation-id", "corr-cancel-9b1c")
        .json(&json!({"job_id": "logged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-correlation-id"], "corr-cancel-9b1c");
    events.collect_all().await;

    let lines = logs.lines();
    let accepted: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("cancel accepted"))
        .collect();
    assert_eq!(accepted.len(), 1, "{lines:#?}");
    assert!(
        accepted[0].contains("correlation_id=corr-cancel-9b1c"),
        "{}",
        accepted[0]
    );
    assert!(accepted[0].contains("job_id=\"logged\""), "{}", accepted[0]);
    let stopped: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("job stopped after cancel") && l.contains("logged"))
        .collect();
    assert_eq!(stopped.len(), 1, "{lines:#?}");
    assert!(
        stopped[0].contains("correlation_id=corr-execute-7f3a"),
        "{}",
        stopped[0]
    );

    // Absent or malformed ids are replaced by a generated one.
    for header in [None, Some("bad id with spaces")] {
        let mut request = worker
            .http
            .post(worker.url("/cancel"))
            .json(&json!({"job_id": "x"}));
        if let Some(value) = header {
            request = request.header("x-correlation-id", value);
        }
        let response = request.send().await.unwrap();
        let id = response.headers()["x-correlation-id"].to_str().unwrap();
        assert_eq!(id.len(), 36, "a generated UUID, got {id:?}");
    }
}

#[tokio::test]
async fn upstream_mode_streams_its_tokens_and_a_cancel_drops_the_upstream_connection() {
    let upstream = FakeUpstream::start(None).await;
    let config = Config {
        upstream: Some(upstream.url()),
        upstream_model: "tiny".into(),
        ..Config::default()
    };
    let worker = TestWorker::start(config).await;
    let mut events = worker
        .execute(json!({"job_id": "up-1", "prompt": "say", "max_tokens": 500, "seed": 3}))
        .await;
    assert_eq!(events.next().await.unwrap().event, "started");
    assert_eq!(
        events.next().await.unwrap().json(),
        json!({"t": " tok0", "i": 0})
    );
    assert_eq!(
        events.next().await.unwrap().json(),
        json!({"t": " tok1", "i": 1})
    );

    let request = upstream.requests.lock().unwrap()[0].clone();
    assert_eq!(request["model"], "tiny");
    assert_eq!(request["prompt"], "say");
    assert_eq!(request["stream"], true);
    assert_eq!(request["max_tokens"], 500);

    let (status, _) = worker.cancel(json!({"job_id": "up-1"})).await;
    assert_eq!(status, 202);
    let last = events.collect_all().await.pop().unwrap();
    assert_eq!(last.json()["code"], "CANCELLED");
    let gone = upstream.client_gone.lock().unwrap().take().unwrap();
    tokio::time::timeout(WITHIN, gone)
        .await
        .expect("the upstream saw its client go away")
        .unwrap();
}

#[tokio::test]
async fn upstream_done_ends_the_stream_with_usage() {
    let upstream = FakeUpstream::start(Some(3)).await;
    let worker = TestWorker::start(Config {
        upstream: Some(upstream.url()),
        ..Config::default()
    })
    .await;
    let events = worker
        .execute(json!({"job_id": "up-2", "prompt": "a b", "max_tokens": 50}))
        .await
        .collect_all()
        .await;
    let names: Vec<_> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["started", "token", "token", "token", "end"]);
    assert_eq!(events[4].json()["finish_reason"], "stop");
    assert_eq!(events[4].json()["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn upstream_failure_ends_the_stream_with_upstream_error_and_frees_the_reservation() {
    let app = Router::new().route(
        "/v1/completions",
        post(|| async { (http::StatusCode::SERVICE_UNAVAILABLE, "model is loading") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let worker = TestWorker::start(Config {
        upstream: Some(upstream.parse().unwrap()),
        ..Config::default()
    })
    .await;
    let events = worker
        .execute(json!({"job_id": "up-503", "prompt": "p", "max_tokens": 10}))
        .await
        .collect_all()
        .await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(last.json()["code"], "UPSTREAM_ERROR");
    let message = last.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("503") && message.contains("model is loading"),
        "{message}"
    );
    assert_eq!(worker.status_outcome("up-503"), JobOutcome::Failed);
    assert_eq!(worker.worker.tracker().pool().reserved(), 0);
}

#[tokio::test]
async fn over_capacity_or_budget_answers_429_and_starts_nothing() {
    let config = Config {
        max_concurrent_jobs: 1,
        reservation_budget: 100,
        max_tokens_limit: 100,
        ..Config::default()
    };
    let worker = TestWorker::start(config).await;
    let (status, error) = worker
        .execute_status(json!({"job_id": "too-big", "prompt": "one two", "max_tokens": 99}))
        .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (429, Some("RESERVATION_EXHAUSTED"))
    );

    let mut first = worker
        .execute(json!({"job_id": "first", "prompt": "p", "max_tokens": 10}))
        .await;
    assert_eq!(first.next().await.unwrap().event, "started");
    let response = worker
        .post_raw(
            "/execute",
            json!({"job_id": "second", "prompt": "p", "max_tokens": 10}).to_string(),
        )
        .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["code"], "TOO_MANY_JOBS");

    assert_eq!(worker.worker.tracker().active_count(), 1);
    assert_eq!(worker.worker.tracker().pool().reserved(), 11);
    assert!(worker.worker.tracker().get("second").is_none());
    assert!(worker.worker.tracker().get("too-big").is_none());
    let (status, error) = worker
        .execute_status(json!({"job_id": "first", "prompt": "p"}))
        .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (409, Some("DUPLICATE_JOB"))
    );
}

#[tokio::test]
async fn shutdown_ends_running_streams_with_shutting_down_and_drains_cleanly() {
    let worker = TestWorker::start(Config::default()).await;
    let mut events = worker
        .execute(json!({"job_id": "s1", "prompt": "p", "max_tokens": 1000}))
        .await;
    assert_eq!(events.next().await.unwrap().event, "started");
    let ready = worker.http.get(worker.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    worker.shutdown.trigger();
    assert!(!worker.shutdown.health().readiness().await.is_ready());
    let report = tokio::time::timeout(WITHIN, worker.shutdown.drain(Duration::from_secs(4)))
        .await
        .expect("the drain is bounded by its timeout");
    assert!(report.completed, "{report:?}");
    assert_eq!(report.exit_code(), 0);

    let last = events.collect_all().await.pop().unwrap();
    assert_eq!(
        last.json(),
        json!({"code": "SHUTTING_DOWN", "message": "Worker is shutting down"})
    );
    assert_eq!(worker.worker.tracker().pool().reserved(), 0);
    assert!(
        worker
            .http
            .get(worker.url("/healthz"))
            .send()
            .await
            .is_err(),
        "the listener is closed after the drain"
    );
}

#[tokio::test]
async fn the_binary_ends_open_streams_on_sigterm_and_exits_0_within_the_drain_timeout() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_inference-worker"))
        .args([
            "--port",
            "0",
            "--log-format",
            "json",
            "--drain-timeout-seconds",
            "5",
        ])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(WITHIN, async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the worker logs its address");
            let log: Value = serde_json::from_str(&line).unwrap();
            if log["fields"]["message"] == "inference worker listening" {
                break log["fields"]["addr"].as_str().unwrap().to_owned();
            }
        }
    })
    .await
    .unwrap();
    // Keep draining the log pipe so the worker never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    resilience::tls::ensure_crypto_provider();
    let http = reqwest::Client::new();
    let response = http
        .post(format!("http://{addr}/execute"))
        .json(&json!({"job_id": "sigterm", "prompt": "p", "max_tokens": 4096}))
        .send()
        .await
        .unwrap();
    let mut events = SseReader::new(response);
    assert_eq!(events.next().await.unwrap().event, "started");
    assert_eq!(events.next().await.unwrap().event, "token");

    let pid = Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let last = events.collect_all().await.pop().unwrap();
    assert_eq!(last.json()["code"], "SHUTTING_DOWN");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the worker exits within its drain timeout")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

// ---------------------------------------------------------------------------
// Harness

struct TestWorker {
    addr: SocketAddr,
    worker: Worker,
    shutdown: Shutdown,
    http: reqwest::Client,
}

impl TestWorker {
    async fn start(config: Config) -> Self {
        let shutdown = Shutdown::new();
        let config = Config { port: 0, ..config };
        let worker = Worker::new(config, shutdown.clone()).unwrap();
        Self::serve(worker, shutdown).await
    }

    async fn start_with(config: Config, source: Arc<dyn TokenSource>) -> Self {
        let shutdown = Shutdown::new();
        let config = Config { port: 0, ..config };
        let worker = Worker::with_source(config, source, shutdown.clone()).unwrap();
        Self::serve(worker, shutdown).await
    }

    async fn serve(worker: Worker, shutdown: Shutdown) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        worker.spawn(listener);
        resilience::tls::ensure_crypto_provider();
        Self {
            addr,
            worker,
            shutdown,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn execute(&self, body: Value) -> SseReader {
        let response = self
            .http
            .post(self.url("/execute"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseReader::new(response)
    }

    async fn execute_status(&self, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url("/execute"))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn cancel(&self, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url("/cancel"))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn post_raw(&self, path: &str, body: String) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// The value of one series on `/metrics` (0 when absent).
    async fn metric(&self, series: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |value| value.trim().parse().unwrap())
    }

    fn status_outcome(&self, job_id: &str) -> JobOutcome {
        match self.worker.tracker().get(job_id).unwrap().state {
            JobState::Finished { outcome, .. } => outcome,
            other => panic!("{job_id} has not finished: {other:?}"),
        }
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
struct SseEvent {
    event: String,
    data: String,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// A minimal SSE parser over a streaming reqwest body.
struct SseReader {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>,
    buffer: String,
}

impl SseReader {
    fn new(response: reqwest::Response) -> Self {
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next event, or `None` when the stream ended.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event.event = name.trim().to_owned();
                    } else if let Some(data) = line.strip_prefix("data:") {
                        event.data.push_str(data.trim_start());
                    }
                }
                if event.data.is_empty() {
                    continue; // keep-alive comment
                }
                return Some(event);
            }
            let chunk = tokio::time::timeout(WITHIN, self.body.next())
                .await
                .expect("the stream stalled")?
                .ok()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Every remaining event until the stream ends.
    async fn collect_all(mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

/// A token source whose tokens the test sends by hand; each `generate` hands
/// the test a sender, which closes when the worker drops the stream.
struct HandFedSource {
    feeds: mpsc::UnboundedSender<mpsc::Sender<String>>,
}

impl HandFedSource {
    fn new() -> (Self, mpsc::UnboundedReceiver<mpsc::Sender<String>>) {
        let (feeds, receiver) = mpsc::unbounded_channel();
        (Self { feeds }, receiver)
    }
}

impl TokenSource for HandFedSource {
    fn generate(&self, _request: &GenerateRequest) -> TokenStream {
        let (sender, receiver) = mpsc::channel(1);
        self.feeds.send(sender).unwrap();
        Box::pin(stream::unfold(receiver, |mut receiver| async move {
            let token = receiver.recv().await?;
            Some((Ok(token), receiver))
        }))
    }

    fn name(&self) -> &'static str {
        "hand-fed"
    }
}

/// A fake OpenAI-compatible server: streams ` tok0`, ` tok1`, … every 10 ms
/// (then `[DONE]` after `limit` chunks, if set), records request bodies, and
/// signals when its client went away mid-stream.
struct FakeUpstream {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Value>>>,
    client_gone: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
}

impl FakeUpstream {
    async fn start(limit: Option<usize>) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (gone_tx, gone_rx) = oneshot::channel();
        let gone_tx = Arc::new(Mutex::new(Some(gone_tx)));
        let recorded = Arc::clone(&requests);
        let app = Router::new().route(
            "/v1/completions",
            post(move |axum::Json(body): axum::Json<Value>| {
                recorded.lock().unwrap().push(body);
                let guard = GoneGuard(gone_tx.lock().unwrap().take());
                let chunks = stream::unfold((0usize, guard), move |(n, guard)| async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let data = match limit {
                        Some(limit) if n == limit => "[DONE]".to_owned(),
                        Some(limit) if n > limit => return None,
                        _ => json!({"choices": [{"text": format!(" tok{n}"), "index": 0}]})
                            .to_string(),
                    };
                    Some((
                        Ok::<_, std::convert::Infallible>(Event::default().data(data)),
                        (n + 1, guard),
                    ))
                });
                async move { Sse::new(chunks) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            addr,
            requests,
            client_gone: Arc::new(Mutex::new(Some(gone_rx))),
        }
    }

    fn url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}", self.addr)).unwrap()
    }
}

/// Fires when the fake upstream's response stream is dropped: hyper drops it
/// when the connection to the worker goes away.
struct GoneGuard(Option<oneshot::Sender<()>>);

impl Drop for GoneGuard {
    fn drop(&mut self) {
        if let Some(sender) = self.0.take() {
            let _ = sender.send(());
        }
    }
}

/// Polls `condition` until it holds, failing after [`WITHIN`].
async fn eventually<F, Fut>(condition: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Log lines written by every test in this binary (one global subscriber).
#[derive(Clone)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs(Arc::new(Mutex::new(Vec::new())));
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
    .clone()
}
