"""Benchmark: `clicklake generate` at full size (100 k users, 48 h, about 2 M impressions).

Reports events per second (lines written in all three streams, messy ones included), CPU seconds
(all threads; far less sensitive than wall time to other load on a shared machine) and peak
memory. The baseline, timed in the same run on a slice and extrapolated per row, is the plain way
to write such a stream: a pure-Python loop that draws each record with `random`, serialises it
with `json.dumps` and writes it line by line into a gzip stream. Writes bench-results/generate.json.

Usage: python benchmarks/bench_generate.py [--users N] [--hours H] [--slice N] [--seed S]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import iso, parse_instant

START = "2026-11-24T00:00:00Z"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def baseline_seconds_per_row(rows: int, users: int, seed: int, stream: str = "impressions"
                             ) -> tuple[float, float]:
    """Pure Python, one record of `stream`'s shape at a time: draw, json.dumps, gzip write.
    (wall, CPU) per row."""
    rnd = random.Random(seed)
    start = parse_instant(START)
    campaigns = [f"cmp-{i:04d}" for i in range(300)]
    domains = [f"site{i}.com" for i in range(3000)]
    ua = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")

    def impression(i: int) -> dict:
        return {"impression_id": f"imp-{rnd.getrandbits(64):016x}",
                "ts": iso(start + rnd.randrange(3_600_000)) if i % 2
                else start + rnd.randrange(3_600_000),
                "user_id": f"u{rnd.randrange(users):07d}", "campaign_id": rnd.choice(campaigns),
                "domain": rnd.choice(domains),
                "ip": ".".join(str(rnd.randrange(1, 255)) for _ in range(4)),
                "user_agent": ua, "cost": round(rnd.uniform(0.0005, 0.02), 7)}

    def click(i: int) -> dict:
        return {"click_id": f"clk-{rnd.getrandbits(64):016x}",
                "ts": iso(start + rnd.randrange(3_600_000)) if i % 2
                else start + rnd.randrange(3_600_000),
                "user_id": f"u{rnd.randrange(users):07d}", "campaign_id": rnd.choice(campaigns),
                "impression_id": f"imp-{rnd.getrandbits(64):016x}"}

    def prediction(i: int) -> dict:
        return {"prediction_id": f"prd-{rnd.getrandbits(64):016x}",
                "ts": iso(start + rnd.randrange(3_600_000)) if i % 2
                else start + rnd.randrange(3_600_000),
                "user_id": f"u{rnd.randrange(users):07d}", "model": "prod-2026-11",
                "score": round(rnd.random(), 6),
                "impression_id": f"imp-{rnd.getrandbits(64):016x}"}

    record = {"impressions": impression, "clicks": click, "predictions": prediction}[stream]
    buf = io.BytesIO()
    t0, c0 = time.perf_counter(), time.process_time()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0) as gz:
        for i in range(rows):
            gz.write(json.dumps(record(i)).encode() + b"\n")
    return (time.perf_counter() - t0) / rows, (time.process_time() - c0) / rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--hours", type=int, default=48)
    ap.add_argument("--slice", type=int, default=100_000, help="baseline rows to time")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    rss_before = peak_rss_mib()
    c0 = time.process_time()
    with tempfile.TemporaryDirectory(prefix="clicklake-bench-") as tmp:
        s = generate(Store(tmp), start_ms=parse_instant(START), hours=args.hours,
                     users=args.users, impressions=None, seed=args.seed, clean=False)
        cpu = time.process_time() - c0
        landing_bytes = sum(p.stat().st_size for p in Path(tmp, "landing").rglob("*.gz"))
    rss_generate = peak_rss_mib()
    lines = sum(s.lines.values())
    # Each stream's lines at the cost of its own record shape (a prediction or click line is
    # cheaper to write than an impression's).
    per_stream = {st: baseline_seconds_per_row(min(args.slice, lines), args.users, args.seed, st)
                  for st in s.lines}
    baseline_s = sum(per_stream[st][0] * n for st, n in s.lines.items())
    baseline_cpu = sum(per_stream[st][1] * n for st, n in s.lines.items())
    per_row = baseline_s / lines

    result = {
        "benchmark": "generate",
        "users": args.users,
        "hours": args.hours,
        "impressions": s.events["impressions"],
        "events": s.events,
        "lines": s.lines,
        "files": s.files,
        "messy_by_kind": s.messy_by_kind(),
        "landing_mib": round(landing_bytes / 2**20, 1),
        "seconds": round(s.seconds, 2),
        "events_per_s": round(lines / s.seconds),
        "cpu_seconds": round(cpu, 2),
        "peak_rss_mib": round(rss_generate, 1),
        "rss_before_mib": round(rss_before, 1),
        "baseline": {
            "method": "pure-Python loop: random + json.dumps + gzip write per line, each "
                      "stream's lines timed with its own record shape",
            "cpu_seconds_per_row_by_stream": {st: v[1] for st, v in per_stream.items()},
            "slice_rows": min(args.slice, lines),
            "seconds_per_row": per_row,
            "extrapolated_seconds": round(baseline_s, 2),
            "extrapolated_cpu_seconds": round(baseline_cpu, 2),
            "events_per_s": round(1 / per_row),
        },
        "speedup_vs_baseline": round(baseline_s / s.seconds, 2),
        "cpu_ratio_vs_baseline": round(baseline_cpu / cpu, 2),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(f"{'':<34}{'seconds':>10}{'CPU s':>10}{'events/s':>12}{'peak MiB':>10}")
    print(f"{'clicklake generate':<34}{s.seconds:>10.1f}{cpu:>10.1f}{lines / s.seconds:>12,.0f}"
          f"{rss_generate:>10.0f}")
    print(f"{'baseline (extrapolated per row)':<34}{baseline_s:>10.1f}{baseline_cpu:>10.1f}"
          f"{1 / per_row:>12,.0f}{'':>10}")
    print(f"{lines:,} lines ({s.events['impressions']:,} impressions), "
          f"{sum(s.files.values())} files, {result['landing_mib']} MiB gzip; "
          f"speedup {result['speedup_vs_baseline']}x (wall), "
          f"{result['cpu_ratio_vs_baseline']}x (CPU) over the baseline")
    out = Path(__file__).resolve().parent.parent / "bench-results" / "generate.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", out.relative_to(out.parent.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
