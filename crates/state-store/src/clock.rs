//! Where the store gets wall-clock time from.
//!
//! The rule it keeps: every timestamp the store writes or compares (last
//! update, TTL, journal steps) comes from one `Clock`, so tests can drive it
//! with tokio's paused time instead of sleeping.

use jiff::{SignedDuration, Timestamp};
use tokio::time::Instant;

/// A source of wall-clock time.
#[derive(Clone, Debug)]
pub struct Clock {
    anchor: Option<(Timestamp, Instant)>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self { anchor: None }
    }

    /// A clock that reads `start` now and then advances with tokio's clock, so
    /// `tokio::time::pause()` / `advance()` move it too.
    pub fn tokio_anchored(start: Timestamp) -> Self {
        Self {
            anchor: Some((start, Instant::now())),
        }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        match self.anchor {
            None => Timestamp::now(),
            Some((start, at)) => {
                let elapsed = SignedDuration::try_from(at.elapsed()).unwrap_or(SignedDuration::MAX);
                start.saturating_add(elapsed).unwrap_or(start)
            }
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_anchored_clock_follows_paused_tokio_time() {
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let clock = Clock::tokio_anchored(start);
        tokio::time::advance(std::time::Duration::from_secs(3600)).await;
        assert_eq!(clock.now(), start + SignedDuration::from_hours(1));
    }
}
