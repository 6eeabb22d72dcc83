//! What the runner says about one stream's connection, in lines an operator
//! can read during an outage.
//!
//! Rule kept here: every failed connection (an attempt that never connected,
//! or an established one that broke) is exactly **one** WARN line carrying
//! `cluster`, `error`, `retry_in` and `attempt`, written when the retry is
//! scheduled, so the line knows when the next try comes; every reconnection
//! is one INFO line carrying `cluster` and `downtime_seconds`, the time since
//! the stream was last connected.
//!
//! [`ConnectionLog`] turns the subscription's [`SseItem`]s into [`Notice`]s
//! (a pure state machine on tokio's clock, so tests pause time) and
//! [`Notice::log`] writes them.

use std::time::Duration;

use resilience::sse::{Disconnect, SseItem};
use tokio::time::Instant;

/// What is worth telling about a stream's connection.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Notice {
    /// The first connection since the runner started.
    Connected,
    /// Connected again after an established connection ended.
    Reconnected {
        /// Since the previous connection ended.
        downtime: Duration,
    },
    /// A connection failed (never connected, or broke) and a retry is scheduled.
    Failed {
        /// What went wrong, for a human.
        error: String,
        /// The low-cardinality reason, as the metrics label it.
        reason: &'static str,
        /// When the next attempt starts.
        retry_in: Duration,
        /// Consecutive attempts since the last healthy connection (1, 2, …).
        attempt: u32,
        /// How long it had been connected, if it had.
        connected_for: Option<Duration>,
    },
    /// A connection failed and no retry follows: the subscription ended.
    GaveUp {
        /// What went wrong, for a human.
        error: String,
        /// The low-cardinality reason.
        reason: &'static str,
    },
    /// The server closed the stream cleanly (or we did, at shutdown).
    Closed {
        /// The reason label (`end_of_stream`, `cancelled`).
        reason: &'static str,
        /// Events the connection delivered.
        events: u64,
    },
    /// A reconnection after a clean close is scheduled.
    Retrying {
        /// When the next attempt starts.
        retry_in: Duration,
        /// Consecutive attempts since the last healthy connection.
        attempt: u32,
    },
}

/// The connection state one stream's task keeps to narrate it.
#[derive(Debug, Default)]
pub(crate) struct ConnectionLog {
    /// The failure waiting for its retry delay, to be told as one line.
    failure: Option<Disconnect>,
    /// When the last established connection ended, while not connected.
    lost_at: Option<Instant>,
}

impl ConnectionLog {
    /// The notice `item` calls for, if any (events call for none).
    pub(crate) fn observe(&mut self, item: &SseItem) -> Option<Notice> {
        match item {
            SseItem::Event(_) => None,
            SseItem::Connected => {
                self.failure = None;
                Some(match self.lost_at.take() {
                    Some(lost_at) => Notice::Reconnected {
                        downtime: lost_at.elapsed(),
                    },
                    None => Notice::Connected,
                })
            }
            SseItem::Disconnected(end) => {
                if end.was_connected() {
                    self.lost_at = Some(Instant::now());
                }
                if end.reason.is_error() {
                    // Told with its retry delay, when that is known.
                    self.failure = Some(end.clone());
                    None
                } else {
                    Some(Notice::Closed {
                        reason: end.reason.as_label(),
                        events: end.events,
                    })
                }
            }
            SseItem::Reconnecting { delay, attempt } => Some(match self.failure.take() {
                Some(end) => Notice::Failed {
                    error: end.reason.to_string(),
                    reason: end.reason.as_label(),
                    retry_in: *delay,
                    attempt: *attempt,
                    connected_for: end.connected_for,
                },
                None => Notice::Retrying {
                    retry_in: *delay,
                    attempt: *attempt,
                },
            }),
        }
    }

    /// The notice owed when the subscription ends: a failure no retry
    /// followed is still told.
    pub(crate) fn finish(&mut self) -> Option<Notice> {
        self.failure.take().map(|end| Notice::GaveUp {
            error: end.reason.to_string(),
            reason: end.reason.as_label(),
        })
    }
}

impl Notice {
    /// Writes the notice for the stream of `cluster` at `url`.
    pub(crate) fn log(&self, cluster: &str, url: &str) {
        match self {
            Notice::Connected => {
                tracing::info!(cluster, url, "incident stream connected");
            }
            Notice::Reconnected { downtime } => tracing::info!(
                cluster,
                url,
                downtime_seconds = downtime.as_secs_f64(),
                "incident stream reconnected"
            ),
            Notice::Failed {
                error,
                reason,
                retry_in,
                attempt,
                connected_for,
            } => tracing::warn!(
                cluster,
                error = %error,
                retry_in = %readable(*retry_in),
                attempt,
                reason,
                connected_for_seconds = connected_for.map(|d| d.as_secs_f64()),
                url,
                "incident stream connection failed; retrying"
            ),
            Notice::GaveUp { error, reason } => tracing::warn!(
                cluster,
                error = %error,
                reason,
                url,
                "incident stream connection failed; not retrying"
            ),
            Notice::Closed { reason, events } => {
                tracing::info!(cluster, reason, events, "incident stream closed");
            }
            Notice::Retrying { retry_in, attempt } => tracing::info!(
                cluster,
                retry_in = %readable(*retry_in),
                attempt,
                "reconnecting the incident stream"
            ),
        }
    }
}

