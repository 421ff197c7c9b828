"""The C reader of plain landing lines (`events.plain_rows`) against orjson + `parse_object`: any
row it gives is exactly theirs (bit for bit), and it declines (None) whatever it is not sure of.
Byte-level forms orjson.dumps never writes are covered here (whitespace, escapes, key order,
repeated keys, number forms); whole files go through both fold parsers in test_online_parse.py,
and through the raw partition with and without the extension below."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import orjson
import pytest
from depth import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clicklake.platform import events, raw
from clicklake.platform.events import (
    SPECS,
    TS_MAX_MS,
    TS_MIN_MS,
    Rejected,
    parse_object,
    plain_rows,
)
from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import parse_instant
from tests.landing_factory import MIN, H

pytestmark = pytest.mark.skipif(events._plainjson is None, reason="C extension not built")

IMP = SPECS["impressions"]
PLAIN = (b'{"impression_id":"i1","ts":1795132860000,"user_id":"u1","campaign_id":"c1",'
         b'"domain":"x.com","ip":"8.8.8.8","user_agent":"curl/8","cost":0.25}')


def test_the_c_reader_is_built():
    # Optional at install (the per-line path answers alike), but this package is meant to have it.
    assert events._plainjson is not None


def exact(spec, line: bytes):
    """parse_object's row, or the reason it rejects the line."""
    try:
        return parse_object(spec, orjson.loads(line))
    except orjson.JSONDecodeError:
        return "malformed"
    except Rejected as rej:
        return rej.reason


def check(spec, lines: list[bytes], ts_lo: int = TS_MIN_MS, ts_hi: int = TS_MAX_MS - 1) -> list:
    out, unsure, blank = plain_rows(spec, lines, ts_lo, ts_hi)
    assert len(out) == len(lines)
    assert unsure == sum(r is None for r in out) and blank == sum(r is False for r in out)
    for line, row in zip(lines, out, strict=True):
        if row is False:
            assert not line or line.isspace()
        elif row is not None:
            assert repr(row) == repr(exact(spec, line)), line  # repr: -0.0 is not 0.0
            assert ts_lo <= row[1] <= ts_hi
    return out


HEAD = b'{"impression_id":"i1","ts":1795132860000,"user_id":"u1","campaign_id":"c1"'


def with_ts(ts: bytes) -> bytes:
    return b'{"impression_id":"i1","ts":' + ts + b',"user_id":"u1","campaign_id":"c1"}'


