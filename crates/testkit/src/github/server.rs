//! The fake GitHub's HTTP side: a hyper server on 127.0.0.1 whose every
//! request goes through fault injection, call counting, authentication,
//! the secondary and primary rate limits, the endpoint's semantics and
//! conditional-GET handling, in that order.
//!
//! The one rule: **each request is decided once by the faults, counted once
//! with the outcome the client saw, and charged to its token's budget only
//! if GitHub would charge it** (a 304, a rejected or an injected request
//! costs nothing).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pull::PullFilter;
use super::store::{ApiError, Store};
use crate::calls::{Calls, Outcome};
use crate::faults::{FaultDecision, Faults, InjectedError, RequestMeta};

/// Largest request body accepted (GitHub's label endpoints take a few
/// hundred bytes; this only bounds memory).
const MAX_BODY_BYTES: usize = 1 << 20;

const DOCS_APP_WEBHOOKS: &str = "https://docs.github.com/rest/apps/webhooks";

/// GitHub's default and maximum page sizes.
const DEFAULT_PER_PAGE: usize = 30;
const MAX_PER_PAGE: usize = 100;

/// Everything a request handler needs, shared by all connections.
pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    pub(crate) faults: Faults,
    pub(crate) calls: Calls,
    pub(crate) api_base: String,
    /// Cancelled when the fake stops, so that nothing waits on it forever.
    pub(crate) stopped: CancellationToken,
    request_seq: AtomicU64,
}

impl Shared {
    pub(crate) fn new(store: Store, faults: Faults, calls: Calls, api_base: String) -> Self {
        Self {
            store: Mutex::new(store),
            faults,
            calls,
            api_base,
            stopped: CancellationToken::new(),
            request_seq: AtomicU64::new(0),
        }
    }

    /// The store. Each handler finishes its work under one lock and never
    /// awaits while holding it; a panic in one cannot leave a label write
    /// half-applied (writes validate before they mutate), so poisoning is
    /// ignored.
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Accepts connections until the task is aborted; aborting it drops the
/// `JoinSet`, which aborts every connection (held partitioned requests
/// included).
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // As GitHub's front ends (and FakeKube): a response is
                    // not held back waiting for the client's ACK of the
                    // previous segment (Nagle's algorithm against delayed
                    // ACKs stalls it ~40 ms).
                    let _ = stream.set_nodelay(true);
                    let shared = Arc::clone(&shared);
                    connections.spawn(async move {
                        let service = service_fn(move |req| {
                            let shared = Arc::clone(&shared);
                            async move { handle(&shared, req).await }
                        });
                        // Errors here are client disconnects and injected drops.
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(%error, "fake GitHub: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Returned by the service to make hyper close the connection without
/// writing a response.
#[derive(Debug)]
struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DropConnection {}

/// Which endpoint a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    IssueLabels {
        owner: String,
        repo: String,
        number: u64,
    },
    IssueLabel {
        owner: String,
        repo: String,
        number: u64,
        name: String,
    },
    Pull {
        owner: String,
        repo: String,
        number: u64,
    },
    Pulls {
        owner: String,
        repo: String,
    },
    CommitPulls {
        owner: String,
        repo: String,
        sha: String,
    },
    AccessTokens {
        installation: u64,
    },
    HookDeliveries,
    HookDelivery {
        id: u64,
    },
    HookAttempts {
        id: u64,
    },
    Unknown,
}

impl Route {
    fn parse(path: &str) -> Self {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let number = |s: &str| s.parse::<u64>().ok();
        match segments.as_slice() {
            ["repos", o, r, "issues", n, "labels"] => {
                number(n).map_or(Self::Unknown, |number| Self::IssueLabels {
                    owner: decode(o),
                    repo: decode(r),
                    number,
                })
            }
            ["repos", o, r, "issues", n, "labels", name] => {
                number(n).map_or(Self::Unknown, |number| Self::IssueLabel {
                    owner: decode(o),
                    repo: decode(r),
                    number,
                    name: decode(name),
                })
            }
            ["repos", o, r, "pulls", n] => number(n).map_or(Self::Unknown, |number| Self::Pull {
                owner: decode(o),
                repo: decode(r),
                number,
            }),
            ["repos", o, r, "pulls"] => Self::Pulls {
                owner: decode(o),
                repo: decode(r),
            },
            ["repos", o, r, "commits", sha, "pulls"] => Self::CommitPulls {
                owner: decode(o),
                repo: decode(r),
                sha: decode(sha),
            },
            ["app", "hook", "deliveries"] => Self::HookDeliveries,
            ["app", "hook", "deliveries", id] => {
                number(id).map_or(Self::Unknown, |id| Self::HookDelivery { id })
            }
            ["app", "hook", "deliveries", id, "attempts"] => {
                number(id).map_or(Self::Unknown, |id| Self::HookAttempts { id })
            }
            ["app", "installations", id, "access_tokens"] => number(id)
                .map_or(Self::Unknown, |installation| Self::AccessTokens {
                    installation,
                }),
            _ => Self::Unknown,
        }
    }

    /// The resource name requests are counted and matched under.
    fn resource(&self) -> &'static str {
        match self {
            Self::IssueLabels { .. } => "labels",
            Self::IssueLabel { .. } => "label",
            Self::Pull { .. } => "pull",
            Self::Pulls { .. } => "pulls",
            Self::CommitPulls { .. } => "commit_pulls",
            Self::AccessTokens { .. } => "access_tokens",
            Self::HookDeliveries => "hook_deliveries",
            Self::HookDelivery { .. } => "hook_delivery",
            Self::HookAttempts { .. } => "hook_attempts",
            Self::Unknown => "unknown",
        }
    }
}

/// A response before it is turned into hyper's type.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Option<Bytes>,
}

