"""Run history retention (`clicklake.run_history`): the landing sensor's finished runs older than
the retention go, with their materializations; every other run, and every run not finished,
stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from clicklake import run_history
from clicklake.assets.serving import SENSOR_NAME
from clicklake.definitions import defs
from clicklake.run_history import (
    prune_run_history_job,
    prune_run_history_schedule,
    prune_sensor_runs,
)

SENSOR_TAGS = {"dagster/sensor_name": SENSOR_NAME}


@dg.asset
def folded() -> int:
    return 1


@dg.asset
def hourly() -> int:
    return 2


@dg.op
def fails() -> None:
    raise RuntimeError("the lake was unreachable")


@dg.job
def failing_job():
    fails()


def _history(instance: dg.DagsterInstance) -> dict[str, str]:
    """Run id -> what it is, for runs of every kind."""
    runs = {}
    for i in range(3):
        result = dg.materialize([folded], instance=instance, tags={**SENSOR_TAGS,
                                                                  "dagster/run_key": f"k{i}"})
        runs[result.run_id] = "sensor, succeeded"
    failed = failing_job.execute_in_process(instance=instance, tags=SENSOR_TAGS,
                                            raise_on_error=False)
    runs[failed.run_id] = "sensor, failed"
    queued = instance.create_run_for_job(failing_job, tags=SENSOR_TAGS)
    runs[queued.run_id] = "sensor, not started"
    other = dg.materialize([folded], instance=instance,
                           tags={"dagster/sensor_name": "hourly_automation"})
    runs[other.run_id] = "another sensor"
    mine = dg.materialize([hourly], instance=instance)
    runs[mine.run_id] = "no sensor"
    return runs


def _left(instance: dg.DagsterInstance) -> set[str]:
    return {r.dagster_run.run_id for r in instance.get_run_records()}


def test_the_sensors_finished_runs_past_the_retention_go_and_nothing_else():
    with dg.instance_for_test() as instance:
        runs = _history(instance)
        now = datetime.now(UTC)
        kept = prune_sensor_runs(instance, now + timedelta(days=13), days=14)
        assert (kept.deleted, kept.more) == (0, False)  # a day younger than the retention
        assert _left(instance) == set(runs)
        pruned = prune_sensor_runs(instance, now + timedelta(days=15), days=14)
        assert (pruned.deleted, pruned.more) == (4, False)
        assert pruned.cutoff == now + timedelta(days=1)
        assert {runs[r] for r in _left(instance)} == {"sensor, not started", "another sensor",
                                                      "no sensor"}
        # their materializations went with them; the others' stayed
        left = instance.fetch_materializations(dg.AssetKey("folded"), limit=10).records
        assert [r.run_id for r in left] == [r for r, what in runs.items()
                                            if what == "another sensor"]
        assert len(instance.fetch_materializations(dg.AssetKey("hourly"), limit=10).records) == 1


def test_a_pass_stops_at_its_limit_and_says_more_are_left():
    with dg.instance_for_test() as instance:
        _history(instance)
        later = datetime.now(UTC) + timedelta(days=30)
        first = prune_sensor_runs(instance, later, days=14, limit=3)
        assert (first.deleted, first.more) == (3, True)
        second = prune_sensor_runs(instance, later, days=14, limit=3)
        assert (second.deleted, second.more) == (1, False)


def test_a_retention_shorter_than_the_sensors_cursor_needs_is_refused():
    with dg.instance_for_test() as instance, pytest.raises(ValueError, match="at least 2 days"):
        prune_sensor_runs(instance, datetime.now(UTC), days=1)


def test_the_daily_job_prunes_with_the_deployments_setting(monkeypatch):
    """The job as the schedule launches it: `CLICKLAKE_RUN_HISTORY_DAYS` decides, and its
    metadata says what it did. Run with a clock 20 days ahead, as a job 20 days later would."""
    with dg.instance_for_test() as instance:
        runs = _history(instance)
        later = datetime.now(UTC) + timedelta(days=20)

        class Clock(datetime):
            @classmethod
            def now(cls, tz=None):
                return later

        monkeypatch.setattr(run_history, "datetime", Clock)
        monkeypatch.setenv("CLICKLAKE_RUN_HISTORY_DAYS", "30")
        result = prune_run_history_job.execute_in_process(instance=instance)
        meta = result.output_for_node("prune_run_history")
        assert meta == 0 and _left(instance) >= set(runs)  # 20 days old < 30 kept
        monkeypatch.setenv("CLICKLAKE_RUN_HISTORY_DAYS", "14")
        result = prune_run_history_job.execute_in_process(instance=instance)
        assert result.output_for_node("prune_run_history") == 4
        event = next(e for e in result.all_node_events if e.is_successful_output)
        metadata = event.event_specific_data.metadata
        assert metadata["runs_deleted"].value == 4 and metadata["days_kept"].value == 14
        assert metadata["more_left"].value is False
        assert {runs.get(r, "the job's own") for r in _left(instance)} == {
            "sensor, not started", "another sensor", "no sensor", "the job's own"}


def test_a_config_below_the_minimum_fails_the_run_with_a_message():
    with dg.instance_for_test() as instance:
        result = prune_run_history_job.execute_in_process(
            instance=instance, raise_on_error=False,
            run_config={"ops": {"prune_run_history": {"config": {"days": 1}}}})
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        error = failure.event_specific_data.error
        assert error.cls_name == "Failure" and "at least 2 days are kept" in error.message


def test_the_schedule_runs_daily_and_is_on_by_default():
    assert defs.get_job_def("prune_run_history_job") is not None
    assert prune_run_history_schedule.cron_schedule == "30 3 * * *"
    assert prune_run_history_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    request = prune_run_history_schedule.evaluate_tick(dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 27, 3, 30, tzinfo=UTC)))
    assert len(request.run_requests) == 1
