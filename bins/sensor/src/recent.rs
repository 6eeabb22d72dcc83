//! The in-memory half of the dedupe: the keys of the deliveries this
//! process recorded lately, with the task and head they were about.
//!
//! The rule it keeps: bounded (oldest forgotten first), and only ever a
//! shortcut — a key is added once its delivery is stored in the task's
//! state, so forgetting one (or a restart) costs a state read, never a
//! second cancellation.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

/// What a remembered delivery was about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remembered {
    /// Its task.
    pub task_id: String,
    /// The head it carried.
    pub head_sha: String,
}

/// A bounded set of recent delivery keys.
#[derive(Debug)]
pub struct RecentDeliveries {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, Remembered>,
    order: VecDeque<String>,
}

impl RecentDeliveries {
    /// Remembers at most `capacity` keys (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// What `key` was about, if it is remembered.
    pub fn get(&self, key: &str) -> Option<Remembered> {
        self.lock().map.get(key).cloned()
    }

    /// Remembers `key`, forgetting the oldest key when full.
    pub fn insert(&self, key: &str, remembered: Remembered) {
        let mut inner = self.lock();
        if inner.map.insert(key.to_owned(), remembered).is_some() {
            return;
        }
        inner.order.push_back(key.to_owned());
        while inner.order.len() > self.capacity {
            if let Some(oldest) = inner.order.pop_front() {
                inner.map.remove(&oldest);
            }
        }
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map and queue consistent
        // (each change is one insert or remove), so the data stays usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn about(task: &str) -> Remembered {
        Remembered {
            task_id: task.into(),
            head_sha: "a".repeat(40),
        }
    }

    #[test]
    fn keys_are_remembered_up_to_the_capacity_oldest_forgotten_first() {
        let recent = RecentDeliveries::new(2);
        recent.insert("a:1", about("task-1"));
        recent.insert("b:1", about("task-2"));
        recent.insert("a:1", about("task-1"));
        assert_eq!(recent.len(), 2);
        recent.insert("c:1", about("task-3"));
        assert_eq!(recent.get("a:1"), None);
        assert_eq!(recent.get("b:1"), Some(about("task-2")));
        assert_eq!(recent.get("c:1").unwrap().task_id, "task-3");
        assert!(!recent.is_empty());
    }
}
