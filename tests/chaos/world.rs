//! The chaos soak's world: the scenario tests' [`Cluster`] (FakeGitHub's
//! webhook sender, sensor replicas behind a balancer, controller replicas,
//! FakeKube with its kubelet and garbage collector), plus what the soak
//! needs beside it:
//!
//! - write taps on FakeKube's Pods, ConfigMaps and Leases, recorded by the
//!   store itself, so that no fault, partition or FakeKube restart can hide
//!   a pod's removal or a state version from the history (a watch resumed
//!   after a 410 relists and never sees what was deleted in the gap);
//! - the request log read incrementally, so that a long run cannot push a
//!   delete out of its ring before it is read;
//! - runs created straight in FakeKube's store (no request, so no fault
//!   stops the test's own bookkeeping), by an agent fleet that starts runs
//!   on a head once the task's state recorded it and GitHub still has it;
//! - the outside writer's label changes and the replicas alive, to judge
//!   lost labels and orphaned Leases.
//!
//! Everything judged is read from the fakes into testkit's
//! [`CancellationHistory`]; nothing comes from the system's own counters.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use cancel_coordinator::CodeRun;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use state_store::{CancellationOutcome, RemediationState};
use testkit::history::cancellation::CancellationHistory;
use testkit::kube::RequestFilter;
use testkit::kube::tap::{Tap, WriteKind};

use crate::support::{
    Cluster, MOVED, NS, OWNER, REPO, ROLES, WAITING, agent_pod, branch, run_spec,
};

/// A run the soak started: its task, name and head.
#[derive(Debug, Clone)]
pub struct Run {
    pub task: u64,
    pub name: String,
    pub head: String,
}

/// The cluster, the taps and the soak's own records.
pub struct World {
    pub cluster: Cluster,
    pods: Tap,
    states: Tap,
    leases: Tap,
    /// Every run started, in order.
    runs: Mutex<Vec<Run>>,
    /// (task, head) pairs the fleet started runs on.
    started: Mutex<BTreeSet<(u64, String)>>,
    /// Delete requests naming a run or its pod: run ▸ request-log seqs.
    deletes: Mutex<BTreeMap<String, Vec<u64>>>,
    /// The request log read up to here.
    read_up_to: Mutex<u64>,
    /// Every PR, and whether it was closed.
    pulls: Mutex<BTreeMap<u64, bool>>,
    /// PRs pushed to at least once.
    pushed: Mutex<BTreeSet<u64>>,
    /// The outside writer's actions: (pr, label, order, added).
    outside: Mutex<Vec<(u64, String, u64, bool)>>,
    /// Holder prefixes (`<identity>/`) of the processes alive.
    live: Mutex<BTreeSet<String>>,
}

impl World {
    /// The cluster with `sensors` sensor replicas, and the taps opened
    /// before anything is written.
    pub async fn start(sensors: usize) -> Self {
        let cluster = Cluster::start(sensors).await;
        let pods = cluster.kube.tap("", "pods");
        let states = cluster.kube.tap("", "configmaps");
        let leases = cluster.kube.tap("coordination.k8s.io", "leases");
        let live = (0..sensors).map(|i| format!("sensor-{i}/")).collect();
        Self {
            cluster,
            pods,
            states,
            leases,
            runs: Mutex::new(Vec::new()),
            started: Mutex::new(BTreeSet::new()),
            deletes: Mutex::new(BTreeMap::new()),
            read_up_to: Mutex::new(0),
            pulls: Mutex::new(BTreeMap::new()),
            pushed: Mutex::new(BTreeSet::new()),
            outside: Mutex::new(Vec::new()),
            live: Mutex::new(live),
        }
    }

    /// Marks holder prefix `identity/` alive (a process started).
    pub fn alive(&self, identity: &str) {
        self.live.lock().unwrap().insert(format!("{identity}/"));
    }

    /// Marks holder prefix `identity/` gone (a process stopped).
    pub fn gone(&self, identity: &str) {
        self.live.lock().unwrap().remove(&format!("{identity}/"));
    }

    /// Whether `holder` belongs to a process alive.
    pub fn is_live(&self, holder: &str) -> bool {
        self.live
            .lock()
            .unwrap()
            .iter()
            .any(|p| holder.starts_with(p.as_str()))
    }

    /// Opens PR `task` at `head` labelled [`WAITING`] (its delivery
    /// answered) with its agents running on `head`.
    pub async fn open(&self, task: u64, head: &str, stop_ms: u64) {
        self.cluster.pull(task, head).await;
        self.pulls.lock().unwrap().insert(task, false);
        self.start_runs(task, head, &ROLES, stop_ms);
    }

    /// Whether PR `task` is open.
    pub fn is_open(&self, task: u64) -> bool {
        self.pulls.lock().unwrap().get(&task) == Some(&false)
    }

