"""Backfilling the hourly assets on one machine, through Dagster's own machinery.

A temporary instance (SQLite) with the QueuedRunCoordinator limited to 2 runs at once; a real
`dagster-daemon run` process (backfill daemon + run queue) launches each run in its own process.
An asset backfill of the six hourly assets over HOURS generated hours must finish with every
partition materialized, with runs in parallel where the graph allows (raw hours are independent),
never more than the limit at once, and the profile chain (user_profiles, which folds each hour
into the previous snapshot) completed in hour order with no gap refolded.

HOURS is 4, not 48: every run is a new process that imports the project (and the raw checks
import Great Expectations), so on 2 shared cores a link of the hour-by-hour chain costs 10-20 s;
4 hours keep the test near two minutes while still showing parallel raw hours and the chain.

The daemon's backfill loop sleeps 30 s between iterations; the test starts the daemon with that
pause at 1 s (the only change) so the hour-by-hour chain does not wait half a minute per hour.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from clicklake.definitions import defs
from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, hour_partition_key, parse_instant

ROOT = Path(__file__).resolve().parents[1]
HOURS = 4
START = parse_instant("2026-11-20T00:00:00Z")
KEYS = [hour_partition_key(START + i * HOUR_MS) for i in range(HOURS)]
HOURLY = ["raw_impressions", "raw_clicks", "raw_predictions", "user_hour_tiles", "user_profiles",
          "segment_profiles"]
MAX_RUNS = 2
TIMEOUT_S = 420

# `dagster-daemon run`, with the backfill loop's pause between iterations shortened.
DAEMON = """
import sys
import dagster._daemon.controller as controller
controller.DEFAULT_DAEMON_INTERVAL_SECONDS = 1
from dagster._daemon.cli import main
sys.argv = ["dagster-daemon", "run", "-w", sys.argv[1]]
main()
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({
        "storage": {"sqlite": {"base_dir": str(home / "storage")}},
        "run_coordinator": {"module": "dagster._core.run_coordinator",
                            "class": "QueuedRunCoordinator",
                            "config": {"dequeue_interval_seconds": 1}},
        "concurrency": {"runs": {"max_concurrent_runs": MAX_RUNS}},
        "telemetry": {"enabled": False},
    }))
    (home / "workspace.yaml").write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "clicklake.definitions", "location_name": "clicklake",
        "working_directory": str(ROOT)}}]}))
    root = tmp_path / "data"
    generate(Store(str(root)), start_ms=START, hours=HOURS, users=200, seed=11)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("CLICKLAKE_ROOT", str(root))
    return home


def _overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def test_hourly_backfill_runs_in_parallel_and_keeps_the_chain_in_order(home):
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

    log = open(home / "daemon.log", "wb")  # noqa: SIM115 (closed below)
    daemon = subprocess.Popen([sys.executable, "-c", DAEMON, str(home / "workspace.yaml")],
                              cwd=ROOT, env=os.environ.copy(), stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        with dg.DagsterInstance.get() as instance:
            backfill = PartitionBackfill.from_asset_partitions(
                backfill_id="hourly-backfill", asset_graph=defs.resolve_asset_graph(),
                partition_names=KEYS, asset_selection=[dg.AssetKey(a) for a in HOURLY],
                backfill_timestamp=time.time(), tags={}, dynamic_partitions_store=instance,
                all_partitions=False, title="hourly backfill", description=None,
                # One process per run: steps need not each start another interpreter.
                run_config={"execution": {"config": {"in_process": {}}}},
            )
            instance.add_backfill(backfill)
            deadline = time.monotonic() + TIMEOUT_S
            while time.monotonic() < deadline:
                status = instance.get_backfill("hourly-backfill").status
                if status not in (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING):
                    break
                assert daemon.poll() is None, (home / "daemon.log").read_text()[-3000:]
                time.sleep(1)
            assert status == BulkActionStatus.COMPLETED_SUCCESS, (
                f"backfill {status}; daemon log:\n" + (home / "daemon.log").read_text()[-3000:])

            for asset in HOURLY:
                done = instance.get_materialized_partitions(dg.AssetKey(asset))
                assert set(KEYS) <= done, f"{asset} missing {sorted(set(KEYS) - done)}"

            runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": "hourly-backfill"}))
            assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in runs)
            spans = [(r.start_time, r.end_time) for r in runs]
            assert all(s is not None and e is not None for s, e in spans)
            assert _overlap(spans) == MAX_RUNS  # in parallel, and never above the limit

            # The profile chain: hour H was folded after hour H-1, straight from its snapshot.
            events = instance.fetch_materializations(dg.AssetKey("user_profiles"),
                                                     limit=10 * HOURS).records
            order = [e.partition_key for e in sorted(events, key=lambda e: e.storage_id)
                     if e.partition_key in KEYS]
            assert order == KEYS
            meta = {e.partition_key: e.asset_materialization.metadata for e in events}
            for prev, key in itertools.pairwise(KEYS):
                assert meta[key]["gap_hours_refolded"].value == 0
                assert meta[key]["started_from"].value == meta[prev]["as_of"].value
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
