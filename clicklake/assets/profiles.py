"""The time-travel lookup table as hourly assets: user hour tiles, user profile snapshots (each
folded from the previous one) and segment profiles.

A backfill builds tiles several hours per run, runs side by side, and folds each chain (user and
segment profiles) over its whole range in one run, hour after hour in order; every hour still gets
its own materialization and metadata."""


import time

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from clicklake.assets.automation import when_inputs_complete
from clicklake.assets.checks import latest_materialization, require_inputs_passed
from clicklake.assets.lake_inputs import raw_span, require_built
from clicklake.assets.metadata import column_schema
from clicklake.assets.partitions import (
    chain_policy,
    hourly_partitions,
    independent_hours_policy,
    run_hours,
)
from clicklake.assets.raw import INPUTS_INCOMPLETE, incomplete_inputs, read_early
from clicklake.platform import profiles as prof
from clicklake.platform import segments as seg
from clicklake.platform import tiles
from clicklake.platform.events import SPECS
from clicklake.platform.labeled import labeled_key
from clicklake.platform.raw import listed_at, raw_key
from clicklake.platform.settings import settings
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, hive_hours, hour_partition_key, iso
from clicklake.resources.lake import LakeResource

RAW_DEPS = [dg.AssetKey("raw_impressions"), dg.AssetKey("raw_clicks")]
_PREVIOUS_HOUR = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)


RAW_READ_AT = "raw_read_at"  # a tile's metadata: when its run read the hour's raw partitions
_clock = time.time  # (tests set it)


def _raw(store: Store, stream: str, hour_ms: int, prefix: str, missing: list[str]) -> pa.Table:
    key = raw_key(stream, hour_ms, prefix)
    if store.exists(key):
        return store.read_parquet(key)
    missing.append(key)
    return SPECS[stream].schema.empty_table()


def _tile(store: Store, hour_ms: int, prefix: str, missing: list[str],
          stale: bool = False) -> pa.Table:
    """The hour's user tiles: the stored ones, or from raw when there are none or they are
    `stale` (built before the hour's raw was rebuilt)."""
    key = tiles.tile_key(hour_ms, prefix)
    if store.exists(key) and not stale:
        return store.read_parquet(key)
    imp = _raw(store, "impressions", hour_ms, prefix, missing)
    clk = _raw(store, "clicks", hour_ms, prefix, missing)
    return tiles.build_user_hour_tiles(imp, clk, hour_ms)


@dg.asset(partitions_def=hourly_partitions, backfill_policy=independent_hours_policy,
          deps=RAW_DEPS, group_name="lookup", kinds={"parquet"},
          automation_condition=when_inputs_complete())
