//! supersede's own `CodeRun` custom resource (`supersede.dev/v1alpha1`): one
//! agent run of a task (quality, testing, review, …) on one commit of a pull
//! request, executed by a pod.
//!
//! The rule it keeps: **the Rust type is the schema** — `deploy/crd/coderun.yaml`
//! is what [`crd_yaml`] prints (`cargo run -p cancel-coordinator --example
//! crd`), and a test fails when the checked-in file differs. Only std and
//! serde types appear in it (k8s-openapi is built without schemars), so
//! the schema stays structural and small.
//!
//! The task id and role are mirrored into labels ([`LABEL_TASK_ID`],
//! [`LABEL_ROLE`]) so a task's runs are one LIST by label selector;
//! [`CodeRun::labelled`] builds a run with them set. Its pods carry
//! [`LABEL_CODE_RUN`] = the run's name and an owner reference to it, which is
//! how [`KubeCodeRuns`](crate::KubeCodeRuns) finds them by default.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::CustomResource;
use kube::core::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::workloads::LABEL_CODE_RUN;
use crate::workloads::{LABEL_ROLE, LABEL_TASK_ID, phase};

/// What a CodeRun asks for: which task, pull request and commit the agent
/// works on, and what it runs.
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "supersede.dev",
    version = "v1alpha1",
    kind = "CodeRun",
    plural = "coderuns",
    shortname = "cr",
    namespaced,
    status = "CodeRunStatus",
    derive = "PartialEq",
    doc = "One agent run (quality, testing, review, …) of a task on one commit of a pull request, executed by a pod.",
    // Printer columns as JSON: clippy reads the `printcolumn(...)` form as
    // one attribute repeated (duplicated_attributes).
    printcolumn = r#"{"name": "Task", "type": "string", "jsonPath": ".spec.taskId"}"#,
    printcolumn = r#"{"name": "Role", "type": "string", "jsonPath": ".spec.role"}"#,
    printcolumn = r#"{"name": "Head", "type": "string", "jsonPath": ".spec.headSha"}"#,
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CodeRunSpec {
    /// The task this run works for (mirrored in the `supersede.dev/task-id` label).
    pub task_id: String,
    /// The agent role: `quality`, `testing`, `review`, `deploy`, … (mirrored
    /// in the `supersede.dev/role` label).
    pub role: String,
    /// The repository, as owner/name.
    pub repository: String,
    /// The pull request's number.
    pub pull_request: u64,
    /// The pull request's head branch.
    pub branch: String,
    /// The commit the agent works on (40 lower-case hex digits, or 64 in a
    /// SHA-256 repository).
    #[schemars(regex(pattern = r"^[0-9a-f]{40}([0-9a-f]{24})?$"))]
    pub head_sha: String,
    /// What the agent's pod runs.
    pub agent: AgentSpec,
}

/// The agent's container: image, command and environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Container image.
    pub image: String,
    /// Entrypoint (the image's when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments (the image's when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

/// One environment variable of the agent (plain values only: secrets are
/// mounted by the pod's controller, never written into a run).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EnvVar {
    /// Name.
    pub name: String,
    /// Value.
    #[serde(default)]
    pub value: String,
}

/// What became of a CodeRun (the status subresource).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CodeRunStatus {
    /// Where the run is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CodeRunPhase>,
    /// The pod executing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// When its pod started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "date_time")]
    pub started_at: Option<Timestamp>,
    /// When it finished (succeeded, failed or was cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "date_time")]
    pub finished_at: Option<Timestamp>,
    /// The head sha whose push cancelled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
}

/// The phases of a CodeRun; Succeeded, Failed and Cancelled are terminal
/// (the strings of `cancel_coordinator::workloads::phase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CodeRunPhase {
    /// Created, its pod not running yet.
    Pending,
    /// Its pod runs.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished unsuccessfully.
    Failed,
    /// Cancelled by a newer push (its pods gone), kept for audit.
    Cancelled,
}

impl CodeRunPhase {
    /// The phase as written in `status.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => phase::PENDING,
            Self::Running => phase::RUNNING,
            Self::Succeeded => phase::SUCCEEDED,
            Self::Failed => phase::FAILED,
            Self::Cancelled => phase::CANCELLED,
        }
    }

    /// Whether a run in this phase is finished (never cancelled again).
    pub fn is_terminal(self) -> bool {
        phase::TERMINAL.contains(&self.as_str())
    }
}

