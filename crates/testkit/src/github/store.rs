//! The fake GitHub's data and its GitHub semantics, independent of HTTP:
//! repositories with their labels, issue labels, pull requests, tokens and
//! their rate-limit budgets.
//!
//! The one rule: **a label write either applies completely or not at all**,
//! and its answer is the issue's full label list after the write, exactly as
//! GitHub's label endpoints answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::deliveries::DeliveryLog;
use super::payloads::{self, Event, PullExtra, RepoRef};
use super::pull::{self, Pull, PullFilter, PullState};
use super::webhooks::DeliveryId;

/// GitHub's limit on a label name's length, in characters.
pub(crate) const MAX_LABEL_NAME_CHARS: usize = 50;

/// Colour GitHub gives a label created implicitly by adding it to an issue.
const DEFAULT_LABEL_COLOR: &str = "ededed";

const DOCS_LABELS: &str = "https://docs.github.com/rest/issues/labels";
const DOCS_PULLS: &str = "https://docs.github.com/rest/pulls/pulls";
const DOCS_MERGE: &str = "https://docs.github.com/rest/pulls/pulls#merge-a-pull-request";
const DOCS_REFS: &str = "https://docs.github.com/rest/git/refs";
const DOCS_RATE_LIMITS: &str = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api";
const DOCS_SECONDARY: &str = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits";
const DOCS_ROOT: &str = "https://docs.github.com/rest";

/// The `before` of a created ref and the `after` of a deleted one.
pub(crate) const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// Rate-limit and token settings.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Requests per window for a personal token.
    pub(crate) budget: u32,
    /// Requests per window for an installation token.
    pub(crate) installation_budget: u32,
    /// Length of a rate-limit window (GitHub: one hour).
    pub(crate) window: Duration,
    /// Minimum spacing between mutations of one token; `None` = no secondary limit.
    pub(crate) secondary_spacing: Option<Duration>,
    /// How long a token is blocked after breaking the secondary limit.
    pub(crate) secondary_retry_after: Duration,
    /// Status of a primary-limit rejection (403 or 429, both used by GitHub).
    pub(crate) primary_status: u16,
    /// Lifetime of an installation token (GitHub: one hour).
    pub(crate) installation_token_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // GitHub's documented budgets for a personal token and the base
            // budget of an App installation.
            budget: 5000,
            installation_budget: 5000,
            window: Duration::from_secs(3600),
            secondary_spacing: None,
            // GitHub's usual answer; its guidance is to wait at least a minute.
            secondary_retry_after: Duration::from_secs(60),
            primary_status: 403,
            installation_token_ttl: Duration::from_secs(3600),
        }
    }
}

/// An error answer in GitHub's shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) body: Value,
    /// Extra headers (`retry-after`).
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub(crate) fn new(status: u16, message: &str, documentation_url: &str) -> Self {
        Self {
            status,
            body: json!({ "message": message, "documentation_url": documentation_url }),
            headers: Vec::new(),
        }
    }

    pub(crate) fn not_found(documentation_url: &str) -> Self {
        Self::new(404, "Not Found", documentation_url)
    }

    pub(crate) fn bad_credentials() -> Self {
        Self {
            status: 401,
            body: json!({ "message": "Bad credentials", "documentation_url": DOCS_ROOT, "status": "401" }),
            headers: Vec::new(),
        }
    }

    pub(crate) fn jwt_undecodable() -> Self {
        Self {
            status: 401,
            body: json!({
                "message": "A JSON web token could not be decoded",
                "documentation_url": DOCS_ROOT,
                "status": "401",
            }),
            headers: Vec::new(),
        }
    }

    pub(crate) fn bad_json() -> Self {
        Self::new(400, "Problems parsing JSON", DOCS_LABELS)
    }

    pub(crate) fn invalid_request(detail: &str) -> Self {
        Self::new(422, &format!("Invalid request.\n\n{detail}"), DOCS_LABELS)
    }

    /// 422 Validation Failed naming the field and value, GitHub's shape.
    pub(crate) fn invalid_field(resource: &str, field: &str, value: &str) -> Self {
        Self {
            status: 422,
            body: json!({
                "message": "Validation Failed",
                "errors": [{ "resource": resource, "code": "invalid", "field": field, "value": value }],
                "documentation_url": DOCS_ROOT,
            }),
            headers: Vec::new(),
        }
    }

    fn invalid_label(name: &str) -> Self {
        Self {
            status: 422,
            body: json!({
                "message": "Validation Failed",
                "errors": [{ "resource": "Label", "code": "invalid", "field": "name", "value": name }],
                "documentation_url": DOCS_LABELS,
            }),
            headers: Vec::new(),
        }
    }
}

/// Who a token authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Principal {
    /// A personal access token of user `id`.
    User(u64),
    /// An installation access token of installation `id`.
    Installation(u64),
}

