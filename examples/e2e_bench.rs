//! The end-to-end benchmark: the whole flow (FakeGitHub's webhook sender ▸
//! sensor replicas behind a balancer ▸ task state ▸ coordinators ▸
//! CodeRuns, pods, kubelet and garbage collector ▸ label-cas) on testkit's
//! fakes over real HTTP, 2 ms of latency on every API call, agents that
//! stop as soon as they get SIGTERM.
//!
//! One JSON line per phase on stdout:
//!
//! - `steady`: 50 active tasks, 100 pushes (the seed's 100 pushes an hour,
//!   compressed 360×: one every 100 ms), two per task; one sensor replica
//!   and one controller replica.
//! - `burst`: 500 active tasks, 500 pushes (1 000 events: a `push` and a
//!   `pull_request.synchronize` each), the first 100 at five times the
//!   steady rate (one every 20 ms), the other 400 at once; three sensor
//!   replicas (each with its coordinator) and three controller replicas
//!   (coordinator workers, recovery on the elected leader).
//!
//! Keys: `events` (deliveries), `cancelled_runs` (in the final task states),
//! `lost_cancellations` (stale runs whose pod still exists),
//! `wrong_cancellations` (newest-head runs asked to be deleted or gone),
//! `e2e_p50_ms`/`e2e_p99_ms` (per push: its first delivery sent ▸ the last
//! of its stale pods removed from FakeKube and its PR's labels moved, all
//! times from the fakes' records), `kube_calls_per_cancellation` and
//! `github_calls_per_cancellation` (every request of every process during
//! the phase — watches and recovery scans included — per push), `rss_mb`
//! (this process, fakes included, at the end of the phase); beside them
//! `pods_gone_p50_ms`/`pods_gone_p99_ms` (the same without the label move,
//! which the binaries send unpaced: label-cas's `RateLimited` is not wired
//! into them), `unfinished` (pushes not converged within the patience,
//! left out of the percentiles), `round_trip_ms` (a state GET straight to
//! FakeKube, p50 of 20, with the phase's latency; the replicas' calls also
//! cross the partition cable, one local proxy hop more) and
//! `uncontended_budget_ms` (15 of those, plus the pods' stop time, 0
//! here, plus 10 ms: the target for a push that has the system to itself,
//! as the steady phase's pushes do — each converges well inside the
//! 100 ms before the next).
//!
//! ```text
//! cargo run --release --example e2e_bench
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;
#[path = "../tests/chaos/world.rs"]
mod world;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use resilience::Shutdown;
use support::{MOVED, NS, ROLES, sha};
use testkit::faults::Match;
use testkit::github::DeliveryId;
use testkit::history::cancellation::CancellationViolation;
use testkit::kube::tap::WriteKind;
use testkit::process::own_memory;
use world::World;

/// Every API call's latency.
const LATENCY: Duration = Duration::from_millis(2);
/// How often the labels are looked at while a phase runs.
const POLL: Duration = Duration::from_millis(2);
/// The longest a phase may take to converge after its last push.
const PATIENCE: Duration = Duration::from_secs(600);

/// One phase's shape.
struct Phase {
    name: &'static str,
    tasks: u64,
    sensors: usize,
    controllers: usize,
    /// (pushes, gap between them), in order.
    schedule: Vec<(usize, Duration)>,
}

/// One push: its task, the runs it makes stale, its deliveries.
struct Push {
    task: u64,
    stale: Vec<String>,
    deliveries: Vec<DeliveryId>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let steady = Phase {
        name: "steady",
        tasks: 50,
        sensors: 1,
        controllers: 1,
        schedule: vec![(100, Duration::from_millis(100))],
    };
    let burst = Phase {
        name: "burst",
        tasks: 500,
        sensors: 3,
        controllers: 3,
        schedule: vec![(100, Duration::from_millis(20)), (400, Duration::ZERO)],
    };
    for phase in [steady, burst] {
        println!("{}", run(&phase).await);
    }
}

/// A controller replica on the cluster (no webhook route), with the
/// default recovery interval: the scenario world's controller recovers
/// every second, which would put a LIST of every state and a GitHub read
/// of every PR into each second of the benchmark.
/// A controller replica with the production recovery interval.
async fn controller(world: &World, identity: &str) -> Shutdown {
    let every = controller::Config::default().recovery_interval_seconds;
    world.cluster.start_controller_every(identity, every).await
}

