//! A reconnecting Server-Sent Events client.
//!
//! Rule kept here: a subscription never ends on its own while it is wanted.
//! Every way a connection can end is classified ([`DisconnectReason`]) and
//! followed by a reconnection after a [`Backoff`] delay, resuming with
//! `Last-Event-ID`, until the [`CancellationToken`] fires or the receiver is
//! dropped. Nothing a server sends can grow our memory without bound: an
//! event (or a line) larger than [`SsePolicy::max_event_size`] ends the
//! connection as a `decode` failure.
//!
//! ```text
//!            ┌─────── Connected ──▶ Event* ──▶ Disconnected{reason} ─┐
//! connect ──▶┤                                                       ├──▶ Reconnecting{delay} ──▶ connect …
//!            └───────────── Disconnected{reason} (never connected) ──┘
//! ```
//!
//! The consumer receives one [`SseItem`] stream mixing events and these
//! lifecycle notices, so it can drive its own metrics and readiness.
//!
//! # Delays
//!
//! The delay before a reconnection is `max(backoff, floor)`, where `backoff`
//! comes from [`SsePolicy::backoff`] (1 s doubling to 60 s, ±25 % jitter by
//! default) and `floor` is the larger of the server's last `retry:` field and
//! a `Retry-After` header on a 429/503 answer, capped at the backoff's `max`
//! (a server cannot park us for an hour). The backoff starts over after a
//! *healthy* connection: one that delivered at least one event, or stayed
//! open for [`SsePolicy::healthy_after`]. A server that accepts connections
//! and drops them at once therefore still meets growing delays.
//!
//! # Timeouts
//!
//! * `connect_timeout` bounds the time from sending the request to the
//!   response headers (DNS, TCP, TLS and the server's first answer).
//! * `idle_timeout` bounds the silence on an open connection: no byte at all,
//!   comments and heartbeats included. Time spent waiting for a slow consumer
//!   does not count: the clock runs only while we wait for the socket.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{EventStream, EventStreamError};
use futures::{Stream, StreamExt};
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::backoff::{Backoff, BackoffPolicy};
use crate::error::Error;

/// Default bound on the time to response headers.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on silence (no byte at all) on an open connection.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default time a connection must stay open to count as healthy without events.
pub const DEFAULT_HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// Default largest event (or line) accepted, in bytes: 1 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 1024 * 1024;
/// Default capacity of the channel between the connection task and the consumer.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 64;

/// How an [`SseClient`] connects, waits and reconnects.
#[derive(Debug, Clone, PartialEq)]
pub struct SsePolicy {
    /// Delays between connection attempts; its `max` also caps a server's
    /// `retry:` and `Retry-After`. With `max_attempts` set, the subscription
    /// ends after that many consecutive reconnections without a healthy
    /// connection.
    pub backoff: BackoffPolicy,
    /// Bound on the time from request to response headers; `None` waits forever.
    pub connect_timeout: Option<Duration>,
    /// Bound on silence on an open connection; `None` waits forever.
    pub idle_timeout: Option<Duration>,
    /// A connection open this long counts as healthy even without events,
    /// so the backoff starts over after it ends.
    pub healthy_after: Duration,
    /// Largest event, and so largest line, accepted (bytes, line ends excluded).
    pub max_event_size: usize,
    /// Items buffered between the connection task and the consumer; when it
    /// is full the task stops reading the socket (TCP backpressure).
    pub channel_capacity: usize,
}

impl Default for SsePolicy {
    /// Default backoff (1 s ×2 up to 60 s, ±25 %), 10 s to connect, 120 s of
    /// silence, healthy after 30 s, 1 MiB events, 64 buffered items.
    ///
    /// Why: 10 s to headers is generous for any reachable server and short
    /// enough to notice a black hole quickly; servers commonly send a
    /// heartbeat every 15–30 s, so 120 s of silence means the connection is
    /// dead (a NAT dropped it), not quiet; 30 s open proves the server
    /// accepts us even on a quiet stream; 1 MiB is far above any sane
    /// incident and far below memory trouble.
    fn default() -> Self {
        Self {
            backoff: BackoffPolicy::default(),
            connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            healthy_after: DEFAULT_HEALTHY_AFTER,
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
        }
    }
}

