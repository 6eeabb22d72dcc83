//! Lock acquisition and handoff, side by side with peers, on testkit's
//! FakeKube with 2 ms injected latency per API call.
//!
//! ```text
//! cargo run --release -p lease-lock --example lock_bench
//! ```
//!
//! Prints one JSON line per implementation:
//! `impl, uncontended_calls, uncontended_p50_ms, uncontended_p99_ms,
//! handoff_p50_ms, handoff_p99_ms, acquisitions_per_sec,
//! conflicts_per_acquisition, watch_events_per_acquisition,
//! cpu_ms_per_acquisition, violations`.
//!
//! - `lease-lock`: this crate, production defaults (30 s lease, 10 s
//!   renewals, 50 ms → 2 s backoff), acquire timeout raised to 120 s so
//!   that no contender gives up.
//! - `kube-lease-manager` 0.13 in its manual mode (`changed()` until we
//!   lead, then `release()`), with the shortest lease it accepts (2 s,
//!   grace 1 s); a manager is bound to one Lease, so acquiring a key
//!   includes building its manager.
//! - `seed-baseline`: the starting design (GET → CREATE, takeover with an
//!   unconditional UPDATE, retry after a fixed 100 ms sleep, release by
//!   DELETE), implemented below.
//!
//! Phases (each on fresh keys): `uncontended_*` — acquire then release a
//! free key, 100 times one after the other; the latency is the acquisition
//! (call → held) and the calls are all API requests of the acquire+release
//! pair as counted by the server. `handoff_*` — 20 contenders loop on one
//! key; a handoff is the time from the holder starting its release to the
//! next holder holding. `acquisitions_per_sec` — 100 keys × 20 contenders,
//! each contender acquires and releases its key once; completions per second
//! over at most 5 s; `conflicts_per_acquisition` — the 409 answers to Lease
//! writes in that phase (lost create and replace races, conflicting
//! patches: each a request spent on nothing) per completed acquisition;
//! `watch_events_per_acquisition` — in that phase, the changes the fake
//! handed to open watches (one per watch that received each) per completed
//! acquisition: what waiters that watch cost the API server beyond their
//! requests; `cpu_ms_per_acquisition` — in that phase, the CPU time of this
//! whole process (the fake API server included, 10 ms resolution) per
//! completed acquisition: on a machine with few cores the implementations
//! and the server share them, so a rate is CPU-bound or wait-bound, and
//! this says which.
//! `violations` — what
//! `LockHistory` finds over the handoff and throughput phases (overlapping
//! guaranteed holds; for implementations with a fencing token, tokens that
//! do not increase; the seed baseline has none, so only overlaps count).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cmp::Ordering;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, PostParams};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use lease_lock::{AcquireOptions, KubeLeases, LeaseLock, LockConfig, LockGuard};
use testkit::calls::Outcome;
use testkit::faults::Match;
use testkit::history::LockHistory;
use testkit::kube::FakeKube;
use testkit::process::own_cpu_seconds;
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const NAMESPACE: &str = "bench";
const LATENCY: Duration = Duration::from_millis(2);
const UNCONTENDED_ROUNDS: usize = 100;
const HANDOFF_CONTENDERS: usize = 20;
const THROUGHPUT_KEYS: usize = 100;
const THROUGHPUT_CONTENDERS: usize = 20;
/// The throughput phase stops here even if acquisitions remain (the slowest
/// peer needs tens of seconds for all 2 000); the rate is completions over the
/// time actually spent, so a cut-off run is not flattered.
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Impl {
    LeaseLock,
    KubeLeaseManager,
    SeedBaseline,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Self::LeaseLock => "lease-lock",
            Self::KubeLeaseManager => "kube-lease-manager",
            Self::SeedBaseline => "seed-baseline",
        }
    }

    /// Handoffs sampled and the time allowed for them: the peers hand off
    /// in seconds, not milliseconds, and the whole run must stay short.
    fn handoff_budget(self) -> (usize, Duration) {
        match self {
            Self::LeaseLock => (300, Duration::from_secs(6)),
            Self::SeedBaseline => (150, Duration::from_secs(5)),
            Self::KubeLeaseManager => (40, Duration::from_secs(7)),
        }
    }

    fn contender(self, client: &kube::Client, identity: String) -> Box<dyn Locker> {
        match self {
            Self::LeaseLock => {
                let config = LockConfig {
                    acquire_timeout: Duration::from_secs(120),
                    ..LockConfig::new(identity, NAMESPACE)
                };
                Box::new(LeaseLock::new(KubeLeases::new(client.clone()), config).unwrap())
            }
            Self::KubeLeaseManager => Box::new(Klm {
                client: client.clone(),
                identity,
            }),
            Self::SeedBaseline => Box::new(Seed {
                api: Api::namespaced(client.clone(), NAMESPACE),
                identity,
            }),
        }
    }
}

