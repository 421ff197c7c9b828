"""Prediction outcomes: named predictions take their impression's label, anonymous ones any click
of the user within the window; per-model metrics match plain definitions."""

from __future__ import annotations

import math

import pyarrow as pa
from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from clicklake.platform.outcomes import join_outcomes, outcome_metrics
from tests.test_labeling import W, _clicks, _imps, oracle

TS = pa.timestamp("ms", tz="UTC")


def _preds(rows):
    ids, ts, users, models, scores, imps = zip(*rows, strict=True) if rows else ([],) * 6
    return pa.table({"prediction_id": pa.array(ids, pa.string()), "ts": pa.array(ts, TS),
                     "user_id": pa.array(users, pa.string()), "model": pa.array(models, pa.string()),
                     "score": pa.array(scores, pa.float64()),
                     "impression_id": pa.array(imps, pa.string())})


def test_named_and_anonymous_predictions():
    t = 10_000_000
    imps = [("i1", t, "u", "c"), ("i2", t + 10, "v", "c")]
    clicks = [("k1", t + W, "i1", "u", "c"), ("k2", t + 20, None, "v", "c")]
    preds = [("p1", t - 5, "u", "m", 0.9, "i1"),   # i1 clicked at exactly +15 min
             ("p2", t - 5, "v", "m", 0.1, "i2"),   # i2 clicked via attribution
             ("p3", t + 19, "v", "m", 0.2, None),  # v clicks 1 ms later
             ("p4", t + 20, "v", "m", 0.2, None),  # ... but not after its own time
             ("p5", t, "w", "m2", 0.3, None)]      # w never clicks
    out = join_outcomes(_preds(preds), _imps(imps), _clicks(clicks))
    assert out["clicked"].to_pylist() == [1, 1, 1, 0, 0]
    metrics = outcome_metrics(out)
    assert metrics["m"]["predictions"] == 4 and metrics["m"]["clicks"] == 3
    assert metrics["m"]["accuracy"] == 0.5  # p1 (0.9, clicked) and p4 (0.2, no click) are right
    assert math.isnan(metrics["m2"]["auc"])  # one class only


def test_a_click_stamped_in_two_hours_counts_for_anonymous_predictions():
    """Copies of one click id stamped in hours H and H+1 are two raw events: the copy inside an
    anonymous prediction's window counts whatever the order of the hours' clicks (keeping the
    first copy by id gave 0, and 1 with the hours swapped), as it does for a named one."""
    h, m = 1_699_999_200_000, 60_000
    hour_h = _clicks([("k1", h + 10 * m, None, "u", "c")])
    hour_next = _clicks([("k1", h + 60 * m + 30_000, None, "u", "c")])
    preds = _preds([("named", h + 50 * m - 20, "u", "m", 0.5, "i1"),
                    ("anon", h + 50 * m - 20, "u", "m", 0.5, None)])
    imps = _imps([("i1", h + 50 * m, "u", "c")])
    for clicks in ([hour_h, hour_next], [hour_next, hour_h]):
        out = join_outcomes(preds, imps, pa.concat_tables(clicks))
        assert out["clicked"].to_pylist() == [1, 1]


@settings(max_examples=examples(100), deadline=None)
@given(
    imps=st.lists(st.tuples(st.integers(0, 3 * W), st.sampled_from(["u1", "u2"])), max_size=8),
    clicks=st.lists(st.tuples(st.integers(0, 3 * W), st.one_of(st.none(), st.integers(0, 9)),
                              st.sampled_from(["u1", "u2"])), max_size=8),
    preds=st.lists(st.tuples(st.integers(0, 3 * W), st.sampled_from(["u1", "u2"]),
                             st.one_of(st.none(), st.integers(0, 9))), max_size=8),
)
def test_outcomes_match_the_oracle(imps, clicks, preds):
    imp_rows = [(f"i{n}", ts, u, "c") for n, (ts, u) in enumerate(imps)]
    click_rows = [(f"k{n}", ts, None if i is None else f"i{i}", u, "c")
                  for n, (ts, i, u) in enumerate(clicks)]
    pred_rows = [(f"p{n}", ts, u, "m", 0.5, None if i is None else f"i{i}")
                 for n, (ts, u, i) in enumerate(preds)]
    labels = oracle(imp_rows, click_rows)
    expected = []
    for _, ts, u, _, _, imp in pred_rows:
        if imp is not None:
            expected.append(labels.get(imp, 0))
        else:
            expected.append(int(any(c[3] == u and ts < c[1] <= ts + W for c in click_rows)))
    got = join_outcomes(_preds(pred_rows), _imps(imp_rows), _clicks(click_rows))
    assert got["clicked"].to_pylist() == expected


