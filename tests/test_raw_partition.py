"""Raw hourly partitions: landing files → kept events + quarantine, each line owned exactly once."""

from __future__ import annotations

import tempfile
import zlib
from collections import Counter

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from depth import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clicklake.platform import landing
from clicklake.platform.events import SPECS, TS
from clicklake.platform.raw import (
    Rules,
    build_raw_partition,
    quarantine_key,
    raw_key,
    read_raw,
    write_raw_partition,
)
from clicklake.platform.storage import S3Options, Store
from clicklake.platform.timeutil import (
    HOUR_MS,
    MINUTE_MS,
    floor_hour,
    hive_hour_of,
    hive_hours,
    iso,
)

H = 1795611600000  # 2026-11-25T13:00:00Z
MIN = MINUTE_MS


def imp(i, ts, **extra) -> dict:
    return {"impression_id": i, "ts": ts, "user_id": "u1", "campaign_id": "c1", **extra}


def land(store, arrival_ms, items, stream="impressions", uuid="f0") -> str:
    """Write one landing file; items are dicts (JSON-encoded) or raw bytes lines."""
    key = landing.firehose_key(stream, arrival_ms, uuid)
    lines = [x if isinstance(x, bytes) else orjson.dumps(x) for x in items]
    landing.write_file(store, key, lines)
    return key


def reasons(part) -> list[tuple[str, int]]:
    q = part.quarantine.to_pydict()
    return list(zip(q["reason"], q["line_no"], strict=True))


def ids(part) -> list[str]:
    return part.table.column(SPECS[part.stream].id_field).to_pylist()


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path))


# -- keeping and quarantining by hand ------------------------------------------------------------


def test_hour_boundaries_belong_to_the_hour_that_starts(store):
    items = [
        imp("a", iso(H)),
        imp("b", H + HOUR_MS - 1),
        imp("c", H - 1),
        imp("d", iso(H + HOUR_MS)),
    ]
    land(store, H + 55 * MIN, items)
    assert ids(build_raw_partition(store, "impressions", H)) == ["a", "b"]
    assert ids(build_raw_partition(store, "impressions", H - HOUR_MS)) == ["c"]
    assert ids(build_raw_partition(store, "impressions", H + HOUR_MS)) == ["d"]


def test_each_reason_by_hand(store):
    lines = [
        imp("ok1", iso(H + 1000)),  # 1 kept
        b"{not json",  # 2 malformed
        b"[1, 2]",  # 3 malformed: an array
        b"7",  # 4 malformed: a number
        {"impression_id": "m", "ts": iso(H), "user_id": "u"},  # 5 missing_field
        imp("t1", "yesterday"),  # 6 bad_type
        imp("t2", True),  # 7 bad_type
        imp("t3", H + 0.5),  # 8 bad_type
        {**imp("t4", H), "user_id": ["u"]},  # 9 bad_type
        imp("t5", H, domain=5),  # 10 bad_type
        imp("v1", H, cost=-1),  # 11 bad_value
        imp("v2", 1795611600),  # 12 bad_value: epoch seconds
        b"",  # 13 blank: skipped
        b"   ",  # 14 blank: skipped
        imp("ok1", iso(H + 2000)),  # 15 duplicate (same id, same hour)
        imp("ok2", H + 10 * MIN + 15 * MIN),  # 16 kept: exactly 15 min ahead of arrival
        imp("f1", H + 10 * MIN + 15 * MIN + 1),  # 17 future
    ]
    key = land(store, H + 10 * MIN, lines)
    part = build_raw_partition(store, "impressions", H)
    assert ids(part) == ["ok1", "ok2"]
    assert reasons(part) == [
        ("malformed", 2), ("malformed", 3), ("malformed", 4), ("missing_field", 5),
        ("bad_type", 6), ("bad_type", 7), ("bad_type", 8), ("bad_type", 9), ("bad_type", 10),
        ("bad_value", 11), ("bad_value", 12), ("duplicate", 15), ("future", 17),
    ]  # fmt: skip
    assert part.lines_read == 15 and part.files_read == 1
    assert part.quarantined_by_reason == {
        "malformed": 3, "missing_field": 1, "bad_type": 5, "bad_value": 2, "future": 1,
        "late": 0, "duplicate": 1,
    }  # fmt: skip
    q = part.quarantine.to_pylist()
    assert {r["landing_key"] for r in q} == {key}
    assert all(r["arrived_at"].timestamp() * 1000 == H + 10 * MIN for r in q)
    by_line = {r["line_no"]: r for r in q}
    assert by_line[2]["raw"] == "{not json" and by_line[2]["event_id"] is None
    assert by_line[6]["event_id"] == "t1" and by_line[6]["ts"] is None
    assert by_line[15]["event_id"] == "ok1" and "line 1" in by_line[15]["detail"]
    assert by_line[17]["ts"].timestamp() * 1000 == H + 25 * MIN + 1
    kept = part.table.to_pylist()
    assert kept[0]["ts"].timestamp() * 1000 == H + 1000  # the first copy's values are kept


