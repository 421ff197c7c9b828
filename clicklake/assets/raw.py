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
from clicklake.platform.landing import FIREHOSE_BUFFER_MS, STREAMS
from clicklake.platform.raw import (
    build_raw_partition,
    lost_landing_files,
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
FIREHOSE_BUFFER_S = FIREHOSE_BUFFER_MS // 1000
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
    return lateness, _window_closes(hour_ms, lateness), read_at


def _window_closes(hour_ms: int, lateness_minutes: int) -> float:
    """Epoch seconds by which every landing file of `hour_ms` is visible: its landing window's
    close plus Firehose's buffer."""
    return (hour_ms + HOUR_MS) / 1000 + lateness_minutes * 60 + FIREHOSE_BUFFER_S


def read_early(record: dg.EventLogRecord | None, hour_ms: int,
               listed: tuple[float, int] | None = None) -> bool:
    """Whether the raw materialization `record` of `hour_ms` listed its landing files before
    its window closed. Without a record (a run that died before recording its hours, or
    another instance's), `listed`, the stored file's own word (`raw.listed_at`), decides;
    without either, False (an older clicklake's file)."""
    if record is None or record.asset_materialization is None:
        if listed is None:
            return False
        read_at, lateness = listed
        return read_at < _window_closes(hour_ms, lateness)
    _, closes, read_at = landing_window(record, hour_ms)
    return read_at < closes


def incomplete_inputs(record: dg.EventLogRecord | None) -> str | None:
    """A user snapshot materialization's `INPUTS_INCOMPLETE` (None: complete, or unknown)."""
    return recorded_text(record, INPUTS_INCOMPLETE)


def _refuse_losing_files(store, asset: str, stream: str, hours: list[int], rules,
                         landing_prefix: str, lake_prefix: str) -> None:
    """A rebuild of an hour whose landing files are gone (`raw.lost_landing_files`) would drop
    their events for good: the landing zone's retention (90 days in the template) expired
    them, or they were deleted. Every hour of the run is checked before any is written, and
    the run refused, keeping the partitions; deleting an hour's partition first is the way to
    rebuild it from what is left."""
    lost = {h: lost_landing_files(store, stream, h, rules, landing_prefix, lake_prefix)
            for h in hours}
    bad = {h: files for h, files in lost.items() if files != []}
    if not bad:
        return
    def why(files: list[str] | None) -> str:
        if files is None:
            return "no landing file left of a partition built by an older clicklake"
        # Still there but not read: a file below an hour folder, which an older clicklake
        # read and the raw layer now reads only in the hour folders Firehose writes.
        moved = [k for k in files if store.exists(k)]
        gone = [k for k in files if k not in moved]
        parts = []
        if gone:
            parts.append(f"{len(gone)} of its landing files gone, e.g. {gone[0]}")
        if moved:
            parts.append(f"{len(moved)} no longer read, outside the hour folders (move them "
                         f"into their hour's folder), e.g. {moved[0]}")
        return "; ".join(parts)

    said = "; ".join(f"{hour_partition_key(h)}: {why(files)}"
                     for h, files in sorted(bad.items())[:5])
    first = raw_key(stream, min(bad), lake_prefix)
    raise dg.Failure(
        f"{asset}: rebuilt, {len(bad)} hour(s) would lose the events of landing files that are "
        f"gone (expired by the landing retention, or deleted) or no longer read: {said}. Their "
        f"partitions are kept as they are. To rebuild an hour from what is left anyway, delete "
        f"its partition first ({store.uri(first)} for {hour_partition_key(min(bad))}).")


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
        # GX imports slowly: only when checking
        from clicklake.platform.quality import checked_frame, run_checks

        store = lake.store()
        config = settings()  # the deployment's, for every run (`platform.settings`)
        rules = config.rules()
        checked: dict[str, list[HourOutcome]] = {}
        hours = run_hours(context)
        _refuse_losing_files(store, name, stream, hours, rules, lake.landing_prefix,
                             lake.lake_prefix)
        for hour_ms in hours:
            read_at = _clock()  # before the listing: what lands after may be missed
            part = build_raw_partition(store, stream, hour_ms, rules, lake.landing_prefix)
            # Said in the file only when early: a rebuild after the window closed (the usual
            # case) keeps the same bytes.
            listed = (read_at, config.allowed_lateness_minutes)
            write_raw_partition(store, part, lake.lake_prefix,
                                listed=listed if read_early(None, hour_ms, listed) else None)
            context.log.info(
                f"{name} {iso(hour_ms)}: kept {part.kept} of {part.lines_read} lines from "
                f"{part.files_read} files; quarantined {sum(part.quarantined_by_reason.values())}"
            )
            specs = raw_check_specs(stream, hour_ms)
            outcomes = run_checks(checked_frame(part.table, specs), specs)
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
