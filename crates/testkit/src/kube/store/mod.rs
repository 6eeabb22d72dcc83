//! The object store behind FakeKube: every resource, one resourceVersion
//! counter, a bounded event history, the watchers fed from it, and the
//! controllers that act on it (the simulated kubelet in `kubelet`, the
//! garbage collector in `gc`, their timers in `agenda`).
//!
//! All methods are synchronous and run under one lock, so every write gets
//! the next value of the single global resourceVersion and is delivered to
//! watchers in that order. The rule it keeps: **a write succeeds only if the
//! caller's preconditions (resourceVersion, uid) still hold at the moment of
//! the write** — the compare-and-swap the whole project relies on.

mod agenda;
mod crd_cleanup;
mod gc;
mod history;
mod kubelet;
mod label_index;
mod snapshot;
mod watchers;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::clock::Clock;
use super::managed_fields::{self, FieldManager, ManagedFields};
use super::patch::{self, PatchKind};
use super::resource::{ResourceType, builtin_types, string_list};
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::tap::{Tap, Taps, Write, WriteKind};

pub(crate) use gc::Propagation;
pub(crate) use kubelet::NODE_NAME;
pub use kubelet::{PodBehaviour, PodTermination, TerminalPhase, parse_termination};

use agenda::{Action, Agenda};
use gc::GarbageCollector;
use history::History;
use kubelet::Kubelet;
use label_index::LabelIndex;
pub(crate) use snapshot::ReadAt;
pub(crate) use watchers::WatchItem;
use watchers::Watchers;

/// Limits and behaviour knobs of the store.
#[derive(Debug, Clone)]
pub(crate) struct StoreConfig {
    pub clock: Clock,
    pub history_limit: usize,
    pub watch_capacity: usize,
    pub pod_behaviour: PodBehaviour,
    pub gc_delay: Duration,
    /// How many of a kind's events `resourceVersion=0` reads lag behind.
    pub cache_lag: usize,
    pub continue_expiry: ContinueExpiry,
    pub seed: u64,
}

/// When a LIST continue token expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ContinueExpiry {
    /// This long after its snapshot was superseded (etcd's compaction).
    pub after: Duration,
    /// After more than this many writes since its snapshot, if set.
    pub writes: Option<u64>,
}

/// The options every write shares, from the request's query and headers.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteOptions {
    /// `dryRun=All`: check and answer, store nothing.
    pub dry_run: bool,
    /// `fieldManager`, else derived from the User-Agent.
    pub field_manager: String,
    /// `force=true` (server-side apply only).
    pub force: bool,
    /// The version the request addressed (`""`: the preferred one).
    pub version: String,
}

impl WriteOptions {
    /// The field manager of a write to the main resource of `t`
    /// (`status_only`: to its `/status`).
    fn manager(&self, t: &ResourceType, status_only: bool) -> FieldManager {
        let version = if self.version.is_empty() {
            t.preferred_version()
        } else {
            &self.version
        };
        FieldManager::new(
            self.field_manager.clone(),
            t.api_version(version),
            t.status_subresource,
            status_only,
        )
    }
}

/// How a write changes field ownership (`metadata.managedFields`).
enum Ownership {
    /// A create, PUT or non-apply patch: this manager takes what it changes.
    Update(FieldManager),
    /// A server-side apply, whose ownership is already worked out.
    Applied(ManagedFields),
}

/// How objects of a request's API relate to their stored form when the two
/// differ (events.k8s.io Events over core ones).
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    /// The stored form as the request's API shows it.
    pub to_view: fn(&Value) -> Value,
    /// The request's form as it is stored.
    pub to_stored: fn(Value) -> Value,
}

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ObjKey {
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
}

/// A change, as kept in the history and sent to watchers.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub rv: u64,
    pub key: ObjKey,
    pub kind: EventKind,
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

/// ADDED, MODIFIED or DELETED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    Added,
    Modified,
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// What a client asked to watch.
#[derive(Debug, Clone)]
pub(crate) struct WatchRequest {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// Where the watch starts.
    pub from: WatchFrom,
    /// `sendInitialEvents`, if given: start with the state as ADDED
    /// events (then a bookmark), or without any.
    pub send_initial_events: Option<bool>,
}

/// A watch's `resourceVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchFrom {
    /// None: the latest state as ADDED events, then what follows.
    Latest,
    /// `0`: any state (the watch cache's, possibly stale) as ADDED events,
    /// then what follows.
    Any,
    /// What happened after this resourceVersion.
    Version(u64),
}

/// A registered watch: events to replay first, then the live channel.
pub(crate) enum WatchStart {
    Started {
        initial: Vec<Arc<WatchItem>>,
        /// The resourceVersion the initial events bring the client to.
        initial_rv: u64,
        live: mpsc::Receiver<Arc<WatchItem>>,
        id: u64,
    },
    /// The requested resourceVersion is older than the kept history.
    Expired(ApiError),
}

/// Options of a delete, from the `DeleteOptions` body and query.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
    /// `propagationPolicy`.
    pub propagation: Option<Propagation>,
    /// The deprecated `orphanDependents`.
    pub orphan_dependents: Option<bool>,
}

/// What a delete did.
pub(crate) enum Deleted {
    /// The object is gone; `last` is its final state (with the deletion's
    /// resourceVersion). Pods are answered with it, other kinds with a
    /// `Status` of `Success` (see [`returns_deleted_object`]).
    Gone { last: Value },
    /// The object stays (finalizers, graceful pod termination); answer it.
    Terminating(Value),
}

/// Whether a delete that removes an object answers the object rather than
/// a `Status` (the API server's `ReturnDeletedObject`, set for Pods among
/// the kinds served here).
pub(crate) fn returns_deleted_object(t: &ResourceType) -> bool {
    t.group.is_empty() && t.plural == "pods"
}

