//! The events a supersede-style consumer acts on — `ping`, `push`,
//! `pull_request` — parsed into small owned types, and every other event
//! passed on unparsed.
//!
//! What is parsed how:
//! - the shared `action`, `repository` and `sender`: one pass over the
//!   document, everything else skipped;
//! - `push` and `pull_request`: typed structs holding only the fields
//!   consumers read, everything else (commits, users, the ~60 URLs of a
//!   pull request and its repositories) skipped unread. Reading octocrab's
//!   full `PullRequestWebhookEventPayload` instead — every URL parsed into a
//!   `url::Url`, every user, both repositories — was 46 % of the sensor's
//!   CPU per delivery (`webhook_bench`, profiled); a required field missing
//!   is still an error that names it;
//! - `ping`, and which `pull_request` actions exist: octocrab's
//!   `models::webhook_events` types.
//!
//! The rule it keeps: **octocrab parses only what it can parse soundly.**
//! Its `pull_request` action enum has no catch-all, so an action GitHub
//! added after this build is read as a string first and reported as
//! [`UnhandledReason::UnknownAction`] (a consumer ignores it; a 400 would
//! make GitHub show every such delivery as failed). Events nobody here
//! interprets are never parsed beyond the shared fields, so a change in
//! their payloads cannot turn into a refusal.

use jiff::Timestamp;
use octocrab::models::webhook_events::payload::{
    PingWebhookEventPayload, PullRequestWebhookEventAction,
};
use serde::Deserialize;

/// A repository, as `owner/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Repository {
    /// The owner's login (user or organisation).
    pub owner: String,
    /// The repository's name.
    pub name: String,
}

impl Repository {
    /// `owner/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

/// A parsed webhook event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `ping`: sent when a webhook is created or tested.
    Ping(PingEvent),
    /// `push`: commits pushed to a branch or tag, or a ref deleted.
    Push(PushEvent),
    /// `pull_request` with an action octocrab knows.
    PullRequest(PullRequestEvent),
    /// Anything else: another event, or a `pull_request` action this build
    /// does not know.
    Unhandled(UnhandledEvent),
}

impl Event {
    /// The payload's `action`, if it has one.
    pub fn action(&self) -> Option<&str> {
        match self {
            Self::Ping(_) | Self::Push(_) => None,
            Self::PullRequest(pr) => Some(pr.action.as_str()),
            Self::Unhandled(u) => u.action.as_deref(),
        }
    }
}

/// `ping`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PingEvent {
    /// GitHub's zen line.
    pub zen: Option<String>,
    /// The webhook's id.
    pub hook_id: Option<u64>,
}

/// `push`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushEvent {
    /// Where it was pushed.
    pub repository: Repository,
    /// Who pushed (the sender's login).
    pub sender: Option<String>,
    /// The full ref: `refs/heads/<branch>` or `refs/tags/<tag>`.
    pub git_ref: String,
    /// The ref's sha before the push (all zeros for a new ref).
    pub before: String,
    /// The ref's sha after the push (all zeros for a deletion).
    pub after: String,
    /// Whether the push created the ref.
    pub created: bool,
    /// Whether the push deleted the ref.
    pub deleted: bool,
    /// Whether it was a force-push.
    pub forced: bool,
    /// `repository.pushed_at` (a unix time in push payloads, which octocrab
    /// reads).
    pub pushed_at: Option<Timestamp>,
}

impl PushEvent {
    /// The branch, when the ref is one (`refs/heads/` stripped).
    pub fn branch(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/heads/")
    }

    /// The tag, when the ref is one (`refs/tags/` stripped).
    pub fn tag(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/tags/")
    }

    /// Whether the ref was deleted (`deleted: true`, or `after` all zeros).
    pub fn is_deletion(&self) -> bool {
        self.deleted || is_zero_sha(&self.after)
    }

    /// Whether the ref did not move (`before == after`).
    pub fn is_noop(&self) -> bool {
        self.before.eq_ignore_ascii_case(&self.after)
    }
}

/// The `pull_request` actions a consumer is likely to branch on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PullRequestAction {
    /// `opened`.
    Opened,
    /// `reopened`.
    Reopened,
    /// `synchronize`: new commits on the head branch.
    Synchronize,
    /// `closed` (merged or not: see [`PullRequestEvent::merged`]).
    Closed,
    /// Another action octocrab knows (`labeled`, `edited`, …), as GitHub
    /// spells it.
    Other(String),
}

