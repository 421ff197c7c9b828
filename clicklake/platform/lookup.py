"""Time travel: every user's profile exactly as of any instant t.

as_of(user, t) = the latest snapshot taken at or before t (a snapshot "as of" S holds the events
with ts < S) + that user's raw events in [S, t). Events at exactly t are not history (DESIGN §4.1).
Windows are sawtooth (DESIGN §4.3): W hours at t = the W complete hours before floor_hour(t) plus
[floor_hour(t), t); the snapshot's ring supplies the complete hours before S, raw events the rest.

The batch form is vectorised: pairs and events become integer keys `user_code * span + offset`,
sorted once; every count is a difference of cumulative sums found by binary search, so a batch
costs O((pairs + events) log events) with no Python loop per pair.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.platform.events import TS
from clicklake.platform.profiles import (
    RING_HOURS,
    SNAPSHOT_SCHEMA,
    WINDOWS_H,
    _list_parts,
    snapshot_as_of,
)
from clicklake.platform.tiles import as_string_array, ts_ms
from clicklake.platform.timeutil import HOUR_MS

NULL_MS = np.iinfo(np.int64).min

PROFILE_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string()),
        pa.field("t", TS, nullable=False),
        pa.field("known", pa.bool_(), nullable=False),  # any event of the user with ts < t
        pa.field("first_ts", TS),
        pa.field("last_impression_ts", TS),
        pa.field("last_click_ts", TS),
        pa.field("impressions", pa.int64(), nullable=False),
        pa.field("clicks", pa.int64(), nullable=False),
        pa.field("spend", pa.float64(), nullable=False),
        *[SNAPSHOT_SCHEMA.field(f"{m}_{w}") for w in WINDOWS_H
          for m in ("impressions", "clicks", "spend")],
        pa.field("distinct_campaigns", pa.int64(), nullable=False),
        pa.field("distinct_domains", pa.int64(), nullable=False),
    ]
)
PROFILE_FIELDS = PROFILE_SCHEMA.names[3:]

USER_CAMPAIGN_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string()),
        pa.field("campaign_id", pa.string()),
        pa.field("t", TS, nullable=False),
        pa.field("impressions", pa.int64(), nullable=False),
        pa.field("clicks", pa.int64(), nullable=False),
    ]
)


class _Timeline:
    """Events keyed by (code, time) in one sorted int64 array, with cumulative sums of weights."""

    def __init__(self, codes: np.ndarray, ms: np.ndarray, origin: int, span: int,
                 weights: dict[str, np.ndarray] | None = None):
        self.origin, self.span = origin, span
        key = codes * span + (ms - origin)
        order = np.argsort(key, kind="stable")
        self.key, self.ms = key[order], ms[order]
        self.cum = {}
        for name, w in (weights or {}).items():
            c = np.zeros(len(order) + 1, dtype=w.dtype)
            np.cumsum(w[order], out=c[1:])
            self.cum[name] = c

    def rank(self, codes: np.ndarray, ms: np.ndarray) -> np.ndarray:
        """For each (code, ms): the position of the first event of `code` at or after `ms`."""
        return np.searchsorted(self.key, codes * self.span + (ms - self.origin), side="left")

    def total(self, name: str, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        c = self.cum[name]
        return c[hi] - c[lo]


def _within(table: pa.Table, lo: int, hi: int) -> tuple[pa.Table, np.ndarray]:
    """Rows with lo <= ts < hi, and their ts in ms."""
    ms = ts_ms(table["ts"])
    keep = (ms >= lo) & (ms < hi)
    if keep.all():
        return table, ms
    return table.filter(pa.array(keep)), ms[keep]


def _to_np_codes(codes: pa.Array) -> np.ndarray:
    return codes.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _check_instants(snapshot: pa.Table, ts: np.ndarray) -> int:
    s = snapshot_as_of(snapshot)
    if len(ts) and int(ts.min()) < s:
        raise ValueError(f"instant {int(ts.min())} is before the snapshot ({s}): use an earlier one")
    return s


def _new_members(
    snapshot: pa.Table, list_col: str, codes: np.ndarray, ms: np.ndarray, values: pa.Array,
) -> np.ndarray:
    """Flags the events that add a value to their user's set: the first (earliest) event with a
    given (user, value) since the snapshot, when the snapshot's set lacks it."""
    n = len(codes)
    if n == 0:
        return np.zeros(0, dtype=bool)
    ns = snapshot.num_rows
    in_snap = codes < ns
    # Only the snapshot rows of users who have events matter.
    wanted = np.zeros(ns + 1, dtype=bool)
    wanted[codes[in_snap]] = True
    rows, flat = _list_parts(snapshot[list_col]) if ns else (np.zeros(0, np.int64), None)
    sel = wanted[rows] if len(rows) else np.zeros(0, dtype=bool)
    s_vals = flat.filter(pa.array(sel)) if sel.any() else pa.array([], pa.string())
    enc = pc.dictionary_encode(pa.concat_arrays([s_vals.cast(pa.string()), values.cast(pa.string())]))
    vcode = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    nv = max(len(enc.dictionary), 1)
    snap_keys = np.unique(rows[sel] * nv + vcode[: len(s_vals)])
    ev_keys = codes * nv + vcode[len(s_vals):]
    order = np.lexsort((ms, ev_keys))
    first = np.ones(n, dtype=bool)
    k_sorted = ev_keys[order]
    first[1:] = k_sorted[1:] != k_sorted[:-1]
    is_first = np.empty(n, dtype=bool)
    is_first[order] = first
    pos = np.searchsorted(snap_keys, ev_keys)
    known = (pos < len(snap_keys)) & (snap_keys[np.minimum(pos, len(snap_keys) - 1)] == ev_keys) if (
        len(snap_keys)) else np.zeros(n, dtype=bool)
    return is_first & ~known


