//! The controller's JSON API: what each task is doing, its runs, its
//! cancellations and labels, the operations in flight, and the two
//! intervention writes.
//!
//! The rule it keeps: **reads answer from the durable facts, writes are
//! never open.** Every read comes from the task states, the runs and the
//! pull request's labels as their backends hold them (so any replica
//! answers alike, and a restart loses nothing); the writes need
//! `Authorization: Bearer <token>` compared in constant time — 401 without
//! one, 403 with a wrong one — and with no token configured they do not
//! exist (404). Every error is JSON `{"error", "message"}`; request bodies
//! are bounded ([`BODY_LIMIT`]).
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/tasks` | `[TaskSummary]` |
//! | `GET /v1/tasks/{task_id}` | [`TaskDetail`], 404 for an unknown task |
//! | `GET /v1/cancellations?active=true` | `[ActiveCancellation]`; without `active=true`, the recorded `[CancellationEntry]`, newest first |
//! | `POST /v1/tasks/{task_id}/retry` | 202 [`WriteAnswer`] |
//! | `POST /v1/tasks/{task_id}/resolve` `{"by","reason"}` | 200 [`WriteAnswer`] |

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cancel_coordinator::{METADATA_PULL_REQUEST, Workloads};
use http::{HeaderMap, StatusCode, header};
use jiff::Timestamp;
use label_cas::{ETag, Fetched, LabelBackend, PrRef};
use recovery::{ANNOTATION_NEEDS_INTERVENTION, RecoveryManager};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use state_store::{CancellationRecord, OperationJournal, Snapshot, StateStore};
use tokio::time::Instant;
use tracing::warn;

use crate::metrics::ControllerMetrics;

/// The largest request body the API reads (the writes carry a name and a
/// reason; nothing more).
pub const BODY_LIMIT: usize = 16 * 1024;

/// The most tasks `GET /v1/tasks` lists, and the most entries
/// `GET /v1/cancellations` returns: an answer stays one bounded page.
pub const MAX_LISTED: usize = 10_000;

/// The longest `by` and `reason` of a resolve.
pub const MAX_RESOLVE_FIELD: usize = 256;

/// States read per LIST page.
const PAGE: u32 = 500;

/// What the API reads and writes through. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    store: StateStore,
    workloads: Arc<dyn Workloads>,
    labels: Arc<dyn LabelBackend>,
    recovery: RecoveryManager,
    token: Option<SecretString>,
    metrics: ControllerMetrics,
    /// The last labels read per pull request, with their ETag: a repeated
    /// read is conditional, and GitHub answers an unchanged one 304 at no
    /// rate-limit cost, however often the API is polled.
    labels_seen: Mutex<HashMap<PrRef, (ETag, Vec<String>)>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("writes", &self.inner.token.is_some())
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// Over the task states, runs and labels; the writes go through
    /// `recovery` and need `token` (`None`: they are off).
    pub fn new(
        store: StateStore,
        workloads: Arc<dyn Workloads>,
        labels: Arc<dyn LabelBackend>,
        recovery: RecoveryManager,
        token: Option<SecretString>,
        metrics: ControllerMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                workloads,
                labels,
                recovery,
                token,
                metrics,
                labels_seen: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl ApiState {
    /// `pr`'s labels now: a conditional read when they were read before
    /// (304: the remembered ones); `[]`, logged, when GitHub cannot say.
    async fn labels_of(&self, pr: &PrRef, task_id: &str) -> Vec<String> {
        let seen = self
            .inner
            .labels_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pr)
            .cloned();
        match self
            .inner
            .labels
            .get(pr, seen.as_ref().map(|(etag, _)| etag))
            .await
        {
            Ok(Fetched::Labels { labels, etag }) => {
                let names = labels.into_names();
                let mut cache = self
                    .inner
                    .labels_seen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                match etag {
                    Some(etag) => {
                        if cache.len() >= MAX_REMEMBERED_LABELS && !cache.contains_key(pr) {
                            // Bounded: forgetting only costs a full read.
                            cache.clear();
                        }
                        cache.insert(pr.clone(), (etag, names.clone()));
                    }
                    None => {
                        cache.remove(pr);
                    }
                }
                names
            }
            Ok(Fetched::NotModified) => seen.map(|(_, names)| names).unwrap_or_default(),
            Err(error) => {
                warn!(%error, task_id, "API: the pull request's labels could not be read");
                Vec::new()
            }
        }
    }
}

/// Pull requests whose labels (and ETag) the API remembers.
const MAX_REMEMBERED_LABELS: usize = 1_024;

/// One task of `GET /v1/tasks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// The task.
    pub task_id: String,
    /// The newest head recorded for its pull request.
    pub head_sha: Option<String>,
    /// Its lifecycle status (`Initialized`, `InProgress`, `Completed`, …).
    pub status: String,
    /// Whether an operation (a cancellation) is in flight.
    pub active_operation: bool,
    /// Why the reconciler flagged it for a human, if it did.
    pub needs_intervention: Option<String>,
}

