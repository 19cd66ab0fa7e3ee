#!/usr/bin/env python3
"""Internet scale on paper: a model of a tidecast deployment fed with the costs measured on this
machine (BENCHMARKS.md), for ARCHITECTURE.md's "Internet scale" section.

    benches/model.py                       (the section's scenario: 1 000 000 listeners,
                                            10 000 mounts, three regions)
    benches/model.py --listeners 200000 --mounts 2000 --regions 0.6,0.4 --nic-gbps 1

It places listeners on mounts by a Zipf law (a few stations have most listeners, a long tail
has a handful each), sizes each region for its own listeners plus its share of the largest other
region's if that region is lost, and counts what the cluster's coordination costs: etcd keys,
writes and watch events, the size of the nodes' load reports, and the relays between nodes,
for the two ways routing can place a mount's listeners: spread over every node of the region
(the default chain, `listeners_score,best`) or packed onto as few nodes as carry them (a policy
that prefers nodes already serving the mount). Every input is a flag; the defaults are the
measured values, each named with where it was measured.
"""
import argparse
import math

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--listeners", type=int, default=1_000_000)
p.add_argument("--mounts", type=int, default=10_000)
p.add_argument("--regions", default="0.5,0.3,0.2", help="each region's share of the listeners")
p.add_argument("--zipf", type=float, default=1.0, help="exponent of the mounts' popularity")
p.add_argument("--kbps", type=float, default=128, help="mean stream bit rate")
p.add_argument("--nic-gbps", type=float, default=10, help="each node's network interface")
p.add_argument("--nic-use", type=float, default=0.7, help="share of the NIC a node may fill")
p.add_argument("--cores", type=int, default=8, help="cores per node")
# Measured here (2-vCPU AMD EPYC VM, loopback), BENCHMARKS.md:
p.add_argument("--cpu-us", type=float, default=12.0,
               help="CPU µs per listener-second (fanout.sh, 10 000 listeners: 11.5-13.0)")
p.add_argument("--bytes-per-listener", type=float, default=7_900,
               help="node RSS per listener (memory.sh 10000 20, 2026-12-08: 7 742-7 894)")
p.add_argument("--write-secs", type=float, default=2.0,
               help="write interval: what the kernel holds per listener is about this much audio")
p.add_argument("--idle-writes", type=float, default=0.1,
               help="etcd writes per second of an idle node (scale.sh, 100 nodes: 10.0/s)")
p.add_argument("--busy-writes", type=float, default=1.0,
               help="etcd writes per second of a node whose listeners change by 5 %% every second")
p.add_argument("--source-moves-per-hour", type=float, default=1.0,
               help="elections per mount per hour (sources reconnecting, producers moving)")
p.add_argument("--report-base", type=int, default=200, help="bytes of a load report without mounts")
p.add_argument("--path-bytes", type=int, default=24, help="mean mount path length in a report")
p.add_argument("--config-bytes", type=int, default=900, help="a mount's configuration in etcd")
p.add_argument("--redirects-per-cpu-s", type=float, default=15_000,
               help="routing.sh: 15 100-18 600 redirects per CPU-second")
p.add_argument("--peak-joins-per-s", type=float, default=20_000,
               help="listeners arriving per second at a spike (whole cluster)")
a = p.parse_args()

shares = [float(s) for s in a.regions.split(",")]
assert abs(sum(shares) - 1) < 1e-6, "region shares must add up to 1"
assert 1 <= a.mounts <= 10_000_000 and 1 <= a.listeners <= 10**9

# Zipf popularity: mount i (1-based) gets a share proportional to 1 / i^s.
weights = [1 / (i ** a.zipf) for i in range(1, a.mounts + 1)]
total_w = sum(weights)
mount_share = [w / total_w for w in weights]

per_node_nic = a.nic_gbps * 1e9 * a.nic_use / (a.kbps * 1e3)
cpu_per_listener = a.cpu_us * 1e-6  # cores
per_node_cpu = a.cores * 0.7 / cpu_per_listener
per_node = int(min(per_node_nic, per_node_cpu))
bound = "network" if per_node_nic <= per_node_cpu else "CPU"


def fmt(n):
    return f"{n:,.0f}".replace(",", " ")


print(f"Scenario: {fmt(a.listeners)} listeners at {a.kbps:g} kbit/s, {fmt(a.mounts)} mounts "
      f"(Zipf {a.zipf:g}), regions {shares}")
