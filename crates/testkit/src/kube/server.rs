//! The HTTP side of FakeKube: routing, request parsing, fault injection,
//! call counting, and rendering of answers.
//!
//! Built on hyper directly (not axum's `serve`) because an injected drop must
//! close the TCP connection without writing a response: the service returns
//! an error and hyper closes the connection. The rule it keeps: **every
//! request is judged by the faults first and counted and logged exactly
//! once**, with the (group, verb, resource) the API server's audit log
//! would show.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::clock::Clock;
use super::discovery;
use super::events;
use super::managed_fields;
use super::patch::PatchKind;
use super::request_log::{RequestLog, RequestRecord};
use super::resource::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::status::{self, ApiError};
use super::store::{
    self, DeleteOptions, Deleted, Propagation, ReadAt, Store, View, WatchFrom, WatchRequest,
    WatchStart, WriteOptions, returns_deleted_object,
};
use super::watch::{self, WatchStream};
use crate::calls::{Calls, Outcome};
use crate::faults::{FaultDecision, Faults, InjectedError, RequestMeta};

/// The response body type.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// Knobs of the HTTP side.
#[derive(Debug, Clone)]
pub(crate) struct ServerOptions {
    pub max_body: usize,
    pub bookmark_interval: Duration,
    pub default_watch_timeout: Duration,
    pub max_watch_timeout: Duration,
}

/// State shared by every connection.
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub faults: Faults,
    pub calls: Calls,
    pub log: RequestLog,
    pub clock: Clock,
    pub options: ServerOptions,
    pub address: String,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// Cancelled (and replaced) to drop every open connection at once.
    pub connections: Mutex<CancellationToken>,
    /// Cancelled (and replaced) to cut every open watch stream at once.
    pub watch_cuts: Mutex<CancellationToken>,
}

impl Shared {
    pub fn store(&self) -> MutexGuard<'_, Store> {
        // Store methods never leave it half-written on panic (each write is
        // one insert after all checks), so a poisoned lock is still usable.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A token for a new connection, cancelled by [`Shared::drop_connections`].
    pub fn connection_token(&self) -> CancellationToken {
        lock(&self.connections).child_token()
    }

    /// Closes every open connection without an answer (requests in flight
    /// lose theirs, watches end mid-stream); new connections are served.
    pub fn drop_connections(&self) {
        std::mem::replace(&mut *lock(&self.connections), CancellationToken::new()).cancel();
    }

    /// The token the watch streams opened from now on stop at.
    pub fn watch_cut_token(&self) -> CancellationToken {
        lock(&self.watch_cuts).clone()
    }

    /// Cuts every open watch stream: each one's connection is closed
    /// mid-stream, as a broken network or a restarting server does.
    pub fn cut_watches(&self) {
        std::mem::replace(&mut *lock(&self.watch_cuts), CancellationToken::new()).cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are tokens, replaced whole.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Accepts connections until shutdown; each connection is served on its own
/// task, tracked so shutdown can wait for them.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // instead of spinning.
                tracing::warn!(error = %e, "fake-kube accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tasks = shared.tasks.clone();
        let connection = shared.connection_token();
        tasks.spawn(async move {
            let service = hyper::service::service_fn({
                let shared = shared.clone();
                let connection = connection.clone();
                move |req| handle(shared.clone(), connection.clone(), req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                // Dropping the connection closes the socket, which ends
                // every watch streaming on it.
                () = shared.shutdown.cancelled() => {}
                () = connection.cancelled() => {}
                result = conn => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "fake-kube connection ended");
                    }
                }
            }
        });
    }
}

/// The error that makes hyper close a connection without a response.
#[derive(Debug)]
pub(crate) struct InjectedDrop;

impl fmt::Display for InjectedDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for InjectedDrop {}

/// The request header a client sets to correlate its requests (the API
/// server's own; it answers the value, or one it made up, as `Audit-Id`).
pub(crate) const AUDIT_ID: &str = "audit-id";

