//! Secrets never leak: every error, `Debug` output and log line (at TRACE,
//! octocrab's and hyper's included) produced while working with a known
//! token and a known App private key is searched for them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, owned, pr};
use label_cas::{
    AtomicLabelManager, Error, GitHubLabels, LabelBackend, LabelTransition, PullRequests,
    RateLimitPolicy, RateLimited, TransitionPolicy,
};
use resilience::RetryPolicy;
use secrecy::SecretString;
use testkit::faults::{InjectedError, Match};
use testkit::github::FakeGitHub;
use testkit::logs::Logs;

const TOKEN: &str = "ghp_KnownSecretToken0123456789abcdefGHIJ";
const WRONG_TOKEN: &str = "ghp_AnotherSecretToken987654321zyxwvuTSR";

fn client(fake: &FakeGitHub, token: &str) -> GitHubLabels {
    GitHubLabels::builder()
        .token(SecretString::from(token.to_owned()))
        .base_uri(fake.url().as_str())
        .request_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap()
}

fn one_attempt() -> TransitionPolicy {
    TransitionPolicy {
        call_retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        max_attempts: 1,
        ..TransitionPolicy::default()
    }
}

/// The key with one line of its body missing: still PEM, no longer a key.
fn corrupt(key: &str) -> String {
    let mut lines: Vec<&str> = key.lines().collect();
    lines.remove(3);
    lines.join("\n")
}

/// Collects `{}`, `{:?}` and `{:#?}` of a value.
fn shown(out: &mut Vec<String>, value: &(impl std::fmt::Display + std::fmt::Debug)) {
    out.push(format!("{value}"));
    out.push(format!("{value:?}"));
    out.push(format!("{value:#?}"));
}

