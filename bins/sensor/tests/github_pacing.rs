//! The label backend the binaries build (`Backends::build` with GitHub's
//! API) paces itself with label-cas's `RateLimited`: mutations one at a
//! time, a secondary-limit 403 followed by silence until its `retry-after`,
//! and a configured spacing that never meets the limit at all.
//!
//! Judged from FakeGitHub, which enforces the secondary limit itself: a
//! mutation it receives during a block, or sooner than its spacing after
//! the previous one, is a 403 it counts — a storm shows as 403s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use label_cas::{LabelBackend, PrRef};
use sensor::backends::{BackendChoice, Backends, Clients, GitHubBackend};
use sensor::{Config, wiring};
use testkit::calls::Outcome;
use testkit::github::FakeGitHub;

/// How soon after a token's mutation FakeGitHub refuses the next one.
const GITHUB_SPACING: Duration = Duration::from_millis(300);
/// How long FakeGitHub blocks a token that broke the limit.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Pull requests labelled at once.
const PRS: u64 = 4;

/// The production label backend for `config`, on a FakeGitHub with the
/// secondary limit on (everything but GitHub in memory).
async fn labels_for(config: &Config) -> (FakeGitHub, Arc<dyn LabelBackend>) {
    resilience::tls::ensure_crypto_provider();
    let github = FakeGitHub::builder()
        .secondary_limit(GITHUB_SPACING)
        .secondary_retry_after(RETRY_AFTER)
        .start()
        .await
        .unwrap();
    for n in 1..=PRS {
        github
            .add_pull(
                "acme",
                "widgets",
                n,
                common::OLD,
                &format!("task-{n}"),
                ["ready-for-qa"],
            )
            .unwrap();
    }
    let choice = BackendChoice::resolve(true, None, None, None, Some(GitHubBackend::Api));
    let clients = Clients {
        kube: None,
        github: Some(github.octocrab().unwrap()),
    };
    let backends =
        Backends::build(choice, &wiring::backend_settings(config).unwrap(), clients).unwrap();
    (github, backends.labels)
}

/// Adds `needs-qa` to every pull request at once; how long it took.
async fn label_all(labels: &Arc<dyn LabelBackend>) -> Duration {
    let started = Instant::now();
    let adds = (1..=PRS).map(|n| {
        let labels = Arc::clone(labels);
        async move {
            let pr = PrRef::new("acme", "widgets", n).unwrap();
            labels.add(&pr, &["needs-qa".to_owned()]).await
        }
    });
    for result in futures::future::join_all(adds).await {
        result.unwrap();
    }
    started.elapsed()
}

fn refused(github: &FakeGitHub) -> u64 {
    github
        .calls()
        .count_outcome(Some("post"), Some("labels"), &Outcome::Error(403))
}

fn assert_labelled(github: &FakeGitHub) {
    for n in 1..=PRS {
        let labels = github.labels("acme", "widgets", n);
        assert!(labels.iter().any(|l| l == "needs-qa"), "PR {n}: {labels:?}");
    }
}

#[tokio::test]
async fn by_default_a_secondary_limit_403_silences_every_mutation_until_its_retry_after() {
    let config = Config::default();
    assert_eq!(config.github_mutation_spacing_ms, 0);
    let (github, labels) = labels_for(&config).await;

    let took = label_all(&labels).await;

    assert_labelled(&github);
    // Sent back to back, each mutation after the first is refused once;
    // one sent during a block would be refused again and counted.
    assert_eq!(refused(&github), PRS - 1, "{:?}", github.calls().snapshot());
    assert_eq!(
        github
            .calls()
            .count_outcome(Some("post"), Some("labels"), &Outcome::Ok),
        PRS
    );
    assert!(took >= RETRY_AFTER * (PRS as u32 - 1), "took {took:?}");
}

#[tokio::test]
async fn a_spacing_as_long_as_githubs_never_meets_the_secondary_limit() {
    let config = Config {
        github_mutation_spacing_ms: u64::try_from(GITHUB_SPACING.as_millis()).unwrap() + 50,
        ..Config::default()
    };
    let (github, labels) = labels_for(&config).await;

    let took = label_all(&labels).await;

    assert_labelled(&github);
    assert_eq!(refused(&github), 0, "{:?}", github.calls().snapshot());
    assert!(took >= GITHUB_SPACING * (PRS as u32 - 1), "took {took:?}");
}

#[test]
fn a_spacing_longer_than_the_longest_wait_is_refused_naming_the_flag() {
    let config = Config {
        github_mutation_spacing_ms: 5_000,
        github_rate_limit_max_wait_seconds: 2,
        ..common::config()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("github-mutation-spacing-ms"), "{err}");
}
