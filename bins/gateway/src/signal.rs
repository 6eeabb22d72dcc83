//! What the gateway accepts: the generic signal JSON and Prometheus
//! Alertmanager's webhook payload (version 4), validated into [`Signal`]s.
//!
//! The rule it keeps: **nothing unvalidated reaches the API server.** Every
//! field is bounded, every string checked, and a payload that fails any
//! check is refused as a whole with a message naming the field (the caller
//! answers 400 and creates nothing). The fingerprint identifies the alert:
//! Alertmanager's own when it sent one, else a stable hash of the signal's
//! identifying fields, so the same alert from any replica or retry maps to
//! the same request.
//!
//! # Generic signal (`POST /api/v1/signals`)
//!
//! ```json
//! {
//!   "source": "prometheus",
//!   "alertName": "KubePodCrashLooping",
//!   "severity": "critical",
//!   "namespace": "payments",
//!   "resource": {"kind": "Deployment", "name": "api"},
//!   "labels": {"team": "payments"},
//!   "annotations": {"summary": "api restarts every minute"},
//!   "fingerprint": "optional, 1-128 of [A-Za-z0-9._:-]"
//! }
//! ```
//!
//! `source`, `alertName` and `severity` are required; without a
//! `fingerprint` it is the hash of `source`, `alertName`, `namespace`,
//! `resource` and `labels` (annotations and severity do not identify an
//! alert: a severity change is the same alert).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::crd::{RemediationRequestSpec, ResourceRef};

/// The most labels (and, separately, annotations) a signal may carry.
pub const MAX_LABELS: usize = 64;
/// The longest label or annotation key.
pub const MAX_KEY_LEN: usize = 256;
/// The longest label value.
pub const MAX_LABEL_VALUE_LEN: usize = 1024;
/// The longest annotation value (summaries and descriptions are prose).
pub const MAX_ANNOTATION_VALUE_LEN: usize = 8 * 1024;
/// The longest fingerprint.
pub const MAX_FINGERPRINT_LEN: usize = 128;

/// A validated alert, ready to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// What identifies the alert (see the module documentation).
    pub fingerprint: String,
    /// Who sent it.
    pub source: String,
    /// The alert's name.
    pub alert_name: String,
    /// Its severity.
    pub severity: String,
    /// The namespace it is about.
    pub namespace: Option<String>,
    /// The resource it is about.
    pub resource: Option<ResourceRef>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// When it started firing.
    pub starts_at: Option<Timestamp>,
}

impl Signal {
    /// The spec of the RemediationRequest this signal raises.
    pub fn to_spec(&self) -> RemediationRequestSpec {
        RemediationRequestSpec {
            fingerprint: self.fingerprint.clone(),
            source: self.source.clone(),
            alert_name: self.alert_name.clone(),
            severity: self.severity.clone(),
            target_namespace: self.namespace.clone(),
            resource: self.resource.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            starts_at: self.starts_at,
        }
    }
}

/// A payload refused, with the reason a sender can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(message.into()))
}

/// The generic signal as sent (see the module documentation).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenericSignal {
    /// Who sends it.
    pub source: String,
    /// The alert's name.
    pub alert_name: String,
    /// Its severity.
    pub severity: String,
    /// The namespace it is about.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The resource it is about.
    #[serde(default)]
    pub resource: Option<ResourceRef>,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Its fingerprint, if the sender has one.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// When it started firing.
    #[serde(default)]
    pub starts_at: Option<Timestamp>,
}

/// Parses and validates a generic signal body.
pub fn parse_signal(body: &[u8]) -> Result<Signal, Invalid> {
    let raw: GenericSignal = serde_json::from_slice(body)
        .map_err(|e| Invalid(format!("the body is not a signal: {e}")))?;
    check_word("source", &raw.source, 63)?;
    check_text("alertName", &raw.alert_name, 256)?;
    check_word("severity", &raw.severity, 32)?;
    if let Some(ns) = &raw.namespace {
        check_word("namespace", ns, 63)?;
    }
    if let Some(r) = &raw.resource {
        check_word("resource.kind", &r.kind, 63)?;
        check_text("resource.name", &r.name, 253)?;
    }
    check_map("labels", &raw.labels, MAX_LABEL_VALUE_LEN)?;
    check_map("annotations", &raw.annotations, MAX_ANNOTATION_VALUE_LEN)?;
    let fingerprint = match raw.fingerprint {
        Some(f) => check_fingerprint(f)?,
        None => {
            let mut identity = raw.labels.clone();
            identity.insert("__source__".into(), raw.source.clone());
            identity.insert("__alertname__".into(), raw.alert_name.clone());
            if let Some(ns) = &raw.namespace {
                identity.insert("__namespace__".into(), ns.clone());
            }
            if let Some(r) = &raw.resource {
                identity.insert("__resource__".into(), format!("{}/{}", r.kind, r.name));
            }
            labels_fingerprint(&identity)
        }
    };
    Ok(Signal {
        fingerprint,
        source: raw.source,
        alert_name: raw.alert_name,
        severity: raw.severity,
        namespace: raw.namespace,
        resource: raw.resource,
        labels: raw.labels,
        annotations: raw.annotations,
        starts_at: raw.starts_at,
    })
}

