//! The cancellation benchmark of issue 14: supersede's coordinator and a
//! baseline of the seed's design, side by side, on testkit's FakeKube and
//! FakeGitHub over real HTTP with 2 ms of latency on every call.
//!
//! ```text
//! cargo run --release -p cancel-coordinator --example coordinator_bench
//! cargo run --release -p cancel-coordinator --example coordinator_bench -- burst supersede
//! ```
//!
//! Prints one JSON line per phase and implementation, with the keys `impl`,
//! `tasks`, `events`, `cancelled_runs`, `lost_cancellations`,
//! `wrong_cancellations`, `duplicate_records`,
//! `kube_calls_per_cancellation`, `github_calls_per_cancellation`,
//! `e2e_p50_ms`, `e2e_p99_ms`, `cancellations_per_sec`,
//! `rss_mb_per_1000_active` (`null` where a phase does not measure it), in
//! this order: uncontended, burst, memory with 1 000 and with 5 000
//! active, supersede before seed-baseline in each. Arguments
//! (`uncontended`, `burst`, `memory`, `supersede`, `seed-baseline`) narrow
//! the run; `BENCH_MEMORY_STEPS=100,500` sets the memory steps. stderr says what
//! each phase did and where the calls went.
//!
//! The implementations:
//!
//! - `supersede`: the sensor's part (the pending supersession recorded in
//!   the task's state through `StateStore`, then `submit`), and
//!   `CancellationCoordinator` replicas, each with its own `LeaseLock`
//!   identity and clients, over `KubeLeases`, `ConfigMapBackend`,
//!   `KubeCodeRuns` and `GitHubLabels` (and its `pull_requests()`), with
//!   production defaults and circuit breakers on both APIs.
//! - `seed-baseline`: the seed's design, kept only here. Per event: GET
//!   the task's state; mark the task active in one shared ConfigMap with
//!   server-side apply (force); LIST the task's CodeRuns and DELETE those
//!   whose head differs from the event's (no precondition, no lock); move
//!   the labels (DELETE one, POST one, no read); append a history entry by
//!   an unconditional PUT of the state read first; mark the task done in
//!   the shared ConfigMap. No journal; each call tried at most 3 times.
//!
//! The phases (each implementation on a fresh FakeKube and FakeGitHub):
//!
//! 1. **uncontended**: 100 tasks one after the other, each with 3 stale
//!    runs whose pods stop at once on SIGTERM, one delivery each, one
//!    replica.
//! 2. **burst**: 500 tasks, 1 000 deliveries over 3 replicas, with 5 %
//!    of the calls to both APIs answered 500 and 1 % answered 500 after
//!    they took effect. Even tasks get the newest head twice, to two
//!    replicas (a redelivery); odd ones get the newest head, then the old
//!    one (out of order), to another replica.
//! 3. **memory**: one stale run per task whose pod ignores SIGTERM, so
//!    each cancellation stays active; the RSS of a child process running
//!    the implementation, read from `/proc/self/status`, once every stale
//!    pod of 1 000 (then 5 000) tasks is terminating, less its idle RSS, per
//!    1 000. Then the pods exit and every cancellation can finish.
//!
//! Every task also has runs of its newest head (GitHub's head of its PR),
//! which must be kept. Everything counted is read from outside the
//! implementations: API calls from FakeKube's request log (each client
//! sends its own `Audit-ID`; the sensor's calls are not in
//! `kube_calls_per_cancellation`, stderr gives them) and FakeGitHub's
//! counters, divided by the number of tasks; the end state from FakeKube's
//! store and FakeGitHub's labels (`peek`, no request). A task's
//! cancellation is done when every stale run and its pod are gone, the
//! state's history names each of them, and the PR carries `needs-qa` and
//! not `ready-for-qa`: a checker polls for that, and `e2e` runs from the
//! request's acceptance (ours: `submit`, after the sensor's write; the
//! seed's: its handler starting) to the poll that saw it done.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cancel_coordinator::workloads::{ANNOTATION_SUPERSEDED_BY, LABEL_CODE_RUN};
use cancel_coordinator::{
    AgentSpec, CancellationCoordinator, CancellationRequest, CodeRun, CodeRunConfig, CodeRunSpec,
    CoordinatorConfig, KubeCodeRuns, SagaConfig, SagaStep, StateAwareCancellation, Workers,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt, Resource as _, ResourceExt as _};
use label_cas::{GitHubLabels, LabelBackend, PrRef};
use lease_lock::{KubeLeases, LeaseLock, LockConfig};
use resilience::{BreakerPolicy, CircuitBreaker};
use serde_json::json;
use state_store::naming::{KEY_STATE, state_labels};
use state_store::{
    CancellationOutcome, CancellationRecord, ConfigMapBackend, RemediationState, StateStore,
    Supersession, state_name,
};
use testkit::faults::{InjectedError, Match};
use testkit::github::FakeGitHub;
use testkit::kube::{FakeKube, RequestRecord, TerminalPhase};
use testkit::process::own_memory;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

const NS: &str = "agents";
const OWNER: &str = "acme";
const REPO: &str = "widgets";
const LATENCY: Duration = Duration::from_millis(2);
/// How long a phase waits, once the implementation has nothing left
/// running and nothing converged, before it concludes that the rest never
/// will: what is left then is the fake's garbage collector and kubelet,
/// which act within milliseconds.
const IDLE_STALL: Duration = Duration::from_secs(1);
const READY: &str = "ready-for-qa";
const NEEDS: &str = "needs-qa";
const ROLES: [&str; 3] = ["quality", "testing", "review"];
/// The Audit-ID of the sensor's client; the replicas' are `replica-<n>`.
const SENSOR: &str = "sensor";

/// Uncontended rounds: one task at a time, each with 3 stale runs.
const UNCONTENDED_ROUNDS: usize = 100;
/// Burst: 2 deliveries per task over 3 replicas.
const BURST_TASKS: usize = 500;
const BURST_REPLICAS: usize = 3;
/// Memory: measured with this many cancellations active, in one world.
const MEMORY_STEPS: [usize; 2] = [1_000, 5_000];
/// Most tasks of the memory phase submitted and not yet active (their
/// stale pod not yet terminating); more are submitted as those become
/// active.
const MEMORY_WINDOW: usize = 1_000;
/// GitHub requests per hour in the memory phase's world: its 5 000 tasks
/// make 3 each (GitHub Enterprise Cloud installations get 15 000); the
/// phase measures memory, not the rate limit (scenario 04 does that).
const MEMORY_GITHUB_BUDGET: u32 = 20_000;
/// Replicas sharing the memory phase's operations, each with as many
/// workers as it takes to hold its share of the last step at once.
const MEMORY_REPLICAS: usize = 5;
/// A stale pod of the memory phase ignores SIGTERM for this long, so its
/// cancellation stays active until the benchmark lets it exit.
const MEMORY_POD_GRACE_SECONDS: i64 = 600;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Supersede,
    SeedBaseline,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Self::Supersede => "supersede",
            Self::SeedBaseline => "seed-baseline",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Supersede, Self::SeedBaseline]
            .into_iter()
            .find(|i| i.name() == s)
    }
}

