//! [`KubeCodeRuns`]: the [`Workloads`] of tasks on the Kubernetes API —
//! runs as custom resources read through `DynamicObject` (so a user's own
//! CodeRun-like CRD is a [`CodeRunConfig`], not a Rust type), executed by
//! pods.
//!
//! The rule it keeps: **no write leaves without its precondition**. The
//! intent, the cancellation record and the intervention flag are JSON merge
//! patches carrying the `metadata.resourceVersion` read (a compare-and-swap:
//! resourceVersions are unique across objects, so a run re-created under
//! the same name never matches); every delete carries `preconditions.uid`
//! of the object it means. Server-side apply with force and unconditional
//! deletes are never used: they silently lose updates.
//!
//! How each call maps to the API (calls for one run with one pod):
//!
//! | call | requests |
//! |---|---|
//! | `runs` | 1 LIST of runs by the task label |
//! | `run` | 1 GET |
//! | `mark_superseded` | 1 PATCH (none when the run read is already marked with that sha; + 1 GET on a conflict, to tell "already marked" from "changed") |
//! | `terminate` | Delete mode: 1 DELETE of the run (`propagationPolicy: Foreground`, uid precondition); Stop mode: 1 LIST of its pods + 1 DELETE per pod (`gracePeriodSeconds`, uid precondition) |
//! | `force` | 1 LIST of its pods + 1 DELETE per pod (`gracePeriodSeconds: 0`) |
//! | `remains` | 1 GET + 1 LIST of its pods |
//! | `wait_gone` (any number of runs) | of the pods: 1 LIST + 1 WATCH, or 1 WATCH with [`CodeRunConfig::streaming_lists`] |
//! | `record_cancelled` | 1 PATCH of `/status` (+ 1 GET and 1 PATCH per conflict) |
//! | `flag_intervention` | 1 PATCH (+ 1 GET and 1 PATCH per conflict) |
//!
//! In Delete mode the run is deleted with Foreground propagation and
//! nothing else: Kubernetes' garbage collector deletes its pods with
//! DeleteOptions of its own (the propagation policy and a uid
//! precondition, no `gracePeriodSeconds`), so each pod gets its own
//! `terminationGracePeriodSeconds` — the pod's contract with its process,
//! as DESIGN §4 has it — and the saga force-deletes what is left after its
//! deadline. One call per run. In Stop mode we delete the pods, each with
//! the grace asked for.
//!
//! A task's cancellation of *n* runs therefore costs 1 LIST of runs, *n*
//! intent PATCHes, *n* DELETEs and one wait (a LIST and a WATCH of the
//! pods, or one streaming WATCH): 2*n* + 3 requests (2*n* + 2 with
//! streaming lists).

mod config;
mod pods;
mod wait;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::try_join_all;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DeleteParams, ListParams, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::core::{DynamicObject, GroupVersionKind};
use serde_json::{Map, Value, json};
use tokio::time::Instant;
use tracing::debug;

pub use self::config::{CodeRunConfig, Field, PodMatch};
use crate::workloads::{
    ANNOTATION_CANCEL_OPERATION, ANNOTATION_CORRELATION_ID, ANNOTATION_NEEDS_INTERVENTION,
    ANNOTATION_SUPERSEDED_AT, ANNOTATION_SUPERSEDED_BY, CancelMode, Intent, Remains, Run, RunPage,
    Workloads,
};
use crate::{Error, Result};

/// The field manager of every write (what `managedFields` and audit logs
/// name).
pub const FIELD_MANAGER: &str = "supersede-cancel-coordinator";

/// How many times a conditional write re-reads and retries after a
/// conflict before it reports `Conflict` (a run whose status its own
/// controller rewrites steadily still gets written; a hot loop does not
/// run forever).
const MAX_WRITE_CONFLICTS: usize = 5;

