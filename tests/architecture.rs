//! The crate's module structure, read from its sources: no module imports,
//! directly or through others, a module that imports it back, and every
//! module says what it owns in a `//!` doc.
//!
//! A module is a file of `src/` (`a/b.rs` and `a/b/mod.rs` are `a::b`); an
//! import is any `crate::` or `super::` path outside its `#[cfg(test)]`
//! module, attributed to the longest module it names.
#![allow(clippy::unwrap_used, missing_docs)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Every module file of `src/` (not the binary's `main.rs`, not test files),
/// by module path.
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .filter_map(|file| {
            let rel = file.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            match parts.as_slice() {
                [one] if one == "main" || one == "lib" => None,
                [.., last] if last == "tests" => None,
                _ => Some((parts.join("::"), file)),
            }
        })
        .collect()
}

/// The code of a module before its unit tests, without comments.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    // Comments and docs (intra-doc links) are not imports.
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands the use tree (or inline path) at `text[at..]` under `prefix`.
fn paths(text: &[u8], at: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let skip_ws = |at: &mut usize| {
        while *at < text.len() && text[*at].is_ascii_whitespace() {
            *at += 1;
        }
    };
    skip_ws(at);
    if text.get(*at) == Some(&b'{') {
        *at += 1;
        loop {
            paths(text, at, prefix, out);
            skip_ws(at);
            match text.get(*at) {
                Some(b',') => {
                    *at += 1;
                    skip_ws(at);
                    if text.get(*at) == Some(&b'}') {
                        *at += 1;
                        return;
                    }
                }
                Some(b'}') => {
                    *at += 1;
                    return;
                }
                _ => return,
            }
        }
    }
    let start = *at;
    while *at < text.len() && (text[*at].is_ascii_alphanumeric() || text[*at] == b'_') {
        *at += 1;
    }
    let mut path = prefix.to_vec();
    if *at > start {
        path.push(String::from_utf8_lossy(&text[start..*at]).into_owned());
    }
    if text[*at..].starts_with(b"::") {
        *at += 2;
        paths(text, at, &path, out);
    } else {
        out.push(path);
        // `as name` is not part of the path.
        let mut after = *at;
        while after < text.len() && text[after].is_ascii_whitespace() {
            after += 1;
        }
        if text[after..].starts_with(b"as ") {
            *at = after + 3;
            skip_ws(at);
            while *at < text.len() && (text[*at].is_ascii_alphanumeric() || text[*at] == b'_') {
                *at += 1;
            }
        }
    }
}

/// Every path of `text` that starts with `anchor` (`crate::`, `super::`),
/// expanded under `base`.
fn anchored(text: &str, anchor: &str, base: &[String]) -> Vec<Vec<String>> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(anchor) {
        let at_start = from + i;
        from = at_start + anchor.len();
        let before = bytes.get(at_start.wrapping_sub(1)).copied();
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b"_:$".contains(&b)) {
            continue;
        }
        let mut at = from;
        paths(bytes, &mut at, base, &mut found);
    }
    found
}

/// The modules `module` imports.
fn imports(module: &str, file: &Path, all: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let text = code(file);
    let bytes = text.as_bytes();
    let own: Vec<String> = module.split("::").map(str::to_owned).collect();
    // `super::` of a.rs / a/mod.rs is the parent of the module / of its folder.
    let parent: Vec<String> = own[..own.len() - 1].to_vec();
    let mut found = anchored(&text, "crate::", &[]);
    found.extend(anchored(&text, "super::", &parent));
    // A parent names its children without `crate::` (`jwt::Verifier`).
    for child in all.keys() {
        let Some(name) = child
            .strip_prefix(module)
            .and_then(|rest| rest.strip_prefix("::"))
            .filter(|rest| !rest.contains("::"))
        else {
            continue;
        };
        let needle = format!("{name}::");
        let named = text.match_indices(&needle).any(|(i, _)| {
            let before = bytes.get(i.wrapping_sub(1)).copied();
            !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        });
        if named {
            found.push(child.split("::").map(str::to_owned).collect());
        }
    }
    found
        .into_iter()
        .filter_map(|path| {
            (1..=path.len())
                .rev()
                .map(|k| path[..k].join("::"))
                .find(|m| all.contains_key(m))
        })
        .filter(|m| m != module)
        .collect()
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let all = modules();
    assert!(all.len() > 20, "found only {:?}", all.keys());
    let graph: BTreeMap<String, BTreeSet<String>> = all
        .iter()
        .map(|(m, f)| (m.clone(), imports(m, f, &all)))
        .collect();
    // Depth-first search; a grey module met again closes a circle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        White,
        Grey,
        Black,
    }
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
        circles: &mut Vec<String>,
    ) {
        marks.insert(m.to_owned(), Mark::Grey);
        stack.push(m.to_owned());
        for next in &graph[m] {
            match marks[next] {
                Mark::White => visit(next, graph, marks, stack, circles),
                Mark::Grey => {
                    let from = stack.iter().position(|s| s == next).unwrap();
                    let mut circle = stack[from..].to_vec();
                    circle.push(next.clone());
                    circles.push(circle.join(" → "));
                }
                Mark::Black => {}
            }
        }
        stack.pop();
        marks.insert(m.to_owned(), Mark::Black);
    }
    let mut marks: BTreeMap<String, Mark> =
        graph.keys().map(|m| (m.clone(), Mark::White)).collect();
    let mut circles = Vec::new();
    for m in graph.keys() {
        if marks[m] == Mark::White {
            visit(m, &graph, &mut marks, &mut Vec::new(), &mut circles);
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_checker_sees_imports_and_circles() {
    // The checker itself: nested use trees, inline paths and super::.
    let mut out = Vec::new();
    let text = b"{a::{b, c::D}, e as x, f::g as h, k}; crate::i::j(); ";
    paths(text, &mut 0, &[], &mut out);
    let joined: Vec<String> = out.iter().map(|p| p.join("::")).collect();
    assert_eq!(joined, ["a::b", "a::c::D", "e", "f::g", "k"]);
}

#[test]
fn every_module_has_a_doc() {
    let missing: Vec<String> = modules()
        .into_iter()
        .filter(|(_, file)| !std::fs::read_to_string(file).unwrap().starts_with("//!"))
        .map(|(m, _)| m)
        .collect();
    assert!(missing.is_empty(), "modules without a //! doc: {missing:?}");
}

/// The crate's root only hands names on (to the binary, tests, benches):
/// a module reaching another through it (`crate::now_ms` for
/// `crate::clock::now_ms`) imports, unseen by the circle check, every
/// module the root re-exports, the composition root above it among them.
#[test]
fn no_module_reaches_another_through_the_crate_root() {
    let all = modules();
    let top: BTreeSet<&str> = all.keys().map(|m| m.split("::").next().unwrap()).collect();
    let mut through_root = Vec::new();
    for (module, file) in &all {
        for path in anchored(&code(file), "crate::", &[]) {
            if path
                .first()
                .is_some_and(|first| !top.contains(first.as_str()))
            {
                through_root.push(format!("{module}: crate::{}", path.join("::")));
            }
        }
    }
    assert!(
        through_root.is_empty(),
        "name the module that owns it instead:\n{}",
        through_root.join("\n")
    );
}
