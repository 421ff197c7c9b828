"""Segment counters online: impressions and clicks per (kind, segment) per hour and per minute.

A 24 h sawtooth window at t (DESIGN §4.3) = the 24 complete hours before floor(t) (hour rows) +
[floor(t), floor_minute(t)) (minute rows) + [floor_minute(t), t) (the events of t's minute that
are before t). A minute row therefore also keeps its events: an impression log and a click log,
text of `OFFSET,` entries (the event's millisecond within the minute, 5 digits; `-OFFSET,` takes
back a click that moved to another segment), appended to by each commit. A read sums at most
24 + 60 rows and scans one minute of one segment's log (a C-level split and compare, ~25 ns an
event), however busy the segment, and counts exactly the events with ts < t. Each event touches
one hour row and one minute row per segment (a millisecond row per event and segment cost
more than half of a fold's rows).

A click's country (and every other impression-derived segment: `IMPRESSION_KINDS`, e.g. the
impression's domain) follows `segments.py`: the impression named by its `impression_id` if that
impression lies in the click's hour or the hour before (the earlier copy when both hours hold
one); otherwise the user's latest impression with ts < click ts in those hours (greatest id on
ties); otherwise "unknown". Files arrive in any order, so an impression folded after its click
re-attributes the click (the fold moves the click's count from the old country to the new one).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence

import numpy as np

from clicklake.platform.online.state import Commit, StateStore
from clicklake.platform.segments import KINDS, UNKNOWN, WINDOW_HOURS
from clicklake.platform.timeutil import HOUR_MS, MINUTE_MS

HOUR_TABLE, MINUTE_TABLE = "seg_h", "seg_m"
_SEP = "\x1f"  # (kind, segment) as one key; the unit separator never occurs in ids


def segment_pk(kind: str, segment: str) -> str:
    return f"{kind}{_SEP}{segment}"


# Kinds whose segment a click takes from "its" impression (the attribution rule above), in the
# order their values are stored on a click; the others are the event's own (global, campaign).
IMPRESSION_KINDS = tuple(k for k in KINDS if k not in ("global", "campaign"))
_IMPRESSION_FIELD = {"country": 0, "domain": 1}  # index in `impression_values`
_unknown = [k for k in IMPRESSION_KINDS if k not in _IMPRESSION_FIELD]
if _unknown:  # a new kind needs its rule here before the online store can count it
    raise NotImplementedError(f"online segments do not know the kinds {_unknown}")


def impression_values(country: str, domain: str | None) -> list[str]:
    """The impression-derived segments of an impression, in `IMPRESSION_KINDS` order."""
    own = (country, UNKNOWN if domain is None else domain)
    return [own[_IMPRESSION_FIELD[k]] for k in IMPRESSION_KINDS]


def impression_values_of(countries: list[str], domains: list[str | None]) -> list[list[str]]:
    """`impression_values` of many impressions (one list comprehension for the usual kinds)."""
    if IMPRESSION_KINDS == ("country", "domain"):
        return [[c, UNKNOWN if d is None else d] for c, d in zip(countries, domains, strict=True)]
    return [impression_values(c, d) for c, d in zip(countries, domains, strict=True)]


UNKNOWN_VALUES = [UNKNOWN] * len(IMPRESSION_KINDS)  # a click without an impression


def _segments(campaign: str, values: list[str]):
    it = iter(values)
    for kind in KINDS:
        yield kind, ("all" if kind == "global" else campaign if kind == "campaign" else next(it))


class Deltas:
    """The segment counter changes of one commit: impressions and clicks per hour row (counted
    in C), each impression's log entry per minute row, clicks per (segment, event millisecond);
    `write` turns them into the commit's counter rows, a busy segment's rows once per commit,
    not once per event. A log is joined once (appending entry by entry copied it each time:
    quadratic in a busy minute)."""

    def __init__(self) -> None:
        self.hour_imp: Counter = Counter()  # (pk, hour) -> impressions
        self.hour_clk: Counter = Counter()
        self.min_imp: dict[tuple[str, int], list[str]] = {}  # (pk, minute) -> log entries
        self.ev_clk: Counter = Counter()  # (pk, ts) -> clicks (negative: moved away)

    def add_impressions(self, ts: Sequence[int], campaigns: Sequence[str],
                        values: list[list[str]]) -> None:
        """Impressions at `ts` of `campaigns` with their `impression_values`."""
        # One pk object per segment: built and hashed once, not once per row and lookup.
        pks = [[_GLOBAL_PK] * len(ts), _pks(_CAMPAIGN, campaigns)]
        pks += [_pks(prefix, [v[i] for v in values])
                for i, prefix in enumerate(_IMPRESSION_PREFIX)]
        hours = [t - t % HOUR_MS for t in ts]
        offsets = [t % MINUTE_MS for t in ts]
        minutes = [t - off for t, off in zip(ts, offsets, strict=True)]
        known = _ENTRIES.get
        entries = [known(off) or _entry(off) for off in offsets]
        logs = self.min_imp
        for column in pks:
            self.hour_imp.update(zip(column, hours))
            for key, e in zip(zip(column, minutes), entries):  # the hot loop: once per row
                log = logs.get(key)
                if log is None:
                    logs[key] = [e]
                else:
                    log.append(e)

    def _click(self, pk: str, ts: int, n: int) -> None:
        self.hour_clk[(pk, ts - ts % HOUR_MS)] += n
        self.ev_clk[(pk, ts)] += n

    def add_click(self, ts: int, campaign: str, values: list[str]) -> None:
        for kind, segment in _segments(campaign, values):
            self._click(segment_pk(kind, segment), ts, 1)

    def move_click(self, ts: int, old: list[str], new: list[str]) -> None:
        for kind, a, b in zip(IMPRESSION_KINDS, old, new, strict=True):
            if a != b:
                self._click(segment_pk(kind, a), ts, -1)
                self._click(segment_pk(kind, b), ts, 1)

    def write(self, commit: Commit) -> None:
        """Add the changes to `commit`'s counter rows (hour rows; minute rows with their logs)."""
        hours = commit.counters.setdefault(HOUR_TABLE, {})
        for k, n in self.hour_imp.items():
            cell = hours.get(k)
            if cell is None:
                hours[k] = [n, 0, "", ""]
            else:
                cell[0] += n
        for k, n in self.hour_clk.items():
            cell = hours.get(k)
            if cell is None:
                hours[k] = [0, n, "", ""]
            else:
                cell[1] += n
        minutes = commit.counters.setdefault(MINUTE_TABLE, {})
        for k, log in self.min_imp.items():
            cell = minutes.get(k)
            if cell is None:
                minutes[k] = [len(log), 0, "".join(log), ""]
            else:
                cell[0] += len(log)
                cell[2] += "".join(log)
        clicks: dict[tuple[str, int], list[str]] = {}
        for (pk, ts), n in self.ev_clk.items():
            if not n:
                continue
            off = ts % MINUTE_MS
            key = (pk, ts - off)
            cell = minutes.get(key)
            if cell is None:
                cell = minutes[key] = [0, 0, "", ""]
            cell[1] += n
            e = _entry(off)
            clicks.setdefault(key, []).append(e * n if n > 0 else ("-" + e) * -n)
        for key, log in clicks.items():
            minutes[key][3] += "".join(log)


