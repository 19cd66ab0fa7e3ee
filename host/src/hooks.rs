//! Event hooks, as Icecast 2.5's event bindings but as webhooks: on source connect and
//! disconnect, listener add and remove, and mount and plugin changes, each node POSTs a JSON
//! body to the URLs of `--event-hooks FILE`. Each body is signed with its hook's secret
//! (`X-Tidecast-Signature: sha256=HEX`, HMAC-SHA256 of the body), and retried with backoff
//! (1 s doubling to 30 s, five attempts, 5 s each) until the hook answers 2xx.
//!
//! An event is sent by the node where it happens: a source's and a listener's by the node
//! serving it, a configuration change by the node that made it. Each hook has a queue of its
//! own, so a slow hook delays nobody else. **Overflow policy:** a hook's queue holds
//! [`QUEUE`] events; an event that finds it full is dropped (counted in
//! `tidecast_event_hooks_dropped_total`), never waited for: the data path does not wait on a
//! radio's web server.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::warn;

/// What happened: a hook's `events` list names these, and each body's `event` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookEvent {
    SourceConnect,
    SourceDisconnect,
    ListenerAdd,
    ListenerRemove,
    MountChange,
    PluginChange,
}

impl HookEvent {
    /// Every event; a hook that names none gets all of them.
    pub const ALL: [HookEvent; 6] = [
        HookEvent::SourceConnect,
        HookEvent::SourceDisconnect,
        HookEvent::ListenerAdd,
        HookEvent::ListenerRemove,
        HookEvent::MountChange,
        HookEvent::PluginChange,
    ];

    /// The event's name in hooks files and bodies.
    pub fn name(self) -> &'static str {
        match self {
            HookEvent::SourceConnect => "source_connect",
            HookEvent::SourceDisconnect => "source_disconnect",
            HookEvent::ListenerAdd => "listener_add",
            HookEvent::ListenerRemove => "listener_remove",
            HookEvent::MountChange => "mount_change",
            HookEvent::PluginChange => "plugin_change",
        }
    }

    /// The event named `name`.
    pub fn named(name: &str) -> Option<HookEvent> {
        HookEvent::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The event's bit in a hook's set.
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Events one hook's queue holds before new ones are dropped.
pub const QUEUE: usize = 1024;
/// Delivery attempts of one event.
const ATTEMPTS: u32 = 5;
/// Longest wait for one attempt's answer.
const ATTEMPT_WAIT: Duration = Duration::from_secs(5);
/// Most hooks one node runs.
const MAX_HOOKS: usize = 16;

/// A hook as the file declares it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookFile {
    #[serde(default)]
    hook: Vec<HookConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookConfig {
    url: String,
    /// The environment variable that holds the hook's secret.
    secret_env: Option<String>,
    /// The file that holds it (relative to the hooks file).
    secret_file: Option<String>,
    /// The events it gets (all when absent).
    events: Option<Vec<String>>,
}

/// Deliveries, as `/metrics` counts them.
#[derive(Default)]
pub struct HookStats {
    pub delivered: Counter,
    pub failed: Counter,
    pub dropped: Counter,
}

struct Hook {
    /// The events it gets, one [`HookEvent::bit`] each.
    events: u8,
    queue: mpsc::Sender<Value>,
}

/// This node's hooks.
#[derive(Default)]
pub struct Hooks {
    hooks: Vec<Hook>,
    node: String,
    pub stats: Arc<HookStats>,
}

/// Every problem with a hooks file.
#[derive(Debug, thiserror::Error)]
#[error("the event hooks file {path}: {}", problems.join("; "))]
pub struct HooksError {
    path: String,
    problems: Vec<String>,
}

impl Hooks {
    /// Reads `path` (empty: no hooks) and starts a delivery task per hook, which calls through
    /// `client` (the system's CAs). `node` names this node in the events.
    pub fn start(
        path: &Path,
        node: String,
        client: crate::http::client::Client,
    ) -> Result<Hooks, HooksError> {
        let stats = Arc::new(HookStats::default());
        if path.as_os_str().is_empty() {
            return Ok(Hooks {
                hooks: Vec::new(),
                node,
                stats,
            });
        }
        let fail = |problems: Vec<String>| HooksError {
            path: path.display().to_string(),
            problems,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(vec![e.to_string()]))?;
        let file: HookFile = toml::from_str(&text).map_err(|e| fail(vec![e.to_string()]))?;
        let mut problems = Vec::new();
        if file.hook.len() > MAX_HOOKS {
            problems.push(format!(
                "at most {MAX_HOOKS} hooks, got {}",
                file.hook.len()
            ));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut ready = Vec::new();
        for (i, h) in file.hook.into_iter().enumerate() {
            let at = format!("hook {} ({})", i + 1, h.url);
            let ok_url = h.url.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            });
            if !ok_url {
                problems.push(format!("{at}: url is not an http:// or https:// URL"));
            }
            let secret = match (&h.secret_env, &h.secret_file) {
                (Some(var), None) => std::env::var(var)
                    .ok()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| format!("{at}: secret_env names {var}, which is not set")),
                (None, Some(f)) => std::fs::read_to_string(dir.join(f))
                    .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                    .map_err(|e| format!("{at}: secret_file {f}: {e}")),
                _ => Err(format!(
                    "{at}: give secret_env or secret_file (one of them)"
                )),
            };
            let secret = match secret {
                Ok(s) if s.len() >= 16 => s,
                Ok(_) => {
                    problems.push(format!("{at}: the secret needs at least 16 characters"));
                    continue;
                }
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            let mut events = 0;
            for name in h.events.as_deref().unwrap_or_default() {
                match HookEvent::named(name) {
                    Some(e) => events |= e.bit(),
                    None => problems.push(format!(
                        "{at}: unknown event {name:?} (events: {})",
                        HookEvent::ALL.map(HookEvent::name).join(", ")
                    )),
                }
            }
            if h.events.is_none() {
                events = HookEvent::ALL.into_iter().fold(0, |set, e| set | e.bit());
            }
            ready.push((h.url, secret, events));
        }
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        let hooks = ready
            .into_iter()
            .map(|(url, secret, events)| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(deliver(url, secret, rx, client.clone(), stats.clone()));
                Hook { events, queue: tx }
            })
            .collect();
        Ok(Hooks { hooks, node, stats })
    }

    /// Whether any hook wants events of `kind` (so a caller on a busy path builds none
    /// otherwise).
    pub fn wants(&self, kind: HookEvent) -> bool {
        self.hooks.iter().any(|h| h.events & kind.bit() != 0)
    }

    /// Sends event `kind` with `fields` (a JSON object) to every hook that wants it, without
    /// waiting (see the overflow policy above).
    pub fn emit(&self, kind: HookEvent, fields: Value) {
        if !self.wants(kind) {
            return;
        }
        let mut body = json!({
            "event": kind.name(),
            "node": self.node,
            "time": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        });
        if let (Some(b), Value::Object(f)) = (body.as_object_mut(), fields) {
            b.extend(f);
        }
        for h in self.hooks.iter().filter(|h| h.events & kind.bit() != 0) {
            if h.queue.try_send(body.clone()).is_err() {
                self.stats.dropped.inc();
            }
        }
    }
}

