//! Pull request objects as GitHub's REST API renders them, built from a real
//! payload (`fixtures/github/pull_request_synchronize.payload.json`) so
//! clients deserialize the same shape they get from GitHub.
//!
//! The one rule: only identity fields are rewritten (owner, repo, number,
//! head, labels, URLs); everything else stays as GitHub sent it.

use std::sync::OnceLock;

use serde_json::Value;

/// The webhook payload whose `pull_request` field is the template.
const FIXTURE: &str = include_str!("../../fixtures/github/pull_request_synchronize.payload.json");

/// Owner and repository the fixture was recorded in.
const FIXTURE_OWNER: &str = "Codertocat";
const FIXTURE_REPO: &str = "Hello-World";

/// What the fake knows about one pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pull {
    pub(crate) number: u64,
    pub(crate) head_sha: String,
    pub(crate) head_ref: String,
}

/// Renders `pull` of `owner/repo` (whose numeric id is `repo_id`) with the
/// given label objects; URLs point at `api_base` (no trailing slash).
pub(crate) fn render(
    api_base: &str,
    owner: &str,
    repo: &str,
    repo_id: u64,
    pull: &Pull,
    labels: Vec<Value>,
) -> Value {
    let mut pr = template().clone();
    let api_repo = format!("{api_base}/repos/{owner}/{repo}");
    let html_repo = format!("https://github.com/{owner}/{repo}");
    let full_name = format!("{owner}/{repo}");
    let fixture_api_repo = format!("https://api.github.com/repos/{FIXTURE_OWNER}/{FIXTURE_REPO}");
    let fixture_html_repo = format!("https://github.com/{FIXTURE_OWNER}/{FIXTURE_REPO}");
    let fixture_full_name = format!("{FIXTURE_OWNER}/{FIXTURE_REPO}");
    rewrite_strings(
        &mut pr,
        &[
            (fixture_api_repo.as_str(), api_repo.as_str()),
            (fixture_html_repo.as_str(), html_repo.as_str()),
            (fixture_full_name.as_str(), full_name.as_str()),
            ("https://api.github.com", api_base),
        ],
    );

    let n = pull.number;
    let sha = pull.head_sha.as_str();
    let set = |pr: &mut Value, pointer: &str, value: Value| {
        if let Some(slot) = pr.pointer_mut(pointer) {
            *slot = value;
        }
    };
    // Unique per repository and number, like GitHub's global ids.
    set(&mut pr, "/id", Value::from(repo_id * 1_000_000 + n));
    set(&mut pr, "/number", Value::from(n));
    set(&mut pr, "/state", Value::from("open"));
    set(
        &mut pr,
        "/url",
        Value::from(format!("{api_repo}/pulls/{n}")),
    );
    set(
        &mut pr,
        "/html_url",
        Value::from(format!("{html_repo}/pull/{n}")),
    );
    set(
        &mut pr,
        "/diff_url",
        Value::from(format!("{html_repo}/pull/{n}.diff")),
    );
    set(
        &mut pr,
        "/patch_url",
        Value::from(format!("{html_repo}/pull/{n}.patch")),
    );
    set(
        &mut pr,
        "/issue_url",
        Value::from(format!("{api_repo}/issues/{n}")),
    );
    set(
        &mut pr,
        "/commits_url",
        Value::from(format!("{api_repo}/pulls/{n}/commits")),
    );
    set(
        &mut pr,
        "/review_comments_url",
        Value::from(format!("{api_repo}/pulls/{n}/comments")),
    );
    set(
        &mut pr,
        "/comments_url",
        Value::from(format!("{api_repo}/issues/{n}/comments")),
    );
    set(
        &mut pr,
        "/statuses_url",
        Value::from(format!("{api_repo}/statuses/{sha}")),
    );
    set(
        &mut pr,
        "/_links/self/href",
        Value::from(format!("{api_repo}/pulls/{n}")),
    );
    set(
        &mut pr,
        "/_links/html/href",
        Value::from(format!("{html_repo}/pull/{n}")),
    );
    set(
        &mut pr,
        "/_links/issue/href",
        Value::from(format!("{api_repo}/issues/{n}")),
    );
    set(
        &mut pr,
        "/_links/comments/href",
        Value::from(format!("{api_repo}/issues/{n}/comments")),
    );
    set(
        &mut pr,
        "/_links/review_comments/href",
        Value::from(format!("{api_repo}/pulls/{n}/comments")),
    );
    set(
        &mut pr,
        "/_links/commits/href",
        Value::from(format!("{api_repo}/pulls/{n}/commits")),
    );
    set(
        &mut pr,
        "/_links/statuses/href",
        Value::from(format!("{api_repo}/statuses/{sha}")),
    );
    set(&mut pr, "/head/sha", Value::from(sha));
    set(&mut pr, "/head/ref", Value::from(pull.head_ref.as_str()));
    set(
        &mut pr,
        "/head/label",
        Value::from(format!("{owner}:{}", pull.head_ref)),
    );
    for side in ["head", "base"] {
        set(&mut pr, &format!("/{side}/repo/id"), Value::from(repo_id));
        set(&mut pr, &format!("/{side}/repo/name"), Value::from(repo));
        set(
            &mut pr,
            &format!("/{side}/repo/full_name"),
            Value::from(full_name.as_str()),
        );
        set(
            &mut pr,
            &format!("/{side}/repo/owner/login"),
            Value::from(owner),
        );
        set(
            &mut pr,
            &format!("/{side}/repo/html_url"),
            Value::from(html_repo.as_str()),
        );
    }
    set(
        &mut pr,
        "/base/label",
        Value::from(format!("{owner}:master")),
    );
    set(&mut pr, "/labels", Value::Array(labels));
    pr
}

