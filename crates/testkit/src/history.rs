//! History checkers: record what a distributed lock or a compare-and-swap
//! counter did during a test, then check the recorded history against the
//! safety claim instead of trusting the code under test.
//!
//! The one rule: **a checker judges only what was recorded**, so every claim
//! it makes is about events with instants the test observed, never about
//! what the system believes about itself.
//!
//! # The lock model
//!
//! A lock built on leases cannot promise that a holder *stops* when its lease
//! runs out (a process can pause at any moment). What it can promise, and
//! what [`LockHistory`] checks, is this:
//!
//! > A holder that acts only before its **guaranteed deadline** never
//! > overlaps another holder of the same key, and every acquisition of a key
//! > carries a fencing token greater than every earlier acquisition's.
//!
//! So a *hold* is valid from its acquisition instant until the earliest of
//! its release, its reported loss, and its guaranteed deadline
//! (`valid_until`). A renewal that succeeds at `at` with a new deadline
//! makes the hold valid again over `[at, valid_until)`; the gap between an
//! expired deadline and a later renewal stays invalid. `valid_until` must be
//! the deadline the lock hands to the holder, computed from the instant the
//! acquiring (or renewing) request was *sent*, not from when its answer
//! arrived: that is what makes the claim checkable. Validity intervals are
//! half-open, so a takeover at exactly the previous holder's deadline is not
//! an overlap.
//!
//! Consequences: a correct lease lock passes even when a holder is paused
//! past its deadline, because its late actions are outside its valid
//! interval (the fencing token is what rejects them downstream); a lock that
//! hands the key to a second holder before the first one's deadline fails,
//! as does one whose takeover does not increase the fencing token.
//!
//! # The counter model
//!
//! [`CounterHistory`] checks a counter that writers increment by one with a
//! compare-and-swap: each applied operation read `observed_before` and wrote
//! `observed_before + 1`. The counter lost an increment when the final value
//! is not `initial + applied operations`, or when two applied operations read
//! the same value (one overwrote the other); it duplicated one when an
//! operation id was applied twice (a blind retry of a write that had in fact
//! succeeded).
//!
//! # The cancellation model
//!
//! [`cancellation::CancellationHistory`] checks the cancellation flow's
//! end-to-end claims (no lost or wrong cancellation, no duplicate record, no
//! run recorded cancelled while its pod existed, no orphaned Lease, no
//! outside label lost) from what the fakes recorded.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use testkit::history::{FencingToken, LockHistory};
//! use tokio::time::Instant;
//!
//! let created = jiff::Timestamp::from_second(1_700_000_000).unwrap();
//! let token = |transitions| FencingToken::new("uid-1", created, transitions);
//! let history = LockHistory::new();
//! let t0 = Instant::now();
//! let lease = Duration::from_secs(15);
//! history.acquired("task-42", "pod-a/1", token(1), t0, t0 + lease);
//! history.released("task-42", "pod-a/1", t0 + Duration::from_secs(3));
//! history.acquired("task-42", "pod-b/7", token(2), t0 + Duration::from_secs(4), t0 + lease * 2);
//! assert!(history.check().is_ok());
//!
//! // A second holder before the first one's deadline, with a stale token: two violations.
//! history.acquired("task-42", "pod-c/3", token(2), t0 + Duration::from_secs(5), t0 + lease * 2);
//! assert_eq!(history.violations().len(), 2);
//! ```

pub mod cancellation;

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Default bound on the number of events one history keeps; a history that
/// reaches it fails its check with [`Violation::HistoryOverflow`] rather than
/// judging an incomplete record.
pub const DEFAULT_MAX_EVENTS: usize = 1_000_000;

/// The workspace's fencing token (Lease uid, creation time,
/// `leaseTransitions`), the default token type of [`LockHistory`]: tokens of
/// one Lease object order by transitions, of successive objects by creation
/// time, and a key whose tokens cannot be ordered shows up as a fencing
/// violation.
pub use resilience::fencing::FencingToken;

/// One thing a lock holder reported.
#[derive(Debug, Clone, PartialEq)]
pub enum LockEvent<T = FencingToken> {
    /// `holder` acquired `key` with `fencing_token`; it may act until `valid_until`.
    Acquired {
        /// The lock key.
        key: String,
        /// The holder identity (unique per guard).
        holder: String,
        /// The token written by the acquisition.
        fencing_token: T,
        /// When the acquisition returned to the holder.
        at: Instant,
        /// The guaranteed deadline handed to the holder.
        valid_until: Instant,
    },
    /// `holder` renewed its hold on `key` at `at`; its new deadline is `valid_until`.
    Renewed {
        /// The lock key.
        key: String,
        /// The holder identity.
        holder: String,
        /// When the renewal returned to the holder.
        at: Instant,
        /// The new guaranteed deadline.
        valid_until: Instant,
    },
    /// `holder` released `key`.
    Released {
        /// The lock key.
        key: String,
        /// The holder identity.
        holder: String,
        /// When the holder stopped relying on the lock (before the release call).
        at: Instant,
    },
    /// `holder` learned it lost `key`.
    Lost {
        /// The lock key.
        key: String,
        /// The holder identity.
        holder: String,
        /// When the loss was reported.
        at: Instant,
    },
}

