"""Run history retention (`clicklake.run_history`): the landing sensor's finished runs older than
the retention go, with their materializations; every other run, and every run not finished,
stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

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


@dg.asset_check(asset=folded)
def folded_matches() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)


@dg.op
def fails() -> None:
    raise RuntimeError("the lake was unreachable")


@dg.job
def failing_job():
    fails()


def _history(instance: dg.DagsterInstance) -> dict[str, str]:
    """Run id -> what it is, for runs of every kind."""
    runs = {}
    for i in range(3):  # with the asset's check, as the sensor's runs have theirs
        result = dg.materialize([folded, folded_matches], instance=instance,
                                tags={**SENSOR_TAGS, "dagster/run_key": f"k{i}"})
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
        assert (pruned.deleted, pruned.more, pruned.checks) == (4, False, True)
        assert pruned.cutoff == now + timedelta(days=1)
        assert {runs[r] for r in _left(instance)} == {"sensor, not started", "another sensor",
                                                      "no sensor"}
        # their materializations went with them; the others' stayed
        left = instance.fetch_materializations(dg.AssetKey("folded"), limit=10).records
        assert [r.run_id for r in left] == [r for r, what in runs.items()
                                            if what == "another sensor"]
        assert len(instance.fetch_materializations(dg.AssetKey("hourly"), limit=10).records) == 1
        # and their check executions (Dagster's delete_run keeps them)
        check = dg.AssetCheckKey(dg.AssetKey("folded"), "folded_matches")
        assert instance.event_log_storage.get_asset_check_execution_history(check, limit=10) == []


def test_runs_go_oldest_first_by_creation_time_page_after_page(monkeypatch):
    """Runs created at known instants (a frozen clock): those older than the retention go,
    oldest first, across several pages; one younger by two hours stays."""
    from dagster._core.test_utils import create_run_for_test, freeze_time

    monkeypatch.setattr(run_history, "PAGE", 2)
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    ages = {"30d": timedelta(days=30), "25d": timedelta(days=25), "20d": timedelta(days=20),
            "16d": timedelta(days=16), "14d+2h": timedelta(days=14, hours=2),
            "14d-2h": timedelta(days=14, hours=-2), "1d": timedelta(days=1)}
    with dg.instance_for_test() as instance:
        ids = {}
        for name, age in ages.items():
            with freeze_time(now - age):
                ids[create_run_for_test(instance, status=dg.DagsterRunStatus.SUCCESS,
                                        tags=SENSOR_TAGS).run_id] = name

        def left() -> list[str]:
            return sorted((ids[r] for r in _left(instance)), key=lambda n: ages[n])

        assert prune_sensor_runs(instance, now, days=14, limit=1).deleted == 1
        assert left() == ["1d", "14d-2h", "14d+2h", "16d", "20d", "25d"]  # the oldest went
        third = prune_sensor_runs(instance, now, days=14, limit=3)
        assert (third.deleted, third.more) == (3, True)  # pages of 2: a full one, then one
        assert left() == ["1d", "14d-2h", "14d+2h"]
        last = prune_sensor_runs(instance, now.astimezone(timezone(timedelta(hours=-5))),
                                 days=14)  # the same instant, another zone
        assert (last.deleted, last.more) == (1, False)
        assert left() == ["1d", "14d-2h"]


@pytest.mark.parametrize(("status", "goes"), [
    (dg.DagsterRunStatus.SUCCESS, True), (dg.DagsterRunStatus.FAILURE, True),
    (dg.DagsterRunStatus.CANCELED, True), (dg.DagsterRunStatus.NOT_STARTED, False),
    (dg.DagsterRunStatus.STARTING, False),
    (dg.DagsterRunStatus.STARTED, False), (dg.DagsterRunStatus.CANCELING, False),
])
def test_only_runs_that_ended_go(status, goes):
    from dagster._core.test_utils import create_run_for_test

    with dg.instance_for_test() as instance:
        run = create_run_for_test(instance, status=status, tags=SENSOR_TAGS)
        pruned = prune_sensor_runs(instance, datetime.now(UTC) + timedelta(days=15), days=14)
        assert pruned.deleted == int(goes)
        assert (run.run_id in _left(instance)) is not goes


def test_a_time_without_a_zone_is_refused():
    with dg.instance_for_test() as instance, pytest.raises(ValueError, match="time zone"):
        prune_sensor_runs(instance, datetime(2026, 11, 27, 12, 0), days=14)


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
        assert metadata["check_executions_deleted"].value is True
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


def test_a_bad_setting_fails_the_run_naming_the_variable(monkeypatch):
    monkeypatch.setenv("CLICKLAKE_RUN_HISTORY_DAYS", "1")
    with dg.instance_for_test() as instance:
        result = prune_run_history_job.execute_in_process(instance=instance,
                                                          raise_on_error=False)
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert "CLICKLAKE_RUN_HISTORY_DAYS=1" in failure.event_specific_data.error.message


def test_the_schedule_runs_daily_and_is_on_by_default():
    assert defs.get_job_def("prune_run_history_job") is not None
    assert prune_run_history_schedule.execution_timezone == "UTC"
    assert prune_run_history_schedule.cron_schedule == "30 3 * * *"
    assert prune_run_history_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    request = prune_run_history_schedule.evaluate_tick(dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 27, 3, 30, tzinfo=UTC)))
    assert len(request.run_requests) == 1
