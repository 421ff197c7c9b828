"""Firehose-style delivery: records buffered by arrival time and cut into landing objects.

Like a Firehose delivery stream, each stream's records are buffered for a fixed interval (or
until the buffer passes a size limit) and written as one gzip NDJSON object whose key carries the
arrival time of the object's first record. So every record in an object arrived at or after the
key time and before the key time of the stream's next object, and records keep arrival order.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Executor, Future

import numpy as np

from clicklake.platform import landing
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import MINUTE_MS

BUFFER_INTERVAL_MS = 5 * MINUTE_MS
BUFFER_BYTES = 5 * 1024 * 1024
MAX_QUEUED_WRITES = 4


class FirehoseWriter:
    """Collects (arrival ms, line) pairs of one stream and writes them as landing objects."""

    def __init__(
        self,
        store: Store,
        stream: str,
        rng: np.random.Generator,
        prefix: str = landing.DEFAULT_PREFIX,
        interval_ms: int = BUFFER_INTERVAL_MS,
        max_bytes: int = BUFFER_BYTES,
        executor: Executor | None = None,
    ):
        self.store, self.stream, self.rng, self.prefix = store, stream, rng, prefix
        self.interval_ms, self.max_bytes, self.executor = interval_ms, max_bytes, executor
        self._arrivals: list[np.ndarray] = []
        self._lines: list[list[bytes]] = []
        self._pending: list[Future] = []
        self.keys: list[str] = []
        self.lines_written = 0

    def add(self, arrivals: np.ndarray, lines: list[bytes]) -> None:
        if len(arrivals) != len(lines):
            raise ValueError("one arrival time per line")
        if len(lines):
            self._arrivals.append(np.asarray(arrivals, dtype=np.int64))
            self._lines.append(lines)

    def flush(self, before_ms: int | None = None) -> None:
        """Write every buffer interval that ends at or before `before_ms` (all when None).

        The caller promises no later `add` has an arrival before `before_ms`.
        """
        if not self._arrivals:
            return
        arrivals = np.concatenate(self._arrivals)
        lines = [line for chunk in self._lines for line in chunk]
        order = np.argsort(arrivals, kind="stable")  # stable: equal arrivals keep insert order
        arrivals = arrivals[order]
        if before_ms is None:
            cut = len(arrivals)
        else:
            last_interval_end = before_ms - before_ms % self.interval_ms
            cut = int(np.searchsorted(arrivals, last_interval_end, side="left"))
        ready = order[:cut]
        rest = order[cut:]
        self._arrivals = [arrivals[cut:]] if len(rest) else []
        self._lines = [[lines[i] for i in rest]] if len(rest) else []
        if cut:
            self._write([lines[i] for i in ready], arrivals[:cut])

    def _write(self, lines: list[bytes], arrivals: np.ndarray) -> None:
        interval = arrivals // self.interval_ms
        starts = np.flatnonzero(np.r_[True, interval[1:] != interval[:-1]])
        ends = np.r_[starts[1:], len(lines)]
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            for a, b in self._size_cuts(lines, arrivals, s, e):
                self._emit(int(arrivals[a]), lines[a:b])

    def _size_cuts(self, lines: list[bytes], arrivals: np.ndarray, s: int, e: int):
        """Split [s, e) where the buffer passes max_bytes, but only between two seconds, so the
        next object's key time (whole seconds) is after every record of this one."""
        a, size = s, 0
        for i in range(s, e):
            if size >= self.max_bytes and i > a and arrivals[i] // 1000 > arrivals[i - 1] // 1000:
                yield a, i
                a, size = i, 0
            size += len(lines[i]) + 1
        yield a, e

    def _emit(self, first_arrival_ms: int, lines: list[bytes]) -> None:
        file_uuid = str(uuid.UUID(bytes=self.rng.bytes(16), version=4))
        key_ms = first_arrival_ms - first_arrival_ms % 1000
        key = landing.firehose_key(self.stream, key_ms, file_uuid, self.prefix)
        self.keys.append(key)
        self.lines_written += len(lines)
        if self.executor is None:
            landing.write_file(self.store, key, lines)
        else:
            # A bounded queue keeps memory flat when compression is slower than generation.
            while len(self._pending) >= MAX_QUEUED_WRITES:
                self._pending.pop(0).result()
            self._pending.append(self.executor.submit(landing.write_file, self.store, key, lines))
            self._reap(wait=False)

    def _reap(self, wait: bool) -> None:
        still = []
        for f in self._pending:
            if wait or f.done():
                f.result()  # re-raises a failed write here
            else:
                still.append(f)
        self._pending = still

    def close(self) -> None:
        """Write everything still buffered and wait for the writes."""
        self.flush(None)
        self._reap(wait=True)

