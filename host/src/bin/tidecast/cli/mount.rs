//! `tidecast mount …`: declare, list, show, change and remove mounts, list a mount's
//! listeners, and sign URLs for the mounts that need them (`/api/v1/mounts`).

use serde_json::json;

use tidecast::model::MountSettings;

use super::{escaped, print_fields, print_json, Api, Connection};

#[derive(clap::Subcommand, Debug)]
pub enum MountCommand {
    /// Declare a mount and print its source credentials.
    Create {
        /// Mount path, e.g. /live.mp3
        path: String,
        #[command(flatten)]
        settings: MountSettings,
    },
    /// List declared mounts with their live state.
    List,
    /// Show one mount.
    Show { path: String },
    /// Change a mount's settings or source password.
    Edit {
        path: String,
        #[command(flatten)]
        settings: MountSettings,
    },
    /// Remove a mount (a connected source is disconnected).
    Delete { path: String },
    /// List this node's listeners of a mount: address, user name, player, time connected.
    Listeners { path: String },
    /// Print a signed URL for a mount that needs one (--token-key): valid for --seconds, and
    /// only from --ip if given.
    Token {
        path: String,
        /// How long the URL stays valid.
        #[arg(long, default_value_t = 3600)]
        seconds: u64,
        /// Bind the URL to the listener's address.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
    },
}

pub fn mount(conn: &Connection, command: MountCommand) -> anyhow::Result<()> {
    let api = Api::new(conn)?;
    match command {
        MountCommand::Create { path, settings } => create(&api, conn, path, settings),
        MountCommand::List => list(&api, conn),
        MountCommand::Show { path } => show(&api, conn, &path),
        MountCommand::Edit { path, settings } => edit(&api, conn, &path, settings),
        MountCommand::Token { path, seconds, ip } => token(&api, conn, &path, seconds, ip),
        MountCommand::Listeners { path } => listeners(&api, conn, &path),
        MountCommand::Delete { path } => delete(&api, conn, &path),
    }
}

/// A mount's URL in the API, from its path.
fn item_url(path: &str) -> String {
    let rest = path.strip_prefix('/').unwrap_or(path);
    format!("/api/v1/mounts/{}", escaped(rest))
}

/// `tidecast mount create`: declares the mount, then says where to listen and, for a source
/// mount, how to push to it with its credentials.
fn create(
    api: &Api,
    conn: &Connection,
    path: String,
    mut settings: MountSettings,
) -> anyhow::Result<()> {
    settings.path = Some(path.clone());
    let v = api.call("POST", "/api/v1/mounts", Some(settings.to_json()))?;
    if conn.json {
        return print_json(&v);
    }
    if !v["transcode"].is_null() {
        let t = &v["transcode"];
        println!(
            "Created transcoded mount {path}: {} {} kbit/s from {}",
            t["codec"].as_str().unwrap_or(""),
            t["bitrate_kbps"],
            t["from"].as_str().unwrap_or("")
        );
        println!("  listen at: {}{path}", conn.server.trim_end_matches('/'));
        return Ok(());
    }
    if !v["playlist"].is_null() {
        let p = &v["playlist"];
        println!(
            "Created playlist mount {path}: plays {} ({}) as {} {} kbit/s",
            p["input"].as_str().unwrap_or(""),
            p["order"].as_str().unwrap_or("sequential"),
            p["codec"].as_str().unwrap_or(""),
            p["bitrate_kbps"],
        );
        println!("  listen at: {}{path}", conn.server.trim_end_matches('/'));
        return Ok(());
    }
    if !v["relay"].is_null() {
        let urls: Vec<&str> = v["relay"]["urls"]
            .as_array()
            .map(|a| a.iter().filter_map(|u| u.as_str()).collect())
            .unwrap_or_default();
        println!("Created relay mount {path}: pulls {}", urls.join(", then "));
        println!("  listen at: {}{path}", conn.server.trim_end_matches('/'));
        return Ok(());
    }
    let user = v["source_user"].as_str().unwrap_or("source");
    let pass = v["password"].as_str().unwrap_or("");
    let host = conn
        .server
        .trim_start_matches("http://")
        .trim_end_matches('/');
    println!("Created mount {path}");
    println!("  source user:     {user}");
    println!("  source password: {pass}   (shown once; stored hashed)");
    println!(
        "  push with:       ffmpeg -re -i input.mp3 -c copy -content_type audio/mpeg -f mp3 icecast://{user}:{pass}@{host}{path}"
    );
    println!(
        "  listen at:       {}{path}",
        conn.server.trim_end_matches('/')
    );
    Ok(())
}