// ---------------------------------------------------------------------------
// The tasks: each has a PR, 3 running agents on its old head (stale) and 3 on
// its new head (the PR's head on GitHub, to be kept).

#[derive(Clone, Debug)]
struct TaskPlan {
    id: String,
    pr: u64,
    old: String,
    new: String,
    /// The agents running on each head, one run (and pod) each.
    roles: &'static [&'static str],
    /// `testkit.supersede.dev/termination` of the stale runs' pods, and
    /// their terminationGracePeriodSeconds.
    stale_pods: (&'static str, i64),
}

impl TaskPlan {
    fn new(
        prefix: &str,
        i: usize,
        roles: &'static [&'static str],
        stale_pods: (&'static str, i64),
    ) -> Self {
        Self {
            id: format!("{prefix}-{i}"),
            pr: i as u64 + 1,
            old: format!("a{i:039x}"),
            new: format!("b{i:039x}"),
            roles,
            stale_pods,
        }
    }

    fn pr_ref(&self) -> PrRef {
        PrRef::new(OWNER, REPO, self.pr).unwrap()
    }

    fn run_name(&self, role: &str, stale: bool) -> String {
        format!("{}-{role}-{}", self.id, if stale { "old" } else { "new" })
    }

    fn stale_runs(&self) -> Vec<String> {
        self.roles.iter().map(|r| self.run_name(r, true)).collect()
    }

    fn kept_runs(&self) -> Vec<String> {
        self.roles.iter().map(|r| self.run_name(r, false)).collect()
    }
}

fn pod_name(run: &str) -> String {
    format!("{run}-pod")
}

/// One webhook delivery, as the sensor (or the seed's receiver) gets it.
#[derive(Clone, Debug)]
struct Delivery {
    head: String,
    pushed_at: Timestamp,
    delivery_id: String,
    correlation_id: String,
    replica: usize,
}

impl Delivery {
    fn push(head: &str, pushed_at: Timestamp, replica: usize) -> Self {
        Self {
            head: head.to_owned(),
            pushed_at,
            delivery_id: uuid::Uuid::new_v4().to_string(),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            replica,
        }
    }
}

/// Push times: the old head a minute before the new one, both before the
/// PR was last changed on GitHub (seeded afterwards).
fn push_times() -> (Timestamp, Timestamp) {
    let now = Timestamp::now();
    (
        now - jiff::SignedDuration::from_secs(120),
        now - jiff::SignedDuration::from_secs(60),
    )
}

// ---------------------------------------------------------------------------
// The world: FakeKube with the CodeRun CRD, FakeGitHub with the PRs.

struct World {
    kube: FakeKube,
    github: FakeGitHub,
}

/// Where the implementations reach the fakes (also handed to a child process).
#[derive(Clone, Debug)]
struct Endpoints {
    kube: String,
    github: String,
    token: String,
}

impl World {
    async fn start(request_log: usize) -> Self {
        Self::start_with(request_log, 5_000).await
    }

    /// A world whose GitHub token may make `github_budget` requests an
    /// hour (GitHub's default for a token is 5 000).
    async fn start_with(request_log: usize, github_budget: u32) -> Self {
        let kube = FakeKube::builder()
            .seed(42)
            .request_log_capacity(request_log)
            .start()
            .await
            .unwrap();
        let github = FakeGitHub::builder()
            .seed(42)
            .rate_limit(github_budget)
            .start()
            .await
            .unwrap();
        // The CRD goes in as an operator installs it: through the API.
        let crds: Api<CustomResourceDefinition> = Api::all(kube.client());
        crds.create(&PostParams::default(), &CodeRun::crd())
            .await
            .unwrap();
        for fake in [kube.faults(), github.faults()] {
            fake.latency(Match::any(), LATENCY, Duration::ZERO);
        }
        Self { kube, github }
    }

    fn endpoints(&self) -> Endpoints {
        Endpoints {
            kube: self.kube.url().to_string(),
            github: self.github.url().to_string(),
            token: self.github.token().to_owned(),
        }
    }

    /// 5 % of every call answered 500 before it is served, 1 % answered
    /// 500 after it was served (the write landed, its answer is lost), on
    /// both APIs.
    fn inject_faults(&self) {
        for fake in [self.kube.faults(), self.github.faults()] {
            fake.error_rate(Match::any(), 0.05, InjectedError::Status(500));
            fake.error_rate_after_commit(Match::any(), 0.01, InjectedError::Status(500));
        }
    }

    fn clear_faults(&self) {
        for fake in [self.kube.faults(), self.github.faults()] {
            fake.clear();
            fake.latency(Match::any(), LATENCY, Duration::ZERO);
        }
    }

