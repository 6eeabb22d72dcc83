//! The `RemediationRequest` custom resource (`supersede.dev/v1alpha1`): one
//! alert fingerprint that needs remediating, and how often it was seen.
//!
//! The rule it keeps: **the Rust type is the schema** —
//! `deploy/crd/remediationrequest.yaml` is what [`crd_yaml`] prints
//! (`cargo run -p gateway --example remediationrequest_crd`), and a test fails when the
//! checked-in file differs.
//!
//! Names are built from the fingerprint, never from it directly:
//! `rr-<16 hex of sha256(fingerprint)>-<generation>` is a valid DNS
//! subdomain whatever the input, and the generation (1, 2, …) numbers the
//! requests of one fingerprint, so a new one may follow a terminal one
//! while the API server still refuses two creates of the same name.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::CustomResource;
use kube::core::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Label carrying [`fingerprint_hash`] of the request's fingerprint: the
/// gateway's check is one LIST by this label.
pub const LABEL_FINGERPRINT_HASH: &str = "supersede.dev/fingerprint-hash";
/// Label carrying the request's generation among those of its fingerprint.
pub const LABEL_GENERATION: &str = "supersede.dev/generation";
/// `app.kubernetes.io/managed-by` value of the requests the gateway creates.
pub const MANAGED_BY: &str = "supersede-gateway";

/// What a RemediationRequest asks for: the signal that raised it.
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "supersede.dev",
    version = "v1alpha1",
    kind = "RemediationRequest",
    plural = "remediationrequests",
    shortname = "rr",
    namespaced,
    status = "RemediationRequestStatus",
    derive = "PartialEq",
    doc = "One alert fingerprint that needs remediating, created once by the gateway whatever the number of replicas and deliveries.",
    printcolumn = r#"{"name": "Alert", "type": "string", "jsonPath": ".spec.alertName"}"#,
    printcolumn = r#"{"name": "Severity", "type": "string", "jsonPath": ".spec.severity"}"#,
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Count", "type": "integer", "jsonPath": ".status.deduplication.occurrenceCount"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RemediationRequestSpec {
    /// The signal's fingerprint (Alertmanager's, or the gateway's hash of
    /// its identifying labels).
    pub fingerprint: String,
    /// Who sent the signal (`alertmanager`, or the generic signal's `source`).
    pub source: String,
    /// The alert's name.
    pub alert_name: String,
    /// The alert's severity as sent (`critical`, `warning`, …).
    pub severity: String,
    /// The namespace the alert is about, when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_namespace: Option<String>,
    /// The resource the alert is about, when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceRef>,
    /// The alert's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The alert's annotations (summary, description, runbook, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// When the alert started firing, if the sender said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "date_time")]
    pub starts_at: Option<Timestamp>,
}

/// A Kubernetes object an alert is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceRef {
    /// Its kind (`Deployment`, `Pod`, …).
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// What became of a RemediationRequest (the status subresource).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationRequestStatus {
    /// Where the remediation is; `Completed`, `Failed` and `Cancelled` are
    /// terminal (a new signal of the fingerprint then creates a new request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RemediationPhase>,
    /// How often the fingerprint was received while this request was open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplication: Option<Deduplication>,
}

/// The occurrence count of a request.
///
/// Each gateway replica counts in its own entry of `replicas` (keyed by its
/// identity), by a compare-and-swap of that entry alone, so replicas
/// counting the same request never conflict with each other; a delivery is
/// answered 2xx only after its replica's entry landed. `occurrenceCount` is
/// the sum of the entries, folded in by a compare-and-swap of the whole
/// status right after: it never exceeds the deliveries accepted, and equals
/// them once the fold after the latest one landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deduplication {
    /// Deliveries of the fingerprint the gateway accepted (answered 2xx)
    /// for this request, the first one included: the sum of `replicas` as
    /// last folded.
    pub occurrence_count: u64,
    /// Deliveries accepted by each replica (its identity → its count).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replicas: BTreeMap<String, u64>,
    /// When the first one was accepted.
    #[schemars(schema_with = "date_time")]
    pub first_seen: Timestamp,
    /// When the latest one was accepted.
    #[schemars(schema_with = "date_time")]
    pub last_seen: Timestamp,
}

impl Deduplication {
    /// The deduplication status a request gets from its first count:
    /// replica `replica`'s `count`, seen first and last at `seen`, not yet
    /// folded into `occurrenceCount`.
    pub fn first_count(replica: &str, count: u64, seen: Timestamp) -> Self {
        Self {
            occurrence_count: 0,
            replicas: BTreeMap::from([(replica.to_owned(), count)]),
            first_seen: seen,
            last_seen: seen,
        }
    }
}

/// The phases of a RemediationRequest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RemediationPhase {
    /// Created, not picked up yet.
    Pending,
    /// A remediation works on it.
    InProgress,
    /// Remediated.
    Completed,
    /// The remediation failed.
    Failed,
    /// Abandoned.
    Cancelled,
}

impl RemediationPhase {
    /// Whether a request in this phase is finished: duplicates no longer
    /// count towards it.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl RemediationRequest {
    /// Whether the request is finished (see [`RemediationPhase::is_terminal`]).
    pub fn is_terminal(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(RemediationPhase::is_terminal)
    }

