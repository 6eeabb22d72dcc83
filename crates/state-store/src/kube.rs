//! `ConfigMapBackend`: task state documents as ConfigMaps, through the real
//! Kubernetes API (`kube::Api<ConfigMap>`).
//!
//! The rule it keeps: replace sends `metadata.resourceVersion` and delete sends
//! `Preconditions { resourceVersion }`, so the API server itself refuses a write
//! based on a stale read (409). There is no server-side apply and no force.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Api, Client};

use crate::backend::{
    Document, DocumentMeta, DocumentPage, MetadataPage, StateBackend, StoredDocument,
};
use crate::{Error, Result};

/// Page size of LIST calls: large enough that 10 000 states take 20 calls,
/// small enough that one page never approaches the API server's response limits.
const LIST_PAGE_SIZE: u32 = 500;

/// [`StateBackend`] over ConfigMaps in one namespace.
#[derive(Clone)]
pub struct ConfigMapBackend {
    api: Api<ConfigMap>,
}

impl std::fmt::Debug for ConfigMapBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigMapBackend").finish_non_exhaustive()
    }
}

impl ConfigMapBackend {
    /// ConfigMaps in `namespace`, through `client`.
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
        }
    }

    /// ConfigMaps through an existing `Api` (its namespace is used).
    pub fn from_api(api: Api<ConfigMap>) -> Self {
        Self { api }
    }
}

#[async_trait]
impl StateBackend for ConfigMapBackend {
    async fn get(&self, name: &str) -> Result<Option<StoredDocument>> {
        match self.api.get_opt(name).await {
            Ok(Some(cm)) => from_config_map(cm).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(map_error(e, name)),
        }
    }

    async fn create(&self, name: &str, document: Document) -> Result<StoredDocument> {
        let cm = to_config_map(name, None, document);
        let created = self
            .api
            .create(&PostParams::default(), &cm)
            .await
            .map_err(|e| map_error(e, name))?;
        from_config_map(created)
    }

    async fn replace(
        &self,
        name: &str,
        resource_version: &str,
        document: Document,
    ) -> Result<StoredDocument> {
        let cm = to_config_map(name, Some(resource_version), document);
        let replaced = self
            .api
            .replace(name, &PostParams::default(), &cm)
            .await
            .map_err(|e| map_error(e, name))?;
        from_config_map(replaced)
    }

    async fn delete(&self, name: &str, resource_version: &str) -> Result<()> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(resource_version.to_owned()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        self.api
            .delete(name, &params)
            .await
            .map(|_| ())
            .map_err(|e| map_error(e, name))
    }

    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<StoredDocument>> {
        let mut documents = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.list_page(labels, LIST_PAGE_SIZE, token).await?;
            documents.extend(page.items);
            match page.continue_token {
                Some(next) => token = Some(next),
                None => return Ok(documents),
            }
        }
    }

    async fn list_page(
        &self,
        labels: &BTreeMap<String, String>,
        limit: u32,
        continue_token: Option<String>,
    ) -> Result<DocumentPage> {
        let selector = label_selector(labels);
        let mut params = ListParams::default().labels(&selector).limit(limit.max(1));
        if let Some(token) = continue_token.as_deref() {
            params = params.continue_token(token);
        }
        let page = self
            .api
            .list(&params)
            .await
            .map_err(|e| map_error(e, "(list)"))?;
        let items = page
            .items
            .into_iter()
            .map(from_config_map)
            .collect::<Result<Vec<_>>>()?;
        Ok(DocumentPage {
            items,
            continue_token: page.metadata.continue_.filter(|t| !t.is_empty()),
        })
    }

    async fn list_metadata(
        &self,
        labels: &BTreeMap<String, String>,
        limit: u32,
        continue_token: Option<String>,
    ) -> Result<MetadataPage> {
        // `PartialObjectMetadata`: no `data`, no `binaryData` on the wire.
        let selector = label_selector(labels);
        let mut params = ListParams::default().labels(&selector).limit(limit.max(1));
        if let Some(token) = continue_token.as_deref() {
            params = params.continue_token(token);
        }
        let page = self
            .api
            .list_metadata(&params)
            .await
            .map_err(|e| map_error(e, "(list)"))?;
        let mut items = Vec::with_capacity(page.items.len());
        for object in page.items {
            let meta = object.metadata;
            let name = meta.name.unwrap_or_default();
            let Some(resource_version) = meta.resource_version else {
                return Err(Error::Transport(format!(
                    "ConfigMap {name} came back without a resourceVersion"
                )));
            };
            items.push(DocumentMeta {
                name,
                resource_version,
                labels: meta.labels.unwrap_or_default(),
                annotations: meta.annotations.unwrap_or_default(),
            });
        }
        Ok(MetadataPage {
            items,
            continue_token: page.metadata.continue_.filter(|t| !t.is_empty()),
        })
    }
}

/// `metadata` fields that are not foreign: the ones the store writes itself,
/// and the ones the API server owns (sent back, they would only be ignored
/// or refused).
const OWN_METADATA: [&str; 12] = [
    "name",
    "namespace",
    "labels",
    "annotations",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "managedFields",
    "selfLink",
];

fn label_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn to_config_map(name: &str, resource_version: Option<&str>, document: Document) -> ConfigMap {
    let non_empty = |m: BTreeMap<String, String>| (!m.is_empty()).then_some(m);
    // Foreign fields first, ours on top: what we manage cannot be overridden.
    let foreign = serde_json::Value::Object(document.foreign_metadata.into_iter().collect());
    let base: ObjectMeta = serde_json::from_value(foreign).unwrap_or_default();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            resource_version: resource_version.map(str::to_owned),
            labels: non_empty(document.labels),
            annotations: non_empty(document.annotations),
            ..base
        },
        data: non_empty(document.data),
        binary_data: (!document.binary_data.is_empty()).then(|| {
            document
                .binary_data
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect()
        }),
        immutable: None,
    }
}

