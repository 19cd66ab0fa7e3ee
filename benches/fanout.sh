#!/usr/bin/env bash
# Fan-out benchmark: icecast2 and tidecast side by side in one run, the same 128 kbit/s MP3
# source (ffmpeg, -c copy), and 1 000 / 5 000 / 10 000 listeners from benches' fanout-load.
# Reports per server: CPU µs per listener-second, peak RSS, and the share of listeners that got at
# least 95 % of the expected bytes. Everything runs on loopback and is killed on exit.
#
#   benches/fanout.sh [COUNTS...]        (default: 1000 5000 10000)
#   SECONDS_PER_RUN=20 benches/fanout.sh 1000   (window per row; default 60 s, long against the
#                                             2 s write batches, so batching cannot fake a loss)
#   TLS=1 benches/fanout.sh 1000 5000     (also both servers over TLS: icecast2's OpenSSL, and
#                                             tidecast's rustls; same certificate, same listeners)
#   BASELINE_BIN=/path/to/older/tidecast ROUNDS=2 benches/fanout.sh 1000 5000
#                                            (also an older tidecast binary, as its own server
#                                             "baseline"; ROUNDS repeats the servers in turn and
#                                             the table gives each row's mean over the rounds)
#   PROXIED=1 benches/fanout.sh 1000       (also "tidecast-proxied": a two-node cluster on a
#                                             real etcd, the source on one node, the listeners on
#                                             the other with `?proxy=1`, players that cannot
#                                             follow a redirect; the row is the entry node's)
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("${@:-1000}")
[ $# -gt 0 ] || counts=(1000 5000 10000)
window=${SECONDS_PER_RUN:-60}
ulimit -n 20000

for t in ffmpeg icecast2 etcd; do command -v $t >/dev/null || { echo "missing $t: run tests/run.sh first" >&2; exit 1; }; done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidecast/target}"
cargo build --release --locked -q -p tidecast -p tidecast-benches
bin="$CARGO_TARGET_DIR/release"

work=$(mktemp -d /tmp/tidecast-fanout.XXXXXX)
chmod 755 "$work"
tls=${TLS:-0}
if [ "$tls" = 1 ]; then
  # A CA and a P-256 certificate for localhost; icecast2 wants chain and key in one file.
  (cd "$work" &&
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt \
      -days 2 -subj "/CN=fanout CA" 2>/dev/null &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr \
      -subj "/CN=localhost" 2>/dev/null &&
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext &&
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 \
      -extfile server.ext 2>/dev/null &&
    cat server.crt server.key > server.pem && chmod 644 server.pem server.key)
fi
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# 60 s of 128 kbit/s CBR stereo MP3, looped by the source.
ffmpeg -nostdin -v error -f lavfi -i "sine=frequency=440:duration=60" -ac 2 -c:a libmp3lame -b:a 128k "$work/in.mp3"

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

start_icecast() {
  local port=$1 tls_port=${2:-}
  local tls_socket=""
  [ -n "$tls_port" ] && tls_socket="<listen-socket><port>$tls_port</port><bind-address>127.0.0.1</bind-address><ssl>1</ssl></listen-socket>"
  mkdir -p "$work/icecast-log"; chown nobody "$work/icecast-log" 2>/dev/null || true
  cat > "$work/icecast.xml" <<XML
<icecast>
  <limits><clients>20000</clients><sources>4</sources><queue-size>524288</queue-size>
    <burst-size>65536</burst-size><source-timeout>10</source-timeout><client-timeout>30</client-timeout></limits>
  <authentication><source-password>benchpw</source-password><admin-user>admin</admin-user>
    <admin-password>benchadmin</admin-password></authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>$port</port><bind-address>127.0.0.1</bind-address></listen-socket>
  $tls_socket
  <fileserve>0</fileserve>
  <paths><logdir>$work/icecast-log</logdir><pidfile>$work/icecast.pid</pidfile>
    <ssl-certificate>$work/server.pem</ssl-certificate></paths>
  <logging><errorlog>error.log</errorlog><loglevel>1</loglevel></logging>
  <security><chroot>0</chroot><changeowner><user>nobody</user><group>nogroup</group></changeowner></security>
</icecast>
XML
  icecast2 -c "$work/icecast.xml" >/dev/null 2>&1 &
  pids+=($!); echo $!
}

