"""The daemon's automation builds the hourly chain by itself: once the schedule has built a raw
hour, its tiles and snapshots follow, and so do the labeled hour and prediction outcomes that
were waiting for it; a raw hour failing a blocking check is refused by every run built on it,
while the hours after it go on. Evaluated with Dagster's own `evaluate_automation_conditions`,
as the daemon's sensor ticks."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta

import dagster as dg
import pyarrow as pa
import pytest

import clicklake.assets.raw as raw_mod
from clicklake.assets.labeled import labeled_assets
from clicklake.assets.profiles import profile_assets
from clicklake.assets.raw import raw_assets
from clicklake.platform.simulate import generate
from clicklake.platform.timeutil import HOUR_MS, hour_partition_key
from clicklake.resources.lake import LakeResource

warnings.filterwarnings("ignore", category=dg.BetaWarning)
DOWNSTREAM = [*profile_assets, *labeled_assets]


def _requested(result) -> dict[str, list[str]]:
    return {a.key.to_user_string(): sorted(result.get_requested_partitions(a.key))
            for a in DOWNSTREAM}


@pytest.fixture(scope="module")
def now() -> datetime:
    return datetime.now(UTC)


def test_the_chain_follows_the_schedule_and_stops_at_a_failed_check(tmp_path, now, monkeypatch):
    now_hour = int(now.timestamp() * 1000) // HOUR_MS * HOUR_MS
    h = now_hour - 6 * HOUR_MS  # hours h..h+3: landing windows closed by now
    lake = LakeResource(root=str(tmp_path))
    generate(lake.store(), start_ms=h, hours=4, users=120, seed=11)
    key = hour_partition_key
    resources = {"lake": lake}
    defs = dg.Definitions(assets=[*raw_assets, *DOWNSTREAM], resources=resources)
    with dg.instance_for_test() as instance:
        cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                                   evaluation_time=now).cursor
        # What a first backfill leaves: every hourly asset up to hour h (labeled hours read a
        # day of predictions and the snapshots before them).
        tags = {"dagster/asset_partition_range_start": key(h - 24 * HOUR_MS),
                "dagster/asset_partition_range_end": key(h)}
        for group in (raw_assets, profile_assets):
            assert dg.materialize(group, tags=tags, resources=resources,
                                  instance=instance).success
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor,
                                                 evaluation_time=now + timedelta(minutes=1))
        cursor = tick.cursor
        assert key(h) not in _requested(tick)["labeled_impressions"]  # raw h+1 not built yet

        # The schedule builds raw h+1: its tiles and snapshots follow, and labeled hour h.
        assert dg.materialize(raw_assets, partition_key=key(h + HOUR_MS), resources=resources,
                              instance=instance).success
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor,
                                                 evaluation_time=now + timedelta(minutes=2))
        cursor = tick.cursor
        assert _requested(tick) == {
            "user_hour_tiles": [key(h + HOUR_MS)], "user_profiles": [key(h + HOUR_MS)],
            "segment_profiles": [key(h + HOUR_MS)], "labeled_impressions": [key(h)],
            "prediction_outcomes": [key(h)]}

        # Raw h+2 fails a blocking check (a click id twice); raw h+3 passes after it.
        real = raw_mod.build_raw_partition

        def one_click_twice(*args, **kwargs):
            part = real(*args, **kwargs)
            if args[1] == "clicks":
                part.table = pa.concat_tables([part.table, part.table.slice(0, 1)])
            return part

        monkeypatch.setattr(raw_mod, "build_raw_partition", one_click_twice)
        run = dg.materialize(raw_assets, partition_key=key(h + 2 * HOUR_MS), resources=resources,
                             instance=instance, raise_on_error=False)
        monkeypatch.setattr(raw_mod, "build_raw_partition", real)
        assert not run.success
        assert [c.check_name for c in run.get_asset_check_evaluations() if not c.passed] == [
            "ids_present_and_unique"]
        assert dg.materialize(raw_assets, partition_key=key(h + 3 * HOUR_MS),
                              resources=resources, instance=instance).success
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor,
                                                 evaluation_time=now + timedelta(minutes=3))
        # Dagster's check results are per asset, not per hour: the good hour after the bad one
        # is not held back (the latest result failed), and the bad hour is not released by it
        # (the latest result passed): each run built on raw h+2 refuses it by its own metadata.
        assert key(h + 3 * HOUR_MS) in _requested(tick)["user_hour_tiles"]
        by_name = {a.key.to_user_string(): a for a in DOWNSTREAM}
        refused = [("user_hour_tiles", h + 2 * HOUR_MS), ("user_profiles", h + 2 * HOUR_MS),
                   ("segment_profiles", h + 3 * HOUR_MS),  # raw h+2 is its hour before
                   ("labeled_impressions", h + HOUR_MS),  # raw h+2 is its next hour
                   ("prediction_outcomes", h + 2 * HOUR_MS)]
        for name, hour in refused:
            run = dg.materialize([by_name[name]], partition_key=key(hour), resources=resources,
                                 instance=instance, raise_on_error=False)
            assert not run.success, name
            failure = next(e for e in run.all_events if e.event_type_value == "STEP_FAILURE")
            assert (f"raw_clicks {key(h + 2 * HOUR_MS)} failed its blocking checks "
                    "(ids_present_and_unique)") in str(failure.event_specific_data.error), name
        assert dg.materialize([by_name["user_hour_tiles"]], partition_key=key(h + 3 * HOUR_MS),
                              resources=resources, instance=instance).success


def test_a_labeled_hour_refuses_a_failed_predictions_hour_it_reads(tmp_path, monkeypatch):
    """Labeled hours read a day of raw predictions for the latest scores: a predictions hour
    failing `score_in_unit_interval` is refused, as impressions and clicks are."""
    now_hour = int(datetime.now(UTC).timestamp() * 1000) // HOUR_MS * HOUR_MS
    h = now_hour - 5 * HOUR_MS
    lake = LakeResource(root=str(tmp_path))
    generate(lake.store(), start_ms=h, hours=2, users=120, seed=11)
    resources = {"lake": lake}
    key = hour_partition_key
    with dg.instance_for_test() as instance:
        tags = {"dagster/asset_partition_range_start": key(h),
                "dagster/asset_partition_range_end": key(h + HOUR_MS)}
        assert dg.materialize(raw_assets, tags=tags, resources=resources,
                              instance=instance).success
        real = raw_mod.build_raw_partition

        def a_score_above_one(*args, **kwargs):
            part = real(*args, **kwargs)
            if args[1] == "predictions":
                scores = part.table["score"].to_pylist()
                scores[0] = 1.5
                part.table = part.table.set_column(
                    part.table.schema.get_field_index("score"), "score",
                    pa.array(scores, part.table.schema.field("score").type))
            return part

        monkeypatch.setattr(raw_mod, "build_raw_partition", a_score_above_one)
        raw_predictions = next(a for a in raw_assets if a.key.path == ["raw_predictions"])
        run = dg.materialize([raw_predictions], partition_key=key(h), resources=resources,
                             instance=instance, raise_on_error=False)
        monkeypatch.setattr(raw_mod, "build_raw_partition", real)
        assert not run.success
        labeled = next(a for a in labeled_assets if a.key.path == ["labeled_impressions"])
        run = dg.materialize([labeled], partition_key=key(h), resources=resources,
                             instance=instance, raise_on_error=False)
        assert not run.success
        failure = next(e for e in run.all_events if e.event_type_value == "STEP_FAILURE")
        assert (f"raw_predictions {key(h)} failed its blocking checks (score_in_unit_interval)"
                in str(failure.event_specific_data.error)), failure


def test_the_definitions_evaluate_the_hourly_chain_with_their_own_sensor():
    from clicklake.definitions import defs

    sensor = defs.resolve_sensor_def("hourly_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    targeted = {k.to_user_string() for k in sensor.asset_selection.resolve(graph)}
    assert targeted == {a.key.to_user_string() for a in DOWNSTREAM}
    for name in targeted:
        condition = graph.get(dg.AssetKey(name)).automation_condition
        assert condition.get_label() == "eager over the last 24 h", name
