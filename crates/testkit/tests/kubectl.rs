#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The real `kubectl` against FakeKube: create, get, replace (stale and
//! current resourceVersion) and delete of Leases and ConfigMaps must behave
//! as against a cluster. Skipped, with a message, when kubectl is not on
//! PATH (CI installs Debian's kubernetes-client).

#![cfg(feature = "cli")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt, Resource, ResourceExt};
use serde_json::{Value, json};
use support::CodeRun;
use testkit::calls::Outcome;
use testkit::kube::{FakeKube, PodTermination};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Guard against hanging forever; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(30);

const LEASE: &str = "\
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: cancel-task-42
  labels:
    app: supersede
spec:
  holderIdentity: pod-a/1
  leaseDurationSeconds: 15
";

const CONFIG_MAP: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: task-42-state
  labels:
    app: remediation-state
data:
  state.json: '{\"version\":\"v1\"}'
";

/// kubectl with an isolated home and cache, pointed only at `kubeconfig`.
struct Kubectl {
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

impl Kubectl {
    /// `None` (and a message) when there is no kubectl to run.
    async fn find(kubeconfig: &Path) -> Option<Self> {
        let probe = Command::new("kubectl")
            .args(["version", "--client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        match probe {
            Ok(status) if status.success() => Some(Self {
                kubeconfig: kubeconfig.to_owned(),
                home: tempfile::tempdir().unwrap(),
            }),
            _ => {
                eprintln!("kubectl is not on PATH: skipping (install Debian's kubernetes-client)");
                None
            }
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.home.path().join("cache"))
            .arg("--request-timeout=20s")
            .args(args)
            // Nothing from the developer's environment: no other cluster,
            // no plugins or credential helpers, no prompts.
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.home.path())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).await.unwrap();
            drop(pipe);
        }
        tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .expect("kubectl finished")
            .unwrap()
    }

    /// Runs and requires success; returns stdout.
    async fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and requires failure; returns stderr.
    async fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin).await;
        assert!(
            !out.status.success(),
            "kubectl {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    async fn get_json(&self, kind: &str, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["get", kind, name, "-o", "json"], None).await).unwrap()
    }
}

#[tokio::test]
async fn kubectl_creates_gets_replaces_and_deletes_like_against_a_cluster() {
    let kube = FakeKube::start().await.unwrap();
    let Some(kubectl) = Kubectl::find(kube.kubeconfig().unwrap()).await else {
        return;
    };

    // create from YAML
    let out = kubectl.ok(&["create", "-f", "-"], Some(LEASE)).await;
    assert!(
        out.contains("lease.coordination.k8s.io/cancel-task-42 created"),
        "{out}"
    );
    let out = kubectl.ok(&["create", "-f", "-"], Some(CONFIG_MAP)).await;
    assert!(out.contains("configmap/task-42-state created"), "{out}");
    let err = kubectl.fails(&["create", "-f", "-"], Some(LEASE)).await;
    assert!(err.contains("AlreadyExists"), "{err}");

    // get -o json
    let lease = kubectl.get_json("lease", "cancel-task-42").await;
    assert_eq!(lease["kind"], "Lease");
    assert_eq!(lease["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(lease["metadata"]["namespace"], "default");
    assert_eq!(lease["metadata"]["labels"]["app"], "supersede");
    assert_eq!(lease["spec"]["holderIdentity"], "pod-a/1");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
    assert!(
        lease["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );
    let cm = kubectl.get_json("configmap", "task-42-state").await;
    assert_eq!(cm["data"]["state.json"], "{\"version\":\"v1\"}");
    let listed = kubectl
        .ok(
            &["get", "leases", "-l", "app=supersede", "-o", "name"],
            None,
        )
        .await;
    assert_eq!(listed.trim(), "lease.coordination.k8s.io/cancel-task-42");

    // Someone else writes the Lease: kubectl's copy is now stale.
    let leases: Api<Lease> = Api::namespaced(kube.client(), "default");
    leases
        .patch(
            "cancel-task-42",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "pod-b/2"}})),
        )
        .await
        .unwrap();
    let mut stale = lease.clone();
    stale["spec"]["holderIdentity"] = json!("pod-a/1-again");
    let err = kubectl
        .fails(&["replace", "-f", "-"], Some(&stale.to_string()))
        .await;
    assert!(err.contains("Conflict"), "{err}");
    assert!(err.contains("the object has been modified"), "{err}");
    assert_eq!(
        leases
            .get("cancel-task-42")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("pod-b/2"),
        "the stale replace changed nothing"
    );

    // With the current resourceVersion the replace succeeds.
    let mut current = kubectl.get_json("lease", "cancel-task-42").await;
    current["spec"]["holderIdentity"] = json!("pod-c/3");
    let out = kubectl
        .ok(&["replace", "-f", "-"], Some(&current.to_string()))
        .await;
    assert!(out.contains("replaced"), "{out}");
    assert_eq!(
        leases
            .get("cancel-task-42")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("pod-c/3")
    );
    assert_eq!(
        kube.calls()
            .count_outcome(Some("update"), Some("leases"), &Outcome::Error(409)),
        1
    );

    // delete, then get fails NotFound.
    let out = kubectl
        .ok(&["delete", "lease", "cancel-task-42"], None)
        .await;
    assert!(out.contains("deleted"), "{out}");
    let err = kubectl
        .fails(&["get", "lease", "cancel-task-42"], None)
        .await;
    assert!(err.contains("NotFound"), "{err}");
    kubectl
        .ok(&["delete", "configmap", "task-42-state"], None)
        .await;
    let err = kubectl
        .fails(&["get", "configmap", "task-42-state"], None)
        .await;
    assert!(err.contains("NotFound"), "{err}");
}

