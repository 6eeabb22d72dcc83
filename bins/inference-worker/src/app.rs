//! The HTTP service: routes, handlers, admission, and the shutdown wiring.
//!
//! The rule it keeps: a request is either refused before anything starts
//! (4xx/5xx JSON, no job registered, no units reserved), or it gets a job
//! whose stream ends with exactly one `end` or `error` event.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Extension, Path, State};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use http::{HeaderValue, StatusCode, header};
use job_tracker::{CancelReason, JobOptions, JobTracker, TrackerConfig};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use resilience::Shutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::Span;

use crate::Error;
use crate::api::{
    CancelRequest, CancelResponse, ErrorBody, ErrorCode, ExecuteRequest, MAX_ID_LEN, is_valid_id,
    prompt_tokens,
};
use crate::body::{BodyError, JsonBody};
use crate::config::Config;
use crate::correlation::{CorrelationId, correlate};
use crate::decode::{Decode, DecodeParams};
use crate::metrics::WorkerMetrics;
use crate::narration;
use crate::source::{BuiltinGenerator, GenerateRequest, OpenAiUpstream, TokenSource};
use crate::stop_clock::StopClocks;

/// Largest accepted request body.
pub const BODY_LIMIT_BYTES: usize = 256 * 1024;

/// How often an idle stream sends an SSE comment, so proxies keep it open and
/// a vanished client is noticed even while the upstream is slow.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// The inference worker: its job tracker, token source, metrics and routes.
///
/// Built from a [`Config`] and a [`Shutdown`]; [`Worker::spawn`] serves it on
/// a listener until the shutdown is triggered.
#[derive(Clone)]
pub struct Worker {
    state: Arc<AppState>,
}

struct AppState {
    config: Config,
    tracker: JobTracker,
    source: Arc<dyn TokenSource>,
    metrics: WorkerMetrics,
    registry: Registry,
    shutdown: Shutdown,
    stop_clocks: Arc<StopClocks>,
}

impl Worker {
    /// A worker with the token source the configuration names: the upstream
    /// when `--upstream` is set, else the built-in generator.
    pub fn new(config: Config, shutdown: Shutdown) -> Result<Self, Error> {
        let source: Arc<dyn TokenSource> = match &config.upstream {
            Some(upstream) => Arc::new(OpenAiUpstream::new(
                upstream,
                config.upstream_model.clone(),
                config.upstream_api_key.clone(),
            )?),
            None => Arc::new(BuiltinGenerator::new(config.token_delay())),
        };
        Self::with_source(config, source, shutdown)
    }

    /// A worker with an explicit token source (tests, embedding).
    pub fn with_source(
        config: Config,
        source: Arc<dyn TokenSource>,
        shutdown: Shutdown,
    ) -> Result<Self, Error> {
        config.validate()?;
        let tracker = JobTracker::new(TrackerConfig {
            max_active_jobs: Some(config.max_concurrent_jobs),
            reservation_budget: config.reservation_budget,
            finished_capacity: config.finished_jobs_memory,
            ..TrackerConfig::default()
        });
        let metrics = WorkerMetrics::default();
        let mut registry = Registry::default();
        tracker.register_metrics(&mut registry);
        metrics.register(&mut registry);
        shutdown.register(&mut registry);
        // No readiness check on load: a saturated replica answers 429 with
        // Retry-After; failing readiness instead would pull every busy
        // replica out of the Service at once and turn load into an outage.
        shutdown.health().register(&mut registry);
        Ok(Self {
            state: Arc::new(AppState {
                config,
                tracker,
                source,
                metrics,
                registry,
                shutdown,
                stop_clocks: Arc::default(),
            }),
        })
    }

