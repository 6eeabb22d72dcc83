//! A world of memory backends for the saga and coordinator tests: leases,
//! task states, runs and pods, a pull request and its labels.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use cancel_coordinator::{
    CancellationRequest, Happened, MemoryWorkloads, RunSeed, SagaConfig, StateAwareCancellation,
};
use jiff::Timestamp;
use label_cas::{LabelSet, MemoryLabels, MemoryPullRequests, PrRef, PullRequest};
use lease_lock::{LeaseLock, LockConfig, MemoryLeases};
use state_store::{MemoryBackend, RemediationState, StateStore, Supersession};

pub const OLD: &str = "1111111111111111111111111111111111111111";
pub const NEW: &str = "2222222222222222222222222222222222222222";
pub const NEWER: &str = "3333333333333333333333333333333333333333";
pub const TASK: &str = "task-42";

pub struct World {
    pub leases: MemoryLeases,
    pub states: Arc<MemoryBackend>,
    pub store: StateStore,
    pub workloads: MemoryWorkloads,
    pub labels: Arc<MemoryLabels>,
    pub pulls: Arc<MemoryPullRequests>,
    pub pr: PrRef,
}

impl World {
    pub fn new() -> Self {
        let labels = Arc::new(MemoryLabels::new());
        let states = Arc::new(MemoryBackend::new());
        Self {
            leases: MemoryLeases::new(),
            store: StateStore::new(states.clone()),
            states,
            workloads: MemoryWorkloads::new(),
            pulls: Arc::new(MemoryPullRequests::with_labels(labels.clone())),
            labels,
            pr: PrRef::new("acme", "widgets", 7).unwrap(),
        }
    }

    /// The PR at `head`, carrying `labels`.
    pub fn pull_at(&self, head: &str, labels: &[&str]) {
        let pull = PullRequest::open(head, "feature")
            .unwrap()
            .with_labels(labels.iter().copied());
        self.pulls.set_pull(&self.pr, pull).unwrap();
    }

    /// The sensor's part: `head` pushed at `at` recorded in the task's state.
    pub async fn pushed(&self, head: &str, at: Timestamp) {
        self.store
            .record_supersession(
                TASK,
                &Supersession {
                    head_sha: head.into(),
                    pushed_at: at,
                    delivery_id: format!("delivery-{head}"),
                    correlation_id: None,
                },
            )
            .await
            .unwrap();
    }

    pub fn request(&self, head: &str, at: Timestamp) -> CancellationRequest {
        CancellationRequest::push(TASK, self.pr.clone(), head, at)
    }

    pub fn lock(&self, identity: &str) -> LeaseLock {
        LeaseLock::new(
            self.leases.clone(),
            LockConfig {
                prefix: "cancel".into(),
                ..LockConfig::new(identity, "supersede")
            },
        )
        .unwrap()
    }

    pub fn saga(&self, identity: &str) -> StateAwareCancellation {
        self.saga_with(identity, SagaConfig::default())
    }

    pub fn saga_with(&self, identity: &str, config: SagaConfig) -> StateAwareCancellation {
        StateAwareCancellation::builder(
            self.lock(identity),
            self.store.clone(),
            Arc::new(self.workloads.clone()),
            self.pulls.clone(),
            self.labels.clone(),
        )
        .config(config)
        .build()
        .unwrap()
    }

    /// The quality, testing and review runs of `head`, one pod each.
    pub fn agents_on(&self, head: &str) -> Vec<String> {
        ["quality", "testing", "review"]
            .iter()
            .map(|role| {
                let name = format!("{role}-{}", &head[..7]);
                self.workloads
                    .add_run(RunSeed::new(name.clone(), TASK, *role, head));
                name
            })
            .collect()
    }

    pub async fn state(&self) -> RemediationState {
        self.store.get(TASK).await.unwrap().unwrap().state
    }

    pub fn labels_now(&self) -> LabelSet {
        self.labels.labels(&self.pr)
    }

    /// The pods that got SIGTERM, in order.
    pub fn sigtermed(&self) -> Vec<String> {
        self.workloads
            .history()
            .into_iter()
            .filter_map(|(_, h)| match h {
                Happened::Sigterm { pod, .. } => Some(pod),
                _ => None,
            })
            .collect()
    }
}

