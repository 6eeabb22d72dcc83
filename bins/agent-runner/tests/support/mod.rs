//! Shared by the integration tests: a fake incident stream (axum on
//! 127.0.0.1:0) that can emit live, answer any status, drop connections and
//! restart; settings for an in-process runner; metric and log helpers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_runner::Runner;
use agent_runner::config::{AgentCommand, Config, Settings};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use clap::Parser;
use resilience::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the fake server does with one connection.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answer this status.
    Status(u16),
    /// Send these chunks, then close the body cleanly.
    Close(Vec<String>),
    /// Send these chunks, wait a moment, then break the connection.
    Abort(Vec<String>),
    /// Send these chunks, then everything `emit`ted, until killed.
    Live(Vec<String>),
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    connections: usize,
}

/// A fake SSE incident stream.
#[derive(Clone)]
pub struct FakeStream {
    script: Arc<Mutex<Script>>,
    live: broadcast::Sender<String>,
    pub addr: SocketAddr,
    kill: Arc<Mutex<CancellationToken>>,
    server: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl FakeStream {
    /// Serves `replies` in order, then `Live` forever.
    pub async fn start(replies: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (live, _) = broadcast::channel(1024);
        let fake = Self {
            script: Arc::new(Mutex::new(Script {
                replies: replies.into(),
                connections: 0,
            })),
            live,
            addr: listener.local_addr().unwrap(),
            kill: Arc::new(Mutex::new(CancellationToken::new())),
            server: Arc::new(Mutex::new(None)),
        };
        fake.serve(listener);
        fake
    }

    fn serve(&self, listener: TcpListener) {
        let app = Router::new()
            .route("/events", get(events))
            .with_state(self.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        *self.server.lock().unwrap() = Some(task);
    }

    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// Sends `chunk` to every live connection.
    pub fn emit(&self, chunk: impl Into<String>) {
        self.live.send(chunk.into()).unwrap();
    }

    /// Sends one incident as an SSE event.
    pub fn incident(&self, id: &str, severity: &str) {
        self.emit(incident(id, severity));
    }

    pub fn connections(&self) -> usize {
        self.script.lock().unwrap().connections
    }

    /// Stops listening and breaks every open connection.
    pub async fn kill(&self) {
        {
            let mut kill = self.kill.lock().unwrap();
            kill.cancel();
            *kill = CancellationToken::new();
        }
        let task = self.server.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

/// An incident event's text.
pub fn incident(id: &str, severity: &str) -> String {
    format!("data: {{\"id\":\"{id}\",\"severity\":\"{severity}\",\"summary\":\"test\"}}\n\n")
}

async fn events(State(fake): State<FakeStream>) -> Response {
    let reply = {
        let mut script = fake.script.lock().unwrap();
        script.connections += 1;
        script
            .replies
            .pop_front()
            .unwrap_or(Reply::Live(Vec::new()))
    };
    let killed = fake.kill.lock().unwrap().clone();
    let body: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> = match reply {
        Reply::Status(code) => return StatusCode::from_u16(code).unwrap().into_response(),
        Reply::Close(chunks) => Box::pin(futures::stream::iter(
            chunks.into_iter().map(|c| Ok(Bytes::from(c))),
        )),
        Reply::Abort(chunks) => {
            let head = futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))));
            let tail = futures::stream::once(async move {
                // Let hyper flush what came before, or it drops the response.
                tokio::time::sleep(Duration::from_millis(100)).await;
                broken()
            });
            Box::pin(futures::StreamExt::chain(head, tail))
        }
        Reply::Live(chunks) => {
            // Subscribed before answering, so nothing emitted after the
            // client saw the connection is lost.
            let live = fake.live.subscribe();
            Box::pin(futures::stream::unfold(
                (chunks.into_iter(), live, killed, false),
                |(mut chunks, mut live, killed, done)| async move {
                    if done {
                        return None;
                    }
                    if let Some(chunk) = chunks.next() {
                        return Some((Ok(Bytes::from(chunk)), (chunks, live, killed, false)));
                    }
                    let (item, done) = tokio::select! {
                        () = killed.cancelled() => (broken(), true),
                        chunk = live.recv() => match chunk {
                            Ok(chunk) => (Ok(Bytes::from(chunk)), false),
                            Err(_) => (broken(), true),
                        },
                    };
                    Some((item, (chunks, live, killed, done)))
                },
            ))
        }
    };
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

fn broken() -> Result<Bytes, std::io::Error> {
    Err(std::io::Error::other("connection broken"))
}

/// Settings for an in-process runner on ephemeral ports reading `url` as
/// cluster `test`, running `sh -c script`, with fast reconnects.
pub fn settings(url: &str, script: &str) -> Settings {
    let config = Config::try_parse_from([
        "agent-runner",
        "--stream",
        &format!("test={url}"),
        "--agent-command",
        "true",
        "--metrics-port",
        "0",
        "--health-port",
        "0",
    ])
    .unwrap();
    config.validate().unwrap();
    let mut settings = config.settings();
    settings.agent_command = sh(script);
    settings.sse_reconnect_initial_delay = Duration::from_millis(20);
    settings.sse_reconnect_max_delay = Duration::from_millis(100);
    settings
}

/// Starts an in-process runner on `settings` (cluster `test`) and waits
/// until its stream is connected.
pub async fn start_connected(settings: Settings) -> (Runner, Shutdown) {
    let shutdown = Shutdown::new();
    let runner = Runner::start(settings, shutdown.clone()).await.unwrap();
    eventually("the stream is connected", || {
        sample(
            &runner.metrics_text(),
            r#"agent_runner_sse_connections_active{cluster="test"}"#,
        ) == 1.0
    })
    .await;
    (runner, shutdown)
}

pub fn sh(script: &str) -> AgentCommand {
    AgentCommand {
        program: "sh".to_owned(),
        args: vec!["-c".to_owned(), script.to_owned()],
    }
}

/// Every metric family the runner exposes: [`Metrics`]'s and its
/// shutdown's.
///
/// [`Metrics`]: agent_runner::Metrics
pub fn families() -> Vec<&'static str> {
    agent_runner::metrics::FAMILIES
        .into_iter()
        .chain([
            "agent_runner_shutdown_phase",
            "agent_runner_shutdown_drain_duration_seconds",
            "agent_runner_shutdown_abandoned_tasks",
        ])
        .collect()
}

