"""Who and what the streams are about: users, campaigns and domains, drawn once per seed.

Users have a country, one browser (or crawler) agent, a home IP, a heavy-tailed activity level
(lognormal: most users are seen a few times, a few very often) and a moderate latent click
propensity. A small share are crawlers (bot agents, never or almost never click) and a smaller
share are click farms (very many impressions, very high click rate). Campaign and domain
popularity is Zipf-like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clicklake.platform.simulate import geo
from clicklake.platform.simulate.useragents import BROWSERS, CRAWLERS, FARM_BROWSERS

HUMAN, CRAWLER, CLICK_FARM = 0, 1, 2

CRAWLER_SHARE = 0.01
CLICK_FARM_SHARE = 0.001
CRAWLER_ACTIVITY = 6.0  # times a median human's activity
CLICK_FARM_ACTIVITY = 40.0
ACTIVITY_SIGMA = 1.1
PROPENSITY_SIGMA = 0.2  # moderate: without it the oracle AUC drops only about 1 %

N_CAMPAIGNS = 300
N_DOMAINS = 3000

_WORDS = (
    "daily", "news", "sport", "tech", "game", "recipe", "travel", "auto", "health", "money",
    "weather", "style", "home", "garden", "music", "movie", "photo", "city", "world", "local",
    "smart", "quick", "best", "top", "my", "the", "pro", "hub", "zone", "live", "star", "fan",
    "crypto", "deal", "shop", "pet", "kid", "fit", "food", "book",
)
_SUFFIXES = ("", "s", "ly", "hq", "online", "today", "now", "net", "press", "wire")
_TLDS = (".com", ".com", ".com", ".net", ".org", ".io", ".co.uk", ".de", ".fr", ".in",
         ".com.br", ".jp", ".es", ".it", ".info")

# The user agent index of a crawler is offset past the browsers: one table for both.
UA_STRINGS: tuple[str, ...] = tuple(b.ua for b in BROWSERS) + tuple(c.ua for c in CRAWLERS)


@dataclass
class Population:
    country: np.ndarray  # int index into geo.COUNTRIES, per user
    kind: np.ndarray  # HUMAN | CRAWLER | CLICK_FARM
    agent: np.ndarray  # index into UA_STRINGS
    home_ip: np.ndarray  # uint32
    activity: np.ndarray  # float, relative impression rate
    propensity: np.ndarray  # latent logit offset (humans)
    farm_ctr: np.ndarray  # click probability of a click-farm user (0 for others)
    user_ids: list[str]
    campaign_ids: list[str]
    campaign_popularity: np.ndarray  # probabilities
    campaign_effect: np.ndarray  # logit offsets
    campaign_price: np.ndarray  # CPM multipliers
    domains: list[str]
    domain_popularity: np.ndarray
    domain_effect: np.ndarray
    domain_price: np.ndarray

    @property
    def size(self) -> int:
        return len(self.kind)


def _zipf(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Zipf-like probabilities over n items in a shuffled order (popularity is not the index)."""
    w = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(w / w.sum())


def domain_names(rng: np.random.Generator, n: int) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        a, b = rng.choice(len(_WORDS), 2, replace=False)
        name = (_WORDS[a] + _WORDS[b] + _SUFFIXES[rng.integers(len(_SUFFIXES))]
                + _TLDS[rng.integers(len(_TLDS))])
        if name in seen:  # a collision would merge two domains' statistics
            name = f"{_WORDS[a]}{_WORDS[b]}{len(names)}{_TLDS[rng.integers(len(_TLDS))]}"
        seen.add(name)
        names.append(name)
    return names


def build_population(rng: np.random.Generator, users: int) -> Population:
    if users < 1:
        raise ValueError("users must be at least 1")
    kind = np.full(users, HUMAN, dtype=np.int8)
    n_crawlers = round(users * CRAWLER_SHARE)
    n_farms = max(1, round(users * CLICK_FARM_SHARE)) if users >= 100 else 0
    special = rng.permutation(users)[: n_crawlers + n_farms]
    kind[special[:n_crawlers]] = CRAWLER
    kind[special[n_crawlers:]] = CLICK_FARM

    shares = np.array([c.share for c in geo.COUNTRIES])
    country = rng.choice(len(shares), users, p=shares / shares.sum()).astype(np.int16)
    browser_p = np.array([b.share for b in BROWSERS])
    agent = rng.choice(len(BROWSERS), users, p=browser_p / browser_p.sum()).astype(np.int16)
    home_ip = geo.sample_ips(rng, country)

    farms = np.flatnonzero(kind == CLICK_FARM)
    if len(farms):
        agent[farms] = rng.choice(FARM_BROWSERS, len(farms))
        # Farms sit in a handful of countries and share one /24 per country.
        farm_countries = np.array([geo.COUNTRY_CODES.index(c) for c in ("IN", "ID", "BR")])
        country[farms] = rng.choice(farm_countries, len(farms))
        for c in np.unique(country[farms]):
            members = farms[country[farms] == c]
            subnet = geo.sample_ips(rng, np.array([c]))[0] & np.uint32(0xFFFFFF00)
            home_ip[members] = subnet | rng.integers(1, 255, len(members)).astype(np.uint32)

    crawlers = np.flatnonzero(kind == CRAWLER)
    if len(crawlers):
        crawler_p = np.array([c.share for c in CRAWLERS])
        which = rng.choice(len(CRAWLERS), len(crawlers), p=crawler_p / crawler_p.sum())
        agent[crawlers] = len(BROWSERS) + which
        for w in np.unique(which):
            members = crawlers[which == w]
            spec = CRAWLERS[w]
            country[members] = geo.COUNTRY_CODES.index(spec.country)
            home_ip[members] = geo.sample_in_blocks(rng, *geo.cidr_bases(spec.cidrs), len(members))

    activity = rng.lognormal(0.0, ACTIVITY_SIGMA, users)
    activity[kind == CRAWLER] = CRAWLER_ACTIVITY * rng.lognormal(0.0, 0.3, n_crawlers)
    activity[kind == CLICK_FARM] = CLICK_FARM_ACTIVITY * rng.lognormal(0.0, 0.3, len(farms))
    propensity = rng.normal(0.0, PROPENSITY_SIGMA, users)
    farm_ctr = np.zeros(users)
    farm_ctr[farms] = rng.uniform(0.2, 0.45, len(farms))

    return Population(
        country=country,
        kind=kind,
        agent=agent,
        home_ip=home_ip,
        activity=activity,
        propensity=propensity,
        farm_ctr=farm_ctr,
        user_ids=[f"u{i:07d}" for i in range(users)],
        campaign_ids=[f"cmp-{i:04d}" for i in range(N_CAMPAIGNS)],
        campaign_popularity=_zipf(rng, N_CAMPAIGNS, 0.9),
        campaign_effect=rng.normal(0.0, 0.45, N_CAMPAIGNS),
        campaign_price=rng.lognormal(0.0, 0.35, N_CAMPAIGNS),
        domains=domain_names(rng, N_DOMAINS),
        domain_popularity=_zipf(rng, N_DOMAINS, 1.1),
        domain_effect=rng.normal(0.0, 0.35, N_DOMAINS),
        domain_price=rng.lognormal(0.0, 0.3, N_DOMAINS),
    )
