//! Benchmark: 20 concurrent label transitions over 5 pull requests on the
//! fake GitHub (real HTTP through octocrab), while an outside writer keeps
//! toggling unrelated labels. Prints one JSON line:
//!
//! `transitions, applied, already_in_state, conflicts, failed,
//! outside_labels_lost, calls_per_transition, not_modified_share, wall_ms`
//!
//! ```text
//! cargo run --release -p label-cas --example label_race [-- --seed N --spacing-ms N --lock]
//! ```
//!
//! Setup: every PR starts with `ready-for-qa` and `human-keep`; each PR
//! gets 4 identical moves `ready-for-qa` → `remediation-in-progress` (as
//! several deliveries of pushes and several replicas would send), started
//! 0–30 ms apart; one process, one `AtomicLabelManager` over
//! `RateLimited<GitHubLabels>`; mutations serial with a **2 ms spacing**
//! (GitHub's guidance is 1 s; the fake has no secondary limit here, and 1 s
//! would only measure the sleep); 1–4 ms of injected latency per request;
//! no lock unless `--lock` (then a per-PR `LocalPrLocks`).
//!
//! Calls are counted by the fake (every request, 304s included);
//! `not_modified_share` is 304s over label reads. Targets: zero outside
//! labels lost; at most 3 calls for an applied one-remove-one-add
//! transition; zero mutations for a transition already in state. The
//! process exits 1 if a target is missed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use label_cas::{
    AtomicLabelManager, Error, GitHubLabels, LabelTransition, LocalPrLocks, Metrics, PrRef,
    RateLimitPolicy, RateLimited, TransitionResult,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use testkit::faults::Match;
use testkit::github::FakeGitHub;

const PRS: u64 = 5;
const PER_PR: usize = 4;
const OUTSIDE: [&str; 4] = ["human-0", "human-1", "human-2", "human-3"];

#[derive(serde::Serialize)]
struct Report {
    transitions: usize,
    applied: usize,
    already_in_state: usize,
    conflicts: usize,
    failed: usize,
    outside_labels_lost: usize,
    calls_per_transition: f64,
    not_modified_share: f64,
    wall_ms: u64,
}

struct Args {
    seed: u64,
    spacing: Duration,
    lock: bool,
}

fn args() -> Args {
    let mut args = Args {
        seed: 42,
        spacing: Duration::from_millis(2),
        lock: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seed" => args.seed = it.next().and_then(|v| v.parse().ok()).expect("--seed N"),
            "--spacing-ms" => {
                args.spacing = Duration::from_millis(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--spacing-ms N"),
                );
            }
            "--lock" => args.lock = true,
            other => {
                eprintln!("unknown argument {other}; use --seed N, --spacing-ms N, --lock");
                std::process::exit(2);
            }
        }
    }
    args
}

fn pr(n: u64) -> PrRef {
    PrRef::new("acme", "widgets", n).unwrap()
}

