//! The controller's Role (`deploy/controller/rbac.yaml`) is derived from its
//! code: the controller, wired as `main` wires it — `Controller::over` on
//! the production backends (`Backends::build` over the clients
//! `Clients::connect` makes, GitHub's through `wiring::github_client`), no
//! webhook route, no dev flags, as `deploy/controller/deployment.yaml` runs
//! it — against FakeKube and FakeGitHub, runs every flow that reaches the
//! API server, and every (verb, resource) its requests used must be
//! granted, and every grant used.
//!
//! Its one kube client carries `Audit-ID: controller`; the world's other
//! parties (the sensor recording pushes, an operator, a coordinator that
//! died, another replica holding a task lock) have their own, and the runs
//! and pods are seeded straight into FakeKube, so what is compared is the
//! controller's requests only. The flows, all in one run of the served
//! controller:
//!
//! - **its recovery cycles (every 5 s here), with work for every row** that
//!   touches the cluster: a lost supersession handed on (whose cancellation
//!   waits on another replica's task lock, then force-deletes a pod that ignores
//!   SIGTERM), an abandoned journal resumed, a run marked and left running
//!   handed on, head drift recorded and handed on, a run held by a foreign
//!   finalizer flagged, labels not moved repaired under the task lock, an
//!   orphaned Lease deleted, an unreadable state quarantined and an invalid
//!   one flagged (each flag with an Event);
//! - **a flag raised again** after an operator cleared it too early: its
//!   Event, the same within kube's six-minute cache, is patched;
//! - **leadership** (`controller-recovery-leader`) taken at start and
//!   released on shutdown;
//! - **TTL cleanup** deleting a state finished eight days ago;
//! - **the API and probes**: every read endpoint, `/readyz` (its state
//!   check), `/metrics`; the write endpoints are off, as deployed (no
//!   `--api-token-file`), and call only what recovery's repairs call.
//!
//! (The App's failed-delivery redelivery is GitHub's API only: it makes no
//! Kubernetes call.)
//!
//! On real time, as the sensor's: the controller's own wiring bounds every
//! GitHub call and state write with a timeout, and on paused time those
//! timers advance while the runtime waits for a socket. What must look old
//! to the controller (a supersession past `settle_after`, an intent past
//! the run deadline, a state past its TTL) is written by the world with a
//! clock set back, not waited for.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use cancel_coordinator::workloads::{ANNOTATION_NEEDS_INTERVENTION as RUN_FLAG, LABEL_CODE_RUN};
use cancel_coordinator::{
    AgentSpec, CancelMode, CodeRun, CodeRunConfig, CodeRunSpec, Intent, KubeCodeRuns,
    METADATA_PULL_REQUEST, Workloads as _,
};
use controller::{Config, Controller};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt, Resource, ResourceExt};
use lease_lock::{AcquireOptions, FencingToken, KubeLeases, LeaseLock, LockConfig};
use recovery::ANNOTATION_NEEDS_INTERVENTION;
use resilience::Shutdown;
use sensor::backends::{Backends, Clients};
use state_store::naming::{KEY_STATE, KEY_STATE_CORRUPT, state_labels};
use state_store::{
    CancellationOutcome, CancellationRecord, Clock, ConfigMapBackend, OperationJournal,
    OperationKind, RemediationState, StateStore, StoreConfig, Supersession, TaskStatus,
};
use testkit::github::FakeGitHub;
use testkit::kube::rbac::{RbacDiff, role_permissions, used_permissions};
use testkit::kube::seeding::{abandoned_lease, owned_pod};
use testkit::kube::{FakeKube, PodTermination, RequestFilter};
use testkit::metrics_contract::repo_file;

const NS: &str = "default";
const OLD: &str = "1111111111111111111111111111111111111111";
const NEW: &str = "2222222222222222222222222222222222222222";

