//! Connections per client address: `--max-clients-per-address` on the listen port, and the
//! same bound on DNS over TCP. An IPv6 /64 counts as one address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use crate::sync::Locked;

/// Open connections per client address (IPv6 per /64), for `--max-clients-per-address` (and
/// DNS over TCP).
pub struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
    /// 0: no limit (nothing is counted).
    max: usize,
}

/// One counted connection; dropping it gives the place back.
pub struct AddressSlot(Option<(Arc<PerAddress>, IpAddr)>);

impl PerAddress {
    pub fn new(max: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            open: Mutex::default(),
            max,
        })
    }

    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        if self.max == 0 {
            return Some(AddressSlot(None));
        }
        let key = client_key(ip);
        let mut open = self.open.locked();
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot(Some((self.clone(), key))))
    }
}

impl AddressSlot {
    /// A connection that is not counted (a trusted proxy's: its clients are).
    pub fn uncounted() -> AddressSlot {
        AddressSlot(None)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some((table, key)) = self.0.take() else {
            return;
        };
        let mut open = table.open.locked();
        if let Some(n) = open.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

/// The address a client is counted under: IPv4 as it is, IPv6 by its /64 (one subscriber).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}
