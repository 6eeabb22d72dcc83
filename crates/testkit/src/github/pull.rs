//! Pull request objects as GitHub's REST API renders them, built from a real
//! payload (`fixtures/github/pull_request_synchronize.payload.json`) so
//! clients deserialize the same shape they get from GitHub.
//!
//! The one rule: only the fields the fake tracks are rewritten (owner, repo,
//! number, head, labels, URLs, state, merge and close times, merge commit);
//! everything else stays as GitHub sent it.

use std::sync::OnceLock;

use serde_json::Value;

use super::store::ApiError;

/// The webhook payload whose `pull_request` field is the template.
const FIXTURE: &str = include_str!("../../fixtures/github/pull_request_synchronize.payload.json");

/// Owner and repository the fixture was recorded in.
const FIXTURE_OWNER: &str = "Codertocat";
const FIXTURE_REPO: &str = "Hello-World";

/// The base branch of every pull request, and the commit it starts at: the
/// fixture's.
pub(crate) const BASE_REF: &str = "master";
pub(crate) const BASE_SHA: &str = "f95f852bd8fca8fcc58a9a2d6c842781e32a215e";

/// Fields of GitHub's full `pull-request` schema that its `pull-request-simple`
/// (what list endpoints answer) leaves out.
const FULL_ONLY_FIELDS: [&str; 12] = [
    "merged",
    "mergeable",
    "rebaseable",
    "mergeable_state",
    "merged_by",
    "comments",
    "review_comments",
    "maintainer_can_modify",
    "commits",
    "additions",
    "deletions",
    "changed_files",
];

/// Open, closed without merge, or merged (and so closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PullState {
    Open,
    Closed,
    Merged,
}

/// What the fake knows about one pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pull {
    pub(crate) number: u64,
    pub(crate) head_sha: String,
    pub(crate) head_ref: String,
    pub(crate) state: PullState,
    /// Every commit its head has pointed at (its commits, as far as the fake
    /// knows), and its merge commit: what `GET …/commits/{sha}/pulls` finds.
    pub(crate) commits: Vec<String>,
    pub(crate) merge_commit_sha: Option<String>,
    /// Creation order, for `sort=created` (numbers may be seeded in any order).
    pub(crate) created_seq: u64,
    /// Order of the last change, for `sort=updated`.
    pub(crate) updated_seq: u64,
    /// `None`: the fixture's timestamp (the pull request never changed).
    pub(crate) updated_at: Option<jiff::Timestamp>,
    pub(crate) closed_at: Option<jiff::Timestamp>,
    pub(crate) merged_at: Option<jiff::Timestamp>,
}

impl Pull {
    /// A new open pull request from `head_ref` at `head_sha`.
    pub(crate) fn open(number: u64, head_sha: &str, head_ref: &str, seq: u64) -> Self {
        Self {
            number,
            head_sha: head_sha.to_owned(),
            head_ref: head_ref.to_owned(),
            state: PullState::Open,
            commits: vec![head_sha.to_owned()],
            merge_commit_sha: None,
            created_seq: seq,
            updated_seq: seq,
            updated_at: None,
            closed_at: None,
            merged_at: None,
        }
    }

    /// `open` or `closed`, as the `state` field and filter say.
    pub(crate) fn state_name(&self) -> &'static str {
        match self.state {
            PullState::Open => "open",
            PullState::Closed | PullState::Merged => "closed",
        }
    }

    /// Records a change at `now` (order `seq`).
    pub(crate) fn touch(&mut self, now: jiff::Timestamp, seq: u64) {
        self.updated_at = Some(now);
        self.updated_seq = seq;
    }
}

/// The query of `GET /repos/{o}/{r}/pulls`: which pull requests, in which order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PullFilter {
    state: StateFilter,
    /// `(owner, branch)` from `head=owner:branch`. GitHub silently ignores a
    /// `head` without the owner, and so does the fake.
    head: Option<(String, String)>,
    base: Option<String>,
    sort_updated: bool,
    descending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StateFilter {
    Open,
    Closed,
    All,
}

