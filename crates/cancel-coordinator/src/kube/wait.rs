//! `wait_gone` of [`KubeCodeRuns`]: one watch of the pods of all the runs
//! (by a set-based label selector), mirrored in memory, judged after every
//! change. A run is done when no pod of it exists; the run objects are not
//! watched (their removal after their pods is the garbage collector's), so
//! what it reports of them is `run_exists: false`.
//!
//! The rule it keeps: **a run is judged only from a complete picture** —
//! the mirror must have finished its initial list (or streaming list)
//! before anything is reported done, and a mirror that re-lists (after
//! `410 Gone`) is incomplete until its list ends. At the deadline, what is
//! left is reported from the picture if it is complete, else the last
//! error is returned: never a guess.
//!
//! kube-runtime's watcher does the LIST and WATCH, resumes a broken watch
//! from its last resourceVersion (bookmarks included) and re-lists on 410;
//! its default backoff spaces out retries after errors. An error the
//! server will repeat (403, 404 for a kind not installed, 400) ends the
//! wait at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use resilience::Transient;
use tokio::time::Instant;

use super::{KubeCodeRuns, is_label_value, not_a_label_value, pods};
use crate::workloads::{CancelMode, Remains, Run};
use crate::{Error, Result};

pub(super) async fn wait_gone(
    backend: &KubeCodeRuns,
    runs: &[Run],
    mode: CancelMode,
    deadline: Instant,
) -> Result<Vec<Remains>> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let config = &backend.config;
    let mut pods_config = watch_config(config.streaming_lists);
    if let Some(key) = config.pods.label() {
        let names: BTreeSet<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        if let Some(bad) = names.iter().find(|n| !is_label_value(n)) {
            return Err(not_a_label_value(bad));
        }
        pods_config = pods_config.labels(&set_selector(key, names));
    }
    let mut pod_events = watcher::watcher(backend.pods_api(), pods_config)
        .default_backoff()
        .boxed();
    let mut pods = Mirror::default();
    let mut last_error: Option<Error> = None;
    let judge = |pods: &Mirror<Pod>| {
        let now = backend.clock.now();
        runs.iter()
            .map(|run| pods::remains_of(config, run, None, pods.current.values(), now))
            .collect::<Vec<_>>()
    };

    loop {
        if pods.complete() {
            let left = judge(&pods);
            if left.iter().all(|r| r.done(mode)) {
                return Ok(left);
            }
        }
        tokio::select! {
            biased;
            event = pod_events.next() => {
                pods.apply(event, &mut last_error)?;
            }
            () = tokio::time::sleep_until(deadline) => {
                return if pods.complete() {
                    Ok(judge(&pods))
                } else {
                    Err(last_error.unwrap_or_else(|| Error::Transport {
                        message: "the pods could not be listed before the deadline".into(),
                    }))
                };
            }
        }
    }
}

fn watch_config(streaming: bool) -> watcher::Config {
    let config = watcher::Config::default();
    if streaming {
        config.streaming_lists()
    } else {
        config
    }
}

/// `key in (a,b,…)`.
fn set_selector<'a>(key: &str, values: impl IntoIterator<Item = &'a str>) -> String {
    let values: Vec<&str> = values.into_iter().collect();
    format!("{key} in ({})", values.join(","))
}

/// Objects of one kind as the watch last reported them, by name.
struct Mirror<K> {
    current: BTreeMap<String, K>,
    /// Objects of a (re-)list in progress: it replaces `current` when done.
    listing: Option<BTreeMap<String, K>>,
    listed: bool,
}

impl<K> Default for Mirror<K> {
    fn default() -> Self {
        Self {
            current: BTreeMap::new(),
            listing: None,
            listed: false,
        }
    }
}

impl<K: Resource + Clone + Debug> Mirror<K> {
    /// Whether it holds a complete picture.
    fn complete(&self) -> bool {
        self.listed && self.listing.is_none()
    }

    /// Takes one item of the watch; an error the server will repeat ends
    /// the wait, others are remembered (the watcher retries after backoff).
    fn apply(
        &mut self,
        event: Option<std::result::Result<Event<K>, watcher::Error>>,
        last_error: &mut Option<Error>,
    ) -> Result<()> {
        let name = |o: &K| o.meta().name.clone().unwrap_or_default();
        match event {
            Some(Ok(event)) => {
                *last_error = None;
                match event {
                    Event::Init => self.listing = Some(BTreeMap::new()),
                    Event::InitApply(o) => {
                        if let Some(listing) = &mut self.listing {
                            listing.insert(name(&o), o);
                        }
                    }
                    Event::InitDone => {
                        if let Some(listing) = self.listing.take() {
                            self.current = listing;
                        }
                        self.listed = true;
                    }
                    Event::Apply(o) => {
                        self.current.insert(name(&o), o);
                    }
                    Event::Delete(o) => {
                        self.current.remove(&name(&o));
                    }
                }
                Ok(())
            }
            Some(Err(e)) => {
                let e = watch_error(e);
                if e.is_transient() {
                    *last_error = Some(e);
                    Ok(())
                } else {
                    Err(e)
                }
            }
            None => Err(Error::Transport {
                message: "the watch ended".into(),
            }),
        }
    }
}

/// A watcher failure as the crate's error; `410 Gone` (the watcher
/// re-lists) counts as transient.
fn watch_error(e: watcher::Error) -> Error {
    use watcher::Error as W;
    match e {
        W::InitialListFailed(e) | W::WatchStartFailed(e) | W::WatchFailed(e) => {
            Error::from_kube(e, "watch")
        }
        W::WatchError(status) if status.code == 410 => Error::Transport {
            message: format!("watch expired, re-listing: {}", status.message),
        },
        W::WatchError(status) => Error::from_kube(kube::Error::Api(status), "watch"),
        e @ W::NoResourceVersion => Error::Transport {
            message: e.to_string(),
        },
    }
}
