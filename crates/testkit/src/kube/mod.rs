//! A fake Kubernetes API server over real HTTP, so tests exercise the real
//! `kube::Client` code path: URL building, serialization, `Status` errors,
//! watch streaming, retries.
//!
//! The one rule: **where the fake answers, it answers as the API server
//! does** (status code, `Status` reason and message, resourceVersion
//! semantics); what it does not reproduce is listed in the crate README,
//! never approximated silently.
//!
//! # What it serves
//!
//! - Built-in kinds: core/v1 `ConfigMap`, `Pod`, `Event`, `Namespace`;
//!   coordination.k8s.io/v1 `Lease`; events.k8s.io/v1 `Event`; apiextensions.k8s.io/v1
//!   `CustomResourceDefinition`. More with [`FakeKube::register_crd`] (from
//!   `CustomResourceExt::crd()`), by POSTing a CRD, or
//!   [`FakeKube::register_resource`].
//! - Verbs: `get`, `list` (label selectors with every operator, field
//!   selectors on `metadata.name`/`metadata.namespace` and declared fields,
//!   `limit`/`continue` with every page cut from the first page's snapshot,
//!   expiring continue tokens, `resourceVersion`/`resourceVersionMatch`),
//!   `watch`, `create` (`generateName`, uid,
//!   creationTimestamp, generation), `update` (PUT; a stale
//!   `metadata.resourceVersion` is 409 Conflict), `patch` (merge, JSON,
//!   strategic-as-merge for built-in kinds, server-side apply with
//!   create-if-absent; see below), `delete`
//!   (uid/resourceVersion preconditions, finalizers and
//!   `deletionTimestamp`, grace periods for pods, `propagationPolicy`),
//!   `deletecollection`, and the `/status` subresource.
//! - Controllers on tokio's clock (pause it, and they pause): a garbage
//!   collector acting on `ownerReferences` (background, foreground and
//!   orphan propagation, `blockOwnerDeletion`), and a scheduler and kubelet
//!   for Pods (bound at once, `Running` after a start delay, exiting by
//!   themselves or when a test says, stopping after SIGTERM per
//!   [`PodBehaviour`] and [`PodTermination`], removed by the kubelet with
//!   grace 0). Their writes go straight to the store: they are neither
//!   counted nor logged as requests.
//! - One clock for every timestamp the fake writes (see [`FakeKube::now`]).
//! - One global resourceVersion counter; writes that change nothing do not
//!   bump it.
//! - Watches stream `ADDED`/`MODIFIED`/`DELETED` in resourceVersion order,
//!   `BOOKMARK`s when `allowWatchBookmarks=true`, the initial events of
//!   `sendInitialEvents`, and an `ERROR` event with a 410 `Expired` Status
//!   when the requested resourceVersion is older than the kind's kept
//!   history ([`FakeKubeBuilder::watch_history`], per kind).
//! - core/v1 and events.k8s.io/v1 Events are one set of objects, as on the
//!   API server.
//! - Lost answers and restarts: faults after the commit
//!   ([`Faults::fail_next_after_commit`]), [`FakeKube::cut_watches`],
//!   [`FakeKube::restart`].
//! - Write taps ([`FakeKube::tap`]): every write of a kind, in
//!   resourceVersion order, for a test's history, whatever the faults.
//! - Discovery (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/<g>/<v>`,
//!   aggregated discovery) and an empty OpenAPI document, enough for
//!   `kube::discovery` and kubectl.
//!
//! # Field managers and server-side apply
//!
//! Every write records who changed which field in `metadata.managedFields`,
//! as the API server does: an apply (`PATCH` with
//! `application/apply-patch+yaml`, `fieldManager` required) as an `Apply`
//! entry owning exactly the fields its configuration sets; a create, PUT or
//! other patch as an `Update` entry of its `fieldManager` (else the
//! User-Agent's prefix) taking the fields it changed from everyone else. An
//! apply that would change a field another entry owns is answered 409
//! `Conflict` (`Apply failed with 1 conflict: conflict with "other":
//! .spec.holderIdentity`, with `FieldManagerConflict` causes) and writes
//! nothing, unless `force=true`, which takes the field over; applying the
//! value a field already has shares it. A field an applier owned alone and
//! leaves out of its next configuration is removed. Lists are owned as one
//! field (see the crate README for what else differs from the API server).
//!
//! # Faults and counters
//!
//! Every request first goes through [`Faults::apply`] under the Kubernetes
//! verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
//! `deletecollection`), API group (`""` for the core group) and resource
//! (the plural, `coderuns/status` for a subresource; `discovery`,
//! `version`, `openapi`, `healthz` for the rest), then is counted once in
//! [`Calls`] and logged once in [`FakeKube::requests`] with the outcome the
//! client saw. A request the client abandons before it is answered (for
//! example during a partition) counts as `Dropped`. Every answer carries an
//! `Audit-Id` header: the client's `Audit-ID` if it sent one (the log's
//! correlation value), else a fresh UUID, as the API server does.
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, PostParams};
//! use testkit::kube::FakeKube;
//!
//! let kube = FakeKube::start().await?;
//! let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "default");
//! let mut cm = ConfigMap::default();
//! cm.metadata.name = Some("state".into());
//! let created = cms.create(&PostParams::default(), &cm).await?;
//!
//! // Two writers both read `created`; the first write wins, the second
//! // carries a stale resourceVersion and gets 409 Conflict.
//! let mut next = created.clone();
//! next.data = Some([("state.json".to_owned(), "{}".to_owned())].into());
//! cms.replace("state", &PostParams::default(), &next).await?;
//! let err = cms.replace("state", &PostParams::default(), &next).await.unwrap_err();
//! assert!(matches!(err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"));
//! assert_eq!(kube.calls().count(Some("update"), Some("configmaps")), 2);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod clock;
mod controllers;
mod discovery;
mod events;
mod managed_fields;
mod patch;
pub mod rbac;
mod request_log;
mod resource;
pub mod seeding;
mod selector;
mod server;
mod status;
mod store;
pub mod tap;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

