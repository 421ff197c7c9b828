"""The one feature definition (DESIGN §4.4, §5). The labeled dataset and the REST API both call
`compute_features`, so a model sees in production exactly what it was trained on.

Inputs are plain columns aligned per impression (numpy arrays; one row for a single online
request), gathered by the caller from the state as of just before the impression:

    ts_ms                              the impression time (epoch ms)
    user_{impressions,clicks,spend}_{life,1h,24h,7d}   user counters, sawtooth windows (§4.3)
    user_last_impression_ms, user_last_click_ms        NaN when never
    user_distinct_campaigns, user_distinct_domains
    uc_impressions, uc_clicks          this user on this impression's campaign, lifetime
    {country,campaign,domain,global}_{impressions,clicks}_24h  segment counters over 24 h
    country, device_type, os, browser  strings from enrichment ("unknown" when unknown)
    is_crawler                         bool
    pred_score, pred_ts_ms             the user's latest prediction before ts (NaN when none)

Output: a dict of feature name → float64 array (NaN = missing) for numeric features, and
strings for categorical ones; `encode` turns categoricals into vocabulary codes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

WINDOWS = ("life", "1h", "24h", "7d")
PRIOR_CTR = 0.02  # smoothing prior for CTRs: a user with no history looks like an average user
PRIOR_STRENGTH = 20.0
PREDICTION_MAX_AGE_MS = 24 * 3_600_000  # an older score says little about the user now

USER_COUNTERS = tuple(f"user_{m}_{w}" for w in WINDOWS for m in ("impressions", "clicks", "spend"))
SEGMENTS = ("country", "campaign", "domain", "global")
INPUT_COLUMNS = (
    "ts_ms",
    *USER_COUNTERS,
    "user_last_impression_ms",
    "user_last_click_ms",
    "user_distinct_campaigns",
    "user_distinct_domains",
    "uc_impressions",
    "uc_clicks",
    *(f"{s}_{m}_24h" for s in SEGMENTS for m in ("impressions", "clicks")),
    "country",
    "device_type",
    "os",
    "browser",
    "is_crawler",
    "pred_score",
    "pred_ts_ms",
)
CATEGORICAL = ("country", "device_type", "os", "browser")
NUMERIC = (
    *(f"user_{m}_{w}" for w in WINDOWS for m in ("impressions", "clicks", "spend")),
    *(f"user_ctr_{w}" for w in WINDOWS),
    "secs_since_last_impression",
    "secs_since_last_click",
    "user_distinct_campaigns",
    "user_distinct_domains",
    "uc_impressions",
    "uc_clicks",
    "uc_ctr",
    "country_ctr_24h",
    "campaign_ctr_24h",
    "domain_ctr_24h",
    "global_ctr_24h",
    "country_lift_24h",
    "campaign_lift_24h",
    "domain_lift_24h",
    "is_crawler",
    "hour_of_day",
    "day_of_week",
    "pred_score",
    "pred_age_s",
)
FEATURE_NAMES = (*NUMERIC, *CATEGORICAL)


def smoothed_ctr(clicks: np.ndarray, impressions: np.ndarray) -> np.ndarray:
    return (clicks + PRIOR_CTR * PRIOR_STRENGTH) / (impressions + PRIOR_STRENGTH)


def compute_features(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feature vector of every row of `inputs` (see the module docstring for the columns)."""
    missing = [c for c in INPUT_COLUMNS if c not in inputs]
    if missing:
        raise KeyError(f"feature inputs lack {missing}")
    f = lambda name: np.asarray(inputs[name], dtype=np.float64)
    ts = np.asarray(inputs["ts_ms"], dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for w in WINDOWS:
        for m in ("impressions", "clicks", "spend"):
            out[f"user_{m}_{w}"] = f(f"user_{m}_{w}")
        out[f"user_ctr_{w}"] = smoothed_ctr(f(f"user_clicks_{w}"), f(f"user_impressions_{w}"))
    out["secs_since_last_impression"] = (ts - f("user_last_impression_ms")) / 1000.0
    out["secs_since_last_click"] = (ts - f("user_last_click_ms")) / 1000.0
    out["user_distinct_campaigns"] = f("user_distinct_campaigns")
    out["user_distinct_domains"] = f("user_distinct_domains")
    out["uc_impressions"] = f("uc_impressions")
    out["uc_clicks"] = f("uc_clicks")
    out["uc_ctr"] = smoothed_ctr(out["uc_clicks"], out["uc_impressions"])
    for s in SEGMENTS:
        out[f"{s}_ctr_24h"] = smoothed_ctr(f(f"{s}_clicks_24h"), f(f"{s}_impressions_24h"))
    out["country_lift_24h"] = out["country_ctr_24h"] / out["global_ctr_24h"]
    out["campaign_lift_24h"] = out["campaign_ctr_24h"] / out["global_ctr_24h"]
    out["domain_lift_24h"] = out["domain_ctr_24h"] / out["global_ctr_24h"]
    out["is_crawler"] = np.asarray(inputs["is_crawler"], dtype=bool).astype(np.float64)
    seconds = ts // 1000
    out["hour_of_day"] = ((seconds // 3600) % 24).astype(np.float64)
    out["day_of_week"] = (((seconds // 86400) + 3) % 7).astype(np.float64)  # 1970-01-01: Thu; Mon=0
    age = ts - f("pred_ts_ms")
    fresh = age <= PREDICTION_MAX_AGE_MS  # NaN compares False: no score
    out["pred_score"] = np.where(fresh, f("pred_score"), np.nan)
    out["pred_age_s"] = np.where(fresh, age / 1000.0, np.nan)
    for c in CATEGORICAL:
        out[c] = np.asarray(inputs[c], dtype=object)
    return {name: out[name] for name in FEATURE_NAMES}


def build_vocabulary(values: Sequence[str] | np.ndarray, min_count: int = 1) -> list[str]:
    """Sorted distinct values seen at least `min_count` times. Code 0 is reserved for anything not
    in the vocabulary, so codes are 1 + position."""
    uniq, counts = np.unique(np.asarray(values, dtype=object).astype(str), return_counts=True)
    return sorted(str(v) for v, n in zip(uniq, counts, strict=True) if n >= min_count)


def encode(features: Mapping[str, np.ndarray], vocabularies: Mapping[str, Sequence[str]]
           ) -> np.ndarray:
    """The numeric matrix (rows × FEATURE_NAMES) a model consumes: categoricals as vocabulary
    codes (0 = out of vocabulary), numerics as they are, NaN for missing."""
    n = len(next(iter(features.values())))
    matrix = np.empty((n, len(FEATURE_NAMES)), dtype=np.float64)
    for j, name in enumerate(FEATURE_NAMES):
        if name in CATEGORICAL:
            matrix[:, j] = vocabulary_codes(features[name], vocabularies.get(name, ()))
        else:
            matrix[:, j] = features[name]
    return matrix


def vocabulary_codes(values: Sequence[str] | np.ndarray, vocabulary: Sequence[str]) -> np.ndarray:
    """1 + the position of each value in the sorted `vocabulary`, 0 when absent (vectorised)."""
    vals = np.asarray(values, dtype=object).astype(str)
    voc = np.asarray(vocabulary, dtype=str)
    if len(voc) == 0:
        return np.zeros(len(vals), dtype=np.int64)
    if len(voc) > 1 and not (voc[:-1] < voc[1:]).all():
        raise ValueError("a vocabulary must be sorted and distinct")
    pos = np.searchsorted(voc, vals)
    hit = voc[np.minimum(pos, len(voc) - 1)] == vals
    return np.where(hit, pos + 1, 0)
