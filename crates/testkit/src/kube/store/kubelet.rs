//! The simulated scheduler and kubelet: what happens to a Pod between its
//! create and its removal, on tokio's clock.
//!
//! A new pod is bound to the one node (`spec.nodeName`, condition
//! `PodScheduled`) unless it is unschedulable; after its start delay its
//! containers run (`Running`, container statuses); they may exit by
//! themselves (`Succeeded`/`Failed`). A graceful delete sends SIGTERM: the
//! containers stop after the pod's stop time (at once, after a while, or
//! only when the grace period ends and they are killed), the kubelet
//! reports their exit and deletes the pod with grace 0, as a real kubelet
//! does. The rule it keeps: **the kubelet only ever acts on the pod (uid)
//! it was told about**, so a pod deleted and created again under the same
//! name is never touched by the old one's timers.
//!
//! What a pod does is a [`PodBehaviour`]: the builder's default, changed
//! per pod by labels (`testkit.supersede.dev/…`, see [`PodBehaviour`]) or
//! by the test (`FakeKube::set_pod_behaviour`), the test winning.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::agenda::Action;
use super::{DeleteOptions, ObjKey, Ownership, Store, set_condition, str_at, text};
use crate::kube::managed_fields::FieldManager;
use crate::kube::status::ApiError;

/// The node every schedulable pod is bound to.
pub(crate) const NODE_NAME: &str = "fake-node";

/// The label prefix of per-pod behaviour.
const LABEL_PREFIX: &str = "testkit.supersede.dev/";

/// What a pod's containers do when the kubelet sends them SIGTERM (a
/// graceful delete).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PodTermination {
    /// They exit at once: the kubelet removes the pod right away (at the
    /// same instant of tokio time, after the delete was answered with the
    /// terminating pod). Finalizers still hold it.
    #[default]
    Immediate,
    /// They handle SIGTERM and exit after this long (or are killed when the
    /// grace period ends first).
    StopsAfter(Duration),
    /// They ignore SIGTERM: the pod stays terminating for its whole grace
    /// period (the delete's `gracePeriodSeconds`, else the pod's
    /// `terminationGracePeriodSeconds`, else 30 s), then is killed.
    AfterGracePeriod,
    /// The kubelet never reports back (an unreachable node): the pod stays
    /// terminating until it is deleted with `gracePeriodSeconds: 0` (a force
    /// delete).
    Never,
}

/// A phase a pod's containers end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TerminalPhase {
    /// Every container exited 0.
    Succeeded,
    /// A container exited non-zero.
    Failed,
}

impl TerminalPhase {
    fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
        }
    }
}

/// How the simulated scheduler and kubelet treat one pod.
///
/// Per pod, these labels override the default (values as in the
/// `fake-kube` command line; durations like `500ms`, `5s`, `2m`):
///
/// | label | values |
/// |---|---|
/// | `testkit.supersede.dev/schedulable` | `true`, `false` |
/// | `testkit.supersede.dev/starts-after` | a duration, `never` |
/// | `testkit.supersede.dev/termination` | `immediate`, `stops-after-<duration>`, `after-grace-period`, `never` |
/// | `testkit.supersede.dev/exits` | `succeeded-after-<duration>`, `failed-after-<duration>` |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodBehaviour {
    /// Whether the scheduler finds it a node. An unschedulable pod stays
    /// `Pending` without `spec.nodeName` (condition `PodScheduled: False`,
    /// reason `Unschedulable`), and a delete removes it at once, as the API
    /// server does for pods bound to no node.
    pub schedulable: bool,
    /// How long after it is bound its containers start (`Pending` →
    /// `Running`); `None`: never (as when its image cannot be pulled). A pod
    /// deleted before it starts is removed at once by the kubelet.
    pub starts_after: Option<Duration>,
    /// What its containers do with SIGTERM.
    pub termination: PodTermination,
    /// Once running, its containers exit by themselves after this long,
    /// ending in this phase.
    pub exits: Option<(Duration, TerminalPhase)>,
}

impl Default for PodBehaviour {
    /// Schedulable, running after 1 s (a pull from a warm cache), exiting
    /// at once on SIGTERM, running until deleted.
    fn default() -> Self {
        Self {
            schedulable: true,
            starts_after: Some(Duration::from_secs(1)),
            termination: PodTermination::Immediate,
            exits: None,
        }
    }
}

