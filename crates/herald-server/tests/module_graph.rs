//! The crate's modules form no import circle, and the edge is layered: the wire types
//! and their schemas (`wire`, `rpc::wire`), the error table (`error`) and the HTTP error
//! plumbing (`hyper_errors`) are leaves that import no handler; handlers import them;
//! the OpenAPI document (`openapi`) gathers handlers and wire, and only the router in
//! `lib.rs` imports it.
//!
//! The graph is read from the source: every path that starts with `crate::`, `super::`
//! or `self::` (in `use` trees, braces included, and written out in code), resolved to
//! the module it names. A module using its parent's items, or a parent using its
//! children, is the module tree rather than an import; every other reference is lifted
//! to the two sibling modules it connects (`http::publish` → `wire::schema` is
//! `http` → `wire`), and those must form no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// One reference from a file's module to another module.
#[derive(Debug, Clone)]
struct Reference {
    from: Module,
    to: Module,
    place: String,
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

/// The module a file under `src/` defines: `lib.rs` is the crate, `a.rs` and
/// `a/mod.rs` are `a`, `a/b.rs` is `a::b`.
fn module_of(relative: &str) -> Module {
    let relative = relative.trim_end_matches(".rs");
    let mut parts: Module = relative.split('/').map(str::to_owned).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Star,
    Other,
}

/// Rust tokens enough to read paths and braces, with comments, strings and character
/// literals skipped, each with its line.
fn tokens(text: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let skip_string = |i: &mut usize, line: &mut usize, hashes: usize| {
        // `*i` is just past the opening quote.
        while *i < chars.len() {
            let c = chars[*i];
            if c == '\n' {
                *line += 1;
            }
            if c == '\\' && hashes == 0 {
                if chars.get(*i + 1) == Some(&'\n') {
                    *line += 1;
                }
                *i += 2;
                continue;
            }
            *i += 1;
            if c == '"'
                && chars[*i..]
                    .iter()
                    .take(hashes)
                    .filter(|&&h| h == '#')
                    .count()
                    == hashes
            {
                *i += hashes;
                return;
            }
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
                i += 2;
            }
            '"' => {
                i += 1;
                skip_string(&mut i, &mut line, 0);
            }
            '\'' => {
                if chars.get(i + 1) == Some(&'\\') {
                    i += 2;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if chars.get(i + 2) == Some(&'\'') {
                    i += 3;
                } else {
                    i += 1; // a lifetime
                }
            }
            ':' if chars.get(i + 1) == Some(&':') => {
                out.push((Token::PathSep, line));
                i += 2;
            }
            '{' => {
                out.push((Token::Open, line));
                i += 1;
            }
            '}' => {
                out.push((Token::Close, line));
                i += 1;
            }
            ',' => {
                out.push((Token::Comma, line));
                i += 1;
            }
            '*' => {
                out.push((Token::Star, line));
                i += 1;
            }
            c if c.is_alphanumeric() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let raw_string =
                    matches!(word.as_str(), "r" | "br") && matches!(chars.get(i), Some('"' | '#'));
                if raw_string {
                    let mut hashes = 0;
                    while chars.get(i) == Some(&'#') {
                        hashes += 1;
                        i += 1;
                    }
                    i += 1; // the quote
                    skip_string(&mut i, &mut line, hashes);
                } else {
                    out.push((Token::Ident(word), line));
                }
            }
            _ => {
                out.push((Token::Other, line));
                i += 1;
            }
        }
    }
    out
}

/// Reads a path continuation at `tokens[*at]` (after a `::`): a name and more, a brace
/// group of such, `self` or `*`. Returns every full path it stands for.
fn continuation(tokens: &[(Token, usize)], at: &mut usize, prefix: &[String]) -> Vec<Module> {
    match tokens.get(*at).map(|(t, _)| t) {
        Some(Token::Open) => {
            *at += 1;
            let mut paths = Vec::new();
            loop {
                match tokens.get(*at).map(|(t, _)| t) {
                    None => return paths,
                    Some(Token::Close) => {
                        *at += 1;
                        return paths;
                    }
                    Some(Token::Comma) => *at += 1,
                    Some(_) => {
                        let before = *at;
                        paths.extend(continuation(tokens, at, prefix));
                        if *at == before {
                            *at += 1;
                        }
                    }
                }
            }
        }
        Some(Token::Ident(word)) => {
            *at += 1;
            let mut path = prefix.to_vec();
            if word != "self" {
                path.push(word.clone());
            }
            if tokens.get(*at).map(|(t, _)| t) == Some(&Token::PathSep) {
                *at += 1;
                continuation(tokens, at, &path)
            } else {
                vec![path]
            }
        }
        Some(Token::Star) => {
            *at += 1;
            vec![prefix.to_vec()]
        }
        _ => vec![prefix.to_vec()],
    }
}

