"""Model metrics over numpy arrays: AUC, log loss, PR-AUC, calibration, and spend saved.

Each is exact (no binning or sampling except the documented calibration bins) and is tested against
a brute-force definition: AUC = share of (positive, negative) pairs ranked right, ties counting
half; PR-AUC = average precision over distinct score thresholds (the step-wise sum
sum_k (R_k - R_{k-1}) * P_k, as scikit-learn's `average_precision_score`).
"""

from __future__ import annotations

import math

import numpy as np

LOG_LOSS_EPS = 1e-15
ECE_BINS = 10


def _arrays(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels for {p.size} scores")
    if np.isnan(p).any():
        raise ValueError("scores must not be NaN")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return y, p


def _average_ranks(p: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""
    order = np.argsort(p, kind="mergesort")
    sp = p[order]
    # Start index of each group of equal scores.
    starts = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])
    ends = np.r_[starts[1:], sp.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(p.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney rank sum; NaN when only one class is present."""
    y, p = _arrays(y, p)
    n_pos = float(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = float(_average_ranks(p)[y == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy, scores clipped to [1e-15, 1 - 1e-15]."""
    y, p = _arrays(y, p)
    if y.size == 0:
        return math.nan
    q = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision; NaN without positives."""
    y, p = _arrays(y, p)
    n_pos = y.sum()
    if n_pos == 0:
        return math.nan
    order = np.argsort(-p, kind="mergesort")
    sp, sy = p[order], y[order]
    # Last index of each group of equal scores: a threshold admits a whole tie group at once.
    last = np.flatnonzero(np.r_[sp[1:] != sp[:-1], True])
    tp = np.cumsum(sy)[last]
    n = last + 1
    precision = tp / n
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over `bins` equal-width score bins on [0, 1]: sum_b (n_b / N) |mean(y_b) - mean(p_b)|.

    Bin b holds scores in [b/bins, (b+1)/bins); a score of exactly 1.0 goes to the last bin.
    """
    y, p = _arrays(y, p)
    if y.size == 0:
        return math.nan
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    idx = np.clip(idx, 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    # |mean_y - mean_p| * n_b / N == |sum_y - sum_p| / N
    return float(np.sum(np.abs(sum_y - sum_p)) / y.size) if count.sum() else math.nan


def spend_saved_at_click_retention(
    y: np.ndarray, p: np.ndarray, cost: np.ndarray | None = None, retention: float = 0.95
) -> tuple[float, float]:
    """Share of spend saved by skipping impressions scored below a threshold, keeping clicks.

    The threshold is the highest score t such that impressions with score >= t still hold at least
    `retention` of all clicks; impressions with score < t are skipped. Returns
    (skipped cost / total cost, t). A missing (NaN) cost counts as 0; without a cost array every
    impression costs 1 (the share of impressions skipped). Without clicks, (NaN, NaN); when no
    impression has a cost (an import without costs), (NaN, t): nothing to save is known.
    """
    y, p = _arrays(y, p)
    if not 0.0 < retention <= 1.0:
        raise ValueError("retention must be in (0, 1]")
    c = np.ones_like(p) if cost is None else np.nan_to_num(np.asarray(cost, np.float64), nan=0.0)
    if c.shape != p.shape:
        raise ValueError("cost must have one value per impression")
    total_clicks = y.sum()
    if total_clicks == 0:
        return math.nan, math.nan
    order = np.argsort(-p, kind="mergesort")
    sp, sy, sc = p[order], y[order], c[order]
    last = np.flatnonzero(np.r_[sp[1:] != sp[:-1], True])
    kept_clicks = np.cumsum(sy)[last]  # clicks with score >= each distinct score, descending
    need = retention * total_clicks
    # First (= highest) distinct score whose kept clicks reach the target; tolerance for float sums.
    k = int(np.argmax(kept_clicks >= need - 1e-9 * total_clicks))
    threshold = float(sp[last[k]])
    total_cost = c.sum()
    if total_cost <= 0:
        return math.nan, threshold
    # The skipped rows' own sum: total minus a running sum rounded differently, and a model
    # that skips nothing "saved" -7e-16 (the demo printed -0.0 %).
    skipped_cost = sc[last[k] + 1:].sum()
    return float(skipped_cost / total_cost), threshold


def evaluate(
    y: np.ndarray,
    p: np.ndarray,
    cost: np.ndarray | None = None,
    oracle_p: np.ndarray | None = None,
    retention: float = 0.95,
) -> dict[str, float]:
    """Every model metric in one dict (JSON-ready floats; NaN where undefined).

    `oracle_p` is the generator's true click probability (synthetic data only): it adds the best
    achievable AUC on the same rows and the model's share of it.
    """
    y, p = _arrays(y, p)
    saved, threshold = spend_saved_at_click_retention(y, p, cost, retention)
    out = {
        "rows": float(y.size),
        "base_rate": float(y.mean()) if y.size else math.nan,
        "mean_score": float(p.mean()) if p.size else math.nan,
        "auc": auc(y, p),
        "log_loss": log_loss(y, p),
        "pr_auc": pr_auc(y, p),
        "ece": expected_calibration_error(y, p),
        "spend_saved": saved,
        "skip_threshold": threshold,
        "click_retention": retention,
    }
    if oracle_p is not None:
        oracle = auc(y, oracle_p)
        out["oracle_auc"] = oracle
        out["auc_to_oracle"] = (
            out["auc"] / oracle if oracle and not math.isnan(oracle) else math.nan
        )
    return out
