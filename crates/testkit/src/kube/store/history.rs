//! The kept history of changes, per resource kind, as the API server's
//! watch cache keeps one per resource: what watches resume from and what
//! reads at a past resourceVersion are rebuilt from.
//!
//! Each kind keeps its last `limit` events; writes to other kinds never
//! push a kind's events out, so a watch on CodeRuns is not expired by a
//! storm of Lease renewals. The rule it keeps: **a kind's history holds
//! every one of its events after its `oldest` resourceVersion**, so a watch
//! or a snapshot from there on misses nothing, and anything older is 410.

use std::collections::{BTreeMap, VecDeque};

use tokio::time::Instant;

use super::Event;

/// How many write instants are kept to date old snapshots (a snapshot
/// older than all of them counts as expired).
const WRITE_INSTANTS: usize = 100_000;

/// Every kind's recent events.
#[derive(Debug)]
pub(crate) struct History {
    limit: usize,
    kinds: BTreeMap<(String, String), Kind>,
    /// Nothing at or before it is kept (set by a restart).
    floor: u64,
    /// When each of the last writes happened, by resourceVersion.
    writes: VecDeque<(u64, Instant)>,
}

#[derive(Debug, Default)]
struct Kind {
    events: VecDeque<Event>,
    /// The resourceVersion of the last event evicted.
    compacted: u64,
}

impl History {
    /// Keeps the last `limit` events of each kind.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            kinds: BTreeMap::new(),
            floor: 0,
            writes: VecDeque::new(),
        }
    }

    /// Records an event written at `at`.
    pub fn record(&mut self, event: Event, at: Instant) {
        self.writes.push_back((event.rv, at));
        if self.writes.len() > WRITE_INSTANTS {
            self.writes.pop_front();
        }
        let kind = self
            .kinds
            .entry((event.key.group.clone(), event.key.plural.clone()))
            .or_default();
        kind.events.push_back(event);
        while kind.events.len() > self.limit {
            if let Some(evicted) = kind.events.pop_front() {
                kind.compacted = evicted.rv;
            }
        }
    }

    /// The oldest resourceVersion a watch or snapshot of the kind may start
    /// from: every event of the kind after it is kept.
    pub fn oldest(&self, group: &str, plural: &str) -> u64 {
        let compacted = self
            .kinds
            .get(&(group.to_owned(), plural.to_owned()))
            .map_or(0, |k| k.compacted);
        compacted.max(self.floor)
    }

    /// The kind's kept events after `rv`, oldest first.
    pub fn after<'a>(
        &'a self,
        group: &str,
        plural: &str,
        rv: u64,
    ) -> impl DoubleEndedIterator<Item = &'a Event> + 'a {
        // Events are kept in resourceVersion order: a watch resuming near
        // the present skips the older ones by bisection, not by a scan.
        self.kinds
            .get(&(group.to_owned(), plural.to_owned()))
            .into_iter()
            .flat_map(move |k| k.events.range(k.events.partition_point(|e| e.rv <= rv)..))
    }

    /// The resourceVersion of a snapshot of the kind `lag` of its events
    /// behind `current` (as far back as the history reaches).
    pub fn lagging(&self, group: &str, plural: &str, lag: usize, current: u64) -> u64 {
        if lag == 0 {
            return current;
        }
        let events = self
            .kinds
            .get(&(group.to_owned(), plural.to_owned()))
            .map(|k| &k.events);
        match events {
            Some(e) if e.len() >= lag => e[e.len() - lag].rv - 1,
            _ => self.oldest(group, plural),
        }
    }

    /// When the state at `rv` stopped being current (the next write), or
    /// `None` while it is current. An instant too old to be kept reads as
    /// the oldest kept one.
    pub fn superseded_at(&self, rv: u64) -> Option<Instant> {
        let next = self.writes.partition_point(|(w, _)| *w <= rv);
        self.writes.get(next).map(|(_, at)| *at)
    }

    /// What a restart does to the watch cache: the history starts over at
    /// `rv`.
    pub fn forget_before(&mut self, rv: u64) {
        self.kinds.clear();
        self.floor = rv;
    }

    /// The number of kept events of the kind.
    #[cfg(test)]
    pub fn len(&self, group: &str, plural: &str) -> usize {
        self.kinds
            .get(&(group.to_owned(), plural.to_owned()))
            .map_or(0, |k| k.events.len())
    }
}