fn from_config_map(cm: ConfigMap) -> Result<StoredDocument> {
    let foreign_metadata = match serde_json::to_value(&cm.metadata) {
        Ok(serde_json::Value::Object(fields)) => fields
            .into_iter()
            .filter(|(k, v)| !OWN_METADATA.contains(&k.as_str()) && !v.is_null())
            .collect(),
        _ => BTreeMap::new(),
    };
    let name = cm.metadata.name.unwrap_or_default();
    let Some(resource_version) = cm.metadata.resource_version else {
        // An unreadable answer: after a write, the write may well have been
        // applied, so the store must settle it by re-reading (Transport).
        return Err(Error::Transport(format!(
            "ConfigMap {name} came back without a resourceVersion"
        )));
    };
    Ok(StoredDocument {
        name,
        resource_version,
        document: Document {
            labels: cm.metadata.labels.unwrap_or_default(),
            annotations: cm.metadata.annotations.unwrap_or_default(),
            data: cm.data.unwrap_or_default(),
            binary_data: cm
                .binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
            foreign_metadata,
        },
    })
}

/// Maps a kube error to ours. Anything that may have happened after the request
/// left (connection, timeout, an unreadable answer) is `Transport`, which the
/// store treats as "the write may have been applied".
fn map_error(error: kube::Error, name: &str) -> Error {
    match error {
        kube::Error::Api(status) => {
            let name = name.to_owned();
            if status.is_already_exists() {
                Error::AlreadyExists { name }
            } else if status.is_conflict() {
                Error::Conflict { name }
            } else if status.is_not_found() {
                Error::NotFound { name }
            } else {
                let retry_after = status
                    .details
                    .as_ref()
                    .map(|d| d.retry_after_seconds)
                    .filter(|s| *s > 0)
                    .map(|s| std::time::Duration::from_secs(u64::from(s)));
                Error::Api {
                    code: status.code,
                    reason: status.reason.clone(),
                    message: status.message.clone(),
                    retry_after,
                }
            }
        }
        e @ (kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::SerdeError(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::FromUtf8(_)) => Error::Transport(e.to_string()),
        other => Error::Client(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;
    use kube::core::response::StatusDetails;

    use super::*;

    fn status(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("msg", reason).with_code(code)))
    }

    #[test]
    fn api_statuses_map_to_the_errors_the_store_acts_on() {
        assert!(matches!(
            map_error(status(409, "AlreadyExists"), "n"),
            Error::AlreadyExists { .. }
        ));
        assert!(matches!(
            map_error(status(409, "Conflict"), "n"),
            Error::Conflict { .. }
        ));
        assert!(matches!(
            map_error(status(404, "NotFound"), "n"),
            Error::NotFound { .. }
        ));
        let e = map_error(status(500, "InternalError"), "n");
        assert!(e.is_transient());
        assert!(matches!(e, Error::Api { code: 500, .. }));
        assert!(!map_error(status(422, "Invalid"), "n").is_transient());
    }

    #[test]
    fn a_retry_after_in_the_status_details_is_kept() {
        let details = StatusDetails {
            name: "n".into(),
            group: String::new(),
            kind: "configmaps".into(),
            uid: String::new(),
            causes: Vec::new(),
            retry_after_seconds: 7,
        };
        let e = kube::Error::Api(Box::new(
            Status::failure("slow down", "TooManyRequests")
                .with_code(429)
                .with_details(details),
        ));
        assert_eq!(
            map_error(e, "n").retry_after(),
            Some(std::time::Duration::from_secs(7))
        );
    }

    #[test]
    fn documents_convert_to_config_maps_and_back_without_loss() {
        let mut doc = Document::default();
        doc.labels.insert("a".into(), "b".into());
        doc.data.insert("k".into(), "v".into());
        doc.binary_data.insert("z".into(), vec![1, 2, 3]);
        doc.foreign_metadata
            .insert("finalizers".into(), serde_json::json!(["example.dev/keep"]));
        let mut cm = to_config_map("task-x-state", Some("12"), doc.clone());
        assert_eq!(
            cm.metadata.finalizers.as_deref(),
            Some(&["example.dev/keep".to_owned()][..])
        );
        assert_eq!(cm.metadata.resource_version.as_deref(), Some("12"));
        assert!(cm.metadata.annotations.is_none());
        let back = from_config_map(cm.clone()).unwrap();
        assert_eq!(back.document, doc);
        assert_eq!(back.resource_version, "12");
        cm.metadata.resource_version = None;
        assert!(matches!(from_config_map(cm), Err(Error::Transport(_))));
    }
}

#[cfg(test)]
mod metadata_tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    #[test]
    fn server_owned_and_store_owned_metadata_is_never_foreign() {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("task-x-state".into()),
                namespace: Some("ns".into()),
                uid: Some("u".into()),
                resource_version: Some("7".into()),
                generation: Some(3),
                creation_timestamp: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
                generate_name: Some("task-".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let stored = from_config_map(cm).unwrap();
        assert_eq!(
            stored.document.foreign_metadata.keys().collect::<Vec<_>>(),
            ["generateName"]
        );
        // A foreign copy of a field the store owns cannot override it.
        let mut doc = stored.document;
        doc.foreign_metadata
            .insert("name".into(), serde_json::json!("other"));
        let cm = to_config_map("task-x-state", Some("7"), doc);
        assert_eq!(cm.metadata.name.as_deref(), Some("task-x-state"));
    }
}
