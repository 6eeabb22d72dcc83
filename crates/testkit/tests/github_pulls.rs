//! FakeGitHub's pull-request endpoints and the App installation-token
//! endpoint, deserialized into octocrab's own models.

#![cfg(feature = "github")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use octocrab::commits::PullRequestTarget;
use octocrab::models::InstallationToken;
use octocrab::models::pulls::PullRequest;
use testkit::github::FakeGitHub;

const OLD: &str = "1111111111111111111111111111111111111111";
const NEW: &str = "2222222222222222222222222222222222222222";
const NO_LABELS: [&str; 0] = [];

fn label_names(pr: &PullRequest) -> Vec<String> {
    pr.labels.iter().flatten().map(|l| l.name.clone()).collect()
}

/// A token with a JWT's shape, as octocrab's App auth sends (the fake does
/// not verify signatures).
fn app_jwt() -> String {
    let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.{}",
        enc(r#"{"alg":"RS256","typ":"JWT"}"#),
        enc(r#"{"iat":1700000000,"exp":1700000600,"iss":"12345"}"#),
        enc("not-a-real-signature")
    )
}

#[tokio::test]
async fn pull_request_deserializes_into_octocrabs_model() {
    let github = FakeGitHub::start().await.unwrap();
    github
        .add_pull(
            "acme",
            "widgets",
            42,
            OLD,
            "agent/task-42",
            ["stage:qa", "agent:tests"],
        )
        .unwrap();
    let octocrab = github.octocrab().unwrap();

    let pr = octocrab.pulls("acme", "widgets").get(42).await.unwrap();

    assert_eq!(pr.number, 42);
    assert_eq!(pr.head.sha, OLD);
    assert_eq!(pr.head.ref_field, "agent/task-42");
    assert_eq!(label_names(&pr), ["agent:tests", "stage:qa"]);
    assert_eq!(
        pr.url,
        format!("{}repos/acme/widgets/pulls/42", github.url())
    );
    let repo = pr.base.repo.as_ref().unwrap();
    assert_eq!(repo.full_name.as_deref(), Some("acme/widgets"));
}

#[tokio::test]
async fn pull_request_labels_are_its_issue_labels() {
    let github = FakeGitHub::start().await.unwrap();
    github
        .add_pull("acme", "widgets", 7, OLD, "b", ["a"])
        .unwrap();
    let octocrab = github.octocrab().unwrap();
    octocrab
        .issues("acme", "widgets")
        .add_labels(7, &["b".to_owned()])
        .await
        .unwrap();

    let pr = octocrab.pulls("acme", "widgets").get(7).await.unwrap();

    assert_eq!(label_names(&pr), ["a", "b"]);
}

#[tokio::test]
async fn unknown_pull_request_is_404() {
    let github = FakeGitHub::start().await.unwrap();
    let octocrab = github.octocrab().unwrap();

    let err = octocrab.pulls("acme", "widgets").get(1).await.unwrap_err();

    match err {
        octocrab::Error::GitHub { source, .. } => {
            assert_eq!(source.status_code, 404);
            assert_eq!(source.message, "Not Found");
        }
        other => panic!("expected 404, got {other:?}"),
    }
    assert_eq!(
        github.calls().count_outcome(
            Some("get"),
            Some("pull"),
            &testkit::calls::Outcome::Error(404)
        ),
        1
    );
}

#[tokio::test]
async fn commit_lists_the_pulls_it_heads_and_the_linked_ones() {
    let github = FakeGitHub::start().await.unwrap();
    github
        .add_pull("acme", "widgets", 1, OLD, "one", ["x"])
        .unwrap();
    github
        .add_pull("acme", "widgets", 2, NEW, "two", NO_LABELS)
        .unwrap();
    github
        .add_pull("acme", "widgets", 3, NEW, "three", NO_LABELS)
        .unwrap();
    github.link_commit_to_pulls("acme", "widgets", OLD, &[3]);
    let octocrab = github.octocrab().unwrap();
    let commits = octocrab.commits("acme", "widgets");

    let page = commits
        .associated_pull_requests(PullRequestTarget::Sha(OLD.to_owned()))
        .send()
        .await
        .unwrap();
    let numbers: Vec<u64> = page.items.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 3]);
    assert_eq!(label_names(&page.items[0]), ["x"]);

    let unknown = commits
        .associated_pull_requests(PullRequestTarget::Sha("f".repeat(40)))
        .send()
        .await
        .unwrap();
    assert!(unknown.items.is_empty());
}

