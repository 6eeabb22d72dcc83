//! The `StateBackend` trait: versioned documents shaped like ConfigMaps, with
//! the compare-and-swap primitives the store builds on.
//!
//! The rule it keeps: every write names the version it read. There is no
//! unconditional replace or delete in this trait, so no backend can offer one.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::Result;

/// The content of a document: the parts of a ConfigMap the store uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Document {
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `data` (UTF-8 values).
    pub data: BTreeMap<String, String>,
    /// `binaryData` (raw bytes; base64 on the wire).
    pub binary_data: BTreeMap<String, Vec<u8>>,
    /// Metadata the store does not manage, as read — for a ConfigMap every
    /// `metadata` field other than name, namespace, labels, annotations and
    /// the fields the API server owns: `ownerReferences`, `finalizers`, … —
    /// written back unchanged, so a replace never drops what other writers
    /// (a controller, a garbage collector, a human) set.
    pub foreign_metadata: BTreeMap<String, serde_json::Value>,
}

/// A document as stored, with its name and version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDocument {
    /// Object name (`task-<id>-state`).
    pub name: String,
    /// Opaque version (`metadata.resourceVersion`); changes on every write.
    pub resource_version: String,
    /// The content.
    pub document: Document,
}

/// A document's name, version, labels and annotations: what a metadata-only
/// LIST returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocumentMeta {
    /// Object name.
    pub name: String,
    /// Opaque version (`metadata.resourceVersion`).
    pub resource_version: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
}

/// One page of a metadata-only LIST.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataPage {
    /// The documents of this page.
    pub items: Vec<DocumentMeta>,
    /// Where the next page starts; `None` on the last page.
    pub continue_token: Option<String>,
}

/// One page of a LIST of whole documents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocumentPage {
    /// The documents of this page.
    pub items: Vec<StoredDocument>,
    /// Where the next page starts; `None` on the last page.
    pub continue_token: Option<String>,
}

/// Storage of versioned documents with compare-and-swap writes.
///
/// Implementations: [`MemoryBackend`](crate::MemoryBackend) and
/// [`ConfigMapBackend`](crate::ConfigMapBackend); both pass the conformance
/// suite in `tests/conformance.rs`. Errors use the crate's [`Error`](crate::Error):
/// `Conflict` for a stale version, `AlreadyExists`, `NotFound`, and `Api` /
/// `Transport` for everything the server or the network did.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait StateBackend: Send + Sync {
    /// The document called `name`, or `None`.
    async fn get(&self, name: &str) -> Result<Option<StoredDocument>>;

    /// Creates `name`; `AlreadyExists` if it exists.
    async fn create(&self, name: &str, document: Document) -> Result<StoredDocument>;

    /// Replaces `name` if its version is still `resource_version`; `Conflict`
    /// otherwise, `NotFound` if it is gone.
    async fn replace(
        &self,
        name: &str,
        resource_version: &str,
        document: Document,
    ) -> Result<StoredDocument>;

    /// Deletes `name` if its version is still `resource_version`; `Conflict`
    /// otherwise, `NotFound` if it is gone.
    async fn delete(&self, name: &str, resource_version: &str) -> Result<()>;

    /// Every document whose labels include all of `labels`.
    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<StoredDocument>>;

    /// One page of at most `limit` whole documents whose labels include all
    /// of `labels`, starting where `continue_token` says: what a scan that
    /// needs the payloads (the recovery reconciler) uses, so that it holds
    /// one page at a time, never the namespace.
    ///
    /// The default reads every document with [`list`](Self::list) and serves
    /// them in name order (the continue token is the last name served):
    /// correct, not cheap. Both backends of this crate page for real.
    async fn list_page(
        &self,
        labels: &BTreeMap<String, String>,
        limit: u32,
        continue_token: Option<String>,
    ) -> Result<DocumentPage> {
        let mut documents = self.list(labels).await?;
        documents.sort_by(|a, b| a.name.cmp(&b.name));
        let limit = usize::try_from(limit.max(1)).unwrap_or(usize::MAX);
        let mut rest = documents.into_iter().skip_while(|d| {
            continue_token
                .as_deref()
                .is_some_and(|after| d.name.as_str() <= after)
        });
        let items: Vec<StoredDocument> = rest.by_ref().take(limit).collect();
        let more = rest.next().is_some();
        Ok(DocumentPage {
            continue_token: more.then(|| items.last().map(|d| d.name.clone())).flatten(),
            items,
        })
    }

    /// One page of at most `limit` documents' metadata (no payloads) whose
    /// labels include all of `labels`, starting where `continue_token` (from
    /// the previous page) says. What scans of thousands of states use, so
    /// that neither the backend nor the caller holds every payload at once.
    ///
    /// The default reads every document with [`list`](Self::list) and pages
    /// through their metadata in name order (the continue token is the last
    /// name served): correct, not cheap. Both backends of this crate list
    /// metadata only.
    async fn list_metadata(
        &self,
        labels: &BTreeMap<String, String>,
        limit: u32,
        continue_token: Option<String>,
    ) -> Result<MetadataPage> {
        let mut documents = self.list(labels).await?;
        documents.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(page_in_name_order(
            documents.iter().map(|d| DocumentMeta {
                name: d.name.clone(),
                resource_version: d.resource_version.clone(),
                labels: d.document.labels.clone(),
                annotations: d.document.annotations.clone(),
            }),
            limit,
            continue_token.as_deref(),
        ))
    }
}

/// One page of `limit` documents (at least one) of `sorted`, in name order,
/// after the name `after`; the continue token is the last name served.
pub(crate) fn page_in_name_order(
    sorted: impl IntoIterator<Item = DocumentMeta>,
    limit: u32,
    after: Option<&str>,
) -> MetadataPage {
    let limit = usize::try_from(limit.max(1)).unwrap_or(usize::MAX);
    let mut rest = sorted
        .into_iter()
        .skip_while(|m| after.is_some_and(|after| m.name.as_str() <= after));
    let items: Vec<DocumentMeta> = rest.by_ref().take(limit).collect();
    let more = rest.next().is_some();
    MetadataPage {
        continue_token: more.then(|| items.last().map(|m| m.name.clone())).flatten(),
        items,
    }
}

#[async_trait]
impl<B: StateBackend + ?Sized> StateBackend for Arc<B> {
    async fn get(&self, name: &str) -> Result<Option<StoredDocument>> {
        (**self).get(name).await
    }
    async fn create(&self, name: &str, document: Document) -> Result<StoredDocument> {
        (**self).create(name, document).await
    }
    async fn replace(
        &self,
        name: &str,
        resource_version: &str,
        document: Document,
    ) -> Result<StoredDocument> {
        (**self).replace(name, resource_version, document).await
    }
    async fn delete(&self, name: &str, resource_version: &str) -> Result<()> {
        (**self).delete(name, resource_version).await
    }
    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<StoredDocument>> {
        (**self).list(labels).await
    }
    async fn list_metadata(
        &self,
        labels: &BTreeMap<String, String>,
        limit: u32,
        continue_token: Option<String>,
    ) -> Result<MetadataPage> {
        (**self).list_metadata(labels, limit, continue_token).await
    }
    async fn list_page(
        &self,
        labels: &BTreeMap<String, String>,
        limit: u32,
        continue_token: Option<String>,
    ) -> Result<DocumentPage> {
        (**self).list_page(labels, limit, continue_token).await
    }
}
