"""The REST API over a real lake built by the whole flow (generate -> Dagster assets -> champion):
predictions through the API equal the training path row by row, serve/skip reasons on hand-made
cases, profiles now and as of past instants, health, Prometheus metrics, following a new champion,
the SageMaker backend over moto's HTTP server, and `clicklake serve` on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import orjson
import pyarrow.compute as pc
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from clicklake.platform.decision import (
    CLICK_FARM,
    CRAWLER_USER_AGENT,
    EXPECTED_VALUE_BELOW_COST,
    DecisionPolicy,
    UserActivity,
    decide,
)
from clicklake.platform.features import FEATURE_NAMES, compute_features, encode
from clicklake.platform.labeled import labeled_key
from clicklake.platform.lookup import LookupTable
from clicklake.platform.raw import raw_key
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, iso, parse_instant
from clicklake.platform.training import registry
from clicklake.platform.training.artifact import load_booster
from clicklake.platform.training.local import predict as booster_predict
from clicklake.serving import LakeFeatures, ModelSlot, ServingConfig, lake_app
from clicklake.serving.schemas import PredictResponse
from tests.landing_factory import impression, land

START = parse_instant("2026-11-24T00:00:00Z")
HOURS = 4
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
_BUILT: dict[str, str] = {}


def built_lake(tmp_path_factory) -> str:
    """A lake with a champion model, built once per test process and shared (read-only)."""
    if "root" not in _BUILT:
        from clicklake.flow import run_flow
        from clicklake.platform.simulate import generate
        from clicklake.resources.endpoint import LocalModelServer
        from clicklake.resources.lake import LakeResource
        from clicklake.resources.online_store import SqliteOnlineStore
        from clicklake.resources.trainer import LocalTrainer

        root = str(tmp_path_factory.mktemp("api-lake"))
        generate(Store(root), start_ms=START, hours=HOURS, users=1500, seed=7)
        # Ids are any text: a campaign named like a time field ("_ts") stays a campaign.
        t = START + 3 * HOUR_MS + 20 * 60_000
        land(Store(root), "impressions", t + 30_000, [impression(
            "imp-spring-1", t, user="u0000300", campaign="spring_ts", domain="shop.example")],
            tag="7")
        result = run_flow({"lake": LakeResource(root=root), "trainer": LocalTrainer(),
                           "endpoint": LocalModelServer(),
                           "online_store": SqliteOnlineStore(path=f"{root}/online/online.db")},
                          # any model will do, but one whose scores differ from row to row
                          # (leaves as small as the stream allows), or the row-by-row
                          # comparisons below would compare near-constants
                          START, HOURS, model_config={"auc_floor": 0.5, "min_child_weight": 1})
        assert not result.failed_checks
        _BUILT["root"] = root
    return _BUILT["root"]


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Store:
    return Store(built_lake(tmp_path_factory))


@pytest.fixture(scope="module")
def client(lake):
    with TestClient(lake_app(lake)) as c:
        yield c


@pytest.fixture(scope="module")
def champion(lake):
    champ = registry.champion(lake)
    return champ.model_id, registry.manifest_of(lake, champ.model_id), load_booster(
        registry.artifact_of(lake, champ.model_id))


def _labeled_with_context(store: Store, hour_ms: int, n: int):
    """`n` labeled impressions of an hour, with the ip and user agent of their raw rows."""
    labeled = store.read_parquet(labeled_key(hour_ms))
    raw = store.read_parquet(raw_key("impressions", hour_ms)).select(
        ["impression_id", "ip", "user_agent"])
    rows = labeled.join(raw, "impression_id").sort_by("impression_id")
    step = max(rows.num_rows // n, 1)
    return rows.take(np.arange(0, rows.num_rows, step)[:n])


def _matrix(table, manifest) -> np.ndarray:
    feats = {n: (table[n].to_numpy(zero_copy_only=False) if n in manifest.categorical
                 else table[n].to_numpy(zero_copy_only=False).astype(np.float64))
             for n in FEATURE_NAMES}
    return encode(feats, manifest.categorical)


@pytest.mark.parametrize("hour", [1, 2])
def test_prediction_equals_training_path_row_by_row(client, lake, champion, hour):
    """For impressions of a labeled hour, the API (lake source, as of each impression's time)
    scores exactly what the model scores on the labeled dataset's encoded row, and the source's
    feature vector equals the labeled row's (NaN-aware, zero mismatches)."""
    model_id, manifest, booster = champion
    rows = _labeled_with_context(lake, START + hour * HOUR_MS, 15)
    expected = booster_predict(booster, _matrix(rows, manifest))
    assert len(set(expected.tolist())) >= len(expected) // 2  # a real comparison, row by row
    source = LakeFeatures(lake)
    mismatches = []
    for i, r in enumerate(rows.to_pylist()):
        ts = round(r["ts"].timestamp() * 1000)
        body = {"user_id": r["user_id"], "campaign_id": r["campaign_id"], "ts": ts,
                "impression_id": r["impression_id"], "ip": r["ip"], "user_agent": r["user_agent"],
                "domain": r["domain"]}
        resp = client.post("/v1/predict", json={k: v for k, v in body.items() if v is not None})
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert out["model"]["id"] == model_id and out["impression_id"] == r["impression_id"]
        assert out["probability"] == expected[i]
        assert out["ts"] == iso(ts)
        online = compute_features(source.feature_inputs(r["user_id"], r["campaign_id"], ts,
                                                        r["ip"], r["user_agent"], r["domain"]))
        for name in FEATURE_NAMES:
            got, want = online[name][0], r[name]
            if name in manifest.categorical:
                same = got == want
            elif want is None:
                same = bool(np.isnan(got))
            elif name.startswith("user_spend_"):
                # Spend in a window is a difference of float cumulative sums over whichever
                # events the batch holds, so the last bits depend on the batch: 1e-12 relative.
                same = abs(got - want) <= 1e-12 * max(abs(want), 1e-300)
            else:
                same = got == want
            if not same:
                mismatches.append((r["impression_id"], name, got, want))
    assert mismatches == []


def test_single_row_encoding_equals_features_encode(lake):
    slot = ModelSlot(lake)
    slot.refresh()
    m = slot.current
    source = LakeFeatures(lake)
    for ip, ua in ((None, None), ("81.2.69.160", FIREFOX), ("2001:db8::1", GOOGLEBOT),
                   ("8.8.8.8", "Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit")):
        feats = compute_features(source.feature_inputs("u0000300", "cmp-0016",
                                                       START + 3 * HOUR_MS, ip, ua))
        np.testing.assert_array_equal(m.encode_one(feats), encode(feats, m.vocabularies))
    feats["country"] = np.array(["never-a-country"], dtype=object)  # out of vocabulary: code 0
    np.testing.assert_array_equal(m.encode_one(feats), encode(feats, m.vocabularies))


def test_one_row_scorer_equals_inplace_predict(lake):
    """The prepared one-row path through XGBoost's C API is what the API scores with, and it
    scores bit for bit what `inplace_predict` scores, row by row: on a booster with many distinct
    scores (the test lake's champion is nearly constant), over rows with missing values, zeros,
    infinities and float32 edge values."""
    import xgboost as xgb

    from clicklake.serving.model import BoosterScorer, _score_rows

    slot = ModelSlot(lake)
    slot.refresh()
    assert isinstance(slot.current.predict_rows, BoosterScorer)
    assert slot.current.predict_rows._call is not None
    rng = np.random.default_rng(11)
    x = rng.normal(0, 3, (4000, 12))
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(0, 1, len(x)) > 0).astype(np.float64)
    x[rng.random(x.shape) < 0.1] = np.nan
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 5, "nthread": 1},
                        xgb.DMatrix(x, label=y, missing=np.nan), num_boost_round=60)
    scorer = BoosterScorer(booster)
    assert scorer._call is not None
    rows = rng.normal(0, 3, (3000, 12))
    rows[rng.random(rows.shape) < 0.1] = np.nan
    rows[:5, :5] = [0.0, np.inf, -np.inf, 1e-45, 3.4e38]
    want = _score_rows(booster, rows)
    got = np.concatenate([scorer(rows[i:i + 1]) for i in range(len(rows))])
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float64 and len(np.unique(got)) > 1000
    np.testing.assert_array_equal(scorer(rows[:7]), want[:7])  # several rows: inplace_predict


