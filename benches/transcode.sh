#!/usr/bin/env bash
# Transcoding benchmark, all in one run on this machine (see BENCHMARKS.md):
#  1. offline, one thread: the same 300 s input (44.1 kHz stereo MP3 128 kbit/s, tone over noise)
#     to MP3 64 kbit/s and to Opus 64 kbit/s with tidecast's pipeline, `ffmpeg -threads 1` and
#     liquidsoap 2.1; CPU seconds (user+sys) and peak RSS of each process;
#  2. live against live: K transcoded mounts (MP3 128k → Opus 64k) on one node against K
#     `ffmpeg -threads 1` processes doing the same work as listeners of the same mount, CPU per
#     stream-second over the same window (tidecast's is the node's CPU above its CPU before the
#     mounts existed, which already served the K ffmpeg listeners);
#  3. live: memory per extra transcoded mount (1 → 21 mounts), and N concurrent MP3 128k → Opus 64k
#     transcoded mounts (default 100) on one node, counting those that keep real time.
#
#   benches/transcode.sh [N]        (LIVE_K=16 sets K; LIVE_ONLY=1 runs part 2 alone;
#                                    TIDECAST_BIN=path runs that tidecast binary instead of
#                                    building this checkout's, e.g. an older one to compare)
set -euo pipefail
cd "$(dirname "$0")/.."
concurrent=${1:-100}
for t in ffmpeg liquidsoap /usr/bin/time; do command -v $t >/dev/null || { echo "missing $t: run tests/run.sh first" >&2; exit 1; }; done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidecast/target}"
if [ -n "${TIDECAST_BIN:-}" ]; then
  tc=$TIDECAST_BIN
else
  cargo build --release --locked -q -p tidecast
  tc="$CARGO_TARGET_DIR/release/tidecast"
