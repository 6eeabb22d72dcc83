//! One recovery cycle over a namespace of 10 000 tasks of which a chosen
//! number are inconsistent, in a mix of every row of the decision table, on
//! testkit's FakeKube and FakeGitHub with 2 ms latency per call.
//!
//! ```text
//! cargo run --release -p recovery --example recovery_bench
//! RECOVERY_BENCH_TASKS=20000 RECOVERY_BENCH_SIZES=100 cargo run --release -p recovery --example recovery_bench
//! ```
//!
//! Environment: `RECOVERY_BENCH_TASKS` (tasks in the namespace, default
//! 10 000), `RECOVERY_BENCH_SIZES` (inconsistencies, comma-separated,
//! default `100,1000,10000`: one run each, on a fresh world),
//! `RECOVERY_BENCH_LATENCY_MS` (per call, on both fakes, default 2),
//! `RECOVERY_BENCH_CONVERGE_TIMEOUT_S` (how long the coordinator may work
//! through what the cycle handed it before `repaired` is judged, default
//! 300: at 10 000 inconsistencies its queue takes far longer, and its
//! throughput is `coordinator_bench`'s subject, not this one's).
//!
//! # The world
//!
//! Every task has its state ConfigMap (`task-<id>-state`, written by
//! state-store's own encoder), a CodeRun, and a pull request on FakeGitHub;
//! everything is put in place with `FakeKube::seed` and FakeGitHub's own
//! setters, without a request per object. A consistent task is in
//! progress on the head its pull request shows, its run on that head, its
//! task Lease held by a live holder (renewed at seeding, with a one-hour
//! lease so that it stays held however long the run takes: the Lease LIST
//! is then as large as the namespace, and the reconciler must leave every
//! one of them alone). An inconsistent task is made as the scenario tests
//! make its row (`tests/scenarios_kube.rs`):
//!
//! | row | made by |
//! |---|---|
//! | `head_drift` | state at the old head (pushed an hour ago), the PR on GitHub at the new one, a run on the old head with a pod and one on the new head |
//! | `pending_supersession` | a push recorded 11 min ago, nothing open, the old head's run alive (with its pod), the new head's run |
//! | `abandoned_journal` | the same, plus a `Started` journal of a dead holder (`dead-pod/1`) whose Lease was last renewed 2 min ago |
//! | `stale_run_alive` | the new head recorded and settled, the old head's run annotated `superseded-by` 5 min ago, its pod still there |
//! | `run_held_by_finalizer` | the same run without a pod, deleted (one DELETECOLLECTION before the measurement), held by `example.dev/audit` |
//! | `labels_not_moved` | a cancellation recorded with `labels: failed`, the PR still labelled `ready-for-qa` |
//! | `orphaned_lease` | a consistent task whose Lease was last renewed 2 min ago by `dead-pod/1` |
//! | `unreadable_state` | a state ConfigMap whose `state.json` is cut off mid-document |
//! | `invalid_state` | a state whose recorded head is `not a sha` |
//! | `failed_delivery` | a consistent task whose PR's `pull_request.opened` delivery failed to connect (FakeGitHub's webhook held, the delivery failed) |
//!
//! Two rows are bounded per cycle by design, and the mix keeps within the
//! defaults rather than raise them: head drift reads at most
//! `head_checks_per_cycle` (100) pull requests a cycle (GitHub's rate
//! limit), and at most `redelivery.per_cycle` (20) deliveries are
//! redelivered a cycle. So `head_drift` gets at most 100 tasks — the first
//! ones listed, which the round robin reads first — and `failed_delivery`
//! at most 20; the other eight rows share the rest evenly, spread over the
//! namespace.
//!
//! # The measurement
//!
//! The parent process runs the fakes and judges the world; the reconciler
//! and the coordinator it hands work to run in a child process (this
//! example, re-executed as `RECOVERY_BENCH_ROLE=controller`), so that the
//! memory measured is the controller's alone, not the fakes' 40 000 stored
//! objects. The child builds the production stack over HTTP — `ConfigMapBackend`,
//! `KubeLeases`, `KubeCodeRuns`, label-cas's `GitHubLabels` and pull
//! requests (the reconciler with a token of its own), `GitHubAppDeliveries`
//! with the App's JWT, a Kubernetes Event recorder — runs one
//! `run_cycle`, and only then starts the coordinator's workers, so that
//! every call counted during the cycle is the reconciler's.
//!
//! Keys of each JSON line (one per size, on stdout):
//!
//! - `objects`: objects seeded into FakeKube (ConfigMaps, Leases, CodeRuns,
//!   pods); `tasks`: tasks in the namespace.
//! - `inconsistencies`: inconsistencies seeded (one per inconsistent task,
//!   plus the failed deliveries).
//! - `repaired`: inconsistencies the world shows repaired once the
//!   coordinator finished what the cycle handed it, judged in FakeKube's
//!   store and FakeGitHub's, never from the cycle's report: the old head's
//!   run and its pod gone and the state settled (`head_drift` also: the new
//!   head recorded; `pending_supersession`: nothing pending;
//!   `abandoned_journal`: the journal closed), the labels at the target
//!   with the history noting the repair, the orphaned Lease deleted, a
//!   redelivery of the failed delivery's GUID in GitHub's delivery log.
//! - `repaired_in_cycle`: the same judgement right after the cycle, before
//!   the coordinator's workers start (what the reconciler did itself; a
//!   handed head drift counts once its new head is recorded).
//! - `flagged`: inconsistent tasks whose state ConfigMap carries
//!   `supersede.dev/needs-intervention` for their row — the run still held
//!   by its finalizer and annotated, the unreadable state rebuilt with its
//!   raw payload quarantined, the invalid state's payload left as it was.
//! - `missed`: `inconsistencies - repaired - flagged`.
//! - `collateral`: objects that should have been left alone and were not —
//!   the state, Lease or run of a consistent task written or deleted, a
//!   new head's run of an inconsistent task touched, a task flagged that
//!   should not be. Target 0.
//! - `handed`: findings the cycle's report says it handed to the coordinator.
//! - `cycle_seconds`: wall time of `run_cycle`, measured in the child.
//! - `converged_seconds`: from the cycle's start until the coordinator had
//!   nothing running or waiting (its workers start when the cycle returns;
//!   in production they run during it).
//! - `kube_calls`, `github_calls`: requests FakeKube and FakeGitHub counted
//!   (testkit's call counters) from the cycle's start to its end;
//!   `list_pages`: the LISTs of ConfigMaps, Leases and CodeRuns among them,
//!   against `list_pages_expected`, one page per 500 objects of each kind.
//!   The calls by verb go to stderr, and so does the cycle's request
//!   timeline (when each kind of request came, from FakeKube's request
//!   log): where the cycle's time goes.
//! - `converge_kube_calls`, `converge_github_calls`: the same, from the
//!   cycle's end until the coordinator was done.
//! - `rss_mb_before`: the child's resident memory with everything built,
//!   before the cycle; `rss_mb`: its peak during the cycle (`VmHWM`, reset
//!   before the cycle through `/proc/self/clear_refs`); `rss_mb_converged`:
//!   its peak while the coordinator worked.
//!
//! FakeGitHub's rate limit is raised to 100 000 requests an hour per token
//! so that the coordinator's convergence (about three GitHub calls per
//! handed task) is not cut off; the reconciler's own `github_calls` are
//! reported against GitHub's real 5 000.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cancel_coordinator::workloads::{
    ANNOTATION_CANCEL_OPERATION, ANNOTATION_NEEDS_INTERVENTION as RUN_NEEDS_INTERVENTION,
    ANNOTATION_SUPERSEDED_AT, ANNOTATION_SUPERSEDED_BY, LABEL_CODE_RUN,
};
use cancel_coordinator::{
    AgentSpec, CancellationCoordinator, CodeRun, CodeRunConfig, CodeRunSpec, CoordinatorConfig,
    KubeCodeRuns, METADATA_PULL_REQUEST, StateAwareCancellation,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::{CustomResourceExt, Resource, ResourceExt};
use label_cas::GitHubLabels;
use lease_lock::{FencingToken, KubeLeases, Lease, LeaseLock, LeaseSpec, LockConfig};
use recovery::{
    ANNOTATION_NEEDS_INTERVENTION, Action, GitHubAppDeliveries, Kind, RecoveryConfig,
    RecoveryManager,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;
use state_store::naming::{KEY_STATE, KEY_STATE_CORRUPT, state_labels};
use state_store::{
    CancellationOutcome, CancellationRecord, Clock, ConfigMapBackend, Document, MemoryBackend,
    OperationJournal, OperationKind, RemediationState, StateBackend, StateStore, StoreConfig,
    Supersession, TaskStatus,
};
use testkit::calls::CallKey;
use testkit::faults::Match;
use testkit::github::{FakeGitHub, TEST_APP_PRIVATE_KEY_PEM, WebhookConfig};
use testkit::kube::FakeKube;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

const NS: &str = "default";
const OLD: &str = "1111111111111111111111111111111111111111";
const NEW: &str = "2222222222222222222222222222222222222222";
const OWNER: &str = "acme";
const REPO: &str = "widgets";
const RECOVERY_TOKEN: &str = "recovery-token";
const COORDINATOR_TOKEN: &str = "coordinator-token";
/// The foreign finalizer that holds the `run_held_by_finalizer` rows' runs.
const FOREIGN_FINALIZER: &str = "example.dev/audit";
/// Marks the runs deleted before the measurement (one DELETECOLLECTION).
const LABEL_HELD: &str = "bench.supersede.dev/held";
/// Events FakeKube keeps per kind (see [`World::seed`]).
const WATCH_HISTORY: usize = 50_000;
/// Objects per LIST page (`RecoveryConfig::page_size`'s default).
const PAGE: u64 = 500;

/// Every row of the decision table the bench seeds, in the order the
/// bounded ones (head drift, failed deliveries) are filled first.
fn all_rows() -> Vec<Kind> {
    let mut rows = Kind::ALL.to_vec();
    rows.sort_by_key(|k| !matches!(k, Kind::HeadDrift | Kind::FailedDelivery));
    rows
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var("RECOVERY_BENCH_ROLE").as_deref() == Ok("controller") {
        controller::run().await;
        return;
    }
    let tasks = env_usize("RECOVERY_BENCH_TASKS", 10_000);
    let latency = Duration::from_millis(env_usize("RECOVERY_BENCH_LATENCY_MS", 2) as u64);
    let sizes: Vec<usize> = std::env::var("RECOVERY_BENCH_SIZES")
        .unwrap_or_else(|_| "100,1000,10000".to_owned())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("RECOVERY_BENCH_SIZES: numbers, comma-separated")
        })
        .collect();
    for size in sizes {
        let line = run_size(tasks, size, latency).await;
        println!("{}", serde_json::to_string(&line).unwrap());
    }
}

