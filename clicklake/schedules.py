"""Hourly automation: materialize each raw partition once its landing window has closed; the
hourly assets downstream of raw follow through their automation conditions
(`assets.automation`), evaluated by `hourly_automation`."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from clicklake.assets.automation import CATCH_UP
from clicklake.assets.partitions import hourly_partitions
from clicklake.platform.settings import settings


def raw_window_closes_after(allowed_lateness_minutes: int) -> timedelta:
    """Whole hours from the start of partition H to the hour whose HH:15 tick builds it:
    H can still receive events until H + 1 h + the allowed lateness, and the tick's 15 minutes
    leave Firehose's buffer time for the last files to land (H + 2 h 15 with the default 1 h)."""
    return timedelta(hours=1 + -(-allowed_lateness_minutes // 60))

raw_hourly_job = dg.define_asset_job(
    "raw_hourly_job",
    selection=dg.AssetSelection.groups("raw"),
    description="Materialize the raw impressions, clicks and predictions of one hour.",
)


@dg.schedule(job=raw_hourly_job, cron_schedule="15 * * * *", execution_timezone="UTC")
def raw_hourly_schedule(context: dg.ScheduleEvaluationContext):
    """At HH:15, build the raw partitions of the hour whose landing window just closed (the
    deployment's allowed lateness: `platform.settings`)."""
    hour = context.scheduled_execution_time.replace(minute=0, second=0, microsecond=0)
    target = hour - raw_window_closes_after(settings().allowed_lateness_minutes)
    key = target.strftime("%Y-%m-%d-%H:%M")
    if key not in hourly_partitions.get_partition_keys(current_time=context.scheduled_execution_time):
        return dg.SkipReason(f"partition {key} is outside the partitions definition")
    return dg.RunRequest(run_key=key, partition_key=key)


hourly_automation = dg.AutomationConditionSensorDefinition(
    "hourly_automation",
    target=dg.AssetSelection.groups("lookup", "labeled"),
    default_status=dg.DefaultSensorStatus.RUNNING,  # acts only once raw hours are built
    minimum_interval_seconds=60,
    description="Builds each hour's tiles, snapshots and segment profiles once its raw partitions "
    "are built, and each labeled hour and its prediction outcomes once the next hour's are: "
    f"inputs complete, within the last {CATCH_UP} (a run refuses an input hour that failed its "
    "blocking checks).",
)