impl PodBehaviour {
    /// This behaviour with the pod's `testkit.supersede.dev/…` labels
    /// applied; a label with a value it cannot read is ignored (and logged).
    pub(crate) fn with_labels(mut self, labels: &BTreeMap<String, String>) -> Self {
        for (key, value) in labels {
            let Some(knob) = key.strip_prefix(LABEL_PREFIX) else {
                continue;
            };
            let understood = match knob {
                "schedulable" => value.parse().map(|v| self.schedulable = v).is_ok(),
                "starts-after" if value == "never" => {
                    self.starts_after = None;
                    true
                }
                "starts-after" => parse_duration(value)
                    .map(|d| self.starts_after = Some(d))
                    .is_some(),
                "termination" => parse_termination(value)
                    .map(|t| self.termination = t)
                    .is_some(),
                "exits" => parse_exit(value).map(|e| self.exits = Some(e)).is_some(),
                _ => false,
            };
            if !understood {
                tracing::warn!(label = %key, %value, "fake-kube ignores a pod behaviour label it cannot read");
            }
        }
        self
    }
}

/// Reads `immediate`, `stops-after-<duration>`, `after-grace-period`,
/// `never` (the `fake-kube --pod-termination` values, also labels).
pub fn parse_termination(text: &str) -> Option<PodTermination> {
    match text {
        "immediate" => Some(PodTermination::Immediate),
        "after-grace-period" => Some(PodTermination::AfterGracePeriod),
        "never" => Some(PodTermination::Never),
        other => other
            .strip_prefix("stops-after-")
            .and_then(parse_duration)
            .map(PodTermination::StopsAfter),
    }
}

fn parse_exit(text: &str) -> Option<(Duration, TerminalPhase)> {
    let (phase, after) = if let Some(d) = text.strip_prefix("succeeded-after-") {
        (TerminalPhase::Succeeded, d)
    } else {
        (TerminalPhase::Failed, text.strip_prefix("failed-after-")?)
    };
    parse_duration(after).map(|d| (d, phase))
}

/// `500ms`, `5s`, `2m`, `1h`.
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

/// What the kubelet knows of one pod.
#[derive(Debug, Clone)]
pub(crate) struct PodRun {
    uid: String,
    behaviour: PodBehaviour,
    state: RunState,
    /// When SIGTERM first reached the containers.
    sigterm_at: Option<Instant>,
    /// When the containers stop (the earliest scheduled), and whether that
    /// is a kill at the end of the grace period.
    stop: Option<(Instant, bool)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    /// Bound (or not), containers not started.
    Pending,
    Running,
    /// The containers exited; the phase is terminal.
    Exited,
    /// Deleted by the kubelet after its containers stopped.
    Stopped,
}

/// The kubelet's part of the store: per-pod runs, test overrides, pod IPs.
#[derive(Debug, Default)]
pub(crate) struct Kubelet {
    runs: BTreeMap<ObjKey, PodRun>,
    overrides: BTreeMap<(String, String), PodBehaviour>,
    next_ip: u32,
}