fi
work=$(mktemp -d /tmp/tidecast-transcode.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"

echo "== generating 300 s of input" >&2
ffmpeg -nostdin -v error -f lavfi -i "sine=frequency=440:duration=300" -f lavfi -i "anoisesrc=a=0.1:d=300" \
  -filter_complex "[0]volume=0.5[a];[a][1]amix=inputs=2" -ac 2 -ar 44100 -c:a libmp3lame -b:a 128k in.mp3

# name, command...: prints "name cpu_s rss_kib"
measure() {
  local name=$1; shift
  /usr/bin/time -f "%U %S %M" -o t.txt "$@" >/dev/null 2>&1 || { echo "$name failed" >&2; cat t.txt >&2; }
  read -r u s m < <(tail -1 t.txt)
  echo "$name $(python3 -c "print(round($u+$s,2))") $m" | tee -a offline.txt >&2
}
liq_script() { # codec-args output: writes output.liq
  cat > "$2.liq" <<LIQ
settings.init.allow_root.set(true)
settings.log.stdout.set(false)
settings.log.file.set(false)
s = once(single("in.mp3"))
clock.assign_new(sync="none", [s])
output.file($1, "$2", fallible=true, on_stop=shutdown, s)
LIQ
}
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
cpu_of() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
live_vs_live() {
  local k=${LIVE_K:-16} port node src i ff=() window=30
  port=$(free_port)
  TIDECAST_LOG=warn "$tc" serve --listen "127.0.0.1:$port" --data-dir data-live --admin-password bench >/dev/null 2>live-node.log &
  node=$!; pids+=($node)
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  local srv="--server http://127.0.0.1:$port"
  TIDECAST_ADMIN_PASSWORD=bench "$tc" mount create /live.mp3 --password benchpw $srv >/dev/null
  ffmpeg -nostdin -v error -re -stream_loop -1 -i in.mp3 -c copy -content_type audio/mpeg -f mp3 \
    "icecast://source:benchpw@127.0.0.1:$port/live.mp3" & src=$!; pids+=($src)
  sleep 3
  for i in $(seq "$k"); do
    ffmpeg -nostdin -v error -threads 1 -i "http://127.0.0.1:$port/live.mp3" -c:a libopus -b:a 64k -f ogg -y /dev/null &
    ff+=($!); pids+=($!)
  done
  sleep 5
  # Window 1: the node before the mounts (ingest and K ffmpeg listeners). Window 2: with the K
  # mounts, and the K ffmpeg processes measured over the same seconds.
  local b0 b1 m0 m1 f0 f1
  b0=$(cpu_of $node); sleep "$window"; b1=$(cpu_of $node)
  for i in $(seq "$k"); do
    TIDECAST_ADMIN_PASSWORD=bench "$tc" mount create "/k$i.opus" --from /live.mp3 --codec opus --bitrate 64 $srv >/dev/null
  done
  sleep 10
  m0=$(cpu_of $node); f0=$(cpu_of "${ff[@]}"); sleep "$window"; m1=$(cpu_of $node); f1=$(cpu_of "${ff[@]}")
  python3 - "$k" "$window" "$b0" "$b1" "$m0" "$m1" "$f0" "$f1" <<'PY' | tee live.txt
import sys
k, w = int(sys.argv[1]), int(sys.argv[2])
b0, b1, m0, m1, f0, f1 = (int(x) / 100 for x in sys.argv[3:9])
tc_ms = (m1 - m0) * 1000 / (k * w)
base_ms = (b1 - b0) * 1000 / (k * w)
ff_ms = (f1 - f0) * 1000 / (k * w)
print(f"\n### Live against live: {k} transcoded mounts vs {k} `ffmpeg -threads 1`, MP3 128k → Opus 64k, same {w} s window\n")
print("| producer | CPU ms per stream-second | tidecast ÷ ffmpeg |")
print("|---|---:|---:|")
print(f"| tidecast transcoded mount | {tc_ms - base_ms:.1f} | {(tc_ms - base_ms) / ff_ms:.2f} |")
print(f"| ffmpeg -threads 1 (a listener of the mount) | {ff_ms:.1f} | |")
print(f"\n(Node CPU with the {k} mounts {tc_ms:.1f} ms per stream-second, of which {base_ms:.1f} was the node's before the mounts: ingest and {k} ffmpeg listeners.)")
PY
  for p in "${ff[@]}" "$src" "$node"; do kill -9 "$p" 2>/dev/null || true; done
}
if [ "${LIVE_ONLY:-0}" = 1 ]; then live_vs_live; exit 0; fi

echo "== offline (one thread each)" >&2
: > offline.txt
measure "tidecast:mp3" "$tc" bench --input in.mp3 --bitrate 64 --only "pipeline input → mp3" --json
measure "ffmpeg:mp3" ffmpeg -nostdin -threads 1 -i in.mp3 -c:a libmp3lame -b:a 64k -y out-ff.mp3
liq_script '%ffmpeg(format="mp3", %audio(codec="libmp3lame", b="64k"))' out-liq.mp3
measure "liquidsoap:mp3" liquidsoap out-liq.mp3.liq
measure "tidecast:opus" "$tc" bench --input in.mp3 --bitrate 64 --only "pipeline input → opus" --json
measure "ffmpeg:opus" ffmpeg -nostdin -threads 1 -i in.mp3 -c:a libopus -b:a 64k -y out-ff.opus
liq_script '%ffmpeg(format="ogg", %audio(codec="libopus", b="64k", samplerate=48000))' out-liq.opus
measure "liquidsoap:opus" liquidsoap out-liq.opus.liq
# Stage-level thread CPU (decode alone, encode alone, whole pipeline) for the overhead figure.
"$tc" bench --input in.mp3 --bitrate 64 --json > stages.jsonl 2>/dev/null

echo "== live against live" >&2
live_vs_live

echo "== live: one node, a 128 kbit/s MP3 source, transcoded mounts MP3 128k -> Opus 64k" >&2
port=$(free_port)
TIDECAST_LOG=warn "$tc" serve --listen "127.0.0.1:$port" --data-dir data --admin-password bench >/dev/null 2>node.log &
node=$!; pids+=($node)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
export TIDECAST_SERVER="http://127.0.0.1:$port" TIDECAST_ADMIN_PASSWORD=bench
"$tc" mount create /live.mp3 --password benchpw >/dev/null
ffmpeg -nostdin -v error -re -stream_loop -1 -i in.mp3 -c copy -content_type audio/mpeg -f mp3 \
  "icecast://source:benchpw@127.0.0.1:$port/live.mp3" & pids+=($!)
sleep 3
rss() { awk '/VmRSS/ {print $2}' /proc/$node/status; }
add_mounts() { for i in $(seq "$1" "$2"); do "$tc" mount create "/t$i.opus" --from /live.mp3 --codec opus --bitrate 64 >/dev/null; done; }
add_mounts 1 1; sleep 15; rss1=$(rss)
add_mounts 2 21; sleep 15; rss21=$(rss)
echo "rss with 1 mount: $rss1 KiB, with 21: $rss21 KiB" >&2
[ "$concurrent" -gt 21 ] && add_mounts 22 "$concurrent"
sleep 15
metrics() { curl -s "http://127.0.0.1:$port/metrics" | grep '^tidecast_source_bytes_total{mount="/t'; }
cpu() { awk '{print $14+$15}' /proc/$node/stat; }
metrics > m0.txt; c0=$(cpu); sleep 30; metrics > m1.txt; c1=$(cpu)

python3 - "$rss1" "$rss21" "$concurrent" "$c0" "$c1" <<'PY'
import json, re, sys
rss1, rss21, n, c0, c1 = (int(x) for x in sys.argv[1:6])
off = {}
for line in open("offline.txt"):
    name, cpu, rss = line.split()
    off[name] = (float(cpu), int(rss))
stages = {j["stage"]: j for j in map(json.loads, open("stages.jsonl"))}
print("\n### Offline: 300 s of 44.1 kHz stereo MP3 128 kbit/s → 64 kbit/s, one thread\n")
print("| output | tool | CPU s | peak RSS MiB | tidecast ÷ tool (CPU) |")
print("|---|---|---:|---:|---:|")
for out in ("mp3", "opus"):
    t = off.get(f"tidecast:{out}")
    for tool in ("tidecast", "ffmpeg", "liquidsoap"):
        r = off.get(f"{tool}:{out}")
        if not r: continue
        ratio = f"{t[0]/r[0]:.2f}" if t and tool != "tidecast" and r[0] > 0 else ""
        print(f"| {out} | {tool} | {r[0]:.2f} | {r[1]/1024:.0f} | {ratio} |")
dec = stages.get("decode input"); 
for out in ("mp3", "opus"):
    enc = next((v for k, v in stages.items() if k.startswith(f"encode {out}")), None)
    pipe = stages.get(f"pipeline input → {out}")
    if dec and enc and pipe:
        print(f"\nPipeline → {out} (thread CPU): {pipe['cpu_s']:.2f} s vs decode {dec['cpu_s']:.2f} s + encode {enc['cpu_s']:.2f} s "
              f"= {100*(pipe['cpu_s']/(dec['cpu_s']+enc['cpu_s'])-1):+.1f} %")
print(f"\n### Live transcoded mounts (MP3 128k → Opus 64k), one node\n")
print(f"- Memory per extra transcoded mount: {(rss21-rss1)/20/1024:.1f} MiB (RSS {rss1/1024:.0f} MiB with 1, {rss21/1024:.0f} MiB with 21)")
def read(f):
    d = {}
    for line in open(f):
        m = re.match(r'tidecast_source_bytes_total\{mount="(/t\d+\.opus)"\} (\d+)', line)
        if m: d[m.group(1)] = int(m.group(2))
    return d
m0, m1 = read("m0.txt"), read("m1.txt")
rates = [(m1.get(k, 0) - v) / 30 for k, v in m0.items()]
ok = sum(1 for r in rates if r >= 0.95 * 8000)
print(f"- {n} concurrent transcoded mounts: {ok} of {len(rates)} produced ≥ 95 % of 64 kbit/s over 30 s "
      f"(median {sorted(rates)[len(rates)//2]*8/1000:.1f} kbit/s); node CPU {(c1-c0)/100/30*100:.0f} % of one core "
      f"({(c1-c0)/100/30/max(n,1)*1000:.1f} ms per stream-second)")
PY