/// `GET /v1/tasks/{task_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDetail {
    /// The task.
    pub task_id: String,
    /// The newest head recorded for its pull request.
    pub head_sha: Option<String>,
    /// Its lifecycle status.
    pub status: String,
    /// Its runs, as the run backend lists them (terminal ones included).
    pub runs: Vec<RunView>,
    /// Its cancellations, oldest first.
    pub cancellations: Vec<CancellationView>,
    /// Its pull request's labels (empty when it names no pull request or
    /// they could not be read).
    pub labels: Vec<String>,
    /// The operation in flight.
    pub operation: Option<OperationView>,
    /// Why the reconciler flagged it for a human, if it did.
    pub needs_intervention: Option<String>,
}

/// One run of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunView {
    /// Object name.
    pub name: String,
    /// Agent role.
    pub role: String,
    /// The commit it works on.
    pub head_sha: String,
    /// Its phase (`Running`, `Succeeded`, `Cancelled`, …; empty when not
    /// reported yet).
    pub phase: String,
}

/// One recorded cancellation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancellationView {
    /// The newest head whose work was cancelled (`None` when nothing was).
    pub superseded_head: Option<String>,
    /// The head kept.
    pub kept_head: String,
    /// The runs cancelled.
    pub runs: Vec<String>,
    /// How it ended (`Cancelled`, `NothingToCancel`, `Failed`, `RolledBack`).
    pub outcome: String,
    /// When the operation began.
    pub started_at: Timestamp,
    /// When it was recorded finished.
    pub finished_at: Option<Timestamp>,
    /// The correlation id of the delivery that caused it.
    pub correlation_id: Option<String>,
}

/// The operation in flight on a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationView {
    /// The operation's id.
    pub id: String,
    /// Its current step (`Started`, `Cancelled`, `Labeled`, …).
    pub step: String,
    /// When it began.
    pub started_at: Timestamp,
}

/// One operation of `GET /v1/cancellations?active=true`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActiveCancellation {
    /// The task.
    pub task_id: String,
    /// The operation's id.
    pub id: String,
    /// Its kind (`Cancellation`, `Recovery`).
    pub kind: String,
    /// Its current step.
    pub step: String,
    /// How that step is going (`Pending`, `Succeeded`, `Failed`).
    pub step_status: Option<String>,
    /// When it began.
    pub started_at: Timestamp,
    /// When it last made progress.
    pub last_progress: Timestamp,
    /// Seconds since it began.
    pub age_seconds: f64,
    /// The runs it targets.
    pub runs: Vec<String>,
}

/// One entry of `GET /v1/cancellations` (without `active=true`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancellationEntry {
    /// The task.
    pub task_id: String,
    /// The cancellation.
    #[serde(flatten)]
    pub cancellation: CancellationView,
}

