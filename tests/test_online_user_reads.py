"""The user document's answers "as of t" (`user_state.profile_at`, `campaigns_at`) against
plain reference versions written for clarity (a pass per window, a scan of the events per
campaign): equal on random documents, bit for bit (spend sums add the same floats in the same
order), including documents with a week of hourly tiles and times at every boundary."""

from __future__ import annotations

import random

import orjson
import pytest

from clicklake.platform.online import user_state as us
from clicklake.platform.profiles import WINDOWS_H
from clicklake.platform.timeutil import HOUR_MS

T0 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR_MS


def _max(a, b):
    return b if a is None else a if b is None else max(a, b)


def reference_profile_at(doc: dict, t: int) -> dict:
    f = t - t % HOUR_MS
    imp, clk, spend = doc["n"]
    cur = [0, 0, 0.0]
    last_i = last_c = None
    for e in doc["ev"]:
        ts = e[0]
        if ts >= t:
            if e[1] == 0:
                imp -= 1
                spend -= e[5] or 0.0
            else:
                clk -= 1
        elif ts >= f:
            if e[1] == 0:
                cur[0] += 1
                cur[2] += e[5] or 0.0
                last_i = _max(last_i, ts)
            else:
                cur[1] += 1
                last_c = _max(last_c, ts)
    out = {"first_ts": doc["first"] if doc["first"] is not None and doc["first"] < t else None}
    tiles = [(int(h), v) for h, v in doc["tiles"].items() if int(h) < f]
    if last_i is None:
        last_i = max((v[3] for _, v in tiles if v[3] is not None), default=doc["arch"][0])
    if last_c is None:
        last_c = max((v[4] for _, v in tiles if v[4] is not None), default=doc["arch"][1])
    out["last_impression_ts"], out["last_click_ts"] = last_i, last_c
    out["impressions"], out["clicks"], out["spend"] = imp, clk, spend if imp else 0.0
    for w, width in WINDOWS_H.items():
        lo = f - width * HOUR_MS
        sums = list(cur)
        for h, v in tiles:
            if h >= lo:
                sums[0] += v[0]
                sums[1] += v[1]
                sums[2] += v[2]
        out[f"impressions_{w}"], out[f"clicks_{w}"], out[f"spend_{w}"] = sums
    out["distinct_campaigns"] = sum(1 for c in doc["camps"].values() if c[2] < t)
    out["distinct_domains"] = sum(1 for first in doc["doms"].values() if first < t)
    return out


def reference_campaigns_at(doc: dict, t: int) -> dict:
    return {name: dict(zip(("impressions", "clicks"), us.user_campaign_at(doc, name, t),
                           strict=True))
            for name in sorted(doc["camps"]) if doc["camps"][name][2] < t}


def random_doc(rng: random.Random, hours: int) -> dict:
    """A document shaped as the fold writes it: tiles of the last `hours` hours (in arrival
    order, not sorted), trimmed tiles' times in `arch`, events of the last few hours."""
    doc = us.new_user()
    camps = [f"c{i}" for i in range(rng.randint(1, 6))]
    end = T0 + hours * HOUR_MS
    # events of the last 4 hours, some at the same instant, a few exactly on hour bounds
    for _ in range(rng.randint(0, 25)):
        ts = end - rng.choice([rng.randrange(4 * HOUR_MS), rng.randrange(4) * HOUR_MS])
        c = rng.choice(camps)
        if rng.random() < 0.7:
            cost = rng.choice([None, 0.0, rng.random() * 3, 1e-3 * rng.randrange(1000)])
            doc["ev"].append([ts, 0, f"i{ts}", c, rng.choice([None, "a.com", "b.org"]), cost,
                              "US"])
        else:
            doc["ev"].append([ts, 1, f"k{ts}", c, None, ["US", "a.com"], 0])
    for h in rng.sample(range(hours), k=rng.randint(0, hours)):
        hour = T0 + h * HOUR_MS
        doc["tiles"][str(hour)] = [rng.randint(0, 9), rng.randint(0, 2), rng.random() * 5,
                                   rng.choice([None, hour + rng.randrange(HOUR_MS)]),
                                   rng.choice([None, hour + rng.randrange(HOUR_MS)])]
    for e in doc["ev"]:  # as the fold keeps them: every event's hour has its tile
        hour = e[0] - e[0] % HOUR_MS
        doc["tiles"].setdefault(str(hour), [1, 0, 0.5, hour, None])
    if rng.random() < 0.5:  # times of tiles trimmed before all the others
        lo = min(map(int, doc["tiles"]), default=T0)
        doc["arch"] = [lo - rng.randrange(1, HOUR_MS), rng.choice([None, lo - 5])]
    def first_seen() -> int:  # long ago, recently, or right on a recent hour boundary
        return rng.choice([T0, end - rng.randrange(4 * HOUR_MS), end - rng.randrange(6) * HOUR_MS])

    for c in camps:
        doc["camps"][c] = [rng.randint(0, 50), rng.randint(0, 5), first_seen()]
    for d in ("a.com", "b.org", "c.net")[:rng.randint(0, 3)]:
        doc["doms"][d] = first_seen()
    doc["n"] = [rng.randint(30, 90), rng.randint(5, 20), rng.random() * 100]
    doc["first"] = rng.choice([None, T0 - HOUR_MS])
    # predictions over the last two days, some at one instant (ties go to the greatest id)
    for _ in range(rng.randint(0, 30)):
        ts = end - rng.choice([rng.randrange(48 * HOUR_MS), rng.randrange(48) * HOUR_MS])
        doc["preds"].append([ts, f"p{rng.randrange(5)}", rng.random()])
    return doc


