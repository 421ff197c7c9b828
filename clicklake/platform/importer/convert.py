"""Source rows → normalized impression and click rows (epoch-ms times, text ids), or a reject.

Row-level checks live here; checks that need other rows (duplicates, the click/impression join)
run after the sort. Ids missing from the log are derived from a hash of the whole source row, so
importing the same log twice gives the same events, and identical rows collapse into one.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from clicklake.platform.events import COST_MAX
from clicklake.platform.importer.mapping import (
    ClicksMapping,
    Mapping,
    check_time_format,
    click_delay_ms,
)
from clicklake.platform.importer.readers import RAW_KEEP, OutOfRange, Problem, ReadError
from clicklake.platform.timeutil import DateOnly, from_iso

# The event contract's range; outside it is almost always a wrong --time-format (seconds read as
# ms, ...), and the raw layer would quarantine such events anyway.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
MIN_TS = (datetime(2000, 1, 1, tzinfo=UTC) - _EPOCH) // _MS
MAX_TS = (datetime(2100, 1, 1, tzinfo=UTC) - _EPOCH) // _MS


def _ms(dt: datetime) -> int:
    """Exact epoch ms, truncated like the event parser does (a float would round across hours)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS

MALFORMED = "malformed"
MISSING_FIELD = "missing_field"
BAD_TIME = "bad_time"
BAD_VALUE = "bad_value"
CLICK_NOT_AFTER = "click_not_after_impression"
CONFLICTING_ID = "conflicting_id"
UNKNOWN_IMPRESSION = "unknown_impression"