def test_a_plain_line_is_read_and_its_variants_agree_or_are_declined():
    assert check(IMP, [PLAIN])[0] == ("i1", 1795132860000, "u1", "c1", "x.com", "8.8.8.8",
                                      "curl/8", 0.25)
    read = [
        # whitespace, order, nulls, blanks and absent optional fields, a leap day: all read
        b' {"ts" : 1795132860000 , "user_id":"u1","campaign_id":"c1","impression_id":"i1"}\r',
        with_ts(b'"2026-11-20T21:21:00.000Z"')[:-1] + b',"domain":null,"ip":"   ","cost":1.5e2}',
        HEAD + b',"cost":-0.0}',
        HEAD + b',"user_agent":"Mozilla/5.0 (X11; Linux x86_64) \x7f"}',
        with_ts(b'"2028-02-29T21:21:00.000Z"'),
    ]
    declined = [
        # escapes, non-ASCII, unknown or repeated keys, odd numbers and forms
        HEAD + b',"ip":"i\\u00e91"}', HEAD + b',"ip":"u\xc3\xa91"}', HEAD + b',"x":1}',
        HEAD + b',"ts":5}', HEAD + b',"cost":1}', HEAD + b',"cost":01.5}', HEAD + b',"cost":1.}',
        HEAD + b',"cost":.5}', HEAD + b',"cost":1e400}', HEAD + b',"cost":1e-400}',
        HEAD + b',"cost":5e-324}', HEAD + b',"cost":-1.0}', HEAD + b',"cost":2e12}',
        HEAD + b',"cost":NaN}', HEAD + b',"cost":true}', HEAD + b',"ip":[]}', HEAD + b'} x',
        HEAD + b',}', HEAD, HEAD + b'}\x00', HEAD + b'}\x0c',
        b'{"impression_id":7,"ts":1795132860000,"user_id":"u1","campaign_id":"c1"}',
        b'{"impression_id":" ","ts":1795132860000,"user_id":"u1","campaign_id":"c1"}',
        b'{"impression_id":"i1","ts":1795132860000,"user_id":null,"campaign_id":"c1"}',
        b'{"impression_id":"i1","ts":1795132860000,"user_id":"u1"}',
        with_ts(b"-1795132860000"), with_ts(b"1795132860000.0"), with_ts(b'"1795132860000"'),
        with_ts(b"1764075600"), with_ts(b'"2026-11-20T21:21:00Z"'),
        with_ts(b'"2026-02-29T21:21:00.000Z"'), with_ts(b'"1999-12-31T23:59:59.999Z"'),
        with_ts(b'"2100-01-01T00:00:00.000Z"'), with_ts(b'"2026-11-20T24:00:00.000Z"'),
        with_ts(b'"2026-11-20T21:21:60.000Z"'),
        b"[1]", b"{}", b"null", b'{"a": 1}{"b": 2}',
    ]
    out = check(IMP, read + declined + [b"", b"  \t\r"])
    assert None not in out[:len(read)]
    assert out[len(read):] == [None] * len(declined) + [False, False]
    assert out[1][1] == events.event_ms("2026-11-20T21:21:00.000Z") and out[1][5] is None
    assert out[4][1] == events.event_ms("2028-02-29T21:21:00.000Z")


def test_times_outside_the_given_bounds_are_declined():
    line = orjson.dumps({**orjson.loads(PLAIN), "ts": H + MIN})
    assert check(IMP, [line], H + MIN, H + MIN)[0] is not None
    assert check(IMP, [line], H + MIN + 1, H + 2 * MIN)[0] is None
    assert check(IMP, [line], H, H + MIN - 1)[0] is None


def test_bad_arguments_raise_instead_of_reading():
    with pytest.raises(TypeError):
        plain_rows(IMP, ["a str, not bytes"])
    with pytest.raises(TypeError):
        events._plainjson.rows([], (b"a",), b"x", (0.0,), (0.0,), 0, 1)
    with pytest.raises(ValueError):
        events._plainjson.rows([], (b"a", b"b"), b"I", (0.0,), (0.0,), 0, 1)

    class Float:
        def __float__(self):
            return 1.0

    with pytest.raises(TypeError):  # was SystemError: hi read while lo's error was pending
        events._plainjson.rows([], (b"a",), b"I", ("not a number",), (Float(),), 0, 1)


def test_lines_changed_by_a_finalizer_during_the_call_are_read_as_they_were():
    """An allocation inside the call may run the cyclic collector and any finalizer, which may
    change the list: the call reads its own copy (it read freed memory: a crash)."""
    import gc

    lines = [bytes(bytearray(PLAIN)) for _ in range(5_000)]

    class ClearsTheLines:
        def __del__(self):
            lines.clear()

    gc.collect()
    garbage = ClearsTheLines()
    garbage.cycle = garbage
    del garbage
    threshold = gc.get_threshold()
    gc.set_threshold(50)
    try:
        rows, unsure, blank = events._plainjson.rows(lines, *events._plain_args(IMP), TS_MIN_MS,
                                                     TS_MAX_MS - 1)
    finally:
        gc.set_threshold(*threshold)
    assert not lines  # the finalizer ran during the call
    assert len(rows) == 5_000 and unsure == blank == 0
    assert set(rows) == {exact(IMP, PLAIN)}


