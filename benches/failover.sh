#!/usr/bin/env bash
# Failover benchmark (see BENCHMARKS.md): runs the cluster tests that kill -9 a node RUNS times
# (default 5) and reports, from their measurements, the median and worst time from the kill to
#  - origin loss: a source reconnecting through another node being accepted there (the test's
#    source retries every 1.5 s, so this includes up to 1.5 s of retry spacing);
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
  grep -E "moved" "$out.run" | tee -a "$out" >&2
done
rm -f "$out.run"
echo "runs whose tests failed (a listener disconnected, or no failover): $failed of $runs"
python3 - "$out" <<'PY'
import math, re, statistics, sys
text = open(sys.argv[1]).read()
def secs(pattern):
    out = []
    for m in re.finditer(pattern, text):
        v, unit = float(m.group(1)), m.group(2)
        out.append(v / 1000 if unit == "ms" else v)
    return out
for name, pat in [("origin loss (source accepted elsewhere)", r"origin moved to C ([\d.]+)(ms|s) after"),
                  ("transcoder loss (new audio at a listener)", r"new audio at the listener ([\d.]+)(ms|s) after")]:
    v = secs(pat)
    if v:
        p95 = sorted(v)[math.ceil(0.95 * len(v)) - 1]
        print(f"{name}: runs {len(v)}, median {statistics.median(v):.2f} s, p95 {p95:.2f} s, worst {max(v):.2f} s, best {min(v):.2f} s")
    else:
        print(f"{name}: no measurement")
PY