impl PullRequestAction {
    /// The action as GitHub spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Opened => "opened",
            Self::Reopened => "reopened",
            Self::Synchronize => "synchronize",
            Self::Closed => "closed",
            Self::Other(other) => other,
        }
    }

    fn from_str(action: &str) -> Self {
        match action {
            "opened" => Self::Opened,
            "reopened" => Self::Reopened,
            "synchronize" => Self::Synchronize,
            "closed" => Self::Closed,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// `pull_request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequestEvent {
    /// What happened.
    pub action: PullRequestAction,
    /// The pull request's number.
    pub number: u64,
    /// The base repository (where the pull request lives).
    pub repository: Repository,
    /// Who caused the event (the sender's login).
    pub sender: Option<String>,
    /// The head commit's sha.
    pub head_sha: String,
    /// The head branch's name.
    pub head_ref: String,
    /// The head repository as `owner/name` (another one for a fork).
    pub head_repository: Option<String>,
    /// The pull request's labels.
    pub labels: Vec<String>,
    /// Whether it is open.
    pub open: bool,
    /// Whether it was merged.
    pub merged: bool,
    /// When it last changed.
    pub updated_at: Option<Timestamp>,
    /// When it was closed, if it is.
    pub closed_at: Option<Timestamp>,
}

/// An event passed on without interpretation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnhandledEvent {
    /// The (normalised) event name.
    pub event: String,
    /// The payload's `action`, if any.
    pub action: Option<String>,
    /// Why it was not interpreted.
    pub reason: UnhandledReason,
}

/// Why an event was passed on without interpretation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnhandledReason {
    /// An event this crate does not interpret.
    NotInterpreted,
    /// A `pull_request` action octocrab does not know (GitHub added it
    /// after this build).
    UnknownAction,
}

/// A payload that is not what its event promises.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{event} payload: {reason}")]
pub struct PayloadError {
    /// The event named in the headers.
    pub event: String,
    /// What is wrong (serde's message, with line and column).
    pub reason: String,
}

/// Parses the JSON document `json` of event `event` (already normalised).
pub fn parse_event(event: &str, json: &[u8]) -> Result<Event, PayloadError> {
    let fail = |reason: String| PayloadError {
        event: event.to_owned(),
        reason,
    };
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(fail("not a JSON object".to_owned()));
    }
    let envelope: Envelope = serde_json::from_slice(json).map_err(|e| fail(e.to_string()))?;
    let action = envelope.action;
    match event {
        "ping" | "push" => {}
        "pull_request" => {
            let Some(name) = action.as_deref() else {
                return Err(fail("missing field `action`".to_owned()));
            };
            let known = serde_json::from_value::<PullRequestWebhookEventAction>(
                serde_json::Value::String(name.to_owned()),
            )
            .is_ok();
            if !known {
                return Ok(Event::Unhandled(UnhandledEvent {
                    event: event.to_owned(),
                    action,
                    reason: UnhandledReason::UnknownAction,
                }));
            }
        }
        _ => {
            return Ok(Event::Unhandled(UnhandledEvent {
                event: event.to_owned(),
                action,
                reason: UnhandledReason::NotInterpreted,
            }));
        }
    }
    let sender = envelope.sender.map(|s| s.login);
    let repository = || {
        envelope
            .repository
            .as_ref()
            .and_then(EnvelopeRepository::repository)
            .ok_or_else(|| fail("missing field `repository`".to_owned()))
    };
    let payload = |e: serde_json::Error| fail(e.to_string());
    match event {
        "ping" => {
            let ping: PingWebhookEventPayload = serde_json::from_slice(json).map_err(payload)?;
            Ok(Event::Ping(PingEvent {
                zen: ping.zen,
                hook_id: ping.hook_id.map(|id| id.0),
            }))
        }
        "push" => {
            let push: WirePush = serde_json::from_slice(json).map_err(payload)?;
            let repository = repository()?;
            let pushed_at = envelope
                .repository
                .as_ref()
                .and_then(|r| r.pushed_at.as_ref())
                .and_then(GitHubTime::timestamp);
            Ok(Event::Push(PushEvent {
                repository,
                sender,
                git_ref: push.git_ref,
                before: push.before,
                after: push.after,
                created: push.created,
                deleted: push.deleted,
                forced: push.forced,
                pushed_at,
            }))
        }
        _ => {
            let payload: WirePullRequestPayload = serde_json::from_slice(json).map_err(payload)?;
            let repository = repository()?;
            let pr = payload.pull_request;
            let time = |field: &str, at: Option<GitHubTime>| match at {
                None => Ok(None),
                Some(at) => at
                    .timestamp()
                    .map(Some)
                    .ok_or_else(|| fail(format!("pull_request.{field}: not a time GitHub sends"))),
            };
            let updated_at = time("updated_at", pr.updated_at)?;
            let closed_at = time("closed_at", pr.closed_at)?;
            let merged_at = time("merged_at", pr.merged_at)?;
            Ok(Event::PullRequest(PullRequestEvent {
                action: PullRequestAction::from_str(action.as_deref().unwrap_or_default()),
                number: payload.number,
                repository,
                sender,
                head_repository: pr
                    .head
                    .repo
                    .as_ref()
                    .and_then(EnvelopeRepository::repository)
                    .map(|r| r.full_name()),
                head_sha: pr.head.sha,
                head_ref: pr.head.git_ref,
                labels: pr
                    .labels
                    .into_iter()
                    .flatten()
                    .map(|label| label.name)
                    .collect(),
                open: pr.state.as_deref() == Some("open"),
                merged: pr.merged.unwrap_or(false) || merged_at.is_some(),
                updated_at,
                closed_at,
            }))
        }
    }
}

