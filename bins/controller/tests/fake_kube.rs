//! The real `controller` binary without `--dev`, on Kubernetes through a
//! kubeconfig — testkit's fake API server, the same one the `fake-kube`
//! binary serves — with GitHub in memory: task states in ConfigMaps,
//! Leases, supersede's CodeRuns and their pods, all through the real kube
//! client. The seeded runs are superseded by a signed push, seen through
//! the API and, when kubectl is on PATH, through `kubectl get coderuns`;
//! SIGTERM releases the recovery leadership and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use kube::CustomResourceExt;
use serde_json::Value;
use support::{PATIENCE, Running, SEED_HEAD, dev_push, pushed_head, superseded, wait_for};
use testkit::kube::FakeKube;
use tokio::process::Command;

/// kubectl with an isolated home, pointed only at the fake.
struct Kubectl {
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

impl Kubectl {
    /// `None` (and the reason, printed) when there is no kubectl to run.
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
                eprintln!(
                    "kubectl is not on PATH: the CRD is registered directly and the CodeRuns are \
                     checked through the API only (install Debian's kubernetes-client)"
                );
                None
            }
        }
    }

    /// `kubectl <args>`, which must succeed; its stdout.
    async fn run(&self, args: &[&str]) -> String {
        let output = tokio::time::timeout(
            PATIENCE,
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .arg("--cache-dir")
                .arg(self.home.path().join("cache"))
                .arg("--request-timeout=20s")
                .args(args)
                .env("HOME", self.home.path())
                .env("KUBECONFIG", &self.kubeconfig)
                .env_remove("KUBERNETES_SERVICE_HOST")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("kubectl hung")
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "kubectl {args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.run(&all).await).unwrap()
    }

    /// The heads of the CodeRuns not being deleted, sorted.
    async fn coderun_heads(&self) -> Vec<String> {
        let list = self.json(&["get", "coderuns"]).await;
        let mut heads: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["metadata"]["deletionTimestamp"].is_null())
            .map(|r| r["spec"]["headSha"].as_str().unwrap().to_owned())
            .collect();
        heads.sort();
        heads
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_kubeconfig_a_signed_push_supersedes_the_coderuns_and_sigterm_releases_leadership() {
    let kube = FakeKube::builder().port(0).start().await.unwrap();
    let kubeconfig = kube.kubeconfig().unwrap().to_owned();
    let kubectl = Kubectl::find(&kubeconfig).await;
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crd/");
    match &kubectl {
        Some(kubectl) => {
            let applied = kubectl.run(&["apply", "-f", crds.to_str().unwrap()]).await;
            assert!(applied.contains("coderuns.supersede.dev"), "{applied}");
        }
        None => kube
            .register_crd(&cancel_coordinator::CodeRun::crd())
            .unwrap(),
    }

    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, "a-fake-kube-webhook-secret\n").unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let controller = Running::start(
        &[
            "--github-backend",
            "memory",
            "--dev-fleet",
            "--dev-seed",
            "--dev-run-seconds",
            "300",
            "--webhook-secret-file",
            secret_file.to_str().unwrap(),
        ],
        &[
            ("KUBECONFIG", kubeconfig.as_path()),
            ("HOME", home.as_path()),
        ],
    )
    .await;
    let listening = controller.log("controller listening").await;
    assert_eq!(
        listening["fields"]["backends"],
        "state=kubernetes leases=kubernetes runs=kubernetes github=memory"
    );

    let task = format!("{}/v1/tasks/42", controller.url);
    wait_for(&task, "the seeded CodeRuns running", |d| {
        d["runs"].as_array().is_some_and(|runs| {
            runs.len() == 3
                && runs
                    .iter()
                    .all(|r| r["phase"] == "Running" && r["head_sha"] == SEED_HEAD)
        })
    })
    .await;
    if let Some(kubectl) = &kubectl {
        assert_eq!(kubectl.coderun_heads().await, vec![SEED_HEAD; 3]);
        let state = kubectl.json(&["get", "configmap", "task-42-state"]).await;
        assert_eq!(state["metadata"]["labels"]["task-id"], "42");
    }

    let stdout = dev_push(&controller.url, &["--secret", "a-fake-kube-webhook-secret"]).await;
    assert!(stdout.contains("webhook answered 202"), "{stdout}");
    let new = pushed_head(&stdout);
    wait_for(&task, "the supersession", |d| {
        superseded(d, SEED_HEAD, &new)
    })
    .await;
    if let Some(kubectl) = &kubectl {
        assert_eq!(kubectl.coderun_heads().await, vec![new.clone(); 3]);
        let leader = kubectl
            .json(&["get", "lease", "controller-recovery-leader"])
            .await;
        assert!(leader["spec"]["holderIdentity"].is_string(), "{leader}");
    }

    let status = controller.terminate().await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    if let Some(kubectl) = &kubectl {
        let leader = kubectl
            .json(&["get", "lease", "controller-recovery-leader"])
            .await;
        assert!(
            leader["spec"]["holderIdentity"]
                .as_str()
                .is_none_or(str::is_empty),
            "leadership was not released: {leader}"
        );
    }
}
