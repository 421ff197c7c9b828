"""Run history retention: the landing sensor launches a `serving_lookup` run for about every
tick that finds files (~1,400 a day), each leaving its event rows in the Dagster instance's
storage; over months they slow the instance's queries and the UI. A daily job deletes the
sensor's finished runs older than `CLICKLAKE_RUN_HISTORY_DAYS` (14), oldest first, with their
event logs (their `serving_lookup` materializations among them: the asset's history then
starts there) and their check executions (`online_matches_lookup`), which Dagster's
`delete_run` leaves behind.

Nothing else is deleted: the hourly runs of the lake's assets keep their materializations,
which later runs read (inputs complete, checks passed), and a run still queued or running is
never touched. The sensor rebuilds a lost cursor from its runs of the last 24 hours, which the
shortest retention (2 days) keeps."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import Field

from clicklake.assets.serving import ASKED_RUNS_MS, RUN_OVER, SENSOR_NAME
from clicklake.platform.settings import VARIABLES, settings
from clicklake.platform.timeutil import HOUR_MS

PAGE = 200  # run records asked for at a time
MIN_DAYS = VARIABLES["CLICKLAKE_RUN_HISTORY_DAYS"][1]
if MIN_DAYS * 24 * HOUR_MS <= ASKED_RUNS_MS:
    raise AssertionError("the shortest run history must outlast the sensor's cursor rebuild")


def _delete_check_executions(instance: dg.DagsterInstance, run_ids: list[str]) -> bool:
    """Delete the asset check executions of `run_ids` (one per sensor run: its
    `online_matches_lookup`), which `delete_run` keeps (Dagster 1.13): without this, a row a
    run would stay for good, and the check's history would list runs that are gone. Through
    the SQL event log storage's own table (SQLite and PostgreSQL alike); False when the
    instance's storage has none (then nothing is deleted)."""
    try:
        from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
        from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
    except ImportError:  # a Dagster that moved them: the rows stay, the runs still go
        return False
    storage = instance.event_log_storage
    if not isinstance(storage, SqlEventLogStorage) or not storage.has_table(
            AssetCheckExecutionsTable.name):
        return False
    with storage.index_connection() as conn:
        conn.execute(AssetCheckExecutionsTable.delete().where(
            AssetCheckExecutionsTable.c.run_id.in_(run_ids)))
    return True


@dataclass(frozen=True)
class Pruned:
    deleted: int
    cutoff: datetime  # runs created before it were deleted
    more: bool  # finished runs before the cutoff are left: `limit` ended the pass
    checks: bool = True  # their check executions went too (False: this storage kept them)


def prune_sensor_runs(instance: dg.DagsterInstance, now: datetime, days: int,
                      limit: int = 10_000, log=None) -> Pruned:
    """Delete the landing sensor's finished runs created more than `days` before `now` (an
    aware datetime), oldest first, at most `limit` of them (a first pass over a long history
    is spread over several runs rather than one long one)."""
    if now.tzinfo is None:
        raise ValueError("now: a time zone is needed (Dagster compares creation times in UTC)")
    now = now.astimezone(UTC)  # Dagster drops the zone before comparing
    if days < MIN_DAYS:
        raise ValueError(f"a run history of {days} days: at least {MIN_DAYS} days are kept (a "
                         "lost sensor cursor is rebuilt from the sensor's runs of the last 24 "
                         "hours)")
    cutoff = now - timedelta(days=days)
    old = dg.RunsFilter(tags={"dagster/sensor_name": SENSOR_NAME}, statuses=sorted(
        RUN_OVER, key=lambda s: s.value), created_before=cutoff)
    deleted, checks = 0, True
    while deleted < limit:
        records = instance.get_run_records(old, limit=min(PAGE, limit - deleted), ascending=True)
        if not records:
            return Pruned(deleted, cutoff, False, checks)
        ids = [record.dagster_run.run_id for record in records]
        for run_id in ids:
            instance.delete_run(run_id)
        checks = _delete_check_executions(instance, ids) and checks
        deleted += len(records)
        if log is not None:
            log(f"deleted {deleted} runs of {SENSOR_NAME} created before {cutoff.isoformat()}")
    return Pruned(deleted, cutoff, bool(instance.get_run_records(old, limit=1)), checks)


class RunHistoryConfig(dg.Config):
    days: int | None = Field(
        default=None, ge=1, le=36_500, description="Days of the landing sensor's runs to keep "
        "(default: CLICKLAKE_RUN_HISTORY_DAYS, 14; at least 2).")
    limit: int = Field(default=10_000, ge=1, description="Runs deleted at most by this run.")


@dg.op(description="Delete the landing sensor's finished runs older than the run history "
                   "retention, with their event logs.")
def prune_run_history(context: dg.OpExecutionContext, config: RunHistoryConfig) -> dg.Output:
    try:
        days = settings().run_history_days if config.days is None else config.days
        pruned = prune_sensor_runs(context.instance, datetime.now(UTC), days, config.limit,
                                   context.log.info)
    except ValueError as exc:  # too short a retention, a bad setting: said plainly in the UI
        raise dg.Failure(str(exc)) from None
    if pruned.more:
        context.log.info(f"stopped at {config.limit} runs: the rest goes in the next runs")
    return dg.Output(pruned.deleted, metadata={
        "runs_deleted": pruned.deleted, "created_before": pruned.cutoff.isoformat(),
        "days_kept": days, "more_left": pruned.more, "sensor": SENSOR_NAME,
        "check_executions_deleted": pruned.checks})


@dg.job(description="Run history retention: the landing sensor's finished runs older than "
                    "CLICKLAKE_RUN_HISTORY_DAYS (14) are deleted, with their event logs.")
def prune_run_history_job():
    prune_run_history()


prune_run_history_schedule = dg.ScheduleDefinition(
    name="prune_run_history_daily", job=prune_run_history_job, cron_schedule="30 3 * * *",
    execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 03:30 UTC: delete the landing sensor's finished runs older than "
                "CLICKLAKE_RUN_HISTORY_DAYS (14).")
