//! The optional authoritative DNS server of the cluster zone (`--dns-listen`, `--dns-zone`), so
//! the stream's host name always resolves to live nodes:
//! - `<zone>` A/AAAA: every live node (by the address in its advertised URL), at most
//!   [`MAX_ADDRESSES`], least loaded first;
//! - `<node>.<zone>` A/AAAA: that node;
//! - `<zone>` NS: `--dns-ns` (default `ns.<zone>`), and SOA.
//!
//! Answers use short TTLs (`--dns-ttl-secs`) so a dead node leaves resolvers quickly. Names
//! outside the zone are REFUSED; unknown names in it are NXDOMAIN with the SOA. Served over UDP
//! and TCP by hickory-server; the records come from the same node reports routing uses.
//!
//! Not an amplifier: ANY gets the minimal RFC 8482 answer (one HINFO), and UDP answers are rate
//! limited per client network ([`RATE`] a second, bursts of [`BURST`], per IPv4 /24 or IPv6 /56);
//! past that a client gets an empty truncated answer, no larger than its query, which sends a
//! real resolver to TCP. TCP is bounded too: [`TCP_CONNECTIONS`] connections at once, at most
//! [`TCP_PER_ADDRESS`] from one address, each closed after [`TCP_IDLE`] without a query or after
//! [`TCP_QUERIES`] queries.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, HINFO, NS, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::proto::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use tracing::{info, warn};

use super::load::Load;
use crate::model::DnsZone as Zone;
use crate::sync::Locked;

/// Most addresses in one answer for the zone's name.
pub const MAX_ADDRESSES: usize = 8;

impl Zone {
    fn soa(&self) -> Record {
        let serial = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            & 0xffff_ffff) as u32;
        let mbox = Name::from_str("hostmaster")
            .and_then(|n| n.append_domain(&self.origin))
            .unwrap_or_else(|_| self.origin.clone());
        let ttl = self.ttl as i32;
        Record::from_rdata(
            self.origin.clone(),
            self.ttl,
            RData::SOA(SOA::new(
                self.name_servers[0].clone(),
                mbox,
                serial,
                ttl.max(60),
                ttl.max(60),
                3600,
                self.ttl,
            )),
        )
    }
}

/// Cheap to clone: hickory-server owns one (UDP), the TCP side another.
#[derive(Clone)]
struct Handler {
    load: Arc<Load>,
    zone: Arc<Zone>,
    limiter: Arc<Mutex<RateLimiter>>,
}

/// UDP answers a second per client network.
pub const RATE: f64 = 50.0;
/// UDP answers a client network may get at once.
pub const BURST: f64 = 100.0;
/// Client networks remembered; past this, the ones with a full bucket again are forgotten.
const NETWORKS_MAX: usize = 16_384;

