//! A tiny incident stream to run agent-runner against without a cluster.
//!
//! ```sh
//! cargo run -p agent-runner --example incident_stream -- --port 7070
//! ```
//!
//! Serves `GET /events` as Server-Sent Events: a sample incident every
//! `--interval` seconds (severities cycle info ▸ warning ▸ error ▸ critical,
//! and every fifth event repeats the previous incident id, so the duplicate
//! filter has something to do), a heartbeat comment every 15 s, `retry:`
//! on connect, and resumption from `Last-Event-ID`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use clap::Parser;
use futures::Stream;

/// Serves sample incidents over SSE.
#[derive(Debug, Clone, Parser)]
struct Args {
    /// Port to listen on (127.0.0.1).
    #[arg(long, default_value_t = 7070)]
    port: u16,
    /// Seconds between incidents.
    #[arg(long, default_value_t = 3)]
    interval: u64,
}

const SEVERITIES: [&str; 4] = ["info", "warning", "error", "critical"];
const SERVICES: [&str; 3] = ["checkout", "search", "payments"];

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let app = Router::new()
        .route("/events", get(events))
        .with_state(args.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .expect("cannot bind");
    println!(
        "incident stream on http://{}/events (an incident every {} s)",
        listener.local_addr().unwrap(),
        args.interval
    );
    axum::serve(listener, app).await.unwrap();
}

async fn events(
    State(args): State<Args>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Resume after the last event the client saw.
    let start: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .map_or(1, |last: u64| last + 1);
    println!("client connected, starting at event {start}");
    let interval = Duration::from_secs(args.interval.max(1));
    let stream = futures::stream::unfold(start, move |n| async move {
        if n != start {
            tokio::time::sleep(interval).await;
        }
        Some((Ok(incident(n)), n + 1))
    });
    let first = futures::stream::once(async {
        Ok(Event::default()
            .retry(Duration::from_secs(2))
            .comment("hello"))
    });
    Sse::new(futures::StreamExt::chain(first, stream)).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("heartbeat"),
    )
}

fn incident(n: u64) -> Event {
    // Every fifth event repeats the previous incident: a duplicate.
    let incident_number = if n.is_multiple_of(5) { n - 1 } else { n };
    let index = usize::try_from(incident_number).unwrap_or(0);
    let body = serde_json::json!({
        "id": format!("inc-{incident_number}"),
        "severity": SEVERITIES[index % SEVERITIES.len()],
        "service": SERVICES[index % SERVICES.len()],
        "summary": format!("sample incident {incident_number}"),
    });
    Event::default().id(n.to_string()).data(body.to_string())
}