/// The rate-limit state of one token, as the headers report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitStatus {
    /// `x-ratelimit-limit`.
    pub limit: u32,
    /// `x-ratelimit-remaining`.
    pub remaining: u32,
    /// `x-ratelimit-used`.
    pub used: u32,
    /// `x-ratelimit-reset` as a wall-clock instant.
    pub reset: jiff::Timestamp,
}

impl RateLimitStatus {
    /// The `x-ratelimit-*` headers for this status (resource `core`).
    pub(crate) fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("x-ratelimit-limit", self.limit.to_string()),
            ("x-ratelimit-remaining", self.remaining.to_string()),
            ("x-ratelimit-used", self.used.to_string()),
            ("x-ratelimit-reset", self.reset.as_second().to_string()),
            ("x-ratelimit-resource", "core".to_owned()),
        ]
    }
}

/// What one push (or ref deletion) changed: what its `push` webhook and
/// the `pull_request` webhooks it causes report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Push {
    /// Full ref name.
    pub(crate) git_ref: String,
    pub(crate) before: String,
    pub(crate) after: String,
    pub(crate) created: bool,
    pub(crate) deleted: bool,
    /// The pushed commits, oldest first (none for tags and deletions).
    pub(crate) commits: Vec<String>,
    /// Open pull requests whose head moved: (number, previous head).
    pub(crate) synchronized: Vec<(u64, String)>,
    /// Pull requests closed because their branch was deleted.
    pub(crate) closed: Vec<u64>,
}

#[derive(Debug)]
struct TokenState {
    principal: Principal,
    budget: u32,
    used: u32,
    window_start: Option<Instant>,
    expires: Option<Instant>,
    last_mutation: Option<Instant>,
    blocked_until: Option<Instant>,
}

#[derive(Debug, Clone)]
struct RepoLabel {
    id: u64,
    name: String,
    color: String,
    description: Option<String>,
    default: bool,
}

#[derive(Debug)]
struct Repo {
    owner: String,
    name: String,
    id: u64,
    /// Keyed by lower-cased name: GitHub label names are case-insensitive.
    labels: BTreeMap<String, RepoLabel>,
    /// Issue (and pull request) number -> lower-cased label names.
    issues: HashMap<u64, BTreeSet<String>>,
    pulls: BTreeMap<u64, Pull>,
    /// Full ref name (`refs/heads/…`, `refs/tags/…`) -> commit.
    refs: BTreeMap<String, String>,
    /// Commit SHA -> pull requests linked to it by the test.
    commit_links: HashMap<String, BTreeSet<u64>>,
}

/// All of the fake's state.
#[derive(Debug)]
pub(crate) struct Store {
    api_base: String,
    limits: Limits,
    repos: HashMap<(String, String), Repo>,
    tokens: HashMap<String, TokenState>,
    next_id: u64,
    rng: StdRng,
    /// The App webhook's deliveries of the events the changes below cause.
    pub(crate) hooks: DeliveryLog,
}

impl Store {
    /// An empty store whose URLs point at `api_base` (no trailing slash).
    pub(crate) fn new(api_base: String, limits: Limits, seed: u64) -> Self {
        Self {
            api_base,
            limits,
            repos: HashMap::new(),
            tokens: HashMap::new(),
            next_id: 1000,
            rng: StdRng::seed_from_u64(seed),
            hooks: DeliveryLog::new(seed),
        }
    }

    // ----- tokens and rate limits ------------------------------------------------

    /// Accepts `token` as a personal access token.
    pub(crate) fn add_user_token(&mut self, token: &str) {
        let id = self.next_id();
        let budget = self.limits.budget;
        self.tokens
            .entry(token.to_owned())
            .or_insert_with(|| TokenState::new(Principal::User(id), budget, None));
    }

    /// Mints an installation access token for installation `id`; returns it
    /// with its expiry.
    pub(crate) fn mint_installation_token(
        &mut self,
        installation: u64,
        now: Instant,
    ) -> (String, jiff::Timestamp) {
        let token = format!("ghs_{}", self.random_alnum(36));
        let ttl = self.limits.installation_token_ttl;
        self.tokens.insert(
            token.clone(),
            TokenState::new(
                Principal::Installation(installation),
                self.limits.installation_budget,
                Some(now + ttl),
            ),
        );
        (token, wall_clock_at(now, now + ttl))
    }

    /// A fresh personal-token-looking string (deterministic per seed).
    pub(crate) fn generate_user_token(&mut self) -> String {
        format!("ghp_{}", self.random_alnum(36))
    }

    /// Authenticates `token`: `Ok` when it is known and not expired.
    pub(crate) fn authenticate(&self, token: &str, now: Instant) -> Result<Principal, ApiError> {
        match self.tokens.get(token) {
            Some(t) if t.expires.is_none_or(|e| now < e) => Ok(t.principal),
            _ => Err(ApiError::bad_credentials()),
        }
    }