impl PullFilter {
    /// Parses the query string; an unknown `state`, `sort` or `direction`
    /// is 422 Validation Failed. Other parameters (`per_page`, `page`) are
    /// the paginator's.
    pub(crate) fn parse(query: &str) -> Result<Self, ApiError> {
        let mut state = StateFilter::Open;
        let mut head = None;
        let mut base = None;
        let mut sort_updated = false;
        let mut sorted = false;
        let mut direction = None;
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "state" => {
                    state = match value.as_ref() {
                        "open" => StateFilter::Open,
                        "closed" => StateFilter::Closed,
                        "all" => StateFilter::All,
                        _ => return Err(ApiError::invalid_field("PullRequest", "state", &value)),
                    }
                }
                "head" => {
                    head = value
                        .split_once(':')
                        .map(|(owner, branch)| (owner.to_lowercase(), branch.to_owned()));
                }
                "base" => base = Some(value.into_owned()),
                "sort" => {
                    sorted = value != "created";
                    sort_updated = match value.as_ref() {
                        "created" | "popularity" | "long-running" => false,
                        "updated" => true,
                        _ => return Err(ApiError::invalid_field("PullRequest", "sort", &value)),
                    }
                }
                "direction" => {
                    direction = match value.as_ref() {
                        "asc" => Some(false),
                        "desc" => Some(true),
                        _ => {
                            return Err(ApiError::invalid_field(
                                "PullRequest",
                                "direction",
                                &value,
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Self {
            state,
            head,
            base,
            sort_updated,
            // GitHub: descending by default when sorting by creation,
            // ascending otherwise.
            descending: direction.unwrap_or(!sorted),
        })
    }

    /// Whether `pull` of a repository owned by `owner` passes the filter.
    pub(crate) fn matches(&self, owner: &str, pull: &Pull) -> bool {
        let state = match self.state {
            StateFilter::Open => pull.state == PullState::Open,
            StateFilter::Closed => pull.state != PullState::Open,
            StateFilter::All => true,
        };
        let head = self.head.as_ref().is_none_or(|(head_owner, branch)| {
            *head_owner == owner.to_lowercase() && *branch == pull.head_ref
        });
        let base = self.base.as_ref().is_none_or(|b| b == BASE_REF);
        state && head && base
    }

    /// Sorts matching pull requests into the answer's order.
    pub(crate) fn sort(&self, pulls: &mut [&Pull]) {
        pulls.sort_by_key(|p| {
            if self.sort_updated {
                p.updated_seq
            } else {
                p.created_seq
            }
        });
        if self.descending {
            pulls.reverse();
        }
    }
}

/// A pull request rendered in full, cut down to what GitHub's list
/// endpoints answer (`pull-request-simple`).
pub(crate) fn simple(mut full: Value) -> Value {
    if let Some(fields) = full.as_object_mut() {
        for field in FULL_ONLY_FIELDS {
            fields.remove(field);
        }
    }
    full
}

/// Renders `pull` of `owner/repo` (whose numeric id is `repo_id`) with the
/// given label objects, as `GET …/pulls/{n}` and webhook payloads carry it
/// (`pull-request`); URLs point at `api_base` (no trailing slash).
pub(crate) fn render(
    api_base: &str,
    owner: &str,
    repo: &str,
    repo_id: u64,
    pull: &Pull,
    labels: Vec<Value>,
) -> Value {
    let mut pr = template().clone();
    retarget(&mut pr, api_base, owner, repo);
    let api_repo = format!("{api_base}/repos/{owner}/{repo}");
    let html_repo = format!("https://github.com/{owner}/{repo}");
    let full_name = format!("{owner}/{repo}");

    let n = pull.number;
    let sha = pull.head_sha.as_str();
    // Unique per repository and number, like GitHub's global ids.
    set(&mut pr, "/id", Value::from(repo_id * 1_000_000 + n));
    set(&mut pr, "/number", Value::from(n));
    set(&mut pr, "/state", Value::from(pull.state_name()));
    let merged = pull.state == PullState::Merged;
    set(&mut pr, "/merged", Value::from(merged));
    let time = |t: Option<jiff::Timestamp>| t.map_or(Value::Null, |t| Value::from(timestamp(t)));
    if let Some(updated) = pull.updated_at {
        set(&mut pr, "/updated_at", Value::from(timestamp(updated)));
    }
    set(&mut pr, "/closed_at", time(pull.closed_at));
    set(&mut pr, "/merged_at", time(pull.merged_at));
    set(
        &mut pr,
        "/merge_commit_sha",
        pull.merge_commit_sha
            .as_deref()
            .map_or(Value::Null, Value::from),
    );
    if merged {
        // GitHub names who merged it; the fake's only actor is the
        // fixture's user, who also opened it.
        let user = pr.get("user").cloned().unwrap_or(Value::Null);
        set(&mut pr, "/merged_by", user);
        set(&mut pr, "/mergeable", Value::Null);
        set(&mut pr, "/mergeable_state", Value::from("unknown"));
    }
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

/// Points every URL and name of the fixture's repository in `value` at
/// `owner/repo` served from `api_base` (no trailing slash).
pub(crate) fn retarget(value: &mut Value, api_base: &str, owner: &str, repo: &str) {
    let api_repo = format!("{api_base}/repos/{owner}/{repo}");
    let html_repo = format!("https://github.com/{owner}/{repo}");
    let full_name = format!("{owner}/{repo}");
    let fixture_api_repo = format!("https://api.github.com/repos/{FIXTURE_OWNER}/{FIXTURE_REPO}");
    let fixture_html_repo = format!("https://github.com/{FIXTURE_OWNER}/{FIXTURE_REPO}");
    let fixture_full_name = format!("{FIXTURE_OWNER}/{FIXTURE_REPO}");
    rewrite_strings(
        value,
        &[
            (fixture_api_repo.as_str(), api_repo.as_str()),
            (fixture_html_repo.as_str(), html_repo.as_str()),
            (fixture_full_name.as_str(), full_name.as_str()),
            ("https://api.github.com", api_base),
        ],
    );
}

/// Replaces the value at JSON `pointer` in `value`, if there is one.
pub(crate) fn set(value: &mut Value, pointer: &str, new: Value) {
    if let Some(slot) = value.pointer_mut(pointer) {
        *slot = new;
    }
}

/// A timestamp as GitHub writes them: whole seconds (cut, never rounded
/// up into the future), `Z`.
pub(crate) fn timestamp(t: jiff::Timestamp) -> String {
    let whole = jiff::TimestampRound::new()
        .smallest(jiff::Unit::Second)
        .mode(jiff::RoundMode::Trunc);
    t.round(whole).unwrap_or(t).to_string()
}

/// The whole fixture payload, parsed once. It is compiled in and checked by
/// this module's tests, so a parse failure can only come from editing it;
/// it then yields an empty object and every client-side deserialization
/// test fails loudly.
pub(crate) fn synchronize_fixture() -> &'static Value {
    static PAYLOAD: OnceLock<Value> = OnceLock::new();
    PAYLOAD.get_or_init(|| parse_fixture(FIXTURE))
}

/// A compiled-in fixture as JSON, or an empty object (see
/// [`synchronize_fixture`]).
pub(crate) fn parse_fixture(text: &str) -> Value {
    serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::Object(serde_json::Map::new()))
}

/// The fixture's `pull_request`.
fn template() -> &'static Value {
    static TEMPLATE: OnceLock<Value> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        synchronize_fixture()
            .get("pull_request")
            .cloned()
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
        let pull = Pull::open(42, "abc123", "feature/x", 1);
        let pr = render("http://127.0.0.1:1", "acme", "widgets", 7, &pull, vec![]);
        assert_eq!(pr["number"], 42);
        assert_eq!(pr["url"], "http://127.0.0.1:1/repos/acme/widgets/pulls/42");
        assert_eq!(pr["head"]["sha"], "abc123");
        assert_eq!(pr["head"]["ref"], "feature/x");
        assert_eq!(pr["base"]["repo"]["full_name"], "acme/widgets");
        assert_eq!(pr["labels"], Value::Array(vec![]));
        assert_eq!(pr["state"], "open");
        assert_eq!(pr["merged"], false);
        let text = pr.to_string();
        assert!(!text.contains("Hello-World"), "{text}");
        assert!(!text.contains("api.github.com"), "{text}");
    }

    #[test]
    fn merged_pull_is_closed_with_its_merge_commit_and_times() {
        let mut pull = Pull::open(7, "abc", "b", 1);
        let at: jiff::Timestamp = "2024-01-02T03:04:05.6Z".parse().unwrap();
        pull.state = PullState::Merged;
        pull.merge_commit_sha = Some("m".repeat(40));
        pull.closed_at = Some(at);
        pull.merged_at = Some(at);
        pull.touch(at, 2);
        let pr = render("http://h", "o", "r", 1, &pull, vec![]);
        assert_eq!(pr["state"], "closed");
        assert_eq!(pr["merged"], true);
        assert_eq!(pr["merged_at"], "2024-01-02T03:04:05Z");
        assert_eq!(pr["closed_at"], pr["merged_at"]);
        assert_eq!(pr["updated_at"], pr["merged_at"]);
        assert_eq!(pr["merge_commit_sha"], "m".repeat(40));
        assert_eq!(pr["merged_by"]["login"], pr["user"]["login"]);
    }

    #[test]
    fn simple_rendering_leaves_out_the_full_only_fields() {
        let pull = Pull::open(1, "abc", "b", 1);
        let item = simple(render("http://h", "o", "r", 1, &pull, vec![]));
        for field in FULL_ONLY_FIELDS {
            assert!(item.get(field).is_none(), "{field}");
        }
        assert_eq!(item["state"], "open");
        assert_eq!(item["head"]["sha"], "abc");
    }
}
