//! `tidecast export` and `tidecast apply -f`: the configuration as TOML files, kept in Git. The
//! node speaks JSON (`control/apply.rs`); here the files are read, their secrets resolved from
//! the environment or from files, plugin files pushed, and the node's plan printed. Also
//! `tidecast backup` and `restore` (`control/backup.rs`): the whole store in one file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{Map, Value};

use crate::cli::{escaped, Api, Connection};

/// What `tidecast export` writes first; part of the output, so export → apply → export gives
/// the same bytes.
const HEADER: &str = "# tidecast configuration (`tidecast export`); apply with `tidecast apply -f FILE`.\n# Secrets are not here: source passwords as hashes, token keys by their SHA-256.\n\n";

/// `tidecast export [-o FILE]`.
pub fn export(conn: &Connection, output: Option<PathBuf>) -> anyhow::Result<()> {
    let v = Api::new(conn)?.call("GET", "/api/v1/config", None)?;
    let text = format!(
        "{HEADER}{}",
        toml::to_string(&v).context("the configuration does not fit TOML")?
    );
    match output {
        Some(path) => std::fs::write(&path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

/// The TOML files `path` names: itself, or the `.toml` files of a directory in name order.
fn files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot read the directory {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    all.sort();
    if all.is_empty() {
        bail!("{} holds no .toml file", path.display());
    }
    Ok(all)
}

/// Reads the secret a `NAME_env` or `NAME_file` key of `entry` points at into `NAME` (a file
/// path relative to the TOML file's directory).
fn resolve_secret(
    entry: &mut Map<String, Value>,
    name: &str,
    dir: &Path,
    problems: &mut Vec<String>,
    at: &str,
) {
    if entry.contains_key(name) {
        problems.push(format!(
            "{at}: {name} is never written in a file: give {name}_env or {name}_file"
        ));
        return;
    }
    let env = entry.remove(&format!("{name}_env"));
    let file = entry.remove(&format!("{name}_file"));
    let value = match (env, file) {
        (None, None) => return,
        (Some(_), Some(_)) => {
            problems.push(format!("{at}: give {name}_env or {name}_file, not both"));
            return;
        }
        (Some(Value::String(var)), None) => match std::env::var(&var) {
            Ok(v) if !v.is_empty() => v,
            _ => {
                problems.push(format!("{at}: {name}_env names {var}, which is not set"));
                return;
            }
        },
        (None, Some(Value::String(f))) => {
            let p = dir.join(&f);
            match std::fs::read_to_string(&p) {
                Ok(v) if !v.trim_end_matches(['\n', '\r']).is_empty() => {
                    v.trim_end_matches(['\n', '\r']).to_owned()
                }
                Ok(_) => {
                    problems.push(format!("{at}: {name}_file {} is empty", p.display()));
                    return;
                }
                Err(e) => {
                    problems.push(format!("{at}: {name}_file {}: {e}", p.display()));
                    return;
                }
            }
        }
        _ => {
            problems.push(format!("{at}: {name}_env and {name}_file are strings"));
            return;
        }
    };
    entry.insert(name.to_owned(), Value::String(value));
}

/// `tidecast apply -f PATH [--dry-run] [--prune]`.
pub fn apply(conn: &Connection, path: &Path, dry_run: bool, prune: bool) -> anyhow::Result<()> {
    let api = Api::new(conn)?;
    let (mut doc, pushes) = read_declared(path)?;
    push_plugins(&api, pushes, dry_run, &mut doc)?;
    let query = format!(
        "/api/v1/apply?dry_run={}&prune={}",
        u8::from(dry_run),
        u8::from(prune)
    );
    let answer = api.call("POST", &query, Some(Value::Object(doc)))?;
    if conn.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    print_plan(&answer);
    Ok(())
}

/// A plugin file to push before applying: the plugin's name, the file, its bytes.
type Push = (String, PathBuf, Vec<u8>);

/// Reads the files `path` names into one document for the node, with their secrets resolved
/// and the plugin files to push; fails, naming every problem, if any file has one.
fn read_declared(path: &Path) -> anyhow::Result<(Map<String, Value>, Vec<Push>)> {
    let mut doc: Map<String, Value> = Map::new();
    let mut problems = Vec::new();
    let mut pushes: Vec<Push> = Vec::new();
    for file in files(path)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let table: Value = match toml::from_str::<toml::Table>(&text) {
            Ok(t) => serde_json::to_value(t)?,
            Err(e) => {
                problems.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        let Value::Object(table) = table else {
            continue;
        };
        for (section, value) in table {
            let Value::Array(list) = value else {
                problems.push(format!(
                    "{}: {section} must be a list of tables ([[{section}]])",
                    file.display()
                ));
                continue;
            };
            let mut out = Vec::new();
            for entry in list {
                let Value::Object(entry) = entry else {
                    problems.push(format!("{}: {section} holds a non-table", file.display()));
                    continue;
                };
                out.push(read_entry(
                    entry,
                    &file,
                    &section,
                    &mut problems,
                    &mut pushes,
                ));
            }
            if let Some(Value::Array(existing)) = doc.get_mut(&section) {
                existing.extend(out);
            } else {
                doc.insert(section, Value::Array(out));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "nothing was changed; {} problem(s) in the files:\n  - {}",
            problems.len(),
            problems.join("\n  - ")
        );
    }
    Ok((doc, pushes))
}

/// One entry of a `[[section]]` of `file`, as the node takes it: a mount's secrets read, a
/// plugin's file replaced by its hash (and kept in `pushes`).
fn read_entry(
    mut entry: Map<String, Value>,
    file: &Path,
    section: &str,
    problems: &mut Vec<String>,
    pushes: &mut Vec<Push>,
) -> Value {
    let id = entry
        .get("path")
        .or_else(|| entry.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    let at = format!("{}: {section} {id}", file.display());
    let dir = file.parent().unwrap_or(Path::new("."));
    match section {
        "mounts" => {
            resolve_secret(&mut entry, "source_password", dir, problems, &at);
            resolve_secret(&mut entry, "token_key", dir, problems, &at);
        }
        "plugins" => {
            if let Some(Value::String(f)) = entry.remove("file") {
                let p = dir.join(f);
                match std::fs::read(&p) {
                    Ok(bytes) => {
                        let hash = tidecast::plugin::Plugins::hash(&bytes);
                        entry.insert("sha256".to_owned(), Value::String(hash));
                        pushes.push((id.clone(), p, bytes));
                    }
                    Err(e) => problems.push(format!("{at}: {}: {e}", p.display())),
                }
            }
        }
        _ => {}
    }
    Value::Object(entry)
}

/// Pushes the plugin files whose content the node does not hold as their current version
/// (checked and compiled there): configuration can only name stored plugins. With `dry_run`,
/// says what it would push and leaves those plugins out of `doc`.
fn push_plugins(
    api: &Api,
    pushes: Vec<Push>,
    dry_run: bool,
    doc: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    for (name, file, bytes) in pushes {
        let hash = tidecast::plugin::Plugins::hash(&bytes);
        let stored = api
            .call("GET", &format!("/api/v1/plugins/{}", escaped(&name)), None)
            .ok()
            .and_then(|v| v["versions"].as_array().cloned())
            .and_then(|versions| versions.last().cloned())
            .and_then(|v| v["hash"].as_str().map(str::to_owned));
        if stored.as_deref() == Some(hash.as_str()) {
            continue;
        }
        if dry_run {
            println!(
                "+ plugin {name}: push {} (sha256 {})",
                file.display(),
                &hash[..12]
            );
            // The node checks the rest against what it stores now.
            if let Some(Value::Array(list)) = doc.get_mut("plugins") {
                list.retain(|p| p["name"].as_str() != Some(name.as_str()));
            }
            continue;
        }
        api.send_bytes(
            "POST",
            &format!("/api/v1/plugins/{}", escaped(&name)),
            bytes,
        )?;
        println!(
            "+ plugin {name}: pushed {} (sha256 {})",
            file.display(),
            &hash[..12]
        );
    }
    Ok(())
}

/// The node's plan as text: each change with its fields, what stays undeclared, and a total.
fn print_plan(answer: &Value) {
    let changes = answer["changes"].as_array().cloned().unwrap_or_default();
    let mut counts = [0usize; 3];
    for c in &changes {
        let (sign, slot) = match c["op"].as_str() {
            Some("create") => ("+", 0),
            Some("update") => ("~", 1),
            _ => ("-", 2),
        };
        counts[slot] += 1;
        println!(
            "{sign} {} {}",
            c["kind"].as_str().unwrap_or(""),
            c["name"].as_str().unwrap_or("")
        );
        for f in c["fields"].as_array().into_iter().flatten() {
            println!("    {}", f.as_str().unwrap_or(""));
        }
    }
    for u in answer["unmanaged"].as_array().into_iter().flatten() {
        println!(
            "  {} is not declared and stays (--prune removes it)",
            u.as_str().unwrap_or("")
        );
    }
    if changes.is_empty() {
        println!("No changes: the configuration already matches the files.");
    } else if answer["applied"].as_bool() == Some(true) {
        println!(
            "Applied in one transaction: {} created, {} changed, {} removed.",
            counts[0], counts[1], counts[2]
        );
    } else {
        println!(
            "Plan: {} to create, {} to change, {} to remove. Nothing was changed (--dry-run).",
            counts[0], counts[1], counts[2]
        );
    }
}

/// `tidecast backup [-o FILE]`: the whole store, as JSON, in a file only its owner reads.
pub fn backup(conn: &Connection, output: Option<PathBuf>) -> anyhow::Result<()> {
    let v = Api::new(conn)?.call("GET", "/api/v1/backup", None)?;
    let text = serde_json::to_string_pretty(&v)?;
    let Some(path) = output else {
        println!("{text}");
        return Ok(());
    };
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let count = |k: &str| v[k].as_array().map_or(0, Vec::len);
    eprintln!(
        "Backed up {} mounts, {} stations, {} plugins ({} versions with their bytes), {} playlist positions and {} media index entries to {} (it holds password hashes and token keys: keep it private)",
        count("mounts"),
        count("stations"),
        count("plugins"),
        v["blobs"].as_object().map_or(0, Map::len),
        v["positions"].as_object().map_or(0, Map::len),
        count("media"),
        path.display()
    );
    Ok(())
}

/// `tidecast restore FILE`: makes the store what the backup holds.
pub fn restore(conn: &Connection, file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let v = Api::new(conn)?.send_json_bytes("/api/v1/restore", bytes)?;
    if conn.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "Restored {} mounts, {} stations and {} plugins ({} plugin versions added, {} mounts and stations changed), {} playlist positions, {} media index entries",
        v["mounts"], v["stations"], v["plugins"], v["plugin_versions_added"], v["changes"], v["positions"], v["media"]
    );
    Ok(())
}
