//! The seed's scenarios on the real backends: `KubeLeases`,
//! `ConfigMapBackend` and `KubeCodeRuns` against testkit's FakeKube (its
//! garbage collector and kubelet deciding when pods and runs go), and
//! label-cas's GitHub backends against FakeGitHub, over real HTTP, on paused
//! time. Invariants are read from FakeKube's store and request log and from
//! the task states — never from the saga's own counters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use cancel_coordinator::workloads::LABEL_CODE_RUN;
use cancel_coordinator::{
    AgentSpec, CancellationCoordinator, CancellationRequest, CodeRun, CodeRunConfig, CodeRunSpec,
    CoordinatorConfig, KubeCodeRuns, Outcome, SagaConfig, StateAwareCancellation,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, PostParams};
use kube::{CustomResourceExt, Resource, ResourceExt};
use label_cas::{GitHubLabels, PrRef};
use lease_lock::{KubeLeases, LeaseLock, LockConfig};
use secrecy::SecretString;
use serde_json::json;
use state_store::{ConfigMapBackend, StateStore, Supersession};
use testkit::faults::{InjectedError, Match};
use testkit::github::FakeGitHub;
use testkit::kube::{FakeKube, RequestFilter};

const NS: &str = "default";

struct Cluster {
    kube: FakeKube,
    github: FakeGitHub,
    labels: Arc<GitHubLabels>,
}

impl Cluster {
    async fn start() -> Self {
        let kube = FakeKube::builder()
            .crd(CodeRun::crd())
            .start()
            .await
            .unwrap();
        let github = FakeGitHub::start().await.unwrap();
        // No request timeout: on paused time its timer would be advanced
        // while the runtime waits for the socket.
        let labels = GitHubLabels::builder()
            .token(SecretString::from(github.token().to_owned()))
            .base_uri(github.url().as_str())
            .request_timeout(None)
            .build()
            .unwrap();
        Self {
            kube,
            github,
            labels: Arc::new(labels),
        }
    }

    fn store(&self) -> StateStore {
        StateStore::new(ConfigMapBackend::new(self.kube.client(), NS))
    }

    fn saga(&self, identity: &str, config: SagaConfig) -> StateAwareCancellation {
        let lock = LeaseLock::new(
            KubeLeases::new(self.kube.client()),
            LockConfig {
                prefix: "cancel".into(),
                ..LockConfig::new(identity, NS)
            },
        )
        .unwrap();
        let workloads =
            KubeCodeRuns::new(self.kube.client(), NS, CodeRunConfig::default()).unwrap();
        StateAwareCancellation::builder(
            lock,
            self.store(),
            Arc::new(workloads),
            Arc::new(self.labels.pull_requests()),
            self.labels.clone(),
        )
        .config(config)
        .build()
        .unwrap()
    }

    /// PR `number` of `acme/widgets` at `head`, labelled `ready-for-qa`.
    fn pull(&self, number: u64, head: &str) -> PrRef {
        self.github
            .add_pull(
                "acme",
                "widgets",
                number,
                head,
                &format!("task-{number}-fix"),
                ["ready-for-qa"],
            )
            .unwrap();
        PrRef::new("acme", "widgets", number).unwrap()
    }

    async fn pushed(&self, task: &str, head: &str, at: Timestamp) {
        self.store()
            .record_supersession(
                task,
                &Supersession {
                    head_sha: head.into(),
                    pushed_at: at,
                    delivery_id: format!("d-{head}"),
                    correlation_id: None,
                },
            )
            .await
            .unwrap();
    }

