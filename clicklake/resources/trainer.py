"""Trainers: XGBoost in-process (the embedded default) or a SageMaker training job.

Both take the same SageMaker CSV channels and hyperparameters and return the same artifact,
model.tar.gz holding `xgboost-model`, so whatever comes after training never asks which ran.
"""

from __future__ import annotations

import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from clicklake.platform.storage import S3Options, Store
from clicklake.platform.training.artifact import ARTIFACT_NAME
from clicklake.platform.training.csvformat import CONTENT_TYPE
from clicklake.platform.training.images import MIN_VERSION, xgboost_image_uri
from clicklake.platform.training.local import train_local


@dataclass(frozen=True)
class TrainingResult:
    artifact: bytes
    job_name: str
    seconds: float
    status: str  # "Completed" (a failed job raises TrainingFailed instead)
    artifact_uri: str
    failure_reason: str | None = None
    hyperparameters: dict[str, str] = field(default_factory=dict)


class TrainingFailed(RuntimeError):
    """A training job ended without a model; the message carries SageMaker's FailureReason."""

    def __init__(self, job_name: str, status: str, failure_reason: str | None) -> None:
        self.job_name, self.status, self.failure_reason = job_name, status, failure_reason
        super().__init__(
            f"training job {job_name} ended {status}: {failure_reason or 'no reason given'}"
        )


def default_job_name(prefix: str = "clicklake-xgb") -> str:
    """`<prefix>-YYYYmmdd-HHMMSS-mmm`: unique per run and within SageMaker's 63-character limit."""
    now = datetime.now(UTC)
    name = f"{prefix}-{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}"
    return _valid_name(name)


def _valid_name(name: str) -> str:
    if not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name):
        raise ValueError(f"invalid SageMaker name {name!r}: letters, digits and '-', at most 63")
    return name


def _join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


class TrainerResource(dg.ConfigurableResource, ABC):
    """Trains a click model from SageMaker CSV channels (a file or a folder/prefix each).

    `output` is where the artifact goes, laid out as SageMaker does:
    `<output>/<job_name>/output/model.tar.gz`.
    """

    @abstractmethod
    def train(
        self,
        train_uri: str,
        validation_uri: str | None,
        output: str,
        hyperparameters: Mapping[str, str],
        job_name: str | None = None,
    ) -> TrainingResult: ...


class LocalTrainer(TrainerResource):
    """XGBoost in this process, on files in a local folder or on S3 (the embedded default)."""

    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint override.")
    region: str | None = Field(default=None, description="AWS region of the bucket, if on S3.")

    def _store(self, uri: str) -> Store:
        endpoint = self.s3_endpoint_url or os.environ.get("CLICKLAKE_S3_ENDPOINT_URL")
        return Store(uri, S3Options(endpoint_url=endpoint, region=self.region))

    def _channel(self, uri: str) -> list[bytes]:
        store = self._store(uri)
        keys = store.list("")
        # Like the SageMaker container: hidden and underscore files (e.g. _SUCCESS) are not data.
        keys = [k for k in keys if not os.path.basename(k or uri).startswith((".", "_"))]
        if not keys:
            raise FileNotFoundError(f"no training files at {uri}")
        return [store.read_bytes(k) for k in keys]

    def train(
        self,
        train_uri: str,
        validation_uri: str | None,
        output: str,
        hyperparameters: Mapping[str, str],
        job_name: str | None = None,
    ) -> TrainingResult:
        name = _valid_name(job_name) if job_name else default_job_name()
        started = time.perf_counter()
        train = self._channel(train_uri)
        valid = self._channel(validation_uri) if validation_uri else None
        artifact = train_local(train, valid, dict(hyperparameters))
        key = f"{name}/output/{ARTIFACT_NAME}"
        out = self._store(output)
        out.write_bytes(key, artifact)
        return TrainingResult(
            artifact=artifact,
            job_name=name,
            seconds=time.perf_counter() - started,
            status="Completed",
            artifact_uri=out.uri(key),
            hyperparameters=dict(hyperparameters),
        )


