//! The decode loop of one job, as the SSE body of its `POST /execute`.
//!
//! The rule it keeps: each step races the next token against the job's
//! cancellation, biased toward cancellation, and a token is sent only if the
//! job's step gate admits it — so once `POST /cancel` has answered, this
//! stream sends no further token, only its final `error` event.
//!
//! Two counters watch that rule: `tokens_after_cancel` (tokens committed
//! after the acceptance, measured against the step count the cancel saw;
//! target 0) and `tokens_discarded` (a step already running when the cancel
//! landed finished anyway; its token was refused and never sent).
//!
//! The stream owns the [`JobHandle`]: it ends the job (and frees its
//! reservation) right before sending the last event, and when hyper drops the
//! body because the client went away, `Drop` cancels the job with
//! [`CancelReason::ClientGone`].

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::response::sse::Event;
use futures::{Stream, StreamExt, stream};
use job_tracker::{CancelReason, JobHandle, JobOutcome};
use serde::Serialize;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::{Instrument, Span};

use crate::api::{EndEvent, ErrorBody, ErrorCode, StartedEvent, TokenEvent, Usage};
use crate::metrics::WorkerMetrics;
use crate::narration;
use crate::source::{SourceError, TokenStream};
use crate::stop_clock::StopClock;

/// Everything one job's stream needs.
pub(crate) struct Decode {
    job: Option<JobHandle>,
    tokens: Option<TokenStream>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    phase: Phase,
    max_tokens: u64,
    prompt_tokens: u64,
    deadline: Duration,
    correlation_id: String,
    metrics: WorkerMetrics,
    stop_clock: Option<StopClock>,
    span: Span,
}

/// Parameters of a [`Decode`] besides the job and its tokens.
pub(crate) struct DecodeParams {
    pub(crate) max_tokens: u64,
    pub(crate) prompt_tokens: u64,
    pub(crate) deadline: Duration,
    pub(crate) correlation_id: String,
    pub(crate) metrics: WorkerMetrics,
    pub(crate) stop_clock: StopClock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Decoding,
    Done,
}

impl Decode {
    /// A stream for `job`, logging in the current span (the request's).
    pub(crate) fn new(job: JobHandle, tokens: TokenStream, params: DecodeParams) -> Self {
        let cancelled = Box::pin(job.token().cancelled_owned());
        Self {
            job: Some(job),
            tokens: Some(tokens),
            cancelled,
            phase: Phase::Start,
            max_tokens: params.max_tokens,
            prompt_tokens: params.prompt_tokens,
            deadline: params.deadline,
            correlation_id: params.correlation_id,
            metrics: params.metrics,
            stop_clock: Some(params.stop_clock),
            span: Span::current(),
        }
    }

    /// The SSE events: `started`, `token`…, then `end` or `error`.
    pub(crate) fn into_events(self) -> impl Stream<Item = Result<Event, Infallible>> + Send {
        stream::unfold(self, |mut decode| {
            let span = decode.span.clone();
            async move {
                let event = decode.next_event().await?;
                Some((Ok(event), decode))
            }
            .instrument(span)
        })
    }

    async fn next_event(&mut self) -> Option<Event> {
        match self.phase {
            Phase::Done => None,
            Phase::Start => {
                self.phase = Phase::Decoding;
                let job = self.job.as_ref()?;
                Some(event(
                    "started",
                    &StartedEvent {
                        job_id: job.id().to_owned(),
                        correlation_id: self.correlation_id.clone(),
                        reserved_units: job.reserved_units(),
                    },
                ))
            }
            Phase::Decoding => Some(self.step().await),
        }
    }

    /// One decode step: the next token, or the job's end.
    async fn step(&mut self) -> Event {
        let Self {
            job: Some(job),
            tokens: Some(tokens),
            cancelled,
            max_tokens,
            ..
        } = &mut *self
        else {
            return self.internal_error("decode state lost its job");
        };
        if job.steps() >= *max_tokens {
            return self.end("length");
        }
        let next = tokio::select! {
            biased;
            () = cancelled.as_mut() => None,
            next = tokens.next() => Some(next),
        };
        match next {
            None => self.stopped(),
            Some(None) => self.end("stop"),
            Some(Some(Err(error))) => self.failed(&error),
            Some(Some(Ok(text))) => match job.commit_step() {
                Some(index) => {
                    self.metrics.tokens.inc();
                    event("token", &TokenEvent { t: text, i: index })
                }
                None => {
                    // This step was already running when the cancel was
                    // accepted and finished right after: its token is
                    // refused by the gate, never sent, and counted.
                    self.metrics.tokens_discarded.inc();
                    self.stopped()
                }
            },
        }
    }

