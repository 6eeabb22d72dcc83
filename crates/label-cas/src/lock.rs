//! One writer per pull request among our own processes.
//!
//! GitHub cannot make a label write conditional, so two of our workers
//! moving the same pull request at once can only be told apart after the
//! fact (the DELETE claim). A lock makes that the exception: with one, only
//! humans and foreign integrations race us.
//!
//! Rule kept here: **a guard is the lock** — holding a [`PrLockGuard`] means
//! holding the lock, dropping it releases it; a guard whose lock was lost
//! says so ([`PrLockGuard::is_lost`]) and the manager makes no further
//! write, not even an undo: the new holder may already have moved the pull
//! request on, and putting back a label we took would undo its move.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::{Error, PrRef, Result};

/// Takes the per-PR lock. Implementations: [`LocalPrLocks`] (one process)
/// and, with the `lease-lock` feature, `LeasePrLocks` (every replica, over
/// Kubernetes Leases).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait PrLock: Send + Sync {
    /// Waits (bounded) until this caller is the only one of ours writing
    /// `pr`'s labels; the lock is held until the guard is dropped.
    async fn lock(&self, pr: &PrRef) -> Result<PrLockGuard>;
}

/// Proof of holding a [`PrLock`]; releases it when dropped.
pub struct PrLockGuard {
    _held: Box<dyn Send + Sync>,
    lost: Option<CancellationToken>,
}

impl PrLockGuard {
    /// A guard that keeps `held` alive (whatever releases the lock on drop).
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        Self {
            _held: Box::new(held),
            lost: None,
        }
    }

    /// Marks the guard as lost once `lost` fires (a lease that could not be
    /// renewed): writes stop instead of going on unprotected.
    #[must_use]
    pub fn with_lost_signal(mut self, lost: CancellationToken) -> Self {
        self.lost = Some(lost);
        self
    }

    /// Whether the lock was lost while held.
    pub fn is_lost(&self) -> bool {
        self.lost
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }
}

impl fmt::Debug for PrLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrLockGuard")
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

/// An in-process lock per pull request (a `tokio::sync::Mutex` each): one
/// writer per PR among the tasks of this process. Clones share the locks.
///
/// Bounded: an entry exists only while someone holds or waits for it, and
/// waiting is bounded by the timeout (default 60 s).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use label_cas::{LocalPrLocks, PrLock, PrRef};
///
/// let locks = LocalPrLocks::new();
/// let pr = PrRef::new("acme", "widgets", 7)?;
/// let guard = locks.lock(&pr).await?;
/// assert_eq!(locks.held(), 1);
/// drop(guard);
/// assert_eq!(locks.held(), 0);
/// # Ok::<_, label_cas::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct LocalPrLocks {
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    timeout: Duration,
}

impl Default for LocalPrLocks {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalPrLocks {
    /// Locks that wait at most 60 s: far longer than a transition takes
    /// (a few calls spaced by 1 s), short enough that a stuck holder
    /// surfaces as an error rather than a silent pile-up.
    pub fn new() -> Self {
        Self::with_timeout(Duration::from_secs(60))
    }

    /// Locks that wait at most `timeout`.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self {
            locks: Arc::default(),
            timeout,
        }
    }

    /// How many pull requests are locked or waited for right now.
    pub fn held(&self) -> usize {
        self.locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Waits for `pr`'s lock and returns the raw tokio guard with the key it
    /// must be released under (used by `LeasePrLocks` as its first stage).
    pub(crate) async fn acquire(&self, pr: &PrRef) -> Result<LocalHeld> {
        let key = pr.key();
        let mutex = {
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(locks.entry(key.clone()).or_default())
        };
        // Declared before the wait, so however the wait ends — acquired,
        // timed out, or this future dropped — dropping it removes the entry
        // once nobody else holds or waits for it.
        let mut held = LocalHeld {
            guard: None,
            key,
            locks: Arc::clone(&self.locks),
        };
        let acquired = tokio::time::timeout(self.timeout, mutex.lock_owned()).await;
        match acquired {
            Ok(guard) => {
                held.guard = Some(guard);
                Ok(held)
            }
            Err(_) => Err(Error::Lock {
                reason: format!("{pr} stayed locked by another task for {:?}", self.timeout),
                transient: true,
            }),
        }
    }
}

#[async_trait]
impl PrLock for LocalPrLocks {
    async fn lock(&self, pr: &PrRef) -> Result<PrLockGuard> {
        Ok(PrLockGuard::new(self.acquire(pr).await?))
    }
}