    /// The rate-limit status of `token` (after rolling its window), if known.
    pub(crate) fn rate_limit(&mut self, token: &str, now: Instant) -> Option<RateLimitStatus> {
        let window = self.limits.window;
        let t = self.tokens.get_mut(token)?;
        t.roll(now, window);
        Some(t.status(now, window))
    }

    /// Applies the secondary limit to a mutation by `token`: `Err` (403 with
    /// `retry-after`) when it comes sooner than the configured spacing after
    /// the previous one, or while the token is blocked for having done so.
    pub(crate) fn admit_mutation(&mut self, token: &str, now: Instant) -> Result<(), ApiError> {
        let Some(spacing) = self.limits.secondary_spacing else {
            return Ok(());
        };
        let penalty = self.limits.secondary_retry_after;
        let Some(t) = self.tokens.get_mut(token) else {
            return Err(ApiError::bad_credentials());
        };
        let blocked_until = match t.blocked_until {
            Some(until) if now < until => Some(until),
            _ => match t.last_mutation {
                Some(last) if now < last + spacing => {
                    let until = now + penalty;
                    t.blocked_until = Some(until);
                    Some(until)
                }
                _ => None,
            },
        };
        match blocked_until {
            Some(until) => {
                let wait = until.saturating_duration_since(now);
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let mut err = ApiError::new(
                    403,
                    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                    DOCS_SECONDARY,
                );
                err.headers.push(("retry-after", secs.max(1).to_string()));
                Err(err)
            }
            None => {
                t.last_mutation = Some(now);
                Ok(())
            }
        }
    }

    /// Checks the primary budget of `token` without spending it: `Err` (403
    /// or 429 with `x-ratelimit-remaining: 0`) when it is exhausted.
    pub(crate) fn check_budget(&mut self, token: &str, now: Instant) -> Result<(), ApiError> {
        let window = self.limits.window;
        let status = self.limits.primary_status;
        let Some(t) = self.tokens.get_mut(token) else {
            return Err(ApiError::bad_credentials());
        };
        t.roll(now, window);
        if t.used < t.budget {
            return Ok(());
        }
        let who = match t.principal {
            Principal::User(id) => format!("user ID {id}"),
            Principal::Installation(id) => format!("installation ID {id}"),
        };
        let mut err = ApiError::new(
            status,
            &format!("API rate limit exceeded for {who}."),
            DOCS_RATE_LIMITS,
        );
        err.headers = t.status(now, window).headers();
        Err(err)
    }

    /// Spends one request of `token`'s budget; returns the status after it.
    pub(crate) fn spend(&mut self, token: &str, now: Instant) -> Option<RateLimitStatus> {
        let window = self.limits.window;
        let t = self.tokens.get_mut(token)?;
        t.roll(now, window);
        t.window_start.get_or_insert(now);
        t.used = t.used.saturating_add(1);
        Some(t.status(now, window))
    }

    // ----- labels ----------------------------------------------------------------

    /// The label objects of issue `n`, sorted by name.
    pub(crate) fn issue_labels(&mut self, owner: &str, repo: &str, n: u64) -> Vec<Value> {
        let api_base = self.api_base.clone();
        let r = self.repo_mut(owner, repo);
        r.rendered_labels(&api_base, n)
    }

    /// Adds `names` to issue `n` (creating missing repository labels); the
    /// whole write is rejected if any name is invalid.
    pub(crate) fn add_labels(
        &mut self,
        owner: &str,
        repo: &str,
        n: u64,
        names: &[String],
    ) -> Result<Vec<Value>, ApiError> {
        validate_all(names)?;
        let before = self.issue_label_keys(owner, repo, n);
        let keys = self.ensure_repo_labels(owner, repo, names);
        self.repo_mut(owner, repo)
            .issues
            .entry(n)
            .or_default()
            .extend(keys);
        self.label_events(owner, repo, n, &before);
        Ok(self.issue_labels(owner, repo, n))
    }

    /// Replaces issue `n`'s labels with `names`.
    pub(crate) fn replace_labels(
        &mut self,
        owner: &str,
        repo: &str,
        n: u64,
        names: &[String],
    ) -> Result<Vec<Value>, ApiError> {
        validate_all(names)?;
        let before = self.issue_label_keys(owner, repo, n);
        let keys = self.ensure_repo_labels(owner, repo, names);
        self.repo_mut(owner, repo)
            .issues
            .insert(n, keys.into_iter().collect());
        self.label_events(owner, repo, n, &before);
        Ok(self.issue_labels(owner, repo, n))
    }

    /// Removes `name` from issue `n`: 404 "Label does not exist" when the
    /// issue does not carry it.
    pub(crate) fn remove_label(
        &mut self,
        owner: &str,
        repo: &str,
        n: u64,
        name: &str,
    ) -> Result<Vec<Value>, ApiError> {
        let before = self.issue_label_keys(owner, repo, n);
        let removed = self
            .repo_mut(owner, repo)
            .issues
            .get_mut(&n)
            .is_some_and(|set| set.remove(&name.to_lowercase()));
        if !removed {
            return Err(ApiError::new(404, "Label does not exist", DOCS_LABELS));
        }
        self.label_events(owner, repo, n, &before);
        Ok(self.issue_labels(owner, repo, n))
    }

