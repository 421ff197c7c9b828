"""Landing zone: Firehose object keys, arrival times, and gzip NDJSON that may be damaged."""

from __future__ import annotations

import gzip
import hashlib
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clicklake.platform import landing
from clicklake.platform.landing import (
    LandingFile,
    decode_lines,
    encode_lines,
    firehose_key,
    hour_prefix,
    list_hour,
    list_hours,
    parse_key,
)
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS

H13 = 1795611600000  # 2026-11-25T13:00:00Z
UUID = "0f8e2d1c-3b4a-4c5d-9e6f-7a8b9c0d1e2f"


# -- keys --------------------------------------------------------------------------------------


def test_firehose_key_format():
    arrival = H13 + 4 * 60_000 + 5_678  # 13:04:05.678
    key = firehose_key("impressions", arrival, UUID)
    assert key == (
        "landing/impressions/2026/11/25/13/"
        "impressions-1-2026-11-25-13-04-05-0f8e2d1c-3b4a-4c5d-9e6f-7a8b9c0d1e2f.gz"
    )
    # The name has second precision: the arrival time read back is floored to the second.
    assert parse_key(key) == LandingFile(H13 + 245_000, key)
    assert firehose_key("clicks", H13, "u", prefix="in").startswith("in/clicks/2026/11/25/13/")
    assert hour_prefix("clicks", H13) == "landing/clicks/2026/11/25/13/"


@given(
    st.integers(min_value=946_684_800, max_value=4_102_444_799).map(lambda s: s * 1000),
    st.sampled_from(["impressions", "clicks", "predictions"]),
    st.uuids().map(str),
)
def test_parse_key_inverts_firehose_key(arrival, stream, uuid):
    key = firehose_key(stream, arrival, uuid)
    assert parse_key(key) == LandingFile(arrival, key)
    assert key.startswith(hour_prefix(stream, arrival - arrival % HOUR_MS))


def test_non_firehose_name_arrives_at_its_folder_hour():
    for name in ["part-0000.json.gz", "impressions.gz", "_SUCCESS", "x-1-2026-11-25-13-00-00.gz"]:
        key = f"landing/impressions/2026/11/25/13/{name}"
        assert parse_key(key) == LandingFile(H13, key)


def test_name_time_outside_its_folder_hour_yields_to_the_folder():
    key = "landing/impressions/2026/11/25/13/impressions-1-2026-11-25-15-30-00-abc.gz"
    assert parse_key(key) == LandingFile(H13, key)


def test_a_bare_firehose_name_is_enough():
    key = "impressions-1-2026-11-25-13-00-01-abc.gz"
    assert parse_key(key) == LandingFile(H13 + 1000, key)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "landing/impressions/readme.txt",
        "landing/impressions/2026/11/25/file.gz",  # no hour folder
        "landing/impressions/2026/13/25/13/part.gz",  # month 13
        "landing/impressions/2026/02/30/13/part.gz",  # February 30
        "landing/impressions/2026/11/25/24/part.gz",  # hour 24
        "impressions-1-2026-02-30-13-00-00-abc.gz",  # impossible date in the name, no folder
        "landing/impressions/2026/11/25/13/",  # a folder, not a file
    ],
)
def test_garbage_keys_have_no_arrival(key):
    assert parse_key(key) is None


def test_landing_files_order_by_arrival_then_key():
    a = LandingFile(2, "a")
    assert sorted([LandingFile(3, "a"), LandingFile(2, "b"), a]) == [
        a,
        LandingFile(2, "b"),
        LandingFile(3, "a"),
    ]


def test_list_hour_and_hours(tmp_path):
    store = Store(str(tmp_path))
    k1 = firehose_key("clicks", H13 + 30_000, "b")
    k2 = firehose_key("clicks", H13 + 10_000, "z")
    k3 = firehose_key("clicks", H13 + HOUR_MS, "a")
    other = firehose_key("impressions", H13, "a")
    junk = "landing/clicks/2026/11/25/13/notes.txt"
    for k in (k1, k2, k3, other, junk):
        store.write_bytes(k, b"")
    assert list_hour(store, "clicks", H13) == [
        LandingFile(H13, junk), LandingFile(H13 + 10_000, k2), LandingFile(H13 + 30_000, k1),
    ]  # fmt: skip
    assert [f.key for f in list_hours(store, "clicks", H13, H13 + HOUR_MS)] == [junk, k2, k1, k3]
    assert list_hours(store, "clicks", H13 + HOUR_MS, H13) == []
    assert list_hour(store, "predictions", H13) == []