/// One JSON line (field order as printed).
#[derive(Serialize)]
struct Line {
    objects: usize,
    inconsistencies: usize,
    repaired: usize,
    flagged: usize,
    cycle_seconds: f64,
    kube_calls: u64,
    github_calls: u64,
    rss_mb: f64,
    tasks: usize,
    missed: usize,
    collateral: usize,
    handed: usize,
    repaired_in_cycle: usize,
    converged_seconds: f64,
    list_pages: u64,
    list_pages_expected: u64,
    converge_kube_calls: u64,
    converge_github_calls: u64,
    rss_mb_before: f64,
    rss_mb_converged: f64,
}

async fn run_size(tasks: usize, size: usize, latency: Duration) -> Line {
    let mix = Mix::new(tasks, size);
    eprintln!(
        "--- {size} inconsistencies in {tasks} tasks: {}",
        mix.describe()
    );
    let seeding = Instant::now();
    let world = World::seed(tasks, &mix).await;
    eprintln!(
        "seeded {} objects in FakeKube and {} pull requests in FakeGitHub in {:.1} s",
        world.objects,
        tasks,
        seeding.elapsed().as_secs_f64()
    );
    world
        .kube
        .faults()
        .latency(Match::any(), latency, Duration::ZERO);
    world
        .github
        .faults()
        .latency(Match::any(), latency, Duration::ZERO);

    let mut controller = Controller::spawn(&world);
    let ready: controller::Ready = controller.read().await;
    let (kube_before, github_before) = (
        world.kube.calls().snapshot(),
        world.github.calls().snapshot(),
    );
    let log_before = world.kube.requests().last_seq();
    controller.send("cycle").await;
    let cycle: controller::CycleDone = controller.read().await;
    let (kube_cycle, github_cycle) = (
        world.kube.calls().snapshot(),
        world.github.calls().snapshot(),
    );
    eprintln!(
        "cycle's FakeKube calls over time: {}",
        timeline(&world.kube.requests().since(log_before))
    );
    let in_cycle = world.judge();
    controller.send("converge").await;
    let converged: controller::Converged = controller.read().await;
    let (kube_after, github_after) = (
        world.kube.calls().snapshot(),
        world.github.calls().snapshot(),
    );
    let after = world.judge();
    controller.send("exit").await;
    controller.wait().await;

    let kube_calls = delta(&kube_before, &kube_cycle);
    let github_calls = delta(&github_before, &github_cycle);
    eprintln!("cycle's FakeKube calls: {}", by_verb(&kube_calls));
    eprintln!("cycle's FakeGitHub calls: {}", by_verb(&github_calls));
    let converge_kube = delta(&kube_cycle, &kube_after);
    let converge_github = delta(&github_cycle, &github_after);
    eprintln!("convergence's FakeKube calls: {}", by_verb(&converge_kube));
    eprintln!(
        "convergence's FakeGitHub calls: {}",
        by_verb(&converge_github)
    );
    let list_pages: u64 = kube_calls
        .iter()
        .filter(|(k, _)| {
            k.verb == "list" && ["configmaps", "leases", "coderuns"].contains(&k.resource.as_str())
        })
        .map(|(_, n)| n)
        .sum();
    let list_pages_expected = [world.states, world.leases, world.runs]
        .iter()
        .map(|n| (*n as u64).div_ceil(PAGE).max(1))
        .sum();
    eprintln!("world right after the cycle: {in_cycle}");
    eprintln!("world once the coordinator was done: {after}");
    if !converged.converged {
        eprintln!(
            "the coordinator did not finish within the timeout: {} tasks still active",
            converged.active_left
        );
    }
    let inconsistencies = mix.total();
    let (repaired, flagged) = (after.repaired(), after.flagged());
    Line {
        objects: world.objects,
        inconsistencies,
        repaired,
        flagged,
        cycle_seconds: round(cycle.seconds, 3),
        kube_calls: kube_calls.values().sum(),
        github_calls: github_calls.values().sum(),
        rss_mb: mb(cycle.rss_hwm_kb),
        tasks,
        missed: inconsistencies.saturating_sub(repaired + flagged),
        collateral: after.collateral,
        handed: cycle.handed,
        repaired_in_cycle: in_cycle.repaired_by_cycle(),
        converged_seconds: round(cycle.seconds + converged.seconds_after_cycle, 3),
        list_pages,
        list_pages_expected,
        converge_kube_calls: converge_kube.values().sum(),
        converge_github_calls: converge_github.values().sum(),
        rss_mb_before: mb(ready.rss_kb),
        rss_mb_converged: mb(converged.rss_hwm_kb),
    }
}

