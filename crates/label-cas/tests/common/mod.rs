//! Test harnesses shared by the integration tests: a backend under test,
//! an outside writer acting on the same labels as a human would, and a count
//! of the calls the backend served.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use label_cas::{GitHubLabels, LabelBackend, LabelSet, MemoryLabels, Metrics, PrRef};
use secrecy::SecretString;
use testkit::github::{FakeGitHub, FakeGitHubBuilder};

/// A backend plus the outside world around it.
pub trait Harness: Send + Sync {
    /// The backend under test.
    type Backend: LabelBackend + 'static;

    /// A shared handle on the backend (managers take ownership of one).
    fn backend(&self) -> Arc<Self::Backend>;
    /// The outside writer replaces the labels.
    fn outside_set(&self, pr: &PrRef, names: &[&str]);
    /// The outside writer adds a label.
    fn outside_add(&self, pr: &PrRef, name: &str);
    /// The outside writer removes a label; `false` if it was not there.
    fn outside_remove(&self, pr: &PrRef, name: &str) -> bool;
    /// The labels as they really are.
    fn truth(&self, pr: &PrRef) -> LabelSet;
    /// Calls the backend's server has served so far.
    fn calls(&self) -> u64;
}

/// [`MemoryLabels`] as its own outside world.
pub struct MemoryHarness {
    pub labels: Arc<MemoryLabels>,
}

impl MemoryHarness {
    pub fn new() -> Self {
        Self {
            labels: Arc::new(MemoryLabels::new()),
        }
    }
}

impl Harness for MemoryHarness {
    type Backend = MemoryLabels;

    fn backend(&self) -> Arc<MemoryLabels> {
        Arc::clone(&self.labels)
    }
    fn outside_set(&self, pr: &PrRef, names: &[&str]) {
        self.labels.set_labels(pr, names.iter().copied());
    }
    fn outside_add(&self, pr: &PrRef, name: &str) {
        self.labels.add_label(pr, name);
    }
    fn outside_remove(&self, pr: &PrRef, name: &str) -> bool {
        self.labels.remove_label(pr, name)
    }
    fn truth(&self, pr: &PrRef) -> LabelSet {
        self.labels.labels(pr)
    }
    fn calls(&self) -> u64 {
        self.labels.calls().total()
    }
}

/// [`GitHubLabels`] over HTTP against testkit's fake GitHub.
pub struct GitHubHarness {
    pub fake: FakeGitHub,
    pub labels: Arc<GitHubLabels>,
    pub metrics: Metrics,
}

impl GitHubHarness {
    pub async fn start() -> Self {
        Self::start_with(FakeGitHub::builder()).await
    }

    pub async fn start_with(builder: FakeGitHubBuilder) -> Self {
        Self::start_with_timeout(builder, Some(std::time::Duration::from_secs(30))).await
    }

    /// `timeout: None` for tests on paused time: a pending timeout timer
    /// would be auto-advanced while the runtime waits for the socket.
    pub async fn start_with_timeout(
        builder: FakeGitHubBuilder,
        timeout: Option<std::time::Duration>,
    ) -> Self {
        let fake = builder.start().await.unwrap();
        let metrics = Metrics::new();
        let labels = GitHubLabels::builder()
            .token(SecretString::from(fake.token().to_owned()))
            .base_uri(fake.url().as_str())
            .request_timeout(timeout)
            .metrics(metrics.clone())
            .build()
            .unwrap();
        Self {
            fake,
            labels: Arc::new(labels),
            metrics,
        }
    }
}

impl Harness for GitHubHarness {
    type Backend = GitHubLabels;

    fn backend(&self) -> Arc<GitHubLabels> {
        Arc::clone(&self.labels)
    }
    fn outside_set(&self, pr: &PrRef, names: &[&str]) {
        self.fake
            .set_labels(pr.owner(), pr.repo(), pr.number(), names)
            .unwrap();
    }
    fn outside_add(&self, pr: &PrRef, name: &str) {
        self.fake
            .add_label(pr.owner(), pr.repo(), pr.number(), name)
            .unwrap();
    }
    fn outside_remove(&self, pr: &PrRef, name: &str) -> bool {
        self.fake
            .remove_label(pr.owner(), pr.repo(), pr.number(), name)
    }
    fn truth(&self, pr: &PrRef) -> LabelSet {
        LabelSet::new(self.fake.labels(pr.owner(), pr.repo(), pr.number()))
    }
    fn calls(&self) -> u64 {
        self.fake.calls().total()
    }
}

pub fn pr(number: u64) -> PrRef {
    PrRef::new("acme", "widgets", number).unwrap()
}

pub fn set(names: &[&str]) -> LabelSet {
    LabelSet::new(names.iter().copied())
}

pub fn owned(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// `suite!(name, make; check, …)`: a module `name` with one `#[tokio::test]`
/// per check, each running `super::check(&harness)` on a fresh harness from
/// `make` — one suite, every backend.
#[allow(unused_macros)] // used by the suites, not by every test binary
macro_rules! suite {
    ($module:ident, $make:expr; $($check:ident),+ $(,)?) => {
        mod $module {
            use super::*;

            $(
                #[tokio::test]
                async fn $check() {
                    let harness = $make;
                    super::$check(&harness).await;
                }
            )+
        }
    };
}
#[allow(unused_imports)] // used by the suites, not by every test binary
pub(crate) use suite;
