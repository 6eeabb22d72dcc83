//! `CreateOnce`: one creator across replicas. Many processes (one
//! `LeaseLock` each) sharing one `MemoryLeases`, on paused time; the thing
//! created is a cell the closures read and write, and what is asserted is
//! how many times the create ran and what every caller got back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use lease_lock::{
    CreateOnce, Error, Lease, LeaseBackend, LeaseEvent, LeaseLock, LeaseSpec, LockConfig,
    MemoryLeases, OnceError, Outcome,
};
use tokio::time::Instant;

const NAMESPACE: &str = "default";

/// The thing being created: at most one value, and how often a create ran.
#[derive(Default)]
struct Thing {
    value: Mutex<Option<String>>,
    creates: AtomicUsize,
}

impl Thing {
    async fn check(&self) -> Result<Option<String>, std::io::Error> {
        Ok(self.value.lock().unwrap().clone())
    }

    async fn create(&self, by: String, takes: Duration) -> Result<String, std::io::Error> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(takes).await;
        *self.value.lock().unwrap() = Some(by.clone());
        Ok(by)
    }
}

fn replica(leases: &MemoryLeases, name: &str) -> CreateOnce {
    let lock = LeaseLock::new(leases.clone(), LockConfig::new(name, NAMESPACE)).unwrap();
    CreateOnce::new(lock).with_timeout(Duration::from_secs(60))
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_on_ten_replicas_create_once_and_all_get_the_one_thing() {
    let leases = MemoryLeases::new();
    let thing = Arc::new(Thing::default());
    let mut calls = Vec::new();
    for r in 0..10 {
        let once = replica(&leases, &format!("replica-{r}"));
        for c in 0..10 {
            let (once, thing) = (once.clone(), Arc::clone(&thing));
            calls.push(tokio::spawn(async move {
                let by = format!("replica-{r}/call-{c}");
                once.run(
                    "fingerprint-1",
                    || thing.check(),
                    || thing.create(by, Duration::from_millis(20)),
                )
                .await
            }));
        }
    }
    let mut created = Vec::new();
    let mut values = Vec::new();
    for call in calls {
        let outcome = call.await.unwrap().unwrap();
        if outcome.is_created() {
            created.push(outcome.clone());
        }
        values.push(outcome.into_inner());
    }
    assert_eq!(thing.creates.load(Ordering::SeqCst), 1);
    assert_eq!(created.len(), 1, "exactly one caller reports Created");
    let stored = thing.value.lock().unwrap().clone().unwrap();
    assert!(
        values.iter().all(|v| *v == stored),
        "every caller got the one thing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_contender_is_woken_by_the_release_not_by_a_fixed_sleep() {
    let leases = MemoryLeases::new();
    let thing = Arc::new(Thing::default());
    let (a, b) = (replica(&leases, "a"), replica(&leases, "b"));
    let creator = {
        let thing = Arc::clone(&thing);
        tokio::spawn(async move {
            a.run(
                "k",
                || thing.check(),
                || thing.create("a".into(), Duration::from_secs(1)),
            )
            .await
        })
    };
    // Let the creator take the lock and start its one-second create.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let started = Instant::now();
    let found = b
        .run(
            "k",
            || thing.check(),
            || thing.create("b".into(), Duration::ZERO),
        )
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(found, Outcome::Existing("a".into()));
    assert_eq!(
        creator.await.unwrap().unwrap(),
        Outcome::Created("a".into())
    );
    // Polling alone (50 ms doubling: 50, 150, 350, 750, 1550 ms) would find
    // it at 1.55 s; the release's watch event wakes it at 0.99 s.
    assert!(
        waited < Duration::from_millis(1_050),
        "woken {waited:?} after the start"
    );
    assert_eq!(thing.creates.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_existing_thing_is_found_without_any_lease_call() {
    let leases = MemoryLeases::new();
    let thing = Thing::default();
    *thing.value.lock().unwrap() = Some("old".into());
    let once = replica(&leases, "a");
    let outcome = once
        .run(
            "k",
            || thing.check(),
            || thing.create("new".into(), Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Existing("old".into()));
    assert!(
        leases.list(NAMESPACE, "").await.unwrap().is_empty(),
        "no Lease was created"
    );
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_died_is_taken_over_once_its_lease_expires_and_one_thing_is_created() {
    let leases = MemoryLeases::new();
    let once = replica(&leases, "survivor");
    // A replica killed while holding the key: its Lease stays, never renewed.
    let now = jiff::Timestamp::now();
    leases
        .create(
            NAMESPACE,
            &Lease {
                metadata: ObjectMeta {
                    name: Some(once.lock().lease_name("k").unwrap()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("killed/abcde".into()),
                    lease_duration_seconds: Some(30),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            },
        )
        .await
        .unwrap();
    let thing = Thing::default();
    let started = Instant::now();
    let outcome = once
        .run(
            "k",
            || thing.check(),
            || thing.create("survivor".into(), Duration::ZERO),
        )
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(outcome, Outcome::Created("survivor".into()));
    assert!(
        waited >= Duration::from_secs(30),
        "taken over before the lease expired ({waited:?})"
    );
    assert!(
        waited < Duration::from_secs(33),
        "taken over {waited:?} after the start: woken at the expiry, not by a late poll"
    );
    assert_eq!(thing.creates.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_never_finishes_makes_a_contender_fail_with_a_timeout_not_a_create() {
    let leases = MemoryLeases::new();
    let holder = LeaseLock::new(leases.clone(), LockConfig::new("holder", NAMESPACE)).unwrap();
    let _held = holder
        .acquire("k", lease_lock::AcquireOptions::new())
        .await
        .unwrap();
    let lock = LeaseLock::new(leases.clone(), LockConfig::new("waiter", NAMESPACE)).unwrap();
    let once = CreateOnce::new(lock).with_timeout(Duration::from_secs(2));
    let thing = Thing::default();
    let err = once
        .run(
            "k",
            || thing.check(),
            || thing.create("waiter".into(), Duration::ZERO),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, OnceError::Lock(Error::Timeout { holder: Some(h), .. }) if h.starts_with("holder/")),
        "{err:?}"
    );
    assert_eq!(thing.creates.load(Ordering::SeqCst), 0);
}

/// Leases on an API server that answers every call 503.
struct Unavailable;

#[async_trait]
impl LeaseBackend for Unavailable {
    async fn get(&self, _: &str, _: &str) -> Result<Option<Lease>, Error> {
        Err(unavailable())
    }
    async fn create(&self, _: &str, _: &Lease) -> Result<Lease, Error> {
        Err(unavailable())
    }
    async fn replace(&self, _: &str, _: &Lease) -> Result<Lease, Error> {
        Err(unavailable())
    }
    async fn delete(&self, _: &str, _: &str, _: &str, _: &str) -> Result<(), Error> {
        Err(unavailable())
    }
    async fn list(&self, _: &str, _: &str) -> Result<Vec<Lease>, Error> {
        Err(unavailable())
    }
    fn watch(
        &self,
        _: &str,
        _: &str,
        _: Option<String>,
    ) -> BoxStream<'static, Result<LeaseEvent, Error>> {
        Box::pin(futures::stream::empty())
    }
}

fn unavailable() -> Error {
    Error::Api {
        status: 503,
        reason: "ServiceUnavailable".into(),
        message: "the server is currently unable to handle the request".into(),
        retry_after: None,
    }
}

#[tokio::test(start_paused = true)]
async fn an_api_failure_of_the_lock_is_an_error_at_once_never_a_wait_or_a_create() {
    let lock = LeaseLock::new(Unavailable, LockConfig::new("a", NAMESPACE)).unwrap();
    let once = CreateOnce::new(lock);
    let thing = Thing::default();
    let started = Instant::now();
    let err = once
        .run(
            "k",
            || thing.check(),
            || thing.create("a".into(), Duration::ZERO),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, OnceError::Lock(Error::Api { status: 503, .. })),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "failed fast"
    );
    assert_eq!(thing.creates.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failing_check_is_returned_as_the_callers_error_and_nothing_is_created() {
    let leases = MemoryLeases::new();
    let once = replica(&leases, "a");
    let creates = AtomicUsize::new(0);
    let err = once
        .run(
            "k",
            || async { Err::<Option<String>, _>(std::io::Error::other("list failed")) },
            || async {
                creates.fetch_add(1, Ordering::SeqCst);
                Ok("x".to_owned())
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, OnceError::Check(e) if e.to_string() == "list failed"),
        "{err:?}"
    );
    assert_eq!(creates.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_create_releases_the_lock_so_the_next_caller_creates() {
    let leases = MemoryLeases::new();
    let (a, b) = (replica(&leases, "a"), replica(&leases, "b"));
    let thing = Thing::default();
    let err = a
        .run(
            "k",
            || thing.check(),
            || async { Err::<String, _>(std::io::Error::other("create refused")) },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, OnceError::Create(_)));
    let started = Instant::now();
    let outcome = b
        .run(
            "k",
            || thing.check(),
            || thing.create("b".into(), Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Created("b".into()));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not held until expiry"
    );
}

#[tokio::test(start_paused = true)]
async fn duplicates_queued_in_one_process_take_the_answer_of_the_call_before_them() {
    let leases = MemoryLeases::new();
    let once = replica(&leases, "a");
    let thing = Arc::new(Thing::default());
    let checks = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = (0..10)
        .map(|c| {
            let (once, thing, checks) = (once.clone(), Arc::clone(&thing), Arc::clone(&checks));
            tokio::spawn(async move {
                once.run(
                    "k",
                    || {
                        checks.fetch_add(1, Ordering::SeqCst);
                        thing.check()
                    },
                    || thing.create(format!("call-{c}"), Duration::from_millis(20)),
                )
                .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.unwrap().unwrap());
    }
    assert_eq!(thing.creates.load(Ordering::SeqCst), 1);
    assert_eq!(outcomes.iter().filter(|o| o.is_created()).count(), 1);
    let stored = thing.value.lock().unwrap().clone().unwrap();
    assert!(outcomes.iter().all(|o| o.clone().into_inner() == stored));
    // The first caller's check before the lock and again under it; the nine
    // queued behind it ran no closure at all.
    assert_eq!(checks.load(Ordering::SeqCst), 2);

    // Nobody waits any more: the answer is not kept, and a caller after the
    // thing went away checks and creates it again.
    *thing.value.lock().unwrap() = None;
    let again = once
        .run(
            "k",
            || thing.check(),
            || thing.create("later".into(), Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(again, Outcome::Created("later".into()));
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_not_handed_to_the_callers_queued_behind_it() {
    let leases = MemoryLeases::new();
    let once = replica(&leases, "a");
    let thing = Arc::new(Thing::default());
    let failing = {
        let (once, thing) = (once.clone(), Arc::clone(&thing));
        tokio::spawn(async move {
            once.run(
                "k",
                || thing.check(),
                || async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err::<String, _>(std::io::Error::other("create refused"))
                },
            )
            .await
        })
    };
    // Queued while the first call's create is in flight.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let next = once
        .run(
            "k",
            || thing.check(),
            || thing.create("next".into(), Duration::ZERO),
        )
        .await
        .unwrap();
    assert!(matches!(
        failing.await.unwrap().unwrap_err(),
        OnceError::Create(_)
    ));
    assert_eq!(next, Outcome::Created("next".into()));
    assert_eq!(thing.creates.load(Ordering::SeqCst), 1);
}