/// Runs of tasks as custom resources in one namespace, and their pods.
/// Cheap to clone (a `kube::Client` is).
///
/// Needs, in its namespace: get, list, watch, patch and delete on the
/// runs' resource, patch on its `/status`, list, watch and delete on pods.
///
/// ```no_run
/// # async fn example(client: kube::Client) -> cancel_coordinator::Result<()> {
/// use cancel_coordinator::{CodeRunConfig, KubeCodeRuns, Workloads};
///
/// let workloads = KubeCodeRuns::new(client, "agents", CodeRunConfig::default())?;
/// for run in workloads.runs("42").await? {
///     println!("{} ({}) on {}: {}", run.name, run.role, run.head_sha, run.phase);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KubeCodeRuns {
    client: kube::Client,
    namespace: String,
    config: Arc<CodeRunConfig>,
    resource: ApiResource,
    clock: Clock,
}

impl std::fmt::Debug for KubeCodeRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCodeRuns")
            .field("namespace", &self.namespace)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

impl KubeCodeRuns {
    /// Runs of `config`'s kind in `namespace`, through `client`; refuses a
    /// configuration that cannot work ([`CodeRunConfig::validate`]).
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        config: CodeRunConfig,
    ) -> Result<Self> {
        config.validate()?;
        let namespace = namespace.into();
        if namespace.is_empty() {
            return Err(Error::Config(
                "the runs' namespace must not be empty".into(),
            ));
        }
        let gvk = GroupVersionKind::gvk(&config.group, &config.version, &config.kind);
        Ok(Self {
            client,
            namespace,
            resource: ApiResource::from_gvk_with_plural(&gvk, &config.plural),
            config: Arc::new(config),
            clock: Clock::start(),
        })
    }

    /// The configuration it reads runs by.
    pub fn config(&self) -> &CodeRunConfig {
        &self.config
    }

    /// The namespace of its runs and pods.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn runs_api(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &self.resource)
    }

    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A run object as a [`Run`], read where the configuration says.
    fn parse(&self, object: &DynamicObject) -> Result<Run> {
        let meta = &object.metadata;
        let name = meta.name.clone().unwrap_or_default();
        let invalid = |reason: String| Error::InvalidRun {
            name: name.clone(),
            reason,
        };
        let uid = meta
            .uid
            .clone()
            .ok_or_else(|| invalid("it has no metadata.uid".into()))?;
        let resource_version = meta
            .resource_version
            .clone()
            .ok_or_else(|| invalid("it has no metadata.resourceVersion".into()))?;
        let whole = serde_json::to_value(object).map_err(|e| invalid(e.to_string()))?;
        let required = |field: &Field, what: &str| {
            field
                .read(&whole)
                .ok_or_else(|| invalid(format!("no {what} at {field:?}")))
        };
        let phase = self.config.phase.read(&whole).unwrap_or_default();
        Ok(Run {
            task_id: required(&self.config.task_id, "task id")?,
            role: required(&self.config.role, "role")?,
            head_sha: required(&self.config.head_sha, "head sha")?,
            terminal: self.config.is_terminal(&phase),
            phase,
            created_at: meta.creation_timestamp.as_ref().map(|t| t.0),
            // The intent annotation, else what `record_cancelled` wrote.
            superseded_by: Field::Annotation(ANNOTATION_SUPERSEDED_BY.to_owned())
                .read(&whole)
                .or_else(|| self.config.superseded_by.as_ref()?.read(&whole)),
            cancel_operation: Field::Annotation(ANNOTATION_CANCEL_OPERATION.to_owned())
                .read(&whole),
            superseded_at: Field::Annotation(ANNOTATION_SUPERSEDED_AT.to_owned())
                .read(&whole)
                .and_then(|t| t.parse().ok()),
            deleting: meta.deletion_timestamp.is_some(),
            name,
            uid,
            resource_version,
        })
    }

    /// The run object `name` as it is now.
    async fn get(&self, name: &str) -> Result<Option<DynamicObject>> {
        self.runs_api()
            .get_opt(name)
            .await
            .map_err(|e| Error::from_kube(e, name))
    }

    /// The pods of `run` that exist now (one LIST).
    async fn pods_of(&self, run: &Run) -> Result<Vec<Pod>> {
        let mut params = ListParams::default();
        if let Some(key) = self.config.pods.label() {
            if !is_label_value(&run.name) {
                return Err(not_a_label_value(&run.name));
            }
            params = params.labels(&format!("{key}={}", run.name));
        }
        let list = self
            .pods_api()
            .list(&params)
            .await
            .map_err(|e| Error::from_kube(e, &run.name))?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| pods::belongs(&self.config, p, run))
            .collect())
    }

    /// Deletes every pod of `run` with `grace` seconds, each conditional on
    /// its uid; pods already gone (or replaced) are fine.
    async fn delete_pods(&self, run: &Run, grace: u32) -> Result<()> {
        let pods = self.pods_of(run).await?;
        let api = self.pods_api();
        try_join_all(pods.iter().map(|pod| {
            let api = &api;
            async move {
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                let params = DeleteParams {
                    grace_period_seconds: Some(grace),
                    preconditions: Some(Preconditions {
                        uid: pod.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                debug!(run = %run.name, pod = name, grace, "deleting pod");
                deleted(api.delete(name, &params).await, name)
            }
        }))
        .await?;
        Ok(())
    }

    /// A JSON merge patch of run `run` (of its `/status` when `status`),
    /// conditional on the resourceVersion: `patch_for` builds the change
    /// from the run as last read (`None`: nothing to write); on a conflict
    /// the run is read again and the change rebuilt, at most
    /// [`MAX_WRITE_CONFLICTS`] times. `Ok(false)`: the run is gone (or
    /// replaced by an object of another uid).
    async fn write_if_same(
        &self,
        run: &Run,
        status: bool,
        mut patch_for: impl FnMut(&Run) -> Option<Map<String, Value>> + Send,
    ) -> Result<bool> {
        let api = self.runs_api();
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let mut current = run.clone();
        for _ in 0..MAX_WRITE_CONFLICTS {
            let Some(mut patch) = patch_for(&current) else {
                return Ok(true);
            };
            Field::Pointer("/metadata/resourceVersion".into())
                .merge_into(&mut patch, Value::String(current.resource_version.clone()));
            let patch = Patch::Merge(Value::Object(patch));
            let answer = if status {
                api.patch_status(&run.name, &params, &patch).await
            } else {
                api.patch(&run.name, &params, &patch).await
            };
            match answer.map_err(|e| Error::from_kube(e, &run.name)) {
                Ok(_) => return Ok(true),
                Err(Error::Conflict { .. }) => match self.get(&run.name).await? {
                    Some(object) if object.metadata.uid.as_deref() == Some(run.uid.as_str()) => {
                        current = self.parse(&object)?;
                    }
                    _ => return Ok(false),
                },
                Err(e) if e.is_not_found() => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict {
            name: run.name.clone(),
        })
    }
}

#[async_trait]
impl Workloads for KubeCodeRuns {
    async fn runs(&self, task_id: &str) -> Result<Vec<Run>> {
        let mut params = ListParams::default();
        if let Field::Label(key) = &self.config.task_id {
            if !is_label_value(task_id) {
                return Err(Error::InvalidRequest {
                    reason: format!(
                        "task id {task_id:?} is not a label value, so no run can carry it in {key}"
                    ),
                });
            }
            params = params.labels(&format!("{key}={task_id}"));
        }
        let list = self
            .runs_api()
            .list(&params)
            .await
            .map_err(|e| Error::from_kube(e, task_id))?;
        // Without a label selector the LIST holds every run of the
        // namespace: objects of other tasks are skipped before they are
        // parsed, so one that cannot be read never fails this task.
        let mut runs = list
            .items
            .iter()
            .filter(|o| {
                serde_json::to_value(o)
                    .is_ok_and(|v| self.config.task_id.read(&v).as_deref() == Some(task_id))
            })
            .map(|o| self.parse(o))
            .collect::<Result<Vec<_>>>()?;
        runs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(runs)
    }

    async fn run(&self, name: &str) -> Result<Option<Run>> {
        self.get(name).await?.map(|o| self.parse(&o)).transpose()
    }

    async fn list_runs(&self, limit: u32, continue_token: Option<String>) -> Result<RunPage> {
        let mut params = ListParams::default().limit(limit.max(1));
        if let Field::Label(key) = &self.config.task_id {
            // Every run carries the task label: objects without it are not runs.
            params = params.labels(key);
        }
        if let Some(token) = continue_token.as_deref() {
            params = params.continue_token(token);
        }
        let list = self
            .runs_api()
            .list(&params)
            .await
            .map_err(|e| Error::from_kube(e, "(list)"))?;
        let mut page = RunPage {
            continue_token: list.metadata.continue_.clone().filter(|t| !t.is_empty()),
            ..RunPage::default()
        };
        for object in &list.items {
            match self.parse(object) {
                Ok(run) => page.runs.push(run),
                Err(_) => page
                    .unreadable
                    .push(object.metadata.name.clone().unwrap_or_default()),
            }
        }
        Ok(page)
    }

    async fn mark_superseded(&self, run: &Run, intent: &Intent) -> Result<Run> {
        if run.superseded_by.as_deref() == Some(intent.superseded_by.as_str()) {
            return Ok(run.clone());
        }
        let conflict = || Error::Conflict {
            name: run.name.clone(),
        };
        let patch = json!({"metadata": {
            "resourceVersion": run.resource_version,
            "annotations": {
                ANNOTATION_SUPERSEDED_BY: intent.superseded_by,
                ANNOTATION_SUPERSEDED_AT: intent.at.to_string(),
                ANNOTATION_CANCEL_OPERATION: intent.operation_id,
                ANNOTATION_CORRELATION_ID: intent.correlation_id,
            },
        }});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        debug!(run = %run.name, superseded_by = %intent.superseded_by, "recording intent");
        match self
            .runs_api()
            .patch(&run.name, &params, &Patch::Merge(patch))
            .await
            .map_err(|e| Error::from_kube(e, &run.name))
        {
            Ok(written) => self.parse(&written),
            // Changed since read: success only if it is the same run and
            // already carries this intent (a retry after a lost answer).
            Err(Error::Conflict { .. }) => match self.run(&run.name).await? {
                Some(current)
                    if current.uid == run.uid
                        && current.superseded_by.as_deref()
                            == Some(intent.superseded_by.as_str()) =>
                {
                    Ok(current)
                }
                _ => Err(conflict()),
            },
            Err(e) if e.is_not_found() => Err(conflict()),
            Err(e) => Err(e),
        }
    }

    async fn terminate(&self, run: &Run, mode: CancelMode, grace: Duration) -> Result<()> {
        if mode == CancelMode::Stop {
            return self.delete_pods(run, grace_seconds(grace)).await;
        }
        // Delete: one call; the garbage collector deletes the pods, which
        // get their own terminationGracePeriodSeconds.
        {
            let params = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Foreground),
                preconditions: Some(Preconditions {
                    uid: Some(run.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            debug!(run = %run.name, "deleting run (foreground)");
            deleted(self.runs_api().delete(&run.name, &params).await, &run.name)?;
        }
        Ok(())
    }

    async fn force(&self, run: &Run) -> Result<()> {
        self.delete_pods(run, 0).await
    }

    async fn remains(&self, run: &Run) -> Result<Remains> {
        let (object, pods) = futures::try_join!(self.get(&run.name), self.pods_of(run))?;
        Ok(pods::remains_of(
            &self.config,
            run,
            object.as_ref(),
            &pods,
            self.clock.now(),
        ))
    }

    async fn wait_gone(
        &self,
        runs: &[Run],
        mode: CancelMode,
        deadline: Instant,
    ) -> Result<Vec<Remains>> {
        wait::wait_gone(self, runs, mode, deadline).await
    }

    async fn record_cancelled(&self, run: &Run, intent: &Intent) -> Result<()> {
        let config = &self.config;
        let finished_at = self.clock.now().to_string();
        let written = self
            .write_if_same(run, config.status_subresource, |current| {
                if current.phase == config.cancelled_phase {
                    return None;
                }
                let mut patch = Map::new();
                config
                    .phase
                    .merge_into(&mut patch, config.cancelled_phase.clone().into());
                if let Some(field) = &config.superseded_by {
                    field.merge_into(&mut patch, intent.superseded_by.clone().into());
                }
                if let Some(field) = &config.finished_at {
                    field.merge_into(&mut patch, finished_at.clone().into());
                }
                Some(patch)
            })
            .await?;
        if written {
            Ok(())
        } else {
            Err(Error::Api {
                status: 404,
                reason: "NotFound".into(),
                message: format!("run {} not found (gone or re-created)", run.name),
                retry_after: None,
            })
        }
    }

    async fn clear_intent(&self, run: &Run, operation_id: &str) -> Result<()> {
        self.write_if_same(run, false, |current| {
            if current.cancel_operation.as_deref() != Some(operation_id) {
                return None;
            }
            let mut patch = Map::new();
            for key in [
                ANNOTATION_SUPERSEDED_BY,
                ANNOTATION_SUPERSEDED_AT,
                ANNOTATION_CANCEL_OPERATION,
                ANNOTATION_CORRELATION_ID,
            ] {
                Field::Annotation(key.to_owned()).merge_into(&mut patch, Value::Null);
            }
            Some(patch)
        })
        .await
        .map(|_| ())
    }

    async fn flag_intervention(&self, run: &Run, reason: &str) -> Result<()> {
        self.write_if_same(run, false, |_| {
            let mut patch = Map::new();
            Field::Annotation(ANNOTATION_NEEDS_INTERVENTION.to_owned())
                .merge_into(&mut patch, reason.into());
            Some(patch)
        })
        .await?;
        Ok(())
    }
}

/// A delete's answer: removed, terminating, already gone (404) or replaced
/// by an object of another uid (409 on the uid precondition) are all
/// success — what was meant is no longer running unasked.
fn deleted<T>(answer: std::result::Result<T, kube::Error>, name: &str) -> Result<()> {
    match answer {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(e) => Err(Error::from_kube(e, name)),
    }
}

/// A grace period in the whole seconds the API takes, rounded up (a
/// sub-second grace is one second, never a force delete).
fn grace_seconds(grace: Duration) -> u32 {
    let seconds = grace
        .as_secs()
        .saturating_add(u64::from(grace.subsec_nanos() > 0));
    u32::try_from(seconds).unwrap_or(u32::MAX)
}

/// Whether `value` can be a label value (at most 63 characters,
/// alphanumeric at both ends, `-`, `_`, `.` between; empty is allowed).
fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
        && bytes.first().is_none_or(u8::is_ascii_alphanumeric)
        && bytes.last().is_none_or(u8::is_ascii_alphanumeric)
}

fn not_a_label_value(name: &str) -> Error {
    Error::InvalidRun {
        name: name.to_owned(),
        reason: "its name is not a label value, so no pod can carry it in a label; find its pods by owner (PodMatch::Owner)".into(),
    }
}

/// Wall-clock time that follows tokio's clock from when the backend was
/// made (as FakeKube's does), so judging a pod's `deletionTimestamp` works
/// the same on paused test time as in production.
#[derive(Clone, Copy, Debug)]
struct Clock {
    wall: Timestamp,
    start: Instant,
}

impl Clock {
    fn start() -> Self {
        Self {
            wall: Timestamp::now(),
            start: Instant::now(),
        }
    }

    fn now(&self) -> Timestamp {
        jiff::SignedDuration::try_from(self.start.elapsed())
            .ok()
            .and_then(|d| self.wall.checked_add(d).ok())
            .unwrap_or(self.wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_periods_are_whole_seconds_rounded_up() {
        assert_eq!(grace_seconds(Duration::ZERO), 0);
        assert_eq!(grace_seconds(Duration::from_millis(1)), 1);
        assert_eq!(grace_seconds(Duration::from_secs(20)), 20);
        assert_eq!(grace_seconds(Duration::from_millis(20_500)), 21);
        assert_eq!(grace_seconds(Duration::MAX), u32::MAX);
    }

    #[test]
    fn label_values_follow_the_api_servers_rule() {
        assert!(is_label_value("run-1"));
        assert!(is_label_value(""));
        assert!(is_label_value("a.b_c-d"));
        assert!(!is_label_value("-run"));
        assert!(!is_label_value("run."));
        assert!(!is_label_value("a/b"));
        assert!(!is_label_value(&"a".repeat(64)));
    }
}
