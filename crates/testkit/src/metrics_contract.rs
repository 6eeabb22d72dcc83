//! The metric contract between the binaries and what operators watch: every
//! metric the shipped alert rules (`deploy/monitoring/rules.yaml`) and the
//! Grafana dashboard (`deploy/monitoring/dashboards/*.json`) name must be in
//! the `/metrics` output of each binary that [`owners`] says exports it, so
//! that a renamed metric breaks CI instead of silently disabling an alert.
//!
//! The rule it keeps: names are taken from the PromQL itself (identifiers
//! that are not functions, keywords, label names, durations or strings),
//! never from a list kept beside it, and a name no binary owns is an error,
//! not a skip. Each binary's tests scrape the running binary and call
//! [`unexported`] with its exposition.
//!
//! ```
//! use testkit::metrics_contract::{exposed_samples, metric_names};
//!
//! let names = metric_names(
//!     r#"histogram_quantile(0.99, sum by (le) (rate(lease_lock_wait_duration_seconds_bucket{outcome="acquired"}[5m]))) > 5"#,
//! );
//! assert_eq!(names.into_iter().collect::<Vec<_>>(), ["lease_lock_wait_duration_seconds_bucket"]);
//!
//! let exposition = "# TYPE lease_lock_wait_duration_seconds histogram\n";
//! assert!(exposed_samples(exposition).contains("lease_lock_wait_duration_seconds_bucket"));
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Which binaries export the metrics of each name prefix; the longest
/// matching prefix decides. The coordinator (its circuit breakers included)
/// runs in both the sensor and the controller; lease-lock metrics and
/// recovery only in the controller.
pub const OWNERS: &[(&str, &[&str])] = &[
    ("sensor_", &["sensor"]),
    ("cancel_coordinator_", &["sensor", "controller"]),
    ("state_store_", &["sensor", "controller"]),
    ("lease_lock_", &["controller"]),
    ("recovery_", &["controller"]),
    ("supersede_", &["controller"]),
    ("agent_runner_", &["agent-runner"]),
    ("inference_worker_", &["inference-worker"]),
    ("job_tracker_", &["inference-worker"]),
    ("gateway_", &["gateway"]),
];

/// Where a shipped file names a metric.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MetricReference {
    /// The sample name (`cancel_coordinator_cancellations_total`).
    pub metric: String,
    /// The file, relative to the repository root.
    pub file: String,
    /// The alert or the panel that names it.
    pub context: String,
}

/// A shipped file that cannot be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The dashboard is not JSON.
    #[error("{path} is not JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A rules file uses a form of `expr:` this reader does not take.
    #[error("{path}:{line}: expr must be a plain scalar or a `|` block")]
    ExprForm {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
    },
}

/// The binaries exporting `metric`, by [`OWNERS`]; empty when none does.
pub fn owners(metric: &str) -> &'static [&'static str] {
    OWNERS
        .iter()
        .filter(|(prefix, _)| metric.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map_or(&[], |(_, binaries)| binaries)
}

/// The metric names a PromQL expression selects.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = strip_enclosed(expr).chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let after = chars[i..].iter().find(|c| !c.is_whitespace());
            let preceded_by_digit = start > 0 && chars[start - 1].is_ascii_digit();
            if after != Some(&'(') && !preceded_by_digit && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The sample names an exposition (Prometheus text or OpenMetrics) can
/// contain: from each `# TYPE` line (`_total` for counters, `_bucket`,
/// `_sum`, `_count` for histograms, `_info` for info) and every sample line.
pub fn exposed_samples(exposition: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            for suffix in suffixes {
                out.insert(format!("{name}{suffix}"));
            }
        } else if !line.starts_with('#')
            && let Some(name) = line.split(['{', ' ']).next()
            && !name.is_empty()
        {
            out.insert(name.to_owned());
        }
    }
    out
}

