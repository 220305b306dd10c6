//! The crate's layers, kept by a test: every path a module of `host/src`
//! names (`use crate::…`, `crate::x::y` inline, `super::…` resolved to the
//! module it reaches, grouped `crate::{a, b}`) is mapped to the top-level
//! room it lands in, and a room may only reach the rooms below it in
//! [`ALLOWED`]. Comments and string literals are skipped, so that a doc
//! line naming another module is not an edge.
//!
//! The allowed edges are written once, here, and printed beside the actual
//! ones when the test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::repo_root;

/// Each room and the rooms it may name. A room not listed may name nothing.
const ALLOWED: &[(&str, &[&str])] = &[
    // The words every layer speaks, and the wall clock: they name nothing.
    ("domain", &[]),
    ("clock", &[]),
    // What the outgoing TLS clients share (a leaf).
    ("tls", &[]),
    // The store keeps the domain's records.
    ("store", &["domain", "clock", "tls"]),
    // The rule runtime knows the domain only: never the saga that calls it.
    ("rules", &["domain", "clock"]),
    ("metrics", &["store", "domain", "rules"]),
    // A gateway; the sandbox keeps its ledger in the store.
    ("payment", &["store", "domain", "clock", "tls"]),
    // Event envelopes and their delivery, below the saga that writes them.
    ("events", &["store", "domain", "clock", "tls"]),
    // The order saga. Never the release tooling above it.
    ("pipeline", &["events", "payment", "metrics", "rules", "store", "domain", "clock"]),
    // Rule releases: replay, the reload gate, promotion; reuse the saga's leaf pieces.
    ("release", &["pipeline", "metrics", "rules", "store", "domain", "clock"]),
    // The assembled engine.
    ("app", &["release", "pipeline", "events", "payment", "metrics", "rules", "store", "domain", "clock"]),
    // The HTTP edge, over the engine.
    ("http", &["app", "release", "pipeline", "payment", "metrics", "rules", "store", "domain", "clock"]),
    // Settings: what every part is configured with.
    ("config", &["http", "app", "events", "payment", "rules", "store", "domain", "clock"]),
    // The command line, over everything.
    (
        "cli",
        &[
            "config", "http", "app", "release", "pipeline", "events", "payment", "metrics", "rules", "store", "domain",
            "clock",
        ],
    ),
];

/// Source text with comments and string and char literals blanked, so that
/// only code is searched for paths.
fn code_only(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    let starts_ident = |i: usize| i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
    while i < bytes.len() {
        let rest = &source[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if let Some(comment) = rest.strip_prefix("/*") {
            i += comment.find("*/").map_or(rest.len(), |end| end + 4);
        } else if rest.starts_with('r') && starts_ident(i) && rest[1..].trim_start_matches('#').starts_with('"') {
            let hashes = rest[1..].len() - rest[1..].trim_start_matches('#').len();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            i += rest[body..].find(&close).map_or(rest.len(), |end| body + end + close.len());
            out.push_str("\"\"");
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() && rest.as_bytes()[j] != b'"' {
                j += if rest.as_bytes()[j] == b'\\' { 2 } else { 1 };
            }
            i += j + 1;
            out.push_str("\"\"");
        } else if rest.starts_with('\'') && char_literal_len(rest).is_some() {
            i += char_literal_len(rest).unwrap_or(1);
            out.push_str("' '");
        } else {
            let c = rest.chars().next().expect("not at the end");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The length of a char literal at the start of `text` (`'a'`, `'\n'`,
/// `'\''`), or `None` for a lifetime.
fn char_literal_len(text: &str) -> Option<usize> {
    let mut chars = text.char_indices().skip(1);
    let (_, first) = chars.next()?;
    if first == '\\' {
        let close = text[2..].find('\'')?;
        return Some(close + 3);
    }
    let (at, second) = chars.next()?;
    (second == '\'').then_some(at + 1)
}

/// The first identifiers of a path segment: `name` or the names of a group `{a, b::c}`.
fn heads(segment: &str) -> Vec<String> {
    let segment = segment.trim();
    let Some(group) = segment.strip_prefix('{') else {
        return vec![segment.to_string()];
    };
    let mut names = Vec::new();
    let mut depth = 0;
    let mut item = String::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => names.push(std::mem::take(&mut item)),
            _ => item.push(c),
        }
    }
    names.push(item);
    names
        .iter()
        .filter_map(|item| {
            let name: String = item.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            (!name.is_empty() && name != "self").then_some(name)
        })
        .collect()
}

/// The segment after `prefix` at `at`: an identifier, or a `{…}` group.
fn segment_after(code: &str, at: usize) -> &str {
    let rest = &code[at..];
    if rest.starts_with('{') {
        let mut depth = 0;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return &rest[..=i];
                    }
                }
                _ => {}
            }
        }
        return rest;
    }
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
    &rest[..end]
}

