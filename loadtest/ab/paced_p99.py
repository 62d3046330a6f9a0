#!/usr/bin/env python3
"""A/B of latency below saturation: one Redis seeded with KEYS keys and
triggers, then each binary in turn (an ingress build, `comparator` for
examples/comparator.rs xadd, or `comparator:accept` for bare hyper) driven by wrk -t2 -c64 at PACE_MS per
connection for SECONDS, ROUNDS times, alternating. Prints p50,
p99, requests/s and CPU per request of the server and of Redis.

    loadtest/ab/paced_p99.py target/release/tether-ingress,comparator 3 8 1000000 2 [WEBHOOK]

WEBHOOK is wh_one (1 match, the default), wh_ten (10) or any other (none);
PACE_MS 0 saturates.

A binary written `BIN|NAME=VALUE` gets that environment variable (e.g.
`target/release/tether-ingress|TETHER_INGRESS_SINK=bullmq`); one written
`BIN|section.key=VALUE` gets that setting in its configuration file (e.g.
`target/release/tether-ingress|server.serving_threads=1`).
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import run  # noqa: E402

bins = sys.argv[1].split(",")
rounds, dur, keys, pace = (int(a) for a in sys.argv[2:6])
webhook = sys.argv[6] if len(sys.argv) > 6 else "wh_one"
comparator = os.path.join(run.ROOT, "target", "release", "examples", "comparator")
CLEAR = """
redis.call('DEL', 'tether:jobs:workflow', 'comparator:jobs')
for _, k in ipairs(redis.call('KEYS', 'bull:*')) do redis.call('UNLINK', k) end
"""
r, rport, work = run.seeded_redis(keys)
try:
    for _ in range(rounds):
        for spec in bins:
            b, *envs = spec.split("|")
            port = run.free_port()
            extra = dict(e.split("=", 1) for e in envs if "." not in e.split("=", 1)[0])
            settings = [e.split("=", 1) for e in envs if "." in e.split("=", 1)[0]]
            config = work + "/load.toml"
            if settings:
                config = work + "/load-extra.toml"
                # Dotted keys before the base file's tables: any number of
                # keys, of one section or several.
                with open(work + "/load.toml") as base, open(config, "w") as f:
                    f.write("".join(f"{key} = {value}\n" for key, value in settings))
                    f.write(base.read())
            if b.startswith("comparator"):
                mode = b.partition(":")[2] or "xadd"
                p = subprocess.Popen([comparator, mode, f"127.0.0.1:{port}", f"redis://127.0.0.1:{rport}"],
                                     env=dict(os.environ, **extra), stdout=subprocess.DEVNULL)
                assert run.wait_tcp(port)
            else:
                env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{port}",
                           TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{rport}", TETHER_INGRESS_LOG="error", **extra)
                p = subprocess.Popen([b, "--config", config], env=env)
                assert run.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=180)
            url = f"http://127.0.0.1:{port}"
            run.warm_up(url, 64, [run.LOAD_KEY, webhook, str(pace)])
            x = run.run_wrk(url, dur, 64, [run.LOAD_KEY, webhook, str(pace)], [p.pid, r.pid])
            n = max(x["total"], 1)
            name = os.path.basename(b) + "".join(f" {e}" for e in envs)
            print(f"{name:>40} rps {x['rps']:>8,.0f} p50 {x['p50']:.2f} p99 {x['p99']:.2f} "
                  f"cpu/req {x['cpu'][p.pid] / n * 1e6:5.1f} redis/req {x['cpu'][r.pid] / n * 1e6:5.1f} "
                  f"non2xx {x['non2xx']}", flush=True)
            p.terminate()
            p.wait()
            # Every binary starts on the same Redis: without the streams and
            # the BullMQ queues written so far, or each run would meet a
            # bigger Redis than the one before it.
            subprocess.run(["redis-cli", "-p", str(rport), "EVAL", CLEAR, "0"], capture_output=True)
finally:
    r.terminate()
