//! The store's open watches and the fan-out of each event to them, shaped
//! like the API server's cacher.
//!
//! The cacher wraps each event in one object whose serialization is cached
//! per encoding (`cachingObject`), hands that one object to every
//! interested watcher through the watcher's own buffered channel without
//! waiting on it, and closes a watcher that cannot take an event in time:
//! its client resumes from its last resourceVersion. Here likewise: an
//! event becomes at most three shared items (as it is; ADDED for an update
//! that moves an object into a selection; DELETED for one that moves it
//! out), each encoded once per response form however many watchers stream
//! it (see [`WatchItem::encoded`]); every watcher has a bounded channel
//! filled with `try_send`, and one whose channel is full is closed. Watches
//! that pin a single object by `metadata.name` (the field selector every
//! single-object watch uses, and the legacy `watch/…/name` paths) are
//! indexed by that name, and watches whose label selector requires a
//! label's value (`key=value`, `key in (…)`: a saga watching its runs'
//! pods) by that label, so a write is matched only against the watches
//! that could select it: those pinned to its name (which never changes),
//! those indexed under a label it carries now or carried before the write
//! (an update that moves it out of a selection is still that watch's
//! DELETED), and the rest.
//!
//! The rule it keeps: **dispatch never waits on a watcher**, so a slow or
//! stalled watcher cannot delay a write or any other watcher, and each
//! watcher still receives the events it selects in resourceVersion order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Event, EventKind, WatchRequest, labels, metadata_mut, selects};
use crate::kube::resource::ResourceType;
use crate::kube::server::Render;

/// One event as a watcher sees it (after its selectors), shared by every
/// watcher that sees it the same way.
#[derive(Debug)]
pub(crate) struct WatchItem {
    pub kind: EventKind,
    pub object: Arc<Value>,
    /// The event's line as each response form has encoded it so far.
    encodings: Mutex<Vec<(Render, Bytes)>>,
}

impl WatchItem {
    /// An item of `kind` carrying `object`, not encoded yet.
    pub fn new(kind: EventKind, object: Arc<Value>) -> Self {
        Self {
            kind,
            object,
            encodings: Mutex::new(Vec::new()),
        }
    }

    /// The item's line in `render`'s form: `encode` runs for the first
    /// watcher streaming this form, the others get its bytes.
    pub fn encoded(&self, render: &Render, encode: impl FnOnce(&Self) -> Bytes) -> Bytes {
        let mut encodings = self
            .encodings
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, bytes)) = encodings.iter().find(|(r, _)| r == render) {
            return bytes.clone();
        }
        let bytes = encode(self);
        encodings.push((render.clone(), bytes.clone()));
        bytes
    }
}

/// The open watches, indexed by kind, pinned name and required label.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    all: BTreeMap<u64, Watcher>,
    kinds: HashMap<(String, String), KindWatchers>,
    next_id: u64,
    /// Events handed to watches by [`Watchers::dispatch`] so far: one per
    /// event per watch that received it.
    dispatched: u64,
}

#[derive(Debug)]
struct Watcher {
    group: String,
    plural: String,
    /// What the watch is indexed under.
    index: Index,
    request: WatchRequest,
    tx: mpsc::Sender<Arc<WatchItem>>,
}

/// Where a watch is found in its kind's index.
#[derive(Debug, Clone)]
enum Index {
    /// The one name its field selector requires.
    Name(String),
    /// A label its selector requires, with the values it accepts.
    Label(String, Vec<String>),
    /// Neither: matched against every write of the kind.
    Any,
}

/// A kind's watches: those pinned to one name, those requiring a label's
/// value, and those that may select anything.
#[derive(Debug, Default)]
struct KindWatchers {
    any_name: BTreeSet<u64>,
    by_name: HashMap<String, BTreeSet<u64>>,
    /// Label key → label value → watches.
    by_label: HashMap<String, HashMap<String, BTreeSet<u64>>>,
}

impl KindWatchers {
    fn is_empty(&self) -> bool {
        self.any_name.is_empty() && self.by_name.is_empty() && self.by_label.is_empty()
    }
}

