//! The history checkers judged against simulated systems: a correct lease
//! lock and CAS counter must pass, deliberately broken ones must fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use testkit::history::{CounterHistory, FencingToken, LockHistory, Violation};
use tokio::sync::Mutex;
use tokio::time::{Instant, sleep};

const LEASE: Duration = Duration::from_secs(10);

/// A Lease record as a CAS store would hold it.
#[derive(Default)]
struct Lease {
    holder: Option<String>,
    renewed_at: Option<Instant>,
    transitions: u64,
}

/// How a simulated lock decides that a lease is expired, and what token it writes.
#[derive(Clone, Copy)]
struct LockRules {
    /// Fraction of the lease duration after which a contender takes over.
    takeover_after: f64,
    /// Whether a takeover increments `transitions`.
    bump_transitions: bool,
}

const CORRECT: LockRules = LockRules {
    takeover_after: 1.0,
    bump_transitions: true,
};

/// Contenders that each acquire the lock, work for `work` (pausing past the
/// deadline when `work` > LEASE), and release if they still hold it.
async fn run_contenders(rules: LockRules, work: &[Duration]) -> LockHistory {
    let history = LockHistory::new();
    let lease = Arc::new(Mutex::new(Lease::default()));
    let mut tasks = Vec::new();
    for (i, work) in work.iter().copied().enumerate() {
        let history = history.clone();
        let lease = Arc::clone(&lease);
        tasks.push(tokio::spawn(async move {
            let me = format!("pod-{i}/guard");
            // Stagger arrivals so the order is deterministic.
            sleep(Duration::from_millis(100 * i as u64)).await;
            loop {
                let sent = Instant::now();
                let mut l = lease.lock().await;
                let expired = l
                    .renewed_at
                    .is_none_or(|at| sent >= at + LEASE.mul_f64(rules.takeover_after))
                    || l.holder.is_none();
                if expired {
                    if rules.bump_transitions || l.transitions == 0 {
                        l.transitions += 1;
                    }
                    l.holder = Some(me.clone());
                    l.renewed_at = Some(sent);
                    let token =
                        FencingToken::new("uid-1", jiff::Timestamp::UNIX_EPOCH, l.transitions);
                    drop(l);
                    history.acquired("k", &me, token, Instant::now(), sent + LEASE);
                    break;
                }
                drop(l);
                sleep(Duration::from_millis(500)).await;
            }
            sleep(work).await;
            let mut l = lease.lock().await;
            if l.holder.as_deref() == Some(me.as_str()) {
                history.released("k", &me, Instant::now());
                l.holder = None;
            } else {
                history.lost("k", &me, Instant::now());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    history
}

#[tokio::test(start_paused = true)]
async fn correct_lease_lock_passes_even_with_a_paused_holder() {
    let work = [
        Duration::from_secs(2),
        Duration::from_secs(25), // paused past its deadline: taken over, then learns it lost
        Duration::from_secs(1),
        Duration::from_secs(3),
    ];
    let history = run_contenders(CORRECT, &work).await;
    assert_eq!(history.check(), Ok(()), "{:#?}", history.events());
    // Everyone got the lock exactly once.
    let acquisitions = history
        .events()
        .iter()
        .filter(|e| matches!(e, testkit::history::LockEvent::Acquired { .. }))
        .count();
    assert_eq!(acquisitions, work.len());
}

#[tokio::test(start_paused = true)]
async fn lock_that_takes_over_before_expiry_is_caught() {
    let rules = LockRules {
        takeover_after: 0.5,
        ..CORRECT
    };
    let history = run_contenders(rules, &[Duration::from_secs(30), Duration::from_secs(1)]).await;
    let violations = history.violations();
    assert!(
        matches!(&violations[..], [Violation::OverlappingHolds { first, second, .. }]
            if first.holder == "pod-0/guard" && second.holder == "pod-1/guard"),
        "{violations:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn lock_that_does_not_bump_the_fencing_token_on_takeover_is_caught() {
    let rules = LockRules {
        bump_transitions: false,
        ..CORRECT
    };
    let history = run_contenders(rules, &[Duration::from_secs(30), Duration::from_secs(1)]).await;
    assert!(
        matches!(
            history.check(),
            Err(Violation::FencingTokenNotIncreasing { .. })
        ),
        "{:#?}",
        history.violations()
    );
}

/// Writers increment a shared counter `per_writer` times each. With `cas`
/// they use compare-and-swap and retry on conflict; without, they read,
/// yield, then blindly store (the classic lost update).
async fn run_counter(writers: usize, per_writer: usize, cas: bool) -> CounterHistory {
    let history = CounterHistory::new(0);
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let history = history.clone();
        let counter = Arc::clone(&counter);
        tasks.push(tokio::spawn(async move {
            let writer = format!("w{w}");
            for n in 0..per_writer {
                let op = format!("{writer}-op{n}");
                loop {
                    history.attempt(&writer, &op);
                    let seen = counter.load(Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    if cas {
                        if counter
                            .compare_exchange(seen, seen + 1, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok()
                        {
                            history.applied(&writer, &op, seen, seen + 1);
                            break;
                        }
                    } else {
                        counter.store(seen + 1, Ordering::SeqCst);
                        history.applied(&writer, &op, seen, seen + 1);
                        break;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    history.record_final(counter.load(Ordering::SeqCst));
    history
}

#[tokio::test(start_paused = true)]
async fn compare_and_swap_counter_loses_no_increment() {
    let history = run_counter(8, 25, true).await;
    assert_eq!(history.check(), Ok(()));
    assert_eq!(history.applied_count(), 200);
    assert!(
        history.attempt_count() > 200,
        "writers should have conflicted"
    );
}

#[tokio::test(start_paused = true)]
async fn read_then_blind_write_counter_is_caught_losing_increments() {
    let history = run_counter(8, 25, false).await;
    let violations = history.violations();
    assert!(
        violations
            .iter()
            .any(|v| matches!(v, Violation::SameObservedValue { .. })),
        "{violations:#?}"
    );
    assert!(
        violations
            .iter()
            .any(|v| matches!(v, Violation::FinalValueMismatch { applied: 200, .. })),
        "{violations:#?}"
    );
}
