//! Server names: validation (RFC 1123 host names, as SNI carries) and the table that maps
//! exact names and `*.domain` wildcards to routes, case-insensitively.

use std::collections::HashMap;

/// A validated, lower-cased DNS host name (no trailing dot). In the configuration, a string
/// parsed when the file is read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct ServerName(String);

/// A name that is not one, as the configuration reports it: the text and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}`: {reason}")]
pub struct InvalidName {
    /// As written.
    pub text: String,
    /// What is wrong.
    pub reason: ServerNameError,
}

impl TryFrom<String> for ServerName {
    type Error = InvalidName;
    fn try_from(text: String) -> Result<Self, InvalidName> {
        if text.starts_with("*.") {
            return Err(InvalidName { text, reason: ServerNameError::Wildcard });
        }
        ServerName::parse(text.as_bytes()).map_err(|reason| InvalidName { text, reason })
    }
}

impl TryFrom<String> for Pattern {
    type Error = InvalidName;
    fn try_from(text: String) -> Result<Self, InvalidName> {
        Pattern::parse(&text).map_err(|reason| InvalidName { text, reason })
    }
}

/// Why a name is not a valid host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerNameError {
    /// Empty, or longer than 253 bytes.
    #[error("name length must be 1 to 253 bytes")]
    Length,
    /// A label is empty or longer than 63 bytes.
    #[error("each label must be 1 to 63 bytes")]
    Label,
    /// A byte other than letters, digits, `-` and `.`, or a label starting or ending with `-`.
    #[error("only letters, digits and inner hyphens are allowed")]
    Character,
    /// `*.domain` where one name is wanted.
    #[error("a host name, not a wildcard")]
    Wildcard,
}

impl ServerName {
    /// Validates `raw` (bytes as sent in the SNI extension or written in the config).
    pub fn parse(raw: &[u8]) -> Result<Self, ServerNameError> {
        let raw = raw.strip_suffix(b".").unwrap_or(raw);
        if raw.is_empty() || raw.len() > 253 {
            return Err(ServerNameError::Length);
        }
        for label in raw.split(|&b| b == b'.') {
            if label.is_empty() || label.len() > 63 {
                return Err(ServerNameError::Label);
            }
            let ok = label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                && label.first() != Some(&b'-')
                && label.last() != Some(&b'-');
            if !ok {
                return Err(ServerNameError::Character);
            }
        }
        Ok(ServerName(String::from_utf8_lossy(raw).to_ascii_lowercase()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A configured pattern: an exact name or `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Pattern {
    /// Matches this name only.
    Exact(ServerName),
    /// `*.suffix`: matches any name with one or more labels before `.suffix` (not `suffix` itself).
    Wildcard(ServerName),
}

impl Pattern {
    /// Parses `meet.example.org` or `*.example.org`.
    pub fn parse(s: &str) -> Result<Self, ServerNameError> {
        match s.strip_prefix("*.") {
            Some(suffix) => ServerName::parse(suffix.as_bytes()).map(Pattern::Wildcard),
            None => ServerName::parse(s.as_bytes()).map(Pattern::Exact),
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Exact(n) => write!(f, "{n}"),
            Pattern::Wildcard(n) => write!(f, "*.{n}"),
        }
    }
}

/// Maps names to a route index: an exact match wins, then the longest matching wildcard.
#[derive(Debug, Clone, Default)]
pub struct NameTable {
    exact: HashMap<ServerName, usize>,
    /// `.suffix` -> route, longest first.
    wildcards: Vec<(String, usize)>,
}

impl NameTable {
    /// The table of routes' patterns: route `i` gets every pattern of `routes[i]` (a pattern
    /// listed twice keeps its first route; validation refuses that).
    pub fn compile<'a>(routes: impl Iterator<Item = &'a [Pattern]>) -> Self {
        let mut table = NameTable::default();
        for (i, patterns) in routes.enumerate() {
            for p in patterns {
                table.insert(p.clone(), i);
            }
        }
        table
    }

    /// Adds `pattern` for route `route`; returns the route that already had it, if any.
    pub fn insert(&mut self, pattern: Pattern, route: usize) -> Option<usize> {
        match pattern {
            Pattern::Exact(n) => {
                if let Some(&other) = self.exact.get(&n) {
                    return Some(other);
                }
                self.exact.insert(n, route);
            }
            Pattern::Wildcard(n) => {
                let suffix = format!(".{n}");
                if let Some((_, other)) = self.wildcards.iter().find(|(s, _)| *s == suffix) {
                    return Some(*other);
                }
                self.wildcards.push((suffix, route));
                self.wildcards.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
            }
        }
        None
    }

    /// The route for `name`, if any pattern matches.
    pub fn lookup(&self, name: &ServerName) -> Option<usize> {
        self.exact
            .get(name)
            .copied()
            .or_else(|| self.wildcards.iter().find(|(s, _)| name.as_str().ends_with(s.as_str())).map(|(_, r)| *r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> ServerName {
        ServerName::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn validates_and_lowercases() {
        assert_eq!(n("Meet.Example.ORG.").as_str(), "meet.example.org");
        assert_eq!(ServerName::parse(b""), Err(ServerNameError::Length));
        assert_eq!(ServerName::parse(b"a..b"), Err(ServerNameError::Label));
        assert_eq!(ServerName::parse(b"-a.b"), Err(ServerNameError::Character));
        assert_eq!(ServerName::parse(b"a_b.c"), Err(ServerNameError::Character));
        assert_eq!(ServerName::parse(b"a b"), Err(ServerNameError::Character));
        assert_eq!(ServerName::parse("ex\u{e4}mple.org".as_bytes()), Err(ServerNameError::Character));
        assert_eq!(ServerName::parse(&[b'a'; 64]), Err(ServerNameError::Label));
        let long = vec!["abcdefghi"; 26].join(".");
        assert_eq!(ServerName::parse(long.as_bytes()), Err(ServerNameError::Length));
        assert!(Pattern::parse("*.*.example.org").is_err());
        assert!(Pattern::parse("meet.*.org").is_err());
    }

    #[test]
    fn exact_beats_wildcard_and_longest_wildcard_wins() {
        let mut t = NameTable::default();
        assert_eq!(t.insert(Pattern::parse("*.example.org").unwrap(), 0), None);
        assert_eq!(t.insert(Pattern::parse("*.turn.example.org").unwrap(), 1), None);
        assert_eq!(t.insert(Pattern::parse("meet.example.org").unwrap(), 2), None);
        assert_eq!(t.insert(Pattern::parse("MEET.example.org").unwrap(), 3), Some(2), "duplicates are reported");
        assert_eq!(t.lookup(&n("meet.example.org")), Some(2));
        assert_eq!(t.lookup(&n("a.turn.example.org")), Some(1));
        assert_eq!(t.lookup(&n("x.y.example.org")), Some(0));
        assert_eq!(t.lookup(&n("example.org")), None, "a wildcard does not match its own suffix");
        assert_eq!(t.lookup(&n("badexample.org")), None);
    }
}
