//! Contention benchmark: 20 writers × 50 increments of the iteration counter,
//! first all on one task, then spread over 50 tasks, against testkit's fake API
//! server with 2 ms latency per call and 5 % injected 500s.
//!
//! ```text
//! cargo run --release -p state-store --example state_contention               # mode "cas"
//! cargo run --release -p state-store --example state_contention -- --naive-ssa
//! ```
//!
//! Prints one JSON line on stdout for the mode, over both phases, with the keys
//! `mode, expected, final, lost_updates, conflicts, calls_per_update,
//! update_p50_ms, update_p99_ms`; the same numbers per phase go to stderr,
//! with the updates that failed and `misacknowledged`: how far the counter
//! values acknowledged to the writers are from exactly 1..=final once each
//! per task (a duplicated increment hiding behind a lost one shows here, not
//! in `lost_updates`).
//!
//! `--naive-ssa` runs the starting design kept here only as the baseline: read
//! the ConfigMap, modify, then server-side apply with force. Force means the
//! server never refuses a write based on a stale read, so concurrent increments
//! overwrite each other: that is what `lost_updates` counts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams};
use state_store::naming::{KEY_STATE, state_labels};
use state_store::{ConfigMapBackend, RemediationState, StateStore, StoreConfig};
use testkit::calls::Outcome;
use testkit::faults::{InjectedError, Match};
use testkit::kube::FakeKube;
use tokio::time::Instant;

const WRITERS: usize = 20;
const INCREMENTS: usize = 50;
const SPREAD_TASKS: usize = 50;
const NAMESPACE: &str = "default";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Cas,
    NaiveSsa,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Cas => "cas",
            Mode::NaiveSsa => "naive-ssa",
        }
    }
}

/// What one phase (or both together) measured.
#[derive(Default)]
struct Measured {
    expected: u64,
    final_value: u64,
    conflicts: u64,
    calls: u64,
    latencies_ms: Vec<f64>,
    failed: u64,
    /// Acknowledged counter values that were not one of 1..=final exactly once
    /// per task: a duplicated or phantom increment that `final - expected`
    /// alone could hide behind a lost one.
    misacknowledged: u64,
}

impl Measured {
    fn merge(&mut self, other: Measured) {
        self.expected += other.expected;
        self.final_value += other.final_value;
        self.conflicts += other.conflicts;
        self.calls += other.calls;
        self.latencies_ms.extend(other.latencies_ms);
        self.failed += other.failed;
        self.misacknowledged += other.misacknowledged;
    }

