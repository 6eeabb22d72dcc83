//! Shared by the integration tests: the worker served in-process on
//! 127.0.0.1:0, an SSE reader, a token source fed by hand, a fake
//! OpenAI-compatible upstream, and log capture.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::response::sse::{Event, Sse};
use axum::routing::post;
use futures::{Stream, StreamExt, stream};
use inference_worker::{Config, GenerateRequest, TokenSource, TokenStream, Worker};
use job_tracker::{JobOutcome, JobState};
use resilience::Shutdown;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// Generous bound for anything that should take milliseconds.
pub const WITHIN: Duration = Duration::from_secs(5);

pub struct TestWorker {
    pub addr: SocketAddr,
    pub worker: Worker,
    pub shutdown: Shutdown,
    pub http: reqwest::Client,
}

impl TestWorker {
    pub async fn start(config: Config) -> Self {
        let shutdown = Shutdown::new();
        let config = Config { port: 0, ..config };
        let worker = Worker::new(config, shutdown.clone()).unwrap();
        Self::serve(worker, shutdown).await
    }

    pub async fn start_with(config: Config, source: Arc<dyn TokenSource>) -> Self {
        let shutdown = Shutdown::new();
        let config = Config { port: 0, ..config };
        let worker = Worker::with_source(config, source, shutdown.clone()).unwrap();
        Self::serve(worker, shutdown).await
    }

    pub async fn serve(worker: Worker, shutdown: Shutdown) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        worker.spawn(listener);
        resilience::tls::ensure_crypto_provider();
        Self {
            addr,
            worker,
            shutdown,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` as JSON to `path`, with `correlation_id` as
    /// `X-Correlation-Id` when given.
    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
        correlation_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(id) = correlation_id {
            request = request.header("x-correlation-id", id);
        }
        request.send().await.unwrap()
    }

    /// Starts a job and returns its event stream.
    pub async fn execute(&self, body: Value) -> SseReader {
        let response = self.post_json("/execute", &body, None).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseReader::new(response)
    }

    /// `POST /execute` expected to be refused: its status and error body.
    pub async fn execute_status(&self, body: Value) -> (u16, Value) {
        status_and_json(self.post_json("/execute", &body, None).await).await
    }

    /// `POST /cancel`: its status and body.
    pub async fn cancel(&self, body: Value) -> (u16, Value) {
        status_and_json(self.post_json("/cancel", &body, None).await).await
    }

    pub async fn post_raw(&self, path: &str, body: String) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs `body` with `content_type`, or with no `Content-Type` at all,
    /// as `curl -d` and hand-written clients do.
    pub async fn post_as(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> reqwest::Response {
        let mut request = self.http.post(self.url(path)).body(body.to_owned());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send().await.unwrap()
    }

    /// The value of one series on `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |value| value.trim().parse().unwrap())
    }

    pub fn status_outcome(&self, job_id: &str) -> JobOutcome {
        match self.worker.tracker().get(job_id).unwrap().state {
            JobState::Finished { outcome, .. } => outcome,
            other => panic!("{job_id} has not finished: {other:?}"),
        }
    }
}

async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    (response.status().as_u16(), response.json().await.unwrap())
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// A minimal SSE parser over a streaming reqwest body.
pub struct SseReader {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>,
    buffer: String,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next event, or `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event.event = name.trim().to_owned();
                    } else if let Some(data) = line.strip_prefix("data:") {
                        event.data.push_str(data.trim_start());
                    }
                }
                if event.data.is_empty() {
                    continue; // keep-alive comment
                }
                return Some(event);
            }
            let chunk = tokio::time::timeout(WITHIN, self.body.next())
                .await
                .expect("the stream stalled")?
                .ok()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Every remaining event until the stream ends.
    pub async fn collect_all(mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

/// A token source whose tokens the test sends by hand; each `generate` hands
/// the test a sender, which closes when the worker drops the stream.
pub struct HandFedSource {
    feeds: mpsc::UnboundedSender<mpsc::Sender<String>>,
}

impl HandFedSource {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<mpsc::Sender<String>>) {
        let (feeds, receiver) = mpsc::unbounded_channel();
        (Self { feeds }, receiver)
    }
}

impl TokenSource for HandFedSource {
    fn generate(&self, _request: &GenerateRequest) -> TokenStream {
        let (sender, receiver) = mpsc::channel(1);
        self.feeds.send(sender).unwrap();
        Box::pin(stream::unfold(receiver, |mut receiver| async move {
            let token = receiver.recv().await?;
            Some((Ok(token), receiver))
        }))
    }

    fn name(&self) -> &'static str {
        "hand-fed"
    }
}

/// A fake OpenAI-compatible server: streams ` tok0`, ` tok1`, … every 10 ms
/// (then `[DONE]` after `limit` chunks, if set), records request bodies, and
/// signals when its client went away mid-stream.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Value>>>,
    pub client_gone: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
}

impl FakeUpstream {
    pub async fn start(limit: Option<usize>) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (gone_tx, gone_rx) = oneshot::channel();
        let gone_tx = Arc::new(Mutex::new(Some(gone_tx)));
        let recorded = Arc::clone(&requests);
        let app = Router::new().route(
            "/v1/completions",
            post(move |axum::Json(body): axum::Json<Value>| {
                recorded.lock().unwrap().push(body);
                let guard = GoneGuard(gone_tx.lock().unwrap().take());
                let chunks = stream::unfold((0usize, guard), move |(n, guard)| async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let data = match limit {
                        Some(limit) if n == limit => "[DONE]".to_owned(),
                        Some(limit) if n > limit => return None,
                        _ => json!({"choices": [{"text": format!(" tok{n}"), "index": 0}]})
                            .to_string(),
                    };
                    Some((
                        Ok::<_, std::convert::Infallible>(Event::default().data(data)),
                        (n + 1, guard),
                    ))
                });
                async move { Sse::new(chunks) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            addr,
            requests,
            client_gone: Arc::new(Mutex::new(Some(gone_rx))),
        }
    }

    pub fn url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}", self.addr)).unwrap()
    }
}

/// Fires when the fake upstream's response stream is dropped: hyper drops it
/// when the connection to the worker goes away.
pub struct GoneGuard(Option<oneshot::Sender<()>>);

impl Drop for GoneGuard {
    fn drop(&mut self) {
        if let Some(sender) = self.0.take() {
            let _ = sender.send(());
        }
    }
}

/// Polls `condition` until it holds, failing after [`WITHIN`].
pub async fn eventually<F, Fut>(condition: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Log lines (JSON) written by every test in this binary: one global
/// subscriber, so tests find their own lines by job id.
#[derive(Clone)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Every line, parsed.
    pub fn lines(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The lines whose event fields include `job_id` = `job_id`.
    pub fn of_job(&self, job_id: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["fields"]["job_id"] == job_id || l["span"]["job_id"] == job_id)
            .collect()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the binary's log capture (once) and returns it. The JSON format
/// is the production one: event fields under `fields`, the request span's
/// (`correlation_id`, `job_id`) under `span`.
pub fn capture_logs() -> CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs(Arc::new(Mutex::new(Vec::new())));
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
    .clone()
}
