//! The access log (`--access-log PATH`, or `-` for standard output): one line per request in the
//! combined log format, with the seconds the client stayed connected at the end, as Icecast's
//! `access.log` writes it: control requests, listeners (a listener's line when it leaves, a
//! refusal or redirect at once) and sources (when they leave, with the bytes they sent). The file
//! is opened for appending and opened again on SIGHUP, for logrotate.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::sync::Locked;

/// Where lines go.
pub struct AccessLog {
    path: Option<PathBuf>,
    file: Mutex<Option<std::fs::File>>,
}

/// One finished request.
pub struct Entry<'a> {
    pub client: IpAddr,
    pub user: Option<&'a str>,
    pub method: &'a str,
    pub target: &'a str,
    pub version: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub referer: Option<&'a str>,
    pub agent: Option<&'a str>,
    pub seconds: u64,
}

/// How a request ended, for its line.
pub struct Outcome {
    pub status: u16,
    /// Bytes sent to the client (for a source: received from it).
    pub bytes: u64,
    /// The user name it authenticated with.
    pub user: Option<String>,
}

impl Outcome {
    /// A request answered with `r`, whole.
    pub fn of(r: &crate::http::Response) -> Outcome {
        Outcome {
            status: r.status,
            bytes: r.body.len() as u64,
            user: None,
        }
    }
}

impl AccessLog {
    /// Writes the line of `req` from `client`, which began at `started` and ended as `outcome`.
    pub fn request(
        &self,
        client: IpAddr,
        req: &crate::http::RequestHead,
        outcome: &Outcome,
        started: std::time::Instant,
    ) {
        self.record(&Entry {
            client,
            user: outcome.user.as_deref(),
            method: &req.method,
            target: &req.target(),
            version: req.response_version(),
            status: outcome.status,
            bytes: outcome.bytes,
            referer: req.header("referer"),
            agent: req.header("user-agent"),
            seconds: started.elapsed().as_secs(),
        });
    }

    /// `-`: standard output; anything else a file, created if missing, appended to.
    pub fn open(spec: &str) -> std::io::Result<AccessLog> {
        let log = AccessLog {
            path: (spec != "-").then(|| PathBuf::from(spec)),
            file: Mutex::new(None),
        };
        log.reopen()?;
        Ok(log)
    }

    /// Opens the file again (after logrotate moved it away).
    pub fn reopen(&self) -> std::io::Result<()> {
        if let Some(path) = &self.path {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            self.file.with(|f| *f = Some(file));
        }
        Ok(())
    }

    pub fn record(&self, e: &Entry<'_>) {
        let now = time::OffsetDateTime::now_utc();
        let stamp = now
            .format(time::macros::format_description!(
                "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
            ))
            .unwrap_or_default();
        let line = format!(
            "{} - {} [{stamp}] \"{} {} {}\" {} {} \"{}\" \"{}\" {}\n",
            e.client,
            field(e.user.unwrap_or("-")),
            field(e.method),
            field(e.target),
            field(e.version),
            e.status,
            e.bytes,
            field(e.referer.unwrap_or("-")),
            field(e.agent.unwrap_or("-")),
            e.seconds
        );
        match &self.path {
            None => {
                let _ = std::io::stdout().lock().write_all(line.as_bytes());
            }
            Some(_) => self.file.with(|f| {
                if let Some(f) = f.as_mut() {
                    let _ = f.write_all(line.as_bytes());
                }
            }),
        }
    }
}

/// A value as it may stand in a log line: no quotes, backslashes or control characters that
/// would let a client forge a field or a line.
fn field(v: &str) -> String {
    v.chars()
        .map(|c| match c {
            '"' | '\\' => '_',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

/// Reopens `log` on every SIGHUP until the task is dropped.
pub async fn reopen_on_hangup(log: std::sync::Arc<AccessLog>) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            match log.reopen() {
                Ok(()) => tracing::info!("access log reopened"),
                Err(e) => tracing::error!(error = %e, "cannot reopen the access log"),
            }
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_combined_format_and_a_client_cannot_forge_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(path.to_str().unwrap()).unwrap();
        log.record(&Entry {
            client: "203.0.113.9".parse().unwrap(),
            user: None,
            method: "GET",
            target: "/live.mp3",
            version: "HTTP/1.1",
            status: 200,
            bytes: 4096,
            referer: None,
            agent: Some("VLC\" 200 1 \"x\n203.0.113.1 - -"),
            seconds: 42,
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("203.0.113.9 - - ["), "{text}");
        assert!(
            text.ends_with(
                "\"GET /live.mp3 HTTP/1.1\" 200 4096 \"-\" \"VLC_ 200 1 _x 203.0.113.1 - -\" 42\n"
            ),
            "{text}"
        );
    }
}
