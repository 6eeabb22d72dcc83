//! The conformance suite: one set of checks, run on `MemoryLeases` and on
//! `KubeLeases` against testkit's FakeKube (real HTTP, the real
//! `kube::Client`). The in-memory backend is trusted as a test double
//! because it passes exactly what the Kubernetes backend passes.
//!
//! Backend checks pin down the `LeaseBackend` contract (versions, conflicts,
//! preconditions, selectors, watch); lock checks run the whole algorithm on
//! each backend in real time with short leases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::Env;

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::checks::$check(&super::Env::memory()).await;
                }
            )*
        }
        mod kube {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::checks::$check(&super::Env::kube().await).await;
                }
            )*
        }
    };
}

conformance!(
    create_assigns_uid_and_version_and_refuses_duplicates,
    get_of_a_missing_lease_is_none,
    replace_succeeds_only_on_the_current_version_and_uid,
    replace_without_a_version_is_refused_locally,
    a_replace_that_changes_nothing_keeps_the_version,
    delete_checks_uid_and_version,
    list_filters_by_label_selector,
    list_page_walks_every_match_once_a_page_at_a_time,
    micro_time_is_kept_to_the_microsecond,
    watch_reports_the_current_state_then_each_change_then_deletion,
    watch_from_a_version_reports_only_later_changes,
    watch_of_an_absent_lease_reports_it_absent_then_its_creation,
    uncontended_acquire_and_release_is_two_writes,
    a_waiter_is_woken_by_the_watch_not_by_polling,
    expired_lease_is_taken_over_with_a_higher_fencing_token_and_the_old_guard_reports_lost,
    release_keeps_the_lease_so_fencing_tokens_keep_increasing,
    a_deadlock_between_two_holders_fails_one_of_them_well_before_the_timeout,
    garbage_collection_deletes_idle_leases_only,
);

mod checks {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use futures::StreamExt;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use lease_lock::{
        AcquireOptions, Error, Lease, LeaseEvent, LeaseLock, LeaseSpec, LockConfig, LossReason,
    };
    use resilience::BackoffPolicy;
    use tokio::time::{Instant, timeout};

    use super::Env;
    use super::support::Verb;

    /// Waits for one watch event, failing the test after 10 s.
    async fn next_event(
        stream: &mut futures::stream::BoxStream<'static, Result<LeaseEvent, Error>>,
    ) -> LeaseEvent {
        timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a watch event within 10 s")
            .expect("the stream goes on")
            .expect("no watch error")
    }