async fn handle(
    shared: Arc<Shared>,
    connection: CancellationToken,
    req: Request<Incoming>,
) -> Result<Response<Body>, InjectedDrop> {
    let query = parse_query(req.uri().query());
    let route = Route::parse(req.method(), req.uri().path(), &query);
    let call = route.call_name();
    let meta =
        RequestMeta::new(call.verb.clone(), call.resource.clone()).in_group(call.group.clone());
    let correlation = req
        .headers()
        .get(AUDIT_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let audit_id = correlation
        .clone()
        .and_then(|id| HeaderValue::from_str(&id).ok())
        .or_else(|| HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).ok());
    // Counts and logs the call as Dropped if the client goes away (this
    // future is dropped) before an answer, for example during a partition.
    let mut record = RecordOnce {
        shared: &shared,
        record: Some(RequestRecord {
            seq: 0,
            at: shared.clock.now(),
            verb: call.verb.clone(),
            group: call.group.clone(),
            version: call.version,
            resource: call.resource,
            namespace: call.namespace,
            name: call.name,
            field_manager: query.get("fieldManager").filter(|m| !m.is_empty()).cloned(),
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            correlation,
            outcome: Outcome::Dropped,
            applied: false,
        }),
    };
    let mut response = match shared.faults.apply(&meta).await {
        FaultDecision::Proceed => {
            let (response, outcome) = match route {
                Route::Resource(r) => {
                    serve_resource(&shared, &connection, r, &call.verb, &query, req).await
                }
                other => {
                    let response = serve_other(&shared, &other, &req);
                    let outcome = Outcome::from_status(response.status().as_u16());
                    (response, outcome)
                }
            };
            if outcome != Outcome::Ok {
                record.set(outcome, false);
                response
            } else {
                // Served: its effect has taken place. A fault may still
                // keep the answer from the client.
                match shared.faults.after_commit(&meta) {
                    FaultDecision::Proceed => {
                        record.set(outcome, true);
                        response
                    }
                    FaultDecision::Fail(InjectedError::Drop) => {
                        record.set(Outcome::Dropped, true);
                        return Err(InjectedDrop);
                    }
                    FaultDecision::Fail(err) => {
                        let code = err.status().unwrap_or(500);
                        record.set(Outcome::Injected(code), true);
                        error_response(&ApiError::injected(code, err.retry_after_secs()))
                    }
                }
            }
        }
        FaultDecision::Fail(InjectedError::Drop) => return Err(InjectedDrop),
        FaultDecision::Fail(err) => {
            let code = err.status().unwrap_or(500);
            record.set(Outcome::Injected(code), false);
            error_response(&ApiError::injected(code, err.retry_after_secs()))
        }
    };
    if let Some(id) = audit_id {
        response.headers_mut().insert(AUDIT_ID, id);
    }
    Ok(response)
}

/// Counts and logs one call, with its final outcome, when the request ends
/// however it ends.
struct RecordOnce<'a> {
    shared: &'a Shared,
    record: Option<RequestRecord>,
}

impl RecordOnce<'_> {
    fn set(&mut self, outcome: Outcome, applied: bool) {
        if let Some(r) = self.record.as_mut() {
            r.outcome = outcome;
            r.applied = applied;
        }
    }
}

impl Drop for RecordOnce<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            self.shared
                .calls
                .record_in_group(&r.group, &r.verb, &r.resource, r.outcome.clone());
            self.shared.log.push(r);
        }
    }
}

/// The names a request is judged, counted and logged under.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CallName {
    verb: String,
    group: String,
    version: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Health,
    Version,
    CoreVersions,
    Groups,
    Group(String),
    GroupVersion { group: String, version: String },
    OpenApi(String),
    Resource(ResourceRoute),
    NotFound,
    MethodNotAllowed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ResourceRoute {
    method: Method,
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
    watch: bool,
}

