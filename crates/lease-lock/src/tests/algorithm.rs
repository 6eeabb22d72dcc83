//! The lock algorithm on `MemoryLeases`, with Tokio's clock paused so that
//! lease durations pass instantly and exactly.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Instrumented, NS, Verb, config, held_lease, holder, settle};
use crate::{
    AcquireOptions, Error, HOLDER_HASH_LABEL, LeaseBackend, LeaseLock, LossReason, MemoryLeases,
    WAITING_FOR_ANNOTATION,
};

fn lock_on(backend: impl LeaseBackend, identity: &str) -> LeaseLock {
    LeaseLock::new(backend, config(identity)).unwrap()
}

fn wait_up_to(secs: u64) -> AcquireOptions {
    AcquireOptions::new().timeout(Duration::from_secs(secs))
}

#[tokio::test(start_paused = true)]
async fn uncontended_acquire_and_release_take_two_writes() {
    let backend = Instrumented::memory();
    let lock = lock_on(backend.clone(), "pod-a");
    let guard = lock.acquire("task-1", AcquireOptions::new()).await.unwrap();
    let lease = backend.get(NS, "lock-task-1").await.unwrap().unwrap();
    assert_eq!(holder(&lease).as_deref(), Some(guard.holder_identity()));
    assert!(
        lease
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key(HOLDER_HASH_LABEL)
    );
    guard.release().await.unwrap();

    assert_eq!(backend.count(Verb::Create), 1);
    assert_eq!(backend.count(Verb::Replace), 1);
    assert_eq!(backend.requests() - backend.count(Verb::Get), 2);
    let lease = backend.get(NS, "lock-task-1").await.unwrap().unwrap();
    assert_eq!(holder(&lease), None, "released, and the Lease object stays");
    assert!(
        !lease
            .metadata
            .labels
            .unwrap()
            .contains_key(HOLDER_HASH_LABEL)
    );
}

#[tokio::test(start_paused = true)]
async fn reacquiring_a_key_this_lock_released_costs_one_write_and_a_higher_token() {
    let backend = Instrumented::memory();
    let lock = lock_on(backend.clone(), "pod-a");
    let first = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    let first_token = first.fencing_token().clone();
    first.release().await.unwrap();
    let before = backend.requests();

    let second = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    second.release().await.unwrap();

    assert_eq!(
        backend.requests() - before,
        2,
        "one replace to take, one to release"
    );
    assert_eq!(first_token.transitions, 0);
    assert_eq!(holder_of_key(&lock, "k").await, None);
    let third = lock.try_acquire("k").await.unwrap().unwrap();
    assert_eq!(third.fencing_token().transitions, 2);
    assert!(third.fencing_token() > &first_token);
}

async fn holder_of_key(lock: &LeaseLock, key: &str) -> Option<String> {
    let lease = lock
        .inner()
        .backend
        .get(NS, &lock.lease_name(key).unwrap())
        .await
        .unwrap()?;
    holder(&lease)
}