/// Token buckets per client network (IPv4 /24, IPv6 /56).
#[derive(Default)]
struct RateLimiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    /// Whether an answer to `client` is within its network's rate.
    fn allow(&mut self, client: IpAddr) -> bool {
        let net = match client {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], 0))
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3] & 0xff00, 0, 0, 0, 0))
            }
        };
        let now = Instant::now();
        if self.buckets.len() >= NETWORKS_MAX && !self.buckets.contains_key(&net) {
            let full = |(tokens, at): &(f64, Instant)| {
                tokens + now.saturating_duration_since(*at).as_secs_f64() * RATE >= BURST
            };
            self.buckets.retain(|_, b| !full(b));
            if self.buckets.len() >= NETWORKS_MAX {
                return false;
            }
        }
        let (tokens, at) = self.buckets.entry(net).or_insert((BURST, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * RATE).min(BURST);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

impl Handler {
    /// The addresses of the live nodes, least loaded first: all of them for the zone's name, or
    /// one node's for `<node>.<zone>`. `None`: no such name.
    fn addresses(&self, name: &LowerName) -> Option<Vec<IpAddr>> {
        let mut nodes = self.load.nodes();
        let ip = |url: &str| -> Option<IpAddr> {
            let authority = url.strip_prefix("http://")?.split('/').next()?;
            let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
            host.trim_matches(['[', ']']).parse().ok()
        };
        if *name == self.zone.lower {
            nodes.sort_by_key(|n| {
                // In u64: a report's numbers come from another node (and etcd).
                let share = |used: u32, max: u32| {
                    (u64::from(used) * 1000)
                        .checked_div(u64::from(max))
                        .unwrap_or(0)
                };
                share(n.listeners, n.max_listeners)
                    .max(share(n.bandwidth_kbps, n.max_bandwidth_kbps))
            });
            return Some(
                nodes
                    .iter()
                    .filter_map(|n| ip(&n.url))
                    .take(MAX_ADDRESSES)
                    .collect(),
            );
        }
        let label = name.to_string();
        let label = label.strip_suffix(&format!(".{}", self.zone.origin.to_lowercase()))?;
        nodes
            .iter()
            .find(|n| n.name.eq_ignore_ascii_case(label))
            .map(|n| ip(&n.url).into_iter().collect())
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        header.set_recursion_available(false);
        let query = match request.queries() {
            [q] if request.message_type() == MessageType::Query
                && request.op_code() == OpCode::Query =>
            {
                q
            }
            _ => {
                header.set_response_code(ResponseCode::NotImp);
                return send(&mut response, builder.build_no_records(header)).await;
            }
        };
        if request.protocol() == Protocol::Udp && !self.limiter.locked().allow(request.src().ip()) {
            header.set_truncated(true);
            return send(&mut response, builder.build_no_records(header)).await;
        }
        let name = query.name();
        if !self.zone.lower.zone_of(name) {
            header.set_authoritative(false);
            header.set_response_code(ResponseCode::Refused);
            return send(&mut response, builder.build_no_records(header)).await;
        }
        let ttl = self.zone.ttl;
        let owner = Name::from(name.clone());
        let mut answers = Vec::new();
        let Some(addresses) = self.addresses(name) else {
            header.set_response_code(ResponseCode::NXDomain);
            let soa = [self.zone.soa()];
            return send(&mut response, builder.build(header, &[], &[], &soa, &[])).await;
        };
        let apex = *name == self.zone.lower;
        match query.query_type() {
            // RFC 8482: no list of everything, one small synthesized record.
            RecordType::ANY => answers.push(Record::from_rdata(
                owner.clone(),
                ttl,
                RData::HINFO(HINFO::new("RFC8482".to_owned(), String::new())),
            )),
            RecordType::A | RecordType::AAAA => {
                for ip in addresses {
                    let rdata = match (ip, query.query_type()) {
                        (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                        (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                        _ => continue,
                    };
                    answers.push(Record::from_rdata(owner.clone(), ttl, rdata));
                }
            }
            RecordType::NS if apex => {
                for ns in &self.zone.name_servers {
                    answers.push(Record::from_rdata(
                        owner.clone(),
                        ttl,
                        RData::NS(NS(ns.clone())),
                    ));
                }
            }
            RecordType::SOA if apex => answers.push(self.zone.soa()),
            _ => {}
        }
        // No data of that type: NOERROR with the SOA, so resolvers cache the absence briefly.
        let soa = if answers.is_empty() {
            vec![self.zone.soa()]
        } else {
            vec![]
        };
        send(
            &mut response,
            builder.build(header, &answers, &[], &soa, &[]),
        )
        .await
    }
}

async fn send<'q, 'a, R: ResponseHandler>(
    response: &mut R,
    message: hickory_server::authority::MessageResponse<
        'q,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    match response.send_response(message).await {
        Ok(info) => info,
        Err(e) => {
            warn!(error = %e, "DNS answer not sent");
            let mut h = Header::new();
            h.set_response_code(ResponseCode::ServFail);
            h.into()
        }
    }
}

/// The DNS server's sockets, bound at start-up so a busy port is a start-up error.
pub struct Sockets {
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
}

/// Binds `addr` for UDP and TCP.
pub async fn bind(addr: std::net::SocketAddr) -> Result<Sockets, DnsError> {
    let bind = |proto| {
        move |source| DnsError::Bind {
            addr,
            proto,
            source,
        }
    };
    // Port 0 chooses a port: the one UDP got, for TCP too (tried again on another if TCP's is
    // taken).
    let tries = if addr.port() == 0 { 8 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(bind("udp"))?;
        let bound = udp.local_addr().map_err(bind("udp"))?;
        match tokio::net::TcpListener::bind(bound).await {
            Ok(tcp) => return Ok(Sockets { udp, tcp }),
            Err(e) => last = Some(e),
        }
    }
    Err(bind("tcp")(last.unwrap_or_else(|| {
        std::io::Error::other("no port free for both UDP and TCP")
    })))
}

impl Sockets {
    /// Where it answers (UDP and TCP alike).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.udp.local_addr().ok()
    }
}

/// Why the DNS server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen for DNS on {addr}/{proto}: {source} (choose another --dns-listen)")]
    Bind {
        addr: std::net::SocketAddr,
        proto: &'static str,
        source: std::io::Error,
    },
    #[error("DNS server: {0}")]
    Serve(String),
}

