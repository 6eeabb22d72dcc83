//! The label transition: compare-and-swap against an API that has no
//! compare-and-swap.
//!
//! GitHub takes no precondition on label writes, so the transition is
//! *detect and repair*: read (conditionally, free when unchanged), check the
//! preconditions, claim each label to remove with its own DELETE (200 means
//! we took it; 404 means another writer moved first), add everything in one
//! POST, and verify the label list the last write returned.
//!
//! Rule kept here: **a transition ends applied, already in state, or failed
//! with nothing of ours left behind** — on a conflict, on interference that
//! outlasts the retries and on any error after a write, what this
//! transition changed is undone; only if the undo itself fails is the error
//! [`Error::PartiallyApplied`], listing exactly what remains — and so it is
//! once the lock is lost, for then nothing is written any more, not even an
//! undo (the new holder may already have moved the PR on). "Ours" is kept
//! honest: a change another writer has since reverted is theirs, and the
//! undo leaves it alone.
//!
//! The cancel-safety rule of the whole workspace holds here too: a protocol
//! step runs to completion in an owned task; a caller's timeout or drop
//! never strands half-done state; nothing writes after `lost()` fired. A
//! transition is spawned onto the runtime and the caller only awaits its
//! answer, so dropping the caller's future changes nothing about how the
//! transition ends (its unheard result is counted); the cancellation token
//! never abandons a request in flight; and a lost lock stops every write.
//! Only the task itself being dropped (the runtime shutting down) can leave
//! changes behind, and that is logged and counted
//! (`transitions{result="dropped"}`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use resilience::{Backoff, BackoffPolicy, RetryPolicy};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::cache::EtagCache;
use crate::{
    Error, Fetched, LabelBackend, LabelSet, Metrics, PrLock, PrLockGuard, PrRef, RemoveOutcome,
    Result, validate_label_names,
};

/// GitHub allows at most 100 labels on an issue; longer lists are mistakes.
const MAX_LABELS_PER_LIST: usize = 100;

/// What a transition requires and changes. Names compare case-insensitively.
///
/// ```
/// use label_cas::LabelTransition;
///
/// // supersede's default: the PR leaves QA and enters remediation.
/// let t = LabelTransition::move_label("ready-for-qa", "remediation-in-progress");
/// assert_eq!(t.require_present, ["ready-for-qa"]);
/// assert_eq!(t.remove, ["ready-for-qa"]);
/// assert_eq!(t.add, ["remediation-in-progress"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelTransition {
    /// Labels that must be on the PR (unless this transition removed them).
    pub require_present: Vec<String>,
    /// Labels that must not be on the PR (unless this transition adds them).
    pub require_absent: Vec<String>,
    /// Labels to add, all in one call.
    pub add: Vec<String>,
    /// Labels to remove, one claiming DELETE each.
    pub remove: Vec<String>,
}

impl LabelTransition {
    /// An empty transition (a pure check until labels are added to it).
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves a PR from stage `from` to stage `to`: requires `from`, removes
    /// it, adds `to`. Of several writers making the same move, the one
    /// whose DELETE removes `from` wins; the others see a conflict or find
    /// the PR already in state.
    pub fn move_label(from: impl Into<String>, to: impl Into<String>) -> Self {
        let from = from.into();
        Self {
            require_present: vec![from.clone()],
            require_absent: Vec::new(),
            add: vec![to.into()],
            remove: vec![from],
        }
    }

    /// Adds labels to [`require_present`](Self::require_present).
    #[must_use]
    pub fn requiring<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.require_present
            .extend(names.into_iter().map(Into::into));
        self
    }

    /// Adds labels to [`require_absent`](Self::require_absent).
    #[must_use]
    pub fn forbidding<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.require_absent
            .extend(names.into_iter().map(Into::into));
        self
    }

    /// Adds labels to [`add`](Self::add).
    #[must_use]
    pub fn adding<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.add.extend(names.into_iter().map(Into::into));
        self
    }

    /// Adds labels to [`remove`](Self::remove).
    #[must_use]
    pub fn removing<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.remove.extend(names.into_iter().map(Into::into));
        self
    }

    /// Checks every name and rejects contradictions (a label both added and
    /// removed, or both required and forbidden) and lists over 100 labels.
    pub fn validate(&self) -> Result<()> {
        for list in [
            &self.require_present,
            &self.require_absent,
            &self.add,
            &self.remove,
        ] {
            validate_label_names(list)?;
            check_list_length(list)?;
        }
        if let Some(both) = self.add.iter().find(|n| contains(&self.remove, n)) {
            return Err(Error::InvalidTransition {
                reason: format!("{both:?} is both added and removed"),
            });
        }
        if let Some(both) = self
            .require_present
            .iter()
            .find(|n| contains(&self.require_absent, n))
        {
            return Err(Error::InvalidTransition {
                reason: format!("{both:?} is both required and forbidden"),
            });
        }
        Ok(())
    }

    /// Whether `labels` already are the target state: every addition and
    /// required label present, every removal and forbidden label absent
    /// (a required label this transition removes, or a forbidden one it
    /// adds, counts as done).
    pub fn is_satisfied_by(&self, labels: &LabelSet) -> bool {
        self.add.iter().all(|n| labels.contains(n))
            && !self.remove.iter().any(|n| labels.contains(n))
            && self
                .require_present
                .iter()
                .filter(|n| !contains(&self.remove, n))
                .all(|n| labels.contains(n))
            && !self
                .require_absent
                .iter()
                .filter(|n| !contains(&self.add, n))
                .any(|n| labels.contains(n))
    }

    /// Whether `labels`, read by someone else, lead straight to a claiming
    /// DELETE: not the target yet, the preconditions holding, and a label
    /// to remove among them.
    fn claims_from(&self, labels: &LabelSet) -> bool {
        !self.is_satisfied_by(labels)
            && self.violation(labels, &Changes::default()).is_none()
            && self.remove.iter().any(|n| labels.contains(n))
    }

    /// Why `labels` violate the preconditions, if they do. Our own earlier
    /// changes excuse a label: one we removed may be missing, one we added
    /// may be present.
    fn violation(&self, labels: &LabelSet, ours: &Changes) -> Option<String> {
        let missing: Vec<&str> = self
            .require_present
            .iter()
            .filter(|n| !labels.contains(n) && !contains(&ours.removed, n))
            .map(String::as_str)
            .collect();
        let present: Vec<&str> = self
            .require_absent
            .iter()
            .filter(|n| labels.contains(n) && !contains(&ours.added, n))
            .map(String::as_str)
            .collect();
        match (missing.is_empty(), present.is_empty()) {
            (true, true) => None,
            (false, true) => Some(format!("required labels missing: {missing:?}")),
            (true, false) => Some(format!("forbidden labels present: {present:?}")),
            (false, false) => Some(format!(
                "required labels missing: {missing:?}; forbidden labels present: {present:?}"
            )),
        }
    }
}

/// How a successful transition ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionResult {
    /// This call changed the labels into the target state.
    Applied,
    /// The labels already were in the target state; nothing was written.
    AlreadyInState,
}

/// What a successful transition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionOutcome {
    /// Applied, or already in state.
    pub result: TransitionResult,
    /// Labels this call added.
    pub added: Vec<String>,
    /// Labels this call removed.
    pub removed: Vec<String>,
    /// The labels after the transition, as the last call returned them.
    pub final_labels: LabelSet,
    /// Attempts (1 unless interference forced a retry).
    pub attempts: u32,
    /// API calls made (reads included).
    pub calls: u32,
}

impl TransitionOutcome {
    /// Whether this call changed the labels.
    pub fn applied(&self) -> bool {
        self.result == TransitionResult::Applied
    }
}

/// Bounds and delays of [`AtomicLabelManager`].
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionPolicy {
    /// Attempts of one transition when verification shows interference.
    pub max_attempts: u32,
    /// Delays between those attempts.
    pub interference_backoff: BackoffPolicy,
    /// Retries of one call that failed transiently (reads and POSTs, which
    /// are idempotent; a DELETE is re-sent only after a re-read proved it
    /// did not happen).
    pub call_retry: RetryPolicy,
    /// Pull requests whose last read (ETag and labels) is remembered.
    pub cache_capacity: usize,
    /// Transitions [`transition_many`](AtomicLabelManager::transition_many)
    /// runs at once.
    pub max_concurrency: usize,
}

impl Default for TransitionPolicy {
    /// 3 attempts 1–4 s apart (±25 %); calls retried per
    /// [`RetryPolicy::default`] (3 attempts); 4096 cached pull requests;
    /// 10 transitions at once.
    ///
    /// Why: interference is another writer in the same second — a couple
    /// of seconds later it is over or it is a real conflict, which more
    /// attempts would not fix. 4096 entries of a few hundred bytes cover
    /// every open PR of a large organisation. 10 matches the coordinator's
    /// worker pool; mutations are serialised per installation anyway.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            interference_backoff: BackoffPolicy {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(4),
                ..BackoffPolicy::default()
            },
            call_retry: RetryPolicy::default(),
            cache_capacity: 4096,
            max_concurrency: 10,
        }
    }
}

impl TransitionPolicy {
    /// Rejects zero attempts or concurrency and invalid backoff/retry policies.
    pub fn validate(&self) -> Result<()> {
        let config = |reason: String| Err(Error::Config { reason });
        if self.max_attempts == 0 {
            return config("max_attempts must be at least 1".into());
        }
        if self.max_concurrency == 0 {
            return config("max_concurrency must be at least 1".into());
        }
        if let Err(e) = self.interference_backoff.validate() {
            return config(e.to_string());
        }
        if let Err(e) = self.call_retry.validate() {
            return config(e.to_string());
        }
        Ok(())
    }
}

/// Moves pull requests between label states safely against racing writers.
///
/// A transition, in order: take the [`PrLock`] if one is configured; read
/// the labels conditionally (`If-None-Match` with the cached ETag, free when
/// unchanged); if they already are the target state, stop — no write; if a
/// precondition fails, [`Error::Conflict`]; otherwise DELETE each label to
/// remove (200 claims it; 404 means another writer moved first: undo and
/// [`Error::Conflict`] — unless a DELETE of ours for that label may already
/// have landed, whose 404 is ours), POST all additions at once, and verify
/// the list the last write returned — interference is retried with backoff,
/// a bounded number of times, then undone. Each transition runs to
/// completion in a task of its own, so a caller's timeout or dropped future
/// never leaves it half-done. The crate README says what "atomic" means
/// against GitHub.
///
/// Give it a [`RateLimited`](crate::RateLimited) backend in production, so
/// its calls respect GitHub's limits, and a [`PrLock`] when several of our
/// workers may move the same pull request.
pub struct AtomicLabelManager<B> {
    core: Core<B>,
}