async fn run(phase: &Phase) -> String {
    let world = World::start(phase.sensors).await;
    let mut controllers = Vec::new();
    for i in 0..phase.controllers {
        let identity = format!("controller-{i}");
        controllers.push(controller(&world, &identity).await);
        world.alive(&identity);
    }
    let mut heads: BTreeMap<u64, usize> = BTreeMap::new();
    for task in 1..=phase.tasks {
        world.open(task, &head_of(task, 0), 0).await;
        heads.insert(task, 0);
    }
    for fake in [world.cluster.kube.faults(), world.cluster.github.faults()] {
        fake.latency(Match::any(), LATENCY, Duration::ZERO);
    }
    // A round trip on this machine: a GET of a state straight to FakeKube
    // (the same latency; the replicas' calls also cross the partition
    // cable), p50 of 20; the uncontended budget
    // is 15 of them + the pods' stop time (0: they stop on SIGTERM) + 10 ms.
    let probe: Api<ConfigMap> = Api::namespaced(world.cluster.kube.client(), NS);
    let mut trips = Vec::new();
    for _ in 0..20 {
        let t = std::time::Instant::now();
        probe.get(&support::state_map(1)).await.unwrap();
        trips.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    trips.sort_by(f64::total_cmp);
    let round_trip = percentile(&trips, 0.5);
    let pods = world.cluster.kube.tap("", "pods");
    let log_from = world.cluster.kube.requests().last_seq();
    let github_from = world.cluster.github.calls().total();
    let started = world.cluster.kube.now();

    // The pushes, on schedule; labels watched as they move.
    let mut pushes: Vec<Push> = Vec::new();
    let mut labelled: BTreeMap<u64, jiff::Timestamp> = BTreeMap::new();
    let mut next = 0usize;
    for &(count, gap) in &phase.schedule {
        for _ in 0..count {
            let task = (next as u64 % phase.tasks) + 1;
            next += 1;
            let n = heads.get_mut(&task).unwrap();
            let stale = ROLES
                .iter()
                .map(|role| run_name(task, role, &head_of(task, *n)))
                .collect();
            *n += 1;
            let head = head_of(task, *n);
            let deliveries = world.cluster.push(task, &head);
            world.pushed(task);
            // The agents start on the new head.
            world.start_runs(task, &head, &ROLES, 0);
            pushes.push(Push {
                task,
                stale,
                deliveries,
            });
            watch_labels(&world, &pushes, &mut labelled);
            // The labels are read from FakeGitHub's store (it keeps no
            // history): look every 2 ms through the gap too, or a move is
            // timed at the next push.
            let until = tokio::time::Instant::now() + gap;
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(POLL.min(until - tokio::time::Instant::now())).await;
                watch_labels(&world, &pushes, &mut labelled);
            }
        }
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        watch_labels(&world, &pushes, &mut labelled);
        world.read_requests();
        let done = pushes
            .iter()
            .all(|p| labelled.contains_key(&p.task) && p.stale.iter().all(|r| !exists(&world, r)));
        if done || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    // Let the last sagas retire their journals and release their Leases.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kube_calls = world.cluster.kube.requests().since(log_from).len();
    let github_calls = world.cluster.github.calls().total() - github_from;
    let rss_mb = own_memory().map_or(0, |m| m.rss_kb) as f64 / 1024.0;

    let gone: BTreeMap<String, jiff::Timestamp> = pods
        .writes()
        .into_iter()
        .filter(|w| w.kind == WriteKind::Deleted)
        .filter_map(|w| Some((w.name.strip_suffix("-pod")?.to_owned(), w.at)))
        .collect();
    let mut e2e = Vec::new();
    let mut pods_only = Vec::new();
    let mut unfinished = 0usize;
    for push in &pushes {
        let hooks = world.cluster.github.webhooks();
        let sent = push
            .deliveries
            .iter()
            .filter_map(|id| hooks.delivery(*id)?.delivered_at)
            .min();
        let last_gone = push
            .stale
            .iter()
            .map(|r| gone.get(r).copied())
            .collect::<Option<Vec<_>>>()
            .and_then(|g| g.into_iter().max());
        let moved = labelled.get(&push.task).copied();
        let (Some(sent), Some(last_gone), Some(moved)) = (sent, last_gone, moved) else {
            unfinished += 1;
            continue;
        };
        let ms = |end: jiff::Timestamp| end.max(sent).duration_since(sent).as_secs_f64() * 1000.0;
        pods_only.push(ms(last_gone));
        e2e.push(ms(last_gone.max(moved)));
    }
    pods_only.sort_by(f64::total_cmp);
    e2e.sort_by(f64::total_cmp);

    let history = world.history(false);
    let violations = history.violations();
    let lost = violations
        .iter()
        .filter(|v| matches!(v, CancellationViolation::LostCancellation { .. }))
        .count();
    let wrong = violations
        .iter()
        .filter(|v| matches!(v, CancellationViolation::WrongCancellation { .. }))
        .count();
    let others: Vec<_> = violations
        .iter()
        .filter(|v| {
            !matches!(
                v,
                CancellationViolation::LostCancellation { .. }
                    | CancellationViolation::WrongCancellation { .. }
            )
        })
        .collect();
    if !others.is_empty() {
        eprintln!("{}: other violations: {others:#?}", phase.name);
    }
    let events = pushes.iter().map(|p| p.deliveries.len()).sum::<usize>();
    let cancelled = world.cancelled_runs();
    let measured = e2e.len();
    eprintln!(
        "{}: {} pushes over {} tasks, {measured} measured ({unfinished} unfinished), {cancelled} runs cancelled, {} s of phase; stale pods gone p50 {:.1} ms p99 {:.1} ms (labels excluded)",
        phase.name,
        pushes.len(),
        phase.tasks,
        world
            .cluster
            .kube
            .now()
            .duration_since(started)
            .as_secs_f64()
            .round(),
        percentile(&pods_only, 0.5),
        percentile(&pods_only, 0.99),
    );
    for shutdown in &controllers {
        shutdown.trigger();
        let _ = shutdown.drain(Duration::from_secs(5)).await;
    }
    let per = |calls: usize| calls as f64 / pushes.len().max(1) as f64;
    format!(
        "{{\"phase\":\"{}\",\"tasks\":{},\"events\":{events},\"cancelled_runs\":{cancelled},\"lost_cancellations\":{lost},\"wrong_cancellations\":{wrong},\"e2e_p50_ms\":{:.1},\"e2e_p99_ms\":{:.1},\"kube_calls_per_cancellation\":{:.1},\"github_calls_per_cancellation\":{:.1},\"rss_mb\":{rss_mb:.1},\"pods_gone_p50_ms\":{:.1},\"pods_gone_p99_ms\":{:.1},\"unfinished\":{unfinished},\"round_trip_ms\":{round_trip:.2},\"uncontended_budget_ms\":{:.1}}}",
        phase.name,
        phase.tasks,
        percentile(&e2e, 0.5),
        percentile(&e2e, 0.99),
        per(kube_calls),
        per(github_calls as usize),
        percentile(&pods_only, 0.5),
        percentile(&pods_only, 0.99),
        15.0 * round_trip + 10.0,
    )
}

/// Notes when each pushed PR's labels first show [`MOVED`].
fn watch_labels(world: &World, pushes: &[Push], labelled: &mut BTreeMap<u64, jiff::Timestamp>) {
    for push in pushes {
        if !labelled.contains_key(&push.task) && world.cluster.labels(push.task) == [MOVED] {
            labelled.insert(push.task, world.cluster.kube.now());
        }
    }
}

fn exists(world: &World, run: &str) -> bool {
    world
        .cluster
        .kube
        .peek::<Pod>(NS, &format!("{run}-pod"))
        .is_some()
}

fn head_of(task: u64, n: usize) -> String {
    sha(task as usize * 1_000 + n + 1)
}

/// The name [`World::start_runs`] gives a run.
fn run_name(task: u64, role: &str, head: &str) -> String {
    format!("t{task}-{role}-{}", &head[head.len() - 8..])
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
