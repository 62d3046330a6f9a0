#!/usr/bin/env python3
"""Redis Cluster against one node: the same release binary in stream mode,
one match per request (wh_one), alternately against a single redis-server
and against a Redis Cluster of three primaries (no replicas: every process
shares this machine's cores), ROUNDS times under wrk -t2 -c64 for SECONDS
each. Both hold the same 1,000 keys and triggers (the cluster's spread over
its primaries by slot). Prints requests/s, p50/p99, the CPU per request of
the ingress and of all the Redis processes together, and the ratio of the
medians.

    loadtest/ab/cluster.py [ROUNDS] [SECONDS]     (default 3 rounds of 6 s)
"""
import os, shutil, socket, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import run

BIN = os.path.join(run.ROOT, "target", "release", "tether-ingress")


def cluster_port():
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = run.free_port()
        if port >= 55535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                continue


def start_cluster():
    """Three cluster-enabled redis-servers joined by redis-cli --cluster
    create; returns (processes, ports, work directory)."""
    work = tempfile.mkdtemp(prefix="tether-ab-cluster-")
    ports = [cluster_port() for _ in range(3)]
    procs = []
    for p in ports:
        d = os.path.join(work, str(p))
        os.makedirs(d)
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no", "--dir", d],
            stdout=subprocess.DEVNULL))
    for p in ports:
        assert run.wait_redis(p), "a cluster node did not start"
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True)
    deadline = time.time() + 30
    while not all("cluster_state:ok" in subprocess.run(["redis-cli", "-p", str(p), "CLUSTER", "INFO"],
                                                      capture_output=True, text=True).stdout for p in ports):
        assert time.time() < deadline, "the cluster never became ready"
        time.sleep(0.1)
    return procs, ports, work


def seed_cluster(ports, n_keys):
    """run.seed's data, written to every primary through redis-cli -c (it
    follows each key to its node)."""
    import hashlib, json
    cmds = []
    for i in range(n_keys):
        digest = hashlib.sha256(f"load_key_{i}".encode()).hexdigest()
        record = json.dumps({"userId": f"u_{i}", "orgId": f"o_{i % 10000}"}, separators=(",", ":"))
        cmds.append(["SET", f"tether:apikey:{digest}", record])
        cmds.append(["SADD", f"tether:triggers:o_{i % 10000}:wh_{i}", f"wf_{i}"])
    cmds.append(["SADD", "tether:triggers:o_0:wh_one", "wf_one"])
    # Single quotes: the records' JSON holds double quotes and no single one.
    text = "\n".join(" ".join(f"'{a}'" for a in c) for c in cmds)
    subprocess.run(["redis-cli", "-c", "-p", str(ports[0])], input=text, text=True, capture_output=True, check=True)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "tether-ingress"], cwd=run.ROOT, check=True)
    single, sport, work = run.seeded_redis(1000)
    procs, cports, cwork = start_cluster()
    results = {"single": [], "cluster": []}
    try:
        seed_cluster(cports, 1000)
        targets = {
            "single": (f"redis://127.0.0.1:{sport}", [single.pid]),
            "cluster": ("redis-cluster://" + f"127.0.0.1:{cports[0]}?"
                        + "&".join(f"node=127.0.0.1:{p}" for p in cports[1:]), [p.pid for p in procs]),
        }
        for rd in range(rounds):
            for name, (redis_url, redis_pids) in targets.items():
                port = run.free_port()
                env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{port}",
                           TETHER_INGRESS_REDIS_URL=redis_url, TETHER_INGRESS_LOG="error")
                p = subprocess.Popen([BIN], env=env)
                try:
                    url = f"http://127.0.0.1:{port}"
                    assert run.wait_http(f"{url}/readyz", timeout=60), f"{name}: not ready"
                    args = [run.LOAD_KEY, "wh_one"]
                    run.warm_up(url, 64, args)
                    x = run.run_wrk(url, seconds, 64, args, [p.pid, *redis_pids])
                finally:
                    p.terminate()
                    p.wait()
                n = max(x["total"], 1)
                redis_cpu = sum(x["cpu"][pid] for pid in redis_pids)
                results[name].append(x["rps"])
                print(f"round {rd + 1} {name:>7}: rps {x['rps']:>8,.0f}  p50 {x['p50']:5.2f} ms  "
                      f"p99 {x['p99']:5.2f} ms  cpu/req {x['cpu'][p.pid] / n * 1e6:5.1f} µs  "
                      f"redis/req {redis_cpu / n * 1e6:4.1f} µs  non2xx {x['non2xx']}", flush=True)
                if name == "single":
                    subprocess.run(["redis-cli", "-p", str(sport), "DEL", "tether:jobs:workflow"], capture_output=True)
                else:
                    subprocess.run(["redis-cli", "-c", "-p", str(cports[0]), "DEL", "tether:jobs:workflow"],
                                   capture_output=True)
    finally:
        single.terminate()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(cwork, ignore_errors=True)
    med = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
    print(f"median rps: single {med['single']:,.0f}, cluster {med['cluster']:,.0f}: "
          f"ratio {med['cluster'] / med['single']:.2f}x")


if __name__ == "__main__":
    main()