pub use request_log::{RequestFilter, RequestLog, RequestRecord};
pub use resource::ResourceType;
pub use store::{PodBehaviour, PodTermination, TerminalPhase, parse_termination};

use crate::calls::Calls;
use crate::faults::Faults;
use clock::Clock;
use server::{ServerOptions, Shared};
use store::{ContinueExpiry, Store, StoreConfig, WriteOptions};

/// Errors of the fake API server's own API (not the HTTP answers it serves).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server could not bind its port on 127.0.0.1.
    #[error("fake-kube could not bind 127.0.0.1:{port}: {source}")]
    Bind {
        /// The port asked for (0: any free port).
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `kube::Client` for the fake could not be built.
    #[error("could not build a kube client for fake-kube: {0}")]
    Client(#[source] Box<::kube::Error>),
    /// An `Audit-ID` for [`FakeKube::client_as`] that is not a valid
    /// header value.
    #[error("{0:?} cannot be an Audit-ID header value")]
    AuditId(String),
    /// The kubeconfig file could not be written.
    #[error("could not write the fake-kube kubeconfig {path}: {source}")]
    Kubeconfig {
        /// Where it was being written.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A CRD or resource type was refused (missing names, unknown scope…).
    #[error("invalid resource definition: {0}")]
    InvalidResource(String),
    /// The object a test named does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An object given to [`FakeKube::seed`] was refused, as its create
    /// would have been.
    #[error("could not seed {name:?}: {message}")]
    Seed {
        /// The object's name (or generateName).
        name: String,
        /// The API server's reason, as a create would have answered.
        message: String,
    },
}

impl Error {
    /// Whether retrying may succeed: a failed bind (ports free up) or a
    /// failed file write; never a bad definition.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Bind { .. } | Self::Kubeconfig { .. })
    }
}

/// Configures a [`FakeKube`] before it starts.
#[derive(Debug, Clone)]
pub struct FakeKubeBuilder {
    seed: u64,
    port: u16,
    history: usize,
    watch_capacity: usize,
    max_body: usize,
    bookmark_interval: Duration,
    watch_timeout: Duration,
    max_watch_timeout: Duration,
    pod_behaviour: PodBehaviour,
    gc_delay: Duration,
    cache_lag: usize,
    continue_after: Duration,
    continue_writes: Option<u64>,
    request_log: usize,
    types: Vec<ResourceType>,
    crds: Vec<CustomResourceDefinition>,
    faults: Option<Faults>,
    calls: Option<Calls>,
}

impl Default for FakeKubeBuilder {
    fn default() -> Self {
        Self {
            seed: 0,
            port: 0,
            // Enough for a test's whole life in most suites; small enough that
            // a long benchmark stays bounded (each entry holds one object).
            history: 4096,
            // A watcher this far behind is closed rather than buffered without
            // bound; it resumes from its last resourceVersion.
            watch_capacity: 1024,
            // The API server's default request body limit (3 MiB).
            max_body: 3 * 1024 * 1024,
            // The API server's watch cache bookmarks about once a minute.
            bookmark_interval: Duration::from_secs(60),
            // The API server's default when a watch names no timeout is
            // 30–60 minutes; clients (kube: 290 s) normally name one.
            watch_timeout: Duration::from_secs(1800),
            max_watch_timeout: Duration::from_secs(3600),
            pod_behaviour: PodBehaviour::default(),
            // kube-controller-manager's collector reacts within
            // milliseconds; zero still runs after the request that queued
            // the work, never inside it.
            gc_delay: Duration::ZERO,
            // A watch cache that keeps up; stale reads are opt-in.
            cache_lag: 0,
            // The API server's etcd compaction interval.
            continue_after: Duration::from_secs(300),
            continue_writes: None,
            // Ten thousand cancellations of about ten calls each; a record
            // is a few hundred bytes.
            request_log: 100_000,
            types: Vec::new(),
            crds: Vec::new(),
            faults: None,
            calls: None,
        }
    }
}

impl FakeKubeBuilder {
    /// Seeds the fault injector and generated names (default 0).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Listens on this port of 127.0.0.1 (default 0: any free port).
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// How many events are kept for watches resuming from an older
    /// resourceVersion (default 4096); older ones get 410 Expired.
    #[must_use]
    pub fn watch_history(mut self, events: usize) -> Self {
        self.history = events.max(1);
        self
    }

    /// Events buffered per watch before a slow watcher is closed (default 1024).
    #[must_use]
    pub fn watch_capacity(mut self, events: usize) -> Self {
        self.watch_capacity = events.max(1);
        self
    }

    /// Largest accepted request body (default 3 MiB, as the API server);
    /// larger ones get 413.
    #[must_use]
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Interval of BOOKMARK events on watches that allow them (default 60 s).
    #[must_use]
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = every.max(Duration::from_millis(1));
        self
    }

    /// Length of a watch that names no `timeoutSeconds` (default 30 min),
    /// and the most any watch may ask for (default 1 h).
    #[must_use]
    pub fn watch_timeouts(mut self, default: Duration, max: Duration) -> Self {
        self.watch_timeout = default;
        self.max_watch_timeout = max.max(default);
        self
    }

    /// What pods' containers do with SIGTERM, unless a pod's labels or the
    /// test say otherwise (default [`PodTermination::Immediate`]); the rest
    /// of the default [`PodBehaviour`] is kept.
    #[must_use]
    pub fn pod_termination(mut self, mode: PodTermination) -> Self {
        self.pod_behaviour.termination = mode;
        self
    }

    /// How the simulated scheduler and kubelet treat pods, unless a pod's
    /// labels or the test say otherwise (default: [`PodBehaviour::default`]).
    #[must_use]
    pub fn pod_behaviour(mut self, behaviour: PodBehaviour) -> Self {
        self.pod_behaviour = behaviour;
        self
    }

    /// How long after a change the garbage collector acts on it (default
    /// zero: at once, but after the request that made the change has been
    /// answered).
    #[must_use]
    pub fn garbage_collection_delay(mut self, delay: Duration) -> Self {
        self.gc_delay = delay;
        self
    }

    /// How many of a kind's events the watch cache lags behind, for reads
    /// with `resourceVersion=0` (LIST, GET and the initial state of a
    /// watch; default 0). A real watch cache may serve such reads slightly
    /// stale; a client must not take them for the latest state.
    #[must_use]
    pub fn watch_cache_lag(mut self, events: usize) -> Self {
        self.cache_lag = events;
        self
    }

    /// How long after its snapshot stopped being the latest state a LIST
    /// continue token expires (410 `Expired`, with a token to go on from
    /// the latest state), as etcd compaction makes it (default 5 min, the
    /// API server's compaction interval).
    #[must_use]
    pub fn continue_expires_after(mut self, after: Duration) -> Self {
        self.continue_after = after;
        self
    }

    /// Expires a LIST continue token once more than `writes` writes (to any
    /// kind) followed its snapshot (default: never by count).
    #[must_use]
    pub fn continue_expires_after_writes(mut self, writes: u64) -> Self {
        self.continue_writes = Some(writes);
        self
    }

    /// How many requests [`FakeKube::requests`] keeps (default 100 000);
    /// older ones are evicted and counted in [`RequestLog::evicted`].
    #[must_use]
    pub fn request_log_capacity(mut self, requests: usize) -> Self {
        self.request_log = requests.max(1);
        self
    }

    /// Registers a CRD before start (see [`FakeKube::register_crd`]).
    #[must_use]
    pub fn crd(mut self, crd: CustomResourceDefinition) -> Self {
        self.crds.push(crd);
        self
    }

    /// Registers a resource type before start (see [`FakeKube::register_resource`]).
    #[must_use]
    pub fn resource(mut self, t: ResourceType) -> Self {
        self.types.push(t);
        self
    }

    /// Uses `faults` instead of a fresh set (for example one shared with a
    /// FakeGitHub, to partition both at once). The seed then has no effect on it.
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

    /// Binds 127.0.0.1 and starts serving.
    pub async fn start(self) -> Result<FakeKube, Error> {
        let bind_error = |source| Error::Bind {
            port: self.port,
            source,
        };
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let url = Url::parse(&format!("http://{addr}/"))
            .map_err(|e| bind_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;

        let clock = Clock::start();
        let mut store = Store::new(StoreConfig {
            clock,
            history_limit: self.history,
            watch_capacity: self.watch_capacity,
            pod_behaviour: self.pod_behaviour,
            gc_delay: self.gc_delay,
            cache_lag: self.cache_lag,
            continue_expiry: ContinueExpiry {
                after: self.continue_after,
                writes: self.continue_writes,
            },
            // A different stream from the fault injector's, from the same seed.
            seed: self.seed ^ 0x6b75_6265_6e61_6d65,
        });
        for t in self.types {
            store.register(t);
        }
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            faults: self.faults.unwrap_or_else(|| Faults::new(self.seed)),
            calls: self.calls.unwrap_or_default(),
            log: RequestLog::new(self.request_log),
            clock,
            options: ServerOptions {
                max_body: self.max_body,
                bookmark_interval: self.bookmark_interval,
                default_watch_timeout: self.watch_timeout,
                max_watch_timeout: self.max_watch_timeout,
            },
            address: addr.to_string(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            connections: Mutex::new(CancellationToken::new()),
            watch_cuts: Mutex::new(CancellationToken::new()),
        });
        for crd in &self.crds {
            register_crd(&shared, crd)?;
        }

        ensure_crypto_provider();
        let config = client_config(&url);
        let client = ::kube::Client::try_from(config).map_err(|e| Error::Client(Box::new(e)))?;
        shared.tasks.spawn(server::serve(listener, shared.clone()));
        shared.tasks.spawn(controllers::run(shared.clone()));
        tracing::debug!(%url, "fake-kube started");
        Ok(FakeKube {
            shared,
            url,
            addr,
            client,
            kubeconfig: OnceLock::new(),
        })
    }
}