/// Whether `sha` is 40 zeros (the "no commit" of a created or deleted ref).
pub fn is_zero_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

/// The top-level fields every event shares, read in one pass before the
/// event's own payload: the `action`, the repository and the sender.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    repository: Option<EnvelopeRepository>,
    #[serde(default)]
    sender: Option<Login>,
}

#[derive(Deserialize)]
struct EnvelopeRepository {
    name: String,
    #[serde(default)]
    full_name: Option<String>,
    #[serde(default)]
    owner: Option<Login>,
    #[serde(default)]
    pushed_at: Option<GitHubTime>,
}

impl EnvelopeRepository {
    fn repository(&self) -> Option<Repository> {
        if let Some((owner, name)) = self.full_name.as_deref().and_then(|f| f.split_once('/')) {
            return Some(Repository {
                owner: owner.to_owned(),
                name: name.to_owned(),
            });
        }
        Some(Repository {
            owner: self.owner.as_ref()?.login.clone(),
            name: self.name.clone(),
        })
    }
}

#[derive(Deserialize)]
struct Login {
    login: String,
}

/// A GitHub time: RFC 3339 text, or unix seconds (push payloads'
/// `repository.pushed_at` and `created_at`).
#[derive(Deserialize)]
#[serde(untagged)]
enum GitHubTime {
    Unix(i64),
    Text(String),
}

impl GitHubTime {
    fn timestamp(&self) -> Option<Timestamp> {
        match self {
            Self::Unix(seconds) => Timestamp::from_second(*seconds).ok(),
            Self::Text(text) => text.parse().ok(),
        }
    }
}

/// What is read of a `push` payload: the ref and how it moved. Everything
/// else (commits, pusher, URLs) is skipped unread.
#[derive(Deserialize)]
struct WirePush {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    created: bool,
    deleted: bool,
    forced: bool,
}

/// What is read of a `pull_request` payload.
#[derive(Deserialize)]
struct WirePullRequestPayload {
    number: u64,
    pull_request: WirePullRequest,
}

/// What is read of the pull request itself; its ~20 URLs, its users and
/// its base repository's ~40 URLs are skipped unread.
#[derive(Deserialize)]
struct WirePullRequest {
    head: WireHead,
    #[serde(default)]
    labels: Option<Vec<WireLabel>>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    merged: Option<bool>,
    #[serde(default)]
    merged_at: Option<GitHubTime>,
    #[serde(default)]
    updated_at: Option<GitHubTime>,
    #[serde(default)]
    closed_at: Option<GitHubTime>,
}

#[derive(Deserialize)]
struct WireHead {
    sha: String,
    #[serde(rename = "ref")]
    git_ref: String,
    /// `null` when the head repository (a fork) was deleted.
    #[serde(default)]
    repo: Option<EnvelopeRepository>,
}

#[derive(Deserialize)]
struct WireLabel {
    name: String,
}