impl CodeRun {
    /// A run `name` with `spec`, its task id and role mirrored into the
    /// `supersede.dev/task-id` and `supersede.dev/role` labels (so it is
    /// found by the task's LIST).
    pub fn labelled(name: &str, spec: CodeRunSpec) -> Self {
        let labels = BTreeMap::from([
            (LABEL_TASK_ID.to_owned(), spec.task_id.clone()),
            (LABEL_ROLE.to_owned(), spec.role.clone()),
        ]);
        let mut run = Self::new(name, spec);
        run.metadata.labels = Some(labels);
        run
    }
}

/// The `CustomResourceDefinition` of [`CodeRun`] as YAML, exactly as
/// `deploy/crd/coderun.yaml` holds it (a header comment, then the document).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(&CodeRun::crd())?;
    Ok(format!(
        "# Generated from crates/cancel-coordinator/src/crd.rs: do not edit.\n\
         # Regenerate with `cargo run -p cancel-coordinator --example coderun_crd > deploy/crd/coderun.yaml`.\n\
         {body}"
    ))
}

/// `{"type": "string", "format": "date-time"}`: a [`Timestamp`] on the wire
/// (RFC 3339, as Kubernetes writes times).
fn date_time(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "format": "date-time",
        "nullable": true,
    })
}

#[cfg(test)]
mod tests {
    use kube::{Resource, ResourceExt};
    use serde_json::{Value, json};

    use super::*;

    fn spec() -> CodeRunSpec {
        CodeRunSpec {
            task_id: "42".into(),
            role: "quality".into(),
            repository: "acme/widgets".into(),
            pull_request: 7,
            branch: "feature".into(),
            head_sha: "1111111111111111111111111111111111111111".into(),
            agent: AgentSpec {
                image: "agent:1".into(),
                ..AgentSpec::default()
            },
        }
    }

    #[test]
    fn the_crd_is_namespaced_with_a_status_subresource_a_short_name_and_printer_columns() {
        let crd = serde_json::to_value(CodeRun::crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "coderuns.supersede.dev");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["cr"]));
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert_eq!(version["subresources"]["status"], json!({}));
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Task", "Role", "Head", "Phase", "Age"]);
        let schema = &version["schema"]["openAPIV3Schema"]["properties"];
        let required = &schema["spec"]["required"];
        for field in [
            "taskId",
            "role",
            "repository",
            "pullRequest",
            "branch",
            "headSha",
            "agent",
        ] {
            assert!(
                required.as_array().unwrap().contains(&json!(field)),
                "{field} is required"
            );
        }
        assert_eq!(
            schema["status"]["properties"]["phase"]["enum"],
            json!(["Pending", "Running", "Succeeded", "Failed", "Cancelled"])
        );
        assert_eq!(
            schema["status"]["properties"]["finishedAt"]["format"],
            "date-time"
        );
    }

    #[test]
    fn a_labelled_run_mirrors_its_task_and_role_into_labels_and_serializes_in_camel_case() {
        let mut run = CodeRun::labelled("run-1", spec());
        assert_eq!(run.labels()[LABEL_TASK_ID], "42");
        assert_eq!(run.labels()[LABEL_ROLE], "quality");
        run.status = Some(CodeRunStatus {
            phase: Some(CodeRunPhase::Cancelled),
            finished_at: Some(Timestamp::UNIX_EPOCH),
            superseded_by: Some("2222222222222222222222222222222222222222".into()),
            ..CodeRunStatus::default()
        });
        let wire = serde_json::to_value(&run).unwrap();
        assert_eq!(wire["apiVersion"], "supersede.dev/v1alpha1");
        assert_eq!(wire["spec"]["headSha"], spec().head_sha);
        assert_eq!(wire["spec"]["pullRequest"], 7);
        assert_eq!(wire["status"]["phase"], "Cancelled");
        assert_eq!(wire["status"]["finishedAt"], "1970-01-01T00:00:00Z");
        assert!(wire["status"].get("podName").is_none());
        let back: CodeRun = serde_json::from_value(wire).unwrap();
        assert_eq!(back, run);
        assert_eq!(
            <CodeRun as Resource>::plural(&()),
            "coderuns",
            "the plural the Kubernetes backend addresses"
        );
    }

    #[test]
    fn phases_are_the_strings_the_workloads_contract_names() {
        let all = [
            CodeRunPhase::Pending,
            CodeRunPhase::Running,
            CodeRunPhase::Succeeded,
            CodeRunPhase::Failed,
            CodeRunPhase::Cancelled,
        ];
        for p in all {
            assert_eq!(serde_json::to_value(p).unwrap(), Value::from(p.as_str()));
        }
        let terminal: Vec<_> = all.into_iter().filter(|p| p.is_terminal()).collect();
        assert_eq!(
            terminal,
            [
                CodeRunPhase::Succeeded,
                CodeRunPhase::Failed,
                CodeRunPhase::Cancelled
            ]
        );
    }
}