/// Every reference of one file (`relative` to `src/`) to a module of `modules`.
fn references(relative: &str, text: &str, modules: &BTreeSet<Module>) -> Vec<Reference> {
    let file_module = module_of(relative);
    let tokens = tokens(text);
    // Inline modules (`mod tests { … }`): where `super::` and `self::` start from.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut out = Vec::new();
    let mut at = 0;
    while at < tokens.len() {
        let (token, line) = &tokens[at];
        match token {
            Token::Open => depth += 1,
            Token::Close => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Token::Ident(word) if word == "mod" => {
                if let (Some((Token::Ident(child), _)), Some((Token::Open, _))) =
                    (tokens.get(at + 1), tokens.get(at + 2))
                {
                    inline.push((child.clone(), depth + 1));
                    depth += 1;
                    at += 3;
                    continue;
                }
            }
            Token::Ident(word)
                if matches!(word.as_str(), "crate" | "super" | "self")
                    && tokens.get(at + 1).map(|(t, _)| t) == Some(&Token::PathSep)
                    && (at == 0 || tokens[at - 1].0 != Token::PathSep) =>
            {
                let here: Module = file_module
                    .iter()
                    .cloned()
                    .chain(inline.iter().map(|(n, _)| n.clone()))
                    .collect();
                let mut base = match word.as_str() {
                    "crate" => Vec::new(),
                    _ => here.clone(),
                };
                let mut next = at;
                if word == "super" {
                    base.pop();
                }
                next += 2;
                while let (Some((Token::Ident(w), _)), Some((Token::PathSep, _))) =
                    (tokens.get(next), tokens.get(next + 1))
                {
                    if w != "super" {
                        break;
                    }
                    base.pop();
                    next += 2;
                }
                for path in continuation(&tokens, &mut next, &base) {
                    let mut target = path.clone();
                    while !modules.contains(&target) {
                        target.pop();
                    }
                    out.push(Reference {
                        from: file_module.clone(),
                        to: target,
                        place: format!("{relative}:{line} ({})", name(&path)),
                    });
                }
                at = next.max(at + 1);
                continue;
            }
            _ => {}
        }
        at += 1;
    }
    out
}

/// The two sibling modules a reference connects, or `None` within one branch of the
/// module tree (a module and its ancestors or descendants).
fn lift(from: &[String], to: &[String]) -> Option<(Module, Module)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common == from.len() || common == to.len() {
        return None;
    }
    Some((from[..=common].to_vec(), to[..=common].to_vec()))
}

/// What is wrong with the module graph of these files (paths relative to `src/`).
fn problems(files: &[(String, String)], leaves: &[&str], aggregator: &str) -> Vec<String> {
    let modules: BTreeSet<Module> = files.iter().map(|(path, _)| module_of(path)).collect();
    let references: Vec<Reference> = files
        .iter()
        .flat_map(|(path, text)| references(path, text, &modules))
        .collect();
    let mut problems = Vec::new();

    let split = |text: &str| -> Module { text.split("::").map(str::to_owned).collect() };
    let leaves: Vec<Module> = leaves.iter().map(|l| split(l)).collect();
    let in_leaf = |module: &Module| leaves.iter().any(|leaf| module.starts_with(leaf));
    for reference in &references {
        if in_leaf(&reference.from) && !in_leaf(&reference.to) {
            problems.push(format!(
                "{} is a leaf but imports {}: {}",
                name(&reference.from),
                name(&reference.to),
                reference.place
            ));
        }
    }
    let aggregator = split(aggregator);
    for reference in &references {
        if reference.to.starts_with(&aggregator)
            && !reference.from.is_empty()
            && !reference.from.starts_with(&aggregator)
        {
            problems.push(format!(
                "only the router may import {}: {}",
                name(&aggregator),
                reference.place
            ));
        }
    }

    let mut edges: BTreeMap<Module, BTreeMap<Module, String>> = BTreeMap::new();
    for reference in &references {
        if let Some((from, to)) = lift(&reference.from, &reference.to) {
            edges
                .entry(from)
                .or_default()
                .entry(to)
                .or_insert_with(|| reference.place.clone());
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|pair| {
                format!(
                    "{} -> {} [{}]",
                    name(&pair[0]),
                    name(&pair[1]),
                    edges[&pair[0]][&pair[1]]
                )
            })
            .collect();
        problems.push(format!("import cycle:\n  {}", steps.join("\n  ")));
    }
    problems
}

