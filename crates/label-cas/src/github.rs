//! [`LabelBackend`] on GitHub's REST API through octocrab.
//!
//! Rule kept here: **one call is one request, and its answer is checked
//! before it is believed** — octocrab's own retry layer is off (a blindly
//! retried DELETE turns our own success into a 404 and loses the claim; our
//! callers know which calls are safe to repeat), every answer's status,
//! headers and JSON are validated, and the `x-ratelimit-*` headers of every
//! answer are recorded for [`RateLimited`](crate::RateLimited).
//!
//! The HTTP side underneath (one octocrab client, its timeout, metrics and
//! rate-limit record) is shared with
//! [`GitHubPullRequests`](crate::GitHubPullRequests) through
//! [`GitHubLabels::pull_requests`]: one token, one budget.
//!
//! Credentials are [`SecretString`]s; they reach octocrab and nothing else —
//! no error, log line or `Debug` output of this module contains them.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::{StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Limited};
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use octocrab::service::middleware::retry::RetryConfig;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use tokio::time::Instant;

use crate::{
    ETag, Error, Fetched, LabelBackend, LabelSet, Metrics, PrRef, RateLimit, RemoveOutcome, Result,
    validate_label_name, validate_label_names,
};

/// Largest answer body read (a page of 100 labels is about 30 KiB).
const MAX_BODY_BYTES: usize = 1 << 20;
/// Longest GitHub message kept in an error.
const MAX_MESSAGE_CHARS: usize = 300;
/// Far above GitHub's usual sub-second answers; bounds a stalled connection
/// so a worker is never stuck on it.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// GitHub allows at most 100 labels per issue, and 100 per page.
const PER_PAGE: u32 = 100;

/// Everything but RFC 3986 unreserved characters is escaped in a label
/// name put into a path segment (`/`, `?`, `#`, `%`, spaces, non-ASCII).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Pull request labels on GitHub (or GitHub Enterprise Server).
///
/// Built with [`GitHubLabels::builder`] from a token or a GitHub App
/// installation. Wrap it in [`RateLimited`](crate::RateLimited) before
/// handing it to [`AtomicLabelManager`](crate::AtomicLabelManager).
///
/// ```no_run
/// # async fn run() -> label_cas::Result<()> {
/// use label_cas::GitHubLabels;
/// use secrecy::SecretString;
///
/// let github = GitHubLabels::builder()
///     .token(SecretString::from(std::env::var("GITHUB_TOKEN").unwrap_or_default()))
///     .base_uri("https://github.example.com/api/v3/") // GitHub Enterprise
///     .build()?;
/// # Ok(()) }
/// ```
pub struct GitHubLabels {
    client: Client,
}

impl fmt::Debug for GitHubLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubLabels")
            .field("request_timeout", &self.client.request_timeout)
            .field("rate_limit", &self.rate_limit())
            .finish_non_exhaustive()
    }
}

/// The HTTP side shared by [`GitHubLabels`] and
/// [`GitHubPullRequests`](crate::GitHubPullRequests): one octocrab client
/// (so one token and one rate-limit budget), its request timeout, its
/// metrics and the rate-limit state its answers last reported. Clones share
/// all of it.
#[derive(Clone)]
pub(crate) struct Client {
    octocrab: Octocrab,
    metrics: Metrics,
    request_timeout: Option<Duration>,
    rate_limit: Arc<Mutex<Option<RateLimit>>>,
}

/// What a conditional GET answered.
pub(crate) enum Conditional {
    /// 304: unchanged since the ETag sent.
    NotModified,
    /// A 2xx answer and its ETag.
    Fresh {
        /// The answer (status 2xx).
        answer: Answer,
        /// Its `etag` header, if it is a sendable value.
        etag: Option<ETag>,
    },
}

/// Configures a [`GitHubLabels`].
pub struct GitHubLabelsBuilder {
    credentials: Credentials,
    base_uri: Option<String>,
    request_timeout: Option<Duration>,
    metrics: Metrics,
}

enum Credentials {
    None,
    Token(SecretString),
    App {
        app_id: u64,
        private_key_pem: SecretString,
        installation_id: u64,
    },
}