/// Everything a transition works with, cheap to clone into the task that
/// runs it.
struct Core<B> {
    backend: Arc<B>,
    lock: Option<Arc<dyn PrLock>>,
    policy: Arc<TransitionPolicy>,
    cache: Arc<EtagCache>,
    metrics: Metrics,
    cancel: CancellationToken,
}

impl<B> Clone for Core<B> {
    fn clone(&self) -> Self {
        Self {
            backend: Arc::clone(&self.backend),
            lock: self.lock.clone(),
            policy: Arc::clone(&self.policy),
            cache: Arc::clone(&self.cache),
            metrics: self.metrics.clone(),
            cancel: self.cancel.clone(),
        }
    }
}

impl<B> std::fmt::Debug for AtomicLabelManager<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicLabelManager")
            .field("locked", &self.core.lock.is_some())
            .field("policy", &self.core.policy)
            .finish_non_exhaustive()
    }
}

impl<B: LabelBackend + 'static> AtomicLabelManager<B> {
    /// A manager over `backend` with the default policy, no lock, fresh
    /// metrics.
    pub fn new(backend: B) -> Self {
        let policy = TransitionPolicy::default();
        Self {
            core: Core {
                backend: Arc::new(backend),
                lock: None,
                cache: Arc::new(EtagCache::new(policy.cache_capacity)),
                policy: Arc::new(policy),
                metrics: Metrics::default(),
                cancel: CancellationToken::new(),
            },
        }
    }

    /// Uses `policy` (validated).
    pub fn with_policy(mut self, policy: TransitionPolicy) -> Result<Self> {
        policy.validate()?;
        self.core.cache = Arc::new(EtagCache::new(policy.cache_capacity));
        self.core.policy = Arc::new(policy);
        Ok(self)
    }

    /// Holds `lock` for the pull request during each transition.
    #[must_use]
    pub fn with_lock(mut self, lock: Arc<dyn PrLock>) -> Self {
        self.core.lock = Some(lock);
        self
    }

    /// Reports into `metrics` (share it with the backend's).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.core.metrics = metrics;
        self
    }

    /// Stops transitions cleanly when `cancel` fires: no new transition
    /// starts, waits (for the lock, between retries) end, and a transition
    /// under way undoes what it changed and fails with [`Error::Cancelled`].
    /// A request already sent is never abandoned (its answer decides what
    /// is undone), and the undo's calls are each tried once.
    ///
    /// Dropping a transition's future is not a way to stop it: the
    /// transition runs on in its own task (see the crate documentation,
    /// "Cancellation").
    #[must_use]
    pub fn with_cancellation(mut self, cancel: CancellationToken) -> Self {
        self.core.cancel = cancel;
        self
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.core.backend
    }

    /// The metrics this manager reports into.
    pub fn metrics(&self) -> &Metrics {
        &self.core.metrics
    }

    /// Moves `pr`'s labels as `transition` says (the algorithm is described
    /// on [`AtomicLabelManager`]).
    ///
    /// The transition runs to completion in a task of its own (on the
    /// current tokio runtime): if this future is dropped — a caller's
    /// timeout, an aborted task — the transition still finishes, or undoes
    /// what it changed, exactly as if it had been awaited; its result is
    /// then logged and counted
    /// ([`Metrics::unawaited_count`]) instead of returned.
    /// A panic in it (a backend's bug) is resumed here.
    ///
    /// Errors: [`Error::Conflict`] (preconditions not met, or another writer
    /// claimed a label first; our changes undone), [`Error::Interference`],
    /// [`Error::PartiallyApplied`] (an undo failed, or the lock was lost),
    /// [`Error::Cancelled`] (the token fired, or the runtime is shutting
    /// down), validation errors before any call, and backend errors (after
    /// undoing).
    pub async fn transition(
        &self,
        pr: &PrRef,
        transition: &LabelTransition,
    ) -> Result<TransitionOutcome> {
        let core = self.core.clone();
        let (pr, transition) = (pr.clone(), transition.clone());
        self.owned("transition", async move {
            core.transition(&pr, &transition, None).await
        })
        .await
    }

    /// Like [`transition`](Self::transition), starting from labels the
    /// caller has just read — a pull request's labels from
    /// [`PullRequestReader::current`](crate::PullRequestReader::current) —
    /// instead of the manager's own first read: a move then costs exactly
    /// its claiming DELETE and its POST.
    ///
    /// It is as safe as `transition`, because what makes a transition
    /// correct are GitHub's answers to its writes, not its read: `known`
    /// only decides which claims to send. Precisely:
    ///
    /// - `known` is used only when it leads straight to a claiming DELETE
    ///   (the labels are not the target yet, the preconditions hold on them
    ///   and a label to remove is among them). Otherwise — already in
    ///   state, a precondition failing, nothing to claim — the manager
    ///   reads the labels itself and goes on exactly as `transition`: an
    ///   outcome without a write is never decided on the caller's labels.
    /// - A first claim answered 404 (the label was already gone: `known`
    ///   was stale, or another writer moved first) changed nothing of ours,
    ///   so the manager reads and decides again, as a `transition` started
    ///   at that moment would: a conflict then carries the labels as they
    ///   are, not as `known` had them.
    /// - After the first DELETE's answer everything is `transition`'s path:
    ///   additions are computed against GitHub's newest list, a later lost
    ///   claim is a conflict with our changes undone, and the list the last
    ///   write returned is verified (a required label gone or a forbidden
    ///   one present meanwhile is interference: re-read, retried, undone).
    ///
    /// Errors and the owned-task behaviour are those of `transition`.
    pub async fn transition_from(
        &self,
        pr: &PrRef,
        transition: &LabelTransition,
        known: &LabelSet,
    ) -> Result<TransitionOutcome> {
        let core = self.core.clone();
        let (pr, transition, known) = (pr.clone(), transition.clone(), known.clone());
        self.owned("transition", async move {
            core.transition(&pr, &transition, Some(&known)).await
        })
        .await
    }

    /// Runs many transitions, at most
    /// [`max_concurrency`](TransitionPolicy::max_concurrency) at once;
    /// results come back in the order of `items`. Each transition makes one
    /// call per change (all additions of a PR in one POST). Dropping this
    /// future lets the transitions already started finish and starts no
    /// other.
    pub async fn transition_many(
        &self,
        items: &[(PrRef, LabelTransition)],
    ) -> Vec<Result<TransitionOutcome>> {
        futures::stream::iter(items)
            .map(|(pr, transition)| self.transition(pr, transition))
            .buffered(self.core.policy.max_concurrency.max(1))
            .collect()
            .await
    }

    /// The labels of `pr`, read conditionally (free when unchanged).
    pub async fn labels(&self, pr: &PrRef) -> Result<LabelSet> {
        self.core.labels(pr).await
    }

    /// Sets exactly `names` with one PUT, under the lock. Refused with
    /// [`Error::LockRequired`] without one: a PUT drops whatever other
    /// writers added since we looked. Even under our lock a human's change
    /// in the same instant can be lost; use it for repairs, not routine moves.
    ///
    /// Like [`transition`](Self::transition) it runs in a task of its own:
    /// dropping this future never releases the lock while the PUT is in
    /// flight.
    pub async fn replace_under_lock(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
        let core = self.core.clone();
        let (pr, names) = (pr.clone(), names.to_vec());
        self.owned("replace", async move {
            core.replace_under_lock(&pr, &names).await
        })
        .await
    }

    /// Runs `step` to completion in a task of its own and returns its
    /// result; if this future is dropped first, the step goes on and its
    /// result is counted as unawaited (the step logs it itself).
    async fn owned<T, F>(&self, step_name: &'static str, step: F) -> Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let (answer, heard) = tokio::sync::oneshot::channel();
        let metrics = self.core.metrics.clone();
        let task = tokio::spawn(
            async move {
                let result = step.await;
                if answer.send(result).is_err() {
                    metrics.unawaited();
                    tracing::warn!(
                        step = step_name,
                        "the caller stopped waiting for this label change; it ran to its end \
                         anyway (its result is logged above)"
                    );
                }
            }
            .instrument(tracing::Span::current()),
        );
        match heard.await {
            Ok(result) => result,
            // The task ended without answering: it panicked, or the runtime
            // is shutting down and dropped it (its `Run` logged what is left).
            Err(_) => match task.await {
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                _ => Err(Error::Cancelled),
            },
        }
    }
}

impl<B: LabelBackend> Core<B> {
    /// The transition itself, logged and counted by how it ended.
    async fn transition(
        &self,
        pr: &PrRef,
        transition: &LabelTransition,
        known: Option<&LabelSet>,
    ) -> Result<TransitionOutcome> {
        let span = tracing::info_span!("label_transition", pr = %pr, from_known = known.is_some());
        let mut lock_lost = false;
        let result = async {
            transition.validate()?;
            let guard = self.lock_for(pr).await?;
            let mut run = Run::new(pr, guard.as_ref(), &self.metrics);
            let result = self.run(pr, transition, known, &mut run).await;
            run.finished = true;
            lock_lost = run.lock_lost;
            result
        }
        .instrument(span.clone())
        .await;
        let _entered = span.enter();
        match &result {
            Ok(outcome) => {
                let result = match outcome.result {
                    TransitionResult::Applied => "applied",
                    TransitionResult::AlreadyInState => "already_in_state",
                };
                self.metrics.transition(result);
                tracing::info!(
                    result,
                    added = ?outcome.added,
                    removed = ?outcome.removed,
                    calls = outcome.calls,
                    attempts = outcome.attempts,
                    "label transition done"
                );
            }
            Err(error) if lock_lost => {
                self.metrics.transition("lock_lost");
                tracing::error!(
                    %error,
                    "the lock was lost mid-transition: nothing more was written, and what this \
                     transition changed stays in place for the new holder or the reconciler"
                );
            }
            Err(error @ Error::Conflict { .. }) => {
                self.metrics.transition("conflict");
                tracing::info!(%error, "label transition conflicts");
            }
            Err(error) => {
                self.metrics.transition("failed");
                tracing::warn!(%error, "label transition failed");
            }
        }
        result
    }

