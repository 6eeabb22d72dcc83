//! An in-process [`LabelBackend`] with GitHub's label semantics: an embedded
//! default for `--dev` modes and a faithful test double (it passes the same
//! conformance suite as [`GitHubLabels`](crate::GitHubLabels) against the
//! fake GitHub).
//!
//! Rule kept here: **every write applies completely or not at all and
//! answers with the full resulting label list**, as GitHub's endpoints do;
//! every change gets a fresh ETag.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use crate::{
    ETag, Fetched, LabelBackend, LabelSet, PrRef, RemoveOutcome, Result, validate_label_names,
};

/// Labels of pull requests, in memory. Every pull request exists implicitly
/// (with no labels), as on the fake GitHub; names are case-insensitive and
/// keep the spelling they were first added with.
///
/// Besides the [`LabelBackend`] calls (counted in [`calls`](Self::calls)),
/// it offers an *outside writer* API — [`set_labels`](Self::set_labels),
/// [`add_label`](Self::add_label), [`remove_label`](Self::remove_label) —
/// that changes labels as a human in the web UI would: not counted, and
/// visible to the next read.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use label_cas::{Fetched, LabelBackend, MemoryLabels, PrRef};
///
/// let labels = MemoryLabels::new();
/// let pr = PrRef::new("acme", "widgets", 7)?;
/// labels.set_labels(&pr, ["ready-for-qa"]);
/// let Fetched::Labels { labels: read, etag } = labels.get(&pr, None).await? else { unreachable!() };
/// assert_eq!(read.names(), ["ready-for-qa"]);
/// assert_eq!(labels.get(&pr, etag.as_ref()).await?, Fetched::NotModified);
/// # Ok::<_, label_cas::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Default)]
pub struct MemoryLabels {
    issues: Mutex<HashMap<String, Issue>>,
    /// Source of ETags: each change takes the next value, so an ETag never
    /// comes back after a change, even if the labels do.
    version: AtomicU64,
    calls: Counters,
}

/// How many [`LabelBackend`] calls a [`MemoryLabels`] served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryCalls {
    /// Reads, including those answered `NotModified`.
    pub get: u64,
    /// Reads answered `NotModified`.
    pub not_modified: u64,
    /// `add` calls.
    pub add: u64,
    /// `remove` calls (including `Absent` answers).
    pub remove: u64,
    /// `replace` calls.
    pub replace: u64,
}

impl MemoryCalls {
    /// Calls that (could) change labels: add, remove and replace.
    pub fn mutations(&self) -> u64 {
        self.add + self.remove + self.replace
    }

    /// Every call.
    pub fn total(&self) -> u64 {
        self.get + self.mutations()
    }
}

#[derive(Debug, Default)]
struct Counters {
    get: AtomicU64,
    not_modified: AtomicU64,
    add: AtomicU64,
    remove: AtomicU64,
    replace: AtomicU64,
}

#[derive(Debug, Default)]
struct Issue {
    /// Lower-cased name -> name as first added.
    labels: BTreeMap<String, String>,
    version: u64,
}

impl Issue {
    fn set(&self) -> LabelSet {
        LabelSet::new(self.labels.values().cloned())
    }
}

impl MemoryLabels {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts of the [`LabelBackend`] calls served so far.
    pub fn calls(&self) -> MemoryCalls {
        let c = &self.calls;
        MemoryCalls {
            get: c.get.load(Ordering::Relaxed),
            not_modified: c.not_modified.load(Ordering::Relaxed),
            add: c.add.load(Ordering::Relaxed),
            remove: c.remove.load(Ordering::Relaxed),
            replace: c.replace.load(Ordering::Relaxed),
        }
    }

