//! An in-process [`PullRequests`] with GitHub's semantics: the embedded
//! default for `--dev` modes and a faithful test double (it passes the same
//! conformance suite as [`GitHubPullRequests`](crate::GitHubPullRequests)
//! against the fake GitHub).
//!
//! Rule kept here: **a pull request's labels are its issue's labels** —
//! they live in a [`MemoryLabels`] that a label manager may change, and a
//! read always shows them as they are now; the ETag changes with any change
//! of the pull request or of its labels, and never comes back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use crate::memory::matches_current;
use crate::{
    ETag, Error, FetchedPull, MemoryLabels, PrRef, PullRequest, PullRequests, Result,
    parse_head_sha,
};

/// Pull requests in memory, their labels in a [`MemoryLabels`].
///
/// A pull request exists once [`set_pull`](Self::set_pull) added it (an
/// unknown one is [`Error::NotFound`], as on GitHub); the outside writer
/// API — [`set_pull`](Self::set_pull), [`update`](Self::update),
/// [`remove`](Self::remove) — changes it as a push, a merge or a human
/// would: not counted, and visible to the next read. `updated_at` is kept
/// as given (not advanced on changes), like testkit's fake GitHub.
///
/// Give the same [`MemoryLabels`] ([`labels`](Self::labels)) to an
/// [`AtomicLabelManager`](crate::AtomicLabelManager) and the reads see
/// its transitions, as on GitHub.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use label_cas::{FetchedPull, MemoryPullRequests, PrRef, PullRequest, PullRequests};
///
/// let pulls = MemoryPullRequests::new();
/// let pr = PrRef::new("acme", "widgets", 7)?;
/// pulls.set_pull(&pr, PullRequest::open(&"a".repeat(40), "feature")?.with_labels(["ready-for-qa"]))?;
/// let FetchedPull::Pull { pull, etag } = pulls.pull(&pr, None).await? else { unreachable!() };
/// assert_eq!(pull.labels.names(), ["ready-for-qa"]);
/// assert_eq!(pulls.pull(&pr, etag.as_ref()).await?, FetchedPull::NotModified);
///
/// pulls.labels().add_label(&pr, "needs-qa"); // the issue's labels: the PR changed
/// assert!(matches!(pulls.pull(&pr, etag.as_ref()).await?, FetchedPull::Pull { .. }));
/// # Ok::<_, label_cas::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct MemoryPullRequests {
    labels: Arc<MemoryLabels>,
    /// Pull requests by [`PrRef::key`]; their `labels` field is unused (the
    /// labels live in `labels`).
    pulls: Mutex<HashMap<String, Stored>>,
    /// Source of versions: each change takes the next value, so an ETag
    /// never comes back after a change, even if the fields do.
    version: AtomicU64,
    get: AtomicU64,
    not_modified: AtomicU64,
}

/// How many [`PullRequests`] calls a [`MemoryPullRequests`] served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullCalls {
    /// Reads, including those answered `NotModified` and not found.
    pub get: u64,
    /// Reads answered `NotModified`.
    pub not_modified: u64,
}

#[derive(Debug)]
struct Stored {
    pull: PullRequest,
    version: u64,
}

impl Default for MemoryPullRequests {
    fn default() -> Self {
        Self::with_labels(Arc::new(MemoryLabels::new()))
    }
}

impl MemoryPullRequests {
    /// No pull requests, labels in a fresh [`MemoryLabels`].
    pub fn new() -> Self {
        Self::default()
    }

    /// No pull requests, labels in `labels` (shared with whoever else
    /// reads or writes them).
    pub fn with_labels(labels: Arc<MemoryLabels>) -> Self {
        Self {
            labels,
            pulls: Mutex::new(HashMap::new()),
            version: AtomicU64::new(0),
            get: AtomicU64::new(0),
            not_modified: AtomicU64::new(0),
        }
    }

    /// Where the labels live: hand it to an
    /// [`AtomicLabelManager`](crate::AtomicLabelManager) (an `Arc` of a
    /// [`LabelBackend`](crate::LabelBackend) is one).
    pub fn labels(&self) -> &Arc<MemoryLabels> {
        &self.labels
    }

