//! The `PullRequests` conformance suite: one set of checks, run on
//! `MemoryPullRequests` and on `GitHubPullRequests` against testkit's fake
//! GitHub over HTTP. A backend that passes reads a pull request as GitHub's
//! `GET /repos/{o}/{r}/pulls/{n}` answers it where supersede depends on it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::{GitHubHarness, MemoryHarness, pr, set};
use label_cas::{
    AtomicLabelManager, ETag, Error, FetchedPull, GitHubLabels, GitHubPullRequests, LabelBackend,
    LabelTransition, MemoryLabels, MemoryPullRequests, Metrics, PrRef, PullRequest,
    PullRequestReader, PullRequests, PullState, TransitionResult,
};
use secrecy::SecretString;
use testkit::github::{FakeGitHub, FakeGitHubBuilder};

const OLD: &str = "1111111111111111111111111111111111111111";
const NEW: &str = "2222222222222222222222222222222222222222";
/// A head as some clients spell it: it must come back lower-cased.
const UPPER: &str = "ABCDEF0123456789ABCDEF0123456789ABCDEF01";

/// A pull request backend, the label backend over the same issues (and the
/// same token), and the outside world: pushes and humans.
trait Harness: Send + Sync {
    type Pulls: PullRequests + 'static;
    type Labels: LabelBackend + 'static;

    fn pulls(&self) -> Arc<Self::Pulls>;
    fn labels(&self) -> Arc<Self::Labels>;
    /// A pull request appears with this head, branch and labels.
    fn add_pull(&self, pr: &PrRef, head_sha: &str, head_ref: &str, labels: &[&str]);
    /// A push moves its head.
    fn push(&self, pr: &PrRef, head_sha: &str);
    /// Calls the backends' server has served so far (pull and label calls).
    fn calls(&self) -> u64;
    /// Reads answered 304 so far.
    fn not_modified(&self) -> u64;
}

/// [`MemoryPullRequests`] over the labels of common's [`MemoryHarness`].
struct MemoryPulls {
    pulls: Arc<MemoryPullRequests>,
}

impl MemoryPulls {
    fn new() -> Self {
        let labels = MemoryHarness::new().labels;
        Self {
            pulls: Arc::new(MemoryPullRequests::with_labels(labels)),
        }
    }
}

impl Harness for MemoryPulls {
    type Pulls = MemoryPullRequests;
    type Labels = MemoryLabels;

    fn pulls(&self) -> Arc<MemoryPullRequests> {
        Arc::clone(&self.pulls)
    }
    fn labels(&self) -> Arc<MemoryLabels> {
        Arc::clone(self.pulls.labels())
    }
    fn add_pull(&self, pr: &PrRef, head_sha: &str, head_ref: &str, labels: &[&str]) {
        let pull = PullRequest::open(head_sha, head_ref)
            .unwrap()
            .with_labels(labels.iter().copied());
        self.pulls.set_pull(pr, pull).unwrap();
    }
    fn push(&self, pr: &PrRef, head_sha: &str) {
        self.pulls
            .update(pr, |p| head_sha.clone_into(&mut p.head_sha))
            .unwrap();
    }
    fn calls(&self) -> u64 {
        self.pulls.calls().get + self.pulls.labels().calls().total()
    }
    fn not_modified(&self) -> u64 {
        self.pulls.calls().not_modified + self.pulls.labels().calls().not_modified
    }
}

/// [`GitHubPullRequests`] sharing the client of common's
/// [`GitHubHarness`]'s labels, against the fake GitHub.
struct GitHubPulls {
    github: GitHubHarness,
    pulls: Arc<GitHubPullRequests>,
}

impl GitHubPulls {
    async fn start() -> Self {
        Self::start_with(FakeGitHub::builder()).await
    }

    async fn start_with(builder: FakeGitHubBuilder) -> Self {
        let github = GitHubHarness::start_with(builder).await;
        let pulls = Arc::new(github.labels.pull_requests());
        Self { github, pulls }
    }
}

