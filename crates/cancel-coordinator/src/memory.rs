//! [`MemoryWorkloads`]: runs and their pods in process, with the lifecycle a
//! cluster gives them — on tokio time, so tests can pause it.
//!
//! The rule it keeps: it never offers a behaviour a cluster does not have. A
//! pod deleted gracefully stops when its process handles SIGTERM, or is
//! killed when its grace period ends; a shorter grace shortens a deletion
//! in progress (as the API server does), never lengthens it; a run deleted
//! with Foreground propagation has its pods deleted with their own grace
//! period and goes only after them, and stays while a foreign finalizer
//! holds it; a pod held by a finalizer keeps its object
//! after its containers stopped. Conditional writes fail with `Conflict` on a
//! stale `resourceVersion` or uid.
//!
//! Time is evaluated lazily: every call first brings the world up to the
//! current instant, and [`Workloads::wait_gone`] sleeps until the next pod is
//! due or a change wakes it. No background task runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::workloads::{
    ANNOTATION_CANCEL_OPERATION, ANNOTATION_CORRELATION_ID, ANNOTATION_NEEDS_INTERVENTION,
    ANNOTATION_SUPERSEDED_AT, ANNOTATION_SUPERSEDED_BY, CancelMode, Intent, Remains, Run, RunPage,
    Workloads, phase,
};
use crate::{Error, Result};

/// How a pod reacts to SIGTERM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodBehaviour {
    /// Its process exits this long after SIGTERM (or is killed at the end
    /// of the grace period, if that comes first).
    StopsAfter(Duration),
    /// Its process ignores SIGTERM: the kubelet kills it when the grace
    /// period ends.
    IgnoresSigterm,
    /// Its node is gone: no kubelet acts on a graceful delete, so the pod
    /// object stays terminating; only a delete with grace 0 (force) removes
    /// it, as on a cluster.
    NodeLost,
}

/// A run to put into [`MemoryWorkloads`].
#[derive(Clone, Debug)]
pub struct RunSeed {
    /// Object name.
    pub name: String,
    /// Task id.
    pub task_id: String,
    /// Agent role.
    pub role: String,
    /// The commit it works on.
    pub head_sha: String,
    /// Its phase (`Running` by default).
    pub phase: String,
    /// How many pods execute it (1 by default).
    pub pods: usize,
    /// How its pods react to SIGTERM (stop after 1 s by default).
    pub behaviour: PodBehaviour,
    /// Its pods' own `terminationGracePeriodSeconds` (30 s by default, as
    /// Kubernetes'): what they get when the garbage collector deletes them.
    pub pod_grace: Duration,
}

impl RunSeed {
    /// A running run `name` of `task_id` in `role` on `head_sha`, with one
    /// pod that stops 1 s after SIGTERM.
    pub fn new(
        name: impl Into<String>,
        task_id: impl Into<String>,
        role: impl Into<String>,
        head_sha: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            task_id: task_id.into(),
            role: role.into(),
            head_sha: head_sha.into(),
            phase: phase::RUNNING.to_owned(),
            pods: 1,
            behaviour: PodBehaviour::StopsAfter(Duration::from_secs(1)),
            pod_grace: Duration::from_secs(30),
        }
    }

    /// With pods that react to SIGTERM as `behaviour`.
    #[must_use]
    pub fn behaving(mut self, behaviour: PodBehaviour) -> Self {
        self.behaviour = behaviour;
        self
    }

    /// With pods whose own grace period is `grace`.
    #[must_use]
    pub fn pod_grace(mut self, grace: Duration) -> Self {
        self.pod_grace = grace;
        self
    }

    /// In phase `phase`.
    #[must_use]
    pub fn in_phase(mut self, phase: impl Into<String>) -> Self {
        self.phase = phase.into();
        self
    }
}

/// Something that happened to a run or pod, as [`MemoryWorkloads::history`]
/// records it: what a test checks its invariants against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Happened {
    /// The intent annotation was written.
    Marked {
        /// The run.
        run: String,
        /// The superseding sha.
        superseded_by: String,
    },
    /// The intent annotation was removed (a rolled-back operation).
    Unmarked {
        /// The run.
        run: String,
    },
    /// A pod got SIGTERM (its deletion began, or was shortened).
    Sigterm {
        /// The pod.
        pod: String,
        /// The grace period it got.
        grace: Duration,
    },
    /// A pod's object is gone.
    PodGone {
        /// The pod.
        pod: String,
        /// Whether it was killed (grace period over, or forced) rather than
        /// stopping by itself on SIGTERM.
        killed: bool,
    },
    /// The run object is gone.
    RunGone {
        /// The run.
        run: String,
    },
    /// The run was recorded `Cancelled` (Stop mode).
    RecordedCancelled {
        /// The run.
        run: String,
        /// Whether a pod of it still existed at that moment (a violation).
        pods_left: bool,
    },
}