def test_late_boundary(store):
    """Lateness is measured from the end of the event's hour to the file's arrival."""
    end = H + HOUR_MS
    land(store, end + HOUR_MS - 1000, [imp("in", H + 5)], uuid="a")  # 1 s before the cutoff
    land(store, end + HOUR_MS, [imp("at", H + 6)], uuid="b")  # at the cutoff: late
    land(store, end + HOUR_MS + 1000, [imp("after", H + 7)], uuid="c")
    part = build_raw_partition(store, "impressions", H)
    assert ids(part) == ["in"]
    assert part.quarantine.num_rows == 0  # late lines belong to their arrival hour
    owner = build_raw_partition(store, "impressions", end + HOUR_MS)
    assert [(r["reason"], r["event_id"]) for r in owner.quarantine.to_pylist()] == [
        ("late", "at"), ("late", "after"),
    ]  # fmt: skip
    # The rule itself, to the millisecond (file names only carry seconds).
    rules = Rules()
    assert rules.verdict(H, end + HOUR_MS - 1) is None
    assert rules.verdict(H + HOUR_MS - 1, end + HOUR_MS - 1) is None
    assert rules.verdict(H, end + HOUR_MS) == "late"
    assert rules.verdict(H + 15 * MIN, H) is None
    assert rules.verdict(H + 15 * MIN + 1, H) == "future"
    assert Rules(allowed_lateness_ms=0).verdict(H, end - 1) is None
    assert Rules(allowed_lateness_ms=0).verdict(H, end) == "late"


def test_arrival_hours_window():
    assert Rules().arrival_hours(H) == (H - HOUR_MS, H + HOUR_MS)
    assert Rules(future_tolerance_ms=0).arrival_hours(H) == (H, H + HOUR_MS)
    assert Rules(allowed_lateness_ms=0, future_tolerance_ms=0).arrival_hours(H) == (H, H)
    assert Rules(allowed_lateness_ms=HOUR_MS + 1).arrival_hours(H) == (H - HOUR_MS, H + 2 * HOUR_MS)
    assert Rules(allowed_lateness_ms=90 * MIN, future_tolerance_ms=61 * MIN).arrival_hours(H) == (
        H - 2 * HOUR_MS, H + 2 * HOUR_MS,
    )  # fmt: skip
    with pytest.raises(ValueError):
        Rules(allowed_lateness_ms=-1)


def test_future_event_is_kept_by_a_later_copy(store):
    """A copy rejected as future does not block an acceptable copy in a later file."""
    land(store, H - 30 * MIN, [imp("x", H + 5 * MIN)], uuid="a")  # 35 min ahead: future
    land(store, H + 1 * MIN, [imp("x", H + 5 * MIN)], uuid="b")
    part = build_raw_partition(store, "impressions", H)
    assert ids(part) == ["x"] and part.quarantine.num_rows == 0
    assert part.table.column("arrived_at").to_pylist()[0].timestamp() * 1000 == H + MIN
    prev = build_raw_partition(store, "impressions", H - HOUR_MS)
    assert [r["reason"] for r in prev.quarantine.to_pylist()] == ["future"]


