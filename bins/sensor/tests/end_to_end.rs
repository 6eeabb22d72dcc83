//! End to end: FakeGitHub's webhook sender (as GitHub's Hookshot: one POST
//! per event, nothing retried, redeliveries with the same GUID) delivers to
//! the sensor wired as in a cluster (`wiring::cluster_parts_with`): task
//! states, leases and CodeRuns with their pods on FakeKube through the real
//! `kube::Client` — FakeKube's garbage collector and kubelet deciding when
//! pods and runs go — and pull requests and labels on FakeGitHub through
//! octocrab. What happened is read from FakeKube's store and request log
//! and from the task state, never from the sensor's own counters alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cancel_coordinator::workloads::LABEL_CODE_RUN;
use cancel_coordinator::{AgentSpec, CodeRun, CodeRunSpec};
use common::{NEW, OLD, Running, TASK, until};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, PostParams};
use kube::{CustomResourceExt, Resource, ResourceExt};
use sensor::{Config, wiring};
use serde_json::json;
use state_store::{CancellationOutcome, ConfigMapBackend, RemediationState, StateStore};
use testkit::faults::{InjectedError, Match};
use testkit::github::{DeliveryId, FakeGitHub, WebhookConfig, Webhooks};
use testkit::kube::{FakeKube, RequestFilter};

const MIDDLE: &str = "1212121212121212121212121212121212121212";
const BRANCH: &str = "task-42-fix";
const NS: &str = "default";

struct Cluster {
    kube: FakeKube,
    github: FakeGitHub,
}

impl Cluster {
    async fn start() -> Self {
        resilience::tls::ensure_crypto_provider();
        let kube = FakeKube::builder()
            .crd(CodeRun::crd())
            .start()
            .await
            .unwrap();
        let github = FakeGitHub::start().await.unwrap();
        Self { kube, github }
    }

    /// A cluster, a sensor on it, and PR 7 opened from [`BRANCH`] at
    /// `head` (its `opened` delivery answered 202).
    async fn with_pull_at(head: &str) -> (Self, Running) {
        let cluster = Self::start().await;
        let sensor = cluster.sensor().await;
        let opened = cluster
            .github
            .add_pull("acme", "widgets", 7, head, BRANCH, ["ready-for-qa"])
            .unwrap();
        assert_eq!(cluster.answers(&opened).await, [202]);
        (cluster, sensor)
    }

    fn config(&self) -> Config {
        Config {
            dev: false,
            github_token: Some(secrecy::SecretString::from(self.github.token().to_owned())),
            ..common::config()
        }
    }

    /// A sensor on this cluster; GitHub's webhook now points at it.
    async fn sensor(&self) -> Running {
        let config = self.config();
        let parts = wiring::cluster_parts_with(
            &config,
            self.kube.client(),
            self.github.octocrab().unwrap(),
        )
        .unwrap();
        let sensor = Running::start(&config, parts).await;
        let url = url::Url::parse(&sensor.url(sensor::WEBHOOK_PATH)).unwrap();
        self.webhooks()
            .configure(WebhookConfig::new(url).with_secret(common::SECRET))
            .unwrap();
        sensor
    }

    fn webhooks(&self) -> Webhooks {
        self.github.webhooks()
    }

    async fn state(&self) -> RemediationState {
        self.state_when(|_| true).await
    }

