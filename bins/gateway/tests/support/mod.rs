//! Shared by the gateway's tests: replicas served over real HTTP on
//! 127.0.0.1, on one FakeKube or on shared memory backends.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use gateway::{Gateway, RemediationRequest, Settings};
use kube::CustomResourceExt;
use kube::api::{Api, ListParams};
use resilience::Shutdown;
use testkit::kube::FakeKube;

pub const NAMESPACE: &str = "default";

/// One replica serving on a free port until its shutdown fires.
pub struct Replica {
    pub gateway: Gateway,
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub server: tokio::task::JoinHandle<()>,
}

impl Replica {
    pub async fn serve(gateway: Gateway) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let server = {
            let (gateway, shutdown) = (gateway.clone(), shutdown.clone());
            tokio::spawn(async move { gateway.serve(listener, shutdown).await.unwrap() })
        };
        Self {
            gateway,
            addr,
            shutdown,
            server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Test settings: short leases so a failed release costs seconds, not 15.
pub fn settings(identity: &str) -> Settings {
    Settings {
        lease_duration: Duration::from_secs(3),
        lock_timeout: Duration::from_secs(20),
        ..Settings::new(NAMESPACE, identity)
    }
}

/// A FakeKube serving the RemediationRequest CRD.
pub async fn fake_kube() -> FakeKube {
    FakeKube::builder()
        .crd(RemediationRequest::crd())
        .request_log_capacity(200_000)
        .start()
        .await
        .unwrap()
}

/// `n` replicas on `kube`, each with its own client (its own connections).
pub async fn kube_replicas(kube: &FakeKube, n: usize) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for i in 0..n {
        let gateway = Gateway::cluster(kube.client(), settings(&format!("gateway-{i}"))).unwrap();
        replicas.push(Replica::serve(gateway).await);
    }
    replicas
}

/// Every RemediationRequest FakeKube stores.
pub async fn stored(kube: &FakeKube) -> Vec<RemediationRequest> {
    let api: Api<RemediationRequest> = Api::namespaced(kube.client(), NAMESPACE);
    api.list(&ListParams::default()).await.unwrap().items
}

pub fn http() -> reqwest::Client {
    resilience::tls::ensure_crypto_provider();
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// POSTs `body` to `url`: the status and the JSON answer.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, serde_json::Value) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// A generic signal whose fingerprint is `fingerprint`.
pub fn signal(fingerprint: &str) -> String {
    serde_json::json!({
        "source": "prometheus",
        "alertName": "KubePodCrashLooping",
        "severity": "critical",
        "namespace": "payments",
        "resource": {"kind": "Deployment", "name": "api"},
        "labels": {"team": "payments"},
        "fingerprint": fingerprint,
    })
    .to_string()
}
