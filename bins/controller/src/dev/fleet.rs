//! The simulated agent fleet of the dev modes: whenever a task's head
//! changes, it starts the configured roles as runs on the new head; each
//! works for `--dev-run-seconds` and then succeeds, and stops
//! `--dev-stop-seconds` after SIGTERM when a cancellation deletes it.
//!
//! The rule it keeps: **the fleet only does what agents and their
//! controller would.** It creates runs and reports them finished; it never
//! deletes, marks or waits for one — cancelling is the production
//! coordinator's, observed like any run's. It is level-triggered like the
//! rest: each pass reads the task states (a page at a time) and starts what
//! a head is missing, so a pass it misses changes nothing.
//!
//! Runs live where `--run-backend` says: [`MemoryFleetRuns`] adds them to
//! `MemoryWorkloads` (pods with the lifecycle a cluster gives them);
//! [`KubeFleetRuns`] creates supersede's `CodeRun` and its pod on the API
//! server (fake-kube's kubelet runs it; on a real cluster the pod is a
//! shell that sleeps and traps SIGTERM), and writes the run's status as a
//! CodeRun controller would.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cancel_coordinator::workloads::{LABEL_CODE_RUN, phase};
use cancel_coordinator::{
    AgentSpec, CodeRun, CodeRunSpec, METADATA_PULL_REQUEST, MemoryWorkloads, PodBehaviour, RunSeed,
    Workloads,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use label_cas::{MemoryPullRequests, PrRef};
use serde_json::json;
use state_store::{RemediationState, StateStore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::ControllerMetrics;

/// States read per page of a pass.
const PAGE: u32 = 500;

/// The image of a simulated run's pod on a real cluster.
pub const AGENT_IMAGE: &str = "busybox:1.36";

/// One run the fleet starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOrder {
    /// Object name: `task-<id>-<role>-<7 hex>`.
    pub name: String,
    /// The task.
    pub task_id: String,
    /// The role.
    pub role: String,
    /// The head it works on.
    pub head_sha: String,
    /// The task's pull request.
    pub pr: PrRef,
    /// Its head branch.
    pub branch: String,
}

impl RunOrder {
    /// The run of `role` for `task_id` on `head_sha`.
    pub fn new(task_id: &str, role: &str, head_sha: &str, pr: PrRef, branch: String) -> Self {
        let short: String = head_sha.chars().take(7).collect();
        Self {
            name: format!("task-{task_id}-{role}-{short}"),
            task_id: task_id.to_owned(),
            role: role.to_owned(),
            head_sha: head_sha.to_owned(),
            pr,
            branch,
        }
    }
}

/// Where the fleet starts runs.
#[async_trait]
pub trait FleetRuns: Send + Sync + 'static {
    /// Starts `order`'s run (already there: nothing to do).
    async fn start(&self, order: &RunOrder) -> Result<(), String>;

    /// Reports run `name` finished (succeeded) if it is still working —
    /// not terminal, not being deleted; returns whether it was.
    async fn finish(&self, name: &str) -> Result<bool, String>;
}

/// [`FleetRuns`] in `MemoryWorkloads`.
#[derive(Clone, Debug)]
pub struct MemoryFleetRuns {
    runs: MemoryWorkloads,
    stop_after: Duration,
}

impl MemoryFleetRuns {
    /// Runs in `runs` whose pods stop `stop_after` SIGTERM.
    pub fn new(runs: MemoryWorkloads, stop_after: Duration) -> Self {
        Self { runs, stop_after }
    }
}

#[async_trait]
impl FleetRuns for MemoryFleetRuns {
    async fn start(&self, order: &RunOrder) -> Result<(), String> {
        if self.runs.get(&order.name).is_none() {
            self.runs.add_run(
                RunSeed::new(&order.name, &order.task_id, &order.role, &order.head_sha)
                    .behaving(PodBehaviour::StopsAfter(self.stop_after)),
            );
        }
        Ok(())
    }

