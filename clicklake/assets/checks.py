"""Asset check results of a run that covers one hour or, in a backfill, a range of hours.

A check is evaluated once per run, so a backfill run of several hours reports one result per
check: it passes only if every hour passed, and its metadata names the hours that failed.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from clicklake.platform.quality import CheckOutcome
from clicklake.platform.timeutil import hour_partition_key


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
            "rows_checked": sum(h.rows for h in hours),
            "hours_checked": len(hours),
            "hours_not_enforced": skipped,
            "failing_hours": ", ".join(hour_partition_key(h.hour_ms) for h in failed) or "none",
        },
    )
