//! The accept loop and request dispatch. Every connection on the listen port starts the same
//! way: its request head is read by [`crate::http::read_head`] (bounded in size and time), then
//! it goes to one of two sides. Sources (SOURCE, PUT) go to ingest and streams (GET or HEAD of a
//! mount, another node's `GET /_relay/…`) to the listener path, both hand-written; everything
//! else (the admin API, status documents, metrics, pages, `/_cluster/…`) is the control plane's,
//! served by hyper with the head bytes replayed (`http/server.rs`): the loop knows the control
//! plane only as an [`http::server::Service`](Service) (`control/serve.rs` implements it).
//! A connection on the TLS port (or one that opens with a TLS handshake on a port that takes
//! both) is a [`Stream`] after its handshake; from the request head on, both are served alike.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::Node;
use crate::http::server::Service;
use crate::http::{read_head, send, Cors, HeadError, RequestHead, Response};
use crate::metrics::ErrorKind;
use crate::tls::{Acceptor, Stream};

/// Who a connection's client is (behind a trusted proxy, the one it names) and where its
/// requests are logged.
pub struct Front {
    /// Proxies whose word on a client's address is taken.
    pub proxies: crate::clients::Proxies,
    /// The access log, if any.
    pub access: Option<Arc<crate::access_log::AccessLog>>,
}

/// Where a node takes connections: the plain port, and optionally a TLS port and the
/// certificates (which `--listen-detects-tls` also uses on the plain port).
pub struct Ports {
    pub plain: TcpListener,
    pub tls: Option<TcpListener>,
    /// Shoutcast v1 sources for --shoutcast-mount.
    pub shoutcast: Option<TcpListener>,
    pub acceptor: Option<Acceptor>,
    /// The plain port also takes TLS, told apart by the first byte.
    pub detect: bool,
}

/// How a connection starts before its request head.
#[derive(Clone, Copy)]
enum Opening {
    Plain,
    Tls,
    /// Plain or TLS, by the first byte.
    Either,
    /// A Shoutcast v1 source: a password line, not a request head.
    Shoutcast,
}

/// Serves connections from `ports` until `shutdown` resolves; what is not a source, a stream or
/// HLS goes to `control`.
pub async fn run(
    ports: Ports,
    state: Arc<Node>,
    control: Arc<dyn Service>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(state.config.max_clients));
    let per_address = crate::limits::PerAddress::new(state.config.max_clients_per_address);
    let reporter = tokio::spawn(state.load.clone().run());
    let hls = tokio::spawn(crate::hls::run(state.hls.clone()));
    let silence = tokio::spawn(crate::transcode::silence::run(
        state.producers.transcode().clone(),
    ));
    let certs = ports
        .acceptor
        .as_ref()
        .map(|a| tokio::spawn(crate::tls::follow(a.certs.clone())));
    let plain_opening = match (&ports.acceptor, ports.detect) {
        (Some(_), true) => Opening::Either,
        _ => Opening::Plain,
    };
    tokio::pin!(shutdown);
    loop {
        let (accepted, opening) = tokio::select! {
            a = ports.plain.accept() => (a, plain_opening),
            a = accept_on(ports.tls.as_ref()) => (a, Opening::Tls),
            a = accept_on(ports.shoutcast.as_ref()) => (a, Opening::Shoutcast),
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            // A dual-stack `[::]` listener sees IPv4 clients as ::ffff:a.b.c.d: limits, logs and
            // listclients see the IPv4 address.
            Ok((s, p)) => (
                s,
                SocketAddr::new(crate::clients::canonical(p.ip()), p.port()),
            ),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let control = control.clone();
        // A trusted proxy carries many clients: each of them is counted once its address is
        // known (from the PROXY header or the forwarded-for headers), not the proxy.
        let proxied = state.front.proxies.contains(peer.ip());
        let (Ok(permit), Some(slot)) = (
            permits.clone().try_acquire_owned(),
            if proxied {
                Some(crate::limits::AddressSlot::uncounted())
            } else {
                per_address.take(peer.ip())
            },
        ) else {
            // Over a connection limit: one non-blocking attempt at a 503 (on a port where it
            // can be read without a handshake), then close. No task is spawned, so a
            // connection flood cannot pile up work.
            let (kind, why) = if permits.available_permits() == 0 {
                (ErrorKind::Full, "server full")
            } else {
                (
                    ErrorKind::AddressFull,
                    "too many connections from your address",
                )
            };
            state.metrics.error(kind);
            if !matches!(opening, Opening::Tls) {
                let r = Response::text(503, why);
                let _ = stream.try_write(&r.to_bytes("HTTP/1.0", false));
            }
            continue;
        };
        let acceptor = ports.acceptor.clone();
        let held = Held {
            places: Places {
                _permit: permit,
                slot,
            },
            limits: per_address.clone(),
            behind_proxy: proxied,
        };
        // Every transient phase (the TLS handshake, a request head's answer on the control
        // plane, HLS, ingest, a listener's routing and admission) is boxed below: the task keeps
        // what the longest-lived state needs, a listener's write loop, not the largest phase.
        let connection = async move {
            if let Opening::Shoutcast = opening {
                let mount = state.config.shoutcast_mount.clone();
                let within = state.config.header_timeout();
                let ingest = state.ingest.clone();
                Box::pin(crate::ingest::shoutcast::serve(
                    Stream::Plain(stream),
                    peer,
                    ingest,
                    mount,
                    within,
                ))
                .await;
                drop(held);
            } else if let Some((stream, client)) =
                Box::pin(open(stream, peer, opening, acceptor, &state)).await
            {
                handle(stream, client, state, control, held).await;
            }
        };
        tokio::spawn(connection);
    }
    reporter.abort();
    hls.abort();
    silence.abort();
    if let Some(c) = certs {
        c.abort();
    }
    info!("stopped accepting connections");
}

