#!/usr/bin/env python3
"""HTTPS on the listener, measured in one run against its baselines:

  1. keep-alive, one match per request: the ingress over TLS against the same
     ingress in plaintext, and against nginx terminating TLS in front of the
     plaintext ingress (proxy_pass, keep-alive pool: an extra hop);
  2. new TLS connections per second (a full handshake per request, no
     resumption: `Connection: close`): the ingress's /healthz against nginx
     `return 202`, both over TLS with the same certificate.

One Redis seeded with 10,000 keys; certificates made here with openssl;
ROUNDS alternations of SECONDS each, wrk -t2 -c64. Needs wrk and nginx.

    loadtest/ab/https.py [--bin target/release/tether-ingress] [--rounds 3] [--seconds 6]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import run  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def openssl(work, *args):
    subprocess.run(["openssl", *args], cwd=work, check=True, capture_output=True)


def certificates(work):
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(work, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=bench CA")
    with open(os.path.join(work, "leaf.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(work, "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    openssl(work, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "leaf.ext")


def wrk(url, seconds, extra):
    """wrk -t2 -c64 on url; extra is either wrk options or ["--", KEY, WEBHOOK]
    for the webhook script. Returns (requests/s, non-2xx answers)."""
    cmd = ["wrk", "-t2", "-c64", f"-d{seconds}s"]
    if extra[:1] == ["--"]:
        cmd += ["-s", os.path.join(ROOT, "loadtest", "wrk", "workflow.lua"), url] + extra
    else:
        cmd += extra + [url]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return float(m.group(1)) if m else 0.0, int(errors.group(1)) if errors else 0


def start_ingress(binary, work, redis_port, port, tls):
    env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{port}",
               TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{redis_port}", TETHER_INGRESS_LOG="error")
    if tls:
        env["TETHER_INGRESS_TLS_CERT_FILE"] = os.path.join(work, "server.crt")
        env["TETHER_INGRESS_TLS_KEY_FILE"] = os.path.join(work, "server.key")
    proc = subprocess.Popen([binary, "--config", os.path.join(work, "load.toml")], env=env)
    scheme = "https" if tls else "http"
    deadline = time.time() + 60
    while time.time() < deadline:
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                            os.path.join(work, "ca.crt"), f"{scheme}://127.0.0.1:{port}/readyz"],
                           capture_output=True, text=True)
        if r.stdout == "200":
            return proc
        time.sleep(0.05)
    proc.kill()
    sys.exit("the ingress did not become ready")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "tether-ingress"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=6)
    args = p.parse_args()
    for tool in ("wrk", "nginx", "openssl", "curl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (apt-get install {tool})")
    redis, redis_port, work = run.seeded_redis(10000)
    certificates(work)
    plain_port, tls_port, nginx_port, nginx_202 = (run.free_port() for _ in range(4))
    with open(os.path.join(HERE, "..", "nginx", "tls-front.conf")) as f:
        conf = f.read()
    for name, value in (("WORK", work), ("PLAIN_PORT", plain_port), ("NGINX_PORT", nginx_port),
                        ("NGINX_202", nginx_202)):
        conf = conf.replace(f"@{name}@", str(value))
    with open(os.path.join(work, "nginx.conf"), "w") as f:
        f.write(conf)
    procs = []
    results = {k: [] for k in ("plain", "tls", "nginx", "hs_ingress", "hs_nginx")}
    try:
        subprocess.run(["nginx", "-c", os.path.join(work, "nginx.conf"), "-p", work, "-g", "daemon on;"], check=True)
        plain = start_ingress(args.bin, work, redis_port, plain_port, False)
        procs.append(plain)
        tls = start_ingress(args.bin, work, redis_port, tls_port, True)
        procs.append(tls)
        hook = ["--", run.LOAD_KEY, "wh_one"]
        close = ["-H", "Connection: close"]
        for url in (f"http://127.0.0.1:{plain_port}", f"https://127.0.0.1:{tls_port}", f"https://127.0.0.1:{nginx_port}"):
            wrk(url, 2, hook)  # warm-up, unmeasured
        for rd in range(args.rounds):
            for key, url, extra in (
                ("plain", f"http://127.0.0.1:{plain_port}", hook),
                ("tls", f"https://127.0.0.1:{tls_port}", hook),
                ("nginx", f"https://127.0.0.1:{nginx_port}", hook),
                ("hs_ingress", f"https://127.0.0.1:{tls_port}/healthz", close),
                ("hs_nginx", f"https://127.0.0.1:{nginx_202}/", close),
            ):
                rps, bad = wrk(url, args.seconds, extra)
                results[key].append(rps)
                print(f"round {rd + 1} {key:>10}: {rps:>9,.0f} req/s" + (f" ({bad} non-2xx)" if bad else ""), flush=True)
                subprocess.run(["redis-cli", "-p", str(redis_port), "DEL", "tether:jobs:workflow"], capture_output=True)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        pid = os.path.join(work, "nginx.pid")
        if os.path.exists(pid):
            subprocess.run(["kill", open(pid).read().strip()])
        redis.terminate()
    med = {k: statistics.median(v) for k, v in results.items() if v}
    ratio = lambda a, b: [x / y for x, y in zip(results[a], results[b]) if y]  # noqa: E731
    print(f"\nmedians over {args.rounds} rounds:")
    print(f"  HTTPS / plaintext, keep-alive, 1 match: {statistics.median(ratio('tls', 'plain')):.2f}x "
          f"({med['tls']:,.0f} / {med['plain']:,.0f} req/s)")
    print(f"  HTTPS ingress / nginx TLS in front of the plaintext ingress: {statistics.median(ratio('tls', 'nginx')):.2f}x "
          f"({med['tls']:,.0f} / {med['nginx']:,.0f} req/s)")
    print(f"  new TLS connections, ingress /healthz / nginx return 202: {statistics.median(ratio('hs_ingress', 'hs_nginx')):.2f}x "
          f"({med['hs_ingress']:,.0f} / {med['hs_nginx']:,.0f} per s)")


if __name__ == "__main__":
    main()
