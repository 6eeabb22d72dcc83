//! The runner: streams ▸ filter ▸ expiring queue ▸ breaker ▸ agents, with
//! probes, metrics and a graceful drain.
//!
//! Rule kept here: once shutdown starts nothing new begins — streams close,
//! the queue is no longer served — and every agent already running either
//! finishes within the shutdown timeout or is stopped (SIGTERM, kill grace,
//! SIGKILL) before the runner returns.
//!
//! ```text
//! stream task per cluster ──▶ parse ▸ severity ▸ duplicate ▸ breaker open? ──▶ ExpiringQueue
//!                                                                                 │ (sweeper drops stale)
//! dispatcher: concurrency permit ▸ breaker permit ▸ pop ──▶ agent task (tracked, job-tracker)
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use job_tracker::{CancelReason, JobOptions, JobOutcome, JobTracker, TrackerConfig};
use prometheus_client::registry::Registry;
use resilience::sse::{SseClient, SseEvent, SseItem, SsePolicy};
use resilience::{
    BackoffPolicy, BreakerPolicy, BreakerState, CircuitBreaker, Expired, ExpiringQueue, Health,
    Permit, QueuePolicy, Shutdown,
};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::agent::{AgentReport, AgentSpec, run_agent};
use crate::api;
use crate::config::{Settings, StreamSource};
use crate::connection::ConnectionLog;
use crate::filter::{DuplicateWindow, Incident, Severity, parse_incident};
use crate::metrics::{AgentStatus, Metrics};
use crate::supervise::supervise;

/// The name of the readiness check on stream connections.
pub const STREAMS_CHECK: &str = "streams";
/// The name of the readiness check on the agent circuit breaker.
pub const BREAKER_CHECK: &str = "circuit_breaker";

/// Extra time, beyond the kill grace, the drain gives stopped agents to be
/// reaped: `terminate` waits up to 5 s after SIGKILL for the kernel.
const REAP_MARGIN: Duration = Duration::from_secs(6);
/// How long stream tasks get to close after shutdown starts.
const STREAM_CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long the HTTP servers get to finish in-flight requests at the end.
const SERVER_STOP_WAIT: Duration = Duration::from_secs(5);
/// Shortest wait between breaker checks while it refuses (open, or
/// half-open with its probe running).
const BREAKER_RECHECK: Duration = Duration::from_millis(100);

/// A runner that is serving. Built by [`Runner::start`].
#[derive(Debug)]
pub struct Runner {
    inner: Arc<Inner>,
    metrics_addr: SocketAddr,
    health_addr: SocketAddr,
    streams: Vec<JoinHandle<()>>,
    dispatcher: JoinHandle<Option<Incident>>,
    background: Vec<JoinHandle<()>>,
    servers: Vec<JoinHandle<()>>,
    stop_servers: CancellationToken,
}

/// What the drain achieved, as logged at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunReport {
    /// Agents running when shutdown began that finished by themselves
    /// (`cluster/incident`).
    pub completed: Vec<String>,
    /// Agents running when shutdown began that were stopped.
    pub interrupted: Vec<String>,
    /// Queued incidents that never got an agent.
    pub not_started: usize,
    /// Agents that could not even be killed (left to the OS).
    pub abandoned: usize,
}

impl RunReport {
    /// 0 after a drain in which every agent ended (finished or stopped),
    /// 1 if some could not be stopped.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.abandoned > 0)
    }
}

/// One running agent, as `GET /v1/agents` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentInfo {
    /// The agent id (the job id in the tracker).
    pub id: String,
    /// The stream it came from.
    pub cluster: String,
    /// The incident it works on.
    pub incident_id: String,
    /// The incident's severity.
    pub severity: Severity,
    /// Its process id, once started.
    pub pid: Option<u32>,
}