impl Store {
    /// A pod was created: bind it (or report it unschedulable) and plan its
    /// start.
    pub(super) fn kubelet_admit(&mut self, k: &ObjKey, pod: &Value) {
        let labels = super::labels_of(pod);
        let behaviour = match self
            .kubelet
            .overrides
            .get(&(k.namespace.clone(), k.name.clone()))
        {
            Some(b) => *b,
            None => self.config.pod_behaviour.with_labels(&labels),
        };
        let uid = str_at(pod, "uid");
        self.kubelet.runs.insert(
            k.clone(),
            PodRun {
                uid: uid.clone(),
                behaviour,
                state: RunState::Pending,
                sigterm_at: None,
                stop: None,
            },
        );
        let already_bound = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let now = self.clock.timestamp();
        let mut next = pod.clone();
        if already_bound {
            // Created on a node: no scheduler involved.
        } else if behaviour.schedulable {
            // What the scheduler's binding writes.
            if let Some(spec) = next.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("nodeName".into(), json!(NODE_NAME));
            }
            set_pod_condition(&mut next, "PodScheduled", "True", None, &now);
        } else {
            set_pod_condition(
                &mut next,
                "PodScheduled",
                "False",
                Some((
                    "Unschedulable",
                    "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
                )),
                &now,
            );
        }
        if next != *pod {
            self.commit_modified(k, pod, next);
        }
        if (already_bound || behaviour.schedulable)
            && let Some(after) = behaviour.starts_after
        {
            self.agenda.schedule(
                Instant::now() + after,
                Action::StartPod {
                    key: k.clone(),
                    uid,
                },
            );
        }
    }

    /// A test chose how pod `namespace/name` behaves, now or when created.
    pub fn set_pod_behaviour(&mut self, namespace: &str, name: &str, behaviour: PodBehaviour) {
        self.kubelet
            .overrides
            .insert((namespace.to_owned(), name.to_owned()), behaviour);
        let k = pod_key(namespace, name);
        if let Some(run) = self.kubelet.runs.get_mut(&k) {
            let start = run.state == RunState::Pending
                && run.behaviour.starts_after.is_none()
                && behaviour.starts_after.is_some();
            run.behaviour = behaviour;
            if start && let Some(after) = behaviour.starts_after {
                let uid = run.uid.clone();
                self.agenda
                    .schedule(Instant::now() + after, Action::StartPod { key: k, uid });
            }
        }
    }

    /// A test made the pod's containers exit now, ending in `phase`.
    pub fn set_pod_phase(
        &mut self,
        namespace: &str,
        name: &str,
        phase: TerminalPhase,
    ) -> Result<(), ApiError> {
        let k = pod_key(namespace, name);
        let t = self.type_of(&k).ok_or_else(ApiError::no_route)?;
        let pod = self.get(&t, namespace, name)?;
        self.kubelet_exit(&k, &str_at(&pod, "uid"), phase);
        Ok(())
    }

    /// The API server marked the pod terminating with `grace` seconds:
    /// SIGTERM reaches its containers.
    pub(super) fn kubelet_sigterm(&mut self, k: &ObjKey, uid: &str, grace: i64) {
        let now = Instant::now();
        let Some(run) = self.kubelet.runs.get_mut(k).filter(|r| r.uid == uid) else {
            return;
        };
        let deadline = now + Duration::from_secs(grace.unsigned_abs());
        let first = *run.sigterm_at.get_or_insert(now);
        let stop = match (run.state, run.behaviour.termination) {
            (_, PodTermination::Never) => return,
            (RunState::Pending | RunState::Exited | RunState::Stopped, _)
            | (_, PodTermination::Immediate) => (now, false),
            (RunState::Running, PodTermination::StopsAfter(d)) if first + d <= deadline => {
                (first + d, false)
            }
            (
                RunState::Running,
                PodTermination::StopsAfter(_) | PodTermination::AfterGracePeriod,
            ) => (deadline, true),
        };
        if run.stop.is_none_or(|(at, _)| stop.0 < at) {
            run.stop = Some(stop);
            let uid = run.uid.clone();
            self.agenda.schedule(
                stop.0,
                Action::StopPod {
                    key: k.clone(),
                    uid,
                },
            );
        }
    }

    /// The pod is gone from the API: the kubelet forgets it.
    pub(super) fn kubelet_forget(&mut self, k: &ObjKey, uid: &str) {
        if self.kubelet.runs.get(k).is_some_and(|r| r.uid == uid) {
            self.kubelet.runs.remove(k);
        }
    }

    /// The containers start.
    pub(super) fn kubelet_start(&mut self, k: &ObjKey, uid: &str) {
        let Some((pod, run)) = self.kubelet_pod(k, uid) else {
            return;
        };
        if run.state != RunState::Pending || pod.pointer("/metadata/deletionTimestamp").is_some() {
            return;
        }
        self.kubelet.next_ip = (self.kubelet.next_ip % 250) + 1;
        let pod_ip = format!("10.244.0.{}", self.kubelet.next_ip);
        let now = self.clock.timestamp();
        let mut next = pod.clone();
        let scheduled_at = condition_time(&pod, "PodScheduled").unwrap_or_else(|| now.clone());
        let containers = container_statuses(
            &pod,
            uid,
            true,
            |_, _| json!({"running": {"startedAt": now}}),
        );
        let status = json!({
            "phase": "Running",
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastProbeTime": null, "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": scheduled_at},
            ],
            "hostIP": "10.0.0.1",
            "hostIPs": [{"ip": "10.0.0.1"}],
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": now,
            "qosClass": "BestEffort",
            "containerStatuses": containers,
        });
        if let Some(o) = next.as_object_mut() {
            o.insert("status".into(), status);
        }
        if self.kubelet_report(k, &pod, next) {
            if let Some(run) = self.kubelet.runs.get_mut(k) {
                run.state = RunState::Running;
            }
            if let Some((after, phase)) = run.behaviour.exits {
                self.agenda.schedule(
                    Instant::now() + after,
                    Action::ExitPod {
                        key: k.clone(),
                        uid: uid.to_owned(),
                        phase,
                    },
                );
            }
        }
    }

    /// The containers exit by themselves (or a test said they did).
    pub(super) fn kubelet_exit(&mut self, k: &ObjKey, uid: &str, phase: TerminalPhase) {
        let Some((pod, run)) = self.kubelet_pod(k, uid) else {
            return;
        };
        if matches!(run.state, RunState::Exited | RunState::Stopped) {
            return;
        }
        let exit_code = if phase == TerminalPhase::Succeeded {
            0
        } else {
            1
        };
        let next = terminated(&pod, uid, phase, exit_code, &self.clock.timestamp());
        if self.kubelet_report(k, &pod, next) {
            let deleting = pod.pointer("/metadata/deletionTimestamp").is_some();
            if let Some(run) = self.kubelet.runs.get_mut(k) {
                run.state = if deleting {
                    RunState::Stopped
                } else {
                    RunState::Exited
                };
            }
            if deleting {
                // Nothing left to stop: the kubelet deletes it for good.
                self.kubelet_delete(k, uid);
            }
        }
    }

    /// The containers stopped after SIGTERM, or were killed at the end of
    /// the grace period: report it and delete the pod for good.
    pub(super) fn kubelet_stop(&mut self, k: &ObjKey, uid: &str) {
        let Some((pod, run)) = self.kubelet_pod(k, uid) else {
            return;
        };
        let Some((_, killed)) = run.stop else {
            return;
        };
        if run.state == RunState::Stopped || pod.pointer("/metadata/deletionTimestamp").is_none() {
            // Done already (a later timer of an earlier-moved stop).
            return;
        }
        if run.state == RunState::Running {
            // Killed with SIGKILL: 137; exited on SIGTERM: 0. Since
            // Kubernetes 1.27 the kubelet puts a deleted pod in a terminal
            // phase before it deletes it.
            let exit_code = if killed { 137 } else { 0 };
            let restarts = pod
                .pointer("/spec/restartPolicy")
                .and_then(Value::as_str)
                .unwrap_or("Always");
            let phase = if exit_code == 0 && restarts != "Always" {
                TerminalPhase::Succeeded
            } else {
                TerminalPhase::Failed
            };
            let next = terminated(&pod, uid, phase, exit_code, &self.clock.timestamp());
            if !self.kubelet_report(k, &pod, next) {
                return;
            }
        }
        if let Some(run) = self.kubelet.runs.get_mut(k) {
            run.state = RunState::Stopped;
        }
        self.kubelet_delete(k, uid);
    }

    /// The pod and the kubelet's run of it, if both are still `uid`.
    fn kubelet_pod(&self, k: &ObjKey, uid: &str) -> Option<(Value, PodRun)> {
        let run = self.kubelet.runs.get(k).filter(|r| r.uid == uid)?.clone();
        let pod = self
            .objects
            .get(k)
            .filter(|p| str_at(p, "uid") == uid)?
            .clone();
        Some((pod, run))
    }

    /// Writes the kubelet's view of the pod's status, as its status
    /// updates do; `false` if the write was refused.
    fn kubelet_report(&mut self, k: &ObjKey, pod: &Value, next: Value) -> bool {
        let Some(t) = self.type_of(k) else {
            return false;
        };
        let who = FieldManager::new("kubelet".to_owned(), "v1".to_owned(), true, true);
        self.write(
            &t,
            &k.namespace,
            &k.name,
            pod,
            next,
            true,
            false,
            Ownership::Update(who),
        )
        .is_ok()
    }

    /// The kubelet's final delete: grace 0, on this uid only.
    fn kubelet_delete(&mut self, k: &ObjKey, uid: &str) {
        let Some(t) = self.type_of(k) else {
            return;
        };
        let opts = DeleteOptions {
            grace_period_seconds: Some(0),
            uid: Some(uid.to_owned()),
            ..DeleteOptions::default()
        };
        if let Err(e) = self.delete(&t, &k.namespace, &k.name, &opts) {
            tracing::debug!(pod = %k.name, error = %e.message, "kubelet's final delete refused");
        }
    }
}

