"""A rebuild of the online store (a refold of every landing file, or a seed from a snapshot) is
marked unfinished together with its clear, so that a run dying anywhere in it leaves a store
every fold refuses until it is rebuilt again, never a partial one later folds go on from; a
fold whose store another run rebuilt under it applies nothing; and a rebuild leaves landing
files stamped ahead of the clock for later, as the sensor does."""

from __future__ import annotations

import time
import uuid

import dagster as dg
import orjson
import pytest

from clicklake.assets.serving import serving_assets
from clicklake.platform import landing
from clicklake.platform.online import OnlineFeatures, SqliteState, fold_files, horizon_ms
from clicklake.platform.online import fold as fold_mod
from clicklake.platform.online.fold import IncompleteSeed, Rebuilt, order_files, seed_mark
from clicklake.platform.online.seed import (
    REFOLD_MARK,
    rebuild_from_snapshot,
    refold_all,
    seed_hour,
)
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, parse_instant
from clicklake.resources.lake import LakeResource
from clicklake.resources.online_store import DynamoDbOnlineStore, SqliteOnlineStore
from tests.online_helpers import built_lake, close_enough, die_at, folded

START = parse_instant("2026-11-20T00:00:00Z")
HOURS = 8


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Store:
    return built_lake(tmp_path_factory.mktemp("guard-lake"), START, HOURS, users=30, seed=8, messy_scale=3.0)


@pytest.fixture(scope="module")
def full(lake, tmp_path_factory) -> SqliteState:
    return folded(str(tmp_path_factory.mktemp("full") / "full.db"), lake)


def _materialize(root: str, db: str, **config) -> dict:
    result = dg.materialize(serving_assets,
                            run_config={"ops": {"serving_lookup": {"config": config}}},
                            resources={"lake": LakeResource(root=root),
                                       "online_store": SqliteOnlineStore(path=db)})
    mat = result.get_asset_materialization_events()[0].step_materialization_data.materialization
    return {k: v.value for k, v in mat.metadata.items()}


def _same_answers(ours: SqliteState, theirs: SqliteState) -> None:
    users = sorted(k for ns, k, _, _ in theirs.dump()["docs"] if ns == "user")
    t = theirs.watermark_ms() + HOUR_MS
    for u in users:
        assert close_enough(OnlineFeatures(ours).profile(u, t),
                            OnlineFeatures(theirs).profile(u, t)), u


def test_a_refold_that_died_is_refolded_before_any_fold(lake, full, tmp_path):
    """Before, the refold left no mark: the sensor's next runs folded their files on top, and
    the files the dead run had not reached were never asked again (12 users differed)."""
    db = str(tmp_path / "online.db")
    keys = lake.list("landing/")
    state = SqliteState(db)
    die_at(state, 3)
    with pytest.raises(ConnectionError):
        refold_all(state, lake, keys, files_per_commit=20)
    again = SqliteState(db)
    assert seed_mark(again) == {"refold": True, "done": False}
    with pytest.raises(IncompleteSeed) as err:  # a sensor run's fold refuses to go on top
        fold_files(again, lake, keys[-2:])
    assert err.value.p is None and "every landing file" in str(err.value)
    meta = _materialize(lake.root, db, files=keys[-2:])  # that sensor run, through the asset
    assert "did not finish" in meta["rebuild_reason"]
    assert seed_mark(SqliteState(db)) is None
    assert len(SqliteState(db).folded(keys)) == len(set(keys))
    _same_answers(SqliteState(db), full)


def test_a_seed_that_died_at_its_first_commit_is_marked(lake, tmp_path):
    """The clear and the unfinished mark are one transaction: a run dying right after the clear
    (its first commit) left an empty store without a mark, which the sensor then folded on."""
    keys = lake.list("landing/")
    state = SqliteState(str(tmp_path / "online.db"))
    fold_files(state, lake, keys)
    die_at(state, 1)
    p = seed_hour(lake, keys)
    with pytest.raises(ConnectionError):
        rebuild_from_snapshot(state, lake, keys, p)
    assert seed_mark(state) == {"p": p, "start": p + HOUR_MS, "done": False}
    with pytest.raises(IncompleteSeed):
        fold_files(state, lake, keys[-1:])


