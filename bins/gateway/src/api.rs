//! The HTTP API: `POST /api/v1/signals`, `POST /api/v1/alertmanager` and
//! `GET /metrics` (the probes come from [`resilience::Health`]).
//!
//! Rule kept here: the status code tells the sender what to do. 201 (this
//! delivery created the request) and 202 (counted as a duplicate) carry the
//! request's name and mean "recorded, do not resend"; 400 means "this
//! payload will never be accepted" and nothing was written; 413 a body over
//! the limit; 500/503 "not recorded, retry" — the API server could not be
//! reached, the lock or the count failed. Bodies are read raw under a size
//! limit and parsed by us, so every refusal is a 400 with a message.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::json;

use crate::Error;
use crate::dedupe::{Deduplicator, Recorded};
use crate::metrics::Metrics;
use crate::signal::{AlertItem, Signal, parse_alertmanager, parse_signal};

/// The OpenMetrics content type prometheus-client encodes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the handlers share.
pub(crate) struct ApiState {
    pub(crate) dedupe: Deduplicator,
    pub(crate) metrics: Metrics,
    pub(crate) registry: Registry,
}

/// The API routes, bodies limited to `max_body_bytes`.
pub(crate) fn router(state: Arc<ApiState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/api/v1/signals", post(signals))
        .route("/api/v1/alertmanager", post(alertmanager))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// One recorded alert as answered.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AlertAnswer {
    status: &'static str,
    fingerprint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    occurrence_count: Option<u64>,
}

impl AlertAnswer {
    fn recorded(signal: &Signal, r: Recorded) -> Self {
        Self {
            status: if r.created { "created" } else { "deduplicated" },
            fingerprint: signal.fingerprint.clone(),
            name: Some(r.name),
            occurrence_count: Some(r.occurrence_count),
        }
    }
}

async fn signals(State(state): State<Arc<ApiState>>, body: Bytes) -> Response {
    let signal = match parse_signal(&body) {
        Ok(signal) => signal,
        Err(e) => return refused(&state, &Error::Invalid(e)),
    };
    match state.dedupe.record(&signal).await {
        Ok(r) => {
            let code = if r.created {
                StatusCode::CREATED
            } else {
                StatusCode::ACCEPTED
            };
            (code, Json(AlertAnswer::recorded(&signal, r))).into_response()
        }
        Err(e) => failed(&signal.fingerprint, &e),
    }
}

async fn alertmanager(State(state): State<Arc<ApiState>>, body: Bytes) -> Response {
    let items = match parse_alertmanager(&body) {
        Ok(items) => items,
        Err(e) => return refused(&state, &Error::Invalid(e)),
    };
    let results = futures::future::join_all(items.iter().map(|item| {
        let state = &state;
        async move {
            match item {
                AlertItem::Resolved(fingerprint) => {
                    state.metrics.outcome("resolved");
                    Ok(AlertAnswer {
                        status: "resolved",
                        fingerprint: fingerprint.clone(),
                        name: None,
                        occurrence_count: None,
                    })
                }
                AlertItem::Firing(signal) => state
                    .dedupe
                    .record(signal)
                    .await
                    .map(|r| AlertAnswer::recorded(signal, r))
                    .map_err(|e| (signal.fingerprint.clone(), e)),
            }
        }
    }))
    .await;
    let mut answers = Vec::with_capacity(results.len());
    let mut failure: Option<(String, Error)> = None;
    for result in results {
        match result {
            Ok(answer) => answers.push(answer),
            Err(f) => {
                failure.get_or_insert(f);
            }
        }
    }
    if let Some((fingerprint, e)) = failure {
        // Alertmanager resends the whole group; the alerts counted here are
        // counted again then (each delivery of them is one occurrence).
        return failed(&fingerprint, &e);
    }
    let code = if answers.iter().any(|a| a.status == "created") {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    (code, Json(json!({ "alerts": answers }))).into_response()
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        Metrics::encode(&state.registry),
    )
        .into_response()
}

fn refused(state: &ApiState, e: &Error) -> Response {
    state.metrics.outcome("invalid");
    tracing::info!(error = %e, "payload refused");
    error_response(e, None)
}

fn failed(fingerprint: &str, e: &Error) -> Response {
    tracing::warn!(fingerprint, error = %e, "delivery not recorded; the sender should retry");
    error_response(e, Some(fingerprint))
}

fn error_response(e: &Error, fingerprint: Option<&str>) -> Response {
    let code = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match fingerprint {
        Some(f) => json!({ "error": e.to_string(), "fingerprint": f }),
        None => json!({ "error": e.to_string() }),
    };
    (code, Json(body)).into_response()
}
