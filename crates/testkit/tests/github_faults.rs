//! FakeGitHub under injected faults (error rates, 429 with Retry-After,
//! dropped connections, partitions, fail-next, latency) and its call
//! counters per (verb, resource, outcome).

#![cfg(feature = "github")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use testkit::calls::{CallKey, Outcome};
use testkit::faults::{InjectedError, Match};
use testkit::github::FakeGitHub;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const LABELS: &str = "/repos/acme/widgets/issues/1/labels";

fn get_labels() -> Match {
    Match::any().verb("get").resource("labels")
}

#[tokio::test]
async fn injected_error_rate_answers_the_status_and_charges_nothing() {
    let github = FakeGitHub::start().await.unwrap();
    github
        .faults()
        .error_rate(get_labels(), 1.0, InjectedError::Status(503));
    let octocrab = github.octocrab().unwrap();

    let err = octocrab
        .issues("acme", "widgets")
        .list_labels_for_issue(1)
        .send()
        .await
        .unwrap_err();

    match err {
        octocrab::Error::GitHub { source, .. } => assert_eq!(source.status_code, 503),
        other => panic!("expected 503, got {other:?}"),
    }
    // Other calls are untouched.
    let labels = octocrab
        .issues("acme", "widgets")
        .add_labels(1, &["ok".to_owned()])
        .await
        .unwrap();
    assert_eq!(labels.len(), 1);
    let calls = github.calls();
    assert_eq!(
        calls.count_outcome(Some("get"), Some("labels"), &Outcome::Injected(503)),
        1
    );
    assert_eq!(
        calls.count_outcome(Some("post"), Some("labels"), &Outcome::Ok),
        1
    );
    assert_eq!(github.rate_limit(github.token()).unwrap().used, 1);
}

#[tokio::test]
async fn error_rate_is_reproducible_from_the_seed() {
    async fn pattern(seed: u64) -> Vec<u16> {
        let github = FakeGitHub::builder().seed(seed).start().await.unwrap();
        github
            .faults()
            .error_rate(get_labels(), 0.5, InjectedError::Status(500));
        let octocrab = github.octocrab().unwrap();
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(octocrab._get(LABELS).await.unwrap().status().as_u16());
        }
        statuses
    }
    let a = pattern(7).await;
    assert_eq!(a, pattern(7).await);
    assert!(a.contains(&500) && a.contains(&200), "{a:?}");
}

#[tokio::test]
async fn injected_429_carries_retry_after() {
    let github = FakeGitHub::start().await.unwrap();
    github.faults().fail_next(
        Match::any(),
        1,
        InjectedError::TooManyRequests {
            retry_after: Duration::from_millis(6500),
        },
    );
    let octocrab = github.octocrab().unwrap();

    let resp = octocrab._get(LABELS).await.unwrap();

    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert!(resp.headers().get("x-ratelimit-remaining").is_none());
    assert_eq!(octocrab._get(LABELS).await.unwrap().status(), 200);
    assert_eq!(
        github
            .calls()
            .count_outcome(None, None, &Outcome::Injected(429)),
        1
    );
}

#[tokio::test]
async fn dropped_connection_is_closed_without_a_response() {
    let github = FakeGitHub::start().await.unwrap();
    github.faults().drop_rate(get_labels(), 1.0);
    let addr = format!(
        "{}:{}",
        github.url().host_str().unwrap(),
        github.url().port().unwrap()
    );

    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET {LABELS} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        github.token()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut received))
        .await
        .expect("the server should close the connection");

    // Closed (EOF or reset) with not a single byte of response.
    assert!(
        received.is_empty(),
        "{}",
        String::from_utf8_lossy(&received)
    );
    drop(read);
    // octocrab sees a transport error, not an HTTP status.
    let err = github.octocrab().unwrap()._get(LABELS).await.unwrap_err();
    assert!(!matches!(err, octocrab::Error::GitHub { .. }), "{err:?}");
    assert_eq!(
        github
            .calls()
            .count_outcome(Some("get"), Some("labels"), &Outcome::Dropped),
        2
    );
}

