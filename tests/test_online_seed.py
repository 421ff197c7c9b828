"""Rebuilding the online store from the hourly user profile snapshot (`online.seed`): seeded from
snapshot P and folded from the landing files after it, the store answers every read from its
horizon on as the store that folded every landing file does (spend within float rounding), it
holds a record of every landing file, a seed that died half way is seeded again before anything
is folded on top, and a lake that cannot seed exactly is refused with the reason."""

from __future__ import annotations

import uuid

import dagster as dg
import pytest
from feature_oracle import build_lake, land

from clicklake.assets.serving import serving_assets
from clicklake.platform.online import OnlineFeatures, SqliteState, fold_files, horizon_ms
from clicklake.platform.online import seed as seed_mod
from clicklake.platform.online.fold import SEED, IncompleteSeed, order_files, seed_mark
from clicklake.platform.online.seed import (
    SEED_STREAM,
    SeedUnavailable,
    rebuild_from_snapshot,
    seed_hour,
)
from clicklake.platform.raw import raw_key, read_raw
from clicklake.platform.segments import segment_key
from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, hour_partition_key, iso, parse_instant
from clicklake.resources.lake import LakeResource
from clicklake.resources.online_store import DynamoDbOnlineStore, SqliteOnlineStore
from tests.online_helpers import (
    built_lake,
    close_enough,
    die_at,
    folded,
    folded_in_order,
    unrun,
)

START = parse_instant("2026-11-20T00:00:00Z")
HOURS = 30  # past the 24 h segment window and prediction look-back before the seed
MINUTE = 60_000


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Store:
    return built_lake(tmp_path_factory.mktemp("seed-lake"), START, HOURS, users=250, seed=21, messy_scale=5.0)


@pytest.fixture(scope="module")
def full(lake, tmp_path_factory) -> SqliteState:
    return folded(str(tmp_path_factory.mktemp("full") / "full.db"), lake)


def _known(profile: dict | None) -> dict | None:
    """A user with predictions only has no profile (the API's 404), however it is stored."""
    return profile if profile is not None and profile["known"] else None


def _users(state: SqliteState) -> list[str]:
    return sorted(k for ns, k, _, _ in state.dump()["docs"] if ns == "user")


def _compare(ours: OnlineFeatures, theirs: OnlineFeatures, users: list[str], times: list[int],
             contexts: list[tuple]) -> None:
    for t in times:
        for u in users:
            assert close_enough(_known(ours.profile(u, t)), _known(theirs.profile(u, t))), (u, t)
            assert close_enough(_known(ours.profile(u, t, lists=False)),
                         _known(theirs.profile(u, t, lists=False))), (u, t)  # the heads
            for camp, ip, ua, domain in contexts:
                got, want = ({k: v.tolist() for k, v in o.feature_inputs(
                    u, camp, t, ip, ua, domain).items()} for o in (ours, theirs))
                assert close_enough(got, want), (u, t, camp, got, want)


@pytest.mark.parametrize("hours_before", [0, 6], ids=["latest-snapshot", "hours-before"])
def test_a_store_seeded_from_a_snapshot_answers_as_the_full_refold(lake, full, tmp_path,
                                                                   hours_before):
    keys = lake.list("landing/")
    wm = full.watermark_ms()
    horizon = horizon_ms(wm)
    p = seed_hour(lake, keys)
    assert horizon - 2 * HOUR_MS <= p <= horizon - HOUR_MS  # the latest the horizon allows
    p -= hours_before * HOUR_MS  # an earlier one gives the same answers, from a longer fold
    seeded = SqliteState(str(tmp_path / "seeded.db"))
    report = rebuild_from_snapshot(seeded, lake, keys, p, files_per_commit=10)
    assert report.users > 200 and report.impressions > 50 and report.segment_rows > 500
    assert report.files_in_snapshot > 100 and report.fold.files > 10
    assert report.fold.in_snapshot > 0  # events before p + 1 h in the files folded after
    assert unrun(seed_mark(seeded)) == {"p": p, "start": p + HOUR_MS, "done": True}

    # Every landing file is recorded once, beside the seed's own records.
    landing_keys = {lf.key for lf, _ in order_files(keys)[0]}
    records = seeded.folded_files()
    assert {k for k, _, _ in records if not k.startswith(SEED_STREAM)} == landing_keys
    assert seeded.watermark_ms() == wm

    imps = read_raw(lake, "impressions", START + (HOURS - 1) * HOUR_MS).to_pylist()
    contexts = [(i["campaign_id"], i["ip"], i["user_agent"], i["domain"]) for i in imps[:4]]
    _compare(OnlineFeatures(seeded), OnlineFeatures(full), _users(full),
             [horizon, horizon + 25 * MINUTE, wm - 1, wm + HOUR_MS], contexts)


