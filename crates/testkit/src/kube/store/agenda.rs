//! The agenda: what the simulated kubelet, garbage collector and CRD
//! finalizer will do, and when, on tokio's clock.
//!
//! Every timed action of the fake's controllers is an entry here, run by one
//! task (`controllers::run`) under the store lock when its instant comes.
//! The rule it keeps: **actions due at the same instant run in the order
//! they were scheduled**, so a paused test replays the same sequence every
//! time.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::ObjKey;

/// Something a controller does at an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// The kubelet starts the pod's containers (Pending → Running).
    StartPod { key: ObjKey, uid: String },
    /// The pod's containers exit by themselves with this phase.
    ExitPod {
        key: ObjKey,
        uid: String,
        phase: super::TerminalPhase,
    },
    /// The pod's containers have stopped after SIGTERM (or were killed):
    /// the kubelet reports it and deletes the pod for good.
    StopPod { key: ObjKey, uid: String },
    /// The garbage collector works through its queue.
    CollectGarbage,
    /// The apiextensions finalizer deletes a deleted CRD's objects (and
    /// lets the CRD go once none is left).
    CleanUpCrd { key: ObjKey, uid: String },
}

/// Timed actions in (instant, scheduling order).
#[derive(Debug)]
pub(crate) struct Agenda {
    entries: BTreeMap<(Instant, u64), Action>,
    next: u64,
    wakeup: Arc<Notify>,
}

impl Agenda {
    pub fn new() -> Self {
        Self {
            entries: BTreeMap::new(),
            next: 0,
            wakeup: Arc::new(Notify::new()),
        }
    }

    /// Schedules `action` at `at` and wakes the controller task.
    pub fn schedule(&mut self, at: Instant, action: Action) {
        self.next += 1;
        self.entries.insert((at, self.next), action);
        self.wakeup.notify_one();
    }

    /// The earliest instant something is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries.keys().next().map(|(at, _)| *at)
    }

    /// Takes the first action due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Action> {
        let (at, _) = *self.entries.keys().next()?;
        if at > now {
            return None;
        }
        self.entries.pop_first().map(|(_, action)| action)
    }

    /// What the controller task waits on besides the next instant.
    pub fn wakeup(&self) -> Arc<Notify> {
        self.wakeup.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn actions_run_by_instant_then_by_scheduling_order() {
        let mut agenda = Agenda::new();
        let now = Instant::now();
        let stop = |name: &str| Action::StopPod {
            key: ObjKey {
                group: String::new(),
                plural: "pods".to_owned(),
                namespace: "ns".to_owned(),
                name: name.to_owned(),
            },
            uid: "u".to_owned(),
        };
        agenda.schedule(now + Duration::from_secs(2), stop("late"));
        agenda.schedule(now, Action::CollectGarbage);
        agenda.schedule(now, stop("first"));
        assert_eq!(agenda.next_due(), Some(now));
        assert_eq!(agenda.pop_due(now), Some(Action::CollectGarbage));
        assert_eq!(agenda.pop_due(now), Some(stop("first")));
        assert_eq!(agenda.pop_due(now), None, "the next one is not due yet");
        assert_eq!(
            agenda.pop_due(now + Duration::from_secs(2)),
            Some(stop("late"))
        );
    }
}
