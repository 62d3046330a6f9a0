#!/usr/bin/env python3
"""BullMQ mode against its baselines, in one run, on one Redis:

  ingress-streams  the ingress, stream mode (one XADD per request)
  ingress-bullmq   the ingress, BullMQ mode (one script call per request)
  node-bullmq      loadtest/node-bullmq/server.js: Express + bullmq 6.7.0
                   queue.add doing the same work (key lookup, triggers, one
                   job per match), one Node process
  redis-ceiling    redis-benchmark driving the ingress's own BullMQ script
                   (EVALSHA, as the ingress calls it), pipelined, no HTTP in front: what Redis alone sustains for
                   the same writes

wrk -t2 -c64 with the 440-byte lead, one match per request (wh_one), SECONDS
per run after a 2 s warm-up, the three servers alternated ROUNDS times. Per
run: requests/s, jobs/s, p50/p99, CPU per job of the server and of Redis, and
Redis's own cost per script call (INFO commandstats usec_per_call: ours, and
BullMQ's EVALSHA on the Node path).

    loadtest/ab/bullmq.py [ROUNDS] [SECONDS]       (default 2 rounds of 8 s)

Needs wrk, redis-server, redis-benchmark, node/npm (installs the baseline's
packages with npm ci) and a release build (built here).
"""
import os, re, subprocess, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import run

ROOT = run.ROOT
NODE_DIR = os.path.join(ROOT, "loadtest", "node-bullmq")
BIN = os.path.join(ROOT, "target", "release", "tether-ingress")
QUEUE = "workflow-runs"


def add_script():
    text = open(os.path.join(ROOT, "src", "sink", "bullmq.rs")).read()
    return re.search(r'ADD_SCRIPT: &str = r#"(.*?)"#;', text, re.S).group(1)


def commandstats(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"], capture_output=True, text=True).stdout
    stats = {}
    for m in re.finditer(r"cmdstat_(\w+):calls=(\d+),usec=(\d+),usec_per_call=([\d.]+)", out):
        stats[m.group(1)] = (int(m.group(2)), float(m.group(4)))
    return stats


def reset(port):
    """Empties Redis of jobs (and everything else), seeds it again, and
    zeroes its statistics."""
    subprocess.run(["redis-cli", "-p", str(port), "FLUSHALL"], capture_output=True, check=True)
    run.seed(port, 1000)
    subprocess.run(["redis-cli", "-p", str(port), "CONFIG", "RESETSTAT"], capture_output=True, check=True)


def serve(kind, port, rport):
    url = f"http://127.0.0.1:{port}"
    if kind == "node-bullmq":
        env = dict(os.environ, PORT=str(port), REDIS_URL=f"redis://127.0.0.1:{rport}", QUEUE=QUEUE)
        p = subprocess.Popen(["node", "server.js"], cwd=NODE_DIR, env=env, stdout=subprocess.DEVNULL)
        assert run.wait_tcp(port, 30), "node server did not start"
    else:
        env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{port}",
                   TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{rport}", TETHER_INGRESS_LOG="error",
                   TETHER_INGRESS_SINK="bullmq" if kind == "ingress-bullmq" else "streams")
        p = subprocess.Popen([BIN], env=env)
        assert run.wait_http(f"{url}/readyz", timeout=60), "ingress not ready"
    return p, url


