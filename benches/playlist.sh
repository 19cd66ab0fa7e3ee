#!/usr/bin/env bash
# Playlist mounts (AutoDJ) against liquidsoap, the way AzuraCast runs a station: K stations each
# playing the same folder of MP3 files in real time and encoding MP3 128 kbit/s.
#  - tidecast: one node with the folder as its media library and K playlist mounts, twice: the
#    files passed through as they are (they match the mounts), then decoded and encoded;
#  - liquidsoap 2.1: K processes, each `playlist(folder)` → `output.file(%ffmpeg mp3 128k)` to
#    /dev/null on its real-time clock.
# Each side runs alone, settles for 20 s, then its CPU (user+sys from /proc) is read over 30 s
# and its resident memory at the end. Prints CPU ms per stream-second, MiB per station, ratios.
#
#   benches/playlist.sh [K]        (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
k=${1:-10}
for t in ffmpeg liquidsoap python3; do command -v $t >/dev/null || { echo "missing $t: run tests/run.sh first" >&2; exit 1; }; done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidecast/target}"
cargo build --release --locked -q -p tidecast
tc="$CARGO_TARGET_DIR/release/tidecast"
work=$(mktemp -d /tmp/tidecast-playlist.XXXXXX)
pids=()
cleanup() { { for p in "${pids[@]}"; do kill -9 "$p" || true; done; wait; } 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
settle=20 window=30

echo "== generating the library: 3 files of 60 s (tone over noise, MP3 128k, tagged)" >&2
mkdir -p library/music
for i in 1 2 3; do
  ffmpeg -nostdin -v error -f lavfi -i "sine=frequency=$((220 * i)):duration=60" -f lavfi -i "anoisesrc=a=0.1:d=60" \
    -filter_complex "[0]volume=0.5[a];[a][1]amix=inputs=2" -ac 2 -ar 44100 -c:a libmp3lame -b:a 128k \
    -metadata artist="Bench" -metadata title="Track $i" "library/music/$i.mp3"
done

cpu_of() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
rss_of() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo "$t"; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# label, extra mount flags: one node with K playlist mounts, measured; writes tidecast-LABEL.txt
tidecast_run() {
  local label=$1; shift
  echo "== tidecast ($label): $k playlist mounts" >&2
  local port node rss_idle c0 c1 rss live
  port=$(free_port)
  TIDECAST_LOG=warn "$tc" serve --listen "127.0.0.1:$port" --data-dir "data-$label" --admin-password bench \
    --media-library "$work/library" >/dev/null 2>"node-$label.log" &
  node=$!; pids+=($node)
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  sleep 1
  rss_idle=$(rss_of $node)
  for i in $(seq "$k"); do
    TIDECAST_ADMIN_PASSWORD=bench "$tc" mount create "/station$i.mp3" --playlist music/ --codec mp3 --bitrate 128 \
      "$@" --server "http://127.0.0.1:$port" >/dev/null
  done
  sleep "$settle"
  c0=$(cpu_of $node); sleep "$window"; c1=$(cpu_of $node)
  rss=$(rss_of $node)
  live=$(curl -s "http://127.0.0.1:$port/status-json.xsl" | python3 -c 'import json,sys; s=json.load(sys.stdin)["icestats"].get("source",[]); s=s if isinstance(s,list) else [s]; print(len(s))')
  kill -9 $node
  echo "tidecast $c0 $c1 $rss $rss_idle $live" > "tidecast-$label.txt"
}
# The files are MP3 128k at 44.1 kHz stereo, as the mounts: passed through as they are. A
# 0.1-s crossfade makes every file go through decode and encode, as liquidsoap's do.
tidecast_run passthrough
tidecast_run encoded --crossfade 0.1

echo "== liquidsoap: $k processes" >&2
cat > station.liq <<LIQ
settings.init.allow_root.set(true)
settings.log.stdout.set(false)
settings.log.file.set(false)
s = mksafe(playlist("$work/library/music"))
output.file(%ffmpeg(format="mp3", %audio(codec="libmp3lame", b="128k", ar=44100, ac=2)), "/dev/null", s)
LIQ
liq=()
for i in $(seq "$k"); do liquidsoap station.liq >/dev/null 2>&1 & liq+=($!); pids+=($!); done
sleep "$settle"
l0=$(cpu_of "${liq[@]}"); sleep "$window"; l1=$(cpu_of "${liq[@]}")
lrss=$(rss_of "${liq[@]}")
alive=0; for p in "${liq[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
echo "liquidsoap $l0 $l1 $lrss $alive" > liquidsoap.txt

python3 - "$k" "$window" <<'PY'
import sys
k, w = int(sys.argv[1]), int(sys.argv[2])
l = open("liquidsoap.txt").read().split()
lq_ms = (int(l[2]) - int(l[1])) * 10 / (k * w)
lq_rss, alive = int(l[3]) / 1024, int(l[4])
rows = []
for label in ("passthrough", "encoded"):
    t = open(f"tidecast-{label}.txt").read().split()
    ms = (int(t[2]) - int(t[1])) * 10 / (k * w)
    rss, idle, live = int(t[3]) / 1024, int(t[4]) / 1024, int(t[5])
    rows.append((label, ms, rss, idle, live))
print(f"stations: {k}; liquidsoap processes alive: {alive}")
print("| tool | CPU ms per stream-second | RSS MiB, all stations | MiB per station | mounts on the air |")
print("|---|---:|---:|---:|---:|")
for label, ms, rss, idle, live in rows:
    print(f"| tidecast, {label} | {ms:.1f} | {rss:.0f} | {(rss - idle) / k:.1f} (node idle: {idle:.0f}) | {live} |")
print(f"| liquidsoap | {lq_ms:.1f} | {lq_rss:.0f} | {lq_rss / k:.1f} | {alive} |")
for label, ms, rss, idle, live in rows:
    print(f"tidecast {label} ÷ liquidsoap: CPU {ms / lq_ms:.3f}, memory per station {(rss - idle) / lq_rss:.3f}")
PY
