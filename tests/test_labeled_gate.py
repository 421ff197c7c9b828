"""A labeled hour failing a blocking check is not written to the lake (and an earlier copy of it
is removed), so training, which reads every labeled file there, never trains on it."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import dagster as dg
import pyarrow as pa
import pytest

import clicklake.assets.labeled as labeled_mod
from clicklake.assets.labeled import labeled_hours_available, labeled_impressions
from clicklake.assets.profiles import profile_assets
from clicklake.assets.raw import raw_assets
from clicklake.assets.training import training_set
from clicklake.platform.labeled import labeled_key
from clicklake.platform.simulate import generate
from clicklake.platform.timeutil import HOUR_MS, hour_partition_key, parse_instant
from clicklake.resources.lake import LakeResource

warnings.filterwarnings("ignore", category=dg.BetaWarning)
START = parse_instant("2026-11-24T00:00:00Z")  # every landing window long closed


def _refusal(target, key: str, resources: dict, instance) -> str:
    """The error of a run of `target`'s partition `key` that must fail."""
    run = dg.materialize([target], partition_key=key, resources=resources, instance=instance,
                         raise_on_error=False)
    assert not run.success
    failure = next(e for e in run.all_events if e.event_type_value == "STEP_FAILURE")
    return str(failure.event_specific_data.error)