    fn lease(name: &str, labels: &[(&str, &str)]) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("someone/1".into()),
                lease_duration_seconds: Some(30),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        }
    }

    /// `lease` with a real change (an update that changes nothing is a
    /// no-op on the API server: same resourceVersion, no event).
    fn bumped(lease: &Lease) -> Lease {
        let mut next = lease.clone();
        let spec = next.spec.get_or_insert_with(LeaseSpec::default);
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        next
    }

    fn version(lease: &Lease) -> String {
        lease.metadata.resource_version.clone().unwrap()
    }

    /// Short leases so that expiry happens within a test, in real time.
    fn fast(identity: &str, env: &Env) -> LockConfig {
        LockConfig {
            lease_duration: Duration::from_secs(2),
            renew_interval: Duration::from_millis(300),
            renew_deadline: Duration::from_secs(1),
            acquire_timeout: Duration::from_secs(20),
            backoff: BackoffPolicy {
                initial: Duration::from_millis(20),
                multiplier: 2.0,
                max: Duration::from_millis(500),
                jitter: 0.25,
                max_attempts: None,
            },
            ..LockConfig::new(identity, env.namespace.clone())
        }
    }

    pub async fn create_assigns_uid_and_version_and_refuses_duplicates(env: &Env) {
        let b = &env.backend;
        let created = b.create(&env.namespace, &lease("a", &[])).await.unwrap();
        assert!(
            created
                .metadata
                .uid
                .as_deref()
                .is_some_and(|u| !u.is_empty())
        );
        assert!(!version(&created).is_empty());
        assert_eq!(
            created.metadata.namespace.as_deref(),
            Some(env.namespace.as_str())
        );
        let again = b
            .create(&env.namespace, &lease("a", &[]))
            .await
            .unwrap_err();
        assert!(matches!(again, Error::AlreadyExists { .. }), "{again}");
        let read = b.get(&env.namespace, "a").await.unwrap().unwrap();
        assert_eq!(read.metadata.uid, created.metadata.uid);
        assert_eq!(read.spec, created.spec);
    }

    pub async fn get_of_a_missing_lease_is_none(env: &Env) {
        assert!(
            env.backend
                .get(&env.namespace, "missing")
                .await
                .unwrap()
                .is_none()
        );
    }

    pub async fn replace_succeeds_only_on_the_current_version_and_uid(env: &Env) {
        let b = &env.backend;
        let ns = &env.namespace;
        let v1 = b.create(ns, &lease("a", &[])).await.unwrap();
        let mut change = v1.clone();
        change.spec.as_mut().unwrap().lease_transitions = Some(1);
        let v2 = b.replace(ns, &change).await.unwrap();
        assert_ne!(version(&v1), version(&v2));
        assert_eq!(v2.metadata.uid, v1.metadata.uid, "uid kept");
        assert_eq!(v2.spec.as_ref().unwrap().lease_transitions, Some(1));

        let stale = b.replace(ns, &change).await.unwrap_err();
        assert!(
            matches!(stale, Error::Conflict { .. }),
            "stale version: {stale}"
        );

        let mut wrong_uid = v2.clone();
        wrong_uid.metadata.uid = Some("not-the-uid".into());
        let err = b.replace(ns, &wrong_uid).await.unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }), "wrong uid: {err}");

        let mut gone = v2.clone();
        gone.metadata.name = Some("never-created".into());
        let err = b.replace(ns, &gone).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
    }

    pub async fn replace_without_a_version_is_refused_locally(env: &Env) {
        let b = &env.backend;
        let created = b.create(&env.namespace, &lease("a", &[])).await.unwrap();
        let mut blind = created.clone();
        blind.metadata.resource_version = None;
        let err = b.replace(&env.namespace, &blind).await.unwrap_err();
        assert!(matches!(err, Error::InvalidLease { .. }), "{err}");
        let read = b.get(&env.namespace, "a").await.unwrap().unwrap();
        assert_eq!(version(&read), version(&created), "nothing was written");
    }

    pub async fn a_replace_that_changes_nothing_keeps_the_version(env: &Env) {
        let b = &env.backend;
        let created = b.create(&env.namespace, &lease("a", &[])).await.unwrap();
        let same = b.replace(&env.namespace, &created).await.unwrap();
        assert_eq!(version(&same), version(&created));
    }

    pub async fn delete_checks_uid_and_version(env: &Env) {
        let b = &env.backend;
        let ns = &env.namespace;
        let v1 = b.create(ns, &lease("a", &[])).await.unwrap();
        let v2 = b.replace(ns, &bumped(&v1)).await.unwrap();
        let uid = v1.metadata.uid.clone().unwrap();
        let err = b.delete(ns, "a", &uid, &version(&v1)).await.unwrap_err();
        assert!(
            matches!(err, Error::Conflict { .. }),
            "stale version: {err}"
        );
        let err = b
            .delete(ns, "a", "other-uid", &version(&v2))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }), "wrong uid: {err}");
        assert!(b.get(ns, "a").await.unwrap().is_some());
        b.delete(ns, "a", &uid, &version(&v2)).await.unwrap();
        assert!(b.get(ns, "a").await.unwrap().is_none());
        let err = b.delete(ns, "a", &uid, &version(&v2)).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
    }

    pub async fn list_filters_by_label_selector(env: &Env) {
        let b = &env.backend;
        let ns = &env.namespace;
        b.create(ns, &lease("a", &[("app", "x"), ("tier", "1")]))
            .await
            .unwrap();
        b.create(ns, &lease("b", &[("app", "x")])).await.unwrap();
        b.create(ns, &lease("c", &[("app", "y")])).await.unwrap();
        b.create("elsewhere", &lease("d", &[("app", "x")]))
            .await
            .unwrap();
        let names = |leases: Vec<Lease>| {
            let mut n: Vec<String> = leases.into_iter().filter_map(|l| l.metadata.name).collect();
            n.sort();
            n
        };
        assert_eq!(names(b.list(ns, "app=x").await.unwrap()), ["a", "b"]);
        assert_eq!(names(b.list(ns, "app=x,tier").await.unwrap()), ["a"]);
        assert_eq!(names(b.list(ns, "app=x,!tier").await.unwrap()), ["b"]);
        assert_eq!(names(b.list(ns, "app!=x").await.unwrap()), ["c"]);
        assert_eq!(names(b.list(ns, "").await.unwrap()), ["a", "b", "c"]);
    }

    pub async fn list_page_walks_every_match_once_a_page_at_a_time(env: &Env) {
        let b = &env.backend;
        let ns = &env.namespace;
        for name in ["e", "a", "d", "b", "c"] {
            b.create(ns, &lease(name, &[("app", "x")])).await.unwrap();
        }
        b.create(ns, &lease("f", &[("app", "y")])).await.unwrap();
        let mut seen = Vec::new();
        let mut pages = 0;
        let mut token = None;
        loop {
            let page = b.list_page(ns, "app=x", 2, token).await.unwrap();
            pages += 1;
            assert!(page.leases.len() <= 2, "a page holds at most its limit");
            seen.extend(page.leases.into_iter().filter_map(|l| l.metadata.name));
            match page.continue_token {
                Some(next) => token = Some(next),
                None => break,
            }
            assert!(pages < 10, "the walk ends");
        }
        assert_eq!(
            seen,
            ["a", "b", "c", "d", "e"],
            "each match once, in name order"
        );
        assert_eq!(pages, 3);
    }

    pub async fn micro_time_is_kept_to_the_microsecond(env: &Env) {
        let t = jiff::Timestamp::from_nanosecond(1_700_000_000_123_456_789).unwrap();
        let mut l = lease("a", &[]);
        l.spec.as_mut().unwrap().renew_time = Some(MicroTime(t));
        let created = env.backend.create(&env.namespace, &l).await.unwrap();
        let read = env.backend.get(&env.namespace, "a").await.unwrap().unwrap();
        let expected = jiff::Timestamp::from_microsecond(1_700_000_000_123_456).unwrap();
        assert_eq!(
            created.spec.as_ref().unwrap().renew_time,
            Some(MicroTime(expected))
        );
        assert_eq!(read.spec, created.spec);
    }

    pub async fn watch_reports_the_current_state_then_each_change_then_deletion(env: &Env) {
        let b = &env.backend;
        let ns = &env.namespace;
        let v1 = b.create(ns, &lease("a", &[])).await.unwrap();
        let mut stream = b.watch(ns, "a", None);
        assert_eq!(
            next_event(&mut stream).await,
            LeaseEvent::Applied(v1.clone())
        );
        let v2 = b.replace(ns, &bumped(&v1)).await.unwrap();
        assert_eq!(
            next_event(&mut stream).await,
            LeaseEvent::Applied(v2.clone())
        );
        b.delete(ns, "a", v2.metadata.uid.as_deref().unwrap(), &version(&v2))
            .await
            .unwrap();
        assert_eq!(next_event(&mut stream).await, LeaseEvent::Deleted);
    }

    pub async fn watch_from_a_version_reports_only_later_changes(env: &Env) {
        let b = &env.backend;
        let ns = &env.namespace;
        let v1 = b.create(ns, &lease("a", &[])).await.unwrap();
        b.create(ns, &lease("other", &[])).await.unwrap();
        let mut stream = b.watch(ns, "a", Some(version(&v1)));
        assert!(
            timeout(Duration::from_millis(300), stream.next())
                .await
                .is_err(),
            "nothing changed since v1, and other Leases are not reported"
        );
        let v2 = b.replace(ns, &bumped(&v1)).await.unwrap();
        assert_eq!(next_event(&mut stream).await, LeaseEvent::Applied(v2));
    }

    pub async fn watch_of_an_absent_lease_reports_it_absent_then_its_creation(env: &Env) {
        let b = &env.backend;
        let mut stream = b.watch(&env.namespace, "later", None);
        assert_eq!(next_event(&mut stream).await, LeaseEvent::Deleted);
        let created = b
            .create(&env.namespace, &lease("later", &[]))
            .await
            .unwrap();
        assert_eq!(next_event(&mut stream).await, LeaseEvent::Applied(created));
    }

    pub async fn uncontended_acquire_and_release_is_two_writes(env: &Env) {
        let process = env.process();
        let lock = LeaseLock::new(process.clone(), fast("pod-a", env)).unwrap();
        let server_before = env.fake.as_ref().map(|f| f.calls().total());

        let guard = lock.acquire("task-1", AcquireOptions::new()).await.unwrap();
        guard.release().await.unwrap();

        assert_eq!(process.requests(), 2, "CREATE then conditional replace");
        assert_eq!(
            (process.count(Verb::Create), process.count(Verb::Replace)),
            (1, 1)
        );
        if let (Some(fake), Some(before)) = (&env.fake, server_before) {
            let calls = fake.calls();
            assert_eq!(calls.total() - before, 2, "the server saw two requests");
            assert_eq!(calls.count(Some("create"), Some("leases")), 1);
            assert_eq!(calls.count(Some("update"), Some("leases")), 1);
        }
    }

    pub async fn a_waiter_is_woken_by_the_watch_not_by_polling(env: &Env) {
        let a = LeaseLock::new(env.process(), fast("pod-a", env)).unwrap();
        // Polls 20 s apart: only the watch can make the handoff fast.
        let slow_polls = LockConfig {
            backoff: BackoffPolicy {
                initial: Duration::from_secs(20),
                multiplier: 1.0,
                max: Duration::from_secs(20),
                jitter: 0.0,
                max_attempts: None,
            },
            acquire_timeout: Duration::from_secs(60),
            ..fast("pod-b", env)
        };
        let b_process = env.process();
        let b = LeaseLock::new(b_process.clone(), slow_polls).unwrap();
        let held = a.acquire("k", AcquireOptions::new()).await.unwrap();
        let waiter = tokio::spawn(async move {
            let guard = b.acquire("k", AcquireOptions::new()).await;
            (guard, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let released_at = Instant::now();
        held.release().await.unwrap();

        let (guard, acquired_at) = waiter.await.unwrap();
        let guard = guard.unwrap();
        assert!(
            acquired_at - released_at < Duration::from_secs(5),
            "handoff took {:?}",
            acquired_at - released_at
        );
        assert_eq!(guard.fencing_token().transitions, 1);
        assert!(
            b_process.count(Verb::Get) <= 2,
            "no polling: {} GETs",
            b_process.count(Verb::Get)
        );
    }

    pub async fn expired_lease_is_taken_over_with_a_higher_fencing_token_and_the_old_guard_reports_lost(
        env: &Env,
    ) {
        let a_process = env.process();
        let a = LeaseLock::new(a_process.clone(), fast("pod-a", env)).unwrap();
        let b = LeaseLock::new(env.process(), fast("pod-b", env)).unwrap();
        let crashed = a.acquire("k", AcquireOptions::new()).await.unwrap();
        // pod-a stops talking to the API server: its renewals never arrive.
        a_process.freeze(true);
        let started = Instant::now();

        let taker = b.acquire("k", AcquireOptions::new()).await.unwrap();

        let lost = timeout(Duration::from_secs(10), crashed.lost())
            .await
            .unwrap();
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
        assert!(
            crashed.valid_until() <= taker.acquired_at(),
            "guaranteed holds do not overlap"
        );
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "not before the holder's deadline"
        );
        assert!(taker.fencing_token() > crashed.fencing_token());
        assert_eq!(
            taker.fencing_token().transitions,
            crashed.fencing_token().transitions + 1
        );
        assert_eq!(b.metrics().takeovers(), 1);
    }

    pub async fn release_keeps_the_lease_so_fencing_tokens_keep_increasing(env: &Env) {
        let a = LeaseLock::new(env.process(), fast("pod-a", env)).unwrap();
        let b = LeaseLock::new(env.process(), fast("pod-b", env)).unwrap();
        let mut last = None;
        for round in 0..4 {
            let lock = if round % 2 == 0 { &a } else { &b };
            let guard = lock.acquire("k", AcquireOptions::new()).await.unwrap();
            let token = guard.fencing_token().clone();
            if let Some(previous) = &last {
                assert!(&token > previous, "round {round}: {token} after {previous}");
            }
            last = Some(token);
            guard.release().await.unwrap();
        }
        let lease = env
            .backend
            .get(&env.namespace, "lock-k")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lease.spec.unwrap().holder_identity, None);
    }

    pub async fn a_deadlock_between_two_holders_fails_one_of_them_well_before_the_timeout(
        env: &Env,
    ) {
        let a = LeaseLock::new(env.process(), fast("pod-a", env)).unwrap();
        let b = LeaseLock::new(env.process(), fast("pod-b", env)).unwrap();
        let x = a.acquire("x", AcquireOptions::new()).await.unwrap();
        let y = b.acquire("y", AcquireOptions::new()).await.unwrap();
        let wait = Duration::from_secs(30);
        let started = Instant::now();
        let a_waits = tokio::spawn({
            let (a, options) = (a.clone(), AcquireOptions::new().timeout(wait).holding(&x));
            async move { a.acquire("y", options).await }
        });
        let b_waits = tokio::spawn({
            let (b, options) = (b.clone(), AcquireOptions::new().timeout(wait).holding(&y));
            async move { b.acquire("x", options).await }
        });

        // pod-b has the greater holder identity: it backs out.
        let b_result = timeout(Duration::from_secs(10), b_waits)
            .await
            .unwrap()
            .unwrap();
        let detected_after = started.elapsed();
        assert!(
            matches!(&b_result, Err(Error::Deadlock { cycle, .. }) if cycle == &["lock-x", "lock-y"]),
            "{b_result:?}"
        );
        assert!(
            detected_after < wait / 3,
            "detected after {detected_after:?}"
        );
        drop(y);
        let got = timeout(Duration::from_secs(10), a_waits)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.unwrap().key(), "y");
        drop(x);
    }

    pub async fn garbage_collection_deletes_idle_leases_only(env: &Env) {
        // The shortest retention allowed: twice the 2 s lease duration.
        let config = LockConfig {
            retention: Duration::from_secs(4),
            ..fast("pod-a", env)
        };
        let lock = LeaseLock::new(env.process(), config).unwrap();
        let idle = lock.acquire("idle", AcquireOptions::new()).await.unwrap();
        let old_token = idle.fencing_token().clone();
        idle.release().await.unwrap();
        let _held = lock.acquire("held", AcquireOptions::new()).await.unwrap();
        let report = lock.collect_garbage().await.unwrap();
        assert_eq!(
            (report.deleted, report.recent, report.held),
            (0, 1, 1),
            "nothing idle yet"
        );

        tokio::time::sleep(Duration::from_millis(4500)).await;
        let report = lock.collect_garbage().await.unwrap();

        assert_eq!((report.deleted, report.held), (1, 1));
        assert!(
            env.backend
                .get(&env.namespace, "lock-idle")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            env.backend
                .get(&env.namespace, "lock-held")
                .await
                .unwrap()
                .is_some()
        );

        // The key's next Lease is a new object whose transitions start over,
        // yet its tokens order after the deleted object's (by creation time).
        let again = lock.acquire("idle", AcquireOptions::new()).await.unwrap();
        let new_token = again.fencing_token();
        assert_ne!(new_token.lease_uid, old_token.lease_uid);
        assert!(new_token > &old_token, "{new_token} after {old_token}");
    }
}

