"""Partitions shared by the hourly assets."""

from __future__ import annotations

import dagster as dg

# Event-time hours. The start is fixed (definitions must not depend on the environment at import);
# generated and imported streams default to hours after it.
PARTITIONS_START = "2025-01-01-00:00"

hourly_partitions = dg.HourlyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")

# Labeled hours lag one hour: hour H needs the clicks of H+1 (label window) to be complete.
lagged_hourly_partitions = dg.HourlyPartitionsDefinition(
    start_date=PARTITIONS_START, timezone="UTC", end_offset=-1
)