impl Harness for GitHubPulls {
    type Pulls = GitHubPullRequests;
    type Labels = GitHubLabels;

    fn pulls(&self) -> Arc<GitHubPullRequests> {
        Arc::clone(&self.pulls)
    }
    fn labels(&self) -> Arc<GitHubLabels> {
        Arc::clone(&self.github.labels)
    }
    fn add_pull(&self, pr: &PrRef, head_sha: &str, head_ref: &str, labels: &[&str]) {
        self.github
            .fake
            .add_pull(
                pr.owner(),
                pr.repo(),
                pr.number(),
                head_sha,
                head_ref,
                labels,
            )
            .unwrap();
    }
    fn push(&self, pr: &PrRef, head_sha: &str) {
        self.github
            .fake
            .set_pull_head(pr.owner(), pr.repo(), pr.number(), head_sha)
            .unwrap();
    }
    fn calls(&self) -> u64 {
        self.github.fake.calls().total()
    }
    fn not_modified(&self) -> u64 {
        self.github.metrics.not_modified_count()
    }
}

/// An unconditional read that must answer the pull request.
async fn read(h: &impl Harness, pr: &PrRef) -> (PullRequest, ETag) {
    match h.pulls().pull(pr, None).await.unwrap() {
        FetchedPull::Pull { pull, etag } => (pull, etag.expect("reads carry an ETag")),
        FetchedPull::NotModified => panic!("an unconditional read is never 304"),
    }
}

async fn a_pull_request_reads_its_head_branch_state_and_labels(h: &impl Harness) {
    h.add_pull(&pr(7), UPPER, "agent/task-7", &["stage:qa", "agent:tests"]);
    let (pull, _) = read(h, &pr(7)).await;
    assert_eq!(pull.head_sha, UPPER.to_ascii_lowercase());
    assert_eq!(pull.head_ref, "agent/task-7");
    assert_eq!((pull.state, pull.merged), (PullState::Open, false));
    assert_eq!(pull.labels, set(&["agent:tests", "stage:qa"]));
}

async fn an_unchanged_pull_request_answers_304_to_its_etag(h: &impl Harness) {
    h.add_pull(&pr(1), OLD, "feature", &["a"]);
    let (_, etag) = read(h, &pr(1)).await;
    let before = h.not_modified();
    assert_eq!(
        h.pulls().pull(&pr(1), Some(&etag)).await.unwrap(),
        FetchedPull::NotModified
    );
    assert_eq!(h.not_modified() - before, 1);
}

async fn a_push_answers_in_full_with_a_new_etag_and_the_new_head(h: &impl Harness) {
    h.add_pull(&pr(1), OLD, "feature", &[]);
    let (_, etag) = read(h, &pr(1)).await;
    h.push(&pr(1), NEW);
    let FetchedPull::Pull { pull, etag: fresh } =
        h.pulls().pull(&pr(1), Some(&etag)).await.unwrap()
    else {
        panic!("a push must invalidate the ETag");
    };
    assert_eq!(pull.head_sha, NEW);
    let fresh = fresh.unwrap();
    assert_ne!(fresh, etag);
    assert_eq!(
        h.pulls().pull(&pr(1), Some(&fresh)).await.unwrap(),
        FetchedPull::NotModified,
        "the new ETag stands for the new head"
    );
}

async fn a_label_written_through_the_label_backend_changes_the_pull_request(h: &impl Harness) {
    h.add_pull(&pr(1), OLD, "feature", &["ready-for-qa"]);
    let (_, etag) = read(h, &pr(1)).await;
    h.labels()
        .add(&pr(1), &["needs-qa".to_owned()])
        .await
        .unwrap();
    let FetchedPull::Pull { pull, .. } = h.pulls().pull(&pr(1), Some(&etag)).await.unwrap() else {
        panic!("a pull request's labels are its issue's: a label change must show");
    };
    assert_eq!(pull.labels, set(&["needs-qa", "ready-for-qa"]));
}

async fn an_unknown_pull_request_is_not_found_and_permanent(h: &impl Harness) {
    h.add_pull(&pr(1), OLD, "feature", &[]);
    let err = h.pulls().pull(&pr(2), None).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(!err.is_transient());
}