impl Route {
    fn parse(method: &Method, path: &str, query: &BTreeMap<String, String>) -> Self {
        let segs: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
            .collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let discovery = |route: Route| {
            if method == Method::GET || method == Method::HEAD {
                route
            } else {
                Route::MethodNotAllowed(method.to_string())
            }
        };
        let (group, version, rest) = match segs.as_slice() {
            ["healthz" | "readyz" | "livez", ..] => return discovery(Route::Health),
            ["version"] => return discovery(Route::Version),
            ["openapi", ..] => return discovery(Route::OpenApi(path.to_owned())),
            ["api"] => return discovery(Route::CoreVersions),
            ["api", v] => {
                return discovery(Route::GroupVersion {
                    group: String::new(),
                    version: (*v).to_owned(),
                });
            }
            ["apis"] => return discovery(Route::Groups),
            ["apis", g] => return discovery(Route::Group((*g).to_owned())),
            ["apis", g, v] => {
                return discovery(Route::GroupVersion {
                    group: (*g).to_owned(),
                    version: (*v).to_owned(),
                });
            }
            ["api", v, rest @ ..] => (String::new(), (*v).to_owned(), rest),
            ["apis", g, v, rest @ ..] => ((*g).to_owned(), (*v).to_owned(), rest),
            _ => return Route::NotFound,
        };
        let (legacy_watch, rest) = match rest {
            ["watch", rest @ ..] => (true, rest),
            _ => (false, rest),
        };
        let (namespace, plural, name, subresource) = match rest {
            // `namespaces/<name>[/status]` is the Namespace object itself.
            ["namespaces", ns] if group.is_empty() => (None, "namespaces", Some(*ns), None),
            ["namespaces", ns, sub @ ("status" | "finalize")] if group.is_empty() => {
                (None, "namespaces", Some(*ns), Some(*sub))
            }
            ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
            ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
            ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
            [plural] => (None, *plural, None, None),
            [plural, name] => (None, *plural, Some(*name), None),
            [plural, name, sub] => (None, *plural, Some(*name), Some(*sub)),
            _ => return Route::NotFound,
        };
        let watch = legacy_watch || query.get("watch").is_some_and(|w| w == "true" || w == "1");
        Route::Resource(ResourceRoute {
            method: method.clone(),
            group,
            version,
            plural: plural.to_owned(),
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            subresource: subresource.map(str::to_owned),
            watch,
        })
    }

    /// The names this request is judged, counted and logged under.
    fn call_name(&self) -> CallName {
        let (verb, resource) = match self {
            Route::Health => ("get", "healthz".to_owned()),
            Route::Version => ("get", "version".to_owned()),
            Route::OpenApi(_) => ("get", "openapi".to_owned()),
            Route::CoreVersions | Route::Groups | Route::Group(_) | Route::GroupVersion { .. } => {
                ("get", "discovery".to_owned())
            }
            Route::NotFound | Route::MethodNotAllowed(_) => ("unknown", "unknown".to_owned()),
            Route::Resource(r) => {
                let resource = match &r.subresource {
                    Some(sub) => format!("{}/{sub}", r.plural),
                    None => r.plural.clone(),
                };
                let verb = match (&r.method, r.name.is_some()) {
                    (&Method::GET, _) if r.watch => "watch",
                    (&Method::GET, true) => "get",
                    (&Method::GET, false) => "list",
                    (&Method::POST, _) => "create",
                    (&Method::PUT, _) => "update",
                    (&Method::PATCH, _) => "patch",
                    (&Method::DELETE, true) => "delete",
                    (&Method::DELETE, false) => "deletecollection",
                    _ => "unknown",
                };
                (verb, resource)
            }
        };
        let (group, version, namespace, name) = match self {
            Route::Resource(r) => (
                r.group.clone(),
                r.version.clone(),
                r.namespace.clone(),
                r.name.clone(),
            ),
            Route::GroupVersion { group, version } => (group.clone(), version.clone(), None, None),
            Route::Group(group) => (group.clone(), String::new(), None, None),
            _ => (String::new(), String::new(), None, None),
        };
        CallName {
            verb: verb.to_owned(),
            group,
            version,
            resource,
            namespace,
            name,
        }
    }
}

fn serve_other(shared: &Shared, route: &Route, req: &Request<Incoming>) -> Response<Body> {
    let accept = header_str(req, header::ACCEPT);
    let types = || shared.store().types().to_vec();
    match route {
        Route::Health => text_response(StatusCode::OK, "ok"),
        Route::Version => json_response(StatusCode::OK, &discovery::version()),
        Route::OpenApi(path) if path.trim_end_matches('/') == "/openapi/v2" => {
            if accept.contains("protobuf") {
                let mut response = Response::new(Full::new(Bytes::new()).boxed());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(discovery::OPENAPI_V2_PROTOBUF),
                );
                response
            } else {
                json_response(StatusCode::OK, &discovery::openapi_v2())
            }
        }
        Route::OpenApi(path) => match discovery::openapi_v3(&types(), path) {
            Some(doc) => json_response(StatusCode::OK, &doc),
            None => error_response(&ApiError::no_route()),
        },
        Route::CoreVersions if discovery::wants_aggregated(&accept) => {
            aggregated_response(&discovery::aggregated(&types(), true))
        }
        Route::CoreVersions => {
            json_response(StatusCode::OK, &discovery::core_versions(&shared.address))
        }
        Route::Groups if discovery::wants_aggregated(&accept) => {
            aggregated_response(&discovery::aggregated(&types(), false))
        }
        Route::Groups => json_response(StatusCode::OK, &discovery::group_list(&types())),
        Route::Group(g) => match discovery::api_group(&types(), g) {
            Some(doc) => json_response(StatusCode::OK, &doc),
            None => error_response(&ApiError::no_route()),
        },
        Route::GroupVersion { group, version } => {
            match discovery::resource_list(&types(), group, version) {
                Some(doc) => json_response(StatusCode::OK, &doc),
                None => error_response(&ApiError::no_route()),
            }
        }
        Route::MethodNotAllowed(m) => error_response(&ApiError::method_not_allowed(m)),
        Route::NotFound | Route::Resource(_) => error_response(&ApiError::no_route()),
    }
}

