//! The cancellation story's own commands and edge cases, over real HTTP:
//! bodies without a JSON content type, the narration of a cancel, a cancel
//! racing the last token, and 100 cancels at once (a cancel after a failure
//! is in `http.rs`, with the upstream failure).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use inference_worker::Config;
use serde_json::{Value, json};
use support::{HandFedSource, SseReader, TestWorker, capture_logs};

/// What `curl -d` sends when told nothing else.
const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

#[tokio::test]
async fn the_story_curl_commands_work_without_a_json_content_type() {
    let worker = TestWorker::start(Config::default()).await;
    // curl -X POST http://localhost:8080/execute -d '{"job_id":"test-123",…}'
    let response = worker
        .post_as(
            "/execute",
            FORM,
            r#"{"job_id":"test-123","prompt":"Write a long story...","max_tokens":1000,"temperature":0.7,"seed":42}"#,
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut events = SseReader::new(response);
    assert_eq!(events.next().await.unwrap().event, "started");
    assert_eq!(events.next().await.unwrap().event, "token");

    // curl -X POST http://localhost:8080/cancel -d '{"job_id":"test-123"}', twice.
    for _ in 0..2 {
        let response = worker
            .post_as("/cancel", FORM, r#"{"job_id":"test-123"}"#)
            .await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({"status": "cancelling", "job_id": "test-123"}));
    }
    let last = events.collect_all().await.pop().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(last.json()["code"], "CANCELLED");

    // No content type at all, or a wrong one: the body decides.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/json; charset=utf-8"),
    ] {
        let response = worker
            .post_as("/cancel", content_type, r#"{"job_id":"test-123"}"#)
            .await;
        assert_eq!(response.status(), 202, "{content_type:?}");
    }
}

#[tokio::test]
async fn a_body_that_does_not_parse_is_a_400_naming_the_problem_whatever_the_content_type() {
    let worker = TestWorker::start(Config::default()).await;
    for content_type in [None, FORM, Some("application/json")] {
        for (path, body, problem) in [
            ("/cancel", "job_id=test-123", "must be a JSON object"),
            ("/cancel", r#"["test-123"]"#, "must be a JSON object"),
            ("/cancel", r#"{"job":"x"}"#, "missing field `job_id`"),
            ("/cancel", "", "the request body is empty"),
            ("/execute", r#"{"job_id":"x"}"#, "missing field `prompt`"),
            (
                "/execute",
                r#"{"prompt":"p","top_k":3}"#,
                "unknown field `top_k`",
            ),
        ] {
            let response = worker.post_as(path, content_type, body).await;
            assert_eq!(response.status(), 400, "{path} {body:?} {content_type:?}");
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["code"], "INVALID_REQUEST");
            let message = error["message"].as_str().unwrap();
            assert!(message.contains(problem), "{path} {body:?}: {message}");
        }
    }
    assert_eq!(worker.worker.tracker().active_count(), 0);
    assert_eq!(
        worker
            .metric(r#"inference_worker_execute_requests_total{outcome="invalid"}"#)
            .await,
        6.0,
        "each refused /execute is counted"
    );
}

#[tokio::test]
async fn a_cancel_is_narrated_from_request_to_completion_under_both_correlation_ids() {
    let logs = capture_logs();
    let worker = TestWorker::start(Config::default()).await;
    let response = worker
        .post_json(
            "/execute",
            &json!({"job_id": "narrated-1", "prompt": "p", "max_tokens": 1000}),
            Some("corr-story-execute"),
        )
        .await;
    assert_eq!(response.headers()["x-correlation-id"], "corr-story-execute");
    let mut events = SseReader::new(response);
    assert_eq!(
        events.next().await.unwrap().json()["correlation_id"],
        "corr-story-execute"
    );
    assert_eq!(events.next().await.unwrap().event, "token");
    let cancel = worker
        .post_json(
            "/cancel",
            &json!({"job_id": "narrated-1"}),
            Some("corr-story-cancel"),
        )
        .await;
    assert_eq!(cancel.status(), 202);
    assert_eq!(cancel.headers()["x-correlation-id"], "corr-story-cancel");
    events.collect_all().await;

    // Every line of a request carries its correlation id in the request
    // span, the stream's lines included (they outlive the handler).
    let lines = logs.of_job("narrated-1");
    let stopped: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "job stopped after cancel")
        .collect();
    assert_eq!(stopped.len(), 1, "{lines:#?}");
    assert_eq!(stopped[0]["span"]["correlation_id"], "corr-story-execute");

    let narration = |action: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["action"] == action)
            .collect()
    };
    let requested = narration("cancel");
    assert_eq!(requested.len(), 1, "{requested:#?}");
    let requested = &requested[0];
    assert_eq!(requested["level"], "INFO");
    assert_eq!(requested["span"]["correlation_id"], "corr-story-cancel");
    assert_eq!(requested["span"]["job_id"], "narrated-1");
    let fields = &requested["fields"];
    assert_eq!(fields["actor"], "inference-worker");
    assert_eq!(fields["correlation_id"], "corr-story-cancel");
    assert_eq!(fields["outcome"], "cancelling");
    assert_eq!(
        fields["human"],
        "Cancelling job narrated-1: no token is sent after this answer"
    );

    let complete = narration("cancel_complete");
    assert_eq!(complete.len(), 1, "{complete:#?}");
    let complete = &complete[0];
    assert_eq!(complete["level"], "INFO");
    let fields = &complete["fields"];
    assert_eq!(fields["actor"], "inference-worker");
    assert_eq!(
        fields["correlation_id"], "corr-story-execute",
        "the job's own request"
    );
    assert_eq!(fields["cancel_correlation_id"], "corr-story-cancel");
    let stop_ms = fields["stop_ms"].as_f64().unwrap();
    assert!(stop_ms >= 0.0, "{stop_ms}");
    let tokens = fields["tokens"].as_u64().unwrap();
    assert!(tokens >= 1);
    assert_eq!(
        fields["human"],
        format!(
            "Job narrated-1 cancelled after {tokens} tokens; it stopped {stop_ms:.1} ms after the cancel request"
        )
    );
}

#[tokio::test]
async fn a_cancel_for_an_unknown_job_answers_202_and_is_narrated_at_warn() {
    let logs = capture_logs();
    let worker = TestWorker::start(Config::default()).await;
    let (status, _) = worker.cancel(json!({"job_id": "never-ran-7"})).await;
    assert_eq!(status, 202);
    let unknown: Vec<Value> = logs
        .of_job("never-ran-7")
        .into_iter()
        .filter(|l| l["fields"]["action"] == "cancel")
        .collect();
    assert_eq!(unknown.len(), 1, "{unknown:#?}");
    assert_eq!(unknown[0]["level"], "WARN");
    let fields = &unknown[0]["fields"];
    assert_eq!(fields["actor"], "inference-worker");
    assert_eq!(fields["outcome"], "unknown");
    assert_eq!(
        fields["correlation_id"].as_str().unwrap().len(),
        36,
        "generated"
    );
    assert_eq!(
        fields["human"],
        "Cancel requested for unknown job never-ran-7 (never started here, or finished too long ago to be remembered); answered 202 all the same"
    );
}

#[tokio::test]
async fn a_cancel_racing_the_last_token_ends_the_stream_with_exactly_one_of_end_or_cancelled() {
    let (source, mut feeds) = HandFedSource::new();
    let worker = TestWorker::start_with(Config::default(), Arc::new(source)).await;
    let (mut ended, mut cancelled) = (0, 0);
    for round in 0..30 {
        let job_id = format!("race-{round}");
        let mut events = worker
            .execute(json!({"job_id": job_id, "prompt": "p", "max_tokens": 2}))
            .await;
        assert_eq!(events.next().await.unwrap().event, "started");
        let feed = feeds.recv().await.unwrap();
        feed.send(" first".into()).await.unwrap();
        assert_eq!(events.next().await.unwrap().event, "token");

        // The last token and the cancel, at once.
        let (_, (status, _)) = tokio::join!(
            async {
                let _ = feed.send(" last".into()).await;
            },
            worker.cancel(json!({"job_id": job_id}))
        );
        assert_eq!(status, 202);
        let rest = events.collect_all().await;
        let (last, before) = rest.split_last().expect("the stream ends with an event");
        assert!(
            before.iter().all(|e| e.event == "token"),
            "{job_id}: nothing but tokens before the end: {rest:?}"
        );
        match last.event.as_str() {
            "end" => {
                assert_eq!(before.len(), 1, "{job_id}: the last token, then end");
                assert_eq!(last.json()["usage"]["completion_tokens"], 2);
                ended += 1;
            }
            "error" => {
                assert_eq!(last.json()["code"], "CANCELLED", "{job_id}");
                assert!(before.len() <= 1, "{job_id}: {rest:?}");
                cancelled += 1;
            }
            other => panic!("{job_id}: the stream ended with {other}: {rest:?}"),
        }
    }
    assert_eq!(ended + cancelled, 30);
    assert_eq!(
        worker
            .metric("inference_worker_tokens_after_cancel_total")
            .await,
        0.0
    );
    assert_eq!(worker.worker.tracker().pool().reserved(), 0);
}

#[tokio::test]
async fn a_hundred_simultaneous_cancels_of_one_job_all_answer_202_and_one_cancelled_ends_it() {
    let worker = TestWorker::start(Config::default()).await;
    let mut events = worker
        .execute(json!({"job_id": "crowd", "prompt": "p", "max_tokens": 4096}))
        .await;
    assert_eq!(events.next().await.unwrap().event, "started");
    assert_eq!(events.next().await.unwrap().event, "token");

    let answers =
        futures::future::join_all((0..100).map(|_| worker.cancel(json!({"job_id": "crowd"}))))
            .await;
    for (status, body) in &answers {
        assert_eq!(*status, 202);
        assert_eq!(*body, json!({"status": "cancelling", "job_id": "crowd"}));
    }
    let rest = events.collect_all().await;
    let terminal: Vec<_> = rest.iter().filter(|e| e.event != "token").collect();
    assert_eq!(terminal.len(), 1, "{rest:?}");
    assert_eq!(terminal[0].event, "error");
    assert_eq!(terminal[0].json()["code"], "CANCELLED");
    assert_eq!(
        worker
            .metric(r#"job_tracker_cancel_requests_total{outcome="cancelling"}"#)
            .await,
        1.0,
        "exactly one request cancelled it"
    );
    let late = worker
        .metric(r#"job_tracker_cancel_requests_total{outcome="already_cancelling"}"#)
        .await
        + worker
            .metric(r#"job_tracker_cancel_requests_total{outcome="finished"}"#)
            .await;
    assert_eq!(late, 99.0);
    assert_eq!(
        worker
            .metric(r#"inference_worker_streams_ended_total{reason="cancelled"}"#)
            .await,
        1.0
    );
}
