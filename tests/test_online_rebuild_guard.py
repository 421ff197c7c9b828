"""A rebuild of the online store (a refold of every landing file, or a seed from a snapshot) is
marked unfinished together with its clear, so that a run dying anywhere in it leaves a store
every fold refuses until it is rebuilt again, never a partial one later folds go on from; a
fold whose store another run rebuilt under it applies nothing, and nor does a rebuild another
rebuild overtook (each marks the store with its own run id); and a rebuild leaves landing
files stamped ahead of the clock for later, as the sensor does."""

from __future__ import annotations

import threading
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
    rebuild_from_snapshot,
    refold_all,
    refold_mark,
    seed_hour,
)
from clicklake.platform.online.state import Commit, Fenced
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, parse_instant
from clicklake.resources.lake import LakeResource
from clicklake.resources.online_store import DynamoDbOnlineStore, SqliteOnlineStore
from tests.online_helpers import built_lake, close_enough, die_at, folded, unrun

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
    assert unrun(seed_mark(again)) == {"refold": True, "done": False}
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
    assert unrun(seed_mark(state)) == {"p": p, "start": p + HOUR_MS, "done": False}
    with pytest.raises(IncompleteSeed):
        fold_files(state, lake, keys[-1:])


def test_a_dynamodb_clear_that_died_keeps_the_mark(lake, moto_endpoint, monkeypatch):
    """DynamoDB deletes page by page: the mark is written (and the version moved) before the
    first delete, and kept by them."""
    state = DynamoDbOnlineStore(table_name=f"online-{uuid.uuid4().hex[:8]}",
                                endpoint_url=moto_endpoint, region="us-east-1",
                                create_table=True).state()
    keys = lake.list("landing/")
    fold_files(state, lake, keys[:40])
    token = state.cache_token()
    real, deleted = state.client.batch_write_item, []

    def batch_write_item(**kw):
        if len(deleted) == 2:
            raise ConnectionError("the run's worker went away")
        deleted.append(kw)
        return real(**kw)

    monkeypatch.setattr(state.client, "batch_write_item", batch_write_item)
    with pytest.raises(ConnectionError):
        state.clear(keep=(fold_mod.SEED, fold_mod.SEED_KEY, 0, refold_mark("r1")))
    monkeypatch.undo()
    assert seed_mark(state) == {"refold": True, "done": False, "run": "r1"}
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
            rebuild.clear(keep=(fold_mod.SEED, fold_mod.SEED_KEY, 0, refold_mark("r1")))
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


@pytest.mark.parametrize("kind", ["refold", "seed"])
def test_a_rebuild_overtaken_by_another_stops(lake, full, tmp_path, kind):
    """Two rebuilds at once (an instance without the pool limit): rebuild B clears the store
    while rebuild A is under way, folds part of it, and dies. Before, both marks read the same:
    A went on folding on top of B's partial store and its last commit marked the store done
    with files missing (a refold), or its seed commits went on unchecked (a seed)."""
    db = str(tmp_path / "online.db")
    keys = lake.list("landing/")
    a, b = SqliteState(db), SqliteState(db)
    die_at(b, 3)
    real, commits = a.commit, []

    def commit(c):
        commits.append(c)
        if len(commits) == 3:  # B starts beside A's third commit, and dies at its own third
            with pytest.raises(ConnectionError):
                refold_all(b, lake, keys, files_per_commit=5)
        return real(c)

    a.commit = commit
    with pytest.raises(Rebuilt):
        if kind == "refold":
            refold_all(a, lake, keys, files_per_commit=5)
        else:
            rebuild_from_snapshot(a, lake, keys, seed_hour(lake, keys), files_per_commit=5)
    assert len(commits) == 3  # A committed nothing after B's clear
    mark = seed_mark(SqliteState(db))
    assert unrun(mark) == {"refold": True, "done": False}  # B's, left unfinished
    assert mark["run"] == orjson.loads(b.get_docs(fold_mod.SEED, [fold_mod.SEED_KEY])[
        fold_mod.SEED_KEY])["run"]
    with pytest.raises(IncompleteSeed):
        fold_files(SqliteState(db), lake, keys[-2:])
    meta = _materialize(lake.root, db, files=keys[-2:])  # the next run rebuilds it again
    assert "did not finish" in meta["rebuild_reason"]
    assert seed_mark(SqliteState(db)) is None
    _same_answers(SqliteState(db), full)