/// Whether `name` (a sample's name, or a word in a query) belongs to `family`.
pub fn is_sample_of(name: &str, family: &str) -> bool {
    name == family
        || name
            .strip_prefix(family)
            .is_some_and(|rest| ["_bucket", "_sum", "_count"].contains(&rest))
}

/// Checks every sample's label set against the values the runner may use:
/// `cluster` is one of `clusters`, every other label has its fixed values,
/// and each family has exactly its own label names. An incident or agent
/// id, or any value a stream sent, in a label fails here.
pub fn assert_bounded_labels(text: &str, clusters: &[&str]) {
    use agent_runner::AgentStatus;
    use agent_runner::filter::{Severity, UNKNOWN_SEVERITY};
    use agent_runner::metrics::{
        AGENT_DURATION_BUCKETS, FILTER_REASONS, SSE_CONNECTION_DURATION_BUCKETS, SSE_REASONS, TASKS,
    };

    let owned = |values: &[&str]| values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>();
    let le = |buckets: &[f64]| {
        buckets
            .iter()
            .map(|b| format!("{b:?}"))
            .chain(["+Inf".to_owned()])
            .collect::<Vec<_>>()
    };
    let cluster = ("cluster", owned(clusters));
    let severities: Vec<String> = Severity::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .chain([UNKNOWN_SEVERITY.to_owned()])
        .collect();
    let statuses: Vec<String> = AgentStatus::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, _) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').unwrap()),
            None => (series, ""),
        };
        let family = families()
            .into_iter()
            .find(|family| is_sample_of(name, family))
            .unwrap_or_else(|| panic!("{name} is not a documented family"));
        let allowed: Vec<(&str, Vec<String>)> = match family {
            "agent_runner_events_received_total" => {
                vec![cluster.clone(), ("severity", severities.clone())]
            }
            "agent_runner_events_filtered_total" => {
                vec![cluster.clone(), ("reason", owned(&FILTER_REASONS))]
            }
            "agent_runner_sse_reconnections_total" | "agent_runner_sse_connection_errors_total" => {
                vec![cluster.clone(), ("reason", owned(&SSE_REASONS))]
            }
            "agent_runner_agents_completed_total" => {
                vec![cluster.clone(), ("status", statuses.clone())]
            }
            "agent_runner_task_panics_total" => vec![("task", owned(&TASKS))],
            "agent_runner_agent_duration_seconds" if name.ends_with("_bucket") => {
                vec![("le", le(&AGENT_DURATION_BUCKETS))]
            }
            "agent_runner_sse_connection_duration_seconds" if name.ends_with("_bucket") => {
                vec![("le", le(&SSE_CONNECTION_DURATION_BUCKETS))]
            }
            "agent_runner_build_info" => vec![
                ("version", owned(&[env!("CARGO_PKG_VERSION")])),
                ("git_commit", owned(&[agent_runner::config::GIT_COMMIT])),
                ("build_date", owned(&[agent_runner::config::BUILD_DATE])),
            ],
            "agent_runner_agent_duration_seconds"
            | "agent_runner_sse_connection_duration_seconds"
            | "agent_runner_circuit_breaker_state"
            | "agent_runner_up"
            | "agent_runner_shutdown_phase"
            | "agent_runner_shutdown_drain_duration_seconds"
            | "agent_runner_shutdown_abandoned_tasks" => Vec::new(),
            _ => vec![cluster.clone()],
        };
        let found: Vec<(&str, &str)> = if labels.is_empty() {
            Vec::new()
        } else {
            labels
                .split(',')
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap();
                    (key, value.trim_matches('"'))
                })
                .collect()
        };
        let names: Vec<&str> = found.iter().map(|(key, _)| *key).collect();
        let expected: Vec<&str> = allowed.iter().map(|(key, _)| *key).collect();
        assert_eq!(names, expected, "label names of {line}");
        for ((key, value), (_, values)) in found.iter().zip(&allowed) {
            assert!(
                values.iter().any(|v| v == value),
                "{key}={value:?} is not an allowed value in {line}"
            );
        }
    }
}

/// The value of one sample (`name{labels}` exactly as exposed), or panics.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{series} not found in\n{text}"))
}

/// Polls `check` every 20 ms for up to 30 s of real time.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP client that ignores proxy settings.
pub fn http() -> reqwest::Client {
    resilience::tls::ensure_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}
