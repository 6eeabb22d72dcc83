//! Write taps: every change of the kinds a test selects, in resourceVersion
//! order, recorded in-process by the store itself.
//!
//! What a watch would show a test, without the ways a watch can miss
//! something: a tap makes no request, so no fault, partition, connection
//! cut, [`FakeKube::restart`](super::FakeKube::restart) or watch-cache
//! expiry can lose an event (a watch resumed after a 410 relists, and a
//! deletion between the cut and the relist is never seen as `DELETED`).
//! The rule it keeps: **a tap holds every write of its kinds made after it
//! was opened, each once, in the order of the global resourceVersion** —
//! the one total order the history checkers compare positions in.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use serde_json::Value;

/// What a write did to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Created.
    Added,
    /// Changed (a deletionTimestamp set by a graceful delete included).
    Modified,
    /// Removed from the store.
    Deleted,
}

/// One write, as the store made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// The resourceVersion the write was given (a deletion's: the version of
    /// its removal).
    pub rv: u64,
    /// When, on the fake's clock (see [`FakeKube::now`](super::FakeKube::now)).
    pub at: jiff::Timestamp,
    /// What it did.
    pub kind: WriteKind,
    /// The API group (`""`: core).
    pub group: String,
    /// The resource plural.
    pub plural: String,
    /// The namespace (`""` for cluster-scoped kinds).
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// The object after the write (for a deletion: as it was removed).
    pub object: Value,
}

/// A handle on the writes of one kind, opened by
/// [`FakeKube::tap`](super::FakeKube::tap). Cheap to clone; the store stops
/// recording for it once every clone is dropped.
#[derive(Debug, Clone)]
pub struct Tap {
    writes: Arc<Mutex<Vec<Write>>>,
}

impl Tap {
    /// Every write recorded so far, oldest first.
    pub fn writes(&self) -> Vec<Write> {
        self.lock().clone()
    }

    /// The writes recorded after resourceVersion `rv`, oldest first.
    pub fn since(&self, rv: u64) -> Vec<Write> {
        self.lock().iter().filter(|w| w.rv > rv).cloned().collect()
    }

    /// How many writes were recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no write was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Write>> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where one tap's writes go.
type Sink = Weak<Mutex<Vec<Write>>>;

/// The store's side: the open taps, each with the kind (group, plural) it
/// selects.
#[derive(Debug, Default)]
pub(crate) struct Taps {
    open: Vec<(String, String, Sink)>,
}

impl Taps {
    /// Opens a tap on `group`/`plural`.
    pub fn open(&mut self, group: &str, plural: &str) -> Tap {
        let writes = Arc::new(Mutex::new(Vec::new()));
        self.open
            .push((group.to_owned(), plural.to_owned(), Arc::downgrade(&writes)));
        Tap { writes }
    }

    /// Hands one write to the taps that select its kind; forgets the taps
    /// whose handles are all gone.
    pub fn record(&mut self, write: impl FnOnce() -> Write, group: &str, plural: &str) {
        if self.open.is_empty() {
            return;
        }
        self.open.retain(|(_, _, w)| w.strong_count() > 0);
        let mut made: Option<Write> = None;
        let mut write = Some(write);
        for (g, p, sink) in &self.open {
            if g != group || p != plural {
                continue;
            }
            let Some(sink) = sink.upgrade() else {
                continue;
            };
            if made.is_none() {
                made = write.take().map(|f| f());
            }
            if let Some(w) = &made {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(w.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(rv: u64, plural: &str) -> Write {
        Write {
            rv,
            at: jiff::Timestamp::UNIX_EPOCH,
            kind: WriteKind::Added,
            group: String::new(),
            plural: plural.to_owned(),
            namespace: "default".to_owned(),
            name: format!("o{rv}"),
            object: Value::Null,
        }
    }

    #[test]
    fn a_tap_records_only_its_kind_in_order() {
        let mut taps = Taps::default();
        let pods = taps.open("", "pods");
        for (rv, plural) in [(2, "pods"), (3, "configmaps"), (4, "pods")] {
            taps.record(|| write(rv, plural), "", plural);
        }
        let rvs: Vec<u64> = pods.writes().iter().map(|w| w.rv).collect();
        assert_eq!(rvs, [2, 4]);
        assert_eq!(pods.since(2).len(), 1);
        assert_eq!(pods.len(), 2);
    }

    #[test]
    fn a_dropped_tap_is_forgotten() {
        let mut taps = Taps::default();
        drop(taps.open("", "pods"));
        taps.record(|| write(2, "pods"), "", "pods");
        assert!(taps.open.is_empty());
    }
}