// Current-thread runtime: the subscriber set for this thread sees every
// task, the fake server's included.
#[tokio::test]
async fn no_token_or_private_key_appears_in_any_error_debug_output_or_log_line() {
    let (logs, _capture) = Logs::capture();

    let fake = FakeGitHub::builder().token(TOKEN).start().await.unwrap();
    let mut outputs: Vec<String> = Vec::new();
    let mut errors: Vec<Error> = Vec::new();
    let h = common::GitHubHarness {
        labels: Arc::new(client(&fake, TOKEN)),
        fake,
        metrics: label_cas::Metrics::new(),
    };
    let fake = &h.fake;

    // Success, conflict and already-in-state, through the rate limiter.
    h.outside_set(&pr(1), &["ready-for-qa"]);
    let paced = Arc::new(
        RateLimited::new(
            h.backend(),
            RateLimitPolicy {
                mutation_spacing: Duration::ZERO,
                max_rejections: 0,
                ..RateLimitPolicy::default()
            },
        )
        .unwrap(),
    );
    let manager = AtomicLabelManager::new(Arc::clone(&paced))
        .with_policy(one_attempt())
        .unwrap();
    let stage = LabelTransition::move_label("ready-for-qa", "in-progress");
    manager.transition(&pr(1), &stage).await.unwrap();
    manager.transition(&pr(1), &stage).await.unwrap();
    errors.push(
        manager
            .transition(&pr(1), &LabelTransition::move_label("gone", "x"))
            .await
            .unwrap_err(),
    );

    // A rate-limit answer, a 5xx, a dropped connection, a timeout.
    fake.faults().fail_next(
        Match::any().verb("get"),
        1,
        InjectedError::TooManyRequests {
            retry_after: Duration::from_secs(1),
        },
    );
    errors.push(paced.get(&pr(2), None).await.unwrap_err());
    fake.faults()
        .fail_next(Match::any().verb("get"), 1, InjectedError::Status(503));
    errors.push(h.labels.get(&pr(2), None).await.unwrap_err());
    fake.faults()
        .fail_next(Match::any().verb("delete"), 1, InjectedError::Drop);
    errors.push(h.labels.remove(&pr(1), "in-progress").await.unwrap_err());
    let latency = fake.faults().latency(
        Match::any().verb("post"),
        Duration::from_secs(1),
        Duration::ZERO,
    );
    errors.push(h.labels.add(&pr(2), &owned(&["slow"])).await.unwrap_err());
    fake.faults().remove(latency);

    // A failed addition whose undo fails too: PartiallyApplied.
    h.outside_set(&pr(3), &["ready-for-qa"]);
    fake.faults()
        .fail_next(Match::any().verb("post"), 2, InjectedError::Status(403));
    errors.push(manager.transition(&pr(3), &stage).await.unwrap_err());

    // Not found (an Enterprise-style prefix the fake does not serve).
    let prefixed = GitHubLabels::builder()
        .token(SecretString::from(TOKEN.to_owned()))
        .base_uri(format!("{}api/v3/", fake.url()))
        .build()
        .unwrap();
    errors.push(prefixed.get(&pr(1), None).await.unwrap_err());

    // A wrong token: 401.
    let wrong = client(fake, WRONG_TOKEN);
    errors.push(wrong.get(&pr(1), None).await.unwrap_err());
    let wrong_manager = AtomicLabelManager::new(wrong)
        .with_policy(one_attempt())
        .unwrap();
    errors.push(wrong_manager.transition(&pr(1), &stage).await.unwrap_err());

    // A GitHub App installation with a real (throwaway) key, and a bad key.
    let key = testkit::github::TEST_APP_PRIVATE_KEY_PEM;
    let app = GitHubLabels::builder()
        .app_installation(1, SecretString::from(key), 2)
        .base_uri(fake.url().as_str())
        .build()
        .unwrap();
    app.add(&pr(4), &owned(&["from-app"])).await.unwrap();
    outputs.push(format!("{app:?}"));
    errors.push(
        GitHubLabels::builder()
            .app_installation(1, SecretString::from(corrupt(key)), 2)
            .build()
            .unwrap_err(),
    );

    // Pull request reads on the same clients: found, not found, 401.
    fake.add_pull("acme", "widgets", 5, &"a".repeat(40), "feature", ["x"])
        .unwrap();
    let pulls = h.labels.pull_requests();
    pulls.pull(&pr(5), None).await.unwrap();
    errors.push(pulls.pull(&pr(6), None).await.unwrap_err());
    errors.push(
        client(fake, WRONG_TOKEN)
            .pull_requests()
            .pull(&pr(5), None)
            .await
            .unwrap_err(),
    );
    outputs.push(format!("{pulls:?}"));
    outputs.push(format!("{:?}", app.pull_requests()));

    for error in &errors {
        shown(&mut outputs, error);
        let mut source = std::error::Error::source(error);
        while let Some(s) = source {
            outputs.push(s.to_string());
            source = s.source();
        }
    }
    outputs.push(format!("{:?}", h.labels));
    outputs.push(format!("{paced:?}"));
    outputs.push(format!("{manager:?}"));
    outputs.push(format!(
        "{:?}",
        GitHubLabels::builder().token(SecretString::from(TOKEN.to_owned()))
    ));
    outputs.push(format!(
        "{:?}",
        GitHubLabels::builder().app_installation(1, SecretString::from(key), 2)
    ));

    let logs = logs.text();
    assert!(
        logs.contains("label transition done"),
        "logs were captured:\n{logs}"
    );
    assert!(logs.contains("DELETE may have been applied") || logs.lines().count() > 20);
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, Error::PartiallyApplied { .. })),
        "{errors:#?}"
    );
    assert!(errors.iter().any(|e| matches!(e, Error::Unauthorized)));
    assert!(errors.iter().any(|e| matches!(e, Error::Timeout { .. })));
    assert!(errors.iter().any(|e| matches!(e, Error::Transport { .. })));
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, Error::RateLimited { .. }))
    );

    // The key's distinctive lines (its base64 body), not its PEM armour.
    let key_lines: Vec<&str> = key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .take(5)
        .collect();
    let everything = outputs.join("\n") + "\n" + &logs;
    for secret in [TOKEN, WRONG_TOKEN, &TOKEN[4..20], &WRONG_TOKEN[4..20]]
        .into_iter()
        .chain(key_lines)
    {
        assert!(!everything.contains(secret), "a secret leaked: {secret}");
    }
    // Nor any installation token the fake minted, nor an Authorization header.
    for marker in ["ghs_", "Bearer", "authorization:"] {
        assert!(
            !everything.contains(marker),
            "{marker} appears in the output"
        );
    }
}