/// In-process [`Workloads`]. Cheap to clone; clones share the world.
#[derive(Clone)]
pub struct MemoryWorkloads {
    shared: Arc<Shared>,
}

struct Shared {
    world: Mutex<World>,
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct World {
    revision: u64,
    runs: BTreeMap<String, RunRecord>,
    history: Vec<(Instant, Happened)>,
    calls: BTreeMap<&'static str, u64>,
}

struct RunRecord {
    run: Run,
    annotations: BTreeMap<String, String>,
    foreign_finalizers: Vec<String>,
    pods: BTreeMap<String, Pod>,
}

struct Pod {
    behaviour: PodBehaviour,
    /// Its own `terminationGracePeriodSeconds`.
    own_grace: Duration,
    /// When its process stops (SIGTERM handled, or killed).
    stops_at: Option<Instant>,
    /// Whether stopping at `stops_at` is a kill.
    killed: bool,
    /// Whether its containers have stopped.
    stopped: bool,
    /// A finalizer keeps the pod object after its containers stopped.
    held: bool,
}

impl std::fmt::Debug for MemoryWorkloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryWorkloads")
            .field("runs", &self.world().runs.len())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryWorkloads {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryWorkloads {
    /// An empty world.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                world: Mutex::new(World::default()),
                changed: watch::channel(0).0,
            }),
        }
    }

    /// Adds a run and its pods (running); returns it as read.
    pub fn add_run(&self, seed: RunSeed) -> Run {
        let mut world = self.world();
        world.revision += 1;
        let run = Run {
            uid: format!("uid-{}-{}", seed.name, world.revision),
            resource_version: world.revision.to_string(),
            terminal: phase::TERMINAL.contains(&seed.phase.as_str()),
            name: seed.name.clone(),
            task_id: seed.task_id,
            role: seed.role,
            head_sha: seed.head_sha,
            phase: seed.phase,
            created_at: Some(Timestamp::now()),
            superseded_by: None,
            cancel_operation: None,
            superseded_at: None,
            deleting: false,
        };
        let pods = (0..seed.pods)
            .map(|i| {
                let pod = Pod {
                    behaviour: seed.behaviour,
                    own_grace: seed.pod_grace,
                    stops_at: None,
                    killed: false,
                    stopped: false,
                    held: false,
                };
                (format!("{}-pod-{i}", seed.name), pod)
            })
            .collect();
        world.runs.insert(
            seed.name,
            RunRecord {
                run: run.clone(),
                annotations: BTreeMap::new(),
                foreign_finalizers: Vec::new(),
                pods,
            },
        );
        drop(world);
        self.notify();
        run
    }

    /// Moves run `name` to `phase` (a run finishing by itself).
    pub fn set_phase(&self, name: &str, new_phase: &str) {
        let mut world = self.world();
        if let Some(record) = world.runs.get_mut(name) {
            record.run.phase = new_phase.to_owned();
            record.run.terminal = phase::TERMINAL.contains(&new_phase);
        }
        world.bump(name);
        drop(world);
        self.notify();
    }

    /// Puts a finalizer of someone else's on run `name`.
    pub fn add_foreign_finalizer(&self, name: &str, finalizer: &str) {
        let mut world = self.world();
        if let Some(record) = world.runs.get_mut(name) {
            record.foreign_finalizers.push(finalizer.to_owned());
        }
        world.bump(name);
    }

    /// Removes every foreign finalizer from run `name` (their owner done).
    pub fn remove_foreign_finalizers(&self, name: &str) {
        let mut world = self.world();
        if let Some(record) = world.runs.get_mut(name) {
            record.foreign_finalizers.clear();
        }
        world.bump(name);
        world.advance(Instant::now());
        drop(world);
        self.notify();
    }

    /// Puts a finalizer on every pod of run `name`: their objects stay
    /// after their containers stop.
    pub fn hold_pods(&self, name: &str) {
        let mut world = self.world();
        if let Some(record) = world.runs.get_mut(name) {
            for pod in record.pods.values_mut() {
                pod.held = true;
            }
        }
    }

    /// The names of the pods of run `name` that exist now.
    pub fn pods(&self, name: &str) -> Vec<String> {
        let mut world = self.world();
        world.advance(Instant::now());
        world
            .runs
            .get(name)
            .map(|r| r.pods.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Run `name` as it is now (without advancing the world's calls count).
    pub fn get(&self, name: &str) -> Option<Run> {
        let mut world = self.world();
        world.advance(Instant::now());
        world.runs.get(name).map(|r| r.run.clone())
    }

    /// The annotations of run `name`.
    pub fn annotations(&self, name: &str) -> BTreeMap<String, String> {
        self.world()
            .runs
            .get(name)
            .map(|r| r.annotations.clone())
            .unwrap_or_default()
    }

    /// Everything that happened, oldest first, with when.
    pub fn history(&self) -> Vec<(Instant, Happened)> {
        let mut world = self.world();
        world.advance(Instant::now());
        world.history.clone()
    }

    /// How many times each trait method was called.
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.world().calls.clone()
    }

    /// The total number of trait calls (each stands for one API call or
    /// more of a real backend).
    pub fn total_calls(&self) -> u64 {
        self.world().calls.values().sum()
    }

    fn world(&self) -> MutexGuard<'_, World> {
        // Every mutation completes under the lock; a panic in a test cannot
        // leave the world half-updated.
        self.shared
            .world
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The world at `now`, the call counted.
    fn enter(&self, call: &'static str) -> MutexGuard<'_, World> {
        let mut world = self.world();
        *world.calls.entry(call).or_default() += 1;
        world.advance(Instant::now());
        world
    }

    fn notify(&self) {
        self.shared.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl World {
    /// A new resourceVersion for run `name`.
    fn bump(&mut self, name: &str) {
        self.revision += 1;
        let revision = self.revision.to_string();
        if let Some(record) = self.runs.get_mut(name) {
            record.run.resource_version = revision;
        }
    }

    /// Brings every pod and run up to `now`.
    fn advance(&mut self, now: Instant) {
        let mut happened = Vec::new();
        let mut gone_runs = Vec::new();
        for (name, record) in &mut self.runs {
            let mut gone_pods = Vec::new();
            for (pod_name, pod) in &mut record.pods {
                if let Some(at) = pod.stops_at
                    && at <= now
                    && !pod.stopped
                {
                    pod.stopped = true;
                    if !pod.held {
                        gone_pods.push(pod_name.clone());
                        happened.push((
                            at,
                            Happened::PodGone {
                                pod: pod_name.clone(),
                                killed: pod.killed,
                            },
                        ));
                    }
                }
            }
            for pod in gone_pods {
                record.pods.remove(&pod);
            }
            if record.run.deleting && record.pods.is_empty() && record.foreign_finalizers.is_empty()
            {
                gone_runs.push(name.clone());
            }
        }
        for name in gone_runs {
            self.runs.remove(&name);
            happened.push((now, Happened::RunGone { run: name }));
        }
        happened.sort_by_key(|(at, _)| *at);
        self.history.extend(happened);
    }

    /// The earliest instant a pod is due to stop.
    fn next_due(&self) -> Option<Instant> {
        self.runs
            .values()
            .flat_map(|r| r.pods.values())
            .filter(|p| !p.stopped)
            .filter_map(|p| p.stops_at)
            .min()
    }

    fn remains(&self, run: &Run) -> Remains {
        match self.runs.get(&run.name).filter(|r| r.run.uid == run.uid) {
            None => Remains::default(),
            Some(record) => Remains {
                pods: record.pods.keys().cloned().collect(),
                run_exists: true,
                foreign_finalizers: if record.run.deleting {
                    record.foreign_finalizers.clone()
                } else {
                    Vec::new()
                },
                pods_held_by_finalizers: record
                    .pods
                    .iter()
                    .filter(|(_, p)| p.stopped && p.held)
                    .map(|(n, _)| n.clone())
                    .collect(),
            },
        }
    }

    /// The record of `run` if it is still the same object (same uid).
    fn same(&mut self, run: &Run) -> Option<&mut RunRecord> {
        self.runs
            .get_mut(&run.name)
            .filter(|r| r.run.uid == run.uid)
    }

    /// Sends SIGTERM to every pod of `name` not yet stopped, with `grace`
    /// or (`None`, a garbage collector's delete) each pod's own.
    fn sigterm(&mut self, name: &str, grace: Option<Duration>, now: Instant) {
        let mut happened = Vec::new();
        if let Some(record) = self.runs.get_mut(name) {
            for (pod_name, pod) in &mut record.pods {
                if pod.stopped {
                    continue;
                }
                let grace = grace.unwrap_or(pod.own_grace);
                let (at, killed) = match pod.behaviour {
                    PodBehaviour::NodeLost if !grace.is_zero() => continue,
                    PodBehaviour::StopsAfter(after) if after < grace => (now + after, false),
                    _ => (now + grace, true),
                };
                // A second delete may shorten a deletion in progress, never lengthen it.
                if pod.stops_at.is_none_or(|current| at < current) {
                    pod.stops_at = Some(at);
                    pod.killed = killed;
                    happened.push((
                        now,
                        Happened::Sigterm {
                            pod: pod_name.clone(),
                            grace,
                        },
                    ));
                }
            }
        }
        self.history.extend(happened);
    }
}

#[async_trait]
impl Workloads for MemoryWorkloads {
    async fn runs(&self, task_id: &str) -> Result<Vec<Run>> {
        let world = self.enter("runs");
        Ok(world
            .runs
            .values()
            .filter(|r| r.run.task_id == task_id)
            .map(|r| r.run.clone())
            .collect())
    }

    async fn run(&self, name: &str) -> Result<Option<Run>> {
        let world = self.enter("run");
        Ok(world.runs.get(name).map(|r| r.run.clone()))
    }

    /// Pages in name order; the continue token is the last name served.
    async fn list_runs(&self, limit: u32, continue_token: Option<String>) -> Result<RunPage> {
        use std::ops::Bound;
        let world = self.enter("list_runs");
        let start = continue_token.map_or(Bound::Unbounded, Bound::Excluded);
        let limit = usize::try_from(limit.max(1)).unwrap_or(usize::MAX);
        let mut all = world
            .runs
            .range((start, Bound::Unbounded))
            .map(|(_, r)| &r.run);
        let runs: Vec<Run> = all.by_ref().take(limit).cloned().collect();
        let more = all.next().is_some();
        Ok(RunPage {
            continue_token: more.then(|| runs.last().map(|r| r.name.clone())).flatten(),
            runs,
            unreadable: Vec::new(),
        })
    }

    async fn mark_superseded(&self, run: &Run, intent: &Intent) -> Result<Run> {
        let mut world = self.enter("mark_superseded");
        let conflict = || Error::Conflict {
            name: run.name.clone(),
        };
        let record = world.same(run).ok_or_else(conflict)?;
        if record.run.superseded_by.as_deref() == Some(intent.superseded_by.as_str()) {
            return Ok(record.run.clone());
        }
        if record.run.resource_version != run.resource_version {
            return Err(conflict());
        }
        let annotations = [
            (ANNOTATION_SUPERSEDED_BY, Some(intent.superseded_by.clone())),
            (ANNOTATION_SUPERSEDED_AT, Some(intent.at.to_string())),
            (
                ANNOTATION_CANCEL_OPERATION,
                Some(intent.operation_id.clone()),
            ),
            (ANNOTATION_CORRELATION_ID, intent.correlation_id.clone()),
        ];
        for (key, value) in annotations {
            match value {
                Some(value) => record.annotations.insert(key.to_owned(), value),
                None => record.annotations.remove(key),
            };
        }
        record.run.superseded_by = Some(intent.superseded_by.clone());
        record.run.cancel_operation = Some(intent.operation_id.clone());
        record.run.superseded_at = Some(intent.at);
        world.bump(&run.name);
        world.history.push((
            Instant::now(),
            Happened::Marked {
                run: run.name.clone(),
                superseded_by: intent.superseded_by.clone(),
            },
        ));
        let written = world.runs.get(&run.name).map(|r| r.run.clone());
        drop(world);
        self.notify();
        written.ok_or_else(conflict)
    }

    async fn terminate(&self, run: &Run, mode: CancelMode, grace: Duration) -> Result<()> {
        let mut world = self.enter("terminate");
        let now = Instant::now();
        let Some(record) = world.same(run) else {
            return Ok(()); // gone (or replaced by a new object, not ours to touch)
        };
        // Delete: the garbage collector deletes the pods with their own
        // grace; Stop: we delete them with `grace`.
        let pod_grace = match mode {
            CancelMode::Delete => {
                if !record.run.deleting {
                    record.run.deleting = true;
                    world.bump(&run.name);
                }
                None
            }
            CancelMode::Stop => Some(grace),
        };
        world.sigterm(&run.name, pod_grace, now);
        world.advance(now);
        drop(world);
        self.notify();
        Ok(())
    }

    async fn force(&self, run: &Run) -> Result<()> {
        let mut world = self.enter("force");
        let now = Instant::now();
        if world.same(run).is_none() {
            return Ok(());
        }
        world.sigterm(&run.name, Some(Duration::ZERO), now);
        world.advance(now);
        drop(world);
        self.notify();
        Ok(())
    }

    async fn remains(&self, run: &Run) -> Result<Remains> {
        let world = self.enter("remains");
        Ok(world.remains(run))
    }

    async fn wait_gone(
        &self,
        runs: &[Run],
        mode: CancelMode,
        deadline: Instant,
    ) -> Result<Vec<Remains>> {
        let mut changes = self.shared.changed.subscribe();
        drop(self.enter("wait_gone"));
        loop {
            let (remains, wake) = {
                let mut world = self.world();
                world.advance(Instant::now());
                let wake = world.next_due().map_or(deadline, |due| due.min(deadline));
                let remains: Vec<Remains> = runs.iter().map(|r| world.remains(r)).collect();
                (remains, wake)
            };
            if remains.iter().all(|r| r.done(mode)) || Instant::now() >= deadline {
                return Ok(remains);
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                changed = changes.changed() => {
                    // The sender lives as long as `self`.
                    if changed.is_err() {
                        tokio::time::sleep_until(wake).await;
                    }
                }
            }
        }
    }

    async fn record_cancelled(&self, run: &Run, intent: &Intent) -> Result<()> {
        let mut world = self.enter("record_cancelled");
        let Some(record) = world.same(run) else {
            return Err(Error::Api {
                status: 404,
                reason: "NotFound".into(),
                message: format!("run {} not found", run.name),
                retry_after: None,
            });
        };
        if record.run.phase == phase::CANCELLED {
            return Ok(());
        }
        let pods_left = !record.pods.is_empty();
        record.run.phase = phase::CANCELLED.to_owned();
        record.run.terminal = true;
        record.run.superseded_by = Some(intent.superseded_by.clone());
        world.bump(&run.name);
        world.history.push((
            Instant::now(),
            Happened::RecordedCancelled {
                run: run.name.clone(),
                pods_left,
            },
        ));
        drop(world);
        self.notify();
        Ok(())
    }

    async fn clear_intent(&self, run: &Run, operation_id: &str) -> Result<()> {
        let mut world = self.enter("clear_intent");
        let Some(record) = world.same(run) else {
            return Ok(());
        };
        if record.run.cancel_operation.as_deref() != Some(operation_id) {
            return Ok(());
        }
        for key in [
            ANNOTATION_SUPERSEDED_BY,
            ANNOTATION_SUPERSEDED_AT,
            ANNOTATION_CANCEL_OPERATION,
            ANNOTATION_CORRELATION_ID,
        ] {
            record.annotations.remove(key);
        }
        record.run.superseded_by = None;
        record.run.cancel_operation = None;
        record.run.superseded_at = None;
        world.bump(&run.name);
        world.history.push((
            Instant::now(),
            Happened::Unmarked {
                run: run.name.clone(),
            },
        ));
        drop(world);
        self.notify();
        Ok(())
    }

    async fn flag_intervention(&self, run: &Run, reason: &str) -> Result<()> {
        let mut world = self.enter("flag_intervention");
        if let Some(record) = world.same(run) {
            record
                .annotations
                .insert(ANNOTATION_NEEDS_INTERVENTION.to_owned(), reason.to_owned());
            world.bump(&run.name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "1111111111111111111111111111111111111111";
    const NEW: &str = "2222222222222222222222222222222222222222";

    fn intent() -> Intent {
        Intent {
            superseded_by: NEW.into(),
            operation_id: "op-1".into(),
            correlation_id: Some("c-1".into()),
            at: Timestamp::UNIX_EPOCH,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_that_handles_sigterm_stops_early_and_one_that_ignores_it_is_killed_at_the_end_of_its_grace()
     {
        let w = MemoryWorkloads::new();
        let quick = w.add_run(
            RunSeed::new("quick", "t", "quality", OLD)
                .behaving(PodBehaviour::StopsAfter(Duration::from_secs(2))),
        );
        let stubborn = w.add_run(
            RunSeed::new("stubborn", "t", "review", OLD)
                .behaving(PodBehaviour::IgnoresSigterm)
                .pod_grace(Duration::from_secs(20)),
        );
        // Delete mode: the pods get their own grace (20 s here), whatever
        // the call's.
        let grace = Duration::from_secs(20);
        let start = Instant::now();
        w.terminate(&quick, CancelMode::Delete, grace)
            .await
            .unwrap();
        w.terminate(&stubborn, CancelMode::Delete, grace)
            .await
            .unwrap();

        let until = start + Duration::from_secs(60);
        let left = w
            .wait_gone(std::slice::from_ref(&quick), CancelMode::Delete, until)
            .await
            .unwrap();
        assert!(left[0].done(CancelMode::Delete));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let left = w
            .wait_gone(&[quick, stubborn], CancelMode::Delete, until)
            .await
            .unwrap();
        assert!(left.iter().all(|r| r.done(CancelMode::Delete)));
        assert_eq!(start.elapsed(), grace);
        let killed: Vec<_> = w
            .history()
            .into_iter()
            .filter_map(|(_, h)| match h {
                Happened::PodGone { pod, killed } => Some((pod, killed)),
                _ => None,
            })
            .collect();
        assert_eq!(
            killed,
            [
                ("quick-pod-0".into(), false),
                ("stubborn-pod-0".into(), true)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_deadline_with_what_is_left_and_force_kills_at_once() {
        let w = MemoryWorkloads::new();
        let run = w
            .add_run(RunSeed::new("r", "t", "quality", OLD).behaving(PodBehaviour::IgnoresSigterm));
        w.terminate(&run, CancelMode::Stop, Duration::from_secs(30))
            .await
            .unwrap();
        let left = w
            .wait_gone(
                std::slice::from_ref(&run),
                CancelMode::Stop,
                Instant::now() + Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(left[0].pods, ["r-pod-0"]);
        w.force(&run).await.unwrap();
        assert!(w.remains(&run).await.unwrap().done(CancelMode::Stop));
        assert!(w.get("r").is_some(), "Stop keeps the run");
    }

    #[tokio::test(start_paused = true)]
    async fn the_intent_is_written_conditionally_and_only_once() {
        let w = MemoryWorkloads::new();
        let run = w.add_run(RunSeed::new("r", "t", "quality", OLD));
        let marked = w.mark_superseded(&run, &intent()).await.unwrap();
        assert_eq!(marked.superseded_by.as_deref(), Some(NEW));
        assert_eq!(w.annotations("r")[ANNOTATION_SUPERSEDED_BY], NEW);
        // The old version again: already marked with this sha, nothing written.
        let again = w.mark_superseded(&run, &intent()).await.unwrap();
        assert_eq!(again.resource_version, marked.resource_version);
        w.set_phase("r", phase::RUNNING);
        let other = Intent {
            superseded_by: "3333333333333333333333333333333333333333".into(),
            ..intent()
        };
        assert!(matches!(
            w.mark_superseded(&marked, &other).await,
            Err(Error::Conflict { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_foreign_finalizer_keeps_the_deleted_run_but_not_its_pods() {
        let w = MemoryWorkloads::new();
        let run = w.add_run(RunSeed::new("r", "t", "quality", OLD));
        w.add_foreign_finalizer("r", "example.dev/audit");
        w.terminate(&run, CancelMode::Delete, Duration::from_secs(20))
            .await
            .unwrap();
        let left = w
            .wait_gone(
                std::slice::from_ref(&run),
                CancelMode::Delete,
                Instant::now() + Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert!(left[0].pods_gone());
        assert_eq!(left[0].foreign_finalizers, ["example.dev/audit"]);
        assert!(left[0].done(CancelMode::Delete));
        w.remove_foreign_finalizers("r");
        assert!(w.get("r").is_none());
    }
}
