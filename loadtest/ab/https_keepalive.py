#!/usr/bin/env python3
"""A/B of two ingress builds serving HTTPS (keep-alive, one match per
request): one Redis seeded with 10,000 keys, a self-signed certificate made
here with openssl, each build started in turn, wrk -t2 -c64 over TLS for 5 s,
ROUNDS rounds with the order swapped every round. Prints requests/s, the
ingress's CPU per request and p99 per run, then the per-round ratios B/A.

    loadtest/ab/https_keepalive.py /tmp/old,target/release/tether-ingress 7
"""
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import run  # noqa: E402

bins = sys.argv[1].split(",")
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
r, rport, work = run.seeded_redis(10000)
cert, key = os.path.join(work, "ab.crt"), os.path.join(work, "ab.key")
subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
res = {b: [] for b in bins}
try:
    for rd in range(rounds):
        for b in (bins if rd % 2 == 0 else bins[::-1]):
            port = run.free_port()
            env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{port}",
                       TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{rport}", TETHER_INGRESS_LOG="error",
                       TETHER_INGRESS_TLS_CERT_FILE=cert, TETHER_INGRESS_TLS_KEY_FILE=key)
            p = subprocess.Popen([b, "--config", os.path.join(work, "load.toml")], env=env)
            assert run.wait_tcp(port, 60)
            time.sleep(1.5)
            url = f"https://127.0.0.1:{port}"
            run.warm_up(url, 64, [run.LOAD_KEY, "wh_one"])
            x = run.run_wrk(url, 5, 64, [run.LOAD_KEY, "wh_one"], [p.pid])
            n = max(x["total"], 1)
            res[b].append(x["rps"])
            print(f"{os.path.basename(b):>16} rps {x['rps']:>8,.0f} cpu/req {x['cpu'][p.pid] / n * 1e6:5.1f} µs "
                  f"p99 {x['p99']:.2f} ms non2xx {x['non2xx']}", flush=True)
            p.terminate()
            p.wait()
            subprocess.run(["redis-cli", "-p", str(rport), "DEL", "tether:jobs:workflow"], capture_output=True)
    if len(bins) == 2:
        a, b = bins
        ratios = sorted(y / x for x, y in zip(res[a], res[b]))
        print("ratios", " ".join(f"{v:.2f}" for v in ratios), f"median {statistics.median(ratios):.2f}")
finally:
    r.terminate()
