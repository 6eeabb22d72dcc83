//! The simulated garbage collector: `ownerReferences` acted on as
//! kube-controller-manager's garbage collector does.
//!
//! A dependent whose owners are all gone (absent, or the name now holds
//! another uid) is deleted (background propagation); one that keeps a living
//! owner only loses the references to the dead ones. An owner deleted with
//! `propagationPolicy: Foreground` carries the `foregroundDeletion`
//! finalizer: its dependents are deleted, and the finalizer is removed (so
//! the owner goes) once no dependent with `blockOwnerDeletion: true` is
//! left, terminating pods included. An owner deleted with `Orphan` carries
//! the `orphan` finalizer: its dependents lose their reference to it, then
//! the finalizer is removed. The rule it keeps: **the collector acts only
//! on what it finds in the store when its turn comes** (it runs
//! [`FakeKubeBuilder::garbage_collection_delay`] after the change that
//! queued the work, never inside the request that made it), so a client
//! sees the same window between "owner gone" and "dependents gone" as on a
//! cluster.
//!
//! [`FakeKubeBuilder::garbage_collection_delay`]: crate::kube::FakeKubeBuilder::garbage_collection_delay

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::agenda::Action;
use super::{DeleteOptions, ObjKey, Ownership, Store, finalizers, str_at, text};
use crate::kube::managed_fields::FieldManager;

/// The finalizer of an owner whose dependents are being orphaned.
pub(crate) const ORPHAN: &str = "orphan";
/// The finalizer of an owner waiting for its dependents (foreground deletion).
pub(crate) const FOREGROUND: &str = "foregroundDeletion";

/// The field manager the collector's writes are recorded under.
const MANAGER: &str = "kube-controller-manager";

/// `DeleteOptions.propagationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    Orphan,
    Background,
    Foreground,
}

impl Propagation {
    /// Reads the API's value; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "Orphan" => Some(Self::Orphan),
            "Background" => Some(Self::Background),
            "Foreground" => Some(Self::Foreground),
            _ => None,
        }
    }
}

/// Work for the collector, processed in this order per pass.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    /// An owner being deleted with the `orphan` or `foregroundDeletion`
    /// finalizer.
    Owner(ObjKey),
    /// An object with owner references, some of which may be gone.
    Dependent(ObjKey),
}

/// The collector's graph and queue.
#[derive(Debug, Default)]
pub(crate) struct GarbageCollector {
    delay: Duration,
    queue: BTreeSet<Item>,
    scheduled: bool,
    /// Where each uid lives.
    uids: BTreeMap<String, ObjKey>,
    /// The objects that name each uid as an owner.
    dependents: BTreeMap<String, BTreeSet<ObjKey>>,
}

/// One `metadata.ownerReferences` entry.
#[derive(Debug, Clone)]
struct OwnerRef {
    api_version: String,
    kind: String,
    name: String,
    uid: String,
    blocks: bool,
}

/// How the collector judges one owner reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnerState {
    /// The owner exists and is not waiting for its dependents (or cannot be
    /// looked up: the collector leaves such references alone).
    Solid,
    /// Absent, or the name now belongs to another uid.
    Dangling,
    /// Being deleted in the foreground.
    Waiting,
}

impl GarbageCollector {
    /// A collector that acts `delay` after the change that queued its work.
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }
}

impl Store {
    /// An object was created or changed: update the graph and queue what
    /// the collector must look at.
    pub(super) fn gc_stored(&mut self, k: &ObjKey, before: Option<&Value>, after: &Value) {
        let uid = str_at(after, "uid");
        self.gc.uids.insert(uid.clone(), k.clone());
        let old = before.map(owner_refs).unwrap_or_default();
        let new = owner_refs(after);
        for r in &old {
            if !new.iter().any(|n| n.uid == r.uid) {
                self.gc_unlink(&r.uid, k);
            }
        }
        for r in &new {
            self.gc
                .dependents
                .entry(r.uid.clone())
                .or_default()
                .insert(k.clone());
        }
        if !new.is_empty() {
            self.gc_enqueue(Item::Dependent(k.clone()));
        }
        let fins = finalizers(after);
        if is_deleting(after) && fins.iter().any(|f| f == ORPHAN || f == FOREGROUND) {
            self.gc_enqueue(Item::Owner(k.clone()));
        }
        // A foreground owner may be waiting on this dependent.
        for r in old.iter().chain(&new) {
            self.gc_wake_owner(&r.uid);
        }
    }

