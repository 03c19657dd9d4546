//! No import loops: in each crate, the modules' `use crate::…`/`use super::…` lines and
//! inline `crate::…` paths draw a graph (a module and its ancestors aside: a folder's
//! `mod.rs` names its children), and that graph has no cycle. A new loop fails here
//! naming the modules on it. Runs anywhere (no root).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each crate's source root (a binary's own folder is a crate of its own).
const CRATES: [&str; 6] = [
    "peer-dataplane-common/src",
    "peer-dataplane-ebpf/src",
    "peer-dataplane-model/src",
    "peer-dataplane/src",
    "peer-dataplane-controlplane/src",
    "peer-dataplane-bench/src/bench",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `.rs` file under `dir`, as its module path (`cli::trace::explain`; `mod.rs`,
/// `lib.rs` and `main.rs` stand for their folder).
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap().with_extension("");
        let mut path: Vec<String> = rel
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        if matches!(
            path.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            path.pop();
        }
        // Binaries' own folders (src/bin/…) are crates of their own.
        if path.first().is_some_and(|p| p == "bin") {
            continue;
        }
        out.insert(path, f);
    }
    out
}

/// The module a path names: its longest prefix that is a module.
fn resolve(path: &[String], known: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains_key(p))
}

/// The paths a use tree names, each as its segments (`a::{b, c::{d}}` gives `a::b` and
/// `a::c::d`; `self` stands for its parent).
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let segs: Vec<String> = tree
            .split("::")
            .map(|seg| {
                seg.trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|seg| !seg.is_empty() && seg != "self")
            .collect();
        return vec![segs];
    };
    let head: Vec<String> = tree[..open]
        .split("::")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    // The group's items, split at its own commas.
    let inner = &tree[open + 1..];
    let (mut depth, mut start, mut items) = (0usize, 0usize, Vec::new());
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&inner[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for item in items.into_iter().filter(|i| !i.trim().is_empty()) {
        for mut tail in expand(item) {
            let mut p = head.clone();
            p.append(&mut tail);
            out.push(p);
        }
    }
    out
}

/// The text of a path starting at `at` in `code`: up to the end of a use tree (`;`) or of
/// a path in an expression.
fn path_text(code: &str) -> &str {
    if code.starts_with('{') {
        let mut depth = 0;
        for (i, c) in code.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return &code[..=i];
                    }
                }
                _ => {}
            }
        }
        return code;
    }
    let end = code
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{'))
        .unwrap_or(code.len());
    let t = &code[..end];
    match t.find('{') {
        Some(i) => {
            // `a::b::{c, d}`: the group too.
            let rest = &code[i..];
            let group = path_text(rest);
            &code[..i + group.len()]
        }
        None => t,
    }
}

/// The paths a file refers to through `crate::` and `super::`, as absolute module paths.
fn references(me: &[String], text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // `some_crate::`
        }
        out.extend(expand(path_text(&code[at + "crate::".len()..])));
    }
    // `super::` counts from the file's parent module (a folder's `mod.rs` is the folder).
    let parent: Vec<String> = me[..me.len().saturating_sub(1)].to_vec();
    for (at, _) in code.match_indices("super::") {
        if code[..at].ends_with("super::")
            || code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let mut base = parent.clone();
        let mut rest = &code[at + "super::".len()..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        for tail in expand(path_text(rest)) {
            let mut p = base.clone();
            p.extend(tail);
            out.push(p);
        }
    }
    out
}

