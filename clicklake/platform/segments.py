"""Segment profiles: impressions, clicks and CTR per country, per campaign and overall, over the
24 h sawtooth window (DESIGN §4.3), as of the end of each hour and as of any instant.

Country of a click. A click carries no IP, so it takes the country of its impression: the
impression with the click's `impression_id` when that impression lies in the click's hour or the
hour before; otherwise the user's latest impression with ts < click ts in those two hours;
otherwise "unknown". The one-hour look-back covers the 15-minute label window with room to spare
and keeps an hour's segment tile a function of two raw hours only.

Kinds are "global" (segment "all"), "country", "campaign" and "domain". An impression's country
comes from its IP via enrichment ("unknown" when absent); the functions here take it as an input
column. A click's domain, like its country, is that of the impression found by the rule above
(a missing domain is "unknown").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.platform import hashtables
from clicklake.platform.enrich import countries
from clicklake.platform.events import SPECS, TS
from clicklake.platform.raw import raw_key, read_raw
from clicklake.platform.storage import Store
from clicklake.platform.tiles import as_string_array, lex_order, ts_ms
from clicklake.platform.timeutil import HOUR_MS, hive_hour_path, iso

UNKNOWN = "unknown"
WINDOW_HOURS = 24
KINDS = ("global", "country", "campaign", "domain")

SEGMENT_EVENT_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("segment", pa.string(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("impressions", pa.int64(), nullable=False),
        pa.field("clicks", pa.int64(), nullable=False),
    ]
)
SEGMENT_PROFILE_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("segment", pa.string(), nullable=False),
        pa.field("hour", TS, nullable=False),
        pa.field("hour_impressions", pa.int64(), nullable=False),  # this hour only
        pa.field("hour_clicks", pa.int64(), nullable=False),
        pa.field("impressions_24h", pa.int64(), nullable=False),  # window at the end of the hour
        pa.field("clicks_24h", pa.int64(), nullable=False),
        pa.field("ctr_24h", pa.float64()),  # null when no impressions
    ]
)
SEGMENT_AS_OF_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("segment", pa.string()),
        pa.field("t", TS, nullable=False),
        pa.field("impressions_24h", pa.int64(), nullable=False),
        pa.field("clicks_24h", pa.int64(), nullable=False),
        pa.field("ctr_24h", pa.float64()),
    ]
)


def segment_key(hour_ms: int, lake_prefix: str = "lake") -> str:
    return f"{lake_prefix}/profiles/segment/{hive_hour_path(hour_ms)}/part-0.parquet"


def _countries_at(rows: np.ndarray, country_of_rows) -> pa.Array:
    result = np.full(len(rows), UNKNOWN, dtype=object)
    found = rows >= 0
    if found.any():
        result[found] = np.asarray(country_of_rows(rows[found]).to_pylist(), dtype=object)
    return pa.array(result, pa.string())


def click_impression_rows(clicks: pa.Table, impressions: pa.Table) -> np.ndarray:
    """Per click, the row of `impressions` whose country it takes (module docstring), -1 for
    none."""
    n = clicks.num_rows
    out = np.full(n, -1, dtype=np.int64)  # index into impressions
    if n == 0 or impressions.num_rows == 0:
        return out
    c_ms, i_ms = ts_ms(clicks["ts"]), ts_ms(impressions["ts"])
    lo = c_ms - c_ms % HOUR_MS - HOUR_MS
    hi = c_ms - c_ms % HOUR_MS + HOUR_MS
    imp_ids = as_string_array(impressions["impression_id"])

    # 1. by impression id, within the allowed hours. Clicks are few: hash their ids and keep the
    # impressions they name (in order, so the first of duplicate ids still wins).
    c_ids = as_string_array(clicks["impression_id"])
    cand = np.flatnonzero(pc.is_in(imp_ids, value_set=c_ids).to_numpy(zero_copy_only=False))
    by_id = pc.index_in(c_ids, value_set=imp_ids.take(pa.array(cand)))
    j = by_id.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    j = np.where(j >= 0, cand[np.maximum(j, 0)] if len(cand) else -1, -1)
    ok = j >= 0
    jt = i_ms[np.maximum(j, 0)]
    ok &= (jt >= lo) & (jt < hi)
    out[ok] = j[ok]

    # 2. the user's latest earlier impression in those hours (ties: the largest id), searched
    # among the impressions of the users of the clicks still unresolved only.
    rest = np.flatnonzero(~ok)
    if len(rest):
        c_users = as_string_array(clicks["user_id"]).take(pa.array(rest))
        i_users = as_string_array(impressions["user_id"])
        sub = np.flatnonzero(pc.is_in(i_users, value_set=c_users).to_numpy(zero_copy_only=False))
        if not len(sub):
            return out
        users = pa.concat_arrays([i_users.take(pa.array(sub)), c_users])
        codes = pc.dictionary_encode(users).indices.to_numpy(zero_copy_only=False).astype(
            np.int64)
        iu, cu = codes[: len(sub)], codes[len(sub):]
        s_ids, s_ms = imp_ids.take(pa.array(sub)), i_ms[sub]
        id_rank = np.empty(len(sub), np.int64)
        id_rank[pc.sort_indices(s_ids).to_numpy()] = np.arange(len(sub))
        order = lex_order(iu, s_ms, id_rank)
        r_ms, r_lo = c_ms[rest], lo[rest]
        base = int(min(s_ms.min(), r_lo.min()))
        span = int(max(s_ms.max(), r_ms.max()) - base + 2)
        key = iu[order] * span + (s_ms[order] - base)
        last = np.searchsorted(key, cu * span + (r_ms - base), side="left") - 1
        first = np.searchsorted(key, cu * span + (r_lo - base), side="left")
        has = last >= first
        out[rest[has]] = sub[order[last[has]]]
    return out


@dataclass
class HourCarry:
    """Raw inputs of an hour's segment events that a caller walking hours in order already
    holds: the hour before's impressions (at least `CLICK_COUNTRY_COLUMNS`, None = read them)
    with their countries, and the hour's clicks (None = read them)."""

    previous: pa.Table | None = None
    previous_countries: pa.Array | None = None
    clicks: pa.Table | None = None


