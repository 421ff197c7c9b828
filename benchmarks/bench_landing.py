"""Benchmark of reading landing objects made of many gzip members (a producer appending one
member per record or per small chunk writes them; gzip(1) reads them as one file).

For each member count, the same lines are written as one member and as that many members, and
`landing.decode_lines` reads both; the baseline in the same run is Python's `gzip.decompress`
(what `decode_lines` used before), which copies the rest of the input after each member. Every
path must give the same bytes, or the run fails. Reported per member count: the best of three
runs of each, and the time per member, which stays flat when the read is linear.

Run: python benchmarks/bench_landing.py [--members N [N ...]]
Writes bench-results/landing.json.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import time

from clicklake.platform import landing


def _best(fn, data: bytes, runs: int = 3) -> tuple[float, bytes]:
    best, out = float("inf"), b""
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn(data)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _body(decoded: landing.DecodedFile) -> bytes:
    assert decoded.error is None, decoded.error
    return b"".join(line + b"\n" for line in decoded.lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, nargs="+", default=[1_000, 4_000, 16_000, 32_000])
    ap.add_argument("--out", default="bench-results/landing.json")
    args = ap.parse_args()
    results = []
    for n in args.members:
        # Event-sized lines that barely compress (ids and hashes), one per member.
        lines = [b'{"impression_id":"%d","h":"%s"}' % (i, hashlib.sha256(b"%d" % i).hexdigest()
                                                      .encode()) for i in range(n)]
        one = landing.encode_lines(lines)
        many = b"".join(landing.encode_lines([line]) for line in lines)
        body = b"".join(line + b"\n" for line in lines)
        t_one, out_one = _best(lambda d: _body(landing.decode_lines(d)), one)
        t_many, out_many = _best(lambda d: _body(landing.decode_lines(d)), many)
        t_base, out_base = _best(gzip.decompress, many, runs=1 if n > 16_000 else 3)
        if not out_one == out_many == out_base == body:
            raise SystemExit(f"{n} members: the paths disagree")
        row = {"members": n, "bytes": len(many),
               "decode_lines_one_member_s": round(t_one, 4),
               "decode_lines_s": round(t_many, 4),
               "baseline_gzip_decompress_s": round(t_base, 4),
               "us_per_member": round(t_many / n * 1e6, 2),
               "baseline_us_per_member": round(t_base / n * 1e6, 2),
               "speedup": round(t_base / t_many, 1)}
        print(json.dumps(row), flush=True)
        results.append(row)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