impl fmt::Debug for GitHubLabelsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credentials = match &self.credentials {
            Credentials::None => "none".to_owned(),
            Credentials::Token(_) => "token [redacted]".to_owned(),
            Credentials::App {
                app_id,
                installation_id,
                ..
            } => {
                format!("app {app_id}, installation {installation_id}, private key [redacted]")
            }
        };
        f.debug_struct("GitHubLabelsBuilder")
            .field("credentials", &credentials)
            .field("base_uri", &self.base_uri.as_deref().map(redact_userinfo))
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for GitHubLabelsBuilder {
    fn default() -> Self {
        Self {
            credentials: Credentials::None,
            base_uri: None,
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
            metrics: Metrics::default(),
        }
    }
}

impl GitHubLabelsBuilder {
    /// Authenticates with a personal access token or an installation token.
    #[must_use]
    pub fn token(mut self, token: SecretString) -> Self {
        self.credentials = Credentials::Token(token);
        self
    }

    /// Authenticates as GitHub App `app_id` (RSA private key in PEM) acting
    /// for installation `installation_id`; installation tokens are minted
    /// and renewed by octocrab.
    #[must_use]
    pub fn app_installation(
        mut self,
        app_id: u64,
        private_key_pem: SecretString,
        installation_id: u64,
    ) -> Self {
        self.credentials = Credentials::App {
            app_id,
            private_key_pem,
            installation_id,
        };
        self
    }

    /// The API root, for GitHub Enterprise Server
    /// (`https://HOST/api/v3/`) or a test server. Default: github.com's API.
    #[must_use]
    pub fn base_uri(mut self, base_uri: impl Into<String>) -> Self {
        self.base_uri = Some(base_uri.into());
        self
    }

    /// Bound on one request, answer included (default 30 s; `None`: none).
    /// A mutation that times out is treated as possibly applied.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Reports requests into `metrics`.
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Builds the client (inside a tokio runtime). Fails on missing
    /// credentials, a base URI that does not parse, or a private key that
    /// is not an RSA PEM key.
    pub fn build(self) -> Result<GitHubLabels> {
        let mut builder = Octocrab::builder().add_retry_config(RetryConfig::None);
        if let Some(base_uri) = &self.base_uri {
            let shown = redact_userinfo(base_uri);
            let parsed: Uri = base_uri.parse().map_err(|_| Error::Config {
                reason: format!("base URI {shown:?} does not parse"),
            })?;
            if parsed.scheme().is_none() || parsed.host().is_none() {
                return Err(Error::Config {
                    reason: format!("base URI {shown:?} needs a scheme and a host"),
                });
            }
            if parsed.authority().is_some_and(|a| a.as_str().contains('@')) {
                // Credentials in a URI end up in logs and error messages;
                // they belong in `token` or `app_installation`.
                return Err(Error::Config {
                    reason: format!(
                        "base URI {shown:?} carries credentials before '@'; pass them with token() or app_installation()"
                    ),
                });
            }
            builder = builder.base_uri(parsed).map_err(|_| Error::Config {
                reason: format!("base URI {shown:?} was refused by octocrab"),
            })?;
        }
        let client = match self.credentials {
            Credentials::None => {
                return Err(Error::Config {
                    reason: "no GitHub credentials (token or App installation)".into(),
                });
            }
            Credentials::Token(token) => builder
                .personal_token(token)
                .build()
                .map_err(|e| build_error(&e))?,
            Credentials::App {
                app_id,
                private_key_pem,
                installation_id,
            } => {
                let builder = builder
                    .app_from_rsa_pem(AppId(app_id), private_key_pem.expose_secret().as_bytes())
                    .map_err(|_| Error::Config {
                        reason: "the GitHub App private key is not an RSA key in PEM format".into(),
                    })?;
                builder
                    .build()
                    .map_err(|e| build_error(&e))?
                    .installation(InstallationId(installation_id))
                    .map_err(|e| build_error(&e))?
            }
        };
        Ok(GitHubLabels {
            client: Client::new(client, self.metrics, self.request_timeout),
        })
    }
}

impl GitHubLabels {
    /// A builder: add credentials, optionally a base URI, then build.
    pub fn builder() -> GitHubLabelsBuilder {
        GitHubLabelsBuilder::default()
    }

