//! [`CodeRunConfig`]: which custom resource [`KubeCodeRuns`](crate::KubeCodeRuns)
//! treats as runs, where it reads a run's task, role, head and phase, and
//! how it finds a run's pods — so a user's own CodeRun-like CRD is
//! configured at run time, not compiled in.
//!
//! The rule it keeps: **a configuration is checked once, before any call**
//! ([`CodeRunConfig::validate`]); a backend never meets a pointer that is
//! not a pointer or a status write its CRD cannot take.

use kube::Resource;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::crd::CodeRun;
use crate::workloads::{LABEL_CODE_RUN, LABEL_TASK_ID, phase};
use crate::{Error, Result};

/// Where a value of a run object is read (and, for the fields
/// `record_cancelled` writes, written).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Field {
    /// `metadata.labels[key]`.
    Label(String),
    /// `metadata.annotations[key]`.
    Annotation(String),
    /// A JSON pointer (RFC 6901) into the object, e.g. `/spec/headSha`.
    Pointer(String),
}

impl Field {
    /// The value of this field in `object` (the whole object as JSON), if
    /// it is a string (integers and booleans are read as their text; a
    /// fractional number cannot be read back exactly and is not read).
    pub fn read(&self, object: &Value) -> Option<String> {
        let value = match self {
            Self::Label(key) => object.pointer("/metadata/labels")?.get(key)?,
            Self::Annotation(key) => object.pointer("/metadata/annotations")?.get(key)?,
            Self::Pointer(pointer) => object.pointer(pointer)?,
        };
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// Adds `value` at this field to a JSON merge patch being built (`null`
    /// removes it).
    pub(crate) fn merge_into(&self, patch: &mut Map<String, Value>, value: Value) {
        let path: Vec<String> = match self {
            Self::Label(key) => vec!["metadata".into(), "labels".into(), key.clone()],
            Self::Annotation(key) => vec!["metadata".into(), "annotations".into(), key.clone()],
            Self::Pointer(pointer) => pointer
                .split('/')
                .skip(1)
                .map(|token| token.replace("~1", "/").replace("~0", "~"))
                .collect(),
        };
        let Some((last, parents)) = path.split_last() else {
            return;
        };
        let mut at = patch;
        for key in parents {
            let entry = at
                .entry(key.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            let Value::Object(next) = entry else {
                return;
            };
            at = next;
        }
        at.insert(last.clone(), value);
    }

    /// Whether writing this field goes through the `/status` subresource.
    fn is_status(&self) -> bool {
        matches!(self, Self::Pointer(p) if p.starts_with("/status/"))
    }

    fn check(&self, setting: &str) -> Result<()> {
        match self {
            Self::Label(key) | Self::Annotation(key) if key.is_empty() => Err(Error::Config(
                format!("{setting}: a label or annotation key must not be empty"),
            )),
            Self::Pointer(p) if !p.starts_with('/') || p.len() < 2 => Err(Error::Config(format!(
                "{setting}: {p:?} is not a JSON pointer (it starts with '/', e.g. /spec/headSha)"
            ))),
            _ => Ok(()),
        }
    }
}

/// How the pods executing a run are found.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PodMatch {
    /// Pods labelled `<key>=<run name>`, listed by that label. A pod whose
    /// owner references name another object of the run's kind (a run
    /// re-created under the same name) is not the run's; a pod with no
    /// owner reference of that kind is the run's by its label alone.
    Label(String),
    /// Pods with an owner reference to the run's uid. Every pod of the
    /// namespace is listed (and watched) to find them: prefer a label.
    Owner,
    /// Pods labelled `<key>=<run name>` that also have an owner reference
    /// to the run's uid.
    LabelAndOwner(String),
}

impl PodMatch {
    /// The label key pods are listed by, if any.
    pub fn label(&self) -> Option<&str> {
        match self {
            Self::Label(key) | Self::LabelAndOwner(key) => Some(key),
            Self::Owner => None,
        }
    }