def test_the_seed_keeps_what_the_hours_after_it_still_read(tmp_path):
    # Hand-built, the edges one by one. A click just after the seed's hour without an impression
    # id takes its country and domain from the user's impression of the hour before (the
    # seeded events); a click naming another user's impression of that hour takes them from
    # the seeded index; a user with predictions only keeps the latest score, ties going to the
    # greatest id; an impression exactly 7 days before the read still counts in its 7 d window.
    store = Store(str(tmp_path / "lake"))
    p, s = START + 167 * HOUR_MS, START + 168 * HOUR_MS
    de, us = "5.9.0.1", "8.8.8.8"
    deliveries = [
        ("impressions", {"impression_id": f"f{i}", "ts": START + i * HOUR_MS + 5 * MINUTE,
                         "user_id": f"filler{i % 3}", "campaign_id": "c9", "ip": us})
        for i in range(169)]  # every hour has events, so every hour has its snapshot
    deliveries += [
        ("impressions", {"impression_id": "w1", "ts": START + 10 * MINUTE, "user_id": "u5",
                         "campaign_id": "c5", "ip": us, "cost": 0.5}),
        ("impressions", {"impression_id": "i1", "ts": p + 50 * MINUTE, "user_id": "u1",
                         "campaign_id": "c1", "ip": de, "domain": "a.example"}),
        ("impressions", {"impression_id": "i2", "ts": p + 55 * MINUTE, "user_id": "u3",
                         "campaign_id": "c2", "ip": de, "domain": "b.example"}),
        ("clicks", {"click_id": "k1", "ts": s + 5 * MINUTE, "user_id": "u1",
                    "campaign_id": "c1", "impression_id": None}),
        ("clicks", {"click_id": "k2", "ts": s + 6 * MINUTE, "user_id": "u4",
                    "campaign_id": "c2", "impression_id": "i2"}),  # by its id only
        ("predictions", {"prediction_id": "p1", "ts": p + 10 * MINUTE, "user_id": "u2",
                         "model": "m", "score": 0.6}),
        ("predictions", {"prediction_id": "p3", "ts": p + 20 * MINUTE, "user_id": "u2",
                         "model": "m", "score": 0.7}),
        ("predictions", {"prediction_id": "p2", "ts": p + 20 * MINUTE, "user_id": "u2",
                         "model": "m", "score": 0.1}),
        ("predictions", {"prediction_id": "p0", "ts": s - 24 * HOUR_MS, "user_id": "u6",
                         "model": "m", "score": 0.3}),  # the first instant of the look-back
        ("predictions", {"prediction_id": "p7", "ts": s + 2 * MINUTE, "user_id": "u7",
                         "model": "m", "score": 0.9}, s - 5 * MINUTE),  # stamped ahead
        ("impressions", {"impression_id": "at-s", "ts": s, "user_id": "u8",
                         "campaign_id": "c8", "ip": us}),  # exactly at the seed's end
        # the stream goes on for hours: the horizon passes the seed's end
        ("impressions", {"impression_id": "on", "ts": s + 4 * HOUR_MS + 10 * MINUTE,
                         "user_id": "u9", "campaign_id": "c9", "ip": us}),
    ]
    land(store, [(d[0], d[1], d[2] if len(d) > 2 else d[1]["ts"] + MINUTE) for d in deliveries])
    build_lake(store, [START + i * HOUR_MS for i in range(174)])
    keys = store.list("landing/")
    full = SqliteState(str(tmp_path / "full.db"))
    fold_files(full, store, keys)
    t = horizon_ms(full.watermark_ms())
    assert t == s  # the 7 d window at t starts with the hour of w1
    seeded = SqliteState(str(tmp_path / "seeded.db"))
    rebuild_from_snapshot(seeded, store, keys, p)
    ours, theirs = OnlineFeatures(seeded), OnlineFeatures(full)
    for user, camp, ip, domain in (("u1", "c1", de, "a.example"), ("u4", "c2", de, "b.example"),
                                   ("u2", "c1", us, None), ("u5", "c5", us, None),
                                   ("u6", "c1", us, None), ("u7", "c1", us, None),
                                   ("u8", "c8", us, None)):
        for when in (t, t + 10 * MINUTE):
            got, want = ({k: v.tolist() for k, v in o.feature_inputs(
                user, camp, when, ip, None, domain).items()} for o in (ours, theirs))
            assert close_enough(got, want), (user, got, want)
    got = ours.feature_inputs("u1", "c1", t + 10 * MINUTE, de, None, "a.example")
    assert got["country_clicks_24h"].tolist() == [2.0]  # k1 and k2: DE
    assert got["domain_clicks_24h"].tolist() == [1.0]  # k1: a.example
    assert ours.feature_inputs("u2", "c1", t, us, None, None)["pred_score"].tolist() == [0.7]
    assert ours.feature_inputs("u6", "c1", t, us, None, None)["pred_score"].tolist() == [0.3]
    assert ours.profile("u5", t)["impressions_7d"] == 1 == theirs.profile("u5", t)[
        "impressions_7d"]
    assert ours.feature_inputs("u7", "c1", t + 5 * MINUTE, us, None, None)[
        "pred_score"].tolist() == [0.9]
    assert ours.profile("u8", t + MINUTE)["impressions"] == 1


