//! A bounded priority queue whose entries go stale.
//!
//! Rule kept here: an entry older than `max_age` is never handed out. It is
//! counted as expired and reported exactly once through [`ExpiringQueue::sweep`]
//! (or the sweeper's callback), whether the sweeper or a `pop` found it first.
//!
//! Order: highest priority first, and first-in first-out among equal
//! priorities. Capacity is a hard bound: a push into a full queue is refused
//! and hands the item back ([`QueueFull`]), so the producer decides what to do
//! (answer 503, drop and count, retry later). [`ExpiringQueue::push_evicting`]
//! instead makes room by evicting the lowest-priority, youngest entry when
//! the new one is more urgent.

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::metrics::{NameLabel, seconds, wait_buckets};

/// Capacity and staleness of an [`ExpiringQueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePolicy {
    /// Most entries held at once. At least 1.
    pub capacity: usize,
    /// Entries older than this are dropped instead of handed out.
    pub max_age: Duration,
}

impl Default for QueuePolicy {
    /// 1024 entries, 5 minutes.
    ///
    /// Why: 1024 absorbs a burst of 20+ pushes per task across dozens of
    /// tasks while keeping memory trivially bounded; 5 minutes is well past
    /// normal queueing delay (seconds), and anything older is better
    /// re-derived by the level-triggered reconciler from stored state than
    /// acted on from a stale event.
    fn default() -> Self {
        Self {
            capacity: 1024,
            max_age: Duration::from_secs(5 * 60),
        }
    }
}

impl QueuePolicy {
    /// Rejects a zero capacity or a zero max age.
    pub fn validate(&self) -> Result<(), Error> {
        if self.capacity == 0 {
            return Err(Error::invalid("queue", "capacity must be at least 1"));
        }
        if self.max_age.is_zero() {
            return Err(Error::invalid("queue", "max_age must be greater than zero"));
        }
        Ok(())
    }

    /// A zero capacity raised to 1, so a queue can always be built.
    fn sanitized(self) -> Self {
        Self {
            capacity: self.capacity.max(1),
            max_age: self.max_age,
        }
    }
}

/// A push refused because the queue was full; the item is handed back.
pub struct QueueFull<T> {
    /// The refused item.
    pub item: T,
    /// The priority it was pushed with.
    pub priority: u32,
    /// The queue's capacity.
    pub capacity: usize,
}

impl<T> QueueFull<T> {
    /// The refused item.
    pub fn into_inner(self) -> T {
        self.item
    }
}

impl<T> fmt::Debug for QueueFull<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueFull")
            .field("priority", &self.priority)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for QueueFull<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "queue full ({} entries); item with priority {} refused",
            self.capacity, self.priority
        )
    }
}

impl<T> std::error::Error for QueueFull<T> {}

impl<T> crate::retry::Transient for QueueFull<T> {
    /// Consumers drain the queue, so a later push may fit.
    fn is_transient(&self) -> bool {
        true
    }
}

/// An entry removed because it grew older than `max_age`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired<T> {
    /// The stale item.
    pub item: T,
    /// Its priority.
    pub priority: u32,
    /// How long it had been queued when it was found stale.
    pub age: Duration,
}

/// An entry pushed out by [`ExpiringQueue::push_evicting`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted<T> {
    /// The evicted item.
    pub item: T,
    /// Its (lower) priority.
    pub priority: u32,
    /// How long it had been queued.
    pub age: Duration,
}

/// Metrics of one or more queues, told apart by the `name` label.
///
/// Register one `QueueMetrics` once and pass it to every queue with
/// [`ExpiringQueue::with_metrics`].
#[derive(Debug, Clone)]
pub struct QueueMetrics {
    depth: Family<NameLabel, Gauge>,
    enqueued: Family<NameLabel, Counter>,
    dequeued: Family<NameLabel, Counter>,
    expired: Family<NameLabel, Counter>,
    rejected: Family<NameLabel, Counter>,
    evicted: Family<NameLabel, Counter>,
    wait: Family<NameLabel, Histogram, fn() -> Histogram>,
}

