//! From a configuration to a running node: the coordinator (the embedded store, or etcd with
//! this node's advertised address checked first), the admin account, the DNS server, plugins,
//! each stage's handles ([`wire`]), the control plane's tasks, then the accept loop until
//! `shutdown` (and the drain it starts, `node/drain.rs`).

mod wire;

use std::io::Write;
use std::sync::Arc;

use tracing::{info, warn};

use crate::cluster::coordinator::{CoordError, Coordinator, Embedded};
use crate::cluster::{dns, etcd};
use crate::config::ServeConfig;
use crate::model::AdminCredential;
use crate::node::{accept, drain};
use crate::{auth, plugin};

/// Why a node did not start. Each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the listen socket: {0}")]
    Listener(std::io::Error),
    #[error("the configuration store: {0}")]
    Store(#[from] CoordError),
    #[error(transparent)]
    Etcd(#[from] etcd::JoinError),
    /// The advertised URL does not lead here.
    #[error(
        "{0}; give --advertise http://HOST:PORT (or https://) with an address the other nodes reach this node at"
    )]
    Advertise(String),
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
    #[error(transparent)]
    Hash(#[from] auth::HashError),
    #[error(transparent)]
    Plugins(#[from] plugin::EngineError),
    #[error("the cluster's CA: {0}")]
    ClusterCa(#[from] crate::http::client::ClientError),
    #[error("TLS certificates: {0}")]
    Certs(#[from] crate::tls::CertError),
    #[error("cannot open the access log {0}: {1}")]
    AccessLog(String, std::io::Error),
    #[error("cannot listen for Shoutcast sources on {0}: {1}")]
    ShoutcastListen(std::net::SocketAddr, std::io::Error),
    #[error(transparent)]
    Media(#[from] crate::media::LibraryError),
    #[error("the media cache: {0}")]
    MediaCache(std::io::Error),
    #[error("cannot listen for TLS on {0}: {1}")]
    TlsListen(std::net::SocketAddr, std::io::Error),
    #[error(transparent)]
    Hooks(#[from] crate::hooks::HooksError),
}

/// Runs a node on `listener` with `config` until `shutdown` resolves and the node has drained
/// (`--drain-secs`). What `tidecast serve` does once it has bound the listen address.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let addr = listener.local_addr().map_err(StartError::Listener)?;
    let front = Front::open(&config).await?;
    // The port really bound (port 0 in tests), for redirects to HTTPS.
    let mut config = config;
    if let Some(a) = front.tls.as_ref().and_then(|l| l.local_addr().ok()) {
        config.parsed.tls_listen = Some(a);
    }
    // An advertised URL with port 0 names the port the node chose for the listener its scheme
    // leads to (a node started on port 0, e.g. by tests).
    let leads_to = match &front.tls {
        Some(tls) if config.advertise.starts_with("https://") => tls,
        _ => &listener,
    };
    if let Some(port) = leads_to.local_addr().ok().map(|a| a.port()) {
        config.advertise = with_port(&config.advertise, port);
    }
    let coordinator = open_store(&config, &listener, front.tls.as_ref(), &front.peers).await?;
    ensure_admin(&config, coordinator.as_ref()).await?;
    // Radios' web servers: the system's CAs. Checked before the node says it listens.
    let hooks = Arc::new(crate::hooks::Hooks::start(
        &config.event_hooks,
        coordinator.node_name(),
        crate::http::client::Client::new(None).unwrap_or_default(),
    )?);
    let dns = match &config.parsed.dns {
        Some((addr, zone)) => Some((dns::bind(*addr).await?, zone.clone())),
        None => None,
    };
    let any_mount_hash = if config.any_mount_password.is_empty() {
        None
    } else {
        warn!("open mode: any mount accepts a source with the global source password");
        Some(auth::hash_password(&config.any_mount_password)?)
    };
    front.say_ports(
        addr,
        dns.as_ref().and_then(|(sockets, _)| sockets.local_addr()),
    );
    info!(%addr, data_dir = %config.data_dir.display(), "node started");
    let (plugins, media) = open_media(&config, &front.peers, &coordinator)?;
    let Front {
        access,
        peers,
        acceptor,
        tls,
        shoutcast,
    } = front;
    let (node, control) = wire::wire(wire::Parts {
        config,
        coordinator: coordinator.clone(),
        hooks,
        media,
        any_mount_hash,
        plugins,
        peers,
        certs: acceptor.as_ref().map(|a| a.certs.clone()),
        access: access.clone(),
    });
    let node = Arc::new(node);
    let control = Arc::new(control);
    let control_tasks = crate::control::Tasks::start(&control);
    let reopen = access.map(|log| tokio::spawn(crate::access_log::reopen_on_hangup(log)));
    let dns = dns.map(|(sockets, zone)| {
        let load = node.load.clone();
        tokio::spawn(async move {
            if let Err(e) = dns::serve(load, sockets, zone).await {
                tracing::error!(error = %e, "DNS server stopped");
            }
        })
    });
    let ports = accept::Ports {
        plain: listener,
        tls,
        shoutcast,
        acceptor,
        detect: node.config.listen_detects_tls,
    };
    let drained = drain::until_drained(node.clone(), shutdown);
    accept::run(ports, node, control, drained).await;
    drop(control_tasks);
    if let Some(d) = dns {
        d.abort();
    }
    if let Some(r) = reopen {
        r.abort();
    }
    coordinator.leave().await;
    Ok(())
}

/// What faces clients and the other nodes, opened before anything else: the access log, the
/// client for other nodes (with the cluster's CA), the TLS certificates, the TLS port and the
/// Shoutcast sources' port.
struct Front {
    access: Option<Arc<crate::access_log::AccessLog>>,
    peers: crate::cluster::peer::Peers,
    acceptor: Option<crate::tls::Acceptor>,
    tls: Option<tokio::net::TcpListener>,
    shoutcast: Option<tokio::net::TcpListener>,
}

impl Front {
    async fn open(config: &ServeConfig) -> Result<Front, StartError> {
        let access = if config.access_log.is_empty() {
            None
        } else {
            Some(Arc::new(
                crate::access_log::AccessLog::open(&config.access_log)
                    .map_err(|e| StartError::AccessLog(config.access_log.clone(), e))?,
            ))
        };
        let cluster_ca =
            (!config.cluster_ca.as_os_str().is_empty()).then_some(config.cluster_ca.as_path());
        let peers = crate::cluster::peer::Peers::new(
            config.cluster_secret.clone(),
            crate::http::client::Client::new(cluster_ca)?,
        );
        let acceptor = if config.tls_on() {
            let (certs, keys) = (&config.parsed.tls_certs, &config.parsed.tls_keys);
            Some(crate::tls::Acceptor::new(crate::tls::Certs::load(
                certs, keys,
            )?))
        } else {
            None
        };
        let tls = match config.parsed.tls_listen {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .map_err(|e| StartError::TlsListen(a, e))?,
            ),
            None => None,
        };
        let shoutcast = match config.parsed.shoutcast_listen {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .map_err(|e| StartError::ShoutcastListen(a, e))?,
            ),
            None => None,
        };
        Ok(Front {
            access,
            peers,
            acceptor,
            tls,
            shoutcast,
        })
    }

    /// Says on standard output where the node listens (and answers DNS): tests and scripts read
    /// these lines to find the ports it was given (port 0 chooses a free one).
    fn say_ports(&self, addr: std::net::SocketAddr, dns: Option<std::net::SocketAddr>) {
        println!("tidecast listening on {addr}");
        if let Some(tls) = self.tls.as_ref().and_then(|l| l.local_addr().ok()) {
            println!("tidecast listening for TLS on {tls}");
        }
        if let Some(a) = self.shoutcast.as_ref().and_then(|l| l.local_addr().ok()) {
            println!("tidecast listening for Shoutcast v1 sources on {a}");
        }
        if let Some(a) = dns {
            println!("tidecast listening for DNS on {a}");
        }
        let _ = std::io::stdout().flush();
    }
}

/// `url` with `port` in place of a port 0 (`https://HOST:0` or `https://HOST:0/`); any other
/// URL as it is.
fn with_port(url: &str, port: u16) -> String {
    match url.trim_end_matches('/').strip_suffix(":0") {
        Some(rest) if rest.contains("://") && !rest.ends_with(':') => format!("{rest}:{port}"),
        _ => url.to_owned(),
    }
}

/// The configuration store: the embedded one in the data directory, or etcd (this node's
/// advertised URL checked to lead here first: the TLS port's for an `https://` one).
async fn open_store(
    config: &ServeConfig,
    listener: &tokio::net::TcpListener,
    tls: Option<&tokio::net::TcpListener>,
    peers: &crate::cluster::peer::Peers,
) -> Result<Arc<dyn Coordinator>, StartError> {
    if config.parsed.etcd.is_empty() {
        return Ok(Arc::new(Embedded::open(&config.data_dir)?));
    }
    let endpoints = config.parsed.etcd.clone();
    let node = if config.node_name.is_empty() {
        hostname()
    } else {
        config.node_name.clone()
    };
    let advertise = if config.advertise.is_empty() {
        let addr = listener.local_addr().map_err(StartError::Listener)?;
        format!("http://{addr}")
    } else {
        config.advertise.clone()
    };
    let advertised_port = match tls {
        Some(tls) if advertise.starts_with("https://") => tls,
        _ => listener,
    };
    check_advertise(advertised_port, &advertise).await?;
    let ttl = i64::try_from(config.lease_ttl_secs).unwrap_or(2);
    let access = etcd::Access {
        tls: if config.etcd_ca.as_os_str().is_empty() {
            None
        } else {
            Some(etcd::tls_options(
                &config.etcd_ca,
                &config.etcd_cert,
                &config.etcd_key,
            )?)
        },
        user: (!config.etcd_user.is_empty())
            .then(|| (config.etcd_user.clone(), config.etcd_password.clone())),
    };
    let prefix = &config.etcd_prefix;
    let store = etcd::Etcd::open(
        &endpoints,
        access,
        prefix,
        &node,
        &advertise,
        ttl,
        peers.clone(),
    );
    Ok(Arc::new(store.await?))
}

/// The plugin engine (its compiled components cached in the data directory) and the media
/// library with this node's cache of it.
fn open_media(
    config: &ServeConfig,
    peers: &crate::cluster::peer::Peers,
    coordinator: &Arc<dyn Coordinator>,
) -> Result<(Arc<plugin::Plugins>, Arc<crate::media::Cache>), StartError> {
    let plugins = plugin::Plugins::new(
        Some(config.data_dir.join("plugin-cache")),
        plugin::Limits {
            memory_bytes: config.plugin_memory_mb * 1024 * 1024,
            policy_deadline: std::time::Duration::from_millis(config.plugin_call_ms),
            ..plugin::Limits::default()
        },
    )?;
    let library = if config.media_library.is_empty() {
        None
    } else {
        let l = crate::media::Library::open(&config.media_library, &config.media_credentials)?;
        info!(library = %l.url, "media library");
        Some(l)
    };
    let media = crate::media::Cache::open(
        config.data_dir.join("media-cache"),
        config.media_cache_mb * 1024 * 1024,
        library,
        peers.clone(),
        coordinator.clone(),
    )
    .map_err(StartError::MediaCache)?;
    Ok((plugins, Arc::new(media)))
}

/// Checks that `advertise` (what other nodes and redirected listeners will use) reaches this
/// node's `listener`: it names a concrete host and port, and a connection to it arrives here.
/// Nothing else is accepted yet, so the one connection that arrives is the probe's.
async fn check_advertise(
    listener: &tokio::net::TcpListener,
    advertise: &str,
) -> Result<(), StartError> {
    let fail = |why: String| Err(StartError::Advertise(why));
    let Some(authority) = crate::cluster::peer::node_authority(advertise) else {
        return fail(format!(
            "the advertised URL {advertise:?} is not http://HOST:PORT or https://HOST:PORT"
        ));
    };
    let resolved: Vec<std::net::SocketAddr> = match tokio::net::lookup_host(authority).await {
        Ok(found) => found.collect(),
        Err(e) => {
            return fail(format!(
                "the advertised address {authority} does not resolve ({e})"
            ))
        }
    };
    if resolved.iter().any(|a| a.ip().is_unspecified()) {
        return fail(format!(
            "the advertised address {authority} is a wildcard that other nodes cannot use"
        ));
    }
    // Players and sources reconnecting to a restarted node may arrive first: those are
    // closed (they try again once the node serves) while the probe's own connection is
    // looked for among the next few.
    let probe = async {
        let out = tokio::net::TcpStream::connect(authority).await?;
        let me = out.local_addr()?;
        for _ in 0..256 {
            let (_, from) = listener.accept().await?;
            if from == me {
                return std::io::Result::Ok(true);
            }
        }
        Ok(false)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), probe).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => fail(format!(
            "the advertised address {authority} reaches another server, not this node"
        )),
        Ok(Err(e)) => fail(format!(
            "the advertised address {authority} does not reach this node ({e})"
        )),
        Err(_) => fail(format!(
            "connections to the advertised address {authority} do not arrive at this node"
        )),
    }
}

