"""The point-in-time labeled dataset and prediction outcomes: hourly, lagging one hour because
hour H needs the clicks of H+1. Labeled hours do not depend on each other, so a backfill builds
them several hours per run, runs side by side; every hour has its own materialization."""

import math
import warnings
from datetime import UTC, datetime

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.assets.automation import when_inputs_complete
from clicklake.assets.checks import (
    HourOutcome,
    check_over_hours,
    latest_materialization,
    require_inputs_passed,
    require_passed,
)
from clicklake.assets.lake_inputs import raw_span, require_built
from clicklake.assets.metadata import column_schema
from clicklake.assets.partitions import (
    independent_hours_policy,
    lagged_hourly_partitions,
    run_hours,
)
from clicklake.assets.raw import incomplete_inputs, landing_window
from clicklake.platform.features import PREDICTION_MAX_AGE_MS
from clicklake.platform.labeled import build_labeled_hours, labeled_key
from clicklake.platform.labeled_quality import (
    CHECK_GROUP_ROWS,
    DEFAULT_LABEL_RATE,
    LABELED_CHECKS,
    checked_hours,
    hour_summary,
)
from clicklake.platform.outcomes import join_outcomes, outcome_metrics
from clicklake.platform.profiles import (
    chain_link,
    inputs_incomplete_of,
    snapshot_identity,
    stored_footer,
)
from clicklake.platform.raw import read_raw
from clicklake.platform.settings import settings
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import (
    HOUR_MS,
    MINUTE_MS,
    hive_hour_path,
    hive_hours,
    hour_partition_key,
    iso,
)
from clicklake.resources.lake import LakeResource

LABELED_KEY = dg.AssetKey("labeled_impressions")
_THIS_AND_NEXT = dg.TimeWindowPartitionMapping(start_offset=0, end_offset=1)
with warnings.catch_warnings():  # the first hours have no earlier partitions; that is fine
    warnings.simplefilter("ignore", dg.BetaWarning)
    # Hour H reads the snapshots of H-1; it also waits for H's own, because in the chain's first
    # hour that snapshot is the only one saying where history starts (a backfill would otherwise
    # label the lake's first hour before any snapshot exists).
    _PREVIOUS_AND_THIS = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=0,
                                                       allow_nonexistent_upstream_partitions=True)
    _LAST_DAY = dg.TimeWindowPartitionMapping(start_offset=-24, end_offset=0,
                                              allow_nonexistent_upstream_partitions=True)


def labeled_hours_available(store: Store, prefix: str = "lake", last: int | None = None
                            ) -> list[int]:
    """The labeled hours built, ascending; `last`: only the latest that many (read from the
    last days' folders, not from a listing of every hour)."""
    if last is not None:
        return store.hive_latest(f"{prefix}/labeled/impressions/", last)
    return hive_hours(store.list(f"{prefix}/labeled/impressions/"))


def read_labeled_hour(store: Store, hour_ms: int, columns: list[str] | None,
                      prefix: str = "lake") -> pa.Table:
    return store.read_parquet(labeled_key(hour_ms, prefix), columns)


