"""Hash tables for the state a range of labeled hours carries: int64 keys to dense values
(`IntTable`: (user, campaign) and (user, domain) pairs) and strings to stable codes
(`StringTable`: users, campaigns, domains). The probing runs in the C module `_hashkeys`,
built with the package; without it (`NATIVE` is False: no C compiler at install) callers keep
their numpy paths, which give the same answers (tests compare the two; spend: see below).

The tables are plain numpy arrays this module owns and grows (doubling, at most 70 % full), so
the C side never allocates them.

The one difference between the two paths: spend since a snapshot is summed per user in time
order by the C walk, and as differences of cumulative sums by the numpy one, so spend features
may differ in their last bits between a build with and one without the extension (counts,
times, codes and labels are the same).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

try:
    from clicklake.platform import _hashkeys
except ImportError:  # built without a C compiler
    _hashkeys = None

NATIVE = _hashkeys is not None
_EMPTY_KEY = np.iinfo(np.int64).min
_MIN_CAPACITY = 1024


def _full(n: int, fill, dtype) -> np.ndarray:
    """An array in Arrow's memory pool (as `tiles.pooled_empty`: a table replaced as it grows
    hands its pages back instead of fragmenting the C heap), filled with `fill`."""
    dt = np.dtype(dtype)
    out = np.frombuffer(pa.allocate_buffer(max(n, 1) * dt.itemsize), dt)[:n]
    out.fill(fill)
    return out


def _capacity(n: int) -> int:
    """The smallest power of two holding `n` entries at most 70 % full (linear probing stays
    short up to there; a half-full table cost the carried pairs ~40 MiB more at peak)."""
    return max(_MIN_CAPACITY, 1 << (max(-(-n * 10 // 7), 1) - 1).bit_length())


def _table(cap: int, strings: bool) -> tuple[np.ndarray, np.ndarray]:
    """An empty table of `cap` slots: int tables hold keys (INT64_MIN: empty) and int32 values
    (dense positions: 32 bits do), string tables codes (-1: empty) and uint64 hashes."""
    if strings:
        return _full(cap, -1, np.int64), _full(cap, 0, np.uint64)
    return _full(cap, _EMPTY_KEY, np.int64), _full(cap, 0, np.int32)


def _room(n: int, a: np.ndarray, b: np.ndarray, strings: bool
          ) -> tuple[np.ndarray, np.ndarray]:
    """The table (a, b) when it holds `n` entries at most 70 % full, else its entries moved to
    a table that does."""
    if _capacity(n) <= len(a):
        return a, b
    new_a, new_b = _table(_capacity(n), strings)
    _hashkeys.rehash(new_a, new_b, a, b, strings)
    return new_a, new_b


class IntTable:
    """int64 keys (any but INT64_MIN) to the values 0, 1, 2, ... in the order they were added."""

    def __init__(self, capacity: int = 0) -> None:
        self._keys, self._vals = _table(_capacity(capacity), strings=False)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key, -1 when absent."""
        keys = np.ascontiguousarray(keys, np.int64)
        out = np.empty(len(keys), np.int64)
        _hashkeys.int_find(self._keys, self._vals, keys, out)
        return out

    def add(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key, absent ones added first (values size, size + 1, ... in the
        order met: a value >= the size before the call marks a key new to the table)."""
        keys = np.ascontiguousarray(keys, np.int64)
        self._reserve(self.size + len(keys))
        out = np.empty(len(keys), np.int64)
        self.size = _hashkeys.int_insert(self._keys, self._vals, keys, out, self.size)
        return out

    def _reserve(self, n: int) -> None:
        self._keys, self._vals = _room(n, self._keys, self._vals, strings=False)


class KeyCounts:
    """A set of int64 keys (>= 0) with aligned int64 counts: `profiles._KeySet` on a hash
    table (the same answers; no sorted arrays to search and splice)."""

    def __init__(self, n_counts: int, capacity: int = 0) -> None:
        self.table = IntTable(capacity)
        self.counts = [_full(max(capacity, _MIN_CAPACITY), 0, np.int64) for _ in range(n_counts)]

    def __len__(self) -> int:
        return len(self.table)

    @classmethod
    def of(cls, keys: np.ndarray, counts: list[np.ndarray]) -> KeyCounts:
        """The set of `keys` (distinct) with their counts."""
        out = cls(len(counts), len(keys))
        at = out.table.add(keys)
        for c, src in zip(out.counts, counts, strict=True):
            c[at] = src
        return out

    def find(self, keys: np.ndarray, ok: np.ndarray | None = None
             ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(whether each key is held (and `ok`), its counts: 0 when not)."""
        at = self.table.find(keys)
        hit = at >= 0
        if ok is not None:
            hit &= ok
        idx = np.where(hit, at, 0)
        return hit, [np.where(hit, c[idx], 0) for c in self.counts]

    def upsert(self, keys: np.ndarray, add: list[np.ndarray]) -> np.ndarray:
        """Add `keys` (distinct), summing `add` into their counts; returns which were new."""
        before = len(self.table)
        at = self.table.add(keys)
        if self.counts and len(self.table) > len(self.counts[0]):
            # by a quarter: an hour adds a few thousand pairs to a million or more
            cap = max(len(self.table), len(self.counts[0]) * 5 // 4)
            grown = []
            for c in self.counts:
                g = _full(cap, 0, np.int64)
                g[:before] = c[:before]
                grown.append(g)
            self.counts = grown
        for c, a in zip(self.counts, add, strict=True):
            c[at] += np.asarray(a, np.int64)
        return at >= before


def _offsets_and_data(words: pa.Array) -> tuple[np.ndarray, object]:
    """An Arrow string array's int32 offsets (its own slice of them) and data buffer."""
    _, offsets, data = words.buffers()
    offs = np.frombuffer(offsets, np.int32, len(words) + 1, words.offset * 4) if offsets \
        else np.zeros(1, np.int32)
    return offs, (data if data is not None else b"")


class StringTable:
    """Strings to stable codes 0, 1, 2, ... in the order first added; `known` holds them (code =
    position)."""

    def __init__(self) -> None:
        self._codes, self._hash = _table(_capacity(0), strings=True)
        self.known = pa.array([], pa.string())

    def __len__(self) -> int:
        return len(self.known)

    def codes(self, words: pa.Array, add: bool = True) -> np.ndarray:
        """The code of each string of `words` (pa.string(), no nulls; repeats allowed): -1 for
        one not known unless `add`, which gives it the next code."""
        words = words.cast(pa.string())  # int32 offsets, as the C side reads them
        n = len(words)
        if words.null_count:
            raise ValueError("StringTable.codes: nulls have no code")
        self._reserve(len(self.known) + n if add else len(self.known))
        koffs, kdata = _offsets_and_data(self.known)
        qoffs, qdata = _offsets_and_data(words)
        out = np.empty(n, np.int64)
        before = len(self.known)
        try:
            added = _hashkeys.str_index(self._codes, self._hash, koffs, kdata, qoffs, qdata,
                                        out, before if add else -1)
            if added:
                # the first occurrence of each new code, in code order (codes go in order met)
                fresh = np.flatnonzero(out >= before)
                _, first = np.unique(out[fresh], return_index=True)
                self.known = pa.concat_arrays([self.known, words.take(pa.array(fresh[first]))])
        except BaseException:
            if len(self.known) == before:
                # Back to the table before the call (a failure in the C call or in the append):
                # its new codes name no string yet. With linear probing no older entry's probe
                # sequence runs through a newer slot.
                self._codes[self._codes >= before] = -1
            raise
        return out

    def _reserve(self, n: int) -> None:
        self._codes, self._hash = _room(n, self._codes, self._hash, strings=True)


def _walk(t: np.ndarray, code: np.ndarray, *more: np.ndarray) -> np.ndarray:
    """The rows a C walk reads, as one int64 array: the time order (a stable sort: timsort, and
    raw hours come nearly time-ordered), codes, times, then `more`."""
    rows = [np.argsort(t, kind="stable"), code, t, *more]
    return np.stack(rows).astype(np.int64).reshape(len(rows), len(t))


def sums_as_of(q_code: np.ndarray, q_t: np.ndarray, e_code: np.ndarray, e_ms: np.ndarray,
               w1: np.ndarray, w2: np.ndarray, ncodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query (code, t; code -1: none): the sums of `w1` and `w2` over the events of its code
    with ms < t, by one walk in time order (C)."""
    n, m = len(q_t), len(e_ms)
    queries = _walk(q_t, q_code)
    events = _walk(e_ms, e_code, w1, w2)
    out = np.zeros((2, n), np.int64)
    _hashkeys.sums_as_of(queries, events, out, n, m, ncodes)
    return out[0], out[1]


def latest_as_of(q_code: np.ndarray, q_t: np.ndarray, e_code: np.ndarray, e_ms: np.ndarray,
                 e_rank: np.ndarray, e_score: np.ndarray, ncodes: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per query (code, t; code -1: none): (score, ms) of its code's latest event with ms < t -
    at equal ms the greatest rank - NaN when none, by one walk in time order (C)."""
    n, m = len(q_t), len(e_ms)
    queries = _walk(q_t, q_code)
    events = _walk(e_ms, e_code, e_rank)
    score, when = np.full(n, np.nan), np.full(n, np.nan)
    _hashkeys.latest_as_of(queries, events, np.ascontiguousarray(e_score, np.float64), score,
                           when, n, m, ncodes)
    return score, when
