//! Field ownership, as server-side apply keeps it in `metadata.managedFields`:
//! which field manager set which field of an object, and with which
//! operation (`Apply` or `Update`).
//!
//! The rule it keeps: **an apply never silently overrules another manager.**
//! An apply that would change a field someone else owns is refused with 409
//! Conflict naming every such field, unless it is forced; setting a field to
//! the value it already has shares ownership instead. Updates (create, PUT
//! and the other patch types) never conflict: they take the fields they
//! change away from everyone else.
//!
//! This is the API server's algorithm (structured-merge-diff's `Updater`:
//! compare live and new object, conflicts are other managers' fields among
//! the modified and added ones, removed fields leave every manager, an
//! apply prunes what its manager applied last time and no longer applies),
//! run without OpenAPI schemas:
//!
//! - A field is the path of object keys leading to it. Objects are granular
//!   (each key is its own field); everything else is a leaf: scalars,
//!   `null`, empty objects and **lists, which are atomic**. The API server
//!   merges lists that have merge keys (`containers` by `name`, `finalizers`
//!   as a set) item by item and records items as `k:{…}` / `v:…` entries;
//!   here a list is owned, compared and replaced as one value, which is what
//!   the API server does for lists without merge keys. Maps the schema
//!   declares atomic (`selector.matchLabels`-style structs marked
//!   `x-kubernetes-map-type: atomic`) are granular here.
//! - The fields the API server never tracks are not tracked: `apiVersion`,
//!   `kind`, and `metadata` itself with its `name`, `namespace`, `uid`,
//!   `resourceVersion`, `generation`, `creationTimestamp`, `selfLink`,
//!   `managedFields`; for a kind with a `/status` subresource, `status`
//!   through the main resource and everything but `status` through
//!   `/status`.
//! - Entries are keyed as the API server keys them: an `Apply` entry by
//!   manager and subresource, an `Update` entry by manager, subresource and
//!   apiVersion, so one manager's apply and its updates are different
//!   owners (and can conflict with each other, as on the API server).
//! - At most [`MAX_UPDATE_MANAGERS`] `Update` entries are kept; the oldest
//!   are merged into an `ancient-changes` entry, as the API server does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

/// A field: the object keys leading to it from the object's root.
pub(crate) type Path = Vec<String>;

/// `Update` entries kept before the oldest are merged into
/// [`ANCIENT_CHANGES`] (the API server's `DefaultMaxUpdateManagers`).
pub(crate) const MAX_UPDATE_MANAGERS: usize = 10;

/// The manager the oldest `Update` entries are merged into.
pub(crate) const ANCIENT_CHANGES: &str = "ancient-changes";

/// The manager that owns an object's fields when it is first applied to
/// without any managed fields.
pub(crate) const BEFORE_FIRST_APPLY: &str = "before-first-apply";

/// The longest field manager name the API server accepts.
pub(crate) const MAX_MANAGER_LEN: usize = 128;

/// `metadata` fields the API server never records an owner for.
const UNTRACKED_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "creationTimestamp",
    "selfLink",
    "uid",
    "clusterName",
    "generation",
    "managedFields",
    "resourceVersion",
    // Set only by the server (delete), never through a field manager.
    "deletionGracePeriodSeconds",
];

/// Which part of an object a write may change, and so which fields it can
/// own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The main resource. `status_subresource`: the kind has `/status`, so
    /// `status` is not written (nor owned) through the main resource.
    Main { status_subresource: bool },
    /// The `/status` subresource: only `status`.
    Status,
}

impl Scope {
    /// Whether a field is tracked by writes in this scope.
    pub fn tracks(self, path: &[String]) -> bool {
        let Some(first) = path.first() else {
            return false;
        };
        match first.as_str() {
            "apiVersion" | "kind" => return false,
            "metadata" => match path.get(1) {
                None => return false,
                Some(field) if UNTRACKED_METADATA.contains(&field.as_str()) => return false,
                Some(_) => {}
            },
            _ => {}
        }
        match self {
            Self::Main { status_subresource } => !(status_subresource && first == "status"),
            Self::Status => first == "status",
        }
    }
}

/// Who writes: the field manager and the request it writes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldManager {
    /// The `fieldManager` query parameter, else derived from the User-Agent.
    pub name: String,
    /// The request's `group/version` (what an `Update` entry records).
    pub api_version: String,
    /// `"status"` for the `/status` subresource, else `""`.
    pub subresource: String,
    /// What this write may change.
    pub scope: Scope,
}

impl FieldManager {
    /// A manager writing the main resource (`status_only`: its `/status`) of
    /// a kind that has (`status_subresource`) or has not a `/status`.
    pub fn new(
        name: impl Into<String>,
        api_version: impl Into<String>,
        status_subresource: bool,
        status_only: bool,
    ) -> Self {
        let (subresource, scope) = if status_only {
            ("status", Scope::Status)
        } else {
            ("", Scope::Main { status_subresource })
        };
        Self {
            name: name.into(),
            api_version: api_version.into(),
            subresource: subresource.to_owned(),
            scope,
        }
    }

