"""One labeled hour: every impression of hour H with its feature vector as of strictly before its
time (DESIGN §4.1) and its 15-minute click label (§4.2).

Inputs, all from the lake: the user profile snapshot chain (time travel, `lookup`), the segment
profile of H-1 plus hour H's segment events (`segments`), raw impressions of H and H+1 (the
latter only as click-attribution candidates), raw clicks of H and H+1, raw predictions of the
24 hours before the impression (latest score). Features come from `features.compute_features`,
the same function the REST API calls.

`build_labeled_hours` builds a range of hours (a backfill run) with the same result, carrying
from one hour to the next what the next would otherwise read again: every user's latest score,
the user profile snapshot (read once, then folded with each hour's tiles in memory), and the
raw hours and countries it already holds.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.platform.enrich import enrich_impressions
from clicklake.platform.events import SPECS
from clicklake.platform.features import (
    CATEGORICAL,
    FEATURE_NAMES,
    PREDICTION_MAX_AGE_MS,
    compute_features,
)
from clicklake.platform.labeling import DEFAULT_LABEL_WINDOW_MS, label_impressions
from clicklake.platform.lookup import PROFILE_SCHEMA, USER_CAMPAIGN_SCHEMA, LookupTable
from clicklake.platform.profiles import (
    CARRIED_COLUMNS,
    META_AS_OF,
    CarriedSnapshot,
    chain_link,
    snapshot_key,
)
from clicklake.platform.raw import raw_key
from clicklake.platform.scores import CarriedScores, latest_scores_lake
from clicklake.platform.segments import (
    CLICK_COUNTRY_COLUMNS,
    HourCarry,
    segments_as_of_lake_kinds,
)
from clicklake.platform.segments import UNKNOWN as UNKNOWN_SEGMENT
from clicklake.platform.storage import Store
from clicklake.platform.tiles import Interner, tile_id, tile_key, ts_ms
from clicklake.platform.timeutil import HOUR_MS, hive_hour_path, iso

CATEGORICAL_INPUTS = ("country", "device_type", "os", "browser")
PASSTHROUGH = ("impression_id", "ts", "user_id", "campaign_id", "domain", "cost")
META_LABEL_WINDOW = b"clicklake.label_window_ms"


def labeled_key(hour_ms: int, lake_prefix: str = "lake") -> str:
    return f"{lake_prefix}/labeled/impressions/{hive_hour_path(hour_ms)}/part-0.parquet"


def text_columns(table: pa.Table) -> list[str]:
    """The columns worth dictionary-encoding when a labeled hour is written: ids and categories.
    The float features are nearly all distinct, so encoding them was tried and dropped per page
    at a cost: written without it an hour takes about half the time and 0.88x the bytes."""
    return [f.name for f in table.schema
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            or pa.types.is_dictionary(f.type)]


def labeled_schema() -> pa.Schema:
    fields = [SPECS["impressions"].schema.field(n) for n in PASSTHROUGH]
    fields += [pa.field("label", pa.int8(), nullable=False),
               pa.field("first_click_delay_ms", pa.int64())]
    fields += [pa.field(n, pa.string() if n in CATEGORICAL else pa.float64())
               for n in FEATURE_NAMES]
    return pa.schema(fields)


class MissingInput(LookupError):
    """An input the labeled hour needs has not been built (e.g. an upstream partition)."""


def _raw(store: Store, stream: str, hour_ms: int, prefix: str,
         columns: list[str] | None = None, agents_encoded: bool = False) -> pa.Table:
    key = raw_key(stream, hour_ms, prefix)
    if not store.exists(key):
        raise MissingInput(f"raw_{stream} {iso(hour_ms)} is not materialized ({key})")
    # One thread: Arrow's reader threads cost 2-3x the CPU on these files, and hours already
    # run side by side in separate processes. `agents_encoded`: user agents stay
    # dictionary-encoded as Parquet stores them (a few dozen distinct strings per hour, ~4 MB
    # once decoded), for a caller whose only reader of them is enrichment (which resolves a
    # dictionary as it is) - a range, whose lookup table keeps no user agents.
    pf = store.parquet_file(key, read_dictionary=["user_agent"] if agents_encoded else None)
    return pf.read(columns=columns, use_threads=False)


@dataclass
class FeatureContext:
    """Everything `feature_inputs` reads for the impressions of one hour."""

    impressions: pa.Table  # raw impressions of the hour, enriched
    profiles: pa.Table  # lookup.PROFILE_SCHEMA, aligned with impressions
    user_campaign: pa.Table  # lookup.USER_CAMPAIGN_SCHEMA, aligned
    segments: dict[str, pa.Table]  # kind -> segments.SEGMENT_AS_OF_SCHEMA, aligned
    pred_score: np.ndarray
    pred_ts: np.ndarray
    # the categorical inputs as `_objects` of the impressions' columns, when made already
    objects: dict[str, np.ndarray] | None = None


def _f(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if col.null_count == 0 and (pa.types.is_float64(col.type) or pa.types.is_int64(col.type)):
        # numpy's conversion of what Arrow's cast would give (counts, far below 2**53)
        v = (col.to_numpy() if isinstance(col, pa.ChunkedArray)  # no chunk at all: empty
             else col.to_numpy(zero_copy_only=False))
        return v.astype(np.float64)
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)


def _objects(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A string column as an object array (None for null), as `to_numpy` gives it, but each
    distinct value converted once (an hour repeats a few dozen values tens of thousands of
    times) and taken out by index."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    enc = pc.dictionary_encode(arr)
    words = np.append(enc.dictionary.to_numpy(zero_copy_only=False), None)
    idx = enc.indices.fill_null(len(enc.dictionary)).to_numpy(zero_copy_only=False)
    return words[idx]


def _float_column(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """`pa.array(values, type_, from_pandas=True)` (NaN is null), with the NaN mask computed by
    numpy: Arrow's own NaN check costs several times more per float64 column."""
    if values.dtype != np.float64 or type_ != pa.float64():
        return pa.array(values, type_, from_pandas=True)
    nan = np.isnan(values)
    return pa.array(values, type_, mask=nan if nan.any() else None)


