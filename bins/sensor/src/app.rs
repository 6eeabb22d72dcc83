//! The HTTP service: `POST /webhook/github`, `/metrics`, `/healthz`,
//! `/readyz`, and what a verified delivery becomes.
//!
//! The rule it keeps: **record the fact first, never 202 for a fact that
//! was not stored.** A delivery that supersedes work is written to its
//! task's state (with its delivery key, in one compare-and-swap) before it
//! is answered; the write runs in a task of its own, so an answer that gives
//! up after `--state-write-timeout-seconds` (503: GitHub shows the delivery
//! failed and it can be redelivered) never leaves the write half done — it
//! lands or it does not, and when it lands the coordinator still gets it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cancel_coordinator::{
    CancellationCoordinator, CancellationRequest, METADATA_PULL_REQUEST, Reason, Submitted,
};
use github_webhook::{Delivery, DeliveryKey, FormPolicy, Rejection, WebhookHandler, WebhookRoute};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use resilience::Shutdown;
use serde::Serialize;
use state_store::{DeliveryRecorded, RemediationState, StateStore};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument as _, info, info_span, warn};

use crate::Error;
use crate::config::Config;
use crate::mapping::{AllowLists, TaskMapping};
use crate::metrics::SensorMetrics;
use crate::plan::{Handoff, LookUp, Plan, Record, Rules};
use crate::pulls::PullLookup;
use crate::recent::{RecentDeliveries, Remembered};

/// The webhook route's path.
pub const WEBHOOK_PATH: &str = "/webhook/github";

/// What the sensor is built on.
pub struct SensorParts {
    /// The task states.
    pub store: StateStore,
    /// The coordinator the recorded supersessions are handed to (`None`:
    /// record only, and another process's coordinator and the recovery
    /// reconciler converge from the states).
    pub coordinator: Option<CancellationCoordinator>,
    /// Finds a pushed branch's pull request.
    pub pulls: Arc<dyn PullLookup>,
}

/// The sensor: its routes, its dedupe memory and metrics. Cheap to clone.
#[derive(Clone)]
pub struct Sensor {
    shared: Arc<Shared>,
    route_config: RouteConfig,
}

#[derive(Clone)]
struct RouteConfig {
    secrets: github_webhook::WebhookSecrets,
    body_limit: usize,
    form_policy: FormPolicy,
}

struct Shared {
    rules: Rules,
    store: StateStore,
    coordinator: Option<CancellationCoordinator>,
    pulls: Arc<dyn PullLookup>,
    recent: RecentDeliveries,
    writes: Arc<Semaphore>,
    writers: Semaphore,
    write_timeout: Duration,
    lookup_timeout: Duration,
    metrics: SensorMetrics,
    registry: Registry,
    shutdown: Shutdown,
    coordinator_drain: Duration,
}

impl std::fmt::Debug for Sensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sensor")
            .field("rules", &self.shared.rules)
            .field("secrets", &self.route_config.secrets)
            .finish_non_exhaustive()
    }
}

impl Sensor {
    /// A sensor over `parts` with `config` (validated).
    pub fn new(config: &Config, parts: SensorParts, shutdown: Shutdown) -> Result<Self, Error> {
        config.validate()?;
        let rules = Rules {
            mapping: TaskMapping::new(config.branch_regex()?, config.task_label_prefix.clone()),
            allow: AllowLists::new(&config.repositories, &config.senders),
            cancel_on_close: config.cancel_on_close,
        };
        let metrics = SensorMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        parts.store.register(&mut registry);
        if let Some(coordinator) = &parts.coordinator {
            coordinator.register(&mut registry);
        }
        shutdown.register(&mut registry);
        shutdown.health().register(&mut registry);
        crate::wiring::check_state_readiness(&parts.store, &shutdown);
        Ok(Self {
            route_config: RouteConfig {
                secrets: config.webhook_secrets()?,
                body_limit: config.body_limit_bytes,
                form_policy: if config.refuse_form_encoded {
                    FormPolicy::Refuse
                } else {
                    FormPolicy::Decode
                },
            },
            shared: Arc::new(Shared {
                rules,
                store: parts.store,
                coordinator: parts.coordinator,
                pulls: parts.pulls,
                recent: RecentDeliveries::new(config.dedupe_cache_size),
                writes: Arc::new(Semaphore::new(config.max_inflight_writes)),
                writers: Semaphore::new(config.max_concurrent_writes),
                write_timeout: config.state_write_timeout(),
                lookup_timeout: config.github_lookup_timeout(),
                metrics,
                registry,
                shutdown,
                coordinator_drain: config.drain_timeout(),
            }),
        })
    }