    /// The open PRs.
    pub fn open_pulls(&self) -> Vec<u64> {
        let pulls = self.pulls.lock().unwrap();
        pulls
            .iter()
            .filter(|(_, c)| !**c)
            .map(|(t, _)| *t)
            .collect()
    }

    /// Records that PR `task` was pushed to.
    pub fn pushed(&self, task: u64) {
        self.pushed.lock().unwrap().insert(task);
    }

    /// Records that PR `task` was closed.
    pub fn closed(&self, task: u64) {
        self.pulls.lock().unwrap().insert(task, true);
    }

    /// The outside writer adds (`true`) or removes `label` on PR `task`
    /// straight on FakeGitHub, as a human in the UI; false if nothing
    /// changed (a removal of a label the PR does not carry).
    pub fn outside_label(&self, task: u64, label: &str, add: bool) -> bool {
        let github = &self.cluster.github;
        let changed = if add {
            github.add_label(OWNER, REPO, task, label).is_ok()
        } else {
            github.remove_label(OWNER, REPO, task, label)
        };
        if changed {
            let mut outside = self.outside.lock().unwrap();
            let order = outside.len() as u64;
            outside.push((task, label.to_owned(), order, add));
        }
        changed
    }

    /// The agent fleet: for each open PR whose state recorded GitHub's
    /// current head, runs on that head if none were started on it yet (an
    /// agent starts work on a head once the push is known). Returns how
    /// many runs it started.
    pub fn fleet(&self, roles: &[&str], mut stop_ms: impl FnMut() -> u64) -> usize {
        let mut started = 0;
        for task in self.open_pulls() {
            let Some(head) = self.cluster.github.branch_head(OWNER, REPO, &branch(task)) else {
                continue;
            };
            let recorded = self
                .state(task)
                .and_then(|s| s.latest_head)
                .is_some_and(|h| h.sha == head);
            if recorded && !self.started.lock().unwrap().contains(&(task, head.clone())) {
                self.start_runs(task, &head, roles, stop_ms());
                started += roles.len();
            }
        }
        started
    }

    /// Runs of `task` on `head`, one per role, with pods that stop
    /// `stop_ms` after SIGTERM, stored straight in FakeKube (as the
    /// scheduler's writes would be, without a request).
    pub fn start_runs(&self, task: u64, head: &str, roles: &[&str], stop_ms: u64) {
        self.started.lock().unwrap().insert((task, head.to_owned()));
        for role in roles {
            let name = format!("t{task}-{role}-{}", &head[head.len() - 8..]);
            let mut run = CodeRun::labelled(&name, run_spec(task, role, head));
            run.metadata.namespace = Some(NS.into());
            self.cluster.kube.seed([run]).unwrap();
            let run: CodeRun = self.cluster.kube.peek(NS, &name).unwrap();
            let pod = agent_pod(&run, stop_ms);
            self.cluster.kube.seed([pod]).unwrap();
            self.runs.lock().unwrap().push(Run {
                task,
                name,
                head: head.to_owned(),
            });
        }
    }