/// The result of a list.
pub(crate) struct ListPage {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
}

pub(crate) struct Store {
    config: StoreConfig,
    clock: Clock,
    rv: u64,
    types: Vec<ResourceType>,
    objects: BTreeMap<ObjKey, Value>,
    /// `objects` by label, for selectors that name a label's value.
    labels: LabelIndex,
    history: History,
    watchers: Watchers,
    names: StdRng,
    agenda: Agenda,
    kubelet: Kubelet,
    gc: GarbageCollector,
    /// The tests' write taps: kept across restarts (they are no connection).
    taps: Taps,
}

/// Characters of generated name suffixes (the API server's: no vowels, no
/// look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Generated names tried before a create answers AlreadyExists.
const GENERATE_NAME_ATTEMPTS: usize = 8;

impl Store {
    pub fn new(config: StoreConfig) -> Self {
        let names = StdRng::seed_from_u64(config.seed);
        let config_gc_delay = config.gc_delay;
        let history = History::new(config.history_limit);
        Self {
            clock: config.clock,
            config,
            rv: 1,
            types: builtin_types(),
            objects: BTreeMap::new(),
            labels: LabelIndex::default(),
            history,
            watchers: Watchers::default(),
            names,
            agenda: Agenda::new(),
            kubelet: Kubelet::default(),
            gc: GarbageCollector::new(config_gc_delay),
            taps: Taps::default(),
        }
    }

    /// Runs every controller action due by now; returns when the next one
    /// is due. (Work an action schedules for now runs in the same call.)
    pub fn run_due(&mut self) -> Option<Instant> {
        // A bound, so a runaway cascade still lets requests in between.
        for _ in 0..100_000 {
            let Some(action) = self.agenda.pop_due(Instant::now()) else {
                break;
            };
            match action {
                Action::StartPod { key, uid } => self.kubelet_start(&key, &uid),
                Action::ExitPod { key, uid, phase } => self.kubelet_exit(&key, &uid, phase),
                Action::StopPod { key, uid } => self.kubelet_stop(&key, &uid),
                Action::CollectGarbage => self.collect_garbage(),
                Action::CleanUpCrd { key, uid } => self.clean_up_crd(&key, &uid),
            }
        }
        self.agenda.next_due()
    }

    /// What the controller task waits on besides the next due instant.
    pub fn controller_wakeup(&self) -> Arc<Notify> {
        self.agenda.wakeup()
    }

    /// Opens a write tap on `group`/`plural` (see [`super::tap`]).
    pub fn tap(&mut self, group: &str, plural: &str) -> Tap {
        self.taps.open(group, plural)
    }

