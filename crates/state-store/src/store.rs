//! `StateStore`: read-modify-write of task state that never loses an update.
//!
//! The rule it keeps: every write carries the resourceVersion it read. On 409
//! the closure is re-applied to a fresh read; a write that failed in transit is
//! judged by re-reading (every write records its id in the document), so an
//! update is applied exactly once or reported as unknown — never twice, never
//! silently dropped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use resilience::{Backoff, BackoffPolicy};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::backend::{StateBackend, StoredDocument};
use crate::clock::Clock;
use crate::codec::{self, SchemaOrigin, SizeLimits};
use crate::journal::{FencingToken, OperationJournal, Step, StepStatus};
use crate::metrics::{StateStoreMetrics, error_label};
use crate::naming::{
    LABEL_TASK_ID, state_name, state_selector, validate_selector, validate_task_id,
};
use crate::schema::{
    CancellationRecord, DeliveryRecorded, FeedbackEntry, MAX_APPLIED_WRITES, RemediationState,
    SCHEMA_VERSION, Supersession, TaskStatus,
};
use crate::{Error, Result};

/// Tuning of a [`StateStore`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Most iterations a task may run ([`StateStore::increment_iteration`]).
    pub max_iterations: u32,
    /// Most read-modify-write attempts one update makes.
    pub max_attempts: u32,
    /// Delays between attempts (transient failures, and conflicts from the
    /// second one in an update on: the first is re-read at once).
    pub backoff: BackoffPolicy,
    /// Longest server-requested wait (Retry-After) honoured between attempts.
    pub max_retry_after: Duration,
    /// Longest wait for one API call; a call that takes longer counts as a
    /// transport failure (for a write: outcome unknown, settled by re-reading).
    pub call_timeout: Duration,
    /// Longest wait for a whole LIST ([`StateStore::list`]), every page
    /// included: thousands of states take several pages.
    pub list_timeout: Duration,
    /// Document size thresholds.
    pub size_limits: SizeLimits,
}

impl Default for StoreConfig {
    /// 10 iterations; 20 attempts with 10 ms → 1 s backoff and ±50 % jitter,
    /// a first conflict re-read at once.
    ///
    /// Why: a conflict means another writer just succeeded, so retrying soon is
    /// right, and the first time at once: with two writers (the common case: a
    /// push and its `pull_request` event, a delivery and a saga's journal) the
    /// re-read wins, where a pause cost 5–15 ms on the path to a cancellation.
    /// From the second conflict on, wide jitter spreads writers that collided
    /// together. 20 attempts cover ~15 s of contention or a short API server
    /// hiccup before an update gives up with a clear error.
    fn default() -> Self {
        Self {
            max_iterations: 10,
            max_attempts: 20,
            backoff: BackoffPolicy {
                initial: Duration::from_millis(10),
                multiplier: 2.0,
                max: Duration::from_secs(1),
                jitter: 0.5,
                max_attempts: None,
            },
            max_retry_after: Duration::from_secs(10),
            // An API server answers a ConfigMap call in milliseconds; 10 s means it is
            // not going to, and the update loop should decide what to do next.
            call_timeout: Duration::from_secs(10),
            // 10 000 states are 20 pages of 500: a minute covers a slow API server.
            list_timeout: Duration::from_secs(60),
            size_limits: SizeLimits::default(),
        }
    }
}

impl StoreConfig {
    /// Rejects values that make no sense, with a message naming the field.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::Config(m));
        if self.max_iterations == 0 {
            return fail("max_iterations must be at least 1".into());
        }
        if self.call_timeout.is_zero() || self.list_timeout.is_zero() {
            return fail("call_timeout and list_timeout must be greater than zero".into());
        }
        if self.max_attempts == 0 {
            return fail("max_attempts must be at least 1".into());
        }
        if let Err(e) = self.backoff.validate() {
            return fail(format!("backoff: {e}"));
        }
        let limits = &self.size_limits;
        if limits.max_document > 1024 * 1024 {
            return fail(format!(
                "size_limits.max_document {} is over the 1 MiB a ConfigMap can hold",
                limits.max_document
            ));
        }
        if limits.compact_above == 0 || limits.compact_above > limits.max_document {
            return fail(format!(
                "size_limits.compact_above {} must be in 1..=max_document ({})",
                limits.compact_above, limits.max_document
            ));
        }
        Ok(())
    }
}

/// A state as read, with the version a conditional write or delete must name.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The state (migrated or rebuilt if `origin` says so).
    pub state: RemediationState,
    /// The document's resourceVersion.
    pub resource_version: String,
    /// How the state was obtained from the stored document.
    pub origin: SchemaOrigin,
    /// The stored document it came from: what a write on top of this
    /// snapshot ([`StateStore::update_on`]) starts from without a read.
    stored: Option<StoredDocument>,
}

/// Annotations the store writes itself: never set through
/// [`StateStore::set_annotation`].
const OWN_ANNOTATIONS: [&str; 4] = [
    crate::naming::ANNOTATION_SCHEMA_VERSION,
    crate::naming::ANNOTATION_LAST_UPDATE,
    crate::naming::ANNOTATION_STATUS,
    crate::naming::ANNOTATION_OPERATION_ACTIVE,
];

/// What [`StateStore::recover_state`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateRecovery {
    /// There was no state: a fresh `Initialized` one was created.
    pub created: bool,
    /// The schema version the state was migrated from.
    pub migrated_from: Option<String>,
    /// The payload was unreadable, with why: rebuilt from what survived,
    /// the raw payload quarantined.
    pub rebuilt: Option<String>,
    /// The repairs made (also recorded in the state).
    pub repairs: Vec<crate::RepairRecord>,
    /// Whether anything was written (`false`: the state needed nothing).
    pub written: bool,
}

/// One page of [`StateStore::list_page`].
#[derive(Clone, Debug, PartialEq)]
pub struct StatePage {
    /// The states of this page.
    pub states: Vec<Snapshot>,
    /// Where the next page starts; `None` on the last page.
    pub continue_token: Option<String>,
}

impl Snapshot {
    /// Annotation `key` of the stored document (a mark such as the recovery
    /// reconciler's `needs-intervention`).
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.stored
            .as_ref()?
            .document
            .annotations
            .get(key)
            .map(String::as_str)
    }
}

/// Where an update's first attempt starts.
enum Seed<'a> {
    /// Read the document first (the usual update).
    Read,
    /// The caller read it and found no state: create it.
    Absent,
    /// The caller holds this document: write on top of it, conditional on
    /// its version (a conflict re-reads as usual).
    Held(&'a StoredDocument),
}