_iso = st.integers(TS_MIN_MS - 10**9, TS_MAX_MS + 10**9).map(
    lambda ms: datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
_value = st.one_of(st.none(), st.booleans(), st.integers(-10**16, 10**16),
                   st.floats(allow_nan=False), st.text(max_size=5),
                   st.text(alphabet=" \t", max_size=2), _iso)


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.sampled_from(list(SPECS)), data=st.data())
def test_random_lines_agree_or_are_declined(stream, data):
    spec = SPECS[stream]
    obj = {}
    for name, kind in spec.fields:
        choice = data.draw(st.integers(0, 4))
        if choice == 0:
            continue  # absent
        obj[name] = data.draw(_value if choice == 1 else _iso if kind == "ts" else
                              st.text(alphabet="abc-1. ", min_size=1, max_size=6)
                              if kind in ("id", "str") else st.floats(-0.5, 2.0))
    line = orjson.dumps(obj)
    # and byte-level mutations orjson never writes: spaces, a cut, a doubled or dropped byte
    cut = data.draw(st.integers(0, len(line)))
    lines = [line, line.replace(b":", b" : "), line[:cut],
             line[:cut] + line[cut:cut + 1] + line[cut:],
             line[:cut] + line[cut + 1:]]
    check(spec, lines)


def test_plain_generated_lines_are_all_read(tmp_path):
    # The point of the reader: the generator's clean lines never fall back to the slow path.
    store = Store(str(tmp_path))
    generate(store, start_ms=parse_instant("2026-11-20T00:00:00Z"), hours=1, users=300, seed=5,
             messy_scale=0.0)
    from clicklake.platform import landing

    for key in store.list("landing/"):
        stream = key.split("/")[1]
        lines = landing.read_lines(store, key).lines
        out = check(SPECS[stream], lines)
        assert None not in out, key


@pytest.mark.parametrize("hour", [0, 1])
def test_raw_partitions_are_the_same_without_the_extension(tmp_path, monkeypatch, hour):
    store = Store(str(tmp_path))
    start = parse_instant("2026-11-20T00:00:00Z")
    generate(store, start_ms=start, hours=2, users=300, seed=11, messy_scale=10.0)
    for stream in SPECS:
        with_c = raw.build_raw_partition(store, stream, start + hour * 3_600_000)
        monkeypatch.setattr(events, "_plainjson", None)
        without = raw.build_raw_partition(store, stream, start + hour * 3_600_000)
        monkeypatch.undo()
        assert with_c.table.equals(without.table), stream
        assert with_c.quarantine.equals(without.quarantine), stream
        assert with_c.lines_read == without.lines_read
        assert with_c.quarantined_by_reason == without.quarantined_by_reason


def test_numbers_are_read_the_same_under_a_decimal_comma_locale(tmp_path):
    # C's strtod follows the process's numeric locale (a host application may set one): under
    # de_DE it stopped at the '.' and read 0.75 as 0.0. The reader must not depend on it.
    import shutil
    import subprocess
    import sys

    if shutil.which("localedef") is None:
        pytest.skip("localedef is not installed")
    made = subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8",
                           str(tmp_path / "de_DE.UTF-8")], check=False, capture_output=True)
    if not (tmp_path / "de_DE.UTF-8").exists():
        pytest.skip(f"cannot build a de_DE locale here: {made.stderr[-200:]!r}")
    code = """
import locale, orjson
from clicklake.platform.events import SPECS, parse_object, plain_rows
locale.setlocale(locale.LC_ALL, "de_DE.UTF-8")
assert locale.localeconv()["decimal_point"] == ","
spec = SPECS["impressions"]
lines = [b'{"impression_id":"i1","ts":1795132860000,"user_id":"u1","campaign_id":"c1","cost":%s}'
         % v for v in (b"0.75", b"2.5e3", b"1E-2", b"123.456")]
out = plain_rows(spec, lines)[0]
assert None not in out, out
assert [r[-1] for r in out] == [parse_object(spec, orjson.loads(x))[-1] for x in lines], out
"""
    env = {**os.environ, "LOCPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr
