//! The `LabelBackend` conformance suite: one set of checks, run on
//! `MemoryLabels` and on `GitHubLabels` against testkit's fake GitHub over
//! HTTP. A backend that passes behaves like GitHub's label endpoints where
//! label-cas depends on it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{GitHubHarness, Harness, MemoryHarness, owned, pr, set};
use label_cas::{
    AtomicLabelManager, Error, Fetched, LabelBackend, LabelTransition, RemoveOutcome,
    TransitionResult,
};

async fn reads_return_every_label_sorted_with_an_etag(h: &impl Harness) {
    h.outside_set(&pr(1), &["zeta", "Alpha", "beta"]);
    let Fetched::Labels { labels, etag } = h.backend().get(&pr(1), None).await.unwrap() else {
        panic!("an unconditional read must return labels");
    };
    assert_eq!(labels.names(), ["Alpha", "beta", "zeta"]);
    assert!(etag.is_some(), "reads carry an ETag");
    let Fetched::Labels { labels, .. } = h.backend().get(&pr(2), None).await.unwrap() else {
        panic!()
    };
    assert!(labels.is_empty(), "a PR without labels reads as empty");
}

async fn a_read_with_the_current_etag_is_not_modified_until_something_changes(h: &impl Harness) {
    h.outside_set(&pr(1), &["a"]);
    let backend = h.backend();
    let Fetched::Labels { etag, .. } = backend.get(&pr(1), None).await.unwrap() else {
        panic!()
    };
    let etag = etag.unwrap();
    assert_eq!(
        backend.get(&pr(1), Some(&etag)).await.unwrap(),
        Fetched::NotModified
    );
    h.outside_add(&pr(1), "b");
    let Fetched::Labels {
        labels,
        etag: fresh,
    } = backend.get(&pr(1), Some(&etag)).await.unwrap()
    else {
        panic!("a change must invalidate the ETag");
    };
    assert_eq!(labels, set(&["a", "b"]));
    assert_ne!(fresh.unwrap(), etag);
}

async fn add_is_one_call_that_keeps_other_labels_and_returns_the_result(h: &impl Harness) {
    h.outside_set(&pr(1), &["human"]);
    let before = h.calls();
    let after = h.backend().add(&pr(1), &owned(&["b", "a"])).await.unwrap();
    assert_eq!(h.calls() - before, 1, "all additions in one call");
    assert_eq!(after, set(&["a", "b", "human"]));
    assert_eq!(h.truth(&pr(1)), after);
}

async fn adding_a_present_label_changes_nothing(h: &impl Harness) {
    h.outside_set(&pr(1), &["a"]);
    let after = h.backend().add(&pr(1), &owned(&["a"])).await.unwrap();
    assert_eq!(after, set(&["a"]));
}

async fn remove_returns_the_rest_and_absent_for_a_label_not_there(h: &impl Harness) {
    h.outside_set(&pr(1), &["a", "human"]);
    let backend = h.backend();
    assert_eq!(
        backend.remove(&pr(1), "a").await.unwrap(),
        RemoveOutcome::Removed(set(&["human"]))
    );
    assert_eq!(
        backend.remove(&pr(1), "a").await.unwrap(),
        RemoveOutcome::Absent
    );
    assert_eq!(
        backend.remove(&pr(1), "never-there").await.unwrap(),
        RemoveOutcome::Absent
    );
    assert_eq!(h.truth(&pr(1)), set(&["human"]));
}

async fn names_compare_case_insensitively(h: &impl Harness) {
    h.outside_set(&pr(1), &["Bug"]);
    let backend = h.backend();
    let after = backend.add(&pr(1), &owned(&["bug"])).await.unwrap();
    assert_eq!(after.len(), 1, "{after}");
    assert!(after.contains("BUG"));
    assert!(
        matches!(backend.remove(&pr(1), "BUG").await.unwrap(), RemoveOutcome::Removed(rest) if rest.is_empty())
    );
}

async fn names_with_spaces_slashes_and_unicode_round_trip(h: &impl Harness) {
    let odd = [
        "needs review: 🚀",
        "area/api",
        "100% done",
        "what?#x",
        "é".repeat(50).leak() as &str,
    ];
    let backend = h.backend();
    let after = backend.add(&pr(1), &owned(&odd)).await.unwrap();
    assert_eq!(after, set(&odd));
    for name in odd {
        assert!(
            matches!(
                backend.remove(&pr(1), name).await.unwrap(),
                RemoveOutcome::Removed(_)
            ),
            "{name}"
        );
    }
    assert!(h.truth(&pr(1)).is_empty());
}