fn pod_key(namespace: &str, name: &str) -> ObjKey {
    ObjKey {
        group: String::new(),
        plural: "pods".to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// (name, image) of each container in the spec.
fn containers_of(pod: &Value) -> Vec<(String, String)> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| (text(c, "name"), text(c, "image")))
                .collect()
        })
        .unwrap_or_default()
}

fn container_id(uid: &str, index: usize) -> String {
    let hex: String = uid.chars().filter(char::is_ascii_hexdigit).collect();
    format!("containerd://{hex}{index:04x}")
}

/// A status per container of the spec, `ready` or not, in the state
/// `state(name, containerID)` says.
fn container_statuses(
    pod: &Value,
    uid: &str,
    ready: bool,
    state: impl Fn(&str, &str) -> Value,
) -> Value {
    let statuses: Vec<Value> = containers_of(pod)
        .iter()
        .enumerate()
        .map(|(i, (name, image))| {
            let id = container_id(uid, i);
            json!({
                "name": name,
                "image": image,
                "imageID": "",
                "containerID": id,
                "ready": ready,
                "started": ready,
                "restartCount": 0,
                "state": state(name, &id),
                "lastState": {},
            })
        })
        .collect();
    Value::Array(statuses)
}

/// The pod with every container terminated with `exit_code` and `phase`.
fn terminated(pod: &Value, uid: &str, phase: TerminalPhase, exit_code: i64, now: &str) -> Value {
    let reason = if exit_code == 0 { "Completed" } else { "Error" };
    let started = |name: &str| {
        pod.pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
            })
            .and_then(|c| c.pointer("/state/running/startedAt"))
            .cloned()
            .unwrap_or_else(|| json!(now))
    };
    let containers = container_statuses(pod, uid, false, |name, id| {
        json!({"terminated": {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": started(name),
            "finishedAt": now,
            "containerID": id,
        }})
    });
    let mut next = pod.clone();
    let status = next
        .as_object_mut()
        .map(|o| o.entry("status").or_insert_with(|| json!({})));
    if let Some(Value::Object(status)) = status {
        status.insert("phase".into(), json!(phase.as_str()));
        status.insert("containerStatuses".into(), containers);
    }
    for condition in ["Ready", "ContainersReady"] {
        set_pod_condition(
            &mut next,
            condition,
            "False",
            Some(("PodCompleted", "")),
            now,
        );
    }
    next
}