    /// Uses an octocrab client built elsewhere. Its retry layer **must be
    /// off** (`add_retry_config(RetryConfig::None)`): a retried DELETE
    /// reports our own removal as someone else's.
    pub fn from_octocrab(client: Octocrab, metrics: Metrics) -> Self {
        Self {
            client: Client::new(client, metrics, Some(DEFAULT_REQUEST_TIMEOUT)),
        }
    }

    /// A [`GitHubPullRequests`](crate::GitHubPullRequests) on the same
    /// client: the same credentials, base URI, timeout and metrics, and the
    /// same record of the rate-limit budget — so a
    /// [`RateLimited`](crate::RateLimited) wrapped around this backend sees
    /// what the pull request reads spent too.
    pub fn pull_requests(&self) -> crate::GitHubPullRequests {
        crate::GitHubPullRequests::from_client(self.client.clone())
    }
}

impl Client {
    pub(crate) fn new(
        octocrab: Octocrab,
        metrics: Metrics,
        request_timeout: Option<Duration>,
    ) -> Self {
        Self {
            octocrab,
            metrics,
            request_timeout,
            rate_limit: Arc::new(Mutex::new(None)),
        }
    }

    pub(crate) fn octocrab(&self) -> &Octocrab {
        &self.octocrab
    }

    pub(crate) fn request_timeout(&self) -> Option<Duration> {
        self.request_timeout
    }

