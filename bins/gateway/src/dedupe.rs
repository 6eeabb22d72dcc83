//! [`Deduplicator`]: one RemediationRequest per fingerprint while it is not
//! terminal, and an exact count of the deliveries accepted for it.
//!
//! The rule it keeps: **a delivery is answered 2xx only after its count
//! landed.** The request is found or created through
//! [`CreateOnce`] (check ▸ lock ▸ check again ▸
//! create ▸ release, keyed by the fingerprint's hash), then
//! `status.deduplication.occurrenceCount` is incremented by a status write
//! conditioned on the `resourceVersion` read, re-read and retried on
//! conflict — the creator's own delivery included, so the count is always
//! exactly the deliveries accepted. Deliveries of one request waiting in one
//! replica are added by one writer in one write (`+n`), so simultaneous
//! duplicates contend per replica, not per delivery. Names are `rr-<hash>-<generation>`, so
//! even a creator whose lock expired mid-create is refused by the API
//! server's `AlreadyExists` instead of creating a duplicate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use lease_lock::{CreateOnce, OnceError, Outcome};
use rand::Rng;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::Error;
use crate::crd::{
    Deduplication, RemediationPhase, RemediationRequest, RemediationRequestStatus, fingerprint_hash,
};
use crate::metrics::Metrics;
use crate::requests::RemediationRequests;
use crate::signal::Signal;

/// The most conditional status writes one delivery tries before it is
/// answered 500 (each conflict means another delivery's count landed).
pub const MAX_COUNT_ATTEMPTS: u32 = 32;
/// The most times a delivery re-runs find-or-create after its create was
/// refused as `AlreadyExists` (a creator outside the lock won).
const MAX_CREATE_RACES: u32 = 3;

/// What recording one delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The request's name.
    pub name: String,
    /// Whether this delivery created it.
    pub created: bool,
    /// Its occurrence count after this delivery.
    pub occurrence_count: u64,
}

/// Finds or creates the request of a signal and counts the delivery.
#[derive(Clone)]
pub struct Deduplicator {
    once: CreateOnce,
    requests: Arc<dyn RemediationRequests>,
    metrics: Metrics,
    batches: Arc<Mutex<HashMap<String, Batch>>>,
}

/// The deliveries of one request waiting in this replica for their count:
/// one writer adds them all in one compare-and-swap, so simultaneous
/// duplicates contend per replica, not per delivery.
#[derive(Default)]
struct Batch {
    writing: bool,
    waiting: Vec<oneshot::Sender<Result<u64, Error>>>,
}

impl std::fmt::Debug for Deduplicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deduplicator")
            .field("once", &self.once)
            .finish_non_exhaustive()
    }
}

impl Deduplicator {
    /// Over `once` (its lock keyed by fingerprint hashes) and `requests`.
    pub fn new(once: CreateOnce, requests: Arc<dyn RemediationRequests>, metrics: Metrics) -> Self {
        Self {
            once,
            requests,
            metrics,
            batches: Arc::default(),
        }
    }

    /// Records one delivery of `signal`: the request it counts for, and
    /// whether it created it. Any error means the delivery was not counted.
    pub async fn record(&self, signal: &Signal) -> Result<Recorded, Error> {
        let started = Instant::now();
        let result = self.record_counted(signal).await;
        self.metrics
            .signal(result.as_ref().map(|r| r.created), started.elapsed());
        result
    }

    async fn record_counted(&self, signal: &Signal) -> Result<Recorded, Error> {
        let hash = fingerprint_hash(&signal.fingerprint);
        let mut races = 0;
        let (request, created) = loop {
            match self.find_or_create(signal, &hash).await {
                Err(Error::AlreadyExists(_)) if races < MAX_CREATE_RACES => races += 1,
                Err(e) => return Err(e),
                Ok(found) => break found,
            }
        };
        let name = request.metadata.name.clone().unwrap_or_default();
        let occurrence_count = self.count_with_others(request).await?;
        Ok(Recorded {
            name,
            created,
            occurrence_count,
        })
    }

