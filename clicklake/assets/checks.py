"""Asset check results of a run that covers one hour or, in a backfill, a range of hours.

A check is evaluated once per run, so a backfill run of several hours reports one result per
check: it passes only if every hour passed, and its metadata names the hours that failed.

Dagster keeps one result per check and asset, not per partition: the latest, whichever hour it
was for. So "blocking" cannot stop one bad hour by itself (a later good hour's result released
it, and a bad hour's held back every good one). Each hour's materialization therefore names the
checks it failed (`FAILED_CHECKS`), and the assets built on it refuse such an input hour
(`require_inputs_passed`).
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from clicklake.platform.quality import CheckOutcome
from clicklake.platform.timeutil import hour_partition_key

FAILED_CHECKS = "failed_checks"  # an hour's materialization metadata: "none" or the names


def recorded_text(record: dg.EventLogRecord | None, key: str) -> str | None:
    """A materialization's metadata text under `key`; None when it is "none", empty, absent,
    or there is no materialization."""
    if record is None or record.asset_materialization is None:
        return None
    value = record.asset_materialization.metadata.get(key)
    text = None if value is None else str(value.value)
    return None if text in (None, "", "none") else text


def failed_checks(record: dg.EventLogRecord | None) -> str | None:
    """The blocking checks the materialization failed (None: none, or not recorded)."""
    return recorded_text(record, FAILED_CHECKS)


def latest_materialization(context: dg.AssetExecutionContext, asset: str, hour: int,
                           known: dict) -> dg.EventLogRecord | None:
    """The latest materialization of `asset`'s hour (None: never), looked up once per run:
    `known` keeps them by (asset, hour) (a labeled hour's next hour is the next one's own)."""
    if (asset, hour) not in known:
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset),
                                  asset_partitions=[hour_partition_key(hour)]), limit=1).records
        known[(asset, hour)] = records[0] if records else None
    return known[(asset, hour)]


def require_passed(record: dg.EventLogRecord | None, asset: str, hour: int, what: str) -> None:
    """dg.Failure when the materialization `record` of `asset`'s hour failed its checks."""
    if failed := failed_checks(record):
        raise dg.Failure(f"{asset} {hour_partition_key(hour)} failed its blocking checks "
                         f"({failed}): {what} is not built on it; fix its landing data "
                         "and rematerialize it first")


def require_inputs_passed(context: dg.AssetExecutionContext, what: str,
                          inputs: list[tuple[str, int]], known: dict | None = None) -> None:
    """dg.Failure when the latest materialization of an input (asset, hour) failed its
    blocking checks. `known`: as `latest_materialization` takes it."""
    known = {} if known is None else known
    for asset, hour in inputs:
        require_passed(latest_materialization(context, asset, hour, known), asset, hour, what)


@dataclass(frozen=True)
class HourOutcome:
    hour_ms: int
    rows: int
    outcome: CheckOutcome | None  # None: not enforced this hour (too few rows to judge)


def check_over_hours(asset: str, name: str, description: str,
                     hours: list[HourOutcome]) -> dg.AssetCheckResult:
    """One check's result over the hours of a run (in order)."""
    failed = [h for h in hours if h.outcome is not None and not h.outcome.passed]
    skipped = sum(h.outcome is None for h in hours)
    if len(hours) == 1:
        failures = hours[0].outcome.failures if hours[0].outcome else {}
    else:
        failures = {f"{hour_partition_key(h.hour_ms)} {label}": n
                    for h in failed for label, n in h.outcome.failures.items()}
    if skipped:
        description += f" Not enforced in {skipped} of {len(hours)} hours: too few rows to judge."
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=name,
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "failing_expectations": failures or "none",
            # the hours it was enforced in (a skipped hour checked nothing)
            "rows_checked": sum(h.rows for h in hours if h.outcome is not None),
            "hours_checked": len(hours) - skipped,
            "hours_not_enforced": skipped,
            "failing_hours": ", ".join(hour_partition_key(h.hour_ms) for h in failed) or "none",
        },
    )
