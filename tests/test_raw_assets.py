"""The raw hourly assets through Dagster: metadata, quarantine, idempotence, GX checks, S3."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest

from clicklake.assets.raw import raw_assets
from clicklake.platform import raw
from clicklake.platform.quality import run_checks
from clicklake.platform.raw_quality import raw_check_specs
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, hour_partition_key
from clicklake.resources.lake import LakeResource
from tests.landing_factory import MIN, H, click, impression, land, prediction

KEY = "2026-11-25-13:00"


def _landing(store: Store) -> None:
    land(store, "impressions", H + 5 * MIN, [
        impression("i1", H + MIN, cost=0.01),
        impression("i2", H + 2 * MIN, user="u2"),
        impression("i1", H + MIN, cost=0.01),  # re-delivered
        b'{"impression_id": "i3", "ts":',  # truncated
        impression("i4", "yesterday"),
    ], tag="1")
    land(store, "impressions", H + 70 * MIN, [impression("i5", H + 59 * MIN)], tag="2")  # in time
    land(store, "clicks", H + 6 * MIN, [click("k1", H + 3 * MIN, "i1")], tag="3")
    land(store, "predictions", H + 5 * MIN, [
        prediction("p1", H + MIN - 5, 0.2), prediction("p2", H + MIN, 1.5)], tag="4")


def _materialize(lake: LakeResource, key: str = KEY, assets=raw_assets):
    return dg.materialize(assets, partition_key=key, resources={"lake": lake})


def _metadata(result, name):
    mats = result.asset_materializations_for_node(name)
    assert len(mats) == 1
    return {k: v.value for k, v in mats[0].metadata.items()}


def test_raw_partitions_keep_dedupe_and_quarantine(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    store = lake.store()
    _landing(store)
    result = _materialize(lake)
    assert result.success
    meta = _metadata(result, "raw_impressions")
    assert meta["dagster/row_count"] == 3
    assert meta["rows_quarantined"] == 3
    assert (meta["quarantined_duplicate"], meta["quarantined_malformed"],
            meta["quarantined_bad_type"]) == (1, 1, 1)
    assert [c.name for c in meta["dagster/column_schema"].columns][:2] == ["impression_id", "ts"]
    table = raw.read_raw(store, "impressions", H)
    assert table.column("impression_id").to_pylist() == ["i1", "i2", "i5"]
    assert _metadata(result, "raw_clicks")["dagster/row_count"] == 1
    pmeta = _metadata(result, "raw_predictions")
    assert (pmeta["dagster/row_count"], pmeta["quarantined_bad_value"]) == (1, 1)
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 8 and all(c.passed for c in checks)


def test_rematerializing_gives_the_same_bytes(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    store = lake.store()
    _landing(store)
    _materialize(lake)
    first = store.read_bytes(raw.raw_key("impressions", H))
    first_q = store.read_bytes(raw.quarantine_key("impressions", H))
    _materialize(lake)
    assert store.read_bytes(raw.raw_key("impressions", H)) == first
    assert store.read_bytes(raw.quarantine_key("impressions", H)) == first_q


def _refusal(lake: LakeResource, key: str = KEY, assets=raw_assets, **run) -> str:
    result = dg.materialize(assets, partition_key=key, resources={"lake": lake},
                            raise_on_error=False, **run)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return str(failure.event_specific_data.error)


def test_a_rebuild_after_landing_files_expired_keeps_the_partition(tmp_path):
    """Landing files expire (90 days in the template) and raw partitions stay: a rebuild then
    replaced the hour with what was left (nothing, after the whole window), every check
    passing. The partition records the files it was built from; a rebuild missing any is
    refused, naming the hour, whichever instance built it. Deleting the partition first
    rebuilds it from what is left."""
    lake = LakeResource(root=str(tmp_path))
    store = lake.store()
    _landing(store)
    assert _materialize(lake).success
    kept = store.read_bytes(raw.raw_key("impressions", H))
    (gone,) = [k for k in store.list("landing/impressions/") if "000000000001" in k]
    store.delete(gone)  # one of the two impression files expired
    said = _refusal(lake)
    assert f"{KEY}: 1 of its landing files gone, e.g. {gone}" in said
    assert "raw_impressions: rebuilt, 1 hour(s) would lose" in said
    assert store.read_bytes(raw.raw_key("impressions", H)) == kept
    store.delete(raw.raw_key("impressions", H))
    assert _materialize(lake).success
    assert raw.read_raw(store, "impressions", H).num_rows == 1  # i5, of the file left


def test_a_lost_file_is_seen_beside_a_new_one_and_a_range_is_checked_first(tmp_path):
    """A count of files hid a lost one behind a late one; a range refused at its second hour
    had rewritten its first (without recording it)."""
    lake = LakeResource(root=str(tmp_path))
    store = lake.store()
    a = land(store, "impressions", H + 5 * MIN, [impression("a", H + MIN)], tag="1")
    b = land(store, "impressions", H + HOUR_MS + 5 * MIN, [impression("b", H + HOUR_MS + MIN)],
             tag="2")
    both = {"dagster/asset_partition_range_start": KEY,
            "dagster/asset_partition_range_end": hour_partition_key(H + HOUR_MS)}
    imps = [a for a in raw_assets if a.key.path == ["raw_impressions"]]
    assert dg.materialize(imps, tags=both, resources={"lake": lake}).success
    first = store.read_bytes(raw.raw_key("impressions", H))
    store.delete(b)  # hour 14 loses b ...
    land(store, "impressions", H + HOUR_MS + 10 * MIN,  # ... as c lands (read by 13 and 14)
         [impression("c", H + HOUR_MS + 2 * MIN), impression("late", H + 30 * MIN)], tag="3")
    result = dg.materialize(imps, tags=both, resources={"lake": lake}, raise_on_error=False)
    assert not result.success
    assert store.read_bytes(raw.raw_key("impressions", H)) == first  # 13 not rewritten
    assert raw.read_raw(store, "impressions", H + HOUR_MS)["impression_id"].to_pylist() == ["b"]
    assert a in store.list("landing/impressions/")


def test_a_lower_lateness_rebuilds_without_the_files_it_no_longer_reads(tmp_path, monkeypatch):
    """Lowering the lateness shrinks the hours a raw hour reads (the README says to rebuild them
    after a change): the files beyond are not asked for."""
    lake = LakeResource(root=str(tmp_path))
    store = lake.store()
    land(store, "impressions", H + 5 * MIN, [impression("a", H + MIN)], tag="1")
    land(store, "impressions", H + 2 * HOUR_MS + 30 * MIN, [impression("late", H + 9 * MIN)],
         tag="2")
    imps = [a for a in raw_assets if a.key.path == ["raw_impressions"]]
    monkeypatch.setenv("CLICKLAKE_ALLOWED_LATENESS_MINUTES", "120")
    assert _materialize(lake, assets=imps).success
    assert raw.read_raw(store, "impressions", H).num_rows == 2
    monkeypatch.setenv("CLICKLAKE_ALLOWED_LATENESS_MINUTES", "60")
    assert _materialize(lake, assets=imps).success
    assert raw.read_raw(store, "impressions", H)["impression_id"].to_pylist() == ["a"]


def test_a_partition_of_an_older_clicklake_is_kept_when_no_landing_file_is_left(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    store = lake.store()
    _landing(store)
    imps = [a for a in raw_assets if a.key.path == ["raw_impressions"]]
    assert _materialize(lake, assets=imps).success
    key = raw.raw_key("impressions", H)
    store.write_parquet(key, raw.read_raw(store, "impressions", H).replace_schema_metadata())
    for k in store.list("landing/impressions/"):
        store.delete(k)
    assert "no landing file left of a partition built by an older clicklake" in _refusal(
        lake, assets=imps)
    assert raw.read_raw(store, "impressions", H).num_rows == 3


def test_gx_checks_fail_on_a_bad_partition():
    bad = pd.DataFrame({
        "impression_id": ["a", "a", None],
        "user_id": ["u", "u", "u"],
        "ts": pd.to_datetime([H, H + 3_600_000, H + 10], unit="ms", utc=True),
        "cost": [0.1, -0.5, None],
    })
    outcomes = {o.name: o for o in run_checks(bad, raw_check_specs("impressions", H))}
    assert not outcomes["ids_present_and_unique"].passed
    assert outcomes["ids_present_and_unique"].failures == {"not_null(impression_id)": 1,
                                                           "unique(impression_id)": 2}
    assert not outcomes["ts_in_partition"].passed
    assert not outcomes["cost_non_negative"].passed
    scores = pd.DataFrame({"prediction_id": ["p"], "user_id": ["u"], "score": [1.2],
                           "ts": pd.to_datetime([H], unit="ms", utc=True)})
    outcomes = {o.name: o for o in run_checks(scores, raw_check_specs("predictions", H))}
    assert not outcomes["score_in_unit_interval"].passed and outcomes["ts_in_partition"].passed


def test_a_failing_check_blocks_the_run(tmp_path, monkeypatch):
    """Should the engine ever emit a bad partition, the blocking check fails the materialization."""
    import clicklake.assets.raw as raw_assets_module

    real = raw.build_raw_partition

    def corrupted(*args, **kwargs):
        part = real(*args, **kwargs)
        part.table = pa.concat_tables([part.table.slice(0, 1)] * 2)  # one id twice
        return part

    monkeypatch.setattr(raw_assets_module, "build_raw_partition", corrupted)
    lake = LakeResource(root=str(tmp_path))
    _landing(lake.store())
    result = dg.materialize(raw_assets[:1], partition_key=KEY, resources={"lake": lake},
                            raise_on_error=False)
    evaluations = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not evaluations["ids_present_and_unique"].passed
    assert not result.success  # blocking: the step fails so downstream does not run


def test_a_backfill_range_run_materializes_and_checks_every_hour(tmp_path, monkeypatch):
    """A backfill run of hours H-1..H+1: one materialization per hour with that hour's metadata,
    and each check evaluated over all three hours, failing with the one bad hour named."""
    import clicklake.assets.raw as raw_assets_module

    real = raw.build_raw_partition

    def corrupted_at_h(store, stream, hour_ms, *args, **kwargs):
        part = real(store, stream, hour_ms, *args, **kwargs)
        if hour_ms == H:
            part.table = pa.concat_tables([part.table.slice(0, 1)] * 2)  # one id twice
        return part

    lake = LakeResource(root=str(tmp_path))
    _landing(lake.store())
    keys = [hour_partition_key(H + d * HOUR_MS) for d in (-1, 0, 1)]
    tags = {"dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1]}
    result = dg.materialize(raw_assets, resources={"lake": lake}, tags=tags)
    assert result.success
    mats = result.asset_materializations_for_node("raw_impressions")
    assert [m.partition for m in mats] == keys
    assert [m.metadata["dagster/row_count"].value for m in mats] == [0, 3, 0]
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 8 and all(c.passed for c in checks)
    assert {c.metadata["hours_checked"].value for c in checks} == {3}

    monkeypatch.setattr(raw_assets_module, "build_raw_partition", corrupted_at_h)
    result = dg.materialize(raw_assets[:1], resources={"lake": lake}, tags=tags,
                            raise_on_error=False)
    evaluations = {c.check_name: c for c in result.get_asset_check_evaluations()}
    failed = evaluations["ids_present_and_unique"]
    assert not failed.passed and failed.metadata["failing_hours"].value == KEY
    assert evaluations["ts_in_partition"].passed
    assert not result.success


@pytest.mark.parametrize("prefix", ["pfx", "deep/er"])
def test_raw_assets_against_s3(moto_endpoint, s3_bucket, tmp_path, prefix):
    s3_lake = LakeResource(root=f"s3://{s3_bucket}/{prefix}", s3_endpoint_url=moto_endpoint,
                           region="us-east-1")
    local_lake = LakeResource(root=str(tmp_path))
    for lake in (s3_lake, local_lake):
        _landing(lake.store())
        assert _materialize(lake).success
    for stream in ("impressions", "clicks", "predictions"):
        assert raw.read_raw(s3_lake.store(), stream, H).equals(
            raw.read_raw(local_lake.store(), stream, H))
    assert s3_lake.store().list("lake/quarantine/impressions") == [
        "lake/quarantine/impressions/dt=2026-11-25/hour=13/part-0.parquet"]


def test_a_file_renamed_with_its_uuid_is_not_lost_and_one_below_its_hour_is_named(tmp_path):
    """A re-imported log's files keep their uuids under a new arrival time (imports are now
    stamped with their last event's): the rebuild was refused, every file taken for gone. A
    file below an hour folder, read by an older clicklake and no longer read, was called gone
    while it was there: it is named as no longer read."""
    from clicklake.platform import landing

    lake = LakeResource(root=str(tmp_path))
    store = lake.store()
    _landing(store)
    assert _materialize(lake).success
    (first,) = [k for k in store.list("landing/impressions/") if "000000000001" in k]
    renamed = landing.firehose_key("impressions", landing.parse_key(first).arrival_ms + 7_000,
                                   landing.name_uuid(first))
    store.write_bytes(renamed, store.read_bytes(first))
    store.delete(first)
    assert raw.lost_landing_files(store, "impressions", H) == []
    assert _materialize(lake).success
    # As an older clicklake recorded it: built from a file below the hour folder, too.
    below = renamed.replace("/impressions-1-", "/retry/impressions-1-").replace(
        landing.name_uuid(renamed), "00000000-0000-4000-8000-0000000000ff")
    store.write_bytes(below, store.read_bytes(renamed))
    part = raw.build_raw_partition(store, "impressions", H)
    part.landing_keys = [*part.landing_keys, below]
    raw.write_raw_partition(store, part)
    said = _refusal(lake)
    assert f"{KEY}: 1 no longer read, outside the hour folders" in said and below in said


def test_a_file_that_gave_the_hour_nothing_can_expire_without_refusing_its_rebuild(tmp_path):
    """Hour H reads the hour before's files too (a record may be stamped ahead of its file).
    Every file read was recorded, so once the day before expired (lifecycle rules expire
    whole days) the rebuild of each day's first hour was refused, though it lost nothing. Only
    the files that gave the hour a kept or a quarantine row are recorded now."""
    lake = LakeResource(root=str(tmp_path))
    store = lake.store()
    _landing(store)
    before = land(store, "impressions", H - 10 * MIN, [impression("i0", H - 20 * MIN)],
                  tag="5")  # hour H - 1's: read for hour H, nothing of it
    ahead = land(store, "impressions", H - 2 * MIN, [impression("i9", H + MIN)],
                 tag="6")  # stamped ahead of its file (within the tolerance): one of hour H's
    assert _materialize(lake).success
    assert raw.read_raw(store, "impressions", H).num_rows == 4  # i1, i2, i5, i9
    store.delete(before)  # expired: the rebuild loses nothing
    assert raw.lost_landing_files(store, "impressions", H) == []
    assert _materialize(lake).success
    store.delete(ahead)  # it held an event of the hour: a rebuild would lose it
    assert raw.lost_landing_files(store, "impressions", H) == [ahead]
    assert "would lose the events of landing files that are gone" in _refusal(lake)
