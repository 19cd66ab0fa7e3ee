//! `tidecast mount …` and `tidecast plugin …`: a small client for a node's admin API
//! (`/api/v1/mounts`, `/api/v1/plugins`).

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use serde_json::{json, Value};

use tidecast::http::client;

use tidecast::model::MountSettings;

#[derive(clap::Args, Debug)]
pub struct Connection {
    /// Base URL of a tidecast node.
    #[arg(
        long,
        global = true,
        env = "TIDECAST_SERVER",
        default_value = "http://127.0.0.1:8000"
    )]
    server: String,
    /// Admin user.
    #[arg(
        long,
        global = true,
        env = "TIDECAST_ADMIN_USER",
        default_value = "admin"
    )]
    admin_user: String,
    /// Admin password.
    #[arg(
        long,
        global = true,
        env = "TIDECAST_ADMIN_PASSWORD",
        hide_env_values = true
    )]
    admin_password: Option<String>,
    /// CA certificate (PEM) that an https:// --server's certificate must chain to [default: the
    /// system's CA bundle].
    #[arg(long, global = true, env = "TIDECAST_CA_CERT", value_name = "PEM")]
    ca_cert: Option<std::path::PathBuf>,
    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

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

#[derive(clap::Subcommand, Debug)]
pub enum MediaCommand {
    /// List the library's files (under FOLDER, if given).
    Ls { folder: Option<String> },
    /// Upload a file into the library, as KEY (default: its file name).
    Upload {
        file: std::path::PathBuf,
        /// The key in the library, e.g. rock/song.mp3.
        key: Option<String>,
    },
    /// Remove a file from the library.
    Rm { key: String },
    /// Read every audio file (under FOLDER) whole for its tags, duration and EBU R128
    /// loudness, and keep them in the store (playlists' --loudness-target uses them). Runs on
    /// the node; this follows its progress.
    Index { folder: Option<String> },
    /// Download a file through the node's cache (from a peer node or the bucket if the node
    /// does not hold it).
    Get {
        key: String,
        /// Where to write it [default: its file name].
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
    },
}

/// An upload or download of `size` bytes may take this long at 1 MB/s, beyond the usual wait.
fn transfer_wait(size: usize) -> Duration {
    WAIT + Duration::from_secs((size / 1_000_000) as u64)
}