#[tokio::test]
async fn fake_kube_binary_serves_kubectl_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut server = Command::new(env!("CARGO_BIN_EXE_fake-kube"))
        .arg("--port")
        .arg("0")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !kubeconfig.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no kubeconfig written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    if let Some(kubectl) = Kubectl::find(&kubeconfig).await {
        kubectl.ok(&["create", "-f", "-"], Some(CONFIG_MAP)).await;
        let names = kubectl.ok(&["get", "configmaps", "-o", "name"], None).await;
        assert_eq!(names.trim(), "configmap/task-42-state");
    } else {
        // Still prove the server answers, through kube.
        testkit::kube::ensure_crypto_provider();
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        client.apiserver_version().await.unwrap();
    }

    let pid = i32::try_from(server.id().unwrap()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(PATIENCE, server.wait())
        .await
        .expect("fake-kube exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!kubeconfig.exists(), "the kubeconfig is removed on exit");
}

/// Creates CodeRun `name` and two running Pods it owns (blocking its
/// deletion) whose containers ignore SIGTERM for `grace` seconds.
async fn code_run_with_pods(kube: &FakeKube, name: &str, grace: i64) {
    let runs: Api<CodeRun> = Api::namespaced(kube.client(), "default");
    let run = runs
        .create(&PostParams::default(), &support::code_run(name))
        .await
        .unwrap();
    let owner = OwnerReference {
        block_owner_deletion: Some(true),
        ..run.controller_owner_ref(&()).unwrap()
    };
    let pods: Api<Pod> = Api::namespaced(kube.client(), "default");
    for i in 0..2 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": format!("{name}-agent-{i}"),
                "labels": {"run": name},
                "ownerReferences": [owner],
            },
            "spec": {
                "containers": [{"name": "agent", "image": "agent:1"}],
                "terminationGracePeriodSeconds": grace,
            },
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for i in 0..2 {
        let pod = format!("{name}-agent-{i}");
        while kube
            .peek::<Pod>("default", &pod)
            .and_then(|p| p.status?.phase)
            .as_deref()
            != Some("Running")
        {
            assert!(tokio::time::Instant::now() < deadline, "{pod} never ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn pods_of(kube: &FakeKube, run: &str) -> Vec<Pod> {
    (0..2)
        .filter_map(|i| kube.peek::<Pod>("default", &format!("{run}-agent-{i}")))
        .collect()
}

#[tokio::test]
async fn kubectl_cascading_deletes_of_a_custom_resource_behave_as_against_a_cluster() {
    let kube = FakeKube::builder()
        .crd(CodeRun::crd())
        .pod_termination(PodTermination::AfterGracePeriod)
        .start()
        .await
        .unwrap();
    let Some(kubectl) = Kubectl::find(kube.kubeconfig().unwrap()).await else {
        return;
    };

    // --cascade=foreground: the CodeRun stays until its Pods are gone.
    code_run_with_pods(&kube, "run-1", 2).await;
    let out = kubectl
        .ok(
            &[
                "delete",
                "coderun",
                "run-1",
                "--cascade=foreground",
                "--wait=false",
            ],
            None,
        )
        .await;
    assert!(out.contains("\"run-1\" deleted"), "{out}");
    let run = kubectl.get_json("coderun", "run-1").await;
    assert!(run["metadata"]["deletionTimestamp"].is_string(), "{run}");
    assert_eq!(run["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let pods = pods_of(&kube, "run-1");
        let run = kube.peek::<CodeRun>("default", "run-1");
        assert!(
            pods.is_empty() || run.is_some(),
            "the CodeRun went while {} of its Pods remained",
            pods.len()
        );
        assert!(pods.iter().all(|p| p.metadata.deletion_timestamp.is_some()));
        if run.is_none() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "run-1 never went");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = kubectl.fails(&["get", "coderun", "run-1"], None).await;
    assert!(err.contains("NotFound"), "{err}");

    // The default (background): the CodeRun goes at once, its Pods after.
    code_run_with_pods(&kube, "run-2", 1).await;
    let out = kubectl.ok(&["delete", "coderun", "run-2"], None).await;
    assert!(out.contains("\"run-2\" deleted"), "{out}");
    assert!(kube.peek::<CodeRun>("default", "run-2").is_none());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !pods_of(&kube, "run-2").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "run-2's Pods were never collected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // --cascade=orphan: the Pods stay, without their owner.
    code_run_with_pods(&kube, "run-3", 1).await;
    kubectl
        .ok(&["delete", "coderun", "run-3", "--cascade=orphan"], None)
        .await;
    assert!(kube.peek::<CodeRun>("default", "run-3").is_none());
    let orphans = pods_of(&kube, "run-3");
    assert_eq!(orphans.len(), 2);
    assert!(
        orphans
            .iter()
            .all(|p| p.owner_references().is_empty() && p.metadata.deletion_timestamp.is_none())
    );

    // A force delete removes a Pod at once (answered with the Pod).
    let out = kubectl
        .ok(
            &[
                "delete",
                "pod",
                "run-3-agent-0",
                "--grace-period=0",
                "--force",
            ],
            None,
        )
        .await;
    assert!(out.contains("force deleted"), "{out}");
    assert!(kube.peek::<Pod>("default", "run-3-agent-0").is_none());
}

#[tokio::test]
async fn kubectl_reads_recorder_events_and_strategic_patches_only_built_in_kinds() {
    let kube = FakeKube::builder()
        .crd(CodeRun::crd())
        .start()
        .await
        .unwrap();
    let Some(kubectl) = Kubectl::find(kube.kubeconfig().unwrap()).await else {
        return;
    };
    kubectl.ok(&["create", "-f", "-"], Some(CONFIG_MAP)).await;
    let cm: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::default_namespaced(kube.client());
    let cm = cm.get("task-42-state").await.unwrap();

    // kubectl reads core/v1 Events; kube's Recorder writes events.k8s.io.
    support::publish_needs_intervention(kube.client(), &cm.object_ref(&())).await;
    let out = kubectl
        .ok(
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=task-42-state",
                "-o",
                "json",
            ],
            None,
        )
        .await;
    let list: Value = serde_json::from_str(&out).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{out}");
    assert_eq!(items[0]["message"], support::NOTE);
    assert_eq!(items[0]["involvedObject"]["kind"], "ConfigMap");

    // `kubectl patch` defaults to a strategic merge patch: refused for a
    // custom resource, with the API server's 415.
    let runs: Api<CodeRun> = Api::default_namespaced(kube.client());
    runs.create(&PostParams::default(), &support::code_run("run-9"))
        .await
        .unwrap();
    let err = kubectl
        .fails(
            &[
                "patch",
                "coderun",
                "run-9",
                "-p",
                r#"{"spec":{"head_sha":"def"}}"#,
            ],
            None,
        )
        .await;
    assert!(err.contains("is not supported by"), "{err}");
    assert!(err.contains("accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"), "{err}");
    kubectl
        .ok(
            &[
                "patch",
                "coderun",
                "run-9",
                "--type=merge",
                "-p",
                r#"{"spec":{"head_sha":"def"}}"#,
            ],
            None,
        )
        .await;
    assert_eq!(runs.get("run-9").await.unwrap().spec.head_sha, "def");
    kubectl
        .ok(
            &[
                "patch",
                "configmap",
                "task-42-state",
                "-p",
                r#"{"metadata":{"labels":{"patched":"yes"}}}"#,
            ],
            None,
        )
        .await;
}
