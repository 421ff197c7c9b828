"""User profile snapshots: every user's state as of the end of an hour, folded hour by hour.

snapshot(H) = fold(snapshot(H-1), tiles(H)). Users active in H get their rows merged with the
tile; everyone else's row is copied, only their recent-hours ring is trimmed. So an hour costs
what changed in it plus one pass over the snapshot, never a pass over history.

A snapshot "as of" T (= end of hour H) holds, per user, everything with ts < T:
- lifetime impressions, clicks, spend; first event, last impression and last click times;
- campaigns touched (impressions or clicks) with per-campaign impressions and clicks, and domains
  (exact sets, sorted; their lengths are the distinct counts);
- `recent_*`: a sparse ring of the user's hourly counts for the last 168 hours (hours with
  activity only). The ring makes the sawtooth windows (DESIGN §4.3) exact at ANY later instant,
  even across missing snapshots: a W-hour window at t sums the ring hours >= floor_hour(t) - W
  and the events since the snapshot;
- `*_1h`, `*_24h`, `*_7d`: those windows evaluated at T itself (convenience for readers).
"""

from __future__ import annotations

import uuid

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.platform import hashtables
from clicklake.platform.events import TS
from clicklake.platform.storage import Store
from clicklake.platform.tiles import (
    TILE_SCHEMA,
    Interner,
    as_string_array,
    dense_codes,
    nest,
    pooled,
    pooled_insert,
    tile_id,
    ts_ms,
)
from clicklake.platform.timeutil import HOUR_MS, hive_hour_path

WINDOWS_H = {"1h": 1, "24h": 24, "7d": 168}
RING_HOURS = max(WINDOWS_H.values())
DEFAULT_ROW_GROUP_USERS = 4096  # a point lookup reads one row group of this many users
DEFAULT_RETENTION_DAYS = 30
NULL_MS = np.iinfo(np.int64).min
META_AS_OF = b"clicklake.as_of_ms"
META_HISTORY_START = b"clicklake.history_start_ms"
# The snapshot chain's links: each snapshot's identity, that of the snapshot it was folded on
# ("" for an empty history) and of the tile file it folded ("" when folded from raw). A
# snapshot folded on another version of its predecessor, or from another tile, says so.
META_CHAIN_ID = b"clicklake.chain_id"
META_CHAIN_PARENT = b"clicklake.chain_parent"
META_CHAIN_TILE = b"clicklake.chain_tile"
# What the snapshot's inputs lacked ("": nothing; the user_profiles record's
# `inputs_incomplete`), in the file too: a run that died before recording its hours left
# snapshots whose warning nothing else carried, and the chain folded on them lost it.
META_INPUTS_INCOMPLETE = b"clicklake.inputs_incomplete"


def with_inputs_incomplete(snapshot: pa.Table, incomplete: str | None) -> pa.Table:
    return snapshot.replace_schema_metadata({**(snapshot.schema.metadata or {}),
                                             META_INPUTS_INCOMPLETE: (incomplete or "").encode()})


def inputs_incomplete_of(metadata: dict | None) -> tuple[bool, str | None]:
    """(whether a snapshot's footer says what its inputs lacked, what: None for nothing)."""
    meta = metadata or {}
    if META_INPUTS_INCOMPLETE not in meta:
        return False, None
    return True, meta[META_INPUTS_INCOMPLETE].decode() or None


def stamp_snapshot(snapshot: pa.Table, parent: str, tile: str) -> pa.Table:
    """`snapshot` with a new identity and its links (`META_CHAIN_*`), to be written."""
    return snapshot.replace_schema_metadata({
        **(snapshot.schema.metadata or {}), META_CHAIN_ID: uuid.uuid4().hex.encode(),
        META_CHAIN_PARENT: parent.encode(), META_CHAIN_TILE: tile.encode()})


def fold_linked(previous: pa.Table | None, previous_id: str, tile: pa.Table, hour_ms: int
                ) -> tuple[pa.Table, str]:
    """`fold_snapshot`, stamped with its links (`stamp_snapshot`: on `previous_id`, from the
    tile file `tile` was read from, "" when built in memory): the snapshot and its identity."""
    snap = stamp_snapshot(fold_snapshot(previous, tile, hour_ms), previous_id,
                          tile_id(tile) or "")
    return snap, snap.schema.metadata[META_CHAIN_ID].decode()