impl SsePolicy {
    /// Rejects an invalid backoff, zero timeouts, a zero event size and a
    /// zero channel capacity.
    pub fn validate(&self) -> Result<(), Error> {
        self.backoff.validate()?;
        if self.connect_timeout.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid(
                "sse",
                "connect_timeout must be greater than zero (or None)",
            ));
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid(
                "sse",
                "idle_timeout must be greater than zero (or None)",
            ));
        }
        if self.max_event_size == 0 {
            return Err(Error::invalid("sse", "max_event_size must be at least 1"));
        }
        if self.channel_capacity == 0 {
            return Err(Error::invalid("sse", "channel_capacity must be at least 1"));
        }
        Ok(())
    }
}

/// One event as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` type; `message` when the server sent none.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last event id in force when this event arrived: the latest
    /// non-empty `id:` field, which persists across events and
    /// reconnections until the server sends another one; `None` before the
    /// first. It is what a reconnection sends as `Last-Event-ID`.
    pub id: Option<String>,
}

/// What a subscription yields: events, and notices about the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    /// A connection was established (200 with `text/event-stream`).
    Connected,
    /// An event arrived.
    Event(SseEvent),
    /// A connection attempt failed, or an established connection ended.
    Disconnected(Disconnect),
    /// The next attempt starts after `delay`.
    Reconnecting {
        /// How long we wait before connecting again.
        delay: Duration,
        /// Consecutive reconnections since the last healthy connection (1, 2, …).
        attempt: u32,
    },
}

/// How a connection (or a connection attempt) ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Disconnect {
    /// Why it ended.
    pub reason: DisconnectReason,
    /// How long it had been established; `None` when it never was.
    pub connected_for: Option<Duration>,
    /// Events it delivered.
    pub events: u64,
    /// Whether it counts as healthy (see [`SsePolicy::healthy_after`]), so
    /// the backoff starts over.
    pub healthy: bool,
}

impl Disconnect {
    /// Whether the connection had been established before it ended.
    pub fn was_connected(&self) -> bool {
        self.connected_for.is_some()
    }
}

/// Why a connection ended. [`DisconnectReason::as_label`] gives a
/// low-cardinality metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The connection could not be made or broke (DNS, refused, reset, TLS).
    Network(String),
    /// The server answered something other than 200.
    ServerStatus {
        /// The HTTP status code.
        status: u16,
        /// The server's `Retry-After`, in seconds form, if it sent one.
        retry_after: Option<Duration>,
    },
    /// No response headers within the connect timeout, or no byte within the
    /// idle timeout on an open connection.
    Timeout {
        /// Which bound was hit.
        phase: TimeoutPhase,
        /// Its value.
        after: Duration,
    },
    /// The server closed the stream cleanly.
    EndOfStream,
    /// The body was not a valid event stream: wrong content type, invalid
    /// UTF-8, unparsable line, or an event over the size limit.
    Decode(String),
    /// The subscription was cancelled (or its receiver dropped).
    Cancelled,
}

/// Which timeout ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Waiting for the response headers.
    Connect,
    /// Waiting for bytes on an open connection.
    Idle,
}

