#!/usr/bin/env bash
# Join benchmark (see BENCHMARKS.md): runs the cluster test that starts a third node into a
# running two-node cluster RUNS times (default 10) and reports, from its measurements, the
# median, p95 and worst time from the new node's process start to
#  - its listen socket open (the cluster joined: etcd lease, advertised address checked);
#  - the first listener that routing on another node sends to it, and that it serves.
# Real etcd and real nodes on loopback; the other nodes each carry 3 listeners.
#
#   benches/join.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidecast/target}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq "$runs"); do
  echo "== run $i of $runs" >&2
  cargo nextest run --locked -p tidecast --test cluster --no-capture \
    -E 'test(takes_routed_listeners_within_seconds)' 2>&1 | grep -E "^join:" | tee -a "$out" >&2
done
benches/times.py "$out" \
  'listening (joined the cluster)=C listening ([\d.]+)(ms|s) after' \
  'first routed listener served=took a routed listener ([\d.]+)(ms|s) after'