@pytest.mark.parametrize("dies", ["seeding", "folding after"])
def test_a_rebuild_that_died_is_seeded_again_before_any_fold(lake, full, tmp_path,
                                                               monkeypatch, dies):
    keys = lake.list("landing/")
    p = seed_hour(lake, keys) - 6 * HOUR_MS  # hours of files to fold after the seed
    db = str(tmp_path / "seeded.db")
    state = SqliteState(db)
    monkeypatch.setattr(seed_mod, "USERS_PER_COMMIT", 40)  # many commits
    if dies == "seeding":
        die_at(state, 4)
    else:  # at its first commit of landing files, before the files that straddle its end
        die_at(state, 1, lambda c: c.files[0].key.startswith("landing/")
               and "unread" not in c.files[0].stats)
    with pytest.raises(ConnectionError):
        rebuild_from_snapshot(state, lake, keys, p, files_per_commit=3)
    again = SqliteState(db)
    assert unrun(seed_mark(again)) == {"p": p, "start": p + HOUR_MS, "done": False}
    with pytest.raises(IncompleteSeed) as err:  # a sensor run's fold refuses to go on top
        fold_files(again, lake, keys)
    assert err.value.p == p
    rebuild_from_snapshot(again, lake, keys, err.value.p, files_per_commit=10)
    assert seed_mark(again)["done"]
    wm = full.watermark_ms()
    _compare(OnlineFeatures(again), OnlineFeatures(full), _users(full)[::5],
             [horizon_ms(wm), wm], [])


def test_a_rebuild_that_died_before_its_first_read_is_marked(lake, tmp_path, monkeypatch):
    keys = lake.list("landing/")
    state = SqliteState(str(tmp_path / "seeded.db"))

    def unreadable(*_):
        raise OSError("the lake is unreachable")

    monkeypatch.setattr(seed_mod, "_hour_impressions", unreadable)
    p = seed_hour(lake, keys)
    with pytest.raises(OSError):
        rebuild_from_snapshot(state, lake, keys, p)
    with pytest.raises(IncompleteSeed):
        fold_files(state, lake, keys[-3:])


