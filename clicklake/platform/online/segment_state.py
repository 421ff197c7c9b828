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

from clicklake.platform.online.state import Commit, StateStore
from clicklake.platform.segments import KINDS, UNKNOWN, WINDOW_HOURS
from clicklake.platform.timeutil import HOUR_MS, MINUTE_MS

HOUR_TABLE, MINUTE_TABLE, EVENT_TABLE = "seg_h", "seg_m", "seg_e"
_SEP = "\x1f"  # (kind, segment) as one key; the unit separator never occurs in ids


def segment_pk(kind: str, segment: str) -> str:
    return f"{kind}{_SEP}{segment}"


def add_event(commit: Commit, kind: str, segment: str, ts: int, d_imp: int, d_clk: int) -> None:
    pk = segment_pk(kind, segment)
    commit.add(HOUR_TABLE, pk, ts - ts % HOUR_MS, d_imp, d_clk)
    commit.add(MINUTE_TABLE, pk, ts - ts % MINUTE_MS, d_imp, d_clk)
    commit.add(EVENT_TABLE, pk, ts, d_imp, d_clk)


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


def add_impression(commit: Commit, ts: int, campaign: str, values: list[str]) -> None:
    for kind, seg in _segments(campaign, values):
        add_event(commit, kind, seg, ts, 1, 0)


def add_click(commit: Commit, ts: int, campaign: str, values: list[str]) -> None:
    for kind, seg in _segments(campaign, values):
        add_event(commit, kind, seg, ts, 0, 1)


def move_click(commit: Commit, ts: int, old: list[str], new: list[str]) -> None:
    for kind, a, b in zip(IMPRESSION_KINDS, old, new, strict=True):
        if a != b:
            add_event(commit, kind, a, ts, 0, -1)
            add_event(commit, kind, b, ts, 0, 1)


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


__all__ = ["IMPRESSION_KINDS", "UNKNOWN", "add_click", "add_impression", "impression_values",
           "move_click", "window_24h"]
