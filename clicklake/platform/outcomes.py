"""Prediction outcomes: each served prediction joined to what happened, for model monitoring.

A prediction that names its impression is right about that impression: its outcome is the
impression's click label (DESIGN §4.2). A prediction without an impression id asks whether the
user clicked at all within the label window after it: any distinct click of the user with
`ts < click.ts <= ts + window`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.platform.labeling import DEFAULT_LABEL_WINDOW_MS, label_impressions
from clicklake.platform.training.metrics import auc, expected_calibration_error, log_loss


def _ms(col) -> np.ndarray:
    return pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)


def join_outcomes(
    predictions: pa.Table,
    impressions: pa.Table,
    clicks: pa.Table,
    window_ms: int = DEFAULT_LABEL_WINDOW_MS,
) -> pa.Table:
    """`predictions` plus `clicked` (int8). `impressions` must cover the predictions' impressions
    and `clicks` every click up to the end of the predictions' hour + window."""
    pred_ts = _ms(predictions["ts"])
    pred_imp = predictions["impression_id"].to_numpy(zero_copy_only=False)
    pred_user = predictions["user_id"].to_numpy(zero_copy_only=False)
    clicked = np.zeros(predictions.num_rows, dtype=np.int8)

    # Named impressions: the impression's own label, by the labeled dataset's own rule.
    labels = label_impressions(
        impressions.select(["impression_id", "ts", "user_id", "campaign_id"]), clicks, window_ms)
    ids = labels["impression_id"].to_numpy(zero_copy_only=False)
    labeled = set(ids[labels["label"].to_numpy(zero_copy_only=False) == 1])
    named = pd.notna(pred_imp)
    clicked[named] = [1 if i in labeled else 0 for i in pred_imp[named]]

    # Anonymous predictions: any click of the user in (ts, ts + window]. Every copy of a click
    # is looked at: "any" needs no dedup, and copies stamped in two hours are two raw events
    # (keeping one copy by id missed the one inside the window).
    anon = np.flatnonzero(~named)
    if len(anon):
        clk = pd.DataFrame({"user_id": clicks["user_id"].to_numpy(zero_copy_only=False),
                            "ts": _ms(clicks["ts"])})
        by_user = {u: np.sort(g["ts"].to_numpy()) for u, g in clk.groupby("user_id")}
        for i in anon:
            times = by_user.get(pred_user[i])
            if times is not None:
                j = np.searchsorted(times, pred_ts[i], side="right")
                clicked[i] = int(j < len(times) and times[j] <= pred_ts[i] + window_ms)
    return predictions.append_column("clicked", pa.array(clicked))


def outcome_metrics(outcomes: pa.Table) -> dict[str, dict[str, float]]:
    """Per model: predictions, clicks, mean score vs click rate, AUC, log loss, calibration error,
    and accuracy (the share of predictions on the right side of 0.5 — for rare clicks, mostly a
    measure of not over-predicting)."""
    df = outcomes.select(["model", "score", "clicked"]).to_pandas()
    out: dict[str, dict[str, float]] = {}
    for model, g in df.groupby("model", sort=True):
        y, p = g["clicked"].to_numpy(np.float64), g["score"].to_numpy(np.float64)
        out[str(model)] = {
            "predictions": float(len(g)),
            "clicks": float(y.sum()),
            "click_rate": float(y.mean()) if len(g) else math.nan,
            "mean_score": float(p.mean()) if len(g) else math.nan,
            "auc": auc(y, p),
            "log_loss": log_loss(y, p),
            "ece": expected_calibration_error(y, p),
            "accuracy": float(((p >= 0.5) == (y == 1)).mean()) if len(g) else math.nan,
        }
    return out
