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


def parse_instant(text: str) -> int:
    """Parse a user-given instant: ISO-8601 (naive means UTC) or epoch milliseconds."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    return to_ms(datetime.fromisoformat(text))  # 3.11 reads a "Z" suffix


MIN_INSTANT_MS = 946_684_800_000  # 2000-01-01: older instants are certainly a unit mistake
MAX_CLOCK_SKEW_MS = 5 * 60_000  # how far ahead of this clock a caller's instant may be


def parse_bounded_instant(text: str, max_future_ms: int, now_ms: int) -> int:
    """`parse_instant` of a caller's instant, from 2000-01-01 to `max_future_ms` after `now_ms`;
    ValueError with a message (an unbounded one cost a time-travel read a walk per hour to it)."""
    if len(text) > 40:
        raise ValueError("too long for an instant")
    try:
        ms = parse_instant(text)
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
    "floor_hour",
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
