"""Partitions shared by the hourly assets, and how a backfill splits them into runs."""

from __future__ import annotations

import warnings

import dagster as dg

from clicklake.platform.timeutil import HOUR_MS, parse_hour_partition_key, to_ms

# Event-time hours. The start is fixed (definitions must not depend on the environment at import);
# generated and imported streams default to hours after it.
PARTITIONS_START = "2025-01-01-00:00"
PARTITIONS_START_MS = parse_hour_partition_key(PARTITIONS_START)

hourly_partitions = dg.HourlyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")

# Labeled hours lag one hour: hour H needs the clicks of H+1 (label window) to be complete.
lagged_hourly_partitions = dg.HourlyPartitionsDefinition(
    start_date=PARTITIONS_START, timezone="UTC", end_offset=-1
)

# Hours that do not depend on each other (raw, tiles, labeled) are backfilled half a day per run:
# one process start per 12 hours instead of per hour, and the runs still go side by side up to
# the run queue's limit.
HOURS_PER_RUN = 12
independent_hours_policy = dg.BackfillPolicy.multi_run(max_partitions_per_run=HOURS_PER_RUN)

# A chain folds hour H into the snapshot of H-1: a backfill folds its whole range in one run, hour
# after hour, instead of one run per hour that waits for the previous one.
chain_policy = dg.BackfillPolicy.single_run()

# Dagster 1.13 still marks the decorator's backfill_policy parameter beta; it is what its docs and
# the Dagster Open Platform use for ranged runs. Say so once here instead of on every import.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)


def run_hours(context: dg.AssetExecutionContext) -> list[int]:
    """The event hours (epoch ms) this run materializes, in order: one for a partition run, every
    hour of the range for a backfill run."""
    window = context.partition_time_window
    return list(range(to_ms(window.start), to_ms(window.end), HOUR_MS))
