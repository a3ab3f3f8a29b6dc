//! The top-level modules of `proxy/src` and `schedulers/src` form no import cycle.
//!
//! A module's files count as one node; `use crate::X`, `crate::X::` paths and a top-level
//! file's `super::X` are its edges (comments are ignored). A cycle means two modules each need
//! the other's insides, which is how the command, admin and data-path modules once grew
//! together; this test keeps them apart.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file of the crate, keyed by the top-level module it belongs to.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let entries = fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        if path.is_dir() {
            let mut files = Vec::new();
            walk(&path, &mut files);
            out.entry(name).or_default().extend(files);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            out.entry(name).or_default().push(path);
        }
    }
    out
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The crate-level names a file refers to through `crate::` (and, for a file directly under
/// `src/`, through `super::`), including each name of a `use crate::{a, b::c}` group.
fn references(text: &str, top_level_file: bool) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut prefixes = vec!["crate::"];
        if top_level_file {
            prefixes.push("super::");
        }
        for prefix in prefixes {
            let mut rest = code;
            while let Some(at) = rest.find(prefix) {
                // `$crate::` and `foo_crate::` are not this crate.
                let before = rest[..at].chars().last();
                rest = &rest[at + prefix.len()..];
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                    continue;
                }
                if let Some(group) = rest.strip_prefix('{') {
                    let inner = group.split('}').next().unwrap_or_default();
                    for item in inner.split(',') {
                        names.insert(ident(item.trim()));
                    }
                } else {
                    names.insert(ident(rest));
                }
            }
        }
    }
    names.remove("");
    names
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let mut edges = BTreeMap::new();
    for (name, files) in &mods {
        let mut to = BTreeSet::new();
        for f in files {
            let text = fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let top = f.parent() == Some(src);
            for r in references(&text, top) {
                if r != *name && mods.contains_key(&r) {
                    to.insert(r);
                }
            }
        }
        edges.insert(name.clone(), to);
    }
    edges
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap_or_else(|| panic!("{v} visited"));
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap_or_else(|| panic!("{v} visited"));
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State { edges, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on_stack: BTreeSet::new(), next: 0, found: Vec::new() };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn assert_acyclic(crate_dir: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(crate_dir).join("src");
    let edges = graph(&src);
    assert!(edges.len() > 5, "{}: found only {:?}", src.display(), edges.keys());
    let found = cycles(&edges);
    assert!(found.is_empty(), "{}: import cycles among top-level modules: {found:?}\nedges: {edges:#?}", src.display());
}

#[test]
fn proxy_modules_have_no_import_cycle() {
    assert_acyclic(".");
}

#[test]
fn scheduler_modules_have_no_import_cycle() {
    assert_acyclic("../schedulers");
}

#[test]
fn the_checker_sees_a_cycle_and_group_imports() {
    let mut edges = BTreeMap::new();
    let text_a = "use crate::{b::Thing, c};\n// use crate::d::Not;\nfn f() { crate::b::g() }";
    edges.insert("a".to_string(), references(text_a, true));
    edges.insert("b".to_string(), references("use super::a::X;", true));
    edges.insert("c".to_string(), BTreeSet::new());
    assert_eq!(edges["a"], BTreeSet::from(["b".to_string(), "c".to_string()]));
    assert_eq!(cycles(&edges), vec![vec!["a".to_string(), "b".to_string()]]);
}
