//! The HTTP API's contract, on the controller as the binary builds it
//! (memory backends, the dev seed): the JSON shapes of every read, 404 for
//! what does not exist, and the writes' bearer token — 401 without, 403
//! wrong, 404 when no token is configured.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;

use controller::{Config, Controller, DevPush};
use jiff::Timestamp;
use recovery::{ANNOTATION_NEEDS_INTERVENTION, METADATA_RESOLVED};
use resilience::Shutdown;
use sensor::backends::{BackendChoice, Backends, Clients};
use serde_json::{Value, json};
use state_store::{OperationJournal, OperationKind, StateStore};
use support::{SEED_HEAD, client, get, keys, send, superseded, wait_for};

const TOKEN: &str = "an-api-token-long-enough";

/// A controller serving on 127.0.0.1; stops when dropped.
struct Served {
    url: String,
    store: StateStore,
    shutdown: Shutdown,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn serve(with_token: bool) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let token_file: PathBuf = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let config = Config {
        dev: true,
        dev_run_seconds: 300,
        api_token_file: with_token.then_some(token_file),
        ..Config::default()
    };
    let settings = sensor::wiring::backend_settings(&config.sensor_config()).unwrap();
    let backends = Backends::build(BackendChoice::MEMORY, &settings, Clients::default()).unwrap();
    let shutdown = Shutdown::new();
    let controller = Controller::over(&config, backends, None, shutdown.clone()).unwrap();
    let store = controller.store().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    controller.spawn(listener).await.unwrap();
    let served = Served {
        url,
        store,
        shutdown,
        _dir: dir,
    };
    wait_for(&served.at("/v1/tasks/42"), "the seeded runs", |d| {
        d["runs"].as_array().is_some_and(|r| r.len() == 3)
    })
    .await;
    served
}

