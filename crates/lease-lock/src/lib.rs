#![doc = include_str!("../README.md")]
//!
//! # Crate layout
//!
//! - [`LeaseBackend`] (this file): the six Lease operations the lock needs,
//!   implemented by [`KubeLeases`] (the Kubernetes API through `kube`) and
//!   [`MemoryLeases`] (an in-process store with the same semantics).
//! - [`LeaseLock`] (`lock.rs`): the acquisition algorithm, and the waiters'
//!   turns at a released Lease (`turn.rs`).
//! - [`LockGuard`] (`guard.rs`) and its renewal task (`renew.rs`).
//! - [`CreateOnce`] (`once.rs`): one creator of a thing across replicas
//!   (check ▸ lock ▸ check again ▸ create ▸ release).
//! - deadlock detection (`deadlock.rs`), garbage collection (`gc.rs`),
//!   lease naming (`name.rs`), [`Metrics`] and [`Error`].

mod deadlock;
mod error;
mod gc;
mod guard;
mod kube;
mod lock;
mod memory;
mod metrics;
mod name;
mod once;
mod renew;
#[cfg(test)]
mod tests;
mod turn;

use async_trait::async_trait;
use futures::stream::BoxStream;
pub use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};

pub use crate::error::{Error, LossReason};
pub use crate::gc::{GcReport, LeasePage};
pub use crate::guard::LockGuard;
pub use crate::kube::KubeLeases;
pub use crate::lock::{AcquireOptions, LeaseLock, LockConfig, MAX_ACQUIRE_TIMEOUT, MAX_CLOCK_SKEW};
pub use crate::memory::MemoryLeases;
pub use crate::metrics::Metrics;
pub use crate::name::{MAX_KEY_LEN, lease_name};
pub use crate::once::{CreateOnce, OnceError, Outcome};
/// The fencing token of the whole workspace, minted by [`LockGuard::fencing_token`].
pub use resilience::fencing::{FencingToken, Rejected};

/// Label put on every Lease this crate creates; garbage collection lists by it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "supersede-lease-lock";
/// Label holding the [`LockConfig::prefix`] of the lock a Lease belongs to:
/// garbage collection lists by it, so one lock never collects another's
/// Leases (names alone cannot tell `cancel` + `task-1` from `cancel-task` + `1`).
pub const LOCK_PREFIX_LABEL: &str = "supersede.dev/lock-prefix";
/// Label holding a short hash of the holding process's identity (absent while
/// released), so operators and recovery can list what one process holds.
pub const HOLDER_HASH_LABEL: &str = "supersede.dev/holder-hash";
/// Annotation a holder writes on each Lease it holds while it waits for
/// another one: the name of the Lease it waits for (the wait-for graph edge).
pub const WAITING_FOR_ANNOTATION: &str = "supersede.dev/waiting-for";

/// A change seen by [`LeaseBackend::watch`].
// One event is alive at a time; boxing would only add an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEvent {
    /// The Lease exists in this state (created, modified, or reported again
    /// after the watch restarted).
    Applied(Lease),
    /// The Lease does not exist (deleted, or absent when the watch started).
    Deleted,
}

/// The Lease operations the lock is built on. Every write is conditional:
/// [`replace`](Self::replace) and [`delete`](Self::delete) take the
/// `resourceVersion` (and uid) they were computed from and fail with
/// [`Error::Conflict`] when the object changed since, so no caller ever
/// overwrites a change it has not seen.
///
/// Implementations: [`KubeLeases`] and [`MemoryLeases`]; both pass the same
/// conformance suite (`tests/conformance.rs`).
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait LeaseBackend: Send + Sync + 'static {
    /// Reads one Lease; `Ok(None)` when it does not exist.
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Lease>, Error>;

    /// Creates `lease` (named by `metadata.name`) and returns the stored
    /// object with its uid and resourceVersion. [`Error::AlreadyExists`] when
    /// a Lease of that name exists.
    async fn create(&self, namespace: &str, lease: &Lease) -> Result<Lease, Error>;

    /// Replaces the Lease if its current `resourceVersion` (and uid, when
    /// set) still equal those in `lease.metadata`; returns the stored object.
    /// [`Error::Conflict`] when it changed, [`Error::NotFound`] when it is
    /// gone, [`Error::InvalidLease`] when `lease` carries no resourceVersion
    /// (an unconditional replace is never sent).
    async fn replace(&self, namespace: &str, lease: &Lease) -> Result<Lease, Error>;

    /// Deletes the Lease if its uid and resourceVersion still equal the given
    /// ones. [`Error::Conflict`] when it changed, [`Error::NotFound`] when it
    /// is gone.
    async fn delete(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        resource_version: &str,
    ) -> Result<(), Error>;

    /// Lists the Leases matching a label selector (`k=v`, `k!=v`, `k`, `!k`,
    /// comma-separated).
    async fn list(&self, namespace: &str, label_selector: &str) -> Result<Vec<Lease>, Error>;

    /// One page of [`list`](Self::list): at most `limit` Leases from
    /// `continue_token` (a previous page's; `None` for the first), in name
    /// order. A scan of many Leases holds one page at a time.
    ///
    /// The default implementation lists everything in one page.
    async fn list_page(
        &self,
        namespace: &str,
        label_selector: &str,
        limit: u32,
        continue_token: Option<String>,
    ) -> Result<LeasePage, Error> {
        let _ = (limit, continue_token);
        Ok(LeasePage {
            leases: self.list(namespace, label_selector).await?,
            continue_token: None,
        })
    }

    /// Watches one Lease. The stream first reports the Lease's current state
    /// when it differs from `since` (always when `since` is `None`), then
    /// every change. Events are level-triggered snapshots: after an internal
    /// restart the current state may be reported again, and a consumer must
    /// never infer more than "this was the state at some point". Errors are
    /// reported and the stream goes on; a stream that ends means the backend
    /// cannot watch (the lock then falls back to polling).
    ///
    /// The default implementation cannot watch and ends at once.
    fn watch(
        &self,
        namespace: &str,
        name: &str,
        since: Option<String>,
    ) -> BoxStream<'static, Result<LeaseEvent, Error>> {
        let _ = (namespace, name, since);
        Box::pin(futures::stream::empty())
    }
}

#[async_trait]
impl<T: LeaseBackend + ?Sized> LeaseBackend for std::sync::Arc<T> {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Lease>, Error> {
        (**self).get(namespace, name).await
    }
    async fn create(&self, namespace: &str, lease: &Lease) -> Result<Lease, Error> {
        (**self).create(namespace, lease).await
    }
    async fn replace(&self, namespace: &str, lease: &Lease) -> Result<Lease, Error> {
        (**self).replace(namespace, lease).await
    }
    async fn delete(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        resource_version: &str,
    ) -> Result<(), Error> {
        (**self)
            .delete(namespace, name, uid, resource_version)
            .await
    }
    async fn list(&self, namespace: &str, label_selector: &str) -> Result<Vec<Lease>, Error> {
        (**self).list(namespace, label_selector).await
    }
    async fn list_page(
        &self,
        namespace: &str,
        label_selector: &str,
        limit: u32,
        continue_token: Option<String>,
    ) -> Result<LeasePage, Error> {
        (**self)
            .list_page(namespace, label_selector, limit, continue_token)
            .await
    }
    fn watch(
        &self,
        namespace: &str,
        name: &str,
        since: Option<String>,
    ) -> BoxStream<'static, Result<LeaseEvent, Error>> {
        (**self).watch(namespace, name, since)
    }
}
