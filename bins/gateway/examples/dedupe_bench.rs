//! Multi-replica deduplication, side by side with the seed's design, on
//! testkit's FakeKube with 2 ms injected latency per API call.
//!
//! ```text
//! cargo run --release -p gateway --example dedupe_bench
//! ```
//!
//! For each replica count (1, 3, 10) and implementation, `FINGERPRINTS`
//! fingerprints each receive `DUPLICATES` deliveries at once (one burst per
//! fingerprint, a burst every `WAVE_SPACING`), spread over the replicas (all in one process, each replica with its own client and
//! connections). One JSON line per configuration and implementation:
//! `impl, replicas, signals, fingerprints, duplicates_created,
//! duplicate_rate, occurrence_count_lost, failed, p50_ms, p95_ms,
//! p99_ms, max_ms, added_p95_ms, kube_calls_per_signal`.
//!
//! - `gateway`: this crate (`Gateway::record`: CreateOnce over lease-lock,
//!   then a compare-and-swap of its replica's own count; `occurrenceCount`
//!   is folded in after the answer, and the bench waits for the folds
//!   before it reads the stored counts and the call counters).
//! - `seed`: the starting design as written: a Lease lock taken by GET →
//!   CREATE, a fixed 100 ms sleep and a recursive retry while it is held,
//!   an unconditional DELETE on release; under it, LIST → create with a
//!   generated name, or an unconditional status update of the count (read,
//!   add one, write without a resourceVersion).
//! - `no-lock`: the same check and create without any lock (the latency
//!   floor `added_p95_ms` is measured against), counting unconditionally.
//!
//! `duplicates_created` is the requests stored beyond one per fingerprint
//! (read from FakeKube after the run), `occurrence_count_lost` the
//! deliveries answered as recorded minus the sum of the stored counts,
//! `kube_calls_per_signal` every API request FakeKube served (watches
//! included) per delivery.
//!
//! With `DEDUPE_BENCH_CALLS` set, each run also prints FakeKube's calls by
//! verb, resource and outcome to stderr (where the calls per delivery go).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gateway::crd::{
    Deduplication, LABEL_FINGERPRINT_HASH, RemediationPhase, RemediationRequestStatus,
    fingerprint_hash,
};
use gateway::signal::{Signal, parse_signal};
use gateway::{Gateway, RemediationRequest, Settings};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use testkit::faults::Match;
use testkit::kube::FakeKube;
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const NAMESPACE: &str = "bench";
const FINGERPRINTS: usize = 50;
const DUPLICATES: usize = 10;
const REPLICAS: [usize; 3] = [1, 3, 10];
/// Fingerprint `f`'s deliveries all start at `f × WAVE_SPACING`: each
/// fingerprint is a burst of simultaneous duplicates, and the bursts do not
/// pile up into one queue that would measure the machine, not the path.
const WAVE_SPACING: Duration = Duration::from_millis(20);

/// One replica of an implementation: records one delivery.
#[async_trait]
trait Recorder: Send + Sync {
    async fn record(&self, signal: &Signal) -> Result<(), BoxError>;

    /// Waits for the work it does after answering (the gateway's folds of
    /// `occurrenceCount`).
    async fn settled(&self) {}
}

#[async_trait]
impl Recorder for Gateway {
    async fn record(&self, signal: &Signal) -> Result<(), BoxError> {
        Gateway::record(self, signal).await?;
        Ok(())
    }

    async fn settled(&self) {
        Gateway::settled(self).await;
    }
}

/// The seed's design, or the same without a lock.
struct Seed {
    requests: Api<RemediationRequest>,
    leases: Api<Lease>,
    identity: String,
    lock: bool,
}

#[async_trait]
impl Recorder for Seed {
    async fn record(&self, signal: &Signal) -> Result<(), BoxError> {
        let hash = fingerprint_hash(&signal.fingerprint);
        if let Some(found) = self.find(&hash).await? {
            return self.count(found).await;
        }
        if !self.lock {
            let created = self.create(signal).await?;
            return self.count(created).await;
        }
        self.acquire(&hash).await?;
        let result = async {
            match self.find(&hash).await? {
                Some(found) => Ok(found),
                None => self.create(signal).await,
            }
        }
        .await;
        // Unconditional DELETE on release.
        let _ = self
            .leases
            .delete(&format!("seed-{hash}"), &DeleteParams::default())
            .await;
        self.count(result?).await
    }
}

impl Seed {
    async fn find(&self, hash: &str) -> Result<Option<RemediationRequest>, BoxError> {
        let list = self
            .requests
            .list(&ListParams::default().labels(&format!("{LABEL_FINGERPRINT_HASH}={hash}")))
            .await?;
        Ok(list.items.into_iter().find(|r| !r.is_terminal()))
    }

    async fn create(&self, signal: &Signal) -> Result<RemediationRequest, BoxError> {
        let mut rr = RemediationRequest::for_fingerprint(signal.to_spec(), 1);
        // The seed names requests with generateName.
        rr.metadata.name = None;
        rr.metadata.generate_name = Some(format!("rr-{}-", fingerprint_hash(&signal.fingerprint)));
        Ok(self.requests.create(&PostParams::default(), &rr).await?)
    }

    /// Read, add one, write back without a resourceVersion.
    async fn count(&self, rr: RemediationRequest) -> Result<(), BoxError> {
        let name = rr.metadata.name.clone().unwrap_or_default();
        let mut current = self.requests.get(&name).await?;
        let now = jiff::Timestamp::now();
        let status = current
            .status
            .get_or_insert_with(RemediationRequestStatus::default);
        status.phase.get_or_insert(RemediationPhase::Pending);
        let d = status.deduplication.get_or_insert(Deduplication {
            occurrence_count: 0,
            replicas: BTreeMap::new(),
            first_seen: now,
            last_seen: now,
        });
        d.occurrence_count += 1;
        d.last_seen = now;
        current.metadata.resource_version = None;
        self.requests
            .replace_status(&name, &PostParams::default(), &current)
            .await?;
        Ok(())
    }

