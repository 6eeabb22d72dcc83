//! FakeGitHub's issue-label endpoints, through octocrab: the answers GitHub
//! gives (full label lists, 404 "Label does not exist", 422, 204), URL-encoded
//! names, and changes made "from outside" by a human.

#![cfg(feature = "github")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use octocrab::models::Label;
use serde_json::json;
use testkit::github::FakeGitHub;

const OWNER: &str = "acme";
const REPO: &str = "widgets";

fn names(labels: &[Label]) -> Vec<&str> {
    labels.iter().map(|l| l.name.as_str()).collect()
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn github_error(err: octocrab::Error) -> octocrab::GitHubError {
    match err {
        octocrab::Error::GitHub { source, .. } => *source,
        other => panic!("expected a GitHub error, got {other:?}"),
    }
}

#[tokio::test]
async fn post_returns_the_full_label_list_after_the_write() {
    let github = FakeGitHub::start().await.unwrap();
    github.set_labels(OWNER, REPO, 1, ["stage:review"]).unwrap();
    let octocrab = github.octocrab().unwrap();

    let labels = octocrab
        .issues(OWNER, REPO)
        .add_labels(1, &strings(&["agent:quality", "blocked"]))
        .await
        .unwrap();

    assert_eq!(names(&labels), ["agent:quality", "blocked", "stage:review"]);
    let first = &labels[0];
    assert_eq!(first.color, "ededed");
    assert!(!first.default);
    assert!(!first.node_id.is_empty());
    assert_eq!(
        first.url.as_str(),
        format!("{}repos/acme/widgets/labels/agent%3Aquality", github.url())
    );
    assert_eq!(github.labels(OWNER, REPO, 1), names(&labels));
}

#[tokio::test]
async fn adding_a_label_twice_or_in_another_case_keeps_one() {
    let github = FakeGitHub::start().await.unwrap();
    let issues = github.octocrab().unwrap();
    let issues = issues.issues(OWNER, REPO);
    issues.add_labels(1, &strings(&["Bug"])).await.unwrap();
    let labels = issues
        .add_labels(1, &strings(&["bug", "BUG"]))
        .await
        .unwrap();
    assert_eq!(names(&labels), ["Bug"]);
}

#[tokio::test]
async fn delete_returns_the_remaining_labels() {
    let github = FakeGitHub::start().await.unwrap();
    github.set_labels(OWNER, REPO, 2, ["a", "b", "c"]).unwrap();
    let octocrab = github.octocrab().unwrap();

    let labels = octocrab
        .issues(OWNER, REPO)
        .remove_label(2, "b")
        .await
        .unwrap();

    assert_eq!(names(&labels), ["a", "c"]);
    assert_eq!(github.labels(OWNER, REPO, 2), ["a", "c"]);
}

#[tokio::test]
async fn removing_an_absent_label_is_404_label_does_not_exist() {
    let github = FakeGitHub::start().await.unwrap();
    github.set_labels(OWNER, REPO, 3, ["present"]).unwrap();
    let octocrab = github.octocrab().unwrap();

    let err = octocrab
        .issues(OWNER, REPO)
        .remove_label(3, "absent")
        .await
        .unwrap_err();

    let err = github_error(err);
    assert_eq!(err.status_code, 404);
    assert_eq!(err.message, "Label does not exist");
    assert!(err.documentation_url.is_some());
    assert_eq!(github.labels(OWNER, REPO, 3), ["present"]);
}

#[tokio::test]
async fn label_names_with_spaces_colons_and_unicode_round_trip_url_encoded() {
    let github = FakeGitHub::start().await.unwrap();
    let octocrab = github.octocrab().unwrap();
    let tricky = ["needs review: 🚀", "ü+ß/%", "a b"];

    let labels = octocrab
        .issues(OWNER, REPO)
        .add_labels(4, &strings(&tricky))
        .await
        .unwrap();
    assert_eq!(names(&labels), ["a b", "needs review: 🚀", "ü+ß/%"]);

    // octocrab percent-encodes every non-alphanumeric byte.
    let labels = octocrab
        .issues(OWNER, REPO)
        .remove_label(4, "needs review: 🚀")
        .await
        .unwrap();
    assert_eq!(names(&labels), ["a b", "ü+ß/%"]);

    // A client that encodes only what it must (space as %20, '/' and '%' escaped).
    let resp = octocrab
        ._delete(
            format!("/repos/{OWNER}/{REPO}/issues/4/labels/%C3%BC+%C3%9F%2F%25"),
            None::<&()>,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = octocrab
        ._delete(
            format!("/repos/{OWNER}/{REPO}/issues/4/labels/a%20b"),
            None::<&()>,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(github.labels(OWNER, REPO, 4).is_empty());
}

#[tokio::test]
async fn put_replaces_all_labels() {
    let github = FakeGitHub::start().await.unwrap();
    github
        .set_labels(OWNER, REPO, 5, ["old-1", "old-2"])
        .unwrap();
    let octocrab = github.octocrab().unwrap();

    let labels = octocrab
        .issues(OWNER, REPO)
        .replace_all_labels(5, &strings(&["new"]))
        .await
        .unwrap();

    assert_eq!(names(&labels), ["new"]);
    assert_eq!(github.labels(OWNER, REPO, 5), ["new"]);
}

#[tokio::test]
async fn delete_of_the_collection_removes_every_label_with_204() {
    let github = FakeGitHub::start().await.unwrap();
    github.set_labels(OWNER, REPO, 6, ["x", "y"]).unwrap();
    let octocrab = github.octocrab().unwrap();

    let resp = octocrab
        ._delete(
            format!("/repos/{OWNER}/{REPO}/issues/6/labels"),
            None::<&()>,
        )
        .await
        .unwrap();

    assert_eq!(resp.status(), 204);
    assert!(github.labels(OWNER, REPO, 6).is_empty());
}

#[tokio::test]
async fn bare_array_and_label_object_bodies_are_accepted_like_github() {
    let github = FakeGitHub::start().await.unwrap();
    let octocrab = github.octocrab().unwrap();
    let route = format!("/repos/{OWNER}/{REPO}/issues/7/labels");

    let labels: Vec<Label> = octocrab.post(&route, Some(&json!(["one"]))).await.unwrap();
    assert_eq!(names(&labels), ["one"]);
    let labels: Vec<Label> = octocrab
        .post(&route, Some(&json!({"labels": [{"name": "two"}]})))
        .await
        .unwrap();
    assert_eq!(names(&labels), ["one", "two"]);
}

#[tokio::test]
async fn malformed_bodies_are_rejected_without_a_change() {
    let github = FakeGitHub::start().await.unwrap();
    let octocrab = github.octocrab().unwrap();
    let route = format!("/repos/{OWNER}/{REPO}/issues/7/labels");

    let err = octocrab
        .post::<_, Vec<Label>>(&route, Some(&json!({"labels": "not-a-list"})))
        .await
        .unwrap_err();
    assert_eq!(github_error(err).status_code, 422);
    let err = octocrab
        .post::<_, Vec<Label>>(&route, Some(&json!(42)))
        .await
        .unwrap_err();
    assert_eq!(github_error(err).status_code, 422);
    assert!(github.labels(OWNER, REPO, 7).is_empty());
}

#[tokio::test]
async fn label_name_over_50_characters_is_422_and_changes_nothing() {
    let github = FakeGitHub::start().await.unwrap();
    github.set_labels(OWNER, REPO, 8, ["keep"]).unwrap();
    let octocrab = github.octocrab().unwrap();
    let too_long = "x".repeat(51);

    let err = octocrab
        .issues(OWNER, REPO)
        .add_labels(8, &[too_long.clone(), "other".to_owned()])
        .await
        .unwrap_err();

    let err = github_error(err);
    assert_eq!(err.status_code, 422);
    assert_eq!(err.message, "Validation Failed");
    assert_eq!(github.labels(OWNER, REPO, 8), ["keep"]);
    // Exactly 50 characters (not bytes) is fine.
    let fifty = "ü".repeat(50);
    let labels = octocrab
        .issues(OWNER, REPO)
        .add_labels(8, std::slice::from_ref(&fifty))
        .await
        .unwrap();
    assert!(names(&labels).contains(&fifty.as_str()));
    // The outside writer follows the same rule.
    assert!(github.set_labels(OWNER, REPO, 8, [too_long]).is_err());
}

#[tokio::test]
async fn outside_writer_changes_are_visible_to_the_next_read() {
    let github = FakeGitHub::start().await.unwrap();
    let octocrab = github.octocrab().unwrap();
    let issues = octocrab.issues(OWNER, REPO);
    issues.add_labels(9, &strings(&["ours"])).await.unwrap();

    // A human edits the labels in the UI between our calls.
    github.add_label(OWNER, REPO, 9, "human").unwrap();
    assert!(github.remove_label(OWNER, REPO, 9, "ours"));
    assert!(!github.remove_label(OWNER, REPO, 9, "ours"));

    let page = issues.list_labels_for_issue(9).send().await.unwrap();
    assert_eq!(names(&page.items), ["human"]);
    // And our DELETE of the label the human removed is now a 404.
    let err = issues.remove_label(9, "ours").await.unwrap_err();
    assert_eq!(github_error(err).status_code, 404);
    // Outside writes are neither counted nor charged.
    assert_eq!(github.calls().count(None, None), 3);
}

#[tokio::test]
async fn repository_labels_carry_their_colour_and_description() {
    let github = FakeGitHub::start().await.unwrap();
    github
        .create_label(
            OWNER,
            REPO,
            "stage:qa",
            "0e8a16",
            Some("Quality agents at work"),
        )
        .unwrap();
    let octocrab = github.octocrab().unwrap();

    let labels = octocrab
        .issues(OWNER, REPO)
        .add_labels(10, &strings(&["STAGE:QA"]))
        .await
        .unwrap();

    assert_eq!(labels.len(), 1);
    assert_eq!(labels[0].name, "stage:qa");
    assert_eq!(labels[0].color, "0e8a16");
    assert_eq!(
        labels[0].description.as_deref(),
        Some("Quality agents at work")
    );
}

#[tokio::test]
async fn long_label_lists_are_paginated_with_link_headers() {
    let github = FakeGitHub::start().await.unwrap();
    let all: Vec<String> = (0..35).map(|i| format!("label-{i:02}")).collect();
    github.set_labels(OWNER, REPO, 11, &all).unwrap();
    let octocrab = github.octocrab().unwrap();

    let first = octocrab
        .issues(OWNER, REPO)
        .list_labels_for_issue(11)
        .send()
        .await
        .unwrap();
    assert_eq!(first.items.len(), 30);
    assert!(first.next.is_some());
    let second = octocrab
        .get_page::<Label>(&first.next)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.items.len(), 5);
    assert!(second.next.is_none());

    let every = octocrab.all_pages(first).await.unwrap();
    assert_eq!(
        names(&every),
        all.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn issues_are_independent_per_repository_and_number() {
    let github = FakeGitHub::start().await.unwrap();
    github.set_labels(OWNER, REPO, 1, ["a"]).unwrap();
    github.set_labels(OWNER, "other", 1, ["b"]).unwrap();
    github.set_labels(OWNER, REPO, 2, ["c"]).unwrap();
    assert_eq!(github.labels(OWNER, REPO, 1), ["a"]);
    assert_eq!(github.labels(OWNER, "other", 1), ["b"]);
    // Owner and repository names are case-insensitive, as on GitHub.
    assert_eq!(github.labels("ACME", "Widgets", 2), ["c"]);
}
