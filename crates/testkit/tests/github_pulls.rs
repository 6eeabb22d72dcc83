//! FakeGitHub's pull-request endpoints (one pull request, the list with its
//! filters and pages, a commit's pull requests) as pull requests are pushed
//! to, closed, reopened and merged, and the App installation-token
//! endpoint, deserialized into octocrab's own models.

#![cfg(feature = "github")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod github_common;

use github_common::app_jwt;
use http::header::{HeaderMap, HeaderValue, IF_NONE_MATCH};
use octocrab::Octocrab;
use octocrab::commits::PullRequestTarget;
use octocrab::models::pulls::PullRequest;
use octocrab::models::{InstallationToken, IssueState};
use octocrab::params::pulls::Sort;
use octocrab::params::{Direction, State};
use testkit::github::{Error, FakeGitHub};

const OLD: &str = "1111111111111111111111111111111111111111";
const MIDDLE: &str = "1212121212121212121212121212121212121212";
const NEW: &str = "2222222222222222222222222222222222222222";
const NO_LABELS: [&str; 0] = [];

fn label_names(pr: &PullRequest) -> Vec<String> {
    pr.labels.iter().flatten().map(|l| l.name.clone()).collect()
}

async fn get_if_none_match(
    octocrab: &Octocrab,
    route: &str,
    etag: &str,
) -> http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, octocrab::Error>> {
    let mut headers = HeaderMap::new();
    headers.insert(IF_NONE_MATCH, HeaderValue::from_str(etag).unwrap());
    octocrab
        ._get_with_headers(route, Some(headers))
        .await
        .unwrap()
}

