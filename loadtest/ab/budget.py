#!/usr/bin/env python3
"""CPU budget per request, one match, saturated: wrk (getrusage of its
process), the ingress and Redis (/proc), for each binary, ROUNDS times
alternated.

    loadtest/ab/budget.py /tmp/old,target/release/tether-ingress,comparator 3

`comparator` (or `comparator:accept`, bare hyper) runs
examples/comparator.rs, as in paced_p99.py.
"""
import sys, os, subprocess, resource, re
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import run
bins = sys.argv[1].split(","); rounds=int(sys.argv[2])
r, rport, work = run.seeded_redis(100000)
try:
  for rd in range(rounds):
    for b in bins:
        port = run.free_port()
        if b.startswith("comparator"):
            comparator = os.path.join(run.ROOT, "target", "release", "examples", "comparator")
            p = subprocess.Popen([comparator, b.partition(":")[2] or "xadd", f"127.0.0.1:{port}",
                                  f"redis://127.0.0.1:{rport}"], stdout=subprocess.DEVNULL)
            assert run.wait_tcp(port)
        else:
            env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{port}", TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{rport}", TETHER_INGRESS_LOG="error")
            p = subprocess.Popen([b, "--config", work + "/load.toml"], env=env)
            assert run.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)
        url=f"http://127.0.0.1:{port}"
        run.warm_up(url, 64, [run.LOAD_KEY, "wh_one", "0"])
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        x = run.run_wrk(url, 8, 64, [run.LOAD_KEY, "wh_one", "0"], [p.pid, r.pid])
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        n = max(x["total"],1)
        wrk = (c1.ru_utime+c1.ru_stime-c0.ru_utime-c0.ru_stime)/n*1e6
        print(f"{os.path.basename(b):>18} rps {x['rps']:>8,.0f} wrk/req {wrk:5.1f} ingress/req {x['cpu'][p.pid]/n*1e6:5.1f} redis/req {x['cpu'][r.pid]/n*1e6:5.1f}", flush=True)
        p.terminate(); p.wait()
        subprocess.run(["redis-cli", "-p", str(rport), "DEL", "tether:jobs:workflow", "comparator:jobs"], capture_output=True)
finally:
  r.terminate()
