//! HTTP endpoints besides the probes: `/metrics` and the agents API.
//!
//! Rule kept here: the API only reads state or asks the job tracker to
//! cancel; it never touches a process itself, so a cancel takes the same
//! path as a timeout (SIGTERM to the group, kill grace, SIGKILL).
//!
//! * `GET /v1/agents`: `{"agents":[{id, cluster, incident_id, severity,
//!   pid, state, started_at, deadline}]}` for every running agent.
//! * `GET /v1/agents/{id}`: one agent, or 404.
//! * `POST /v1/agents/{id}/cancel`: 202 `{"id","status":"cancelling"}` (also
//!   when already cancelling), 409 `{"status":"finished"}` for an agent that
//!   already ended, 404 `{"status":"unknown"}`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use job_tracker::{CancelOutcome, CancelReason, JobState, JobStatus};
use serde::Serialize;

use crate::metrics::Metrics;
use crate::runner::{AgentInfo, Inner};

/// The OpenMetrics content type prometheus-client encodes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`.
pub(crate) fn metrics_router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(inner)
}

/// `/v1/agents` routes.
pub(crate) fn agents_router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/v1/agents", get(list))
        .route("/v1/agents/{id}", get(show))
        .route("/v1/agents/{id}/cancel", post(cancel))
        .with_state(inner)
}

/// One agent as the API shows it: what the runner knows plus what the job
/// tracker knows (state, start, deadline).
#[derive(Debug, Serialize)]
struct AgentView {
    #[serde(flatten)]
    info: AgentInfo,
    #[serde(flatten)]
    state: Option<JobState>,
    started_at: Option<Timestamp>,
    deadline: Option<Timestamp>,
}

impl AgentView {
    fn new(info: AgentInfo, job: Option<JobStatus>) -> Self {
        Self {
            info,
            state: job.as_ref().map(|j| j.state),
            started_at: job.as_ref().map(|j| j.started_at),
            deadline: job.and_then(|j| j.deadline),
        }
    }
}

#[derive(Debug, Serialize)]
struct AgentList {
    agents: Vec<AgentView>,
}

#[derive(Debug, Serialize)]
struct CancelAnswer<'a> {
    id: &'a str,
    status: &'static str,
}

async fn metrics(State(inner): State<Arc<Inner>>) -> Response {
    inner.refresh_breaker_gauge();
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        Metrics::encode(&inner.registry),
    )
        .into_response()
}

async fn list(State(inner): State<Arc<Inner>>) -> Json<AgentList> {
    let agents = inner
        .agent_list()
        .into_iter()
        .map(|info| {
            let job = inner.tracker.get(&info.id);
            AgentView::new(info, job)
        })
        .collect();
    Json(AgentList { agents })
}

async fn show(State(inner): State<Arc<Inner>>, Path(id): Path<String>) -> Response {
    match inner.agent(&id) {
        Some(info) => Json(AgentView::new(info, inner.tracker.get(&id))).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(CancelAnswer {
                id: &id,
                status: "unknown",
            }),
        )
            .into_response(),
    }
}

async fn cancel(State(inner): State<Arc<Inner>>, Path(id): Path<String>) -> Response {
    let outcome = inner.tracker.cancel(&id, CancelReason::ClientRequest);
    tracing::info!(agent_id = %id, outcome = outcome.as_label(), "agent cancel requested");
    let (status, word) = match outcome {
        CancelOutcome::Cancelling | CancelOutcome::AlreadyCancelling => {
            (StatusCode::ACCEPTED, "cancelling")
        }
        CancelOutcome::Finished => (StatusCode::CONFLICT, "finished"),
        CancelOutcome::Unknown => (StatusCode::NOT_FOUND, "unknown"),
    };
    (
        status,
        Json(CancelAnswer {
            id: &id,
            status: word,
        }),
    )
        .into_response()
}