impl<T> LockEvent<T> {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Acquired { key, .. }
            | Self::Renewed { key, .. }
            | Self::Released { key, .. }
            | Self::Lost { key, .. } => key,
        }
    }

    /// The holder that reported the event.
    pub fn holder(&self) -> &str {
        match self {
            Self::Acquired { holder, .. }
            | Self::Renewed { holder, .. }
            | Self::Released { holder, .. }
            | Self::Lost { holder, .. } => holder,
        }
    }

    /// When the event happened.
    pub fn at(&self) -> Instant {
        match self {
            Self::Acquired { at, .. }
            | Self::Renewed { at, .. }
            | Self::Released { at, .. }
            | Self::Lost { at, .. } => *at,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Acquired { .. } => "acquired",
            Self::Renewed { .. } => "renewed",
            Self::Released { .. } => "released",
            Self::Lost { .. } => "lost",
        }
    }
}

/// A thread-safe recorder of lock events, and the checker of the lock's
/// safety claim (see the [module documentation](self)). Cheap to clone: all
/// clones record into the same history.
///
/// `T` is the fencing token type; it needs only a partial order, in which
/// "not greater" (including incomparable) counts as a violation.
pub struct LockHistory<T = FencingToken> {
    inner: Arc<Mutex<Recorder<LockEvent<T>>>>,
}

impl<T> Clone for LockHistory<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> Default for LockHistory<T> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Recorder::new(DEFAULT_MAX_EVENTS))),
        }
    }
}

impl<T> fmt::Debug for LockHistory<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rec = lock(&self.inner);
        f.debug_struct("LockHistory")
            .field("events", &rec.events.len())
            .field("overflowed", &rec.overflowed)
            .finish()
    }
}

impl<T> LockHistory<T>
where
    T: PartialOrd + Clone + fmt::Debug,
{
    /// An empty history keeping up to [`DEFAULT_MAX_EVENTS`] events.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty history keeping up to `max_events` events.
    pub fn with_max_events(max_events: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Recorder::new(max_events))),
        }
    }

    /// Records any event.
    pub fn record(&self, event: LockEvent<T>) {
        lock(&self.inner).push(event);
    }

    /// Records that `holder` acquired `key` with `fencing_token` at `at`,
    /// guaranteed valid until `valid_until`.
    pub fn acquired(
        &self,
        key: impl Into<String>,
        holder: impl Into<String>,
        fencing_token: T,
        at: Instant,
        valid_until: Instant,
    ) {
        self.record(LockEvent::Acquired {
            key: key.into(),
            holder: holder.into(),
            fencing_token,
            at,
            valid_until,
        });
    }

    /// Records that `holder` renewed `key` at `at` with the new deadline `valid_until`.
    pub fn renewed(
        &self,
        key: impl Into<String>,
        holder: impl Into<String>,
        at: Instant,
        valid_until: Instant,
    ) {
        self.record(LockEvent::Renewed {
            key: key.into(),
            holder: holder.into(),
            at,
            valid_until,
        });
    }

    /// Records that `holder` released `key` at `at`.
    pub fn released(&self, key: impl Into<String>, holder: impl Into<String>, at: Instant) {
        self.record(LockEvent::Released {
            key: key.into(),
            holder: holder.into(),
            at,
        });
    }

    /// Records that `holder` learned at `at` that it lost `key`.
    pub fn lost(&self, key: impl Into<String>, holder: impl Into<String>, at: Instant) {
        self.record(LockEvent::Lost {
            key: key.into(),
            holder: holder.into(),
            at,
        });
    }

    /// The recorded events, in recording order.
    pub fn events(&self) -> Vec<LockEvent<T>> {
        lock(&self.inner).events.clone()
    }

    /// How many events were recorded.
    pub fn len(&self) -> usize {
        lock(&self.inner).events.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the history: `Ok` when no two valid holds of one key overlap
    /// and every key's fencing tokens strictly increase in acquisition
    /// order; otherwise the first violation (see [`violations`](Self::violations)).
    pub fn check(&self) -> Result<(), Violation> {
        self.violations().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every violation in the history: overflow first, then unmatched events,
    /// overlapping holds and non-increasing fencing tokens, each in instant order.
    pub fn violations(&self) -> Vec<Violation> {
        let (events, overflowed, max) = {
            let rec = lock(&self.inner);
            (rec.events.clone(), rec.overflowed, rec.max_events)
        };
        let mut out = Vec::new();
        if overflowed {
            out.push(Violation::HistoryOverflow { max_events: max });
        }
        let Some(origin) = events.iter().map(LockEvent::at).min() else {
            return out;
        };
        let holds = build_holds(&events, origin, &mut out);
        check_overlaps(&holds, origin, &mut out);
        check_fencing(&holds, origin, &mut out);
        out
    }
}

/// A thread-safe recorder of a compare-and-swap counter's operations, and
/// the checker for lost and duplicated increments (see the
/// [module documentation](self)). Cheap to clone.
///
/// ```
/// use testkit::history::CounterHistory;
///
/// let history = CounterHistory::new(0);
/// history.attempt("w1", "op-1");
/// history.attempt("w2", "op-2");
/// history.applied("w1", "op-1", 0, 1);
/// history.applied("w2", "op-2", 0, 1); // read the same value: w1's increment is lost
/// history.record_final(1);
/// assert!(history.check().is_err());
/// ```
#[derive(Clone)]
pub struct CounterHistory {
    inner: Arc<Mutex<CounterRecord>>,
}

impl fmt::Debug for CounterHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rec = lock(&self.inner);
        f.debug_struct("CounterHistory")
            .field("initial", &rec.initial)
            .field("events", &rec.events.events.len())
            .field("final", &rec.final_value)
            .finish()
    }
}