def test_crawler_user_agent_is_skipped_with_its_reason(client):
    base = {"user_id": "u0000300", "campaign_id": "cmp-0016", "ip": "81.2.69.160", "cost": 0}
    bot = client.post("/v1/predict", json={**base, "user_agent": GOOGLEBOT}).json()
    PredictResponse.model_validate(bot)  # the documented response shape
    assert bot["decision"] == "skip"
    assert [r["code"] for r in bot["reasons"]] == [CRAWLER_USER_AGENT]
    human = client.post("/v1/predict", json={**base, "user_agent": FIREFOX}).json()
    assert human["decision"] == "serve" and human["reasons"] == []


def test_expected_value_below_cost_at_the_exact_boundary(client):
    base = {"user_id": "u0000300", "campaign_id": "cmp-0016", "user_agent": FIREFOX,
            "ts": "2026-11-24T02:30:00Z", "value_per_click": 0.8}
    p = client.post("/v1/predict", json=base).json()["probability"]
    ev = p * 0.8
    at = client.post("/v1/predict", json={**base, "cost": ev}).json()
    assert at["decision"] == "serve" and at["expected_value"] == ev  # EV == cost: not below
    above = client.post("/v1/predict", json={**base, "cost": ev * 1.0001}).json()
    assert above["decision"] == "skip"
    assert [r["code"] for r in above["reasons"]] == [EXPECTED_VALUE_BELOW_COST]
    assert "< cost" in above["reasons"][0]["message"]
    default = client.post("/v1/predict", json={**base, "value_per_click": None, "cost": 10}
                          ).json()
    assert default["value_per_click"] == DecisionPolicy().default_value_per_click
    assert default["decision"] == "skip"


def _heaviest_clicker(client, lake) -> tuple[str, dict]:
    """The user with the highest 24 h CTR (at least 8 impressions) as of the watermark."""
    wm = LakeFeatures(lake).watermark_ms()
    snap = lake.read_parquet(f"lake/profiles/user/dt=2026-11-24/hour={HOURS - 1:02d}/"
                             "part-0.parquet", ["user_id"])
    profiles = LookupTable(lake).as_of(snap["user_id"], wm)
    busy = profiles.filter(pc.greater_equal(profiles["impressions_24h"], 8))
    ctr = pc.divide(pc.cast(busy["clicks_24h"], "float64"), busy["impressions_24h"])
    user = busy["user_id"][int(np.argmax(ctr.to_numpy()))].as_py()
    return user, client.get(f"/v1/users/{user}/profile").json()


def test_click_farm_rules_fire_at_their_configured_thresholds(client, lake):
    user, prof = _heaviest_clicker(client, lake)
    imp, clk, imp_1h = prof["impressions_24h"], prof["clicks_24h"], prof["impressions_1h"]
    assert clk > 0 and imp_1h > 0
    body = {"user_id": user, "campaign_id": "cmp-0001", "user_agent": FIREFOX, "cost": 0}

    def reasons(policy: DecisionPolicy) -> list[str]:
        app = lake_app(lake, config=ServingConfig(policy=policy))
        out = TestClient(app).post("/v1/predict", json=body).json()
        return [r["code"] for r in out["reasons"]]

    ctr = clk / imp
    burst_off = imp_1h + 1
    assert reasons(DecisionPolicy(farm_ctr_24h=ctr, farm_min_impressions_24h=imp,
                                  farm_burst_impressions_1h=burst_off)) == [CLICK_FARM]
    assert reasons(DecisionPolicy(farm_ctr_24h=ctr * 1.001, farm_min_impressions_24h=imp,
                                  farm_burst_impressions_1h=burst_off)) == []
    assert reasons(DecisionPolicy(farm_ctr_24h=ctr, farm_min_impressions_24h=imp + 1,
                                  farm_burst_impressions_1h=burst_off)) == []
    assert reasons(DecisionPolicy(farm_ctr_24h=1.0,
                                  farm_burst_impressions_1h=imp_1h)) == [CLICK_FARM]