/// Opens pull requests (number, head, branch) in acme/widgets, unlabelled.
fn open_pulls(github: &FakeGitHub, pulls: &[(u64, &str, &str)]) {
    for &(number, head, branch) in pulls {
        github
            .add_pull("acme", "widgets", number, head, branch, NO_LABELS)
            .unwrap();
    }
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
    open_pulls(&github, &[(2, NEW, "two"), (3, NEW, "three")]);
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
async fn a_push_moves_the_pull_requests_head_and_its_commits_stay_associated() {
    let github = FakeGitHub::start().await.unwrap();
    github
        .add_pull("acme", "widgets", 5, OLD, "feature", NO_LABELS)
        .unwrap();
    let octocrab = github.octocrab().unwrap();
    let commits = octocrab.commits("acme", "widgets");
    let pulls_of = |sha: &str| {
        commits
            .associated_pull_requests(PullRequestTarget::Sha(sha.to_owned()))
            .send()
    };

    github
        .push_to_pull("acme", "widgets", 5, &[MIDDLE, NEW])
        .unwrap();

    let pr = octocrab.pulls("acme", "widgets").get(5).await.unwrap();
    assert_eq!(pr.head.sha, NEW);
    assert_eq!(
        github.branch_head("acme", "widgets", "feature").unwrap(),
        NEW
    );
    // Every commit of the pull request finds it, not only its head.
    for sha in [OLD, MIDDLE, NEW] {
        let numbers: Vec<u64> = pulls_of(sha)
            .await
            .unwrap()
            .items
            .iter()
            .map(|p| p.number)
            .collect();
        assert_eq!(numbers, [5], "{sha}");
    }
    assert!(pulls_of(&"f".repeat(40)).await.unwrap().items.is_empty());
    assert!(matches!(
        github.set_pull_head("acme", "widgets", 6, NEW),
        Err(Error::UnknownPull { number: 6, .. })
    ));
}

#[tokio::test]
async fn a_push_needs_full_shas_and_at_least_one_commit() {
    let github = FakeGitHub::start().await.unwrap();

    let upper = "ABCDEF0123".repeat(4);
    for commits in [&[][..], &["abc123"][..], &[upper.as_str()][..]] {
        match github.push_branch("acme", "widgets", "b", commits) {
            Err(Error::Rejected { status: 422, .. }) => {}
            other => panic!("{commits:?}: expected a 422, got {other:?}"),
        }
    }
    assert_eq!(github.branch_head("acme", "widgets", "b"), None);
}

#[tokio::test]
async fn state_merged_and_times_follow_close_reopen_and_merge() {
    let github = FakeGitHub::start().await.unwrap();
    github
        .add_pull("acme", "widgets", 3, OLD, "feature", NO_LABELS)
        .unwrap();
    let octocrab = github.octocrab().unwrap();
    let pulls = octocrab.pulls("acme", "widgets");
    let get = || pulls.get(3);

    let open = get().await.unwrap();
    assert_eq!(open.state, Some(IssueState::Open));
    assert_eq!(open.merged, Some(false));
    assert_eq!(open.closed_at, None);

    github.close_pull("acme", "widgets", 3).unwrap();
    let closed = get().await.unwrap();
    assert_eq!(closed.state, Some(IssueState::Closed));
    assert_eq!(closed.merged, Some(false));
    assert!(closed.closed_at.is_some() && closed.merged_at.is_none());
    assert!(closed.updated_at > open.updated_at);

    github.reopen_pull("acme", "widgets", 3).unwrap();
    let reopened = get().await.unwrap();
    assert_eq!(reopened.state, Some(IssueState::Open));
    assert_eq!(reopened.closed_at, None);

    github.merge_pull("acme", "widgets", 3).unwrap();
    let merged = get().await.unwrap();
    assert_eq!(merged.state, Some(IssueState::Closed));
    assert_eq!(merged.merged, Some(true));
    assert!(merged.merged_at.is_some());
    assert_eq!(merged.closed_at, merged.merged_at);
    let merge_sha = merged.merge_commit_sha.clone().unwrap();
    assert_eq!(
        github.branch_head("acme", "widgets", "master").unwrap(),
        merge_sha
    );
    let by_merge_commit = octocrab
        .commits("acme", "widgets")
        .associated_pull_requests(PullRequestTarget::Sha(merge_sha))
        .send()
        .await
        .unwrap();
    assert_eq!(by_merge_commit.items[0].number, 3);

    // As on GitHub: a merged pull request can be neither merged again,
    // closed nor reopened, and a closed one is not pushed to.
    assert!(matches!(
        github.merge_pull("acme", "widgets", 3),
        Err(Error::Rejected { status: 405, .. })
    ));
    assert!(matches!(
        github.reopen_pull("acme", "widgets", 3),
        Err(Error::Rejected { status: 422, .. })
    ));
    assert!(matches!(
        github.close_pull("acme", "widgets", 3),
        Err(Error::Rejected { status: 422, .. })
    ));
    github
        .push_branch("acme", "widgets", "feature", &[NEW])
        .unwrap();
    assert_eq!(get().await.unwrap().head.sha, OLD);
    assert!(matches!(
        github.close_pull("acme", "widgets", 4),
        Err(Error::UnknownPull { number: 4, .. })
    ));
}

#[tokio::test]
async fn a_reopened_pull_request_is_at_its_branchs_head_and_needs_its_branch() {
    let github = FakeGitHub::start().await.unwrap();
    open_pulls(&github, &[(1, OLD, "one"), (2, OLD, "two")]);
    let octocrab = github.octocrab().unwrap();
    github.close_pull("acme", "widgets", 1).unwrap();
    github
        .push_branch("acme", "widgets", "one", &[NEW])
        .unwrap();
    github.delete_branch("acme", "widgets", "two").unwrap();

    github.reopen_pull("acme", "widgets", 1).unwrap();

    let pr = octocrab.pulls("acme", "widgets").get(1).await.unwrap();
    assert_eq!(pr.head.sha, NEW, "pushed while closed");
    assert!(matches!(
        github.reopen_pull("acme", "widgets", 2),
        Err(Error::Rejected { status: 422, .. })
    ));
}

#[tokio::test]
async fn deleting_a_branch_closes_its_open_pull_requests() {
    let github = FakeGitHub::start().await.unwrap();
    github
        .add_pull("acme", "widgets", 8, OLD, "doomed", NO_LABELS)
        .unwrap();
    let octocrab = github.octocrab().unwrap();

    github.delete_branch("acme", "widgets", "doomed").unwrap();

    let pr = octocrab.pulls("acme", "widgets").get(8).await.unwrap();
    assert_eq!(pr.state, Some(IssueState::Closed));
    assert_eq!(pr.merged, Some(false));
    assert_eq!(github.branch_head("acme", "widgets", "doomed"), None);
    assert!(matches!(
        github.delete_branch("acme", "widgets", "doomed"),
        Err(Error::Rejected { status: 422, .. })
    ));
}

#[tokio::test]
async fn list_filters_by_state_head_and_base() {
    let github = FakeGitHub::start().await.unwrap();
    open_pulls(
        &github,
        &[(1, OLD, "one"), (2, NEW, "two"), (3, MIDDLE, "three")],
    );
    github.close_pull("acme", "widgets", 3).unwrap();
    let octocrab = github.octocrab().unwrap();
    let pulls = octocrab.pulls("acme", "widgets");
    let numbers = |page: octocrab::Page<PullRequest>| -> Vec<u64> {
        page.items.iter().map(|p| p.number).collect()
    };

    // Open by default, newest first.
    assert_eq!(numbers(pulls.list().send().await.unwrap()), [2, 1]);
    assert_eq!(
        numbers(pulls.list().state(State::Closed).send().await.unwrap()),
        [3]
    );
    assert_eq!(
        numbers(pulls.list().state(State::All).send().await.unwrap()),
        [3, 2, 1]
    );
    let by_head = pulls
        .list()
        .state(State::All)
        .head("ACME:two")
        .send()
        .await
        .unwrap();
    assert_eq!(numbers(by_head), [2], "the owner is case-insensitive");
    let closed_head = pulls.list().head("acme:three").send().await.unwrap();
    assert!(closed_head.items.is_empty(), "open only by default");
    let fork = pulls.list().head("someone-else:two").send().await.unwrap();
    assert!(fork.items.is_empty(), "another owner's branch of that name");
    let base = pulls.list().base("master").send().await.unwrap();
    assert_eq!(numbers(base), [2, 1]);
    assert!(
        pulls
            .list()
            .base("main")
            .send()
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let oldest_first = pulls
        .list()
        .direction(Direction::Ascending)
        .send()
        .await
        .unwrap();
    assert_eq!(numbers(oldest_first), [1, 2]);
}

#[tokio::test]
async fn list_ignores_a_head_without_its_owner_as_github_does() {
    let github = FakeGitHub::start().await.unwrap();
    open_pulls(&github, &[(1, OLD, "one"), (2, NEW, "two")]);
    let octocrab = github.octocrab().unwrap();

    let page = octocrab
        .pulls("acme", "widgets")
        .list()
        .head("two")
        .send()
        .await
        .unwrap();

    let numbers: Vec<u64> = page.items.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [2, 1], "a bare branch filters nothing");
}

#[tokio::test]
async fn list_sorted_by_update_puts_the_last_changed_first() {
    let github = FakeGitHub::start().await.unwrap();
    open_pulls(&github, &[(1, OLD, "one"), (2, NEW, "two")]);
    github
        .push_to_pull("acme", "widgets", 1, &[MIDDLE])
        .unwrap();
    let octocrab = github.octocrab().unwrap();

    let page = octocrab
        .pulls("acme", "widgets")
        .list()
        .sort(Sort::Updated)
        .direction(Direction::Descending)
        .send()
        .await
        .unwrap();

    let numbers: Vec<u64> = page.items.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 2]);
}

