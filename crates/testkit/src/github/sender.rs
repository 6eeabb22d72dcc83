//! The webhook sender: POSTs each released delivery once, as GitHub's
//! Hookshot does, to `http://127.0.0.1` only, on a fresh connection, signed
//! with HMAC-SHA256, and judges the answer against GitHub's 10 s limit.
//!
//! The one rule: **one attempt per release, never a retry**, and the
//! sender adds no tokio timer: under paused time (`tokio::time::pause`) a
//! timer pending while a delivery's bytes are in flight would let tokio
//! jump the clock past it (it auto-advances whenever the runtime idles,
//! even with socket I/O outstanding) and time out a receiver that was only
//! waiting for the scheduler. So the limit is judged on tokio's clock when
//! the answer comes (a receiver that sleeps 11 s of paused time has timed
//! out, at once) and enforced on the wall clock by a watchdog thread (a
//! receiver that never answers is cut off after 10 real seconds).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use http::{Request, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::deliveries::{Answer, AttemptResult, Outgoing};
use super::server::Shared;

/// How long GitHub waits for a receiver's answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The most of a receiver's answer body that is kept (GitHub shows it in
/// the delivery's details; this only bounds memory).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// `sha256=<hex>`: the HMAC-SHA256 of `body` keyed with `secret`, as in
/// `X-Hub-Signature-256`.
pub(crate) fn signature_256(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => String::new(),
    }
}

/// Attempts each delivery id received, concurrently, until the channel
/// closes or the task is aborted (which aborts every attempt in flight).
pub(crate) async fn dispatch(shared: Arc<Shared>, mut released: mpsc::UnboundedReceiver<u64>) {
    let mut attempts = JoinSet::new();
    loop {
        tokio::select! {
            id = released.recv() => match id {
                Some(id) => {
                    attempts.spawn(attempt(Arc::clone(&shared), id));
                }
                None => break,
            },
            Some(_) = attempts.join_next(), if !attempts.is_empty() => {}
        }
    }
    while attempts.join_next().await.is_some() {}
}

/// Sends delivery `id` once and records how it ended.
async fn attempt(shared: Arc<Shared>, id: u64) {
    let Some(outgoing) = shared.store().hooks.start(id, jiff::Timestamp::now()) else {
        return;
    };
    let answer = post(&outgoing).await;
    tracing::debug!(id, result = ?answer.result, "fake GitHub: webhook delivery attempted");
    shared.store().hooks.finish(id, answer);
}

/// POSTs `outgoing` and waits at most [`TIMEOUT`] for the whole answer.
async fn post(outgoing: &Outgoing) -> Answer {
    let started = Instant::now();
    let watchdog = Watchdog::start(TIMEOUT);
    let exchange = exchange(outgoing);
    let result = tokio::select! {
        result = exchange => Some(result),
        () = watchdog.fired() => None,
    };
    let duration = started.elapsed();
    match result {
        Some(Ok((status, headers, body))) if duration < TIMEOUT => Answer {
            result: AttemptResult::Answered(status),
            duration,
            headers,
            body,
        },
        Some(Err(_)) if duration < TIMEOUT => Answer {
            result: AttemptResult::Unreachable,
            duration,
            headers: Vec::new(),
            body: String::new(),
        },
        // Too late, whether it answered or not: GitHub hung up at the limit.
        _ => Answer {
            result: AttemptResult::TimedOut,
            duration: TIMEOUT,
            headers: Vec::new(),
            body: String::new(),
        },
    }
}

type Exchanged = (u16, Vec<(String, String)>, String);

/// One request on a fresh connection to 127.0.0.1: status, headers and
/// (bounded) body of the answer.
async fn exchange(
    outgoing: &Outgoing,
) -> Result<Exchanged, Box<dyn std::error::Error + Send + Sync>> {
    let url = &outgoing.url;
    let port = url.port_or_known_default().ok_or("no port")?;
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection is driven beside the request and dropped with it.
    let mut driver = JoinSet::new();
    driver.spawn(connection);

    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let mut request = Request::post(target).header(header::HOST, format!("127.0.0.1:{port}"));
    for (name, value) in &outgoing.headers {
        request = request.header(*name, value.as_str());
    }
    let request = request.body(Full::new(outgoing.body.clone()))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body: Bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await?
        .to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// Fires once `limit` of wall-clock time has passed, unless dropped first;
/// a thread, not a tokio timer (see the module documentation).
struct Watchdog {
    fired: Option<oneshot::Receiver<()>>,
    /// Dropping it wakes the thread, which then exits without firing.
    _cancel: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn start(limit: Duration) -> Self {
        let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
        let (fire, fired) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("fake-github-webhook-timeout".into())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    cancelled.recv_timeout(limit)
                {
                    let _ = fire.send(());
                }
            });
        Self {
            // Without a thread the limit is still judged when the answer
            // comes; only a receiver that never answers is then not cut off.
            fired: spawned.ok().map(|_| fired),
            _cancel: cancel,
        }
    }

    async fn fired(mut self) {
        if let Some(fired) = self.fired.take()
            && fired.await.is_ok()
        {
            return;
        }
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_githubs_documented_example() {
        // docs.github.com, "Validating webhook deliveries": secret "It's a
        // Secret to Everybody", payload "Hello, World!".
        assert_eq!(
            signature_256("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