async fn serve_resource(
    shared: &Arc<Shared>,
    connection: &CancellationToken,
    r: ResourceRoute,
    verb: &str,
    query: &BTreeMap<String, String>,
    req: Request<Incoming>,
) -> (Response<Body>, Outcome) {
    match serve_resource_inner(shared, connection, r, verb, query, req).await {
        Ok((response, outcome)) => (response, outcome),
        Err(e) => {
            let outcome = Outcome::Error(e.code);
            (error_response(&e), outcome)
        }
    }
}

async fn serve_resource_inner(
    shared: &Arc<Shared>,
    connection: &CancellationToken,
    r: ResourceRoute,
    verb: &str,
    query: &BTreeMap<String, String>,
    req: Request<Incoming>,
) -> Result<(Response<Body>, Outcome), ApiError> {
    let requested = shared
        .store()
        .resolve(&r.group, &r.version, &r.plural)
        .ok_or_else(ApiError::no_route)?;
    // events.k8s.io Events are core Events underneath.
    let stored = if events::is_events_v1(&requested) {
        shared
            .store()
            .resolve("", "v1", "events")
            .ok_or_else(ApiError::no_route)?
    } else {
        requested.clone()
    };
    let target = Target { requested, stored };
    serve_target(shared, connection, &target, r, verb, query, req)
        .await
        .map_err(|e| {
            if target.converts() {
                e.requalified(&target.stored, &target.requested)
            } else {
                e
            }
        })
}

/// The type a request addressed and the type its objects are stored as
/// (they differ only for events.k8s.io Events).
struct Target {
    requested: ResourceType,
    stored: ResourceType,
}

impl Target {
    fn converts(&self) -> bool {
        self.requested != self.stored
    }

    /// A request body in the stored form.
    fn stored_body(&self, body: Value) -> Value {
        if self.converts() {
            events::to_core(body)
        } else {
            body
        }
    }

    /// The request's field selector, in the stored form's field names.
    fn fields(&self, query: &BTreeMap<String, String>) -> Result<FieldSelector, ApiError> {
        let fields = field_selector(query, &self.requested)?;
        Ok(if self.converts() {
            fields.renamed(events::core_field)
        } else {
            fields
        })
    }

    fn view(&self) -> Option<View> {
        self.converts().then_some(View {
            to_view: events::to_events_v1,
            to_stored: events::to_core,
        })
    }
}