    /// The current (last assigned) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    /// The type served at `group/version/plural`.
    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural && t.serves(version))
            .cloned()
    }

    /// Adds a type, or replaces the one with the same group and plural.
    pub fn register(&mut self, t: ResourceType) {
        match self
            .types
            .iter_mut()
            .find(|e| e.group == t.group && e.plural == t.plural)
        {
            Some(existing) => *existing = t,
            None => self.types.push(t),
        }
    }

    /// The registered type an object key belongs to.
    fn type_of(&self, k: &ObjKey) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == k.group && t.plural == k.plural)
            .cloned()
    }

    fn unregister(&mut self, group: &str, plural: &str) {
        self.types
            .retain(|t| !(t.group == group && t.plural == plural));
        self.objects
            .retain(|k, _| !(k.group == group && k.plural == plural));
    }

    pub fn get(&self, t: &ResourceType, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&key(t, namespace, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(t, name))
    }

    /// The metadata of one stored object, decoded from the store's value
    /// without a copy of the whole object.
    pub fn metadata(
        &self,
        t: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta> {
        let object = self.objects.get(&key(t, namespace, name))?;
        serde::Deserialize::deserialize(object.get("metadata")?).ok()
    }

    pub fn create(
        &mut self,
        t: &ResourceType,
        namespace: &str,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let who = opts.manager(t, false);
        self.insert_new(t, namespace, body, opts.dry_run, Ownership::Update(who))
    }

    /// The shared path of create and of an apply that creates.
    fn insert_new(
        &mut self,
        t: &ResourceType,
        namespace: &str,
        body: Value,
        dry_run: bool,
        ownership: Ownership,
    ) -> Result<Value, ApiError> {
        self.refuse_while_terminating(t)?;
        let mut obj = into_object(body, t)?;
        let managed_in = ManagedFields::for_write(None, &obj);
        let meta = metadata_mut(&mut obj);
        check_namespace(meta, t, namespace)?;
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|rv| !rv.is_empty())
        {
            // The etcd3 storage layer's own error, which reaches clients as
            // a 500 (kube users meet it when creating an object they read).
            return Err(ApiError::new(
                500,
                "InternalError",
                "Internal error occurred: resourceVersion should not be set on objects to be created",
            ));
        }
        let given = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let generate = meta
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let name = if !given.is_empty() {
            given
        } else if !generate.is_empty() {
            self.generate_name(t, namespace, &generate)
        } else {
            return Err(ApiError::invalid(
                t,
                "",
                "metadata.name",
                "Required value: name or generateName is required",
            ));
        };
        validate_name(t, &name)?;
        if self.objects.contains_key(&key(t, namespace, &name)) {
            return Err(ApiError::already_exists(t, &name));
        }

        let rv = self.rv + 1;
        let meta = metadata_mut(&mut obj);
        meta.insert("name".into(), json!(name));
        if t.namespaced {
            meta.insert("namespace".into(), json!(namespace));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(self.clock.timestamp()));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        for system in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(system);
        }
        if t.tracks_generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        self.prepare_new_status(t, &mut obj)?;
        let managed = match ownership {
            Ownership::Update(who) => {
                managed_fields::update(None, &obj, managed_in, &who, &self.clock.timestamp())
            }
            Ownership::Applied(managed) => managed,
        };
        managed.store_in(&mut obj);
        if dry_run {
            return Ok(obj);
        }
        self.rv = rv;
        let k = key(t, namespace, &name);
        self.put(&k, None, obj.clone());
        self.emit(EventKind::Added, k.clone(), &obj, None);
        if t.group.is_empty() && t.plural == "pods" {
            self.kubelet_admit(&k, &obj);
        }
        Ok(obj)
    }

    /// PUT of the object (`status_only`: PUT of its `/status`).
    pub fn update(
        &mut self,
        t: &ResourceType,
        namespace: &str,
        name: &str,
        body: Value,
        status_only: bool,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let body = into_object(body, t)?;
        let current = self.get(t, namespace, name)?;
        let who = opts.manager(t, status_only);
        self.write(
            t,
            namespace,
            name,
            &current,
            body,
            status_only,
            opts.dry_run,
            Ownership::Update(who),
        )
    }

    /// PATCH of the object (`status_only`: of its `/status`), applied to
    /// the object as `view` shows it when the request's API serves another
    /// form of it. Returns the object and whether it was created
    /// (server-side apply of a new object).
    #[allow(clippy::too_many_arguments)] // mirrors the request's parameters
    pub fn patch(
        &mut self,
        t: &ResourceType,
        namespace: &str,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        status_only: bool,
        opts: &WriteOptions,
        view: Option<View>,
    ) -> Result<(Value, bool), ApiError> {
        let patch = patch::parse_body(kind, body)?;
        if kind == PatchKind::Apply {
            let config = match view {
                Some(v) => (v.to_stored)(patch),
                None => patch,
            };
            return self.server_side_apply(t, namespace, name, &config, status_only, opts);
        }
        let current = self.get(t, namespace, name)?;
        let patched = match view {
            Some(v) => (v.to_stored)(patch::apply(kind, &(v.to_view)(&current), &patch)?),
            None => patch::apply(kind, &current, &patch)?,
        };
        let who = opts.manager(t, status_only);
        self.write(
            t,
            namespace,
            name,
            &current,
            patched,
            status_only,
            opts.dry_run,
            Ownership::Update(who),
        )
        .map(|o| (o, false))
    }

    /// Server-side apply: refused with 409 if it would change fields other
    /// managers own (unless forced); creates the object if it is absent.
    fn server_side_apply(
        &mut self,
        t: &ResourceType,
        namespace: &str,
        name: &str,
        config: &Value,
        status_only: bool,
        opts: &WriteOptions,
    ) -> Result<(Value, bool), ApiError> {
        let current = match self.get(t, namespace, name) {
            Ok(current) => Some(current),
            Err(not_found) if status_only => return Err(not_found),
            Err(_) => None,
        };
        if !config.is_object() {
            return Err(ApiError::bad_request(
                "the body of a merge or apply patch must be a JSON object",
            ));
        }
        // The API server's own checks of an applied configuration.
        if config
            .pointer("/metadata/managedFields")
            .is_some_and(|m| !m.is_null())
        {
            return Err(ApiError::bad_request("metadata.managedFields must be nil"));
        }
        let who = opts.manager(t, status_only);
        let given = config
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if given != who.api_version {
            return Err(ApiError::bad_request(format!(
                "Incorrect version specified in apply patch. Specified patch version: {given}, expected: {}",
                who.api_version
            )));
        }
        let managed = current.as_ref().map(ManagedFields::of).unwrap_or_default();
        let (merged, managed) = managed_fields::apply(
            current.as_ref(),
            config,
            managed,
            &who,
            opts.force,
            &self.clock.timestamp(),
        )
        .map_err(|conflicts| ApiError::apply_conflict(&conflicts))?;
        match current {
            Some(current) => self
                .write(
                    t,
                    namespace,
                    name,
                    &current,
                    merged,
                    status_only,
                    opts.dry_run,
                    Ownership::Applied(managed),
                )
                .map(|o| (o, false)),
            None => {
                let mut obj = into_object(merged, t)?;
                let meta = metadata_mut(&mut obj);
                let named = meta.get("name").and_then(Value::as_str).unwrap_or(name);
                if named != name {
                    return Err(name_mismatch(named, name));
                }
                meta.insert("name".into(), json!(name));
                self.insert_new(t, namespace, obj, opts.dry_run, Ownership::Applied(managed))
                    .map(|o| (o, true))
            }
        }
    }

    /// DELETE of one object, as the API server's generic registry does it:
    /// preconditions, graceful deletion (pods), the garbage collector's
    /// finalizers (`propagationPolicy`), finalizers that keep the object,
    /// and otherwise removal.
    pub fn delete(
        &mut self,
        t: &ResourceType,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let k = key(t, namespace, name);
        let current = self.get(t, namespace, name)?;
        let uid = str_at(&current, "uid");
        let rv = str_at(&current, "resourceVersion");
        if let Some(want) = opts.uid.as_deref().filter(|u| !u.is_empty())
            && want != uid
        {
            return Err(ApiError::precondition_failed(
                t,
                name,
                &format!("UID in precondition: {want}, UID in object meta: {uid}"),
            ));
        }
        if let Some(want) = opts.resource_version.as_deref().filter(|r| !r.is_empty())
            && want != rv
        {
            return Err(ApiError::precondition_failed(
                t,
                name,
                &format!(
                    "ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}"
                ),
            ));
        }

        if crd_cleanup::is_crd_kind(t) && current.pointer("/metadata/deletionTimestamp").is_none() {
            return Ok(self.delete_crd(&k, &current, opts));
        }
        let mut next = current.clone();
        // Graceful deletion: only pods support it. `grace` is the period
        // this delete sets, when it sets one.
        let mut grace = None;
        if t.group.is_empty() && t.plural == "pods" {
            match self.pod_graceful_delete(&current, &mut next, opts) {
                PodDelete::Pending => return Ok(Deleted::Terminating(current)),
                PodDelete::Graceful(g) => grace = Some(g),
                PodDelete::NotGraceful => {}
            }
        }
        let gc_finalizers = gc_finalizers(&current, opts);
        let mut last = current.clone();
        if grace.is_some() || !finalizers(&current).is_empty() || gc_finalizers.is_some() {
            if let Some(f) = gc_finalizers {
                let meta = metadata_mut(&mut next);
                if f.is_empty() {
                    meta.remove("finalizers");
                } else {
                    meta.insert("finalizers".into(), json!(f));
                }
            }
            let pending = !finalizers(&next).is_empty();
            match grace {
                None if pending => {
                    mark_as_deleting(&mut next, &self.clock.timestamp());
                    return Ok(Deleted::Terminating(
                        self.commit_unless_dry(&k, &current, next, opts),
                    ));
                }
                None => {}
                Some(g) => {
                    let stored = self.commit_unless_dry(&k, &current, next, opts);
                    if g > 0 && !opts.dry_run {
                        self.kubelet_sigterm(&k, &uid, g);
                    }
                    if pending || g > 0 {
                        return Ok(Deleted::Terminating(stored));
                    }
                    last = stored;
                }
            }
        }
        if opts.dry_run {
            return Ok(Deleted::Gone { last });
        }
        let last = self.remove(&k, &last);
        Ok(Deleted::Gone { last })
    }

    /// The pod strategy's part of a delete (`BeforeDelete` and
    /// `CheckGracefulDelete`): sets `deletionTimestamp` and
    /// `deletionGracePeriodSeconds` on `next` when the delete is graceful.
    fn pod_graceful_delete(
        &self,
        current: &Value,
        next: &mut Value,
        opts: &DeleteOptions,
    ) -> PodDelete {
        // Negative grace periods count as one second.
        let asked = opts.grace_period_seconds.map(|g| if g < 0 { 1 } else { g });
        let meta = current.get("metadata");
        if meta.and_then(|m| m.get("deletionTimestamp")).is_some() {
            let period = meta
                .and_then(|m| m.get("deletionGracePeriodSeconds"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if period == 0 {
                return PodDelete::NotGraceful;
            }
            // Only a shorter grace period may be asked for while deleting.
            return match asked {
                Some(g) if g < period => {
                    let started = str_at(current, "deletionTimestamp")
                        .parse::<jiff::Timestamp>()
                        .ok()
                        .and_then(|t| {
                            t.checked_sub(jiff::SignedDuration::from_secs(period - g))
                                .ok()
                        });
                    let m = metadata_mut(next);
                    if let Some(at) = started {
                        m.insert("deletionTimestamp".into(), json!(at.to_string()));
                    }
                    m.insert("deletionGracePeriodSeconds".into(), json!(g));
                    PodDelete::Graceful(g)
                }
                _ => PodDelete::Pending,
            };
        }
        let mut period = asked.unwrap_or_else(|| {
            current
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                // The API server defaults it to 30 on create.
                .unwrap_or(30)
        });
        let unscheduled = current
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        let terminal = matches!(
            current.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
        if unscheduled || terminal {
            period = 0;
        }
        if period < 0 {
            period = 1;
        }
        let m = metadata_mut(next);
        m.insert(
            "deletionTimestamp".into(),
            json!(
                self.clock
                    .timestamp_after(Duration::from_secs(period.unsigned_abs()))
            ),
        );
        m.insert("deletionGracePeriodSeconds".into(), json!(period));
        if let Some(g) = m
            .get("generation")
            .and_then(Value::as_i64)
            .filter(|g| *g > 0)
        {
            m.insert("generation".into(), json!(g + 1));
        }
        PodDelete::Graceful(period)
    }

    /// Stores `next` unless the delete is a dry run or changes nothing;
    /// returns what the object now is (or would be).
    fn commit_unless_dry(
        &mut self,
        k: &ObjKey,
        current: &Value,
        next: Value,
        opts: &DeleteOptions,
    ) -> Value {
        if opts.dry_run || next == *current {
            return next;
        }
        self.commit_modified(k, current, next)
    }

    pub fn delete_collection(
        &mut self,
        t: &ResourceType,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        opts: &DeleteOptions,
    ) -> Result<Vec<Value>, ApiError> {
        let page = self.list(t, namespace, labels, fields, None, None, ReadAt::Latest)?;
        let mut out = Vec::new();
        for item in page.items {
            let ns = str_at(&item, "namespace");
            let name = str_at(&item, "name");
            let opts = DeleteOptions {
                uid: None,
                resource_version: None,
                ..opts.clone()
            };
            match self.delete(t, &ns, &name, &opts) {
                Ok(Deleted::Terminating(o) | Deleted::Gone { last: o }) => out.push(o),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Registers a watch on type `t`.
    pub fn watch(&mut self, t: &ResourceType, request: WatchRequest) -> WatchStart {
        let mut initial = Vec::new();
        let snapshot = match (request.from, request.send_initial_events) {
            // An initial state at least as new as asked: the latest one.
            (_, Some(true)) => Some(self.rv),
            (WatchFrom::Version(rv), None | Some(false)) if rv > 0 => {
                let oldest = self.history.oldest(&t.group, &t.plural);
                if rv < oldest {
                    return WatchStart::Expired(ApiError::expired(rv, oldest + 1));
                }
                None
            }
            (_, Some(false)) => None,
            (WatchFrom::Any, None) => Some(self.stale_rv(t)),
            (WatchFrom::Latest | WatchFrom::Version(_), None) => Some(self.rv),
        };
        let since = match snapshot {
            Some(at) => {
                for (k, o) in self.selected_at(t, at, &request.labels) {
                    if request
                        .namespace
                        .as_ref()
                        .is_none_or(|ns| *ns == k.namespace)
                        && selects(&request.labels, &request.fields, o)
                    {
                        initial.push(Arc::new(WatchItem::new(
                            EventKind::Added,
                            Arc::new(o.clone()),
                        )));
                    }
                }
                at
            }
            None => match request.from {
                WatchFrom::Version(rv) => rv,
                WatchFrom::Latest | WatchFrom::Any => self.rv,
            },
        };
        // What followed the starting point (none after a fresh snapshot).
        for event in self.history.after(&t.group, &t.plural, since) {
            initial.extend(watchers::item_for(&request, event));
        }
        let (id, live) = self.watchers.add(t, request, self.config.watch_capacity);
        WatchStart::Started {
            initial,
            initial_rv: self.rv,
            live,
            id,
        }
    }

    /// What the API server's restart does to its watch cache: every watch
    /// is dropped and the kept history starts over at the current
    /// resourceVersion, so resuming from an older one is 410 Gone.
    pub fn restart(&mut self) {
        self.watchers.clear();
        self.history.forget_before(self.rv);
    }

    /// Whether watcher `id` is still registered (it is dropped when it
    /// falls too far behind).
    pub fn has_watcher(&self, id: u64) -> bool {
        self.watchers.contains(id)
    }

    pub fn unwatch(&mut self, id: u64) {
        self.watchers.remove(id);
    }

    /// Number of registered watches.
    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// Events handed to watches so far, once per watch that received each.
    pub fn watch_events_dispatched(&self) -> u64 {
        self.watchers.dispatched()
    }

    /// The shared write path of update, patch and status writes.
    #[allow(clippy::too_many_arguments)] // the request's parameters, plus the object read
    fn write(
        &mut self,
        t: &ResourceType,
        namespace: &str,
        name: &str,
        current: &Value,
        body: Value,
        status_only: bool,
        dry_run: bool,
        ownership: Ownership,
    ) -> Result<Value, ApiError> {
        let mut body = into_object(body, t)?;
        let managed_in = ManagedFields::for_write(Some(current), &body);
        let bmeta = metadata_mut(&mut body);
        match bmeta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != name => return Err(name_mismatch(n, name)),
            _ => {}
        }
        if t.namespaced {
            match bmeta.get("namespace").and_then(Value::as_str) {
                Some(ns) if !ns.is_empty() && ns != namespace => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
        }
        let current_rv = str_at(current, "resourceVersion");
        if let Some(rv) = bmeta.get("resourceVersion").and_then(Value::as_str)
            && !rv.is_empty()
            && rv != current_rv
        {
            return Err(ApiError::conflict(t, name));
        }
        let current_uid = str_at(current, "uid");
        if let Some(uid) = bmeta.get("uid").and_then(Value::as_str)
            && !uid.is_empty()
            && uid != current_uid
        {
            return Err(ApiError::precondition_failed(
                t,
                name,
                &format!("UID in precondition: {uid}, UID in object meta: {current_uid}"),
            ));
        }

        let mut next = if status_only {
            // Only status changes through /status; everything else is kept.
            let mut next = current.clone();
            set_or_remove(&mut next, "status", body.get("status").cloned());
            next
        } else {
            let mut next = body;
            let meta = metadata_mut(&mut next);
            let cmeta = current.get("metadata").and_then(Value::as_object);
            for system in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match cmeta.and_then(|m| m.get(system)) {
                    Some(v) => meta.insert(system.into(), v.clone()),
                    None => meta.remove(system),
                };
            }
            meta.remove("selfLink");
            if t.status_subresource {
                set_or_remove(&mut next, "status", current.get("status").cloned());
            }
            next
        };
        let obj = next
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("not an object"))?;
        obj.insert(
            "apiVersion".into(),
            json!(t.api_version(t.preferred_version())),
        );
        obj.insert("kind".into(), json!(t.kind));
        let managed = match ownership {
            Ownership::Update(who) => managed_fields::update(
                Some(current),
                &next,
                managed_in,
                &who,
                &self.clock.timestamp(),
            ),
            Ownership::Applied(managed) => managed,
        };
        managed.store_in(&mut next);

        let deleting = current.pointer("/metadata/deletionTimestamp").is_some();
        if deleting {
            let before = finalizers(current);
            if let Some(added) = finalizers(&next).into_iter().find(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    t,
                    name,
                    "metadata.finalizers",
                    &format!(
                        "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers [\"{added}\"]"
                    ),
                ));
            }
        }
        if t.group == "apiextensions.k8s.io"
            && t.plural == "customresourcedefinitions"
            && !status_only
        {
            let registered = ResourceType::from_crd(&next)
                .map_err(|why| ApiError::invalid(t, name, "spec", &why))?;
            if !dry_run {
                self.register(registered);
            }
        }
        if next == *current {
            // A no-op write changes nothing, not even the resourceVersion.
            return Ok(next);
        }
        if t.tracks_generation && spec_changed(t, current, &next) {
            let g = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            metadata_mut(&mut next).insert("generation".into(), json!(g + 1));
        }
        if dry_run {
            return Ok(next);
        }
        let k = key(t, namespace, name);
        let grace_over = current
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_none_or(|g| g == 0);
        if deleting && finalizers(&next).is_empty() && grace_over {
            // The last finalizer is gone and no grace period is running (a
            // terminating pod waits for its kubelet): the deletion completes.
            return Ok(self.remove(&k, &next));
        }
        Ok(self.commit_modified(&k, current, next))
    }

    fn commit_modified(&mut self, k: &ObjKey, current: &Value, mut next: Value) -> Value {
        self.rv += 1;
        metadata_mut(&mut next).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.put(k, Some(current), next.clone());
        self.emit(EventKind::Modified, k.clone(), &next, Some(current));
        next
    }

    /// Stores an object (the one place objects are inserted), keeping the
    /// garbage collector's graph current.
    fn put(&mut self, k: &ObjKey, before: Option<&Value>, obj: Value) {
        self.gc_stored(k, before, &obj);
        let old = self.objects.insert(k.clone(), obj);
        self.labels.update(k, old.as_ref(), self.objects.get(k));
    }

    /// Removes an object (the one place objects are removed) and returns
    /// its last state, stamped with the deletion's resourceVersion.
    fn remove(&mut self, k: &ObjKey, last: &Value) -> Value {
        self.rv += 1;
        let mut gone = last.clone();
        metadata_mut(&mut gone).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let stored = self.objects.remove(k);
        self.labels.update(k, stored.as_ref(), None);
        let uid = str_at(&gone, "uid");
        self.gc_removed(k, stored.as_ref().unwrap_or(&gone));
        self.kubelet_forget(k, &uid);
        if k.group == "apiextensions.k8s.io"
            && k.plural == "customresourcedefinitions"
            && let Ok(t) = ResourceType::from_crd(&gone)
        {
            self.unregister(&t.group, &t.plural);
        }
        self.emit(EventKind::Deleted, k.clone(), &gone, stored.as_ref());
        gone
    }

    /// Records an event and hands it to the watchers that select it (see
    /// `watchers`: never waiting on one, closing one that fell behind).
    fn emit(&mut self, kind: EventKind, key: ObjKey, object: &Value, prev: Option<&Value>) {
        let event = Event {
            rv: self.rv,
            key,
            kind,
            object: Arc::new(object.clone()),
            prev: prev.map(|p| Arc::new(p.clone())),
        };
        self.watchers.dispatch(&event);
        let clock = &self.clock;
        self.taps.record(
            || Write {
                rv: event.rv,
                at: clock.now(),
                kind: match event.kind {
                    EventKind::Added => WriteKind::Added,
                    EventKind::Modified => WriteKind::Modified,
                    EventKind::Deleted => WriteKind::Deleted,
                },
                group: event.key.group.clone(),
                plural: event.key.plural.clone(),
                namespace: event.key.namespace.clone(),
                name: event.key.name.clone(),
                object: (*event.object).clone(),
            },
            &event.key.group,
            &event.key.plural,
        );
        self.history.record(event, Instant::now());
    }

    fn prepare_new_status(&mut self, t: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
        let core = t.group.is_empty();
        if core && t.plural == "pods" {
            set_or_remove(obj, "status", Some(json!({"phase": "Pending"})));
        } else if core && t.plural == "namespaces" {
            set_or_remove(obj, "status", Some(json!({"phase": "Active"})));
        } else if t.group == "apiextensions.k8s.io" && t.plural == "customresourcedefinitions" {
            let name = str_at(obj, "name");
            let registered = ResourceType::from_crd(obj)
                .map_err(|why| ApiError::invalid(t, &name, "spec", &why))?;
            let expected = format!("{}.{}", registered.plural, registered.group);
            if name != expected {
                return Err(ApiError::invalid(
                    t,
                    &name,
                    "metadata.name",
                    &format!(
                        "Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
                    ),
                ));
            }
            let names = obj.pointer("/spec/names").cloned().unwrap_or(Value::Null);
            set_or_remove(
                obj,
                "status",
                Some(json!({
                    "acceptedNames": names,
                    "storedVersions": [registered.preferred_version()],
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                         "message": "no conflicts found", "lastTransitionTime": self.clock.timestamp()},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                         "message": "the initial names have been accepted", "lastTransitionTime": self.clock.timestamp()},
                    ],
                })),
            );
            self.register(registered);
        } else if t.status_subresource {
            // Custom resources with a status subresource start without one.
            set_or_remove(obj, "status", None);
        }
        Ok(())
    }

    fn generate_name(&mut self, t: &ResourceType, namespace: &str, prefix: &str) -> String {
        // The API server appends 5 random characters and retries a clash a
        // few times before answering AlreadyExists; so does the fake.
        let prefix: String = prefix.chars().take(253 - 5).collect();
        let mut name = String::new();
        for _ in 0..GENERATE_NAME_ATTEMPTS {
            let suffix: String = (0..5)
                .map(|_| {
                    let i = self.names.random_range(0..NAME_ALPHABET.len());
                    char::from(NAME_ALPHABET[i])
                })
                .collect();
            name = format!("{prefix}{suffix}");
            if !self.objects.contains_key(&key(t, namespace, &name)) {
                break;
            }
        }
        name
    }
}