    /// Removes every label from issue `n`.
    pub(crate) fn remove_all_labels(&mut self, owner: &str, repo: &str, n: u64) {
        let before = self.issue_label_keys(owner, repo, n);
        self.repo_mut(owner, repo).issues.remove(&n);
        self.label_events(owner, repo, n, &before);
    }

    /// The lower-cased names of issue `n`'s labels.
    fn issue_label_keys(&mut self, owner: &str, repo: &str, n: u64) -> BTreeSet<String> {
        self.repo_mut(owner, repo)
            .issues
            .get(&n)
            .cloned()
            .unwrap_or_default()
    }

    /// The `pull_request` `unlabeled` and `labeled` events of pull request
    /// `n` (one per label, as GitHub sends them) since its labels were
    /// `before`; nothing for an issue that is not a pull request.
    fn label_events(&mut self, owner: &str, repo: &str, n: u64, before: &BTreeSet<String>) {
        if self.hooks.config().is_none() {
            return;
        }
        let api_base = self.api_base.clone();
        let r = self.repo_mut(owner, repo);
        let Some(p) = r.pulls.get(&n) else {
            return;
        };
        let after = r.issues.get(&n).cloned().unwrap_or_default();
        let pr = r.render_pull(&api_base, p);
        let changes = before
            .difference(&after)
            .map(|k| ("unlabeled", k))
            .chain(after.difference(before).map(|k| ("labeled", k)));
        let events: Vec<Event> = changes
            .filter_map(|(action, key)| {
                let label = r.render_label(&api_base, r.labels.get(key)?);
                Some(payloads::pull_request(
                    r.view(&api_base),
                    action,
                    pr.clone(),
                    PullExtra::Label(label),
                ))
            })
            .collect();
        self.emit(events);
    }

