//! Garbage collection of idle Leases.
//!
//! Rule kept here: a Lease is deleted only if it stayed idle (no renewal,
//! acquisition or release, by its own timestamps) for longer than the
//! retention, and is unchanged since we read it — the delete carries the uid
//! and resourceVersion we judged, so a Lease acquired in between is never
//! deleted. The retention is at least two lease durations, so a Lease still
//! held when collected has expired whatever the skew, up to one lease
//! duration, between its holder's clock and ours.
//!
//! Deleting a Lease starts its fencing tokens over on a new object (a new
//! uid, `leaseTransitions` 0). Tokens still never go backwards: a token
//! carries its Lease's `creationTimestamp`, and tokens of different objects
//! are ordered by it (see [`FencingToken`](crate::FencingToken)). Because a
//! Lease is deleted only after it stayed idle for the retention (24 h by
//! default), its successor is created that much later, so any token of a
//! paused holder of the old object orders below every token of the new one.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::lock::{LeaseLock, holder_of};
use crate::{LOCK_PREFIX_LABEL, Lease, MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// What one garbage collection pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Leases of this lock's prefix examined.
    pub examined: usize,
    /// Leases deleted.
    pub deleted: usize,
    /// Leases kept because they are held (by this lock, or by a holder
    /// active within the retention).
    pub held: usize,
    /// Released Leases kept because they were active within the retention.
    pub recent: usize,
    /// Leases that changed or vanished between the list and the delete.
    pub raced: usize,
}

impl LeaseLock {
    /// Deletes this lock's Leases (same namespace, labelled
    /// `app.kubernetes.io/managed-by=supersede-lease-lock` and
    /// `supersede.dev/lock-prefix=<prefix>`) idle for longer than the
    /// configured retention. One LIST, then one
    /// conditional DELETE per idle Lease.
    pub async fn collect_garbage(&self) -> Result<GcReport, Error> {
        let inner = self.inner();
        let config = &inner.config;
        let selector = format!(
            "{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{LOCK_PREFIX_LABEL}={}",
            config.prefix
        );
        let leases = inner.backend.list(&config.namespace, &selector).await?;
        let prefix = format!("{}-", config.prefix);
        let now = jiff::Timestamp::now();
        let mut report = GcReport::default();
        for lease in leases {
            let Some(name) = lease.metadata.name.clone() else {
                continue;
            };
            if !name.starts_with(&prefix) {
                continue;
            }
            report.examined += 1;
            let held = holder_of(&lease).is_some();
            if inner.is_claimed(&name) {
                report.held += 1;
                continue;
            }
            if !idle_longer_than(&lease, now, config.retention) {
                if held {
                    report.held += 1;
                } else {
                    report.recent += 1;
                }
                continue;
            }
            let (Some(uid), Some(version)) = (
                lease.metadata.uid.as_deref(),
                lease.metadata.resource_version.as_deref(),
            ) else {
                continue;
            };
            match inner
                .backend
                .delete(&config.namespace, &name, uid, version)
                .await
            {
                Ok(()) => {
                    inner.forget(&name);
                    report.deleted += 1;
                }
                Err(Error::Conflict { .. } | Error::NotFound { .. }) => report.raced += 1,
                Err(e) => return Err(e),
            }
        }
        debug!(?report, "lease garbage collection pass");
        Ok(report)
    }

    /// Every Lease of this lock (same namespace and prefix label), in one
    /// LIST: what the recovery reconciler compares with the task states.
    pub async fn list_leases(&self) -> Result<Vec<Lease>, Error> {
        let inner = self.inner();
        let config = &inner.config;
        let selector = format!(
            "{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{LOCK_PREFIX_LABEL}={}",
            config.prefix
        );
        let prefix = format!("{}-", config.prefix);
        let mut leases = inner.backend.list(&config.namespace, &selector).await?;
        leases.retain(|l| {
            l.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(&prefix))
        });
        Ok(leases)
    }

    /// Deletes `lease` (as [`list_leases`](Self::list_leases) read it) if its
    /// holder stopped renewing it — released, or idle for two lease
    /// durations by its own timestamps, the margin garbage collection and
    /// the deadlock walk use — and it is unchanged since it was read (the
    /// delete carries its uid and resourceVersion). A Lease this lock holds
    /// or is acquiring is never deleted. Returns whether it was deleted.
    ///
    /// For Leases nothing stands behind any more (no operation journal):
    /// the caller decides that; the next acquisition creates the Lease
    /// again, and its tokens order after the deleted one's by creation
    /// time.
    pub async fn delete_if_abandoned(&self, lease: &Lease) -> Result<bool, Error> {
        let inner = self.inner();
        let config = &inner.config;
        let Some(name) = lease.metadata.name.as_deref() else {
            return Ok(false);
        };
        if inner.is_claimed(name) {
            return Ok(false);
        }
        let duration = lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map_or(config.lease_duration, Duration::from_secs);
        let abandoned = holder_of(lease).is_none()
            || idle_longer_than(lease, jiff::Timestamp::now(), duration.saturating_mul(2));
        if !abandoned {
            return Ok(false);
        }
        let (Some(uid), Some(version)) = (
            lease.metadata.uid.as_deref(),
            lease.metadata.resource_version.as_deref(),
        ) else {
            return Ok(false);
        };
        match inner
            .backend
            .delete(&config.namespace, name, uid, version)
            .await
        {
            Ok(()) => {
                inner.forget(name);
                Ok(true)
            }
            Err(Error::Conflict { .. } | Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs [`collect_garbage`](Self::collect_garbage) every `every` (±10 %
    /// jitter, so replicas spread out) until `cancel` fires.
    pub fn spawn_garbage_collector(
        &self,
        every: Duration,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        let lock = self.clone();
        tokio::spawn(async move {
            loop {
                let jitter = rand::random_range(0.9..=1.1);
                let delay = every.mul_f64(jitter);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                match lock.collect_garbage().await {
                    Ok(report) if report.deleted > 0 => {
                        info!(
                            deleted = report.deleted,
                            examined = report.examined,
                            "deleted idle leases"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "lease garbage collection failed"),
                }
            }
        })
    }
}

/// Whether the Lease's last activity (renewal or release, else acquisition,
/// else creation) is older than `retention`.
pub(crate) fn idle_longer_than(lease: &Lease, now: jiff::Timestamp, retention: Duration) -> bool {
    let spec = lease.spec.as_ref();
    let last = spec
        .and_then(|s| s.renew_time.as_ref().map(|t| t.0))
        .or_else(|| spec.and_then(|s| s.acquire_time.as_ref().map(|t| t.0)))
        .or_else(|| lease.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let Some(last) = last else {
        // No timestamp at all: nothing proves it idle.
        return false;
    };
    let Ok(retention) = jiff::SignedDuration::try_from(retention) else {
        return false;
    };
    last.checked_add(retention).is_ok_and(|limit| limit < now)
}