    /// Puts the tasks in place without a request each: state documents,
    /// runs, their pods (running), the PRs with `ready-for-qa`.
    async fn seed(&self, plans: &[TaskPlan]) {
        let now = Timestamp::now();
        let states = plans.iter().map(|p| {
            let mut state = RemediationState::new(&p.id, now);
            state.status = state_store::TaskStatus::InProgress;
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(state_name(&p.id).unwrap());
            cm.metadata.namespace = Some(NS.into());
            cm.metadata.labels = Some(state_labels(&p.id));
            cm.data = Some(BTreeMap::from([(
                KEY_STATE.to_owned(),
                serde_json::to_string(&state).unwrap(),
            )]));
            cm
        });
        self.kube.seed(states).unwrap();

        let runs: Vec<CodeRun> = plans
            .iter()
            .flat_map(|p| {
                p.roles.iter().flat_map(move |role| {
                    [(true, &p.old), (false, &p.new)].map(|(stale, head)| {
                        let spec = CodeRunSpec {
                            task_id: p.id.clone(),
                            role: (*role).into(),
                            repository: format!("{OWNER}/{REPO}"),
                            pull_request: p.pr,
                            branch: format!("feature-{}", p.pr),
                            head_sha: head.clone(),
                            agent: AgentSpec {
                                image: "agent:1".into(),
                                ..AgentSpec::default()
                            },
                        };
                        let mut run = CodeRun::labelled(&p.run_name(role, stale), spec);
                        run.metadata.namespace = Some(NS.into());
                        run
                    })
                })
            })
            .collect();
        self.kube.seed(runs).unwrap();

        // Pods as a CodeRun controller makes them: the run's label, a
        // controller owner reference blocking its deletion.
        let mut pods = Vec::new();
        for p in plans {
            for role in p.roles {
                for stale in [true, false] {
                    let name = p.run_name(role, stale);
                    // Only the metadata is read back (the uid): seeding
                    // 5 000 tasks decoded 10 000 whole runs otherwise.
                    let meta = self.kube.peek_metadata::<CodeRun>(NS, &name).unwrap();
                    let (termination, grace) = if stale {
                        p.stale_pods
                    } else {
                        ("immediate", 30)
                    };
                    let owner = OwnerReference {
                        api_version: CodeRun::api_version(&()).into_owned(),
                        kind: CodeRun::kind(&()).into_owned(),
                        name: name.clone(),
                        uid: meta.uid.unwrap(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    };
                    let pod: Pod = serde_json::from_value(json!({
                        "metadata": {
                            "name": pod_name(&name),
                            "namespace": NS,
                            "labels": {
                                LABEL_CODE_RUN: name,
                                "testkit.supersede.dev/starts-after": "0s",
                                "testkit.supersede.dev/termination": termination,
                            },
                            "ownerReferences": [owner],
                        },
                        "spec": {
                            "containers": [{"name": "agent", "image": "agent:1"}],
                            "restartPolicy": "Never",
                            "terminationGracePeriodSeconds": grace,
                        },
                    }))
                    .unwrap();
                    pods.push(pod);
                }
            }
        }
        self.kube.seed(pods).unwrap();

        for p in plans {
            self.github
                .add_pull(
                    OWNER,
                    REPO,
                    p.pr,
                    &p.new,
                    &format!("feature-{}", p.pr),
                    [READY],
                )
                .unwrap();
        }

        // The simulated kubelet starts the pods in the background.
        let last = plans.last().unwrap();
        let last = pod_name(&last.run_name(last.roles[0], false));
        let deadline = Instant::now() + Duration::from_secs(60);
        while self
            .kube
            .peek::<Pod>(NS, &last)
            .and_then(|p| p.status?.phase)
            .as_deref()
            != Some("Running")
        {
            assert!(Instant::now() < deadline, "pods did not start");
            sleep(Duration::from_millis(10)).await;
        }
    }

    fn state(&self, plan: &TaskPlan) -> Option<RemediationState> {
        let cm = self
            .kube
            .peek::<ConfigMap>(NS, &state_name(&plan.id).unwrap())?;
        serde_json::from_str(cm.data?.get(KEY_STATE)?).ok()
    }

    fn labels_moved(&self, plan: &TaskPlan) -> bool {
        let labels = self.github.labels(OWNER, REPO, plan.pr);
        labels.iter().any(|l| l == NEEDS) && !labels.iter().any(|l| l == READY)
    }

    fn gone(&self, run: &str) -> bool {
        self.kube.peek::<Pod>(NS, &pod_name(run)).is_none()
            && self.kube.peek::<CodeRun>(NS, run).is_none()
    }

    /// The task's cancellation is over: labels moved, every stale run and
    /// its pod gone, each named by the state's history. `runs_gone`
    /// remembers the runs seen gone (names are never reused here), so a
    /// task waiting only for its record costs no more peeks.
    fn converged(&self, plan: &TaskPlan, runs_gone: &mut bool) -> bool {
        if !self.labels_moved(plan) {
            return false;
        }
        let stale = plan.stale_runs();
        if !*runs_gone {
            *runs_gone = stale.iter().all(|r| self.gone(r));
        }
        if !*runs_gone {
            return false;
        }
        let Some(state) = self.state(plan) else {
            return false;
        };
        let recorded: BTreeSet<&String> = state
            .cancellation_history
            .iter()
            .flat_map(|r| &r.targets)
            .collect();
        stale.iter().all(|r| recorded.contains(r))
    }

    /// Waits until every task in `plans` converged, or `deadline` passed,
    /// or nothing converged for `stall` during which `idle` said the
    /// implementation had nothing left running (what has not converged
    /// then never will, without a recovery pass); polls every `every`.
    /// When each task converged (`None`: never).
    async fn converge(
        &self,
        plans: &[TaskPlan],
        every: Duration,
        deadline: Instant,
        stall: Duration,
        idle: impl Fn() -> bool,
    ) -> Vec<Option<Instant>> {
        let mut done: Vec<Option<Instant>> = vec![None; plans.len()];
        let mut runs_gone = vec![false; plans.len()];
        // The last moment something converged or the implementation was
        // still working.
        let mut progress = Instant::now();
        loop {
            let now = Instant::now();
            for ((plan, slot), gone) in plans.iter().zip(done.iter_mut()).zip(&mut runs_gone) {
                if slot.is_none() && self.converged(plan, gone) {
                    *slot = Some(now);
                    progress = now;
                }
            }
            if !idle() {
                progress = now;
            }
            let stalled = progress.elapsed() > stall;
            if done.iter().all(Option::is_some) || Instant::now() > deadline || stalled {
                return done;
            }
            sleep(every).await;
        }
    }

    /// What the store and GitHub say of `plans` now.
    fn verdict(&self, plans: &[TaskPlan]) -> Verdict {
        let mut v = Verdict::default();
        for plan in plans {
            let recorded: Vec<String> = self
                .state(plan)
                .map(|s| {
                    s.cancellation_history
                        .into_iter()
                        .flat_map(|r| r.targets)
                        .collect()
                })
                .unwrap_or_default();
            let mut times: BTreeMap<&str, usize> = BTreeMap::new();
            for name in &recorded {
                *times.entry(name).or_default() += 1;
            }
            v.duplicate_records += times.values().map(|n| n - 1).sum::<usize>();
            for (name, stale) in plan
                .stale_runs()
                .into_iter()
                .map(|n| (n, true))
                .chain(plan.kept_runs().into_iter().map(|n| (n, false)))
            {
                let run = self.kube.peek::<CodeRun>(NS, &name);
                let pod = self.kube.peek::<Pod>(NS, &pod_name(&name));
                let run_live = run
                    .as_ref()
                    .is_some_and(|r| r.meta().deletion_timestamp.is_none());
                let pod_live = pod
                    .as_ref()
                    .is_some_and(|p| p.metadata.deletion_timestamp.is_none());
                let cancelled = !run_live || !pod_live;
                if cancelled {
                    v.cancelled_runs += 1;
                }
                if stale {
                    if run_live || pod_live {
                        v.lost += 1;
                    } else if run.is_some() || pod.is_some() {
                        v.still_stopping += 1;
                    } else if !times.contains_key(name.as_str()) {
                        v.unrecorded += 1;
                    }
                } else if cancelled {
                    v.wrong += 1;
                } else if run
                    .is_some_and(|r| r.annotations().contains_key(ANNOTATION_SUPERSEDED_BY))
                {
                    v.touched += 1;
                }
            }
            if !self.labels_moved(plan) {
                v.labels_not_moved += 1;
            }
        }
        v
    }
}

#[derive(Debug, Default)]
struct Verdict {
    /// Runs gone (or being deleted), of any head.
    cancelled_runs: usize,
    /// Stale runs still running: nobody stops them.
    lost: usize,
    /// Runs of the newest head deleted.
    wrong: usize,
    /// History entries naming a run already named by another.
    duplicate_records: usize,
    /// Stale runs being deleted, not gone yet.
    still_stopping: usize,
    /// Stale runs gone that no history entry names.
    unrecorded: usize,
    /// Runs of the newest head carrying an intent annotation.
    touched: usize,
    labels_not_moved: usize,
}

// ---------------------------------------------------------------------------
// The implementations.

/// A kube client for the fake, sending `audit_id` as every request's
/// `Audit-ID` (the request log groups by it). kube's default retry of
/// 429/503/504 stays on, as in production.
fn kube_client(endpoints: &Endpoints, audit_id: &str) -> kube::Client {
    resilience::tls::ensure_crypto_provider();
    let mut config = kube::Config::new(endpoints.kube.parse().unwrap());
    config
        .headers
        .push(("audit-id".parse().unwrap(), audit_id.parse().unwrap()));
    kube::Client::try_from(config).unwrap()
}

fn github_labels(endpoints: &Endpoints) -> GitHubLabels {
    GitHubLabels::builder()
        .token(endpoints.token.clone().into())
        .base_uri(endpoints.github.clone())
        .build()
        .unwrap()
}

/// Failures the implementations met along the way, counted by kind (for
/// stderr: one line, not one per failure).
#[derive(Default)]
struct Problems(Mutex<BTreeMap<String, usize>>);

impl Problems {
    fn count(&self, kind: impl Into<String>) {
        *self.0.lock().unwrap().entry(kind.into()).or_default() += 1;
    }

