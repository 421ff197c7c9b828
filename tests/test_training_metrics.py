"""Model metrics against brute-force definitions: AUC by pair counting, average precision by
enumerating thresholds, ECE bin by bin, and the spend-saved rule by trying every threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from clicklake.platform.training.metrics import (
    auc,
    evaluate,
    expected_calibration_error,
    log_loss,
    pr_auc,
    spend_saved_at_click_retention,
)


def brute_auc(y, p):
    pos = [s for s, t in zip(p, y, strict=True) if t == 1]
    neg = [s for s, t in zip(p, y, strict=True) if t == 0]
    if not pos or not neg:
        return math.nan
    score = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return score / (len(pos) * len(neg))


def brute_ap(y, p):
    n_pos = sum(y)
    if n_pos == 0:
        return math.nan
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(p), reverse=True):
        sel = [yy for yy, pp in zip(y, p, strict=True) if pp >= t]
        recall, precision = sum(sel) / n_pos, sum(sel) / len(sel)
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def brute_ece(y, p, bins=10):
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, s in enumerate(p) if lo <= s < hi or (b == bins - 1 and s == 1.0)]
        if idx:
            total += (
                len(idx) / len(p) * abs(np.mean([y[i] for i in idx]) - np.mean([p[i] for i in idx]))
            )
    return total


def brute_spend(y, p, cost, retention):
    c = [1.0] * len(p) if cost is None else [0.0 if math.isnan(v) else v for v in cost]
    clicks = sum(y)
    if clicks == 0:
        return math.nan, math.nan
    best = None
    for t in sorted(set(p)):
        kept = sum(yy for yy, pp in zip(y, p, strict=True) if pp >= t)
        if kept >= retention * clicks - 1e-9:
            best = t  # ascending: the last that qualifies is the highest
    skipped = sum(cc for cc, pp in zip(c, p, strict=True) if pp < best)
    return (skipped / sum(c) if sum(c) > 0 else math.nan), best  # no cost known: undefined


labels_scores = st.integers(2, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n),
        # Few distinct values, so ties are frequent.
        st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 0.95, 1.0]), min_size=n, max_size=n),
    )
)


@settings(max_examples=examples(200), deadline=None)
@given(labels_scores)
def test_auc_and_ap_match_brute_force(ys):
    y, p = ys
    for fast, slow in ((auc, brute_auc), (pr_auc, brute_ap)):
        a, b = fast(np.array(y), np.array(p)), slow(y, p)
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


@settings(max_examples=examples(200), deadline=None)
@given(labels_scores)
def test_ece_matches_brute_force(ys):
    y, p = ys
    assert expected_calibration_error(np.array(y), np.array(p)) == pytest.approx(
        brute_ece(y, p), abs=1e-12
    )


@settings(max_examples=examples(200), deadline=None)
@given(
    labels_scores,
    st.sampled_from([0.5, 0.8, 0.95, 1.0]),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_spend_saved_matches_brute_force(ys, retention, with_cost, seed):
    y, p = ys
    cost = None
    if with_cost:
        rng = np.random.default_rng(seed)
        cost = [float(v) for v in rng.integers(0, 5, size=len(y))]
        cost[0] = math.nan  # a missing cost counts as zero
    fast = spend_saved_at_click_retention(
        np.array(y), np.array(p), None if cost is None else np.array(cost), retention
    )
    slow = brute_spend(y, p, cost, retention)
    for a, b in zip(fast, slow, strict=True):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def test_known_answers():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    assert auc(y, p) == 0.75  # 3 of 4 (pos, neg) pairs ranked right
    assert pr_auc(y, p) == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))
    expected_ll = -(np.log(0.9) + np.log(0.6) + np.log(0.35) + np.log(0.8)) / 4
    assert log_loss(y, p) == pytest.approx(expected_ll)
    # Bins: 0.1 -> [0.1,0.2) alone; 0.35 -> [0.3,0.4); 0.4 -> [0.4,0.5); 0.8 -> [0.8,0.9).
    assert expected_calibration_error(y, p) == pytest.approx((0.1 + 0.65 + 0.4 + 0.2) / 4)
    # Keep >= 95 % of 2 clicks = both: threshold 0.35 skips the 0.1 impression only.
    assert spend_saved_at_click_retention(y, p) == (0.25, 0.35)
    cost = np.array([3.0, 1.0, np.nan, 1.0])
    assert spend_saved_at_click_retention(y, p, cost) == (0.6, 0.35)


def test_degenerate_inputs():
    assert math.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))
    assert math.isnan(pr_auc(np.array([0, 0]), np.array([0.2, 0.3])))
    assert all(math.isnan(v) for v in spend_saved_at_click_retention(np.zeros(3), np.ones(3) / 2))
    # No impression with a cost (an import without costs): nothing saved is known, not 0 %.
    saved, t = spend_saved_at_click_retention(np.array([1, 0]), np.array([0.9, 0.1]),
                                              np.array([np.nan, np.nan]))
    assert math.isnan(saved) and t == 0.9
    with pytest.raises(ValueError):
        auc(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError):
        auc(np.array([0, 1]), np.array([0.1, np.nan]))


def test_evaluate_with_oracle():
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.2, 0.6, 0.5, 0.9, 0.1, 0.3])
    oracle = np.array([0.1, 0.2, 0.8, 0.9, 0.1, 0.7])  # ranks perfectly
    m = evaluate(y, p, oracle_p=oracle)
    assert m["auc"] == pytest.approx(brute_auc(list(y), list(p)))
    assert m["oracle_auc"] == 1.0
    assert m["auc_to_oracle"] == pytest.approx(m["auc"])
    assert m["base_rate"] == 0.5 and m["rows"] == 6
    assert set(m) >= {"log_loss", "pr_auc", "ece", "spend_saved", "skip_threshold"}


def test_a_model_that_skips_nothing_saves_exactly_nothing():
    # One score for every row keeps every impression: the saving was total minus a running sum
    # rounded another way, -7e-16, which the demo printed as "-0.0 %".
    rng = np.random.default_rng(3)
    cost = rng.random(1000) * 0.01
    y = (rng.random(1000) < 0.1).astype(np.int64)
    saved, threshold = spend_saved_at_click_retention(y, np.full(1000, 0.2), cost, 0.95)
    assert saved == 0.0 and threshold == 0.2