    /// GET → CREATE; held: sleep 100 ms and retry (the seed recursed).
    async fn acquire(&self, hash: &str) -> Result<(), BoxError> {
        let name = format!("seed-{hash}");
        loop {
            let now = jiff::Timestamp::now();
            if self.leases.get_opt(&name).await?.is_none() {
                let lease = Lease {
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
                match self.leases.create(&PostParams::default(), &lease).await {
                    Ok(_) => return Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Gateway,
    Seed,
    NoLock,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Seed => "seed",
            Self::NoLock => "no-lock",
        }
    }
}

struct Run {
    signals: usize,
    duplicates_created: usize,
    occurrence_count_lost: i64,
    failed: usize,
    p50: Duration,
    p95: Duration,
    p99: Duration,
    max: Duration,
    calls_per_signal: f64,
}

async fn run(which: Impl, replicas: usize) -> Run {
    let kube = FakeKube::builder()
        .crd(RemediationRequest::crd())
        .start()
        .await
        .unwrap();
    kube.faults()
        .latency(Match::any(), Duration::from_millis(2), Duration::ZERO);
    let recorders: Vec<Arc<dyn Recorder>> = (0..replicas)
        .map(|i| -> Arc<dyn Recorder> {
            let client = kube.client();
            let identity = format!("{}-{i}", which.name());
            match which {
                Impl::Gateway => {
                    Arc::new(Gateway::cluster(client, Settings::new(NAMESPACE, identity)).unwrap())
                }
                Impl::Seed | Impl::NoLock => Arc::new(Seed {
                    requests: Api::namespaced(client.clone(), NAMESPACE),
                    leases: Api::namespaced(client, NAMESPACE),
                    identity,
                    lock: which == Impl::Seed,
                }),
            }
        })
        .collect();
    let signals: Vec<Signal> = (0..FINGERPRINTS)
        .map(|f| {
            parse_signal(
                json!({
                    "source": "bench",
                    "alertName": "HighErrorRate",
                    "severity": "critical",
                    "fingerprint": format!("bench-{f:04}"),
                })
                .to_string()
                .as_bytes(),
            )
            .unwrap()
        })
        .collect();
    kube.calls().reset();
    let origin = Instant::now();
    let mut tasks = Vec::new();
    for (f, signal) in signals.iter().enumerate() {
        for d in 0..DUPLICATES {
            let recorder = Arc::clone(&recorders[(f + d) % replicas]);
            let signal = signal.clone();
            let starts_at = origin + WAVE_SPACING * f as u32;
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(starts_at).await;
                let started = Instant::now();
                let ok = recorder.record(&signal).await.is_ok();
                (ok, started.elapsed())
            }));
        }
    }
    let mut latencies = Vec::new();
    let mut accepted = 0usize;
    for task in tasks {
        let (ok, took) = task.await.unwrap();
        if ok {
            accepted += 1;
            latencies.push(took);
        }
    }
    for recorder in &recorders {
        recorder.settled().await;
    }
    // The folds after the answers included: they are the path's cost too.
    let calls = kube.calls().total();
    if std::env::var_os("DEDUPE_BENCH_CALLS").is_some() {
        eprintln!(
            "{} x{replicas}: {:?}",
            which.name(),
            kube.calls().snapshot()
        );
    }
    let api: Api<RemediationRequest> = Api::namespaced(kube.client(), NAMESPACE);
    let stored = api.list(&ListParams::default()).await.unwrap().items;
    let mut per_fingerprint: BTreeMap<String, usize> = BTreeMap::new();
    let mut counted = 0u64;
    for rr in &stored {
        *per_fingerprint
            .entry(rr.spec.fingerprint.clone())
            .or_default() += 1;
        counted += rr.occurrence_count();
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    let signals_sent = FINGERPRINTS * DUPLICATES;
    let run = Run {
        signals: signals_sent,
        duplicates_created: per_fingerprint.values().map(|n| n - 1).sum(),
        occurrence_count_lost: accepted as i64 - counted as i64,
        failed: signals_sent - accepted,
        p50: pct(0.50),
        p95: pct(0.95),
        p99: pct(0.99),
        max: latencies.last().copied().unwrap_or_default(),
        calls_per_signal: calls as f64 / signals_sent as f64,
    };
    drop(recorders);
    kube.shutdown().await;
    run
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    resilience::tls::ensure_crypto_provider();
    for replicas in REPLICAS {
        let floor = run(Impl::NoLock, replicas).await;
        for which in [Impl::Gateway, Impl::Seed, Impl::NoLock] {
            let measured;
            let r = if which == Impl::NoLock {
                &floor
            } else {
                measured = run(which, replicas).await;
                &measured
            };
            let line = json!({
                "impl": which.name(),
                "replicas": replicas,
                "signals": r.signals,
                "fingerprints": FINGERPRINTS,
                "duplicates_created": r.duplicates_created,
                "duplicate_rate": r.duplicates_created as f64 / FINGERPRINTS as f64,
                "occurrence_count_lost": r.occurrence_count_lost,
                "failed": r.failed,
                "p50_ms": ms(r.p50),
                "p95_ms": ms(r.p95),
                "p99_ms": ms(r.p99),
                "max_ms": ms(r.max),
                "added_p95_ms": ((ms(r.p95) - ms(floor.p95)) * 100.0).round() / 100.0,
                "kube_calls_per_signal": (r.calls_per_signal * 100.0).round() / 100.0,
            });
            println!("{line}");
        }
    }
}
