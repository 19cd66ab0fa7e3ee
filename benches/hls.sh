#!/usr/bin/env bash
# HLS benchmark: in one run, one 128 kbit/s MP3 mount (ffmpeg, -c copy, real time) served to N
# players several ways (tidecast's HLS and nginx with keep-alive alternate, see ROUNDS below):
#   1. tidecast's HLS (6 s segments, each player its own session, from benches' hls-load);
#   2. tidecast's progressive stream of the same mount (fanout-load, as benches/fanout.sh);
#   3. nginx (Debian, one worker, sendfile) serving a snapshot of the same playlist and segments
#      as static files, to the same hls-load (which then goes round the snapshot's segments, so
#      it makes the same requests: one playlist and one segment per player per 6 s), once with
#      keep-alive and once with a connection per request;
#   4. the floor: a minimal tokio server (static-floor) serving the same files from memory.
# Reports CPU µs per listener-second of each server over the window, and its memory; and what
# tidecast spends with the source alone and no players over a window (ingest, cutting, timers:
# work nginx serving files does not do), per N players. The two rows the comparison rests on,
# tidecast's HLS and nginx with keep-alive, are measured ROUNDS times in alternation (this VM's
# speed drifts by a third over minutes) and the table shows their medians, with every round
# below it. Everything runs on loopback and is killed on exit.
#
#   benches/hls.sh [PLAYERS]                    (default 1000)
#   SECONDS_PER_RUN=30 benches/hls.sh 1000      (window per row; default 60 s)
#   ROUNDS=5 benches/hls.sh 1000                (alternated rounds; default 3)
#   BASELINE_BIN=/path/to/older/tidecast benches/hls.sh 1000
#                          (also an older tidecast as a second node with its own source, its HLS
#                           measured in the same rounds, between tidecast's and nginx's; the
#                           table gets its median row and each round's current/baseline ratio)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
window=${SECONDS_PER_RUN:-60}
rounds=${ROUNDS:-3}
[[ $rounds =~ ^[1-9][0-9]?$ ]] || { echo "ROUNDS must be 1 to 99" >&2; exit 1; }
ulimit -n 20000

for t in ffmpeg nginx curl python3; do
  command -v $t >/dev/null || { echo "missing $t: run tests/run.sh first (nginx is in .config/debian-packages)" >&2; exit 1; }
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidecast/target}"
cargo build --release --locked -q -p tidecast -p tidecast-benches
bin="$CARGO_TARGET_DIR/release"

work=$(mktemp -d /tmp/tidecast-hls.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }

# 60 s of 128 kbit/s CBR stereo MP3, looped by the source.
ffmpeg -nostdin -v error -f lavfi -i "sine=frequency=440:duration=60" -ac 2 -c:a libmp3lame -b:a 128k "$work/in.mp3"

# start_node BINARY PORT NAME: a node with /live.mp3 fed by ffmpeg; sets node_pid.
start_node() {
  TIDECAST_LOG=warn "$1" serve --listen "127.0.0.1:$2" --data-dir "$work/data-$3" \
    --admin-password benchadmin --max-clients 20000 --max-clients-per-address 0 \
    --hls-segment-secs 6 --hls-window-secs 60 >/dev/null 2>"$work/$3.log" &
  node_pid=$!; pids+=($node_pid)
  wait_port "$2"
  "$1" mount create /live.mp3 --password benchpw --server "http://127.0.0.1:$2" --admin-password benchadmin >/dev/null
  ffmpeg -nostdin -v error -re -stream_loop -1 -i "$work/in.mp3" -c copy -content_type audio/mpeg -f mp3 \
    "icecast://source:benchpw@127.0.0.1:$2/live.mp3" &
  pids+=($!)
}
port=$(free_port)
start_node "$bin/tidecast" "$port" tidecast
tidecast=$node_pid
baseline=
if [ -n "${BASELINE_BIN:-}" ]; then
  bport=$(free_port)
  start_node "$BASELINE_BIN" "$bport" baseline
  baseline=$node_pid
fi
echo "a full HLS window (66 s) before measuring" >&2
sleep 66

