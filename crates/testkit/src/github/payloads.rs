//! Webhook payloads as GitHub sends them (`push`, `pull_request`, `ping`),
//! built from real payloads (`fixtures/github/*.payload.json`) so a receiver
//! parses the same shape it gets from GitHub.
//!
//! The one rule: a payload reports the change that caused it and nothing
//! else: the fixture's envelope (`repository`, `sender`, `pusher`) is
//! rewritten for the repository and every field the change determines is
//! set; the rest stays as GitHub sent it. The `installation` field is the
//! delivery log's to fill in, since it depends on the webhook's
//! configuration.

use std::sync::OnceLock;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::pull::{parse_fixture, retarget, set, synchronize_fixture, timestamp};
use super::store::Push;

const PUSH_FIXTURE: &str = include_str!("../../fixtures/github/push_with-new-branch.payload.json");
const PING_FIXTURE: &str = include_str!("../../fixtures/github/ping.payload.json");

/// The events the App's webhook is subscribed to, as its ping reports them.
const SUBSCRIBED_EVENTS: [&str; 2] = ["pull_request", "push"];

/// One event to deliver: its `X-GitHub-Event`, action and payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    pub(crate) name: &'static str,
    pub(crate) action: Option<String>,
    /// The repository it is about, as the deliveries list reports it.
    pub(crate) repository_id: Option<u64>,
    /// Whether it is sent on behalf of the App's installation (every event
    /// but `ping`), and so carries `installation`.
    pub(crate) installation: bool,
    pub(crate) payload: Value,
}

/// The repository an event is about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RepoRef<'a> {
    pub(crate) api_base: &'a str,
    pub(crate) owner: &'a str,
    pub(crate) name: &'a str,
    pub(crate) id: u64,
}

/// What a `pull_request` event adds to its envelope.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PullExtra {
    /// `opened`, `closed`, `reopened`.
    None,
    /// `synchronize`: the head before and after the push.
    Synchronize { before: String, after: String },
    /// `labeled`, `unlabeled`: the label object.
    Label(Value),
}

/// The `push` event of `push` to `repo` at wall-clock `now`; `message`
/// gives each pushed commit's message.
pub(crate) fn push(
    repo: RepoRef<'_>,
    push: &Push,
    now: jiff::Timestamp,
    message: &dyn Fn(&str) -> String,
) -> Event {
    let fixture = push_fixture();
    let html_repo = format!("https://github.com/{}/{}", repo.owner, repo.name);
    let commit = |sha: &str| {
        let mut commit = fixture
            .pointer("/commits/0")
            .cloned()
            .unwrap_or_else(|| json!({}));
        set(&mut commit, "/id", Value::from(sha));
        set(&mut commit, "/tree_id", Value::from(tree_id(sha)));
        set(&mut commit, "/message", Value::from(message(sha)));
        set(&mut commit, "/timestamp", Value::from(timestamp(now)));
        set(
            &mut commit,
            "/url",
            Value::from(format!("{html_repo}/commit/{sha}")),
        );
        // The fake does not know the files a commit touches.
        for files in ["/added", "/removed", "/modified"] {
            set(&mut commit, files, json!([]));
        }
        commit
    };
    let short = |sha: &str| sha.get(..12).unwrap_or(sha).to_owned();
    let compare = if push.created {
        format!("{html_repo}/commit/{}", push.after)
    } else {
        format!(
            "{html_repo}/compare/{}...{}",
            short(&push.before),
            short(&push.after)
        )
    };
    let head_commit = if push.deleted {
        Value::Null
    } else {
        commit(&push.after)
    };

    let mut payload = fixture.clone();
    retarget(&mut payload, repo.api_base, repo.owner, repo.name);
    if let Some(fields) = payload.as_object_mut() {
        fields.insert("ref".into(), Value::from(push.git_ref.as_str()));
        fields.insert("before".into(), Value::from(push.before.as_str()));
        fields.insert("after".into(), Value::from(push.after.as_str()));
        fields.insert("created".into(), Value::from(push.created));
        fields.insert("deleted".into(), Value::from(push.deleted));
        fields.insert("forced".into(), Value::from(false));
        fields.insert("base_ref".into(), Value::Null);
        fields.insert("compare".into(), Value::from(compare));
        fields.insert(
            "commits".into(),
            Value::Array(push.commits.iter().map(|sha| commit(sha)).collect()),
        );
        fields.insert("head_commit".into(), head_commit);
    }
    set_repository_identity(&mut payload, repo);
    Event {
        name: "push",
        action: None,
        repository_id: Some(repo.id),
        installation: true,
        payload,
    }
}

