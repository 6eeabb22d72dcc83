//! [`LockGuard`]: a held lock, its fencing token, and its release.
//!
//! Rule kept here: every write a guard makes is conditional on the Lease
//! version it last wrote, and a conflict is resolved only by re-reading the
//! Lease and finding it still ours (same uid, holder and transitions) —
//! never by writing blindly. A guard that cannot prove it still holds the
//! Lease before its renew deadline says so (`lost()`), and never releases a
//! Lease someone else holds.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, OnceLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use resilience::fencing::FencingToken;
use resilience::{Backoff, Transient};
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::error::{Error, LossReason};
use crate::lock::{Claim, LockInner, holder_of, lock, released_copy};
use crate::{Lease, WAITING_FOR_ANNOTATION, renew};

/// A held lock. Renews itself in the background; reports when it can no
/// longer guarantee the hold ([`lost`](Self::lost), [`cancellation_token`](Self::cancellation_token));
/// released by [`release`](Self::release) or, in the background, on drop.
pub struct LockGuard {
    shared: Arc<GuardShared>,
    claim: Option<Claim>,
    released: bool,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.shared.key)
            .field("lease", &self.shared.name)
            .field("holder", &self.shared.holder)
            .field("fencing_token", &self.shared.token)
            .field("lost", &self.shared.loss.get())
            .finish()
    }
}

impl LockGuard {
    /// The lock key.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The Lease's name.
    pub fn lease_name(&self) -> &str {
        &self.shared.name
    }

    /// This guard's holder identity, `<identity>/<random>`.
    pub fn holder_identity(&self) -> &str {
        &self.shared.holder
    }

    /// The fencing token of this acquisition.
    pub fn fencing_token(&self) -> &FencingToken {
        &self.shared.token
    }

    /// When the acquisition returned.
    pub fn acquired_at(&self) -> Instant {
        self.shared.acquired_at
    }

    /// The instant before which this guard is guaranteed to hold the lock:
    /// the send instant of the last successful acquisition or renewal plus
    /// the renew deadline. Moves forward with each renewal.
    pub fn valid_until(&self) -> Instant {
        self.shared.valid_until()
    }

    /// Follows [`valid_until`](Self::valid_until) as renewals move it.
    pub fn validity(&self) -> watch::Receiver<Instant> {
        self.shared.validity.subscribe()
    }

    /// Whether the hold is still guaranteed right now. Checking it before
    /// each side effect narrows, but cannot close, the window in which a
    /// paused holder acts late: that is what the fencing token is for.
    pub fn is_valid(&self) -> bool {
        self.shared.loss.get().is_none() && Instant::now() < self.valid_until()
    }

    /// Resolves when the lock is lost (renew deadline passed, taken over,
    /// Lease deleted, renewal task stopped by a panic or a runtime shutdown)
    /// with the [`Error::Lost`] describing it; never resolves while the lock
    /// is held, nor after a release.
    pub async fn lost(&self) -> Error {
        self.shared.lost.cancelled().await;
        self.shared.lost_error()
    }