def test_a_lake_that_cannot_seed_exactly_is_refused_with_the_reason(lake, tmp_path):
    keys = lake.list("landing/")
    with pytest.raises(SeedUnavailable, match="no file"):
        seed_hour(lake, [])
    early = [lf.key for lf, _ in order_files(keys)[0] if lf.arrival_ms < START + 4 * HOUR_MS]
    with pytest.raises(SeedUnavailable, match="horizon"):
        seed_hour(lake, early)

    # A copy of the lake whose snapshot chain starts after the landing zone's first events.
    late = Store(str(tmp_path / "late"))
    generate(late, start_ms=START, hours=12, users=40, seed=3)
    build_lake(late, [START + i * HOUR_MS for i in range(3, 12)])
    with pytest.raises(SeedUnavailable, match="starts at"):
        seed_hour(late, late.list("landing/"))

    # Inputs of the seed missing: the latest snapshot is passed over, with the reason.
    gaps = Store(str(tmp_path / "gaps"))
    generate(gaps, start_ms=START, hours=12, users=40, seed=3)
    build_lake(gaps, [START + i * HOUR_MS for i in range(12)])
    p = seed_hour(gaps, gaps.list("landing/"))
    gaps.delete(raw_key("predictions", p - 3 * HOUR_MS))
    assert seed_hour(gaps, gaps.list("landing/")) < p - 3 * HOUR_MS
    for h in range(START, START + 12 * HOUR_MS, HOUR_MS):
        if gaps.exists(segment_key(h)):
            gaps.delete(segment_key(h))
    with pytest.raises(SeedUnavailable, match="segment_profiles"):
        seed_hour(gaps, gaps.list("landing/"))
    # The oldest files are read (could they hold events older than the chain?): one deleted
    # since the listing is passed over.
    gone = gaps.list("landing/")[0]
    gaps.delete(gone)
    with pytest.raises(SeedUnavailable, match="segment_profiles"):
        seed_hour(gaps, [*gaps.list("landing/"), gone])
    newest = max(lf.arrival_ms for lf, _ in order_files(keys)[0])
    with pytest.raises(ValueError, match="horizon"):  # a snapshot ending after the horizon
        rebuild_from_snapshot(SqliteState(str(tmp_path / "x.db")), lake, keys,
                              horizon_ms(newest))


def _rebuild(root: str, db: str, from_snapshot: bool, files: list[str] | None = None) -> dict:
    config = {"rebuild": files is None, "from_snapshot": from_snapshot, "files": files or []}
    result = dg.materialize(serving_assets,
                            run_config={"ops": {"serving_lookup": {"config": config}}},
                            resources={"lake": LakeResource(root=root),
                                       "online_store": SqliteOnlineStore(path=db)})
    mat = result.get_asset_materialization_events()[0].step_materialization_data.materialization
    return {k: v.value for k, v in mat.metadata.items()}


def test_the_asset_rebuilds_from_the_snapshot_when_asked(lake, full, tmp_path):
    meta = _rebuild(lake.root, str(tmp_path / "seeded.db"), from_snapshot=True)
    refold = _rebuild(lake.root, str(tmp_path / "refold.db"), from_snapshot=False)
    assert meta["seed_snapshot_hour"] == iso(seed_hour(lake, lake.list("landing/")))
    assert meta["seeded_users"] > 200 and meta["files_in_snapshot"] > 100
    assert meta["events_in_snapshot"] > 0 and meta["files_folded"] < refold["files_folded"]
    assert meta["seed_seconds"] > 0
    assert (refold["seed_snapshot_hour"], refold["seeded_users"]) == ("none", 0)
    assert meta["watermark_ms"] == refold["watermark_ms"] == full.watermark_ms()
    t = horizon_ms(full.watermark_ms()) + 10 * MINUTE
    _compare(OnlineFeatures(SqliteState(str(tmp_path / "seeded.db"))), OnlineFeatures(full),
             _users(full)[::4], [t], [])


def test_the_asset_seeds_again_after_a_seed_that_died(lake, full, tmp_path, monkeypatch):
    db = str(tmp_path / "seeded.db")
    keys = lake.list("landing/")
    p = seed_hour(lake, keys)
    state = SqliteState(db)
    monkeypatch.setattr(seed_mod, "USERS_PER_COMMIT", 40)
    die_at(state, 3)
    with pytest.raises(ConnectionError):
        rebuild_from_snapshot(state, lake, keys, p)
    meta = _rebuild(lake.root, db, from_snapshot=False, files=keys[-2:])  # a sensor run
    assert meta["seed_snapshot_hour"] == iso(p) and meta["seeded_users"] > 200
    t = horizon_ms(full.watermark_ms())
    _compare(OnlineFeatures(SqliteState(db)), OnlineFeatures(full), _users(full)[::4], [t], [])


