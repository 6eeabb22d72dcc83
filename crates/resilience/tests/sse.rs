//! The reconnecting SSE client against a fake server (axum, 127.0.0.1:0)
//! that can emit, drop the connection, answer with any status and restart.

#![cfg(feature = "sse")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use resilience::sse::{
    DisconnectReason, SseClient, SseEvent, SseItem, SsePolicy, SseSubscription, TimeoutPhase,
};
use resilience::{Backoff, BackoffPolicy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the fake server does with one incoming connection.
#[derive(Clone, Debug)]
enum Reply {
    /// Answer with this status (and a `Retry-After` in seconds, if given).
    Status(u16, Option<u64>),
    /// 200 with another content type.
    WrongContentType,
    /// 200 `text/event-stream`: send these chunks, then end as told.
    Stream(Vec<Chunk>, End),
}

#[derive(Clone, Debug)]
enum Chunk {
    Text(String),
    /// Sleep on the server side before the next chunk.
    Pause(Duration),
}

#[derive(Clone, Copy, Debug)]
enum End {
    /// Finish the body cleanly (the client sees the end of the stream).
    Close,
    /// Break the connection mid-body (the client sees a network error).
    Abort,
    /// Keep the connection open until the server is killed.
    Hold,
}

fn text(s: &str) -> Chunk {
    Chunk::Text(s.to_owned())
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    last_event_id: Option<String>,
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    /// Used once `replies` is empty.
    fallback: Option<Reply>,
    seen: Vec<Seen>,
}

#[derive(Clone)]
struct FakeSse {
    script: Arc<Mutex<Script>>,
    addr: SocketAddr,
    kill: Arc<Mutex<CancellationToken>>,
    server: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl FakeSse {
    async fn start(replies: Vec<Reply>, fallback: Option<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Self {
            script: Arc::new(Mutex::new(Script {
                replies: replies.into(),
                fallback,
                seen: Vec::new(),
            })),
            addr,
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

    fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// Stops listening and breaks every open connection.
    async fn kill(&self) {
        {
            let mut kill = self.kill.lock().unwrap();
            kill.cancel();
            *kill = CancellationToken::new();
        }
        let task = self.server.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            // The listener is closed once the aborted task is dropped.
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn seen(&self) -> Vec<Seen> {
        self.script.lock().unwrap().seen.clone()
    }
}

async fn events(State(fake): State<FakeSse>, headers: HeaderMap) -> Response {
    let reply = {
        let mut script = fake.script.lock().unwrap();
        script.seen.push(Seen {
            at: Instant::now(),
            last_event_id: headers
                .get("last-event-id")
                .map(|v| v.to_str().unwrap().to_owned()),
        });
        script
            .replies
            .pop_front()
            .or_else(|| script.fallback.clone())
            .unwrap_or(Reply::Status(503, None))
    };
    match reply {
        Reply::Status(code, retry_after) => {
            let mut response = StatusCode::from_u16(code).unwrap().into_response();
            if let Some(secs) = retry_after {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&secs.to_string()).unwrap(),
                );
            }
            response
        }
        Reply::WrongContentType => {
            ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
        }
        Reply::Stream(chunks, end) => {
            let killed = fake.kill.lock().unwrap().clone();
            let body = futures::stream::unfold(
                (chunks.into_iter(), Some(end)),
                move |(mut chunks, end)| {
                    let killed = killed.clone();
                    async move {
                        loop {
                            match chunks.next() {
                                Some(Chunk::Text(text)) => {
                                    return Some((Ok(Bytes::from(text)), (chunks, end)));
                                }
                                Some(Chunk::Pause(d)) => tokio::time::sleep(d).await,
                                None => break,
                            }
                        }
                        let broken = Err(std::io::Error::other("connection broken"));
                        match end? {
                            End::Close => None,
                            End::Abort => Some((broken, (chunks, None))),
                            End::Hold => {
                                killed.cancelled().await;
                                Some((broken, (chunks, None)))
                            }
                        }
                    }
                },
            );
            (
                [(header::CONTENT_TYPE, "text/event-stream")],
                Body::from_stream(body),
            )
                .into_response()
        }
    }
}

/// A client policy with no timers of its own besides the backoff, so paused
/// time advances exactly by the delays (see the comment on `paused_policy`).
fn paused_policy() -> SsePolicy {
    // With a paused clock Tokio jumps to the next timer whenever the runtime
    // idles, even while a socket read is pending; a connect or idle timer
    // would then fire spuriously. The backoff sleeps are the only timers here.
    SsePolicy {
        connect_timeout: None,
        idle_timeout: None,
        ..SsePolicy::default()
    }
}

fn fast_policy() -> SsePolicy {
    SsePolicy {
        backoff: BackoffPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            ..BackoffPolicy::default()
        },
        connect_timeout: Some(Duration::from_secs(10)),
        idle_timeout: Some(Duration::from_secs(30)),
        ..SsePolicy::default()
    }
}

fn client(url: &str, policy: SsePolicy) -> SseClient {
    resilience::tls::ensure_crypto_provider();
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    SseClient::with_http_client(url, policy, http).unwrap()
}

/// The next item. No timeout around it: on a paused clock a pending test
/// timer is exactly what Tokio would jump to while a socket read is in
/// flight. Real-time tests bound themselves with `within_a_minute`.
async fn next(sub: &mut SseSubscription) -> SseItem {
    sub.recv().await.expect("subscription ended")
}

/// Fails a real-time test instead of letting it hang.
async fn within_a_minute<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("test did not finish within 60 s");
}

/// Items up to and including the `n`th `Reconnecting` notice.
async fn until_reconnects(sub: &mut SseSubscription, n: usize) -> Vec<SseItem> {
    let mut items = Vec::new();
    let mut reconnects = 0;
    while reconnects < n {
        let item = next(sub).await;
        if matches!(item, SseItem::Reconnecting { .. }) {
            reconnects += 1;
        }
        items.push(item);
    }
    items
}

fn delays(items: &[SseItem]) -> Vec<Duration> {
    items
        .iter()
        .filter_map(|item| match item {
            SseItem::Reconnecting { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect()
}

fn event(data: &str, id: Option<&str>) -> SseItem {
    SseItem::Event(SseEvent {
        event: "message".to_owned(),
        data: data.to_owned(),
        id: id.map(str::to_owned),
    })
}

#[tokio::test(start_paused = true)]
async fn reconnects_with_growing_jittered_delays_and_starts_over_after_a_healthy_connection() {
    let server = FakeSse::start(
        vec![
            Reply::Status(500, None),
            Reply::Status(500, None),
            Reply::Status(500, None),
            Reply::Status(500, None),
            Reply::Status(500, None),
            Reply::Stream(vec![text("data: hello\n\n")], End::Close),
        ],
        Some(Reply::Status(500, None)),
    )
    .await;
    let cancel = CancellationToken::new();
    let mut sub = client(&server.url(), paused_policy())
        .backoff_seed(7)
        .subscribe(&cancel);

    let items = until_reconnects(&mut sub, 7).await;
    cancel.cancel();

    // The exact delays of the same seeded backoff: five failures, a reset
    // after the healthy connection, then two more failures.
    let mut expected = Backoff::with_rng_seed(BackoffPolicy::default(), 7);
    let mut want: Vec<Duration> = (&mut expected).take(5).collect();
    expected.reset();
    want.extend((&mut expected).take(2));
    let got = delays(&items);
    assert_eq!(got, want);

    // Each base doubles from 1 s; jitter stays within ±25 % of it.
    for (i, delay) in got[..5].iter().enumerate() {
        let base = Duration::from_secs(1 << i);
        assert!(
            *delay >= base.mul_f64(0.75) && *delay <= base.mul_f64(1.25),
            "delay {i} = {delay:?} is not within ±25 % of {base:?}"
        );
    }
    assert!(got[4] > got[0] * 8, "delays grow: {got:?}");
    assert!(
        got[5] <= Duration::from_millis(1250),
        "the backoff starts over after a healthy connection: {got:?}"
    );

    // The healthy connection shows up in the notices.
    let connected_at = items.iter().position(|i| *i == SseItem::Connected).unwrap();
    assert_eq!(items[connected_at + 1], event("hello", None));
    let SseItem::Disconnected(end) = &items[connected_at + 2] else {
        panic!("{:?}", items[connected_at + 2]);
    };
    assert_eq!(end.reason, DisconnectReason::EndOfStream);
    assert!(end.healthy);
    assert_eq!(end.events, 1);
    for failed in items.iter().filter_map(|i| match i {
        SseItem::Disconnected(d) if d.connected_for.is_none() => Some(d),
        _ => None,
    }) {
        assert_eq!(
            failed.reason,
            DisconnectReason::ServerStatus {
                status: 500,
                retry_after: None
            }
        );
        assert!(!failed.healthy);
    }

    // The server saw the attempts exactly one delay apart on the paused clock.
    let seen = server.seen();
    assert!(seen.len() >= 7);
    for (i, pair) in seen.windows(2).take(7).enumerate() {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= want[i] && gap < want[i] + Duration::from_millis(100),
            "gap {i} = {gap:?}, delay {:?}",
            want[i]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_servers_retry_field_is_a_floor_capped_at_the_max_delay() {
    let server = FakeSse::start(
        vec![
            // A retry-only block (no data) still counts.
            Reply::Stream(vec![text("retry: 5000\n\ndata: a\n\n")], End::Close),
            Reply::Status(500, None),
            Reply::Stream(vec![text("retry: 86400000\ndata: b\n\n")], End::Close),
        ],
        Some(Reply::Status(500, None)),
    )
    .await;
    let cancel = CancellationToken::new();
    let mut sub = client(&server.url(), paused_policy())
        .backoff_seed(1)
        .subscribe(&cancel);
    let items = until_reconnects(&mut sub, 3).await;
    cancel.cancel();
    assert_eq!(
        delays(&items)[..2],
        [Duration::from_secs(5), Duration::from_secs(5)],
        "healthy reset gives ~1 s and the 500 ~2 s, but the server asked for 5 s"
    );
    assert_eq!(
        delays(&items)[2],
        Duration::from_secs(60),
        "a day-long retry is capped at the backoff max"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_on_503_is_honoured() {
    let server = FakeSse::start(vec![Reply::Status(503, Some(7))], None).await;
    let cancel = CancellationToken::new();
    let mut sub = client(&server.url(), paused_policy()).subscribe(&cancel);
    let items = until_reconnects(&mut sub, 1).await;
    cancel.cancel();
    assert_eq!(
        items[0],
        SseItem::Disconnected(resilience::Disconnect {
            reason: DisconnectReason::ServerStatus {
                status: 503,
                retry_after: Some(Duration::from_secs(7))
            },
            connected_for: None,
            events: 0,
            healthy: false,
        })
    );
    assert_eq!(delays(&items), [Duration::from_secs(7)]);
}

#[tokio::test]
async fn reconnection_resumes_with_last_event_id() {
    within_a_minute(async {
        let server = FakeSse::start(
            vec![
                Reply::Stream(
                    vec![
                        text("id: 1\ndata: a\n\n"),
                        text("id: 2\ndata: b\n\n"),
                        // Let hyper flush before the body breaks, or it drops
                        // the whole response, headers included.
                        Chunk::Pause(Duration::from_millis(100)),
                    ],
                    End::Abort,
                ),
                Reply::Stream(vec![text("data: c\n\nid: 3\ndata: d\n\n")], End::Hold),
            ],
            None,
        )
        .await;
        let cancel = CancellationToken::new();
        let mut sub = client(&server.url(), fast_policy())
            .last_event_id("0")
            .subscribe(&cancel);

        assert_eq!(next(&mut sub).await, SseItem::Connected);
        assert_eq!(next(&mut sub).await, event("a", Some("1")));
        assert_eq!(next(&mut sub).await, event("b", Some("2")));
        let SseItem::Disconnected(broken) = next(&mut sub).await else {
            panic!("expected a disconnect");
        };
        assert_eq!(broken.reason.as_label(), "network", "{:?}", broken.reason);
        assert!(broken.healthy, "it delivered events");
        assert!(matches!(
            next(&mut sub).await,
            SseItem::Reconnecting { attempt: 1, .. }
        ));
        assert_eq!(next(&mut sub).await, SseItem::Connected);
        // The id persists until the server changes it.
        assert_eq!(next(&mut sub).await, event("c", Some("2")));
        assert_eq!(next(&mut sub).await, event("d", Some("3")));

        let seen: Vec<_> = server.seen().into_iter().map(|s| s.last_event_id).collect();
        assert_eq!(seen, [Some("0".to_owned()), Some("2".to_owned())]);

        cancel.cancel();
        let SseItem::Disconnected(last) = next(&mut sub).await else {
            panic!("expected the final notice");
        };
        assert_eq!(last.reason, DisconnectReason::Cancelled);
        assert_eq!(last.events, 2);
        assert!(sub.recv().await.is_none(), "the subscription ends");
    })
    .await;
}

#[tokio::test]
async fn a_restarted_server_is_reached_again() {
    within_a_minute(async {
        let server = FakeSse::start(
            vec![Reply::Stream(vec![text("data: before\n\n")], End::Hold)],
            Some(Reply::Stream(vec![text("data: after\n\n")], End::Hold)),
        )
        .await;
        let cancel = CancellationToken::new();
        let mut sub = client(&server.url(), fast_policy()).subscribe(&cancel);
        assert_eq!(next(&mut sub).await, SseItem::Connected);
        assert_eq!(next(&mut sub).await, event("before", None));

        server.kill().await;
        let SseItem::Disconnected(broken) = next(&mut sub).await else {
            panic!("expected a disconnect");
        };
        assert!(
            matches!(
                broken.reason,
                DisconnectReason::Network(_) | DisconnectReason::EndOfStream
            ),
            "{:?}",
            broken.reason
        );
        // While it is down, attempts fail with connection refused.
        let items = until_reconnects(&mut sub, 3).await;
        assert!(
            items.iter().any(|i| matches!(i, SseItem::Disconnected(d)
            if matches!(d.reason, DisconnectReason::Network(_)) && !d.was_connected())),
            "{items:?}"
        );
        server.restart().await;
        loop {
            if next(&mut sub).await == SseItem::Connected {
                break;
            }
        }
        assert_eq!(next(&mut sub).await, event("after", None));
        cancel.cancel();
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_connection_alive_and_silence_times_it_out() {
    let mut chunks = Vec::new();
    for _ in 0..5 {
        chunks.push(Chunk::Pause(Duration::from_secs(2)));
        chunks.push(text(": heartbeat\n"));
    }
    let server = FakeSse::start(vec![Reply::Stream(chunks, End::Hold)], None).await;
    let cancel = CancellationToken::new();
    let policy = SsePolicy {
        idle_timeout: Some(Duration::from_secs(3)),
        ..paused_policy()
    };
    let mut sub = client(&server.url(), policy).subscribe(&cancel);
    assert_eq!(next(&mut sub).await, SseItem::Connected);
    let SseItem::Disconnected(idle) = next(&mut sub).await else {
        panic!("expected the idle timeout");
    };
    cancel.cancel();
    assert_eq!(
        idle.reason,
        DisconnectReason::Timeout {
            phase: TimeoutPhase::Idle,
            after: Duration::from_secs(3)
        }
    );
    let open = idle.connected_for.unwrap();
    // Five heartbeats 2 s apart kept it open for 10 s, then 3 s of silence.
    assert!(
        open >= Duration::from_secs(13) && open < Duration::from_secs(14),
        "{open:?}"
    );
    assert!(!idle.healthy, "no event and open less than healthy_after");
    server.kill().await;
}

#[tokio::test]
async fn an_oversized_event_or_a_wrong_content_type_is_a_decode_failure() {
    within_a_minute(async {
        let huge = format!("data: {}\n\n", "x".repeat(4096));
        let server = FakeSse::start(
            vec![
                Reply::Stream(vec![text("data: small\n\n"), text(&huge)], End::Hold),
                Reply::WrongContentType,
            ],
            Some(Reply::Stream(vec![], End::Hold)),
        )
        .await;
        let cancel = CancellationToken::new();
        let policy = SsePolicy {
            max_event_size: 1024,
            ..fast_policy()
        };
        let mut sub = client(&server.url(), policy).subscribe(&cancel);
        assert_eq!(next(&mut sub).await, SseItem::Connected);
        assert_eq!(next(&mut sub).await, event("small", None));
        let SseItem::Disconnected(too_large) = next(&mut sub).await else {
            panic!("expected a disconnect");
        };
        assert_eq!(
            too_large.reason,
            DisconnectReason::Decode("an event or line exceeds the 1024-byte limit".to_owned())
        );
        assert!(matches!(next(&mut sub).await, SseItem::Reconnecting { .. }));
        let SseItem::Disconnected(wrong) = next(&mut sub).await else {
            panic!("expected a disconnect");
        };
        assert_eq!(wrong.reason.as_label(), "decode");
        assert!(!wrong.was_connected());
        cancel.cancel();
        server.kill().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn cancellation_during_a_backoff_wait_ends_the_subscription_at_once() {
    let server = FakeSse::start(vec![Reply::Status(503, Some(60))], None).await;
    let cancel = CancellationToken::new();
    let mut sub = client(&server.url(), paused_policy()).subscribe(&cancel);
    let items = until_reconnects(&mut sub, 1).await;
    assert_eq!(delays(&items), [Duration::from_secs(60)]);
    let start = Instant::now();
    cancel.cancel();
    assert!(sub.recv().await.is_none());
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(server.seen().len(), 1, "no further attempt after cancel");
}

#[tokio::test]
async fn dropping_the_subscription_stops_the_connection_task() {
    within_a_minute(async {
        let server = FakeSse::start(vec![], Some(Reply::Stream(vec![], End::Hold))).await;
        let mut sub = client(&server.url(), fast_policy()).subscribe(&CancellationToken::new());
        assert_eq!(next(&mut sub).await, SseItem::Connected);
        drop(sub);
        // Were the task still running, breaking its connection would make it
        // reconnect within 50 ms.
        server.kill().await;
        server.restart().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(server.seen().len(), 1, "nobody reconnects after the drop");
        server.kill().await;
    })
    .await;
}