# -- gzip NDJSON -------------------------------------------------------------------------------

LINES = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 50)) for i in range(3000)]


def test_encode_decode_round_trip_and_determinism():
    data = encode_lines(LINES)
    assert data == encode_lines(LINES)  # mtime 0: equal input, equal bytes
    assert gzip.decompress(data) == b"".join(x + b"\n" for x in LINES)
    decoded = decode_lines(data)
    assert decoded.lines == LINES and decoded.error is None and decoded.tail == b""
    assert decode_lines(encode_lines([])).lines == []


def test_blank_lines_and_missing_final_newline_are_preserved_as_lines():
    data = gzip.compress(b'{"a":1}\n\n  \n{"a":2}', mtime=0)
    assert decode_lines(data).lines == [b'{"a":1}', b"", b"  ", b'{"a":2}']


def test_concatenated_gzip_members_are_one_file():
    data = encode_lines(LINES[:10]) + encode_lines(LINES[10:20])
    decoded = decode_lines(data)
    assert decoded.lines == LINES[:20] and decoded.error is None


def test_zero_padding_after_the_last_member_is_harmless():
    decoded = decode_lines(encode_lines(LINES[:5]) + b"\x00" * 64)
    assert decoded.lines == LINES[:5] and decoded.error is None


def test_many_small_members_read_as_one_file():
    # One member per line, as a producer appending each record writes: read in one pass (the
    # member loop once copied the rest of the input after each member; benchmarks/
    # bench_landing.py measures the scaling).
    data = b"".join(encode_lines([line]) for line in HASHED)
    decoded = decode_lines(data)
    assert decoded.lines == HASHED and decoded.error is None and decoded.tail == b""


@given(st.lists(st.tuples(st.binary(max_size=3000), st.integers(0, 3), st.sampled_from([0, 1, 9])),
                min_size=1, max_size=8), st.integers(0, 40))
def test_members_of_any_size_with_zero_padding_read_as_gzip_reads_them(members, trailing):
    # Members from empty to several of the first member's blocks, incompressible or not, with
    # zero padding between them and after the last: decoded exactly as gzip.decompress does.
    data = b"".join(gzip.compress(body * repeat, compresslevel=level, mtime=0) + b"\x00" * pad
                    for (body, repeat, level), pad in zip(members, [1, 0, 7, 0, 2, 0, 0, 5]))
    data += b"\x00" * trailing
    body = gzip.decompress(data)
    assert landing._gunzip(data) == body
    decoded = decode_lines(data)
    assert decoded.error is None and b"".join(x + b"\n" for x in decoded.lines) == (
        body if not body or body.endswith(b"\n") else body + b"\n")


def test_a_member_larger_than_the_largest_block_reads_whole():
    body = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(80_000))  # 2.5 MB
    data = encode_lines(LINES[:2]) + gzip.compress(body, mtime=0) + encode_lines(LINES[2:4])
    assert landing._gunzip(data) == gzip.decompress(data)
    big_end = len(data) - len(encode_lines(LINES[2:4]))
    for cut in (big_end - 30, len(data) - 30):  # truncated: left to `_salvage`, as before
        with pytest.raises((EOFError, zlib.error)):
            landing._gunzip(data[:cut])
        decoded = decode_lines(data[:cut])
        assert decoded.lines[:2] == LINES[:2] and "truncated" in decoded.error


@pytest.mark.parametrize("cut", [1, 9, 10, 200, 5_000, -9, -8, -1])
def test_truncated_gzip_keeps_every_complete_line(cut):
    data = encode_lines(LINES)
    decoded = decode_lines(data[:cut])
    body = b"".join(x + b"\n" for x in LINES)
    readable = zlib.decompressobj(wbits=31).decompress(data[:cut])  # oracle: all that inflates
    assert body.startswith(readable)
    complete = readable[: readable.rfind(b"\n") + 1]
    assert decoded.lines == complete.split(b"\n")[:-1]
    assert decoded.tail == readable[len(complete) :]
    assert decoded.error and "truncated" in decoded.error


def test_truncation_in_the_trailer_loses_no_line():
    decoded = decode_lines(encode_lines(LINES)[:-1])
    assert decoded.lines == LINES and decoded.tail == b"" and "truncated" in decoded.error


