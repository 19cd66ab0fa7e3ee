#!/usr/bin/env bash
# Scale: many idle nodes on one real etcd (Debian's etcd-server), each node its own process on
# loopback. For each count (default 10 30 100), on a fresh etcd:
#   - all nodes joined, SETTLE seconds for the start to pass, then over WINDOW seconds: etcd's
#     writes per second (its mvcc put counter), the watch events they make (every node watches
#     the cluster's prefix, so each write reaches every node: writes × nodes), etcd's CPU, and
#     CPU and RSS per node;
#   - then one node killed (SIGKILL) and the time until another node's view of the cluster
#     (/api/v1/cluster, what routing and DNS use) no longer lists it: routing must see a dead
#     node within 2 s.
# Node and etcd processes are killed on exit; nothing leaves loopback.
#
#   benches/scale.sh [COUNTS...]                      (default: 10 30 100)
#   WINDOW=30 SETTLE=15 benches/scale.sh 10 100
#   BASELINE_BIN=/path/to/older/tidecast benches/scale.sh 10 100
#                                     (the same counts again with an older binary, in turn)
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("${@:-10}")
[ $# -gt 0 ] || counts=(10 30 100)
window=${WINDOW:-30}
settle=${SETTLE:-15}
for c in "${counts[@]}"; do
  [[ $c =~ ^[0-9]+$ ]] && [ "$c" -ge 2 ] && [ "$c" -le 200 ] || { echo "node counts are 2 to 200, got $c" >&2; exit 2; }
done
ulimit -n 20000
for t in etcd curl python3; do command -v $t >/dev/null || { echo "missing $t: run tests/run.sh first" >&2; exit 1; }; done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidecast/target}"
cargo build --release --locked -q -p tidecast
bin="$CARGO_TARGET_DIR/release/tidecast"
work=$(mktemp -d /tmp/tidecast-scale.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
export TIDECAST_ADMIN_PASSWORD=scaleadmin TIDECAST_CLUSTER_SECRET=scale-cluster-secret-0123456789
ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
rss_kib() { local t=0; for p in "$@"; do t=$((t + $(awk '/^VmRSS:/{print $2}' "/proc/$p/status"))); done; echo $t; }

# run BINARY LABEL COUNT: prints one table row.
run() {
  local binary=$1 label=$2 n=$3 dir="$work/$2-$3" cp pp
  mkdir -p "$dir"
  cp=$(free_port); pp=$(free_port)
  etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "default=http://127.0.0.1:$pp" >"$dir/etcd.log" 2>&1 &
  local etcd_pid=$!; pids+=($etcd_pid)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$cp/health" >/dev/null && break; sleep 0.1; done
  local nodes=() addrs=()
  for i in $(seq "$n"); do
    TIDECAST_LOG=warn "$binary" serve --listen 127.0.0.1:0 --advertise http://127.0.0.1:0 \
      --data-dir "$dir/n$i" --etcd "http://127.0.0.1:$cp" --node-name "n$i" \
      >"$dir/n$i.out" 2>"$dir/n$i.log" &
    nodes+=($!); pids+=($!)
  done
  for i in $(seq "$n"); do
    for _ in $(seq 300); do grep -q "^tidecast listening on" "$dir/n$i.out" 2>/dev/null && break; sleep 0.1; done
    grep -q "^tidecast listening on" "$dir/n$i.out" || { echo "node n$i did not start:" >&2; tail -5 "$dir/n$i.log" >&2; exit 1; }
    addrs+=("$(sed -n 's/^tidecast listening on //p' "$dir/n$i.out")")
  done
  sleep "$settle"
  puts() { curl -sf "http://127.0.0.1:$cp/metrics" | awk '/^etcd_mvcc_put_total /{print $2}'; }
  local p0 e0 c0 p1 e1 c1 rss
  p0=$(puts); e0=$(ticks "$etcd_pid"); c0=$(ticks "${nodes[@]}")
  sleep "$window"
  p1=$(puts); e1=$(ticks "$etcd_pid"); c1=$(ticks "${nodes[@]}")
  rss=$(rss_kib "${nodes[@]}")
  # One node killed; another's view of the cluster must lose it. The view is read with the
  # CLI (`tidecast status --json`, /api/v1/cluster); a failed read is an error, not an answer.
  local watcher=${addrs[$((n - 1))]} t0 gone=""
  has_n1() {
    local v
    v=$("$binary" status --json --server "http://$watcher" --admin-password "$TIDECAST_ADMIN_PASSWORD") ||
      { echo "cannot read the cluster from $watcher" >&2; exit 1; }
    python3 -c 'import json,sys; sys.exit(0 if any(n["name"] == "n1" for n in json.load(sys.stdin)["nodes"]) else 1)' <<<"$v"
  }
  has_n1 || { echo "n1 is not in $watcher's view before the kill" >&2; exit 1; }
  kill -9 "${nodes[0]}"
  t0=$(date +%s.%N)
  for _ in $(seq 100); do
    if ! has_n1; then
      gone=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')"); break
    fi
    sleep 0.05
  done
  python3 - "$label" "$n" "$p0" "$p1" "$e0" "$e1" "$c0" "$c1" "$rss" "$window" "${gone:-none in 5 s}" <<'PY'
import sys
label, n, p0, p1, e0, e1, c0, c1, rss, window, gone = sys.argv[1:]
n, w = int(n), float(window)
puts = (float(p1) - float(p0)) / w
print(f"| {label} | {n} | {puts:.1f} | {puts * n:.0f} | {(int(e1) - int(e0)) / w:.1f} % | "
      f"{(int(c1) - int(c0)) / w / n:.2f} % | {int(rss) / n / 1024:.1f} | {gone} |")
PY
  for p in "${nodes[@]}" "$etcd_pid"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

echo "| binary | nodes | etcd writes/s | watch events/s, all nodes | etcd CPU | CPU per node | RSS MiB per node | killed node gone from another's view (s) |"
echo "|---|---|---|---|---|---|---|---|"
for n in "${counts[@]}"; do
  run "$bin" tidecast "$n"
  [ -z "${BASELINE_BIN:-}" ] || run "$BASELINE_BIN" baseline "$n"
done