def ceiling(rport, n=400_000):
    """redis-benchmark: the ingress's BullMQ script with a one-match request's
    arguments, 8 connections pipelining 16 each; a fresh random job id per
    call. Returns (calls/s, Redis CPU µs per call, usec_per_call)."""
    lead = ('{"source":"zillow","receivedVia":"premier-agent","lead":{"id":"zl_8f2c61d0-5d2e-4b8e-9c1e-7a9b3f2d1e44",'
            '"name":"Alex Nguyen","email":"alex.nguyen@example.com","phone":"+14155551234","message":"Hi, I am interested in '
            '1234 Market St #5. Is it still available for a viewing this weekend?","budget":{"min":850000,"max":1100000.00,'
            '"currency":"USD"},"tags":["buyer","pre-approved","vip"],"score":0.8712}}')
    base = f"bull:{QUEUE}:"
    job = "r__rand_int__~o_0~u_0~wf_one"
    keys = [base + s for s in ["id", "meta", "events", "wait", "paused", "marker", "active"]] + [base + job]
    argv = ["webhook", "1796000000000", '{"attempts":0,"jobId":"', "3",
            ',"orgId":"o_0","userId":"u_0","webhookId":"wh_one","payload":', lead,
            ',"receivedAt":1796000000000,"requestId":"0123456789abcdef0123456789abcdef"}',
            job, '{"workflowId":"wf_one"']
    pid = int(subprocess.run(["redis-cli", "-p", str(rport), "INFO", "server"], capture_output=True, text=True)
              .stdout.split("process_id:")[1].split()[0])
    sha = subprocess.run(["redis-cli", "-p", str(rport), "SCRIPT", "LOAD", add_script()],
                         capture_output=True, text=True, check=True).stdout.strip()
    before = run.cpu_seconds(pid)
    out = subprocess.run(["redis-benchmark", "-p", str(rport), "-n", str(n), "-c", "8", "-P", "16", "-r", "100000000", "-q",
                          "EVALSHA", sha, str(len(keys))] + keys + argv, capture_output=True, text=True).stdout
    cpu = run.cpu_seconds(pid) - before
    rps = float(re.findall(r"([\d.]+) requests per second", out)[-1])
    stats = commandstats(rport).get("evalsha", (0, 0.0))
    return rps, cpu / n * 1e6, stats[1]


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "tether-ingress"], cwd=ROOT, check=True)
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True)
    r, rport, _ = run.seeded_redis(1000)
    results = {}
    try:
        for rd in range(rounds):
            for kind in ["ingress-streams", "ingress-bullmq", "node-bullmq"]:
                reset(rport)
                port = run.free_port()
                p, url = serve(kind, port, rport)
                args = [run.LOAD_KEY, "wh_one"]
                run.warm_up(url, 64, args)
                subprocess.run(["redis-cli", "-p", str(rport), "CONFIG", "RESETSTAT"], capture_output=True)
                x = run.run_wrk(url, seconds, 64, args, [p.pid, r.pid])
                jobs = max(x["total"] - x["non2xx"], 1)
                stats = commandstats(rport)
                script = stats.get("evalsha") or stats.get("eval") or (0, 0.0)
                row = dict(rps=x["rps"], jobs_s=jobs / seconds, p50=x["p50"], p99=x["p99"],
                           server=x["cpu"][p.pid] / jobs * 1e6, redis=x["cpu"][r.pid] / jobs * 1e6,
                           script_usec=script[1], xadd_usec=stats.get("xadd", (0, 0.0))[1], non2xx=x["non2xx"])
                results.setdefault(kind, []).append(row)
                print(f"round {rd + 1} {kind:>15}: rps {row['rps']:>8,.0f}  p50 {row['p50']:6.2f} ms  p99 {row['p99']:6.2f} ms  "
                      f"server µs/job {row['server']:6.1f}  redis µs/job {row['redis']:5.1f}  "
                      f"script µs/call {row['script_usec']:5.1f}  xadd µs/call {row['xadd_usec']:4.1f}  non2xx {row['non2xx']}",
                      flush=True)
                p.terminate()
                p.wait()
            reset(rport)
            rps, cpu, usec = ceiling(rport)
            results.setdefault("redis-ceiling", []).append(dict(rps=rps, jobs_s=rps, redis=cpu, script_usec=usec))
            print(f"round {rd + 1} {'redis-ceiling':>15}: calls/s {rps:>8,.0f}  redis µs/job {cpu:5.1f}  script µs/call {usec:5.1f}",
                  flush=True)
    finally:
        r.terminate()

    def med(kind, field):
        vals = sorted(x[field] for x in results[kind])
        return vals[len(vals) // 2]

    print("\nmedians")
    for kind in results:
        print(f"  {kind:>15}: jobs/s {med(kind, 'jobs_s'):>8,.0f}  redis µs/job {med(kind, 'redis'):5.1f}")
    b, n, s, c = (med(k, "jobs_s") for k in ["ingress-bullmq", "node-bullmq", "ingress-streams", "redis-ceiling"])
    print(f"  ingress-bullmq / node-bullmq     {b / n:5.2f}x  (target >= 5)")
    print(f"  ingress-bullmq / redis-ceiling   {b / c:5.2f}x  (target >= 0.8)")
    print(f"  ingress-bullmq / ingress-streams {b / s:5.2f}x")
    print(f"  Redis per script call: ours {med('ingress-bullmq', 'script_usec'):.1f} µs, "
          f"BullMQ's own (Node path) {med('node-bullmq', 'script_usec'):.1f} µs")


if __name__ == "__main__":
    main()
