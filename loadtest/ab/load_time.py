#!/usr/bin/env python3
"""A/B of the replica's first load: seeds one Redis once (N keys, N triggers),
then starts each binary in turn, ROUNDS times, and prints the load time (the
`replica loaded` log line), RSS, the CPU the ingress and Redis spent, and
Redis's INFO commandstats for the load.

    loadtest/ab/load_time.py BIN_A,BIN_B ROUNDS KEYS
    e.g. loadtest/ab/load_time.py /tmp/old,target/release/tether-ingress 2 1000000
"""
import sys, os, subprocess, time, re
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import run
bins = sys.argv[1].split(","); rounds = int(sys.argv[2]); keys = int(sys.argv[3])
r, rport, work = run.seeded_redis(keys)
try:
  for rd in range(rounds):
    for b in bins:
        iport = run.free_port()
        env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{iport}", TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{rport}", TETHER_INGRESS_LOG="info", TETHER_INGRESS_LOG_FORMAT="json")
        subprocess.run(["redis-cli", "-p", str(rport), "CONFIG", "RESETSTAT"], capture_output=True)
        t0 = time.time(); rc0 = run.cpu_seconds(r.pid)
        p = subprocess.Popen([b], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in p.stdout:
            if "replica loaded" in line:
                m = re.search(r'"elapsed_ms":(\d+)', line)
                break
        ready = time.time() - t0; icpu = run.cpu_seconds(p.pid); rcpu = run.cpu_seconds(r.pid) - rc0
        time.sleep(0.5)
        rss = run.rss_mb(p.pid)
        print(f"{os.path.basename(b):>8} load {int(m.group(1))/1000 if m else -1:.2f} s (process {ready:.2f} s) rss {rss:.0f} MB ingress cpu {icpu:.1f} s redis cpu {rcpu:.1f} s", flush=True)
        print(subprocess.run(["redis-cli", "-p", str(rport), "INFO", "commandstats"], capture_output=True, text=True).stdout)
        p.terminate(); p.wait()
finally:
  r.terminate()