# Segment events of one hour, one entry per kind: (segment, ts ms, impressions, clicks), each
# impression then each click once.
EventParts = dict[str, tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray]]


def _event_parts(impressions: pa.Table, impression_countries: pa.Array, clicks: pa.Table,
                 click_country: pa.Array, click_domain: pa.Array | None = None) -> EventParts:
    ni, nc = impressions.num_rows, clicks.num_rows
    if click_domain is None:
        click_domain = pa.nulls(nc, pa.string())
    ms = np.concatenate([ts_ms(impressions["ts"]), ts_ms(clicks["ts"])])
    imp = np.r_[np.ones(ni, np.int64), np.zeros(nc, np.int64)]
    clk = np.r_[np.zeros(ni, np.int64), np.ones(nc, np.int64)]
    segs = {
        "global": pa.repeat("all", ni + nc),
        "country": pa.concat_arrays([as_string_array(impression_countries).fill_null(UNKNOWN),
                                     as_string_array(click_country).fill_null(UNKNOWN)]),
        "campaign": pa.concat_arrays([as_string_array(impressions["campaign_id"]),
                                      as_string_array(clicks["campaign_id"])]),
        "domain": pa.concat_arrays([as_string_array(impressions["domain"]).fill_null(UNKNOWN),
                                    as_string_array(click_domain).fill_null(UNKNOWN)]),
    }
    return {kind: (seg, ms, imp, clk) for kind, seg in segs.items()}


def _events_table(parts: EventParts) -> pa.Table:
    return pa.concat_tables([pa.Table.from_arrays(
        [pa.repeat(kind, len(ms)), seg, pa.array(ms, pa.int64()), pa.array(imp), pa.array(clk)],
        schema=SEGMENT_EVENT_SCHEMA) for kind, (seg, ms, imp, clk) in parts.items()])


def _parts_of_table(events: pa.Table) -> EventParts:
    kinds = as_string_array(events["kind"])
    parts = {}
    for kind in pc.unique(kinds).to_pylist():
        ev = events.filter(pc.equal(kinds, kind))
        parts[kind] = (as_string_array(ev["segment"]), ts_ms(ev["ts"]),
                       ev["impressions"].to_numpy(), ev["clicks"].to_numpy())
    return parts