@pytest.mark.parametrize(("kw", "codes"), [
    ({}, []),
    ({"is_crawler": True}, [CRAWLER_USER_AGENT]),
    ({"activity": UserActivity(20, 5, 3)}, [CLICK_FARM]),  # 25 % of 20
    ({"activity": UserActivity(11, 5, 3)}, []),  # too few impressions to judge
    ({"activity": UserActivity(20, 4, 3)}, []),  # 20 % < 25 %
    ({"activity": UserActivity(80, 0, 60)}, [CLICK_FARM]),  # burst
    ({"cost": 0.0051}, [EXPECTED_VALUE_BELOW_COST]),  # 0.01 * 0.5 = 0.005
    ({"cost": 0.005}, []),
    ({"cost": 0.0051, "value_per_click": 1.0}, []),
    ({"is_crawler": True, "activity": UserActivity(80, 40, 0), "cost": 1.0},
     [CRAWLER_USER_AGENT, CLICK_FARM, EXPECTED_VALUE_BELOW_COST]),
])
def test_decide_rules(kw, codes):
    args = {"is_crawler": False, "activity": UserActivity(20, 1, 3), **kw}
    out = decide(0.01, policy=DecisionPolicy(), **args)
    assert [r.code for r in out.reasons] == codes
    assert out.decision == ("skip" if codes else "serve")


@pytest.mark.parametrize(("probability", "cost"), [(0.0041999, 0.0021), (1e-5, 5.000001e-06)])
def test_the_cost_reason_states_both_sides_of_its_comparison_truly(probability, cost):
    """Rounded, a true skip read "0.002100 USD < cost 0.0021 USD" or "(0.0000 × 0.5)"."""
    out = decide(probability, is_crawler=False, activity=UserActivity(0, 0, 0), cost=cost)
    [reason] = out.reasons
    ev, _, said_cost = reason.message.removeprefix("expected value ").partition(" USD (")
    assert float(ev) == out.expected_value and float(ev) < cost
    assert float(said_cost.rpartition("< cost ")[2].removesuffix(" USD")) == cost
    assert f"({probability!r} × 0.5)" in reason.message


def test_policy_rejects_nonsense():
    for bad in ({"farm_ctr_24h": 0}, {"farm_ctr_24h": 1.5}, {"default_value_per_click": -1},
                {"default_value_per_click": float("nan")}, {"farm_burst_impressions_1h": 0}):
        with pytest.raises(ValueError):
            DecisionPolicy(**bad)


def test_a_lake_that_cannot_be_read_is_a_503_with_its_code(lake):
    """The lake unreachable (an S3 endpoint that does not resolve, a disk error) answered a
    plain-text 500 to time travel: the failure is the server's side, said in JSON."""
    class Unreachable:  # the file system once the endpoint stops resolving
        def __init__(self, fs):
            self.fs = fs

        def __getattr__(self, name):
            def fails(*args, **kwargs):
                raise OSError("When reading information for key 'lake/...': Could not resolve "
                              "host")
            return fails

    store = Store(lake.root)
    with TestClient(lake_app(store)) as c:
        store.fs = Unreachable(store.fs)
        r = c.get("/v1/users/u0000300/profile", params={"as_of": str(START + HOUR_MS + 7)})
    assert r.status_code == 503, r.text
    assert r.json() == {"code": "features_unavailable", "detail": "the feature source cannot "
                        "be read: When reading information for key 'lake/...': Could not "
                        "resolve host"}


def test_profile_now_and_as_of_match_the_lookup_table(client, lake):
    table = LookupTable(lake)
    wm = LakeFeatures(lake).watermark_ms()
    now = client.get("/v1/users/u0000300/profile").json()
    want = table.profile("u0000300", wm)
    # "now" on the lake is its watermark: the windows end there, and the answer says so
    assert now["source"] == "lake" and now["as_of"] == now["features_as_of"] == iso(wm)
    for k in ("impressions", "clicks", "impressions_24h", "clicks_1h", "distinct_domains"):
        assert now[k] == want[k]
    assert now["spend"] == pytest.approx(want["spend"], rel=0, abs=0)
    assert now["domains"] == want["domains"]
    assert now["campaigns"]["spring_ts"] == want["campaigns"]["spring_ts"] == {
        "impressions": 1, "clicks": 0}
    t = START + HOUR_MS + 1_234_567
    past = client.get("/v1/users/u0000300/profile", params={"as_of": str(t)}).json()
    want = table.profile("u0000300", t)
    assert past["as_of"] == iso(t)
    assert {k: past[k] for k in ("impressions", "clicks", "impressions_1h", "campaigns")} == {
        k: want[k] for k in ("impressions", "clicks", "impressions_1h", "campaigns")}
    assert past["last_impression_ts"] == iso(round(want["last_impression_ts"].timestamp() * 1000))
    iso_form = client.get("/v1/users/u0000300/profile",
                          params={"as_of": iso(t).replace("Z", "+00:00")}).json()
    assert iso_form == past
    # A day is its midnight, as for `clicklake lookup --as-of` (an impression's ts is refused).
    day = t - t % 86_400_000
    by_day = client.get("/v1/users/u0000300/profile", params={"as_of": iso(day)[:10]})
    assert by_day.status_code == 404 and "before" in by_day.text.lower() or (
        by_day.status_code == 200 and by_day.json()["as_of"] == iso(day)), by_day.text
    for params in ({}, {"as_of": str(t)}):  # the counters alone, from either source
        counters = client.get("/v1/users/u0000300/profile",
                              params={**params, "lists": "false"}).json()
        full = client.get("/v1/users/u0000300/profile", params=params).json()
        assert "campaigns" not in counters and "domains" not in counters
        assert counters == {k: v for k, v in full.items()  # "now" moved between the two
                            if k not in ("campaigns", "domains")} | {"as_of": counters["as_of"]}


