//! The seeded task of the dev modes: task `42`, working on one head of pull
//! request 7 of the dev repository (branch `task-42-fix`), labelled
//! `ready-for-qa` — so the first push a newcomer sends supersedes
//! something. The fleet starts its runs on its first pass.
//!
//! The rule it keeps: **seeding never overwrites.** A state that exists
//! (a restart against a kept cluster) is left as it is, and so is a pull
//! request already open on the dev GitHub.

use jiff::Timestamp;
use label_cas::PrRef;
use state_store::{HeadRecord, RemediationState, StateStore, TaskStatus};
use tracing::info;

use crate::dev::github::DevGitHub;

/// The head the seeded task's runs work on.
pub const SEED_HEAD: &str = "9fceb02d0ae598e95dc970b74767f19372d61af8";

/// The label the seeded pull request carries (the saga's default
/// transition removes it and adds `needs-qa`).
pub const SEED_LABEL: &str = "ready-for-qa";

/// What is seeded.
#[derive(Clone, Debug)]
pub struct Seed {
    /// The task.
    pub task_id: String,
    /// Its pull request.
    pub pr: PrRef,
    /// Its branch.
    pub branch: String,
}

impl Seed {
    /// Writes the task's state (if it has none) and opens its pull request
    /// on `github` (if in memory and not open yet); returns the head the
    /// task works on.
    pub async fn plant(
        &self,
        store: &StateStore,
        github: Option<&DevGitHub>,
    ) -> Result<String, state_store::Error> {
        let now = Timestamp::now();
        let head = match store.get(&self.task_id).await? {
            Some(snapshot) => {
                info!(task_id = %self.task_id, "dev seed: the task has a state already; left as it is");
                snapshot
                    .state
                    .latest_head
                    .map_or_else(|| SEED_HEAD.to_owned(), |h| h.sha)
            }
            None => {
                let pr = self.pr.to_string();
                store
                    .update(&self.task_id, |s: &mut RemediationState| {
                        if s.latest_head.is_none() {
                            // The first head: nothing superseded, nothing pending.
                            s.latest_head = Some(HeadRecord {
                                sha: SEED_HEAD.to_owned(),
                                pushed_at: now,
                                delivery_id: "dev-seed".to_owned(),
                            });
                            s.status = TaskStatus::InProgress;
                            s.iteration = s.iteration.max(1);
                            s.metadata.insert(
                                cancel_coordinator::METADATA_PULL_REQUEST.to_owned(),
                                pr.clone(),
                            );
                        }
                        Ok::<_, state_store::Error>(())
                    })
                    .await?;
                SEED_HEAD.to_owned()
            }
        };
        if let Some(github) = github
            && github.pulls().pull_request(&self.pr).is_none()
            && let Err(error) = github.open(&self.pr, &self.branch, &head, &[SEED_LABEL], now)
        {
            tracing::warn!(%error, "dev seed: the pull request could not be opened");
        }
        info!(task_id = %self.task_id, pull_request = %self.pr, head = %head, "dev seed: task seeded");
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use label_cas::MemoryPullRequests;
    use state_store::MemoryBackend;

    use super::*;

    #[tokio::test]
    async fn the_task_gets_one_head_its_pull_request_and_label_and_a_second_plant_changes_nothing()
    {
        let store = StateStore::new(MemoryBackend::new());
        let github = DevGitHub::new(Arc::new(MemoryPullRequests::new()));
        let seed = Seed {
            task_id: "42".into(),
            pr: PrRef::new("acme", "widgets", 7).unwrap(),
            branch: "task-42-fix".into(),
        };
        assert_eq!(seed.plant(&store, Some(&github)).await.unwrap(), SEED_HEAD);
        let state = store.get("42").await.unwrap().unwrap().state;
        assert_eq!(state.latest_head.unwrap().sha, SEED_HEAD);
        assert!(
            state.pending_supersessions.is_empty(),
            "nothing is superseded yet"
        );
        assert_eq!(state.status, TaskStatus::InProgress);
        let pull = github.pulls().pull_request(&seed.pr).unwrap();
        assert_eq!(
            (pull.head_sha.as_str(), pull.head_ref.as_str()),
            (SEED_HEAD, "task-42-fix")
        );
        assert_eq!(pull.labels.names(), [SEED_LABEL]);

        let before = store.get("42").await.unwrap().unwrap().resource_version;
        seed.plant(&store, Some(&github)).await.unwrap();
        assert_eq!(
            store.get("42").await.unwrap().unwrap().resource_version,
            before
        );
    }
}
