//! A fake GitHub REST API over real HTTP, for the endpoints supersede uses,
//! so tests exercise the real `octocrab` code path: URL building, headers,
//! error mapping, pagination, conditional requests.
//!
//! The one rule: **where the fake answers, it answers as GitHub does**
//! (status, body shape, headers); what it does not reproduce is listed in
//! the crate README, never approximated silently.
//!
//! # Endpoints
//!
//! | verb, path | resource (for [`Faults`]/[`Calls`]) |
//! |---|---|
//! | `GET/POST/PUT/DELETE /repos/{o}/{r}/issues/{n}/labels` | `labels` |
//! | `DELETE /repos/{o}/{r}/issues/{n}/labels/{name}` | `label` |
//! | `GET /repos/{o}/{r}/pulls/{n}` | `pull` |
//! | `GET /repos/{o}/{r}/pulls?state=&head=&base=&sort=&direction=` | `pulls` |
//! | `GET /repos/{o}/{r}/commits/{sha}/pulls` | `commit_pulls` |
//! | `POST /app/installations/{id}/access_tokens` | `access_tokens` |
//! | `GET /app/hook/deliveries?per_page=&cursor=` | `hook_deliveries` |
//! | `GET /app/hook/deliveries/{id}` | `hook_delivery` |
//! | `POST /app/hook/deliveries/{id}/attempts` | `hook_attempts` |
//! | anything else (404) | `unknown` |
//!
//! Verbs are the lower-cased HTTP methods (`get`, `post`, `put`, `delete`).
//! The `/app/…` endpoints take the App's JWT, the others a token.
//!
//! # Behaviour
//!
//! - **Labels**: POST adds (creating missing repository labels, colour
//!   `ededed`), PUT replaces, DELETE of one label removes it; each answers
//!   200 with the issue's full label list (id, node_id, url, name, color,
//!   default, description), sorted by name. DELETE of a label the issue does
//!   not carry is 404 `{"message":"Label does not exist"}`; DELETE of the
//!   collection is 204. Names are case-insensitive, URL-decoded from the
//!   path, 1–50 characters (else 422 `Validation Failed`); bodies may be
//!   `{"labels":[…]}` or a bare array, of strings or `{"name":…}` objects.
//!   Issues exist implicitly: any issue number of any repository has labels.
//! - **Pull requests**: seeded with [`FakeGitHub::add_pull`], rendered from a
//!   real GitHub payload; an unknown number is 404. They change as on
//!   GitHub: [`FakeGitHub::push_branch`] / [`FakeGitHub::push_to_pull`]
//!   move the branch and the head of every open pull request from it;
//!   [`FakeGitHub::close_pull`], [`FakeGitHub::reopen_pull`] and
//!   [`FakeGitHub::merge_pull`] set `state`, `merged`, `closed_at`,
//!   `merged_at`, `merge_commit_sha` and `updated_at` (a merge moves the
//!   base branch to a new merge commit; a merged pull request cannot be
//!   reopened); [`FakeGitHub::delete_branch`] closes the open pull requests
//!   from the branch. The list endpoint filters by `state` (default
//!   `open`), `head=owner:branch` (a `head` without the owner is ignored,
//!   as GitHub ignores it) and `base`, sorts by creation (default, newest
//!   first) or `updated`, and pages with `per_page`/`page` and a `Link`
//!   header. A commit's pull requests are those it belongs to (a head it
//!   was, or the merge commit) plus those linked with
//!   [`FakeGitHub::link_commit_to_pulls`]. List endpoints answer GitHub's
//!   `pull-request-simple` shape (no `merged`, `mergeable`, `commits`,
//!   …); `GET …/pulls/{n}` the full one.
//! - **Authentication**: `Authorization: Bearer <token>` (or `token <token>`)
//!   with a token given to the builder, added with [`FakeGitHub::add_token`],
//!   or minted by the access-token endpoint (valid one hour by default);
//!   anything else is 401 `{"message":"Bad credentials"}`. The access-token
//!   endpoint wants a JWT-shaped bearer (header with `alg`, claims with
//!   `iss`) and answers 201 `{"token","expires_at",…}`; so do the
//!   `/app/hook/…` endpoints (any other bearer, a valid token included, is
//!   401 `A JSON web token could not be decoded`). **The JWT's signature,
//!   expiry and App id are not verified.** JWT calls are neither charged
//!   nor carry `x-ratelimit-*` headers, as on GitHub.
//! - **Webhook deliveries**: `GET /app/hook/deliveries` lists the attempted
//!   deliveries (see [Webhooks](#webhooks)) newest first, `per_page`
//!   (default 30, at most 100) at a time from `cursor` (`v1_<id>`, the
//!   next one in the `Link: <…>; rel="next"` header; 400 if malformed),
//!   each with `id`, `guid`, `delivered_at`, `redelivery`, `duration`
//!   (seconds), `status`, `status_code`, `event`, `action`,
//!   `installation_id`, `repository_id`, `throttled_at` and `url`. `GET
//!   …/{id}` adds `request` (headers, payload) and `response` (headers, body).
//!   `POST …/{id}/attempts` redelivers and answers 202 `{}`. A delivery that
//!   was never attempted (held, pending, lost) is not listed and is 404.
//! - **Rate limits**: every authenticated answer carries
//!   `x-ratelimit-limit/remaining/used/reset/resource` (resource `core`; reset
//!   in unix seconds, in the future) from a per-token budget per window;
//!   an exhausted budget answers 403 (or 429, see
//!   [`FakeGitHubBuilder::primary_limit_status`]) `API rate limit exceeded
//!   for …` with `x-ratelimit-remaining: 0`. With
//!   [`FakeGitHubBuilder::secondary_limit`], a mutation sooner than the
//!   spacing after the token's previous one answers 403 `You have exceeded a
//!   secondary rate limit…` with `retry-after`, and the token's mutations
//!   stay blocked until then. 401s, secondary-limit 403s, 304s and injected
//!   faults cost nothing; every other authenticated answer (404 and 422
//!   included) costs one.
//! - **ETags**: every 200 GET (JWT calls included) carries a strong ETag
//!   over the token and the body (so, as on GitHub, an ETag from one token never matches for
//!   another); a matching `If-None-Match` answers 304 with no body.
//! - **Faults**: every request first goes through [`Faults::apply`]: latency,
//!   injected status codes (GitHub's error shape, `retry-after` on 429, no
//!   rate-limit headers), dropped connections (closed with no response),
//!   partitions (held until healed). Then it is counted once in [`Calls`]
//!   with the outcome it was answered with. A request held by a partition
//!   or by latency is served when released even if its client gave up
//!   meanwhile, as by a real server that already received it: **a
//!   timed-out mutation may have been applied**. Requests cut short by
//!   stopping the fake count as `Dropped`.
//!
//! # Webhooks
//!
//! With a [`WebhookConfig`] (builder or [`Webhooks::configure`]), the fake is
//! a GitHub App's webhook: every change it makes as git or a human would
//! records the events GitHub sends for it, and POSTs each once, as GitHub's
//! Hookshot does, to the configured `http://127.0.0.1:<port>/…` URL (no
//! other host is accepted):
//!
//! | change | events, in the order recorded |
//! |---|---|
//! | [`FakeGitHub::push_branch`], [`FakeGitHub::push_to_pull`] | `push`, then `pull_request` `synchronize` per open pull request from the branch |
//! | [`FakeGitHub::add_pull`] (new) | `pull_request` `opened` |
//! | [`FakeGitHub::close_pull`], [`FakeGitHub::reopen_pull`] | `pull_request` `closed` (`merged: false`), `reopened` |
//! | [`FakeGitHub::merge_pull`] | `pull_request` `closed` (`merged: true`), then `push` of the base branch |
//! | a label added or removed on a pull request, through the API or [`FakeGitHub::add_label`] & co. | `pull_request` `labeled` / `unlabeled`, one per label |
//! | [`FakeGitHub::delete_branch`], [`FakeGitHub::delete_tag`] | `push` with `deleted: true` and `after` all zeros (then `closed` for the branch's open pull requests) |
//! | [`FakeGitHub::push_tag`] | `push` of `refs/tags/…` |
//! | [`Webhooks::ping`] | `ping` (App form) |
//!
//! Payloads are GitHub's own example payloads rewritten for the change
//! (they parse with octocrab's `WebhookEvent::try_from_header_and_body`).
//! Headers: `X-GitHub-Event`, `X-GitHub-Delivery` (a GUID, kept by
//! redeliveries), `X-GitHub-Hook-ID`, `X-GitHub-Hook-Installation-Target-ID`
//! (the App id) and `-Type` (`integration`), `X-Hub-Signature-256`
//! (`sha256=` HMAC-SHA256 of the raw body with the secret, when there is
//! one), `User-Agent: GitHub-Hookshot/<hex>`, `Content-Type:
//! application/json`, `Accept: */*`. Each delivery gets a fresh connection
//! and 10 s to be answered; its status code and duration are recorded
//! (`OK` for a 2xx, `Invalid HTTP Response: <code>`, `timed out`, `failed
//! to connect to host`) and listed by `GET /app/hook/deliveries`. **Nothing
//! is ever retried**: only a redelivery ([`Webhooks::redeliver`] or `POST
//! /app/hook/deliveries/{id}/attempts`) sends an event again, as a new
//! delivery with the same GUID and `redelivery: true`. Deliveries go out
//! concurrently, so their arrival order is not guaranteed, as on GitHub;
//! [`Webhooks::hold`] keeps them back until a test [`release`]s them in a
//! chosen order (one at a time), [`lose`]s them (never sent, never listed)
//! or [`fail`]s them (recorded as unreachable, redeliverable).
//!
//! The sender sets no tokio timer, so it works under paused time: the 10 s
//! limit is judged on tokio's clock when an answer comes (a receiver that
//! sleeps 11 s of paused time has timed out, at once) and enforced on the
//! wall clock (a receiver that never answers is cut off after 10 real
//! seconds).
//!
//! [`release`]: Webhooks::release
//! [`lose`]: Webhooks::lose
//! [`fail`]: Webhooks::fail
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use testkit::github::FakeGitHub;
//!
//! let github = FakeGitHub::start().await?;
//! github.set_labels("acme", "widgets", 7, ["review"])?;
//!
//! let octocrab = github.octocrab()?;
//! let labels = octocrab
//!     .issues("acme", "widgets")
//!     .add_labels(7, &["ready to merge".to_owned()])
//!     .await?;
//! let names: Vec<_> = labels.iter().map(|l| l.name.as_str()).collect();
//! assert_eq!(names, ["ready to merge", "review"]);
//!
//! // A human removes a label; the next read sees it.
//! github.remove_label("acme", "widgets", 7, "review");
//! assert_eq!(github.labels("acme", "widgets", 7), ["ready to merge"]);
//! assert_eq!(github.calls().count(Some("post"), Some("labels")), 1);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod deliveries;
mod payloads;
mod pull;
mod sender;
mod server;
mod store;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use octocrab::service::middleware::retry::RetryConfig;
use octocrab::{
    DefaultOctocrabBuilderConfig, NoAuth, NoSvc, NotLayerReady, Octocrab, OctocrabBuilder,
};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use url::Url;

