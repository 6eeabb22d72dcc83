//! GitHub's own example payloads parsed as the events they are, and
//! octocrab's pitfalls guarded: an unknown `pull_request` action is
//! unhandled (not an error), other events are never parsed, bad JSON and
//! missing fields are errors that say where.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use github_webhook::{Event, PullRequestAction, UnhandledReason, is_zero_sha, parse_event};
use jiff::Timestamp;

const PUSH: &str = include_str!("fixtures/push_with-new-branch.payload.json");
const SYNCHRONIZE: &str = include_str!("fixtures/pull_request_synchronize.payload.json");
const OPENED: &str = include_str!("fixtures/pull_request_opened.payload.json");
const CLOSED: &str = include_str!("fixtures/pull_request_closed.payload.json");
const LABELED: &str = include_str!("fixtures/pull_request_labeled.payload.json");
const PING: &str = include_str!("fixtures/ping.payload.json");

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

#[test]
fn a_push_reads_its_ref_shas_flags_and_the_unix_pushed_at() {
    let Event::Push(push) = parse_event("push", PUSH.as_bytes()).unwrap() else {
        panic!("not a push");
    };
    assert_eq!(push.repository.full_name(), "Codertocat/Hello-World");
    assert_eq!(push.sender.as_deref(), Some("Codertocat"));
    assert_eq!(push.branch(), Some("master"));
    assert_eq!(push.tag(), None);
    assert!(is_zero_sha(&push.before));
    assert_eq!(push.after, "6113728f27ae82c7b1a177c8d03f9e96e0adf246");
    assert!(push.created && !push.deleted && !push.forced);
    assert!(!push.is_deletion() && !push.is_noop());
    // `repository.pushed_at` is an integer in push payloads (1557933657).
    assert_eq!(
        push.pushed_at,
        Some(Timestamp::from_second(1_557_933_657).unwrap())
    );
}

#[test]
fn a_pushed_at_in_rfc_3339_text_is_read_too() {
    let mut push: serde_json::Value = serde_json::from_str(PUSH).unwrap();
    push["repository"]["pushed_at"] = "2019-05-15T15:20:57Z".into();
    let Event::Push(p) = parse_event("push", push.to_string().as_bytes()).unwrap() else {
        panic!("not a push");
    };
    assert_eq!(p.pushed_at, Some(ts("2019-05-15T15:20:57Z")));
}