start_tidecast() { # PORT [TLS_PORT [EXE [FLAGS...]]]
  local port=$1 tls_port=${2:-} exe=${3:-$bin/tidecast}
  local tls_flags=()
  [ -n "$tls_port" ] && tls_flags=(--tls-listen "127.0.0.1:$tls_port" --tls-cert "$work/server.crt" --tls-key "$work/server.key")
  rm -rf "$work/data-$port"
  TIDECAST_LOG=warn "$exe" serve --listen "127.0.0.1:$port" --data-dir "$work/data-$port" \
    --admin-password benchadmin --max-clients 20000 --max-clients-per-address 0 "${tls_flags[@]}" "${@:4}" \
    >/dev/null 2>"$work/tidecast-$port.log" &
  echo $!
}

# A real etcd for the two-node rows, fresh for each: its client URL.
start_etcd() {
  local cp pp; cp=$(free_port); pp=$(free_port)
  rm -rf "$work/etcd"
  etcd --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "default=http://127.0.0.1:$pp" >"$work/etcd.log" 2>&1 &
  echo $! > "$work/etcd.pid"
  until curl -fs "http://127.0.0.1:$cp/health" >/dev/null 2>&1; do sleep 0.2; done
  echo "http://127.0.0.1:$cp"
}
export TIDECAST_CLUSTER_SECRET=fanout-bench-cluster-secret

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }

run_server() {
  local name=$1 port pid src tls_port="" load_port load_tls=() src_port mount=/live.mp3 others=()
  port=$(free_port)
  src_port=$port
  case "$name" in *-tls) tls_port=$(free_port) ;; esac
  case "${name%-tls}" in
    icecast2) pid=$(start_icecast "$port" "$tls_port") ;;
    baseline) pid=$(start_tidecast "$port" "$tls_port" "$BASELINE_BIN") ;;
    *-proxied)
      # The source on node "origin", the listeners on node "entry", which routing would send
      # elsewhere by redirect; `?proxy=1` says they cannot follow one.
      local exe=$bin/tidecast etcd_url
      [ "$name" = baseline-proxied ] && exe=$BASELINE_BIN
      etcd_url=$(start_etcd); others+=("$(cat "$work/etcd.pid")")
      src_port=$(free_port)
      others+=("$(start_tidecast "$src_port" "" "$exe" --etcd "$etcd_url" --node-name origin)")
      pid=$(start_tidecast "$port" "" "$exe" --etcd "$etcd_url" --node-name entry)
      wait_port "$src_port"
      mount="/live.mp3?proxy=1" ;;
    *) pid=$(start_tidecast "$port" "$tls_port") ;;
  esac
  pids+=("$pid" "${others[@]}")
  wait_port "$port"
  load_port=$port
  if [ -n "$tls_port" ]; then
    wait_port "$tls_port"; load_port=$tls_port; load_tls=(--tls-ca "$work/ca.crt" --tls-name localhost)
  fi
  if [ "${name%-tls}" != icecast2 ]; then
    "$bin/tidecast" mount create /live.mp3 --password benchpw --server "http://127.0.0.1:$port" --admin-password benchadmin >/dev/null
  fi
  ffmpeg -nostdin -v error -re -stream_loop -1 -i "$work/in.mp3" -c copy -content_type audio/mpeg -f mp3 \
    "icecast://source:benchpw@127.0.0.1:$src_port/live.mp3" &
  src=$!; pids+=($src)
  disown "$src"  # killed at the end: no job-control line for it
  sleep 3
  for n in "${counts[@]}"; do
    json=$("$bin/fanout-load" --addr "127.0.0.1:$load_port" --mount "$mount" --listeners "$n" \
      --seconds "$window" --server-pid "$pid" "${load_tls[@]}")
    echo "$name $json" >> "$work/results"
    echo "$name $n: $json" >&2
    sleep 2
  done
  kill -9 "$src" "$pid" "${others[@]}" 2>/dev/null || true
}

