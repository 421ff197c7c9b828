"""Raw hourly assets: landing files → typed, deduplicated Parquet per event-time hour."""

import time

import dagster as dg

from clicklake.assets.checks import FAILED_CHECKS, HourOutcome, check_over_hours, recorded_text
from clicklake.assets.metadata import column_schema
from clicklake.assets.partitions import (
    HOURS_PER_RUN,
    hourly_partitions,
    independent_hours_policy,
    run_hours,
)
from clicklake.platform.landing import STREAMS
from clicklake.platform.raw import (
    build_raw_partition,
    quarantine_key,
    raw_key,
    write_raw_partition,
)
from clicklake.platform.raw_quality import raw_check_names, raw_check_specs
from clicklake.platform.settings import Settings, settings
from clicklake.platform.timeutil import HOUR_MS, hour_partition_key, iso
from clicklake.resources.lake import LakeResource

# Files keyed before a window closes may become visible up to Firehose's buffer interval later
# (the schedule builds hour H at H + 2 h 15 for the same reason).
FIREHOSE_BUFFER_S = 15 * 60
LANDING_READ_AT = "landing_read_at"
_clock = time.time  # when a run lists the landing zone (tests set it)
# A user snapshot's metadata: "none", or the raw hours under it (its own, its gap's, or through
# the snapshots it was folded on) that read their landing files early
INPUTS_INCOMPLETE = "inputs_incomplete"


def landing_window(record: dg.EventLogRecord, hour_ms: int) -> tuple[int, float, float]:
    """(allowed lateness in minutes, epoch seconds by which every file of its landing window is
    visible: its close plus Firehose's buffer, epoch seconds its landing files were listed) of
    the raw partition of `hour_ms` whose materialization `record` is: it holds every event that
    may land only if they were listed after the former. The listing, not the materialization:
    a run records its hours when it ends, maybe long after it read them."""
    meta = record.asset_materialization.metadata
    lateness = (meta["allowed_lateness_minutes"].value if "allowed_lateness_minutes" in meta
                else Settings().allowed_lateness_minutes)
    read_at = meta[LANDING_READ_AT].value if LANDING_READ_AT in meta else record.timestamp
    return lateness, (hour_ms + HOUR_MS) / 1000 + lateness * 60 + FIREHOSE_BUFFER_S, read_at


def read_early(record: dg.EventLogRecord | None, hour_ms: int) -> bool:
    """Whether the raw materialization `record` of `hour_ms` listed its landing files before
    its window closed (False when there is no record: built in another instance)."""
    if record is None or record.asset_materialization is None:
        return False
    _, closes, read_at = landing_window(record, hour_ms)
    return read_at < closes


def incomplete_inputs(record: dg.EventLogRecord | None) -> str | None:
    """A user snapshot materialization's `INPUTS_INCOMPLETE` (None: complete, or unknown)."""
    return recorded_text(record, INPUTS_INCOMPLETE)


def _files_read_before(context: dg.AssetExecutionContext, asset: str,
                       hours: list[int]) -> dict[int, int]:
    """The landing files each hour's latest materialization in this instance read."""
    keys = {hour_partition_key(h): h for h in hours}
    records = context.instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(asset), asset_partitions=list(keys)), limit=20 * len(keys)).records
    out: dict[int, int] = {}
    for r in records:  # newest first
        meta = r.asset_materialization.metadata if r.asset_materialization else {}
        if r.partition_key in keys and "landing_files_read" in meta:
            out.setdefault(keys[r.partition_key], meta["landing_files_read"].value)
    return out


def _refuse_losing_files(store, asset: str, part, files_before: int | None,
                         lake_prefix: str) -> None:
    """A rebuild that finds fewer landing files than the partition was built from would drop
    their events for good: the landing zone's retention (90 days in the template) has expired
    them, or they were deleted. Refused, keeping the partition; deleting it first is the way to
    rebuild from what is left. Without a record (built in another instance), only a rebuild
    finding no file over a partition holding rows is caught."""
    key = raw_key(part.stream, part.hour_ms, lake_prefix)
    if files_before is not None and part.files_read >= files_before or not store.exists(key):
        return  # nothing lost, or nothing to keep (never built, or deleted to be rebuilt)
    lost = files_before is not None or (
        part.files_read == 0 and store.parquet_file(key).metadata.num_rows > 0)
    if lost:
        was = "" if files_before is None else f" of the {files_before} it was built from"
        raise dg.Failure(
            f"{asset} {hour_partition_key(part.hour_ms)}: the landing zone now holds "
            f"{part.files_read} landing files{was} (expired by the landing retention, or "
            f"deleted): rebuilt, the hour would lose their events for good, so the partition "
            f"is kept as it is. To rebuild it from what is left anyway, delete {key} first.")