/// One thing a counter writer reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterEvent {
    /// `writer` started operation `op_id` (retries of one operation reuse its id).
    Attempt {
        /// The writer identity.
        writer: String,
        /// The operation id.
        op_id: String,
    },
    /// `writer`'s operation `op_id` was applied: it read `observed_before` and wrote `written`.
    Applied {
        /// The writer identity.
        writer: String,
        /// The operation id.
        op_id: String,
        /// The value the successful compare-and-swap was conditioned on.
        observed_before: u64,
        /// The value it wrote.
        written: u64,
    },
}

impl CounterHistory {
    /// An empty history of a counter that starts at `initial`.
    pub fn new(initial: u64) -> Self {
        Self::with_max_events(initial, DEFAULT_MAX_EVENTS)
    }

    /// Like [`new`](Self::new), keeping up to `max_events` events.
    pub fn with_max_events(initial: u64, max_events: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(CounterRecord {
                initial,
                events: Recorder::new(max_events),
                final_value: None,
            })),
        }
    }

    /// Records that `writer` started (or retried) operation `op_id`.
    pub fn attempt(&self, writer: impl Into<String>, op_id: impl Into<String>) {
        lock(&self.inner).events.push(CounterEvent::Attempt {
            writer: writer.into(),
            op_id: op_id.into(),
        });
    }

    /// Records that `writer`'s operation `op_id` was applied: its
    /// compare-and-swap read `observed_before` and wrote `written`.
    pub fn applied(
        &self,
        writer: impl Into<String>,
        op_id: impl Into<String>,
        observed_before: u64,
        written: u64,
    ) {
        lock(&self.inner).events.push(CounterEvent::Applied {
            writer: writer.into(),
            op_id: op_id.into(),
            observed_before,
            written,
        });
    }

    /// Records the counter's value read after every writer finished.
    pub fn record_final(&self, value: u64) {
        lock(&self.inner).final_value = Some(value);
    }

    /// The recorded events, in recording order.
    pub fn events(&self) -> Vec<CounterEvent> {
        lock(&self.inner).events.events.clone()
    }

    /// How many operations were applied.
    pub fn applied_count(&self) -> usize {
        lock(&self.inner)
            .events
            .events
            .iter()
            .filter(|e| matches!(e, CounterEvent::Applied { .. }))
            .count()
    }

    /// How many attempts were recorded (first tries and retries).
    pub fn attempt_count(&self) -> usize {
        lock(&self.inner)
            .events
            .events
            .iter()
            .filter(|e| matches!(e, CounterEvent::Attempt { .. }))
            .count()
    }

    /// Checks the history: `Ok` when no increment was lost or duplicated;
    /// otherwise the first violation (see [`violations`](Self::violations)).
    pub fn check(&self) -> Result<(), Violation> {
        self.violations().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every violation in the history.
    pub fn violations(&self) -> Vec<Violation> {
        let (initial, events, overflowed, max, final_value) = {
            let rec = lock(&self.inner);
            (
                rec.initial,
                rec.events.events.clone(),
                rec.events.overflowed,
                rec.events.max_events,
                rec.final_value,
            )
        };
        let mut out = Vec::new();
        if overflowed {
            out.push(Violation::HistoryOverflow { max_events: max });
        }
        check_counter(initial, &events, final_value, &mut out);
        out
    }
}