    /// The routes: `POST /webhook/github`, `GET /metrics`, `/healthz`, `/readyz`.
    pub fn router(&self) -> Result<Router, Error> {
        Ok(Router::new()
            .route("/metrics", get(metrics))
            .with_state(Arc::clone(&self.shared))
            .merge(self.webhook_router()?)
            .merge(self.shared.shutdown.health().router()))
    }

    /// `POST /webhook/github` alone, for a service that embeds the sensor
    /// (the controller's `--dev`): that service serves it, registers
    /// [`metrics`](Self::metrics) in its own registry and runs the
    /// coordinator's workers; [`spawn`](Self::spawn) is not called.
    pub fn webhook_router(&self) -> Result<Router, Error> {
        let config = self.route_config.clone();
        let webhook = WebhookRoute::new(config.secrets, Endpoint(Arc::clone(&self.shared)))
            .with_body_limit(config.body_limit)
            .map_err(|e| {
                Error::Config(crate::ConfigError {
                    flag: "body-limit-bytes",
                    reason: e.to_string(),
                })
            })?
            .with_form_policy(config.form_policy)
            .into_router(WEBHOOK_PATH)
            .layer(middleware::from_fn_with_state(
                Arc::clone(&self.shared),
                time_answer,
            ));
        Ok(webhook)
    }

    /// The metrics.
    pub fn metrics(&self) -> &SensorMetrics {
        &self.shared.metrics
    }

    /// Starts the coordinator's workers, serves on `listener` and marks the
    /// sensor ready. When the shutdown is triggered the server stops
    /// accepting connections and finishes the requests in flight, and the
    /// workers finish their cancellations (those still running after the
    /// drain timeout leave resumable journals). The server, the state writes
    /// and the workers are tracked by the [`Shutdown`], so
    /// [`Shutdown::drain`] waits for all of them.
    pub fn spawn(&self, listener: TcpListener) -> Result<JoinHandle<()>, Error> {
        let shutdown = self.shared.shutdown.clone();
        if let Some(coordinator) = &self.shared.coordinator {
            // An embedding service that runs the workers itself checks its own.
            crate::wiring::run_workers(coordinator, &shutdown, self.shared.coordinator_drain);
        }
        let handle = shutdown.serve(listener, self.router()?);
        shutdown.health().set_ready(true);
        Ok(handle)
    }
}

/// The handler behind the verified-webhook route.
struct Endpoint(Arc<Shared>);

/// The body of a 202 or 200.
#[derive(Serialize)]
struct Answer<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    head_sha: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    correlation_id: &'a str,
}

/// The body of a 400 or 503.
#[derive(Serialize)]
struct Refusal<'a> {
    error: &'static str,
    message: String,
    correlation_id: &'a str,
}

impl WebhookHandler for Endpoint {
    async fn handle(&self, delivery: Delivery) -> Response {
        // The delivery GUID is 1–128 visible ASCII characters (checked by
        // github-webhook): a valid correlation id as it is.
        let correlation_id = delivery.headers.delivery_id.clone();
        let span = info_span!(
            "delivery",
            correlation_id = %correlation_id,
            event = %delivery.headers.event,
            action = delivery.event.action().unwrap_or_default(),
            task_id = tracing::field::Empty,
        );
        self.0
            .handle(delivery, correlation_id)
            .instrument(span)
            .await
    }

    fn rejected(&self, rejection: &Rejection, headers: &HeaderMap) {
        let metrics = &self.0.metrics;
        let event = headers
            .get(github_webhook::delivery::EVENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(github_webhook::normalize_event_name)
            .unwrap_or_default();
        metrics.delivery(&event, None, "rejected", rejection.as_label());
        if let Rejection::Signature(e) = rejection {
            metrics
                .signature_failures
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: e.as_label(),
                })
                .inc();
        }
        // The headers are unauthenticated here: log the delivery id only
        // (bounded), never the body or a signature.
        let delivery: String = headers
            .get(github_webhook::delivery::DELIVERY_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .chars()
            .take(64)
            .collect();
        warn!(
            status = rejection.status().as_u16(),
            reason = rejection.as_label(),
            delivery = %delivery,
            error = %rejection,
            "webhook refused"
        );
    }
}