impl Default for QueueMetrics {
    fn default() -> Self {
        Self {
            depth: Family::default(),
            enqueued: Family::default(),
            dequeued: Family::default(),
            expired: Family::default(),
            rejected: Family::default(),
            evicted: Family::default(),
            wait: Family::new_with_constructor(|| Histogram::new(wait_buckets())),
        }
    }
}

impl QueueMetrics {
    /// Fresh, unregistered metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `queue_depth`, `queue_enqueued`, `queue_dequeued`,
    /// `queue_expired`, `queue_rejected`, `queue_evicted` and `queue_wait`
    /// (seconds between push and pop).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "queue_depth",
            "Entries waiting in the queue",
            self.depth.clone(),
        );
        registry.register(
            "queue_enqueued",
            "Entries accepted into the queue",
            self.enqueued.clone(),
        );
        registry.register(
            "queue_dequeued",
            "Entries handed to a consumer",
            self.dequeued.clone(),
        );
        registry.register(
            "queue_expired",
            "Entries dropped because they grew older than the max age",
            self.expired.clone(),
        );
        registry.register(
            "queue_rejected",
            "Pushes refused because the queue was full",
            self.rejected.clone(),
        );
        registry.register(
            "queue_evicted",
            "Entries evicted to make room for a more urgent one",
            self.evicted.clone(),
        );
        registry.register_with_unit(
            "queue_wait",
            "Time entries spent queued before a consumer took them",
            Unit::Seconds,
            self.wait.clone(),
        );
    }
}

/// A bounded priority queue with a max age. Cheap to clone; clones share
/// the same queue.
///
/// ```
/// use std::time::Duration;
/// use resilience::{ExpiringQueue, QueuePolicy};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let queue = ExpiringQueue::new("incidents", QueuePolicy { capacity: 2, max_age: Duration::from_secs(60) });
/// queue.push("disk full", 1).unwrap();
/// queue.push("node down", 9).unwrap();
/// assert!(queue.push("cpu high", 1).is_err()); // full: the item comes back
/// assert_eq!(queue.pop(), Some("node down")); // highest priority first
/// tokio::time::advance(Duration::from_secs(61)).await;
/// assert_eq!(queue.pop(), None); // "disk full" went stale
/// assert_eq!(queue.sweep()[0].item, "disk full");
/// # }
/// ```
pub struct ExpiringQueue<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for ExpiringQueue<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> fmt::Debug for ExpiringQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpiringQueue")
            .field("name", &self.shared.name)
            .field("policy", &self.shared.policy)
            .field("len", &self.len())
            .finish()
    }
}

impl<T> ExpiringQueue<T> {
    /// An empty queue with its own (unregistered) metrics. A zero capacity
    /// is raised to 1 (use [`QueuePolicy::validate`] to reject it instead).
    pub fn new(name: &str, policy: QueuePolicy) -> Self {
        Self::with_metrics(name, policy, &QueueMetrics::new())
    }

