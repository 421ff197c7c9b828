"""Event contracts: fields, Arrow schemas, and parsing of one JSON line into a typed row.

A line either becomes a row of its stream's schema or gets a quarantine reason. Reasons, in the
order they are tested: malformed, missing_field, bad_type, bad_value (then, in `raw`: future,
late, duplicate). A line with several problems gets the first reason of that order.

- malformed: not JSON (orjson is strict: `NaN`, `Infinity` and numbers beyond a double such as
  `1e400` are invalid JSON), or JSON that is not an object.
- missing_field: a required field is absent, null, or an empty / whitespace-only string. An
  optional field that is absent, null or blank is stored as null (never quarantined for that).
- bad_type: a value of the wrong JSON type for its field (see the field kinds below).
- bad_value: the right type with an impossible value: a score outside [0, 1], a cost below 0
  or above 1e12, or a time outside [2000-01-01, 2100-01-01). The lower bound is what catches epoch *seconds*:
  the contract says epoch milliseconds, so 1764075600 is an instant of January 1970, which no
  ad event has; quarantining it says so instead of filing it as `late`.

Event times (`ts`) are epoch milliseconds (a JSON integer, an integral float, or a string of
digits) or an ISO-8601 date-time string: `Z` or an offset such as `+02:00` is converted to UTC,
a naive one is UTC, and sub-millisecond digits are truncated (the instant is floored to its
millisecond, never rounded into the next one). A date without a time (`2026-11-25`) is a
bad_type: it does not say when the event happened, and midnight would be a silent guess.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa

from clicklake.platform.timeutil import DateOnly, from_iso

TS = pa.timestamp("ms", tz="UTC")

MALFORMED = "malformed"
MISSING_FIELD = "missing_field"
BAD_TYPE = "bad_type"
BAD_VALUE = "bad_value"
FUTURE = "future"
LATE = "late"
DUPLICATE = "duplicate"
REASONS = (MALFORMED, MISSING_FIELD, BAD_TYPE, BAD_VALUE, FUTURE, LATE, DUPLICATE)

# Field kinds: "id" (non-blank string; integers are accepted and rendered as text), "ts", "str"
# (free text), "num" (finite number), "score" (number in [0, 1]), "cost" (number >= 0).


@dataclass(frozen=True)
class StreamSpec:
    name: str
    id_field: str
    required: tuple[tuple[str, str], ...]
    optional: tuple[tuple[str, str], ...]

    @property
    def fields(self) -> tuple[tuple[str, str], ...]:
        return self.required + self.optional

    @property
    def schema(self) -> pa.Schema:
        """The raw table schema: event fields, then the arrival time of the landing file."""
        cols = [
            pa.field(name, _ARROW[kind], nullable=(name, kind) in self.optional)
            for name, kind in self.fields
        ]
        cols.append(pa.field("arrived_at", TS, nullable=False))
        return pa.schema(cols)


_ARROW = {
    "id": pa.string(),
    "ts": TS,
    "str": pa.string(),
    "score": pa.float64(),
    "cost": pa.float64(),
    "num": pa.float64(),
}

IMPRESSIONS = StreamSpec(
    "impressions",
    "impression_id",
    required=(("impression_id", "id"), ("ts", "ts"), ("user_id", "id"), ("campaign_id", "id")),
    optional=(("domain", "str"), ("ip", "str"), ("user_agent", "str"), ("cost", "cost")),
)
CLICKS = StreamSpec(
    "clicks",
    "click_id",
    required=(("click_id", "id"), ("ts", "ts"), ("user_id", "id"), ("campaign_id", "id")),
    optional=(("impression_id", "id"),),
)
PREDICTIONS = StreamSpec(
    "predictions",
    "prediction_id",
    required=(
        ("prediction_id", "id"),
        ("ts", "ts"),
        ("user_id", "id"),
        ("model", "str"),
        ("score", "score"),
    ),
    optional=(("impression_id", "id"),),
)
SPECS: dict[str, StreamSpec] = {s.name: s for s in (IMPRESSIONS, CLICKS, PREDICTIONS)}


class Rejected(Exception):
    """A line that cannot become a row: carries its quarantine reason and a human detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
TS_MIN_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: anything earlier is taken for epoch seconds
TS_MAX_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z (exclusive)
# No impression costs a million USD (a CPM column not scaled reads a thousand times too high,
# and stays far below). Below it, sums of costs stay finite (two costs of 1e308 summed to inf,
# which JSON documents cannot hold) and exact enough: the online store answers a past instant
# as a user's total spend less the costs after it, and a later cost of 1e9 moved an earlier
# spend of 0.1 in its eighth digit (1e6: the eleventh, inside the checks' 1e-9).
COST_MAX = 1e6