/// The cycles (strongly connected components of more than one module) of `edges`.
fn cycles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    // Tarjan's algorithm, iterative enough for these sizes.
    struct T<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<Vec<String>, usize>,
        low: BTreeMap<Vec<String>, usize>,
        stack: Vec<Vec<String>>,
        on: BTreeSet<Vec<String>>,
        next: usize,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit(t: &mut T, v: &Vec<String>) {
        t.index.insert(v.clone(), t.next);
        t.low.insert(v.clone(), t.next);
        t.next += 1;
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        let targets: Vec<Vec<String>> = t
            .edges
            .get(v)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for w in targets {
            if !t.index.contains_key(&w) {
                visit(t, &w);
                let lw = t.low[&w];
                let lv = t.low[v];
                t.low.insert(v.clone(), lv.min(lw));
            } else if t.on.contains(&w) {
                let iw = t.index[&w];
                let lv = t.low[v];
                t.low.insert(v.clone(), lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(&w);
                let done = w == *v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    let nodes: Vec<Vec<String>> = edges.keys().cloned().collect();
    for v in &nodes {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// The import graph of one crate's `src/`.
fn graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let known = modules(src);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (me, file) in &known {
        let text = std::fs::read_to_string(file).unwrap();
        // Tests inside a file see everything; they are not part of the structure.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        let e = edges.entry(me.clone()).or_default();
        for r in references(me, text) {
            let Some(target) = resolve(&r, &known) else {
                continue;
            };
            // A module and its ancestors (a folder names its children) are one room.
            if target.is_empty() || me.starts_with(&target) || target.starts_with(me) {
                continue;
            }
            e.insert(target);
        }
    }
    edges
}

#[test]
fn no_crate_has_an_import_loop() {
    let mut found = Vec::new();
    let mut edges_seen = 0;
    for c in CRATES {
        let g = graph(&root().join(c));
        edges_seen += g.values().map(BTreeSet::len).sum::<usize>();
        for comp in cycles(&g) {
            let names: Vec<String> = comp.iter().map(|m| m.join("::")).collect();
            found.push(format!("{c}: {}", names.join(", ")));
        }
    }
    assert!(
        edges_seen > 100,
        "only {edges_seen} imports read: is the scan right?"
    );
    assert!(found.is_empty(), "import loops:\n{}", found.join("\n"));
}

#[test]
fn use_trees_expand_to_every_path() {
    assert_eq!(
        expand("a::{b, c::{d, self}, e::F}"),
        vec![
            vec!["a".to_string(), "b".into()],
            vec!["a".into(), "c".into(), "d".into()],
            vec!["a".into(), "c".into()],
            vec!["a".into(), "e".into(), "F".into()],
        ]
    );
    let refs = references(
        &["x".to_string(), "y".into()],
        "use super::z::{W, v::U};\nlet n = crate::m::f(1);",
    );
    assert!(
        refs.contains(&vec!["x".to_string(), "z".into(), "W".into()]),
        "{refs:?}"
    );
    assert!(
        refs.contains(&vec!["m".to_string(), "f".into()]),
        "{refs:?}"
    );
}

#[test]
fn a_loop_is_found() {
    let mut g: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    let m = |s: &str| vec![s.to_string()];
    g.entry(m("a")).or_default().insert(m("b"));
    g.entry(m("b")).or_default().insert(m("c"));
    g.entry(m("c")).or_default().insert(m("a"));
    g.entry(m("d")).or_default().insert(m("a"));
    let c = cycles(&g);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].len(), 3);
}

/// The agent binary touches BPF only through its `bpf` wing: no other module names aya.
#[test]
fn only_the_bpf_wing_names_aya() {
    let src = root().join("peer-dataplane/src");
    let mut offenders = Vec::new();
    for (module, file) in modules(&src) {
        if module.first().is_some_and(|m| m == "bpf") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
        for (n, line) in code.enumerate().filter(|(_, l)| l.contains("aya::")) {
            offenders.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
        }
    }
    assert!(
        offenders.is_empty(),
        "aya outside bpf/:\n{}",
        offenders.join("\n")
    );
}

/// The model's wings go one way: `reconcile` may import `desired` and `maps`, `desired`
/// only `maps`, and `maps` neither.
#[test]
fn the_model_wings_go_one_way() {
    let g = graph(&root().join("peer-dataplane-model/src"));
    let wing = |m: &Vec<String>| m.first().cloned().unwrap_or_default();
    let rank = |w: &str| match w {
        "maps" => 0,
        "desired" => 1,
        "reconcile" => 2,
        _ => 3,
    };
    let mut upward = Vec::new();
    for (from, tos) in &g {
        for to in tos {
            let (a, b) = (wing(from), wing(to));
            if a != b && rank(&b) > rank(&a) {
                upward.push(format!("{} -> {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(g.keys().any(|m| wing(m) == "maps"), "no maps wing read");
    assert!(
        upward.is_empty(),
        "imports against the wings' order:\n{}",
        upward.join("\n")
    );
}