impl Runner {
    /// Binds the ports, connects the streams and starts serving. Readiness
    /// turns on here; it reports 503 until a stream is connected.
    /// `shutdown` stops it (wire [`Shutdown::listen_for_signals`] to it).
    pub async fn start(settings: Settings, shutdown: Shutdown) -> Result<Self, Error> {
        let health = shutdown.health();
        let clusters: Vec<&str> = settings
            .streams
            .iter()
            .map(|s| s.cluster.as_str())
            .collect();
        let metrics = Metrics::new(clusters.iter().copied());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        // The drain shows as `agent_runner_shutdown_phase`, never as `up`
        // going to 0: a runner whose /metrics answers is up.
        shutdown.register(registry.sub_registry_with_prefix("agent_runner"));

        let breaker = CircuitBreaker::new(
            "agents",
            BreakerPolicy {
                failure_threshold: settings.breaker_failure_threshold,
                cool_down: settings.breaker_cool_down,
                half_open_max_probes: 1,
            },
        );
        let queue = ExpiringQueue::new(
            "incidents",
            QueuePolicy {
                capacity: settings.max_queue_size,
                max_age: settings.max_queue_age,
            },
        );
        let tracker = JobTracker::new(TrackerConfig {
            max_active_jobs: Some(settings.max_concurrent_agents),
            finished_capacity: 1_000,
            ..TrackerConfig::default()
        });
        // Stopped agents need the kill grace plus the reap bound after the
        // drain's hard cancel.
        shutdown.set_abort_grace(settings.agent_kill_grace + REAP_MARGIN);

        let inner = Arc::new(Inner {
            spec: AgentSpec {
                command: settings.agent_command.clone(),
                timeout: settings.agent_timeout,
                kill_grace: settings.agent_kill_grace,
                output_limit: settings.agent_output_limit,
                workspace_root: settings.workspace_root.clone(),
            },
            settings,
            metrics,
            registry: Arc::new(registry),
            breaker,
            queue,
            tracker,
            agents: Mutex::new(HashMap::new()),
            finished_during_shutdown: Mutex::new(HashMap::new()),
            connected: AtomicUsize::new(0),
            agent_done: Notify::new(),
            shutdown: shutdown.clone(),
        });
        add_readiness_checks(&health, &inner);

        // Every client is built before anything starts, so a bad stream
        // leaves nothing running behind.
        let streams = inner
            .settings
            .streams
            .iter()
            .map(|source| Arc::clone(&inner).stream(source.clone()))
            .collect::<Result<Vec<_>, Error>>()?;
        let stop_servers = CancellationToken::new();
        let (metrics_addr, health_addr, servers) =
            serve(&inner, &health, stop_servers.clone()).await?;

        let streams = streams.into_iter().map(tokio::spawn).collect();
        let dispatcher = tokio::spawn(Arc::clone(&inner).dispatch());
        let background = vec![
            tokio::spawn(supervise(
                "queue_sweeper",
                inner.metrics.clone(),
                inner.shutdown.token(),
                {
                    let inner = Arc::clone(&inner);
                    move || {
                        let inner = Arc::clone(&inner);
                        // Owned by the future: `sweeper` borrows the queue.
                        async move {
                            let reporter = Arc::clone(&inner);
                            let sweep = inner
                                .queue
                                .sweeper(inner.settings.queue_sweep_interval, move |expired| {
                                    reporter.on_expired(&expired)
                                });
                            sweep.await;
                        }
                    }
                },
            )),
            tokio::spawn({
                let inner = Arc::clone(&inner);
                async move {
                    inner.shutdown.hard_cancel_token().cancelled().await;
                    let stopped = inner.tracker.cancel_all(CancelReason::Shutdown);
                    tracing::warn!(
                        stopped,
                        "shutdown timeout reached; stopping the remaining agents"
                    );
                }
            }),
        ];
        health.set_ready(true);
        tracing::info!(
            %metrics_addr,
            %health_addr,
            streams = ?inner.settings.streams.iter().map(ToString::to_string).collect::<Vec<_>>(),
            agent_command = %inner.settings.agent_command,
            min_severity = %inner.settings.min_severity,
            max_concurrent_agents = inner.settings.max_concurrent_agents,
            "agent runner started"
        );
        Ok(Self {
            inner,
            metrics_addr,
            health_addr,
            streams,
            dispatcher,
            background,
            servers,
            stop_servers,
        })
    }