    /// A running CodeRun and its pod, which stops `stop_ms` after SIGTERM.
    async fn run(&self, task: &str, name: &str, role: &str, head: &str, stop_ms: u64) {
        let runs: Api<CodeRun> = Api::namespaced(self.kube.client(), NS);
        let spec = CodeRunSpec {
            task_id: task.into(),
            role: role.into(),
            repository: "acme/widgets".into(),
            pull_request: 7,
            branch: "feature".into(),
            head_sha: head.into(),
            agent: AgentSpec {
                image: "agent:1".into(),
                ..AgentSpec::default()
            },
        };
        let run = runs
            .create(&PostParams::default(), &CodeRun::labelled(name, spec))
            .await
            .unwrap();
        let owner = OwnerReference {
            block_owner_deletion: Some(true),
            ..run.controller_owner_ref(&()).unwrap()
        };
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": format!("{name}-pod"),
                "labels": {
                    LABEL_CODE_RUN: run.name_any(),
                    "testkit.supersede.dev/starts-after": "0s",
                    "testkit.supersede.dev/termination": format!("stops-after-{stop_ms}ms"),
                },
                "ownerReferences": [owner],
            },
            "spec": {
                "containers": [{"name": "agent", "image": "agent:1"}],
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 30,
            },
        }))
        .unwrap();
        let pods: Api<Pod> = Api::namespaced(self.kube.client(), NS);
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }

    fn run_exists(&self, name: &str) -> bool {
        self.kube.peek::<CodeRun>(NS, name).is_some()
    }

    fn pod_exists(&self, run: &str) -> bool {
        self.kube.peek::<Pod>(NS, &format!("{run}-pod")).is_some()
    }

    /// Requests that wrote to run `name` (or its pod): none may name a run
    /// of a kept head.
    fn writes_to(&self, name: &str) -> usize {
        let log = self.kube.requests();
        let pod = format!("{name}-pod");
        ["patch", "update", "delete"]
            .iter()
            .map(|verb| {
                log.count(&RequestFilter::any().verb(*verb).name(name))
                    + log.count(&RequestFilter::any().verb(*verb).name(pod.clone()))
            })
            .sum()
    }
}

fn sha(n: usize) -> String {
    format!("{n:040x}")
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).unwrap()
}