_PKS: dict[str, dict[str, str]] = {}  # kind prefix -> segment -> its pk (one object)


def _pks(prefix: str, segments: list[str]) -> list[str]:
    known = _PKS.setdefault(prefix, {})
    if len(known) >= 20_000:  # bounded, whatever the input (domains are free text: ~7 MB)
        known.clear()
    get = known.get
    return [get(s) or known.setdefault(s, prefix + s) for s in segments]


_ENTRIES: dict[int, str] = {}  # millisecond in a minute -> its `OFFSET,` log entry


def _entry(off: int) -> str:
    e = _ENTRIES.get(off)
    if e is None:
        e = _ENTRIES[off] = f"{off:05d},"
    return e


_GLOBAL_PK = segment_pk("global", "all")
_CAMPAIGN = segment_pk("campaign", "")
_IMPRESSION_PREFIX = tuple(segment_pk(kind, "") for kind in IMPRESSION_KINDS)


# From this many characters (1,000 entries), a log without take-backs is compared as one
# array of 6-byte entries: the `global` segment's log holds every event of the minute, and a
# split per read cost ~15 ms at 2 k events/s (190 ms at 16 k/s), on every /predict.
_VECTOR_CHARS = 6_000


def count_before(log: str, offset: int) -> int:
    """Net entries of a minute log whose millisecond is before `offset` (0..60000)."""
    if not log:
        return 0
    lim = f"{offset:05d}"
    if "-" not in log:
        if len(log) >= _VECTOR_CHARS and not len(log) % 6:  # each entry `OFFSET,`: 6 chars
            entries = np.frombuffer(log.encode("ascii"), dtype="S6")
            return int(np.count_nonzero(entries < (lim + ",").encode()))
        return sum(map(lim.__gt__, log.split(","))) - 1  # the last token is "", < lim
    toks = log.split(",")
    n = 0
    for tok in toks[:-1]:
        if tok[0] == "-":
            n -= tok[1:] < lim
        else:
            n += tok < lim
    return n