def test_a_dynamodb_clear_that_died_keeps_the_mark(lake, moto_endpoint, monkeypatch):
    """DynamoDB deletes item by item: the mark is written (and the version moved) before the
    first delete, and kept by them."""
    state = DynamoDbOnlineStore(table_name=f"online-{uuid.uuid4().hex[:8]}",
                                endpoint_url=moto_endpoint, region="us-east-1",
                                create_table=True).state()
    keys = lake.list("landing/")
    fold_files(state, lake, keys[:40])
    token = state.cache_token()
    real, deleted = state.client.delete_item, []

    def delete_item(**kw):
        if len(deleted) == 25:
            raise ConnectionError("the run's worker went away")
        deleted.append(kw)
        return real(**kw)

    monkeypatch.setattr(state.client, "delete_item", delete_item)
    with pytest.raises(ConnectionError):
        state.clear(keep=(fold_mod.SEED, fold_mod.SEED_KEY, 0, REFOLD_MARK))
    monkeypatch.undo()
    assert seed_mark(state) == {"refold": True, "done": False}
    assert state.cache_token() != token  # a batch read before the clear is refused
    with pytest.raises(IncompleteSeed):
        fold_files(state, lake, keys[40:45])


def test_a_fold_whose_store_was_rebuilt_under_it_applies_nothing(lake, tmp_path, monkeypatch):
    """A sensor run reads its batch; another run starts a rebuild (clears the store, marks it)
    before the batch commits. Before, the batch was refused once (another writer), read again
    from the half-rebuilt store and committed on it; the rebuild then skipped its files."""
    db = str(tmp_path / "online.db")
    keys = [lf.key for lf, _ in order_files(lake.list("landing/"))[0]]
    sensor, rebuild = SqliteState(db), SqliteState(db)
    fold_files(sensor, lake, keys[:-3])
    real, once = fold_mod._Batch.finish, []

    def finish(self, horizon):
        if not once:  # between the batch's reads and its commit
            once.append(True)
            rebuild.clear(keep=(fold_mod.SEED, fold_mod.SEED_KEY, 0, REFOLD_MARK))
        return real(self, horizon)

    monkeypatch.setattr(fold_mod._Batch, "finish", finish)
    with pytest.raises(Rebuilt):
        fold_files(sensor, lake, keys[-3:])
    assert not SqliteState(db).folded(keys)  # nothing of the batch on the rebuilt store


def test_a_rebuild_leaves_files_stamped_ahead_of_the_clock_for_later(lake, full, tmp_path):
    """One file stamped three days ahead (a producer's wrong clock) moved the watermark and the
    purge three days ahead: every profile read then answered BeforeHorizon."""
    root = tmp_path / "lake"
    store = Store(str(root))
    for k in lake.list("landing/"):
        store.write_bytes(k, lake.read_bytes(k))
    ahead = time.time() * 1000 + 3 * 24 * HOUR_MS
    key = landing.firehose_key("clicks", int(ahead), str(uuid.uuid4()))
    landing.write_file(store, key, [])
    db = str(tmp_path / "online.db")
    meta = _materialize(str(root), db, rebuild=True)
    assert meta["files_ahead_of_clock"] == 1
    state = SqliteState(db)
    assert state.watermark_ms() == full.watermark_ms() and not state.folded([key])
    assert horizon_ms(state.watermark_ms()) == horizon_ms(full.watermark_ms())
    _same_answers(state, full)


def test_a_seeded_store_of_an_older_layout_is_seeded_again(lake, full, tmp_path):
    """A store seeded because the landing zone's old files expired, found in an older table
    layout: rebuilt from the snapshot again, not from the landing files left (which lost every
    user's history before them: 8 of 23 users differed)."""
    import shutil
    import sqlite3

    root = tmp_path / "lake"
    shutil.copytree(lake.root, root)
    store = Store(str(root))
    keys = store.list("landing/")
    p = seed_hour(store, keys)
    db = str(tmp_path / "online.db")
    seeded = SqliteState(db)
    rebuild_from_snapshot(seeded, store, keys, p)
    seeded.close()
    for lf, _ in order_files(keys)[0]:  # the landing zone's lifecycle expires the old files
        if lf.arrival_ms < p - HOUR_MS:
            store.delete(lf.key)
    c = sqlite3.connect(db)  # layout 1: counters without their logs
    c.execute("ALTER TABLE counters DROP COLUMN clog")
    c.execute("ALTER TABLE counters DROP COLUMN ilog")
    c.commit()
    c.close()
    newest = max(lf.arrival_ms for lf, _ in order_files(keys)[0])
    new = landing.firehose_key("predictions", newest + 60_000, str(uuid.uuid4()))
    landing.write_file(store, new, [orjson.dumps({  # a sensor run's new file
        "prediction_id": "pz", "ts": newest, "user_id": "u0000001", "model": "m",
        "score": 0.5})])
    meta = _materialize(str(root), db, files=[new])
    assert "older online state layout" in meta["rebuild_reason"]
    assert meta["seed_snapshot_hour"] != "none"
    assert seed_mark(SqliteState(db))["done"]
    both = SqliteState(str(tmp_path / "full.db"))
    fold_files(both, lake, keys)
    fold_files(both, store, [new])
    _same_answers(SqliteState(db), both)