async fn the_reader_serves_an_unchanged_pull_request_from_a_304(h: &impl Harness) {
    h.add_pull(&pr(1), OLD, "feature", &["a"]);
    let reader = PullRequestReader::new(h.pulls());
    let first = reader.current(&pr(1)).await.unwrap();
    let before = (h.calls(), h.not_modified());
    let second = reader.current(&pr(1)).await.unwrap();
    assert_eq!(second, first);
    assert_eq!(
        (h.calls() - before.0, h.not_modified() - before.1),
        (1, 1),
        "one conditional GET, answered 304"
    );
    h.push(&pr(1), NEW);
    assert_eq!(reader.current(&pr(1)).await.unwrap().head_sha, NEW);
}

async fn a_pr_read_and_a_move_from_its_labels_are_three_calls(h: &impl Harness) {
    h.add_pull(&pr(1), OLD, "feature", &["ready-for-qa", "human"]);
    let reader = PullRequestReader::new(h.pulls());
    let manager = AtomicLabelManager::new(h.labels());
    let before = h.calls();
    let pull = reader.current(&pr(1)).await.unwrap();
    let outcome = manager
        .transition_from(
            &pr(1),
            &LabelTransition::move_label("ready-for-qa", "needs-qa"),
            &pull.labels,
        )
        .await
        .unwrap();
    assert_eq!(outcome.result, TransitionResult::Applied);
    assert_eq!(h.calls() - before, 3, "PR read, DELETE, POST");
    let (after, _) = read(h, &pr(1)).await;
    assert_eq!(after.labels, set(&["human", "needs-qa"]));
}

/// Runs every check on a fresh harness from `make`.
macro_rules! conformance {
    ($module:ident, $make:expr) => {
        common::suite!($module, $make;
            a_pull_request_reads_its_head_branch_state_and_labels,
            an_unchanged_pull_request_answers_304_to_its_etag,
            a_push_answers_in_full_with_a_new_etag_and_the_new_head,
            a_label_written_through_the_label_backend_changes_the_pull_request,
            an_unknown_pull_request_is_not_found_and_permanent,
            the_reader_serves_an_unchanged_pull_request_from_a_304,
            a_pr_read_and_a_move_from_its_labels_are_three_calls,
        );
    };
}

conformance!(memory, MemoryPulls::new());
conformance!(github, GitHubPulls::start().await);

/// What the fake GitHub cannot do yet: close or merge a pull request
/// (`FakeGitHub::add_pull` always renders it open). The GitHub backend's
/// reading of `state`/`merged` is checked on real payloads in
/// `src/pulls_github.rs`.
mod memory_only {
    use super::*;

    #[tokio::test]
    async fn a_closed_or_merged_pull_request_reads_as_such_with_a_new_etag() {
        let h = MemoryPulls::new();
        h.add_pull(&pr(1), OLD, "feature", &[]);
        let (_, etag) = read(&h, &pr(1)).await;
        h.pulls
            .update(&pr(1), |p| {
                p.state = PullState::Closed;
                p.merged = true;
            })
            .unwrap();
        let FetchedPull::Pull { pull, .. } = h.pulls.pull(&pr(1), Some(&etag)).await.unwrap()
        else {
            panic!("closing must invalidate the ETag");
        };
        assert_eq!((pull.state, pull.merged), (PullState::Closed, true));
        assert!(!pull.is_open());
    }
}

/// What only the HTTP backend can show: rate-limit accounting, injected
/// faults, credentials.
mod github_only {
    use super::*;
    use std::time::Duration;
    use testkit::faults::{InjectedError, Match};

    fn pull_reads() -> Match {
        Match::any().verb("get").resource("pull")
    }

