//! A sensor on memory backends served over loopback HTTP, the world it
//! acts on (task states, runs and pods, pull requests), and signed
//! deliveries built from GitHub's own example payloads.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cancel_coordinator::{MemoryWorkloads, PodBehaviour, RunSeed};
use jiff::Timestamp;
use label_cas::{MemoryPullRequests, PrRef, PullRequest};
use lease_lock::MemoryLeases;
use reqwest::StatusCode;
use resilience::{DrainReport, Shutdown};
use secrecy::SecretString;
use sensor::{Config, MemoryPullLookup, Sensor, SensorParts, wiring};
use serde_json::Value;
use state_store::{MemoryBackend, RemediationState, StateBackend, StateStore};

pub const SECRET: &str = "sensor test secret";
pub const PREVIOUS: &str = "the previous secret";
pub const OLD: &str = "1111111111111111111111111111111111111111";
pub const NEW: &str = "2222222222222222222222222222222222222222";
pub const NEWER: &str = "3333333333333333333333333333333333333333";
pub const TASK: &str = "42";
pub const BRANCH: &str = "task-42-fix";

pub const PUSH: &str = include_str!(
    "../../../../crates/github-webhook/tests/fixtures/push_with-new-branch.payload.json"
);
pub const SYNCHRONIZE: &str = include_str!(
    "../../../../crates/github-webhook/tests/fixtures/pull_request_synchronize.payload.json"
);
pub const OPENED: &str = include_str!(
    "../../../../crates/github-webhook/tests/fixtures/pull_request_opened.payload.json"
);
pub const CLOSED: &str = include_str!(
    "../../../../crates/github-webhook/tests/fixtures/pull_request_closed.payload.json"
);
pub const LABELED: &str = include_str!(
    "../../../../crates/github-webhook/tests/fixtures/pull_request_labeled.payload.json"
);
pub const PING: &str =
    include_str!("../../../../crates/github-webhook/tests/fixtures/ping.payload.json");

/// A `--dev` configuration for acme/widgets and the fixtures' repository,
/// signed with [`SECRET`] (and [`PREVIOUS`], being rotated out).
pub fn config() -> Config {
    Config {
        port: 0,
        dev: true,
        webhook_secret: Some(SecretString::from(SECRET)),
        webhook_secret_previous: Some(SecretString::from(PREVIOUS)),
        repositories: vec!["acme/widgets".into(), "Codertocat/Hello-World".into()],
        drain_timeout_seconds: 5,
        ..Config::default()
    }
}

/// The memory backends a sensor's coordinator acts on.
pub struct World {
    pub states: Arc<dyn StateBackend>,
    pub store: StateStore,
    pub leases: MemoryLeases,
    pub workloads: MemoryWorkloads,
    pub github: Arc<MemoryPullRequests>,
    pub lookup: Arc<MemoryPullLookup>,
    pub pr: PrRef,
}

impl World {
    pub fn new() -> Self {
        Self::on(Arc::new(MemoryBackend::new()))
    }

    /// Over another state backend (a slow or failing one).
    pub fn on(states: Arc<dyn StateBackend>) -> Self {
        Self {
            store: StateStore::with_config(states.clone(), wiring::store_config(&config())),
            states,
            leases: MemoryLeases::new(),
            workloads: MemoryWorkloads::new(),
            github: Arc::new(MemoryPullRequests::new()),
            lookup: Arc::new(MemoryPullLookup::new()),
            pr: PrRef::new("acme", "widgets", 7).unwrap(),
        }
    }

    /// What a sensor built with `config` runs on.
    pub fn parts(&self, config: &Config) -> SensorParts {
        let coordinator = wiring::coordinator(
            config,
            self.leases.clone(),
            self.store.clone(),
            Arc::new(self.workloads.clone()),
            self.github.clone(),
            self.github.labels().clone(),
        )
        .unwrap();
        SensorParts {
            store: StateStore::with_config(self.states.clone(), wiring::store_config(config)),
            coordinator: Some(coordinator),
            pulls: self.lookup.clone(),
        }
    }

    /// PR 7 open from [`BRANCH`] at `head` on GitHub.
    pub fn pull_at(&self, head: &str) {
        self.github
            .set_pull(&self.pr, PullRequest::open(head, BRANCH).unwrap())
            .unwrap();
        self.lookup.open(&self.pr, BRANCH, &[]);
    }

