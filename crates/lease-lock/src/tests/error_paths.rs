//! Every error path of the algorithm, driven by a mockall mock of the
//! backend so each failure happens exactly where the test says.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mockall::predicate::eq;
use tokio::time::Instant;

use super::{NS, config, forbidden, held_lease, holder, stored, unavailable};
use crate::{AcquireOptions, Error, Lease, LeaseLock, LossReason, MockLeaseBackend};

/// A mock whose watch never reports anything (the lock then polls).
fn mock() -> MockLeaseBackend {
    let mut m = MockLeaseBackend::new();
    m.expect_watch()
        .returning(|_, _, _| Box::pin(futures::stream::pending()));
    m
}

/// What a server returns for a successful write of `lease`.
fn written(lease: &Lease) -> Lease {
    let version = lease
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let uid = lease.metadata.uid.clone().unwrap_or_else(|| "uid-1".into());
    stored(lease.clone(), &uid, version + 1)
}

/// `n` calls fail with `error()`, later ones succeed with `written`.
fn fail_first(n: u32, error: fn() -> Error) -> impl FnMut(&str, &Lease) -> Result<Lease, Error> {
    let calls = AtomicU32::new(0);
    move |_, lease| {
        if calls.fetch_add(1, Ordering::SeqCst) < n {
            Err(error())
        } else {
            Ok(written(lease))
        }
    }
}

fn lock_on(m: MockLeaseBackend) -> LeaseLock {
    LeaseLock::new(m, config("pod-a")).unwrap()
}

fn released(transitions: i32) -> Lease {
    stored(
        held_lease("lock-k", None, transitions, Duration::ZERO),
        "uid-1",
        5,
    )
}

fn already_exists() -> Error {
    Error::AlreadyExists {
        name: "lock-k".into(),
    }
}