    /// An object is gone: its dependents may now be orphans, and owners
    /// waiting on it may proceed.
    pub(super) fn gc_removed(&mut self, k: &ObjKey, last: &Value) {
        let uid = str_at(last, "uid");
        if self.gc.uids.get(&uid) == Some(k) {
            self.gc.uids.remove(&uid);
        }
        for r in owner_refs(last) {
            self.gc_unlink(&r.uid, k);
            self.gc_wake_owner(&r.uid);
        }
        let orphans: Vec<ObjKey> = self
            .gc
            .dependents
            .get(&uid)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        for d in orphans {
            self.gc_enqueue(Item::Dependent(d));
        }
    }

    /// One pass over the queue; work queued meanwhile waits for the next.
    pub(super) fn collect_garbage(&mut self) {
        self.gc.scheduled = false;
        let work = std::mem::take(&mut self.gc.queue);
        for item in work {
            match item {
                Item::Owner(k) => self.gc_owner(&k),
                Item::Dependent(k) => self.gc_dependent(&k),
            }
        }
    }

    fn gc_unlink(&mut self, owner_uid: &str, dependent: &ObjKey) {
        if let Some(set) = self.gc.dependents.get_mut(owner_uid) {
            set.remove(dependent);
            if set.is_empty() {
                self.gc.dependents.remove(owner_uid);
            }
        }
    }

    fn gc_wake_owner(&mut self, owner_uid: &str) {
        let Some(owner) = self.gc.uids.get(owner_uid).cloned() else {
            return;
        };
        if self
            .objects
            .get(&owner)
            .is_some_and(|o| is_deleting(o) && finalizers(o).iter().any(|f| f == FOREGROUND))
        {
            self.gc_enqueue(Item::Owner(owner));
        }
    }

    fn gc_enqueue(&mut self, item: Item) {
        self.gc.queue.insert(item);
        if !self.gc.scheduled {
            self.gc.scheduled = true;
            self.agenda
                .schedule(Instant::now() + self.gc.delay, Action::CollectGarbage);
        }
    }

    /// The existing dependents of `owner_uid`.
    fn gc_dependents_of(&self, owner_uid: &str) -> Vec<(ObjKey, Value)> {
        self.gc
            .dependents
            .get(owner_uid)
            .into_iter()
            .flatten()
            .filter_map(|k| self.objects.get(k).map(|o| (k.clone(), o.clone())))
            .collect()
    }

    /// An owner being deleted with `orphan` or `foregroundDeletion`.
    fn gc_owner(&mut self, k: &ObjKey) {
        let Some(owner) = self.objects.get(k).cloned() else {
            return;
        };
        if !is_deleting(&owner) {
            return;
        }
        let uid = str_at(&owner, "uid");
        let fins = finalizers(&owner);
        if fins.iter().any(|f| f == ORPHAN) {
            for (dk, dep) in self.gc_dependents_of(&uid) {
                let mut next = dep.clone();
                set_owner_refs(
                    &mut next,
                    owner_refs(&dep).into_iter().filter(|r| r.uid != uid),
                );
                self.gc_write(&dk, &dep, next);
            }
            self.gc_remove_finalizer(k, &owner, ORPHAN);
        } else if fins.iter().any(|f| f == FOREGROUND) {
            let mut blocked = false;
            for (dk, dep) in self.gc_dependents_of(&uid) {
                if !is_deleting(&dep) {
                    self.gc_enqueue(Item::Dependent(dk));
                }
                blocked |= owner_refs(&dep).iter().any(|r| r.uid == uid && r.blocks);
            }
            if !blocked {
                self.gc_remove_finalizer(k, &owner, FOREGROUND);
            }
        }
    }