    /// Whether `entry` is this manager's entry for `operation`.
    fn owns_entry(&self, entry: &Entry, operation: Operation) -> bool {
        entry.operation == operation
            && entry.manager == self.name
            && entry.subresource == self.subresource
            && (operation == Operation::Apply || entry.api_version == self.api_version)
    }
}

/// The field manager the API server records for a request without
/// `fieldManager`: the User-Agent up to its first `/`, printable characters
/// only, at most [`MAX_MANAGER_LEN`] bytes (`kubectl/v1.32.0 (linux/amd64)`
/// is `kubectl`; a client that sends no User-Agent, like kube-rs, is `""`).
pub(crate) fn manager_from_user_agent(user_agent: &str) -> String {
    let prefix = user_agent.split('/').next().unwrap_or_default();
    let mut out = String::new();
    for c in prefix.chars().filter(|c| is_printable(*c)) {
        if out.len() + c.len_utf8() > MAX_MANAGER_LEN {
            break;
        }
        out.push(c);
    }
    out
}

/// Why a `fieldManager` query parameter is refused (`None`: it is valid):
/// the API server's `ValidateFieldManager` rules.
pub(crate) fn invalid_manager(name: &str) -> Option<String> {
    if name.len() > MAX_MANAGER_LEN {
        return Some(format!(
            "Too long: may not be more than {MAX_MANAGER_LEN} bytes"
        ));
    }
    name.char_indices()
        .find(|(_, c)| !is_printable(*c))
        .map(|(i, c)| {
            format!(
                "Invalid value: {name:?}: invalid character U+{:04X} (at position {i})",
                u32::from(c)
            )
        })
}

/// Go's `unicode.IsPrint`, closely enough: no control characters and no
/// white space but the ASCII space.
fn is_printable(c: char) -> bool {
    c == ' ' || !(c.is_control() || c.is_whitespace())
}

/// The operation that last changed an entry's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Operation {
    /// Server-side apply.
    Apply,
    /// Create, PUT, or a JSON, merge or strategic merge patch.
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "Apply",
            Self::Update => "Update",
        }
    }
}

/// A set of fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSet(BTreeSet<Path>);

impl FieldSet {
    /// The fields an applied configuration sets: its leaves. A `null`
    /// removes a field rather than setting it, and an empty object sets
    /// nothing, so neither is owned (structured-merge-diff's `ToFieldSet`).
    pub fn applied_by(config: &Value) -> Self {
        fn walk(map: &Map<String, Value>, path: &mut Path, out: &mut FieldSet) {
            for (key, child) in map {
                path.push(key.clone());
                match child {
                    Value::Null => {}
                    Value::Object(m) if m.is_empty() => {}
                    Value::Object(m) => walk(m, path, out),
                    _ => {
                        out.0.insert(path.clone());
                    }
                }
                path.pop();
            }
        }
        let mut out = Self::default();
        if let Some(map) = config.as_object() {
            walk(map, &mut Vec::new(), &mut out);
        }
        out
    }

    /// Whether the set holds no field.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds a field.
    pub fn insert(&mut self, path: Path) {
        self.0.insert(path);
    }

    /// The fields in either set.
    pub fn union(&self, other: &Self) -> Self {
        Self(self.0.union(&other.0).cloned().collect())
    }

    /// The fields in `self` but not in `other`.
    pub fn difference(&self, other: &Self) -> Self {
        Self(self.0.difference(&other.0).cloned().collect())
    }

    /// The fields in both sets.
    pub fn intersection(&self, other: &Self) -> Self {
        Self(self.0.intersection(&other.0).cloned().collect())
    }

    /// Only the fields `scope` tracks.
    pub fn within(mut self, scope: Scope) -> Self {
        self.0.retain(|p| scope.tracks(p));
        self
    }

    /// Whether a field strictly below `path` is in the set.
    fn has_descendant_of(&self, path: &[String]) -> bool {
        self.0
            .range(path.to_vec()..)
            .skip_while(|p| p.as_slice() == path)
            .take_while(|p| p.starts_with(path))
            .next()
            .is_some()
    }

    /// The fields in the API server's order (structured-merge-diff's
    /// `Set.Iterate`): at each level the fields ending there, by name, then
    /// the deeper ones, level by level.
    pub fn ordered(&self) -> Vec<Path> {
        fn walk(node: &Node, prefix: &mut Path, out: &mut Vec<Path>) {
            for (key, child) in &node.children {
                if child.member {
                    let mut p = prefix.clone();
                    p.push(key.clone());
                    out.push(p);
                }
            }
            for (key, child) in &node.children {
                prefix.push(key.clone());
                walk(child, prefix, out);
                prefix.pop();
            }
        }
        let mut out = Vec::with_capacity(self.0.len());
        walk(&Node::of(self), &mut Vec::new(), &mut out);
        out
    }

