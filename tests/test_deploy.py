"""The production deployment files in deploy/: the CloudFormation template (cfn-lint, the landing
layout its Firehose streams produce, the online-store table, least-privilege roles), the production
Dagster instance and workspace (Dagster's own config schemas), and the container image recipe.

There is no Docker engine on the CI machines, so the image is not built here: the test checks what
the build needs (files it copies, the pinned set against pyproject's ranges, the entrypoint module).
"""

from __future__ import annotations

import gzip
import importlib
import re
import shlex
import sys
import tomllib
from pathlib import Path

import orjson
import pytest
import yaml
from packaging.requirements import Requirement

from clicklake.platform import landing
from clicklake.platform.raw import Rules, build_raw_partition
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import parse_instant
from clicklake.platform.training.images import ACCOUNTS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
TEMPLATE = DEPLOY / "cloudformation" / "clicklake.yaml"
STREAM_RESOURCES = {"impressions": "ImpressionsDeliveryStream", "clicks": "ClicksDeliveryStream",
                    "predictions": "PredictionsDeliveryStream"}
PROD_ENV = {"DAGSTER_PG_HOST": "db.internal", "DAGSTER_PG_PORT": "5432",
            "DAGSTER_PG_USERNAME": "dagster", "DAGSTER_PG_PASSWORD": "secret",
            "DAGSTER_PG_DB": "dagster", "DAGSTER_COMPUTE_LOG_BUCKET": "lake-bucket",
            "DAGSTER_ECS_CLUSTER": "clicklake"}


@pytest.fixture(scope="module")
def template() -> dict:
    from cfnlint.decode import decode_str

    tpl, errors = decode_str(TEMPLATE.read_text())
    assert not errors
    return tpl


def _sub(value, params: dict) -> str:
    """Resolve a Fn::Sub string with the given parameter values."""
    text = value["Fn::Sub"] if isinstance(value, dict) else value
    return re.sub(r"\$\{([^}]+)\}", lambda m: params[m[1]], text)


def _statements(template: dict, role: str) -> list[dict]:
    props = template["Resources"][role]["Properties"]
    return [s for p in props["Policies"] for s in p["PolicyDocument"]["Statement"]]


def _actions(stmt: dict) -> list[str]:
    a = stmt["Action"]
    return [a] if isinstance(a, str) else a


def _resources(stmt: dict) -> list:
    r = stmt["Resource"]
    return r if isinstance(r, list) else [r]


# ------------------------------------------------------------------ CloudFormation


def test_template_passes_cfn_lint():
    from cfnlint.api import lint_file

    matches = lint_file(TEMPLATE)
    assert [str(m) for m in matches] == []


def test_cfn_lint_catches_a_broken_template(tmp_path):
    """The lint is real: an invalid IAM action in a copy of the template is reported."""
    from cfnlint.api import lint_file

    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATE.read_text().replace("s3:AbortMultipartUpload",
                                                   "s3:AbortMultipartUploads"))
    assert any("abortmultipartuploads" in str(m).lower() for m in lint_file(broken))


@pytest.mark.parametrize("name_prefix", ["", "prod-"])
@pytest.mark.parametrize("stream", list(STREAM_RESOURCES))
def test_firehose_objects_land_where_clicklake_reads_them(template, tmp_path, stream, name_prefix):
    props = template["Resources"][STREAM_RESOURCES[stream]]["Properties"]
    dest = props["ExtendedS3DestinationConfiguration"]
    params = {"LandingPrefix": template["Parameters"]["LandingPrefix"]["Default"],
              "StreamNamePrefix": name_prefix}
    assert props["DeliveryStreamType"] == "DirectPut"
    assert dest["CompressionFormat"] == "GZIP"
    prefix = _sub(dest["Prefix"], params)
    assert prefix == f"landing/{stream}/"
    assert "!{" not in prefix  # so Firehose appends its default UTC YYYY/MM/DD/HH/
    assert _sub(props["DeliveryStreamName"], params) == f"{name_prefix}{stream}"

    # The key Firehose writes: prefix + YYYY/MM/DD/HH/ + <name>-<version>-<timestamp>-<uuid>.gz
    arrival = parse_instant("2026-11-25T13:05:09Z")
    name = _sub(props["DeliveryStreamName"], params)
    key = (f"{prefix}2026/11/25/13/{name}-1-2026-11-25-13-05-09-"
           "2b3c4d5e-aaaa-4bbb-8ccc-0123456789ab.gz")
    store = Store(str(tmp_path))
    event = {"impressions": {"impression_id": "i1", "user_id": "u1", "campaign_id": "c1"},
             "clicks": {"click_id": "k1", "impression_id": "i1", "user_id": "u1",
                        "campaign_id": "c1"},
             "predictions": {"prediction_id": "p1", "user_id": "u1", "model": "m",
                             "score": 0.5}}[stream]
    store.write_bytes(key, gzip.compress(orjson.dumps({**event, "ts": arrival - 60_000}) + b"\n"))
    hour = parse_instant("2026-11-25T13:00:00Z")
    assert landing.list_hour(store, stream, hour) == [landing.LandingFile(arrival, key)]
    part = build_raw_partition(store, stream, hour, Rules())
    assert (part.files_read, part.kept) == (1, 1)