/// `Audit-ID` of the controller's client: the requests the Role must cover.
const CONTROLLER: &str = "controller";
/// `Audit-ID` of the sensor recording pushes and heads.
const SENSOR: &str = "sensor";
/// `Audit-ID` of what a test does as an operator would (`kubectl`).
const OPERATOR: &str = "operator";
/// `Audit-ID` of a coordinator that died before the controller started.
const DEAD: &str = "dead-coordinator";
/// `Audit-ID` of another replica holding a task lock.
const RIVAL: &str = "rival-replica";

/// The lease prefix of the task locks.
const TASK_LOCKS: &str = sensor::wiring::LOCK_PREFIX;

/// Guard against hanging; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(90);

/// The world the controller starts in, and its parties.
struct World {
    kube: FakeKube,
    github: FakeGitHub,
    /// The sensor's store, its clock two minutes behind: what it records
    /// is past the reconciler's `settle_after` (60 s) from the start.
    sensor: StateStore,
}

impl World {
    async fn start() -> Self {
        let kube = FakeKube::builder()
            .crd(CodeRun::crd())
            .start()
            .await
            .unwrap();
        let github = FakeGitHub::start().await.unwrap();
        let sensor = store_over(kube.client_as(SENSOR).unwrap(), ago(120));
        Self {
            kube,
            github,
            sensor,
        }
    }

    /// Pull request `number` of `acme/widgets`, open at `head` with
    /// `labels`.
    fn pull(&self, number: u64, head: &str, labels: &[&str]) -> String {
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
        format!("acme/widgets#{number}")
    }

    /// The sensor's part of a push: `head` recorded as `task`'s
    /// supersession, with its pull request.
    async fn pushed(&self, task: &str, pr: &str, head: &str) {
        self.sensor
            .record_supersession(task, &supersession(head, ago(130)))
            .await
            .unwrap();
        self.with_pr(task, pr).await;
    }

    /// A push of `head` (at `at`) that was handled: the head recorded,
    /// nothing pending, the task in progress.
    async fn observed(&self, task: &str, pr: &str, head: &str, at: Timestamp) {
        let pr = pr.to_owned();
        self.sensor
            .update(task, |s| {
                s.observe_head(&supersession(head, at));
                s.settle_supersessions_through(head, at);
                s.status = TaskStatus::InProgress;
                s.metadata.insert(METADATA_PULL_REQUEST.into(), pr.clone());
                Ok::<_, state_store::Error>(())
            })
            .await
            .unwrap();
    }

    async fn with_pr(&self, task: &str, pr: &str) {
        let pr = pr.to_owned();
        self.sensor
            .update(task, |s| {
                s.metadata.insert(METADATA_PULL_REQUEST.into(), pr.clone());
                Ok::<_, state_store::Error>(())
            })
            .await
            .unwrap();
    }

    /// A CodeRun of `task` on `head` and its one pod, seeded (no request);
    /// the run carries `finalizers`, the pod ends `termination` after
    /// SIGTERM.
    fn seed_run(
        &self,
        task: &str,
        name: &str,
        head: &str,
        termination: PodTermination,
        finalizers: &[&str],
    ) {
        let spec = CodeRunSpec {
            task_id: task.into(),
            role: name.split('-').next().unwrap().into(),
            repository: "acme/widgets".into(),
            pull_request: 7,
            branch: format!("{task}-fix"),
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
            termination,
        );
        self.kube.seed([pod]).unwrap();
    }

    /// The Lease of `task`'s lock, held by `dead-pod/1` who last renewed
    /// it two minutes ago, seeded.
    fn seed_dead_lease(&self, task: &str) -> Lease {
        let name = format!("{TASK_LOCKS}-task-{task}");
        let mut lease = abandoned_lease(
            &name,
            "dead-pod/1",
            ago(120),
            [
                (lease_lock::MANAGED_BY_LABEL, lease_lock::MANAGED_BY_VALUE),
                (lease_lock::LOCK_PREFIX_LABEL, TASK_LOCKS),
            ],
        );
        lease.metadata.namespace = Some(NS.into());
        self.kube.seed([lease]).unwrap();
        self.kube.peek::<Lease>(NS, &name).unwrap()
    }

