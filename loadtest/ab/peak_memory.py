#!/usr/bin/env python3
"""Peak resident memory of one large request: each binary in turn, ROUNDS
times, alternating, on its own Redis seeded with a trigger of WORKFLOWS
workflows; one POST of a body just under 1 MiB; prints the resident memory
before, the peak (VmHWM, reset just before the request), and the time to
the answer.

    loadtest/ab/peak_memory.py /tmp/before,target/release/tether-ingress 2 300
"""
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import run  # noqa: E402

bins = sys.argv[1].split(",")
rounds, workflows = int(sys.argv[2]), int(sys.argv[3])
body = ('{"webhookId":"wh_big","blob":"' + "x" * ((1 << 20) - 100) + '"}').encode()


def kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


r, rport, work = run.seeded_redis(1)
try:
    subprocess.run(["redis-cli", "-p", str(rport), "SADD", "tether:triggers:o_0:wh_big",
                    *[f"wf_{i}" for i in range(workflows)]], capture_output=True, check=True)
    for _ in range(rounds):
        for b in bins:
            port = run.free_port()
            env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{port}",
                       TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{rport}", TETHER_INGRESS_LOG="error")
            p = subprocess.Popen([b, "--config", work + "/load.toml"], env=env)
            assert run.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=180)
            before = kib(p.pid, "VmRSS:")
            with open(f"/proc/{p.pid}/clear_refs", "w") as f:
                f.write("5")
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/webhook/workflow", data=body,
                                         headers={"Authorization": f"Bearer {run.LOAD_KEY}"})
            started = time.time()
            try:
                with urllib.request.urlopen(req, timeout=60) as res:
                    status = res.status
            except urllib.error.HTTPError as e:
                status = f"{e.code} {e.read().decode()}"
            took = time.time() - started
            peak = kib(p.pid, "VmHWM:")
            entries = workflows * len(body) / 1024
            print(f"{os.path.basename(b):>24} status {status} before {before:,} kB peak {peak:,} kB "
                  f"growth {(peak - before) / entries:.2f}x the {entries / 1024:,.0f} MiB of entries, "
                  f"answered in {took:.2f} s", flush=True)
            p.terminate()
            p.wait()
            subprocess.run(["redis-cli", "-p", str(rport), "DEL", "tether:jobs:workflow"], capture_output=True)
finally:
    r.terminate()