    /// An empty queue reporting into shared `metrics` under `name`.
    pub fn with_metrics(name: &str, policy: QueuePolicy, metrics: &QueueMetrics) -> Self {
        let policy = policy.sanitized();
        let label = NameLabel::new(name);
        metrics.depth.get_or_create(&label).set(0);
        for counter in [
            &metrics.enqueued,
            &metrics.dequeued,
            &metrics.expired,
            &metrics.rejected,
            &metrics.evicted,
        ] {
            drop(counter.get_or_create(&label));
        }
        Self {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                policy,
                label,
                metrics: metrics.clone(),
                available: Notify::new(),
                state: Mutex::new(State {
                    entries: BTreeMap::new(),
                    next_seq: 0,
                    found_expired: VecDeque::new(),
                }),
            }),
        }
    }

    /// Registers this queue's metrics (see [`QueueMetrics::register`]).
    pub fn register(&self, registry: &mut Registry) {
        self.shared.metrics.register(registry);
    }

    /// The queue's name (the `name` label of its metrics).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The policy in force.
    pub fn policy(&self) -> &QueuePolicy {
        &self.shared.policy
    }

    /// Entries currently queued (stale ones not yet swept included).
    pub fn len(&self) -> usize {
        self.shared.lock().entries.len()
    }

    /// Whether no entry is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `item`; higher `priority` is served first. When the queue is
    /// full (after dropping stale entries) the item is handed back.
    pub fn push(&self, item: T, priority: u32) -> Result<(), QueueFull<T>> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        if !self.shared.has_room(&mut state, now) {
            drop(state);
            return Err(self.shared.refuse(item, priority));
        }
        self.shared.insert(&mut state, item, priority, now);
        Ok(())
    }

    /// Like [`push`](Self::push), but when full, evicts the lowest-priority
    /// entry (the youngest among equals, to keep FIFO order) if `priority`
    /// is strictly higher; otherwise the item is handed back.
    pub fn push_evicting(
        &self,
        item: T,
        priority: u32,
    ) -> Result<Option<Evicted<T>>, QueueFull<T>> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        let mut evicted = None;
        if !self.shared.has_room(&mut state, now) {
            let lowest = state.entries.last_key_value().map(|(key, _)| *key);
            match lowest {
                Some(key @ (Reverse(lowest_priority), _)) if lowest_priority < priority => {
                    if let Some(entry) = state.entries.remove(&key) {
                        self.shared
                            .metrics
                            .evicted
                            .get_or_create(&self.shared.label)
                            .inc();
                        evicted = Some(Evicted {
                            item: entry.item,
                            priority: lowest_priority,
                            age: now.saturating_duration_since(entry.enqueued_at),
                        });
                    }
                }
                _ => {
                    drop(state);
                    return Err(self.shared.refuse(item, priority));
                }
            }
        }
        self.shared.insert(&mut state, item, priority, now);
        Ok(evicted)
    }

    /// Takes the most urgent fresh entry, if any. Stale entries met on the
    /// way are removed and kept for the next [`sweep`](Self::sweep).
    pub fn pop(&self) -> Option<T> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        while let Some((key, entry)) = state.entries.pop_first() {
            let age = now.saturating_duration_since(entry.enqueued_at);
            if age > self.shared.policy.max_age {
                let Reverse(priority) = key.0;
                self.shared.found_expired(
                    &mut state,
                    Expired {
                        item: entry.item,
                        priority,
                        age,
                    },
                );
                continue;
            }
            self.shared.publish_depth(&state);
            let metrics = &self.shared.metrics;
            metrics.dequeued.get_or_create(&self.shared.label).inc();
            metrics
                .wait
                .get_or_create(&self.shared.label)
                .observe(seconds(age));
            return Some(entry.item);
        }
        self.shared.publish_depth(&state);
        None
    }

    /// Waits for an entry, or returns `None` once `cancel` fires.
    pub async fn pop_wait(&self, cancel: &CancellationToken) -> Option<T> {
        loop {
            // Registering interest before looking closes the gap where a push
            // lands between an empty pop and the wait.
            let available = self.shared.available.notified();
            tokio::pin!(available);
            available.as_mut().enable();
            if let Some(item) = self.pop() {
                return Some(item);
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                () = available => {}
            }
        }
    }

    /// Removes every entry older than `max_age` and returns them with their
    /// ages, together with stale entries `pop` found since the last sweep.
    pub fn sweep(&self) -> Vec<Expired<T>> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        self.shared.drop_stale(&mut state, now);
        Vec::from(std::mem::take(&mut state.found_expired))
    }
}