/// The `pull_request` event with `action` about `pull_request` (rendered in
/// full, as `GET …/pulls/{n}` renders it).
pub(crate) fn pull_request(
    repo: RepoRef<'_>,
    action: &str,
    pull_request: Value,
    extra: PullExtra,
) -> Event {
    let fixture = synchronize_fixture();
    let number = pull_request.get("number").cloned().unwrap_or(Value::Null);
    let mut envelope = json!({
        "action": action,
        "number": number,
        "repository": fixture.get("repository").cloned().unwrap_or(Value::Null),
        "sender": fixture.get("sender").cloned().unwrap_or(Value::Null),
    });
    retarget(&mut envelope, repo.api_base, repo.owner, repo.name);
    set_repository_identity(&mut envelope, repo);
    if let Some(fields) = envelope.as_object_mut() {
        fields.insert("pull_request".into(), pull_request);
        match extra {
            PullExtra::None => {}
            PullExtra::Synchronize { before, after } => {
                fields.insert("before".into(), Value::from(before));
                fields.insert("after".into(), Value::from(after));
            }
            PullExtra::Label(label) => {
                fields.insert("label".into(), label);
            }
        }
    }
    Event {
        name: "pull_request",
        action: Some(action.to_owned()),
        repository_id: Some(repo.id),
        installation: true,
        payload: envelope,
    }
}

/// The App hook's `ping` (hook `hook_id` of App `app_id`, delivering to
/// `url`): the fixture's repository-hook ping in the App form, which names
/// the App and its deliveries instead of a repository.
pub(crate) fn ping(
    api_base: &str,
    hook_id: u64,
    app_id: u64,
    url: &str,
    has_secret: bool,
    now: jiff::Timestamp,
) -> Event {
    let mut payload = parse_fixture(PING_FIXTURE);
    let mut config = json!({ "content_type": "json", "insecure_ssl": "0", "url": url });
    if has_secret {
        // GitHub never shows a secret, only that there is one.
        config["secret"] = Value::from("********");
    }
    if let Some(fields) = payload.as_object_mut() {
        fields.remove("repository");
        fields.insert("hook_id".into(), Value::from(hook_id));
        if let Some(hook) = fields.get_mut("hook").and_then(Value::as_object_mut) {
            for repository_only in ["url", "test_url", "ping_url", "last_response"] {
                hook.remove(repository_only);
            }
            hook.insert("type".into(), Value::from("App"));
            hook.insert("id".into(), Value::from(hook_id));
            hook.insert("events".into(), json!(SUBSCRIBED_EVENTS));
            hook.insert("config".into(), config);
            hook.insert("created_at".into(), Value::from(timestamp(now)));
            hook.insert("updated_at".into(), Value::from(timestamp(now)));
            hook.insert("app_id".into(), Value::from(app_id));
            hook.insert(
                "deliveries_url".into(),
                Value::from(format!("{api_base}/app/hook/deliveries")),
            );
        }
    }
    Event {
        name: "ping",
        action: None,
        repository_id: None,
        installation: false,
        payload,
    }
}

/// The message the fake gives a pushed commit it knows nothing about.
pub(crate) fn commit_message(sha: &str) -> String {
    format!("Commit {}", sha.get(..7).unwrap_or(sha))
}

