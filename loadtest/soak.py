#!/usr/bin/env python3
"""Memory soak: saturating one-match load for a while, with nobody scraping
/metrics and with a scrape every few seconds, the ingress's resident memory
sampled throughout. Prints a table and the verdict (the run without scrapes
must stay within --bound of its RSS after the warm-up), and draws both runs
as an SVG plot.

    loadtest/soak.py                                  # 60 s after a 10 s warm-up, each mode
    loadtest/soak.py --duration 300 --svg /tmp/soak.svg

Needs wrk and redis-server; builds the release binary unless --bin is given.
Exits 1 when the run without scrapes grows past the bound.
"""
import argparse
import os
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def soak(args, redis_port, work, scrape):
    """One fresh ingress under load; returns [(seconds, RSS MB)] and the wrk result line."""
    port = run.free_port()
    env = dict(os.environ, TETHER_INGRESS_LISTEN=f"127.0.0.1:{port}",
               TETHER_INGRESS_REDIS_URL=f"redis://127.0.0.1:{redis_port}", TETHER_INGRESS_LOG="error")
    proc = subprocess.Popen([args.bin, "--config", os.path.join(work, "load.toml")], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        if not run.wait_http(base + "/readyz", timeout=120):
            sys.exit("the ingress did not become ready")
        total = args.warmup + args.duration
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{args.connections}", f"-d{total}s", "-s",
             os.path.join(HERE, "wrk", "workflow.lua"), base, "--", run.LOAD_KEY, "wh_one"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stop = threading.Event()
        scrapes = [0]

        def scraper():
            while not stop.wait(args.scrape_every):
                try:
                    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
                        r.read()
                    scrapes[0] += 1
                except OSError:
                    pass

        if scrape:
            threading.Thread(target=scraper, daemon=True).start()
        samples = []
        started = time.time()
        while wrk.poll() is None:
            samples.append((time.time() - started, run.rss_mb(proc.pid)))
            time.sleep(args.sample)
        stop.set()
        out = wrk.stdout.read()
        rps = next((line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")), "?")
        return samples, f"{rps} requests/s, {scrapes[0]} scrapes"
    finally:
        proc.terminate()
        proc.wait()
        subprocess.run(["redis-cli", "-p", str(redis_port), "DEL", "tether:jobs:workflow"], capture_output=True)


def after(samples, t):
    """The first sample at or after t seconds."""
    return next((rss for s, rss in samples if s >= t), samples[-1][1])


def ticks(top):
    """Round tick values from 0 to top, at most seven."""
    step = next(m * 10 ** e for e in range(0, 6) for m in (1, 2, 5) if top / (m * 10 ** e) <= 6)
    return [i * step for i in range(int(top // step) + 1)]


def svg(runs, warmup, path):
    """A small line plot of RSS over time, one line per run."""
    w, h, left, bottom, top, right = 720, 360, 60, 40, 30, 160
    t_max = max(s for samples in runs.values() for s, _ in samples) or 1
    peak = max(rss for samples in runs.values() for _, rss in samples)
    y_max = max(10, peak * 1.15)

    def xy(t, rss):
        return (left + (w - left - right) * t / t_max, h - bottom - (h - top - bottom) * rss / y_max)

    colours = ["#d62728", "#1f77b4"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{left}" y="18" font-size="14">tether-ingress RSS under saturating load (MB)</text>']
    for rss in ticks(y_max):
        _, y = xy(0, rss)
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{rss:g}</text>')
    for t in ticks(t_max):
        x, _ = xy(t, 0)
        parts.append(f'<text x="{x:.1f}" y="{h - bottom + 16}" text-anchor="middle">{t:g} s</text>')
    x, _ = xy(warmup, 0)
    parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{h - bottom}" stroke="#999" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{x + 4:.1f}" y="{top + 12}" fill="#666">end of warm-up</text>')
    for i, (label, samples) in enumerate(runs.items()):
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(t, rss) for t, rss in samples))
        c = colours[i % len(colours)]
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{pts}"/>')
        ly = top + 20 + 18 * i
        parts.append(f'<line x1="{w - right + 10}" x2="{w - right + 30}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"/>')
        parts.append(f'<text x="{w - right + 36}" y="{ly + 4}">{label}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", help="ingress binary (default: build and use target/release/tether-ingress)")
    p.add_argument("--duration", type=int, default=60, help="seconds of load after the warm-up (default 60)")
    p.add_argument("--warmup", type=int, default=10, help="seconds of load before the reference sample (default 10)")
    p.add_argument("--sample", type=float, default=2.0, help="seconds between RSS samples (default 2)")
    p.add_argument("--scrape-every", type=float, default=2.0, help="seconds between scrapes in the scraped run (default 2)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--keys", type=int, default=10000, help="keys and triggers seeded (default 10,000)")
    p.add_argument("--bound", type=float, default=0.10, help="allowed growth over the warm-up RSS (default 0.10)")
    p.add_argument("--svg", default="soak.svg", help="where to draw the plot (default ./soak.svg)")
    args = p.parse_args()
    if args.bin is None:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        args.bin = os.path.join(ROOT, "target", "release", "tether-ingress")
    redis, redis_port, work = run.seeded_redis(args.keys)
    try:
        runs = {}
        notes = {}
        for label, scrape in (("no scrape", False), (f"scrape every {args.scrape_every:g} s", True)):
            runs[label], notes[label] = soak(args, redis_port, work, scrape)
    finally:
        redis.terminate()
        redis.wait()

    labels = list(runs)
    print(f"RSS (MB), wrk -t1 -c{args.connections}, one match per request, {args.warmup} s warm-up then {args.duration} s")
    print(f"{'t (s)':>6} " + " ".join(f"{label:>18}" for label in labels))
    n = max(len(s) for s in runs.values())
    for i in range(n):
        row = [runs[label][i] if i < len(runs[label]) else None for label in labels]
        t = next(r[0] for r in row if r is not None)
        print(f"{t:>6.0f} " + " ".join(f"{r[1]:>18.1f}" if r else f"{'':>18}" for r in row))
    ok = True
    for label in labels:
        samples = runs[label]
        ref = after(samples, args.warmup)
        rest = [rss for t, rss in samples if t >= args.warmup]
        growth = max(rest) / ref - 1
        verdict = "within" if growth <= args.bound else "OVER"
        print(f"{label}: {notes[label]}; RSS {ref:.1f} MB after the warm-up, at most {max(rest):.1f} MB after "
              f"({growth:+.1%}, {verdict} the {args.bound:.0%} bound)")
        if label == labels[0] and growth > args.bound:
            ok = False
    svg(runs, args.warmup, args.svg)
    print(f"plot: {args.svg}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
