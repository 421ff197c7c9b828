"""Deploying a registered model to a SageMaker endpoint and invoking it, against moto's server
(real HTTP). moto's endpoint computes nothing: it answers invoke_endpoint from a queue of results
set through its HTTP control API, so here the queued answer is what the real built-in XGBoost
container would return for these rows (the local booster's scores), and the test checks the
request path, the CSV body, and the parsing of the reply."""

from __future__ import annotations

import json
import types
import urllib.request

import boto3
import numpy as np
import pytest

from clicklake.platform.storage import S3Options, Store
from clicklake.platform.training import registry
from clicklake.platform.training.artifact import load_booster
from clicklake.platform.training.csvformat import to_csv_bytes
from clicklake.platform.training.hyperparams import hyperparameters
from clicklake.platform.training.local import predict, train_local
from clicklake.platform.training.manifest import FeatureManifest
from clicklake.platform.training.synthetic import synthetic_clicks
from clicklake.resources.endpoint import (
    UNNAMED_VARIANT,
    SageMakerEndpoint,
    ServedByAnotherModel,
    invoke_scores,
    parse_csv_scores,
    variant_name,
)

ROLE = "arn:aws:iam::123456789012:role/clicklake-sagemaker"


@pytest.fixture
def lake(moto_endpoint, s3_bucket):
    y, x, _ = synthetic_clicks(2000, 5, seed=9)
    hp = hyperparameters(base_score=float(y.mean()), num_round=10, max_depth=3)
    artifact = train_local(to_csv_bytes(y, x), None, hp)
    store = Store(
        f"s3://{s3_bucket}/root", S3Options(endpoint_url=moto_endpoint, region="us-east-1")
    )
    names = [f"f{i}" for i in range(5)]
    registry.register(store, "model-20261125-01", artifact, FeatureManifest(names), {"auc": 0.8})
    return store, artifact, x[:4]


def test_deploy_creates_model_config_and_endpoint(moto_endpoint, lake, s3_bucket):
    store, _, _ = lake
    endpoint = SageMakerEndpoint(
        role_arn=ROLE,
        region="us-east-1",
        endpoint_url=moto_endpoint,
        endpoint_name="ctr-test-1",
        poll_delay_s=1,
        max_wait_attempts=3,
    )
    dep = endpoint.deploy(store, "model-20261125-01")
    name = dep.details["model_name"]  # the endpoint and model id, and a hash of them
    assert name.startswith("ctr-test-1-model-20261125-01-") and len(name) == 37 and dep.details["updated"] is False
    sm = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name="us-east-1")
    model = sm.describe_model(ModelName=name)
    assert model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"]["Image"] == (
        "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:3.0-5"
    )
    assert model["PrimaryContainer"]["ModelDataUrl"] == (
        f"s3://{s3_bucket}/root/lake/models/model-20261125-01/model.tar.gz"
    )
    config_name = dep.details["endpoint_config_name"]  # also hashes the instances it asks for
    assert config_name.startswith("ctr-test-1-model-20261125-01-") and config_name != name
    config = sm.describe_endpoint_config(EndpointConfigName=config_name)
    (variant,) = config["ProductionVariants"]
    assert variant["ModelName"] == name and variant["InstanceType"] == "ml.m5.large"
    assert variant["InitialInstanceCount"] == 1
    # named for the model: an answer of the endpoint says which model computed it
    assert variant["VariantName"] == variant_name("model-20261125-01")
    ep = sm.describe_endpoint(EndpointName="ctr-test-1")
    assert ep["EndpointConfigName"] == config_name and ep["EndpointStatus"] == "InService"


def test_deploy_refuses_unregistered_and_local(moto_endpoint, lake, tmp_path):
    store, _, _ = lake
    endpoint = SageMakerEndpoint(role_arn=ROLE, region="us-east-1", endpoint_url=moto_endpoint)
    with pytest.raises(KeyError):
        endpoint.deploy(store, "never-registered")
    with pytest.raises(ValueError, match="S3"):
        endpoint.deploy(Store(str(tmp_path)), "model-20261125-01")