    /// `task`'s state ConfigMap created through the API with `payload`, as
    /// a hand edit leaves it.
    async fn state_written_by_hand(&self, task: &str, payload: &str) {
        let cms: Api<ConfigMap> = Api::namespaced(self.kube.client_as(OPERATOR).unwrap(), NS);
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(state_name(task));
        cm.metadata.labels = Some(state_labels(task));
        cm.data = Some([(KEY_STATE.to_owned(), payload.to_owned())].into());
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }

    /// A run of a dead coordinator's: marked superseded by [`NEW`] at
    /// `at`, and (`delete`) deleted, its pod then gone.
    async fn marked_by_the_dead(&self, name: &str, at: Timestamp, delete: bool) {
        let dead = KubeCodeRuns::new(
            self.kube.client_as(DEAD).unwrap(),
            NS,
            CodeRunConfig::default(),
        )
        .unwrap();
        let run = dead.run(name).await.unwrap().unwrap();
        let intent = Intent {
            superseded_by: NEW.into(),
            operation_id: "op-gone".into(),
            correlation_id: None,
            at,
        };
        let run = dead.mark_superseded(&run, &intent).await.unwrap();
        if delete {
            dead.terminate(&run, CancelMode::Delete, Duration::from_secs(20))
                .await
                .unwrap();
            until("the dead coordinator's run loses its pod", || {
                let gone = !self.pod_exists(name);
                async move { gone }
            })
            .await;
        }
    }

    fn pod_exists(&self, run: &str) -> bool {
        self.kube.peek::<Pod>(NS, &format!("{run}-pod")).is_some()
    }

    fn state_cm(&self, task: &str) -> Option<ConfigMap> {
        self.kube.peek::<ConfigMap>(NS, &state_name(task))
    }

    fn state(&self, task: &str) -> RemediationState {
        let cm = self.state_cm(task).unwrap();
        serde_json::from_str(&cm.data.unwrap()[KEY_STATE]).unwrap()
    }

    fn flag(&self, task: &str) -> Option<String> {
        self.state_cm(task)?
            .annotations()
            .get(ANNOTATION_NEEDS_INTERVENTION)
            .cloned()
    }

    fn labels(&self, number: u64) -> Vec<String> {
        self.github.labels("acme", "widgets", number)
    }

    /// The reasons of the Warning Events about `task`'s state, listed as an
    /// operator would.
    async fn events_about(&self, task: &str) -> Vec<String> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.kube.client_as(OPERATOR).unwrap(), NS);
        let name = state_name(task);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(&name))
            .filter_map(|e| e.reason)
            .collect()
    }
}

fn state_name(task: &str) -> String {
    state_store::state_name(task).unwrap()
}

/// A store of the world's over `client`, its clock reading `start` now.
fn store_over(client: kube::Client, start: Timestamp) -> StateStore {
    StateStore::with_clock(
        ConfigMapBackend::new(client, NS),
        StoreConfig::default(),
        Clock::tokio_anchored(start),
    )
}

fn supersession(head: &str, at: Timestamp) -> Supersession {
    Supersession {
        head_sha: head.into(),
        pushed_at: at,
        delivery_id: format!("d-{}", &head[..7]),
        correlation_id: None,
    }
}

/// `seconds` before now on the wall clock (the controller's).
fn ago(seconds: i64) -> Timestamp {
    Timestamp::now() - SignedDuration::from_secs(seconds)
}