/// A cycle of the graph as its modules, the first repeated at the end.
fn find_cycle(edges: &BTreeMap<Module, BTreeMap<Module, String>>) -> Option<Vec<Module>> {
    fn visit(
        node: &Module,
        edges: &BTreeMap<Module, BTreeMap<Module, String>>,
        done: &mut BTreeSet<Module>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(start) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[start..].to_vec();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flat_map(BTreeMap::keys) {
            if let Some(cycle) = visit(next, edges, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, edges, &mut done, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

fn source_files(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            source_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).unwrap().to_string_lossy();
            let relative = relative.replace('\\', "/");
            out.push((relative, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

const LEAVES: &[&str] = &["error", "hyper_errors", "wire", "rpc::wire"];

#[test]
fn the_crate_has_no_import_cycle_and_its_leaves_are_leaves() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|(p, _)| name(&module_of(p))).collect();
    for expected in [
        "crate",
        "openapi",
        "wire",
        "wire::schema",
        "http::publish",
        "rpc::wire",
    ] {
        assert!(modules.contains(expected), "{expected} in {modules:?}");
    }
    let problems = problems(&files, LEAVES, "openapi");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect()
}

/// The checker itself finds what it is meant to find.
#[test]
fn the_checker_finds_cycles_and_leaf_imports() {
    let clean = files(&[
        (
            "lib.rs",
            "mod http; mod wire; mod openapi; use crate::openapi::docs;",
        ),
        (
            "wire/mod.rs",
            "pub mod schema; use schema::Subject; // crate::http::x",
        ),
        (
            "wire/schema.rs",
            "use super::MAX; const S: &str = \"crate::http::x\";",
        ),
        (
            "http/mod.rs",
            "mod publish; use crate::wire::{self, schema::Subject}; use publish::x;",
        ),
        (
            "http/publish.rs",
            "use super::{truncate, parse}; fn f() { crate::wire::schema::raw(); }",
        ),
        ("openapi.rs", "use crate::{http::publish, wire::schema::*};"),
    ]);
    assert_eq!(problems(&clean, &["wire"], "openapi"), Vec::<String>::new());

    let mut cycle = clean.clone();
    cycle[2]
        .1
        .push_str(" fn g() { let _ = crate::http::publish::MAX; }");
    let found = problems(&cycle, &[], "openapi");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("http -> wire"), "{found:?}");
    assert!(found[0].contains("wire -> http"), "{found:?}");
    assert!(found[0].contains("wire/schema.rs:1"), "{found:?}");

    let leaf = problems(&cycle, &["wire"], "openapi");
    assert!(
        leaf.iter()
            .any(|p| p.starts_with("wire::schema is a leaf but imports http::publish")),
        "{leaf:?}"
    );

    let mut aggregated = clean.clone();
    aggregated[4].1.push_str("\nuse crate::openapi::Subject;");
    let found = problems(&aggregated, &["wire"], "openapi");
    assert!(
        found
            .iter()
            .any(|p| p.contains("only the router may import openapi")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.contains("import cycle")),
        "{found:?}"
    );

    // An inline `mod tests` starts `super::` from the file's module.
    let tests = files(&[
        ("lib.rs", "mod error; mod http;"),
        (
            "error.rs",
            "#[cfg(test)]\nmod tests {\n    use super::*;\n}",
        ),
        ("http.rs", "use crate::error::E;"),
    ]);
    assert_eq!(
        problems(&tests, &["error"], "openapi"),
        Vec::<String>::new()
    );
    let mut sibling = tests.clone();
    sibling[1].1 = "mod tests {\n    use super::super::http::x;\n}".into();
    let found = problems(&sibling, &["error"], "openapi");
    assert!(found.iter().any(|p| p.contains("error.rs:2")), "{found:?}");
}