    /// The set in the `FieldsV1` format: `{"f:spec": {".": {}, "f:x": {}}}`,
    /// where `"."` marks a field that is itself owned besides its children.
    pub fn to_fields_v1(&self) -> Value {
        fn encode(node: &Node) -> Value {
            let mut map = Map::new();
            if node.member && !node.children.is_empty() {
                map.insert(".".to_owned(), json!({}));
            }
            for (key, child) in &node.children {
                map.insert(format!("f:{key}"), encode(child));
            }
            Value::Object(map)
        }
        encode(&Node::of(self))
    }

    /// Reads the `FieldsV1` format. A list item (`k:{…}`, `v:…`, `i:…`)
    /// counts as its whole list, since lists are atomic here.
    pub fn from_fields_v1(value: &Value) -> Result<Self, String> {
        fn decode(value: &Value, path: &mut Path, out: &mut FieldSet) -> Result<(), String> {
            let map = value
                .as_object()
                .ok_or_else(|| format!("expected an object at {}", path_string(path)))?;
            if map.is_empty() && !path.is_empty() {
                out.0.insert(path.clone());
            }
            for (key, child) in map {
                if key == "." {
                    if !path.is_empty() {
                        out.0.insert(path.clone());
                    }
                } else if let Some(field) = key.strip_prefix("f:") {
                    path.push(field.to_owned());
                    decode(child, path, out)?;
                    path.pop();
                } else if ["k:", "v:", "i:"].iter().any(|p| key.starts_with(p)) {
                    if !path.is_empty() {
                        out.0.insert(path.clone());
                    }
                } else {
                    return Err(format!("unknown field path element {key:?}"));
                }
            }
            Ok(())
        }
        let mut out = Self::default();
        decode(value, &mut Vec::new(), &mut out)?;
        Ok(out)
    }
}

/// A field set as a tree, for the `FieldsV1` format and the API server's
/// iteration order.
#[derive(Default)]
struct Node {
    member: bool,
    children: BTreeMap<String, Node>,
}

impl Node {
    fn of(set: &FieldSet) -> Self {
        let mut root = Self::default();
        for path in &set.0 {
            let mut node = &mut root;
            for key in path {
                node = node.children.entry(key.clone()).or_default();
            }
            node.member = true;
        }
        root
    }
}

/// A field as the API server prints it: `.spec.holderIdentity`.
pub(crate) fn path_string(path: &[String]) -> String {
    path.iter().fold(String::new(), |mut s, key| {
        s.push('.');
        s.push_str(key);
        s
    })
}

/// What changed between two versions of an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Comparison {
    /// Fields present only in the new object (with every field under them).
    pub added: FieldSet,
    /// Fields present only in the old object (with every field under them).
    pub removed: FieldSet,
    /// Leaves present in both with different values.
    pub modified: FieldSet,
}

impl Comparison {
    /// Only the fields `scope` tracks.
    fn within(self, scope: Scope) -> Self {
        Self {
            added: self.added.within(scope),
            removed: self.removed.within(scope),
            modified: self.modified.within(scope),
        }
    }

    /// The fields whose value a write sets: modified or added.
    fn changed(&self) -> FieldSet {
        self.modified.union(&self.added)
    }

    fn is_same(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.modified.is_empty()
    }
}

/// Compares two objects field by field (structured-merge-diff's `Compare`
/// with granular objects and atomic lists).
pub(crate) fn compare(old: &Value, new: &Value) -> Comparison {
    let mut out = Comparison::default();
    compare_children(old, new, &mut Vec::new(), &mut out);
    out
}

fn compare_children(old: &Value, new: &Value, path: &mut Path, out: &mut Comparison) {
    let empty = Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    for (key, o) in old {
        path.push(key.clone());
        compare_at(Some(o), new.get(key), path, out);
        path.pop();
    }
    for (key, n) in new {
        if !old.contains_key(key) {
            path.push(key.clone());
            compare_at(None, Some(n), path, out);
            path.pop();
        }
    }
}

fn compare_at(old: Option<&Value>, new: Option<&Value>, path: &mut Path, out: &mut Comparison) {
    match (old, new) {
        (None, None) => {}
        (None, Some(n)) => {
            out.added.insert(path.clone());
            compare_children(&Value::Null, n, path, out);
        }
        (Some(o), None) => {
            out.removed.insert(path.clone());
            compare_children(o, &Value::Null, path, out);
        }
        (Some(o), Some(n)) if o.is_object() && n.is_object() => {
            compare_children(o, n, path, out);
        }
        (Some(o), Some(n)) => {
            // A leaf on at least one side: one field whose value changed,
            // and whatever an object on the other side held.
            if o != n {
                out.modified.insert(path.clone());
            }
            compare_children(o, n, path, out);
        }
    }
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    manager: String,
    operation: Operation,
    api_version: String,
    subresource: String,
    /// RFC 3339, whole seconds, as the API server writes it.
    time: Option<String>,
    fields: FieldSet,
}

