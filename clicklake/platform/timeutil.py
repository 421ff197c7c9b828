"""UTC time helpers. Inside the engine every instant is an int of epoch milliseconds."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

HOUR_MS = 3_600_000
MINUTE_MS = 60_000


def floor_hour(ms: int) -> int:
    return ms - ms % HOUR_MS


def to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(dt: datetime) -> int:
    """Epoch milliseconds of `dt` (naive = UTC), sub-millisecond digits truncated toward the
    past, as the raw layer reads event times (`events`): never rounded into the next
    millisecond, whose hour or history may differ. Exact integer arithmetic (a float timestamp
    loses microseconds)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS


def iso(ms: int) -> str:
    """ISO-8601 with millisecond precision and a Z suffix."""
    return to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# An ISO-8601 date (calendar or week, extended or basic), then T (or t, or a space) and the
# hour. `datetime.fromisoformat` takes any one character between the date and the time, so a
# date with an offset, 2026-11-25+05:00, read as 05:00 on that day: a silent ten-hour shift.
_ISO_DATE = r"(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4}-W\d{2}-\d|\d{4}W\d{3})"
_ISO_DATE_ONLY = re.compile(_ISO_DATE, re.ASCII)
_ISO_DATE_TIME = re.compile(_ISO_DATE + r"[Tt ]\d", re.ASCII)


# A control character anywhere in an instant: `fromisoformat` ignored a trailing NUL, and the
# whitespace stripped around an instant included vertical tab and form feed.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_control(text: str) -> None:
    if _CONTROL.search(text):
        raise ValueError(f"{text[:40]!r} holds control characters")


class DateOnly(ValueError):
    """An ISO-8601 date without a time, where an instant is asked for."""


def from_iso(text: str, date_only: bool = False) -> datetime:
    """`datetime.fromisoformat` of an ISO-8601 date and time (naive or with an offset; "Z" is
    read by 3.11), after checking its shape: ValueError for anything else, `DateOnly` for a
    date alone unless `date_only` (then its midnight: a command line's day)."""
    if not text.isascii():
        raise ValueError(f"{text[:40]!r} is not ISO-8601 (characters outside ASCII)")
    _no_control(text)
    if _ISO_DATE_TIME.match(text):
        return datetime.fromisoformat(text)
    if _ISO_DATE_ONLY.fullmatch(text):
        if date_only:
            return datetime.fromisoformat(text)
        raise DateOnly(f"{text!r} is a date without a time")
    if _ISO_DATE_ONLY.match(text):
        raise ValueError(f"{text[:40]!r} is not an ISO-8601 date and time (a date, then T and "
                         "the time)")
    raise ValueError(f"{text[:40]!r} is not ISO-8601")


def parse_instant(text: str, date_only: bool = True) -> int:
    """Parse a user-given instant: ISO-8601 (naive means UTC) or epoch milliseconds (ASCII
    digits). A date alone is its midnight, unless not `date_only` (ValueError then). Spaces
    around it are ignored, control characters refused."""
    _no_control(text)
    text = text.strip()
    if not text.isascii():
        raise ValueError(f"{text[:40]!r} is neither ISO-8601 nor epoch ms (non-ASCII)")
    if text.lstrip("-").isdigit():
        return int(text)
    return to_ms(from_iso(text, date_only))


MIN_INSTANT_MS = 946_684_800_000  # 2000-01-01: older instants are certainly a unit mistake
MAX_CLOCK_SKEW_MS = 5 * 60_000  # how far ahead of this clock a caller's instant may be


def parse_bounded_instant(text: str, max_future_ms: int, now_ms: int,
                          date_only: bool = True) -> int:
    """`parse_instant` of a caller's instant, from 2000-01-01 to `max_future_ms` after `now_ms`;
    ValueError with a message (an unbounded one cost a time-travel read a walk per hour to it)."""
    if len(text) > 40:
        raise ValueError("too long for an instant")
    try:
        ms = parse_instant(text, date_only)
    except DateOnly:
        raise ValueError("a date without a time") from None
    except (ValueError, OverflowError, OSError):
        raise ValueError("neither ISO-8601 nor epoch milliseconds") from None
    return bounded_instant(ms, max_future_ms, now_ms)


def bounded_instant(ms: int, max_future_ms: int, now_ms: int) -> int:
    """`ms` when from 2000-01-01 to `max_future_ms` after `now_ms`; ValueError otherwise."""
    if ms < MIN_INSTANT_MS:
        raise ValueError("before 2000-01-01 (epoch milliseconds expected, not seconds?)")
    if ms > now_ms + max_future_ms:
        raise ValueError("in the future")
    return ms


def hour_partition_key(hour_ms: int) -> str:
    """Dagster's hourly partition key format."""
    return to_datetime(hour_ms).strftime("%Y-%m-%d-%H:%M")


def parse_hour_partition_key(key: str) -> int:
    return to_ms(datetime.strptime(key, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC))


def hive_hour_path(hour_ms: int) -> str:
    d = to_datetime(hour_ms)
    return f"dt={d:%Y-%m-%d}/hour={d:%H}"


_HIVE_PART = re.compile(r"dt=(\d{4})-(\d{2})-(\d{2})/hour=(\d{2})/part-0\.parquet$")


def hive_hour_of(key: str) -> int | None:
    """The hour (epoch ms) of a `.../dt=YYYY-MM-DD/hour=HH/part-0.parquet` key (`hive_hour_path`'s
    inverse), None for any other key."""
    m = _HIVE_PART.search(key)
    return None if m is None else to_ms(datetime(*map(int, m.groups()), tzinfo=UTC))


def hive_hours(keys) -> list[int]:
    """The hours of the partition files among `keys`, sorted."""
    return sorted(h for h in map(hive_hour_of, keys) if h is not None)


__all__ = [
    "HOUR_MS",
    "MINUTE_MS",
    "DateOnly",
    "floor_hour",
    "from_iso",
    "hive_hour_of",
    "hive_hour_path",
    "hive_hours",
    "hour_partition_key",
    "iso",
    "parse_hour_partition_key",
    "parse_instant",
    "to_datetime",
    "to_ms",
]
