//! Plain HTTP on loopback: requests, heads, Basic credentials.

use super::*;

/// One HTTP/1.0 request over a raw socket; returns (status, head text, body).
pub fn http_request(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut data = Vec::new();
    let _ = s.read_to_end(&mut data);
    parse_response(&data)
}

pub fn parse_response(data: &[u8]) -> (u16, String, Vec<u8>) {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(data)));
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head, data[end + 4..].to_vec())
}

pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    http_request(addr, &req)
}

pub fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

pub fn admin_get(node: &Node, path: &str) -> (u16, String, Vec<u8>) {
    http_get(
        node.addr,
        path,
        &[("Authorization", &basic("admin", ADMIN_PASSWORD))],
    )
}

/// Reads a listener stream for `seconds` (after its response head) and returns the body bytes.
/// Whether a read failed only because its timeout passed (try again), not the connection.
pub fn read_timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

pub fn response_head(node: &Node, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("GET {path} HTTP/1.0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    s.write_all(format!("{req}\r\n").as_bytes()).unwrap();
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") && s.read_exact(&mut byte).is_ok() {
        data.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&data).into_owned();
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head)
}

/// The `Location` of a response head.
pub fn location(head: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix("Location: "))
        .unwrap_or_default()
        .trim()
        .to_owned()
}
