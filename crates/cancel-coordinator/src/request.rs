//! [`CancellationRequest`]: what the sensor (or recovery) asks the
//! coordinator to do, validated before it reaches any name or query.
//!
//! The rule it keeps: a request is a hint, never the truth. The saga decides
//! what to keep from GitHub's current head (or the newest head in the
//! task's state), so a late, duplicated or forged request can at worst cause
//! a check, never the cancellation of the newest head's runs.

use std::fmt;

use jiff::Timestamp;
use label_cas::PrRef;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Why a cancellation was asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// New commits were pushed to the pull request's branch.
    #[default]
    Push,
    /// The pull request was closed or merged: its remaining runs go.
    Closed,
    /// The recovery reconciler found stale runs nobody cancelled.
    Recovery,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Push => "push",
            Self::Closed => "closed",
            Self::Recovery => "recovery",
        })
    }
}

/// A request to cancel the runs of a task that a newer head superseded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancellationRequest {
    /// The task (validated as state-store task ids are).
    pub task_id: String,
    /// The task's pull request.
    #[serde(with = "pr_ref")]
    pub pr: PrRef,
    /// The head the event reported (40 hex characters, lower case).
    pub head_sha: String,
    /// When that head was pushed (newest wins).
    pub pushed_at: Timestamp,
    /// Why.
    pub reason: Reason,
    /// Higher runs first (then older first). Default 0.
    pub priority: u8,
    /// Carried through every log line and record of the cancellation.
    pub correlation_id: String,
    /// `X-GitHub-Delivery` of the event, if it came from one.
    pub delivery_id: Option<String>,
}

impl CancellationRequest {
    /// A push request with priority 0 and a fresh correlation id.
    pub fn push(
        task_id: impl Into<String>,
        pr: PrRef,
        head_sha: impl Into<String>,
        pushed_at: Timestamp,
    ) -> Self {
        Self {
            task_id: task_id.into(),
            pr,
            head_sha: head_sha.into(),
            pushed_at,
            reason: Reason::Push,
            priority: 0,
            correlation_id: uuid::Uuid::new_v4().to_string(),
            delivery_id: None,
        }
    }

    /// Checks the task id (a valid state-store task id), the sha (40 hex
    /// characters) and the bounded strings; lower-cases the sha.
    pub fn validate(&mut self) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidRequest { reason });
        if let Err(e) = state_store::validate_task_id(&self.task_id) {
            return invalid(format!("task id: {e}"));
        }
        if !is_sha(&self.head_sha) {
            return invalid(format!(
                "head sha {:?} is not 40 hexadecimal characters",
                self.head_sha.chars().take(64).collect::<String>()
            ));
        }
        self.head_sha.make_ascii_lowercase();
        if self.correlation_id.is_empty()
            || self.correlation_id.len() > MAX_ID_LEN
            || !self.correlation_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return invalid(format!(
                "correlation id must be 1 to {MAX_ID_LEN} visible ASCII characters"
            ));
        }
        if let Some(delivery) = &self.delivery_id
            && (delivery.is_empty()
                || delivery.len() > MAX_ID_LEN
                || !delivery.bytes().all(|b| b.is_ascii_graphic()))
        {
            return invalid(format!(
                "delivery id must be 1 to {MAX_ID_LEN} visible ASCII characters"
            ));
        }
        Ok(())
    }
}

/// Longest correlation or delivery id accepted.
const MAX_ID_LEN: usize = 128;

/// Whether `sha` is a full commit sha (40 hex characters, either case).
pub fn is_sha(sha: &str) -> bool {
    sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `PrRef` as `{"owner", "repo", "number"}` (validated on the way in).
mod pr_ref {
    use label_cas::PrRef;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Wire {
        owner: String,
        repo: String,
        number: u64,
    }

    pub(super) fn serialize<S: Serializer>(pr: &PrRef, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            owner: pr.owner().to_owned(),
            repo: pr.repo().to_owned(),
            number: pr.number(),
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PrRef, D::Error> {
        let wire = Wire::deserialize(d)?;
        PrRef::new(wire.owner, wire.repo, wire.number).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> CancellationRequest {
        CancellationRequest::push(
            "task-42",
            PrRef::new("acme", "widgets", 7).unwrap(),
            "ABCDEF0123456789ABCDEF0123456789ABCDEF01",
            Timestamp::UNIX_EPOCH,
        )
    }

    #[test]
    fn a_valid_request_is_normalised() {
        let mut r = request();
        r.validate().unwrap();
        assert_eq!(r.head_sha, "abcdef0123456789abcdef0123456789abcdef01");
    }

    #[test]
    fn malformed_requests_are_refused_naming_the_field() {
        let refused = |mut r: CancellationRequest, field: &str| match r.validate() {
            Err(Error::InvalidRequest { reason }) => assert!(reason.contains(field), "{reason}"),
            other => panic!("{field}: {other:?}"),
        };
        refused(
            CancellationRequest {
                task_id: "Task/../x".into(),
                ..request()
            },
            "task id",
        );
        refused(
            CancellationRequest {
                head_sha: "abc".into(),
                ..request()
            },
            "head sha",
        );
        refused(
            CancellationRequest {
                correlation_id: "a b".into(),
                ..request()
            },
            "correlation id",
        );
        refused(
            CancellationRequest {
                delivery_id: Some("x".repeat(500)),
                ..request()
            },
            "delivery id",
        );
    }

    #[test]
    fn requests_round_trip_as_json() {
        let r = request();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["pr"]["owner"], "acme");
        let back: CancellationRequest = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, r);
        let mut bad = json;
        bad["pr"]["owner"] = "-bad".into();
        assert!(serde_json::from_value::<CancellationRequest>(bad).is_err());
    }
}