#[test]
fn a_synchronize_reads_the_pull_request_head_labels_and_time() {
    let Event::PullRequest(pr) = parse_event("pull_request", SYNCHRONIZE.as_bytes()).unwrap()
    else {
        panic!("not a pull request");
    };
    assert_eq!(pr.action, PullRequestAction::Synchronize);
    assert_eq!(pr.number, 2);
    assert_eq!(pr.repository.full_name(), "Codertocat/Hello-World");
    assert_eq!(pr.head_ref, "changes");
    assert_eq!(pr.head_sha, "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
    assert_eq!(
        pr.head_repository.as_deref(),
        Some("Codertocat/Hello-World")
    );
    assert_eq!(pr.labels, ["bug"]);
    assert!(pr.open && !pr.merged);
    assert_eq!(pr.updated_at, Some(ts("2019-05-15T15:20:33Z")));
    assert_eq!(pr.closed_at, None);
}

#[test]
fn opened_closed_and_labeled_are_told_apart() {
    let action = |json: &str| match parse_event("pull_request", json.as_bytes()).unwrap() {
        Event::PullRequest(pr) => pr,
        other => panic!("{other:?}"),
    };
    assert_eq!(action(OPENED).action, PullRequestAction::Opened);
    let closed = action(CLOSED);
    assert_eq!(closed.action, PullRequestAction::Closed);
    assert!(!closed.open && !closed.merged);
    assert_eq!(closed.closed_at, Some(ts("2019-05-15T15:21:18Z")));
    let labeled = action(LABELED);
    assert_eq!(labeled.action, PullRequestAction::Other("labeled".into()));
    assert_eq!(labeled.action.as_str(), "labeled");
}

#[test]
fn a_ping_is_parsed() {
    let Event::Ping(ping) = parse_event("ping", PING.as_bytes()).unwrap() else {
        panic!("not a ping");
    };
    assert!(ping.zen.is_some());
    assert!(ping.hook_id.is_some());
}

#[test]
fn a_pull_request_action_octocrab_does_not_know_is_unhandled_not_an_error() {
    let json = SYNCHRONIZE.replacen("\"synchronize\"", "\"time_travelled\"", 1);
    let event = parse_event("pull_request", json.as_bytes()).unwrap();
    let Event::Unhandled(unhandled) = event else {
        panic!("{event:?}");
    };
    assert_eq!(unhandled.reason, UnhandledReason::UnknownAction);
    assert_eq!(unhandled.action.as_deref(), Some("time_travelled"));
    assert_eq!(unhandled.event, "pull_request");
}

#[test]
fn other_events_are_passed_on_without_parsing_their_payload() {
    // A payload octocrab could not parse as a `create` event: never tried.
    let event = parse_event("create", br#"{"ref": 42, "action": "x"}"#).unwrap();
    assert_eq!(
        event,
        Event::Unhandled(github_webhook::UnhandledEvent {
            event: "create".into(),
            action: Some("x".into()),
            reason: UnhandledReason::NotInterpreted,
        })
    );
    assert_eq!(event.action(), Some("x"));
}

#[test]
fn malformed_json_and_missing_fields_are_errors_that_say_where() {
    let not_json = parse_event("push", b"{\"ref\": ").unwrap_err();
    assert_eq!(not_json.event, "push");
    assert!(not_json.reason.contains("line 1"), "{}", not_json.reason);
    for body in [&b"[]"[..], b"42", b"", b"  \"x\""] {
        let e = parse_event("push", body).unwrap_err();
        assert_eq!(e.reason, "not a JSON object");
    }
    let mut push: serde_json::Value = serde_json::from_str(PUSH).unwrap();
    push.as_object_mut().unwrap().remove("after");
    let e = parse_event("push", push.to_string().as_bytes()).unwrap_err();
    assert!(e.reason.contains("after"), "{}", e.reason);
    let mut pr: serde_json::Value = serde_json::from_str(SYNCHRONIZE).unwrap();
    pr.as_object_mut().unwrap().remove("action");
    let e = parse_event("pull_request", pr.to_string().as_bytes()).unwrap_err();
    assert!(e.reason.contains("action"), "{}", e.reason);
    let mut pr: serde_json::Value = serde_json::from_str(SYNCHRONIZE).unwrap();
    pr.as_object_mut().unwrap().remove("repository");
    let e = parse_event("pull_request", pr.to_string().as_bytes()).unwrap_err();
    assert!(e.reason.contains("repository"), "{}", e.reason);
}

#[test]
fn a_deleted_ref_and_a_tag_are_recognised() {
    let mut push: serde_json::Value = serde_json::from_str(PUSH).unwrap();
    push["ref"] = "refs/tags/v1.0".into();
    push["deleted"] = true.into();
    push["after"] = "0000000000000000000000000000000000000000".into();
    let Event::Push(p) = parse_event("push", push.to_string().as_bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(p.tag(), Some("v1.0"));
    assert_eq!(p.branch(), None);
    assert!(p.is_deletion());
}

#[test]
fn a_pull_request_missing_what_is_read_or_with_a_bad_time_is_an_error_naming_it() {
    let without = |pointer: &str, field: &str| {
        let mut pr: serde_json::Value = serde_json::from_str(SYNCHRONIZE).unwrap();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        pr.pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(key);
        let e = parse_event("pull_request", pr.to_string().as_bytes()).unwrap_err();
        assert!(e.reason.contains(field), "{pointer}: {}", e.reason);
    };
    without("/number", "number");
    without("/pull_request/head/sha", "sha");
    without("/pull_request/head/ref", "ref");
    without("/pull_request", "pull_request");
    let mut pr: serde_json::Value = serde_json::from_str(SYNCHRONIZE).unwrap();
    pr["pull_request"]["updated_at"] = "yesterday".into();
    let e = parse_event("pull_request", pr.to_string().as_bytes()).unwrap_err();
    assert!(e.reason.contains("updated_at"), "{}", e.reason);
}

#[test]
fn a_merge_time_means_merged_and_a_deleted_fork_has_no_head_repository() {
    let mut pr: serde_json::Value = serde_json::from_str(SYNCHRONIZE).unwrap();
    pr["action"] = "closed".into();
    pr["pull_request"]["state"] = "closed".into();
    pr["pull_request"]["merged"] = serde_json::Value::Null;
    pr["pull_request"]["merged_at"] = "2026-12-01T10:00:00Z".into();
    pr["pull_request"]["head"]["repo"] = serde_json::Value::Null;
    pr["pull_request"]["labels"] = serde_json::Value::Null;
    let Event::PullRequest(closed) =
        parse_event("pull_request", pr.to_string().as_bytes()).unwrap()
    else {
        panic!()
    };
    assert!(closed.merged && !closed.open);
    assert_eq!(closed.head_repository, None);
    assert!(closed.labels.is_empty());
}