/// A running fake Kubernetes API server on 127.0.0.1; stops (closing every
/// connection and watch) when dropped. See the [module documentation](self).
pub struct FakeKube {
    shared: Arc<Shared>,
    url: Url,
    addr: SocketAddr,
    client: ::kube::Client,
    kubeconfig: OnceLock<(tempfile::TempDir, PathBuf)>,
}

impl FakeKube {
    /// Starts a fake with the defaults (see [`FakeKubeBuilder`]).
    pub async fn start() -> Result<Self, Error> {
        Self::builder().start().await
    }

    /// A builder for a fake with a seed, limits or extra types.
    pub fn builder() -> FakeKubeBuilder {
        FakeKubeBuilder::default()
    }

    /// The base URL, `http://127.0.0.1:<port>/`.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A client for the fake, built from `kube::Config::new(url)`: plain
    /// HTTP, no auth, namespace `default`, and kube's default retry of
    /// 429/503/504 (honouring `Retry-After`) **on**, as in production. Use
    /// [`FakeKube::config`] to build one without it.
    pub fn client(&self) -> ::kube::Client {
        self.client.clone()
    }

    /// A client like [`FakeKube::client`] whose every request carries
    /// `Audit-ID: who`, so the [request log](FakeKube::requests) tells this
    /// party's requests from the others' ([`RequestRecord::correlation`],
    /// [`RequestFilter::correlation`]): one per party of a test (the code
    /// under test, another replica, an operator), to compare what each one
    /// called.
    ///
    /// Errors: [`Error::AuditId`] when `who` cannot be a header value.
    pub fn client_as(&self, who: &str) -> Result<::kube::Client, Error> {
        let value = http::HeaderValue::from_str(who).map_err(|_| Error::AuditId(who.to_owned()))?;
        let mut config = self.config();
        config
            .headers
            .push((http::HeaderName::from_static(server::AUDIT_ID), value));
        ::kube::Client::try_from(config).map_err(|e| Error::Client(Box::new(e)))
    }

