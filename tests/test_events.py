"""Event contracts: parse_line turns one NDJSON line into a typed row or a quarantine reason."""

from __future__ import annotations

import calendar
import gc
from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clicklake.platform.events import (
    BAD_TYPE,
    BAD_VALUE,
    CLICKS,
    IMPRESSIONS,
    MALFORMED,
    MISSING_FIELD,
    PREDICTIONS,
    QUARANTINE_SCHEMA,
    SPECS,
    TS,
    TS_MAX_MS,
    TS_MIN_MS,
    Rejected,
    event_id_of,
    event_ms,
    parse_line,
)

H13 = 1795611600000  # 2026-11-25T13:00:00Z

GOOD = {
    "impressions": {
        "impression_id": "i1",
        "ts": "2026-11-25T13:00:00Z",
        "user_id": "u1",
        "campaign_id": "c1",
        "domain": "news.example",
        "ip": "203.0.113.7",
        "user_agent": "Mozilla/5.0",
        "cost": 0.002,
    },
    "clicks": {
        "click_id": "k1",
        "ts": "2026-11-25T13:00:00Z",
        "impression_id": "i1",
        "user_id": "u1",
        "campaign_id": "c1",
    },
    "predictions": {
        "prediction_id": "p1",
        "ts": "2026-11-25T13:00:00Z",
        "user_id": "u1",
        "model": "xgb-1",
        "score": 0.25,
        "impression_id": "i1",
    },
}


def line(obj) -> bytes:
    return orjson.dumps(obj)


def reason(stream: str, raw: bytes) -> str:
    with pytest.raises(Rejected) as info:
        parse_line(SPECS[stream], raw)
    return info.value.reason


def with_(stream: str, **changes) -> bytes:
    obj = dict(GOOD[stream])
    for k, v in changes.items():
        if v is _DROP:
            obj.pop(k)
        else:
            obj[k] = v
    return line(obj)


_DROP = object()


# -- good lines --------------------------------------------------------------------------------


def test_good_lines_parse_in_field_order():
    assert parse_line(IMPRESSIONS, line(GOOD["impressions"])) == (
        "i1", H13, "u1", "c1", "news.example", "203.0.113.7", "Mozilla/5.0", 0.002,
    )  # fmt: skip
    assert parse_line(CLICKS, line(GOOD["clicks"])) == ("k1", H13, "u1", "c1", "i1")
    assert parse_line(PREDICTIONS, line(GOOD["predictions"])) == (
        "p1", H13, "u1", "xgb-1", 0.25, "i1",
    )  # fmt: skip


def test_optional_fields_absent_null_or_blank_are_null():
    for v in (_DROP, None, "", "   "):
        row = parse_line(IMPRESSIONS, with_("impressions", domain=v, ip=v, user_agent=v))
        assert row[4:7] == (None, None, None)
    assert parse_line(CLICKS, with_("clicks", impression_id=_DROP))[4] is None
    assert parse_line(CLICKS, with_("clicks", impression_id=""))[4] is None
    assert parse_line(PREDICTIONS, with_("predictions", impression_id=None))[5] is None
    assert parse_line(IMPRESSIONS, with_("impressions", cost=None))[7] is None


def test_integer_ids_become_text_and_unknown_fields_are_ignored():
    row = parse_line(CLICKS, with_("clicks", click_id=42, user_id=7, extra={"a": [1]}))
    assert row[0] == "42" and row[2] == "7"


def test_score_bounds_are_inclusive_and_integers_are_numbers():
    assert parse_line(PREDICTIONS, with_("predictions", score=0))[4] == 0.0
    assert parse_line(PREDICTIONS, with_("predictions", score=1))[4] == 1.0
    assert parse_line(PREDICTIONS, with_("predictions", score=1.0))[4] == 1.0
    assert parse_line(IMPRESSIONS, with_("impressions", cost=0))[7] == 0.0


def test_crlf_line_endings_are_tolerated():
    assert parse_line(CLICKS, line(GOOD["clicks"]) + b"\r")[0] == "k1"