def test_online_store_table_is_on_demand_with_generic_keys(template):
    props = template["Resources"]["OnlineStoreTable"]["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"},
                                  {"AttributeName": "sk", "KeyType": "RANGE"}]
    assert {(a["AttributeName"], a["AttributeType"]) for a in props["AttributeDefinitions"]} == {
        ("pk", "S"), ("sk", "N")}  # as DynamoDbOnlineStore creates it


def test_sagemaker_role_is_least_privilege(template):
    role = template["Resources"]["SageMakerExecutionRole"]["Properties"]
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "sagemaker.amazonaws.com"}]
    statements = _statements(template, "SageMakerExecutionRole")
    assert all(s["Effect"] == "Allow" for s in statements)
    for s in statements:
        for action in _actions(s):
            assert "*" not in action, action
        if "*" in _resources(s):
            # Only calls that have no resource ARN, and metrics only in SageMaker's namespace.
            assert set(_actions(s)) <= {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}
            if "cloudwatch:PutMetricData" in _actions(s):
                assert s["Condition"]["StringLike"]["cloudwatch:namespace"] == "/aws/sagemaker/*"
    params = {"LakeBucket.Arn": "arn:aws:s3:::b", "LakePrefix": "lake"}
    s3 = {a: sorted(_sub(r, params) for s in statements if a in _actions(s)
                    for r in _resources(s)) for a in ("s3:GetObject", "s3:PutObject")}
    assert s3 == {"s3:GetObject": ["arn:aws:s3:::b/lake/models/*",
                                   "arn:aws:s3:::b/lake/training_sets/*"],
                  "s3:PutObject": ["arn:aws:s3:::b/lake/training_jobs/*"]}
    assert not any(a.startswith(("s3:Delete", "iam:", "dynamodb:", "sagemaker:"))
                   for s in statements for a in _actions(s))


def test_xgboost_image_accounts_match_the_trainer(template):
    mapping = template["Mappings"]["XGBoostImageAccount"]
    assert {region: v["Account"] for region, v in mapping.items()} == ACCOUNTS


def test_run_tasks_may_pass_only_the_sagemaker_role(template):
    statements = _statements(template, "DagsterRunTaskRole")
    passing = [s for s in statements if "iam:PassRole" in _actions(s)]
    assert len(passing) == 1
    assert passing[0]["Resource"] == {"Fn::GetAtt": ["SageMakerExecutionRole", "Arn"]}
    assert passing[0]["Condition"]["StringEquals"]["iam:PassedToService"] == \
        "sagemaker.amazonaws.com"
    assert all("*" not in a for s in statements for a in _actions(s))
    # ... and, to start run tasks, the ECS task and execution roles to ECS only
    launch = template["Resources"]["DagsterLaunchRunsPolicy"]["Properties"]
    assert launch["Roles"] == [{"Ref": "DagsterRunTaskRole"}]
    (ecs_pass,) = [s for s in launch["PolicyDocument"]["Statement"]
                   if "iam:PassRole" in _actions(s)]
    assert ecs_pass["Resource"] == [{"Fn::GetAtt": ["DagsterRunTaskRole", "Arn"]},
                                    {"Fn::GetAtt": ["DagsterTaskExecutionRole", "Arn"]}]
    assert ecs_pass["Condition"]["StringEquals"]["iam:PassedToService"] == \
        "ecs-tasks.amazonaws.com"