fn selects(labels: &LabelSelector, fields: &FieldSelector, object: &Value) -> bool {
    (labels.is_empty() || labels.matches_with(|k| label(object, k)))
        && (fields.is_empty() || fields.matches(object))
}

/// One label of an object, where it is stored (no copy).
fn label<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.get("metadata")?.get("labels")?.get(key)?.as_str()
}

/// An object's string-valued labels, where they are stored (what a
/// selector can match; the label index and the watchers' index read them
/// too).
fn labels(object: &Value) -> impl Iterator<Item = (&str, &str)> {
    object
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    labels(object)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn finalizers(object: &Value) -> Vec<String> {
    string_list(object.pointer("/metadata/finalizers"))
}

/// A string field of a JSON object (`""` when absent or not a string).
fn text(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Sets a `status.conditions` entry by its `type`, keeping its
/// `lastTransitionTime` when its `status` does not change (the rule of
/// every Kubernetes condition).
fn set_condition(obj: &mut Value, mut condition: Value) {
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    let status = o.entry("status").or_insert_with(|| json!({}));
    let Some(status) = status.as_object_mut() else {
        return;
    };
    let conditions = status.entry("conditions").or_insert_with(|| json!([]));
    let Some(conditions) = conditions.as_array_mut() else {
        return;
    };
    let kind = condition.get("type").cloned();
    match conditions
        .iter_mut()
        .find(|c| c.get("type") == kind.as_ref())
    {
        Some(existing) => {
            if existing.get("status") == condition.get("status")
                && let Some(since) = existing.get("lastTransitionTime")
            {
                condition["lastTransitionTime"] = since.clone();
            }
            *existing = condition;
        }
        None => conditions.push(condition),
    }
}

/// Whether anything but metadata (and status, when it is a subresource)
/// changed: the rule for bumping `metadata.generation`.
fn spec_changed(t: &ResourceType, before: &Value, after: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("metadata");
            if t.status_subresource {
                o.remove("status");
            }
        }
        v
    };
    strip(before) != strip(after)
}

