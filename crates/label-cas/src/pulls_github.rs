//! [`PullRequests`] on GitHub's REST API through octocrab, on the same
//! client as [`GitHubLabels`](crate::GitHubLabels).
//!
//! Rule kept here: **one read is one request, and its answer is checked
//! before it is believed** — the same client, timeout, error classification
//! and `x-ratelimit-*` bookkeeping as the label endpoints (one token, one
//! budget), and only the fields supersede relies on are taken from the
//! answer, each validated.

use std::fmt;

use async_trait::async_trait;
use octocrab::Octocrab;
use serde::Deserialize;

use crate::github::{Client, Conditional, DEFAULT_REQUEST_TIMEOUT, LabelJson, label_set};
use crate::{
    ETag, Error, FetchedPull, Metrics, PrRef, PullRequest, PullRequests, PullState, RateLimit,
    Result, parse_head_sha,
};

/// Pull requests on GitHub (or GitHub Enterprise Server).
///
/// Get one from the [`GitHubLabels`](crate::GitHubLabels) it should share
/// credentials and rate-limit budget with
/// ([`GitHubLabels::pull_requests`](crate::GitHubLabels::pull_requests)),
/// and read through a [`PullRequestReader`](crate::PullRequestReader) so
/// that an unchanged pull request costs a free 304.
///
/// ```no_run
/// # async fn run() -> label_cas::Result<()> {
/// use label_cas::{GitHubLabels, PrRef, PullRequestReader};
/// use secrecy::SecretString;
///
/// let labels = GitHubLabels::builder()
///     .token(SecretString::from(std::env::var("GITHUB_TOKEN").unwrap_or_default()))
///     .build()?;
/// let pulls = PullRequestReader::new(labels.pull_requests());
/// let pull = pulls.current(&PrRef::new("acme", "widgets", 42)?).await?;
/// println!("head {} on {}", pull.head_sha, pull.head_ref);
/// # Ok(()) }
/// ```
pub struct GitHubPullRequests {
    client: Client,
}

impl fmt::Debug for GitHubPullRequests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubPullRequests")
            .field("request_timeout", &self.client.request_timeout())
            .field("rate_limit", &self.client.rate_limit())
            .finish_non_exhaustive()
    }
}

impl GitHubPullRequests {
    /// Uses an octocrab client built elsewhere (its retry layer should be
    /// off, as for [`GitHubLabels::from_octocrab`](crate::GitHubLabels::from_octocrab),
    /// so that one read is one request and the caller's retry decides).
    pub fn from_octocrab(client: Octocrab, metrics: Metrics) -> Self {
        Self::from_client(Client::new(client, metrics, Some(DEFAULT_REQUEST_TIMEOUT)))
    }

