"""A run as a whole: a failed re-import keeps the earlier import, the rejects file is streamed to
the store, rejects found after the sort carry their raw row, and the scratch folder may be any
path."""

from __future__ import annotations

import orjson

from clicklake.platform.importer import import_log, mapping_from_dict, run
from clicklake.platform.storage import Store

MAP = mapping_from_dict({"time": "ts", "time_format": "epoch_ms", "user": "user",
                         "campaign": "campaign"})
WRONG = mapping_from_dict({"time": "ts", "time_format": "epoch_s", "user": "user",
                           "campaign": "campaign"})  # ms read as s: every row is bad_time
LOG = "ts,user,campaign\n" + "".join(f"174885120{i}000,u{i},c1\n" for i in range(4))


def snapshot(store: Store) -> dict[str, bytes]:
    return {k: store.read_bytes(k) for k in store.list("")}


def test_a_reimport_that_imports_nothing_leaves_the_earlier_import_whole(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    store = Store(str(tmp_path / "data"))
    good = import_log(store, MAP, str(log), source="s")
    before = snapshot(store)
    assert good.impressions == 4 and len(store.list("landing")) == 1

    # Before: the manifest was replaced and the earlier landing file deleted.
    r = import_log(store, WRONG, str(log), source="s")
    assert (r.impressions, r.files_written, r.stale_files_removed, r.bad_rows) == (
        0, 0, 0, {"bad_time": 4})
    assert r.rejects_key == "import-rejects/failed/s.ndjson"
    after = snapshot(store)
    failed = after.pop(r.rejects_key)
    assert after == before  # landing, manifest and rejects file untouched
    assert [orjson.loads(x)["line"] for x in failed.splitlines()] == [2, 3, 4, 5]

    # the next import that imports something clears the failed run's rejects
    again = import_log(store, MAP, str(log), source="s")
    assert again.impressions == 4 and not store.exists("import-rejects/failed/s.ndjson")
    assert snapshot(store) == before


def test_the_rejects_file_reaches_the_store_in_chunks_not_as_one_bytes_object(tmp_path,
                                                                             monkeypatch):
    class SpyStore(Store):
        largest = 0

        def write_bytes(self, key: str, data: bytes) -> None:
            SpyStore.largest = max(SpyStore.largest, len(data))
            super().write_bytes(key, data)

    monkeypatch.setattr(run, "UPLOAD_CHUNK", 4096, raising=False)
    ua = "Mozilla/5.0 " + "x" * 300
    rows = "".join(f"{'bad' if i % 2 else '1748851200000'},u{i},c1,{ua}\n" for i in range(400))
    log = tmp_path / "log.csv"
    log.write_text("ts,user,campaign,ua\n" + rows)
    store = SpyStore(str(tmp_path / "data"))
    r = import_log(store, mapping_from_dict({"time": "ts", "time_format": "epoch_ms",
                                             "user": "user", "campaign": "campaign",
                                             "user_agent": "ua"}), str(log))
    body = store.read_bytes(r.rejects_key)
    assert r.bad_rows == {"bad_time": 200} and len(body) > 20 * 4096
    assert [orjson.loads(x)["line"] for x in body.splitlines()] == list(range(3, 402, 2))
    # Before: the whole file was read back into memory and handed to write_bytes at once.
    assert SpyStore.largest < len(body) // 10


def test_rejects_found_after_the_sort_carry_their_raw_row(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(
        "id,ts,user,campaign,clicked\n"
        "1,2025-06-02T08:00:00Z,u1,c1,\n"
        "1,2025-06-02T08:00:00Z,u1,c2,\n"  # line 3: id 1 reused by a different row
        "2,2025-06-02T08:05:00Z,u2,c1,2025-06-02T08:04:00Z\n"  # line 4: click before it
    )
    store = Store(str(tmp_path / "data"))
    r = import_log(store, mapping_from_dict({"time": "ts", "id": "id", "user": "user",
                                             "campaign": "campaign", "click_time": "clicked"}),
                   str(log))
    got = [orjson.loads(x) for x in store.read_bytes(r.rejects_key).splitlines()]
    # Before: "raw" was "" for both.
    assert [(x["line"], x["reason"], x["dropped"], x["raw"]) for x in got] == [
        (3, "conflicting_id", "row", "1,2025-06-02T08:00:00Z,u1,c2,"),
        (4, "click_not_after_impression", "click",
         "2,2025-06-02T08:05:00Z,u2,c1,2025-06-02T08:04:00Z"),
    ]
    assert (r.impressions, r.clicks) == (2, 0)


def test_rejects_of_a_clicks_table_carry_their_raw_row(tmp_path):
    (tmp_path / "imp.csv").write_text("id,ts,user,campaign\n2,2025-06-02T08:05:00Z,u2,c1\n")
    (tmp_path / "clk.csv").write_text(
        "cid,imp,cts\nk1,2,2025-06-02T08:04:00Z\nk2,9,2025-06-02T08:06:00Z\n"
        "k3,2,2025-06-02T08:07:00Z\nk3,2,2025-06-02T08:08:00Z\n")
    m = mapping_from_dict({"time": "ts", "id": "id", "user": "user", "campaign": "campaign",
                           "clicks": {"time": "cts", "impression_id": "imp", "id": "cid"}})
    store = Store(str(tmp_path / "data"))
    r = import_log(store, m, str(tmp_path / "imp.csv"), str(tmp_path / "clk.csv"))
    got = [orjson.loads(x) for x in store.read_bytes(r.rejects_key).splitlines()]
    assert [(x["table"], x["line"], x["reason"], x["raw"]) for x in got] == [
        ("clicks", 2, "click_not_after_impression", "k1,2,2025-06-02T08:04:00Z"),
        ("clicks", 3, "unknown_impression", "k2,9,2025-06-02T08:06:00Z"),
        ("clicks", 5, "conflicting_id", "k3,2,2025-06-02T08:08:00Z"),
    ]
    assert r.clicks == 1


def test_a_scratch_folder_with_an_apostrophe_works(tmp_path):
    # Before: its path was pasted into DuckDB's SET unescaped: a ParserException.
    scratch = tmp_path / "it's tmp"
    scratch.mkdir()
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    r = import_log(Store(str(tmp_path / "data")), MAP, str(log), tmp_dir=str(scratch))
    assert r.impressions == 4 and list(scratch.iterdir()) == []