impl Reply {
    fn json(status: u16, value: &Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Some(Bytes::from(value.to_string())),
        }
    }

    fn error(err: ApiError) -> Self {
        let mut reply = Self::json(err.status, &err.body);
        reply.headers = err.headers;
        reply
    }

    fn with_headers(mut self, headers: Vec<(&'static str, String)>) -> Self {
        self.headers.extend(headers);
        self
    }
}

/// Counts a request once, when dropped. hyper keeps serving a request whose
/// client hung up, so the future is dropped early only when the fake stops
/// (or a fault drops the connection): both count as `Dropped`, since no
/// response went out.
struct CallRecord<'a> {
    calls: &'a Calls,
    verb: String,
    resource: &'static str,
    outcome: Outcome,
}

impl Drop for CallRecord<'_> {
    fn drop(&mut self) {
        self.calls
            .record(&self.verb, self.resource, self.outcome.clone());
    }
}

async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    let route = Route::parse(req.uri().path());
    let verb = req.method().as_str().to_ascii_lowercase();
    let mut record = CallRecord {
        calls: &shared.calls,
        verb,
        resource: route.resource(),
        outcome: Outcome::Dropped,
    };

    let meta = RequestMeta::new(record.verb.clone(), record.resource);
    let reply = match shared.faults.apply(&meta).await {
        FaultDecision::Fail(InjectedError::Drop) => return Err(DropConnection),
        FaultDecision::Fail(error) => {
            record.outcome = Outcome::injected(&error);
            injected(&error)
        }
        FaultDecision::Proceed => {
            let reply = respond(shared, route, req).await;
            record.outcome = Outcome::from_status(reply.status);
            reply
        }
    };
    let seq = shared.request_seq.fetch_add(1, Ordering::Relaxed);
    Ok(into_response(reply, seq))
}

/// The answer to an injected failure: GitHub's error shape, no rate-limit
/// headers (the request never reached the API), nothing charged.
fn injected(error: &InjectedError) -> Reply {
    let status = error.status().unwrap_or(500);
    let message = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Server Error");
    let mut reply = Reply::json(
        status,
        &json!({ "message": message, "documentation_url": "https://docs.github.com/rest" }),
    );
    if let Some(secs) = error.retry_after_secs() {
        reply.headers.push(("retry-after", secs.to_string()));
    }
    reply
}