/// Task state over a [`StateBackend`]. Cheap to clone; clones share metrics.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn StateBackend>,
    config: StoreConfig,
    clock: Clock,
    metrics: StateStoreMetrics,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// A store with the default configuration and the system clock.
    pub fn new(backend: impl StateBackend + 'static) -> Self {
        Self::with_config(backend, StoreConfig::default())
    }

    /// A store with `config` and the system clock.
    pub fn with_config(backend: impl StateBackend + 'static, config: StoreConfig) -> Self {
        Self::build(Arc::new(backend), config, Clock::system())
    }

    /// A store with `config` and `clock` (tests drive time through the clock).
    pub fn with_clock(
        backend: impl StateBackend + 'static,
        config: StoreConfig,
        clock: Clock,
    ) -> Self {
        Self::build(Arc::new(backend), config, clock)
    }

    fn build(backend: Arc<dyn StateBackend>, config: StoreConfig, clock: Clock) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                config,
                clock,
                metrics: StateStoreMetrics::default(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The metrics (shared by every clone).
    pub fn metrics(&self) -> &StateStoreMetrics {
        &self.inner.metrics
    }

    /// Registers the store's metrics.
    pub fn register(&self, registry: &mut Registry) {
        self.inner.metrics.register(registry);
    }

    pub(crate) fn backend(&self) -> &Arc<dyn StateBackend> {
        &self.inner.backend
    }

    /// The clock the store stamps states with.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The state of `task_id`, or `None` if it has none.
    ///
    /// A document of a newer schema, or valid JSON this build cannot decode,
    /// is returned best-effort ([`SchemaOrigin::Newer`],
    /// [`SchemaOrigin::Undecodable`]); an unreadable one is returned rebuilt
    /// ([`SchemaOrigin::Rebuilt`]) without writing anything.
    pub async fn get(&self, task_id: &str) -> Result<Option<Snapshot>> {
        let started = Instant::now();
        let result = self.get_inner(task_id).await;
        self.observe("get", started, result.as_ref().err());
        result
    }

    /// Applies `f` to the state of `task_id` and writes it back with
    /// compare-and-swap, creating the state if absent.
    ///
    /// `f` may run several times (once per attempt), each time on a fresh copy
    /// of the latest stored state; only the run whose write succeeds counts and
    /// its value is returned. If `f` returns an error, nothing is written and
    /// the error is returned. If `f` changes nothing, nothing is written.
    ///
    /// `f` should depend only on the state it is given: after a write whose
    /// answer was lost, the store tells whether it was applied by re-reading,
    /// and a closure that answers differently the second time leaves only
    /// `OutcomeUnknown` to report.
    ///
    /// Errors: the closure's own; `InvalidTaskId`; `UnsupportedVersion` for a
    /// document of a newer schema; `Undecodable` for valid JSON this build
    /// cannot decode (both are read-only for this build); `Invalid` if the state breaks an invariant
    /// before or after `f`; `TooLarge`; `RetriesExhausted` after
    /// [`StoreConfig::max_attempts`]; `OutcomeUnknown` if a write failed in
    /// transit and no re-read could tell whether it was applied (never
    /// transient: repeating the update could apply it twice).
    ///
    /// Cancellation: dropping the returned future between a write being sent
    /// and its answer leaves that write's outcome unknown to the caller, as
    /// with any request; the state itself is never left half-written.
    pub async fn update<T, E, F>(&self, task_id: &str, f: F) -> Result<T, E>
    where
        F: FnMut(&mut RemediationState) -> Result<T, E>,
        E: From<Error>,
    {
        self.update_with(task_id, None, f).await
    }

    /// Like [`update`](Self::update), for a writer holding a lock whose
    /// fencing token is `token`: fails with `FencingTokenRefused` (nothing
    /// written) if a newer token of the same lock was already seen, and
    /// records `token` as the highest otherwise. The check and the write are
    /// one compare-and-swap, so a newer holder's write in between is seen.
    ///
    /// Use one lock key per task for every fenced write to it: the tokens of
    /// different keys' Leases are ordered only by creation time, which says
    /// nothing about who holds what (see [`FencingToken::admit`] for the
    /// rule). Unfenced writes ([`update`](Self::update)) are not checked;
    /// the journal's steps are fenced with the journal's own token.
    pub async fn update_fenced<T, E, F>(
        &self,
        task_id: &str,
        token: &FencingToken,
        f: F,
    ) -> Result<T, E>
    where
        F: FnMut(&mut RemediationState) -> Result<T, E>,
        E: From<Error>,
    {
        self.update_with(task_id, Some(token), f).await
    }

    /// [`update`](Self::update) (or, with a `token`,
    /// [`update_fenced`](Self::update_fenced)) on top of the state the
    /// caller last read or wrote: the first attempt writes conditional on
    /// `known`'s version without reading again — one API call when nothing
    /// changed meanwhile — and a conflict re-reads as `update` does. `known`
    /// is `None` when the caller found no state (the first attempt creates
    /// it). On success `known` becomes the state as written (or as read, if
    /// nothing needed writing), ready for the next call; on failure it is
    /// left as it was.
    ///
    /// What a saga holding the task's lock uses to chain its journal steps
    /// at one write each.
    pub async fn update_on<T, E, F>(
        &self,
        task_id: &str,
        known: &mut Option<Snapshot>,
        token: Option<&FencingToken>,
        mut f: F,
    ) -> Result<T, E>
    where
        F: FnMut(&mut RemediationState) -> Result<T, E>,
        E: From<Error>,
    {
        let seed = match known.as_ref() {
            None => Seed::Absent,
            Some(Snapshot {
                stored: Some(doc), ..
            }) => Seed::Held(doc),
            Some(_) => Seed::Read,
        };
        let (value, written) = self.update_seeded(task_id, token, seed, &mut f).await?;
        if written.is_some() {
            *known = written;
        }
        Ok(value)
    }

    /// Deletes the state of `task_id` if its version is still
    /// `resource_version`. Returns `false` if it was already gone; `Conflict`
    /// if it changed since that version was read.
    pub async fn delete(&self, task_id: &str, resource_version: &str) -> Result<bool> {
        let started = Instant::now();
        let result = async {
            let name = state_name(task_id)?;
            match self
                .bounded(self.inner.backend.delete(&name, resource_version))
                .await
            {
                Ok(()) => Ok(true),
                Err(Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        }
        .await;
        self.observe("delete", started, result.as_ref().err());
        result
    }

    /// Every task state (selected by the store's labels), in one LIST call.
    /// Documents without a valid task-id label are skipped with a warning.
    pub async fn list(&self) -> Result<Vec<Snapshot>> {
        self.list_matching(&BTreeMap::new()).await
    }

    /// The task states whose labels also include all of `labels`.
    ///
    /// `labels` narrows the store's own selector, never replaces it: a pair
    /// naming one of the store's label keys with another value is
    /// `InvalidSelector`.
    pub async fn list_matching(&self, labels: &BTreeMap<String, String>) -> Result<Vec<Snapshot>> {
        let started = Instant::now();
        let mut selector = state_selector();
        let overriding = labels
            .iter()
            .find(|(k, v)| selector.get(*k).is_some_and(|own| own != *v));
        let checked = match overriding {
            Some((key, _)) => Err(Error::InvalidSelector {
                reason: format!("label {key:?} is the store's own and cannot be changed"),
            }),
            None => {
                selector.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                validate_selector(&selector)
            }
        };
        let result = match checked {
            Ok(()) => self
                .bounded_by(
                    self.inner.config.list_timeout,
                    self.inner.backend.list(&selector),
                )
                .await
                .map(|docs| {
                    docs.into_iter()
                        .filter_map(|doc| self.decode_listed(doc))
                        .collect()
                }),
            Err(e) => Err(e),
        };
        self.observe("list", started, result.as_ref().err());
        result
    }

    /// Sets (`Some`) or removes (`None`) annotation `key` on the document of
    /// `task_id`, leaving its payload as it is: a compare-and-swap replace,
    /// re-read and retried on conflict (up to
    /// [`StoreConfig::max_attempts`]). For marks operators and tools read
    /// with `kubectl` (the recovery reconciler's `needs-intervention`).
    /// Returns whether anything changed; `NotFound` when the task has no
    /// state. The store's own annotations (schema version, the mirrors)
    /// cannot be set this way (`InvalidSelector`).
    pub async fn set_annotation(
        &self,
        task_id: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<bool> {
        let name = state_name(task_id)?;
        if key.is_empty() || key.len() > 253 || OWN_ANNOTATIONS.contains(&key) {
            return Err(Error::InvalidSelector {
                reason: format!("annotation {key:?} cannot be set on a state"),
            });
        }
        let mut backoff = Backoff::new(self.inner.config.backoff.clone());
        for attempt in 0..self.inner.config.max_attempts.max(1) {
            let Some(stored) = self.bounded(self.inner.backend.get(&name)).await? else {
                return Err(Error::NotFound { name });
            };
            let current = stored.document.annotations.get(key).map(String::as_str);
            if current == value {
                return Ok(false);
            }
            let mut document = stored.document;
            match value {
                Some(v) => document.annotations.insert(key.to_owned(), v.to_owned()),
                None => document.annotations.remove(key),
            };
            match self
                .bounded(
                    self.inner
                        .backend
                        .replace(&name, &stored.resource_version, document),
                )
                .await
            {
                Ok(_) => return Ok(true),
                // A first conflict is re-read at once, later ones back off
                // (as in `update`).
                Err(Error::Conflict { .. }) if attempt == 0 => {}
                Err(Error::Conflict { .. }) => {
                    let delay = backoff
                        .next_delay()
                        .unwrap_or(self.inner.config.backoff.max);
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::RetriesExhausted {
            task_id: task_id.to_owned(),
            attempts: self.inner.config.max_attempts,
            last: Box::new(Error::Conflict { name }),
        })
    }

    /// One page of at most `limit` task states (selected by the store's
    /// labels), decoded, starting where `continue_token` (from the previous
    /// page) says: for scans of every state that must hold one page at a
    /// time (the recovery reconciler). Documents without a valid task-id
    /// label are skipped with a warning. Bounded by
    /// [`StoreConfig::call_timeout`].
    pub async fn list_page(&self, limit: u32, continue_token: Option<String>) -> Result<StatePage> {
        let started = Instant::now();
        let result = self
            .bounded(
                self.inner
                    .backend
                    .list_page(&state_selector(), limit, continue_token),
            )
            .await
            .map(|page| StatePage {
                states: page
                    .items
                    .into_iter()
                    .filter_map(|doc| self.decode_listed(doc))
                    .collect(),
                continue_token: page.continue_token,
            });
        self.observe("list", started, result.as_ref().err());
        result
    }

    /// Counts one more iteration and returns the new count.
    ///
    /// At the maximum ([`StoreConfig::max_iterations`]) it fails with
    /// `MaxIterationsReached`, and sets the status to `MaxIterationsReached`
    /// unless the status is already final or an operation is active. The first iteration moves an `Initialized` task
    /// to `InProgress`.
    pub async fn increment_iteration(&self, task_id: &str) -> Result<u32> {
        let max = self.inner.config.max_iterations;
        let now = self.inner.clock.now();
        let counted = self
            .update(task_id, |s: &mut RemediationState| {
                if s.iteration >= max {
                    // A final status (Completed, Failed, or already marked) says more
                    // than "out of iterations", and an operation in flight keeps its
                    // status until it ends.
                    let can_mark = !s.status.is_terminal()
                        && s.active_operation.as_ref().is_none_or(|j| j.is_finished());
                    if !can_mark {
                        return Err(Error::MaxIterationsReached {
                            task_id: s.task_id.clone(),
                            max,
                        });
                    }
                    s.status = TaskStatus::MaxIterationsReached;
                    return Ok(None);
                }
                Ok(Some(s.start_iteration(now)))
            })
            .await?;
        counted.ok_or_else(|| Error::MaxIterationsReached {
            task_id: task_id.to_owned(),
            max,
        })
    }

    /// Adds review feedback unless its comment id is already recorded.
    /// Returns whether it was added.
    pub async fn append_feedback(&self, task_id: &str, entry: FeedbackEntry) -> Result<bool> {
        self.update(task_id, |s: &mut RemediationState| {
            Ok::<_, Error>(s.append_feedback(entry.clone()))
        })
        .await
    }

    /// The starting design's recovery entry point: reads the state of
    /// `task_id`, repairs what breaks a rule and has a certain repair,
    /// migrates an older schema, rebuilds an unreadable payload (quarantined
    /// beside it), and records when in [`RemediationState::last_recovery`];
    /// creates a fresh `Initialized` state when there is none. Idempotent:
    /// a state that needs none of this is not written.
    ///
    /// Errors: `UnsupportedVersion` or `Undecodable` for a state this build
    /// may not write; `Invalid` naming the field for a rule with no certain
    /// repair; the store's usual errors.
    pub async fn recover_state(&self, task_id: &str) -> Result<StateRecovery> {
        let name = state_name(task_id)?;
        let config = &self.inner.config;
        let now = self.inner.clock.now();
        let stored = self.bounded(self.inner.backend.get(&name)).await?;
        let mut recovery = StateRecovery::default();
        match &stored {
            None => recovery.created = true,
            Some(doc) => {
                let decoded = codec::decode(task_id, config.max_iterations, doc);
                match decoded.origin {
                    SchemaOrigin::Current => {}
                    SchemaOrigin::Migrated { from } => recovery.migrated_from = Some(from),
                    SchemaOrigin::Rebuilt { reason } => recovery.rebuilt = Some(reason),
                    SchemaOrigin::Newer { version } => {
                        return Err(Error::UnsupportedVersion {
                            task_id: task_id.to_owned(),
                            found: version,
                            supported: SCHEMA_VERSION,
                        });
                    }
                    SchemaOrigin::Undecodable { reason } => {
                        return Err(Error::Undecodable {
                            task_id: task_id.to_owned(),
                            reason,
                        });
                    }
                }
                let mut probe = decoded.state;
                recovery.repairs = probe.repair(config.max_iterations, now);
            }
        }
        let needed = recovery.created
            || recovery.migrated_from.is_some()
            || recovery.rebuilt.is_some()
            || !recovery.repairs.is_empty();
        if needed {
            // The write itself repairs, migrates or quarantines again on
            // whatever it reads (another writer may have come first).
            self.update(task_id, |s: &mut RemediationState| {
                s.last_recovery = Some(now);
                Ok::<_, Error>(())
            })
            .await?;
            info!(
                task_id,
                created = recovery.created,
                migrated_from = recovery.migrated_from.as_deref().unwrap_or(""),
                rebuilt = recovery.rebuilt.is_some(),
                repairs = recovery.repairs.len(),
                "state recovered"
            );
        }
        recovery.written = needed;
        Ok(recovery)
    }

    /// The iteration counter of `task_id`'s state; `None` when it has none.
    pub async fn current_iteration(&self, task_id: &str) -> Result<Option<u32>> {
        Ok(self.get(task_id).await?.map(|s| s.state.iteration))
    }

    /// The review feedback of `task_id`'s state, oldest first; empty when
    /// it has none.
    pub async fn feedback_history(&self, task_id: &str) -> Result<Vec<FeedbackEntry>> {
        Ok(self
            .get(task_id)
            .await?
            .map(|s| s.state.feedback_history)
            .unwrap_or_default())
    }

    /// Records a push: newest `(pushed_at, sha)` wins, an older push never
    /// replaces a newer head, a re-delivered push changes nothing (see
    /// [`RemediationState::observe_head`]). Returns whether the state changed.
    pub async fn record_supersession(&self, task_id: &str, push: &Supersession) -> Result<bool> {
        self.update(task_id, |s: &mut RemediationState| {
            Ok::<_, Error>(s.observe_head(push))
        })
        .await
    }

    /// Records webhook delivery `delivery_key` and the push it carries (if
    /// any) in one compare-and-swap: a key already among the task's recent
    /// deliveries is answered [`DeliveryRecorded::Duplicate`] and nothing is
    /// written; otherwise the push is observed as by
    /// [`record_supersession`](Self::record_supersession) and the key
    /// remembered (see [`RemediationState::observe_delivery`]). A write
    /// whose answer was lost and that is found applied on re-read answers
    /// as the write did, never `Duplicate`.
    ///
    /// Errors: `Invalid` for a key that is not 1–160 visible ASCII
    /// characters (nothing is read or written), and the update's errors.
    pub async fn record_delivery(
        &self,
        task_id: &str,
        delivery_key: &str,
        push: Option<&Supersession>,
    ) -> Result<DeliveryRecorded> {
        self.record_delivery_with(task_id, delivery_key, push, |_, _| {})
            .await
    }

    /// [`record_delivery`](Self::record_delivery), and `also` applied to
    /// the state in the same compare-and-swap when the delivery is new
    /// (given what was recorded) — e.g. where the task's pull request is,
    /// so that what a later reader needs to act on the fact is stored with
    /// the fact itself. `also` may run more than once (on conflicts) and
    /// must only set what the delivery says.
    pub async fn record_delivery_with(
        &self,
        task_id: &str,
        delivery_key: &str,
        push: Option<&Supersession>,
        also: impl Fn(&mut RemediationState, DeliveryRecorded),
    ) -> Result<DeliveryRecorded> {
        if !crate::schema::well_formed_delivery_key(delivery_key) {
            return Err(Error::Invalid {
                task_id: task_id.to_owned(),
                reason: format!(
                    "delivery key {:?} is not 1 to {} visible ASCII characters",
                    delivery_key.chars().take(40).collect::<String>(),
                    crate::schema::MAX_DELIVERY_KEY_LEN
                ),
            });
        }
        self.update(task_id, |s: &mut RemediationState| {
            let recorded = s.observe_delivery(delivery_key, push);
            if recorded != DeliveryRecorded::Duplicate {
                also(s, recorded);
            }
            Ok::<_, Error>(recorded)
        })
        .await
    }

    /// Begins an operation journal (idempotent for the same operation id);
    /// fails with `Journal` if another operation is active. If the journal
    /// carries a fencing token, the write is fenced with it, as is every
    /// later step of the operation.
    pub async fn begin_operation(&self, task_id: &str, journal: OperationJournal) -> Result<()> {
        self.journal_write(task_id, &journal, |s| s.begin_operation(journal.clone()))
            .await
    }

    /// Records `step` with `status` on the active operation `journal` (the
    /// journal as begun or resumed by the caller; a repeat of the latest
    /// step is a no-op).
    ///
    /// Fenced with the journal's token: a holder that lost its lock, or
    /// whose operation was resumed by another holder
    /// ([`resume_operation`](Self::resume_operation)), is refused
    /// (`FencingTokenRefused` or `Journal`) and writes nothing.
    pub async fn advance_operation(
        &self,
        task_id: &str,
        journal: &OperationJournal,
        step: Step,
        status: StepStatus,
        detail: Option<String>,
    ) -> Result<()> {
        let clock = self.inner.clock.clone();
        self.journal_write(task_id, journal, |s| {
            s.check_operation_holder(journal)?;
            s.advance_operation(
                &journal.operation_id,
                step.clone(),
                status,
                detail.clone(),
                clock.now(),
            )
        })
        .await
    }

    /// Ends the active operation `journal`, appending `record` to the
    /// cancellation history. Returns `false` if it had already ended.
    /// Fenced like [`advance_operation`](Self::advance_operation).
    pub async fn finish_operation(
        &self,
        task_id: &str,
        journal: &OperationJournal,
        record: Option<CancellationRecord>,
    ) -> Result<bool> {
        self.journal_write(task_id, journal, |s| {
            s.check_operation_holder(journal)?;
            s.finish_operation(&journal.operation_id, record.clone())
        })
        .await
    }

    /// Takes over the unfinished operation `operation_id` (the recovery
    /// reconciler resuming a journal whose holder stopped): `holder` and
    /// `token` become the journal's, in a write fenced with `token`, so the
    /// former holder's later steps are refused. Returns the journal to pass
    /// to [`advance_operation`](Self::advance_operation) and
    /// [`finish_operation`](Self::finish_operation).
    ///
    /// Errors: `Journal` when `operation_id` is not the active operation;
    /// `FencingTokenRefused` when `token` is not newer than the state's
    /// highest.
    pub async fn resume_operation(
        &self,
        task_id: &str,
        operation_id: &str,
        holder: &str,
        token: &FencingToken,
    ) -> Result<OperationJournal> {
        self.update_fenced(task_id, token, |s: &mut RemediationState| {
            s.resume_operation(operation_id, holder, token)
        })
        .await
    }

    /// One journal write: fenced with the journal's token when it has one.
    async fn journal_write<T, F>(
        &self,
        task_id: &str,
        journal: &OperationJournal,
        f: F,
    ) -> Result<T>
    where
        F: FnMut(&mut RemediationState) -> Result<T>,
    {
        match &journal.fencing_token {
            Some(token) => self.update_fenced(task_id, token, f).await,
            None => self.update(task_id, f).await,
        }
    }

    pub(crate) fn observe(&self, operation: &'static str, started: Instant, error: Option<&Error>) {
        let result = error.map_or("ok", error_label);
        self.inner
            .metrics
            .observe(operation, result, started.elapsed().as_secs_f64());
    }

    pub(crate) fn decode_listed(&self, doc: StoredDocument) -> Option<Snapshot> {
        let Some(task_id) = doc.document.labels.get(LABEL_TASK_ID).cloned() else {
            warn!(name = %doc.name, "state document without a task-id label; skipped");
            return None;
        };
        if validate_task_id(&task_id).is_err() || state_name(&task_id).ok()? != doc.name {
            warn!(name = %doc.name, "state document whose task-id label does not match its name; skipped");
            return None;
        }
        let mut decoded = codec::decode(&task_id, self.inner.config.max_iterations, &doc);
        if matches!(
            decoded.origin,
            SchemaOrigin::Current | SchemaOrigin::Migrated { .. }
        ) {
            self.repair_read(&task_id, &mut decoded.state);
        }
        self.inner.metrics.read(&decoded.origin);
        Some(Snapshot {
            state: decoded.state,
            resource_version: doc.resource_version.clone(),
            origin: decoded.origin,
            stored: Some(doc),
        })
    }

    async fn get_inner(&self, task_id: &str) -> Result<Option<Snapshot>> {
        let name = state_name(task_id)?;
        let Some(doc) = self.bounded(self.inner.backend.get(&name)).await? else {
            return Ok(None);
        };
        let mut decoded = codec::decode(task_id, self.inner.config.max_iterations, &doc);
        match &decoded.origin {
            SchemaOrigin::Current | SchemaOrigin::Migrated { .. } => {
                self.repair_read(task_id, &mut decoded.state);
                self.validate(task_id, &decoded.state)?;
            }
            SchemaOrigin::Rebuilt { reason } => {
                warn!(task_id, reason = %reason, "state payload unreadable; returning a rebuilt state (quarantined on the next update)");
            }
            SchemaOrigin::Undecodable { reason } => {
                warn!(task_id, reason = %reason, "state is valid JSON this build cannot decode; read best-effort, read-only for this build");
            }
            SchemaOrigin::Newer { .. } => {}
        }
        self.inner.metrics.read(&decoded.origin);
        Ok(Some(Snapshot {
            state: decoded.state,
            resource_version: doc.resource_version.clone(),
            origin: decoded.origin,
            stored: Some(doc),
        }))
    }

    /// Runs one backend call with [`StoreConfig::call_timeout`].
    pub(crate) async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.bounded_by(self.inner.config.call_timeout, call).await
    }

    async fn bounded_by<T>(
        &self,
        limit: Duration,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or_else(|_| Err(Error::Transport(format!("no answer within {limit:?}"))))
    }

    /// Repairs a state read (not written): readers see it as the next
    /// write will store it; the write counts and logs the repairs.
    fn repair_read(&self, task_id: &str, state: &mut RemediationState) {
        let repairs = state.repair(self.inner.config.max_iterations, self.inner.clock.now());
        for repair in &repairs {
            debug!(task_id, kind = repair.kind.as_str(), detail = %repair.detail, "state read repaired; the next write keeps the repair");
        }
    }

    fn validate(&self, task_id: &str, state: &RemediationState) -> Result<()> {
        state
            .validate(task_id, self.inner.config.max_iterations)
            .map_err(|reason| Error::Invalid {
                task_id: task_id.to_owned(),
                reason,
            })
    }

    async fn update_with<T, E, F>(
        &self,
        task_id: &str,
        token: Option<&FencingToken>,
        mut f: F,
    ) -> Result<T, E>
    where
        F: FnMut(&mut RemediationState) -> Result<T, E>,
        E: From<Error>,
    {
        self.update_seeded(task_id, token, Seed::Read, &mut f)
            .await
            .map(|(value, _)| value)
    }

    /// The update loop with its metrics; returns the value and the state as
    /// written (or as read, when nothing needed writing).
    async fn update_seeded<T, E, F>(
        &self,
        task_id: &str,
        token: Option<&FencingToken>,
        seed: Seed<'_>,
        f: &mut F,
    ) -> Result<(T, Option<Snapshot>), E>
    where
        F: FnMut(&mut RemediationState) -> Result<T, E>,
        E: From<Error>,
    {
        let started = Instant::now();
        match self.update_loop(task_id, token, seed, f).await {
            Ok(value) => {
                self.observe("update", started, None);
                Ok(value)
            }
            Err(Failure::Store(e)) => {
                self.observe("update", started, Some(&e));
                Err(E::from(e))
            }
            Err(Failure::Aborted(e)) => {
                self.inner
                    .metrics
                    .observe("update", "aborted", started.elapsed().as_secs_f64());
                Err(e)
            }
        }
    }

    async fn update_loop<T, E, F>(
        &self,
        task_id: &str,
        token: Option<&FencingToken>,
        mut seed: Seed<'_>,
        f: &mut F,
    ) -> Result<(T, Option<Snapshot>), Failure<E>>
    where
        F: FnMut(&mut RemediationState) -> Result<T, E>,
    {
        let name = state_name(task_id)?;
        let config = &self.inner.config;
        let metrics = &self.inner.metrics;
        let backend = &self.inner.backend;
        let mut backoff = Backoff::new(config.backoff.clone());
        let mut doubts = Doubts::default();
        let mut last_error: Option<Error> = None;
        let mut pause = false;
        let mut conflicts = 0u32;
        let attempts = config.max_attempts.max(1);
        let mut made = 0;

        let failure: Failure<E> = 'attempts: {
            for attempt in 1..=attempts {
                made = attempt;
                if pause {
                    let mut delay = backoff.next_delay().unwrap_or(config.backoff.max);
                    if let Some(after) = last_error.as_ref().and_then(Error::retry_after) {
                        delay = delay.max(after.min(config.max_retry_after));
                    }
                    tokio::time::sleep(delay).await;
                }
                pause = true;

                let read = match std::mem::replace(&mut seed, Seed::Read) {
                    Seed::Read => self.bounded(backend.get(&name)).await,
                    Seed::Absent => Ok(None),
                    Seed::Held(doc) => Ok(Some(doc.clone())),
                };
                let stored = match read {
                    Ok(stored) => stored,
                    Err(e) if e.is_transient() => {
                        metrics.retry("transient");
                        debug!(task_id, attempt, error = %e, "read failed; retrying");
                        last_error = Some(e);
                        continue;
                    }
                    Err(e) => break 'attempts e.into(),
                };
                let decoded = stored
                    .as_ref()
                    .map(|doc| (doc, codec::decode(task_id, config.max_iterations, doc)));

                match doubts.judge(decoded.as_ref().map(|(doc, d)| (*doc, &d.state))) {
                    Verdict::Applied(value) => {
                        debug!(
                            task_id,
                            attempt, "a write whose answer was lost had been applied"
                        );
                        let snapshot = decoded.map(|(doc, d)| Snapshot {
                            state: d.state,
                            resource_version: doc.resource_version.clone(),
                            origin: d.origin,
                            stored: Some(doc.clone()),
                        });
                        return Ok((value, snapshot));
                    }
                    Verdict::Unknown => {
                        warn!(
                            task_id,
                            attempt,
                            "a write whose answer was lost can no longer be judged: its id left the write log"
                        );
                        return Err(outcome_unknown(task_id, attempt));
                    }
                    Verdict::NotApplied => {}
                }

                if let Some((_, decoded)) = &decoded {
                    metrics.read(&decoded.origin);
                }
                let now = self.inner.clock.now();
                let mut repairs = Vec::new();
                let mut migrated_from = None;
                let (base, mut state, corrupt) = match decoded {
                    None => (None, RemediationState::new(task_id, now), None),
                    Some((doc, decoded)) => match decoded.origin {
                        SchemaOrigin::Newer { version } => {
                            break 'attempts Error::UnsupportedVersion {
                                task_id: task_id.to_owned(),
                                found: version,
                                supported: SCHEMA_VERSION,
                            }
                            .into();
                        }
                        SchemaOrigin::Undecodable { reason } => {
                            break 'attempts Error::Undecodable {
                                task_id: task_id.to_owned(),
                                reason,
                            }
                            .into();
                        }
                        SchemaOrigin::Rebuilt { ref reason } => {
                            warn!(task_id, reason = %reason, "state payload unreadable; rebuilding it and quarantining the raw payload");
                            let corrupt = decoded.corrupt.map(|c| (c, reason.clone()));
                            (Some(doc), decoded.state, corrupt)
                        }
                        SchemaOrigin::Current | SchemaOrigin::Migrated { .. } => {
                            if let SchemaOrigin::Migrated { from } = &decoded.origin {
                                migrated_from = Some(from.clone());
                            }
                            let mut state = decoded.state;
                            repairs = state.repair(config.max_iterations, now);
                            if let Err(e) = self.validate(task_id, &state) {
                                break 'attempts e.into();
                            }
                            (Some(doc), state, None)
                        }
                    },
                };

                let before = state.clone();
                if let Some(token) = token
                    && let Err(e) = state.observe_fencing_token(token)
                {
                    break 'attempts e.into();
                }
                let value = match f(&mut state) {
                    Ok(value) => value,
                    Err(e) => break 'attempts Failure::Aborted(e),
                };
                if state.iteration > before.iteration && state.iteration > config.max_iterations {
                    break 'attempts Error::MaxIterationsReached {
                        task_id: task_id.to_owned(),
                        max: config.max_iterations,
                    }
                    .into();
                }
                if state == before
                    && corrupt.is_none()
                    && repairs.is_empty()
                    && let Some(doc) = base
                {
                    // Nothing to write: the read state already says it.
                    let snapshot = Snapshot {
                        state: before,
                        resource_version: doc.resource_version.clone(),
                        origin: SchemaOrigin::Current,
                        stored: Some(doc.clone()),
                    };
                    return Ok((value, Some(snapshot)));
                }

                // The store owns these fields whatever the closure did.
                state.version = SCHEMA_VERSION.to_owned();
                state.last_update = now;
                *state.applied_writes_mut() = before.applied_writes().to_vec();
                let write_id = new_write_id();
                state.remember_write(&write_id);
                if let Err(e) = self.validate(task_id, &state) {
                    break 'attempts e.into();
                }
                if let Err(reason) = state.check_new_feedback(&before) {
                    break 'attempts Error::Invalid {
                        task_id: task_id.to_owned(),
                        reason,
                    }
                    .into();
                }

                let mut encoded = match codec::encode(
                    &mut state,
                    &name,
                    base.map(|d| &d.document),
                    corrupt.as_ref().map(|(c, reason)| (c, reason.as_str())),
                    &config.size_limits,
                    now,
                ) {
                    Ok(encoded) => encoded,
                    Err(e) => break 'attempts e.into(),
                };

                let document = std::mem::take(&mut encoded.document);
                let written = match base {
                    None => self.bounded(backend.create(&name, document)).await,
                    Some(doc) => {
                        self.bounded(backend.replace(&name, &doc.resource_version, document))
                            .await
                    }
                };
                match written {
                    Ok(stored) => {
                        self.count_write(task_id, &encoded, corrupt.is_some());
                        for repair in &repairs {
                            metrics.repaired(repair.kind);
                            warn!(
                                task_id,
                                kind = repair.kind.as_str(),
                                detail = %repair.detail,
                                "state broke one of its rules; repaired and recorded in it"
                            );
                        }
                        if let Some(from) = &migrated_from {
                            metrics.migrated(from);
                            info!(task_id, from = %from, to = SCHEMA_VERSION, "state migrated");
                        }
                        info!(
                            task_id,
                            resource_version = %stored.resource_version,
                            changed = %before.changed_fields(&state).join(","),
                            created = base.is_none(),
                            "state written"
                        );
                        let snapshot = Snapshot {
                            state,
                            resource_version: stored.resource_version.clone(),
                            origin: SchemaOrigin::Current,
                            stored: Some(stored),
                        };
                        return Ok((value, Some(snapshot)));
                    }
                    Err(e @ Error::Conflict { .. }) => {
                        metrics.conflicts.inc();
                        metrics.retry("conflict");
                        last_error = Some(e);
                        // The version moved: perhaps by an earlier write of ours whose
                        // answer was lost. Judge it now, while the write log still
                        // reaches back to it; back off only when nothing is in doubt,
                        // and not after a first conflict: another writer has just
                        // succeeded, and with two writers (a push and its
                        // pull_request event, a delivery and a saga's journal) the
                        // re-read at once wins.
                        conflicts += 1;
                        pause = doubts.is_empty() && conflicts > 1;
                    }
                    Err(e @ (Error::AlreadyExists { .. } | Error::NotFound { .. })) => {
                        // Created or deleted by someone else since our read: read again now.
                        metrics.retry(error_label(&e));
                        last_error = Some(e);
                        pause = false;
                    }
                    Err(e) if e.write_outcome_ambiguous() => {
                        metrics.retry("ambiguous_write");
                        debug!(task_id, attempt, error = %e, "write outcome unknown; re-reading to judge");
                        doubts.push(InDoubt {
                            write_id,
                            base_version: base.map(|d| d.resource_version.clone()),
                            predecessor: before.applied_writes().last().cloned(),
                            value,
                        });
                        last_error = Some(e);
                    }
                    Err(e) if e.is_transient() => {
                        metrics.retry("transient");
                        last_error = Some(e);
                    }
                    Err(e) => break 'attempts e.into(),
                }
            }
            Error::RetriesExhausted {
                task_id: task_id.to_owned(),
                attempts,
                last: Box::new(last_error.unwrap_or(Error::Conflict { name: name.clone() })),
            }
            .into()
        };
        self.conclude(task_id, &name, doubts, failure, made).await
    }

    /// Ends an update with `failure` — unless a write whose answer was lost
    /// decides it: one more read either finds it applied (the update
    /// succeeded), rules every such write out (`failure` stands), or cannot
    /// tell (`OutcomeUnknown`: returning `failure` could hide an applied write).
    async fn conclude<T, E>(
        &self,
        task_id: &str,
        name: &str,
        mut doubts: Doubts<T>,
        failure: Failure<E>,
        attempts: u32,
    ) -> Result<(T, Option<Snapshot>), Failure<E>> {
        if doubts.is_empty() {
            return Err(failure);
        }
        let unknown = || Err(outcome_unknown(task_id, attempts));
        let Ok(stored) = self.bounded(self.inner.backend.get(name)).await else {
            return unknown();
        };
        let decoded = stored.as_ref().map(|doc| {
            let decoded = codec::decode(task_id, self.inner.config.max_iterations, doc);
            (doc, decoded)
        });
        match doubts.judge(decoded.as_ref().map(|(doc, d)| (*doc, &d.state))) {
            Verdict::Applied(value) => Ok((
                value,
                decoded.map(|(doc, d)| Snapshot {
                    state: d.state,
                    resource_version: doc.resource_version.clone(),
                    origin: d.origin,
                    stored: Some(doc.clone()),
                }),
            )),
            Verdict::NotApplied if doubts.is_empty() => Err(failure),
            Verdict::NotApplied | Verdict::Unknown => unknown(),
        }
    }

    fn count_write(&self, task_id: &str, encoded: &codec::Encoded, quarantined: bool) {
        let metrics = &self.inner.metrics;
        metrics.document_size.observe(encoded.size as f64);
        if let Some(compaction) = &encoded.compaction {
            metrics.compactions.inc();
            info!(
                task_id,
                dropped = compaction.dropped,
                kept = compaction.kept,
                "feedback history compacted to keep the state under the ConfigMap size limit"
            );
        }
        if encoded.compressed {
            metrics.compressions.inc();
        }
        if quarantined {
            metrics.quarantines.inc();
        }
    }
}