    #[tokio::test]
    async fn a_304_costs_no_rate_limit_and_the_budget_is_shared_with_the_labels() {
        let h = GitHubPulls::start().await;
        h.add_pull(&pr(1), OLD, "feature", &[]);
        assert!(h.pulls.rate_limit().is_none(), "nothing seen yet");
        let (_, etag) = read(&h, &pr(1)).await;
        let spent = h.pulls.rate_limit().unwrap();
        assert_eq!((spent.limit, spent.remaining, spent.used), (5000, 4999, 1));
        assert_eq!(
            h.pulls.pull(&pr(1), Some(&etag)).await.unwrap(),
            FetchedPull::NotModified
        );
        assert_eq!(
            h.pulls.rate_limit().unwrap().remaining,
            4999,
            "the 304 was free"
        );
        assert_eq!(
            h.github
                .fake
                .rate_limit(h.github.fake.token())
                .unwrap()
                .remaining,
            4999,
            "and the fake agrees"
        );
        assert_eq!(
            h.github.labels.rate_limit(),
            h.pulls.rate_limit(),
            "one token, one budget: the label backend (and a RateLimited around it) sees the reads"
        );
    }

    #[tokio::test]
    async fn an_injected_503_is_a_transient_server_error() {
        let h = GitHubPulls::start().await;
        h.add_pull(&pr(1), OLD, "feature", &[]);
        h.github
            .fake
            .faults()
            .fail_next(pull_reads(), 1, InjectedError::Status(503));
        let err = h.pulls.pull(&pr(1), None).await.unwrap_err();
        assert!(matches!(err, Error::Server { status: 503 }), "{err}");
        assert!(err.is_transient());
        let (pull, _) = read(&h, &pr(1)).await;
        assert_eq!(pull.head_sha, OLD, "the next read goes through");
    }

    #[tokio::test]
    async fn a_429_is_a_transient_rate_limit_with_the_wait_github_asked_for() {
        let h = GitHubPulls::start().await;
        h.add_pull(&pr(1), OLD, "feature", &[]);
        h.github.fake.faults().fail_next(
            pull_reads(),
            1,
            InjectedError::TooManyRequests {
                retry_after: Duration::from_secs(20),
            },
        );
        let err = h.pulls.pull(&pr(1), None).await.unwrap_err();
        assert!(matches!(err, Error::RateLimited { .. }), "{err}");
        assert!(err.is_transient());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(20)));
    }

    #[tokio::test]
    async fn an_exhausted_budget_is_a_rate_limit_until_its_reset() {
        let h = GitHubPulls::start_with(FakeGitHub::builder().rate_limit(1)).await;
        h.add_pull(&pr(1), OLD, "feature", &[]);
        read(&h, &pr(1)).await;
        let err = h.pulls.pull(&pr(1), None).await.unwrap_err();
        assert!(
            matches!(err, Error::RateLimited { reset: Some(_), .. }),
            "{err}"
        );
        assert!(err.is_transient() && err.retry_after().is_some());
    }

    #[tokio::test]
    async fn a_bad_token_is_unauthorized_and_permanent() {
        let fake = FakeGitHub::start().await.unwrap();
        fake.add_pull("acme", "widgets", 1, OLD, "feature", ["a"])
            .unwrap();
        let pulls = GitHubLabels::builder()
            .token(SecretString::from("ghp_not_a_valid_token"))
            .base_uri(fake.url().as_str())
            .build()
            .unwrap()
            .pull_requests();
        let err = pulls.pull(&pr(1), None).await.unwrap_err();
        assert!(matches!(err, Error::Unauthorized), "{err}");
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn a_client_built_elsewhere_reads_the_same_pull_request() {
        let fake = FakeGitHub::start().await.unwrap();
        fake.add_pull("acme", "widgets", 1, OLD, "feature", ["a"])
            .unwrap();
        let pulls = GitHubPullRequests::from_octocrab(fake.octocrab().unwrap(), Metrics::new());
        let FetchedPull::Pull { pull, .. } = pulls.pull(&pr(1), None).await.unwrap() else {
            panic!()
        };
        assert_eq!((pull.head_sha.as_str(), pull.labels), (OLD, set(&["a"])));
        assert!(format!("{pulls:?}").contains("GitHubPullRequests"));
    }
}