/// The next connection on `listener`; never, without one.
async fn accept_on(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// The connection after its PROXY protocol header and its TLS handshake, if it has them, and
/// the client's address (from the PROXY header, else the connection's). `None`: it failed or
/// never began (counted; logged at debug, as scanners do this all day).
async fn open(
    mut tcp: TcpStream,
    peer: SocketAddr,
    opening: Opening,
    acceptor: Option<Acceptor>,
    state: &Node,
) -> Option<(Stream, SocketAddr)> {
    let within = state.config.header_timeout();
    let mut client = peer;
    // Only a trusted proxy's PROXY header is read; anyone else (another node, a client that
    // bypasses the proxy) is served as it comes, with its own address.
    if state.config.proxy_protocol && state.front.proxies.contains(peer.ip()) {
        match crate::clients::read_proxy_header(&mut tcp, within).await {
            Ok(Some(named)) => client = named,
            Ok(None) | Err(crate::clients::ProxyHeaderError::Missing) => {}
            Err(e) => {
                state.metrics.error(ErrorKind::BadRequest);
                info!(%peer, error = %e, "connection refused");
                return None;
            }
        }
    }
    let tls = match opening {
        Opening::Plain | Opening::Shoutcast => false,
        Opening::Tls => true,
        Opening::Either => crate::tls::starts_tls(&tcp, within).await?,
    };
    let Some(acceptor) = acceptor.filter(|_| tls) else {
        return Some((Stream::Plain(tcp), client));
    };
    match acceptor.accept(tcp, within).await {
        Ok(s) => Some((s, client)),
        Err(e) => {
            state.metrics.error(ErrorKind::BadRequest);
            debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
    }
}

/// What a connection holds while it is served, given back when it ends: its place among the
/// node's connections (`--max-clients`) and in the per-address limits.
struct Places {
    _permit: tokio::sync::OwnedSemaphorePermit,
    slot: crate::limits::AddressSlot,
}

/// A connection's places, and how to count it: the per-address place was taken at accept for
/// its own address, none for a trusted proxy's (`behind_proxy`). A client named by a trusted
/// proxy, or a listener another node proxies here, is counted under its own address once its
/// first request head names it.
struct Held {
    places: Places,
    limits: Arc<crate::limits::PerAddress>,
    behind_proxy: bool,
}

/// Serves one connection (`peer`: the client, as its PROXY header named it if it has one).
async fn handle(
    mut stream: Stream,
    peer: SocketAddr,
    state: Arc<Node>,
    control: Arc<dyn Service>,
    held: Held,
) {
    let mut buf = BytesMut::with_capacity(4096);
    let header_timeout = state.config.header_timeout();
    let tcp_peer = peer;
    let Held {
        mut places,
        limits,
        behind_proxy,
    } = held;
    // Requests on this connection: more than one only after HLS answers, which keep it open
    // (players fetch a playlist and a segment every few seconds); anything else ends it.
    for served in 0u64.. {
        let mut req = match read_head(&mut stream, &mut buf, header_timeout).await {
            Ok(r) => r,
            // A kept-alive connection the player let go quiet, or closed.
            Err(HeadError::Closed | HeadError::Timeout(_)) if served > 0 && buf.is_empty() => {
                return;
            }
            Err(e) => {
                let kind = match e.status() {
                    Some(408) => ErrorKind::Timeout,
                    Some(431) => ErrorKind::TooLarge,
                    Some(_) => ErrorKind::BadRequest,
                    None => {
                        debug!(%peer, error = %e, "connection closed before a request");
                        return;
                    }
                };
                state.metrics.error(kind);
                info!(%peer, error = %e, "bad request");
                if let Some(status) = e.status() {
                    send(&mut stream, &Response::text(status, &e), "HTTP/1.0", false).await;
                }
                return;
            }
        };
        req.secure = stream.is_tls();
        // Behind a trusted proxy, the client it names; for a listener another node proxies
        // here (the request carries the cluster secret), the listener.
        let from_node = state.peers.listener_of(&req);
        let peer = SocketAddr::new(
            from_node.unwrap_or_else(|| {
                crate::clients::forwarded_for(&req, tcp_peer.ip(), &state.front.proxies)
            }),
            tcp_peer.port(),
        );
        if served == 0 && (behind_proxy || from_node.is_some()) {
            places.slot = match limits.take(peer.ip()) {
                Some(slot) => slot,
                None => {
                    state.metrics.error(ErrorKind::AddressFull);
                    let r = Response::text(503, "too many connections from your address");
                    send(&mut stream, &r, req.response_version(), false).await;
                    return;
                }
            };
        }
        if crate::hls::Hls::takes(&req.path) && matches!(req.method.as_str(), "GET" | "HEAD") {
            if !Box::pin(answer_hls(&mut stream, peer, &req, &state)).await {
                return;
            }
            continue;
        }
        return dispatch(stream, peer, req, buf, state, control, places).await;
    }
}

/// Answers an HLS request on the hand-written side, with its access-log line; true if the
/// connection stays open for the next request (HTTP/1.1, and the client did not ask to close).
async fn answer_hls(
    stream: &mut Stream,
    peer: SocketAddr,
    req: &RequestHead,
    state: &Node,
) -> bool {
    let started = std::time::Instant::now();
    let cors = Cors::from(req);
    let r = cors.apply(state.hls.answer(peer, req).await, false);
    // A request that declares a body is the last on its connection: the body is never read,
    // so nothing after the head may be taken for the next request (request smuggling).
    let body = req.headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding")
            || (n.eq_ignore_ascii_case("content-length") && v.trim() != "0")
    });
    let keep = req.version == crate::http::Version::Http11
        && !body
        && !req
            .header("connection")
            .is_some_and(|c| c.to_ascii_lowercase().contains("close"));
    let version = req.response_version();
    let head_only = req.method == "HEAD";
    let kept = if keep {
        crate::http::send_keep_alive(stream, &r, version, head_only).await
    } else {
        send(stream, &r, version, head_only).await;
        false
    };
    if let Some(log) = &state.front.access {
        log.request(peer.ip(), req, &crate::access_log::Outcome::of(&r), started);
    }
    kept
}

