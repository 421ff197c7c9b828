"""Leakage edge cases of the labeled dataset, by hand (DESIGN §4.1, §4.2, §4.5, §4.6).

Each case lands a few events as Firehose files, builds the lake with the platform functions and
labels the hours with `build_labeled_hour`. Every row must equal the brute-force oracle
(`feature_oracle`) exactly, and the values the case is about are also pinned literally:

- an event at exactly t is not history (an impression, a click or a prediction at the same ms);
- a click at t + 15 min labels, one at t + 15 min + 1 ms does not, across the hour boundary too;
- a click before (or at) its impression never labels it;
- an impression re-delivered in later files counts once, in features and in rows; a click id
  stamped in two different hours is two events to the raw layer, so to labels as well;
- an event landed beyond the allowed lateness is in neither features nor labels;
- a click without impression id goes to the latest earlier impression of the same user and
  campaign, even when that impression is in the next hour.
"""

from __future__ import annotations

import math

import feature_oracle as fo
import pytest

from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, MINUTE_MS, parse_instant

H = parse_instant("2026-11-25T13:00:00Z")
W = 15 * MINUTE_MS
LATENESS = HOUR_MS
US, JP = "8.8.8.8", "133.242.0.1"
PRIOR = 0.02 * 20  # smoothed CTR = (clicks + PRIOR) / (impressions + 20)


def imp(iid: str, ts: int, user: str = "u1", camp: str = "c1", arrival: int | None = None,
        **extra) -> tuple[str, dict, int]:
    ev = {"impression_id": iid, "ts": ts, "user_id": user, "campaign_id": camp, **extra}
    return "impressions", ev, ts if arrival is None else arrival


def clk(cid: str, ts: int, iid: str | None, user: str = "u1", camp: str = "c1",
        arrival: int | None = None) -> tuple[str, dict, int]:
    ev = {"click_id": cid, "ts": ts, "impression_id": iid, "user_id": user, "campaign_id": camp}
    return "clicks", ev, ts if arrival is None else arrival


def pred(pid: str, ts: int, score: float, user: str = "u1") -> tuple[str, dict, int]:
    ev = {"prediction_id": pid, "ts": ts, "user_id": user, "model": "m", "score": score}
    return "predictions", ev, ts


def missing(v) -> bool:
    """A missing numeric feature: NaN in `compute_features`, null in the labeled table."""
    return v is None or math.isnan(v)


@pytest.fixture
def labeled(tmp_path):
    """Land `deliveries`, build hours H .. H + n, label H .. H + n - 1; check every row against
    the oracle and return the rows by impression id."""

    calls = []

    def run(deliveries, n_hours: int = 2) -> dict[str, dict]:
        calls.append(None)
        store = Store(str(tmp_path / f"lake{len(calls)}"))  # a fresh lake per call
        fo.land(store, deliveries)
        hours = [H + k * HOUR_MS for k in range(n_hours + 1)]
        fo.build_lake(store, hours)
        bad = fo.check_hours(store, hours[:-1], fo.kept_by_raw_rules(deliveries, LATENESS))
        assert not bad, "\n".join(bad)
        rows = [r for h in hours[:-1] for r in fo.labeled_table_rows(store, h)]
        by_id = {r["impression_id"]: r for r in rows}
        assert len(by_id) == len(rows)
        return by_id

    return run


def test_an_event_at_exactly_t_is_not_history(labeled):
    t = H + 20 * MINUTE_MS
    rows = labeled([
        imp("i0", t - 1, domain="a.com", ip=US, cost=0.25),
        imp("i1", t, domain="b.org", ip=US, cost=1.5),
        imp("i2", t, camp="c2", domain="c.net", ip=US, cost=1.5),  # same user, same ms
        clk("k1", t, "i0"),  # a click at exactly t
        pred("p0", t - 1, 0.5),
        pred("p1", t, 1.0),  # a score at exactly t
        imp("i3", t + 1, ip=US),
    ])
    for iid in ("i1", "i2"):
        r = rows[iid]
        assert r["user_impressions_life"] == r["user_impressions_1h"] == 1.0, iid
        assert r["user_spend_life"] == 0.25
        assert r["user_clicks_life"] == 0.0 and missing(r["secs_since_last_click"])
        assert r["secs_since_last_impression"] == 0.001
        assert r["user_distinct_campaigns"] == r["user_distinct_domains"] == 1.0
        assert r["global_ctr_24h"] == PRIOR / 21 and r["country_ctr_24h"] == PRIOR / 21
        assert (r["pred_score"], r["pred_age_s"]) == (0.5, 0.001)
    assert rows["i1"]["uc_impressions"] == 1.0 and rows["i2"]["uc_impressions"] == 0.0
    # One millisecond later all of them are history.
    r = rows["i3"]
    assert (r["user_impressions_life"], r["user_clicks_life"], r["user_spend_life"]) == (3, 1, 3.25)
    assert r["secs_since_last_click"] == 0.001 and r["uc_clicks"] == 1.0
    assert r["user_distinct_campaigns"] == 2.0 and r["user_distinct_domains"] == 3.0
    assert r["global_ctr_24h"] == (1 + PRIOR) / 23
    assert (r["pred_score"], r["pred_age_s"]) == (1.0, 0.001)
    # The click at t labels neither i1 nor i2 (nor, being for i0, anything but i0).
    assert [rows[i]["label"] for i in ("i0", "i1", "i2")] == [1, 0, 0]