/// A write whose answer was lost (failed in transit, timed out): the server
/// may or may not have applied it, or may still apply it.
struct InDoubt<T> {
    write_id: String,
    /// The version the write named; `None` for a create.
    base_version: Option<String>,
    /// The newest write id in the state the write was based on: had the write
    /// been applied, its own id would follow this one in every later state.
    predecessor: Option<String>,
    /// The closure's value for this write.
    value: T,
}

/// The writes of one update whose answers were lost and that may still be
/// applied. All of them name the version of the latest read (or are creates
/// of an absent document), so at most one of them can ever be applied.
struct Doubts<T> {
    writes: Vec<InDoubt<T>>,
}

impl<T> Default for Doubts<T> {
    fn default() -> Self {
        Self { writes: Vec::new() }
    }
}

/// What a fresh read says about the writes in doubt.
enum Verdict<T> {
    /// One was applied: the update succeeded with this value.
    Applied(T),
    /// None was applied; those that may still land are kept.
    NotApplied,
    /// The read cannot tell: a write may have been applied and its id since
    /// pushed out of the state's write log (or the state replaced wholesale).
    Unknown,
}

/// What a fresh read says about one write in doubt.
enum Fate {
    Applied,
    /// Not applied, but it may still be (the version it named is current).
    Pending,
    /// Not applied, and it never can be any more.
    Dead,
    Unknown,
}

