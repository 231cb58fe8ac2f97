//! `cargo xtask modules`: the agent library's module graph, read from its `use crate::` and
//! `use super::` paths, and the rules it keeps (checked by `cargo xtask test`): no cycle among
//! the top-level modules; the splitter core depends on neither front; the two fronts (`tls`,
//! `http`) do not depend on each other; the leaves (`names`, `layout`, `error`, `safe_fs`)
//! depend on nothing in the crate.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// Module -> the modules it uses, at `depth` path segments (1: `splitter`, 2: `splitter::relay`).
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Modules that must not depend on any module of the crate.
const LEAVES: [&str; 4] = ["names", "layout", "error", "safe_fs"];

/// (module, modules it must not use).
const FORBIDDEN: [(&str, &[&str]); 3] =
    [("splitter", &["tls", "http", "run"]), ("tls", &["http", "run"]), ("http", &["tls", "run"])];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `src/a/b.rs` and `src/a/b/mod.rs` -> `a::b`; `lib.rs`, `main.rs` -> `lib`, `main`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The paths of a use-tree starting at `text[i..]` (after `crate::` or `super::`), each with
/// `prefix` in front; returns where the tree ends.
fn use_tree(text: &[u8], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    loop {
        while i < text.len() && text[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= text.len() {
            return i;
        }
        if text[i] == b'{' {
            i += 1;
            loop {
                while i < text.len() && (text[i].is_ascii_whitespace() || text[i] == b',') {
                    i += 1;
                }
                if i >= text.len() {
                    return i;
                }
                if text[i] == b'}' {
                    return i + 1;
                }
                let next = use_tree(text, i, &path, out);
                if next == i {
                    return i;
                }
                i = next;
            }
        }
        let start = i;
        while i < text.len() && (text[i].is_ascii_alphanumeric() || text[i] == b'_') {
            i += 1;
        }
        if start == i {
            out.push(path);
            return if i < text.len() && text[i] == b'*' { i + 1 } else { i };
        }
        path.push(String::from_utf8_lossy(&text[start..i]).into_owned());
        if text[i..].starts_with(b"::") {
            i += 2;
            continue;
        }
        out.push(path);
        // `x as y`: the alias is no path.
        let rest = &text[i..];
        let trimmed = rest.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(rest.len());
        if rest[trimmed..].starts_with(b"as") && rest.get(trimmed + 2).is_some_and(u8::is_ascii_whitespace) {
            i += trimmed + 2;
            while i < text.len() && text[i].is_ascii_whitespace() {
                i += 1;
            }
            while i < text.len() && (text[i].is_ascii_alphanumeric() || text[i] == b'_') {
                i += 1;
            }
        }
        return i;
    }
}

/// The crate's module graph at `depth`.
pub fn graph(src: &Path, depth: usize) -> Result<Graph> {
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    let key = |m: &str| m.split("::").take(depth).collect::<Vec<_>>().join("::");
    let modules: BTreeSet<String> = files.iter().map(|f| key(&module_of(src, f))).collect();
    let mut graph: Graph = modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for file in &files {
        let module = module_of(src, file);
        let from = key(&module);
        let text = std::fs::read_to_string(file)?;
        // Comments out (doc links name modules without depending on them).
        let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
        let bytes = code.as_bytes();
        let mut paths = Vec::new();
        for (head, offset) in [("crate::", 0usize), ("super::", 1)] {
            let mut at = 0;
            while let Some(found) = code[at..].find(head) {
                let begin = at + found;
                let boundary = begin == 0 || !(bytes[begin - 1].is_ascii_alphanumeric() || bytes[begin - 1] == b'_');
                at = begin + head.len();
                if !boundary || (offset == 1 && code[..begin].ends_with("super::")) {
                    continue;
                }
                let mut found_paths = Vec::new();
                use_tree(bytes, at, &[], &mut found_paths);
                for mut p in found_paths {
                    if offset == 1 {
                        // `super::` (possibly repeated) resolves against this file's module.
                        let mut base: Vec<String> = module.split("::").map(str::to_owned).collect();
                        base.pop();
                        while p.first().is_some_and(|s| s == "super") {
                            p.remove(0);
                            base.pop();
                        }
                        base.extend(p);
                        p = base;
                    }
                    paths.push(p);
                }
            }
        }
        for p in paths {
            let target = (1..=depth.min(p.len())).rev().map(|d| p[..d].join("::")).find(|c| modules.contains(c));
            if let Some(to) = target
                && to != from
                && !from.starts_with(&format!("{to}::"))
                && !to.starts_with(&format!("{from}::"))
            {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    Ok(graph)
}

/// The cycles (strongly connected components of more than one module).
pub fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    // Tarjan's algorithm.
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                s.low.entry(v).and_modify(|l| *l = (*l).min(lw));
            } else if s.on.contains(w) {
                let iw = s.index[w];
                s.low.entry(v).and_modify(|l| *l = (*l).min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// What breaks the rules, one line each.
pub fn violations(top: &Graph, inner: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for (graph, what) in [(top, "top-level modules"), (inner, "modules")] {
        for c in cycles(graph) {
            out.push(format!("a cycle among the {what} {}", c.join(", ")));
        }
    }
    for leaf in LEAVES {
        if let Some(deps) = top.get(leaf).filter(|d| !d.is_empty()) {
            out.push(format!("`{leaf}` is a leaf but uses {}", deps.iter().cloned().collect::<Vec<_>>().join(", ")));
        }
    }
    for (module, forbidden) in FORBIDDEN {
        for f in forbidden {
            if top.get(module).is_some_and(|d| d.contains(*f)) {
                out.push(format!("`{module}` must not use `{f}`"));
            }
        }
    }
    out
}

/// Prints the graph and fails on a broken rule.
pub fn check(root: &Path, print: bool) -> Result<()> {
    let src = root.join("jitsi-agent/src");
    let (top, inner) = (graph(&src, 1)?, graph(&src, 2)?);
    if print {
        for (m, deps) in &top {
            println!("{m:<16} -> {}", deps.iter().cloned().collect::<Vec<_>>().join(", "));
        }
    }
    let broken = violations(&top, &inner);
    if !broken.is_empty() {
        bail!("the module graph breaks its rules:\n  {}", broken.join("\n  "));
    }
    eprintln!("xtask: module graph: {} top-level modules, no cycle, fronts apart, leaves clean", top.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(edges: &[(&str, &str)]) -> Graph {
        let mut g = Graph::new();
        for (a, b) in edges {
            g.entry((*a).into()).or_default().insert((*b).into());
            g.entry((*b).into()).or_default();
        }
        g
    }

    #[test]
    fn use_trees_with_groups_and_aliases_are_all_read() {
        let text = b"{config::{Http, Tls as T}, splitter::{proxy::Proxy, stats}, names} rest";
        let mut out = Vec::new();
        use_tree(text, 0, &[], &mut out);
        let paths: Vec<String> = out.iter().map(|p| p.join("::")).collect();
        assert_eq!(
            paths,
            ["config::Http", "config::Tls", "splitter::proxy::Proxy", "splitter::stats", "names"],
            "{paths:?}"
        );
    }

    #[test]
    fn a_cycle_a_front_using_the_other_and_a_dirty_leaf_are_reported() {
        let top = g(&[("config", "stack"), ("stack", "config"), ("tls", "http"), ("names", "error")]);
        let v = violations(&top, &Graph::new());
        assert!(v.iter().any(|l| l.contains("cycle") && l.contains("config, stack")), "{v:?}");
        assert!(v.iter().any(|l| l == "`tls` must not use `http`"), "{v:?}");
        assert!(v.iter().any(|l| l.contains("`names` is a leaf")), "{v:?}");
        assert!(violations(&g(&[("tls", "splitter"), ("http", "splitter")]), &Graph::new()).is_empty());
    }

    #[test]
    fn the_agent_keeps_its_rules() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        check(root, false).unwrap();
    }
}