def test_duplicates_across_arrival_hours_keep_the_first_arrival(store):
    k1 = land(store, H + 50 * MIN, [imp("d", H + 40 * MIN, domain="first")], uuid="z")
    k2 = land(store, H + HOUR_MS + 20 * MIN, [imp("d", H + 40 * MIN, domain="second")], uuid="a")
    part = build_raw_partition(store, "impressions", H)
    assert part.table.column("domain").to_pylist() == ["first"]
    q = part.quarantine.to_pylist()
    assert [(r["reason"], r["landing_key"]) for r in q] == [("duplicate", k2)]
    assert k1 in q[0]["detail"]
    # Neither arrival hour's own partition counts the copy again.
    assert build_raw_partition(store, "impressions", H + HOUR_MS).quarantine.num_rows == 0


def test_same_arrival_second_orders_by_key(store):
    land(store, H, [imp("d", H + 1, domain="from-b")], uuid="b")
    land(store, H, [imp("d", H + 1, domain="from-a")], uuid="a")
    part = build_raw_partition(store, "impressions", H)
    assert part.table.column("domain").to_pylist() == ["from-a"]


def test_ids_are_unique_per_event_hour_only(store):
    """Two copies stamped in different hours are two events: no partition sees both hours."""
    land(store, H + 10 * MIN, [imp("x", H - 1), imp("x", H + 1)])
    assert ids(build_raw_partition(store, "impressions", H)) == ["x"]
    assert ids(build_raw_partition(store, "impressions", H - HOUR_MS)) == ["x"]


def test_integer_and_text_ids_are_the_same_id(store):
    land(store, H, [imp(17, H + 1), imp("17", H + 2)])
    part = build_raw_partition(store, "impressions", H)
    assert ids(part) == ["17"] and reasons(part) == [("duplicate", 2)]


