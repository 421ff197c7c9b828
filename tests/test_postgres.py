"""The production instance config against a real PostgreSQL server.

A throwaway cluster (initdb + pg_ctl on a free loopback port, password authentication over TCP) is
the Dagster instance's run, event-log and schedule storage, configured by the `storage:` and
`run_coordinator:` sections of deploy/dagster.yaml as written (credentials from environment
variables), and compute logs go to S3 (moto) through the same `compute_logs:` section. Only the
ECS run launcher is swapped for the default one. Then: the code location loads, a raw partition
materializes, and a tick of the hourly schedule is evaluated by Dagster's scheduler and recorded.

PostgreSQL comes from Debian's packages (`.ci/run` installs them); without it the test fails under
CI and skips elsewhere.
"""

from __future__ import annotations

import datetime as dt
import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import boto3
import dagster as dg
import pytest
import yaml

from clicklake.definitions import defs
from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import parse_instant
from clicklake.resources.lake import LakeResource

ROOT = Path(__file__).resolve().parents[1]
PROD_INSTANCE = ROOT / "deploy" / "dagster.yaml"
START = parse_instant("2026-11-24T10:00:00Z")
PARTITION = "2026-11-24-10:00"
PASSWORD = "clicklake-test-pw"


def _pg_bindir() -> str | None:
    """The newest Debian PostgreSQL server's bin folder (initdb is not on PATH there)."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                  key=lambda p: int(p.split("/")[-3]))
    if dirs:
        return os.path.dirname(dirs[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd[-1]}: {done.stdout}{done.stderr}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster of its own on loopback; yields host, port, user, password, db."""
    bindir = _pg_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries not found: .ci/run must install postgresql")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    # Not under pytest's tmp folder: the `postgres` user must be able to reach this one.
    base = Path(tempfile.mkdtemp(prefix="clicklake-pg-"))
    data, sock, log = base / "data", base / "sock", base / "server.log"
    sock.mkdir()
    pwfile = base / "pw"
    pwfile.write_text(PASSWORD + "\n")
    # initdb and postgres refuse to run as root: run them as the `postgres` system user then.
    prefix: list[str] = []
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        log.touch()
        for p in (base, sock, pwfile, log):
            os.chown(p, pg.pw_uid, pg.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    _run(prefix + [f"{bindir}/initdb", "-D", str(data), "-U", "clicklake", f"--pwfile={pwfile}",
                   "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync", "-E", "UTF8"])
    opts = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off")
    _run(prefix + [f"{bindir}/pg_ctl", "-D", str(data), "-o", opts, "-l", str(log), "-w",
                   "-t", "60", "start"])
    try:
        _run(prefix + [f"{bindir}/createdb", "-h", str(sock), "-p", str(port), "-U", "clicklake",
                       "dagster"])
        yield {"host": "127.0.0.1", "port": port, "user": "clicklake", "password": PASSWORD,
               "db": "dagster"}
    finally:
        subprocess.run(prefix + [f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
                       check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _instance_config(endpoint: str) -> dict:
    """deploy/dagster.yaml with the ECS launcher swapped for the default one (no ECS here) and
    the S3 compute logs pointed at the local S3 endpoint; storage and coordinator untouched."""
    config = yaml.safe_load(PROD_INSTANCE.read_text())
    config.pop("run_launcher")
    config["compute_logs"]["config"]["endpoint_url"] = endpoint
    return config


@pytest.fixture
def pg_instance(postgres, moto_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_HOST", postgres["host"])
    monkeypatch.setenv("DAGSTER_PG_PORT", str(postgres["port"]))
    monkeypatch.setenv("DAGSTER_PG_USERNAME", postgres["user"])
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", postgres["password"])
    monkeypatch.setenv("DAGSTER_PG_DB", postgres["db"])
    monkeypatch.setenv("DAGSTER_COMPUTE_LOG_BUCKET", "clicklake-compute-logs")
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    try:
        s3.create_bucket(Bucket="clicklake-compute-logs")
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(_instance_config(moto_endpoint)))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        yield instance, s3


def _psql_count(postgres: dict, sql: str) -> int:
    import psycopg2

    conn = psycopg2.connect(host=postgres["host"], port=postgres["port"], user=postgres["user"],
                            password=postgres["password"], dbname=postgres["db"])
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_wrong_password_is_refused(postgres):
    """The cluster really checks credentials, so the env-var credentials below are exercised."""
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host=postgres["host"], port=postgres["port"], user=postgres["user"],
                         password="wrong", dbname=postgres["db"]).close()


def test_partition_materializes_into_postgres(pg_instance, postgres, tmp_path):
    instance, s3 = pg_instance
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"

    lake = LakeResource(root=str(tmp_path / "lake"))
    generate(Store(lake.resolved_root()), start_ms=START, hours=2, users=30, seed=3)
    result = dg.materialize([defs.get_assets_def("raw_impressions")], partition_key=PARTITION,
                            resources={"lake": lake}, instance=instance)
    assert result.success
    kept = result.asset_materializations_for_node("raw_impressions")[0].metadata["rows_kept"].value
    assert kept > 0

    # Read back through the instance, and straight from PostgreSQL's tables.
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_impressions"),
                              asset_partitions=[PARTITION]), limit=1).records[0]
    assert record.asset_materialization.metadata["rows_kept"].value == kept
    assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
    assert _psql_count(postgres, f"select count(*) from runs where run_id = '{result.run_id}'") == 1
    assert _psql_count(postgres, "select count(*) from event_logs where dagster_event_type = "
                                 f"'ASSET_MATERIALIZATION' and run_id = '{result.run_id}'") == 1
    assert _psql_count(postgres, "select count(*) from asset_keys "
                                 "where asset_key = '[\"raw_impressions\"]'") == 1
    # The step's captured logs were uploaded to the compute-log bucket.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="clicklake-compute-logs",
                                                  Prefix="dagster/").get("Contents", [])]
    assert any(result.run_id in k for k in keys), keys