/// The host name, for a node that was given no `--node-name`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tidecast".to_owned())
}

/// Makes sure an admin account exists: from the flags/environment, else the stored one, else a
/// generated one printed once.
async fn ensure_admin(config: &ServeConfig, coord: &dyn Coordinator) -> Result<(), StartError> {
    let existing = coord.admin();
    let user = if config.admin_user.is_empty() {
        existing
            .as_ref()
            .map_or("admin".to_owned(), |a| a.user.clone())
    } else {
        config.admin_user.clone()
    };
    if !config.admin_password.is_empty() {
        let same = existing.as_ref().is_some_and(|a| {
            a.user == user && auth::verify_blocking(&config.admin_password, &a.password_hash)
        });
        if !same {
            let password_hash = auth::hash_password(&config.admin_password)?;
            coord
                .set_admin(
                    AdminCredential {
                        user,
                        password_hash,
                    },
                    false,
                )
                .await?;
        }
        return Ok(());
    }
    if let Some(a) = existing {
        if a.user != user {
            coord
                .set_admin(AdminCredential { user, ..a }, false)
                .await?;
        }
        return Ok(());
    }
    let password = auth::generate_password(20);
    let password_hash = auth::hash_password(&password)?;
    let generated = AdminCredential {
        user: user.clone(),
        password_hash,
    };
    match coord.set_admin(generated, true).await {
        Ok(()) => {}
        Err(CoordError::Conflict(_)) => {
            eprintln!("\n  Admin credentials were just generated by another node of this cluster: use the ones it printed.\n");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    eprintln!(
        "\n  Generated admin credentials (shown only once, stored hashed):\n    user:     {user}\n    password: {password}\n  Use them with `tidecast mount …` via --admin-password or TIDECAST_ADMIN_PASSWORD.\n"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::with_port;

    #[test]
    fn an_advertised_port_0_is_the_chosen_port() {
        assert_eq!(
            with_port("https://127.0.0.3:0", 4433),
            "https://127.0.0.3:4433"
        );
        assert_eq!(with_port("http://[::1]:0/", 80), "http://[::1]:80");
        assert_eq!(
            with_port("http://a.example:8000", 1),
            "http://a.example:8000"
        );
        assert_eq!(with_port("http://a.example:10", 1), "http://a.example:10");
        assert_eq!(with_port("", 1), "");
    }
}
