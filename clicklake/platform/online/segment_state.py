"""Segment counters online: impressions and clicks per (kind, segment) at three grains.

A 24 h sawtooth window at t (DESIGN §4.3) = the 24 complete hours before floor(t) (hour rows) +
[floor(t), floor_minute(t)) (minute rows) + [floor_minute(t), t) (millisecond rows). Each event
adds to all three, so a read sums at most 24 + 60 rows and one minute of events, however busy
the segment, and still counts exactly the events with ts < t.

A click's country follows `segments.py`: the impression named by its `impression_id` if that
impression lies in the click's hour or the hour before (the earlier copy when both hours hold
one); otherwise the user's latest impression with ts < click ts in those hours (greatest id on
ties); otherwise "unknown". Files arrive in any order, so an impression folded after its click
re-attributes the click (the fold moves the click's count from the old country to the new one).
"""

from __future__ import annotations

from clicklake.platform.online.state import Commit, StateStore
from clicklake.platform.segments import UNKNOWN, WINDOW_HOURS
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


def add_impression(commit: Commit, ts: int, campaign: str, country: str) -> None:
    for kind, seg in (("global", "all"), ("country", country), ("campaign", campaign)):
        add_event(commit, kind, seg, ts, 1, 0)


def add_click(commit: Commit, ts: int, campaign: str, country: str) -> None:
    for kind, seg in (("global", "all"), ("country", country), ("campaign", campaign)):
        add_event(commit, kind, seg, ts, 0, 1)


def move_click(commit: Commit, ts: int, old_country: str, new_country: str) -> None:
    add_event(commit, "country", old_country, ts, 0, -1)
    add_event(commit, "country", new_country, ts, 0, 1)


def window_24h(state: StateStore, kind: str, segment: str, t: int) -> tuple[int, int]:
    """(impressions, clicks) of the segment with floor(t) - 24 h <= ts < t."""
    pk = segment_pk(kind, segment)
    f, m = t - t % HOUR_MS, t - t % MINUTE_MS
    hi, hc = state.sum_counters(HOUR_TABLE, pk, f - WINDOW_HOURS * HOUR_MS, f)
    mi, mc = state.sum_counters(MINUTE_TABLE, pk, f, m) if m > f else (0, 0)
    ei, ec = state.sum_counters(EVENT_TABLE, pk, m, t)
    return hi + mi + ei, hc + mc + ec


__all__ = ["UNKNOWN", "add_click", "add_impression", "move_click", "window_24h"]
