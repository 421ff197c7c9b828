"""A range of labeled hours built in one pass, carrying state from hour to hour, equals building
each hour alone (`build_labeled_hour`, the oracle-tested path), table for table.

- `build_labeled_hours` over random streams and random hour ranges (gaps included), and over a
  snapshot chain with a snapshot missing: every table equals `build_labeled_hour`'s, metadata
  and all;
- the carried snapshot (`profiles.CarriedSnapshot`) folded over a couple of hundred hours equals
  every snapshot of the `fold_snapshot` chain it mirrors, bit for bit (float spend windows too),
  through the 24 h and 7 d windows expiring and hours without events;
- carried scores (`scores.CarriedScores`) equal `latest_scores_lake` hour by hour, across missing
  hours, same-instant ties and scores older than the maximum age;
- `tiles.Interner` codes strings exactly as a dict would, hash collisions or not (both paths:
  test_hashtables.py compares the C tables with the numpy ones).
"""

from __future__ import annotations

import feature_oracle as fo
import numpy as np
import pyarrow as pa
import pytest
from depth import examples
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_labeled_oracle import H0, N_HOURS, W, streams

from clicklake.platform import hashtables, profiles, tiles
from clicklake.platform.labeled import build_labeled_hour, build_labeled_hours
from clicklake.platform.profiles import CarriedSnapshot, fold_snapshot, snapshot_as_of
from clicklake.platform.scores import CarriedScores, latest_scores_lake
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS

TS = pa.timestamp("ms", tz="UTC")


