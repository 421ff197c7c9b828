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

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clicklake.platform import hashtables
from clicklake.platform.events import SPECS, TS
from clicklake.platform.profiles import (
    META_HISTORY_START,
    RING_HOURS,
    SNAPSHOT_SCHEMA,
    WINDOWS_H,
    CarriedSnapshot,
    _list_parts,
    empty_snapshot,
    snapshot_as_of,
    snapshot_key,
)
from clicklake.platform.raw import raw_key
from clicklake.platform.storage import Store
from clicklake.platform.tiles import as_string_array, lex_order, ts_ms
from clicklake.platform.timeutil import HOUR_MS, hive_hour_of, hive_hours, iso

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
    """Events keyed by (code, time) in one sorted int64 array, with cumulative sums of weights:
    over all events for integer weights (exact); restarting at each code for float ones, so a
    code's sum never carries the rounding of other codes' (a cost of 1e9 of one user sorted
    before another changed the other's spend in its ninth digit)."""

    def __init__(self, codes: np.ndarray, ms: np.ndarray, origin: int, span: int,
                 weights: dict[str, np.ndarray] | None = None):
        self.origin, self.span = origin, span
        key = codes * span + (ms - origin)
        order = lex_order(key)
        self.key, self.ms = key[order], ms[order]
        self.cum = {}
        self._starts = None  # per position: where its code's events start (float sums)
        for name, w in (weights or {}).items():
            if np.issubdtype(w.dtype, np.floating):
                self.cum[name] = self._by_code(codes[order], w[order])
                continue
            c = np.zeros(len(order) + 1, dtype=w.dtype)
            np.cumsum(w[order], out=c[1:])
            self.cum[name] = c

    def _by_code(self, codes: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Inclusive running sums of `w` restarting at each code (codes sorted)."""
        import pandas as pd

        if self._starts is None:
            first = np.ones(len(codes), dtype=bool)
            first[1:] = codes[1:] != codes[:-1]
            self._starts = np.maximum.accumulate(np.where(first, np.arange(len(codes)), 0))
        return pd.Series(w).groupby(codes, sort=False).cumsum().to_numpy()

    def rank(self, codes: np.ndarray, ms: np.ndarray) -> np.ndarray:
        """For each (code, ms): the position of the first event of `code` at or after `ms`."""
        return np.searchsorted(self.key, codes * self.span + (ms - self.origin), side="left")

    def total(self, name: str, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """The sum of the weights at positions [lo, hi), each range within one code's events."""
        c = self.cum[name]
        if len(c) == len(self.key) + 1:  # over all events (integer weights)
            return c[hi] - c[lo]
        if not len(c):
            return np.zeros(len(lo), dtype=c.dtype)
        some = hi > lo
        last = c[np.clip(hi - 1, 0, len(c) - 1)]
        at = np.minimum(lo, len(c) - 1)
        before = np.where(at > self._starts[at], c[np.maximum(at - 1, 0)], 0.0)
        return np.where(some, last - before, 0.0)


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
    snap_keys = rows[sel] * nv + vcode[: len(s_vals)]  # unique: a snapshot list is a set
    ev_keys = codes * nv + vcode[len(s_vals):]
    order = lex_order(ev_keys, ms)
    first = np.ones(n, dtype=bool)
    k_sorted = ev_keys[order]
    first[1:] = k_sorted[1:] != k_sorted[:-1]
    is_first = np.empty(n, dtype=bool)
    is_first[order] = first
    # A hash lookup, not a sort: the snapshot side can hold millions of (user, value) keys.
    known = pc.is_in(pa.array(ev_keys), value_set=pa.array(snap_keys)).to_numpy(
        zero_copy_only=False) if len(snap_keys) else np.zeros(n, dtype=bool)
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
    # Binary searches run far faster over sorted needles: work in (user, t) order, undo at the end.
    perm = lex_order(pc_raw, t)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    users, t, pc_raw = users.take(pa.array(perm)), t[perm], pc_raw[perm]
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
    return _profile_table(users, t, out).take(pa.array(inv))


def _profile_table(users: pa.Array, t: np.ndarray, out: dict[str, np.ndarray]) -> pa.Table:
    """PROFILE_SCHEMA rows from per-field arrays (`*_ts` fields use NULL_MS for null)."""
    arrays = [users, pa.array(t, pa.int64()).cast(TS), pa.array(out["first_ts"] != NULL_MS)]
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
    # A null id gets the code after its dictionary's (a null campaign asked for counts nothing:
    # raw events always have one); cast from NaN, its code was undefined.
    nc = len(cenc.dictionary) + 1
    key = (_to_np_codes(uenc.indices.fill_null(len(uenc.dictionary))) * nc
           + _to_np_codes(cenc.indices.fill_null(nc - 1)))
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


# -- the lake-facing lookup table ----------------------------------------------------------------


class SnapshotUnavailable(LookupError):
    """No snapshot can answer for an instant (none built yet, or removed by retention)."""


class NoSnapshots(SnapshotUnavailable):
    """The lake holds no user profile snapshot at all: no instant can be answered yet (the
    lake's fault, not the instant's)."""


_PROFILE_COLUMNS = [
    "user_id", "first_ts", "last_impression_ts", "last_click_ts", "impressions", "clicks",
    "spend", "distinct_campaigns", "distinct_domains", "campaigns", "domains", "recent_hours",
    "recent_impressions", "recent_clicks", "recent_spend",
]
ROW_GROUP_CACHE = 256  # decoded snapshot row groups kept for repeated point lookups
FOOTER_CACHE = 64  # snapshot footers kept, each with its file open (a day and more of hours)
_CAMPAIGN_COLUMNS = ["user_id", "campaigns", "campaign_impressions", "campaign_clicks"]
# The raw columns the lookup reads of each stream (the rest is enrichment input).
_EVENT_COLUMNS = {"impressions": ("ts", "user_id", "campaign_id", "domain", "cost"),
                  "clicks": ("ts", "user_id", "campaign_id")}


class LookupTable:
    """As-of queries over the lake: hourly user snapshots plus raw events since the snapshot.

    Loaded snapshots, raw hours and Parquet footers are cached (small LRUs), so repeated point
    lookups touch memory only, and a batch spanning many hours reads each input once.
    """

    def __init__(self, store: Store, lake_prefix: str = "lake", cache_hours: int = 4):
        self.store, self.lake_prefix = store, lake_prefix
        self._cache_hours = max(cache_hours, 1)
        self._hours: np.ndarray | None = None
        self._tables: OrderedDict[tuple, pa.Table] = OrderedDict()
        # footers of the snapshots read, least recently used first (each holds its file open)
        self._files: OrderedDict[str, tuple[pq.ParquetFile, list, list]] = OrderedDict()
        self._versions: dict[str, tuple[int, int | None]] | None = None  # snapshots listed
        self._row_groups: OrderedDict[tuple, pa.Table] = OrderedDict()
        self._user_index: OrderedDict[tuple, tuple[pa.Table, np.ndarray]] = OrderedDict()
        self.missing_raw_hours: set[tuple[str, int]] = set()
        self._raw_read_at: dict[tuple[str, int], int] = {}  # raw hours read: when (ns)
        self._history_start: tuple[int, int] | None = None  # (first snapshot hour, its start)
        self._schemas: dict[str, pa.Schema] = {}

    # -- what exists ---------------------------------------------------------------------------
    def snapshot_hours(self, refresh: bool = False) -> np.ndarray:
        """Partition hours (epoch ms) whose snapshot exists, ascending."""
        if refresh:  # hours missing before may be built since: read them again when asked
            for stream, hour in self.missing_raw_hours:
                self._tables.pop(("raw", stream, hour), None)
                # ... and the per-user index built on its empty table (`profile` reads through
                # it: a time-travel profile kept answering without the hour's events)
                self._user_index.pop((stream, hour), None)
            self.missing_raw_hours.clear()
            self._forget_rebuilt_raw()
        if self._hours is None or refresh:
            prefix = f"{self.lake_prefix}/profiles/user/"
            versions = self.store.list_versions(prefix)
            # A snapshot rewritten (a refold of its hour) or deleted since the last listing:
            # whatever was read of it goes, or a long-lived table (the API's) would answer
            # from the old file for good (its open handle, its cached row groups).
            for key, was in (self._versions or {}).items():
                if versions.get(key) != was:
                    self._forget_snapshot(key)
            self._versions = versions
            self._hours = np.array(sorted(set(hive_hours(versions))), dtype=np.int64)
        return self._hours

    # A file written this close before its read may be older than the read's own copy:
    # clocks (a file system's, S3's to the second) are compared with this process's.
    _REWRITE_MARGIN_NS = 5_000_000_000

    def _forget_rebuilt_raw(self) -> None:
        """Drop the raw hours read before their file was written again (a rebuilt hour: a late
        file landed): a long-lived table (the API's time travel) answered from the old rows for
        as long as they stayed cached. One stat per raw hour held."""
        for (stream, hour), at in list(self._raw_read_at.items()):
            key = ("raw", stream, hour)
            if key in self._tables:
                path = raw_key(stream, hour, self.lake_prefix)
                version = self.store.list_versions(path).get(path)
                mtime = None if version is None else version[1]
                if mtime is not None and mtime < at - self._REWRITE_MARGIN_NS:
                    continue  # unchanged since it was read
                del self._tables[key]
                self._user_index.pop((stream, hour), None)
            del self._raw_read_at[(stream, hour)]

    def _forget_snapshot(self, key: str) -> None:
        hour = hive_hour_of(key)
        entry = self._files.pop(key, None)
        if entry is not None:
            entry[0].close(force=True)
        self._schemas.pop(key, None)
        for k in [k for k in self._row_groups if k[0] == hour]:  # (hour, group, columns)
            del self._row_groups[k]
        for k in [k for k in self._tables if k[0] in ("snap", "snapcols") and k[1] == hour]:
            del self._tables[k]
        if self._history_start is not None and self._history_start[0] == hour:
            self._history_start = None

    def history_start(self) -> int:
        """Start of the history the snapshot chain folds (events before it were never counted)."""
        hours = self.snapshot_hours()
        if not len(hours):
            raise NoSnapshots(
                f"no user profile snapshots under {self.lake_prefix}/profiles/user/: "
                "materialize user_profiles first")
        if self._history_start is None or self._history_start[0] != int(hours[0]):
            pf, _, _ = self._footer(snapshot_key(int(hours[0]), self.lake_prefix))
            self._history_start = (int(hours[0]), int(pf.schema_arrow.metadata[META_HISTORY_START]))
        return self._history_start[1]

    def _plan(self, t: np.ndarray) -> np.ndarray:
        """Per instant: the snapshot partition hour to start from; -1 = empty history at its start
        (the chain's first hour), -2 = before history (nothing to count)."""
        hours = self.snapshot_hours()
        start = self.history_start()
        floor_t = t - t % HOUR_MS
        idx = np.searchsorted(hours, floor_t - HOUR_MS, side="right") - 1
        plan = np.where(idx >= 0, hours[np.maximum(idx, 0)], -1)
        plan = np.where(t < start, -2, plan)
        orphan = (plan == -1) & (int(hours[0]) != start)
        if orphan.any():
            first = int(hours[0])
            raise SnapshotUnavailable(
                f"no snapshot at or before {iso(int(t[orphan].min()))}: the earliest kept is as of "
                f"{iso(first + HOUR_MS)} (older ones were removed by retention)")
        return plan

    # -- cached inputs -------------------------------------------------------------------------
    def _cached(self, key: tuple, load) -> pa.Table:
        if key in self._tables:
            self._tables.move_to_end(key)
            return self._tables[key]
        value = load()
        self._tables[key] = value
        while len(self._tables) > 2 * self._cache_hours + 2:
            self._tables.popitem(last=False)
        return value

    def raw(self, stream: str, hour_ms: int, need: tuple[str, ...] | None = None) -> pa.Table:
        """A raw hour; an hour never materialized reads as empty and is recorded as missing.
        `need`: the columns the caller reads (None: every column the lookup reads); an hour
        handed over without one of them (`remember_raw`) is read whole from the lake."""
        if need is None:
            need = _EVENT_COLUMNS.get(stream, ())
        key = ("raw", stream, hour_ms)
        held = self._tables.get(key)
        if held is not None and not all(c in held.column_names for c in need):
            del self._tables[key]

        def load() -> pa.Table:
            path = raw_key(stream, hour_ms, self.lake_prefix)
            if not self.store.exists(path):
                self.missing_raw_hours.add((stream, hour_ms))
                return SPECS[stream].schema.empty_table()
            self._raw_read_at[(stream, hour_ms)] = time.time_ns()  # `_forget_rebuilt_raw`
            return self.store.parquet_file(path).read(use_threads=False)  # see _snapshot_columns
        return self._cached(key, load)

    def remember_raw(self, stream: str, hour_ms: int, table: pa.Table) -> None:
        """Hand over a raw hour the caller has already read (it is then not read again by a
        reader of only the columns it has)."""
        self._cached(("raw", stream, hour_ms), lambda: table)

    def _raw_span(self, stream: str, first_hour: int, last_hour: int) -> pa.Table:
        parts = [self.raw(stream, h) for h in range(first_hour, last_hour + 1, HOUR_MS)]
        if len(parts) == 1:
            return parts[0]
        # A caller may have handed over an hour with only the columns the lookup reads (a
        # range of labeled hours does): the span keeps the columns every hour has.
        names = [c for c in parts[0].column_names if all(c in p.column_names for p in parts)]
        if any(p.column_names != names for p in parts):
            parts = [p.select(names) for p in parts]
        return pa.concat_tables(parts)

    def snapshot(self, hour_ms: int, columns: list[str] | None = None) -> pa.Table:
        cols = tuple(columns or SNAPSHOT_SCHEMA.names)
        key = snapshot_key(hour_ms, self.lake_prefix)
        return self._cached(("snap", hour_ms, cols), lambda: self.store.read_parquet(key, list(cols)))

    def _footer(self, key: str) -> tuple[pq.ParquetFile, list, list]:
        if key in self._files:
            self._files.move_to_end(key)
        else:
            pf = self.store.parquet_file(key)
            col = pf.schema_arrow.get_field_index("user_id")
            mins, maxs = [], []
            for i in range(pf.metadata.num_row_groups):
                st = pf.metadata.row_group(i).column(col).statistics
                mins.append(st.min if st is not None and st.has_min_max else None)
                maxs.append(st.max if st is not None and st.has_min_max else None)
            self._files[key] = (pf, mins, maxs)
            while len(self._files) > FOOTER_CACHE:
                self._files.popitem(last=False)[1][0].close(force=True)
        return self._files[key]

    def snapshot_rows(self, hour_ms: int, user_ids: list[str],
                      columns: list[str] | None = None) -> pa.Table:
        """Only the snapshot rows of `user_ids`, reading just the row groups whose user range can
        hold them (snapshots are sorted by user_id)."""
        key = snapshot_key(hour_ms, self.lake_prefix)
        pf, mins, maxs = self._footer(key)
        groups = sorted({i for u in user_ids for i in range(len(mins))
                         if mins[i] is None or mins[i] <= u <= maxs[i]})
        cols = columns or SNAPSHOT_SCHEMA.names
        parts = []
        for i in groups:
            k = (hour_ms, i, tuple(cols))
            if k not in self._row_groups:
                self._row_groups[k] = pf.read_row_group(i, columns=cols)
                while len(self._row_groups) > ROW_GROUP_CACHE:
                    self._row_groups.popitem(last=False)
            self._row_groups.move_to_end(k)
            parts.append(self._row_groups[k])
        if key not in self._schemas:  # converting the Parquet schema costs as much as a lookup
            self._schemas[key] = pf.schema_arrow
        schema = self._schemas[key]
        table = pa.concat_tables(parts) if parts else schema.empty_table().select(cols)
        table = table.filter(pc.is_in(table["user_id"], value_set=pa.array(user_ids, pa.string())))
        return table.replace_schema_metadata(schema.metadata)

    def _user_events(self, stream: str, hour_ms: int, user_id: str) -> pa.Table:
        """One user's rows of a raw hour, through a per-hour index sorted by user."""
        k = (stream, hour_ms)
        if k not in self._user_index:
            table = self.raw(stream, hour_ms)
            table = table.take(pc.sort_indices(table, [("user_id", "ascending")]))
            self._user_index[k] = (table, np.asarray(table["user_id"].to_pylist(), dtype=object))
            while len(self._user_index) > 2 * self._cache_hours:
                self._user_index.popitem(last=False)
        table, users = self._user_index[k]
        lo, hi = np.searchsorted(users, user_id, "left"), np.searchsorted(users, user_id, "right")
        return table.slice(int(lo), int(hi - lo))

    # -- queries -------------------------------------------------------------------------------
    def _grouped(self, t: np.ndarray, run) -> pa.Table:
        """Split instants by starting snapshot, run each group, and restore input order."""
        plan = self._plan(t)
        parts, positions = [], []
        for p in np.unique(plan):
            sel = np.flatnonzero(plan == p)
            tg = t[sel]
            last_hour = int(tg.max() - tg.max() % HOUR_MS)
            if p == -2:  # before history: nothing happened yet, as far as the lake knows
                base, first_hour = empty_snapshot(int(tg.min())), None
            elif p == -1:
                start = self.history_start()
                base, first_hour = empty_snapshot(start), start
            else:
                base, first_hour = None, int(p) + HOUR_MS
            parts.append(run(sel, int(p), base, first_hour, last_hour))
            positions.append(sel)
        table = pa.concat_tables(parts)
        order = np.empty(len(t), dtype=np.int64)
        order[np.concatenate(positions)] = np.arange(len(t))
        return table.take(pa.array(order))

    def _events(self, first_hour: int | None, last_hour: int) -> tuple[pa.Table, pa.Table]:
        if first_hour is None or first_hour > last_hour:
            return SPECS["impressions"].schema.empty_table(), SPECS["clicks"].schema.empty_table()
        return (self._raw_span("impressions", first_hour, last_hour),
                self._raw_span("clicks", first_hour, last_hour))

    def as_of(self, user_ids: pa.Array | list[str], ts: np.ndarray | list[int] | int,
              columns: list[str] | None = None) -> pa.Table:
        """Profiles of (user, t) pairs (PROFILE_SCHEMA), in input order; a scalar t is broadcast.
        `columns` (PROFILE_FIELDS) keeps user_id, t and only those, and in the hour right after
        a snapshot skips reading and folding what they do not need (the campaign and domain
        sets when neither distinct count is asked for)."""
        if columns is not None and (unknown := set(columns) - set(PROFILE_FIELDS)):
            raise ValueError(f"not profile fields: {sorted(unknown)}")
        keep = ["user_id", "t", *columns] if columns is not None else PROFILE_SCHEMA.names
        users = as_string_array(pa.array(user_ids, pa.string()) if isinstance(user_ids, list)
                                else user_ids)
        t = np.broadcast_to(np.asarray(ts, dtype=np.int64), (len(users),)).copy()

        def run(sel, p, base, first_hour, last_hour):
            snap = base if base is not None else self.snapshot(p, _PROFILE_COLUMNS)
            imp, clk = self._events(first_hour, last_hour)
            return as_of_pairs(snap, imp, clk, users.take(pa.array(sel)), t[sel])

        if not len(users):
            return PROFILE_SCHEMA.empty_table().select(keep)
        fast = self._hour_after_plan(t)
        if fast is not None:  # every instant in the hour right after one snapshot
            return self._hour_after_snapshot(users, None, t, *fast, columns=columns)[0].select(
                keep)
        return self._grouped(t, run).select(keep)

    def as_of_user_campaign(self, user_ids, campaign_ids, ts) -> pa.Table:
        """Lifetime impressions and clicks of each user on each campaign before t, input order."""
        users = as_string_array(pa.array(user_ids, pa.string()) if isinstance(user_ids, list)
                                else user_ids)
        camps = as_string_array(pa.array(campaign_ids, pa.string()) if isinstance(
            campaign_ids, list) else campaign_ids)
        t = np.broadcast_to(np.asarray(ts, dtype=np.int64), (len(users),)).copy()

        def run(sel, p, base, first_hour, last_hour):
            snap = base if base is not None else self.snapshot(p, _CAMPAIGN_COLUMNS)
            imp, clk = self._events(first_hour, last_hour)
            idx = pa.array(sel)
            return as_of_user_campaign_pairs(snap, imp, clk, users.take(idx), camps.take(idx),
                                             t[sel])

        if not len(users):
            return USER_CAMPAIGN_SCHEMA.empty_table()
        return self._grouped(t, run)

    def as_of_with_campaigns(self, user_ids: pa.Array, campaign_ids: pa.Array, ts,
                             carried: CarriedSnapshot | None = None,
                             user_codes: np.ndarray | None = None
                             ) -> tuple[pa.Table, pa.Table]:
        """`as_of(user_ids, ts)` and `as_of_user_campaign(user_ids, campaign_ids, ts)` together.

        When every instant lies in the hour right after a kept snapshot (or in the first hour
        of history) - a labeled hour - one pass serves both on integer codes: only the
        snapshot rows of the users asked for, the windows from the snapshot's own window
        columns (they cover exactly the complete hours before that hour), and the campaign and
        domain sets read dictionary-encoded. Otherwise the two general queries run.

        `carried`: that snapshot held in memory (profiles.CarriedSnapshot, as of the start of
        the instants' hour), read instead of its Parquet file; the answer is the same.
        `user_codes`: the codes of `user_ids` in the carried snapshot's user interner, when the
        caller has them already (they are not looked up again)."""
        users = as_string_array(user_ids)
        camps = as_string_array(campaign_ids)
        t = np.asarray(ts, dtype=np.int64)
        fast = self._hour_after_plan(t) if len(t) else None
        if fast is not None:
            return self._hour_after_snapshot(users, camps, t, *fast, carried=carried,
                                             user_codes=user_codes)
        if carried is not None:
            raise ValueError("a carried snapshot serves only instants in the hour right after it")
        return self.as_of(users, t), self.as_of_user_campaign(users, camps, t)

    def _hour_after_plan(self, t: np.ndarray) -> tuple[int, int] | None:
        """(snapshot partition p, its as-of instant s) when every instant lies in the hour
        right after that kept snapshot (or in the first hour of history, p = -1), else None."""
        plan = self._plan(t)
        p = int(plan[0])
        floor_t = t - t % HOUR_MS
        s = p + HOUR_MS if p >= 0 else (self.history_start() if p == -1 else None)
        if s is not None and (plan == p).all() and (floor_t == s).all():
            return p, s
        return None

    def _snapshot_columns(self, p: int, columns: list[str], dictionary: list[str] = ()) -> pa.Table:
        key = ("snapcols", p, tuple(columns))
        path = self.store.path(snapshot_key(p, self.lake_prefix))
        # One thread: Arrow's reader threads took 2-3x the CPU-seconds of a plain read here
        # (a snapshot's scalar columns: 120 vs 40 ms), and hours run in parallel processes.
        return self._cached(key, lambda: pq.read_table(
            path, filesystem=self.store.fs, columns=columns, use_threads=False,
            read_dictionary=[f"{c}.list.element" for c in dictionary] or None))

    def _hour_after_snapshot(self, users: pa.Array, camps: pa.Array | None, t: np.ndarray, p: int,
                             s: int, columns: list[str] | None = None,
                             carried: CarriedSnapshot | None = None,
                             user_codes: np.ndarray | None = None
                             ) -> tuple[pa.Table, pa.Table | None]:
        """Profiles (and, unless `camps` is None, user x campaign counts) of instants that all
        lie in the hour [s, s + 1 h) right after snapshot partition p. With `columns`, profile
        fields outside them may be left zero (callers select them away)."""
        sets = camps is not None or columns is None or bool(
            {"distinct_campaigns", "distinct_domains"} & set(columns))
        spend = columns is None or any(c.startswith("spend") for c in columns)
        n = len(t)
        qenc = pc.dictionary_encode(users)
        qcode = qenc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        quniq = qenc.dictionary
        nu = len(quniq)
        quniq_codes = None
        if carried is not None and user_codes is not None and not users.null_count:
            # The interner codes of the distinct users: those of their first rows.
            first = np.empty(nu, np.int64)
            first[qcode[::-1]] = np.arange(n - 1, -1, -1)
            quniq_codes = np.asarray(user_codes, np.int64)[first]
        hi = int(t.max())
        # Binary searches run far faster over sorted needles: work in (user, t) order.
        perm = np.argsort(qcode * (hi - s + 1) + (t - s))
        inv = np.empty_like(perm)
        inv[perm] = np.arange(n)
        qcode, t_in, t = qcode[perm], t, t[perm]
        raw_imp = self.raw("impressions", s, (
            "ts", "user_id", *(("campaign_id", "domain") if sets else ()),
            *(("cost",) if spend else ())))
        # The hour's own impressions asked about (a labeled hour): their events are the query
        # rows, whose codes are known already - no second lookup of the same strings.
        same = (raw_imp.num_rows == n and not users.null_count
                and (camps is None or len(camps) == n)
                and as_string_array(raw_imp["user_id"]).equals(users)
                and (camps is None or as_string_array(raw_imp["campaign_id"]).equals(camps)))
        in_hour = None
        if same:
            raw_ms = ts_ms(raw_imp["ts"])
            in_hour = (raw_ms >= s) & (raw_ms < hi)
        imp, imp_ms = _within(raw_imp, s, hi)
        clk, clk_ms = _within(self.raw("clicks", s), s, hi)
        ic = (qenc.indices.to_numpy(zero_copy_only=False).astype(np.int64)[in_hour] if same
              else _to_np_codes(pc.index_in(as_string_array(imp["user_id"]), value_set=quniq)))
        cc = _to_np_codes(pc.index_in(as_string_array(clk["user_id"]), value_set=quniq))
        # Campaign codes: the campaigns asked for and those of the events; others never match.
        qc = camps if camps is not None else pa.array([], pa.string())
        nq = len(qc)
        if not sets:  # no campaign sets nor user x campaign counts: every event on code 0
            cdict = pa.array([], pa.string())
            q_camp = np.zeros(0, np.int64)
            i_camp, c_camp = np.zeros(len(ic), np.int64), np.zeros(len(cc), np.int64)
        elif same and camps is not None:
            cenc = pc.dictionary_encode(pa.concat_arrays([qc, as_string_array(clk["campaign_id"])]))
            call = _to_np_codes(cenc.indices)  # a null campaign asked for: -1, matches none
            q_camp, c_camp = call[:nq], call[nq:]
            i_camp = q_camp[in_hour]
        else:
            cenc = pc.dictionary_encode(pa.concat_arrays([
                qc, as_string_array(imp["campaign_id"]), as_string_array(clk["campaign_id"])]))
            call = _to_np_codes(cenc.indices)
            q_camp, i_camp, c_camp = call[:nq], call[nq:nq + len(ic)], call[nq + len(ic):]
        if sets:
            cdict = cenc.dictionary
        nc = max(len(cdict), 1)
        if sets:
            denc = pc.dictionary_encode(as_string_array(imp["domain"]))
            ddict = denc.dictionary
            d_code = denc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        else:  # no distinct counts asked for: the domains (maybe not even read) are not needed
            ddict, d_code = pa.array([], pa.string()), np.full(imp.num_rows, -1, np.int64)
        nd = max(len(ddict), 1)

        # What the snapshot holds on the users asked for: their values, and lookups of
        # (user, campaign) and (user, domain) keys in this call's codes.
        if carried is not None:
            if carried.as_of != s:
                raise ValueError(f"the carried snapshot is as of {carried.as_of}, not {s}")
            u_state, snap_vals = carried.values(quniq, quniq_codes)
            c_state = carried.campaigns.codes(cdict, add=False)
            d_state = carried.domains.codes(ddict, add=False)

            def known_campaigns(keys: np.ndarray) -> np.ndarray:
                return carried.has_pairs("campaigns", u_state[keys // nc], c_state[keys % nc])

            def known_domains(keys: np.ndarray) -> np.ndarray:
                return carried.has_pairs("domains", u_state[keys // nd], d_state[keys % nd])

            def campaign_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                return carried.campaign_counts(u_state[keys // nc], c_state[keys % nc])
        else:
            # Snapshot rows of the users asked for (row -1: not in the snapshot).
            scal = ["first_ts", "last_impression_ts", "last_click_ts", "impressions", "clicks",
                    "spend", *[f"{m}_{w}" for w in WINDOWS_H for m in ("impressions", "clicks",
                                                                        "spend")],
                    "distinct_campaigns", "distinct_domains"]
            read = scal if columns is None else [c for c in scal if c in columns]
            snap_vals: dict[str, np.ndarray] = {}
            snap_pairs = np.zeros(0, np.int64)
            snap_ci = snap_ck = np.zeros(0, np.int64)
            snap_doms = np.zeros(0, np.int64)
            counts = ["campaign_impressions", "campaign_clicks"] if camps is not None else []
            # One read of every snapshot column needed (a footer and a pass over the file).
            lists = ["campaigns", *counts, "domains"] if sets else []
            sc = self._snapshot_columns(p, ["user_id", *read, *lists],
                                        ["campaigns", "domains"] if sets else []) if p >= 0 else None
            ids = sc["user_id"] if sc is not None else None
            if ids is not None and len(ids):
                # The snapshot row of each user asked about (-1: none): the hash table is built
                # on the hour's users, a fraction of the snapshot's (its user ids are unique).
                user_of_row = _to_np_codes(pc.index_in(as_string_array(ids), value_set=quniq))
                found = np.flatnonzero(user_of_row >= 0)
                row = np.full(nu, -1, np.int64)
                row[user_of_row[found]] = found
                has = row >= 0
                take = pa.array(np.maximum(row, 0))
                for name in scal:
                    fill = NULL_MS if name.endswith("_ts") else 0
                    if name not in read:  # not asked for: never returned
                        snap_vals[name] = np.full(nu, fill)
                        continue
                    col = sc[name].combine_chunks().take(take)
                    v = ts_ms(col) if pa.types.is_timestamp(col.type) else col.to_numpy(
                        zero_copy_only=False)
                    snap_vals[name] = np.where(has, v, fill)
                # user code of each snapshot row (-1 for rows nobody asked about)
                row_user = np.full(len(ids) + 1, -1, np.int64)
                row_user[row[has]] = np.flatnonzero(has)
                if sets:
                    snap_pairs, snap_counts = _flat_coded(sc, "campaigns", counts, row_user, cdict,
                                                          nc)
                    if counts:
                        snap_ci, snap_ck = snap_counts
                    snap_doms, _ = _flat_coded(sc, "domains", [], row_user, ddict, nd)
            else:
                for name in scal:
                    snap_vals[name] = np.full(nu, NULL_MS if name.endswith("_ts") else 0)
                snap_vals["spend"] = snap_vals["spend"].astype(np.float64)
            for w in WINDOWS_H:
                snap_vals[f"spend_{w}"] = snap_vals[f"spend_{w}"].astype(np.float64)
            snap_vals["spend"] = snap_vals["spend"].astype(np.float64)

            def known_campaigns(keys: np.ndarray) -> np.ndarray:
                return _in_sorted(snap_pairs, keys)[0]

            def known_domains(keys: np.ndarray) -> np.ndarray:
                return _in_sorted(snap_doms, keys)[0]

            def campaign_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                hit, pos = _in_sorted(snap_pairs, keys)
                return (np.where(hit, snap_ci[pos], 0) if len(snap_ci) else 0,
                        np.where(hit, snap_ck[pos], 0) if len(snap_ck) else 0)

        cost = imp["cost"].combine_chunks().fill_null(0.0).to_numpy(zero_copy_only=False) if (
            imp.num_rows and spend) else np.zeros(imp.num_rows)
        hour = _HourEvents(s, hi - s + 1, ic, imp_ms, i_camp, d_code, cost, cc, clk_ms, c_camp,
                           nc, nd)
        q_key = None
        if camps is not None:  # -1: no campaign (a null asked for), counts 0
            q_key = np.where(q_camp[perm] >= 0, qcode * nc + q_camp[perm], -1)
        since = (_since_start_native if hashtables.NATIVE else _since_start_numpy)(
            hour, qcode, t, q_key, known_campaigns if sets else None,
            known_domains if sets else None)
        out: dict[str, np.ndarray] = {}
        sv = {k: v[qcode] for k, v in snap_vals.items()}
        n_i, n_c, sp = since["impressions"], since["clicks"], since["spend"]
        out["impressions"], out["clicks"] = sv["impressions"] + n_i, sv["clicks"] + n_c
        out["spend"] = sv["spend"] + sp
        for w in WINDOWS_H:  # the snapshot's windows cover the complete hours before s
            out[f"impressions_{w}"] = sv[f"impressions_{w}"] + n_i
            out[f"clicks_{w}"] = sv[f"clicks_{w}"] + n_c
            out[f"spend_{w}"] = sv[f"spend_{w}"] + sp
        for name in ("last_impression_ts", "last_click_ts"):
            out[name] = np.where(since[name] != NULL_MS, since[name], sv[name])
        first_ev = since["first_ts"]
        out["first_ts"] = np.where(sv["first_ts"] != NULL_MS, sv["first_ts"],
                                   np.where(first_ev == _NONE_YET, NULL_MS, first_ev))
        if sets:
            out["distinct_campaigns"] = sv["distinct_campaigns"] + since["new_campaigns"]
            out["distinct_domains"] = sv["distinct_domains"] + since["new_domains"]
        else:
            out["distinct_campaigns"] = out["distinct_domains"] = np.zeros(n, np.int64)

        # Back to input order (fields outside `columns` are left zero: never returned).
        zero = np.zeros(n, np.int64)
        out = {k: v[inv] if columns is None or k in columns or k == "first_ts" else zero
               for k, v in out.items()}
        profiles = _profile_table(users, t_in, out)
        if camps is None:
            return profiles, None

        # This user on this campaign: the snapshot's count plus the events since s.
        snap_i, snap_c = np.zeros(n, np.int64), np.zeros(n, np.int64)
        if (asked := q_key >= 0).any():
            snap_i[asked], snap_c[asked] = campaign_counts(q_key[asked])
        uc_i, uc_c = since["uc_impressions"] + snap_i, since["uc_clicks"] + snap_c
        uc = pa.Table.from_arrays(
            [users, camps, profiles["t"].combine_chunks(), pa.array(uc_i[inv].astype(np.int64)),
             pa.array(uc_c[inv].astype(np.int64))], schema=USER_CAMPAIGN_SCHEMA)
        return profiles, uc

    def profile(self, user_id: str, t: int) -> dict:
        """One user's profile at t, reading only the row groups and raw rows it needs. Includes
        per-campaign counts and the exact sets of campaigns and domains."""
        p = int(self._plan(np.array([t], dtype=np.int64))[0])
        if p == -2:
            snap, first_hour = empty_snapshot(t), None
        elif p == -1:
            first_hour = self.history_start()
            snap = empty_snapshot(first_hour)
        else:
            first_hour = p + HOUR_MS
            snap = self.snapshot_rows(p, [user_id])
        last_hour = t - t % HOUR_MS
        hours = range(first_hour, last_hour + 1, HOUR_MS) if first_hour is not None else range(0)
        imp = _concat([self._user_events("impressions", h, user_id) for h in hours], "impressions")
        clk = _concat([self._user_events("clicks", h, user_id) for h in hours], "clicks")
        row = as_of_pairs(snap, imp, clk, [user_id], [t]).to_pylist()[0]
        s = snapshot_as_of(snap)
        imp_b, _ = _within(imp, s, t)
        clk_b, _ = _within(clk, s, t)
        camps = set(pc.list_flatten(snap["campaigns"]).to_pylist()) if snap.num_rows else set()
        camps |= set(imp_b["campaign_id"].to_pylist()) | set(clk_b["campaign_id"].to_pylist())
        doms = set(pc.list_flatten(snap["domains"]).to_pylist()) if snap.num_rows else set()
        doms |= {d for d in imp_b["domain"].to_pylist() if d is not None}
        names = sorted(camps)
        uc = as_of_user_campaign_pairs(snap, imp, clk, [user_id] * len(names), names,
                                       [t] * len(names)).to_pylist() if names else []
        row["campaigns"] = {r["campaign_id"]: {"impressions": r["impressions"],
                                               "clicks": r["clicks"]} for r in uc}
        row["domains"] = sorted(doms)
        row["snapshot_as_of"] = None if p < 0 else p + HOUR_MS
        row["before_history"] = p == -2
        return row


def _flat_coded(lists: pa.Table, name: str, counts: list[str], row_user: np.ndarray,
                dictionary: pa.Array, width: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The (user code * width + value code) keys of a dictionary-read list column, sorted, for
    the rows of users asked for and values in `dictionary` (others cannot match), with the
    aligned count lists."""
    keys, masks = [], []
    offset = 0
    for chunk in lists[name].chunks:  # each chunk may carry its own dictionary
        parents = pc.list_parent_indices(chunk).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = pc.list_flatten(chunk)
        vmap = _to_np_codes(pc.index_in(flat.dictionary.cast(pa.string()),
                                        value_set=dictionary))
        vals = vmap[flat.indices.to_numpy(zero_copy_only=False).astype(np.int64)] if len(
            flat) else np.zeros(0, np.int64)
        user = row_user[offset + parents]
        ok = (user >= 0) & (vals >= 0)
        keys.append(user[ok] * width + vals[ok])
        masks.append(ok)
        offset += len(chunk)
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    if not counts:  # keys are unique (a snapshot list is a set): a plain sort will do
        return np.sort(key), []
    ok = np.concatenate(masks) if masks else np.zeros(0, bool)
    m = len(key)
    if m and (int(key.max()) + 1) * m < 2**62:
        # Sort (key, position) packed in one int64: far faster than an argsort.
        packed = np.sort(key * m + np.arange(m))
        key, order = packed // m, packed % m
    else:
        order = np.argsort(key)
        key = key[order]
    outs = [pc.list_flatten(lists[c].combine_chunks()).to_numpy(zero_copy_only=False)[ok][order]
            for c in counts]  # aligned with the lists above, element for element
    return key, outs


def _in_sorted(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(whether each key is in `sorted_keys`, its position there when it is)."""
    if not len(sorted_keys):
        return np.zeros(len(keys), bool), np.zeros(len(keys), np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys, pos


def _first_new(keys: np.ndarray, ms: np.ndarray, known, users: np.ndarray,
               origin: int, span: int) -> _Timeline:
    """The earliest event of each (user, value) key the snapshot lacks, as a per-user timeline."""
    if not len(keys):
        return _Timeline(np.zeros(0, np.int64), np.zeros(0, np.int64), origin, span)
    order = lex_order(keys, ms)
    k = keys[order]
    first = np.ones(len(k), dtype=bool)
    first[1:] = k[1:] != k[:-1]
    sel = order[first]
    sel = sel[~known(keys[sel])]  # `known`: which keys the snapshot holds
    return _Timeline(users[sel], ms[sel], origin, span)


_NONE_YET = np.iinfo(np.int64).max  # "no event yet" of a first time


@dataclass
class _HourEvents:
    """The events of the hour [s, s + span) a one-pass lookup answers from, in its local codes:
    user (-1: a user nobody asked about), ms, campaign and domain codes (domain -1: none), cost."""

    s: int
    span: int
    i_user: np.ndarray
    i_ms: np.ndarray
    i_camp: np.ndarray
    i_dom: np.ndarray
    i_cost: np.ndarray
    c_user: np.ndarray
    c_ms: np.ndarray
    c_camp: np.ndarray
    nc: int
    nd: int


def _since_start_numpy(hour: _HourEvents, qcode: np.ndarray, t: np.ndarray,
                       q_key: np.ndarray | None, known_campaigns, known_domains
                       ) -> dict[str, np.ndarray]:
    """Per query (user code, t): what the hour's events before t add - counts, spend, last and
    first times, first touches of campaigns and domains the snapshot lacks (`known_*`: which
    keys it holds; None: not asked), and, per (user, campaign) key `q_key`, counts. Sorted
    timelines searched by binary search (`_since_start_native` is the one-pass C version)."""
    s, span, nc, nd, n = hour.s, hour.span, hour.nc, hour.nd, len(t)
    i_keep, c_keep = hour.i_user >= 0, hour.c_user >= 0
    iu, ims = hour.i_user[i_keep], hour.i_ms[i_keep]
    cu, cms = hour.c_user[c_keep], hour.c_ms[c_keep]
    imps = _Timeline(iu, ims, s, span, {"n": np.ones(len(iu), np.int64),
                                        "spend": hour.i_cost[i_keep]})
    clks = _Timeline(cu, cms, s, span, {"n": np.ones(len(cu), np.int64)})
    start = np.full(n, s)
    i_lo, i_t = imps.rank(qcode, start), imps.rank(qcode, t)
    c_lo, c_t = clks.rank(qcode, start), clks.rank(qcode, t)
    out = {"impressions": imps.total("n", i_lo, i_t), "clicks": clks.total("n", c_lo, c_t),
           "spend": imps.total("spend", i_lo, i_t)}
    for name, tl, lo, at in (("last_impression_ts", imps, i_lo, i_t),
                             ("last_click_ts", clks, c_lo, c_t)):
        recent = tl.ms[np.maximum(at - 1, 0)] if len(tl.ms) else np.full(n, NULL_MS)
        out[name] = np.where(at > lo, recent, NULL_MS)
    fi = np.where(i_t > i_lo, imps.ms[np.minimum(i_lo, max(len(imps.ms) - 1, 0))]
                  if len(imps.ms) else _NONE_YET, _NONE_YET)
    fc = np.where(c_t > c_lo, clks.ms[np.minimum(c_lo, max(len(clks.ms) - 1, 0))]
                  if len(clks.ms) else _NONE_YET, _NONE_YET)
    out["first_ts"] = np.minimum(fi, fc)
    if known_campaigns is not None:
        t_user = np.concatenate([iu, cu])
        t_ms = np.concatenate([ims, cms])
        t_key = t_user * nc + np.concatenate([hour.i_camp[i_keep], hour.c_camp[c_keep]])
        newc = _first_new(t_key, t_ms, known_campaigns, t_user, s, span)
        out["new_campaigns"] = newc.rank(qcode, t) - newc.rank(qcode, start)
        dv = i_keep & (hour.i_dom >= 0)
        du = hour.i_user[dv]
        newd = _first_new(du * nd + hour.i_dom[dv], hour.i_ms[dv], known_domains, du, s, span)
        out["new_domains"] = newd.rank(qcode, t) - newd.rank(qcode, start)
    if q_key is not None:
        pair_i = _Timeline(iu * nc + hour.i_camp[i_keep], ims, s, span,
                           {"n": np.ones(len(iu), np.int64)})
        pair_c = _Timeline(cu * nc + hour.c_camp[c_keep], cms, s, span,
                           {"n": np.ones(len(cu), np.int64)})
        out["uc_impressions"] = pair_i.total("n", pair_i.rank(q_key, start),
                                             pair_i.rank(q_key, t))
        out["uc_clicks"] = pair_c.total("n", pair_c.rank(q_key, start), pair_c.rank(q_key, t))
    return out


def _since_start_native(hour: _HourEvents, qcode: np.ndarray, t: np.ndarray,
                        q_key: np.ndarray | None, known_campaigns, known_domains
                        ) -> dict[str, np.ndarray]:
    """`_since_start_numpy` in one pass through the hour's events and the query instants in
    time order (C: `_hashkeys.hour_as_of`); spend is summed in time order, per user."""
    n, nc, nd = len(t), hour.nc, hour.nd
    i_known = np.zeros(len(hour.i_user), np.int64)
    c_known = np.zeros(len(hour.c_user), np.int64)
    if known_campaigns is not None:
        for users, camps, known in ((hour.i_user, hour.i_camp, i_known),
                                    (hour.c_user, hour.c_camp, c_known)):
            asked = np.flatnonzero(users >= 0)
            known[asked] = known_campaigns(users[asked] * nc + camps[asked])
        with_dom = np.flatnonzero((hour.i_user >= 0) & (hour.i_dom >= 0))
        i_known[with_dom] |= 2 * known_domains(hour.i_user[with_dom] * nd
                                               + hour.i_dom[with_dom]).astype(np.int64)
    q_camp = (np.where(q_key >= 0, q_key - qcode * nc, -1) if q_key is not None
              else np.full(n, -1, np.int64))
    queries = np.stack([np.argsort(t, kind="stable"), qcode, t, q_camp]).astype(np.int64)
    imps = np.stack([np.argsort(hour.i_ms, kind="stable"), hour.i_user, hour.i_ms,
                     hour.i_camp, hour.i_dom, i_known]).astype(np.int64)
    clks = np.stack([np.argsort(hour.c_ms, kind="stable"), hour.c_user, hour.c_ms,
                     hour.c_camp, c_known]).astype(np.int64)
    res = np.zeros((9, n), np.int64)
    spend = np.zeros(n, np.float64)
    nu = 1 + max((int(a.max()) for a in (qcode, hour.i_user, hour.c_user) if len(a)), default=-1)
    hashtables._hashkeys.hour_as_of(
        queries, imps, np.ascontiguousarray(hour.i_cost, np.float64), clks, res, spend, n,
        len(hour.i_user), len(hour.c_user), nu, max(nc, 1), max(nd, 1))
    names = ("impressions", "clicks", "last_impression_ts", "last_click_ts", "first_ts",
             "new_campaigns", "new_domains", "uc_impressions", "uc_clicks")
    out = dict(zip(names, res, strict=True))
    out["spend"] = spend
    return out


def _concat(parts: list[pa.Table], stream: str) -> pa.Table:
    return pa.concat_tables(parts) if parts else SPECS[stream].schema.empty_table()
