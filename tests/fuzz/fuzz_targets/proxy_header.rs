//! The PROXY protocol headers a trusted load balancer sends (v1 text, v2 binary), and the
//! `Forwarded`/`X-Forwarded-For` networks list: never a panic, and a v1 header that parses
//! names an address of the family it says.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tidecast::clients;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(addr)) = clients::parse_v1(data) {
        let text = String::from_utf8_lossy(data);
        assert_eq!(addr.is_ipv4(), text.starts_with("PROXY TCP4 "), "{text:?}");
    }
    let _ = clients::parse_v2(data);
    if let Ok(list) = std::str::from_utf8(data) {
        if let Ok(nets) = clients::Networks::parse(list) {
            let _ = nets.contains("203.0.113.9".parse().expect("an address"));
            let _ = nets.contains("2001:db8::1".parse().expect("an address"));
        }
    }
});
