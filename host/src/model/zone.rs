//! The cluster's DNS zone (`--dns-zone`, `--dns-ns`, `--dns-ttl-secs`), parsed once when the
//! configuration is read; `cluster/dns.rs` answers for it.

use std::str::FromStr;

use hickory_server::proto::rr::{LowerName, Name};

/// The zone's fixed parts, parsed once from the configuration.
#[derive(Debug, Clone)]
pub struct DnsZone {
    pub(crate) origin: Name,
    pub(crate) lower: LowerName,
    pub(crate) name_servers: Vec<Name>,
    pub(crate) ttl: u32,
}

impl DnsZone {
    /// Parses `--dns-zone` and `--dns-ns`; every problem is reported.
    pub fn parse(zone: &str, name_servers: &str, ttl: u32) -> Result<DnsZone, String> {
        let origin = Name::from_str(zone)
            .map(|n| n.to_lowercase())
            .map_err(|e| format!("dns_zone {zone:?}: {e}"))?;
        let origin = Name::from_labels(origin.iter().map(<[u8]>::to_vec))
            .map_err(|e| format!("dns_zone {zone:?}: {e}"))?;
        let mut ns = Vec::new();
        for n in super::list_items(name_servers) {
            let mut name = Name::from_str(n).map_err(|e| format!("dns_ns {n:?}: {e}"))?;
            name.set_fqdn(true);
            ns.push(name);
        }
        if ns.is_empty() {
            ns.push(
                Name::from_str("ns")
                    .and_then(|n| n.append_domain(&origin))
                    .map_err(|e| format!("dns_zone {zone:?}: {e}"))?,
            );
        }
        let mut origin = origin;
        origin.set_fqdn(true);
        Ok(DnsZone {
            lower: LowerName::new(&origin),
            origin,
            name_servers: ns,
            ttl,
        })
    }
}