    /// A token that fires when this guard stops holding the lock for any
    /// reason: loss, release or drop. Hand it to the critical section.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.shared.ended.clone()
    }

    /// Releases the lock: clears the holder with a replace conditioned on
    /// the version this guard last wrote (if the version changed, the Lease
    /// is re-read and cleared only if still ours). The Lease object stays so
    /// that fencing tokens keep increasing.
    ///
    /// Returns [`Error::Lost`] if the lock had been lost (nothing of anyone
    /// else's is touched), or the API error if the release could not be
    /// written (the Lease then expires after its duration).
    ///
    /// Cancel-safe: the release runs in its own task, so a caller that stops
    /// waiting for it (a timeout around this call) does not leave the Lease
    /// held until it expires.
    pub async fn release(mut self) -> Result<(), Error> {
        self.released = true;
        self.shared.ended.cancel();
        let shared = Arc::clone(&self.shared);
        let claim = self.claim.take();
        let releasing = self.shared.runtime.spawn(async move {
            let result = shared.release().await;
            // The key is free for this lock once the release has landed.
            drop(claim);
            result
        });
        match releasing.await {
            Ok(result) => result,
            Err(e) => Err(Error::Client {
                message: format!(
                    "the release of lease {} stopped before it finished",
                    self.shared.name
                ),
                source: Some(Box::new(e)),
            }),
        }
    }

    pub(crate) fn shared(&self) -> Arc<GuardShared> {
        Arc::clone(&self.shared)
    }

    /// Wraps a freshly acquired `lease` and starts its renewal.
    pub(crate) fn start(
        lock: Arc<LockInner>,
        key: &str,
        name: String,
        holder: String,
        lease: Lease,
        sent_at: Instant,
        claim: Option<Claim>,
    ) -> Result<Self, Error> {
        let token = fencing_token_of(&lease, &name)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidConfig("a lock guard needs a Tokio runtime to renew its lease in".into())
        })?;
        let (validity, _) = watch::channel(sent_at + lock.config.renew_deadline);
        let lost = CancellationToken::new();
        let shared = Arc::new(GuardShared {
            ended: lost.child_token(),
            lost,
            key: key.to_owned(),
            name,
            holder,
            token,
            acquired_at: Instant::now(),
            state: tokio::sync::Mutex::new(HeldState {
                lease,
                finished: false,
            }),
            validity,
            loss: OnceLock::new(),
            waiting_for: Mutex::new(None),
            hold_recorded: AtomicBool::new(false),
            runtime,
            lock,
        });
        renew::spawn(Arc::clone(&shared));
        Ok(Self {
            shared,
            claim,
            released: false,
        })
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.shared.ended.cancel();
        // The key is free for this lock at once: a new acquisition simply
        // waits (woken by the watch) until the background release lands.
        drop(self.claim.take());
        // On the guard's own runtime, wherever the guard is dropped (a plain
        // thread, another runtime). If that runtime has shut down, the task
        // is dropped unstarted and the Lease expires instead.
        let shared = Arc::clone(&self.shared);
        self.shared.runtime.spawn(async move {
            if let Err(e) = shared.release().await {
                debug!(lease = %shared.name, error = %e, "background release of a dropped guard failed");
            }
        });
    }
}

/// What a guard shares with its renewal task and with acquisitions that
/// declared it held (deadlock detection writes through it).
pub(crate) struct GuardShared {
    pub(crate) lock: Arc<LockInner>,
    pub(crate) key: String,
    pub(crate) name: String,
    pub(crate) holder: String,
    pub(crate) token: FencingToken,
    pub(crate) acquired_at: Instant,
    /// The Lease as last written by us. Held across each write, so writes
    /// of one guard are serialised and each uses the latest version.
    state: tokio::sync::Mutex<HeldState>,
    validity: watch::Sender<Instant>,
    /// Fires on loss only.
    pub(crate) lost: CancellationToken,
    /// Fires on loss, release or drop (a child of `lost`).
    pub(crate) ended: CancellationToken,
    loss: OnceLock<LossReason>,
    /// The Lease this guard's holder waits for, written as an annotation.
    waiting_for: Mutex<Option<String>>,
    hold_recorded: AtomicBool,
    /// The runtime the guard was acquired on: it runs the renewal, and the
    /// background release of a guard dropped outside any runtime.
    pub(crate) runtime: tokio::runtime::Handle,
}

struct HeldState {
    lease: Lease,
    /// Released (or being released): no further writes.
    finished: bool,
}

/// How many times one write re-reads after a conflict before giving up for
/// this round (each re-read found the Lease still ours, so something else
/// keeps touching it).
const MAX_CONFLICT_REREADS: u32 = 3;

impl GuardShared {
    pub(crate) fn valid_until(&self) -> Instant {
        *self.validity.borrow()
    }

    /// The send instant of the last successful acquisition or renewal.
    pub(crate) fn last_renewed(&self) -> Instant {
        self.valid_until() - self.lock.config.renew_deadline
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.loss.get().is_some()
    }