def as_of_pairs(
    snapshot: pa.Table,
    impressions: pa.Table,
    clicks: pa.Table,
    user_ids: pa.Array | list[str],
    ts: np.ndarray | list[int],
) -> pa.Table:
    """Profiles of (user, t) pairs, in input order (PROFILE_SCHEMA).

    `snapshot` is as of S <= every t; `impressions` and `clicks` are raw rows holding at least all
    events in [S, max t) (others are ignored). `snapshot` may be any subset of a snapshot's rows
    (sorted by user) that includes the users asked for."""
    users = as_string_array(pa.array(user_ids, pa.string()) if isinstance(user_ids, list)
                            else user_ids)
    t = np.asarray(ts, dtype=np.int64)
    if len(users) != len(t):
        raise ValueError(f"{len(users)} users but {len(t)} instants")
    s = _check_instants(snapshot, t)
    hi = int(t.max()) if len(t) else s
    imp, imp_ms = _within(impressions, s, hi)
    clk, clk_ms = _within(clicks, s, hi)
    snap_users = as_string_array(snapshot["user_id"])
    ns = len(snap_users)
    imp_u, clk_u = as_string_array(imp["user_id"]), as_string_array(clk["user_id"])
    ev_users = pa.concat_arrays([imp_u, clk_u])
    extra = pc.unique(ev_users.filter(pc.invert(pc.is_in(ev_users, value_set=snap_users))))
    universe = pa.concat_arrays([snap_users, extra])
    span = hi - s + 1
    if (len(universe) + 1) * span >= 2**62:
        raise ValueError("too many users times too long a gap since the snapshot; use a later one")
    ic = _to_np_codes(pc.index_in(imp_u, value_set=universe))
    cc = _to_np_codes(pc.index_in(clk_u, value_set=universe))
    pc_raw = _to_np_codes(pc.index_in(users, value_set=universe))
    found = pc_raw >= 0
    code = np.where(found, pc_raw, 0)
    in_snap = found & (code < ns)
    srow = np.where(in_snap, code, 0)
    floor_t = t - t % HOUR_MS

    cost = imp["cost"].combine_chunks().fill_null(0.0).to_numpy(zero_copy_only=False) if (
        imp.num_rows) else np.zeros(0)
    imps = _Timeline(ic, imp_ms, s, span, {"n": np.ones(len(ic), np.int64), "spend": cost})
    clks = _Timeline(cc, clk_ms, s, span, {"n": np.ones(len(cc), np.int64)})
    out: dict[str, np.ndarray] = {}

    def snap_col(name: str, fill) -> np.ndarray:
        if not ns:
            return np.full(len(t), fill)
        col = snapshot[name].combine_chunks()
        vals = ts_ms(col) if pa.types.is_timestamp(col.type) else col.to_numpy(zero_copy_only=False)
        return np.where(in_snap, vals[srow], fill)

    # Lifetime and last-event times.
    i_lo, i_t = imps.rank(code, np.full(len(t), s)), imps.rank(code, t)
    c_lo, c_t = clks.rank(code, np.full(len(t), s)), clks.rank(code, t)
    out["impressions"] = snap_col("impressions", 0) + imps.total("n", i_lo, i_t)
    out["clicks"] = snap_col("clicks", 0) + clks.total("n", c_lo, c_t)
    out["spend"] = snap_col("spend", 0.0) + imps.total("spend", i_lo, i_t)
    for name, tl, lo, at in (("last_impression_ts", imps, i_lo, i_t),
                             ("last_click_ts", clks, c_lo, c_t)):
        recent = np.where(at > lo, tl.ms[np.maximum(at - 1, 0)] if len(tl.ms) else NULL_MS, NULL_MS)
        out[name] = np.where(recent != NULL_MS, recent, snap_col(name, NULL_MS))
    first_ev = np.minimum(
        np.where(i_t > i_lo, imps.ms[np.minimum(i_lo, max(len(imps.ms) - 1, 0))]
                 if len(imps.ms) else NULL_MS, np.iinfo(np.int64).max),
        np.where(c_t > c_lo, clks.ms[np.minimum(c_lo, max(len(clks.ms) - 1, 0))]
                 if len(clks.ms) else NULL_MS, np.iinfo(np.int64).max),
    )
    snap_first = snap_col("first_ts", NULL_MS)
    out["first_ts"] = np.where(snap_first != NULL_MS, snap_first,
                               np.where(first_ev == np.iinfo(np.int64).max, NULL_MS, first_ev))

    # Sawtooth windows: ring hours in [floor(t) - W, S) from the snapshot, events in [.., t).
    ring = _Ring(snapshot, s) if ns else None
    for w, width in WINDOWS_H.items():
        lower = floor_t - width * HOUR_MS
        ev_lo = np.maximum(lower, s)
        il, cl = imps.rank(code, ev_lo), clks.rank(code, ev_lo)
        vals = {"impressions": imps.total("n", il, i_t), "clicks": clks.total("n", cl, c_t),
                "spend": imps.total("spend", il, i_t)}
        if ring is not None:
            for m, r in ring.sums(srow, lower // HOUR_MS).items():
                vals[m] = vals[m] + np.where(in_snap, r, 0)
        for m, v in vals.items():
            out[f"{m}_{w}"] = v

    # Distinct campaigns (impressions and clicks) and domains (impressions), exact.
    touch_codes = np.concatenate([ic, cc])
    touch_ms = np.concatenate([imp_ms, clk_ms])
    camp_vals = pa.concat_arrays([as_string_array(imp["campaign_id"]),
                                  as_string_array(clk["campaign_id"])])
    new_c = _new_members(snapshot, "campaigns", touch_codes, touch_ms, camp_vals)
    newc = _Timeline(touch_codes[new_c], touch_ms[new_c], s, span)
    out["distinct_campaigns"] = snap_col("distinct_campaigns", 0) + (
        newc.rank(code, t) - newc.rank(code, np.full(len(t), s)))
    dom = as_string_array(imp["domain"])
    dvalid = pc.is_valid(dom).to_numpy(zero_copy_only=False) if len(dom) else np.zeros(0, bool)
    new_d = _new_members(snapshot, "domains", ic[dvalid], imp_ms[dvalid],
                         dom.filter(pa.array(dvalid)))
    newd = _Timeline(ic[dvalid][new_d], imp_ms[dvalid][new_d], s, span)
    out["distinct_domains"] = snap_col("distinct_domains", 0) + (
        newd.rank(code, t) - newd.rank(code, np.full(len(t), s)))

    # Users with no events at all are zeros (not "missing"): `known` says whether any exist.
    for name in PROFILE_FIELDS:
        if out[name].dtype.kind in "if" and not name.endswith("_ts"):
            out[name] = np.where(found, out[name], 0)
        elif name.endswith("_ts"):
            out[name] = np.where(found, out[name], NULL_MS)
    known = out["first_ts"] != NULL_MS
    arrays = [users, pa.array(t, pa.int64()).cast(TS), pa.array(known)]
    for f in PROFILE_SCHEMA:
        if f.name in ("user_id", "t", "known"):
            continue
        v = out[f.name]
        if f.name.endswith("_ts"):
            arrays.append(pa.array(v, pa.int64(), mask=v == NULL_MS).cast(TS))
        else:
            arrays.append(pa.array(v.astype(f.type.to_pandas_dtype())))
    return pa.Table.from_arrays(arrays, schema=PROFILE_SCHEMA)


class _Ring:
    """A snapshot's recent-hours ring flattened to sorted (row, hour) keys with cumulative sums."""

    def __init__(self, snapshot: pa.Table, as_of_ms: int):
        rows, hours = _list_parts(snapshot["recent_hours"])
        self.base = as_of_ms // HOUR_MS - RING_HOURS - 1
        self.width = RING_HOURS + 2
        self.key = rows * self.width + (hours.to_numpy(zero_copy_only=False).astype(np.int64)
                                        - self.base)
        offsets = snapshot["recent_hours"].combine_chunks().offsets.to_numpy()
        self.ends = offsets[1:].astype(np.int64)
        self.cum = {}
        for m in ("impressions", "clicks", "spend"):
            flat = pc.list_flatten(snapshot[f"recent_{m}"].combine_chunks()).to_numpy(
                zero_copy_only=False)
            c = np.zeros(len(flat) + 1, dtype=flat.dtype)
            np.cumsum(flat, out=c[1:])
            self.cum[m] = c

    def sums(self, rows: np.ndarray, first_hour: np.ndarray) -> dict[str, np.ndarray]:
        """Per row: sums over ring hours >= first_hour (all ring hours precede the snapshot)."""
        rel = np.clip(first_hour - self.base, 0, self.width)
        lo = np.searchsorted(self.key, rows * self.width + rel, side="left")
        hi = self.ends[rows]
        lo = np.minimum(lo, hi)
        return {m: c[hi] - c[lo] for m, c in self.cum.items()}


def as_of_user_campaign_pairs(
    snapshot: pa.Table,
    impressions: pa.Table,
    clicks: pa.Table,
    user_ids: pa.Array | list[str],
    campaign_ids: pa.Array | list[str],
    ts: np.ndarray | list[int],
) -> pa.Table:
    """Impressions and clicks of each user on each campaign with ts < t (lifetime), input order."""
    users = as_string_array(pa.array(user_ids, pa.string()) if isinstance(user_ids, list)
                            else user_ids)
    camps = as_string_array(pa.array(campaign_ids, pa.string()) if isinstance(campaign_ids, list)
                            else campaign_ids)
    t = np.asarray(ts, dtype=np.int64)
    if not len(users) == len(camps) == len(t):
        raise ValueError("user_ids, campaign_ids and ts differ in length")
    s = _check_instants(snapshot, t)
    hi = int(t.max()) if len(t) else s
    imp, imp_ms = _within(impressions, s, hi)
    clk, clk_ms = _within(clicks, s, hi)
    snap_users = as_string_array(snapshot["user_id"])
    ns = len(snap_users)

    # One dictionary for every (user, campaign) string pair we meet, then dense pair codes.
    all_u = pa.concat_arrays([users, as_string_array(imp["user_id"]),
                              as_string_array(clk["user_id"])])
    all_c = pa.concat_arrays([camps, as_string_array(imp["campaign_id"]),
                              as_string_array(clk["campaign_id"])])
    uenc = pc.dictionary_encode(all_u)
    cenc = pc.dictionary_encode(all_c)
    nc = len(cenc.dictionary) or 1
    key = (uenc.indices.to_numpy(zero_copy_only=False).astype(np.int64) * nc
           + cenc.indices.to_numpy(zero_copy_only=False).astype(np.int64))
    ukey, dense = np.unique(key, return_inverse=True)
    n, ni = len(t), imp.num_rows
    p_code, i_code, c_code = dense[:n], dense[n:n + ni], dense[n + ni:]
    span = hi - s + 1
    imps = _Timeline(i_code, imp_ms, s, span, {"n": np.ones(ni, np.int64)})
    clks = _Timeline(c_code, clk_ms, s, span, {"n": np.ones(len(c_code), np.int64)})
    start = np.full(n, s)
    out_imp = imps.total("n", imps.rank(p_code, start), imps.rank(p_code, t))
    out_clk = clks.total("n", clks.rank(p_code, start), clks.rank(p_code, t))

    if ns:
        # Snapshot counts: find each pair's user row, then its campaign inside the row's list.
        row = _to_np_codes(pc.index_in(users, value_set=snap_users))
        has = row >= 0
        if has.any():
            sub = snapshot.take(pa.array(np.unique(row[has])))
            rows, flat_c = _list_parts(sub["campaigns"])
            sub_u = as_string_array(sub["user_id"]).take(pa.array(rows))
            su = _to_np_codes(pc.index_in(sub_u, value_set=uenc.dictionary))
            scc = _to_np_codes(pc.index_in(flat_c, value_set=cenc.dictionary))
            ok = (su >= 0) & (scc >= 0)
            skey = su * nc + scc
            ci = pc.list_flatten(sub["campaign_impressions"].combine_chunks()).to_numpy(
                zero_copy_only=False)
            ck = pc.list_flatten(sub["campaign_clicks"].combine_chunks()).to_numpy(
                zero_copy_only=False)
            pos = np.searchsorted(ukey, skey[ok])
            acc_i = np.zeros(len(ukey), np.int64)
            acc_c = np.zeros(len(ukey), np.int64)
            hit = (pos < len(ukey)) & (ukey[np.minimum(pos, len(ukey) - 1)] == skey[ok])
            acc_i[pos[hit]] = ci[ok][hit]
            acc_c[pos[hit]] = ck[ok][hit]
            out_imp = out_imp + acc_i[p_code]
            out_clk = out_clk + acc_c[p_code]
    return pa.Table.from_arrays(
        [users, camps, pa.array(t, pa.int64()).cast(TS), pa.array(out_imp), pa.array(out_clk)],
        schema=USER_CAMPAIGN_SCHEMA,
    )
