//! `MemoryBackend`: the in-process backend with the same semantics as a
//! ConfigMap on the API server (a cluster-wide increasing resourceVersion,
//! 409 on a stale version, AlreadyExists, NotFound, conditional delete,
//! equality label selectors).
//!
//! The rule it keeps: it never offers a behaviour the API server does not
//! have, so code tested against it behaves the same on a cluster.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::backend::{
    Document, DocumentMeta, DocumentPage, MetadataPage, StateBackend, StoredDocument,
    page_in_name_order,
};
use crate::{Error, Result};

/// In-memory [`StateBackend`]; cheap to create, safe to share (`Arc`).
#[derive(Debug, Default)]
pub struct MemoryBackend {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Like etcd's revision: one counter for every object.
    revision: u64,
    objects: BTreeMap<String, StoredDocument>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of stored documents.
    pub fn len(&self) -> usize {
        self.lock().objects.len()
    }

    /// Whether no document is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated (every
        // mutation is a single insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Stores `document` as `name` under a new version.
    fn put(&mut self, name: &str, document: Document) -> StoredDocument {
        self.revision += 1;
        let stored = StoredDocument {
            name: name.to_owned(),
            resource_version: self.revision.to_string(),
            document,
        };
        self.objects.insert(name.to_owned(), stored.clone());
        stored
    }

    /// The precondition of a conditional write: `name` exists at `resource_version`.
    fn check_version(&self, name: &str, resource_version: &str) -> Result<()> {
        let name = name.to_owned();
        match self.objects.get(&name) {
            None => Err(Error::NotFound { name }),
            Some(current) if current.resource_version != resource_version => {
                Err(Error::Conflict { name })
            }
            Some(_) => Ok(()),
        }
    }
}

#[async_trait]
impl StateBackend for MemoryBackend {
    async fn get(&self, name: &str) -> Result<Option<StoredDocument>> {
        Ok(self.lock().objects.get(name).cloned())
    }

    async fn create(&self, name: &str, document: Document) -> Result<StoredDocument> {
        let mut inner = self.lock();
        if inner.objects.contains_key(name) {
            return Err(Error::AlreadyExists {
                name: name.to_owned(),
            });
        }
        Ok(inner.put(name, document))
    }

    async fn replace(
        &self,
        name: &str,
        resource_version: &str,
        document: Document,
    ) -> Result<StoredDocument> {
        let mut inner = self.lock();
        inner.check_version(name, resource_version)?;
        Ok(inner.put(name, document))
    }

    async fn delete(&self, name: &str, resource_version: &str) -> Result<()> {
        let mut inner = self.lock();
        inner.check_version(name, resource_version)?;
        inner.objects.remove(name);
        Ok(())
    }

    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<StoredDocument>> {
        Ok(self
            .lock()
            .objects
            .values()
            .filter(|d| selects(labels, d))
            .cloned()
            .collect())
    }

    /// Pages in name order; the continue token is the last name served.
    async fn list_page(
        &self,
        labels: &BTreeMap<String, String>,
        limit: u32,
        continue_token: Option<String>,
    ) -> Result<DocumentPage> {
        Ok(self.page_after(labels, limit, continue_token))
    }

    /// Pages in name order; the continue token is the last name served.
    async fn list_metadata(
        &self,
        labels: &BTreeMap<String, String>,
        limit: u32,
        continue_token: Option<String>,
    ) -> Result<MetadataPage> {
        use std::ops::Bound;
        let inner = self.lock();
        let start = continue_token.map_or(Bound::Unbounded, Bound::Excluded);
        let matching = inner
            .objects
            .range((start, Bound::Unbounded))
            .map(|(_, d)| d)
            .filter(|d| selects(labels, d))
            .map(|d| DocumentMeta {
                name: d.name.clone(),
                resource_version: d.resource_version.clone(),
                labels: d.document.labels.clone(),
                annotations: d.document.annotations.clone(),
            });
        // Already past the continue token: nothing more to skip.
        Ok(page_in_name_order(matching, limit, None))
    }
}

impl MemoryBackend {
    /// Whole documents after `after` in name order, at most `limit`.
    fn page_after(
        &self,
        labels: &BTreeMap<String, String>,
        limit: u32,
        after: Option<String>,
    ) -> DocumentPage {
        use std::ops::Bound;
        let inner = self.lock();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let limit = usize::try_from(limit.max(1)).unwrap_or(usize::MAX);
        let mut matching = inner
            .objects
            .range((start, Bound::Unbounded))
            .map(|(_, d)| d)
            .filter(|d| selects(labels, d));
        let items: Vec<StoredDocument> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        DocumentPage {
            continue_token: more.then(|| items.last().map(|d| d.name.clone())).flatten(),
            items,
        }
    }
}

fn selects(labels: &BTreeMap<String, String>, d: &StoredDocument) -> bool {
    labels
        .iter()
        .all(|(k, v)| d.document.labels.get(k) == Some(v))
}