    /// The routes: `POST /execute`, `POST /cancel`, `GET /jobs`,
    /// `GET /jobs/{job_id}`, `GET /metrics`, `GET /healthz`, `GET /readyz`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/execute", post(execute))
            .route("/cancel", post(cancel))
            .route("/jobs", get(list_jobs))
            .route("/jobs/{job_id}", get(get_job))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .with_state(Arc::clone(&self.state))
            .merge(self.state.shutdown.health().router())
            .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
            .layer(middleware::from_fn(correlate))
    }

    /// The job tracker (status, cancels, reservations).
    pub fn tracker(&self) -> &JobTracker {
        &self.state.tracker
    }

    /// The token source's name (`builtin` or `upstream`).
    pub fn source_name(&self) -> &'static str {
        self.state.source.name()
    }

    /// Serves on `listener` and marks the worker ready. When the shutdown is
    /// triggered, every running job is cancelled with
    /// [`CancelReason::Shutdown`] (its stream ends with `SHUTTING_DOWN`), new
    /// jobs are refused, and the server stops once its connections have
    /// closed. Both tasks are tracked by the [`Shutdown`], so
    /// [`Shutdown::drain`] waits for them.
    pub fn spawn(&self, listener: TcpListener) -> JoinHandle<()> {
        let shutdown = self.state.shutdown.clone();
        let tracker = self.state.tracker.clone();
        let token = shutdown.token();
        shutdown.spawn(async move {
            token.cancelled().await;
            // Open SSE streams would hold axum's graceful shutdown hostage:
            // end them first, then the connections can close.
            let cancelled = tracker.cancel_all(CancelReason::Shutdown);
            tracing::info!(cancelled, "shutdown: running jobs cancelled");
        });
        // Nagle's algorithm would hold a small SSE event back until the
        // previous one is acknowledged (up to a delayed-ACK timeout, ~40 ms):
        // far longer than a decode step. Every event goes out at once.
        let serve = axum::serve(resilience::shutdown::without_nagle(listener), self.router())
            .with_graceful_shutdown(shutdown.token().cancelled_owned());
        let server = {
            let shutdown = shutdown.clone();
            async move {
                if let Err(error) = serve.await {
                    tracing::error!(%error, "server failed");
                    shutdown.trigger();
                }
            }
        };
        let handle = shutdown.spawn(server);
        shutdown.health().set_ready(true);
        handle
    }
}

async fn execute(
    State(state): State<Arc<AppState>>,
    Extension(CorrelationId(correlation_id)): Extension<CorrelationId>,
    body: Result<JsonBody<ExecuteRequest>, BodyError>,
) -> Response {
    let request = match body {
        Ok(JsonBody(request)) => request,
        Err(refused) => {
            state.metrics.execute("invalid");
            return refused.into_response();
        }
    };
    if state.shutdown.is_shutting_down() {
        state.metrics.execute("shutting_down");
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ShuttingDown,
            "Worker is shutting down; retry on another replica",
        );
    }
    let job_id = match request.job_id {
        Some(id) if is_valid_id(&id) => id,
        Some(_) => {
            state.metrics.execute("invalid");
            return invalid_job_id();
        }
        None => format!("job-{}", uuid::Uuid::new_v4().simple()),
    };
    Span::current().record("job_id", job_id.as_str());
    let limit = state.config.max_tokens_limit;
    if request.max_tokens == 0 || request.max_tokens > limit {
        state.metrics.execute("invalid");
        return error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            format!("max_tokens must be between 1 and {limit}"),
        );
    }
    if !(0.0..=2.0).contains(&request.temperature) {
        state.metrics.execute("invalid");
        return error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "temperature must be between 0.0 and 2.0",
        );
    }

    let prompt_tokens = prompt_tokens(&request.prompt);
    let max_tokens = u64::from(request.max_tokens);
    let units = prompt_tokens.saturating_add(max_tokens);
    let options = JobOptions {
        deadline: Some(state.config.job_deadline()),
        reservation: Some(units),
    };
    let job = match state.tracker.register(&job_id, options) {
        Ok(job) => job,
        Err(error) => return admission_refused(&state, &error),
    };
    // A shutdown that began between the check above and the registration
    // missed this job in its cancel_all: cancel it here instead.
    if state.shutdown.is_shutting_down() {
        job.cancel(CancelReason::Shutdown);
    }
    state.metrics.execute("accepted");
    tracing::info!(
        prompt_tokens,
        max_tokens,
        reserved_units = units,
        source = state.source.name(),
        "job started"
    );
    let tokens = state.source.generate(&GenerateRequest {
        prompt: request.prompt,
        max_tokens: request.max_tokens,
        temperature: request.temperature,
        seed: request.seed,
    });
    let decode = Decode::new(
        job,
        tokens,
        DecodeParams {
            max_tokens,
            prompt_tokens,
            deadline: state.config.job_deadline(),
            correlation_id,
            metrics: state.metrics.clone(),
            stop_clock: state.stop_clocks.start(&job_id),
        },
    );
    let sse =
        Sse::new(decode.into_events()).keep_alive(KeepAlive::new().interval(KEEP_ALIVE_INTERVAL));
    let mut response = sse.into_response();
    if let Ok(value) = HeaderValue::from_str(&job_id) {
        response.headers_mut().insert("x-job-id", value);
    }
    response
}