async fn respond(shared: &Shared, route: Route, req: Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Reply::json(413, &json!({ "message": "Payload too large" }));
        }
    };
    let credentials = bearer(&parts.headers);
    let now = Instant::now();

    match route {
        Route::Unknown => Reply::error(ApiError::not_found("https://docs.github.com/rest")),
        Route::AccessTokens { installation } => {
            if parts.method != Method::POST {
                return Reply::error(ApiError::not_found(
                    "https://docs.github.com/rest/apps/apps",
                ));
            }
            if !credentials.as_deref().is_some_and(looks_like_jwt) {
                return Reply::error(ApiError::jwt_undecodable());
            }
            let (token, expires_at) = shared.store().mint_installation_token(installation, now);
            Reply::json(
                201,
                &json!({
                    "token": token,
                    "expires_at": expires_at.round(jiff::Unit::Second).unwrap_or(expires_at).to_string(),
                    "permissions": { "issues": "write", "pull_requests": "write", "metadata": "read" },
                    "repository_selection": "all",
                }),
            )
        }
        Route::HookDeliveries | Route::HookDelivery { .. } | Route::HookAttempts { .. } => {
            // The App's own endpoints take its JWT and nothing else.
            let Some(jwt) = credentials.filter(|c| looks_like_jwt(c)) else {
                return Reply::error(ApiError::jwt_undecodable());
            };
            let mut store = shared.store();
            app_call(&mut store, &shared.api_base, &jwt, &route, &parts)
        }
        route => {
            let Some(token) = credentials else {
                return Reply::error(ApiError::bad_credentials());
            };
            let mut store = shared.store();
            api_call(
                &mut store,
                &shared.api_base,
                &token,
                &route,
                &parts,
                &body,
                now,
            )
        }
    }
}

/// An authenticated, rate-limited REST call.
fn api_call(
    store: &mut Store,
    api_base: &str,
    token: &str,
    route: &Route,
    parts: &http::request::Parts,
    body: &[u8],
    now: Instant,
) -> Reply {
    if let Err(err) = store.authenticate(token, now) {
        return Reply::error(err);
    }
    let method = &parts.method;
    let mutation = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if mutation && let Err(err) = store.admit_mutation(token, now) {
        return Reply::error(err);
    }
    if let Err(err) = store.check_budget(token, now) {
        return Reply::error(err);
    }

    let query = parts.uri.query().unwrap_or("");
    let result = execute(
        store,
        api_base,
        route,
        method,
        parts.uri.path(),
        query,
        body,
    );
    let (status, value, mut headers) = match result {
        Ok(ok) => ok,
        Err(err) => {
            let rate = store
                .spend(token, now)
                .map(|s| s.headers())
                .unwrap_or_default();
            return Reply::error(err).with_headers(rate);
        }
    };

    let Some(value) = value else {
        let rate = store
            .spend(token, now)
            .map(|s| s.headers())
            .unwrap_or_default();
        return Reply {
            status,
            headers: rate,
            body: None,
        };
    };
    let body = Bytes::from(value.to_string());
    if tag(method, status, token, &parts.headers, &body, &mut headers) {
        // A 304 is free: report the budget without spending it.
        let rate = store
            .rate_limit(token, now)
            .map(|s| s.headers())
            .unwrap_or_default();
        headers.extend(rate);
        return Reply {
            status: 304,
            headers,
            body: None,
        };
    }
    let rate = store
        .spend(token, now)
        .map(|s| s.headers())
        .unwrap_or_default();
    headers.extend(rate);
    Reply {
        status,
        headers,
        body: Some(body),
    }
}