/// The answer of a write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteAnswer {
    /// The task.
    pub task_id: String,
    /// `retry_submitted` or `resolved`.
    pub status: String,
}

/// The body of `POST /v1/tasks/{task_id}/resolve`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveRequest {
    /// Who resolved it (recorded in the task's state).
    pub by: String,
    /// Why (recorded in the task's state).
    pub reason: String,
}

/// The query of `GET /v1/cancellations`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct CancellationsQuery {
    /// Only the operations in flight.
    #[serde(default)]
    pub active: bool,
}

/// The routes of the API, with their bodies bounded and their answers
/// counted.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/tasks", get(list_tasks))
        .route("/v1/tasks/{task_id}", get(get_task))
        .route("/v1/tasks/{task_id}/retry", post(retry))
        .route("/v1/tasks/{task_id}/resolve", post(resolve))
        .route("/v1/cancellations", get(list_cancellations))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// A JSON error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn backend(what: &str, error: &impl std::fmt::Display) -> Self {
        warn!(%error, what, "API read failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{what}: {error}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({"error": self.error, "message": self.message})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn count(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    state.inner.metrics.request(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn list_tasks(State(state): State<ApiState>) -> ApiResult<Json<Vec<TaskSummary>>> {
    let mut tasks = Vec::new();
    each_state(&state.inner.store, |snapshot| {
        tasks.push(summary(snapshot));
        tasks.len() < MAX_LISTED
    })
    .await?;
    Ok(Json(tasks))
}

async fn get_task(
    State(state): State<ApiState>,
    Path(task_id): Path<String>,
) -> ApiResult<Json<TaskDetail>> {
    let inner = &state.inner;
    let snapshot = known_task(&inner.store, &task_id).await?;
    let runs = inner
        .workloads
        .runs(&task_id)
        .await
        .map_err(|e| ApiError::backend("runs", &e))?
        .into_iter()
        .map(|run| RunView {
            name: run.name,
            role: run.role,
            head_sha: run.head_sha,
            phase: run.phase,
        })
        .collect();
    let state_doc = &snapshot.state;
    let labels = match state_doc
        .metadata
        .get(METADATA_PULL_REQUEST)
        .and_then(|pr| pr.parse::<PrRef>().ok())
    {
        Some(pr) => state.labels_of(&pr, &task_id).await,
        None => Vec::new(),
    };
    Ok(Json(TaskDetail {
        task_id: state_doc.task_id.clone(),
        head_sha: state_doc.latest_head.as_ref().map(|h| h.sha.clone()),
        status: enum_name(&state_doc.status),
        runs,
        cancellations: state_doc
            .cancellation_history
            .iter()
            .map(cancellation_view)
            .collect(),
        labels,
        operation: state_doc.active_operation.as_ref().map(|op| OperationView {
            id: op.operation_id.clone(),
            step: current_step(op),
            started_at: op.started_at,
        }),
        needs_intervention: needs_intervention(&snapshot),
    }))
}

async fn list_cancellations(
    State(state): State<ApiState>,
    query: Result<Query<CancellationsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "query", e.body_text()))?;
    let now = Timestamp::now();
    if query.active {
        let mut active = Vec::new();
        each_state(&state.inner.store, |snapshot| {
            if let Some(op) = &snapshot.state.active_operation {
                active.push(ActiveCancellation {
                    task_id: snapshot.state.task_id.clone(),
                    id: op.operation_id.clone(),
                    kind: String::from(op.kind.clone()),
                    step: current_step(op),
                    step_status: op.current().map(|s| enum_name(&s.status)),
                    started_at: op.started_at,
                    last_progress: op.last_progress(),
                    age_seconds: now.duration_since(op.started_at).as_secs_f64().max(0.0),
                    runs: op.targets.clone(),
                });
            }
            active.len() < MAX_LISTED
        })
        .await?;
        active.sort_by_key(|a| a.started_at);
        return Ok(Json(active).into_response());
    }
    let mut entries = Vec::new();
    each_state(&state.inner.store, |snapshot| {
        entries.extend(snapshot.state.cancellation_history.iter().map(|record| {
            CancellationEntry {
                task_id: snapshot.state.task_id.clone(),
                cancellation: cancellation_view(record),
            }
        }));
        entries.len() < MAX_LISTED
    })
    .await?;
    entries.sort_by_key(|e| std::cmp::Reverse(e.cancellation.started_at));
    entries.truncate(MAX_LISTED);
    Ok(Json(entries).into_response())
}

