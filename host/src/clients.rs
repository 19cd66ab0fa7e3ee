//! Real client addresses behind a load balancer or proxy. Two ways in, both only from the proxies
//! the operator trusts (`--trusted-proxies CIDR,...`):
//! - the PROXY protocol (`--proxy-protocol`, HAProxy's v1 text or v2 binary header, before
//!   anything else on the connection, TLS included; read only from a trusted proxy's
//!   connection, and only if it starts with one): [`read_proxy_header`];
//! - `X-Forwarded-For` (or, with `--trusted-proxies-header forwarded`, `Forwarded: for=…`) on
//!   a request: [`forwarded_for`].
//!
//! The address found is what logs, listclients, routing, login throttling and the access log
//! see. Connection limits per address, counted when a connection is accepted, still see the
//! proxy's address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::http::RequestHead;

/// A list of networks (`10.0.0.0/8`, `2001:db8::/32`, or a single address).
#[derive(Debug, Clone, Default)]
pub struct Networks(Vec<(IpAddr, u8)>);

impl Networks {
    /// Parses `CIDR,...`; every bad entry is named.
    pub fn parse(list: &str) -> Result<Networks, Vec<String>> {
        let mut nets = Vec::new();
        let mut problems = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (addr, bits) = match entry.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (entry, None),
            };
            let Ok(ip) = addr.parse::<IpAddr>() else {
                problems.push(format!("{entry:?} is not an address or CIDR network"));
                continue;
            };
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match bits.map(str::parse::<u8>) {
                None => nets.push((ip, max)),
                Some(Ok(b)) if b <= max => nets.push((ip, b)),
                _ => problems.push(format!("{entry:?}: the prefix length must be 0 to {max}")),
            }
        }
        if problems.is_empty() {
            Ok(Networks(nets))
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is in one of the networks (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0
            .iter()
            .any(|&(net, bits)| match (canonical(net), ip) {
                (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
                (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
                _ => false,
            })
    }
}

/// `ip`, with an IPv4-mapped IPv6 address (an IPv4 client of a dual-stack `[::]` socket) as the
/// IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        (a[whole] & mask) == (b[whole] & mask)
    }
}

/// Which header carries the client's address from the trusted proxies
/// (`--trusted-proxies-header`). Only that one is read: nginx appends to `X-Forwarded-For` but
/// passes a client's own `Forwarded` through, so reading both lets a client choose its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardHeader {
    /// `X-Forwarded-For` (nginx's `$proxy_add_x_forwarded_for`, HAProxy's `option forwardfor`).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=…` (RFC 7239).
    Forwarded,
}

impl std::str::FromStr for ForwardHeader {
    type Err = String;
    fn from_str(s: &str) -> Result<ForwardHeader, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "x-forwarded-for" => Ok(ForwardHeader::XForwardedFor),
            "forwarded" => Ok(ForwardHeader::Forwarded),
            other => Err(format!(
                "{other:?} is not a header kind: forwarded or x-forwarded-for"
            )),
        }
    }
}

/// The proxies the operator trusts and the header they name clients in.
#[derive(Debug, Clone, Default)]
pub struct Proxies {
    pub networks: Networks,
    pub header: ForwardHeader,
}

impl Proxies {
    /// Whether connections from `ip` come through a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.networks.contains(ip)
    }
}

