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
certificate made with openssl) and the clients speak TLS; so does the
comparator (tokio-rustls in front of the same bare hyper). With H2=1 every connection speaks
HTTP/2 (h2c with prior knowledge, or ALPN "h2" with TLS=1) and holds one
finished stream; it needs the `h2` package (`pip install h2`).

With LOAD=ROUNDS it measures throughput instead: for each ingress build,
wrk -t2 -c64 for 5 s on the one-match webhook with N idle connections held
against none, alternating over ROUNDS rounds in one process (needs wrk):

    LOAD=5 loadtest/idle.py 15000 0 target/release/tether-ingress

Needs a release build of the ingress and of the comparator example
(`cargo build --release --examples`), and redis-server.
"""
import os
import resource
import socket
import ssl
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
SETTLE = float(sys.argv[2]) if len(sys.argv) > 2 else 30
BINS = (sys.argv[3].split(",") if len(sys.argv) > 3
        else [os.path.join(run.ROOT, "target", "release", "tether-ingress"), "comparator"])
TLS = os.environ.get("TLS") == "1"
LOAD = int(os.environ.get("LOAD", "0"))
H2 = os.environ.get("H2") == "1"
if H2:
    import h2.config  # noqa: E402
    import h2.connection  # noqa: E402
    import h2.events  # noqa: E402
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


def answered_h2(sock, conn, hp):
    """One request on a fresh HTTP/2 connection; true when its answer is 2xx."""
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "POST"), (":path", "/api/webhook/workflow"), (":scheme", "http"),
                            (":authority", hp), ("authorization", f"Bearer {run.LOAD_KEY}"),
                            ("content-type", "application/json"), ("content-length", str(len(BODY)))])
    conn.send_data(sid, BODY, end_stream=True)
    sock.sendall(conn.data_to_send())
    status = None
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        for event in conn.receive_data(chunk):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(b":status")
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, h2.events.StreamEnded):
                sock.sendall(conn.data_to_send())
                return status in (b"200", b"202")
            elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                return False
        sock.sendall(conn.data_to_send())


def certificate(work):
    """A self-signed certificate and its key (made once per run)."""
    cert, key = os.path.join(work, "idle.crt"), os.path.join(work, "idle.key")
    if not os.path.exists(cert):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return cert, key


def start(spec, rport, work):
    """Starts one server of the list; returns (process, port, label)."""
    binary, *envs = spec.split("|")
    extra = dict(e.split("=", 1) for e in envs)
    port = run.free_port()
    if binary == "comparator":
        if TLS:
            cert, key = certificate(work)
            extra.update(COMPARATOR_TLS_CERT=cert, COMPARATOR_TLS_KEY=key)
        p = subprocess.Popen([COMPARATOR, "accept", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                             env=dict(os.environ, **extra))
        assert run.wait_tcp(port)
    else:
        env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{port}",
                   TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{rport}", TETHER_INGRESS_LOG="warn",
                   **extra)
        if TLS:
            cert, key = certificate(work)
            env.update(TETHER_INGRESS_TLS_CERT_FILE=cert, TETHER_INGRESS_TLS_KEY_FILE=key)
        # Idle connections must outlive the run: no header timeout closes them.
        with open(os.path.join(work, "idle.toml"), "w") as f:
            f.write("[server]\nmax_connections = 100000\nheader_read_timeout_ms = 600000\n"
                    "first_byte_timeout_ms = 600000\n[streams]\nmaxlen = 1000000\n")
        p = subprocess.Popen([binary, "--config", os.path.join(work, "idle.toml")], env=env)
        if TLS:
            assert run.wait_tcp(port, 60)
            time.sleep(2)
        else:
            assert run.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60)
    label = os.path.basename(binary) + (" (HTTPS)" if TLS else "") + (" (HTTP/2)" if H2 else "")
    return p, port, label + "".join(f" {e}" for e in envs)


class Clients:
    """Opens connections to one server, each answered once, and holds them."""

    def __init__(self, port):
        self.hp = f"127.0.0.1:{port}"
        self.port = port
        self.req = request(self.hp)
        self.tls = None
        if TLS:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.tls.check_hostname = False
            self.tls.verify_mode = ssl.CERT_NONE
            self.tls.set_alpn_protocols(["h2"] if H2 else ["http/1.1"])

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port))
        return self.tls.wrap_socket(s, server_hostname="localhost") if self.tls else s

    def one(self, requests=1):
        """A new connection answered `requests` times (HTTP/2: once)."""
        s = self.connect()
        if H2:
            conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
            assert answered_h2(s, conn, self.hp), "a request was not answered 2xx"
            return s
        for _ in range(requests):
            s.sendall(self.req)
            assert answered(s), "a request was not answered 2xx"
        return s

    def warm(self):
        """The first requests allocate what every later one reuses."""
        for _ in range(100 if H2 else 1):
            self.one(1 if H2 else 100).close()
        time.sleep(0.5)


def close_all(socks, reset=False):
    for s in socks:
        if reset:
            # RST instead of FIN: no TIME_WAIT, so rounds do not run out of ports.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


def measure(spec, rport, work):
    p, port, label = start(spec, rport, work)
    try:
        clients = Clients(port)
        clients.warm()
        before = rss_kb(p.pid)
        socks = [clients.one() for _ in range(N)]
        time.sleep(1)
        held = rss_kb(p.pid)
        close_all(socks)
        time.sleep(SETTLE)
        after = rss_kb(p.pid)
        print(f"{label:>44}: {N} idle connections: {(held - before) / N:6.2f} KB each "
              f"(RSS {before / 1024:.0f} → {held / 1024:.0f} MB; {after / 1024:.0f} MB {SETTLE:.0f} s after they closed)",
              flush=True)
    finally:
        p.terminate()
        p.wait()


def load(spec, rport, work, rounds):
    """Throughput with N idle connections held against none, alternating, in
    one process: wrk -t2 -c64 for 5 s on the one-match webhook."""
    p, port, label = start(spec, rport, work)
    url = f"http://127.0.0.1:{port}"
    ratios, cpus = [], []
    try:
        clients = Clients(port)
        run.warm_up(url, 64, [run.LOAD_KEY, "wh_one"])
        for rd in range(rounds):
            res = {}
            for phase in (("none", "idle") if rd % 2 == 0 else ("idle", "none")):
                socks = [clients.one() for _ in range(N)] if phase == "idle" else []
                x = run.run_wrk(url, 5, 64, [run.LOAD_KEY, "wh_one"], [p.pid])
                close_all(socks, reset=True)
                assert x["non2xx"] == 0, x["raw"]
                res[phase] = (x["rps"], x["cpu"][p.pid] / max(x["total"], 1) * 1e6, x["p99"])
                subprocess.run(["redis-cli", "-p", str(rport), "DEL", "tether:jobs:workflow"], capture_output=True)
            (rn, cn, pn), (ri, ci, pi) = res["none"], res["idle"]
            ratios.append(ri / rn)
            cpus.append(ci / cn)
            print(f"{label}: round {rd + 1}: none {rn:,.0f} rps {cn:.1f} µs/req p99 {pn:.2f} ms; "
                  f"{N} idle {ri:,.0f} rps {ci:.1f} µs/req p99 {pi:.2f} ms; ratio {ri / rn:.2f}", flush=True)
        ratios.sort()
        cpus.sort()
        print(f"{label}: with {N} idle connections against none: rps {ratios[0]:.2f}-{ratios[-1]:.2f}x, "
              f"median {ratios[len(ratios) // 2]:.2f}x; CPU per request median {cpus[len(cpus) // 2]:.2f}x",
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
            if LOAD:
                load(spec, rport, work, LOAD)
            else:
                measure(spec, rport, work)
    finally:
        r.terminate()


if __name__ == "__main__":
    main()
