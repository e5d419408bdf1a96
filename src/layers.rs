//! The dependency rules of ARCHITECTURE.md, checked against the source (test only).
//!
//! ARCHITECTURE.md's "Dependency rules" table lists every module, lowest layer first. A module
//! may import only modules listed before it; its own submodules and itself are fine. This test
//! reads that table and every `src/**/*.rs` file (but `main.rs` and the crate root's
//! re-exports, the public facade), collects every `use` path (`crate::`, `super::`, `self::`,
//! a child module's name; `pub use` re-exports and multi-line groups included) and every
//! `crate::` path written inline, and fails on any import that runs back up the list.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The module list of ARCHITECTURE.md's "Dependency rules" section, lowest first: the
/// backquoted names in the second column of its table, row by row.
fn rules(doc: &str) -> Vec<Vec<String>> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Dependency rules"))
        .expect("ARCHITECTURE.md has a `## Dependency rules` section");
    section
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .skip(1) // the header
        .map(|row| {
            let cell = row.split('|').nth(2).unwrap_or("");
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// Rust source with comments, string and char literals blanked out (lengths kept).
fn code_only(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !b
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\'') or a lifetime ('a).
            if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Splits a use tree (`a::{b, c::{d, e as f}}`) into its paths.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let prefix: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut items = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (k, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&inner[start..k]);
                    start = k + 1;
                }
                _ => {}
            }
        }
        items.push(&inner[start..]);
        items
            .into_iter()
            .filter(|it| !it.trim().is_empty())
            .flat_map(expand)
            .map(|rest| {
                // `a::{self, X}`: `self` is `a` itself.
                let rest = rest.into_iter().filter(|s| s != "self");
                prefix.iter().cloned().chain(rest).collect()
            })
            .collect()
    } else {
        let path = tree.split(" as ").next().unwrap_or("").trim();
        vec![path.split("::").map(|s| s.trim().to_string()).collect()]
    }
}

/// One import: where it is written, the module it names, the path as written.
#[derive(Debug)]
struct Import {
    file: PathBuf,
    from: Vec<String>,
    to: Vec<String>,
    written: String,
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every import of one file whose module path is `module`. `modules` holds every module path
/// of the crate (to tell `use child::x` from `use extern_crate::x`).
fn imports(
    file: &Path,
    module: &[String],
    src: &str,
    modules: &BTreeSet<Vec<String>>,
) -> Vec<Import> {
    let code = code_only(src);
    let chars: Vec<char> = code.chars().collect();
    let word_at = |i: usize| -> String {
        chars[i..]
            .iter()
            .take_while(|c| is_ident(**c))
            .collect::<String>()
    };
    let mut out = Vec::new();
    // Inline `mod name { … }` scopes: (name, brace depth inside it).
    let mut scopes: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at_word_start = is_ident(c) && (i == 0 || !is_ident(chars[i - 1]));
        if c == '{' {
            depth += 1;
        } else if c == '}' {
            if scopes.last().is_some_and(|(_, d)| *d == depth) {
                scopes.pop();
            }
            depth = depth.saturating_sub(1);
        } else if at_word_start {
            let word = word_at(i);
            let here: Vec<String> = module
                .iter()
                .cloned()
                .chain(scopes.iter().map(|(n, _)| n.clone()))
                .collect();
            if word == "mod" {
                let mut j = i + 3;
                while chars.get(j).is_some_and(|c| c.is_whitespace()) {
                    j += 1;
                }
                let name = word_at(j);
                j += name.len();
                while chars.get(j).is_some_and(|c| c.is_whitespace()) {
                    j += 1;
                }
                if chars.get(j) == Some(&'{') {
                    scopes.push((name, depth + 1));
                    depth += 1;
                    i = j + 1;
                    continue;
                }
            } else if word == "use" {
                let end = chars[i..]
                    .iter()
                    .position(|c| *c == ';')
                    .map_or(chars.len(), |p| i + p);
                let tree: String = chars[i + 3..end].iter().collect();
                for path in expand(&tree) {
                    if let Some(to) = resolve(&path, &here, modules) {
                        out.push(Import {
                            file: file.to_path_buf(),
                            from: here.clone(),
                            to,
                            written: path.join("::"),
                        });
                    }
                }
                i = end;
                continue;
            } else if word == "crate" && chars[i + 5..].starts_with(&[':', ':']) {
                let path: String = chars[i..]
                    .iter()
                    .take_while(|c| is_ident(**c) || **c == ':')
                    .collect();
                let segs: Vec<String> = path.split("::").map(str::to_string).collect();
                if let Some(to) = resolve(&segs, &here, modules) {
                    out.push(Import {
                        file: file.to_path_buf(),
                        from: here.clone(),
                        to,
                        written: path.clone(),
                    });
                }
                i += path.len();
                continue;
            }
            i += word.len().max(1);
            continue;
        }
        i += 1;
    }
    out
}