/// What the pod strategy decided about a delete.
enum PodDelete {
    /// A graceful deletion is running and this delete does not shorten it:
    /// nothing changes, not even finalizers.
    Pending,
    /// The delete sets this grace period (0: remove now).
    Graceful(i64),
    /// Already terminating with no grace period left.
    NotGraceful,
}

/// The finalizers a delete leaves for the garbage collector (`orphan`,
/// `foregroundDeletion`), if they differ from the object's: explicit
/// options first, then the object's own finalizers, then the default
/// (background: neither), as `deletionFinalizersForGarbageCollection`.
fn gc_finalizers(current: &Value, opts: &DeleteOptions) -> Option<Vec<String>> {
    let existing = finalizers(current);
    let from_finalizers = |orphan_wins: bool| {
        existing.iter().find_map(|f| match f.as_str() {
            gc::ORPHAN => Some(orphan_wins),
            gc::FOREGROUND => Some(!orphan_wins),
            _ => None,
        })
    };
    let orphan = match (opts.orphan_dependents, opts.propagation) {
        (Some(o), _) => o,
        (None, Some(p)) => p == Propagation::Orphan,
        (None, None) => from_finalizers(true).unwrap_or(false),
    };
    let foreground = match (opts.orphan_dependents, opts.propagation) {
        (Some(_), _) => false,
        (None, Some(p)) => p == Propagation::Foreground,
        (None, None) => from_finalizers(false).unwrap_or(false),
    };
    let mut next: Vec<String> = existing
        .iter()
        .filter(|f| *f != gc::ORPHAN && *f != gc::FOREGROUND)
        .cloned()
        .collect();
    if orphan {
        next.push(gc::ORPHAN.to_owned());
    }
    if foreground {
        next.push(gc::FOREGROUND.to_owned());
    }
    let as_set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    (as_set(&existing) != as_set(&next)).then_some(next)
}