@pytest.mark.parametrize(("path", "params", "status", "code"), [
    ("/v1/users/nobody-at-all/profile", {}, 404, "unknown_user"),
    ("/v1/users/u0000300/profile", {"as_of": "2026-11-24T00:00:00Z"}, 404, "unknown_user"),
    ("/v1/users/u0000300/profile", {"as_of": "2025-01-01T00:00:00Z"}, 404, "before_history"),
    ("/v1/users/u0000300/profile", {"as_of": "yesterday"}, 422, "invalid_request"),
    ("/v1/users/u0000300/profile", {"as_of": "2999-01-01T00:00:00Z"}, 422, "invalid_request"),
    ("/v1/users/u0000300/profile", {"as_of": "12"}, 422, "invalid_request"),
    ("/v1/users/u0000300/profile", {"as_of": "2026-11-24T05:00:00 02:00"}, 422,
     "invalid_request"),
    ("/v1/users/u0000300/profile", {"lists": "maybe"}, 422, "invalid_request"),
    ("/v1/users/" + "x" * 129 + "/profile", {}, 422, "invalid_request"),
    ("/v1/users/a%01b/profile", {}, 422, "invalid_request"),
])
def test_profile_errors_are_clear(client, path, params, status, code):
    resp = client.get(path, params=params)
    assert resp.status_code == status, resp.text
    assert resp.json()["code"] == code and resp.json()["detail"]
    if " " in params.get("as_of", ""):  # an unencoded "+" offset
        assert "%2B" in resp.json()["detail"]


