//! [`DevGitHub`]: the pull requests of `--github-backend memory` as a
//! repository host would keep them — opened on a branch, their head moved
//! by a push — seen by the saga and the recovery reconciler (as
//! `PullRequests` and labels) and by the sensor (as its branch lookup).
//!
//! The rule it keeps: **a push changes GitHub first, then GitHub tells.**
//! `POST /dev/github/push` is the `git push`: it moves the pull request's
//! head (and its `updated_at`) and nothing else; the webhook that reports
//! it is a separate, signed delivery (`controller dev-push` sends both, in
//! that order). A webhook alone, like one GitHub lost the push for, moves
//! nothing here — the saga then keeps both heads' runs, as it must when
//! GitHub does not confirm a push.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use http::StatusCode;
use jiff::Timestamp;
use label_cas::{MemoryPullRequests, PrRef, PullRequest};
use sensor::{LookupError, OpenPull, PullLookup};
use serde::{Deserialize, Serialize};

/// The push route's path.
pub const PUSH_PATH: &str = "/dev/github/push";

/// The in-memory GitHub of the dev modes.
#[derive(Debug)]
pub struct DevGitHub {
    pulls: Arc<MemoryPullRequests>,
    /// The pull requests opened here, with their head branch, in order.
    opened: Mutex<Vec<PrRef>>,
}

/// What a push did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    /// The pull request (`owner/repo#n`).
    pub pull_request: String,
    /// The head before the push.
    pub before: String,
    /// The head now.
    pub head_sha: String,
    /// The pull request's `updated_at` now (the push time the webhook carries).
    pub updated_at: Timestamp,
}

/// The body of `POST /dev/github/push`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushRequest {
    /// `owner/name`.
    pub repository: String,
    /// The pull request's number.
    pub pull_request: u64,
    /// The new head (40 hex digits).
    pub head_sha: String,
}

impl DevGitHub {
    /// Over the pull requests (and labels) the saga and recovery read.
    pub fn new(pulls: Arc<MemoryPullRequests>) -> Self {
        Self {
            pulls,
            opened: Mutex::new(Vec::new()),
        }
    }

    /// The pull requests.
    pub fn pulls(&self) -> &Arc<MemoryPullRequests> {
        &self.pulls
    }

    /// Opens `pr` from `branch` at `head` with `labels`, changed at `at`.
    pub fn open(
        &self,
        pr: &PrRef,
        branch: &str,
        head: &str,
        labels: &[&str],
        at: Timestamp,
    ) -> label_cas::Result<()> {
        let pull = PullRequest {
            updated_at: Some(at),
            ..PullRequest::open(head, branch)?.with_labels(labels.iter().copied())
        };
        self.pulls.set_pull(pr, pull)?;
        let mut opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
        if !opened.contains(pr) {
            opened.push(pr.clone());
        }
        Ok(())
    }

    /// Moves `pr`'s head to `head` at `at`, as a push to its branch does.
    pub fn push(&self, pr: &PrRef, head: &str, at: Timestamp) -> label_cas::Result<Pushed> {
        let before = self
            .pulls
            .pull_request(pr)
            .map(|p| p.head_sha)
            .unwrap_or_default();
        let now = self.pulls.update(pr, |pull| {
            pull.head_sha = head.to_owned();
            pull.updated_at = Some(at);
        })?;
        Ok(Pushed {
            pull_request: pr.to_string(),
            before,
            head_sha: now.head_sha,
            updated_at: at,
        })
    }

    /// `POST /dev/github/push`: 200 with [`Pushed`], 404 for a pull request
    /// never opened here, 400 for a malformed body or head.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(PUSH_PATH, post(push))
            .with_state(Arc::clone(self))
    }
}

async fn push(
    State(github): State<Arc<DevGitHub>>,
    body: Result<Json<PushRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let refuse = |status: StatusCode, error: &str, message: String| {
        (
            status,
            Json(serde_json::json!({"error": error, "message": message})),
        )
            .into_response()
    };
    let Json(request) = match body {
        Ok(body) => body,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "body", e.body_text()),
    };
    let pr: PrRef = match format!("{}#{}", request.repository, request.pull_request).parse() {
        Ok(pr) => pr,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "pull_request", e.to_string()),
    };
    match github.push(&pr, &request.head_sha, Timestamp::now()) {
        Ok(pushed) => {
            tracing::info!(pull_request = %pr, before = %pushed.before, head = %pushed.head_sha, "dev GitHub: pushed");
            (StatusCode::OK, Json(pushed)).into_response()
        }
        Err(label_cas::Error::NotFound { .. }) => refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("pull request {pr} was never opened on the dev GitHub"),
        ),
        Err(e) => refuse(StatusCode::BAD_REQUEST, "head_sha", e.to_string()),
    }
}

#[async_trait]
impl PullLookup for DevGitHub {
    async fn open_pulls(
        &self,
        owner: &str,
        repo: &str,
        branch: &str,
    ) -> Result<Vec<OpenPull>, LookupError> {
        let opened = self
            .opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // Newest first, as GitHub lists them.
        Ok(opened
            .iter()
            .rev()
            .filter(|pr| {
                pr.owner().eq_ignore_ascii_case(owner) && pr.repo().eq_ignore_ascii_case(repo)
            })
            .filter_map(|pr| {
                let pull = self.pulls.pull_request(pr)?;
                (pull.is_open() && pull.head_ref == branch).then(|| OpenPull {
                    pr: pr.clone(),
                    labels: pull.labels.into_names(),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "1111111111111111111111111111111111111111";
    const NEW: &str = "2222222222222222222222222222222222222222";

    #[tokio::test]
    async fn a_push_moves_the_head_the_saga_reads_and_the_branch_still_finds_its_pull() {
        let github = DevGitHub::new(Arc::new(MemoryPullRequests::new()));
        let pr = PrRef::new("acme", "widgets", 7).unwrap();
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        github
            .open(&pr, "task-42-fix", OLD, &["ready-for-qa"], at)
            .unwrap();
        let later = Timestamp::from_second(1_800_000_060).unwrap();
        let pushed = github.push(&pr, NEW, later).unwrap();
        assert_eq!(
            (pushed.before.as_str(), pushed.head_sha.as_str()),
            (OLD, NEW)
        );
        let pull = github.pulls().pull_request(&pr).unwrap();
        assert_eq!(pull.head_sha, NEW);
        assert_eq!(pull.updated_at, Some(later));
        let found = github
            .open_pulls("ACME", "widgets", "task-42-fix")
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].labels, ["ready-for-qa"]);
        assert!(
            github
                .open_pulls("acme", "widgets", "main")
                .await
                .unwrap()
                .is_empty()
        );
        let unknown = PrRef::new("acme", "widgets", 8).unwrap();
        assert!(matches!(
            github.push(&unknown, NEW, later),
            Err(label_cas::Error::NotFound { .. })
        ));
    }
}