// ----- the mix -----------------------------------------------------------------

/// How many of each row, and which task is which.
struct Mix {
    /// Row of each task (`None`: consistent), by task index.
    rows: Vec<Option<Kind>>,
    counts: BTreeMap<Kind, usize>,
}

impl Mix {
    fn new(tasks: usize, size: usize) -> Self {
        let config = RecoveryConfig::default();
        let caps = |kind| match kind {
            Kind::HeadDrift => config.head_checks_per_cycle,
            Kind::FailedDelivery => config.redelivery.per_cycle,
            _ => usize::MAX,
        };
        // Equal shares, the bounded rows capped and their rest spread over
        // the others.
        let mut counts: BTreeMap<Kind, usize> = BTreeMap::new();
        let mut left = size;
        let mut open: Vec<Kind> = all_rows();
        while left > 0 && !open.is_empty() {
            let share = left.div_ceil(open.len());
            let mut next = Vec::new();
            for kind in open {
                let have = counts.entry(kind).or_default();
                let room = caps(kind) - *have;
                let take = share.min(room).min(left);
                *have += take;
                left -= take;
                if caps(kind) > *have {
                    next.push(kind);
                }
            }
            open = next;
        }
        let on_tasks = size - counts[&Kind::FailedDelivery];
        assert!(
            on_tasks <= tasks,
            "{size} inconsistencies need {on_tasks} tasks; RECOVERY_BENCH_TASKS is {tasks}"
        );
        // Head drift on the first tasks (read first by the round robin); the
        // rest interleaved row by row and spread evenly over the others.
        let mut rows = vec![None; tasks];
        let drift = counts[&Kind::HeadDrift];
        for row in rows.iter_mut().take(drift) {
            *row = Some(Kind::HeadDrift);
        }
        let mut sequence = Vec::new();
        let mut remaining: Vec<(Kind, usize)> = all_rows()
            .into_iter()
            .filter(|k| *k != Kind::HeadDrift)
            .map(|k| (k, counts[&k]))
            .collect();
        while remaining.iter().any(|(_, n)| *n > 0) {
            for (kind, n) in &mut remaining {
                if *n > 0 {
                    *n -= 1;
                    sequence.push(*kind);
                }
            }
        }
        let span = tasks - drift;
        let m = sequence.len();
        for (k, kind) in sequence.into_iter().enumerate() {
            rows[drift + k * span / m.max(1)] = Some(kind);
        }
        Self { rows, counts }
    }

    fn total(&self) -> usize {
        self.counts.values().sum()
    }

