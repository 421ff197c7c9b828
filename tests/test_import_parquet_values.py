"""Parquet values Python does not read as plain text or times: out-of-range timestamps and dates,
binary (non-UTF8-annotated) string columns, nested values. Each bad cell rejects its row with a
reason; every other row imports unchanged."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from clicklake.platform import landing
from clicklake.platform.importer import import_log, mapping_from_dict
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import parse_instant

H10 = parse_instant("2026-11-25T10:00:00Z")
MAP = mapping_from_dict({"time": "t", "user": "u", "campaign": "c"})
BEYOND = 10**17  # ms: year ~3.17 million, past Python's datetime


def landed(store: Store, stream: str) -> list[dict]:
    out = []
    for key in store.list(f"landing/{stream}"):
        out += [orjson.loads(line) for line in landing.read_lines(store, key).lines]
    return out


def run(tmp_path, table: pa.Table, name: str = "log"):
    path = tmp_path / f"{name}.parquet"
    pq.write_table(table, path)
    store = Store(str(tmp_path / f"data-{name}"))
    return store, import_log(store, MAP, str(path))


def rejects(r) -> list[tuple[int, str, str]]:
    return [(x["line"], x["reason"], x["detail"]) for x in r.first_rejects]


def test_a_timestamp_past_year_9999_rejects_its_row_only(tmp_path):
    t = pa.array([H10, BEYOND, H10 + 1_000], pa.timestamp("ms", tz="UTC"))
    store, r = run(tmp_path, pa.table({"t": t, "u": ["u1", "u2", "u3"], "c": ["c"] * 3}))
    assert (r.rows_read, r.impressions, r.bad_rows) == (3, 2, {"bad_time": 1})
    assert rejects(r) == [
        (2, "bad_time", f"t: {BEYOND} (timestamp[ms, tz=UTC]) is outside the years 1-9999")]
    assert [(e["user_id"], e["ts"]) for e in landed(store, "impressions")] == [
        ("u1", H10), ("u3", H10 + 1_000)]


def test_a_date_past_year_9999_is_a_bad_time_and_loses_no_row_where_unmapped(tmp_path):
    d = pa.array([10**8, -(10**8)], pa.date32())
    t = pa.array([H10, H10], pa.timestamp("ms", tz="UTC"))
    _, r = run(tmp_path, pa.table({"t": t, "d": d, "u": ["u1", "u2"], "c": ["c"] * 2}))
    assert (r.impressions, r.bad_rows) == (2, {})  # unmapped: read, kept in the row identity
    _, r = run(tmp_path, pa.table({"t": d, "u": ["u2", "u3"], "c": ["c"] * 2}), "mapped")
    assert (r.impressions, r.bad_rows) == (0, {"bad_time": 2})
    assert [(line, reason) for line, reason, _ in rejects(r)] == [(1, "bad_time"), (2, "bad_time")]
    assert "outside the years 1-9999" in rejects(r)[0][2]


def test_an_out_of_range_value_in_an_unmapped_column_loses_no_row(tmp_path):
    t = pa.array([H10, H10 + 1_000], pa.timestamp("ms"))
    seen = pa.array([BEYOND, BEYOND + 1], pa.timestamp("ms"))  # not used by the mapping
    store, r = run(tmp_path, pa.table({"t": t, "seen": seen, "u": ["u1", "u2"], "c": ["c"] * 2}))
    assert (r.impressions, r.bad_rows) == (2, {})
    # the two rows differ only in the unreadable column: they stay two events
    assert len({e["impression_id"] for e in landed(store, "impressions")}) == 2


def test_binary_string_columns_are_read_as_utf8_text(tmp_path):
    t = pa.array([H10, H10 + 1_000], pa.timestamp("ms", tz="UTC"))
    as_bytes = pa.table({"t": t, "u": pa.array([b"u1", "\u00e9".encode()], pa.binary()),
                         "c": pa.array([b"camp-7"] * 2, pa.large_binary())})
    as_text = pa.table({"t": t, "u": ["u1", "\u00e9"], "c": ["camp-7"] * 2})
    store, r = run(tmp_path, as_bytes, "bytes")
    assert (r.impressions, r.bad_rows) == (2, {})
    got = landed(store, "impressions")
    assert [(e["user_id"], e["campaign_id"]) for e in got] == [("u1", "camp-7"), ("\u00e9", "camp-7")]
    # the same log with annotated strings derives the same impression ids
    store2, _ = run(tmp_path, as_text, "text")
    assert [e["impression_id"] for e in landed(store2, "impressions")] == [
        e["impression_id"] for e in got]


def test_binary_time_column_is_parsed_as_text(tmp_path):
    t = pa.array([b"2026-11-25T10:00:00Z", b" "], pa.binary())
    store, r = run(tmp_path, pa.table({"t": t, "u": ["u1", "u2"], "c": ["c"] * 2}))
    assert (r.impressions, r.bad_rows) == (1, {"missing_field": 1})
    assert [e["ts"] for e in landed(store, "impressions")] == [H10]


def test_invalid_utf8_in_a_binary_column_is_a_malformed_row(tmp_path):
    t = pa.array([H10, H10 + 1_000], pa.timestamp("ms"))
    u = pa.array([b"u\xff1", b"u2"], pa.binary())
    store, r = run(tmp_path, pa.table({"t": t, "u": u, "c": ["c"] * 2}))
    assert (r.impressions, r.bad_rows) == (1, {"malformed": 1})
    [rej] = r.first_rejects
    assert (rej["line"], rej["reason"], rej["detail"]) == (1, "malformed",
                                                          "u: invalid UTF-8 bytes")
    assert "u\ufffd1" in rej["raw"]  # shown, not as a bytes repr
    assert [e["user_id"] for e in landed(store, "impressions")] == ["u2"]


def test_a_binary_column_the_mapping_does_not_read_rejects_nothing(tmp_path):
    # 16-byte binary request ids (a Spark or BigQuery BYTES column) in a column no field reads:
    # every row was `malformed` ("invalid UTF-8 bytes", no column named), and nothing imported.
    t = pa.array([H10, H10 + 1_000, H10 + 2_000], pa.timestamp("ms"))
    req = pa.array([b"\xff\x00\x10" * 5 + b"a", b"\x80" * 16, b"\xff\x00\x10" * 5 + b"a"],
                   pa.binary(16))
    store, r = run(tmp_path, pa.table({"t": t, "u": ["u1", "u2", "u1"], "c": ["c"] * 3,
                                       "req": req}))
    assert (r.rows_read, r.impressions, r.bad_rows) == (3, 3, {})
    ids = [e["impression_id"] for e in landed(store, "impressions")]
    assert len(set(ids)) == 3  # the binary column is part of each row's identity
    store2, _ = run(tmp_path, pa.table({"t": t, "u": ["u1", "u2", "u1"], "c": ["c"] * 3,
                                        "req": req}), name="again")
    assert [e["impression_id"] for e in landed(store2, "impressions")] == ids


def test_a_nested_value_for_a_text_field_is_a_bad_value(tmp_path):
    t = pa.array([H10, H10 + 1_000, H10 + 2_000], pa.timestamp("ms"))
    u = pa.array([[1, 2], [3], None], pa.list_(pa.int64()))
    c = pa.array([{"a": 1}, {"a": 2}, {"a": 3}])
    store, r = run(tmp_path, pa.table({"t": t, "u": u, "c": c, "v": ["u1", "u2", "u3"]}))
    assert (r.impressions, r.bad_rows) == (0, {"bad_value": 2, "missing_field": 1})
    assert rejects(r)[:2] == [(1, "bad_value", "u: '[1, 2]' is a nested value, not text"),
                              (2, "bad_value", "u: '[3]' is a nested value, not text")]
    assert landed(store, "impressions") == []  # no "[1, 2]" user stored


def test_an_infinite_cost_or_click_time_is_a_bad_value_not_an_absent_one(tmp_path):
    # Before: ±inf read as "no cost" and "no click". NaN, a float column's null, stays absent.
    s = H10 // 1000
    table = pa.table({
        "t": pa.array([H10] * 6, pa.timestamp("ms", tz="UTC")),
        "u": [f"u{i}" for i in range(6)], "c": ["c"] * 6,
        "cost": pa.array([float("inf"), float("-inf"), float("nan"), 0.25, 0.5, 0.5]),
        "k": pa.array([s + 60.0, s + 60.0, s + 60.0, float("nan"), float("inf"),
                       float("-inf")]),
    })
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    store = Store(str(tmp_path / "data"))
    m = mapping_from_dict({"time": "t", "user": "u", "campaign": "c", "cost": "cost",
                           "click_time": "k", "click_time_format": "epoch_s"})
    r = import_log(store, m, str(path))
    assert [(line, reason) for line, reason, _ in rejects(r)] == [
        (1, "bad_value"), (2, "bad_value"), (5, "bad_time"), (6, "bad_time")]
    assert sorted((e["user_id"], e.get("cost")) for e in landed(store, "impressions")) == [
        ("u2", None), ("u3", 0.25)]
    assert [e["impression_id"] for e in landed(store, "clicks")] == [
        next(e["impression_id"] for e in landed(store, "impressions") if e["user_id"] == "u2")]
