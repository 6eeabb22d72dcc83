//! Reads at a resourceVersion: LISTs whose every page shows the first
//! page's snapshot, continue tokens that expire as etcd compacts, exact and
//! not-older-than reads, and the watch cache's possibly stale
//! `resourceVersion=0` reads.
//!
//! A snapshot of a kind at resourceVersion `S` is the current objects with
//! the kind's events after `S` undone, newest first. The rule it keeps:
//! **every page of one LIST is cut from the same snapshot and carries its
//! resourceVersion**, so a client that watches from it afterwards misses
//! nothing and sees nothing twice; a snapshot the history can no longer
//! rebuild is 410, never silently replaced by a newer one.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{EventKind, ListPage, ObjKey, Store, selects, type_range};
use crate::kube::resource::ResourceType;
use crate::kube::selector::{FieldSelector, LabelSelector};
use crate::kube::status::ApiError;

/// Which state a read asks for (`resourceVersion` and `resourceVersionMatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadAt {
    /// No resourceVersion: the latest state (a quorum read from etcd).
    Latest,
    /// `resourceVersion=0`: any state (the watch cache, possibly stale).
    Any,
    /// At least this new.
    NotOlderThan(u64),
    /// Exactly this one.
    Exact(u64),
}

/// A LIST continuation: where the next page starts, in which snapshot
/// (`rv` -1: the latest state, after the snapshot expired). Encoded as the
/// API server encodes it (base64 of `{"v","rv","start"}`); clients treat it
/// as opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContinueToken {
    pub rv: i64,
    /// `namespace/name` of the last object served.
    pub after: String,
}

impl ContinueToken {
    pub fn encode(&self) -> String {
        let token =
            json!({"v": "meta.k8s.io/v1", "rv": self.rv, "start": format!("{}\u{0}", self.after)});
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
    }

    pub fn decode(text: &str) -> Result<Self, ApiError> {
        let invalid = |why: &str| ApiError::bad_request(format!("invalid continue token: {why}"));
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| invalid("illegal base64 data"))?;
        let token: Value = serde_json::from_slice(&bytes).map_err(|_| invalid("not JSON"))?;
        if token.get("v").and_then(Value::as_str) != Some("meta.k8s.io/v1") {
            return Err(invalid("continue key is not supported by this version"));
        }
        let rv = token
            .get("rv")
            .and_then(Value::as_i64)
            .filter(|rv| *rv != 0)
            .ok_or_else(|| {
                invalid("incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
            })?;
        let after = token
            .get("start")
            .and_then(Value::as_str)
            .and_then(|s| s.strip_suffix('\u{0}'))
            .ok_or_else(|| invalid("encoded start key is not valid"))?
            .to_owned();
        Ok(Self { rv, after })
    }

    fn position(&self) -> Option<(&str, &str)> {
        self.after.split_once('/')
    }
}

impl Store {
    /// The resourceVersion a read of kind `t` at `at` is served at.
    pub(super) fn read_rv(&self, t: &ResourceType, at: ReadAt) -> Result<u64, ApiError> {
        match at {
            ReadAt::Latest => Ok(self.rv),
            ReadAt::Any => Ok(self.stale_rv(t)),
            ReadAt::NotOlderThan(n) if n > self.rv => {
                Err(ApiError::too_large_resource_version(n, self.rv))
            }
            ReadAt::NotOlderThan(n) => Ok(self.stale_rv(t).max(n)),
            ReadAt::Exact(n) if n > self.rv => {
                Err(ApiError::too_large_resource_version(n, self.rv))
            }
            ReadAt::Exact(n) if n < self.history.oldest(&t.group, &t.plural) => Err(ApiError::new(
                410,
                "Expired",
                "The resourceVersion for the provided list is too old.",
            )),
            ReadAt::Exact(n) => Ok(n),
        }
    }

    /// What the watch cache serves `resourceVersion=0` reads from: the
    /// configured number of the kind's events behind.
    pub(super) fn stale_rv(&self, t: &ResourceType) -> u64 {
        self.history
            .lagging(&t.group, &t.plural, self.config.cache_lag, self.rv)
    }