    /// Issue `n`'s label names, sorted.
    pub(crate) fn label_names(&mut self, owner: &str, repo: &str, n: u64) -> Vec<String> {
        let r = self.repo_mut(owner, repo);
        r.issues
            .get(&n)
            .map(|set| {
                set.iter()
                    .filter_map(|k| r.labels.get(k))
                    .map(|l| l.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Creates or updates a repository label.
    pub(crate) fn upsert_repo_label(
        &mut self,
        owner: &str,
        repo: &str,
        name: &str,
        color: &str,
        description: Option<&str>,
    ) -> Result<(), ApiError> {
        validate_label(name)?;
        self.ensure_repo_labels(owner, repo, &[name.to_owned()]);
        let r = self.repo_mut(owner, repo);
        if let Some(label) = r.labels.get_mut(&name.to_lowercase()) {
            color.clone_into(&mut label.color);
            label.description = description.map(str::to_owned);
        }
        Ok(())
    }

    // ----- pull requests and refs ----------------------------------------------

    /// Adds (or replaces) pull request `number`, open, from `head_ref` at
    /// `head_sha`, with `labels`; the branch is created (or moved) to
    /// `head_sha`, as it must exist for the pull request to. A new pull
    /// request is `opened`.
    pub(crate) fn add_pull(
        &mut self,
        owner: &str,
        repo: &str,
        number: u64,
        head_sha: &str,
        head_ref: &str,
        labels: &[String],
    ) -> Result<Vec<DeliveryId>, ApiError> {
        self.replace_labels(owner, repo, number, labels)?;
        let seq = self.next_id();
        let r = self.repo_mut(owner, repo);
        r.refs
            .insert(format!("refs/heads/{head_ref}"), head_sha.to_owned());
        r.refs
            .entry(format!("refs/heads/{}", pull::BASE_REF))
            .or_insert_with(|| pull::BASE_SHA.to_owned());
        let replaced = r
            .pulls
            .insert(number, Pull::open(number, head_sha, head_ref, seq))
            .is_some();
        if replaced {
            return Ok(Vec::new());
        }
        Ok(self.pull_events(owner, repo, &[(number, "opened", PullExtra::None)]))
    }

    /// Pushes `commits` (oldest first) onto `git_ref` (`refs/heads/…` or
    /// `refs/tags/…`), creating it if absent: the ref moves to the last one,
    /// and every open pull request from that branch follows (as GitHub
    /// synchronizes them). A tag push carries no commits of its own; a push
    /// that leaves the ref where it was changes nothing and, as git
    /// reports "Everything up-to-date", causes no event.
    pub(crate) fn push(
        &mut self,
        owner: &str,
        repo: &str,
        git_ref: &str,
        commits: &[String],
        now: jiff::Timestamp,
    ) -> Result<Vec<DeliveryId>, ApiError> {
        let push = self.apply_push(owner, repo, git_ref, commits, now)?;
        if push.before == push.after {
            return Ok(Vec::new());
        }
        Ok(self.push_events(owner, repo, &push, now, &payloads::commit_message))
    }

    fn apply_push(
        &mut self,
        owner: &str,
        repo: &str,
        git_ref: &str,
        commits: &[String],
        now: jiff::Timestamp,
    ) -> Result<Push, ApiError> {
        let Some(after) = commits.last().cloned() else {
            return Err(ApiError::invalid_request(
                "A push needs at least one commit.",
            ));
        };
        if let Some(bad) = commits.iter().find(|c| !is_sha(c)) {
            return Err(ApiError::invalid_field("Commit", "sha", bad));
        }
        let seq = self.next_id();
        let r = self.repo_mut(owner, repo);
        let previous = r.refs.insert(git_ref.to_owned(), after.clone());
        let mut synchronized = Vec::new();
        if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
            for p in r.pulls.values_mut() {
                if p.state == PullState::Open && p.head_ref == branch && p.head_sha != after {
                    synchronized
                        .push((p.number, std::mem::replace(&mut p.head_sha, after.clone())));
                    p.commits.extend(commits.iter().cloned());
                    p.touch(now, seq);
                }
            }
        }
        Ok(Push {
            git_ref: git_ref.to_owned(),
            created: previous.is_none(),
            before: previous.unwrap_or_else(|| ZERO_SHA.to_owned()),
            after,
            deleted: false,
            commits: if git_ref.starts_with("refs/tags/") {
                Vec::new()
            } else {
                commits.to_vec()
            },
            synchronized,
            closed: Vec::new(),
        })
    }

    /// Deletes `git_ref`: 422 "Reference does not exist" if absent. Open
    /// pull requests from a deleted branch are closed, as GitHub closes them.
    pub(crate) fn delete_ref(
        &mut self,
        owner: &str,
        repo: &str,
        git_ref: &str,
        now: jiff::Timestamp,
    ) -> Result<Vec<DeliveryId>, ApiError> {
        let seq = self.next_id();
        let r = self.repo_mut(owner, repo);
        let Some(before) = r.refs.remove(git_ref) else {
            return Err(ApiError::new(422, "Reference does not exist", DOCS_REFS));
        };
        let mut closed = Vec::new();
        if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
            for p in r.pulls.values_mut() {
                if p.state == PullState::Open && p.head_ref == branch {
                    p.state = PullState::Closed;
                    p.closed_at = Some(now);
                    p.touch(now, seq);
                    closed.push(p.number);
                }
            }
        }
        let push = Push {
            git_ref: git_ref.to_owned(),
            before,
            after: ZERO_SHA.to_owned(),
            created: false,
            deleted: true,
            commits: Vec::new(),
            synchronized: Vec::new(),
            closed,
        };
        Ok(self.push_events(owner, repo, &push, now, &payloads::commit_message))
    }

    /// Closes open pull request `n` without merging it: 404 if unknown,
    /// 422 if it is not open.
    pub(crate) fn close_pull(
        &mut self,
        owner: &str,
        repo: &str,
        n: u64,
        now: jiff::Timestamp,
    ) -> Result<Vec<DeliveryId>, ApiError> {
        let seq = self.next_id();
        let p = self.pull_in(owner, repo, n, PullState::Open)?;
        p.state = PullState::Closed;
        p.closed_at = Some(now);
        p.touch(now, seq);
        Ok(self.pull_events(owner, repo, &[(n, "closed", PullExtra::None)]))
    }

    /// Reopens pull request `n`, closed and not merged, at its branch's
    /// current commit: 404 if unknown, 422 if it is open or merged (GitHub
    /// cannot reopen a merged one) or its branch was deleted.
    pub(crate) fn reopen_pull(
        &mut self,
        owner: &str,
        repo: &str,
        n: u64,
        now: jiff::Timestamp,
    ) -> Result<Vec<DeliveryId>, ApiError> {
        let seq = self.next_id();
        let head_ref = self
            .pull_in(owner, repo, n, PullState::Closed)?
            .head_ref
            .clone();
        let Some(head) = self.ref_sha(owner, repo, &format!("refs/heads/{head_ref}")) else {
            return Err(ApiError::invalid_field("PullRequest", "head", &head_ref));
        };
        let p = self.pull_in(owner, repo, n, PullState::Closed)?;
        if p.head_sha != head {
            p.commits.push(head.clone());
            p.head_sha = head;
        }
        p.state = PullState::Open;
        p.closed_at = None;
        p.touch(now, seq);
        Ok(self.pull_events(owner, repo, &[(n, "reopened", PullExtra::None)]))
    }

    /// Merges open pull request `n` with a new merge commit, which the base
    /// branch moves to: 404 if unknown, 405 if it is not open (GitHub's
    /// "Pull Request is not mergeable"). It is `closed` (merged), and the
    /// base branch is pushed to.
    pub(crate) fn merge_pull(
        &mut self,
        owner: &str,
        repo: &str,
        n: u64,
        now: jiff::Timestamp,
    ) -> Result<Vec<DeliveryId>, ApiError> {
        let merge_sha = self.random_hex(40);
        let seq = self.next_id();
        let p = self.pull_in(owner, repo, n, PullState::Open).map_err(|e| {
            if e.status == 422 {
                ApiError::new(405, "Pull Request is not mergeable", DOCS_MERGE)
            } else {
                e
            }
        })?;
        p.state = PullState::Merged;
        p.closed_at = Some(now);
        p.merged_at = Some(now);
        p.merge_commit_sha = Some(merge_sha.clone());
        p.commits.push(merge_sha.clone());
        p.touch(now, seq);
        let message = payloads::merge_message(n, owner, &p.head_ref);
        let mut ids = self.pull_events(owner, repo, &[(n, "closed", PullExtra::None)]);
        let base = format!("refs/heads/{}", pull::BASE_REF);
        let push = self.apply_push(owner, repo, &base, &[merge_sha], now)?;
        ids.extend(self.push_events(owner, repo, &push, now, &|_| message.clone()));
        Ok(ids)
    }

    /// Associates commit `sha` with pull requests `numbers`.
    pub(crate) fn link_commit(&mut self, owner: &str, repo: &str, sha: &str, numbers: &[u64]) {
        self.repo_mut(owner, repo)
            .commit_links
            .entry(sha.to_owned())
            .or_default()
            .extend(numbers);
    }

    /// The head branch of pull request `n`, if it exists.
    pub(crate) fn pull_head_ref(&mut self, owner: &str, repo: &str, n: u64) -> Option<String> {
        self.repo_mut(owner, repo)
            .pulls
            .get(&n)
            .map(|p| p.head_ref.clone())
    }

    /// The commit `git_ref` points at, if it exists.
    pub(crate) fn ref_sha(&mut self, owner: &str, repo: &str, git_ref: &str) -> Option<String> {
        self.repo_mut(owner, repo).refs.get(git_ref).cloned()
    }

    /// Pull request `n` as GitHub renders it, or 404.
    pub(crate) fn pull(&mut self, owner: &str, repo: &str, n: u64) -> Result<Value, ApiError> {
        let api_base = self.api_base.clone();
        let r = self.repo_mut(owner, repo);
        let p = r
            .pulls
            .get(&n)
            .ok_or_else(|| ApiError::not_found(DOCS_PULLS))?;
        Ok(r.render_pull(&api_base, p))
    }

    /// The pull requests `filter` selects, in its order, as list items.
    pub(crate) fn list_pulls(
        &mut self,
        owner: &str,
        repo: &str,
        filter: &PullFilter,
    ) -> Vec<Value> {
        let api_base = self.api_base.clone();
        let r = self.repo_mut(owner, repo);
        let mut pulls: Vec<&Pull> = r
            .pulls
            .values()
            .filter(|p| filter.matches(&r.owner, p))
            .collect();
        filter.sort(&mut pulls);
        pulls
            .into_iter()
            .map(|p| pull::simple(r.render_pull(&api_base, p)))
            .collect()
    }

    /// The pull requests associated with commit `sha`, by number, as list
    /// items: those with it among their commits (a head it was, or their
    /// merge commit), and those linked to it.
    pub(crate) fn commit_pulls(&mut self, owner: &str, repo: &str, sha: &str) -> Vec<Value> {
        let api_base = self.api_base.clone();
        let r = self.repo_mut(owner, repo);
        let linked = r.commit_links.get(sha);
        r.pulls
            .values()
            .filter(|p| {
                p.commits.iter().any(|c| c == sha) || linked.is_some_and(|l| l.contains(&p.number))
            })
            .map(|p| pull::simple(r.render_pull(&api_base, p)))
            .collect()
    }

    /// Records the `push` event of `push` and the `pull_request` events it
    /// causes (`synchronize` for each pull request it moved, `closed` for
    /// each one a branch deletion closed).
    fn push_events(
        &mut self,
        owner: &str,
        repo: &str,
        push: &Push,
        now: jiff::Timestamp,
        message: &dyn Fn(&str) -> String,
    ) -> Vec<DeliveryId> {
        if self.hooks.config().is_none() {
            return Vec::new();
        }
        let api_base = self.api_base.clone();
        let event = payloads::push(
            self.repo_mut(owner, repo).view(&api_base),
            push,
            now,
            message,
        );
        let mut ids = self.emit(vec![event]);
        let pulls: Vec<(u64, &str, PullExtra)> = push
            .synchronized
            .iter()
            .map(|(n, before)| {
                let extra = PullExtra::Synchronize {
                    before: before.clone(),
                    after: push.after.clone(),
                };
                (*n, "synchronize", extra)
            })
            .chain(push.closed.iter().map(|n| (*n, "closed", PullExtra::None)))
            .collect();
        ids.extend(self.pull_events(owner, repo, &pulls));
        ids
    }

    /// Records one `pull_request` event per (number, action, extra).
    fn pull_events(
        &mut self,
        owner: &str,
        repo: &str,
        pulls: &[(u64, &str, PullExtra)],
    ) -> Vec<DeliveryId> {
        if self.hooks.config().is_none() {
            return Vec::new();
        }
        let api_base = self.api_base.clone();
        let r = self.repo_mut(owner, repo);
        let events = pulls
            .iter()
            .filter_map(|(n, action, extra)| {
                let pr = r.render_pull(&api_base, r.pulls.get(n)?);
                Some(payloads::pull_request(
                    r.view(&api_base),
                    action,
                    pr,
                    extra.clone(),
                ))
            })
            .collect();
        self.emit(events)
    }

    fn emit(&mut self, events: Vec<Event>) -> Vec<DeliveryId> {
        events
            .into_iter()
            .filter_map(|event| self.hooks.enqueue(event))
            .collect()
    }

    /// Pull request `n`, which must be in `state`: 404 if unknown, 422
    /// (its state cannot change that way) otherwise.
    fn pull_in(
        &mut self,
        owner: &str,
        repo: &str,
        n: u64,
        state: PullState,
    ) -> Result<&mut Pull, ApiError> {
        let p = self
            .repo_mut(owner, repo)
            .pulls
            .get_mut(&n)
            .ok_or_else(|| ApiError::not_found(DOCS_PULLS))?;
        if p.state != state {
            return Err(ApiError::new(
                422,
                "Validation Failed: state cannot be changed.",
                DOCS_PULLS,
            ));
        }
        Ok(p)
    }

    // ----- helpers ---------------------------------------------------------------

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn random_hex(&mut self, len: usize) -> String {
        const CHARS: &[u8] = b"0123456789abcdef";
        (0..len)
            .map(|_| char::from(CHARS[self.rng.random_range(0..CHARS.len())]))
            .collect()
    }

    fn random_alnum(&mut self, len: usize) -> String {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..len)
            .map(|_| char::from(CHARS[self.rng.random_range(0..CHARS.len())]))
            .collect()
    }

    /// The repository `owner/repo` (names are case-insensitive, as on
    /// GitHub), created on first use.
    fn repo_mut(&mut self, owner: &str, repo: &str) -> &mut Repo {
        let next_id = &mut self.next_id;
        self.repos
            .entry((owner.to_lowercase(), repo.to_lowercase()))
            .or_insert_with(|| {
                *next_id += 1;
                Repo {
                    owner: owner.to_owned(),
                    name: repo.to_owned(),
                    id: *next_id,
                    labels: BTreeMap::new(),
                    issues: HashMap::new(),
                    pulls: BTreeMap::new(),
                    refs: BTreeMap::new(),
                    commit_links: HashMap::new(),
                }
            })
    }

    /// Creates missing repository labels; returns the lower-cased keys.
    fn ensure_repo_labels(&mut self, owner: &str, repo: &str, names: &[String]) -> Vec<String> {
        let mut keys = Vec::with_capacity(names.len());
        for name in names {
            let key = name.to_lowercase();
            if !self.repo_mut(owner, repo).labels.contains_key(&key) {
                let id = self.next_id();
                self.repo_mut(owner, repo).labels.insert(
                    key.clone(),
                    RepoLabel {
                        id,
                        name: name.clone(),
                        color: DEFAULT_LABEL_COLOR.to_owned(),
                        description: None,
                        default: false,
                    },
                );
            }
            keys.push(key);
        }
        keys
    }
}

impl TokenState {
    fn new(principal: Principal, budget: u32, expires: Option<Instant>) -> Self {
        Self {
            principal,
            budget,
            used: 0,
            window_start: None,
            expires,
            last_mutation: None,
            blocked_until: None,
        }
    }