# -- event times -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-25T13:00:00Z", H13),
        ("2026-11-25T13:00:00.000Z", H13),
        ("2026-11-25T13:00:00.123Z", H13 + 123),
        ("2026-11-25T15:00:00+02:00", H13),  # an offset is converted to UTC
        ("2026-11-25T12:30:00-00:30", H13),
        ("2026-11-25T13:00:00", H13),  # naive means UTC
        ("2026-11-25 13:00:00", H13),
        ("20261125T130000Z", H13),  # ISO basic format
        ("2026-11-25T13", H13),
        ("2026-11-25T13:59:59.9999999Z", H13 + 3_599_999),  # truncated, not rounded into 14:00
        ("2026-11-25T13:59:59.999500", H13 + 3_599_999),
        (H13, H13),  # epoch milliseconds
        (float(H13), H13),
        (str(H13), H13),  # epoch milliseconds as a string of digits
        (TS_MIN_MS, TS_MIN_MS),
        (TS_MAX_MS - 1, TS_MAX_MS - 1),
    ],
)
def test_ts_forms(value, expected):
    assert parse_line(CLICKS, with_("clicks", ts=value))[1] == expected
    assert event_ms(value) == expected


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("yesterday", BAD_TYPE),
        (True, BAD_TYPE),
        (False, BAD_TYPE),
        (float(H13) + 0.5, BAD_TYPE),  # a fraction of a millisecond is not epoch ms
        ([H13], BAD_TYPE),
        ({"ms": H13}, BAD_TYPE),
        ("2026-11-25", BAD_TYPE),  # a date says no time of day
        ("20261125", BAD_VALUE),  # digits are epoch ms: a 1970 instant, not an ISO basic date
        ("2026-W48-3", BAD_TYPE),
        # A date then an offset: Python reads any character as the date-time separator, so
        # this was 05:00 on the 25th, ten hours off the instant it names (no time at all).
        ("2026-11-25+05:00", BAD_TYPE),
        ("20261125+0530", BAD_TYPE),
        ("2026-11-25Z", BAD_TYPE),
        ("2026-11-25_13:00:00Z", BAD_TYPE),  # ISO separates date and time by T
        ("2026-11-25T13:00:00\u0662Z", BAD_TYPE),
        ("2026-11-25T25:00:00Z", BAD_TYPE),
        (" 2026-11-25T13:00:00Z", BAD_TYPE),
        ("-5", BAD_TYPE),  # not all digits, not ISO
        (1764075600, BAD_VALUE),  # epoch SECONDS: a 1970 instant
        ("1764075600", BAD_VALUE),
        (0, BAD_VALUE),
        (-1, BAD_VALUE),
        (TS_MIN_MS - 1, BAD_VALUE),
        (TS_MAX_MS, BAD_VALUE),
        (2**63, BAD_VALUE),  # beyond int64: would overflow the Arrow column
        (1.8446744073709552e19, BAD_VALUE),
        ("9" * 5000, BAD_VALUE),  # past int()'s 4,300-digit limit: a verdict, not a ValueError
        ("0" * 5000 + "1" + "0" * 19, BAD_VALUE),
        ("1999-12-31T23:59:59.999Z", BAD_VALUE),
        ("9999-12-31T23:59:59-01:00", BAD_VALUE),  # past year 9999 in UTC
    ],
)
def test_bad_ts(value, why):
    assert reason("clicks", with_("clicks", ts=value)) == why


def test_ts_digits_with_many_leading_zeros_are_that_instant():
    assert parse_line(CLICKS, with_("clicks", ts="0" * 5000 + str(H13)))[1] == H13


def test_the_largest_cost_is_accepted():
    assert parse_line(IMPRESSIONS, with_("impressions", cost=1e6))[7] == 1e6


def test_epoch_seconds_detail_names_the_mistake():
    with pytest.raises(Rejected, match="epoch seconds"):
        parse_line(CLICKS, with_("clicks", ts=1764075600))


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)))
def test_iso_and_epoch_ms_agree(dt):
    """Any instant in range reads the same written as ISO (Z, offset, naive) or as epoch ms."""
    dt = dt.replace(tzinfo=UTC)
    ms = calendar.timegm(dt.utctimetuple()) * 1000 + dt.microsecond // 1000
    assert event_ms(dt.isoformat()) == ms
    assert event_ms(dt.replace(tzinfo=None).isoformat()) == ms
    assert event_ms(dt.isoformat().replace("+00:00", "Z")) == ms
    assert event_ms(ms) == ms
    assert event_ms(str(ms)) == ms


# -- quarantine reasons ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json}",
        b'{"click_id": "k1",',  # truncated object
        b"[1, 2, 3]",  # an array, not an object
        b"42",
        b'"a string"',
        b"null",
        b'{"click_id": "k1", "ts": NaN}',  # orjson rejects NaN / Infinity: invalid JSON
        b'{"click_id": "k1", "ts": Infinity}',
        b'{"score": 1e400}',  # beyond a double
        b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
        b'{"click_id": "\xff\xfe"}',  # invalid UTF-8
        b"",
    ],
)
def test_malformed(raw):
    assert reason("clicks", raw) == MALFORMED


