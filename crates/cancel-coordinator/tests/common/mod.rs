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
