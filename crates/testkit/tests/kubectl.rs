#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The real `kubectl` against FakeKube: create, get, replace (stale and
//! current resourceVersion) and delete of Leases and ConfigMaps must behave
//! as against a cluster. Skipped, with a message, when kubectl is not on
//! PATH (CI installs Debian's kubernetes-client).

#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use testkit::calls::Outcome;
use testkit::kube::FakeKube;
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