    /// Whether a pod must reference the run's uid to be the run's.
    pub fn requires_owner(&self) -> bool {
        matches!(self, Self::Owner | Self::LabelAndOwner(_))
    }
}

/// Which custom resource holds runs and how to read it.
///
/// [`CodeRunConfig::default`] is supersede's own [`CodeRun`]: task id from
/// the `supersede.dev/task-id` label, role, head and phase from
/// `/spec/role`, `/spec/headSha`, `/status/phase`, pods by the
/// `supersede.dev/code-run` label. Serializable, so a binary can take it
/// from a configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CodeRunConfig {
    /// API group (`supersede.dev`).
    pub group: String,
    /// API version (`v1alpha1`).
    pub version: String,
    /// Kind (`CodeRun`).
    pub kind: String,
    /// Resource plural in URLs (`coderuns`).
    pub plural: String,
    /// Whether the CRD has the status subresource (then status fields are
    /// written through `/status`, which is all such a CRD accepts).
    pub status_subresource: bool,
    /// Where a run's task id is. A label makes a task's runs one LIST by
    /// selector; anything else lists every run of the namespace.
    pub task_id: Field,
    /// Where a run's agent role is.
    pub role: Field,
    /// Where the commit a run works on is.
    pub head_sha: Field,
    /// Where a run's phase is (absent reads as the empty phase).
    pub phase: Field,
    /// The phases in which a run is finished: never cancelled.
    pub terminal_phases: Vec<String>,
    /// The phase `record_cancelled` writes (one of `terminal_phases`).
    pub cancelled_phase: String,
    /// Where `record_cancelled` writes the superseding sha, if anywhere.
    pub superseded_by: Option<Field>,
    /// Where `record_cancelled` writes when the run finished (RFC 3339), if
    /// anywhere.
    pub finished_at: Option<Field>,
    /// How a run's pods are found.
    pub pods: PodMatch,
    /// Whether waits start their watches with a streaming list
    /// (`sendInitialEvents`, Kubernetes 1.27+ with the `WatchList` feature):
    /// one WATCH per kind instead of a LIST and a WATCH.
    pub streaming_lists: bool,
}

impl Default for CodeRunConfig {
    fn default() -> Self {
        Self {
            group: <CodeRun as Resource>::group(&()).into_owned(),
            version: <CodeRun as Resource>::version(&()).into_owned(),
            kind: <CodeRun as Resource>::kind(&()).into_owned(),
            plural: <CodeRun as Resource>::plural(&()).into_owned(),
            status_subresource: true,
            task_id: Field::Label(LABEL_TASK_ID.to_owned()),
            role: Field::Pointer("/spec/role".to_owned()),
            head_sha: Field::Pointer("/spec/headSha".to_owned()),
            phase: Field::Pointer("/status/phase".to_owned()),
            terminal_phases: phase::TERMINAL.iter().map(|&p| p.to_owned()).collect(),
            cancelled_phase: phase::CANCELLED.to_owned(),
            superseded_by: Some(Field::Pointer("/status/supersededBy".to_owned())),
            finished_at: Some(Field::Pointer("/status/finishedAt".to_owned())),
            pods: PodMatch::Label(LABEL_CODE_RUN.to_owned()),
            streaming_lists: false,
        }
    }
}

impl CodeRunConfig {
    /// Checks the configuration, naming the setting that is wrong.
    pub fn validate(&self) -> Result<()> {
        for (setting, value) in [
            ("version", &self.version),
            ("kind", &self.kind),
            ("plural", &self.plural),
            ("cancelledPhase", &self.cancelled_phase),
        ] {
            if value.is_empty() {
                return Err(Error::Config(format!("{setting} must not be empty")));
            }
        }
        self.task_id.check("taskId")?;
        self.role.check("role")?;
        self.head_sha.check("headSha")?;
        self.phase.check("phase")?;
        if !self.terminal_phases.contains(&self.cancelled_phase) {
            return Err(Error::Config(format!(
                "cancelledPhase {:?} must be one of terminalPhases {:?}, or a cancelled run would be cancelled again",
                self.cancelled_phase, self.terminal_phases
            )));
        }
        let writes = self.status_writes();
        for (setting, field) in &writes {
            field.check(setting)?;
        }
        if self.status_subresource
            && let Some((setting, _)) = writes.iter().find(|(_, f)| !f.is_status())
        {
            return Err(Error::Config(format!(
                "{setting}: with the status subresource, what recordCancelled writes must be under /status/ (it is written through /status)"
            )));
        }
        match &self.pods {
            PodMatch::Label(key) | PodMatch::LabelAndOwner(key) if key.is_empty() => Err(
                Error::Config("pods: the label key must not be empty".to_owned()),
            ),
            _ => Ok(()),
        }
    }

