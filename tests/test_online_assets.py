"""The `serving_lookup` asset, its landing sensor and the `online_matches_lookup` check, run
through Dagster: sensor ticks over a hand-made landing zone (cursor, run keys, only new files),
a materialization that folds exactly the requested files, a retry, a rebuild. (The check runs on
a generated stream in test_online_consistency.py, which builds the lake it needs.)"""

from __future__ import annotations

import time

import dagster as dg
import orjson

from clicklake.assets.serving import (
    comparison_instant,
    landing_to_serving,
    serving_assets,
    serving_checks,
    serving_lookup,
)
from clicklake.platform.online import watch
from clicklake.platform.online.fold import seed_mark
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS
from clicklake.resources.lake import LakeResource
from clicklake.resources.online_store import SqliteOnlineStore
from tests.landing_factory import MIN, H, click, impression, land, old_layout_online_db


def _tick(lake: LakeResource, cursor: str | None, online: SqliteOnlineStore | None = None):
    online = online or SqliteOnlineStore(path=f"{lake.root}/../online.db")
    ctx = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), cursor=cursor,
                                  resources={"lake": lake, "online_store": online})
    return landing_to_serving(ctx)


def _files(request: dg.RunRequest) -> list[str]:
    return request.run_config["ops"]["serving_lookup"]["config"]["files"]


def _materialize(lake, online, files=None, rebuild=False):
    config = {"ops": {"serving_lookup": {"config": {"files": files or [], "rebuild": rebuild}}}}
    result = dg.materialize(serving_assets, run_config=config,
                            resources={"lake": lake, "online_store": online})
    mat = result.get_asset_materialization_events()[0].step_materialization_data.materialization
    return {k: v.value for k, v in mat.metadata.items()}


def test_sensor_requests_each_new_file_once_and_the_run_folds_exactly_them(tmp_path):
    store = Store(str(tmp_path / "lake"))
    lake = LakeResource(root=store.root)
    online = SqliteOnlineStore(path=str(tmp_path / "online.db"))
    k1 = land(store, "impressions", H + 5 * MIN, [impression("i1", H + MIN),
                                                  impression("i2", H + 2 * MIN, user="u2")], "1")
    k2 = land(store, "clicks", H + 6 * MIN, [click("c1", H + 3 * MIN, "i1"), b"{not json"], "2")

    first = _tick(lake, None)
    assert len(first.run_requests) == 1
    assert _files(first.run_requests[0]) == [k1, k2]  # arrival order across streams
    cursor, _ = watch.read_cursor(first.cursor)
    run_key = first.run_requests[0].run_key
    assert {s: e["newest"] for s, e in cursor["streams"].items()} == {
        "impressions": k1, "clicks": k2, "predictions": None}
    assert list(cursor["runs"]) == [run_key]  # asked: in flight until its run is over
    # asked, its run not over: a cheap, empty tick
    assert _tick(lake, first.cursor).run_requests == []

    meta = _materialize(lake, online, _files(first.run_requests[0]))
    assert (meta["files_folded"], meta["events_folded"], meta["quarantined_total"]) == (2, 3, 1)
    assert orjson.loads(orjson.dumps(meta["quarantined"])) == {"malformed": 1}
    assert meta["watermark_ms"] == H + 6 * MIN

    k3 = land(store, "impressions", H + 70 * MIN, [impression("i1", H + MIN),  # a re-delivery
                                                   impression("i3", H + 65 * MIN)], "3")
    later = _tick(lake, first.cursor)
    assert run_key not in watch.read_cursor(later.cursor)[0]["runs"]  # folded: forgotten
    assert [_files(r) for r in later.run_requests] == [[k3]]
    assert later.run_requests[0].run_key != first.run_requests[0].run_key
    meta = _materialize(lake, online, _files(later.run_requests[0]))
    assert (meta["files_folded"], meta["events_folded"]) == (1, 1)
    assert meta["quarantined"] == {"duplicate": 1}
    # The same run again (a retry) folds nothing twice.
    meta = _materialize(lake, online, _files(later.run_requests[0]))
    assert (meta["files_folded"], meta["files_skipped"], meta["events_folded"]) == (0, 1, 0)

    before = online.state().dump()
    meta = _materialize(lake, online, rebuild=True)
    assert meta["files_folded"] == 3
    after = online.state().dump()
    # rebuilt = folded incrementally, but for the record of the refold's own last commit
    (own,) = [f for f in after["files"] if f not in before["files"]]
    assert own[0].startswith("seed/refold/") and seed_mark(online.state()) is None
    assert {**after, "files": [f for f in after["files"] if f != own]} == before

    prof = online.features().profile("u1", H + 66 * MIN)
    # sawtooth 1 h at H+66 min: the whole hour H plus [H+1 h, H+66 min)
    assert (prof["impressions"], prof["clicks"], prof["impressions_1h"]) == (2, 1, 2)
    assert online.features().profile("u1", H + 61 * MIN)["impressions_1h"] == 1


