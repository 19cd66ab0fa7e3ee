#!/usr/bin/env bash
# Bytes per listener: one release node, one 128 kbit/s MP3 mount fed by ffmpeg (-re -c copy), its
# RSS before any listener (with the source), then N listeners from benches' fanout-load over a
# window; prints the node's peak RSS (VmHWM) less that, per listener, with fanout-load's CPU per
# listener-second and the share of listeners that got 95 % of their bytes.
#
#   benches/memory.sh [N] [SECONDS]          (default 10000 listeners, 20 s window)
#   TIDECAST_BIN=/path/to/older/tidecast benches/memory.sh 10000
#   NODE_ENV="MALLOC_ARENA_MAX=1" benches/memory.sh    (environment for the node only)
# Everything runs on loopback and is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
secs=${2:-20}
[[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 19000 ] || { echo "N is 1 to 19000 (the open-files limit)" >&2; exit 2; }
ulimit -n 20000
for t in ffmpeg python3; do command -v $t >/dev/null || { echo "missing $t: run tests/run.sh first" >&2; exit 1; }; done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidecast/target}"
cargo build --release --locked -q -p tidecast -p tidecast-benches
rel="$CARGO_TARGET_DIR/release"
bin=${TIDECAST_BIN:-$rel/tidecast}
work=$(mktemp -d /tmp/tidecast-memory.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# shellcheck disable=SC2086 # NODE_ENV is a list of VAR=VALUE words
env TIDECAST_LOG=warn ${NODE_ENV:-} "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
  --admin-password memoryadmin --max-clients 20000 --max-clients-per-address 0 >"$work/out" 2>"$work/err" &
node=$!; pids+=($node)
for _ in $(seq 100); do grep -q "^tidecast listening on" "$work/out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^tidecast listening on //p' "$work/out")
[ -n "$addr" ] || { cat "$work/err" >&2; exit 1; }
"$bin" mount create /live.mp3 --password memorypw --server "http://$addr" --admin-password memoryadmin >/dev/null
ffmpeg -nostdin -v error -f lavfi -i "sine=frequency=440:duration=60" -ac 2 -c:a libmp3lame -b:a 128k "$work/in.mp3"
ffmpeg -nostdin -v error -re -stream_loop -1 -i "$work/in.mp3" -c copy -content_type audio/mpeg -f mp3 \
  "icecast://source:memorypw@$addr/live.mp3" &
pids+=($!)
sleep 5
idle=$(awk '/^VmRSS:/{print $2}' "/proc/$node/status")
out=$("$rel/fanout-load" --addr "$addr" --mount /live.mp3 --listeners "$n" --seconds "$secs" --server-pid "$node")
python3 - "$n" "$idle" "$out" <<'PY'
import json, sys
n, idle, o = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
peak = o["server_peak_rss_kib"]
print(f"| {n} | {idle / 1024:.1f} | {peak / 1024:.1f} | {(peak - idle) * 1024 / n:.0f} | "
      f"{o['cpu_us_per_listener_second']:.1f} | {o['share_at_least_95pct'] * 100:.1f} % |")
PY
