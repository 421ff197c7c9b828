"""Rebuilding the online store from the hourly user profile snapshot (`online.seed`): seeded from
snapshot P and folded from the landing files after it, the store answers every read from its
horizon on exactly as the store that folded every landing file does, and it holds a record of
every landing file."""

from __future__ import annotations

import math
import uuid

import dagster as dg
import pytest
from feature_oracle import build_lake, land

from clicklake.assets.serving import serving_assets
from clicklake.platform.online import OnlineFeatures, SqliteState, fold_files, horizon_ms
from clicklake.platform.online.fold import order_files
from clicklake.platform.online.seed import SEED_STREAM, rebuild_from_snapshot, seed_hour
from clicklake.platform.raw import read_raw
from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, iso, parse_instant
from clicklake.resources.lake import LakeResource
from clicklake.resources.online_store import DynamoDbOnlineStore, SqliteOnlineStore

START = parse_instant("2026-11-20T00:00:00Z")
HOURS = 12


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Store:
    store = Store(str(tmp_path_factory.mktemp("seed-lake")))
    generate(store, start_ms=START, hours=HOURS, users=400, seed=21, messy_scale=5.0)
    build_lake(store, [START + i * HOUR_MS for i in range(HOURS)])
    return store


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9,
                                                                   abs_tol=1e-12)
    return a == b


def _known(profile: dict | None) -> dict | None:
    """A user with predictions only has no profile (the API's 404), however it is stored."""
    return profile if profile is not None and profile["known"] else None


@pytest.mark.parametrize("early", [False, True], ids=["latest-snapshot", "hours-before"])
def test_a_store_seeded_from_a_snapshot_answers_as_the_full_refold(lake, tmp_path, early):
    keys = lake.list("landing/")
    full = SqliteState(str(tmp_path / "full.db"))
    fold_files(full, lake, keys, files_per_commit=10)
    wm = full.watermark_ms()
    horizon = horizon_ms(wm)

    p = seed_hour(lake, keys)
    assert p is not None and p + HOUR_MS <= horizon
    assert p >= horizon - 2 * HOUR_MS  # the latest snapshot the horizon allows
    if early:  # any earlier snapshot gives the same answers, from a longer fold
        p = START + 4 * HOUR_MS
    seeded = SqliteState(str(tmp_path / "seeded.db"))
    report = rebuild_from_snapshot(seeded, lake, keys, p, files_per_commit=10)
    assert report.users > 200 and report.impressions > 50 and report.segment_rows > 100
    assert report.files_in_snapshot > 20 and report.fold.files > 20
    assert report.fold.in_snapshot > 0  # events before p + 1 h in the files folded after

    # Every landing file is recorded once, beside the seed's own records.
    landing_keys = {lf.key for lf, _ in order_files(keys)[0]}
    records = seeded.folded_files()
    assert {k for k, _, _ in records if not k.startswith(SEED_STREAM)} == landing_keys
    assert seeded.watermark_ms() == wm

    ours, theirs = OnlineFeatures(seeded), OnlineFeatures(full)
    users = sorted({k for ns, k, _, _ in full.dump()["docs"] if ns == "user"})
    imps = read_raw(lake, "impressions", START + (HOURS - 1) * HOUR_MS).to_pylist()
    contexts = [(i["campaign_id"], i["ip"], i["user_agent"], i["domain"]) for i in imps[:6]]
    for t in (horizon, horizon + 25 * 60_000, wm - 1, wm + HOUR_MS):
        for u in users:
            assert _same(_known(ours.profile(u, t)), _known(theirs.profile(u, t))), (u, t)
            for camp, ip, ua, domain in contexts:
                got, want = ({k: v.tolist() for k, v in o.feature_inputs(
                    u, camp, t, ip, ua, domain).items()} for o in (ours, theirs))
                assert _same(got, want), (u, t, camp, got, want)


def test_no_snapshot_before_the_horizon_means_no_seed(lake, tmp_path):
    keys = lake.list("landing/")
    early = [k for k in keys
             if (lf := order_files([k])[0]) and lf[0][0].arrival_ms < START + 3 * HOUR_MS]
    assert seed_hour(lake, early) is None  # the horizon is before the first snapshot
    assert seed_hour(lake, []) is None


DE, US = "5.9.0.1", "8.8.8.8"