@pytest.mark.parametrize("seed", range(40))
def test_reads_equal_the_reference_at_every_boundary(seed):
    rng = random.Random(seed)
    doc = random_doc(rng, hours=rng.choice([3, 30, 170, 200]))
    end = T0 + 200 * HOUR_MS
    instants = {end, end + 1, end + HOUR_MS}
    for e in doc["ev"]:
        instants |= {e[0] - 1, e[0], e[0] + 1}
    for h in doc["tiles"]:
        for width in WINDOWS_H.values():
            instants |= {int(h) + width * HOUR_MS + d for d in (-1, 0, 1, HOUR_MS)}
    instants |= {T0 + rng.randrange(210 * HOUR_MS) for _ in range(30)}
    for t in sorted(instants):
        got, want = us.profile_at(doc, t), reference_profile_at(doc, t)
        assert repr(got) == repr(want), t  # repr: floats bit for bit, keys in the same order
        assert us.campaigns_at(doc, t) == reference_campaigns_at(doc, t), t


def all_reads(doc: dict, t: int) -> tuple:
    return (us.profile_at(doc, t), us.campaigns_at(doc, t), us.domains_at(doc, t),
            us.latest_prediction_at(doc, t),
            [us.user_campaign_at(doc, c, t) for c in sorted(doc["camps"])])


@pytest.mark.parametrize("seed", range(100))
def test_trimming_keeps_every_answer_at_or_after_the_horizon(seed):
    rng = random.Random(seed)
    doc = random_doc(rng, hours=rng.choice([3, 30, 170, 200]))
    end = T0 + 200 * HOUR_MS
    trimmed = orjson.loads(orjson.dumps(doc))
    # trimmed at horizons moving forward, as a document sees them write after write
    first = end - rng.randrange(1, 6) * HOUR_MS
    horizons = sorted({first, first + rng.randrange(3) * HOUR_MS})
    for horizon in horizons:
        us.trim(trimmed, horizon)
        us.trim(trimmed, horizon)  # a second write at the same horizon changes nothing more
    horizon = horizons[-1]
    instants = {horizon, horizon + 1, end - 1, end, end + 1, end + 25 * HOUR_MS}
    for e in doc["ev"] + doc["preds"]:
        instants |= {max(horizon, e[0] + d) for d in (-1, 0, 1)}
        instants |= {max(horizon, e[0] + 24 * HOUR_MS + d) for d in (-1, 0, 1, HOUR_MS)}
    for t in sorted(t for t in instants if t >= horizon):  # what reads may ask (BeforeHorizon)
        assert repr(all_reads(trimmed, t)) == repr(all_reads(doc, t)), t
    # and the trimmed document is smaller: what it no longer needs is gone
    assert len(orjson.dumps(trimmed)) <= len(orjson.dumps(doc))
    assert all(p[0] >= horizon for p in trimmed["preds"])
    assert all(len(v) == 3 for h, v in trimmed["tiles"].items() if int(h) < horizon)


def test_a_straggler_event_lengthens_a_shortened_tile_again():
    hour = T0 + 10 * HOUR_MS
    doc = us.new_user()
    us.add_impressions({"u": doc}, [("i1", hour + 5, "u", "c", None, None, None, 1.0)], ["US"])
    us.trim(doc, hour + 2 * HOUR_MS)
    assert doc["tiles"][str(hour)] == [1, 0, 1.0] and doc["arch"] == [hour + 5, None]
    us.add_impressions({"u": doc}, [("i2", hour + 9, "u", "c", None, None, None, None)], ["US"])
    us.add_click(doc, hour + 7, "k1", "c", None, ["US", "unknown"], 0)
    assert doc["tiles"][str(hour)] == [2, 1, 1.0, hour + 9, hour + 7]
    p = us.profile_at(doc, hour + 2 * HOUR_MS)
    assert (p["last_impression_ts"], p["last_click_ts"]) == (hour + 9, hour + 7)


def test_lifetime_spend_before_every_impression_is_exactly_zero():
    # The online lifetime spend is the total less the costs at or after t; with no impression
    # before t that left a rounding residue (-1.1e-16 for these costs) where the lake has 0.0.
    t = 1_764_000_000_000 - 1_764_000_000_000 % HOUR_MS
    for seed in range(200):
        rng = random.Random(seed)
        users = {"u1": us.new_user()}
        costs = [round(rng.uniform(0, 3), 4) for _ in range(rng.randint(2, 8))]
        us.add_impressions(users, [(f"i{k}", t + k * 1000, "u1", "c1", "d", "1.2.3.4", "ua", c)
                                   for k, c in enumerate(costs)], ["US"] * len(costs))
        p = us.profile_at(users["u1"], t)
        assert (p["impressions"], p["spend"]) == (0, 0.0), costs


def test_an_online_profile_lists_only_what_came_strictly_before_t(tmp_path):
    """Folded for real: the online profile's domains leave out a domain first seen at exactly t,
    and hold it a millisecond later."""
    from clicklake.platform.online import OnlineFeatures, SqliteState, fold_files
    from clicklake.platform.storage import Store
    from tests.landing_factory import MIN, H, impression, land

    store = Store(str(tmp_path / "lake"))
    state = SqliteState(str(tmp_path / "online.db"))
    land(store, "impressions", H + 50 * MIN, [
        impression("a", H - 30 * MIN, cost=0.5),
        impression("b", H + 10 * MIN, cost=0.25, domain="x.com")], "1")
    fold_files(state, store, store.list("landing/"))
    online = OnlineFeatures(state)
    at = online.profile("u1", H + 10 * MIN)
    assert (at["distinct_domains"], at["domains"]) == (0, [])
    assert online.profile("u1", H + 10 * MIN + 1)["domains"] == ["x.com"]
