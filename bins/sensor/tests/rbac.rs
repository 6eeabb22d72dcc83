//! The sensor's Role (`deploy/sensor/rbac.yaml`) is derived from its code:
//! the sensor, wired as in a cluster (`wiring::cluster_parts_with`) against
//! FakeKube and FakeGitHub, runs every flow that reaches the API server —
//! a pull request opened, a push that supersedes a graceful run and one
//! that ignores SIGTERM (so the force delete runs) while another replica
//! holds the task's lock (so the sensor waits on its Lease, its first
//! watch failing so that it falls back to reading the Lease) and the first
//! intent annotation meets a 409 (so the run is re-read), a pull request
//! closed with a run left — and every (verb, resource) in FakeKube's
//! request log must be granted, and every grant used. The runs and pods are
//! seeded straight into FakeKube and the rival replica's requests carry
//! their own `Audit-ID`, so what is compared is the sensor's requests only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use cancel_coordinator::workloads::LABEL_CODE_RUN;
use cancel_coordinator::{AgentSpec, CodeRun, CodeRunSpec};
use common::{NEW, OLD, Running, TASK};
use k8s_openapi::api::core::v1::Pod;
use kube::{CustomResourceExt, Resource, ResourceExt};
use lease_lock::{AcquireOptions, KubeLeases, LeaseLock, LockConfig};
use sensor::{Config, wiring};
use testkit::faults::{InjectedError, Match};
use testkit::github::{DeliveryId, FakeGitHub, WebhookConfig};
use testkit::kube::rbac::{RbacDiff, role_permissions, used_permissions};
use testkit::kube::seeding::owned_pod;
use testkit::kube::{FakeKube, PodTermination};
use testkit::metrics_contract::repo_file;

const NS: &str = "default";
const BRANCH: &str = "task-42-fix";
/// The `Audit-ID` of another replica's requests.
const RIVAL: &str = "rival-replica";

/// Seeds a CodeRun of the task on `head` and its pod, which ends
/// `termination` after SIGTERM.
fn seed_run(kube: &FakeKube, name: &str, role: &str, head: &str, termination: PodTermination) {
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
    kube.seed([CodeRun::labelled(name, spec)]).unwrap();
    let run = kube.peek::<CodeRun>(NS, name).unwrap();
    let pod = owned_pod(
        &format!("{name}-pod"),
        run.controller_owner_ref(&()).unwrap(),
        [(LABEL_CODE_RUN, run.name_any())],
        termination,
    );
    kube.seed([pod]).unwrap();
}

/// Waits (real time, at most `limit`) until run `name` and its pod are gone.
async fn until_gone(kube: &FakeKube, name: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while kube.peek::<CodeRun>(NS, name).is_some()
        || kube.peek::<Pod>(NS, &format!("{name}-pod")).is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} not gone within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The task's lock as another replica holding it: its requests carry
/// `Audit-ID: rival-replica`.
fn rival_lock(kube: &FakeKube) -> LeaseLock {
    let client = kube.client_as(RIVAL).unwrap();
    LeaseLock::new(
        KubeLeases::new(client),
        LockConfig {
            prefix: wiring::LOCK_PREFIX.to_owned(),
            ..LockConfig::new("rival-0", NS)
        },
    )
    .unwrap()
}

async fn answered(github: &FakeGitHub, ids: &[DeliveryId]) -> Vec<u16> {
    let mut codes = Vec::new();
    for id in ids {
        let delivery = github.webhooks().attempted(*id).await.unwrap();
        codes.push(delivery.outcome.status_code().unwrap_or_default());
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sensors_role_grants_exactly_the_calls_its_flows_make() {
    resilience::tls::ensure_crypto_provider();
    let kube = FakeKube::builder()
        .crd(CodeRun::crd())
        .start()
        .await
        .unwrap();
    let github = FakeGitHub::start().await.unwrap();
    let config = Config {
        dev: false,
        github_token: Some(secrecy::SecretString::from(github.token().to_owned())),
        ..common::config()
    };
    let parts =
        wiring::cluster_parts_with(&config, kube.client(), github.octocrab().unwrap()).unwrap();
    let sensor = Running::start(&config, parts).await;
    let url = url::Url::parse(&sensor.url(sensor::WEBHOOK_PATH)).unwrap();
    github
        .webhooks()
        .configure(WebhookConfig::new(url).with_secret(common::SECRET))
        .unwrap();

    // Opened: the task's state is created.
    let opened = github
        .add_pull("acme", "widgets", 7, OLD, BRANCH, ["ready-for-qa"])
        .unwrap();
    assert_eq!(answered(&github, &opened).await, [202]);

    // Pushed: one stale run stops on SIGTERM, the other ignores it and is
    // force-deleted after the grace period (20 s) and the force delay (2 s).
    seed_run(
        &kube,
        "quality-old",
        "quality",
        OLD,
        PodTermination::StopsAfter(Duration::from_millis(10)),
    );
    seed_run(&kube, "testing-old", "testing", OLD, PodTermination::Never);
    let held = rival_lock(&kube)
        .acquire(&format!("task-{TASK}"), AcquireOptions::new())
        .await
        .unwrap();
    kube.faults().fail_next(
        Match::any().verb("patch").resource("coderuns"),
        1,
        InjectedError::Status(409),
    );
    // The waiter's first watch of the held Lease fails, so it reads the
    // Lease with a GET instead, as a waiter does whenever its watch cannot
    // report (lease-lock's fallback; the Role must allow it).
    kube.faults().fail_next(
        Match::any().verb("watch").resource("leases"),
        1,
        InjectedError::Status(500),
    );
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        held.release().await.unwrap();
    });
    let pushed = github.push_to_pull("acme", "widgets", 7, &[NEW]).unwrap();
    assert_eq!(answered(&github, &pushed).await, [202, 202]);
    release.await.unwrap();
    until_gone(&kube, "quality-old", Duration::from_secs(10)).await;
    until_gone(&kube, "testing-old", Duration::from_secs(60)).await;

    // Closed: the run left on the current head is cancelled too.
    seed_run(
        &kube,
        "review-new",
        "review",
        NEW,
        PodTermination::StopsAfter(Duration::from_millis(10)),
    );
    let closed = github.close_pull("acme", "widgets", 7).unwrap();
    assert_eq!(answered(&github, &closed).await, [202]);
    until_gone(&kube, "review-new", Duration::from_secs(10)).await;
    assert_eq!(sensor.stop().await.exit_code(), 0);

    let manifest = std::fs::read_to_string(repo_file("deploy/sensor/rbac.yaml")).unwrap();
    let granted = role_permissions(&manifest, "sensor").unwrap();
    let log = kube.requests().entries();
    let used = used_permissions(
        log.iter()
            .filter(|r| r.correlation.as_deref() != Some(RIVAL)),
    );
    assert!(kube.requests().evicted() == 0, "the log kept every request");
    let diff = RbacDiff::between(&granted, &used);
    assert!(
        diff.is_exact(),
        "deploy/sensor/rbac.yaml is not what the sensor calls:\n{diff}"
    );
}