def test_the_seed_keeps_what_the_hour_after_it_still_reads(tmp_path):
    # Hand-built: a click just after the seed's hour without an impression id takes its
    # country and domain from the user's impression of the hour before (the seeded events);
    # a click naming an impression of that hour (another user's) takes them from the seeded
    # index; a user with predictions only keeps the latest score. The full refold is the
    # reference.
    store = Store(str(tmp_path / "lake"))
    p, s = START + 2 * HOUR_MS, START + 3 * HOUR_MS
    minute = 60_000
    deliveries = [
        ("impressions", {"impression_id": f"f{i}", "ts": START + i * 20 * minute,
                         "user_id": f"filler{i % 3}", "campaign_id": "c9", "ip": US}, None)
        for i in range(30)]  # every hour has events, so every hour has its snapshot
    deliveries += [
        ("impressions", {"impression_id": "i1", "ts": p + 50 * minute, "user_id": "u1",
                         "campaign_id": "c1", "ip": DE, "domain": "a.example"}, None),
        ("impressions", {"impression_id": "i2", "ts": p + 55 * minute, "user_id": "u3",
                         "campaign_id": "c2", "ip": DE, "domain": "b.example"}, None),
        ("clicks", {"click_id": "k1", "ts": s + 5 * minute, "user_id": "u1",
                    "campaign_id": "c1", "impression_id": None}, None),
        ("clicks", {"click_id": "k2", "ts": s + 6 * minute, "user_id": "u4",
                    "campaign_id": "c2", "impression_id": "i2"}, None),  # by its id only
        ("predictions", {"prediction_id": "p1", "ts": p + 10 * minute, "user_id": "u2",
                         "model": "m", "score": 0.7}, None),
        # the stream goes on for hours: the horizon passes the seed's end
        ("impressions", {"impression_id": "late-on", "ts": s + 6 * HOUR_MS, "user_id": "u9",
                         "campaign_id": "c9", "ip": US}, None),
    ]
    land(store, [(st, ev, ev["ts"] + minute) for st, ev, _ in deliveries])
    build_lake(store, [START + i * HOUR_MS for i in range(10)])
    keys = store.list("landing/")
    full = SqliteState(str(tmp_path / "full.db"))
    fold_files(full, store, keys)
    t = horizon_ms(full.watermark_ms())
    assert s <= t < s + 20 * HOUR_MS
    seeded = SqliteState(str(tmp_path / "seeded.db"))
    rebuild_from_snapshot(seeded, store, keys, p)
    for user, camp, ip, domain in (("u1", "c1", DE, "a.example"), ("u4", "c2", DE, "b.example"),
                                   ("u2", "c1", US, None)):
        got, want = ({k: v.tolist() for k, v in o.feature_inputs(
            user, camp, t, ip, None, domain).items()} for o in (OnlineFeatures(seeded),
                                                                 OnlineFeatures(full)))
        assert _same(got, want), (user, got, want)
    both = OnlineFeatures(seeded).feature_inputs("u1", "c1", t, DE, None, "a.example")
    assert both["country_clicks_24h"].tolist() == [2.0]  # k1 and k2: DE
    assert both["domain_clicks_24h"].tolist() == [1.0]  # k1: a.example
    assert OnlineFeatures(seeded).feature_inputs(
        "u2", "c1", t, US, None, None)["pred_score"].tolist() == [0.7]


def _rebuild(root: str, db: str, from_snapshot: bool) -> dict:
    config = {"rebuild": True, "from_snapshot": from_snapshot}
    result = dg.materialize(serving_assets,
                            run_config={"ops": {"serving_lookup": {"config": config}}},
                            resources={"lake": LakeResource(root=root),
                                       "online_store": SqliteOnlineStore(path=db)})
    mat = result.get_asset_materialization_events()[0].step_materialization_data.materialization
    return {k: v.value for k, v in mat.metadata.items()}


def test_the_asset_rebuilds_from_the_snapshot_when_asked(lake, tmp_path):
    meta = _rebuild(lake.root, str(tmp_path / "seeded.db"), from_snapshot=True)
    full = _rebuild(lake.root, str(tmp_path / "full.db"), from_snapshot=False)
    assert meta["seed_snapshot_hour"] == iso(seed_hour(lake, lake.list("landing/")))
    assert meta["seeded_users"] > 200 and meta["files_in_snapshot"] > 20
    assert meta["events_in_snapshot"] > 0 and meta["files_folded"] < full["files_folded"]
    assert (full["seed_snapshot_hour"], full["seeded_users"]) == ("none", 0)
    assert meta["watermark_ms"] == full["watermark_ms"]
    ours = OnlineFeatures(SqliteState(str(tmp_path / "seeded.db")))
    theirs = OnlineFeatures(SqliteState(str(tmp_path / "full.db")))
    t = horizon_ms(full["watermark_ms"]) + 10 * 60_000
    for u in (f"u{i:07d}" for i in range(0, 400, 7)):
        assert _same(_known(ours.profile(u, t)), _known(theirs.profile(u, t))), u


def test_without_a_snapshot_the_asset_folds_every_file(tmp_path):
    store = Store(str(tmp_path / "lake"))
    generate(store, start_ms=START, hours=2, users=50, seed=3)  # landing only: no lake yet
    meta = _rebuild(store.root, str(tmp_path / "online.db"), from_snapshot=True)
    assert meta["seed_snapshot_hour"] == "none" and meta["files_folded"] > 0


def test_a_dynamodb_store_seeds_to_the_same_state(moto_endpoint, tmp_path):
    store = Store(str(tmp_path / "lake"))
    generate(store, start_ms=START, hours=8, users=30, seed=8, messy_scale=3.0)
    build_lake(store, [START + i * HOUR_MS for i in range(8)])
    keys = store.list("landing/")
    p = seed_hour(store, keys)
    assert p is not None
    dynamo = DynamoDbOnlineStore(table_name=f"online-{uuid.uuid4().hex[:8]}",
                                 endpoint_url=moto_endpoint, region="us-east-1",
                                 create_table=True).state()
    sqlite = SqliteState(str(tmp_path / "online.db"))
    reports = [rebuild_from_snapshot(st, store, keys, p) for st in (dynamo, sqlite)]
    assert reports[0].users == reports[1].users > 10
    assert dynamo.dump() == sqlite.dump()