@pytest.mark.parametrize("stream", sorted(SPECS))
def test_each_required_field_missing_null_or_blank(stream):
    for name, _ in SPECS[stream].required:
        for value in (_DROP, None, "", "  \t"):
            with pytest.raises(Rejected) as info:
                parse_line(SPECS[stream], with_(stream, **{name: value}))
            assert info.value.reason == MISSING_FIELD, (stream, name, value)
            assert name in info.value.detail


def test_missing_lists_every_missing_field():
    with pytest.raises(Rejected, match="missing click_id, user_id, campaign_id"):
        parse_line(CLICKS, b'{"ts": 1795611600000}')


@pytest.mark.parametrize(
    ("stream", "field", "value"),
    [
        ("impressions", "user_id", ["u1"]),
        ("impressions", "user_id", 1.5),
        ("impressions", "user_id", True),
        ("impressions", "impression_id", {"id": 1}),
        ("impressions", "domain", 42),
        ("impressions", "ip", ["1.2.3.4"]),
        ("impressions", "cost", "0.1"),
        ("impressions", "cost", True),
        ("predictions", "score", "0.5"),
        ("predictions", "score", [0.5]),
        ("predictions", "model", 3),
        ("clicks", "impression_id", 1.0),
    ],
)
def test_bad_type(stream, field, value):
    assert reason(stream, with_(stream, **{field: value})) == BAD_TYPE


@pytest.mark.parametrize(
    ("stream", "field", "value"),
    [
        ("predictions", "score", -0.1),
        ("predictions", "score", 1.0001),
        ("predictions", "score", -1e-300),
        ("impressions", "cost", -1),
        ("impressions", "cost", -0.000001),
        ("impressions", "cost", 1e6 + 0.01),  # two costs of 1e308 would sum to inf
        ("impressions", "cost", 1e9),  # later costs this large swamp a user's earlier spend
        ("impressions", "cost", 1e308),
        ("impressions", "cost", 10**15),
    ],
)
def test_bad_value(stream, field, value):
    assert reason(stream, with_(stream, **{field: value})) == BAD_VALUE


def test_reason_order_missing_then_type_then_value():
    # bad_value (score) before a bad_type (impression_id) in field order: bad_type wins.
    assert reason("predictions", with_("predictions", score=2.0, impression_id=[1])) == BAD_TYPE
    # bad_type before a missing field in field order: missing_field wins.
    assert reason("predictions", with_("predictions", user_id=[1], score=None)) == MISSING_FIELD
    assert reason("predictions", with_("predictions", ts=5, score="x")) == BAD_TYPE


def test_rejected_lines_leave_no_reference_cycles():
    # The fold runs with the cyclic collector off: a rejection that left a frame <-> exception
    # cycle kept the caller's frame (a whole file's rows) alive until the next collection.
    def verdict(obj):
        try:
            parse_line(PREDICTIONS, obj)
        except Rejected as rej:
            return rej.reason
        return None

    gc.collect()
    gc.disable()
    try:
        assert verdict(with_("predictions", score=2.0, impression_id=[1])) == BAD_TYPE
        assert verdict(with_("predictions", user_id=[1], score=None)) == MISSING_FIELD
        assert verdict(with_("predictions", score=2.0)) == BAD_VALUE
        # Rejections raised while handling another error (a bad ISO time) carry a context.
        assert verdict(with_("predictions", ts="yesterday")) == BAD_TYPE
        assert verdict(with_("predictions", ts="2026-02-30T13:00:00Z")) == BAD_TYPE
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_event_id_of_rejected_lines():
    assert event_id_of(with_("clicks", ts="yesterday"), CLICKS) == "k1"
    assert event_id_of(with_("clicks", click_id=9, ts="yesterday"), CLICKS) == "9"
    assert event_id_of(with_("clicks", click_id=True), CLICKS) is None
    assert event_id_of(b"[1]", CLICKS) is None
    assert event_id_of(b"{oops", CLICKS) is None


# -- schemas -----------------------------------------------------------------------------------


def test_schemas():
    for spec in SPECS.values():
        schema = spec.schema
        assert schema.names == [n for n, _ in spec.fields] + ["arrived_at"]
        assert schema.field("ts").type == TS == pa.timestamp("ms", tz="UTC")
        assert schema.field("arrived_at").type == TS
        for name, _ in spec.required:
            assert not schema.field(name).nullable
        for name, _ in spec.optional:
            assert schema.field(name).nullable
        assert spec.fields[0] == (spec.id_field, "id")
    assert PREDICTIONS.schema.field("score").type == pa.float64()
    assert QUARANTINE_SCHEMA.names == [
        "reason", "detail", "event_id", "ts", "landing_key", "line_no", "arrived_at", "raw",
    ]  # fmt: skip