async fn replace_sets_exactly_the_given_labels(h: &impl Harness) {
    h.outside_set(&pr(1), &["old", "human"]);
    let after = h.backend().replace(&pr(1), &owned(&["new"])).await.unwrap();
    assert_eq!(after, set(&["new"]));
    assert_eq!(h.truth(&pr(1)), set(&["new"]));
}

async fn invalid_names_are_rejected_before_any_call(h: &impl Harness) {
    let backend = h.backend();
    let before = h.calls();
    let too_long = "x".repeat(51);
    for bad in ["", " padded", "bell\u{7}", too_long.as_str()] {
        let errors = [
            backend
                .add(&pr(1), &owned(&["fine", bad]))
                .await
                .unwrap_err(),
            backend.replace(&pr(1), &owned(&[bad])).await.unwrap_err(),
            backend.remove(&pr(1), bad).await.unwrap_err(),
        ];
        for err in errors {
            assert!(matches!(err, Error::InvalidLabel { .. }), "{bad:?}: {err}");
        }
    }
    assert_eq!(h.calls(), before, "nothing was sent");
}

async fn other_pull_requests_are_untouched(h: &impl Harness) {
    h.outside_set(&pr(1), &["a"]);
    h.outside_set(&pr(2), &["a"]);
    h.backend().remove(&pr(1), "a").await.unwrap();
    h.backend().add(&pr(1), &owned(&["b"])).await.unwrap();
    assert_eq!(h.truth(&pr(2)), set(&["a"]));
}

async fn a_transition_is_three_calls_and_keeps_outside_labels(h: &impl Harness) {
    h.outside_set(&pr(1), &["ready-for-qa", "human"]);
    let manager = AtomicLabelManager::new(h.backend());
    let before = h.calls();
    let outcome = manager
        .transition(
            &pr(1),
            &LabelTransition::move_label("ready-for-qa", "remediation-in-progress"),
        )
        .await
        .unwrap();
    assert_eq!(outcome.result, TransitionResult::Applied);
    assert_eq!(
        outcome.final_labels,
        set(&["human", "remediation-in-progress"])
    );
    assert_eq!(h.truth(&pr(1)), outcome.final_labels);
    assert_eq!((outcome.calls, h.calls() - before), (3, 3));
}

async fn a_transition_already_in_state_reads_once_and_writes_nothing(h: &impl Harness) {
    h.outside_set(&pr(1), &["remediation-in-progress"]);
    let manager = AtomicLabelManager::new(h.backend());
    let transition = LabelTransition::move_label("ready-for-qa", "remediation-in-progress");
    let before = h.calls();
    for _ in 0..2 {
        let outcome = manager.transition(&pr(1), &transition).await.unwrap();
        assert_eq!(outcome.result, TransitionResult::AlreadyInState);
    }
    assert_eq!(
        h.calls() - before,
        2,
        "one (conditional) read each, no write"
    );
}

async fn a_transition_with_a_missing_precondition_conflicts_without_writing(h: &impl Harness) {
    h.outside_set(&pr(1), &["human"]);
    let manager = AtomicLabelManager::new(h.backend());
    let before = h.calls();
    let err = manager
        .transition(
            &pr(1),
            &LabelTransition::move_label("ready-for-qa", "remediation-in-progress"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Conflict { current, .. } if *current == set(&["human"])),
        "{err}"
    );
    assert_eq!(h.calls() - before, 1);
    assert_eq!(h.truth(&pr(1)), set(&["human"]));
}

/// Runs every check on a fresh harness from `make`.
macro_rules! conformance {
    ($module:ident, $make:expr) => {
        common::suite!($module, $make;
            reads_return_every_label_sorted_with_an_etag,
            a_read_with_the_current_etag_is_not_modified_until_something_changes,
            add_is_one_call_that_keeps_other_labels_and_returns_the_result,
            adding_a_present_label_changes_nothing,
            remove_returns_the_rest_and_absent_for_a_label_not_there,
            names_compare_case_insensitively,
            names_with_spaces_slashes_and_unicode_round_trip,
            replace_sets_exactly_the_given_labels,
            invalid_names_are_rejected_before_any_call,
            other_pull_requests_are_untouched,
            a_transition_is_three_calls_and_keeps_outside_labels,
            a_transition_already_in_state_reads_once_and_writes_nothing,
            a_transition_with_a_missing_precondition_conflicts_without_writing,
        );
    };
}