/// The message of pull request `number`'s merge commit, as GitHub writes it.
pub(crate) fn merge_message(number: u64, owner: &str, head_ref: &str) -> String {
    format!("Merge pull request #{number} from {owner}/{head_ref}")
}

/// Sets the repository's id, name and owner (the URLs are retargeted).
fn set_repository_identity(payload: &mut Value, repo: RepoRef<'_>) {
    set(payload, "/repository/id", Value::from(repo.id));
    set(payload, "/repository/name", Value::from(repo.name));
    set(payload, "/repository/owner/login", Value::from(repo.owner));
    set(payload, "/repository/owner/name", Value::from(repo.owner));
}

/// A stable stand-in for a commit's tree (the fake has no trees).
fn tree_id(sha: &str) -> String {
    let digest = Sha256::digest(format!("tree {sha}").as_bytes());
    hex::encode(digest).chars().take(40).collect()
}

fn push_fixture() -> &'static Value {
    static PAYLOAD: OnceLock<Value> = OnceLock::new();
    PAYLOAD.get_or_init(|| parse_fixture(PUSH_FIXTURE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::store::ZERO_SHA;

    const REPO: RepoRef<'static> = RepoRef {
        api_base: "http://127.0.0.1:1",
        owner: "acme",
        name: "widgets",
        id: 7,
    };

    fn new_branch() -> Push {
        Push {
            git_ref: "refs/heads/feature".into(),
            before: ZERO_SHA.into(),
            after: "b".repeat(40),
            created: true,
            deleted: false,
            commits: vec!["a".repeat(40), "b".repeat(40)],
            synchronized: Vec::new(),
            closed: Vec::new(),
        }
    }

    #[test]
    fn push_reports_the_ref_commits_and_repository() {
        let event = push(
            REPO,
            &new_branch(),
            jiff::Timestamp::UNIX_EPOCH,
            &commit_message,
        );
        let p = &event.payload;
        assert_eq!(event.name, "push");
        assert_eq!(p["ref"], "refs/heads/feature");
        assert_eq!(p["after"], "b".repeat(40));
        assert_eq!(p["created"], true);
        assert_eq!(p["commits"].as_array().unwrap().len(), 2);
        assert_eq!(p["commits"][0]["message"], "Commit aaaaaaa");
        assert_eq!(p["head_commit"]["id"], "b".repeat(40));
        assert_eq!(p["repository"]["full_name"], "acme/widgets");
        assert_eq!(p["repository"]["id"], 7);
        assert_eq!(
            p["compare"],
            format!("https://github.com/acme/widgets/commit/{}", "b".repeat(40))
        );
        let text = p.to_string();
        assert!(!text.contains("Hello-World"), "{text}");
    }

    #[test]
    fn deletion_has_no_head_commit_and_compares_to_zeros() {
        let deleted = Push {
            before: "c".repeat(40),
            after: ZERO_SHA.into(),
            created: false,
            deleted: true,
            commits: Vec::new(),
            ..new_branch()
        };
        let p = push(REPO, &deleted, jiff::Timestamp::UNIX_EPOCH, &commit_message).payload;
        assert_eq!(p["deleted"], true);
        assert_eq!(p["head_commit"], Value::Null);
        assert_eq!(
            p["compare"],
            "https://github.com/acme/widgets/compare/cccccccccccc...000000000000"
        );
    }

    #[test]
    fn app_ping_names_the_app_and_no_repository() {
        let p = ping(
            "http://h",
            9,
            12,
            "http://127.0.0.1:2/hook",
            true,
            jiff::Timestamp::UNIX_EPOCH,
        )
        .payload;
        assert_eq!(p["hook_id"], 9);
        assert_eq!(p["hook"]["type"], "App");
        assert_eq!(p["hook"]["app_id"], 12);
        assert_eq!(p["hook"]["config"]["secret"], "********");
        assert_eq!(p["hook"]["deliveries_url"], "http://h/app/hook/deliveries");
        assert!(p.get("repository").is_none());
        assert!(p["hook"].get("ping_url").is_none());
    }
}
