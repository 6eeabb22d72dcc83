//! The world the root scenario tests run in: FakeKube (CodeRuns, their pods,
//! the garbage collector and kubelet deciding when they go), FakeGitHub (pull
//! requests, labels and its webhook sender), and several sensor replicas
//! behind a round-robin TCP balancer, each with its own coordinator, all
//! over real HTTP. What happened is read back from the fakes — FakeKube's
//! request log, its store and a watch of every pod and task state version —
//! into testkit's [`CancellationHistory`], never from the system's own
//! counters.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cancel_coordinator::workloads::LABEL_CODE_RUN;
use cancel_coordinator::{AgentSpec, CodeRun, CodeRunSpec};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{CustomResourceExt, Resource, ResourceExt};
use resilience::Shutdown;
use secrecy::SecretString;
use sensor::backends::{BackendChoice, Backends, Clients};
use sensor::{Config, Sensor, wiring};
use state_store::{CancellationOutcome, ConfigMapBackend, RemediationState, StateStore};
use testkit::github::{DeliveryId, FakeGitHub, FakeGitHubBuilder, WebhookConfig};
use testkit::history::cancellation::CancellationHistory;
use testkit::kube::seeding::owned_pod;
use testkit::kube::{FakeKube, FakeKubeBuilder, PodTermination, RequestFilter};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The namespace everything lives in.
pub const NS: &str = "default";
/// The webhook secret GitHub signs with and the sensors verify.
pub const SECRET: &str = "scenario webhook secret";
/// The repository of every pull request.
pub const OWNER: &str = "acme";
/// The repository of every pull request.
pub const REPO: &str = "widgets";
/// The label a pull request waits in while its agents run.
pub const WAITING: &str = "ready-for-qa";
/// The label the saga moves a superseded pull request to.
pub const MOVED: &str = "needs-qa";
/// The roles of the agents working on each head.
pub const ROLES: [&str; 3] = ["quality", "testing", "review"];
/// The longest any scenario waits for the world to converge.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Head `n` of a scenario: 40 hex digits.
pub fn sha(n: usize) -> String {
    format!("{n:040x}")
}

/// The branch of task `task` (the sensor's default mapping reads the task
/// id from it).
pub fn branch(task: u64) -> String {
    format!("task-{task}-fix")
}

/// The spec of task `task`'s `role` agent on `head`, on PR `task`.
pub fn run_spec(task: u64, role: &str, head: &str) -> CodeRunSpec {
    CodeRunSpec {
        task_id: task.to_string(),
        role: role.into(),
        repository: format!("{OWNER}/{REPO}"),
        pull_request: task,
        branch: branch(task),
        head_sha: head.into(),
        agent: AgentSpec {
            image: "agent:1".into(),
            ..AgentSpec::default()
        },
    }
}

/// The pod of `run` as its controller makes it (in [`NS`], labelled with
/// its run), stopping `stop_ms` after SIGTERM.
pub fn agent_pod(run: &CodeRun, stop_ms: u64) -> Pod {
    let mut pod = owned_pod(
        &format!("{}-pod", run.name_any()),
        run.controller_owner_ref(&()).unwrap(),
        [(LABEL_CODE_RUN, run.name_any())],
        PodTermination::StopsAfter(Duration::from_millis(stop_ms)),
    );
    pod.metadata.namespace = Some(NS.into());
    pod
}

/// The name of task `task`'s state ConfigMap.
pub fn state_map(task: u64) -> String {
    format!("task-{task}-state")
}

/// One sensor replica serving on 127.0.0.1.
struct Replica {
    addr: SocketAddr,
    shutdown: Shutdown,
    /// Its connections to FakeKube and FakeGitHub: cut when the process exits.
    cables: [Cable; 2],
    /// Keeps the sensor (and its coordinator) alive.
    _sensor: Sensor,
}

