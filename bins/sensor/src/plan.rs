//! What a verified delivery asks of the sensor: answer a ping, ignore it
//! (with a reason), refuse it (400), or record a fact in a task's state and
//! then hand a cancellation to the coordinator.
//!
//! The rule it keeps: **only what supersedes work becomes a fact.** Tag
//! pushes, deletions, no-op pushes, forks, other repositories and senders,
//! unmapped branches and every other event or action are ignored (202, a
//! counted reason), so GitHub never shows them as failed deliveries and no
//! state is written for them.

use cancel_coordinator::{Reason, is_sha};
use github_webhook::{Event, PullRequestAction, PushEvent, UnhandledReason};
use jiff::Timestamp;
use label_cas::PrRef;
use state_store::Supersession;

use crate::mapping::{AllowLists, TaskMapping};

/// What to do with a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// `ping`: answer 200.
    Pong,
    /// Answer 202 and do nothing; the reason is a metric label.
    Ignore(&'static str),
    /// Answer 400 with this message.
    Invalid(String),
    /// Record the fact, then hand it off.
    Record(Record),
    /// The task can only be found through GitHub (label mapping of a
    /// push): look the branch's pull requests up first.
    LookUp(LookUp),
}

/// A fact to record in `task_id`'s state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The task.
    pub task_id: String,
    /// The head the event reports (lower case).
    pub head_sha: String,
    /// The push observed with the delivery.
    pub push: Supersession,
    /// What the coordinator gets once the fact is stored.
    pub handoff: Handoff,
    /// The pull request the event names (every `pull_request` event; a
    /// push names none): stored with the fact, so that recovery can act on
    /// it if this process dies before its handoff.
    pub pull: Option<PrRef>,
}

/// What the coordinator gets once a fact is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// Nothing (`opened`, `reopened`: the head is recorded, nothing is
    /// superseded yet).
    Nothing,
    /// A cancellation for this pull request.
    Pull(PrRef, Reason),
    /// A push: find the branch's open pull request, then a cancellation.
    Branch {
        /// Repository owner.
        owner: String,
        /// Repository name.
        repo: String,
        /// The pushed branch.
        branch: String,
    },
}

/// A push whose task only labels can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookUp {
    /// Repository owner.
    pub owner: String,
    /// Repository name.
    pub repo: String,
    /// The pushed branch.
    pub branch: String,
    /// The head pushed (lower case).
    pub head_sha: String,
    /// The push.
    pub push: Supersession,
}

/// The rules a plan is made by.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Task mapping.
    pub mapping: TaskMapping,
    /// Allow-lists.
    pub allow: AllowLists,
    /// Whether a closed pull request cancels its task's runs.
    pub cancel_on_close: bool,
}