    /// The rate-limit state the last answer with complete headers reported.
    pub(crate) fn rate_limit(&self) -> Option<RateLimit> {
        *self
            .rate_limit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// One GET with `If-None-Match` when given an ETag: a 304 (counted in
    /// the metrics: it cost no budget), or a 2xx answer with its ETag; any
    /// other status is its error. A 304 to an unconditional read is
    /// refused as an invalid answer.
    pub(crate) async fn get_conditional(
        &self,
        endpoint: &'static str,
        uri: String,
        if_none_match: Option<&ETag>,
    ) -> Result<Conditional> {
        let mut headers = HeaderMap::new();
        if let Some(etag) = if_none_match
            && let Ok(value) = HeaderValue::from_str(etag.as_str())
        {
            headers.insert(http::header::IF_NONE_MATCH, value);
        }
        let answer = self
            .send(
                endpoint,
                false,
                self.octocrab._get_with_headers(uri, Some(headers)),
            )
            .await?;
        if answer.status == StatusCode::NOT_MODIFIED {
            if if_none_match.is_none() {
                return Err(Error::InvalidResponse {
                    reason: "304 Not Modified to an unconditional read".into(),
                });
            }
            self.metrics.not_modified();
            return Ok(Conditional::NotModified);
        }
        if !answer.status.is_success() {
            return Err(answer.error());
        }
        let etag = answer
            .headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(ETag::new);
        Ok(Conditional::Fresh { answer, etag })
    }

    /// Sends one request: bounded by the timeout, counted, timed, its
    /// rate-limit headers recorded. `Err` only when no answer came.
    pub(crate) async fn send<F>(
        &self,
        endpoint: &'static str,
        mutation: bool,
        request: F,
    ) -> Result<Answer>
    where
        F: Future<Output = octocrab::Result<http::Response<BoxBody<Bytes, octocrab::Error>>>>,
    {
        let started = Instant::now();
        let exchange = async {
            let response = request.await.map_err(|e| request_error(e, mutation))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| Error::Transport {
                    message: format!(
                        "reading GitHub's answer failed: {}",
                        bounded(&e.to_string())
                    ),
                    sent: true,
                    mutation,
                })?
                .to_bytes();
            Ok::<_, Error>(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let result = match self.request_timeout {
            Some(after) => match tokio::time::timeout(after, exchange).await {
                Ok(result) => result,
                Err(_) => Err(Error::Timeout { after, mutation }),
            },
            None => exchange.await,
        };
        let took = started.elapsed();
        match &result {
            Ok(answer) => {
                self.metrics.request(endpoint, answer.status.as_str(), took);
                self.record_rate_limit(&answer.headers);
            }
            Err(Error::Timeout { .. }) => self.metrics.request(endpoint, "timeout", took),
            Err(_) => self.metrics.request(endpoint, "transport", took),
        }
        result
    }

    fn record_rate_limit(&self, headers: &HeaderMap) {
        if let Some(limit) = rate_limit_from(headers) {
            self.metrics.rate_limit_remaining(limit.remaining);
            *self
                .rate_limit
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(limit);
        }
    }
}

#[async_trait]
impl LabelBackend for GitHubLabels {
    async fn get<'a>(&self, pr: &PrRef, if_none_match: Option<&'a ETag>) -> Result<Fetched> {
        let uri = format!("{}?per_page={PER_PAGE}", labels_path(pr));
        let (answer, etag) = match self
            .client
            .get_conditional("get_labels", uri, if_none_match)
            .await?
        {
            Conditional::NotModified => return Ok(Fetched::NotModified),
            Conditional::Fresh { answer, etag } => (answer, etag),
        };
        if has_next_page(&answer.headers) {
            return Err(Error::InvalidResponse {
                reason: format!(
                    "more than {PER_PAGE} labels on {pr}; GitHub allows at most {PER_PAGE}"
                ),
            });
        }
        let labels = parse_labels(&answer.body)?;
        Ok(Fetched::Labels { labels, etag })
    }

    async fn add(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
        validate_label_names(names)?;
        let body = LabelsBody { labels: names };
        let answer = self
            .client
            .send(
                "add_labels",
                true,
                self.client.octocrab()._post(labels_path(pr), Some(&body)),
            )
            .await?;
        answer.labels()
    }

    async fn remove(&self, pr: &PrRef, name: &str) -> Result<RemoveOutcome> {
        validate_label_name(name)?;
        let uri = format!(
            "{}/{}",
            labels_path(pr),
            utf8_percent_encode(name, PATH_SEGMENT)
        );
        let answer = self
            .client
            .send(
                "remove_label",
                true,
                self.client.octocrab()._delete(uri, None::<&()>),
            )
            .await?;
        if answer.status == StatusCode::NOT_FOUND
            && answer
                .message()
                .eq_ignore_ascii_case("Label does not exist")
        {
            return Ok(RemoveOutcome::Absent);
        }
        answer.labels().map(RemoveOutcome::Removed)
    }

    async fn replace(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
        validate_label_names(names)?;
        let body = LabelsBody { labels: names };
        let answer = self
            .client
            .send(
                "replace_labels",
                true,
                self.client.octocrab()._put(labels_path(pr), Some(&body)),
            )
            .await?;
        answer.labels()
    }

    fn rate_limit(&self) -> Option<RateLimit> {
        self.client.rate_limit()
    }
}

/// An HTTP answer, read completely.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    /// GitHub's `message`, bounded; empty when the body has none.
    fn message(&self) -> String {
        #[derive(Deserialize)]
        struct ErrorBody {
            message: Option<String>,
        }
        serde_json::from_slice::<ErrorBody>(&self.body)
            .ok()
            .and_then(|b| b.message)
            .map(|m| bounded(&m))
            .unwrap_or_default()
    }

    /// The label list of a successful answer, validated; the error of any
    /// other.
    fn labels(&self) -> Result<LabelSet> {
        if !self.status.is_success() {
            return Err(self.error());
        }
        parse_labels(&self.body)
    }

    /// The error a non-success answer means.
    fn error(&self) -> Error {
        error_for(self.status, &self.headers, self.message())
    }
}

#[derive(serde::Serialize)]
struct LabelsBody<'a> {
    labels: &'a [String],
}

/// `/repos/{owner}/{repo}/issues/{number}/labels`; owner and repository
/// were validated by [`PrRef::new`] and need no escaping.
fn labels_path(pr: &PrRef) -> String {
    format!(
        "/repos/{}/{}/issues/{}/labels",
        pr.owner(),
        pr.repo(),
        pr.number()
    )
}

/// Checks a label list answer: a JSON array of objects with a numeric `id`
/// and a valid `name`.
fn parse_labels(body: &[u8]) -> Result<LabelSet> {
    let labels: Vec<LabelJson> =
        serde_json::from_slice(body).map_err(|e| Error::InvalidResponse {
            reason: format!("the label list is not a JSON array of labels with id and name: {e}"),
        })?;
    label_set(labels)
}