@settings(max_examples=examples(25), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(deliveries=streams(), window=st.sampled_from([W, HOUR_MS]),
       picked=st.lists(st.booleans(), min_size=N_HOURS, max_size=N_HOURS))
def test_a_range_equals_its_hours_built_alone(tmp_path_factory, deliveries, window, picked):
    store = Store(str(tmp_path_factory.mktemp("lake")))
    fo.land(store, deliveries)
    hours = [H0 + k * HOUR_MS for k in range(N_HOURS + 2)]
    fo.build_lake(store, hours)
    labeled = hours[:-1]
    for chosen in (labeled, [h for h, keep in zip(labeled, picked, strict=False) if keep]):
        if not chosen:
            continue
        alone = [build_labeled_hour(store, h, window) for h in chosen]
        for prefetch in (True, False):  # the next hour prepared on a thread of its own, or not
            got = list(build_labeled_hours(store, chosen, window, prefetch=prefetch))
            assert len(got) == len(chosen)
            for h, table, want in zip(chosen, got, alone, strict=True):
                assert table.equals(want, check_metadata=True), (h, prefetch, table.to_pylist(),
                                                                 want.to_pylist())


@settings(max_examples=examples(8), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(deliveries=streams(), gone=st.integers(1, N_HOURS - 2))  # the first one starts history
def test_a_range_over_a_missing_snapshot_equals_its_hours_alone(tmp_path_factory, deliveries,
                                                                 gone):
    """A snapshot missing from the chain sends the hours after it through the lookup's general
    path, over several raw hours at once: some of them handed over by the range with only the
    lookup's columns, others read whole."""
    store = Store(str(tmp_path_factory.mktemp("lake")))
    fo.land(store, deliveries)
    hours = [H0 + k * HOUR_MS for k in range(N_HOURS + 2)]
    fo.build_lake(store, hours)
    store.fs.delete_file(store.path(profiles.snapshot_key(hours[gone])))
    labeled = hours[:-1]
    for h, table in zip(labeled, build_labeled_hours(store, labeled, W), strict=True):
        assert table.equals(build_labeled_hour(store, h, W), check_metadata=True), h


@settings(max_examples=examples(4), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.filter_too_much])
@given(deliveries=streams())
def test_a_range_over_tiles_of_several_row_groups_equals_its_hours_alone(tmp_path_factory,
                                                                        deliveries):
    """An hour of more than a row group's users (1 M+ in production) gives a tile file of
    several row groups, each with its own dictionaries: here one per user."""
    store = Store(str(tmp_path_factory.mktemp("lake")))
    fo.land(store, deliveries)
    hours = [H0 + k * HOUR_MS for k in range(N_HOURS + 2)]
    fo.build_lake(store, hours)
    split = 0
    for h in hours:
        key = tiles.tile_key(h)
        if store.exists(key):
            table = store.parquet_file(key).read()
            store.write_parquet(key, table, row_group_size=1)
            split += store.parquet_file(key).num_row_groups > 1
    assume(split)
    labeled = hours[:-1]
    for h, table in zip(labeled, build_labeled_hours(store, labeled, W), strict=True):
        assert table.equals(build_labeled_hour(store, h, W), check_metadata=True), h


def _every_hour(hours: list[int]) -> list[tuple[str, dict, int]]:
    """Deliveries (`streams()`'s form) of an impression, a click and a prediction each hour."""
    out = []
    for k, h in enumerate(hours):
        imp = {"impression_id": f"i{k}", "ts": h + 600_000, "user_id": "u1",
               "campaign_id": "c1", "domain": "a.com", "ip": "8.8.8.8", "user_agent": "curl/8",
               "cost": 0.5}
        out += [("impressions", imp, h + 700_000),
                ("clicks", {"click_id": f"k{k}", "ts": h + 900_000, "user_id": "u1",
                            "campaign_id": "c1", "impression_id": f"i{k}"}, h + 950_000),
                ("predictions", {"prediction_id": f"p{k}", "ts": h + 300_000, "user_id": "u1",
                                 "model": "m", "score": 0.5}, h + 350_000)]
    return out


@pytest.mark.parametrize("prefetch", [True, False])
def test_an_hour_that_cannot_be_built_fails_the_range_there(tmp_path, prefetch):
    """An input of one hour that cannot be read (its raw predictions, read while the hour is
    prepared, ahead of it when prefetching) fails the range at that hour as building it alone
    does: the hours before it come out first."""
    from clicklake.platform.raw import raw_key

    store = Store(str(tmp_path))
    hours = [H0 + k * HOUR_MS for k in range(N_HOURS + 2)]
    fo.land(store, _every_hour(hours))
    fo.build_lake(store, hours)
    labeled = hours[:-1]
    bad = 2
    before = [build_labeled_hour(store, h, W) for h in labeled[:bad]]
    assert all(t.num_rows == 1 for t in before)
    with store.fs.open_output_stream(store.path(raw_key("predictions", labeled[bad]))) as f:
        f.write(b"not parquet")
    with pytest.raises(Exception) as alone:
        build_labeled_hour(store, labeled[bad], W)
    got = []
    with pytest.raises(type(alone.value)):
        got.extend(build_labeled_hours(store, labeled, W, prefetch=prefetch))  # keeps what came
    assert len(got) == bad
    for h, table, want in zip(labeled[:bad], got, before, strict=True):
        assert table.equals(want, check_metadata=True), h


@pytest.mark.parametrize("prefetch", [True, False])
def test_a_range_starting_mid_lake_reads_its_start_once(tmp_path, monkeypatch, prefetch):
    """A range's first hour reads the snapshot before it and the day of predictions before it
    once (ahead, while the hour's inputs are prepared, when prefetching), and the range still
    equals its hours built alone."""
    from clicklake.platform import labeled as lab

    store = Store(str(tmp_path))
    hours = [H0 + k * HOUR_MS for k in range(N_HOURS + 2)]
    fo.land(store, _every_hour(hours))
    fo.build_lake(store, hours)
    labeled = hours[2:-1]
    reads, made = [], []
    read_snapshot, make_scores = lab._RangeCarry._read_snapshot, CarriedScores.__init__
    monkeypatch.setattr(lab._RangeCarry, "_read_snapshot",
                        lambda self, p: reads.append(p) or read_snapshot(self, p))
    monkeypatch.setattr(CarriedScores, "__init__",
                        lambda self, *a, **k: made.append(a[2]) or make_scores(self, *a, **k))
    got = list(build_labeled_hours(store, labeled, W, prefetch=prefetch))
    assert reads == [labeled[0] - HOUR_MS] and made == [labeled[0]]
    for h, table in zip(labeled, got, strict=True):
        assert table.equals(build_labeled_hour(store, h, W), check_metadata=True), h


def test_a_range_requires_ascending_hours(tmp_path):
    with pytest.raises(ValueError, match="ascending"):
        list(build_labeled_hours(Store(str(tmp_path)), [H0 + HOUR_MS, H0]))


# -- the carried snapshot against the snapshot chain ---------------------------------------------


def _random_hour(rng: np.random.Generator, hour_ms: int, n_users: int) -> tuple[pa.Table, pa.Table]:
    n_imp, n_clk = int(rng.integers(0, 12)), int(rng.integers(0, 4))
    if rng.random() < 0.25:  # hours without any event
        n_imp = n_clk = 0
    users = [f"u{int(u)}" for u in rng.integers(0, n_users, n_imp + n_clk)]
    camps = [f"c{int(c)}" for c in rng.integers(0, 5, n_imp + n_clk)]
    ts = (hour_ms + rng.integers(0, HOUR_MS, n_imp + n_clk)).tolist()
    doms = [None if d == 3 else f"d{int(d)}" for d in rng.integers(0, 4, n_imp)]
    cost = [None if c < 0.1 else float(c) for c in rng.random(n_imp)]  # inexact binary sums
    imp = pa.table({"impression_id": [f"i{hour_ms}-{k}" for k in range(n_imp)],
                    "ts": pa.array(ts[:n_imp], pa.int64()).cast(TS), "user_id": users[:n_imp],
                    "campaign_id": camps[:n_imp], "domain": pa.array(doms, pa.string()),
                    "cost": pa.array(cost, pa.float64())})
    clk = pa.table({"click_id": [f"k{hour_ms}-{k}" for k in range(n_clk)],
                    "ts": pa.array(ts[n_imp:], pa.int64()).cast(TS), "user_id": users[n_imp:],
                    "campaign_id": camps[n_imp:]})
    return imp, clk


def _assert_state_is_snapshot(state: CarriedSnapshot, snap: pa.Table) -> None:
    assert state.as_of == profiles.snapshot_as_of(snap)
    users = pa.array([f"u{k}" for k in range(12)], pa.string())  # u10, u11 never seen
    codes, values = state.values(users)
    rows = {r["user_id"]: r for r in snap.to_pylist()}
    for k, u in enumerate(users.to_pylist()):
        row = rows.get(u)
        for name, v in values.items():
            if row is None:
                want = profiles.NULL_MS if name.endswith("_ts") else 0
            elif name.endswith("_ts"):
                want = profiles.NULL_MS if row[name] is None else int(
                    row[name].timestamp() * 1000)
            else:
                want = row[name]
            assert v[k] == want, (u, name, v[k], want)  # floats too: bit for bit
        camps = row["campaigns"] if row else []
        for c in ["c0", "c1", "c2", "c3", "c4"]:
            cc = state.campaigns.codes(pa.array([c]), add=False)
            held = state.has_pairs("campaigns", codes[k:k + 1], cc)[0]
            assert held == (c in camps), (u, c)
            imps, clks = state.campaign_counts(codes[k:k + 1], cc)
            if c in camps:
                j = camps.index(c)
                assert (imps[0], clks[0]) == (row["campaign_impressions"][j],
                                              row["campaign_clicks"][j])
        doms = row["domains"] if row else []
        for d in ["d0", "d1", "d2"]:
            dc = state.domains.codes(pa.array([d]), add=False)
            assert state.has_pairs("domains", codes[k:k + 1], dc)[0] == (d in doms), (u, d)


@pytest.mark.parametrize("tables", ["c", "numpy"])
@pytest.mark.parametrize(("seed", "slice_rows"), [(1, None), (2, None), (1, 3), (3, 1)])
def test_the_carried_snapshot_equals_the_snapshot_chain(seed, slice_rows, tables, monkeypatch):
    """`slice_rows`: the snapshot read mid-chain comes in slices of that many rows (as a
    range reads it, by row group), not whole. `tables`: the carried keys and interners on the
    C hash tables, or on the numpy path a build without a C compiler takes."""
    if tables == "numpy":
        monkeypatch.setattr(hashtables, "NATIVE", False)
    rng = np.random.default_rng(seed)
    snap, state = None, None
    for k in range(200):  # past the 7-day ring
        h = H0 + k * HOUR_MS
        imp, clk = _random_hour(rng, h, n_users=10)
        tile = tiles.build_user_hour_tiles(imp, clk, h)
        snap = fold_snapshot(snap, tile, h)
        if k == 0:
            state = CarriedSnapshot(tiles.Interner(), h)
        if k == 170 and slice_rows is None:  # read whole, and carry on from there
            state = CarriedSnapshot.from_snapshot(snap, tiles.Interner())
        elif k == 170:  # read by slices, as a range starting here does
            parts = (snap.slice(i, slice_rows) for i in range(0, snap.num_rows, slice_rows))
            state = CarriedSnapshot.from_snapshot_parts(parts, snapshot_as_of(snap),
                                                        tiles.Interner())
        else:
            state.fold(tile, h)
        if k % 7 == 0 or k > 160:
            _assert_state_is_snapshot(state, snap)


def test_a_carried_snapshot_folds_only_the_hour_after_it():
    state = CarriedSnapshot(tiles.Interner(), H0)
    with pytest.raises(ValueError, match="cannot fold"):
        state.fold(tiles.TILE_SCHEMA.empty_table(), H0 + HOUR_MS)


# -- carried scores against the lake search ------------------------------------------------------


def _write_prediction_hours(store: Store, rows: list[tuple[str, int, str, float]]) -> None:
    from clicklake.platform.raw import raw_key

    for h in sorted({r[1] // HOUR_MS for r in rows}):
        part = [r for r in rows if r[1] // HOUR_MS == h]
        store.write_parquet(raw_key("predictions", h * HOUR_MS), pa.table({
            "prediction_id": pa.array([r[0] for r in part], pa.string()),
            "ts": pa.array([r[1] for r in part], pa.int64()).cast(TS),
            "user_id": pa.array([r[2] for r in part], pa.string()),
            "score": pa.array([r[3] for r in part], pa.float64())}))


@settings(max_examples=examples(40), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(preds=st.lists(st.tuples(st.integers(0, 40 * HOUR_MS - 1), st.sampled_from("uvwx"),
                                st.sampled_from([0.1, 0.5, 0.9])), max_size=60),
       ties=st.lists(st.tuples(st.integers(0, 59), st.sampled_from([0.2, 0.7])), max_size=6),
       missing=st.sets(st.integers(0, 39), max_size=8),
       first=st.integers(0, 30), max_age_h=st.sampled_from([0, 1, 5, 24]),
       at=st.lists(st.tuples(st.sampled_from("uvwxy"), st.integers(0, HOUR_MS - 1)),
                   min_size=1, max_size=12))
def test_carried_scores_equal_the_lake_search(tmp_path_factory, preds, ties, missing, first,
                                              max_age_h, at):
    rows = [(f"p{i:02d}", ts, u, s) for i, (ts, u, s) in enumerate(preds)]
    rows += [(f"q{j:02d}", rows[i][1], rows[i][2], s) for j, (i, s) in enumerate(ties)
             if i < len(rows)]
    rows = [r for r in rows if r[1] // HOUR_MS not in missing]
    store = Store(str(tmp_path_factory.mktemp("lake")))
    _write_prediction_hours(store, rows[::-1])
    users = tiles.Interner()
    carried = CarriedScores(store, users, first * HOUR_MS, max_age_h * HOUR_MS)
    # the same, each hour prepared first (what a range's second thread does)
    ahead = CarriedScores(store, users, first * HOUR_MS, max_age_h * HOUR_MS)
    who = pa.array([u for u, _ in at], pa.string())
    for h in range(first, 40):
        t = np.array([h * HOUR_MS + a for _, a in at])
        want = latest_scores_lake(store, who, t, max_age_h * HOUR_MS)
        codes = users.codes(who)
        got = carried.answer(h * HOUR_MS, codes, t)
        prepared = CarriedScores.prepare(CarriedScores.read_hour(store, h * HOUR_MS), users,
                                         codes, t)
        with pytest.raises(ValueError, match="other queries"):
            ahead.answer(h * HOUR_MS, codes + 1, t, prepared)
        got_ahead = ahead.answer(h * HOUR_MS, None, t, prepared)
        for w, g, a in zip(want, got, got_ahead, strict=True):
            assert np.array_equal(w, g, equal_nan=True), (h, w, g)
            assert np.array_equal(w, a, equal_nan=True), (h, w, a)


# -- interning -----------------------------------------------------------------------------------


@settings(max_examples=examples(60), deadline=None)
@given(batches=st.lists(st.lists(st.one_of(st.none(), st.text(max_size=70), st.text(min_size=60, max_size=90)), max_size=30),
                        min_size=1, max_size=6))
def test_the_interner_codes_like_a_dict(batches):
    interner, seen = tiles.Interner(), {}
    for batch in batches:
        probe = interner.codes(pa.array(batch, pa.string()), add=False)
        assert probe.tolist() == [-1 if v is None else seen.get(v, -1) for v in batch]
        got = interner.codes(pa.array(batch, pa.string()))
        assert got.tolist() == [-1 if v is None else seen.setdefault(v, len(seen))
                                for v in batch]
        assert len(interner) == len(seen)


def test_the_interner_survives_hash_collisions(monkeypatch):
    # the numpy interner's hashes (the C table, used when built, hashes on its own)
    monkeypatch.setattr(hashtables, "NATIVE", False)
    monkeypatch.setattr(tiles, "_string_hashes", lambda words: np.zeros(len(words), np.int64))
    interner = tiles.Interner()
    assert interner.codes(pa.array(["a", "b", "a"])).tolist() == [0, 1, 0]
    assert interner.codes(pa.array(["c", "b", "a", "c"])).tolist() == [2, 1, 0, 2]
    assert interner.codes(pa.array(["d", "b"]), add=False).tolist() == [-1, 1]


def test_a_range_folds_a_tile_only_where_its_snapshot_folded_that_file(tmp_path, monkeypatch):
    """A range folded tile file p into its carried snapshot, taking it for snapshot p. Raw p
    rebuilt with a late file, its tiles rebuilt, and the user_profiles run of p died: snapshot
    p was the old one, the tile the new, and labeled hour p + 1 had other features in a range
    (a backfill) than alone (the automation), 9 rows of 32 in the review's lake. A snapshot
    names the tile file and the snapshot it was folded on; a range folds only what matches,
    and reads the snapshot otherwise."""
    import dagster as dg

    from clicklake.assets.profiles import profile_assets
    from clicklake.assets.raw import raw_assets
    from clicklake.platform import labeled, landing
    from clicklake.platform.simulate import generate
    from clicklake.platform.timeutil import hour_partition_key
    from clicklake.resources.lake import LakeResource

    start = 1_795_478_400_000  # 2026-11-24T00:00Z
    h1, h2 = start + HOUR_MS, start + 2 * HOUR_MS
    lake = LakeResource(root=str(tmp_path))
    store = lake.store()
    generate(store, start_ms=start, hours=4, users=80, seed=5)
    late = sorted(store.list(landing.hour_prefix("impressions", h1)))[3]
    data = store.read_bytes(late)
    store.delete(late)  # it lands late, within the lateness
    whole = {"dagster/asset_partition_range_start": hour_partition_key(start),
             "dagster/asset_partition_range_end": hour_partition_key(start + 3 * HOUR_MS)}
    tiles_asset = [a for a in profile_assets if a.key.path == ["user_hour_tiles"]]
    reads = []
    real_read = labeled._RangeCarry._read_snapshot
    monkeypatch.setattr(labeled._RangeCarry, "_read_snapshot",
                        lambda self, p: reads.append(p) or real_read(self, p))
    with dg.instance_for_test() as instance:
        for group in (raw_assets, profile_assets):
            assert dg.materialize(group, tags=whole, resources={"lake": lake},
                                  instance=instance).success
        # the chain as the assets wrote it: read once, then folded tile by tile
        list(build_labeled_hours(store, [start, h1, h2]))
        assert reads == []  # the first hour's snapshot is the empty history
        list(build_labeled_hours(store, [h1, h2]))
        assert reads == [start]
        store.write_bytes(late, data)
        one = {"partition_key": hour_partition_key(h1), "resources": {"lake": lake},
               "instance": instance}
        assert dg.materialize(raw_assets, **one).success
        assert dg.materialize(tiles_asset, **one).success
        # ... and the user_profiles run of h1 dies: its snapshot is the old one
    alone = build_labeled_hour(store, h2)
    reads.clear()
    assert list(build_labeled_hours(store, [h1, h2]))[-1].equals(alone)
    assert reads == [start, h1]


def test_a_lake_written_before_the_links_is_folded_as_before(tmp_path, monkeypatch):
    """Snapshots and tiles of an older clicklake carry no links: a range read every snapshot
    whole (answers the same, 6 hours in 1.6 s instead of 1.2). Both without links: folded as
    before. A tile rebuilt since carries an identity its snapshot does not name: read."""
    import pyarrow.parquet as pq

    from clicklake.platform import labeled
    from clicklake.platform.simulate import generate

    start = H0
    store = Store(str(tmp_path))
    generate(store, start_ms=start, hours=5, users=60, seed=2, clean=True)
    hours = [start + k * HOUR_MS for k in range(5)]
    fo.build_lake(store, hours)
    for key in [*(tiles.tile_key(h) for h in hours), *(profiles.snapshot_key(h) for h in hours)]:
        table = pq.read_table(store.path(key))
        meta = {k: v for k, v in (table.schema.metadata or {}).items()
                if k not in (tiles.META_TILE_ID, profiles.META_CHAIN_ID,
                             profiles.META_CHAIN_PARENT, profiles.META_CHAIN_TILE)}
        pq.write_table(table.replace_schema_metadata(meta), store.path(key))
    reads = []
    real = labeled._RangeCarry._read_snapshot
    monkeypatch.setattr(labeled._RangeCarry, "_read_snapshot",
                        lambda self, p: reads.append(p) or real(self, p))
    labeled_hours = hours[1:4]
    alone = [build_labeled_hour(store, h) for h in labeled_hours]
    assert [t.equals(a) for t, a in zip(build_labeled_hours(store, labeled_hours), alone,
                                        strict=True)] == [True] * 3
    assert reads == [hours[0]]
    key = tiles.tile_key(hours[2])  # rebuilt by this version: an identity, named by no snapshot
    pq.write_table(tiles.stamped(pq.read_table(store.path(key))), store.path(key))
    reads.clear()
    assert [t.equals(a) for t, a in zip(build_labeled_hours(store, labeled_hours), alone,
                                        strict=True)] == [True] * 3
    assert reads == [hours[0], hours[2]]
