#!/usr/bin/env bash
# Plugin benchmark, all in one run on this machine (see BENCHMARKS.md):
#  1. the transcoding pipeline (300 s of 44.1 kHz stereo MP3 128 kbit/s input → MP3 64k and
#     Opus 64k, one thread) without and with the `gain` example plugin, ROUNDS times, so the
#     overhead of a WebAssembly filter is read against the run-to-run spread;
#  2. policy call latency (`least-loaded` and `sticky-ip` examples) with 10 and 100 nodes: p50,
#     p99, max of 20 000 calls after 1 000 warm-up calls;
#  3. cold compile vs load from the on-disk cache, for both plugins.
#
#   benches/plugins.sh [ROUNDS]      (default 3; about 1 minute per round)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
command -v ffmpeg >/dev/null || { echo "missing ffmpeg: run tests/run.sh first" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidecast/target}"
cargo build --release --locked -q -p tidecast
plugins/build.sh
tc="$CARGO_TARGET_DIR/release/tidecast"
work=$(mktemp -d /tmp/tidecast-plugins.XXXXXX)
trap 'rm -rf "$work"' EXIT
ffmpeg -nostdin -v error -f lavfi -i "sine=frequency=440:duration=300" -f lavfi -i "anoisesrc=a=0.1:d=300" \
  -filter_complex "[0]volume=0.5[a];[a][1]amix=inputs=2" -ac 2 -ar 44100 -c:a libmp3lame -b:a 128k "$work/in.mp3"

echo "== policy latency, compile and cached load"
for p in least-loaded sticky-ip; do
  "$tc" bench --policy "plugins/dist/$p.wasm" --only policy 2>/dev/null
done
for r in $(seq "$rounds"); do
  echo "== pipelines, round $r of $rounds"
  "$tc" bench --input "$work/in.mp3" --filter plugins/dist/gain.wasm:db=-6 2>/dev/null \
    | grep -E "pipeline|plugin|filter|encode|decode"
done
