#![doc = include_str!("../README.md")]
//!
//! # Crate layout
//!
//! - [`LabelBackend`] (this file): get with ETag, add many, remove one,
//!   replace all; implemented by [`GitHubLabels`] (octocrab) and
//!   [`MemoryLabels`] (in-process, same semantics). Both pass the same
//!   conformance suite (`tests/conformance.rs`).
//! - [`RateLimited`] (`ratelimit.rs`): wraps any backend; budget-aware
//!   waits, `retry-after`, serial spaced mutations.
//! - [`AtomicLabelManager`] (`manager.rs`): the transition algorithm; its
//!   ETag cache (`cache.rs`); the optional per-PR lock [`PrLock`] (`lock.rs`).
//! - [`PullRequests`] (`pulls.rs`): one conditional GET of a pull request
//!   (head, state, merged, labels); implemented by [`GitHubPullRequests`]
//!   (`pulls_github.rs`, on the same client as [`GitHubLabels`]) and
//!   [`MemoryPullRequests`] (`pulls_memory.rs`, labels in a
//!   [`MemoryLabels`]); one conformance suite (`tests/pulls_conformance.rs`).
//!   [`PullRequestReader`] (`pulls_reader.rs`) remembers the last answer
//!   so an unchanged pull request costs a free 304.
//! - [`Metrics`] and [`Error`].

mod cache;
mod error;
mod github;
mod lock;
mod manager;
mod memory;
mod metrics;
mod pulls;
mod pulls_github;
mod pulls_memory;
mod pulls_reader;
mod ratelimit;

use std::fmt;

use async_trait::async_trait;

pub use crate::error::{Error, Result};
pub use crate::github::{GitHubLabels, GitHubLabelsBuilder};
#[cfg(feature = "lease-lock")]
pub use crate::lock::LeasePrLocks;
#[cfg(any(test, feature = "mock"))]
pub use crate::lock::MockPrLock;
pub use crate::lock::{LocalPrLocks, PrLock, PrLockGuard};
pub use crate::manager::{
    AtomicLabelManager, LabelTransition, TransitionOutcome, TransitionPolicy, TransitionResult,
};
pub use crate::memory::{MemoryCalls, MemoryLabels};
pub use crate::metrics::Metrics;
#[cfg(any(test, feature = "mock"))]
pub use crate::pulls::MockPullRequests;
pub use crate::pulls::{FetchedPull, PullRequest, PullRequests, PullState, parse_head_sha};
pub use crate::pulls_github::GitHubPullRequests;
pub use crate::pulls_memory::{MemoryPullRequests, PullCalls};
pub use crate::pulls_reader::PullRequestReader;
pub use crate::ratelimit::{RateLimitPolicy, RateLimited};

/// GitHub's limit on a label name, in characters.
pub const MAX_LABEL_NAME_CHARS: usize = 50;

/// A pull request (or issue: labels live on the issue) on GitHub, validated
/// against GitHub's naming rules so it can be put into a URL path safely.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrRef {
    owner: String,
    repo: String,
    number: u64,
}

impl PrRef {
    /// `owner/repo#number`. The owner is 1–39 ASCII letters, digits, `-` or
    /// `_` (Enterprise managed users), not starting with `-`; the repository
    /// 1–100 ASCII letters, digits, `-`, `_` or `.`, and not `.` or `..`;
    /// the number greater than zero.
    pub fn new(owner: impl Into<String>, repo: impl Into<String>, number: u64) -> Result<Self> {
        let owner = owner.into();
        let repo = repo.into();
        let invalid = |reason: String| Err(Error::InvalidPr { reason });
        if owner.is_empty() || owner.len() > 39 {
            return invalid(format!("owner {owner:?} must be 1 to 39 characters"));
        }
        if owner.starts_with('-')
            || !owner
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid(format!(
                "owner {owner:?} may only contain ASCII letters, digits, '-' and '_', and not start with '-'"
            ));
        }
        if repo.is_empty() || repo.len() > 100 {
            return invalid(format!("repository {repo:?} must be 1 to 100 characters"));
        }
        if repo == "." || repo == ".." {
            return invalid(format!("repository {repo:?} is not a name"));
        }
        if !repo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return invalid(format!(
                "repository {repo:?} may only contain ASCII letters, digits, '-', '_' and '.'"
            ));
        }
        if number == 0 {
            return invalid("pull request numbers start at 1".to_owned());
        }
        Ok(Self {
            owner,
            repo,
            number,
        })
    }

    /// The repository owner (user or organisation).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The repository name.
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// The pull request number.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// A case-insensitive identity (GitHub owner and repository names are
    /// case-insensitive), used for locks and caches.
    pub(crate) fn key(&self) -> String {
        format!(
            "{}/{}#{}",
            self.owner.to_ascii_lowercase(),
            self.repo.to_ascii_lowercase(),
            self.number
        )
    }
}