/// One writer per PR across every replica: a Kubernetes Lease per pull
/// request (`lease-lock`), behind an in-process [`LocalPrLocks`] so tasks of
/// one process queue locally instead of competing for the same Lease (which
/// `lease-lock` refuses with `AlreadyHeld`). A lost Lease marks the guard
/// lost, and the manager makes no further write (not even an undo).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use label_cas::{LeasePrLocks, PrLock, PrRef};
/// use lease_lock::{LeaseLock, LockConfig, MemoryLeases};
///
/// let lease_lock = LeaseLock::new(MemoryLeases::new(), LockConfig::new("sensor-0", "supersede")).unwrap();
/// let locks = LeasePrLocks::new(lease_lock);
/// let guard = locks.lock(&PrRef::new("acme", "widgets", 7)?).await?;
/// assert!(!guard.is_lost());
/// # Ok::<_, label_cas::Error>(())
/// # }).unwrap();
/// ```
#[cfg(feature = "lease-lock")]
#[derive(Clone, Debug)]
pub struct LeasePrLocks {
    local: LocalPrLocks,
    leases: lease_lock::LeaseLock,
}

#[cfg(feature = "lease-lock")]
impl LeasePrLocks {
    /// Per-PR locks over `leases` (one `LeaseLock` per process). Waiting is
    /// bounded by the lease lock's `acquire_timeout` plus the local wait
    /// (60 s).
    pub fn new(leases: lease_lock::LeaseLock) -> Self {
        Self {
            local: LocalPrLocks::new(),
            leases,
        }
    }

    /// The lock key of `pr`: `labels/<owner>/<repo>#<number>`, lower-cased
    /// (GitHub's names are case-insensitive).
    ///
    /// Why this encoding: an owner may contain `-` and a repository `-` and
    /// `.`, so joining them with `-` made `acme-tools/web#1` and
    /// `acme/tools-web#1` one key, and one Lease for two PRs. Neither name
    /// may contain `/` or `#`, so this key names exactly one pull request.
    /// It is not a valid Lease name as it stands: lease-lock maps it to
    /// `<prefix>-labels-<owner>-<repo>-<number>-<hash of the key>`,
    /// shortened where needed to fit (the hash keeps keys apart; see
    /// `lease_lock::lease_name`).
    ///
    /// ```
    /// use label_cas::{LeasePrLocks, PrRef};
    ///
    /// let a = PrRef::new("acme-tools", "web", 1)?;
    /// let b = PrRef::new("acme", "tools-web", 1)?;
    /// assert_eq!(LeasePrLocks::key(&a), "labels/acme-tools/web#1");
    /// assert_ne!(LeasePrLocks::key(&a), LeasePrLocks::key(&b));
    /// # Ok::<_, label_cas::Error>(())
    /// ```
    pub fn key(pr: &PrRef) -> String {
        format!("labels/{}", pr.key())
    }
}

#[cfg(feature = "lease-lock")]
#[async_trait]
impl PrLock for LeasePrLocks {
    async fn lock(&self, pr: &PrRef) -> Result<PrLockGuard> {
        use resilience::Transient as _;
        let local = self.local.acquire(pr).await?;
        let lease = self
            .leases
            .acquire(&Self::key(pr), lease_lock::AcquireOptions::new())
            .await
            .map_err(|e| Error::Lock {
                transient: e.is_transient(),
                reason: e.to_string(),
            })?;
        let lost = lease.cancellation_token();
        // Fields drop in order: the Lease is released before the local lock.
        Ok(PrLockGuard::new(LeaseHeld {
            _lease: lease,
            _local: local,
        })
        .with_lost_signal(lost))
    }
}

#[cfg(feature = "lease-lock")]
struct LeaseHeld {
    _lease: lease_lock::LockGuard,
    _local: LocalHeld,
}