/// `markAsDeleting`: a deletion held by finalizers starts now (or keeps an
/// earlier start) with no grace period; the first one bumps `generation`.
fn mark_as_deleting(obj: &mut Value, now: &str) {
    let meta = metadata_mut(obj);
    let started = meta
        .get("deletionTimestamp")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if started.is_none()
        && let Some(g) = meta
            .get("generation")
            .and_then(Value::as_i64)
            .filter(|g| *g > 0)
    {
        meta.insert("generation".into(), json!(g + 1));
    }
    // Same-format RFC 3339 timestamps compare as strings.
    if started.is_none_or(|at| at.as_str() > now) {
        meta.insert("deletionTimestamp".into(), json!(now));
    }
    meta.insert("deletionGracePeriodSeconds".into(), json!(0));
}

fn key(t: &ResourceType, namespace: &str, name: &str) -> ObjKey {
    ObjKey {
        group: t.group.clone(),
        plural: t.plural.clone(),
        namespace: if t.namespaced {
            namespace.to_owned()
        } else {
            String::new()
        },
        name: name.to_owned(),
    }
}

/// All keys of one type, in (namespace, name) order.
fn type_range(t: &ResourceType) -> std::ops::RangeInclusive<ObjKey> {
    let lo = ObjKey {
        group: t.group.clone(),
        plural: t.plural.clone(),
        namespace: String::new(),
        name: String::new(),
    };
    let hi = ObjKey {
        group: t.group.clone(),
        plural: format!("{}\u{0}", t.plural),
        namespace: String::new(),
        name: String::new(),
    };
    lo..=hi
}

