//! Whose turn it is to take a released Lease: the waiters' countdown.
//!
//! Every waiter of a Lease hears of its release at about the same moment,
//! from its own watch. If they all wrote at once, one would win and every
//! other write would conflict: N − 1 wasted requests per handoff, the
//! thundering herd. Instead each waiter counts down a random delay drawn
//! from its window and writes only when the countdown ends. The first
//! writer's change reaches the other waiters' watches (about a round trip
//! later) before most of their countdowns end, and they go back to waiting
//! without a write.
//!
//! A countdown runs only while the waiter sees the Lease free. When someone
//! else takes it, the countdown stops, and at the next release it resumes
//! where it stopped (the backoff freeze of IEEE 802.11's DCF). So a waiter
//! that was passed over goes sooner than one that has just arrived — the
//! longest waiter tends to go first — and waiters that heard one release
//! stay spread out over the next ones instead of meeting again. A waiter
//! whose write conflicted anyway (its countdown ended within a round trip of
//! another's) widens its window — doubles it, and makes it at least eight
//! round trips of that write, as a loaded API server answers slowly — and
//! draws again.
//!
//! Rule kept here: a turn decides only *when* a waiter writes, never
//! *whether* it may. The write stays conditional on the Lease version it
//! judged, so turns change latency and load, never safety.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// How often a waiter's window may double after conflicts: up to 2^2 = 4
/// times the configured stagger. A wider window spreads a large crowd out
/// (fewer conflicts), but it also sends a waiter that lost a race behind
/// newcomers drawing from the narrow one; 4 × keeps that bounded while
/// doing about as well against conflicts as 32 × for crowds of 20.
pub(crate) const MAX_DOUBLINGS: u32 = 2;

/// After a conflict the window is at least this many round trips of the
/// write that conflicted. On a loaded API server a write and its watch
/// event take hundreds of milliseconds, far more than the stagger: turns
/// closer together than that cannot see each other, and a crowd of waiters
/// would keep conflicting (and so keep the server loaded).
const ROUND_TRIPS_AFTER_CONFLICT: u32 = 8;

/// The widest window a slow server can make: this many round trips of the
/// write that conflicted (when that is wider than 4 × the stagger), and
/// never wider than the ceiling given to [`Turn::new`].
const MAX_ROUND_TRIPS: u32 = 32;

/// One waiter's countdown towards its turn to take a released Lease.
#[derive(Debug, Clone)]
pub(crate) struct Turn {
    window: Duration,
    max_window: Duration,
    ceiling: Duration,
    /// What is left of the countdown; `None` until drawn.
    left: Option<Duration>,
    /// Since when the countdown has been running (the Lease seen free).
    running_since: Option<Instant>,
    rng: StdRng,
}

