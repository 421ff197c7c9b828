"""Online fold and reads on tiny hand-made landing zones with known answers: reads exclude events
at or after t even when already folded, sawtooth windows, dedup per event hour, lateness and
future verdicts on the file's key time, a click whose impression arrives later moves to that
impression's country, unknown users, and instants older than the horizon."""

from __future__ import annotations

import pytest

from clicklake.platform.online import BeforeHorizon, OnlineFeatures, SqliteState, fold_files
from clicklake.platform.online.segment_state import window_24h
from clicklake.platform.storage import Store
from tests.landing_factory import MIN, H, click, impression, land

US_IP, DE_IP = "8.8.8.8", "46.4.0.1"  # Google (US) and Hetzner (DE) address space


@pytest.fixture
def env(tmp_path):
    store = Store(str(tmp_path / "lake"))
    state = SqliteState(str(tmp_path / "online.db"))
    return store, state, OnlineFeatures(state)


def test_reads_count_only_events_before_t_and_windows_are_sawtooth(env):
    store, state, online = env
    land(store, "impressions", H + 50 * MIN, [
        impression("a", H - 30 * MIN, cost=0.5),  # previous hour
        impression("b", H + 10 * MIN, cost=0.25, domain="x.com")], "1")
    land(store, "impressions", H + 90 * MIN, [
        impression("c", H + 80 * MIN, campaign="c2", domain="y.com")], "2")
    fold_files(state, store, store.list("landing/"))
    p = online.profile("u1", H + 10 * MIN)  # b is at exactly t: not history
    assert (p["impressions"], p["spend"], p["impressions_1h"], p["distinct_domains"]) == (1, 0.5, 1, 0)
    assert p["last_impression_ts"] == H - 30 * MIN
    p = online.profile("u1", H + 10 * MIN + 1)
    assert (p["impressions"], p["impressions_1h"], p["distinct_domains"]) == (2, 2, 1)
    p = online.profile("u1", H + 81 * MIN)  # 1 h sawtooth: hour H whole + [H+1h, t)
    assert (p["impressions"], p["impressions_1h"], p["distinct_campaigns"]) == (3, 2, 2)
    assert p["campaigns"] == {"c1": {"impressions": 2, "clicks": 0},
                              "c2": {"impressions": 1, "clicks": 0}}
    assert online.profile("nobody", H) is None


def test_dedup_is_per_event_hour_and_verdicts_use_the_key_time(env):
    store, state, online = env
    land(store, "impressions", H + 5 * MIN, [impression("a", H + MIN), impression("a", H + 2 * MIN),
                                             impression("f", H + 30 * MIN)], "1")  # f: future
    land(store, "impressions", H + 70 * MIN, [impression("a", H + 61 * MIN)], "2")  # other hour
    land(store, "impressions", H + 3 * 60 * MIN, [impression("l", H + 3 * MIN)], "3")  # late
    report = fold_files(state, store, store.list("landing/"))
    assert report.quarantined == {"duplicate": 1, "future": 1, "late": 1}
    assert report.events_total == 2
    assert online.profile("u1", H + 3 * 60 * MIN)["impressions"] == 2


def test_a_click_folded_before_its_impression_moves_to_its_country(env):
    store, state, _ = env
    land(store, "clicks", H + 20 * MIN, [click("k1", H + 12 * MIN, "i-de")], "1")
    fold_files(state, store, store.list("landing/"))
    t = H + 30 * MIN
    assert window_24h(state, "country", "unknown", t) == (0, 1)
    land(store, "impressions", H + 25 * MIN, [impression("i-us", H + 5 * MIN, ip=US_IP),
                                              impression("i-de", H + 10 * MIN, ip=DE_IP)], "2")
    fold_files(state, store, store.list("landing/"))
    assert window_24h(state, "country", "unknown", t) == (0, 0)
    assert window_24h(state, "country", "DE", t) == (1, 1)
    assert window_24h(state, "country", "US", t) == (1, 0)
    assert window_24h(state, "global", "all", H + 12 * MIN) == (2, 0)  # the click is at 12 min
    assert window_24h(state, "global", "all", H + 12 * MIN + 1) == (2, 1)