    /// The accepted deliveries counted so far (0 before the first count).
    pub fn occurrence_count(&self) -> u64 {
        self.status
            .as_ref()
            .and_then(|s| s.deduplication.as_ref())
            .map_or(0, |d| d.occurrence_count)
    }

    /// The accepted deliveries as the replicas' own counts say (at least
    /// [`occurrence_count`](Self::occurrence_count), which lags it until
    /// the fold after the latest delivery landed).
    pub fn counted(&self) -> u64 {
        self.status
            .as_ref()
            .and_then(|s| s.deduplication.as_ref())
            .map_or(0, |d| {
                d.replicas.values().sum::<u64>().max(d.occurrence_count)
            })
    }

    /// Replica `replica`'s own count, if it has counted this request.
    pub fn replica_count(&self, replica: &str) -> Option<u64> {
        self.status
            .as_ref()
            .and_then(|s| s.deduplication.as_ref())
            .and_then(|d| d.replicas.get(replica).copied())
    }

    /// Its generation among the requests of its fingerprint (from its
    /// label; 0 when absent or unreadable).
    pub fn generation(&self) -> u32 {
        self.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_GENERATION))
            .and_then(|g| g.parse().ok())
            .unwrap_or(0)
    }

    /// Generation `generation` of the request for `spec`'s fingerprint,
    /// named and labelled as the gateway names them.
    pub fn for_fingerprint(spec: RemediationRequestSpec, generation: u32) -> Self {
        let hash = fingerprint_hash(&spec.fingerprint);
        let name = request_name(&hash, generation);
        let labels = BTreeMap::from([
            (LABEL_FINGERPRINT_HASH.to_owned(), hash),
            (LABEL_GENERATION.to_owned(), generation.to_string()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                MANAGED_BY.to_owned(),
            ),
        ]);
        let mut request = Self::new(&name, spec);
        request.metadata.labels = Some(labels);
        request
    }
}

/// 16 hex digits of SHA-256 of `fingerprint`: a label value and name part
/// that is valid whatever the fingerprint holds.
pub fn fingerprint_hash(fingerprint: &str) -> String {
    let digest = Sha256::digest(fingerprint.as_bytes());
    hex::encode(&digest[..8])
}

/// `rr-<hash>-<generation>`.
pub fn request_name(hash: &str, generation: u32) -> String {
    format!("rr-{hash}-{generation}")
}

/// The `CustomResourceDefinition` of [`RemediationRequest`] as YAML,
/// exactly as `deploy/crd/remediationrequest.yaml` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(&RemediationRequest::crd())?;
    Ok(format!(
        "# Generated from bins/gateway/src/crd.rs: do not edit.\n\
         # Regenerate with `cargo run -p gateway --example remediationrequest_crd > deploy/crd/remediationrequest.yaml`.\n\
         {body}"
    ))
}

/// `{"type": "string", "format": "date-time"}`: a [`Timestamp`] on the wire.
fn date_time(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "format": "date-time",
    })
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    /// A spec of `fingerprint` with the rest fixed (for the crate's unit tests).
    pub(crate) fn spec(fingerprint: &str) -> RemediationRequestSpec {
        RemediationRequestSpec {
            fingerprint: fingerprint.into(),
            source: "alertmanager".into(),
            alert_name: "KubePodCrashLooping".into(),
            severity: "critical".into(),
            target_namespace: None,
            resource: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            starts_at: None,
        }
    }

    #[test]
    fn the_crd_is_namespaced_with_a_status_subresource_and_the_count_column() {
        let crd = serde_json::to_value(RemediationRequest::crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "remediationrequests.supersede.dev");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["subresources"]["status"], json!({}));
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert_eq!(
            status["deduplication"]["properties"]["occurrenceCount"]["type"],
            "integer"
        );
        assert_eq!(
            status["phase"]["enum"],
            json!(["Pending", "InProgress", "Completed", "Failed", "Cancelled"])
        );
    }

    #[test]
    fn names_are_valid_whatever_the_fingerprint_and_stable_for_one() {
        let odd = "Ünïcode / spaces & ../../ and a very long tail ".repeat(20);
        let a = RemediationRequest::for_fingerprint(spec(&odd), 1);
        let name = a.metadata.name.clone().unwrap();
        assert!(name.len() <= 63, "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{name}"
        );
        let b = RemediationRequest::for_fingerprint(spec(&odd), 1);
        assert_eq!(a.metadata.name, b.metadata.name);
        let next = RemediationRequest::for_fingerprint(spec(&odd), 2);
        assert_ne!(a.metadata.name, next.metadata.name);
        assert_eq!(next.generation(), 2);
    }

    #[test]
    fn only_completed_failed_and_cancelled_are_terminal() {
        let mut rr = RemediationRequest::for_fingerprint(spec("f"), 1);
        assert!(!rr.is_terminal(), "no status yet");
        for (phase, terminal) in [
            (RemediationPhase::Pending, false),
            (RemediationPhase::InProgress, false),
            (RemediationPhase::Completed, true),
            (RemediationPhase::Failed, true),
            (RemediationPhase::Cancelled, true),
        ] {
            rr.status = Some(RemediationRequestStatus {
                phase: Some(phase),
                deduplication: None,
            });
            assert_eq!(rr.is_terminal(), terminal, "{phase:?}");
        }
    }
}