impl<T> Doubts<T> {
    fn push(&mut self, write: InDoubt<T>) {
        self.writes.push(write);
    }

    fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Judges every write in doubt against `current` (the document as just
    /// read and its decoded state; `None` if absent), dropping those that can
    /// no longer be applied.
    fn judge(&mut self, current: Option<(&StoredDocument, &RemediationState)>) -> Verdict<T> {
        let mut unknown = false;
        let mut i = 0;
        while i < self.writes.len() {
            match fate(&self.writes[i], current) {
                Fate::Applied => return Verdict::Applied(self.writes.swap_remove(i).value),
                Fate::Pending => i += 1,
                Fate::Dead => drop(self.writes.swap_remove(i)),
                Fate::Unknown => {
                    unknown = true;
                    i += 1;
                }
            }
        }
        if unknown {
            Verdict::Unknown
        } else {
            Verdict::NotApplied
        }
    }
}

fn fate<T>(write: &InDoubt<T>, current: Option<(&StoredDocument, &RemediationState)>) -> Fate {
    let Some((doc, state)) = current else {
        // Absent. A create may still land; a replace named a version that is
        // gone, and whatever it changed was deleted with it.
        return if write.base_version.is_none() {
            Fate::Pending
        } else {
            Fate::Dead
        };
    };
    let log = state.applied_writes();
    if log.contains(&write.write_id) {
        return Fate::Applied;
    }
    if write.base_version.as_deref() == Some(doc.resource_version.as_str()) {
        return Fate::Pending;
    }
    // The version moved on without this write, so it can no longer land. It was
    // not applied if the log reaches back far enough to show it: past its
    // predecessor, or (for a write on a state without a log) to its start.
    let reaches_back = match &write.predecessor {
        Some(predecessor) => log.contains(predecessor),
        None => log.len() < MAX_APPLIED_WRITES,
    };
    if reaches_back {
        Fate::Dead
    } else {
        Fate::Unknown
    }
}

fn outcome_unknown<E>(task_id: &str, attempts: u32) -> Failure<E> {
    Failure::Store(Error::OutcomeUnknown {
        task_id: task_id.to_owned(),
        attempts,
    })
}

/// Why an update ended without a write: the store's error or the closure's.
enum Failure<E> {
    Store(Error),
    Aborted(E),
}

impl<E> From<Error> for Failure<E> {
    fn from(e: Error) -> Self {
        Failure::Store(e)
    }
}

fn new_write_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use jiff::Timestamp;

