//! Label and field selectors, parsed and matched as the API server does.
//!
//! Label selectors support every operator of the Kubernetes grammar: `=`,
//! `==`, `!=`, `in (…)`, `notin (…)`, `key` (exists), `!key` (does not
//! exist), and `>`/`<` on integer values. Field selectors support `=`, `==`
//! and `!=` on `metadata.name`, `metadata.namespace` and the fields a type
//! declares selectable. The rule it keeps: **negative requirements (`!=`,
//! `notin`) match objects that lack the key**, as in Kubernetes.

use serde_json::Value;

use super::resource::ResourceType;

/// A parsed label selector: all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    DoesNotExist(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

impl LabelSelector {
    /// Parses a selector; the error says what is wrong, for a 400 response.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lexer = Lexer::new(text);
        let mut requirements = Vec::new();
        loop {
            match lexer.next()? {
                Token::End if requirements.is_empty() => break,
                Token::Not => {
                    let key = lexer.key()?;
                    requirements.push(Requirement::DoesNotExist(key));
                }
                Token::Ident(key) => {
                    validate_key(&key)?;
                    requirements.push(requirement(&mut lexer, key)?);
                }
                other => {
                    return Err(format!(
                        "found '{other}', expected: !, identifier, or 'end of string'"
                    ));
                }
            }
            match lexer.next()? {
                Token::End => break,
                Token::Comma => continue,
                other => return Err(format!("found '{other}', expected: ',' or 'end of string'")),
            }
        }
        Ok(Self { requirements })
    }

    /// Whether an object with these labels is selected.
    #[cfg(test)]
    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Whether an object whose label `k` is `label(k)` is selected: the
    /// same rule as [`LabelSelector::matches`], reading the labels where
    /// they are (a LIST matches thousands of stored objects; copying each
    /// one's labels first was most of its cost).
    pub fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        let int = |k: &str| label(k).and_then(|v| v.parse::<i64>().ok());
        self.requirements.iter().all(|r| match r {
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
            Requirement::GreaterThan(k, n) => int(k).is_some_and(|l| l > *n),
            Requirement::LessThan(k, n) => int(k).is_some_and(|l| l < *n),
        })
    }

    /// A requirement every selected object meets by carrying label `key`
    /// with one of `values` (`key=value`, `key in (…)`), the one with the
    /// fewest values: what an index by label can answer. `None` when the
    /// selector has no such requirement (only `!=`, `notin`, existence or
    /// comparisons, or nothing).
    pub fn required_values(&self) -> Option<(&str, Vec<&str>)> {
        self.requirements
            .iter()
            .filter_map(|r| match r {
                Requirement::Equals(k, v) => Some((k.as_str(), vec![v.as_str()])),
                Requirement::In(k, vs) => {
                    Some((k.as_str(), vs.iter().map(String::as_str).collect()))
                }
                _ => None,
            })
            .min_by_key(|(_, values)| values.len())
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

/// A parsed field selector: all terms must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector {
    terms: Vec<(String, bool, String)>, // (field path, equal?, value)
}

impl FieldSelector {
    /// Parses a selector for objects of type `t`; unknown fields are an error
    /// (as on the API server, which only indexes declared fields).
    pub fn parse(text: &str, t: &ResourceType) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in split_unescaped(text, ',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                ));
            };
            let field = field.trim();
            let known = field == "metadata.name"
                || field == "metadata.namespace"
                || t.selectable_fields.iter().any(|f| f == field);
            if !known {
                return Err(format!(
                    "field label not supported: {field} (\"{field}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"{})",
                    t.selectable_fields
                        .iter()
                        .map(|f| format!(", \"{f}\""))
                        .collect::<String>()
                ));
            }
            terms.push((field.to_owned(), equal, unescape(value.trim())));
        }
        Ok(Self { terms })
    }

    /// A selector for exactly one name (legacy `watch/…/name` paths).
    pub fn name(name: &str) -> Self {
        Self {
            terms: vec![("metadata.name".to_owned(), true, name.to_owned())],
        }
    }

    /// The same selector with every field renamed by `rename` (the API
    /// server's field label conversion between versions).
    pub fn renamed(mut self, rename: impl Fn(&str) -> String) -> Self {
        for (field, _, _) in &mut self.terms {
            *field = rename(field);
        }
        self
    }

    /// Whether `object` is selected.
    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|(field, equal, value)| {
            let actual = field_value(object, field);
            (actual == *value) == *equal
        })
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The one name an object must have to be selected (a
    /// `metadata.name=` term), if the selector requires one.
    pub fn required_name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|(field, equal, _)| *equal && field == "metadata.name")
            .map(|(_, _, value)| value.as_str())
    }
}

