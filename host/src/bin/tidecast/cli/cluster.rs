//! `tidecast status` and `tidecast drain`: the cluster as a node sees it, and draining one of
//! its nodes before maintenance.

use serde_json::Value;

use super::{escaped, Api, Connection};

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
