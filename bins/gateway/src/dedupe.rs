//! [`Deduplicator`]: one RemediationRequest per fingerprint while it is not
//! terminal, and an exact count of the deliveries accepted for it.
//!
//! The rule it keeps: **a delivery is answered 2xx only after its count
//! landed.** The request is found or created through
//! [`CreateOnce`] (check ▸ lock ▸ check again ▸
//! create ▸ release, keyed by the fingerprint's hash), then this replica's
//! own entry of `status.deduplication.replicas` is raised by a
//! compare-and-swap of that entry alone (a JSON patch that tests it) —
//! the creator's own delivery included, so the entries always sum to
//! exactly the deliveries accepted. Replicas never conflict with each
//! other over a count: an entry has one writer, so a failed test means
//! only that this replica's read was stale. Deliveries of one request
//! waiting in one replica are added by one writer in one write (`+n`).
//! `occurrenceCount`, the sum, is folded in afterwards, off the answer
//! path, by one compare-and-swap of the whole status at the count write's
//! resourceVersion (a conflict means a later write, whose writer folds in
//! turn); [`Deduplicator::settled`] waits for the folds in flight. Names are `rr-<hash>-<generation>`, so
//! even a creator whose lock expired mid-create is refused by the API
//! server's `AlreadyExists` instead of creating a duplicate.
//!
//! Replica identities must be unique among the replicas running at once
//! (the pod name), as the lock's holder identity already must.

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
    RemediationPhase, RemediationRequest, RemediationRequestStatus, fingerprint_hash,
};
use crate::metrics::Metrics;
use crate::requests::RemediationRequests;
use crate::signal::Signal;

/// The most compare-and-swaps of its own count one delivery tries before
/// it is answered 500 (a conflict means the replica's read was stale, or
/// another replica created the deduplication status first).
pub const MAX_COUNT_ATTEMPTS: u32 = 8;
/// The most compare-and-swaps one fold of `occurrenceCount` tries after
/// transient failures (a conflict ends it: a later write carries the sum
/// on); the next delivery's fold picks up what a fold that gave up left.
const MAX_FOLD_ATTEMPTS: u32 = 32;
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
    /// Its occurrence count after this delivery (the replicas' counts as
    /// the write that counted it returned them).
    pub occurrence_count: u64,
}

/// Finds or creates the request of a signal and counts the delivery.
#[derive(Clone)]
pub struct Deduplicator {
    once: CreateOnce,
    requests: Arc<dyn RemediationRequests>,
    metrics: Metrics,
    replica: String,
    batches: Arc<Mutex<HashMap<String, Batch>>>,
    folds: Arc<Folds>,
}

