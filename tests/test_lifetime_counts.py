"""LifetimeCounts (the two lifetime counters carried hour by hour from raw) against a brute-force
oracle on random small streams: ties at one instant, events on hour boundaries, quiet hours,
users met for the first time late, and a start from a real user profile snapshot."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from depth import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clicklake.platform import hashtables, profiles, tiles
from clicklake.platform.events import SPECS
from clicklake.platform.lifetime_counts import LifetimeCounts
from clicklake.platform.timeutil import HOUR_MS

H0 = 1_764_028_800_000  # 2025-11-25T00:00Z
USERS = ["ann", "bob", "cy", "dee"]


def _events(draw, hours: int) -> list[tuple[str, str, int]]:
    """(kind, user, ts): offsets favour the hour's edges and a few shared instants."""
    shared = [H0 + draw(st.integers(0, hours * HOUR_MS - 1)) for _ in range(3)]
    out = []
    for _ in range(draw(st.integers(0, 40))):
        hour = draw(st.integers(0, hours - 1))
        ts = draw(st.one_of(
            st.just(H0 + hour * HOUR_MS), st.just(H0 + (hour + 1) * HOUR_MS - 1),
            st.integers(H0 + hour * HOUR_MS, H0 + (hour + 1) * HOUR_MS - 1),
            st.sampled_from(shared)))
        out.append((draw(st.sampled_from(["impression", "impression", "click"])),
                    draw(st.sampled_from(USERS)), ts))
    return out


def _hour_tables(events, h: int, n: list[int]) -> tuple[pa.Table, pa.Table]:
    """Hour h's raw impressions and clicks (raw schemas), rows in a shuffled-looking order."""
    imp = [e for e in events if e[0] == "impression" and h <= e[2] < h + HOUR_MS][::-1]
    clk = [e for e in events if e[0] == "click" and h <= e[2] < h + HOUR_MS]

    def table(stream: str, rows) -> pa.Table:
        schema = SPECS[stream].schema
        cols = {f.name: [None] * len(rows) for f in schema}
        n[0] += len(rows)
        cols.update(ts=[e[2] for e in rows], user_id=[e[1] for e in rows],
                    campaign_id=["c1"] * len(rows), arrived_at=[e[2] for e in rows])
        id_col = "impression_id" if stream == "impressions" else "click_id"
        cols[id_col] = [f"{stream[0]}{n[0] - i}" for i in range(len(rows))]
        return pa.Table.from_pydict(cols, schema=schema)

    return table("impressions", imp), table("clicks", clk)


def _oracle(events, user: str, t: int) -> tuple[int, int]:
    before = [e for e in events if e[1] == user and e[2] < t]
    return (sum(e[0] == "impression" for e in before), sum(e[0] == "click" for e in before))


@pytest.mark.parametrize("native", [True, False])
@settings(max_examples=examples(40), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # one setting per run
@given(data=st.data())
def test_counts_match_the_oracle_from_empty_and_from_a_snapshot(native, data, monkeypatch):
    monkeypatch.setattr(hashtables, "NATIVE", native and hashtables.NATIVE)
    hours = data.draw(st.integers(1, 5))
    events = _events(data.draw, hours)
    split = data.draw(st.integers(0, hours - 1))  # the hour the second run starts at
    ids = [0]
    tables = [_hour_tables(events, H0 + k * HOUR_MS, ids) for k in range(hours)]

    # From the start of history, every hour answered; and from the snapshot before `split`,
    # as a range starting there would (the snapshot chain folded from the same raw hours).
    snap = None
    for k in range(split):
        snap = profiles.fold_snapshot(snap, tiles.build_user_hour_tiles(*tables[k],
                                                                        H0 + k * HOUR_MS),
                                      H0 + k * HOUR_MS)
    runs = {"empty": (LifetimeCounts(H0), 0)}
    start = H0 + split * HOUR_MS
    runs["snapshot"] = (LifetimeCounts.from_snapshot(snap, start) if snap is not None
                        else LifetimeCounts(start), split)
    for name, (counts, first) in runs.items():
        for k in range(first, hours):
            imp, clk = tables[k]
            n_imp, n_clk = counts.count_hour(imp, clk)
            for user, t, a, c in zip(imp["user_id"].to_pylist(), imp["ts"].to_pylist(), n_imp,
                                     n_clk, strict=True):
                t_ms = round(t.timestamp() * 1000)
                assert (int(a), int(c)) == _oracle(events, user, t_ms), (name, user, t_ms)
        assert counts.as_of == H0 + hours * HOUR_MS


def test_skip_hour_counts_without_answering_and_order_is_enforced():
    events = [("impression", "ann", H0 + 5), ("click", "ann", H0 + 5),
              ("impression", "ann", H0 + HOUR_MS), ("impression", "bob", H0 + HOUR_MS + 7)]
    ids = [0]
    first, second = _hour_tables(events, H0, ids), _hour_tables(events, H0 + HOUR_MS, ids)
    counts = LifetimeCounts(H0)
    counts.skip_hour(*first)
    n_imp, n_clk = counts.count_hour(*second)
    got = dict(zip(second[0]["user_id"].to_pylist(), zip(n_imp.tolist(), n_clk.tolist())))
    assert got == {"ann": (1, 1), "bob": (0, 0)}
    # The same hour again: its events lie before the hour the counts are now carried to.
    with pytest.raises(ValueError, match="outside the hour"):
        counts.count_hour(*second)
    with pytest.raises(ValueError, match="hour boundary"):
        LifetimeCounts(H0 + 1)


def test_an_impression_at_the_same_instant_as_others_does_not_count_them():
    events = [("impression", "ann", H0 + 10), ("impression", "ann", H0 + 10),
              ("click", "ann", H0 + 10), ("impression", "ann", H0 + 11)]
    imp, clk = _hour_tables(events, H0, [0])
    n_imp, n_clk = LifetimeCounts(H0).count_hour(imp, clk)
    ts = [round(t.timestamp() * 1000) - H0 for t in imp["ts"].to_pylist()]
    assert sorted(zip(ts, n_imp.tolist(), n_clk.tolist())) == [(10, 0, 0), (10, 0, 0),
                                                              (11, 2, 1)]
    assert np.array_equal(LifetimeCounts(H0).count_hour(imp.slice(0, 0), clk.slice(0, 0))[0],
                          np.zeros(0, np.int64))