    /// Where `/metrics` is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Where `/healthz`, `/readyz` and `/v1/agents` are served.
    pub fn health_addr(&self) -> SocketAddr {
        self.health_addr
    }

    /// The agents running now.
    pub fn agents(&self) -> Vec<AgentInfo> {
        self.inner.agent_list()
    }

    /// The metrics as `/metrics` serves them (OpenMetrics text).
    pub fn metrics_text(&self) -> String {
        self.inner.refresh_breaker_gauge();
        Metrics::encode(&self.inner.registry)
    }

    /// Waits for shutdown to be triggered, then drains: streams closed,
    /// queue no longer served, agents given the shutdown timeout and then
    /// stopped, servers stopped last (so probes and metrics answer
    /// throughout the drain).
    pub async fn run_until_shutdown(self) -> RunReport {
        let inner = &self.inner;
        inner.shutdown.triggered().await;
        let in_flight = inner.agent_list();
        tracing::info!(
            in_flight = in_flight.len(),
            agents = ?in_flight.iter().map(AgentInfo::label).collect::<Vec<_>>(),
            shutdown_timeout_seconds = inner.settings.shutdown_timeout.as_secs_f64(),
            "Shutting down gracefully"
        );

        for task in self.streams {
            if tokio::time::timeout(STREAM_CLOSE_WAIT, task).await.is_err() {
                tracing::warn!("a stream did not close in time");
            }
        }
        let held = match tokio::time::timeout(STREAM_CLOSE_WAIT, self.dispatcher).await {
            Ok(Ok(held)) => held,
            Ok(Err(_)) | Err(_) => {
                tracing::warn!("the dispatcher did not stop in time");
                None
            }
        };
        let not_started = inner.abandon_queue(held.as_ref());

        let drain = inner.shutdown.drain(inner.settings.shutdown_timeout).await;
        let finished = std::mem::take(
            &mut *inner
                .finished_during_shutdown
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let (mut completed, mut interrupted) = (Vec::new(), Vec::new());
        for agent in &in_flight {
            match finished.get(&agent.id) {
                Some(AgentStatus::Interrupted) | None => interrupted.push(agent.label()),
                Some(_) => completed.push(agent.label()),
            }
        }
        let report = RunReport {
            completed,
            interrupted,
            not_started,
            abandoned: drain.abandoned,
        };
        tracing::info!(
            completed = ?report.completed,
            interrupted = ?report.interrupted,
            not_started = report.not_started,
            abandoned = report.abandoned,
            elapsed_seconds = drain.elapsed.as_secs_f64(),
            "shutdown complete"
        );

        self.stop_servers.cancel();
        for task in self.servers {
            let _ = tokio::time::timeout(SERVER_STOP_WAIT, task).await;
        }
        for task in self.background {
            task.abort();
        }
        report
    }
}

/// An incident in the queue, with the time it entered (the queue keeps its
/// own copy for expiry; this one survives a pop, for the time an incident
/// waits in the dispatcher's hand for the breaker).
#[derive(Debug)]
struct Queued {
    incident: Incident,
    at: Instant,
}

impl AgentInfo {
    fn label(&self) -> String {
        format!("{}/{}", self.cluster, self.incident_id)
    }
}

/// State shared by the runner's tasks and its HTTP handlers.
#[derive(Debug)]
pub(crate) struct Inner {
    settings: Settings,
    spec: AgentSpec,
    pub(crate) metrics: Metrics,
    pub(crate) registry: Arc<Registry>,
    pub(crate) breaker: CircuitBreaker,
    queue: ExpiringQueue<Queued>,
    pub(crate) tracker: JobTracker,
    agents: Mutex<HashMap<String, AgentInfo>>,
    finished_during_shutdown: Mutex<HashMap<String, AgentStatus>>,
    connected: AtomicUsize,
    agent_done: Notify,
    shutdown: Shutdown,
}

impl Inner {
    pub(crate) fn agent_list(&self) -> Vec<AgentInfo> {
        let agents = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<AgentInfo> = agents.values().cloned().collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    pub(crate) fn agent(&self, id: &str) -> Option<AgentInfo> {
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// The breaker gauge follows the breaker lazily (open turns half-open
    /// on the next look), so it is refreshed at every scrape too.
    pub(crate) fn refresh_breaker_gauge(&self) -> BreakerState {
        let state = self.breaker.state();
        self.metrics.breaker_state(state);
        state
    }

    /// One stream: connect, reconnect, feed events to the filter.
    fn stream(self: Arc<Self>, source: StreamSource) -> Result<impl Future<Output = ()>, Error> {
        let policy = SsePolicy {
            backoff: BackoffPolicy {
                initial: self.settings.sse_reconnect_initial_delay,
                max: self.settings.sse_reconnect_max_delay,
                ..BackoffPolicy::default()
            },
            connect_timeout: Some(self.settings.sse_connect_timeout),
            idle_timeout: self.settings.sse_idle_timeout,
            max_event_size: self.settings.sse_max_event_bytes,
            ..SsePolicy::default()
        };
        let client = SseClient::new(source.url.as_str(), policy).map_err(|e| Error::Stream {
            cluster: source.cluster.clone(),
            source: e,
        })?;
        let cancel = self.shutdown.token();
        Ok(async move {
            let cluster: Arc<str> = Arc::from(source.cluster.as_str());
            let mut duplicates = DuplicateWindow::new(
                self.settings.duplicate_window,
                self.settings.duplicate_cache_size,
            );
            let mut subscription = client.subscribe(&cancel);
            let url = source.url.as_str();
            let mut narration = ConnectionLog::default();
            let mut last_reason = "end_of_stream";
            // The subscription ends after the token fires (with a final
            // Disconnected when it was connected), so gauges settle.
            while let Some(item) = subscription.recv().await {
                if let Some(notice) = narration.observe(&item) {
                    notice.log(&cluster, url);
                }
                match item {
                    SseItem::Connected => {
                        self.connected.fetch_add(1, Ordering::SeqCst);
                        self.metrics.sse_connected(&cluster);
                    }
                    SseItem::Event(event) => self.on_event(&cluster, &mut duplicates, &event),
                    SseItem::Disconnected(end) => {
                        if end.was_connected() {
                            self.connected.fetch_sub(1, Ordering::SeqCst);
                        }
                        last_reason = end.reason.as_label();
                        self.metrics.sse_disconnected(
                            &cluster,
                            last_reason,
                            end.reason.is_error(),
                            end.connected_for,
                        );
                    }
                    SseItem::Reconnecting { .. } => {
                        self.metrics.sse_reconnecting(&cluster, last_reason);
                    }
                }
            }
            if let Some(notice) = narration.finish() {
                notice.log(&cluster, url);
            }
        })
    }

    /// One event: exactly one verdict per event (see `filter`).
    pub(crate) fn on_event(
        &self,
        cluster: &Arc<str>,
        duplicates: &mut DuplicateWindow,
        event: &SseEvent,
    ) {
        if !matches!(event.event.as_str(), "message" | "incident") {
            tracing::debug!(%cluster, event_type = %event.event, "ignoring a non-incident event");
            return;
        }
        let incident = match parse_incident(cluster, &event.data, event.id.as_deref()) {
            Ok(incident) => incident,
            Err(malformed) => {
                self.metrics.received(cluster, malformed.severity_label);
                self.metrics.filtered(cluster, "malformed");
                tracing::warn!(%cluster, event_id = event.id.as_deref().unwrap_or(""), reason = %malformed.reason, "malformed incident event dropped");
                return;
            }
        };
        self.metrics.received(cluster, incident.severity.as_str());
        if incident.severity < self.settings.min_severity {
            self.metrics.filtered(cluster, "severity_low");
            tracing::debug!(%cluster, incident_id = %incident.id, severity = %incident.severity, "incident below the minimum severity");
            return;
        }
        if duplicates.contains(&incident.id) {
            self.metrics.filtered(cluster, "duplicate");
            tracing::info!(%cluster, incident_id = %incident.id, "duplicate incident dropped");
            return;
        }
        if self.refresh_breaker_gauge() == BreakerState::Open {
            self.metrics.breaker_dropped(cluster);
            tracing::warn!(%cluster, incident_id = %incident.id, severity = %incident.severity, "circuit breaker open: incident dropped");
            return;
        }
        let id = incident.id.clone();
        let severity = incident.severity;
        let queued = Queued {
            incident,
            at: Instant::now(),
        };
        match self.queue.push_evicting(queued, severity.priority()) {
            Ok(evicted) => {
                self.metrics.queued(cluster);
                duplicates.record(&id);
                tracing::info!(%cluster, incident_id = %id, %severity, "incident queued");
                if let Some(evicted) = evicted {
                    let evicted = &evicted.item.incident;
                    self.metrics.left_queue(&evicted.cluster);
                    self.metrics.evicted(&evicted.cluster);
                    tracing::warn!(cluster = %evicted.cluster, incident_id = %evicted.id, severity = %evicted.severity, "queue full: less severe incident evicted");
                }
            }
            Err(full) => {
                self.metrics.filtered(cluster, "queue_full");
                tracing::warn!(%cluster, incident_id = %id, %severity, capacity = full.capacity, "queue full: incident dropped");
            }
        }
    }

    /// A stale incident found by the sweeper (or by a pop, reported here).
    fn on_expired(&self, expired: &Expired<Queued>) {
        self.metrics.left_queue(&expired.item.incident.cluster);
        self.report_expired(&expired.item.incident, expired.age);
    }

    fn report_expired(&self, incident: &Incident, age: Duration) {
        self.metrics.expired(&incident.cluster);
        tracing::warn!(
            cluster = %incident.cluster,
            incident_id = %incident.id,
            event_id = incident.event_id.as_deref().unwrap_or(""),
            age_seconds = age.as_secs_f64(),
            max_age_seconds = self.settings.max_queue_age.as_secs_f64(),
            "queued incident expired before an agent was free"
        );
    }

    /// Takes incidents off the queue while there is room to run them.
    ///
    /// The breaker permit is taken *after* the pop: a permit taken while
    /// closed and held through a long wait for work would carry a stale
    /// verdict (the breaker ignores it), so a half-open breaker would never
    /// see its probe. Returns the incident it held when shutdown came.
    async fn dispatch(self: Arc<Self>) -> Option<Incident> {
        let cancel = self.shutdown.token();
        let slots = Arc::new(Semaphore::new(self.settings.max_concurrent_agents));
        loop {
            let slot = tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                slot = Arc::clone(&slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_closed) => return None,
                },
            };
            let queued = self.queue.pop_wait(&cancel).await?;
            self.metrics.left_queue(&queued.incident.cluster);
            // Pop may have met stale entries on the way: report them now.
            for expired in self.queue.sweep() {
                self.on_expired(&expired);
            }
            let Some(permit) = self.breaker_permit(&cancel).await else {
                return Some(queued.incident);
            };
            // It may have aged past the limit while the breaker was open.
            let age = queued.at.elapsed();
            if age > self.settings.max_queue_age {
                permit.release();
                self.report_expired(&queued.incident, age);
                continue;
            }
            self.metrics.dequeued(&queued.incident.cluster);
            let inner = Arc::clone(&self);
            self.shutdown
                .spawn(async move { inner.run_one(queued.incident, slot, permit).await });
        }
    }