def test_label_window_is_refused_outside_the_next_hour(tmp_path, monkeypatch):
    """Hour H reads the clicks of H and H+1: a window over an hour (or not positive) missed
    clicks silently in prediction_outcomes; the run now fails before reading anything. The
    window is the deployment's (an environment variable), not a run's."""
    import dagster as dg
    import pytest

    from clicklake.assets.labeled import prediction_outcomes
    from clicklake.platform.settings import settings
    from clicklake.resources.lake import LakeResource

    for minutes in (90, 0):
        monkeypatch.setenv("CLICKLAKE_LABEL_WINDOW_MINUTES", str(minutes))
        result = dg.materialize(
            [prediction_outcomes], partition_key="2026-11-01-00:00",
            resources={"lake": LakeResource(root=str(tmp_path))}, raise_on_error=False)
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert (f"CLICKLAKE_LABEL_WINDOW_MINUTES={minutes}: must be from 1 to 60"
                in failure.event_specific_data.error.to_string())
    with pytest.raises(ValueError, match="must be from 1 to 60"):
        settings({"CLICKLAKE_LABEL_WINDOW_MINUTES": "61"})


def test_predictions_naming_an_impression_of_no_hour_read_are_counted(tmp_path):
    """A prediction naming an impression outside hour H and H+1 (stamped after an impression of
    the hour before, say) is taken as not clicked: the run counts and says it."""
    import dagster as dg
    import pyarrow.parquet as pq

    from clicklake.assets.labeled import prediction_outcomes
    from clicklake.assets.raw import raw_assets
    from clicklake.platform.raw import raw_key
    from clicklake.platform.simulate import generate
    from clicklake.platform.timeutil import HOUR_MS, hour_partition_key
    from clicklake.resources.lake import LakeResource

    start = 1_795_478_400_000
    lake = LakeResource(root=str(tmp_path))
    store = lake.store()
    generate(store, start_ms=start, hours=3, users=40, seed=3)
    h = start + HOUR_MS
    tags = {"dagster/asset_partition_range_start": hour_partition_key(start),
            "dagster/asset_partition_range_end": hour_partition_key(start + 2 * HOUR_MS)}

    def unseen() -> int:
        result = dg.materialize([prediction_outcomes], partition_key=hour_partition_key(h),
                                resources={"lake": lake}, instance=instance)
        meta = result.get_asset_materialization_events()[0].materialization.metadata
        return meta["predictions_naming_an_unseen_impression"].value

    with dg.instance_for_test() as instance:
        assert dg.materialize(raw_assets, tags=tags, resources={"lake": lake},
                              instance=instance).success
        before = unseen()
        key = raw_key("predictions", h)
        preds = store.read_parquet(key)
        extra = preds.slice(0, 1).set_column(
            preds.schema.get_field_index("impression_id"), "impression_id",
            pa.array(["imp-of-another-hour"], preds.schema.field("impression_id").type))
        extra = extra.set_column(preds.schema.get_field_index("prediction_id"), "prediction_id",
                                 pa.array(["p-extra"], preds.schema.field("prediction_id").type))
        pq.write_table(pa.concat_tables([preds, extra.cast(preds.schema)]), store.path(key))
        assert unseen() == before + 1