impl fmt::Display for PrRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.owner, self.repo, self.number)
    }
}

/// The inverse of [`Display`](fmt::Display): `owner/repo#number`, checked
/// as [`PrRef::new`] checks it (how a pull request is stored in a task's
/// state and read back).
///
/// ```
/// use label_cas::PrRef;
///
/// let pr: PrRef = "acme/widgets#7".parse()?;
/// assert_eq!((pr.owner(), pr.repo(), pr.number()), ("acme", "widgets", 7));
/// assert_eq!(pr.to_string().parse::<PrRef>()?, pr);
/// assert!("acme/widgets".parse::<PrRef>().is_err());
/// assert!("acme/widgets#0".parse::<PrRef>().is_err());
/// # Ok::<(), label_cas::Error>(())
/// ```
impl std::str::FromStr for PrRef {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = || Error::InvalidPr {
            reason: format!(
                "{:?} is not owner/repo#number",
                text.chars().take(160).collect::<String>()
            ),
        };
        let (repository, number) = text.rsplit_once('#').ok_or_else(invalid)?;
        let (owner, repo) = repository.split_once('/').ok_or_else(invalid)?;
        let number = number.parse().map_err(|_| invalid())?;
        Self::new(owner, repo, number)
    }
}

/// Checks a label name against GitHub's rules before it is sent anywhere:
/// 1–50 characters, no leading or trailing whitespace, no control characters.
pub fn validate_label_name(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidLabel {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.chars().count() > MAX_LABEL_NAME_CHARS {
        return invalid("it is longer than 50 characters");
    }
    if name.trim() != name {
        return invalid("it starts or ends with whitespace");
    }
    if name.chars().any(char::is_control) {
        return invalid("it contains a control character");
    }
    Ok(())
}

/// The labels of one pull request: names, compared case-insensitively as
/// GitHub does, kept sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSet {
    names: Vec<String>,
}

impl LabelSet {
    /// The set of `names` (duplicates that differ only in case keep the first).
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut names: Vec<String> = names.into_iter().map(Into::into).collect();
        names.sort_by_cached_key(|n| n.to_lowercase());
        names.dedup_by(|a, b| a.to_lowercase() == b.to_lowercase());
        Self { names }
    }

    /// Whether `name` is in the set, ignoring case.
    pub fn contains(&self, name: &str) -> bool {
        let key = name.to_lowercase();
        self.names.iter().any(|n| n.to_lowercase() == key)
    }

    /// The names, sorted case-insensitively.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Iterates over the names.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// How many labels.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No labels at all.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names, consuming the set.
    pub fn into_names(self) -> Vec<String> {
        self.names
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.names.join(", "))
    }
}

impl<S: Into<String>> FromIterator<S> for LabelSet {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        Self::new(iter)
    }
}

/// An HTTP entity tag as GitHub sends it (quotes and `W/` included). GitHub's
/// ETags are specific to the token that read them: they only save reads for
/// the same client, they are never a write precondition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ETag(String);

impl ETag {
    /// An ETag from a header value; `None` unless it is visible ASCII (so it
    /// can be sent back in `If-None-Match`).
    pub fn new(value: impl Into<String>) -> Option<Self> {
        let value = value.into();
        (!value.is_empty() && value.len() <= 1024 && value.bytes().all(|b| b.is_ascii_graphic()))
            .then_some(Self(value))
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a (conditional) read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The current labels, with the ETag to send next time.
    Labels {
        /// The labels.
        labels: LabelSet,
        /// The entity tag of this answer, if the backend sent one.
        etag: Option<ETag>,
    },
    /// 304: nothing changed since the ETag sent in `If-None-Match` (costs no
    /// rate limit on GitHub).
    NotModified,
}

/// What removing one label did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveOutcome {
    /// We removed it; the labels after the removal. This is the claim.
    Removed(LabelSet),
    /// The pull request did not carry it (GitHub: 404 "Label does not
    /// exist"): someone else removed it first.
    Absent,
}

/// The rate-limit state a backend last saw (`x-ratelimit-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// `x-ratelimit-limit`: requests per window.
    pub limit: u32,
    /// `x-ratelimit-remaining`: requests left in this window.
    pub remaining: u32,
    /// `x-ratelimit-used`: requests spent in this window.
    pub used: u32,
    /// `x-ratelimit-reset`: when the window restarts.
    pub reset: jiff::Timestamp,
}

