//! Which events the sensor acts on, and for which task: the repository and
//! sender allow-lists, and the task mapping (a branch-name pattern with a
//! named capture `task`, a pull request label prefix, or both).
//!
//! The rule it keeps: **a task id comes out valid or not at all.** The
//! captured part becomes `task-<capture>` and must pass state-store's
//! `validate_task_id`, so no branch or label name can address another
//! object or widen a selector; anything else maps to no task.

use regex::Regex;

/// How branch names and labels map to task ids.
#[derive(Clone, Debug)]
pub struct TaskMapping {
    branch: Option<Regex>,
    label_prefix: Option<String>,
}

impl TaskMapping {
    /// A mapping by branch pattern (capture `task`) and/or label prefix.
    pub fn new(branch: Option<Regex>, label_prefix: Option<String>) -> Self {
        Self {
            branch,
            label_prefix,
        }
    }

    /// Whether labels can map a task (a push's pull request must then be
    /// looked up when its branch does not map).
    pub fn uses_labels(&self) -> bool {
        self.label_prefix.is_some()
    }

    /// The task of branch `branch`, if the pattern matches and the capture
    /// makes a valid task id.
    ///
    /// ```
    /// use regex::Regex;
    /// use sensor::TaskMapping;
    ///
    /// let m = TaskMapping::new(Some(Regex::new(sensor::config::DEFAULT_BRANCH_PATTERN)?), None);
    /// assert_eq!(m.task_for_branch("task-42-fix").as_deref(), Some("42"));
    /// assert_eq!(m.task_for_branch("task-42"), m.task_for_branch("task-42-other"));
    /// assert_eq!(m.task_for_branch("task-42x"), None);
    /// assert_eq!(m.task_for_branch("feature/task-42"), None);
    /// # Ok::<(), regex::Error>(())
    /// ```
    pub fn task_for_branch(&self, branch: &str) -> Option<String> {
        let captured = self.branch.as_ref()?.captures(branch)?.name("task")?;
        task_id(captured.as_str())
    }

    /// The task named by the first label carrying the prefix (`task-42`
    /// with prefix `task-` is task `42`) that makes a valid task id.
    pub fn task_for_labels<'a>(&self, labels: impl IntoIterator<Item = &'a str>) -> Option<String> {
        let prefix = self.label_prefix.as_deref()?;
        labels
            .into_iter()
            .filter_map(|label| label.strip_prefix(prefix))
            .find_map(task_id)
    }

    /// The branch mapping first, then the labels.
    pub fn task_for<'a>(
        &self,
        branch: &str,
        labels: impl IntoIterator<Item = &'a str>,
    ) -> Option<String> {
        self.task_for_branch(branch)
            .or_else(|| self.task_for_labels(labels))
    }
}

/// The key itself (lower-cased) when it is a valid state-store task id:
/// branch `task-42-fix` is task `42`, whose state is `task-42-state` and
/// whose lock is `cancel-task-42`.
fn task_id(key: &str) -> Option<String> {
    let id = key.to_ascii_lowercase();
    state_store::validate_task_id(&id).is_ok().then_some(id)
}

/// The repository and sender allow-lists.
#[derive(Clone, Debug)]
pub struct AllowLists {
    repositories: Vec<String>,
    senders: Vec<String>,
}

impl AllowLists {
    /// Repositories as `owner/name` or `owner/*`; senders as logins (empty:
    /// anyone). Compared case-insensitively, as GitHub names are.
    pub fn new(repositories: &[String], senders: &[String]) -> Self {
        let lower = |v: &[String]| v.iter().map(|s| s.to_ascii_lowercase()).collect();
        Self {
            repositories: lower(repositories),
            senders: lower(senders),
        }
    }

    /// Whether events of `owner/name` are handled.
    pub fn repository(&self, full_name: &str) -> bool {
        let full_name = full_name.to_ascii_lowercase();
        let owner = full_name.split_once('/').map_or("", |(owner, _)| owner);
        self.repositories.iter().any(|allowed| {
            *allowed == full_name
                || allowed
                    .strip_suffix("/*")
                    .is_some_and(|allowed_owner| allowed_owner == owner)
        })
    }

    /// Whether `sender`'s events are handled.
    pub fn sender(&self, sender: Option<&str>) -> bool {
        self.senders.is_empty()
            || sender.is_some_and(|s| self.senders.iter().any(|a| a.eq_ignore_ascii_case(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_BRANCH_PATTERN;

    fn mapping(labels: Option<&str>) -> TaskMapping {
        TaskMapping::new(
            Some(Regex::new(DEFAULT_BRANCH_PATTERN).unwrap()),
            labels.map(str::to_owned),
        )
    }

    #[test]
    fn the_default_pattern_maps_task_branches_only() {
        let m = mapping(None);
        assert_eq!(m.task_for_branch("task-42-fix").as_deref(), Some("42"));
        assert_eq!(m.task_for_branch("task-7").as_deref(), Some("7"));
        for other in ["main", "task-", "task-x", "task-42x", "xtask-42", "Task-42"] {
            assert_eq!(m.task_for_branch(other), None, "{other}");
        }
        assert!(!m.uses_labels());
        assert_eq!(m.task_for_labels(["task-42"]), None);
    }

    #[test]
    fn a_capture_that_is_no_valid_task_id_maps_nothing() {
        let m = TaskMapping::new(Some(Regex::new("^agent/(?P<task>.+)$").unwrap()), None);
        assert_eq!(
            m.task_for_branch("agent/Fix-Login").as_deref(),
            Some("fix-login")
        );
        assert_eq!(m.task_for_branch("agent/a/../b"), None);
        assert_eq!(m.task_for_branch("agent/x-"), None);
        assert_eq!(
            m.task_for_branch(&format!("agent/{}", "a".repeat(64))),
            None
        );
    }

    #[test]
    fn labels_map_when_the_branch_does_not() {
        let m = mapping(Some("task-"));
        assert_eq!(
            m.task_for("feature", ["bug", "task-9"]).as_deref(),
            Some("9")
        );
        assert_eq!(
            m.task_for("task-1-x", ["task-9"]).as_deref(),
            Some("1"),
            "the branch wins"
        );
        assert_eq!(
            m.task_for("feature", ["task-", "task-ok"]).as_deref(),
            Some("ok")
        );
        assert_eq!(m.task_for("feature", ["bug"]), None);
    }

    #[test]
    fn allow_lists_match_names_and_owners_case_insensitively() {
        let a = AllowLists::new(
            &["acme/widgets".into(), "Tools/*".into()],
            &["agent[bot]".into()],
        );
        assert!(a.repository("Acme/Widgets"));
        assert!(a.repository("tools/anything"));
        assert!(!a.repository("acme/other"));
        assert!(!a.repository("toolsx/a"));
        assert!(a.sender(Some("Agent[bot]")));
        assert!(!a.sender(Some("someone")));
        assert!(!a.sender(None));
        assert!(AllowLists::new(&["a/b".into()], &[]).sender(None));
    }
}