/// Kubernetes only: a watch resumed from a resourceVersion the server no
/// longer keeps gets 410 Gone; the stream starts over from the current state
/// — one WATCH with initial events, no LIST — and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_watch_recovers_from_410_gone_by_starting_over_from_the_current_state() {
    use futures::StreamExt;
    use lease_lock::{KubeLeases, LeaseBackend, LeaseEvent};
    use std::time::Duration;

    let fake = testkit::kube::FakeKube::builder()
        .watch_history(2)
        .start()
        .await
        .unwrap();
    let backend = KubeLeases::new(fake.client());
    let mut lease = lease_lock::Lease::default();
    lease.metadata.name = Some("a".into());
    let first = backend.create("ns", &lease).await.unwrap();
    let mut current = first.clone();
    for transitions in 1..=5 {
        current
            .spec
            .get_or_insert_with(Default::default)
            .lease_transitions = Some(transitions);
        current = backend.replace("ns", &current).await.unwrap();
    }

    let mut stream = backend.watch("ns", "a", first.metadata.resource_version.clone());
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Some(Ok(event)) => return event,
                Some(Err(_)) => continue,
                None => panic!("the watch stream ended"),
            }
        }
    })
    .await
    .expect("an event after the 410");

    assert_eq!(
        event,
        LeaseEvent::Applied(current),
        "the current state, not a replay"
    );
    let calls = fake.calls();
    assert_eq!(
        calls.count(Some("watch"), Some("leases")),
        2,
        "the watch answered 410, then one from the current state"
    );
    assert_eq!(
        calls.count(Some("list"), Some("leases")),
        0,
        "the current state came as the watch's initial events"
    );
}

