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


def _log_over_buffers(path, times_ms: list[int]) -> None:
    path.write_text("ts,user,campaign\n" + "".join(f"{t},u{i % 5},c{i % 3}\n"
                                                   for i, t in enumerate(times_ms)))


class _Died(Exception):
    pass


def test_an_import_that_dies_part_way_names_its_files_for_the_next_import(tmp_path, monkeypatch):
    """Every landing file is named in the manifest before it is written: an import that dies
    after some files, followed by an import of a changed log, leaves only the new files."""
    from clicklake.platform import landing

    monkeypatch.setattr(run, "MAX_LINES_PER_FILE", 3)  # buffers cut into parts too
    base = 1748851200000
    log = tmp_path / "log.csv"
    _log_over_buffers(log, [base + i * 97_000 for i in range(60)])  # ~97 min: 20 buffers
    store = Store(str(tmp_path / "data"))
    whole = import_log(store, MAP, str(log), source="s").files_written
    for k in store.list(""):
        store.delete(k)

    written = []
    real_write = landing.write_file

    def dies_after_five(st, key, lines):
        if len(written) == 5:
            raise _Died
        real_write(st, key, lines)
        written.append(key)

    monkeypatch.setattr(landing, "write_file", dies_after_five)
    try:
        import_log(store, MAP, str(log), source="s")
    except _Died:
        pass
    monkeypatch.setattr(landing, "write_file", real_write)
    manifest = orjson.loads(store.read_bytes("import-manifests/s.json"))
    assert len(written) == 5 and set(store.list("landing")) == set(written)
    assert set(written) <= set(manifest["pending"]) and len(manifest["pending"]) == whole

    _log_over_buffers(log, [base + 7 * 3_600_000 + i * 1000 for i in range(4)])  # moved
    r = import_log(store, MAP, str(log), source="s")
    assert set(store.list("landing")) == set(
        orjson.loads(store.read_bytes("import-manifests/s.json"))["keys"])
    assert (r.files_written, r.stale_files_removed) == (2, 5)
    assert "pending" not in orjson.loads(store.read_bytes("import-manifests/s.json"))


def test_the_pending_keys_are_the_keys_written(tmp_path, monkeypatch):
    """The keys named before writing equal the keys written, on times that end parts and
    buffers at every kind of edge: ties, a fraction of a second, a buffer's last millisecond,
    an hour's last second, clicks as well as impressions."""
    import random

    from clicklake.platform import landing

    monkeypatch.setattr(run, "MAX_LINES_PER_FILE", 4)
    pending = []
    real_mark = run._mark_pending
    monkeypatch.setattr(run, "_mark_pending",
                        lambda st, key, planned: (pending.append(planned), real_mark(st, key, planned)))
    rng = random.Random(7)
    base = 1748851200000
    edges = [0, 1, 999, 1000, 299_999, 300_000, 3_599_000, 3_599_001, 3_599_999, 3_600_000]
    for trial in range(6):
        times = [base + rng.choice(edges) + rng.randrange(3) * 3_600_000 for _ in range(40)]
        times += [base + rng.randrange(3 * 3_600_000) for _ in range(40)]
        rows = "".join(f"{t},u{i % 7},c{i % 3},{t + rng.choice([1, 500, 61_000])}\n"
                       for i, t in enumerate(times))
        log = tmp_path / f"log{trial}.csv"
        log.write_text("ts,user,campaign,clicked\n" + rows)
        store = Store(str(tmp_path / f"data{trial}"))
        pending.clear()
        mapping = mapping_from_dict({"time": "ts", "time_format": "epoch_ms", "user": "user",
                                     "campaign": "campaign", "click_time": "clicked"})
        r = import_log(store, mapping, str(log), source="s")
        assert r.clicks > 0
        assert sorted(pending[0]) == sorted(store.list(landing.DEFAULT_PREFIX))


def test_each_landing_prefix_keeps_its_own_manifest(tmp_path):
    """One manifest a source overwrote whatever the prefix: an import into another prefix
    dropped the first prefix's files from it, and the next import there left them for good."""
    log = tmp_path / "log.csv"
    store = Store(str(tmp_path / "data"))
    base = 1748851200000
    _log_over_buffers(log, [base + i * 1000 for i in range(3)])
    first = import_log(store, MAP, str(log), source="s")
    other = import_log(store, MAP, str(log), source="s", prefix="alt")
    assert (first.manifest_key, other.manifest_key) == (
        "import-manifests/s.json", "import-manifests/alt/s.json")
    assert other.stale_files_removed == 0 and len(store.list("alt")) == 1
    _log_over_buffers(log, [base + 7 * 3_600_000 + i * 1000 for i in range(3)])  # moved
    again = import_log(store, MAP, str(log), source="s")
    assert again.stale_files_removed == 1
    assert store.list("landing") == orjson.loads(
        store.read_bytes("import-manifests/s.json"))["keys"]
    assert len(store.list("alt")) == 1  # the other prefix's import is its own


def test_a_mapped_column_named_twice_in_the_header_is_refused(tmp_path):
    """The first of two `user_id` columns was read, silently: every row given the wrong user
    (or, for the time, the wrong time), with 0 bad rows."""
    import pytest

    from clicklake.platform.importer import ReadError

    log = tmp_path / "log.csv"
    log.write_text("ts,user,user,campaign\n1748851200000,alice,bob,c1\n")
    with pytest.raises(ReadError, match="names user more than once"):
        import_log(Store(str(tmp_path / "data")), MAP, str(log), source="s")