/// The client's address of a request that came through trusted proxies: over every line of the
/// operator's header kind (in order: a proxy may add its own line after a client's), the
/// rightmost address that is not a trusted proxy. `peer` itself when it is not trusted or the
/// request names no one.
pub fn forwarded_for(req: &RequestHead, peer: IpAddr, trusted: &Proxies) -> IpAddr {
    if trusted.networks.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let lines = req
        .headers
        .iter()
        .filter(|(n, _)| match trusted.header {
            ForwardHeader::Forwarded => n.eq_ignore_ascii_case("forwarded"),
            ForwardHeader::XForwardedFor => n.eq_ignore_ascii_case("x-forwarded-for"),
        })
        .flat_map(|(_, v)| v.split(','));
    // Every entry, readable or not (`for=unknown`, an obfuscated `for=_hidden`).
    let chain: Vec<Option<IpAddr>> = match trusted.header {
        ForwardHeader::Forwarded => lines
            .map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_node(v.trim().trim_matches('"')))
                        .flatten()
                })
            })
            .collect(),
        ForwardHeader::XForwardedFor => lines.map(|v| parse_node(v.trim())).collect(),
    };
    // From the right, past the trusted proxies; an entry that names no address stops the walk
    // there (what stands left of it the client may have written): the proxy's own address.
    for ip in chain.iter().rev() {
        match ip {
            Some(ip) if trusted.contains(*ip) => continue,
            Some(ip) => return *ip,
            None => return peer,
        }
    }
    chain.first().copied().flatten().unwrap_or(peer)
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711` or `2001:db8::1`.
fn parse_node(v: &str) -> Option<IpAddr> {
    if let Ok(ip) = v.parse() {
        return Some(ip);
    }
    if let Ok(sa) = v.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    v.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header (the connection does not come through the proxy?)")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The v2 header's fixed start.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header (the specification's bound, CRLF included).
const V1_MAX: usize = 107;
/// Longest v2 header accepted (addresses and TLVs): HAProxy sends well under this.
const V2_MAX: usize = 16 + 2048;

/// Reads the PROXY header (v1 or v2) at the start of `tcp`, exactly its bytes, within `within`.
/// `Some(address)` of the client it names; `None` for a LOCAL or UNKNOWN header (the proxy's own
/// health check): the connection's own address stands.
pub async fn read_proxy_header(
    tcp: &mut TcpStream,
    within: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    match tokio::time::timeout(within, read_header(tcp)).await {
        Ok(r) => r,
        Err(_) => Err(ProxyHeaderError::Timeout(within)),
    }
}

async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    // Peek (taking nothing) until the start tells v1 from v2, and for v2 gives its length.
    let mut start = [0u8; 16];
    let v2_len = loop {
        let seen = tcp.peek(&mut start).await?;
        if seen == 0 {
            return Err(ProxyHeaderError::Missing);
        }
        let got = &start[..seen];
        if got.starts_with(b"PROXY ") {
            break None;
        }
        let could_be = |magic: &[u8]| magic.starts_with(&got[..got.len().min(magic.len())]);
        if !could_be(b"PROXY ") && !could_be(&V2_SIGNATURE) {
            return Err(ProxyHeaderError::Missing);
        }
        if seen == start.len() {
            break Some(16 + usize::from(u16::from_be_bytes([start[14], start[15]])));
        }
        // Part of a header so far: wait for the rest (bounded by the caller's timeout).
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    if let Some(len) = v2_len {
        if len > V2_MAX {
            return Err(ProxyHeaderError::Malformed("v2 header too long"));
        }
        let mut header = vec![0u8; len];
        tcp.read_exact(&mut header).await?;
        return parse_v2(&header);
    }
    // v1: byte by byte up to CRLF, so nothing after the header is taken.
    let mut line = Vec::with_capacity(V1_MAX);
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyHeaderError::Malformed(
                "v1 header longer than 107 bytes",
            ));
        }
        line.push(tcp.read_u8().await?);
    }
    parse_v1(&line)
}

/// `PROXY TCP4 src dst sport dport\r\n`, `PROXY TCP6 …` or `PROXY UNKNOWN …`.
pub fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    let text = std::str::from_utf8(line).map_err(|_| bad("v1 header is not text"))?;
    let text = text
        .strip_suffix("\r\n")
        .ok_or(bad("v1 header without CRLF"))?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", family @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| bad("v1 source address"))?;
            if ip.is_ipv4() != (*family == "TCP4") {
                return Err(bad("v1 address does not match its family"));
            }
            let port: u16 = sport.parse().map_err(|_| bad("v1 source port"))?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(bad("v1 header is not PROXY TCP4|TCP6|UNKNOWN …")),
    }
}

/// A whole v2 header (signature, version/command, family, length, addresses, TLVs).
pub fn parse_v2(h: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    if h.len() < 16 || h[..12] != V2_SIGNATURE {
        return Err(bad("v2 signature"));
    }
    let (version, command) = (h[12] >> 4, h[12] & 0x0f);
    if version != 2 {
        return Err(bad("v2 version"));
    }
    let body = &h[16..];
    match command {
        // LOCAL: the proxy's own connection (a health check).
        0 => return Ok(None),
        1 => {}
        _ => return Err(bad("v2 command")),
    }
    match h[13] >> 4 {
        // AF_INET: 4 + 4 + 2 + 2 bytes.
        1 if body.len() >= 12 => {
            let ip = std::net::Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([body[8], body[9]]),
            )))
        }
        // AF_INET6: 16 + 16 + 2 + 2 bytes.
        2 if body.len() >= 36 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(a.into()),
                u16::from_be_bytes([body[32], body[33]]),
            )))
        }
        1 | 2 => Err(bad("v2 addresses shorter than their family")),
        // AF_UNSPEC, AF_UNIX: nothing to say about the client.
        _ => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            path: "/".into(),
            raw_query: String::new(),
            version: crate::http::Version::Http11,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            secure: false,
        }
    }

    #[test]
    fn networks_are_networks() {
        let n = Networks::parse("10.0.0.0/8, 192.168.1.7, 2001:db8::/32").unwrap();
        for yes in ["10.1.2.3", "192.168.1.7", "2001:db8::1", "::ffff:10.9.9.9"] {
            assert!(n.contains(yes.parse().unwrap()), "{yes}");
        }
        for no in ["11.0.0.1", "192.168.1.8", "2001:db9::1"] {
            assert!(!n.contains(no.parse().unwrap()), "{no}");
        }
        // A subnet that does not end on a byte boundary, which Icecast-KH would ignore.
        let n = Networks::parse("172.16.0.0/12").unwrap();
        assert!(n.contains("172.31.255.255".parse().unwrap()));
        assert!(!n.contains("172.32.0.0".parse().unwrap()));
        let errs = Networks::parse("10.0.0.0/33,proxy,::/129").unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn forwarded_addresses_are_taken_only_from_trusted_proxies() {
        let networks = Networks::parse("127.0.0.1,10.0.0.0/8").unwrap();
        let xff_kind = Proxies {
            networks: networks.clone(),
            header: ForwardHeader::XForwardedFor,
        };
        let fwd_kind = Proxies {
            networks,
            header: ForwardHeader::Forwarded,
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let proxy = ip("127.0.0.1");
        let xff = head(&[("X-Forwarded-For", "203.0.113.9, 10.1.1.1")]);
        assert_eq!(forwarded_for(&xff, proxy, &xff_kind), ip("203.0.113.9"));
        // A client cannot pose as another by sending its own header: the rightmost untrusted
        // address is the one the trusted proxy saw.
        let spoof = head(&[("X-Forwarded-For", "1.2.3.4, 203.0.113.9")]);
        assert_eq!(forwarded_for(&spoof, proxy, &xff_kind), ip("203.0.113.9"));
        // HAProxy adds its own line after the client's: every line counts, the last one last.
        let lines = head(&[
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-For", "203.0.113.9"),
        ]);
        assert_eq!(forwarded_for(&lines, proxy, &xff_kind), ip("203.0.113.9"));
        // nginx passes a client's Forwarded through: with X-Forwarded-For named, it is ignored.
        let both = head(&[
            ("Forwarded", "for=1.2.3.4"),
            ("X-Forwarded-For", "203.0.113.9"),
        ]);
        assert_eq!(forwarded_for(&both, proxy, &xff_kind), ip("203.0.113.9"));
        assert_eq!(forwarded_for(&both, proxy, &fwd_kind), ip("1.2.3.4"));
        let fwd = head(&[(
            "Forwarded",
            "for=\"[2001:db8::7]:4711\";proto=https, for=10.2.2.2",
        )]);
        assert_eq!(forwarded_for(&fwd, proxy, &fwd_kind), ip("2001:db8::7"));
        assert_eq!(forwarded_for(&fwd, proxy, &xff_kind), proxy);
        // An entry the proxy could not name stops the walk: not the client's own entry left of it.
        let hidden = head(&[("Forwarded", "for=1.2.3.4, for=_hidden, for=10.2.2.2")]);
        assert_eq!(forwarded_for(&hidden, proxy, &fwd_kind), proxy);
        let unknown = head(&[("X-Forwarded-For", "1.2.3.4, unknown")]);
        assert_eq!(forwarded_for(&unknown, proxy, &xff_kind), proxy);
        let stranger = ip("198.51.100.1");
        assert_eq!(forwarded_for(&xff, stranger, &xff_kind), stranger);
        assert_eq!("Forwarded".parse(), Ok(ForwardHeader::Forwarded));
        assert!("x-real-ip".parse::<ForwardHeader>().is_err());
    }

    #[test]
    fn proxy_headers_v1_and_v2() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 8000\r\n").unwrap(),
            Some("203.0.113.9:51000".parse().unwrap())
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").unwrap(), None);
        assert!(parse_v1(b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n").is_err());
        assert!(parse_v1(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n").is_err());
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend([
            0x21, 0x11, 0, 12, 203, 0, 113, 9, 10, 0, 0, 1, 0xc7, 0x38, 0x1f, 0x40,
        ]);
        assert_eq!(
            parse_v2(&v2).unwrap(),
            Some("203.0.113.9:51000".parse().unwrap())
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(parse_v2(&local).unwrap(), None);
        let mut short = V2_SIGNATURE.to_vec();
        short.extend([0x21, 0x21, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert!(parse_v2(&short).is_err());
    }
}
