"""Latest prediction score strictly before t, against a brute-force oracle."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from clicklake.platform.scores import latest_scores

TS = pa.timestamp("ms", tz="UTC")


@settings(max_examples=150, deadline=None)
@given(
    preds=st.lists(st.tuples(st.integers(0, 50), st.sampled_from("uv"),
                             st.floats(0, 1, allow_nan=False)), max_size=10),
    queries=st.lists(st.tuples(st.sampled_from("uvw"), st.integers(0, 60)), min_size=1, max_size=10),
)
def test_latest_score_matches_the_oracle(preds, queries):
    rows = [(f"p{i:02d}", ts, u, s) for i, (ts, u, s) in enumerate(preds)]
    table = pa.table({"prediction_id": [r[0] for r in rows], "ts": pa.array([r[1] for r in rows], TS),
                      "user_id": pa.array([r[2] for r in rows], pa.string()),
                      "model": ["m"] * len(rows), "score": pa.array([r[3] for r in rows], pa.float64())})
    users = np.array([q[0] for q in queries], dtype=object)
    ts = np.array([q[1] for q in queries])
    score, pred_ts = latest_scores(table, users, ts)
    for k, (u, t) in enumerate(queries):
        before = [r for r in rows if r[2] == u and r[1] < t]
        if not before:
            assert math.isnan(score[k]) and math.isnan(pred_ts[k])
        else:
            best = max(before, key=lambda r: (r[1], r[0]))
            assert (score[k], pred_ts[k]) == (best[3], best[1])