/// A held (or awaited) local lock; dropping it removes its map entry when
/// nobody else holds or waits for it.
pub(crate) struct LocalHeld {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    key: String,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Drop for LocalHeld {
    fn drop(&mut self) {
        drop(self.guard.take());
        release_entry(&self.locks, &self.key);
    }
}

/// Removes `key`'s mutex if the map holds the only reference left (no
/// holder, no waiter): a waiter always holds a clone, so it is never lost.
fn release_entry(locks: &Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>, key: &str) {
    let mut locks = locks.lock().unwrap_or_else(PoisonError::into_inner);
    if locks.get(key).is_some_and(|m| Arc::strong_count(m) == 1) {
        locks.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn pr(n: u64) -> PrRef {
        PrRef::new("acme", "widgets", n).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn one_holder_per_pull_request_and_none_across_pull_requests() {
        let locks = LocalPrLocks::new();
        let inside = Arc::new(AtomicU32::new(0));
        let max_inside = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (locks, inside, max_inside) = (locks.clone(), inside.clone(), max_inside.clone());
            tasks.push(tokio::spawn(async move {
                let _guard = locks.lock(&pr(1)).await.unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                max_inside.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        // A different PR is not blocked by the queue on PR 1.
        let other = locks.lock(&pr(2)).await.unwrap();
        drop(other);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max_inside.load(Ordering::SeqCst), 1);
        assert_eq!(
            locks.held(),
            0,
            "entries are removed once nobody holds or waits"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_is_bounded_by_the_timeout() {
        let locks = LocalPrLocks::with_timeout(Duration::from_secs(5));
        let _held = locks.lock(&pr(1)).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = locks.lock(&pr(1)).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Lock {
                    transient: true,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(locks.held(), 1, "the holder's entry stays");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_dropped_after_the_release_leaves_no_entry_behind() {
        let locks = LocalPrLocks::new();
        let held = locks.lock(&pr(1)).await.unwrap();
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.lock(&pr(1)).await.map(drop) })
        };
        tokio::task::yield_now().await; // the waiter queues
        drop(held); // wakes the waiter...
        waiter.abort(); // ...which is dropped before it runs again
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(locks.held(), 0, "nobody holds or waits");
    }

    #[cfg(feature = "lease-lock")]
    #[tokio::test]
    async fn lease_locks_exclude_other_replicas_until_released() {
        use lease_lock::{LeaseLock, LockConfig, MemoryLeases};
        let leases = MemoryLeases::new();
        let replica = |name: &str| {
            let config = LockConfig {
                acquire_timeout: Duration::from_millis(300),
                ..LockConfig::new(name, "supersede")
            };
            LeasePrLocks::new(LeaseLock::new(leases.clone(), config).unwrap())
        };
        let (a, b) = (replica("sensor-0"), replica("sensor-1"));
        let held = a.lock(&pr(1)).await.unwrap();
        let err = b.lock(&pr(1)).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Lock {
                    transient: true,
                    ..
                }
            ),
            "{err}"
        );
        assert!(b.lock(&pr(2)).await.is_ok(), "another PR is another Lease");
        drop(held);
        // Dropping releases in the background; the other replica gets it.
        let mut acquired = None;
        for _ in 0..50 {
            if let Ok(guard) = b.lock(&pr(1)).await {
                acquired = Some(guard);
                break;
            }
        }
        assert!(acquired.is_some_and(|g| !g.is_lost()));
    }

    #[cfg(feature = "lease-lock")]
    #[test]
    fn pull_requests_whose_names_only_split_differently_get_different_lock_keys() {
        use lease_lock::lease_name;
        let a = PrRef::new("acme-tools", "web", 1).unwrap();
        let b = PrRef::new("acme", "tools-web", 1).unwrap();
        let (ka, kb) = (LeasePrLocks::key(&a), LeasePrLocks::key(&b));
        assert_ne!(ka, kb);
        assert_ne!(
            lease_name("supersede", &ka).unwrap(),
            lease_name("supersede", &kb).unwrap()
        );
        // GitHub's names are case-insensitive: one PR, one key.
        let upper = PrRef::new("Acme-Tools", "Web", 1).unwrap();
        assert_eq!(LeasePrLocks::key(&upper), ka);
    }

    #[cfg(feature = "lease-lock")]
    #[test]
    fn lock_keys_of_the_longest_names_github_allows_are_valid_lease_names() {
        use lease_lock::{LeaseLock, LockConfig, MemoryLeases, lease_name};
        let owner = format!("{}-{}", "o".repeat(19), "w".repeat(19));
        let longest = PrRef::new(owner.as_str(), "r.e-p_o".repeat(14) + "xx", u64::MAX).unwrap();
        let lock = LeaseLock::new(
            MemoryLeases::new(),
            LockConfig::new("sensor-0", "supersede"),
        )
        .unwrap();
        for pr in [longest, pr(1)] {
            let key = LeasePrLocks::key(&pr);
            let name = lock.lease_name(&key).unwrap();
            assert!(name.len() <= 253, "{name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'.'),
                "{name}"
            );
            assert!(lease_name("lock", &key).is_ok(), "{key}");
        }
    }

    #[cfg(feature = "lease-lock")]
    proptest::proptest! {
        #[test]
        fn moving_a_dash_between_owner_and_repository_changes_the_lock_key(
            x in "[a-z0-9]{1,12}",
            y in "[a-z0-9._-]{0,12}",
            z in "[a-z0-9.]{1,12}",
            n in 1u64..1000,
        ) {
            // `x-y` / `z` against `x` / `y-z`: the same characters, two PRs.
            let (Ok(a), Ok(b)) = (
                PrRef::new(format!("{x}-{y}"), z.clone(), n),
                PrRef::new(x.clone(), format!("{y}-{z}"), n),
            ) else {
                return Ok(());
            };
            proptest::prop_assert_ne!(LeasePrLocks::key(&a), LeasePrLocks::key(&b));
        }
    }

    #[test]
    fn a_guard_reports_a_lost_lock() {
        let lost = CancellationToken::new();
        let guard = PrLockGuard::new(()).with_lost_signal(lost.clone());
        assert!(!guard.is_lost());
        lost.cancel();
        assert!(guard.is_lost());
    }
}