    pub(crate) fn from_client(client: Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl PullRequests for GitHubPullRequests {
    async fn pull<'a>(&self, pr: &PrRef, if_none_match: Option<&'a ETag>) -> Result<FetchedPull> {
        // Owner and repository were validated by `PrRef::new`: no escaping.
        let uri = format!("/repos/{}/{}/pulls/{}", pr.owner(), pr.repo(), pr.number());
        match self
            .client
            .get_conditional("get_pull", uri, if_none_match)
            .await?
        {
            Conditional::NotModified => Ok(FetchedPull::NotModified),
            Conditional::Fresh { answer, etag } => Ok(FetchedPull::Pull {
                pull: parse_pull(&answer.body)?,
                etag,
            }),
        }
    }

    fn rate_limit(&self) -> Option<RateLimit> {
        self.client.rate_limit()
    }
}

/// Checks a pull request answer and keeps what supersede uses.
fn parse_pull(body: &[u8]) -> Result<PullRequest> {
    #[derive(Deserialize)]
    struct PullJson {
        head: HeadJson,
        state: String,
        /// Present in the single pull request GET; `merged_at` decides
        /// where it is missing (as in list answers).
        merged: Option<bool>,
        merged_at: Option<String>,
        labels: Vec<LabelJson>,
        updated_at: Option<String>,
    }
    #[derive(Deserialize)]
    struct HeadJson {
        sha: String,
        #[serde(rename = "ref")]
        branch: String,
    }
    let invalid = |reason: String| Error::InvalidResponse { reason };
    let json: PullJson = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "the pull request is not an object with head.sha, head.ref, state and labels: {e}"
        ))
    })?;
    let head_sha = parse_head_sha(&json.head.sha)
        .map_err(|e| invalid(format!("the pull request's head: {e}")))?;
    if json.head.branch.is_empty() {
        return Err(invalid("the pull request's head.ref is empty".into()));
    }
    let state = match json.state.as_str() {
        "open" => PullState::Open,
        "closed" => PullState::Closed,
        other => {
            let shown: String = other.chars().take(20).collect();
            return Err(invalid(format!("pull request state {shown:?}")));
        }
    };
    let merged = json.merged.unwrap_or(json.merged_at.is_some());
    let updated_at = json
        .updated_at
        .map(|at| {
            at.parse::<jiff::Timestamp>()
                .map_err(|e| invalid(format!("the pull request's updated_at: {e}")))
        })
        .transpose()?;
    Ok(PullRequest {
        head_sha,
        head_ref: json.head.branch,
        state,
        merged,
        labels: label_set(json.labels)?,
        updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The `pull_request` of a real webhook payload: the same object the
    /// REST endpoint answers.
    fn fixture() -> Value {
        let payload: Value = serde_json::from_str(include_str!(
            "../../testkit/fixtures/github/pull_request_synchronize.payload.json"
        ))
        .unwrap();
        payload["pull_request"].clone()
    }

    fn parse(value: &Value) -> Result<PullRequest> {
        parse_pull(value.to_string().as_bytes())
    }

    #[test]
    fn a_real_pull_request_answer_reads_head_state_labels_and_time() {
        let pull = parse(&fixture()).unwrap();
        assert_eq!(pull.head_sha, "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
        assert_eq!(pull.head_ref, "changes");
        assert_eq!((pull.state, pull.merged), (PullState::Open, false));
        assert_eq!(
            pull.updated_at,
            Some("2019-05-15T15:20:33Z".parse().unwrap())
        );
    }

    #[test]
    fn a_closed_and_merged_pull_request_reads_as_such() {
        let mut merged = fixture();
        merged["state"] = json!("closed");
        merged["merged"] = json!(true);
        merged["merged_at"] = json!("2019-05-16T10:00:00Z");
        merged["labels"] = json!([{"id": 1, "name": "ready-for-qa"}]);
        let pull = parse(&merged).unwrap();
        assert_eq!((pull.state, pull.merged), (PullState::Closed, true));
        assert_eq!(pull.labels.names(), ["ready-for-qa"]);

        let mut closed = fixture();
        closed["state"] = json!("closed");
        let pull = parse(&closed).unwrap();
        assert_eq!((pull.state, pull.merged), (PullState::Closed, false));
    }

    #[test]
    fn without_the_merged_flag_merged_at_decides() {
        let mut listed = fixture();
        listed.as_object_mut().unwrap().remove("merged");
        assert!(!parse(&listed).unwrap().merged);
        listed["merged_at"] = json!("2019-05-16T10:00:00Z");
        assert!(parse(&listed).unwrap().merged);
    }

    #[test]
    fn an_upper_case_head_sha_is_lower_cased() {
        let mut upper = fixture();
        upper["head"]["sha"] = json!("EC26C3E57CA3A959CA5AAD62DE7213C562F8C821");
        assert_eq!(
            parse(&upper).unwrap().head_sha,
            "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
        );
    }

    /// Breaks one thing in an answer.
    type Breaks = fn(&mut Value);

    #[test]
    fn pull_request_answers_are_validated_before_use() {
        let broken: [(&str, Breaks); 8] = [
            ("short sha", |v| v["head"]["sha"] = json!("ec26c3e")),
            ("no head", |v| {
                v.as_object_mut().unwrap().remove("head");
            }),
            ("empty ref", |v| v["head"]["ref"] = json!("")),
            ("odd state", |v| v["state"] = json!("draft")),
            ("no labels", |v| {
                v.as_object_mut().unwrap().remove("labels");
            }),
            ("bad label", |v| {
                v["labels"] = json!([{"id": 1, "name": ""}])
            }),
            ("bad time", |v| v["updated_at"] = json!("yesterday")),
            ("not an object", |v| *v = json!(["a"])),
        ];
        for (what, breaks) in broken {
            let mut value = fixture();
            breaks(&mut value);
            assert!(
                matches!(parse(&value), Err(Error::InvalidResponse { .. })),
                "{what}"
            );
        }
        let mut no_time = fixture();
        no_time["updated_at"] = Value::Null;
        assert_eq!(parse(&no_time).unwrap().updated_at, None);
    }
}