/// Adds the ETag of a 200 GET's `body` to `headers`; `true` when the
/// request's `If-None-Match` matches it (the answer is then a 304).
fn tag(
    method: &Method,
    status: u16,
    token: &str,
    request: &HeaderMap,
    body: &[u8],
    headers: &mut Vec<(&'static str, String)>,
) -> bool {
    if *method != Method::GET || status != 200 {
        return false;
    }
    let etag = etag(token, body);
    let matched = if_none_match(request, &etag);
    headers.push(("etag", etag));
    matched
}

/// A call to the App's webhook endpoints, authenticated with its JWT: not
/// rate-limited and without `x-ratelimit-*` headers, as GitHub answers JWT
/// calls.
fn app_call(
    store: &mut Store,
    api_base: &str,
    jwt: &str,
    route: &Route,
    parts: &http::request::Parts,
) -> Reply {
    let not_found = || ApiError::not_found(DOCS_APP_WEBHOOKS);
    let log = &mut store.hooks;
    let result = match (route, &parts.method) {
        (Route::HookDeliveries, &Method::GET) => log
            .list(api_base, parts.uri.query().unwrap_or(""))
            .map(|(page, link)| {
                let headers = link.into_iter().map(|l| ("link", l)).collect();
                (200, Value::Array(page), headers)
            }),
        (Route::HookDelivery { id }, &Method::GET) => log
            .detail(*id)
            .map(|detail| (200, detail, Vec::new()))
            .ok_or_else(not_found),
        (Route::HookAttempts { id }, &Method::POST) => log
            .redeliver(*id)
            .map(|_| (202, json!({}), Vec::new()))
            .map_err(|_| not_found()),
        _ => Err(not_found()),
    };
    match result {
        Ok((status, value, mut headers)) => {
            let body = Bytes::from(value.to_string());
            if tag(
                &parts.method,
                status,
                jwt,
                &parts.headers,
                &body,
                &mut headers,
            ) {
                return Reply {
                    status: 304,
                    headers,
                    body: None,
                };
            }
            Reply {
                status,
                headers,
                body: Some(body),
            }
        }
        Err(err) => Reply::error(err),
    }
}

type Executed = (u16, Option<Value>, Vec<(&'static str, String)>);

/// The endpoint semantics: status, JSON body (none for 204) and extra headers.
fn execute(
    store: &mut Store,
    api_base: &str,
    route: &Route,
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
) -> Result<Executed, ApiError> {
    let not_found = || ApiError::not_found("https://docs.github.com/rest");
    match (route, method) {
        (
            Route::IssueLabels {
                owner,
                repo,
                number,
            },
            m,
        ) => match *m {
            Method::GET => {
                let all = store.issue_labels(owner, repo, *number);
                Ok(page_of(all, api_base, path, query))
            }
            Method::POST => {
                let names = label_names(body, false)?;
                let labels = store.add_labels(owner, repo, *number, &names)?;
                Ok((200, Some(Value::Array(labels)), Vec::new()))
            }
            Method::PUT => {
                let names = label_names(body, true)?;
                let labels = store.replace_labels(owner, repo, *number, &names)?;
                Ok((200, Some(Value::Array(labels)), Vec::new()))
            }
            Method::DELETE => {
                store.remove_all_labels(owner, repo, *number);
                Ok((204, None, Vec::new()))
            }
            _ => Err(not_found()),
        },
        (
            Route::IssueLabel {
                owner,
                repo,
                number,
                name,
            },
            &Method::DELETE,
        ) => {
            let labels = store.remove_label(owner, repo, *number, name)?;
            Ok((200, Some(Value::Array(labels)), Vec::new()))
        }
        (
            Route::Pull {
                owner,
                repo,
                number,
            },
            &Method::GET,
        ) => Ok((200, Some(store.pull(owner, repo, *number)?), Vec::new())),
        (Route::Pulls { owner, repo }, &Method::GET) => {
            let filter = PullFilter::parse(query)?;
            let all = store.list_pulls(owner, repo, &filter);
            Ok(page_of(all, api_base, path, query))
        }
        (Route::CommitPulls { owner, repo, sha }, &Method::GET) => {
            let all = store.commit_pulls(owner, repo, sha);
            Ok(page_of(all, api_base, path, query))
        }
        _ => Err(not_found()),
    }
}

/// Label names from a POST/PUT body, in any of the forms GitHub accepts:
/// `{"labels": ["a"]}`, `["a"]`, or label objects `{"name": "a"}` in either.
/// An empty body is an empty list for PUT (remove all) and an error for POST.
fn label_names(body: &[u8], empty_is_none: bool) -> Result<Vec<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if empty_is_none {
            Ok(Vec::new())
        } else {
            Err(ApiError::invalid_request("No labels were given."))
        };
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| ApiError::bad_json())?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(mut map) => match map.remove("labels") {
            Some(Value::Array(items)) => items,
            _ => return Err(ApiError::invalid_request("\"labels\" must be an array.")),
        },
        _ => return Err(ApiError::invalid_request("Expected an object or an array.")),
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::String(name) => Ok(name),
            Value::Object(mut label) => match label.remove("name") {
                Some(Value::String(name)) => Ok(name),
                _ => Err(ApiError::invalid_request(
                    "Each label object needs a \"name\".",
                )),
            },
            _ => Err(ApiError::invalid_request("Each label must be a string.")),
        })
        .collect()
}

