#!/usr/bin/env python3
"""The cost of redis.wait_replicas = 1: one primary with one replica (both
redis-server on this machine), the same release binary with wait_replicas 0
and 1 alternated ROUNDS times under wrk -t2 -c64 for SECONDS each, one match
per request (wh_one). Prints requests/s, p50/p99 and the ratio of the
medians.

    loadtest/ab/wait_replicas.py [ROUNDS] [SECONDS]     (default 3 rounds of 6 s)
"""
import os, subprocess, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import run

BIN = os.path.join(run.ROOT, "target", "release", "tether-ingress")


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "tether-ingress"], cwd=run.ROOT, check=True)
    primary, pport, work = run.seeded_redis(1000)
    rport = run.free_port()
    replica = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--replicaof", "127.0.0.1", str(pport)], stdout=subprocess.DEVNULL)
    results = {0: [], 1: []}
    try:
        assert run.wait_redis(rport)
        deadline = time.time() + 30
        while "master_link_status:up" not in subprocess.run(["redis-cli", "-p", str(rport), "INFO", "replication"],
                                                            capture_output=True, text=True).stdout:
            assert time.time() < deadline, "replica not in sync"
            time.sleep(0.1)
        for rd in range(rounds):
            for wait in (0, 1):
                port = run.free_port()
                env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{port}",
                           TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{pport}", TETHER_INGRESS_LOG="error",
                           TETHER_INGRESS_REDIS_WAIT_REPLICAS=str(wait))
                p = subprocess.Popen([BIN], env=env)
                url = f"http://127.0.0.1:{port}"
                assert run.wait_http(f"{url}/readyz", timeout=60)
                args = [run.LOAD_KEY, "wh_one"]
                run.warm_up(url, 64, args)
                x = run.run_wrk(url, seconds, 64, args, [p.pid, primary.pid])
                n = max(x["total"], 1)
                results[wait].append(x["rps"])
                print(f"round {rd + 1} wait_replicas={wait}: rps {x['rps']:>8,.0f}  p50 {x['p50']:5.2f} ms  "
                      f"p99 {x['p99']:5.2f} ms  cpu/req {x['cpu'][p.pid] / n * 1e6:5.1f} µs  "
                      f"primary/req {x['cpu'][primary.pid] / n * 1e6:4.1f} µs  non2xx {x['non2xx']}", flush=True)
                p.terminate()
                p.wait()
                subprocess.run(["redis-cli", "-p", str(pport), "DEL", "tether:jobs:workflow"], capture_output=True)
    finally:
        replica.terminate()
        primary.terminate()
    med = {w: sorted(v)[len(v) // 2] for w, v in results.items()}
    print(f"median rps: wait_replicas=0 {med[0]:,.0f}, wait_replicas=1 {med[1]:,.0f}: ratio {med[1] / med[0]:.2f}x")


if __name__ == "__main__":
    main()