/// The signature header's value for `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", crate::auth::hmac_hex(secret, body))
}

/// Delivers one hook's events in order, each retried with backoff.
async fn deliver(
    url: String,
    secret: String,
    mut events: mpsc::Receiver<Value>,
    client: crate::http::client::Client,
    stats: Arc<HookStats>,
) {
    while let Some(event) = events.recv().await {
        let body = bytes::Bytes::from(event.to_string());
        let signed = signature(&secret, &body);
        let kind = event["event"].as_str().unwrap_or("").to_owned();
        let headers = [
            ("content-type", "application/json"),
            ("x-tidecast-event", kind.as_str()),
            ("x-tidecast-signature", signed.as_str()),
        ];
        let mut backoff = Duration::from_secs(1);
        for attempt in 1..=ATTEMPTS {
            let sent = client.send(
                http::Method::POST,
                &url,
                &headers,
                body.clone(),
                ATTEMPT_WAIT,
            );
            let status = match tokio::time::timeout(ATTEMPT_WAIT, sent).await {
                Ok(Ok(answer)) => Some(answer.status()),
                _ => None,
            };
            if status.is_some_and(|s| s.is_success()) {
                stats.delivered.inc();
                break;
            }
            if attempt == ATTEMPTS {
                stats.failed.inc();
                warn!(hook = %url, event = %kind, ?status, "event hook gave up after {ATTEMPTS} attempts");
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_new_events_and_counts_them() {
        let (tx, _rx) = mpsc::channel(2);
        let hooks = Hooks {
            hooks: vec![Hook {
                events: HookEvent::ListenerAdd.bit(),
                queue: tx,
            }],
            node: "a".to_owned(),
            stats: Arc::default(),
        };
        for _ in 0..5 {
            hooks.emit(HookEvent::ListenerAdd, json!({ "mount": "/m" }));
        }
        // Not asked for: not queued, not dropped.
        hooks.emit(HookEvent::PluginChange, json!({}));
        assert_eq!(hooks.stats.dropped.get(), 3);
    }

    #[test]
    fn each_event_is_found_by_its_name_and_has_a_bit_of_its_own() {
        let mut seen = 0u8;
        for e in HookEvent::ALL {
            assert_eq!(HookEvent::named(e.name()), Some(e));
            assert_eq!(seen & e.bit(), 0, "{e:?}");
            seen |= e.bit();
        }
        assert_eq!(HookEvent::named("listener-add"), None);
    }

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