async fn serve_target(
    shared: &Arc<Shared>,
    connection: &CancellationToken,
    target: &Target,
    r: ResourceRoute,
    verb: &str,
    query: &BTreeMap<String, String>,
    req: Request<Incoming>,
) -> Result<(Response<Body>, Outcome), ApiError> {
    let t = &target.stored;
    // A namespaced object is only addressed inside a namespace, a
    // cluster-scoped one never is.
    if (t.namespaced && r.name.is_some() && r.namespace.is_none())
        || (!t.namespaced && r.namespace.is_some())
    {
        return Err(ApiError::no_route());
    }
    let status_only = match r.subresource.as_deref() {
        None => false,
        Some("status") if t.status_subresource => true,
        Some(_) => return Err(ApiError::no_route()),
    };
    let render = Render::new(
        &target.requested,
        &r.version,
        &header_str(&req, header::ACCEPT),
    );
    let namespace = r.namespace.clone().unwrap_or_default();
    let dry_run = query.get("dryRun").is_some_and(|d| d == "All");
    let content_type = header_str(&req, header::CONTENT_TYPE);
    let write_options =
        |options_kind: &str| write_options(query, &req, &r.version, dry_run, options_kind);
    let ok = |code: StatusCode, body: Value| {
        let outcome = Outcome::from_status(code.as_u16());
        Ok((json_response(code, &body), outcome))
    };

    match verb {
        "get" => {
            let name = r.name.as_deref().unwrap_or_default();
            let at = match query.get("resourceVersion").map(String::as_str) {
                None | Some("") => ReadAt::Latest,
                Some("0") => ReadAt::Any,
                Some(rv) => ReadAt::NotOlderThan(parse_resource_version(rv)?),
            };
            let obj = shared.store().get_at(t, &namespace, name, at)?;
            ok(StatusCode::OK, render.object(&obj))
        }
        "list" => {
            let labels = label_selector(query)?;
            let fields = target.fields(query)?;
            let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok());
            let at = list_read_at(query)?;
            let page = shared.store().list(
                t,
                r.namespace.as_deref(),
                &labels,
                &fields,
                limit,
                query.get("continue").map(String::as_str),
                at,
            )?;
            ok(
                StatusCode::OK,
                render.list(
                    &page.items,
                    page.resource_version,
                    page.continue_token,
                    page.remaining,
                ),
            )
        }
        "watch" => {
            let mut fields = target.fields(query)?;
            if let Some(name) = &r.name {
                fields = FieldSelector::name(name);
            }
            let send_initial_events = watch_initial_events(query)?;
            let request = WatchRequest {
                namespace: r.namespace.clone(),
                labels: label_selector(query)?,
                fields,
                from: match query.get("resourceVersion").map(String::as_str) {
                    None | Some("") => WatchFrom::Latest,
                    Some("0") => WatchFrom::Any,
                    Some(rv) => WatchFrom::Version(parse_resource_version(rv)?),
                },
                send_initial_events,
            };
            let bookmarks = query
                .get("allowWatchBookmarks")
                .is_some_and(|b| b == "true");
            let send_initial = send_initial_events == Some(true);
            let timeout = query
                .get("timeoutSeconds")
                .and_then(|s| s.parse::<u64>().ok())
                .map_or(shared.options.default_watch_timeout, Duration::from_secs)
                .min(shared.options.max_watch_timeout);
            let start = shared.store().watch(t, request);
            match start {
                WatchStart::Expired(err) => {
                    // As the API server does: a 200 whose only event is an
                    // ERROR carrying the 410 Status.
                    let response = stream_response(Full::new(watch::error_event(&err)).boxed());
                    Ok((response, Outcome::Error(err.code)))
                }
                WatchStart::Started {
                    initial,
                    initial_rv,
                    live,
                    id,
                } => {
                    let stream = WatchStream {
                        shared: shared.clone(),
                        connection: connection.clone(),
                        cut: shared.watch_cut_token(),
                        render,
                        id,
                        initial,
                        initial_end: (send_initial && bookmarks).then_some(initial_rv),
                        live,
                        bookmarks,
                        timeout,
                    };
                    Ok((stream_response(stream.into_body().boxed()), Outcome::Ok))
                }
            }
        }
        "create" => {
            if r.name.is_some() {
                return Err(ApiError::method_not_allowed("POST"));
            }
            let opts = write_options("CreateOptions")?;
            let body = target.stored_body(read_json(req, shared.options.max_body).await?);
            let obj = shared.store().create(t, &namespace, body, &opts)?;
            ok(StatusCode::CREATED, render.object(&obj))
        }
        "update" => {
            let name = r.name.clone().unwrap_or_default();
            let opts = write_options("UpdateOptions")?;
            let body = target.stored_body(read_json(req, shared.options.max_body).await?);
            let obj = shared
                .store()
                .update(t, &namespace, &name, body, status_only, &opts)?;
            ok(StatusCode::OK, render.object(&obj))
        }
        "patch" => {
            let name = r.name.clone().unwrap_or_default();
            let kind = PatchKind::from_content_type(&content_type)
                .filter(|k| *k != PatchKind::Strategic || !t.custom)
                .ok_or_else(|| ApiError::unsupported_media_type(PatchKind::accepted(t.custom)))?;
            let mut opts = write_options("PatchOptions")?;
            match query.get("force") {
                Some(_) if kind != PatchKind::Apply => {
                    return Err(ApiError::invalid_options(
                        "PatchOptions",
                        "force",
                        "Forbidden: may not be specified for non-apply patch",
                    ));
                }
                Some(force) => opts.force = force == "true" || force == "1",
                None => {}
            }
            if kind == PatchKind::Apply && query.get("fieldManager").is_none_or(String::is_empty) {
                // Not derived from the User-Agent: an applier must name itself.
                return Err(ApiError::invalid_options(
                    "PatchOptions",
                    "fieldManager",
                    "Required value: is required for apply patch",
                ));
            }
            let body = read_bytes(req, shared.options.max_body).await?;
            let (obj, created) = shared.store().patch(
                t,
                &namespace,
                &name,
                kind,
                &body,
                status_only,
                &opts,
                target.view(),
            )?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            ok(code, render.object(&obj))
        }
        "delete" => {
            let name = r.name.clone().unwrap_or_default();
            let opts = delete_options(query, req, shared.options.max_body).await?;
            let deleted = shared.store().delete(t, &namespace, &name, &opts)?;
            match deleted {
                Deleted::Gone { last } if returns_deleted_object(t) => {
                    ok(StatusCode::OK, render.object(&last))
                }
                Deleted::Gone { last } => ok(
                    StatusCode::OK,
                    status::success(&target.requested, &name, &store::str_at(&last, "uid")),
                ),
                Deleted::Terminating(obj) => ok(StatusCode::OK, render.object(&obj)),
            }
        }
        "deletecollection" => {
            let labels = label_selector(query)?;
            let fields = target.fields(query)?;
            let opts = delete_options(query, req, shared.options.max_body).await?;
            let items = shared.store().delete_collection(
                t,
                r.namespace.as_deref(),
                &labels,
                &fields,
                &opts,
            )?;
            let rv = shared.store().resource_version();
            ok(StatusCode::OK, render.list(&items, rv, None, None))
        }
        _ => Err(ApiError::method_not_allowed(r.method.as_str())),
    }
}