/// Hands a request to the side that serves it: hyper's control plane, ingest, a relay or a
/// listener. `places` are held until it is served.
async fn dispatch(
    mut stream: Stream,
    peer: SocketAddr,
    req: RequestHead,
    buf: BytesMut,
    state: Arc<Node>,
    control: Arc<dyn Service>,
    places: Places,
) {
    let header_timeout = state.config.header_timeout();
    if control.takes(&req) {
        let handler = move |req, body| control.clone().answer(peer, req, body);
        Box::pin(crate::http::server::serve(
            stream,
            req,
            buf,
            header_timeout,
            handler,
        ))
        .await;
        return;
    }
    match req.method.as_str() {
        "SOURCE" | "PUT" => {
            Box::pin(crate::ingest::serve(
                stream,
                peer,
                req,
                buf,
                state.ingest.clone(),
            ))
            .await
        }
        "GET" if req.path.starts_with("/_relay/") => {
            // Another node relaying a mount (the listener path), only with the cluster secret.
            drop(buf);
            if !state.peers.matches(&req) {
                state.metrics.error(ErrorKind::Unauthorized);
                let r = Response::text(403, "cluster secret required");
                send(&mut stream, &r, req.response_version(), false).await;
                return;
            }
            // Fencing: a relay names the election it expects this node to have won; a node
            // that no longer holds it (its lease ended while it was frozen or cut off) is a
            // stale origin and feeds nobody.
            let mount = &req.path["/_relay".len()..];
            if let Some(wanted) = req.header(crate::ingest::relay::ORIGIN_REVISION) {
                let held = state.coordinator.held_revision(mount);
                if held.map(|r| r.to_string()).as_deref() != Some(wanted.trim()) {
                    let r = Response::text(
                        409,
                        format!("this node does not hold the election of {mount} at revision {}; ask the current origin\n", wanted.escape_debug()),
                    );
                    send(&mut stream, &r, req.response_version(), false).await;
                    return;
                }
            }
            // Served here, never routed elsewhere: the `/_stream/` form of the mount.
            let mut req = req;
            req.path = format!("/_stream{}", &req.path["/_relay".len()..]);
            listen_apart(stream, peer, req, &state, places);
        }
        _ => {
            // GET or HEAD of a mount.
            drop(buf);
            listen_apart(stream, peer, req, &state, places);
        }
    }
}

/// Serves a listener (or another node's relay) in a task of its own, which holds the
/// connection's `places` until it ends. The connection's task, sized for the phases before (the
/// request head, TLS, dispatch), ends here: a listener carries only its session, for as long as
/// it listens.
fn listen_apart(stream: Stream, peer: SocketAddr, req: RequestHead, state: &Node, places: Places) {
    let listen = state.listen.clone();
    tokio::spawn(async move {
        let cors = Cors::from(&req);
        crate::listen::serve(stream, peer, req, listen, cors).await;
        drop(places);
    });
}