def _rows(state: StateStore, pks: list[str], t: int) -> list[tuple[int, int, tuple | None]]:
    """Per segment: (impressions, clicks) of the window before t's minute, and the minute's
    row (None when it has none), in one `StateStore.sum_ranges_and_cells` call."""
    f, m = t - t % HOUR_MS, t - t % MINUTE_MS
    ranges, cells = [], []
    for pk in pks:
        ranges += [(HOUR_TABLE, pk, f - WINDOW_HOURS * HOUR_MS, f), (MINUTE_TABLE, pk, f, m)]
        cells.append((MINUTE_TABLE, pk, m))
    sums, rows = state.sum_ranges_and_cells(ranges, cells)
    return [(sums[2 * i][0] + sums[2 * i + 1][0], sums[2 * i][1] + sums[2 * i + 1][1], row)
            for i, row in enumerate(rows)]


def _windows(state: StateStore, pks: list[str], t: int) -> list[tuple[int, int]]:
    m = t - t % MINUTE_MS
    out = []
    for imps, clks, row in _rows(state, pks, t):
        if row is not None and t > m:
            imps += count_before(row[2], t - m)
            clks += count_before(row[3], t - m)
        out.append((imps, clks))
    return out


class SegmentWindows:
    """`windows_24h` of one state for a reader that asks again and again (the API): each
    (segment, minute) read keeps its sums before the minute and its minute's logs, sorted, until
    a write to the state completes (`StateStore.read_version`; while one is under way, or on a
    backend that cannot say, it reads every time). A read in the same minute then takes a
    bisection per log, however busy the segment: the `global` segment's log holds every event
    of the minute, and counting it cost every /predict 1.4 ms at 2 k events/s and 13 ms at
    16 k/s; the next fold's commit makes the first read after it pay that once. Threads share one: the rows are read outside its lock
    (DynamoDB's reads run on several threads), counted inside."""

    MAX_KEPT = 4096  # (segment, minute) entries: domains are free text

    def __init__(self, state: StateStore) -> None:
        self.state = state
        self._version: object | None = None
        self._kept: dict[tuple[str, int], tuple[int, int, _SortedLog, _SortedLog]] = {}
        self._lock = threading.Lock()  # the kept rows, and a log sorted by one thread at a time

    def windows_24h(self, pairs: list[tuple[str, str]], t: int) -> list[tuple[int, int]]:
        version = self.state.read_version()
        if version is None:
            return windows_24h(self.state, pairs, t)
        m = t - t % MINUTE_MS
        pks = [segment_pk(kind, segment) for kind, segment in pairs]
        with self._lock:
            if version != self._version:
                self._kept, self._version = {}, version
            found = {pk: self._kept.get((pk, m)) for pk in pks}
        missing = [pk for pk, entry in found.items() if entry is None]
        if missing:  # read outside the lock: other threads' reads (DynamoDB's) go on meanwhile
            for pk, (imps, clks, row) in zip(missing, _rows(self.state, missing, t),
                                             strict=True):
                found[pk] = (imps, clks, _SortedLog(row[2] if row else ""),
                             _SortedLog(row[3] if row else ""))
        with self._lock:  # a log is sorted by one thread at a time
            if missing and self._version == version:  # (not if a newer one came meanwhile)
                if len(self._kept) + len(missing) > self.MAX_KEPT:
                    self._kept.clear()
                for pk in missing:
                    found[pk] = self._kept.setdefault((pk, m), found[pk])
            out = []
            for pk in pks:
                imps, clks, imp_log, clk_log = found[pk]
                out.append((imps + imp_log.before(t - m), clks + clk_log.before(t - m)))
        return out


