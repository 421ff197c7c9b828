"""The true click model, the click delays, prices, and the imperfect production model's scores.

The click probability of a human impression is a logistic function of things a feature pipeline
can observe (campaign, domain, country, device/OS/browser, hour of day, the user's recent clicks)
plus a moderate latent per-user propensity; so the best model trained on features can approach
the oracle that knows the probability itself. Crawlers almost never click; click farms click a
large, fixed share of what they see.
"""

from __future__ import annotations

import math

import numpy as np

from clicklake.platform.simulate import geo
from clicklake.platform.simulate.population import CLICK_FARM, CRAWLER, Population
from clicklake.platform.simulate.useragents import BROWSERS, CRAWLERS
from clicklake.platform.timeutil import MINUTE_MS

BASE_LOGIT = -4.3  # about 1.4 % before effects; humans land near 2.5 % overall
CRAWLER_P = 1e-4
RECENT_CLICK_BOOST = 1.2  # logit boost right after a click, fading over RECENT_TAU
RECENT_TAU_MS = 20 * MINUTE_MS
LINGERING_BOOST = 0.4  # a smaller boost fading over LINGERING_TAU
LINGERING_TAU_MS = 6 * 60 * MINUTE_MS

# Click delay: most clicks come within a minute or two; a share return much later.
FAST_MEDIAN_S, FAST_SIGMA = 40.0, 1.0
SLOW_SHARE, SLOW_MEDIAN_S, SLOW_SIGMA = 0.08, 45 * 60.0, 0.8
MIN_DELAY_MS = 1000
LABEL_WINDOW_MS = 15 * MINUTE_MS

MIN_CPM, MAX_CPM = 0.5, 20.0  # USD per 1000 impressions

_BROWSER_EFFECT = np.array([b.ctr_effect for b in BROWSERS] + [0.0] * len(CRAWLERS))


def _local_hours(utc_hour: int) -> np.ndarray:
    return np.array([(utc_hour + c.utc_offset) % 24 for c in geo.COUNTRIES])


def traffic_by_country(utc_hour: int) -> np.ndarray:
    """Relative human traffic per country at a UTC hour: low at night, peaking in the evening."""
    h = _local_hours(utc_hour)
    return (1.0 + 0.6 * np.cos(2 * np.pi * (h - 20) / 24)
            + 0.15 * np.cos(4 * np.pi * (h - 13) / 24))


def ctr_time_effect(utc_hour: int) -> np.ndarray:
    """Logit offset per country at a UTC hour: people click more in the late evening."""
    h = _local_hours(utc_hour)
    return 0.3 * np.cos(2 * np.pi * (h - 21) / 24)


_COUNTRY_EFFECT = np.array([c.ctr_effect for c in geo.COUNTRIES])
_COUNTRY_CPM = np.array([c.cpm for c in geo.COUNTRIES])


def base_logit(pop: Population, users: np.ndarray, campaigns: np.ndarray, domains: np.ndarray,
               utc_hour: int) -> np.ndarray:
    """Logit of a human's click probability before the recency effect."""
    country = pop.country[users]
    return (BASE_LOGIT
            + pop.campaign_effect[campaigns]
            + pop.domain_effect[domains]
            + _COUNTRY_EFFECT[country]
            + ctr_time_effect(utc_hour)[country]
            + _BROWSER_EFFECT[pop.agent[users]]
            + pop.propensity[users])


def recency_effect(since_last_click_ms: np.ndarray) -> np.ndarray:
    """Logit boost from the user's latest earlier click (inf when there is none)."""
    dt = np.asarray(since_last_click_ms, dtype=np.float64)
    return (RECENT_CLICK_BOOST * np.exp(-dt / RECENT_TAU_MS)
            + LINGERING_BOOST * np.exp(-dt / LINGERING_TAU_MS))


def click_probability(pop: Population, users: np.ndarray, logit: np.ndarray) -> np.ndarray:
    p = 1.0 / (1.0 + np.exp(-logit))
    kind = pop.kind[users]
    p = np.where(kind == CRAWLER, CRAWLER_P, p)
    return np.where(kind == CLICK_FARM, pop.farm_ctr[users], p)


def click_delays_ms(rng: np.random.Generator, n: int) -> np.ndarray:
    slow = rng.random(n) < SLOW_SHARE
    z = rng.standard_normal(n)
    seconds = np.where(slow, SLOW_MEDIAN_S * np.exp(SLOW_SIGMA * z),
                       FAST_MEDIAN_S * np.exp(FAST_SIGMA * z))
    return np.maximum((seconds * 1000).astype(np.int64), MIN_DELAY_MS)


def _lognormal_cdf(x: float, median: float, sigma: float) -> float:
    return 0.5 * (1 + math.erf(math.log(x / median) / (sigma * math.sqrt(2))))


def within_window_share(window_ms: int = LABEL_WINDOW_MS) -> float:
    """P(click delay <= window): turns the click probability into the label probability."""
    s = window_ms / 1000
    return ((1 - SLOW_SHARE) * _lognormal_cdf(s, FAST_MEDIAN_S, FAST_SIGMA)
            + SLOW_SHARE * _lognormal_cdf(s, SLOW_MEDIAN_S, SLOW_SIGMA))


def costs(rng: np.random.Generator, pop: Population, users: np.ndarray, campaigns: np.ndarray,
          domains: np.ndarray) -> np.ndarray:
    """USD paid per impression: a CPM by country, campaign and domain, with noise."""
    cpm = (_COUNTRY_CPM[pop.country[users]] * pop.campaign_price[campaigns]
           * pop.domain_price[domains] * rng.lognormal(0.0, 0.2, len(users)))
    return np.round(np.clip(cpm, MIN_CPM, MAX_CPM) / 1000.0, 7)


def model_scores(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    """The production model ("ctr-v1"): ranks by the truth, but noisy and over-confident."""
    p = np.clip(p, 1e-9, 1 - 1e-9)
    logit = np.log(p) - np.log1p(-p)
    s = 1.0 / (1.0 + np.exp(-(0.8 * logit + 0.5 + rng.normal(0.0, 0.6, len(p)))))
    return np.round(s, 6)