    fn describe(&self) -> String {
        format!("{:?}", self.0.lock().unwrap())
    }
}

/// First words of an error: its kind without the details of one case.
fn kind(e: &impl std::fmt::Display) -> String {
    e.to_string().chars().take(60).collect()
}

struct Fleet {
    kind: FleetKind,
    problems: Arc<Problems>,
}

enum FleetKind {
    Supersede {
        sensor: StateStore,
        coordinators: Vec<CancellationCoordinator>,
        workers: Vec<Workers>,
    },
    SeedBaseline {
        replicas: Vec<Arc<Seed>>,
        handlers: Mutex<Vec<JoinHandle<()>>>,
    },
}

impl Fleet {
    fn start(
        which: Impl,
        endpoints: &Endpoints,
        replicas: usize,
        workers: usize,
        saga: &SagaConfig,
    ) -> Self {
        let problems = Arc::new(Problems::default());
        let kind = match which {
            Impl::Supersede => {
                let sensor =
                    StateStore::new(ConfigMapBackend::new(kube_client(endpoints, SENSOR), NS));
                let mut coordinators = Vec::new();
                let mut pools = Vec::new();
                for r in 0..replicas {
                    let identity = format!("replica-{r}");
                    let client = kube_client(endpoints, &identity);
                    let lock = LeaseLock::new(
                        KubeLeases::new(client.clone()),
                        LockConfig {
                            prefix: saga.lock_prefix.clone(),
                            ..LockConfig::new(&identity, NS)
                        },
                    )
                    .unwrap();
                    let store = StateStore::new(ConfigMapBackend::new(client.clone(), NS));
                    let runs =
                        KubeCodeRuns::new(client.clone(), NS, CodeRunConfig::default()).unwrap();
                    let labels = github_labels(endpoints);
                    let pulls = labels.pull_requests();
                    let saga = StateAwareCancellation::builder(
                        lock,
                        store,
                        Arc::new(runs),
                        Arc::new(pulls),
                        Arc::new(labels),
                    )
                    .config(saga.clone())
                    .kube_breaker(CircuitBreaker::new("kubernetes", BreakerPolicy::default()))
                    .github_breaker(CircuitBreaker::new("github", BreakerPolicy::default()))
                    .build()
                    .unwrap();
                    let coordinator = CancellationCoordinator::new(
                        saga,
                        CoordinatorConfig {
                            workers,
                            ..CoordinatorConfig::default()
                        },
                    )
                    .unwrap();
                    pools.push(coordinator.start());
                    coordinators.push(coordinator);
                }
                FleetKind::Supersede {
                    sensor,
                    coordinators,
                    workers: pools,
                }
            }
            Impl::SeedBaseline => FleetKind::SeedBaseline {
                replicas: (0..replicas)
                    .map(|r| {
                        Arc::new(Seed::new(
                            endpoints,
                            &format!("replica-{r}"),
                            problems.clone(),
                        ))
                    })
                    .collect(),
                handlers: Mutex::new(Vec::new()),
            },
        };
        Self { kind, problems }
    }

    /// Hands `delivery` to the implementation; returns when the request was
    /// accepted (ours: the sensor's write done and the coordinator's
    /// `submit` returned; the seed's: its handler spawned).
    async fn deliver(&self, plan: &TaskPlan, delivery: &Delivery) -> Instant {
        match &self.kind {
            FleetKind::Supersede {
                sensor,
                coordinators,
                ..
            } => {
                let push = Supersession {
                    head_sha: delivery.head.clone(),
                    pushed_at: delivery.pushed_at,
                    delivery_id: delivery.delivery_id.clone(),
                    correlation_id: Some(delivery.correlation_id.clone()),
                };
                if let Err(e) = sensor.record_supersession(&plan.id, &push).await {
                    // A real sensor would answer 500; the request is a hint
                    // either way, and the state decides.
                    self.problems.count(format!("sensor: {}", kind(&e)));
                }
                let accepted = Instant::now();
                let mut request = CancellationRequest::push(
                    plan.id.clone(),
                    plan.pr_ref(),
                    delivery.head.clone(),
                    delivery.pushed_at,
                );
                request.correlation_id.clone_from(&delivery.correlation_id);
                request.delivery_id = Some(delivery.delivery_id.clone());
                let coordinator = &coordinators[delivery.replica % coordinators.len()];
                if let Err(e) = coordinator.submit(request) {
                    self.problems.count(format!("refused: {}", kind(&e)));
                }
                accepted
            }
            FleetKind::SeedBaseline { replicas, handlers } => {
                let accepted = Instant::now();
                let seed = replicas[delivery.replica % replicas.len()].clone();
                let (plan, delivery) = (plan.clone(), delivery.clone());
                let handle = tokio::spawn(async move {
                    if let Err(e) = seed.handle(&plan, &delivery).await {
                        seed.problems.count(format!("gave up: {}", kind(&e)));
                    }
                });
                handlers.lock().unwrap().push(handle);
                accepted
            }
        }
    }

    /// Whether nothing runs or waits now.
    fn is_idle(&self) -> bool {
        match &self.kind {
            FleetKind::Supersede { coordinators, .. } => {
                coordinators.iter().all(|c| c.list_active().is_empty())
            }
            FleetKind::SeedBaseline { handlers, .. } => {
                handlers.lock().unwrap().iter().all(JoinHandle::is_finished)
            }
        }
    }

