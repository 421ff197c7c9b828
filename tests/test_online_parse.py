"""The online fold's fast line parsers (the C reader of plain lines, and the per-line fast path of
a build without it) against the exact one (`parse_object` + `Rules.verdict` on every line): the
same rows (bit for bit) and the same quarantine counts by reason, on messy
generated landing files, on hand-made bad and borderline lines, and on random JSON objects."""

from __future__ import annotations

import math

import orjson
import pytest
from depth import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clicklake.platform import events, landing
from clicklake.platform.events import SPECS, TS_MAX_MS, TS_MIN_MS, fast_iso_ms, fast_parser
from clicklake.platform.online.fold import order_files, parse_file, parse_file_exact
from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, parse_instant
from tests.landing_factory import MIN, H

ARRIVAL = H + 20 * MIN


def same(data: bytes, stream: str, arrival: int = ARRIVAL) -> None:
    fast, exact = parse_file(data, stream, arrival), parse_file_exact(data, stream, arrival)
    assert repr(fast.rows) == repr(exact.rows)  # repr: -0.0 and 0.0 differ, NaN equals NaN
    assert (fast.lines, dict(fast.quarantined)) == (exact.lines, dict(exact.quarantined))


@pytest.mark.parametrize("native", [True, False], ids=["c-reader", "per-line"])
def test_messy_generated_files_parse_identically(tmp_path, monkeypatch, native):
    if not native:  # the path of a build without the C extension
        monkeypatch.setattr(events, "_plainjson", None)
    store = Store(str(tmp_path))
    generate(store, start_ms=parse_instant("2026-11-20T00:00:00Z"), hours=2, users=400, seed=7,
             messy_scale=10.0)
    files = order_files(store.list("landing/"))[0]
    reasons: set[str] = set()
    for lf, stream in files:
        data = store.read_bytes(lf.key)
        same(data, stream, lf.arrival_ms)
        reasons |= set(parse_file_exact(data, stream, lf.arrival_ms).quarantined)
    assert {"malformed", "missing_field", "bad_type", "late", "future"} <= reasons


BASE = {"impressions": {"impression_id": "i1", "ts": H + MIN, "user_id": "u1",
                        "campaign_id": "c1", "domain": "x.com", "ip": "8.8.8.8",
                        "user_agent": "curl/8", "cost": 0.25},
        "clicks": {"click_id": "k1", "ts": H + MIN, "user_id": "u1", "campaign_id": "c1",
                   "impression_id": "i1"},
        "predictions": {"prediction_id": "p1", "ts": H + MIN, "user_id": "u1", "model": "m",
                        "score": 0.5, "impression_id": "i1"}}
ODD_VALUES = [None, "", " ", "\t", "x", 7, 0, -1, 2**63 - 1, True, False, 0.0, -0.0, 1.0, 0.5,
              1.0000001, -1e-300, 5e-324, 1e308, 1.5, [], {}, ["a"], "١٢٣"]
ODD_TS = [H, H + 1, "2026-11-25T13:01:00.000Z", "2026-11-25T13:01:00Z", "2026-11-25T13:01:00.5Z",
          "2026-11-25T13:01:00.123456Z", "2026-11-25T13:01:00.123z", "2026-11-25T13:01:00.123+00:00",
          "2026-11-25T14:01:00.123+01:00", "2026-11-25 13:01:00.123Z", "2026-11-25T24:00:00.000Z",
          "2026-11-25T23:60:00.000Z", "2026-11-25T23:59:60.000Z", "2026-02-30T13:00:00.000Z",
          "2026-11-25", "2026-11-25T13", "1999-12-31T23:59:59.999Z", "2000-01-01T00:00:00.000Z",
          "2099-12-31T23:59:59.999Z", "2100-01-01T00:00:00.000Z", "２０２６-11-25T13:01:00.000Z",
          str(H + MIN), " 1795132802176", "1795132802176.0", float(H + MIN), H + MIN + 0.5,
          TS_MIN_MS - 1, TS_MIN_MS, TS_MAX_MS - 1, TS_MAX_MS, 1764075600, -5, True, None, ""]


