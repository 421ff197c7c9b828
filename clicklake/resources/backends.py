"""The one switch between the embedded default and AWS.

`CLICKLAKE_BACKEND` (read when the code location loads, like a deployment name) picks the set:
- `local` (default): a local-folder lake, in-process XGBoost, the in-process model server, a
  SQLite (WAL) online store;
- `aws`: an S3 lake and landing zone, SageMaker training jobs and a SageMaker endpoint, a
  DynamoDB online store.
Every AWS name comes from an environment variable resolved at run time (`dg.EnvVar`), and
credentials only from the standard boto3 chain.

| variable | used for |
|---|---|
| `CLICKLAKE_ROOT` | the lake and landing root: a folder, or `s3://bucket/prefix` on AWS |
| `CLICKLAKE_SAGEMAKER_ROLE_ARN` | the SageMaker execution role (training and endpoint) |
| `CLICKLAKE_TRAINING_INSTANCE_TYPE` | default `ml.m5.xlarge` |
| `CLICKLAKE_TRAINING_JOB_PREFIX` | training job names start with it, default `clicklake-xgb` |
| `CLICKLAKE_LANDING_PREFIX`, `CLICKLAKE_LAKE_PREFIX` | prefixes below the root, defaults `landing`, `lake` (the template's `LandingPrefix`, `LakePrefix`; both backends) |
| `CLICKLAKE_ENDPOINT_NAME`, `CLICKLAKE_ENDPOINT_INSTANCE_TYPE` | defaults `clicklake-ctr`, `ml.m5.large` |
| `CLICKLAKE_DYNAMODB_TABLE` | the online store's table, default `clicklake-online` |
| `CLICKLAKE_ONLINE_DB` | (local) the SQLite file of the online store, default `data/online/online.db` |
| `AWS_REGION` | the region of every service |
| `CLICKLAKE_AWS_ENDPOINT_URL` | an endpoint override for every AWS service (tests only) |

The lake's settings (allowed lateness, label window, snapshot retention) are environment
variables too, read by every run, tick and server: `platform.settings`.
"""

from __future__ import annotations

import os

import dagster as dg

from clicklake.resources.endpoint import LocalModelServer, SageMakerEndpoint
from clicklake.resources.lake import LakeResource
from clicklake.resources.online_store import DynamoDbOnlineStore, SqliteOnlineStore
from clicklake.resources.trainer import LocalTrainer, SageMakerTrainer

BACKENDS = ("local", "aws")


def _env(name: str, default: str) -> str:
    # blank is unset, as click reads the CLI's environment variables (a blank lake prefix
    # put the pipeline's lake at the root while `serve` and `lookup` read `lake/`)
    return os.environ.get(name, "").strip() or default


def build_resources(backend: str | None = None) -> dict:
    """The resources of `backend` (default: `CLICKLAKE_BACKEND`, else `local`)."""
    backend = (backend or os.environ.get("CLICKLAKE_BACKEND") or "local").lower()
    if backend == "local":
        return {"lake": LakeResource(landing_prefix=_env("CLICKLAKE_LANDING_PREFIX", "landing"),
                                     lake_prefix=_env("CLICKLAKE_LAKE_PREFIX", "lake")),
                "trainer": LocalTrainer(), "endpoint": LocalModelServer(),
                "online_store": SqliteOnlineStore()}
    if backend != "aws":
        raise ValueError(f"CLICKLAKE_BACKEND must be one of {BACKENDS}, not {backend!r}")
    endpoint_url = os.environ.get("CLICKLAKE_AWS_ENDPOINT_URL")
    region = dg.EnvVar("AWS_REGION")
    return {
        "lake": LakeResource(root=dg.EnvVar("CLICKLAKE_ROOT"), s3_endpoint_url=endpoint_url,
                             region=region,
                             landing_prefix=_env("CLICKLAKE_LANDING_PREFIX", "landing"),
                             lake_prefix=_env("CLICKLAKE_LAKE_PREFIX", "lake")),
        "trainer": SageMakerTrainer(
            role_arn=dg.EnvVar("CLICKLAKE_SAGEMAKER_ROLE_ARN"), region=region,
            instance_type=_env("CLICKLAKE_TRAINING_INSTANCE_TYPE", "ml.m5.xlarge"),
            job_name_prefix=_env("CLICKLAKE_TRAINING_JOB_PREFIX", "clicklake-xgb"),
            endpoint_url=endpoint_url,
        ),
        "endpoint": SageMakerEndpoint(
            role_arn=dg.EnvVar("CLICKLAKE_SAGEMAKER_ROLE_ARN"), region=region,
            endpoint_name=_env("CLICKLAKE_ENDPOINT_NAME", "clicklake-ctr"),
            instance_type=_env("CLICKLAKE_ENDPOINT_INSTANCE_TYPE", "ml.m5.large"),
            endpoint_url=endpoint_url,
        ),
        "online_store": DynamoDbOnlineStore(
            table_name=_env("CLICKLAKE_DYNAMODB_TABLE", "clicklake-online"), region=region,
            endpoint_url=endpoint_url,
        ),
    }
