"""Event contracts: fields, Arrow schemas, and parsing of one JSON line into a typed row.

A line either becomes a row of its stream's schema or gets a quarantine reason. Reasons, in the
order they are tested: malformed, missing_field, bad_type, bad_value (then, in `raw`: future,
late, duplicate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import orjson
import pyarrow as pa

from clicklake.platform.timeutil import to_ms

TS = pa.timestamp("ms", tz="UTC")

MALFORMED = "malformed"
MISSING_FIELD = "missing_field"
BAD_TYPE = "bad_type"
BAD_VALUE = "bad_value"
FUTURE = "future"
LATE = "late"
DUPLICATE = "duplicate"
REASONS = (MALFORMED, MISSING_FIELD, BAD_TYPE, BAD_VALUE, FUTURE, LATE, DUPLICATE)

# Field kinds: "id" (non-empty string; integers are accepted and rendered as text), "ts", "str"
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
        cols = [pa.field(name, _ARROW[kind], nullable=(name, kind) in self.optional)
                for name, kind in self.fields]
        cols.append(pa.field("arrived_at", TS, nullable=False))
        return pa.schema(cols)


_ARROW = {"id": pa.string(), "ts": TS, "str": pa.string(), "score": pa.float64(),
          "cost": pa.float64(), "num": pa.float64()}

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
    required=(("prediction_id", "id"), ("ts", "ts"), ("user_id", "id"), ("model", "str"),
              ("score", "score")),
    optional=(("impression_id", "id"),),
)
SPECS: dict[str, StreamSpec] = {s.name: s for s in (IMPRESSIONS, CLICKS, PREDICTIONS)}


class Rejected(Exception):
    """A line that cannot become a row: carries its quarantine reason and a human detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _ts(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise Rejected(BAD_TYPE, f"{name}: boolean is not a time")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return int(value)
        raise Rejected(BAD_TYPE, f"{name}: {value!r} is not epoch milliseconds")
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise Rejected(BAD_TYPE, f"{name}: {value[:40]!r} is not ISO-8601") from None
        return to_ms(dt)
    raise Rejected(BAD_TYPE, f"{name}: {type(value).__name__} is not a time")


def _value(kind: str, value: object, name: str) -> object:
    if kind == "id":
        if isinstance(value, str):
            if value.strip() == "":
                raise Rejected(MISSING_FIELD, f"{name} is empty")
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise Rejected(BAD_TYPE, f"{name}: {type(value).__name__} is not an id")
    if kind == "ts":
        return _ts(value, name)
    if kind == "str":
        if isinstance(value, str):
            return value
        raise Rejected(BAD_TYPE, f"{name}: {type(value).__name__} is not text")
    # numeric kinds
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected(BAD_TYPE, f"{name}: {type(value).__name__} is not a number")
    x = float(value)
    if not math.isfinite(x):
        raise Rejected(BAD_VALUE, f"{name} is not finite")
    if kind == "score" and not 0.0 <= x <= 1.0:
        raise Rejected(BAD_VALUE, f"{name}={x} is outside [0, 1]")
    if kind == "cost" and x < 0:
        raise Rejected(BAD_VALUE, f"{name}={x} is negative")
    return x


def parse_line(spec: StreamSpec, line: bytes) -> tuple:
    """One NDJSON line → a tuple in `spec.fields` order (ts as epoch ms), or raise Rejected."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise Rejected(MALFORMED, f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Rejected(MALFORMED, f"a JSON {type(obj).__name__}, not an object")
    missing = [n for n, _ in spec.required if obj.get(n) is None]
    if missing:
        raise Rejected(MISSING_FIELD, "missing " + ", ".join(missing))
    out = []
    for name, kind in spec.fields:
        value = obj.get(name)
        out.append(None if value is None else _value(kind, value, name))
    return tuple(out)


def event_id_of(line: bytes, spec: StreamSpec) -> str | None:
    """Best-effort id of a rejected line, for the quarantine row (None when there is none)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
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