/// Every metric the shipped rules and dashboards name, with where.
pub fn shipped_references() -> Result<Vec<MetricReference>, ContractError> {
    let mut out = Vec::new();
    let rules = "deploy/monitoring/rules.yaml";
    for (context, expr) in rule_exprs(&repo_file(rules))? {
        for metric in metric_names(&expr) {
            out.push(MetricReference {
                metric,
                file: rules.to_owned(),
                context: context.clone(),
            });
        }
    }
    let dashboards = repo_file("deploy/monitoring/dashboards");
    let entries = std::fs::read_dir(&dashboards).map_err(|source| ContractError::Read {
        path: dashboards.clone(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for path in files {
        let file = format!(
            "deploy/monitoring/dashboards/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        for (context, expr) in dashboard_exprs(&path)? {
            for metric in metric_names(&expr) {
                out.push(MetricReference {
                    metric,
                    file: file.clone(),
                    context: context.clone(),
                });
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The shipped references to metrics `binary` owns (by [`owners`]) that
/// its `exposition` lacks: empty when the contract holds.
pub fn unexported(binary: &str, exposition: &str) -> Result<Vec<MetricReference>, ContractError> {
    let exposed = exposed_samples(exposition);
    Ok(shipped_references()?
        .into_iter()
        .filter(|r| owners(&r.metric).contains(&binary) && !exposed.contains(&r.metric))
        .collect())
}

/// The contract for `binary` on its `/metrics` text: `Ok` with how many
/// shipped references name its metrics when none is missing; `Err` naming
/// each missing one, or saying that `deploy/` expects fewer than `at_least`
/// of its metrics (so that an ownership table that lost the binary cannot
/// pass by checking nothing).
pub fn check_exported(binary: &str, exposition: &str, at_least: usize) -> Result<usize, String> {
    let references = shipped_references().map_err(|e| e.to_string())?;
    let expected = references
        .iter()
        .filter(|r| owners(&r.metric).contains(&binary))
        .count();
    if expected < at_least {
        return Err(format!(
            "deploy/ expects only {expected} references to {binary}'s metrics, fewer than {at_least}"
        ));
    }
    let missing = unexported(binary, exposition).map_err(|e| e.to_string())?;
    if missing.is_empty() {
        return Ok(expected);
    }
    let lines: Vec<String> = missing
        .iter()
        .map(|r| format!("  {} ({}: {})", r.metric, r.file, r.context))
        .collect();
    Err(format!(
        "named in deploy/ but not exported by {binary}:\n{}",
        lines.join("\n")
    ))
}

/// A path relative to the repository root.
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// Runs `promtool check rules` on the repository file `path` and panics
/// with promtool's output if it rejects the rules; when promtool is not on
/// `PATH` it says so and returns (CI installs it). For tests.
///
/// # Panics
///
/// If promtool rejects the file or cannot be started.
#[allow(clippy::panic)]
pub fn assert_promtool_accepts(path: &str) {
    let rules = repo_file(path);
    let output = match std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "promtool is not on PATH: skipping `promtool check rules` (CI installs Debian's prometheus package)"
            );
            return;
        }
        Err(error) => panic!("cannot run promtool: {error}"),
    };
    assert!(
        output.status.success(),
        "promtool rejected {}:\n{}{}",
        rules.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// ----- helpers ---------------------------------------------------------------

/// PromQL's keywords and the aggregation modifiers that look like names.
const KEYWORDS: [&str; 12] = [
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
];

/// `expr` without what cannot hold a metric name: label matchers `{…}`,
/// ranges `[…]`, string literals, and the label lists of `by`, `without`,
/// `on`, `ignoring`, `group_left` and `group_right`.
fn strip_enclosed(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut close: Option<char> = None;
    for c in expr.chars() {
        match close {
            Some(end) if c == end => close = None,
            Some(_) => {}
            None => match c {
                '{' => close = Some('}'),
                '[' => close = Some(']'),
                '"' | '\'' | '`' => close = Some(c),
                _ => out.push(c),
            },
        }
    }
    // Label lists: `by (a, b)` and friends keep a `(` after a keyword.
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = find_modifier(rest) {
        result.push_str(&rest[..at.keyword_start]);
        let tail = &rest[at.list_start..];
        rest = tail.find(')').map_or("", |end| &tail[end + 1..]);
    }
    result.push_str(rest);
    result
}

/// Where a modifier's keyword starts and where its label list opens.
struct Modifier {
    keyword_start: usize,
    list_start: usize,
}

fn find_modifier(text: &str) -> Option<Modifier> {
    let mut best: Option<Modifier> = None;
    for keyword in [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ] {
        let mut from = 0;
        while let Some(pos) = text[from..].find(keyword) {
            let start = from + pos;
            let end = start + keyword.len();
            let before_ok = start == 0
                || !text[..start]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            let after = text[end..].trim_start();
            if before_ok && after.starts_with('(') {
                let paren = end + (text[end..].len() - after.len());
                if best.as_ref().is_none_or(|b| start < b.keyword_start) {
                    best = Some(Modifier {
                        keyword_start: start,
                        list_start: paren,
                    });
                }
                break;
            }
            from = end;
        }
    }
    best
}

/// `(alert or record name, expr)` of each rule in a rules file: plain
/// scalars and `|` blocks, the forms our rule files use.
fn rule_exprs(path: &Path) -> Result<Vec<(String, String)>, ContractError> {
    let text = read(path)?;
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut name = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start().trim_start_matches("- ");
        if let Some(n) = trimmed
            .strip_prefix("alert: ")
            .or_else(|| trimmed.strip_prefix("record: "))
        {
            name = n.trim().to_owned();
        }
        if let Some(value) = trimmed.strip_prefix("expr:") {
            let value = value.trim();
            let indent = line.len() - line.trim_start().len();
            if value == "|" || value == "|-" {
                let mut block = Vec::new();
                while i + 1 < lines.len()
                    && (lines[i + 1].trim().is_empty()
                        || lines[i + 1].len() - lines[i + 1].trim_start().len() > indent)
                {
                    i += 1;
                    block.push(lines[i].trim());
                }
                out.push((name.clone(), block.join("\n")));
            } else if value.is_empty() || value.starts_with(['>', '"', '\'']) {
                return Err(ContractError::ExprForm {
                    path: path.to_owned(),
                    line: i + 1,
                });
            } else {
                out.push((name.clone(), value.to_owned()));
            }
        }
        i += 1;
    }
    Ok(out)
}

/// `(panel title, expr)` of every target of every panel, rows' panels
/// included.
fn dashboard_exprs(path: &Path) -> Result<Vec<(String, String)>, ContractError> {
    let text = read(path)?;
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ContractError::Json {
            path: path.to_owned(),
            source,
        })?;
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    while let Some(panel) = stack.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            stack.extend(inner);
        }
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.to_owned(), expr.to_owned()));
            }
        }
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String, ContractError> {
    std::fs::read_to_string(path).map_err(|source| ContractError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn functions_keywords_label_lists_matchers_ranges_and_numbers_are_not_metrics() {
        assert_eq!(
            names(
                r#"sum by (namespace) (increase(a_total{outcome="failed"}[15m])) / sum by (namespace) (increase(b_total[15m] offset 1h)) > 0.1 and c >= 3e2"#
            ),
            ["a_total", "b_total", "c"]
        );
        assert_eq!(
            names("(sum(increase(x_total[90s])) or vector(0)) == 0"),
            ["x_total"]
        );
        assert_eq!(
            names("max by (namespace, pod, name) (g) > 0 unless on (pod) group_left (x) h"),
            ["g", "h"]
        );
    }

    #[test]
    fn a_metric_is_owned_by_the_binaries_of_its_prefix() {
        assert_eq!(
            owners("cancel_coordinator_circuit_breaker_state"),
            ["sensor", "controller"]
        );
        assert_eq!(
            owners("cancel_coordinator_queue_depth"),
            ["sensor", "controller"]
        );
        assert!(owners("cancel_cordinator_queue_depth").is_empty());
    }

    #[test]
    fn typed_families_expose_their_sample_names() {
        let text = "# HELP a_b Things.\n# TYPE a_b counter\n# TYPE h_seconds histogram\n# TYPE g gauge\ng 1\n# EOF\n";
        let samples = exposed_samples(text);
        for name in [
            "a_b_total",
            "h_seconds_bucket",
            "h_seconds_sum",
            "h_seconds_count",
            "g",
        ] {
            assert!(samples.contains(name), "{name} in {samples:?}");
        }
        assert!(!samples.contains("a_b"), "a counter's samples end _total");
    }
}
