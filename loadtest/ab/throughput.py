#!/usr/bin/env python3
"""A/B of end-to-end throughput and CPU per request: one Redis seeded with
100,000 keys, each binary started in turn, wrk -t2 -c64 for SECONDS per
webhook (wh_one = 1 match, wh_ten = 10), ROUNDS times, alternating.

    loadtest/ab/throughput.py /tmp/old,target/release/tether-ingress 3 6 [wh_one,wh_ten]
"""
import sys, os, subprocess, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import run
bins = sys.argv[1].split(","); rounds = int(sys.argv[2]); dur = int(sys.argv[3]); hooks = sys.argv[4].split(",") if len(sys.argv) > 4 else ["wh_one", "wh_ten"]
r, rport, work = run.seeded_redis(100000)
res = {}
try:
  for rd in range(rounds):
    for b in bins:
        iport = run.free_port()
        env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{iport}", TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{rport}", TETHER_INGRESS_LOG="error")
        p = subprocess.Popen([b, "--config", work + "/load.toml"], env=env)
        assert run.wait_http(f"http://127.0.0.1:{iport}/readyz", timeout=120)
        for wh in hooks:
            x = run.run_wrk(f"http://127.0.0.1:{iport}", dur, 64, [run.LOAD_KEY, wh], [p.pid, r.pid])
            n = max(x["total"], 1)
            line = f"{os.path.basename(b):>8} {wh:>7} rps {x['rps']:>9,.0f} p50 {x['p50']:.2f} p99 {x['p99']:.2f} cpu/req {x['cpu'][p.pid]/n*1e6:5.1f} redis/req {x['cpu'][r.pid]/n*1e6:5.1f} non2xx {x['non2xx']}"
            print(line, flush=True)
            subprocess.run(["redis-cli", "-p", str(rport), "DEL", "tether:jobs:workflow"], capture_output=True)
        p.terminate(); p.wait()
finally:
  r.terminate()
