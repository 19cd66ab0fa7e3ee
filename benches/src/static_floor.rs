//! The floor of `benches/hls.sh`: a minimal tokio server that answers GETs of files held in
//! memory with keep-alive and nothing else (no sessions, no checks, no timers; the head and the
//! body in one `writev`), on the same runtime tidecast uses. Between it and nginx on one side
//! and tidecast on the other lies what tidecast's own request path costs.
//!
//!   static-floor ADDR DIR     (serves every file under DIR at its path; exits on a signal)

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn load(dir: &Path, root: &Path, out: &mut HashMap<String, Vec<u8>>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            load(&path, root, out)?;
        } else {
            let rel = format!("/{}", path.strip_prefix(root)?.display());
            out.insert(rel, std::fs::read(&path)?);
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(dir)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: static-floor ADDR DIR");
    };
    let mut files = HashMap::new();
    load(Path::new(&dir), Path::new(&dir), &mut files)?;
    let files = Arc::new(files);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    loop {
        let (mut conn, _) = listener.accept().await?;
        let _ = conn.set_nodelay(true);
        let files = files.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut have = 0;
            loop {
                let n = match conn.read(&mut buf[have..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                have += n;
                let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
                    if have == buf.len() {
                        return;
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]);
                let path = head
                    .split(' ')
                    .nth(1)
                    .and_then(|t| t.split('?').next())
                    .unwrap_or("/");
                let body: &[u8] = files.get(path).map_or(&[], |b| &b[..]);
                let head = format!(
                    "HTTP/1.1 {}\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
                    if files.contains_key(path) {
                        "200 OK"
                    } else {
                        "404 Not Found"
                    },
                    body.len()
                );
                // Requests are read one at a time (players do not pipeline).
                buf.copy_within(end + 4..have, 0);
                have -= end + 4;
                let mut both = bytes::Buf::chain(head.as_bytes(), body);
                if conn.write_all_buf(&mut both).await.is_err() {
                    return;
                }
            }
        });
    }
}
