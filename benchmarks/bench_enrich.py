"""Benchmark: enrich 2 M impressions (~200 k distinct IPs, ~2 k distinct user agents).

The engine resolves each distinct value once per call. The baseline is the naive loop that parses
every row (no distinct-value caching, crawlerdetect's own LRU disabled), timed on a slice in the
same run and extrapolated per row. Also timed on the slice: the per-row single-value helpers with
their process-wide LRU (the REST path). Writes bench-results/enrich.json.

Usage: python benchmarks/bench_enrich.py [--rows N] [--slice N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa

from clicklake.platform.enrich import country as country_mod
from clicklake.platform.enrich import (
    country_of,
    enrich_impressions,
    user_agent_of,
)
from clicklake.platform.enrich import user_agent as ua_mod

_BROWSERS = [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.{b}.{p} Safari/537.36"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/{m}.{p} Safari/605.1.15"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS {m}_{p} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/{m}.{p} Mobile/15E148 Safari/604.1"),
    ("Mozilla/5.0 (Linux; Android {m}; SM-S9{p}1B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.{b}.{p} Mobile Safari/537.36"),
    ("Mozilla/5.0 (iPad; CPU OS {m}_{p} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/{m}.{p} Mobile/15E148 Safari/604.1"),
    "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.{p}",
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.{b}.{p} Safari/537.36 Edg/{v}.0.{b}.{p}"),
    "Mozilla/5.0 (compatible; Googlebot/2.{p}; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.{p}; +http://ahrefs.com/robot/)",
    "python-requests/2.{v}.{p}",
]


def user_agent_pool(n: int, rng: np.random.Generator) -> list[str]:
    pool: set[str] = set()
    while len(pool) < n:
        template = _BROWSERS[int(rng.integers(len(_BROWSERS)))]
        pool.add(template.format(v=int(rng.integers(90, 132)), b=int(rng.integers(4000, 7000)),
                                 p=int(rng.integers(0, 200)), m=int(rng.integers(10, 18))))
    return sorted(pool)


def ip_pool(n: int, rng: np.random.Generator) -> list[str]:
    v4 = rng.integers(0, 2**32, size=n * 9 // 10, dtype=np.uint64)
    pool = {f"{x >> 24}.{(x >> 16) & 255}.{(x >> 8) & 255}.{x & 255}" for x in v4.tolist()}
    for _ in range(n - len(pool)):
        pool.add(f"2a0{int(rng.integers(0, 10))}:{int(rng.integers(0, 65536)):x}::"
                 f"{int(rng.integers(0, 65536)):x}")
    return sorted(pool)


def impressions(rows: int, n_ips: int, n_uas: int, seed: int) -> pa.Table:
    """Skewed like real traffic: a few user agents and addresses carry most impressions."""
    rng = np.random.default_rng(seed)
    ips = pa.array(ip_pool(n_ips, rng) + [None], pa.string())
    uas = pa.array(user_agent_pool(n_uas, rng) + [None], pa.string())
    ua_idx = np.minimum(rng.zipf(1.3, rows) - 1, n_uas)  # index n_uas is the null slot
    ip_idx = rng.integers(0, n_ips + 1, rows)
    return pa.table({
        "impression_id": pa.array(np.arange(rows).astype(str)),
        "ip": ips.take(pa.array(ip_idx)),
        "user_agent": uas.take(pa.array(ua_idx)),
    })


def naive_per_row(table: pa.Table) -> pa.Table:
    """Every row looked up on its own: what a straightforward loop costs."""
    ua_mod._thread_state.detector = ua_mod.CrawlerDetect()
    ua_mod._thread_state.detector._cached_check = ua_mod._thread_state.detector._check_crawler
    cols: dict[str, list] = {k: [] for k in ("country", "device_type", "os", "browser",
                                              "is_crawler")}
    for ip, ua in zip(table.column("ip").to_pylist(), table.column("user_agent").to_pylist(),
                      strict=True):
        cols["country"].append(country_mod._country_codes(pa.array([ip]))[0].as_py() if ip else "unknown")
        info = ua_mod._parse_user_agent(ua) if ua else ua_mod.UNKNOWN_USER_AGENT
        cols["device_type"].append(info.device_type)
        cols["os"].append(info.os)
        cols["browser"].append(info.browser)
        cols["is_crawler"].append(info.is_crawler)
    del ua_mod._thread_state.detector
    out = table
    for name, values in cols.items():
        out = out.append_column(name, pa.array(values))
    return out


def lru_per_row(table: pa.Table) -> pa.Table:
    """Every row through the single-value helpers (the REST path) and their shared LRU."""
    country_mod._country_cached.cache_clear()
    ua_mod._user_agent_cached.cache_clear()
    infos = [user_agent_of(ua) for ua in table.column("user_agent").to_pylist()]
    out = table.append_column(
        "country", pa.array([country_of(ip) for ip in table.column("ip").to_pylist()]))
    for name in ("device_type", "os", "browser", "is_crawler"):
        out = out.append_column(name, pa.array([getattr(i, name) for i in infos]))
    return out


def timed(fn, *args, repeat: int = 1, cold: bool = False):
    """Median seconds of `repeat` calls; `cold`: the user agents' process-wide cache emptied
    before each (a run's first hour: each distinct agent parsed in the call)."""
    times, result = [], None
    for _ in range(repeat):
        if cold:
            ua_mod._user_agent_cached.cache_clear()
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--ips", type=int, default=200_000)
    parser.add_argument("--uas", type=int, default=2_000)
    parser.add_argument("--slice", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="bench-results/enrich.json")
    args = parser.parse_args()

    table = impressions(args.rows, args.ips, args.uas, args.seed)
    distinct_ips = len(table.column("ip").unique()) - 1
    distinct_uas = len(table.column("user_agent").unique()) - 1
    enrich_impressions(table.slice(0, 1000))  # load rules and compile lazy regexes once
    rss_before_mib = _peak_rss_mib()

    enriched, engine_s = timed(enrich_impressions, table, repeat=3, cold=True)
    _, warm_s = timed(enrich_impressions, table, repeat=3)  # the agents cached from before
    head = table.slice(0, args.slice)
    naive, naive_s = timed(naive_per_row, head)
    lru, lru_s = timed(lru_per_row, head)
    # Same answers from all three paths, or the speed comparison means nothing.
    assert naive.equals(enriched.slice(0, args.slice)), "naive baseline disagrees with the engine"
    assert lru.equals(naive), "single-value helpers disagree with the engine"

    engine_rps = args.rows / engine_s
    naive_rps = args.slice / naive_s
    lru_rps = args.slice / lru_s
    result = {
        "benchmark": "enrich_impressions",
        "rows": args.rows,
        "distinct_ips": distinct_ips,
        "distinct_user_agents": distinct_uas,
        "engine_seconds_median_of_3": round(engine_s, 4),
        "engine_rows_per_s": round(engine_rps),
        "engine_cache": "cold: the user agents' process-wide cache emptied before each call",
        "engine_rows_per_s_warm_cache": round(args.rows / warm_s),
        "baseline_naive_per_row": {"slice_rows": args.slice, "seconds": round(naive_s, 4),
                                   "rows_per_s": round(naive_rps),
                                   "extrapolated_seconds_for_all_rows": round(args.rows / naive_rps, 1)},
        "single_value_lru_per_row": {"slice_rows": args.slice, "seconds": round(lru_s, 4),
                                     "rows_per_s": round(lru_rps)},
        "speedup_vs_naive": round(engine_rps / naive_rps, 1),
        "crawler_share": round(enriched.column("is_crawler").to_numpy().mean(), 4),
        "peak_rss_mib_after_generating_input": rss_before_mib,
        "peak_rss_mib": _peak_rss_mib(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("pyarrow", "iptocc", "ua-parser", "ua-parser-rs",
                                            "ua-parser-builtins", "crawlerdetect")},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"engine {engine_rps:,.0f} rows/s vs naive per-row {naive_rps:,.0f} rows/s "
          f"({engine_rps / naive_rps:,.0f}x); wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
