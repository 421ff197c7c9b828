"""Every user's lifetime impressions and clicks, carried hour by hour straight from raw events.

The two counters of the minimal point-in-time task (DESIGN §4.1: events with ts < t), for every
impression of a run of consecutive raw hours, without the lookup table: the state as of an hour
boundary is one integer pair per interned user, and the next hour's state is this one plus the
hour's raw events - exactly what the snapshot chain folds, since raw is where both start from.
Inside an hour, an impression counts its user's events of the hour that are strictly earlier
(events at the same instant are not history).

`LookupTable.as_of` answers the same for any instants, reading the snapshot before each hour;
this is for a range read in order (a backfill, a benchmark against SQL over raw), where the
snapshots are then not needed at all, or only the one before the range's first hour.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from clicklake.platform.tiles import Interner, ts_ms
from clicklake.platform.timeutil import HOUR_MS, iso


class LifetimeCounts:
    """Lifetime (impressions, clicks) of every user as of `as_of` (an hour boundary).

    Built empty (the caller knows no event came before `as_of`: the start of the lake's history)
    or from a user profile snapshot (`from_snapshot`), then advanced by `count_hour`, one raw
    hour after another."""

    def __init__(self, as_of_ms: int, users: Interner | None = None):
        if as_of_ms % HOUR_MS:
            raise ValueError(f"lifetime counts are carried from an hour boundary, not {as_of_ms}")
        self.as_of = int(as_of_ms)
        self.users = users if users is not None else Interner()
        self.impressions = np.zeros(0, np.int64)
        self.clicks = np.zeros(0, np.int64)

    @classmethod
    def from_snapshot(cls, snapshot: pa.Table, as_of_ms: int) -> LifetimeCounts:
        """The counts of a user profile snapshot as of `as_of_ms` (columns user_id, impressions
        and clicks at least)."""
        state = cls(as_of_ms)
        code = state.users.codes(snapshot["user_id"])
        state._grow()
        state.impressions[code] = snapshot["impressions"].to_numpy()
        state.clicks[code] = snapshot["clicks"].to_numpy()
        return state

    def _grow(self) -> None:
        n, have = len(self.users), len(self.impressions)
        if n > have:
            extra = n - have + max(n // 2, 1024)  # amortised: new users arrive every hour
            self.impressions = np.concatenate([self.impressions, np.zeros(extra, np.int64)])
            self.clicks = np.concatenate([self.clicks, np.zeros(extra, np.int64)])

    def _codes(self, table: pa.Table, stream: str) -> tuple[np.ndarray, np.ndarray]:
        ms = ts_ms(table["ts"])
        lo, hi = self.as_of, self.as_of + HOUR_MS
        if len(ms) and (int(ms.min()) < lo or int(ms.max()) >= hi):
            bad = ms[(ms < lo) | (ms >= hi)][0]
            raise ValueError(f"{stream} at {iso(int(bad))} lie outside the hour the counts are "
                             f"carried to, [{iso(lo)}, {iso(hi)}): hours must come in order")
        code = self.users.codes(table["user_id"])
        if len(code) and int(code.min()) < 0:
            raise ValueError(f"{stream} without a user_id: raw events always have one")
        return code, ms

    def count_hour(self, impressions: pa.Table, clicks: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """For each row of `impressions`, its user's impressions and clicks with ts < its ts, in
        row order; then the state moves on one hour. `impressions` and `clicks` are the whole raw
        hour starting at `as_of` (columns ts and user_id at least): every event of the hour
        counts for the later ones and for the hours after."""
        ic, ims = self._codes(impressions, "impressions")
        cc, cms = self._codes(clicks, "clicks")
        self._grow()
        n_i = len(ic)
        code = np.concatenate([ic, cc])
        # (user, instant) as one sortable key. The order within a tie does not matter (every
        # row of a tie group sees the group's start), so the sort need not be stable.
        key = code * HOUR_MS + (np.concatenate([ims, cms]) - self.as_of)
        order = np.argsort(key)
        k = key[order]
        pos = np.arange(len(k))
        if len(k):
            new_key = np.empty(len(k), bool)
            new_key[0] = True
            np.not_equal(k[1:], k[:-1], out=new_key[1:])
            key_start = np.maximum.accumulate(np.where(new_key, pos, 0))
            u = k // HOUR_MS
            new_user = np.empty(len(k), bool)
            new_user[0] = True
            np.not_equal(u[1:], u[:-1], out=new_user[1:])
            user_start = np.maximum.accumulate(np.where(new_user, pos, 0))
        else:
            key_start = user_start = pos
        is_imp = order < n_i
        imp_through = np.zeros(len(k) + 1, np.int64)  # impressions among the first p events
        np.cumsum(is_imp, out=imp_through[1:])
        imp_before = imp_through[key_start] - imp_through[user_start]
        clk_before = (key_start - user_start) - imp_before
        rows = order[is_imp]  # impression row of each impression event, in sorted order
        n_imp, n_clk = np.empty(n_i, np.int64), np.empty(n_i, np.int64)
        n_imp[rows] = imp_before[is_imp] + self.impressions[ic[rows]]
        n_clk[rows] = clk_before[is_imp] + self.clicks[ic[rows]]
        self._advance(ic, cc)
        return n_imp, n_clk

    def skip_hour(self, impressions: pa.Table, clicks: pa.Table) -> None:
        """Move on one hour, counting the hour's events without answering for them."""
        ic, _ = self._codes(impressions, "impressions")
        cc, _ = self._codes(clicks, "clicks")
        self._grow()
        self._advance(ic, cc)

    def _advance(self, impression_codes: np.ndarray, click_codes: np.ndarray) -> None:
        m = len(self.impressions)
        self.impressions += np.bincount(impression_codes, minlength=m)
        self.clicks += np.bincount(click_codes, minlength=m)
        self.as_of += HOUR_MS