def _ctr(imps: np.ndarray, clicks: np.ndarray) -> pa.Array:
    with np.errstate(divide="ignore", invalid="ignore"):
        ctr = clicks / imps
    return pa.array(ctr, pa.float64(), mask=imps == 0)


def segment_profile(events_hour: pa.Table, previous_hours: list[pa.Table], hour_ms: int) -> pa.Table:
    """The segment profile as of the end of `hour_ms`: this hour's counts (from its segment
    events) and the 24 h window, adding the `hour_*` counts of earlier segment profiles
    (those of hours H-23..H-1; others are ignored, missing ones count as empty)."""
    hour = events_hour.filter(pc.and_(pc.greater_equal(events_hour["ts"], hour_ms),
                                      pc.less(events_hour["ts"], hour_ms + HOUR_MS)))
    own = hour.group_by(["kind", "segment"]).aggregate(
        [("impressions", "sum"), ("clicks", "sum")]).rename_columns(
        ["kind", "segment", "hour_impressions", "hour_clicks"])
    earlier = []
    for p in previous_hours:
        h = ts_ms(p["hour"])
        keep = (h >= hour_ms - (WINDOW_HOURS - 1) * HOUR_MS) & (h < hour_ms)
        earlier.append(p.filter(pa.array(keep)).select(["kind", "segment", "hour_impressions",
                                                        "hour_clicks"]))
    both = pa.concat_tables([own.cast(earlier[0].schema) if earlier else own, *earlier])
    win = both.group_by(["kind", "segment"]).aggregate(
        [("hour_impressions", "sum"), ("hour_clicks", "sum")])
    joined = win.join(own, ["kind", "segment"], join_type="left outer")
    imps = joined["hour_impressions_sum"].to_numpy().astype(np.int64)
    clks = joined["hour_clicks_sum"].to_numpy().astype(np.int64)
    table = pa.Table.from_arrays(
        [joined["kind"], joined["segment"],
         pa.array(np.full(joined.num_rows, hour_ms), pa.int64()).cast(TS),
         joined["hour_impressions"].fill_null(0).cast(pa.int64()),
         joined["hour_clicks"].fill_null(0).cast(pa.int64()),
         pa.array(imps), pa.array(clks), _ctr(imps, clks)],
        schema=SEGMENT_PROFILE_SCHEMA)
    return table.take(pc.sort_indices(table, [("kind", "ascending"), ("segment", "ascending")]))


def segments_as_of(previous: pa.Table | None, events: pa.Table, kinds: pa.Array | list[str],
                   segments: pa.Array | list[str], ts: np.ndarray | list[int]) -> pa.Table:
    """24 h counts of (kind, segment) pairs at instants t, all in one hour F, in input order.

    `previous` is the segment profile of hour F-1 (its window = the 24 complete hours before F;
    None = nothing happened then); `events` are segment events holding at least [F, max t)."""
    kinds = as_string_array(pa.array(kinds, pa.string()) if isinstance(kinds, list) else kinds)
    segs = as_string_array(pa.array(segments, pa.string()) if isinstance(segments, list)
                           else segments)
    t = np.asarray(ts, dtype=np.int64)
    if not len(t):
        return SEGMENT_AS_OF_SCHEMA.empty_table()
    return _as_of_hour(previous, _parts_of_table(events.combine_chunks()), kinds, segs, t)