/// What a history check found wrong. Instants are shown as offsets from the
/// history's earliest event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// Two holds of one key were valid at the same time.
    #[error(
        "key {key:?}: {first} and {second} were both valid during {overlap_start:?}..{overlap_end:?}"
    )]
    OverlappingHolds {
        /// The key held twice.
        key: String,
        /// The earlier hold.
        first: Box<HoldSummary>,
        /// The later hold.
        second: Box<HoldSummary>,
        /// Start of the overlap (offset from the first event).
        overlap_start: Duration,
        /// End of the overlap (offset from the first event).
        overlap_end: Duration,
    },
    /// An acquisition's fencing token was not greater than the previous acquisition's.
    #[error("key {key:?}: fencing token did not increase: {earlier} then {later}")]
    FencingTokenNotIncreasing {
        /// The key.
        key: String,
        /// The previous acquisition of the key.
        earlier: Box<HoldSummary>,
        /// The acquisition whose token is not greater.
        later: Box<HoldSummary>,
    },
    /// A renewal, release or loss was recorded for a holder that never acquired the key.
    #[error("key {key:?}: {holder:?} reported {event} at {at:?} without having acquired it")]
    UnmatchedLockEvent {
        /// The key.
        key: String,
        /// The holder.
        holder: String,
        /// `renewed`, `released` or `lost`.
        event: &'static str,
        /// When (offset from the first event).
        at: Duration,
    },
    /// The counter lost increments: its final value is below `initial + applied`.
    #[error(
        "lost increment: final value {final_value} != initial {initial} + {applied} applied operations"
    )]
    FinalValueMismatch {
        /// The counter's initial value.
        initial: u64,
        /// How many operations were applied.
        applied: u64,
        /// The recorded final value.
        final_value: u64,
    },
    /// Two applied operations read the same value, so one overwrote the other.
    #[error(
        "lost increment: {first_writer:?}/{first_op:?} and {second_writer:?}/{second_op:?} both applied on top of {observed_before}"
    )]
    SameObservedValue {
        /// The value both read.
        observed_before: u64,
        /// The first operation's writer.
        first_writer: String,
        /// The first operation's id.
        first_op: String,
        /// The second operation's writer.
        second_writer: String,
        /// The second operation's id.
        second_op: String,
    },
    /// One operation id was applied more than once.
    #[error(
        "duplicated increment: operation {op_id:?} was applied {times} times (writers {writers:?})"
    )]
    DuplicatedOperation {
        /// The operation id.
        op_id: String,
        /// How many times it was applied.
        times: usize,
        /// The writers that applied it, in recording order.
        writers: Vec<String>,
    },
    /// An applied operation did not write `observed_before + 1`.
    #[error(
        "{writer:?}/{op_id:?} read {observed_before} but wrote {written}, not an increment by one"
    )]
    NotAnIncrement {
        /// The writer.
        writer: String,
        /// The operation id.
        op_id: String,
        /// The value read.
        observed_before: u64,
        /// The value written.
        written: u64,
    },
    /// An applied operation read a value that neither the initial value nor any
    /// recorded write produced: some writer is missing from the history.
    #[error("{writer:?}/{op_id:?} read {observed_before}, which no recorded write produced")]
    UnexplainedObservation {
        /// The writer.
        writer: String,
        /// The operation id.
        op_id: String,
        /// The value read.
        observed_before: u64,
    },
    /// An operation was applied without a recorded attempt (a recording mistake).
    #[error("{writer:?}/{op_id:?} was applied without a recorded attempt")]
    UnattemptedOperation {
        /// The writer.
        writer: String,
        /// The operation id.
        op_id: String,
    },
    /// The counter's final value was never recorded.
    #[error("the counter's final value was not recorded")]
    MissingFinalValue,
    /// The history hit its event bound, so it cannot be judged.
    #[error("history exceeded its bound of {max_events} events; raise it or record less")]
    HistoryOverflow {
        /// The bound.
        max_events: usize,
    },
}

impl Violation {
    /// Always `false`: a violation is a fact about a recorded history.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// One hold of a key, as a violation reports it (instants as offsets from
/// the history's earliest event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldSummary {
    /// The holder.
    pub holder: String,
    /// The fencing token, rendered with `Debug`.
    pub fencing_token: String,
    /// When the hold was acquired.
    pub acquired_at: Duration,
    /// The latest guaranteed deadline (after renewals).
    pub valid_until: Duration,
    /// When and how the hold ended before its deadline, if it did.
    pub ended: Option<(Duration, &'static str)>,
}

impl fmt::Display for HoldSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hold by {:?} with token {} acquired at {:?} valid until {:?}",
            self.holder, self.fencing_token, self.acquired_at, self.valid_until
        )?;
        if let Some((at, how)) = self.ended {
            write!(f, " ({how} at {at:?})")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Helpers.

struct Recorder<E> {
    events: Vec<E>,
    max_events: usize,
    overflowed: bool,
}

impl<E> Recorder<E> {
    fn new(max_events: usize) -> Self {
        Self {
            events: Vec::new(),
            max_events,
            overflowed: false,
        }
    }

    fn push(&mut self, event: E) {
        if self.events.len() < self.max_events {
            self.events.push(event);
        } else {
            self.overflowed = true;
        }
    }
}

struct CounterRecord {
    initial: u64,
    events: Recorder<CounterEvent>,
    final_value: Option<u64>,
}

/// Locks a recorder; a poisoned mutex (a test panicked while recording)
/// still holds a consistent event list, so it is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One acquisition of a key and what happened to it.
struct Hold<'a, T> {
    key: &'a str,
    holder: &'a str,
    token: &'a T,
    acquired_at: Instant,
    /// Validity intervals granted by the acquisition and renewals, before clipping.
    grants: Vec<(Instant, Instant)>,
    ended: Option<(Instant, &'static str)>,
}

impl<T: fmt::Debug> Hold<'_, T> {
    /// Ends the hold at `at` unless it already ended: the earliest end wins.
    fn end(&mut self, at: Instant, how: &'static str) {
        if self.ended.is_none() {
            self.ended = Some((at, how));
        }
    }

    /// The merged, half-open intervals during which the hold was valid.
    fn valid_intervals(&self) -> Vec<(Instant, Instant)> {
        let mut spans: Vec<(Instant, Instant)> = self
            .grants
            .iter()
            .map(|&(start, end)| match self.ended {
                Some((at, _)) => (start, end.min(at)),
                None => (start, end),
            })
            .filter(|(start, end)| start < end)
            .collect();
        spans.sort();
        let mut merged: Vec<(Instant, Instant)> = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }

    fn summary(&self, origin: Instant) -> Box<HoldSummary> {
        let valid_until = self
            .grants
            .iter()
            .map(|g| g.1)
            .max()
            .unwrap_or(self.acquired_at);
        Box::new(HoldSummary {
            holder: self.holder.to_owned(),
            fencing_token: format!("{:?}", self.token),
            acquired_at: offset(origin, self.acquired_at),
            valid_until: offset(origin, valid_until),
            ended: self.ended.map(|(at, how)| (offset(origin, at), how)),
        })
    }
}

