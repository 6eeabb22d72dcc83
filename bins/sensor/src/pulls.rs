//! Which open pull request a pushed branch belongs to: a push payload names
//! a branch but no pull request, and the coordinator needs one (it reads
//! the pull request's current head and moves its labels).
//!
//! The rule it keeps: one bounded GET per lookup (`GET
//! /repos/{owner}/{repo}/pulls?state=open&head={owner}:{branch}`, GitHub's
//! own filter, current at once where a commit's pull request index may lag),
//! and only the fields the sensor uses are read from the answer.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use label_cas::PrRef;
use octocrab::Octocrab;
use serde::Deserialize;

/// An open pull request, as much as the sensor needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenPull {
    /// The pull request.
    pub pr: PrRef,
    /// Its labels.
    pub labels: Vec<String>,
}

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
#[error("pull request lookup for {owner}/{repo}:{branch}: {reason}")]
pub struct LookupError {
    /// Repository owner.
    pub owner: String,
    /// Repository name.
    pub repo: String,
    /// The branch looked up.
    pub branch: String,
    /// What went wrong.
    pub reason: String,
}

/// Finds the open pull requests from a branch of a repository (not forks).
#[async_trait]
pub trait PullLookup: Send + Sync + 'static {
    /// The open pull requests whose head is `owner:branch` in `owner/repo`,
    /// newest first.
    async fn open_pulls(
        &self,
        owner: &str,
        repo: &str,
        branch: &str,
    ) -> Result<Vec<OpenPull>, LookupError>;
}

/// [`PullLookup`] on GitHub's REST API.
#[derive(Clone, Debug)]
pub struct GitHubPullLookup {
    octocrab: Octocrab,
}

impl GitHubPullLookup {
    /// Over `octocrab` (its credentials and base URI).
    pub fn new(octocrab: Octocrab) -> Self {
        Self { octocrab }
    }
}

/// The fields of GitHub's `pull-request-simple` the sensor reads.
#[derive(Deserialize)]
struct ListedPull {
    number: u64,
    #[serde(default)]
    labels: Vec<ListedLabel>,
}

#[derive(Deserialize)]
struct ListedLabel {
    name: String,
}

/// At most this many open pull requests from one branch are read (GitHub
/// allows one open pull request per head and base; a few bases at most).
const PER_PAGE: &str = "10";

#[async_trait]
impl PullLookup for GitHubPullLookup {
    async fn open_pulls(
        &self,
        owner: &str,
        repo: &str,
        branch: &str,
    ) -> Result<Vec<OpenPull>, LookupError> {
        let fail = |reason: String| LookupError {
            owner: owner.to_owned(),
            repo: repo.to_owned(),
            branch: branch.to_owned(),
            reason,
        };
        // Validates the names before they reach a URL path.
        PrRef::new(owner, repo, 1).map_err(|e| fail(e.to_string()))?;
        let head = format!("{owner}:{branch}");
        let params = [
            ("state", "open"),
            ("head", head.as_str()),
            ("per_page", PER_PAGE),
        ];
        let listed: Vec<ListedPull> = self
            .octocrab
            .get(format!("/repos/{owner}/{repo}/pulls"), Some(&params))
            .await
            .map_err(|e| fail(octocrab_reason(&e)))?;
        listed
            .into_iter()
            .map(|p| {
                Ok(OpenPull {
                    pr: PrRef::new(owner, repo, p.number).map_err(|e| fail(e.to_string()))?,
                    labels: p.labels.into_iter().map(|l| l.name).collect(),
                })
            })
            .collect()
    }
}

/// An octocrab error in one line, without the request's headers.
fn octocrab_reason(e: &octocrab::Error) -> String {
    match e {
        octocrab::Error::GitHub { source, .. } => {
            format!("GitHub answered {}: {}", source.status_code, source.message)
        }
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// [`PullLookup`] in memory (`--dev`, tests): pull requests set by hand.
#[derive(Debug, Default)]
pub struct MemoryPullLookup {
    pulls: Mutex<HashMap<(String, String, String), Vec<OpenPull>>>,
}

impl MemoryPullLookup {
    /// Knows no pull request.
    pub fn new() -> Self {
        Self::default()
    }

    /// `pr` is open from `branch` of its repository, carrying `labels`.
    pub fn open(&self, pr: &PrRef, branch: &str, labels: &[&str]) {
        let key = branch_key(pr.owner(), pr.repo(), branch);
        let pull = OpenPull {
            pr: pr.clone(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        };
        let mut pulls = self.pulls.lock().unwrap_or_else(PoisonError::into_inner);
        let list = pulls.entry(key).or_default();
        list.retain(|p| p.pr != *pr);
        list.insert(0, pull);
    }

    /// `pr` is closed: no longer found.
    pub fn close(&self, pr: &PrRef) {
        let mut pulls = self.pulls.lock().unwrap_or_else(PoisonError::into_inner);
        for list in pulls.values_mut() {
            list.retain(|p| p.pr != *pr);
        }
    }
}

#[async_trait]
impl PullLookup for MemoryPullLookup {
    async fn open_pulls(
        &self,
        owner: &str,
        repo: &str,
        branch: &str,
    ) -> Result<Vec<OpenPull>, LookupError> {
        let key = branch_key(owner, repo, branch);
        let pulls = self.pulls.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(pulls.get(&key).cloned().unwrap_or_default())
    }
}

/// A branch's key: GitHub's owner and repository names are case-insensitive,
/// branch names are not.
fn branch_key(owner: &str, repo: &str, branch: &str) -> (String, String, String) {
    (
        owner.to_ascii_lowercase(),
        repo.to_ascii_lowercase(),
        branch.to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_lookup_finds_open_pulls_of_a_branch_only() {
        let lookup = MemoryPullLookup::new();
        let seven = PrRef::new("acme", "widgets", 7).unwrap();
        lookup.open(&seven, "task-42-fix", &["task-42"]);
        let found = lookup
            .open_pulls("Acme", "widgets", "task-42-fix")
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pr.number(), 7);
        assert_eq!(found[0].labels, ["task-42"]);
        assert!(
            lookup
                .open_pulls("acme", "widgets", "other")
                .await
                .unwrap()
                .is_empty()
        );
        lookup.close(&seven);
        assert!(
            lookup
                .open_pulls("acme", "widgets", "task-42-fix")
                .await
                .unwrap()
                .is_empty()
        );
    }
}
