#!/usr/bin/env python3
"""Idle now-playing subscribers: what N Server-Sent Events subscribers cost a node that has M
declared mounts and nothing changing (issue 26, defect 9: each subscriber used to build its own
snapshot every 500 ms; 800 of them with 100 mounts took 0.6 of a core).

Usage: benches/subscribers.py [BINARY] [--subscribers N] [--mounts M] [--seconds S]
Starts the node on a free loopback port, creates M mounts, opens N subscribers from N/8 loopback
addresses (a node takes 8 per address), then reads the node's CPU time from /proc over S
seconds, with and without the subscribers, and its resident memory. Everything it starts is
stopped at the end; every connection and wait is bounded.
"""
import argparse, base64, json, os, socket, subprocess, sys, tempfile, time, urllib.request

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary", nargs="?", default="target/release/tidecast")
    ap.add_argument("--subscribers", type=int, default=800)
    ap.add_argument("--mounts", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=30)
    a = ap.parse_args()
    port = free_port()
    data = tempfile.mkdtemp(prefix="tidecast-subs-")
    env = dict(os.environ, TIDECAST_ADMIN_PASSWORD="bench-admin")
    node = subprocess.Popen([a.binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subs = []
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/readyz", timeout=1); break
            except Exception:
                time.sleep(0.1)
        auth = "Basic " + base64.b64encode(b"admin:bench-admin").decode()
        rss_before_mounts = rss_mib(node.pid)
        for i in range(a.mounts):
            body = json.dumps({"path": f"/m{i}.mp3", "password": "bench-password-1"}).encode()
            req = urllib.request.Request(url + "/api/v1/mounts", data=body, method="POST",
                                         headers={"Authorization": auth, "Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=30).read()
        time.sleep(2)
        rss_mounts = rss_mib(node.pid)
        c0 = cpu_seconds(node.pid); time.sleep(a.seconds); idle = (cpu_seconds(node.pid) - c0) / a.seconds
        for i in range(a.subscribers):
            s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                         source_address=(f"127.0.{10 + i // 8 // 250}.{1 + (i // 8) % 250}", 0))
            s.sendall(b"GET /nowplaying/events HTTP/1.1\r\nHost: x\r\n\r\n")
            head = s.recv(4096)
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                sys.exit(f"subscriber {i} refused: {head[:80]!r}")
            s.setblocking(False)
            subs.append(s)
        time.sleep(2)
        c0 = cpu_seconds(node.pid); time.sleep(a.seconds); busy = (cpu_seconds(node.pid) - c0) / a.seconds
        rss_subs = rss_mib(node.pid)
        print(f"{a.mounts} mounts, {a.subscribers} idle subscribers, {a.seconds:.0f} s windows")
        print(f"node CPU without subscribers: {idle * 1000:.2f} ms/s")
        print(f"node CPU with subscribers:    {busy * 1000:.2f} ms/s "
              f"({(busy - idle) / max(a.subscribers, 1) * 1e6:.2f} µs/s per subscriber)")
        print(f"RSS: {rss_before_mounts:.1f} MiB at start, {rss_mounts:.1f} MiB after {a.mounts} mount "
              f"creations, {rss_subs:.1f} MiB with the subscribers")
    finally:
        for s in subs:
            s.close()
        node.terminate()
        try:
            node.wait(timeout=40)
        except subprocess.TimeoutExpired:
            node.kill()

if __name__ == "__main__":
    main()