#[tokio::test]
async fn partition_holds_requests_until_healed() {
    let github = FakeGitHub::start().await.unwrap();
    let octocrab = github.octocrab().unwrap();
    github.faults().partition();

    let pending = tokio::spawn({
        let octocrab = octocrab.clone();
        async move { octocrab._get(LABELS).await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "a partitioned request must hang");
    assert_eq!(github.calls().total(), 0, "not answered, not counted yet");

    github.faults().heal();
    let status = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    assert_eq!(status, 200);
    assert_eq!(
        github
            .calls()
            .count_outcome(Some("get"), Some("labels"), &Outcome::Ok),
        1
    );
}

#[tokio::test]
async fn a_mutation_abandoned_during_a_partition_is_still_applied_after_heal() {
    // As with a real server that already received the request, a client
    // timeout says nothing about whether the write happened.
    let github = FakeGitHub::start().await.unwrap();
    let octocrab = github.octocrab().unwrap();
    github.faults().partition();

    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        octocrab
            .issues("acme", "widgets")
            .add_labels(1, &["late".to_owned()]),
    )
    .await;
    assert!(gave_up.is_err(), "the client should have timed out");
    assert!(github.labels("acme", "widgets", 1).is_empty());

    github.faults().heal();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while github.calls().total() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(github.labels("acme", "widgets", 1), ["late"]);
    assert_eq!(
        github
            .calls()
            .count_outcome(Some("post"), Some("labels"), &Outcome::Ok),
        1
    );
}

#[tokio::test]
async fn fail_next_fails_exactly_n_matching_calls_and_does_no_work() {
    let github = FakeGitHub::start().await.unwrap();
    github.faults().fail_next(
        Match::any().verb("post").resource("labels"),
        2,
        InjectedError::Status(500),
    );
    let octocrab = github.octocrab().unwrap();
    let issues = octocrab.issues("acme", "widgets");

    for attempt in 0..2 {
        let err = issues
            .add_labels(1, &[format!("try-{attempt}")])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, octocrab::Error::GitHub { source, .. } if source.status_code == 500),
            "{err:?}"
        );
    }
    assert!(
        github.labels("acme", "widgets", 1).is_empty(),
        "failed calls did nothing"
    );
    // A GET is not matched by the rule.
    assert_eq!(octocrab._get(LABELS).await.unwrap().status(), 200);
    let labels = issues.add_labels(1, &["third".to_owned()]).await.unwrap();

    assert_eq!(labels.len(), 1);
    assert_eq!(
        github.faults().rule_count(),
        0,
        "the one-shot rule is used up"
    );
    assert_eq!(
        github
            .calls()
            .count_outcome(Some("post"), Some("labels"), &Outcome::Injected(500)),
        2
    );
}

#[tokio::test]
async fn latency_delays_matching_requests() {
    let github = FakeGitHub::start().await.unwrap();
    github
        .add_pull("acme", "widgets", 1, "abc", "b", ["x"])
        .unwrap();
    github.faults().latency(
        Match::any().resource("pull"),
        Duration::from_millis(300),
        Duration::ZERO,
    );
    let octocrab = github.octocrab().unwrap();

    let started = tokio::time::Instant::now();
    octocrab.pulls("acme", "widgets").get(1).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn calls_are_counted_per_verb_resource_and_outcome() {
    let github = FakeGitHub::start().await.unwrap();
    github
        .add_pull("acme", "widgets", 1, "abc", "b", ["x"])
        .unwrap();
    let octocrab = github.octocrab().unwrap();
    let issues = octocrab.issues("acme", "widgets");

    issues.list_labels_for_issue(1).send().await.unwrap();
    issues.add_labels(1, &["y".to_owned()]).await.unwrap();
    issues
        .replace_all_labels(1, &["z".to_owned()])
        .await
        .unwrap();
    issues.remove_label(1, "z").await.unwrap();
    issues.remove_label(1, "z").await.unwrap_err();
    octocrab.pulls("acme", "widgets").get(1).await.unwrap();
    octocrab.pulls("acme", "widgets").get(2).await.unwrap_err();
    octocrab
        ._get("/repos/acme/widgets/commits/abc/pulls")
        .await
        .unwrap();
    octocrab._get("/not/an/endpoint").await.unwrap();

    let key = |verb: &str, resource: &str, outcome: Outcome| CallKey {
        verb: verb.into(),
        resource: resource.into(),
        outcome,
    };
    let expected = [
        (key("delete", "label", Outcome::Ok), 1),
        (key("delete", "label", Outcome::Error(404)), 1),
        (key("get", "commit_pulls", Outcome::Ok), 1),
        (key("get", "labels", Outcome::Ok), 1),
        (key("get", "pull", Outcome::Error(404)), 1),
        (key("get", "pull", Outcome::Ok), 1),
        (key("get", "unknown", Outcome::Error(404)), 1),
        (key("post", "labels", Outcome::Ok), 1),
        (key("put", "labels", Outcome::Ok), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(github.calls().snapshot(), expected);
    assert_eq!(github.calls().total(), 9);
}

#[tokio::test]
async fn dropping_the_fake_stops_it() {
    let github = FakeGitHub::start().await.unwrap();
    let octocrab = github.octocrab().unwrap();
    assert_eq!(octocrab._get(LABELS).await.unwrap().status(), 200);

    drop(github);
    tokio::task::yield_now().await;

    let result = tokio::time::timeout(Duration::from_secs(30), octocrab._get(LABELS))
        .await
        .expect("a stopped fake refuses or closes, it does not hang");
    assert!(result.is_err(), "{result:?}");
}
