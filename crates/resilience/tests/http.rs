//! `Health` and `Shutdown` over real HTTP on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use resilience::{Health, Shutdown};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A server on an ephemeral port that stops when the returned token fires
/// (or the test ends and the runtime drops it).
struct Server {
    base: String,
    stop: CancellationToken,
    client: reqwest::Client,
}

impl Server {
    async fn start(app: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
                .unwrap();
        });
        resilience::tls::ensure_crypto_provider();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Self { base, stop, client }
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (status, response.text().await.unwrap())
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let (status, body) = self.get(path).await;
        (status, serde_json::from_str(&body).unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test]
async fn healthz_is_ok_until_shutdown_starts_then_503() {
    let shutdown = Shutdown::new();
    let server = Server::start(shutdown.health().router()).await;
    assert_eq!(
        server.get("/healthz").await,
        (StatusCode::OK, "ok\n".to_owned())
    );
    shutdown.trigger();
    assert_eq!(
        server.get("/healthz").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned()
        )
    );
}

#[tokio::test]
async fn readyz_is_200_when_ready_and_every_check_passes() {
    let health = Health::new();
    health.add_check("kube", || async { Ok(()) });
    let server = Server::start(health.router()).await;
    let (status, body) = server.get_json("/readyz").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "starts not ready: {body}"
    );
    health.set_ready(true);
    assert_eq!(
        server.get_json("/readyz").await,
        (StatusCode::OK, json!({"status": "ready"}))
    );
}

#[tokio::test]
async fn readyz_is_503_naming_the_failing_check_and_its_message() {
    let health = Health::new();
    health.set_ready(true);
    health.add_check("kube", || async { Ok(()) });
    health.add_check("github", || async {
        Err("rate limited until 12:00".to_owned())
    });
    let server = Server::start(health.router()).await;
    assert_eq!(
        server.get_json("/readyz").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "status": "unready",
                "failed": [{"check": "github", "message": "rate limited until 12:00"}]
            })
        )
    );
}

#[tokio::test]
async fn readyz_reports_a_hanging_check_as_timed_out_within_the_bound() {
    let bound = Duration::from_millis(200);
    let health = Health::with_check_timeout(bound);
    health.set_ready(true);
    health.add_check("database", std::future::pending);
    let server = Server::start(health.router()).await;
    let started = Instant::now();
    let (status, body) = server.get_json("/readyz").await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({
            "status": "unready",
            "failed": [{"check": "database", "message": "timed out after 200ms"}]
        })
    );
    assert!(took >= bound, "answered before the bound: {took:?}");
    assert!(took < bound * 10, "the bound was not enforced: {took:?}");
}

#[tokio::test]
async fn readyz_is_503_once_shutting_down() {
    let shutdown = Shutdown::new();
    let health = shutdown.health();
    health.set_ready(true);
    let server = Server::start(health.router()).await;
    assert_eq!(server.get("/readyz").await.0, StatusCode::OK);
    shutdown.trigger();
    assert_eq!(
        server.get_json("/readyz").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "status": "unready",
                "failed": [{"check": "shutdown", "message": "shutting down"}]
            })
        )
    );
}

/// A service whose `/work` handler runs its work as a tracked task: a drain
/// waits for it, and the hard-cancel token ends it.
fn service(shutdown: &Shutdown, work: Duration, aborted: Arc<AtomicBool>) -> Router {
    let tracked = shutdown.clone();
    let work_route = get(move || {
        let shutdown = tracked.clone();
        let aborted = aborted.clone();
        async move {
            let hard = shutdown.hard_cancel_token();
            let task = shutdown.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(work) => (StatusCode::OK, "done"),
                    () = hard.cancelled() => {
                        aborted.store(true, Ordering::SeqCst);
                        (StatusCode::SERVICE_UNAVAILABLE, "cancelled by shutdown")
                    }
                }
            });
            task.await
                .unwrap_or((StatusCode::INTERNAL_SERVER_ERROR, "task failed"))
        }
    });
    shutdown.health().router().route("/work", work_route)
}

#[tokio::test]
async fn drain_lets_an_in_flight_request_finish() {
    let shutdown = Shutdown::new();
    let aborted = Arc::new(AtomicBool::new(false));
    let server = Arc::new(
        Server::start(service(
            &shutdown,
            Duration::from_millis(300),
            aborted.clone(),
        ))
        .await,
    );
    let request = tokio::spawn({
        let server = server.clone();
        async move { server.get("/work").await }
    });
    // Wait until the work is in flight.
    while shutdown.tracker().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = shutdown.drain(Duration::from_secs(10)).await;
    assert!(report.completed, "{report:?}");
    assert_eq!(report.exit_code(), 0);
    assert_eq!(request.await.unwrap(), (StatusCode::OK, "done".to_owned()));
    assert!(!aborted.load(Ordering::SeqCst));
    assert_eq!(
        server.get("/healthz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn drain_cancels_a_request_that_outlives_the_timeout() {
    let shutdown = Shutdown::new();
    let aborted = Arc::new(AtomicBool::new(false));
    let server = Arc::new(
        Server::start(service(
            &shutdown,
            Duration::from_secs(3600),
            aborted.clone(),
        ))
        .await,
    );
    let request = tokio::spawn({
        let server = server.clone();
        async move { server.get("/work").await }
    });
    while shutdown.tracker().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let timeout = Duration::from_millis(300);
    let report = shutdown.drain(timeout).await;
    assert!(!report.completed);
    assert_eq!(
        (report.in_flight, report.cancelled, report.abandoned),
        (1, 1, 0)
    );
    assert!(
        report.elapsed >= timeout && report.elapsed < timeout * 10,
        "{report:?}"
    );
    assert_eq!(report.exit_code(), 1);
    assert!(aborted.load(Ordering::SeqCst));
    assert_eq!(
        request.await.unwrap(),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "cancelled by shutdown".to_owned()
        )
    );
}

#[tokio::test]
async fn a_served_router_finishes_its_request_in_flight_and_the_drain_waits_for_it() {
    let shutdown = Shutdown::new();
    let entered = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let app = {
        let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
        Router::new().route(
            "/slow",
            get(move || {
                let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
                async move {
                    entered.notify_one();
                    release.notified().await;
                    "done"
                }
            }),
        )
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow", listener.local_addr().unwrap());
    let server = shutdown.serve(listener, app);
    resilience::tls::ensure_crypto_provider();
    let request =
        tokio::spawn(async move { reqwest::get(url).await.unwrap().text().await.unwrap() });
    entered.notified().await;

    shutdown.trigger();
    let drain = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { shutdown.drain(Duration::from_secs(10)).await }
    });
    tokio::task::yield_now().await;
    assert!(
        !drain.is_finished(),
        "the drain did not wait for the request in flight"
    );
    release.notify_one();
    assert_eq!(request.await.unwrap(), "done");
    let report = drain.await.unwrap();
    assert!(report.completed && report.exit_code() == 0, "{report:?}");
    assert!(server.is_finished());
}
