//! The stored objects by label, so that a LIST or a watch's initial state
//! whose selector names a label's value (`key=value`, `key in (…)`) reads
//! only the objects that carry it instead of every object of the kind.
//!
//! The API server's watch cache scans a kind's objects for a label
//! selector too, but in compiled Go over typed objects and under a read
//! lock; FakeKube matches JSON values under its one store lock, and with
//! thousands of tasks each LISTing its CodeRuns and pods the scans made
//! the fake, not the code under test, the bottleneck (quadratic in the
//! number of tasks). The index changes no answer: it only narrows which
//! objects the full selector is then matched against, and only for the
//! current state (reads at an older resourceVersion still rebuild the
//! snapshot from the history and scan it).

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use super::ObjKey;
use crate::kube::resource::ResourceType;

/// Label key → label value → the objects of one kind carrying it.
type ByLabel = HashMap<String, HashMap<String, BTreeSet<ObjKey>>>;

/// Per kind (group, plural), its objects by label.
#[derive(Debug, Default)]
pub(super) struct LabelIndex {
    kinds: HashMap<(String, String), ByLabel>,
}

impl LabelIndex {
    /// Follows one object from `before` to `after` (`None`: absent).
    pub fn update<'a>(&mut self, k: &ObjKey, before: Option<&'a Value>, after: Option<&'a Value>) {
        let labels = |o: Option<&'a Value>| -> Vec<(&'a str, &'a str)> {
            o.map(|o| super::labels(o).collect()).unwrap_or_default()
        };
        let (old, new) = (labels(before), labels(after));
        if old == new {
            return;
        }
        let kind = (k.group.clone(), k.plural.clone());
        if let Some(by_key) = self.kinds.get_mut(&kind) {
            for (key, value) in old.iter().filter(|l| !new.contains(l)) {
                let Some(by_value) = by_key.get_mut(*key) else {
                    continue;
                };
                if let Some(keys) = by_value.get_mut(*value) {
                    keys.remove(k);
                    if keys.is_empty() {
                        by_value.remove(*value);
                    }
                }
                if by_value.is_empty() {
                    by_key.remove(*key);
                }
            }
        }
        let added: Vec<_> = new.iter().filter(|l| !old.contains(l)).collect();
        if added.is_empty() {
            return;
        }
        let by_key = self.kinds.entry(kind).or_default();
        for (key, value) in added {
            by_key
                .entry((*key).to_owned())
                .or_default()
                .entry((*value).to_owned())
                .or_default()
                .insert(k.clone());
        }
    }

    /// The objects of kind `t` whose label `key` has one of `values`, in
    /// key order.
    pub fn carrying<'a>(
        &'a self,
        t: &ResourceType,
        key: &str,
        values: &[&str],
    ) -> BTreeSet<&'a ObjKey> {
        let Some(by_value) = self
            .kinds
            .get(&(t.group.clone(), t.plural.clone()))
            .and_then(|by_key| by_key.get(key))
        else {
            return BTreeSet::new();
        };
        values
            .iter()
            .filter_map(|v| by_value.get(*v))
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(name: &str) -> ObjKey {
        ObjKey {
            group: String::new(),
            plural: "pods".into(),
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[allow(clippy::needless_pass_by_value)] // reads as the literal it wraps
    fn pod(labels: Value) -> Value {
        json!({"metadata": {"labels": labels}})
    }

    fn names(index: &LabelIndex, key_: &str, values: &[&str]) -> Vec<String> {
        let pods = crate::kube::resource::builtin_types()
            .into_iter()
            .find(|t| t.group.is_empty() && t.plural == "pods")
            .unwrap();
        index
            .carrying(&pods, key_, values)
            .into_iter()
            .map(|k| k.name.clone())
            .collect()
    }

    #[test]
    fn an_object_is_found_by_the_labels_it_has_now_and_not_by_those_it_had() {
        let mut index = LabelIndex::default();
        let (a, b) = (
            pod(json!({"app": "web", "tier": "1"})),
            pod(json!({"app": "db"})),
        );
        index.update(&key("b"), None, Some(&b));
        index.update(&key("a"), None, Some(&a));
        assert_eq!(names(&index, "app", &["web"]), ["a"]);
        assert_eq!(
            names(&index, "app", &["web", "db"]),
            ["a", "b"],
            "in key order"
        );

        // A label changed: found under the new value only.
        let a2 = pod(json!({"app": "db", "tier": "1"}));
        index.update(&key("a"), Some(&a), Some(&a2));
        assert!(names(&index, "app", &["web"]).is_empty());
        assert_eq!(names(&index, "app", &["db"]), ["a", "b"]);
        assert_eq!(names(&index, "tier", &["1"]), ["a"]);

        // A label removed, then the object deleted.
        let a3 = pod(json!({"app": "db"}));
        index.update(&key("a"), Some(&a2), Some(&a3));
        assert!(names(&index, "tier", &["1"]).is_empty());
        index.update(&key("a"), Some(&a3), None);
        assert_eq!(names(&index, "app", &["db"]), ["b"]);
        assert!(names(&index, "missing", &["x"]).is_empty());
    }

    #[test]
    fn non_string_label_values_are_not_indexed() {
        let mut index = LabelIndex::default();
        index.update(&key("a"), None, Some(&pod(json!({"n": 5, "app": "web"}))));
        assert!(names(&index, "n", &["5"]).is_empty());
        assert_eq!(names(&index, "app", &["web"]), ["a"]);
    }
}