def test_a_file_visible_after_later_ones_is_still_requested_within_the_lookback(tmp_path):
    # Firehose may make an object visible after objects with later keys (another buffer, a
    # retried delivery): taking only keys after the newest one lost such a file for good.
    from clicklake.platform.online.watch import LOOKBACK_MS

    store = Store(str(tmp_path / "lake"))
    lake = LakeResource(root=store.root)
    online = SqliteOnlineStore(path=str(tmp_path / "online.db"))
    k2 = land(store, "impressions", H + 30 * MIN, [impression("i2", H + 29 * MIN)], "2")
    first = _tick(lake, None)
    assert [_files(r) for r in first.run_requests] == [[k2]]
    _materialize(lake, online, [k2])
    k1 = land(store, "impressions", H + 10 * MIN, [impression("i1", H + 9 * MIN)], "1")
    late = land(store, "impressions", H + 30 * MIN - LOOKBACK_MS - MIN,
                [impression("i0", H - 40 * MIN)], "0")  # past the lookback: as raw, not waited for
    second = _tick(lake, first.cursor)
    assert [_files(r) for r in second.run_requests] == [[k1]]
    assert watch.read_cursor(second.cursor)[0]["streams"]["impressions"]["late"] == [late]
    # counted on serving_lookup's page, not only in the tick's log
    (seen,) = second.asset_events
    assert seen.asset_key == serving_lookup.key
    assert {k: v.value for k, v in seen.metadata.items()} == {
        "late_files": 1, "given_up_files": 0, "deleted_files": 0, "late_files_sample": late}
    assert first.asset_events == []
    _materialize(lake, online, [k1])
    assert _tick(lake, second.cursor).run_requests == []
    # a cursor of an earlier form goes on from its newest key (the store says what is folded)
    for legacy in ({"impressions": k2}, {"impressions": {"keys": [k1, k2], "floor": None}}):
        assert _tick(lake, orjson.dumps(legacy).decode()).run_requests == []
    k3 = land(store, "impressions", H + 50 * MIN, [impression("i3", H + 49 * MIN)], "3")
    assert [_files(r) for r in _tick(lake, orjson.dumps({"impressions": k2}).decode()
                                     ).run_requests] == [[k3]]


def test_an_unreadable_cursor_starts_over_from_the_stores_record(tmp_path):
    store = Store(str(tmp_path / "lake"))
    lake = LakeResource(root=store.root)
    online = SqliteOnlineStore(path=str(tmp_path / "online.db"))
    k1 = land(store, "impressions", H + 5 * MIN, [impression("i1", H + MIN)], "1")
    k2 = land(store, "impressions", H + 6 * MIN, [impression("i2", H + 2 * MIN)], "2")
    _materialize(lake, online, [k1])
    for bad in ("{not json", "[1, 2]", '{"impressions": 7}', '{"impressions": {"asked": 3}}'):
        tick = _tick(lake, bad)
        assert [_files(r) for r in tick.run_requests] == [[k2]], bad


