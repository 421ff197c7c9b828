"""Property tests: snapshots and as-of lookups agree with the brute-force oracle.

Random small streams go through the real path: Firehose landing files (with duplicates, late
events within and beyond the allowed lateness, events exactly on hour boundaries, users who
vanish for days and return) → raw partitions → hour tiles → snapshots (some hours skipped, so
lookups also cross gaps) → `LookupTable.as_of` at random instants, event times and hour
boundaries. The oracle recomputes everything from the generated events with plain Python.
"""

from __future__ import annotations

import math

import numpy as np
import oracle
import orjson
import pyarrow as pa
import pytest
from depth import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clicklake.platform import landing, lookup, profiles, raw, tiles
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, floor_hour, iso, parse_instant

H0 = 1_764_028_800_000  # 2025-11-25T00:00Z
LATENESS = raw.DEFAULT_LATENESS_MS
USERS = ["ann", "bob", "cy"]
CAMPAIGNS = ["c1", "c2", "c3"]
DOMAINS = [None, "a.com", "b.org"]


@st.composite
def streams(draw):
    days = draw(st.integers(1, 9))
    # A few bursts of activity, so users go quiet for days and come back.
    bursts = draw(st.lists(st.integers(0, days * 24 - 1), min_size=1, max_size=4))
    events = []
    n = draw(st.integers(0, 30))
    for i in range(n):
        hour = draw(st.sampled_from(bursts)) + draw(st.integers(0, 2))
        off = draw(st.one_of(st.just(0), st.just(HOUR_MS - 1), st.integers(0, HOUR_MS - 1)))
        ts = H0 + hour * HOUR_MS + off
        kind = draw(st.sampled_from(["impression", "impression", "click"]))
        ev = {"ts": ts, "user_id": draw(st.sampled_from(USERS)),
              "campaign_id": draw(st.sampled_from(CAMPAIGNS))}
        if kind == "impression":
            ev.update(impression_id=f"i{i}", domain=draw(st.sampled_from(DOMAINS)),
                      cost=draw(st.sampled_from([None, 0.0, 0.25, 1.5])))
        else:
            ev.update(click_id=f"k{i}", impression_id=draw(st.one_of(st.none(),
                      st.sampled_from([f"i{j}" for j in range(max(i, 1))]))))
        copies = draw(st.integers(1, 2))  # at-least-once delivery: duplicates
        for _ in range(copies):
            lateness = draw(st.sampled_from(["now", "soon", "edge", "late", "very_late"]))
            end = floor_hour(ts) + HOUR_MS
            arrival = {"now": ts, "soon": ts + 30 * 60_000, "edge": end + LATENESS - 1000,
                       "late": end + LATENESS, "very_late": end + LATENESS + 5 * HOUR_MS}[lateness]
            arrival = max(int(math.ceil(arrival / 1000) * 1000), ts)
            if lateness == "edge":
                arrival = end + LATENESS - 1000  # the last second still accepted
            events.append((kind, ev, arrival))
    return events


def _kept(events):
    """The oracle's raw layer: an event counts once iff any copy arrived within the lateness."""
    kept = {}
    for kind, ev, arrival in events:
        if arrival < floor_hour(ev["ts"]) + HOUR_MS + LATENESS:
            kept[(kind, ev.get("impression_id") if kind == "impression" else ev["click_id"])] = (
                kind, ev)
    imps = [{**ev} for kind, ev in kept.values() if kind == "impression"]
    clks = [{**ev} for kind, ev in kept.values() if kind == "click"]
    return imps, clks


def _land(store: Store, events) -> list[int]:
    files: dict[tuple[str, int], list[bytes]] = {}
    for kind, ev, arrival in events:
        files.setdefault((kind + "s", arrival), []).append(orjson.dumps(ev))
    for n, ((stream, arrival), lines) in enumerate(sorted(files.items())):
        landing.write_file(store, landing.firehose_key(stream, arrival, f"{n:08d}"), lines)
    return sorted({floor_hour(ev["ts"]) for _, ev, _ in events})


