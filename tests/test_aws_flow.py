"""The whole flow on the AWS backends, against moto's server (a real HTTP endpoint): the one
switch (CLICKLAKE_BACKEND=aws) gives an S3 lake and landing zone, SageMaker training and endpoint,
a DynamoDB online store. generate → raw → profiles → labeled → training set → training job →
gate → deploy → micro-batch fold → predict.

moto completes a training job at once and writes no model, and its endpoint answers from a queue:
the two bridges below put where SageMaker would what the real container would (the in-process
trainer's artifact from the same S3 channels; the booster's score for the request)."""

from __future__ import annotations

import json
import urllib.request

import boto3
import pytest

from clicklake.flow import run_flow
from clicklake.platform.features import compute_features, encode
from clicklake.platform.simulate import generate
from clicklake.platform.timeutil import HOUR_MS, iso, parse_instant
from clicklake.platform.training import registry
from clicklake.platform.training.artifact import load_booster
from clicklake.platform.training.local import predict
from clicklake.resources.backends import build_resources
from clicklake.resources.trainer import LocalTrainer, SageMakerTrainer, default_job_name

START = parse_instant("2026-11-24T00:00:00Z")
HOURS = 3
ROLE = "arn:aws:iam::123456789012:role/clicklake-sagemaker"


class MotoBridgedTrainer(SageMakerTrainer):
    """The real SageMaker request path, with the artifact moto does not write put in place."""

    def train(self, train_uri, validation_uri, output, hyperparameters, job_name=None):
        job_name = job_name or default_job_name()
        local = LocalTrainer(s3_endpoint_url=self.endpoint_url, region=self.region)
        bridged = local.train(train_uri, validation_uri, output, hyperparameters, job_name)
        result = super().train(train_uri, validation_uri, output, hyperparameters, job_name)
        assert result.artifact == bridged.artifact  # what the job reports is what was put there
        return result


@pytest.fixture
def aws(moto_endpoint, s3_bucket, monkeypatch):
    monkeypatch.setenv("CLICKLAKE_BACKEND", "aws")
    monkeypatch.setenv("CLICKLAKE_ROOT", f"s3://{s3_bucket}/clicklake")
    monkeypatch.setenv("CLICKLAKE_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("CLICKLAKE_AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("CLICKLAKE_DYNAMODB_TABLE", f"{s3_bucket}-online")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    import dagster as dg

    def fields(res):
        """The resource's config, EnvVars read now: the test also uses them outside a run."""
        values = {k: getattr(res, k) for k in type(res).model_fields}
        return {k: v.get_value() if isinstance(v, dg.EnvVar) else v for k, v in values.items()}

    r = {k: type(v)(**fields(v)) for k, v in build_resources().items()}
    r["trainer"] = MotoBridgedTrainer(**{**fields(r["trainer"]), "poll_delay_s": 1})
    r["endpoint"] = type(r["endpoint"])(**{**fields(r["endpoint"]), "poll_delay_s": 1})
    r["online_store"] = type(r["online_store"])(**{**fields(r["online_store"]),
                                                    "create_table": True})
    return r


def test_the_whole_flow_on_aws_backends(aws, moto_endpoint, s3_bucket):
    import dagster as dg
    from fastapi.testclient import TestClient

    from clicklake.assets.serving import serving_lookup
    from clicklake.serving import ModelSlot, lake_app

    store = aws["lake"].store()
    assert store.is_s3 and store.root == f"s3://{s3_bucket}/clicklake"
    generate(store, start_ms=START, hours=HOURS, users=800, seed=11)

    result = run_flow(aws, START, HOURS, model_config={"auc_floor": 0.0})  # any model will do
    assert result.failed_checks == []
    model_id = result.latest("click_model")["model_id"]
    assert result.latest("deployed_model")["target"] == aws["endpoint"].endpoint_name
    assert registry.champion(store).model_id == model_id

    sm = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name="us-east-1")
    job = sm.describe_training_job(TrainingJobName=model_id)
    assert job["RoleArn"] == ROLE
    assert {c["ChannelName"]: c["ContentType"] for c in job["InputDataConfig"]} == {
        "train": "text/csv", "validation": "text/csv"}
    assert job["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"].startswith(
        f"s3://{s3_bucket}/clicklake/lake/training_sets/")
    endpoint = sm.describe_endpoint(EndpointName=aws["endpoint"].endpoint_name)
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == store.uri(
        registry.artifact_key(model_id))

    # A micro-batch fold into DynamoDB, through the serving_lookup asset: the files of the last
    # half hour (every write is an HTTP call to the server, so the batch is kept small).
    last = START + HOURS * HOUR_MS
    keys = [k for stream in ("impressions", "clicks", "predictions")
            for k in store.list(f"landing/{stream}/2026/11/24/0{HOURS - 1}/")
            if k.rsplit("/", 1)[-1].split("-")[6] >= "30"]  # the minute in the key
    fold = dg.materialize([serving_lookup], resources=aws, run_config={
        "ops": {"serving_lookup": {"config": {"files": keys}}}})
    meta = {k: v.value for k, v in fold.get_asset_materialization_events()[0]
            .step_materialization_data.materialization.metadata.items()}
    assert meta["files_folded"] == len(keys) > 0 and last - HOUR_MS < meta["watermark_ms"] < last
    online = aws["online_store"].features()

    # Predict: features from DynamoDB, the score from the SageMaker endpoint (sagemaker-runtime).
    impressions = store.read_parquet(f"lake/raw/impressions/dt=2026-11-24/hour=0{HOURS - 1}/"
                                     "part-0.parquet").to_pylist()
    row = next(r for r in impressions if r["ip"] and r["user_agent"])
    ts = meta["watermark_ms"]
    inputs = online.feature_inputs(row["user_id"], row["campaign_id"], ts, row["ip"],
                                   row["user_agent"], row["domain"])
    manifest = registry.manifest_of(store, model_id)
    score = float(predict(load_booster(registry.artifact_of(store, model_id)),
                          encode(compute_features(inputs), manifest.categorical))[0])
    queue = {"region": "us-east-1", "results": [{"Body": repr(score), "ContentType": "text/csv"}]}
    urllib.request.urlopen(urllib.request.Request(
        f"{moto_endpoint}/moto-api/static/sagemaker/endpoint-results",
        data=json.dumps(queue).encode(), headers={"Content-Type": "application/json"})).read()
    app = lake_app(store, model=ModelSlot(store, sagemaker=aws["endpoint"]), source=online)
    out = TestClient(app).post("/v1/predict", json={
        "user_id": row["user_id"], "campaign_id": row["campaign_id"], "ts": iso(ts),
        "ip": row["ip"], "user_agent": row["user_agent"], "domain": row["domain"]}).json()
    assert out["probability"] == score
    assert out["model"]["id"] == model_id
    assert out["model"]["backend"] == f"sagemaker:{aws['endpoint'].endpoint_name}"
    assert ts >= START + (HOURS - 1) * HOUR_MS