    /// The open request of the fingerprint, created under the lock if
    /// there is none; whether this call created it.
    async fn find_or_create(
        &self,
        signal: &Signal,
        hash: &str,
    ) -> Result<(RemediationRequest, bool), Error> {
        // The next generation, learnt by each check: the create runs right
        // after a check under the lock, so it sees that check's value.
        let next_generation = AtomicU32::new(1);
        let own_time = std::sync::Mutex::new(Duration::ZERO);
        let add_own = |d: Duration| {
            if let Ok(mut t) = own_time.lock() {
                *t += d;
            }
        };
        let mut first_check = true;
        let started = Instant::now();
        let check = || {
            let timed = first_check;
            first_check = false;
            let next_generation = &next_generation;
            let add_own = &add_own;
            async move {
                let t = Instant::now();
                let all = self.requests.list_by_fingerprint_hash(hash).await?;
                if timed {
                    add_own(t.elapsed());
                }
                let same: Vec<_> = all
                    .into_iter()
                    .filter(|r| r.spec.fingerprint == signal.fingerprint)
                    .collect();
                let next = same
                    .iter()
                    .map(RemediationRequest::generation)
                    .max()
                    .unwrap_or(0)
                    + 1;
                next_generation.store(next, Ordering::SeqCst);
                Ok::<_, Error>(same.into_iter().find(|r| !r.is_terminal()))
            }
        };
        let create = || async {
            let t = Instant::now();
            let request = RemediationRequest::for_fingerprint(
                signal.to_spec(),
                next_generation.load(Ordering::SeqCst),
            );
            let created = self.requests.create(&request).await;
            add_own(t.elapsed());
            created
        };
        let outcome = self.once.run(hash, check, create).await;
        let own = own_time.lock().map(|t| *t).unwrap_or_default();
        self.metrics
            .added_latency(started.elapsed().saturating_sub(own));
        match outcome {
            Ok(Outcome::Created(r)) => Ok((r, true)),
            Ok(Outcome::Existing(r)) => Ok((r, false)),
            Err(OnceError::Check(e) | OnceError::Create(e)) => Err(e),
            Err(OnceError::Lock(e)) => Err(Error::Lock(e)),
        }
    }

    /// Adds this delivery to the request's count, together with the other
    /// deliveries of the request waiting in this replica; the count after
    /// the write that included it.
    async fn count_with_others(&self, request: RemediationRequest) -> Result<u64, Error> {
        let name = request.metadata.name.clone().unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut batches = self.batches();
            let batch = batches.entry(name.clone()).or_default();
            batch.waiting.push(tx);
            !std::mem::replace(&mut batch.writing, true)
        };
        if lead {
            // In its own task: a caller that goes away never strands the
            // deliveries waiting in its batch.
            let this = self.clone();
            tokio::spawn(async move { this.write_batches(&name, request).await });
        }
        rx.await
            .unwrap_or_else(|_| Err(Error::Unreachable("the count writer stopped".into())))
    }

    /// Writes the waiting deliveries of `name`, a batch at a time, until
    /// none is left.
    async fn write_batches(&self, name: &str, mut current: RemediationRequest) {
        loop {
            let waiting = {
                let mut batches = self.batches();
                let Some(batch) = batches.get_mut(name) else {
                    return;
                };
                if batch.waiting.is_empty() {
                    batches.remove(name);
                    return;
                }
                std::mem::take(&mut batch.waiting)
            };
            let n = waiting.len() as u64;
            match self.count(current.clone(), n).await {
                Ok(stored) => {
                    let count = stored.occurrence_count();
                    for w in waiting {
                        let _ = w.send(Ok(count));
                    }
                    current = stored;
                }
                Err(e) => {
                    for w in waiting {
                        let _ = w.send(Err(e.for_waiter()));
                    }
                    // A later batch starts from a fresh read.
                    match self.requests.get(name).await {
                        Ok(Some(fresh)) => current = fresh,
                        Ok(None) | Err(_) => {
                            let rest = self
                                .batches()
                                .remove(name)
                                .map(|b| b.waiting)
                                .unwrap_or_default();
                            for w in rest {
                                let _ = w.send(Err(e.for_waiter()));
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    fn batches(&self) -> std::sync::MutexGuard<'_, HashMap<String, Batch>> {
        // Every change is one insert, take or remove: poisoning leaves no half state.
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `n` deliveries to the request's count by compare-and-swap.
    async fn count(
        &self,
        mut current: RemediationRequest,
        n: u64,
    ) -> Result<RemediationRequest, Error> {
        let name = current.metadata.name.clone().unwrap_or_default();
        for attempt in 0..MAX_COUNT_ATTEMPTS {
            let now = Timestamp::now();
            let mut next = current.clone();
            let status = next
                .status
                .get_or_insert_with(RemediationRequestStatus::default);
            status.phase.get_or_insert(RemediationPhase::Pending);
            let dedup = status.deduplication.get_or_insert(Deduplication {
                occurrence_count: 0,
                first_seen: now,
                last_seen: now,
            });
            dedup.occurrence_count += n;
            dedup.last_seen = now.max(dedup.last_seen);
            match self.requests.replace_status(&next).await {
                Ok(stored) => return Ok(stored),
                Err(Error::Conflict(_)) => {
                    self.metrics.count_conflicts.inc();
                    if attempt > 2 {
                        // Many replicas counting one fingerprint: spread out.
                        let jitter = rand::rng().random_range(0..=(1u64 << attempt.min(6)));
                        tokio::time::sleep(Duration::from_millis(jitter)).await;
                    }
                    current = self
                        .requests
                        .get(&name)
                        .await?
                        .ok_or_else(|| Error::NotFound(name.clone()))?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Contended(name))
    }
}