    /// Waits until the breaker lets an agent run; `None` on shutdown.
    async fn breaker_permit(&self, cancel: &CancellationToken) -> Option<Permit> {
        loop {
            match self.breaker.try_acquire() {
                Ok(permit) => {
                    self.refresh_breaker_gauge();
                    return Some(permit);
                }
                Err(open) => {
                    self.refresh_breaker_gauge();
                    let wait = open.remaining.max(BREAKER_RECHECK);
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => return None,
                        () = self.agent_done.notified() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Runs one agent and records everything about its end.
    async fn run_one(
        self: Arc<Self>,
        incident: Incident,
        slot: OwnedSemaphorePermit,
        permit: Permit,
    ) {
        let agent_id = uuid::Uuid::new_v4().to_string();
        let job = match self.tracker.register(
            &agent_id,
            JobOptions {
                deadline: Some(self.settings.agent_timeout),
                reservation: None,
            },
        ) {
            Ok(job) => job,
            Err(error) => {
                // Unreachable with fresh ids and the semaphore in front, but
                // never silent: it counts as a failed agent.
                tracing::error!(%error, cluster = %incident.cluster, incident_id = %incident.id, "cannot register the agent");
                permit.failure();
                self.metrics.agent_finished(
                    &incident.cluster,
                    AgentStatus::Failure,
                    Duration::ZERO,
                    false,
                );
                self.agent_done.notify_waiters();
                drop(slot);
                return;
            }
        };
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                agent_id.clone(),
                AgentInfo {
                    id: agent_id.clone(),
                    cluster: incident.cluster.to_string(),
                    incident_id: incident.id.clone(),
                    severity: incident.severity,
                    pid: None,
                },
            );
        let report = run_agent(&self.spec, &incident, &job, |pid| {
            self.metrics.agent_started(&incident.cluster);
            if let Some(info) = self
                .agents
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(&agent_id)
            {
                info.pid = pid;
            }
        })
        .await;

        match report.status {
            AgentStatus::Success => permit.success(),
            AgentStatus::Failure | AgentStatus::Timeout => permit.failure(),
            // Says nothing about whether agents work.
            AgentStatus::Cancelled | AgentStatus::Interrupted => permit.release(),
        }
        self.refresh_breaker_gauge();
        self.metrics.agent_finished(
            &incident.cluster,
            report.status,
            report.duration,
            report.started,
        );
        log_report(&agent_id, &incident, &report);
        if self.shutdown.is_shutting_down() {
            self.finished_during_shutdown
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(agent_id.clone(), report.status);
        }
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&agent_id);
        job.finish(match report.status {
            AgentStatus::Success => JobOutcome::Completed,
            AgentStatus::Failure | AgentStatus::Timeout => JobOutcome::Failed,
            AgentStatus::Cancelled => JobOutcome::Cancelled(CancelReason::ClientRequest),
            AgentStatus::Interrupted => JobOutcome::Cancelled(CancelReason::Shutdown),
        });
        drop(slot);
        self.agent_done.notify_waiters();
    }

    /// Empties the queue at shutdown (plus the incident the dispatcher
    /// held, if any); returns how many incidents never got an agent.
    fn abandon_queue(&self, held: Option<&Incident>) -> usize {
        for expired in self.queue.sweep() {
            self.on_expired(&expired);
        }
        let mut dropped: Vec<String> = held
            .iter()
            .map(|incident| format!("{}/{}", incident.cluster, incident.id))
            .collect();
        while let Some(queued) = self.queue.pop() {
            let incident = queued.incident;
            self.metrics.left_queue(&incident.cluster);
            dropped.push(format!("{}/{}", incident.cluster, incident.id));
        }
        if !dropped.is_empty() {
            tracing::warn!(count = dropped.len(), incidents = ?dropped, "queued incidents not started because of shutdown");
        }
        dropped.len()
    }
}

fn add_readiness_checks(health: &Health, inner: &Arc<Inner>) {
    let streams = Arc::downgrade(inner);
    let total = inner.settings.streams.len();
    health.add_check(STREAMS_CHECK, move || {
        let connected = streams
            .upgrade()
            .map_or(0, |inner| inner.connected.load(Ordering::SeqCst));
        async move {
            if connected > 0 {
                Ok(())
            } else {
                Err(format!("no incident stream connected (0 of {total})"))
            }
        }
    });
    let breaker = Arc::downgrade(inner);
    health.add_check(BREAKER_CHECK, move || {
        let state = breaker.upgrade().map(|inner| inner.refresh_breaker_gauge());
        async move {
            match state {
                Some(BreakerState::Closed) => Ok(()),
                Some(state) => Err(format!(
                    "agent circuit breaker is {state} after repeated agent failures; incidents are dropped"
                )),
                None => Err("runner stopped".to_owned()),
            }
        }
    });
}

/// Binds the metrics and health ports (one listener when they are equal)
/// and serves them until `stop` fires.
async fn serve(
    inner: &Arc<Inner>,
    health: &Health,
    stop: CancellationToken,
) -> Result<(SocketAddr, SocketAddr, Vec<JoinHandle<()>>), Error> {
    let metrics_router = api::metrics_router(Arc::clone(inner));
    let health_router = health.router().merge(api::agents_router(Arc::clone(inner)));
    let (metrics_addr, health_addr) = (inner.settings.metrics_addr, inner.settings.health_addr);
    if metrics_addr == health_addr && metrics_addr.port() != 0 {
        let listener = bind(metrics_addr).await?;
        let addr = local_addr(&listener, metrics_addr)?;
        let task = spawn_server(listener, health_router.merge(metrics_router), stop);
        return Ok((addr, addr, vec![task]));
    }
    let metrics_listener = bind(metrics_addr).await?;
    let health_listener = bind(health_addr).await?;
    let metrics_bound = local_addr(&metrics_listener, metrics_addr)?;
    let health_bound = local_addr(&health_listener, health_addr)?;
    Ok((
        metrics_bound,
        health_bound,
        vec![
            spawn_server(metrics_listener, metrics_router, stop.clone()),
            spawn_server(health_listener, health_router, stop),
        ],
    ))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, Error> {
    listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })
}

fn spawn_server(
    listener: TcpListener,
    app: axum::Router,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let served = axum::serve(resilience::shutdown::without_nagle(listener), app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP server failed");
        }
    })
}