    /// The objects of kind `t` as they were at `rv` (no older than the
    /// kind's history reaches), in key order.
    pub(super) fn objects_at(&self, t: &ResourceType, rv: u64) -> Vec<(&ObjKey, &Value)> {
        let current = self.objects.range(type_range(t));
        if rv >= self.rv {
            return current.collect();
        }
        // Undo newest first, so the state before the oldest later event wins.
        let mut then: BTreeMap<&ObjKey, Option<&Value>> = BTreeMap::new();
        for e in self.history.after(&t.group, &t.plural, rv).rev() {
            let before = match e.kind {
                EventKind::Added => None,
                EventKind::Modified | EventKind::Deleted => e.prev.as_deref(),
            };
            then.insert(&e.key, before);
        }
        let mut out: Vec<(&ObjKey, &Value)> =
            current.filter(|(k, _)| !then.contains_key(k)).collect();
        out.extend(then.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }

    /// The objects of kind `t` at `rv` that may match `labels`: every one
    /// (as [`Store::objects_at`]), or, for the current state and a selector
    /// that requires a label's value, only those the label index finds
    /// carrying it. Either way in key order; the caller still matches each
    /// one against the whole selector.
    pub(super) fn selected_at(
        &self,
        t: &ResourceType,
        rv: u64,
        labels: &LabelSelector,
    ) -> Vec<(&ObjKey, &Value)> {
        match labels.required_values() {
            Some((key, values)) if rv >= self.rv => self
                .labels
                .carrying(t, key, &values)
                .into_iter()
                .filter_map(|k| self.objects.get_key_value(k))
                .collect(),
            _ => self.objects_at(t, rv),
        }
    }

    /// One object of kind `t` as it was at `rv`.
    fn object_at(&self, t: &ResourceType, k: &ObjKey, rv: u64) -> Option<Value> {
        if rv < self.rv
            && let Some(e) = self
                .history
                .after(&t.group, &t.plural, rv)
                .find(|e| e.key == *k)
        {
            return match e.kind {
                EventKind::Added => None,
                EventKind::Modified | EventKind::Deleted => e.prev.as_deref().cloned(),
            };
        }
        self.objects.get(k).cloned()
    }

    /// GET at a resourceVersion (`""`: latest, `0`: any, `n`: not older).
    pub fn get_at(
        &self,
        t: &ResourceType,
        namespace: &str,
        name: &str,
        at: ReadAt,
    ) -> Result<Value, ApiError> {
        let rv = self.read_rv(t, at)?;
        self.object_at(t, &super::key(t, namespace, name), rv)
            .ok_or_else(|| ApiError::not_found(t, name))
    }

    /// Whether a LIST continuation in the snapshot at `rv` has expired: the
    /// history no longer rebuilds it, too many writes followed it, or etcd
    /// would have compacted it (its state was superseded longer ago than
    /// the compaction interval).
    fn continuation_expired(&self, t: &ResourceType, rv: u64) -> bool {
        let expiry = &self.config.continue_expiry;
        rv < self.history.oldest(&t.group, &t.plural)
            || expiry
                .writes
                .is_some_and(|n| self.rv.saturating_sub(rv) > n)
            || self
                .history
                .superseded_at(rv)
                .is_some_and(|at| Instant::now().saturating_duration_since(at) >= expiry.after)
    }

    /// LIST: one page of the objects of `t` in the snapshot the request
    /// names (its continue token's, else `at`'s).
    #[allow(clippy::too_many_arguments)] // mirrors the request's parameters
    pub fn list(
        &self,
        t: &ResourceType,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        continue_token: Option<&str>,
        at: ReadAt,
    ) -> Result<ListPage, ApiError> {
        let (start, rv) = match continue_token.filter(|c| !c.is_empty()) {
            Some(text) => {
                let token = ContinueToken::decode(text)?;
                let rv = match u64::try_from(token.rv) {
                    Ok(rv) if self.continuation_expired(t, rv) => {
                        let latest = ContinueToken { rv: -1, ..token };
                        return Err(ApiError::continue_expired(&latest.encode()));
                    }
                    Ok(rv) => rv,
                    Err(_) => self.rv,
                };
                (Some(token), rv)
            }
            None => (None, self.read_rv(t, at)?),
        };
        let after = start.as_ref().and_then(ContinueToken::position);
        let snapshot = self.selected_at(t, rv, labels);
        let mut matching = snapshot
            .into_iter()
            .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .filter(|(k, _)| {
                after.is_none_or(|(ns, name)| (k.namespace.as_str(), k.name.as_str()) > (ns, name))
            })
            .filter(|(_, o)| selects(labels, fields, o));
        let limit = limit.filter(|l| *l > 0);
        let mut items = Vec::new();
        let mut last = None;
        for (k, o) in matching.by_ref() {
            if limit.is_some_and(|l| items.len() >= l) {
                // There is at least one more: the page ends at `last`. The
                // count of what remains is only known without selectors.
                let rest = 1 + matching.count() as u64;
                let selected = !labels.is_empty() || !fields.is_empty();
                let token = last.map(|after| {
                    ContinueToken {
                        rv: rv as i64,
                        after,
                    }
                    .encode()
                });
                return Ok(ListPage {
                    items,
                    resource_version: rv,
                    continue_token: token,
                    remaining: (!selected).then_some(rest),
                });
            }
            last = Some(format!("{}/{}", k.namespace, k.name));
            items.push(o.clone());
        }
        Ok(ListPage {
            items,
            resource_version: rv,
            continue_token: None,
            remaining: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_in_the_api_servers_shape() {
        let token = ContinueToken {
            rv: 42,
            after: "ns/c1".to_owned(),
        };
        let text = token.encode();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&text)
            .unwrap();
        let json: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(
            json,
            json!({"v": "meta.k8s.io/v1", "rv": 42, "start": "ns/c1\u{0}"})
        );
        assert_eq!(ContinueToken::decode(&text).unwrap(), token);
        assert_eq!(ContinueToken::decode("not base64!").unwrap_err().code, 400);
    }
}