    /// The Lease this guard's holder currently says it waits for.
    pub(crate) fn waiting_for(&self) -> Option<String> {
        lock(&self.waiting_for).clone()
    }

    fn lost_error(&self) -> Error {
        Error::Lost {
            key: self.key.clone(),
            reason: self
                .loss
                .get()
                .cloned()
                .unwrap_or(LossReason::RenewDeadline),
        }
    }

    /// Whether `lease` is still the one this guard acquired and holds.
    pub(crate) fn is_ours(&self, lease: &Lease) -> bool {
        self.is_our_object(lease)
            && holder_of(lease) == Some(self.holder.as_str())
            && transitions_of(lease) == Some(self.token.transitions)
    }

    /// Whether `lease` is this guard's Lease released with this guard's
    /// transitions: only this guard's own release produces that state (any
    /// other acquisition increments the transitions).
    fn is_released_by_us(&self, lease: &Lease) -> bool {
        self.is_our_object(lease)
            && holder_of(lease).is_none()
            && transitions_of(lease) == Some(self.token.transitions)
    }

    /// Whether `lease`, acquired by someone after us, can only have been
    /// taken after our own release landed: a takeover by expiry happens only
    /// after our guarantee ran out, so while it still holds (checked after
    /// the read that returned `lease`), the Lease was free because we freed it.
    fn was_acquired_after_our_release(&self, lease: &Lease) -> bool {
        self.is_our_object(lease)
            && transitions_of(lease).is_some_and(|t| t > self.token.transitions)
            && Instant::now() < self.valid_until()
    }

    /// Whether `lease` is the Lease object this guard acquired (same uid).
    fn is_our_object(&self, lease: &Lease) -> bool {
        lease.metadata.uid.as_deref() == Some(self.token.lease_uid.as_str())
    }

    pub(crate) fn mark_lost(&self, reason: &LossReason) {
        if self.loss.set(reason.clone()).is_ok() {
            warn!(key = %self.key, lease = %self.name, holder = %self.holder, %reason, "lock lost");
            self.lock.metrics.losses.inc();
            self.record_hold();
            self.lost.cancel();
        }
    }

    fn record_hold(&self) {
        if !self.hold_recorded.swap(true, AtomicOrdering::AcqRel) {
            self.lock.metrics.held(self.acquired_at.elapsed());
        }
    }

    /// Sets what this guard's holder waits for; the next [`write`](Self::write)
    /// (a renewal, or one asked for by the wait marker) puts it on the Lease.
    pub(crate) fn set_waiting_for(&self, lease: Option<String>) {
        *lock(&self.waiting_for) = lease;
    }