@pytest.mark.parametrize("backend", ["sqlite", "dynamodb"])
def test_a_commit_lands_only_on_the_mark_it_expects(lake, tmp_path, moto_endpoint, backend):
    """`Commit.expect`: checked in the commit's first transaction on both backends."""
    if backend == "sqlite":
        state = SqliteState(str(tmp_path / "online.db"))
    else:
        state = DynamoDbOnlineStore(table_name=f"online-{uuid.uuid4().hex[:8]}",
                                    endpoint_url=moto_endpoint, region="us-east-1",
                                    create_table=True).state()
    keys = [lf.key for lf, _ in order_files(lake.list("landing/"))[0]]
    fold_files(state, lake, keys[:3])
    mine, theirs = refold_mark("mine"), refold_mark("theirs")

    def attempt(n: int, expect) -> bool:
        c = Commit(expect=(fold_mod.SEED, fold_mod.SEED_KEY, expect))
        c.record(f"seed/test/{n}", 1, {"stream": "seed", "lines": 0, "events": 0,
                                        "quarantined": {}})
        c.put("test", f"doc{n}", 0, b"x")
        return state.commit(c)

    with pytest.raises(Fenced):
        attempt(1, mine)  # no mark at all
    assert attempt(2, None)
    state.clear(keep=(fold_mod.SEED, fold_mod.SEED_KEY, 0, mine))
    with pytest.raises(Fenced):
        attempt(3, None)
    with pytest.raises(Fenced):
        attempt(4, theirs)
    assert attempt(5, mine)
    if backend == "dynamodb":  # the intent's transaction checks it too (a rebuild in between)
        real = state.get_docs
        state.get_docs = lambda ns, keys: {fold_mod.SEED_KEY: theirs} if ns == fold_mod.SEED \
            else real(ns, keys)
        with pytest.raises(Fenced):
            attempt(6, theirs)
        state.get_docs = real
    docs = state.get_docs("test", [f"doc{n}" for n in range(1, 6)])
    assert sorted(docs) == ["doc5"]  # doc2 went with the clear
    assert state.folded([f"seed/test/{n}" for n in range(1, 6)]) == {"seed/test/5"}


def test_a_dynamodb_clear_fences_a_commit_being_applied(lake, moto_endpoint):
    """A commit lands in several transactions. A rebuild's clear beside one (another run's)
    deletes `meta#pending` before it scans, so the commit's next chunk fails on its lease.
    Before, the pending item was deleted in scan order: a chunk landing after the scan and
    before that delete stayed in the cleared store, under the rebuild's fold."""
    table = f"online-{uuid.uuid4().hex[:8]}"
    a, b = (DynamoDbOnlineStore(table_name=table, endpoint_url=moto_endpoint,
                                region="us-east-1", create_table=True).state() for _ in "ab")
    assert a.client is not b.client
    a.transaction_items = 12  # many chunks
    keys = [lf.key for lf, _ in order_files(lake.list("landing/"))[0]][:3]
    at_second_chunk, chunk_done, go = (threading.Event() for _ in range(3))
    pending_gone, third_done = threading.Event(), threading.Event()
    calls, failure = [], []
    real_tx, real_delete = a.client.transact_write_items, b.client.delete_item

    def transact(**kw):
        calls.append(kw)
        n = len(calls)
        if n == 3:  # the intent, the first chunk, then the second chunk waits
            at_second_chunk.set()
            go.wait(30)
        if n == 4:  # the third chunk: once the clear has deleted `meta#pending`
            pending_gone.wait(30)
        try:
            return real_tx(**kw)
        finally:
            if n == 3:
                chunk_done.set()
            if n == 4:
                third_done.set()

    def delete(**kw):  # the clear's first delete lets the second chunk try first
        if go.is_set():
            return real_delete(**kw)
        go.set()
        chunk_done.wait(30)
        try:
            return real_delete(**kw)
        finally:
            # The clear's scan waits for the third chunk to be refused: moto undoes a refused
            # transaction by restoring the whole table as it was when the transaction began,
            # which would bring back what the scan deleted meanwhile (real DynamoDB does not).
            pending_gone.set()
            third_done.wait(30)

    a.client.transact_write_items, b.client.delete_item = transact, delete

    def run_a():
        try:
            fold_files(a, lake, keys, files_per_commit=3)
        except Exception as exc:  # noqa: BLE001 - asserted below
            failure.append(exc)

    worker = threading.Thread(target=run_a)
    worker.start()
    assert at_second_chunk.wait(30)
    b.clear(keep=(fold_mod.SEED, fold_mod.SEED_KEY, 0, refold_mark("b")))
    worker.join(30)
    assert failure and isinstance(failure[0], Rebuilt), failure
    dump = b.dump()
    assert dump["docs"] == [(fold_mod.SEED, fold_mod.SEED_KEY, 0, refold_mark("b"))]
    assert not dump["counters"] and not dump["marks"] and not dump["files"]


