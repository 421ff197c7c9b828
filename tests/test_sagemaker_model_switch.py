"""The API on a SageMaker endpoint that serves another model than the one it encodes for.

`deployed_model` switches the endpoint over to a new model (minutes), then promotes it, and a
deploy may fail (or a model be promoted by hand): meanwhile the endpoint scores with one model
while the API's champion is another, whose vocabularies give a categorical value another code. The endpoint's answer names
the variant that computed it; the API then follows the endpoint: encodes the request for that
model and asks again, or answers 503, never a probability computed from another model's codes.

Against moto's server (real HTTP): its endpoint answers from a queue set through its control
API, named variant included; what the API sent is read from the scorer's calls."""

from __future__ import annotations

import json
import urllib.request
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from clicklake.platform.features import FEATURE_NAMES, INPUT_COLUMNS
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, parse_instant
from clicklake.platform.training import registry
from clicklake.platform.training.manifest import FeatureManifest
from clicklake.resources.endpoint import SageMakerEndpoint, variant_name
from clicklake.serving import ModelSlot, create_app
from clicklake.serving import model as serving_model

A, B = "clicklake-xgb-20261125-000000-001", "clicklake-xgb-20261125-010000-002"
VOCABULARIES = {"country": ["DE", "FR", "US"], "device_type": ["desktop", "mobile"],
                "os": ["android", "windows"], "browser": ["chrome", "firefox"]}
COUNTRY = FEATURE_NAMES.index("country")
START = parse_instant("2026-11-25T00:00:00Z")


class OneUserFeatures:
    """A feature source answering the same made-up state for every request, from France."""

    def feature_inputs(self, user_id, campaign_id, ts_ms, ip, user_agent, domain=None):
        inputs = {c: np.array([1.0]) for c in INPUT_COLUMNS}
        inputs.update(ts_ms=np.array([ts_ms]), is_crawler=np.array([False]),
                      pred_score=np.array([np.nan]), pred_ts_ms=np.array([np.nan]),
                      country=np.array(["FR"], dtype=object),
                      device_type=np.array(["mobile"], dtype=object),
                      os=np.array(["android"], dtype=object),
                      browser=np.array(["chrome"], dtype=object))
        return inputs

    def profile(self, user_id, ts_ms, lists=True):
        return None

    def watermark_ms(self):
        return None

    def check_layout(self):
        return None


def _register(store: Store, model_id: str, countries: list[str]) -> None:
    # The API on SageMaker reads the manifest only; the artifact stands for the model in S3.
    manifest = FeatureManifest(list(FEATURE_NAMES), {**VOCABULARIES, "country": countries})
    registry.register(store, model_id, b"model.tar.gz of " + model_id.encode(), manifest,
                      {"auc": 0.8})
    registry.passed(store, model_id)


def _queue(moto_endpoint: str, *answers: tuple[str, str]) -> None:
    """moto's next answers of invoke_endpoint: (score, variant), one per body it has not seen."""
    queue = {"region": "us-east-1", "results": [
        {"Body": score, "ContentType": "text/csv", "InvokedProductionVariant": variant}
        for score, variant in answers]}
    urllib.request.urlopen(urllib.request.Request(
        f"{moto_endpoint}/moto-api/static/sagemaker/endpoint-results",
        data=json.dumps(queue).encode(), headers={"Content-Type": "application/json"})).read()


@pytest.fixture
def api(moto_endpoint, tmp_path, monkeypatch):
    """(client, slot, calls): the API on the endpoint, model A the champion, B registered as a
    copy of A with one more country (sorted before France, so France's code moves from 2 to
    3); `calls` records each call to the endpoint: (the variant asked for, the row sent)."""
    store = Store(str(tmp_path / "lake"))
    _register(store, A, VOCABULARIES["country"])
    _register(store, B, ["AT", *VOCABULARIES["country"]])
    registry.promote(store, A)
    calls: list[tuple[str | None, np.ndarray]] = []
    real = serving_model.invoke_scores

    def recorded(client, endpoint_name, rows, variant=None):
        calls.append((variant, rows.copy()))
        return real(client, endpoint_name, rows, variant)

    monkeypatch.setattr(serving_model, "invoke_scores", recorded)
    endpoint = SageMakerEndpoint(role_arn="", region="us-east-1", endpoint_url=moto_endpoint,
                                 endpoint_name="ctr-switch")
    slot = ModelSlot(store, sagemaker=endpoint)
    return TestClient(create_app(OneUserFeatures(), slot)), slot, calls


def _predict(client: TestClient, ts: int):
    # moto answers a body it has seen as before: every test asks at instants of its own
    return client.post("/v1/predict", json={"user_id": "u1", "campaign_id": "c1", "ts": ts})


def _sent(calls) -> list[tuple[str | None, float]]:
    return [(variant, row[0, COUNTRY]) for variant, row in calls]


