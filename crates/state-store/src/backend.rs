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
}
