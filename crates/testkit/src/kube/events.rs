//! core/v1 and events.k8s.io/v1 Events: two APIs over one set of objects.
//!
//! The API server stores every Event once, in the core form, and serves it
//! through both groups, converting field names on the way (`regarding` is
//! `involvedObject`, `note` is `message`, `reportingController` is
//! `reportingComponent`, `deprecatedSource`/`deprecatedFirstTimestamp`/
//! `deprecatedLastTimestamp`/`deprecatedCount` are `source`/
//! `firstTimestamp`/`lastTimestamp`/`count`). FakeKube does the same: an
//! events.k8s.io request is served from the core store, its bodies and
//! field selectors converted in, its answers converted out. The rule it
//! keeps: **what one API writes, the other reads**, so a recorder writing
//! events.k8s.io Events is seen by `kubectl get events`.

use serde_json::{Map, Value, json};

use super::resource::ResourceType;

/// `(events.k8s.io/v1 name, core/v1 name)` of the top-level fields that are
/// renamed; every other field has the same name in both.
const RENAMED: [(&str, &str); 7] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Whether `t` is events.k8s.io's view of the core Events.
pub(crate) fn is_events_v1(t: &ResourceType) -> bool {
    t.group == "events.k8s.io" && t.plural == "events"
}

/// An events.k8s.io/v1 Event in its stored (core/v1) form.
pub(crate) fn to_core(event: Value) -> Value {
    rename(event, "v1", |name| {
        RENAMED
            .iter()
            .find(|(new, _)| *new == name)
            .map(|(_, core)| *core)
    })
}

/// A stored (core/v1) Event as events.k8s.io/v1 serves it.
pub(crate) fn to_events_v1(event: &Value) -> Value {
    rename(event.clone(), "events.k8s.io/v1", |name| {
        RENAMED
            .iter()
            .find(|(_, core)| *core == name)
            .map(|(new, _)| *new)
    })
}

/// A field selector of events.k8s.io/v1 in core/v1 field names (the API
/// server's field label conversion).
pub(crate) fn core_field(field: &str) -> String {
    if let Some(rest) = field.strip_prefix("regarding.") {
        return format!("involvedObject.{rest}");
    }
    match field {
        "reportingController" => "reportingComponent".to_owned(),
        other => other.to_owned(),
    }
}

fn rename(
    event: Value,
    api_version: &str,
    renamed: impl Fn(&str) -> Option<&'static str>,
) -> Value {
    let Value::Object(fields) = event else {
        return event;
    };
    let mut out = Map::new();
    for (name, value) in fields {
        let name = renamed(&name).map_or(name, str::to_owned);
        out.insert(name, value);
    }
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!("Event"));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_convert_into_each_other() {
        let v1 = json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "e1"},
            "regarding": {"kind": "Pod", "name": "p1"},
            "note": "pulled",
            "reason": "Pulled",
            "reportingController": "kubelet",
            "deprecatedCount": 3,
            "series": {"count": 2},
        });
        let core = to_core(v1.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "p1");
        assert_eq!(core["message"], "pulled");
        assert_eq!(core["reportingComponent"], "kubelet");
        assert_eq!(core["count"], 3);
        assert_eq!(core["reason"], "Pulled");
        assert_eq!(core["series"]["count"], 2);
        assert!(core.get("regarding").is_none());
        assert_eq!(to_events_v1(&core), v1);
    }

    #[test]
    fn field_selectors_are_renamed_to_core_fields() {
        assert_eq!(core_field("regarding.name"), "involvedObject.name");
        assert_eq!(core_field("reportingController"), "reportingComponent");
        assert_eq!(core_field("type"), "type");
    }
}
