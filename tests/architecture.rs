//! ARCHITECTURE.md's import claims, checked against the source: the leaf modules (`http`, `tls`,
//! `model`, `hub`) import no stage, no stage of the data path imports the node or the control
//! plane, the node knows the control plane only as a service (it imports neither `control` nor
//! `start`, which wires both), and no source file reaches itself through the files it imports
//! (no circle). A file that breaks a claim is named with the import. Also the house rules that
//! keep code readable: no function over 120 lines outside tests, no source file over 900 lines
//! but the codec framing.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each leaf module, and the only modules of the crate it may import besides itself.
const LEAVES: [(&str, &[&str]); 4] = [
    ("http", &["sync"]),
    ("tls", &["sync"]),
    ("model", &[]),
    ("hub", &["sync"]),
];

/// The stages of the data path, which never import `node` or `control`.
const STAGES: [&str; 10] = [
    "producer",
    "ingest",
    "listen",
    "transcode",
    "playlist",
    "cluster",
    "media",
    "plugin",
    "hls",
    "hub",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The `.rs` files of module `name` (`src/name.rs` or everything under `src/name/`).
fn files_of(name: &str) -> Vec<PathBuf> {
    let file = src().join(format!("{name}.rs"));
    if file.exists() {
        return vec![file];
    }
    let mut out = Vec::new();
    let mut dirs = vec![src().join(name)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    assert!(!out.is_empty(), "module {name} has no source files");
    out
}

/// The crate's top-level modules a source file names: `crate::x` anywhere outside comments, and
/// each item of `use crate::{x, y::z}`.
fn crate_imports(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(list) = rest.strip_prefix('{') {
                out.extend(top_level_items(list).iter().map(|i| ident(i.trim())));
            } else {
                out.insert(ident(rest));
            }
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// The items of a `{…}` list (its opening brace already read) at the list's own depth:
/// `a::{b, c}, d}` gives `a::{b, c}` and `d`.
fn top_level_items(list: &str) -> Vec<&str> {
    let (mut depth, mut start, mut items) = (1, 0, Vec::new());
    for (i, c) in list.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 1 => {
                items.push(&list[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 1 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&list[start..]);
    items
}

fn imports_of(module: &str) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for file in files_of(module) {
        let text = std::fs::read_to_string(&file).unwrap();
        for m in crate_imports(&text) {
            out.push((file.clone(), m));
        }
    }
    out
}

#[test]
fn the_leaf_modules_import_no_stage() {
    let mut broken = Vec::new();
    for (leaf, allowed) in LEAVES {
        for (file, m) in imports_of(leaf) {
            if m != leaf && !allowed.contains(&m.as_str()) {
                broken.push(format!("{} imports crate::{m}", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn no_stage_imports_the_node_or_the_control_plane() {
    let mut broken = Vec::new();
    for stage in STAGES {
        for (file, m) in imports_of(stage) {
            if m == "node" || m == "control" {
                broken.push(format!("{} imports crate::{m}", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_node_imports_neither_the_control_plane_nor_its_wiring() {
    let broken: Vec<String> = imports_of("node")
        .into_iter()
        .filter(|(_, m)| m == "control" || m == "start")
        .map(|(file, m)| format!("{} imports crate::{m}", file.display()))
        .collect();
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// A source file's module path: `src/a/b.rs` and `src/a/b/mod.rs` are `["a", "b"]`.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Every path a file names through `crate::`, `super::` or `self::` (in `use` lists too),
/// outside comments and its `mod tests`, each as module path parts from the crate root.
fn named_paths(text: &str, here: &[String]) -> Vec<Vec<String>> {
    let text = without_tests(text);
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut paths = Vec::new();
    for part in code.split("use ").skip(1) {
        let statement: String = part
            .split(';')
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        expand(&statement, &mut paths);
    }
    for (at, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        let path: String = code[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        paths.push(path);
    }
    paths
        .iter()
        .filter_map(|p| {
            let p = p.split(" as ").next().unwrap_or(p);
            let mut parts: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
            let mut base: Vec<String> = match parts.first() {
                Some(&"crate") => vec![],
                Some(&"super") => here[..here.len().saturating_sub(1)].to_vec(),
                Some(&"self") => here.to_vec(),
                _ => return None,
            };
            parts.remove(0);
            while parts.first() == Some(&"super") {
                base.pop();
                parts.remove(0);
            }
            base.extend(parts.iter().map(|s| (*s).to_owned()));
            Some(base)
        })
        .collect()
}

/// `text` up to its `mod tests` (with the attributes before it).
fn without_tests(text: &str) -> &str {
    let mut at = 0;
    while let Some(found) = text[at..].find("\n#[cfg(test)]\n") {
        let start = at + found + 1;
        let after = text[start..]
            .lines()
            .find(|l| !l.starts_with("#["))
            .unwrap_or("");
        if after.starts_with("mod tests") {
            return &text[..start];
        }
        at = start;
    }
    text
}

/// `a::{b, c::{d}}` as `a::b` and `a::c::d`.
fn expand(path: &str, out: &mut Vec<String>) {
    let Some(open) = path.find('{') else {
        out.push(path.to_owned());
        return;
    };
    let prefix = &path[..open];
    for item in top_level_items(&path[open + 1..]) {
        if !item.is_empty() {
            expand(&format!("{prefix}{item}"), out);
        }
    }
}

/// Which file imports which (each a module path), as named in the code.
fn file_edges() -> Edges {
    let files = files_of_crate();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(f)).collect();
    // Each file, and the files it imports: the longest module path of a file that a named
    // path starts with.
    let mut edges = Edges::new();
    for file in &files {
        let here = module_path(file);
        let text = std::fs::read_to_string(file).unwrap();
        let targets = edges.entry(here.clone()).or_default();
        for path in named_paths(&text, &here) {
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains(p));
            if let Some(t) = target.filter(|t| *t != here) {
                targets.insert(t);
            }
        }
    }
    edges
}

#[test]
fn no_source_file_imports_itself_through_others() {
    let circles = circles(&file_edges());
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

/// The same one level up: the crate's top-level modules (`cluster/`, `ingest/`, `limits.rs`,
/// …) as whole stages. A stage that imports another which imports it back is a circle even
/// when no single file closes it.
#[test]
fn no_stage_imports_itself_through_other_stages() {
    let mut stages = Edges::new();
    for (file, targets) in file_edges() {
        let Some(from) = file.first() else { continue };
        let entry = stages.entry(vec![from.clone()]).or_default();
        for t in targets.iter().filter_map(|t| t.first()) {
            if t != from {
                entry.insert(vec![t.clone()]);
            }
        }
    }
    let circles = circles(&stages);
    assert!(
        circles.is_empty(),
        "import circles between stages:\n{}",
        circles.join("\n")
    );
}

type Edges = std::collections::BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

/// Each file that reaches itself through `edges`, with one route, as `a -> b -> a`.
fn circles(edges: &Edges) -> Vec<String> {
    let mut circles = Vec::new();
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<Vec<Vec<String>>> = vec![vec![start.clone()]];
        while let Some(route) = stack.pop() {
            let last = route.last().unwrap();
            for next in edges.get(last).into_iter().flatten() {
                if next == start {
                    let names: Vec<String> = route.iter().map(|m| m.join("/")).collect();
                    circles.push(format!("{} -> {}", names.join(" -> "), start.join("/")));
                } else if seen.insert(next.clone()) {
                    let mut longer = route.clone();
                    longer.push(next.clone());
                    stack.push(longer);
                }
            }
        }
    }
    circles.sort();
    circles.dedup();
    circles
}

#[test]
fn the_circle_finder_finds_a_circle_and_only_that() {
    let m = |s: &str| s.split('/').map(str::to_owned).collect::<Vec<_>>();
    let mut edges = Edges::new();
    edges.entry(m("a")).or_default().insert(m("b/c"));
    edges.entry(m("b/c")).or_default().insert(m("d"));
    edges.entry(m("d")).or_default().insert(m("a"));
    edges.entry(m("e")).or_default().insert(m("a"));
    assert_eq!(
        circles(&edges),
        [
            "a -> b/c -> d -> a",
            "b/c -> d -> a -> b/c",
            "d -> a -> b/c -> d"
        ]
    );
    edges.entry(m("d")).or_default().clear();
    assert!(circles(&edges).is_empty());
}

#[test]
fn the_circle_finder_resolves_paths_as_rust_does() {
    let here = vec!["control".to_owned(), "mounts".to_owned()];
    let text = "use super::Control;\nuse crate::model::{edit::Known, MountConfig};\nlet x = super::super::http::send(1);";
    let mut got = named_paths(text, &here);
    got.sort();
    let want: Vec<Vec<String>> = vec![
        vec!["control".into(), "Control".into()],
        vec!["http".into(), "send".into()],
        vec!["model".into(), "MountConfig".into()],
        vec!["model".into(), "edit".into(), "Known".into()],
    ];
    assert!(want.iter().all(|w| got.contains(w)), "{got:?}");
}

/// Every `.rs` file of the library (not the binary).
fn files_of_crate() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![src()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.ends_with("bin") {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}

/// The longest a function may be, outside tests, in lines from its `fn` to its closing brace.
const MAX_FUNCTION_LINES: usize = 120;
/// The longest a source file may be, but the codec framing (splitters and their tables).
const MAX_FILE_LINES: usize = 900;

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}

/// The source files of the library, the binary, the codecs and the benches' programs.
fn product_files() -> Vec<PathBuf> {
    let root = src().join("../..").canonicalize().unwrap();
    ["host/src", "codecs/src", "benches/src"]
        .iter()
        .flat_map(|d| rust_files(&root.join(d)))
        .collect()
}

/// The functions of `text` (outside its `mod tests`) longer than `max` lines, as `name (n lines)`.
fn long_functions(text: &str, max: usize) -> Vec<String> {
    let lines: Vec<&str> = without_tests(text).lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let Some(at) = code.find("fn ") else { continue };
        let before = code[..at].trim();
        let is_fn = before.is_empty()
            || before.split_whitespace().all(|w| {
                matches!(w, "pub" | "async" | "const" | "unsafe" | "extern")
                    || w.starts_with("pub(")
            });
        if !is_fn {
            continue;
        }
        let name: String = code[at + 3..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let (mut depth, mut opened) = (0i64, false);
        for (j, l) in lines.iter().enumerate().skip(i) {
            let code = l.split("//").next().unwrap_or("");
            for c in code.chars() {
                match c {
                    '{' => (depth, opened) = (depth + 1, true),
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if !opened && code.trim_end().ends_with(';') {
                break;
            }
            if opened && depth <= 0 {
                if j - i + 1 > max {
                    out.push(format!("{name} ({} lines)", j - i + 1));
                }
                break;
            }
        }
    }
    out
}

#[test]
fn no_function_is_over_120_lines_and_no_file_over_900() {
    let mut broken = Vec::new();
    for file in product_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for f in long_functions(&text, MAX_FUNCTION_LINES) {
            broken.push(format!("{}: fn {f}", file.display()));
        }
        let n = text.lines().count();
        if n > MAX_FILE_LINES && !file.ends_with("codecs/src/framing.rs") {
            broken.push(format!("{}: {n} lines", file.display()));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_function_measure_counts_from_fn_to_its_brace() {
    let body = "    x += 1;\n".repeat(3);
    let text = format!("pub(crate) async fn short() {{\n{body}}}\n\nfn longer(a: u8) -> u8 {{\n    if a > 0 {{\n{body}    }}\n    a\n}}\n");
    assert_eq!(long_functions(&text, 5), ["longer (8 lines)"]);
    assert!(long_functions(&text, 8).is_empty());
    assert!(long_functions("trait T {\n    fn f(&self);\n}\n", 0).is_empty());
}

#[test]
fn the_import_reader_sees_every_form() {
    let text = "use crate::sync::Locked;\nuse crate::{auth, plugin::{Host, Kind}, hooks};\n// crate::node in a comment\nlet x = crate::media::validate_key(k);";
    let got: Vec<String> = crate_imports(text).into_iter().collect();
    assert_eq!(got, ["auth", "hooks", "media", "plugin", "sync"]);
}