def test_the_daemon_may_launch_and_stop_the_runs_it_starts(template, moto_endpoint,
                                                            monkeypatch):
    """deploy/dagster.yaml's EcsRunLauncher, as configured, starts, checks and stops a run from
    inside a daemon task (moto's ECS; the task metadata endpoint stubbed): every AWS call it
    makes is granted to the task role the docs give the daemon. The role had no ECS action:
    every run would have failed to launch."""
    import http.server
    import json
    import threading

    import boto3
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.launcher import LaunchRunContext
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.remote_origin import (
        GrpcServerCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.test_utils import create_run_for_test, instance_for_test
    from moto.ec2.models.elastic_network_interfaces import NetworkInterface

    monkeypatch.setattr(NetworkInterface, "private_dns_name", None, raising=False)  # moto's ECS
    for k, v in PROD_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    calls: list[str] = []
    session = boto3.Session(region_name="us-east-1")
    session.events.register("before-call", lambda model, **_: calls.append(
        f"{model.service_model.signing_name}:{model.name}"))
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    ecs, ec2 = session.client("ecs"), session.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="dagster", Description="tasks", VpcId=vpc)
    cluster = ecs.create_cluster(clusterName="clicklake")["cluster"]["clusterArn"]
    definition = ecs.register_task_definition(
        family="clicklake-daemon", networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
        cpu="256", memory="512", taskRoleArn="arn:aws:iam::123456789012:role/run-task",
        executionRoleArn="arn:aws:iam::123456789012:role/execution",
        containerDefinitions=[{"name": "daemon", "image": "repo/clicklake:abc", "memory": 512}],
    )["taskDefinition"]["taskDefinitionArn"]
    daemon = ecs.run_task(cluster="clicklake", taskDefinition=definition, launchType="FARGATE",
                          networkConfiguration={"awsvpcConfiguration": {
                              "subnets": [subnet], "securityGroups": [group["GroupId"]]}}
                          )["tasks"][0]["taskArn"]

    class Metadata(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = ({"Cluster": cluster, "TaskARN": daemon} if self.path.endswith("/task")
                    else {"Name": "daemon"})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def log_message(self, *_):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("ECS_CONTAINER_METADATA_URI_V4", f"http://127.0.0.1:{server.server_port}/v4")
    launcher = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]
    try:
        with instance_for_test(overrides={"run_launcher": launcher}) as instance:
            code = ModuleCodePointer("clicklake.definitions", "defs", str(ROOT))
            run = create_run_for_test(
                instance, job_name="raw_hourly_job",
                job_code_origin=JobPythonOrigin("raw_hourly_job", RepositoryPythonOrigin(
                    sys.executable, code, container_image="repo/clicklake:abc")),
                remote_job_origin=RemoteJobOrigin(RemoteRepositoryOrigin(
                    GrpcServerCodeLocationOrigin(host="code", port=4000,
                                                 location_name="clicklake"),
                    "__repository__"), "raw_hourly_job"))
            calls.clear()
            instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
            assert instance.get_run_by_id(run.run_id).tags["ecs/task_arn"]
            instance.run_launcher.check_run_worker_health(run)
            instance.run_launcher.terminate(run.run_id)
    finally:
        server.shutdown()
    made = set(calls)
    assert {"ecs:RunTask", "ecs:RegisterTaskDefinition", "ecs:StopTask"} <= made, made
    granted = {a for s in _statements(template, "DagsterRunTaskRole") for a in _actions(s)}
    granted |= {a for s in template["Resources"]["DagsterLaunchRunsPolicy"]["Properties"][
        "PolicyDocument"]["Statement"] for a in _actions(s)}
    assert not made - granted, made - granted


# ------------------------------------------------------------------ Dagster instance + workspace


def test_production_instance_config_validates(monkeypatch, tmp_path):
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.instance.config import dagster_instance_config

    for k, v in PROD_ENV.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text())
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    assert set(config["storage"]) == {"postgres"}
    # Each pluggable class's own schema, with the env-var sources resolved.
    resolved = {}
    for section, cls_name in [("compute_logs", "S3ComputeLogManager"),
                              ("run_launcher", "EcsRunLauncher"),
                              ("run_coordinator", "QueuedRunCoordinator")]:
        entry = config[section]
        assert entry["class"] == cls_name
        cls = getattr(importlib.import_module(entry["module"]), entry["class"])
        result = process_config(resolve_to_config_type(cls.config_type()), entry["config"])
        assert result.success, result.errors
        resolved[section] = result.value
    assert resolved["compute_logs"]["bucket"] == "lake-bucket"
    assert resolved["run_launcher"]["run_task_kwargs"]["cluster"] == "clicklake"

    from dagster_postgres.run_storage import PostgresRunStorage

    pg = process_config(resolve_to_config_type(PostgresRunStorage.config_type()),
                        config["storage"]["postgres"])
    assert pg.success, pg.errors
    assert pg.value["postgres_db"]["password"] == "secret"
    assert pg.value["postgres_db"]["port"] == 5432