def test_a_seed_that_died_and_cannot_be_redone_becomes_a_full_refold(tmp_path):
    store = built_lake(tmp_path / "lake", START, 8, users=30, seed=8, messy_scale=3.0)
    keys = store.list("landing/")
    p = seed_hour(store, keys)
    db = str(tmp_path / "seeded.db")
    state = SqliteState(db)
    die_at(state, 2)
    with pytest.raises(ConnectionError):
        rebuild_from_snapshot(state, store, keys, p)
    store.delete(segment_key(p))  # the lake lost an input of that seed since (retention)
    meta = _rebuild(store.root, db, from_snapshot=False, files=keys[-2:])  # a sensor run
    assert meta["seed_snapshot_hour"] == "none" and meta["files_folded"] == len(
        order_files(keys)[0])
    full = folded_in_order(store, str(tmp_path / "full.db"), [keys])
    t = horizon_ms(full.watermark_ms())
    _compare(OnlineFeatures(SqliteState(db)), OnlineFeatures(full), _users(full), [t], [])


def test_without_a_snapshot_the_asset_folds_every_file(tmp_path):
    store = Store(str(tmp_path / "lake"))
    generate(store, start_ms=START, hours=2, users=50, seed=3)  # landing only: no lake yet
    meta = _rebuild(store.root, str(tmp_path / "online.db"), from_snapshot=True)
    assert meta["seed_snapshot_hour"] == "none" and meta["files_folded"] > 0


def test_a_dynamodb_store_seeds_to_the_same_state(moto_endpoint, tmp_path):
    store = built_lake(tmp_path / "lake", START, 8, users=30, seed=8, messy_scale=3.0)
    keys = store.list("landing/")
    p = seed_hour(store, keys)
    dynamo = DynamoDbOnlineStore(table_name=f"online-{uuid.uuid4().hex[:8]}",
                                 endpoint_url=moto_endpoint, region="us-east-1",
                                 create_table=True).state()
    sqlite = SqliteState(str(tmp_path / "online.db"))
    reports = [rebuild_from_snapshot(st, store, keys, p) for st in (dynamo, sqlite)]
    assert reports[0].users == reports[1].users > 10
    # the same but for the marks' run ids (each rebuild its own)
    dumps = [st.dump() for st in (dynamo, sqlite)]
    for d in dumps:
        d["docs"] = [doc for doc in d["docs"] if doc[0] != SEED]
    assert dumps[0] == dumps[1]
    assert unrun(seed_mark(dynamo)) == unrun(seed_mark(sqlite))


def test_a_snapshot_whose_last_day_had_a_raw_hour_rebuilt_after_it_is_not_seeded_from(tmp_path):
    """Raw hour p - 3 h rebuilt (late files folded in) after the chain's snapshots were built:
    the snapshots from it on were not refolded, yet only a rebuild of hour p itself was seen,
    and the store was seeded from a snapshot lacking those events (11 lifetime impressions where
    the refold has 14)."""
    from clicklake.assets.profiles import profile_assets
    from clicklake.assets.raw import raw_assets

    root = tmp_path / "lake"
    store = Store(str(root))
    generate(store, start_ms=START, hours=30, users=40, seed=4)
    keys = store.list("landing/")
    lake = LakeResource(root=str(root))
    hours = [START + i * HOUR_MS for i in range(30)]
    tags = {"dagster/asset_partition_range_start": hour_partition_key(hours[0]),
            "dagster/asset_partition_range_end": hour_partition_key(hours[-1])}
    with dg.instance_for_test() as instance:
        for group in (raw_assets, profile_assets):
            assert dg.materialize(group, tags=tags, resources={"lake": lake},
                                  instance=instance).success
        p = seed_hour(store, keys)
        assert dg.materialize(raw_assets, partition_key=hour_partition_key(p - 3 * HOUR_MS),
                              resources={"lake": lake}, instance=instance).success
        result = dg.materialize(
            serving_assets, instance=instance,
            run_config={"ops": {"serving_lookup": {"config": {"rebuild": True,
                                                              "from_snapshot": True}}}},
            resources={"lake": lake, "online_store": SqliteOnlineStore(
                path=str(tmp_path / "online.db"))})
        mat = result.get_asset_materialization_events()[0].step_materialization_data
        meta = {k: v.value for k, v in mat.materialization.metadata.items()}
        assert meta["seed_snapshot_hour"] == "none", meta
        logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
        assert any("cannot rebuild from a snapshot" in m and "raw partitions of its last day"
                   in m for m in logs), logs


