#!/usr/bin/env bash
# Failover benchmark (see BENCHMARKS.md): runs the cluster tests that kill -9 a node RUNS times
# (default 5) and reports, from their measurements, the median and worst time from the kill to
#  - origin loss: a source reconnecting through another node being accepted there (the start of
#    the attempt that was taken; the test's source retries every 1.5 s, so this includes up to
#    1.5 s of retry spacing);
#  - source move: from that accepted attempt's start to the first audio at a listener on a third
#    node, which stayed connected through its relay (the relay's switch, with ffmpeg's start-up);
#  - transcoder loss: the first new audio bytes at a listener on a surviving node.
# Real etcd and real nodes on loopback, lease TTL 2 s (the default). Prints median, p95 (nearest
# rank) and worst, and how many runs' tests failed.
#
#   benches/failover.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidecast/target}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
failed=0
for i in $(seq "$runs"); do
  echo "== run $i of $runs" >&2
  # Each test also checks that listeners on the surviving nodes kept their connections: a run
  # whose tests fail is counted, and its times are still shown.
  if ! cargo nextest run --locked -p tidecast --test cluster --no-capture \
    -E 'test(moves_when_its_node_dies)' >"$out.run" 2>&1; then
    failed=$((failed + 1))
    grep -E "panicked|FAIL" "$out.run" >&2 || true
  fi
  grep -E "moved|heard the new source" "$out.run" | tee -a "$out" >&2
done
rm -f "$out.run"
echo "runs whose tests failed (a listener disconnected, or no failover): $failed of $runs"
benches/times.py "$out" \
  'origin loss (source accepted elsewhere)=origin moved to C ([\d.]+)(ms|s) after' \
  'source move (its first audio at a listener elsewhere)=heard the new source ([\d.]+)(ms|s) after' \
  'transcoder loss (new audio at a listener)=new audio at the listener ([\d.]+)(ms|s) after'
