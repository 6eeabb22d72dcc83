//! The runner's Prometheus metrics, all prefixed `agent_runner_`.
//!
//! Rule kept here: labels are low-cardinality — the configured cluster
//! names and fixed sets of reasons, severities and statuses, never an
//! incident or agent id — and every series the runner can produce exists
//! (at 0) from the start, so rates and alerts work before the first event.
//!
//! Counters are registered without `_total` and histograms with their unit,
//! so the exposed names are exactly the documented ones
//! (`agent_runner_events_received_total`,
//! `agent_runner_agent_duration_seconds_bucket`, …).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use resilience::BreakerState;

use crate::config::{BUILD_DATE, GIT_COMMIT};
use crate::filter::{Severity, UNKNOWN_SEVERITY};

/// Buckets of `agent_duration_seconds`.
pub const AGENT_DURATION_BUCKETS: [f64; 7] = [1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// Buckets of `sse_connection_duration_seconds`.
pub const SSE_CONNECTION_DURATION_BUCKETS: [f64; 7] =
    [60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0];

/// Every `reason` of `events_filtered_total`.
pub const FILTER_REASONS: [&str; 4] = ["severity_low", "duplicate", "malformed", "queue_full"];
/// Every `reason` of the `sse_*` counters.
pub const SSE_REASONS: [&str; 5] = [
    "network",
    "server_status",
    "timeout",
    "end_of_stream",
    "decode",
];

/// Every `task` of `task_panics_total`: the background loops kept alive
/// through a panic.
pub const TASKS: [&str; 1] = ["queue_sweeper"];

/// Every family [`Metrics`] registers, as its samples name it (counters
/// with `_total`; histograms without `_bucket`, `_sum`, `_count`). The
/// runner adds the `agent_runner_shutdown_*` gauges of its `Shutdown`.
pub const FAMILIES: [&str; 20] = [
    "agent_runner_events_received_total",
    "agent_runner_events_filtered_total",
    "agent_runner_events_queued_total",
    "agent_runner_events_expired_total",
    "agent_runner_events_dequeued_total",
    "agent_runner_queue_depth",
    "agent_runner_agents_spawned_total",
    "agent_runner_agents_completed_total",
    "agent_runner_agents_timeout_total",
    "agent_runner_agents_active",
    "agent_runner_agent_duration_seconds",
    "agent_runner_circuit_breaker_state",
    "agent_runner_circuit_breaker_events_dropped_total",
    "agent_runner_sse_connections_active",
    "agent_runner_sse_reconnections_total",
    "agent_runner_sse_connection_errors_total",
    "agent_runner_sse_connection_duration_seconds",
    "agent_runner_task_panics_total",
    "agent_runner_build_info",
    "agent_runner_up",
];

/// How an agent ended: the `status` label of `agents_completed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentStatus {
    /// Exited 0.
    Success,
    /// Exited non-zero, died of a signal, or could not be started.
    Failure,
    /// Ran past `--agent-timeout` and was stopped.
    Timeout,
    /// Stopped through `POST /v1/agents/{id}/cancel`.
    Cancelled,
    /// Stopped because the shutdown timeout ran out.
    Interrupted,
}

impl AgentStatus {
    /// Every status.
    pub const ALL: [AgentStatus; 5] = [
        AgentStatus::Success,
        AgentStatus::Failure,
        AgentStatus::Timeout,
        AgentStatus::Cancelled,
        AgentStatus::Interrupted,
    ];