#[tokio::main]
async fn main() {
    let args = args();
    let fake = Arc::new(FakeGitHub::builder().seed(args.seed).start().await.unwrap());
    fake.faults().latency(
        Match::any(),
        Duration::from_millis(1),
        Duration::from_millis(3),
    );
    for n in 1..=PRS {
        fake.set_labels("acme", "widgets", n, ["ready-for-qa", "human-keep"])
            .unwrap();
    }

    let metrics = Metrics::new();
    let github = GitHubLabels::builder()
        .token(SecretString::from(fake.token().to_owned()))
        .base_uri(fake.url().as_str())
        .metrics(metrics.clone())
        .build()
        .unwrap();
    let policy = RateLimitPolicy {
        mutation_spacing: args.spacing,
        ..RateLimitPolicy::default()
    };
    let paced = RateLimited::new(github, policy)
        .unwrap()
        .with_metrics(metrics.clone());
    let mut manager = AtomicLabelManager::new(paced).with_metrics(metrics.clone());
    if args.lock {
        manager = manager.with_lock(Arc::new(LocalPrLocks::new()));
    }
    let manager = Arc::new(manager);

    // The outside writer: a human toggling unrelated labels.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (fake, stop) = (Arc::clone(&fake), Arc::clone(&stop));
        let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
        tokio::spawn(async move {
            let mut expected: BTreeMap<u64, BTreeSet<&str>> =
                (1..=PRS).map(|n| (n, BTreeSet::new())).collect();
            while !stop.load(Ordering::SeqCst) {
                let n = rng.random_range(1..=PRS);
                let label = OUTSIDE[rng.random_range(0..OUTSIDE.len())];
                let mine = expected.get_mut(&n).unwrap();
                if mine.remove(label) {
                    fake.remove_label("acme", "widgets", n, label);
                } else {
                    fake.add_label("acme", "widgets", n, label).unwrap();
                    mine.insert(label);
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(1..=4))).await;
            }
            expected
        })
    };

    let mut rng = StdRng::seed_from_u64(args.seed);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for n in 1..=PRS {
        for _ in 0..PER_PR {
            let manager = Arc::clone(&manager);
            let delay = Duration::from_millis(rng.random_range(0..=30));
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let transition =
                    LabelTransition::move_label("ready-for-qa", "remediation-in-progress");
                manager.transition(&pr(n), &transition).await
            }));
        }
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let wall = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let expected = writer.await.unwrap();

    let mut report = Report {
        transitions: results.len(),
        applied: 0,
        already_in_state: 0,
        conflicts: 0,
        failed: 0,
        outside_labels_lost: 0,
        calls_per_transition: 0.0,
        not_modified_share: 0.0,
        wall_ms: u64::try_from(wall.as_millis()).unwrap_or(u64::MAX),
    };
    let mut applied_max_calls = 0;
    let mut in_state_writes = 0;
    for result in &results {
        match result {
            Ok(o) if o.result == TransitionResult::Applied => {
                report.applied += 1;
                applied_max_calls = applied_max_calls.max(o.calls);
            }
            Ok(o) => {
                report.already_in_state += 1;
                in_state_writes += o.added.len() + o.removed.len();
            }
            Err(Error::Conflict { .. }) => report.conflicts += 1,
            Err(e) => {
                eprintln!("failed: {e}");
                report.failed += 1;
            }
        }
    }
    let mut resurrected = 0;
    let mut half_done = 0;
    for n in 1..=PRS {
        let now: BTreeSet<String> = fake.labels("acme", "widgets", n).into_iter().collect();
        for label in OUTSIDE {
            let want = expected[&n].contains(label);
            let has = now.contains(label);
            if want && !has {
                report.outside_labels_lost += 1;
            }
            if !want && has {
                resurrected += 1;
            }
        }
        if !now.contains("human-keep") {
            report.outside_labels_lost += 1;
        }
        if now.contains("ready-for-qa") || !now.contains("remediation-in-progress") {
            half_done += 1;
        }
    }
    let calls = fake.calls().total();
    let reads = fake.calls().count(Some("get"), Some("labels"));
    #[allow(clippy::cast_precision_loss)] // call counts are tiny
    {
        report.calls_per_transition = round2(calls as f64 / report.transitions as f64);
        report.not_modified_share = if reads == 0 {
            0.0
        } else {
            round2(metrics.not_modified_count() as f64 / reads as f64)
        };
    }
    println!("{}", serde_json::to_string(&report).unwrap());

    eprintln!(
        "calls={calls} (get {reads}, 304 {}, delete {}, post {}, put {}); applied max calls {applied_max_calls}; \
         writes by already-in-state transitions {in_state_writes}; resurrected outside labels {resurrected}; \
         PRs not in the target state {half_done}; spacing {:?}; lock {}",
        metrics.not_modified_count(),
        fake.calls().count(Some("delete"), None),
        fake.calls().count(Some("post"), None),
        fake.calls().count(Some("put"), None),
        args.spacing,
        args.lock,
    );
    let missed = report.outside_labels_lost > 0
        || resurrected > 0
        || half_done > 0
        || applied_max_calls > 3
        || in_state_writes > 0
        || report.applied != usize::try_from(PRS).unwrap_or(usize::MAX)
        || report.failed > 0
        || fake.calls().count(Some("put"), None) > 0;
    if missed {
        eprintln!("TARGET MISSED");
        std::process::exit(1);
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
