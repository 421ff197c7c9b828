"""The click label (DESIGN §4.2): did a click for this impression come within the window after it?

`label = 1` iff a click for the impression has `t < click.ts <= t + window` (15 minutes by
default). A click names its impression by `impression_id`; a click without one is attributed to
the latest impression of the same user and campaign strictly before the click. A click at or
before its impression never labels it. A click id counts once per event hour, as the raw layer
keeps it: copies stamped in one hour are one click, while copies stamped in different hours are
two events to the raw layer (and to the features, which count both), so labels see both too.

Labeling hour H therefore needs the impressions of H (to label), the clicks up to
`end(H) + window`, and the impressions up to `end(H) + window` (a click without an id might belong
to a later impression than any in H).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.platform.tiles import lex_order
from clicklake.platform.timeutil import HOUR_MS

DEFAULT_LABEL_WINDOW_MS = 15 * 60_000


def _ms(col) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False)


def _str(col) -> pa.Array:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.cast(pa.string())


def _rank(values: pa.Array) -> np.ndarray:
    """Position of each value in string order (ties in input order)."""
    order = pc.sort_indices(values).to_numpy()
    rank = np.empty(len(values), np.int64)
    rank[order] = np.arange(len(values))
    return rank


def _codes(values: pa.Array) -> np.ndarray:
    return pc.dictionary_encode(values).indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _attribute(impressions: pa.Table, clicks: pa.Table) -> tuple[pa.Array, np.ndarray, pa.Array]:
    """(click_id, click_ts, impression_id) of each distinct click, named clicks first, each part
    in (ts, click_id) order; impression_id is null when a click cannot be attributed."""
    c_id, c_ts = _str(clicks["click_id"]), _ms(clicks["ts"])
    n = len(c_ts)
    # Distinct clicks, as the raw layer keeps them: the earliest copy (then the smallest
    # position) of each (click id, event hour).
    order = lex_order(c_ts, _rank(c_id))
    hour = c_ts[order] // HOUR_MS
    hour = hour - hour.min() if n else hour
    distinct = _codes(c_id.take(pa.array(order))) * (int(hour.max(initial=0)) + 1) + hour
    _, first = np.unique(distinct, return_index=True)
    keep = order[np.sort(first)]
    c_imp = _str(clicks["impression_id"]).take(pa.array(keep))
    c_id, c_ts = c_id.take(pa.array(keep)), c_ts[keep]
    named = pc.is_valid(c_imp).to_numpy(zero_copy_only=False)
    anon = np.flatnonzero(~named)
    named = np.flatnonzero(named)
    target = c_imp.take(pa.array(named))
    if len(anon):
        a_take = pa.array(keep[anon])
        # Only the impressions of users with a click to attribute can be its target.
        sub = pc.is_in(_str(impressions["user_id"]), value_set=_str(clicks["user_id"]).take(
            a_take)).to_numpy(zero_copy_only=False)
        impressions = impressions.filter(pa.array(sub))
        ni = impressions.num_rows
        users = pa.concat_arrays([_str(impressions["user_id"]),
                                  _str(clicks["user_id"]).take(a_take)])
        camps = pa.concat_arrays([_str(impressions["campaign_id"]),
                                  _str(clicks["campaign_id"]).take(a_take)])
        u, c = _codes(users), _codes(camps)
        _, pair = np.unique(u * (int(c.max(initial=0)) + 1) + c, return_inverse=True)
        i_pair, a_pair = pair[:ni], pair[ni:]
        i_ts, a_ts = _ms(impressions["ts"]), c_ts[anon]
        i_ids = _str(impressions["impression_id"])
        # (pair, ts, id) order: the row before the first at (pair, click ts) is the latest
        # impression strictly before the click, the greatest id among equal times.
        i_order = lex_order(i_pair, i_ts, _rank(i_ids)) if ni else np.zeros(0, np.int64)
        base = int(min(i_ts.min(initial=a_ts.min()), a_ts.min()))
        span = int(max(i_ts.max(initial=a_ts.max()), a_ts.max())) - base + 1
        key = i_pair[i_order] * span + (i_ts[i_order] - base)
        at = np.searchsorted(key, a_pair * span + (a_ts - base), side="left") - 1
        ok = at >= 0
        ok[ok] &= i_pair[i_order[at[ok]]] == a_pair[ok]
        if ni:
            idx = np.where(ok, i_order[np.maximum(at, 0)], 0)
            matched = i_ids.take(pa.array(idx, mask=~ok))
        else:
            matched = pa.nulls(len(anon), pa.string())
        target = pa.concat_arrays([target, matched])
    rows = np.concatenate([named, anon])
    return c_id.take(pa.array(rows)), c_ts[rows], target


def label_impressions(
    impressions: pa.Table,
    clicks: pa.Table,
    window_ms: int = DEFAULT_LABEL_WINDOW_MS,
    context_impressions: pa.Table | None = None,
) -> pa.Table:
    """`impressions` plus `label` (int8) and `first_click_delay_ms` (null without a labeling click).

    `context_impressions` are extra impressions (e.g. of the next hour) that clicks without an id
    may be attributed to; they are not labeled themselves.
    """
    cols = ["impression_id", "ts", "user_id", "campaign_id"]
    pool = impressions if context_impressions is None else pa.concat_tables(
        [impressions.select(cols), context_impressions.select(cols).cast(
            impressions.select(cols).schema)])
    _, c_ts, target = _attribute(pool, clicks)
    ids = _str(impressions["impression_id"])
    imp_ts = _ms(impressions["ts"])
    # Duplicate impression ids share the first one's time and label. One lookup finds the
    # first row of each id and of each click's target (one hash table of the ids, not two).
    found = pc.index_in(pa.concat_arrays([ids, target.cast(pa.string())]), value_set=ids
                        ).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    first_of, j = found[:len(ids)], found[len(ids):]
    delay = c_ts - imp_ts[np.maximum(j, 0)] if len(imp_ts) else np.zeros(len(j), np.int64)
    ok = (j >= 0) & (delay > 0) & (delay <= window_ms)
    best = np.full(len(ids), np.iinfo(np.int64).max)
    np.minimum.at(best, j[ok], delay[ok])
    best = best[first_of] if len(ids) else best
    has_click = best != np.iinfo(np.int64).max
    delays = pa.array(np.where(has_click, best, 0), pa.int64(), mask=~has_click)
    return impressions.append_column("label", pa.array(has_click.astype(np.int8))).append_column(
        "first_click_delay_ms", delays
    )
