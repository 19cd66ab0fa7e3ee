//! `tidecast station …`: stations group mounts that share listener routing (a policy plugin,
//! a routing chain, limits); declare, list, show, change, remove and restart them
//! (`/api/v1/stations`).

use serde_json::{json, Value};

use super::{escaped, print_fields, Api, Connection};

/// What stations share: listener routing.
#[derive(clap::Args, Debug)]
pub struct StationSettings {
    /// The listener-selection policy plugin of the station's mounts, NAME[:key=value,...]
    /// ("" detaches it).
    #[arg(long, value_name = "NAME[:key=value,...]")]
    policy: Option<String>,
    /// The native routing chain of the station's mounts ("" returns to the node's --routing).
    #[arg(long, value_name = "STEP,...")]
    routing: Option<String>,
    /// Most transcoded and playlist mounts the station may have (0: no limit).
    #[arg(long, value_name = "N")]
    max_transcodes: Option<u32>,
    /// Memory of each of the station's plugin instances, in MiB (at most the node's; 0: the node's).
    #[arg(long, value_name = "MIB")]
    plugin_memory_mb: Option<u32>,
    /// Longest call of the station's policies and title hooks, in ms (at most the node's; 0: the node's).
    #[arg(long, value_name = "MS")]
    plugin_call_ms: Option<u32>,
}

#[derive(clap::Subcommand, Debug)]
pub enum StationCommand {
    /// Declare a station; mounts join it with `tidecast mount edit M --station NAME`.
    Create {
        name: String,
        #[command(flatten)]
        settings: StationSettings,
    },
    /// List stations and their mounts.
    List,
    /// Show one station.
    Show { name: String },
    /// Change a station's policy or routing chain.
    Edit {
        name: String,
        #[command(flatten)]
        settings: StationSettings,
    },
    /// Remove a station that has no mounts left.
    Rm { name: String },
    /// Restart the station's transcoders, playlists, relay mounts and plugin instances on every
    /// node, and nothing of any other station.
    Restart { name: String },
}

pub fn station(conn: &Connection, command: StationCommand) -> anyhow::Result<()> {
    let api = Api::new(conn)?;
    let body = |name: Option<&str>, s: StationSettings| {
        let mut b = json!({});
        if let Some(n) = name {
            b["name"] = json!(n);
        }
        if let Some(p) = s.policy {
            b["policy"] = json!(p);
        }
        if let Some(r) = s.routing {
            b["routing"] = json!(r);
        }
        for (key, value) in [
            ("max_transcodes", s.max_transcodes),
            ("plugin_memory_mb", s.plugin_memory_mb),
            ("plugin_call_ms", s.plugin_call_ms),
        ] {
            if let Some(n) = value {
                b[key] = json!(n);
            }
        }
        b
    };
    let item = |name: &str| format!("/api/v1/stations/{}", escaped(name));
    let (v, done) = match command {
        StationCommand::Create { name, settings } => {
            let v = api.call(
                "POST",
                "/api/v1/stations",
                Some(body(Some(&name), settings)),
            )?;
            (v, format!("Created station {name}"))
        }
        StationCommand::List => {
            let v = api.call("GET", "/api/v1/stations", None)?;
            if !conn.json {
                let rows = v.as_array().cloned().unwrap_or_default();
                if rows.is_empty() {
                    println!("No stations. Create one with `tidecast station create NAME`.");
                }
                for s in rows {
                    println!(
                        "{:<20} policy {:<20} routing {:<40} mounts {}",
                        s["name"].as_str().unwrap_or(""),
                        s["policy"].as_str().unwrap_or("-"),
                        s["routing"].as_str().unwrap_or(""),
                        s["mounts"]
                            .as_array()
                            .map(|m| m
                                .iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(", "))
                            .unwrap_or_default()
                    );
                }
                return Ok(());
            }
            (v, String::new())
        }
        StationCommand::Show { name } => {
            let v = api.call("GET", &item(&name), None)?;
            if !conn.json {
                print_fields(&v);
                return Ok(());
            }
            (v, String::new())
        }
        StationCommand::Edit { name, settings } => {
            let v = api.call("PATCH", &item(&name), Some(body(None, settings)))?;
            (v, format!("Updated station {name}"))
        }
        StationCommand::Rm { name } => {
            let v = api.call("DELETE", &item(&name), None)?;
            (v, format!("Removed station {name}"))
        }
        StationCommand::Restart { name } => {
            let v = api.call("POST", &format!("{}/restart", item(&name)), None)?;
            let mut done = format!("Restarted station {name}");
            for n in v["nodes"].as_array().into_iter().flatten() {
                let node = n["node"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("this node");
                let what: Vec<String> = n["restarted"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        format!(
                            "{} ({})",
                            r["mount"].as_str().unwrap_or(""),
                            r["kind"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                done.push_str(&match n["error"].as_str() {
                    Some(e) => format!("\n  {node}: {e}"),
                    None if what.is_empty() => format!("\n  {node}: nothing of it runs here"),
                    None => format!("\n  {node}: {}", what.join(", ")),
                });
            }
            (v, done)
        }
    };
    if conn.json || done.is_empty() {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{done}");
    }
    Ok(())
}
