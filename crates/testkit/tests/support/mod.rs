//! What several of FakeKube's test files share: a custom resource shaped
//! like supersede's CodeRun, and the event kube's Recorder publishes for
//! the recovery controller.

// Each test file is its own crate and uses only a part of this module.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, CustomResource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use testkit::kube::FakeKube;

/// A run of an agent that owns its Pods, like supersede's CodeRun.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[kube(
    group = "test.supersede.dev",
    version = "v1",
    kind = "CodeRun",
    namespaced
)]
pub struct CodeRunSpec {
    /// The commit being worked on (serialized as `head_sha`).
    pub head_sha: String,
}

/// A client for `kube` without kube's built-in retry of 429/503/504, so
/// every injected or lost answer reaches the caller.
pub fn client_without_retry(kube: &FakeKube) -> Client {
    let mut config = kube.config();
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

/// A ConfigMap named `name`, with no data.
pub fn config_map(name: &str) -> k8s_openapi::api::core::v1::ConfigMap {
    let mut cm = k8s_openapi::api::core::v1::ConfigMap::default();
    cm.metadata.name = Some(name.to_owned());
    cm
}

/// A CodeRun named `name` on commit `abc`.
pub fn code_run(name: &str) -> CodeRun {
    CodeRun::new(
        name,
        CodeRunSpec {
            head_sha: "abc".to_owned(),
        },
    )
}

/// The controller the recorded events are reported by.
pub const REPORTER: &str = "supersede-recovery";

/// The note of [`publish_needs_intervention`].
pub const NOTE: &str = "journal cannot be rolled back";

/// Publishes, through kube's event `Recorder` (events.k8s.io/v1), the
/// recovery controller's warning that `object` needs a human.
pub async fn publish_needs_intervention(client: Client, object: &ObjectReference) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: REPORTER.into(),
            instance: None,
        },
    );
    let event = Event {
        type_: EventType::Warning,
        reason: "NeedsIntervention".into(),
        note: Some(NOTE.into()),
        action: "Recover".into(),
        secondary: None,
    };
    recorder.publish(&event, object).await.unwrap();
}