def _build(store: Store, hours: list[int], fold_extra: list[int]) -> list[int]:
    """Raw partitions for the event hours, snapshots for them plus some extra hours."""
    for h in hours:
        for stream in ("impressions", "clicks"):
            raw.write_raw_partition(store, raw.build_raw_partition(store, stream, h))
    snap, written = None, []
    for h in sorted(set(hours) | set(fold_extra)):
        imp = raw.read_raw(store, "impressions", h) if h in hours else None
        clk = raw.read_raw(store, "clicks", h) if h in hours else None
        tile = (tiles.build_user_hour_tiles(imp, clk, h) if imp is not None
                else tiles.TILE_SCHEMA.empty_table())
        snap = profiles.fold_snapshot(snap, tile, h)
        store.write_parquet(profiles.snapshot_key(h), snap, row_group_size=2)
        written.append(h)
    return written


def _same(expected: dict, got: dict, where: str) -> None:
    for k, v in expected.items():
        g = got[k]
        if hasattr(g, "timestamp"):
            g = round(g.timestamp() * 1000)
        if isinstance(v, float):
            assert g == pytest.approx(v, abs=1e-9), f"{k} at {where}"
        else:
            assert g == v, f"{k} at {where}: expected {v}, got {g}"


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(events=streams(), data=st.data())
def test_snapshots_and_as_of_match_oracle(tmp_path_factory, events, data):
    store = Store(str(tmp_path_factory.mktemp("lake")))
    hours = _land(store, events)
    if not hours:
        return
    imps, clks = _kept(events)
    span = (hours[-1] - hours[0]) // HOUR_MS + 3
    extra = data.draw(st.lists(st.integers(0, span), max_size=6))
    written = _build(store, hours, [hours[0] + k * HOUR_MS for k in extra])

    # Every snapshot equals the oracle at its as-of instant.
    for h in written:
        snap = store.read_parquet(profiles.snapshot_key(h))
        rows = {r["user_id"]: r for r in snap.to_pylist()}
        for u in USERS:
            exp = oracle.profile(imps, clks, u, h + HOUR_MS)
            assert (u in rows) == exp["known"]
            if u in rows:
                _same({k: v for k, v in exp.items() if k != "known"}, rows[u], iso(h + HOUR_MS))

    # as_of at random instants, on event times, on hour boundaries, one ms after events.
    first, last = hours[0], hours[-1] + 3 * HOUR_MS
    ts_pool = [ev["ts"] for _, ev, _ in events] + [ev["ts"] + 1 for _, ev, _ in events]
    instants = data.draw(st.lists(st.one_of(
        st.integers(first, last),
        st.integers(0, (last - first) // HOUR_MS).map(lambda k: first + k * HOUR_MS),
        st.sampled_from(ts_pool)), min_size=1, max_size=8))
    table = lookup.LookupTable(store)
    pairs = [(u, t) for t in instants for u in [*USERS, "nobody"]]
    got = table.as_of([u for u, _ in pairs], [t for _, t in pairs]).to_pylist()
    for (u, t), row in zip(pairs, got, strict=True):
        _same(oracle.profile(imps, clks, u, t), row, f"{u}@{iso(t)}")
    # One instant at a time: an hour right after a kept snapshot takes the one-pass path.
    for t in instants:
        one_hour = table.as_of([*USERS, "nobody"], t).to_pylist()
        for u, row in zip([*USERS, "nobody"], one_hour, strict=True):
            _same(oracle.profile(imps, clks, u, t), row, f"{u}@{iso(t)} alone")
    # Only some fields: the one-pass path then skips what they do not need (the sets).
    fields = data.draw(st.lists(st.sampled_from(lookup.PROFILE_FIELDS), min_size=1, unique=True))
    for t in instants:
        some = table.as_of([*USERS, "nobody"], t, columns=fields).to_pylist()
        for u, row in zip([*USERS, "nobody"], some, strict=True):
            assert list(row) == ["user_id", "t", *fields]
            exp = oracle.profile(imps, clks, u, t)
            _same({k: exp[k] for k in fields}, row, f"{u}@{iso(t)} {fields}")
    # A caller holding raw impressions of only the columns the counts read (no domain, no
    # cost): the same counts.
    slim = lookup.LookupTable(store)
    slim_cols = ["impression_id", "ts", "user_id", "campaign_id"]
    for h in range(hours[0], last + HOUR_MS, HOUR_MS):
        slim.remember_raw("impressions", h, raw.read_raw(
            store, "impressions", h, missing_ok=True, columns=slim_cols))
    for t in instants:
        counts = slim.as_of([*USERS, "nobody"], t, columns=["impressions", "clicks"]).to_pylist()
        for u, row in zip([*USERS, "nobody"], counts, strict=True):
            exp = oracle.profile(imps, clks, u, t)
            _same({k: exp[k] for k in ("impressions", "clicks")}, row, f"{u}@{iso(t)} slim")
    camps = [(u, c, t) for u, t in pairs for c in CAMPAIGNS]
    uc = table.as_of_user_campaign([p[0] for p in camps], [p[1] for p in camps],
                                   [p[2] for p in camps]).to_pylist()
    for (u, c, t), row in zip(camps, uc, strict=True):
        assert (row["impressions"], row["clicks"]) == oracle.user_campaign(imps, clks, u, c, t)

    # The point lookup agrees with the oracle, its lists too.
    t = instants[0]
    for u in USERS:
        one = table.profile(u, t)
        _same(oracle.profile(imps, clks, u, t), one, f"profile {u}@{iso(t)}")
        lists = oracle.profile_lists(imps, clks, u, t)
        assert (one["campaigns"], one["domains"]) == (lists["campaigns"], lists["domains"]), \
            f"profile lists {u}@{iso(t)}"


@pytest.mark.parametrize("native", [True, False])
def test_a_null_campaign_asked_for_counts_nothing(tmp_path, monkeypatch, native):
    """User x campaign counts of a null campaign are 0, in the one-pass hour (C or numpy) as in
    the general path; the other rows are unaffected."""
    monkeypatch.setattr(lookup.hashtables, "NATIVE", native and lookup.hashtables.NATIVE)
    store = Store(str(tmp_path))
    events = [("impression", {"impression_id": "i0", "ts": H0 + 5, "user_id": "ann",
                              "campaign_id": "c1", "domain": "a.com", "cost": 0.5}, H0 + 5),
              ("impression", {"impression_id": "i1", "ts": H0 + HOUR_MS + 10, "user_id": "ann",
                              "campaign_id": "c2", "cost": 0.25}, H0 + HOUR_MS + 10),
              ("click", {"click_id": "k1", "ts": H0 + HOUR_MS + 20, "user_id": "ann",
                         "campaign_id": "c2"}, H0 + HOUR_MS + 20)]
    _build(store, _land(store, events), [])
    for t in (H0 + HOUR_MS + 30, H0 + 3 * HOUR_MS):  # the hour after a snapshot; later
        table = lookup.LookupTable(store)
        _, uc = table.as_of_with_campaigns(pa.array(["ann", "ann", "ann"]),
                                           pa.array(["c2", None, "c1"]), np.full(3, t))
        assert [(r["impressions"], r["clicks"]) for r in uc.to_pylist()] == [
            (1, 1), (0, 0), (1, 0)], t


def test_a_users_spend_carries_no_rounding_of_other_users_costs(tmp_path):
    """Asked in a batch spanning two hours (the general path), a user's spend was the
    difference of two running totals over every user sorted before it: another user's large
    cost changed it in its last digits, and the answer depended on what else was asked."""
    import tests.feature_oracle as fo
    from clicklake.platform.timeutil import MINUTE_MS, parse_instant

    h0 = parse_instant("2026-11-20T00:00:00Z")

    def imp(i, ts, user, cost):
        return ("impressions", {"impression_id": i, "ts": ts, "user_id": user,
                                "campaign_id": "c1", "cost": cost}, ts)

    store = Store(str(tmp_path))
    fo.land(store, [imp("a9", h0 + MINUTE_MS, "a0", 0.0),
                    imp("a1", h0 + HOUR_MS + MINUTE_MS, "a0", 999_999.123),
                    imp("b1", h0 + HOUR_MS + 2 * MINUTE_MS, "u1", 0.1),
                    imp("b0", h0 + 5 * MINUTE_MS, "u1", 0.2)])
    fo.build_lake(store, [h0 + k * HOUR_MS for k in range(3)])
    t = h0 + HOUR_MS + 10 * MINUTE_MS
    table = lookup.LookupTable(store)
    alone = table.as_of(["u1"], [t])["spend"][0].as_py()
    batch = table.as_of(["u1", "u1"], [t, h0 + 30 * MINUTE_MS])["spend"][0].as_py()
    assert alone == batch == 0.2 + 0.1


_H = parse_instant("2026-11-25T13:00:00Z")


def _one_user_lake(tmp_path, events):
    import feature_oracle as fo

    deliveries = [("impressions", {"impression_id": i, "ts": ts, "user_id": "u1",
                                   "campaign_id": c, "domain": d, "cost": 0.5}, ts)
                  for i, ts, c, d in events]
    store = Store(str(tmp_path))
    fo.land(store, deliveries)
    fo.build_lake(store, [_H + k * HOUR_MS for k in range(3)])
    return store


@pytest.mark.parametrize("native", [True, False])
def test_an_event_at_exactly_t_is_not_history_on_both_paths(tmp_path, monkeypatch, native):
    """The hour after a snapshot is answered by one pass over its events, in C or (a build
    without the extension) in numpy: on both, an event at exactly t is not history."""
    from clicklake.platform import hashtables

    monkeypatch.setattr(hashtables, "NATIVE", native and hashtables.NATIVE)
    t = _H + HOUR_MS + 20 * 60_000
    store = _one_user_lake(tmp_path, [("a", _H + 5 * 60_000, "c1", "a.com"),
                                      ("b", t, "c2", "b.org"), ("c", t + 1, "c1", None)])
    asked = [t, t + 1, t + 2]  # in one call: the hour's events read up to the latest instant
    got = [(r["impressions"], r["distinct_campaigns"], r["distinct_domains"])
           for r in lookup.LookupTable(store).as_of(["u1"] * 3, asked).to_pylist()]
    assert got == [(1, 1, 1), (2, 2, 2), (3, 2, 2)]


def test_profile_lists_leave_out_an_event_at_exactly_t(tmp_path):
    """A profile's campaigns and domains, like its counts, hold only what came strictly before t."""
    t = _H + HOUR_MS + 20 * 60_000
    store = _one_user_lake(tmp_path, [("a", _H + 5 * 60_000, "c1", "a.com"),
                                      ("b", t, "c2", "b.org")])
    profile = lookup.LookupTable(store).profile("u1", t)
    assert profile["domains"] == ["a.com"]
    assert profile["campaigns"] == {"c1": {"impressions": 1, "clicks": 0}}


def test_an_instant_whose_snapshot_retention_removed_is_refused(tmp_path):
    """Time travel to an instant whose starting snapshot retention has deleted (the chain
    starts earlier) is refused with a clear error, not answered as an empty history; later
    instants still answer."""
    t = _H + HOUR_MS + 20 * 60_000
    store = _one_user_lake(tmp_path, [("a", _H + 5 * 60_000, "c1", "a.com"),
                                      ("b", t, "c2", "b.org")])
    table = lookup.LookupTable(store)
    assert table.as_of(["u1"], t).column("impressions").to_pylist() == [1]
    store.delete(profiles.snapshot_key(_H))
    table = lookup.LookupTable(store)
    with pytest.raises(lookup.SnapshotUnavailable, match="removed by retention"):
        table.as_of(["u1"], t)
    assert table.as_of(["u1"], _H + 2 * HOUR_MS + 1).column("impressions").to_pylist() == [2]


def test_segment_counts_over_a_missing_segment_profile_are_refused(tmp_path):
    """Segment counts read the segment profile of the hour before t: one missing inside the
    chain (not before its start) is an error, not a silent undercount."""
    from clicklake.platform import segments

    t = _H + 2 * HOUR_MS + 10 * 60_000
    store = _one_user_lake(tmp_path, [("a", _H + 5 * 60_000, "c1", "a.com"),
                                      ("b", _H + HOUR_MS + 5 * 60_000, "c1", "a.com")])
    got = segments.segments_as_of_lake(store, ["domain"], ["a.com"], [t]).to_pylist()
    assert got[0]["impressions_24h"] == 2
    store.delete(segments.segment_key(_H + HOUR_MS))
    with pytest.raises(LookupError, match="is missing"):
        segments.segments_as_of_lake(store, ["domain"], ["a.com"], [t])