/// Checks the body is an object of type `t` (in any served version) and
/// stamps it with the stored `apiVersion` and `kind`.
fn into_object(body: Value, t: &ResourceType) -> Result<Value, ApiError> {
    match body {
        Value::Object(mut o) => {
            if let Some(kind) = o.get("kind").and_then(Value::as_str)
                && !kind.is_empty()
                && kind != t.kind
            {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({kind}) does not match the expected kind ({})",
                    t.kind
                )));
            }
            if let Some(api_version) = o.get("apiVersion").and_then(Value::as_str)
                && !api_version.is_empty()
                && !t.versions.iter().any(|v| t.api_version(v) == api_version)
            {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({api_version}) does not match the expected API version ({})",
                    t.api_version(t.preferred_version())
                )));
            }
            if !o.get("metadata").is_some_and(Value::is_object) {
                o.insert("metadata".into(), Value::Object(Map::new()));
            }
            o.insert(
                "apiVersion".into(),
                json!(t.api_version(t.preferred_version())),
            );
            o.insert("kind".into(), json!(t.kind));
            Ok(Value::Object(o))
        }
        _ => Err(ApiError::bad_request(
            "the request body must be a JSON object",
        )),
    }
}

fn check_namespace(
    meta: &Map<String, Value>,
    t: &ResourceType,
    namespace: &str,
) -> Result<(), ApiError> {
    if t.namespaced
        && let Some(ns) = meta.get("namespace").and_then(Value::as_str)
        && !ns.is_empty()
        && ns != namespace
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let Some(o) = obj.as_object_mut() else {
        unreachable!("made an object above")
    };
    let meta = o
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    match meta.as_object_mut() {
        Some(m) => m,
        None => unreachable!("made an object above"),
    }
}