/// Waits (paused time) until no coordinator has work running or waiting.
async fn settled(coordinators: &[CancellationCoordinator]) {
    for _ in 0..20_000 {
        if coordinators.iter().all(|c| c.list_active().is_empty()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never settled");
}

/// The call budget of the issue: at most 8 + 2 × runs Kubernetes calls and
/// 3 GitHub calls for one uncontended task cancellation — counted by the
/// fakes.
#[tokio::test(start_paused = true)]
async fn an_uncontended_cancellation_of_three_runs_stays_within_its_call_budget() {
    let c = Cluster::start().await;
    let (old, new) = (sha(1), sha(2));
    for role in ["quality", "testing", "review"] {
        c.run("task-7", &format!("{role}-old"), role, &old, 0).await;
    }
    c.run("task-7", "quality-new", "quality", &new, 0).await;
    let pr = c.pull(7, &new);
    c.pushed("task-7", &new, at(60)).await;
    let saga = c.saga("pod-a", SagaConfig::default());
    c.kube.calls().reset();
    c.kube.requests().clear();
    c.github.calls().reset();

    let report = saga
        .run(&CancellationRequest::push(
            "task-7",
            pr.clone(),
            &new,
            at(60),
        ))
        .await
        .unwrap();

    assert_eq!(report.outcome, Outcome::Cancelled);
    for role in ["quality", "testing", "review"] {
        let name = format!("{role}-old");
        assert!(!c.pod_exists(&name), "{name}'s pod is gone");
    }
    assert!(c.run_exists("quality-new") && c.pod_exists("quality-new"));
    assert_eq!(
        c.writes_to("quality-new"),
        0,
        "the new head's run was never touched"
    );
    let kube_calls = c.kube.requests().count(&RequestFilter::any());
    eprintln!(
        "Kubernetes calls: {kube_calls}, GitHub calls: {}",
        c.github.calls().total()
    );
    assert!(
        kube_calls <= 8 + 2 * 3,
        "{kube_calls} Kubernetes calls: {:#?}",
        c.kube.requests().entries()
    );
    let github_calls = c.github.calls().total();
    assert!(github_calls <= 3, "{github_calls} GitHub calls");
    assert!(
        c.github
            .labels("acme", "widgets", 7)
            .contains(&"needs-qa".to_owned())
    );
}

/// SIGTERM goes to every stale run at once: with each DELETE held for a
/// second by the fake, the three arrive together (on paused time, where one
/// after another they would arrive a second apart) — the saga's longest
/// serial stretch is one round trip, not one per run.
#[tokio::test(start_paused = true)]
async fn stale_runs_are_terminated_together_not_one_after_another() {
    let c = Cluster::start().await;
    let (old, new) = (sha(1), sha(2));
    for role in ["quality", "testing", "review"] {
        c.run("task-7", &format!("{role}-old"), role, &old, 0).await;
    }
    let pr = c.pull(7, &new);
    c.pushed("task-7", &new, at(60)).await;
    let saga = c.saga("pod-a", SagaConfig::default());
    let held = Duration::from_secs(1);
    c.kube
        .faults()
        .latency(Match::any().verb("delete"), held, Duration::ZERO);
    c.kube.requests().clear();

    let report = saga
        .run(&CancellationRequest::push("task-7", pr, &new, at(60)))
        .await
        .unwrap();

    assert_eq!(report.outcome, Outcome::Cancelled);
    let deletes = c
        .kube
        .requests()
        .matching(&RequestFilter::any().verb("delete"));
    let names: Vec<_> = deletes.iter().filter_map(|r| r.name.clone()).collect();
    assert_eq!(deletes.len(), 3, "one DELETE per stale run: {names:?}");
    let first = deletes.iter().map(|r| r.at).min().unwrap();
    let last = deletes.iter().map(|r| r.at).max().unwrap();
    let spread = last.duration_since(first).unsigned_abs();
    assert!(
        spread < held / 2,
        "the DELETEs arrived {spread:?} apart, one after another: {names:?}"
    );
}

/// Seed scenario 1 on the real backends: 25 tasks pushed at once, three
/// replicas, 2 ms per call, 5 % of Kubernetes calls failing with 5xx and 1 %
/// of writes landing with their answer lost. Everything converges: every
/// stale run is gone, no run of a new head was written to, each state
/// records its cancellation once, nothing is pending and no journal is left.
#[tokio::test(start_paused = true)]
async fn twenty_five_pushes_over_three_replicas_converge_through_faults() {
    let c = Cluster::start().await;
    let tasks = 25;
    let mut prs = Vec::new();
    for t in 0..tasks {
        let task = format!("task-{t}");
        let (old, new) = (sha(2 * t + 1), sha(2 * t + 2));
        for role in ["quality", "review"] {
            c.run(&task, &format!("{role}-{t}-old"), role, &old, 0)
                .await;
            c.run(&task, &format!("{role}-{t}-new"), role, &new, 0)
                .await;
        }
        let pr = c.pull(100 + t as u64, &new);
        c.pushed(&task, &new, at(60)).await;
        prs.push((task, pr, new));
    }
    let faults = c.kube.faults();
    faults.latency(Match::any(), Duration::from_millis(2), Duration::ZERO);
    faults.error_rate(Match::any(), 0.05, InjectedError::Status(503));
    faults.error_rate_after_commit(Match::any(), 0.01, InjectedError::Status(500));
    let replicas: Vec<CancellationCoordinator> = (0..3)
        .map(|i| {
            CancellationCoordinator::new(
                c.saga(&format!("pod-{i}"), SagaConfig::default()),
                CoordinatorConfig::default(),
            )
            .unwrap()
        })
        .collect();
    let workers: Vec<_> = replicas
        .iter()
        .map(CancellationCoordinator::start)
        .collect();
    for (task, pr, new) in &prs {
        for replica in &replicas {
            replica
                .submit(CancellationRequest::push(task, pr.clone(), new, at(60)))
                .unwrap();
        }
    }

    settled(&replicas).await;
    faults.clear();
    let log = c.kube.requests().entries();
    let faulted = |r: &&testkit::kube::RequestRecord| {
        matches!(r.outcome, testkit::calls::Outcome::Injected(_))
    };
    let injected = log.iter().filter(faulted).count();
    let lost = log.iter().filter(faulted).filter(|r| r.applied).count();
    eprintln!("faulted requests: {injected}, of which landed with the answer lost: {lost}");
    assert!(injected > 10, "the faults were exercised: {injected}");

    let store = c.store();
    for t in 0..tasks {
        for role in ["quality", "review"] {
            let stale = format!("{role}-{t}-old");
            let fresh = format!("{role}-{t}-new");
            assert!(!c.pod_exists(&stale), "{stale}'s pod is gone");
            assert!(c.run_exists(&fresh) && c.pod_exists(&fresh), "{fresh} kept");
            assert_eq!(c.writes_to(&fresh), 0, "{fresh} was never written to");
        }
        let state = store
            .get(&format!("task-{t}"))
            .await
            .unwrap()
            .unwrap()
            .state;
        let cancelled = state
            .cancellation_history
            .iter()
            .filter(|r| r.outcome == state_store::CancellationOutcome::Cancelled)
            .count();
        assert_eq!(cancelled, 1, "task-{t}: {:?}", state.cancellation_history);
        assert!(state.pending_supersessions.is_empty(), "task-{t}");
        assert!(
            state.active_operation.is_none(),
            "task-{t}: no journal left"
        );
    }
    for w in workers {
        w.shutdown(Duration::from_secs(5)).await;
    }
}

/// Seed scenario 2 on the real backends: ten pushes to one task while its
/// cancellation runs: one operation at a time (the task's Lease is taken
/// by one holder at a time), the rest coalesce, none fails, and only the
/// newest head's runs are left.
#[tokio::test(start_paused = true)]
async fn ten_pushes_to_one_task_coalesce_and_leave_only_the_newest_heads_runs() {
    let c = Cluster::start().await;
    let task = "task-9";
    c.run(task, "quality-0", "quality", &sha(100), 3_000).await;
    let pr = c.pull(9, &sha(100));
    let coordinator = CancellationCoordinator::new(
        c.saga("pod-a", SagaConfig::default()),
        CoordinatorConfig::default(),
    )
    .unwrap();
    let workers = coordinator.start();
    for i in 1..=10 {
        let head = sha(100 + i);
        c.run(task, &format!("quality-{i}"), "quality", &head, 3_000)
            .await;
        c.github.set_pull_head("acme", "widgets", 9, &head).unwrap();
        c.pushed(task, &head, at(60 + i as i64)).await;
        coordinator
            .submit(CancellationRequest::push(
                task,
                pr.clone(),
                &head,
                at(60 + i as i64),
            ))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    settled(std::slice::from_ref(&coordinator)).await;

    for i in 0..10 {
        assert!(
            !c.pod_exists(&format!("quality-{i}")),
            "quality-{i} cancelled"
        );
    }
    assert!(c.pod_exists("quality-10"), "the newest head's run runs on");
    assert_eq!(c.writes_to("quality-10"), 0);
    let status = coordinator.status(task).unwrap();
    assert!(
        status.recent.iter().all(|f| f.result.is_ok()),
        "{:?}",
        status.recent
    );
    assert!(
        status.recent.len() < 10,
        "coalesced: {} operations",
        status.recent.len()
    );
    assert!(coordinator.metrics().coalesced() > 0);
    workers.shutdown(Duration::from_secs(5)).await;
}

/// A write of each kind the saga makes lands and its answer is lost (FakeKube
/// serves it, then answers 500): the saga, or the replica after it, settles
/// it once.
#[tokio::test(start_paused = true)]
async fn a_lost_answer_to_any_kind_of_write_is_settled_once() {
    for (verb, resource) in [
        ("create", "leases"),
        ("update", "configmaps"),
        ("patch", "coderuns"),
        ("delete", "coderuns"),
        ("update", "leases"),
    ] {
        let c = Cluster::start().await;
        let (old, new) = (sha(1), sha(2));
        c.run("task-3", "quality-old", "quality", &old, 0).await;
        c.run("task-3", "review-new", "review", &new, 0).await;
        let pr = c.pull(3, &new);
        c.pushed("task-3", &new, at(60)).await;
        c.kube.faults().fail_next_after_commit(
            Match::any().verb(verb).resource(resource),
            1,
            InjectedError::Status(500),
        );
        let request = CancellationRequest::push("task-3", pr, &new, at(60));

        // The first attempt may fail on the lost answer; a retry (the
        // coordinator's, or another replica's) finishes the work.
        if c.saga("pod-a", SagaConfig::default())
            .run(&request)
            .await
            .is_err()
        {
            let survivor = c.saga(
                "pod-b",
                SagaConfig {
                    lock_timeout: Duration::from_secs(300),
                    ..SagaConfig::default()
                },
            );
            survivor.run(&request).await.unwrap();
        }

        let ctx = format!("lost answer to {verb} {resource}");
        assert!(!c.pod_exists("quality-old"), "{ctx}");
        assert!(c.pod_exists("review-new"), "{ctx}");
        assert_eq!(c.writes_to("review-new"), 0, "{ctx}");
        let state = c.store().get("task-3").await.unwrap().unwrap().state;
        let cancelled = state
            .cancellation_history
            .iter()
            .filter(|r| r.outcome == state_store::CancellationOutcome::Cancelled)
            .count();
        assert_eq!(cancelled, 1, "{ctx}: {:?}", state.cancellation_history);
        assert!(state.active_operation.is_none(), "{ctx}");
        assert!(
            c.github
                .labels("acme", "widgets", 3)
                .contains(&"needs-qa".to_owned()),
            "{ctx}"
        );
    }
}
