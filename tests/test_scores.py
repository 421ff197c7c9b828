"""Latest prediction score strictly before t, against a brute-force oracle."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from clicklake.platform import hashtables
from clicklake.platform.scores import latest_scores

TS = pa.timestamp("ms", tz="UTC")


@settings(max_examples=examples(150), deadline=None)
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


def test_latest_score_matches_the_oracle_without_the_c_walk(monkeypatch):
    """The numpy sort and search that runs without the C extension (no compiler at install)."""
    monkeypatch.setattr(hashtables, "NATIVE", False)
    test_latest_score_matches_the_oracle()


H = 3_600_000


def _write_hours(store, rows: list[tuple[str, int, str, float]]) -> None:
    from clicklake.platform.raw import raw_key

    for h in sorted({r[1] // H for r in rows}):
        part = [r for r in rows if r[1] // H == h]
        store.write_parquet(raw_key("predictions", h * H), pa.table({
            "prediction_id": pa.array([r[0] for r in part], pa.string()),
            "ts": pa.array([r[1] for r in part], TS),
            "user_id": pa.array([r[2] for r in part], pa.string()),
            "score": pa.array([r[3] for r in part], pa.float64())}))


def test_latest_scores_lake_known_answers(tmp_path):
    """u's latest is two hours back, behind v's in the hour before; w's two predictions at one
    instant are stored greatest id first, and the greatest id wins; x has none."""
    from clicklake.platform.scores import latest_scores_lake
    from clicklake.platform.storage import Store

    store = Store(str(tmp_path))
    _write_hours(store, [("p0", 10, "u", 0.1), ("p1", 20, "z", 0.3),
                         ("p2", H + 10, "v", 0.5), ("q3", H + 20, "w", 0.7),
                         ("p3", H + 20, "w", 0.2), ("p4", 2 * H + 5, "u", 0.9)])
    score, when = latest_scores_lake(store, pa.array(["u", "v", "w", "x", "u"]),
                                     np.array([2 * H, 2 * H, 2 * H, 3 * H + 1, 2 * H + 6]), 2 * H)
    assert score[:3].tolist() == [0.1, 0.5, 0.7] and when[:3].tolist() == [10, H + 10, H + 20]
    assert math.isnan(score[3]) and math.isnan(when[3])
    assert (score[4], when[4]) == (0.9, 2 * H + 5)


@settings(max_examples=examples(150), deadline=None)
@given(
    preds=st.lists(st.tuples(st.integers(0, 5 * H - 1), st.sampled_from("uvwx"),
                             st.sampled_from([0.1, 0.5, 0.9])), max_size=40),
    ties=st.lists(st.tuples(st.integers(0, 39), st.sampled_from([0.2, 0.7])), max_size=6),
    queries=st.lists(st.tuples(st.sampled_from("uvwxy"), st.integers(0, 6 * H)), min_size=1,
                     max_size=30),
    missing=st.sets(st.integers(0, 5), max_size=2),
    max_age_h=st.integers(0, 6),
)
def test_latest_scores_lake_matches_the_oracle(tmp_path_factory, preds, ties, queries, missing,
                                               max_age_h):
    """Hour by hour, newest first, over raw Parquet hours (some missing, same-instant ties):
    the latest score before t among the hours it reads, and within max age always exact."""
    from clicklake.platform.scores import latest_scores_lake
    from clicklake.platform.storage import Store

    rows = [(f"p{i:02d}", ts, u, s) for i, (ts, u, s) in enumerate(preds)]
    rows += [(f"q{j:02d}", rows[i][1], rows[i][2], s) for j, (i, s) in enumerate(ties)
             if i < len(rows)]  # another prediction of the same user at the same instant
    rows = [r for r in rows if r[1] // H not in missing]
    store = Store(str(tmp_path_factory.mktemp("lake")))
    _write_hours(store, rows[::-1])
    max_age = max_age_h * H
    score, pred_ts = latest_scores_lake(store, pa.array([q[0] for q in queries], pa.string()),
                                        np.array([q[1] for q in queries]), max_age)
    t_min = min(q[1] for q in queries)
    first_hour = (t_min - t_min % H - max_age) // H
    for k, (u, t) in enumerate(queries):
        before = [r for r in rows if r[2] == u and r[1] < t and r[1] // H >= first_hour]
        if not before:
            assert math.isnan(score[k]) and math.isnan(pred_ts[k])
        else:
            best = max(before, key=lambda r: (r[1], r[0]))
            assert (score[k], pred_ts[k]) == (best[3], best[1]), (u, t)
