//! A webhook receiver for FakeGitHub's tests: a hyper server on 127.0.0.1
//! that records every request in arrival order and answers each with a
//! configurable status after a configurable (tokio) delay.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use octocrab::models::webhook_events::WebhookEvent;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use url::Url;

/// The secret test webhooks are signed with.
pub const SECRET: &str = "It's a Secret to Everybody";

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("missing header {name}"))
            .to_str()
            .unwrap()
    }

    pub fn event(&self) -> &str {
        self.header("x-github-event")
    }

    pub fn guid(&self) -> &str {
        self.header("x-github-delivery")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The payload, parsed by octocrab as a receiver would.
    pub fn parsed(&self) -> WebhookEvent {
        WebhookEvent::try_from_header_and_body(self.event(), &self.body)
            .unwrap_or_else(|e| panic!("octocrab cannot parse the {} payload: {e}", self.event()))
    }
}

#[derive(Debug, Clone, Copy)]
struct Behaviour {
    status: u16,
    delay: Duration,
}

/// The receiver; stops when dropped.
pub struct Receiver {
    pub url: Url,
    received: mpsc::UnboundedReceiver<Received>,
    behaviour: Arc<Mutex<Behaviour>>,
    server: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    /// Listens on 127.0.0.1 at `/webhook/github` and answers 202.
    pub async fn start() -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let url = Url::parse(&format!(
            "http://{}/webhook/github",
            listener.local_addr().unwrap()
        ))
        .unwrap();
        let behaviour = Arc::new(Mutex::new(Behaviour {
            status: 202,
            delay: Duration::ZERO,
        }));
        let (tx, received) = mpsc::unbounded_channel();
        let answer = Arc::clone(&behaviour);
        let server = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let tx = tx.clone();
                let answer = Arc::clone(&answer);
                connections.spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        let answer = Arc::clone(&answer);
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let _ = tx.send(Received {
                                headers: parts.headers,
                                body,
                            });
                            let Behaviour { status, delay } = *answer.lock().unwrap();
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"thanks")));
                            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url,
            received,
            behaviour,
            server,
        }
    }

    /// Answers every later request with `status`.
    pub fn answer_with(&self, status: u16) {
        self.behaviour.lock().unwrap().status = status;
    }

    /// Answers every later request after `delay` of tokio time.
    pub fn delay(&self, delay: Duration) {
        self.behaviour.lock().unwrap().delay = delay;
    }

    /// The next request received (fails after 10 s of waiting; not for
    /// paused-time tests).
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.received.recv())
            .await
            .expect("no webhook arrived within 10 s")
            .expect("receiver stopped")
    }

    /// The next `n` requests, in arrival order.
    pub async fn take(&mut self, n: usize) -> Vec<Received> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            all.push(self.next().await);
        }
        all
    }

    /// A request already received, if any.
    pub fn try_next(&mut self) -> Option<Received> {
        self.received.try_recv().ok()
    }
}

/// A 127.0.0.1 URL nothing listens on.
pub async fn closed_port_url() -> Url {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    Url::parse(&format!("http://{addr}/webhook/github")).unwrap()
}

/// A bearer with an App JWT's shape, as octocrab's App auth sends (the fake
/// does not verify signatures).
pub fn app_jwt() -> String {
    use base64::Engine as _;
    let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.{}",
        enc(r#"{"alg":"RS256","typ":"JWT"}"#),
        enc(r#"{"iat":1700000000,"exp":1700000600,"iss":"12345"}"#),
        enc("not-a-real-signature")
    )
}
