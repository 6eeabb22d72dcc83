//! Log lines a test wrote, as JSON, for assertions on what an operator
//! would read.
//!
//! One process-wide subscriber (installed on the first
//! [`Logs::capture`]) routes each line to the capture of the **thread** that
//! wrote it. Per-test `set_default` subscribers are not used, and that is
//! the rule this module keeps: with a scoped subscriber alive, tracing
//! caches a callsite's interest from the default of whichever thread hits
//! it first, so a line first written by a test that captures nothing would
//! then never reach the one that does. A current-thread runtime (what
//! `#[tokio::test]` builds) runs every task on the capturing thread; lines
//! from other threads (a multi-thread runtime's workers, a server in its own
//! runtime) are not captured.
//!
//! Lines are tracing-subscriber's JSON at `TRACE`, with a line for each
//! span's creation and close (its fields included), so a test can also
//! assert what a span recorded — for instance that no secret ever reached
//! one.
//!
//! ```
//! use testkit::logs::Logs;
//!
//! let (logs, _guard) = Logs::capture();
//! tracing::info!(task_id = "42", "state written");
//! let line = &logs.with_message("state written")[0];
//! assert_eq!(line["level"], "INFO");
//! assert_eq!(line["fields"]["task_id"], "42");
//! ```

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex, Once, PoisonError};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

/// The lines written on this thread while its [`CaptureGuard`] lives.
#[derive(Clone, Debug, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: RefCell<Option<Logs>> = const { RefCell::new(None) };
}

/// Stops this thread's capture when dropped (the [`Logs`] keep what they
/// hold).
#[derive(Debug)]
#[must_use = "the capture stops when the guard is dropped"]
pub struct CaptureGuard(());

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|capture| capture.borrow_mut().take());
    }
}

impl Logs {
    /// Starts capturing this thread's lines, installing the process-wide
    /// subscriber on first use.
    ///
    /// # Panics
    ///
    /// If another global subscriber was installed before the first capture
    /// (a test binary uses one or the other).
    pub fn capture() -> (Self, CaptureGuard) {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .json()
                .with_max_level(tracing::Level::TRACE)
                .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
                .with_writer(ThreadWriter)
                .finish();
            #[allow(clippy::expect_used)]
            tracing::subscriber::set_global_default(subscriber)
                .expect("testkit::logs installs the only global subscriber of a test binary");
        });
        let logs = Self::default();
        CAPTURE.with(|capture| *capture.borrow_mut() = Some(logs.clone()));
        (logs, CaptureGuard(()))
    }

    /// Everything captured, as written.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }

    /// Every line, parsed.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The lines whose message is `message`, in order.
    pub fn with_message(&self, message: &str) -> Vec<serde_json::Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    }

    fn append(&self, buf: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
    }
}

/// Hands each line to the capture of the thread writing it, if any.
struct ThreadWriter;

impl<'a> MakeWriter<'a> for ThreadWriter {
    type Writer = Sink;

    fn make_writer(&'a self) -> Sink {
        Sink(CAPTURE.with(|capture| capture.borrow().clone()))
    }
}

/// This thread's capture, or nowhere.
struct Sink(Option<Logs>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(logs) = &self.0 {
            logs.append(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
