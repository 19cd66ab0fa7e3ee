//! ARCHITECTURE.md's import claims, checked against the source: the leaf modules (`http`, `tls`,
//! `model`, `hub`) import no stage, and no stage of the data path imports the node or the
//! control plane, which sit on top. A file that breaks a claim is named with the import.

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
const STAGES: [&str; 9] = [
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
fn the_import_reader_sees_every_form() {
    let text = "use crate::sync::Locked;\nuse crate::{auth, plugin::{Host, Kind}, hooks};\n// crate::node in a comment\nlet x = crate::media::validate_key(k);";
    let got: Vec<String> = crate_imports(text).into_iter().collect();
    assert_eq!(got, ["auth", "hooks", "media", "plugin", "sync"]);
}