impl Shared {
    async fn handle(self: &Arc<Self>, delivery: Delivery, correlation_id: String) -> Response {
        let event = delivery.headers.event.clone();
        let event = event.as_str();
        let action = delivery.event.action().map(str::to_owned);
        let action = action.as_deref();
        if self.shutdown.is_shutting_down() {
            self.metrics
                .delivery(event, action, "rejected", "shutting_down");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the sensor is shutting down; redeliver to another replica".to_owned(),
                &correlation_id,
            );
        }
        let key = delivery.headers.dedupe_key();
        if let Some(seen) = self.recent.get(key.as_str()) {
            self.metrics.duplicate("memory");
            self.metrics.delivery(event, action, "duplicate", "memory");
            info!(task_id = %seen.task_id, "duplicate delivery (remembered)");
            return accepted("duplicate", &seen.task_id, &seen.head_sha, &correlation_id);
        }
        let plan = self.rules.plan(
            &delivery.event,
            &delivery.headers.delivery_id,
            &correlation_id,
        );
        // The body and the parsed payload (tens of KiB) are not needed past
        // the plan: with a thousand deliveries waiting on their state
        // writes, holding them would multiply the sensor's memory.
        drop(delivery);
        let record = match plan {
            Plan::Pong => {
                self.metrics.delivery(event, action, "accepted", "ping");
                return (
                    StatusCode::OK,
                    Json(Answer {
                        status: "pong",
                        task_id: None,
                        head_sha: None,
                        reason: None,
                        correlation_id: &correlation_id,
                    }),
                )
                    .into_response();
            }
            Plan::Ignore(reason) => return self.ignore(event, action, reason, &correlation_id),
            Plan::Invalid(message) => {
                self.metrics.delivery(event, action, "rejected", "payload");
                warn!(%message, "delivery refused: payload");
                return refuse(StatusCode::BAD_REQUEST, "payload", message, &correlation_id);
            }
            Plan::Record(record) => record,
            Plan::LookUp(lookup) => match self.look_up(lookup).await {
                Ok(Some(record)) => record,
                Ok(None) => return self.ignore(event, action, "unmapped", &correlation_id),
                Err(message) => {
                    self.metrics
                        .delivery(event, action, "rejected", "github_unavailable");
                    warn!(%message, "delivery refused: its task could not be looked up");
                    return refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "github_unavailable",
                        message,
                        &correlation_id,
                    );
                }
            },
        };
        tracing::Span::current().record("task_id", record.task_id.as_str());
        self.record(record, key, event, action, correlation_id)
            .await
    }

    /// Answers 202 `ignored` with `reason`, counted and logged.
    fn ignore(
        &self,
        event: &str,
        action: Option<&str>,
        reason: &'static str,
        correlation_id: &str,
    ) -> Response {
        self.metrics.delivery(event, action, "ignored", reason);
        info!(reason, "delivery ignored");
        (
            StatusCode::ACCEPTED,
            Json(Answer {
                status: "ignored",
                task_id: None,
                head_sha: None,
                reason: Some(reason),
                correlation_id,
            }),
        )
            .into_response()
    }

    /// Writes the fact (in an owned task) and answers from its outcome.
    async fn record(
        self: &Arc<Self>,
        record: Record,
        key: DeliveryKey,
        event: &str,
        action: Option<&str>,
        correlation_id: String,
    ) -> Response {
        let Ok(permit) = Arc::clone(&self.writes).try_acquire_owned() else {
            self.metrics.delivery(event, action, "rejected", "busy");
            warn!("too many state writes in flight; refusing the delivery");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many deliveries are being recorded; redeliver later".to_owned(),
                &correlation_id,
            );
        };
        let (answer, outcome) = oneshot::channel();
        let shared = Arc::clone(self);
        let task_id = record.task_id.clone();
        let head_sha = record.head_sha.clone();
        let write_correlation = correlation_id.clone();
        self.shutdown.spawn(
            async move {
                let _permit = permit;
                shared
                    .write_then_hand_off(record, key, write_correlation, answer)
                    .await;
            }
            .instrument(tracing::Span::current()),
        );
        match tokio::time::timeout(self.write_timeout, outcome).await {
            Ok(Ok(Ok(DeliveryRecorded::Recorded { head_changed }))) => {
                self.metrics.delivery(event, action, "accepted", "recorded");
                info!(head_changed, head = %head_sha, "supersession recorded");
                accepted("accepted", &task_id, &head_sha, &correlation_id)
            }
            Ok(Ok(Ok(DeliveryRecorded::Duplicate))) => {
                self.metrics.duplicate("state");
                self.metrics.delivery(event, action, "duplicate", "state");
                info!("duplicate delivery (recorded in the task's state)");
                accepted("duplicate", &task_id, &head_sha, &correlation_id)
            }
            Ok(Ok(Err(message))) => {
                self.metrics
                    .delivery(event, action, "rejected", "state_unavailable");
                warn!(%message, "the fact could not be stored; answering 503 for a redelivery");
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "state_unavailable",
                    format!("the task state could not be written ({message}); redeliver later"),
                    &correlation_id,
                )
            }
            Ok(Err(_)) | Err(_) => {
                self.metrics
                    .delivery(event, action, "rejected", "state_timeout");
                warn!(
                    timeout_ms = self.write_timeout.as_millis(),
                    "the state write did not finish in time; answering 503 for a redelivery"
                );
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "state_timeout",
                    format!(
                        "the task state was not written within {:?}; redeliver later",
                        self.write_timeout
                    ),
                    &correlation_id,
                )
            }
        }
    }

    /// The owned part: the write, the answer, then the handoff — which
    /// happens whether or not the answer was still awaited.
    async fn write_then_hand_off(
        self: Arc<Self>,
        record: Record,
        key: DeliveryKey,
        correlation_id: String,
        answer: oneshot::Sender<Result<DeliveryRecorded, String>>,
    ) {
        self.metrics.writes_in_flight.inc();
        let started = Instant::now();
        // The API server sees at most --max-concurrent-writes of them at
        // once: beyond that, more connections only add conflicts, memory
        // and queueing at the server. The wait counts against the answer's
        // bound like the write itself.
        let result = match self.writers.acquire().await {
            Ok(_writer) => {
                // Where the task's pull request is goes in with the fact
                // (when the event names it): recovery needs it to hand the
                // supersession on if this process dies before the handoff.
                let pull = record.pull.as_ref().map(ToString::to_string);
                self.store
                    .record_delivery_with(
                        &record.task_id,
                        key.as_str(),
                        Some(&record.push),
                        |state, recorded| note_pull_request(state, pull.as_deref(), recorded),
                    )
                    .await
            }
            Err(_closed) => Err(state_store::Error::Client(
                "the sensor is shutting down".to_owned(),
            )),
        };
        self.metrics
            .state_write_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.writes_in_flight.dec();
        if result.is_ok() {
            self.recent.insert(
                key.as_str(),
                Remembered {
                    task_id: record.task_id.clone(),
                    head_sha: record.head_sha.clone(),
                },
            );
        }
        let recorded = matches!(result, Ok(DeliveryRecorded::Recorded { .. }));
        if answer.send(result.map_err(|e| e.to_string())).is_err() {
            warn!("the delivery was answered 503 before its state write ended; the write stands");
        }
        if recorded {
            self.hand_off(record, correlation_id).await;
        }
    }

    /// Gives the coordinator its request (looking the branch's pull request
    /// up first for a push).
    async fn hand_off(&self, record: Record, correlation_id: String) {
        let Some(coordinator) = &self.coordinator else {
            self.metrics.handoff("record_only");
            return;
        };
        let (pr, reason) = match record.handoff {
            Handoff::Nothing => return,
            Handoff::Pull(pr, reason) => (pr, reason),
            Handoff::Branch {
                owner,
                repo,
                branch,
            } => {
                let found = tokio::time::timeout(
                    self.lookup_timeout,
                    self.pulls.open_pulls(&owner, &repo, &branch),
                )
                .await;
                match found {
                    Ok(Ok(pulls)) => match pulls.into_iter().next() {
                        Some(pull) => (pull.pr, Reason::Push),
                        None => {
                            // No pull request yet: the head is recorded; the
                            // `opened` event or recovery takes it from there.
                            self.metrics.handoff("no_pull_request");
                            info!(%branch, "no open pull request from the branch; nothing to cancel yet");
                            return;
                        }
                    },
                    Ok(Err(error)) => {
                        self.metrics.handoff("lookup_failed");
                        warn!(%error, "the branch's pull request could not be looked up; recovery takes the recorded supersession");
                        return;
                    }
                    Err(_) => {
                        self.metrics.handoff("lookup_timeout");
                        warn!(
                            "the branch's pull request lookup timed out; recovery takes the recorded supersession"
                        );
                        return;
                    }
                }
            }
        };
        let request = CancellationRequest {
            task_id: record.task_id,
            pr,
            head_sha: record.head_sha,
            pushed_at: record.push.pushed_at,
            reason,
            priority: 0,
            correlation_id,
            delivery_id: Some(record.push.delivery_id),
        };
        match coordinator.submit(request) {
            Ok(Submitted::Queued) => self.metrics.handoff("queued"),
            Ok(Submitted::Coalesced) => self.metrics.handoff("coalesced"),
            Err(error) => {
                self.metrics.handoff("refused");
                warn!(%error, "the coordinator refused the request; recovery takes the recorded supersession");
            }
        }
    }

    /// Finds the task of a push through its branch's pull request labels.
    /// `Ok(None)`: no open pull request, or none whose labels map.
    async fn look_up(&self, lookup: LookUp) -> Result<Option<Record>, String> {
        let found = tokio::time::timeout(
            self.lookup_timeout,
            self.pulls
                .open_pulls(&lookup.owner, &lookup.repo, &lookup.branch),
        )
        .await
        .map_err(|_| {
            format!(
                "the pull request of branch {:?} could not be looked up within {:?}",
                lookup.branch, self.lookup_timeout
            )
        })?
        .map_err(|e| e.to_string())?;
        Ok(found.into_iter().find_map(|pull| {
            let task_id = self
                .rules
                .mapping
                .task_for_labels(pull.labels.iter().map(String::as_str))?;
            Some(Record {
                task_id,
                head_sha: lookup.head_sha.clone(),
                push: lookup.push.clone(),
                pull: Some(pull.pr.clone()),
                handoff: Handoff::Pull(pull.pr, Reason::Push),
            })
        }))
    }
}