impl DisconnectReason {
    /// `network`, `server_status`, `timeout`, `end_of_stream`, `decode` or `cancelled`.
    pub fn as_label(&self) -> &'static str {
        match self {
            DisconnectReason::Network(_) => "network",
            DisconnectReason::ServerStatus { .. } => "server_status",
            DisconnectReason::Timeout { .. } => "timeout",
            DisconnectReason::EndOfStream => "end_of_stream",
            DisconnectReason::Decode(_) => "decode",
            DisconnectReason::Cancelled => "cancelled",
        }
    }

    /// Whether this is a failure rather than a clean end (`end_of_stream`)
    /// or our own decision (`cancelled`).
    pub fn is_error(&self) -> bool {
        !matches!(
            self,
            DisconnectReason::EndOfStream | DisconnectReason::Cancelled
        )
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Network(message) => write!(f, "network error: {message}"),
            DisconnectReason::ServerStatus {
                status,
                retry_after,
            } => {
                write!(f, "server answered {status}")?;
                match retry_after {
                    Some(after) => write!(f, " (Retry-After {after:?})"),
                    None => Ok(()),
                }
            }
            DisconnectReason::Timeout { phase, after } => match phase {
                TimeoutPhase::Connect => write!(f, "no response headers within {after:?}"),
                TimeoutPhase::Idle => write!(f, "no data within {after:?}"),
            },
            DisconnectReason::EndOfStream => f.write_str("server closed the stream"),
            DisconnectReason::Decode(message) => write!(f, "invalid event stream: {message}"),
            DisconnectReason::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// A reconnecting SSE client for one URL (GET only).
///
/// ```no_run
/// use resilience::sse::{SseClient, SseItem, SsePolicy};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn run() -> Result<(), resilience::Error> {
/// let cancel = CancellationToken::new();
/// let mut events = SseClient::new("http://127.0.0.1:7070/events", SsePolicy::default())?
///     .subscribe(&cancel);
/// while let Some(item) = events.recv().await {
///     match item {
///         SseItem::Event(event) => println!("{}: {}", event.event, event.data),
///         SseItem::Disconnected(d) => eprintln!("lost the stream: {}", d.reason),
///         _ => {}
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SseClient {
    url: Url,
    policy: SsePolicy,
    http: reqwest::Client,
    headers: HeaderMap,
    last_event_id: Option<String>,
    seed: Option<u64>,
}

impl SseClient {
    /// A client for `url` (http or https) with its own HTTP client: no
    /// connection pooling (a stream holds its connection for hours) and TCP
    /// keepalive, so a peer that vanished is noticed by the kernel too.
    pub fn new(url: &str, policy: SsePolicy) -> Result<Self, Error> {
        crate::tls::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::invalid("sse", format!("cannot build the HTTP client: {e}")))?;
        Self::with_http_client(url, policy, http)
    }

    /// A client for `url` using `http` (to share a connector, set proxies or
    /// TLS roots). Do not give it a total request timeout: it would cut
    /// every stream; [`SsePolicy`] bounds the waits instead.
    pub fn with_http_client(
        url: &str,
        policy: SsePolicy,
        http: reqwest::Client,
    ) -> Result<Self, Error> {
        policy.validate()?;
        let url = parse_url(url)?;
        Ok(Self {
            url,
            policy,
            http,
            headers: HeaderMap::new(),
            last_event_id: None,
            seed: None,
        })
    }

    /// Adds a header to every request (for example `Authorization`).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Resumes from `id` on the first connection (sent as `Last-Event-ID`).
    pub fn last_event_id(mut self, id: impl Into<String>) -> Self {
        let id = id.into();
        self.last_event_id = (!id.is_empty()).then_some(id);
        self
    }

    /// Fixes the jitter seed, so tests see reproducible delays.
    pub fn backoff_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The URL this client reads.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The policy in force.
    pub fn policy(&self) -> &SsePolicy {
        &self.policy
    }

    /// Starts the connection task and returns the receiving end. The task
    /// stops when `cancel` fires (after a final
    /// [`Disconnected`](SseItem::Disconnected) if it was connected) or when
    /// the subscription is dropped.
    pub fn subscribe(self, cancel: &CancellationToken) -> SseSubscription {
        let (sink, items) = mpsc::channel(self.policy.channel_capacity.max(1));
        let stop = cancel.child_token();
        let task = tokio::spawn(self.run(stop.clone(), sink));
        SseSubscription {
            items,
            _stop_on_drop: stop.drop_guard(),
            task,
        }
    }

    /// The connection loop, for callers that spawn it themselves (on a
    /// `TaskTracker`, say). Returns when `cancel` fires, when `sink` is
    /// closed, or when a backoff with `max_attempts` runs out.
    pub async fn run(self, cancel: CancellationToken, sink: mpsc::Sender<SseItem>) {
        let mut backoff = match self.seed {
            Some(seed) => Backoff::with_rng_seed(self.policy.backoff.clone(), seed),
            None => Backoff::new(self.policy.backoff.clone()),
        };
        let server_retry = Arc::new(AtomicU64::new(NO_RETRY));
        let mut last_event_id = self.last_event_id.clone();
        loop {
            let disconnect = match self
                .connect_once(&cancel, &sink, &server_retry, &mut last_event_id)
                .await
            {
                Ok(disconnect) => disconnect,
                Err(Stop) => return,
            };
            log_disconnect(&self.url, &disconnect);
            let healthy = disconnect.healthy;
            let retry_after = match disconnect.reason {
                DisconnectReason::ServerStatus { retry_after, .. } => retry_after,
                _ => None,
            };
            if deliver(&cancel, &sink, SseItem::Disconnected(disconnect))
                .await
                .is_err()
            {
                return;
            }
            if healthy {
                backoff.reset();
            }
            let Some(delay) = backoff.next_delay() else {
                tracing::warn!(url = %self.url, attempts = backoff.attempts(), "giving up on the event stream: reconnection attempts exhausted");
                return;
            };
            let floor = [load_retry(&server_retry), retry_after]
                .into_iter()
                .flatten()
                .max()
                .map(|floor| floor.min(self.policy.backoff.max));
            let delay = floor.map_or(delay, |floor| delay.max(floor));
            let attempt = backoff.attempts();
            tracing::debug!(url = %self.url, ?delay, attempt, "reconnecting to the event stream");
            if deliver(&cancel, &sink, SseItem::Reconnecting { delay, attempt })
                .await
                .is_err()
            {
                return;
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection, from request to end. `Err(Stop)` means do not reconnect.
    async fn connect_once(
        &self,
        cancel: &CancellationToken,
        sink: &mpsc::Sender<SseItem>,
        server_retry: &Arc<AtomicU64>,
        last_event_id: &mut Option<String>,
    ) -> Result<Disconnect, Stop> {
        let never_connected = |reason| Disconnect {
            reason,
            connected_for: None,
            events: 0,
            healthy: false,
        };
        let mut request = self
            .http
            .get(self.url.clone())
            .headers(self.headers.clone())
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        if let Some(id) = last_event_id.as_deref()
            && let Ok(value) = HeaderValue::from_str(id)
        {
            request = request.header(LAST_EVENT_ID, value);
        }
        let sent = request.send();
        let answer = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Stop),
            answer = within(self.policy.connect_timeout, sent) => answer,
        };
        let response = match answer {
            None => {
                return Ok(never_connected(DisconnectReason::Timeout {
                    phase: TimeoutPhase::Connect,
                    after: self.policy.connect_timeout.unwrap_or_default(),
                }));
            }
            Some(Err(error)) => {
                return Ok(never_connected(classify_request_error(
                    &error,
                    self.policy.connect_timeout,
                )));
            }
            Some(Ok(response)) => response,
        };
        if response.status() != StatusCode::OK {
            return Ok(never_connected(DisconnectReason::ServerStatus {
                status: response.status().as_u16(),
                retry_after: parse_retry_after(response.headers()),
            }));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_event_stream(content_type) {
            return Ok(never_connected(DisconnectReason::Decode(format!(
                "content type {content_type:?} is not text/event-stream"
            ))));
        }

        let connected_at = Instant::now();
        tracing::debug!(url = %self.url, last_event_id = last_event_id.as_deref().unwrap_or(""), "connected to the event stream");
        deliver(cancel, sink, SseItem::Connected)
            .await
            .map_err(|_| Stop)?;

        let body = GuardedBody::new(
            response.bytes_stream().boxed(),
            self.policy.idle_timeout,
            self.policy.max_event_size,
            Arc::clone(server_retry),
        );
        let mut events = EventStream::new(body);
        let mut delivered = 0_u64;
        let end = |reason, delivered| {
            let connected_for = connected_at.elapsed();
            Disconnect {
                reason,
                connected_for: Some(connected_for),
                events: delivered,
                healthy: delivered > 0 || connected_for >= self.policy.healthy_after,
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    // Best effort: the consumer may be gone or busy shutting down.
                    let last = end(DisconnectReason::Cancelled, delivered);
                    let _ = sink.send_timeout(SseItem::Disconnected(last), FINAL_NOTICE_WAIT).await;
                    return Err(Stop);
                }
                next = events.next() => next,
            };
            let reason = match next {
                None => DisconnectReason::EndOfStream,
                Some(Ok(event)) => {
                    // eventsource-stream starts every connection with an
                    // empty id and cannot tell an empty `id:` from none, so
                    // an empty id keeps the one in force: the spec's "last
                    // event ID" belongs to the subscription, not the connection.
                    if !event.id.is_empty() {
                        *last_event_id = Some(event.id);
                    }
                    let event = SseEvent {
                        id: last_event_id.clone(),
                        event: event.event,
                        data: event.data,
                    };
                    delivered += 1;
                    deliver(cancel, sink, SseItem::Event(event))
                        .await
                        .map_err(|_| Stop)?;
                    continue;
                }
                Some(Err(EventStreamError::Transport(error))) => match error {
                    // reqwest reports a body cut mid-chunk as a "decode"
                    // error; below the event-stream layer it is the
                    // connection that broke.
                    BodyError::Http(error) => DisconnectReason::Network(error_chain(&error)),
                    BodyError::Idle(after) => DisconnectReason::Timeout {
                        phase: TimeoutPhase::Idle,
                        after,
                    },
                    BodyError::TooLarge(limit) => DisconnectReason::Decode(format!(
                        "an event or line exceeds the {limit}-byte limit"
                    )),
                },
                Some(Err(EventStreamError::Utf8(error))) => {
                    DisconnectReason::Decode(format!("invalid UTF-8: {error}"))
                }
                Some(Err(EventStreamError::Parser(error))) => {
                    DisconnectReason::Decode(format!("unparsable line: {error:?}"))
                }
            };
            return Ok(end(reason, delivered));
        }
    }
}

/// The receiving end of [`SseClient::subscribe`]. Dropping it stops the
/// connection task.
#[derive(Debug)]
pub struct SseSubscription {
    items: mpsc::Receiver<SseItem>,
    _stop_on_drop: DropGuard,
    task: JoinHandle<()>,
}

impl SseSubscription {
    /// The next item; `None` once the task has stopped.
    pub async fn recv(&mut self) -> Option<SseItem> {
        self.items.recv().await
    }

    /// Whether the connection task has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Stream for SseSubscription {
    type Item = SseItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SseItem>> {
        self.items.poll_recv(cx)
    }
}

/// The request header a reconnection resumes with.
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// `server_retry` holds no value.
const NO_RETRY: u64 = u64::MAX;

/// How long the final `Disconnected{Cancelled}` waits for room in the channel.
const FINAL_NOTICE_WAIT: Duration = Duration::from_secs(1);

/// The `retry:` field is at most this long (`retry:` plus 20 digits and a space).
const RETRY_LINE_MAX: usize = 32;

/// The loop must end: cancelled, or nobody is listening.
struct Stop;

/// Sends `item` unless cancelled first; `Err` when the loop must end.
async fn deliver(
    cancel: &CancellationToken,
    sink: &mpsc::Sender<SseItem>,
    item: SseItem,
) -> Result<(), Stop> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(Stop),
        sent = sink.send(item) => sent.map_err(|_| Stop),
    }
}