def test_a_failed_runs_files_are_asked_again_and_a_missing_file_does_not_fail_a_run(tmp_path):
    store = Store(str(tmp_path / "lake"))
    lake = LakeResource(root=store.root)
    online = SqliteOnlineStore(path=str(tmp_path / "online.db"))
    k1 = land(store, "impressions", H + 5 * MIN, [impression("i1", H + MIN)], "1")
    k2 = land(store, "impressions", H + 6 * MIN, [impression("i2", H + 2 * MIN, user="u2")], "2")
    first = _tick(lake, None)
    assert [_files(r) for r in first.run_requests] == [[k1, k2]]
    store.delete(k1)  # gone before the run reads it: the run folds the rest and says so
    meta = _materialize(lake, online, [k1, k2])
    assert (meta["files_folded"], meta["files_missing"]) == (1, 1)
    # the next tick: k2 folded (forgotten), k1 no longer listed (reported, forgotten)
    again = _tick(lake, first.cursor)
    assert again.run_requests == []
    assert watch.read_cursor(again.cursor)[0]["runs"] == {}


def test_comparison_instant_waits_for_late_files_and_lake_snapshots():
    lateness = HOUR_MS
    # watermark 15:20 → hours ending by 14:00 are complete online; snapshots reach 16:00.
    assert comparison_instant(H + 2 * HOUR_MS + 20 * MIN, H + 2 * HOUR_MS, lateness) == H + HOUR_MS
    # the lake lags: the last snapshot is of hour H, so W = end of H.
    assert comparison_instant(H + 9 * HOUR_MS, H, lateness) == H + HOUR_MS


def test_exports_for_the_definitions():
    defs = dg.Definitions(assets=serving_assets, asset_checks=serving_checks,
                          sensors=[landing_to_serving],
                          resources={"lake": LakeResource(), "online_store": SqliteOnlineStore()})
    repo = defs.get_repository_def()
    assert repo.get_sensor_def("landing_to_serving").minimum_interval_seconds == 15
    assert serving_lookup.key in {k for a in serving_assets for k in a.keys}


def test_a_store_of_an_older_layout_is_refused_by_serve_and_rebuilt_by_the_next_run(tmp_path):
    """An online store folded by an older clicklake (millisecond counter rows): the API refuses
    to start on it with what to do, and the sensor's next run rebuilds it from the landing zone
    (its state is derived) instead of failing every run."""
    import pytest

    from clicklake.platform.online.state import StaleLayout
    from clicklake.serving.sources import open_online_source

    path = str(tmp_path / "online.db")
    old_layout_online_db(path)
    store = Store(str(tmp_path / "lake"))
    lake = LakeResource(root=store.root)
    k1 = land(store, "impressions", H + 5 * MIN, [impression("i1", H + MIN)], "1")
    k2 = land(store, "impressions", H + 6 * MIN, [impression("i2", H + 2 * MIN, user="u2")], "2")
    with pytest.raises(StaleLayout, match="older online state layout"):
        open_online_source(path)

    meta = _materialize(lake, SqliteOnlineStore(path=path), [k2])  # the sensor asked for k2 only
    assert meta["rebuild"] is True and "older online state layout" in meta["rebuild_reason"]
    assert (meta["files_folded"], meta["events_folded"]) == (2, 2)  # every landing file
    online = open_online_source(path)
    assert online.profile("u2", H + 10 * MIN)["impressions"] == 1
    assert _materialize(lake, SqliteOnlineStore(path=path), [k1])["files_folded"] == 0
    assert _materialize(lake, SqliteOnlineStore(path=path))["rebuild_reason"] == "none"