_DESCRIPTIONS = {
    "impressions": "Ad impressions bought, one row per impression_id, for one event-time hour.",
    "clicks": "Clicks on impressions, one row per click_id, for one event-time hour.",
    "predictions": "Scores the serving model gave, one row per prediction_id, for one event-time hour.",
}


def _raw_asset(stream: str) -> dg.AssetsDefinition:
    name = f"raw_{stream}"

    @dg.asset(
        name=name,
        partitions_def=hourly_partitions,
        backfill_policy=independent_hours_policy,
        group_name="raw",
        kinds={"parquet"},
        description=_DESCRIPTIONS[stream]
        + " Reads every landing hour that can hold the hour's events (allowed lateness); rows"
        " that cannot be used go to lake/quarantine with a reason. A backfill builds up to"
        f" {HOURS_PER_RUN} hours per run; each hour has its own materialization and metadata.",
        check_specs=[
            dg.AssetCheckSpec(check, asset=name, description=desc, blocking=True)
            for check, desc in raw_check_names(stream)
        ],
    )
    def _asset(context: dg.AssetExecutionContext, lake: LakeResource):
        from clicklake.platform.quality import run_checks  # GX imports slowly: only when checking

        store = lake.store()
        config = settings()  # the deployment's, for every run (`platform.settings`)
        rules = config.rules()
        checked: dict[str, list[HourOutcome]] = {}
        hours = run_hours(context)
        before = _files_read_before(context, name, hours)
        for hour_ms in hours:
            read_at = _clock()  # before the listing: what lands after may be missed
            part = build_raw_partition(store, stream, hour_ms, rules, lake.landing_prefix)
            _refuse_losing_files(store, name, part, before.get(hour_ms), lake.lake_prefix)
            write_raw_partition(store, part, lake.lake_prefix)
            context.log.info(
                f"{name} {iso(hour_ms)}: kept {part.kept} of {part.lines_read} lines from "
                f"{part.files_read} files; quarantined {sum(part.quarantined_by_reason.values())}"
            )
            outcomes = run_checks(part.table.to_pandas(), raw_check_specs(stream, hour_ms))
            for outcome in outcomes:
                checked.setdefault(outcome.name, []).append(HourOutcome(hour_ms, part.kept, outcome))
            context.add_asset_metadata(
                {
                    # Per hour: Dagster keeps one result per check, not per partition, so the
                    # hours built on this one read it here (`checks.require_inputs_passed`).
                    FAILED_CHECKS: ", ".join(o.name for o in outcomes if not o.passed) or "none",
                    "dagster/row_count": part.kept,
                    "dagster/column_schema": column_schema(part.table.schema),
                    "rows_kept": part.kept,
                    "rows_quarantined": sum(part.quarantined_by_reason.values()),
                    **{f"quarantined_{r}": n for r, n in part.quarantined_by_reason.items()},
                    "landing_files_read": part.files_read,
                    "allowed_lateness_minutes": config.allowed_lateness_minutes,
                    "future_tolerance_minutes": config.future_tolerance_minutes,
                    LANDING_READ_AT: dg.MetadataValue.timestamp(read_at),
                    "landing_lines_read": part.lines_read,
                    "path": dg.MetadataValue.path(
                        store.uri(raw_key(stream, hour_ms, lake.lake_prefix))),
                    "quarantine_path": dg.MetadataValue.path(
                        store.uri(quarantine_key(stream, hour_ms, lake.lake_prefix))
                    ),
                },
                partition_key=hour_partition_key(hour_ms),
            )
        yield dg.MaterializeResult()
        for check, description in raw_check_names(stream):
            yield check_over_hours(name, check, description, checked[check])

    return _asset


raw_assets = [_raw_asset(stream) for stream in STREAMS]