pub fn media(conn: &Connection, command: MediaCommand) -> anyhow::Result<()> {
    let api = Api::new(conn)?;
    let result = match command {
        MediaCommand::Ls { folder } => {
            let path = match &folder {
                Some(f) => format!("/api/v1/media?prefix={}", escaped(f)),
                None => "/api/v1/media".to_owned(),
            };
            let v = api.call("GET", &path, None)?;
            if !conn.json {
                let files = v["files"].as_array().cloned().unwrap_or_default();
                for f in &files {
                    let info = &f["info"];
                    let indexed = if info.is_null() {
                        String::new()
                    } else {
                        let secs = info["duration_secs"].as_f64().unwrap_or(0.0) as u64;
                        let lufs = info["lufs"]
                            .as_f64()
                            .map_or("?".to_owned(), |l| format!("{l:.1}"));
                        let title = match (info["artist"].as_str(), info["title"].as_str()) {
                            (Some(a), Some(t)) => format!("{a} - {t}"),
                            (None, Some(t)) => t.to_owned(),
                            _ => String::new(),
                        };
                        format!("  {}:{:02}  {lufs} LUFS  {title}", secs / 60, secs % 60)
                    };
                    println!(
                        "{:>12}  {}  {}{indexed}",
                        f["size"],
                        f["modified"].as_str().unwrap_or("").get(..19).unwrap_or(""),
                        f["key"].as_str().unwrap_or("")
                    );
                }
                let total: u64 = files.iter().filter_map(|f| f["size"].as_u64()).sum();
                println!(
                    "{} files, {total} bytes in {}{}",
                    files.len(),
                    v["library"].as_str().unwrap_or(""),
                    if v["truncated"] == true {
                        " (list cut short)"
                    } else {
                        ""
                    }
                );
                return Ok(());
            }
            v
        }
        MediaCommand::Upload { file, key } => {
            let key = match key {
                Some(k) => k,
                None => file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("{} has no file name; give a KEY", file.display()))?,
            };
            tidecast::media::validate_key(&key)?;
            let size = std::fs::metadata(&file)
                .with_context(|| format!("cannot read {}", file.display()))?
                .len();
            let max = tidecast::control::media::MAX_MEDIA_BYTES;
            if size > max as u64 {
                bail!(
                    "{} is {size} bytes, more than the {max}-byte limit of one media file",
                    file.display()
                );
            }
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            if !conn.json {
                eprintln!("uploading {} ({size} bytes) as {key} …", file.display());
            }
            let started = std::time::Instant::now();
            let body = Some(("application/octet-stream", Bytes::from(bytes)));
            let path = format!("/api/v1/media/{}", escaped(&key));
            let v = api.runtime.block_on(api.send_waiting(
                "PUT",
                &path,
                body,
                transfer_wait(size as usize),
            ))?;
            if !conn.json {
                println!(
                    "Uploaded {key}: {} bytes in {:.1} s",
                    v["size"],
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            v
        }
        MediaCommand::Index { folder } => {
            let prefix = folder.unwrap_or_default();
            api.call(
                "POST",
                "/api/v1/media-index",
                Some(json!({ "prefix": prefix })),
            )?;
            let bar = indicatif::ProgressBar::new(0);
            if conn.json {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} files  {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let done = loop {
                let p = api.call("GET", "/api/v1/media-index", None)?;
                bar.set_length(p["total"].as_u64().unwrap_or(0));
                bar.set_position(p["done"].as_u64().unwrap_or(0));
                bar.set_message(p["current"].as_str().unwrap_or("").to_owned());
                if p["running"] != true {
                    break p;
                }
                std::thread::sleep(Duration::from_millis(300));
            };
            bar.finish_and_clear();
            if let Some(e) = done["error"].as_str() {
                bail!("the index stopped: {e}");
            }
            if !conn.json {
                let failed = done["failed"].as_array().cloned().unwrap_or_default();
                println!(
                    "Indexed {} of {} files{}",
                    done["done"].as_u64().unwrap_or(0) - failed.len() as u64,
                    done["total"],
                    if failed.is_empty() {
                        ""
                    } else {
                        "; these could not be read:"
                    }
                );
                for f in failed {
                    println!("  {}", f.as_str().unwrap_or(""));
                }
                return Ok(());
            }
            done
        }
        MediaCommand::Rm { key } => {
            let v = api.call("DELETE", &format!("/api/v1/media/{}", escaped(&key)), None)?;
            if !conn.json {
                println!("Removed {key}");
                return Ok(());
            }
            v
        }
        MediaCommand::Get { key, output } => {
            let out = output.unwrap_or_else(|| {
                std::path::PathBuf::from(key.rsplit('/').next().unwrap_or(&key))
            });
            let url = format!("{}/api/v1/media/{}", api.base, escaped(&key));
            let max = tidecast::control::media::MAX_MEDIA_BYTES;
            let bytes = api.runtime.block_on(async {
                let headers = [("authorization", api.auth.as_str())];
                let answer = api
                    .client
                    .get(&url, &headers, transfer_wait(max / 64))
                    .await
                    .map_err(|e| anyhow!("cannot reach a tidecast node at {}: {e}", api.base))?;
                let status = answer.status().as_u16();
                let body = client::body(answer, max, transfer_wait(max)).await?;
                if status != 200 {
                    let text = String::from_utf8_lossy(&body).into_owned();
                    let msg = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_owned))
                        .unwrap_or(text);
                    bail!("{msg} (HTTP {status})");
                }
                anyhow::Ok(body)
            })?;
            std::fs::write(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            if !conn.json {
                println!("Wrote {key} to {} ({} bytes)", out.display(), bytes.len());
                return Ok(());
            }
            serde_json::json!({ "key": key, "file": out, "size": bytes.len() })
        }
    };
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

pub fn plugin(conn: &Connection, command: PluginCommand) -> anyhow::Result<()> {
    let api = Api::new(conn)?;
    let result = match command {
        PluginCommand::Push { name, file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let max = tidecast::plugin::MAX_PLUGIN_BYTES;
            if bytes.len() > max {
                bail!(
                    "{} is {} bytes, larger than the limit of {max} bytes for a plugin (build with --release; strip debug info)",
                    file.display(),
                    bytes.len()
                );
            }
            let v = api.send_bytes(
                "POST",
                &format!("/api/v1/plugins/{}", escaped(&name)),
                bytes,
            )?;
            if !conn.json {
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
                    println!(
                        "  attach with: tidecast mount edit MOUNT {flag} {name}[:key=value,...]"
                    );
                } else {
                    println!("  now running on: {}", users.join(", "));
                }
                return Ok(());
            }
            v
        }
        PluginCommand::List => {
            let v = api.call("GET", "/api/v1/plugins", None)?;
            if !conn.json {
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
                return Ok(());
            }
            v
        }
        PluginCommand::Show { name } => {
            let v = api.call("GET", &format!("/api/v1/plugins/{}", escaped(&name)), None)?;
            if !conn.json {
                print_fields(&v);
                return Ok(());
            }
            v
        }
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
            let v = api.call(
                "POST",
                &format!("/api/v1/plugins/{}/rank", escaped(&name)),
                Some(body),
            )?;
            if !conn.json {
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
                return Ok(());
            }
            v
        }
        PluginCommand::Rm { name } => {
            let v = api.call(
                "DELETE",
                &format!("/api/v1/plugins/{}", escaped(&name)),
                None,
            )?;
            if !conn.json {
                println!("Removed plugin {name}");
                return Ok(());
            }
            v
        }
    };
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

/// `tidecast status`: `/api/v1/cluster` as two tables.
pub fn status(conn: &Connection) -> anyhow::Result<()> {
    let v = Api::new(conn)?.call("GET", "/api/v1/cluster", None)?;
    if conn.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows = |key: &str| v[key].as_array().cloned().unwrap_or_default();
    let limit = |n: &Value, used: &str, max: &str| match n[max].as_u64() {
        Some(m) if m > 0 => format!("{}/{m}", n[used]),
        _ => n[used].to_string(),
    };
    println!(
        "{} store; this node: {}",
        v["store"].as_str().unwrap_or("?"),
        v["this_node"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("(single node)")
    );
    println!(
        "\n{:<16} {:<28} {:>11} {:>15} {:>5}",
        "NODE", "URL", "LISTENERS", "KBIT/S", "CPU%"
    );
    for n in rows("nodes") {
        let mut name = n["name"].as_str().unwrap_or("").to_owned();
        if n["draining"].as_bool() == Some(true) {
            name.push_str(" (draining)");
        }
        println!(
            "{:<16} {:<28} {:>11} {:>15} {:>5}",
            name,
            n["url"].as_str().unwrap_or(""),
            limit(&n, "listeners", "max_listeners"),
            limit(&n, "bandwidth_kbps", "max_bandwidth_kbps"),
            n["cpu_percent"],
        );
    }
    println!(
        "\n{:<32} {:<24} {:<16} {:>9}",
        "MOUNT", "KIND", "PRODUCED ON", "LISTENERS"
    );
    for m in rows("mounts") {
        let kind = match m["from"].as_str() {
            Some(from) => format!("transcode of {from}"),
            None => "source".to_owned(),
        };
        println!(
            "{:<32} {:<24} {:<16} {:>9}",
            m["path"].as_str().unwrap_or(""),
            kind,
            m["origin"].as_str().unwrap_or("- (not live)"),
            m["listeners"],
        );
    }
    Ok(())
}

/// `tidecast drain [NODE]`: asks the node (`--server`'s, or NODE of its cluster) to drain,
/// then, unless `no_wait`, follows it until it has stopped.
pub fn drain(conn: &Connection, node: Option<String>, no_wait: bool) -> anyhow::Result<()> {
    let api = Api::new(conn)?;
    let path = match &node {
        Some(n) => format!("/api/v1/nodes/{}/drain", escaped(n)),
        None => "/api/v1/drain".to_owned(),
    };
    let v = api.call("POST", &path, None)?;
    if conn.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    let name = v["node"].as_str().unwrap_or("").to_owned();
    let shown = if name.is_empty() { "the node" } else { &name };
    let secs = v["drain_secs"].as_u64().unwrap_or(0);
    if !conn.json {
        println!(
            "{shown} is draining: no new listeners or sources; its transcoders, playlists and relay mounts move to other nodes; it stops when its {} listeners have left, or after {secs} s",
            v["listeners"]
        );
    }
    if no_wait {
        return Ok(());
    }
    // Follow it: through the cluster's view, or (this very node) until it stops answering.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs + 30);
    let mut last = String::new();
    while std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let Ok(cluster) = api.call("GET", "/api/v1/cluster", None) else {
            println!("{shown} has stopped");
            return Ok(());
        };
        let nodes = cluster["nodes"].as_array().cloned().unwrap_or_default();
        let Some(n) = nodes
            .iter()
            .find(|n| name.is_empty() || n["name"].as_str() == Some(name.as_str()))
        else {
            println!("{shown} has stopped and left the cluster");
            return Ok(());
        };
        let now = format!("{shown}: {} listeners left", n["listeners"]);
        if now != last {
            println!("{now}");
            last = now;
        }
    }
    anyhow::bail!(
        "{shown} was still running {} s after it began to drain",
        secs + 30
    )
}

pub fn mount(conn: &Connection, command: MountCommand) -> anyhow::Result<()> {
    let api = Api::new(conn)?;
    let item_url = |path: &str| {
        let rest = path.strip_prefix('/').unwrap_or(path);
        format!("/api/v1/mounts/{}", escaped(rest))
    };
    let result = match command {
        MountCommand::Create { path, mut settings } => {
            settings.path = Some(path.clone());
            let v = api.call("POST", "/api/v1/mounts", Some(settings.to_json()))?;
            if !conn.json && !v["transcode"].is_null() {
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
            if !conn.json && !v["playlist"].is_null() {
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
            if !conn.json && !v["relay"].is_null() {
                let urls: Vec<&str> = v["relay"]["urls"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|u| u.as_str()).collect())
                    .unwrap_or_default();
                println!("Created relay mount {path}: pulls {}", urls.join(", then "));
                println!("  listen at: {}{path}", conn.server.trim_end_matches('/'));
                return Ok(());
            }
            if !conn.json {
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
                return Ok(());
            }
            v
        }
        MountCommand::List => {
            let v = api.call("GET", "/api/v1/mounts", None)?;
            if !conn.json {
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
                return Ok(());
            }
            v
        }
        MountCommand::Show { path } => {
            let v = api.call("GET", &item_url(&path), None)?;
            if !conn.json {
                print_fields(&v);
                return Ok(());
            }
            v
        }
        MountCommand::Edit { path, settings } => {
            let v = api.call("PATCH", &item_url(&path), Some(settings.to_json()))?;
            if !conn.json {
                println!("Updated mount {path}");
                print_fields(&v);
                return Ok(());
            }
            v
        }
        MountCommand::Token { path, seconds, ip } => {
            let body = json!({ "seconds": seconds, "ip": ip });
            let v = api.call("POST", &format!("{}/token", item_url(&path)), Some(body))?;
            if !conn.json {
                println!("{}", v["url"].as_str().unwrap_or(""));
                return Ok(());
            }
            v
        }
        MountCommand::Listeners { path } => {
            let v = api.call("GET", &format!("{}/listeners", item_url(&path)), None)?;
            if !conn.json {
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
                return Ok(());
            }
            v
        }
        MountCommand::Delete { path } => {
            let v = api.call("DELETE", &item_url(&path), None)?;
            if !conn.json {
                println!("Deleted mount {path}");
                return Ok(());
            }
            v
        }
    };
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

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

fn print_fields(v: &Value) {
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            let text = match val {
                Value::Null => "-".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("  {k:<14} {text}");
        }
    }
}

/// A name or mount path as it goes into an API URL: escaped where a URL needs it, `/` kept
/// (mount paths nest). Names the node refuses (`Bad Name`) still reach it, to be refused there
/// with the reason.
pub(crate) fn escaped(name: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'.')
        .remove(b'-')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(name, KEEP).to_string()
}

pub(crate) struct Api {
    base: String,
    auth: String,
    client: client::Client,
    runtime: tokio::runtime::Runtime,
}

/// Longest wait for a connection, and again for an answer's head and for its body.
const WAIT: Duration = Duration::from_secs(30);
/// Largest answer read (a backup, with every plugin's bytes, is the largest there is).
const MAX_ANSWER: usize = 300 * 1024 * 1024;

impl Api {
    pub(crate) fn new(conn: &Connection) -> anyhow::Result<Api> {
        use base64::Engine as _;
        let Some(password) = &conn.admin_password else {
            bail!("admin password needed: pass --admin-password or set TIDECAST_ADMIN_PASSWORD (the node printed it on its first start)");
        };
        if !conn.server.starts_with("http://") && !conn.server.starts_with("https://") {
            bail!(
                "--server must be an http:// or https:// URL, got {}",
                conn.server
            );
        }
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", conn.admin_user, password));
        Ok(Api {
            base: conn.server.trim_end_matches('/').to_owned(),
            auth: format!("Basic {token}"),
            client: client::Client::new(conn.ca_cert.as_deref())?,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?,
        })
    }

    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let body = body.map(|b| ("application/json", Bytes::from(b.to_string())));
        self.runtime.block_on(self.send(method, path, body))
    }

    pub(crate) fn send_bytes(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Value> {
        let body = Some(("application/wasm", Bytes::from(body)));
        self.runtime.block_on(self.send(method, path, body))
    }

    /// Sends a JSON document as it is (a backup), waiting as long as a large upload takes.
    pub(crate) fn send_json_bytes(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        let wait = WAIT + Duration::from_secs((body.len() / (1 << 20)) as u64);
        let body = Some(("application/json", Bytes::from(body)));
        self.runtime
            .block_on(self.send_waiting("POST", path, body, wait))
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<Value> {
        self.send_waiting(method, path, body, WAIT).await
    }

    /// [`Api::send`], waiting up to `wait` for the answer (a large upload takes its time).
    async fn send_waiting(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Bytes)>,
        wait: Duration,
    ) -> anyhow::Result<Value> {
        let method = http::Method::from_bytes(method.as_bytes())?;
        let url = format!("{}{path}", self.base);
        let mut headers = vec![("authorization", self.auth.as_str())];
        let bytes = match body {
            Some((content_type, bytes)) => {
                headers.push(("content-type", content_type));
                bytes
            }
            None => Bytes::new(),
        };
        let answer = self
            .client
            .send(method, &url, &headers, bytes, wait)
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot reach a tidecast node at {}: {e} (is `tidecast serve` running? use --server)",
                    self.base
                )
            })?;
        let status = answer.status().as_u16();
        let text = client::body(answer, MAX_ANSWER, WAIT)
            .await
            .context("reading the node's answer")?;
        match status {
            401 => Err(anyhow!(
                "the node at {} rejected the admin credentials (check --admin-user/--admin-password)",
                self.base
            )),
            code if code >= 400 => {
                let text = String::from_utf8_lossy(&text).into_owned();
                let msg = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                Err(anyhow!("{msg} (HTTP {code})"))
            }
            _ => serde_json::from_slice(&text).context("the node's answer is not JSON"),
        }
    }
}