    async fn labels(&self, pr: &PrRef) -> Result<LabelSet> {
        let mut run = Run::new(pr, None, &self.metrics);
        let labels = self.read(pr, &mut run).await;
        run.finished = true;
        labels
    }

    async fn replace_under_lock(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
        validate_label_names(names)?;
        check_list_length(names)?;
        if self.lock.is_none() {
            return Err(Error::LockRequired);
        }
        let guard = self.lock_for(pr).await?;
        let mut run = Run::new(pr, guard.as_ref(), &self.metrics);
        run.check_lock()?;
        let labels = self
            .with_retry(&mut run, Some(Sending::Replacement(names.to_vec())), || {
                self.backend.replace(pr, names)
            })
            .await;
        run.finished = true;
        labels
    }

    /// Takes the configured lock for `pr` (none without one); cancellable.
    async fn lock_for(&self, pr: &PrRef) -> Result<Option<PrLockGuard>> {
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let Some(lock) = &self.lock else {
            return Ok(None);
        };
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(Error::Cancelled),
            guard = lock.lock(pr) => guard.map(Some),
        }
    }

    /// The attempts of one transition. `known` labels stand in for the
    /// first read only when they lead straight to a claiming DELETE (see
    /// [`AtomicLabelManager::transition_from`]).
    async fn run(
        &self,
        pr: &PrRef,
        transition: &LabelTransition,
        known: Option<&LabelSet>,
        run: &mut Run<'_>,
    ) -> Result<TransitionOutcome> {
        let mut backoff = Backoff::new(self.policy.interference_backoff.clone());
        let max_attempts = self.policy.max_attempts.max(1);
        let mut known = known
            .filter(|labels| transition.claims_from(labels))
            .cloned();
        let mut attempt = 1;
        loop {
            let from_known = known.is_some();
            let current = match known.take() {
                Some(labels) => labels,
                None => match self.read(pr, run).await {
                    Ok(current) => current,
                    Err(error) => return Err(self.abandon(pr, run, error).await),
                },
            };
            run.changes.observe(&current);
            if transition.is_satisfied_by(&current) {
                let result = if run.changes.is_empty() {
                    TransitionResult::AlreadyInState
                } else {
                    TransitionResult::Applied
                };
                return Ok(run.outcome(result, current, attempt));
            }
            if let Some(reason) = transition.violation(&current, &run.changes) {
                let current = self.undo(pr, run, current).await?;
                return Err(Error::Conflict { reason, current });
            }
            let last = match self.apply(pr, transition, &current, run).await {
                Ok(Step::Written(last)) => last,
                Ok(Step::Lost { name, .. }) if from_known && run.changes.is_empty() => {
                    // Nothing of ours changed: this is a transition starting
                    // now, decided on a read (the same attempt).
                    tracing::info!(
                        label = %name,
                        "the caller's labels were stale (the label was already gone); reading them"
                    );
                    continue;
                }
                Ok(Step::Lost { name, seen }) => {
                    let current = self.undo(pr, run, seen).await?;
                    return Err(Error::Conflict {
                        reason: format!("another writer removed {name:?} first"),
                        current,
                    });
                }
                Err(error) => return Err(self.abandon(pr, run, error).await),
            };
            // The list the last write returned is the verification.
            if transition.is_satisfied_by(&last) {
                return Ok(run.outcome(TransitionResult::Applied, last, attempt));
            }
            self.metrics.interference();
            if let Err(lost) = run.check_lock() {
                // Not ours to retry any more: the new holder decides.
                return Err(self.abandon(pr, run, lost).await);
            }
            tracing::warn!(attempt, labels = %last, "another writer interfered; retrying the transition");
            if attempt >= max_attempts {
                break;
            }
            attempt += 1;
            let delay = backoff
                .next_delay()
                .unwrap_or(self.policy.interference_backoff.max);
            if !self.sleep(delay).await {
                return Err(self.abandon(pr, run, Error::Cancelled).await);
            }
        }
        let error = Error::Interference {
            attempts: max_attempts,
        };
        Err(self.abandon(pr, run, error).await)
    }

    /// Claims each removal, then adds in one call what the latest labels
    /// seen still lack.
    async fn apply(
        &self,
        pr: &PrRef,
        transition: &LabelTransition,
        current: &LabelSet,
        run: &mut Run<'_>,
    ) -> Result<Step> {
        // Claimed in one global order (like locks), so that of two
        // transitions contending for the same labels one always wins: in
        // different orders each could take one label and both would lose.
        let mut to_remove: Vec<&String> = transition
            .remove
            .iter()
            .filter(|n| current.contains(n))
            .collect();
        to_remove.sort_by_cached_key(|n| n.to_lowercase());
        let mut last = None;
        for name in to_remove {
            run.check_lock()?;
            match self.claim_removal(pr, name, run).await? {
                Claim::Ours(labels) => {
                    run.changes.record_removed(name);
                    run.changes.observe(&labels);
                    last = Some(labels);
                }
                Claim::Lost => {
                    // What we know without another read: the labels as last
                    // seen, minus the one that is now provably gone.
                    let seen = without(last.as_ref().unwrap_or(current), name);
                    return Ok(Step::Lost {
                        name: name.clone(),
                        seen,
                    });
                }
            }
        }
        // Against the newest list we have (a DELETE's answer is newer than
        // our read): a label someone else added meanwhile is theirs, not
        // ours to add — and so never ours to take away in an undo.
        let known = last.as_ref().unwrap_or(current);
        let to_add: Vec<String> = transition
            .add
            .iter()
            .filter(|n| !known.contains(n))
            .cloned()
            .collect();
        if !to_add.is_empty() {
            run.check_lock()?;
            let labels = self.add_all(pr, &to_add, run).await?;
            run.changes.record_added(&to_add);
            run.changes.observe(&labels);
            last = Some(labels);
        }
        Ok(Step::Written(last.unwrap_or_else(|| current.clone())))
    }

    /// One POST of `names`, retried on transient errors (adding is
    /// idempotent). If any attempt may have landed and the call still
    /// fails, the additions are recorded as ours so the undo takes them
    /// away (a DELETE of an absent label is harmless).
    async fn add_all(&self, pr: &PrRef, names: &[String], run: &mut Run<'_>) -> Result<LabelSet> {
        let mut retries = self.retries();
        let mut maybe_applied = false;
        run.sending = Some(Sending::Additions(names.to_vec()));
        let result = loop {
            if let Err(lost) = run.check_lock() {
                break Err(lost);
            }
            run.calls += 1;
            let error = match self.backend.add(pr, names).await {
                Ok(labels) => break Ok(labels),
                Err(error) => error,
            };
            maybe_applied |= error.maybe_applied();
            if let Err(error) = retries.wait_to_retry(error).await {
                break Err(error);
            }
        };
        run.sending = None;
        if result.is_err() && maybe_applied {
            run.changes.record_added(names);
        }
        result
    }

    /// One DELETE as a claim on `name`. A DELETE that may have been applied
    /// without our hearing the answer is not re-sent blindly: the labels are
    /// re-read and the decision made on what they show. Once a DELETE of
    /// ours is in doubt, a 404 is no longer proof that another writer moved
    /// first — GitHub's reads can lag its writes, so the re-read may still
    /// show a label our first DELETE already removed — and it counts as our
    /// removal (the same bet as a label gone on re-read; see the README).
    async fn claim_removal(&self, pr: &PrRef, name: &str, run: &mut Run<'_>) -> Result<Claim> {
        let mut retries = self.retries();
        // The labels as last read, once a DELETE of ours may have landed.
        let mut in_doubt: Option<LabelSet> = None;
        loop {
            if let Err(lost) = run.check_lock() {
                if in_doubt.is_some() {
                    run.changes.record_removed(name);
                }
                return Err(lost);
            }
            run.calls += 1;
            // Stays set until we know what the DELETE did (through the
            // re-read below, if its answer is lost).
            run.sending = Some(Sending::Removal(name.to_owned()));
            let error = match self.backend.remove(pr, name).await {
                Ok(RemoveOutcome::Removed(labels)) => {
                    run.sending = None;
                    return Ok(Claim::Ours(labels));
                }
                Ok(RemoveOutcome::Absent) => {
                    run.sending = None;
                    return Ok(match in_doubt {
                        None => Claim::Lost,
                        Some(seen) => {
                            tracing::info!(
                                label = name,
                                "the DELETE sent again found the label gone: our earlier DELETE removed it"
                            );
                            Claim::Ours(without(&seen, name))
                        }
                    });
                }
                Err(error) => error,
            };
            if error.maybe_applied() {
                tracing::warn!(label = name, %error, "DELETE may have been applied; re-reading instead of re-sending");
                let read = self.read(pr, run).await;
                run.sending = None;
                let now = match read {
                    Ok(now) => now,
                    Err(read_error) => {
                        // Unknown whether it went: restoring it is the safe side.
                        run.changes.record_removed(name);
                        return Err(read_error);
                    }
                };
                if !now.contains(name) {
                    // Gone: by far most likely our DELETE, whose answer was
                    // lost (see the README for the residual risk).
                    return Ok(Claim::Ours(now));
                }
                tracing::info!(
                    label = name,
                    "the labels still show it (the DELETE did not happen, or the read lags); sending it again"
                );
                in_doubt = Some(now);
            }
            run.sending = None;
            if let Err(error) = retries.wait_to_retry(error).await {
                if in_doubt.is_some() {
                    // It may be gone by our hand: restoring it is the safe side.
                    run.changes.record_removed(name);
                }
                return Err(error);
            }
        }
    }

    /// A conditional read through the ETag cache.
    async fn read(&self, pr: &PrRef, run: &mut Run<'_>) -> Result<LabelSet> {
        let key = pr.key();
        let cached = self.cache.get(&key);
        let etag = cached.as_ref().map(|(etag, _)| etag);
        let answer = match self
            .with_retry(run, None, || self.backend.get(pr, etag))
            .await?
        {
            Fetched::Labels { labels, etag } => Some((labels, etag)),
            Fetched::NotModified => None,
        };
        self.cache.settle(&key, cached, answer)
    }

    /// Restores what this run changed; `fallback` is returned when there is
    /// nothing to undo.
    async fn undo(&self, pr: &PrRef, run: &mut Run<'_>, fallback: LabelSet) -> Result<LabelSet> {
        if run.changes.is_empty() {
            return Ok(fallback);
        }
        // With the lock lost, the new holder may already have moved the PR
        // on: re-adding a label we removed would put back a stage it left.
        if let Err(lost) = run.check_lock() {
            return Err(run.changes.partial(lost));
        }
        tracing::info!(added = ?run.changes.added, removed = ?run.changes.removed, "undoing this transition's changes");
        let mut last = fallback;
        while let Some(name) = run.changes.added.first().cloned() {
            // Re-sending this DELETE is fine: a 404 just means it is gone.
            let sending = Some(Sending::Removal(name.clone()));
            match self
                .with_retry(run, sending, || self.backend.remove(pr, &name))
                .await
            {
                Ok(RemoveOutcome::Removed(labels)) => last = labels,
                Ok(RemoveOutcome::Absent) => last = without(&last, &name),
                Err(error) => return Err(run.changes.partial(error)),
            }
            run.changes.added.remove(0);
        }
        if !run.changes.removed.is_empty() {
            let removed = run.changes.removed.clone();
            let sending = Some(Sending::Additions(removed.clone()));
            match self
                .with_retry(run, sending, || self.backend.add(pr, &removed))
                .await
            {
                Ok(labels) => last = labels,
                Err(error) => return Err(run.changes.partial(error)),
            }
            run.changes.removed.clear();
        }
        Ok(last)
    }

    /// Undoes after `error`; returns the error to report.
    async fn abandon(&self, pr: &PrRef, run: &mut Run<'_>, error: Error) -> Error {
        if run.changes.is_empty() {
            return error;
        }
        tracing::warn!(%error, "label transition interrupted");
        match self.undo(pr, run, LabelSet::default()).await {
            Ok(_) => error,
            // Not undone on purpose (`transition` says so): no write after
            // the lock is lost.
            Err(undo_error) if run.lock_lost => undo_error,
            Err(undo_error) => {
                tracing::error!(%error, %undo_error, "could not undo an interrupted label transition");
                undo_error
            }
        }
    }

    /// Sends an idempotent call, again after transient failures. `sending`
    /// names a write (what a drop in flight would leave unknown); reads pass
    /// `None` and leave whatever write is still unanswered in place.
    async fn with_retry<T, F, Fut>(
        &self,
        run: &mut Run<'_>,
        sending: Option<Sending>,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut retries = self.retries();
        let writes = sending.is_some();
        if writes {
            run.sending = sending;
        }
        let result = loop {
            if writes && let Err(lost) = run.check_lock() {
                break Err(lost);
            }
            run.calls += 1;
            match op().await {
                Ok(value) => break Ok(value),
                Err(error) => {
                    if let Err(error) = retries.wait_to_retry(error).await {
                        break Err(error);
                    }
                }
            }
        };
        if writes {
            run.sending = None;
        }
        result
    }

    fn retries(&self) -> Retries<'_> {
        Retries::new(&self.policy.call_retry, &self.cancel)
    }

    /// Sleeps unless cancelled; `false` when cancelled.
    async fn sleep(&self, delay: Duration) -> bool {
        sleep_unless_cancelled(&self.cancel, delay).await
    }
}

