//! `tidecast media …`: the media library playlist mounts play from. List, upload, remove and
//! download its files, and have the node index them (tags, duration, loudness)
//! (`/api/v1/media`, `/api/v1/media-index`).

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use serde_json::{json, Value};

use tidecast::http::client;

use super::{escaped, print_json, Api, Connection, WAIT};

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
    match command {
        MediaCommand::Ls { folder } => ls(&api, conn, folder.as_deref()),
        MediaCommand::Upload { file, key } => upload(&api, conn, &file, key),
        MediaCommand::Index { folder } => index(&api, conn, folder),
        MediaCommand::Rm { key } => rm(&api, conn, &key),
        MediaCommand::Get { key, output } => get(&api, conn, key, output),
    }
}

/// `tidecast media ls`: the library's files, one a line, with what the index knows of them.
fn ls(api: &Api, conn: &Connection, folder: Option<&str>) -> anyhow::Result<()> {
    let path = match folder {
        Some(f) => format!("/api/v1/media?prefix={}", escaped(f)),
        None => "/api/v1/media".to_owned(),
    };
    let v = api.call("GET", &path, None)?;
    if conn.json {
        return print_json(&v);
    }
    let files = v["files"].as_array().cloned().unwrap_or_default();
    for f in &files {
        println!(
            "{:>12}  {}  {}{}",
            f["size"],
            f["modified"].as_str().unwrap_or("").get(..19).unwrap_or(""),
            f["key"].as_str().unwrap_or(""),
            indexed(&f["info"])
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
    Ok(())
}

/// What the index knows of a file (duration, loudness, artist and title), as `ls` shows it
/// after the file's key; nothing for a file not indexed.
fn indexed(info: &Value) -> String {
    if info.is_null() {
        return String::new();
    }
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
}

/// `tidecast media upload`: sends the file into the library as `key` (default: its name).
fn upload(
    api: &Api,
    conn: &Connection,
    file: &std::path::Path,
    key: Option<String>,
) -> anyhow::Result<()> {
    let key = match key {
        Some(k) => k,
        None => file
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{} has no file name; give a KEY", file.display()))?,
    };
    tidecast::media::validate_key(&key)?;
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let max = tidecast::control::media::MAX_MEDIA_BYTES;
    if size > max as u64 {
        bail!(
            "{} is {size} bytes, more than the {max}-byte limit of one media file",
            file.display()
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    if !conn.json {
        eprintln!("uploading {} ({size} bytes) as {key} …", file.display());
    }
    let started = std::time::Instant::now();
    let body = Some(("application/octet-stream", Bytes::from(bytes)));
    let path = format!("/api/v1/media/{}", escaped(&key));
    let v =
        api.runtime
            .block_on(api.send_waiting("PUT", &path, body, transfer_wait(size as usize)))?;
    if conn.json {
        return print_json(&v);
    }
    println!(
        "Uploaded {key}: {} bytes in {:.1} s",
        v["size"],
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `tidecast media index`: starts the node's index of the library (under `folder`), follows
/// its progress, then says which files could not be read.
fn index(api: &Api, conn: &Connection, folder: Option<String>) -> anyhow::Result<()> {
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
    if conn.json {
        return print_json(&done);
    }
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
    Ok(())
}

/// `tidecast media rm`: removes the file from the library.
fn rm(api: &Api, conn: &Connection, key: &str) -> anyhow::Result<()> {
    let v = api.call("DELETE", &format!("/api/v1/media/{}", escaped(key)), None)?;
    if conn.json {
        return print_json(&v);
    }
    println!("Removed {key}");
    Ok(())
}

/// `tidecast media get`: downloads the file into `output` (default: its file name).
fn get(
    api: &Api,
    conn: &Connection,
    key: String,
    output: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let out =
        output.unwrap_or_else(|| std::path::PathBuf::from(key.rsplit('/').next().unwrap_or(&key)));
    let bytes = download(api, &key)?;
    std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    if conn.json {
        return print_json(&json!({ "key": key, "file": out, "size": bytes.len() }));
    }
    println!("Wrote {key} to {} ({} bytes)", out.display(), bytes.len());
    Ok(())
}

/// The bytes of the library's file `key`, through the node's cache.
fn download(api: &Api, key: &str) -> anyhow::Result<Bytes> {
    let url = format!("{}/api/v1/media/{}", api.base, escaped(key));
    let max = tidecast::control::media::MAX_MEDIA_BYTES;
    api.runtime.block_on(async {
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
    })
}
