//! FakeGitHub's authentication, rate limits and conditional requests: the
//! `x-ratelimit-*` headers, exhausted budgets, the secondary limit, ETags and
//! 304s (which cost nothing), and 401 without a valid token.

#![cfg(feature = "github")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, IF_NONE_MATCH};
use octocrab::Octocrab;
use octocrab::models::Label;
use octocrab::service::middleware::cache::mem::InMemoryCache;
use testkit::calls::Outcome;
use testkit::github::{FakeGitHub, PrimaryLimitStatus};

const LABELS: &str = "/repos/acme/widgets/issues/1/labels";

type Response = http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, octocrab::Error>>;

fn header(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
        .to_owned()
}

fn number(resp: &Response, name: &str) -> i64 {
    header(resp, name).parse().unwrap()
}

async fn body(octocrab: &Octocrab, resp: Response) -> serde_json::Value {
    serde_json::from_str(&octocrab.body_to_string(resp).await.unwrap()).unwrap()
}

async fn get_if_none_match(octocrab: &Octocrab, etag: &str) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(IF_NONE_MATCH, HeaderValue::from_str(etag).unwrap());
    octocrab
        ._get_with_headers(LABELS, Some(headers))
        .await
        .unwrap()
}

#[tokio::test]
async fn responses_carry_rate_limit_headers_counting_down() {
    let github = FakeGitHub::start().await.unwrap();
    let octocrab = github.octocrab().unwrap();

    let first = octocrab._get(LABELS).await.unwrap();
    let second = octocrab
        ._post(LABELS, Some(&serde_json::json!({"labels": ["x"]})))
        .await
        .unwrap();

    assert_eq!(first.status(), 200);
    assert_eq!(number(&first, "x-ratelimit-limit"), 5000);
    assert_eq!(number(&first, "x-ratelimit-remaining"), 4999);
    assert_eq!(number(&first, "x-ratelimit-used"), 1);
    assert_eq!(header(&first, "x-ratelimit-resource"), "core");
    assert_eq!(number(&second, "x-ratelimit-remaining"), 4998);
    assert_eq!(number(&second, "x-ratelimit-used"), 2);
    let reset = number(&first, "x-ratelimit-reset");
    let now = jiff::Timestamp::now().as_second();
    assert!(
        reset > now && reset <= now + 3601,
        "reset {reset}, now {now}"
    );
    assert_eq!(number(&second, "x-ratelimit-reset"), reset, "one window");
    assert_eq!(github.rate_limit(github.token()).unwrap().remaining, 4998);
}

#[tokio::test]
async fn errors_are_charged_but_401s_are_not() {
    let github = FakeGitHub::start().await.unwrap();
    let octocrab = github.octocrab().unwrap();

    let not_found = octocrab
        ._get("/repos/acme/widgets/pulls/404")
        .await
        .unwrap();
    assert_eq!(not_found.status(), 404);
    assert_eq!(number(&not_found, "x-ratelimit-remaining"), 4999);

    let stranger = github.octocrab_with_token("ghp_not_a_token").unwrap();
    let unauthorized = stranger._get(LABELS).await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert!(
        unauthorized
            .headers()
            .get("x-ratelimit-remaining")
            .is_none()
    );
    assert_eq!(github.rate_limit(github.token()).unwrap().used, 1);
}