    /// The outside writer replaces the labels (not counted). Names are not
    /// validated: a test may need any state.
    pub fn set_labels<I, S>(&self, pr: &PrRef, names: I) -> LabelSet
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        self.write(pr, |issue| {
            issue.labels.clear();
            insert_all(issue, &names);
        })
    }

    /// The outside writer adds one label (not counted).
    pub fn add_label(&self, pr: &PrRef, name: &str) -> LabelSet {
        self.write(pr, |issue| insert_all(issue, &[name.to_owned()]))
    }

    /// The outside writer removes one label (not counted); `false` if the
    /// pull request did not carry it.
    pub fn remove_label(&self, pr: &PrRef, name: &str) -> bool {
        let mut issues = self.lock();
        let issue = issues.entry(pr.key()).or_default();
        let removed = issue.labels.remove(&name.to_lowercase()).is_some();
        if removed {
            issue.version = self.next_version();
        }
        removed
    }

    /// The current labels (not counted).
    pub fn labels(&self, pr: &PrRef) -> LabelSet {
        self.lock()
            .get(&pr.key())
            .map(Issue::set)
            .unwrap_or_default()
    }

    /// The labels and their version (the value behind the ETag; it changes
    /// with every change and never comes back), not counted.
    pub(crate) fn versioned(&self, pr: &PrRef) -> (LabelSet, u64) {
        self.lock()
            .get(&pr.key())
            .map(|i| (i.set(), i.version))
            .unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Issue>> {
        // Every change below validates first and mutates last, so a panic
        // cannot leave an issue half-written: poisoning carries no meaning.
        self.issues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_version(&self) -> u64 {
        self.version.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn write(&self, pr: &PrRef, change: impl FnOnce(&mut Issue)) -> LabelSet {
        let mut issues = self.lock();
        let issue = issues.entry(pr.key()).or_default();
        let before = issue.labels.clone();
        change(issue);
        if issue.labels != before {
            issue.version = self.next_version();
        }
        issue.set()
    }
}

#[async_trait]
impl LabelBackend for MemoryLabels {
    async fn get<'a>(&self, pr: &PrRef, if_none_match: Option<&'a ETag>) -> Result<Fetched> {
        self.calls.get.fetch_add(1, Ordering::Relaxed);
        let (labels, version) = self.versioned(pr);
        let etag = etag(version);
        if matches_current(if_none_match, &etag) {
            self.calls.not_modified.fetch_add(1, Ordering::Relaxed);
            return Ok(Fetched::NotModified);
        }
        Ok(Fetched::Labels {
            labels,
            etag: Some(etag),
        })
    }

    async fn add(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
        validate_label_names(names)?;
        self.calls.add.fetch_add(1, Ordering::Relaxed);
        Ok(self.write(pr, |issue| insert_all(issue, names)))
    }

    async fn remove(&self, pr: &PrRef, name: &str) -> Result<RemoveOutcome> {
        crate::validate_label_name(name)?;
        self.calls.remove.fetch_add(1, Ordering::Relaxed);
        let mut issues = self.lock();
        let issue = issues.entry(pr.key()).or_default();
        if issue.labels.remove(&name.to_lowercase()).is_none() {
            return Ok(RemoveOutcome::Absent);
        }
        issue.version = self.next_version();
        Ok(RemoveOutcome::Removed(issue.set()))
    }

    async fn replace(&self, pr: &PrRef, names: &[String]) -> Result<LabelSet> {
        validate_label_names(names)?;
        self.calls.replace.fetch_add(1, Ordering::Relaxed);
        Ok(self.write(pr, |issue| {
            issue.labels.clear();
            insert_all(issue, names);
        }))
    }
}

fn insert_all(issue: &mut Issue, names: &[String]) {
    for name in names {
        issue
            .labels
            .entry(name.to_lowercase())
            .or_insert_with(|| name.clone());
    }
}

/// Whether an `If-None-Match` ETag names the current one (weak comparison,
/// as GitHub does: `W/"x"` matches `"x"`).
pub(crate) fn matches_current(if_none_match: Option<&ETag>, current: &ETag) -> bool {
    if_none_match.is_some_and(|sent| sent.as_str().trim_start_matches("W/") == current.as_str())
}

fn etag(version: u64) -> ETag {
    // Digits and quotes only: always a valid header value.
    ETag::new(format!("\"mem-{version}\"")).unwrap_or_else(|| ETag(String::from("\"mem\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pr() -> PrRef {
        PrRef::new("acme", "widgets", 1).unwrap()
    }

    #[tokio::test]
    async fn an_unchanged_write_keeps_the_etag_and_a_change_renews_it() {
        let store = MemoryLabels::new();
        store.set_labels(&pr(), ["a"]);
        let Fetched::Labels { etag, .. } = store.get(&pr(), None).await.unwrap() else {
            panic!()
        };
        store.add(&pr(), &["A".to_owned()]).await.unwrap();
        assert_eq!(
            store.get(&pr(), etag.as_ref()).await.unwrap(),
            Fetched::NotModified
        );
        store.add_label(&pr(), "b");
        assert!(matches!(
            store.get(&pr(), etag.as_ref()).await.unwrap(),
            Fetched::Labels { .. }
        ));
        assert_eq!(store.calls().not_modified, 1);
        assert_eq!(store.calls().get, 3);
    }

    #[tokio::test]
    async fn removing_then_re_adding_the_same_labels_never_reuses_an_etag() {
        let store = MemoryLabels::new();
        store.set_labels(&pr(), ["a"]);
        let Fetched::Labels { etag, .. } = store.get(&pr(), None).await.unwrap() else {
            panic!()
        };
        store.remove_label(&pr(), "a");
        store.add_label(&pr(), "a");
        assert!(matches!(
            store.get(&pr(), etag.as_ref()).await.unwrap(),
            Fetched::Labels { .. }
        ));
    }

    #[tokio::test]
    async fn invalid_names_are_rejected_before_they_count_as_calls() {
        let store = MemoryLabels::new();
        let err = store.add(&pr(), &["x".repeat(51)]).await.unwrap_err();
        assert!(matches!(err, crate::Error::InvalidLabel { .. }));
        assert_eq!(store.calls(), MemoryCalls::default());
    }
}