def _ts_or_nan(col) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    ms = pc.cast(pc.cast(arr, pa.int64()), pa.float64())
    return ms.fill_null(np.nan).to_numpy(zero_copy_only=False)


def feature_inputs(ctx: FeatureContext, sources: dict[str, tuple] | None = None
                   ) -> dict[str, np.ndarray]:
    """The `features.INPUT_COLUMNS` of every impression of `ctx`. `sources`, when given, gets
    for each categorical input (object array) the Arrow column it was made from."""
    p, imp = ctx.profiles, ctx.impressions
    window = {"life": "", "1h": "_1h", "24h": "_24h", "7d": "_7d"}
    inputs: dict[str, np.ndarray] = {"ts_ms": ts_ms(imp["ts"])}
    for w, suffix in window.items():
        for m in ("impressions", "clicks", "spend"):
            inputs[f"user_{m}_{w}"] = _f(p[f"{m}{suffix}"])
    inputs["user_last_impression_ms"] = _ts_or_nan(p["last_impression_ts"])
    inputs["user_last_click_ms"] = _ts_or_nan(p["last_click_ts"])
    inputs["user_distinct_campaigns"] = _f(p["distinct_campaigns"])
    inputs["user_distinct_domains"] = _f(p["distinct_domains"])
    inputs["uc_impressions"] = _f(ctx.user_campaign["impressions"])
    inputs["uc_clicks"] = _f(ctx.user_campaign["clicks"])
    for kind, seg in ctx.segments.items():
        inputs[f"{kind}_impressions_24h"] = _f(seg["impressions_24h"])
        inputs[f"{kind}_clicks_24h"] = _f(seg["clicks_24h"])
    for c in CATEGORICAL_INPUTS:
        inputs[c] = ctx.objects[c] if ctx.objects is not None else _objects(imp[c])
        if sources is not None:
            sources[c] = (inputs[c], imp[c])
    inputs["is_crawler"] = imp["is_crawler"].to_numpy(zero_copy_only=False)
    inputs["pred_score"] = ctx.pred_score
    inputs["pred_ts_ms"] = ctx.pred_ts
    return inputs