def test_the_api_follows_the_endpoint_both_ways_through_a_deploy(api, moto_endpoint):
    """B promoted, the endpoint still on A (its deploy under way, or failed): the request is
    encoded for B, answered by A, encoded for A and asked again; the answer is A's and names A,
    and the champion check does not load B back. Once the endpoint serves B, the API follows
    it to B the same way."""
    client, slot, calls = api
    assert slot.current.model_id == A
    registry.promote(slot.store, B)
    client.app.state.refresh_all()
    assert slot.current.model_id == B
    codes = {m: slot.load(m).codes["country"]["FR"] for m in (A, B)}
    assert codes == {A: 2, B: 3}

    _queue(moto_endpoint, ("0.25", variant_name(A)), ("0.3", variant_name(A)))
    resp = _predict(client, START + 600_000)
    assert resp.status_code == 200, resp.text
    assert resp.json()["probability"] == 0.3 and resp.json()["model"]["id"] == A
    assert _sent(calls) == [(variant_name(B), codes[B]), (variant_name(A), codes[A])]
    client.app.state.refresh_all()  # the champion is B, the endpoint A: A stays
    assert slot.current.model_id == A
    assert client.get("/healthz").json()["model"]["id"] == A

    calls.clear()
    _queue(moto_endpoint, ("0.6", variant_name(B)), ("0.65", variant_name(B)))
    resp = _predict(client, START + HOUR_MS + 600_000)  # the endpoint now serves B
    assert resp.json()["probability"] == 0.65 and resp.json()["model"]["id"] == B
    assert _sent(calls) == [(variant_name(A), codes[A]), (variant_name(B), codes[B])]
    assert client.get("/healthz").json()["model"]["id"] == B
    assert _model_info(client) == B


def test_a_deploy_then_its_promotion(api, moto_endpoint):
    """deployed_model's order: the endpoint serves B before B is promoted. The API follows the
    endpoint to B (not yet champion: no promotion time), then B's promotion gives it its time,
    in the answers, /healthz and the model metric (it stayed empty until a restart)."""
    client, slot, calls = api
    _queue(moto_endpoint, ("0.2", variant_name(B)), ("0.22", variant_name(B)))
    resp = _predict(client, START + 4 * HOUR_MS + 600_000)
    assert resp.status_code == 200 and resp.json()["model"] == {
        "id": B, "promoted_at": "", "backend": "sagemaker:ctr-switch"}, resp.text
    registry.promote(slot.store, B)
    promoted = registry.champion(slot.store).created_at
    client.app.state.refresh_all()
    assert slot.current.model_id == B and slot.current.promoted_at == promoted
    assert client.get("/healthz").json()["model"]["promoted_at"] == promoted
    _queue(moto_endpoint, ("0.3", variant_name(B)))
    resp = _predict(client, START + 5 * HOUR_MS + 600_000)
    assert resp.json()["model"]["promoted_at"] == promoted
    assert [v for v, _ in calls][-1] == variant_name(B) and _model_info(client) == B


def test_a_variant_of_no_registered_model_is_a_503(api, moto_endpoint):
    """An endpoint serving a model this registry does not hold (deployed from another lake, by
    hand): no model to encode for, so 503 `model_switching`, counted as a model error."""
    client, slot, calls = api
    _queue(moto_endpoint, ("0.5", variant_name("never-registered-" + uuid.uuid4().hex)))
    resp = _predict(client, START + 2 * HOUR_MS + 600_000)
    assert resp.status_code == 503, resp.text
    assert resp.json()["code"] == "model_switching"
    assert "no model of the registry" in resp.json()["detail"]
    assert len(calls) == 1 and slot.current.model_id == A
    assert _model_errors(client) == 1


def test_an_endpoint_switching_again_is_a_503(api, moto_endpoint):
    """Answered by B, then, asked again for B, by A (the endpoint switched back meanwhile): no
    third try, 503 `model_switching`."""
    client, _, calls = api
    _queue(moto_endpoint, ("0.4", variant_name(B)), ("0.45", variant_name(A)))
    resp = _predict(client, START + 3 * HOUR_MS + 600_000)
    assert resp.status_code == 503 and resp.json()["code"] == "model_switching", resp.text
    assert [v for v, _ in calls] == [variant_name(A), variant_name(B)]
    assert _model_errors(client) == 1


def _metric(client: TestClient, name: str):
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    return families[name].samples


def _model_errors(client: TestClient) -> float:
    (total,) = [s for s in _metric(client, "clicklake_api_model_errors")
                if s.name.endswith("_total")]
    return total.value


def _model_info(client: TestClient) -> str:
    (served,) = [s.labels["id"] for s in _metric(client, "clicklake_api_model_info")
                 if s.value == 1]
    return served