impl Watchers {
    /// Registers a watch of `t`; its channel buffers `capacity` events.
    pub fn add(
        &mut self,
        t: &ResourceType,
        request: WatchRequest,
        capacity: usize,
    ) -> (u64, mpsc::Receiver<Arc<WatchItem>>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.next_id += 1;
        let id = self.next_id;
        let index = match (
            request.fields.required_name(),
            request.labels.required_values(),
        ) {
            (Some(name), _) => Index::Name(name.to_owned()),
            (None, Some((key, values))) => Index::Label(
                key.to_owned(),
                values.into_iter().map(str::to_owned).collect(),
            ),
            (None, None) => Index::Any,
        };
        let kind = self
            .kinds
            .entry((t.group.clone(), t.plural.clone()))
            .or_default();
        match &index {
            Index::Name(name) => {
                kind.by_name.entry(name.clone()).or_default().insert(id);
            }
            Index::Label(key, values) => {
                let by_value = kind.by_label.entry(key.clone()).or_default();
                for value in values {
                    by_value.entry(value.clone()).or_default().insert(id);
                }
            }
            Index::Any => {
                kind.any_name.insert(id);
            }
        }
        self.all.insert(
            id,
            Watcher {
                group: t.group.clone(),
                plural: t.plural.clone(),
                index,
                request,
                tx,
            },
        );
        (id, rx)
    }

    /// Whether watch `id` is still open.
    pub fn contains(&self, id: u64) -> bool {
        self.all.contains_key(&id)
    }

    /// Closes watch `id` (its stream ends once it has sent what it holds).
    pub fn remove(&mut self, id: u64) {
        let Some(w) = self.all.remove(&id) else {
            return;
        };
        let key = (w.group, w.plural);
        let Some(kind) = self.kinds.get_mut(&key) else {
            return;
        };
        match w.index {
            Index::Name(name) => {
                if let Some(ids) = kind.by_name.get_mut(&name) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        kind.by_name.remove(&name);
                    }
                }
            }
            Index::Label(label, values) => {
                if let Some(by_value) = kind.by_label.get_mut(&label) {
                    for value in values {
                        if let Some(ids) = by_value.get_mut(&value) {
                            ids.remove(&id);
                            if ids.is_empty() {
                                by_value.remove(&value);
                            }
                        }
                    }
                    if by_value.is_empty() {
                        kind.by_label.remove(&label);
                    }
                }
            }
            Index::Any => {
                kind.any_name.remove(&id);
            }
        }
        if kind.is_empty() {
            self.kinds.remove(&key);
        }
    }

    /// Closes every watch.
    pub fn clear(&mut self) {
        self.all.clear();
        self.kinds.clear();
    }

    /// Events handed to watches so far (each counted once per watch that
    /// received it; initial events not included).
    pub fn dispatched(&self) -> u64 {
        self.dispatched
    }

    /// Number of open watches.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Hands `event` to every watch that selects it, without waiting on
    /// any; a watch whose buffer is full is closed (it resumes from its
    /// last resourceVersion), never buffered without bound.
    pub fn dispatch(&mut self, event: &Event) {
        let Some(kind) = self
            .kinds
            .get(&(event.key.group.clone(), event.key.plural.clone()))
        else {
            return;
        };
        let pinned_here = kind.by_name.get(&event.key.name).into_iter().flatten();
        let mut candidates: BTreeSet<u64> =
            kind.any_name.iter().chain(pinned_here).copied().collect();
        if !kind.by_label.is_empty() {
            for object in std::iter::once(&event.object).chain(&event.prev) {
                for (key, value) in labels(object) {
                    if let Some(ids) = kind.by_label.get(key).and_then(|v| v.get(value)) {
                        candidates.extend(ids);
                    }
                }
            }
        }
        let mut views = Views::of(event);
        let mut closed = Vec::new();
        for id in candidates {
            let Some(w) = self.all.get(&id) else {
                continue;
            };
            let Some(item) = views.seen_by(&w.request) else {
                continue;
            };
            match w.tx.try_send(item) {
                Ok(()) => self.dispatched += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(watcher = id, "closing a watch that fell too far behind");
                    closed.push(id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => closed.push(id),
            }
        }
        for id in closed {
            self.remove(id);
        }
    }
}

/// How a watch sees an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// As it happened.
    AsIs,
    /// An update that moved the object into the selection: ADDED.
    Entered,
    /// An update that moved the object out of the selection: DELETED, with
    /// the object as it was last selected at the event's resourceVersion.
    Left,
}