/// Retries of one call: bounded by the policy's attempts and time budget,
/// delays from its backoff (or the server's `retry-after`, capped). Only the
/// waits *between* attempts end on cancellation — an attempt in flight is
/// never dropped, so the outcome of every request sent is known.
struct Retries<'p> {
    policy: &'p RetryPolicy,
    cancel: &'p CancellationToken,
    backoff: Backoff,
    attempts: u32,
    started: tokio::time::Instant,
}

impl<'p> Retries<'p> {
    fn new(policy: &'p RetryPolicy, cancel: &'p CancellationToken) -> Self {
        Self {
            policy,
            cancel,
            backoff: Backoff::new(policy.backoff.clone()),
            attempts: 1,
            started: tokio::time::Instant::now(),
        }
    }

    /// After a failed attempt: `Ok` once it is time for the next one, or
    /// the error to report — `error` itself when it is permanent or the
    /// budget is spent, [`Error::Cancelled`] when the token fired.
    async fn wait_to_retry(&mut self, error: Error) -> Result<()> {
        if !error.is_transient() || self.attempts >= self.policy.max_attempts.max(1) {
            return Err(error);
        }
        let Some(delay) = self.backoff.next_delay() else {
            return Err(error);
        };
        let delay = error.retry_after().map_or(delay, |asked| {
            delay.max(asked.min(self.policy.max_retry_after))
        });
        if self
            .policy
            .max_elapsed
            .is_some_and(|budget| self.started.elapsed().saturating_add(delay) > budget)
        {
            return Err(error);
        }
        tracing::info!(
            attempt = self.attempts,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            %error,
            "GitHub call failed transiently; sending it again"
        );
        if !sleep_unless_cancelled(self.cancel, delay).await {
            return Err(Error::Cancelled);
        }
        self.attempts += 1;
        Ok(())
    }
}

/// Sleeps for `delay` unless `cancel` fires first; `false` when cancelled.
async fn sleep_unless_cancelled(cancel: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        biased;
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Rejects lists longer than GitHub accepts.
fn check_list_length(names: &[String]) -> Result<()> {
    if names.len() > MAX_LABELS_PER_LIST {
        return Err(Error::InvalidTransition {
            reason: format!(
                "{} labels in one list; GitHub allows at most {MAX_LABELS_PER_LIST}",
                names.len()
            ),
        });
    }
    Ok(())
}

/// The result of one pass of writes.
enum Step {
    /// All writes went through; the labels the last one returned.
    Written(LabelSet),
    /// Another writer removed `name` before our DELETE; `seen` is our best
    /// knowledge of the labels now.
    Lost { name: String, seen: LabelSet },
}

/// The answer to a claiming DELETE.
enum Claim {
    /// We removed it; the labels afterwards.
    Ours(LabelSet),
    /// Someone else removed it first.
    Lost,
}

/// What this transition has changed so far (what an undo restores).
///
/// Only what is still ours: a label we removed that shows up again was put
/// back by someone else, and a label we added that has gone was taken away
/// by someone else — from then on it is theirs, and an undo must not touch
/// it (re-adding a label another writer has since claimed, or removing one
/// another writer has since added, would undo *their* transition).
#[derive(Debug, Default)]
struct Changes {
    removed: Vec<String>,
    added: Vec<String>,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty()
    }

    fn record_removed(&mut self, name: &str) {
        if !contains(&self.removed, name) {
            self.removed.push(name.to_owned());
        }
        self.added
            .retain(|n| n.to_lowercase() != name.to_lowercase());
    }

    fn record_added(&mut self, names: &[String]) {
        for name in names {
            if !contains(&self.added, name) {
                self.added.push(name.clone());
            }
            self.removed
                .retain(|n| n.to_lowercase() != name.to_lowercase());
        }
    }

    /// Forgets what `labels` (an answer from GitHub) show another writer
    /// has since reverted.
    fn observe(&mut self, labels: &LabelSet) {
        self.removed.retain(|n| !labels.contains(n));
        self.added.retain(|n| labels.contains(n));
    }

    fn partial(&self, source: Error) -> Error {
        Error::PartiallyApplied {
            removed: self.removed.clone(),
            added: self.added.clone(),
            source: Box::new(source),
        }
    }
}

/// A write whose answer has not arrived yet.
enum Sending {
    /// A DELETE of one label.
    Removal(String),
    /// A POST of these labels.
    Additions(Vec<String>),
    /// A PUT of exactly these labels.
    Replacement(Vec<String>),
}

impl std::fmt::Display for Sending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sending::Removal(name) => write!(f, "DELETE {name:?}"),
            Sending::Additions(names) => write!(f, "POST {names:?}"),
            Sending::Replacement(names) => write!(f, "PUT {names:?}"),
        }
    }
}

/// The state of one transition call. If its task is dropped before it
/// finished, what it leaves on the pull request is logged and counted.
struct Run<'a> {
    pr: &'a PrRef,
    metrics: &'a Metrics,
    guard: Option<&'a PrLockGuard>,
    calls: u32,
    changes: Changes,
    sending: Option<Sending>,
    finished: bool,
    /// A write was refused because the lock was lost.
    lock_lost: bool,
}

impl<'a> Run<'a> {
    fn new(pr: &'a PrRef, guard: Option<&'a PrLockGuard>, metrics: &'a Metrics) -> Self {
        Self {
            pr,
            metrics,
            guard,
            calls: 0,
            changes: Changes::default(),
            sending: None,
            finished: false,
            lock_lost: false,
        }
    }

    /// Refuses to write once the lock is lost: from then on another holder
    /// may be moving the pull request, and any write of ours — an undo
    /// included — could land on top of its work.
    fn check_lock(&mut self) -> Result<()> {
        if self.guard.is_some_and(PrLockGuard::is_lost) {
            self.lock_lost = true;
            return Err(Error::Lock {
                reason: "the lock was lost during the transition; nothing was written after that"
                    .into(),
                transient: true,
            });
        }
        Ok(())
    }

    fn outcome(
        &self,
        result: TransitionResult,
        final_labels: LabelSet,
        attempts: u32,
    ) -> TransitionOutcome {
        TransitionOutcome {
            result,
            added: self.changes.added.clone(),
            removed: self.changes.removed.clone(),
            final_labels,
            attempts,
            calls: self.calls,
        }
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        if self.finished || (self.changes.is_empty() && self.sending.is_none()) {
            return;
        }
        // The owned task itself was dropped half-way (the runtime shut
        // down, a panic unwound through it): nothing can be undone from
        // here, so say exactly what is left for whoever repairs it.
        self.metrics.transition("dropped");
        tracing::error!(
            pr = %self.pr,
            still_removed = ?self.changes.removed,
            still_added = ?self.changes.added,
            unanswered = ?self.sending.as_ref().map(ToString::to_string),
            "label transition dropped before it finished; these changes remain on the pull request"
        );
    }
}

/// `labels` without `name` (case-insensitive).
fn without(labels: &LabelSet, name: &str) -> LabelSet {
    let key = name.to_lowercase();
    LabelSet::new(
        labels
            .iter()
            .filter(|n| n.to_lowercase() != key)
            .map(str::to_owned),
    )
}

