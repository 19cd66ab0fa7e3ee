#!/usr/bin/env bash
# Join benchmark (see BENCHMARKS.md): runs the cluster test that starts a third node into a
# running two-node cluster RUNS times (default 10) and reports, from its measurements, the
# median and worst time from the new node's process start to
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
python3 - "$out" <<'PY'
import re, statistics, sys
text = open(sys.argv[1]).read()
def secs(pattern):
    out = []
    for m in re.finditer(pattern, text):
        v, unit = float(m.group(1)), m.group(2)
        out.append(v / 1000 if unit == "ms" else v)
    return out
for name, pat in [("listening (joined the cluster)", r"C listening ([\d.]+)(ms|s) after"),
                  ("first routed listener served", r"took a routed listener ([\d.]+)(ms|s) after")]:
    v = secs(pat)
    if v:
        print(f"{name}: runs {len(v)}, median {statistics.median(v):.2f} s, worst {max(v):.2f} s, best {min(v):.2f} s")
    else:
        print(f"{name}: no measurement")
PY