async fn cancel(
    State(state): State<Arc<AppState>>,
    Extension(CorrelationId(correlation_id)): Extension<CorrelationId>,
    body: Result<JsonBody<CancelRequest>, BodyError>,
) -> Response {
    let request = match body {
        Ok(JsonBody(request)) => request,
        Err(refused) => return refused.into_response(),
    };
    if !is_valid_id(&request.job_id) {
        tracing::info!("cancel refused: malformed job id");
        return invalid_job_id();
    }
    Span::current().record("job_id", request.job_id.as_str());
    state
        .stop_clocks
        .requested(&request.job_id, &correlation_id);
    let outcome = state
        .tracker
        .cancel(&request.job_id, CancelReason::ClientRequest);
    narration::cancel_requested(&request.job_id, &correlation_id, outcome);
    (
        StatusCode::ACCEPTED,
        Json(CancelResponse::cancelling(request.job_id)),
    )
        .into_response()
}

async fn list_jobs(State(state): State<Arc<AppState>>) -> Response {
    Json(state.tracker.list()).into_response()
}

async fn get_job(State(state): State<Arc<AppState>>, Path(job_id): Path<String>) -> Response {
    if !is_valid_id(&job_id) {
        return invalid_job_id();
    }
    match state.tracker.get(&job_id) {
        Some(status) => Json(status).into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such job is running or remembered",
        ),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut text = String::new();
    if let Err(error) = encode(&mut text, &state.registry) {
        tracing::error!(%error, "encoding metrics failed");
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "encoding metrics failed",
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
}

fn admission_refused(state: &AppState, error: &job_tracker::Error) -> Response {
    use job_tracker::Error as E;
    let (status, code, label) = match error {
        E::Duplicate { .. } => (StatusCode::CONFLICT, ErrorCode::DuplicateJob, "duplicate"),
        E::AtCapacity { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyJobs,
            "too_many_jobs",
        ),
        E::Exhausted { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ReservationExhausted,
            "reservation_exhausted",
        ),
        E::EmptyJobId => (StatusCode::BAD_REQUEST, ErrorCode::InvalidJobId, "invalid"),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal",
        ),
    };
    state.metrics.execute(label);
    tracing::info!(%error, "job refused");
    let mut response = error_response(status, code, error.to_string());
    if error.is_transient() {
        // Running jobs end within seconds; tell well-behaved clients when to retry.
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn invalid_job_id() -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidJobId,
        format!(
            "job_id must match ^[A-Za-z0-9][A-Za-z0-9._:-]{{0,{}}}$",
            MAX_ID_LEN - 1
        ),
    )
}

fn error_response(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(code, message))).into_response()
}