def chain_link(metadata: dict | None) -> tuple[str | None, str | None, str | None]:
    """(identity, parent, tile) of a snapshot's schema metadata; None where it has none (an
    older clicklake wrote it)."""
    meta = metadata or {}
    return tuple(meta[k].decode() if k in meta else None  # type: ignore[return-value]
                 for k in (META_CHAIN_ID, META_CHAIN_PARENT, META_CHAIN_TILE))

_window_fields = [
    pa.field(f"{m}_{w}", pa.float64() if m == "spend" else pa.int64(), nullable=False)
    for w in WINDOWS_H
    for m in ("impressions", "clicks", "spend")
]
SNAPSHOT_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("first_ts", TS, nullable=False),
        pa.field("last_impression_ts", TS),
        pa.field("last_click_ts", TS),
        pa.field("impressions", pa.int64(), nullable=False),
        pa.field("clicks", pa.int64(), nullable=False),
        pa.field("spend", pa.float64(), nullable=False),
        *_window_fields,
        pa.field("distinct_campaigns", pa.int64(), nullable=False),
        pa.field("distinct_domains", pa.int64(), nullable=False),
        pa.field("campaigns", pa.list_(pa.string()), nullable=False),
        pa.field("campaign_impressions", pa.list_(pa.int64()), nullable=False),
        pa.field("campaign_clicks", pa.list_(pa.int64()), nullable=False),
        pa.field("domains", pa.list_(pa.string()), nullable=False),
        pa.field("recent_hours", pa.list_(pa.int32()), nullable=False),
        pa.field("recent_impressions", pa.list_(pa.int64()), nullable=False),
        pa.field("recent_clicks", pa.list_(pa.int64()), nullable=False),
        pa.field("recent_spend", pa.list_(pa.float64()), nullable=False),
    ]
)


def stored_footer(store, hour_ms: int, lake_prefix: str = "lake") -> dict | None:
    """The schema metadata of hour `hour_ms`'s stored snapshot (its footer alone), None when
    not built."""
    return store.footer(snapshot_key(hour_ms, lake_prefix))


def snapshot_identity(store, hour_ms: int, lake_prefix: str = "lake") -> str | None:
    """The chain identity of hour `hour_ms`'s snapshot as stored, None when there is none (not
    built, or written by an older clicklake): a rebuild gives a new one."""
    return chain_link(stored_footer(store, hour_ms, lake_prefix))[0]


def snapshot_key(hour_ms: int, lake_prefix: str = "lake") -> str:
    """Key of the snapshot as of the END of hour `hour_ms` (partition `hour_ms`)."""
    return f"{lake_prefix}/profiles/user/{hive_hour_path(hour_ms)}/part-0.parquet"


# A refold of the snapshots after a rebuilt hour rewrites them one by one: one that died
# part-way left the rest folded on the old chain, and nothing said so. The refold writes this
# marker first and removes it once done; the chain's next run finishes what it finds marked.
def _refold_marker(lake_prefix: str) -> str:
    return f"{lake_prefix}/profiles/user_refold_pending.json"


def mark_refold(store: Store, from_hour_ms: int, lake_prefix: str = "lake") -> None:
    """Record that the snapshots from `from_hour_ms` on are about to be refolded."""
    held = pending_refold(store, lake_prefix)
    first = from_hour_ms if held is None else min(held, from_hour_ms)
    store.write_bytes(_refold_marker(lake_prefix), f'{{"from_hour_ms": {first}}}'.encode())


def pending_refold(store: Store, lake_prefix: str = "lake") -> int | None:
    """The first snapshot hour of a refold that did not finish, None when none is pending."""
    key = _refold_marker(lake_prefix)
    if not store.exists(key):
        return None
    return int(orjson.loads(store.read_bytes(key))["from_hour_ms"])


def clear_refold(store: Store, lake_prefix: str = "lake") -> None:
    store.delete(_refold_marker(lake_prefix))


def empty_snapshot(as_of_ms: int) -> pa.Table:
    return with_meta(SNAPSHOT_SCHEMA.empty_table(), as_of_ms, as_of_ms)


def with_meta(table: pa.Table, as_of_ms: int, history_start_ms: int) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta[META_AS_OF] = str(as_of_ms).encode()
    meta[META_HISTORY_START] = str(history_start_ms).encode()
    return table.replace_schema_metadata(meta)


