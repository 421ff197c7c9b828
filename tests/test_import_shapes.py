"""End to end: small logs of each public shape → `import_log` → landing → raw partitions.

Each test writes its own log, imports it, and checks exact counts, the landing content, the rejects
with their line numbers, and that `build_raw_partition` keeps every imported event of every hour
with zero quarantine rows.
"""

from __future__ import annotations

import gzip

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from clicklake.platform import landing
from clicklake.platform.importer import import_log, mapping_from_dict
from clicklake.platform.raw import build_raw_partition
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, parse_instant

H10 = parse_instant("2026-11-25T10:00:00Z")


def landed(store: Store, stream: str) -> list[dict]:
    """Every event of a stream in the landing zone, in key order."""
    out = []
    for key in store.list(f"landing/{stream}"):
        out += [orjson.loads(line) for line in landing.read_lines(store, key).lines]
    return out


def raw_totals(store: Store, hours: list[int]) -> dict[str, tuple[int, int]]:
    """(kept, quarantined) per stream over the imported hours and the hour after each."""
    every = sorted({h for h0 in hours for h in (h0, h0 + HOUR_MS)})
    out = {}
    for stream in ("impressions", "clicks"):
        kept = quarantined = 0
        for h in every:
            part = build_raw_partition(store, stream, h)
            kept += part.kept
            quarantined += part.quarantine.num_rows
        out[stream] = (kept, quarantined)
    return out


# -- (a) exposure per row, optional click-time column, messy CSV ------------------------------

CSV_A = (
    b"\xef\xbb\xbfexported by adserver v2\n"  # a banner line before the header
    b"\x00\x01id,ts,user,campaign,site,ua,cost,clicked_at\n"  # junk glued to the header
    b"i3,2026-11-25T10:20:00Z,u1,c1,a.com,Mozilla/5.0,0.002,2026-11-25T10:21:00Z\n"  # line 3
    b"i1,2026-11-25T10:05:00Z,u1,c1,a.com,,0.001,\n"  # line 4
    b"\n"  # line 5: blank
    b"i2,2026-11-25 10:10:00,u2,c2,,,,2026-11-25T10:09:00Z\n"  # line 6: click before impression
    b"i1,2026-11-25T10:05:00Z,u1,c1,a.com,,0.001,\n"  # line 7: duplicate of line 4
    b"i4,not-a-time,u3,c1,b.com,,,\n"  # line 8: bad time
    b"i5,2026-11-25T11:00:00Z,u3,c1\n"  # line 9: too few fields
    b"i6,2026-11-25T11:59:30Z,u3,c2,b.com,,-1,\n"  # line 10: negative cost
    b"i7,2026-11-25T11:59:30Z,u3,c2,b.com,,,2026-11-25T12:00:10Z\n"  # line 11: click next hour
    b"i1,2026-11-25T10:06:00Z,u9,c1,a.com,,,\n"  # line 12: id i1 reused by a different row
)
MAP_A = {"time": "ts", "id": "id", "user": "user", "campaign": "campaign", "site": "site",
         "user_agent": "ua", "cost": "cost", "click_time": "clicked_at"}


def test_exposure_per_row_csv_with_click_times(tmp_path):
    log = tmp_path / "log.csv"
    log.write_bytes(CSV_A)
    store = Store(str(tmp_path / "data"))
    r = import_log(store, mapping_from_dict(MAP_A), str(log))

    assert (r.rows_read, r.impressions, r.clicks, r.duplicate_rows) == (9, 4, 2, 1)
    assert r.bad_rows == {"bad_time": 1, "bad_value": 1, "conflicting_id": 1, "malformed": 1}
    assert r.rejected_clicks == {"click_not_after_impression": 1}
    assert r.rows_read == r.impressions + r.duplicate_rows + r.bad_row_count
    assert (r.blank_lines, r.skipped_before_header) == (1, 1)

    rejects = [orjson.loads(x) for x in store.read_bytes(r.rejects_key).splitlines()]
    assert sorted((x["line"], x["reason"]) for x in rejects) == [
        (1, "before_header"), (6, "click_not_after_impression"), (8, "bad_time"),
        (9, "malformed"), (10, "bad_value"), (12, "conflicting_id"),
    ]

    imps = landed(store, "impressions")
    assert sorted(e["impression_id"] for e in imps) == ["i1", "i2", "i3", "i7"]
    i3 = next(e for e in imps if e["impression_id"] == "i3")
    assert i3 == {"impression_id": "i3", "ts": H10 + 20 * 60_000, "user_id": "u1",
                  "campaign_id": "c1", "domain": "a.com", "user_agent": "Mozilla/5.0",
                  "cost": 0.002}
    i2 = next(e for e in imps if e["impression_id"] == "i2")
    assert set(i2) == {"impression_id", "ts", "user_id", "campaign_id"}  # blanks become nulls
    clicks = landed(store, "clicks")
    assert sorted((c["impression_id"], c["ts"]) for c in clicks) == [
        ("i3", H10 + 21 * 60_000), ("i7", H10 + 2 * HOUR_MS + 10_000)]

    assert r.hours == [H10, H10 + HOUR_MS, H10 + 2 * HOUR_MS]
    assert raw_totals(store, r.hours) == {"impressions": (4, 0), "clicks": (2, 0)}