    /// Waits until nothing runs or waits any more (or `deadline`).
    async fn idle(&self, deadline: Instant) -> bool {
        match &self.kind {
            FleetKind::Supersede { .. } => loop {
                if self.is_idle() {
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                sleep(Duration::from_millis(20)).await;
            },
            FleetKind::SeedBaseline { handlers, .. } => {
                let all: Vec<_> = std::mem::take(&mut *handlers.lock().unwrap());
                for h in all {
                    let _ = tokio::time::timeout_at(deadline, h).await;
                }
                true
            }
        }
    }

    /// Where ours spent its time: the operations the coordinators ran for
    /// `plans`, from their status history (stderr only; nothing counted in
    /// the JSON comes from here).
    fn summary(&self, plans: &[TaskPlan]) -> Option<String> {
        let FleetKind::Supersede { coordinators, .. } = &self.kind else {
            return None;
        };
        let (mut took, mut lock, mut outcomes, mut errors, mut resumed) =
            (Vec::new(), Vec::new(), BTreeMap::new(), BTreeMap::new(), 0);
        for plan in plans {
            for c in coordinators {
                for finished in c.status(&plan.id).map(|s| s.recent).unwrap_or_default() {
                    match finished.result {
                        Ok(report) => {
                            took.push(ms(report.took));
                            if let Some(l) = report.steps.iter().find(|s| s.step == SagaStep::Lock)
                            {
                                lock.push(ms(l.took));
                            }
                            resumed += usize::from(report.resumed);
                            *outcomes.entry(format!("{:?}", report.outcome)).or_insert(0) += 1;
                        }
                        Err(e) => {
                            let kind = e.split(':').next().unwrap_or_default().to_owned();
                            *errors.entry(kind).or_insert(0) += 1;
                        }
                    }
                }
            }
        }
        took.sort_by(f64::total_cmp);
        lock.sort_by(f64::total_cmp);
        let p = |v: &[f64], q| {
            if v.is_empty() {
                f64::NAN
            } else {
                percentile(v, q)
            }
        };
        Some(format!(
            "operations {outcomes:?}, resumed {resumed}, failed {errors:?}; an operation took p50 {:.1} / p99 {:.1} ms, of which the lock p50 {:.1} / p99 {:.1} ms",
            p(&took, 0.5),
            p(&took, 0.99),
            p(&lock, 0.5),
            p(&lock, 0.99),
        ))
    }

    async fn shutdown(self) {
        if let FleetKind::Supersede { workers, .. } = self.kind {
            for w in workers {
                w.shutdown(Duration::from_secs(5)).await;
            }
        }
    }
}

/// One replica of the seed's design.
struct Seed {
    states: Api<ConfigMap>,
    runs: Api<CodeRun>,
    labels: GitHubLabels,
    identity: String,
    problems: Arc<Problems>,
}

/// The seed tracks active cancellations in one ConfigMap for everyone.
const SEED_ACTIVE: &str = "active-cancellations";

impl Seed {
    fn new(endpoints: &Endpoints, identity: &str, problems: Arc<Problems>) -> Self {
        let client = kube_client(endpoints, identity);
        Self {
            states: Api::namespaced(client.clone(), NS),
            runs: Api::namespaced(client, NS),
            labels: github_labels(endpoints),
            identity: identity.to_owned(),
            problems,
        }
    }

    async fn handle(&self, plan: &TaskPlan, delivery: &Delivery) -> Result<(), String> {
        let name = state_name(&plan.id).unwrap();
        let read = kube3(|| self.states.get_opt(&name)).await?;
        self.track(&plan.id, &delivery.head).await?;
        let of_task = ListParams::default().labels(&format!(
            "{}={}",
            cancel_coordinator::workloads::LABEL_TASK_ID,
            plan.id
        ));
        let runs = kube3(|| self.runs.list(&of_task)).await?;
        let mut deleted = Vec::new();
        let unconditional = DeleteParams::default();
        for run in runs.items {
            if run.spec.head_sha != delivery.head {
                let run_name = run.name_any();
                match kube3(|| self.runs.delete(&run_name, &unconditional)).await {
                    Ok(_) => deleted.push(run_name),
                    Err(e) if e.contains("404") => deleted.push(run_name),
                    Err(e) => return Err(e),
                }
            }
        }
        let pr = plan.pr_ref();
        if let Err(e) = github3(|| self.labels.remove(&pr, READY)).await {
            self.problems
                .count(format!("removing {READY}: {}", kind(&e)));
        }
        let needs = [NEEDS.to_owned()];
        if let Err(e) = github3(|| self.labels.add(&pr, &needs)).await {
            self.problems.count(format!("adding {NEEDS}: {}", kind(&e)));
        }
        // The history entry, written over whatever was read at the start.
        let mut cm = read.unwrap_or_default();
        let mut state = cm
            .data
            .as_ref()
            .and_then(|d| d.get(KEY_STATE))
            .and_then(|s| serde_json::from_str::<RemediationState>(s).ok())
            .unwrap_or_else(|| RemediationState::new(&plan.id, Timestamp::now()));
        state.record_cancellation(CancellationRecord {
            operation_id: uuid::Uuid::new_v4().to_string(),
            at: Timestamp::now(),
            new_head_sha: delivery.head.clone(),
            targets: deleted,
            // The seed's design records neither the heads it superseded
            // nor when its handler started.
            superseded_heads: Vec::new(),
            started_at: None,
            finished_at: None,
            outcome: CancellationOutcome::Cancelled,
            correlation_id: Some(delivery.correlation_id.clone()),
            detail: None,
        });
        cm.metadata.name = Some(name.clone());
        cm.metadata.resource_version = None;
        cm.metadata.managed_fields = None;
        cm.metadata.labels = Some(state_labels(&plan.id));
        cm.data = Some(BTreeMap::from([(
            KEY_STATE.to_owned(),
            serde_json::to_string(&state).unwrap(),
        )]));
        let params = PostParams::default();
        kube3(|| self.states.replace(&name, &params, &cm)).await?;
        self.track(&plan.id, "done").await
    }

    /// Server-side apply with force into the shared ConfigMap.
    async fn track(&self, task: &str, value: &str) -> Result<(), String> {
        let patch = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": SEED_ACTIVE},
            "data": {task: value},
        });
        let params = PatchParams::apply("seed-coordinator").force();
        let patch = Patch::Apply(&patch);
        kube3(|| self.states.patch(SEED_ACTIVE, &params, &patch))
            .await
            .map(|_| ())
            .map_err(|e| format!("{} tracking {task}: {e}", self.identity))
    }
}

