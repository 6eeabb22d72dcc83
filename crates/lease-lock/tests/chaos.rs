//! Safety under chaos: many contenders, several keys, many rounds, on
//! FakeKube with latency, 5xx, 429, dropped connections, answers lost after
//! the write was applied, and holders whose requests stall for longer than
//! a lease. Every acquisition, renewal, release and loss is recorded in
//! testkit's `LockHistory`, which must find no two overlapping guaranteed
//! holds of a key and strictly increasing fencing tokens per key.
//!
//! Real time (a few seconds) with 2 s leases: the fake API server's faults
//! are timed by the real clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use lease_lock::{
    AcquireOptions, Error, FencingToken, KubeLeases, Lease, LeaseBackend, LeaseEvent, LeaseLock,
    LockConfig, Metrics,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use resilience::BackoffPolicy;
use support::Instrumented;
use testkit::faults::{InjectedError, Match};
use testkit::history::LockHistory;
use testkit::kube::FakeKube;
use tokio::time::Instant;

const CONTENDERS: u64 = 8;
const KEYS: [&str; 3] = ["a", "b", "c"];
const RUN_FOR: Duration = Duration::from_secs(10);

/// A process whose writes sometimes land without their answer reaching it
/// (the connection broke after the server applied the request).
struct LostAnswers {
    inner: Instrumented,
    rate: f64,
    rng: std::sync::Mutex<StdRng>,
    lost: Arc<AtomicU64>,
}

impl LostAnswers {
    fn lose(&self) -> bool {
        let lose = self.rng.lock().unwrap().random_bool(self.rate);
        if lose {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        lose
    }

    fn answer<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        match result {
            Ok(_) if self.lose() => Err(Error::Transport {
                message: "connection reset after the request was applied".into(),
                source: None,
            }),
            other => other,
        }
    }
}

#[async_trait]
impl LeaseBackend for LostAnswers {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Lease>, Error> {
        self.inner.get(namespace, name).await
    }
    async fn create(&self, namespace: &str, lease: &Lease) -> Result<Lease, Error> {
        self.answer(self.inner.create(namespace, lease).await)
    }
    async fn replace(&self, namespace: &str, lease: &Lease) -> Result<Lease, Error> {
        self.answer(self.inner.replace(namespace, lease).await)
    }
    async fn delete(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        version: &str,
    ) -> Result<(), Error> {
        self.answer(self.inner.delete(namespace, name, uid, version).await)
    }
    async fn list(&self, namespace: &str, selector: &str) -> Result<Vec<Lease>, Error> {
        self.inner.list(namespace, selector).await
    }
    fn watch(
        &self,
        namespace: &str,
        name: &str,
        since: Option<String>,
    ) -> BoxStream<'static, Result<LeaseEvent, Error>> {
        self.inner.watch(namespace, name, since)
    }
}