    /// Quality, testing and review runs of `head`, whose pods stop 10 ms
    /// after SIGTERM.
    pub fn agents_on(&self, head: &str) -> Vec<String> {
        ["quality", "testing", "review"]
            .iter()
            .map(|role| {
                let name = format!("{role}-{}", &head[..7]);
                self.workloads.add_run(
                    RunSeed::new(name.clone(), TASK, *role, head)
                        .behaving(PodBehaviour::StopsAfter(Duration::from_millis(10))),
                );
                name
            })
            .collect()
    }

    pub async fn state(&self, task: &str) -> Option<RemediationState> {
        self.store.get(task).await.unwrap().map(|s| s.state)
    }

    /// Waits (real time, at most 10 s) until `task`'s state satisfies `done`.
    pub async fn state_when(
        &self,
        task: &str,
        done: impl Fn(&RemediationState) -> bool,
    ) -> RemediationState {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(state) = self.state(task).await
                && done(&state)
            {
                return state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the state of {task} did not get there within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (real time, bounded) until `runs` are all gone.
    pub async fn until_gone(&self, runs: &[String]) {
        until(|| runs.iter().all(|r| self.workloads.get(r).is_none())).await;
    }
}

/// Polls `done` every 10 ms for at most 10 s.
pub async fn until(mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A sensor serving on 127.0.0.1.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub sensor: Sensor,
    pub http: reqwest::Client,
}

/// One answer: status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }

    pub fn field(&self, name: &str) -> &str {
        self.body[name].as_str().unwrap_or_default()
    }
}

impl Running {
    pub async fn start(config: &Config, parts: SensorParts) -> Self {
        resilience::tls::ensure_crypto_provider();
        let shutdown = Shutdown::new();
        let sensor = Sensor::new(config, parts, shutdown.clone()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        sensor.spawn(listener).unwrap();
        Self {
            addr,
            shutdown,
            sensor,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` as event `event`, delivery `guid` from hook 1, signed
    /// with [`SECRET`].
    pub async fn deliver(&self, event: &str, body: &str, guid: &str) -> Answer {
        self.deliver_from(event, body, guid, "1").await
    }

    pub async fn deliver_from(&self, event: &str, body: &str, guid: &str, hook: &str) -> Answer {
        let request = self
            .webhook(event, guid, hook)
            .header("content-type", "application/json")
            .header(
                "x-hub-signature-256",
                github_webhook::sign(SECRET.as_bytes(), body.as_bytes()),
            )
            .body(body.to_owned());
        self.send(request).await
    }

    /// A request to the webhook route with the delivery headers only.
    pub fn webhook(&self, event: &str, guid: &str, hook: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(sensor::WEBHOOK_PATH))
            .header("x-github-event", event)
            .header("x-github-delivery", guid)
            .header("x-github-hook-id", hook)
            .header("user-agent", "GitHub-Hookshot/test")
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { status, body }
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the sample `name{labels}` (labels as they are printed).
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn stop(self) -> DrainReport {
        self.shutdown.trigger();
        self.shutdown.drain(Duration::from_secs(5)).await
    }
}

pub fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).unwrap()
}

fn retarget(json: &mut Value, repo: &str) {
    let (owner, name) = repo.split_once('/').unwrap();
    let repository = &mut json["repository"];
    repository["full_name"] = repo.into();
    repository["name"] = name.into();
    repository["owner"]["login"] = owner.into();
}

/// A push of `after` to `branch` of acme/widgets at `pushed_at`.
pub fn push(branch: &str, before: &str, after: &str, pushed_at: Timestamp) -> String {
    let mut json: Value = serde_json::from_str(PUSH).unwrap();
    retarget(&mut json, "acme/widgets");
    json["ref"] = format!("refs/heads/{branch}").into();
    json["before"] = before.into();
    json["after"] = after.into();
    json["created"] = false.into();
    json["repository"]["pushed_at"] = pushed_at.as_second().into();
    json.to_string()
}

/// A `pull_request` event `action` for PR 7 of acme/widgets from
/// [`BRANCH`] at `head`, last updated at `updated_at`.
pub fn pull_request(action: &str, head: &str, updated_at: Timestamp) -> String {
    let mut json: Value = serde_json::from_str(SYNCHRONIZE).unwrap();
    retarget(&mut json, "acme/widgets");
    json["action"] = action.into();
    json["number"] = 7.into();
    let pr = &mut json["pull_request"];
    pr["number"] = 7.into();
    pr["head"]["sha"] = head.into();
    pr["head"]["ref"] = BRANCH.into();
    pr["head"]["repo"]["full_name"] = "acme/widgets".into();
    pr["updated_at"] = updated_at.to_string().into();
    if action == "closed" {
        pr["state"] = "closed".into();
        pr["closed_at"] = updated_at.to_string().into();
    }
    json.to_string()
}