def require_next_hour_complete(context: dg.AssetExecutionContext, hour_ms: int,
                               known: dict | None = None, this_hour_also: tuple[str, ...] = ()
                               ) -> dict:
    """Hour H is labeled only once raw impressions and clicks of H and H+1 (and the streams of
    `this_hour_also` of H) read their landing files after their landing windows closed (plus
    Firehose's buffer: `raw.landing_window`), and passed
    their blocking checks (`checks.failed_checks`); anything earlier could miss events or
    clicks (a raw hour built early by hand and never rebuilt, say).
    Raises dg.Failure. `known`: the records a run's earlier hours looked up (hour H's next hour
    is hour H+1's own), filled in here."""
    seen = {}
    known = {} if known is None else known
    hours = [(stream, hour, label) for stream in ("impressions", "clicks")
             for hour, label in ((hour_ms, ""), (hour_ms + HOUR_MS, "_next_hour"))]
    hours += [(stream, hour_ms, "") for stream in this_hour_also]
    for stream, hour, label in hours:
        partition = hour_partition_key(hour)
        record = latest_materialization(context, f"raw_{stream}", hour, known)
        if record is None:
            raise dg.Failure(f"raw_{stream} {partition} is not materialized yet: hour "
                             f"{hour_partition_key(hour_ms)} cannot be labeled before it")
        require_passed(record, f"raw_{stream}", hour, f"hour {hour_partition_key(hour_ms)}")
        _, closes, read_at = landing_window(record, hour)
        if read_at < closes:
            raise dg.Failure(
                f"raw_{stream} {partition} read its landing files at "
                f"{datetime.fromtimestamp(read_at, UTC)}, before its landing window closed "
                f"(with Firehose's buffer) at {datetime.fromtimestamp(closes, UTC)}: late "
                "events may be missing; rematerialize it first")
        seen[f"raw_{stream}{label}_materialized_at"] = dg.MetadataValue.timestamp(
            record.timestamp)
    return seen


class LabeledConfig(dg.Config):
    # The label window is the deployment's (CLICKLAKE_LABEL_WINDOW_MINUTES, `platform.settings`),
    # not a run's: hours labeled with two windows would train one model on two definitions.
    label_rate_min: float = DEFAULT_LABEL_RATE[0]
    label_rate_max: float = DEFAULT_LABEL_RATE[1]
    # Consecutive hours of a ranged run are validated together until they hold this many rows
    # (1 or less: each hour alone): Great Expectations' cost is mostly per validation, while
    # each row held until its group is checked costs ~0.7 KB of memory.
    check_group_rows: int = CHECK_GROUP_ROWS