    /// Whether the runner stopped the agent (timeout, cancel, shutdown)
    /// rather than the agent ending by itself.
    pub fn was_stopped(self) -> bool {
        matches!(
            self,
            AgentStatus::Timeout | AgentStatus::Cancelled | AgentStatus::Interrupted
        )
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Success => "success",
            AgentStatus::Failure => "failure",
            AgentStatus::Timeout => "timeout",
            AgentStatus::Cancelled => "cancelled",
            AgentStatus::Interrupted => "interrupted",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeverityLabels {
    cluster: String,
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    cluster: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    cluster: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    git_commit: String,
    build_date: String,
}

/// All of the runner's metrics. Cheap to clone; clones share the values.
#[derive(Debug, Clone)]
pub struct Metrics {
    events_received: Family<SeverityLabels, Counter>,
    events_filtered: Family<ReasonLabels, Counter>,
    events_queued: Family<ClusterLabels, Counter>,
    events_expired: Family<ClusterLabels, Counter>,
    events_dequeued: Family<ClusterLabels, Counter>,
    queue_depth: Family<ClusterLabels, Gauge>,
    agents_spawned: Family<ClusterLabels, Counter>,
    agents_completed: Family<StatusLabels, Counter>,
    agents_timeout: Family<ClusterLabels, Counter>,
    agents_active: Family<ClusterLabels, Gauge>,
    agent_duration: Histogram,
    circuit_breaker_state: Gauge,
    circuit_breaker_events_dropped: Family<ClusterLabels, Counter>,
    sse_connections_active: Family<ClusterLabels, Gauge>,
    sse_reconnections: Family<ReasonLabels, Counter>,
    sse_connection_errors: Family<ReasonLabels, Counter>,
    sse_connection_duration: Histogram,
    task_panics: Family<TaskLabels, Counter>,
    build_info: Family<BuildLabels, Gauge>,
    up: Gauge,
}

impl Metrics {
    /// Metrics with every series of `clusters` created at zero, `up` at 1
    /// and `build_info` set.
    pub fn new<'a>(clusters: impl IntoIterator<Item = &'a str>) -> Self {
        let metrics = Self {
            events_received: Family::default(),
            events_filtered: Family::default(),
            events_queued: Family::default(),
            events_expired: Family::default(),
            events_dequeued: Family::default(),
            queue_depth: Family::default(),
            agents_spawned: Family::default(),
            agents_completed: Family::default(),
            agents_timeout: Family::default(),
            agents_active: Family::default(),
            agent_duration: Histogram::new(AGENT_DURATION_BUCKETS),
            circuit_breaker_state: Gauge::default(),
            circuit_breaker_events_dropped: Family::default(),
            sse_connections_active: Family::default(),
            sse_reconnections: Family::default(),
            sse_connection_errors: Family::default(),
            sse_connection_duration: Histogram::new(SSE_CONNECTION_DURATION_BUCKETS),
            task_panics: Family::default(),
            build_info: Family::default(),
            up: Gauge::default(),
        };
        for cluster in clusters {
            metrics.touch(cluster);
        }
        for task in TASKS {
            drop(metrics.task_panics.get_or_create(&TaskLabels {
                task: task.to_owned(),
            }));
        }
        metrics
            .build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                git_commit: GIT_COMMIT.to_owned(),
                build_date: BUILD_DATE.to_owned(),
            })
            .set(1);
        metrics.up.set(1);
        metrics
    }

    /// Registers every family on `registry` under the `agent_runner_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("agent_runner");
        r.register(
            "events_received",
            "Events received from the streams, by cluster and severity (unknown when unreadable)",
            self.events_received.clone(),
        );
        r.register(
            "events_filtered",
            "Events not queued, by reason: severity_low, duplicate, malformed, queue_full",
            self.events_filtered.clone(),
        );
        r.register(
            "events_queued",
            "Incidents accepted into the queue",
            self.events_queued.clone(),
        );
        r.register(
            "events_expired",
            "Queued incidents dropped because they waited longer than the max queue age",
            self.events_expired.clone(),
        );
        r.register(
            "events_dequeued",
            "Incidents taken from the queue to run an agent",
            self.events_dequeued.clone(),
        );
        r.register(
            "queue_depth",
            "Incidents waiting in the queue",
            self.queue_depth.clone(),
        );
        r.register(
            "agents_spawned",
            "Agent processes started",
            self.agents_spawned.clone(),
        );
        r.register(
            "agents_completed",
            "Agents ended, by status: success, failure, timeout, cancelled, interrupted",
            self.agents_completed.clone(),
        );
        r.register(
            "agents_timeout",
            "Agents stopped because they ran past the agent timeout",
            self.agents_timeout.clone(),
        );
        r.register(
            "agents_active",
            "Agent processes running",
            self.agents_active.clone(),
        );
        r.register_with_unit(
            "agent_duration",
            "How long agents ran, whatever ended them",
            Unit::Seconds,
            self.agent_duration.clone(),
        );
        r.register(
            "circuit_breaker_state",
            "Agent circuit breaker: 0 closed, 1 open, 2 half-open (one probe agent running)",
            self.circuit_breaker_state.clone(),
        );
        r.register(
            "circuit_breaker_events_dropped",
            "Incidents dropped because the agent circuit breaker was open",
            self.circuit_breaker_events_dropped.clone(),
        );
        r.register(
            "sse_connections_active",
            "1 while the cluster's stream is connected",
            self.sse_connections_active.clone(),
        );
        r.register(
            "sse_reconnections",
            "Reconnections scheduled, by why the previous connection or attempt ended",
            self.sse_reconnections.clone(),
        );
        r.register(
            "sse_connection_errors",
            "Failed connection attempts and broken connections, by reason (a clean end_of_stream is not an error)",
            self.sse_connection_errors.clone(),
        );
        r.register_with_unit(
            "sse_connection_duration",
            "How long established stream connections lasted",
            Unit::Seconds,
            self.sse_connection_duration.clone(),
        );
        r.register(
            "task_panics",
            "Panics caught in background loops (task: queue_sweeper); each loop was restarted",
            self.task_panics.clone(),
        );
        r.register(
            "build_info",
            "Always 1; the labels say which build is running",
            self.build_info.clone(),
        );
        r.register(
            "up",
            "Always 1: a runner whose /metrics answers is up, draining included (see shutdown_phase)",
            self.up.clone(),
        );
    }

    /// The registry's text exposition (OpenMetrics).
    pub fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, registry);
        text
    }

    /// An event arrived (`severity` is a level name or `unknown`).
    pub fn received(&self, cluster: &str, severity: &str) {
        self.events_received
            .get_or_create(&SeverityLabels {
                cluster: cluster.to_owned(),
                severity: severity.to_owned(),
            })
            .inc();
    }

    /// An event was filtered for `reason` (one of [`FILTER_REASONS`]).
    pub fn filtered(&self, cluster: &str, reason: &str) {
        self.events_filtered
            .get_or_create(&reason_labels(cluster, reason))
            .inc();
    }

    /// An incident was queued.
    pub fn queued(&self, cluster: &str) {
        self.events_queued.get_or_create(&labels(cluster)).inc();
        self.queue_depth.get_or_create(&labels(cluster)).inc();
    }

    /// A queued incident grew older than the max queue age.
    pub fn expired(&self, cluster: &str) {
        self.events_expired.get_or_create(&labels(cluster)).inc();
    }

    /// A queued incident was evicted by a more severe one.
    pub fn evicted(&self, cluster: &str) {
        self.filtered(cluster, "queue_full");
    }

    /// A queued incident was taken to run an agent.
    pub fn dequeued(&self, cluster: &str) {
        self.events_dequeued.get_or_create(&labels(cluster)).inc();
    }

    /// An incident left the queue, whatever its fate (served, expired,
    /// evicted, abandoned at shutdown).
    pub fn left_queue(&self, cluster: &str) {
        self.queue_depth.get_or_create(&labels(cluster)).dec();
    }

    /// An agent process started.
    pub fn agent_started(&self, cluster: &str) {
        self.agents_spawned.get_or_create(&labels(cluster)).inc();
        self.agents_active.get_or_create(&labels(cluster)).inc();
    }

    /// An agent ended (`started` says whether its process had started).
    pub fn agent_finished(
        &self,
        cluster: &str,
        status: AgentStatus,
        duration: Duration,
        started: bool,
    ) {
        if started {
            self.agents_active.get_or_create(&labels(cluster)).dec();
        }
        self.agents_completed
            .get_or_create(&StatusLabels {
                cluster: cluster.to_owned(),
                status: status.as_str().to_owned(),
            })
            .inc();
        if status == AgentStatus::Timeout {
            self.agents_timeout.get_or_create(&labels(cluster)).inc();
        }
        self.agent_duration.observe(duration.as_secs_f64());
    }

    /// The breaker's current state.
    pub fn breaker_state(&self, state: BreakerState) {
        self.circuit_breaker_state.set(state.as_gauge());
    }

    /// An incident was dropped because the breaker was open.
    pub fn breaker_dropped(&self, cluster: &str) {
        self.circuit_breaker_events_dropped
            .get_or_create(&labels(cluster))
            .inc();
    }

    /// A stream connected.
    pub fn sse_connected(&self, cluster: &str) {
        self.sse_connections_active
            .get_or_create(&labels(cluster))
            .set(1);
    }

    /// A stream connection (or attempt) ended; `connected_for` is `None`
    /// for an attempt that never connected.
    pub fn sse_disconnected(
        &self,
        cluster: &str,
        reason: &str,
        is_error: bool,
        connected_for: Option<Duration>,
    ) {
        if let Some(duration) = connected_for {
            self.sse_connections_active
                .get_or_create(&labels(cluster))
                .set(0);
            self.sse_connection_duration.observe(duration.as_secs_f64());
        }
        if is_error {
            self.sse_connection_errors
                .get_or_create(&reason_labels(cluster, reason))
                .inc();
        }
    }

    /// A reconnection was scheduled after an end for `reason`.
    pub fn sse_reconnecting(&self, cluster: &str, reason: &str) {
        self.sse_reconnections
            .get_or_create(&reason_labels(cluster, reason))
            .inc();
    }

    /// A background loop panicked and is being restarted (`task` is one of
    /// [`TASKS`]).
    pub fn task_panicked(&self, task: &str) {
        self.task_panics
            .get_or_create(&TaskLabels {
                task: task.to_owned(),
            })
            .inc();
    }

    /// Whether `cluster`'s stream is connected now.
    pub fn sse_is_connected(&self, cluster: &str) -> bool {
        self.sse_connections_active
            .get_or_create(&labels(cluster))
            .get()
            > 0
    }

    /// Creates every series of `cluster` at zero.
    fn touch(&self, cluster: &str) {
        for severity in Severity::ALL
            .iter()
            .map(|s| s.as_str())
            .chain([UNKNOWN_SEVERITY])
        {
            drop(self.events_received.get_or_create(&SeverityLabels {
                cluster: cluster.to_owned(),
                severity: severity.to_owned(),
            }));
        }
        for reason in FILTER_REASONS {
            drop(
                self.events_filtered
                    .get_or_create(&reason_labels(cluster, reason)),
            );
        }
        for family in [
            &self.events_queued,
            &self.events_expired,
            &self.events_dequeued,
            &self.agents_spawned,
            &self.agents_timeout,
            &self.circuit_breaker_events_dropped,
        ] {
            drop(family.get_or_create(&labels(cluster)));
        }
        for family in [
            &self.queue_depth,
            &self.agents_active,
            &self.sse_connections_active,
        ] {
            drop(family.get_or_create(&labels(cluster)));
        }
        for status in AgentStatus::ALL {
            drop(self.agents_completed.get_or_create(&StatusLabels {
                cluster: cluster.to_owned(),
                status: status.as_str().to_owned(),
            }));
        }
        for reason in SSE_REASONS {
            drop(
                self.sse_reconnections
                    .get_or_create(&reason_labels(cluster, reason)),
            );
            drop(
                self.sse_connection_errors
                    .get_or_create(&reason_labels(cluster, reason)),
            );
        }
    }
}