print(f"Egress: {a.listeners * a.kbps * 1e3 / 1e9:.0f} Gbit/s\n")
print(f"Per node ({a.cores} cores, {a.nic_gbps:g} Gbit/s at {a.nic_use:.0%}): {fmt(per_node)} listeners "
      f"({bound}-bound): CPU {per_node * cpu_per_listener:.2f} cores, "
      f"RSS {per_node * a.bytes_per_listener / 2**20:,.0f} MiB, kernel send queues up to "
      f"{per_node * a.kbps * 1e3 / 8 * a.write_secs / 2**30:.1f} GiB")

largest = max(shares)
print("\n| region | listeners | nodes (own load) | nodes (with a lost region's share) | node-relays spread | node-relays packed | report, spread | report, packed |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
totals = {"nodes": 0, "writes": 0.0, "events": 0.0, "keys": 0, "relays_spread": 0, "relays_packed": 0,
          "watch_spread": 0.0, "watch_packed": 0.0}
for r, share in enumerate(shares):
    listeners = a.listeners * share
    own = math.ceil(listeners / per_node) + 1  # N+1
    # If the largest other region is lost, GeoDNS sends its listeners to the others in
    # proportion to their own shares.
    others = [s for j, s in enumerate(shares) if j != r]
    lost = max(others) if others else 0
    rest = 1 - lost
    extra = lost * share / rest if rest > 0 else 0
    nodes = math.ceil(listeners * (1 + extra / share) / per_node) + 1
    # A mount with k listeners in the region is relayed onto min(k, nodes) nodes when routing
    # spreads, onto ceil(k / per_node) when it packs. The producing node needs no relay.
    spread = packed = 0
    mounts_per_node_spread = 0.0
    for ms in mount_share:
        k = listeners * ms
        if k < 0.5:
            continue
        s_nodes = min(math.ceil(k), nodes)
        p_nodes = math.ceil(k / per_node)
        spread += max(s_nodes - 1, 0)
        packed += max(p_nodes - 1, 0)
        mounts_per_node_spread += s_nodes / nodes
    mounts_per_node_packed = (packed + sum(1 for ms in mount_share if listeners * ms >= 0.5)) / nodes
    rep_spread = a.report_base + mounts_per_node_spread * (a.path_bytes + 8)
    rep_packed = a.report_base + mounts_per_node_packed * (a.path_bytes + 8)
    print(f"| {r + 1} | {fmt(listeners)} | {own} | {nodes} | {fmt(spread)} | {fmt(packed)} | "
          f"{rep_spread / 1024:.0f} KiB | {rep_packed / 1024:.1f} KiB |")
    # One etcd per region: each node's reports and elections are watched by every node of it.
    writes = nodes * a.busy_writes + a.mounts * a.source_moves_per_hour / 3600
    totals["nodes"] += nodes
    totals["writes"] = max(totals["writes"], writes)
    totals["events"] = max(totals["events"], writes * nodes)
    totals["watch_spread"] = max(totals["watch_spread"], nodes * a.busy_writes * nodes * rep_spread)
    totals["watch_packed"] = max(totals["watch_packed"], nodes * a.busy_writes * nodes * rep_packed)
    totals["keys"] = max(totals["keys"], 2 * a.mounts + nodes)
    totals["relays_spread"] += spread
    totals["relays_packed"] += packed

print(f"\nNodes in all: {totals['nodes']} (each region N+1 and sized to take its share of the "
      f"largest other region's listeners)")
print(f"Per region's etcd (the busiest): {fmt(totals['keys'])} keys "
      f"(~{totals['keys'] * a.config_bytes / 2**20:.0f} MiB of 2 GiB default quota), "
      f"{totals['writes']:.0f} writes/s at 5 % churn per node per second "
      f"({fmt(totals['events'])} watch events/s)")
print(f"Load-report watch traffic out of that etcd: {totals['watch_spread'] / 2**20:,.1f} MiB/s "
      f"spread, {totals['watch_packed'] / 2**20:,.2f} MiB/s packed")
print(f"Relays between nodes (each a stream of {a.kbps:g} kbit/s): {fmt(totals['relays_spread'])} "
      f"spread ({totals['relays_spread'] * a.kbps / 1e6:.1f} Gbit/s), {fmt(totals['relays_packed'])} packed "
      f"({totals['relays_packed'] * a.kbps / 1e6:.2f} Gbit/s)")
cross = a.mounts * (len(shares) - 1)
print(f"Cross-region relay mounts (each mount pulled once into each other region): {fmt(cross)} "
      f"streams, {cross * a.kbps / 1e6:.1f} Gbit/s between regions")
print(f"Redirect capacity at a spike of {fmt(a.peak_joins_per_s)} joins/s: "
      f"{a.peak_joins_per_s / a.redirects_per_cpu_s:.1f} cores across the cluster")