/// A replica's network connection to one server: a TCP relay that, once
/// cut, drops every open connection and refuses new ones, as the network
/// does for a process that exited. It keeps its port, so no later listener
/// can take it over. A partition does the same until it heals.
struct Cable {
    addr: SocketAddr,
    cut: CancellationToken,
    /// The open connections' token while the cable carries traffic;
    /// `None` while partitioned.
    carrying: Arc<Mutex<Option<CancellationToken>>>,
}

impl Cable {
    async fn to(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = CancellationToken::new();
        let carrying = Arc::new(Mutex::new(Some(cut.child_token())));
        let token = cut.clone();
        let live = carrying.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let connection = live.lock().unwrap().clone();
                let Some(connection) = connection.filter(|_| !token.is_cancelled()) else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    // As a real proxy does: a copy that writes an answer in
                    // several segments must not wait for the peer's delayed
                    // ACK between them (Nagle's algorithm: ~40 ms a stall).
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = connection.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Self {
            addr,
            cut,
            carrying,
        }
    }

    fn cut(&self) {
        self.cut.cancel();
    }

    /// Drops every open connection and refuses new ones until [`heal`](Self::heal).
    fn partition(&self) {
        if let Some(open) = self.carrying.lock().unwrap().take() {
            open.cancel();
        }
    }

    /// Carries new connections again (unless the cable was cut for good).
    fn heal(&self) {
        let mut carrying = self.carrying.lock().unwrap();
        if carrying.is_none() {
            *carrying = Some(self.cut.child_token());
        }
    }
}

/// FakeKube, FakeGitHub, sensor replicas behind a balancer, and the
/// recorders reading back what happened.
pub struct Cluster {
    /// The API server.
    pub kube: FakeKube,
    /// GitHub.
    pub github: FakeGitHub,
    replicas: Mutex<Vec<Option<Replica>>>,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    balancer: JoinHandle<()>,
    /// Every pod deletion seen by the watch: pod name ▸ resourceVersion.
    pods_deleted: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Every task state version seen by the watch: (resourceVersion, state).
    state_versions: Arc<Mutex<Vec<(u64, RemediationState)>>>,
    /// Whether the watch keeps the state versions it sees.
    recording_states: Arc<std::sync::atomic::AtomicBool>,
    watches: Vec<JoinHandle<()>>,
    /// (task, run, head) of every run the scenario started.
    runs: Mutex<Vec<(String, String, String)>>,
    /// Task ▸ PR number.
    pulls: Mutex<BTreeMap<String, u64>>,
    /// Holder prefixes (`<identity>/`) of the replicas still running.
    live_holders: Mutex<Vec<String>>,
    /// The controller replicas' connections to FakeKube.
    controller_cables: Mutex<Vec<Cable>>,
}

impl Cluster {
    /// The fakes, `replicas` sensors behind the balancer, GitHub's webhook
    /// pointing at the balancer, and the watches recording every version.
    pub async fn start(replicas: usize) -> Self {
        Self::start_with(replicas, |kube| kube, |github| github).await
    }

