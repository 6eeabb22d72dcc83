//! The worker over real HTTP: an SSE client against the in-process server on
//! 127.0.0.1:0, with the built-in generator, a token source the test feeds by
//! hand, and a fake OpenAI-compatible upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use inference_worker::Config;
use job_tracker::{CancelReason, JobOutcome};
use serde_json::{Value, json};
use support::{FakeUpstream, HandFedSource, SseReader, TestWorker, WITHIN, eventually};

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
async fn absent_or_malformed_correlation_ids_are_replaced_by_generated_ones() {
    let worker = TestWorker::start(Config::default()).await;
    for header in [None, Some("bad id with spaces")] {
        let response = worker
            .post_json("/cancel", &json!({"job_id": "x"}), header)
            .await;
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
async fn upstream_failure_ends_the_stream_with_upstream_error_frees_the_reservation_and_later_cancels_answer_202()
 {
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

    // Cancelling the failed job answers 202, every time, and changes nothing.
    for _ in 0..2 {
        let (status, body) = worker.cancel(json!({"job_id": "up-503"})).await;
        assert_eq!(status, 202);
        assert_eq!(body, json!({"status": "cancelling", "job_id": "up-503"}));
    }
    assert_eq!(
        worker.status_outcome("up-503"),
        JobOutcome::Failed,
        "a late cancel does not rewrite how the job ended"
    );
    assert_eq!(
        worker
            .metric(r#"job_tracker_cancel_requests_total{outcome="finished"}"#)
            .await,
        2.0
    );
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
