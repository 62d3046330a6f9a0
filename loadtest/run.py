#!/usr/bin/env python3
"""One-command load harness for tether-ingress on this machine.

Starts its own redis-server, seeds N API keys and N triggers (across 10,000
orgs), builds release, starts the ingress, and drives it with wrk (or k6) at the
440-byte lead body. In the same run it measures the comparators that give the
numbers meaning:

  bare-hyper     a hyper server that reads the body and answers 202 (ceiling)
  hyper+xadd     the same plus one awaited XADD through fred of the same
                 seven-field entry the ingress writes (the obvious design);
                 also with a one-field entry, as earlier runs measured it
  redis-bench    redis-benchmark XADD of the same entry, pipelined (the Redis
                 ceiling); also with one 440-byte field

and prints one table: requests/s, jobs/s, p50/p99/p99.9, CPU per request of the
ingress and of Redis, and a check that the stream holds exactly
(202 responses x matches) new entries, where 202 responses are counted by the
ingress itself (wrk does not count answers cut off at the end of a run).

    loadtest/run.py [--keys 100000] [--duration 10] [--connections 64] [--k6] [--resync] [--pace-ms 2,4]

With --pace-ms, the ingress and hyper+xadd are also driven below saturation:
each connection waits that many milliseconds after an answer before its next
request, so the p99 is the server's own latency rather than the queue a
saturating closed loop builds on two cores shared with wrk and Redis.

Everything listens on 127.0.0.1 on free ports and is stopped at the end.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUA = os.path.join(ROOT, "loadtest", "wrk", "workflow.lua")
CLK = os.sysconf("SC_CLK_TCK")
LOAD_KEY = "load_key_0"
# The entry the ingress writes for the load body (workflowId, orgId, userId,
# webhookId, payload = the body without webhookId, receivedAt, requestId).
ENTRY_FIELDS = ["workflowId", "wf_ten_0", "orgId", "o_0", "userId", "u_0", "webhookId", "wh_ten",
                "payload", "x" * 410, "receivedAt", "1795425600000", "requestId", "0193f1d2-7c3a-7b6e-9a51-3f0c2d4e5a6b"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except OSError:
        return 0.0


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def resp(*args):
    out = f"*{len(args)}\r\n"
    for a in args:
        b = str(a)
        out += f"${len(b.encode())}\r\n{b}\r\n"
    return out


def seed(redis_port, n_keys):
    """Writes n keys and n triggers through redis-cli --pipe; returns seconds."""
    started = time.time()
    proc = subprocess.Popen(
        ["redis-cli", "-p", str(redis_port), "--pipe"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    buf = []
    for i in range(n_keys):
        digest = hashlib.sha256(f"load_key_{i}".encode()).hexdigest()
        record = json.dumps({"userId": f"u_{i}", "orgId": f"o_{i % 10000}"}, separators=(",", ":"))
        buf.append(resp("SET", f"tether:apikey:{digest}", record))
        buf.append(resp("SADD", f"tether:triggers:o_{i % 10000}:wh_{i}", f"wf_{i}"))
        if len(buf) >= 20000:
            proc.stdin.write("".join(buf).encode())
            buf = []
    buf.append(resp("SADD", "tether:triggers:o_0:wh_one", "wf_one"))
    buf.append(resp("SADD", "tether:triggers:o_0:wh_ten", *[f"wf_ten_{j}" for j in range(10)]))
    # For loadtest/mixed.js: an outreach configuration and properties of o_0 (the load key's org).
    buf.append(resp("SET", "tether:outreach:config:cfg_load",
                    '{"userId":"u_0","orgId":"o_0","active":true,"processId":"p_load","promptId":null}'))
    buf.append(resp("HSET", "tether:org:o_0:properties", "jobTitle", "application", "lastMessage", "conversation"))
    proc.stdin.write("".join(buf).encode())
    proc.stdin.close()
    proc.wait()
    return time.time() - started


def wait_http(url, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except Exception:
            pass
        time.sleep(0.05)
    return False


def metric(port, name, labels):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def metric_plain(port, name):
    """A metric without labels (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def xlen(redis_port, stream):
    out = subprocess.run(["redis-cli", "-p", str(redis_port), "XLEN", stream], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def parse_latency(text, pct):
    m = re.search(rf"^\s+{re.escape(pct)}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def run_wrk(url, duration, conns, args, pids):
    before = {p: cpu_seconds(p) for p in pids}
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--latency", "-s", LUA, url, "--"] + args
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    cpu = {p: cpu_seconds(p) - before[p] for p in pids}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "total": total,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "p50": parse_latency(out, "50"),
        "p99": parse_latency(out, "99"),
        "p999": parse_latency(out, "99.900") or parse_latency(out, "99.9"),
        "cpu": cpu,
        "raw": out,
    }


def warm_up(url, conns, args):
    """Two unmeasured seconds first: the first seconds after a start (or after
    a million keys were loaded) are slower than the rest, whoever runs first."""
    subprocess.run(["wrk", "-t2", f"-c{conns}", "-d2s", "-s", LUA, url, "--"] + args, capture_output=True)


def run_k6(url, duration, conns, key, webhook):
    script = os.path.join(ROOT, "loadtest", "workflow.js")
    out = subprocess.run(
        ["k6", "run", "--quiet", "-e", f"BASE_URL={url}", "-e", f"API_KEY={key}", "-e", f"WEBHOOK_ID={webhook}",
         "-e", f"VUS={conns}", "-e", f"DURATION={duration}s", "--summary-trend-stats", "p(50),p(99),p(99.9)", script],
        capture_output=True, text=True,
    )
    return out.stdout + out.stderr


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, cmd, env=None, **kw):
        p = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=100_000, help="API keys and triggers to seed (default 100000)")
    ap.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--k6", action="store_true", help="also drive the 1-match scenario with k6")
    ap.add_argument("--resync", action="store_true", help="also measure p99 with a full resync every 2 s")
    ap.add_argument("--pace-ms", default="", help="comma-separated per-connection pauses (ms) for paced 1-match runs")
    opts = ap.parse_args()
    paces = [int(p) for p in opts.pace_ms.split(",") if p.strip()]
    for tool in ["wrk", "redis-server", "redis-cli", "redis-benchmark", "cargo"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (apt-get install wrk redis-server; rustup for cargo)")

    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "tether-ingress", "--example", "comparator"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "tether-ingress")
    comparator = os.path.join(ROOT, "target", "release", "examples", "comparator")
    procs = Procs()
    work = tempfile.mkdtemp(prefix="tether-load-")
    rows, checks, notes = [], [], []
    try:
        rport = free_port()
        redis = procs.start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", work])
        assert wait_redis(rport)
        seconds = seed(rport, opts.keys)
        notes.append(f"seeded {opts.keys:,} keys and {opts.keys:,} triggers across 10,000 orgs in {seconds:.1f} s")

        # A maxlen above what a run writes, so the stream check is not blurred by trimming.
        base_cfg = os.path.join(work, "load.toml")
        with open(base_cfg, "w") as f:
            f.write("[streams]\nmaxlen = 1000000000\n")

        def start_ingress(extra_env=None):
            port = free_port()
            env = {"TETHER_INGRESS_LISTEN": f"127.0.0.1:{port}", "TETHER_INGRESS_REDIS_URL": f"redis://127.0.0.1:{rport}",
                   "TETHER_INGRESS_LOG": "error", **(extra_env or {})}
            started = time.time()
            p = procs.start([binary, "--config", base_cfg], env=env)
            assert wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120), "ingress not ready"
            return p, port, time.time() - started

        ingress, iport, load_s = start_ingress()
        notes.append(f"ingress ready (caches loaded) in {load_s:.2f} s; RSS {rss_mb(ingress.pid):.0f} MB")

        for label, webhook, matches in [("ingress 1 match", "wh_one", 1), ("ingress 10 matches", "wh_ten", 10)]:
            warm_up(f"http://127.0.0.1:{iport}", opts.connections, [LOAD_KEY, webhook])
            time.sleep(0.2)  # let the warm-up's last writes land before counting
            x0 = xlen(rport, "tether:jobs:workflow")
            a0 = metric(iport, "tether_http_requests_total", {"route": "workflow", "status": "202"})
            r = run_wrk(f"http://127.0.0.1:{iport}", opts.duration, opts.connections, [LOAD_KEY, webhook], [ingress.pid, redis.pid])
            time.sleep(0.2)  # let the last acknowledged writes land in XLEN
            acked = metric(iport, "tether_http_requests_total", {"route": "workflow", "status": "202"}) - a0
            written = xlen(rport, "tether:jobs:workflow") - x0
            checks.append((label, int(acked), matches, written))
            rows.append((label, r, r["rps"] * matches, r["cpu"][ingress.pid], r["cpu"][redis.pid]))
            subprocess.run(["redis-cli", "-p", str(rport), "DEL", "tether:jobs:workflow"], capture_output=True)

        for pace in paces:
            label = f"ingress 1, {pace} ms pace"
            warm_up(f"http://127.0.0.1:{iport}", opts.connections, [LOAD_KEY, "wh_one", str(pace)])
            r = run_wrk(f"http://127.0.0.1:{iport}", opts.duration, opts.connections, [LOAD_KEY, "wh_one", str(pace)], [ingress.pid, redis.pid])
            rows.append((label, r, r["rps"], r["cpu"][ingress.pid], r["cpu"][redis.pid]))
            subprocess.run(["redis-cli", "-p", str(rport), "DEL", "tether:jobs:workflow"], capture_output=True)

        if opts.k6 and shutil.which("k6"):
            notes.append("k6 (1 match):\n" + run_k6(f"http://127.0.0.1:{iport}", opts.duration, opts.connections, LOAD_KEY, "wh_one"))
        procs.stop(ingress)

        if opts.resync:
            # One full resync in the middle of a run, against a run without:
            # killing the replica's tracking connection makes it reconnect and
            # reload everything.
            ingress, iport, _ = start_ingress()
            load_s_metric = metric_plain(iport, "tether_replica_resync_duration_seconds_sum")
            warm_up(f"http://127.0.0.1:{iport}", opts.connections, [LOAD_KEY, "wh_one"])
            base = run_wrk(f"http://127.0.0.1:{iport}", opts.duration, opts.connections, [LOAD_KEY, "wh_one"], [ingress.pid, redis.pid])

            def kill_replica_connection():
                time.sleep(opts.duration / 4)
                clients = subprocess.run(["redis-cli", "-p", str(rport), "CLIENT", "LIST"], capture_output=True, text=True).stdout
                for line in clients.splitlines():
                    fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                    if "t" in fields.get("flags", ""):
                        subprocess.run(["redis-cli", "-p", str(rport), "CLIENT", "KILL", "ID", fields["id"]], capture_output=True)

            import threading
            killer = threading.Thread(target=kill_replica_connection)
            killer.start()
            during = run_wrk(f"http://127.0.0.1:{iport}", opts.duration, opts.connections, [LOAD_KEY, "wh_one"], [ingress.pid, redis.pid])
            killer.join()
            notes.append(f"p99 without / with one full resync during the run: {base['p99']:.2f} ms / {during['p99']:.2f} ms "
                         f"({(during['p99'] / base['p99'] - 1) * 100:+.0f}%, target < +20%); non-2xx during it: {during['non2xx']}")
            # How long that (paced) resync took, once it finished.
            deadline = time.time() + 600
            while metric_plain(iport, "tether_replica_resyncs_total") < 2 and time.time() < deadline:
                time.sleep(1)
            took = metric_plain(iport, "tether_replica_resync_duration_seconds_sum") - load_s_metric
            notes.append(f"that resync (paced, redis.resync_busy_percent) finished in {took:.1f} s")
            procs.stop(ingress)

        # The comparators write the same seven-field entry the ingress writes
        # (same Redis work per job); the one-field variants of earlier runs
        # are kept for reference.
        for mode, label, env in [("accept", "bare-hyper", None), ("xadd", "hyper+xadd", None),
                                 ("xadd", "hyper+xadd 1 field", {"COMPARATOR_ONE_FIELD": "1"})]:
            port = free_port()
            args = [comparator, mode, f"127.0.0.1:{port}"] + ([f"redis://127.0.0.1:{rport}"] if mode == "xadd" else [])
            p = procs.start(args, env=env)
            wait_tcp(port)
            warm_up(f"http://127.0.0.1:{port}", opts.connections, [LOAD_KEY, "wh_one"])
            r = run_wrk(f"http://127.0.0.1:{port}", opts.duration, opts.connections, [LOAD_KEY, "wh_one"], [p.pid, redis.pid])
            rows.append((label, r, r["rps"] if mode == "xadd" else 0, r["cpu"][p.pid], r["cpu"][redis.pid]))
            if mode == "xadd" and not env:
                for pace in paces:
                    warm_up(f"http://127.0.0.1:{port}", opts.connections, [LOAD_KEY, "wh_one", str(pace)])
                    r = run_wrk(f"http://127.0.0.1:{port}", opts.duration, opts.connections, [LOAD_KEY, "wh_one", str(pace)], [p.pid, redis.pid])
                    rows.append((f"hyper+xadd, {pace} ms pace", r, r["rps"], r["cpu"][p.pid], r["cpu"][redis.pid]))
            procs.stop(p)

        def redis_bench(fields):
            before = cpu_seconds(redis.pid)
            out = subprocess.run(["redis-benchmark", "-p", str(rport), "-q", "-n", "1000000", "-c", str(opts.connections), "-P", "32",
                                  "XADD", "bench:stream", "MAXLEN", "~", "1000000", "*", *fields], capture_output=True, text=True).stdout
            subprocess.run(["redis-cli", "-p", str(rport), "DEL", "bench:stream"], capture_output=True)
            m = re.search(r"([\d.]+) requests per second", out)
            return (float(m.group(1)) if m else 0.0), cpu_seconds(redis.pid) - before

        bench_rate, cpu = redis_bench(ENTRY_FIELDS)
        notes.append(f"redis-benchmark XADD -P 32 -c {opts.connections}, the ingress's seven-field entry: {bench_rate:,.0f} XADD/s (Redis CPU {cpu:.1f} s)")
        one_field_rate, cpu = redis_bench(["payload", "x" * 440])
        notes.append(f"redis-benchmark XADD -P 32 -c {opts.connections}, one 440-byte field (earlier runs' comparator): {one_field_rate:,.0f} XADD/s (Redis CPU {cpu:.1f} s)")
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    def ms(v):
        return f"{v:.2f}" if v is not None else "-"

    print(f"\nwrk -t2 -c{opts.connections} -d{opts.duration}s, 440-byte lead body, {opts.keys:,} keys and triggers loaded\n")
    print(f"{'scenario':<24}{'requests/s':>12}{'jobs/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'non-2xx':>9}{'server CPU/req':>16}{'redis CPU/req':>15}")
    for label, r, jobs, cpu_srv, cpu_redis in rows:
        n = max(r["total"], 1)
        print(f"{label:<24}{r['rps']:>12,.0f}{jobs:>12,.0f}{ms(r['p50']):>9}{ms(r['p99']):>9}{ms(r['p999']):>10}{r['non2xx']:>9}"
              f"{cpu_srv / n * 1e6:>13.1f} us{cpu_redis / n * 1e6:>12.1f} us")
    print()
    byname = {label: r for label, r, *_ in rows}
    one, ten = byname["ingress 1 match"]["rps"], byname["ingress 10 matches"]["rps"] * 10
    print(f"1 match vs hyper+xadd: {one / byname['hyper+xadd']['rps']:.2f}x   (target >= 1.0; "
          f"{one / byname['hyper+xadd 1 field']['rps']:.2f}x against the one-field variant)")
    print(f"1 match vs bare hyper: {one / byname['bare-hyper']['rps']:.2f}x   (target >= 0.75)")
    if bench_rate:
        print(f"10 matches, jobs/s vs redis-benchmark pipelined XADD: {ten / bench_rate:.2f}x   (target >= 0.5; "
              f"{ten / one_field_rate:.2f}x against one-field entries)")
    print(f"p99 at {opts.connections} connections, 1 match: {ms(byname['ingress 1 match']['p99'])} ms   (target < 2 ms; "
          f"bare hyper's own at saturation: {ms(byname['bare-hyper']['p99'])} ms)")
    for pace in paces:
        i, c = byname[f"ingress 1, {pace} ms pace"], byname[f"hyper+xadd, {pace} ms pace"]
        print(f"p99 at {opts.connections} connections, 1 match, {pace} ms pace: {ms(i['p99'])} ms at {i['rps']:,.0f} requests/s "
              f"(hyper+xadd: {ms(c['p99'])} ms at {c['rps']:,.0f} requests/s)")
    # Every acknowledged job must be written. Entries beyond that can only come
    # from requests the client hung up on at the end of the run (at most one per
    # connection): written, never answered, so a real caller would retry them.
    def stream_ok(acked, matches, written):
        return acked * matches <= written <= (acked + opts.connections) * matches

    for label, acked, matches, written in checks:
        extra = written - acked * matches
        status = "OK" if stream_ok(acked, matches, written) else "MISMATCH"
        print(f"stream check, {label}: {acked:,} x {matches} acknowledged, {written:,} written "
              f"({extra:+,} from requests cut off unanswered at the end): {status}")
    for n in notes:
        print(n)
    if not all(stream_ok(a, m, w) for _, a, m, w in checks):
        sys.exit(1)


def seeded_redis(n_keys):
    """The A/B scripts' own redis-server on a free port, seeded with n_keys
    keys and triggers, and a work directory holding the ingress's load.toml.
    Returns (process, port, work directory)."""
    work = tempfile.mkdtemp(prefix="tether-ab-")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL)
    assert wait_redis(port), "redis-server did not start"
    seed(port, n_keys)
    with open(os.path.join(work, "load.toml"), "w") as f:
        f.write("[streams]\nmaxlen = 1000000\n")
    return proc, port, work


def wait_redis(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() == "PONG":
            return True
        time.sleep(0.05)
    return False


def wait_tcp(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


if __name__ == "__main__":
    main()