/// The folds of `occurrenceCount` in flight in this replica: one per
/// request at a time; a count landing meanwhile asks it to run again.
struct Folds {
    /// Request name → the newer object a count write returned while its
    /// fold ran (the fold runs again from it).
    running: Mutex<HashMap<String, Option<RemediationRequest>>>,
    /// How many requests have a fold in flight.
    in_flight: tokio::sync::watch::Sender<usize>,
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
        let replica = once.lock().config().identity.clone();
        Self {
            once,
            requests,
            metrics,
            replica,
            batches: Arc::default(),
            folds: Arc::new(Folds {
                running: Mutex::default(),
                in_flight: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// Waits until no fold of `occurrenceCount` is in flight in this
    /// replica: every delivery it answered is then in the stored
    /// `occurrenceCount` (unless a fold gave up, which is logged).
    pub async fn settled(&self) {
        let mut rx = self.folds.in_flight.subscribe();
        // The sender lives in `self`: the wait cannot end with an error.
        let _ = rx.wait_for(|n| *n == 0).await;
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
                    let count = stored.counted();
                    for w in waiting {
                        let _ = w.send(Ok(count));
                    }
                    self.fold(name, &stored);
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
        lock_map(&self.batches)
    }

    /// Adds `n` deliveries to this replica's count of the request by a
    /// compare-and-swap of that entry.
    async fn count(
        &self,
        mut current: RemediationRequest,
        n: u64,
    ) -> Result<RemediationRequest, Error> {
        let name = current.metadata.name.clone().unwrap_or_default();
        for _ in 0..MAX_COUNT_ATTEMPTS {
            let next = current.replica_count(&self.replica).unwrap_or(0) + n;
            match self
                .requests
                .swap_replica_count(&current, &self.replica, next, Timestamp::now())
                .await
            {
                Ok(stored) => return Ok(stored),
                Err(Error::Conflict(_)) => {
                    self.metrics.count_conflicts.inc();
                    let fresh = self
                        .requests
                        .get(&name)
                        .await?
                        .ok_or_else(|| Error::NotFound(name.clone()))?;
                    if fresh.metadata.resource_version == current.metadata.resource_version {
                        // Nothing changed, so the test did not fail on
                        // staleness: the server refuses the patch itself.
                        return Err(Error::Api {
                            status: 422,
                            message: format!("the count patch of {name} was refused"),
                        });
                    }
                    current = fresh;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Contended(name))
    }

    /// Folds the replicas' counts of `latest` (what this replica's count
    /// write returned) into its `occurrenceCount` in the background, unless
    /// it already holds them; one fold per request at a time (a count
    /// landing meanwhile hands the fold its newer object).
    ///
    /// A fold is one compare-and-swap at the resourceVersion of the count
    /// write, and a conflict ends it without a read: whatever was written
    /// after our count is either a fold computed from a state that already
    /// held it, or another count whose writer folds in turn. The last
    /// write to the request is therefore always a fold of every count, at
    /// a cost of at most one status write per count write. Only other
    /// failures (the API unreachable) re-read and retry.
    fn fold(&self, name: &str, latest: &RemediationRequest) {
        if fold_of(latest).is_none() {
            return;
        }
        {
            let mut running = lock_map(&self.folds.running);
            if let Some(next) = running.get_mut(name) {
                *next = Some(latest.clone());
                return;
            }
            running.insert(name.to_owned(), None);
        }
        self.folds.in_flight.send_modify(|n| *n += 1);
        let this = self.clone();
        let (name, latest) = (name.to_owned(), latest.clone());
        tokio::spawn(async move {
            let mut current = Some(latest);
            while let Some(request) = current.take() {
                this.fold_once(&name, request).await;
                let mut running = lock_map(&this.folds.running);
                current = running.get_mut(&name).and_then(Option::take);
                if current.is_none() {
                    running.remove(&name);
                }
            }
            this.folds.in_flight.send_modify(|n| *n -= 1);
        });
    }

    /// Compare-and-swaps `occurrenceCount` of `current` up to the replicas'
    /// sum: done when it holds, when a later write conflicts (that write's
    /// writer or fold carries the sum on), when the request is gone, or
    /// when the attempts after transient failures run out.
    async fn fold_once(&self, name: &str, mut current: RemediationRequest) {
        for attempt in 0..MAX_FOLD_ATTEMPTS {
            let Some(next) = fold_of(&current) else {
                return;
            };
            let error = match self.requests.replace_status(&next).await {
                Ok(_) | Err(Error::NotFound(_)) => return,
                Err(Error::Conflict(_)) => {
                    self.metrics.fold_conflicts.inc();
                    return;
                }
                Err(e) => e,
            };
            tracing::debug!(request = %name, error = %error, "occurrenceCount fold failed; retrying");
            let jitter = rand::rng().random_range(0..=(1u64 << attempt.min(6)));
            tokio::time::sleep(Duration::from_millis(jitter)).await;
            match self.requests.get(name).await {
                Ok(Some(fresh)) => current = fresh,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(request = %name, error = %e, "re-read for the fold failed; retrying");
                }
            }
        }
        self.metrics.fold_gave_up.inc();
        tracing::warn!(request = %name, attempts = MAX_FOLD_ATTEMPTS, "gave up folding the replicas' counts into occurrenceCount; the next delivery's fold will");
    }
}

/// `request` with `occurrenceCount` raised to the sum of the replicas'
/// counts (and `phase` Pending if it has none), or `None` if it holds it.
fn fold_of(request: &RemediationRequest) -> Option<RemediationRequest> {
    let status = request.status.as_ref()?;
    let dedup = status.deduplication.as_ref()?;
    let sum: u64 = dedup.replicas.values().sum();
    if dedup.occurrence_count >= sum && status.phase.is_some() {
        return None;
    }
    let mut next = request.clone();
    let status = next
        .status
        .get_or_insert_with(RemediationRequestStatus::default);
    status.phase.get_or_insert(RemediationPhase::Pending);
    if let Some(d) = status.deduplication.as_mut() {
        d.occurrence_count = d.occurrence_count.max(sum);
    }
    Some(next)
}

fn lock_map<K, V>(m: &Mutex<HashMap<K, V>>) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
    // Every change is one insert or remove: poisoning leaves no half state.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