class BadValue(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class _DateOnly(ValueError):
    pass


def parse_time(value: Any, fmt: str, name: str) -> int:
    """One source time value → epoch ms (UTC), or BadValue(BAD_TIME / MISSING_FIELD)."""
    if isinstance(value, bytes):
        value = _utf8(value, name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadValue(MISSING_FIELD, f"{name} is empty")
    if isinstance(value, OutOfRange):
        raise BadValue(BAD_TIME, f"{name}: {value.value} ({value.type}) is outside the years "
                                 "1-9999")
    try:
        ms = _parse_time(value, fmt)
    except _DateOnly:
        raise BadValue(BAD_TIME, f"{name}: {str(value)[:40]!r} is a date without a time "
                                 f"(format {fmt})") from None
    except (ValueError, OverflowError, TypeError):
        raise BadValue(BAD_TIME, f"{name}: {str(value)[:40]!r} is not {fmt}") from None
    if not MIN_TS <= ms < MAX_TS:
        raise BadValue(BAD_TIME, f"{name}: {str(value)[:40]!r} as {fmt} is outside 2000-2099 "
                                 "(wrong time format?)")
    return ms


def _parse_time(value: Any, fmt: str) -> int:
    if isinstance(value, datetime):  # a typed Parquet timestamp needs no format
        return _ms(value)
    if isinstance(value, date):  # a Parquet date32/date64: no time of day, as a CSV date
        raise _DateOnly(value)
    if isinstance(value, bool):
        raise TypeError("boolean")
    text = value.strip() if isinstance(value, str) else None
    if fmt == "epoch_ms" or fmt == "epoch_s":
        return _epoch_ms(text if text is not None else value, fmt == "epoch_s")
    if fmt == "yymmddhh":
        if isinstance(value, float | Decimal) and value == int(value):
            value = int(value)  # an integer column with a null is read as floats (25060210.0)
        digits = text if text is not None else (str(value) if isinstance(value, int) else "")
        digits = digits.zfill(8)
        if len(digits) != 8 or not digits.isdigit():
            raise ValueError("not YYMMDDHH")
        yy, mm, dd, hh = (int(digits[i : i + 2]) for i in (0, 2, 4, 6))
        # Hour-level times go to the start of their hour: see docs/import.md for why.
        return _ms(datetime(2000 + yy, mm, dd, hh, tzinfo=UTC))
    if text is None:
        raise ValueError("not text")
    if fmt == "iso":
        try:
            # The event contract's shape check (`timeutil.from_iso`): a date alone (2025-06-02,
            # 20121010) is refused, not read as midnight, which would be a silent guess (often
            # a forgotten --time-format); so is a date with an offset, which Python reads as a
            # time of that day.
            return _ms(from_iso(text))
        except DateOnly:
            raise _DateOnly(text) from None
    return _ms(datetime.strptime(text, fmt))


def _epoch_ms(value: Any, seconds: bool) -> int:
    """Epoch seconds or ms → ms, floored exactly like ISO times are: integer arithmetic on the
    decimal digits, since a float product rounds (1748854799.9996 s would land in the next
    hour). A float is taken by its shortest text (repr), as it was written."""
    if type(value) is int and -10**18 < value < 10**18:  # the usual: no fraction
        return value * 1000 if seconds else value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        return int(value) * 1000 if seconds else int(value)
    if isinstance(value, float):
        value = repr(value)
    elif not isinstance(value, str | int | Decimal):
        raise TypeError(type(value).__name__)
    try:
        x = Decimal(value)
    except ArithmeticError:  # decimal's InvalidOperation: not a number
        raise ValueError("not a number") from None
    if not x.is_finite():
        raise ValueError("not finite")
    sign, digits, exp = x.as_tuple()
    n = int("".join(map(str, digits))) * (-1 if sign else 1)
    e = int(exp) + (3 if seconds else 0)  # value in ms = n * 10**e
    if len(digits) + e > 21:  # past 10**21 ms: no time at all (and 10**e would be huge)
        raise ValueError("out of range")
    if e >= 0:
        return n * 10**e
    if -e > len(digits):  # |value| < 1 ms
        return -1 if n < 0 else 0
    return n // 10**-e  # floor division: truncates toward the past, as ISO times do


def _utf8(value: bytes, name: str) -> str:
    """A Parquet binary value (a string column written without the UTF8 annotation) as text."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadValue(MALFORMED, f"{name}: invalid UTF-8 bytes") from None


def _text(value: Any, name: str) -> str | None:
    """A source value as event text; None for missing/blank; BadValue when it is not one value."""
    if value is None:
        return None
    if type(value) is str:  # every CSV value: skip the type checks below
        if not value.isascii() and _UNDECODED.search(value):
            raise BadValue(MALFORMED, f"{name}: invalid UTF-8 bytes")
        return value.strip() or None
    if isinstance(value, bytes):
        value = _utf8(value, name)  # str() would make "b'u1'" of it
    elif isinstance(value, (list, tuple, dict)):  # a list, struct or map column
        raise BadValue(BAD_VALUE, f"{name}: {str(value)[:40]!r} is a nested value, not text")
    elif isinstance(value, OutOfRange):
        raise BadValue(BAD_VALUE, f"{name}: {value.value} ({value.type}) is out of range")
    elif isinstance(value, float):
        if math.isnan(value):
            return None  # a Parquet float column's "no value"; ±inf is a value, and a bad one
        if math.isinf(value):
            return str(value)  # "inf": refused where a number or time is expected
        if value == int(value):
            value = int(value)  # a float-typed id column must not print as "12.0"
    s = str(value).strip()
    return s or None


def _key(values: list[Any], idx: tuple[int, ...], names: tuple[str, ...]) -> str | None:
    """One column's text, or several joined by ':' (None when all are blank), a ':' or '\\'
    inside a part escaped by a '\\': ("a:b", "c") and ("a", "b:c") were both "a:b:c", one
    user. Parts without either read as before."""
    parts = [_text(values[i], name) for i, name in zip(idx, names, strict=True)]
    if all(p is None for p in parts):
        return None
    if len(parts) == 1:
        return parts[0]
    return ":".join((p or "").replace("\\", "\\\\").replace(":", "\\:") for p in parts)


def _str(value: Any) -> str:
    # Bytes keep undecodable bytes as surrogates, as the CSV reader does, so they are caught.
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


# What a CSV reader's (or `_str`'s) surrogateescape makes of bytes that are not UTF-8
_UNDECODED = re.compile("[\udc80-\udcff]")


def row_material(values: list[Any]) -> bytes:
    """The bytes identifying a source row: every column, so only identical rows share them.
    Bytes that are not UTF-8 go in as they are (a binary id or hash column the mapping does not
    read rejected every row; a mapped column with them is refused by `_text`, by name)."""
    parts = ["\x00" if v is None else _str(v) for v in values]
    return "\x1f".join(parts).encode("utf-8", "surrogateescape")


def digest(material: bytes, size: int = 10) -> str:
    return hashlib.blake2b(material, digest_size=size).hexdigest()


def derived_click_id(impression_id: str) -> str:
    """The one click a label or click-time column gives an impression."""
    return "c" + digest(b"click\x1f" + impression_id.encode("utf-8"))


def raw_text(values: list[Any], delimiter: str = ",") -> str:
    text = delimiter.join("" if v is None else _str(v) for v in values)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:RAW_KEEP]


def _index(columns: list[str], names: tuple[str, ...] | list[str], path: str) -> tuple[int, ...]:
    missing = [n for n in names if n not in columns]
    if missing:
        raise ReadError(f"{path}: column(s) {', '.join(missing)} not in the header "
                        f"({', '.join(columns)})")
    return tuple(columns.index(n) for n in names)


@dataclass(frozen=True)
class ImpressionRow:
    line_no: int
    impression_id: str
    ts: int
    user_id: str
    campaign_id: str
    domain: str | None
    ip: str | None
    user_agent: str | None
    cost: float | None
    click_ts: int | None
    click_id: str | None
    row_hash: bytes


@dataclass(frozen=True)
class ClickRow:
    line_no: int
    click_id: str
    impression_id: str
    ts: int
    user_id: str | None
    campaign_id: str | None
    row_hash: bytes


class ImpressionConverter:
    def __init__(self, m: Mapping, columns: list[str], path: str):
        self.m = m
        ix = lambda names: _index(columns, names, path)
        one = lambda name: ix((name,))[0] if name else None
        self.time, self.user, self.campaign = one(m.time), ix(m.user), ix(m.campaign)
        self.site = ix(m.site) if m.site else None
        self.id, self.ip, self.ua, self.cost = one(m.id), one(m.ip), one(m.user_agent), one(m.cost)
        self.click_time, self.label = one(m.click_time), one(m.label)
        self.click_fmt = m.click_time_format or m.time_format
        for fmt, key in ((m.time_format, "time_format"), (self.click_fmt, "click_time_format")):
            check_time_format(fmt, key)  # also for a Mapping built without mapping_from_dict
        self.delay_ms = click_delay_ms(m.click_delay_s)  # floored, not rounded, and >= 1 ms

    def convert(self, line_no: int, values: list[Any]) -> ImpressionRow | Problem:
        m = self.m
        try:
            material = row_material(values)
        except UnicodeEncodeError:
            return Problem(line_no, MALFORMED, "invalid UTF-8 bytes", raw_text(values, m.delimiter))
        try:
            ts = parse_time(values[self.time], m.time_format, m.time)
            user = _key(values, self.user, m.user)
            if user is None:
                raise BadValue(MISSING_FIELD, f"user ({', '.join(m.user)}) is empty")
            campaign = _key(values, self.campaign, m.campaign)
            if campaign is None:
                raise BadValue(MISSING_FIELD, f"campaign ({', '.join(m.campaign)}) is empty")
            if self.id is not None:
                imp_id = _text(values[self.id], m.id)
                if imp_id is None:
                    raise BadValue(MISSING_FIELD, f"{m.id} is empty")
            else:
                imp_id = "i" + digest(material)
            domain = _key(values, self.site, m.site) if self.site else None
            ip = _text(values[self.ip], m.ip) if self.ip is not None else None
            ua = _text(values[self.ua], m.user_agent) if self.ua is not None else None
            cost = self._cost(values)
            click_ts = self._click_ts(values, ts)
        except BadValue as exc:
            return Problem(line_no, exc.reason, str(exc), raw_text(values, m.delimiter))
        return ImpressionRow(
            line_no=line_no,
            impression_id=imp_id,
            ts=ts,
            user_id=user,
            campaign_id=campaign,
            domain=domain,
            ip=ip,
            user_agent=ua,
            cost=cost,
            click_ts=click_ts,
            click_id=derived_click_id(imp_id) if click_ts is not None else None,
            row_hash=hashlib.blake2b(material, digest_size=16).digest(),
        )

    def _cost(self, values: list[Any]) -> float | None:
        if self.cost is None:
            return None
        v = values[self.cost]
        if _text(v, self.m.cost) is None:
            return None  # unknown cost stays null; the pipeline reads it as zero spend
        try:
            x = float(v) if not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            x = math.nan
        x *= self.m.cost_scale
        if not math.isfinite(x) or not 0 <= x <= COST_MAX:
            raise BadValue(BAD_VALUE, f"{self.m.cost}: {str(v)[:40]!r} is not a cost in "
                                      f"[0, {COST_MAX:g}] (after cost_scale)")
        return x

    def _click_ts(self, values: list[Any], ts: int) -> int | None:
        if self.label is not None:
            v = values[self.label]
            t = _text(v, self.m.label)
            if t in ("1", "true", "True", "TRUE"):
                # As a click time is bounded (`parse_time`): past 2099 the raw layer would
                # refuse the click, and the impression alone would be labeled 0.
                if ts + self.delay_ms >= MAX_TS:
                    raise BadValue(BAD_TIME, f"{self.m.label}: the click it stands for, "
                                             f"{self.delay_ms // 1000} s after the impression, "
                                             "falls after 2099")
                return ts + self.delay_ms
            if t in ("0", "false", "False", "FALSE"):
                return None
            raise BadValue(BAD_VALUE, f"{self.m.label}: {str(v)[:40]!r} is not a 0/1 label")
        if self.click_time is not None:
            v = values[self.click_time]
            if not isinstance(v, OutOfRange) and _text(v, self.m.click_time) is None:
                return None  # no click
            # A bad click time rejects the row: its label would be unknown.
            return parse_time(v, self.click_fmt, self.m.click_time)
        return None


class ClickConverter:
    def __init__(self, c: ClicksMapping, default_fmt: str, columns: list[str], path: str,
                 delimiter: str = ","):
        self.c, self.fmt, self.delimiter = c, c.time_format or default_fmt, delimiter
        check_time_format(self.fmt, "clicks.time_format")
        ix = lambda names: _index(columns, names, path)
        self.time, self.imp = ix((c.time,))[0], ix((c.impression_id,))[0]
        self.id = ix((c.id,))[0] if c.id else None
        self.user = ix(c.user) if c.user else None
        self.campaign = ix(c.campaign) if c.campaign else None

    def convert(self, line_no: int, values: list[Any]) -> ClickRow | Problem:
        c = self.c
        try:
            material = row_material(values)
        except UnicodeEncodeError:
            return Problem(line_no, MALFORMED, "invalid UTF-8 bytes", raw_text(values, self.delimiter))
        try:
            ts = parse_time(values[self.time], self.fmt, c.time)
            imp = _text(values[self.imp], c.impression_id)
            if imp is None:
                raise BadValue(MISSING_FIELD, f"{c.impression_id} is empty")
            if self.id is not None:
                click_id = _text(values[self.id], c.id)
                if click_id is None:
                    raise BadValue(MISSING_FIELD, f"{c.id} is empty")
            else:
                click_id = "c" + digest(material)
            user = _key(values, self.user, c.user) if self.user else None
            campaign = _key(values, self.campaign, c.campaign) if self.campaign else None
        except BadValue as exc:
            return Problem(line_no, exc.reason, str(exc), raw_text(values, self.delimiter))
        return ClickRow(
            line_no=line_no,
            click_id=click_id,
            impression_id=imp,
            ts=ts,
            user_id=user,
            campaign_id=campaign,
            row_hash=hashlib.blake2b(material, digest_size=16).digest(),
        )