#[tokio::test]
async fn a_push_moves_the_pull_requests_head() {
    let github = FakeGitHub::start().await.unwrap();
    github
        .add_pull("acme", "widgets", 5, OLD, "feature", NO_LABELS)
        .unwrap();
    let octocrab = github.octocrab().unwrap();

    github.set_pull_head("acme", "widgets", 5, NEW).unwrap();

    let pr = octocrab.pulls("acme", "widgets").get(5).await.unwrap();
    assert_eq!(pr.head.sha, NEW);
    let by_old = octocrab
        .commits("acme", "widgets")
        .associated_pull_requests(PullRequestTarget::Sha(OLD.to_owned()))
        .send()
        .await
        .unwrap();
    assert!(by_old.items.is_empty());
    assert!(github.set_pull_head("acme", "widgets", 6, NEW).is_err());
}

#[tokio::test]
async fn access_token_endpoint_mints_a_working_installation_token() {
    let github = FakeGitHub::builder()
        .installation_rate_limit(1)
        .start()
        .await
        .unwrap();
    let app = github.octocrab_with_token(app_jwt()).unwrap();

    let minted: InstallationToken = app
        .post("/app/installations/42/access_tokens", None::<&()>)
        .await
        .unwrap();

    assert!(minted.token.starts_with("ghs_"), "{}", minted.token);
    let expires: jiff::Timestamp = minted.expires_at.as_deref().unwrap().parse().unwrap();
    let in_an_hour = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
    assert!(
        expires > jiff::Timestamp::now()
            && expires <= in_an_hour + jiff::SignedDuration::from_secs(1)
    );

    let installation = github.octocrab_with_token(minted.token.clone()).unwrap();
    let labels = installation
        .issues("acme", "widgets")
        .add_labels(1, &["via-app".to_owned()])
        .await
        .unwrap();
    assert_eq!(labels.len(), 1);
    // The installation has its own budget, and the error names it.
    let err = installation
        .issues("acme", "widgets")
        .list_labels_for_issue(1)
        .send()
        .await
        .unwrap_err();
    match err {
        octocrab::Error::GitHub { source, .. } => {
            assert_eq!(source.status_code, 403);
            assert!(
                source.message.contains("installation ID 42"),
                "{}",
                source.message
            );
        }
        other => panic!("expected a rate-limit 403, got {other:?}"),
    }
    assert_eq!(github.calls().count(Some("post"), Some("access_tokens")), 1);
}

#[tokio::test]
async fn access_token_endpoint_rejects_a_bearer_that_is_not_a_jwt() {
    let github = FakeGitHub::start().await.unwrap();
    // A valid personal token is still not an App JWT.
    let octocrab = github.octocrab().unwrap();

    let err = octocrab
        .post::<_, InstallationToken>("/app/installations/42/access_tokens", None::<&()>)
        .await
        .unwrap_err();

    match err {
        octocrab::Error::GitHub { source, .. } => {
            assert_eq!(source.status_code, 401);
            assert_eq!(source.message, "A JSON web token could not be decoded");
        }
        other => panic!("expected 401, got {other:?}"),
    }
}

#[tokio::test]
async fn expired_installation_tokens_are_bad_credentials() {
    let github = FakeGitHub::builder()
        // Long enough that the first use surely comes before expiry.
        .installation_token_ttl(std::time::Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let app = github.octocrab_with_token(app_jwt()).unwrap();
    let minted: InstallationToken = app
        .post("/app/installations/7/access_tokens", None::<&()>)
        .await
        .unwrap();
    let installation = github.octocrab_with_token(minted.token).unwrap();
    let route = "/repos/acme/widgets/issues/1/labels";
    assert_eq!(installation._get(route).await.unwrap().status(), 200);

    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    assert_eq!(installation._get(route).await.unwrap().status(), 401);
}