    /// The job was cancelled: free everything, then say why.
    fn stopped(&mut self) -> Event {
        let reason = self
            .job
            .as_ref()
            .and_then(JobHandle::reason)
            .unwrap_or(CancelReason::ClientRequest);
        let (code, message, label) = match reason {
            CancelReason::ClientRequest => (
                ErrorCode::Cancelled,
                "Job cancelled by client request".to_owned(),
                "cancelled",
            ),
            CancelReason::Deadline => (
                ErrorCode::DeadlineExceeded,
                format!("Job exceeded its deadline of {} s", self.deadline.as_secs()),
                "deadline_exceeded",
            ),
            CancelReason::Shutdown => (
                ErrorCode::ShuttingDown,
                "Worker is shutting down".to_owned(),
                "shutting_down",
            ),
            CancelReason::ClientGone => (
                ErrorCode::Cancelled,
                "Client went away".to_owned(),
                "client_gone",
            ),
        };
        let steps = self.job.as_ref().map_or(0, JobHandle::steps);
        tracing::info!(
            reason = reason.as_label(),
            tokens = steps,
            "job stopped after cancel"
        );
        if reason == CancelReason::ClientRequest {
            let job_id = self.job.as_ref().map_or("", JobHandle::id);
            let stop = self.stop_clock.as_ref().and_then(StopClock::since_request);
            narration::cancel_complete(
                job_id,
                &self.correlation_id,
                steps,
                stop.map(|(took, request)| (took, request.correlation_id.as_str())),
            );
        }
        self.finish(None, label);
        event("error", &ErrorBody::new(code, message))
    }

    fn end(&mut self, finish_reason: &str) -> Event {
        let job_id = self
            .job
            .as_ref()
            .map(|job| job.id().to_owned())
            .unwrap_or_default();
        let completion_tokens = self.job.as_ref().map_or(0, JobHandle::steps);
        tracing::info!(tokens = completion_tokens, finish_reason, "job completed");
        self.finish(Some(JobOutcome::Completed), "completed");
        event(
            "end",
            &EndEvent {
                job_id,
                finish_reason: finish_reason.to_owned(),
                usage: Usage {
                    prompt_tokens: self.prompt_tokens,
                    completion_tokens,
                    total_tokens: self.prompt_tokens.saturating_add(completion_tokens),
                },
            },
        )
    }

    fn failed(&mut self, error: &SourceError) -> Event {
        tracing::warn!(%error, transient = error.is_transient(), "token source failed");
        self.finish(Some(JobOutcome::Failed), "upstream_error");
        event(
            "error",
            &ErrorBody::new(ErrorCode::UpstreamError, error.to_string()),
        )
    }

    fn internal_error(&mut self, message: &str) -> Event {
        tracing::error!(message, "decode loop fault");
        self.finish(Some(JobOutcome::Failed), "internal");
        event("error", &ErrorBody::new(ErrorCode::Internal, message))
    }

    /// Ends the job before its last event goes out, so a client that saw the
    /// end can rely on the reservation being free.
    fn finish(&mut self, outcome: Option<JobOutcome>, label: &'static str) {
        self.phase = Phase::Done;
        // The token stream first: for an upstream this closes the connection.
        drop(self.tokens.take());
        // The clock before the job: once the id is free, a new job may start its own.
        drop(self.stop_clock.take());
        if let Some(job) = self.job.take() {
            self.metrics
                .tokens_after_cancel
                .inc_by(job.steps_after_cancel());
            match outcome {
                Some(outcome) => job.finish(outcome),
                None => drop(job),
            }
        }
        self.metrics.stream_ended(label);
    }
}

impl Drop for Decode {
    fn drop(&mut self) {
        // Still holding the job means the body was dropped mid-stream: hyper
        // gave up on the connection because the client went away.
        if let Some(job) = self.job.take() {
            let _entered = self.span.enter();
            job.cancel(CancelReason::ClientGone);
            tracing::info!(tokens = job.steps(), "client went away; job cancelled");
            drop(self.tokens.take());
            drop(self.stop_clock.take());
            self.metrics
                .tokens_after_cancel
                .inc_by(job.steps_after_cancel());
            drop(job);
            self.metrics.stream_ended("client_gone");
        }
    }
}

fn event(name: &str, payload: &impl Serialize) -> Event {
    // These payloads are plain structs of strings and numbers: serializing
    // them cannot fail, but a fallback beats a panic in a body stream.
    let data = serde_json::to_string(payload).unwrap_or_else(|_| "{}".to_owned());
    Event::default().event(name).data(data)
}
