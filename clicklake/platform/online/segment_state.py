"""Segment counters online: impressions and clicks per (kind, segment) at three grains.

A 24 h sawtooth window at t (DESIGN §4.3) = the 24 complete hours before floor(t) (hour rows) +
[floor(t), floor_minute(t)) (minute rows) + [floor_minute(t), t) (millisecond rows). Each event
adds to all three, so a read sums at most 24 + 60 rows and one minute of events, however busy
the segment, and still counts exactly the events with ts < t.

A click's country (and every other impression-derived segment: `IMPRESSION_KINDS`, e.g. the
impression's domain) follows `segments.py`: the impression named by its `impression_id` if that
impression lies in the click's hour or the hour before (the earlier copy when both hours hold
one); otherwise the user's latest impression with ts < click ts in those hours (greatest id on
ties); otherwise "unknown". Files arrive in any order, so an impression folded after its click
re-attributes the click (the fold moves the click's count from the old country to the new one).
"""

from __future__ import annotations

from collections import Counter

from clicklake.platform.online.state import Commit, StateStore
from clicklake.platform.segments import KINDS, UNKNOWN, WINDOW_HOURS
from clicklake.platform.timeutil import HOUR_MS, MINUTE_MS

HOUR_TABLE, MINUTE_TABLE, EVENT_TABLE = "seg_h", "seg_m", "seg_e"
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


UNKNOWN_VALUES = [UNKNOWN] * len(IMPRESSION_KINDS)  # a click without an impression


def _segments(campaign: str, values: list[str]):
    it = iter(values)
    for kind in KINDS:
        yield kind, ("all" if kind == "global" else campaign if kind == "campaign" else next(it))


class Deltas:
    """The segment counter changes of one commit, counted per row of each grain (hour, minute,
    millisecond) while the fold runs: a busy segment's hour and minute rows are then written
    once per commit, not once per event."""

    def __init__(self) -> None:
        # grain table -> Counter of (pk, sk) -> impressions / clicks
        self.imp: dict[str, Counter] = {t: Counter() for t in _GRAINS}
        self.clk: dict[str, Counter] = {t: Counter() for t in _GRAINS}

    def add_impressions(self, ts: list[int], campaigns: list[str],
                        values: list[list[str]]) -> None:
        """Impressions at `ts` of `campaigns` with their `impression_values` (bulk: counted in C)."""
        pks = [[_GLOBAL_PK] * len(ts), [_CAMPAIGN + c for c in campaigns]]
        pks += [[prefix + v[i] for v in values] for i, prefix in enumerate(_IMPRESSION_PREFIX)]
        for table, width in _GRAINS.items():
            sk = [t - t % width for t in ts] if width > 1 else ts
            count = self.imp[table].update
            for column in pks:
                count(zip(column, sk))

    def _click(self, pk: str, ts: int, n: int) -> None:
        for table, width in _GRAINS.items():
            self.clk[table][(pk, ts - ts % width)] += n

    def add_click(self, ts: int, campaign: str, values: list[str]) -> None:
        for kind, segment in _segments(campaign, values):
            self._click(segment_pk(kind, segment), ts, 1)

    def move_click(self, ts: int, old: list[str], new: list[str]) -> None:
        for kind, a, b in zip(IMPRESSION_KINDS, old, new, strict=True):
            if a != b:
                self._click(segment_pk(kind, a), ts, -1)
                self._click(segment_pk(kind, b), ts, 1)

    def write(self, commit: Commit) -> None:
        """Add the changes to `commit`'s counter rows."""
        for table in _GRAINS:
            out = commit.counters.setdefault(table, {})
            if not out:
                out.update({k: [n, 0] for k, n in self.imp[table].items()})
            else:
                for k, n in self.imp[table].items():
                    out.setdefault(k, [0, 0])[0] += n
            for k, n in self.clk[table].items():
                out.setdefault(k, [0, 0])[1] += n


_GRAINS = {HOUR_TABLE: HOUR_MS, MINUTE_TABLE: MINUTE_MS, EVENT_TABLE: 1}
_GLOBAL_PK = segment_pk("global", "all")
_CAMPAIGN = segment_pk("campaign", "")
_IMPRESSION_PREFIX = tuple(segment_pk(kind, "") for kind in IMPRESSION_KINDS)


def window_24h(state: StateStore, kind: str, segment: str, t: int) -> tuple[int, int]:
    """(impressions, clicks) of the segment with floor(t) - 24 h <= ts < t."""
    pk = segment_pk(kind, segment)
    f, m = t - t % HOUR_MS, t - t % MINUTE_MS
    hi, hc = state.sum_counters(HOUR_TABLE, pk, f - WINDOW_HOURS * HOUR_MS, f)
    mi, mc = state.sum_counters(MINUTE_TABLE, pk, f, m) if m > f else (0, 0)
    ei, ec = state.sum_counters(EVENT_TABLE, pk, m, t)
    return hi + mi + ei, hc + mc + ec


def windows_24h(state: StateStore, pairs: list[tuple[str, str]], t: int) -> list[tuple[int, int]]:
    """`window_24h` of several (kind, segment) pairs, in one `StateStore.sum_ranges` call (one
    SQL statement on SQLite)."""
    f, m = t - t % HOUR_MS, t - t % MINUTE_MS
    ranges = []
    for kind, segment in pairs:
        pk = segment_pk(kind, segment)
        ranges += [(HOUR_TABLE, pk, f - WINDOW_HOURS * HOUR_MS, f), (MINUTE_TABLE, pk, f, m),
                   (EVENT_TABLE, pk, m, t)]
    sums = state.sum_ranges(ranges)
    return [(sums[i][0] + sums[i + 1][0] + sums[i + 2][0], sums[i][1] + sums[i + 1][1]
             + sums[i + 2][1]) for i in range(0, len(sums), 3)]


__all__ = ["IMPRESSION_KINDS", "UNKNOWN", "Deltas", "impression_values", "window_24h"]