def lake_feature_inputs(store: Store, impressions: pa.Table, lake_prefix: str = "lake",
                        lookup: LookupTable | None = None, *,
                        whole_raw_hour: bool = False,
                        carried: _RangeCarry | None = None,
                        sources: dict[str, tuple] | None = None,
                        enriched: pa.Table | None = None,
                        segments: dict[str, pa.Table] | None = None,
                        objects: dict[str, np.ndarray] | None = None,
                        user_codes: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """`features.INPUT_COLUMNS` for impressions at any instants (each as of strictly before its
    own ts), from the lake: the time-travel lookup, segment profiles and raw predictions. The
    labeled dataset calls it for an hour of impressions, the REST API's as-of path for one.
    `whole_raw_hour`: `impressions` are exactly the raw impressions of one hour, so they double
    as that hour's events instead of being read and enriched again; `carried` (with
    `whole_raw_hour`) is the state a range of hours carries from the hour before; `sources`
    as for `feature_inputs`. `enriched` (`enrich_impressions` of `impressions`), `segments`
    (their segment counts) and `objects` (their categorical inputs): made already by a range's
    prepared hour (`_prepare_hour`), else made here; so are `user_codes` (with `carried`: the
    impressions' users in its interner)."""
    n = impressions.num_rows
    users = impressions["user_id"].combine_chunks()
    camps = impressions["campaign_id"].combine_chunks()
    t = ts_ms(impressions["ts"])
    lookup = lookup or LookupTable(store, lake_prefix)
    if whole_raw_hour and n:
        # A range's lookup table outlives the hour: it keeps only the columns it reads.
        lookup.remember_raw("impressions", int(t.min() - t.min() % HOUR_MS),
                            impressions.select(_LOOKUP_COLUMNS) if carried else impressions)
    if n:
        state = carried.snapshot(lookup, t) if carried else None
        # The hour's users interned once, for both the carried snapshot and the carried scores.
        if carried and user_codes is None:
            user_codes = carried.users.codes(users)
        profiles, user_campaign = lookup.as_of_with_campaigns(
            users, camps, t, carried=state, user_codes=user_codes)
    else:
        profiles, user_campaign = PROFILE_SCHEMA.empty_table(), USER_CAMPAIGN_SCHEMA.empty_table()
    if enriched is None:
        enriched = enrich_impressions(impressions)
    if segments is None:
        segments = _hour_segments(store, impressions, enriched, camps, t, lake_prefix,
                                  whole_raw_hour, None)
    if carried:
        score, pred_ts = carried.scores(users, t, user_codes)
    else:
        score, pred_ts = latest_scores_lake(store, users, t, PREDICTION_MAX_AGE_MS, lake_prefix)
    return feature_inputs(FeatureContext(enriched, profiles, user_campaign, segments, score,
                                         pred_ts, objects), sources)


def _hour_segments(store: Store, impressions: pa.Table, enriched: pa.Table, camps: pa.Array,
                   t: np.ndarray, lake_prefix: str, whole_raw_hour: bool,
                   carried: HourCarry | None) -> dict[str, pa.Table]:
    segment_of = {"global": pa.repeat(pa.scalar("all", pa.string()), impressions.num_rows),
                  "country": enriched["country"].combine_chunks(), "campaign": camps,
                  "domain": impressions["domain"].combine_chunks().cast(pa.string()).fill_null(
                      UNKNOWN_SEGMENT)}
    return segments_as_of_lake_kinds(
        store, segment_of, t, lake_prefix, enriched if whole_raw_hour else None,
        enriched["country"] if whole_raw_hour else None, carried)


def build_labeled_hour(store: Store, hour_ms: int, window_ms: int = DEFAULT_LABEL_WINDOW_MS,
                       lake_prefix: str = "lake") -> pa.Table:
    """The labeled impressions of hour `hour_ms` (schema `labeled_schema()`), in raw order."""
    if window_ms > HOUR_MS:
        raise ValueError("a label window longer than an hour needs more than the next hour")
    imp = _raw(store, "impressions", hour_ms, lake_prefix)
    # The next hour's impressions only as click-attribution candidates: four columns do.
    nxt = _raw(store, "impressions", hour_ms + HOUR_MS, lake_prefix,
               ["impression_id", "ts", "user_id", "campaign_id"])
    clicks = pa.concat_tables([_raw(store, "clicks", hour_ms, lake_prefix),
                               _raw(store, "clicks", hour_ms + HOUR_MS, lake_prefix)])
    sources: dict[str, tuple] = {}
    features = compute_features(lake_feature_inputs(store, imp, lake_prefix, whole_raw_hour=True,
                                                    sources=sources))
    return _labeled_table(_labels(imp, clicks, nxt, window_ms), features, window_ms, sources)


def _feature_column(name: str, values: np.ndarray, type_: pa.DataType,
                    sources: dict[str, tuple]) -> pa.Array | pa.ChunkedArray:
    source = sources.get(name)
    if source is not None and values is source[0]:
        # compute_features handed the input object array back untouched: its Arrow column
        # is that array already (converting tens of thousands of Python strings costs more)
        return source[1].cast(type_)
    if type_ == pa.float64():
        return _float_column(values, type_)
    return pa.array(values, type_, from_pandas=True)


def _labels(imp: pa.Table, clicks: pa.Table, nxt: pa.Table, window_ms: int) -> pa.Table:
    """The hour's impressions (`PASSTHROUGH` columns) with their label: `clicks` of the hour and
    the next, `nxt` the next hour's impressions as click-attribution candidates."""
    return label_impressions(imp.select(list(PASSTHROUGH)), clicks, window_ms,
                             context_impressions=nxt)


def _labeled_table(labeled: pa.Table, features: dict[str, np.ndarray], window_ms: int,
                   sources: dict[str, tuple] | None = None) -> pa.Table:
    """`_labels`' table with the feature columns: the labeled dataset's rows."""
    schema = labeled_schema()
    columns = [labeled[c] for c in (*PASSTHROUGH, "label", "first_click_delay_ms")]
    columns += [_feature_column(name, features[name], schema.field(name).type, sources or {})
                for name in FEATURE_NAMES]
    table = pa.Table.from_arrays(columns, schema=schema)
    return table.replace_schema_metadata({META_LABEL_WINDOW: str(window_ms).encode()})


# -- a range of hours -----------------------------------------------------------------------------

_NEXT_COLUMNS = ["impression_id", "ts", "user_id", "campaign_id"]
_LOOKUP_COLUMNS = ["impression_id", "ts", "user_id", "campaign_id", "domain", "cost"]
_TILE_DICTIONARY = ["campaigns.list.element", "domains.list.element"]


def _read_tile(store: Store, p: int, lake_prefix: str) -> pa.Table | None:
    """The tiles of hour p as the carried snapshot folds them (None when not built)."""
    tile = tile_key(p, lake_prefix)
    if not store.exists(tile):
        return None
    # Campaign and domain lists dictionary-encoded as Parquet stores them: the
    # fold then interns each distinct value once, not every list element.
    tiles_pf = store.parquet_file(tile, read_dictionary=_TILE_DICTIONARY)
    if tiles_pf.num_row_groups > 1:
        # Each row group brings its own dictionary, and Arrow cannot read nested
        # lists of several dictionaries into one table (an hour of 1 M+ users).
        tiles_pf = store.parquet_file(tile)
    return tiles_pf.read(use_threads=False)


class _RangeCarry:
    """What labeling hour H leaves for hour H+1 of the same range: every user's latest
    prediction score (scores.CarriedScores) and the user profile snapshot in memory
    (profiles.CarriedSnapshot, folded with the next hour's tiles). The segment events of H+1
    (H's impressions with their countries, H+1's clicks) go from one prepared hour to the next
    (`_prepare_hour`)."""

    def __init__(self, store: Store, lake_prefix: str):
        self.store, self.lake_prefix = store, lake_prefix
        self.users = Interner()
        self.hour: int | None = None
        self._scores: CarriedScores | None = None
        self._snapshot: CarriedSnapshot | None = None
        self._scores_ahead: Future | None = None  # the first hour's scores, made ahead (`warm`)
        # inputs read ahead by a background thread: ("tile", p) / ("predictions", h) -> Future
        self.ahead: dict[tuple[str, int], Future] = {}

    def start(self, hour_ms: int) -> None:
        self.hour = hour_ms

    def warm(self, lookup: LookupTable, hour_ms: int, pool: ThreadPoolExecutor) -> None:
        """Read what hour `hour_ms`, the range's first, needs of the lake's state while its
        own inputs are prepared: the snapshot before it, whole, in this thread, and the day of
        predictions before it on `pool`'s thread, after the hour's inputs. A 12-hour range (a
        backfill run) spent about a second on them before its first hour, one thread idle.
        What fails is left for the hour itself to raise, where it would have."""
        self._scores_ahead = pool.submit(CarriedScores, self.store, self.users, hour_ms,
                                         PREDICTION_MAX_AGE_MS, self.lake_prefix)
        try:
            fast = lookup._hour_after_plan(np.array([hour_ms], np.int64))
            if fast is not None and fast[0] >= 0:
                self._snapshot = self._read_snapshot(fast[0])
        except Exception:  # noqa: BLE001 - raised again by the hour that reads it
            self._snapshot = None

    def snapshot(self, lookup: LookupTable, t: np.ndarray) -> CarriedSnapshot | None:
        """The carried snapshot the lookup table's hour-after-snapshot path would read for
        instants `t` (folded forward one hour, or read whole once), None when that path does
        not apply (the table then answers from the lake as for a single hour)."""
        fast = lookup._hour_after_plan(t)
        if fast is None:
            self._snapshot = None
            return None
        p, s = fast
        state = self._snapshot
        if state is not None and state.as_of == s - HOUR_MS and p >= 0:
            # snapshot(p) = fold(snapshot(p - 1), tiles(p)): the chain folds hour by hour -
            # when snapshot p says it was folded from this tile file on the snapshot carried
            # (a tile rebuilt since, or a snapshot on another predecessor, and the fold here
            # would not be the stored snapshot a single hour reads: that is read instead).
            ahead = self.ahead.pop(("tile", p), None)
            tiles, codes = ahead.result() if ahead is not None else (_read_tile(
                self.store, p, self.lake_prefix), None)
            if tiles is not None:
                own, parent, folded = chain_link(self.store.parquet_file(
                    snapshot_key(p, self.lake_prefix)).schema_arrow.metadata)
                linked = (own is not None and state.chain_id is not None
                          and parent == state.chain_id and folded == tile_id(tiles))
                # Snapshot and tile both written by an older clicklake, which recorded no
                # links: folded as it folded them (a tile rebuilt since carries an identity).
                if linked or (own is None and tile_id(tiles) is None):
                    state.fold(tiles, p, codes)
                    state.chain_id = own
        if state is None or state.as_of != s:
            if p >= 0:
                state = self._read_snapshot(p)
            else:
                state = CarriedSnapshot(self.users, s)
                state.chain_id = ""  # an empty history
        self._snapshot = state
        return state

    def _read_snapshot(self, p: int) -> CarriedSnapshot:
        """Snapshot partition p as carried state, read one row group at a time (the whole
        table, ~50 MiB for 100 k users, never held at once: a range starting mid-lake peaked
        on it), campaign and domain lists dictionary-encoded as Parquet stores them."""
        pf = self.store.parquet_file(snapshot_key(p, self.lake_prefix),
                                     read_dictionary=["campaigns.list.element",
                                                      "domains.list.element"])
        parts = (pf.read_row_group(i, columns=CARRIED_COLUMNS, use_threads=False)
                 for i in range(pf.num_row_groups))
        as_of = int(pf.schema_arrow.metadata[META_AS_OF])
        state = CarriedSnapshot.from_snapshot_parts(parts, as_of, self.users)
        state.chain_id = chain_link(pf.schema_arrow.metadata)[0]
        return state

    def scores(self, user_ids: pa.Array, t: np.ndarray, codes: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """`codes`: the users' codes, when the caller has interned them already."""
        ahead, self._scores_ahead = self._scores_ahead, None
        if ahead is not None and self._scores is None:
            self._scores = ahead.result()  # what it raises: where making it here would have
        if self._scores is None or self._scores.as_of != self.hour:
            self._scores = CarriedScores(self.store, self.users, self.hour,
                                         PREDICTION_MAX_AGE_MS, self.lake_prefix)
        ahead = self.ahead.pop(("predictions", self.hour), None)
        if ahead is not None:  # prepared on the second thread with these users' codes
            return self._scores.answer(self.hour, codes, t, ahead.result())
        return self._scores.answer(self.hour, self.users.codes(user_ids) if codes is None
                                   else codes, t)


def build_labeled_hours(store: Store, hours: list[int], window_ms: int = DEFAULT_LABEL_WINDOW_MS,
                        lake_prefix: str = "lake", prefetch: bool | None = None
                        ) -> Iterator[pa.Table]:
    """`build_labeled_hour` of each of `hours` (ascending), one table per hour, as they are
    built: the same rows, but the hours of the range share state instead of each reading it
    from the lake again: the latest score per user is updated from each prediction hour, the
    user profile snapshot is read once and folded with each hour's tiles in memory, and raw
    hours and countries read for one hour serve the next. An hour whose inputs differ from
    that (a gap in the range or in the snapshot chain) starts its state afresh.

    `prefetch`: prepare each next hour on a background thread (None: when this process may run
    on two CPUs or more; on one, the thread only adds switching: 3-15 % slower, measured).
    The caller checks beforehand that every hour's inputs are complete (the asset does)."""
    hours = [int(h) for h in hours]
    if any(b <= a for a, b in itertools.pairwise(hours)):
        raise ValueError("hours must be ascending and distinct")
    if window_ms > HOUR_MS:
        raise ValueError("a label window longer than an hour needs more than the next hour")
    if len(hours) == 1:  # nothing to carry: reading what one hour needs is cheaper
        yield build_labeled_hour(store, hours[0], window_ms, lake_prefix)
        return
    carry = _RangeCarry(store, lake_prefix)
    lookup = LookupTable(store, lake_prefix, cache_hours=1)  # hours come in order: no reuse
    # What an hour needs that no carried state feeds (its raw tables and the next hour's,
    # their enrichment and labels, the tiles and predictions it folds in) is prepared by one
    # background thread while the hour before is computed: Parquet reads and most of Arrow's
    # and the hash tables' work run without the GIL, so the two overlap on two cores.
    if prefetch is None:
        prefetch = _cpus() >= 2
    pool = ThreadPoolExecutor(1, thread_name_prefix="labeled-ahead") if prefetch else _Inline()

    def continues(i: int) -> bool:  # the range's next hour is the hour after hours[i]
        return i + 1 < len(hours) and hours[i + 1] == hours[i] + HOUR_MS

    def submit(i: int, ahead: tuple[pa.Table, pa.Table] | None,
               before: _PreparedHour | None) -> Future | _Inline.Later:
        return pool.submit(_prepare_hour, store, hours[i], continues(i), ahead, before,
                           window_ms, lake_prefix, carry.users)

    try:
        job = submit(0, None, None)
        # (not when hour 0's preparation failed already)
        if prefetch and not (job.done() and job.exception() is not None):
            carry.warm(lookup, hours[0], pool)
        for i, h in enumerate(hours):
            prep = job.result()
            more = continues(i)
            if i + 1 < len(hours):
                job = submit(i + 1, (prep.nxt, prep.nxt_clk) if more else None,
                             prep if more else None)
            if int(lookup.snapshot_hours().max(initial=-1)) < h - HOUR_MS:
                lookup.snapshot_hours(refresh=True)  # see the snapshots a fresh lookup would see
            carry.start(h)
            carry.ahead = {("predictions", h): prep.predictions}
            if prep.tile is not None:
                carry.ahead[("tile", h - HOUR_MS)] = prep.tile
            lookup.remember_raw("clicks", h, prep.clk)
            sources: dict[str, tuple] = {}
            features = compute_features(lake_feature_inputs(
                store, prep.imp, lake_prefix, lookup, whole_raw_hour=True, carried=carry,
                sources=sources, enriched=prep.enriched, segments=prep.segments,
                objects=prep.objects, user_codes=prep.user_codes))
            yield _labeled_table(prep.labeled, features, window_ms, sources)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Inline:
    """The executor's two calls in the caller's thread (`prefetch` off): a job runs when its
    result is asked for, so an hour is prepared after the hour before is built (one prepared
    hour held at a time, not two)."""

    class Later:
        def __init__(self, fn, args: tuple):
            self.fn, self.args = fn, args

        def result(self):
            return self.fn(*self.args)

    @classmethod
    def submit(cls, fn, *args) -> Later:
        return cls.Later(fn, args)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


@dataclass
class _PreparedHour:
    imp: pa.Table
    clk: pa.Table
    nxt: pa.Table
    nxt_clk: pa.Table
    enriched: pa.Table
    labeled: pa.Table
    # (tiles or None, their user codes); None: not read ahead (no hour before it in the range
    # to fold from)
    tile: Future | None
    predictions: Future  # scores.PreparedScores
    segments: dict[str, pa.Table]
    objects: dict[str, np.ndarray]
    user_codes: np.ndarray  # of `imp`'s users, in the range's interner


def _prepare_hour(store: Store, h: int, more: bool,
                  ahead: tuple[pa.Table, pa.Table] | None, before: _PreparedHour | None,
                  window_ms: int, lake_prefix: str, users: Interner) -> _PreparedHour:
    """Hour h's inputs that depend on no carried state (run in the background). `more`: the
    range goes on to the next hour (its raw impressions are then read whole, to serve it).
    `users`: the range's user interner (shared with the hour being built: it takes a lock);
    the hour's users, the tile's and the predictions' are interned here, off the build's
    thread."""
    if ahead is not None:
        imp, clk = ahead
    else:
        imp = _raw(store, "impressions", h, lake_prefix, agents_encoded=True)
        clk = _raw(store, "clicks", h, lake_prefix)
    nxt = _raw(store, "impressions", h + HOUR_MS, lake_prefix,
               None if more else _NEXT_COLUMNS, agents_encoded=True)
    nxt_clk = _raw(store, "clicks", h + HOUR_MS, lake_prefix)
    enriched = enrich_impressions(imp)
    labeled = _labels(imp, pa.concat_tables([clk, nxt_clk]), nxt.select(_NEXT_COLUMNS), window_ms)
    # Read errors surface where the hour would have read them itself. The tile of the hour
    # before is folded only into the snapshot carried from that hour: after a gap, or for the
    # first hour, the snapshot is read whole instead.
    tile = (_future(lambda: _coded_tile(store, h - HOUR_MS, lake_prefix, users))
            if before is not None else None)
    user_codes = users.codes(imp["user_id"])
    t = ts_ms(imp["ts"])
    predictions = _future(lambda: CarriedScores.prepare(
        CarriedScores.read_hour(store, h, lake_prefix), users, user_codes, t))
    # The hour's segment counts: its events, the hour before's impressions (`before`, when it
    # is the hour before) for click countries, and the segment profile of the hour before.
    carried = (HourCarry(before.imp.select(CLICK_COUNTRY_COLUMNS),
                         before.enriched["country"].combine_chunks(), clk)
               if before is not None else HourCarry(clicks=clk))
    segments = _hour_segments(store, imp, enriched, imp["campaign_id"].combine_chunks(),
                              t, lake_prefix, True, carried)
    objects = {c: _objects(enriched[c]) for c in CATEGORICAL_INPUTS}
    return _PreparedHour(imp, clk, nxt, nxt_clk, enriched, labeled, tile, predictions,
                         segments, objects, user_codes)


def _coded_tile(store: Store, p: int, lake_prefix: str, users: Interner
                ) -> tuple[pa.Table | None, np.ndarray | None]:
    """`_read_tile` and the codes of its users."""
    tiles = _read_tile(store, p, lake_prefix)
    return tiles, (users.codes(tiles["user_id"]) if tiles is not None else None)


def _cpus() -> int:
    """The CPUs this process may run on (the affinity mask where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def _future(fn) -> Future:
    f: Future = Future()
    try:
        f.set_result(fn())
    except Exception as e:  # noqa: BLE001 - raised again by the hour that reads it
        f.set_exception(e)
    return f