    /// An object whose owners may be gone or waiting for it.
    fn gc_dependent(&mut self, k: &ObjKey) {
        let Some(dep) = self.objects.get(k).cloned() else {
            return;
        };
        if is_deleting(&dep) {
            // Being deleted already; an owner waiting on it is woken when
            // it goes.
            return;
        }
        let refs = owner_refs(&dep);
        let judged: Vec<(OwnerRef, OwnerState)> = refs
            .into_iter()
            .map(|r| {
                let state = self.gc_owner_state(k, &r);
                (r, state)
            })
            .collect();
        let any = |s: OwnerState| judged.iter().any(|(_, st)| *st == s);
        if !any(OwnerState::Dangling) && !any(OwnerState::Waiting) {
            return;
        }
        if any(OwnerState::Solid) {
            // Keep the object for its living owners; drop the references
            // that would keep a dead or waiting owner stuck.
            let mut next = dep.clone();
            set_owner_refs(
                &mut next,
                judged
                    .into_iter()
                    .filter(|(_, s)| *s == OwnerState::Solid)
                    .map(|(r, _)| r),
            );
            self.gc_write(k, &dep, next);
            return;
        }
        let uid = str_at(&dep, "uid");
        let has_dependents = !self.gc_dependents_of(&uid).is_empty();
        let fins = finalizers(&dep);
        let policy = if any(OwnerState::Waiting) && has_dependents {
            Propagation::Foreground
        } else if fins.iter().any(|f| f == ORPHAN) {
            Propagation::Orphan
        } else if fins.iter().any(|f| f == FOREGROUND) {
            Propagation::Foreground
        } else {
            Propagation::Background
        };
        let Some(t) = self.type_of(k) else {
            return;
        };
        let opts = DeleteOptions {
            propagation: Some(policy),
            uid: Some(uid),
            ..DeleteOptions::default()
        };
        if let Err(e) = self.delete(&t, &k.namespace, &k.name, &opts) {
            tracing::debug!(object = %k.name, error = %e.message, "garbage collector's delete refused");
        }
    }

    fn gc_owner_state(&self, dependent: &ObjKey, r: &OwnerRef) -> OwnerState {
        let group = r
            .api_version
            .rsplit_once('/')
            .map_or("", |(g, _)| g)
            .to_owned();
        let Some(t) = self
            .types
            .iter()
            .find(|t| t.group == group && t.kind == r.kind)
        else {
            return OwnerState::Solid;
        };
        let namespace = if t.namespaced {
            if dependent.namespace.is_empty() {
                // A cluster-scoped object cannot be owned by a namespaced
                // one; the collector leaves the reference alone.
                return OwnerState::Solid;
            }
            dependent.namespace.clone()
        } else {
            String::new()
        };
        let owner_key = ObjKey {
            group: t.group.clone(),
            plural: t.plural.clone(),
            namespace,
            name: r.name.clone(),
        };
        match self.objects.get(&owner_key) {
            Some(o) if str_at(o, "uid") == r.uid => {
                if is_deleting(o) && finalizers(o).iter().any(|f| f == FOREGROUND) {
                    OwnerState::Waiting
                } else {
                    OwnerState::Solid
                }
            }
            _ => OwnerState::Dangling,
        }
    }

    fn gc_remove_finalizer(&mut self, k: &ObjKey, owner: &Value, finalizer: &str) {
        let mut next = owner.clone();
        let kept: Vec<Value> = finalizers(owner)
            .into_iter()
            .filter(|f| f != finalizer)
            .map(Value::String)
            .collect();
        if let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            if kept.is_empty() {
                meta.remove("finalizers");
            } else {
                meta.insert("finalizers".into(), Value::Array(kept));
            }
        }
        self.gc_write(k, owner, next);
    }

    /// A metadata write of the collector's, as its patches are.
    fn gc_write(&mut self, k: &ObjKey, current: &Value, next: Value) {
        let Some(t) = self.type_of(k) else {
            return;
        };
        let version = t.preferred_version().to_owned();
        let who = FieldManager::new(
            MANAGER.to_owned(),
            t.api_version(&version),
            t.status_subresource,
            false,
        );
        if let Err(e) = self.write(
            &t,
            &k.namespace,
            &k.name,
            current,
            next,
            false,
            false,
            Ownership::Update(who),
        ) {
            tracing::debug!(object = %k.name, error = %e.message, "garbage collector's write refused");
        }
    }
}

fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

fn owner_refs(obj: &Value) -> Vec<OwnerRef> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .map(|r| OwnerRef {
                    api_version: text(r, "apiVersion"),
                    kind: text(r, "kind"),
                    name: text(r, "name"),
                    uid: text(r, "uid"),
                    blocks: r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true),
                })
                .filter(|r| !r.uid.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Keeps only the stored references whose uid is among `keep`.
fn set_owner_refs(obj: &mut Value, keep: impl IntoIterator<Item = OwnerRef>) {
    let uids: BTreeSet<String> = keep.into_iter().map(|r| r.uid).collect();
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let kept: Vec<Value> = meta
        .get("ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter(|r| {
                    r.get("uid")
                        .and_then(Value::as_str)
                        .is_some_and(|u| uids.contains(u))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if kept.is_empty() {
        meta.remove("ownerReferences");
    } else {
        meta.insert("ownerReferences".into(), json!(kept));
    }
}
