"""Benchmark: train the click model in-process on ~1 M rows x 40 features of synthetic clicks.

Measured in the same run: writing and reading the SageMaker CSV, training with the project's
default hyperparameters (the same ones the SageMaker job gets), and two baselines on the same
split: XGBoost's own defaults (10 rounds) and a numpy logistic regression (Newton's method on
mean-imputed features). Reports seconds, rows/s, validation AUC beside the oracle AUC, and ratios.
Writes bench-results/train.json.

Usage: python benchmarks/bench_train.py [--rows N] [--features F] [--rounds R] [--seed S]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import xgboost as xgb

from clicklake.platform.training.artifact import load_booster, pack_model
from clicklake.platform.training.csvformat import read_sagemaker_csv, write_sagemaker_csv
from clicklake.platform.training.hyperparams import hyperparameters
from clicklake.platform.training.local import predict, train_booster
from clicklake.platform.training.metrics import auc, evaluate
from clicklake.platform.training.synthetic import synthetic_clicks

RESULTS = Path(__file__).resolve().parent.parent / "bench-results"


def logistic_regression(x: np.ndarray, y: np.ndarray, iters: int = 8) -> np.ndarray:
    """Newton-Raphson logistic regression with a small ridge; returns weights (bias last)."""
    a = np.hstack([x, np.ones((x.shape[0], 1), x.dtype)]).astype(np.float64)
    w = np.zeros(a.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(a @ w)))
        grad = a.T @ (p - y) + 1e-3 * w
        hess = (a * (p * (1 - p))[:, None]).T @ a + 1e-3 * np.eye(a.shape[1])
        w -= np.linalg.solve(hess, grad)
    return w


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=None, help="override num_round")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    y, x, p_true = synthetic_clicks(args.rows, args.features, seed=args.seed)
    cut = int(len(y) * 0.8)  # the tail is validation, as a time split would make it
    yt, xt, yv, xv, pv = y[:cut], x[:cut], y[cut:], x[cut:], p_true[cut:]
    out: dict = {
        "rows": args.rows,
        "features": args.features,
        "train_rows": cut,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "xgboost": xgb.__version__,
    }

    t0 = time.perf_counter()
    buf = io.BytesIO()
    batch = 100_000
    write_sagemaker_csv(((yt[i : i + batch], xt[i : i + batch]) for i in range(0, cut, batch)), buf)
    out["csv_write_s"] = time.perf_counter() - t0
    out["csv_mb"] = buf.tell() / 2**20
    t0 = time.perf_counter()
    y_back, x_back = read_sagemaker_csv(buf.getvalue(), args.features)
    out["csv_read_s"] = time.perf_counter() - t0
    assert np.array_equal(y_back, yt)
    del buf, y_back, x_back

    hp = hyperparameters(base_score=float(yt.mean()))
    if args.rounds:
        hp["num_round"] = str(args.rounds)
    t0 = time.perf_counter()
    booster, _ = train_booster(xt, yt, hp, xv, yv)
    artifact = pack_model(booster)
    out["train_s"] = time.perf_counter() - t0
    out["num_round"] = int(hp["num_round"])
    scores = predict(load_booster(artifact), xv)
    m = evaluate(yv, scores, oracle_p=pv)
    out.update(
        {f"model_{k}": m[k] for k in ("auc", "oracle_auc", "auc_to_oracle", "log_loss", "ece")}
    )
    out["model_spend_saved"] = m["spend_saved"]

    t0 = time.perf_counter()
    base = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(xt, label=yt, missing=np.nan))
    out["xgb_defaults_s"] = time.perf_counter() - t0
    out["xgb_defaults_auc"] = auc(yv, base.inplace_predict(xv, missing=np.nan))

    t0 = time.perf_counter()
    means = np.nanmean(xt, axis=0)
    w = logistic_regression(np.where(np.isnan(xt), means, xt), yt)
    out["logreg_s"] = time.perf_counter() - t0
    xv_imp = np.where(np.isnan(xv), means, xv)
    out["logreg_auc"] = auc(yv, np.hstack([xv_imp, np.ones((len(yv), 1))]) @ w)

    out["train_rows_per_s"] = cut / out["train_s"]
    out["csv_write_rows_per_s"] = cut / out["csv_write_s"]
    out["csv_read_rows_per_s"] = cut / out["csv_read_s"]
    out["time_vs_xgb_defaults"] = out["train_s"] / out["xgb_defaults_s"]
    out["time_vs_logreg"] = out["train_s"] / out["logreg_s"]
    out["auc_gain_vs_logreg"] = out["model_auc"] - out["logreg_auc"]
    out["auc_gain_vs_xgb_defaults"] = out["model_auc"] - out["xgb_defaults_auc"]

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(out, indent=2))
    for k, v in out.items():
        print(f"{k:28s} {v:.4f}" if isinstance(v, float) else f"{k:28s} {v}")


if __name__ == "__main__":
    main()