    /// Every run started.
    pub fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }

    /// Reads the request log's new records: every delete naming a run or
    /// its pod is kept. Call it often in a long run (the log is a ring).
    pub fn read_requests(&self) {
        let mut up_to = self.read_up_to.lock().unwrap();
        let log = self.cluster.kube.requests();
        let records = log.since(*up_to);
        let runs: BTreeSet<String> = self.runs().into_iter().map(|r| r.name).collect();
        let delete = RequestFilter::any().verb("delete");
        let mut deletes = self.deletes.lock().unwrap();
        for record in &records {
            *up_to = (*up_to).max(record.seq);
            if !delete.matches(record) {
                continue;
            }
            let Some(name) = record.name.as_deref() else {
                continue;
            };
            let run = name.strip_suffix("-pod").unwrap_or(name);
            if runs.contains(run) {
                deletes.entry(run.to_owned()).or_default().push(record.seq);
            }
        }
    }

    /// How many runs a delete request named (the history's evidence that
    /// it reads the request log at all).
    pub fn deleted_runs(&self) -> usize {
        self.read_requests();
        self.deletes.lock().unwrap().len()
    }

    /// How many requests the log dropped before they were read (must stay 0).
    pub fn requests_evicted(&self) -> u64 {
        self.cluster.kube.requests().evicted()
    }

    /// The state of `task` now, read from the store (no request).
    pub fn state(&self, task: u64) -> Option<RemediationState> {
        let map: ConfigMap = self.cluster.kube.peek(NS, &format!("task-{task}-state"))?;
        decode(&map)
    }

    /// How many runs the final states record cancelled.
    pub fn cancelled_runs(&self) -> usize {
        self.pulls
            .lock()
            .unwrap()
            .keys()
            .filter_map(|t| self.state(*t))
            .map(|s| cancelled(&s).map(|r| r.targets.len()).sum::<usize>())
            .sum()
    }

    /// The Leases that are held by a process no longer alive, with how long
    /// ago (by their own renewTime) they were last renewed.
    pub fn leases_of_the_dead(&self) -> Vec<(String, String, Duration)> {
        let now = jiff::Timestamp::now();
        self.lease_names()
            .into_iter()
            .filter_map(|name| {
                let lease: Lease = self.cluster.kube.peek(NS, &name)?;
                let spec = lease.spec?;
                let holder = spec.holder_identity.filter(|h| !h.is_empty())?;
                if self.is_live(&holder) {
                    return None;
                }
                let renewed = spec.renew_time.or(spec.acquire_time).map(|t| t.0)?;
                let idle = now.duration_since(renewed);
                let idle = Duration::try_from(idle).unwrap_or(Duration::ZERO);
                Some((name, holder, idle))
            })
            .collect()
    }

    /// The holders of the task Leases held now (sagas in flight).
    pub fn task_lock_holders(&self) -> Vec<String> {
        self.lease_names()
            .into_iter()
            .filter(|name| name.starts_with(sensor::wiring::LOCK_PREFIX))
            .filter_map(|name| self.cluster.kube.peek::<Lease>(NS, &name))
            .filter_map(|lease| lease.spec?.holder_identity.filter(|h| !h.is_empty()))
            .collect()
    }

    fn lease_names(&self) -> BTreeSet<String> {
        self.leases.writes().into_iter().map(|w| w.name).collect()
    }

    /// The history as the fakes recorded it. `strict`: a task Lease still
    /// held (even by a live process) counts as orphaned — the world has
    /// not settled while a saga holds one — only the controllers'
    /// leadership Lease may be held.
    pub fn history(&self, strict: bool) -> CancellationHistory {
        self.read_requests();
        let mut h = CancellationHistory::new();
        let runs = self.runs();
        for run in &runs {
            h.run(run.task.to_string(), &run.name, &run.head);
            if self
                .cluster
                .kube
                .peek::<Pod>(NS, &format!("{}-pod", run.name))
                .is_some()
            {
                h.pod_exists_at_end(&run.name);
            }
        }
        for (run, seqs) in self.deletes.lock().unwrap().iter() {
            for seq in seqs {
                h.delete_requested(run, *seq);
            }
        }
        for write in self.pods.writes() {
            if write.kind == WriteKind::Deleted
                && let Some(run) = write.name.strip_suffix("-pod")
            {
                h.pod_gone(run, write.rv);
            }
        }
        for write in self.states.writes() {
            if write.kind == WriteKind::Deleted {
                continue;
            }
            let Ok(map) = serde_json::from_value::<ConfigMap>(write.object) else {
                continue;
            };
            if let Some(state) = decode(&map) {
                for record in cancelled(&state) {
                    for run in &record.targets {
                        h.recorded_cancelled(&state.task_id, run, write.rv);
                    }
                }
            }
        }
        let pulls = self.pulls.lock().unwrap().clone();
        let pushed = self.pushed.lock().unwrap().clone();
        for (&task, &closed) in &pulls {
            let id = task.to_string();
            if let Some(head) = self.cluster.github.branch_head(OWNER, REPO, &branch(task)) {
                h.newest_head(&id, head);
            }
            if closed {
                h.closed(&id);
            } else if pushed.contains(&task) {
                h.target_labels(task, [MOVED], [WAITING]);
            }
            if let Some(state) = self.state(task) {
                let targets: Vec<String> = cancelled(&state)
                    .flat_map(|r| r.targets.iter().cloned())
                    .collect();
                h.final_cancellation_records(&id, targets);
            }
            h.labels_at_end(task, self.cluster.labels(task));
        }
        for (pr, label, order, added) in self.outside.lock().unwrap().iter() {
            if *added {
                h.outside_label_added(*pr, label, *order);
            } else {
                h.outside_label_removed(*pr, label, *order);
            }
        }
        for name in self.lease_names() {
            let Some(lease) = self.cluster.kube.peek::<Lease>(NS, &name) else {
                continue;
            };
            let holder = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty());
            let leader = name.starts_with(controller::LEADER_LOCK_PREFIX);
            if let Some(holder) = holder.as_ref()
                && (leader || !strict)
                && self.is_live(holder)
            {
                h.live_holder(holder.clone());
            }
            h.lease_at_end(name, holder);
        }
        h
    }
}

/// The state in a task's ConfigMap, if it parses.
fn decode(map: &ConfigMap) -> Option<RemediationState> {
    map.data
        .as_ref()
        .and_then(|d| d.get(state_store::naming::KEY_STATE))
        .and_then(|text| serde_json::from_str(text).ok())
}

/// The cancellation records of `state` whose outcome is `Cancelled`.
fn cancelled(state: &RemediationState) -> impl Iterator<Item = &state_store::CancellationRecord> {
    state
        .cancellation_history
        .iter()
        .filter(|r| r.outcome == CancellationOutcome::Cancelled)
}