    /// Counts of the [`PullRequests`] calls served so far.
    pub fn calls(&self) -> PullCalls {
        PullCalls {
            get: self.get.load(Ordering::Relaxed),
            not_modified: self.not_modified.load(Ordering::Relaxed),
        }
    }

    /// Adds or replaces `pr` (not counted); its labels replace the issue's,
    /// as testkit's `FakeGitHub::add_pull` does. The head sha is checked
    /// and lower-cased ([`Error::InvalidSha`]).
    pub fn set_pull(&self, pr: &PrRef, pull: PullRequest) -> Result<()> {
        let mut pulls = self.lock();
        self.store(&mut pulls, pr, pull).map(drop)
    }

    /// Changes `pr` as `change` says (a push moving the head, a merge, a
    /// label) and returns it as it is now; [`Error::NotFound`] if it was
    /// never added or was removed, [`Error::InvalidSha`] (and nothing
    /// changed) for a head that is not a commit id.
    pub fn update(&self, pr: &PrRef, change: impl FnOnce(&mut PullRequest)) -> Result<PullRequest> {
        let mut pulls = self.lock();
        let mut pull = match pulls.get(&pr.key()) {
            Some(stored) => stored.pull.clone(),
            None => return Err(not_found(pr)),
        };
        pull.labels = self.labels.labels(pr);
        change(&mut pull);
        self.store(&mut pulls, pr, pull)
    }

    /// Removes `pr` (its issue's labels stay); `false` if it was not there.
    pub fn remove(&self, pr: &PrRef) -> bool {
        self.lock().remove(&pr.key()).is_some()
    }

    /// `pr` as a read would show it now (not counted).
    pub fn pull_request(&self, pr: &PrRef) -> Option<PullRequest> {
        self.current(&self.lock(), pr).map(|(pull, _)| pull)
    }

    fn store(
        &self,
        pulls: &mut HashMap<String, Stored>,
        pr: &PrRef,
        mut pull: PullRequest,
    ) -> Result<PullRequest> {
        pull.head_sha = parse_head_sha(&pull.head_sha)?;
        let labels = std::mem::take(&mut pull.labels);
        let labels = self.labels.set_labels(pr, labels.into_names());
        let changed = pulls.get(&pr.key()).is_none_or(|s| s.pull != pull);
        if changed {
            let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
            pulls.insert(
                pr.key(),
                Stored {
                    pull: pull.clone(),
                    version,
                },
            );
        }
        Ok(PullRequest { labels, ..pull })
    }