/// Notes in `state` the pull request a new delivery named (`pull`), as the
/// saga does once it ran: kept when there is one already, unless the
/// delivery moved the task's head (the newest event names the current
/// pull request).
fn note_pull_request(state: &mut RemediationState, pull: Option<&str>, recorded: DeliveryRecorded) {
    let Some(pull) = pull else { return };
    let moved = matches!(recorded, DeliveryRecorded::Recorded { head_changed: true });
    if moved || !state.metadata.contains_key(METADATA_PULL_REQUEST) {
        state
            .metadata
            .insert(METADATA_PULL_REQUEST.to_owned(), pull.to_owned());
    }
}

fn accepted(status: &'static str, task_id: &str, head_sha: &str, correlation_id: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(Answer {
            status,
            task_id: Some(task_id),
            head_sha: Some(head_sha),
            reason: None,
            correlation_id,
        }),
    )
        .into_response()
}

fn refuse(
    status: StatusCode,
    error: &'static str,
    message: String,
    correlation_id: &str,
) -> Response {
    (
        status,
        Json(Refusal {
            error,
            message,
            correlation_id,
        }),
    )
        .into_response()
}

/// Times every webhook request, refusals included.
async fn time_answer(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    shared
        .metrics
        .answer_duration
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut text = String::new();
    if let Err(error) = encode(&mut text, &shared.registry) {
        tracing::error!(%error, "encoding metrics failed");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noted(state: &RemediationState) -> Option<&str> {
        state
            .metadata
            .get(METADATA_PULL_REQUEST)
            .map(String::as_str)
    }

    #[test]
    fn a_delivery_naming_its_pull_request_notes_it_and_only_a_new_head_replaces_it() {
        let mut state = RemediationState::new("42", jiff::Timestamp::UNIX_EPOCH);
        let same_head = DeliveryRecorded::Recorded {
            head_changed: false,
        };
        let new_head = DeliveryRecorded::Recorded { head_changed: true };

        note_pull_request(&mut state, None, new_head);
        assert_eq!(noted(&state), None, "a push names no pull request");

        note_pull_request(&mut state, Some("acme/widgets#7"), same_head);
        assert_eq!(
            noted(&state),
            Some("acme/widgets#7"),
            "the first one is noted"
        );

        note_pull_request(&mut state, Some("acme/widgets#8"), same_head);
        assert_eq!(
            noted(&state),
            Some("acme/widgets#7"),
            "an event that did not move the head does not replace it"
        );

        note_pull_request(&mut state, Some("acme/widgets#9"), new_head);
        assert_eq!(
            noted(&state),
            Some("acme/widgets#9"),
            "the event that moved the head names the current pull request"
        );
    }
}