/// How objects are written back for one request: in the version the client
/// asked for, whole or as `PartialObjectMetadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Render {
    api_version: String,
    kind: String,
    metadata_only: bool,
    /// Stored core Events served as events.k8s.io Events.
    events_v1: bool,
}

impl Render {
    /// How objects of `t` are written for a request of `version` that
    /// accepts `accept`.
    pub(crate) fn new(t: &ResourceType, version: &str, accept: &str) -> Self {
        Self {
            api_version: t.api_version(version),
            kind: t.kind.clone(),
            metadata_only: accept.contains("as=PartialObjectMetadata"),
            events_v1: events::is_events_v1(t),
        }
    }

    /// One object as the client expects it.
    pub fn object(&self, obj: &Value) -> Value {
        if self.events_v1 && !self.metadata_only {
            return events::to_events_v1(obj);
        }
        if self.metadata_only {
            return json!({
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadata",
                "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
            });
        }
        let mut out = obj.clone();
        if let Some(o) = out.as_object_mut() {
            o.insert("apiVersion".into(), json!(self.api_version));
        }
        out
    }

    /// `apiVersion` and `kind` of objects in this response.
    pub fn type_meta(&self) -> (String, String) {
        if self.metadata_only {
            (
                "meta.k8s.io/v1".to_owned(),
                "PartialObjectMetadata".to_owned(),
            )
        } else {
            (self.api_version.clone(), self.kind.clone())
        }
    }

    fn list(
        &self,
        items: &[Value],
        rv: u64,
        continue_token: Option<String>,
        remaining: Option<u64>,
    ) -> Value {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if let Some(token) = continue_token {
            metadata["continue"] = json!(token);
        }
        if let Some(n) = remaining {
            metadata["remainingItemCount"] = json!(n);
        }
        let (api_version, kind) = if self.metadata_only {
            (
                "meta.k8s.io/v1".to_owned(),
                "PartialObjectMetadataList".to_owned(),
            )
        } else {
            (self.api_version.clone(), format!("{}List", self.kind))
        };
        json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": metadata,
            "items": items.iter().map(|o| self.object(o)).collect::<Vec<_>>(),
        })
    }
}

/// A `resourceVersion` parameter as a number.
fn parse_resource_version(rv: &str) -> Result<u64, ApiError> {
    rv.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))
}

