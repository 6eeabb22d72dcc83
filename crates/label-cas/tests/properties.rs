//! Label algebra, as properties over random label sets and transitions on
//! `MemoryLabels` (no other writer): a transition is applied exactly when
//! its preconditions hold and the target state does not yet; then the labels
//! become `(before − remove) ∪ add` with one DELETE per label actually
//! removed and at most one POST; otherwise nothing is written at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use label_cas::{
    AtomicLabelManager, Error, LabelTransition, MemoryLabels, PrRef, TransitionResult,
};
use proptest::prelude::*;

const UNIVERSE: [&str; 5] = ["a", "b", "c", "d", "e"];

/// Each label gets a change (0 none, 1 add, 2 remove) and a precondition
/// (0 none, 1 present, 2 absent): contradictions cannot be generated.
fn case() -> impl Strategy<Value = (BTreeSet<&'static str>, LabelTransition)> {
    (
        proptest::collection::vec(any::<bool>(), UNIVERSE.len()),
        proptest::collection::vec(0u8..3, UNIVERSE.len()),
        proptest::collection::vec(0u8..3, UNIVERSE.len()),
    )
        .prop_map(|(initial, changes, preconditions)| {
            let before = UNIVERSE
                .iter()
                .zip(&initial)
                .filter(|(_, on)| **on)
                .map(|(l, _)| *l)
                .collect();
            let mut t = LabelTransition::new();
            for ((label, change), pre) in UNIVERSE.iter().zip(changes).zip(preconditions) {
                match change {
                    1 => t.add.push((*label).to_owned()),
                    2 => t.remove.push((*label).to_owned()),
                    _ => {}
                }
                match pre {
                    1 => t.require_present.push((*label).to_owned()),
                    2 => t.require_absent.push((*label).to_owned()),
                    _ => {}
                }
            }
            (before, t)
        })
}

fn has(list: &[String], label: &str) -> bool {
    list.iter().any(|l| l == label)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_transition_applies_exactly_when_it_should_and_writes_only_what_it_must((before, t) in case()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let pr = PrRef::new("acme", "widgets", 1).unwrap();
        let labels = MemoryLabels::new();
        labels.set_labels(&pr, before.iter().copied());
        let manager = AtomicLabelManager::new(labels);
        let result = runtime.block_on(manager.transition(&pr, &t));

        let pre_holds = t.require_present.iter().all(|l| before.contains(l.as_str()))
            && !t.require_absent.iter().any(|l| before.contains(l.as_str()));
        let target: BTreeSet<&str> = before
            .iter()
            .copied()
            .filter(|l| !has(&t.remove, l))
            .chain(t.add.iter().map(String::as_str))
            .collect();
        // The target state as the transition defines it (a required label it
        // removes, or a forbidden one it adds, counts as done).
        let in_state = t.add.iter().all(|l| before.contains(l.as_str()))
            && !t.remove.iter().any(|l| before.contains(l.as_str()))
            && t.require_present.iter().filter(|l| !has(&t.remove, l)).all(|l| before.contains(l.as_str()))
            && !t.require_absent.iter().filter(|l| !has(&t.add, l)).any(|l| before.contains(l.as_str()));

        let after: BTreeSet<String> = manager.backend().labels(&pr).into_names().into_iter().collect();
        let calls = manager.backend().calls();
        match result {
            Ok(o) if o.result == TransitionResult::AlreadyInState => {
                prop_assert!(in_state);
                prop_assert_eq!(calls.mutations(), 0);
                prop_assert_eq!(after, before.iter().map(|l| (*l).to_owned()).collect::<BTreeSet<_>>());
            }
            Ok(o) => {
                prop_assert!(!in_state && pre_holds, "applied although in state or preconditions failed");
                prop_assert_eq!(&after, &target.iter().map(|l| (*l).to_owned()).collect::<BTreeSet<_>>());
                let removed = t.remove.iter().filter(|l| before.contains(l.as_str())).count() as u64;
                let posts = u64::from(t.add.iter().any(|l| !before.contains(l.as_str())));
                prop_assert_eq!((calls.remove, calls.add, calls.replace), (removed, posts, 0));
                prop_assert_eq!(u64::from(o.calls), 1 + removed + posts);
            }
            Err(Error::Conflict { current, .. }) => {
                prop_assert!(!in_state && !pre_holds);
                prop_assert_eq!(calls.mutations(), 0);
                prop_assert_eq!(&after, &before.iter().map(|l| (*l).to_owned()).collect::<BTreeSet<_>>());
                prop_assert_eq!(current.into_names().into_iter().collect::<BTreeSet<_>>(), after);
            }
            Err(e) => prop_assert!(false, "unexpected error: {}", e),
        }
    }
}