/// What a held lock reports to the history.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// (Lease uid, leaseTransitions).
    Lease(String, u64),
    /// No fencing token: ordered by acquisition instant, so only overlaps count.
    None(Duration),
}

impl PartialOrd for Token {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self, other) {
            (Self::Lease(u1, t1), Self::Lease(u2, t2)) if u1 == u2 => Some(t1.cmp(t2)),
            (Self::None(a), Self::None(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

#[async_trait]
trait Locker: Send + Sync {
    async fn acquire(&self, key: &str) -> Result<Box<dyn Held>, BoxError>;
}

#[async_trait]
trait Held: Send + Sync {
    fn holder(&self) -> String;
    fn valid_until(&self) -> Instant;
    async fn token(&self, origin: Instant, at: Instant) -> Token;
    async fn release(self: Box<Self>) -> Result<(), BoxError>;
}

#[async_trait]
impl Locker for LeaseLock {
    async fn acquire(&self, key: &str) -> Result<Box<dyn Held>, BoxError> {
        Ok(Box::new(
            LeaseLock::acquire(self, key, AcquireOptions::new()).await?,
        ))
    }
}

#[async_trait]
impl Held for LockGuard {
    fn holder(&self) -> String {
        self.holder_identity().to_owned()
    }
    fn valid_until(&self) -> Instant {
        LockGuard::valid_until(self)
    }
    async fn token(&self, _: Instant, _: Instant) -> Token {
        let t = self.fencing_token();
        Token::Lease(t.lease_uid.clone(), t.transitions)
    }
    async fn release(self: Box<Self>) -> Result<(), BoxError> {
        Ok(LockGuard::release(*self).await?)
    }
}

/// kube-lease-manager as a mutex: `changed()` until we hold, `release()`.
struct Klm {
    client: kube::Client,
    identity: String,
}

struct KlmHeld {
    manager: LeaseManager,
    api: Api<Lease>,
    name: String,
    identity: String,
    valid_until: Instant,
}

/// The shortest lease kube-lease-manager accepts (grace must be ≥ 1 s and
/// below the duration).
const KLM_DURATION: u64 = 2;
const KLM_GRACE: u64 = 1;

#[async_trait]
impl Locker for Klm {
    async fn acquire(&self, key: &str) -> Result<Box<dyn Held>, BoxError> {
        let name = format!("klm-{key}");
        let manager = LeaseManagerBuilder::new(self.client.clone(), &name)
            .with_namespace(NAMESPACE)
            .with_identity(self.identity.clone())
            .with_duration(KLM_DURATION)
            .with_grace(KLM_GRACE)
            .build()
            .await?;
        while !manager.changed().await? {}
        Ok(Box::new(KlmHeld {
            manager,
            api: Api::namespaced(self.client.clone(), NAMESPACE),
            name,
            identity: self.identity.clone(),
            // It renews `grace` before expiry: that is its own guarantee.
            valid_until: Instant::now() + Duration::from_secs(KLM_DURATION - KLM_GRACE),
        }))
    }
}

#[async_trait]
impl Held for KlmHeld {
    fn holder(&self) -> String {
        self.identity.clone()
    }
    fn valid_until(&self) -> Instant {
        self.valid_until
    }
    async fn token(&self, _: Instant, _: Instant) -> Token {
        // It has no fencing token; the closest is the Lease's transitions.
        let lease = self.api.get(&self.name).await.unwrap();
        let transitions = lease.spec.and_then(|s| s.lease_transitions).unwrap_or(0);
        Token::Lease(
            lease.metadata.uid.unwrap_or_default(),
            u64::try_from(transitions).unwrap_or(0),
        )
    }
    async fn release(self: Box<Self>) -> Result<(), BoxError> {
        Ok(self.manager.release().await?)
    }
}

/// The starting design: GET → CREATE, takeover by unconditional UPDATE,
/// fixed 100 ms retries, release by DELETE.
struct Seed {
    api: Api<Lease>,
    identity: String,
}

struct SeedHeld {
    api: Api<Lease>,
    name: String,
    identity: String,
    valid_until: Instant,
}

const SEED_DURATION: Duration = Duration::from_secs(15);

#[async_trait]
impl Locker for Seed {
    async fn acquire(&self, key: &str) -> Result<Box<dyn Held>, BoxError> {
        let name = format!("seed-{key}");
        loop {
            let now = jiff::Timestamp::now();
            let ours = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(15),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    ..LeaseSpec::default()
                }),
            };
            let sent = Instant::now();
            let acquired = match self.api.get_opt(&name).await? {
                None => match self.api.create(&PostParams::default(), &ours).await {
                    Ok(_) => true,
                    Err(kube::Error::Api(s)) if s.code == 409 => false,
                    Err(e) => return Err(e.into()),
                },
                Some(current) => {
                    let expired = current
                        .spec
                        .as_ref()
                        .and_then(|s| s.renew_time.as_ref())
                        .is_none_or(|t| {
                            t.0.checked_add(jiff::SignedDuration::from_secs(15))
                                .is_ok_and(|end| end < now)
                        });
                    if expired {
                        // Unconditional: no resourceVersion.
                        self.api
                            .replace(&name, &PostParams::default(), &ours)
                            .await?;
                        true
                    } else {
                        false
                    }
                }
            };
            if acquired {
                return Ok(Box::new(SeedHeld {
                    api: self.api.clone(),
                    name,
                    identity: self.identity.clone(),
                    valid_until: sent + SEED_DURATION,
                }));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[async_trait]
impl Held for SeedHeld {
    fn holder(&self) -> String {
        self.identity.clone()
    }
    fn valid_until(&self) -> Instant {
        self.valid_until
    }
    async fn token(&self, origin: Instant, at: Instant) -> Token {
        Token::None(at - origin)
    }
    async fn release(self: Box<Self>) -> Result<(), BoxError> {
        match self.api.delete(&self.name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

struct Results {
    uncontended_calls: f64,
    uncontended: Vec<Duration>,
    handoffs: Vec<Duration>,
    acquisitions_per_sec: f64,
    conflicts_per_acquisition: f64,
    watch_events_per_acquisition: f64,
    cpu_ms_per_acquisition: f64,
    violations: usize,
}

#[tokio::main]
async fn main() {
    let fake = FakeKube::start().await.unwrap();
    fake.faults().latency(Match::any(), LATENCY, Duration::ZERO);
    let client = fake.client();
    // `lock_bench lease-lock` runs one implementation only.
    let only = std::env::args().nth(1);
    for which in [Impl::LeaseLock, Impl::KubeLeaseManager, Impl::SeedBaseline] {
        if only.as_deref().is_some_and(|o| o != which.name()) {
            continue;
        }
        quiesce(&fake).await;
        let results = run(which, &fake, &client).await;
        let line = serde_json::json!({
            "impl": which.name(),
            "uncontended_calls": round2(results.uncontended_calls),
            "uncontended_p50_ms": ms(percentile(&results.uncontended, 0.50)),
            "uncontended_p99_ms": ms(percentile(&results.uncontended, 0.99)),
            "handoff_p50_ms": ms(percentile(&results.handoffs, 0.50)),
            "handoff_p99_ms": ms(percentile(&results.handoffs, 0.99)),
            "acquisitions_per_sec": round2(results.acquisitions_per_sec),
            "conflicts_per_acquisition": round2(results.conflicts_per_acquisition),
            "watch_events_per_acquisition": round2(results.watch_events_per_acquisition),
            "cpu_ms_per_acquisition": round2(results.cpu_ms_per_acquisition),
            "violations": results.violations,
        });
        println!("{line}");
    }
}

/// Waits (at most 10 s) until the fake has seen no call for 300 ms: what an
/// earlier implementation left running when its phase was cut off (a
/// background release, a peer's own renewal task) must not be counted
/// against the next one.
async fn quiesce(fake: &FakeKube) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = fake.calls().total();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = fake.calls().total();
        if now == last {
            return;
        }
        last = now;
    }
    eprintln!("the fake API server did not go quiet within 10 s; counts may include leftovers");
}

async fn run(which: Impl, fake: &FakeKube, client: &kube::Client) -> Results {
    let history: LockHistory<Token> = LockHistory::new();
    let origin = Instant::now();

    // Uncontended: one contender, fresh keys.
    let solo = which.contender(client, format!("{}-solo", which.name()));
    let mut uncontended = Vec::with_capacity(UNCONTENDED_ROUNDS);
    let calls_before = fake.calls().total();
    for round in 0..UNCONTENDED_ROUNDS {
        let started = Instant::now();
        let held = solo
            .acquire(&format!("{}-solo-{round}", which.name()))
            .await
            .unwrap();
        uncontended.push(started.elapsed());
        held.release().await.unwrap();
    }
    let uncontended_calls =
        (fake.calls().total() - calls_before) as f64 / UNCONTENDED_ROUNDS as f64;

    // Handoff: 20 contenders on one key.
    let (samples, budget) = which.handoff_budget();
    let handoffs = Arc::new(Mutex::new(Vec::new()));
    let last_release = Arc::new(Mutex::new(None::<Instant>));
    let stop_at = Instant::now() + budget;
    // Keys carry the implementation's name: a peer's Leases left behind at a
    // phase's cut-off must not stand in the next implementation's way.
    let handoff_key = format!("{}-handoff", which.name());
    let mut tasks = Vec::new();
    for id in 0..HANDOFF_CONTENDERS {
        let locker = which.contender(client, format!("{}-h{id}", which.name()));
        let (history, handoffs, last_release, key) = (
            history.clone(),
            Arc::clone(&handoffs),
            Arc::clone(&last_release),
            handoff_key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while handoffs.lock().unwrap().len() < samples && Instant::now() < stop_at {
                let held = locker.acquire(&key).await.unwrap();
                let at = Instant::now();
                if let Some(released) = last_release.lock().unwrap().take() {
                    handoffs.lock().unwrap().push(at - released);
                }
                record(&history, &key, held.as_ref(), origin, at).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
                let releasing = Instant::now();
                history.released(&key, held.holder(), releasing);
                *last_release.lock().unwrap() = Some(releasing);
                held.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let handoffs = handoffs.lock().unwrap().clone();

    // Throughput: 100 keys × 20 contenders, one acquisition each, for at
    // most THROUGHPUT_WINDOW.
    let calls_before = fake.calls().snapshot();
    let conflicts_before = conflicts(fake);
    let events_before = fake.watch_events();
    let cpu_before = own_cpu_seconds().unwrap();
    let started = Instant::now();
    let completed = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for key in 0..THROUGHPUT_KEYS {
        for id in 0..THROUGHPUT_CONTENDERS {
            let locker = which.contender(client, format!("{}-t{key}-{id}", which.name()));
            let (history, completed, name) =
                (history.clone(), Arc::clone(&completed), which.name());
            tasks.spawn(async move {
                let key = format!("{name}-key-{key}");
                let held = locker.acquire(&key).await.unwrap();
                let at = Instant::now();
                record(&history, &key, held.as_ref(), origin, at).await;
                history.released(&key, held.holder(), Instant::now());
                held.release().await.unwrap();
                completed.fetch_add(1, AtomicOrdering::Relaxed);
            });
        }
    }
    let all_done = async {
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
    };
    let cut_off = tokio::time::timeout(THROUGHPUT_WINDOW, all_done)
        .await
        .is_err();
    let elapsed = started.elapsed();
    let cpu = own_cpu_seconds().unwrap() - cpu_before;
    let acquisitions = completed.load(AtomicOrdering::Relaxed);
    let acquisitions_per_sec = acquisitions as f64 / elapsed.as_secs_f64();
    // Writes refused with 409 (a lost create or replace race, a conflicting
    // patch): each a request spent on nothing.
    let conflicts = conflicts(fake) - conflicts_before;
    let conflicts_per_acquisition = conflicts as f64 / acquisitions.max(1) as f64;
    // Changes the fake handed to watches (one per watch that got each):
    // the fan-out of waiters that watch, which the request counts miss.
    let watch_events_per_acquisition =
        (fake.watch_events() - events_before) as f64 / acquisitions.max(1) as f64;
    let cpu_ms_per_acquisition = cpu * 1e3 / acquisitions.max(1) as f64;
    // Where the calls went (stderr, so stdout stays one JSON line per implementation).
    let mut breakdown: Vec<String> = fake
        .calls()
        .snapshot()
        .into_iter()
        .filter_map(|(key, n)| {
            let delta = n - calls_before.get(&key).copied().unwrap_or(0);
            (delta > 0).then(|| format!("{key}: {delta}"))
        })
        .collect();
    breakdown.sort();
    eprintln!(
        "{}: throughput phase: {acquisitions} acquisitions in {elapsed:?}{}, {cpu:.2} s of CPU; calls: {}",
        which.name(),
        if cut_off {
            " (cut off at the window)"
        } else {
            ""
        },
        breakdown.join(", ")
    );
    // Contenders still waiting at the cut-off give up here, so the next
    // implementation's phases do not share the fake with them.
    drop(tasks);

    Results {
        uncontended_calls,
        uncontended,
        handoffs,
        acquisitions_per_sec,
        conflicts_per_acquisition,
        watch_events_per_acquisition,
        cpu_ms_per_acquisition,
        violations: history.violations().len(),
    }
}

/// 409 answers to Lease requests so far.
fn conflicts(fake: &FakeKube) -> u64 {
    fake.calls()
        .count_outcome(None, Some("leases"), &Outcome::Error(409))
}

async fn record(
    history: &LockHistory<Token>,
    key: &str,
    held: &dyn Held,
    origin: Instant,
    at: Instant,
) {
    let token = held.token(origin, at).await;
    history.acquired(key, held.holder(), token, at, held.valid_until());
}

fn percentile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    round2(d.as_secs_f64() * 1000.0)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