    /// Starts a new window when the current one is over.
    fn roll(&mut self, now: Instant, window: Duration) {
        if self.window_start.is_some_and(|start| now >= start + window) {
            self.window_start = None;
            self.used = 0;
        }
    }

    fn status(&self, now: Instant, window: Duration) -> RateLimitStatus {
        let end = self.window_start.unwrap_or(now) + window;
        RateLimitStatus {
            limit: self.budget,
            remaining: self.budget.saturating_sub(self.used),
            used: self.used,
            reset: wall_clock_at(now, end),
        }
    }
}

impl Repo {
    /// The repository as events name it.
    fn view<'a>(&'a self, api_base: &'a str) -> RepoRef<'a> {
        RepoRef {
            api_base,
            owner: &self.owner,
            name: &self.name,
            id: self.id,
        }
    }

    /// `pull` rendered in full with its labels.
    fn render_pull(&self, api_base: &str, p: &Pull) -> Value {
        pull::render(
            api_base,
            &self.owner,
            &self.name,
            self.id,
            p,
            self.rendered_labels(api_base, p.number),
        )
    }

    fn rendered_labels(&self, api_base: &str, n: u64) -> Vec<Value> {
        self.issues
            .get(&n)
            .map(|set| {
                set.iter()
                    .filter_map(|k| self.labels.get(k))
                    .map(|l| self.render_label(api_base, l))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn render_label(&self, api_base: &str, l: &RepoLabel) -> Value {
        let encoded =
            percent_encoding::utf8_percent_encode(&l.name, percent_encoding::NON_ALPHANUMERIC);
        json!({
            "id": l.id,
            "node_id": format!("LA_kwDOfake{}", l.id),
            "url": format!("{api_base}/repos/{}/{}/labels/{encoded}", self.owner, self.name),
            "name": l.name,
            "color": l.color,
            "default": l.default,
            "description": l.description,
        })
    }
}

/// The wall-clock instant at monotonic instant `at`, rounded up to a whole
/// second (rate-limit resets are unix seconds and must not be in the past).
fn wall_clock_at(now: Instant, at: Instant) -> jiff::Timestamp {
    let ahead = at.saturating_duration_since(now);
    let wall = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::try_from(ahead).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(jiff::Timestamp::MAX);
    let secs = wall.as_second() + i64::from(wall.subsec_nanosecond() > 0);
    jiff::Timestamp::from_second(secs).unwrap_or(wall)
}

/// Whether `s` is a full commit SHA (40 lower-case hex digits).
fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// GitHub's label-name rule: 1 to 50 characters.
pub(crate) fn validate_label(name: &str) -> Result<(), ApiError> {
    let chars = name.chars().count();
    if name.trim().is_empty() || chars > MAX_LABEL_NAME_CHARS {
        return Err(ApiError::invalid_label(name));
    }
    Ok(())
}

fn validate_all(names: &[String]) -> Result<(), ApiError> {
    names.iter().try_for_each(|n| validate_label(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::new("http://fake".into(), Limits::default(), 1)
    }

    fn names(labels: &[Value]) -> Vec<&str> {
        labels.iter().filter_map(|l| l["name"].as_str()).collect()
    }

    #[test]
    fn labels_are_case_insensitive_and_keep_the_repository_spelling() {
        let mut s = store();
        s.add_labels("o", "r", 1, &["Bug".into()]).unwrap();
        let after = s
            .add_labels("o", "r", 1, &["bug".into(), "ready".into()])
            .unwrap();
        assert_eq!(names(&after), ["Bug", "ready"]);
        let after = s.remove_label("o", "r", 1, "BUG").unwrap();
        assert_eq!(names(&after), ["ready"]);
    }

    #[test]
    fn invalid_name_rejects_the_whole_write() {
        let mut s = store();
        let long = "x".repeat(51);
        let err = s.add_labels("o", "r", 1, &["ok".into(), long]).unwrap_err();
        assert_eq!(err.status, 422);
        assert!(s.label_names("o", "r", 1).is_empty());
        assert!(s.add_labels("o", "r", 1, &["é".repeat(50)]).is_ok());
    }

    #[test]
    fn secondary_limit_blocks_until_retry_after() {
        let limits = Limits {
            secondary_spacing: Some(Duration::from_secs(1)),
            secondary_retry_after: Duration::from_secs(60),
            ..Limits::default()
        };
        let mut s = Store::new("http://fake".into(), limits, 1);
        s.add_user_token("t");
        let t0 = Instant::now();
        assert!(s.admit_mutation("t", t0).is_ok());
        let err = s
            .admit_mutation("t", t0 + Duration::from_millis(500))
            .unwrap_err();
        assert_eq!(err.status, 403);
        assert_eq!(err.headers, vec![("retry-after", "60".to_owned())]);
        // Still blocked well after the spacing, until the retry-after passes.
        let err = s
            .admit_mutation("t", t0 + Duration::from_secs(30))
            .unwrap_err();
        assert_eq!(err.headers, vec![("retry-after", "31".to_owned())]);
        assert!(s.admit_mutation("t", t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn budget_refills_when_the_window_ends() {
        let limits = Limits {
            budget: 2,
            window: Duration::from_secs(10),
            ..Limits::default()
        };
        let mut s = Store::new("http://fake".into(), limits, 1);
        s.add_user_token("t");
        let t0 = Instant::now();
        s.spend("t", t0);
        s.spend("t", t0);
        let err = s.check_budget("t", t0).unwrap_err();
        assert_eq!(err.status, 403);
        assert!(s.check_budget("t", t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(
            s.rate_limit("t", t0 + Duration::from_secs(10))
                .unwrap()
                .remaining,
            2
        );
    }

    #[test]
    fn installation_tokens_expire() {
        let mut s = store();
        let t0 = Instant::now();
        let (token, _) = s.mint_installation_token(7, t0);
        assert_eq!(s.authenticate(&token, t0), Ok(Principal::Installation(7)));
        assert_eq!(
            s.authenticate(&token, t0 + Duration::from_secs(3600)),
            Err(ApiError::bad_credentials())
        );
    }
}