fn log_report(agent_id: &str, incident: &Incident, report: &AgentReport) {
    let exit_code = report.exit.and_then(|e| e.code());
    let signal = report
        .exit
        .and_then(|e| std::os::unix::process::ExitStatusExt::signal(&e));
    let stopped_by = report.termination.map(|t| t.as_str());
    let fields = (
        report.duration.as_secs_f64(),
        report.stdout.total,
        report.stderr.total,
    );
    match report.status {
        AgentStatus::Success => tracing::info!(
            agent_id,
            cluster = %incident.cluster,
            incident_id = %incident.id,
            status = report.status.as_str(),
            exit_code,
            duration_seconds = fields.0,
            stdout_bytes = fields.1,
            stderr_bytes = fields.2,
            stdout = %report.stdout,
            stderr = %report.stderr,
            "agent finished"
        ),
        _ => tracing::warn!(
            agent_id,
            cluster = %incident.cluster,
            incident_id = %incident.id,
            status = report.status.as_str(),
            exit_code,
            signal,
            stopped_by,
            error = report.error.as_deref(),
            duration_seconds = fields.0,
            stdout_bytes = fields.1,
            stderr_bytes = fields.2,
            stdout = %report.stdout,
            stderr = %report.stderr,
            "agent did not succeed"
        ),
    }
}