impl Entry {
    /// The manager as conflict messages name it (the API server's
    /// `printManager`): `"m"`, `"m" with subresource "status"`, and for an
    /// update `… using coordination.k8s.io/v1`.
    fn describe(&self) -> String {
        let mut out = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            let _ = write!(out, " with subresource {:?}", self.subresource);
        }
        if self.operation == Operation::Update {
            let _ = write!(out, " using {}", self.api_version);
        }
        out
    }

    /// How the API server sorts entries: Apply before Update, then older
    /// first, then by manager, apiVersion and subresource.
    fn sort_key(&self) -> (Operation, i64, &str, &str, &str) {
        (
            self.operation,
            self.time.as_deref().map_or(0, seconds),
            &self.manager,
            &self.api_version,
            &self.subresource,
        )
    }

    fn to_value(&self) -> Value {
        let mut entry = Map::new();
        if !self.manager.is_empty() {
            entry.insert("manager".into(), json!(self.manager));
        }
        entry.insert("operation".into(), json!(self.operation.as_str()));
        if !self.api_version.is_empty() {
            entry.insert("apiVersion".into(), json!(self.api_version));
        }
        if let Some(time) = &self.time {
            entry.insert("time".into(), json!(time));
        }
        entry.insert("fieldsType".into(), json!("FieldsV1"));
        entry.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if !self.subresource.is_empty() {
            entry.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(entry)
    }

    fn from_value(value: &Value) -> Result<Self, String> {
        let text = |field: &str| {
            value
                .get(field)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let operation = match value.get("operation").and_then(Value::as_str) {
            Some("Apply") => Operation::Apply,
            Some("Update") => Operation::Update,
            other => return Err(format!("invalid operation {other:?}")),
        };
        let fields_type = text("fieldsType");
        if fields_type != "FieldsV1" {
            return Err(format!("invalid fieldsType {fields_type:?}"));
        }
        let fields = FieldSet::from_fields_v1(value.get("fieldsV1").unwrap_or(&json!({})))?;
        Ok(Self {
            manager: text("manager"),
            operation,
            api_version: text("apiVersion"),
            subresource: text("subresource"),
            time: value.get("time").and_then(Value::as_str).map(str::to_owned),
            fields,
        })
    }
}

fn seconds(time: &str) -> i64 {
    time.parse::<jiff::Timestamp>()
        .map_or(0, jiff::Timestamp::as_second)
}

/// An object's field ownership: its decoded `metadata.managedFields`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ManagedFields {
    entries: Vec<Entry>,
}

impl ManagedFields {
    /// Decodes a `managedFields` list.
    pub fn decode(list: &Value) -> Result<Self, String> {
        let items = list.as_array().ok_or("managedFields is not a list")?;
        let entries = items
            .iter()
            .map(Entry::from_value)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { entries })
    }

    /// The ownership recorded in a stored object (none if it cannot be
    /// read).
    pub fn of(object: &Value) -> Self {
        object
            .pointer("/metadata/managedFields")
            .and_then(|list| Self::decode(list).ok())
            .unwrap_or_default()
    }

    /// The ownership a non-apply write starts from (the API server's
    /// `decodeLiveOrNew`): the written object's own `managedFields` when it
    /// carries readable, non-empty ones (a client may set them directly),
    /// none when it resets them (`[]` or `[{}]`), else the live object's.
    pub fn for_write(live: Option<&Value>, new: &Value) -> Self {
        let from_live = || live.map(Self::of).unwrap_or_default();
        match new.pointer("/metadata/managedFields") {
            None | Some(Value::Null) => from_live(),
            Some(Value::Array(items))
                if items.is_empty()
                    || (items.len() == 1 && items[0].as_object().is_some_and(Map::is_empty)) =>
            {
                Self::default()
            }
            Some(list) => match Self::decode(list) {
                Ok(managed) if !managed.entries.is_empty() => managed,
                _ => from_live(),
            },
        }
    }

    /// Writes the entries, sorted as the API server sorts them, into the
    /// object's `metadata.managedFields` (removed when there are none).
    pub fn store_in(&self, object: &mut Value) {
        let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
            return;
        };
        if self.entries.is_empty() {
            meta.remove("managedFields");
            return;
        }
        let mut entries: Vec<&Entry> = self.entries.iter().collect();
        entries.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.into_iter().map(Entry::to_value).collect()),
        );
    }

    /// The fields `manager` owns through `operation`, if it has an entry.
    #[cfg(test)]
    fn owned(&self, manager: &str, operation: Operation) -> Option<&FieldSet> {
        self.entries
            .iter()
            .find(|e| e.manager == manager && e.operation == operation)
            .map(|e| &e.fields)
    }

    fn all_fields(&self) -> FieldSet {
        self.entries
            .iter()
            .fold(FieldSet::default(), |acc, e| acc.union(&e.fields))
    }

    fn tidy(&mut self) {
        self.entries.retain(|e| !e.fields.is_empty());
        self.cap_updaters();
    }

    /// Merges the oldest `Update` entries into `ancient-changes` (one per
    /// apiVersion) while there are more than [`MAX_UPDATE_MANAGERS`].
    fn cap_updaters(&mut self) {
        loop {
            let updaters = self
                .entries
                .iter()
                .filter(|e| e.operation == Operation::Update)
                .count();
            if updaters <= MAX_UPDATE_MANAGERS {
                return;
            }
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.operation == Operation::Update && e.manager != ANCIENT_CHANGES)
                .min_by_key(|(_, e)| (e.time.as_deref().map_or(0, seconds), e.manager.clone()))
                .map(|(i, _)| i)
            else {
                return;
            };
            let old = self.entries.remove(oldest);
            match self.entries.iter_mut().find(|e| {
                e.operation == Operation::Update
                    && e.manager == ANCIENT_CHANGES
                    && e.api_version == old.api_version
            }) {
                Some(bucket) => {
                    bucket.fields = bucket.fields.union(&old.fields);
                    if bucket.time.as_deref().map_or(0, seconds)
                        < old.time.as_deref().map_or(0, seconds)
                    {
                        bucket.time = old.time;
                    }
                }
                None => self.entries.push(Entry {
                    manager: ANCIENT_CHANGES.to_owned(),
                    subresource: String::new(),
                    ..old
                }),
            }
        }
    }
}

