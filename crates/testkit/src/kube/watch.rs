//! The watch response: newline-delimited JSON `WatchEvent`s, streamed.
//!
//! A watch first replays what the client missed (the history after its
//! resourceVersion, or the current state as ADDED events), then forwards
//! live events from its bounded channel, with BOOKMARKs when asked and until
//! `timeoutSeconds`; a partition (see `Faults::partition`) stalls it, and a
//! cut (`FakeKube::cut_watches`, a restart) closes its connection
//! mid-stream. An event's line is encoded once per response form and shared
//! by every watch streaming it. The rule it keeps: **a BOOKMARK never overtakes an event**
//! — it is only sent when every event up to its resourceVersion has already
//! been written, so a client resuming from it loses nothing.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http_body_util::StreamBody;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::server::{Render, Shared};
use super::status::ApiError;
use super::store::WatchItem;

/// One started watch, ready to be streamed.
pub(crate) struct WatchStream {
    pub shared: Arc<Shared>,
    /// The connection the stream is written to, closed when it is cut.
    pub connection: CancellationToken,
    /// Cancelled when every open watch is cut.
    pub cut: CancellationToken,
    pub render: Render,
    pub id: u64,
    pub initial: Vec<Arc<WatchItem>>,
    /// Send a BOOKMARK marking the end of the initial events at this
    /// resourceVersion (`sendInitialEvents=true`).
    pub initial_end: Option<u64>,
    pub live: mpsc::Receiver<Arc<WatchItem>>,
    pub bookmarks: bool,
    pub timeout: Duration,
}

/// The body of a watch that could not start: one ERROR event.
pub(crate) fn error_event(err: &ApiError) -> Bytes {
    line("ERROR", &err.to_status())
}

impl WatchStream {
    /// The response body stream; dropping it (the client left, the server
    /// stopped) unregisters the watch.
    pub fn into_body(self) -> StreamBody<impl Stream<Item = Result<Frame<Bytes>, Infallible>>> {
        let bookmark_every = self.shared.options.bookmark_interval;
        let mut ticker = tokio::time::interval_at(Instant::now() + bookmark_every, bookmark_every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let state = State {
            guard: Unwatch {
                shared: self.shared.clone(),
                id: self.id,
            },
            connection: self.connection,
            cut: self.cut,
            render: self.render,
            initial: self.initial.into(),
            initial_end: self.initial_end,
            live: self.live,
            ticker: self.bookmarks.then_some(ticker),
            deadline: Instant::now() + self.timeout,
        };
        StreamBody::new(futures::stream::unfold(state, next_frame))
    }
}

struct State {
    guard: Unwatch,
    connection: CancellationToken,
    cut: CancellationToken,
    render: Render,
    initial: VecDeque<Arc<WatchItem>>,
    initial_end: Option<u64>,
    live: mpsc::Receiver<Arc<WatchItem>>,
    ticker: Option<Interval>,
    deadline: Instant,
}

async fn next_frame(mut st: State) -> Option<(Result<Frame<Bytes>, Infallible>, State)> {
    let cut = st.cut.clone();
    let frame = tokio::select! {
        biased;
        () = cut.cancelled() => None,
        frame = produce(&mut st) => frame,
    };
    if cut.is_cancelled() {
        // Close the connection under the stream (no terminating chunk), and
        // write nothing more while that happens.
        st.connection.cancel();
        return std::future::pending().await;
    }
    frame.map(|f| (Ok(Frame::data(f)), st))
}

/// The next line of the stream, or `None` when it ends.
async fn produce(st: &mut State) -> Option<Bytes> {
    // A partition cuts open watches off too: nothing flows until it heals,
    // while events pile up in the bounded channel (closing the watch if it
    // overflows, as for any watcher that stops reading).
    tokio::select! {
        () = st.guard.shared.faults.healed() => {}
        () = tokio::time::sleep_until(st.deadline) => return None,
    }
    if let Some(item) = st.initial.pop_front() {
        return Some(event_line(&st.render, &item));
    }
    if let Some(rv) = st.initial_end.take() {
        return Some(bookmark_line(&st.render, rv, true));
    }
    loop {
        let tick = async {
            match st.ticker.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            item = st.live.recv() => {
                // `None`: the store closed this watch (it fell behind) or
                // the server is stopping; the client resumes from its last
                // resourceVersion.
                let item = item?;
                return Some(event_line(&st.render, &item));
            }
            () = tokio::time::sleep_until(st.deadline) => return None,
            () = tick => {
                if let Some(rv) = st.guard.safe_bookmark(&st.live) {
                    return Some(bookmark_line(&st.render, rv, false));
                }
            }
        }
    }
}

/// Unregisters the watch when the stream is dropped.
struct Unwatch {
    shared: Arc<Shared>,
    id: u64,
}

impl Unwatch {
    /// The current resourceVersion, if every event up to it has been taken
    /// from `live` (events are queued under the store lock, so an empty
    /// queue seen under that lock means nothing older is pending).
    fn safe_bookmark(&self, live: &mpsc::Receiver<Arc<WatchItem>>) -> Option<u64> {
        let store = self.shared.store();
        (live.is_empty() && store.has_watcher(self.id)).then(|| store.resource_version())
    }
}

impl Drop for Unwatch {
    fn drop(&mut self) {
        self.shared.store().unwatch(self.id);
    }
}

/// The event's line, encoded once per response form for all the watchers
/// that stream it (the API server's `cachingObject`).
fn event_line(render: &Render, item: &WatchItem) -> Bytes {
    item.encoded(render, |item| {
        line(item.kind.as_str(), &render.object(&item.object))
    })
}

fn bookmark_line(render: &Render, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let (api_version, kind) = render.type_meta();
    line(
        "BOOKMARK",
        &json!({"apiVersion": api_version, "kind": kind, "metadata": metadata}),
    )
}

/// One watch event as the API server writes it: `type` first, then
/// `object` (Go's `metav1.WatchEvent` field order), one per line. The order
/// matters to clients: a decoder of the tagged event reads the object
/// straight into its type when it has seen `type`, and has to buffer the
/// whole object first when `object` comes first.
fn line(kind: &str, object: &Value) -> Bytes {
    #[derive(serde::Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        object: &'a Value,
    }
    let mut out = serde_json::to_vec(&Event { kind, object }).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_line_names_its_type_before_its_object_as_the_api_server_does() {
        let object = json!({"kind": "Lease", "metadata": {"name": "a"}});
        let text = line("MODIFIED", &object);
        assert_eq!(
            std::str::from_utf8(&text).unwrap(),
            "{\"type\":\"MODIFIED\",\"object\":{\"kind\":\"Lease\",\"metadata\":{\"name\":\"a\"}}}\n"
        );
    }
}