def test_landing_files_are_five_minute_buffers_keyed_by_their_last_event(tmp_path):
    log = tmp_path / "log.csv"
    log.write_bytes(CSV_A)
    store = Store(str(tmp_path / "data"))
    import_log(store, mapping_from_dict(MAP_A), str(log))
    keys = store.list("landing/impressions")
    times = sorted(landing.parse_key(k).arrival_ms for k in keys)
    assert times == [H10 + 5 * 60_000, H10 + 10 * 60_000, H10 + 20 * 60_000,
                     H10 + HOUR_MS + 59 * 60_000 + 30_000]
    # every event sits in a 5-minute buffer, in a file that arrives at or after it, that hour
    for key in keys:
        arrival = landing.parse_key(key).arrival_ms
        for line in landing.read_lines(store, key).lines:
            ts = orjson.loads(line)["ts"]
            assert 0 <= arrival - ts < 5 * 60_000 and arrival // HOUR_MS == ts // HOUR_MS


def test_reimport_writes_identical_keys_and_bytes(tmp_path):
    log = tmp_path / "log.csv"
    log.write_bytes(CSV_A)
    store = Store(str(tmp_path / "data"))

    def snapshot():
        return {k: store.read_bytes(k) for k in store.list("landing")}

    import_log(store, mapping_from_dict(MAP_A), str(log))
    first = snapshot()
    r2 = import_log(store, mapping_from_dict(MAP_A), str(log))
    assert snapshot() == first and r2.stale_files_removed == 0
    assert raw_totals(store, r2.hours) == {"impressions": (4, 0), "clicks": (2, 0)}


def test_reimport_of_a_shrunk_log_removes_its_stale_files(tmp_path):
    log = tmp_path / "log.csv"
    log.write_bytes(CSV_A)
    store = Store(str(tmp_path / "data"))
    import_log(store, mapping_from_dict(MAP_A), str(log))
    log.write_bytes(b"id,ts,user,campaign,site,ua,cost,clicked_at\n"
                    b"i3,2026-11-25T10:20:00Z,u1,c1,a.com,Mozilla/5.0,0.002,2026-11-25T10:21:00Z\n")
    r = import_log(store, mapping_from_dict(MAP_A), str(log))
    assert (r.impressions, r.clicks, r.stale_files_removed) == (1, 1, 4)
    assert [e["impression_id"] for e in landed(store, "impressions")] == ["i3"]
    assert len(landed(store, "clicks")) == 1


# -- (b) gzip CSV, 0/1 label, YYMMDDHH hours (Avazu-like) --------------------------------------

AVAZU = (
    "id,click,hour,C1,banner_pos,site_id,app_id,device_id,device_ip,device_model,C17\n"
    "1001,0,14102101,1005,0,s1,a0,d1,ip1,m1,100\n"
    "1000,1,14102100,1005,0,s1,a0,d1,ip1,m1,100\n"
    "1002,1,14102100,1005,1,s2,a0,a99f214a,ip2,m2,200\n"
    "1000,1,14102100,1005,0,s1,a0,d1,ip1,m1,100\n"  # duplicate (same id, same row)
    "1003,2,14102101,1005,0,s1,a0,d3,ip3,m3,100\n"  # line 6: label 2
    "1004,1,141021,1005,0,s1,a0,d3,ip3,m3,100\n"  # line 7: not YYMMDDHH (6 digits → bad month)
    "1005,0,14102101,1005,0,s1,a0,d3,ip3,m3,\n"  # line 8: no campaign
)
MAP_B = {"time": "hour", "time_format": "yymmddhh", "id": "id",
         "user": ["device_id", "device_ip", "device_model"], "campaign": "C17",
         "site": ["site_id", "app_id"], "label": "click", "click_delay": 45}
OCT21 = parse_instant("2014-10-21T00:00:00Z")


