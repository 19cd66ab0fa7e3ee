#!/usr/bin/env bash
# Soak: MINUTES (default 30) against one node, then MINUTES against a three-node cluster on a
# real etcd. Throughout, as on a busy station:
#   - the source (ffmpeg, MP3 128k) disconnects and reconnects every 20-60 s;
#   - 1 000 listeners: 200 stay on /live-64.mp3 (checked for real time, minute by minute), 800
#     churn over /live.mp3, /live-64.mp3 and /live-64.opus (each stays 5-60 s), on every node;
#   - the title changes every 3 s;
#   - the gain filter on both transcoded mounts is hot-swapped every minute (two versions);
#   - the two transcoded mounts keep running.
# Every minute it records each node's RSS, open descriptors and threads. Verdicts: RSS at the end
# within 10 % of RSS at minute 5; descriptors back to their level from before the load once every
# client is gone and relays have ended (no leak); no stable listener-minute under 95 % of real
# time.
#   benches/soak.sh [MINUTES] [single|cluster ...]
# Everything runs on loopback and is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
shift || true
phases=("$@")
[ ${#phases[@]} -gt 0 ] || phases=(single cluster)
[ "$minutes" -ge 6 ] || { echo "soak: at least 6 minutes (the verdict compares with minute 5)" >&2; exit 2; }
ulimit -n 20000
for t in ffmpeg etcd curl python3; do command -v $t >/dev/null || { echo "missing $t: run tests/run.sh first" >&2; exit 1; }; done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidecast/target}"
cargo build --release --locked -q -p tidecast -p tidecast-benches
plugins/build.sh >/dev/null
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d /tmp/tidecast-soak.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do pkill -9 -P "$p" 2>/dev/null || true; kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
export TIDECAST_ADMIN_PASSWORD=soakadmin TIDECAST_CLUSTER_SECRET=soak-cluster-secret-0123456789

# start_node NAME ADDR [FLAGS...]: prints the node's pid once it listens.
start_node() {
  local name=$1 addr=$2; shift 2
  TIDECAST_LOG=warn "$bin/tidecast" serve --listen "$addr" --data-dir "$work/$name" \
    --max-clients-per-address 0 "$@" >"$work/$name.out" 2>"$work/$name.log" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do grep -q "listening on" "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "listening on" "$work/$name.out" || { cat "$work/$name.log" >&2; exit 1; }
  echo "$pid"
}
node_addr() { sed -n 's/^tidecast listening on //p' "$work/$1.out"; }
sample() { # pid -> "rss_mib fds threads"
  local pid=$1
  awk '/^VmRSS:/{r=$2} /^Threads:/{t=$2} END{printf "%.1f ", r/1024; printf "%s ", "FDS"; print t}' "/proc/$pid/status" |
    sed "s/FDS/$(ls "/proc/$pid/fd" | wc -l)/"
}

run_phase() {
  local phase=$1 names=() addrs=() nodepids=()
  if [ "$phase" = single ]; then
    names=(solo)
    nodepids+=("$(start_node solo "127.0.0.1:$(free_port)")")
  else
    local cp pp
    cp=$(free_port); pp=$(free_port)
    etcd --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
      --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
      --initial-cluster "default=http://127.0.0.1:$pp" >"$work/etcd.log" 2>&1 &
    pids+=($!)
    sleep 2
    local i=2
    for n in a b c; do
      names+=("$n")
      nodepids+=("$(start_node "$n" "127.0.0.$i:$(free_port)" --etcd "http://127.0.0.1:$cp" --node-name "$n")")
      i=$((i + 1))
    done
  fi
  for n in "${names[@]}"; do addrs+=("$(node_addr "$n")"); done
  local first=${addrs[0]}
  tc() { "$bin/tidecast" "$@" --server "http://$first" >/dev/null; }
  tc plugin push gain plugins/dist/gain.wasm
  tc mount create /live.mp3 --password soakpw
  tc mount create /live-64.mp3 --from /live.mp3 --codec mp3 --bitrate 64 --filter gain
  tc mount create /live-64.opus --from /live.mp3 --codec opus --bitrate 64 --filter gain

  # Baseline descriptors, before any client.
  local base=()
  for p in "${nodepids[@]}"; do base+=("$(ls "/proc/$p/fd" | wc -l)"); done

  ( # the source: 20-60 s connected, then 1 s away, again and again
    while true; do
      ffmpeg -nostdin -v error -re -f lavfi -i "sine=frequency=440:duration=3600" -ac 2 -c:a libmp3lame -b:a 128k \
        -t $((20 + RANDOM % 41)) -content_type audio/mpeg -f mp3 "icecast://source:soakpw@$first/live.mp3" || true
      sleep 1
    done ) &
  local source=$!; pids+=("$source")
  ( i=0; while true; do i=$((i + 1))
      curl -s -o /dev/null -u source:soakpw "http://$first/admin/metadata?mount=/live.mp3&mode=updinfo&song=Soak+title+$i" || true
      sleep 3; done ) &
  local titles=$!; pids+=("$titles")
  ( v=0; while true; do sleep 60; v=$((1 - v))
      f=plugins/dist/gain.wasm; [ $v = 1 ] && f=plugins/dist/gain-minus-120.wasm
      "$bin/tidecast" plugin push gain "$f" --server "http://$first" >/dev/null || echo "plugin push failed" >&2
    done ) &
  local swaps=$!; pids+=("$swaps")
  sleep 5
  local nodes_csv
  nodes_csv=$(IFS=,; echo "${addrs[*]}")
  "$bin/soak-load" --nodes "$nodes_csv" --stable-mount /live-64.mp3 --stable-kbps 64 --stable 200 \
    --churn-mounts /live.mp3,/live-64.mp3,/live-64.opus --churn 800 --minutes "$minutes" >"$work/load-$phase.log" &
  local load=$!; pids+=("$load")

  echo "== $phase: ${#names[@]} node(s), $minutes minutes"
  printf '| minute |'; for n in "${names[@]}"; do printf ' %s RSS MiB | fds | threads |' "$n"; done; echo
  printf '|---:|'; for _ in "${names[@]}"; do printf -- '---:|---:|---:|'; done; echo
  local rss5=() rssend=()
  for m in $(seq 1 "$minutes"); do
    sleep 60
    printf '| %s |' "$m"
    local k=0
    for p in "${nodepids[@]}"; do
      read -r rss fds threads < <(sample "$p")
      printf ' %s | %s | %s |' "$rss" "$fds" "$threads"
      [ "$m" = 5 ] && rss5[$k]=$rss
      rssend[$k]=$rss
      k=$((k + 1))
    done
    echo
  done
  wait "$load" || true
  kill -9 "$source" "$titles" "$swaps" 2>/dev/null || true
  pkill -9 -f "icecast://source:soakpw@$first" 2>/dev/null || true
  # Let every connection that outlives its clients by design end first: a relay lingers 20 s
  # after its last listener and waits 30 s for a new origin when its source is gone.
  if [ "$phase" = single ]; then sleep 15; else sleep 60; fi
  echo
  # Every minute of the load, so a dip can be matched with what happened then.
  sed 's/^/    /' "$work/load-$phase.log"
  local ok=1 k=0
  for p in "${nodepids[@]}"; do
    local after
    after=$(ls "/proc/$p/fd" | wc -l)
    python3 - "${names[$k]}" "${rss5[$k]}" "${rssend[$k]}" "${base[$k]}" "$after" <<'PY' || ok=0
import sys
name, rss5, rssend, base, after = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
growth = (rssend - rss5) / rss5 * 100
leak = after - base
print(f"{name}: RSS {rss5:.1f} MiB at minute 5, {rssend:.1f} at the end ({growth:+.1f} %); "
      f"descriptors {base} before the load, {after} after every client left ({leak:+d})")
sys.exit(0 if abs(growth) <= 10 and leak <= 2 else 1)
PY
    k=$((k + 1))
  done
  grep -q "below 0.95 of real time: 0$" "$work/load-$phase.log" || ok=0
  for p in "${nodepids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  pkill -9 -f "etcd --data-dir $work/etcd" 2>/dev/null || true
  [ $ok = 1 ] && echo "$phase: PASS" || { echo "$phase: FAIL" >&2; return 1; }
}

status=0
for phase in "${phases[@]}"; do run_phase "$phase" || status=1; echo; done
exit $status