#[tokio::test]
async fn matching_if_none_match_is_304_and_costs_nothing() {
    let github = FakeGitHub::start().await.unwrap();
    github.set_labels("acme", "widgets", 1, ["a"]).unwrap();
    let octocrab = github.octocrab().unwrap();

    let first = octocrab._get(LABELS).await.unwrap();
    let etag = header(&first, "etag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong ETag: {etag}"
    );
    assert_eq!(number(&first, "x-ratelimit-remaining"), 4999);

    let unchanged = get_if_none_match(&octocrab, &etag).await;
    assert_eq!(unchanged.status(), 304);
    assert_eq!(header(&unchanged, "etag"), etag);
    assert_eq!(
        number(&unchanged, "x-ratelimit-remaining"),
        4999,
        "a 304 is free"
    );
    assert_eq!(octocrab.body_to_string(unchanged).await.unwrap(), "");

    // Someone changes the labels: the old ETag no longer matches.
    github.add_label("acme", "widgets", 1, "b").unwrap();
    let changed = get_if_none_match(&octocrab, &etag).await;
    assert_eq!(changed.status(), 200);
    assert_ne!(header(&changed, "etag"), etag);
    assert_eq!(number(&changed, "x-ratelimit-remaining"), 4998);
    assert_eq!(body(&octocrab, changed).await.as_array().unwrap().len(), 2);

    assert_eq!(
        github
            .calls()
            .count_outcome(Some("get"), Some("labels"), &Outcome::Ok),
        3
    );
}

#[tokio::test]
async fn etags_are_token_specific() {
    let github = FakeGitHub::builder()
        .token("ghp_alice")
        .token("ghp_bob")
        .start()
        .await
        .unwrap();
    let alice = github.octocrab().unwrap();
    let bob = github.octocrab_with_token("ghp_bob").unwrap();
    assert_eq!(github.token(), "ghp_alice");

    let etag = header(&alice._get(LABELS).await.unwrap(), "etag");
    let bobs = get_if_none_match(&bob, &etag).await;
    assert_eq!(bobs.status(), 200, "another token's ETag never matches");
    assert_eq!(get_if_none_match(&alice, &etag).await.status(), 304);
}

#[tokio::test]
async fn octocrabs_http_cache_gets_304s_that_cost_nothing() {
    let github = FakeGitHub::start().await.unwrap();
    github.set_labels("acme", "widgets", 1, ["cached"]).unwrap();
    let octocrab = github
        .octocrab_builder()
        .unwrap()
        .personal_token(github.token().to_owned())
        .cache(InMemoryCache::new())
        .build()
        .unwrap();

    for _ in 0..3 {
        let page = octocrab
            .issues("acme", "widgets")
            .list_labels_for_issue(1)
            .send()
            .await
            .unwrap();
        let names: Vec<String> = page.items.into_iter().map(|l: Label| l.name).collect();
        assert_eq!(names, ["cached"]);
    }
    assert_eq!(github.calls().count(Some("get"), Some("labels")), 3);
    assert_eq!(github.rate_limit(github.token()).unwrap().used, 1);
}

#[tokio::test]
async fn exhausted_budget_is_403_with_remaining_zero() {
    let github = FakeGitHub::builder().rate_limit(2).start().await.unwrap();
    let octocrab = github.octocrab().unwrap();
    assert_eq!(octocrab._get(LABELS).await.unwrap().status(), 200);
    assert_eq!(octocrab._get(LABELS).await.unwrap().status(), 200);

    let refused = octocrab
        ._post(LABELS, Some(&serde_json::json!({"labels": ["late"]})))
        .await
        .unwrap();

    assert_eq!(refused.status(), 403);
    assert_eq!(number(&refused, "x-ratelimit-remaining"), 0);
    assert_eq!(number(&refused, "x-ratelimit-limit"), 2);
    assert!(number(&refused, "x-ratelimit-reset") > jiff::Timestamp::now().as_second());
    let body = body(&octocrab, refused).await;
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("API rate limit exceeded for user ID"),
        "{message}"
    );
    assert!(
        github.labels("acme", "widgets", 1).is_empty(),
        "nothing applied"
    );
    assert_eq!(
        github
            .calls()
            .count_outcome(Some("post"), Some("labels"), &Outcome::Error(403)),
        1
    );
}

#[tokio::test]
async fn exhausted_budget_can_answer_429() {
    let github = FakeGitHub::builder()
        .rate_limit(1)
        .primary_limit_status(PrimaryLimitStatus::TooManyRequests)
        .start()
        .await
        .unwrap();
    let octocrab = github.octocrab().unwrap();
    octocrab._get(LABELS).await.unwrap();

    let refused = octocrab._get(LABELS).await.unwrap();

    assert_eq!(refused.status(), 429);
    assert_eq!(number(&refused, "x-ratelimit-remaining"), 0);
}