def test_a_rebuild_after_the_first_landing_files_expired_seeds_from_a_snapshot(tmp_path):
    """A refold folds the landing files left: once the landing zone's retention had expired the
    lake's first hours, a rebuild (asked for, or after an upgrade's layout change) cut every
    user's lifetime counters back to the files left (504 -> 184 impressions in the review's
    lake), and said it succeeded. It seeds from a snapshot instead."""
    store = built_lake(tmp_path / "lake", START, 8, users=60, seed=4, messy_scale=3.0)
    keys = store.list("landing/")
    full = folded_in_order(store, str(tmp_path / "full.db"), [keys])
    for k in keys:
        if order_files([k])[0][0][0].arrival_ms < START + 3 * HOUR_MS:
            store.delete(k)
    meta = _rebuild(store.root, str(tmp_path / "rebuilt.db"), from_snapshot=False)
    assert meta["rebuild"] and meta["seed_snapshot_hour"] != "none"
    t = horizon_ms(full.watermark_ms())
    _compare(OnlineFeatures(SqliteState(str(tmp_path / "rebuilt.db"))), OnlineFeatures(full),
             _users(full), [t, full.watermark_ms() + 1], [])
    assert seed_mod.landing_gap(store, store.list("landing/")).startswith(
        "the landing zone starts at 2026-11-20T03:")
    assert seed_mod.landing_gap(store, keys) is None


def test_the_landing_gap_is_read_from_the_first_hour_with_events(tmp_path):
    """A file arriving at or after the first hour's end plus the lateness cannot hold its
    events: the landing zone starting there has lost them (this was taken as whole). A chain
    started on hours without events, before the first landing file, has lost nothing."""
    store = Store(str(tmp_path / "lake"))
    generate(store, start_ms=START, hours=3, users=30, seed=2, clean=True)
    build_lake(store, [START + i * HOUR_MS for i in range(-3, 3)])  # 3 empty hours first
    keys = store.list("landing/")
    assert seed_mod.landing_gap(store, keys) is None
    late = [k for k in keys if order_files([k])[0][0][0].arrival_ms >= START + 2 * HOUR_MS]
    late_lake = Store(str(tmp_path / "late"))
    generate(late_lake, start_ms=START, hours=3, users=30, seed=2, clean=True)
    build_lake(late_lake, [START + i * HOUR_MS for i in range(3)])
    assert seed_mod.landing_gap(late_lake, late).startswith("the landing zone starts at "
                                                             "2026-11-20T02:")


def test_a_new_stores_first_fold_after_the_first_landing_files_expired_seeds(tmp_path):
    """A new online store's first fold is a refold: the sensor's run over the landing files
    left started every user's counters short (the landing gap was checked only on a rebuild).
    It seeds from a snapshot instead, and answers as the full refold; a new store over a
    landing zone that still holds every file folds it as before."""
    store = built_lake(tmp_path / "lake", START, 8, users=60, seed=4, messy_scale=3.0)
    keys = store.list("landing/")
    full = folded_in_order(store, str(tmp_path / "full.db"), [keys])
    whole = _rebuild(store.root, str(tmp_path / "whole.db"), from_snapshot=False, files=keys)
    assert not whole["rebuild"] and whole["seed_snapshot_hour"] == "none"
    for k in keys:
        if order_files([k])[0][0][0].arrival_ms < START + 3 * HOUR_MS:
            store.delete(k)
    meta = _rebuild(store.root, str(tmp_path / "new.db"), from_snapshot=False,
                    files=store.list("landing/"))
    assert meta["rebuild"] and meta["seed_snapshot_hour"] != "none", meta
    assert "landing zone lacks" in meta["rebuild_reason"]
    t = horizon_ms(full.watermark_ms())
    _compare(OnlineFeatures(SqliteState(str(tmp_path / "new.db"))), OnlineFeatures(full),
             _users(full), [t, full.watermark_ms() + 1], [])
    # Once folded, later runs fold their files as usual (the store is no longer new).
    again = _rebuild(store.root, str(tmp_path / "new.db"), from_snapshot=False,
                     files=store.list("landing/"))
    assert not again["rebuild"] and again["files_folded"] == 0