    fn json(&mut self, mode: Mode) -> String {
        self.latencies_ms.sort_by(f64::total_cmp);
        format!(
            "{{\"mode\":\"{}\",\"expected\":{},\"final\":{},\"lost_updates\":{},\"conflicts\":{},\"calls_per_update\":{:.2},\"update_p50_ms\":{:.2},\"update_p99_ms\":{:.2}}}",
            mode.name(),
            self.expected,
            self.final_value,
            self.expected.saturating_sub(self.final_value),
            self.conflicts,
            self.calls as f64 / self.expected.max(1) as f64,
            percentile(&self.latencies_ms, 0.50),
            percentile(&self.latencies_ms, 0.99),
        )
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mode = if std::env::args().any(|a| a == "--naive-ssa") {
        Mode::NaiveSsa
    } else {
        Mode::Cas
    };

    let kube = FakeKube::builder().seed(42).start().await.unwrap();
    kube.faults()
        .latency(Match::any(), Duration::from_millis(2), Duration::ZERO);
    kube.faults()
        .error_rate(Match::any(), 0.05, InjectedError::Status(500));
    // Only our own retries: the client's built-in retry layer would hide calls.
    let mut config = kube.config();
    config.default_retry = false;
    let client = kube::Client::try_from(config).unwrap();

    let mut total = Measured::default();
    for (phase, tasks) in [("one-task", 1), ("fifty-tasks", SPREAD_TASKS)] {
        let task_ids: Vec<String> = (0..tasks).map(|t| format!("bench-{phase}-{t}")).collect();
        let mut line = run_phase(mode, &kube, &client, &task_ids).await;
        let json = line.json(mode);
        eprintln!(
            "phase {phase} ({tasks} task(s)): {json} failed_updates={} misacknowledged={}",
            line.failed, line.misacknowledged
        );
        total.merge(line);
    }
    println!("{}", total.json(mode));
}

async fn run_phase(
    mode: Mode,
    kube: &FakeKube,
    client: &kube::Client,
    task_ids: &[String],
) -> Measured {
    let store = StateStore::with_config(
        ConfigMapBackend::new(client.clone(), NAMESPACE),
        StoreConfig {
            max_iterations: 1_000_000,
            // 20 writers on one key: allow for long conflict streaks rather than
            // turning contention into failed updates.
            max_attempts: 200,
            ..StoreConfig::default()
        },
    );
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let failed = Arc::new(AtomicU64::new(0));
    let calls_before = kube.calls().count(None, Some("configmaps"));
    let conflicts_before = conflicts(kube);

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, api, failed) = (store.clone(), api.clone(), failed.clone());
            let task_ids = task_ids.to_vec();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(INCREMENTS);
                let mut acknowledged = Vec::with_capacity(INCREMENTS);
                for i in 0..INCREMENTS {
                    // Writers start at different tasks, so with many tasks they rarely meet.
                    let t = (w + i) % task_ids.len();
                    let task = &task_ids[t];
                    let started = Instant::now();
                    let value = match mode {
                        Mode::Cas => store.increment_iteration(task).await.ok(),
                        Mode::NaiveSsa => naive_increment(&api, task).await,
                    };
                    match value {
                        Some(value) => {
                            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                            acknowledged.push((t, value));
                        }
                        None => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                (latencies, acknowledged)
            })
        })
        .collect();
    let mut latencies_ms = Vec::new();
    let mut acknowledged = Vec::new();
    for w in writers {
        let (latencies, values) = w.await.unwrap();
        latencies_ms.extend(latencies);
        acknowledged.extend(values);
    }
    let calls = kube.calls().count(None, Some("configmaps")) - calls_before;
    let conflicts = conflicts(kube) - conflicts_before;

    // Read the result without faults in the way.
    kube.faults().clear();
    let mut final_value = 0;
    let mut finals = Vec::with_capacity(task_ids.len());
    for task in task_ids {
        let snap = store.get(task).await.unwrap().unwrap();
        final_value += u64::from(snap.state.iteration);
        finals.push(snap.state.iteration);
    }
    kube.faults()
        .latency(Match::any(), Duration::from_millis(2), Duration::ZERO);
    kube.faults()
        .error_rate(Match::any(), 0.05, InjectedError::Status(500));

    Measured {
        // An update that returned an error was reported to its caller, not lost:
        // only acknowledged increments are expected in the final value.
        expected: latencies_ms.len() as u64,
        misacknowledged: misacknowledged(&acknowledged, &finals),
        final_value,
        conflicts,
        calls,
        latencies_ms,
        failed: failed.load(Ordering::Relaxed),
    }
}

/// How far the acknowledged values are from "each task's acknowledged values
/// are exactly 1..=its final value, once each": with no lost and no duplicated
/// increment, this is 0.
fn misacknowledged(acknowledged: &[(usize, u32)], finals: &[u32]) -> u64 {
    let mut per_task: Vec<Vec<u32>> = vec![Vec::new(); finals.len()];
    for &(task, value) in acknowledged {
        per_task[task].push(value);
    }
    per_task
        .iter_mut()
        .zip(finals)
        .map(|(values, &last)| {
            values.sort_unstable();
            let before = values.len();
            values.dedup();
            let duplicates = before - values.len();
            let out_of_range = values.iter().filter(|&&v| v == 0 || v > last).count();
            let missing = (1..=last)
                .filter(|v| values.binary_search(v).is_err())
                .count();
            (duplicates + out_of_range + missing) as u64
        })
        .sum()
}

fn conflicts(kube: &FakeKube) -> u64 {
    kube.calls()
        .count_outcome(None, Some("configmaps"), &Outcome::Error(409))
}

/// The starting design: GET, increment, server-side apply with force. Retries
/// the whole sequence on an error, up to 200 times, like the CAS mode.
/// Returns the value it wrote.
async fn naive_increment(api: &Api<ConfigMap>, task: &str) -> Option<u32> {
    let name = format!("task-{task}-state");
    for _ in 0..200 {
        let current = match api.get_opt(&name).await {
            Ok(current) => current,
            Err(_) => continue,
        };
        let mut state = current
            .and_then(|cm| cm.data?.remove(KEY_STATE))
            .and_then(|json| serde_json::from_str::<RemediationState>(&json).ok())
            .unwrap_or_else(|| RemediationState::new(task, Timestamp::now()));
        state.iteration += 1;
        state.last_update = Timestamp::now();
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(state_labels(task)),
                ..ObjectMeta::default()
            },
            data: Some([(KEY_STATE.to_owned(), serde_json::to_string(&state).unwrap())].into()),
            ..ConfigMap::default()
        };
        let params = PatchParams::apply("supersede-naive").force();
        if api.patch(&name, &params, &Patch::Apply(&cm)).await.is_ok() {
            return Some(state.iteration);
        }
    }
    None
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