def test_production_instance_needs_its_credentials(monkeypatch, tmp_path):
    """A missing env var is an error at start-up, not a silent default."""
    from dagster._config import process_config, resolve_to_config_type
    from dagster_postgres.run_storage import PostgresRunStorage

    for k, v in PROD_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    result = process_config(resolve_to_config_type(PostgresRunStorage.config_type()),
                            config["storage"]["postgres"])
    assert not result.success
    assert "DAGSTER_PG_PASSWORD" in str(result.errors)


@pytest.mark.parametrize("home", ["project", "deploy"])
def test_online_folds_run_one_at_a_time(home, monkeypatch, tmp_path):
    """Both instance configs give the `online_fold` pool one slot: a rebuild of the online store
    clears it, so it must not run beside the sensor's folds (`serving_lookup` declares it)."""
    from dagster._core.instance.config import dagster_instance_config

    from clicklake.assets.serving import serving_lookup

    for k, v in PROD_ENV.items():
        monkeypatch.setenv(k, v)
    source = DEPLOY / "dagster.yaml" if home == "deploy" else DEPLOY.parent / "dagster.yaml"
    (tmp_path / "dagster.yaml").write_text(source.read_text())
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert serving_lookup.op.pool == "online_fold"


def test_runs_that_read_what_another_run_of_them_rewrites_take_one_slot():
    """Two user_profiles runs at once (an operator's refold beside the automation's next hour)
    left a snapshot folded on the old chain, and a training set rebuilt while click_model read
    it mixed two sets' hours: each declares a pool, which the instance configs give one slot."""
    from clicklake.assets.profiles import segment_profiles, user_profiles
    from clicklake.assets.training import click_model, training_set

    pools = {a.key.to_user_string(): a.op.pool
             for a in (user_profiles, segment_profiles, training_set, click_model)}
    assert pools == {"user_profiles": "user_profiles_chain",
                     "segment_profiles": "segment_profiles_chain",
                     "training_set": "training", "click_model": "training"}


def test_run_limits_leave_room_for_the_schedule():
    runs = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["concurrency"]["runs"]
    backfill = [t for t in runs["tag_concurrency_limits"] if t["key"] == "dagster/backfill"]
    assert len(backfill) == 1
    assert 1 < backfill[0]["limit"] < runs["max_concurrent_runs"]


def test_production_workspace_validates(monkeypatch):
    from dagster._core.workspace.config_schema import process_workspace_config

    monkeypatch.setenv("CLICKLAKE_CODE_SERVER_HOST", "clicklake-code.internal")
    config = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    result = process_workspace_config(config)
    assert result.success, result.errors
    server = result.value["load_from"][0]["grpc_server"]
    assert (server["host"], server["port"], server["location_name"]) == (
        "clicklake-code.internal", 4000, "clicklake")


# ------------------------------------------------------------------ container image


def _dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#") and " " in line.strip()]


def test_dockerfile_copies_files_that_exist_and_runs_as_non_root():
    instructions = _dockerfile()
    copies = [args for op, args in instructions if op == "COPY" and "--from=" not in args]
    assert copies
    for args in copies:
        *sources, _dest = [a for a in shlex.split(args) if not a.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), src
    bases = [args for op, args in instructions if op == "ARG" and args.startswith("PYTHON_IMAGE=")]
    assert bases == ["PYTHON_IMAGE=python:3.11-slim-bookworm"]
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_dockerignore_keeps_every_copied_path_in_the_build_context():
    """The ignore file keeps the context small (no .venv, data, .git) but must not hide what
    the Dockerfile COPYs, or the build fails on a machine we do not test on."""
    import fnmatch

    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert {".git", ".venv", "data"} <= set(patterns)
    for op, args in _dockerfile():
        if op != "COPY" or "--from=" in args:
            continue
        *sources, _dest = [a for a in shlex.split(args) if not a.startswith("--")]
        for src in sources:
            for path in [ROOT / src, *((ROOT / src).rglob("*.py") if (ROOT / src).is_dir()
                                       else [])]:
                rel = path.relative_to(ROOT).as_posix()
                parts = [rel.split("/")[: i + 1] for i in range(rel.count("/") + 1)]
                hidden = [p for p in patterns for part in parts
                          if fnmatch.fnmatch("/".join(part), p.removeprefix("**/"))
                          or fnmatch.fnmatch(part[-1], p.removeprefix("**/"))]
                assert not hidden, (rel, hidden)


def test_dockerfile_entrypoint_serves_the_definitions():
    cmd = [args for op, args in _dockerfile() if op == "CMD"][-1]
    argv = orjson.loads(cmd)
    assert argv[:3] == ["dagster", "code-server", "start"]
    module = argv[argv.index("-m") + 1]
    import dagster as dg

    assert isinstance(importlib.import_module(module).defs, dg.Definitions)