    /// [`start`](Self::start) with FakeKube and FakeGitHub configured by
    /// `kube` and `github` (bounds, limits) before they start.
    pub async fn start_with(
        replicas: usize,
        kube: impl FnOnce(FakeKubeBuilder) -> FakeKubeBuilder,
        github: impl FnOnce(FakeGitHubBuilder) -> FakeGitHubBuilder,
    ) -> Self {
        resilience::tls::ensure_crypto_provider();
        let kube = kube(FakeKube::builder().crd(CodeRun::crd()))
            .start()
            .await
            .unwrap();
        let github = github(FakeGitHub::builder()).start().await.unwrap();
        let backends = Arc::new(Mutex::new(Vec::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = listener.local_addr().unwrap();
        let balancer = tokio::spawn(balance(listener, backends.clone()));
        let pods_deleted = Arc::new(Mutex::new(BTreeMap::new()));
        let state_versions = Arc::new(Mutex::new(Vec::new()));
        let recording_states = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let watches = vec![
            tokio::spawn(record_pod_deletions(kube.client(), pods_deleted.clone())),
            tokio::spawn(record_state_versions(
                kube.client(),
                state_versions.clone(),
                recording_states.clone(),
            )),
        ];
        let cluster = Self {
            kube,
            github,
            replicas: Mutex::new(Vec::new()),
            backends,
            balancer,
            pods_deleted,
            state_versions,
            recording_states,
            watches,
            runs: Mutex::new(Vec::new()),
            pulls: Mutex::new(BTreeMap::new()),
            live_holders: Mutex::new(Vec::new()),
            controller_cables: Mutex::new(Vec::new()),
        };
        for _ in 0..replicas {
            cluster.start_replica().await;
        }
        let url = url::Url::parse(&format!("http://{front}{}", sensor::WEBHOOK_PATH)).unwrap();
        cluster
            .github
            .webhooks()
            .configure(WebhookConfig::new(url).with_secret(SECRET))
            .unwrap();
        cluster
    }

    /// Starts one more sensor replica (or a restarted one: a new process,
    /// nothing in memory) and puts it behind the balancer; its index.
    pub async fn start_replica(&self) -> usize {
        let index = self.replicas.lock().unwrap().len();
        let config = Config {
            port: 0,
            dev: false,
            identity: format!("sensor-{index}"),
            webhook_secret: Some(SecretString::from(SECRET)),
            repositories: vec![format!("{OWNER}/{REPO}")],
            github_token: Some(SecretString::from(self.github.token().to_owned())),
            drain_timeout_seconds: 5,
            ..Config::default()
        };
        let kube_cable = Cable::to(self.kube.addr()).await;
        let github_cable = Cable::to(github_addr(&self.github)).await;
        let client = self.client_via(&kube_cable);
        let octocrab = octocrab::Octocrab::builder()
            .base_uri(format!("http://{}", github_cable.addr))
            .unwrap()
            .personal_token(self.github.token().to_owned())
            .add_retry_config(octocrab::service::middleware::retry::RetryConfig::None)
            .build()
            .unwrap();
        let parts = wiring::cluster_parts_with(&config, client, octocrab).unwrap();
        let shutdown = Shutdown::new();
        let sensor = Sensor::new(&config, parts, shutdown.clone()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        sensor.spawn(listener).unwrap();
        self.backends.lock().unwrap().push(addr);
        self.live_holders
            .lock()
            .unwrap()
            .push(format!("{}/", config.identity));
        self.replicas.lock().unwrap().push(Some(Replica {
            addr,
            shutdown,
            cables: [kube_cable, github_cable],
            _sensor: sensor,
        }));
        index
    }

    /// Stops replica `index` as SIGTERM would: out of the balancer first,
    /// then a drain of its in-flight work bounded by `drain`, then the
    /// process exits (its connections are cut, whatever still runs in it
    /// can no longer reach anything). The drain's exit code.
    pub async fn stop_replica(&self, index: usize, drain: Duration) -> u8 {
        let replica = self.replicas.lock().unwrap()[index].take().unwrap();
        self.backends.lock().unwrap().retain(|a| *a != replica.addr);
        let gone = format!("sensor-{index}/");
        self.live_holders.lock().unwrap().retain(|h| *h != gone);
        replica.shutdown.trigger();
        let report = replica.shutdown.drain(drain).await;
        for cable in &replica.cables {
            cable.cut();
        }
        report.exit_code()
    }

    /// Starts a controller replica `identity` on the cluster, with no
    /// webhook route (GitHub delivers to the sensors): coordinator workers,
    /// and the recovery loop every second once it is elected leader.
    pub async fn start_controller(&self, identity: &str) -> Shutdown {
        self.start_controller_every(identity, 1).await
    }

    /// [`start_controller`](Self::start_controller) with its recovery loop
    /// every `recovery_interval_seconds`.
    pub async fn start_controller_every(
        &self,
        identity: &str,
        recovery_interval_seconds: u64,
    ) -> Shutdown {
        let config = controller::Config {
            port: 0,
            identity: identity.to_owned(),
            repositories: vec![format!("{OWNER}/{REPO}")],
            github_token: Some(SecretString::from(self.github.token().to_owned())),
            recovery_interval_seconds,
            shutdown_timeout: 5,
            ..controller::Config::default()
        };
        let settings = wiring::backend_settings(&config.sensor_config()).unwrap();
        let cable = Cable::to(self.kube.addr()).await;
        let clients = Clients {
            kube: Some(self.client_via(&cable)),
            github: Some(self.github.octocrab().unwrap()),
        };
        let backends = Backends::build(BackendChoice::PRODUCTION, &settings, clients).unwrap();
        let shutdown = Shutdown::new();
        let controller =
            controller::Controller::over(&config, backends, None, shutdown.clone()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        controller.spawn(listener).await.unwrap();
        self.live_holders
            .lock()
            .unwrap()
            .push(format!("{identity}/"));
        self.controller_cables.lock().unwrap().push(cable);
        shutdown
    }

    /// A client of FakeKube whose connections go through `cable`.
    fn client_via(&self, cable: &Cable) -> kube::Client {
        let mut config = self.kube.config();
        config.cluster_url = format!("{}://{}", self.kube.url().scheme(), cable.addr)
            .parse()
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// Cuts every sensor and controller replica off the API server: their
    /// open connections dropped, new ones refused, until [`heal`](Self::heal).
    /// FakeKube itself, GitHub and the test's own view are untouched.
    pub fn partition(&self) {
        self.each_kube_cable(Cable::partition);
    }

    /// Ends a [`partition`](Self::partition).
    pub fn heal(&self) {
        self.each_kube_cable(Cable::heal);
    }

    fn each_kube_cable(&self, act: fn(&Cable)) {
        for replica in self.replicas.lock().unwrap().iter().flatten() {
            act(&replica.cables[0]);
        }
        for cable in self.controller_cables.lock().unwrap().iter() {
            act(cable);
        }
    }

    /// Opens PR `task` from [`branch`] at `head`, labelled [`WAITING`]; its
    /// `opened` delivery is answered.
    pub async fn pull(&self, task: u64, head: &str) {
        let opened = self
            .github
            .add_pull(OWNER, REPO, task, head, &branch(task), [WAITING])
            .unwrap();
        self.pulls.lock().unwrap().insert(task.to_string(), task);
        self.answered(&opened).await;
    }

    /// Pushes `head` to PR `task`; the delivery ids (push, synchronize).
    pub fn push(&self, task: u64, head: &str) -> Vec<DeliveryId> {
        self.github
            .push_to_pull(OWNER, REPO, task, &[head])
            .unwrap()
    }

    /// Waits until every delivery in `ids` was attempted; their status codes.
    pub async fn answered(&self, ids: &[DeliveryId]) -> Vec<u16> {
        let mut codes = Vec::new();
        for id in ids {
            let delivery = self.github.webhooks().attempted(*id).await.unwrap();
            codes.push(delivery.outcome.status_code().unwrap_or_default());
        }
        codes
    }

    /// The quality, testing and review runs of `task` on `head`, each with
    /// a pod that stops `stop_ms` after SIGTERM; their names.
    pub async fn agents_on(&self, task: u64, head: &str, stop_ms: u64) -> Vec<String> {
        let mut names = Vec::new();
        for role in ROLES {
            let name = format!("t{task}-{role}-{}", &head[head.len() - 7..]);
            self.run(task, &name, role, head, stop_ms).await;
            names.push(name);
        }
        names
    }

    /// A running CodeRun `name` and its pod `<name>-pod`, owned by it
    /// (blockOwnerDeletion, so a Foreground delete waits for the pod).
    pub async fn run(&self, task: u64, name: &str, role: &str, head: &str, stop_ms: u64) {
        let runs: Api<CodeRun> = Api::namespaced(self.kube.client(), NS);
        let run = runs
            .create(
                &PostParams::default(),
                &CodeRun::labelled(name, run_spec(task, role, head)),
            )
            .await
            .unwrap();
        let pod = agent_pod(&run, stop_ms);
        let pods: Api<Pod> = Api::namespaced(self.kube.client(), NS);
        pods.create(&PostParams::default(), &pod).await.unwrap();
        self.runs
            .lock()
            .unwrap()
            .push((task.to_string(), name.to_owned(), head.to_owned()));
    }

    /// How many delete requests named run `name` or its pod.
    pub fn deletes_of(&self, name: &str) -> usize {
        let log = self.kube.requests();
        log.count(&RequestFilter::any().verb("delete").name(name))
            + log.count(
                &RequestFilter::any()
                    .verb("delete")
                    .name(format!("{name}-pod")),
            )
    }

    /// Whether run `name` or its pod still exists.
    pub fn exists(&self, name: &str) -> bool {
        self.kube.peek::<CodeRun>(NS, name).is_some()
            || self.kube.peek::<Pod>(NS, &format!("{name}-pod")).is_some()
    }

    /// The labels of PR `task` now.
    pub fn labels(&self, task: u64) -> Vec<String> {
        self.github.labels(OWNER, REPO, task)
    }

    /// The state of `task` now.
    pub async fn state(&self, task: u64) -> Option<RemediationState> {
        let store = StateStore::new(ConfigMapBackend::new(self.kube.client(), NS));
        store.get(&task.to_string()).await.unwrap().map(|s| s.state)
    }

    /// Corrupts `task`'s state as an outside writer would: its JSON cut off
    /// half-way through the cancellation history. The broken text.
    pub async fn corrupt_state(&self, task: u64) -> String {
        let maps: Api<ConfigMap> = Api::namespaced(self.kube.client(), NS);
        let mut map = maps.get(&state_map(task)).await.unwrap();
        let data = map.data.as_mut().unwrap();
        let text = data[state_store::naming::KEY_STATE].clone();
        let cut = text.find("\"cancellation_history\"").unwrap() + 30;
        let broken = text[..cut].to_owned();
        data.insert(state_store::naming::KEY_STATE.into(), broken.clone());
        maps.replace(&state_map(task), &PostParams::default(), &map)
            .await
            .unwrap();
        broken
    }

    /// Stops keeping task state versions (a long run's memory is then the
    /// system's and the fakes', not this recorder's); the history then
    /// judges "recorded while its pod existed" on nothing.
    pub fn stop_recording_states(&self) {
        self.recording_states.store(false, Ordering::Relaxed);
    }

    /// Whether the state watch has seen the version of `task`'s state
    /// FakeKube stores now (the watch runs behind the store under load).
    pub fn state_watch_caught_up(&self, task: u64) -> bool {
        let Some(rv) = self
            .kube
            .peek::<ConfigMap>(NS, &state_map(task))
            .and_then(|cm| cm.resource_version())
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return true;
        };
        self.state_versions
            .lock()
            .unwrap()
            .iter()
            .any(|(seen, _)| *seen == rv)
    }

    /// Every version of `task`'s state the watch saw, in resourceVersion order.
    pub fn state_versions(&self, task: u64) -> Vec<(u64, RemediationState)> {
        let id = task.to_string();
        let mut versions: Vec<_> = self
            .state_versions
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, state)| state.task_id == id)
            .cloned()
            .collect();
        versions.sort_by_key(|(rv, _)| *rv);
        versions.dedup_by_key(|(rv, _)| *rv);
        versions
    }

    /// Waits (at most [`PATIENCE`]) until `done` holds of the world.
    pub async fn until(&self, what: &str, mut done: impl AsyncFnMut(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done(self).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not reached within {PATIENCE:?}: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every stale run is gone, every PR's labels moved, and no
    /// task Lease is held (only the recovery leader's): the world has
    /// converged.
    pub async fn converged(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let violations = self.history_with(true).await.violations();
            if violations.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not converged within {PATIENCE:?} (stale runs gone, labels moved, task locks free): {violations:#?}\nleases: {:#?}",
                self.lease_holders().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every Lease with its holder, renew time and transitions, as FakeKube
    /// stores them now.
    pub async fn lease_holders(&self) -> Vec<String> {
        let leases: Api<Lease> = Api::namespaced(self.kube.client(), NS);
        leases
            .list(&ListParams::default())
            .await
            .unwrap()
            .iter()
            .map(|l| {
                let spec = l.spec.clone().unwrap_or_default();
                format!(
                    "{} holder={:?} renewed={:?} transitions={:?} rv={:?}",
                    l.name_any(),
                    spec.holder_identity,
                    spec.renew_time.map(|t| t.0),
                    spec.lease_transitions,
                    l.resource_version()
                )
            })
            .collect()
    }

    /// The history as the fakes recorded it so far, with every PR's labels
    /// expected at [`MOVED`] (a supersession moved them) and never at
    /// [`WAITING`]. A Lease held by a replica that still runs is not
    /// orphaned (a late, redundant delivery may be checking the task); one
    /// held by a stopped replica is.
    pub async fn history(&self) -> CancellationHistory {
        self.history_with(false).await
    }

    /// The history; `strict`: only the recovery leader may hold a Lease.
    async fn history_with(&self, strict: bool) -> CancellationHistory {
        let mut h = CancellationHistory::new();
        let runs = self.runs.lock().unwrap().clone();
        self.pod_watch_caught_up(&runs).await;
        for (task, run, head) in &runs {
            h.run(task, run, head);
            if self.kube.peek::<Pod>(NS, &format!("{run}-pod")).is_some() {
                h.pod_exists_at_end(run);
            }
        }
        let log = self.kube.requests();
        for (_, run, _) in &runs {
            for name in [run.clone(), format!("{run}-pod")] {
                for record in log.matching(&RequestFilter::any().verb("delete").name(name)) {
                    h.delete_requested(run, record.seq);
                }
            }
        }
        for (pod, rv) in self.pods_deleted.lock().unwrap().iter() {
            if let Some(run) = pod.strip_suffix("-pod") {
                h.pod_gone(run, *rv);
            }
        }
        for (rv, state) in self.state_versions.lock().unwrap().iter() {
            for record in cancelled(state) {
                for run in &record.targets {
                    h.recorded_cancelled(&state.task_id, run, *rv);
                }
            }
        }
        let pulls = self.pulls.lock().unwrap().clone();
        for (task, number) in &pulls {
            if let Some(head) = self.github.branch_head(OWNER, REPO, &branch(*number)) {
                h.newest_head(task, head);
            }
            if let Some(state) = self.state(*number).await {
                let targets: Vec<String> = cancelled(&state)
                    .flat_map(|r| r.targets.iter().cloned())
                    .collect();
                h.final_cancellation_records(task, targets);
            }
            h.labels_at_end(*number, self.labels(*number));
            h.target_labels(*number, [MOVED], [WAITING]);
        }
        let leases: Api<Lease> = Api::namespaced(self.kube.client(), NS);
        for lease in leases.list(&ListParams::default()).await.unwrap() {
            let holder = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty());
            let leader = lease.name_any().starts_with(controller::LEADER_LOCK_PREFIX);
            if let Some(holder) = holder.as_ref().filter(|_| leader || !strict)
                && self
                    .live_holders
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|live| holder.starts_with(live.as_str()))
            {
                h.live_holder(holder.clone());
            }
            h.lease_at_end(lease.name_any(), holder);
        }
        h
    }
}

impl Cluster {
    /// Waits (at most [`PATIENCE`]) until the pod watch has reported the
    /// deletion of every pod of `runs` that is gone from FakeKube's store.
    /// The two watches run apart: under load the state watch may already
    /// show a run recorded cancelled while the pod watch has not yet
    /// delivered its pod's deletion, which would read as "recorded while
    /// its pod existed". A pod gone from the store always reaches the watch
    /// (events arrive in resourceVersion order), so waiting for it is exact.
    async fn pod_watch_caught_up(&self, runs: &[(String, String, String)]) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let lagging = runs.iter().any(|(_, run, _)| {
                let pod = format!("{run}-pod");
                self.kube.peek::<Pod>(NS, &pod).is_none()
                    && !self.pods_deleted.lock().unwrap().contains_key(&pod)
            });
            if !lagging || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.balancer.abort();
        for watch in &self.watches {
            watch.abort();
        }
    }
}

/// FakeGitHub's address (it serves on 127.0.0.1).
fn github_addr(github: &FakeGitHub) -> SocketAddr {
    let url = github.url();
    SocketAddr::new(
        std::net::Ipv4Addr::LOCALHOST.into(),
        url.port_or_known_default().unwrap(),
    )
}

/// The cancellation records of `state` whose outcome is `Cancelled`.
fn cancelled(state: &RemediationState) -> impl Iterator<Item = &state_store::CancellationRecord> {
    state
        .cancellation_history
        .iter()
        .filter(|r| r.outcome == CancellationOutcome::Cancelled)
}

/// Hands each accepted connection to the next live backend, round robin,
/// as a Service's proxy does; a backend that refuses is skipped.
async fn balance(listener: TcpListener, backends: Arc<Mutex<Vec<SocketAddr>>>) {
    let next = Arc::new(AtomicUsize::new(0));
    while let Ok((mut inbound, _)) = listener.accept().await {
        let backends = backends.clone();
        let next = next.clone();
        tokio::spawn(async move {
            let live = backends.lock().unwrap().clone();
            for _ in 0..live.len() {
                let addr = live[next.fetch_add(1, Ordering::Relaxed) % live.len()];
                if let Ok(mut outbound) = TcpStream::connect(addr).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    return;
                }
            }
        });
    }
}

/// Records the resourceVersion of every pod deletion (the DELETED event's
/// object carries the version of its removal).
async fn record_pod_deletions(client: kube::Client, out: Arc<Mutex<BTreeMap<String, u64>>>) {
    let pods: Api<Pod> = Api::namespaced(client, NS);
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        if let Ok(watcher::Event::Delete(pod)) = event
            && let Some(rv) = pod.resource_version().and_then(|v| v.parse().ok())
        {
            out.lock().unwrap().entry(pod.name_any()).or_insert(rv);
        }
    }
}

/// Records every version of every task state ConfigMap with its resourceVersion.
async fn record_state_versions(
    client: kube::Client,
    out: Arc<Mutex<Vec<(u64, RemediationState)>>>,
    recording: Arc<std::sync::atomic::AtomicBool>,
) {
    let maps: Api<ConfigMap> = Api::namespaced(client, NS);
    let config = watcher::Config::default().labels("app=remediation-state");
    let mut events = watcher(maps, config).boxed();
    while let Some(event) = events.next().await {
        let map = match event {
            Ok(watcher::Event::Apply(map) | watcher::Event::InitApply(map)) => map,
            _ => continue,
        };
        let rv = map.resource_version().and_then(|v| v.parse().ok());
        let state = map
            .data
            .as_ref()
            .and_then(|d| d.get(state_store::naming::KEY_STATE))
            .and_then(|text| serde_json::from_str::<RemediationState>(text).ok());
        if let (Some(rv), Some(state)) = (rv, state)
            && recording.load(Ordering::Relaxed)
        {
            out.lock().unwrap().push((rv, state));
        }
    }
}