#[tokio::test]
async fn list_is_paginated_with_link_headers() {
    let github = FakeGitHub::start().await.unwrap();
    for n in 1..=5 {
        github
            .add_pull("acme", "widgets", n, OLD, &format!("b{n}"), NO_LABELS)
            .unwrap();
    }
    let octocrab = github.octocrab().unwrap();

    let first = octocrab
        .pulls("acme", "widgets")
        .list()
        .state(State::Open)
        .per_page(2)
        .send()
        .await
        .unwrap();
    let mut numbers: Vec<u64> = first.items.iter().map(|p| p.number).collect();
    let mut next = first.next.clone();
    while let Some(page) = octocrab.get_page::<PullRequest>(&next).await.unwrap() {
        numbers.extend(page.items.iter().map(|p| p.number));
        next = page.next;
    }

    assert_eq!(numbers, [5, 4, 3, 2, 1]);
    let last = first.last.unwrap().to_string();
    assert!(
        last.contains("state=open") && last.contains("page=3"),
        "{last}"
    );
    assert_eq!(github.calls().count(Some("get"), Some("pulls")), 3);
    assert_eq!(
        github.rate_limit(github.token()).unwrap().used,
        3,
        "one per page"
    );
}

#[tokio::test]
async fn list_items_are_the_simple_pull_request_shape() {
    let github = FakeGitHub::start().await.unwrap();
    github
        .add_pull("acme", "widgets", 1, OLD, "one", ["x"])
        .unwrap();
    github.link_commit_to_pulls("acme", "widgets", NEW, &[1]);
    let octocrab = github.octocrab().unwrap();

    for route in [
        "/repos/acme/widgets/pulls",
        &format!("/repos/acme/widgets/commits/{NEW}/pulls"),
    ] {
        let resp = octocrab._get(route).await.unwrap();
        let items: serde_json::Value =
            serde_json::from_str(&octocrab.body_to_string(resp).await.unwrap()).unwrap();
        let item = &items[0];
        assert_eq!(item["number"], 1, "{route}");
        assert_eq!(item["labels"][0]["name"], "x");
        assert!(
            item.get("merged_at").is_some(),
            "{route}: simple has merged_at"
        );
        for full_only in ["merged", "mergeable", "comments", "commits", "additions"] {
            assert!(item.get(full_only).is_none(), "{route}: {full_only}");
        }
    }
    let full = octocrab._get("/repos/acme/widgets/pulls/1").await.unwrap();
    let full: serde_json::Value =
        serde_json::from_str(&octocrab.body_to_string(full).await.unwrap()).unwrap();
    assert_eq!(full["merged"], false);
    assert_eq!(full["commits"], 1);
}

