"""The deployment's settings (`platform.settings`): read from the environment by every run, tick
and reader, so the raw layer, the online fold, the schedule and the training set agree on them."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import dagster as dg
import pyarrow as pa
import pytest
from landing_factory import MIN, H, impression, land

import clicklake.assets.raw as raw_assets_module
from clicklake.assets.training import _one_label_window_s
from clicklake.definitions import defs
from clicklake.platform.labeled import META_LABEL_WINDOW, labeled_key
from clicklake.platform.raw import read_raw
from clicklake.platform.settings import Settings, settings
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, hour_partition_key
from clicklake.resources.lake import LakeResource
from clicklake.resources.online_store import SqliteOnlineStore


def test_settings_are_read_from_the_environment_with_clear_errors():
    assert settings({}) == Settings(60, 15, 15, 30)
    assert settings({"CLICKLAKE_ALLOWED_LATENESS_MINUTES": " 120 ",
                     "CLICKLAKE_RETENTION_DAYS": "90"}) == Settings(120, 15, 15, 90)
    assert settings({"CLICKLAKE_LABEL_WINDOW_MINUTES": ""}).label_window_ms == 15 * MIN
    for name, bad, says in (("CLICKLAKE_RETENTION_DAYS", "0", "must be from 2 to 36500"),
                            ("CLICKLAKE_RETENTION_DAYS", "-3", "must be from 2 to 36500"),
                            ("CLICKLAKE_LABEL_WINDOW_MINUTES", "90", "must be from 1 to 60"),
                            ("CLICKLAKE_FUTURE_TOLERANCE_MINUTES", "1.5", "a whole number")):
        with pytest.raises(ValueError, match=f"{name}=.*{says}"):
            settings({name: bad})


def _asset(name: str) -> dg.AssetsDefinition:
    return next(a for a in defs.assets if a.key.to_user_string() == name)


def test_the_online_fold_keeps_what_the_raw_layer_keeps_under_a_longer_lateness(
        tmp_path, monkeypatch):
    """An event landing 90 minutes after its hour ended: kept by raw and folded online under a
    deployment lateness of 120 minutes (the fold used the default 60 whatever raw used: one
    impression online, two in the lake)."""
    monkeypatch.setenv("CLICKLAKE_ALLOWED_LATENESS_MINUTES", "120")
    store = Store(str(tmp_path))
    land(store, "impressions", H + 10 * MIN, [impression("i1", H + 10 * MIN)], "1")
    land(store, "impressions", H + 2 * HOUR_MS + 30 * MIN,
         [impression("late90", H + 20 * MIN)], "2")
    monkeypatch.setattr(raw_assets_module, "_clock", lambda: (H + 4 * HOUR_MS) / 1000)
    online = SqliteOnlineStore(path=str(tmp_path / "online.db"))
    resources = {"lake": LakeResource(root=str(tmp_path)), "online_store": online}
    with dg.instance_for_test() as instance:
        raw = dg.materialize([_asset("raw_impressions")], resources=resources,
                             instance=instance, partition_key=hour_partition_key(H))
        fold = dg.materialize([_asset("serving_lookup")], resources=resources,
                              instance=instance)
    assert sorted(read_raw(store, "impressions", H)["impression_id"].to_pylist()) == [
        "i1", "late90"]
    meta = raw.get_asset_materialization_events()[0].materialization.metadata
    assert meta["allowed_lateness_minutes"].value == 120
    meta = fold.get_asset_materialization_events()[0].materialization.metadata
    assert (meta["events_folded"].value, meta["quarantined"].value) == (2, {})
    assert meta["allowed_lateness_minutes"].value == 120
    assert online.features().profile("u1", H + HOUR_MS)["impressions"] == 2


@pytest.mark.parametrize(("lateness", "built"), [(None, "13:00"), ("60", "13:00"),
                                                 ("90", "12:00"), ("0", "14:00")])
def test_the_schedule_waits_for_the_deployments_lateness(monkeypatch, lateness, built):
    """Hour H's window closes at H + 1 h + the lateness; the HH:15 tick after it builds H."""
    if lateness is not None:
        monkeypatch.setenv("CLICKLAKE_ALLOWED_LATENESS_MINUTES", lateness)
    schedule = defs.resolve_schedule_def("raw_hourly_schedule")
    when = datetime(2026, 11, 25, 15, 15, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                        repository_def=defs.get_repository_def())
        requests = list(schedule.evaluate_tick(ctx).run_requests)
    assert [r.partition_key for r in requests] == [f"2026-11-25-{built}"]


def test_a_training_set_over_two_label_windows_is_refused(tmp_path):
    store = Store(str(tmp_path))
    hours = [H + i * HOUR_MS for i in range(3)]
    for h, minutes in zip(hours, (60, 15, 15), strict=True):
        table = pa.table({"label": pa.array([0], pa.int8())}).replace_schema_metadata(
            {META_LABEL_WINDOW: str(minutes * MIN)})
        store.write_parquet(labeled_key(h), table)
    assert _one_label_window_s(store, "lake", hours[1:]) == 15 * 60
    with pytest.raises(dg.Failure, match=r"different label windows \(15 min: 2026-11-25-14:00, "
                       r"2026-11-25-15:00; 60 min: 2026-11-25-13:00\)"):
        _one_label_window_s(store, "lake", hours)


@pytest.mark.parametrize(("lateness", "hours"), [("60", 24), ("120", 25), ("1440", 47),
                                                 ("10080", 191)])
def test_the_automation_looks_back_past_the_schedules_delay(lateness, hours):
    """A lateness of a day or more delays the schedule past the automation's 24 h look-back:
    nothing followed the hours it built. The look-back grows with the lateness (read when the
    definitions load: a fresh interpreter each)."""
    import subprocess
    import sys

    from clicklake.schedules import raw_window_closes_after

    code = "from clicklake.assets.automation import CATCH_UP; print(CATCH_UP.total_seconds())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ,
                                          "CLICKLAKE_ALLOWED_LATENESS_MINUTES": lateness}).stdout
    catch_up = timedelta(seconds=float(out))
    assert catch_up == timedelta(hours=hours)
    assert catch_up - raw_window_closes_after(int(lateness)) >= timedelta(hours=22)