def test_instants_before_the_horizon_are_refused(env):
    store, state, online = env
    land(store, "impressions", H + 10 * 60 * MIN, [impression("a", H + 10 * 60 * MIN)], "1")
    fold_files(state, store, store.list("landing/"))
    with pytest.raises(BeforeHorizon):
        online.profile("u1", H)
    assert online.profile("u1", H + 11 * 60 * MIN)["impressions"] == 1


def test_a_read_racing_a_fold_that_moves_the_horizon_is_refused_not_answered_wrong(tmp_path):
    # The reader checks t against the watermark it sees, then a fold commits a file whose
    # arrival moves the horizon an hour, then the reader reads the document, trimmed at that
    # later horizon: it no longer holds the events before it one by one (predictions, first
    # times, last times), so it must not answer for t before it.
    from clicklake.platform.online import fold

    path = str(tmp_path / "online.db")
    writer = SqliteState(path)
    h0 = fold.horizon_ms(H)  # the horizon while the watermark is in hour H
    t = h0 + 10 * MIN
    imp = ("i1", h0 + 30 * MIN, "u1", "c1", "late.com", US_IP, "curl/8", 0.5)
    fold.fold_rows(writer, "impressions", [imp], "f1", H + 5 * MIN)
    fold.fold_rows(writer, "predictions", [("p1", h0 - 60 * MIN, "u1", "m", 0.11, None),
                                           ("p2", h0 + 30 * MIN, "u1", "m", 0.99, None)],
                   "f2", H + 5 * MIN)
    online = OnlineFeatures(SqliteState(path))
    assert online.profile("u1", t)["impressions"] == 0  # i1 is after t
    assert online.feature_inputs("u1", "c1", t, US_IP, "curl/8")["pred_score"][0] == 0.11

    class Raced(OnlineFeatures):
        def _doc(self, user_id, ts):
            # an hour later: the horizon passes h0 + 1 h, and u1's document is trimmed there
            later = ("i2", H + 60 * MIN + 40 * MIN, "u1", "c1", None, US_IP, "curl/8", 0.5)
            fold.fold_rows(writer, "impressions", [later], f"f-{ts}", H + 60 * MIN + 45 * MIN)
            return super()._doc(user_id, ts)

    raced = Raced(SqliteState(path))
    with pytest.raises(BeforeHorizon):
        raced.profile("u1", t)
    with pytest.raises(BeforeHorizon):
        raced.feature_inputs("u1", "c1", t + 1, US_IP, "curl/8")
    # at or after the new horizon the document answers, exactly
    assert online.profile("u1", h0 + 60 * MIN)["impressions"] == 1
    later = online.feature_inputs("u1", "c1", h0 + 60 * MIN, US_IP, "curl/8")
    assert later["pred_score"][0] == 0.99