use crate::calls::Calls;
use crate::faults::Faults;
use server::Shared;
pub use store::RateLimitStatus;
use store::{Limits, Store};
pub use webhooks::{Delivery, DeliveryId, DeliveryOutcome, WebhookConfig, Webhooks};

/// A throwaway 2048-bit RSA private key (PEM) for clients that authenticate
/// as a GitHub App against the fake: it lets them sign the App's JWT, whose
/// shape the fake checks and whose signature it does not. It was generated
/// for these tests only, is registered with no GitHub App and grants
/// nothing anywhere.
pub const TEST_APP_PRIVATE_KEY_PEM: &str = include_str!("test-app-key.pem");

/// The octocrab builder type [`FakeGitHub::octocrab_builder`] returns.
pub type FakeOctocrabBuilder =
    OctocrabBuilder<NoSvc, DefaultOctocrabBuilderConfig, NoAuth, NotLayerReady>;

/// Errors of the fake GitHub's own API (not the HTTP answers it serves).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server could not bind a port on 127.0.0.1.
    #[error("fake GitHub could not bind 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    /// An octocrab client for the fake could not be built.
    #[error("could not build an octocrab client for the fake GitHub: {0}")]
    Client(#[source] Box<octocrab::Error>),
    /// An outside write was refused as GitHub would refuse it (for example a
    /// label name longer than 50 characters).
    #[error("fake GitHub refused the change ({status}): {message}")]
    Rejected {
        /// The HTTP status GitHub would answer.
        status: u16,
        /// GitHub's message.
        message: String,
    },
    /// A webhook URL other than `http://127.0.0.1:<port>/…`: the fake
    /// delivers to this machine only.
    #[error(
        "webhook URL {0} is not http://127.0.0.1:<port>/…; the fake GitHub delivers to this machine only"
    )]
    NonLocalWebhook(String),
    /// A webhook call without a configured webhook.
    #[error("the fake GitHub has no webhook: configure one first")]
    NoWebhook,
    /// A call about a delivery that does not exist or is not in the state
    /// the call needs.
    #[error("delivery {id} {reason}")]
    Delivery {
        /// The delivery.
        id: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The fake stopped while a test was waiting on it.
    #[error("the fake GitHub stopped")]
    Stopped,
    /// The pull request was never added.
    #[error("pull request {owner}/{repo}#{number} does not exist in the fake GitHub")]
    UnknownPull {
        /// Repository owner.
        owner: String,
        /// Repository name.
        repo: String,
        /// Pull request number.
        number: u64,
    },
}