/// What a LIST reads (`resourceVersion`, `resourceVersionMatch`), checked
/// as the API server's `ValidateListOptions` does.
fn list_read_at(query: &BTreeMap<String, String>) -> Result<ReadAt, ApiError> {
    let rv = query.get("resourceVersion").map_or("", String::as_str);
    let matching = query.get("resourceVersionMatch").map_or("", String::as_str);
    let continues = query.get("continue").is_some_and(|c| !c.is_empty());
    let mut errors = Vec::new();
    if !matching.is_empty() {
        if rv.is_empty() {
            errors.push((
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
                    .to_owned(),
            ));
        }
        if continues {
            errors.push((
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden when continue is provided".to_owned(),
            ));
        }
        if matching != "Exact" && matching != "NotOlderThan" {
            errors.push((
                "resourceVersionMatch",
                format!(
                    "Unsupported value: \"{matching}\": supported values: \"Exact\", \"NotOlderThan\", \"\""
                ),
            ));
        }
        if matching == "Exact" && rv == "0" {
            errors.push((
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""
                    .to_owned(),
            ));
        }
    }
    if query.contains_key("sendInitialEvents") {
        errors.push((
            "sendInitialEvents",
            "Forbidden: sendInitialEvents is forbidden for list".to_owned(),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_list_options(&errors));
    }
    if continues && !rv.is_empty() && rv != "0" {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    Ok(match (rv, matching) {
        ("", _) => ReadAt::Latest,
        ("0", _) => ReadAt::Any,
        (rv, "Exact") => ReadAt::Exact(parse_resource_version(rv)?),
        (rv, _) => ReadAt::NotOlderThan(parse_resource_version(rv)?),
    })
}

/// A watch's `sendInitialEvents` (`None` when not given), checked as the
/// API server's `ValidateListOptions` does for watches.
fn watch_initial_events(query: &BTreeMap<String, String>) -> Result<Option<bool>, ApiError> {
    let send = query.get("sendInitialEvents").map(|s| s == "true");
    let matching = query.get("resourceVersionMatch").map_or("", String::as_str);
    let mut errors = Vec::new();
    if send.is_some() && matching != "NotOlderThan" {
        errors.push((
            "resourceVersionMatch",
            "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
                .to_owned(),
        ));
    }
    if !matching.is_empty() {
        if send.is_none() {
            errors.push((
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
                    .to_owned(),
            ));
        }
        if matching != "NotOlderThan" {
            errors.push((
                "resourceVersionMatch",
                format!("Unsupported value: \"{matching}\": supported values: \"NotOlderThan\""),
            ));
        }
        if query.get("continue").is_some_and(|c| !c.is_empty()) {
            errors.push((
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden when continue is provided".to_owned(),
            ));
        }
    }
    if errors.is_empty() {
        Ok(send)
    } else {
        Err(ApiError::invalid_list_options(&errors))
    }
}

fn label_selector(query: &BTreeMap<String, String>) -> Result<LabelSelector, ApiError> {
    LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))
}

fn field_selector(
    query: &BTreeMap<String, String>,
    t: &ResourceType,
) -> Result<FieldSelector, ApiError> {
    FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str), t)
        .map_err(ApiError::bad_request)
}

/// The options of a create, update or patch: `dryRun`, and the field
/// manager (`fieldManager`, validated as the API server does, else derived
/// from the User-Agent). `options_kind` names the options in errors.
fn write_options(
    query: &BTreeMap<String, String>,
    req: &Request<Incoming>,
    version: &str,
    dry_run: bool,
    options_kind: &str,
) -> Result<WriteOptions, ApiError> {
    let field_manager = match query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(name) => {
            if let Some(why) = managed_fields::invalid_manager(name) {
                return Err(ApiError::invalid_options(
                    options_kind,
                    "fieldManager",
                    &why,
                ));
            }
            name.clone()
        }
        None => managed_fields::manager_from_user_agent(&header_str(req, header::USER_AGENT)),
    };
    Ok(WriteOptions {
        dry_run,
        field_manager,
        force: false,
        version: version.to_owned(),
    })
}

