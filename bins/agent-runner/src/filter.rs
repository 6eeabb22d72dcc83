//! What counts as an incident worth an agent: parsing, severity and
//! duplicates.
//!
//! Rule kept here: every event gets exactly one verdict — accepted, or
//! filtered for one reason (`malformed`, `severity_low`, `duplicate`) — so
//! `events_received_total` equals the sum of what was filtered, dropped and
//! queued.
//!
//! An incident is the JSON object in an event's `data:`, with at least a
//! non-empty `id` (string or number, at most 256 bytes) and a `severity`
//! (`info`, `warning`, `error`, `critical`, any case; `warn` is read as
//! `warning`). An unknown severity makes the event **malformed**: treating
//! it as the lowest would silently drop what may be someone's highest
//! level, and treating it as the highest would let a typo page an agent;
//! counted and logged as malformed, it is visible and fixable at the source.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Longest incident id accepted (ids go into logs, env vars and the API).
pub const MAX_INCIDENT_ID_BYTES: usize = 256;

/// Incident severity, ordered `Info < Warning < Error < Critical`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational.
    Info,
    /// Something may need attention.
    Warning,
    /// Something is broken.
    Error,
    /// Something important is down.
    Critical,
}

impl Severity {
    /// Every level, lowest first.
    pub const ALL: [Severity; 4] = [
        Severity::Info,
        Severity::Warning,
        Severity::Error,
        Severity::Critical,
    ];

    /// The level's name, as used in labels, env vars and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }

