//! Issue 21, item 6: every successful write logs one INFO audit line with
//! the task, the new resourceVersion and the names of the fields that
//! changed — never their values, so no feedback body reaches a log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use state_store::{FeedbackEntry, MemoryBackend, Severity, StateStore};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn every_write_is_audited_with_field_names_never_values() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
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
            });
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let audits: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("state written"))
        .collect();
    assert_eq!(audits.len(), 2, "{text}");
    assert!(
        audits
            .iter()
            .all(|l| l.contains("INFO") && l.contains("task_id=\"42\"")),
        "{text}"
    );
    assert!(audits[0].contains("created=true"), "{}", audits[0]);
    assert!(
        audits[0].contains("changed=iteration,status,iteration_started"),
        "{}",
        audits[0]
    );
    assert!(
        audits[1].contains("changed=feedback_history"),
        "{}",
        audits[1]
    );
    assert!(audits[1].contains("resource_version="), "{}", audits[1]);
    assert!(
        !text.contains("hunter2"),
        "a feedback body reached the log:\n{text}"
    );
}
