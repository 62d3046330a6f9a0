#!/usr/bin/env python3
"""Memory per idle keep-alive connection, against bare hyper in the same run.

For each server in turn (the ingress, and `comparator accept`, a bare hyper
server that reads the body and answers 202): open N connections, send one
webhook on each (answered before the next is opened), keep them all open and
idle, and read the server's RSS (/proc/<pid>/status VmRSS) before and after.
Then close them and read RSS again after SETTLE seconds (memory returned
after a burst).

    loadtest/idle.py [N] [SETTLE] [BIN[|ENV=VALUE...],...]
    loadtest/idle.py 8000 30
    loadtest/idle.py 8000 0 "target/release/tether-ingress|MIMALLOC_PURGE_DELAY=0"

With TLS=1 in the environment the ingress serves HTTPS (a self-signed
certificate made with openssl) and the clients speak TLS; the comparator has
no TLS, so list only ingress builds then.

Needs a release build of the ingress and of the comparator example
(`cargo build --release --examples`), and redis-server.
"""
import os
import resource
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
SETTLE = float(sys.argv[2]) if len(sys.argv) > 2 else 30
BINS = (sys.argv[3].split(",") if len(sys.argv) > 3
        else [os.path.join(run.ROOT, "target", "release", "tether-ingress"), "comparator"])
COMPARATOR = os.path.join(run.ROOT, "target", "release", "examples", "comparator")
BODY = b'{"webhookId":"wh_one","lead":{"name":"Alex Nguyen","email":"alex@example.com"}}'


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def request(host_port):
    head = (f"POST /api/webhook/workflow HTTP/1.1\r\nHost: {host_port}\r\n"
            f"Authorization: Bearer {run.LOAD_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode()
    return head + BODY


def answered(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(rest) < length:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        rest += chunk
    return head.split(b" ")[1] in (b"200", b"202")


def measure(spec, rport, work):
    binary, *envs = spec.split("|")
    extra = dict(e.split("=", 1) for e in envs)
    port = run.free_port()
    if binary == "comparator":
        p = subprocess.Popen([COMPARATOR, "accept", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                             env=dict(os.environ, **extra))
        assert run.wait_tcp(port)
    else:
        env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{port}",
                   TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{rport}", TETHER_INGRESS_LOG="warn",
                   **extra)
        if os.environ.get("TLS") == "1":
            cert, key = os.path.join(work, "idle.crt"), os.path.join(work, "idle.key")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                            "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
            env.update(TETHER_INGRESS_TLS_CERT_FILE=cert, TETHER_INGRESS_TLS_KEY_FILE=key)
        # Idle connections must outlive the run: no header timeout closes them.
        with open(os.path.join(work, "idle.toml"), "w") as f:
            f.write("[server]\nmax_connections = 100000\nheader_read_timeout_ms = 600000\n"
                    "first_byte_timeout_ms = 600000\n")
        p = subprocess.Popen([binary, "--config", os.path.join(work, "idle.toml")], env=env)
        if os.environ.get("TLS") == "1":
            assert run.wait_tcp(port, 60)
            time.sleep(2)
        else:
            assert run.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60)
    tls = None
    if os.environ.get("TLS") == "1" and binary != "comparator":
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        tls.set_alpn_protocols(["http/1.1"])

    def connect():
        s = socket.create_connection(("127.0.0.1", port))
        return tls.wrap_socket(s, server_hostname="localhost") if tls else s
    try:
        hp = f"127.0.0.1:{port}"
        req = request(hp)
        # Warm: the first requests allocate what every later one reuses.
        warm = connect()
        for _ in range(100):
            warm.sendall(req)
            assert answered(warm)
        warm.close()
        time.sleep(0.5)
        before = rss_kb(p.pid)
        socks = []
        for _ in range(N):
            s = connect()
            s.sendall(req)
            assert answered(s), "a request was not answered 2xx"
            socks.append(s)
        time.sleep(1)
        held = rss_kb(p.pid)
        for s in socks:
            s.close()
        time.sleep(SETTLE)
        after = rss_kb(p.pid)
        name = os.path.basename(binary) + (" (HTTPS)" if tls else "") + "".join(f" {e}" for e in envs)
        print(f"{name:>44}: {N} idle connections: {(held - before) / N:6.2f} KB each "
              f"(RSS {before / 1024:.0f} → {held / 1024:.0f} MB; {after / 1024:.0f} MB {SETTLE:.0f} s after they closed)",
              flush=True)
    finally:
        p.terminate()
        p.wait()


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, N * 2 + 1000)), hard))
    r, rport, work = run.seeded_redis(1000)
    try:
        for spec in BINS:
            measure(spec, rport, work)
    finally:
        r.terminate()


if __name__ == "__main__":
    main()