/// Sets (or adds) a status condition, keeping its transition time when its
/// status does not change.
fn set_pod_condition(
    pod: &mut Value,
    kind: &str,
    status: &str,
    reason: Option<(&str, &str)>,
    now: &str,
) {
    let mut condition =
        json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": now});
    if let Some((why, message)) = reason {
        condition["reason"] = json!(why);
        if !message.is_empty() {
            condition["message"] = json!(message);
        }
    }
    set_condition(pod, condition);
}

fn condition_time(pod: &Value, kind: &str) -> Option<String> {
    pod.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))?
        .get("lastTransitionTime")?
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviour_labels_override_the_default_and_bad_values_are_ignored() {
        let labels: BTreeMap<String, String> = [
            ("testkit.supersede.dev/termination", "stops-after-5s"),
            ("testkit.supersede.dev/starts-after", "250ms"),
            ("testkit.supersede.dev/exits", "failed-after-2m"),
            ("testkit.supersede.dev/schedulable", "maybe"),
            ("app", "agent"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let b = PodBehaviour::default().with_labels(&labels);
        assert_eq!(
            b.termination,
            PodTermination::StopsAfter(Duration::from_secs(5))
        );
        assert_eq!(b.starts_after, Some(Duration::from_millis(250)));
        assert_eq!(
            b.exits,
            Some((Duration::from_secs(120), TerminalPhase::Failed))
        );
        assert!(b.schedulable, "an unreadable value leaves the default");
    }

    #[test]
    fn termination_names_are_the_command_line_values() {
        assert_eq!(
            parse_termination("immediate"),
            Some(PodTermination::Immediate)
        );
        assert_eq!(
            parse_termination("after-grace-period"),
            Some(PodTermination::AfterGracePeriod)
        );
        assert_eq!(parse_termination("never"), Some(PodTermination::Never));
        assert_eq!(
            parse_termination("stops-after-1h"),
            Some(PodTermination::StopsAfter(Duration::from_secs(3600)))
        );
        assert_eq!(parse_termination("stops-after-5"), None);
        assert_eq!(parse_termination("sometimes"), None);
    }
}