    use super::*;
    use crate::backend::{Document, MockStateBackend};
    use crate::naming::KEY_STATE;

    const TASK: &str = "t1";
    const NAME: &str = "task-t1-state";

    fn doc_of(state: &RemediationState, version: &str) -> StoredDocument {
        let mut state = state.clone();
        let encoded = codec::encode(
            &mut state,
            NAME,
            None,
            None,
            &SizeLimits::default(),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        StoredDocument {
            name: NAME.into(),
            resource_version: version.into(),
            document: encoded.document,
        }
    }

    fn stored(iteration: u32, version: &str) -> StoredDocument {
        let mut state = RemediationState::new(TASK, Timestamp::UNIX_EPOCH);
        state.iteration = iteration;
        doc_of(&state, version)
    }

    fn decoded(doc: &Document) -> RemediationState {
        serde_json::from_str(&doc.data[KEY_STATE]).unwrap()
    }

    fn api(code: u16) -> Error {
        Error::Api {
            code,
            reason: "r".into(),
            message: "m".into(),
            retry_after: None,
        }
    }

    /// A conditional write that succeeds, storing the document as version `rv`.
    fn replaced_as(
        rv: &'static str,
    ) -> impl FnMut(&str, &str, Document) -> Result<StoredDocument> + Send + 'static {
        move |name, _, document| {
            Ok(StoredDocument {
                name: name.into(),
                resource_version: rv.into(),
                document,
            })
        }
    }