/// `tidecast mount list`: the declared mounts, one a line, with their live state.
fn list(api: &Api, conn: &Connection) -> anyhow::Result<()> {
    let v = api.call("GET", "/api/v1/mounts", None)?;
    if conn.json {
        return print_json(&v);
    }
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("No mounts. Create one with `tidecast mount create /live.mp3`.");
        return Ok(());
    }
    println!(
        "{:<32} {:<6} {:>9}  {:<16} FALLBACK",
        "MOUNT", "LIVE", "LISTENERS", "TYPE"
    );
    for m in rows {
        println!(
            "{:<32} {:<6} {:>9}  {:<16} {}",
            m["path"].as_str().unwrap_or(""),
            if m["live"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                "no"
            },
            m["listeners"].as_u64().unwrap_or(0),
            m["content_type"].as_str().unwrap_or("-"),
            m["fallback"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}

/// `tidecast mount show`: one mount's fields.
fn show(api: &Api, conn: &Connection, path: &str) -> anyhow::Result<()> {
    let v = api.call("GET", &item_url(path), None)?;
    if conn.json {
        return print_json(&v);
    }
    print_fields(&v);
    Ok(())
}

/// `tidecast mount edit`: changes the settings given, then shows the mount.
fn edit(api: &Api, conn: &Connection, path: &str, settings: MountSettings) -> anyhow::Result<()> {
    let v = api.call("PATCH", &item_url(path), Some(settings.to_json()))?;
    if conn.json {
        return print_json(&v);
    }
    println!("Updated mount {path}");
    print_fields(&v);
    Ok(())
}

/// `tidecast mount token`: prints a signed URL for the mount.
fn token(
    api: &Api,
    conn: &Connection,
    path: &str,
    seconds: u64,
    ip: Option<std::net::IpAddr>,
) -> anyhow::Result<()> {
    let body = json!({ "seconds": seconds, "ip": ip });
    let v = api.call("POST", &format!("{}/token", item_url(path)), Some(body))?;
    if conn.json {
        return print_json(&v);
    }
    println!("{}", v["url"].as_str().unwrap_or(""));
    Ok(())
}

/// `tidecast mount listeners`: this node's listeners of the mount, one a line.
fn listeners(api: &Api, conn: &Connection, path: &str) -> anyhow::Result<()> {
    let v = api.call("GET", &format!("{}/listeners", item_url(path)), None)?;
    if conn.json {
        return print_json(&v);
    }
    let rows = v.as_array().cloned().unwrap_or_default();
    println!(
        "{:>6}  {:<39} {:<16} {:>9}  AGENT",
        "ID", "ADDRESS", "USER", "SECONDS"
    );
    for l in &rows {
        println!(
            "{:>6}  {:<39} {:<16} {:>9}  {}",
            l["id"].as_u64().unwrap_or(0),
            l["ip"].as_str().unwrap_or(""),
            l["user"].as_str().unwrap_or("-"),
            l["connected_secs"].as_u64().unwrap_or(0),
            l["user_agent"].as_str().unwrap_or(""),
        );
    }
    println!("{} listener(s) on this node", rows.len());
    Ok(())
}

/// `tidecast mount delete`: removes the mount.
fn delete(api: &Api, conn: &Connection, path: &str) -> anyhow::Result<()> {
    let v = api.call("DELETE", &item_url(path), None)?;
    if conn.json {
        return print_json(&v);
    }
    println!("Deleted mount {path}");
    Ok(())
}
