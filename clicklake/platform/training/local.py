"""In-process XGBoost training with SageMaker's semantics: same CSV, hyperparameters and artifact."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xgboost as xgb

from clicklake.platform.training.artifact import pack_model
from clicklake.platform.training.csvformat import CsvSource, read_sagemaker_csv
from clicklake.platform.training.hyperparams import to_xgboost


def train_booster(
    x: np.ndarray,
    y: np.ndarray,
    hyperparameters: Mapping[str, str],
    x_valid: np.ndarray | None = None,
    y_valid: np.ndarray | None = None,
) -> tuple[xgb.Booster, dict[str, list[float]]]:
    """Train on arrays (NaN = missing); returns the booster and its per-round evaluation log.

    Feature names are left unset (f0, f1, ...), as in a model trained from SageMaker's headerless
    CSV, so either model scores the same plain rows.
    """
    params, num_round, early_stopping = to_xgboost(hyperparameters)
    dtrain = xgb.DMatrix(x, label=y, missing=np.nan)
    evals = [(dtrain, "train")]
    if x_valid is not None and y_valid is not None and len(y_valid):
        evals.append((xgb.DMatrix(x_valid, label=y_valid, missing=np.nan), "validation"))
    log: dict = {}
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=num_round,
        evals=evals,
        evals_result=log,
        early_stopping_rounds=early_stopping if len(evals) > 1 else None,
        verbose_eval=False,
    )
    if early_stopping and len(evals) > 1:
        # Keep only the trees up to the best round, so every reader of the artifact (which
        # predicts with all trees it holds) sees the model early stopping chose.
        booster = booster[: booster.best_iteration + 1]
    flat = {f"{ds}:{metric}": vals for ds, by in log.items() for metric, vals in by.items()}
    return booster, flat


def train_local(
    train_csv: CsvSource | Sequence[CsvSource],
    validation_csv: CsvSource | Sequence[CsvSource] | None,
    hyperparameters: Mapping[str, str],
    n_features: int | None = None,
) -> bytes:
    """Train from SageMaker CSV channel files; returns model.tar.gz bytes (one `xgboost-model`)."""
    y, x = read_sagemaker_csv(_as_list(train_csv), n_features)
    if not len(y):
        raise ValueError("the train channel holds no rows")
    xv = yv = None
    if validation_csv is not None:
        yv, xv = read_sagemaker_csv(_as_list(validation_csv), x.shape[1])
    booster, _ = train_booster(x, y, hyperparameters, xv, yv)
    return pack_model(booster)


def _as_list(source: CsvSource | Sequence[CsvSource]) -> list[CsvSource]:
    if isinstance(source, list | tuple):
        return list(source)
    return [source]  # type: ignore[list-item]


def predict(booster: xgb.Booster, x: np.ndarray) -> np.ndarray:
    """Click probabilities for rows of features (NaN = missing)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    return booster.inplace_predict(x, missing=np.nan).astype(np.float64)


def feature_importance(booster: xgb.Booster, feature_names: Sequence[str]) -> dict[str, float]:
    """Total gain per feature by manifest name (features never split on get 0), largest first."""
    gains = booster.get_score(importance_type="total_gain")
    out = {}
    for i, name in enumerate(feature_names):
        out[name] = float(gains.get(f"f{i}", gains.get(name, 0.0)))
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))