class SageMakerTrainer(TrainerResource):
    """A SageMaker training job with the built-in XGBoost image, through plain boto3."""

    role_arn: str = Field(
        description="IAM role SageMaker assumes to read the channels and write output."
    )
    region: str | None = Field(
        default=None, description="AWS region; default from the boto3 chain."
    )
    instance_type: str = Field(default="ml.m5.xlarge")
    instance_count: int = Field(default=1)
    volume_size_gb: int = Field(default=30)
    image_uri: str | None = Field(default=None, description="Override of the XGBoost image URI.")
    xgboost_version: str = Field(default=MIN_VERSION, description="Built-in XGBoost image tag.")
    endpoint_url: str | None = Field(default=None, description="AWS endpoint override (tests).")
    job_name_prefix: str = Field(
        default="clicklake-xgb", description="Training job names start with this (the "
        "CloudFormation template's role allows jobs named with its SageMakerNamePrefix).")
    max_runtime_s: int = Field(default=3600)
    poll_delay_s: int = Field(default=30, description="Seconds between job status polls.")

    def _client(self, service: str):
        import boto3

        return boto3.client(
            service, region_name=self.resolved_region(), endpoint_url=self.endpoint_url
        )

    def resolved_region(self) -> str:
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not region:
            import boto3

            region = boto3.session.Session().region_name
        if not region:
            raise ValueError("no AWS region: set `region` or AWS_REGION")
        return region

    def resolved_image(self) -> str:
        return self.image_uri or xgboost_image_uri(self.resolved_region(), self.xgboost_version)

    def training_job_request(
        self,
        job_name: str,
        train_uri: str,
        validation_uri: str | None,
        output: str,
        hyperparameters: Mapping[str, str],
    ) -> dict:
        """The exact `create_training_job` request (kept separate so it can be read and logged)."""

        def channel(name: str, uri: str) -> dict:
            if not uri.startswith("s3://"):
                raise ValueError(f"SageMaker channels must be on S3, got {uri!r}")
            return {
                "ChannelName": name,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "ContentType": CONTENT_TYPE,
                "CompressionType": "None",
            }

        channels = [channel("train", train_uri)]
        if validation_uri:
            channels.append(channel("validation", validation_uri))
        if not output.startswith("s3://"):
            raise ValueError(f"SageMaker output must be on S3, got {output!r}")
        return {
            "TrainingJobName": job_name,
            "AlgorithmSpecification": {
                "TrainingImage": self.resolved_image(),
                # File mode: the container then parses CSV with XGBoost's reader (empty = missing).
                "TrainingInputMode": "File",
            },
            "RoleArn": self.role_arn,
            "InputDataConfig": channels,
            "OutputDataConfig": {"S3OutputPath": output},
            "ResourceConfig": {
                "InstanceType": self.instance_type,
                "InstanceCount": self.instance_count,
                "VolumeSizeInGB": self.volume_size_gb,
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": self.max_runtime_s},
            "HyperParameters": {k: str(v) for k, v in hyperparameters.items()},
        }

    def train(
        self,
        train_uri: str,
        validation_uri: str | None,
        output: str,
        hyperparameters: Mapping[str, str],
        job_name: str | None = None,
    ) -> TrainingResult:
        from botocore.exceptions import WaiterError

        name = _valid_name(job_name) if job_name else default_job_name(self.job_name_prefix)
        request = self.training_job_request(
            name, train_uri, validation_uri, output, hyperparameters
        )
        sm = self._client("sagemaker")
        started = time.perf_counter()
        sm.create_training_job(**request)
        attempts = max(1, self.max_runtime_s // max(1, self.poll_delay_s) + 60)
        try:
            sm.get_waiter("training_job_completed_or_stopped").wait(
                TrainingJobName=name,
                WaiterConfig={"Delay": self.poll_delay_s, "MaxAttempts": attempts},
            )
        except WaiterError:
            pass  # a Failed job ends the waiter with an error; describe below says why
        except BaseException:
            # The run was terminated (or the wait broke): a job left running bills on, and a
            # retry of the run would start a second one beside it.
            self._stop(sm, name)
            raise
        desc = sm.describe_training_job(TrainingJobName=name)
        status = desc["TrainingJobStatus"]
        if status in ("InProgress", "Stopping"):
            self._stop(sm, name)
            raise TrainingFailed(name, status, f"still running after the wait of {attempts} "
                                 f"polls {self.poll_delay_s} s apart: stopped")
        if status != "Completed":
            raise TrainingFailed(name, status, desc.get("FailureReason"))
        artifact_uri = desc["ModelArtifacts"]["S3ModelArtifacts"]
        bucket, _, key = artifact_uri[len("s3://") :].partition("/")
        artifact = self._client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        return TrainingResult(
            artifact=artifact,
            job_name=name,
            seconds=time.perf_counter() - started,
            status=status,
            artifact_uri=artifact_uri,
            hyperparameters=dict(request["HyperParameters"]),
        )

    @staticmethod
    def _stop(sm, name: str) -> None:
        """Stop a job that may still run; one that has ended already is left as it is."""
        from botocore.exceptions import ClientError

        try:
            sm.stop_training_job(TrainingJobName=name)
        except ClientError:
            pass  # ended meanwhile (SageMaker refuses to stop a job that is not running)
