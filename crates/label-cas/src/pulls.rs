//! A pull request's current state as GitHub reports it — head commit, open
//! or closed, merged, labels — read with one conditional GET.
//!
//! Rule kept here: **a pull request is only ever what GitHub answered,
//! checked before it is believed** — a head that is not a 40-hex commit id,
//! a state other than `open`/`closed` or a malformed label is an
//! [`Error::InvalidResponse`], never a guess; and a 304 only ever stands for
//! the answer whose ETag was sent (see [`PullRequestReader`]).
//!
//! Its labels are the labels, the same ones a [`LabelBackend`]
//! reads: they can serve as the first read of a label transition
//! ([`AtomicLabelManager::transition_from`]).
//!
//! [`PullRequestReader`]: crate::PullRequestReader
//! [`LabelBackend`]: crate::LabelBackend
//! [`AtomicLabelManager::transition_from`]: crate::AtomicLabelManager::transition_from

use std::sync::Arc;

use async_trait::async_trait;

use crate::{ETag, Error, LabelSet, PrRef, RateLimit, Result};

/// Whether a pull request is open. GitHub has exactly these two; a merged
/// pull request is closed (and [`PullRequest::merged`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PullState {
    /// Open: new commits may still arrive.
    Open,
    /// Closed, merged or not.
    Closed,
}

/// What supersede needs to know about one pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The head commit: 40 lower-case hex digits (see [`parse_head_sha`]).
    pub head_sha: String,
    /// The head branch's name (`head.ref`).
    pub head_ref: String,
    /// Open or closed.
    pub state: PullState,
    /// Whether it was merged (then it is also closed).
    pub merged: bool,
    /// Its labels (the labels).
    pub labels: LabelSet,
    /// When GitHub last changed it, if known.
    pub updated_at: Option<jiff::Timestamp>,
}

impl PullRequest {
    /// An open, unmerged pull request without labels whose head is
    /// `head_sha` (checked and lower-cased by [`parse_head_sha`]) on branch
    /// `head_ref`.
    pub fn open(head_sha: &str, head_ref: impl Into<String>) -> Result<Self> {
        Ok(Self {
            head_sha: parse_head_sha(head_sha)?,
            head_ref: head_ref.into(),
            state: PullState::Open,
            merged: false,
            labels: LabelSet::default(),
            updated_at: None,
        })
    }

    /// The same pull request carrying `labels`.
    #[must_use]
    pub fn with_labels<I, S>(mut self, labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.labels = LabelSet::new(labels);
        self
    }

    /// Whether it is open.
    pub fn is_open(&self) -> bool {
        self.state == PullState::Open
    }
}

/// Checks a commit id as GitHub sends it (40 hex digits, SHA-1) and returns
/// it lower-cased, so ids compare as strings.
pub fn parse_head_sha(sha: &str) -> Result<String> {
    if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(sha.to_ascii_lowercase());
    }
    // Bounded and escaped: the value may come from a bad answer.
    let shown: String = sha.chars().take(64).collect();
    Err(Error::InvalidSha {
        sha: format!("{shown:?}"),
    })
}

/// What a (conditional) pull request read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchedPull {
    /// The pull request, with the ETag to send next time.
    Pull {
        /// The pull request.
        pull: PullRequest,
        /// The entity tag of this answer, if the backend sent one.
        etag: Option<ETag>,
    },
    /// 304: nothing changed since the ETag sent in `If-None-Match` (costs no
    /// rate limit on GitHub).
    NotModified,
}

/// Reads one pull request, as GitHub's `GET /repos/{owner}/{repo}/pulls/{number}`
/// does.
///
/// Contract, checked for every implementation by the conformance suite
/// (`tests/pulls_conformance.rs`): head, branch, state, merged flag and
/// labels read as GitHub holds them; a read with the ETag of the current
/// state answers [`FetchedPull::NotModified`], and any change (a push, a
/// label, closing) gives a full answer with a new ETag; an unknown pull
/// request is [`Error::NotFound`]; failures are classified like every
/// error of this crate ([`Error::is_transient`], [`Error::retry_after`]).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait PullRequests: Send + Sync {
    /// `GET /repos/{o}/{r}/pulls/{n}`, conditional with `If-None-Match` when
    /// `if_none_match` is given.
    async fn pull<'a>(&self, pr: &PrRef, if_none_match: Option<&'a ETag>) -> Result<FetchedPull>;

    /// The rate-limit state last reported by the server, if this backend has
    /// one.
    fn rate_limit(&self) -> Option<RateLimit> {
        None
    }
}

#[async_trait]
impl<T: PullRequests + ?Sized> PullRequests for Arc<T> {
    async fn pull<'a>(&self, pr: &PrRef, if_none_match: Option<&'a ETag>) -> Result<FetchedPull> {
        (**self).pull(pr, if_none_match).await
    }

    fn rate_limit(&self) -> Option<RateLimit> {
        (**self).rate_limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_shas_are_forty_hex_digits_and_come_back_lower_case() {
        let upper = "EC26C3E57CA3A959CA5AAD62DE7213C562F8C821";
        assert_eq!(parse_head_sha(upper).unwrap(), upper.to_ascii_lowercase());
        for bad in [
            "",
            "ec26c3e",
            &"a".repeat(41),
            &"g".repeat(40),
            &"a".repeat(64), // SHA-256 repositories: GitHub has none
            "ec26c3e57ca3a959ca5aad62de7213c562f8c82 ",
        ] {
            assert!(
                matches!(parse_head_sha(bad), Err(Error::InvalidSha { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn an_invalid_sha_is_shown_bounded_and_escaped() {
        let err = parse_head_sha(&format!("{}\r\nX-Injected: 1", "z".repeat(500))).unwrap_err();
        let shown = err.to_string();
        assert!(shown.len() < 200, "{shown}");
        assert!(!shown.contains('\n'), "{shown}");
        assert!(!err.is_transient());
    }

    #[test]
    fn a_new_pull_request_is_open_unmerged_and_unlabelled_until_told() {
        let pull = PullRequest::open(&"A".repeat(40), "feature").unwrap();
        assert_eq!(pull.head_sha, "a".repeat(40));
        assert!(pull.is_open() && !pull.merged && pull.labels.is_empty());
        let labelled = pull.with_labels(["b", "a"]);
        assert_eq!(labelled.labels.names(), ["a", "b"]);
        assert!(PullRequest::open("nope", "feature").is_err());
    }
}