conformance!(memory, MemoryHarness::new());
conformance!(github, GitHubHarness::start().await);

/// What only the HTTP backend can show: GitHub's answers beyond the label
/// semantics (credentials, rate-limit headers, App installations).
mod github_only {
    use super::*;
    use label_cas::GitHubLabels;
    use secrecy::SecretString;
    use testkit::github::FakeGitHub;

    #[tokio::test]
    async fn a_bad_token_is_unauthorized_and_permanent() {
        let fake = FakeGitHub::start().await.unwrap();
        let github = GitHubLabels::builder()
            .token(SecretString::from("ghp_not_a_valid_token"))
            .base_uri(fake.url().as_str())
            .build()
            .unwrap();
        let err = github.get(&pr(1), None).await.unwrap_err();
        assert!(matches!(err, Error::Unauthorized), "{err}");
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn every_answer_updates_the_rate_limit_and_a_304_costs_nothing() {
        let h = GitHubHarness::start().await;
        assert!(h.labels.rate_limit().is_none(), "nothing seen yet");
        let Fetched::Labels { etag, .. } = h.labels.get(&pr(1), None).await.unwrap() else {
            panic!()
        };
        let first = h.labels.rate_limit().unwrap();
        assert_eq!((first.limit, first.remaining, first.used), (5000, 4999, 1));
        assert!(first.reset > jiff::Timestamp::now());
        assert_eq!(
            h.labels.get(&pr(1), etag.as_ref()).await.unwrap(),
            Fetched::NotModified
        );
        assert_eq!(
            h.labels.rate_limit().unwrap().remaining,
            4999,
            "the 304 was free"
        );
        assert_eq!(h.metrics.not_modified_count(), 1);
    }

    #[tokio::test]
    async fn a_github_app_installation_mints_its_token_and_works() {
        let fake = FakeGitHub::start().await.unwrap();
        let key = testkit::github::TEST_APP_PRIVATE_KEY_PEM;
        let github = GitHubLabels::builder()
            .app_installation(12345, SecretString::from(key), 678)
            .base_uri(fake.url().as_str())
            .build()
            .unwrap();
        let after = github.add(&pr(1), &owned(&["from-app"])).await.unwrap();
        assert_eq!(after, set(&["from-app"]));
        assert_eq!(fake.calls().count(Some("post"), Some("access_tokens")), 1);
        // The installation token is cached for the next call.
        github.get(&pr(1), None).await.unwrap();
        assert_eq!(fake.calls().count(Some("post"), Some("access_tokens")), 1);
    }

    #[tokio::test]
    async fn a_private_key_that_is_not_rsa_pem_is_a_configuration_error() {
        let err = GitHubLabels::builder()
            .app_installation(1, SecretString::from("not a key"), 2)
            .base_uri("http://127.0.0.1:1/")
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_base_uri_with_a_path_prefix_is_kept_for_github_enterprise() {
        // GitHub Enterprise serves the API under /api/v3; the fake serves it
        // at the root, so a prefix must reach the server (and 404 there).
        let fake = FakeGitHub::start().await.unwrap();
        let github = GitHubLabels::builder()
            .token(SecretString::from(fake.token().to_owned()))
            .base_uri(format!("{}api/v3/", fake.url()))
            .build()
            .unwrap();
        let err = github.get(&pr(1), None).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert_eq!(fake.calls().count(Some("get"), Some("unknown")), 1);
    }

    #[tokio::test]
    async fn missing_credentials_or_a_bad_base_uri_are_configuration_errors() {
        assert!(matches!(
            GitHubLabels::builder().build(),
            Err(Error::Config { .. })
        ));
        let bad = GitHubLabels::builder()
            .token(SecretString::from("t"))
            .base_uri("not a uri")
            .build();
        assert!(matches!(bad, Err(Error::Config { .. })));
    }
}