def test_a_prediction_before_the_lakes_history_is_refused_as_a_profile_is(client):
    """A profile at an instant before the lake's history is refused; a prediction at it was
    scored as a user with no history, which the lake cannot know."""
    body = {"user_id": "u0000300", "campaign_id": "cmp-0001", "ts": "2025-01-01T00:00:00Z"}
    resp = client.post("/v1/predict", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["code"] == "features_unavailable"
    assert "history starts at 2026-11-24T00:00:00" in resp.json()["detail"]


def test_healthz_and_metrics(lake, champion):
    with TestClient(lake_app(lake)) as c:
        health = c.get("/healthz").json()
        assert health["status"] == "ok" and health["model"]["id"] == champion[0]
        head = c.head("/healthz")  # load balancers probe with HEAD too
        assert head.status_code == 200 and head.content == b""
        assert health["features_as_of"] == iso(START + HOURS * HOUR_MS)
        ok = {"user_id": "u0000300", "campaign_id": "cmp-0016", "cost": 0}
        c.post("/v1/predict", json=ok)
        c.post("/v1/predict", json={**ok, "user_agent": GOOGLEBOT})
        c.post("/v1/predict", json={**ok, "cost": -1})
        c.post("/v1/predict", content=b"x" * 20_000, headers={"content-type": "application/json"})
        c.get("/v1/users/nobody/profile")
        families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
    requests = {(s.labels["route"], s.labels["status"]): s.value
                for s in families["clicklake_api_requests"].samples if s.name.endswith("_total")}
    assert requests == {("/healthz", "200"): 1, ("/v1/predict", "200"): 2,  # HEAD: not counted
                        ("/v1/predict", "422"): 1, ("/v1/predict", "413"): 1,
                        ("/v1/users/{user_id}/profile", "404"): 1}
    decisions = {s.labels["decision"]: s.value for s in families["clicklake_api_decisions"].samples
                 if s.name.endswith("_total")}
    assert decisions == {"serve": 1, "skip": 1}
    reasons = {s.labels["reason"]: s.value for s in families["clicklake_api_skip_reasons"].samples
               if s.name.endswith("_total")}
    assert reasons == {CRAWLER_USER_AGENT: 1}
    (info,) = families["clicklake_api_model_info"].samples
    assert info.labels["id"] == champion[0] and info.labels["backend"] == "local"
    count = [s for s in families["clicklake_api_request_duration_seconds"].samples
             if s.name.endswith("_count") and s.labels["route"] == "/v1/predict"]
    assert count[0].value == 4


def test_follows_a_new_champion_and_keeps_serving_without_one(lake, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(lake.root, root)
    store = Store(str(root))
    app = lake_app(store)
    c = TestClient(app)
    old = c.get("/healthz").json()["model"]["id"]
    artifact, manifest = registry.artifact_of(store, old), registry.manifest_of(store, old)
    registry.register(store, "clicklake-xgb-next", artifact, manifest, {"auc": 0.9})
    registry.promote(store, "clicklake-xgb-next")
    body = {"user_id": "u0000300", "campaign_id": "cmp-0016"}
    assert c.post("/v1/predict", json=body).json()["model"]["id"] == old  # until the check
    app.state.refresh_all()
    assert c.get("/healthz").json()["model"]["id"] == "clicklake-xgb-next"
    assert c.post("/v1/predict", json=body).json()["model"]["id"] == "clicklake-xgb-next"

    empty = TestClient(lake_app(Store(str(tmp_path / "nothing"))))
    assert empty.get("/healthz").status_code == 503
    resp = empty.post("/v1/predict", json=body)
    assert resp.status_code == 503 and resp.json()["code"] == "no_model"


def test_sagemaker_backend_scores_through_sagemaker_runtime(lake, champion, moto_endpoint,
                                                           monkeypatch):
    """moto's endpoint answers from a queue: queue what the built-in XGBoost container would
    return for this row (the booster's score) and check the API returns it, and that the row
    sent to the endpoint is exactly the encoded feature vector (moto answers whatever it is
    sent, so the score alone would not show a wrong encoding)."""
    from clicklake.resources.endpoint import SageMakerEndpoint
    from clicklake.serving import model as serving_model

    sent = []
    real = serving_model.invoke_scores

    def recorded(client, endpoint_name, rows, variant=None):
        sent.append(rows.copy())
        return real(client, endpoint_name, rows, variant)

    monkeypatch.setattr(serving_model, "invoke_scores", recorded)

    model_id, manifest, booster = champion
    source = LakeFeatures(lake)
    ts = START + 2 * HOUR_MS + 600_000
    inputs = source.feature_inputs("u0000300", "cmp-0016", ts, None, FIREFOX)
    score = float(booster_predict(booster, encode(compute_features(inputs),
                                                  manifest.categorical))[0])
    queue = {"region": "us-east-1",
             "results": [{"Body": repr(score), "ContentType": "text/csv"}]}
    urllib.request.urlopen(urllib.request.Request(
        f"{moto_endpoint}/moto-api/static/sagemaker/endpoint-results",
        data=json.dumps(queue).encode(), headers={"Content-Type": "application/json"})).read()
    endpoint = SageMakerEndpoint(role_arn="", region="us-east-1", endpoint_url=moto_endpoint,
                                 endpoint_name="ctr-api")
    app = lake_app(lake, model=ModelSlot(lake, sagemaker=endpoint), source=source)
    out = TestClient(app).post("/v1/predict", json={
        "user_id": "u0000300", "campaign_id": "cmp-0016", "ts": ts, "user_agent": FIREFOX}).json()
    assert out["probability"] == score
    assert out["model"] == {"id": model_id, "promoted_at": registry.champion(lake).created_at,
                            "backend": "sagemaker:ctr-api"}
    [rows] = sent
    expected = encode(compute_features(inputs), manifest.categorical)
    assert rows.shape == expected.shape and np.array_equal(rows, expected, equal_nan=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_clicklake_serve_on_loopback_with_a_token(lake):
    """One worker: the app in the server process itself (tests/test_api_workers.py: several)."""
    port = _free_port()
    env = {**os.environ, "CLICKLAKE_API_TOKEN": "s3cret-token"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from clicklake.cli import main; main()", "serve", "--root",
         lake.root, "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                health = json.loads(urllib.request.urlopen(f"{url}/healthz").read())
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.1)
        assert health["status"] == "ok"
        body = json.dumps({"user_id": "u0000300", "campaign_id": "cmp-0016"}).encode()
        req = urllib.request.Request(f"{url}/v1/predict", data=body, headers={
            "Content-Type": "application/json", "Authorization": "Bearer s3cret-token"})
        assert json.loads(urllib.request.urlopen(req).read())["decision"] in ("serve", "skip")
        denied = urllib.request.Request(f"{url}/v1/predict", data=body,
                                        headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(denied)
        assert err.value.code == 401
        metrics = urllib.request.Request(f"{url}/metrics",
                                         headers={"Authorization": "Bearer s3cret-token"})
        families = {f.name: f for f in text_string_to_metric_families(
            urllib.request.urlopen(metrics).read().decode())}
        assert "clicklake_api_worker_requests" not in families  # one process: no pid labels
        assert {s.labels["status"]: s.value for s in families["clicklake_api_requests"].samples
                if s.name.endswith("_total") and s.labels["route"] == "/v1/predict"
                } == {"200": 1, "401": 1}
    finally:
        proc.terminate()
        # stopped gracefully, then exits by the signal it caught (uvicorn re-raises it)
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)


def test_online_source_predictions_equal_the_training_path(lake, champion, tmp_path,
                                                             monkeypatch):
    """The landing zone folded into the online store (SQLite): the API over it scores an
    impression exactly as the labeled row, and its profile "now" equals the lookup table's at
    the same instant."""
    from clicklake.platform.landing import parse_key
    from clicklake.platform.online import BeforeHorizon, OnlineFeatures, SqliteState, fold_files

    _, manifest, booster = champion
    state = SqliteState(str(tmp_path / "online.db"))
    keys = lake.list("landing/")
    hour = START + 2 * HOUR_MS
    # As the online store stood while hour 2 was live: everything that arrived before hour + 2 h
    # (the online state keeps event-level history for a bounded horizon only).
    fold_files(state, lake, [k for k in keys if parse_key(k).arrival_ms < hour + 2 * HOUR_MS])
    online = OnlineFeatures(state)
    client = TestClient(lake_app(lake, source=online))
    rows = _labeled_with_context(lake, hour, 10)
    expected = booster_predict(booster, _matrix(rows, manifest))
    assert len(set(expected.tolist())) >= len(expected) // 2

    def predict_each() -> list[dict]:
        answers = []
        for i, r in enumerate(rows.to_pylist()):
            body = {"user_id": r["user_id"], "campaign_id": r["campaign_id"],
                    "ts": round(r["ts"].timestamp() * 1000), "ip": r["ip"],
                    "user_agent": r["user_agent"], "domain": r["domain"]}
            out = client.post("/v1/predict",
                              json={k: v for k, v in body.items() if v is not None})
            assert out.status_code == 200, out.text
            assert out.json()["probability"] == expected[i]
            answers.append(out.json())
        return answers

    assert all(a["features_as_of"] == iso(online.watermark_ms()) for a in predict_each())
    fold_files(state, lake, keys)
    # Once the online store has moved on, the same impressions are older than it keeps: the
    # lake's time travel scores them, exactly as before.
    first = rows.to_pylist()[0]
    with pytest.raises(BeforeHorizon):
        online.feature_inputs(first["user_id"], first["campaign_id"],
                              round(first["ts"].timestamp() * 1000), first["ip"],
                              first["user_agent"])
    # ... stamped with the lake's watermark: the online store's is hours ahead of the events
    # the lake answered from (so is a time-travel profile's)
    lake_as_of = iso(LakeFeatures(lake).watermark_ms())
    assert lake_as_of != iso(online.watermark_ms())
    assert all(a["features_as_of"] == lake_as_of for a in predict_each())
    past = client.get("/v1/users/u0000300/profile",
                      params={"as_of": str(START + HOUR_MS + 1_234_567)}).json()
    assert (past["source"], past["features_as_of"]) == ("lake", lake_as_of)
    prof = client.get("/v1/users/u0000300/profile").json()
    assert prof["source"] == "online"
    want = LookupTable(lake).profile("u0000300", parse_instant(prof["as_of"]))
    assert (prof["impressions"], prof["clicks"], prof["campaigns"]) == (
        want["impressions"], want["clicks"], want["campaigns"])
    # written without the response model (the lists as the store keeps them), yet its form
    from clicklake.serving.schemas import ProfileOut, iso_or_none

    assert ProfileOut.model_validate(prof).model_dump(mode="json", exclude_unset=True) == prof
    assert prof["last_impression_ts"] == iso_or_none(want["last_impression_ts"])
    # a user with predictions only has no profile yet: 404, as from the lake
    from clicklake.platform.online import fold_rows

    wm = online.watermark_ms()
    fold_rows(state, "predictions", [("p-only", wm - 60_000, "scored-only", "m", 0.5, None)],
              "replay/p-only", wm)
    assert client.get("/v1/users/scored-only/profile").json()["code"] == "unknown_user"
    counters = client.get("/v1/users/u0000300/profile", params={"lists": "false"}).json()
    assert "campaigns" not in counters and "domains" not in counters
    assert {k: v for k, v in counters.items() if k != "as_of"} == {
        k: v for k, v in prof.items() if k not in ("as_of", "campaigns", "domains")}
    # A newer clicklake writes the store now: this server refuses to guess, with a 503, and its
    # health check says so (a load balancer drains it, an orchestrator restarts it).
    from clicklake.platform.online import read
    from clicklake.platform.online.state import DOCS_LAYOUT

    assert client.get("/healthz").json()["source_error"] is None

    state.conn.execute("UPDATE meta SET v=? WHERE k='docs_layout'", (DOCS_LAYOUT + 1,))
    later = time.monotonic() + read.LAYOUT_CHECK_S
    monkeypatch.setattr(read.time, "monotonic", lambda: later)
    r = rows.to_pylist()[0]
    out = client.post("/v1/predict", json={
        "user_id": r["user_id"], "campaign_id": r["campaign_id"],
        "ts": round(r["ts"].timestamp() * 1000), "ip": r["ip"]})
    assert out.status_code == 503 and out.json()["code"] == "stale_layout", out.text
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert "newer clicklake" in health.json()["source_error"]


def test_a_failing_model_endpoint_is_a_503_never_a_500(lake, moto_endpoint):
    """An endpoint answering nonsense (not one probability per row) or not answering at all:
    503 `model_unavailable` with the reason, counted in /metrics."""
    from clicklake.resources.endpoint import SageMakerEndpoint

    body = {"user_id": "u0000300", "campaign_id": "cmp-0016", "ts": START + 2 * HOUR_MS}
    queue = {"region": "us-east-1", "results": [
        {"Body": "oops", "ContentType": "text/csv"},
        {"Body": "0.2,0.3", "ContentType": "text/csv"},  # two scores for one row
        {"Body": "1.7", "ContentType": "text/csv"},  # not a probability
        {"Body": "0.25", "ContentType": "text/csv"}]}
    urllib.request.urlopen(urllib.request.Request(
        f"{moto_endpoint}/moto-api/static/sagemaker/endpoint-results",
        data=json.dumps(queue).encode(), headers={"Content-Type": "application/json"})).read()
    endpoint = SageMakerEndpoint(role_arn="", region="us-east-1", endpoint_url=moto_endpoint,
                                 endpoint_name="ctr-api")
    app = lake_app(lake, model=ModelSlot(lake, sagemaker=endpoint), source=LakeFeatures(lake))
    c = TestClient(app)
    # moto answers the same request the same way: each asks at another instant (other features)
    for minute, answered in enumerate(("oops", "0.2,0.3", "1.7")):
        resp = c.post("/v1/predict", json={**body, "ts": body["ts"] + minute * 60_000})
        assert resp.status_code == 503, resp.text
        assert resp.json()["code"] == "model_unavailable" and answered in resp.json()["detail"]
    resp = c.post("/v1/predict", json={**body, "ts": body["ts"] + 3 * 60_000})
    assert resp.json()["probability"] == 0.25

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = SageMakerEndpoint(role_arn="", region="us-east-1",
                             endpoint_url=f"http://127.0.0.1:{closed}", endpoint_name="ctr-api")
    app = lake_app(lake, model=ModelSlot(lake, sagemaker=down), source=LakeFeatures(lake))
    c = TestClient(app)
    resp = c.post("/v1/predict", json=body)
    assert resp.status_code == 503 and resp.json()["code"] == "model_unavailable", resp.text
    assert "EndpointConnectionError" in resp.json()["detail"]
    families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
    (errors,) = [s for s in families["clicklake_api_model_errors"].samples
                 if s.name.endswith("_total")]
    assert errors.value == 1


def test_a_lake_without_profiles_is_the_servers_fault(lake, tmp_path):
    """A champion but no user profile snapshots yet (user_profiles never ran, or was wiped):
    503 with the reason on predict and profile, and /healthz says so (a load balancer keeps
    traffic away), never a 4xx blaming the request."""
    root = tmp_path / "copy"
    shutil.copytree(lake.root, root, ignore=shutil.ignore_patterns("online"))
    shutil.rmtree(root / "lake" / "profiles")
    c = TestClient(lake_app(Store(str(root))))
    health = c.get("/healthz")
    assert health.status_code == 503 and "user_profiles" in health.json()["source_error"]
    resp = c.post("/v1/predict", json={"user_id": "u0000300", "campaign_id": "cmp-0016"})
    assert resp.status_code == 503 and resp.json()["code"] == "features_unavailable", resp.text
    assert "no user profile snapshots" in resp.json()["detail"]
    resp = c.get("/v1/users/u0000300/profile")
    assert resp.status_code == 503 and resp.json()["code"] == "features_unavailable", resp.text
    resp = c.get("/v1/users/u0000300/profile", params={"as_of": iso(START + HOUR_MS)})
    assert resp.status_code == 503 and resp.json()["code"] == "features_unavailable", resp.text


def test_lake_reads_run_off_the_event_loop(lake):
    """The lake's features (Parquet reads) and time-travel profiles run in the thread pool: a
    slow read does not hold every other request behind it on the event loop's thread."""
    import threading

    seen = []

    class Recording(LakeFeatures):
        def feature_inputs(self, *args, **kwargs):
            seen.append(("features", threading.current_thread()))
            return super().feature_inputs(*args, **kwargs)

        def profile(self, *args, **kwargs):
            seen.append(("now", threading.current_thread()))
            return super().profile(*args, **kwargs)

    class RecordingLookup(LookupTable):
        def profile(self, *args, **kwargs):
            seen.append(("profile", threading.current_thread()))
            return super().profile(*args, **kwargs)

    from clicklake.serving import create_app

    app = create_app(Recording(lake), ModelSlot(lake), RecordingLookup(lake), source_kind="lake")
    seen.clear()  # the warm-up's read, at startup
    with TestClient(app) as c:
        loop_thread = c.portal.call(threading.current_thread)
        assert c.post("/v1/predict", json={"user_id": "u0000300",
                                           "campaign_id": "cmp-0016"}).status_code == 200
        assert c.get("/v1/users/u0000300/profile",
                     params={"as_of": iso(START + 3 * HOUR_MS)}).status_code == 200
        assert c.get("/v1/users/u0000300/profile").status_code == 200  # "now", from the lake
    assert [kind for kind, _ in seen] == ["features", "profile", "now"]
    assert all(thread is not loop_thread for _, thread in seen)


def test_remote_online_reads_run_off_the_event_loop_and_sqlite_reads_on_it(lake, tmp_path):
    """A DynamoDB read (~11 round trips for a prediction) ran inline on the event loop, holding
    every other request behind it; a SQLite key read stays inline (shorter than the hop)."""
    import threading

    from clicklake.platform.online import OnlineFeatures, SqliteState, fold_files
    from clicklake.serving import create_app

    state = SqliteState(str(tmp_path / "online.db"))
    fold_files(state, lake, lake.list("landing/"))
    user = "u0000300"
    now = {"user_id": user, "campaign_id": "cmp-0016"}

    class Remote:  # a store that is not a local SQLite file (DynamoDB's reads go over HTTP)
        def __getattr__(self, name):
            return getattr(state, name)

    class Recording(OnlineFeatures):
        def feature_inputs(self, *args, **kwargs):
            seen.append(("features", threading.current_thread()))
            return super().feature_inputs(*args, **kwargs)

        def profile(self, *args, **kwargs):
            seen.append(("profile", threading.current_thread()))
            return super().profile(*args, **kwargs)

        def watermark_ms(self):  # the answers' features_as_of, /healthz
            seen.append(("watermark", threading.current_thread()))
            return super().watermark_ms()

        def check_layout(self):
            seen.append(("layout", threading.current_thread()))
            return super().check_layout()

    for store, inline in ((Remote(), False), (state, True)):
        seen = []
        with TestClient(create_app(Recording(store), ModelSlot(lake))) as c:
            loop_thread = c.portal.call(threading.current_thread)
            seen.clear()  # the warm-up's read, at startup
            assert c.post("/v1/predict", json=now).status_code == 200
            assert c.get(f"/v1/users/{user}/profile").status_code == 200
            assert c.get("/healthz").status_code == 200
        reads = [kind for kind, _ in seen]
        assert {"features", "profile", "watermark", "layout"} <= set(reads), reads
        on_loop = {kind for kind, thread in seen if thread is loop_thread}
        # none on the event loop for a remote store; a SQLite store's reads stay inline
        assert on_loop == ({"features", "profile", "watermark", "layout"} if inline else set())


def test_a_store_being_rebuilt_is_not_served_from(lake, champion, tmp_path):
    """While the online store is rebuilt (or its rebuild died), it holds part of the history:
    predictions were scored on it as if its users had no past. Now they use the lake's
    features (equal to a lake server's answer) and /healthz says so while staying ready;
    without a lake behind it, 503 features_unavailable; profiles 503 meanwhile."""
    from clicklake.platform.online import OnlineFeatures, SqliteState, fold_files
    from clicklake.platform.online import fold as fold_mod
    from clicklake.platform.online.seed import refold_mark
    from clicklake.serving import ModelSlot, create_app

    keys = sorted(lake.list("landing/"))
    state = SqliteState(str(tmp_path / "online.db"))
    fold_files(state, lake, keys)
    # a refold that has reached a tenth of the files
    state.clear(keep=(fold_mod.SEED, fold_mod.SEED_KEY, 0, refold_mark("r1")))
    fold_files(state, lake, keys[:len(keys) // 10], seeding=orjson.loads(refold_mark("r1")))
    online = OnlineFeatures(state)
    row = _labeled_with_context(lake, START + 2 * HOUR_MS, 3).to_pylist()[0]
    body = {"user_id": row["user_id"], "campaign_id": row["campaign_id"],
            "ts": round(row["ts"].timestamp() * 1000), "ip": row["ip"],
            "user_agent": row["user_agent"], "domain": row["domain"]}
    body = {k: v for k, v in body.items() if v is not None}
    with TestClient(lake_app(lake, source=online)) as c, TestClient(lake_app(lake)) as by_lake:
        out = c.post("/v1/predict", json=body)
        assert out.status_code == 200, out.text
        lake_answer = by_lake.post("/v1/predict", json=body).json()
        assert out.json()["probability"] == lake_answer["probability"]
        # as of the lake's watermark, whose features these are (not the store's)
        assert out.json()["features_as_of"] == lake_answer["features_as_of"]
        assert out.json()["features_as_of"] != iso(online.watermark_ms())
        health = c.get("/healthz")
        assert health.status_code == 200 and health.json()["source_error"] is None
        assert "being rebuilt from every landing file" in health.json()["source_notice"]
        assert health.json()["features_as_of"] == lake_answer["features_as_of"]
        profile = c.get(f"/v1/users/{row['user_id']}/profile")
        assert (profile.status_code, profile.json()["code"]) == (503, "features_unavailable")
    alone = create_app(online, ModelSlot(lake))  # no lake to fall back on
    with TestClient(alone) as c:
        out = c.post("/v1/predict", json=body)
        assert (out.status_code, out.json()["code"]) == (503, "features_unavailable")
        assert "being rebuilt" in out.json()["detail"]
        assert c.get("/healthz").status_code == 503
        # the rebuild done (its mark gone): served from the store again at the next check
        fold_files(state, lake, keys, seeding=orjson.loads(refold_mark("r1")))
        state.clear()
        fold_files(state, lake, keys)
        online._layout_due = 0.0
        now = {k: v for k, v in body.items() if k != "ts"}  # the store's horizon has moved on
        assert c.post("/v1/predict", json=now).status_code == 200
        assert c.get("/healthz").json()["source_notice"] is None


def test_a_store_being_rebuilt_over_a_lake_without_snapshots_is_not_ready(lake, tmp_path):
    """The lake cannot answer either (no user profile snapshots): /healthz said ready, with
    predictions "from the lake", while every prediction answered 503."""
    from clicklake.platform.online import OnlineFeatures, SqliteState
    from clicklake.platform.online import fold as fold_mod
    from clicklake.platform.online.seed import refold_mark

    bare = Store(str(tmp_path / "bare"))
    shutil.copytree(os.path.join(lake.root, "lake", "models"),
                    os.path.join(bare.root, "lake", "models"))  # a champion, no profiles
    state = SqliteState(str(tmp_path / "online.db"))
    state.clear(keep=(fold_mod.SEED, fold_mod.SEED_KEY, 0, refold_mark("r1")))
    with TestClient(lake_app(bare, source=OnlineFeatures(state))) as c:
        health = c.get("/healthz")
        assert health.status_code == 503 and "being rebuilt" in health.json()["source_error"]
        out = c.post("/v1/predict", json={"user_id": "u1", "campaign_id": "c1"})
        assert (out.status_code, out.json()["code"]) == (503, "features_unavailable")


def test_a_lake_request_waiting_behind_a_refresh_answers_at_the_new_watermark(lake, tmp_path):
    """A request on the lake source read the watermark, then waited for the source's lock
    behind the reload tick's refresh, which moved the watermark and emptied the cache: it
    stored its inputs of the old watermark in the new cache under a key without the instant,
    and "now" answered from the hour before until the next move."""
    import shutil
    import threading

    root = tmp_path / "lake"
    shutil.copytree(lake.root, root)
    hour = "dt=2026-11-24/hour=03"  # the lake's last hour, not built yet
    parts = [root / "lake" / kind / hour for kind in (
        "raw/impressions", "raw/clicks", "raw/predictions", "profiles/user", "profiles/segment")]
    for p in parts:
        p.rename(f"{p}.later")
    source = LakeFeatures(Store(str(root)))
    before = source.watermark_ms()

    class RefreshFirst:  # the first request to take the lock finds the refresh ahead of it
        def __init__(self, inner):
            self.inner, self.fired = inner, False

        def __enter__(self):
            if not self.fired:
                self.fired = True
                for p in parts:  # the hour lands; the reload tick refreshes, lock first
                    os.rename(f"{p}.later", p)
                refresh = threading.Thread(target=source.refresh)
                refresh.start()
                refresh.join()
            return self.inner.__enter__()

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

    source._lock = RefreshFirst(source._lock)
    args = ("u0000082", "cmp-0093", START + 6 * HOUR_MS, "1.2.3.4", "Mozilla/5.0")
    source.feature_inputs(*args)
    assert source.watermark_ms() == before + HOUR_MS
    served = source.feature_inputs(*args)
    fresh = LakeFeatures(Store(str(root))).feature_inputs(*args)
    for name, value in fresh.items():
        np.testing.assert_array_equal(served[name], value, err_msg=name)


def test_the_demos_server_ignores_a_deployments_serve_settings(lake, monkeypatch, capsys):
    """`make demo` starts `clicklake serve` on its own store: the environment's serve settings
    made every demo call a 401 (a token), or opened a DynamoDB table instead (a table name)."""
    from clicklake.cli import demo_serving

    monkeypatch.setenv("CLICKLAKE_API_TOKEN", "deployment-token")
    monkeypatch.setenv("CLICKLAKE_DYNAMODB_TABLE", "deployment-table")
    monkeypatch.setenv("CLICKLAKE_LAKE_PREFIX", "elsewhere")
    last = START + (HOURS - 1) * HOUR_MS
    demo_serving.serve_and_predict(lake.root, last, last + HOUR_MS - 60_000)
    out = capsys.readouterr().out
    assert out.count("HTTP 200") == 3 and "HTTP 401" not in out, out
    # and each shows what it says: served, skipped as a crawler, skipped as priced over its
    # expected value (a click farm's user, or the row's own cost, made them a matter of luck)
    answers = [orjson.loads(line.removeprefix("HTTP 200 ")) for line in out.splitlines()
               if line.startswith("HTTP 200 ")]
    assert [(a["decision"], [r["code"] for r in a["reasons"]]) for a in answers] == [
        ("serve", []), ("skip", [CRAWLER_USER_AGENT]), ("skip", [EXPECTED_VALUE_BELOW_COST])]


def test_the_demo_stops_a_server_that_never_becomes_healthy(lake, tmp_path, monkeypatch):
    """A server that started but answered /healthz 503 (no model deployed) hung the demo for
    good: it read the server's log to its end, which never came, without stopping it."""
    import click

    from clicklake.cli import demo_serving

    root = tmp_path / "lake"
    shutil.copytree(lake.root, root)
    (root / "lake/models/champion.json").unlink()
    monkeypatch.setattr(demo_serving, "START_TIMEOUT_S", 4)
    started = []
    real = subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(demo_serving.subprocess, "Popen", popen)
    t0 = time.monotonic()
    with pytest.raises(click.ClickException, match="the API did not start"):
        demo_serving.serve_and_predict(str(root), START, START + 60_000)
    assert time.monotonic() - t0 < 60 and started[0].poll() is not None


def test_the_lake_source_follows_a_rewritten_snapshot_at_the_same_watermark(lake, tmp_path):
    """A refold rewrites the latest user snapshot in place: the watermark does not move, and
    the lake source kept answering "now" from the old file, refresh or not, while time travel
    on the same server saw the new one."""
    import shutil

    import pyarrow.parquet as pq

    root = tmp_path / "lake"
    shutil.copytree(lake.root, root)
    source = LakeFeatures(Store(str(root)))
    user, now = "u0000082", START + 10 * HOUR_MS
    before = source.profile(user, now)["impressions"]
    snap = root / "lake/profiles/user/dt=2026-11-24/hour=03/part-0.parquet"
    table = pq.read_table(snap)
    at = table.column_names.index("impressions")
    table = table.set_column(at, table.schema.field(at), pc.if_else(
        pc.equal(table["user_id"], user), pc.add(table["impressions"], 1000),
        table["impressions"])).replace_schema_metadata(table.schema.metadata)
    pq.write_table(table, snap)
    assert source.refresh() and not source.refresh()  # seen once, then nothing new
    assert source.profile(user, now)["impressions"] == before + 1000