async fn retry(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
) -> ApiResult<(StatusCode, Json<WriteAnswer>)> {
    authorize(&state, &headers)?;
    known_task(&state.inner.store, &task_id).await?;
    match state.inner.recovery.retry(&task_id).await {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(WriteAnswer {
                task_id,
                status: "retry_submitted".to_owned(),
            }),
        )),
        Err(recovery::Error::UnknownTask(_)) => Err(unknown(&task_id)),
        Err(e) => Err(ApiError::backend("retry", &e)),
    }
}

async fn resolve(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
    body: Result<Json<ResolveRequest>, JsonRejection>,
) -> ApiResult<Json<WriteAnswer>> {
    authorize(&state, &headers)?;
    let Json(request) = body.map_err(|e| ApiError::new(e.status(), "body", e.body_text()))?;
    for (field, value) in [("by", &request.by), ("reason", &request.reason)] {
        let length = value.trim().chars().count();
        if length == 0 || length > MAX_RESOLVE_FIELD {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "body",
                format!("{field} must be 1 to {MAX_RESOLVE_FIELD} characters"),
            ));
        }
    }
    // Resolving writes the state: never for a task that has none (the
    // write would create it).
    known_task(&state.inner.store, &task_id).await?;
    state
        .inner
        .recovery
        .resolve(&task_id, request.by.trim(), request.reason.trim())
        .await
        .map_err(|e| ApiError::backend("resolve", &e))?;
    Ok(Json(WriteAnswer {
        task_id,
        status: "resolved".to_owned(),
    }))
}

/// 404 when no token is configured (the writes are off), 401 without a
/// bearer token, 403 with a wrong one.
fn authorize(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(expected) = &state.inner.token else {
        return Err(ApiError::not_found(
            "the write endpoints are off: no --api-token-file is configured",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty());
    let Some(presented) = presented else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <token>",
        ));
    };
    if tokens_match(presented, expected.expose_secret()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the bearer token is not the configured one",
        ))
    }
}

/// Compares the tokens' SHA-256 digests in constant time: how long it
/// takes tells nothing of where they differ, nor of the expected length.
fn tokens_match(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn known_task(store: &StateStore, task_id: &str) -> ApiResult<Snapshot> {
    if state_store::validate_task_id(task_id).is_err() {
        // No state can have this id: unknown, like any other.
        return Err(unknown(task_id));
    }
    store
        .get(task_id)
        .await
        .map_err(|e| ApiError::backend("task state", &e))?
        .ok_or_else(|| unknown(task_id))
}

fn unknown(task_id: &str) -> ApiError {
    let shown: String = task_id.chars().take(64).collect();
    ApiError::not_found(format!("task {shown:?} has no state"))
}

/// Calls `each` on every state, a LIST page at a time, until it returns
/// `false` or the states end.
async fn each_state(store: &StateStore, mut each: impl FnMut(&Snapshot) -> bool) -> ApiResult<()> {
    let mut token = None;
    loop {
        let page = store
            .list_page(PAGE, token)
            .await
            .map_err(|e| ApiError::backend("task states", &e))?;
        for snapshot in &page.states {
            if !each(snapshot) {
                return Ok(());
            }
        }
        match page.continue_token {
            Some(next) => token = Some(next),
            None => return Ok(()),
        }
    }
}

fn summary(snapshot: &Snapshot) -> TaskSummary {
    let state = &snapshot.state;
    TaskSummary {
        task_id: state.task_id.clone(),
        head_sha: state.latest_head.as_ref().map(|h| h.sha.clone()),
        status: enum_name(&state.status),
        active_operation: state.active_operation.is_some(),
        needs_intervention: needs_intervention(snapshot),
    }
}

fn needs_intervention(snapshot: &Snapshot) -> Option<String> {
    snapshot
        .annotation(ANNOTATION_NEEDS_INTERVENTION)
        .map(str::to_owned)
}

fn cancellation_view(record: &CancellationRecord) -> CancellationView {
    CancellationView {
        superseded_head: record.superseded_heads.last().cloned(),
        kept_head: record.new_head_sha.clone(),
        runs: record.targets.clone(),
        outcome: enum_name(&record.outcome),
        started_at: record.started_at.unwrap_or(record.at),
        finished_at: record.finished_at,
        correlation_id: record.correlation_id.clone(),
    }
}

fn current_step(op: &OperationJournal) -> String {
    op.current()
        .map_or_else(|| "Started".to_owned(), |s| s.step.to_string())
}

/// A unit enum's serde name (`InProgress`), as the state stores it.
fn enum_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(tokens_match(
            "a-long-enough-api-token",
            "a-long-enough-api-token"
        ));
        assert!(!tokens_match(
            "a-long-enough-api-tokem",
            "a-long-enough-api-token"
        ));
        assert!(!tokens_match("", "a-long-enough-api-token"));
    }

    #[tokio::test]
    async fn labels_are_read_again_conditionally_and_a_change_is_seen() {
        let github = Arc::new(label_cas::MemoryLabels::new());
        let pr = PrRef::new("acme", "widgets", 7).unwrap();
        github.set_labels(&pr, ["ready-for-qa"]);
        let store = StateStore::new(state_store::MemoryBackend::new());
        let workloads: Arc<dyn Workloads> = Arc::new(cancel_coordinator::MemoryWorkloads::new());
        let leases = lease_lock::MemoryLeases::new();
        let lock = |prefix: &str| {
            lease_lock::LeaseLock::new(
                leases.clone(),
                lease_lock::LockConfig {
                    prefix: prefix.into(),
                    ..lease_lock::LockConfig::new("t", "default")
                },
            )
            .unwrap()
        };
        let saga = cancel_coordinator::StateAwareCancellation::builder(
            lock("cancel"),
            store.clone(),
            Arc::clone(&workloads),
            Arc::new(label_cas::MemoryPullRequests::new()),
            Arc::clone(&github) as Arc<dyn LabelBackend>,
        )
        .build()
        .unwrap();
        let coordinator =
            cancel_coordinator::CancellationCoordinator::new(saga, Default::default()).unwrap();
        let recovery = RecoveryManager::builder(
            store.clone(),
            lock("cancel"),
            Arc::clone(&workloads),
            coordinator,
        )
        .build()
        .unwrap();
        let api = ApiState::new(
            store,
            workloads,
            Arc::clone(&github) as Arc<dyn LabelBackend>,
            recovery,
            None,
            ControllerMetrics::default(),
        );

        assert_eq!(api.labels_of(&pr, "42").await, ["ready-for-qa"]);
        assert_eq!(api.labels_of(&pr, "42").await, ["ready-for-qa"]);
        assert_eq!(
            github.calls().not_modified,
            1,
            "the second read was not conditional"
        );
        github.set_labels(&pr, ["needs-qa"]);
        assert_eq!(api.labels_of(&pr, "42").await, ["needs-qa"]);
    }

    #[test]
    fn enum_names_are_the_stored_names() {
        assert_eq!(
            enum_name(&state_store::TaskStatus::InProgress),
            "InProgress"
        );
        assert_eq!(
            enum_name(&state_store::CancellationOutcome::NothingToCancel),
            "NothingToCancel"
        );
    }
}