impl Error {
    /// Whether retrying may succeed: only a failed bind (ports or file
    /// descriptors may free up).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Bind(_))
    }
}

/// Status of a primary-rate-limit rejection; GitHub uses both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrimaryLimitStatus {
    /// 403 Forbidden (GitHub's usual answer, and the default).
    #[default]
    Forbidden,
    /// 429 Too Many Requests.
    TooManyRequests,
}

/// Configures a [`FakeGitHub`] before it starts.
#[derive(Debug, Clone, Default)]
pub struct FakeGitHubBuilder {
    seed: u64,
    tokens: Vec<String>,
    limits: Limits,
    faults: Option<Faults>,
    calls: Option<Calls>,
    webhook: Option<WebhookConfig>,
    retain_deliveries: Option<usize>,
}

impl FakeGitHubBuilder {
    /// Seeds the fault injector and the generated tokens (default 0).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Accepts `token` as a personal access token. The first one is
    /// [`FakeGitHub::token`]; without any, one is generated.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.tokens.push(token.into());
        self
    }

    /// Requests per window for each personal token (default 5000).
    #[must_use]
    pub fn rate_limit(mut self, budget: u32) -> Self {
        self.limits.budget = budget;
        self
    }

    /// Requests per window for each installation token (default 5000).
    #[must_use]
    pub fn installation_rate_limit(mut self, budget: u32) -> Self {
        self.limits.installation_budget = budget;
        self
    }

    /// Length of a rate-limit window (default one hour, as on GitHub). A
    /// token's window starts with its first charged request.
    #[must_use]
    pub fn rate_limit_window(mut self, window: Duration) -> Self {
        self.limits.window = window;
        self
    }

    /// Status of an exhausted-budget rejection (default 403).
    #[must_use]
    pub fn primary_limit_status(mut self, status: PrimaryLimitStatus) -> Self {
        self.limits.primary_status = match status {
            PrimaryLimitStatus::Forbidden => 403,
            PrimaryLimitStatus::TooManyRequests => 429,
        };
        self
    }

    /// Turns on the secondary limit: a token's mutation (POST, PUT, PATCH,
    /// DELETE) sooner than `spacing` after its previous one is rejected
    /// with 403 and `retry-after`. Off by default.
    #[must_use]
    pub fn secondary_limit(mut self, spacing: Duration) -> Self {
        self.limits.secondary_spacing = Some(spacing);
        self
    }

    /// How long a token that broke the secondary limit stays blocked, as
    /// announced in `retry-after` (default 60 s, GitHub's usual answer).
    #[must_use]
    pub fn secondary_retry_after(mut self, wait: Duration) -> Self {
        self.limits.secondary_retry_after = wait;
        self
    }

    /// Lifetime of minted installation tokens (default one hour, as on GitHub).
    #[must_use]
    pub fn installation_token_ttl(mut self, ttl: Duration) -> Self {
        self.limits.installation_token_ttl = ttl;
        self
    }

    /// Uses `faults` instead of a fresh set (for example one shared with a
    /// FakeKube, to partition both at once). The seed then has no effect on it.
    #[must_use]
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Counts into `calls` instead of fresh counters.
    #[must_use]
    pub fn calls(mut self, calls: Calls) -> Self {
        self.calls = Some(calls);
        self
    }

    /// Configures the App's webhook (see [`Webhooks::configure`]); without
    /// one, nothing is delivered.
    #[must_use]
    pub fn webhook(mut self, config: WebhookConfig) -> Self {
        self.webhook = Some(config);
        self
    }

    /// Keeps only the newest `n` settled deliveries (attempted or lost),
    /// forgetting older ones as GitHub forgets deliveries after a few days:
    /// [`Webhooks::deliveries`], the deliveries API and redelivery no
    /// longer know them. Held, pending and in-flight deliveries are always
    /// kept. Default: every delivery, with its payload, for the fake's
    /// lifetime — a long-running test that sends thousands of deliveries
    /// and measures its own memory wants a bound.
    #[must_use]
    pub fn retain_deliveries(mut self, n: usize) -> Self {
        self.retain_deliveries = Some(n);
        self
    }

    /// Binds 127.0.0.1 on a free port and starts serving; refuses a webhook
    /// URL that is not `http://127.0.0.1:<port>/…`.
    pub async fn start(self) -> Result<FakeGitHub, Error> {
        if let Some(config) = &self.webhook {
            config.validate()?;
        }
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(Error::Bind)?;
        let addr = listener.local_addr().map_err(Error::Bind)?;
        let api_base = format!("http://{addr}");
        let url = Url::parse(&format!("{api_base}/"))
            .map_err(|e| Error::Bind(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;

        let mut store = Store::new(api_base.clone(), self.limits, self.seed);
        let mut tokens = self.tokens;
        if tokens.is_empty() {
            tokens.push(store.generate_user_token());
        }
        for token in &tokens {
            store.add_user_token(token);
        }
        let token = tokens.swap_remove(0);
        if let Some(config) = self.webhook {
            store.hooks.configure(config);
        }
        if let Some(n) = self.retain_deliveries {
            store.hooks.retain_settled(n);
        }
        let released = store.hooks.take_dispatch();

        let faults = self.faults.unwrap_or_else(|| Faults::new(self.seed));
        let calls = self.calls.unwrap_or_default();
        let shared = Arc::new(Shared::new(store, faults, calls, api_base));
        let server = tokio::spawn(server::serve(listener, Arc::clone(&shared)));
        let sender =
            released.map(|released| tokio::spawn(sender::dispatch(Arc::clone(&shared), released)));
        tracing::debug!(%url, "fake GitHub started");
        Ok(FakeGitHub {
            shared,
            url,
            token,
            server,
            sender,
        })
    }
}

/// A running fake GitHub on 127.0.0.1; stops (closing every connection)
/// when dropped. See the [module documentation](self).
pub struct FakeGitHub {
    shared: Arc<Shared>,
    url: Url,
    token: String,
    server: JoinHandle<()>,
    sender: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeGitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGitHub")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.shared.stopped.cancel();
        self.server.abort();
        if let Some(sender) = &self.sender {
            sender.abort();
        }
    }
}