def test_invoke_goes_through_sagemaker_runtime(moto_endpoint, lake, monkeypatch):
    """The rows go over HTTP as the built-in container reads them (CSV, no header, one line a
    row, empty for a missing value: checked on the request itself, since moto answers whatever
    it is sent), and the container's answer comes back as the scores."""
    _, artifact, rows = lake
    sent = []
    make_client = SageMakerEndpoint._client

    def watched(self, service, config=None):
        client = make_client(self, service, config)
        client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint",
                                    lambda request, **_: sent.append(request))
        return client

    monkeypatch.setattr(SageMakerEndpoint, "_client", watched)
    expected = predict(load_booster(artifact), rows)
    # The container answers text/csv with one score per line.
    body = "\n".join(repr(float(v)) for v in expected)
    queue = {"region": "us-east-1", "results": [{"Body": body, "ContentType": "text/csv"}]}
    req = urllib.request.Request(
        f"{moto_endpoint}/moto-api/static/sagemaker/endpoint-results",
        data=json.dumps(queue).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req).read()
    endpoint = SageMakerEndpoint(
        role_arn=ROLE, region="us-east-1", endpoint_url=moto_endpoint, endpoint_name="ctr-invoke"
    )
    np.testing.assert_array_equal(endpoint.predict(rows), expected)
    [request] = sent
    assert request.headers["Content-Type"] == b"text/csv"
    lines = request.body.decode().splitlines()
    got = np.array([[float(v) if v else np.nan for v in line.split(",")] for line in lines])
    assert got.shape == rows.shape and np.array_equal(got, rows, equal_nan=True)


def _queue(moto_endpoint: str, *results: dict) -> None:
    """Queue moto's next answers of invoke_endpoint (one per distinct request)."""
    queue = {"region": "us-east-1", "results": [{"ContentType": "text/csv", **r} for r in results]}
    urllib.request.urlopen(urllib.request.Request(
        f"{moto_endpoint}/moto-api/static/sagemaker/endpoint-results",
        data=json.dumps(queue).encode(), headers={"Content-Type": "application/json"})).read()


def test_an_answer_from_another_models_variant_is_refused(moto_endpoint, lake):
    """The rows are encoded for one model: an answer the endpoint computed with another (a
    deploy under way or failed) raises, naming that variant, rather than giving its scores.
    The model's own variant, and an endpoint deployed before variants were named for their
    model (`AllTraffic`: cannot be checked), give the scores."""
    _, _, rows = lake
    ours, theirs = variant_name("model-20261125-01"), variant_name("model-20261125-02")
    client = boto3.client("sagemaker-runtime", endpoint_url=moto_endpoint,
                          region_name="us-east-1")
    body = "0.1\n0.2\n0.3\n0.4"
    # moto answers a body it has seen as before: each case sends other rows
    _queue(moto_endpoint, {"Body": body, "InvokedProductionVariant": theirs})
    with pytest.raises(ServedByAnotherModel) as raised:
        invoke_scores(client, "ctr-variants", rows + 100, variant=ours)
    assert raised.value.invoked_variant == theirs
    for shift, answered in ((200, ours), (300, UNNAMED_VARIANT)):
        _queue(moto_endpoint, {"Body": body, "InvokedProductionVariant": answered})
        np.testing.assert_array_equal(
            invoke_scores(client, "ctr-variants", rows + shift, variant=ours),
            [0.1, 0.2, 0.3, 0.4])


def test_parse_csv_scores_both_layouts():
    np.testing.assert_array_equal(parse_csv_scores(b"0.25,0.5,1e-3"), [0.25, 0.5, 0.001])
    np.testing.assert_array_equal(parse_csv_scores(b"0.25\n0.5\n"), [0.25, 0.5])
    assert parse_csv_scores(b"").size == 0


def test_resource_names_are_distinct_for_distinct_model_ids():
    """Cleaning and cutting alone made `m.1`, `m_1` and `m-1` one name, and any two long model
    ids one name behind a long endpoint name: a deploy then replaced another's model."""
    import re

    from clicklake.resources.endpoint import _name

    long_endpoint = "production-eu-west-1-shadow-v2-clicklake"
    ids = ["m.1", "m_1", "m-1", "clicklake-xgb-20261126-090000-123",
           "clicklake-xgb-20261126-090000-456"]
    names = [_name(e, m) for e in ("ctr", long_endpoint) for m in ids]
    assert len(set(names)) == len(names)
    assert all(len(n) <= 63 and re.fullmatch(r"[a-zA-Z0-9](-?[a-zA-Z0-9])*", n) for n in names)
    assert _name("ctr", "m.1") == _name("ctr", "m.1")  # stable: a redeploy finds its own