def _lines(stream: str) -> list[bytes]:
    base = BASE[stream]
    out = [orjson.dumps(base), b"{not json", b"[1, 2]", b"42", b'"text"', b"null", b"{}",
           b'{"ts": NaN}', b'{"ts": 1e400}', b"   ", b'{"a": 1}{"b": 2}']
    for field in base:
        for v in ODD_VALUES + (ODD_TS if field == "ts" else []):
            out.append(orjson.dumps({**base, field: v}))
        out.append(orjson.dumps({k: v for k, v in base.items() if k != field}))
    # ts at the bounds of future (arrival + 15 min) and late (hour + 1 h + 1 h lateness)
    for ts in (ARRIVAL + 15 * MIN, ARRIVAL + 15 * MIN + 1, H - HOUR_MS, H - HOUR_MS - 1,
               H - 2 * HOUR_MS + 1):
        out.append(orjson.dumps({**base, "ts": ts}))
    return out


@pytest.mark.parametrize("native", [True, False], ids=["c-reader", "per-line"])
@pytest.mark.parametrize("stream", list(SPECS))
def test_hand_made_bad_and_borderline_lines_parse_identically(stream, monkeypatch, native):
    if not native:
        monkeypatch.setattr(events, "_plainjson", None)
    lines = _lines(stream)
    same(landing.encode_lines(lines), stream)
    for line in lines:  # one line per file: each verdict on its own, too
        same(landing.encode_lines([line]), stream)
    for arrival in (H, H + HOUR_MS - 1, H + 2 * HOUR_MS):
        same(landing.encode_lines(lines), stream, arrival)


def test_fast_iso_agrees_with_the_exact_conversion_or_declines():
    from clicklake.platform.events import Rejected, event_ms

    for v in [t for t in ODD_TS if isinstance(t, str)]:
        got = fast_iso_ms(v)
        if got is not None:
            assert got == event_ms(v), v
    assert fast_iso_ms("2026-11-25T13:01:02.345Z") == H + MIN + 2_345
    with pytest.raises(Rejected):
        event_ms("2026-02-30T13:00:00.000Z")
    assert fast_iso_ms("2026-02-30T13:00:00.000Z") is None
    # Seconds are cached: the same second again, with other milliseconds or a bad ending.
    assert fast_iso_ms("2026-11-25T13:01:02.000Z") == H + MIN + 2_000
    assert fast_iso_ms("2026-11-25T13:01:02.999Z") == H + MIN + 2_999
    for bad in ("2026-11-25T13:01:02.34aZ", "2026-11-25T13:01:02.3\u00b25Z",
                "2026-11-25T13:01:02,345Z", "2026-11-25T13:01:02.345z", "2026-02-30T13:00:00.001Z",
                "2026-11-25T13:01:62.345Z", "2026-11-25T13:01:02.345Z "):
        assert fast_iso_ms(bad) is None, bad


@settings(max_examples=examples(300), deadline=None)
@given(ms=st.integers(TS_MIN_MS - 3 * HOUR_MS, TS_MAX_MS + 3 * HOUR_MS),
       tail=st.sampled_from(["Z", "z", " ", "0", "\u00b2"]),
       frac=st.sampled_from(["000", "999", "5a0", "\u00b212", " 12", "-12"]))
def test_fast_iso_agrees_on_random_instants(ms, tail, frac):
    from datetime import UTC, datetime

    from clicklake.platform.events import Rejected, event_ms

    text = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    # Every variant has the plain form's length, so the fast path really judges it.
    for v in (text + "Z", text + tail, text[:20] + frac + "Z"):
        assert len(v) == 24
        got = fast_iso_ms(v)
        if got is not None:
            assert got == event_ms(v), v
        elif v == text + "Z":  # the plain form is declined only out of range
            with pytest.raises(Rejected):
                event_ms(v)


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
                     | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
                     lambda kids: st.lists(kids, max_size=2), max_leaves=3)
_ts = st.one_of(st.integers(TS_MIN_MS - 10, TS_MAX_MS + 10), st.sampled_from(ODD_TS),
                st.integers(H - 3 * HOUR_MS, H + HOUR_MS).map(
                    lambda ms: f"{landing_iso(ms)}"))


def landing_iso(ms: int) -> str:
    from datetime import UTC, datetime
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.sampled_from(list(SPECS)), data=st.data())
def test_random_objects_parse_identically(stream, data):
    obj = dict(BASE[stream])
    for field in BASE[stream]:
        choice = data.draw(st.integers(0, 3))
        if choice == 1:
            obj[field] = data.draw(_ts if field == "ts" else _json)
        elif choice == 2:
            del obj[field]
    row = fast_parser(SPECS[stream])(obj)
    if row is not None:
        assert not any(isinstance(v, float) and math.isnan(v) for v in row)
    same(landing.encode_lines([orjson.dumps(obj)]), stream)
