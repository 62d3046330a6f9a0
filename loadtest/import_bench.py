#!/usr/bin/env python3
"""Import speed on this machine: `tether-ingress import` of N keys and N
triggers into an empty Redis, the same file again (everything unchanged),
and `--prune` of a file of N keys against a Redis holding N + N/10 keys
(N/10 removed). Prints wall time, items/s and the importer's peak RSS.

    loadtest/import_bench.py [N]          (default 1,000,000)
"""
import os, re, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run

BIN = os.path.join(run.ROOT, "target", "release", "tether-ingress")


def write_file(path, keys, triggers, key_from=0):
    with open(path, "w") as f:
        for i in range(key_from, key_from + keys):
            f.write('{"type":"apiKey","key":"load_key_%d","userId":"u_%d","orgId":"o_%d"}\n' % (i, i, i % 10000))
        for i in range(triggers):
            f.write('{"type":"trigger","orgId":"o_%d","webhookId":"wh_%d","workflowIds":["wf_%d"]}\n' % (i % 10000, i, i))


def timed_import(rport, args):
    env = dict(os.environ, TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{rport}")
    started = time.time()
    out = subprocess.run(["/usr/bin/time", "-f", "%M", BIN, "import"] + args, env=env, capture_output=True, text=True)
    elapsed = time.time() - started
    assert out.returncode == 0, out.stderr
    rss_mb = int(out.stderr.strip().splitlines()[-1]) / 1024
    return elapsed, rss_mb, out.stdout


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "tether-ingress"], cwd=run.ROOT, check=True)
    work = tempfile.mkdtemp(prefix="tether-import-")
    both, keys_only, extra = (os.path.join(work, x) for x in ["both.jsonl", "keys.jsonl", "extra.jsonl"])
    write_file(both, n, n)
    write_file(keys_only, n, 0)
    write_file(extra, n // 10, 0, key_from=n)
    rport = run.free_port()
    r = subprocess.Popen(["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no", "--dir", work],
                         stdout=subprocess.DEVNULL)
    assert run.wait_redis(rport)
    try:
        rows = []
        t, rss, out = timed_import(rport, [both])
        rows.append((f"{n:,} keys + {n:,} triggers, empty Redis", t, 2 * n / t, rss, out))
        t, rss, out = timed_import(rport, [both])
        rows.append(("the same file again (all unchanged)", t, 2 * n / t, rss, out))
        timed_import(rport, [extra])
        t, rss, out = timed_import(rport, ["--prune", keys_only])
        rows.append((f"--prune, {n:,} keys in the file, {n + n // 10:,} in Redis", t, n / t, rss, out))
        for name, t, rate, rss, out in rows:
            print(f"{name:<55} {t:6.1f} s  {rate:>9,.0f} items/s  peak RSS {rss:5.0f} MB")
            for line in out.splitlines()[2:4]:
                print(f"    {line}")
    finally:
        r.terminate()
        for p in [both, keys_only, extra]:
            os.remove(p)


if __name__ == "__main__":
    main()