/// Case-insensitive membership in a list of names.
fn contains(list: &[String], name: &str) -> bool {
    let key = name.to_lowercase();
    list.iter().any(|n| n.to_lowercase() == key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ETag, LocalPrLocks, MemoryLabels, MockLabelBackend, MockPrLock};
    use mockall::Sequence;
    use mockall::predicate::eq;
    use std::sync::atomic::Ordering;

    fn pr() -> PrRef {
        PrRef::new("acme", "widgets", 7).unwrap()
    }

    fn set(names: &[&str]) -> LabelSet {
        LabelSet::new(names.iter().copied())
    }

    fn fetched(names: &[&str], etag: &str) -> Fetched {
        Fetched::Labels {
            labels: set(names),
            etag: ETag::new(format!("\"{etag}\"")),
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn stage() -> LabelTransition {
        LabelTransition::move_label("ready-for-qa", "in-progress")
    }

    /// Fast, jitter-free delays so paused-time tests are exact.
    fn quick_policy() -> TransitionPolicy {
        let backoff = BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(4),
            jitter: 0.0,
            ..BackoffPolicy::default()
        };
        TransitionPolicy {
            interference_backoff: backoff.clone(),
            call_retry: RetryPolicy {
                backoff,
                ..RetryPolicy::default()
            },
            ..TransitionPolicy::default()
        }
    }

    fn manager(mock: MockLabelBackend) -> AtomicLabelManager<MockLabelBackend> {
        manager_over(mock)
    }

    fn manager_over<B: LabelBackend + 'static>(backend: B) -> AtomicLabelManager<B> {
        AtomicLabelManager::new(backend)
            .with_policy(quick_policy())
            .unwrap()
    }

    #[tokio::test]
    async fn a_pull_request_already_in_the_target_state_gets_no_write_at_all() {
        let mut mock = MockLabelBackend::new();
        mock.expect_get()
            .times(1)
            .returning(|_, _| Ok(fetched(&["in-progress", "human"], "1")));
        // No expectation for add/remove/replace: any write panics the test.
        let outcome = manager(mock).transition(&pr(), &stage()).await.unwrap();
        assert_eq!(outcome.result, TransitionResult::AlreadyInState);
        assert_eq!(outcome.calls, 1);
        assert!(outcome.added.is_empty() && outcome.removed.is_empty());
    }

    #[tokio::test]
    async fn a_move_is_one_read_one_claiming_delete_and_one_post() {
        let mut mock = MockLabelBackend::new();
        let mut seq = Sequence::new();
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(fetched(&["ready-for-qa", "human"], "1")));
        mock.expect_remove()
            .with(eq(pr()), eq("ready-for-qa"))
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(RemoveOutcome::Removed(set(&["human"]))));
        mock.expect_add()
            .withf(|_, added| added == ["in-progress"])
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(set(&["human", "in-progress"])));
        let outcome = manager(mock).transition(&pr(), &stage()).await.unwrap();
        assert_eq!(outcome.result, TransitionResult::Applied);
        assert_eq!(
            (outcome.removed, outcome.added),
            (names(&["ready-for-qa"]), names(&["in-progress"]))
        );
        assert_eq!(outcome.final_labels, set(&["human", "in-progress"]));
        assert_eq!((outcome.calls, outcome.attempts), (3, 1));
    }

    #[tokio::test]
    async fn a_missing_precondition_is_a_conflict_with_the_current_labels_and_no_write() {
        let mut mock = MockLabelBackend::new();
        mock.expect_get()
            .returning(|_, _| Ok(fetched(&["human"], "1")));
        let err = manager(mock).transition(&pr(), &stage()).await.unwrap_err();
        let Error::Conflict { current, reason } = err else {
            panic!("{err}")
        };
        assert_eq!(current, set(&["human"]));
        assert!(reason.contains("ready-for-qa"), "{reason}");
    }

    #[tokio::test]
    async fn a_forbidden_label_present_is_a_conflict() {
        let mut mock = MockLabelBackend::new();
        mock.expect_get()
            .returning(|_, _| Ok(fetched(&["ready-for-qa", "do-not-touch"], "1")));
        let transition = stage().forbidding(["do-not-touch"]);
        let err = manager(mock)
            .transition(&pr(), &transition)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Conflict { reason, .. } if reason.contains("do-not-touch")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_lost_claim_is_a_conflict_and_the_removals_already_made_are_undone() {
        let mut mock = MockLabelBackend::new();
        let mut seq = Sequence::new();
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(fetched(&["a", "b", "human"], "1")));
        mock.expect_remove()
            .with(eq(pr()), eq("a"))
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(RemoveOutcome::Removed(set(&["b", "human"]))));
        // Someone else took "b" between our read and our DELETE.
        mock.expect_remove()
            .with(eq(pr()), eq("b"))
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(RemoveOutcome::Absent));
        mock.expect_add()
            .withf(|_, added| added == ["a"])
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(set(&["a", "c", "human"])));
        let transition = LabelTransition::new().removing(["a", "b"]).adding(["done"]);
        let err = manager(mock)
            .transition(&pr(), &transition)
            .await
            .unwrap_err();
        let Error::Conflict { current, reason } = err else {
            panic!("{err}")
        };
        assert!(reason.contains("\"b\""), "{reason}");
        assert_eq!(
            current,
            set(&["a", "c", "human"]),
            "the labels after our undo"
        );
    }

    #[tokio::test]
    async fn removals_are_claimed_in_one_order_whatever_order_they_were_given_in() {
        let mut mock = MockLabelBackend::new();
        let mut seq = Sequence::new();
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(fetched(&["a", "B", "c"], "1")));
        for (name, rest) in [("a", &["B", "c"][..]), ("B", &["c"]), ("c", &[])] {
            let rest = set(rest);
            mock.expect_remove()
                .with(eq(pr()), eq(name))
                .times(1)
                .in_sequence(&mut seq)
                .returning(move |_, _| Ok(RemoveOutcome::Removed(rest.clone())));
        }
        let transition = LabelTransition::new().removing(["c", "a", "B"]);
        let outcome = manager(mock).transition(&pr(), &transition).await.unwrap();
        assert!(outcome.final_labels.is_empty());
    }

    #[tokio::test]
    async fn a_lost_claim_before_any_change_reports_the_labels_without_that_label() {
        let mut mock = MockLabelBackend::new();
        mock.expect_get()
            .returning(|_, _| Ok(fetched(&["ready-for-qa", "human"], "1")));
        mock.expect_remove()
            .times(1)
            .returning(|_, _| Ok(RemoveOutcome::Absent));
        let err = manager(mock).transition(&pr(), &stage()).await.unwrap_err();
        assert!(matches!(err, Error::Conflict { current, .. } if current == set(&["human"])));
    }

    #[tokio::test]
    async fn a_delete_whose_answer_was_lost_is_not_resent_when_the_label_is_gone() {
        let mut mock = MockLabelBackend::new();
        let mut seq = Sequence::new();
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(fetched(&["ready-for-qa"], "1")));
        mock.expect_remove()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| {
                Err(Error::Transport {
                    message: "connection reset".into(),
                    sent: true,
                    mutation: true,
                })
            });
        // The re-read shows it gone: our DELETE went through.
        mock.expect_get()
            .withf(|_, etag| etag.is_some_and(|e| e.as_str() == "\"1\""))
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(fetched(&[], "2")));
        mock.expect_add()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(set(&["in-progress"])));
        let outcome = manager(mock).transition(&pr(), &stage()).await.unwrap();
        assert_eq!(outcome.result, TransitionResult::Applied);
        assert_eq!(
            outcome.calls, 4,
            "GET, DELETE (lost answer), GET, POST — the DELETE sent once"
        );
    }

    /// A mock that reads `ready-for-qa`, times out on its DELETE (which may
    /// have landed), and re-reads it unchanged (304); what follows is the
    /// test's.
    fn a_delete_in_doubt_and_a_read_that_still_shows_it() -> (MockLabelBackend, Sequence) {
        let mut mock = MockLabelBackend::new();
        let mut seq = Sequence::new();
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(fetched(&["ready-for-qa"], "1")));
        mock.expect_remove()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| {
                Err(Error::Timeout {
                    after: Duration::from_secs(30),
                    mutation: true,
                })
            });
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(Fetched::NotModified));
        (mock, seq)
    }

    #[tokio::test(start_paused = true)]
    async fn a_delete_whose_answer_was_lost_is_sent_again_only_after_a_read_shows_it_did_not_happen()
     {
        let (mut mock, mut seq) = a_delete_in_doubt_and_a_read_that_still_shows_it();
        mock.expect_remove()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(RemoveOutcome::Removed(LabelSet::default())));
        mock.expect_add()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(set(&["in-progress"])));
        let outcome = manager(mock).transition(&pr(), &stage()).await.unwrap();
        assert_eq!(outcome.calls, 5);
    }

    /// [`MemoryLabels`] whose first DELETE is applied and then loses its
    /// answer (the connection drops after GitHub acted), and whose next read
    /// still shows the label: GitHub's reads can lag its writes.
    struct LostDeleteAnswer {
        inner: MemoryLabels,
        /// What the lagging read answers, once.
        stale: std::sync::Mutex<Option<LabelSet>>,
        dropped: std::sync::atomic::AtomicBool,
    }

    impl LostDeleteAnswer {
        fn new(labels: &[&str]) -> Self {
            let inner = MemoryLabels::new();
            inner.set_labels(&pr(), labels.iter().copied());
            Self {
                inner,
                stale: std::sync::Mutex::default(),
                dropped: false.into(),
            }
        }
    }

    #[async_trait::async_trait]
    impl LabelBackend for LostDeleteAnswer {
        async fn get<'a>(&self, pr: &PrRef, etag: Option<&'a ETag>) -> Result<Fetched> {
            if let Some(labels) = self.stale.lock().unwrap().take() {
                return Ok(Fetched::Labels { labels, etag: None });
            }
            self.inner.get(pr, etag).await
        }
        async fn add(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
            self.inner.add(pr, names).await
        }
        async fn remove(&self, pr: &PrRef, name: &str) -> Result<RemoveOutcome> {
            if self.dropped.swap(true, Ordering::SeqCst) {
                return self.inner.remove(pr, name).await;
            }
            let before = self.inner.labels(pr);
            self.inner.remove(pr, name).await?;
            *self.stale.lock().unwrap() = Some(before);
            Err(Error::Transport {
                message: "connection reset after the request was sent".into(),
                sent: true,
                mutation: true,
            })
        }
        async fn replace(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
            self.inner.replace(pr, names).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_404_to_a_delete_sent_again_after_a_lost_answer_is_our_own_removal_not_a_conflict() {
        let lagging = LostDeleteAnswer::new(&["ready-for-qa", "human"]);
        let manager = AtomicLabelManager::new(lagging)
            .with_policy(quick_policy())
            .unwrap();
        // GET, DELETE (applied, answer lost), GET (still shows it), DELETE
        // again (404: it is gone — by our first DELETE), POST.
        let outcome = manager.transition(&pr(), &stage()).await.unwrap();
        assert_eq!(outcome.result, TransitionResult::Applied);
        assert_eq!(
            (outcome.removed, outcome.added),
            (names(&["ready-for-qa"]), names(&["in-progress"]))
        );
        assert_eq!(
            manager.backend().inner.labels(&pr()),
            set(&["human", "in-progress"]),
            "the PR is in the target stage, not left with neither label"
        );
        assert_eq!(manager.metrics().transitions("conflict"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delete_in_doubt_that_cannot_be_settled_is_undone_by_putting_the_label_back() {
        let (mut mock, mut seq) = a_delete_in_doubt_and_a_read_that_still_shows_it();
        // The DELETE sent again is refused: whether the first one removed
        // the label stays unknown.
        mock.expect_remove()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| {
                Err(Error::Forbidden {
                    message: "Resource not accessible by integration".into(),
                })
            });
        // So the undo puts it back (a no-op if it never went).
        mock.expect_add()
            .withf(|_, added| added == ["ready-for-qa"])
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(set(&["ready-for-qa"])));
        let err = manager(mock).transition(&pr(), &stage()).await.unwrap_err();
        assert!(matches!(err, Error::Forbidden { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_delete_is_sent_again_after_the_wait_github_asked_for() {
        let mut mock = MockLabelBackend::new();
        let mut seq = Sequence::new();
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(fetched(&["ready-for-qa"], "1")));
        mock.expect_remove()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| {
                Err(Error::RateLimited {
                    retry_after: Some(Duration::from_secs(20)),
                    reset: None,
                })
            });
        mock.expect_remove()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(RemoveOutcome::Removed(LabelSet::default())));
        mock.expect_add()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(set(&["in-progress"])));
        let started = tokio::time::Instant::now();
        manager(mock).transition(&pr(), &stage()).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn interference_seen_in_the_returned_labels_is_retried_until_the_state_holds() {
        let mut mock = MockLabelBackend::new();
        let mut seq = Sequence::new();
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(fetched(&["ready-for-qa"], "1")));
        mock.expect_remove()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(RemoveOutcome::Removed(LabelSet::default())));
        // Someone put ready-for-qa back before our POST.
        mock.expect_add()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(set(&["in-progress", "ready-for-qa"])));
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(fetched(&["in-progress", "ready-for-qa"], "2")));
        mock.expect_remove()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(RemoveOutcome::Removed(set(&["in-progress"]))));
        let manager = manager(mock);
        let started = tokio::time::Instant::now();
        let outcome = manager.transition(&pr(), &stage()).await.unwrap();
        assert_eq!(outcome.result, TransitionResult::Applied);
        assert_eq!((outcome.attempts, outcome.calls), (2, 5));
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1),
            "one backoff step"
        );
        assert_eq!(manager.metrics().interference_detected(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn interference_that_outlasts_the_attempts_is_undone_and_reported() {
        let mut mock = MockLabelBackend::new();
        mock.expect_get()
            .times(2)
            .returning(|_, _| Ok(fetched(&["ready-for-qa"], "1")));
        mock.expect_remove()
            .with(eq(pr()), eq("ready-for-qa"))
            .times(2)
            .returning(|_, _| Ok(RemoveOutcome::Removed(LabelSet::default())));
        // Every POST answer shows ready-for-qa back again.
        mock.expect_add()
            .withf(|_, added| added == ["in-progress"])
            .times(2)
            .returning(|_, _| Ok(set(&["in-progress", "ready-for-qa"])));
        // The undo takes our addition away. It does not POST ready-for-qa:
        // the answers showed someone else put it back, so it is theirs now.
        mock.expect_remove()
            .with(eq(pr()), eq("in-progress"))
            .times(1)
            .returning(|_, _| Ok(RemoveOutcome::Removed(set(&["ready-for-qa"]))));
        let policy = TransitionPolicy {
            max_attempts: 2,
            ..quick_policy()
        };
        let manager = AtomicLabelManager::new(mock).with_policy(policy).unwrap();
        let err = manager.transition(&pr(), &stage()).await.unwrap_err();
        assert!(matches!(err, Error::Interference { attempts: 2 }), "{err}");
        assert!(err.is_transient());
        assert_eq!(manager.metrics().transitions("failed"), 1);
    }

    #[tokio::test]
    async fn a_failed_addition_puts_back_the_label_already_claimed() {
        let mut mock = MockLabelBackend::new();
        mock.expect_get()
            .returning(|_, _| Ok(fetched(&["ready-for-qa"], "1")));
        mock.expect_remove()
            .times(1)
            .returning(|_, _| Ok(RemoveOutcome::Removed(LabelSet::default())));
        mock.expect_add()
            .withf(|_, added| added == ["in-progress"])
            .times(1)
            .returning(|_, _| {
                Err(Error::Forbidden {
                    message: "Resource not accessible by integration".into(),
                })
            });
        mock.expect_add()
            .withf(|_, added| added == ["ready-for-qa"])
            .times(1)
            .returning(|_, _| Ok(set(&["ready-for-qa"])));
        let err = manager(mock).transition(&pr(), &stage()).await.unwrap_err();
        assert!(
            matches!(err, Error::Forbidden { .. }),
            "the original error is reported: {err}"
        );
    }

    #[tokio::test]
    async fn an_undo_that_fails_reports_exactly_what_remains() {
        let mut mock = MockLabelBackend::new();
        mock.expect_get()
            .returning(|_, _| Ok(fetched(&["ready-for-qa"], "1")));
        mock.expect_remove()
            .times(1)
            .returning(|_, _| Ok(RemoveOutcome::Removed(LabelSet::default())));
        mock.expect_add()
            .withf(|_, added| added == ["in-progress"])
            .returning(|_, _| {
                Err(Error::Validation {
                    message: "Validation Failed".into(),
                })
            });
        mock.expect_add()
            .withf(|_, added| added == ["ready-for-qa"])
            .returning(|_, _| Err(Error::Unauthorized));
        let err = manager(mock).transition(&pr(), &stage()).await.unwrap_err();
        let Error::PartiallyApplied {
            removed,
            added,
            source,
        } = err
        else {
            panic!("{err}")
        };
        assert_eq!(removed, names(&["ready-for-qa"]));
        assert!(added.is_empty());
        assert!(matches!(*source, Error::Unauthorized));
    }

    #[tokio::test]
    async fn an_addition_that_may_have_landed_is_taken_away_by_the_undo() {
        let mut mock = MockLabelBackend::new();
        mock.expect_get().returning(|_, _| Ok(fetched(&[], "1")));
        mock.expect_add().times(1).returning(|_, _| {
            Err(Error::Transport {
                message: "reset".into(),
                sent: true,
                mutation: true,
            })
        });
        mock.expect_remove()
            .with(eq(pr()), eq("in-progress"))
            .times(1)
            .returning(|_, _| Ok(RemoveOutcome::Absent));
        let policy = TransitionPolicy {
            call_retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            ..quick_policy()
        };
        let manager = AtomicLabelManager::new(mock).with_policy(policy).unwrap();
        let transition = LabelTransition::new().adding(["in-progress"]);
        let err = manager.transition(&pr(), &transition).await.unwrap_err();
        assert!(err.maybe_applied(), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn transient_read_failures_are_retried_with_backoff() {
        let mut mock = MockLabelBackend::new();
        let mut seq = Sequence::new();
        mock.expect_get()
            .times(2)
            .in_sequence(&mut seq)
            .returning(|_, _| Err(Error::Server { status: 503 }));
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(fetched(&["in-progress"], "1")));
        let started = tokio::time::Instant::now();
        let outcome = manager(mock).transition(&pr(), &stage()).await.unwrap();
        assert_eq!(outcome.calls, 3);
        assert_eq!(started.elapsed(), Duration::from_secs(3), "1 s then 2 s");
    }

    #[tokio::test]
    async fn permanent_read_failures_are_not_retried() {
        let mut mock = MockLabelBackend::new();
        mock.expect_get().times(1).returning(|_, _| {
            Err(Error::NotFound {
                message: "Not Found".into(),
            })
        });
        let manager = manager(mock);
        assert!(matches!(
            manager.transition(&pr(), &stage()).await,
            Err(Error::NotFound { .. })
        ));
        assert_eq!(manager.metrics().transitions("failed"), 1);
    }

    #[tokio::test]
    async fn invalid_transitions_are_rejected_before_any_call() {
        let manager = manager(MockLabelBackend::new());
        for transition in [
            LabelTransition::move_label("ready-for-qa", " padded"),
            LabelTransition::move_label("x".repeat(51), "ok"),
            LabelTransition::new().adding(["a"]).removing(["A"]),
            LabelTransition::new().requiring(["a"]).forbidding(["a"]),
        ] {
            let err = manager.transition(&pr(), &transition).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidLabel { .. } | Error::InvalidTransition { .. }
                ),
                "{transition:?}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn a_304_for_an_unconditional_read_is_rejected() {
        let mut mock = MockLabelBackend::new();
        mock.expect_get().returning(|_, _| Ok(Fetched::NotModified));
        let err = manager(mock).transition(&pr(), &stage()).await.unwrap_err();
        assert!(matches!(err, Error::InvalidResponse { .. }), "{err}");
    }

    #[tokio::test]
    async fn the_second_read_of_an_unchanged_pull_request_is_a_free_304() {
        let labels = MemoryLabels::new();
        labels.set_labels(&pr(), ["in-progress"]);
        let manager = AtomicLabelManager::new(labels);
        for _ in 0..3 {
            let outcome = manager.transition(&pr(), &stage()).await.unwrap();
            assert_eq!(outcome.final_labels, set(&["in-progress"]));
        }
        let calls = manager.backend().calls();
        assert_eq!(
            (calls.get, calls.not_modified, calls.mutations()),
            (3, 2, 0)
        );
    }

    #[tokio::test]
    async fn a_lost_lock_stops_the_transition_before_its_first_write() {
        let mut mock = MockLabelBackend::new();
        mock.expect_get()
            .returning(|_, _| Ok(fetched(&["ready-for-qa"], "1")));
        let mut lock = MockPrLock::new();
        lock.expect_lock().times(1).returning(|_| {
            let lost = CancellationToken::new();
            lost.cancel();
            Ok(PrLockGuard::new(()).with_lost_signal(lost))
        });
        let manager = manager(mock).with_lock(Arc::new(lock));
        let err = manager.transition(&pr(), &stage()).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Lock {
                    transient: true,
                    ..
                }
            ),
            "{err}"
        );
    }

    /// A lock whose guard reports loss once `lost` fires.
    fn losable_lock(lost: &CancellationToken) -> Arc<dyn PrLock> {
        let lost = lost.clone();
        let mut lock = MockPrLock::new();
        lock.expect_lock()
            .times(1)
            .returning(move |_| Ok(PrLockGuard::new(()).with_lost_signal(lost.clone())));
        Arc::new(lock)
    }

    /// [`MemoryLabels`] on which our lease runs out while our first DELETE
    /// is in flight, and the new holder (another replica) at once finishes
    /// the move we started: it adds `in-progress`.
    struct NewHolderTakesOver {
        inner: MemoryLabels,
        lost: CancellationToken,
    }

    #[async_trait::async_trait]
    impl LabelBackend for NewHolderTakesOver {
        async fn get<'a>(&self, pr: &PrRef, etag: Option<&'a ETag>) -> Result<Fetched> {
            self.inner.get(pr, etag).await
        }
        async fn add(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
            self.inner.add(pr, names).await
        }
        async fn remove(&self, pr: &PrRef, name: &str) -> Result<RemoveOutcome> {
            let ours = self.inner.remove(pr, name).await;
            if !self.lost.is_cancelled() {
                self.lost.cancel();
                self.inner.add_label(pr, "in-progress");
            }
            ours
        }
        async fn replace(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
            self.inner.replace(pr, names).await
        }
    }

    #[tokio::test]
    async fn a_lock_lost_after_the_claim_writes_nothing_more_and_reports_what_it_left() {
        let lost = CancellationToken::new();
        let backend = NewHolderTakesOver {
            inner: MemoryLabels::new(),
            lost: lost.clone(),
        };
        backend.inner.set_labels(&pr(), ["ready-for-qa", "human"]);
        let manager = manager_over(backend).with_lock(losable_lock(&lost));
        let err = manager.transition(&pr(), &stage()).await.unwrap_err();
        let Error::PartiallyApplied {
            removed,
            added,
            source,
        } = err
        else {
            panic!("{err}")
        };
        assert_eq!((removed, added), (names(&["ready-for-qa"]), names(&[])));
        assert!(matches!(*source, Error::Lock { .. }), "{source}");
        assert_eq!(
            manager.backend().inner.labels(&pr()),
            set(&["human", "in-progress"]),
            "no undo wrote ready-for-qa back over the new holder's move"
        );
        assert_eq!(
            manager.backend().inner.calls().mutations(),
            1,
            "our DELETE, nothing after it"
        );
        assert_eq!(manager.metrics().transitions("lock_lost"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lock_lost_during_the_post_ends_the_transition_without_a_retry_or_an_undo() {
        let lost = CancellationToken::new();
        let mut mock = MockLabelBackend::new();
        let mut seq = Sequence::new();
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(fetched(&["ready-for-qa"], "1")));
        mock.expect_remove()
            .with(eq(pr()), eq("ready-for-qa"))
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(RemoveOutcome::Removed(LabelSet::default())));
        // The answer shows ready-for-qa back (interference), and the lease
        // ran out while the POST was in flight. No expectation follows: a
        // retry's read, a DELETE or an undo's write would fail the test.
        let lose = lost.clone();
        mock.expect_add()
            .withf(|_, added| added == ["in-progress"])
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, _| {
                lose.cancel();
                Ok(set(&["in-progress", "ready-for-qa"]))
            });
        let manager = manager(mock).with_lock(losable_lock(&lost));
        let err = manager.transition(&pr(), &stage()).await.unwrap_err();
        let Error::PartiallyApplied { removed, added, .. } = err else {
            panic!("{err}")
        };
        // ready-for-qa came back by someone else's hand: only our addition
        // is left of ours.
        assert_eq!((removed, added), (names(&[]), names(&["in-progress"])));
        assert_eq!(manager.metrics().transitions("lock_lost"), 1);
    }

    #[tokio::test]
    async fn replacing_all_labels_is_refused_without_a_lock() {
        let manager = manager(MockLabelBackend::new());
        let err = manager
            .replace_under_lock(&pr(), &names(&["a"]))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::LockRequired));
    }

    #[tokio::test]
    async fn replacing_all_labels_under_a_lock_is_one_put() {
        let labels = MemoryLabels::new();
        labels.set_labels(&pr(), ["old"]);
        let manager = AtomicLabelManager::new(labels).with_lock(Arc::new(LocalPrLocks::new()));
        let after = manager
            .replace_under_lock(&pr(), &names(&["new"]))
            .await
            .unwrap();
        assert_eq!(after, set(&["new"]));
        assert_eq!(manager.backend().calls().replace, 1);
    }

    #[tokio::test]
    async fn a_removal_the_pr_never_had_needs_no_delete() {
        let labels = MemoryLabels::new();
        labels.set_labels(&pr(), ["human"]);
        let manager = AtomicLabelManager::new(labels);
        let transition = LabelTransition::new()
            .removing(["stale"])
            .adding(["fresh", "other"]);
        let outcome = manager.transition(&pr(), &transition).await.unwrap();
        assert_eq!(outcome.final_labels, set(&["fresh", "human", "other"]));
        let calls = manager.backend().calls();
        assert_eq!(
            (calls.remove, calls.add),
            (0, 1),
            "both additions in one POST"
        );
    }

    #[tokio::test]
    async fn a_label_someone_else_added_before_our_post_is_not_ours_to_undo() {
        let mut mock = MockLabelBackend::new();
        mock.expect_get()
            .times(1)
            .returning(|_, _| Ok(fetched(&["ready-for-qa"], "1")));
        // Between our read and our DELETE, another writer added in-progress.
        mock.expect_remove()
            .with(eq(pr()), eq("ready-for-qa"))
            .times(1)
            .returning(|_, _| Ok(RemoveOutcome::Removed(set(&["in-progress"]))));
        // So only "extra" is ours to add; the answer shows ready-for-qa back.
        mock.expect_add()
            .withf(|_, added| added == ["extra"])
            .times(1)
            .returning(|_, _| Ok(set(&["extra", "in-progress", "ready-for-qa"])));
        // The undo takes away "extra" only: in-progress is the other
        // writer's, and ready-for-qa is back already.
        mock.expect_remove()
            .with(eq(pr()), eq("extra"))
            .times(1)
            .returning(|_, _| {
                Ok(RemoveOutcome::Removed(set(&[
                    "in-progress",
                    "ready-for-qa",
                ])))
            });
        let policy = TransitionPolicy {
            max_attempts: 1,
            ..quick_policy()
        };
        let manager = AtomicLabelManager::new(mock).with_policy(policy).unwrap();
        let transition = stage().adding(["extra"]);
        let err = manager.transition(&pr(), &transition).await.unwrap_err();
        assert!(matches!(err, Error::Interference { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_lost_on_a_retry_does_not_bring_back_the_label_another_writer_claimed() {
        let mut mock = MockLabelBackend::new();
        let mut seq = Sequence::new();
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(fetched(&["ready-for-qa"], "1")));
        mock.expect_remove()
            .with(eq(pr()), eq("ready-for-qa"))
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(RemoveOutcome::Removed(LabelSet::default())));
        // A human put ready-for-qa back before our POST: interference.
        mock.expect_add()
            .withf(|_, added| added == ["in-progress"])
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(set(&["in-progress", "ready-for-qa"])));
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(fetched(&["in-progress", "ready-for-qa"], "2")));
        // Another writer's DELETE claims it before ours on the retry.
        mock.expect_remove()
            .with(eq(pr()), eq("ready-for-qa"))
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(RemoveOutcome::Absent));
        // The undo takes away our addition, and must not POST ready-for-qa:
        // that would revert the other writer's claim.
        mock.expect_remove()
            .with(eq(pr()), eq("in-progress"))
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(RemoveOutcome::Removed(LabelSet::default())));
        let err = manager(mock).transition(&pr(), &stage()).await.unwrap_err();
        let Error::Conflict { current, .. } = err else {
            panic!("{err}")
        };
        assert!(current.is_empty(), "{current}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_addition_that_may_have_landed_in_any_attempt_is_undone() {
        let mut mock = MockLabelBackend::new();
        let mut seq = Sequence::new();
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(fetched(&["ready-for-qa"], "1")));
        mock.expect_remove()
            .with(eq(pr()), eq("ready-for-qa"))
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(RemoveOutcome::Removed(LabelSet::default())));
        // The first POST timed out (it may have landed); the second never
        // left. The last error alone says "not applied".
        mock.expect_add()
            .withf(|_, added| added == ["in-progress"])
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| {
                Err(Error::Timeout {
                    after: Duration::from_secs(30),
                    mutation: true,
                })
            });
        mock.expect_add()
            .withf(|_, added| added == ["in-progress"])
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| {
                Err(Error::Transport {
                    message: "connection refused".into(),
                    sent: false,
                    mutation: true,
                })
            });
        mock.expect_remove()
            .with(eq(pr()), eq("in-progress"))
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(RemoveOutcome::Removed(LabelSet::default())));
        mock.expect_add()
            .withf(|_, added| added == ["ready-for-qa"])
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(set(&["ready-for-qa"])));
        let policy = TransitionPolicy {
            call_retry: RetryPolicy {
                max_attempts: 2,
                ..quick_policy().call_retry
            },
            ..quick_policy()
        };
        let manager = AtomicLabelManager::new(mock).with_policy(policy).unwrap();
        let err = manager.transition(&pr(), &stage()).await.unwrap_err();
        assert!(matches!(err, Error::Transport { .. }), "{err}");
    }

    /// How the first POST of a [`SlowFirstPost`] ends, after its delay.
    #[derive(Clone, Copy)]
    enum FirstPost {
        /// Applied at once, answered after the delay.
        Lands,
        /// A transport error after the delay; it never left (retryable).
        NeverSent,
        /// Refused after the delay (403, permanent): the transition undoes.
        Refused,
    }

    /// [`MemoryLabels`] on `ready-for-qa`, `human` whose first POST answers
    /// only after `delay`, as `first` says; later POSTs go straight through.
    struct SlowFirstPost {
        inner: MemoryLabels,
        delay: Duration,
        first: FirstPost,
        used: std::sync::atomic::AtomicBool,
    }

    impl SlowFirstPost {
        fn new(delay: Duration, first: FirstPost) -> Self {
            let inner = MemoryLabels::new();
            inner.set_labels(&pr(), ["ready-for-qa", "human"]);
            Self {
                inner,
                delay,
                first,
                used: false.into(),
            }
        }
    }

    #[async_trait::async_trait]
    impl LabelBackend for SlowFirstPost {
        async fn get<'a>(&self, pr: &PrRef, etag: Option<&'a ETag>) -> Result<Fetched> {
            self.inner.get(pr, etag).await
        }
        async fn add(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
            if self.used.swap(true, Ordering::SeqCst) {
                return self.inner.add(pr, names).await;
            }
            if let FirstPost::Lands = self.first {
                self.inner.add(pr, names).await?;
            }
            tokio::time::sleep(self.delay).await;
            match self.first {
                FirstPost::Lands => Ok(self.inner.labels(pr)),
                FirstPost::NeverSent => Err(Error::Transport {
                    message: "connection refused".into(),
                    sent: false,
                    mutation: true,
                }),
                FirstPost::Refused => Err(Error::Forbidden {
                    message: "Resource not accessible by integration".into(),
                }),
            }
        }
        async fn remove(&self, pr: &PrRef, name: &str) -> Result<RemoveOutcome> {
            self.inner.remove(pr, name).await
        }
        async fn replace(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
            self.inner.replace(pr, names).await
        }
    }

    /// Runs `stage()` on `backend`, cancelling the manager after 1 s.
    async fn cancelled_after_a_second<B: LabelBackend + 'static>(
        backend: B,
    ) -> (Arc<AtomicLabelManager<B>>, Result<TransitionOutcome>) {
        let cancel = CancellationToken::new();
        let manager = Arc::new(
            AtomicLabelManager::new(backend)
                .with_policy(quick_policy())
                .unwrap()
                .with_cancellation(cancel.clone()),
        );
        let task = {
            let manager = Arc::clone(&manager);
            tokio::spawn(async move { manager.transition(&pr(), &stage()).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
        let result = task.await.unwrap();
        (manager, result)
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_never_abandons_a_post_in_flight() {
        let slow = SlowFirstPost::new(Duration::from_secs(5), FirstPost::Lands);
        let (manager, result) = cancelled_after_a_second(slow).await;
        // The POST landed; its answer is known, so the transition is done.
        let outcome = result.unwrap();
        assert_eq!(outcome.result, TransitionResult::Applied);
        assert_eq!(
            manager.backend().inner.labels(&pr()),
            set(&["human", "in-progress"])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_transition_still_undoes_what_it_changed() {
        let slow = SlowFirstPost::new(Duration::from_secs(5), FirstPost::NeverSent);
        let (manager, result) = cancelled_after_a_second(slow).await;
        let err = result.unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{err}");
        assert_eq!(
            manager.backend().inner.labels(&pr()),
            set(&["human", "ready-for-qa"]),
            "the claimed label is back, no retry was waited for"
        );
    }

    /// Runs `stage()` on `backend` for a caller that gives up after 10 s,
    /// then lets a minute pass.
    async fn caller_gives_up_after_ten_seconds<B: LabelBackend + 'static>(
        backend: B,
    ) -> AtomicLabelManager<B> {
        let manager = manager_over(backend);
        let gave_up =
            tokio::time::timeout(Duration::from_secs(10), manager.transition(&pr(), &stage()))
                .await;
        assert!(gave_up.is_err(), "the caller gave up");
        tokio::time::sleep(Duration::from_secs(60)).await;
        manager
    }

    #[tokio::test(start_paused = true)]
    async fn a_transition_whose_caller_gave_up_still_reaches_the_target_state() {
        // The POST fails after 30 s and is sent again, long after the caller left.
        let slow = SlowFirstPost::new(Duration::from_secs(30), FirstPost::NeverSent);
        let manager = caller_gives_up_after_ten_seconds(slow).await;
        assert_eq!(
            manager.backend().inner.labels(&pr()),
            set(&["human", "in-progress"])
        );
        let metrics = manager.metrics();
        assert_eq!(metrics.transitions("applied"), 1);
        assert_eq!(metrics.unawaited_count(), 1, "its result went unheard");
        assert_eq!(metrics.transitions("dropped"), 0, "nothing was stranded");
    }

    #[tokio::test(start_paused = true)]
    async fn a_transition_whose_caller_gave_up_is_undone_as_if_awaited() {
        let slow = SlowFirstPost::new(Duration::from_secs(30), FirstPost::Refused);
        let manager = caller_gives_up_after_ten_seconds(slow).await;
        assert_eq!(
            manager.backend().inner.labels(&pr()),
            set(&["human", "ready-for-qa"]),
            "the claimed label is back"
        );
        let metrics = manager.metrics();
        assert_eq!(metrics.transitions("failed"), 1);
        assert_eq!(metrics.unawaited_count(), 1);
        assert_eq!(metrics.transitions("dropped"), 0);
    }

    #[test]
    fn a_transition_stopped_by_a_runtime_shutdown_is_counted_and_the_documented_repair_completes_it()
     {
        let paused = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
        };
        let slow = SlowFirstPost::new(Duration::from_secs(3600), FirstPost::Refused);
        let manager = manager_over(slow);
        let runtime = paused();
        runtime.block_on(async {
            let gave_up =
                tokio::time::timeout(Duration::from_secs(10), manager.transition(&pr(), &stage()))
                    .await;
            assert!(gave_up.is_err(), "the caller gave up");
        });
        // The process stops: the runtime drops the task in the middle of
        // its POST. The one way left to strand half-done labels.
        drop(runtime);
        assert_eq!(manager.backend().inner.labels(&pr()), set(&["human"]));
        assert_eq!(manager.metrics().transitions("dropped"), 1);
        paused().block_on(async {
            // Re-running the same move conflicts (its precondition is gone)...
            assert!(matches!(
                manager.transition(&pr(), &stage()).await,
                Err(Error::Conflict { .. })
            ));
            // ...the repair is the move without its precondition.
            let repair = LabelTransition::new()
                .removing(["ready-for-qa"])
                .adding(["in-progress"]);
            let outcome = manager.transition(&pr(), &repair).await.unwrap();
            assert_eq!(outcome.final_labels, set(&["human", "in-progress"]));
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_transition_ends_at_the_target_or_untouched_whatever_the_moment() {
        let original = set(&["human", "ready-for-qa"]);
        let target = set(&["human", "in-progress"]);
        // Each call takes 10 ms: GET, DELETE, POST — dropped before, inside
        // and after each of them.
        for ms in (0..=40).step_by(5) {
            let inner = MemoryLabels::new();
            inner.set_labels(&pr(), original.iter());
            let slow = Slow {
                inner,
                in_flight: 0.into(),
                max_in_flight: 0.into(),
            };
            let manager = manager_over(slow);
            let _ = tokio::time::timeout(
                Duration::from_millis(ms),
                manager.transition(&pr(), &stage()),
            )
            .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let labels = manager.backend().inner.labels(&pr());
            assert!(
                labels == target || labels == original,
                "dropped after {ms} ms: {labels}"
            );
            assert_eq!(manager.metrics().transitions("dropped"), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_the_lock_ends_when_cancelled() {
        let locks = Arc::new(LocalPrLocks::new());
        let _held = locks.lock(&pr()).await.unwrap();
        let cancel = CancellationToken::new();
        let manager = Arc::new(
            AtomicLabelManager::new(MemoryLabels::new())
                .with_lock(locks)
                .with_cancellation(cancel.clone()),
        );
        let task = {
            let manager = Arc::clone(&manager);
            tokio::spawn(async move { manager.transition(&pr(), &stage()).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = tokio::time::Instant::now();
        cancel.cancel();
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{err}");
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "not the 60 s lock timeout"
        );
        assert_eq!(manager.backend().calls().total(), 0);
    }

    /// A backend that takes 10 ms per call and records how many calls
    /// overlap.
    struct Slow {
        inner: MemoryLabels,
        in_flight: std::sync::atomic::AtomicUsize,
        max_in_flight: std::sync::atomic::AtomicUsize,
    }

    impl Slow {
        async fn pace(&self) {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[async_trait::async_trait]
    impl LabelBackend for Slow {
        async fn get<'a>(&self, pr: &PrRef, etag: Option<&'a ETag>) -> Result<Fetched> {
            self.pace().await;
            self.inner.get(pr, etag).await
        }
        async fn add(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
            self.pace().await;
            self.inner.add(pr, names).await
        }
        async fn remove(&self, pr: &PrRef, name: &str) -> Result<RemoveOutcome> {
            self.pace().await;
            self.inner.remove(pr, name).await
        }
        async fn replace(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
            self.pace().await;
            self.inner.replace(pr, names).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn many_transitions_run_with_bounded_concurrency_and_answer_in_order() {
        let inner = MemoryLabels::new();
        let items: Vec<(PrRef, LabelTransition)> = (1..=12)
            .map(|n| {
                let pr = PrRef::new("acme", "widgets", n).unwrap();
                if n % 3 != 0 {
                    inner.set_labels(&pr, ["ready-for-qa"]);
                }
                (pr, stage())
            })
            .collect();
        let slow = Slow {
            inner,
            in_flight: 0.into(),
            max_in_flight: 0.into(),
        };
        let policy = TransitionPolicy {
            max_concurrency: 4,
            ..quick_policy()
        };
        let manager = AtomicLabelManager::new(slow).with_policy(policy).unwrap();
        let results = manager.transition_many(&items).await;
        for (n, result) in (1..=12).zip(&results) {
            match result {
                Ok(outcome) => assert!(n % 3 != 0 && outcome.applied(), "#{n}: {outcome:?}"),
                Err(Error::Conflict { .. }) => assert_eq!(n % 3, 0, "#{n} had no ready-for-qa"),
                Err(e) => panic!("#{n}: {e}"),
            }
        }
        assert_eq!(manager.backend().max_in_flight.load(Ordering::SeqCst), 4);
    }
}