/// A seed call, tried at most 3 times on 5xx, 429 and transport errors.
async fn kube3<T, F, Fut>(mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=3 {
        match call().await {
            Ok(v) => return Ok(v),
            Err(kube::Error::Api(s)) if s.code < 500 && s.code != 429 => {
                return Err(format!("{} {}", s.code, s.message));
            }
            Err(e) if attempt == 3 => return Err(e.to_string()),
            Err(_) => {
                sleep(delay).await;
                delay *= 2;
            }
        }
    }
    unreachable!("the last attempt returns")
}

async fn github3<T, F, Fut>(mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = label_cas::Result<T>>,
{
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=3 {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_transient() || attempt == 3 => return Err(e.to_string()),
            Err(_) => {
                sleep(delay).await;
                delay *= 2;
            }
        }
    }
    unreachable!("the last attempt returns")
}

// ---------------------------------------------------------------------------
// Measuring.

/// One output line.
#[derive(Debug, Default)]
struct Line {
    tasks: usize,
    events: usize,
    verdict: Verdict,
    kube_calls: Option<f64>,
    github_calls: Option<f64>,
    e2e_ms: Vec<f64>,
    per_sec: Option<f64>,
    rss_mb_per_1000: Option<f64>,
}

impl Line {
    fn json(&mut self, which: Impl) -> String {
        self.e2e_ms.sort_by(f64::total_cmp);
        let opt = |v: Option<f64>| v.map_or("null".to_owned(), |v| format!("{v:.2}"));
        let pct = |q| {
            if self.e2e_ms.is_empty() {
                "null".to_owned()
            } else {
                format!("{:.2}", percentile(&self.e2e_ms, q))
            }
        };
        let v = &self.verdict;
        format!(
            "{{\"impl\":\"{}\",\"tasks\":{},\"events\":{},\"cancelled_runs\":{},\"lost_cancellations\":{},\"wrong_cancellations\":{},\"duplicate_records\":{},\"kube_calls_per_cancellation\":{},\"github_calls_per_cancellation\":{},\"e2e_p50_ms\":{},\"e2e_p99_ms\":{},\"cancellations_per_sec\":{},\"rss_mb_per_1000_active\":{}}}",
            which.name(),
            self.tasks,
            self.events,
            v.cancelled_runs,
            v.lost,
            v.wrong,
            v.duplicate_records,
            opt(self.kube_calls),
            opt(self.github_calls),
            pct(0.50),
            pct(0.99),
            opt(self.per_sec),
            opt(self.rss_mb_per_1000),
        )
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn is_replica(r: &RequestRecord) -> bool {
    r.correlation
        .as_deref()
        .is_some_and(|c| c.starts_with("replica-"))
}

/// The calls the replicas (not the sensor) made after `since`, by
/// verb/resource and outcome, for stderr.
fn breakdown(records: &[RequestRecord]) -> String {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for r in records.iter().filter(|r| is_replica(r)) {
        *by.entry(format!("{} {} {}", r.verb, r.resource, r.outcome))
            .or_default() += 1;
    }
    by.iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------
// Phases.

/// Phase 1: one task at a time, 3 stale runs whose pods stop at once on
/// SIGTERM, one delivery each.
async fn uncontended(which: Impl) -> Line {
    let world = World::start(100_000).await;
    let plans: Vec<TaskPlan> = (0..UNCONTENDED_ROUNDS)
        .map(|i| TaskPlan::new("u", i, &ROLES, ("immediate", 30)))
        .collect();
    world.seed(&plans).await;
    let endpoints = world.endpoints();
    let fleet = Fleet::start(which, &endpoints, 1, 10, &SagaConfig::default());

    // A round trip on this machine: a GET through a client like theirs.
    let probe: Api<ConfigMap> = Api::namespaced(kube_client(&endpoints, "probe"), NS);
    let mut trips = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        probe.get(&state_name(&plans[0].id).unwrap()).await.unwrap();
        trips.push(ms(t.elapsed()));
    }
    trips.sort_by(f64::total_cmp);
    let round_trip = percentile(&trips, 0.5);

    let (_, new_at) = push_times();
    let mut line = Line {
        tasks: plans.len(),
        events: plans.len(),
        ..Line::default()
    };
    let (mut kube_calls, mut github_calls) = (0usize, 0u64);
    let mut last_calls = String::new();
    let started = Instant::now();
    for plan in &plans {
        let seq = world.kube.requests().last_seq();
        let gh = world.github.calls().total();
        let accepted = fleet
            .deliver(plan, &Delivery::push(&plan.new, new_at, 0))
            .await;
        let done = world
            .converge(
                std::slice::from_ref(plan),
                Duration::from_millis(1),
                Instant::now() + Duration::from_secs(60),
                IDLE_STALL,
                || fleet.is_idle(),
            )
            .await;
        if let Some(at) = done[0] {
            line.e2e_ms.push(ms(at - accepted));
        }
        assert!(fleet.idle(Instant::now() + Duration::from_secs(60)).await);
        // The lease's release comes after the last write the checker sees.
        sleep(Duration::from_millis(20)).await;
        let records = world.kube.requests().since(seq);
        kube_calls += records.iter().filter(|r| is_replica(r)).count();
        github_calls += world.github.calls().total() - gh;
        last_calls = breakdown(&records);
    }
    let elapsed = started.elapsed();
    line.verdict = world.verdict(&plans);
    line.kube_calls = Some(kube_calls as f64 / plans.len() as f64);
    line.github_calls = Some(github_calls as f64 / plans.len() as f64);
    // One at a time: the rate is what back-to-back cancellations reach.
    let mean = line.e2e_ms.iter().sum::<f64>() / line.e2e_ms.len().max(1) as f64;
    line.per_sec = (mean > 0.0).then(|| 1000.0 / mean);
    let mut sorted = line.e2e_ms.clone();
    sorted.sort_by(f64::total_cmp);
    eprintln!(
        "{} uncontended: {} rounds in {:.2?}; a round trip (GET, p50 of 20) {:.2} ms, so the e2e target is 15 x {:.2} + 0 (pods stop at once) + 10 = {:.1} ms; e2e p50 {:.2} / max {:.2} ms",
        which.name(),
        plans.len(),
        elapsed,
        round_trip,
        round_trip,
        15.0 * round_trip + 10.0,
        percentile(&sorted, 0.5),
        sorted.last().copied().unwrap_or(f64::NAN),
    );
    eprintln!("  calls of the last round: {last_calls}");
    eprintln!(
        "  {:?}; failures met: {}",
        line.verdict,
        fleet.problems.describe()
    );
    fleet.shutdown().await;
    line
}

/// Phase 2: 1 000 deliveries over 500 tasks and 3 replicas, with faults:
/// half the tasks get the new head twice (to two replicas), half get the
/// new head and then the old one (out of order, to another replica).
async fn burst(which: Impl) -> Line {
    let world = World::start(200_000).await;
    let plans: Vec<TaskPlan> = (0..BURST_TASKS)
        .map(|i| TaskPlan::new("b", i, &ROLES, ("immediate", 30)))
        .collect();
    world.seed(&plans).await;
    let fleet = Arc::new(Fleet::start(
        which,
        &world.endpoints(),
        BURST_REPLICAS,
        CoordinatorConfig::default().workers,
        &SagaConfig::default(),
    ));
    world.inject_faults();
    let seq = world.kube.requests().last_seq();
    let gh = world.github.calls().total();

    let (old_at, new_at) = push_times();
    let accepted: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; plans.len()]));
    let started = Instant::now();
    let mut senders = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let first = Delivery::push(&plan.new, new_at, i);
        let second = if i % 2 == 0 {
            Delivery {
                replica: i + 1,
                ..first.clone()
            }
        } else {
            Delivery::push(&plan.old, old_at, i + 1)
        };
        let (fleet, plan, accepted) = (fleet.clone(), plan.clone(), accepted.clone());
        senders.push(tokio::spawn(async move {
            let at = fleet.deliver(&plan, &first).await;
            accepted.lock().unwrap()[i] = Some(at);
            fleet.deliver(&plan, &second).await;
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let delivered = started.elapsed();
    let done = world
        .converge(
            &plans,
            Duration::from_millis(20),
            Instant::now() + Duration::from_secs(120),
            IDLE_STALL,
            || fleet.is_idle(),
        )
        .await;
    let converged_at = done.iter().flatten().max().copied();
    let idle = fleet.idle(Instant::now() + Duration::from_secs(60)).await;
    sleep(Duration::from_millis(100)).await;
    world.clear_faults();

    let records = world.kube.requests().since(seq);
    let replica_calls = records.iter().filter(|r| is_replica(r)).count();
    let sensor_calls = records
        .iter()
        .filter(|r| r.correlation.as_deref() == Some(SENSOR))
        .count();
    let accepted = accepted.lock().unwrap().clone();
    let mut line = Line {
        tasks: plans.len(),
        events: 2 * plans.len(),
        verdict: world.verdict(&plans),
        kube_calls: Some(replica_calls as f64 / plans.len() as f64),
        github_calls: Some((world.github.calls().total() - gh) as f64 / plans.len() as f64),
        ..Line::default()
    };
    for (at, done) in accepted.iter().zip(&done) {
        if let (Some(at), Some(done)) = (at, done) {
            line.e2e_ms.push(ms(*done - *at));
        }
    }
    let converged = done.iter().flatten().count();
    if let Some(end) = converged_at {
        line.per_sec = Some(converged as f64 / (end - started).as_secs_f64());
    }
    eprintln!(
        "{} burst: {} deliveries handed over in {delivered:.2?}; {converged}/{} tasks converged{}; idle afterwards: {idle}; sensor calls {sensor_calls}, replica calls {replica_calls}, evicted log records {}",
        which.name(),
        line.events,
        plans.len(),
        converged_at.map_or(String::new(), |end| format!(
            " within {:.2?}",
            end - started
        )),
        world.kube.requests().evicted(),
    );
    eprintln!("  calls: {}", breakdown(&records));
    eprintln!("  github: {:?}", world.github.calls().snapshot());
    if let Some(summary) = fleet.summary(&plans) {
        eprintln!("  {summary}");
    }
    eprintln!(
        "  {:?}; failures met: {}",
        line.verdict,
        fleet.problems.describe()
    );
    match Arc::try_unwrap(fleet) {
        Ok(fleet) => fleet.shutdown().await,
        Err(_) => eprintln!("  (fleet still shared; not shut down)"),
    }
    line
}

/// The memory steps, or `BENCH_MEMORY_STEPS` (comma-separated, ascending)
/// to try other sizes.
fn memory_steps() -> Vec<usize> {
    std::env::var("BENCH_MEMORY_STEPS")
        .ok()
        .map(|s| s.split(',').map(|n| n.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| MEMORY_STEPS.to_vec())
}

/// A task of the memory phase: one stale run (one operation, one pod to
/// wait for) and one kept run; its pod ignores SIGTERM for 10 minutes.
fn memory_plan(i: usize) -> TaskPlan {
    TaskPlan::new(
        "m",
        i,
        &["quality"],
        ("after-grace-period", MEMORY_POD_GRACE_SECONDS),
    )
}

/// Phase 3, in the parent: the world; the implementation runs in a child
/// process that reports its own RSS. One world for both steps: the first
/// step's operations stay active while the second's start, and each RSS
/// is compared with the child's idle RSS before the first submission.
async fn memory(which: Impl) -> Vec<Line> {
    let steps = memory_steps();
    let total = *steps.last().unwrap();
    let world = World::start_with(1_000_000, MEMORY_GITHUB_BUDGET).await;
    let plans: Vec<TaskPlan> = (0..total).map(memory_plan).collect();
    let seeding = Instant::now();
    world.seed(&plans).await;
    eprintln!(
        "{} memory: {total} tasks seeded in {:.2?}",
        which.name(),
        seeding.elapsed()
    );
    let endpoints = world.endpoints();
    let seq = world.kube.requests().last_seq();
    let gh = world.github.calls().total();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--memory-child",
            which.name(),
            &endpoints.kube,
            &endpoints.github,
            &endpoints.token,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let to_child = child.stdin.take().unwrap();
    let from_child = BufReader::new(child.stdout.take().unwrap());
    let pipe = Mutex::new((to_child, from_child));
    let ask = |command: String| -> String {
        tokio::task::block_in_place(|| {
            let mut pipe = pipe.lock().unwrap();
            let (to_child, from_child) = &mut *pipe;
            writeln!(to_child, "{command}").unwrap();
            to_child.flush().unwrap();
            let mut answer = String::new();
            from_child.read_line(&mut answer).unwrap();
            answer.trim().to_owned()
        })
    };
    let rss = |answer: String| -> u64 { answer.strip_prefix("rss ").unwrap().parse().unwrap() };

    let idle_kb = rss(ask("rss".into()));
    let mut lines = Vec::new();
    let mut from = 0;
    let started = Instant::now();
    for step in steps {
        // Active: every stale pod of these tasks is terminating (SIGTERM
        // sent, ignored), none gone. At most MEMORY_WINDOW tasks are on
        // their way at once, more going as those become active: what is
        // measured is memory with
        // `step` cancellations active, not how a 2-core machine running
        // the fake API server too survives thousands of sagas starting in
        // the same second (the burst phase asks that).
        let deadline = Instant::now() + Duration::from_secs(240);
        let stale: Vec<String> = plans[..step]
            .iter()
            .flat_map(TaskPlan::stale_runs)
            .map(|r| pod_name(&r))
            .collect();
        // Checked every 100 ms, each pod until it is seen terminating, from
        // the fake's store (no request, only the metadata decoded): the
        // checker must not load the fake it watches.
        let mut waiting: Vec<&String> = Vec::new();
        let mut next = from;
        while Instant::now() < deadline && (next < step || !waiting.is_empty()) {
            if waiting.len() < MEMORY_WINDOW / 2 && next < step {
                let to = (next + MEMORY_WINDOW - waiting.len()).min(step);
                assert_eq!(ask(format!("submit {next} {to}")), "ok");
                waiting.extend(&stale[next..to]);
                next = to;
            }
            waiting.retain(|p| {
                world
                    .kube
                    .peek_metadata::<Pod>(NS, p)
                    .is_none_or(|m| m.deletion_timestamp.is_none())
            });
            sleep(Duration::from_millis(100)).await;
        }
        let terminating = next - waiting.len();
        // Let the last operations reach their wait.
        sleep(Duration::from_secs(1)).await;
        let kb = rss(ask("rss".into()));
        let per_1000 = (kb.saturating_sub(idle_kb)) as f64 / 1024.0 / (step as f64 / 1000.0);
        eprintln!(
            "{} memory: {step} tasks submitted, {terminating}/{} stale pods terminating after {:.2?}; watches open {}; child RSS {} kB (idle {idle_kb} kB): {per_1000:.2} MB per 1000 active",
            which.name(),
            stale.len(),
            started.elapsed(),
            world.kube.watch_count(),
            kb,
        );
        lines.push(Line {
            tasks: step,
            events: step,
            rss_mb_per_1000: Some(per_1000),
            ..Line::default()
        });
        from = step;
    }

    // The agents stop (as if they had finished their SIGTERM handling):
    // every operation can end.
    for plan in &plans {
        for run in plan.stale_runs() {
            let _ = world
                .kube
                .set_pod_phase(NS, &pod_name(&run), TerminalPhase::Succeeded);
        }
    }
    let exited = Instant::now();
    let done = world
        .converge(
            &plans,
            Duration::from_millis(50),
            Instant::now() + Duration::from_secs(180),
            // The child says whether its operations are still working.
            IDLE_STALL,
            || ask("idle".into()) == "idle true",
        )
        .await;
    let answer = ask("drain".into());
    eprintln!(
        "{} memory: {}/{} tasks converged within {:.2?} of the pods' exit; child: {answer}",
        which.name(),
        done.iter().flatten().count(),
        plans.len(),
        exited.elapsed(),
    );
    drop(pipe);
    let _ = child.wait();

    let records = world.kube.requests().since(seq);
    let replica_calls = records.iter().filter(|r| is_replica(r)).count();
    let github_calls = world.github.calls().total() - gh;
    eprintln!(
        "  calls: {} (evicted log records {})",
        breakdown(&records),
        world.kube.requests().evicted()
    );
    for line in &mut lines {
        line.verdict = world.verdict(&plans[..line.tasks]);
        line.kube_calls = Some(replica_calls as f64 / total as f64);
        line.github_calls = Some(github_calls as f64 / total as f64);
        eprintln!("  first {} tasks: {:?}", line.tasks, line.verdict);
    }
    lines
}

/// Phase 3, in the child: the implementation, driven through stdin
/// (`rss`, `submit <from> <to>`, `drain`), answering on stdout.
async fn memory_child(which: Impl, endpoints: Endpoints) {
    let saga = SagaConfig {
        // Only the wait's deadline in Delete mode (pods keep their own
        // grace): long enough that none is forced while the benchmark
        // holds 5 000 operations open.
        grace_period: Duration::from_secs(300),
        ..SagaConfig::default()
    };
    let steps = memory_steps();
    let total = *steps.last().unwrap();
    let plans: Vec<TaskPlan> = (0..total).map(memory_plan).collect();
    let fleet = Arc::new(Fleet::start(
        which,
        &endpoints,
        MEMORY_REPLICAS,
        total.div_ceil(MEMORY_REPLICAS),
        &saga,
    ));
    let (_, new_at) = push_times();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let answer = |s: String| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{s}").unwrap();
        out.flush().unwrap();
    };
    sleep(Duration::from_millis(500)).await;
    while let Some(command) = rx.recv().await {
        let words: Vec<&str> = command.split_whitespace().collect();
        match words.as_slice() {
            ["rss"] => {
                let fds = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
                eprintln!("  child: {fds} open file descriptors");
                answer(format!("rss {}", own_memory().map_or(0, |m| m.rss_kb)));
            }
            ["submit", from, to] => {
                let (from, to): (usize, usize) = (from.parse().unwrap(), to.parse().unwrap());
                for (i, plan) in plans.iter().enumerate().take(to).skip(from) {
                    let (fleet, plan) = (fleet.clone(), plan.clone());
                    tokio::spawn(async move {
                        let delivery = Delivery::push(&plan.new, new_at, i);
                        fleet.deliver(&plan, &delivery).await;
                    });
                }
                answer("ok".into());
            }
            ["idle"] => answer(format!("idle {}", fleet.is_idle())),
            ["drain"] => {
                let idle = fleet.idle(Instant::now() + Duration::from_secs(60)).await;
                if let Some(summary) = fleet.summary(&plans) {
                    eprintln!("  child: {summary}");
                }
                answer(format!(
                    "drained (idle: {idle}, RSS {} kB, failures met: {})",
                    own_memory().map_or(0, |m| m.rss_kb),
                    fleet.problems.describe()
                ));
                break;
            }
            other => panic!("unknown command {other:?}"),
        }
    }
    if let Ok(fleet) = Arc::try_unwrap(fleet) {
        fleet.shutdown().await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, which, kube, github, token] = args.as_slice()
        && flag == "--memory-child"
    {
        let which = Impl::parse(which).expect("an implementation");
        let endpoints = Endpoints {
            kube: kube.clone(),
            github: github.clone(),
            token: token.clone(),
        };
        memory_child(which, endpoints).await;
        return;
    }
    // Arguments narrow the run to some phases and implementations.
    let phases = ["uncontended", "burst", "memory"];
    let chosen = |p: &str| args[1..].iter().any(|a| a == p);
    let only = |phase: &str| !phases.iter().any(|p| chosen(p)) || chosen(phase);
    let mut both: Vec<Impl> = [Impl::Supersede, Impl::SeedBaseline]
        .into_iter()
        .filter(|i| chosen(i.name()))
        .collect();
    if both.is_empty() {
        both = vec![Impl::Supersede, Impl::SeedBaseline];
    }
    let took = |phase: &str, which: Impl, since: Instant| {
        eprintln!("{} {phase}: {:.2?} in all", which.name(), since.elapsed());
    };
    if only("uncontended") {
        for &which in &both {
            let since = Instant::now();
            println!("{}", uncontended(which).await.json(which));
            took("uncontended", which, since);
        }
    }
    if only("burst") {
        for &which in &both {
            let since = Instant::now();
            println!("{}", burst(which).await.json(which));
            took("burst", which, since);
        }
    }
    if only("memory") {
        for &which in &both {
            let since = Instant::now();
            for mut line in memory(which).await {
                println!("{}", line.json(which));
            }
            took("memory", which, since);
        }
    }
}