impl FakeGitHub {
    /// Starts a fake with the defaults (see [`FakeGitHubBuilder`]).
    pub async fn start() -> Result<Self, Error> {
        Self::builder().start().await
    }

    /// A builder for a fake with a seed, tokens, budgets or limits.
    pub fn builder() -> FakeGitHubBuilder {
        FakeGitHubBuilder::default()
    }

    /// The base URL, `http://127.0.0.1:<port>/`.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The default personal token. Fake tokens are not secrets.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// An octocrab client for the fake, authenticated with [`token`](Self::token).
    ///
    /// octocrab's own retries are **off**, so every call is exactly one
    /// request: injected faults reach the caller and [`calls`](Self::calls)
    /// counts attempts one to one. Use [`octocrab_builder`](Self::octocrab_builder)
    /// for octocrab's defaults. Must be called inside a tokio runtime.
    pub fn octocrab(&self) -> Result<Octocrab, Error> {
        self.octocrab_with_token(self.token.clone())
    }

    /// Like [`octocrab`](Self::octocrab), with another token (valid or not).
    pub fn octocrab_with_token(&self, token: impl Into<SecretString>) -> Result<Octocrab, Error> {
        self.octocrab_builder()?
            .personal_token(token)
            .add_retry_config(RetryConfig::None)
            .build()
            .map_err(|e| Error::Client(Box::new(e)))
    }

