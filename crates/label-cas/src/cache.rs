//! The memory of the last read of each pull request: its ETag and what it
//! answered — labels for [`AtomicLabelManager`](crate::AtomicLabelManager),
//! the whole pull request for [`PullRequestReader`](crate::PullRequestReader)
//! — so the next read can be conditional (a 304 costs no rate limit).
//!
//! Rule kept here: **bounded** — at most `capacity` pull requests; when full
//! the least recently used entry goes. A cached entry is only ever used
//! together with a 304 for its own ETag, so staleness cannot leak out.
//!
//! Why our own writes need no invalidation: an ETag and the answer it was
//! sent with are stored and used as one pair, and a 304 means the resource
//! is still exactly that answer. After any write that changed the labels
//! (ours or anyone's) the server's ETag differs and the next read is a full
//! answer that replaces the pair; after a net-zero change (an undo) the old
//! pair is right again and the read stays free. ETags are specific to the
//! token that read them, and the cache belongs to one manager over one
//! backend: a token rotated by a GitHub App installation only turns the
//! next read into a full one.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::{ETag, Error, LabelSet, Result};

/// The last ETag and answer (`V`) per pull request, least recently used
/// first out.
#[derive(Debug)]
pub(crate) struct EtagCache<V = LabelSet> {
    capacity: usize,
    inner: Mutex<Inner<V>>,
}

#[derive(Debug)]
struct Inner<V> {
    entries: HashMap<String, Entry<V>>,
    tick: u64,
}

#[derive(Debug)]
struct Entry<V> {
    etag: ETag,
    value: V,
    used: u64,
}

impl<V: Clone> EtagCache<V> {
    /// A cache of at most `capacity` entries (0 disables caching).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                tick: 0,
            }),
        }
    }

    /// The cached ETag and answer of `key`, marking it recently used.
    pub(crate) fn get(&self, key: &str) -> Option<(ETag, V)> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.tick += 1;
        let tick = inner.tick;
        inner.entries.get_mut(key).map(|e| {
            e.used = tick;
            (e.etag.clone(), e.value.clone())
        })
    }

    /// Remembers the answer of a read.
    pub(crate) fn put(&self, key: &str, etag: ETag, value: V) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.tick += 1;
        let used = inner.tick;
        if !inner.entries.contains_key(key) && inner.entries.len() >= self.capacity {
            // O(capacity) eviction: only on inserting a new PR into a full
            // cache, and capacities are a few thousand at most.
            if let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            {
                inner.entries.remove(&oldest);
            }
        }
        inner
            .entries
            .insert(key.to_owned(), Entry { etag, value, used });
    }

    /// Settles a conditional read of `key` sent with the ETag of `cached`:
    /// a full answer (`Some`) is remembered under its ETag (without one,
    /// the entry goes) and returned; a 304 (`None`) returns the cached
    /// value — the one its ETag stands for — and is refused when nothing
    /// was cached (the read was unconditional).
    pub(crate) fn settle(
        &self,
        key: &str,
        cached: Option<(ETag, V)>,
        answer: Option<(V, Option<ETag>)>,
    ) -> Result<V> {
        match (answer, cached) {
            (Some((value, etag)), _) => {
                match etag {
                    Some(etag) => self.put(key, etag, value.clone()),
                    None => self.forget(key),
                }
                Ok(value)
            }
            (None, Some((_, value))) => Ok(value),
            (None, None) => Err(Error::InvalidResponse {
                reason: "304 Not Modified to an unconditional read".into(),
            }),
        }
    }

    /// Forgets `key` (its cached answer proved wrong, or it is gone).
    pub(crate) fn forget(&self, key: &str) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .remove(key);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(s: &str) -> ETag {
        ETag::new(format!("\"{s}\"")).unwrap()
    }

    #[test]
    fn a_full_cache_evicts_the_least_recently_used_pull_request() {
        let cache: EtagCache = EtagCache::new(2);
        cache.put("a", tag("1"), LabelSet::new(["x"]));
        cache.put("b", tag("2"), LabelSet::default());
        assert!(cache.get("a").is_some()); // a is now more recent than b
        cache.put("c", tag("3"), LabelSet::default());
        assert_eq!(cache.len(), 2);
        assert!(cache.get("b").is_none());
        assert_eq!(cache.get("a").unwrap().1.names(), ["x"]);
        assert!(cache.get("c").is_some());
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache: EtagCache = EtagCache::new(0);
        cache.put("a", tag("1"), LabelSet::default());
        assert!(cache.get("a").is_none());
    }
}
