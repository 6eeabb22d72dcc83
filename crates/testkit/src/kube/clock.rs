//! The one clock of FakeKube: wall-clock time that follows tokio's clock.
//!
//! Object timestamps (`creationTimestamp`, `deletionTimestamp`,
//! `managedFields[].time`, status times), the request log and the simulated
//! kubelet's and garbage collector's timers all read it. It is the wall
//! time when the fake started plus the tokio time elapsed since, so
//! `tokio::time::pause()` and `advance()` move timestamps exactly as they
//! move timers. The rule it keeps: **no part of the fake reads the system
//! clock after start**, so a paused test sees a pod's `deletionTimestamp`
//! at the instant its grace period ends.

use std::time::Duration;

use tokio::time::Instant;

/// Wall time anchored at start, advancing with tokio's clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    wall: jiff::Timestamp,
    start: Instant,
}

impl Clock {
    /// A clock reading the system's wall time now, then following tokio.
    pub fn start() -> Self {
        Self {
            wall: jiff::Timestamp::now(),
            start: Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> jiff::Timestamp {
        self.at(Instant::now())
    }

    /// The wall time of a tokio instant (instants before start read as the
    /// start).
    pub fn at(&self, instant: Instant) -> jiff::Timestamp {
        let elapsed = instant.saturating_duration_since(self.start);
        jiff::SignedDuration::try_from(elapsed)
            .ok()
            .and_then(|d| self.wall.checked_add(d).ok())
            .unwrap_or(self.wall)
    }

    /// Now, as the API server writes timestamps (RFC 3339, whole seconds).
    pub fn timestamp(&self) -> String {
        self.timestamp_after(Duration::ZERO)
    }

    /// `d` from now, as the API server writes timestamps.
    pub fn timestamp_after(&self, d: Duration) -> String {
        whole_seconds(self.at(Instant::now() + d))
    }
}

fn whole_seconds(t: jiff::Timestamp) -> String {
    jiff::Timestamp::from_second(t.as_second())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn timestamps_follow_paused_tokio_time() {
        let clock = Clock::start();
        let before = clock.now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let after = clock.now();
        assert_eq!(
            after.duration_since(before),
            jiff::SignedDuration::from_hours(1)
        );
        let stamp: jiff::Timestamp = clock.timestamp().parse().unwrap();
        assert_eq!(stamp.as_second(), after.as_second());
        let later: jiff::Timestamp = clock
            .timestamp_after(Duration::from_secs(30))
            .parse()
            .unwrap();
        assert_eq!(later.as_second(), after.as_second() + 30);
    }
}