    fn describe(&self) -> String {
        self.counts
            .iter()
            .map(|(k, n)| format!("{} {n}", k.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ----- the world -----------------------------------------------------------------

/// One task as seeded, and what must become of it.
struct Task {
    id: String,
    row: Option<Kind>,
    pr: u64,
    /// The old head's run (the one to cancel), if the row has one.
    stale_run: Option<String>,
    /// Objects that must stay as seeded: (resource, name, resourceVersion).
    kept: Vec<(&'static str, String, String)>,
    /// The raw payload of a state written by hand.
    raw_state: Option<String>,
}

struct World {
    kube: FakeKube,
    github: FakeGitHub,
    tasks: Vec<Task>,
    /// GUIDs of the failed deliveries.
    failed_guids: Vec<String>,
    objects: usize,
    states: usize,
    leases: usize,
    runs: usize,
}

impl World {
    async fn seed(count: usize, mix: &Mix) -> Self {
        let kube = FakeKube::builder()
            .crd(CodeRun::crd())
            // LIST snapshots are rebuilt from each kind's history; at the
            // default (4 096 events) a cycle's own writes expire its
            // continue token long before etcd would compact it (5 min).
            .watch_history(WATCH_HISTORY)
            .start()
            .await
            .unwrap();
        let github = FakeGitHub::builder()
            .token(COORDINATOR_TOKEN)
            .token(RECOVERY_TOKEN)
            .rate_limit(100_000)
            .start()
            .await
            .unwrap();
        let now = Timestamp::now();
        let mut tasks: Vec<Task> = (0..count)
            .map(|i| Task {
                id: format!("t{i:05}"),
                row: mix.rows[i],
                pr: i as u64 + 1,
                stale_run: None,
                kept: Vec::new(),
                raw_state: None,
            })
            .collect();

        // Pull requests: a failed delivery's is opened once the webhook is
        // configured and held, the others before (no delivery at all).
        let labels_of = |row: Option<Kind>| match row {
            Some(
                Kind::HeadDrift
                | Kind::PendingSupersession
                | Kind::AbandonedJournal
                | Kind::StaleRunAlive
                | Kind::LabelsNotMoved,
            ) => vec!["ready-for-qa"],
            _ => vec![],
        };
        let head_on_github = |row: Option<Kind>| match row {
            Some(
                Kind::PendingSupersession
                | Kind::AbandonedJournal
                | Kind::StaleRunAlive
                | Kind::RunHeldByFinalizer
                | Kind::LabelsNotMoved,
            ) => NEW,
            _ => OLD,
        };
        for task in tasks.iter().filter(|t| t.row != Some(Kind::FailedDelivery)) {
            let branch = format!("task-{}-fix", task.id);
            github
                .add_pull(
                    OWNER,
                    REPO,
                    task.pr,
                    head_on_github(task.row),
                    &branch,
                    labels_of(task.row),
                )
                .unwrap();
            if task.row == Some(Kind::HeadDrift) {
                // Someone pushed the new head; no webhook told the sensor
                // (none is configured yet). The push stamps `updated_at`.
                github.set_pull_head(OWNER, REPO, task.pr, NEW).unwrap();
            }
        }
        // Nobody listens there: with the webhook held, nothing is sent.
        let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/webhook/github", nowhere.local_addr().unwrap());
        drop(nowhere);
        let hooks = github.webhooks();
        hooks
            .configure(WebhookConfig::new(url.parse().unwrap()))
            .unwrap();
        hooks.hold();
        let mut failed_guids = Vec::new();
        for task in tasks.iter().filter(|t| t.row == Some(Kind::FailedDelivery)) {
            let branch = format!("task-{}-fix", task.id);
            for id in github
                .add_pull(OWNER, REPO, task.pr, OLD, &branch, Vec::<&str>::new())
                .unwrap()
            {
                hooks.fail(id).unwrap();
                failed_guids.push(hooks.delivery(id).unwrap().guid);
            }
        }

        // Leases: held by live holders, dead for the rows that need it, none
        // where the coordinator or a label repair must take the lock.
        let leases: Vec<Lease> = tasks
            .iter()
            .filter_map(|t| {
                let lease = |holder: &str, renewed: Timestamp, seconds: i32| {
                    task_lease(&t.id, holder, renewed, seconds)
                };
                match t.row {
                    Some(Kind::AbandonedJournal | Kind::OrphanedLease) => Some(lease(
                        "dead-pod/1",
                        now - SignedDuration::from_secs(120),
                        30,
                    )),
                    Some(
                        Kind::HeadDrift
                        | Kind::PendingSupersession
                        | Kind::StaleRunAlive
                        | Kind::LabelsNotMoved,
                    ) => None,
                    _ => Some(lease(&format!("live-pod/{}", t.id), now, 3600)),
                }
            })
            .collect();
        let lease_count = kube.seed(leases).unwrap();

        // States, as state-store writes them (its own encoder, over a memory
        // backend, on a clock ten minutes behind), or by hand.
        let clock = Clock::tokio_anchored(now - SignedDuration::from_mins(10));
        let states = Arc::new(MemoryBackend::new());
        let store = StateStore::with_clock(states.clone(), StoreConfig::default(), clock.clone());
        let mut hand_written = Vec::new();
        for task in &mut tasks {
            let pr = format!("{OWNER}/{REPO}#{}", task.pr);
            let id = task.id.clone();
            match task.row {
                Some(Kind::UnreadableState) => {
                    let raw = format!(
                        r#"{{"version":"v1","task_id":"{id}","iteration":3,"status":"InProgress","metadata":{{"{METADATA_PULL_REQUEST}":"{pr}"}},"feedback_his"#
                    );
                    hand_written.push((id.clone(), raw.clone()));
                    task.raw_state = Some(raw);
                    continue;
                }
                Some(Kind::InvalidState) => {
                    let raw = format!(
                        r#"{{"version":"v1","task_id":"{id}","status":"InProgress","metadata":{{"{METADATA_PULL_REQUEST}":"{pr}"}},"latest_head":{{"sha":"not a sha","pushed_at":"2026-01-01T00:00:00Z","delivery_id":"d"}}}}"#
                    );
                    hand_written.push((id.clone(), raw.clone()));
                    task.raw_state = Some(raw);
                    continue;
                }
                _ => {}
            }
            let (head, pushed) = match task.row {
                Some(Kind::StaleRunAlive | Kind::RunHeldByFinalizer | Kind::LabelsNotMoved) => {
                    (NEW, clock.now() - SignedDuration::from_mins(2))
                }
                _ => (OLD, clock.now() - SignedDuration::from_mins(50)),
            };
            store
                .update(&id, |s| {
                    s.observe_head(&push(head, pushed));
                    s.settle_supersessions_through(head, pushed);
                    s.status = TaskStatus::InProgress;
                    s.metadata.insert(METADATA_PULL_REQUEST.into(), pr.clone());
                    Ok::<_, state_store::Error>(())
                })
                .await
                .unwrap();
            match task.row {
                Some(Kind::PendingSupersession | Kind::AbandonedJournal) => {
                    let at = clock.now() - SignedDuration::from_mins(1);
                    store
                        .record_supersession(&id, &push(NEW, at))
                        .await
                        .unwrap();
                }
                Some(Kind::LabelsNotMoved) => {
                    let record = CancellationRecord {
                        operation_id: format!("op-{id}"),
                        at: clock.now(),
                        new_head_sha: NEW.into(),
                        targets: vec![format!("{id}-quality-old")],
                        superseded_heads: vec![OLD.into()],
                        started_at: Some(clock.now() - SignedDuration::from_secs(1)),
                        finished_at: Some(clock.now()),
                        outcome: CancellationOutcome::Cancelled,
                        correlation_id: None,
                        detail: Some(format!(
                            "{id}-quality-old: sigterm in 900 ms; labels: failed (rate limited)"
                        )),
                    };
                    store
                        .update(&id, |s| {
                            s.record_cancellation(record.clone());
                            Ok::<_, state_store::Error>(())
                        })
                        .await
                        .unwrap();
                }
                _ => {}
            }
            if task.row == Some(Kind::AbandonedJournal) {
                let lease = kube
                    .peek::<Lease>(NS, &format!("cancel-task-{id}"))
                    .unwrap();
                let token = FencingToken::new(
                    lease.metadata.uid.clone().unwrap(),
                    lease.metadata.creation_timestamp.clone().unwrap().0,
                    1,
                );
                let mut journal = OperationJournal::begin(
                    format!("op-dead-{id}"),
                    OperationKind::Cancellation,
                    "dead-pod/1",
                    clock.now(),
                );
                journal.fencing_token = Some(token);
                journal.targets = vec![format!("{id}-quality-old")];
                journal.context.insert("keep_head".into(), NEW.into());
                journal.context.insert("pr".into(), pr.clone());
                store.begin_operation(&id, journal).await.unwrap();
            }
        }
        let mut config_maps: Vec<ConfigMap> = states
            .list(&BTreeMap::new())
            .await
            .unwrap()
            .into_iter()
            .map(|d| config_map(&d.name, d.document))
            .collect();
        for (id, raw) in hand_written {
            let document = Document {
                labels: state_labels(&id),
                data: [(KEY_STATE.to_owned(), raw)].into(),
                ..Document::default()
            };
            config_maps.push(config_map(&format!("task-{id}-state"), document));
        }
        drop(store);
        let state_count = kube.seed(config_maps).unwrap();

        // Runs: the task's current run, and for the rows that have one the
        // old head's run (with a pod where it must still be running).
        let ago_5_min = (now - SignedDuration::from_mins(5)).to_string();
        let mut runs = Vec::new();
        for task in &mut tasks {
            let id = &task.id;
            let run = |suffix: &str, head: &str| {
                let spec = CodeRunSpec {
                    task_id: id.clone(),
                    role: "quality".into(),
                    repository: format!("{OWNER}/{REPO}"),
                    pull_request: task.pr,
                    branch: format!("task-{id}-fix"),
                    head_sha: head.into(),
                    agent: AgentSpec {
                        image: "agent:1".into(),
                        ..AgentSpec::default()
                    },
                };
                CodeRun::labelled(&format!("{id}-quality-{suffix}"), spec)
            };
            match task.row {
                Some(
                    Kind::HeadDrift
                    | Kind::PendingSupersession
                    | Kind::AbandonedJournal
                    | Kind::StaleRunAlive
                    | Kind::RunHeldByFinalizer,
                ) => {
                    let mut stale = run("old", OLD);
                    if matches!(
                        task.row,
                        Some(Kind::StaleRunAlive | Kind::RunHeldByFinalizer)
                    ) {
                        stale.metadata.annotations = Some(
                            [
                                (ANNOTATION_SUPERSEDED_BY.to_owned(), NEW.to_owned()),
                                (ANNOTATION_SUPERSEDED_AT.to_owned(), ago_5_min.clone()),
                                (
                                    ANNOTATION_CANCEL_OPERATION.to_owned(),
                                    format!("op-gone-{id}"),
                                ),
                            ]
                            .into(),
                        );
                    }
                    if task.row == Some(Kind::RunHeldByFinalizer) {
                        stale.metadata.finalizers = Some(vec![FOREIGN_FINALIZER.to_owned()]);
                        stale
                            .metadata
                            .labels
                            .get_or_insert_default()
                            .insert(LABEL_HELD.to_owned(), "true".to_owned());
                    }
                    task.stale_run = Some(stale.name_any());
                    runs.push(stale);
                    runs.push(run("new", NEW));
                }
                Some(Kind::LabelsNotMoved) => runs.push(run("new", NEW)),
                _ => runs.push(run("now", OLD)),
            }
        }
        let run_count = kube.seed(runs).unwrap();
        let pods: Vec<Pod> = tasks
            .iter()
            .filter(|t| t.row != Some(Kind::RunHeldByFinalizer))
            .filter_map(|t| t.stale_run.as_deref())
            .map(|name| pod_of(&kube.peek::<CodeRun>(NS, name).unwrap()))
            .collect();
        let pod_count = kube.seed(pods).unwrap();
        // The held runs were deleted by their (dead) cancellation: one
        // request, before anything is measured.
        let runs_api: Api<CodeRun> = Api::namespaced(kube.client(), NS);
        runs_api
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(&format!("{LABEL_HELD}=true")),
            )
            .await
            .unwrap();

        // What must stay as it is: every object of a consistent task (and of
        // a failed delivery's or an orphaned Lease's, but that Lease), and
        // the new head's run of every inconsistent one.
        for task in &mut tasks {
            let id = task.id.clone();
            let state = format!("task-{id}-state");
            let lease = format!("cancel-task-{id}");
            let mut keep = |resource: &'static str, name: String, rv: Option<String>| {
                if let Some(rv) = rv {
                    task.kept.push((resource, name, rv));
                }
            };
            let rv_cm = kube
                .peek::<ConfigMap>(NS, &state)
                .and_then(|o| o.metadata.resource_version);
            let rv_lease = kube
                .peek::<Lease>(NS, &lease)
                .and_then(|o| o.metadata.resource_version);
            let run_rv = |name: &str| {
                kube.peek::<CodeRun>(NS, name)
                    .and_then(|o| o.metadata.resource_version)
            };
            match task.row {
                None | Some(Kind::FailedDelivery) => {
                    keep("configmaps", state, rv_cm);
                    keep("leases", lease, rv_lease);
                    let now_run = format!("{id}-quality-now");
                    let rv = run_rv(&now_run);
                    keep("coderuns", now_run, rv);
                }
                Some(Kind::OrphanedLease) => {
                    keep("configmaps", state, rv_cm);
                    let now_run = format!("{id}-quality-now");
                    let rv = run_rv(&now_run);
                    keep("coderuns", now_run, rv);
                }
                Some(Kind::UnreadableState | Kind::InvalidState) => {
                    keep("leases", lease, rv_lease);
                    let now_run = format!("{id}-quality-now");
                    let rv = run_rv(&now_run);
                    keep("coderuns", now_run, rv);
                }
                Some(_) => {
                    let new_run = format!("{id}-quality-new");
                    let rv = run_rv(&new_run);
                    keep("coderuns", new_run, rv);
                }
            }
        }
        Self {
            kube,
            github,
            tasks,
            failed_guids,
            objects: lease_count + state_count + run_count + pod_count,
            states: state_count,
            leases: lease_count,
            runs: run_count,
        }
    }

    /// The world as FakeKube and FakeGitHub store it, per row.
    fn judge(&self) -> Judged {
        let mut judged = Judged::default();
        let redelivered: std::collections::BTreeSet<String> = self
            .github
            .webhooks()
            .deliveries()
            .into_iter()
            .filter(|d| d.redelivery)
            .map(|d| d.guid)
            .collect();
        let seen = self
            .failed_guids
            .iter()
            .filter(|g| redelivered.contains(*g))
            .count();
        let row = judged.rows.entry(Kind::FailedDelivery).or_default();
        row.seeded = self.failed_guids.len();
        row.repaired = seen;

        for task in &self.tasks {
            let state_name = format!("task-{}-state", task.id);
            let cm = self.kube.peek::<ConfigMap>(NS, &state_name);
            let flag = cm
                .as_ref()
                .and_then(|c| c.annotations().get(ANNOTATION_NEEDS_INTERVENTION).cloned());
            let state: Option<RemediationState> = cm
                .as_ref()
                .and_then(|c| c.data.as_ref()?.get(KEY_STATE).cloned())
                .and_then(|text| serde_json::from_str(&text).ok());
            for (resource, name, rv) in &task.kept {
                let now = match *resource {
                    "configmaps" => self
                        .kube
                        .peek::<ConfigMap>(NS, name)
                        .map(|o| o.resource_version()),
                    "leases" => self
                        .kube
                        .peek::<Lease>(NS, name)
                        .map(|o| o.resource_version()),
                    _ => self
                        .kube
                        .peek::<CodeRun>(NS, name)
                        .map(|o| o.resource_version()),
                };
                if now.flatten().as_ref() != Some(rv) {
                    judged.collateral += 1;
                }
            }
            let Some(kind) = task.row.filter(|k| *k != Kind::FailedDelivery) else {
                if flag.is_some() {
                    judged.collateral += 1;
                }
                continue;
            };
            let flagged_for = |kind: Kind| {
                flag.as_deref()
                    .is_some_and(|f| f.starts_with(&format!("{}: ", kind.as_str())))
            };
            if flag.is_some() && !flagged_for(kind) {
                judged.collateral += 1;
            }
            let stale_gone = task.stale_run.as_deref().is_some_and(|run| {
                self.kube.peek::<CodeRun>(NS, run).is_none()
                    && self.kube.peek::<Pod>(NS, &format!("{run}-pod")).is_none()
            });
            let head_new = state
                .as_ref()
                .and_then(|s| s.latest_head.as_ref())
                .is_some_and(|h| h.sha == NEW);
            let row = judged.rows.entry(kind).or_default();
            row.seeded += 1;
            match kind {
                Kind::HeadDrift => {
                    // Recorded by the cycle; the old run is the coordinator's.
                    row.recorded += usize::from(head_new);
                    row.repaired += usize::from(head_new && stale_gone);
                }
                Kind::PendingSupersession => {
                    let settled = state
                        .as_ref()
                        .is_some_and(|s| s.pending_supersessions.is_empty());
                    row.repaired += usize::from(stale_gone && settled);
                }
                Kind::AbandonedJournal => {
                    let closed = state.as_ref().is_some_and(|s| s.active_operation.is_none());
                    row.repaired += usize::from(stale_gone && closed);
                }
                Kind::StaleRunAlive => row.repaired += usize::from(stale_gone),
                Kind::RunHeldByFinalizer => {
                    let run = task
                        .stale_run
                        .as_deref()
                        .and_then(|r| self.kube.peek::<CodeRun>(NS, r));
                    let held = run.as_ref().is_some_and(|r| {
                        r.metadata.deletion_timestamp.is_some()
                            && r.finalizers().contains(&FOREIGN_FINALIZER.to_owned())
                            && r.annotations().contains_key(RUN_NEEDS_INTERVENTION)
                    });
                    row.flagged += usize::from(held && flagged_for(kind));
                }
                Kind::LabelsNotMoved => {
                    let labels = self.github.labels(OWNER, REPO, task.pr);
                    let noted = state.as_ref().is_some_and(|s| {
                        s.cancellation_history
                            .last()
                            .and_then(|r| r.detail.as_deref())
                            .is_some_and(|d| d.contains("labels: moved by recovery"))
                    });
                    row.repaired += usize::from(labels == ["needs-qa"] && noted);
                }
                Kind::OrphanedLease => {
                    let gone = self
                        .kube
                        .peek::<Lease>(NS, &format!("cancel-task-{}", task.id))
                        .is_none();
                    row.repaired += usize::from(gone);
                }
                Kind::UnreadableState => {
                    let data = cm.as_ref().and_then(|c| c.data.clone()).unwrap_or_default();
                    let quarantined = data.get(KEY_STATE_CORRUPT) == task.raw_state.as_ref();
                    row.flagged += usize::from(quarantined && state.is_some() && flagged_for(kind));
                }
                Kind::InvalidState => {
                    let data = cm.as_ref().and_then(|c| c.data.clone()).unwrap_or_default();
                    let untouched = data.get(KEY_STATE) == task.raw_state.as_ref();
                    row.flagged += usize::from(untouched && flagged_for(kind));
                }
                Kind::FailedDelivery => {}
            }
        }
        judged
    }
}

/// What [`World::judge`] found.
#[derive(Default)]
struct Judged {
    rows: BTreeMap<Kind, RowJudged>,
    collateral: usize,
}

#[derive(Default)]
struct RowJudged {
    seeded: usize,
    repaired: usize,
    flagged: usize,
    /// Head drift only: the new head recorded.
    recorded: usize,
}

impl Judged {
    fn repaired(&self) -> usize {
        self.rows.values().map(|r| r.repaired).sum()
    }

    /// As [`repaired`](Self::repaired), a head drift counting once its new
    /// head is recorded (the cycle's part; its old run is the coordinator's).
    fn repaired_by_cycle(&self) -> usize {
        self.rows
            .iter()
            .map(|(kind, r)| {
                if *kind == Kind::HeadDrift {
                    r.recorded
                } else {
                    r.repaired
                }
            })
            .sum()
    }

    fn flagged(&self) -> usize {
        self.rows.values().map(|r| r.flagged).sum()
    }
}

impl std::fmt::Display for Judged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (kind, r) in &self.rows {
            write!(
                f,
                "{} {}/{}",
                kind.as_str(),
                r.repaired + r.flagged,
                r.seeded
            )?;
            if *kind == Kind::HeadDrift {
                write!(f, " (new head recorded {})", r.recorded)?;
            }
            f.write_str(", ")?;
        }
        write!(f, "collateral {}", self.collateral)
    }
}

// ----- the controller process ------------------------------------------------------

/// The child process: the reconciler and its coordinator.
struct Controller {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Controller {
    fn spawn(world: &World) -> Self {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .env("RECOVERY_BENCH_ROLE", "controller")
            .env("RECOVERY_BENCH_KUBE_URL", world.kube.url().as_str())
            .env("RECOVERY_BENCH_GITHUB_URL", world.github.url().as_str())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            lines,
        }
    }