def user_hour_tiles(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """What each user did in one event-time hour: impressions, clicks, spend, campaigns (with
    per-campaign counts) and domains touched, first and last event time. One row per active user."""
    store, prefix = lake.store(), lake.lake_prefix
    for hour in run_hours(context):
        require_inputs_passed(context, f"user_hour_tiles {hour_partition_key(hour)}",
                              [(k.to_user_string(), hour) for k in RAW_DEPS])
        missing = []
        read_at = _clock()  # before the reads: a raw rebuild recorded after it may be missed
        imp = _raw(store, "impressions", hour, prefix, missing)
        clk = _raw(store, "clicks", hour, prefix, missing)
        tile = tiles.build_user_hour_tiles(imp, clk, hour)
        key = tiles.tile_key(hour, prefix)
        nbytes = store.write_parquet(key, tiles.stamped(tile))
        context.add_asset_metadata({
            "dagster/row_count": tile.num_rows,
            "dagster/column_schema": column_schema(tile.schema),
            "users_touched": tile.num_rows,
            "impressions": int(imp.num_rows),
            "clicks": int(clk.num_rows),
            "missing_raw_partitions": ", ".join(missing) or "none",
            RAW_READ_AT: dg.MetadataValue.timestamp(read_at),
            "bytes": nbytes,
            "path": dg.MetadataValue.path(store.uri(key)),
        }, partition_key=hour_partition_key(hour))
    return dg.MaterializeResult()


class UserProfilesConfig(dg.Config):
    # Snapshots older than the deployment's CLICKLAKE_RETENTION_DAYS are deleted: one value for
    # every run (`platform.settings`), or the next automated run would delete what a backfill
    # run's longer retention kept.
    row_group_users: int = Field(default=prof.DEFAULT_ROW_GROUP_USERS,
                                 description="Users per Parquet row group (point-lookup read size).")


@dg.asset(
    # One run at a time (the instance configs give a pool one slot): a run lists the later
    # snapshots it refolds when it starts, and one folded beside it stays on the old chain.
    pool="user_profiles_chain",
    partitions_def=hourly_partitions,
    deps=[dg.AssetDep("user_hour_tiles"),
          dg.AssetDep("user_profiles", partition_mapping=_PREVIOUS_HOUR)],
    backfill_policy=chain_policy,
    group_name="lookup",
    kinds={"parquet"},
    automation_condition=when_inputs_complete(),
)
def user_profiles(context: dg.AssetExecutionContext, config: UserProfilesConfig,
                  lake: LakeResource) -> dg.MaterializeResult:
    """Every user's profile as of the end of the hour (the time-travel lookup table): lifetime,
    1 h, 24 h and 7 d counts, last event times, campaigns and domains. Folded from the previous
    hour's snapshot plus this hour's tiles; sorted by user_id in small zstd row groups."""
    hours = run_hours(context)
    store, prefix = lake.store(), lake.lake_prefix
    built = hive_hours(store.list(f"{prefix}/profiles/user/"))
    # A refold of later snapshots that died part-way: those from its first hour before this
    # run's are folded again first (those after are this run's later ones anyway). In a
    # backfill too: its run folded on the stale ones and said nothing (snapshots 3-5 each 5
    # impressions short of a build from scratch), and the automation's runs are backfills.
    pending = prof.pending_refold(store, prefix)
    backfill = "dagster/backfill" in context.run.tags
    redo = [h for h in built if pending <= h < hours[0]] if pending is not None else []
    existing = [h for h in built if h < (redo[0] if redo else hours[0])]
    later = [h for h in built if h > hours[-1]]  # folded on the run's hours as they were
    retention_days = settings().retention_days
    chain = _Chain(context, store, prefix, config.row_group_users)
    if existing:
        chain.start_from(existing[-1])
    if redo:
        _finish_refold(context, chain, redo, hours)
    marked = not backfill and (bool(later) or any(h in built for h in hours))
    if marked:
        # Marked before the first write: a run that dies has rewritten some of its own hours'
        # files while their records (counts, `inputs_incomplete`) stay the old ones, so the
        # next run folds them again too and records them (labeled hours refused snapshots a
        # resumed refold left saying "read early"). `_refold_later` clears it once done.
        prof.mark_refold(store, hours[0], prefix)
    for hour in hours:  # in order: each hour folds into the snapshot just written
        meta = chain.fold(hour)
        cutoff = hour - retention_days * 24 * HOUR_MS
        deleted = [h for h in existing if h < cutoff]
        for h in deleted:
            store.delete(prof.snapshot_key(h, prefix))
        existing = [h for h in existing if h >= cutoff] + [hour]
        context.add_asset_metadata({**meta, "retention_days": retention_days,
                                    "snapshots_deleted": len(deleted)},
                                   partition_key=hour_partition_key(hour))
    if later:
        _refold_later(context, chain, hours, later)  # it clears a pending refold once done
        if backfill and prof.pending_refold(store, prefix) is not None:
            # A backfill leaves its later snapshots to its later runs: only they are still on
            # the old chain (its next run starts there, not at the hours folded again here).
            prof.clear_refold(store, prefix)
            prof.mark_refold(store, later[0], prefix)
    else:  # (with later snapshots, `_refold_later` says it, of those refolded too)
        _flag_labeled_on_old_snapshots(context, chain, hours, hours[-1])
        if pending is not None or marked:
            prof.clear_refold(store, prefix)  # the marked snapshots are all folded again now
    return dg.MaterializeResult()


class _Chain:
    """The user snapshot chain as a run folds it, hour after hour: the last snapshot (`prev`,
    of hour `base`) and what its inputs lacked (`incomplete`)."""

    def __init__(self, context: dg.AssetExecutionContext, store: Store, prefix: str,
                 row_group_users: int):
        self.context, self.store, self.prefix = context, store, prefix
        self.row_group_users = row_group_users
        self.prev: pa.Table | None = None
        self.prev_id = ""  # the chain identity of `prev` ("": an empty history)
        self.base: int | None = None
        self.incomplete: str | None = None  # the last snapshot's `inputs_incomplete`
        self.span = raw_span(store, prefix)
        self.known: dict = {}  # materialization records by (asset, hour)

    def start_from(self, base: int) -> None:
        self.base = base
        self.prev = self.store.read_parquet(prof.snapshot_key(base, self.prefix))
        # An older clicklake's snapshot has no identity: what is folded on it links to none.
        self.prev_id = prof.chain_link(self.prev.schema.metadata)[0] or "unknown"
        said, incomplete = prof.inputs_incomplete_of(self.prev.schema.metadata)
        self.incomplete = incomplete if said else incomplete_inputs(
            latest_materialization(self.context, "user_profiles", base, self.known))

    def _read_early(self, asset: str, hour: int) -> bool:
        """The record's word, or the stored file's: a rebuild that read early and died before
        recording its hours left the record of the build before it, which had not."""
        if read_early(latest_materialization(self.context, asset, hour, self.known), hour):
            return True
        listed = listed_at(self.store, asset.removeprefix("raw_"), hour, self.prefix)
        return listed is not None and read_early(None, hour, listed)

    def _stale(self, hour: int) -> bool:
        """Whether the hour's stored tiles read its raw before raw was last rebuilt (a
        snapshot folded on them would lack the rebuild's late events; from this instance's
        records: none, nothing known). When the tile's run read raw, not when it recorded:
        a run that read the old raw and recorded after the rebuild was taken as fresh."""
        tile = latest_materialization(self.context, "user_hour_tiles", hour, self.known)
        if tile is None:
            return False
        meta = tile.asset_materialization.metadata if tile.asset_materialization else {}
        read_at = meta[RAW_READ_AT].value if RAW_READ_AT in meta else tile.timestamp
        return any(r is not None and r.timestamp > read_at for r in (
            latest_materialization(self.context, k.to_user_string(), hour, self.known)
            for k in RAW_DEPS))

    def fold(self, hour: int) -> dict:
        """Write the snapshot of `hour` (after `base`); its metadata."""
        context, store, prefix, known = self.context, self.store, self.prefix, self.known
        missing, started_from, base = [], self.prev, self.base
        # A gap (hours never materialized) is folded from tiles, or raw, so history stays whole.
        # Without an earlier snapshot the history starts at the lake's first raw hour, not
        # here: a chain built out of order, or rerun after retention deleted the snapshots
        # before it, restarted from an empty history.
        start = base + HOUR_MS if base is not None else self.span[0] if self.span else hour
        gap = range(start, hour, HOUR_MS)
        if len(gap) > 24:
            context.log.info(f"user_profiles {hour_partition_key(hour)}: folding the "
                             f"{len(gap)} hours before it from {iso(start)} (no snapshot "
                             "between)")
        what = f"user_profiles {hour_partition_key(hour)}"
        inputs = [(k.to_user_string(), h) for h in (*gap, hour) for k in RAW_DEPS]
        require_inputs_passed(context, what, inputs, known)
        # a raw hour never built would be gone from this snapshot and every later one
        require_built(store, prefix, what, inputs, self.span)
        # A raw hour that read its landing files before its window closed may lack events:
        # said here, and by every later snapshot (folded on this one), so that the labeled
        # hours reading them refuse them as they refuse such a raw hour of their own.
        early = [f"{asset} {hour_partition_key(h)} read early" for asset, h in inputs
                 if self._read_early(asset, h)]
        if self.incomplete is not None and base is not None:  # named by the first snapshot on it
            early.append(self.incomplete if self.incomplete.startswith("via ") else
                         f"via user_profiles {hour_partition_key(base)}: {self.incomplete}")
        self.incomplete = "; ".join(early)[:500] or None
        prev = self.prev
        stale = [h for h in [*gap, hour] if self._stale(h)]
        if stale:
            context.log.warning(
                f"user_profiles {hour_partition_key(hour)}: the user_hour_tiles of "
                f"{', '.join(map(hour_partition_key, stale))} read raw before it was rebuilt: "
                "folded from raw; rematerialize those tiles (the labeled ranges read them)")
        for h in gap:
            prev = prof.fold_snapshot(prev, _tile(store, h, prefix, missing, h in stale), h)
        tile = _tile(store, hour, prefix, missing, hour in stale)
        snap, snap_id = prof.fold_linked(prev, self.prev_id, tile, hour)
        snap = prof.with_inputs_incomplete(snap, self.incomplete)
        key = prof.snapshot_key(hour, prefix)
        nbytes = store.write_parquet(key, snap, row_group_size=self.row_group_users)
        self.prev, self.base, self.prev_id = snap, hour, snap_id
        return {
            "dagster/row_count": snap.num_rows,
            "dagster/column_schema": column_schema(snap.schema),
            "users": snap.num_rows,
            "users_touched": tile.num_rows,
            "as_of": iso(prof.snapshot_as_of(snap)),
            "history_start": iso(prof.history_start(snap)),
            "started_from": ("empty history" if started_from is None
                             else iso(prof.snapshot_as_of(started_from))),
            "gap_hours_refolded": len(gap),
            INPUTS_INCOMPLETE: self.incomplete or "none",
            "missing_inputs": ", ".join(missing) or "none",
            "stale_tiles_folded_from_raw": ", ".join(map(hour_partition_key, stale)) or "none",
            "bytes": nbytes,
            "bytes_per_user": round(prof.bytes_per_user(nbytes, snap.num_rows), 1),
            "row_groups": -(-snap.num_rows // self.row_group_users) if snap.num_rows else 0,
            "path": dg.MetadataValue.path(store.uri(key)),
        }


def _fold_again(context: dg.AssetExecutionContext, chain: _Chain, hours: list[int],
                after: str) -> tuple[list[int], dg.Failure | None]:
    """Fold `hours` again in order on the chain, each with a materialization of its own
    (`refolded_after`: why); the hours folded, and the failure that stopped it at the next
    one (None: all folded)."""
    done = []
    for h in hours:
        try:
            meta = chain.fold(h)
        except dg.Failure as exc:
            return done, exc
        done.append(h)
        context.log_event(dg.AssetMaterialization(
            asset_key=context.asset_key, partition=hour_partition_key(h),
            metadata={**meta, "refolded_after": after}))
    return done, None


def _finish_refold(context: dg.AssetExecutionContext, chain: _Chain, redo: list[int],
                   hours: list[int]) -> None:
    """Fold again the snapshots `redo` (before the run's hours) that a refold which died left
    on the old chain. One that cannot be folded stops it: they stay stale, said so (as
    `_refold_later` says it, and as it, not asked again: a next run would stop there too),
    and the run's hours fold on the snapshot before them."""
    context.log.warning(f"a refold of the user snapshots from {hour_partition_key(redo[0])} "
                        f"did not finish: folding {len(redo)} of them again first")
    done, failure = _fold_again(context, chain, redo, "a refold that did not finish")
    _flag_labeled_on_old_snapshots(context, chain, done, hours[0])
    if failure is not None:
        stale = (f"snapshots from {hour_partition_key(redo[len(done)])} (a refold that did not "
                 f"finish, and {failure.description})")
        context.log.warning(f"later snapshots are stale: {stale}")
        context.add_asset_metadata({"later_snapshots_stale": stale},
                                   partition_key=hour_partition_key(hours[0]))
        prof.clear_refold(chain.store, chain.prefix)
        chain.start_from(redo[-1])


def _flag_labeled_on_old_snapshots(context: dg.AssetExecutionContext, chain: _Chain,
                                   folded: list[int], at: int) -> None:
    """Labeled hour H reads snapshot H - 1: those built on the old snapshots of `folded` (the
    run's hours, and those it refolded) are stale too (the automation rebuilds the last day's;
    older ones are a backfill's job): named on the metadata of the run's hour `at`. Said
    whether or not later snapshots were refolded: a rebuild at the chain's end said nothing."""
    labeled = [h + HOUR_MS for h in folded
               if chain.store.exists(labeled_key(h + HOUR_MS, chain.prefix))]
    if labeled:
        context.add_asset_metadata({"labeled_hours_on_old_snapshots": (
            f"{len(labeled)} labeled hours from {hour_partition_key(labeled[0])} to "
            f"{hour_partition_key(labeled[-1])}")}, partition_key=hour_partition_key(at))


def _refold_later(context: dg.AssetExecutionContext, chain: _Chain, hours: list[int],
                  later: list[int]) -> None:
    """The snapshots after a run's hours were folded on those hours as they were before: fold
    them again, each with a materialization of its own (so what reads them, within the
    automation's day, follows). Not in a backfill (its later hours are its own runs' job, and
    refolding the rest at every run of it would fold the chain again and again): there, and
    when an hour cannot be folded, the rest are reported stale (Dagster does not mark them: it
    skips an asset's dependency on its own previous partition past 100 partitions)."""
    last, todo, refolded = hours[-1], list(later), []
    if "dagster/backfill" not in context.run.tags:
        context.log.info(f"refolding the {len(todo)} snapshots after "
                         f"{hour_partition_key(last)}, folded on it as it was")
        prof.mark_refold(chain.store, todo[0], chain.prefix)  # cleared below, once done
        refolded, failure = _fold_again(context, chain, todo, hour_partition_key(last))
        todo = todo[len(refolded):]
        if failure is not None:
            context.log.warning(f"cannot refold user_profiles {hour_partition_key(todo[0])}:"
                                f" {failure.description}")
        # Done, or stopped at an hour that cannot be folded (said below): a next run would
        # stop there too, so it is not asked to finish.
        prof.clear_refold(chain.store, chain.prefix)
    _flag_labeled_on_old_snapshots(context, chain, [*hours, *refolded], last)
    if todo:
        stale = (f"{len(todo)} snapshots from {hour_partition_key(todo[0])} to "
                 f"{hour_partition_key(todo[-1])}: rematerialize user_profiles from "
                 f"{hour_partition_key(todo[0])} (and what reads them)")
        context.log.warning(f"later snapshots are stale: {stale}")
        context.add_asset_metadata({"later_snapshots_stale": stale},
                                   partition_key=hour_partition_key(last))


@dg.asset(
    # One run at a time, as user_profiles: each hour folds the ones before it.
    pool="segment_profiles_chain",
    partitions_def=hourly_partitions,
    deps=[dg.AssetDep(k, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=0))
          for k in RAW_DEPS]
    + [dg.AssetDep("segment_profiles", partition_mapping=_PREVIOUS_HOUR)],
    backfill_policy=chain_policy,
    group_name="lookup",
    kinds={"parquet"},
    automation_condition=when_inputs_complete(),
)
def segment_profiles(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Impressions, clicks and CTR per country, per campaign and overall over the 24 h sawtooth
    window, as of the end of the hour (clicks take their impression's country)."""
    store, prefix = lake.store(), lake.lake_prefix
    known: dict = {}  # hour H's raw hour before is hour H-1's own
    span = raw_span(store, prefix)
    from_raw: dict[int, pa.Table] = {}  # gap hours' own counts, made once for the run's hours
    for hour in run_hours(context):  # in order: each hour reads the ones just written
        what = f"segment_profiles {hour_partition_key(hour)}"
        # The window adds the own-hour counts of the profiles of the 23 hours before. One never
        # built inside the lake's raw hours (a gap) is counted from its raw hours instead, as
        # user_profiles folds a gap: taken as empty, it shortened the window silently.
        earlier = range(hour - (seg.WINDOW_HOURS - 1) * HOUR_MS, hour, HOUR_MS)
        stored = {h: seg.read_segment_profile(store, h, prefix) for h in earlier}
        gap = [h for h, p in stored.items() if p is None and span and span[0] <= h <= span[1]]
        raw_hours = sorted({hour, *gap})
        require_inputs_passed(context, what, [(k.to_user_string(), h) for k in RAW_DEPS
                                              for g in raw_hours for h in (g - HOUR_MS, g)], known)
        require_built(store, prefix, what, [(asset, h) for g in raw_hours for asset, h in (
            ("raw_impressions", g - HOUR_MS), ("raw_impressions", g), ("raw_clicks", g))], span)
        for h in gap:  # its own-hour counts are all the window reads of it
            if h not in from_raw:
                from_raw[h] = seg.segment_profile(seg.hour_segment_events(store, h, prefix), [],
                                                  h)
            stored[h] = from_raw[h]
        events = seg.hour_segment_events(store, hour, prefix)
        previous = [p for p in stored.values() if p is not None]
        table = seg.segment_profile(events, previous, hour)
        key = seg.segment_key(hour, prefix)
        nbytes = store.write_parquet(key, table)
        glob = table.filter(pc.equal(table["kind"], "global")).to_pylist()
        counts = {k: int(pc.sum(pc.equal(table["kind"], k)).as_py() or 0)
                  for k in seg.KINDS}
        context.add_asset_metadata({
            "dagster/row_count": table.num_rows,
            "dagster/column_schema": column_schema(table.schema),
            "countries": counts["country"],
            "campaigns": counts["campaign"],
            "global_impressions_24h": glob[0]["impressions_24h"] if glob else 0,
            "global_ctr_24h": (glob[0]["ctr_24h"] or 0.0) if glob else 0.0,
            "earlier_hours_found": len(previous) - len(gap),
            "gap_hours_from_raw": len(gap),
            "bytes": nbytes,
            "path": dg.MetadataValue.path(store.uri(key)),
        }, partition_key=hour_partition_key(hour))
    return dg.MaterializeResult()


profile_assets = [user_hour_tiles, user_profiles, segment_profiles]