fn labels(cluster: &str) -> ClusterLabels {
    ClusterLabels {
        cluster: cluster.to_owned(),
    }
}

fn reason_labels(cluster: &str, reason: &str) -> ReasonLabels {
    ReasonLabels {
        cluster: cluster.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(metrics: &Metrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        Metrics::encode(&registry)
    }

    #[test]
    fn every_family_is_exposed_under_its_exact_name_before_any_event() {
        let text = text(&Metrics::new(["prod"]));
        for family in FAMILIES {
            let sample = if family.ends_with("_seconds") {
                format!("{family}_count")
            } else {
                family.to_owned()
            };
            assert!(
                text.lines().any(|l| l.starts_with(&sample)),
                "{sample} missing in\n{text}"
            );
        }
        assert!(
            text.contains(
                r#"agent_runner_agents_completed_total{cluster="prod",status="timeout"} 0"#
            )
        );
        assert!(text.contains(r#"agent_runner_agent_duration_seconds_bucket{le="300.0"} 0"#));
        assert!(
            text.contains(r#"agent_runner_sse_connection_duration_seconds_bucket{le="14400.0"} 0"#)
        );
        assert!(text.contains("agent_runner_up 1"));
        assert!(text.contains(&format!(
            r#"agent_runner_build_info{{version="{}",git_commit="{GIT_COMMIT}",build_date="{BUILD_DATE}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        )));
    }

    /// The `le` values of `histogram`'s buckets, in exposition order.
    fn buckets(text: &str, histogram: &str) -> Vec<String> {
        let prefix = format!("{histogram}_bucket{{le=\"");
        text.lines()
            .filter_map(|line| line.strip_prefix(&prefix)?.split_once('"'))
            .map(|(le, _)| le.to_owned())
            .collect()
    }

    /// The cumulative counts of `histogram`'s buckets, in exposition order.
    fn bucket_counts(text: &str, histogram: &str) -> Vec<u64> {
        let prefix = format!("{histogram}_bucket{{le=");
        text.lines()
            .filter(|line| line.starts_with(&prefix))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse().ok())
            .collect()
    }

    /// Every series (`name{labels}`) in the exposition.
    fn series(text: &str) -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .map(|(series, _)| series.to_owned())
            .collect()
    }

    #[test]
    fn histograms_expose_every_documented_bucket_in_order() {
        let text = text(&Metrics::new(["prod"]));
        assert_eq!(
            buckets(&text, "agent_runner_agent_duration_seconds"),
            [
                "1.0", "5.0", "10.0", "30.0", "60.0", "120.0", "300.0", "+Inf"
            ]
        );
        assert_eq!(
            buckets(&text, "agent_runner_sse_connection_duration_seconds"),
            [
                "60.0", "300.0", "600.0", "1800.0", "3600.0", "7200.0", "14400.0", "+Inf"
            ]
        );
    }

    #[test]
    fn every_series_exists_from_the_start_and_recording_creates_no_other() {
        let metrics = Metrics::new(["prod", "staging"]);
        let before = series(&text(&metrics));
        for cluster in ["prod", "staging"] {
            for severity in Severity::ALL
                .iter()
                .map(|s| s.as_str())
                .chain([UNKNOWN_SEVERITY])
            {
                metrics.received(cluster, severity);
            }
            for reason in FILTER_REASONS {
                metrics.filtered(cluster, reason);
            }
            metrics.queued(cluster);
            metrics.evicted(cluster);
            metrics.expired(cluster);
            metrics.dequeued(cluster);
            metrics.left_queue(cluster);
            metrics.agent_started(cluster);
            metrics.breaker_dropped(cluster);
            for (i, status) in AgentStatus::ALL.into_iter().enumerate() {
                let seconds = 0.5 + 100.0 * i as f64;
                metrics.agent_finished(cluster, status, Duration::from_secs_f64(seconds), true);
            }
            metrics.sse_connected(cluster);
            for reason in SSE_REASONS {
                metrics.sse_disconnected(cluster, reason, true, Some(Duration::from_secs(20_000)));
                metrics.sse_reconnecting(cluster, reason);
            }
        }
        for task in TASKS {
            metrics.task_panicked(task);
        }
        metrics.breaker_state(BreakerState::Open);
        let after = series(&text(&metrics));
        assert_eq!(before, after, "every series exists before it is used");

        // The label sets, family by family: clusters × the fixed values.
        let count = |family: &str| {
            after
                .iter()
                .filter(|s| s.split('{').next() == Some(family))
                .count()
        };
        let clusters = 2;
        for (family, per_cluster) in [
            (
                "agent_runner_events_received_total",
                Severity::ALL.len() + 1,
            ),
            ("agent_runner_events_filtered_total", FILTER_REASONS.len()),
            (
                "agent_runner_agents_completed_total",
                AgentStatus::ALL.len(),
            ),
            ("agent_runner_sse_reconnections_total", SSE_REASONS.len()),
            (
                "agent_runner_sse_connection_errors_total",
                SSE_REASONS.len(),
            ),
            ("agent_runner_events_queued_total", 1),
            ("agent_runner_events_expired_total", 1),
            ("agent_runner_events_dequeued_total", 1),
            ("agent_runner_queue_depth", 1),
            ("agent_runner_agents_spawned_total", 1),
            ("agent_runner_agents_timeout_total", 1),
            ("agent_runner_agents_active", 1),
            ("agent_runner_circuit_breaker_events_dropped_total", 1),
            ("agent_runner_sse_connections_active", 1),
        ] {
            assert_eq!(count(family), clusters * per_cluster, "{family}");
        }
        for (family, total) in [
            ("agent_runner_task_panics_total", TASKS.len()),
            (
                "agent_runner_agent_duration_seconds_bucket",
                AGENT_DURATION_BUCKETS.len() + 1,
            ),
            (
                "agent_runner_sse_connection_duration_seconds_bucket",
                SSE_CONNECTION_DURATION_BUCKETS.len() + 1,
            ),
            ("agent_runner_circuit_breaker_state", 1),
            ("agent_runner_build_info", 1),
            ("agent_runner_up", 1),
        ] {
            assert_eq!(count(family), total, "{family}");
        }
        // Cumulative counts, bucket by bucket: 0.5, 100.5, 200.5, 300.5 and
        // 400.5 s for each cluster; every connection lasted 20 000 s.
        let text = text(&metrics);
        assert_eq!(
            bucket_counts(&text, "agent_runner_agent_duration_seconds"),
            [2, 2, 2, 2, 2, 4, 6, 10]
        );
        assert_eq!(
            bucket_counts(&text, "agent_runner_sse_connection_duration_seconds"),
            [0, 0, 0, 0, 0, 0, 0, 10]
        );
    }

    #[test]
    fn queue_depth_counts_what_entered_and_has_not_left() {
        let metrics = Metrics::new(["prod"]);
        for _ in 0..4 {
            metrics.queued("prod");
        }
        for _ in 0..3 {
            metrics.left_queue("prod");
        }
        metrics.dequeued("prod");
        metrics.expired("prod");
        metrics.evicted("prod");
        let text = text(&metrics);
        assert!(text.contains(r#"agent_runner_queue_depth{cluster="prod"} 1"#));
        assert!(text.contains(r#"agent_runner_events_queued_total{cluster="prod"} 4"#));
        assert!(text.contains(
            r#"agent_runner_events_filtered_total{cluster="prod",reason="queue_full"} 1"#
        ));
    }
}