    /// Parses a level, ignoring case; `warn` is accepted for `warning`.
    pub fn parse(value: &str) -> Option<Severity> {
        match value.trim().to_ascii_lowercase().as_str() {
            "info" => Some(Severity::Info),
            "warning" | "warn" => Some(Severity::Warning),
            "error" => Some(Severity::Error),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }

    /// Queue priority: more severe incidents are served first.
    pub fn priority(self) -> u32 {
        match self {
            Severity::Info => 0,
            Severity::Warning => 1,
            Severity::Error => 2,
            Severity::Critical => 3,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// The stream (cluster) it came from.
    pub cluster: Arc<str>,
    /// Its `id`.
    pub id: String,
    /// Its `severity`.
    pub severity: Severity,
    /// The SSE event id it arrived with, if any.
    pub event_id: Option<String>,
    /// The event's `data:` exactly as received, handed to the agent on stdin.
    pub raw: String,
}

/// Why an event was not turned into an incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// What is wrong with it.
    pub reason: String,
    /// Its severity label for `events_received_total` (`unknown` unless a
    /// known severity was readable).
    pub severity_label: &'static str,
}

/// Reads an incident from an event's `data:`.
pub fn parse_incident(
    cluster: &Arc<str>,
    data: &str,
    event_id: Option<&str>,
) -> Result<Incident, Malformed> {
    let malformed = |reason: String, severity: Option<Severity>| Malformed {
        reason,
        severity_label: severity.map_or(UNKNOWN_SEVERITY, Severity::as_str),
    };
    let mut object = match serde_json::from_str(data) {
        Ok(serde_json::Value::Object(object)) => object,
        Ok(_) => return Err(malformed("not a JSON object".into(), None)),
        Err(e) => return Err(malformed(format!("not a JSON object: {e}"), None)),
    };
    let raw_severity = object.remove("severity");
    let severity = match &raw_severity {
        Some(serde_json::Value::String(s)) => Severity::parse(s),
        _ => None,
    };
    let id = match object.remove("id") {
        Some(serde_json::Value::String(id)) => id,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(_) => return Err(malformed("id is not a string".into(), severity)),
        None => return Err(malformed("no id".into(), severity)),
    };
    if id.trim().is_empty() {
        return Err(malformed("empty id".into(), severity));
    }
    if id.len() > MAX_INCIDENT_ID_BYTES {
        return Err(malformed(
            format!("id longer than {MAX_INCIDENT_ID_BYTES} bytes"),
            severity,
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(malformed("id contains control characters".into(), severity));
    }
    let severity = match (severity, &raw_severity) {
        (Some(severity), _) => severity,
        (None, None) => return Err(malformed("no severity".into(), None)),
        (None, Some(other)) => {
            return Err(malformed(format!("unknown severity {other}"), None));
        }
    };
    Ok(Incident {
        cluster: Arc::clone(cluster),
        id,
        severity,
        event_id: event_id.map(str::to_owned),
        raw: data.to_owned(),
    })
}

/// The `severity` label of events whose severity could not be read.
pub const UNKNOWN_SEVERITY: &str = "unknown";

/// Remembers incident ids for a window, bounded in entries.
///
/// An id is a duplicate if it was [`record`](Self::record)ed less than
/// `window` ago. Entries expire by age; when full, the oldest is forgotten
/// first (so a flood of new ids can make an old duplicate slip through, but
/// never grows memory).
#[derive(Debug)]
pub struct DuplicateWindow {
    window: Duration,
    capacity: usize,
    seen: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl DuplicateWindow {
    /// An empty window (`capacity` is raised to 1).
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether `id` was recorded within the window.
    pub fn contains(&mut self, id: &str) -> bool {
        self.expire(Instant::now());
        self.seen.contains_key(id)
    }

    /// Remembers `id` from now on (the window runs from the first record).
    pub fn record(&mut self, id: &str) {
        let now = Instant::now();
        self.expire(now);
        if self.seen.contains_key(id) {
            return;
        }
        while self.seen.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_front() else {
                break;
            };
            self.seen.remove(&oldest);
        }
        self.seen.insert(id.to_owned(), now);
        self.order.push_back((now, id.to_owned()));
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.seen.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Arc<str> {
        Arc::from("prod")
    }

    #[test]
    fn severities_are_ordered_and_parsed_in_any_case() {
        assert!(Severity::Info < Severity::Warning);
        assert!(Severity::Warning < Severity::Error);
        assert!(Severity::Error < Severity::Critical);
        assert_eq!(Severity::parse("CRITICAL"), Some(Severity::Critical));
        assert_eq!(Severity::parse("warn"), Some(Severity::Warning));
        assert_eq!(Severity::parse("sev1"), None);
    }

    #[test]
    fn a_valid_incident_keeps_its_raw_json() {
        let data = r#"{"id":"inc-1","severity":"Error","service":"db"}"#;
        let incident = parse_incident(&cluster(), data, Some("42")).unwrap();
        assert_eq!(incident.id, "inc-1");
        assert_eq!(incident.severity, Severity::Error);
        assert_eq!(incident.event_id.as_deref(), Some("42"));
        assert_eq!(incident.raw, data);
        let numeric = parse_incident(&cluster(), r#"{"id":7,"severity":"info"}"#, None).unwrap();
        assert_eq!(numeric.id, "7");
    }

    #[test]
    fn malformed_events_say_why_and_keep_a_known_severity_label() {
        let cases = [
            ("not json", "not a JSON object", "unknown"),
            ("[1,2]", "not a JSON object", "unknown"),
            (r#"{"severity":"error"}"#, "no id", "error"),
            (r#"{"id":"","severity":"error"}"#, "empty id", "error"),
            (
                r#"{"id":{},"severity":"info"}"#,
                "id is not a string",
                "info",
            ),
            (r#"{"id":"a"}"#, "no severity", "unknown"),
            (
                r#"{"id":"a","severity":"sev1"}"#,
                "unknown severity",
                "unknown",
            ),
            (r#"{"id":"a","severity":3}"#, "unknown severity", "unknown"),
        ];
        for (data, reason, label) in cases {
            let err = parse_incident(&cluster(), data, None).unwrap_err();
            assert!(err.reason.contains(reason), "{data}: {}", err.reason);
            assert_eq!(err.severity_label, label, "{data}");
        }
        let long = format!(r#"{{"id":"{}","severity":"info"}}"#, "x".repeat(257));
        assert!(parse_incident(&cluster(), &long, None).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_are_remembered_for_the_window_only() {
        let mut window = DuplicateWindow::new(Duration::from_secs(300), 100);
        assert!(!window.contains("inc-1"));
        window.record("inc-1");
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(window.contains("inc-1"));
        window.record("inc-1"); // does not extend the window
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!window.contains("inc-1"));
        assert!(window.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_window_forgets_the_oldest_id_first() {
        let mut window = DuplicateWindow::new(Duration::from_secs(300), 2);
        window.record("a");
        window.record("b");
        window.record("c");
        assert_eq!(window.len(), 2);
        assert!(!window.contains("a"));
        assert!(window.contains("b"));
        assert!(window.contains("c"));
    }
}