#[tokio::test(start_paused = true)]
async fn acquiring_a_key_this_lock_holds_or_is_acquiring_is_already_held() {
    let memory = MemoryLeases::new();
    let a = lock_on(memory.clone(), "pod-a");
    let b = lock_on(memory.clone(), "pod-b");
    let held = a.acquire("k", AcquireOptions::new()).await.unwrap();
    assert!(matches!(
        a.acquire("k", AcquireOptions::new()).await,
        Err(Error::AlreadyHeld { .. })
    ));
    assert!(matches!(
        a.try_acquire("k").await,
        Err(Error::AlreadyHeld { .. })
    ));

    // B waits for "k"; a second acquisition of "k" through B is refused too.
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.acquire("k", wait_up_to(60)).await }
    });
    settle().await;
    assert!(matches!(
        b.try_acquire("k").await,
        Err(Error::AlreadyHeld { .. })
    ));

    held.release().await.unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.fencing_token().transitions, 1);
    assert_eq!(a.metrics().failures("already_held"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_lone_waiter_takes_the_lock_within_one_stagger_of_its_release() {
    let memory = MemoryLeases::new();
    let a = lock_on(memory.clone(), "pod-a");
    let b_backend = Instrumented::new(memory.clone());
    let b = lock_on(b_backend.clone(), "pod-b");
    let stagger = b.config().handoff_stagger;
    let held = a.acquire("k", AcquireOptions::new()).await.unwrap();
    let held_token = held.fencing_token().clone();
    let waiter = tokio::spawn(async move {
        let guard = b.acquire("k", wait_up_to(60)).await.unwrap();
        (Instant::now(), guard, b)
    });
    // Long enough for the waiter's backoff to reach its 2 s cap.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let released_at = Instant::now();
    held.release().await.unwrap();
    let (acquired_at, guard, b) = waiter.await.unwrap();

    let waited = acquired_at - released_at;
    // The turn is drawn from [0, stagger); tokio's timer rounds a deadline
    // up to its next whole millisecond, so a turn drawn past 24 ms of a
    // 25 ms stagger fires at exactly 25 ms. A poll would come seconds later.
    assert!(
        waited <= stagger,
        "woken by the watch and taken at its turn, not at a poll: {waited:?}"
    );
    assert_eq!(b_backend.count(Verb::Replace), 1, "one write: the takeover");
    assert!(guard.fencing_token() > &held_token);
    assert_eq!(b.metrics().acquisitions(), 1);
    assert_eq!(b.metrics().takeovers(), 0);
}

#[tokio::test(start_paused = true)]
async fn crashed_holder_is_taken_over_after_expiry_and_reports_lost() {
    let memory = MemoryLeases::new();
    let a_backend = Instrumented::new(memory.clone());
    let a = lock_on(a_backend.clone(), "pod-a");
    let b = lock_on(memory.clone(), "pod-b");
    let crashed = a.acquire("k", AcquireOptions::new()).await.unwrap();
    // From now on none of pod-a's requests reach the server.
    a_backend.freeze(true);

    let started = Instant::now();
    let taker = b.acquire("k", wait_up_to(120)).await.unwrap();

    assert!(
        started.elapsed() >= Duration::from_secs(30),
        "took over after {:?}, before a full lease duration",
        started.elapsed()
    );
    let lost = crashed.lost().await;
    assert!(
        matches!(
            lost,
            Error::Lost {
                reason: LossReason::RenewDeadline,
                ..
            }
        ),
        "{lost}"
    );
    assert_eq!(
        crashed.valid_until(),
        crashed.acquired_at() + Duration::from_secs(20),
        "never renewed: guaranteed for the renew deadline from the acquiring request only"
    );
    assert!(!crashed.is_valid());
    assert!(crashed.cancellation_token().is_cancelled());
    assert!(
        crashed.valid_until() <= taker.acquired_at(),
        "no overlap of guaranteed holds"
    );
    assert!(taker.fencing_token() > crashed.fencing_token());
    assert_eq!(b.metrics().takeovers(), 1);
    assert_eq!(a.metrics().losses(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_renewing_holder_is_never_taken_over() {
    let memory = MemoryLeases::new();
    let a = lock_on(memory.clone(), "pod-a");
    let b = lock_on(memory.clone(), "pod-b");
    let held = a.acquire("k", AcquireOptions::new()).await.unwrap();

    let err = b.acquire("k", wait_up_to(100)).await.unwrap_err();

    match err {
        Error::Timeout { holder, waited, .. } => {
            assert_eq!(holder.as_deref(), Some(held.holder_identity()));
            assert!(waited >= Duration::from_secs(100));
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(held.is_valid());
    assert!(held.valid_until() > Instant::now() + Duration::from_secs(5));
    assert_eq!(b.metrics().takeovers(), 0);
    assert_eq!(b.metrics().failures("timeout"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_released_lease_is_taken_with_transitions_plus_one_in_three_calls_and_no_read() {
    let memory = MemoryLeases::new();
    let a = lock_on(memory.clone(), "pod-a");
    let b_backend = Instrumented::new(memory.clone());
    let b = lock_on(b_backend.clone(), "pod-b");
    a.acquire("k", AcquireOptions::new())
        .await
        .unwrap()
        .release()
        .await
        .unwrap();

    let guard = b.acquire("k", AcquireOptions::new()).await.unwrap();

    assert_eq!(guard.fencing_token().transitions, 1);
    assert_eq!(
        (
            b_backend.count(Verb::Create),
            b_backend.count(Verb::Watch),
            b_backend.count(Verb::Get),
            b_backend.count(Verb::Replace)
        ),
        (1, 1, 0, 1),
        "CREATE (409), WATCH (its first event is the state a GET would read), replace"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deleted_lease_wakes_the_waiter_which_recreates_it_and_the_holder_learns_it_lost() {
    let memory = MemoryLeases::new();
    let a = lock_on(memory.clone(), "pod-a");
    let b = lock_on(memory.clone(), "pod-b");
    let held = a.acquire("k", AcquireOptions::new()).await.unwrap();
    let waiter =
        tokio::spawn(async move { (b.acquire("k", wait_up_to(60)).await, Instant::now()) });
    tokio::time::sleep(Duration::from_secs(1)).await;

    let lease = memory.get(NS, "lock-k").await.unwrap().unwrap();
    let (uid, version) = (
        lease.metadata.uid.unwrap(),
        lease.metadata.resource_version.unwrap(),
    );
    let deleted_at = Instant::now();
    memory.delete(NS, "lock-k", &uid, &version).await.unwrap();
    let (got, acquired_at) = waiter.await.unwrap();
    let got = got.unwrap();

    assert_eq!(acquired_at, deleted_at);
    assert_ne!(got.fencing_token().lease_uid, uid, "a new Lease object");
    let lost = held.lost().await;
    assert!(
        matches!(
            lost,
            Error::Lost {
                reason: LossReason::TakenOver { .. } | LossReason::Deleted,
                ..
            }
        ),
        "{lost}"
    );
}

#[tokio::test(start_paused = true)]
async fn try_acquire_never_waits_and_takes_over_once_the_record_stayed_unchanged_for_a_lease_duration()
 {
    let memory = MemoryLeases::new();
    let a_backend = Instrumented::new(memory.clone());
    let a = lock_on(a_backend.clone(), "pod-a");
    let b = lock_on(memory.clone(), "pod-b");
    let _crashed = a.acquire("k", AcquireOptions::new()).await.unwrap();
    a_backend.freeze(true);

    assert!(b.try_acquire("k").await.unwrap().is_none());
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(
        b.try_acquire("k").await.unwrap().is_none(),
        "unchanged for 29 s only"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let guard = b
        .try_acquire("k")
        .await
        .unwrap()
        .expect("unchanged for 31 s: expired");

    assert_eq!(guard.fencing_token().transitions, 1);
    assert_eq!(b.metrics().takeovers(), 1);
}

/// Issue 12, item 3. The holder's wall clock runs 40 s behind ours, so the
/// `renewTime` it writes looks long past. Judged on `renewTime + duration +
/// skew`, the waiter took the Lease over at once, while the paused holder's
/// own `is_valid()` was still true for 20 s: two holders. Judged on our
/// monotonic observation alone (client-go's rule), the waiter takes over
/// only after the holder's guarantee ended.
#[tokio::test(start_paused = true)]
async fn a_holder_whose_wall_clock_is_behind_is_not_taken_over_while_it_is_valid() {
    let memory = MemoryLeases::new();
    let slow_clock = Instrumented::new(super::Faulty {
        clock_behind: Duration::from_secs(40),
        ..super::Faulty::new(memory.clone())
    });
    let a = lock_on(slow_clock.clone(), "pod-a");
    let b = lock_on(memory.clone(), "pod-b");
    let held = a.acquire("k", AcquireOptions::new()).await.unwrap();
    let a_valid_until = held.valid_until();
    slow_clock.freeze(true); // A pauses: its renewals never arrive

    let taken = b.acquire("k", wait_up_to(60)).await.unwrap();

    assert!(
        taken.acquired_at() >= a_valid_until,
        "taken over {:?} before the holder's guarantee ended",
        a_valid_until - taken.acquired_at()
    );
    assert!(!held.is_valid(), "by then the holder knows it may not act");
    slow_clock.freeze(false);
    drop(held);
}

/// The default: no wall-clock rule, so even a `renewTime` an hour old is
/// taken over only after one lease duration of our own observation.
#[tokio::test(start_paused = true)]
async fn a_lease_abandoned_long_ago_is_taken_over_after_one_observed_lease_duration() {
    let memory = MemoryLeases::new();
    memory
        .create(
            NS,
            &held_lease("lock-k", Some("ghost/1"), 7, Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let lock = lock_on(memory.clone(), "pod-b");
    let started = Instant::now();

    assert!(
        lock.try_acquire("k").await.unwrap().is_none(),
        "seen just now"
    );
    let guard = lock.acquire("k", wait_up_to(60)).await.unwrap();

    assert_eq!(guard.fencing_token().transitions, 8);
    assert!(started.elapsed() >= Duration::from_secs(30));
    assert_eq!(lock.metrics().takeovers(), 1);
}

fn with_wall_clock_rule(identity: &str) -> crate::LockConfig {
    crate::LockConfig {
        max_clock_skew: Some(Duration::from_secs(5)),
        ..config(identity)
    }
}

#[tokio::test(start_paused = true)]
async fn with_the_wall_clock_rule_a_lease_abandoned_long_ago_is_taken_over_at_once() {
    let memory = MemoryLeases::new();
    memory
        .create(
            NS,
            &held_lease("lock-k", Some("ghost/1"), 7, Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let lock = LeaseLock::new(memory.clone(), with_wall_clock_rule("pod-b")).unwrap();

    let guard = lock
        .try_acquire("k")
        .await
        .unwrap()
        .expect("renewTime + 30 s + skew is long past");

    assert_eq!(guard.fencing_token().transitions, 8);
    assert_eq!(lock.metrics().takeovers(), 1);
}

#[tokio::test(start_paused = true)]
async fn with_the_wall_clock_rule_a_renew_time_within_the_skew_bound_is_not_expired() {
    let memory = MemoryLeases::new();
    // 32 s ago: past the 30 s duration, but within duration + 5 s skew.
    memory
        .create(
            NS,
            &held_lease("lock-skewed", Some("ghost/1"), 1, Duration::from_secs(32)),
        )
        .await
        .unwrap();
    memory
        .create(
            NS,
            &held_lease("lock-expired", Some("ghost/2"), 1, Duration::from_secs(36)),
        )
        .await
        .unwrap();
    let lock = LeaseLock::new(memory.clone(), with_wall_clock_rule("pod-b")).unwrap();

    assert!(lock.try_acquire("skewed").await.unwrap().is_none());
    assert!(lock.try_acquire("expired").await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_guard_whose_lease_is_taken_over_reports_lost_and_its_release_touches_nothing() {
    let memory = MemoryLeases::new();
    let lock = lock_on(memory.clone(), "pod-a");
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    let mut stolen = memory.get(NS, "lock-k").await.unwrap().unwrap();
    stolen.spec.as_mut().unwrap().holder_identity = Some("intruder/1".into());
    memory.replace(NS, &stolen).await.unwrap();

    let lost = guard.lost().await;

    assert!(
        matches!(&lost, Error::Lost { reason: LossReason::TakenOver { holder }, .. } if holder == "intruder/1"),
        "{lost}"
    );
    assert!(guard.cancellation_token().is_cancelled());
    assert!(matches!(guard.release().await, Err(Error::Lost { .. })));
    let lease = memory.get(NS, "lock-k").await.unwrap().unwrap();
    assert_eq!(
        holder(&lease).as_deref(),
        Some("intruder/1"),
        "release never clears another holder"
    );
}

#[tokio::test(start_paused = true)]
async fn renewal_rereads_after_a_foreign_metadata_edit_and_keeps_the_lock() {
    let memory = MemoryLeases::new();
    let lock = lock_on(memory.clone(), "pod-a");
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    let first_deadline = guard.valid_until();
    let mut edited = memory.get(NS, "lock-k").await.unwrap().unwrap();
    edited
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("team".into(), "infra".into());
    memory.replace(NS, &edited).await.unwrap();

    tokio::time::sleep(Duration::from_secs(25)).await;

    assert!(
        guard.is_valid(),
        "still ours after a conflict resolved by a re-read"
    );
    assert!(guard.valid_until() > first_deadline);
    let lease = memory.get(NS, "lock-k").await.unwrap().unwrap();
    assert_eq!(
        lease.metadata.labels.as_ref().unwrap()["team"],
        "infra",
        "the edit survived"
    );
    guard.release().await.unwrap();
    let lease = memory.get(NS, "lock-k").await.unwrap().unwrap();
    assert_eq!(holder(&lease), None);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_guard_releases_it_in_the_background() {
    let memory = MemoryLeases::new();
    let lock = lock_on(memory.clone(), "pod-a");
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    let token = guard.cancellation_token();
    drop(guard);
    settle().await;

    assert!(token.is_cancelled());
    let lease = memory.get(NS, "lock-k").await.unwrap().unwrap();
    assert_eq!(holder(&lease), None);
    assert!(
        lock.try_acquire("k").await.unwrap().is_some(),
        "the key is free again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_acquisition_stops_waiting_at_once() {
    let memory = MemoryLeases::new();
    let a = lock_on(memory.clone(), "pod-a");
    let b = lock_on(memory.clone(), "pod-b");
    let _held = a.acquire("k", AcquireOptions::new()).await.unwrap();
    let cancel = CancellationToken::new();
    let waiter = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            (
                b.acquire("k", wait_up_to(60).cancel_on(cancel)).await,
                Instant::now(),
            )
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cancelled_at = Instant::now();
    cancel.cancel();
    let (result, ended) = waiter.await.unwrap();
    assert!(matches!(result, Err(Error::Cancelled { .. })));
    assert_eq!(ended, cancelled_at);
}

#[tokio::test(start_paused = true)]
async fn an_acquiring_write_that_lands_after_the_caller_gave_up_is_given_back() {
    let backend = Instrumented::memory();
    let lock = lock_on(backend.clone(), "pod-a");
    backend.freeze(true);
    let err = lock.acquire("k", wait_up_to(1)).await.unwrap_err();
    assert!(matches!(err, Error::Unanswered { .. }), "{err}");

    backend.freeze(false);
    settle().await;

    let lease = backend.get(NS, "lock-k").await.unwrap().unwrap();
    assert_eq!(
        holder(&lease),
        None,
        "the late CREATE was released, not leaked"
    );
    assert!(lock.try_acquire("k").await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn validity_moves_forward_with_each_renewal() {
    let lock = lock_on(MemoryLeases::new(), "pod-a");
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    let mut validity = guard.validity();
    let first = *validity.borrow_and_update();
    assert_eq!(first, guard.acquired_at() + Duration::from_secs(20));

    validity.changed().await.unwrap();
    let renewed = *validity.borrow();
    assert_eq!(
        renewed,
        first + Duration::from_secs(10),
        "renewed 10 s later"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(guard.is_valid());
}

#[tokio::test(start_paused = true)]
async fn a_wait_for_cycle_fails_exactly_one_member_with_deadlock_at_once() {
    let memory = MemoryLeases::new();
    let a = lock_on(memory.clone(), "pod-a");
    let b = lock_on(memory.clone(), "pod-b");
    let x = a.acquire("x", AcquireOptions::new()).await.unwrap();
    let y = b.acquire("y", AcquireOptions::new()).await.unwrap();
    let started = Instant::now();
    let a_waits = tokio::spawn({
        let options = wait_up_to(30).holding(&x);
        let a = a.clone();
        async move { a.acquire("y", options).await }
    });
    let b_waits = tokio::spawn({
        let options = wait_up_to(30).holding(&y);
        let b = b.clone();
        async move { (b.acquire("x", options).await, Instant::now()) }
    });

    // The member with the greatest holder identity ("pod-b/…") backs out.
    let (b_result, b_failed_at) = b_waits.await.unwrap();
    match b_result {
        Err(Error::Deadlock { cycle, .. }) => assert_eq!(cycle, ["lock-x", "lock-y"]),
        other => panic!("expected a deadlock, got {other:?}"),
    }
    assert!(
        b_failed_at - started < Duration::from_secs(1),
        "detected after {:?}, not at the 30 s timeout",
        b_failed_at - started
    );
    y.release().await.unwrap();
    let got_y = a_waits.await.unwrap().unwrap();
    assert_eq!(got_y.key(), "y");
    assert_eq!(b.metrics().deadlocks(), 1);
    assert_eq!(a.metrics().deadlocks(), 0);
    settle().await;
    let x_lease = memory.get(NS, "lock-x").await.unwrap().unwrap();
    let annotations = x_lease.metadata.annotations.unwrap_or_default();
    assert!(
        !annotations.contains_key(WAITING_FOR_ANNOTATION),
        "cleared when the wait ended"
    );
    drop(x);
}

#[tokio::test(start_paused = true)]
async fn a_holder_waiting_without_a_cycle_is_not_a_deadlock() {
    let memory = MemoryLeases::new();
    let a = lock_on(memory.clone(), "pod-a");
    let b = lock_on(memory.clone(), "pod-b");
    let x = a.acquire("x", AcquireOptions::new()).await.unwrap();
    let y = b.acquire("y", AcquireOptions::new()).await.unwrap();
    let waiting = tokio::spawn({
        let options = wait_up_to(30).holding(&x);
        async move { a.acquire("y", options).await }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let x_lease = memory.get(NS, "lock-x").await.unwrap().unwrap();
    assert_eq!(
        x_lease.metadata.annotations.unwrap()[WAITING_FOR_ANNOTATION],
        "lock-y",
        "the wait-for edge is recorded while waiting"
    );
    y.release().await.unwrap();
    assert!(waiting.await.unwrap().is_ok());
    drop(x);
}

#[tokio::test(start_paused = true)]
async fn garbage_collection_deletes_only_idle_released_or_expired_leases_of_its_prefix() {
    let memory = MemoryLeases::new();
    let day = Duration::from_secs(25 * 3600);
    for (name, holder, ago) in [
        ("lock-old-released", None, day),
        ("lock-old-expired", Some("ghost/1"), day),
        ("lock-recent-released", None, Duration::from_secs(3600)),
        ("other-old-released", None, day),
    ] {
        memory
            .create(NS, &held_lease(name, holder, 3, ago))
            .await
            .unwrap();
    }
    let mut unmanaged = held_lease("lock-unmanaged", None, 0, day);
    unmanaged.metadata.labels = None;
    memory.create(NS, &unmanaged).await.unwrap();
    let lock = lock_on(memory.clone(), "pod-a");
    let _held = lock.acquire("held", AcquireOptions::new()).await.unwrap();

    let report = lock.collect_garbage().await.unwrap();

    assert_eq!(
        (report.examined, report.deleted, report.held, report.recent),
        (4, 2, 1, 1)
    );
    for (name, kept) in [
        ("lock-old-released", false),
        ("lock-old-expired", false),
        ("lock-recent-released", true),
        ("other-old-released", true),
        ("lock-unmanaged", true),
        ("lock-held", true),
    ] {
        assert_eq!(
            memory.get(NS, name).await.unwrap().is_some(),
            kept,
            "{name}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_renewal_reports_the_loss_exactly_at_the_deadline() {
    let backend = Instrumented::memory();
    let lock = lock_on(backend.clone(), "pod-a");
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    let deadline = guard.valid_until();
    backend.freeze(true);

    let lost = guard.lost().await;

    assert_eq!(
        Instant::now(),
        deadline,
        "reported at the renew deadline, not later"
    );
    assert!(matches!(
        lost,
        Error::Lost {
            reason: LossReason::RenewDeadline,
            ..
        }
    ));
    assert_eq!(
        backend.count(Verb::Replace),
        1,
        "one renewal attempt, cut at the deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn acquisition_release_and_lost_futures_can_be_spawned() {
    fn assert_send<T: Send>(_: &T) {}
    let lock = lock_on(MemoryLeases::new(), "pod-a");
    let acquire = lock.acquire("k", AcquireOptions::new());
    assert_send(&acquire);
    let try_acquire = lock.try_acquire("k");
    assert_send(&try_acquire);
    let gc = lock.collect_garbage();
    assert_send(&gc);
    let guard = acquire.await.unwrap();
    let lost = guard.lost();
    assert_send(&lost);
    drop(lost);
    let release = guard.release();
    assert_send(&release);
    release.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_key_can_be_acquired_again_right_after_its_guard_is_dropped() {
    let backend = Instrumented::memory();
    let lock = lock_on(backend.clone(), "pod-a");
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    drop(guard);

    let again = lock.acquire("k", AcquireOptions::new()).await.unwrap();

    assert_eq!(again.fencing_token().transitions, 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_with_a_live_watch_does_not_poll() {
    let memory = MemoryLeases::new();
    let a = lock_on(memory.clone(), "pod-a");
    let b_backend = Instrumented::new(memory.clone());
    let b = lock_on(b_backend.clone(), "pod-b");
    let held = a.acquire("k", AcquireOptions::new()).await.unwrap();
    let waiter = tokio::spawn(async move { b.acquire("k", wait_up_to(60)).await });
    // Shorter than the 2 s longest backoff: the watch is trusted meanwhile.
    tokio::time::sleep(Duration::from_millis(1900)).await;
    held.release().await.unwrap();
    waiter.await.unwrap().unwrap();

    assert_eq!(
        b_backend.count(Verb::Get),
        0,
        "after CREATE's 409 only the watch: its first event is the state"
    );
    assert_eq!(b_backend.count(Verb::Watch), 1);
}

#[tokio::test(start_paused = true)]
async fn the_spawned_garbage_collector_deletes_idle_leases_until_cancelled() {
    let memory = MemoryLeases::new();
    let day = Duration::from_secs(25 * 3600);
    memory
        .create(NS, &held_lease("lock-old", None, 1, day))
        .await
        .unwrap();
    let lock = lock_on(memory.clone(), "pod-a");
    let cancel = CancellationToken::new();
    let collector = lock.spawn_garbage_collector(Duration::from_secs(60), cancel.clone());

    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        memory.get(NS, "lock-old").await.unwrap().is_some(),
        "not before the first period (±10 %)"
    );
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(memory.get(NS, "lock-old").await.unwrap().is_none());

    cancel.cancel();
    collector.await.unwrap();
}

#[test]
fn a_guard_whose_runtime_shuts_down_reports_the_loss() {
    let memory = MemoryLeases::new();
    let lock = lock_on(memory.clone(), "pod-a");
    let holder_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let guard = holder_runtime
        .block_on(lock.acquire("k", AcquireOptions::new()))
        .unwrap();
    let token = guard.cancellation_token();
    assert!(!token.is_cancelled());

    // The renewal task dies with its runtime: nobody renews the Lease any more.
    drop(holder_runtime);

    assert!(token.is_cancelled(), "the critical section is told at once");
    assert!(!guard.is_valid());
    let observer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lost = observer.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), guard.lost())
            .await
            .expect("lost() resolves")
    });
    assert!(
        matches!(
            lost,
            Error::Lost {
                reason: LossReason::RenewalStopped,
                ..
            }
        ),
        "{lost}"
    );
    assert_eq!(lock.metrics().losses(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_dropped_outside_the_runtime_is_still_released_in_the_background() {
    let memory = MemoryLeases::new();
    let lock = lock_on(memory.clone(), "pod-a");
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();

    // Handed to a plain thread (a blocking pool, a callback) and dropped there.
    std::thread::spawn(move || drop(guard)).join().unwrap();

    let released = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let lease = memory.get(NS, "lock-k").await.unwrap().unwrap();
            if holder(&lease).is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(released.is_ok(), "released through the guard's runtime");
}

#[tokio::test(start_paused = true)]
async fn a_release_whose_caller_stops_waiting_still_completes() {
    let backend = Instrumented::memory();
    let lock = lock_on(backend.clone(), "pod-a");
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    backend.freeze(true);

    // The caller bounds the release and gives up while the API hangs.
    let gave_up = tokio::time::timeout(Duration::from_secs(1), guard.release()).await;
    assert!(gave_up.is_err());
    backend.freeze(false);
    settle().await;

    let lease = backend.get(NS, "lock-k").await.unwrap().unwrap();
    assert_eq!(
        holder(&lease),
        None,
        "released, not left held until it expires"
    );
}

/// `held_lease` with its holder marked as waiting for `waits_for`.
fn waiting_lease(name: &str, holder: &str, waits_for: &str) -> crate::Lease {
    let mut lease = held_lease(name, Some(holder), 1, Duration::ZERO);
    lease.metadata.annotations =
        Some([(WAITING_FOR_ANNOTATION.to_owned(), waits_for.to_owned())].into());
    lease
}

#[tokio::test(start_paused = true)]
async fn a_stuck_wait_for_walk_does_not_outlive_the_acquire_timeout() {
    let memory = MemoryLeases::new();
    memory
        .create(NS, &waiting_lease("lock-y", "pod-b/1", "lock-z"))
        .await
        .unwrap();
    let backend = super::Faulty {
        stalled_gets: vec!["lock-z".into()],
        ..super::Faulty::new(memory.clone())
    };
    let lock = lock_on(backend, "pod-a");
    let x = lock.acquire("x", AcquireOptions::new()).await.unwrap();
    let started = Instant::now();

    let result = tokio::time::timeout(
        Duration::from_secs(60),
        lock.acquire("y", wait_up_to(1).holding(&x)),
    )
    .await
    .expect("the acquisition ends by its own timeout");

    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_wait_for_edge_whose_write_was_cut_short_is_not_left_behind() {
    let memory = MemoryLeases::new();
    memory
        .create(
            NS,
            &held_lease("lock-y", Some("pod-b/1"), 1, Duration::ZERO),
        )
        .await
        .unwrap();
    let backend = super::Faulty {
        stall_annotation_writes: true,
        ..super::Faulty::new(memory.clone())
    };
    let lock = lock_on(backend, "pod-a");
    let x = lock.acquire("x", AcquireOptions::new()).await.unwrap();

    let result = lock.acquire("y", wait_up_to(1).holding(&x)).await;
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    // Past x's next renewals: they must not write the abandoned edge.
    tokio::time::sleep(Duration::from_secs(25)).await;

    assert!(x.is_valid(), "x kept renewing");
    let x_lease = memory.get(NS, "lock-x").await.unwrap().unwrap();
    assert!(
        !x_lease
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(WAITING_FOR_ANNOTATION),
        "no stale wait-for edge: it would make later waiters see false deadlocks"
    );
}

#[tokio::test(start_paused = true)]
async fn a_guard_released_while_declared_held_does_not_close_a_cycle() {
    let memory = MemoryLeases::new();
    let a = lock_on(memory.clone(), "pod-a");
    let x = a.acquire("x", AcquireOptions::new()).await.unwrap();
    let options = wait_up_to(1).holding(&x);
    x.release().await.unwrap();
    // Someone else now holds x and waits for y, whose holder waits for x:
    // a cycle we would be the victim of (greatest identity), if we still held x.
    let mut x_now = memory.get(NS, "lock-x").await.unwrap().unwrap();
    let spec = x_now.spec.as_mut().unwrap();
    spec.holder_identity = Some("pod-z/9".into());
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        jiff::Timestamp::now(),
    ));
    x_now.metadata.annotations =
        Some([(WAITING_FOR_ANNOTATION.to_owned(), "lock-y".to_owned())].into());
    memory.replace(NS, &x_now).await.unwrap();
    memory
        .create(NS, &waiting_lease("lock-y", "pod-0/1", "lock-x"))
        .await
        .unwrap();

    let result = a.acquire("y", options).await;

    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn garbage_collection_leaves_the_leases_of_a_longer_prefix_alone() {
    let memory = MemoryLeases::new();
    let day = Duration::from_secs(25 * 3600);
    memory
        .create(NS, &held_lease("cancel-1", None, 1, day))
        .await
        .unwrap();
    // Another lock, prefix "cancel-task", whose names also start with "cancel-".
    let mut other = held_lease("cancel-task-1", None, 1, day);
    other.metadata.labels.as_mut().unwrap().insert(
        crate::LOCK_PREFIX_LABEL.to_owned(),
        "cancel-task".to_owned(),
    );
    memory.create(NS, &other).await.unwrap();
    let cancel = LeaseLock::new(
        memory.clone(),
        crate::LockConfig {
            prefix: "cancel".into(),
            ..config("pod-a")
        },
    )
    .unwrap();

    let report = cancel.collect_garbage().await.unwrap();

    assert_eq!((report.examined, report.deleted), (1, 1));
    assert!(memory.get(NS, "cancel-1").await.unwrap().is_none());
    assert!(
        memory.get(NS, "cancel-task-1").await.unwrap().is_some(),
        "another lock's Lease, kept under that lock's own retention"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_recreated_after_garbage_collection_issues_tokens_above_the_old_ones() {
    let memory = MemoryLeases::new();
    let lock = LeaseLock::new(
        memory.clone(),
        crate::LockConfig {
            lease_duration: Duration::from_secs(1),
            renew_deadline: Duration::from_millis(600),
            renew_interval: Duration::from_millis(200),
            retention: Duration::from_secs(2),
            ..config("pod-a")
        },
    )
    .unwrap();
    let first = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    let old = first.fencing_token().clone();
    first.release().await.unwrap();
    // Wall-clock time (what retention and creationTimestamp measure).
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(lock.collect_garbage().await.unwrap().deleted, 1);

    let second = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    let new = second.fencing_token().clone();

    assert_ne!(new.lease_uid, old.lease_uid, "a new Lease object");
    assert_eq!(new.transitions, 0, "whose transitions start over");
    assert!(
        new > old,
        "yet its tokens order after the old object's: {new} vs {old}"
    );
    assert_eq!(old.partial_cmp(&new), Some(std::cmp::Ordering::Less));
}

#[test]
fn fencing_tokens_of_lease_objects_created_in_the_same_second_are_incomparable() {
    let at = |s: i64| Some(jiff::Timestamp::from_second(s).unwrap());
    let token = |uid: &str, transitions, created| crate::FencingToken {
        lease_uid: uid.into(),
        transitions,
        lease_created: created,
    };
    let (a5, a7) = (token("a", 5, at(100)), token("a", 7, at(100)));
    let b0 = token("b", 0, at(200));
    assert!(
        a5 < a7 && a7 < b0 && a5 < b0,
        "same object by transitions, then by creation"
    );
    assert_eq!(token("c", 0, at(100)).partial_cmp(&a5), None);
    assert_eq!(token("d", 9, None).partial_cmp(&a5), None);
}

#[tokio::test(start_paused = true)]
async fn a_watch_that_ends_right_behind_an_event_is_never_polled_again() {
    let memory = MemoryLeases::new();
    let a = lock_on(memory.clone(), "pod-a");
    let b = lock_on(
        super::Faulty {
            one_event_watches: true,
            ..super::Faulty::new(memory.clone())
        },
        "pod-b",
    );
    let _held = a.acquire("k", AcquireOptions::new()).await.unwrap();

    // The watch's one event is the Lease's current state (it is opened
    // without a version, after the CREATE's 409); the waiter goes on
    // waiting (by polling) until its timeout.
    let result = tokio::spawn(async move { b.acquire("k", wait_up_to(15)).await })
        .await
        .expect("the acquisition does not panic");

    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_watch_never_reports_the_lease_reads_it_and_polls_without_spinning() {
    let memory = MemoryLeases::new();
    let a = lock_on(memory.clone(), "pod-a");
    let b_backend = Instrumented::new(super::Faulty {
        silent_watches: true,
        ..super::Faulty::new(memory.clone())
    });
    let b = lock_on(b_backend.clone(), "pod-b");
    let held = a.acquire("k", AcquireOptions::new()).await.unwrap();
    let waiter = tokio::spawn(async move { b.acquire("k", wait_up_to(60)).await });

    // Within the longest backoff delay (2 s) a just opened watch is trusted
    // to bring the Lease's state: no read yet.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b_backend.count(Verb::Watch), 1);
    assert_eq!(b_backend.count(Verb::Get), 0);
    // Then it is read, and polled at the backoff's pace, not in a loop.
    tokio::time::sleep(Duration::from_millis(8500)).await;
    let gets = b_backend.count(Verb::Get);
    assert!((1..=8).contains(&gets), "{gets} GETs in 10 s");
    assert!(!waiter.is_finished(), "held by a all along");

    held.release().await.unwrap();
    let guard = waiter.await.unwrap().unwrap();
    assert_eq!(guard.fencing_token().transitions, 1);
    assert_eq!(b_backend.count(Verb::Watch), 1, "one watch, never reopened");
}

#[tokio::test(start_paused = true)]
async fn a_lease_of_another_lock_whose_name_collides_is_refused_not_shared() {
    let memory = MemoryLeases::new();
    let with_prefix = |prefix: &str| {
        LeaseLock::new(
            memory.clone(),
            crate::LockConfig {
                prefix: prefix.into(),
                ..config("pod-a")
            },
        )
        .unwrap()
    };
    let (cancel, cancel_task) = (with_prefix("cancel"), with_prefix("cancel-task"));
    // "cancel" + "task-1" and "cancel-task" + "1" both name `cancel-task-1`.
    let held = cancel
        .acquire("task-1", AcquireOptions::new())
        .await
        .unwrap();

    let err = cancel_task
        .acquire("1", AcquireOptions::new())
        .await
        .unwrap_err();

    assert!(
        matches!(&err, Error::InvalidLease { reason, .. } if reason.contains("\"cancel\"")),
        "{err}"
    );
    held.release().await.unwrap();
    assert!(
        matches!(
            cancel_task.try_acquire("1").await,
            Err(Error::InvalidLease { .. })
        ),
        "released or not, it is the other lock's Lease"
    );
}

#[tokio::test(start_paused = true)]
async fn releasing_a_guard_whose_renewal_task_died_clears_the_lease_if_still_ours() {
    let memory = MemoryLeases::new();
    let lock = lock_on(
        super::Faulty {
            panic_on_first_replace: true,
            ..super::Faulty::new(memory.clone())
        },
        "pod-a",
    );
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    let lost = guard.lost().await;
    assert!(
        matches!(
            lost,
            Error::Lost {
                reason: LossReason::RenewalStopped,
                ..
            }
        ),
        "{lost}"
    );

    assert!(matches!(guard.release().await, Err(Error::Lost { .. })));

    let lease = memory.get(NS, "lock-k").await.unwrap().unwrap();
    assert_eq!(
        holder(&lease),
        None,
        "the Lease, still ours, is cleared for the next holder"
    );
}

/// Issue 12, item 11: settings that overflow or make no sense are refused
/// with a message naming them, never a panic or a silent misbehaviour.
#[tokio::test(start_paused = true)]
async fn settings_that_overflow_or_make_no_sense_are_refused_with_a_clear_error() {
    let refused = |config: crate::LockConfig, names: &str| match config.validate() {
        Err(Error::InvalidConfig(message)) => {
            assert!(message.contains(names), "{message:?} names {names}")
        }
        other => panic!("{names}: expected InvalidConfig, got {other:?}"),
    };
    refused(
        crate::LockConfig {
            retention: Duration::ZERO,
            ..config("pod-a")
        },
        "retention",
    );
    refused(
        crate::LockConfig {
            retention: Duration::from_secs(59),
            ..config("pod-a")
        },
        "retention",
    );
    refused(
        crate::LockConfig {
            max_clock_skew: Some(Duration::MAX),
            ..config("pod-a")
        },
        "max_clock_skew",
    );
    refused(
        crate::LockConfig {
            acquire_timeout: Duration::MAX,
            ..config("pod-a")
        },
        "acquire_timeout",
    );
    refused(
        crate::LockConfig {
            handoff_stagger: Duration::MAX,
            ..config("pod-a")
        },
        "handoff_stagger",
    );
    assert!(
        crate::LockConfig {
            retention: Duration::from_secs(60),
            max_clock_skew: Some(Duration::from_secs(5)),
            handoff_stagger: Duration::ZERO,
            ..config("pod-a")
        }
        .validate()
        .is_ok()
    );

    // A per-call timeout is checked when the call is made: before, the
    // deadline `now + Duration::MAX` overflowed and panicked.
    let lock = lock_on(MemoryLeases::new(), "pod-a");
    let result = lock
        .acquire("k", AcquireOptions::new().timeout(Duration::MAX))
        .await;
    assert!(
        matches!(&result, Err(Error::InvalidConfig(m)) if m.contains("timeout")),
        "{result:?}"
    );
    assert!(
        lock.try_acquire("k").await.unwrap().is_some(),
        "nothing was left held"
    );
}

/// Issue 12, item 4: the caller's cancellation arrives together with the
/// answer of the acquiring write. The answer sat in the channel, the
/// spawned writer had handed it over (so it would not give it back), and the
/// acquisition returned `Cancelled`: an identity nobody renews held the key
/// for a lease duration.
#[tokio::test(start_paused = true)]
async fn a_lease_won_as_the_caller_gives_up_is_given_back() {
    let memory = MemoryLeases::new();
    let cancel = CancellationToken::new();
    let a = lock_on(
        super::Faulty {
            cancel_after_write: Some(cancel.clone()),
            ..super::Faulty::new(memory.clone())
        },
        "pod-a",
    );

    let result = a
        .acquire("k", AcquireOptions::new().cancel_on(cancel.clone()))
        .await;
    settle().await;

    assert!(matches!(result, Err(Error::Cancelled { .. })), "{result:?}");
    let lease = memory.get(NS, "lock-k").await.unwrap().unwrap();
    assert_eq!(holder(&lease), None, "the won Lease was given back");
    let b = lock_on(memory.clone(), "pod-b");
    assert!(b.try_acquire("k").await.unwrap().is_some());
}

/// The same with the caller's future dropped (a `select!` that took another
/// branch) while the answer was in the channel.
#[tokio::test(start_paused = true)]
async fn a_lease_won_as_the_caller_drops_the_acquisition_is_given_back() {
    let memory = MemoryLeases::new();
    let elsewhere = CancellationToken::new();
    let a = lock_on(
        super::Faulty {
            cancel_after_write: Some(elsewhere.clone()),
            ..super::Faulty::new(memory.clone())
        },
        "pod-a",
    );

    let acquired = tokio::select! {
        biased;
        () = elsewhere.cancelled() => None,
        guard = a.acquire("k", AcquireOptions::new()) => Some(guard),
    };
    settle().await;

    assert!(acquired.is_none(), "the other branch won");
    let lease = memory.get(NS, "lock-k").await.unwrap().unwrap();
    assert_eq!(holder(&lease), None, "the won Lease was given back");
    assert!(a.try_acquire("k").await.unwrap().is_some());
}

/// `n` locks (processes) on `backend`, their turns seeded so that a run is
/// reproducible.
fn crowd(backend: &Instrumented<MemoryLeases>, n: usize, seed: u64) -> Vec<LeaseLock> {
    (0..n)
        .map(|i| {
            let lock = lock_on(backend.clone(), &format!("pod-{i}"));
            lock.inner().seed_turns(seed * 1000 + i as u64);
            lock
        })
        .collect()
}

/// Each lock of `crowd` acquires `key` once, holds it 5 ms and releases it.
async fn take_turns(crowd: Vec<LeaseLock>, key: &'static str) -> Turns {
    let tasks: Vec<_> = crowd
        .into_iter()
        .map(|lock| {
            tokio::spawn(async move {
                let guard = lock.acquire(key, wait_up_to(120)).await.unwrap();
                let transitions = guard.fencing_token().transitions;
                tokio::time::sleep(Duration::from_millis(5)).await;
                guard.release().await.unwrap();
                (transitions, lock.metrics().races_lost())
            })
        })
        .collect();
    let mut turns = Turns {
        transitions: Vec::new(),
        races_lost: 0,
    };
    for task in tasks {
        let (transitions, lost) = task.await.unwrap();
        turns.transitions.push(transitions);
        turns.races_lost += lost;
    }
    turns.transitions.sort_unstable();
    turns
}

const CROWD: usize = 10;

/// What a crowd's acquisitions of one key showed.
struct Turns {
    /// The `leaseTransitions` of each acquisition's token, sorted.
    transitions: Vec<u64>,
    /// Takeover writes the crowd's locks counted as lost.
    races_lost: u64,
}

impl Turns {
    /// Every lock held the key once, the `CROWD` acquisitions' tokens
    /// counting up from `first`; `conflicts` (the replaces that were neither
    /// a take nor a release) are the races the locks counted as lost, and
    /// few: racing for every handoff would cost 9 + 8 + … + 1 = 45.
    fn assert_few_conflicts(&self, seed: u64, conflicts: u64, first: u64) {
        assert!(
            conflicts <= 3,
            "seed {seed}: {conflicts} conflicting takeovers in {CROWD} acquisitions"
        );
        assert_eq!(conflicts, self.races_lost);
        let expected: Vec<u64> = (first..first + CROWD as u64).collect();
        assert_eq!(self.transitions, expected);
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_of_a_released_lease_take_turns_instead_of_racing_for_it() {
    for seed in 0..8 {
        let backend = Instrumented::memory();
        let holder = lock_on(backend.clone(), "holder");
        let held = holder.acquire("k", AcquireOptions::new()).await.unwrap();
        let waiters = tokio::spawn(take_turns(crowd(&backend, CROWD, seed), "k"));
        // Every waiter is waiting on its watch.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = backend.count(Verb::Replace);
        held.release().await.unwrap();
        let turns = waiters.await.unwrap();

        // The holder's release, then a take and a release per waiter.
        let conflicts = backend.count(Verb::Replace) - before - 1 - 2 * CROWD as u64;
        turns.assert_few_conflicts(seed, conflicts, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_of_an_expired_lease_take_turns_to_take_it_over() {
    for seed in 0..4 {
        let memory = MemoryLeases::new();
        let crashed_backend = Instrumented::new(memory.clone());
        let crashed = lock_on(crashed_backend.clone(), "crashed");
        let _held = crashed.acquire("k", AcquireOptions::new()).await.unwrap();
        crashed_backend.freeze(true);
        let backend = Instrumented::new(memory);
        let started = Instant::now();

        let turns = take_turns(crowd(&backend, CROWD, seed), "k").await;

        assert!(started.elapsed() >= Duration::from_secs(30));
        let conflicts = backend.count(Verb::Replace) - 2 * CROWD as u64;
        turns.assert_few_conflicts(seed, conflicts, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_crowd_acquiring_a_new_key_at_once_takes_turns_after_the_first_create() {
    for seed in 0..8 {
        let backend = Instrumented::memory();

        let turns = take_turns(crowd(&backend, CROWD, seed), "k").await;

        // One create wins; the others read the Lease and take it in turn.
        assert_eq!(backend.count(Verb::Create), CROWD as u64);
        let conflicts = backend.count(Verb::Replace) - (2 * CROWD as u64 - 1);
        turns.assert_few_conflicts(seed, conflicts, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn re_acquiring_a_key_just_released_takes_a_turn_instead_of_cutting_in() {
    let backend = Instrumented::memory();
    let lock = lock_on(backend.clone(), "pod-a");
    lock.inner().seed_turns(1);
    let stagger = lock.config().handoff_stagger;
    lock.acquire("k", AcquireOptions::new())
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let before = backend.requests();

    // Waiters of the release may be counting down: wait a turn like them.
    let released_at = Instant::now();
    let again = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    let waited = again.acquired_at() - released_at;
    assert!(
        !waited.is_zero() && waited < stagger,
        "re-acquired {waited:?} after releasing"
    );
    assert_eq!(
        backend.requests() - before,
        1,
        "alone it still costs one write"
    );
    assert_eq!(backend.count(Verb::Watch), 0, "and no watch");
    again.release().await.unwrap();

    // Long after the release nobody can be counting down: at once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let asked_at = Instant::now();
    let later = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    assert_eq!(later.acquired_at(), asked_at);
    later.release().await.unwrap();
}