/// A 200 answer with one page of `items` and its `Link` header.
fn page_of(items: Vec<Value>, api_base: &str, path: &str, query: &str) -> Executed {
    let (page, link) = paginate(items, api_base, path, query);
    (
        200,
        Some(Value::Array(page)),
        link.into_iter().map(|l| ("link", l)).collect(),
    )
}

/// One page of `items` per the `per_page`/`page` query parameters, and the
/// `Link` header GitHub sends when there is more than one page.
fn paginate(
    items: Vec<Value>,
    api_base: &str,
    path: &str,
    query: &str,
) -> (Vec<Value>, Option<String>) {
    let mut per_page = DEFAULT_PER_PAGE;
    let mut page = 1usize;
    let mut other: Vec<(String, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "per_page" => per_page = v.parse().unwrap_or(DEFAULT_PER_PAGE).clamp(1, MAX_PER_PAGE),
            "page" => page = v.parse().unwrap_or(1).max(1),
            _ => other.push((k.into_owned(), v.into_owned())),
        }
    }
    let last = items.len().div_ceil(per_page).max(1);
    let start = (page - 1).saturating_mul(per_page);
    let slice = items.into_iter().skip(start).take(per_page).collect();
    if last == 1 {
        return (slice, None);
    }
    let href = |p: usize| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &other {
            q.append_pair(k, v);
        }
        q.append_pair("per_page", &per_page.to_string());
        q.append_pair("page", &p.to_string());
        format!("<{api_base}{path}?{}>", q.finish())
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(format!("{}; rel=\"prev\"", href((page - 1).min(last))));
    }
    if page < last {
        links.push(format!("{}; rel=\"next\"", href(page + 1)));
        links.push(format!("{}; rel=\"last\"", href(last)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"first\"", href(1)));
    }
    (slice, Some(links.join(", ")))
}

/// The credential of an `Authorization: Bearer …` or `token …` header.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        .then(|| credential.trim().to_owned())
        .filter(|c| !c.is_empty())
}

/// Whether `token` has a JWT's shape: three base64url parts whose header
/// names an `alg` and whose claims name an `iss` (the App id). The
/// signature is not verified: the fake has no App private keys.
fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return false;
    };
    let json_with = |part: &str, field: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .is_some_and(|v| v.get(field).is_some())
    };
    !signature.is_empty() && json_with(header, "alg") && json_with(claims, "iss")
}

