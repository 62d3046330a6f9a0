#!/usr/bin/env python3
"""A frozen Redis against a killed one, with a spool, under load: 8 senders
(keep-alive, one match each), Redis frozen with SIGSTOP for SECONDS, then
killed for SECONDS, each after a calm period. Prints, per phase, the 202s
answered while Redis was out, the slowest request, and (for the freeze, once
the spool drained) how many accepted requests are in the stream twice.

    loadtest/ab/frozen.py [BIN] [SECONDS]     (default target/release/tether-ingress, 3)

The ingress runs with its defaults (command deadline 2 s,
redis.stall_after_ms 250) and a spool in a temporary directory; with
TETHER_INGRESS_SINK=bullmq in the environment, in BullMQ mode (duplicates are
then the adds BullMQ refused as such). With NO_SPOOL=1, without a spool:
the answers are then 503s, and "slowest" is how long the slowest waited.
"""
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import run  # noqa: E402

BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(run.ROOT, "target", "release", "tether-ingress")
OUT = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
BODY = b'{"webhookId":"wh_one","lead":{"name":"Alex Nguyen","email":"alex@example.com"}}'


def sender(port, stop, log):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    n = 0
    while not stop.is_set():
        rid = f"frozen-{threading.get_ident()}-{n}"
        n += 1
        started = time.time()
        try:
            conn.request("POST", "/api/webhook/workflow", BODY,
                         {"Authorization": f"Bearer {run.LOAD_KEY}", "Content-Type": "application/json",
                          "X-Request-Id": rid})
            res = conn.getresponse()
            res.read()
            log.append((started, time.time(), res.status, rid))
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)


def window(log, start, end):
    done = [x for x in log if start <= x[1] < end]
    ok = sum(1 for x in done if x[2] == 202)
    slowest = max((x[1] - x[0] for x in log if x[0] < end and x[1] >= start), default=0.0)
    return ok, len(done) - ok, slowest


def duplicates(rport):
    """Request ids that appear in more than one entry of the workflow stream;
    in BullMQ mode, the adds BullMQ refused as duplicates (its events)."""
    if os.environ.get("TETHER_INGRESS_SINK") == "bullmq":
        out = subprocess.run(["redis-cli", "-p", str(rport), "--raw", "XRANGE", "bull:workflow-runs:events", "-", "+"],
                             capture_output=True, text=True).stdout.splitlines()
        return sum(1 for line in out if line == "duplicated")
    out = subprocess.run(["redis-cli", "-p", str(rport), "--raw", "XRANGE", "tether:jobs:workflow", "-", "+"],
                         capture_output=True, text=True).stdout.splitlines()
    seen = {}
    for i, line in enumerate(out[:-1]):
        if line == "requestId":
            seen[out[i + 1]] = seen.get(out[i + 1], 0) + 1
    return sum(1 for n in seen.values() if n > 1)


def main():
    r, rport, work = run.seeded_redis(1000)
    spool = tempfile.mkdtemp(prefix="tether-frozen-spool-")
    port = run.free_port()
    env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{port}",
               TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{rport}", TETHER_INGRESS_LOG="warn",
               **({} if os.environ.get("NO_SPOOL") == "1" else {"TETHER_INGRESS_SPOOL_DIR": spool}))
    p = subprocess.Popen([BIN], env=env)
    try:
        assert run.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60), "ingress not ready"
        stop, log = threading.Event(), []
        threads = [threading.Thread(target=sender, args=(port, stop, log)) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(2)
        frozen_at = time.time()
        os.kill(r.pid, signal.SIGSTOP)
        time.sleep(OUT)
        os.kill(r.pid, signal.SIGCONT)
        woke_at = time.time()
        time.sleep(3)
        dupes = duplicates(rport)
        killed_at = time.time()
        r.kill()
        r.wait()
        time.sleep(OUT)
        back_at = time.time()
        stop.set()
        for t in threads:
            t.join()
        frozen = window(log, frozen_at, woke_at)
        killed = window(log, killed_at, back_at)
        print(f"frozen {OUT:.0f} s: {frozen[0]} answered 202, {frozen[1]} other, slowest {frozen[2] * 1000:.0f} ms")
        print(f"killed {OUT:.0f} s: {killed[0]} answered 202, {killed[1]} other, slowest {killed[2] * 1000:.0f} ms")
        print(f"202s frozen / killed: {frozen[0] / max(killed[0], 1):.2f}x")
        print(f"request ids in the stream twice after the freeze (spool drained): {dupes}")
    finally:
        p.terminate()
        p.wait()
        if r.poll() is None:
            r.kill()


if __name__ == "__main__":
    main()