/// The module path of a source file under `src` (`pipeline/mod.rs` → `["pipeline"]`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("under src").with_extension("");
    let mut path: Vec<String> = relative.iter().map(|part| part.to_string_lossy().into_owned()).collect();
    if path.last().is_some_and(|last| last == "mod") {
        path.pop();
    }
    path
}

/// The top-level rooms the code of `module` names.
fn rooms_named(module: &[String], code: &str) -> BTreeSet<String> {
    let mut rooms = BTreeSet::new();
    let is_boundary = |at: usize| at == 0 || !code[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
    for (at, _) in code.match_indices("crate::") {
        if is_boundary(at) {
            rooms.extend(heads(segment_after(code, at + "crate::".len())));
        }
    }
    let mut at = 0;
    while let Some(found) = code[at..].find("super::") {
        let start = at + found;
        at = start + "super::".len();
        if !is_boundary(start) || code[..start].ends_with("super::") {
            continue;
        }
        let mut ups = 1;
        while code[at..].starts_with("super::") {
            ups += 1;
            at += "super::".len();
        }
        let base = &module[..module.len().saturating_sub(ups)];
        for name in heads(segment_after(code, at)) {
            rooms.insert(base.first().cloned().unwrap_or(name));
        }
    }
    rooms
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading host/src") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Room → rooms it names, over the whole crate (`lib.rs` and `main.rs`,
/// the crate's roots, excepted).
fn actual_edges() -> BTreeMap<String, BTreeSet<String>> {
    let src = repo_root().join("host/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        if matches!(module.as_slice(), [only] if only == "lib" || only == "main") {
            continue;
        }
        let room = module[0].clone();
        let code = code_only(&std::fs::read_to_string(&file).expect("reading a source file"));
        let named = rooms_named(&module, &code);
        let entry = edges.entry(room.clone()).or_default();
        entry.extend(named.into_iter().filter(|r| *r != room));
    }
    // Only names of rooms count (a `crate::` path always starts with one).
    let rooms: BTreeSet<String> = edges.keys().cloned().collect();
    for named in edges.values_mut() {
        named.retain(|r| rooms.contains(r));
    }
    edges
}

fn violations(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (room, named) in edges {
        let may = allowed.get(room.as_str()).copied().unwrap_or(&[]);
        for target in named {
            if !may.contains(&target.as_str()) {
                wrong.push(format!("{room} → {target}"));
            }
        }
    }
    wrong
}

fn table(edges: &BTreeMap<String, BTreeSet<String>>) -> String {
    let mut out = String::new();
    for (room, may) in ALLOWED {
        let actual = edges.get(*room).map(|s| s.iter().cloned().collect::<Vec<_>>().join(" ")).unwrap_or_default();
        out.push_str(&format!("  {room:<9} may name: {:<70} names: {actual}\n", may.join(" ")));
    }
    for room in edges.keys().filter(|r| ALLOWED.iter().all(|(a, _)| a != r)) {
        out.push_str(&format!("  {room:<9} (a room the table does not know) names: {:?}\n", edges[room]));
    }
    out
}

#[test]
fn no_layer_reaches_one_above_it() {
    let edges = actual_edges();
    let wrong = violations(&edges);
    let unknown: Vec<&String> = edges.keys().filter(|r| ALLOWED.iter().all(|(a, _)| a != r)).collect();
    assert!(
        wrong.is_empty() && unknown.is_empty(),
        "edges the layering forbids: {wrong:?}; rooms not in the table: {unknown:?}\n{}",
        table(&edges)
    );
    eprintln!("{}", table(&edges));
}

#[test]
fn the_scanner_sees_every_kind_of_path_and_no_comment_or_string() {
    let module: Vec<String> = ["pipeline", "discount"].iter().map(|s| s.to_string()).collect();
    let code = code_only(
        r##"
        use crate::store::Store;
        use crate::{domain::status::Slot, rules};
        use super::super::events::envelope;
        fn f() { let _ = crate::metrics::Metrics::new(); let _ = super::canary::x; }
        // use crate::release::replay;
        /* crate::http */
        const A: &str = "crate::app::Engine";
        const B: &str = r#"crate::config"#;
        let c = 'x'; fn g<'a>(v: &'a str) {}
        "##,
    );
    let named = rooms_named(&module, &code);
    let expected: BTreeSet<String> =
        ["store", "domain", "rules", "events", "metrics", "pipeline"].iter().map(|s| s.to_string()).collect();
    assert_eq!(named, expected);
}

#[test]
fn a_forbidden_edge_is_reported() {
    let mut edges = actual_edges();
    edges.entry("pipeline".into()).or_default().insert("release".into());
    edges.entry("domain".into()).or_default().insert("store".into());
    let wrong = violations(&edges);
    assert!(wrong.contains(&"pipeline → release".to_string()), "{wrong:?}");
    assert!(wrong.contains(&"domain → store".to_string()), "{wrong:?}");
}
