"""The generator: hour by hour, impressions → clicks and predictions → landing objects + truth.

Memory stays bounded by one event hour plus the records still waiting in the delivery buffers
(clicks that come later, late re-deliveries). Everything random comes from one seed, and the
objects' uuids too, so equal arguments give byte-identical landing objects under identical keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.platform import landing
from clicklake.platform.simulate import clickmodel, geo, messy, records
from clicklake.platform.simulate.ids import IdSequence
from clicklake.platform.simulate.population import (
    CLICK_FARM,
    CRAWLER,
    HUMAN,
    UA_STRINGS,
    Population,
    build_population,
)
from clicklake.platform.simulate.truth import DEFAULT_PREFIX as TRUTH_PREFIX
from clicklake.platform.simulate.truth import write_truth
from clicklake.platform.simulate.writer import FirehoseWriter
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, MINUTE_MS, to_datetime

IMPRESSIONS_PER_USER_HOUR = 0.42
PREDICTION_SHARE = 0.95  # impressions the production model scored
ROAMING_IP_SHARE = 0.15  # human impressions from another address of the same country
INGEST_MEDIAN_MS, INGEST_SIGMA = 3000.0, 0.8
INGEST_MIN_MS, INGEST_MAX_MS = 1000, 120_000
PREDICTION_LEAD_MS = (2, 40)  # the score is computed a few ms before the ad is shown
NO_CLICK = -(2**62)

Progress = Callable[[int], None]  # called after each hour with that hour's impressions


@dataclass
class GenerateSummary:
    start_ms: int
    hours: int
    users: int
    seed: int
    clean: bool
    events: dict[str, int] = field(default_factory=dict)  # good events per stream
    lines: dict[str, int] = field(default_factory=dict)  # lines written, messy ones included
    files: dict[str, int] = field(default_factory=dict)
    messy: dict[str, dict[str, int]] = field(default_factory=dict)  # stream -> kind -> count
    clicks_beyond_window: int = 0  # clicks more than 15 min after their impression
    truth_files: int = 0
    first_arrival_ms: int | None = None
    last_arrival_ms: int | None = None
    seconds: float = 0.0

    def messy_by_kind(self) -> dict[str, int]:
        return {k: sum(m.get(k, 0) for m in self.messy.values()) for k in messy.KINDS}

    def as_dict(self) -> dict:
        d = asdict(self)
        d["messy_by_kind"] = self.messy_by_kind()
        return d

    to_dict = as_dict


def default_impressions(users: int, hours: int) -> int:
    return round(IMPRESSIONS_PER_USER_HOUR * users * hours)


def generate(
    store: Store,
    *,
    start_ms: int,
    hours: int,
    users: int,
    impressions: int | None = None,
    seed: int = 7,
    clean: bool = False,
    progress: Progress | None = None,
    messy_scale: float = 1.0,
    landing_prefix: str = landing.DEFAULT_PREFIX,
    truth_prefix: str = TRUTH_PREFIX,
) -> GenerateSummary:
    """Write `hours` hours of impressions, clicks and predictions of `users` users from
    `start_ms` (a whole UTC hour) into the landing zone of `store`, and the truth side file."""
    if start_ms % HOUR_MS:
        raise ValueError(f"start must be a whole UTC hour, got {to_datetime(start_ms).isoformat()}")
    if hours < 1:
        raise ValueError("hours must be at least 1")
    if users < 1:
        raise ValueError("users must be at least 1")
    if impressions is None:
        impressions = default_impressions(users, hours)
    if impressions < 0:
        raise ValueError("impressions must not be negative")
    if messy_scale < 0:
        raise ValueError("messy_scale must not be negative")
    t0 = time.perf_counter()

    ss = np.random.SeedSequence(seed)
    pop_ss, plan_ss, ids_ss, writer_ss, hours_ss = ss.spawn(5)
    pop = build_population(np.random.default_rng(pop_ss), users)
    # The ids draw on the start hour too: a run of later hours into the same root (the README
    # adds an hour after the demo) must not repeat the earlier run's ids, which the raw layer
    # would take for duplicates and the oracle's join for the earlier impressions.
    ids_rng = np.random.default_rng([*map(int, ids_ss.generate_state(4)), start_ms // HOUR_MS])
    id_seqs = {
        "impressions": IdSequence(ids_rng, "imp-"),
        "clicks": IdSequence(ids_rng, "clk-"),
        "predictions": IdSequence(ids_rng, "prd-"),
    }
    per_hour = _impressions_per_hour(np.random.default_rng(plan_ss), pop, start_ms, hours,
                                     impressions)
    summary = GenerateSummary(start_ms, hours, users, seed, clean,
                              events=dict.fromkeys(landing.STREAMS, 0),
                              messy={s: dict.fromkeys(messy.kinds_for(s), 0)
                                     for s in landing.STREAMS})
    state = _ClickState(users)
    arrivals_seen: list[int] = []

    # The file names draw on the start hour too, as the ids do: a later run into the same root
    # repeated the earlier run's file uuids, a file's identity in the raw layer's records.
    writer_seeds = [[*map(int, w.generate_state(4)), start_ms // HOUR_MS]
                    for w in writer_ss.spawn(len(landing.STREAMS))]
    with ThreadPoolExecutor(max_workers=2) as pool:
        writers = {
            s: FirehoseWriter(store, s, np.random.default_rng(w), landing_prefix, executor=pool)
            for s, w in zip(landing.STREAMS, writer_seeds, strict=True)
        }
        for i, (hour_ss, n) in enumerate(zip(hours_ss.spawn(hours), per_hour, strict=True)):
            hour_ms = start_ms + i * HOUR_MS
            rng = np.random.default_rng(hour_ss)
            batches, truth = _simulate_hour(rng, pop, state, hour_ms, int(n), id_seqs)
            write_truth(store, hour_ms, truth, truth_prefix)
            summary.truth_files += 1
            delay = pc.subtract(truth["click_ts"], truth["ts"])
            beyond = pc.greater(delay, pa.scalar(clickmodel.LABEL_WINDOW_MS, pa.duration("ms")))
            summary.clicks_beyond_window += int(pc.sum(beyond).as_py() or 0)
            for stream, (recs, ts, arrivals) in batches.items():
                lines = records.encode_all(recs)
                writers[stream].add(arrivals, lines)
                summary.events[stream] += len(lines)
                if len(arrivals):
                    arrivals_seen += [int(arrivals.min()), int(arrivals.max())]
                if not clean:
                    extra = messy.inject(stream, rng, recs, lines, arrivals, ts,
                                         id_seqs[stream], messy_scale)
                    writers[stream].add(extra.arrivals, extra.lines)
                    if len(extra.arrivals):
                        arrivals_seen += [int(extra.arrivals.min()), int(extra.arrivals.max())]
                    for k, c in extra.counts.items():
                        if c:
                            summary.messy[stream][k] += c
            # Nothing simulated later arrives before the next hour starts.
            for w in writers.values():
                w.flush(hour_ms + HOUR_MS)
            if progress is not None:
                progress(int(n))
        for w in writers.values():
            w.close()

    summary.files = {s: len(w.keys) for s, w in writers.items()}
    summary.lines = {s: w.lines_written for s, w in writers.items()}
    if arrivals_seen:
        summary.first_arrival_ms, summary.last_arrival_ms = min(arrivals_seen), max(arrivals_seen)
    summary.seconds = time.perf_counter() - t0
    return summary


def _impressions_per_hour(rng: np.random.Generator, pop: Population, start_ms: int, hours: int,
                          total: int) -> np.ndarray:
    """Split the total over hours in proportion to the expected traffic of each hour."""
    weights = np.array([_user_weights(pop, start_ms + i * HOUR_MS).sum() for i in range(hours)])
    return rng.multinomial(total, weights / weights.sum())


def _user_weights(pop: Population, hour_ms: int) -> np.ndarray:
    """Expected share of an hour's impressions per user: activity × local time of day (humans);
    crawlers and farms run around the clock."""
    utc_hour = (hour_ms // HOUR_MS) % 24
    diurnal = clickmodel.traffic_by_country(int(utc_hour))[pop.country]
    return pop.activity * np.where(pop.kind == HUMAN, diurnal, 1.0)


class _ClickState:
    """Each user's latest click so far, and clicks that happen after the current instant."""

    def __init__(self, users: int):
        self.last_click = np.full(users, NO_CLICK, dtype=np.int64)
        self.future_ts = np.zeros(0, np.int64)
        self.future_user = np.zeros(0, np.int64)

    def advance(self, now_ms: int) -> None:
        due = self.future_ts < now_ms
        if due.any():
            np.maximum.at(self.last_click, self.future_user[due], self.future_ts[due])
            self.future_ts, self.future_user = self.future_ts[~due], self.future_user[~due]

    def add(self, ts: np.ndarray, users: np.ndarray) -> None:
        self.future_ts = np.concatenate([self.future_ts, ts])
        self.future_user = np.concatenate([self.future_user, users])