/// The fixture's `pull_request`, parsed once. The fixture is compiled in and
/// checked by this module's tests, so a parse failure can only come from
/// editing it; it then yields an empty object and every client-side
/// deserialization test fails loudly.
fn template() -> &'static Value {
    static TEMPLATE: OnceLock<Value> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        serde_json::from_str::<Value>(FIXTURE)
            .ok()
            .and_then(|mut payload| payload.get_mut("pull_request").map(Value::take))
            .unwrap_or_else(|| Value::Object(serde_json::Map::new()))
    })
}

/// Replaces, in every string of `value`, each `from` with its `to` (in order).
fn rewrite_strings(value: &mut Value, replacements: &[(&str, &str)]) {
    match value {
        Value::String(s) => {
            for (from, to) in replacements {
                if s.contains(from) {
                    *s = s.replace(from, to);
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| rewrite_strings(v, replacements)),
        Value::Object(map) => map
            .values_mut()
            .for_each(|v| rewrite_strings(v, replacements)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_has_a_pull_request() {
        assert_eq!(template()["number"], 2);
    }

    #[test]
    fn rendered_pull_points_at_the_fake_and_carries_its_identity() {
        let pull = Pull {
            number: 42,
            head_sha: "abc123".into(),
            head_ref: "feature/x".into(),
        };
        let pr = render("http://127.0.0.1:1", "acme", "widgets", 7, &pull, vec![]);
        assert_eq!(pr["number"], 42);
        assert_eq!(pr["url"], "http://127.0.0.1:1/repos/acme/widgets/pulls/42");
        assert_eq!(pr["head"]["sha"], "abc123");
        assert_eq!(pr["head"]["ref"], "feature/x");
        assert_eq!(pr["base"]["repo"]["full_name"], "acme/widgets");
        assert_eq!(pr["labels"], Value::Array(vec![]));
        let text = pr.to_string();
        assert!(!text.contains("Hello-World"), "{text}");
        assert!(!text.contains("api.github.com"), "{text}");
    }
}