impl<T: Send + 'static> ExpiringQueue<T> {
    /// The sweeper loop: every `interval`, [`sweep`](Self::sweep) and hand
    /// each expired entry to `on_expired` (log it with its age). The loop
    /// ends by itself once every other handle to the queue is dropped, so
    /// it can run on a `TaskTracker` without blocking a drain forever
    /// (or be aborted through its task).
    pub fn sweeper<F>(
        &self,
        interval: Duration,
        mut on_expired: F,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        F: FnMut(Expired<T>) + Send + 'static,
    {
        let queue: Weak<Shared<T>> = Arc::downgrade(&self.shared);
        let interval = interval.max(Duration::from_millis(1));
        async move {
            let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(shared) = queue.upgrade() else {
                    return;
                };
                let expired = ExpiringQueue { shared }.sweep();
                for entry in expired {
                    on_expired(entry);
                }
            }
        }
    }

    /// Spawns [`sweeper`](Self::sweeper) on the current runtime.
    pub fn spawn_sweeper<F>(&self, interval: Duration, on_expired: F) -> JoinHandle<()>
    where
        F: FnMut(Expired<T>) + Send + 'static,
    {
        tokio::spawn(self.sweeper(interval, on_expired))
    }
}

struct Shared<T> {
    name: String,
    policy: QueuePolicy,
    label: NameLabel,
    metrics: QueueMetrics,
    available: Notify,
    state: Mutex<State<T>>,
}

struct State<T> {
    /// Keyed by (priority descending, arrival order): the first entry is the
    /// most urgent and, among equals, the oldest.
    entries: BTreeMap<(Reverse<u32>, u64), Entry<T>>,
    next_seq: u64,
    /// Stale entries `pop` removed, waiting to be reported by `sweep`.
    found_expired: VecDeque<Expired<T>>,
}

struct Entry<T> {
    item: T,
    enqueued_at: Instant,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // State changes are single map operations; a poisoned lock cannot
        // hold a half-applied one.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether one more entry fits, dropping stale entries first if full.
    fn has_room(&self, state: &mut State<T>, now: Instant) -> bool {
        if state.entries.len() < self.policy.capacity {
            return true;
        }
        self.drop_stale(state, now);
        state.entries.len() < self.policy.capacity
    }

    fn insert(&self, state: &mut State<T>, item: T, priority: u32, now: Instant) {
        let seq = state.next_seq;
        state.next_seq = state.next_seq.wrapping_add(1);
        state.entries.insert(
            (Reverse(priority), seq),
            Entry {
                item,
                enqueued_at: now,
            },
        );
        self.publish_depth(state);
        self.metrics.enqueued.get_or_create(&self.label).inc();
        self.available.notify_one();
    }

    fn refuse(&self, item: T, priority: u32) -> QueueFull<T> {
        self.metrics.rejected.get_or_create(&self.label).inc();
        tracing::warn!(queue = %self.name, priority, capacity = self.policy.capacity, "queue full, push refused");
        QueueFull {
            item,
            priority,
            capacity: self.policy.capacity,
        }
    }

    fn drop_stale(&self, state: &mut State<T>, now: Instant) {
        let max_age = self.policy.max_age;
        let stale: Vec<_> = state
            .entries
            .extract_if(.., |_, entry| {
                now.saturating_duration_since(entry.enqueued_at) > max_age
            })
            .collect();
        for ((Reverse(priority), _), entry) in stale {
            let age = now.saturating_duration_since(entry.enqueued_at);
            self.found_expired(
                state,
                Expired {
                    item: entry.item,
                    priority,
                    age,
                },
            );
        }
        self.publish_depth(state);
    }