@pytest.mark.parametrize("minutes_into_hour", [10, 50])  # the click in the same or next hour
def test_the_label_window_is_closed_at_15_minutes(labeled, minutes_into_hour):
    t = H + minutes_into_hour * MINUTE_MS
    rows = labeled([
        imp("a", t, user="u1"), clk("ka", t + W, "a", user="u1"),
        imp("b", t, user="u2"), clk("kb", t + W + 1, "b", user="u2"),
        imp("c", t, user="u3"), clk("kc", t + W, None, user="u3"),  # attributed by campaign
        imp("d", t, user="u4"), clk("kd", t + W + 1, None, user="u4"),
    ])
    got = {i: (rows[i]["label"], rows[i]["first_click_delay_ms"]) for i in "abcd"}
    assert got == {"a": (1, W), "b": (0, None), "c": (1, W), "d": (0, None)}


def test_a_click_before_its_impression_never_labels_it(labeled):
    t = H + 30 * MINUTE_MS
    nxt = H + HOUR_MS  # an impression exactly on the next hour, its click 1 ms before it
    rows = labeled([
        imp("a", t, user="u1"), clk("ka", t - 1, "a", user="u1"),
        imp("b", t, user="u2"), clk("kb", t, "b", user="u2"),  # at the same ms: delay 0
        imp("c", t, user="u3"), clk("kc", t - 1, None, user="u3"),  # no earlier impression
        imp("d", nxt, user="u4"), clk("kd", nxt - 1, "d", user="u4"),
    ])
    assert {i: rows[i]["label"] for i in "abcd"} == {"a": 0, "b": 0, "c": 0, "d": 0}
    # The early clicks are history of later impressions, never labels.
    rows = labeled([imp("a", t), clk("ka", t - 1, "a"), imp("e", t + 1)])
    assert rows["a"]["label"] == 0 and rows["a"]["user_clicks_life"] == 1.0
    assert rows["e"]["uc_clicks"] == 1.0


def test_a_redelivered_impression_counts_once(labeled):
    t = H + 40 * MINUTE_MS
    end = H + HOUR_MS
    rows = labeled([
        imp("a", t, cost=0.5, ip=JP),
        imp("a", t, cost=0.5, ip=JP, arrival=t + 10 * MINUTE_MS),  # a later file
        imp("a", t, cost=0.5, ip=JP, arrival=end + LATENESS - 1000),  # the last accepted second
        clk("k", t + MINUTE_MS, "a"),
        clk("k", t + MINUTE_MS, "a", arrival=end + 30 * MINUTE_MS),
        imp("b", end + 5 * MINUTE_MS, ip=JP),
    ])
    assert sorted(rows) == ["a", "b"]
    assert (rows["a"]["label"], rows["a"]["first_click_delay_ms"]) == (1, MINUTE_MS)
    r = rows["b"]
    assert (r["user_impressions_life"], r["user_clicks_life"], r["user_spend_life"]) == (1, 1, 0.5)
    assert r["uc_impressions"] == r["uc_clicks"] == 1.0
    assert r["global_ctr_24h"] == r["country_ctr_24h"] == (1 + PRIOR) / 21


def test_a_click_id_in_two_hours_is_two_clicks_for_labels_as_for_features(labeled):
    """The raw layer keeps an id once per event hour; labels must not drop the second event."""
    t = H + 50 * MINUTE_MS
    rows = labeled([
        imp("i", t), clk("k", t - 1, "i"), clk("k", H + HOUR_MS + MINUTE_MS, "i"),
        imp("j", H + HOUR_MS + 2 * MINUTE_MS),
    ])
    assert rows["j"]["user_clicks_life"] == 2.0
    assert (rows["i"]["label"], rows["i"]["first_click_delay_ms"]) == (1, 11 * MINUTE_MS)