/// Kubernetes only: a server that answers every watch with 410 Gone makes
/// the stream start over each time, but with backoff, never in a hot loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_watch_answered_410_again_and_again_backs_off() {
    use futures::StreamExt;
    use lease_lock::{KubeLeases, LeaseBackend};
    use std::time::Duration;
    use testkit::faults::{InjectedError, Match};

    let fake = testkit::kube::FakeKube::start().await.unwrap();
    fake.faults().error_rate(
        Match::any().verb("watch").resource("leases"),
        1.0,
        InjectedError::Status(410),
    );
    let backend = KubeLeases::new(fake.client());

    let stream = backend.watch("ns", "a", None);
    // Drain whatever is reported for a second, then stop watching.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.for_each(|_| async {})).await;

    let watches = fake.calls().count(Some("watch"), Some("leases"));
    assert!(
        (1..=8).contains(&watches),
        "{watches} WATCHes in one second: starting over after 410 must back off"
    );
}

/// Kubernetes only: a server that refuses watches with initial events (the
/// API server without its WatchList feature answers 422 Invalid) is asked
/// the classic way instead, LIST then WATCH from the list's version, and the
/// backend does not ask it for initial events again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_watch_falls_back_to_list_and_watch_when_initial_events_are_refused() {
    use futures::StreamExt;
    use lease_lock::{KubeLeases, LeaseBackend, LeaseEvent};
    use std::time::Duration;
    use testkit::faults::{InjectedError, Match};

    let fake = testkit::kube::FakeKube::start().await.unwrap();
    let backend = KubeLeases::new(fake.client());
    let mut lease = lease_lock::Lease::default();
    lease.metadata.name = Some("a".into());
    let created = backend.create("ns", &lease).await.unwrap();
    fake.faults().fail_next(
        Match::any().verb("watch").resource("leases"),
        1,
        InjectedError::Status(422),
    );

    let first = |mut stream: futures::stream::BoxStream<
        'static,
        Result<LeaseEvent, lease_lock::Error>,
    >| async move {
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .expect("no watch error")
    };
    assert_eq!(
        first(backend.watch("ns", "a", None)).await,
        LeaseEvent::Applied(created.clone())
    );
    let calls = fake.calls();
    assert_eq!(
        calls.count(Some("list"), Some("leases")),
        1,
        "listed instead"
    );

    assert_eq!(
        first(backend.clone().watch("ns", "a", None)).await,
        LeaseEvent::Applied(created)
    );
    let calls = fake.calls();
    assert_eq!(
        calls.count(Some("list"), Some("leases")),
        2,
        "a clone lists too: the refusal is remembered"
    );
}