def _checked_ms(ms: int, name: str) -> int:
    if ms < TS_MIN_MS:
        hint = " (epoch seconds? ts is epoch milliseconds)" if ms >= 0 else ""
        raise Rejected(BAD_VALUE, f"{name}={ms} is before 2000-01-01{hint}")
    if ms >= TS_MAX_MS:
        raise Rejected(BAD_VALUE, f"{name}={ms} is after 2100-01-01")
    return ms


def _iso_ms(value: str, name: str) -> int:
    try:
        dt = from_iso(value)
    except DateOnly:
        raise Rejected(BAD_TYPE, f"{name}: {value!r} is a date without a time") from None
    except ValueError as exc:
        raise Rejected(BAD_TYPE, f"{name}: {exc}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        # Exact integer arithmetic; floor division truncates sub-millisecond digits.
        return (dt - _EPOCH) // _MS
    except OverflowError:
        raise Rejected(BAD_VALUE, f"{name}: {value[:40]!r} is out of range") from None


def event_ms(value: object, name: str = "ts") -> int:
    """An event time (see the module docstring) → epoch ms, or raise Rejected."""
    return _ts(value, name)


def _ts(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise Rejected(BAD_TYPE, f"{name}: boolean is not a time")
    if isinstance(value, int):
        return _checked_ms(value, name)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return _checked_ms(int(value), name)
        raise Rejected(BAD_TYPE, f"{name}: {value!r} is not epoch milliseconds")
    if isinstance(value, str):
        if value.isascii() and value.isdigit():
            digits = value.lstrip("0") or "0"  # int() refuses 4,300+ digits
            if len(digits) > 19:  # past 2100 at any rate
                raise Rejected(BAD_VALUE, f"{name}: {value[:24]}... is after 2100-01-01")
            return _checked_ms(int(digits), name)
        return _checked_ms(_iso_ms(value, name), name)
    raise Rejected(BAD_TYPE, f"{name}: {type(value).__name__} is not a time")


def _id(value: object, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise Rejected(BAD_TYPE, f"{name}: {type(value).__name__} is not an id")


def _text(value: object, name: str) -> str:
    if isinstance(value, str):
        return value
    raise Rejected(BAD_TYPE, f"{name}: {type(value).__name__} is not text")


def _num(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected(BAD_TYPE, f"{name}: {type(value).__name__} is not a number")
    x = float(value)
    if not math.isfinite(x):
        raise Rejected(BAD_VALUE, f"{name} is not finite")
    return x


def _score(value: object, name: str) -> float:
    x = _num(value, name)
    if not 0.0 <= x <= 1.0:
        raise Rejected(BAD_VALUE, f"{name}={x} is outside [0, 1]")
    return x


def _cost(value: object, name: str) -> float:
    x = _num(value, name)
    if x < 0:
        raise Rejected(BAD_VALUE, f"{name}={x} is negative")
    if x > COST_MAX:
        raise Rejected(BAD_VALUE, f"{name}={x} is above {COST_MAX:g}")
    return x


_CONVERT = {"id": _id, "ts": _ts, "str": _text, "num": _num, "score": _score, "cost": _cost}


def _value(kind: str, value: object, name: str) -> object:
    return _CONVERT[kind](value, name)


def _plan(spec: StreamSpec) -> tuple[tuple[str, object, bool], ...]:
    plan = _PLANS.get(spec)
    if plan is None:
        required = {name for name, _ in spec.required}
        plan = tuple((name, _CONVERT[kind], name in required) for name, kind in spec.fields)
        _PLANS[spec] = plan
    return plan


_PLANS: dict[StreamSpec, tuple[tuple[str, object, bool], ...]] = {}


def parse_line(spec: StreamSpec, line: bytes) -> tuple:
    """One NDJSON line → a tuple in `spec.fields` order (ts as epoch ms), or raise Rejected."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise Rejected(MALFORMED, f"invalid JSON: {exc}") from None
    return parse_object(spec, obj)


def parse_object(spec: StreamSpec, obj: object) -> tuple:
    """`parse_line` after the JSON decoding: a decoded value → a row tuple, or raise Rejected."""
    if obj.__class__ is not dict:
        raise Rejected(MALFORMED, f"a JSON {type(obj).__name__}, not an object")
    out = []
    missing: list[str] = []
    problem: Rejected | None = None  # the first bad_type, else the first bad_value
    for name, convert, required in _plan(spec):
        value = obj.get(name)
        if value is None or (value.__class__ is str and (not value or value.isspace())):
            if required:
                missing.append(name)
            out.append(None)
            continue
        try:
            out.append(convert(value, name))
        except Rejected as rej:
            if problem is None or (problem.reason == BAD_VALUE and rej.reason == BAD_TYPE):
                # Kept without its traceback, and raised anew below: a caught exception held
                # in a local is a frame -> exception -> traceback -> frame cycle, which kept
                # the caller's rows alive until the cyclic collector ran (a fold disables it).
                problem = rej.with_traceback(None)
                problem.__context__ = None  # a bad ISO time's ValueError holds frames too
            out.append(None)
    if missing:
        raise Rejected(MISSING_FIELD, "missing " + ", ".join(missing))
    if problem is not None:
        raise Rejected(problem.reason, problem.detail)
    return tuple(out)


# -- fast path -------------------------------------------------------------------------------------
# Most lines are plain: string ids, an integer or `YYYY-MM-DDTHH:MM:SS.mmmZ` time, float numbers.
# `fast_parser(spec)` answers those with a few type and range checks per field, and says "not
# sure" (None) for anything else, which the caller then hands to `parse_object`: so a verdict or
# row is always parse_object's (tests compare the two on messy streams and hand-made bad lines).

_ISO_SECOND = re.compile(r"(\d{4}-\d\d-\d\dT(?:[01]\d|2[0-3])):([0-5]\d):([0-5]\d)", re.ASCII)
_HOUR_OF_PREFIX: dict[str, int | None] = {}  # "YYYY-MM-DDTHH" -> epoch ms, None = not valid
_MS_OF_SECOND: dict[str, int | None] = {}  # "YYYY-MM-DDTHH:MM:SS" -> epoch ms, None = not valid


def fast_iso_ms(value: str) -> int | None:
    """Epoch ms of `YYYY-MM-DDTHH:MM:SS.mmmZ` in range, or None (then ask `event_ms`): a second
    is checked and converted once and cached (the hour by `event_ms` itself), so a line costs a
    few character tests, one lookup and the milliseconds' int()."""
    if len(value) != 24 or value[19] != "." or value[23] != "Z":
        return None
    frac = value[20:23]
    if not (frac.isascii() and frac.isdigit()):
        return None
    second = _MS_OF_SECOND.get(value[:19], 0)
    if second == 0:
        second = _second_ms(value[:19])
    return None if second is None else second + int(frac)


def _second_ms(text: str) -> int | None:
    m = _ISO_SECOND.fullmatch(text)
    if m is None:
        ms = None
    else:
        prefix, mm, ss = m.groups()
        hour = _HOUR_OF_PREFIX.get(prefix, 0)
        if hour == 0:
            try:
                hour = event_ms(prefix + ":00:00Z")
            except Rejected:
                hour = None
            if len(_HOUR_OF_PREFIX) >= 100_000:  # bounded, whatever the input
                _HOUR_OF_PREFIX.clear()
            _HOUR_OF_PREFIX[prefix] = hour
        # An hour in [2000, 2100) starts and ends in range: all of it passes `_checked_ms`.
        ms = None if hour is None else hour + int(mm) * 60_000 + int(ss) * 1_000
    if len(_MS_OF_SECOND) >= 100_000:
        _MS_OF_SECOND.clear()
    _MS_OF_SECOND[text] = ms
    return ms


def fast_parser(spec: StreamSpec) -> Callable[[object], tuple | None]:
    """A function: decoded line -> the row `parse_object` gives, or None when it is not sure
    (anything but plain values: then call `parse_object` for the row or the exact verdict)."""
    fn = _FAST.get(spec)
    if fn is None:
        fn = _FAST[spec] = _compile_fast_row(spec)
    return fn


_FLOAT_RANGE = {"num": (-math.inf, math.inf), "score": (0.0, 1.0), "cost": (0.0, COST_MAX)}

# The fast row function is generated from the spec: straight-line code, one block per field
# (a loop over the fields interpreting their kinds cost ~2.5x as much, and this runs per line).
_FAST_CHECK = {
    "text": """
    {v} = get({name!r})
    if {v} is None:
        {if_none}
    elif {v}.__class__ is not str:
        return None
    elif not {v} or {v}.isspace():
        {if_blank}""",
    "ts": """
    {v} = get({name!r})
    if {v} is None:
        {if_none}
    elif {v}.__class__ is int:  # not bool: its class is bool
        if not TS_MIN_MS <= {v} < TS_MAX_MS:
            return None
    elif {v}.__class__ is str:
        {v} = fast_iso_ms({v})
        if {v} is None:
            return None
    else:
        return None""",
    "float": """
    {v} = get({name!r})
    if {v} is None:
        {if_none}
    elif {v}.__class__ is not float or not {lo!r} <= {v} <= {hi!r} or {v} in INFINITIES:
        return None""",  # an int is left to parse_object
}


def _compile_fast_row(spec: StreamSpec) -> Callable[[object], tuple | None]:
    required = {name for name, _ in spec.required}
    lines = ["def fast_row(obj):", "    if obj.__class__ is not dict:", "        return None",
             "    get = obj.get"]
    names = []
    for i, (name, kind) in enumerate(spec.fields):
        v = f"v{i}"
        names.append(v)
        group = "text" if kind in ("id", "str") else "ts" if kind == "ts" else "float"
        lo, hi = _FLOAT_RANGE.get(kind, (0, 0))
        lines.append(_FAST_CHECK[group].format(
            v=v, name=name, lo=lo, hi=hi,
            if_none="return None" if name in required else "pass",
            if_blank="return None" if name in required else f"{v} = None"))
    lines.append(f"    return ({', '.join(names)},)")
    scope = {"TS_MIN_MS": TS_MIN_MS, "TS_MAX_MS": TS_MAX_MS, "fast_iso_ms": fast_iso_ms,
             "INFINITIES": (math.inf, -math.inf), "inf": math.inf}
    exec("\n".join(lines), scope)  # noqa: S102 - our own template, names from the spec
    fn = scope["fast_row"]
    fn.__qualname__ = fn.__name__ = f"fast_row_{spec.name}"
    return fn


_FAST: dict[StreamSpec, Callable[[object], tuple | None]] = {}

# -- compiled fast path ----------------------------------------------------------------------------
# `plain_rows` goes one step further for whole files: the C module `_plainjson` (built with the
# package; absent without a C compiler) reads plain lines into rows without decoding them into
# dicts first, and says "not sure" for the rest, which then take orjson and `parse_object`.

try:
    from clicklake.platform import _plainjson
except ImportError:  # built without a C compiler: callers keep the per-line path
    _plainjson = None

_PLAIN_KIND = {"id": "i", "str": "i", "ts": "t", "num": "f", "score": "f", "cost": "f"}
_PLAIN_ARGS: dict[StreamSpec, tuple] = {}


def _plain_args(spec: StreamSpec) -> tuple:
    args = _PLAIN_ARGS.get(spec)
    if args is None:
        required = {name for name, _ in spec.required}
        kinds = "".join(_PLAIN_KIND[kind].upper() if name in required else _PLAIN_KIND[kind]
                        for name, kind in spec.fields)
        if "t" in kinds:
            raise ValueError(f"{spec.name}: an optional time field is not supported")
        bounds = [_FLOAT_RANGE.get(kind, (0.0, 0.0)) for _, kind in spec.fields]
        args = _PLAIN_ARGS[spec] = (
            tuple(name.encode() for name, _ in spec.fields), kinds.encode(),
            tuple(float(lo) for lo, _ in bounds), tuple(float(hi) for _, hi in bounds))
    return args


def plain_rows(spec: StreamSpec, lines: list[bytes], ts_lo: int = TS_MIN_MS,
               ts_hi: int = TS_MAX_MS - 1) -> tuple[list, int, int] | None:
    """The rows of a file's lines in one C call: `(out, unsure, blank)` where `out[i]` is line
    i's row (exactly `parse_object`'s), None when the C reader is not sure (anything but a flat
    object of the spec's fields with plain values, or a time outside [ts_lo, ts_hi]: ask
    orjson and `parse_object`), or False for a blank line; `unsure` and `blank` count those.
    None when the extension is not built."""
    if _plainjson is None:
        return None
    return _plainjson.rows(lines, *_plain_args(spec), max(ts_lo, TS_MIN_MS),
                           min(ts_hi, TS_MAX_MS - 1))


def event_id_of(line: bytes, spec: StreamSpec) -> str | None:
    """Best-effort id of a rejected line, for the quarantine row (None when there is none)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return event_id_of_object(obj, spec)


def event_id_of_object(obj: object, spec: StreamSpec) -> str | None:
    """`event_id_of` for an already decoded line."""
    if isinstance(obj, dict):
        v = obj.get(spec.id_field)
        if isinstance(v, str | int) and not isinstance(v, bool):
            return str(v)
    return None


QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("event_id", pa.string()),
        pa.field("ts", TS),
        pa.field("landing_key", pa.string(), nullable=False),
        pa.field("line_no", pa.int64(), nullable=False),
        pa.field("arrived_at", TS, nullable=False),
        pa.field("raw", pa.string(), nullable=False),
    ]
)
