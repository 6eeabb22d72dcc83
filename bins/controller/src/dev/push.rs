//! `controller dev-push`: what an agent's `git push` does to the dev
//! server — the pull request's head moves on the dev GitHub
//! (`POST /dev/github/push`), then GitHub's `push` webhook for the branch
//! is delivered, signed with the webhook secret (`X-Hub-Signature-256`), to
//! `POST /webhook/github`.
//!
//! The rule it keeps: **the delivery is GitHub's own shape.** The body is
//! a real `push` payload (the github-webhook crate's fixture) with the
//! repository, branch and heads replaced, so the sensor's route parses,
//! verifies and maps it exactly as it would GitHub's.

use std::time::Duration;

use github_webhook::delivery::{DELIVERY_HEADER, EVENT_HEADER, HOOK_ID_HEADER};
use secrecy::ExposeSecret;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::DevPush;
use crate::dev::github::{PUSH_PATH, PushRequest, Pushed};

/// A real `push` payload from GitHub (a branch created by a push).
const PUSH_PAYLOAD: &str = include_str!(
    "../../../../crates/github-webhook/tests/fixtures/push_with-new-branch.payload.json"
);

/// The header GitHub signs a delivery in.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// The hook id the dev deliveries carry.
pub const DEV_HOOK_ID: &str = "1";

/// What went wrong while pushing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The flags cannot make a push.
    #[error("--{flag}: {reason}")]
    Input {
        /// The flag.
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// The server could not be reached or answered badly.
    #[error("{step}: {reason}")]
    Server {
        /// Which call.
        step: &'static str,
        /// What happened.
        reason: String,
    },
}

/// Both answers of a push.
#[derive(Clone, Debug)]
pub struct PushOutcome {
    /// What the dev GitHub did.
    pub pushed: Pushed,
    /// The webhook's status code.
    pub webhook_status: u16,
    /// The webhook's answer body.
    pub webhook_answer: Value,
}

/// A `push` payload: `after` pushed over `before` to `branch` of
/// `repository` (`owner/name`) at `pushed_at` (Unix seconds).
pub fn push_payload(
    repository: &str,
    branch: &str,
    before: &str,
    after: &str,
    pushed_at: i64,
) -> Result<String, PushError> {
    let (owner, name) = repository.split_once('/').ok_or_else(|| PushError::Input {
        flag: "repository",
        reason: format!("{repository:?} is not owner/name"),
    })?;
    let mut json: Value = serde_json::from_str(PUSH_PAYLOAD).map_err(|e| PushError::Input {
        flag: "repository",
        reason: format!("the built-in payload does not parse: {e}"),
    })?;
    json["ref"] = format!("refs/heads/{branch}").into();
    json["before"] = before.into();
    json["after"] = after.into();
    json["created"] = false.into();
    json["compare"] = format!("https://github.com/{repository}/compare/{before}...{after}").into();
    let repo = &mut json["repository"];
    repo["full_name"] = repository.into();
    repo["name"] = name.into();
    repo["owner"]["login"] = owner.into();
    repo["owner"]["name"] = owner.into();
    repo["pushed_at"] = pushed_at.into();
    if let Some(head) = json.get_mut("head_commit").filter(|h| h.is_object()) {
        head["id"] = after.into();
        head["tree_id"] = after.into();
    }
    if let Some(commits) = json.get_mut("commits").and_then(Value::as_array_mut) {
        for commit in commits {
            commit["id"] = after.into();
            commit["tree_id"] = after.into();
        }
    }
    Ok(json.to_string())
}

/// A head nobody pushed before: 40 hex digits of a random UUID's SHA-256.
pub fn random_head() -> String {
    let digest = Sha256::digest(uuid::Uuid::new_v4().as_bytes());
    format!("{digest:x}").chars().take(40).collect()
}

/// Moves the pull request's head on the dev server, then delivers the
/// signed `push` webhook; returns both answers.
pub async fn dev_push(push: &DevPush) -> Result<PushOutcome, PushError> {
    let head = push.head.clone().unwrap_or_else(random_head);
    if !cancel_coordinator::is_sha(&head) {
        return Err(PushError::Input {
            flag: "head",
            reason: format!("{head:?} is not 40 hex digits"),
        });
    }
    let base = push.url.trim_end_matches('/');
    resilience::tls::ensure_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| server("client", &e))?;
    let answer = client
        .post(format!("{base}{PUSH_PATH}"))
        .json(&PushRequest {
            repository: push.repository.clone(),
            pull_request: push.pr,
            head_sha: head.clone(),
        })
        .send()
        .await
        .map_err(|e| server("POST /dev/github/push", &e))?;
    let status = answer.status();
    let text = answer
        .text()
        .await
        .map_err(|e| server("POST /dev/github/push", &e))?;
    if !status.is_success() {
        return Err(PushError::Server {
            step: "POST /dev/github/push",
            reason: format!("{status}: {text}"),
        });
    }
    let pushed: Pushed =
        serde_json::from_str(&text).map_err(|e| server("POST /dev/github/push", &e))?;
    let body = push_payload(
        &push.repository,
        &push.branch,
        &pushed.before,
        &pushed.head_sha,
        pushed.updated_at.as_second(),
    )?;
    let signature = github_webhook::sign(push.secret.expose_secret().as_bytes(), body.as_bytes());
    let answer = client
        .post(format!("{base}{}", sensor::WEBHOOK_PATH))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(EVENT_HEADER, "push")
        .header(DELIVERY_HEADER, uuid::Uuid::new_v4().to_string())
        .header(HOOK_ID_HEADER, DEV_HOOK_ID)
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
        .map_err(|e| server("POST /webhook/github", &e))?;
    let webhook_status = answer.status().as_u16();
    let text = answer
        .text()
        .await
        .map_err(|e| server("POST /webhook/github", &e))?;
    Ok(PushOutcome {
        pushed,
        webhook_status,
        webhook_answer: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    })
}

fn server(step: &'static str, error: &impl std::fmt::Display) -> PushError {
    PushError::Server {
        step,
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_a_push_the_webhook_crate_parses_for_the_branch_and_heads() {
        let before = "1111111111111111111111111111111111111111";
        let after = random_head();
        assert!(cancel_coordinator::is_sha(&after));
        let body =
            push_payload("acme/widgets", "task-42-fix", before, &after, 1_800_000_000).unwrap();
        let json: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["ref"], "refs/heads/task-42-fix");
        assert_eq!(json["after"], after.as_str());
        assert_eq!(json["repository"]["full_name"], "acme/widgets");
        assert_eq!(json["created"], false);
        assert!(push_payload("acme", "b", before, &after, 0).is_err());
    }
}
