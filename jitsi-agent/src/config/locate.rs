//! Where in the file a key is, so that every configuration error reads `file:line:column`.

use std::{ops::Range, path::Path};

use toml_edit::{ImDocument, Item, Table, Value};

/// `file:line:column` for a byte offset into `text`, or just `file` without one.
pub(super) fn at(path: &Path, text: &str, offset: Option<usize>) -> String {
    match offset {
        Some(off) => {
            let before = &text[..off.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("{}:{line}:{column}", path.display())
        }
        None => path.display().to_string(),
    }
}

/// Byte offset of the key at `path` (`tls.route[1].server_names`, `uplink.addresses[0]`): the
/// element for an index, the key itself otherwise, or the nearest enclosing item found.
pub(super) fn key(text: &str, path: &str) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    let mut best: Option<Range<usize>> = None;
    let mut table: &Table = doc.as_table();
    for segment in path.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let Some(item) = table.get(name) else { break };
        best = table.key(name).and_then(|k| k.span()).or(item.span()).or(best);
        let next = match (item, index) {
            (Item::Table(t), None) => Some(t),
            (Item::ArrayOfTables(a), Some(i)) => a.get(i),
            (Item::Value(Value::Array(a)), Some(i)) => {
                best = a.get(i).and_then(Value::span).or(best);
                None
            }
            _ => None,
        };
        match next {
            Some(t) => {
                best = t.span().or(best);
                table = t;
            }
            None => break,
        }
    }
    best.map(|r| r.start)
}

/// The key at byte `offset`, or whose value holds it (`steer[0].protocol`, `acme.names[1]`),
/// for an error the parser reports there; `None` when no key or value holds it (a syntax
/// error, a missing key).
///
/// The parser reports an error in a list element at the list: `value`, the text the message
/// quotes, picks the element, and the offset returned is that element's.
pub(super) fn key_at(text: &str, offset: usize, value: Option<&str>) -> Option<(String, usize)> {
    let doc = ImDocument::parse(text).ok()?;
    let mut at = offset;
    let key = find(doc.as_table(), offset, value, &mut at)?;
    Some((key, at))
}

fn find(table: &Table, offset: usize, value: Option<&str>, at: &mut usize) -> Option<String> {
    let holds = |r: Option<Range<usize>>| r.is_some_and(|r| r.contains(&offset));
    for (name, item) in table.iter() {
        let key_holds = table.key(name).is_some_and(|k| holds(k.span()));
        match item {
            Item::Value(v) if key_holds || holds(v.span()) => {
                let element = match v {
                    Value::Array(a) => a
                        .iter()
                        .position(|e| holds(e.span()))
                        .or_else(|| a.iter().position(|e| value.is_some() && e.as_str() == value))
                        .map(|i| (i, a.get(i).and_then(Value::span))),
                    _ => None,
                };
                return Some(match element {
                    Some((i, span)) => {
                        *at = span.map_or(*at, |r| r.start);
                        format!("{name}[{i}]")
                    }
                    None => name.to_owned(),
                });
            }
            // A table's own span is its header: an error there (a missing key) names the table.
            Item::Table(t) => {
                if let Some(rest) = find(t, offset, value, at) {
                    return Some(format!("{name}.{rest}"));
                }
                if holds(t.span()) {
                    return Some(name.to_owned());
                }
            }
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    if let Some(rest) = find(t, offset, value, at) {
                        return Some(format!("{name}[{i}].{rest}"));
                    }
                    if holds(t.span()) {
                        return Some(format!("{name}[{i}]"));
                    }
                }
            }
            _ => {}
        }
    }
    None
}
