//! A bounded memory of recently finished jobs, so that a late cancel of a job
//! that already ended is answered `Finished` rather than `Unknown`.
//!
//! The rule it keeps: it never holds more than its capacity, nor answers for
//! a job that finished longer ago than its maximum age.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::time::Instant;

use crate::JobOutcome;

/// What is remembered of one finished job.
#[derive(Debug, Clone)]
pub(crate) struct FinishedRecord {
    pub(crate) generation: u64,
    pub(crate) outcome: JobOutcome,
    pub(crate) finished_at: Instant,
    pub(crate) finished_wall: Timestamp,
    pub(crate) started_wall: Timestamp,
    pub(crate) steps: u64,
}

/// Finished jobs in the order they finished, capped by count and age.
#[derive(Debug)]
pub(crate) struct FinishedMemory {
    capacity: usize,
    max_age: Duration,
    by_id: HashMap<Arc<str>, FinishedRecord>,
    /// Finish order, for eviction. May hold stale entries (a job id that was
    /// registered again); the generation tells them apart.
    order: VecDeque<(Arc<str>, u64)>,
}

impl FinishedMemory {
    pub(crate) fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            capacity,
            max_age,
            by_id: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn insert(&mut self, id: Arc<str>, record: FinishedRecord, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        self.order.push_back((Arc::clone(&id), record.generation));
        self.by_id.insert(id, record);
        self.evict(now);
    }

    /// The record of `id`, unless it is older than the maximum age.
    pub(crate) fn get(&mut self, id: &str, now: Instant) -> Option<&FinishedRecord> {
        self.evict(now);
        self.by_id.get(id)
    }

    /// Forgets `id` (it was registered again, so it is active, not finished).
    pub(crate) fn forget(&mut self, id: &str) {
        self.by_id.remove(id);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    fn evict(&mut self, now: Instant) {
        while let Some((id, generation)) = self.order.front() {
            let current = self.by_id.get(id).filter(|r| r.generation == *generation);
            let evict = match current {
                // Stale order entry: its job was forgotten or finished again later.
                None => true,
                Some(record) => {
                    self.by_id.len() > self.capacity
                        || now.saturating_duration_since(record.finished_at) > self.max_age
                }
            };
            if !evict {
                break;
            }
            if current.is_some() {
                self.by_id.remove(id);
            }
            self.order.pop_front();
        }
        // Stale entries can pile up behind a live head only while the head is
        // young and the map is under capacity; bound them too.
        if self.order.len() > self.capacity.saturating_mul(2) {
            let by_id = &self.by_id;
            self.order.retain(|(id, generation)| {
                by_id.get(id).is_some_and(|r| r.generation == *generation)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(generation: u64, finished_at: Instant) -> FinishedRecord {
        FinishedRecord {
            generation,
            outcome: JobOutcome::Completed,
            finished_at,
            finished_wall: Timestamp::now(),
            started_wall: Timestamp::now(),
            steps: 0,
        }
    }

    #[test]
    fn memory_keeps_only_the_most_recent_jobs_up_to_its_capacity() {
        let now = Instant::now();
        let mut memory = FinishedMemory::new(3, Duration::from_secs(60));
        for n in 0..10u64 {
            memory.insert(Arc::from(format!("job-{n}")), record(n, now), now);
        }
        assert_eq!(memory.len(), 3);
        assert!(memory.get("job-6", now).is_none());
        assert!(memory.get("job-7", now).is_some());
        assert!(memory.get("job-9", now).is_some());
    }

    #[test]
    fn memory_forgets_jobs_older_than_its_maximum_age() {
        let start = Instant::now();
        let mut memory = FinishedMemory::new(100, Duration::from_secs(60));
        memory.insert(Arc::from("old"), record(1, start), start);
        let later = start + Duration::from_secs(61);
        memory.insert(Arc::from("new"), record(2, later), later);
        assert!(memory.get("old", later).is_none());
        assert!(memory.get("new", later).is_some());
    }

    #[test]
    fn stale_order_entries_stay_bounded_when_ids_are_reused() {
        let now = Instant::now();
        let mut memory = FinishedMemory::new(4, Duration::from_secs(60));
        memory.insert(Arc::from("head"), record(0, now), now);
        for generation in 1..1_000u64 {
            memory.forget("reused");
            memory.insert(Arc::from("reused"), record(generation, now), now);
        }
        assert!(
            memory.order.len() <= 8,
            "order holds {}",
            memory.order.len()
        );
        assert_eq!(memory.get("reused", now).map(|r| r.generation), Some(999));
        assert!(memory.get("head", now).is_some());
    }
}