@dg.asset(
    name="labeled_impressions",
    partitions_def=lagged_hourly_partitions,
    backfill_policy=independent_hours_policy,
    group_name="labeled",
    kinds={"parquet"},
    deps=[
        dg.AssetDep("raw_impressions", partition_mapping=_THIS_AND_NEXT),
        dg.AssetDep("raw_clicks", partition_mapping=_THIS_AND_NEXT),
        dg.AssetDep("raw_predictions", partition_mapping=_LAST_DAY),
        dg.AssetDep("user_profiles", partition_mapping=_PREVIOUS_AND_THIS),
        dg.AssetDep("segment_profiles", partition_mapping=_PREVIOUS_AND_THIS),
    ],
    check_specs=[dg.AssetCheckSpec(n, asset="labeled_impressions", description=d, blocking=True)
                 for n, d in LABELED_CHECKS],
    automation_condition=when_inputs_complete(),
    description="Every impression of the hour with its feature vector as of strictly before its "
    "time (the time-travel lookup table, segment profiles, enrichment, latest prediction score) "
    "and its click label: 1 iff a click for it came within the label window after it. Lags one "
    "hour: it never runs before the next hour's raw clicks are complete.",
)
def labeled_impressions(context: dg.AssetExecutionContext, config: LabeledConfig,
                        lake: LakeResource):
    store = lake.store()
    window = settings().label_window_minutes
    window_ms = window * MINUTE_MS
    checked: dict[str, list[HourOutcome]] = {name: [] for name, _ in LABELED_CHECKS}
    hours = run_hours(context)
    # Every hour's inputs are checked (`ready`: its next hour complete, its inputs built and
    # passed) before any hour is written: a ranged run's hours are recorded together at its end,
    # so a refusal at a later hour left the earlier ones in the lake (read by training_set)
    # with no materialization, metadata or check result. Then one pass over the range carries
    # state from hour to hour, reading each next hour ahead.
    completeness: dict[int, dict] = {}
    known: dict = {}  # raw materialization records by (asset, hour), shared by the range's hours
    span = raw_span(store, lake.lake_prefix)

    read_from: dict[int, str | None] = {}  # the identity of each hour's snapshot, as read

    def ready(hour: int) -> None:
        completeness[hour] = require_next_hour_complete(context, hour, known)
        # the features' snapshot holds the raw hours before: none of them read early
        footer = stored_footer(store, hour - HOUR_MS, lake.lake_prefix)
        read_from[hour] = chain_link(footer)[0]
        said, early = inputs_incomplete_of(footer)
        if not said:  # a snapshot an older clicklake wrote: its record says
            early = incomplete_inputs(latest_materialization(context, "user_profiles",
                                                             hour - HOUR_MS, known))
        if early:
            raise dg.Failure(f"user_profiles {hour_partition_key(hour - HOUR_MS)}, which hour "
                             f"{hour_partition_key(hour)}'s features are read from, is built on "
                             f"raw hours that may lack events ({early}): rematerialize them, "
                             "then the snapshots from the first of them")
        # (a record may live in another instance: the files must be there all the same). The
        # segment CTRs read the segment profile of the hour before, the latest scores a day of
        # raw predictions: missing, each read as "nothing happened".
        predictions = [("raw_predictions", h) for h in range(
            hour - PREDICTION_MAX_AGE_MS, hour + HOUR_MS, HOUR_MS)]
        require_built(store, lake.lake_prefix, f"labeled_impressions {hour_partition_key(hour)}",
                      [(f"raw_{s}", h) for s in ("impressions", "clicks")
                       for h in (hour, hour + HOUR_MS)]
                      + [("raw_impressions", hour - HOUR_MS), ("user_profiles", hour - HOUR_MS),
                         ("segment_profiles", hour - HOUR_MS), *predictions],
                      span)
        # ... and none of the predictions a failed hour
        require_inputs_passed(context, f"labeled_impressions {hour_partition_key(hour)}",
                              predictions, known)

    for hour in hours:
        ready(hour)
    # `read_from`: the snapshots the features are read from, as they stood when checked. A
    # refold of the chain (user_profiles after a rebuilt hour) may rewrite them while the range
    # is built, and an hour written from the old chain after the refold has named the labeled
    # hours to redo would keep stale features, unflagged.
    tables = build_labeled_hours(store, hours, window_ms, lake.lake_prefix)
    hour_of = {labeled_key(hour, lake.lake_prefix): hour for hour in hours}

    def unrefolded(hour: int) -> None:
        if snapshot_identity(store, hour - HOUR_MS, lake.lake_prefix) != read_from[hour]:
            raise dg.Failure(
                f"user_profiles {hour_partition_key(hour - HOUR_MS)} was rebuilt while this "
                f"run built labeled hour {hour_partition_key(hour)} from it (a refold of the "
                "snapshot chain): not written; rematerialize labeled_impressions from "
                f"{hour_partition_key(hour)} once user_profiles is done")

    def built():
        for hour, table in zip(hours, tables, strict=True):
            unrefolded(hour)
            yield labeled_key(hour, lake.lake_prefix), table

    # Checked before it is written: an hour failing a blocking check never reaches the lake
    # (training reads every labeled file there), and an earlier copy of it goes. Consecutive
    # hours are checked together, up to `check_group_rows` rows; each hour's snapshot is
    # checked again just before it is written (a refold may come while it waits in its group).
    for done in checked_hours(store, built(), (config.label_rate_min, config.label_rate_max),
                              config.check_group_rows, lambda key: unrefolded(hour_of[key])):
        hour, table, failed = hour_of[done.key], done.table, done.failed
        for name, per_hour in checked.items():  # a check left out of specs is not enforced
            per_hour.append(HourOutcome(hour, table.num_rows, done.outcomes.get(name)))
        if failed:
            context.log.error(f"{iso(hour)} failed {', '.join(failed)}: not written")
        summary = hour_summary(table)
        context.log.info(f"labeled {table.num_rows} impressions of {iso(hour)}; "
                         f"label rate {summary['label_rate']:.4f}")
        context.add_asset_metadata({
            "dagster/row_count": table.num_rows,
            "dagster/column_schema": column_schema(table.schema),
            **summary,
            "label_window_minutes": window,
            "bytes": done.nbytes,
            "written": not failed,
            "failed_checks": ", ".join(failed) or "none",
            "path": dg.MetadataValue.path(store.uri(done.key)),
            **completeness.pop(hour),
        }, partition_key=hour_partition_key(hour))
        del done, table
    yield dg.MaterializeResult()
    for name, description in LABELED_CHECKS:
        yield check_over_hours("labeled_impressions", name, description, checked[name])