class _SortedLog:
    """A minute log, counted by `count_before` on its first read and sorted for bisection from
    its second on (a log read once costs no sort): the entries taken back (`-OFFSET,`) apart;
    a long log without any as one array of integers."""

    __slots__ = ("added", "array", "log", "scanned", "taken")

    def __init__(self, log: str) -> None:
        self.log: str | None = log  # until sorted
        self.scanned = False
        self.array = None
        self.added: list[int] = []
        self.taken: list[int] = []

    def before(self, offset: int) -> int:
        """Net entries before millisecond `offset`, as `count_before(log, offset)`."""
        log = self.log
        if log is not None:
            if not self.scanned:  # the first read: a scan (a log read once costs no sort)
                self.scanned = True
                return count_before(log, offset)
            self.log = None
            self._sort(log)
        if self.array is not None:
            return int(self.array.searchsorted(np.int32(offset)))  # a Python int: a cast copy
        return bisect_left(self.added, offset) - bisect_left(self.taken, offset)

    def _sort(self, log: str) -> None:
        if "-" not in log and len(log) >= _VECTOR_CHARS and not len(log) % 6:
            d = np.frombuffer(log.encode("ascii"), dtype=np.uint8).reshape(-1, 6)
            # column by column, each made int32 first (numpy 1.x would keep a uint8 column
            # times a small scalar in 16 bits): 5x faster than a matrix product of the digits
            ms = d[:, 0].astype(np.int32) * 10_000
            for column, place in ((1, 1_000), (2, 100), (3, 10), (4, 1)):
                ms += d[:, column].astype(np.int32) * place
            self.array = np.sort(ms - 48 * 11_111)  # the digits' ASCII zeros
            return
        toks = log.split(",")[:-1]
        self.added = sorted(int(tok) for tok in toks if tok[0] != "-")
        self.taken = sorted(int(tok[1:]) for tok in toks if tok[0] == "-")


def window_24h(state: StateStore, kind: str, segment: str, t: int) -> tuple[int, int]:
    """(impressions, clicks) of the segment with floor(t) - 24 h <= ts < t."""
    return _windows(state, [segment_pk(kind, segment)], t)[0]


def windows_24h(state: StateStore, pairs: list[tuple[str, str]], t: int) -> list[tuple[int, int]]:
    """`window_24h` of several (kind, segment) pairs, in one `StateStore.sum_ranges_and_cells`
    call (one SQL statement on SQLite)."""
    return _windows(state, [segment_pk(kind, segment) for kind, segment in pairs], t)


__all__ = ["IMPRESSION_KINDS", "UNKNOWN", "Deltas", "SegmentWindows", "impression_values",
           "window_24h"]