def test_gzip_csv_with_label_and_hour_level_time(tmp_path):
    log = tmp_path / "train.gz"
    log.write_bytes(gzip.compress(AVAZU.encode()))
    store = Store(str(tmp_path / "data"))
    r = import_log(store, mapping_from_dict(MAP_B), str(log))

    assert (r.rows_read, r.impressions, r.clicks, r.duplicate_rows) == (7, 3, 2, 1)
    assert r.bad_rows == {"bad_time": 1, "bad_value": 1, "missing_field": 1}
    assert [(x["line"], x["reason"]) for x in r.first_rejects] == [
        (6, "bad_value"), (7, "bad_time"), (8, "missing_field")]
    imps = {e["impression_id"]: e for e in landed(store, "impressions")}
    assert imps["1000"] == {"impression_id": "1000", "ts": OCT21, "user_id": "d1:ip1:m1",
                            "campaign_id": "100", "domain": "s1:a0"}
    assert imps["1001"]["ts"] == OCT21 + HOUR_MS  # hour-level times sit at the hour start
    clicks = sorted((c["impression_id"], c["ts"], c["user_id"]) for c in landed(store, "clicks"))
    assert clicks == [("1000", OCT21 + 45_000, "d1:ip1:m1"),
                      ("1002", OCT21 + 45_000, "a99f214a:ip2:m2")]
    assert raw_totals(store, r.hours) == {"impressions": (3, 0), "clicks": (2, 0)}


def test_shift_to_moves_whole_weeks_keeping_hour_and_weekday(tmp_path):
    log = tmp_path / "train.gz"
    log.write_bytes(gzip.compress(AVAZU.encode()))
    store = Store(str(tmp_path / "data"))
    target = parse_instant("2025-06-01T00:00:00Z")
    r = import_log(store, mapping_from_dict(MAP_B), str(log), shift_to_ms=target)
    week = 7 * 24 * HOUR_MS
    assert r.shift_ms % week == 0 and target <= r.first_ts < target + week
    assert sorted(e["ts"] for e in landed(store, "impressions")) == [
        OCT21 + r.shift_ms, OCT21 + r.shift_ms, OCT21 + HOUR_MS + r.shift_ms]
    assert raw_totals(store, r.hours) == {"impressions": (3, 0), "clicks": (2, 0)}


# -- (c) two Parquet tables joined by id, epoch ms and epoch s ----------------------------------

def test_two_parquet_tables_joined_by_id(tmp_path):
    imp = pa.table({
        "imp_id": ["a", "b", "c", "b"],
        "ts_ms": [H10 + 1_000, H10 + 2_000, H10 + HOUR_MS + 3_000, H10 + 2_000],
        "uid": ["u1", "u2", "u1", "u2"],
        "camp": [7, 8, 7, 8],  # integer ids become text
        "cost": [0.5, None, 0.25, None],
    })
    s = H10 // 1000
    clk = pa.table({
        "impression": ["a", "b", "zz", "c", "a"],
        "clicked": [s + 60, s + 1, s + 5, s + 3600 + 2, s + 60],  # epoch seconds
    })
    pq.write_table(imp, tmp_path / "imps.parquet")
    # a gzip-wrapped Parquet file is accepted too
    pq.write_table(clk, tmp_path / "clicks.parquet")
    (tmp_path / "clicks.parquet.gz").write_bytes(
        gzip.compress((tmp_path / "clicks.parquet").read_bytes()))
    m = mapping_from_dict({
        "time": "ts_ms", "time_format": "epoch_ms", "id": "imp_id", "user": "uid",
        "campaign": "camp", "cost": "cost",
        "clicks": {"time": "clicked", "time_format": "epoch_s", "impression_id": "impression"},
    })
    store = Store(str(tmp_path / "data"))
    r = import_log(store, m, str(tmp_path / "imps.parquet"), str(tmp_path / "clicks.parquet.gz"))

    assert (r.rows_read, r.impressions, r.duplicate_rows) == (4, 3, 1)
    assert (r.click_rows_read, r.clicks, r.duplicate_clicks, r.orphan_clicks) == (5, 1, 1, 0)
    # b: click at 10:00:01 is before its impression at 10:00:02; c: clicked at 11:00:02, one
    # second before the impression at 11:00:03; zz: no such impression and no user column
    # found after the sort, they come in line order, with their raw row read again
    assert [(x["table"], x["line"], x["reason"], x["raw"]) for x in r.first_rejects] == [
        ("clicks", 2, "click_not_after_impression", f"b,{s + 1}"),
        ("clicks", 3, "unknown_impression", f"zz,{s + 5}"),
        ("clicks", 4, "click_not_after_impression", f"c,{s + 3602}")]
    [click] = landed(store, "clicks")
    assert {k: click[k] for k in ("ts", "impression_id", "user_id", "campaign_id")} == {
        "ts": H10 + 60_000, "impression_id": "a", "user_id": "u1", "campaign_id": "7"}
    assert raw_totals(store, r.hours) == {"impressions": (3, 0), "clicks": (1, 0)}


