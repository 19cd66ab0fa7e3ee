#!/usr/bin/env bash
# Listener routing benchmark (see BENCHMARKS.md): redirects per second per core. A real etcd and
# three release-build nodes on loopback; a Python load generator (its own process, 4 threads)
# sends N listener requests to node A, which answers each with a 302 to the chosen node. The
# node's CPU time (user + sys from /proc/PID/stat) over the run gives redirects per CPU-second.
# Node A is kept full, so every request is a redirect.
# Two native chains and the sticky-ip WASM policy, in the same run; then the CPU cost of
# proxied listeners on the entry node against the nodes that serve them.
#
#   benches/routing.sh [N]      (default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
command -v etcd >/dev/null || { echo "missing etcd: run tests/run.sh first" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidecast/target}"
cargo build --release --locked -q -p tidecast
plugins/build.sh
tc="$CARGO_TARGET_DIR/release/tidecast"
work=$(mktemp -d /tmp/tidecast-routing.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cp=$(port); pp=$(port)
etcd --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
  --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
  --initial-cluster "default=http://127.0.0.1:$pp" >"$work/etcd.log" 2>&1 &
pids+=($!)
until curl -fs "http://127.0.0.1:$cp/health" >/dev/null 2>&1; do sleep 0.2; done
export TIDECAST_ADMIN_PASSWORD=bench-admin TIDECAST_CLUSTER_SECRET=bench-cluster-secret-0123
declare -A addr
for name in a b c; do
  # A, where the requests arrive, is kept full (one listener of one allowed), so every answer is
  # a redirect to B or C.
  extra=(); [ $name = a ] && extra=(--max-listeners 1)
  "$tc" serve --listen 127.0.0.1:0 --data-dir "$work/$name" --etcd "http://127.0.0.1:$cp" --node-name $name \
    --max-clients-per-address 0 "${extra[@]}" >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  eval "pid_$name=$!"
  until grep -q "listening on" "$work/$name.out" 2>/dev/null; do sleep 0.1; done
  addr[$name]=$(sed -n 's/tidecast listening on //p' "$work/$name.out")
done
a=${addr[a]}
"$tc" mount create /live.mp3 --password benchpw --server "http://$a" >/dev/null
ffmpeg -nostdin -v error -re -f lavfi -i sine=440 -c:a libmp3lame -b:a 128k -content_type audio/mpeg -f mp3 \
  "icecast://source:benchpw@$a/live.mp3" >/dev/null 2>&1 &
pids+=($!)
sleep 2
curl -s -o /dev/null "http://$a/_stream/live.mp3" &
pids+=($!)
sleep 2  # every node's load report, with A's listener
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks=$(getconf CLK_TCK)
load() { # label
  local before after
  before=$(cpu "$pid_a")
  python3 - "$a" "$n" <<'PY'
import socket, sys, threading, time
host, port = sys.argv[1].rsplit(":", 1); n = int(sys.argv[2])
counts = {}; lock = threading.Lock()
def worker(k):
    for _ in range(k):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"GET /live.mp3 HTTP/1.0\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk: break
            data += chunk
        s.close()
        code = data.split(b" ", 2)[1] if data else b"?"
        with lock: counts[code] = counts.get(code, 0) + 1
t0 = time.time()
threads = [threading.Thread(target=worker, args=(n // 4,)) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
print(f"  {n} requests in {time.time() - t0:.1f} s wall, answers: { {k.decode(): v for k, v in counts.items()} }")
PY
  after=$(cpu "$pid_a")
  python3 -c "t=($after-$before)/$ticks; print(f'  $1: node A used {t:.2f} s CPU: {($n/t if t else 0):,.0f} redirects per CPU-second')"
}
echo "== native policy (default chain: listeners_available,bandwidth_available,listeners_score,bandwidth_score,best)"
load native-best
"$tc" mount edit /live.mp3 --routing listeners_available,listeners_score,weighted --server "http://$a" >/dev/null
echo "== native policy (listeners_available,listeners_score,weighted)"
load native-weighted
"$tc" mount edit /live.mp3 --routing "" --server "http://$a" >/dev/null
"$tc" plugin push sticky plugins/dist/sticky-ip.wasm --server "http://$a" >/dev/null
"$tc" mount edit /live.mp3 --policy sticky --server "http://$a" >/dev/null
echo "== sticky-ip WASM policy"
load sticky-ip
"$tc" mount edit /live.mp3 --policy "" --server "http://$a" >/dev/null
# Proxied listeners: 200 players that do not follow redirects (`?proxy=1`) enter through A, which
# copies each one's stream from B or C. CPU per listener-second on A (the proxy) and on B and C
# (which serve the same listeners) over 20 s, after 3 s for the joins.
echo "== 200 proxied listeners for 20 s"
# Each node's own baseline first (A is the origin: the source, two relays, etcd), 10 s idle.
i0=($(cpu "$pid_a") $(cpu "$pid_b") $(cpu "$pid_c"))
sleep 10
i1=($(cpu "$pid_a") $(cpu "$pid_b") $(cpu "$pid_c"))
python3 - "$a" 200 26 >"$work/proxy.out" <<'PY' &
import selectors, socket, sys, time
host, port = sys.argv[1].rsplit(":", 1); n = int(sys.argv[2]); secs = float(sys.argv[3])
sel = selectors.DefaultSelector(); total = 0
for _ in range(n):
    s = socket.create_connection((host, int(port)))
    s.sendall(b"GET /live.mp3?proxy=1 HTTP/1.0\r\n\r\n")
    s.setblocking(False); sel.register(s, selectors.EVENT_READ)
end = time.time() + secs
while time.time() < end:
    for key, _ in sel.select(timeout=0.5):
        try:
            data = key.fileobj.recv(65536)
        except BlockingIOError:
            continue
        if not data:
            sel.unregister(key.fileobj)
        total += len(data)
print(f"{len(sel.get_map())} of {n} listeners still connected, {total / secs / n / 1000:.1f} kB/s each")
PY
loadpid=$!
sleep 3
a0=$(cpu "$pid_a"); b0=$(cpu "$pid_b"); c0=$(cpu "$pid_c")
sleep 20
a1=$(cpu "$pid_a"); b1=$(cpu "$pid_b"); c1=$(cpu "$pid_c")
wait "$loadpid"
echo "  $(cat "$work/proxy.out")"
python3 -c "
ls = 200 * 20
base_a = 2 * (${i1[0]} - ${i0[0]}) / $ticks; base_bc = 2 * (${i1[1]} - ${i0[1]} + ${i1[2]} - ${i0[2]}) / $ticks
a = ($a1 - $a0) / $ticks - base_a; bc = ($b1 - $b0 + $c1 - $c0) / $ticks - base_bc
print(f'  baseline over 20 s without them: node A {base_a:.2f} s, nodes B and C {base_bc:.2f} s')
print(f'  node A (proxy): {a:.2f} s CPU above baseline, {a / ls * 1e6:.0f} us per listener-second')
print(f'  nodes B and C (serving): {bc:.2f} s CPU above baseline, {bc / ls * 1e6:.0f} us per listener-second')
print(f'  proxy / serving: {a / bc if bc > 0 else 0:.2f}x')
"