impl Turn {
    /// A countdown drawn from `[0, stagger)`, the window widening up to
    /// 4 × `stagger` (on a slow server up to `ceiling`); `seed` makes the
    /// draws reproducible.
    pub(crate) fn new(stagger: Duration, ceiling: Duration, seed: u64) -> Self {
        Self {
            window: stagger,
            max_window: stagger.saturating_mul(1 << MAX_DOUBLINGS),
            ceiling,
            left: None,
            running_since: None,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The Lease is seen free (or expired) at `now`: how long until our
    /// turn (zero: now). Draws the countdown the first time and starts it
    /// running if it was stopped.
    pub(crate) fn remaining(&mut self, now: Instant) -> Duration {
        let left = match self.left {
            Some(left) => left,
            None => *self.left.insert(draw(&mut self.rng, self.window)),
        };
        let since = *self.running_since.get_or_insert(now);
        left.saturating_sub(now.saturating_duration_since(since))
    }

    /// The Lease is not (known to be) free at `now`: the countdown stops and
    /// keeps what is left for the next release.
    pub(crate) fn pause(&mut self, now: Instant) {
        if let (Some(left), Some(since)) = (self.left.as_mut(), self.running_since.take()) {
            *left = left.saturating_sub(now.saturating_duration_since(since));
        }
    }

    /// Our takeover write conflicted after `took`: another waiter's turn
    /// came within about a round trip of ours. Widen the window — double it,
    /// and make it at least [`ROUND_TRIPS_AFTER_CONFLICT`] times `took`,
    /// since rivals hear of a write no sooner than it takes — and draw again
    /// at the next release. A zero stagger stays zero (turns off).
    pub(crate) fn collided(&mut self, took: Duration) {
        if !self.max_window.is_zero() {
            let slow = took.saturating_mul(MAX_ROUND_TRIPS).min(self.ceiling);
            let cap = self.max_window.max(slow);
            self.window = self
                .window
                .saturating_mul(2)
                .max(took.saturating_mul(ROUND_TRIPS_AFTER_CONFLICT))
                .min(cap);
        }
        self.left = None;
        self.running_since = None;
    }

    /// The widest the window grows while the API server answers promptly:
    /// for how long after a release waiters may still be counting down.
    pub(crate) fn max_window(&self) -> Duration {
        self.max_window
    }
}

/// A uniformly random duration in `[0, window)`.
fn draw(rng: &mut StdRng, window: Duration) -> Duration {
    let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.random_range(0..nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAGGER: Duration = Duration::from_millis(25);
    const CEILING: Duration = Duration::from_secs(2);

    #[test]
    fn the_first_draw_falls_within_the_stagger() {
        let now = Instant::now();
        for seed in 0..100 {
            let left = Turn::new(STAGGER, CEILING, seed).remaining(now);
            assert!(left < STAGGER, "seed {seed}: {left:?}");
        }
    }

    #[test]
    fn the_countdown_runs_only_while_the_lease_is_free() {
        let start = Instant::now();
        let mut turn = Turn::new(STAGGER, CEILING, 7);
        let drawn = turn.remaining(start);
        let ms = Duration::from_millis(1);
        assert_eq!(turn.remaining(start + ms), drawn.saturating_sub(ms));

        // Taken by someone else 1 ms in, held for an hour: nothing counts.
        turn.pause(start + ms);
        let hour = Duration::from_secs(3600);
        assert_eq!(
            turn.remaining(start + hour),
            drawn.saturating_sub(ms),
            "a passed-over waiter resumes where it stopped"
        );
    }

    #[test]
    fn pausing_a_stopped_or_undrawn_countdown_changes_nothing() {
        let start = Instant::now();
        let mut turn = Turn::new(STAGGER, CEILING, 3);
        turn.pause(start);
        let drawn = turn.remaining(start);
        turn.pause(start);
        turn.pause(start + STAGGER);
        assert_eq!(turn.remaining(start + STAGGER), drawn);
    }

    #[test]
    fn a_countdown_that_ran_out_stays_at_zero() {
        let start = Instant::now();
        let mut turn = Turn::new(STAGGER, CEILING, 11);
        turn.remaining(start);
        assert_eq!(turn.remaining(start + STAGGER), Duration::ZERO);
        turn.pause(start + 2 * STAGGER);
        assert_eq!(turn.remaining(start + 3 * STAGGER), Duration::ZERO);
    }

    #[test]
    fn each_conflict_doubles_the_window_up_to_four_times_the_stagger() {
        let now = Instant::now();
        let mut turn = Turn::new(STAGGER, CEILING, 5);
        turn.collided(Duration::ZERO);
        assert_eq!(turn.window, STAGGER * 2);
        for _ in 0..20 {
            turn.collided(Duration::ZERO);
        }
        assert_eq!(turn.window, STAGGER * 4);
        assert_eq!(turn.max_window(), STAGGER * 4);
        // Redrawn from the wide window: over many seeds some land past the
        // first stagger, none past the cap.
        let draws: Vec<Duration> = (0..200)
            .map(|seed| {
                let mut t = Turn::new(STAGGER, CEILING, seed);
                (0..MAX_DOUBLINGS).for_each(|_| t.collided(Duration::ZERO));
                t.remaining(now)
            })
            .collect();
        assert!(draws.iter().all(|d| *d < STAGGER * 4));
        assert!(draws.iter().any(|d| *d >= STAGGER * 3));
    }

    #[test]
    fn a_conflict_after_a_slow_write_widens_the_window_to_its_round_trips() {
        let slow = Duration::from_millis(50);
        let mut turn = Turn::new(STAGGER, CEILING, 9);
        turn.collided(slow);
        assert_eq!(turn.window, slow * 8);
        for _ in 0..20 {
            turn.collided(slow);
        }
        assert_eq!(turn.window, slow * 32, "capped at 32 round trips");
        let mut slower = Turn::new(STAGGER, CEILING, 9);
        slower.collided(Duration::from_secs(1));
        assert_eq!(slower.window, CEILING, "and at the ceiling");
        // A prompt server again: the window shrinks back to its usual cap.
        turn.collided(Duration::from_millis(1));
        assert_eq!(turn.window, STAGGER * 4);
    }

    #[test]
    fn a_zero_stagger_takes_the_lease_at_once_even_after_conflicts() {
        let mut turn = Turn::new(Duration::ZERO, CEILING, 1);
        turn.collided(Duration::from_millis(300));
        assert_eq!(turn.remaining(Instant::now()), Duration::ZERO);
    }

    #[test]
    fn the_same_seed_draws_the_same_turns() {
        let now = Instant::now();
        let a = Turn::new(STAGGER, CEILING, 42).remaining(now);
        let b = Turn::new(STAGGER, CEILING, 42).remaining(now);
        assert_eq!(a, b);
    }
}
