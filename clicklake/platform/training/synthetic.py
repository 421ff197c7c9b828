"""A click-like dataset with a known signal, for tests and benchmarks of the trainer alone.

The true click probability is returned too, so the oracle AUC of any sample is known.
"""

from __future__ import annotations

import numpy as np


def synthetic_clicks(
    n: int, n_features: int = 8, seed: int = 0, missing: float = 0.05, base_logit: float = -3.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels float32, features float32 with NaN holes, true probability float64).

    The logit mixes a linear part, an interaction and a threshold effect over the first features
    (others are noise), so trees have something to find that a linear model partly misses.
    """
    if n_features < 4:
        raise ValueError("need at least 4 features")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    logit = (
        base_logit + 0.9 * x[:, 0] - 0.6 * x[:, 1] + 0.7 * x[:, 2] * x[:, 3] + 1.2 * (x[:, 3] > 1.0)
    )
    p = 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))
    y = (rng.random(n) < p).astype(np.float32)
    if missing > 0:
        x[rng.random(x.shape) < missing] = np.nan
    return y, x, p
