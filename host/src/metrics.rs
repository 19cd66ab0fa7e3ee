//! Prometheus metrics, served as text at `/metrics`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MountLabel {
    pub mount: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    pub mount: String,
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ErrorKind {
    BadRequest,
    Timeout,
    TooLarge,
    Unauthorized,
    NotFound,
    Busy,
    Full,
    /// Over `--max-clients-per-address`.
    AddressFull,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub kind: ErrorKind,
}

pub struct Metrics {
    registry: Registry,
    pub sources: Gauge,
    pub listeners: Family<MountLabel, Gauge>,
    pub listener_connections: Family<MountLabel, Counter>,
    pub listeners_proxied: Family<MountLabel, Gauge>,
    pub bytes_in: Family<MountLabel, Counter>,
    pub bytes_out: Family<MountLabel, Counter>,
    pub dropped_slow: Family<MountLabel, Counter>,
    pub skipped_source_bytes: Family<MountLabel, Counter>,
    pub transcode_skipped_packets: Family<MountLabel, Counter>,
    pub transcode_refused_streams: Family<MountLabel, Counter>,
    pub connection_errors: Family<ErrorLabel, Counter>,
    /// Seconds of digital silence per mount, where tidecast decodes it.
    pub dead_air: Family<MountLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub plugin_failures: Family<PluginLabel, Counter>,
    pub plugin_quarantined: Family<PluginLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tidecast");
        let m = Metrics {
            sources: Gauge::default(),
            listeners: Family::default(),
            listener_connections: Family::default(),
            listeners_proxied: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            dropped_slow: Family::default(),
            skipped_source_bytes: Family::default(),
            transcode_skipped_packets: Family::default(),
            transcode_refused_streams: Family::default(),
            connection_errors: Family::default(),
            dead_air: Family::default(),
            plugin_failures: Family::default(),
            plugin_quarantined: Family::default(),
            registry: Registry::default(),
        };
        registry.register("sources", "Connected source clients", m.sources.clone());
        registry.register(
            "dead_air_seconds",
            "Seconds of digital silence in a mount's stream (measured where tidecast decodes it)",
            m.dead_air.clone(),
        );
        registry.register(
            "listeners",
            "Connected listeners per mount",
            m.listeners.clone(),
        );
        registry.register(
            "listener_connections",
            "Listener connections accepted per mount",
            m.listener_connections.clone(),
        );
        registry.register(
            "listeners_proxied",
            "Listeners this node proxies to the node routing chose for them (clients that do not follow redirects)",
            m.listeners_proxied.clone(),
        );
        registry.register(
            "source_bytes",
            "Bytes received from sources (for a transcoded mount: bytes its transcoder produced)",
            m.bytes_in.clone(),
        );
        registry.register(
            "listener_bytes",
            "Bytes sent to listeners",
            m.bytes_out.clone(),
        );
        registry.register(
            "listeners_dropped_slow",
            "Listeners disconnected because they fell behind the mount's queue",
            m.dropped_slow.clone(),
        );
        registry.register(
            "source_skipped_bytes",
            "Source bytes dropped because they were not valid frames",
            m.skipped_source_bytes.clone(),
        );
        registry.register(
            "transcode_skipped_packets",
            "Source packets a transcoder could not decode and skipped",
            m.transcode_skipped_packets.clone(),
        );
        registry.register(
            "transcode_refused_streams",
            "Source streams a transcoder refused because they declare a format out of range",
            m.transcode_refused_streams.clone(),
        );
        registry.register(
            "connection_errors",
            "Connections refused or closed because of an error, by kind",
            m.connection_errors.clone(),
        );
        registry.register(
            "plugin_failures",
            "Plugin calls that trapped, timed out, outgrew their memory or returned bad output (the audio passed unfiltered)",
            m.plugin_failures.clone(),
        );
        registry.register(
            "plugin_quarantined",
            "1 while a plugin instance is quarantined after repeated failures",
            m.plugin_quarantined.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Exports the password verifier's counters as `tidecast_auth_<outcome>_total`.
    /// Registers a password verifier's counters as `tidecast_<prefix>_<outcome>_total`.
    pub fn register_auth(&mut self, prefix: &str, stats: &crate::auth::VerifierStats) {
        for (outcome, help, counter) in [
            (
                "hashed",
                "Passwords hashed to be checked (right or wrong)",
                &stats.hashed,
            ),
            (
                "cached",
                "Credentials granted from the cache of known-good ones",
                &stats.cached,
            ),
            (
                "throttled",
                "Logins refused with 429 at once: the address failed recently or is being checked",
                &stats.throttled,
            ),
            (
                "busy",
                "Logins refused with 503: no verification slot within the wait",
                &stats.busy,
            ),
        ] {
            // A Counter is a shared handle: the registry reads the verifier's own.
            self.registry
                .register(format!("{prefix}_{outcome}"), help, counter.clone());
        }
    }

    /// Registers the media cache's counters as `tidecast_media_cache_*`.
    /// The event hooks' deliveries (`tidecast_event_hooks_*_total`).
    pub fn register_hooks(&mut self, stats: &crate::hooks::HookStats) {
        for (name, help, counter) in [
            (
                "delivered",
                "Events a hook answered with 2xx",
                &stats.delivered,
            ),
            (
                "failed",
                "Events given up after every attempt",
                &stats.failed,
            ),
            (
                "dropped",
                "Events dropped because a hook's queue was full",
                &stats.dropped,
            ),
        ] {
            self.registry
                .register(format!("event_hooks_{name}"), help, counter.clone());
        }
    }

    pub fn register_media(&mut self, stats: &crate::media::MediaStats) {
        for (name, help, counter) in [
            (
                "hits",
                "Media files read from this node's cache",
                &stats.hits,
            ),
            (
                "misses",
                "Media files fetched into the cache",
                &stats.misses,
            ),
            (
                "joined",
                "Readers of a media file that joined its fetch under way",
                &stats.joined,
            ),
            (
                "bytes_from_peers",
                "Media bytes fetched from other nodes' caches",
                &stats.bytes_from_peers,
            ),
            (
                "bytes_from_bucket",
                "Media bytes fetched from the library's store",
                &stats.bytes_from_bucket,
            ),
            (
                "evictions",
                "Media files evicted from the cache to make room",
                &stats.evictions,
            ),
            (
                "corrupt",
                "Media fetches refused for a wrong size or checksum",
                &stats.corrupt,
            ),
        ] {
            self.registry
                .register(format!("media_cache_{name}"), help, counter.clone());
        }
        self.registry.register(
            "media_cache_bytes",
            "Bytes of media this node's cache holds",
            stats.bytes_cached.clone(),
        );
    }

    pub fn error(&self, kind: ErrorKind) {
        self.connection_errors
            .get_or_create(&ErrorLabel { kind })
            .inc();
    }

    pub fn mount(mount: &str) -> MountLabel {
        MountLabel {
            mount: mount.to_owned(),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