def test_a_lost_cursor_takes_the_runs_asked_before_from_the_instance(tmp_path, monkeypatch):
    # A reset (or unreadable) cursor forgot which runs were asked: a failed run's file older than
    # the store's watermark was reported late instead of asked again. The instance remembers.
    import types

    from clicklake.assets import serving

    store = Store(str(tmp_path / "lake"))
    lake = LakeResource(root=store.root)
    online = SqliteOnlineStore(path=str(tmp_path / "online.db"))
    k0 = land(store, "impressions", H + 5 * MIN, [impression("i0", H + MIN)], "0")
    k1 = land(store, "impressions", H + 3 * HOUR_MS, [impression("i1", H + 179 * MIN)], "1")
    _materialize(lake, online, [k1])  # the watermark is hours past k0 now
    instance = dg.DagsterInstance.ephemeral()

    def boom(*args, **kwargs):
        raise OSError("the lake was unreachable")

    with monkeypatch.context() as m:  # the sensor's run for k0, which failed
        m.setattr(serving, "fold_files", boom)
        failed = dg.materialize(
            serving_assets, instance=instance, raise_on_error=False,
            run_config={"ops": {"serving_lookup": {"config": {"files": [k0]}}}},
            resources={"lake": lake, "online_store": online},
            tags={"dagster/sensor_name": serving.SENSOR_NAME, "dagster/run_key": "fold-k0",
                  serving.ATTEMPT_TAG: "1"})
    assert not failed.success
    later = time.time() + watch.RETRY_BACKOFF_MS / 1000 + 60
    monkeypatch.setattr(serving, "time", types.SimpleNamespace(time=lambda: later))

    def tick(inst: dg.DagsterInstance):
        return landing_to_serving(dg.build_sensor_context(
            instance=inst, cursor=None, resources={"lake": lake, "online_store": online}))

    blind = tick(dg.DagsterInstance.ephemeral())  # no record of it: late, as before
    assert blind.run_requests == [] and watch.read_cursor(blind.cursor)[0]["streams"][
        "impressions"]["late"] == [k0]
    seen = tick(instance)  # its run failed: asked again, as its second attempt
    assert [_files(r) for r in seen.run_requests] == [[k0]]
    assert seen.run_requests[0].tags[serving.ATTEMPT_TAG] == "2"
    assert seen.asset_events == []  # nothing reported late
    _materialize(lake, online, [k0])
    assert online.state().folded([k0]) == {k0}


def test_a_cursor_from_runs_keeps_each_file_in_its_latest_run():
    cursor = watch.cursor_from_runs([
        ("fold-a", 1_000, 1, ["x", "y"]), ("fold-b", 2_000, 2, ["y"]), ("fold-c", 1_500, 1, ["z"])])
    assert cursor["runs"] == {"fold-a": {"at": 1_000, "n": 1, "keys": ["x"]},
                              "fold-b": {"at": 2_000, "n": 2, "keys": ["y"]},
                              "fold-c": {"at": 1_500, "n": 1, "keys": ["z"]}}
    assert watch.read_cursor(watch.dump_cursor(cursor)) == (cursor, None)


def test_the_sensor_tells_a_queued_run_from_a_running_or_an_ended_one():
    # A queued run is never taken as dead (`watch.QUEUED`); a started one is, after a while
    # (its worker may have died unseen); an ended one is over; an unknown key is None.
    from types import SimpleNamespace

    from clicklake.assets.serving import _run_over
    from clicklake.platform.online import watch

    with dg.instance_for_test() as instance:
        for key, status in (("s", dg.DagsterRunStatus.STARTED),
                            ("f", dg.DagsterRunStatus.FAILURE)):
            run = instance.create_run_for_job(_noop_job, tags={"dagster/run_key": key})
            if status == dg.DagsterRunStatus.FAILURE:
                instance.report_run_failed(run)
            else:
                instance.handle_new_event(_started(run))
        over = _run_over(instance)
        assert [over(k) for k in ("s", "f", "none")] == [False, True, None]
    # A queued run cannot be made here without a code location: the instance's records, as
    # the run queue leaves them, stood in by their one field read
    queued = SimpleNamespace(get_run_records=lambda *a, **k: [SimpleNamespace(
        dagster_run=SimpleNamespace(status=dg.DagsterRunStatus.QUEUED))])
    assert _run_over(queued)("q") == watch.QUEUED


def _started(run):
    return dg.EventLogEntry(
        error_info=None, level="debug", user_message="", run_id=run.run_id, timestamp=0.0,
        dagster_event=dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, run.job_name))


@dg.op
def _noop() -> None:
    pass


@dg.job
def _noop_job():
    _noop()