# What the node spends with no player at all (taking the source, cutting segments, its timers),
# over the same window: nginx has no such work, so the table also shows HLS less this.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
idle_start=$(cpu_ticks "$tidecast")
sleep "$window"
idle_cpu_s=$(python3 -c "print(($(cpu_ticks "$tidecast") - $idle_start) / 100)")
echo "tidecast idle: $idle_cpu_s s of CPU in $window s" >&2

master=/hls/live.mp3/master.m3u8

# The same playlist and segments as static files for nginx.
www="$work/www"
mkdir -p "$www/hls/live.mp3"
curl -sf "http://127.0.0.1:$port$master" -o "$www$master"
media=$(grep -v '^#' "$www$master" | head -n 1)
curl -sf "http://127.0.0.1:$port$media" -o "$www/hls/live.mp3/index.m3u8"
grep -v '^#' "$www/hls/live.mp3/index.m3u8" | while read -r uri; do
  curl -sf "http://127.0.0.1:$port/hls/live.mp3/$uri" -o "$www/hls/live.mp3/${uri%%\?*}"
done
chmod -R a+rX "$www"
# nginx as deployed (keep-alive), and with one request per connection (as a player that does
# not keep connections alive costs it).
start_nginx() {
  local keepalive=$1
  nport=$(free_port)
  cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 20000; }
http {
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_timeout $keepalive; keepalive_requests 1000000;
  access_log off;
  client_body_temp_path $work/nginx-tmp; proxy_temp_path $work/nginx-tmp;
  fastcgi_temp_path $work/nginx-tmp; uwsgi_temp_path $work/nginx-tmp; scgi_temp_path $work/nginx-tmp;
  types { application/vnd.apple.mpegurl m3u8; audio/mpeg mp3; }
  server { listen 127.0.0.1:$nport; root $www; }
}
CONF
  nginx -c "$work/nginx.conf" -e "$work/nginx-error.log" >/dev/null 2>&1 &
  nginx_master=$!; pids+=($nginx_master)
  wait_port "$nport"
  nginx_worker=$(pgrep -P "$nginx_master" | head -n 1)
}
load_nginx() {
  "$bin/hls-load" --addr "127.0.0.1:$nport" --master "$master" --players "$n" \
    --interval 6 --seconds "$window" --server-pid "$nginx_master,$nginx_worker"
}
stop_nginx() { kill -9 "$nginx_master" "$nginx_worker" 2>/dev/null || true; }

# tidecast's HLS and nginx with keep-alive, alternating.
start_nginx 65
tidecast_rounds=()
nginx_rounds=()
baseline_rounds=()
for r in $(seq "$rounds"); do
  one=$("$bin/hls-load" --addr "127.0.0.1:$port" --master "$master" --players "$n" \
    --interval 6 --seconds "$window" --server-pid "$tidecast")
  echo "round $r, tidecast HLS: $one" >&2
  tidecast_rounds+=("$one")
  sleep 20 # the sessions expire (three segment lengths)
  if [ -n "$baseline" ]; then
    one=$("$bin/hls-load" --addr "127.0.0.1:$bport" --master "$master" --players "$n" \
      --interval 6 --seconds "$window" --server-pid "$baseline")
    echo "round $r, baseline HLS: $one" >&2
    baseline_rounds+=("$one")
    sleep 20
  fi
  one=$(load_nginx)
  echo "round $r, nginx HLS, keep-alive: $one" >&2
  nginx_rounds+=("$one")
done
stop_nginx
tidecast_progressive=$("$bin/fanout-load" --addr "127.0.0.1:$port" --mount /live.mp3 --listeners "$n" \
  --seconds "$window" --server-pid "$tidecast")
echo "tidecast progressive: $tidecast_progressive" >&2
start_nginx 0
nginx_close=$(load_nginx)
stop_nginx
echo "nginx HLS, a connection per request: $nginx_close" >&2

# The floor: a minimal tokio server (benches/src/static_floor.rs) serving the same files from
# memory with keep-alive and nothing else.
fport=$(free_port)
"$bin/static-floor" "127.0.0.1:$fport" "$www" &
floor_pid=$!; pids+=($floor_pid)
wait_port "$fport"
floor=$("$bin/hls-load" --addr "127.0.0.1:$fport" --master "$master" --players "$n" \
  --interval 6 --seconds "$window" --server-pid "$floor_pid")