_UA = np.array(UA_STRINGS, dtype=object)
_COUNTRY = np.array(geo.COUNTRY_CODES, dtype=object)


def _ingest(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds between an event and its arrival in a delivery stream."""
    d = INGEST_MEDIAN_MS * rng.lognormal(0.0, INGEST_SIGMA, n)
    return np.clip(d, INGEST_MIN_MS, INGEST_MAX_MS).astype(np.int64)


def _attributable(users: np.ndarray, campaigns: np.ndarray, ts: np.ndarray, clicked: np.ndarray,
                  click_ts: np.ndarray, hour_end_ms: int) -> np.ndarray:
    """Per click: is its impression the latest impression of the same user and campaign before
    the click? Only such a click may omit `impression_id`, so attributing an id-less click to the
    latest earlier impression finds the impression it really came from. A click after the hour
    cannot be checked against later hours' impressions, so it keeps its id."""
    n = len(ts)
    group = users.astype(np.int64) * (int(campaigns.max(initial=0)) + 1) + campaigns
    order = np.lexsort((ts, group))
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    g, t = group[order], ts[order]
    same_next = np.r_[g[1:] == g[:-1], False]
    same_prev = np.r_[False, g[1:] == g[:-1]]
    next_ts = np.r_[t[1:], np.iinfo(np.int64).max]
    prev_ts = np.r_[np.iinfo(np.int64).min, t[:-1]]
    p = pos[clicked]
    return ((click_ts < hour_end_ms)
            & (~same_next[p] | (next_ts[p] >= click_ts))  # none shown in between
            & (~same_prev[p] | (prev_ts[p] < ts[clicked])))  # nor at the very same instant


def _simulate_hour(rng: np.random.Generator, pop: Population, state: _ClickState, hour_ms: int,
                   n: int, id_seqs: dict[str, IdSequence]):
    """One event hour: records (with event times and arrivals) per stream, and the truth rows."""
    w = _user_weights(pop, hour_ms)
    ts = np.sort(rng.integers(hour_ms, hour_ms + HOUR_MS, n))
    users = rng.choice(pop.size, n, p=w / w.sum())
    campaigns = rng.choice(len(pop.campaign_ids), n, p=pop.campaign_popularity)
    domains = rng.choice(len(pop.domains), n, p=pop.domain_popularity)
    utc_hour = int((hour_ms // HOUR_MS) % 24)
    logit = clickmodel.base_logit(pop, users, campaigns, domains, utc_hour)

    # Minute by minute, so that a click raises the user's click probability from then on.
    p = np.empty(n)
    click_ts = np.full(n, NO_CLICK, dtype=np.int64)
    bounds = np.searchsorted(ts, hour_ms + MINUTE_MS * np.arange(61))
    for k in range(60):
        s, e = int(bounds[k]), int(bounds[k + 1])
        state.advance(hour_ms + k * MINUTE_MS)
        if s == e:
            continue
        u = users[s:e]
        since = (ts[s:e] - state.last_click[u]).astype(np.float64)
        p[s:e] = clickmodel.click_probability(pop, u, logit[s:e]
                                              + clickmodel.recency_effect(since))
        hit = np.flatnonzero(rng.random(e - s) < p[s:e]) + s
        if len(hit):
            click_ts[hit] = ts[hit] + clickmodel.click_delays_ms(rng, len(hit))
            state.add(click_ts[hit], users[hit])

    imp_ids = id_seqs["impressions"].take(n)
    user_ids = np.array(pop.user_ids, dtype=object)[users]
    camp_ids = np.array(pop.campaign_ids, dtype=object)[campaigns]
    kind = pop.kind[users]

    ips = pop.home_ip[users].copy()
    roam = np.flatnonzero((kind == HUMAN) & (rng.random(n) < ROAMING_IP_SHARE))
    ips[roam] = geo.sample_ips(rng, pop.country[users[roam]])
    imp_recs = records.impressions(
        rng, imp_ids, ts, user_ids.tolist(), camp_ids.tolist(),
        np.array(pop.domains, dtype=object)[domains].tolist(), geo.ip_text(ips),
        _UA[pop.agent[users]].tolist(), clickmodel.costs(rng, pop, users, campaigns, domains))
    imp_arrivals = ts + _ingest(rng, n)

    clicked = np.flatnonzero(click_ts != NO_CLICK)
    cts = click_ts[clicked]
    clk_recs = records.clicks(
        rng, id_seqs["clicks"].take(len(clicked)), cts, [imp_ids[i] for i in clicked.tolist()],
        user_ids[clicked].tolist(), camp_ids[clicked].tolist(),
        attributable=_attributable(users, campaigns, ts, clicked, cts, hour_ms + HOUR_MS))
    clk_arrivals = cts + _ingest(rng, len(clicked))

    scored = np.flatnonzero(rng.random(n) < PREDICTION_SHARE)
    pts = ts[scored] - rng.integers(*PREDICTION_LEAD_MS, len(scored), endpoint=True)
    prd_recs = records.predictions(
        rng, id_seqs["predictions"].take(len(scored)), pts, user_ids[scored].tolist(),
        clickmodel.model_scores(rng, p[scored]), [imp_ids[i] for i in scored.tolist()])
    prd_arrivals = pts + _ingest(rng, len(scored))

    truth = pa.table({
        "impression_id": pa.array(imp_ids, pa.string()),
        "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
        "user_id": pa.array(user_ids.tolist(), pa.string()),
        "campaign_id": pa.array(camp_ids.tolist(), pa.string()),
        "country": pa.array(_COUNTRY[pop.country[users]].tolist(), pa.string()),
        "p_click": pa.array(p),
        "p_label": pa.array(p * clickmodel.within_window_share()),
        "clicked": pa.array(click_ts != NO_CLICK),
        "click_ts": pa.array(click_ts, pa.timestamp("ms", tz="UTC"),
                             mask=click_ts == NO_CLICK),
        "is_crawler": pa.array(kind == CRAWLER),
        "is_click_farm": pa.array(kind == CLICK_FARM),
    })
    batches = {
        "impressions": (imp_recs, ts, imp_arrivals),
        "clicks": (clk_recs, cts, clk_arrivals),
        "predictions": (prd_recs, pts, prd_arrivals),
    }
    return batches, truth