/// Alertmanager's webhook payload, version 4
/// (`prometheus/alertmanager` `notify/webhook`): one group of alerts.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerPayload {
    /// Payload format version; only `"4"` is accepted.
    pub version: String,
    /// The group's key (identifies the aggregation group).
    #[serde(default)]
    pub group_key: String,
    /// `firing` or `resolved` (the group's).
    #[serde(default)]
    pub status: String,
    /// The receiver's name.
    #[serde(default)]
    pub receiver: String,
    /// Alerts left out because of `max_alerts`.
    #[serde(default)]
    pub truncated_alerts: u64,
    /// The alerts of the group.
    pub alerts: Vec<AlertmanagerAlert>,
}

/// One alert of an [`AlertmanagerPayload`].
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerAlert {
    /// `firing` or `resolved`.
    pub status: String,
    /// Its labels; `alertname` is required.
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When it started firing.
    #[serde(default)]
    pub starts_at: Option<String>,
    /// Alertmanager's fingerprint of its labels.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// One alert of a payload: recorded (firing) or skipped (resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertItem {
    /// A firing alert, to be recorded.
    Firing(Box<Signal>),
    /// A resolved alert with its fingerprint: nothing to remediate.
    Resolved(String),
}

/// The most alerts one Alertmanager request may carry.
pub const MAX_ALERTS_PER_PAYLOAD: usize = 1000;

/// Parses and validates an Alertmanager payload: all of it or nothing.
pub fn parse_alertmanager(body: &[u8]) -> Result<Vec<AlertItem>, Invalid> {
    let raw: AlertmanagerPayload = serde_json::from_slice(body).map_err(|e| {
        Invalid(format!(
            "the body is not an Alertmanager webhook payload: {e}"
        ))
    })?;
    if raw.version != "4" {
        return invalid(format!(
            "version {:?} is not supported: only Alertmanager's webhook version \"4\"",
            raw.version
        ));
    }
    if raw.alerts.is_empty() {
        return invalid("alerts is empty");
    }
    if raw.alerts.len() > MAX_ALERTS_PER_PAYLOAD {
        return invalid(format!(
            "{} alerts in one payload: at most {MAX_ALERTS_PER_PAYLOAD} (set max_alerts in webhook_configs)",
            raw.alerts.len()
        ));
    }
    raw.alerts
        .into_iter()
        .enumerate()
        .map(|(i, alert)| {
            alert_item(alert).map_err(|Invalid(m)| Invalid(format!("alerts[{i}]: {m}")))
        })
        .collect()
}

fn alert_item(alert: AlertmanagerAlert) -> Result<AlertItem, Invalid> {
    check_map("labels", &alert.labels, MAX_LABEL_VALUE_LEN)?;
    check_map("annotations", &alert.annotations, MAX_ANNOTATION_VALUE_LEN)?;
    let fingerprint = match alert.fingerprint.filter(|f| !f.is_empty()) {
        Some(f) => check_fingerprint(f)?,
        None => labels_fingerprint(&alert.labels),
    };
    match alert.status.as_str() {
        "firing" => {}
        "resolved" => return Ok(AlertItem::Resolved(fingerprint)),
        other => {
            return invalid(format!(
                "status {other:?} is neither \"firing\" nor \"resolved\""
            ));
        }
    }
    let Some(alert_name) = alert.labels.get("alertname").cloned() else {
        return invalid("labels.alertname is missing");
    };
    check_text("labels.alertname", &alert_name, 256)?;
    let severity = alert
        .labels
        .get("severity")
        .cloned()
        .unwrap_or_else(|| "none".to_owned());
    check_word("labels.severity", &severity, 32)?;
    let starts_at = match alert.starts_at.as_deref() {
        None | Some("") | Some("0001-01-01T00:00:00Z") => None,
        Some(t) => Some(
            t.parse::<Timestamp>()
                .map_err(|e| Invalid(format!("startsAt {t:?} is not an RFC 3339 time: {e}")))?,
        ),
    };
    let resource = [
        "deployment",
        "statefulset",
        "daemonset",
        "job",
        "pod",
        "node",
        "service",
    ]
    .iter()
    .find_map(|label| {
        alert.labels.get(*label).map(|name| ResourceRef {
            kind: kind_of(label),
            name: name.clone(),
        })
    });
    Ok(AlertItem::Firing(Box::new(Signal {
        fingerprint,
        source: "alertmanager".to_owned(),
        alert_name,
        severity,
        namespace: alert.labels.get("namespace").cloned(),
        resource,
        labels: alert.labels,
        annotations: alert.annotations,
        starts_at,
    })))
}

