"""Sorted events → Firehose-layout landing files, one per stream and 5-minute buffer.

Each event goes into the buffer of its own event time (a buffer never spans an hour boundary).
The key's arrival time is the file's last event time rounded up to the whole second (Firehose
names carry seconds), at most the last whole second of the events' hour. So no event is ahead
of its file's arrival (never `future`, whatever the future tolerance) and every file arrives in
its events' own hour (never `late`, whatever the allowed lateness). The one exception a
second-precision key cannot avoid: with a future tolerance of 0, an event inside the last
second of an hour with a fraction (10:59:59.5) is up to 999 ms ahead of its file's 10:59:59.
File names carry a uuid derived from the import's source tag, the stream, the buffer and a part
number: re-importing the same source writes the same keys with the same bytes, replacing the
earlier files instead of duplicating them.
"""

from __future__ import annotations

import hashlib
import uuid

from clicklake.platform import landing
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, MINUTE_MS, floor_hour

BUFFER_MS = 5 * MINUTE_MS
MAX_LINES_PER_FILE = 100_000  # a busy buffer is cut into parts, so memory stays bounded


def file_uuid(source: str, stream: str, buffer_ms: int, part: int) -> str:
    h = hashlib.blake2b(f"{source}\x1f{stream}\x1f{buffer_ms}\x1f{part}".encode(), digest_size=16)
    return str(uuid.UUID(bytes=h.digest()))


def arrival_ms(last_ts: int, buffer: int) -> int:
    """A file's arrival: its last event rounded up to the second, kept inside its hour (see the
    module doc)."""
    up = -(-last_ts // 1000) * 1000
    return min(up, floor_hour(buffer) + HOUR_MS - 1000)


def file_key(stream: str, source: str, prefix: str, buffer: int, part: int, last_ts: int) -> str:
    """The landing key of one buffer's part, from its last event: the importer names every file
    it will write before writing any (its manifest's pending keys)."""
    return landing.firehose_key(stream, arrival_ms(last_ts, buffer),
                                file_uuid(source, stream, buffer, part), prefix)


class BufferWriter:
    """Takes (ts, line) in time order; writes a landing file whenever a buffer or part fills."""

    def __init__(self, store: Store, stream: str, source: str, prefix: str = landing.DEFAULT_PREFIX,
                 buffer_ms: int = BUFFER_MS, max_lines: int = MAX_LINES_PER_FILE):
        if buffer_ms <= 0 or HOUR_MS % buffer_ms:
            raise ValueError(f"buffer_ms {buffer_ms} must divide an hour (a buffer must not span "
                             "two hours)")
        self.store, self.stream, self.source, self.prefix = store, stream, source, prefix
        self.buffer_ms, self.max_lines = buffer_ms, max_lines
        self.keys: list[str] = []
        self.hours: set[int] = set()
        self.events = 0
        self._buffer: int | None = None
        self._part = 0
        self._lines: list[bytes] = []
        self._last_ts = 0

    def add(self, ts: int, line: bytes) -> None:
        buf = ts - ts % self.buffer_ms
        if self._buffer is not None and buf < self._buffer:
            raise ValueError(f"{self.stream}: events must come in time order ({ts} after buffer "
                             f"{self._buffer})")
        if buf != self._buffer:
            self._flush()
            self._buffer, self._part = buf, 0
        elif len(self._lines) >= self.max_lines:
            self._flush()
            self._part += 1
        self._lines.append(line)
        self._last_ts = ts
        self.events += 1

    def _flush(self) -> None:
        if not self._lines:
            return
        key = file_key(self.stream, self.source, self.prefix, self._buffer, self._part,
                       self._last_ts)
        landing.write_file(self.store, key, self._lines)
        self.keys.append(key)
        self.hours.add(floor_hour(self._buffer))
        self._lines = []

    def close(self) -> None:
        self._flush()