    /// An octocrab builder whose base URI is the fake, with no credentials
    /// and octocrab's defaults otherwise (retries included); add
    /// `.personal_token(…)` or `.app(…)` and build.
    pub fn octocrab_builder(&self) -> Result<FakeOctocrabBuilder, Error> {
        Octocrab::builder()
            .base_uri(self.url.as_str())
            .map_err(|e| Error::Client(Box::new(e)))
    }

    /// The fault switchboard every request goes through.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// The call counters, per (verb, resource, outcome).
    pub fn calls(&self) -> &Calls {
        &self.shared.calls
    }

    /// The App's webhook: its configuration and deliveries.
    pub fn webhooks(&self) -> Webhooks {
        Webhooks::new(Arc::clone(&self.shared))
    }

    /// Accepts another personal token (with a fresh budget).
    pub fn add_token(&self, token: &str) {
        self.shared.store().add_user_token(token);
    }

    /// The rate-limit status of `token` as the next response's headers would
    /// report it, or `None` for an unknown token.
    pub fn rate_limit(&self, token: &str) -> Option<RateLimitStatus> {
        self.shared.store().rate_limit(token, Instant::now())
    }

    // ----- the outside writer: changes as a human makes them in the UI ----------

    /// Replaces issue `number`'s labels, as a human would (not counted, not
    /// rate-limited). Returns the resulting names.
    pub fn set_labels<I, S>(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        labels: I,
    ) -> Result<Vec<String>, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names = owned(labels);
        let mut store = self.shared.store();
        store
            .replace_labels(owner, repo, number, &names)
            .map_err(rejected)?;
        Ok(store.label_names(owner, repo, number))
    }

    /// Adds one label to issue `number`, as a human would. Returns the
    /// resulting names.
    pub fn add_label(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        label: &str,
    ) -> Result<Vec<String>, Error> {
        let mut store = self.shared.store();
        store
            .add_labels(owner, repo, number, &[label.to_owned()])
            .map_err(rejected)?;
        Ok(store.label_names(owner, repo, number))
    }

    /// Removes one label from issue `number`, as a human would; `false` if
    /// the issue did not carry it.
    pub fn remove_label(&self, owner: &str, repo: &str, number: u64, label: &str) -> bool {
        self.shared
            .store()
            .remove_label(owner, repo, number, label)
            .is_ok()
    }

    /// Issue `number`'s label names, sorted as GitHub lists them.
    pub fn labels(&self, owner: &str, repo: &str, number: u64) -> Vec<String> {
        self.shared.store().label_names(owner, repo, number)
    }

    /// Creates (or updates) a repository label with a colour (hex, no `#`)
    /// and description, as shown in the label objects the API returns.
    pub fn create_label(
        &self,
        owner: &str,
        repo: &str,
        name: &str,
        color: &str,
        description: Option<&str>,
    ) -> Result<(), Error> {
        self.shared
            .store()
            .upsert_repo_label(owner, repo, name, color, description)
            .map_err(rejected)
    }

    // ----- pull requests and pushes: changes as git and the UI make them ----------
    //
    // Each returns the deliveries its events were recorded as, in the order
    // GitHub emits them (none without a webhook).

    /// Adds (or replaces) pull request `number`, open, from branch
    /// `head_ref` at `head_sha`, with these labels (its issue's labels are
    /// replaced); the branch is created or moved to `head_sha`. A new pull
    /// request is `opened`.
    pub fn add_pull<I, S>(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        head_sha: &str,
        head_ref: &str,
        labels: I,
    ) -> Result<Vec<DeliveryId>, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.shared
            .store()
            .add_pull(owner, repo, number, head_sha, head_ref, &owned(labels))
            .map_err(rejected)
    }

    /// Pushes `commits` (full SHAs, oldest first) to `branch`, creating it
    /// if absent: the branch moves to the last one, and so does the head of
    /// every open pull request from it. Delivers `push`, then `pull_request`
    /// `synchronize` for each pull request moved. A push needs at least one
    /// commit.
    pub fn push_branch(
        &self,
        owner: &str,
        repo: &str,
        branch: &str,
        commits: &[&str],
    ) -> Result<Vec<DeliveryId>, Error> {
        self.push_ref(owner, repo, &format!("refs/heads/{branch}"), commits)
    }

    /// Pushes `commits` to the head branch of pull request `number` (see
    /// [`push_branch`](Self::push_branch)).
    pub fn push_to_pull(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        commits: &[&str],
    ) -> Result<Vec<DeliveryId>, Error> {
        let branch = self
            .shared
            .store()
            .pull_head_ref(owner, repo, number)
            .ok_or_else(|| unknown_pull(owner, repo, number))?;
        self.push_branch(owner, repo, &branch, commits)
    }

    /// Moves pull request `number`'s head to `head_sha`: a push of that one
    /// commit to its branch.
    pub fn set_pull_head(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        head_sha: &str,
    ) -> Result<Vec<DeliveryId>, Error> {
        self.push_to_pull(owner, repo, number, &[head_sha])
    }

    /// Pushes tag `tag` at commit `sha` (created, or moved): a `push` of
    /// `refs/tags/<tag>` with no commits of its own.
    pub fn push_tag(
        &self,
        owner: &str,
        repo: &str,
        tag: &str,
        sha: &str,
    ) -> Result<Vec<DeliveryId>, Error> {
        self.push_ref(owner, repo, &format!("refs/tags/{tag}"), &[sha])
    }

    /// Closes open pull request `number` without merging it (`closed`,
    /// `merged: false`).
    pub fn close_pull(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
    ) -> Result<Vec<DeliveryId>, Error> {
        self.change_pull(owner, repo, number, Store::close_pull)
    }

    /// Reopens closed (not merged) pull request `number` (`reopened`).
    pub fn reopen_pull(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
    ) -> Result<Vec<DeliveryId>, Error> {
        self.change_pull(owner, repo, number, Store::reopen_pull)
    }

    /// Merges open pull request `number`: it is closed with `merged: true`
    /// and a new merge commit, which its base branch moves to. Delivers
    /// `pull_request` `closed`, then the base branch's `push`.
    pub fn merge_pull(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
    ) -> Result<Vec<DeliveryId>, Error> {
        self.change_pull(owner, repo, number, Store::merge_pull)
    }

    /// Deletes `branch`: a `push` with `deleted: true` and `after` all
    /// zeros; the open pull requests from it are then `closed`, as on
    /// GitHub. Deleting a branch that does not exist is refused (422).
    pub fn delete_branch(
        &self,
        owner: &str,
        repo: &str,
        branch: &str,
    ) -> Result<Vec<DeliveryId>, Error> {
        self.delete_ref(owner, repo, &format!("refs/heads/{branch}"))
    }

    /// Deletes tag `tag` (see [`delete_branch`](Self::delete_branch)).
    pub fn delete_tag(&self, owner: &str, repo: &str, tag: &str) -> Result<Vec<DeliveryId>, Error> {
        self.delete_ref(owner, repo, &format!("refs/tags/{tag}"))
    }

    /// The commit `branch` points at, if it exists.
    pub fn branch_head(&self, owner: &str, repo: &str, branch: &str) -> Option<String> {
        self.shared
            .store()
            .ref_sha(owner, repo, &format!("refs/heads/{branch}"))
    }

    /// Associates commit `sha` with pull requests `numbers` (beyond the pull
    /// requests it belongs to), for `GET …/commits/{sha}/pulls`.
    pub fn link_commit_to_pulls(&self, owner: &str, repo: &str, sha: &str, numbers: &[u64]) {
        self.shared.store().link_commit(owner, repo, sha, numbers);
    }

    /// Applies `change` to pull request `number` now.
    fn change_pull(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        change: PullChange,
    ) -> Result<Vec<DeliveryId>, Error> {
        change(
            &mut self.shared.store(),
            owner,
            repo,
            number,
            jiff::Timestamp::now(),
        )
        .map_err(|e| pull_error(e, owner, repo, number))
    }

    fn push_ref(
        &self,
        owner: &str,
        repo: &str,
        git_ref: &str,
        commits: &[&str],
    ) -> Result<Vec<DeliveryId>, Error> {
        let commits: Vec<String> = commits.iter().map(|&c| c.to_owned()).collect();
        self.shared
            .store()
            .push(owner, repo, git_ref, &commits, jiff::Timestamp::now())
            .map_err(rejected)
    }

    fn delete_ref(&self, owner: &str, repo: &str, git_ref: &str) -> Result<Vec<DeliveryId>, Error> {
        self.shared
            .store()
            .delete_ref(owner, repo, git_ref, jiff::Timestamp::now())
            .map_err(rejected)
    }
}

/// A store operation on one pull request at a wall-clock instant.
type PullChange =
    fn(&mut Store, &str, &str, u64, jiff::Timestamp) -> Result<Vec<DeliveryId>, store::ApiError>;

fn unknown_pull(owner: &str, repo: &str, number: u64) -> Error {
    Error::UnknownPull {
        owner: owner.to_owned(),
        repo: repo.to_owned(),
        number,
    }
}

/// A refused pull request change: unknown (404) or in the wrong state.
fn pull_error(err: store::ApiError, owner: &str, repo: &str, number: u64) -> Error {
    if err.status == 404 {
        unknown_pull(owner, repo, number)
    } else {
        rejected(err)
    }
}

fn owned<I, S>(labels: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    labels.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

fn rejected(err: store::ApiError) -> Error {
    let store::ApiError { status, body, .. } = err;
    Error::Rejected {
        status,
        message: body["message"].as_str().unwrap_or_default().to_owned(),
    }
}