def test_schedule_tick_recorded_in_postgres(pg_instance, postgres):
    from dagster._core.scheduler.instigation import TickStatus
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._scheduler.scheduler import launch_scheduled_runs

    instance, _ = pg_instance
    target = ModuleTarget(module_name="clicklake.definitions", attribute=None,
                          working_directory=str(ROOT), location_name="clicklake")
    with create_test_daemon_workspace_context(target, instance) as context:
        # The code location loads (in its own gRPC server process, as in production).
        location = next(iter(
            context.create_request_context().get_code_location_entries().values()))
        assert location.load_error is None, location.load_error
        repo = location.code_location.get_repository("__repository__")
        assert {n.asset_key.to_user_string() for n in repo.get_asset_node_snaps()} >= {
            "raw_impressions", "user_profiles", "labeled_impressions", "deployed_model"}
        schedule = repo.get_schedule("raw_hourly_schedule")
        instance.start_schedule(schedule)
        now = dt.datetime.now(dt.UTC)
        tick_time = now.replace(minute=15, second=0, microsecond=0) + dt.timedelta(hours=1)
        list(launch_scheduled_runs(context, logging.getLogger("scheduler"),
                                   end_datetime_utc=tick_time + dt.timedelta(seconds=5),
                                   iteration_times={}))

    ticks = instance.get_ticks(schedule.get_remote_origin_id(), schedule.selector_id)
    assert len(ticks) == 1
    tick = ticks[0]
    assert tick.status == TickStatus.SUCCESS, tick.error
    expected = (tick_time.replace(minute=0) - dt.timedelta(hours=2)).strftime("%Y-%m-%d-%H:%M")
    assert len(tick.run_ids) == 1
    run = instance.get_run_by_id(tick.run_ids[0])
    assert run.tags["dagster/partition"] == expected
    assert run.status == dg.DagsterRunStatus.QUEUED  # the QueuedRunCoordinator holds it
    assert _psql_count(postgres, "select count(*) from job_ticks where status = 'SUCCESS'") >= 1


def test_run_history_prune_on_postgres(pg_instance, postgres):
    """The run history job on PostgreSQL storage: the landing sensor's old finished runs go
    with their events and check executions (read straight from the tables); a run without the
    sensor's tag stays."""
    from clicklake.assets.serving import SENSOR_NAME
    from clicklake.run_history import prune_sensor_runs
    from tests.test_run_history import folded, folded_matches

    instance, _ = pg_instance
    sensor_run = dg.materialize([folded, folded_matches], instance=instance,
                                tags={"dagster/sensor_name": SENSOR_NAME}).run_id
    other_run = dg.materialize([folded, folded_matches], instance=instance).run_id

    def count(table: str, run_id: str) -> int:
        return _psql_count(postgres, f"select count(*) from {table} where run_id = '{run_id}'")

    assert [count(t, sensor_run) for t in ("runs", "asset_check_executions")] == [1, 1]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=15)
    assert prune_sensor_runs(instance, later, days=14).deleted == 1
    assert [count(t, sensor_run) for t in ("runs", "event_logs", "asset_check_executions")
            ] == [0, 0, 0]
    assert [count(t, other_run) for t in ("runs", "asset_check_executions")] == [1, 1]