kill -9 "$floor_pid" 2>/dev/null || true
echo "minimal tokio server: $floor" >&2

python3 - "$n" "$tidecast_progressive" "$nginx_close" "$idle_cpu_s" "$window" "$floor" \
  "$(printf '%s\n' "${tidecast_rounds[@]}")" "$(printf '%s\n' "${nginx_rounds[@]}")" \
  "$(printf '%s\n' "${baseline_rounds[@]}")" <<'PY'
import json, sys
n = sys.argv[1]
prog, ngx_close = (json.loads(a) for a in sys.argv[2:4])
idle = float(sys.argv[4]) * 1e6 / (int(n) * float(sys.argv[5]))
floor = json.loads(sys.argv[6])
hls_rounds = [json.loads(l) for l in sys.argv[7].splitlines()]
ngx_rounds = [json.loads(l) for l in sys.argv[8].splitlines()]
base_rounds = [json.loads(l) for l in sys.argv[9].splitlines() if l]
def median(rounds):
    """The round with the median CPU (the lower middle one of an even count)."""
    ordered = sorted(rounds, key=lambda r: r["cpu_us_per_listener_s"])
    return ordered[(len(ordered) - 1) // 2]
hls, ngx = median(hls_rounds), median(ngx_rounds)
def row(name, cpu, kbps, errors, rss_kib, rss_kind):
    ratio = hls["cpu_us_per_listener_s"] / cpu if cpu else 0
    print(f"| {n} | {name} | {cpu:.1f} | {rss_kib / 1024:.0f} ({rss_kind}) | {kbps:.1f} | {errors} | {ratio:.2f} |")
print("| players | server | CPU µs / listener-s | RSS MiB | kbit/s per player | errors | tidecast HLS / this |")
print("|---|---|---|---|---|---|---|")
row(f"tidecast HLS (median of {len(hls_rounds)})", hls["cpu_us_per_listener_s"], hls["kbit_s_per_player"], hls["errors"],
    hls["server_rss_kib"], "at the end")
if base_rounds:
    base = median(base_rounds)
    row(f"baseline tidecast HLS (BASELINE_BIN; median of {len(base_rounds)})", base["cpu_us_per_listener_s"],
        base["kbit_s_per_player"], base["errors"], base["server_rss_kib"], "at the end")
print(f"| {n} | tidecast with no players (source, cutter), per {n} players | {idle:.1f} | | | | |")
print(f"| {n} | tidecast HLS less that | {hls['cpu_us_per_listener_s'] - idle:.1f} | | | | |")
row("tidecast progressive", prog["cpu_us_per_listener_second"], prog["mean_kbps_received"],
    prog["failed_connects"], prog["server_peak_rss_kib"], "peak")
row(f"nginx HLS, keep-alive (static files; median of {len(ngx_rounds)})", ngx["cpu_us_per_listener_s"], ngx["kbit_s_per_player"],
    ngx["errors"], ngx["server_rss_kib"], "at the end")
row("nginx HLS, a connection per request", ngx_close["cpu_us_per_listener_s"],
    ngx_close["kbit_s_per_player"], ngx_close["errors"], ngx_close["server_rss_kib"], "at the end")
row("minimal tokio server (static-floor)", floor["cpu_us_per_listener_s"],
    floor["kbit_s_per_player"], floor["errors"], floor["server_rss_kib"], "at the end")
print()
print("Rounds, alternating (CPU µs / listener-s): tidecast HLS / nginx keep-alive = ratio")
for i, (h, g) in enumerate(zip(hls_rounds, ngx_rounds), 1):
    a, b = h["cpu_us_per_listener_s"], g["cpu_us_per_listener_s"]
    print(f"- round {i}: {a:.1f} / {b:.1f} = {a / b:.2f} (less the idle row: {(a - idle) / b:.2f})")
if base_rounds:
    print()
    print("Rounds, alternating (CPU µs / listener-s): tidecast HLS / baseline HLS = ratio")
    for i, (h, b) in enumerate(zip(hls_rounds, base_rounds), 1):
        a, c = h["cpu_us_per_listener_s"], b["cpu_us_per_listener_s"]
        print(f"- round {i}: {a:.1f} / {c:.1f} = {a / c:.2f}")
PY