    async fn finish(&self, name: &str) -> Result<bool, String> {
        match self.runs.get(name) {
            Some(run) if !run.terminal && !run.deleting => {
                self.runs.set_phase(name, phase::SUCCEEDED);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// [`FleetRuns`] as supersede's `CodeRun`s and their pods on Kubernetes.
#[derive(Clone)]
pub struct KubeFleetRuns {
    runs: Api<CodeRun>,
    pods: Api<Pod>,
    run_for: Duration,
    stop_after: Duration,
}

impl std::fmt::Debug for KubeFleetRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeFleetRuns")
            .field("run_for", &self.run_for)
            .field("stop_after", &self.stop_after)
            .finish_non_exhaustive()
    }
}

/// The field manager of the fleet's writes.
const FIELD_MANAGER: &str = "supersede-dev-fleet";

impl KubeFleetRuns {
    /// CodeRuns in `namespace` whose pods work `run_for` and stop
    /// `stop_after` SIGTERM.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        run_for: Duration,
        stop_after: Duration,
    ) -> Self {
        Self {
            runs: Api::namespaced(client.clone(), namespace),
            pods: Api::namespaced(client, namespace),
            run_for,
            stop_after,
        }
    }

    fn pod(&self, run: &CodeRun) -> Result<Pod, String> {
        let owner = OwnerReference {
            block_owner_deletion: Some(true),
            ..run
                .controller_owner_ref(&())
                .ok_or("the run has no uid yet")?
        };
        let (run_s, stop_s) = (self.run_for.as_secs(), self.stop_after.as_secs());
        let termination = if stop_s == 0 {
            "immediate".to_owned()
        } else {
            format!("stops-after-{stop_s}s")
        };
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("{}-pod", run.name_any()),
                "labels": {
                    LABEL_CODE_RUN: run.name_any(),
                    // How testkit's fake-kube kubelet runs it; ignored by a
                    // real kubelet, which runs the command below.
                    "testkit.supersede.dev/starts-after": "0s",
                    "testkit.supersede.dev/termination": termination,
                    "testkit.supersede.dev/exits": format!("succeeded-after-{run_s}s"),
                },
                "ownerReferences": [owner],
            },
            "spec": {
                "containers": [{
                    "name": "agent",
                    "image": AGENT_IMAGE,
                    "command": ["sh", "-c", format!("trap 'sleep {stop_s}; exit 0' TERM; sleep {run_s} & wait $!")],
                }],
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 30,
            },
        }))
        .map_err(|e| e.to_string())
    }

    async fn set_phase(&self, name: &str, status: serde_json::Value) -> Result<(), String> {
        self.runs
            .patch_status(
                name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                },
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

fn already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[async_trait]
impl FleetRuns for KubeFleetRuns {
    async fn start(&self, order: &RunOrder) -> Result<(), String> {
        let spec = CodeRunSpec {
            task_id: order.task_id.clone(),
            role: order.role.clone(),
            repository: format!("{}/{}", order.pr.owner(), order.pr.repo()),
            pull_request: order.pr.number(),
            branch: order.branch.clone(),
            head_sha: order.head_sha.clone(),
            agent: AgentSpec {
                image: AGENT_IMAGE.to_owned(),
                ..AgentSpec::default()
            },
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let run = match self
            .runs
            .create(&params, &CodeRun::labelled(&order.name, spec))
            .await
        {
            Ok(run) => run,
            Err(e) if already_exists(&e) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        match self.pods.create(&params, &self.pod(&run)?).await {
            Ok(_) => {}
            Err(e) if already_exists(&e) => {}
            Err(e) => return Err(e.to_string()),
        }
        self.set_phase(
            &order.name,
            json!({
                "phase": phase::RUNNING,
                "podName": format!("{}-pod", order.name),
                "startedAt": Timestamp::now(),
            }),
        )
        .await
    }

    async fn finish(&self, name: &str) -> Result<bool, String> {
        let Some(run) = self.runs.get_opt(name).await.map_err(|e| e.to_string())? else {
            return Ok(false);
        };
        let working = run.metadata.deletion_timestamp.is_none()
            && run
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .is_none_or(|p| !p.is_terminal());
        if !working {
            return Ok(false);
        }
        self.set_phase(
            name,
            json!({"phase": phase::SUCCEEDED, "finishedAt": Timestamp::now()}),
        )
        .await?;
        Ok(true)
    }
}

/// The fleet.
pub struct Fleet {
    store: StateStore,
    workloads: Arc<dyn Workloads>,
    runs: Arc<dyn FleetRuns>,
    github: Option<Arc<MemoryPullRequests>>,
    roles: Vec<String>,
    run_for: Duration,
    interval: Duration,
    metrics: ControllerMetrics,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("roles", &self.roles)
            .field("run_for", &self.run_for)
            .finish_non_exhaustive()
    }
}

/// What the fleet remembers between passes.
#[derive(Debug, Default)]
pub struct Memory {
    /// Task → the head whose runs were all started.
    started: HashMap<String, String>,
    /// When each run (name) finishes, with its role.
    due: BTreeMap<(Instant, String), String>,
}

impl Fleet {
    /// A fleet starting `roles` for every new head of the tasks in `store`
    /// (their runs read from `workloads`, started through `runs`), each
    /// working `run_for`; a pass every `interval`. `github`, when in memory,
    /// names each pull request's branch.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: StateStore,
        workloads: Arc<dyn Workloads>,
        runs: Arc<dyn FleetRuns>,
        github: Option<Arc<MemoryPullRequests>>,
        roles: Vec<String>,
        run_for: Duration,
        interval: Duration,
        metrics: ControllerMetrics,
    ) -> Self {
        Self {
            store,
            workloads,
            runs,
            github,
            roles,
            run_for,
            interval,
            metrics,
        }
    }

    /// One pass: finish the runs that are due, then start what each task's
    /// head is missing.
    pub async fn pass(&self, memory: &mut Memory) -> Result<(), String> {
        self.finish_due(memory).await;
        let mut token = None;
        loop {
            let page = self
                .store
                .list_page(PAGE, token)
                .await
                .map_err(|e| e.to_string())?;
            for snapshot in &page.states {
                if let Err(error) = self.start_missing(&snapshot.state, memory).await {
                    warn!(task_id = %snapshot.state.task_id, %error, "dev fleet: could not start the runs");
                }
            }
            match page.continue_token {
                Some(next) => token = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Runs passes every interval until `stop` fires.
    pub fn spawn(self, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut memory = Memory::default();
            let mut ticker = tokio::time::interval(self.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                if let Err(error) = self.pass(&mut memory).await {
                    warn!(%error, "dev fleet: the task states could not be read; next pass retries");
                }
            }
        })
    }

    async fn start_missing(
        &self,
        state: &RemediationState,
        memory: &mut Memory,
    ) -> Result<(), String> {
        let task = &state.task_id;
        let Some(head) = state.latest_head.as_ref().map(|h| h.sha.clone()) else {
            return Ok(());
        };
        if state.status.is_terminal() || memory.started.get(task) == Some(&head) {
            return Ok(());
        }
        let Some(pr) = state
            .metadata
            .get(METADATA_PULL_REQUEST)
            .and_then(|text| text.parse::<PrRef>().ok())
        else {
            debug!(task_id = %task, "dev fleet: the task names no pull request yet");
            return Ok(());
        };
        let branch = self
            .github
            .as_ref()
            .and_then(|g| g.pull_request(&pr))
            .map_or_else(|| format!("task-{task}"), |p| p.head_ref);
        let existing = self.workloads.runs(task).await.map_err(|e| e.to_string())?;
        for role in &self.roles {
            if existing
                .iter()
                .any(|r| &r.role == role && r.head_sha == head)
            {
                continue;
            }
            let order = RunOrder::new(task, role, &head, pr.clone(), branch.clone());
            self.runs.start(&order).await?;
            info!(task_id = %task, run = %order.name, role, head = %head, "dev fleet: run started");
            self.metrics
                .fleet_started
                .get_or_create(&crate::metrics::RoleLabels { role: role.clone() })
                .inc();
            memory
                .due
                .insert((Instant::now() + self.run_for, order.name), role.clone());
        }
        memory.started.insert(task.clone(), head);
        Ok(())
    }

    async fn finish_due(&self, memory: &mut Memory) {
        let now = Instant::now();
        while let Some(entry) = memory.due.first_entry() {
            if entry.key().0 > now {
                return;
            }
            let ((_, name), role) = entry.remove_entry();
            match self.runs.finish(&name).await {
                Ok(true) => {
                    info!(run = %name, "dev fleet: run finished its work");
                    self.metrics
                        .fleet_finished
                        .get_or_create(&crate::metrics::RoleLabels { role })
                        .inc();
                }
                Ok(false) => {}
                Err(error) => {
                    warn!(run = %name, %error, "dev fleet: could not report the run finished")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use state_store::{HeadRecord, MemoryBackend};

    const OLD: &str = "1111111111111111111111111111111111111111";
    const NEW: &str = "2222222222222222222222222222222222222222";

    struct World {
        store: StateStore,
        runs: MemoryWorkloads,
        fleet: Fleet,
        metrics: ControllerMetrics,
    }

    fn world() -> World {
        let store = StateStore::new(MemoryBackend::new());
        let runs = MemoryWorkloads::new();
        let metrics = ControllerMetrics::default();
        let fleet = Fleet::new(
            store.clone(),
            Arc::new(runs.clone()),
            Arc::new(MemoryFleetRuns::new(runs.clone(), Duration::from_secs(1))),
            None,
            vec!["quality".into(), "review".into()],
            Duration::from_secs(120),
            Duration::from_secs(1),
            metrics.clone(),
        );
        World {
            store,
            runs,
            fleet,
            metrics,
        }
    }

    async fn head(store: &StateStore, sha: &str, second: i64) {
        store
            .update("42", |s: &mut RemediationState| {
                s.latest_head = Some(HeadRecord {
                    sha: sha.into(),
                    pushed_at: Timestamp::from_second(1_800_000_000 + second).unwrap(),
                    delivery_id: "d".into(),
                });
                s.metadata
                    .insert(METADATA_PULL_REQUEST.into(), "acme/widgets#7".into());
                Ok::<_, state_store::Error>(())
            })
            .await
            .unwrap();
    }

    fn heads_of(runs: &MemoryWorkloads, names: &[&str]) -> Vec<Option<String>> {
        names
            .iter()
            .map(|n| runs.get(n).map(|r| r.head_sha))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn each_new_head_gets_every_role_once_and_the_old_runs_are_left_alone() {
        let w = world();
        let mut memory = Memory::default();
        head(&w.store, OLD, 0).await;
        w.fleet.pass(&mut memory).await.unwrap();
        w.fleet.pass(&mut memory).await.unwrap();
        let old = ["task-42-quality-1111111", "task-42-review-1111111"];
        assert_eq!(
            heads_of(&w.runs, &old),
            [Some(OLD.into()), Some(OLD.into())]
        );
        assert_eq!(
            w.runs.calls().get("runs"),
            Some(&1),
            "a handled head is not read again"
        );

        head(&w.store, NEW, 60).await;
        w.fleet.pass(&mut memory).await.unwrap();
        let new = ["task-42-quality-2222222", "task-42-review-2222222"];
        assert_eq!(
            heads_of(&w.runs, &new),
            [Some(NEW.into()), Some(NEW.into())]
        );
        assert!(
            w.runs.get(old[0]).is_some(),
            "cancelling is not the fleet's"
        );
        let started = w
            .metrics
            .fleet_started
            .get_or_create(&crate::metrics::RoleLabels {
                role: "quality".into(),
            })
            .get();
        assert_eq!(started, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_succeeds_after_its_work_unless_it_is_being_cancelled() {
        let w = world();
        let mut memory = Memory::default();
        head(&w.store, OLD, 0).await;
        w.fleet.pass(&mut memory).await.unwrap();
        let deleted = w.runs.get("task-42-review-1111111").unwrap();
        w.runs
            .terminate(
                &deleted,
                cancel_coordinator::CancelMode::Delete,
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(119)).await;
        w.fleet.pass(&mut memory).await.unwrap();
        assert_eq!(
            w.runs.get("task-42-quality-1111111").unwrap().phase,
            phase::RUNNING
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        w.fleet.pass(&mut memory).await.unwrap();
        assert_eq!(
            w.runs.get("task-42-quality-1111111").unwrap().phase,
            phase::SUCCEEDED
        );
        // The deleted run stopped a second after its SIGTERM and is gone.
        assert!(w.runs.get("task-42-review-1111111").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_without_a_pull_request_or_with_a_final_status_gets_no_runs() {
        let w = world();
        let mut memory = Memory::default();
        w.store
            .update("7", |s: &mut RemediationState| {
                s.latest_head = Some(HeadRecord {
                    sha: OLD.into(),
                    pushed_at: Timestamp::UNIX_EPOCH,
                    delivery_id: "d".into(),
                });
                Ok::<_, state_store::Error>(())
            })
            .await
            .unwrap();
        head(&w.store, OLD, 0).await;
        w.store
            .update("42", |s: &mut RemediationState| {
                s.status = state_store::TaskStatus::Completed;
                Ok::<_, state_store::Error>(())
            })
            .await
            .unwrap();
        w.fleet.pass(&mut memory).await.unwrap();
        assert_eq!(w.runs.total_calls(), 0);
    }
}