    /// The fields `record_cancelled` writes, named by their setting.
    pub(crate) fn status_writes(&self) -> Vec<(&'static str, &Field)> {
        let mut writes = vec![("phase", &self.phase)];
        if let Some(f) = &self.superseded_by {
            writes.push(("supersededBy", f));
        }
        if let Some(f) = &self.finished_at {
            writes.push(("finishedAt", f));
        }
        writes
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether `phase` is terminal.
    pub fn is_terminal(&self, phase: &str) -> bool {
        self.terminal_phases.iter().any(|p| p == phase)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_default_is_supersedes_own_coderun_and_is_valid() {
        let config = CodeRunConfig::default();
        config.validate().unwrap();
        assert_eq!(config.api_version(), "supersede.dev/v1alpha1");
        assert_eq!(config.plural, "coderuns");
        assert!(config.is_terminal("Cancelled"));
        assert!(!config.is_terminal("Running"));
    }

    #[test]
    fn fields_are_read_from_labels_annotations_and_pointers() {
        let object = json!({
            "metadata": {"labels": {"a/b": "x"}, "annotations": {"n": "y"}},
            "spec": {"pr": 7, "sha": "abc", "odd/key": "z"},
        });
        assert_eq!(
            Field::Label("a/b".into()).read(&object).as_deref(),
            Some("x")
        );
        assert_eq!(
            Field::Annotation("n".into()).read(&object).as_deref(),
            Some("y")
        );
        assert_eq!(
            Field::Pointer("/spec/pr".into()).read(&object).as_deref(),
            Some("7")
        );
        assert_eq!(
            Field::Pointer("/spec/odd~1key".into())
                .read(&object)
                .as_deref(),
            Some("z")
        );
        assert_eq!(Field::Pointer("/spec/none".into()).read(&object), None);
        let unquoted_sha = json!({"spec": {"sha": 1.1111111111111112e39}});
        assert_eq!(Field::Pointer("/spec/sha".into()).read(&unquoted_sha), None);
        assert_eq!(Field::Label("missing".into()).read(&object), None);
    }

    #[test]
    fn fields_build_a_merge_patch_at_their_place() {
        let mut patch = Map::new();
        Field::Pointer("/status/phase".into()).merge_into(&mut patch, json!("Cancelled"));
        Field::Pointer("/status/odd~1key".into()).merge_into(&mut patch, json!(1));
        Field::Annotation("supersede.dev/x".into()).merge_into(&mut patch, Value::Null);
        assert_eq!(
            Value::Object(patch),
            json!({
                "status": {"phase": "Cancelled", "odd/key": 1},
                "metadata": {"annotations": {"supersede.dev/x": null}},
            })
        );
    }

    #[test]
    fn a_configuration_that_cannot_work_is_refused_naming_its_setting() {
        let bad = |f: fn(&mut CodeRunConfig)| {
            let mut c = CodeRunConfig::default();
            f(&mut c);
            match c.validate() {
                Err(Error::Config(why)) => why,
                other => panic!("expected a Config error, got {other:?}"),
            }
        };
        assert!(bad(|c| c.head_sha = Field::Pointer("spec.headSha".into())).contains("headSha"));
        assert!(bad(|c| c.cancelled_phase = "Stopped".into()).contains("terminalPhases"));
        assert!(
            bad(|c| c.finished_at = Some(Field::Annotation("done".into()))).contains("finishedAt")
        );
        assert!(bad(|c| c.pods = PodMatch::Label(String::new())).contains("pods"));
        assert!(bad(|c| c.plural = String::new()).contains("plural"));
        // Without the status subresource, an annotation can record it.
        let mut c = CodeRunConfig {
            status_subresource: false,
            ..CodeRunConfig::default()
        };
        c.finished_at = Some(Field::Annotation("example.dev/finished-at".into()));
        c.validate().unwrap();
    }
}