class _StrictSageMaker(SageMakerEndpoint):
    """moto's SageMaker lets a model or endpoint config be created again under its own name
    (replacing it); SageMaker refuses that ("Cannot create already existing model"). This
    endpoint's client refuses it as SageMaker does, and records the calls it makes. moto has no
    UpdateEndpoint: the client carries it out on moto's server as its effect (the endpoint then
    serves the new config), by deleting and creating the endpoint."""

    def _client(self, service: str, config=None):
        from botocore.exceptions import ClientError

        client = super()._client(service, config)
        calls = self.__dict__.setdefault("_calls", [])

        def refuse_existing(model, params, **_):
            calls.append(model.name)
            name, describe, key = {
                "CreateModel": ("ModelName", client.describe_model, "ModelName"),
                "CreateEndpointConfig": ("EndpointConfigName", client.describe_endpoint_config,
                                         "EndpointConfigName"),
                "CreateEndpoint": ("EndpointName", client.describe_endpoint, "EndpointName"),
            }.get(model.name, (None, None, None))
            if name is None:
                return
            try:
                describe(**{key: params[name]})
            except ClientError:
                return  # does not exist: created
            raise ClientError({"Error": {"Code": "ValidationException", "Message":
                                         f"Cannot create already existing {params[name]}"}},
                              model.name)

        def update_endpoint(params, **_):
            params = json.loads(params["body"])  # the request as sent (JSON protocol)
            plain = super(_StrictSageMaker, self)._client(service, config)
            plain.describe_endpoint_config(EndpointConfigName=params["EndpointConfigName"])
            plain.delete_endpoint(EndpointName=params["EndpointName"])
            arn = plain.create_endpoint(EndpointName=params["EndpointName"],
                                        EndpointConfigName=params["EndpointConfigName"])
            return types.SimpleNamespace(status_code=200, headers={}), arn

        client.meta.events.register(f"before-parameter-build.{service}", refuse_existing)
        client.meta.events.register(f"before-call.{service}.UpdateEndpoint", update_endpoint)
        return client


def _another_model(store: Store, artifact: bytes, model_id: str, auc: float = 0.8) -> None:
    registry.register(store, model_id, artifact, FeatureManifest([f"f{i}" for i in range(5)]),
                      {"auc": auc})


def _strict(moto_endpoint: str, endpoint_name: str, **fields) -> _StrictSageMaker:
    return _StrictSageMaker(**{"role_arn": ROLE, "region": "us-east-1",
                               "endpoint_url": moto_endpoint, "endpoint_name": endpoint_name,
                               "poll_delay_s": 1, "max_wait_attempts": 3, **fields})


def test_redeploying_a_model_reuses_its_resources(moto_endpoint, lake):
    """A rollback to an earlier model, and a rerun of a deploy, must not create again what
    exists (SageMaker refuses it: the old code failed there) nor switch an endpoint to the
    config it serves; another instance type gets a config of its own."""
    store, artifact, _ = lake
    _another_model(store, artifact, "model-20261125-02", auc=0.81)
    endpoint = _strict(moto_endpoint, "ctr-redeploy")
    sm = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name="us-east-1")

    def serving() -> str:
        return sm.describe_endpoint(EndpointName="ctr-redeploy")["EndpointConfigName"]

    first = endpoint.deploy(store, "model-20261125-01")
    second = endpoint.deploy(store, "model-20261125-02")
    assert serving() == second.details["endpoint_config_name"] and second.details["updated"]
    endpoint._calls.clear()
    back = endpoint.deploy(store, "model-20261125-01")  # a rollback
    assert back.details == {**first.details, "updated": True, "reused": True}
    assert serving() == first.details["endpoint_config_name"]
    assert [c for c in endpoint._calls if c.startswith(("Create", "Update"))] == ["UpdateEndpoint"]
    endpoint._calls.clear()
    again = endpoint.deploy(store, "model-20261125-01")  # a rerun: nothing to change
    assert again.details == {**first.details, "updated": False, "reused": True}
    assert not [c for c in endpoint._calls if c.startswith(("Create", "Update"))]
    bigger = _strict(moto_endpoint, "ctr-redeploy", instance_type="ml.m5.xlarge")
    moved = bigger.deploy(store, "model-20261125-01")
    assert moved.details["model_name"] == first.details["model_name"]
    assert moved.details["endpoint_config_name"] != first.details["endpoint_config_name"]
    (variant,) = sm.describe_endpoint_config(EndpointConfigName=serving())["ProductionVariants"]
    assert variant["InstanceType"] == "ml.m5.xlarge"
    assert variant["ModelName"] == first.details["model_name"]