/// An apply refused because it would change fields other managers own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conflicts {
    /// (manager as printed, field as printed), grouped by manager.
    pub items: Vec<(String, String)>,
}

impl Conflicts {
    /// The Status message, in the API server's words:
    /// `Apply failed with 1 conflict: conflict with "m": .spec.x`, or
    /// `Apply failed with 2 conflicts: conflicts with "m":\n- .spec.x\n- .spec.y`.
    pub fn message(&self) -> String {
        if let [(manager, field)] = self.items.as_slice() {
            return format!("Apply failed with 1 conflict: conflict with {manager}: {field}");
        }
        let mut lines: Vec<String> = Vec::new();
        let mut current: Option<&str> = None;
        for (manager, field) in &self.items {
            if current != Some(manager.as_str()) {
                lines.push(format!("conflicts with {manager}:"));
                current = Some(manager);
            }
            lines.push(format!("- {field}"));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            self.items.len(),
            lines.join("\n")
        )
    }
}

/// What an update (create, PUT, or a non-apply patch) does to ownership:
/// the writer's `Update` entry takes every field the write set (modified
/// or added), which leaves every other entry, and removed fields leave
/// everyone. Never conflicts.
pub(crate) fn update(
    live: Option<&Value>,
    new: &Value,
    mut managed: ManagedFields,
    who: &FieldManager,
    now: &str,
) -> ManagedFields {
    let cmp = compare(live.unwrap_or(&Value::Null), new).within(who.scope);
    let changed = cmp.changed();
    for entry in &mut managed.entries {
        entry.fields = entry.fields.difference(&changed).difference(&cmp.removed);
    }
    if !changed.is_empty() {
        match managed
            .entries
            .iter_mut()
            .find(|e| who.owns_entry(e, Operation::Update))
        {
            Some(entry) => {
                entry.fields = entry.fields.union(&changed);
                entry.time = Some(now.to_owned());
            }
            None => managed.entries.push(Entry {
                manager: who.name.clone(),
                operation: Operation::Update,
                api_version: who.api_version.clone(),
                subresource: who.subresource.clone(),
                time: Some(now.to_owned()),
                fields: changed,
            }),
        }
    }
    managed.tidy();
    managed
}

/// Server-side apply of `config` over `live` (`None`: the object does not
/// exist yet). Returns the object to store and its new ownership, or the
/// conflicts that refuse the apply (nothing changes then).
///
/// The applied configuration is merged over the live object (objects key by
/// key, leaves and lists replaced, `null` removes). Fields this manager
/// applied last time, leaves out now and nobody else owns are removed. The
/// fields the merge changes must not be owned by another entry unless
/// `force`, which moves them to this manager. This manager's `Apply` entry
/// then owns exactly what the configuration sets, including fields whose
/// value did not change (shared with their other owners).
pub(crate) fn apply(
    live: Option<&Value>,
    config: &Value,
    mut managed: ManagedFields,
    who: &FieldManager,
    force: bool,
    now: &str,
) -> Result<(Value, ManagedFields), Conflicts> {
    let empty = Value::Object(Map::new());
    let live_object = live.unwrap_or(&empty);
    if live.is_some() && managed.entries.is_empty() {
        // An object nobody manages (its managedFields were reset): its
        // fields belong to a pseudo-manager, so a first apply conflicts
        // with them as it would with their real writer.
        let fields = FieldSet::applied_by(live_object).within(who.scope);
        if !fields.is_empty() {
            managed.entries.push(Entry {
                manager: BEFORE_FIRST_APPLY.to_owned(),
                operation: Operation::Update,
                api_version: who.api_version.clone(),
                subresource: who.subresource.clone(),
                time: None,
                fields,
            });
        }
    }

    let mut merged = live_object.clone();
    json_patch::merge(&mut merged, config);
    let applied = FieldSet::applied_by(config).within(who.scope);
    let previous = managed
        .entries
        .iter()
        .position(|e| who.owns_entry(e, Operation::Apply))
        .map(|i| managed.entries.remove(i));

    // Prune: what this manager applied before and no longer applies goes,
    // unless another entry (or this configuration, deeper down) still owns
    // it.
    if let Some(previous) = &previous {
        let kept = managed.all_fields().union(&applied);
        for path in previous.fields.difference(&kept).ordered() {
            if !kept.has_descendant_of(&path) {
                remove_path(&mut merged, &path);
            }
        }
    }

    let cmp = compare(live_object, &merged).within(who.scope);
    let changed = cmp.changed();
    let mut conflicts = Vec::new();
    let mut owners: Vec<&Entry> = managed.entries.iter().collect();
    owners.sort_by(|a, b| {
        (&a.manager, a.operation, &a.api_version, &a.subresource).cmp(&(
            &b.manager,
            b.operation,
            &b.api_version,
            &b.subresource,
        ))
    });
    for entry in owners {
        for path in entry.fields.intersection(&changed).ordered() {
            conflicts.push((entry.describe(), path_string(&path)));
        }
    }
    if !force && !conflicts.is_empty() {
        return Err(Conflicts { items: conflicts });
    }

    for entry in &mut managed.entries {
        entry.fields = entry.fields.difference(&changed).difference(&cmp.removed);
    }
    let time = match previous {
        Some(p) if cmp.is_same() && p.fields == applied => p.time,
        _ => Some(now.to_owned()),
    };
    managed.entries.push(Entry {
        manager: who.name.clone(),
        operation: Operation::Apply,
        api_version: who.api_version.clone(),
        subresource: who.subresource.clone(),
        time,
        fields: applied,
    });
    managed.tidy();
    Ok((merged, managed))
}