impl Served {
    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Option<Value>) -> support::Answer {
        let mut request = client().post(self.at(path));
        if let Some(token) = token {
            request = request.header("authorization", token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        send(request).await
    }
}

fn assert_json_error(answer: &support::Answer, status: u16, error: &str) {
    assert_eq!(answer.status, status, "{}", answer.text);
    assert_eq!(keys(&answer.json), ["error", "message"], "{}", answer.text);
    assert_eq!(answer.json["error"], error, "{}", answer.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_list_and_detail_have_exactly_the_documented_shapes() {
    let served = serve(false).await;
    let list = get(&served.at("/v1/tasks")).await;
    assert_eq!(list.status, 200);
    assert_eq!(
        list.json,
        json!([{
            "task_id": "42",
            "head_sha": SEED_HEAD,
            "status": "InProgress",
            "active_operation": false,
            "needs_intervention": null,
        }])
    );

    let detail = get(&served.at("/v1/tasks/42")).await.json;
    assert_eq!(
        keys(&detail),
        [
            "cancellations",
            "head_sha",
            "labels",
            "needs_intervention",
            "operation",
            "runs",
            "status",
            "task_id"
        ]
    );
    assert_eq!(detail["labels"], json!(["ready-for-qa"]));
    assert!(detail["operation"].is_null() && detail["needs_intervention"].is_null());
    for run in detail["runs"].as_array().unwrap() {
        assert_eq!(keys(run), ["head_sha", "name", "phase", "role"]);
        assert_eq!(run["head_sha"], SEED_HEAD);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_task_is_a_json_404() {
    let served = serve(false).await;
    assert_json_error(&get(&served.at("/v1/tasks/4242")).await, 404, "not_found");
    // An id no state can have is just as unknown.
    assert_json_error(
        &get(&served.at("/v1/tasks/Not_A_Task!")).await,
        404,
        "not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagged_task_shows_the_reconcilers_reason_in_the_list_and_the_detail() {
    let served = serve(false).await;
    let reason = "stale_run: task-42-quality-9fceb02 has a finalizer we do not own";
    served
        .store
        .set_annotation("42", ANNOTATION_NEEDS_INTERVENTION, Some(reason))
        .await
        .unwrap();
    assert_eq!(
        get(&served.at("/v1/tasks")).await.json[0]["needs_intervention"],
        reason
    );
    assert_eq!(
        get(&served.at("/v1/tasks/42")).await.json["needs_intervention"],
        reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_in_flight_is_listed_with_its_step_and_timings() {
    let served = serve(false).await;
    assert_eq!(
        get(&served.at("/v1/cancellations?active=true")).await.json,
        json!([])
    );
    let started = Timestamp::now();
    let mut journal =
        OperationJournal::begin("op-1", OperationKind::Cancellation, "controller/x", started);
    journal.targets = vec!["task-42-quality-9fceb02".to_owned()];
    served.store.begin_operation("42", journal).await.unwrap();

    let active = get(&served.at("/v1/cancellations?active=true")).await.json;
    let entry = &active[0];
    assert_eq!(
        keys(entry),
        [
            "age_seconds",
            "id",
            "kind",
            "last_progress",
            "runs",
            "started_at",
            "step",
            "step_status",
            "task_id"
        ]
    );
    assert_eq!(
        (entry["task_id"].as_str(), entry["id"].as_str()),
        (Some("42"), Some("op-1"))
    );
    assert_eq!(
        (entry["step"].as_str(), entry["step_status"].as_str()),
        (Some("Started"), Some("Pending"))
    );
    assert_eq!(entry["runs"], json!(["task-42-quality-9fceb02"]));
    assert!(entry["age_seconds"].as_f64().unwrap() >= 0.0);

    let detail = get(&served.at("/v1/tasks/42")).await.json;
    assert_eq!(keys(&detail["operation"]), ["id", "started_at", "step"]);
    assert_eq!(detail["operation"]["id"], "op-1");
    assert_eq!(
        get(&served.at("/v1/tasks")).await.json[0]["active_operation"],
        true
    );
    let bad = get(&served.at("/v1/cancellations?active=maybe")).await;
    assert_json_error(&bad, 400, "query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorded_cancellations_are_listed_with_their_task_and_heads() {
    let served = serve(false).await;
    assert_eq!(get(&served.at("/v1/cancellations")).await.json, json!([]));
    let push = DevPush {
        url: served.url.clone(),
        repository: "acme/widgets".into(),
        pr: 7,
        branch: "task-42-fix".into(),
        head: Some("3333333333333333333333333333333333333333".into()),
        secret: controller::config::DEFAULT_DEV_WEBHOOK_SECRET.into(),
    };
    let outcome = controller::dev::push::dev_push(&push).await.unwrap();
    assert_eq!(outcome.webhook_status, 202, "{}", outcome.webhook_answer);
    let new = "3333333333333333333333333333333333333333";
    wait_for(&served.at("/v1/tasks/42"), "the supersession", |d| {
        superseded(d, SEED_HEAD, new)
    })
    .await;

    let recorded = get(&served.at("/v1/cancellations")).await.json;
    let entry = &recorded[0];
    assert_eq!(
        keys(entry),
        [
            "correlation_id",
            "finished_at",
            "kept_head",
            "outcome",
            "runs",
            "started_at",
            "superseded_head",
            "task_id"
        ]
    );
    assert_eq!(
        (entry["task_id"].as_str(), entry["kept_head"].as_str()),
        (Some("42"), Some(new))
    );
    assert_eq!(entry["superseded_head"], SEED_HEAD);
    let detail = get(&served.at("/v1/tasks/42")).await.json;
    assert_eq!(
        keys(&detail["cancellations"][0]),
        [
            "correlation_id",
            "finished_at",
            "kept_head",
            "outcome",
            "runs",
            "started_at",
            "superseded_head"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writes_need_the_bearer_token_401_without_it_403_with_a_wrong_one() {
    let served = serve(true).await;
    served
        .store
        .set_annotation("42", ANNOTATION_NEEDS_INTERVENTION, Some("stale_run: x"))
        .await
        .unwrap();
    for path in ["/v1/tasks/42/retry", "/v1/tasks/42/resolve"] {
        let body = Some(json!({"by": "ana", "reason": "checked"}));
        let none = served.post(path, None, body.clone()).await;
        assert_json_error(&none, 401, "unauthorized");
        assert_eq!(none.headers["www-authenticate"], "Bearer");
        let basic = served
            .post(path, Some(&format!("Basic {TOKEN}")), body.clone())
            .await;
        assert_json_error(&basic, 401, "unauthorized");
        let wrong = served
            .post(path, Some("Bearer an-api-token-long-enougH"), body)
            .await;
        assert_json_error(&wrong, 403, "forbidden");
    }
    let flagged = get(&served.at("/v1/tasks/42")).await.json;
    assert_eq!(
        flagged["needs_intervention"], "stale_run: x",
        "a refused write changed nothing"
    );

    let bearer = format!("Bearer {TOKEN}");
    let retried = served.post("/v1/tasks/42/retry", Some(&bearer), None).await;
    assert_eq!(retried.status, 202, "{}", retried.text);
    assert_eq!(
        retried.json,
        json!({"task_id": "42", "status": "retry_submitted"})
    );
    assert!(get(&served.at("/v1/tasks/42")).await.json["needs_intervention"].is_null());
    let unknown = served
        .post("/v1/tasks/4242/retry", Some(&bearer), None)
        .await;
    assert_json_error(&unknown, 404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_records_who_and_why_and_refuses_bad_or_oversized_bodies() {
    let served = serve(true).await;
    let bearer = format!("Bearer {TOKEN}");
    served
        .store
        .set_annotation("42", ANNOTATION_NEEDS_INTERVENTION, Some("stale_run: x"))
        .await
        .unwrap();
    let resolved = served
        .post(
            "/v1/tasks/42/resolve",
            Some(&bearer),
            Some(json!({"by": "ana", "reason": "pod removed by hand"})),
        )
        .await;
    assert_eq!(resolved.status, 200, "{}", resolved.text);
    assert_eq!(
        resolved.json,
        json!({"task_id": "42", "status": "resolved"})
    );
    let state = served.store.get("42").await.unwrap().unwrap();
    assert!(state.state.metadata[METADATA_RESOLVED].ends_with("ana: pod removed by hand"));
    assert!(get(&served.at("/v1/tasks/42")).await.json["needs_intervention"].is_null());

    let empty = served
        .post(
            "/v1/tasks/42/resolve",
            Some(&bearer),
            Some(json!({"by": " ", "reason": "x"})),
        )
        .await;
    assert_json_error(&empty, 422, "body");
    let missing = served
        .post(
            "/v1/tasks/42/resolve",
            Some(&bearer),
            Some(json!({"by": "ana"})),
        )
        .await;
    assert_json_error(&missing, 422, "body");
    let huge = served
        .post(
            "/v1/tasks/42/resolve",
            Some(&bearer),
            Some(json!({"by": "ana", "reason": "x".repeat(controller::api::BODY_LIMIT)})),
        )
        .await;
    assert_json_error(&huge, 413, "body");
    let unknown = served
        .post(
            "/v1/tasks/4242/resolve",
            Some(&bearer),
            Some(json!({"by": "ana", "reason": "x"})),
        )
        .await;
    assert_json_error(&unknown, 404, "not_found");
    assert!(
        served.store.get("4242").await.unwrap().is_none(),
        "resolve created a state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_file_the_writes_do_not_exist() {
    let served = serve(false).await;
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/v1/tasks/42/retry", "/v1/tasks/42/resolve"] {
        let answer = served
            .post(path, Some(&bearer), Some(json!({"by": "a", "reason": "b"})))
            .await;
        assert_json_error(&answer, 404, "not_found");
    }
}