def test_a_rerun_while_the_endpoint_updates_waits_for_it_first(moto_endpoint, lake):
    """A deploy rerun after its wait timed out finds the endpoint still Updating, still naming
    the config it leaves: it waits for the update to end, then finds the endpoint serving its
    config, instead of asking SageMaker (which refuses it) for another update mid-way."""
    store, artifact, _ = lake
    _another_model(store, artifact, "model-20261125-03")
    endpoint = _strict(moto_endpoint, "ctr-busy")
    old = endpoint.deploy(store, "model-20261125-01")
    new = endpoint.deploy(store, "model-20261125-03")
    real = endpoint._client
    updating = [True]

    def client(service, config=None):
        c = real(service, config)

        def mid_update(parsed, model, **_):  # the first describe: still switching from `old`
            if updating and model.name == "DescribeEndpoint":
                updating.clear()
                parsed["EndpointStatus"] = "Updating"
                parsed["EndpointConfigName"] = old.details["endpoint_config_name"]

        def refuse_mid_update(model, **_):
            if model.name == "UpdateEndpoint" and not updating:
                raise AssertionError("UpdateEndpoint called on an endpoint being updated")

        c.meta.events.register(f"after-call.{service}", mid_update)
        c.meta.events.register(f"before-parameter-build.{service}", refuse_mid_update)
        return c

    endpoint._client = client
    endpoint._calls.clear()
    again = endpoint.deploy(store, "model-20261125-03")
    assert again.details == {**new.details, "updated": False, "reused": True}
    assert not [c for c in endpoint._calls if c.startswith(("Create", "Update"))]


def test_an_endpoint_deployed_before_named_variants_is_switched_to_one(moto_endpoint, lake):
    """An endpoint an older version deployed serves a config of the same model under the name
    that version gave it, with the variant `AllTraffic`. Deploying that model again must not
    reuse that config (the endpoint's answers would go on naming no model) but switch the
    endpoint to one whose variant is named for the model."""
    from clicklake.platform.training.images import MIN_VERSION, xgboost_image_uri
    from clicklake.resources.endpoint import _name

    store, _, _ = lake
    model_id, endpoint_name = "model-20261125-01", "ctr-upgrade"
    sm = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name="us-east-1")
    image = xgboost_image_uri("us-east-1", MIN_VERSION)
    model_name = _name(endpoint_name, model_id, extra=(
        image, store.uri(registry.artifact_key(model_id))))
    old_config = _name(endpoint_name, model_id, extra=(model_name, "ml.m5.large", "1"))
    sm.create_model(ModelName=model_name, ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": image, "ModelDataUrl": store.uri(registry.artifact_key(model_id))})
    sm.create_endpoint_config(EndpointConfigName=old_config, ProductionVariants=[{
        "VariantName": UNNAMED_VARIANT, "ModelName": model_name, "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.large", "InitialVariantWeight": 1.0}])
    sm.create_endpoint(EndpointName=endpoint_name, EndpointConfigName=old_config)
    endpoint = _strict(moto_endpoint, endpoint_name)
    dep = endpoint.deploy(store, model_id)
    assert dep.details["model_name"] == model_name and dep.details["reused"]
    assert dep.details["endpoint_config_name"] != old_config and dep.details["updated"]
    serving = sm.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
    (variant,) = sm.describe_endpoint_config(EndpointConfigName=serving)["ProductionVariants"]
    assert variant["VariantName"] == variant_name(model_id)


def _with_hooks(endpoint: SageMakerEndpoint, hooks: dict):
    """`endpoint` whose clients carry botocore hooks, {event: handler} ("{service}" in an event
    stands for the client's), ahead of its own."""
    real = endpoint._client

    def client(service, config=None):
        c = real(service, config)
        for event, handler in hooks.items():
            c.meta.events.register_first(event.format(service=service), handler)
        return c

    endpoint._client = client
    return endpoint


def test_an_update_that_rolled_back_is_a_failed_deploy(moto_endpoint, lake):
    """SageMaker rolls a failed update back: the endpoint is InService again on its old config,
    with a FailureReason. The deploy reported success and the model was promoted while the
    endpoint served the one before."""
    from clicklake.resources.endpoint import EndpointDeployFailed

    store, artifact, _ = lake
    _another_model(store, artifact, "model-20261125-04")
    endpoint = _strict(moto_endpoint, "ctr-rollback")
    old = endpoint.deploy(store, "model-20261125-01")
    reason = "The primary container for production variant X did not pass the ping health check."

    def rolled_back(**_):  # the update is accepted, fails, and is rolled back
        return types.SimpleNamespace(status_code=200, headers={}), {"EndpointArn": "arn"}

    def with_reason(parsed, model, **_):
        if model.name == "DescribeEndpoint":
            parsed["FailureReason"] = reason

    _with_hooks(endpoint, {"before-call.{service}.UpdateEndpoint": rolled_back,
                           "after-call.{service}": with_reason})
    with pytest.raises(EndpointDeployFailed, match="ping health check") as failed:
        endpoint.deploy(store, "model-20261125-04")
    assert old.details["endpoint_config_name"] in str(failed.value)
    sm = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name="us-east-1")
    assert sm.describe_endpoint(EndpointName="ctr-rollback")["EndpointConfigName"] == \
        old.details["endpoint_config_name"]