def test_a_snapshot_a_refold_has_yet_to_reach_does_not_seed(tmp_path):
    """A refold of the snapshots after a rebuilt hour that died left the later ones on the old
    chain (its mark in the lake says from where): the seed took them (6 lifetime impressions
    where the refold has 7). Snapshots from the mark on are refused; an earlier one seeds."""
    from clicklake.platform import profiles

    store = built_lake(tmp_path / "lake", START, 8, users=60, seed=4)
    keys = store.list("landing/")
    latest = seed_hour(store, keys)
    profiles.mark_refold(store, latest - HOUR_MS)
    with pytest.raises(SeedUnavailable, match="being refolded"):
        seed_mod.check_seed(store, keys, latest)
    assert seed_hour(store, keys) == latest - 2 * HOUR_MS
    profiles.clear_refold(store)
    assert seed_hour(store, keys) == latest


def test_a_snapshot_whose_file_says_it_read_early_inputs_is_not_seeded_from(tmp_path):
    """What a snapshot's inputs lacked was read from its record only: a snapshot whose run died
    before recording it, or recorded in another instance, seeded the store though its file
    says it is folded on a raw hour read early."""
    from clicklake.assets.profiles import profile_assets
    from clicklake.assets.raw import raw_assets
    from clicklake.platform import profiles

    root = tmp_path / "lake"
    store = Store(str(root))
    generate(store, start_ms=START, hours=30, users=40, seed=4)
    keys = store.list("landing/")
    lake = LakeResource(root=str(root))
    tags = {"dagster/asset_partition_range_start": hour_partition_key(START),
            "dagster/asset_partition_range_end": hour_partition_key(START + 29 * HOUR_MS)}
    with dg.instance_for_test() as builder:
        for group in (raw_assets, profile_assets):
            assert dg.materialize(group, tags=tags, resources={"lake": lake},
                                  instance=builder).success
    p = seed_hour(store, keys)
    key = profiles.snapshot_key(p)
    store.write_parquet(key, profiles.with_inputs_incomplete(
        store.read_parquet(key), f"raw_impressions {hour_partition_key(p)} read early"))
    with dg.instance_for_test() as instance:  # no record of the lake's runs here
        result = dg.materialize(
            serving_assets, instance=instance, raise_on_error=False,
            run_config={"ops": {"serving_lookup": {"config": {"rebuild": True,
                                                              "from_snapshot": True}}}},
            resources={"lake": lake, "online_store": SqliteOnlineStore(
                path=str(tmp_path / "online.db"))})
        logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert any("cannot rebuild from a snapshot" in m and "read their landing files early" in m
               for m in logs), logs


def test_an_event_of_the_seed_hour_arriving_after_it_counts_once(tmp_path):
    """An impression and its click of the snapshot's last hour, landed after that hour ended:
    the snapshot holds them, so a store seeded from it skips their files rather than fold them
    again; it agrees with a full refold (one impression, one click)."""
    minute = 60_000
    store = Store(str(tmp_path / "lake"))
    p, s = START + 10 * HOUR_MS, START + 11 * HOUR_MS
    us = "8.8.8.8"
    deliveries = [("impressions", {"impression_id": f"f{i}",
                                   "ts": START + i * HOUR_MS + 5 * minute,
                                   "user_id": "filler", "campaign_id": "c9", "ip": us},
                   START + i * HOUR_MS + 6 * minute) for i in range(16)]
    deliveries += [("impressions", {"impression_id": "late", "ts": s - 2 * minute,
                                    "user_id": "u1", "campaign_id": "c1", "ip": us},
                    s + 3 * minute),
                   ("clicks", {"click_id": "k", "ts": s - minute, "user_id": "u1",
                               "campaign_id": "c1", "impression_id": "late"}, s + 4 * minute)]
    land(store, deliveries)
    build_lake(store, [START + i * HOUR_MS for i in range(16)])
    keys = store.list("landing/")
    full = SqliteState(str(tmp_path / "full.db"))
    fold_files(full, store, keys)
    assert horizon_ms(full.watermark_ms()) >= s
    seeded = SqliteState(str(tmp_path / "seeded.db"))
    report = rebuild_from_snapshot(seeded, store, keys, p)
    t = s + HOUR_MS
    a, b = OnlineFeatures(seeded).profile("u1", t), OnlineFeatures(full).profile("u1", t)
    assert (a["impressions"], a["clicks"]) == (b["impressions"], b["clicks"]) == (1, 1)
    assert report.fold.in_snapshot == 2
