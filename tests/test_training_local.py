"""The local training path end to end: SageMaker CSV in, model.tar.gz out, loaded back and scored;
feature importance; the gate; the LocalTrainer and LocalModelServer resources."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import xgboost as xgb

from clicklake.platform.storage import Store
from clicklake.platform.training import registry
from clicklake.platform.training.artifact import load_booster, pack_model, unpack_model
from clicklake.platform.training.csvformat import to_csv_bytes
from clicklake.platform.training.gate import gate
from clicklake.platform.training.hyperparams import hyperparameters
from clicklake.platform.training.local import feature_importance, predict, train_local
from clicklake.platform.training.manifest import FeatureManifest
from clicklake.platform.training.metrics import auc, evaluate
from clicklake.platform.training.synthetic import synthetic_clicks
from clicklake.resources.endpoint import LocalModelServer
from clicklake.resources.trainer import LocalTrainer

NAMES = [f"f_{i}" for i in range(8)]


@pytest.fixture(scope="module")
def data():
    y, x, p = synthetic_clicks(12_000, 8, seed=1)
    # Split by position, as the training set splits by time: the tail is validation.
    return (y[:9000], x[:9000]), (y[9000:], x[9000:], p[9000:])


@pytest.fixture(scope="module")
def artifact(data):
    (y, x), (yv, xv, _) = data
    hp = hyperparameters(base_score=float(y.mean()), num_round=40, max_depth=4)
    return train_local(to_csv_bytes(y, x), to_csv_bytes(yv, xv), hp)


def test_artifact_is_one_xgboost_model_member(artifact):
    with tarfile.open(fileobj=io.BytesIO(artifact), mode="r:gz") as tar:
        assert tar.getnames() == ["xgboost-model"]
    # Deterministic: repacking the same model gives the same bytes.
    assert pack_model(unpack_model(artifact)) == artifact


def test_model_learns_the_signal_and_reloads_identically(data, artifact):
    _, (yv, xv, pv) = data
    booster = load_booster(artifact)
    scores = predict(booster, xv)
    m = evaluate(yv, scores, oracle_p=pv)
    assert m["auc"] > 0.7 and m["auc_to_oracle"] > 0.9
    # A second load of the same bytes, and a DMatrix path, give identical scores.
    np.testing.assert_array_equal(predict(load_booster(artifact), xv), scores)
    np.testing.assert_array_equal(
        booster.predict(xgb.DMatrix(xv, missing=np.nan)).astype(np.float64), scores
    )


def test_base_score_is_the_explicit_training_base_rate(data, artifact):
    (y, _), _ = data
    cfg = load_booster(artifact).save_config()
    import json

    stored = json.loads(cfg)["learner"]["learner_model_param"]["base_score"]
    assert float(stored.strip("[]")) == pytest.approx(float(y.mean()), rel=1e-6)


def test_feature_importance_finds_informative_features(artifact):
    imp = feature_importance(load_booster(artifact), NAMES)
    assert list(imp) != NAMES and set(imp) == set(NAMES)
    top = list(imp)[:4]
    assert set(top) == {"f_0", "f_1", "f_2", "f_3"}  # features 4..7 are pure noise


def test_corrupt_artifacts_are_refused():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("xgboost-model", "extra"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="exactly one"):
        unpack_model(buf.getvalue())


@pytest.mark.parametrize(
    "auc_value,champ,passed,n_reasons",
    [
        (0.80, None, True, 0),
        (0.60, None, False, 1),  # below floor
        (0.78, 0.80, True, 0),  # worse, within tolerance
        (0.76, 0.80, False, 1),  # worse by more than tolerance
        (0.60, 0.80, False, 2),  # both
        (float("nan"), None, False, 1),
    ],
)
def test_gate(auc_value, champ, passed, n_reasons):
    result = gate({"auc": auc_value}, None if champ is None else {"auc": champ}, 0.65, 0.03)
    assert result.passed is passed and len(result.reasons) == n_reasons


def test_gate_blocks_a_model_trained_on_shuffled_labels(data, artifact):
    (y, x), (yv, xv, _) = data
    rng = np.random.default_rng(0)
    hp = hyperparameters(base_score=float(y.mean()), num_round=20, max_depth=3)
    bad = train_local(to_csv_bytes(rng.permutation(y), x), None, hp)
    good_m = evaluate(yv, predict(load_booster(artifact), xv))
    bad_m = evaluate(yv, predict(load_booster(bad), xv))
    assert abs(bad_m["auc"] - 0.5) < 0.05
    assert not gate(bad_m, good_m, auc_floor=0.55, tolerance=0.01).passed
    assert gate(good_m, bad_m, auc_floor=0.55, tolerance=0.01).passed


def test_local_trainer_resource_and_model_server(tmp_path, data):
    (y, x), (yv, xv, _) = data
    lake = tmp_path / "lake"
    (lake / "training_set/train").mkdir(parents=True)
    (lake / "training_set/validation").mkdir(parents=True)
    # Two part files in the train channel plus a marker file that must be ignored.
    (lake / "training_set/train/part-0.csv").write_bytes(to_csv_bytes(y[:4000], x[:4000]))
    (lake / "training_set/train/part-1.csv").write_bytes(to_csv_bytes(y[4000:], x[4000:]))
    (lake / "training_set/train/_SUCCESS").write_bytes(b"")
    (lake / "training_set/validation/part-0.csv").write_bytes(to_csv_bytes(yv, xv))
    hp = hyperparameters(base_score=float(y.mean()), num_round=30, max_depth=4)
    result = LocalTrainer().train(
        str(lake / "training_set/train"),
        str(lake / "training_set/validation"),
        str(tmp_path / "models-out"),
        hp,
        job_name="job-1",
    )
    assert result.status == "Completed" and result.job_name == "job-1"
    assert result.artifact_uri == str(tmp_path / "models-out/job-1/output/model.tar.gz")
    with open(result.artifact_uri, "rb") as f:
        assert f.read() == result.artifact
    # Same rows, same hyperparameters, straight through the engine: the same model.
    direct = train_local(to_csv_bytes(y, x), to_csv_bytes(yv, xv), hp)
    assert unpack_model(direct) == unpack_model(result.artifact)

    store = Store(str(tmp_path / "root"))
    manifest = FeatureManifest(feature_names=NAMES)
    scores = predict(load_booster(result.artifact), xv)
    registry.register(store, "m1", result.artifact, manifest, evaluate(yv, scores))
    server = LocalModelServer()
    assert server.load_champion(store) is None
    registry.promote(store, "m1")
    assert server.load_champion(store) == "m1"
    np.testing.assert_array_equal(server.predict(xv), scores)
    assert auc(yv, server.predict(xv)) > 0.7


def test_the_gate_at_the_floor_and_at_the_tolerance_exactly():
    """The floor and the tolerance are inclusive: a model exactly at the floor passes, as does
    one worse than the champion by exactly the tolerance (binary fractions: exact sums)."""
    assert gate({"auc": 0.75}, None, 0.75, 0.25).passed
    assert not gate({"auc": 0.75 - 2**-20}, None, 0.75, 0.25).passed
    assert gate({"auc": 0.5}, {"auc": 0.75}, 0.0, 0.25).passed
    assert not gate({"auc": 0.5}, {"auc": 0.75 + 2**-20}, 0.0, 0.25).passed