fn offset(origin: Instant, at: Instant) -> Duration {
    at.saturating_duration_since(origin)
}

/// Replays the events in instant order (ties in recording order) into holds,
/// which therefore come out in acquisition order.
fn build_holds<'a, T: fmt::Debug>(
    events: &'a [LockEvent<T>],
    origin: Instant,
    out: &mut Vec<Violation>,
) -> Vec<Hold<'a, T>> {
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| (events[i].at(), i));

    let mut holds: Vec<Hold<'a, T>> = Vec::new();
    // (key, holder) -> index of that holder's latest hold of the key.
    let mut latest: HashMap<(&str, &str), usize> = HashMap::new();
    for i in order {
        let event = &events[i];
        let id = (event.key(), event.holder());
        match event {
            LockEvent::Acquired {
                fencing_token,
                at,
                valid_until,
                ..
            } => {
                // A holder acquiring again without releasing starts a new hold;
                // the old one ends here rather than overlapping with itself.
                if let Some(&h) = latest.get(&id) {
                    holds[h].end(*at, "re-acquired");
                }
                latest.insert(id, holds.len());
                holds.push(Hold {
                    key: event.key(),
                    holder: event.holder(),
                    token: fencing_token,
                    acquired_at: *at,
                    grants: vec![(*at, *valid_until)],
                    ended: None,
                });
            }
            LockEvent::Renewed {
                at, valid_until, ..
            } => match latest.get(&id) {
                // A renewal after the hold ended (released or lost) grants nothing.
                Some(&h) if holds[h].ended.is_none() => holds[h].grants.push((*at, *valid_until)),
                Some(_) => {}
                None => out.push(unmatched(event, origin)),
            },
            LockEvent::Released { at, .. } | LockEvent::Lost { at, .. } => {
                match latest.get(&id) {
                    // Only the first end counts: a release after a loss is routine.
                    Some(&h) => holds[h].end(*at, event.kind()),
                    None => out.push(unmatched(event, origin)),
                }
            }
        }
    }
    holds
}

fn unmatched<T>(event: &LockEvent<T>, origin: Instant) -> Violation {
    Violation::UnmatchedLockEvent {
        key: event.key().to_owned(),
        holder: event.holder().to_owned(),
        event: event.kind(),
        at: offset(origin, event.at()),
    }
}

