//! Sticky by client address: rendezvous hashing of (client address, node id), so a listener who
//! reconnects lands on the same node, and only the listeners of a node that leaves move. Nodes at
//! their listener limit are skipped. `salt` (optional) reshuffles the mapping.

use tidecast_plugin::{ListenerRequest, NodeLoad, Params, Policy};

pub struct StickyIp {
    salt: String,
}

/// FNV-1a, 64 bit: stable across builds and platforms.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(&[0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// splitmix64's finalizer: a well-spread 64-bit mix.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Policy for StickyIp {
    fn new(params: &Params) -> Result<Self, String> {
        params.only(&["salt"])?;
        Ok(StickyIp {
            salt: params.get("salt").unwrap_or("").to_owned(),
        })
    }

    fn rank(&mut self, request: &ListenerRequest, nodes: &[NodeLoad]) -> Vec<u32> {
        // The client is hashed once; each node's weight mixes that with the node's id.
        let client = fnv1a(&[self.salt.as_bytes(), request.client_address.as_bytes()]);
        let mut order: Vec<(u64, u32)> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.max_listeners == 0 || n.listeners < n.max_listeners)
            .map(|(i, n)| (mix(client ^ n.id), i as u32))
            .collect();
        order.sort_by(|a, b| b.0.cmp(&a.0));
        order.into_iter().map(|(_, i)| i).collect()
    }
}

tidecast_plugin::export_policy!(StickyIp);

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, listeners: u32) -> NodeLoad {
        NodeLoad {
            id: name.bytes().map(u64::from).sum(),
            listeners,
            max_listeners: 10,
            bandwidth_kbps: 0,
            max_bandwidth_kbps: 0,
            cpu_percent: 0.0,
            mount_listeners: 0,
            is_origin: false,
        }
    }

    fn req(ip: &str) -> ListenerRequest {
        ListenerRequest {
            client_address: ip.into(),
            user_agent: String::new(),
            mount: "/a".into(),
        }
    }

    #[test]
    fn same_client_same_node_and_only_a_leaving_nodes_clients_move() {
        let mut p = StickyIp::new(&Params::default()).unwrap();
        let three = [node("a", 0), node("b", 0), node("c", 0)];
        let two = [node("a", 0), node("b", 0)];
        let mut spread = [0; 3];
        for i in 0..300 {
            let ip = format!("10.0.{}.{}", i / 256, i % 256);
            let first = p.rank(&req(&ip), &three)[0];
            assert_eq!(first, p.rank(&req(&ip), &three)[0]);
            spread[first as usize] += 1;
            if first != 2 {
                assert_eq!(first, p.rank(&req(&ip), &two)[0]);
            }
        }
        assert!(spread.iter().all(|&n| n > 50), "{spread:?}");
        let full = [node("a", 10), node("b", 0)];
        assert_eq!(p.rank(&req("10.0.0.1"), &full), vec![1]);
    }
}