/// What watch `request` sees of `event`, if anything.
pub(crate) fn seen(request: &WatchRequest, event: &Event) -> Option<Seen> {
    if request
        .namespace
        .as_ref()
        .is_some_and(|ns| *ns != event.key.namespace)
    {
        return None;
    }
    let now = selects(&request.labels, &request.fields, &event.object);
    if event.kind != EventKind::Modified {
        return now.then_some(Seen::AsIs);
    }
    let before = event
        .prev
        .as_ref()
        .is_some_and(|p| selects(&request.labels, &request.fields, p));
    match (before, now) {
        (true, true) => Some(Seen::AsIs),
        (false, true) => Some(Seen::Entered),
        (true, false) => Some(Seen::Left),
        (false, false) => None,
    }
}

/// The item watch `request` receives for `event`, built afresh (for the
/// events a new watch replays).
pub(crate) fn item_for(request: &WatchRequest, event: &Event) -> Option<Arc<WatchItem>> {
    seen(request, event).map(|s| Arc::new(build(event, s)))
}

fn build(event: &Event, seen: Seen) -> WatchItem {
    match seen {
        Seen::AsIs => WatchItem::new(event.kind, event.object.clone()),
        Seen::Entered => WatchItem::new(EventKind::Added, event.object.clone()),
        Seen::Left => {
            let mut last = event.prev.as_deref().cloned().unwrap_or(Value::Null);
            metadata_mut(&mut last).insert("resourceVersion".into(), json!(event.rv.to_string()));
            WatchItem::new(EventKind::Deleted, Arc::new(last))
        }
    }
}

/// The items of one event, each built once and shared by every watch that
/// sees the event that way.
struct Views<'a> {
    event: &'a Event,
    built: [Option<Arc<WatchItem>>; 3],
}

impl<'a> Views<'a> {
    fn of(event: &'a Event) -> Self {
        Self {
            event,
            built: [None, None, None],
        }
    }