/// `fut`, bounded by `limit` when there is one; `None` on timeout.
async fn within<F: Future>(limit: Option<Duration>, fut: F) -> Option<F::Output> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, fut).await.ok(),
        None => Some(fut.await),
    }
}

fn parse_url(url: &str) -> Result<Url, Error> {
    let parsed = Url::parse(url).map_err(|e| Error::invalid("sse", format!("URL {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid(
            "sse",
            format!("URL {url:?}: scheme must be http or https"),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid("sse", format!("URL {url:?}: no host")));
    }
    Ok(parsed)
}

fn is_event_stream(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// `Retry-After` in its delay-seconds form (the HTTP-date form is ignored:
/// it needs a trustworthy clock on both sides).
fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A failed request (no response): a timeout set on a caller's own HTTP
/// client, or the network.
fn classify_request_error(error: &reqwest::Error, limit: Option<Duration>) -> DisconnectReason {
    if error.is_timeout() {
        return DisconnectReason::Timeout {
            phase: TimeoutPhase::Connect,
            after: limit.unwrap_or_default(),
        };
    }
    DisconnectReason::Network(error_chain(error))
}

/// The error and its sources on one line: reqwest's top-level message alone
/// ("error sending request") does not say what went wrong.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn load_retry(cell: &AtomicU64) -> Option<Duration> {
    match cell.load(Ordering::Relaxed) {
        NO_RETRY => None,
        ms => Some(Duration::from_millis(ms)),
    }
}

/// At DEBUG: the consumer receives every `Disconnected` and tells it at the
/// level it chooses, with what only it knows (the retry delay, which stream);
/// a WARN here as well would be a second line for every failure.
fn log_disconnect(url: &Url, disconnect: &Disconnect) {
    let reason = disconnect.reason.as_label();
    let connected_ms = disconnect
        .connected_for
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if disconnect.reason.is_error() {
        tracing::debug!(%url, reason, detail = %disconnect.reason, connected_ms, events = disconnect.events, "event stream disconnected");
    } else {
        tracing::debug!(%url, reason, detail = %disconnect.reason, connected_ms, events = disconnect.events, "event stream ended");
    }
}

/// Why the guarded body stopped.
#[derive(Debug)]
enum BodyError {
    Http(reqwest::Error),
    Idle(Duration),
    TooLarge(usize),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Http(error) => error.fmt(f),
            BodyError::Idle(after) => write!(f, "no data within {after:?}"),
            BodyError::TooLarge(limit) => write!(f, "event over {limit} bytes"),
        }
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The response body with the protections eventsource-stream lacks: the
/// idle timeout, the size bound (its buffers grow without limit), and the
/// `retry:` field of events without data (which it drops with the event).
struct GuardedBody {
    inner: ByteStream,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    /// The idle deadline restarts when a new wait for bytes begins.
    waiting: bool,
    scanner: LineScanner,
    server_retry: Arc<AtomicU64>,
}

impl GuardedBody {
    fn new(
        inner: ByteStream,
        idle: Option<Duration>,
        max_event_size: usize,
        server_retry: Arc<AtomicU64>,
    ) -> Self {
        Self {
            inner,
            idle: idle.map(|after| (after, Box::pin(tokio::time::sleep(after)))),
            waiting: false,
            scanner: LineScanner::new(max_event_size),
            server_retry,
        }
    }
}

impl Stream for GuardedBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if !this.waiting {
            this.waiting = true;
            if let Some((after, sleep)) = &mut this.idle {
                sleep.as_mut().reset(Instant::now() + *after);
            }
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.waiting = false;
                match this.scanner.feed(&chunk) {
                    Ok(retry) => {
                        if let Some(ms) = retry {
                            this.server_retry
                                .store(ms.min(NO_RETRY - 1), Ordering::Relaxed);
                        }
                        Poll::Ready(Some(Ok(chunk)))
                    }
                    Err(limit) => Poll::Ready(Some(Err(BodyError::TooLarge(limit)))),
                }
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(BodyError::Http(error)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if let Some((after, sleep)) = &mut this.idle
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Some(Err(BodyError::Idle(*after))));
                }
                Poll::Pending
            }
        }
    }
}

