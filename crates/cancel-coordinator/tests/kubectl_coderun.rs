//! The real `kubectl` with the shipped CRD: `deploy/crd/coderun.yaml` is
//! accepted as a CustomResourceDefinition, the `cr` short name resolves
//! through discovery, and a CodeRun written by hand as YAML is a run
//! `KubeCodeRuns` reads. Skipped, with a message, when kubectl is not on
//! PATH (CI installs Debian's kubernetes-client).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cancel_coordinator::{CodeRunConfig, KubeCodeRuns, Workloads};
use testkit::kube::FakeKube;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Guard against a hanging kubectl; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

const RUN: &str = "\
apiVersion: supersede.dev/v1alpha1
kind: CodeRun
metadata:
  name: quality-1111111
  namespace: agents
  labels:
    supersede.dev/task-id: \"42\"
    supersede.dev/role: quality
spec:
  taskId: \"42\"
  role: quality
  repository: acme/widgets
  pullRequest: 7
  branch: feature
  # Quoted: an all-digit sha would be a YAML number (FakeKube does not
  # check the CRD's schema, which a cluster would refuse it by).
  headSha: \"1111111111111111111111111111111111111111\"
  agent:
    image: agent:1
    args: [\"--check\"]
";

async fn kubectl(kubeconfig: &Path, cache: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
    }
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("kubectl hung")
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_installs_the_shipped_crd_and_a_hand_written_coderun_is_a_run() {
    let installed = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        eprintln!("kubectl is not on PATH: skipping (install Debian's kubernetes-client)");
        return;
    }
    let kube = FakeKube::start().await.unwrap();
    let kubeconfig = kube.kubeconfig().unwrap().to_owned();
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kubectl-coderun-{}", kube.addr().port()));
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crd/coderun.yaml");

    let created = kubectl(
        &kubeconfig,
        &cache,
        &["create", "-f", crd.to_str().unwrap()],
        None,
    )
    .await;
    assert!(created.contains("coderuns.supersede.dev"), "{created}");
    kubectl(&kubeconfig, &cache, &["create", "-f", "-"], Some(RUN)).await;
    let listed = kubectl(
        &kubeconfig,
        &cache,
        &[
            "get",
            "cr",
            "-n",
            "agents",
            "-l",
            "supersede.dev/task-id=42",
            "-o",
            "name",
        ],
        None,
    )
    .await;
    assert_eq!(listed.trim(), "coderun.supersede.dev/quality-1111111");

    let workloads = KubeCodeRuns::new(kube.client(), "agents", CodeRunConfig::default()).unwrap();
    let runs = workloads.runs("42").await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].name, "quality-1111111");
    assert_eq!(runs[0].role, "quality");
    assert_eq!(runs[0].head_sha, "1111111111111111111111111111111111111111");
    assert_eq!(runs[0].phase, "", "no status yet");
    assert!(!runs[0].terminal);
    let _ = std::fs::remove_dir_all(&cache);
}