@contextmanager
def _built_chain(tmp_path, hours: int, users: int, seed: int):
    """A generated lake of `hours` hours with its raw hours and profile chains built, in a test
    instance: (lake, partition keys, instance)."""
    lake = LakeResource(root=str(tmp_path))
    generate(lake.store(), start_ms=START, hours=hours, users=users, seed=seed)
    keys = [hour_partition_key(START + i * HOUR_MS) for i in range(hours)]
    with dg.instance_for_test() as instance:
        tags = {"dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1]}
        for group in (raw_assets, profile_assets):
            assert dg.materialize(group, tags=tags, resources={"lake": lake},
                                  instance=instance).success
        yield lake, keys, instance


@pytest.mark.parametrize("group_rows", [None, 1])
def test_a_labeled_hour_failing_a_check_is_not_trained_on(tmp_path, monkeypatch, group_rows):
    """Whether the range's hours are validated together (the default: the group fails, then
    each hour is validated alone) or each alone (`check_group_rows` 1)."""
    from clicklake.platform import quality

    validations = []
    real_checks = quality.run_checks

    def counted(df, checks):
        validations.append(len(df))
        return real_checks(df, checks)

    monkeypatch.setattr(quality, "run_checks", counted)
    config = {} if group_rows is None else {
        "ops": {"labeled_impressions": {"config": {"check_group_rows": group_rows}}}}
    lake = LakeResource(root=str(tmp_path))
    store = lake.store()
    generate(store, start_ms=START, hours=4, users=300, seed=3)
    keys = [hour_partition_key(START + i * HOUR_MS) for i in range(4)]
    resources = {"lake": lake}
    tags = {"dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1]}
    real = labeled_mod.build_labeled_hours

    def one_impression_twice(store, hours, *args, **kwargs):  # hour 1 only
        for hour, table in zip(hours, real(store, hours, *args, **kwargs), strict=True):
            yield pa.concat_tables([table, table.slice(0, 1)]) if hour == START + HOUR_MS \
                else table

    with dg.instance_for_test() as instance:
        for group in (raw_assets, profile_assets):
            assert dg.materialize(group, tags=tags, resources=resources, instance=instance).success
        # hour 1 built fine first, then rebuilt with an impression twice
        assert dg.materialize([labeled_impressions], partition_key=keys[1], resources=resources,
                              instance=instance).success
        assert store.exists(labeled_key(START + HOUR_MS))
        monkeypatch.setattr(labeled_mod, "build_labeled_hours", one_impression_twice)
        validations.clear()
        run = dg.materialize([labeled_impressions], resources=resources, instance=instance,
                             tags={"dagster/asset_partition_range_start": keys[0],
                                   "dagster/asset_partition_range_end": keys[2]},
                             run_config=config, raise_on_error=False)
        monkeypatch.setattr(labeled_mod, "build_labeled_hours", real)
        assert not run.success
        hours = [m.metadata["dagster/row_count"].value
                 for m in run.asset_materializations_for_node("labeled_impressions")]
        assert validations == ([sum(hours)] if group_rows is None else []) + hours
        (check,) = [c for c in run.get_asset_check_evaluations() if not c.passed]
        assert check.check_name == "impression_ids_unique"
        assert check.metadata["failing_hours"].value == keys[1]
        assert labeled_hours_available(store) == [START, START + 2 * HOUR_MS]
        written = {m.partition: m.metadata["written"].value
                   for m in run.asset_materializations_for_node("labeled_impressions")}
        assert written == {keys[0]: True, keys[1]: False, keys[2]: True}

        result = dg.materialize([training_set], resources=resources, instance=instance)
        (mat,) = result.asset_materializations_for_node("training_set")
        rows = sum(store.read_parquet(labeled_key(h)).num_rows
                   for h in (START, START + 2 * HOUR_MS))
        assert mat.metadata["dagster/row_count"].value == rows  # hours 0 and 2, not 1


@pytest.mark.parametrize(("asset", "early", "named"), [
    # Labeled hour H refuses raw H as it refuses raw H+1
    ("labeled_impressions", ("impressions", "clicks", "predictions"), "raw_impressions"),
    # prediction_outcomes of H read raw predictions of H: they could lack late predictions
    ("prediction_outcomes", ("predictions",), "raw_predictions"),
])
def test_an_hour_waits_for_the_raw_hours_it_reads_to_be_complete(tmp_path, asset, early, named):
    """A raw hour built before its landing window closed (here: built again with a week of
    allowed lateness, so its window is still open) is refused by the hours reading it."""
    from clicklake.assets.labeled import labeled_assets

    target = next(a for a in labeled_assets if a.key.path == [asset])
    with _built_chain(tmp_path, hours=3, users=200, seed=5) as (lake, keys, instance):
        resources = {"lake": lake}
        assert dg.materialize([target], partition_key=keys[1], resources=resources,
                              instance=instance).success
        rebuilt = [a for a in raw_assets if a.key.path[0].removeprefix("raw_") in early]
        with pytest.MonkeyPatch.context() as env:  # a week's lateness for this run only
            env.setenv("CLICKLAKE_ALLOWED_LATENESS_MINUTES", str(7 * 24 * 60))
            assert dg.materialize(rebuilt, partition_key=keys[1], resources=resources,
                                  instance=instance).success
        said = _refusal(target, keys[1], resources, instance)
        assert f"{named} {keys[1]} read its landing files at" in said, said


def test_a_raw_hour_is_judged_by_when_it_read_the_landing_zone(tmp_path, monkeypatch):
    """A raw run that listed the landing zone before the window closed (with Firehose's buffer)
    and recorded the hour after it: the guard compared the recording time, and passed an hour
    that may lack the files landing in between."""
    import clicklake.assets.raw as raw_mod
    from clicklake.assets.labeled import labeled_assets

    target = next(a for a in labeled_assets if a.key.path == ["labeled_impressions"])
    with _built_chain(tmp_path, hours=3, users=200, seed=5) as (lake, keys, instance):
        resources = {"lake": lake}
        # hour 2 listed at 03:10 (its window closes at 04:00 + 15 min), recorded now
        listed = (START + 3 * HOUR_MS + 10 * 60_000) / 1000
        monkeypatch.setattr(raw_mod, "_clock", lambda: listed)
        assert dg.materialize(raw_assets, partition_key=keys[2], resources=resources,
                              instance=instance).success
        monkeypatch.undo()
        said = _refusal(target, keys[1], resources, instance)
        assert f"raw_impressions {keys[2]} read its landing files at" in said, said


@pytest.mark.parametrize(("asset", "hour"), [
    ("user_profiles", 1), ("segment_profiles", 1), ("raw_predictions", 0),
    ("raw_predictions", 2)])
def test_an_hour_whose_inputs_were_never_built_is_refused(tmp_path, asset, hour):
    """Labeled hour 2 reads the user snapshot and the segment profile of hour 1 and the raw
    predictions of hours 0 to 2. One never built (deleted here) was read as "nothing happened"
    and the run passed: a missing user snapshot made the features come from an older one and its
    raw hours (66 of 116 rows differed from a build from scratch), a missing segment profile
    every segment CTR and lift the defaults, missing predictions no latest score."""
    from clicklake.platform.profiles import snapshot_key
    from clicklake.platform.raw import raw_key
    from clicklake.platform.segments import segment_key

    key = {"user_profiles": snapshot_key, "segment_profiles": segment_key,
           "raw_predictions": lambda h: raw_key("predictions", h)}[asset](START + hour * HOUR_MS)
    with _built_chain(tmp_path, hours=4, users=100, seed=3) as (lake, keys, instance):
        store = lake.store()
        assert store.exists(key)
        store.delete(key)
        run = dg.materialize([labeled_impressions], partition_key=keys[2], instance=instance,
                             resources={"lake": lake}, raise_on_error=False)
        assert not run.success
        [failure] = [e for e in run.all_events if e.event_type_value == "STEP_FAILURE"]
        message = failure.step_failure_data.user_failure_data.description
        assert f"reads {asset} {keys[hour]}, never materialized" in message, message
        assert ("deleted by the snapshot retention" in message) == (asset == "user_profiles")
        assert not store.exists(labeled_key(START + 2 * HOUR_MS))


@pytest.mark.parametrize("asset", ["labeled_impressions", "prediction_outcomes"])
def test_a_range_refused_at_a_later_hour_writes_none_of_its_hours(tmp_path, asset):
    """A ranged run (as a backfill launches) whose last hour's next raw hour is not built yet:
    it failed at that hour after writing the hours before it, which training_set then read
    while Dagster recorded none of them (the run's hours are recorded together at its end);
    prediction_outcomes' files likewise, with no metrics in the UI."""
    from clicklake.assets.labeled import labeled_assets

    lake = LakeResource(root=str(tmp_path))
    store = lake.store()
    generate(store, start_ms=START, hours=4, users=200, seed=5)
    keys = [hour_partition_key(START + i * HOUR_MS) for i in range(4)]
    span = {"dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[2]}
    with dg.instance_for_test() as instance:
        for group in (raw_assets, profile_assets):  # raw hour 3 not built yet
            assert dg.materialize(group, tags=span, resources={"lake": lake},
                                  instance=instance).success
        target = next(a for a in labeled_assets if a.key.path == [asset])
        run = dg.materialize([target], tags=span, resources={"lake": lake},
                             instance=instance, raise_on_error=False)
        assert not run.success
        failure = next(e for e in run.all_events if e.event_type_value == "STEP_FAILURE")
        assert f"raw_impressions {keys[3]} is not materialized yet" in str(
            failure.event_specific_data.error)
        assert labeled_hours_available(store) == []
        assert not store.list("lake/outcomes")
        assert not instance.fetch_materializations(dg.AssetKey(asset), limit=5).records


@pytest.mark.parametrize(("stream", "hour"), [("predictions", 1), ("clicks", 2)])
def test_outcomes_of_an_hour_whose_raw_file_is_gone_are_refused_clearly(tmp_path, stream, hour):
    """A raw hour recorded as built whose file is gone (deleted, another instance's record):
    prediction_outcomes ended in a FileNotFoundError traceback."""
    from clicklake.assets.labeled import labeled_assets
    from clicklake.platform.raw import raw_key

    target = next(a for a in labeled_assets if a.key.path == ["prediction_outcomes"])
    with _built_chain(tmp_path, hours=4, users=100, seed=3) as (lake, keys, instance):
        lake.store().delete(raw_key(stream, START + hour * HOUR_MS))
        said = _refusal(target, keys[1], {"lake": lake}, instance)
        assert f"reads raw_{stream} {keys[hour]}, never materialized" in said, said


def test_an_hour_whose_snapshot_sits_on_an_early_raw_hour_is_refused(tmp_path, monkeypatch):
    """Raw hour 1 read its landing files before its window closed; the snapshots of hours 1
    and 2 were folded on it. Labeled hour 3 (features from snapshot 2) checked only raw 3 and 4,
    and passed: a user's lifetime impressions 18 where the complete hour gives 21."""
    import clicklake.assets.raw as raw_mod

    with _built_chain(tmp_path, hours=5, users=150, seed=5) as (lake, keys, instance):
        resources = {"lake": lake}
        assert dg.materialize([labeled_impressions], partition_key=keys[3], resources=resources,
                              instance=instance).success
        monkeypatch.setattr(raw_mod, "_clock", lambda: (START + 2 * HOUR_MS) / 1000)
        assert dg.materialize(raw_assets, partition_key=keys[1], resources=resources,
                              instance=instance).success
        monkeypatch.undo()
        snaps = [a for a in profile_assets if a.key.path == ["user_profiles"]]
        run = dg.materialize(snaps, resources=resources, instance=instance,
                             tags={"dagster/asset_partition_range_start": keys[1],
                                   "dagster/asset_partition_range_end": keys[2]})
        meta = {m.partition: m.metadata["inputs_incomplete"].value
                for m in run.asset_materializations_for_node("user_profiles")}
        via = (f"via user_profiles {keys[1]}: raw_impressions {keys[1]} read early; raw_clicks "
               f"{keys[1]} read early")
        assert meta == {keys[1]: f"raw_impressions {keys[1]} read early; raw_clicks {keys[1]} "
                                 "read early",
                        keys[2]: via, keys[3]: via, keys[4]: via}  # 3 and 4 refolded on them
        again = dg.materialize([labeled_impressions], partition_key=keys[3], resources=resources,
                               instance=instance, raise_on_error=False)
        assert not again.success
        failure = next(e for e in again.all_events if e.event_type_value == "STEP_FAILURE")
        assert f"user_profiles {keys[2]}, which hour {keys[3]}'s features are read from" in str(
            failure.event_specific_data.error), failure


def test_a_snapshot_rebuild_names_the_labeled_hours_built_on_the_old_chain(tmp_path):
    with _built_chain(tmp_path, hours=4, users=100, seed=3) as (lake, keys, instance):
        run = dg.materialize([labeled_impressions], instance=instance, resources={"lake": lake},
                             tags={"dagster/asset_partition_range_start": keys[1],
                                   "dagster/asset_partition_range_end": keys[2]})
        assert run.success
        snaps = [a for a in profile_assets if a.key.path == ["user_profiles"]]
        run = dg.materialize(snaps, partition_key=keys[0], resources={"lake": lake},
                             instance=instance)
        [own] = [m.metadata for m in run.asset_materializations_for_node("user_profiles")
                 if m.partition == keys[0]]
        assert own["labeled_hours_on_old_snapshots"].value == (
            f"2 labeled hours from {keys[1]} to {keys[2]}")


def test_a_rebuild_at_the_chains_end_names_the_labeled_hours_built_on_it_too(tmp_path):
    # Rebuilding snapshots 1 and 2 when no later snapshot exists: the labeled hours read them
    # (2 and 3) were named only when later snapshots were refolded, here by nobody.
    with _built_chain(tmp_path, hours=4, users=100, seed=3) as (lake, keys, instance):
        assert dg.materialize([labeled_impressions], instance=instance, resources={"lake": lake},
                              tags={"dagster/asset_partition_range_start": keys[1],
                                    "dagster/asset_partition_range_end": keys[2]}).success
        from clicklake.platform.profiles import snapshot_key

        lake.store().delete(snapshot_key(START + 3 * HOUR_MS))  # the chain now ends at hour 2
        snaps = [a for a in profile_assets if a.key.path == ["user_profiles"]]
        run = dg.materialize(snaps, resources={"lake": lake}, instance=instance,
                             tags={"dagster/asset_partition_range_start": keys[1],
                                   "dagster/asset_partition_range_end": keys[2]})
        meta = {m.partition: m.metadata for m in run.asset_materializations_for_node(
            "user_profiles")}
        # labeled 2 read snapshot 1 (rebuilt); labeled 3, reading snapshot 2, was never built
        assert meta[keys[2]]["labeled_hours_on_old_snapshots"].value == (
            f"1 labeled hours from {keys[2]} to {keys[2]}")


@pytest.mark.parametrize(("first", "refolded"), [
    # the range's second hour: refused as it is built; the first is written
    (0, 1),
    # the range's first hour, refolded after its build while it waits in its group to be
    # written (hours are checked a group at a time): refused just before its write
    (1, 0),
])
def test_an_hour_whose_snapshot_is_refolded_while_it_is_built_is_not_written(
        tmp_path, monkeypatch, first, refolded):
    """user_profiles refolds the chain (after a rebuilt hour) while a ranged labeled run builds:
    the run's later hour was written from the old snapshot after the refold had named the
    labeled hours to redo, and kept stale features with nothing saying so."""
    from clicklake.platform import profiles

    real = labeled_mod.build_labeled_hours

    def refolded_meanwhile(store, hours, *args, **kwargs):
        tables = real(store, hours, *args, **kwargs)
        yield next(tables)
        # the refold rewrites the snapshot an hour was built from (a new identity)
        key = profiles.snapshot_key(hours[refolded] - HOUR_MS)
        store.write_parquet(key, profiles.stamp_snapshot(store.read_parquet(key), "", ""))
        yield from tables

    refused = first + refolded
    with _built_chain(tmp_path, hours=4, users=200, seed=5) as (lake, keys, instance):
        monkeypatch.setattr(labeled_mod, "build_labeled_hours", refolded_meanwhile)
        run = dg.materialize([labeled_impressions], resources={"lake": lake}, instance=instance,
                             tags={"dagster/asset_partition_range_start": keys[first],
                                   "dagster/asset_partition_range_end": keys[2]},
                             raise_on_error=False)
        assert not run.success
        failure = next(e for e in run.all_events if e.event_type_value == "STEP_FAILURE")
        assert f"user_profiles {keys[refused - 1]} was rebuilt while this run built labeled " \
               f"hour {keys[refused]}" in str(failure.event_specific_data.error)
    store = lake.store()
    assert [store.exists(labeled_key(START + h * HOUR_MS)) for h in range(first, refused + 1)
            ] == [True] * refolded + [False]


@pytest.mark.parametrize("dies_in", ["raw_impressions", "user_profiles"])
def test_an_early_raw_hour_is_known_from_the_files_when_its_run_died(tmp_path, monkeypatch,
                                                                      dies_in):
    """Raw impressions of hour 1 read their landing files early (a manual run before the window
    closed); then a run dies after writing files but before Dagster records its hours: the raw
    run itself, or the user_profiles run folding the chain over hour 1. The warning travelled
    only in the records, so the snapshots folded after took the chain as complete and labeled
    hour 6 was built on events that may be missing."""
    import clicklake.assets.raw as raw_mod
    from clicklake.assets.profiles import user_hour_tiles, user_profiles
    from clicklake.platform import profiles, quality

    lake = LakeResource(root=str(tmp_path))
    generate(lake.store(), start_ms=START, hours=8, users=200, seed=5)
    keys = [hour_partition_key(START + i * HOUR_MS) for i in range(8)]
    res = {"lake": lake}
    raw_imp = next(a for a in raw_assets if a.key.path == ["raw_impressions"])

    def span(a: int, b: int) -> dict:
        return {"dagster/asset_partition_range_start": keys[a],
                "dagster/asset_partition_range_end": keys[b]}

    with dg.instance_for_test() as instance:
        assert dg.materialize(raw_assets, tags=span(0, 7), resources=res,
                              instance=instance).success
        with monkeypatch.context() as m:  # hour 1 again, listed before its window closed
            m.setattr(raw_mod, "_clock", lambda: (START + 2 * HOUR_MS) / 1000)
            if dies_in == "raw_impressions":  # ... and the run killed in its checks
                m.setattr(quality, "run_checks", lambda *a, **k: (_ for _ in ()).throw(
                    SystemExit("killed")))
            run = dg.materialize([raw_imp], partition_key=keys[1], resources=res,
                                 instance=instance, raise_on_error=False)
            assert run.success == (dies_in != "raw_impressions")
        others = [a for a in profile_assets if a.key.path != ["user_profiles"]]
        assert dg.materialize(others, tags=span(0, 7), resources=res, instance=instance).success
        assert user_hour_tiles in others
        if dies_in == "user_profiles":
            real = profiles.fold_linked

            def dies_at_hour_3(prev, prev_id, tile, hour):
                if hour == START + 3 * HOUR_MS:
                    raise SystemExit("killed")
                return real(prev, prev_id, tile, hour)

            with monkeypatch.context() as m:
                m.setattr(profiles, "fold_linked", dies_at_hour_3)
                assert not dg.materialize([user_profiles], tags=span(0, 3), resources=res,
                                          instance=instance, raise_on_error=False).success
        assert dg.materialize([user_profiles], tags=span(0 if dies_in != "user_profiles" else 4,
                                                         5), resources=res,
                              instance=instance).success
        message = _refusal(labeled_impressions, keys[6], res, instance)
    assert f"raw_impressions {keys[1]} read early" in message, message
