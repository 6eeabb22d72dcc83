//! Issue 21, item 6: every successful write logs one INFO audit line with
//! the task, the new resourceVersion and the names of the fields that
//! changed — never their values, so no feedback body reaches a log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jiff::Timestamp;
use state_store::{FeedbackEntry, MemoryBackend, Severity, StateStore};
use testkit::logs::Logs;

#[tokio::test]
async fn every_write_is_audited_with_field_names_never_values() {
    let (logs, _guard) = Logs::capture();
    let store = StateStore::new(MemoryBackend::new());
    store.increment_iteration("42").await.unwrap();
    let secret = FeedbackEntry::new(
        "1001",
        Severity::High,
        "the body says hunter2",
        "reviewer",
        Timestamp::UNIX_EPOCH,
    );
    store.append_feedback("42", secret).await.unwrap();

    let text = logs.text();
    let audits = logs.with_message("state written");
    assert_eq!(audits.len(), 2, "{text}");
    for audit in &audits {
        assert_eq!(audit["level"], "INFO", "{audit}");
        assert_eq!(audit["fields"]["task_id"], "42", "{audit}");
        assert!(
            audit["fields"]["resource_version"]
                .as_str()
                .is_some_and(|rv| !rv.is_empty()),
            "{audit}"
        );
    }
    assert_eq!(audits[0]["fields"]["created"], true, "{}", audits[0]);
    assert_eq!(
        audits[0]["fields"]["changed"], "iteration,status,iteration_started",
        "{}",
        audits[0]
    );
    assert_eq!(audits[1]["fields"]["created"], false, "{}", audits[1]);
    assert_eq!(
        audits[1]["fields"]["changed"], "feedback_history",
        "{}",
        audits[1]
    );
    assert!(
        !text.contains("hunter2"),
        "a feedback body reached the log:\n{text}"
    );
}