async fn delete_options(
    query: &BTreeMap<String, String>,
    req: Request<Incoming>,
    max_body: usize,
) -> Result<DeleteOptions, ApiError> {
    let body = read_bytes(req, max_body).await?;
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let grace = body
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let dry_run = query.get("dryRun").is_some_and(|d| d == "All")
        || body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    let precondition = |field: &str| {
        body.get("preconditions")
            .and_then(|p| p.get(field))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let policy = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| query.get("propagationPolicy").cloned())
        .filter(|p| !p.is_empty());
    let propagation = match policy.as_deref() {
        None => None,
        Some(p) => Some(Propagation::parse(p).ok_or_else(|| {
            ApiError::invalid_options(
                "DeleteOptions",
                "propagationPolicy",
                &format!(
                    "Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                ),
            )
        })?),
    };
    let orphan_dependents = body
        .get("orphanDependents")
        .and_then(Value::as_bool)
        .or_else(|| query.get("orphanDependents").map(|o| o == "true"));
    if let (Some(_), Some(p)) = (orphan_dependents, policy.as_deref())
        && propagation.is_some()
    {
        return Err(ApiError::invalid_options(
            "DeleteOptions",
            "propagationPolicy",
            &format!(
                "Invalid value: \"{p}\": orphanDependents and deletionPropagation cannot be both set"
            ),
        ));
    }
    Ok(DeleteOptions {
        grace_period_seconds: grace,
        uid: precondition("uid"),
        resource_version: precondition("resourceVersion"),
        dry_run,
        propagation,
        orphan_dependents,
    })
}

async fn read_bytes(req: Request<Incoming>, max: usize) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(max)),
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

async fn read_json(req: Request<Incoming>, max: usize) -> Result<Value, ApiError> {
    let bytes = read_bytes(req, max).await?;
    serde_json::from_slice(&bytes)
        .or_else(|json_err| {
            // kubectl and hand-written requests may send YAML.
            serde_yaml::from_slice(&bytes).map_err(|_| json_err)
        })
        .map_err(|e| {
            ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
        })
}

fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

pub(crate) fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn aggregated_response(body: &Value) -> Response<Body> {
    let mut response = json_response(StatusCode::OK, body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(discovery::AGGREGATED_CONTENT_TYPE),
    );
    response
}

fn text_response(code: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn stream_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    response
}

pub(crate) fn error_response(err: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(code, &err.to_status());
    if let Some(secs) = err.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &Method, path: &str, query: &str) -> Route {
        Route::parse(method, path, &parse_query(Some(query)))
    }

    #[test]
    fn paths_map_to_verbs_and_resources() {
        let cases = [
            (
                Method::GET,
                "/api/v1/namespaces/ns/configmaps/cm",
                "",
                "get",
                "configmaps",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/ns/configmaps",
                "",
                "list",
                "configmaps",
            ),
            (
                Method::GET,
                "/api/v1/configmaps",
                "watch=true",
                "watch",
                "configmaps",
            ),
            (
                Method::GET,
                "/api/v1/watch/namespaces/ns/pods",
                "",
                "watch",
                "pods",
            ),
            (
                Method::POST,
                "/apis/coordination.k8s.io/v1/namespaces/ns/leases",
                "",
                "create",
                "leases",
            ),
            (
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l",
                "",
                "update",
                "leases",
            ),
            (
                Method::PATCH,
                "/apis/x.dev/v1/namespaces/ns/coderuns/r/status",
                "",
                "patch",
                "coderuns/status",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/ns/pods/p",
                "",
                "delete",
                "pods",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/ns/pods",
                "",
                "deletecollection",
                "pods",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/ns",
                "",
                "get",
                "namespaces",
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/ns/status",
                "",
                "update",
                "namespaces/status",
            ),
            (
                Method::GET,
                "/apis/coordination.k8s.io/v1",
                "",
                "get",
                "discovery",
            ),
        ];
        for (method, path, query, verb, resource) in cases {
            let call = route(&method, path, query).call_name();
            assert_eq!(
                (call.verb.as_str(), call.resource.as_str()),
                (verb, resource),
                "{path}"
            );
        }
        let call = route(
            &Method::PATCH,
            "/apis/x.dev/v1/namespaces/ns/coderuns/r/status",
            "",
        )
        .call_name();
        assert_eq!(
            (call.group.as_str(), call.version.as_str()),
            ("x.dev", "v1")
        );
        assert_eq!(
            (call.namespace.as_deref(), call.name.as_deref()),
            (Some("ns"), Some("r"))
        );
    }

    #[test]
    fn namespace_object_and_namespaced_collection_are_told_apart() {
        let Route::Resource(r) = route(&Method::GET, "/api/v1/namespaces/team-a", "") else {
            panic!("not a resource route");
        };
        assert_eq!(
            (r.plural.as_str(), r.name.as_deref()),
            ("namespaces", Some("team-a"))
        );
        let Route::Resource(r) = route(&Method::GET, "/api/v1/namespaces/team-a/pods", "") else {
            panic!("not a resource route");
        };
        assert_eq!(
            (r.plural.as_str(), r.namespace.as_deref()),
            ("pods", Some("team-a"))
        );
    }
}