def _as_of_hour(previous: pa.Table | None, parts: EventParts, kinds: pa.Array | str,
                segs: pa.Array, t: np.ndarray) -> pa.Table:
    """`segments_as_of` over events split by kind; `kinds` may be one kind for every instant."""
    n = len(t)
    f = int(t.min() - t.min() % HOUR_MS)
    if int(t.max() - t.max() % HOUR_MS) != f:
        raise ValueError("segments_as_of takes instants of one hour; group them first")
    imps, clks = np.zeros(n, np.int64), np.zeros(n, np.int64)
    if isinstance(kinds, str):
        groups = [(kinds, None)]
        kinds = pa.repeat(kinds, n)
    else:
        groups = [(k, np.flatnonzero(pc.equal(kinds, k).to_numpy(zero_copy_only=False)))
                  for k in pc.unique(kinds).to_pylist()]
    p_kinds = as_string_array(previous["kind"]) if previous is not None else None
    for kind, sel in groups:
        q_seg, q_t = (segs, t) if sel is None else (segs.take(pa.array(sel)), t[sel])
        prev = (previous.filter(pc.equal(p_kinds, kind))
                if previous is not None and previous.num_rows else None)
        i, c = _kind_as_of(prev, parts.get(kind), q_seg, q_t, f)
        if sel is None:
            imps, clks = i, c
        else:
            imps[sel], clks[sel] = i, c
    return pa.Table.from_arrays(
        [kinds, segs, pa.array(t, pa.int64()).cast(TS), pa.array(imps), pa.array(clks),
         _ctr(imps, clks)], schema=SEGMENT_AS_OF_SCHEMA)