@dg.asset(
    partitions_def=lagged_hourly_partitions,
    backfill_policy=independent_hours_policy,
    group_name="labeled",
    kinds={"parquet"},
    deps=[
        dg.AssetDep("raw_predictions"),
        dg.AssetDep("raw_impressions", partition_mapping=_THIS_AND_NEXT),
        dg.AssetDep("raw_clicks", partition_mapping=_THIS_AND_NEXT),
    ],
    automation_condition=when_inputs_complete(),
    description="Each prediction of the hour joined to what happened (did the user click within "
    "the label window after it), with per-model AUC, calibration and accuracy: model monitoring.",
)
def prediction_outcomes(context: dg.AssetExecutionContext, lake: LakeResource):
    store = lake.store()
    window = settings().label_window_minutes
    prefix = lake.lake_prefix
    read = lambda stream, h: read_raw(store, stream, h, prefix)
    span = raw_span(store, prefix)
    hours = run_hours(context)
    # Every hour checked before any is written, as labeled_impressions does: a refusal at a
    # later hour left the earlier hours' files in the lake with no materialization or metrics.
    completeness: dict[int, dict] = {}
    known: dict = {}
    for hour in hours:
        completeness[hour] = require_next_hour_complete(context, hour, known,
                                                        this_hour_also=("predictions",))
        require_built(store, prefix, f"prediction_outcomes {hour_partition_key(hour)}",
                      [("raw_predictions", hour)] + [(f"raw_{s}", h) for s in (
                          "impressions", "clicks") for h in (hour, hour + HOUR_MS)], span)
    for hour in hours:
        preds = read("predictions", hour)
        imps = pa.concat_tables([read("impressions", hour), read("impressions", hour + HOUR_MS)])
        clicks = pa.concat_tables([read("clicks", hour), read("clicks", hour + HOUR_MS)])
        out = join_outcomes(preds, imps, clicks, window * MINUTE_MS)
        # A prediction naming an impression of another hour (stamped after it, or an hour
        # before) is taken as not clicked: said, not hidden.
        named = pc.drop_null(preds["impression_id"])
        unseen = int(pc.sum(pc.invert(pc.is_in(named, value_set=pc.unique(
            imps["impression_id"])))).as_py() or 0) if len(named) else 0
        if unseen:
            context.log.warning(f"prediction_outcomes {hour_partition_key(hour)}: {unseen} "
                                "predictions name an impression that is not in this hour or "
                                "the next: counted as not clicked")
        key = f"{prefix}/outcomes/predictions/{hive_hour_path(hour)}/part-0.parquet"
        store.write_parquet(key, out)
        per_model = outcome_metrics(out)
        flat = {f"{model}/{k}": v for model, m in per_model.items() for k, v in m.items()
                if not math.isnan(v)}  # drop NaN (undefined AUC for one-class hours) ...
        undefined = [f"{model}/{k}" for model, m in per_model.items() for k, v in m.items()
                     if math.isnan(v)]  # ... and say which
        context.add_asset_metadata({
            "dagster/row_count": out.num_rows,
            "dagster/column_schema": column_schema(out.schema),
            "models": ", ".join(per_model) or "none",
            **flat,
            "undefined_metrics": ", ".join(undefined) or "none",
            "label_window_minutes": window,
            "predictions_naming_an_unseen_impression": unseen,
            "path": dg.MetadataValue.path(store.uri(key)),
            **completeness[hour],
        }, partition_key=hour_partition_key(hour))
    return dg.MaterializeResult()


labeled_assets = [labeled_impressions, prediction_outcomes]