def test_documents_of_a_newer_layout_are_refused_by_readers_and_writers(env, tmp_path,
                                                                        monkeypatch):
    # What a later clicklake writes, this one may misread (this one's trimmed documents broke
    # the readers before it): the store records its documents' layout, and both sides check,
    # a server already running too.
    import time

    from fastapi.testclient import TestClient

    from clicklake.platform.online import read
    from clicklake.platform.online.state import DOCS_LAYOUT, StaleLayout
    from clicklake.serving.app import lake_app
    from clicklake.serving.sources import open_online_source

    store, state, _ = env
    land(store, "impressions", H + 10 * MIN, [impression("a", H + 5 * MIN)], "1")
    fold_files(state, store, store.list("landing/"))
    path = str(tmp_path / "online.db")
    assert state.conn.execute("SELECT v FROM meta WHERE k='docs_layout'").fetchone()[0] == \
        DOCS_LAYOUT
    serving = open_online_source(path)  # a server opened before the newer writer came
    serving.profile("u1", H + 11 * MIN)  # readable
    state.conn.execute("UPDATE meta SET v=? WHERE k='docs_layout'", (DOCS_LAYOUT + 1,))
    with pytest.raises(StaleLayout, match="newer clicklake"):
        open_online_source(path)
    serving.profile("u1", H + 11 * MIN)  # the layout is read again every LAYOUT_CHECK_S only
    later = time.monotonic() + read.LAYOUT_CHECK_S
    monkeypatch.setattr(read.time, "monotonic", lambda: later)
    with pytest.raises(StaleLayout, match="newer clicklake"):
        serving.profile("u1", H + 11 * MIN)
    with pytest.raises(StaleLayout, match="newer clicklake"):
        serving.feature_inputs("u1", "c1", H + 11 * MIN, US_IP, "curl/8")
    api = TestClient(lake_app(store, source=serving))  # and the REST API says so
    health = api.get("/healthz")  # (no model in this lake either)
    assert health.status_code == 503 and "newer clicklake" in health.json()["source_error"]
    for answer in (api.get("/v1/users/u1/profile"),
                   api.get("/v1/users/u1/profile", params={"lists": "false"})):
        assert answer.status_code == 503 and answer.json()["code"] == "stale_layout"
        assert "newer clicklake" in answer.json()["detail"]
    land(store, "impressions", H + 20 * MIN, [impression("b", H + 15 * MIN)], "2")
    with pytest.raises(StaleLayout, match="newer clicklake"):
        fold_files(SqliteState(path), store, store.list("landing/"))
    with pytest.raises(StaleLayout, match="newer clicklake"):  # nor one that committed before
        fold_files(state, store, store.list("landing/"))
    assert SqliteState(path).folded(store.list("landing/")) == {store.list("landing/")[0]}


def test_a_micro_batch_folds_like_file_by_file(tmp_path):
    """Every file in one commit: dedup across the batch's files, a click folded before its
    impression in the same batch, quarantine verdicts; same counters, file stats and reads as
    one commit per file."""
    store = Store(str(tmp_path / "lake"))
    land(store, "clicks", H + 20 * MIN, [click("k1", H + 12 * MIN, "i-de"),
                                         click("k1", H + 13 * MIN, "i-de")], "1")  # dup
    land(store, "impressions", H + 25 * MIN, [impression("i-us", H + 5 * MIN, ip=US_IP),
                                              impression("i-de", H + 10 * MIN, ip=DE_IP),
                                              b"{not json"], "2")
    land(store, "impressions", H + 26 * MIN, [impression("i-de", H + 10 * MIN, ip=DE_IP),
                                              impression("i-x", H + 45 * MIN)], "3")  # dup, future
    keys = store.list("landing/")
    one = SqliteState(str(tmp_path / "one.db"))
    batch = SqliteState(str(tmp_path / "batch.db"))
    a = fold_files(one, store, keys)
    b = fold_files(batch, store, keys, files_per_commit=10)
    assert (a.files, a.events_total, a.quarantined) == (b.files, b.events_total, b.quarantined)
    assert b.quarantined == {"duplicate": 2, "malformed": 1, "future": 1}
    assert one.dump() == batch.dump()  # no trimming here, so even the documents are equal
    t = H + 30 * MIN
    assert window_24h(batch, "country", "DE", t) == (1, 1)
    assert window_24h(batch, "country", "unknown", t) == (0, 0)
    assert OnlineFeatures(batch).profile("u1", t)["clicks"] == 1


@pytest.mark.parametrize("files_per_commit", [1, 10])
def test_a_key_listed_twice_is_folded_once(tmp_path, files_per_commit):
    """A hand-written `files:` list may name a file twice: it is folded once, not refused (the
    batch's two records of one key would break the files table's uniqueness)."""
    store = Store(str(tmp_path / "lake"))
    k1 = land(store, "impressions", H + 5 * MIN, [impression("i1", H + MIN)], "1")
    k2 = land(store, "impressions", H + 6 * MIN, [impression("i2", H + 2 * MIN)], "2")
    state = SqliteState(str(tmp_path / "online.db"))
    report = fold_files(state, store, [k1, k2, k1], files_per_commit=files_per_commit)
    assert (report.files, report.events_total) == (2, 2)
    assert OnlineFeatures(state).profile("u1", H + 10 * MIN)["impressions"] == 2