def test_truncated_file_keeps_complete_lines_and_reports_once(store):
    good = [imp(f"e{i:04d}", H + i) for i in range(2000)]
    key = landing.firehose_key("impressions", H + 5 * MIN, "t")
    data = landing.encode_lines([orjson.dumps(x) for x in good])
    store.write_bytes(key, data[: len(data) // 2])
    part = build_raw_partition(store, "impressions", H)
    decoded = landing.decode_lines(data[: len(data) // 2])
    n = len(decoded.lines)
    assert 0 < n < 2000
    assert ids(part) == [f"e{i:04d}" for i in range(n)]
    q = part.quarantine.to_pylist()
    assert len(q) == 1 and q[0]["reason"] == "malformed" and "truncated" in q[0]["detail"]
    assert q[0]["line_no"] == n + 1 and q[0]["raw"] == decoded.tail.decode()
    # The neighbour that also reads this file neither reports it nor drops its lines.
    assert build_raw_partition(store, "impressions", H - HOUR_MS).quarantine.num_rows == 0


def test_non_gzip_object_is_one_malformed_row(store):
    store.write_bytes("landing/clicks/2026/11/25/13/stray.json", b'{"click_id": "k"}\n')
    part = build_raw_partition(store, "clicks", H)
    assert reasons(part) == [("malformed", 1)] and part.kept == 0


def test_landing_prefix_and_streams_are_separate(store):
    land(store, H, [imp("i", H)], stream="impressions")
    land(store, H, [{"click_id": "k", "ts": H, "user_id": "u", "campaign_id": "c"}],
         stream="clicks")  # fmt: skip
    key = landing.firehose_key("clicks", H, "x", prefix="elsewhere")
    landing.write_file(
        store, key, [b'{"click_id":"k2","ts":%d,"user_id":"u","campaign_id":"c"}' % H]
    )
    assert ids(build_raw_partition(store, "clicks", H)) == ["k"]
    assert ids(build_raw_partition(store, "clicks", H, landing_prefix="elsewhere")) == ["k2"]
    assert ids(build_raw_partition(store, "impressions", H)) == ["i"]


# -- output: order, types, Parquet, layout, idempotence --------------------------------------------


def test_output_sorted_typed_and_idempotent(store):
    land(store, H + 5 * MIN, [imp("b", H + 7), imp("a", H + 7), imp("c", H + 1), b"bad"], uuid="1")
    land(store, H + 9 * MIN, [imp("0", H + 7, cost=1.5)], uuid="2")
    part = build_raw_partition(store, "impressions", H)
    assert ids(part) == ["c", "0", "a", "b"]  # by (ts, id)
    assert part.table.schema == SPECS["impressions"].schema
    assert part.table.schema.field("ts").type == TS == pa.timestamp("ms", tz="UTC")
    write_raw_partition(store, part)
    rk, qk = raw_key("impressions", H), quarantine_key("impressions", H)
    assert rk == "lake/raw/impressions/dt=2026-11-25/hour=13/part-0.parquet"
    assert qk == "lake/quarantine/impressions/dt=2026-11-25/hour=13/part-0.parquet"
    first = (store.read_bytes(rk), store.read_bytes(qk))
    write_raw_partition(store, build_raw_partition(store, "impressions", H))
    assert (store.read_bytes(rk), store.read_bytes(qk)) == first  # byte-identical
    back = read_raw(store, "impressions", H)
    assert back.equals(part.table) and back.schema == part.table.schema
    meta = pq.ParquetFile(store.path(rk)).metadata
    assert {meta.row_group(0).column(c).compression for c in range(meta.num_columns)} == {"ZSTD"}
    assert store.read_parquet(qk).num_rows == 1


def test_hive_layout_zero_pads_the_hour():
    assert raw_key("clicks", H - 4 * HOUR_MS) == (
        "lake/raw/clicks/dt=2026-11-25/hour=09/part-0.parquet"
    )
    assert raw_key("clicks", H, lake_prefix="l2").startswith("l2/raw/clicks/")
    # and read back: the hours of partition keys, sorted; other keys are none
    keys = [raw_key("clicks", H), "lake/raw/clicks/_manifest.json", raw_key("clicks", H - 4 * HOUR_MS),
            "lake/raw/clicks/dt=2026-11-25/hour=09/part-0.parquet.tmp-" + "0" * 32]
    assert hive_hours(keys) == [H - 4 * HOUR_MS, H]
    assert hive_hour_of(keys[1]) is None


@pytest.mark.parametrize("stream", sorted(SPECS))
def test_empty_partition_writes_a_valid_empty_file(store, stream):
    part = build_raw_partition(store, stream, H)
    assert part.kept == 0 and part.files_read == 0 and part.lines_read == 0
    write_raw_partition(store, part)
    t = read_raw(store, stream, H)
    assert t.num_rows == 0 and t.schema == SPECS[stream].schema
    assert store.read_parquet(quarantine_key(stream, H)).num_rows == 0


def test_s3_gives_the_same_tables_as_a_local_folder(tmp_path, moto_endpoint, s3_bucket):
    local = Store(str(tmp_path))
    s3 = Store(f"s3://{s3_bucket}/root", S3Options(endpoint_url=moto_endpoint))
    files = [
        (H - 5 * MIN, [imp("early", H + 5 * MIN), b"oops"]),
        (H + 20 * MIN, [imp("a", H + 1), imp("a", H + 2), imp("fut", H + 40 * MIN)]),
        (H + HOUR_MS + 30 * MIN, [imp("late-ish", H + 3), imp("next", H + HOUR_MS)]),
        (H + 2 * HOUR_MS + 1000, [imp("late", H + 4)]),
    ]
    for st_ in (local, s3):
        for n, (arrival, items) in enumerate(files):
            land(st_, arrival, items, uuid=f"u{n}")
    for hour in (H - HOUR_MS, H, H + HOUR_MS, H + 2 * HOUR_MS):
        a, b = (
            build_raw_partition(local, "impressions", hour),
            build_raw_partition(s3, "impressions", hour),
        )
        assert a.table.equals(b.table) and a.quarantine.equals(b.quarantine)
        write_raw_partition(local, a)
        write_raw_partition(s3, b)
        for key in (raw_key("impressions", hour), quarantine_key("impressions", hour)):
            assert local.read_bytes(key) == s3.read_bytes(key)
    assert ids(build_raw_partition(s3, "impressions", H)) == ["a", "late-ish", "early"]
    assert s3.list("lake/raw/impressions") == local.list("lake/raw/impressions")


# -- exactly-once ownership against a brute-force oracle -------------------------------------------

BAD_LINES = {
    "malformed": [b"{nope", b"[1]", b"3.5", b'{"impression_id": NaN}'],
    "missing_field": [
        orjson.dumps({"impression_id": "q", "ts": H, "user_id": "u"}),
        orjson.dumps(imp("", H)),
    ],
    "bad_type": [
        orjson.dumps(imp("q", "yesterday")),
        orjson.dumps({**imp("q", H), "user_id": [1]}),
    ],
    "bad_value": [orjson.dumps(imp("q", H // 1000)), orjson.dumps(imp("q", H, cost=-1))],
}

line_st = st.one_of(
    # a good event: id from a small pool (duplicates), ts relative to the file's arrival
    st.tuples(
        st.just("good"),
        st.integers(0, 7),
        st.one_of(
            st.integers(-150 * MIN, 30 * MIN),
            # the edges: the future tolerances (0, 5, 15 min) and hour starts for aligned arrivals
            st.sampled_from([0, 1, 5 * MIN, 5 * MIN + 1, 15 * MIN, 15 * MIN + 1, -1, -MIN]),
            st.sampled_from([-30 * MIN, -HOUR_MS, -HOUR_MS - 1, -90 * MIN, -2 * HOUR_MS]),
        ),
        st.booleans(),
    ),
    st.tuples(st.just("bad"), st.sampled_from(sorted(BAD_LINES)), st.integers(0, 1)),
    st.just(("blank",)),
)
file_st = st.tuples(
    st.one_of(  # arrival: seconds after H, often right at or just before a half hour
        st.integers(0, 4 * 3600 - 1),
        st.tuples(st.integers(1, 8), st.sampled_from([-1, 0])).map(lambda t: t[0] * 1800 + t[1]),
    ),
    st.lists(line_st, max_size=8),
    st.one_of(st.none(), st.floats(0.05, 0.95)),  # truncate the gzip at this fraction
)
rules_st = st.sampled_from(
    [Rules(), Rules(allowed_lateness_ms=0), Rules(allowed_lateness_ms=90 * MIN),
     Rules(future_tolerance_ms=0), Rules(allowed_lateness_ms=30 * MIN, future_tolerance_ms=5 * MIN)]
)  # fmt: skip


def _oracle(files, rules):
    """Classify every landing line by the documented rules, independently of `raw`.

    Returns {(key, line_no): (owner_hour, outcome)} with outcome "kept" or a reason, plus the
    file-level malformed rows keyed by (key, line_no of the first unreadable line).
    """
    out = {}
    accepted = []  # (arrival, key, line_no, id, ts)
    for key, arrival, lines, readable, truncated in files:
        arrival_hour = floor_hour(arrival)
        for no, spec in enumerate(lines[:readable], start=1):
            if spec[0] == "blank":
                continue
            if spec[0] == "bad":
                out[(key, no)] = (arrival_hour, spec[1])
                continue
            _, n, offset, _ = spec
            ts = arrival + offset
            if ts > arrival + rules.future_tolerance_ms:
                out[(key, no)] = (arrival_hour, "future")
            elif arrival >= floor_hour(ts) + HOUR_MS + rules.allowed_lateness_ms:
                out[(key, no)] = (arrival_hour, "late")
            else:
                accepted.append((arrival, key, no, f"id{n}", ts))
        if truncated:
            out[(key, readable + 1)] = (arrival_hour, "malformed")
    seen = set()
    for arrival, key, no, event_id, ts in sorted(accepted):
        hour = floor_hour(ts)
        out[(key, no)] = (hour, "duplicate" if (event_id, hour) in seen else "kept")
        seen.add((event_id, hour))
    return out


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(file_st, min_size=1, max_size=5), rules_st)
def test_every_line_is_owned_by_exactly_one_partition(files, rules):
    with tempfile.TemporaryDirectory() as root:
        store = Store(root)
        written = []
        for n, (arrival_s, specs, cut) in enumerate(files):
            arrival = H + arrival_s * 1000
            raw_lines = []
            for spec in specs:
                if spec[0] == "good":
                    _, i, offset, as_iso = spec
                    ts = arrival + offset
                    raw_lines.append(orjson.dumps(imp(f"id{i}", iso(ts) if as_iso else ts)))
                elif spec[0] == "bad":
                    raw_lines.append(BAD_LINES[spec[1]][spec[2] % len(BAD_LINES[spec[1]])])
                else:
                    raw_lines.append(b"")
            key = landing.firehose_key("impressions", arrival, f"{n:04d}")
            data = landing.encode_lines(raw_lines)
            readable = len(raw_lines)
            if cut is not None:
                data = data[: max(1, int(len(data) * cut))]
                # the lines that survive: every complete line of what inflates (independent of raw)
                body = zlib.decompressobj(wbits=31).decompress(data)
                readable = body.count(b"\n")
            store.write_bytes(key, data)
            written.append((key, arrival, specs, readable, cut is not None))

        expected = _oracle(written, rules)
        owners = [h for h, _ in expected.values()]
        if not owners:
            owners = [H]
        got: dict = {}
        kept_ids = Counter()
        for hour in range(min(owners) - HOUR_MS, max(owners) + 2 * HOUR_MS, HOUR_MS):
            part = build_raw_partition(store, "impressions", hour, rules)
            for r in part.quarantine.to_pylist():
                k = (r["landing_key"], r["line_no"])
                assert k not in got, f"{k} quarantined twice"
                got[k] = (hour, r["reason"])
            t = part.table.to_pylist()
            for row in t:
                kept_ids[(row["impression_id"], hour)] += 1
                assert floor_hour(int(row["ts"].timestamp() * 1000)) == hour
            assert len({row["impression_id"] for row in t}) == len(t)
        # Kept lines are identified by id (the table does not carry line numbers).
        want_quarantine = {k: v for k, v in expected.items() if v[1] != "kept"}
        assert got == want_quarantine
        want_kept = Counter((f"id{_id_of(written, k)}", h) for k, (h, o) in expected.items()
                            if o == "kept")  # fmt: skip
        assert kept_ids == want_kept


def _id_of(written, k):
    key, no = k
    for wkey, _, specs, _, _ in written:
        if wkey == key:
            return specs[no - 1][1]
    raise AssertionError(k)


# -- performance (a measurement, not a timing assertion) ---------------------------------------


def test_many_lines_build_correctly(store):
    """10k events over three arrival hours: every event of hour H is kept once."""
    lines_by_file = {}
    for f in range(6):
        arrival = H - HOUR_MS + f * 30 * MIN
        lines_by_file[arrival] = [
            imp(f"{f}-{i}", arrival - (i % 40) * MIN // 2) for i in range(1700)
        ]
    for arrival, items in lines_by_file.items():
        land(store, arrival, items, uuid=str(arrival))
    part = build_raw_partition(store, "impressions", H)
    expected = sorted(
        (x["ts"], x["impression_id"])
        for arrival, items in lines_by_file.items()
        for x in items
        if floor_hour(x["ts"]) == H and arrival < H + 2 * HOUR_MS
    )
    got = list(zip(part.table.column("ts").cast(pa.int64()).to_pylist(), ids(part), strict=True))
    assert got == expected
