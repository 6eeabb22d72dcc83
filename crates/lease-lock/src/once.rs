//! [`CreateOnce`]: one creator of a thing across replicas.
//!
//! Several processes may be asked at the same moment to create the same
//! thing (a resource per alert fingerprint, per webhook delivery, …), and
//! exactly one must. The helper runs the double-checked pattern over a
//! [`LeaseLock`]: **check** whether the thing exists ▸ if not, take the
//! key's lock ▸ **check again** under the lock ▸ **create** ▸ release.
//! The check and the create are the caller's closures, so any service uses
//! it for its own resources.
//!
//! Rule kept here: a contender never sleeps a fixed interval and never
//! mistakes an API failure for contention. It waits on the holder's Lease
//! (woken by a watch the moment it is released, with jittered polls in
//! case the watch is slow, and at the instant the holder's claim would
//! expire), then checks again and finds what the holder created. An API
//! error of the lock, the check or the create is returned at once as an
//! error, so the caller answers 500 and its sender retries; it is never
//! reported as "not created" or "someone else has it".
//!
//! Contenders inside one process queue on an in-process mutex per key
//! first, so a process sends at most one acquisition per key at a time
//! (a second one through the same [`LeaseLock`] would be refused with
//! [`Error::AlreadyHeld`]). A caller that queued while another call of the
//! same process found or created the thing takes that answer when its
//! turn comes, without a check of its own: the thing existed after it
//! arrived, which is all [`Outcome::Existing`] claims. A failed call's
//! error is never handed on; the next caller runs the whole pattern.
//!
//! Exactly-once holds while the creator's hold is valid: the create runs
//! only while its guard is valid, and a holder that pauses past its lease
//! may still create late. Callers that need a hard guarantee give the thing
//! a name derived from the key, so that the API server's `AlreadyExists`
//! refuses a second create whatever the lock did.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use resilience::Backoff;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::error::Error;
use crate::lock::{Judgment, LeaseLock, holder_of, lock};
use crate::{LeaseEvent, MAX_ACQUIRE_TIMEOUT};

/// What [`CreateOnce::run`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// This call created the thing (its create closure ran and succeeded).
    Created(T),
    /// The thing existed: created before, or by a contender while we waited.
    Existing(T),
}

impl<T> Outcome<T> {
    /// The thing, however it came to be.
    pub fn into_inner(self) -> T {
        match self {
            Self::Created(t) | Self::Existing(t) => t,
        }
    }

    /// Whether this call created it.
    pub fn is_created(&self) -> bool {
        matches!(self, Self::Created(_))
    }
}

/// Why [`CreateOnce::run`] failed. Every variant is a failure to answer
/// the question, never "someone else is creating it".
#[derive(Debug, thiserror::Error)]
pub enum OnceError<E> {
    /// The lock failed: an API error on the Lease, a timeout waiting for a
    /// holder that neither finished nor expired, a lost hold.
    #[error("lock: {0}")]
    Lock(#[source] Error),
    /// The caller's check failed.
    #[error("check: {0}")]
    Check(#[source] E),
    /// The caller's create failed.
    #[error("create: {0}")]
    Create(#[source] E),
}

impl<E: resilience::Transient> resilience::Transient for OnceError<E> {
    fn is_transient(&self) -> bool {
        match self {
            Self::Lock(e) => e.is_transient(),
            Self::Check(e) | Self::Create(e) => e.is_transient(),
        }
    }
}

/// One creator across replicas, over a [`LeaseLock`]. Cheap to clone
/// (clones share the in-process queues); create one per process and lock.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::{Arc, Mutex};
/// use lease_lock::{CreateOnce, LeaseLock, LockConfig, MemoryLeases, Outcome};
///
/// let lock = LeaseLock::new(MemoryLeases::new(), LockConfig::new("pod-a", "default"))?;
/// let once = CreateOnce::new(lock);
/// let created: Arc<Mutex<Option<String>>> = Arc::default();
/// let check = || async { Ok::<_, std::io::Error>(created.lock().unwrap().clone()) };
/// let create = || async {
///     *created.lock().unwrap() = Some("rr-1".to_owned());
///     Ok("rr-1".to_owned())
/// };
/// assert_eq!(once.run("fingerprint-1", check, create).await?, Outcome::Created("rr-1".into()));
/// let create_again = || async { Ok("rr-2".to_owned()) };
/// assert_eq!(once.run("fingerprint-1", check, create_again).await?, Outcome::Existing("rr-1".into()));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct CreateOnce {
    lock: LeaseLock,
    timeout: Duration,
    local: Arc<Mutex<HashMap<String, Arc<KeyQueue>>>>,
}

/// The callers of one key in this process: whose turn it is, and what the
/// last call that succeeded found or created.
#[derive(Default)]
struct KeyQueue {
    turn: tokio::sync::Mutex<()>,
    answer: Mutex<Answer>,
}

/// What the calls of a key in this process have answered so far.
#[derive(Default)]
struct Answer {
    /// How many calls ended with the thing found or created.
    succeeded: u64,
    /// The thing, if the last call to end succeeded (a failure clears it).
    thing: Option<Arc<dyn Any + Send + Sync>>,
}

impl KeyQueue {
    /// The thing, if a call succeeded after `succeeded` calls had and the
    /// last call to end succeeded, with a thing of type `T`.
    fn answered_since<T: Clone + 'static>(&self, succeeded: u64) -> Option<T> {
        let answer = lock(&self.answer);
        if answer.succeeded <= succeeded {
            return None;
        }
        answer.thing.as_ref()?.downcast_ref::<T>().cloned()
    }

    /// Keeps what a call ended with for the callers queued behind it: the
    /// thing if it found or created one, nothing if it failed.
    fn record<T: Clone + Send + Sync + 'static, E>(
        &self,
        result: &Result<Outcome<T>, OnceError<E>>,
    ) {
        let mut answer = lock(&self.answer);
        match result {
            Ok(Outcome::Created(thing) | Outcome::Existing(thing)) => {
                answer.succeeded += 1;
                answer.thing = Some(Arc::new(thing.clone()));
            }
            Err(_) => answer.thing = None,
        }
    }
}