    async fn send(&mut self, command: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn read<T: for<'de> Deserialize<'de>>(&mut self) -> T {
        let line = self
            .lines
            .next_line()
            .await
            .unwrap()
            .expect("the controller process ended early");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    async fn wait(mut self) {
        drop(self.stdin);
        let status = self.child.wait().await.unwrap();
        assert!(status.success(), "the controller process failed: {status}");
    }
}

mod controller {
    //! The child: builds the production stack over HTTP, answers the
    //! parent's commands (`cycle`, `converge`, `exit`) one JSON line each.

    use super::*;
    use testkit::process::own_memory;

    #[derive(Serialize, Deserialize)]
    pub(super) struct Ready {
        pub rss_kb: u64,
    }

    #[derive(Serialize, Deserialize)]
    pub(super) struct CycleDone {
        pub seconds: f64,
        pub handed: usize,
        pub rss_hwm_kb: u64,
    }

    #[derive(Serialize, Deserialize)]
    pub(super) struct Converged {
        pub seconds_after_cycle: f64,
        pub converged: bool,
        pub active_left: usize,
        pub rss_hwm_kb: u64,
    }

    pub(super) async fn run() {
        testkit::kube::ensure_crypto_provider();
        let kube_url = std::env::var("RECOVERY_BENCH_KUBE_URL").unwrap();
        let github_url = std::env::var("RECOVERY_BENCH_GITHUB_URL").unwrap();
        let client = |who: &str| {
            let mut config = kube::Config::new(kube_url.parse::<axum::http::Uri>().unwrap());
            config
                .headers
                .push(("audit-id".parse().unwrap(), who.parse().unwrap()));
            kube::Client::try_from(config).unwrap()
        };
        let store = |who: &str| StateStore::new(ConfigMapBackend::new(client(who), NS));
        let lock = |who: &str, identity: &str| {
            LeaseLock::new(
                KubeLeases::new(client(who)),
                LockConfig {
                    prefix: "cancel".into(),
                    ..LockConfig::new(identity, NS)
                },
            )
            .unwrap()
        };
        let workloads =
            |who: &str| KubeCodeRuns::new(client(who), NS, CodeRunConfig::default()).unwrap();
        let github = |token: &str| {
            Arc::new(
                GitHubLabels::builder()
                    .token(SecretString::from(token.to_owned()))
                    .base_uri(github_url.as_str())
                    .build()
                    .unwrap(),
            )
        };
        let coordinator_github = github(COORDINATOR_TOKEN);
        let saga = StateAwareCancellation::builder(
            lock("coordinator", "controller-0"),
            store("coordinator"),
            Arc::new(workloads("coordinator")),
            Arc::new(coordinator_github.pull_requests()),
            coordinator_github.clone(),
        )
        .build()
        .unwrap();
        let coordinator = CancellationCoordinator::new(saga, CoordinatorConfig::default()).unwrap();
        let recovery_github = github(RECOVERY_TOKEN);
        let recorder = Recorder::new(
            client("recovery"),
            Reporter {
                controller: "supersede-recovery".into(),
                instance: Some("controller-0".into()),
            },
        );
        let deliveries = GitHubAppDeliveries::new(
            WebhookConfig::DEFAULT_APP_ID,
            &SecretString::from(TEST_APP_PRIVATE_KEY_PEM),
            Some(github_url.as_str()),
        )
        .unwrap();
        let recovery = RecoveryManager::builder(
            store("recovery"),
            lock("recovery", "controller-0-recovery"),
            Arc::new(workloads("recovery")),
            coordinator.clone(),
        )
        .github(Arc::new(recovery_github.pull_requests()), recovery_github)
        .events(recorder, NS)
        .deliveries(Arc::new(deliveries))
        .config(RecoveryConfig::default())
        .build()
        .unwrap();

        let mut commands = BufReader::new(tokio::io::stdin()).lines();
        say(&Ready {
            rss_kb: own_memory().map_or(0, |m| m.rss_kb),
        });

        assert_eq!(next(&mut commands).await, "cycle");
        reset_peak();
        let started = Instant::now();
        let report = recovery.run_cycle().await.unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let mut summary: BTreeMap<String, usize> = BTreeMap::new();
        let mut reasons: BTreeMap<String, String> = BTreeMap::new();
        for finding in &report.findings {
            let (action, reason) = match &finding.action {
                Action::Handed => ("handed", None),
                Action::Repaired => ("repaired", None),
                Action::Flagged(_) => ("flagged", None),
                Action::Deferred(why) => ("deferred", Some(why)),
                Action::Failed(why) => ("failed", Some(why)),
            };
            let key = format!("{} {action}", finding.kind.as_str());
            *summary.entry(key.clone()).or_default() += 1;
            if let Some(why) = reason {
                reasons.entry(key).or_insert_with(|| why.clone());
            }
        }
        eprintln!(
            "cycle report: {} states, {} runs, {} leases, {} head checks, {} delivery pages, {} flagged tasks; findings: {}",
            report.states,
            report.runs,
            report.leases,
            report.head_checks,
            report.delivery_pages,
            report.flagged_tasks,
            json!(summary)
        );
        for (key, why) in reasons {
            eprintln!("  e.g. {key}: {why}");
        }
        say(&CycleDone {
            seconds,
            handed: summary
                .iter()
                .filter(|(k, _)| k.ends_with(" handed"))
                .map(|(_, n)| n)
                .sum(),
            rss_hwm_kb: own_memory().map_or(0, |m| m.peak_kb),
        });
        drop(report);

        assert_eq!(next(&mut commands).await, "converge");
        reset_peak();
        let started = Instant::now();
        let workers = coordinator.start();
        let timeout =
            Duration::from_secs(env_usize("RECOVERY_BENCH_CONVERGE_TIMEOUT_S", 300) as u64);
        let mut active = coordinator.list_active().len();
        while active > 0 && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
            active = coordinator.list_active().len();
        }
        say(&Converged {
            seconds_after_cycle: started.elapsed().as_secs_f64(),
            converged: active == 0,
            active_left: active,
            rss_hwm_kb: own_memory().map_or(0, |m| m.peak_kb),
        });

        let _ = next(&mut commands).await;
        workers.shutdown(Duration::from_secs(10)).await;
    }

    /// The parent's next command (empty once it closed our stdin).
    async fn next(commands: &mut tokio::io::Lines<BufReader<tokio::io::Stdin>>) -> String {
        commands.next_line().await.unwrap().unwrap_or_default()
    }

    fn say(message: &impl Serialize) {
        println!("{}", serde_json::to_string(message).unwrap());
    }

    /// Resets the peak resident set size (`VmHWM`) to the current one.
    fn reset_peak() {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
}

// ----- helpers -----------------------------------------------------------------------

fn push(head: &str, at: Timestamp) -> Supersession {
    Supersession {
        head_sha: head.into(),
        pushed_at: at,
        delivery_id: format!("d-{}", &head[..7]),
        correlation_id: None,
    }
}

/// The task lock's Lease of task `id`, held by `holder`, last renewed at
/// `renewed`, for `seconds`.
fn task_lease(id: &str, holder: &str, renewed: Timestamp, seconds: i32) -> Lease {
    let renewed = MicroTime(renewed);
    Lease {
        metadata: ObjectMeta {
            name: Some(format!("cancel-task-{id}")),
            namespace: Some(NS.into()),
            labels: Some(
                [
                    (
                        lease_lock::MANAGED_BY_LABEL.to_owned(),
                        lease_lock::MANAGED_BY_VALUE.to_owned(),
                    ),
                    (
                        lease_lock::LOCK_PREFIX_LABEL.to_owned(),
                        "cancel".to_owned(),
                    ),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(renewed.clone()),
            renew_time: Some(renewed),
            lease_transitions: Some(1),
            ..LeaseSpec::default()
        }),
    }
}

/// `document` as ConfigMap `name`, as `ConfigMapBackend` writes it.
fn config_map(name: &str, document: Document) -> ConfigMap {
    let non_empty = |m: BTreeMap<String, String>| (!m.is_empty()).then_some(m);
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NS.to_owned()),
            labels: non_empty(document.labels),
            annotations: non_empty(document.annotations),
            ..ObjectMeta::default()
        },
        data: non_empty(document.data),
        binary_data: (!document.binary_data.is_empty()).then(|| {
            document
                .binary_data
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect()
        }),
        immutable: None,
    }
}

/// The one pod of `run`, owned by it, running until SIGTERM, then stopping
/// at once.
fn pod_of(run: &CodeRun) -> Pod {
    let owner = OwnerReference {
        block_owner_deletion: Some(true),
        ..run.controller_owner_ref(&()).unwrap()
    };
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("{}-pod", run.name_any()),
            "namespace": NS,
            "labels": {
                LABEL_CODE_RUN: run.name_any(),
                "testkit.supersede.dev/starts-after": "0s",
                "testkit.supersede.dev/termination": "stops-after-0ms",
            },
            "ownerReferences": [owner],
        },
        "spec": {
            "containers": [{"name": "agent", "image": "agent:1"}],
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
        },
    }))
    .unwrap()
}