/// The label operations of one pull request, as GitHub offers them. There is
/// no conditional write: ETags only make reads cheap, and every write answers
/// with the complete resulting label list, which is what callers verify.
///
/// Contract, checked for every implementation by the conformance suite:
/// label names compare case-insensitively; invalid names are rejected with
/// [`Error::InvalidLabel`] before any call; [`add`](Self::add) is one call
/// for all names and keeps labels it was not given; [`remove`](Self::remove)
/// reports [`RemoveOutcome::Absent`] for a label the PR does not carry;
/// a read with the ETag of the current state answers [`Fetched::NotModified`].
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait LabelBackend: Send + Sync {
    /// Reads the labels; with `if_none_match`, answers
    /// [`Fetched::NotModified`] when they have not changed since.
    async fn get<'a>(&self, pr: &PrRef, if_none_match: Option<&'a ETag>) -> Result<Fetched>;

    /// Adds `names` in one call (labels already present stay, unknown
    /// repository labels are created); returns the resulting labels.
    async fn add(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet>;

    /// Removes one label; returns the resulting labels, or
    /// [`RemoveOutcome::Absent`] when the pull request does not carry it.
    async fn remove(&self, pr: &PrRef, name: &str) -> Result<RemoveOutcome>;

    /// Replaces all labels with `names` (PUT). Drops whatever other writers
    /// added meanwhile: only ever used under a lock.
    async fn replace(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet>;

    /// The rate-limit state last reported by the server, if this backend has
    /// one.
    fn rate_limit(&self) -> Option<RateLimit> {
        None
    }
}

#[async_trait]
impl<T: LabelBackend + ?Sized> LabelBackend for std::sync::Arc<T> {
    async fn get<'a>(&self, pr: &PrRef, if_none_match: Option<&'a ETag>) -> Result<Fetched> {
        (**self).get(pr, if_none_match).await
    }

    async fn add(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
        (**self).add(pr, names).await
    }

    async fn remove(&self, pr: &PrRef, name: &str) -> Result<RemoveOutcome> {
        (**self).remove(pr, name).await
    }

    async fn replace(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
        (**self).replace(pr, names).await
    }

    fn rate_limit(&self) -> Option<RateLimit> {
        (**self).rate_limit()
    }
}

/// Validates every name (the shared first step of every backend's writes).
pub(crate) fn validate_label_names(names: &[String]) -> Result<()> {
    names.iter().try_for_each(|n| validate_label_name(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pr_refs_follow_github_naming_rules() {
        assert!(PrRef::new("acme", "widgets", 7).is_ok());
        assert!(PrRef::new("my-org_emu", "repo.name-2", 1).is_ok());
        for (owner, repo, number) in [
            ("", "r", 1),
            ("-acme", "r", 1),
            ("ac/me", "r", 1),
            ("a".repeat(40).as_str(), "r", 1),
            ("acme", "", 1),
            ("acme", "..", 1),
            ("acme", "wid/gets", 1),
            ("acme", "wid gets", 1),
            ("acme", "widgets", 0),
        ] {
            assert!(
                matches!(
                    PrRef::new(owner, repo, number),
                    Err(Error::InvalidPr { .. })
                ),
                "{owner}/{repo}#{number} should be rejected"
            );
        }
        assert_eq!(PrRef::new("Acme", "W", 3).unwrap().to_string(), "Acme/W#3");
    }

    #[test]
    fn label_names_are_validated_by_github_rules() {
        assert!(validate_label_name("ready-for-qa").is_ok());
        assert!(validate_label_name("needs review: 🚀").is_ok());
        assert!(
            validate_label_name(&"é".repeat(50)).is_ok(),
            "50 characters, not bytes"
        );
        for bad in ["", " lead", "trail ", "tab\tinside", &"x".repeat(51)] {
            assert!(
                matches!(validate_label_name(bad), Err(Error::InvalidLabel { .. })),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn label_sets_ignore_case_and_stay_sorted() {
        let set = LabelSet::new(["b", "A", "a", "C"]);
        assert_eq!(set.names(), ["A", "b", "C"]);
        assert!(set.contains("c") && set.contains("B") && !set.contains("d"));
        assert_eq!(set.to_string(), "[A, b, C]");
    }

    #[test]
    fn etags_must_be_sendable_header_values() {
        assert_eq!(ETag::new("W/\"abc\"").unwrap().as_str(), "W/\"abc\"");
        assert!(ETag::new("").is_none());
        assert!(ETag::new("a b").is_none());
        assert!(ETag::new("a\r\nX-Injected: 1").is_none());
    }

    proptest! {
        #[test]
        fn label_set_membership_is_case_insensitive(names in proptest::collection::vec("[a-zA-Z]{1,5}", 0..10)) {
            let set = LabelSet::new(names.clone());
            for n in &names {
                prop_assert!(set.contains(&n.to_uppercase()));
                prop_assert!(set.contains(&n.to_lowercase()));
            }
            let mut keys: Vec<String> = set.iter().map(str::to_lowercase).collect();
            let len = keys.len();
            keys.dedup();
            prop_assert_eq!(keys.len(), len, "no case-insensitive duplicates");
        }
    }
}