    /// The client configuration [`FakeKube::client`] is built from, to
    /// adjust (`default_retry = false`, timeouts) before
    /// `kube::Client::try_from(config)`.
    pub fn config(&self) -> ::kube::Config {
        ensure_crypto_provider();
        client_config(&self.url)
    }

    /// Writes (once) a kubeconfig for the fake, with no credentials, and
    /// returns its path; the file lives as long as this handle. For
    /// `kubectl --kubeconfig <path>` or `KUBECONFIG=<path>`.
    pub fn kubeconfig(&self) -> Result<&Path, Error> {
        if let Some((_, path)) = self.kubeconfig.get() {
            return Ok(path);
        }
        let dir = tempfile::Builder::new()
            .prefix("fake-kube-")
            .tempdir()
            .map_err(|source| Error::Kubeconfig {
                path: std::env::temp_dir(),
                source,
            })?;
        let path = dir.path().join("kubeconfig");
        self.write_kubeconfig(&path)?;
        // Another thread may have won the race; its file is as good as ours.
        let (_, path) = self.kubeconfig.get_or_init(|| (dir, path));
        Ok(path)
    }

    /// Writes a kubeconfig for the fake (no credentials, namespace
    /// `default`) to `path`, replacing any file there.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), Error> {
        write_kubeconfig(path, &self.url)
    }

    /// The fault injector every request goes through.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// The call counters every request is recorded in.
    pub fn calls(&self) -> &Calls {
        &self.shared.calls
    }

    /// The ordered log of every request (see [`RequestLog`]).
    pub fn requests(&self) -> &RequestLog {
        &self.shared.log
    }

    /// Registers a CRD (usually `MyResource::crd()` from
    /// `kube::CustomResourceExt`): its kind is served from now on, in every
    /// served version, with a `/status` subresource if declared, and the CRD
    /// object itself is stored (replacing one of the same name).
    pub fn register_crd(&self, crd: &CustomResourceDefinition) -> Result<(), Error> {
        register_crd(&self.shared, crd)
    }

    /// Serves an arbitrary resource type (no CRD object is stored).
    pub fn register_resource(&self, t: ResourceType) {
        self.shared.store().register(t);
    }

    /// Stores `objects` directly, each as its create would (uid,
    /// resourceVersion, timestamps, `managedFields` under `testkit`, watch
    /// events; the kubelet and garbage collector react), without a request
    /// each: for reconciler benchmarks that need ten thousand objects in
    /// place in milliseconds. Nothing is counted or logged. An object
    /// without a namespace goes to `default` (for a namespaced kind). Stops
    /// at the first object refused, with its create's error; those before
    /// it stay. Returns how many were stored.
    pub fn seed<K>(&self, objects: impl IntoIterator<Item = K>) -> Result<usize, Error>
    where
        K: ::kube::Resource<DynamicType = ()> + serde::Serialize,
    {
        let (group, version, plural) = (K::group(&()), K::version(&()), K::plural(&()));
        let mut store = self.shared.store();
        let t = store.resolve(&group, &version, &plural).ok_or_else(|| {
            Error::InvalidResource(format!("{plural}.{group}/{version} is not served"))
        })?;
        let opts = WriteOptions {
            field_manager: "testkit".to_owned(),
            version: version.to_string(),
            ..WriteOptions::default()
        };
        let mut stored = 0;
        for object in objects {
            let meta = object.meta();
            let name = meta
                .name
                .clone()
                .or_else(|| meta.generate_name.clone())
                .unwrap_or_default();
            let namespace = meta
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned());
            let refused = |message: String| Error::Seed {
                name: name.clone(),
                message,
            };
            let mut body = serde_json::to_value(&object).map_err(|e| refused(e.to_string()))?;
            if let Some(o) = body.as_object_mut() {
                o.insert("apiVersion".into(), t.api_version(&version).into());
                o.insert("kind".into(), t.kind.clone().into());
            }
            store
                .create(&t, &namespace, body, &opts)
                .map_err(|e| refused(e.message))?;
            stored += 1;
        }
        Ok(stored)
    }

    /// The stored object `namespace/name` of kind `K` (`""` namespace for
    /// cluster-scoped kinds), read straight from the store: no request is
    /// made, so nothing is counted or logged and no fault or partition
    /// applies. `None` if it does not exist (or `K` is not served). For a
    /// test's assertions about state ("still there at 4.9 s of paused
    /// time") that must not disturb the requests it counts.
    pub fn peek<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: ::kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    {
        let (group, version, plural) = (K::group(&()), K::version(&()), K::plural(&()));
        let store = self.shared.store();
        let t = store.resolve(&group, &version, &plural)?;
        let mut obj = store.get(&t, namespace, name).ok()?;
        drop(store);
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), t.api_version(&version).into());
        }
        serde_json::from_value(obj).ok()
    }

    /// The metadata of the stored object `namespace/name` of kind `K`, read
    /// like [`FakeKube::peek`] but without copying or decoding the rest of
    /// it: for a checker that polls thousands of objects for a deletion
    /// timestamp or a label and must not load the fake it watches.
    pub fn peek_metadata<K>(&self, namespace: &str, name: &str) -> Option<ObjectMeta>
    where
        K: ::kube::Resource<DynamicType = ()>,
    {
        let (group, version, plural) = (K::group(&()), K::version(&()), K::plural(&()));
        let store = self.shared.store();
        let t = store.resolve(&group, &version, &plural)?;
        store.metadata(&t, namespace, name)
    }

    /// The fake's clock: the wall time at start plus the tokio time elapsed
    /// since (so it follows `tokio::time::pause()` and `advance()`). Every
    /// timestamp the fake writes comes from it.
    pub fn now(&self) -> jiff::Timestamp {
        self.shared.clock.now()
    }

    /// The node the simulated scheduler binds pods to (`spec.nodeName`).
    pub const NODE_NAME: &'static str = store::NODE_NAME;

    /// Opens a [`tap::Tap`] on the writes of kind `group`/`plural` (`""`
    /// for the core group): every change from now on, in resourceVersion
    /// order, recorded by the store itself, so no fault, partition,
    /// [`restart`](Self::restart) or watch expiry can hide one from a
    /// test's history. Nothing is counted or logged.
    pub fn tap(&self, group: &str, plural: &str) -> tap::Tap {
        self.shared.store().tap(group, plural)
    }

    /// The current value of the global resourceVersion counter.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Number of open watches.
    pub fn watch_count(&self) -> usize {
        self.shared.store().watcher_count()
    }

    /// Change events handed to open watches so far, each counted once per
    /// watch that received it (a write seen by ten watches counts ten;
    /// initial events and bookmarks are not counted): the fan-out a
    /// watch-heavy client costs an API server, beside the request counts
    /// of [`FakeKube::calls`].
    pub fn watch_events(&self) -> u64 {
        self.shared.store().watch_events_dispatched()
    }

    /// Chooses how the simulated scheduler and kubelet treat the pod
    /// `namespace/name`: an existing one from now on (a change of its
    /// termination applies to a later delete; a start delay only if it has
    /// not started), and one created under that name later, whatever its
    /// labels say.
    pub fn set_pod_behaviour(&self, namespace: &str, name: &str, behaviour: PodBehaviour) {
        self.shared
            .store()
            .set_pod_behaviour(namespace, name, behaviour);
    }

    /// Makes the pod's containers exit now, ending in `phase`, as if they
    /// had finished (or crashed) by themselves. A pod already terminal is
    /// left as it is; a terminating one is then removed by the kubelet.
    pub fn set_pod_phase(
        &self,
        namespace: &str,
        name: &str,
        phase: TerminalPhase,
    ) -> Result<(), Error> {
        self.shared
            .store()
            .set_pod_phase(namespace, name, phase)
            .map_err(|e| Error::NotFound(e.message))
    }

    /// Cuts every open watch stream at once: each one's connection is
    /// closed mid-stream (no final chunk), as when the network between a
    /// client and the API server breaks. Watches opened afterwards are
    /// served; a client resumes from its last resourceVersion.
    pub fn cut_watches(&self) {
        self.shared.cut_watches();
    }

    /// Restarts the API server as a crash and restart would look to its
    /// clients: every object is kept (it lives in etcd), every open
    /// connection is closed without an answer (requests in flight lose
    /// theirs, though a write may have landed), every watch ends
    /// mid-stream, and the watch cache starts empty at the current
    /// resourceVersion, so a watch or LIST continuation from any older
    /// resourceVersion gets 410 Gone. resourceVersions continue upward.
    /// The simulated kubelet and garbage collector are other processes and
    /// carry on.
    pub fn restart(&self) {
        // Watches first, so none ends cleanly when the store forgets it.
        self.shared.cut_watches();
        self.shared.drop_connections();
        self.shared.store().restart();
    }

    /// Stops serving, closes every connection, and waits until the server's
    /// tasks have ended (dropping the handle stops it without waiting).
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

