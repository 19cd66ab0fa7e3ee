//! `tidecast plugin …`: upload WebAssembly plugins (filters and listener policies), list,
//! show and remove them, and dry-run a policy's ranking (`/api/v1/plugins`).

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::{escaped, print_fields, print_json, Api, Connection};

#[derive(clap::Subcommand, Debug)]
pub enum PluginCommand {
    /// Upload a plugin (a .wasm component) as NAME, or a new version of NAME. Mounts that attach
    /// NAME switch to it at once, without a gap.
    Push {
        name: String,
        /// The component, e.g. target/wasm32-wasip2/release/my_filter.wasm
        file: std::path::PathBuf,
    },
    /// List uploaded plugins.
    List,
    /// Show a plugin: versions, where it is attached, how its running instances do.
    Show { name: String },
    /// Remove a plugin and all its versions (it must not be attached anywhere).
    Rm { name: String },
    /// Dry-run a policy plugin on sample nodes of varied load: the ranking it gives, or the native
    /// ranking when it fails (with the failure).
    Rank {
        name: String,
        /// Number of sample nodes.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// The listener's address.
        #[arg(long)]
        client: Option<String>,
        /// The listener's User-Agent.
        #[arg(long)]
        user_agent: Option<String>,
        /// Parameters, key=value,...
        #[arg(long)]
        params: Option<String>,
    },
}

pub fn plugin(conn: &Connection, command: PluginCommand) -> anyhow::Result<()> {
    let api = Api::new(conn)?;
    match command {
        PluginCommand::Push { name, file } => push(&api, conn, &name, &file),
        PluginCommand::List => list(&api, conn),
        PluginCommand::Show { name } => show(&api, conn, &name),
        PluginCommand::Rank {
            name,
            nodes,
            client,
            user_agent,
            params,
        } => {
            let body = json!({
                "nodes": nodes, "client_address": client, "user_agent": user_agent, "params": params,
            });
            rank(&api, conn, &name, body)
        }
        PluginCommand::Rm { name } => rm(&api, conn, &name),
    }
}

/// A plugin's URL in the API, from its name.
fn item_url(name: &str) -> String {
    format!("/api/v1/plugins/{}", escaped(name))
}

/// `tidecast plugin push`: uploads the file, then says how it did and where it runs (or how
/// to attach it).
fn push(api: &Api, conn: &Connection, name: &str, file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let max = tidecast::plugin::MAX_PLUGIN_BYTES;
    if bytes.len() > max {
        bail!(
            "{} is {} bytes, larger than the limit of {max} bytes for a plugin (build with --release; strip debug info)",
            file.display(),
            bytes.len()
        );
    }
    let v = api.send_bytes("POST", &item_url(name), bytes)?;
    if conn.json {
        return print_json(&v);
    }
    println!(
        "Pushed {name}: {} plugin, version {} ({} bytes, {}, compiled in {:.0} ms{})",
        v["kind"].as_str().unwrap_or("?"),
        v["version"].as_str().unwrap_or("").get(..12).unwrap_or(""),
        v["size"],
        v["wit"].as_str().unwrap_or(""),
        v["compile_ms"].as_f64().unwrap_or(0.0),
        if v["cached"].as_bool() == Some(true) {
            ", cached"
        } else {
            ""
        },
    );
    println!("  smoke test: {}", v["smoke"].as_str().unwrap_or(""));
    let users: Vec<&str> = v["attached_to"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m.as_str()).collect())
        .unwrap_or_default();
    if users.is_empty() {
        let flag = if v["kind"] == "policy" {
            "--policy"
        } else {
            "--filter"
        };
        println!("  attach with: tidecast mount edit MOUNT {flag} {name}[:key=value,...]");
    } else {
        println!("  now running on: {}", users.join(", "));
    }
    Ok(())
}

/// `tidecast plugin list`: the uploaded plugins, one a line.
fn list(api: &Api, conn: &Connection) -> anyhow::Result<()> {
    let v = api.call("GET", "/api/v1/plugins", None)?;
    if conn.json {
        return print_json(&v);
    }
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("No plugins. Upload one with `tidecast plugin push NAME FILE.wasm`.");
        return Ok(());
    }
    println!(
        "{:<24} {:<7} {:<13} {:>8} {:>9}  ATTACHED TO",
        "NAME", "KIND", "VERSION", "SIZE", "VERSIONS"
    );
    for p in rows {
        println!(
            "{:<24} {:<7} {:<13} {:>8} {:>9}  {}",
            p["name"].as_str().unwrap_or(""),
            p["kind"].as_str().unwrap_or(""),
            p["version"].as_str().unwrap_or("").get(..12).unwrap_or(""),
            p["size"].as_u64().unwrap_or(0),
            p["versions"].as_u64().unwrap_or(0),
            p["attached_to"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

/// `tidecast plugin show`: one plugin's fields.
fn show(api: &Api, conn: &Connection, name: &str) -> anyhow::Result<()> {
    let v = api.call("GET", &item_url(name), None)?;
    if conn.json {
        return print_json(&v);
    }
    print_fields(&v);
    Ok(())
}

/// `tidecast plugin rank`: the ranking the policy gives the sample `body` describes.
fn rank(api: &Api, conn: &Connection, name: &str, body: Value) -> anyhow::Result<()> {
    let v = api.call("POST", &format!("{}/rank", item_url(name)), Some(body))?;
    if conn.json {
        return print_json(&v);
    }
    let names: Vec<&str> = v["ranked"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
        .unwrap_or_default();
    println!(
        "ranked by the {} policy in {:.0} µs: {}",
        v["by"].as_str().unwrap_or("?"),
        v["micros"].as_f64().unwrap_or(0.0),
        names.join(", ")
    );
    if let Some(e) = v["plugin_error"].as_str() {
        println!("  the plugin failed: {e}");
    }
    Ok(())
}

/// `tidecast plugin rm`: removes the plugin and its versions.
fn rm(api: &Api, conn: &Connection, name: &str) -> anyhow::Result<()> {
    let v = api.call("DELETE", &item_url(name), None)?;
    if conn.json {
        return print_json(&v);
    }
    println!("Removed plugin {name}");
    Ok(())
}
