//! `tidecast serve` configuration: command-line flags over a TOML file over defaults.
//!
//! Every flag has a key of the same name (with `_` for `-`) in the file given by `--config`;
//! unknown keys are errors, and validation reports every problem at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::list_items;

macro_rules! serve_settings {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty = $default:expr ; $( [$($arg:tt)*] )? )*) => {
        /// Flags of `tidecast serve`.
        #[derive(clap::Args, Debug, Default, Clone)]
        pub struct ServeArgs {
            /// TOML file with any of the settings below (flags win over the file).
            #[arg(long, value_name = "FILE")]
            pub config: Option<PathBuf>,
            $( $(#[$doc])* #[arg(long $(, $($arg)*)?)] pub $name: Option<$ty>, )*
        }

        /// The `--config` file: the same settings as the flags.
        #[derive(Deserialize, Debug, Default)]
        #[serde(deny_unknown_fields)]
        struct FileConfig {
            $( $name: Option<$ty>, )*
        }

        /// Resolved settings of a node.
        #[derive(Debug, Clone)]
        pub struct ServeConfig {
            $( $(#[$doc])* pub $name: $ty, )*
            /// The settings given as text, parsed once by [`ServeConfig::load`]: what the node
            /// uses (the text fields above stay as given, for messages).
            pub parsed: Parsed,
        }

        impl ServeConfig {
    /// The base URL clients used to reach us (for playlists and status).
    pub fn base_url(&self, req: Option<&crate::http::RequestHead>) -> String {
        let host = req
            .and_then(|r| r.header("host"))
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
            .unwrap_or_else(|| {
                if self.hostname.is_empty() {
                    self.listen.to_string()
                } else {
                    format!("{}:{}", self.hostname, self.listen.port())
                }
            });
        let scheme = if req.is_some_and(|r| r.secure) {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{host}")
    }


            fn merge(args: ServeArgs, file: FileConfig) -> ServeConfig {
                ServeConfig {
                    $( $name: args.$name.or(file.$name).unwrap_or_else(|| $default), )*
                    parsed: Parsed::default(),
                }
            }
        }
    };
}

serve_settings! {
    /// Address for sources, listeners and the admin API.
    listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8000)); [value_name = "ADDR"]
    /// Address for the same over TLS (HTTPS, and sources with ffmpeg's `-tls 1`); needs
    /// --tls-cert and --tls-key. Empty: no TLS port.
    tls_listen: String = String::new(); [value_name = "ADDR"]
    /// Certificate chain files (PEM), comma-separated; with several, each connection gets the
    /// first one valid for the name the client asks for (SNI), else the first. Reloaded on
    /// SIGHUP, on POST /api/v1/tls/reload, and when a file changes.
    tls_cert: String = String::new(); [value_name = "PEM,..."]
    /// Private key files (PEM), comma-separated, one per --tls-cert file, in the same order (a
    /// file may hold both the chain and the key).
    tls_key: String = String::new(); [value_name = "PEM,..."]
    /// Also take TLS on --listen: a connection whose first byte opens a TLS handshake is TLS,
    /// any other is plain (one port for both, as Icecast-KH offers).
    listen_detects_tls: bool = false; [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"]
    /// Answer a plain-HTTP request for a page meant for browsers (the public page) with a
    /// redirect to the same page over HTTPS. Streams, status documents, metrics and playlists
    /// are never redirected: old players and monitoring tools may not follow.
    redirect_http: bool = false; [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"]
    /// CA certificate (PEM) that other nodes' https:// advertised URLs must chain to (relays,
    /// lease checks, titles, proxied listeners). Empty: the system's CA bundle.
    cluster_ca: PathBuf = PathBuf::new(); [value_name = "PEM"]
    /// Proxies and load balancers whose word on the client's address is taken (CIDR networks or
    /// addresses, comma-separated): their `Forwarded`/`X-Forwarded-For`, and their PROXY
    /// protocol header with --proxy-protocol.
    trusted_proxies: String = String::new(); [value_name = "CIDR,..."]
    /// The header the trusted proxies name the client in: `x-forwarded-for` (nginx, HAProxy's
    /// `option forwardfor`) or `forwarded` (RFC 7239). Only that one is read, over all its
    /// lines, rightmost untrusted address first: a client's own header of the other kind is
    /// ignored.
    trusted_proxies_header: String = "x-forwarded-for".to_owned(); [value_name = "forwarded|x-forwarded-for"]
    /// Connections from --trusted-proxies may start with a PROXY protocol header (v1 or v2, as
    /// HAProxy's `send-proxy`/`send-proxy-v2` sends it), whose client address is then used.
    /// Connections from anywhere else are served as they come.
    proxy_protocol: bool = false; [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"]
    /// Access log in the combined format plus the seconds connected (a file, reopened on
    /// SIGHUP for logrotate, or `-` for standard output). Empty: none.
    access_log: String = String::new(); [value_name = "PATH"]
    /// The mount that Shoutcast v1 sources feed (password line, `OK2`, `icy-*` lines, audio),
    /// as Icecast's `<shoutcast-mount>`; their port is --shoutcast-listen. Empty: none.
    shoutcast_mount: String = String::new(); [value_name = "MOUNT"]
    /// Address for Shoutcast v1 sources [default: the listen address, port + 1].
    shoutcast_listen: String = String::new(); [value_name = "ADDR"]
    /// Directory for persistent state (mounts, hashed credentials).
    data_dir: PathBuf = PathBuf::from("./tidecast-data"); [value_name = "DIR"]
    /// The only directory a mount's listener user files (--htpasswd) and intros (--intro) are
    /// read from, given relative to it [default: DATA_DIR/files].
    files_dir: PathBuf = PathBuf::new(); [value_name = "DIR"]
    /// Admin user name [default: admin].
    admin_user: String = String::new(); [env = "TIDECAST_ADMIN_USER"]
    /// Admin password; stored hashed. Generated and printed once when never set.
    admin_password: String = String::new(); [env = "TIDECAST_ADMIN_PASSWORD", hide_env_values = true]
    /// Icecast-style open mode: accept a source on any mount path with user `source` and this
    /// password. Off unless set.
    any_mount_password: String = String::new(); [env = "TIDECAST_ANY_MOUNT_PASSWORD", hide_env_values = true]
    /// Bytes sent to a new listener at once so players start immediately.
    burst_size: usize = 64 * 1024; [value_name = "BYTES"]
    /// Bytes of recent audio kept per mount; a listener further behind is dropped.
    queue_size: usize = 512 * 1024; [value_name = "BYTES"]
    /// Most listeners on this node (0: no limit besides max_clients); more get 503, and cluster
    /// routing sends none to a node at its limit.
    max_listeners: usize = 0; [value_name = "N"]
    /// Most simultaneous connections of all kinds; more get 503.
    max_clients: usize = 15_000; [value_name = "N"]
    /// Most simultaneous connections from one client address (an IPv6 /64 counts as one); more
    /// get 503 (0: no limit). Behind --trusted-proxies the clients they name are counted, not
    /// the proxies. Raise it when many listeners share an address (a large NAT).
    max_clients_per_address: usize = 500; [value_name = "N"]
    /// A source that sends nothing for this long is disconnected.
    source_timeout_secs: u64 = 10; [value_name = "SECONDS"]
    /// A TOML file of event hooks (`[[hook]]` with url, secret_env or secret_file, events),
    /// the same on every node: webhooks on sources, listeners and configuration changes.
    event_hooks: PathBuf = PathBuf::new(); [value_name = "FILE"]
    /// On SIGTERM or `tidecast drain`, how long the node keeps its connected listeners and
    /// sources (after handing its transcoders, playlists and relay mounts to other nodes)
    /// before it stops; 0 stops at once.
    drain_secs: u64 = 30; [value_name = "SECONDS"]
    /// A client must send its whole request head within this time.
    header_timeout_secs: u64 = 10; [value_name = "SECONDS"]
    /// HLS segment length (1 to 30 s; 6 is the spec's suggestion, 2 a low-latency profile).
    hls_segment_secs: u64 = 6; [value_name = "SECONDS"]
    /// How much of each mount an HLS playlist offers (at least three segments, at most 600 s).
    hls_window_secs: u64 = 60; [value_name = "SECONDS"]
    /// Listeners are written to this often, what came in meanwhile in one write (larger batches
    /// cost less CPU; players buffer several seconds, and a joining player gets the burst at
    /// once).
    write_interval_ms: u64 = 2000; [value_name = "MS"]
    /// Kernel send buffer per listener socket, so a stalled player cannot park minutes of audio.
    listener_send_buffer: usize = 64 * 1024; [value_name = "BYTES"]
    /// etcd endpoints of a cluster, comma-separated (e.g. http://10.0.0.5:2379); empty: a single
    /// node with its embedded store.
    etcd: String = String::new(); [value_name = "URL,..."]
    /// CA certificate (PEM) that etcd's server certificate must chain to; needed for https://
    /// endpoints.
    etcd_ca: PathBuf = PathBuf::new(); [value_name = "FILE"]
    /// This node's client certificate (PEM) for etcd's client-certificate authentication.
    etcd_cert: PathBuf = PathBuf::new(); [value_name = "FILE"]
    /// The private key (PEM) of --etcd-cert.
    etcd_key: PathBuf = PathBuf::new(); [value_name = "FILE"]
    /// etcd user, for etcd's password authentication (beside or instead of client certificates).
    etcd_user: String = String::new(); [value_name = "NAME", env = "TIDECAST_ETCD_USER"]
    /// Password of --etcd-user.
    etcd_password: String = String::new(); [env = "TIDECAST_ETCD_PASSWORD", hide_env_values = true]
    /// Prefix of the cluster's keys in etcd.
    etcd_prefix: String = "/tidecast/".to_owned(); [value_name = "PREFIX"]
    /// This node's name in the cluster [default: the host name].
    node_name: String = String::new(); [value_name = "NAME"]
    /// URL other nodes and redirected listeners reach this node at [default: http://LISTEN];
    /// port 0 in it names the port the node chose (a listen address with port 0).
    advertise: String = String::new(); [value_name = "URL"]
    /// Seconds a dead node keeps its mounts and transcoders before other nodes take them over
    /// (its etcd lease); kept alive four times per period.
    lease_ttl_secs: u64 = 2; [value_name = "SECONDS"]
    /// Shared secret of the cluster's nodes, for their internal requests (relays). Needed with
    /// --etcd; the same on every node.
    cluster_secret: String = String::new(); [env = "TIDECAST_CLUSTER_SECRET", hide_env_values = true]
    /// Native listener routing chain of mounts that set none: filters, scorers, then one of
    /// best, weighted, random (see `tidecast mount edit --routing`).
    routing: String = crate::model::NativePolicy::default().to_string(); [value_name = "STEP,..."]
    /// Serve every listener on the node it reached, instead of redirecting it to the node routing
    /// picks: for nodes behind a load balancer that spreads listeners itself (a Kubernetes
    /// Service) and whose advertised URLs listeners cannot reach. Mounts are still relayed from
    /// their origins, and a draining node still turns new listeners away.
    local_listeners: bool = false; [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"]
    /// Most outgoing bandwidth of this node in kbit/s (0: no limit); routing sends no listeners
    /// to a node at its limit.
    max_bandwidth_kbps: u32 = 0; [value_name = "KBPS"]
    /// Listeners whose User-Agent contains one of these (comma-separated, case-insensitive) are
    /// never redirected: served here while this node has room, else proxied to the node routing
    /// picks; `?proxy=1` asks for it per request.
    proxy_user_agents: String = String::new(); [value_name = "AGENT,..."]
    /// Answer DNS for the cluster zone on this address (UDP and TCP, e.g. 0.0.0.0:53); off when
    /// empty.
    dns_listen: String = String::new(); [value_name = "ADDR"]
    /// The zone answered (e.g. stream.example.org): its A/AAAA are the live nodes, and
    /// `<node>.<zone>` each node.
    dns_zone: String = String::new(); [value_name = "NAME"]
    /// Name servers of the zone for its NS records, comma-separated [default: ns.<zone>].
    dns_ns: String = String::new(); [value_name = "NAME,..."]
    /// TTL of the DNS answers, short so a dead node leaves resolvers' caches soon.
    dns_ttl_secs: u32 = 5; [value_name = "SECONDS"]
    /// Memory cap of each WebAssembly plugin instance, in MiB.
    plugin_memory_mb: usize = 32; [value_name = "MIB"]
    /// Longest call into a policy plugin (and a filter's title hook), in milliseconds; past it
    /// the call is cut off and the native policy decides (the title stays as it was).
    plugin_call_ms: u64 = 5; [value_name = "MS"]
    /// The media library playlist mounts play from: s3://BUCKET/PREFIX (S3 or compatible:
    /// Ceph, MinIO, Garage; AWS_ENDPOINT and AWS_ALLOW_HTTP for a non-AWS server), az://…,
    /// gs://…, or a local directory. The same on every node; credentials from the environment
    /// (AWS_*, AZURE_*, GOOGLE_*) or --media-credentials, never from the shared configuration.
    media_library: String = String::new(); [value_name = "URL", env = "TIDECAST_MEDIA_LIBRARY"]
    /// A file of KEY=VALUE lines with the media library's credentials (e.g.
    /// AWS_ACCESS_KEY_ID=…); they win over the environment.
    media_credentials: PathBuf = PathBuf::new(); [value_name = "FILE"]
    /// Most disk the media cache (DATA_DIR/media-cache) uses, in MiB; least recently used
    /// files go first.
    media_cache_mb: u64 = 2048; [value_name = "MIB"]
    /// Host name used in playlists and status URLs when the request has no Host header.
    hostname: String = String::new(); [value_name = "NAME"]
}

/// The settings given as text, parsed (and checked) once when the configuration is loaded.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// `--tls-listen` (after start, the address really bound).
    pub tls_listen: Option<SocketAddr>,
    /// Where Shoutcast v1 sources connect, when `--shoutcast-mount` is set.
    pub shoutcast_listen: Option<SocketAddr>,
    /// `--dns-listen` with the zone answered there.
    pub dns: Option<(SocketAddr, crate::model::DnsZone)>,
    /// `--tls-cert` and `--tls-key`, in order, one key per certificate.
    pub tls_certs: Vec<PathBuf>,
    pub tls_keys: Vec<PathBuf>,
    /// `--trusted-proxies` and the header they name clients in.
    pub trusted_proxies: crate::clients::Networks,
    pub forward_header: crate::clients::ForwardHeader,
    /// `--routing`: the native routing chain of mounts that set none.
    pub routing: crate::model::NativePolicy,
    /// `--etcd`: the endpoints (none: a single node with its embedded store).
    pub etcd: Vec<String>,
    /// `--proxy-user-agents`, lower-cased.
    pub proxy_user_agents: Vec<String>,
}

impl ServeConfig {
    /// Reads `args.config` (if any), merges, and validates.
    pub fn load(args: ServeArgs) -> Result<ServeConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let mut cfg = ServeConfig::merge(args, file);
        cfg.parsed = cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every setting and parses those given as text; every problem is reported.
    fn validate(&self) -> Result<Parsed, ConfigError> {
        let mut problems = Vec::new();
        let mut parsed = Parsed {
            etcd: list_items(&self.etcd).map(str::to_owned).collect(),
            proxy_user_agents: list_items(&self.proxy_user_agents)
                .map(str::to_ascii_lowercase)
                .collect(),
            ..Parsed::default()
        };
        if !(4096..=64 << 20).contains(&self.queue_size) {
            problems.push(format!(
                "queue_size must be between 4096 and 67108864 bytes, got {}",
                self.queue_size
            ));
        }
        if self.burst_size > self.queue_size {
            problems.push(format!(
                "burst_size ({}) must not exceed queue_size ({})",
                self.burst_size, self.queue_size
            ));
        }
        if self.max_clients == 0 {
            problems.push("max_clients must be at least 1".to_owned());
        }
        if !(1..=3600).contains(&self.source_timeout_secs) {
            problems.push("source_timeout_secs must be between 1 and 3600".to_owned());
        }
        if self.drain_secs > 3600 {
            problems.push(format!(
                "drain_secs must be at most 3600, got {}",
                self.drain_secs
            ));
        }
        if !(1..=600).contains(&self.header_timeout_secs) {
            problems.push("header_timeout_secs must be between 1 and 600".to_owned());
        }
        if !(1..=30).contains(&self.hls_segment_secs) {
            problems.push("hls_segment_secs must be between 1 and 30".to_owned());
        }
        if self.hls_window_secs < 3 * self.hls_segment_secs || self.hls_window_secs > 600 {
            problems
                .push("hls_window_secs must be at least three segments and at most 600".to_owned());
        }
        if !(1..=5000).contains(&self.write_interval_ms) {
            problems.push("write_interval_ms must be between 1 and 5000".to_owned());
        }
        if !(4096..=16 << 20).contains(&self.listener_send_buffer) {
            problems.push("listener_send_buffer must be between 4096 and 16777216".to_owned());
        }
        if !self.etcd.is_empty() && self.cluster_secret.len() < 16 {
            problems.push(
                "a cluster (--etcd) needs --cluster-secret (or TIDECAST_CLUSTER_SECRET) of at least 16 characters, the same on every node".to_owned(),
            );
        }
        if !(2..=60).contains(&self.lease_ttl_secs) {
            problems.push(format!(
                "lease_ttl_secs must be between 2 and 60, got {}",
                self.lease_ttl_secs
            ));
        }
        if !(1..=4096).contains(&self.plugin_memory_mb) {
            problems.push(format!(
                "plugin_memory_mb must be between 1 and 4096, got {}",
                self.plugin_memory_mb
            ));
        }
        if !(16..=16 << 20).contains(&self.media_cache_mb) {
            problems.push(format!(
                "media_cache_mb must be between 16 and 16777216, got {}",
                self.media_cache_mb
            ));
        }
        if self.media_library.is_empty() && !self.media_credentials.as_os_str().is_empty() {
            problems.push("--media-credentials needs --media-library".to_owned());
        }
        if !(1..=1000).contains(&self.plugin_call_ms) {
            problems.push(format!(
                "plugin_call_ms must be between 1 and 1000, got {}",
                self.plugin_call_ms
            ));
        }
        if !self
            .node_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            problems.push(format!(
                "node_name may use letters, digits, '-', '_' and '.' only, got {:?}",
                self.node_name
            ));
        }
        let https = parsed.etcd.iter().any(|e| e.starts_with("https://"));
        // Plain http to another machine: the cluster's configuration, credential hashes and
        // plugins cross the network readable and forgeable by anyone on the path.
        for e in &parsed.etcd {
            if !e.starts_with("https://") && !etcd_is_loopback(e) {
                tracing::warn!(endpoint = e, "etcd is reached over plain http on a network: anyone on the path can read and change the cluster's configuration; use https:// endpoints with --etcd-ca (and --etcd-cert/--etcd-key or --etcd-user)");
            }
        }
        let tls_files = [&self.etcd_ca, &self.etcd_cert, &self.etcd_key];
        if https && self.etcd_ca.as_os_str().is_empty() {
            problems.push(
                "https:// etcd endpoints need --etcd-ca (the CA of etcd's certificate)".to_owned(),
            );
        }
        if !https && tls_files.iter().any(|f| !f.as_os_str().is_empty()) {
            problems.push(
                "--etcd-ca, --etcd-cert and --etcd-key need https:// etcd endpoints".to_owned(),
            );
        }
        if self.etcd_user.is_empty() != self.etcd_password.is_empty() {
            problems.push("--etcd-user and --etcd-password go together".to_owned());
        }
        if self.etcd_cert.as_os_str().is_empty() != self.etcd_key.as_os_str().is_empty() {
            problems.push("--etcd-cert and --etcd-key go together".to_owned());
        }
        for f in tls_files.iter().filter(|f| !f.as_os_str().is_empty()) {
            if !f.is_file() {
                problems.push(format!("{} is not a readable file", f.display()));
            }
        }
        problems.extend(self.tls_problems(&mut parsed));
        if !self.shoutcast_mount.is_empty() {
            if let Err(e) = crate::model::validate_mount_path(&self.shoutcast_mount) {
                problems.push(format!("shoutcast_mount: {e}"));
            }
            match self.shoutcast_addr() {
                Ok(a) => parsed.shoutcast_listen = Some(a),
                Err(e) => problems.push(e),
            }
        } else if !self.shoutcast_listen.is_empty() {
            problems
                .push("--shoutcast-listen needs --shoutcast-mount (the mount it feeds)".to_owned());
        }
        match crate::clients::Networks::parse(&self.trusted_proxies) {
            Ok(n) => parsed.trusted_proxies = n,
            Err(e) => problems.extend(e.into_iter().map(|p| format!("trusted_proxies: {p}"))),
        }
        match self.trusted_proxies_header.parse() {
            Ok(h) => parsed.forward_header = h,
            Err(e) => problems.push(format!("trusted_proxies_header: {e}")),
        }
        if self.proxy_protocol && self.trusted_proxies.trim().is_empty() {
            problems.push(
                "--proxy-protocol needs --trusted-proxies (the proxies allowed to send it)"
                    .to_owned(),
            );
        }
        if !self.dns_listen.is_empty() {
            let addr = self.dns_listen.parse::<SocketAddr>();
            if let Err(e) = &addr {
                problems.push(format!("dns_listen {:?}: {e}", self.dns_listen));
            }
            let zone = if self.dns_zone.is_empty() {
                Err("dns_listen needs dns_zone (the zone to answer for)".to_owned())
            } else {
                crate::model::DnsZone::parse(&self.dns_zone, &self.dns_ns, self.dns_ttl_secs)
            };
            match (addr, zone) {
                (Ok(addr), Ok(zone)) => parsed.dns = Some((addr, zone)),
                (_, Err(e)) => problems.push(e),
                (Err(_), Ok(_)) => {}
            }
        }
        if !(1..=86_400).contains(&self.dns_ttl_secs) {
            problems.push("dns_ttl_secs must be between 1 and 86400".to_owned());
        }
        match self.routing.parse() {
            Ok(r) => parsed.routing = r,
            Err(e) => problems.push(format!("routing: {e}")),
        }
        if self.admin_user.contains(':') {
            problems.push("admin_user must not contain ':'".to_owned());
        }
        if problems.is_empty() {
            Ok(parsed)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The TLS settings' problems: an address that does not parse, files that are not there,
    /// certificates without a TLS port or a TLS port without certificates.
    fn tls_problems(&self, parsed: &mut Parsed) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.tls_listen.is_empty() {
            match self.tls_listen.parse::<SocketAddr>() {
                Ok(a) => parsed.tls_listen = Some(a),
                Err(e) => problems.push(format!("tls_listen {:?}: {e}", self.tls_listen)),
            }
        }
        let list = |s: &str| list_items(s).map(PathBuf::from).collect::<Vec<_>>();
        let (certs, keys) = (list(&self.tls_cert), list(&self.tls_key));
        let on = self.tls_on();
        if on && certs.is_empty() {
            problems.push(
                "--tls-listen and --listen-detects-tls need --tls-cert and --tls-key".to_owned(),
            );
        }
        if !on && !certs.is_empty() {
            problems.push(
                "--tls-cert needs --tls-listen ADDR or --listen-detects-tls (where to take TLS)"
                    .to_owned(),
            );
        }
        if certs.len() != keys.len() {
            problems.push(format!(
                "give one --tls-key file per --tls-cert file (got {} and {})",
                certs.len(),
                keys.len()
            ));
        }
        if self.redirect_http && !on {
            problems.push(
                "--redirect-http needs TLS (--tls-listen or --listen-detects-tls)".to_owned(),
            );
        }
        if self.advertise.starts_with("https://") && !on {
            problems.push(
                "an https:// --advertise needs TLS (--tls-listen or --listen-detects-tls)"
                    .to_owned(),
            );
        }
        let cluster_ca = (!self.cluster_ca.as_os_str().is_empty()).then_some(&self.cluster_ca);
        for f in certs.iter().chain(&keys).chain(cluster_ca) {
            if !f.is_file() {
                problems.push(format!("{} is not a readable file", f.display()));
            }
        }
        (parsed.tls_certs, parsed.tls_keys) = (certs, keys);
        problems
    }

    /// The host of [`ServeConfig::base_url`], without scheme or port (`[::1]` stays bracketed),
    /// and the `:PORT` part after it, if any.
    pub fn base_host(&self, req: Option<&crate::http::RequestHead>) -> (String, String) {
        let base = self.base_url(req);
        let authority = base.split_once("://").map_or(base.as_str(), |(_, a)| a);
        let host_end = if authority.starts_with('[') {
            authority.find(']').map_or(authority.len(), |i| i + 1)
        } else {
            authority.find(':').unwrap_or(authority.len())
        };
        (
            authority[..host_end].to_owned(),
            authority[host_end..].to_owned(),
        )
    }

    /// Where Shoutcast v1 sources connect: --shoutcast-listen, or the listen port + 1.
    fn shoutcast_addr(&self) -> Result<SocketAddr, String> {
        if self.shoutcast_listen.is_empty() {
            let port = self
                .listen
                .port()
                .checked_add(1)
                .filter(|_| self.listen.port() != 0);
            return port
                .map(|p| SocketAddr::new(self.listen.ip(), p))
                .ok_or_else(|| {
                    "--shoutcast-mount needs --shoutcast-listen when --listen has port 0 or 65535"
                        .to_owned()
                });
        }
        self.shoutcast_listen
            .parse()
            .map_err(|e| format!("shoutcast_listen {:?}: {e}", self.shoutcast_listen))
    }

    /// Whether the node takes TLS anywhere.
    pub fn tls_on(&self) -> bool {
        !self.tls_listen.is_empty() || self.listen_detects_tls
    }

    pub fn source_timeout(&self) -> Duration {
        Duration::from_secs(self.source_timeout_secs)
    }

    /// The directory of mounts' htpasswd and intro files (`--files-dir`, else `DATA_DIR/files`).
    pub fn files_dir(&self) -> PathBuf {
        if self.files_dir.as_os_str().is_empty() {
            self.data_dir.join("files")
        } else {
            self.files_dir.clone()
        }
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }

    pub fn write_interval(&self) -> Duration {
        Duration::from_millis(self.write_interval_ms)
    }

    /// How HLS segments are cut and kept.
    pub fn hls(&self) -> crate::hls::segment::Settings {
        crate::hls::segment::Settings {
            target: Duration::from_secs(self.hls_segment_secs),
            window: Duration::from_secs(self.hls_window_secs),
        }
    }
}

/// Why a configuration was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// Every problem found, each naming its setting.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Whether an etcd endpoint (`http://HOST:PORT` or `HOST:PORT`) is on this machine.
fn etcd_is_loopback(endpoint: &str) -> bool {
    let authority = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest)
        .trim_end_matches('/');
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base_host_splits_names_ipv6_literals_and_ports() {
        let cfg = ServeConfig::load(ServeArgs::default()).unwrap();
        let head = |host: &str, secure: bool| crate::http::RequestHead {
            method: "GET".into(),
            path: "/".into(),
            raw_query: String::new(),
            version: crate::http::Version::Http11,
            headers: vec![("Host".into(), host.into())],
            secure,
        };
        let cases = [
            (
                "[::1]:18777",
                false,
                "http://[::1]:18777",
                "[::1]",
                ":18777",
            ),
            (
                "[2001:db8::1]",
                true,
                "https://[2001:db8::1]",
                "[2001:db8::1]",
                "",
            ),
            (
                "radio.example:8443",
                true,
                "https://radio.example:8443",
                "radio.example",
                ":8443",
            ),
            (
                "radio.example",
                false,
                "http://radio.example",
                "radio.example",
                "",
            ),
        ];
        for (host, secure, base, name, port) in cases {
            let req = head(host, secure);
            assert_eq!(cfg.base_url(Some(&req)), base);
            assert_eq!(
                cfg.base_host(Some(&req)),
                (name.to_owned(), port.to_owned())
            );
        }
    }

    #[test]
    fn flags_override_file_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:9000\"\nburst_size = 1000\n").unwrap();
        let cfg = ServeConfig::load(ServeArgs {
            config: Some(f.clone()),
            burst_size: Some(2000),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.burst_size, 2000);
        assert_eq!(cfg.queue_size, 512 * 1024);

        std::fs::write(&f, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        let err = ServeConfig::load(ServeArgs {
            config: Some(f),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `lisen`"), "{err}");
    }

    #[test]
    fn text_settings_are_parsed_once_at_load() {
        let cfg = ServeConfig::load(ServeArgs {
            etcd: Some(" http://127.0.0.1:2379, ,http://127.0.0.2:2379".into()),
            cluster_secret: Some("0123456789abcdef".into()),
            proxy_user_agents: Some("NSPlayer, WinampMPEG/2,".into()),
            trusted_proxies: Some("10.0.0.0/8".into()),
            trusted_proxies_header: Some("forwarded".into()),
            routing: Some("listeners_score,best".into()),
            dns_listen: Some("127.0.0.1:0".into()),
            dns_zone: Some("stream.example.org".into()),
            shoutcast_mount: Some("/sc.mp3".into()),
            listen: Some("127.0.0.1:8000".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
        let p = &cfg.parsed;
        assert_eq!(p.etcd, ["http://127.0.0.1:2379", "http://127.0.0.2:2379"]);
        assert_eq!(p.proxy_user_agents, ["nsplayer", "winampmpeg/2"]);
        assert!(p.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        assert_eq!(p.forward_header, crate::clients::ForwardHeader::Forwarded);
        assert_eq!(p.routing.to_string(), "listeners_score,best");
        assert_eq!(p.dns.as_ref().map(|d| d.0.port()), Some(0));
        assert_eq!(p.shoutcast_listen, Some("127.0.0.1:8001".parse().unwrap()));
        assert_eq!(p.tls_listen, None);
    }

    #[test]
    fn every_problem_is_reported() {
        let err = ServeConfig::load(ServeArgs {
            queue_size: Some(10),
            write_interval_ms: Some(0),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("queue_size"), "{err}");
        assert!(err.contains("burst_size"), "{err}");
        assert!(err.contains("write_interval_ms"), "{err}");
    }
}
