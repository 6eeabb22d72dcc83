//! A cluster for recovery's scenario tests on the real backends: testkit's
//! FakeKube (the CodeRun CRD served, its garbage collector and kubelet
//! deciding when pods and runs go) and FakeGitHub, with supersede's own
//! backends over real HTTP — ConfigMap task states, Lease task locks,
//! `KubeCodeRuns`, label-cas's GitHub labels and pull requests — a
//! coordinator and the reconciler.
//!
//! The rule it keeps: **every party talks to FakeKube through a client of
//! its own, tagged with an `Audit-ID`** ([`RECOVERY`], [`COORDINATOR`],
//! [`SENSOR`], …), so the request log tells who wrote what; and the tests'
//! own looks at the world ([`Cluster::peek_state`], [`Cluster::pod_exists`])
//! read FakeKube's store directly, making no request at all.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod leases;

use std::sync::Arc;
use std::time::Duration;

use cancel_coordinator::workloads::LABEL_CODE_RUN;
use cancel_coordinator::{
    AgentSpec, CancellationCoordinator, CodeRun, CodeRunConfig, CodeRunSpec, CoordinatorConfig,
    KubeCodeRuns, METADATA_PULL_REQUEST, SagaConfig, StateAwareCancellation, Workers,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::{CustomResourceExt, Resource, ResourceExt};
use label_cas::{GitHubLabels, PrRef};
use lease_lock::{KubeLeases, LeaseLock, LockConfig};
use recovery::{RecoveryConfig, RecoveryManager};
use secrecy::SecretString;
use state_store::naming::{KEY_STATE, state_labels};
use state_store::{
    CancellationOutcome, Clock, ConfigMapBackend, RemediationState, StateStore, StoreConfig,
    Supersession, TaskStatus,
};
use testkit::github::FakeGitHub;
use testkit::kube::seeding::owned_pod;
use testkit::kube::{FakeKube, PodTermination, RequestFilter, RequestRecord};

pub const NS: &str = "default";
pub const TASK: &str = "task-42";
/// The state ConfigMap of [`TASK`].
pub const TASK_STATE: &str = "task-task-42-state";
/// The task lock's Lease of [`TASK`].
pub const TASK_LEASE: &str = "cancel-task-task-42";
pub const OLD: &str = "1111111111111111111111111111111111111111";
pub const NEW: &str = "2222222222222222222222222222222222222222";

/// `Audit-ID` of the reconciler's requests.
pub const RECOVERY: &str = "recovery";
/// `Audit-ID` of the coordinator's (the saga's) requests.
pub const COORDINATOR: &str = "coordinator";
/// `Audit-ID` of the sensor's requests (recording pushes).
pub const SENSOR: &str = "sensor";
/// `Audit-ID` of a coordinator that died before the test began.
pub const DEAD: &str = "dead-coordinator";
/// `Audit-ID` of what a test does as an operator (`kubectl`) would.
pub const OPERATOR: &str = "operator";

/// The token the reconciler reads GitHub with (its own rate-limit budget).
pub const RECOVERY_TOKEN: &str = "recovery-token";

/// Verbs that change an object.
pub const WRITES: [&str; 4] = ["create", "update", "patch", "delete"];

pub struct Cluster {
    pub kube: FakeKube,
    pub github: FakeGitHub,
    /// `acme/widgets#7`, [`TASK`]'s pull request.
    pub pr: PrRef,
    /// The sensor's store: how pushes get recorded.
    pub store: StateStore,
    /// Wall-clock time that follows paused tokio time, shared by every
    /// store (as FakeKube's own clock does), so `settle_after` and run
    /// deadlines pass with `tokio::time::sleep`.
    pub clock: Clock,
    /// The coordinator's GitHub client (the default token).
    pub github_labels: Arc<GitHubLabels>,
    /// The metrics of the reconciler's GitHub client.
    pub recovery_github: label_cas::Metrics,
}

impl Cluster {
    pub async fn start() -> Self {
        let kube = FakeKube::builder()
            .crd(CodeRun::crd())
            .start()
            .await
            .unwrap();
        let github = FakeGitHub::start().await.unwrap();
        github.add_token(RECOVERY_TOKEN);
        let clock = Clock::tokio_anchored(Timestamp::now());
        Self {
            store: store_over(client_for(&kube, SENSOR), &clock),
            github_labels: Arc::new(labels_client(&github, github.token(), None)),
            kube,
            github,
            pr: PrRef::new("acme", "widgets", 7).unwrap(),
            clock,
            recovery_github: label_cas::Metrics::default(),
        }
    }

    /// A client for FakeKube whose requests carry `Audit-ID: who`.
    pub fn client(&self, who: &str) -> kube::Client {
        client_for(&self.kube, who)
    }

    /// The task states, through `who`'s client.
    pub fn store_as(&self, who: &str) -> StateStore {
        store_over(self.client(who), &self.clock)
    }

    /// The task lock (prefix `cancel`) as `identity`, through `who`'s client.
    pub fn task_lock(&self, who: &str, identity: &str) -> LeaseLock {
        self.lock(who, identity, "cancel")
    }

    pub fn lock(&self, who: &str, identity: &str, prefix: &str) -> LeaseLock {
        LeaseLock::new(
            KubeLeases::new(self.client(who)),
            LockConfig {
                prefix: prefix.into(),
                ..LockConfig::new(identity, NS)
            },
        )
        .unwrap()
    }

    pub fn workloads(&self, who: &str) -> KubeCodeRuns {
        KubeCodeRuns::new(self.client(who), NS, CodeRunConfig::default()).unwrap()
    }

    /// The saga of the coordinator on pod `identity`.
    pub fn saga(&self, identity: &str) -> StateAwareCancellation {
        StateAwareCancellation::builder(
            self.task_lock(COORDINATOR, identity),
            self.store_as(COORDINATOR),
            Arc::new(self.workloads(COORDINATOR)),
            Arc::new(self.github_labels.pull_requests()),
            self.github_labels.clone(),
        )
        .config(SagaConfig::default())
        .build()
        .unwrap()
    }

    /// The coordinator of pod `identity`, its workers started.
    pub fn coordinator(&self, identity: &str) -> (CancellationCoordinator, Workers) {
        let coordinator =
            CancellationCoordinator::new(self.saga(identity), CoordinatorConfig::default())
                .unwrap();
        let workers = coordinator.start();
        (coordinator, workers)
    }

    /// The reconciler, handing work to `coordinator`, with its own clients
    /// (Kubernetes and GitHub) and Events on the flagged tasks' states.
    pub fn recovery(&self, coordinator: &CancellationCoordinator) -> RecoveryManager {
        let github = Arc::new(labels_client(
            &self.github,
            RECOVERY_TOKEN,
            Some(self.recovery_github.clone()),
        ));
        let recorder = Recorder::new(
            self.client(RECOVERY),
            Reporter {
                controller: "supersede-recovery".into(),
                instance: Some("controller-0".into()),
            },
        );
        RecoveryManager::builder(
            self.store_as(RECOVERY),
            self.task_lock(RECOVERY, "controller-0-recovery"),
            Arc::new(self.workloads(RECOVERY)),
            coordinator.clone(),
        )
        .github(Arc::new(github.pull_requests()), github)
        .events(recorder, NS)
        .config(RecoveryConfig::default())
        .build()
        .unwrap()
    }

    // ----- the world as its other parties make it ------------------------

    /// [`TASK`]'s pull request, open at `head`, carrying `labels`.
    pub fn pull_at(&self, head: &str, labels: &[&str]) {
        self.pull(7, head, labels);
    }

    /// Pull request `number` of `acme/widgets`, open at `head` from branch
    /// `task-<number>-fix`, carrying `labels`.
    pub fn pull(&self, number: u64, head: &str, labels: &[&str]) -> PrRef {
        self.github
            .add_pull(
                "acme",
                "widgets",
                number,
                head,
                &format!("task-{number}-fix"),
                labels,
            )
            .unwrap();
        PrRef::new("acme", "widgets", number).unwrap()
    }

    /// The sensor's part of a push: `head` pushed at `at` recorded in
    /// [`TASK`]'s state, with its pull request.
    pub async fn pushed(&self, head: &str, at: Timestamp) {
        self.pushed_to(TASK, &self.pr.clone(), head, at).await;
    }

    /// [`pushed`](Self::pushed) for `task` and its pull request `pr`.
    pub async fn pushed_to(&self, task: &str, pr: &PrRef, head: &str, at: Timestamp) {
        let push = supersession(head, at);
        self.store.record_supersession(task, &push).await.unwrap();
        let pr = pr.to_string();
        self.store
            .update(task, |s| {
                s.metadata.insert(METADATA_PULL_REQUEST.into(), pr.clone());
                Ok::<_, state_store::Error>(())
            })
            .await
            .unwrap();
    }

    /// A push of `head` at `at` that was handled: recorded as the head,
    /// nothing pending, the task in progress.
    pub async fn observed(&self, head: &str, at: Timestamp) {
        let pr = self.pr.to_string();
        self.store
            .update(TASK, |s| {
                s.observe_head(&supersession(head, at));
                s.settle_supersessions_through(head, at);
                s.status = TaskStatus::InProgress;
                s.metadata.insert(METADATA_PULL_REQUEST.into(), pr.clone());
                Ok::<_, state_store::Error>(())
            })
            .await
            .unwrap();
    }

    /// `task`'s state ConfigMap created through the API with `payload` as
    /// its `state.json`, as a hand edit or another tool would leave it.
    pub async fn state_written_by_hand(&self, task: &str, payload: &str) {
        let cms: Api<ConfigMap> = Api::namespaced(self.client(OPERATOR), NS);
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(format!("task-{task}-state"));
        cm.metadata.labels = Some(state_labels(task));
        cm.data = Some([(KEY_STATE.to_owned(), payload.to_owned())].into());
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }

    /// A CodeRun of [`TASK`] on `head` and its one pod, seeded straight into
    /// FakeKube (no request); the pod stops `stop_after` after SIGTERM.
    pub fn seed_run(&self, name: &str, role: &str, head: &str, stop_after: Duration) {
        self.seed_run_of(TASK, name, role, head, stop_after, &[]);
    }

    /// [`seed_run`](Self::seed_run), the run object carrying `finalizers`.
    pub fn seed_run_held(
        &self,
        name: &str,
        role: &str,
        head: &str,
        stop_after: Duration,
        finalizers: &[&str],
    ) {
        self.seed_run_of(TASK, name, role, head, stop_after, finalizers);
    }

    /// A CodeRun of `task` on `head` and its one pod, seeded straight into
    /// FakeKube; the run object carries `finalizers`, the pod stops
    /// `stop_after` after SIGTERM.
    pub fn seed_run_of(
        &self,
        task: &str,
        name: &str,
        role: &str,
        head: &str,
        stop_after: Duration,
        finalizers: &[&str],
    ) {
        let spec = CodeRunSpec {
            task_id: task.into(),
            role: role.into(),
            repository: "acme/widgets".into(),
            pull_request: 7,
            branch: "task-42-fix".into(),
            head_sha: head.into(),
            agent: AgentSpec {
                image: "agent:1".into(),
                ..AgentSpec::default()
            },
        };
        let mut run = CodeRun::labelled(name, spec);
        if !finalizers.is_empty() {
            run.metadata.finalizers = Some(finalizers.iter().map(|&f| f.to_owned()).collect());
        }
        self.kube.seed([run]).unwrap();
        let run = self.kube.peek::<CodeRun>(NS, name).unwrap();
        let pod = owned_pod(
            &format!("{name}-pod"),
            run.controller_owner_ref(&()).unwrap(),
            [(LABEL_CODE_RUN, run.name_any())],
            PodTermination::StopsAfter(stop_after),
        );
        self.kube.seed([pod]).unwrap();
    }

    /// The quality and review runs of `head` (pods that stop at once).
    pub fn agents_on(&self, head: &str) -> Vec<String> {
        ["quality", "review"]
            .iter()
            .map(|role| {
                let name = format!("{role}-{}", &head[..7]);
                self.seed_run(&name, role, head, Duration::ZERO);
                name
            })
            .collect()
    }

    /// A Lease of the task lock for `task`, held by `dead-pod/1`, which
    /// last renewed it two minutes ago (its process died), seeded straight
    /// into FakeKube.
    pub fn seed_dead_lease(&self, task: &str) -> Lease {
        let name = format!("cancel-task-{task}");
        let mut lease = leases::dead_lease(&name);
        lease.metadata.namespace = Some(NS.into());
        self.kube.seed([lease]).unwrap();
        self.kube.peek::<Lease>(NS, &name).unwrap()
    }

    // ----- looking at the world (no request made) ------------------------

    pub fn run_exists(&self, name: &str) -> bool {
        self.kube.peek::<CodeRun>(NS, name).is_some()
    }

    pub fn pod_exists(&self, run: &str) -> bool {
        self.kube.peek::<Pod>(NS, &format!("{run}-pod")).is_some()
    }

    /// A run is cancelled when its pod is gone (its work stopped).
    pub fn stopped(&self, run: &str) -> bool {
        !self.pod_exists(run)
    }

    pub fn config_map(&self, name: &str) -> ConfigMap {
        self.kube.peek::<ConfigMap>(NS, name).unwrap()
    }

    /// [`TASK`]'s state as stored (its `state.json` parsed).
    pub fn peek_state(&self) -> RemediationState {
        self.peek_state_of(TASK)
    }

    /// `task`'s state as stored.
    pub fn peek_state_of(&self, task: &str) -> RemediationState {
        let cm = self.config_map(&format!("task-{task}-state"));
        let text = &cm.data.as_ref().unwrap()[KEY_STATE];
        serde_json::from_str(text).unwrap()
    }

    /// An annotation of ConfigMap `name`.
    pub fn annotation(&self, name: &str, key: &str) -> Option<String> {
        self.config_map(name).annotations().get(key).cloned()
    }

    /// The cancellations [`TASK`]'s state records as done.
    pub fn cancellations(&self) -> usize {
        self.cancellations_of(TASK)
    }

    /// The cancellations `task`'s state records as done.
    pub fn cancellations_of(&self, task: &str) -> usize {
        self.peek_state_of(task)
            .cancellation_history
            .iter()
            .filter(|r| r.outcome == CancellationOutcome::Cancelled)
            .count()
    }

    pub fn labels_now(&self) -> Vec<String> {
        self.github.labels("acme", "widgets", 7)
    }

    /// The requests of `who` that wrote to object `name` (of any kind).
    pub fn writes(&self, who: &str, name: &str) -> Vec<RequestRecord> {
        self.kube
            .requests()
            .entries()
            .into_iter()
            .filter(|r| {
                r.correlation.as_deref() == Some(who)
                    && r.name.as_deref() == Some(name)
                    && WRITES.contains(&r.verb.as_str())
            })
            .collect()
    }

    /// Requests of `who` of `verb` on `resource`.
    pub fn count(&self, who: &str, verb: &str, resource: &str) -> usize {
        self.kube.requests().count(
            &RequestFilter::any()
                .correlation(who)
                .verb(verb)
                .resource(resource),
        )
    }

    /// Writes to run `name` or its pod, by anyone.
    pub fn writes_to_run(&self, name: &str) -> usize {
        let pod = format!("{name}-pod");
        self.kube
            .requests()
            .entries()
            .iter()
            .filter(|r| {
                WRITES.contains(&r.verb.as_str())
                    && r.name.as_deref().is_some_and(|n| n == name || n == pod)
            })
            .count()
    }

    /// The Warning Events about ConfigMap `name`, as `(reason, note)`,
    /// listed as an operator would (`kubectl get events`).
    pub async fn events_about(&self, name: &str) -> Vec<(String, String)> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client(OPERATOR), NS);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.type_.as_deref() == Some("Warning")
            })
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }
}

