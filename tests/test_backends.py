"""The one switch: CLICKLAKE_BACKEND picks the embedded defaults or the AWS resources."""

from __future__ import annotations

import pytest

from clicklake.resources.backends import build_resources
from clicklake.resources.endpoint import LocalModelServer, SageMakerEndpoint
from clicklake.resources.lake import LakeResource
from clicklake.resources.online_store import DynamoDbOnlineStore, SqliteOnlineStore
from clicklake.resources.trainer import LocalTrainer, SageMakerTrainer


def test_local_is_the_default(monkeypatch):
    monkeypatch.delenv("CLICKLAKE_BACKEND", raising=False)
    r = build_resources()
    assert (type(r["lake"]), type(r["trainer"]), type(r["endpoint"]), type(r["online_store"])) == (
        LakeResource, LocalTrainer, LocalModelServer, SqliteOnlineStore)


def test_aws_selects_s3_sagemaker_and_names_from_the_environment(monkeypatch):
    monkeypatch.setenv("CLICKLAKE_BACKEND", "AWS")
    monkeypatch.setenv("CLICKLAKE_ENDPOINT_NAME", "ctr-prod")
    monkeypatch.setenv("CLICKLAKE_TRAINING_INSTANCE_TYPE", "ml.c5.2xlarge")
    r = build_resources()
    assert isinstance(r["trainer"], SageMakerTrainer) and isinstance(r["endpoint"], SageMakerEndpoint)
    assert isinstance(r["online_store"], DynamoDbOnlineStore)
    assert r["trainer"].instance_type == "ml.c5.2xlarge"
    assert r["endpoint"].endpoint_name == "ctr-prod"
    assert (r["lake"].landing_prefix, r["lake"].lake_prefix) == ("landing", "lake")
    assert r["trainer"].job_name_prefix == "clicklake-xgb"


def test_aws_prefixes_follow_the_templates_parameters(monkeypatch):
    """The CloudFormation template takes LandingPrefix, LakePrefix and SageMakerNamePrefix; the
    code read none of them back (Firehose then wrote where clicklake never listed, and training
    jobs fell outside the role's names)."""
    from clicklake.resources.trainer import default_job_name

    monkeypatch.setenv("CLICKLAKE_BACKEND", "aws")
    monkeypatch.setenv("CLICKLAKE_LANDING_PREFIX", "firehose")
    monkeypatch.setenv("CLICKLAKE_LAKE_PREFIX", "warehouse")
    monkeypatch.setenv("CLICKLAKE_TRAINING_JOB_PREFIX", "prod-clicklake-xgb")
    r = build_resources()
    assert (r["lake"].landing_prefix, r["lake"].lake_prefix) == ("firehose", "warehouse")
    assert default_job_name(r["trainer"].job_name_prefix).startswith("prod-clicklake-xgb-")


@pytest.mark.parametrize("backend", ["local", "aws"])
def test_prefixes_from_the_environment_on_both_backends_blank_as_unset(monkeypatch, backend):
    """The local backend ignored CLICKLAKE_LAKE_PREFIX (serve and lookup read it); a blank
    value put the lake at the root while the CLI, as click does, took it as unset."""
    monkeypatch.setenv("CLICKLAKE_BACKEND", backend)
    monkeypatch.setenv("CLICKLAKE_LAKE_PREFIX", "warehouse")
    monkeypatch.setenv("CLICKLAKE_LANDING_PREFIX", " ")
    r = build_resources()
    assert (r["lake"].landing_prefix, r["lake"].lake_prefix) == ("landing", "warehouse")


def test_aws_names_resolve_at_run_time(monkeypatch):
    """Role and root are EnvVars: unset when the code loads, read when a run starts."""
    import dagster as dg

    monkeypatch.setenv("CLICKLAKE_BACKEND", "aws")
    resources = build_resources()
    monkeypatch.setenv("CLICKLAKE_ROOT", "s3://bucket/prefix")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")

    @dg.asset
    def probe(lake: LakeResource) -> str:
        return lake.resolved_root()

    result = dg.materialize([probe], resources={"lake": resources["lake"]})
    assert result.output_for_node("probe") == "s3://bucket/prefix"


def test_an_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="must be one of"):
        build_resources("gcp")


def test_the_local_online_store_sits_beside_the_lake(monkeypatch):
    """make dev's sensor, make demo and `clicklake serve` all find the same SQLite file."""
    monkeypatch.delenv("CLICKLAKE_ONLINE_DB", raising=False)
    monkeypatch.setenv("CLICKLAKE_ROOT", "data/demo")
    assert SqliteOnlineStore().resolved_path() == "data/demo/online/online.db"
    monkeypatch.setenv("CLICKLAKE_ROOT", "s3://bucket/prefix")
    assert SqliteOnlineStore().resolved_path() == "data/online/online.db"
    monkeypatch.setenv("CLICKLAKE_ONLINE_DB", "/srv/online.db")
    assert SqliteOnlineStore().resolved_path() == "/srv/online.db"
