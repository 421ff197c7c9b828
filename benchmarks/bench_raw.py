"""Benchmark of the raw layer: landing files to raw partitions, with the C reader of plain lines
(`events.plain_rows`) and, as the baseline in the same process, without it (orjson and
`parse_object` on every line: the path of a build without the extension, and of earlier
releases). Both must give identical partitions and quarantines, or the run fails.

A generated landing zone (default 100 k users x 6 h, with the generator's messy lines) is built
into raw partitions for every stream and every hour but the first and last (whose files reach
outside the zone); each path runs twice, the best CPU time is kept.

Run: python benchmarks/bench_raw.py [--users N --hours H]
Writes bench-results/raw.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from clicklake.platform import events, raw
from clicklake.platform.events import SPECS
from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, parse_instant


def build(store: Store, hours: list[int]) -> tuple[dict, float, float]:
    """Every stream's raw partition of `hours`: (partitions, CPU seconds, wall seconds)."""
    c0, t0 = time.process_time(), time.perf_counter()
    parts = {(s, h): raw.build_raw_partition(store, s, h) for s in SPECS for h in hours}
    return parts, time.process_time() - c0, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--hours", type=int, default=6)
    ap.add_argument("--out", default="bench-results/raw.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        store = Store(root)
        start = parse_instant("2026-11-20T00:00:00Z")
        generate(store, start_ms=start, hours=args.hours, users=args.users, seed=3)
        hours = [start + i * HOUR_MS for i in range(1, args.hours - 1)]
        build(store, hours[:1])  # warm: imports, IP tables, caches
        runs: dict[str, list] = {"c_reader": [], "per_line": []}
        for _ in range(2):
            runs["c_reader"].append(build(store, hours))
            native, events._plainjson = events._plainjson, None
            try:
                runs["per_line"].append(build(store, hours))
            finally:
                events._plainjson = native
        ours, base = runs["c_reader"][0][0], runs["per_line"][0][0]
        for key, part in ours.items():
            other = base[key]
            if not (part.table.equals(other.table) and part.quarantine.equals(other.quarantine)
                    and part.lines_read == other.lines_read):
                raise SystemExit(f"the two paths disagree on {key}")
        lines = sum(p.lines_read for p in ours.values())
        rows = sum(p.table.num_rows for p in ours.values())
        quarantined = sum(p.quarantine.num_rows for p in ours.values())
        figures = {}
        for name, done in runs.items():
            cpu, wall = min(r[1] for r in done), min(r[2] for r in done)
            figures[name] = {"cpu_seconds": round(cpu, 3), "seconds": round(wall, 3),
                             "lines_per_cpu_s": round(lines / cpu)}
    result = {
        "benchmark": "raw", "users": args.users, "hours_built": len(hours),
        "streams": list(SPECS), "lines_read": lines, "rows": rows, "quarantined": quarantined,
        "c_reader_built": events._plainjson is not None,
        "c_reader": figures["c_reader"], "baseline_per_line": figures["per_line"],
        "cpu_speedup": round(figures["per_line"]["cpu_seconds"]
                             / figures["c_reader"]["cpu_seconds"], 2),
        "cpus": os.cpu_count(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
