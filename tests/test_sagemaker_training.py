"""The SageMaker trainer against moto's server (real HTTP): the exact create_training_job request,
the artifact fetched from the job's ModelArtifacts path, and a failed job's FailureReason."""

from __future__ import annotations

import boto3
import numpy as np
import pytest

from clicklake.platform.training.artifact import load_booster
from clicklake.platform.training.csvformat import to_csv_bytes
from clicklake.platform.training.hyperparams import hyperparameters
from clicklake.platform.training.local import predict, train_local
from clicklake.platform.training.synthetic import synthetic_clicks
from clicklake.resources.trainer import SageMakerTrainer, TrainingFailed

ROLE = "arn:aws:iam::123456789012:role/clicklake-sagemaker"
IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:3.0-5"


@pytest.fixture
def trainer(moto_endpoint):
    return SageMakerTrainer(
        role_arn=ROLE,
        region="us-east-1",
        endpoint_url=moto_endpoint,
        poll_delay_s=1,
        max_runtime_s=60,
    )


@pytest.fixture
def channels(moto_endpoint, s3_bucket):
    y, x, _ = synthetic_clicks(3000, 6, seed=5)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    train, valid = to_csv_bytes(y[:2400], x[:2400]), to_csv_bytes(y[2400:], x[2400:])
    s3.put_object(Bucket=s3_bucket, Key="lake/training_set/train/part-0.csv", Body=train)
    s3.put_object(Bucket=s3_bucket, Key="lake/training_set/validation/part-0.csv", Body=valid)
    hp = hyperparameters(base_score=float(y[:2400].mean()), num_round=15, max_depth=3)
    return s3, train, valid, hp, x[2400:]


def test_training_job_request_and_artifact(trainer, channels, s3_bucket):
    s3, train, valid, hp, x_valid = channels
    base = f"s3://{s3_bucket}/lake"
    # moto completes a job at once and writes no artifact: put one made by the local trainer where
    # SageMaker would, <output>/<job>/output/model.tar.gz.
    local_artifact = train_local(train, valid, hp)
    s3.put_object(
        Bucket=s3_bucket,
        Key="lake/sagemaker-output/ctr-job-1/output/model.tar.gz",
        Body=local_artifact,
    )
    result = trainer.train(
        f"{base}/training_set/train/",
        f"{base}/training_set/validation/",
        f"{base}/sagemaker-output",
        hp,
        job_name="ctr-job-1",
    )
    assert result.status == "Completed" and result.failure_reason is None
    assert result.artifact_uri == f"{base}/sagemaker-output/ctr-job-1/output/model.tar.gz"
    assert result.artifact == local_artifact
    np.testing.assert_array_equal(
        predict(load_booster(result.artifact), x_valid),
        predict(load_booster(local_artifact), x_valid),
    )

    sm = boto3.client("sagemaker", endpoint_url=trainer.endpoint_url, region_name="us-east-1")
    job = sm.describe_training_job(TrainingJobName="ctr-job-1")
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert job["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert job["RoleArn"] == ROLE
    assert job["HyperParameters"] == hp
    assert job["HyperParameters"]["base_score"] == hp["base_score"]
    assert job["OutputDataConfig"] == {"S3OutputPath": f"{base}/sagemaker-output"}
    assert job["ResourceConfig"] == {
        "InstanceType": "ml.m5.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 30,
    }
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 60}
    got = {c["ChannelName"]: c for c in job["InputDataConfig"]}
    assert set(got) == {"train", "validation"}
    for name, prefix in (
        ("train", "training_set/train/"),
        ("validation", "training_set/validation/"),
    ):
        assert got[name]["ContentType"] == "text/csv"
        assert got[name]["CompressionType"] == "None"
        assert got[name]["DataSource"]["S3DataSource"] == {
            "S3DataType": "S3Prefix",
            "S3Uri": f"{base}/{prefix}",
            "S3DataDistributionType": "FullyReplicated",
        }


def test_missing_artifact_is_an_error(trainer, channels, s3_bucket):
    _, _, _, hp, _ = channels
    base = f"s3://{s3_bucket}/lake"
    with pytest.raises(Exception, match="NoSuchKey|Not Found|does not exist"):
        trainer.train(f"{base}/training_set/train/", None, f"{base}/out", hp, job_name="ctr-job-2")


def test_failed_job_surfaces_failure_reason(trainer, channels, s3_bucket, monkeypatch):
    """moto cannot make a job fail (every job is Completed at once), so only describe_training_job
    is wrapped to report Failed; create_training_job and the waiter still go to the server."""
    _, _, _, hp, _ = channels
    import botocore.client

    real_call = botocore.client.BaseClient._make_api_call
    reason = "AlgorithmError: Unable to read data channel 'train'. Please check the ContentType."

    def call(self, operation, params):
        response = real_call(self, operation, params)
        if operation == "DescribeTrainingJob":
            response = {**response, "TrainingJobStatus": "Failed", "FailureReason": reason}
        return response

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", call)
    base = f"s3://{s3_bucket}/lake"
    with pytest.raises(TrainingFailed) as err:
        trainer.train(f"{base}/training_set/train/", None, f"{base}/out", hp, job_name="ctr-job-3")
    assert err.value.failure_reason == reason and err.value.status == "Failed"
    assert reason in str(err.value) and "ctr-job-3" in str(err.value)


def test_request_validation(trainer):
    hp = hyperparameters(base_score=0.1)
    with pytest.raises(ValueError, match="S3"):
        trainer.training_job_request("j", "/local/train", None, "s3://b/out", hp)
    with pytest.raises(ValueError, match="name"):
        trainer.train("s3://b/t", None, "s3://b/o", hp, job_name="bad_name!")
    assert SageMakerTrainer(role_arn=ROLE, image_uri="my/image:1").resolved_image() == "my/image:1"


def test_a_job_still_running_after_the_wait_is_stopped(trainer, channels, s3_bucket,
                                                       monkeypatch):
    """The wait's budget ran out with the job InProgress: it was left running (billing, and a
    retry of the run started a second job) under a "no reason given" error."""
    _, _, _, hp, _ = channels
    import botocore.client
    import botocore.waiter

    real_call = botocore.client.BaseClient._make_api_call
    calls = []

    def call(self, operation, params):
        calls.append(operation)
        response = real_call(self, operation, params)
        if operation == "DescribeTrainingJob" and "StopTrainingJob" not in calls:
            response = {**response, "TrainingJobStatus": "InProgress"}
        return response

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", call)
    quick = trainer.model_copy(update={"max_runtime_s": 1, "poll_delay_s": 0})
    base = f"s3://{s3_bucket}/lake"
    with pytest.raises(TrainingFailed, match="still running after the wait.*stopped") as err:
        quick.train(f"{base}/training_set/train/", None, f"{base}/out", hp, job_name="ctr-job-4")
    assert err.value.status == "InProgress" and calls.count("StopTrainingJob") == 1

    calls.clear()  # the run terminated mid-wait: the job is stopped, the interruption goes on

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(botocore.waiter.Waiter, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quick.train(f"{base}/training_set/train/", None, f"{base}/out", hp, job_name="ctr-job-5")
    assert calls[-1] == "StopTrainingJob"