#[tokio::test]
async fn budget_refills_when_the_window_ends() {
    let github = FakeGitHub::builder()
        .rate_limit(1)
        // Long enough that the second request surely lands in the first window.
        .rate_limit_window(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let octocrab = github.octocrab().unwrap();
    assert_eq!(octocrab._get(LABELS).await.unwrap().status(), 200);
    assert_eq!(octocrab._get(LABELS).await.unwrap().status(), 403);

    tokio::time::sleep(Duration::from_millis(1500)).await;

    let after = octocrab._get(LABELS).await.unwrap();
    assert_eq!(after.status(), 200);
    assert_eq!(number(&after, "x-ratelimit-used"), 1);
}

#[tokio::test]
async fn secondary_limit_rejects_fast_mutations_with_retry_after() {
    let github = FakeGitHub::builder()
        .token("ghp_alice")
        .token("ghp_bob")
        .secondary_limit(Duration::from_secs(10))
        .secondary_retry_after(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let alice = github.octocrab().unwrap();
    let add = |label: &str| serde_json::json!({ "labels": [label] });

    assert_eq!(
        alice
            ._post(LABELS, Some(&add("one")))
            .await
            .unwrap()
            .status(),
        200
    );
    let refused = alice._post(LABELS, Some(&add("two"))).await.unwrap();

    assert_eq!(refused.status(), 403);
    assert_eq!(header(&refused, "retry-after"), "60");
    let body = body(&alice, refused).await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("You have exceeded a secondary rate limit"),
        "{body}"
    );
    assert_eq!(
        github.labels("acme", "widgets", 1),
        ["one"],
        "nothing applied"
    );
    // Reads are not mutations, and the limit is per token.
    assert_eq!(alice._get(LABELS).await.unwrap().status(), 200);
    let bob = github.octocrab_with_token("ghp_bob").unwrap();
    assert_eq!(
        bob._post(LABELS, Some(&add("three")))
            .await
            .unwrap()
            .status(),
        200
    );
    // The rejection cost nothing: one POST and one GET charged to alice.
    assert_eq!(github.rate_limit("ghp_alice").unwrap().used, 2);
}

#[tokio::test]
async fn secondary_limit_is_off_by_default() {
    let github = FakeGitHub::start().await.unwrap();
    let octocrab = github.octocrab().unwrap();
    for i in 0..10 {
        let resp = octocrab
            ._post(
                LABELS,
                Some(&serde_json::json!({ "labels": [format!("l{i}")] })),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401_bad_credentials() {
    let github = FakeGitHub::start().await.unwrap();
    let anonymous = github.octocrab_builder().unwrap().build().unwrap();
    let wrong = github.octocrab_with_token("ghp_wrong").unwrap();

    for client in [&anonymous, &wrong] {
        let err = client
            .issues("acme", "widgets")
            .list_labels_for_issue(1)
            .send()
            .await
            .unwrap_err();
        match err {
            octocrab::Error::GitHub { source, .. } => {
                assert_eq!(source.status_code, 401);
                assert_eq!(source.message, "Bad credentials");
            }
            other => panic!("expected 401, got {other:?}"),
        }
    }
    assert_eq!(
        github
            .calls()
            .count_outcome(Some("get"), Some("labels"), &Outcome::Error(401)),
        2
    );
}

#[tokio::test]
async fn tokens_added_at_run_time_are_accepted() {
    let github = FakeGitHub::start().await.unwrap();
    let late = github.octocrab_with_token("ghp_late").unwrap();
    assert_eq!(late._get(LABELS).await.unwrap().status(), 401);
    github.add_token("ghp_late");
    assert_eq!(late._get(LABELS).await.unwrap().status(), 200);
}
