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

/// Byte offset of the key at `path` (`sni.route[1].server_names`, `uplink.addresses[0]`): the
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