    /// Renews: replace-if-version with `renewTime = now` (and the desired
    /// waiting-for annotation), bounded by the renew deadline. With
    /// `only_if_annotation_differs`, writes only when the annotation on the
    /// Lease is not the desired one.
    ///
    /// Marks the guard lost (and returns [`Error::Lost`]) when the deadline
    /// passes or the Lease turns out to be someone else's or gone; returns
    /// other errors for the caller to retry.
    pub(crate) async fn write(&self, only_if_annotation_differs: bool) -> Result<(), Error> {
        let backend = &self.lock.backend;
        let namespace = &self.lock.config.namespace;
        let mut state = self.state.lock().await;
        // `ended` fires before a release takes the state lock: no renewal
        // may be sent after the holder decided to let go.
        if state.finished || self.ended.is_cancelled() {
            return Ok(());
        }
        let desired = self.waiting_for();
        if only_if_annotation_differs && annotation(&state.lease) == desired.as_deref() {
            return Ok(());
        }
        for _ in 0..MAX_CONFLICT_REREADS {
            if self.is_lost() {
                return Err(self.lost_error());
            }
            let valid_until = self.valid_until();
            let sent_at = Instant::now();
            if sent_at >= valid_until {
                self.mark_lost(&LossReason::RenewDeadline);
                return Err(self.lost_error());
            }
            let next = renewed_copy(&state.lease, desired.as_deref());
            let written = match timeout_at(valid_until, backend.replace(namespace, &next)).await {
                Ok(written) => written,
                Err(_) => {
                    self.mark_lost(&LossReason::RenewDeadline);
                    return Err(self.lost_error());
                }
            };
            match written {
                Ok(lease) => {
                    state.lease = lease.clone();
                    self.validity
                        .send_replace(sent_at + self.lock.config.renew_deadline);
                    self.lock.observe(&self.name, lease);
                    return Ok(());
                }
                Err(Error::Conflict { .. }) => {
                    match timeout_at(valid_until, backend.get(namespace, &self.name)).await {
                        Err(_) => {
                            self.mark_lost(&LossReason::RenewDeadline);
                            return Err(self.lost_error());
                        }
                        Ok(Ok(Some(current))) if self.is_ours(&current) => {
                            // Touched by someone (a label edit), still ours:
                            // write again on top of the new version.
                            state.lease = current;
                        }
                        Ok(Ok(Some(current))) => {
                            let holder = holder_of(&current).unwrap_or_default().to_owned();
                            self.mark_lost(&LossReason::TakenOver { holder });
                            return Err(self.lost_error());
                        }
                        Ok(Ok(None)) => {
                            self.mark_lost(&LossReason::Deleted);
                            return Err(self.lost_error());
                        }
                        Ok(Err(e)) => return Err(e),
                    }
                }
                Err(Error::NotFound { .. }) => {
                    self.mark_lost(&LossReason::Deleted);
                    return Err(self.lost_error());
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict {
            name: self.name.clone(),
        })
    }

    /// Clears the holder (see [`LockGuard::release`]). Idempotent.
    pub(crate) async fn release(&self) -> Result<(), Error> {
        let backend = &self.lock.backend;
        let namespace = &self.lock.config.namespace;
        let mut state = self.state.lock().await;
        if state.finished {
            return Ok(());
        }
        state.finished = true;
        self.ended.cancel();
        if self.is_lost() {
            if matches!(
                self.loss.get(),
                Some(LossReason::RenewDeadline | LossReason::RenewalStopped)
            ) {
                self.clear_if_still_ours().await;
            }
            return Err(self.lost_error());
        }
        self.record_hold();
        // Past a lease duration the Lease has expired anyway: stop trying.
        let deadline = Instant::now() + self.lock.config.lease_duration;
        let mut backoff = Backoff::new(self.lock.config.backoff.clone());
        let mut rereads = 0;
        loop {
            let next = released_copy(&state.lease);
            let failure = match timeout_at(deadline, backend.replace(namespace, &next)).await {
                Err(_) => return Err(release_timed_out(&self.name)),
                Ok(Ok(lease)) => {
                    self.lock.observe(&self.name, lease);
                    return Ok(());
                }
                Ok(Err(Error::NotFound { .. })) => {
                    self.mark_lost(&LossReason::Deleted);
                    return Err(self.lost_error());
                }
                Ok(Err(Error::Conflict { .. })) => {
                    rereads += 1;
                    // Every conflict is followed by a re-read: the next write
                    // must be on the version the Lease has now, never on one
                    // known to be stale (that could only conflict until the
                    // deadline). Past the first few, pause before re-reading:
                    // something keeps writing the Lease.
                    if rereads > MAX_CONFLICT_REREADS {
                        let Some(delay) = self.next_pause(&mut backoff, deadline) else {
                            return Err(Error::Conflict {
                                name: self.name.clone(),
                            });
                        };
                        tokio::time::sleep(delay).await;
                    }
                    match timeout_at(deadline, backend.get(namespace, &self.name)).await {
                        Err(_) => return Err(release_timed_out(&self.name)),
                        Ok(Ok(Some(current))) if self.is_ours(&current) => {
                            state.lease = current;
                            continue;
                        }
                        Ok(Ok(Some(current))) if self.is_released_by_us(&current) => {
                            // An earlier attempt landed; only its answer was lost.
                            self.lock.observe(&self.name, current);
                            return Ok(());
                        }
                        Ok(Ok(Some(current))) if self.was_acquired_after_our_release(&current) => {
                            self.lock.observe(&self.name, current);
                            return Ok(());
                        }
                        Ok(Ok(Some(current))) => {
                            let holder = holder_of(&current).unwrap_or_default().to_owned();
                            self.mark_lost(&LossReason::TakenOver { holder });
                            return Err(self.lost_error());
                        }
                        Ok(Ok(None)) => {
                            self.mark_lost(&LossReason::Deleted);
                            return Err(self.lost_error());
                        }
                        Ok(Err(e)) => e,
                    }
                }
                Ok(Err(e)) => e,
            };
            if !failure.is_transient() {
                return Err(failure);
            }
            let Some(delay) = self.next_pause(&mut backoff, deadline) else {
                return Err(failure);
            };
            debug!(lease = %self.name, error = %failure, "release failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// The release's next pause, or `None` when it would end past
    /// `deadline` (the Lease has expired by then: stop trying).
    fn next_pause(&self, backoff: &mut Backoff, deadline: Instant) -> Option<std::time::Duration> {
        let delay = backoff.next().unwrap_or(self.lock.config.backoff.max);
        (Instant::now() + delay < deadline).then_some(delay)
    }
}

impl GuardShared {
    /// After a loss by deadline (or by the renewal task stopping) the Lease
    /// may in fact still be ours (our renewals were lost, not refused, or
    /// never sent): clear it if a fresh read proves it,
    /// so others need not wait for it to expire. Best effort, one try.
    async fn clear_if_still_ours(&self) {
        let backend = &self.lock.backend;
        let namespace = &self.lock.config.namespace;
        let deadline = Instant::now() + self.lock.config.lease_duration;
        if let Ok(Ok(Some(current))) =
            timeout_at(deadline, backend.get(namespace, &self.name)).await
            && self.is_ours(&current)
            && let Ok(Ok(lease)) = timeout_at(
                deadline,
                backend.replace(namespace, &released_copy(&current)),
            )
            .await
        {
            debug!(lease = %self.name, "cleared a lease that was still ours after losing it by deadline");
            self.lock.observe(&self.name, lease);
        }
    }
}

fn release_timed_out(name: &str) -> Error {
    Error::Transport {
        message: format!("release of lease {name} did not complete within the lease duration"),
        source: None,
    }
}

fn annotation(lease: &Lease) -> Option<&str> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(WAITING_FOR_ANNOTATION)
        .map(String::as_str)
}

/// `lease` renewed now, with the waiting-for annotation set to `waiting_for`.
fn renewed_copy(lease: &Lease, waiting_for: Option<&str>) -> Lease {
    let mut lease = lease.clone();
    match waiting_for {
        Some(target) => {
            lease
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(WAITING_FOR_ANNOTATION.to_owned(), target.to_owned());
        }
        None => {
            if let Some(annotations) = lease.metadata.annotations.as_mut() {
                annotations.remove(WAITING_FOR_ANNOTATION);
            }
        }
    }
    lease.spec.get_or_insert_with(Default::default).renew_time =
        Some(MicroTime(jiff::Timestamp::now()));
    lease
}

fn fencing_token_of(lease: &Lease, name: &str) -> Result<FencingToken, Error> {
    let invalid = |reason: &str| Error::InvalidLease {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let lease_uid = lease
        .metadata
        .uid
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| invalid("the acquired lease has no uid"))?;
    let transitions = transitions_of(lease)
        .ok_or_else(|| invalid("the acquired lease has no valid leaseTransitions"))?;
    Ok(FencingToken {
        lease_uid,
        transitions,
        lease_created: lease.metadata.creation_timestamp.as_ref().map(|t| t.0),
    })
}

/// `spec.leaseTransitions`, when present and not negative.
fn transitions_of(lease: &Lease) -> Option<u64> {
    lease
        .spec
        .as_ref()?
        .lease_transitions
        .and_then(|t| u64::try_from(t).ok())
}