#[tokio::test]
async fn list_with_an_unknown_state_is_422() {
    let github = FakeGitHub::start().await.unwrap();
    let octocrab = github.octocrab().unwrap();

    let resp = octocrab
        ._get("/repos/acme/widgets/pulls?state=merged")
        .await
        .unwrap();

    assert_eq!(resp.status(), 422);
    let body: serde_json::Value =
        serde_json::from_str(&octocrab.body_to_string(resp).await.unwrap()).unwrap();
    assert_eq!(body["message"], "Validation Failed");
    assert_eq!(body["errors"][0]["field"], "state");
}

#[tokio::test]
async fn pull_endpoints_answer_304_until_the_pull_request_changes() {
    let github = FakeGitHub::start().await.unwrap();
    github
        .add_pull("acme", "widgets", 9, OLD, "nine", NO_LABELS)
        .unwrap();
    let octocrab = github.octocrab().unwrap();
    let routes = [
        "/repos/acme/widgets/pulls/9".to_owned(),
        "/repos/acme/widgets/pulls?head=acme:nine".to_owned(),
        format!("/repos/acme/widgets/commits/{OLD}/pulls"),
    ];
    let mut etags = Vec::new();
    for route in &routes {
        let first = octocrab._get(route).await.unwrap();
        assert_eq!(first.status(), 200, "{route}");
        etags.push(first.headers()["etag"].to_str().unwrap().to_owned());
    }
    let used = github.rate_limit(github.token()).unwrap().used;

    for (route, etag) in routes.iter().zip(&etags) {
        let resp = get_if_none_match(&octocrab, route, etag).await;
        assert_eq!(resp.status(), 304, "{route}");
    }
    assert_eq!(
        github.rate_limit(github.token()).unwrap().used,
        used,
        "304s are free"
    );

    github.push_to_pull("acme", "widgets", 9, &[NEW]).unwrap();
    for (route, etag) in routes.iter().zip(&etags) {
        let resp = get_if_none_match(&octocrab, route, etag).await;
        assert_eq!(resp.status(), 200, "{route} changed with the push");
        assert_ne!(resp.headers()["etag"].to_str().unwrap(), etag);
    }
    assert_eq!(github.rate_limit(github.token()).unwrap().used, used + 3);
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