def snapshot_as_of(table: pa.Table) -> int:
    """The instant a snapshot describes: it holds exactly the events with ts < this."""
    return int(table.schema.metadata[META_AS_OF])


def history_start(table: pa.Table) -> int:
    """Start of the history folded into a snapshot chain (events before it were never seen)."""
    return int(table.schema.metadata[META_HISTORY_START])


def _list_parts(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(row index of each element, flat values) of a list column."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    return parents, pc.list_flatten(arr)


def _merge_keyed(
    rows_a: np.ndarray, keys_a: pa.Array, counts_a: list[np.ndarray],
    rows_b: np.ndarray, keys_b: pa.Array, counts_b: list[np.ndarray], n_rows: int,
) -> tuple[pa.ListArray, list[pa.ListArray]]:
    """Union of two (row -> sorted key list) maps, summing the aligned count lists."""
    rows = np.concatenate([rows_a, rows_b])
    code, uniq = dense_codes(pa.concat_arrays([keys_a.cast(pa.string()), keys_b.cast(pa.string())]))
    nk = max(len(uniq), 1)
    ukey, inv = np.unique(rows * nk + code, return_inverse=True)
    out_rows = ukey // nk
    keys = nest(out_rows, n_rows, uniq.take(pa.array(ukey % nk)))
    sums = []
    for ca, cb in zip(counts_a, counts_b, strict=True):
        w = np.concatenate([ca, cb]).astype(np.float64)
        sums.append(nest(out_rows, n_rows, np.bincount(inv, weights=w, minlength=len(ukey))
                         .round().astype(np.int64)))
    return keys, sums


def _ts_array(a: np.ndarray) -> pa.Array:
    return pa.array(a, pa.int64(), mask=a == NULL_MS).cast(TS)


def fold_snapshot(prev: pa.Table | None, tile: pa.Table, hour_ms: int) -> pa.Table:
    """The snapshot as of the end of `hour_ms` from the previous one (any earlier end; None = empty
    history starting at `hour_ms`) and the tiles of `hour_ms`. Hours between the previous
    snapshot and `hour_ms` are taken as empty: fold their tiles first when they have events."""
    if prev is None:
        prev = empty_snapshot(hour_ms)
    if snapshot_as_of(prev) > hour_ms:
        raise ValueError(
            f"snapshot as of {snapshot_as_of(prev)} is later than the hour {hour_ms} being folded")
    start = history_start(prev)
    end = hour_ms + HOUR_MS
    tile = tile.select(TILE_SCHEMA.names)
    p_users = as_string_array(prev["user_id"])
    t_users = as_string_array(tile["user_id"])
    nt = tile.num_rows

    # Rows of users active in the hour: previous state (if any) merged with the tile.
    p_row = pc.index_in(t_users, value_set=p_users)
    has_p = pc.is_valid(p_row).to_numpy(zero_copy_only=False)
    p_idx = p_row.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    old = prev.take(pa.array(p_idx[has_p])) if prev.num_rows else prev.slice(0, 0)
    old_pos = np.flatnonzero(has_p)  # position in tile order of each `old` row

    def prev_num(name: str, fill) -> np.ndarray:
        out = np.full(nt, fill, dtype=np.float64 if name == "spend" else np.int64)
        if old.num_rows:
            vals = old[name].combine_chunks()
            if pa.types.is_timestamp(vals.type):
                out[old_pos] = ts_ms(vals)
            else:
                out[old_pos] = vals.to_numpy(zero_copy_only=False)
        return out

    def tile_num(name: str) -> np.ndarray:
        vals = tile[name].combine_chunks()
        if pa.types.is_timestamp(vals.type):
            return ts_ms(vals)
        return vals.to_numpy(zero_copy_only=False)

    cols: dict[str, pa.Array] = {"user_id": t_users}
    for name in ("impressions", "clicks", "spend"):
        cols[name] = pa.array(prev_num(name, 0) + tile_num(name))
    p_first = prev_num("first_ts", NULL_MS)
    cols["first_ts"] = _ts_array(np.where(p_first == NULL_MS, tile_num("first_ts"), p_first))
    for name in ("last_impression_ts", "last_click_ts"):
        cols[name] = _ts_array(np.maximum(prev_num(name, NULL_MS), tile_num(name)))

    def parts(table: pa.Table, name: str, pos: np.ndarray | None):
        rows, vals = _list_parts(table[name])
        return (pos[rows] if pos is not None else rows), vals

    o_rows, o_camp = parts(old, "campaigns", old_pos)
    t_rows, t_camp = parts(tile, "campaigns", None)
    o_ci = pc.list_flatten(old["campaign_impressions"].combine_chunks()).to_numpy(zero_copy_only=False)
    o_cc = pc.list_flatten(old["campaign_clicks"].combine_chunks()).to_numpy(zero_copy_only=False)
    t_ci = pc.list_flatten(tile["campaign_impressions"].combine_chunks()).to_numpy(
        zero_copy_only=False)
    t_cc = pc.list_flatten(tile["campaign_clicks"].combine_chunks()).to_numpy(zero_copy_only=False)
    camps, (ci, cc) = _merge_keyed(o_rows, o_camp, [o_ci, o_cc], t_rows, t_camp, [t_ci, t_cc], nt)
    cols["campaigns"], cols["campaign_impressions"], cols["campaign_clicks"] = camps, ci, cc
    o_drows, o_dom = parts(old, "domains", old_pos)
    t_drows, t_dom = parts(tile, "domains", None)
    cols["domains"], _ = _merge_keyed(o_drows, o_dom, [], t_drows, t_dom, [], nt)

    # Ring: the previous ring (all hours < hour_ms) then this hour, so it stays in hour order.
    hour_idx = hour_ms // HOUR_MS
    r_rows, r_hours = parts(old, "recent_hours", old_pos)
    ring_rows = np.concatenate([r_rows, np.arange(nt)])
    order = np.argsort(ring_rows, kind="stable")
    ring_vals = {
        "recent_hours": np.concatenate(
            [r_hours.to_numpy(zero_copy_only=False), np.full(nt, hour_idx)]).astype(np.int32),
        "recent_impressions": np.concatenate(
            [_flat_np(old, "recent_impressions"), tile_num("impressions")]),
        "recent_clicks": np.concatenate([_flat_np(old, "recent_clicks"), tile_num("clicks")]),
        "recent_spend": np.concatenate([_flat_np(old, "recent_spend"), tile_num("spend")]),
    }
    for name, vals in ring_vals.items():
        cols[name] = nest(ring_rows[order], nt, vals[order])

    names = [f.name for f in SNAPSHOT_SCHEMA if f.name in cols]
    touched = pa.Table.from_pydict({n: cols[n] for n in names}, schema=_subschema(names))
    untouched = prev.filter(pc.invert(pc.is_in(p_users, value_set=t_users)))
    merged = pa.concat_tables([untouched.select(names).cast(touched.schema), touched])
    merged = merged.take(pc.sort_indices(merged["user_id"]))
    return with_meta(_finish(merged, hour_idx), end, start)


def _subschema(names: list[str]) -> pa.Schema:
    return pa.schema([SNAPSHOT_SCHEMA.field(n) for n in names])


def _flat_np(table: pa.Table, name: str) -> np.ndarray:
    return pc.list_flatten(table[name].combine_chunks()).to_numpy(zero_copy_only=False)


def _finish(merged: pa.Table, hour_idx: int) -> pa.Table:
    """Trim the ring to the last RING_HOURS hours and evaluate the windows at the hour's end."""
    n = merged.num_rows
    rows, hours = _list_parts(merged["recent_hours"])
    hours = hours.to_numpy(zero_copy_only=False)
    keep = hours > hour_idx - RING_HOURS
    cols = {name: merged[name] for name in merged.column_names}
    for name in ("recent_hours", "recent_impressions", "recent_clicks", "recent_spend"):
        flat = _flat_np(merged, name)
        cols[name] = nest(rows[keep], n, flat[keep])
    k_rows, k_hours = rows[keep], hours[keep]
    flat = {m: _flat_np(merged, f"recent_{m}")[keep] for m in ("impressions", "clicks", "spend")}
    for w, width in WINDOWS_H.items():
        sel = k_hours > hour_idx - width
        for m, vals in flat.items():
            s = np.bincount(k_rows[sel], weights=vals[sel].astype(np.float64), minlength=n)
            cols[f"{m}_{w}"] = pa.array(s if m == "spend" else s.round().astype(np.int64))
    cols["distinct_campaigns"] = pc.list_value_length(merged["campaigns"]).cast(pa.int64())
    cols["distinct_domains"] = pc.list_value_length(merged["domains"]).cast(pa.int64())
    return pa.Table.from_pydict({f.name: cols[f.name] for f in SNAPSHOT_SCHEMA}, schema=SNAPSHOT_SCHEMA)


def bytes_per_user(n_bytes: int, n_users: int) -> float:
    return n_bytes / n_users if n_users else 0.0


# -- the snapshot chain carried in memory --------------------------------------------------------

_KEY_WIDTH = 1 << 24  # (user, campaign or domain) keys: user code * width + value code
_STATE_INT = ("impressions", "clicks", "distinct_campaigns", "distinct_domains")
_STATE_TS = ("first_ts", "last_impression_ts", "last_click_ts")
_RUNNING = {w: h for w, h in WINDOWS_H.items() if h > 1}  # 1h is the last hour's ring entry
# The snapshot columns a CarriedSnapshot is built from.
CARRIED_COLUMNS = ["user_id", *_STATE_INT, "spend", *_STATE_TS,
                   *(f"{m}_{w}" for w in _RUNNING for m in ("impressions", "clicks")),
                   "campaigns", "campaign_impressions", "campaign_clicks", "domains",
                   "recent_hours", "recent_impressions", "recent_clicks", "recent_spend"]


class CarriedSnapshot:
    """The values of user profile snapshot(H) that the hour after it reads, for every user, in
    memory on integer codes, carried hour to hour by the same fold as `fold_snapshot`:
    snapshot(H+1) = fold(snapshot(H), tiles(H+1)). A range of labeled hours then reads one
    snapshot and a small tile per hour instead of a whole snapshot per hour.

    Held: lifetime counters and times per user; (user, campaign) counts and (user, domain)
    pairs as sorted int64 keys; the recent-hours ring as one entry per hour (users, counts);
    the 24 h and 7 d impression and click windows as running sums (exact in integers). Spend
    windows are summed from the ring when asked, hour by hour in ascending order from zero,
    exactly as `_finish` sums them, so the floats are bit for bit the snapshot's."""

    def __init__(self, users: Interner, as_of_ms: int):
        self.users, self.as_of = users, as_of_ms
        # The identity of the stored snapshot this state equals (`chain_link`): "" for an empty
        # history, None when unknown. The caller keeps it as it reads and folds.
        self.chain_id: str | None = None
        self.campaigns, self.domains = Interner(), Interner()
        self.vals: dict[str, np.ndarray] = {n: np.zeros(0, np.int64) for n in _STATE_INT}
        self.vals.update({n: np.full(0, NULL_MS) for n in _STATE_TS})
        self.vals["spend"] = np.zeros(0, np.float64)
        for w in _RUNNING:
            self.vals[f"impressions_{w}"] = np.zeros(0, np.int64)
            self.vals[f"clicks_{w}"] = np.zeros(0, np.int64)
        self.pairs = _key_set(2)  # (user, campaign) -> impressions, clicks
        self.domain_set = _key_set(0)  # (user, domain)
        # hour index -> (user codes, impressions, clicks, spend) of that hour
        self.ring: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def _grow(self) -> None:
        n = len(self.users)
        have = len(self.vals["impressions"])
        if n <= have:
            return
        extra = n - have + max(n // 2, 1024)
        for name, v in self.vals.items():
            fill = NULL_MS if name in _STATE_TS else 0
            self.vals[name] = pooled(np.concatenate([v, np.full(extra, fill, v.dtype)]))

    @classmethod
    def from_snapshot(cls, snapshot: pa.Table, users: Interner) -> CarriedSnapshot:
        """The state of a snapshot read whole (SNAPSHOT_SCHEMA)."""
        return cls.from_snapshot_parts([snapshot], snapshot_as_of(snapshot), users)

    @classmethod
    def from_snapshot_parts(cls, parts, as_of_ms: int, users: Interner) -> CarriedSnapshot:
        """The state of a snapshot as of `as_of_ms` given as consecutive slices of its rows
        (e.g. its row groups, SNAPSHOT_SCHEMA columns `CARRIED_COLUMNS` at least): only one
        slice and the flat (user, value) keys are held at a time, not the whole table."""
        state = cls(users, as_of_ms)
        pair_keys, pair_counts, dom_keys = [], [[], []], []
        ring_hours, ring_codes, ring_vals = [], [], [[], [], []]
        for part in parts:
            code = users.codes(part["user_id"])
            state._grow()
            for name in (*_STATE_INT, "spend", *_STATE_TS,
                         *(f"{m}_{w}" for w in _RUNNING for m in ("impressions", "clicks"))):
                col = part[name].combine_chunks()
                state.vals[name][code] = (ts_ms(col) if pa.types.is_timestamp(col.type)
                                          else col.to_numpy(zero_copy_only=False))
            rows, camps = _list_parts(part["campaigns"])
            pair_keys.append(code[rows] * _KEY_WIDTH + state.campaigns.codes(camps))
            for out, c in zip(pair_counts, ("campaign_impressions", "campaign_clicks"),
                              strict=True):
                out.append(_flat_np(part, c))
            rows, doms = _list_parts(part["domains"])
            dom_keys.append(code[rows] * _KEY_WIDTH + state.domains.codes(doms))
            rows, hours = _list_parts(part["recent_hours"])
            ring_hours.append(hours.to_numpy(zero_copy_only=False).astype(np.int64))
            ring_codes.append(code[rows])
            for out, m in zip(ring_vals, ("impressions", "clicks", "spend"), strict=True):
                out.append(_flat_np(part, f"recent_{m}"))
            del part, code, rows, camps, doms, hours
        state._grow()

        def joined(arrays: list[np.ndarray], dtype) -> np.ndarray:
            return np.concatenate(arrays) if arrays else np.zeros(0, dtype)

        state.pairs = _key_set_of(joined(pair_keys, np.int64),
                                 [joined(c, np.int64) for c in pair_counts])
        del pair_keys, pair_counts
        state.domain_set = _key_set_of(joined(dom_keys, np.int64), [])
        del dom_keys
        hours, codes = joined(ring_hours, np.int64), joined(ring_codes, np.int64)
        flat = [joined(v, np.float64 if i == 2 else np.int64) for i, v in enumerate(ring_vals)]
        del ring_hours, ring_codes, ring_vals
        order = np.argsort(hours, kind="stable")
        hours, codes, flat = hours[order], codes[order], [f[order] for f in flat]
        bounds = np.flatnonzero(np.diff(hours)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(hours)], strict=True):
            if hi > lo:
                state.ring[int(hours[lo])] = _ring_entry(codes[lo:hi],
                                                         *(f[lo:hi] for f in flat))
        state._check_width()
        return state

    def _check_width(self) -> None:
        if max(len(self.campaigns), len(self.domains)) >= _KEY_WIDTH or (
                len(self.users) + 1) * _KEY_WIDTH >= 2**62:
            raise ValueError("too many distinct users, campaigns or domains for carried keys")

    def fold(self, tile: pa.Table, hour_ms: int, codes: np.ndarray | None = None) -> None:
        """Fold the tiles of the hour right after the state (as `fold_snapshot` does).
        `codes`: the tile's user codes in `users`, when the caller has them already."""
        if hour_ms != self.as_of:
            raise ValueError(f"the state is as of {self.as_of}: cannot fold hour {hour_ms}")
        code = self.users.codes(tile["user_id"]) if codes is None else codes
        self._grow()
        v = self.vals

        def col(name: str) -> np.ndarray:
            c = tile[name].combine_chunks()
            return ts_ms(c) if pa.types.is_timestamp(c.type) else c.to_numpy(zero_copy_only=False)

        imps, clks, spend = col("impressions"), col("clicks"), col("spend").astype(np.float64)
        v["impressions"][code] += imps
        v["clicks"][code] += clks
        v["spend"][code] = v["spend"][code] + spend  # prev + tile, the fold's own addition
        first = v["first_ts"][code]
        v["first_ts"][code] = np.where(first == NULL_MS, col("first_ts"), first)
        for name in ("last_impression_ts", "last_click_ts"):
            v[name][code] = np.maximum(v[name][code], col(name))

        rows, camps = _list_parts(tile["campaigns"])
        key = code[rows] * _KEY_WIDTH + self.campaigns.codes(camps)
        counts = [pc.list_flatten(tile[c].combine_chunks()).to_numpy(zero_copy_only=False)
                  for c in ("campaign_impressions", "campaign_clicks")]
        new = self.pairs.upsert(key, counts)
        if new.any():
            v["distinct_campaigns"] += np.bincount(code[rows[new]],
                                                   minlength=len(v["distinct_campaigns"]))
        rows, doms = _list_parts(tile["domains"])
        key = code[rows] * _KEY_WIDTH + self.domains.codes(doms)
        new = self.domain_set.upsert(key, [])
        if new.any():
            v["distinct_domains"] += np.bincount(code[rows[new]],
                                                 minlength=len(v["distinct_domains"]))
        self._check_width()

        hour = hour_ms // HOUR_MS
        self.ring[hour] = _ring_entry(code, imps, clks, spend)
        for w, width in _RUNNING.items():
            v[f"impressions_{w}"][code] += imps
            v[f"clicks_{w}"][code] += clks
            gone = self.ring.get(hour - width)
            if gone is not None:
                v[f"impressions_{w}"][gone[0]] -= gone[1]
                v[f"clicks_{w}"][gone[0]] -= gone[2]
        for h in [h for h in self.ring if h <= hour - RING_HOURS]:
            del self.ring[h]
        self.as_of = hour_ms + HOUR_MS

    def windows(self, codes: np.ndarray) -> dict[str, np.ndarray]:
        """The snapshot's `{impressions,clicks,spend}_{1h,24h,7d}` of users `codes`."""
        last = self.as_of // HOUR_MS - 1
        out = {}
        for w, width in WINDOWS_H.items():
            hours = sorted(h for h in self.ring if h > last - width)
            spend = np.zeros(len(self.vals["spend"]))
            add = hashtables._hashkeys.scatter_add if hashtables.NATIVE else _scatter_add
            for h in hours:  # ascending from zero: `_finish`'s own order of additions
                add(spend, self.ring[h][0], self.ring[h][3])
            out[f"spend_{w}"] = spend[codes]
            if w in _RUNNING:
                for m in ("impressions", "clicks"):
                    out[f"{m}_{w}"] = self.vals[f"{m}_{w}"][codes]
        for j, m in ((1, "impressions"), (2, "clicks")):
            one = np.zeros(len(self.vals["spend"]), np.int64)
            if last in self.ring:
                one[self.ring[last][0]] = self.ring[last][j]
            out[f"{m}_1h"] = one[codes]
        return out

    def values(self, user_ids: pa.Array, codes: np.ndarray | None = None
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(user codes, every SNAPSHOT_SCHEMA scalar of those users); users never seen are
        zeros and null times (NULL_MS), as a user missing from the snapshot. `codes`: those
        users' codes, when the caller has interned them already."""
        code = self.users.codes(user_ids) if codes is None else codes
        self._grow()
        out = {name: self.vals[name][code] for name in (*_STATE_INT, "spend", *_STATE_TS)}
        out.update(self.windows(code))
        return code, out

    def campaign_counts(self, user_codes: np.ndarray, campaign_codes: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Per (user code, campaign code): (impressions, clicks) held (0 when absent)."""
        key, ok = self._keys(user_codes, campaign_codes)
        return tuple(self.pairs.find(key, ok)[1])

    def has_pairs(self, kind: str, user_codes: np.ndarray, value_codes: np.ndarray
                  ) -> np.ndarray:
        """Whether the state's set `kind` ("campaigns" or "domains") holds each (user code,
        value code of that kind's interner)."""
        key, ok = self._keys(user_codes, value_codes)
        return (self.pairs if kind == "campaigns" else self.domain_set).find(key, ok)[0]

    @staticmethod
    def _keys(user_codes: np.ndarray, value_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = (user_codes >= 0) & (value_codes >= 0)
        return np.where(ok, user_codes * _KEY_WIDTH + value_codes, -1), ok


def _scatter_add(target: np.ndarray, idx: np.ndarray, vals: np.ndarray) -> None:
    target[idx] += vals  # the indices of a ring hour are distinct


def _ring_entry(codes: np.ndarray, imps: np.ndarray, clicks: np.ndarray, spend: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One hour of the ring: user codes and counts as int32 (an hour's count of one user fits
    easily; checked), spend as float64 - the ring is most of the state's memory."""
    for a in (codes, imps, clicks):
        if len(a) and (int(a.max()) > np.iinfo(np.int32).max or int(a.min()) < 0):
            raise ValueError("a ring entry does not fit in 32 bits")
    return (pooled(codes, np.int32), pooled(imps, np.int32), pooled(clicks, np.int32),
            pooled(spend, np.float64))


def _key_set(n_counts: int):
    """An empty set of carried keys: on the C hash table when built, else sorted arrays."""
    return hashtables.KeyCounts(n_counts) if hashtables.NATIVE else _KeySet(n_counts)


def _key_set_of(keys: np.ndarray, counts: list[np.ndarray]):
    return (hashtables.KeyCounts if hashtables.NATIVE else _KeySet).of(keys, counts)


class _KeySet:
    """A set of int64 keys with aligned int64 counts, in two sorted parts: a large main part
    whose counts change in place, and a small part new keys go to, merged into the main one
    only once it has grown to an eighth of it - so an hour adds its keys without rewriting
    every key held."""

    def __init__(self, n_counts: int):
        self.parts = [(np.zeros(0, np.int64), [np.zeros(0, np.int64)] * n_counts),
                      (np.zeros(0, np.int64), [np.zeros(0, np.int64)] * n_counts)]

    def __len__(self) -> int:
        return len(self.parts[0][0]) + len(self.parts[1][0])

    @classmethod
    def of(cls, keys: np.ndarray, counts: list[np.ndarray]) -> _KeySet:
        """The set of `keys` (distinct) with their counts."""
        out = cls(len(counts))
        # Snapshot rows come sorted by user, so keys are nearly sorted: a stable sort (timsort
        # for int64) runs through them far faster than quicksort.
        order = np.argsort(keys, kind="stable")
        out.parts[0] = (pooled(keys[order]), [pooled(c[order], np.int64) for c in counts])
        return out

    def _locate(self, keys: np.ndarray) -> tuple[np.ndarray, list]:
        """(the order sorting `keys`, per part: (position of each key there, whether it is
        there) or None for an empty part). Needles are sorted once for both parts: binary
        searches over sorted needles stay in cache and run several times faster."""
        order = np.argsort(keys)
        needles = keys[order]
        found = []
        for sorted_keys, _ in self.parts:
            if not len(sorted_keys) or not len(keys):
                found.append(None)
                continue
            pos = np.empty(len(keys), np.int64)
            pos[order] = np.searchsorted(sorted_keys, needles)
            np.minimum(pos, len(sorted_keys) - 1, out=pos)
            found.append((pos, sorted_keys[pos] == keys))
        return order, found

    def find(self, keys: np.ndarray, ok: np.ndarray | None = None
             ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(whether each key is held, its counts: 0 when not)."""
        hit = np.zeros(len(keys), bool)
        counts = [np.zeros(len(keys), np.int64) for _ in self.parts[0][1]]
        for (_, part_counts), located in zip(self.parts, self._locate(keys)[1], strict=True):
            if located is None:
                continue
            pos, here = located
            if ok is not None:
                here &= ok
            hit |= here
            for c, pc_ in zip(counts, part_counts, strict=True):
                c[here] = pc_[pos[here]]
        return hit, counts

    def upsert(self, keys: np.ndarray, add: list[np.ndarray]) -> np.ndarray:
        """Add `keys` (distinct), summing `add` into their counts; returns which were new."""
        add = [np.asarray(a, np.int64) for a in add]
        new = np.ones(len(keys), bool)
        order, found = self._locate(keys)
        for (_, part_counts), located in zip(self.parts, found, strict=True):
            if located is None:
                continue
            pos, here = located
            new &= ~here
            for c, a in zip(part_counts, add, strict=True):
                c[pos[here]] += a[here]
        order = order[new[order]]  # the new keys, sorted
        fresh_keys, fresh_add = keys[order], [a[order] for a in add]
        small_keys, small_counts = self.parts[1]
        at = np.searchsorted(small_keys, fresh_keys)
        small = (np.insert(small_keys, at, fresh_keys),
                 [np.insert(c, at, a) for c, a in zip(small_counts, fresh_add, strict=True)])
        if len(small[0]) * 8 > len(self.parts[0][0]):
            main_keys, main_counts = self.parts[0]
            at = np.searchsorted(main_keys, small[0])
            self.parts = [(pooled_insert(main_keys, at, small[0]),
                           [pooled_insert(c, at, a) for c, a in zip(main_counts, small[1],
                                                                     strict=True)]),
                          (np.zeros(0, np.int64), [np.zeros(0, np.int64)] * len(add))]
        else:
            self.parts[1] = small
        return new