    /// The pull request with its labels now, and its ETag.
    fn current(&self, pulls: &HashMap<String, Stored>, pr: &PrRef) -> Option<(PullRequest, ETag)> {
        let stored = pulls.get(&pr.key())?;
        let (labels, labels_version) = self.labels.versioned(pr);
        let etag = etag(stored.version, labels_version);
        Some((
            PullRequest {
                labels,
                ..stored.pull.clone()
            },
            etag,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Stored>> {
        // Every change validates first and inserts last, so a panic cannot
        // leave a pull request half-written: poisoning carries no meaning.
        self.pulls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl PullRequests for MemoryPullRequests {
    async fn pull<'a>(&self, pr: &PrRef, if_none_match: Option<&'a ETag>) -> Result<FetchedPull> {
        self.get.fetch_add(1, Ordering::Relaxed);
        let Some((pull, etag)) = self.current(&self.lock(), pr) else {
            return Err(not_found(pr));
        };
        if matches_current(if_none_match, &etag) {
            self.not_modified.fetch_add(1, Ordering::Relaxed);
            return Ok(FetchedPull::NotModified);
        }
        Ok(FetchedPull::Pull {
            pull,
            etag: Some(etag),
        })
    }
}

fn not_found(pr: &PrRef) -> Error {
    Error::NotFound {
        message: format!("Not Found ({pr})"),
    }
}

/// Both versions: a change of the pull request or of its labels changes it.
fn etag(pull_version: u64, labels_version: u64) -> ETag {
    // Digits and quotes only: always a valid header value.
    ETag::new(format!("\"mem-pull-{pull_version}-{labels_version}\""))
        .unwrap_or_else(|| ETag(String::from("\"mem-pull\"")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LabelBackend, PullState};

    fn pr() -> PrRef {
        PrRef::new("acme", "widgets", 1).unwrap()
    }

    fn sha(digit: char) -> String {
        digit.to_string().repeat(40)
    }

    async fn etag_of(pulls: &MemoryPullRequests) -> ETag {
        match pulls.pull(&pr(), None).await.unwrap() {
            FetchedPull::Pull { etag, .. } => etag.unwrap(),
            FetchedPull::NotModified => panic!("an unconditional read is never 304"),
        }
    }

    #[tokio::test]
    async fn setting_the_same_pull_request_again_keeps_its_etag() {
        let pulls = MemoryPullRequests::new();
        let pull = PullRequest::open(&sha('a'), "feature")
            .unwrap()
            .with_labels(["x"]);
        pulls.set_pull(&pr(), pull.clone()).unwrap();
        let etag = etag_of(&pulls).await;
        pulls.set_pull(&pr(), pull).unwrap();
        assert_eq!(
            pulls.pull(&pr(), Some(&etag)).await.unwrap(),
            FetchedPull::NotModified
        );
        assert_eq!(
            pulls.calls(),
            PullCalls {
                get: 2,
                not_modified: 1
            }
        );
    }

    #[tokio::test]
    async fn a_merge_or_a_label_written_through_the_labels_backend_changes_the_etag() {
        let pulls = MemoryPullRequests::new();
        pulls
            .set_pull(&pr(), PullRequest::open(&sha('a'), "feature").unwrap())
            .unwrap();
        let before = etag_of(&pulls).await;
        pulls
            .labels()
            .add(&pr(), &["needs-qa".to_owned()])
            .await
            .unwrap();
        let FetchedPull::Pull { pull, etag } = pulls.pull(&pr(), Some(&before)).await.unwrap()
        else {
            panic!("a label change must show")
        };
        assert_eq!(pull.labels.names(), ["needs-qa"]);
        let merged = pulls
            .update(&pr(), |p| {
                p.state = PullState::Closed;
                p.merged = true;
            })
            .unwrap();
        assert!(merged.merged && merged.labels.contains("needs-qa"));
        assert!(matches!(
            pulls.pull(&pr(), etag.as_ref()).await.unwrap(),
            FetchedPull::Pull { pull, .. } if pull.merged && pull.state == PullState::Closed
        ));
    }

    #[tokio::test]
    async fn an_update_to_an_invalid_head_changes_nothing() {
        let pulls = MemoryPullRequests::new();
        pulls
            .set_pull(&pr(), PullRequest::open(&sha('a'), "feature").unwrap())
            .unwrap();
        let err = pulls
            .update(&pr(), |p| p.head_sha = "not-a-sha".into())
            .unwrap_err();
        assert!(matches!(err, Error::InvalidSha { .. }), "{err}");
        assert_eq!(pulls.pull_request(&pr()).unwrap().head_sha, sha('a'));
        let err = pulls.update(&PrRef::new("acme", "widgets", 2).unwrap(), |_| {});
        assert!(matches!(err, Err(Error::NotFound { .. })));
    }

    #[tokio::test]
    async fn a_removed_pull_request_is_not_found_and_never_returns_its_old_etag() {
        let pulls = MemoryPullRequests::new();
        let pull = PullRequest::open(&sha('a'), "feature").unwrap();
        pulls.set_pull(&pr(), pull.clone()).unwrap();
        let etag = etag_of(&pulls).await;
        assert!(pulls.remove(&pr()));
        assert!(matches!(
            pulls.pull(&pr(), Some(&etag)).await,
            Err(Error::NotFound { .. })
        ));
        pulls.set_pull(&pr(), pull).unwrap();
        assert!(matches!(
            pulls.pull(&pr(), Some(&etag)).await.unwrap(),
            FetchedPull::Pull { .. }
        ));
    }
}