fn set_or_remove(obj: &mut Value, field: &str, value: Option<Value>) {
    if let Some(o) = obj.as_object_mut() {
        match value {
            Some(v) => o.insert(field.to_owned(), v),
            None => o.remove(field),
        };
    }
}

/// `metadata.<field>` as a string (`""` when absent).
pub(crate) fn str_at(obj: &Value, field: &str) -> String {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn name_mismatch(body: &str, url: &str) -> ApiError {
    ApiError::bad_request(format!(
        "the name of the object ({body}) does not match the name on the URL ({url})"
    ))
}

/// Object names are DNS subdomains (RFC 1123), namespaces DNS labels.
fn validate_name(t: &ResourceType, name: &str) -> Result<(), ApiError> {
    let label_only = t.group.is_empty() && t.plural == "namespaces";
    let max = if label_only { 63 } else { 253 };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !p.starts_with('-')
            && !p.ends_with('-')
    };
    let ok = name.len() <= max
        && if label_only {
            part_ok(name)
        } else {
            name.split('.').all(part_ok)
        };
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            t,
            name,
            "metadata.name",
            &format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-'{}, and must start and end with an alphanumeric character",
                if label_only { "label" } else { "subdomain" },
                if label_only { "" } else { " or '.'" },
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(history: usize, capacity: usize) -> (Store, ResourceType) {
        let store = Store::new(StoreConfig {
            clock: Clock::start(),
            history_limit: history,
            watch_capacity: capacity,
            pod_behaviour: PodBehaviour::default(),
            gc_delay: Duration::ZERO,
            cache_lag: 0,
            continue_expiry: ContinueExpiry {
                after: Duration::from_secs(300),
                writes: None,
            },
            seed: 1,
        });
        let t = store.resolve("", "v1", "configmaps").unwrap();
        (store, t)
    }

    fn create(store: &mut Store, t: &ResourceType, name: &str) -> Value {
        store
            .create(
                t,
                "ns",
                json!({"metadata": {"name": name}}),
                &WriteOptions::default(),
            )
            .unwrap()
    }

    fn watch_all(from: Option<u64>) -> WatchRequest {
        WatchRequest {
            namespace: None,
            labels: LabelSelector::default(),
            fields: FieldSelector::default(),
            from: from.map_or(WatchFrom::Latest, WatchFrom::Version),
            send_initial_events: None,
        }
    }

    #[test]
    fn a_watcher_that_falls_behind_is_closed_not_buffered() {
        let (mut store, t) = store(100, 2);
        let WatchStart::Started { mut live, id, .. } = store.watch(&t, watch_all(None)) else {
            panic!("watch did not start");
        };
        for i in 0..3 {
            create(&mut store, &t, &format!("c{i}"));
        }
        assert!(
            !store.has_watcher(id),
            "the third event overflowed the buffer"
        );
        // What was buffered is still delivered, then the stream ends.
        assert!(live.try_recv().is_ok());
        assert!(live.try_recv().is_ok());
        assert!(matches!(
            live.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn history_is_bounded_and_older_watches_expire() {
        let (mut store, t) = store(2, 10);
        let first = create(&mut store, &t, "c0");
        let first_rv: u64 = str_at(&first, "resourceVersion").parse().unwrap();
        for i in 1..4 {
            create(&mut store, &t, &format!("c{i}"));
        }
        assert_eq!(store.history.len("", "configmaps"), 2);
        assert!(matches!(
            store.watch(&t, watch_all(Some(first_rv))),
            WatchStart::Expired(e) if e.code == 410
        ));
        let recent = store.resource_version() - 1;
        let WatchStart::Started { initial, .. } = store.watch(&t, watch_all(Some(recent))) else {
            panic!("a recent version must be served");
        };
        assert_eq!(initial.len(), 1);
    }

    #[test]
    fn generated_names_are_reproducible_from_the_seed() {
        let names = || {
            let (mut store, t) = store(10, 10);
            (0..3)
                .map(|_| {
                    let o = store
                        .create(
                            &t,
                            "ns",
                            json!({"metadata": {"generateName": "x-"}}),
                            &WriteOptions::default(),
                        )
                        .unwrap();
                    str_at(&o, "name")
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(names(), names());
    }

    #[test]
    fn dry_run_writes_nothing() {
        let (mut store, t) = store(10, 10);
        let before = store.resource_version();
        store
            .create(
                &t,
                "ns",
                json!({"metadata": {"name": "c"}}),
                &WriteOptions {
                    dry_run: true,
                    ..WriteOptions::default()
                },
            )
            .unwrap();
        assert_eq!(store.resource_version(), before);
        assert!(store.get(&t, "ns", "c").is_err());
    }
}