    fn found_expired(&self, state: &mut State<T>, expired: Expired<T>) {
        self.metrics.expired.get_or_create(&self.label).inc();
        tracing::debug!(
            queue = %self.name,
            priority = expired.priority,
            age_ms = u64::try_from(expired.age.as_millis()).unwrap_or(u64::MAX),
            "queue entry expired"
        );
        // Bounded like the queue itself: if nobody sweeps, the oldest reports
        // go (they were counted and logged already).
        if state.found_expired.len() >= self.policy.capacity {
            state.found_expired.pop_front();
        }
        state.found_expired.push_back(expired);
    }

    /// Sets the depth gauge from the map while the lock is held, so the
    /// gauge never disagrees with the queue.
    fn publish_depth(&self, state: &State<T>) {
        let depth = i64::try_from(state.entries.len()).unwrap_or(i64::MAX);
        self.metrics.depth.get_or_create(&self.label).set(depth);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use tokio::time::advance;

    fn queue(capacity: usize) -> (ExpiringQueue<&'static str>, Registry) {
        let mut registry = Registry::default();
        let queue = ExpiringQueue::new(
            "test",
            QueuePolicy {
                capacity,
                max_age: Duration::from_secs(60),
            },
        );
        queue.register(&mut registry);
        (queue, registry)
    }

    fn metric(registry: &Registry, name: &str) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        let prefix = format!("{name}{{name=\"test\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
            .to_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn higher_priority_first_then_first_in_first_out() {
        let (queue, _) = queue(10);
        queue.push("low-1", 1).unwrap();
        queue.push("high-1", 5).unwrap();
        queue.push("low-2", 1).unwrap();
        queue.push("high-2", 5).unwrap();
        let order: Vec<_> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(order, ["high-1", "high-2", "low-1", "low-2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_hands_the_item_back() {
        let (queue, registry) = queue(2);
        queue.push("a", 1).unwrap();
        queue.push("b", 1).unwrap();
        let full = queue.push("c", 9).unwrap_err();
        assert_eq!(full.priority, 9);
        assert_eq!(full.capacity, 2);
        assert_eq!(full.into_inner(), "c");
        assert_eq!(queue.len(), 2);
        assert_eq!(metric(&registry, "queue_rejected_total"), "1");
        assert_eq!(metric(&registry, "queue_depth"), "2");
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_drops_old_entries_and_keeps_fresh_ones() {
        let (queue, registry) = queue(10);
        queue.push("old", 1).unwrap();
        advance(Duration::from_secs(45)).await;
        queue.push("fresh", 1).unwrap();
        advance(Duration::from_secs(16)).await;

        let expired = queue.sweep();
        assert_eq!(
            expired,
            [Expired {
                item: "old",
                priority: 1,
                age: Duration::from_secs(61)
            }]
        );
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.pop(), Some("fresh"));
        assert_eq!(metric(&registry, "queue_expired_total"), "1");
        assert_eq!(metric(&registry, "queue_depth"), "0");
    }

    #[tokio::test(start_paused = true)]
    async fn entry_exactly_max_age_old_is_still_served() {
        let (queue, _) = queue(10);
        queue.push("edge", 1).unwrap();
        advance(Duration::from_secs(60)).await;
        assert!(queue.sweep().is_empty());
        assert_eq!(queue.pop(), Some("edge"));
    }

    #[tokio::test(start_paused = true)]
    async fn pop_never_returns_an_expired_entry_and_sweep_still_reports_it() {
        let (queue, registry) = queue(10);
        queue.push("stale-but-urgent", 9).unwrap();
        advance(Duration::from_secs(61)).await;
        queue.push("fresh", 1).unwrap();
        assert_eq!(queue.pop(), Some("fresh"));
        assert_eq!(queue.pop(), None);
        let expired = queue.sweep();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].item, "stale-but-urgent");
        assert_eq!(expired[0].age, Duration::from_secs(61));
        // Reported once only.
        assert!(queue.sweep().is_empty());
        assert_eq!(metric(&registry, "queue_expired_total"), "1");
        assert_eq!(metric(&registry, "queue_dequeued_total"), "1");
    }

    #[tokio::test(start_paused = true)]
    async fn depth_gauge_is_exact_after_push_pop_sweep_and_full() {
        let (queue, registry) = queue(3);
        let depth = || metric(&registry, "queue_depth");
        assert_eq!(depth(), "0");
        queue.push("a", 1).unwrap();
        queue.push("b", 1).unwrap();
        assert_eq!(depth(), "2");
        queue.pop();
        assert_eq!(depth(), "1");
        queue.push("c", 1).unwrap();
        queue.push("d", 1).unwrap();
        assert!(queue.push("e", 1).is_err());
        assert_eq!(depth(), "3");
        advance(Duration::from_secs(61)).await;
        queue.sweep();
        assert_eq!(depth(), "0");
        queue.push("f", 1).unwrap();
        assert_eq!(depth(), "1");
        assert_eq!(metric(&registry, "queue_enqueued_total"), "5");
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_makes_room_by_dropping_stale_entries_first() {
        let (queue, _) = queue(2);
        queue.push("stale", 1).unwrap();
        advance(Duration::from_secs(61)).await;
        queue.push("a", 1).unwrap();
        queue.push("b", 1).unwrap();
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.sweep()[0].item, "stale");
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_replaces_the_youngest_lowest_priority_entry() {
        let (queue, registry) = queue(3);
        queue.push("low-old", 1).unwrap();
        advance(Duration::from_secs(1)).await;
        queue.push("low-young", 1).unwrap();
        queue.push("mid", 5).unwrap();
        let evicted = queue.push_evicting("urgent", 9).unwrap().unwrap();
        assert_eq!(evicted.item, "low-young");
        assert_eq!(evicted.priority, 1);
        // Not more urgent than the lowest: refused, nothing evicted.
        assert_eq!(
            queue.push_evicting("also-low", 1).unwrap_err().item,
            "also-low"
        );
        let order: Vec<_> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(order, ["urgent", "mid", "low-old"]);
        assert_eq!(metric(&registry, "queue_evicted_total"), "1");
    }

    #[tokio::test(start_paused = true)]
    async fn pop_wait_wakes_on_push_and_stops_on_cancel() {
        let (queue, _) = queue(10);
        let cancel = CancellationToken::new();
        let producer = queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            producer.push("job", 1).unwrap();
        });
        let start = Instant::now();
        assert_eq!(queue.pop_wait(&cancel).await, Some("job"));
        assert_eq!(start.elapsed(), Duration::from_secs(2));

        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            canceller.cancel();
        });
        assert_eq!(queue.pop_wait(&cancel).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn sweeper_reports_expired_entries_and_stops_with_the_queue() {
        let (queue, _) = queue(10);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sweeper = queue.spawn_sweeper(Duration::from_secs(10), move |expired| {
            tx.send((expired.item, expired.age)).unwrap();
        });
        queue.push("stale", 1).unwrap();
        advance(Duration::from_secs(30)).await;
        queue.push("fresh", 1).unwrap();
        let (item, age) = rx.recv().await.unwrap();
        assert_eq!(item, "stale");
        // Found by the first tick after it passed 60 s.
        assert!(
            age > Duration::from_secs(60) && age <= Duration::from_secs(70),
            "{age:?}"
        );
        assert_eq!(queue.len(), 1);

        drop(queue);
        tokio::time::timeout(Duration::from_secs(30), sweeper)
            .await
            .expect("sweeper must end once the queue is gone")
            .unwrap();
    }

    #[test]
    fn policy_validation_rejects_zeroes() {
        assert!(QueuePolicy::default().validate().is_ok());
        let zero_capacity = QueuePolicy {
            capacity: 0,
            ..QueuePolicy::default()
        };
        assert!(zero_capacity.validate().is_err());
        let zero_age = QueuePolicy {
            max_age: Duration::ZERO,
            ..QueuePolicy::default()
        };
        assert!(zero_age.validate().is_err());
    }
}
