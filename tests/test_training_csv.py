"""SageMaker CSV, feature manifest and hyperparameters: the contract between the training set, the
trainers and the endpoint."""

from __future__ import annotations

import io

import numpy as np
import pytest
import xgboost as xgb

from clicklake.platform.training.csvformat import (
    features_to_csv,
    read_sagemaker_csv,
    to_csv_bytes,
    write_sagemaker_csv,
)
from clicklake.platform.training.hyperparams import DEFAULTS, hyperparameters, to_xgboost
from clicklake.platform.training.images import xgboost_image_uri
from clicklake.platform.training.manifest import FeatureManifest


def test_exact_bytes_label_first_no_header_empty_for_missing():
    y = np.array([1, 0])
    x = np.array([[0.5, np.nan, 3.0], [np.nan, 2.25, np.nan]])
    assert to_csv_bytes(y, x) == b"1,0.5,,3\n0,,2.25,\n"
    assert features_to_csv(x) == b"0.5,,3\n,2.25,\n"


def test_streaming_batches_round_trip_exactly():
    rng = np.random.default_rng(3)
    batches, ys, xs = [], [], []
    for n in (5, 0, 17, 1):
        y = rng.integers(0, 2, n).astype(float)
        x = rng.normal(size=(n, 4)) * 10.0 ** rng.integers(-8, 8, size=(n, 4))
        x[rng.random(x.shape) < 0.2] = np.nan
        batches.append((y, x))
        ys.append(y)
        xs.append(x)
    out = io.BytesIO()
    assert write_sagemaker_csv(iter(batches), out) == 23
    y_back, x_back = read_sagemaker_csv(out.getvalue())
    x_all = np.concatenate(xs).astype(np.float32)
    np.testing.assert_array_equal(y_back, np.concatenate(ys).astype(np.float32))
    np.testing.assert_array_equal(np.isnan(x_back), np.isnan(x_all))
    np.testing.assert_array_equal(np.nan_to_num(x_back), np.nan_to_num(x_all))


def test_empty_fields_are_missing_for_xgboosts_own_csv_parser(tmp_path):
    """The built-in SageMaker container (File mode) loads CSV with XGBoost's text parser."""
    y = np.array([1, 0, 1])
    x = np.array([[0.5, np.nan, 3.0], [np.nan, 2.0, np.nan], [1e-3, 4.0, 5.0]])
    path = tmp_path / "train.csv"
    path.write_bytes(to_csv_bytes(y, x))
    with pytest.warns(UserWarning):  # XGBoost deprecated text input in 3.1; the container uses it
        dm = xgb.DMatrix(f"{path}?format=csv&label_column=0")
    np.testing.assert_array_equal(dm.get_label(), y)
    csr = dm.get_data()
    # Present entries only: NaN fields are absent (= missing), not zeros.
    assert csr.nnz == int((~np.isnan(x)).sum())
    dense = np.full(x.shape, np.nan)
    for i in range(x.shape[0]):
        for k in range(csr.indptr[i], csr.indptr[i + 1]):
            dense[i, csr.indices[k]] = csr.data[k]
    np.testing.assert_array_equal(np.isnan(dense), np.isnan(x))
    np.testing.assert_allclose(np.nan_to_num(dense), np.nan_to_num(x).astype(np.float32))


def test_reader_pads_to_manifest_width_and_concatenates_files():
    a = to_csv_bytes(np.array([1]), np.array([[1.0, np.nan, np.nan]]))
    b = to_csv_bytes(np.array([0]), np.array([[2.0, 3.0, 4.0]]))
    y, x = read_sagemaker_csv([a, b], n_features=3)
    np.testing.assert_array_equal(y, [1, 0])
    np.testing.assert_array_equal(x[1], [2, 3, 4])
    with pytest.raises(ValueError):
        read_sagemaker_csv(b, n_features=2)


@pytest.mark.parametrize(
    "x,msg",
    [
        (np.array([[np.inf]]), "infinite"),
        (np.array([1.0, 2.0]), "2-D"),
        (np.ones((2, 1)), "labels"),
    ],
)
def test_writer_rejects_bad_input(x, msg):
    with pytest.raises(ValueError, match=msg):
        to_csv_bytes(np.array([1.0]), x)


def test_writer_rejects_width_change_and_missing_label():
    with pytest.raises(ValueError, match="features"):
        write_sagemaker_csv(
            [(np.ones(1), np.ones((1, 2))), (np.ones(1), np.ones((1, 3)))], io.BytesIO()
        )
    with pytest.raises(ValueError, match="missing"):
        to_csv_bytes(np.array([np.nan]), np.ones((1, 2)))


def test_manifest_json_round_trip():
    m = FeatureManifest(
        feature_names=["user_ctr_24h", "country", "device"],
        categorical={"country": ["DE", "US"], "device": ["desktop", "mobile"]},
        label_window_s=900,
        source_partitions=["2026-11-24-10:00", "2026-11-24-11:00"],
        train_hours=["2026-11-24-10:00"],
        validation_hours=["2026-11-24-11:00"],
        created_at="2026-11-25T00:00:00.000Z",
        train_rows=10,
        validation_rows=3,
    )
    back = FeatureManifest.from_json(m.to_json())
    assert back == m and back.n_features == 3
    with pytest.raises(ValueError):
        FeatureManifest(feature_names=["a", "a"])
    with pytest.raises(ValueError):
        FeatureManifest(feature_names=["a"], categorical={"b": ["x"]})


def test_hyperparameters_are_sagemaker_strings_with_explicit_base_score():
    hp = hyperparameters(base_score=0.0123, num_round=50, eta=0.3)
    assert all(isinstance(v, str) for v in hp.values())
    assert hp["base_score"] == "0.0123" and hp["num_round"] == "50" and hp["eta"] == "0.3"
    assert hp["objective"] == "binary:logistic"
    params, rounds, esr = to_xgboost(hp)
    assert rounds == 50 and esr is None and params["eval_metric"] == ["auc", "logloss"]
    assert "num_round" not in params
    with pytest.raises(ValueError):
        hyperparameters(base_score=0.0)
    with pytest.raises(ValueError, match="base_score"):
        to_xgboost(dict(DEFAULTS))
    with pytest.raises(ValueError, match="not supported"):
        to_xgboost({**hp, "csv_weights": "1"})


def test_xgboost_image_uri_from_region_map():
    assert (
        xgboost_image_uri("us-east-1")
        == "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:3.0-5"
    )
    assert xgboost_image_uri("eu-west-1", "3.1-1").startswith("141502667606.dkr.ecr.eu-west-1.")
    assert xgboost_image_uri("cn-north-1").endswith(".amazonaws.com.cn/sagemaker-xgboost:3.0-5")
    with pytest.raises(ValueError, match="older"):
        xgboost_image_uri("us-east-1", "1.7-1")
    with pytest.raises(ValueError, match="region"):
        xgboost_image_uri("xx-nowhere-1")