/// Kubernetes only, counted from FakeKube's request log: a contended
/// acquisition sends CREATE (409) and one WATCH before it waits — the
/// watch's first event is the Lease it judges and writes against — and no
/// GET or LIST at all; the handoff is then the holder's release and the
/// waiter's one conditional replace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_a_contended_acquire_sends_create_then_watch_and_never_reads() {
    use lease_lock::{AcquireOptions, KubeLeases, LeaseLock, LockConfig};
    use std::time::Duration;
    use testkit::calls::Outcome;
    use testkit::kube::RequestFilter;

    let fake = testkit::kube::FakeKube::start().await.unwrap();
    let config = |identity: &str| LockConfig {
        acquire_timeout: Duration::from_secs(30),
        ..LockConfig::new(identity, "ns")
    };
    let a = LeaseLock::new(KubeLeases::new(fake.client()), config("pod-a")).unwrap();
    let b = LeaseLock::new(KubeLeases::new(fake.client()), config("pod-b")).unwrap();
    let held = a.acquire("k", AcquireOptions::new()).await.unwrap();
    let log = fake.requests();
    let before = log.last_seq();

    let waiter = tokio::spawn(async move { b.acquire("k", AcquireOptions::new()).await });
    let watches = RequestFilter::any().verb("watch").resource("leases");
    tokio::time::timeout(Duration::from_secs(10), async {
        while log.count(&watches) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the waiter opens its watch");
    // Give the waiter time to judge the watch's first event (the Lease,
    // held) and wait: anything it would read instead shows up here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting: Vec<(String, Outcome)> = log
        .since(before)
        .into_iter()
        .map(|r| (r.verb, r.outcome))
        .collect();
    assert_eq!(
        waiting,
        [
            ("create".to_owned(), Outcome::Error(409)),
            ("watch".to_owned(), Outcome::Ok)
        ],
        "what the waiter sent before it waited"
    );
    assert!(!waiter.is_finished(), "the waiter waits while a holds");

    held.release().await.unwrap();
    let guard = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter takes the released Lease")
        .unwrap()
        .unwrap();
    assert_eq!(guard.fencing_token().transitions, 1);
    let handoff: Vec<(String, Outcome)> = log
        .since(before)
        .into_iter()
        .map(|r| (r.verb, r.outcome))
        .collect();
    assert_eq!(
        handoff,
        [
            ("create".to_owned(), Outcome::Error(409)),
            ("watch".to_owned(), Outcome::Ok),
            ("update".to_owned(), Outcome::Ok),
            ("update".to_owned(), Outcome::Ok)
        ],
        "then a's release and b's conditional replace: no GET, no LIST"
    );
}

/// KubeLeases drops `managedFields` from the Leases it reads (nothing here
/// needs them, and every waiter would copy them with each event); the
/// replaces it sends without them must leave the API server's field
/// ownership in place, as `decodeLiveOrNew` does for a write that carries
/// none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_writes_without_managed_fields_keep_the_servers() {
    use k8s_openapi::api::coordination::v1::Lease;
    use lease_lock::{AcquireOptions, KubeLeases, LeaseLock, LockConfig};

    let fake = testkit::kube::FakeKube::start().await.unwrap();
    let lock = LeaseLock::new(
        KubeLeases::new(fake.client()),
        LockConfig::new("pod-a", "ns"),
    )
    .unwrap();
    let name = lock.lease_name("k").unwrap();
    let managers = || -> Vec<(String, String)> {
        let lease: Lease = fake.peek("ns", &name).expect("the Lease exists");
        lease
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                (
                    e.manager.unwrap_or_default(),
                    e.operation.unwrap_or_default(),
                )
            })
            .collect()
    };
    let held = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    let created = managers();
    assert!(!created.is_empty(), "the fake records who created it");
    held.release().await.unwrap();
    // Re-acquired from the cached (lean) observation: a replace without
    // managedFields.
    let again = lock.acquire("k", AcquireOptions::new()).await.unwrap();
    again.release().await.unwrap();
    let after = managers();
    assert!(
        created.iter().all(|entry| after.contains(entry)),
        "ownership before the replaces: {created:?}, after: {after:?}"
    );
}