/// A label object as GitHub renders it (in label lists and in pull requests).
#[derive(Deserialize)]
pub(crate) struct LabelJson {
    #[allow(dead_code)] // required: its presence is part of the check
    id: u64,
    name: String,
}

/// The label objects of an answer as a set, once each is checked: at most
/// one page, and names within GitHub's rules.
pub(crate) fn label_set(labels: Vec<LabelJson>) -> Result<LabelSet> {
    if labels.len() > PER_PAGE as usize {
        return Err(Error::InvalidResponse {
            reason: format!("{} labels in one answer", labels.len()),
        });
    }
    for label in &labels {
        if label.name.is_empty() || label.name.chars().count() > crate::MAX_LABEL_NAME_CHARS {
            return Err(Error::InvalidResponse {
                reason: format!("label name {:?} out of GitHub's rules", label.name),
            });
        }
    }
    Ok(LabelSet::new(labels.into_iter().map(|l| l.name)))
}

/// The `x-ratelimit-*` headers, if complete.
fn rate_limit_from(headers: &HeaderMap) -> Option<RateLimit> {
    let number = |name: &str| header_str(headers, name)?.trim().parse::<u64>().ok();
    let limit = u32::try_from(number("x-ratelimit-limit")?).ok()?;
    let remaining = u32::try_from(number("x-ratelimit-remaining")?).ok()?;
    let used = number("x-ratelimit-used")
        .and_then(|u| u32::try_from(u).ok())
        .unwrap_or_else(|| limit.saturating_sub(remaining));
    let reset =
        jiff::Timestamp::from_second(i64::try_from(number("x-ratelimit-reset")?).ok()?).ok()?;
    Some(RateLimit {
        limit,
        remaining,
        used,
        reset,
    })
}

/// The reset time of an exhausted primary budget.
fn exhausted_reset(headers: &HeaderMap) -> Option<jiff::Timestamp> {
    rate_limit_from(headers)
        .filter(|l| l.remaining == 0)
        .map(|l| l.reset)
}

/// `retry-after` as seconds or an HTTP date.
fn retry_after_from(headers: &HeaderMap) -> Option<Duration> {
    let value = header_str(headers, "retry-after")?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    jiff::fmt::rfc2822::parse(value)
        .ok()
        .map(|zoned| crate::error::until_wall_clock(zoned.timestamp()))
}

/// The error a non-success answer means. GitHub answers 403 both for
/// missing permissions and for rate limits; the headers and message tell
/// them apart, and a permission problem is never retried.
fn error_for(status: StatusCode, headers: &HeaderMap, message: String) -> Error {
    let status = status.as_u16();
    match status {
        401 => Error::Unauthorized,
        403 | 429 if status == 429 || is_rate_limit(headers, &message) => Error::RateLimited {
            retry_after: retry_after_from(headers),
            reset: exhausted_reset(headers),
        },
        403 => Error::Forbidden { message },
        404 | 410 => Error::NotFound { message },
        422 => Error::Validation { message },
        500..=599 => Error::Server { status },
        _ => Error::UnexpectedStatus { status, message },
    }
}

/// Whether a 403 is a rate limit rather than a permission problem: an
/// exhausted primary budget (`x-ratelimit-remaining: 0`), a secondary limit
/// (`retry-after`, or GitHub's message; GitHub Enterprise Server releases
/// before 3.x call it "abuse detection").
fn is_rate_limit(headers: &HeaderMap, message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    headers.contains_key(http::header::RETRY_AFTER)
        || header_str(headers, "x-ratelimit-remaining").is_some_and(|r| r.trim() == "0")
        || message.contains("rate limit")
        || message.contains("abuse detection")
}

fn has_next_page(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("rel=\"next\""))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()
}

/// `uri` with any user information (`user:secret@`) in its authority
/// replaced, for messages and `Debug` output.
fn redact_userinfo(uri: &str) -> String {
    let start = uri.find("://").map_or(0, |i| i + 3);
    let end = uri[start..]
        .find(['/', '?', '#'])
        .map_or(uri.len(), |i| start + i);
    match uri[start..end].rfind('@') {
        Some(at) => format!("{}[redacted]{}", &uri[..start], &uri[start + at..]),
        None => uri.to_owned(),
    }
}