impl Rules {
    /// The plan for `event`, delivered as `delivery_id` with
    /// `correlation_id`.
    pub fn plan(&self, event: &Event, delivery_id: &str, correlation_id: &str) -> Plan {
        let fact = |head_sha: &str, pushed_at: Timestamp| Supersession {
            head_sha: head_sha.to_owned(),
            pushed_at,
            delivery_id: delivery_id.to_owned(),
            correlation_id: Some(correlation_id.to_owned()),
        };
        match event {
            Event::Ping(_) => Plan::Pong,
            Event::Push(push) => self.push(push, fact),
            Event::PullRequest(pr) => {
                if !self.allow.repository(&pr.repository.full_name()) {
                    return Plan::Ignore("repository");
                }
                if !self.allow.sender(pr.sender.as_deref()) {
                    return Plan::Ignore("sender");
                }
                let handoff = |pr_ref: PrRef| match &pr.action {
                    PullRequestAction::Synchronize => Some(Handoff::Pull(pr_ref, Reason::Push)),
                    PullRequestAction::Closed if self.cancel_on_close => {
                        Some(Handoff::Pull(pr_ref, Reason::Closed))
                    }
                    PullRequestAction::Opened | PullRequestAction::Reopened => {
                        Some(Handoff::Nothing)
                    }
                    PullRequestAction::Closed | PullRequestAction::Other(_) => None,
                };
                let ignored = match &pr.action {
                    PullRequestAction::Closed => "close_not_cancelling",
                    _ => "action",
                };
                let base = pr.repository.full_name();
                if pr
                    .head_repository
                    .as_deref()
                    .is_some_and(|head| !head.eq_ignore_ascii_case(&base))
                {
                    // A fork's branch names are chosen by its owner.
                    return Plan::Ignore("fork");
                }
                let pr_ref = match PrRef::new(&pr.repository.owner, &pr.repository.name, pr.number)
                {
                    Ok(pr_ref) => pr_ref,
                    Err(e) => return Plan::Invalid(format!("pull request: {e}")),
                };
                let Some(handoff) = handoff(pr_ref.clone()) else {
                    return Plan::Ignore(ignored);
                };
                if !is_sha(&pr.head_sha) {
                    return Plan::Invalid(
                        "pull_request.head.sha is not 40 hexadecimal characters".to_owned(),
                    );
                }
                let Some(task_id) = self
                    .mapping
                    .task_for(&pr.head_ref, pr.labels.iter().map(String::as_str))
                else {
                    return Plan::Ignore("unmapped");
                };
                let at = match pr.action {
                    PullRequestAction::Closed => pr.closed_at.or(pr.updated_at),
                    _ => pr.updated_at,
                };
                let Some(at) = at else {
                    return Plan::Invalid("missing pull_request.updated_at".to_owned());
                };
                let head_sha = pr.head_sha.to_ascii_lowercase();
                Plan::Record(Record {
                    task_id,
                    push: fact(&head_sha, at),
                    head_sha,
                    handoff,
                    pull: Some(pr_ref),
                })
            }
            Event::Unhandled(unhandled) => match (unhandled.event.as_str(), unhandled.reason) {
                ("create", _) => Plan::Ignore("create"),
                ("delete", _) => Plan::Ignore("delete"),
                (_, UnhandledReason::UnknownAction) => Plan::Ignore("unknown_action"),
                _ => Plan::Ignore("event"),
            },
        }
    }