fn kind_of(label: &str) -> String {
    match label {
        "statefulset" => "StatefulSet".to_owned(),
        "daemonset" => "DaemonSet".to_owned(),
        other => {
            let mut chars = other.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        }
    }
}

/// A stable fingerprint of a label set: 16 hex digits of SHA-256 over the
/// labels sorted by name (as Alertmanager's own is a hash of the sorted
/// label set), each name and value length-prefixed so that no two label
/// sets share an encoding.
pub fn labels_fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in labels {
        hasher.update((k.len() as u64).to_be_bytes());
        hasher.update(k.as_bytes());
        hasher.update((v.len() as u64).to_be_bytes());
        hasher.update(v.as_bytes());
    }
    hex::encode(&hasher.finalize()[..8])
}

fn check_fingerprint(f: String) -> Result<String, Invalid> {
    if f.is_empty() || f.len() > MAX_FINGERPRINT_LEN {
        return invalid(format!(
            "fingerprint must be 1-{MAX_FINGERPRINT_LEN} characters"
        ));
    }
    if !f
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
    {
        return invalid("fingerprint may only hold A-Z, a-z, 0-9, '.', '_', ':' and '-'");
    }
    Ok(f)
}

/// A short identifier: 1-`max` of letters, digits, '.', '_', '-'.
fn check_word(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.is_empty() || value.len() > max {
        return invalid(format!("{field} must be 1-{max} characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return invalid(format!(
            "{field} {value:?} may only hold letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Printable text: 1-`max` bytes, no control characters.
fn check_text(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.trim().is_empty() || value.len() > max {
        return invalid(format!("{field} must be 1-{max} bytes of text"));
    }
    if value.chars().any(char::is_control) {
        return invalid(format!("{field} holds control characters"));
    }
    Ok(())
}

fn check_map(field: &str, map: &BTreeMap<String, String>, max_value: usize) -> Result<(), Invalid> {
    if map.len() > MAX_LABELS {
        return invalid(format!(
            "{field} has {} entries: at most {MAX_LABELS}",
            map.len()
        ));
    }
    for (k, v) in map {
        if k.is_empty() || k.len() > MAX_KEY_LEN || k.chars().any(char::is_control) {
            return invalid(format!(
                "{field} key {:?} must be 1-{MAX_KEY_LEN} bytes without control characters",
                k.chars().take(64).collect::<String>()
            ));
        }
        if v.len() > max_value {
            return invalid(format!("{field}.{k} is over {max_value} bytes"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_signal_without_fingerprint_gets_one_that_ignores_severity_and_annotations() {
        let a = parse_signal(br#"{"source":"p","alertName":"A","severity":"warning","labels":{"x":"1"},"annotations":{"s":"one"}}"#).unwrap();
        let b = parse_signal(br#"{"source":"p","alertName":"A","severity":"critical","labels":{"x":"1"},"annotations":{"s":"two"}}"#).unwrap();
        let c = parse_signal(
            br#"{"source":"p","alertName":"A","severity":"warning","labels":{"x":"2"}}"#,
        )
        .unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
        assert_eq!(a.fingerprint.len(), 16);
    }

    #[test]
    fn label_sets_that_concatenate_alike_have_different_fingerprints() {
        let a = BTreeMap::from([("ab".to_owned(), "c".to_owned())]);
        let b = BTreeMap::from([("a".to_owned(), "bc".to_owned())]);
        assert_ne!(labels_fingerprint(&a), labels_fingerprint(&b));
    }

    #[test]
    fn bad_signals_are_refused_with_the_field_named() {
        for (body, needle) in [
            (&br#"{"alertName":"A","severity":"x"}"#[..], "source"),
            (
                br#"{"source":"p","alertName":"","severity":"x"}"#,
                "alertName",
            ),
            (
                br#"{"source":"p","alertName":"A","severity":"x y"}"#,
                "severity",
            ),
            (
                br#"{"source":"p","alertName":"A","severity":"x","fingerprint":"a/b"}"#,
                "fingerprint",
            ),
            (
                br#"{"source":"p","alertName":"A\u0000","severity":"x"}"#,
                "control",
            ),
            (b"not json", "not a signal"),
        ] {
            let err = parse_signal(body).unwrap_err();
            assert!(err.0.contains(needle), "{needle}: {err}");
        }
    }
}
