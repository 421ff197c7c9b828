"""Backfilling 48 hours of the hourly assets on one machine, through Dagster's own machinery.

A temporary instance (SQLite) with the QueuedRunCoordinator limited to 2 runs at once; a real
`dagster-daemon run` process (backfill daemon + run queue) launches each run in its own process.
The assets' backfill policies shape the runs: hours that do not depend on each other (raw streams,
user hour tiles) go up to 12 hours per run, and those runs go side by side; each chain (user and
segment profiles, folding hour H into H-1) folds its range hour after hour inside one run, and a
later range starts only after the earlier one finished.

The backfill must finish with every one of the 48 partitions of every asset materialized (each
with its own metadata), the raw checks evaluated over every hour, runs in parallel but never above
the limit, the chain runs one after another in hour order, and every snapshot identical to a plain
sequential fold of the same raw hours (and, at the end, to the brute-force oracle).

The daemon's backfill loop sleeps 30 s between iterations; the test starts the daemon with that
pause at 1 s (the only change) so each wave of runs does not wait half a minute.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import oracle
import pytest
import yaml

from clicklake.assets.partitions import HOURS_PER_RUN
from clicklake.cli.processes import stop_process
from clicklake.definitions import defs
from clicklake.platform import profiles, segments, tiles
from clicklake.platform.raw import read_raw
from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, hour_partition_key, parse_instant

ROOT = Path(__file__).resolve().parents[1]
HOURS = 48
START = parse_instant("2026-11-20T00:00:00Z")
KEYS = [hour_partition_key(START + i * HOUR_MS) for i in range(HOURS)]
INDEPENDENT = ["raw_impressions", "raw_clicks", "raw_predictions", "user_hour_tiles"]
CHAINS = ["user_profiles", "segment_profiles"]
HOURLY = INDEPENDENT + CHAINS
# A backfill of hours H0..H47 over an asset selection (what the UI launches) targets, below its
# roots, every partition that depends on a targeted one: segment profile H reads raw H-1 and H, so
# Dagster adds segment_profiles H48 (built from raw H47 alone, until a later backfill covers H48).
TARGET = {a: KEYS for a in HOURLY} | {
    "segment_profiles": [*KEYS, hour_partition_key(START + HOURS * HOUR_MS)]}
MAX_RUNS = 2
TIMEOUT_S = 300
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"

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
        # The backfill alone: the automation sensors have nothing to do on these hours (days
        # back).
        "auto_materialize": {"enabled": False},
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


def _sequential_fold(store: Store) -> None:
    """Fold the backfilled raw hours one by one, in order, and compare every file."""
    snap, previous_segments = None, []
    for i in range(HOURS):
        hour = START + i * HOUR_MS
        imps, clicks = (read_raw(store, s, hour) for s in ("impressions", "clicks"))
        tile = tiles.build_user_hour_tiles(imps, clicks, hour)
        assert store.read_parquet(tiles.tile_key(hour)).equals(tile), KEYS[i]
        snap = profiles.fold_snapshot(snap, tile, hour)
        assert store.read_parquet(profiles.snapshot_key(hour)).equals(snap), KEYS[i]
        seg = segments.segment_profile(segments.hour_segment_events(store, hour),
                                       previous_segments[-(segments.WINDOW_HOURS - 1):], hour)
        assert store.read_parquet(segments.segment_key(hour)).equals(seg), KEYS[i]
        previous_segments.append(seg)

    # The last snapshot against the brute-force oracle, user by user.
    raw_rows = {s: [r for i in range(HOURS) for r in oracle.rows_of(
        read_raw(store, s, START + i * HOUR_MS))] for s in ("impressions", "clicks")}
    end = START + HOURS * HOUR_MS
    assert snap.num_rows > 100
    for row in snap.to_pylist():
        exp = oracle.profile(raw_rows["impressions"], raw_rows["clicks"], row["user_id"], end)
        got = {k: row[k] for k in ("impressions", "clicks", "impressions_24h", "clicks_24h",
                                   "impressions_7d", "distinct_campaigns")}
        assert got == {k: exp[k] for k in got}, row["user_id"]


def test_48_hour_backfill_runs_in_parallel_and_keeps_the_chains_in_order(home):
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

    # The instance's storages are made before the daemon starts: the test and the daemon making
    # a fresh SQLite instance's tables at once raced (CI: "table alembic_version already
    # exists" here, a failed revision check in the daemon).
    with dg.DagsterInstance.get() as instance:
        instance.get_runs(limit=1)
        instance.get_backfills()
        instance.all_instigator_state()
        instance.get_latest_materialization_event(dg.AssetKey("raw_impressions"))
    log = open(home / "daemon.log", "wb")  # noqa: SIM115 (closed below)
    daemon = subprocess.Popen([sys.executable, "-c", DAEMON, str(home / "workspace.yaml")],
                              cwd=ROOT, env=os.environ.copy(), stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        with dg.DagsterInstance.get() as instance:
            started = time.monotonic()
            backfill = PartitionBackfill.from_asset_partitions(
                backfill_id="hourly-backfill", asset_graph=defs.resolve_asset_graph(),
                partition_names=KEYS, asset_selection=[dg.AssetKey(a) for a in HOURLY],
                backfill_timestamp=time.time(), tags={}, dynamic_partitions_store=instance,
                all_partitions=False, title="48-hour backfill", description=None,
                # One process per run: steps need not each start another interpreter.
                run_config={"execution": {"config": {"in_process": {}}}},
            )
            instance.add_backfill(backfill)
            deadline = started + TIMEOUT_S
            while time.monotonic() < deadline:
                status = instance.get_backfill("hourly-backfill").status
                if status not in (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING):
                    break
                assert daemon.poll() is None, (home / "daemon.log").read_text()[-3000:]
                time.sleep(1)
            wall = time.monotonic() - started
            assert status == BulkActionStatus.COMPLETED_SUCCESS, (
                f"backfill {status}; daemon log:\n" + (home / "daemon.log").read_text()[-3000:])

            for asset in HOURLY:
                # One materialization per hour, each with that hour's own metadata.
                events = instance.fetch_materializations(dg.AssetKey(asset), limit=4 * HOURS).records
                assert sorted(e.partition_key for e in events) == TARGET[asset]
                paths = {e.asset_materialization.metadata["path"].value for e in events}
                assert len(paths) == len(TARGET[asset])

            runs = instance.get_run_records(
                dg.RunsFilter(tags={"dagster/backfill": "hourly-backfill"}))
            assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in runs)
            spans = [(r.start_time, r.end_time) for r in runs]
            assert all(s is not None and e is not None for s, e in spans)
            assert _overlap(spans) == MAX_RUNS  # in parallel, and never above the limit

            def assets_of(record) -> set[str]:
                return {k.path[-1] for k in record.dagster_run.asset_selection or ()}

            # Independent hours: 12 per run, all four assets of an hour in the same run.
            batches = [r for r in runs if assets_of(r) & set(INDEPENDENT)]
            assert all(assets_of(r) == set(INDEPENDENT) for r in batches)
            assert len(batches) == HOURS // HOURS_PER_RUN

            # Each chain: its runs cover its hours in order, one after the other.
            for chain in CHAINS:
                chain_runs = sorted((r for r in runs if chain in assets_of(r)),
                                    key=lambda r: r.start_time)
                ranges = [(r.dagster_run.tags[RANGE_START], r.dagster_run.tags[RANGE_END])
                          for r in chain_runs]
                keys = TARGET[chain]
                assert ranges[0][0] == keys[0] and ranges[-1][1] == keys[-1], ranges
                for (_, end), (start, _) in itertools.pairwise(ranges):
                    assert keys.index(start) == keys.index(end) + 1, ranges
                for a, b in itertools.pairwise(chain_runs):
                    assert a.end_time <= b.start_time
            events = instance.fetch_materializations(dg.AssetKey("user_profiles"),
                                                     limit=4 * HOURS).records
            meta = {e.partition_key: e.asset_materialization.metadata for e in events}
            assert meta[KEYS[0]]["started_from"].value == "empty history"
            for prev, key in itertools.pairwise(KEYS):
                assert meta[key]["gap_hours_refolded"].value == 0
                assert meta[key]["started_from"].value == meta[prev]["as_of"].value

            # The raw checks ran over every hour, in the runs that built them.
            checks = [e for r in batches for e in instance.all_logs(
                r.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)]
            evaluations = [e.dagster_event.event_specific_data for e in checks]
            assert evaluations and all(ev.passed for ev in evaluations)
            for stream in ("impressions", "clicks", "predictions"):
                hours = [ev.metadata["hours_checked"].value for ev in evaluations
                         if ev.asset_key.path[-1] == f"raw_{stream}"
                         and ev.check_name == "ts_in_partition"]
                assert sum(hours) == HOURS

            print(f"48-hour backfill: {wall:.0f} s, {len(runs)} runs, "
                  f"at most {_overlap(spans)} at once")
        _sequential_fold(Store(os.environ["CLICKLAKE_ROOT"]))
    finally:
        stop_process(daemon, timeout=60)
        log.close()