/// Removes one field from an object (nothing if it is not there).
fn remove_path(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = object;
    for key in parents {
        match node.get_mut(key) {
            Some(child) => node = child,
            None => return,
        }
    }
    if let Some(map) = node.as_object_mut() {
        map.remove(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";
    const LATER: &str = "2026-01-01T00:01:00Z";

    fn lease_manager(name: &str) -> FieldManager {
        FieldManager::new(name, "coordination.k8s.io/v1", false, false)
    }

    fn path(s: &str) -> Path {
        s.trim_start_matches('.')
            .split('.')
            .map(str::to_owned)
            .collect()
    }

    fn set(paths: &[&str]) -> FieldSet {
        FieldSet(paths.iter().map(|p| path(p)).collect())
    }

    fn lease(spec: &Value) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "l", "namespace": "ns", "uid": "u", "resourceVersion": "7"},
            "spec": spec,
        })
    }

    #[test]
    fn applied_fields_are_the_leaves_of_the_configuration_without_nulls_or_empty_objects() {
        let config = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": {"app": "x"}, "annotations": {}},
            "data": {"a": "1", "gone": null},
            "list": [1, 2],
        });
        let applied = FieldSet::applied_by(&config).within(Scope::Main {
            status_subresource: false,
        });
        assert_eq!(applied, set(&[".data.a", ".list", ".metadata.labels.app"]));
    }

    #[test]
    fn comparison_reports_added_maps_with_their_leaves_and_lists_as_one_field() {
        let old = json!({"spec": {"a": 1, "list": [1], "gone": {"x": 1}}});
        let new = json!({"spec": {"a": 2, "list": [1, 2], "new": {"y": 1}}});
        let cmp = compare(&old, &new);
        assert_eq!(cmp.modified, set(&[".spec.a", ".spec.list"]));
        assert_eq!(cmp.added, set(&[".spec.new", ".spec.new.y"]));
        assert_eq!(cmp.removed, set(&[".spec.gone", ".spec.gone.x"]));
        assert!(compare(&old, &old).is_same());
    }

    #[test]
    fn scope_leaves_out_what_the_api_server_never_tracks() {
        let main = Scope::Main {
            status_subresource: true,
        };
        assert!(!main.tracks(&path(".metadata.resourceVersion")));
        assert!(!main.tracks(&path(".metadata")));
        assert!(!main.tracks(&path(".kind")));
        assert!(!main.tracks(&path(".status.phase")));
        assert!(main.tracks(&path(".metadata.labels.app")));
        assert!(main.tracks(&path(".spec.x")));
        assert!(Scope::Status.tracks(&path(".status.phase")));
        assert!(!Scope::Status.tracks(&path(".spec.x")));
        assert!(
            Scope::Main {
                status_subresource: false
            }
            .tracks(&path(".status.phase"))
        );
    }

    #[test]
    fn fields_v1_round_trips_and_marks_owned_parents_with_a_dot() {
        let fields = set(&[
            ".metadata.labels",
            ".metadata.labels.app",
            ".spec.holderIdentity",
        ]);
        let v1 = fields.to_fields_v1();
        assert_eq!(
            v1,
            json!({
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {"f:holderIdentity": {}},
            })
        );
        assert_eq!(FieldSet::from_fields_v1(&v1).unwrap(), fields);
    }

    #[test]
    fn fields_v1_list_items_from_a_real_server_count_as_the_whole_list() {
        let v1 = json!({"f:metadata": {"f:finalizers": {".": {}, "v:\"a\"": {}}}});
        assert_eq!(
            FieldSet::from_fields_v1(&v1).unwrap(),
            set(&[".metadata.finalizers"])
        );
        assert!(FieldSet::from_fields_v1(&json!({"x:bad": {}})).is_err());
    }

    #[test]
    fn ordered_lists_a_levels_leaves_before_deeper_fields() {
        let fields = set(&[".spec.b.c", ".spec.d", ".spec.a"]);
        let printed: Vec<String> = fields.ordered().iter().map(|p| path_string(p)).collect();
        assert_eq!(printed, [".spec.a", ".spec.d", ".spec.b.c"]);
    }

    #[test]
    fn a_different_value_in_a_field_another_applier_owns_conflicts() {
        let a = lease_manager("a");
        let (obj, managed) = apply(
            None,
            &lease(&json!({"holderIdentity": "a"})),
            ManagedFields::default(),
            &a,
            false,
            NOW,
        )
        .unwrap();
        let b = lease_manager("b");
        let err = apply(
            Some(&obj),
            &lease(&json!({"holderIdentity": "b"})),
            managed,
            &b,
            false,
            NOW,
        )
        .unwrap_err();
        assert_eq!(
            err.items,
            [("\"a\"".to_owned(), ".spec.holderIdentity".to_owned())]
        );
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"a\": .spec.holderIdentity"
        );
    }

    #[test]
    fn the_same_value_is_shared_and_force_takes_a_field_over() {
        let (a, b) = (lease_manager("a"), lease_manager("b"));
        let config = lease(&json!({"holderIdentity": "x"}));
        let (obj, managed) =
            apply(None, &config, ManagedFields::default(), &a, false, NOW).unwrap();
        let (obj, managed) = apply(Some(&obj), &config, managed, &b, false, NOW).unwrap();
        let shared = set(&[".spec.holderIdentity"]);
        assert_eq!(managed.owned("a", Operation::Apply), Some(&shared));
        assert_eq!(managed.owned("b", Operation::Apply), Some(&shared));

        let (obj, managed) = apply(
            Some(&obj),
            &lease(&json!({"holderIdentity": "b"})),
            managed,
            &b,
            true,
            NOW,
        )
        .unwrap();
        assert_eq!(obj["spec"]["holderIdentity"], "b");
        assert_eq!(managed.owned("a", Operation::Apply), None);
        assert_eq!(managed.owned("b", Operation::Apply), Some(&shared));
    }

    #[test]
    fn an_update_takes_the_fields_it_changes_and_never_conflicts() {
        let a = lease_manager("a");
        let (obj, managed) = apply(
            None,
            &lease(&json!({"holderIdentity": "a", "leaseDurationSeconds": 5})),
            ManagedFields::default(),
            &a,
            false,
            NOW,
        )
        .unwrap();
        let mut next = obj.clone();
        next["spec"]["holderIdentity"] = json!("u");
        let managed = update(Some(&obj), &next, managed, &lease_manager("u"), LATER);
        assert_eq!(
            managed.owned("a", Operation::Apply),
            Some(&set(&[".spec.leaseDurationSeconds"]))
        );
        assert_eq!(
            managed.owned("u", Operation::Update),
            Some(&set(&[".spec.holderIdentity"]))
        );
        // A later apply of another value conflicts with the updater, named
        // with its apiVersion as the API server names updaters.
        let err = apply(
            Some(&next),
            &lease(&json!({"holderIdentity": "a", "leaseDurationSeconds": 5})),
            managed,
            &a,
            false,
            NOW,
        )
        .unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"u\" using coordination.k8s.io/v1: .spec.holderIdentity"
        );
    }

    #[test]
    fn removed_fields_leave_every_owner() {
        let a = lease_manager("a");
        let (obj, managed) = apply(
            None,
            &lease(&json!({"holderIdentity": "a", "renewTime": "t"})),
            ManagedFields::default(),
            &a,
            false,
            NOW,
        )
        .unwrap();
        let mut next = obj.clone();
        next["spec"] = json!({"renewTime": "t"});
        let managed = update(Some(&obj), &next, managed, &lease_manager("r"), LATER);
        assert_eq!(
            managed.owned("a", Operation::Apply),
            Some(&set(&[".spec.renewTime"]))
        );
        assert_eq!(managed.owned("r", Operation::Update), None);
    }

    #[test]
    fn an_apply_that_drops_a_field_removes_it_unless_someone_else_owns_it() {
        let (a, b) = (lease_manager("a"), lease_manager("b"));
        let (obj, managed) = apply(
            None,
            &lease(&json!({"holderIdentity": "a", "renewTime": "t", "leaseDurationSeconds": 5})),
            ManagedFields::default(),
            &a,
            false,
            NOW,
        )
        .unwrap();
        // b shares leaseDurationSeconds by applying the same value.
        let (obj, managed) = apply(
            Some(&obj),
            &lease(&json!({"leaseDurationSeconds": 5})),
            managed,
            &b,
            false,
            NOW,
        )
        .unwrap();
        let (obj, managed) = apply(
            Some(&obj),
            &lease(&json!({"holderIdentity": "a"})),
            managed,
            &a,
            false,
            LATER,
        )
        .unwrap();
        assert_eq!(
            obj["spec"],
            json!({"holderIdentity": "a", "leaseDurationSeconds": 5})
        );
        assert_eq!(
            managed.owned("a", Operation::Apply),
            Some(&set(&[".spec.holderIdentity"]))
        );
    }

    #[test]
    fn several_conflicts_are_listed_by_manager() {
        let (a, b, c) = (lease_manager("a"), lease_manager("b"), lease_manager("c"));
        let (obj, managed) = apply(
            None,
            &lease(&json!({"holderIdentity": "a", "renewTime": "t1"})),
            ManagedFields::default(),
            &a,
            false,
            NOW,
        )
        .unwrap();
        let (obj, managed) = apply(
            Some(&obj),
            &lease(&json!({"leaseDurationSeconds": 3})),
            managed,
            &b,
            false,
            NOW,
        )
        .unwrap();
        let err = apply(
            Some(&obj),
            &lease(&json!({"holderIdentity": "c", "renewTime": "t2", "leaseDurationSeconds": 9})),
            managed,
            &c,
            false,
            NOW,
        )
        .unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 3 conflicts: conflicts with \"a\":\n- .spec.holderIdentity\n- .spec.renewTime\nconflicts with \"b\":\n- .spec.leaseDurationSeconds"
        );
    }

    #[test]
    fn a_first_apply_to_an_unmanaged_object_conflicts_with_before_first_apply() {
        let obj = lease(&json!({"holderIdentity": "old"}));
        let err = apply(
            Some(&obj),
            &lease(&json!({"holderIdentity": "new"})),
            ManagedFields::default(),
            &lease_manager("a"),
            false,
            NOW,
        )
        .unwrap_err();
        assert_eq!(
            err.items[0].0,
            "\"before-first-apply\" using coordination.k8s.io/v1"
        );
    }

    #[test]
    fn update_entries_beyond_the_cap_merge_into_ancient_changes() {
        let mut obj = lease(&json!({}));
        let mut managed = ManagedFields::default();
        for i in 0..(MAX_UPDATE_MANAGERS + 2) {
            let mut next = obj.clone();
            next["spec"][format!("f{i}")] = json!(i);
            let at = format!("2026-01-01T00:00:{i:02}Z");
            managed = update(
                Some(&obj),
                &next,
                managed,
                &lease_manager(&format!("m{i}")),
                &at,
            );
            obj = next;
        }
        assert_eq!(managed.entries.len(), MAX_UPDATE_MANAGERS);
        assert_eq!(
            managed.owned(ANCIENT_CHANGES, Operation::Update),
            Some(&set(&[".spec.f0", ".spec.f1", ".spec.f2"]))
        );
        assert_eq!(managed.owned("m0", Operation::Update), None);
    }

    #[test]
    fn managed_fields_render_in_the_api_server_shape_and_order() {
        let a = lease_manager("a");
        let (obj, managed) = apply(
            None,
            &lease(&json!({"holderIdentity": "a"})),
            ManagedFields::default(),
            &a,
            false,
            NOW,
        )
        .unwrap();
        let mut next = obj.clone();
        next["spec"]["leaseTransitions"] = json!(1);
        let managed = update(Some(&obj), &next, managed, &lease_manager(""), LATER);
        managed.store_in(&mut next);
        assert_eq!(
            next["metadata"]["managedFields"],
            json!([
                {"manager": "a", "operation": "Apply", "apiVersion": "coordination.k8s.io/v1",
                 "time": NOW, "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {"f:holderIdentity": {}}}},
                {"operation": "Update", "apiVersion": "coordination.k8s.io/v1",
                 "time": LATER, "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {"f:leaseTransitions": {}}}},
            ])
        );
        assert_eq!(ManagedFields::of(&next), managed);
    }

    #[test]
    fn a_write_may_replace_or_reset_managed_fields() {
        let live = json!({"metadata": {"managedFields": [
            {"manager": "a", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:data": {"f:x": {}}}}
        ]}});
        let live_managed = ManagedFields::of(&live);
        assert_eq!(live_managed.entries.len(), 1);
        assert_eq!(
            ManagedFields::for_write(Some(&live), &json!({"metadata": {}})),
            live_managed
        );
        assert_eq!(
            ManagedFields::for_write(Some(&live), &json!({"metadata": {"managedFields": [{}]}})),
            ManagedFields::default()
        );
        assert_eq!(
            ManagedFields::for_write(Some(&live), &json!({"metadata": {"managedFields": "junk"}})),
            live_managed
        );
    }

    #[test]
    fn managers_come_from_the_user_agent_and_are_validated() {
        assert_eq!(
            manager_from_user_agent("kubectl/v1.32.0 (linux/amd64) kubernetes/abc"),
            "kubectl"
        );
        assert_eq!(manager_from_user_agent(""), "");
        assert_eq!(
            manager_from_user_agent(&"x".repeat(200)).len(),
            MAX_MANAGER_LEN
        );
        assert!(invalid_manager("kube-lease-x").is_none());
        assert!(invalid_manager(&"x".repeat(129)).is_some());
        assert!(invalid_manager("a\nb").unwrap().contains("U+000A"));
    }
}