    fn push(&self, push: &PushEvent, fact: impl Fn(&str, Timestamp) -> Supersession) -> Plan {
        if !self.allow.repository(&push.repository.full_name()) {
            return Plan::Ignore("repository");
        }
        if !self.allow.sender(push.sender.as_deref()) {
            return Plan::Ignore("sender");
        }
        if push.tag().is_some() {
            return Plan::Ignore(if push.is_deletion() {
                "tag_deleted"
            } else {
                "tag"
            });
        }
        let Some(branch) = push.branch() else {
            return Plan::Ignore("not_a_branch");
        };
        if push.is_deletion() {
            return Plan::Ignore("branch_deleted");
        }
        if push.is_noop() {
            return Plan::Ignore("no_change");
        }
        if !is_sha(&push.after) {
            return Plan::Invalid("push.after is not 40 hexadecimal characters".to_owned());
        }
        let Some(pushed_at) = push.pushed_at else {
            return Plan::Invalid("missing repository.pushed_at".to_owned());
        };
        let head_sha = push.after.to_ascii_lowercase();
        let (owner, repo) = (&push.repository.owner, &push.repository.name);
        match self.mapping.task_for_branch(branch) {
            Some(task_id) => Plan::Record(Record {
                task_id,
                push: fact(&head_sha, pushed_at),
                head_sha,
                handoff: Handoff::Branch {
                    owner: owner.clone(),
                    repo: repo.clone(),
                    branch: branch.to_owned(),
                },
                pull: None,
            }),
            None if self.mapping.uses_labels() => Plan::LookUp(LookUp {
                owner: owner.clone(),
                repo: repo.clone(),
                branch: branch.to_owned(),
                push: fact(&head_sha, pushed_at),
                head_sha,
            }),
            None => Plan::Ignore("unmapped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_BRANCH_PATTERN;
    use github_webhook::{PullRequestEvent, Repository, UnhandledEvent};
    use regex::Regex;

    const SHA: &str = "2222222222222222222222222222222222222222";

    fn rules(labels: Option<&str>) -> Rules {
        Rules {
            mapping: TaskMapping::new(
                Some(Regex::new(DEFAULT_BRANCH_PATTERN).unwrap()),
                labels.map(str::to_owned),
            ),
            allow: AllowLists::new(&["acme/widgets".into()], &[]),
            cancel_on_close: true,
        }
    }

    fn repo() -> Repository {
        Repository {
            owner: "acme".into(),
            name: "widgets".into(),
        }
    }

    fn push(git_ref: &str) -> PushEvent {
        PushEvent {
            repository: repo(),
            sender: Some("agent".into()),
            git_ref: git_ref.into(),
            before: "1".repeat(40),
            after: SHA.into(),
            created: false,
            deleted: false,
            forced: false,
            pushed_at: Some(Timestamp::from_second(1_800_000_000).unwrap()),
        }
    }

    fn pull(action: PullRequestAction) -> PullRequestEvent {
        PullRequestEvent {
            action,
            number: 7,
            repository: repo(),
            sender: Some("agent".into()),
            head_sha: SHA.to_uppercase(),
            head_ref: "task-42-fix".into(),
            head_repository: Some("acme/widgets".into()),
            labels: vec![],
            open: true,
            merged: false,
            updated_at: Some(Timestamp::from_second(1_800_000_001).unwrap()),
            closed_at: None,
        }
    }

    fn plan(rules: &Rules, event: &Event) -> Plan {
        rules.plan(event, "guid-1", "guid-1")
    }

    #[test]
    fn a_branch_push_records_the_head_and_looks_up_its_pull_request_later() {
        let Plan::Record(record) = plan(&rules(None), &Event::Push(push("refs/heads/task-42-fix")))
        else {
            panic!()
        };
        assert_eq!(record.task_id, "42");
        assert_eq!(record.head_sha, SHA);
        assert_eq!(record.push.delivery_id, "guid-1");
        assert_eq!(record.push.correlation_id.as_deref(), Some("guid-1"));
        assert!(
            matches!(record.handoff, Handoff::Branch { ref branch, .. } if branch == "task-42-fix")
        );
    }

    #[test]
    fn pushes_that_supersede_nothing_are_ignored_with_their_reason() {
        let r = rules(None);
        let mut deleted = push("refs/heads/task-42-fix");
        deleted.deleted = true;
        deleted.after = "0".repeat(40);
        let mut noop = push("refs/heads/task-42-fix");
        noop.before = SHA.into();
        let mut tag_deleted = push("refs/tags/v1");
        tag_deleted.after = "0".repeat(40);
        let mut other_repo = push("refs/heads/task-42-fix");
        other_repo.repository.name = "other".into();
        for (event, reason) in [
            (push("refs/tags/v1"), "tag"),
            (tag_deleted, "tag_deleted"),
            (deleted, "branch_deleted"),
            (noop, "no_change"),
            (push("refs/heads/main"), "unmapped"),
            (push("refs/notes/x"), "not_a_branch"),
            (other_repo, "repository"),
        ] {
            assert_eq!(plan(&r, &Event::Push(event)), Plan::Ignore(reason));
        }
    }

    #[test]
    fn a_sender_outside_the_allow_list_supersedes_nothing() {
        let mut r = rules(None);
        r.allow = AllowLists::new(&["acme/*".into()], &["agent".into()]);
        let mut human = push("refs/heads/task-42-fix");
        human.sender = Some("human".into());
        assert_eq!(plan(&r, &Event::Push(human)), Plan::Ignore("sender"));
        assert!(matches!(
            plan(&r, &Event::Push(push("refs/heads/task-42-fix"))),
            Plan::Record(_)
        ));
    }

    #[test]
    fn pull_request_actions_decide_the_handoff() {
        let r = rules(None);
        let Plan::Record(sync) = plan(
            &r,
            &Event::PullRequest(pull(PullRequestAction::Synchronize)),
        ) else {
            panic!()
        };
        assert_eq!(sync.head_sha, SHA, "lower-cased");
        assert!(matches!(sync.handoff, Handoff::Pull(ref pr, Reason::Push) if pr.number() == 7));
        assert_eq!(
            sync.push.pushed_at,
            Timestamp::from_second(1_800_000_001).unwrap()
        );

        let mut closed = pull(PullRequestAction::Closed);
        closed.closed_at = Some(Timestamp::from_second(1_800_000_009).unwrap());
        let Plan::Record(close) = plan(&r, &Event::PullRequest(closed.clone())) else {
            panic!()
        };
        assert!(matches!(close.handoff, Handoff::Pull(_, Reason::Closed)));
        assert_eq!(
            close.push.pushed_at,
            Timestamp::from_second(1_800_000_009).unwrap()
        );

        let Plan::Record(opened) = plan(&r, &Event::PullRequest(pull(PullRequestAction::Opened)))
        else {
            panic!()
        };
        assert_eq!(opened.handoff, Handoff::Nothing);
        assert_eq!(
            opened.pull.as_ref().map(PrRef::number),
            Some(7),
            "opened names its pull request"
        );

        let labeled = pull(PullRequestAction::Other("labeled".into()));
        assert_eq!(
            plan(&r, &Event::PullRequest(labeled)),
            Plan::Ignore("action")
        );
        let no_close = Rules {
            cancel_on_close: false,
            ..rules(None)
        };
        assert_eq!(
            plan(&no_close, &Event::PullRequest(closed)),
            Plan::Ignore("close_not_cancelling")
        );
    }

    #[test]
    fn forks_unmapped_and_malformed_pull_requests_are_not_recorded() {
        let r = rules(None);
        let mut fork = pull(PullRequestAction::Synchronize);
        fork.head_repository = Some("mallory/widgets".into());
        assert_eq!(plan(&r, &Event::PullRequest(fork)), Plan::Ignore("fork"));
        let mut unmapped = pull(PullRequestAction::Synchronize);
        unmapped.head_ref = "feature".into();
        assert_eq!(
            plan(&r, &Event::PullRequest(unmapped)),
            Plan::Ignore("unmapped")
        );
        let mut bad_sha = pull(PullRequestAction::Synchronize);
        bad_sha.head_sha = "abc".into();
        assert!(matches!(
            plan(&r, &Event::PullRequest(bad_sha)),
            Plan::Invalid(_)
        ));
        let mut no_time = pull(PullRequestAction::Synchronize);
        no_time.updated_at = None;
        assert!(
            matches!(plan(&r, &Event::PullRequest(no_time)), Plan::Invalid(m) if m.contains("updated_at"))
        );
    }

    #[test]
    fn labels_map_a_pull_request_and_make_a_push_look_its_pull_request_up() {
        let r = rules(Some("task-"));
        let mut labeled = pull(PullRequestAction::Synchronize);
        labeled.head_ref = "feature".into();
        labeled.labels = vec!["task-9".into()];
        let Plan::Record(record) = plan(&r, &Event::PullRequest(labeled)) else {
            panic!()
        };
        assert_eq!(record.task_id, "9");
        let Plan::LookUp(lookup) = plan(&r, &Event::Push(push("refs/heads/feature"))) else {
            panic!()
        };
        assert_eq!(lookup.branch, "feature");
        assert_eq!(lookup.head_sha, SHA);
    }

    #[test]
    fn other_events_are_ignored_by_kind() {
        let r = rules(None);
        let unhandled = |event: &str, reason| {
            Event::Unhandled(UnhandledEvent {
                event: event.into(),
                action: None,
                reason,
            })
        };
        assert_eq!(
            plan(&r, &unhandled("create", UnhandledReason::NotInterpreted)),
            Plan::Ignore("create")
        );
        assert_eq!(
            plan(&r, &unhandled("delete", UnhandledReason::NotInterpreted)),
            Plan::Ignore("delete")
        );
        assert_eq!(
            plan(
                &r,
                &unhandled("pull_request", UnhandledReason::UnknownAction)
            ),
            Plan::Ignore("unknown_action")
        );
        assert_eq!(
            plan(&r, &unhandled("issues", UnhandledReason::NotInterpreted)),
            Plan::Ignore("event")
        );
        assert_eq!(
            plan(
                &r,
                &Event::Ping(github_webhook::PingEvent {
                    zen: None,
                    hook_id: None
                })
            ),
            Plan::Pong
        );
    }
}
