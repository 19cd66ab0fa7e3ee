//! The commands that talk to a running node through its admin API (`/api/v1/…`): `tidecast
//! mount`, `plugin`, `station` and `media`, one file each, and `status` and `drain`
//! (`cluster.rs`). This file holds what they share: the connection flags, a small client for
//! the API, and how names go into its URLs.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use serde_json::Value;

use tidecast::http::client;

mod cluster;
mod media;
mod mount;
mod plugin;
mod station;

pub use cluster::{drain, status};
pub use media::{media, MediaCommand};
pub use mount::{mount, MountCommand};
pub use plugin::{plugin, PluginCommand};
pub use station::{station, StationCommand};

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

/// Prints the API's answer as it is, pretty JSON (`--json`).
fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
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
