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

use super::pull::{self, Pull};

/// GitHub's limit on a label name's length, in characters.
pub(crate) const MAX_LABEL_NAME_CHARS: usize = 50;

/// Colour GitHub gives a label created implicitly by adding it to an issue.
const DEFAULT_LABEL_COLOR: &str = "ededed";

const DOCS_LABELS: &str = "https://docs.github.com/rest/issues/labels";
const DOCS_PULLS: &str = "https://docs.github.com/rest/pulls/pulls#get-a-pull-request";
const DOCS_RATE_LIMITS: &str = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api";
const DOCS_SECONDARY: &str = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits";
const DOCS_ROOT: &str = "https://docs.github.com/rest";

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
    fn new(status: u16, message: &str, documentation_url: &str) -> Self {
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
        let keys = self.ensure_repo_labels(owner, repo, names);
        let api_base = self.api_base.clone();
        let r = self.repo_mut(owner, repo);
        r.issues.entry(n).or_default().extend(keys);
        Ok(r.rendered_labels(&api_base, n))
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
        let keys = self.ensure_repo_labels(owner, repo, names);
        let api_base = self.api_base.clone();
        let r = self.repo_mut(owner, repo);
        r.issues.insert(n, keys.into_iter().collect());
        Ok(r.rendered_labels(&api_base, n))
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
        let api_base = self.api_base.clone();
        let r = self.repo_mut(owner, repo);
        let removed = r
            .issues
            .get_mut(&n)
            .is_some_and(|set| set.remove(&name.to_lowercase()));
        if !removed {
            return Err(ApiError::new(404, "Label does not exist", DOCS_LABELS));
        }
        Ok(r.rendered_labels(&api_base, n))
    }

    /// Removes every label from issue `n`.
    pub(crate) fn remove_all_labels(&mut self, owner: &str, repo: &str, n: u64) {
        self.repo_mut(owner, repo).issues.remove(&n);
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

    // ----- pull requests ---------------------------------------------------------

    /// Adds (or replaces) pull request `pull` with `labels`.
    pub(crate) fn add_pull(
        &mut self,
        owner: &str,
        repo: &str,
        pull: Pull,
        labels: &[String],
    ) -> Result<(), ApiError> {
        let n = pull.number;
        self.replace_labels(owner, repo, n, labels)?;
        self.repo_mut(owner, repo).pulls.insert(n, pull);
        Ok(())
    }

    /// Moves pull request `n`'s head to `sha` (a push); `false` if unknown.
    pub(crate) fn set_pull_head(&mut self, owner: &str, repo: &str, n: u64, sha: &str) -> bool {
        match self.repo_mut(owner, repo).pulls.get_mut(&n) {
            Some(p) => {
                sha.clone_into(&mut p.head_sha);
                true
            }
            None => false,
        }
    }

    /// Associates commit `sha` with pull requests `numbers`.
    pub(crate) fn link_commit(&mut self, owner: &str, repo: &str, sha: &str, numbers: &[u64]) {
        self.repo_mut(owner, repo)
            .commit_links
            .entry(sha.to_owned())
            .or_default()
            .extend(numbers);
    }

    /// Pull request `n` as GitHub renders it, or 404.
    pub(crate) fn pull(&mut self, owner: &str, repo: &str, n: u64) -> Result<Value, ApiError> {
        let api_base = self.api_base.clone();
        let r = self.repo_mut(owner, repo);
        let p = r
            .pulls
            .get(&n)
            .ok_or_else(|| ApiError::not_found(DOCS_PULLS))?;
        Ok(pull::render(
            &api_base,
            &r.owner,
            &r.name,
            r.id,
            p,
            r.rendered_labels(&api_base, n),
        ))
    }

    /// The pull requests associated with commit `sha`: those whose head it
    /// is, and those linked to it, by number.
    pub(crate) fn commit_pulls(&mut self, owner: &str, repo: &str, sha: &str) -> Vec<Value> {
        let api_base = self.api_base.clone();
        let r = self.repo_mut(owner, repo);
        let mut numbers: BTreeSet<u64> = r
            .pulls
            .values()
            .filter(|p| p.head_sha == sha)
            .map(|p| p.number)
            .collect();
        if let Some(linked) = r.commit_links.get(sha) {
            numbers.extend(linked.iter().filter(|n| r.pulls.contains_key(n)));
        }
        numbers
            .into_iter()
            .filter_map(|n| {
                let p = r.pulls.get(&n)?;
                Some(pull::render(
                    &api_base,
                    &r.owner,
                    &r.name,
                    r.id,
                    p,
                    r.rendered_labels(&api_base, n),
                ))
            })
            .collect()
    }

    // ----- helpers ---------------------------------------------------------------

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
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