def _kind_as_of(prev: pa.Table | None, part, q_seg: pa.Array, t: np.ndarray, f: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(impressions, clicks) over 24 h of one kind's segments at instants t of hour f: the
    previous profile's window plus the events in [f, t), on integer segment codes."""
    n = len(t)
    seg, ms, imp, clk = part if part is not None else (
        pa.array([], pa.string()), np.zeros(0, np.int64), np.zeros(0, np.int64),
        np.zeros(0, np.int64))
    # A null segment asked for is "" (it matches nothing an event or profile names otherwise).
    q_seg, seg = q_seg.fill_null("").cast(pa.string()), seg.cast(pa.string())
    span = HOUR_MS + 1
    own = (len(seg) >= n and np.array_equal(ms[:n], t) and bool((ms >= f).all())
           and bool((ms - f < span).all()) and seg.slice(0, n).equals(q_seg))
    if own:
        # The instants are the hour's own impressions, the first events: encoding the events
        # alone gives the same dictionary, in the same order, as encoding both; and each
        # instant's searches below land on its own event's sorted position.
        enc = pc.dictionary_encode(seg)
        ecode = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        qcode = ecode[:n]
    else:
        enc = pc.dictionary_encode(pa.concat_arrays([q_seg, seg]))
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        qcode, ecode = codes[:n], codes[n:]
        keep = (ms >= f) & (ms < int(t.max()))
        if not keep.all():
            ecode, ms, imp, clk = ecode[keep], ms[keep], imp[keep], clk[keep]
    if hashtables.NATIVE:  # one walk in time order (the numpy searches below otherwise)
        imps, clks = hashtables.sums_as_of(qcode, t, ecode, ms, imp, clk, len(enc.dictionary))
        return _plus_previous(prev, enc, qcode, imps, clks)
    key = ecode * span + (ms - f)
    order = np.argsort(key)  # ties need no order: a search counts all of a key or none
    key = key[order]
    cum_i = np.r_[0, np.cumsum(imp[order])]
    cum_c = np.r_[0, np.cumsum(clk[order])]
    if own:
        # searchsorted(key, instant's key) is the first sorted position of its own event's
        # key, searchsorted(key, segment * span) the first of its segment's: both by one
        # pass over the sorted keys, none of the searches. (Events at or after an instant
        # sort after it within its segment, so they need not be dropped.)
        at = np.arange(len(key))
        first_key = np.maximum.accumulate(np.where(np.r_[True, key[1:] != key[:-1]], at, 0))
        seg_sorted = key // span
        first_seg = np.maximum.accumulate(
            np.where(np.r_[True, seg_sorted[1:] != seg_sorted[:-1]], at, 0))
        where = np.empty(len(key), np.int64)
        where[order] = at
        lo, hi = first_seg[where[:n]], first_key[where[:n]]
    else:
        # Binary searches run far faster over sorted needles: search in (segment, t) order.
        q_key = qcode * span + (t - f)
        q_order = np.argsort(q_key)
        lo, hi = np.empty(n, np.int64), np.empty(n, np.int64)
        lo[q_order] = np.searchsorted(key, (qcode * span)[q_order], side="left")
        hi[q_order] = np.searchsorted(key, q_key[q_order], side="left")
    return _plus_previous(prev, enc, qcode, cum_i[hi] - cum_i[lo], cum_c[hi] - cum_c[lo])


def _plus_previous(prev: pa.Table | None, enc: pa.DictionaryArray, qcode: np.ndarray,
                   imps: np.ndarray, clks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hour's counts plus the previous profile's 24 h window of each query's segment."""
    if prev is not None and prev.num_rows:
        # Look up the distinct segments asked for, not every instant.
        j = pc.index_in(enc.dictionary, value_set=as_string_array(prev["segment"])).fill_null(
            -1).to_numpy(zero_copy_only=False).astype(np.int64)
        has = j >= 0
        p_i = np.where(has, prev["impressions_24h"].to_numpy()[np.maximum(j, 0)], 0)
        p_c = np.where(has, prev["clicks_24h"].to_numpy()[np.maximum(j, 0)], 0)
        imps, clks = imps + p_i[qcode], clks + p_c[qcode]
    return imps.astype(np.int64), clks.astype(np.int64)


# -- over the lake -------------------------------------------------------------------------------


def hour_segment_events(store: Store, hour_ms: int, lake_prefix: str = "lake",
                        impressions: pa.Table | None = None,
                        impression_countries: pa.Array | None = None) -> pa.Table:
    """Segment events of one hour from its raw tables (and the hour before, for click countries).

    A caller that already holds the hour's raw impressions (and their countries) passes them, so
    they are neither read nor enriched again. Countries of the hour before are looked up only
    for the impressions that clicks take theirs from."""
    return _events_table(_hour_event_parts(store, hour_ms, lake_prefix, impressions,
                                           impression_countries))


# The impression columns a click's country and domain are found from.
CLICK_COUNTRY_COLUMNS = ["impression_id", "ts", "user_id", "ip", "domain"]


def _hour_event_parts(store: Store, hour_ms: int, lake_prefix: str = "lake",
                      impressions: pa.Table | None = None,
                      impression_countries: pa.Array | None = None,
                      carried: HourCarry | None = None) -> EventParts:
    cols = CLICK_COUNTRY_COLUMNS
    prev_key = raw_key("impressions", hour_ms - HOUR_MS, lake_prefix)
    if carried is not None and carried.previous is not None:
        imp_prev = carried.previous.select(cols)
    else:
        imp_prev = (store.parquet_file(prev_key).read(cols, use_threads=False)
                    if store.exists(prev_key)
                    else SPECS["impressions"].schema.empty_table().select(cols))
    imp = impressions if impressions is not None else read_raw(
        store, "impressions", hour_ms, lake_prefix, missing_ok=True)
    clk = carried.clicks if carried is not None and carried.clicks is not None else read_raw(
        store, "clicks", hour_ms, lake_prefix, missing_ok=True)
    own = (as_string_array(impression_countries) if impression_countries is not None
           else countries(imp["ip"]))
    prev_countries = (carried.previous_countries if carried is not None
                      and carried.previous is not None else None)
    both = pa.concat_tables([imp_prev, imp.select(cols).cast(imp_prev.schema)])
    rows = click_impression_rows(clk, both)
    n_prev = imp_prev.num_rows

    def country_of_rows(idx: np.ndarray) -> pa.Array:
        out = np.empty(len(idx), dtype=object)
        early = idx < n_prev
        if early.any() and prev_countries is not None:  # enriched with the hour before
            out[early] = np.asarray(prev_countries.take(pa.array(idx[early])).to_pylist(),
                                    dtype=object)
        elif early.any():
            out[early] = np.asarray(countries(both["ip"].combine_chunks().take(
                pa.array(idx[early]))).to_pylist(), dtype=object)
        if (~early).any():
            out[~early] = np.asarray(own.take(pa.array(idx[~early] - n_prev)).to_pylist(),
                                     dtype=object)
        return pa.array(out, pa.string())

    domains = both["domain"].combine_chunks()
    return _event_parts(imp, own, clk, _countries_at(rows, country_of_rows),
                        _countries_at(rows, lambda idx: domains.take(pa.array(idx)).fill_null(
                            UNKNOWN)))


def read_segment_profile(store: Store, hour_ms: int, lake_prefix: str = "lake") -> pa.Table | None:
    key = segment_key(hour_ms, lake_prefix)
    # One thread: Arrow's reader threads cost more CPU than they save on a small file.
    return store.parquet_file(key).read(use_threads=False) if store.exists(key) else None


def segments_as_of_lake(store: Store, kinds: list[str] | pa.Array, segments: list[str] | pa.Array,
                        ts: np.ndarray | list[int], lake_prefix: str = "lake") -> pa.Table:
    """24 h segment counts at any instants: the profile of the hour before each t plus the
    events of t's hour up to t. Raises LookupError when that profile was never built."""
    kinds = as_string_array(pa.array(kinds, pa.string()) if isinstance(kinds, list) else kinds)
    segs = as_string_array(pa.array(segments, pa.string()) if isinstance(segments, list)
                           else segments)
    return _as_of_lake(store, {"": (kinds, segs)}, ts, lake_prefix)[""]


def segments_as_of_lake_kinds(store: Store, segment_of: dict[str, pa.Array],
                              ts: np.ndarray | list[int], lake_prefix: str = "lake",
                              impressions: pa.Table | None = None,
                              impression_countries: pa.Array | None = None,
                              carried: HourCarry | None = None) -> dict[str, pa.Table]:
    """`segments_as_of_lake` for several kinds at the same instants ({kind: segment per
    instant} -> {kind: table}), reading and enriching each hour's events once for all kinds.
    `impressions` (with `impression_countries`) may be the raw impressions of the instants'
    hour, when they all lie in one hour and the caller holds them already, and then `carried`
    what else of that hour's inputs it holds."""
    asked = {kind: (kind, as_string_array(pa.array(seg, pa.string()) if isinstance(seg, list)
                                          else seg)) for kind, seg in segment_of.items()}
    return _as_of_lake(store, asked, ts, lake_prefix, impressions, impression_countries, carried)


def _as_of_lake(store: Store, asked: dict[str, tuple[pa.Array | str, pa.Array]], ts,
                lake_prefix: str, impressions: pa.Table | None = None,
                impression_countries: pa.Array | None = None,
                carried: HourCarry | None = None) -> dict[str, pa.Table]:
    """{key: (kinds, or one kind for all, segments)} -> {key: SEGMENT_AS_OF_SCHEMA table}."""
    t = np.asarray(ts, dtype=np.int64)
    floor_t = t - t % HOUR_MS
    hours = np.unique(floor_t)
    parts: dict[str, list[pa.Table]] = {k: [] for k in asked}
    positions = []
    listed = None
    for f in hours:
        one = len(hours) == 1
        sel = None if one else np.flatnonzero(floor_t == f)
        prev = read_segment_profile(store, int(f) - HOUR_MS, lake_prefix)
        if prev is None:
            listed = store.list(f"{lake_prefix}/profiles/segment/") if listed is None else listed
            if listed and segment_key(int(f) - HOUR_MS, lake_prefix) > listed[0]:
                raise LookupError(f"segment_profiles for the hour before {iso(int(f))} is missing")
        reuse = impressions is not None and one
        events = _hour_event_parts(store, int(f), lake_prefix, impressions if reuse else None,
                                   impression_countries if reuse else None,
                                   carried if reuse else None)
        for key, (kinds, segs) in asked.items():
            if sel is None:
                parts[key].append(_as_of_hour(prev, events, kinds, segs, t))
            else:
                idx = pa.array(sel)
                k_kinds = kinds if isinstance(kinds, str) else kinds.take(idx)
                parts[key].append(_as_of_hour(prev, events, k_kinds, segs.take(idx), t[sel]))
        positions.append(sel)
    if not positions:
        return {k: SEGMENT_AS_OF_SCHEMA.empty_table() for k in asked}
    if len(positions) == 1:
        return {k: p[0] for k, p in parts.items()}
    order = np.empty(len(t), dtype=np.int64)
    order[np.concatenate(positions)] = np.arange(len(t))
    take = pa.array(order)
    return {k: pa.concat_tables(p).take(take) for k, p in parts.items()}