# -- (d) device ids / encoded IPs as user keys, no ip, ua or cost ------------------------------

def test_device_ids_as_users_without_optional_columns_and_derived_ids(tmp_path):
    rows = [
        "device,enc_ip,campaign,time",
        "dev-1,x9f3,camp-A,1795600800",
        "dev-1,x9f3,camp-A,1795600800",  # identical row: one event
        "dev-2,,camp-B,1795600801",
        ",x777,camp-B,1795600900",  # user from the encoded IP alone
        ",,camp-B,1795600901",  # line 6: no user key at all
    ]
    log = tmp_path / "devices.csv"
    log.write_text("\n".join(rows) + "\n")
    m = mapping_from_dict({"time": "time", "time_format": "epoch_s", "user": "device,enc_ip",
                           "campaign": "campaign"})
    store = Store(str(tmp_path / "data"))
    r = import_log(store, m, str(log))
    assert (r.rows_read, r.impressions, r.clicks, r.duplicate_rows) == (5, 3, 0, 1)
    assert r.bad_rows == {"missing_field": 1} and r.first_rejects[0]["line"] == 6
    imps = landed(store, "impressions")
    assert [e["user_id"] for e in imps] == ["dev-1:x9f3", "dev-2:", ":x777"]
    assert all(set(e) == {"impression_id", "ts", "user_id", "campaign_id"} for e in imps)
    ids = [e["impression_id"] for e in imps]
    assert len(set(ids)) == 3 and all(i.startswith("i") and len(i) == 21 for i in ids)
    # the same rows in another order and another file get the same derived ids
    log2 = tmp_path / "other.csv"
    log2.write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")
    store2 = Store(str(tmp_path / "data2"))
    import_log(store2, m, str(log2))
    assert [e["impression_id"] for e in landed(store2, "impressions")] == ids
    assert raw_totals(store, r.hours) == {"impressions": (3, 0), "clicks": (0, 0)}


def test_unsorted_input_spilled_in_many_chunks_comes_out_sorted(tmp_path, monkeypatch):
    from clicklake.platform.importer import staging

    monkeypatch.setattr(staging, "CHUNK_ROWS", 7)  # force many spill files
    n = 100
    order = [(i * 37) % n for i in range(n)]  # a permutation of 0..99
    lines = ["uid,cid,t"] + [f"u{i % 5},c{i % 3},{H10 + i * 30_000}" for i in order]
    log = tmp_path / "big.csv"
    log.write_text("\n".join(lines) + "\n")
    m = mapping_from_dict({"time": "t", "time_format": "epoch_ms", "user": "uid",
                           "campaign": "cid"})
    store = Store(str(tmp_path / "data"))
    r = import_log(store, m, str(log))
    assert r.impressions == n
    ts = [e["ts"] for e in landed(store, "impressions")]
    assert sorted(ts) == [H10 + i * 30_000 for i in range(n)]
    for key in store.list("landing/impressions"):  # sorted within each file
        got = [orjson.loads(x)["ts"] for x in landing.read_lines(store, key).lines]
        assert got == sorted(got)
    assert raw_totals(store, r.hours) == {"impressions": (n, 0), "clicks": (0, 0)}


def test_users_of_several_columns_stay_apart_whatever_their_values_hold(tmp_path):
    """Joined with ':', (dev "a:b", ip "c") and (dev "a", ip "b:c") were one user "a:b:c", their
    histories and labels pooled; parts without ':' or '\\' read as before."""
    log = tmp_path / "log.csv"
    log.write_text("ts,id,dev,ip,camp\n"
                   "2026-11-25T10:00:00Z,e1,a:b,c,k1\n"
                   "2026-11-25T10:05:00Z,e2,a,b:c,k1\n"
                   "2026-11-25T10:06:00Z,e3,a\\,c,k1\n"
                   "2026-11-25T10:07:00Z,e4,plain,1.2.3.4,k1\n")
    store = Store(str(tmp_path / "data"))
    import_log(store, mapping_from_dict({"time": "ts", "id": "id", "user": ["dev", "ip"],
                                         "campaign": "camp"}), str(log))
    users = [e["user_id"] for e in sorted(landed(store, "impressions"),
                                          key=lambda e: e["impression_id"])]
    assert users == ["a\\:b:c", "a:b\\:c", "a\\\\:c", "plain:1.2.3.4"]
    assert len(set(users)) == 4
