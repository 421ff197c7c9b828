"""The user's latest prediction score strictly before an instant (a DESIGN §5 feature input)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def latest_scores(predictions: pa.Table, user_ids: np.ndarray, ts_ms: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """For each (user, t): (score, prediction ts) of the user's latest prediction with ts < t,
    NaN when none. Among predictions at the same instant the greatest prediction_id wins, so the
    answer does not depend on input order."""
    n = len(ts_ms)
    if predictions.num_rows == 0 or n == 0:
        return np.full(n, np.nan), np.full(n, np.nan)
    pred = pd.DataFrame({
        "user_id": predictions["user_id"].to_numpy(zero_copy_only=False),
        "pred_ts": pc.cast(predictions["ts"], pa.int64()).to_numpy(zero_copy_only=False),
        "prediction_id": predictions["prediction_id"].to_numpy(zero_copy_only=False),
        "score": predictions["score"].to_numpy(zero_copy_only=False),
    }).sort_values(["pred_ts", "prediction_id"], kind="stable")
    pred = pred.drop_duplicates(["user_id", "pred_ts"], keep="last")
    q = pd.DataFrame({"user_id": np.asarray(user_ids, dtype=object),
                      "ts": np.asarray(ts_ms, dtype=np.int64), "row": np.arange(n)})
    for frame in (pred, q):
        frame["user_id"] = frame["user_id"].astype("string")
    pred["pred_ts_key"] = pred["pred_ts"]
    m = pd.merge_asof(q.sort_values("ts", kind="stable"), pred, left_on="ts",
                      right_on="pred_ts_key", by="user_id", allow_exact_matches=False,
                      direction="backward").sort_values("row")
    return (m["score"].to_numpy(np.float64, na_value=np.nan),
            m["pred_ts"].to_numpy(np.float64, na_value=np.nan))