def test_an_event_beyond_the_allowed_lateness_is_neither_feature_nor_label(labeled):
    t = H + 40 * MINUTE_MS
    too_late = H + HOUR_MS + LATENESS  # the first instant no longer accepted for hour H
    just_in = too_late - 1000
    rows = labeled([
        imp("late", t, user="u1", arrival=too_late),
        imp("a", t + 1, user="u1"),
        clk("ka", t + 2, "a", user="u1", arrival=too_late),
        imp("x", t, user="u2", arrival=just_in),
        imp("y", t + 1, user="u2"),
        clk("ky", t + 2, "y", user="u2", arrival=just_in),
        imp("later1", H + HOUR_MS + 1, user="u1"),
        imp("later2", H + HOUR_MS + 1, user="u2"),
    ])
    assert "late" not in rows and "x" in rows
    assert (rows["a"]["user_impressions_life"], rows["a"]["label"]) == (0.0, 0)
    assert (rows["y"]["user_impressions_life"], rows["y"]["label"]) == (1.0, 1)
    assert (rows["later1"]["user_impressions_life"], rows["later1"]["user_clicks_life"]) == (1, 0)
    assert (rows["later2"]["user_impressions_life"], rows["later2"]["user_clicks_life"]) == (2, 1)


def test_a_click_without_impression_id_goes_to_the_latest_earlier_impression(labeled):
    edge = H + HOUR_MS
    rows = labeled([
        # The latest earlier impression of (u1, c1) is in the NEXT hour: it takes the click.
        imp("a1", edge - 2 * MINUTE_MS), imp("b1", edge + MINUTE_MS),
        imp("c1", edge + 2 * MINUTE_MS, camp="c2"),  # later, but another campaign
        clk("k1", edge + 3 * MINUTE_MS, None),
        # Without that later impression, the one before the boundary gets it.
        imp("a2", edge - 2 * MINUTE_MS, user="u2"), clk("k2", edge + 3 * MINUTE_MS, None, user="u2"),
        # An impression at the click's own ms is not earlier than it.
        imp("a3", H + 50 * MINUTE_MS, user="u3"), imp("b3", H + 55 * MINUTE_MS, user="u3"),
        clk("k3", H + 55 * MINUTE_MS, None, user="u3"),
        # Equal times: the greatest impression id, so the answer does not depend on input order.
        imp("x2", H + 10 * MINUTE_MS, user="u4"), imp("x1", H + 10 * MINUTE_MS, user="u4"),
        clk("k4", H + 11 * MINUTE_MS, None, user="u4"),
    ])
    got = {i: (rows[i]["label"], rows[i]["first_click_delay_ms"])
           for i in ("a1", "b1", "c1", "a2", "a3", "b3", "x1", "x2")}
    assert got == {"a1": (0, None), "b1": (1, 2 * MINUTE_MS), "c1": (0, None),
                   "a2": (1, 5 * MINUTE_MS), "a3": (1, 5 * MINUTE_MS), "b3": (0, None),
                   "x1": (0, None), "x2": (1, MINUTE_MS)}


def test_sawtooth_windows_and_the_age_of_a_score(labeled):
    floor_t = H + 25 * HOUR_MS
    t = floor_t + 30 * MINUTE_MS
    day_start = floor_t - 24 * HOUR_MS  # the 24 h window at t is [day_start, t)
    rows = labeled([
        imp("old", day_start - 1, ip=JP), imp("day", day_start, ip=JP),
        clk("k_old", floor_t - HOUR_MS - 1, "day"), clk("k_hour", floor_t - HOUR_MS, "day"),
        pred("p_fresh", t - 24 * HOUR_MS, 0.25),  # exactly 24 h old: still fresh
        imp("t", t, ip=JP),
        pred("p_stale", t - 24 * HOUR_MS - 1 + MINUTE_MS, 0.75, user="u2"),
        imp("t2", t + MINUTE_MS, user="u2"),
    ], n_hours=26)
    r = rows["t"]
    assert (r["user_impressions_life"], r["user_impressions_7d"], r["user_impressions_24h"],
            r["user_impressions_1h"]) == (2, 2, 1, 0)
    assert (r["user_clicks_life"], r["user_clicks_24h"], r["user_clicks_1h"]) == (2, 2, 1)
    assert r["global_ctr_24h"] == r["campaign_ctr_24h"] == (2 + PRIOR) / 21
    # The clicks' impression is more than an hour before them: they count for country "unknown".
    assert r["country_ctr_24h"] == PRIOR / 21
    assert (r["pred_score"], r["pred_age_s"]) == (0.25, 86_400.0)
    assert missing(rows["t2"]["pred_score"]) and missing(rows["t2"]["pred_age_s"])