    fn seen_by(&mut self, request: &WatchRequest) -> Option<Arc<WatchItem>> {
        let event = self.event;
        let s = seen(request, event)?;
        let slot = &mut self.built[s as usize];
        Some(
            slot.get_or_insert_with(|| Arc::new(build(event, s)))
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::selector::{FieldSelector, LabelSelector};
    use crate::kube::store::{ObjKey, WatchFrom};

    fn configmaps() -> ResourceType {
        crate::kube::resource::builtin_types()
            .into_iter()
            .find(|t| t.group.is_empty() && t.plural == "configmaps")
            .unwrap()
    }

    fn request(fields: FieldSelector) -> WatchRequest {
        WatchRequest {
            namespace: None,
            labels: LabelSelector::default(),
            fields,
            from: WatchFrom::Latest,
            send_initial_events: None,
        }
    }

    fn modified(rv: u64, name: &str) -> Event {
        let object = json!({"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv.to_string()}});
        Event {
            rv,
            key: ObjKey {
                group: String::new(),
                plural: "configmaps".into(),
                namespace: "ns".into(),
                name: name.into(),
            },
            kind: EventKind::Modified,
            object: Arc::new(object.clone()),
            prev: Some(Arc::new(object)),
        }
    }

    #[test]
    fn watchers_that_see_an_event_alike_share_one_item() {
        let t = configmaps();
        let mut watchers = Watchers::default();
        let (_, mut a) = watchers.add(&t, request(FieldSelector::default()), 8);
        let (_, mut b) = watchers.add(&t, request(FieldSelector::name("web")), 8);
        watchers.dispatch(&modified(2, "web"));
        let (a, b) = (a.try_recv().unwrap(), b.try_recv().unwrap());
        assert!(Arc::ptr_eq(&a, &b), "one item for both watchers");
        assert_eq!(a.kind, EventKind::Modified);
    }

    #[test]
    fn an_item_is_encoded_once_per_response_form() {
        let item = WatchItem::new(EventKind::Added, Arc::new(json!({})));
        let render = Render::new(&configmaps(), "v1", "application/json");
        let mut encodings = 0;
        for _ in 0..3 {
            let line = item.encoded(&render, |_| {
                encodings += 1;
                Bytes::from_static(b"line\n")
            });
            assert_eq!(line, Bytes::from_static(b"line\n"));
        }
        assert_eq!(encodings, 1);
    }

    #[test]
    fn a_stalled_watcher_is_closed_while_the_others_receive_every_event_in_order() {
        let t = configmaps();
        let mut watchers = Watchers::default();
        let (stalled_id, mut stalled) = watchers.add(&t, request(FieldSelector::default()), 2);
        let (reader_id, mut reader) = watchers.add(&t, request(FieldSelector::default()), 2);
        let mut seen = Vec::new();
        for rv in 2..12 {
            watchers.dispatch(&modified(rv, "web"));
            // The reader keeps up; the stalled one reads nothing.
            while let Ok(item) = reader.try_recv() {
                seen.push(item.object["metadata"]["resourceVersion"].clone());
            }
        }
        let expected: Vec<Value> = (2..12).map(|rv: u64| json!(rv.to_string())).collect();
        assert_eq!(seen, expected, "every event, in resourceVersion order");
        assert!(watchers.contains(reader_id));
        assert!(
            !watchers.contains(stalled_id),
            "closed once its buffer was full"
        );
        // What it had buffered is still delivered, then its stream ends.
        assert!(stalled.try_recv().is_ok());
        assert!(stalled.try_recv().is_ok());
        assert!(matches!(
            stalled.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn a_watch_pinned_to_a_name_receives_only_that_names_events() {
        let t = configmaps();
        let mut watchers = Watchers::default();
        let (web_id, mut web) = watchers.add(&t, request(FieldSelector::name("web")), 8);
        let (_, mut db) = watchers.add(&t, request(FieldSelector::name("db")), 8);
        for rv in 2..6 {
            watchers.dispatch(&modified(rv, "web"));
        }
        watchers.dispatch(&modified(6, "db"));
        let mut web_rvs = Vec::new();
        while let Ok(item) = web.try_recv() {
            web_rvs.push(item.object["metadata"]["resourceVersion"].clone());
        }
        assert_eq!(
            web_rvs,
            vec![json!("2"), json!("3"), json!("4"), json!("5")]
        );
        assert_eq!(
            db.try_recv().unwrap().object["metadata"]["name"],
            json!("db")
        );
        assert!(db.try_recv().is_err());
        watchers.remove(web_id);
        assert_eq!(watchers.len(), 1);
        watchers.dispatch(&modified(7, "web"));
        assert!(db.try_recv().is_err());
    }

    fn relabelled(rv: u64, name: &str, before: Option<&str>, after: Option<&str>) -> Event {
        let object = |run: Option<&str>| {
            let labels = run.map_or_else(|| json!({}), |r| json!({"run": r}));
            json!({"metadata": {"name": name, "namespace": "ns", "labels": labels, "resourceVersion": rv.to_string()}})
        };
        Event {
            prev: Some(Arc::new(object(before))),
            object: Arc::new(object(after)),
            ..modified(rv, name)
        }
    }

    #[test]
    fn a_watch_requiring_a_label_sees_writes_that_carry_it_or_carried_it_and_no_others() {
        let t = configmaps();
        let mut watchers = Watchers::default();
        let selecting = |text: &str| WatchRequest {
            labels: LabelSelector::parse(text).unwrap(),
            ..request(FieldSelector::default())
        };
        let (a_id, mut a) = watchers.add(&t, selecting("run in (a1,a2)"), 8);
        let (_, mut b) = watchers.add(&t, selecting("run=b1"), 8);
        let (_, mut unindexed) = watchers.add(&t, selecting("run!=a1"), 8);
        let kinds = |rx: &mut mpsc::Receiver<Arc<WatchItem>>| {
            std::iter::from_fn(|| rx.try_recv().ok())
                .map(|i| format!("{:?} {}", i.kind, i.object["metadata"]["name"]))
                .collect::<Vec<_>>()
        };

        watchers.dispatch(&relabelled(2, "p1", Some("a1"), Some("a1")));
        watchers.dispatch(&relabelled(3, "p2", None, Some("a2")));
        // Moves out of a's selection into b's: a's DELETED, b's ADDED.
        watchers.dispatch(&relabelled(4, "p1", Some("a1"), Some("b1")));
        watchers.dispatch(&relabelled(5, "p3", Some("c"), Some("c")));
        assert_eq!(
            kinds(&mut a),
            ["Modified \"p1\"", "Added \"p2\"", "Deleted \"p1\""]
        );
        assert_eq!(kinds(&mut b), ["Added \"p1\""]);
        assert_eq!(
            kinds(&mut unindexed),
            ["Modified \"p2\"", "Added \"p1\"", "Modified \"p3\""],
            "a selector no index answers still sees every write it selects \
             (p2 had no `run` label: `!=` selected it before too)"
        );

        watchers.remove(a_id);
        watchers.dispatch(&relabelled(6, "p2", Some("a2"), Some("a2")));
        assert!(a.try_recv().is_err(), "a removed watch gets nothing more");
        assert_eq!(watchers.len(), 2);
    }
}