def test_a_failed_endpoint_is_replaced_and_its_reason_given(moto_endpoint, lake):
    """A Failed endpoint takes only DeleteEndpoint: the update every later deploy asked for was
    refused, and the waiter's bare "matched expected path: Failed" hid SageMaker's reason."""
    from clicklake.resources.endpoint import EndpointDeployFailed

    store, artifact, _ = lake
    _another_model(store, artifact, "model-20261125-05")
    endpoint = _strict(moto_endpoint, "ctr-failed", max_wait_attempts=2)
    endpoint.deploy(store, "model-20261125-01")
    failed = [True]

    def as_failed(parsed, model, **_):
        if model.name == "DescribeEndpoint" and failed:
            parsed.update(EndpointStatus="Failed", FailureReason="out of capacity")

    def refuse_on_failed(model, **_):
        if model.name == "DeleteEndpoint":
            failed.clear()
        elif model.name == "UpdateEndpoint" and failed:
            raise AssertionError("UpdateEndpoint on a failed endpoint (SageMaker refuses it)")

    _with_hooks(endpoint, {"after-call.{service}": as_failed,
                           "before-parameter-build.{service}": refuse_on_failed})
    endpoint._calls.clear()
    dep = endpoint.deploy(store, "model-20261125-05")
    assert dep.details["replaced_failed_endpoint"] and not dep.details["updated"]
    assert [c for c in endpoint._calls if c.endswith("Endpoint")
            and not c.startswith("Describe")] == ["DeleteEndpoint", "CreateEndpoint"]
    sm = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name="us-east-1")
    assert sm.describe_endpoint(EndpointName="ctr-failed")["EndpointConfigName"] == \
        dep.details["endpoint_config_name"]

    # created anew and failing: SageMaker's reason, not the waiter's "matched expected path"
    created = []

    def fails_once_created(parsed, model, **_):
        if model.name == "CreateEndpoint":
            created.append(True)
        elif model.name == "DescribeEndpoint" and created:
            parsed.update(EndpointStatus="Failed", FailureReason="out of capacity")

    again = _with_hooks(_strict(moto_endpoint, "ctr-failed-new", max_wait_attempts=2),
                        {"after-call.{service}": fails_once_created})
    with pytest.raises(EndpointDeployFailed, match="is Failed, not InService: out of capacity"):
        again.deploy(store, "model-20261125-05")