fn conflict() -> Error {
    Error::Conflict {
        name: "lock-k".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_transient_create_failure_is_retried_after_a_backoff() {
    let mut m = mock();
    m.expect_create()
        .times(2)
        .returning(fail_first(1, unavailable));
    m.expect_replace().returning(|_, l| Ok(written(l)));
    let lock = lock_on(m);
    let started = Instant::now();

    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();

    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(37) && waited <= Duration::from_millis(63),
        "{waited:?}"
    );
    assert_eq!(guard.fencing_token().transitions, 0);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_api_error_fails_the_acquisition_at_once() {
    let mut m = mock();
    m.expect_create()
        .times(1)
        .returning(|_, _| Err(forbidden()));
    let lock = lock_on(m);

    let err = lock.acquire("k", AcquireOptions::new()).await.unwrap_err();

    assert!(matches!(err, Error::Api { status: 403, .. }), "{err}");
    assert_eq!(lock.metrics().failures("api"), 1);
}

#[tokio::test(start_paused = true)]
async fn an_api_that_keeps_failing_is_reported_as_the_api_error_not_as_a_timeout() {
    let mut m = mock();
    m.expect_create().returning(|_, _| Err(unavailable()));
    let lock = lock_on(m);

    let err = lock.acquire("k", AcquireOptions::new()).await.unwrap_err();

    assert!(matches!(err, Error::Api { status: 503, .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn try_acquire_reports_an_api_failure_as_an_error_never_as_not_acquired() {
    let mut m = mock();
    m.expect_create()
        .times(1)
        .returning(|_, _| Err(unavailable()));
    let lock = lock_on(m);
    assert!(matches!(
        lock.try_acquire("k").await,
        Err(Error::Api { status: 503, .. })
    ));

    let mut m = mock();
    m.expect_create().returning(|_, _| Err(already_exists()));
    m.expect_get().times(1).returning(|_, _| Err(unavailable()));
    let lock = lock_on(m);
    assert!(matches!(
        lock.try_acquire("k").await,
        Err(Error::Api { status: 503, .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_lease_deleted_between_create_and_read_is_created_again() {
    let mut m = mock();
    let creates = AtomicU32::new(0);
    m.expect_create().times(2).returning(move |_, lease| {
        if creates.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(already_exists())
        } else {
            Ok(written(lease))
        }
    });
    m.expect_get().times(1).returning(|_, _| Ok(None));
    m.expect_replace().returning(|_, l| Ok(written(l)));

    let guard = lock_on(m).try_acquire("k").await.unwrap();

    assert!(guard.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_lease_deleted_before_the_taking_write_is_created_again() {
    let mut m = mock();
    let creates = AtomicU32::new(0);
    m.expect_create().times(2).returning(move |_, lease| {
        if creates.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(already_exists())
        } else {
            Ok(written(lease))
        }
    });
    m.expect_get()
        .times(1)
        .returning(|_, _| Ok(Some(released(4))));
    let replaces = AtomicU32::new(0);
    m.expect_replace().returning(move |_, l| {
        if replaces.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(Error::NotFound {
                name: "lock-k".into(),
            })
        } else {
            Ok(written(l))
        }
    });

    let guard = lock_on(m).try_acquire("k").await.unwrap().unwrap();

    assert_eq!(
        guard.fencing_token().transitions,
        0,
        "a new object starts over"
    );
}

#[tokio::test(start_paused = true)]
async fn losing_the_race_for_a_released_lease_is_not_acquired_in_try_mode() {
    let mut m = mock();
    m.expect_create().returning(|_, _| Err(already_exists()));
    let reads = AtomicU32::new(0);
    m.expect_get().times(2).returning(move |_, _| {
        if reads.fetch_add(1, Ordering::SeqCst) == 0 {
            Ok(Some(released(4)))
        } else {
            let winner = held_lease("lock-k", Some("pod-b/1"), 5, Duration::ZERO);
            Ok(Some(stored(winner, "uid-1", 6)))
        }
    });
    m.expect_replace()
        .times(1)
        .returning(|_, _| Err(conflict()));
    let lock = lock_on(m);

    assert!(lock.try_acquire("k").await.unwrap().is_none());
    assert_eq!(lock.metrics().acquisitions(), 0);
}

#[tokio::test(start_paused = true)]
async fn renewals_failing_until_the_deadline_lose_the_lock_at_the_deadline() {
    let mut m = mock();
    m.expect_create().returning(|_, l| Ok(written(l)));
    m.expect_replace().returning(|_, _| Err(unavailable()));
    let lock = lock_on(m);
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    let deadline = guard.valid_until();

    let lost = guard.lost().await;

    assert_eq!(Instant::now(), deadline);
    assert!(matches!(
        lost,
        Error::Lost {
            reason: LossReason::RenewDeadline,
            ..
        }
    ));
    assert!(
        lock.metrics().renew_failures.get() >= 5,
        "retried with backoff until the deadline"
    );
    assert_eq!(lock.metrics().losses(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_read_failure_after_a_conflict_is_retried_and_the_lock_kept() {
    let mut m = mock();
    m.expect_create().returning(|_, l| Ok(written(l)));
    let replaces = AtomicU32::new(0);
    m.expect_replace().returning(move |_, l| {
        if replaces.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(conflict())
        } else {
            Ok(written(l))
        }
    });
    m.expect_get().times(1).returning(|_, _| Err(unavailable()));
    let lock = lock_on(m);
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();

    tokio::time::sleep(Duration::from_secs(15)).await;

    assert!(guard.is_valid());
    assert_eq!(lock.metrics().renew_failures.get(), 1);
}

/// A mock whose create succeeds and remembers what it stored, so later
/// expectations can answer with "our" Lease at a newer version.
fn mock_remembering_create() -> (MockLeaseBackend, Arc<Mutex<Option<Lease>>>) {
    let mut m = mock();
    let created = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&created);
    m.expect_create().returning(move |_, l| {
        let lease = written(l);
        *slot.lock().unwrap() = Some(lease.clone());
        Ok(lease)
    });
    (m, created)
}

/// The remembered Lease at resourceVersion `version`, optionally with
/// another holder.
fn reread(created: &Mutex<Option<Lease>>, version: u64, other_holder: Option<&str>) -> Lease {
    let mut lease = created.lock().unwrap().clone().unwrap();
    lease.metadata.resource_version = Some(version.to_string());
    if let Some(other) = other_holder {
        lease.spec.as_mut().unwrap().holder_identity = Some(other.into());
    }
    lease
}

#[tokio::test(start_paused = true)]
async fn release_rereads_after_a_conflict_and_clears_what_is_still_ours() {
    let (mut m, created) = mock_remembering_create();
    let slot = Arc::clone(&created);
    m.expect_get()
        .times(1)
        .returning(move |_, _| Ok(Some(reread(&slot, 9, None))));
    let last_write = Arc::new(Mutex::new(None::<Lease>));
    let seen = Arc::clone(&last_write);
    let replaces = AtomicU32::new(0);
    m.expect_replace().times(2).returning(move |_, l| {
        *seen.lock().unwrap() = Some(l.clone());
        if replaces.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(conflict())
        } else {
            Ok(written(l))
        }
    });
    let lock = lock_on(m);
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();

    guard.release().await.unwrap();

    let cleared = last_write.lock().unwrap().clone().unwrap();
    assert_eq!(holder(&cleared), None);
    assert_eq!(
        cleared.metadata.resource_version.as_deref(),
        Some("9"),
        "conditional on the re-read version"
    );
}

/// A Lease written over again and again while we release it (each re-read
/// still ours, at a newer version): every write is conditional on the
/// latest re-read, however many conflicts came before. Never one known to be
/// stale, which could only conflict until the deadline.
#[tokio::test(start_paused = true)]
async fn release_keeps_re_reading_past_repeated_conflicts_and_never_writes_a_stale_version() {
    let (mut m, created) = mock_remembering_create();
    let slot = Arc::clone(&created);
    let reads = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&reads);
    m.expect_get().returning(move |_, _| {
        let version = 10 + u64::from(r.fetch_add(1, Ordering::SeqCst));
        Ok(Some(reread(&slot, version, None)))
    });
    let versions = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&versions);
    m.expect_replace().returning(move |_, l| {
        let mut seen = seen.lock().unwrap();
        seen.push(l.metadata.resource_version.clone().unwrap_or_default());
        // Five conflicts in a row, then the write lands.
        if seen.len() <= 5 {
            Err(conflict())
        } else {
            Ok(written(l))
        }
    });
    let lock = lock_on(m);
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();

    guard.release().await.unwrap();

    let versions = versions.lock().unwrap().clone();
    assert_eq!(versions.len(), 6, "{versions:?}");
    // The first write is on the acquired version; each later one on the
    // re-read that followed the conflict before it.
    let expected: Vec<String> = (10..15).map(|v: u64| v.to_string()).collect();
    assert_eq!(versions[1..], expected[..], "{versions:?}");
}

#[tokio::test(start_paused = true)]
async fn release_after_a_takeover_reports_lost_and_writes_nothing_more() {
    let (mut m, created) = mock_remembering_create();
    let slot = Arc::clone(&created);
    m.expect_get()
        .times(1)
        .returning(move |_, _| Ok(Some(reread(&slot, 9, Some("pod-b/1")))));
    m.expect_replace()
        .times(1)
        .returning(|_, _| Err(conflict()));
    let lock = lock_on(m);
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();

    let err = guard.release().await.unwrap_err();

    assert!(
        matches!(&err, Error::Lost { reason: LossReason::TakenOver { holder }, .. } if holder == "pod-b/1"),
        "{err}"
    );
    assert_eq!(lock.metrics().losses(), 1);
}

#[tokio::test(start_paused = true)]
async fn release_of_a_deleted_lease_reports_lost() {
    let (mut m, _) = mock_remembering_create();
    m.expect_replace().times(1).returning(|_, _| {
        Err(Error::NotFound {
            name: "lock-k".into(),
        })
    });
    let guard = lock_on(m)
        .acquire("k", AcquireOptions::new())
        .await
        .unwrap();

    let err = guard.release().await.unwrap_err();

    assert!(
        matches!(
            err,
            Error::Lost {
                reason: LossReason::Deleted,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_transient_release_failure_is_retried() {
    let (mut m, _) = mock_remembering_create();
    m.expect_replace()
        .times(3)
        .returning(fail_first(2, unavailable));
    let guard = lock_on(m)
        .acquire("k", AcquireOptions::new())
        .await
        .unwrap();

    assert!(guard.release().await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_permanent_release_failure_is_returned() {
    let (mut m, _) = mock_remembering_create();
    m.expect_replace()
        .times(1)
        .returning(|_, _| Err(forbidden()));
    let guard = lock_on(m)
        .acquire("k", AcquireOptions::new())
        .await
        .unwrap();

    assert!(matches!(
        guard.release().await,
        Err(Error::Api { status: 403, .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn an_acquired_lease_without_a_uid_is_refused_and_given_back() {
    let mut m = mock();
    m.expect_create().returning(|_, l| {
        let mut lease = written(l);
        lease.metadata.uid = None;
        Ok(lease)
    });
    let given_back = Arc::new(Mutex::new(None::<Lease>));
    let slot = Arc::clone(&given_back);
    m.expect_replace().times(1).returning(move |_, l| {
        *slot.lock().unwrap() = Some(l.clone());
        Ok(written(l))
    });
    let lock = lock_on(m);

    let err = lock.acquire("k", AcquireOptions::new()).await.unwrap_err();
    super::settle().await;

    assert!(matches!(err, Error::InvalidLease { .. }), "{err}");
    let given_back = given_back
        .lock()
        .unwrap()
        .clone()
        .expect("released in the background");
    assert_eq!(holder(&given_back), None);
}

#[tokio::test(start_paused = true)]
async fn exhausted_lease_transitions_are_an_error_not_a_wraparound() {
    let mut m = mock();
    m.expect_create().returning(|_, _| Err(already_exists()));
    m.expect_get()
        .returning(|_, _| Ok(Some(released(i32::MAX))));
    m.expect_replace().never();
    let lock = lock_on(m);

    let err = lock.try_acquire("k").await.unwrap_err();

    assert!(matches!(err, Error::InvalidLease { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn garbage_collection_reports_list_failures_and_skips_leases_that_changed() {
    let mut m = mock();
    m.expect_list()
        .times(1)
        .returning(|_, _| Err(unavailable()));
    assert!(lock_on(m).collect_garbage().await.is_err());

    let mut m = mock();
    m.expect_list()
        .with(
            eq(NS),
            eq("app.kubernetes.io/managed-by=supersede-lease-lock,supersede.dev/lock-prefix=lock"),
        )
        .returning(|_, _| {
            let old = held_lease("lock-old", None, 1, Duration::from_secs(48 * 3600));
            Ok(vec![stored(old, "uid-7", 3)])
        });
    m.expect_delete()
        .with(eq(NS), eq("lock-old"), eq("uid-7"), eq("3"))
        .times(1)
        .returning(|_, _, _, _| Err(conflict()));
    let report = lock_on(m).collect_garbage().await.unwrap();
    assert_eq!((report.examined, report.deleted, report.raced), (1, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_failing_wait_for_walk_does_not_fail_the_acquisition() {
    let mut m = mock();
    m.expect_create()
        .withf(|_, l| l.metadata.name.as_deref() == Some("lock-x"))
        .returning(|_, l| Ok(written(l)));
    m.expect_create()
        .withf(|_, l| l.metadata.name.as_deref() == Some("lock-y"))
        .returning(|_, _| {
            Err(Error::AlreadyExists {
                name: "lock-y".into(),
            })
        });
    m.expect_get().with(eq(NS), eq("lock-y")).returning(|_, _| {
        let mut y = held_lease("lock-y", Some("pod-b/1"), 1, Duration::ZERO);
        y.metadata.annotations = Some(
            [(
                crate::WAITING_FOR_ANNOTATION.to_owned(),
                "lock-z".to_owned(),
            )]
            .into(),
        );
        Ok(Some(stored(y, "uid-y", 4)))
    });
    m.expect_get()
        .with(eq(NS), eq("lock-z"))
        .returning(|_, _| Err(unavailable()));
    m.expect_replace().returning(|_, l| Ok(written(l)));
    let lock = lock_on(m);
    let x = lock.acquire("x", AcquireOptions::new()).await.unwrap();

    let err = lock
        .acquire(
            "y",
            AcquireOptions::new()
                .timeout(Duration::from_secs(1))
                .holding(&x),
        )
        .await
        .unwrap_err();

    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert_eq!(lock.metrics().deadlocks(), 0);
}

fn answer_lost() -> Error {
    Error::Transport {
        message: "connection reset after the request was sent".into(),
        source: None,
    }
}

#[tokio::test(start_paused = true)]
async fn an_acquiring_write_that_landed_without_an_answer_is_recognised_as_ours() {
    let mut m = mock();
    let landed = Arc::new(Mutex::new(None::<Lease>));
    let slot = Arc::clone(&landed);
    m.expect_create().times(2).returning(move |_, l| {
        let mut slot = slot.lock().unwrap();
        if slot.is_none() {
            *slot = Some(written(l));
            Err(answer_lost())
        } else {
            Err(already_exists())
        }
    });
    let slot = Arc::clone(&landed);
    m.expect_get()
        .times(1)
        .returning(move |_, _| Ok(slot.lock().unwrap().clone()));
    let confirmed = Arc::new(Mutex::new(None::<Lease>));
    let slot = Arc::clone(&confirmed);
    m.expect_replace().returning(move |_, l| {
        slot.lock().unwrap().get_or_insert_with(|| l.clone());
        Ok(written(l))
    });
    let lock = lock_on(m);
    let started = Instant::now();

    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();

    let confirmed = confirmed
        .lock()
        .unwrap()
        .clone()
        .expect("a confirming write");
    assert_eq!(holder(&confirmed).as_deref(), Some(guard.holder_identity()));
    let landed = landed.lock().unwrap().clone().unwrap();
    assert_eq!(holder(&landed).as_deref(), Some(guard.holder_identity()));
    assert_eq!(
        guard.fencing_token().transitions,
        0,
        "the same acquisition, the same token"
    );
    assert!(
        guard.valid_until() > started + Duration::from_secs(20),
        "guaranteed from the confirming write, sent after the backoff"
    );
    assert_eq!(lock.metrics().takeovers(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_release_that_landed_without_an_answer_is_not_reported_as_a_loss() {
    let (mut m, _) = mock_remembering_create();
    let landed = Arc::new(Mutex::new(None::<Lease>));
    let slot = Arc::clone(&landed);
    m.expect_replace().times(2).returning(move |_, l| {
        let mut slot = slot.lock().unwrap();
        if slot.is_none() {
            *slot = Some(written(l));
            Err(answer_lost())
        } else {
            Err(conflict())
        }
    });
    let slot = Arc::clone(&landed);
    m.expect_get()
        .times(1)
        .returning(move |_, _| Ok(slot.lock().unwrap().clone()));
    let lock = lock_on(m);
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();

    guard.release().await.unwrap();

    assert_eq!(lock.metrics().losses(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_release_that_landed_before_the_next_holder_took_the_lease_is_not_a_loss() {
    let (mut m, created) = mock_remembering_create();
    m.expect_replace().times(2).returning(|_, l| {
        if holder(l).is_none() {
            // The first release lands, its answer is lost; the retry conflicts.
            static ATTEMPTS: AtomicU32 = AtomicU32::new(0);
            if ATTEMPTS.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(answer_lost());
            }
            return Err(conflict());
        }
        Ok(written(l))
    });
    let slot = Arc::clone(&created);
    m.expect_get().times(1).returning(move |_, _| {
        // Meanwhile pod-b took the released Lease (transitions 0 → 1).
        let mut next = reread(&slot, 12, Some("pod-b/1"));
        next.spec.as_mut().unwrap().lease_transitions = Some(1);
        Ok(Some(next))
    });
    let lock = lock_on(m);
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();

    guard.release().await.unwrap();

    assert_eq!(lock.metrics().losses(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_task_that_panics_reports_the_loss_at_once() {
    let mut m = mock();
    m.expect_create().returning(|_, l| Ok(written(l)));
    m.expect_replace()
        .returning(|_, _| panic!("injected: a bug in the backend"));
    let lock = lock_on(m);
    let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    let deadline = guard.valid_until();

    let lost = tokio::time::timeout(Duration::from_secs(60), guard.lost())
        .await
        .expect("lost() resolves although the renewal task died");

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
    assert!(
        Instant::now() < deadline,
        "at the panic, not at the deadline"
    );
    assert!(guard.cancellation_token().is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn a_try_acquire_whose_write_landed_without_an_answer_gives_the_lease_back() {
    let mut m = mock();
    let landed = Arc::new(Mutex::new(None::<Lease>));
    let slot = Arc::clone(&landed);
    m.expect_create().times(1).returning(move |_, l| {
        *slot.lock().unwrap() = Some(written(l));
        Err(answer_lost())
    });
    let slot = Arc::clone(&landed);
    m.expect_get()
        .times(1)
        .returning(move |_, _| Ok(slot.lock().unwrap().clone()));
    let given_back = Arc::new(Mutex::new(None::<Lease>));
    let slot = Arc::clone(&given_back);
    m.expect_replace().times(1).returning(move |_, l| {
        *slot.lock().unwrap() = Some(l.clone());
        Ok(written(l))
    });
    let lock = lock_on(m);

    let err = lock.try_acquire("k").await.unwrap_err();
    super::settle().await;

    assert!(matches!(err, Error::Transport { .. }), "{err}");
    let landed = landed.lock().unwrap().clone().unwrap();
    let given_back = given_back
        .lock()
        .unwrap()
        .clone()
        .expect("the hold that landed unseen is released, not left to expire");
    assert_eq!(holder(&given_back), None);
    assert_eq!(
        given_back.metadata.resource_version, landed.metadata.resource_version,
        "conditional on the version that holds our identity"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_acquisition_never_releases_a_lease_it_does_not_hold() {
    let mut m = mock();
    m.expect_create()
        .times(1)
        .returning(|_, _| Err(answer_lost()));
    // The write did not land after all: someone else holds the Lease.
    m.expect_get().times(1).returning(|_, _| {
        let other = held_lease("lock-k", Some("pod-b/1"), 3, Duration::ZERO);
        Ok(Some(stored(other, "uid-1", 8)))
    });
    m.expect_replace().never();
    let lock = lock_on(m);

    assert!(lock.try_acquire("k").await.is_err());
    super::settle().await;
}

#[tokio::test(start_paused = true)]
async fn a_server_asking_for_a_pause_gets_it_before_the_retry() {
    let mut m = mock();
    m.expect_create()
        .times(2)
        .returning(fail_first(1, || Error::Api {
            status: 429,
            reason: "TooManyRequests".into(),
            message: "injected".into(),
            retry_after: Some(Duration::from_secs(3)),
        }));
    m.expect_replace().returning(|_, l| Ok(written(l)));
    let lock = lock_on(m);
    let started = Instant::now();

    lock.acquire("k", AcquireOptions::new().timeout(Duration::from_secs(10)))
        .await
        .unwrap();

    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "retried after {:?}, before the server's Retry-After",
        started.elapsed()
    );
}

/// An API server that accepts every call and never answers (a partition).
struct Silent;

#[async_trait::async_trait]
impl crate::LeaseBackend for Silent {
    async fn get(&self, _: &str, _: &str) -> Result<Option<Lease>, Error> {
        std::future::pending().await
    }
    async fn create(&self, _: &str, _: &Lease) -> Result<Lease, Error> {
        std::future::pending().await
    }
    async fn replace(&self, _: &str, _: &Lease) -> Result<Lease, Error> {
        std::future::pending().await
    }
    async fn delete(&self, _: &str, _: &str, _: &str, _: &str) -> Result<(), Error> {
        std::future::pending().await
    }
    async fn list(&self, _: &str, _: &str) -> Result<Vec<Lease>, Error> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn an_api_server_that_never_answers_is_reported_as_unanswered_not_as_contention() {
    let lock = LeaseLock::new(Silent, config("pod-a")).unwrap();

    let err = lock
        .acquire(
            "k",
            AcquireOptions::new().timeout(std::time::Duration::from_secs(5)),
        )
        .await
        .unwrap_err();

    assert!(matches!(err, Error::Unanswered { .. }), "{err}");
    assert!(
        err.to_string().contains("no answer from the API server"),
        "{err}"
    );
    assert_eq!(lock.metrics().failures("unanswered"), 1);
    assert_eq!(lock.metrics().failures("timeout"), 0);
    // The outage shows in the wait histogram, not only in the failures.
    let mut registry = prometheus_client::registry::Registry::default();
    lock.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("lease_lock_wait_duration_seconds_count{outcome=\"timeout\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("lease_lock_wait_duration_seconds_sum{outcome=\"timeout\"} 5.0"),
        "waited the whole timeout: {text}"
    );
}