def test_corrupt_gzip_keeps_what_inflates_before_the_damage():
    data = bytearray(encode_lines(LINES))
    data[len(data) // 3] ^= 0xFF
    decoded = decode_lines(bytes(data))
    assert decoded.error and "corrupt" in decoded.error
    # Deflate may emit some garbage before it notices; every line before the damage is intact.
    intact = 0
    while intact < len(decoded.lines) and decoded.lines[intact] == LINES[intact]:
        intact += 1
    assert intact >= 100
    assert len(decoded.lines) < len(LINES) or decoded.lines != LINES


def test_a_second_member_that_is_corrupt_keeps_the_first():
    data = encode_lines(LINES[:10]) + b"\x1f\x8b\x08\x00garbage-not-deflate"
    decoded = decode_lines(data)
    assert decoded.lines == LINES[:10] and "corrupt" in decoded.error


@pytest.mark.parametrize("data", [b"plain text\n", b"\x1f\x8b", b"\x1f\x8bxxxxxxxxxxxx"])
def test_not_gzip_at_all(data):
    decoded = decode_lines(data)
    assert decoded.lines == [] and decoded.error


def test_trailing_junk_after_a_good_member():
    decoded = decode_lines(encode_lines(LINES[:3]) + b"junk")
    assert decoded.lines == LINES[:3] and "corrupt" in decoded.error


# Lines that barely compress, so each member spans several 4 KiB blocks of the salvage loop.
HASHED = [b'{"n":%d,"h":"%s"}' % (i, hashlib.sha256(b"%d" % i).hexdigest().encode()) for i in range(600)]


def test_a_damaged_last_member_keeps_every_line_of_the_intact_members():
    first, second = encode_lines(HASHED[:200]), encode_lines(HASHED[200:500])
    third = encode_lines(HASHED[500:])
    assert len(first) > 4096 and len(second) > 4096 and len(first) % 4096 != 0
    data = first + second + third[: len(third) // 2]
    decoded = decode_lines(data)
    assert decoded.lines[:500] == HASHED[:500]
    readable = zlib.decompressobj(wbits=31).decompress(third[: len(third) // 2])
    assert decoded.lines[500:] == readable[: readable.rfind(b"\n")].split(b"\n")
    assert decoded.error == (
        f"truncated gzip: member 3 (at byte {len(first) + len(second)}) ends before its end marker"
    )


def test_trailing_garbage_after_intact_members_keeps_every_line():
    first, second = encode_lines(HASHED[:200]), encode_lines(HASHED[200:])
    decoded = decode_lines(first + second + b"garbage")
    assert decoded.lines == HASHED and decoded.tail == b""
    assert decoded.error.startswith(f"corrupt gzip: member 3 (at byte {len(first) + len(second)}):")


def test_write_and_read_file(tmp_path):
    store = Store(str(tmp_path))
    key = firehose_key("clicks", H13, UUID)
    landing.write_file(store, key, LINES[:4])
    assert landing.read_lines(store, key).lines == LINES[:4]


def test_keys_outside_the_hour_folders_are_landing_files_for_neither_path(tmp_path):
    """A key beside the hour folders, in a folder of its own above them, or below an hour
    folder: the raw layer, which lists the hour folders, never read such a file, while the
    online fold (listing the whole prefix) folded it: 3 impressions online, 1 in the lake."""
    import orjson

    from clicklake.platform.online import OnlineFeatures, SqliteState, fold_files
    from clicklake.platform.raw import build_raw_partition

    store = Store(str(tmp_path))
    name = f"impressions-1-2026-11-25-13-05-00-{UUID}.gz"
    keys = {"firehose": firehose_key("impressions", H13 + 5 * 60_000, UUID),
            "beside": f"landing/impressions/{name}",
            "replay": f"landing/impressions/replay/2026/11/25/13/{name}",
            "below": f"landing/impressions/2026/11/25/13/again/{name}",
            "unknown_stream": f"landing/views/2026/11/25/13/{name}"}
    for n, (what, key) in enumerate(keys.items()):
        landing.write_file(store, key, [orjson.dumps({
            "impression_id": f"i-{what}", "ts": H13 + 60_000 * (n + 1), "user_id": "u1",
            "campaign_id": "c1"})])
    assert [landing.layout_file(k) is not None for k in keys.values()] == [
        True, False, False, False, False]
    assert landing.layout_file(keys["firehose"])[1] == "impressions"
    assert [lf.key for lf in list_hour(store, "impressions", H13)] == [keys["firehose"]]
    raw = build_raw_partition(store, "impressions", H13)
    assert raw.table["impression_id"].to_pylist() == ["i-firehose"]
    state = SqliteState(str(tmp_path / "online.db"))
    report = fold_files(state, store, store.list("landing/"))
    assert (report.files, report.skipped) == (1, 4)
    assert OnlineFeatures(state).profile("u1", H13 + HOUR_MS, lists=False)["impressions"] == 1