/// A strong ETag over the token and the body: like GitHub's, an ETag from
/// one token does not match for another.
fn etag(token: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(token.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    format!("\"{}\"", hex::encode(hasher.finalize()))
}

/// Whether an `If-None-Match` header matches `etag` (weak comparison, as
/// RFC 9110 prescribes for If-None-Match).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == etag)
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

fn into_response(reply: Reply, seq: u64) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(reply.body.clone().unwrap_or_default()));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    if reply.body.is_some() {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
    }
    headers.insert(
        "x-github-api-version-selected",
        HeaderValue::from_static("2022-11-28"),
    );
    headers.insert(
        "x-github-media-type",
        HeaderValue::from_static("github.v3; format=json"),
    );
    if let Ok(id) = HeaderValue::from_str(&format!("FAKE:{seq:08X}")) {
        headers.insert("x-github-request-id", id);
    }
    headers.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Authorization, Cookie, X-GitHub-OTP"),
    );
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.append(name, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_decode_label_names() {
        assert_eq!(
            Route::parse("/repos/o/r/issues/3/labels/needs%20review%3A%20%F0%9F%9A%80"),
            Route::IssueLabel {
                owner: "o".into(),
                repo: "r".into(),
                number: 3,
                name: "needs review: 🚀".into()
            }
        );
        assert_eq!(Route::parse("/repos/o/r/issues/x/labels"), Route::Unknown);
        assert_eq!(
            Route::parse("/app/installations/9/access_tokens"),
            Route::AccessTokens { installation: 9 }
        );
        assert_eq!(Route::parse("/app/hook/deliveries"), Route::HookDeliveries);
        assert_eq!(
            Route::parse("/app/hook/deliveries/12/attempts"),
            Route::HookAttempts { id: 12 }
        );
        assert_eq!(
            Route::parse("/repos/o/r/pulls"),
            Route::Pulls {
                owner: "o".into(),
                repo: "r".into()
            }
        );
    }

    #[test]
    fn label_bodies_in_every_github_form() {
        assert_eq!(
            label_names(br#"{"labels":["a","b"]}"#, false).unwrap(),
            ["a", "b"]
        );
        assert_eq!(label_names(br#"["a"]"#, false).unwrap(), ["a"]);
        assert_eq!(
            label_names(br#"{"labels":[{"name":"a"}]}"#, false).unwrap(),
            ["a"]
        );
        assert_eq!(label_names(b"", true).unwrap(), Vec::<String>::new());
        assert_eq!(label_names(b"", false).unwrap_err().status, 422);
        assert_eq!(label_names(b"{", false).unwrap_err().status, 400);
    }

    #[test]
    fn pagination_links_like_github() {
        let items: Vec<Value> = (0..5).map(Value::from).collect();
        let (page, link) = paginate(items, "http://h", "/p", "per_page=2&page=2");
        assert_eq!(page, vec![Value::from(2), Value::from(3)]);
        let link = link.unwrap();
        assert!(
            link.contains("<http://h/p?per_page=2&page=3>; rel=\"next\""),
            "{link}"
        );
        assert!(
            link.contains("<http://h/p?per_page=2&page=3>; rel=\"last\""),
            "{link}"
        );
        assert!(
            link.contains("<http://h/p?per_page=2&page=1>; rel=\"prev\""),
            "{link}"
        );
    }

    #[test]
    fn etags_depend_on_the_token() {
        assert_ne!(etag("a", b"[]"), etag("b", b"[]"));
        let mut headers = HeaderMap::new();
        let tag = etag("a", b"[]");
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("W/{tag}")).unwrap(),
        );
        assert!(if_none_match(&headers, &tag));
    }

    #[test]
    fn jwt_shape_is_required_for_app_calls() {
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let jwt = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256"}"#),
            enc(r#"{"iss":"1"}"#)
        );
        assert!(looks_like_jwt(&jwt));
        assert!(!looks_like_jwt("ghp_abc"));
        assert!(!looks_like_jwt(&format!(
            "{}.{}.sig",
            enc("{}"),
            enc(r#"{"iss":"1"}"#)
        )));
    }
}