fn bounded(message: &str) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message.to_owned();
    }
    let mut cut: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    cut.push('…');
    cut
}

/// An octocrab failure to get an answer at all.
fn request_error(error: octocrab::Error, mutation: bool) -> Error {
    match error {
        // Minting an installation token failed with an answer: the same
        // classification as any other answer (a rate limit stays transient).
        octocrab::Error::GitHub { source, .. } => error_for(
            source.status_code,
            &source.headers.unwrap_or_default(),
            bounded(&source.message),
        ),
        octocrab::Error::JWT { .. } => Error::Config {
            reason: "could not sign the GitHub App token request".into(),
        },
        other => {
            let sent = !never_sent(&other);
            Error::Transport {
                message: bounded(&describe(&other)),
                sent,
                mutation,
            }
        }
    }
}

/// Whether the request provably never left: the connection could not be
/// established.
fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(client) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            return client.is_connect();
        }
        current = e.source();
    }
    false
}

/// The error and its causes on one line (octocrab's own `Display` of some
/// variants appends a backtrace).
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut current = error.source();
    while let Some(e) = current {
        parts.push(e.to_string());
        current = e.source();
    }
    if parts.is_empty() {
        return "request failed".to_owned();
    }
    parts.join(": ")
}

fn build_error(error: &octocrab::Error) -> Error {
    Error::Config {
        reason: format!(
            "could not build the GitHub client: {}",
            bounded(&describe(error))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn answer(status: u16, pairs: &[(&'static str, &str)], body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: headers(pairs),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn label_names_are_escaped_as_one_path_segment() {
        let pr = PrRef::new("acme", "widgets", 7).unwrap();
        let name = "needs review/QA: 100% 🚀?#";
        let uri = format!(
            "{}/{}",
            labels_path(&pr),
            utf8_percent_encode(name, PATH_SEGMENT)
        );
        assert_eq!(
            uri,
            "/repos/acme/widgets/issues/7/labels/needs%20review%2FQA%3A%20100%25%20%F0%9F%9A%80%3F%23"
        );
        assert!(uri.parse::<Uri>().is_ok());
    }

    #[test]
    fn a_403_is_a_rate_limit_only_when_github_says_so() {
        let secondary = answer(
            403,
            &[("retry-after", "30")],
            r#"{"message":"You have exceeded a secondary rate limit."}"#,
        );
        assert!(matches!(
            secondary.error(),
            Error::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(30)
        ));
        let reset = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(600))
            .as_second()
            .to_string();
        let primary = answer(
            403,
            &[
                ("x-ratelimit-limit", "5000"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ],
            r#"{"message":"API rate limit exceeded for installation ID 1."}"#,
        );
        assert!(matches!(
            primary.error(),
            Error::RateLimited {
                retry_after: None,
                reset: Some(_)
            }
        ));
        let permission = answer(
            403,
            &[],
            r#"{"message":"Resource not accessible by integration"}"#,
        );
        assert!(matches!(permission.error(), Error::Forbidden { .. }));
        assert!(matches!(
            answer(429, &[], "").error(),
            Error::RateLimited {
                retry_after: None,
                reset: None
            }
        ));
    }

    #[test]
    fn older_enterprise_servers_abuse_detection_403_is_a_rate_limit() {
        let abuse = answer(
            403,
            &[],
            r#"{"message":"You have triggered an abuse detection mechanism. Please wait a few minutes before you try again."}"#,
        );
        assert!(matches!(abuse.error(), Error::RateLimited { .. }));
    }

    #[test]
    fn a_rate_limited_token_request_is_transient_and_a_refused_one_is_not() {
        // Minting an installation token goes through octocrab, which hands
        // back status, headers and message: classified like any answer.
        let limited = error_for(
            StatusCode::FORBIDDEN,
            &headers(&[("x-ratelimit-remaining", "0")]),
            "API rate limit exceeded".into(),
        );
        assert!(limited.is_transient(), "{limited}");
        let refused = error_for(
            StatusCode::FORBIDDEN,
            &headers(&[("x-ratelimit-remaining", "4999")]),
            "Resource not accessible by integration".into(),
        );
        assert!(
            matches!(refused, Error::Forbidden { .. }) && !refused.is_transient(),
            "{refused}"
        );
    }

    #[test]
    fn statuses_map_to_transient_or_permanent_errors() {
        assert!(matches!(
            answer(401, &[], r#"{"message":"Bad credentials"}"#).error(),
            Error::Unauthorized
        ));
        assert!(matches!(
            answer(404, &[], r#"{"message":"Not Found"}"#).error(),
            Error::NotFound { .. }
        ));
        assert!(matches!(
            answer(422, &[], r#"{"message":"Validation Failed"}"#).error(),
            Error::Validation { .. }
        ));
        let server = answer(502, &[], "<html>bad gateway</html>").error();
        assert!(server.is_transient() && server.maybe_applied());
        assert!(matches!(
            answer(418, &[], "{}").error(),
            Error::UnexpectedStatus { status: 418, .. }
        ));
    }

    #[test]
    fn label_answers_are_validated_before_use() {
        let labels =
            parse_labels(br#"[{"id":1,"name":"b","color":"ededed"},{"id":2,"name":"a"}]"#).unwrap();
        assert_eq!(labels.names(), ["a", "b"]);
        for bad in [
            &br#"{"message":"ok"}"#[..],
            br#"[{"name":"no id"}]"#,
            br#"[{"id":1}]"#,
            br#"[{"id":1,"name":""}]"#,
            b"<html>",
        ] {
            assert!(
                matches!(parse_labels(bad), Err(Error::InvalidResponse { .. })),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rate_limit_headers_are_read_completely_or_not_at_all() {
        let parsed = rate_limit_from(&headers(&[
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "4990"),
            ("x-ratelimit-used", "10"),
            ("x-ratelimit-reset", "1700000000"),
        ]))
        .unwrap();
        assert_eq!(
            (parsed.limit, parsed.remaining, parsed.used),
            (5000, 4990, 10)
        );
        assert_eq!(parsed.reset.as_second(), 1_700_000_000);
        assert!(rate_limit_from(&headers(&[("x-ratelimit-remaining", "1")])).is_none());
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(
            retry_after_from(&headers(&[("retry-after", "120")])),
            Some(Duration::from_secs(120))
        );
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(90);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&later)
            .unwrap();
        let wait = retry_after_from(&headers(&[("retry-after", &date)])).unwrap();
        assert!(
            wait > Duration::from_secs(80) && wait <= Duration::from_secs(90),
            "{wait:?}"
        );
    }

    #[test]
    fn debug_output_never_shows_credentials() {
        let builder = GitHubLabels::builder()
            .token(SecretString::from("ghp_do_not_print_me"))
            .base_uri("http://127.0.0.1:1/");
        let shown = format!("{builder:?}");
        assert!(!shown.contains("do_not_print_me"), "{shown}");
        let app = GitHubLabels::builder().app_installation(
            1,
            SecretString::from("-----BEGIN KEY-----secret"),
            2,
        );
        assert!(!format!("{app:?}").contains("secret"));
    }

    #[test]
    fn credentials_in_the_base_uri_are_refused_and_never_shown() {
        let uri = "https://x-access-token:ghp_in_the_uri@github.example.com/api/v3/";
        let builder = GitHubLabels::builder()
            .token(SecretString::from("t"))
            .base_uri(uri);
        assert!(!format!("{builder:?}").contains("ghp_in_the_uri"));
        let err = builder.build().unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
        assert!(
            !format!("{err} {err:?}").contains("ghp_in_the_uri"),
            "{err}"
        );
        assert_eq!(
            redact_userinfo("http://u:p@h:1/a@b"),
            "http://[redacted]@h:1/a@b"
        );
        assert_eq!(redact_userinfo("http://h/a@b"), "http://h/a@b");
    }

    #[tokio::test]
    async fn a_refused_connection_is_known_never_to_have_been_sent() {
        // Bind then drop a listener: its port now refuses connections.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let github = GitHubLabels::builder()
            .token(SecretString::from("t"))
            .base_uri(format!("http://127.0.0.1:{port}/"))
            .build()
            .unwrap();
        let pr = PrRef::new("acme", "widgets", 1).unwrap();
        let err = github.remove(&pr, "x").await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Transport {
                    sent: false,
                    mutation: true,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.maybe_applied());
        assert!(err.is_transient());
    }
}
