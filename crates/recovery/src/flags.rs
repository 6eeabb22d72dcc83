//! `needs-intervention`: what the reconciler cannot repair is flagged on
//! the task's state ConfigMap (an annotation operators see with `kubectl`),
//! with a Kubernetes Event on it, and counted in a gauge; the API lists,
//! retries and resolves flagged tasks.
//!
//! The rule it keeps: a flag is never cleared silently — retrying or
//! resolving it is an explicit call, and resolving records who and why in
//! the task's state.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::Kind;

/// The annotation on a task's state ConfigMap marking it for a human:
/// `<kind>: <reason>`.
pub const ANNOTATION_NEEDS_INTERVENTION: &str = "supersede.dev/needs-intervention";

/// State metadata key recording the last resolution of a flag:
/// `<when> <who>: <why>`.
pub const METADATA_RESOLVED: &str = "supersede.dev/intervention-resolved";

/// Longest reason kept in a flag.
const MAX_REASON: usize = 512;

/// A flagged task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flagged {
    /// The task.
    pub task_id: String,
    /// Why (`<kind>: <reason>`).
    pub reason: String,
}

/// The flag's text for `kind` and `reason`, bounded.
pub(crate) fn flag_text(kind: Kind, reason: &str) -> String {
    let mut text = format!("{}: {reason}", kind.as_str());
    if text.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Publishes a Warning Event about the task's state ConfigMap; best
/// effort (the annotation is the record, the Event a notification).
pub(crate) async fn publish(
    events: Option<&(Recorder, String)>,
    config_map: &str,
    kind: Kind,
    reason: &str,
) {
    let Some((recorder, namespace)) = events else {
        return;
    };
    let reference = ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("ConfigMap".to_owned()),
        name: Some(config_map.to_owned()),
        namespace: Some(namespace.clone()),
        ..ObjectReference::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "NeedsIntervention".to_owned(),
        note: Some(flag_text(kind, reason)),
        action: kind.as_str().to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        warn!(config_map, error = %e, "could not publish the intervention event");
    }
}
