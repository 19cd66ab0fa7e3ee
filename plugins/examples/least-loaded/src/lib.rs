//! Least-loaded first: nodes ranked by utilization (listeners over their limit, or bandwidth over
//! its limit, whichever is higher); nodes at a limit are left out. Ties keep the given order.

use tidecast_plugin::{ListenerRequest, NodeLoad, Params, Policy};

pub struct LeastLoaded;

pub fn utilization(n: &NodeLoad) -> f64 {
    let ratio = |used: u32, max: u32| {
        if max == 0 {
            // No limit: still prefer emptier nodes, on a scale far below any limited ratio.
            f64::from(used) * 1e-9
        } else {
            f64::from(used) / f64::from(max)
        }
    };
    ratio(n.listeners, n.max_listeners).max(ratio(n.bandwidth_kbps, n.max_bandwidth_kbps))
}

impl Policy for LeastLoaded {
    fn new(params: &Params) -> Result<Self, String> {
        params.only(&[])?;
        Ok(LeastLoaded)
    }

    fn rank(&mut self, _request: &ListenerRequest, nodes: &[NodeLoad]) -> Vec<u32> {
        let mut order: Vec<(f64, u32)> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (utilization(n), i as u32))
            .filter(|(u, _)| *u < 1.0)
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        order.into_iter().map(|(_, i)| i).collect()
    }
}

tidecast_plugin::export_policy!(LeastLoaded);

#[cfg(test)]
mod tests {
    use super::*;

    pub fn node(name: &str, listeners: u32, max: u32) -> NodeLoad {
        NodeLoad {
            id: name.bytes().map(u64::from).sum(),
            listeners,
            max_listeners: max,
            bandwidth_kbps: 0,
            max_bandwidth_kbps: 0,
            cpu_percent: 0.0,
            mount_listeners: 0,
            is_origin: false,
        }
    }

    #[test]
    fn emptiest_first_full_left_out() {
        let req = ListenerRequest {
            client_address: "192.0.2.1".into(),
            user_agent: String::new(),
            mount: "/live.mp3".into(),
        };
        let nodes = [node("a", 50, 100), node("b", 10, 100), node("c", 100, 100)];
        assert_eq!(LeastLoaded.rank(&req, &nodes), vec![1, 0]);
    }
}