/// Counts bytes per event and spots `retry:` lines, across chunk boundaries.
#[derive(Debug)]
struct LineScanner {
    limit: usize,
    event_bytes: usize,
    line_len: usize,
    line_head: [u8; RETRY_LINE_MAX],
    after_cr: bool,
}

impl LineScanner {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            event_bytes: 0,
            line_len: 0,
            line_head: [0; RETRY_LINE_MAX],
            after_cr: false,
        }
    }

    /// Accounts for `chunk`; returns the last `retry:` value it completed,
    /// or `Err(limit)` once the current event exceeds the limit.
    fn feed(&mut self, chunk: &[u8]) -> Result<Option<u64>, usize> {
        let mut retry = None;
        for &byte in chunk {
            let after_cr = std::mem::take(&mut self.after_cr);
            match byte {
                // The LF of a CRLF pair: the line already ended at the CR.
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    if self.line_len == 0 {
                        // A blank line dispatches the event.
                        self.event_bytes = 0;
                    } else if let Some(ms) = self.retry_field() {
                        retry = Some(ms);
                    }
                    self.line_len = 0;
                }
                _ => {
                    if let Some(slot) = self.line_head.get_mut(self.line_len) {
                        *slot = byte;
                    }
                    self.line_len += 1;
                    self.event_bytes += 1;
                    if self.event_bytes > self.limit {
                        return Err(self.limit);
                    }
                }
            }
        }
        Ok(retry)
    }

    /// The value of the line just ended if it is `retry:` followed by ASCII
    /// digits only (the spec ignores any other form).
    fn retry_field(&self) -> Option<u64> {
        let line = self.line_head.get(..self.line_len)?;
        let value = line.strip_prefix(b"retry:")?;
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(value).ok()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_bounds_an_event_across_chunks_and_resets_on_blank_lines() {
        let mut scanner = LineScanner::new(10);
        assert_eq!(scanner.feed(b"data: 1234"), Ok(None));
        assert_eq!(scanner.feed(b"\n\n"), Ok(None), "dispatched: counter reset");
        assert_eq!(scanner.feed(b"data: 12\r\n\r\ndata: 1"), Ok(None));
        assert_eq!(scanner.feed(b"data:\r\nda"), Err(10));
    }

    #[test]
    fn scanner_stops_a_line_that_never_ends() {
        let mut scanner = LineScanner::new(1024);
        let chunk = [b'x'; 512];
        assert_eq!(scanner.feed(&chunk), Ok(None));
        assert_eq!(scanner.feed(&chunk), Ok(None));
        assert_eq!(scanner.feed(b"x"), Err(1024));
    }

    #[test]
    fn scanner_reads_retry_fields_split_across_chunks_and_ignores_bad_ones() {
        let mut scanner = LineScanner::new(1024);
        assert_eq!(scanner.feed(b"ret"), Ok(None));
        assert_eq!(scanner.feed(b"ry: 2500\n"), Ok(Some(2500)));
        assert_eq!(scanner.feed(b"retry:300\r\n\r\n"), Ok(Some(300)));
        assert_eq!(scanner.feed(b"retry: 3s\n\n"), Ok(None));
        assert_eq!(scanner.feed(b"retry: \n\n"), Ok(None));
        assert_eq!(scanner.feed(b": retry: 5\n"), Ok(None));
        assert_eq!(scanner.feed(b"data: retry: 5\n\n"), Ok(None));
    }

    #[test]
    fn only_http_and_https_urls_with_a_host_are_accepted() {
        assert!(parse_url("https://events.example/incidents").is_ok());
        assert!(parse_url("http://127.0.0.1:7070/").is_ok());
        for bad in ["ftp://x/", "not a url", "file:///etc/passwd", "http://"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_stream_content_type_allows_parameters_and_case() {
        assert!(is_event_stream("text/event-stream"));
        assert!(is_event_stream("Text/Event-Stream; charset=utf-8"));
        assert!(!is_event_stream("application/json"));
        assert!(!is_event_stream(""));
    }

    #[test]
    fn reasons_have_stable_low_cardinality_labels() {
        let labels: Vec<_> = [
            DisconnectReason::Network("reset".into()),
            DisconnectReason::ServerStatus {
                status: 503,
                retry_after: None,
            },
            DisconnectReason::Timeout {
                phase: TimeoutPhase::Idle,
                after: Duration::from_secs(1),
            },
            DisconnectReason::EndOfStream,
            DisconnectReason::Decode("x".into()),
            DisconnectReason::Cancelled,
        ]
        .iter()
        .map(DisconnectReason::as_label)
        .collect();
        assert_eq!(
            labels,
            [
                "network",
                "server_status",
                "timeout",
                "end_of_stream",
                "decode",
                "cancelled"
            ]
        );
    }

    #[test]
    fn policy_validation_rejects_zero_bounds() {
        assert!(SsePolicy::default().validate().is_ok());
        let bad = [
            SsePolicy {
                idle_timeout: Some(Duration::ZERO),
                ..SsePolicy::default()
            },
            SsePolicy {
                connect_timeout: Some(Duration::ZERO),
                ..SsePolicy::default()
            },
            SsePolicy {
                max_event_size: 0,
                ..SsePolicy::default()
            },
            SsePolicy {
                channel_capacity: 0,
                ..SsePolicy::default()
            },
        ];
        for policy in bad {
            assert!(policy.validate().is_err(), "{policy:?}");
        }
    }
}