/// Sweeps each key's validity intervals in start order, remembering the two
/// holds whose intervals reach furthest, so every interval is compared with
/// the furthest-reaching *other* hold in O(n log n) overall.
fn check_overlaps<T: fmt::Debug>(holds: &[Hold<'_, T>], origin: Instant, out: &mut Vec<Violation>) {
    let mut by_key: BTreeMap<&str, Vec<(Instant, Instant, usize)>> = BTreeMap::new();
    for (idx, hold) in holds.iter().enumerate() {
        for (start, end) in hold.valid_intervals() {
            by_key.entry(hold.key).or_default().push((start, end, idx));
        }
    }
    for (key, mut spans) in by_key {
        spans.sort();
        let mut reach = Reach::default();
        for (start, end, idx) in spans {
            if let Some((other_end, other_idx)) = reach.furthest_other_than(idx)
                && start < other_end
            {
                out.push(Violation::OverlappingHolds {
                    key: key.to_owned(),
                    first: holds[other_idx].summary(origin),
                    second: holds[idx].summary(origin),
                    overlap_start: offset(origin, start),
                    overlap_end: offset(origin, end.min(other_end)),
                });
            }
            reach.extend(end, idx);
        }
    }
}

/// The two furthest-reaching interval ends seen so far, from distinct holds,
/// furthest first.
#[derive(Default)]
struct Reach([Option<(Instant, usize)>; 2]);

impl Reach {
    fn furthest_other_than(&self, idx: usize) -> Option<(Instant, usize)> {
        self.0.iter().flatten().copied().find(|&(_, i)| i != idx)
    }

    fn extend(&mut self, end: Instant, idx: usize) {
        let slots = &mut self.0;
        if let Some(slot) = slots.iter_mut().flatten().find(|(_, i)| *i == idx) {
            slot.0 = slot.0.max(end);
        } else if slots[1].is_none_or(|(e, _)| end > e) {
            slots[1] = Some((end, idx));
        }
        let second_is_further = match (slots[0], slots[1]) {
            (None, Some(_)) => true,
            (Some((a, _)), Some((b, _))) => b > a,
            _ => false,
        };
        if second_is_further {
            slots.swap(0, 1);
        }
    }
}

/// Each acquisition's token must be greater than the previous acquisition's
/// of the same key (transitivity covers all earlier ones).
fn check_fencing<T: PartialOrd + fmt::Debug>(
    holds: &[Hold<'_, T>],
    origin: Instant,
    out: &mut Vec<Violation>,
) {
    let mut previous: HashMap<&str, usize> = HashMap::new();
    for (idx, hold) in holds.iter().enumerate() {
        if let Some(&p) = previous.get(hold.key)
            && hold.token.partial_cmp(holds[p].token) != Some(Ordering::Greater)
        {
            out.push(Violation::FencingTokenNotIncreasing {
                key: hold.key.to_owned(),
                earlier: holds[p].summary(origin),
                later: hold.summary(origin),
            });
        }
        previous.insert(hold.key, idx);
    }
}

fn check_counter(
    initial: u64,
    events: &[CounterEvent],
    final_value: Option<u64>,
    out: &mut Vec<Violation>,
) {
    let mut attempted: HashSet<&str> = HashSet::new();
    // op_id -> writers that applied it.
    let mut applied_by_op: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    // observed_before -> first (writer, op) applied on top of it.
    let mut by_observed: HashMap<u64, (&str, &str)> = HashMap::new();
    let mut written: HashSet<u64> = HashSet::new();
    let mut applied = 0u64;
    for event in events {
        match event {
            CounterEvent::Attempt { op_id, .. } => {
                attempted.insert(op_id);
            }
            CounterEvent::Applied {
                writer,
                op_id,
                observed_before,
                written: w,
            } => {
                applied += 1;
                written.insert(*w);
                applied_by_op.entry(op_id).or_default().push(writer);
                if !attempted.contains(op_id.as_str()) {
                    out.push(Violation::UnattemptedOperation {
                        writer: writer.clone(),
                        op_id: op_id.clone(),
                    });
                }
                if observed_before.checked_add(1) != Some(*w) {
                    out.push(Violation::NotAnIncrement {
                        writer: writer.clone(),
                        op_id: op_id.clone(),
                        observed_before: *observed_before,
                        written: *w,
                    });
                }
                match by_observed.get(observed_before) {
                    Some(&(first_writer, first_op)) => out.push(Violation::SameObservedValue {
                        observed_before: *observed_before,
                        first_writer: first_writer.to_owned(),
                        first_op: first_op.to_owned(),
                        second_writer: writer.clone(),
                        second_op: op_id.clone(),
                    }),
                    None => {
                        by_observed.insert(*observed_before, (writer, op_id));
                    }
                }
            }
        }
    }
    for event in events {
        if let CounterEvent::Applied {
            writer,
            op_id,
            observed_before,
            ..
        } = event
            && *observed_before != initial
            && !written.contains(observed_before)
        {
            out.push(Violation::UnexplainedObservation {
                writer: writer.clone(),
                op_id: op_id.clone(),
                observed_before: *observed_before,
            });
        }
    }
    for (op_id, writers) in applied_by_op {
        if writers.len() > 1 {
            out.push(Violation::DuplicatedOperation {
                op_id: op_id.to_owned(),
                times: writers.len(),
                writers: writers.into_iter().map(str::to_owned).collect(),
            });
        }
    }
    match final_value {
        None => out.push(Violation::MissingFinalValue),
        Some(final_value) if Some(final_value) != initial.checked_add(applied) => {
            out.push(Violation::FinalValueMismatch {
                initial,
                applied,
                final_value,
            });
        }
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn token(t: u64) -> FencingToken {
        FencingToken::new("uid-1", jiff::Timestamp::UNIX_EPOCH, t)
    }

    #[test]
    fn handoff_after_release_passes() {
        let h = LockHistory::new();
        let t0 = Instant::now();
        h.acquired("k", "a", token(1), t0, t0 + LEASE);
        h.released("k", "a", t0 + secs(2));
        h.acquired("k", "b", token(2), t0 + secs(2), t0 + secs(2) + LEASE);
        h.released("k", "b", t0 + secs(3));
        assert_eq!(h.check(), Ok(()));
    }

    #[test]
    fn takeover_exactly_at_the_deadline_passes() {
        let h = LockHistory::new();
        let t0 = Instant::now();
        h.acquired("k", "a", token(1), t0, t0 + LEASE);
        // a is paused and never reports anything; b takes over at a's deadline.
        h.acquired("k", "b", token(2), t0 + LEASE, t0 + LEASE * 2);
        assert_eq!(h.check(), Ok(()));
    }

    #[test]
    fn paused_holder_acting_late_is_outside_its_valid_hold() {
        let h = LockHistory::new();
        let t0 = Instant::now();
        h.acquired("k", "a", token(1), t0, t0 + LEASE);
        h.acquired("k", "b", token(2), t0 + secs(20), t0 + secs(35));
        // a wakes up after b took over and only then learns it lost the lock.
        h.lost("k", "a", t0 + secs(25));
        h.released("k", "a", t0 + secs(26));
        assert_eq!(h.check(), Ok(()));
    }

    #[test]
    fn second_holder_before_the_deadline_is_an_overlap() {
        let h = LockHistory::new();
        let t0 = Instant::now();
        h.acquired("k", "a", token(1), t0, t0 + LEASE);
        h.acquired("k", "b", token(2), t0 + secs(10), t0 + secs(25));
        let v = h.violations();
        assert_eq!(v.len(), 1, "{v:?}");
        match &v[0] {
            Violation::OverlappingHolds {
                key,
                first,
                second,
                overlap_start,
                overlap_end,
            } => {
                assert_eq!(key, "k");
                assert_eq!(first.holder, "a");
                assert_eq!(second.holder, "b");
                assert_eq!(*overlap_start, secs(10));
                assert_eq!(*overlap_end, secs(15));
            }
            other => panic!("unexpected violation {other:?}"),
        }
        let text = v[0].to_string();
        assert!(text.contains("\"a\"") && text.contains("\"b\""), "{text}");
    }

    #[test]
    fn renewal_extends_validity_so_an_early_takeover_overlaps() {
        let h = LockHistory::new();
        let t0 = Instant::now();
        h.acquired("k", "a", token(1), t0, t0 + LEASE);
        h.renewed("k", "a", t0 + secs(5), t0 + secs(20));
        h.acquired("k", "b", token(2), t0 + secs(16), t0 + secs(31));
        let v = h.violations();
        assert!(
            matches!(&v[..], [Violation::OverlappingHolds { overlap_start, overlap_end, .. }]
                if *overlap_start == secs(16) && *overlap_end == secs(20)),
            "{v:?}"
        );
    }

    #[test]
    fn renewal_after_the_deadline_does_not_cover_the_gap() {
        let h = LockHistory::new();
        let t0 = Instant::now();
        h.acquired("k", "a", token(1), t0, t0 + secs(10));
        h.acquired("k", "b", token(2), t0 + secs(11), t0 + secs(12));
        h.released("k", "b", t0 + secs(12));
        // a's renewal succeeds later (nobody took the lease in between from its view).
        h.renewed("k", "a", t0 + secs(13), t0 + secs(23));
        assert_eq!(h.check(), Ok(()));
    }

    #[test]
    fn loss_ends_validity_before_the_deadline() {
        let h = LockHistory::new();
        let t0 = Instant::now();
        h.acquired("k", "a", token(1), t0, t0 + LEASE);
        h.lost("k", "a", t0 + secs(4));
        h.acquired("k", "b", token(2), t0 + secs(5), t0 + secs(20));
        assert_eq!(h.check(), Ok(()));
    }

    #[test]
    fn different_keys_never_conflict() {
        let h = LockHistory::new();
        let t0 = Instant::now();
        h.acquired("k1", "a", token(1), t0, t0 + LEASE);
        h.acquired("k2", "b", token_of("uid-2", 0, 1), t0, t0 + LEASE);
        assert_eq!(h.check(), Ok(()));
    }

    #[test]
    fn equal_fencing_token_on_takeover_is_a_violation() {
        let h = LockHistory::new();
        let t0 = Instant::now();
        h.acquired("k", "a", token(3), t0, t0 + LEASE);
        h.released("k", "a", t0 + secs(1));
        h.acquired("k", "b", token(3), t0 + secs(2), t0 + secs(17));
        let v = h.violations();
        assert!(
            matches!(&v[..], [Violation::FencingTokenNotIncreasing { earlier, later, .. }]
                if earlier.holder == "a" && later.holder == "b"),
            "{v:?}"
        );
    }

    #[test]
    fn fencing_tokens_are_compared_in_acquisition_order_not_recording_order() {
        let h = LockHistory::new();
        let t0 = Instant::now();
        // Recorded out of order by two threads; instants say b came second.
        h.acquired("k", "b", token(2), t0 + secs(20), t0 + secs(35));
        h.acquired("k", "a", token(1), t0, t0 + LEASE);
        assert_eq!(h.check(), Ok(()));
    }

    fn token_of(uid: &str, created: i64, transitions: u64) -> FencingToken {
        FencingToken::new(
            uid,
            jiff::Timestamp::from_second(created).unwrap(),
            transitions,
        )
    }

    #[test]
    fn tokens_of_a_lease_recreated_in_the_same_second_are_a_violation() {
        let h = LockHistory::new();
        let t0 = Instant::now();
        h.acquired("k", "a", token_of("uid-1", 0, 7), t0, t0 + LEASE);
        h.released("k", "a", t0 + secs(1));
        h.acquired("k", "b", token_of("uid-2", 0, 8), t0 + secs(2), t0 + LEASE);
        assert!(matches!(
            h.check(),
            Err(Violation::FencingTokenNotIncreasing { .. })
        ));
    }

    #[test]
    fn tokens_of_a_lease_recreated_later_increase_and_of_an_older_one_do_not() {
        let h = LockHistory::new();
        let t0 = Instant::now();
        h.acquired("k", "a", token_of("uid-1", 0, 7), t0, t0 + LEASE);
        h.released("k", "a", t0 + secs(1));
        h.acquired("k", "b", token_of("uid-2", 60, 0), t0 + secs(2), t0 + LEASE);
        assert_eq!(h.check(), Ok(()));
        h.released("k", "b", t0 + secs(3));
        h.acquired("k", "c", token_of("uid-1", 0, 8), t0 + secs(4), t0 + LEASE);
        assert!(matches!(
            h.check(),
            Err(Violation::FencingTokenNotIncreasing { .. })
        ));
    }

    #[test]
    fn plain_integer_tokens_work() {
        let h: LockHistory<u64> = LockHistory::new();
        let t0 = Instant::now();
        h.acquired("k", "a", 1, t0, t0 + LEASE);
        h.released("k", "a", t0 + secs(1));
        h.acquired("k", "b", 2, t0 + secs(1), t0 + LEASE);
        assert_eq!(h.check(), Ok(()));
        h.acquired("k", "c", 1, t0 + LEASE, t0 + LEASE * 2);
        assert!(matches!(
            h.check(),
            Err(Violation::FencingTokenNotIncreasing { .. })
        ));
    }

    #[test]
    fn release_without_acquire_is_reported() {
        let h: LockHistory = LockHistory::new();
        let t0 = Instant::now();
        h.released("k", "ghost", t0);
        assert!(matches!(
            h.check(),
            Err(Violation::UnmatchedLockEvent {
                event: "released",
                ..
            })
        ));
    }

    #[test]
    fn overlap_is_found_behind_a_long_hold_of_the_same_holder() {
        // a holds [0,100) via renewals; b holds [10,20); c overlaps a only.
        let h: LockHistory<u64> = LockHistory::new();
        let t0 = Instant::now();
        h.acquired("k", "a", 1, t0, t0 + secs(50));
        h.renewed("k", "a", t0 + secs(40), t0 + secs(100));
        h.acquired("k", "b", 2, t0 + secs(10), t0 + secs(20));
        h.acquired("k", "c", 3, t0 + secs(60), t0 + secs(70));
        let v = h.violations();
        let pairs: Vec<(String, String)> = v
            .iter()
            .filter_map(|v| match v {
                Violation::OverlappingHolds { first, second, .. } => {
                    Some((first.holder.clone(), second.holder.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            pairs,
            vec![("a".into(), "b".into()), ("a".into(), "c".into())]
        );
    }

    #[test]
    fn overflow_fails_the_check() {
        let h: LockHistory<u64> = LockHistory::with_max_events(1);
        let t0 = Instant::now();
        h.acquired("k", "a", 1, t0, t0 + LEASE);
        h.released("k", "a", t0 + secs(1));
        assert_eq!(h.len(), 1);
        assert_eq!(h.check(), Err(Violation::HistoryOverflow { max_events: 1 }));
    }

    #[test]
    fn serial_increments_pass() {
        let c = CounterHistory::new(5);
        for i in 0..3u64 {
            let op = format!("op-{i}");
            c.attempt("w", &op);
            c.applied("w", &op, 5 + i, 6 + i);
        }
        c.record_final(8);
        assert_eq!(c.check(), Ok(()));
    }

    #[test]
    fn retried_attempts_that_apply_once_pass() {
        let c = CounterHistory::new(0);
        c.attempt("w1", "op-1");
        c.attempt("w2", "op-2");
        c.applied("w2", "op-2", 0, 1);
        c.attempt("w1", "op-1"); // conflict, retry with the same op id
        c.applied("w1", "op-1", 1, 2);
        c.record_final(2);
        assert_eq!(c.check(), Ok(()));
        assert_eq!(c.attempt_count(), 3);
        assert_eq!(c.applied_count(), 2);
    }

    #[test]
    fn two_writes_on_the_same_read_lose_an_increment() {
        let c = CounterHistory::new(0);
        c.attempt("w1", "op-1");
        c.attempt("w2", "op-2");
        c.applied("w1", "op-1", 0, 1);
        c.applied("w2", "op-2", 0, 1);
        c.record_final(1);
        let v = c.violations();
        assert!(v.contains(&Violation::SameObservedValue {
            observed_before: 0,
            first_writer: "w1".into(),
            first_op: "op-1".into(),
            second_writer: "w2".into(),
            second_op: "op-2".into(),
        }));
        assert!(v.contains(&Violation::FinalValueMismatch {
            initial: 0,
            applied: 2,
            final_value: 1
        }));
    }

    #[test]
    fn final_value_below_the_applied_count_is_a_lost_increment() {
        let c = CounterHistory::new(0);
        c.attempt("w", "op-1");
        c.applied("w", "op-1", 0, 1);
        c.record_final(0);
        assert!(matches!(
            c.check(),
            Err(Violation::FinalValueMismatch { .. })
        ));
    }

    #[test]
    fn one_operation_applied_twice_is_a_duplicated_increment() {
        let c = CounterHistory::new(0);
        c.attempt("w", "op-1");
        c.applied("w", "op-1", 0, 1);
        c.attempt("w", "op-1"); // blind retry of a write that had succeeded
        c.applied("w", "op-1", 1, 2);
        c.record_final(2);
        assert_eq!(
            c.check(),
            Err(Violation::DuplicatedOperation {
                op_id: "op-1".into(),
                times: 2,
                writers: vec!["w".into(), "w".into()],
            })
        );
    }

    #[test]
    fn a_read_no_write_explains_means_a_missing_writer() {
        let c = CounterHistory::new(0);
        c.attempt("w", "op-1");
        c.applied("w", "op-1", 3, 4);
        c.record_final(4);
        let v = c.violations();
        assert!(
            v.iter().any(|v| matches!(
                v,
                Violation::UnexplainedObservation {
                    observed_before: 3,
                    ..
                }
            )),
            "{v:?}"
        );
    }

    #[test]
    fn write_that_is_not_plus_one_is_reported() {
        let c = CounterHistory::new(0);
        c.attempt("w", "op-1");
        c.applied("w", "op-1", 0, 2);
        c.record_final(1);
        assert!(
            c.violations()
                .iter()
                .any(|v| matches!(v, Violation::NotAnIncrement { written: 2, .. }))
        );
    }

    #[test]
    fn missing_final_value_and_unattempted_ops_are_reported() {
        let c = CounterHistory::new(0);
        c.applied("w", "op-1", 0, 1);
        let v = c.violations();
        assert!(v.contains(&Violation::MissingFinalValue), "{v:?}");
        assert!(
            v.iter()
                .any(|v| matches!(v, Violation::UnattemptedOperation { .. })),
            "{v:?}"
        );
    }
}