/// A delay as a person reads it (`20ms`, `1.5s`), rounded to milliseconds:
/// anything finer is noise to a reader.
fn readable(delay: Duration) -> String {
    let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    format!("{:?}", Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use resilience::sse::{DisconnectReason, SseEvent};

    use super::*;

    fn lost(reason: DisconnectReason, connected_for: Option<Duration>) -> SseItem {
        SseItem::Disconnected(Disconnect {
            reason,
            connected_for,
            events: 3,
            healthy: false,
        })
    }

    fn reconnecting(millis: u64, attempt: u32) -> SseItem {
        SseItem::Reconnecting {
            delay: Duration::from_millis(millis),
            attempt,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_attempt_is_told_once_with_its_retry_delay_and_attempt() {
        let mut log = ConnectionLog::default();
        let refused = DisconnectReason::Network("connection refused".to_owned());
        assert_eq!(
            log.observe(&lost(refused, None)),
            None,
            "waits for the delay"
        );
        assert_eq!(
            log.observe(&reconnecting(1_500, 1)),
            Some(Notice::Failed {
                error: "network error: connection refused".to_owned(),
                reason: "network",
                retry_in: Duration::from_millis(1_500),
                attempt: 1,
                connected_for: None,
            })
        );
        assert_eq!(
            log.observe(&SseItem::Connected),
            Some(Notice::Connected),
            "never connected before: nothing was down"
        );
        let event = SseItem::Event(SseEvent {
            event: "message".to_owned(),
            data: "{}".to_owned(),
            id: None,
        });
        assert_eq!(log.observe(&event), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnection_reports_the_time_since_the_connection_was_lost() {
        let mut log = ConnectionLog::default();
        log.observe(&SseItem::Connected);
        tokio::time::advance(Duration::from_secs(600)).await;
        let broke = DisconnectReason::Network("reset".to_owned());
        assert_eq!(
            log.observe(&lost(broke, Some(Duration::from_secs(600)))),
            None
        );
        let Some(Notice::Failed { connected_for, .. }) = log.observe(&reconnecting(1_000, 1))
        else {
            panic!("a broken connection is a failure");
        };
        assert_eq!(connected_for, Some(Duration::from_secs(600)));
        // Two more refused attempts while the server is away.
        for attempt in 2..=3 {
            tokio::time::advance(Duration::from_secs(2)).await;
            let refused = DisconnectReason::Network("refused".to_owned());
            log.observe(&lost(refused, None));
            let notice = log.observe(&reconnecting(2_000, attempt));
            assert!(
                matches!(notice, Some(Notice::Failed { attempt: a, .. }) if a == attempt),
                "{notice:?}"
            );
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            log.observe(&SseItem::Connected),
            Some(Notice::Reconnected {
                downtime: Duration::from_secs(6)
            })
        );
        // The next connection starts a new count.
        tokio::time::advance(Duration::from_secs(60)).await;
        log.observe(&lost(
            DisconnectReason::EndOfStream,
            Some(Duration::from_secs(60)),
        ));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(
            log.observe(&SseItem::Connected),
            Some(Notice::Reconnected {
                downtime: Duration::from_millis(250)
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_clean_close_is_not_a_failure_and_a_last_failure_is_still_told() {
        let mut log = ConnectionLog::default();
        log.observe(&SseItem::Connected);
        assert_eq!(
            log.observe(&lost(
                DisconnectReason::EndOfStream,
                Some(Duration::from_secs(1))
            )),
            Some(Notice::Closed {
                reason: "end_of_stream",
                events: 3
            })
        );
        assert_eq!(
            log.observe(&reconnecting(20, 1)),
            Some(Notice::Retrying {
                retry_in: Duration::from_millis(20),
                attempt: 1
            })
        );
        assert_eq!(log.finish(), None);
        log.observe(&lost(
            DisconnectReason::ServerStatus {
                status: 503,
                retry_after: None,
            },
            None,
        ));
        assert_eq!(
            log.finish(),
            Some(Notice::GaveUp {
                error: "server answered 503".to_owned(),
                reason: "server_status"
            })
        );
    }

    #[test]
    fn delays_read_in_milliseconds_or_seconds() {
        assert_eq!(readable(Duration::from_micros(20_400)), "20ms");
        assert_eq!(readable(Duration::from_millis(1_500)), "1.5s");
        assert_eq!(readable(Duration::from_secs(60)), "60s");
    }
}