/// The crate path a use path names, or `None` for another crate's.
fn resolve(
    path: &[String],
    here: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let (first, rest) = path.split_first()?;
    match first.as_str() {
        "crate" => Some(rest.to_vec()),
        "self" => Some(here.iter().chain(rest).cloned().collect()),
        "super" => {
            let mut base = here.to_vec();
            base.pop();
            let mut rest = rest;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            Some(base.into_iter().chain(rest.iter().cloned()).collect())
        }
        name => {
            // `use child::x` names a child module of this file's module (2018 paths).
            let mut child = here.to_vec();
            child.push(name.to_string());
            modules
                .contains(&child)
                .then(|| child.into_iter().chain(rest.iter().cloned()).collect())
        }
    }
}

/// Which listed module a path belongs to: the longest listed prefix.
fn entry<'a>(path: &[String], listed: &'a [Vec<String>]) -> Option<(usize, &'a Vec<String>)> {
    listed
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(m))
        .max_by_key(|(_, m)| m.len())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/dlq/select.rs` → `dlq::select`; `src/handler/mod.rs` → `handler`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut segs: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if segs.last().is_some_and(|s| s == "mod") {
        segs.pop();
    }
    segs
}

/// The violations of the rules in the source tree under `src`: one line each.
fn violations(src: &Path, doc: &str) -> Vec<String> {
    let layers = rules(doc);
    let listed: Vec<Vec<String>> = layers
        .iter()
        .flatten()
        .map(|m| m.split("::").map(str::to_string).collect())
        .collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let files: Vec<(PathBuf, Vec<String>)> = files
        .into_iter()
        .map(|f| {
            let m = module_of(src, &f);
            (f, m)
        })
        .filter(|(_, m)| {
            // The binary, the crate root (the public facade) and this test.
            !(m == &["main"] || m == &["lib"] || m == &["layers"])
        })
        .collect();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(_, m)| m.clone()).collect();
    let mut bad = Vec::new();
    for (file, module) in &files {
        let Some((from_rank, _)) = entry(module, &listed) else {
            bad.push(format!(
                "{}: module `{}` is not in ARCHITECTURE.md's dependency rules",
                file.display(),
                module.join("::")
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        for imp in imports(file, module, &text, &modules) {
            match entry(&imp.to, &listed) {
                None => bad.push(format!(
                    "{}: `{}` names no listed module (import from the module, not the crate root)",
                    imp.file.display(),
                    imp.written
                )),
                Some((to_rank, to)) => {
                    let same = entry(module, &listed).is_some_and(|(_, m)| m == to);
                    if !same && to_rank > from_rank {
                        bad.push(format!(
                            "{}: `{}` imports `{}`, which is listed after it (a back-import)",
                            imp.file.display(),
                            imp.from.join("::"),
                            imp.written
                        ));
                    }
                }
            }
        }
    }
    bad
}

#[test]
fn no_module_imports_up_the_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    assert!(
        rules(&doc).len() >= 4,
        "the dependency rules table has its layers"
    );
    let bad = violations(&root.join("src"), &doc);
    assert!(
        bad.is_empty(),
        "imports against ARCHITECTURE.md's dependency rules:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_parser_sees_groups_re_exports_and_relative_paths() {
    let src = r#"
//! use crate::nothing; in a comment
use crate::{a::{self, X}, b as bee};
pub use super::sibling::Y;
pub(crate) use crate::c
    ::Z;
mod tests {
    use super::super::up;
    fn f() { let s = "crate::in_a_string"; crate::d::call(); }
}
"#;
    let modules: BTreeSet<Vec<String>> = BTreeSet::new();
    let here = vec!["top".to_string(), "me".to_string()];
    let got: Vec<String> = imports(Path::new("x.rs"), &here, src, &modules)
        .into_iter()
        .map(|i| i.to.join("::"))
        .collect();
    assert_eq!(
        got,
        [
            "a",
            "a::X",
            "b",
            "top::sibling::Y",
            "c::Z",
            "top::up",
            "d::call"
        ]
    );
}