impl std::fmt::Debug for KeyQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyQueue").finish_non_exhaustive()
    }
}

impl CreateOnce {
    /// A helper over `lock`, waiting at most the lock's `acquire_timeout`
    /// for a contender to finish.
    pub fn new(lock: LeaseLock) -> Self {
        let timeout = lock.config().acquire_timeout;
        Self {
            lock,
            timeout,
            local: Arc::default(),
        }
    }

    /// Waits at most `timeout` per call (at most [`MAX_ACQUIRE_TIMEOUT`])
    /// instead of the lock's `acquire_timeout`.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.min(MAX_ACQUIRE_TIMEOUT);
        self
    }

    /// The lock it runs on.
    pub fn lock(&self) -> &LeaseLock {
        &self.lock
    }

    /// Finds or creates the thing of `key`: `check` answers whether it
    /// exists (`Ok(Some)`), `create` makes it. `check` runs before the lock
    /// (the common duplicate costs no lock call at all), again under it,
    /// and after every wait; `create` runs at most once, under the lock,
    /// and only after a check under the lock found nothing.
    ///
    /// Errors: [`OnceError::Check`] or [`OnceError::Create`] with the
    /// caller's error, and [`OnceError::Lock`] for the lock's (an API
    /// failure, [`Error::Timeout`] when a holder neither finished nor
    /// expired within the timeout, [`Error::Lost`] when our hold ended
    /// before the create could start, [`Error::InvalidKey`]).
    ///
    /// Callers of one key in one process take turns; a caller whose turn
    /// comes after another call found or created the thing gets
    /// [`Outcome::Existing`] with that thing and runs neither closure (so
    /// ten simultaneous duplicates in one replica cost one check, not
    /// ten).
    ///
    /// Cancel-safe: dropping the future releases a held lock in the
    /// background (the guard's drop), and a create already sent may land.
    pub async fn run<T, E, C, CF, M, MF>(
        &self,
        key: &str,
        mut check: C,
        create: M,
    ) -> Result<Outcome<T>, OnceError<E>>
    where
        T: Clone + Send + Sync + 'static,
        C: FnMut() -> CF,
        CF: Future<Output = Result<Option<T>, E>>,
        M: FnOnce() -> MF,
        MF: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let name = self.lock.lease_name(key).map_err(OnceError::Lock)?;
        let queue = self.queue(key);
        let arrived_after = lock(&queue.answer).succeeded;
        let turn = match tokio::time::timeout_at(deadline, queue.turn.lock()).await {
            Ok(turn) => turn,
            Err(_) => return Err(OnceError::Lock(self.timed_out(key, started, None))),
        };
        let result = match queue.answered_since::<T>(arrived_after) {
            Some(thing) => Ok(Outcome::Existing(thing)),
            None => {
                let result = self
                    .run_in_turn(key, &name, deadline, started, &mut check, create)
                    .await;
                queue.record(&result);
                result
            }
        };
        drop(turn);
        self.forget_queue(key, &queue);
        result
    }

    async fn run_in_turn<T, E, C, CF, M, MF>(
        &self,
        key: &str,
        name: &str,
        deadline: Instant,
        started: Instant,
        check: &mut C,
        create: M,
    ) -> Result<Outcome<T>, OnceError<E>>
    where
        C: FnMut() -> CF,
        CF: Future<Output = Result<Option<T>, E>>,
        M: FnOnce() -> MF,
        MF: Future<Output = Result<T, E>>,
    {
        let mut backoff = Backoff::new(self.lock.config().backoff.clone());
        loop {
            if let Some(existing) = check().await.map_err(OnceError::Check)? {
                return Ok(Outcome::Existing(existing));
            }
            if Instant::now() >= deadline {
                let holder = self.holder(name);
                return Err(OnceError::Lock(self.timed_out(key, started, holder)));
            }
            let Some(guard) = self.lock.try_acquire(key).await.map_err(OnceError::Lock)? else {
                let delay = backoff.next().unwrap_or(self.lock.config().backoff.max);
                self.wait_for_change(
                    name,
                    delay.min(deadline.saturating_duration_since(Instant::now())),
                )
                .await;
                continue;
            };
            let result = match check().await {
                Err(e) => Err(OnceError::Check(e)),
                Ok(Some(existing)) => Ok(Outcome::Existing(existing)),
                Ok(None) if !guard.is_valid() => Err(OnceError::Lock(Error::Lost {
                    key: key.to_owned(),
                    reason: crate::LossReason::RenewDeadline,
                })),
                Ok(None) => create()
                    .await
                    .map(Outcome::Created)
                    .map_err(OnceError::Create),
            };
            if let Err(e) = guard.release().await {
                // What was created stays created; the Lease expires by itself.
                warn!(lease = %name, error = %e, "could not release the creation lock; it will expire");
            }
            return result;
        }
    }

    /// Waits until the Lease `name` changes holder, is released or
    /// deleted (a watch from the version last seen), until the holder's
    /// claim would expire, or at most `poll`; whichever comes first.
    async fn wait_for_change(&self, name: &str, poll: Duration) {
        let inner = self.lock.inner();
        let mut wake_at = Instant::now() + poll;
        let Some(seen) = inner.cached(name) else {
            tokio::time::sleep_until(wake_at).await;
            return;
        };
        if let Judgment::Held { until } = inner.judge(&seen) {
            wake_at = wake_at.min(until);
        }
        let holder = seen.holder().map(str::to_owned);
        let mut watch = inner.backend.watch(
            &inner.config.namespace,
            name,
            seen.lease.metadata.resource_version.clone(),
        );
        let sleep = tokio::time::sleep_until(wake_at);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return,
                event = watch.next() => match event {
                    Some(Ok(LeaseEvent::Applied(lease))) if holder_of(&lease) == holder.as_deref() => {
                        // A renewal: the same holder is still at work. The
                        // lock's observation keeps when the record last
                        // changed, which is what expiry is judged by.
                        inner.observe(name, lease);
                    }
                    Some(Ok(_)) => return,
                    Some(Err(e)) => {
                        debug!(lease = %name, error = %e, "lease watch failed; waiting for the poll");
                        sleep.as_mut().await;
                        return;
                    }
                    None => {
                        sleep.as_mut().await;
                        return;
                    }
                },
            }
        }
    }

    fn holder(&self, name: &str) -> Option<String> {
        self.lock
            .inner()
            .cached(name)
            .and_then(|o| o.holder().map(str::to_owned))
    }

    fn timed_out(&self, key: &str, started: Instant, holder: Option<String>) -> Error {
        Error::Timeout {
            key: key.to_owned(),
            waited: started.elapsed(),
            holder,
        }
    }

    /// The in-process queue of `key`.
    fn queue(&self, key: &str) -> Arc<KeyQueue> {
        Arc::clone(lock(&self.local).entry(key.to_owned()).or_default())
    }

    /// Drops the queue of `key` once nobody else waits in it, so the map
    /// holds only keys being worked on (and the answer kept for them).
    fn forget_queue(&self, key: &str, queue: &Arc<KeyQueue>) {
        let mut local = lock(&self.local);
        // Ours, the map's: nobody else holds a clone.
        if Arc::strong_count(queue) == 2 {
            local.remove(key);
        }
    }
}