fn client_for(kube: &FakeKube, who: &str) -> kube::Client {
    kube.client_as(who).unwrap()
}

fn store_over(client: kube::Client, clock: &Clock) -> StateStore {
    StateStore::with_clock(
        ConfigMapBackend::new(client, NS),
        StoreConfig::default(),
        clock.clone(),
    )
}

/// A GitHub client of label-cas for the fake, authenticated with `token`.
fn labels_client(
    github: &FakeGitHub,
    token: &str,
    metrics: Option<label_cas::Metrics>,
) -> GitHubLabels {
    // No request timeout: on paused time its timer would be advanced while
    // the runtime waits for the socket.
    let mut builder = GitHubLabels::builder()
        .token(SecretString::from(token.to_owned()))
        .base_uri(github.url().as_str())
        .request_timeout(None);
    if let Some(metrics) = metrics {
        builder = builder.metrics(metrics);
    }
    builder.build().unwrap()
}

pub fn supersession(head: &str, at: Timestamp) -> Supersession {
    Supersession {
        head_sha: head.into(),
        pushed_at: at,
        delivery_id: format!("d-{}", &head[..7]),
        correlation_id: None,
    }
}

/// `seconds` before now on the wall clock (what GitHub's own timestamps
/// follow).
pub fn ago(seconds: i64) -> Timestamp {
    Timestamp::now() - SignedDuration::from_secs(seconds)
}

/// Past `settle_after` and `run_deadline` (60 s each): what was recorded is
/// recovery's now.
pub async fn later() {
    tokio::time::sleep(Duration::from_secs(61)).await;
}

/// Waits (paused time) until `done` holds, checking every 50 ms, for at
/// most `within`.
pub async fn until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (paused time) until no coordinator has work running or waiting.
pub async fn settled(coordinators: &[&CancellationCoordinator]) {
    until(Duration::from_secs(600), "the coordinators settle", || {
        coordinators.iter().all(|c| c.list_active().is_empty())
    })
    .await;
}