impl std::fmt::Debug for FakeKube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKube")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// Installs the workspace's TLS provider (ring) as the process default
/// unless one is installed: `resilience::tls::ensure_crypto_provider`,
/// re-exported here. The supersede workspace compiles in only ring, but a
/// user's workspace that also enables aws-lc-rs (features unify across a
/// workspace) leaves rustls unable to choose, and building any
/// `kube::Client` then panics, even for plain HTTP. [`FakeKube`] calls it
/// before building clients; call it before building one yourself (for
/// example from a kubeconfig file).
pub use resilience::tls::ensure_crypto_provider;

fn client_config(url: &Url) -> ::kube::Config {
    // `Url` always renders a valid URI; the fallback is never used.
    let uri = url
        .as_str()
        .parse::<http::Uri>()
        .unwrap_or_else(|_| http::Uri::from_static("http://127.0.0.1/"));
    ::kube::Config::new(uri)
}

fn register_crd(shared: &Shared, crd: &CustomResourceDefinition) -> Result<(), Error> {
    let value = serde_json::to_value(crd).map_err(|e| Error::InvalidResource(e.to_string()))?;
    ResourceType::from_crd(&value).map_err(Error::InvalidResource)?;
    let mut store = shared.store();
    let crds = store
        .resolve("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .ok_or_else(|| Error::InvalidResource("the CRD type is not served".to_owned()))?;
    let name = crd.metadata.name.clone().unwrap_or_default();
    let mut object = value;
    if let Some(meta) = object.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("resourceVersion");
    }
    // Recorded in managedFields as written by "testkit".
    let opts = WriteOptions {
        field_manager: "testkit".to_owned(),
        ..WriteOptions::default()
    };
    let result = match store.create(&crds, "", object.clone(), &opts) {
        Err(e) if e.code == 409 && e.reason == "AlreadyExists" => {
            store.update(&crds, "", &name, object, false, &opts)
        }
        other => other,
    };
    result
        .map(drop)
        .map_err(|e| Error::InvalidResource(e.message))
}

fn write_kubeconfig(path: &Path, url: &Url) -> Result<(), Error> {
    let server = url.as_str().trim_end_matches('/');
    let text = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: fake-kube\n  cluster:\n    server: {server}\n\
         users:\n\
         - name: fake-kube\n  user: {{}}\n\
         contexts:\n\
         - name: fake-kube\n  context:\n    cluster: fake-kube\n    user: fake-kube\n    namespace: default\n\
         current-context: fake-kube\n\
         preferences: {{}}\n"
    );
    // Written beside the target and renamed into place, so a reader polling
    // for the file never sees half of it.
    let error = |source| Error::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, text).map_err(error)?;
    std::fs::rename(&partial, path).map_err(error)
}
