#!/usr/bin/env bash
# Fault-injection soak (see BENCHMARKS.md): the harness of tests/chaos.rs (three nodes and a
# three-member etcd, each pair in its own network namespace; real listeners on every node; the
# invariant checker), first every fault once, then mixed rounds (two faults at once, chosen with
# a fixed seed) until MINUTES have passed. Prints the table BENCHMARKS.md keeps: per fault, runs,
# the gap heard by listeners on untouched nodes (median, p95, worst), the slowest recovery and
# the invariant violations (which must be 0). Needs root (namespaces, iptables, tmpfs).
#
#   benches/chaos.sh [MINUTES] [SEED]      (defaults: 30 minutes, seed 26)
#
# The nodes' logs and etcd's are kept in target/chaos-logs/ (the last run's).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
seed=${2:-26}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidecast/target}"
report=$(mktemp)
trap 'rm -f "$report"' EXIT
logs="$CARGO_TARGET_DIR/chaos-logs"
rm -rf "$logs"
status=0
# nextest would stop the test after its CI bound: cargo test runs it unbounded but for the
# harness's own schedule.
TIDECAST_CHAOS_MINUTES=$minutes TIDECAST_CHAOS_SEED=$seed TIDECAST_CHAOS_REPORT=$report \
  TIDECAST_CHAOS_LOGS=$logs \
  cargo test --locked -p tidecast --test chaos faults_one_at_a_time -- --nocapture 2>&1 |
  grep -E "^chaos:|panicked|timed out|invariants broken|^(partition|kill|etcd|SIGSTOP|lossy|a node|node 3|mixed)" ||
  status=$?
echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r); debug build of the test profile"
cat "$report" 2>/dev/null || { echo "no report: the run failed before its table"; exit 1; }
exit "$status"
