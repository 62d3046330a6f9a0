#!/usr/bin/env python3
"""A/B of one full resync during load: seeds one Redis once, then for each
binary (optionally `BIN|BUSY_PERCENT` to set redis.resync_busy_percent) runs
wrk 8 s without and 8 s with a resync (the replica's tracking connection is
killed 2 s in), ROUNDS times, alternating, and prints the p99 change.

    loadtest/ab/resync_p99.py "target/release/tether-ingress|20,target/release/tether-ingress|100" 3 1000000
"""
import sys, os, subprocess, time, threading
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import run
bins = sys.argv[1].split(","); rounds = int(sys.argv[2]); keys = int(sys.argv[3]); dur = 8
r, rport, work = run.seeded_redis(keys)
def kill():
    time.sleep(dur / 4)
    clients = subprocess.run(["redis-cli", "-p", str(rport), "CLIENT", "LIST"], capture_output=True, text=True).stdout
    for line in clients.splitlines():
        f = dict(x.split("=", 1) for x in line.split() if "=" in x)
        if "t" in f.get("flags", ""):
            subprocess.run(["redis-cli", "-p", str(rport), "CLIENT", "KILL", "ID", f["id"]], capture_output=True)
try:
  for rd in range(rounds):
    for b in bins:
        iport = run.free_port()
        env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{iport}", TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{rport}", TETHER_INGRESS_LOG="error")
        b, _, busy = b.partition("|")
        cfg = work + f"/load{busy}.toml"
        open(cfg, "w").write("[streams]\nmaxlen = 1000000\n" + (f"[redis]\nresync_busy_percent = {busy}\n" if busy else ""))
        p = subprocess.Popen([b, "--config", cfg], env=env, stdout=subprocess.DEVNULL)
        assert run.wait_http(f"http://127.0.0.1:{iport}/readyz", timeout=120)
        base = run.run_wrk(f"http://127.0.0.1:{iport}", dur, 64, [run.LOAD_KEY, "wh_one"], [p.pid, r.pid])
        t = threading.Thread(target=kill); t.start()
        during = run.run_wrk(f"http://127.0.0.1:{iport}", dur, 64, [run.LOAD_KEY, "wh_one"], [p.pid, r.pid])
        t.join()
        m = subprocess.run(["curl", "-s", f"http://127.0.0.1:{iport}/metrics"], capture_output=True, text=True).stdout
        rs = [l for l in m.splitlines() if l.startswith("tether_replica_resyncs_total")]
        print(f"{os.path.basename(b):>8} busy {busy or 20:>3} p99 {base['p99']:.2f} -> {during['p99']:.2f} ({(during['p99']/base['p99']-1)*100:+.0f}%) rps {base['rps']:,.0f} -> {during['rps']:,.0f} {rs}", flush=True)
        p.terminate(); p.wait()
        subprocess.run(["redis-cli", "-p", str(rport), "DEL", "tether:jobs:workflow"], capture_output=True)
finally:
  r.terminate()