pub fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).unwrap()
}

/// What an [`Intercepted`] backend does around the calls it forwards.
#[async_trait::async_trait]
pub trait Hook: Send + Sync + 'static {
    /// Before every call (`call` is the trait method's name); an error is
    /// the call's answer.
    async fn before(&self, _call: &'static str) -> cancel_coordinator::Result<()> {
        Ok(())
    }
    /// After a write landed; an error replaces its answer (the write stays).
    async fn after_write(&self, _call: &'static str) -> cancel_coordinator::Result<()> {
        Ok(())
    }
}

/// `MemoryWorkloads` with a [`Hook`] around every call: faults, crashes,
/// interference, without a copy of the trait's delegation in each test.
pub struct Intercepted<H> {
    pub inner: MemoryWorkloads,
    pub hook: H,
}

#[async_trait::async_trait]
impl<H: Hook> cancel_coordinator::Workloads for Intercepted<H> {
    async fn runs(
        &self,
        task_id: &str,
    ) -> cancel_coordinator::Result<Vec<cancel_coordinator::Run>> {
        self.hook.before("runs").await?;
        self.inner.runs(task_id).await
    }
    async fn run(&self, name: &str) -> cancel_coordinator::Result<Option<cancel_coordinator::Run>> {
        self.hook.before("run").await?;
        self.inner.run(name).await
    }
    async fn list_runs(
        &self,
        limit: u32,
        continue_token: Option<String>,
    ) -> cancel_coordinator::Result<cancel_coordinator::RunPage> {
        self.hook.before("list_runs").await?;
        self.inner.list_runs(limit, continue_token).await
    }
    async fn mark_superseded(
        &self,
        run: &cancel_coordinator::Run,
        intent: &cancel_coordinator::Intent,
    ) -> cancel_coordinator::Result<cancel_coordinator::Run> {
        self.hook.before("mark_superseded").await?;
        let out = self.inner.mark_superseded(run, intent).await?;
        self.hook.after_write("mark_superseded").await?;
        Ok(out)
    }
    async fn terminate(
        &self,
        run: &cancel_coordinator::Run,
        mode: cancel_coordinator::CancelMode,
        grace: std::time::Duration,
    ) -> cancel_coordinator::Result<()> {
        self.hook.before("terminate").await?;
        self.inner.terminate(run, mode, grace).await?;
        self.hook.after_write("terminate").await
    }
    async fn force(&self, run: &cancel_coordinator::Run) -> cancel_coordinator::Result<()> {
        self.hook.before("force").await?;
        self.inner.force(run).await?;
        self.hook.after_write("force").await
    }
    async fn remains(
        &self,
        run: &cancel_coordinator::Run,
    ) -> cancel_coordinator::Result<cancel_coordinator::Remains> {
        self.hook.before("remains").await?;
        self.inner.remains(run).await
    }
    async fn wait_gone(
        &self,
        runs: &[cancel_coordinator::Run],
        mode: cancel_coordinator::CancelMode,
        deadline: tokio::time::Instant,
    ) -> cancel_coordinator::Result<Vec<cancel_coordinator::Remains>> {
        self.hook.before("wait_gone").await?;
        self.inner.wait_gone(runs, mode, deadline).await
    }
    async fn record_cancelled(
        &self,
        run: &cancel_coordinator::Run,
        intent: &cancel_coordinator::Intent,
    ) -> cancel_coordinator::Result<()> {
        self.hook.before("record_cancelled").await?;
        self.inner.record_cancelled(run, intent).await?;
        self.hook.after_write("record_cancelled").await
    }
    async fn clear_intent(
        &self,
        run: &cancel_coordinator::Run,
        operation_id: &str,
    ) -> cancel_coordinator::Result<()> {
        self.hook.before("clear_intent").await?;
        self.inner.clear_intent(run, operation_id).await?;
        self.hook.after_write("clear_intent").await
    }
    async fn flag_intervention(
        &self,
        run: &cancel_coordinator::Run,
        reason: &str,
    ) -> cancel_coordinator::Result<()> {
        self.hook.before("flag_intervention").await?;
        self.inner.flag_intervention(run, reason).await?;
        self.hook.after_write("flag_intervention").await
    }
}