/// The string form of a dotted field path (missing fields read as `""`).
fn field_value(object: &Value, path: &str) -> String {
    if path == "source"
        && let Some(source) = object.get("source").filter(|s| s.is_object())
    {
        // An Event's `source` selects on its component, else the reporting
        // component (as the API server's event fields do).
        let component = field_value(source, "component");
        return if component.is_empty() {
            field_value(object, "reportingComponent")
        } else {
            component
        };
    }
    let mut v = object;
    for part in path.split('.') {
        match v.get(part) {
            Some(next) => v = next,
            None => return String::new(),
        }
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn requirement(lexer: &mut Lexer<'_>, key: String) -> Result<Requirement, String> {
    match lexer.peek()? {
        Token::End | Token::Comma => Ok(Requirement::Exists(key)),
        Token::Eq | Token::DoubleEq => {
            lexer.next()?;
            Ok(Requirement::Equals(key, lexer.value()?))
        }
        Token::NotEq => {
            lexer.next()?;
            Ok(Requirement::NotEquals(key, lexer.value()?))
        }
        Token::Gt | Token::Lt => {
            let gt = lexer.next()? == Token::Gt;
            let v = lexer.value()?;
            let n: i64 = v.parse().map_err(|_| {
                format!("for 'Gt', 'Lt' operators, the value must be an integer: {v}")
            })?;
            Ok(if gt {
                Requirement::GreaterThan(key, n)
            } else {
                Requirement::LessThan(key, n)
            })
        }
        Token::Ident(op) if op == "in" || op == "notin" => {
            lexer.next()?;
            let values = lexer.set()?;
            Ok(if op == "in" {
                Requirement::In(key, values)
            } else {
                Requirement::NotIn(key, values)
            })
        }
        other => Err(format!(
            "found '{other}', expected: in, notin, =, ==, !=, gt, lt"
        )),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Eq,
    DoubleEq,
    NotEq,
    Not,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
    End,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Token::Ident(s) => s.as_str(),
            Token::Eq => "=",
            Token::DoubleEq => "==",
            Token::NotEq => "!=",
            Token::Not => "!",
            Token::Gt => ">",
            Token::Lt => "<",
            Token::Open => "(",
            Token::Close => ")",
            Token::Comma => ",",
            Token::End => "end of string",
        };
        f.write_str(s)
    }
}

struct Lexer<'a> {
    rest: &'a str,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Self {
        Self { rest: text }
    }

    fn peek(&mut self) -> Result<Token, String> {
        let saved = self.rest;
        let t = self.next();
        self.rest = saved;
        t
    }

    fn next(&mut self) -> Result<Token, String> {
        self.rest = self.rest.trim_start();
        let mut chars = self.rest.chars();
        let Some(c) = chars.next() else {
            return Ok(Token::End);
        };
        let two = self.rest.get(..2);
        let (token, len) = match (c, two) {
            (_, Some("==")) => (Token::DoubleEq, 2),
            (_, Some("!=")) => (Token::NotEq, 2),
            ('=', _) => (Token::Eq, 1),
            ('!', _) => (Token::Not, 1),
            ('>', _) => (Token::Gt, 1),
            ('<', _) => (Token::Lt, 1),
            ('(', _) => (Token::Open, 1),
            (')', _) => (Token::Close, 1),
            (',', _) => (Token::Comma, 1),
            _ => {
                let len = self
                    .rest
                    .find(|c: char| c.is_whitespace() || "=!<>(),".contains(c))
                    .unwrap_or(self.rest.len());
                (Token::Ident(self.rest[..len].to_owned()), len)
            }
        };
        self.rest = &self.rest[len..];
        Ok(token)
    }

    fn key(&mut self) -> Result<String, String> {
        match self.next()? {
            Token::Ident(k) => {
                validate_key(&k)?;
                Ok(k)
            }
            other => Err(format!("found '{other}', expected: identifier")),
        }
    }

    /// A value after `=`/`!=`; an empty value is allowed (`key=`).
    fn value(&mut self) -> Result<String, String> {
        match self.peek()? {
            Token::Ident(v) => {
                self.next()?;
                validate_value(&v)?;
                Ok(v)
            }
            Token::End | Token::Comma => Ok(String::new()),
            other => Err(format!("found '{other}', expected: identifier")),
        }
    }

    /// `( v1, v2, … )`.
    fn set(&mut self) -> Result<Vec<String>, String> {
        if self.next()? != Token::Open {
            return Err("found no '(', expected: '('".to_owned());
        }
        let mut values = Vec::new();
        loop {
            match self.next()? {
                Token::Ident(v) => {
                    validate_value(&v)?;
                    values.push(v);
                    match self.next()? {
                        Token::Comma => continue,
                        Token::Close => break,
                        other => return Err(format!("found '{other}', expected: ',' or ')'")),
                    }
                }
                Token::Close if values.is_empty() => {
                    return Err("for 'in', 'notin' operators, values set can't be empty".to_owned());
                }
                other => return Err(format!("found '{other}', expected: identifier")),
            }
        }
        Ok(values)
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at
/// most 63 characters.
fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "invalid label key \"{key}\": prefix part must be a DNS subdomain"
            ));
        }
    }
    if name.is_empty() || !is_label_name(name) {
        return Err(format!(
            "invalid label key \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value: \"{value}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

fn is_label_name(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Splits on `sep` not preceded by a backslash (field selector escaping).
fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            if let Some(last) = parts.last_mut() {
                last.push('\\');
                last.push(c);
            }
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(String::new());
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut escaped = false;
    for c in value.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap()
    }

    #[test]
    fn every_label_operator_matches_like_kubernetes() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        assert!(sel("app=web").matches(&l));
        assert!(sel("app==web").matches(&l));
        assert!(!sel("app!=web").matches(&l));
        assert!(sel("missing!=x").matches(&l), "!= matches a missing key");
        assert!(sel("app in (api, web)").matches(&l));
        assert!(!sel("app notin (api,web)").matches(&l));
        assert!(
            sel("missing notin (a)").matches(&l),
            "notin matches a missing key"
        );
        assert!(!sel("missing in (a)").matches(&l));
        assert!(sel("tier").matches(&l));
        assert!(sel("!missing").matches(&l));
        assert!(!sel("!app").matches(&l));
        assert!(sel("n>4,n<6").matches(&l));
        assert!(!sel("n>5").matches(&l));
        assert!(sel("app=web, tier in (front),!x").matches(&l));
        assert!(!sel("app=web,tier=back").matches(&l));
        assert!(sel("").matches(&l));
        assert!(sel("example.com/role=lead").matches(&labels(&[("example.com/role", "lead")])));
        assert!(sel("empty=").matches(&labels(&[("empty", "")])));
    }

    #[test]
    fn the_indexable_requirement_is_the_equality_or_set_with_fewest_values() {
        assert_eq!(sel("app=web").required_values(), Some(("app", vec!["web"])));
        assert_eq!(
            sel("tier in (a,b),app==web").required_values(),
            Some(("app", vec!["web"]))
        );
        assert_eq!(
            sel("tier in (a,b),!x").required_values(),
            Some(("tier", vec!["a", "b"]))
        );
        // Negative, existence and comparison requirements also select
        // objects without the label: no index can answer them.
        for text in ["", "app!=web", "app notin (a)", "app", "!app", "n>1"] {
            assert_eq!(sel(text).required_values(), None, "{text}");
        }
    }

    #[test]
    fn malformed_label_selectors_are_rejected() {
        for bad in [
            "=x",
            "app in ()",
            "app in (a",
            "app=web,,",
            "a b",
            "-bad=x",
            "n>x",
            "app=we b",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn field_selectors_match_name_namespace_and_declared_fields() {
        let mut t = ResourceType::new("", "v1", "pods", "Pod", true);
        t.selectable_fields = vec!["status.phase".to_owned()];
        let pod =
            json!({"metadata": {"name": "p1", "namespace": "ns"}, "status": {"phase": "Running"}});
        assert!(
            FieldSelector::parse("metadata.name=p1", &t)
                .unwrap()
                .matches(&pod)
        );
        assert!(
            FieldSelector::parse("metadata.namespace==ns,status.phase!=Failed", &t)
                .unwrap()
                .matches(&pod)
        );
        assert!(
            !FieldSelector::parse("metadata.name!=p1", &t)
                .unwrap()
                .matches(&pod)
        );
        assert!(FieldSelector::parse("spec.nodeName=n", &t).is_err());
    }
}