: > "$work/results"
servers=(icecast2 tidecast)
[ -n "${BASELINE_BIN:-}" ] && servers+=(baseline)
[ "$tls" = 1 ] && servers+=(icecast2-tls tidecast-tls)
if [ "${PROXIED:-0}" = 1 ]; then
  servers+=(tidecast-proxied)
  [ -n "${BASELINE_BIN:-}" ] && servers+=(baseline-proxied)
fi
for _ in $(seq "${ROUNDS:-1}"); do
  for server in "${servers[@]}"; do run_server "$server"; done
done

python3 - "$work/results" "$window" <<'PY'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    name, js = line.split(" ", 1)
    r = json.loads(js)
    runs.setdefault(r["listeners"], {}).setdefault(name, []).append(r)
# Each row: the mean over the rounds (the peak RSS: the highest).
rows = {}
for n, by_name in runs.items():
    for name, rs in by_name.items():
        mean = lambda k: sum(x[k] for x in rs) / len(rs)
        rows.setdefault(n, {})[name] = {
            "cpu_us_per_listener_second": mean("cpu_us_per_listener_second"),
            "server_peak_rss_kib": max(x["server_peak_rss_kib"] for x in rs),
            "share_at_least_95pct": mean("share_at_least_95pct"),
            "mean_kbps_received": mean("mean_kbps_received"),
            "rounds": len(rs),
        }
print(f"\nFan-out, 128 kbit/s MP3, {sys.argv[2]} s window per row, loopback, load generator in its own process\n")
print("| listeners | server | CPU µs / listener-s | peak RSS MiB | ≥95 % bytes | mean kbit/s | tidecast/icecast2 CPU | TLS/plain CPU |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
cpu = lambda r: r["cpu_us_per_listener_second"]
for n in sorted(rows):
    for name in ("icecast2", "tidecast", "baseline", "icecast2-tls", "tidecast-tls", "tidecast-proxied", "baseline-proxied"):
        r = rows[n].get(name)
        if not r: continue
        ratio = tls_ratio = ""
        peer = rows[n].get(name.replace("tidecast", "icecast2").replace("baseline", "icecast2").replace("-proxied", ""))
        if name.startswith(("tidecast", "baseline")) and peer and cpu(peer) > 0:
            ratio = f'{cpu(r) / cpu(peer):.2f}'
        plain = rows[n].get(name[:-4]) if name.endswith("-tls") else None
        if plain and cpu(plain) > 0:
            tls_ratio = f'{cpu(r) / cpu(plain):.2f}'
        print(f'| {n} | {name} | {cpu(r):.1f} | {r["server_peak_rss_kib"]/1024:.0f} | '
              f'{100*r["share_at_least_95pct"]:.1f} % | {r["mean_kbps_received"]:.1f} | {ratio} | {tls_ratio} |')
for n in sorted(rows):
    for name in ("tidecast-proxied", "baseline-proxied"):
        proxied, served = rows[n].get(name), rows[n].get("tidecast")
        if proxied and served and cpu(served) > 0:
            print(f"\n{name}/tidecast (a proxied listener's CPU on its entry node against a served one's) at {n} listeners: "
                  f"{cpu(proxied) / cpu(served):.2f}")
for n in sorted(rows):
    now, before = rows[n].get("tidecast"), rows[n].get("baseline")
    if now and before and cpu(before) > 0:
        print(f"\ntidecast/baseline CPU at {n} listeners: {cpu(now) / cpu(before):.2f} "
              f"(peak RSS {now['server_peak_rss_kib']/1024:.0f} against {before['server_peak_rss_kib']/1024:.0f} MiB; "
              f"{now['rounds']} round(s))")
PY