    /// The task's state once it satisfies `done` (polled, at most 10 s).
    async fn state_when(&self, done: impl Fn(&RemediationState) -> bool) -> RemediationState {
        let store = StateStore::new(ConfigMapBackend::new(self.kube.client(), NS));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(snapshot) = store.get(TASK).await.unwrap()
                && done(&snapshot.state)
            {
                return snapshot.state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "state not reached in 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The quality, testing and review CodeRuns of the task on `head`, each
    /// with a pod that stops 10 ms after SIGTERM.
    async fn agents_on(&self, head: &str) -> Vec<String> {
        let mut names = Vec::new();
        for role in ["quality", "testing", "review"] {
            let name = format!("{role}-{}", &head[..7]);
            self.run(&name, role, head).await;
            names.push(name);
        }
        names
    }

    async fn run(&self, name: &str, role: &str, head: &str) {
        let runs: Api<CodeRun> = Api::namespaced(self.kube.client(), NS);
        let spec = CodeRunSpec {
            task_id: TASK.into(),
            role: role.into(),
            repository: "acme/widgets".into(),
            pull_request: 7,
            branch: BRANCH.into(),
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
                    "testkit.supersede.dev/termination": "stops-after-10ms",
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

    fn exists(&self, run: &str) -> bool {
        self.kube.peek::<CodeRun>(NS, run).is_some()
            || self.kube.peek::<Pod>(NS, &format!("{run}-pod")).is_some()
    }

    /// Waits (real time, at most 10 s) until `runs` and their pods are gone.
    async fn until_gone(&self, runs: &[String]) {
        until(|| runs.iter().all(|r| !self.exists(r))).await;
    }

    /// Requests that wrote to run `name` or its pod.
    fn writes_to(&self, name: &str, verb: &str) -> usize {
        let log = self.kube.requests();
        log.count(&RequestFilter::any().verb(verb).name(name))
            + log.count(&RequestFilter::any().verb(verb).name(format!("{name}-pod")))
    }

    /// Redelivers `id` and checks it is answered 202 `duplicate`.
    async fn redelivered_as_duplicate(&self, id: DeliveryId) {
        let again = self.webhooks().redeliver(id).unwrap();
        let delivery = self.webhooks().attempted(again).await.unwrap();
        assert_eq!(delivery.outcome.status_code(), Some(202));
        let body = delivery.response_body.unwrap();
        assert!(body.contains("\"duplicate\""), "{body}");
    }

    /// The status code each delivery was answered with.
    async fn answers(&self, ids: &[DeliveryId]) -> Vec<u16> {
        let mut codes = Vec::new();
        for id in ids {
            let delivery = self.webhooks().attempted(*id).await.unwrap();
            codes.push(delivery.outcome.status_code().unwrap_or_default());
        }
        codes
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_pr_7s_branch_leads_to_the_tasks_stale_runs_being_cancelled() {
    let (cluster, sensor) = Cluster::with_pull_at(OLD).await;
    let stale = cluster.agents_on(OLD).await;
    let current = cluster.agents_on(NEW).await;

    let pushed = cluster
        .github
        .push_to_pull("acme", "widgets", 7, &[NEW])
        .unwrap();
    assert_eq!(
        cluster.answers(&pushed).await,
        [202, 202],
        "push and synchronize"
    );
    cluster.until_gone(&stale).await;

    let state = cluster
        .state_when(|s| !s.cancellation_history.is_empty())
        .await;
    assert_eq!(state.latest_head.as_ref().unwrap().sha, NEW);
    let cancelled: Vec<_> = state
        .cancellation_history
        .iter()
        .filter(|r| r.outcome == CancellationOutcome::Cancelled)
        .collect();
    assert_eq!(cancelled.len(), 1, "{:?}", state.cancellation_history);
    assert_eq!(cancelled[0].new_head_sha, NEW);
    let mut targets = cancelled[0].targets.clone();
    targets.sort();
    let mut expected = stale.clone();
    expected.sort();
    assert_eq!(targets, expected);
    for run in &current {
        assert!(cluster.exists(run), "{run} of the new head was kept");
        for verb in ["patch", "update", "delete"] {
            assert_eq!(cluster.writes_to(run, verb), 0, "{verb} of {run}");
        }
    }
    // The saga moved the pull request's labels on GitHub.
    until(|| cluster.github.labels("acme", "widgets", 7) == ["needs-qa"]).await;
    assert_eq!(sensor.stop().await.exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_out_of_order_twice_and_after_a_restart_are_each_handled_once() {
    let (cluster, sensor) = Cluster::with_pull_at(OLD).await;
    let old_runs = cluster.agents_on(OLD).await;
    let middle_runs = cluster.agents_on(MIDDLE).await;
    let new_runs = cluster.agents_on(NEW).await;

    let webhooks = cluster.webhooks();
    webhooks.hold();
    let first = cluster
        .github
        .push_to_pull("acme", "widgets", 7, &[MIDDLE])
        .unwrap();
    let second = cluster
        .github
        .push_to_pull("acme", "widgets", 7, &[NEW])
        .unwrap();
    // The newest push's deliveries arrive first, the older one's after.
    let order = [second[1], second[0], first[1], first[0]];
    let released = webhooks.release(&order).await.unwrap();
    assert!(released.iter().all(|d| d.outcome.is_ok()), "{released:?}");
    // What the cancellation causes (label events) goes out as it happens.
    webhooks.resume();

    cluster.until_gone(&old_runs).await;
    cluster.until_gone(&middle_runs).await;
    assert!(new_runs.iter().all(|r| cluster.exists(r)));
    let state = cluster.state().await;
    assert_eq!(
        state.latest_head.as_ref().unwrap().sha,
        NEW,
        "the older push did not win"
    );

    // The newest synchronize, redelivered: a duplicate, answered 202.
    cluster.redelivered_as_duplicate(second[1]).await;

    // A restarted sensor (empty memory) still recognises it from the state.
    assert_eq!(sensor.stop().await.exit_code(), 0);
    let restarted = cluster.sensor().await;
    cluster.redelivered_as_duplicate(second[1]).await;
    assert_eq!(
        restarted
            .metric(r#"sensor_duplicates_total{found_in="state"}"#)
            .await,
        1.0
    );

    // Every stale run was deleted exactly once; the newest head's were
    // never written to.
    for run in old_runs.iter().chain(&middle_runs) {
        assert_eq!(cluster.writes_to(run, "delete"), 1, "deletes of {run}");
    }
    for run in &new_runs {
        assert!(cluster.exists(run));
        for verb in ["patch", "update", "delete"] {
            assert_eq!(cluster.writes_to(run, verb), 0, "{verb} of {run}");
        }
    }
    let state = cluster.state().await;
    let recorded: Vec<_> = state.recent_deliveries.iter().collect();
    assert_eq!(recorded.len(), 5, "opened and four pushes: {recorded:?}");
    assert_eq!(restarted.stop().await.exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_unreachable_is_503_and_the_redelivery_once_it_is_back_is_accepted_and_cancelled()
 {
    let (cluster, sensor) = Cluster::with_pull_at(OLD).await;
    let stale = cluster.agents_on(OLD).await;

    // The API server answers every ConfigMap call 503 (an etcd outage).
    let outage = cluster.kube.faults().error_rate(
        Match::any().resource("configmaps"),
        1.0,
        InjectedError::Status(503),
    );
    let pushed = cluster
        .github
        .push_to_pull("acme", "widgets", 7, &[NEW])
        .unwrap();
    assert_eq!(
        cluster.answers(&pushed).await,
        [503, 503],
        "never 202 for a fact that was not stored"
    );
    assert!(stale.iter().all(|r| cluster.exists(r)));

    cluster.kube.faults().remove(outage);
    let redelivered = cluster.webhooks().redeliver(pushed[1]).unwrap();
    assert_eq!(cluster.answers(&[redelivered]).await, [202]);
    cluster.until_gone(&stale).await;
    let state = cluster.state().await;
    assert_eq!(state.latest_head.as_ref().unwrap().sha, NEW);
    assert_eq!(sensor.stop().await.exit_code(), 0);
}