/// When each kind of request came, from the first request on: `verb
/// resource n (first s–last s)`, in order of first appearance.
fn timeline(records: &[testkit::kube::RequestRecord]) -> String {
    let Some(start) = records.first().map(|r| r.at) else {
        return String::new();
    };
    let mut spans: Vec<(String, usize, f64, f64)> = Vec::new();
    for r in records {
        let at = r.at.duration_since(start).as_secs_f64();
        let key = format!("{} {}", r.verb, r.resource);
        match spans.iter_mut().find(|(k, ..)| *k == key) {
            Some((_, n, _, last)) => {
                *n += 1;
                *last = at;
            }
            None => spans.push((key, 1, at, at)),
        }
    }
    spans
        .iter()
        .map(|(k, n, first, last)| format!("{k} {n} ({first:.1}–{last:.1} s)"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `after - before`, per counter.
fn delta(
    before: &BTreeMap<CallKey, u64>,
    after: &BTreeMap<CallKey, u64>,
) -> BTreeMap<CallKey, u64> {
    after
        .iter()
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn by_verb(calls: &BTreeMap<CallKey, u64>) -> String {
    calls
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{key} must be a number"))
        })
        .unwrap_or(default)
}

fn mb(kb: u64) -> f64 {
    round(kb as f64 / 1024.0, 1)
}

fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}
