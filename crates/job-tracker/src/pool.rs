//! A budget of interchangeable units (for example KV-cache tokens) that jobs
//! reserve before they start.
//!
//! The rule it keeps: every unit taken by [`ResourcePool::reserve`] is given back
//! exactly once, by the [`Reservation`]'s `Drop`, on every path out of the job.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::gauge::Gauge;

/// A fixed budget of units shared by many jobs. Cheap to clone; clones share
/// the budget.
///
/// ```
/// use job_tracker::ResourcePool;
///
/// let pool = ResourcePool::new(100);
/// let a = pool.reserve(60).expect("60 of 100 units are free");
/// assert!(pool.reserve(50).is_none(), "only 40 units are left");
/// drop(a);
/// assert_eq!(pool.available(), 100);
/// ```
#[derive(Clone)]
pub struct ResourcePool {
    inner: Arc<PoolInner>,
}

/// Units held by one job; released when dropped, exactly once.
#[must_use = "dropping a Reservation releases its units at once"]
pub struct Reservation {
    pool: Arc<PoolInner>,
    units: u64,
}

impl ResourcePool {
    /// A pool of `budget` units, all free.
    pub fn new(budget: u64) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                budget,
                reserved: AtomicU64::new(0),
                gauge: Gauge::default(),
            }),
        }
    }

    /// Takes `units` from the budget, or returns `None` (taking nothing) when
    /// fewer are free. Reserving zero units always succeeds.
    pub fn reserve(&self, units: u64) -> Option<Reservation> {
        let budget = self.inner.budget;
        // A CAS loop instead of fetch_add-then-undo: a failed reservation never
        // makes the pool look fuller than it is, even for an instant.
        self.inner
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |reserved| {
                reserved.checked_add(units).filter(|&after| after <= budget)
            })
            .ok()?;
        self.inner.gauge.inc_by(gauge_value(units));
        Some(Reservation {
            pool: Arc::clone(&self.inner),
            units,
        })
    }

    /// The total budget.
    pub fn budget(&self) -> u64 {
        self.inner.budget
    }

    /// Units currently held by live reservations.
    pub fn reserved(&self) -> u64 {
        self.inner.reserved.load(Ordering::Acquire)
    }

    /// Units free right now.
    pub fn available(&self) -> u64 {
        self.inner.budget.saturating_sub(self.reserved())
    }

    /// The gauge of reserved units, for registration in a metrics registry.
    pub(crate) fn reserved_gauge(&self) -> Gauge {
        self.inner.gauge.clone()
    }
}

impl fmt::Debug for ResourcePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourcePool")
            .field("budget", &self.budget())
            .field("reserved", &self.reserved())
            .finish()
    }
}

impl Reservation {
    /// How many units this reservation holds.
    pub fn units(&self) -> u64 {
        self.units
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("units", &self.units)
            .finish()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Drop runs once per value, so the units go back exactly once.
        self.pool.reserved.fetch_sub(self.units, Ordering::AcqRel);
        self.pool.gauge.dec_by(gauge_value(self.units));
    }
}

struct PoolInner {
    budget: u64,
    reserved: AtomicU64,
    gauge: Gauge,
}

/// Gauges are i64; a budget beyond i64::MAX units is not meaningful, so clamp.
fn gauge_value(units: u64) -> i64 {
    i64::try_from(units).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_over_budget_takes_nothing() {
        let pool = ResourcePool::new(10);
        let held = pool.reserve(7).unwrap();
        assert!(pool.reserve(4).is_none());
        assert_eq!(pool.reserved(), 7);
        assert_eq!(pool.reserve(3).unwrap().units(), 3);
        drop(held);
        assert_eq!(pool.reserved(), 0);
        assert_eq!(pool.reserved_gauge().get(), 0);
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_budget() {
        let pool = ResourcePool::new(1_000);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        if let Some(r) = pool.reserve(7) {
                            assert!(pool.reserved() <= pool.budget());
                            drop(r);
                        }
                    }
                });
            }
        });
        assert_eq!(pool.reserved(), 0);
    }
}