def test_constraints_pin_every_dependency_within_pyproject_ranges():
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for r in project["optional-dependencies"]["dev"]
               if Requirement(r).name in ("dagster-postgres", "dagster-aws")]
    assert len(wanted) == len(project["dependencies"]) + 2
    for req in wanted:
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not pinned in deploy/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])
    # One Dagster release for core and libraries (libraries are versioned 0.(x+16).y).
    core = pins["dagster"].split(".")
    lib = pins["dagster-postgres"].split(".")
    assert pins["dagster-aws"] == pins["dagster-postgres"]
    assert (int(lib[1]) - 16, lib[2]) == (int(core[1]), core[2])


def test_the_run_task_role_allows_every_dynamodb_call_the_online_store_makes(template):
    """Every DynamoDB API the online store calls (retention's scan included: a fold run ends
    with one) is allowed to the run tasks; creating the table is the template's job."""
    import ast

    import clicklake.resources.online_store as module

    # `self.client.<api>`, called or handed on (`self._pages(self.client.scan, ...)`)
    calls = {node.attr for node in ast.walk(ast.parse(Path(module.__file__).read_text()))
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
             and node.value.attr == "client"}
    assert {"scan", "query", "transact_write_items"} <= calls
    needs = {"batch_get_item": {"BatchGetItem"}, "batch_write_item": {"BatchWriteItem"},
             "delete_item": {"DeleteItem"},
             "get_item": {"GetItem"}, "put_item": {"PutItem"}, "query": {"Query"},
             "scan": {"Scan"}, "update_item": {"UpdateItem"},
             "get_waiter": {"DescribeTable"},  # table_exists
             "describe_table": {"DescribeTable"},  # a missing table named at the store's opening
             "transact_write_items": {"PutItem", "UpdateItem", "DeleteItem",
                                      "ConditionCheckItem"},
             "create_table": set()}  # with create=True only (tests, a first local run)
    assert calls <= set(needs), f"map the new DynamoDB calls to IAM actions: {calls - set(needs)}"
    (stmt,) = [s for s in _statements(template, "DagsterRunTaskRole") if s["Sid"] == "OnlineStore"]
    allowed = {a.removeprefix("dynamodb:") for a in _actions(stmt)}
    missing = set().union(*(needs[c] for c in calls)) - allowed
    assert not missing, f"the run task role lacks dynamodb:{sorted(missing)}"


def test_run_tasks_may_write_the_temporary_keys_of_their_uploads(template):
    """An S3 upload of 5 MiB or more goes through a temporary key, then is moved into place:
    the run tasks' role must put, read and delete it (at the bucket's root it was denied), and
    the bucket expires what a killed move left there."""
    import fnmatch

    from clicklake.platform.storage import s3_temp_key

    params = {"LakeBucket.Arn": "arn:aws:s3:::lake-bucket",
              "LakePrefix": template["Parameters"]["LakePrefix"]["Default"]}
    lake = params["LakePrefix"]
    allowed = [_sub(r, params) for s in _statements(template, "DagsterRunTaskRole")
               if {"s3:PutObject", "s3:GetObject", "s3:DeleteObject"} <= set(_actions(s))
               for r in _resources(s)]
    for key in (f"{lake}/profiles/user/dt=2026-11-25/hour=13/part-0.parquet",
                f"{lake}/training_sets/ts-1/train/part-2026-11-25-1300.csv"):
        temp = f"arn:aws:s3:::lake-bucket/{s3_temp_key(key)}"
        assert any(fnmatch.fnmatchcase(temp, pattern) for pattern in allowed), temp
        rules = template["Resources"]["LakeBucket"]["Properties"]["LifecycleConfiguration"]
        expiring = [_sub(r["Prefix"], params) for r in rules["Rules"]
                    if r.get("ExpirationInDays") == 1]
        assert any(s3_temp_key(key).startswith(p) for p in expiring)


def test_the_step_logs_of_the_runs_expire(template):
    """The compute-log manager's prefix (deploy/dagster.yaml) in the lake bucket, which the
    stack names as the compute-log bucket, has an expiry: the pruned runs' logs go too."""
    prefix = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["compute_logs"]["config"][
        "prefix"]
    assert template["Outputs"]["ComputeLogBucket"]["Value"] == {"Ref": "LakeBucket"}
    rules = template["Resources"]["LakeBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    expiring = [r for r in rules if r.get("ExpirationInDays") == {"Ref": "ComputeLogRetentionDays"}
                and r["Status"] == "Enabled"]
    assert [r["Prefix"] for r in expiring] == [f"{prefix}/"]
    assert template["Parameters"]["ComputeLogRetentionDays"]["Default"] >= 14