/// Waits (checking every 50 ms, at most [`PATIENCE`]) until `done`.
async fn until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET url`: the status and the body as JSON (`Null` if it is not).
async fn get(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_default())
}

/// The controller as `main` builds it over the world's servers: the
/// production backends over a kube client tagged [`CONTROLLER`] and
/// GitHub's client for a token, served on 127.0.0.1.
async fn serve_controller(world: &World) -> (String, Shutdown) {
    resilience::tls::ensure_crypto_provider();
    let config = Config {
        identity: "controller-0".to_owned(),
        // A cycle every 5 s (±10 %): the repeated flag is seen soon.
        recovery_interval_seconds: 5,
        github_token: Some(secrecy::SecretString::from(world.github.token().to_owned())),
        github_api_url: Some(world.github.url().to_string()),
        ..Config::default()
    };
    config.validate().unwrap();
    assert!(!config.webhook_enabled() && !config.fleet_enabled());
    let sensor_config = config.sensor_config();
    let credentials = sensor_config.github_credentials().unwrap();
    let clients = Clients {
        kube: Some(world.kube.client_as(CONTROLLER).unwrap()),
        github: Some(
            sensor::wiring::github_client(&credentials, config.github_api_url.as_deref()).unwrap(),
        ),
    };
    let settings = sensor::wiring::backend_settings(&sensor_config).unwrap();
    let backends = Backends::build(config.backends(), &settings, clients).unwrap();
    let shutdown = Shutdown::new();
    let controller = Controller::over(&config, backends, Some(&credentials), shutdown.clone())
        .expect("the controller over the fakes");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    controller.spawn(listener).await.unwrap();
    (url, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controllers_role_grants_exactly_the_calls_its_flows_make() {
    let world = World::start().await;

    // task-42: a push recorded whose request to a coordinator was lost.
    // One stale run stops on SIGTERM, the other never does (force delete);
    // another replica holds the task's lock when the cancellation begins.
    world.seed_run(
        "task-42",
        "quality-old",
        OLD,
        PodTermination::Immediate,
        &[],
    );
    world.seed_run("task-42", "testing-old", OLD, PodTermination::Never, &[]);
    world.seed_run("task-42", "review-new", NEW, PodTermination::Immediate, &[]);
    let pr42 = world.pull(42, NEW, &["ready-for-qa"]);
    world.pushed("task-42", &pr42, NEW).await;
    let rival = LeaseLock::new(
        KubeLeases::new(world.kube.client_as(RIVAL).unwrap()),
        LockConfig {
            prefix: TASK_LOCKS.to_owned(),
            ..LockConfig::new("rival-0", NS)
        },
    )
    .unwrap();
    let held = rival
        .acquire("task-task-42", AcquireOptions::new())
        .await
        .unwrap();

    // task-15: a saga whose process died after journaling, its Lease left.
    world.seed_run("task-15", "quality-15", OLD, PodTermination::Immediate, &[]);
    let pr15 = world.pull(15, NEW, &["ready-for-qa"]);
    world.pushed("task-15", &pr15, NEW).await;
    let lease = world.seed_dead_lease("task-15");
    let mut journal = OperationJournal::begin(
        "op-dead",
        OperationKind::Cancellation,
        "dead-pod/1",
        ago(120),
    );
    journal.fencing_token = Some(FencingToken::new(
        lease.metadata.uid.clone().unwrap(),
        lease.metadata.creation_timestamp.clone().unwrap().0,
        1,
    ));
    journal.targets = vec!["quality-15".into()];
    journal.context.insert("keep_head".into(), NEW.into());
    journal.context.insert("pr".into(), pr15.clone());
    store_over(world.kube.client_as(DEAD).unwrap(), ago(120))
        .begin_operation("task-15", journal)
        .await
        .unwrap();

    // task-17: a run a dead coordinator marked and never deleted.
    world.seed_run("task-17", "quality-17", OLD, PodTermination::Immediate, &[]);
    let pr17 = world.pull(17, NEW, &[]);
    world.observed("task-17", &pr17, NEW, ago(130)).await;
    world
        .marked_by_the_dead("quality-17", ago(120), false)
        .await;

    // task-11: a run a dead coordinator marked and deleted, held by
    // someone else's finalizer after its pod went.
    world.seed_run(
        "task-11",
        "review-11",
        OLD,
        PodTermination::Immediate,
        &["example.dev/audit"],
    );
    let pr11 = world.pull(11, NEW, &[]);
    world.observed("task-11", &pr11, NEW, ago(130)).await;
    world.marked_by_the_dead("review-11", ago(120), true).await;

    // task-19: a push no webhook told of (head drift).
    world.seed_run("task-19", "quality-19", OLD, PodTermination::Immediate, &[]);
    let pr19 = world.pull(19, OLD, &[]);
    world.observed("task-19", &pr19, OLD, ago(3_600)).await;
    world
        .github
        .set_pull_head("acme", "widgets", 19, NEW)
        .unwrap();

    // task-13: a cancellation recorded whose label step failed.
    let pr13 = world.pull(13, NEW, &["ready-for-qa"]);
    world.observed("task-13", &pr13, NEW, ago(130)).await;
    let record = CancellationRecord {
        operation_id: "op-13".into(),
        at: ago(125),
        new_head_sha: NEW.into(),
        targets: vec!["quality-13".into()],
        superseded_heads: Vec::new(),
        started_at: None,
        finished_at: None,
        outcome: CancellationOutcome::Cancelled,
        correlation_id: None,
        detail: Some("quality-13: sigterm in 900 ms; labels: failed (rate limited)".into()),
    };
    world
        .sensor
        .update("task-13", |s| {
            s.record_cancellation(record.clone());
            Ok::<_, state_store::Error>(())
        })
        .await
        .unwrap();

    // task-7: an orphaned Lease; task-9: an unreadable state; task-8: a
    // state that breaks its own rules.
    world.seed_dead_lease("task-7");
    world
        .state_written_by_hand("task-9", r#"{"version":"v1","task_id":"task-9","iterat"#)
        .await;
    // (Updated just now: TTL cleanup, which runs at once too, leaves it.)
    let invalid = format!(
        r#"{{"version":"v1","task_id":"task-8","last_update":"{}","latest_head":{{"sha":"not a sha","pushed_at":"2026-01-01T00:00:00Z","delivery_id":"d"}}}}"#,
        Timestamp::now()
    );
    world.state_written_by_hand("task-8", &invalid).await;

    // task-5: finished eight days ago, past the 7-day TTL.
    store_over(world.kube.client_as(OPERATOR).unwrap(), ago(8 * 24 * 3_600))
        .update("task-5", |s| {
            s.status = TaskStatus::Completed;
            Ok::<_, state_store::Error>(())
        })
        .await
        .unwrap();

    // The controller starts: leadership, its first cycle, a TTL pass.
    let (url, shutdown) = serve_controller(&world).await;
    let controllers = |verb: &str, resource: &str| {
        world.kube.requests().count(
            &RequestFilter::any()
                .correlation(CONTROLLER)
                .verb(verb)
                .resource(resource),
        )
    };
    until("the cancellation waits on the rival's Lease", || {
        let found_held = world.kube.requests().count(
            &RequestFilter::any()
                .correlation(CONTROLLER)
                .verb("get")
                .resource("leases")
                .name("cancel-task-task-42"),
        ) > 0;
        let waiting = found_held && controllers("watch", "leases") > 0;
        async move { waiting }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        world.pod_exists("testing-old"),
        "nothing cancelled under the rival's lock"
    );
    held.release().await.unwrap();

    until("every repair done", || {
        let done = [
            "quality-old",
            "testing-old",
            "quality-15",
            "quality-17",
            "quality-19",
        ]
        .iter()
        .all(|run| !world.pod_exists(run))
            && world.state("task-42").pending_supersessions.is_empty()
            && world.state("task-15").active_operation.is_none()
            && world
                .state("task-19")
                .latest_head
                .is_some_and(|h| h.sha == NEW)
            && world.labels(13) == ["needs-qa"]
            && world.labels(42) == ["needs-qa"]
            && ["task-8", "task-9", "task-11"]
                .iter()
                .all(|t| world.flag(t).is_some())
            && world.kube.peek::<Lease>(NS, "cancel-task-task-7").is_none()
            && world.state_cm("task-5").is_none();
        async move { done }
    })
    .await;
    assert!(
        world.pod_exists("review-new"),
        "the current head's run is kept"
    );
    assert!(
        world.state("task-13").cancellation_history[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("labels: moved by recovery")),
        "the label repair is noted"
    );
    assert!(
        world
            .flag("task-9")
            .unwrap()
            .starts_with("unreadable_state: ")
    );
    assert!(
        world
            .state_cm("task-9")
            .unwrap()
            .data
            .unwrap()
            .contains_key(KEY_STATE_CORRUPT)
    );
    assert!(world.flag("task-8").unwrap().starts_with("invalid_state: "));
    assert!(
        world
            .flag("task-11")
            .unwrap()
            .starts_with("run_held_by_finalizer: ")
    );
    let held_run = world.kube.peek::<CodeRun>(NS, "review-11").unwrap();
    assert!(held_run.annotations()[RUN_FLAG].contains("example.dev/audit"));
    assert_eq!(
        held_run.finalizers(),
        ["example.dev/audit"],
        "never stripped"
    );
    for task in ["task-8", "task-9", "task-11"] {
        let reasons = world.events_about(task).await;
        assert!(
            reasons.iter().any(|r| r == "NeedsIntervention"),
            "{task}: {reasons:?}"
        );
    }
    let leader = world
        .kube
        .peek::<Lease>(NS, "controller-recovery-leader")
        .unwrap();
    let holder = leader
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(
        holder.starts_with("controller-0"),
        "the controller leads: {holder}"
    );

    // An operator clears task-11's flag while the finalizer still holds
    // its run (the runbook's "then remove the annotation", done too early):
    // the next cycle flags it again, and kube's Recorder, which publishes
    // the same Event only once per six minutes, patches its series.
    let cms: Api<ConfigMap> = Api::namespaced(world.kube.client_as(OPERATOR).unwrap(), NS);
    let mut annotations = serde_json::Map::new();
    annotations.insert(
        ANNOTATION_NEEDS_INTERVENTION.into(),
        serde_json::Value::Null,
    );
    let cleared = serde_json::json!({"metadata": {"annotations": annotations}});
    cms.patch(
        &state_name("task-11"),
        &PatchParams::default(),
        &Patch::Merge(&cleared),
    )
    .await
    .unwrap();
    until("the flag raised again, its Event repeated", || {
        let again = world.flag("task-11").is_some() && controllers("patch", "events") > 0;
        async move { again }
    })
    .await;

    // The API and the probes, as an operator and the kubelet read them.
    for path in [
        "/v1/tasks",
        "/v1/tasks/task-42",
        "/v1/tasks/task-11",
        "/v1/cancellations",
        "/v1/cancellations?active=true",
        "/readyz",
        "/metrics",
    ] {
        let (status, _) = get(&format!("{url}{path}")).await;
        assert_eq!(status, 200, "{path}");
    }
    let (_, detail) = get(&format!("{url}/v1/tasks/task-42")).await;
    assert_eq!(detail["head_sha"], NEW);
    assert_eq!(detail["labels"], serde_json::json!(["needs-qa"]));

    // SIGTERM: everything stops, leadership is released.
    shutdown.trigger();
    let report = shutdown.drain(Duration::from_secs(30)).await;
    assert_eq!(report.exit_code(), 0, "{report:?}");
    let leader = world
        .kube
        .peek::<Lease>(NS, "controller-recovery-leader")
        .unwrap();
    assert!(
        leader
            .spec
            .and_then(|s| s.holder_identity)
            .is_none_or(|h| h.is_empty()),
        "leadership released"
    );

    assert_eq!(
        world.kube.requests().evicted(),
        0,
        "the log kept every request"
    );
    let log = world.kube.requests().entries();
    let used = used_permissions(
        log.iter()
            .filter(|r| r.correlation.as_deref() == Some(CONTROLLER)),
    );
    let shown: BTreeSet<String> = used.iter().map(ToString::to_string).collect();
    eprintln!("the controller's calls: {shown:?}");
    let manifest = std::fs::read_to_string(repo_file("deploy/controller/rbac.yaml")).unwrap();
    let granted = role_permissions(&manifest, "controller").unwrap();
    let diff = RbacDiff::between(&granted, &used);
    assert!(
        diff.is_exact(),
        "deploy/controller/rbac.yaml is not what the controller calls:\n{diff}"
    );
}