    fn store(mock: MockStateBackend) -> StateStore {
        StateStore::new(mock)
    }

    fn bump(s: &mut RemediationState) -> Result<u32> {
        s.iteration += 1;
        Ok(s.iteration)
    }

    #[tokio::test(start_paused = true)]
    async fn a_closure_error_aborts_without_any_write() {
        let mut mock = MockStateBackend::new();
        mock.expect_get().returning(|_| Ok(Some(stored(1, "5"))));
        mock.expect_replace().never();
        mock.expect_create().never();
        let err = store(mock)
            .update(TASK, |_| Err::<(), _>(Error::Client("no".into())))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Client(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_re_reads_and_re_applies_the_change_to_the_new_state() {
        let mut mock = MockStateBackend::new();
        let reads = AtomicU32::new(0);
        mock.expect_get().times(2).returning(move |_| {
            let n = reads.fetch_add(1, Ordering::SeqCst);
            Ok(Some(if n == 0 {
                stored(1, "5")
            } else {
                stored(4, "9")
            }))
        });
        let mut seq = mockall::Sequence::new();
        mock.expect_replace()
            .withf(|_, rv, _| rv == "5")
            .times(1)
            .in_sequence(&mut seq)
            .returning(|n, _, _| Err(Error::Conflict { name: n.into() }));
        mock.expect_replace()
            .withf(|_, rv, doc| rv == "9" && decoded(doc).iteration == 5)
            .times(1)
            .in_sequence(&mut seq)
            .returning(replaced_as("10"));
        let store = store(mock);
        assert_eq!(store.update(TASK, bump).await.unwrap(), 5);
        assert_eq!(store.metrics().conflicts.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_state_is_created_and_already_exists_re_enters_the_update() {
        let mut mock = MockStateBackend::new();
        let reads = AtomicU32::new(0);
        mock.expect_get().times(2).returning(move |_| {
            Ok((reads.fetch_add(1, Ordering::SeqCst) > 0).then(|| stored(3, "7")))
        });
        mock.expect_create()
            .withf(|name, doc| name == NAME && decoded(doc).iteration == 1)
            .times(1)
            .returning(|n, _| Err(Error::AlreadyExists { name: n.into() }));
        mock.expect_replace()
            .withf(|_, rv, doc| rv == "7" && decoded(doc).iteration == 4)
            .times(1)
            .returning(replaced_as("8"));
        assert_eq!(store(mock).update(TASK, bump).await.unwrap(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_state_deleted_under_the_update_is_created_again() {
        let mut mock = MockStateBackend::new();
        let reads = AtomicU32::new(0);
        mock.expect_get().times(2).returning(move |_| {
            Ok((reads.fetch_add(1, Ordering::SeqCst) == 0).then(|| stored(3, "7")))
        });
        mock.expect_replace()
            .times(1)
            .returning(|n, _, _| Err(Error::NotFound { name: n.into() }));
        mock.expect_create()
            .withf(|_, doc| decoded(doc).iteration == 1)
            .times(1)
            .returning(|name, document| {
                Ok(StoredDocument {
                    name: name.into(),
                    resource_version: "8".into(),
                    document,
                })
            });
        assert_eq!(store(mock).update(TASK, bump).await.unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_applied_but_lost_in_transit_is_not_applied_twice() {
        let mut mock = MockStateBackend::new();
        let current = Arc::new(Mutex::new(stored(2, "5")));
        let c = current.clone();
        mock.expect_get()
            .returning(move |_| Ok(Some(c.lock().unwrap().clone())));
        let c = current.clone();
        mock.expect_replace().times(1).returning(move |n, _, d| {
            // The server applies the write, then the answer is lost.
            *c.lock().unwrap() = StoredDocument {
                name: n.into(),
                resource_version: "6".into(),
                document: d,
            };
            Err(Error::Transport("connection reset".into()))
        });
        assert_eq!(store(mock).update(TASK, bump).await.unwrap(), 3);
        assert_eq!(decoded(&current.lock().unwrap().document).iteration, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_lost_before_it_was_applied_is_written_again() {
        let mut mock = MockStateBackend::new();
        mock.expect_get()
            .times(2)
            .returning(|_| Ok(Some(stored(2, "5"))));
        let mut seq = mockall::Sequence::new();
        mock.expect_replace()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _| Err(api(504)));
        mock.expect_replace()
            .withf(|_, _, doc| decoded(doc).iteration == 3)
            .times(1)
            .in_sequence(&mut seq)
            .returning(replaced_as("6"));
        assert_eq!(store(mock).update(TASK, bump).await.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_while_an_earlier_write_may_still_land_is_reported_unknown() {
        let mut mock = MockStateBackend::new();
        // The version never moves: the first write (answered 500) may still be
        // applied by the server, so the 403 of the second cannot be the answer.
        mock.expect_get().returning(|_| Ok(Some(stored(2, "5"))));
        let mut seq = mockall::Sequence::new();
        mock.expect_replace()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _| Err(api(500)));
        mock.expect_replace()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _| Err(api(403)));
        let err = store(mock).update(TASK, bump).await.unwrap_err();
        assert!(matches!(err, Error::OutcomeUnknown { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_after_an_earlier_write_was_ruled_out_is_returned() {
        let mut mock = MockStateBackend::new();
        let reads = AtomicU32::new(0);
        // After the first write failed, another writer moved the version on
        // without it: it can never land, so the second write's 403 stands.
        mock.expect_get().returning(move |_| {
            Ok(Some(if reads.fetch_add(1, Ordering::SeqCst) == 0 {
                stored(2, "5")
            } else {
                stored(3, "6")
            }))
        });
        let mut seq = mockall::Sequence::new();
        mock.expect_replace()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _| Err(api(500)));
        mock.expect_replace()
            .withf(|_, rv, _| rv == "6")
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _| Err(api(403)));
        let err = store(mock).update(TASK, bump).await.unwrap_err();
        assert!(matches!(err, Error::Api { code: 403, .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_closure_that_refuses_while_its_earlier_write_may_still_land_is_reported_unknown() {
        let mut mock = MockStateBackend::new();
        mock.expect_get().returning(|_| Ok(Some(stored(2, "5"))));
        mock.expect_replace()
            .times(1)
            .returning(|_, _, _| Err(Error::Transport("timed out".into())));
        let mut runs = 0;
        let err = store(mock)
            .update(TASK, |s| {
                runs += 1;
                if runs > 1 {
                    return Err(Error::Client("changed its mind".into()));
                }
                s.iteration += 1;
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::OutcomeUnknown { .. }), "{err}");
    }

    /// A backend that applies every create and then loses its answer.
    struct LostCreateAnswers(crate::MemoryBackend);

    #[async_trait::async_trait]
    impl StateBackend for LostCreateAnswers {
        async fn get(&self, name: &str) -> Result<Option<StoredDocument>> {
            self.0.get(name).await
        }
        async fn create(&self, name: &str, document: Document) -> Result<StoredDocument> {
            self.0.create(name, document).await?;
            Err(Error::Transport("connection reset".into()))
        }
        async fn replace(&self, name: &str, rv: &str, doc: Document) -> Result<StoredDocument> {
            self.0.replace(name, rv, doc).await
        }
        async fn delete(&self, name: &str, rv: &str) -> Result<()> {
            self.0.delete(name, rv).await
        }
        async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<StoredDocument>> {
            self.0.list(labels).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_whose_answer_was_lost_is_settled_by_re_reading() {
        let store = StateStore::new(LostCreateAnswers(crate::MemoryBackend::new()));
        assert_eq!(store.increment_iteration(TASK).await.unwrap(), 1);
        assert_eq!(store.increment_iteration(TASK).await.unwrap(), 2);
        assert_eq!(store.get(TASK).await.unwrap().unwrap().state.iteration, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_read_errors_are_retried_with_backoff() {
        let mut mock = MockStateBackend::new();
        let reads = AtomicU32::new(0);
        mock.expect_get().times(3).returning(move |_| {
            if reads.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(api(503))
            } else {
                Ok(Some(stored(0, "1")))
            }
        });
        mock.expect_replace().times(1).returning(replaced_as("2"));
        let started = Instant::now();
        assert_eq!(store(mock).update(TASK, bump).await.unwrap(), 1);
        // Two backoff delays of at least initial·(1 − jitter) each.
        assert!(started.elapsed() >= Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_requested_wait_is_honoured() {
        let mut mock = MockStateBackend::new();
        let reads = AtomicU32::new(0);
        mock.expect_get().times(2).returning(move |_| {
            if reads.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(Error::Api {
                    code: 429,
                    reason: "TooManyRequests".into(),
                    message: "slow down".into(),
                    retry_after: Some(Duration::from_secs(5)),
                })
            } else {
                Ok(Some(stored(0, "1")))
            }
        });
        mock.expect_replace().returning(replaced_as("2"));
        let started = Instant::now();
        store(mock).update(TASK, bump).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_api_error_is_returned_at_once() {
        let mut mock = MockStateBackend::new();
        mock.expect_get()
            .times(1)
            .returning(|_| Ok(Some(stored(0, "1"))));
        mock.expect_replace()
            .times(1)
            .returning(|_, _, _| Err(api(403)));
        let err = store(mock).update(TASK, bump).await.unwrap_err();
        assert!(matches!(err, Error::Api { code: 403, .. }));
        assert!(!err.is_transient());
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded_and_exhaustion_names_the_last_failure() {
        let mut mock = MockStateBackend::new();
        mock.expect_get()
            .times(3)
            .returning(|_| Ok(Some(stored(0, "1"))));
        mock.expect_replace()
            .times(3)
            .returning(|n, _, _| Err(Error::Conflict { name: n.into() }));
        let config = StoreConfig {
            max_attempts: 3,
            ..StoreConfig::default()
        };
        let err = StateStore::with_config(mock, config)
            .update(TASK, bump)
            .await
            .unwrap_err();
        match err {
            Error::RetriesExhausted {
                attempts: 3, last, ..
            } => {
                assert!(matches!(*last, Error::Conflict { .. }));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_still_in_doubt_when_attempts_run_out_is_reported_unknown() {
        let mut mock = MockStateBackend::new();
        mock.expect_get().returning(|_| Ok(Some(stored(0, "1"))));
        mock.expect_replace()
            .times(2)
            .returning(|_, _, _| Err(api(500)));
        let config = StoreConfig {
            max_attempts: 2,
            ..StoreConfig::default()
        };
        let err = StateStore::with_config(mock, config)
            .update(TASK, bump)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::OutcomeUnknown { attempts: 2, .. }));
        assert!(!err.is_transient());
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_while_a_write_is_in_doubt_is_judged_without_waiting() {
        let mut mock = MockStateBackend::new();
        let reads = Arc::new(Mutex::new(Vec::new()));
        let r = reads.clone();
        mock.expect_get().times(3).returning(move |_| {
            let mut reads = r.lock().unwrap();
            reads.push(Instant::now());
            Ok(Some(if reads.len() < 3 {
                stored(2, "5")
            } else {
                stored(3, "6")
            }))
        });
        let conflicted_at = Arc::new(Mutex::new(None));
        let c = conflicted_at.clone();
        let mut seq = mockall::Sequence::new();
        mock.expect_replace()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _| Err(api(500)));
        mock.expect_replace()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |n, _, _| {
                *c.lock().unwrap() = Some(Instant::now());
                Err(Error::Conflict { name: n.into() })
            });
        mock.expect_replace()
            .withf(|_, rv, doc| rv == "6" && decoded(doc).iteration == 4)
            .times(1)
            .in_sequence(&mut seq)
            .returning(replaced_as("7"));
        assert_eq!(store(mock).update(TASK, bump).await.unwrap(), 4);
        let reads = reads.lock().unwrap();
        assert!(reads[1] > reads[0], "the 500 was followed by a backoff");
        assert_eq!(
            Some(reads[2]),
            *conflicted_at.lock().unwrap(),
            "the conflict was judged at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_conflict_is_re_read_at_once_and_later_ones_back_off() {
        let mut mock = MockStateBackend::new();
        mock.expect_get().returning(|_| Ok(Some(stored(0, "1"))));
        let writes = Arc::new(AtomicU32::new(0));
        let at: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let (w, a) = (writes.clone(), at.clone());
        mock.expect_replace()
            .times(3)
            .returning(move |n, rv, document| {
                a.lock().unwrap().push(Instant::now());
                match w.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(Error::Conflict { name: n.into() }),
                    _ => replaced_as("2")(n, rv, document),
                }
            });
        let config = StoreConfig {
            backoff: BackoffPolicy {
                jitter: 0.0,
                ..StoreConfig::default().backoff
            },
            ..StoreConfig::default()
        };
        let initial = config.backoff.initial;
        let store = StateStore::with_config(mock, config);
        assert_eq!(store.update(TASK, bump).await.unwrap(), 1);
        let at = at.lock().unwrap();
        assert_eq!(
            at[1] - at[0],
            Duration::ZERO,
            "the first conflict: no pause"
        );
        assert_eq!(
            at[2] - at[1],
            initial,
            "the second: the backoff's first delay"
        );
        assert_eq!(store.metrics().conflicts.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_failing_with_5xx_are_retried_with_backoff_not_at_once() {
        let mut mock = MockStateBackend::new();
        mock.expect_get().returning(|_| Ok(Some(stored(0, "1"))));
        mock.expect_replace()
            .times(4)
            .returning(|_, _, _| Err(api(500)));
        let config = StoreConfig {
            max_attempts: 4,
            ..StoreConfig::default()
        };
        let floor = config.backoff.initial.mul_f64(1.0 - config.backoff.jitter);
        let started = Instant::now();
        let err = StateStore::with_config(mock, config)
            .update(TASK, bump)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::OutcomeUnknown { .. }), "{err}");
        // Three pauses between four attempts, growing from initial·(1 − jitter).
        assert!(
            started.elapsed() >= floor * (1 + 2 + 4),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_schema_is_never_overwritten() {
        let mut mock = MockStateBackend::new();
        mock.expect_get().returning(|_| {
            let mut doc = stored(0, "1");
            doc.document.data.insert(
                KEY_STATE.into(),
                r#"{"version":"v2","task_id":"t1","iteration":1}"#.into(),
            );
            Ok(Some(doc))
        });
        mock.expect_replace().never();
        let store = store(mock);
        let err = store.update(TASK, bump).await.unwrap_err();
        assert!(matches!(err, Error::UnsupportedVersion { ref found, .. } if found == "v2"));
        let snapshot = store.get(TASK).await.unwrap().unwrap();
        assert_eq!(
            snapshot.origin,
            SchemaOrigin::Newer {
                version: "v2".into()
            }
        );
        assert_eq!(snapshot.state.iteration, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalid_task_id_reaches_no_backend() {
        let mock = MockStateBackend::new();
        let store = store(mock);
        for id in ["../etc", "a,b", "UPPER", ""] {
            assert!(matches!(
                store.update(id, bump).await,
                Err(Error::InvalidTaskId { .. })
            ));
            assert!(matches!(
                store.get(id).await,
                Err(Error::InvalidTaskId { .. })
            ));
            assert!(matches!(
                store.delete(id, "1").await,
                Err(Error::InvalidTaskId { .. })
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_state_too_large_for_a_config_map_is_rejected_without_writing() {
        let mut mock = MockStateBackend::new();
        mock.expect_get().returning(|_| Ok(Some(stored(0, "1"))));
        mock.expect_replace().never();
        let err = store(mock)
            .update(TASK, |s| {
                // Incompressible: hex of a pseudo-random sequence.
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                let noise: String = (0..200_000)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        format!("{:08x}", x as u32)
                    })
                    .collect();
                s.metadata.insert("noise".into(), noise);
                Ok::<_, Error>(())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stored_state_that_breaks_an_invariant_is_reported_not_overwritten() {
        let mut mock = MockStateBackend::new();
        mock.expect_get().returning(|_| {
            // Another task's state under this task's name.
            let mut s = RemediationState::new("another-task", Timestamp::UNIX_EPOCH);
            s.iteration = 2;
            Ok(Some(doc_of(&s, "1")))
        });
        mock.expect_replace().never();
        let store = store(mock);
        assert!(matches!(
            store.update(TASK, bump).await,
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(store.get(TASK).await, Err(Error::Invalid { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_closure_that_breaks_an_invariant_writes_nothing() {
        let mut mock = MockStateBackend::new();
        mock.expect_get().returning(|_| Ok(Some(stored(0, "1"))));
        mock.expect_replace().never();
        let err = store(mock)
            .update(TASK, |s| {
                s.task_id = "other".into();
                Ok::<_, Error>(())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_fencing_token_writes_nothing() {
        let mut mock = MockStateBackend::new();
        mock.expect_get().returning(|_| {
            let mut s = RemediationState::new(TASK, Timestamp::UNIX_EPOCH);
            s.highest_fencing_token = Some(FencingToken::new("u", Timestamp::UNIX_EPOCH, 5));
            Ok(Some(doc_of(&s, "1")))
        });
        mock.expect_replace().never();
        let err = store(mock)
            .update_fenced(
                TASK,
                &FencingToken::new("u", Timestamp::UNIX_EPOCH, 4),
                bump,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::FencingTokenRefused { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_state_is_not_written() {
        let mut mock = MockStateBackend::new();
        mock.expect_get()
            .times(1)
            .returning(|_| Ok(Some(stored(2, "1"))));
        mock.expect_replace().never();
        let n = store(mock)
            .update(TASK, |s| Ok::<_, Error>(s.iteration))
            .await
            .unwrap();
        assert_eq!(n, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_stamps_the_time_and_keeps_the_write_log_whatever_the_closure_did() {
        let mut mock = MockStateBackend::new();
        mock.expect_get().returning(|_| Ok(Some(stored(0, "1"))));
        mock.expect_replace()
            .withf(|_, _, doc| {
                let s = decoded(doc);
                s.version == "v1"
                    && s.applied_writes().len() == 1
                    && s.last_update > Timestamp::UNIX_EPOCH
            })
            .times(1)
            .returning(replaced_as("2"));
        store(mock)
            .update(TASK, |s| {
                s.version = "v9".into();
                s.iteration = 1;
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_conditional_delete_reports_conflicts_and_tolerates_absence() {
        let mut mock = MockStateBackend::new();
        let calls = AtomicU32::new(0);
        mock.expect_delete()
            .withf(|n, rv| n == NAME && rv == "3")
            .returning(move |n, _| match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(Error::Conflict { name: n.into() }),
                1 => Ok(()),
                _ => Err(Error::NotFound { name: n.into() }),
            });
        let store = store(mock);
        assert!(matches!(
            store.delete(TASK, "3").await,
            Err(Error::Conflict { .. })
        ));
        assert!(store.delete(TASK, "3").await.unwrap());
        assert!(!store.delete(TASK, "3").await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn listing_skips_documents_whose_label_does_not_match_their_name() {
        let mut mock = MockStateBackend::new();
        mock.expect_list()
            .withf(|labels| labels.get("app").map(String::as_str) == Some("remediation-state"))
            .returning(|_| {
                let good = stored(1, "1");
                let mut forged = stored(1, "2");
                forged.name = "task-other-state".into();
                Ok(vec![good, forged])
            });
        let all = store(mock).list().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state.task_id, TASK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_selector_that_could_widen_the_list_reaches_no_backend() {
        let mock = MockStateBackend::new();
        let store = store(mock);
        let labels = BTreeMap::from([("stage".to_owned(), "a,app!=x".to_owned())]);
        let err = store.list_matching(&labels).await.unwrap_err();
        assert!(matches!(err, Error::InvalidSelector { .. }));
        // Replacing the store's own selector would list other ConfigMaps.
        let labels = BTreeMap::from([("app".to_owned(), "something-else".to_owned())]);
        let err = store.list_matching(&labels).await.unwrap_err();
        assert!(matches!(err, Error::InvalidSelector { .. }), "{err}");
    }

    #[test]
    fn the_default_configuration_is_valid_and_nonsense_is_named() {
        StoreConfig::default().validate().unwrap();
        let bad = StoreConfig {
            size_limits: SizeLimits {
                max_document: 2 * 1024 * 1024,
                ..SizeLimits::default()
            },
            ..StoreConfig::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("max_document"), "{err}");
        let bad = StoreConfig {
            max_attempts: 0,
            ..StoreConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("max_attempts")
        );
    }

    /// A backend whose writes hang after being applied, like a server that
    /// stores the write and then never answers.
    struct HangingWrites(crate::MemoryBackend);

    #[async_trait::async_trait]
    impl StateBackend for HangingWrites {
        async fn get(&self, name: &str) -> Result<Option<StoredDocument>> {
            self.0.get(name).await
        }
        async fn create(&self, name: &str, document: Document) -> Result<StoredDocument> {
            self.0.create(name, document).await?;
            std::future::pending().await
        }
        async fn replace(
            &self,
            name: &str,
            rv: &str,
            document: Document,
        ) -> Result<StoredDocument> {
            self.0.replace(name, rv, document).await?;
            std::future::pending().await
        }
        async fn delete(&self, name: &str, rv: &str) -> Result<()> {
            self.0.delete(name, rv).await
        }
        async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<StoredDocument>> {
            self.0.list(labels).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_never_answers_times_out_and_is_settled_by_re_reading() {
        let store = StateStore::new(HangingWrites(crate::MemoryBackend::new()));
        let started = Instant::now();
        assert_eq!(store.increment_iteration(TASK).await.unwrap(), 1);
        assert_eq!(store.increment_iteration(TASK).await.unwrap(), 2);
        assert_eq!(store.get(TASK).await.unwrap().unwrap().state.iteration, 2);
        assert!(started.elapsed() >= 2 * StoreConfig::default().call_timeout);
    }

    /// A backend whose first replace is applied, then — before its answer
    /// arrives — `others` more writes land through another store, then the
    /// answer is lost: the victim's write id has left the ring by the time it
    /// re-reads.
    struct AppliedThenBuriedUnderOtherWrites {
        memory: Arc<crate::MemoryBackend>,
        others: u32,
        fired: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl StateBackend for AppliedThenBuriedUnderOtherWrites {
        async fn get(&self, name: &str) -> Result<Option<StoredDocument>> {
            self.memory.get(name).await
        }
        async fn create(&self, name: &str, document: Document) -> Result<StoredDocument> {
            self.memory.create(name, document).await
        }
        async fn replace(
            &self,
            name: &str,
            rv: &str,
            document: Document,
        ) -> Result<StoredDocument> {
            let written = self.memory.replace(name, rv, document).await?;
            if self.fired.swap(true, Ordering::SeqCst) {
                return Ok(written);
            }
            let others = StateStore::with_config(self.memory.clone(), big_counter());
            for _ in 0..self.others {
                others.increment_iteration(TASK).await?;
            }
            Err(Error::Transport("connection reset after the write".into()))
        }
        async fn delete(&self, name: &str, rv: &str) -> Result<()> {
            self.memory.delete(name, rv).await
        }
        async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<StoredDocument>> {
            self.memory.list(labels).await
        }
    }

    fn big_counter() -> StoreConfig {
        StoreConfig {
            max_iterations: 10_000,
            ..StoreConfig::default()
        }
    }

    async fn victim_after_buried_write(others: u32) -> (Result<u32>, u32) {
        let memory = Arc::new(crate::MemoryBackend::new());
        let config = big_counter();
        let setup = StateStore::with_config(memory.clone(), config.clone());
        setup.increment_iteration(TASK).await.unwrap();
        let victim = StateStore::with_config(
            AppliedThenBuriedUnderOtherWrites {
                memory: memory.clone(),
                others,
                fired: std::sync::atomic::AtomicBool::new(false),
            },
            config,
        );
        let outcome = victim.increment_iteration(TASK).await;
        let last = setup.get(TASK).await.unwrap().unwrap().state.iteration;
        (outcome, last)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_settles_while_its_write_id_is_still_remembered() {
        let (outcome, last) = victim_after_buried_write(10).await;
        // 1 (setup) + the victim's write (2) + 10 others.
        assert_eq!(outcome.unwrap(), 2);
        assert_eq!(last, 12);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_buried_under_more_writes_than_the_ring_holds_is_never_applied_twice() {
        let others = crate::schema::MAX_APPLIED_WRITES as u32 + 5;
        let (outcome, last) = victim_after_buried_write(others).await;
        assert_eq!(last, 2 + others, "the victim's increment was applied twice");
        assert!(
            matches!(outcome, Err(Error::OutcomeUnknown { .. })),
            "{outcome:?}"
        );
    }

    /// A backend whose LIST takes `list_takes` (many pages on a slow server).
    struct SlowList {
        memory: crate::MemoryBackend,
        list_takes: Duration,
    }

    #[async_trait::async_trait]
    impl StateBackend for SlowList {
        async fn get(&self, name: &str) -> Result<Option<StoredDocument>> {
            self.memory.get(name).await
        }
        async fn create(&self, name: &str, document: Document) -> Result<StoredDocument> {
            self.memory.create(name, document).await
        }
        async fn replace(&self, name: &str, rv: &str, doc: Document) -> Result<StoredDocument> {
            self.memory.replace(name, rv, doc).await
        }
        async fn delete(&self, name: &str, rv: &str) -> Result<()> {
            self.memory.delete(name, rv).await
        }
        async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<StoredDocument>> {
            tokio::time::sleep(self.list_takes).await;
            self.memory.list(labels).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_of_many_pages_has_its_own_longer_bound() {
        let config = StoreConfig::default();
        let slow = |list_takes| SlowList {
            memory: crate::MemoryBackend::new(),
            list_takes,
        };
        // Longer than one call may take, within the bound of a whole list.
        let store = StateStore::new(slow(3 * config.call_timeout));
        store.increment_iteration(TASK).await.unwrap();
        assert_eq!(store.list().await.unwrap().len(), 1);
        let store = StateStore::new(slow(2 * config.list_timeout));
        assert!(matches!(store.list().await, Err(Error::Transport(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_list_is_returned() {
        let mut mock = MockStateBackend::new();
        mock.expect_list().returning(|_| Err(api(500)));
        assert!(matches!(
            store(mock).list().await,
            Err(Error::Api { code: 500, .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn reaching_the_maximum_never_overwrites_a_final_status() {
        let config = StoreConfig {
            max_iterations: 1,
            ..StoreConfig::default()
        };
        let store = StateStore::with_config(crate::MemoryBackend::new(), config);
        assert_eq!(store.increment_iteration(TASK).await.unwrap(), 1);
        store
            .update(TASK, |s| {
                s.status = TaskStatus::Completed;
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
        let err = store.increment_iteration(TASK).await.unwrap_err();
        assert!(matches!(err, Error::MaxIterationsReached { max: 1, .. }));
        let state = store.get(TASK).await.unwrap().unwrap().state;
        assert_eq!(state.status, TaskStatus::Completed);
        assert_eq!(state.iteration, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn reaching_the_maximum_sets_the_status_and_fails() {
        let mut mock = MockStateBackend::new();
        mock.expect_get().returning(|_| Ok(Some(stored(10, "1"))));
        mock.expect_replace()
            .withf(|_, _, doc| decoded(doc).status == TaskStatus::MaxIterationsReached)
            .times(1)
            .returning(replaced_as("2"));
        let err = store(mock).increment_iteration(TASK).await.unwrap_err();
        assert!(matches!(err, Error::MaxIterationsReached { max: 10, .. }));
    }
}
