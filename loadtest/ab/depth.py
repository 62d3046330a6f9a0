#!/usr/bin/env python3
"""Pipeline depth: for each binary, saturated wrk -t2 -c64 (WEBHOOK, PACE_MS),
how many XADDs Redis ran per read syscall (/proc/<redis>/io syscr) and per
write, beside requests/s and CPU per request. Two rounds, alternated.

    loadtest/ab/depth.py /tmp/old,target/release/tether-ingress [wh_one] [0]
"""
import sys, os, subprocess, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import run
def io(pid):
    d = dict(l.split(": ") for l in open(f"/proc/{pid}/io").read().split("\n") if l)
    return int(d["syscr"]), int(d["syscw"])
def xadds(port):
    out = subprocess.run(["redis-cli","-p",str(port),"INFO","commandstats"],capture_output=True,text=True).stdout
    for l in out.splitlines():
        if l.startswith("cmdstat_xadd:calls="): return int(l.split("=")[1].split(",")[0])
    return 0
bins = sys.argv[1].split(","); hook = sys.argv[2] if len(sys.argv)>2 else "wh_one"; pace = sys.argv[3] if len(sys.argv)>3 else "0"
r, rport, work = run.seeded_redis(100000)
try:
  for rd in range(2):
    for b in bins:
        port = run.free_port()
        env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{port}", TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{rport}", TETHER_INGRESS_LOG="error")
        p = subprocess.Popen([b, "--config", work + "/load.toml"], env=env)
        assert run.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)
        url=f"http://127.0.0.1:{port}"
        run.warm_up(url, 64, [run.LOAD_KEY, hook, pace])
        r0, w0 = io(r.pid); i0 = io(p.pid); x0 = xadds(rport)
        x = run.run_wrk(url, 6, 64, [run.LOAD_KEY, hook, pace], [p.pid, r.pid])
        r1, w1 = io(r.pid); i1 = io(p.pid); x1 = xadds(rport)
        n = x1 - x0; t=max(x["total"],1)
        print(f"{os.path.basename(b):>14} rps {x['rps']:>8,.0f} p99 {x['p99']:.2f} cpu/req {x['cpu'][p.pid]/t*1e6:5.1f} redis/job {x['cpu'][r.pid]/n*1e6:5.2f} xadd/redis-read {n/max(r1-r0,1):5.2f} xadd/redis-write {n/max(w1-w0,1):5.2f} ingress sysr/req {(i1[0]-i0[0])/t:4.2f} sysw/req {(i1[1]-i0[1])/t:4.2f}", flush=True)
        p.terminate(); p.wait()
        subprocess.run(["redis-cli", "-p", str(rport), "DEL", "tether:jobs:workflow"], capture_output=True)
finally:
  r.terminate()