/// Serves the zone until the task is dropped: UDP through hickory-server, TCP here (hickory's
/// TCP listener takes every connection offered).
pub async fn serve(load: Arc<Load>, sockets: Sockets, zone: Zone) -> Result<(), DnsError> {
    let Sockets { udp, tcp } = sockets;
    info!(addr = ?udp.local_addr().ok(), zone = %zone.origin, "authoritative DNS for the cluster zone");
    let handler = Handler {
        load,
        zone: Arc::new(zone),
        limiter: Arc::default(),
    };
    let mut server = ServerFuture::new(handler.clone());
    server.register_socket(udp);
    tokio::select! {
        done = server.block_until_done() => done.map_err(|e| DnsError::Serve(e.to_string())),
        () = serve_tcp(handler, tcp) => Ok(()),
    }
}

/// Most DNS-over-TCP connections open at once; more are closed as they arrive.
pub const TCP_CONNECTIONS: usize = 256;
/// Most DNS-over-TCP connections from one client address (an IPv6 /64).
pub const TCP_PER_ADDRESS: usize = 8;
/// A DNS-over-TCP connection is closed after this long without a (complete) query.
pub const TCP_IDLE: Duration = Duration::from_secs(5);
/// Queries answered on one DNS-over-TCP connection before it is closed.
pub const TCP_QUERIES: usize = 100;

/// Accepts DNS over TCP within the bounds above.
async fn serve_tcp(handler: Handler, listener: tokio::net::TcpListener) {
    let open = Arc::new(tokio::sync::Semaphore::new(TCP_CONNECTIONS));
    let per_address = crate::limits::PerAddress::new(TCP_PER_ADDRESS);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                warn!(error = %e, "DNS over TCP: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            continue;
        };
        let Some(slot) = per_address.take(peer.ip()) else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _held = (permit, slot);
            answer_tcp(&handler, stream, peer).await;
        });
    }
}

/// Answers the length-prefixed queries of one TCP connection, one at a time.
async fn answer_tcp(handler: &Handler, mut stream: tokio::net::TcpStream, peer: SocketAddr) {
    use hickory_server::proto::serialize::binary::BinDecodable;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..TCP_QUERIES {
        let mut len = [0u8; 2];
        let read = async {
            stream.read_exact(&mut len).await?;
            // At most 64 KiB, by the two-byte length.
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut query).await?;
            Ok::<_, std::io::Error>(query)
        };
        let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read).await else {
            return;
        };
        let Ok(message) = hickory_server::authority::MessageRequest::from_bytes(&query) else {
            return;
        };
        let request = Request::new(message, peer, Protocol::Tcp);
        let answer = Collected::default();
        handler.handle_request(&request, answer.clone()).await;
        let bytes = std::mem::take(&mut *answer.0.locked());
        let Ok(len) = u16::try_from(bytes.len()) else {
            return;
        };
        let write = async {
            stream.write_all(&len.to_be_bytes()).await?;
            stream.write_all(&bytes).await
        };
        if !matches!(tokio::time::timeout(TCP_IDLE, write).await, Ok(Ok(()))) {
            return;
        }
    }
}

/// A response handler that keeps the encoded answer (for TCP, sent by [`answer_tcp`]).
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<u8>>>);

#[async_trait::async_trait]
impl ResponseHandler for Collected {
    async fn send_response<'a>(
        &mut self,
        response: hickory_server::authority::MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> std::io::Result<ResponseInfo> {
        let mut buffer = Vec::with_capacity(512);
        let mut encoder = hickory_server::proto::serialize::binary::BinEncoder::new(&mut buffer);
        encoder.set_max_size(u16::MAX);
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(std::io::Error::other)?;
        *self.0.locked() = buffer;
        Ok(info)
    }
}
