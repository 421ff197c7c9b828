"""Run every benchmark (`benchmarks/bench_*.py`) in its own process and print their summaries.

Each benchmark measures its own baseline in the same run and writes `bench-results/<name>.json`;
pass names to run a subset: `python benchmarks/run_all.py generate lookup`.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE.parent / "bench-results"


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in argv]
    failed = []
    for script in scripts:
        print(f"\n=== {script.stem} ===", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"--- {script.stem}: exit {code} in {time.perf_counter() - t0:.0f} s", flush=True)
        if code:
            failed.append(script.stem)
    print("\nResults in", RESULTS)
    for path in sorted(RESULTS.glob("*.json")):
        print(f"  {path.name}: {len(json.loads(path.read_text()))} entries")
    if failed:
        print("FAILED:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
