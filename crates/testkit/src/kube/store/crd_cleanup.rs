//! What deleting a CustomResourceDefinition does, as apiextensions-apiserver
//! does it: the CRD is marked `Terminating` and held by the
//! `customresourcecleanup.apiextensions.k8s.io` finalizer, creates of its
//! kind are refused, every object of the kind is deleted (through the
//! ordinary delete, so watchers see each one's DELETED and the objects'
//! own finalizers hold them), and only when none is left is the finalizer
//! removed and the kind no longer served. The rule it keeps: **a kind's
//! objects never vanish without their DELETED events**.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::agenda::Action;
use super::{DeleteOptions, Deleted, ObjKey, Ownership, Store, metadata_mut, str_at};
use crate::kube::managed_fields::FieldManager;
use crate::kube::resource::ResourceType;
use crate::kube::status::ApiError;

/// The finalizer that holds a deleted CRD until its objects are gone.
pub(crate) const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// How often the finalizer controller checks again for objects that are
/// still there (held by their own finalizers): its poll interval.
const RECHECK: Duration = Duration::from_secs(5);

/// Whether `t` is the CustomResourceDefinition kind itself.
pub(crate) fn is_crd_kind(t: &ResourceType) -> bool {
    t.group == "apiextensions.k8s.io" && t.plural == "customresourcedefinitions"
}

impl Store {
    /// The CRD registry's delete, on a CRD not yet being deleted: mark it
    /// terminating (finalizer, condition) instead of removing it.
    pub(super) fn delete_crd(
        &mut self,
        k: &ObjKey,
        current: &Value,
        opts: &DeleteOptions,
    ) -> Deleted {
        let mut next = current.clone();
        let now = self.clock.timestamp();
        let meta = metadata_mut(&mut next);
        meta.insert("deletionTimestamp".into(), json!(now));
        meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        if let Some(g) = meta.get("generation").and_then(Value::as_i64) {
            meta.insert("generation".into(), json!(g + 1));
        }
        let mut finalizers = super::finalizers(current);
        if !finalizers.iter().any(|f| f == CLEANUP_FINALIZER) {
            finalizers.push(CLEANUP_FINALIZER.to_owned());
        }
        meta.insert("finalizers".into(), json!(finalizers));
        set_terminating(
            &mut next,
            "InstanceDeletionPending",
            "CustomResourceDefinition marked for deletion; CustomResource deletion will begin soon",
            &now,
        );
        if opts.dry_run {
            return Deleted::Terminating(next);
        }
        let stored = self.commit_modified(k, current, next);
        self.agenda.schedule(
            Instant::now(),
            Action::CleanUpCrd {
                key: k.clone(),
                uid: str_at(&stored, "uid"),
            },
        );
        Deleted::Terminating(stored)
    }

    /// 405 for a create of a kind whose CRD is being deleted.
    pub(super) fn refuse_while_terminating(&self, t: &ResourceType) -> Result<(), ApiError> {
        if !t.custom {
            return Ok(());
        }
        let crd = ObjKey {
            group: "apiextensions.k8s.io".to_owned(),
            plural: "customresourcedefinitions".to_owned(),
            namespace: String::new(),
            name: format!("{}.{}", t.plural, t.group),
        };
        if self
            .objects
            .get(&crd)
            .is_some_and(|o| o.pointer("/metadata/deletionTimestamp").is_some())
        {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "create not allowed while custom resource definition is terminating",
            ));
        }
        Ok(())
    }

    /// The finalizer controller's turn: delete what is left of the kind, or
    /// let the CRD go when nothing is.
    pub(super) fn clean_up_crd(&mut self, k: &ObjKey, uid: &str) {
        let Some(crd) = self
            .objects
            .get(k)
            .filter(|o| str_at(o, "uid") == uid)
            .cloned()
        else {
            return;
        };
        let Ok(t) = ResourceType::from_crd(&crd) else {
            return;
        };
        let instances: Vec<(ObjKey, bool)> = self
            .objects
            .range(super::type_range(&t))
            .map(|(key, o)| {
                (
                    key.clone(),
                    o.pointer("/metadata/deletionTimestamp").is_some(),
                )
            })
            .collect();
        for (key, deleting) in &instances {
            if !deleting
                && let Err(e) =
                    self.delete(&t, &key.namespace, &key.name, &DeleteOptions::default())
            {
                tracing::debug!(object = %key.name, error = %e.message, "CRD cleanup's delete refused");
            }
        }
        let left = self.objects.range(super::type_range(&t)).count();
        let Some(crd_type) = self.type_of(k) else {
            return;
        };
        if left > 0 {
            self.crd_write(
                &crd_type,
                k,
                &crd,
                (
                    "InstanceDeletionInProgress",
                    "CustomResource deletion is in progress",
                ),
                None,
            );
            self.agenda.schedule(
                Instant::now() + RECHECK,
                Action::CleanUpCrd {
                    key: k.clone(),
                    uid: uid.to_owned(),
                },
            );
            return;
        }
        let kept: Vec<String> = super::finalizers(&crd)
            .into_iter()
            .filter(|f| f != CLEANUP_FINALIZER)
            .collect();
        self.crd_write(
            &crd_type,
            k,
            &crd,
            ("InstanceDeletionCompleted", "removed all instances"),
            Some(kept),
        );
    }

    /// The finalizer controller's two updates: the `Terminating` condition
    /// (status), then, if given, the finalizers (metadata; removing the
    /// last one completes the deletion).
    fn crd_write(
        &mut self,
        t: &ResourceType,
        k: &ObjKey,
        current: &Value,
        (reason, message): (&str, &str),
        finalizers: Option<Vec<String>>,
    ) {
        let who = |status_only| {
            FieldManager::new(
                "kube-apiserver".to_owned(),
                t.api_version(t.preferred_version()),
                true,
                status_only,
            )
        };
        let mut with_condition = current.clone();
        set_terminating(
            &mut with_condition,
            reason,
            message,
            &self.clock.timestamp(),
        );
        let written = self.write(
            t,
            &k.namespace,
            &k.name,
            current,
            with_condition,
            true,
            false,
            Ownership::Update(who(true)),
        );
        let (Ok(updated), Some(finalizers)) = (written, finalizers) else {
            return;
        };
        let mut next = updated.clone();
        let meta = metadata_mut(&mut next);
        if finalizers.is_empty() {
            meta.remove("finalizers");
        } else {
            meta.insert("finalizers".into(), json!(finalizers));
        }
        if let Err(e) = self.write(
            t,
            &k.namespace,
            &k.name,
            &updated,
            next,
            false,
            false,
            Ownership::Update(who(false)),
        ) {
            tracing::debug!(crd = %k.name, error = %e.message, "CRD cleanup's write refused");
        }
    }
}

/// Sets the CRD's `Terminating` condition.
fn set_terminating(crd: &mut Value, reason: &str, message: &str, now: &str) {
    super::set_condition(
        crd,
        json!({
            "type": "Terminating",
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
        }),
    );
}