def _table_sql(state: SqliteState, table: str) -> str:
    return state.conn.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name=?",
                              (table,)).fetchone()[0]


def test_an_older_stores_without_rowid_tables_are_moved_over_by_its_first_writer(env, tmp_path):
    """A megabyte document in a WITHOUT ROWID table slows every other write: documents and
    counter rows live in rowid tables, and a store written before them is moved over, contents
    and answers unchanged, by the first commit of a writer; a reader leaves it as it is."""
    import sqlite3

    store, state, online = env
    land(store, "impressions", H + 10 * MIN, [impression("a", H + 5 * MIN, domain="x.com")], "1")
    fold_files(state, store, store.list("landing/"))
    before, answer = state.dump(), online.profile("u1", H + 11 * MIN)
    state.close()
    old = sqlite3.connect(str(tmp_path / "online.db"), isolation_level=None)
    # the tables as the previous version wrote them
    columns = {"docs": "ns TEXT NOT NULL, key TEXT NOT NULL, hour INTEGER NOT NULL, value BLOB "
                       "NOT NULL, PRIMARY KEY (ns, key)",
               "counters": "tbl TEXT NOT NULL, pk TEXT NOT NULL, sk INTEGER NOT NULL, imp "
                           "INTEGER NOT NULL, clk INTEGER NOT NULL, ilog TEXT NOT NULL, clog "
                           "TEXT NOT NULL, PRIMARY KEY (tbl, pk, sk)"}
    for table, cols in columns.items():
        old.executescript(f"""BEGIN; CREATE TABLE {table}_old ({cols}) WITHOUT ROWID;
            INSERT INTO {table}_old SELECT * FROM {table}; DROP TABLE {table};
            ALTER TABLE {table}_old RENAME TO {table}; COMMIT;""")
    old.close()
    reader = SqliteState(str(tmp_path / "online.db"))
    assert OnlineFeatures(reader).profile("u1", H + 11 * MIN) == answer
    assert all("WITHOUT ROWID" in _table_sql(reader, t) for t in ("docs", "counters"))
    writer = SqliteState(str(tmp_path / "online.db"))
    assert writer.dump() == before
    land(store, "impressions", H + 20 * MIN, [impression("b", H + 15 * MIN)], "2")
    fold_files(writer, store, store.list("landing/"))
    for table in ("docs", "counters"):
        assert "WITHOUT ROWID" not in _table_sql(writer, table).upper()
        assert "UNIQUE" in _table_sql(writer, table)
    assert OnlineFeatures(reader).profile("u1", H + 11 * MIN) == answer  # the reader goes on
    assert OnlineFeatures(reader).profile("u1", H + 16 * MIN)["impressions"] == 2
    after = writer.dump()
    assert {k: v for k, v in after.items() if k != "files"} != {
        k: v for k, v in before.items() if k != "files"}  # b folded on the moved tables
    assert after["files"][0] == before["files"][0]


@pytest.mark.parametrize("where", ["parent_is_a_file", "a_folder", "not_a_database"])
def test_a_store_that_cannot_be_opened_is_named_with_its_setting(tmp_path, where):
    # The bare errors were "File exists" (a parent that is a file) and "unable to open
    # database file" (a folder), naming no path: in every sensor tick and serving_lookup run.
    from clicklake.platform.online.sqlite_state import UnusableStore

    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    (tmp_path / "text.db").write_text("not a database " * 100)
    path = {"parent_is_a_file": tmp_path / "afile" / "online.db", "a_folder": tmp_path / "adir",
            "not_a_database": tmp_path / "text.db"}[where]
    with pytest.raises(UnusableStore, match="CLICKLAKE_ONLINE_DB") as exc:
        SqliteState(str(path))
    assert str(path) in str(exc.value)