fn config(identity: &str) -> LockConfig {
    LockConfig {
        lease_duration: Duration::from_secs(2),
        renew_interval: Duration::from_millis(300),
        renew_deadline: Duration::from_secs(1),
        acquire_timeout: Duration::from_secs(3),
        backoff: BackoffPolicy {
            initial: Duration::from_millis(20),
            multiplier: 2.0,
            max: Duration::from_millis(400),
            jitter: 0.25,
            max_attempts: None,
        },
        ..LockConfig::new(identity, "chaos")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_two_holders_overlap_and_tokens_increase_under_faults_and_paused_holders() {
    let fake = FakeKube::builder().seed(42).start().await.unwrap();
    let leases = || Match::any().resource("leases");
    let faults = fake.faults();
    faults.latency(leases(), Duration::from_millis(1), Duration::from_millis(4));
    faults.error_rate(leases().verb("update"), 0.05, InjectedError::Status(503));
    faults.error_rate(leases().verb("create"), 0.05, InjectedError::Status(500));
    faults.error_rate(leases().verb("get"), 0.05, InjectedError::Status(503));
    faults.error_rate(
        leases().verb("update"),
        0.01,
        InjectedError::TooManyRequests {
            retry_after: Duration::from_secs(1),
        },
    );
    faults.drop_rate(leases(), 0.02);
    // Our lock classifies and retries failures itself.
    let mut client_config = fake.config();
    client_config.default_retry = false;
    let client = kube::Client::try_from(client_config).unwrap();
    let backend: Arc<dyn LeaseBackend> = Arc::new(KubeLeases::new(client));

    let history: LockHistory<FencingToken> = LockHistory::new();
    let metrics = Metrics::default();
    let lost_answers = Arc::new(AtomicU64::new(0));
    let pauses = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + RUN_FOR;
    let mut contenders = Vec::new();
    for id in 0..CONTENDERS {
        let process = Instrumented::new(Arc::clone(&backend));
        let lossy = LostAnswers {
            inner: process.clone(),
            rate: 0.03,
            rng: std::sync::Mutex::new(StdRng::seed_from_u64(id)),
            lost: Arc::clone(&lost_answers),
        };
        let lock =
            LeaseLock::with_metrics(lossy, config(&format!("pod-{id}")), metrics.clone()).unwrap();
        let (history, pauses) = (history.clone(), Arc::clone(&pauses));
        contenders.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(1000 + id);
            while Instant::now() < end {
                let key = KEYS[rng.random_range(0..KEYS.len())];
                let guard = match lock.acquire(key, AcquireOptions::new()).await {
                    Ok(guard) => guard,
                    Err(e) => {
                        assert!(
                            matches!(
                                e,
                                Error::Timeout { .. } | Error::Api { .. } | Error::Transport { .. }
                            ),
                            "unexpected acquisition failure: {e}"
                        );
                        continue;
                    }
                };
                let holder = guard.holder_identity().to_owned();
                history.acquired(
                    key,
                    &holder,
                    guard.fencing_token().clone(),
                    guard.acquired_at(),
                    guard.valid_until(),
                );
                let mut validity = guard.validity();
                let renewals = tokio::spawn({
                    let (history, holder) = (history.clone(), holder.clone());
                    async move {
                        while validity.changed().await.is_ok() {
                            let valid_until = *validity.borrow_and_update();
                            // The renewal's request was sent renew_deadline before its deadline.
                            history.renewed(
                                key,
                                &holder,
                                valid_until - Duration::from_secs(1),
                                valid_until,
                            );
                        }
                    }
                });
                let paused = rng.random_bool(0.08);
                if paused {
                    // A paused holder: none of its requests get through for
                    // longer than a lease, so others take over.
                    pauses.fetch_add(1, Ordering::Relaxed);
                    process.freeze(true);
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    process.freeze(false);
                } else {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
                }
                tokio::select! {
                    biased;
                    lost = guard.lost() => {
                        assert!(paused, "a holder that never stalled lost its lock: {lost}");
                        history.lost(key, &holder, Instant::now());
                        drop(guard);
                    }
                    () = std::future::ready(()) => {
                        history.released(key, &holder, Instant::now());
                        // Retries and re-reads make a release succeed
                        // despite every fault, unless the holder stalled.
                        let released = guard.release().await;
                        assert!(paused || released.is_ok(), "release failed: {released:?}");
                    }
                }
                renewals.abort();
            }
        }));
    }
    for contender in contenders {
        contender.await.unwrap();
    }

    let acquisitions = metrics.acquisitions();
    println!(
        "chaos: {acquisitions} acquisitions, {} takeovers, {} losses, {} paused holders, {} lost answers, {} API calls, {} events",
        metrics.takeovers(),
        metrics.losses(),
        pauses.load(Ordering::Relaxed),
        lost_answers.load(Ordering::Relaxed),
        fake.calls().total(),
        history.len()
    );
    let violations = history.violations();
    assert!(
        violations.is_empty(),
        "{} violations, first: {}",
        violations.len(),
        violations[0]
    );
    assert!(
        acquisitions >= 50,
        "only {acquisitions} acquisitions: the test did not exercise much"
    );
    assert!(pauses.load(Ordering::Relaxed) >= 1, "no paused holder");
    assert!(metrics.takeovers() >= 1, "no expired lease was taken over");
    assert!(metrics.losses() >= 1, "no paused holder noticed its loss");
    assert!(
        lost_answers.load(Ordering::Relaxed) >= 1,
        "no answer was lost"
    );
    assert!(
        fake.calls().total() > acquisitions,
        "faults and retries were exercised"
    );
}