def test_a_rebuild_overtaken_before_its_fold_does_not_fold_on_the_other(lake, full, tmp_path,
                                                                          monkeypatch):
    """Rebuild B clears the store between rebuild A's last seed commit and A's fold. A's fold
    read the store's mark (B's) and expected it: its commits landed on B's store, B's seed
    commits then overwrote the documents A folded into and B's fold skipped A's files (13 of 23
    users differed from a full fold). A's fold expects A's own mark now, and stops."""
    import threading

    from clicklake.platform.online import seed as seed_mod

    db = str(tmp_path / "online.db")
    keys = lake.list("landing/")
    a, b = SqliteState(db), SqliteState(db)
    p = seed_hour(lake, keys)
    a_at_fold, b_cleared, a_folded = threading.Event(), threading.Event(), threading.Event()
    real_fold = seed_mod.fold_files

    def fold_files(state, *args, **kw):
        if state is not a:
            return real_fold(state, *args, **kw)
        a_at_fold.set()  # A's seed is written: B starts now
        b_cleared.wait(60)
        try:
            return real_fold(state, *args, **kw)
        finally:
            a_folded.set()

    monkeypatch.setattr(seed_mod, "fold_files", fold_files)
    real_clear = b.clear

    def clear(keep=None):
        real_clear(keep)
        b_cleared.set()
        a_folded.wait(60)  # B's seed commits come after A's fold

    b.clear = clear
    out = {}

    def run_b():
        a_at_fold.wait(60)
        out["b"] = rebuild_from_snapshot(b, lake, keys, p, files_per_commit=5)

    worker = threading.Thread(target=run_b)
    worker.start()
    with pytest.raises(Rebuilt):
        rebuild_from_snapshot(a, lake, keys, p, files_per_commit=5)
    worker.join(60)
    assert out["b"].fold.skipped == 0 and seed_mark(SqliteState(db))["done"]
    t = horizon_ms(full.watermark_ms())
    users = sorted(k for ns, k, _, _ in full.dump()["docs"] if ns == "user")
    for u in users:
        assert close_enough(OnlineFeatures(SqliteState(db)).profile(u, t),
                            OnlineFeatures(full).profile(u, t)), u


def test_a_dynamodb_clear_fences_a_commits_file_records(lake, moto_endpoint, tmp_path):
    """Run A's commit has landed its last chunk; rebuild B clears the table before A writes its
    watermark and file records. They were plain puts: they landed in B's store, which then
    skipped those files as folded (9 users where the full fold has 10)."""
    table = f"online-{uuid.uuid4().hex[:8]}"
    a, b = (DynamoDbOnlineStore(table_name=table, endpoint_url=moto_endpoint,
                                region="us-east-1", create_table=True).state() for _ in "ab")
    keys = [lf.key for lf, _ in order_files(lake.list("landing/"))[0]][:30]
    paused, go = threading.Event(), threading.Event()
    real_tx = a.client.transact_write_items

    def transact(**kw):  # A's first write after its last chunk: the watermark's
        if any(i.get("Update", {}).get("Key", {}).get("pk", {}).get("S") == "meta#watermark"
               for i in kw["TransactItems"]) and not go.is_set():
            paused.set()
            go.wait(60)
        return real_tx(**kw)

    a.client.transact_write_items = transact
    real_commit = b.commit

    def commit(c):  # after B's first commit on the cleared table, A goes on
        done = real_commit(c)
        if not go.is_set():
            go.set()
            worker.join(60)
        return done

    b.commit = commit
    errors = []

    def run_a():
        try:
            fold_files(a, lake, keys[-4:], files_per_commit=4)
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    worker = threading.Thread(target=run_a)
    worker.start()
    assert paused.wait(60)
    report = refold_all(b, lake, keys, files_per_commit=10)
    assert errors and isinstance(errors[0], Rebuilt), errors
    assert report.files == len(keys) and report.skipped == 0
    reference = SqliteState(str(tmp_path / "reference.db"))
    fold_files(reference, lake, keys, files_per_commit=10)
    got, want = b.dump(), reference.dump()
    assert got["docs"] == want["docs"] and got["counters"] == want["counters"]
