"""Property test: the online store's profile of a user "as of t", counters and lists, equals
the brute-force oracle over the events the raw layer keeps, at random instants from the
online horizon on.

Random small streams are delivered as Firehose files (copies, events at hour boundaries, copies
arriving at the edge of the allowed lateness and past it), folded in arrival order by one to
three sensor runs, a file or a micro-batch per commit; the oracle recomputes everything from
the generated events (`oracle.profile`, `oracle.profile_lists`), never from the store.
"""

from __future__ import annotations

import math

import oracle
from depth import examples
from feature_oracle import kept_by_raw_rules, land
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clicklake.platform import raw
from clicklake.platform.online import OnlineFeatures, SqliteState, fold_files
from clicklake.platform.online.fold import order_files
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, floor_hour

H0 = 1_764_028_800_000  # 2025-11-25T00:00Z
LATENESS = raw.DEFAULT_LATENESS_MS
USERS = ["ann", "bob", "cy"]
CAMPAIGNS = ["c1", "c2", "c3"]
DOMAINS = [None, "a.com", "b.org"]
COUNTERS = ("first_ts", "last_impression_ts", "last_click_ts", "impressions", "clicks",
            *(f"{m}_{w}" for w in oracle.WINDOWS for m in ("impressions", "clicks")),
            "distinct_campaigns", "distinct_domains")
SPENDS = ("spend", *(f"spend_{w}" for w in oracle.WINDOWS))


@st.composite
def deliveries(draw) -> list[tuple[str, dict, int]]:
    out = []
    for i in range(draw(st.integers(1, 25))):
        hour = draw(st.integers(0, 5))
        off = draw(st.one_of(st.just(0), st.just(HOUR_MS - 1), st.integers(0, HOUR_MS - 1)))
        ts = H0 + hour * HOUR_MS + off
        ev = {"ts": ts, "user_id": draw(st.sampled_from(USERS)),
              "campaign_id": draw(st.sampled_from(CAMPAIGNS))}
        if draw(st.sampled_from([True, True, False])):
            stream = "impressions"
            ev.update(impression_id=f"i{i}", domain=draw(st.sampled_from(DOMAINS)),
                      cost=draw(st.sampled_from([None, 0.0, 0.25, 1.5])),
                      ip="81.2.69.160", user_agent="Mozilla/5.0")
        else:
            stream = "clicks"
            ev.update(click_id=f"k{i}", impression_id=draw(st.one_of(
                st.none(), st.sampled_from([f"i{j}" for j in range(max(i, 1))]))))
        end = floor_hour(ts) + HOUR_MS
        for _ in range(draw(st.integers(1, 2))):  # at-least-once delivery: copies
            arrival = draw(st.sampled_from([ts, ts + 20 * 60_000, end + LATENESS - 1000,
                                            end + LATENESS]))
            out.append((stream, ev, max(int(math.ceil(arrival / 1000) * 1000), ts)))
    return out


def _approx(a: float, b: float) -> bool:
    # the same costs added in another order
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sent=deliveries(), data=st.data())
def test_online_profiles_equal_the_oracle(tmp_path_factory, sent, data):
    root = tmp_path_factory.mktemp("online_oracle")
    store = Store(str(root / "lake"))
    land(store, sent)
    kept = kept_by_raw_rules(sent)
    imps, clks = kept["impressions"], kept["clicks"]
    keys = [lf.key for lf, _ in order_files(store.list("landing/"))[0]]  # arrival order
    # one to three sensor runs, each a file or a micro-batch per commit
    cuts = sorted(data.draw(st.lists(st.integers(0, len(keys)), max_size=2)))
    state = SqliteState(str(root / "online.db"))
    for lo, hi in zip([0, *cuts], [*cuts, len(keys)], strict=True):
        fold_files(state, store, keys[lo:hi],
                   files_per_commit=data.draw(st.sampled_from([1, 1000])))
    online = OnlineFeatures(state)
    horizon, wm = online.horizon_ms(), online.watermark_ms()
    times = [e["ts"] + d for e in imps + clks for d in (0, 1) if e["ts"] + d >= horizon]
    instants = data.draw(st.lists(st.one_of(
        st.integers(horizon, wm + 2 * HOUR_MS),
        st.integers(0, (wm - horizon) // HOUR_MS + 2).map(lambda k: horizon + k * HOUR_MS),
        *([st.sampled_from(times)] if times else [])), min_size=1, max_size=6))
    for t in instants:
        for user in USERS:
            got = online.profile(user, t)
            where = f"{user} at {t - H0} ms"
            if not any(r["user_id"] == user for r in imps + clks):
                assert got is None, where
                continue
            exp = oracle.profile(imps, clks, user, t)
            assert {k: got[k] for k in COUNTERS} == {k: exp[k] for k in COUNTERS}, where
            assert all(_approx(got[k], exp[k]) for k in SPENDS), (where, got, exp)
            lists = oracle.profile_lists(imps, clks, user, t)
            assert (got["campaigns"], got["domains"]) == (lists["campaigns"], lists["domains"]), \
                where
    state.close()


def test_the_oracle_lists_by_hand():
    """The oracle's lists on a stream small enough to read: before t only, clicks' campaigns
    counted, impressions without a domain leave no domain."""
    imps = [{"user_id": "u", "ts": 5, "campaign_id": "c1", "domain": "x.com"},
            {"user_id": "u", "ts": 9, "campaign_id": "c2", "domain": None},
            {"user_id": "v", "ts": 1, "campaign_id": "c1", "domain": "y.com"}]
    clks = [{"user_id": "u", "ts": 7, "campaign_id": "c3"}]
    assert oracle.profile_lists(imps, clks, "u", 9) == {
        "campaigns": {"c1": {"impressions": 1, "clicks": 0}, "c3": {"impressions": 0, "clicks": 1}},
        "domains": ["x.com"]}
    assert oracle.profile_lists(imps, clks, "u", 10)["campaigns"]["c2"] == {
        "impressions": 1, "clicks": 0}
