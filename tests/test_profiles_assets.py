"""The lookup assets materialized with Dagster over a hand-built lake: snapshots, segment
profiles, gaps, retention, lineage and the `clicklake lookup` command."""

from __future__ import annotations

import itertools
import json

import dagster as dg
import numpy as np
import oracle
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from clicklake.assets.profiles import profile_assets
from clicklake.cli import main
from clicklake.platform import hashtables, landing, profiles, raw, segments, tiles
from clicklake.platform.enrich import countries
from clicklake.platform.events import CLICKS, IMPRESSIONS
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, hour_partition_key, iso
from clicklake.resources.lake import LakeResource

H0 = 1_764_028_800_000  # 2025-11-25T00:00Z
M = 60_000


def _imp(i, ts, user, camp, domain=None, ip=None, cost=None):
    return {"impression_id": f"i{i}", "ts": ts, "user_id": user, "campaign_id": camp,
            "domain": domain, "ip": ip, "user_agent": None, "cost": cost, "arrived_at": ts}


def _clk(i, ts, user, camp, imp=None):
    return {"click_id": f"k{i}", "ts": ts, "impression_id": imp, "user_id": user,
            "campaign_id": camp, "arrived_at": ts}


IMPS = [
    _imp(1, H0 + 5 * M, "ann", "c1", "a.com", "81.2.69.160", 0.5),
    _imp(2, H0 + 10 * M, "bob", "c2", None, "8.8.8.8", None),
    _imp(3, H0 + HOUR_MS, "ann", "c2", "b.org", "81.2.69.160", 1.0),  # exactly on the boundary
    _imp(4, H0 + HOUR_MS + 50 * M, "cy", "c1", "a.com", None, 0.25),
    _imp(5, H0 + 26 * HOUR_MS + M, "ann", "c1", "a.com", "81.2.69.160", 2.0),
]
CLKS = [
    _clk(1, H0 + 7 * M, "ann", "c1", "i1"),
    _clk(2, H0 + HOUR_MS + 2 * M, "bob", "c2", "i2"),  # its impression is in the hour before
    _clk(3, H0 + HOUR_MS + 55 * M, "cy", "c1", None),  # no id: the user's latest impression
]
HOURS = [H0, H0 + HOUR_MS, H0 + 26 * HOUR_MS]


def _table(rows, spec):
    schema = pa.schema([pa.field(f.name, pa.int64()) if f.name in ("ts", "arrived_at") else f
                        for f in spec.schema])
    return pa.Table.from_pylist(rows, schema=schema).cast(spec.schema)


def _raw_lake(root) -> Store:
    """Raw partitions of every hour from H0 to the last of HOURS, the quiet ones empty (the
    hourly schedule builds every hour: one never built is a gap downstream runs refuse)."""
    store = Store(str(root))
    for h in range(H0, HOURS[-1] + HOUR_MS, HOUR_MS):
        for rows, spec, stream in ((IMPS, IMPRESSIONS, "impressions"), (CLKS, CLICKS, "clicks")):
            part = [r for r in rows if h <= r["ts"] < h + HOUR_MS]
            store.write_parquet(raw.raw_key(stream, h), _table(part, spec))
    return store


@pytest.fixture
def lake(tmp_path):
    return _raw_lake(tmp_path)


def _materialize(store, hour):
    result = dg.materialize(
        profile_assets, partition_key=hour_partition_key(hour),
        resources={"lake": LakeResource(root=store.root)},
    )
    assert result.success
    return {e.asset_key.path[-1]: {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


def test_lineage_and_partitions():
    defs = dg.Definitions(assets=profile_assets, resources={"lake": LakeResource()})
    graph = defs.resolve_asset_graph()
    parents = {k.path[-1]: {p.path[-1] for p in graph.get(k).parent_keys}
               for k in graph.get_all_asset_keys()}
    assert parents["user_hour_tiles"] == {"raw_impressions", "raw_clicks"}
    assert parents["user_profiles"] == {"user_hour_tiles", "user_profiles"}
    assert parents["segment_profiles"] == {"raw_impressions", "raw_clicks", "segment_profiles"}


def test_materialize_hours_gap_and_retention(lake, monkeypatch):
    meta0 = _materialize(lake, H0)
    meta1 = _materialize(lake, H0 + HOUR_MS)
    assert meta0["user_profiles"]["started_from"] == "empty history"
    assert meta1["user_profiles"]["users_touched"] == 3  # ann, bob (click), cy
    assert meta1["user_profiles"]["bytes_per_user"] > 0
    assert meta1["user_hour_tiles"]["dagster/row_count"] == 3

    snap = lake.read_parquet(profiles.snapshot_key(H0 + HOUR_MS))
    assert profiles.snapshot_as_of(snap) == H0 + 2 * HOUR_MS
    imps, clks = oracle.rows_of(_table(IMPS, IMPRESSIONS)), oracle.rows_of(_table(CLKS, CLICKS))
    for row in snap.to_pylist():
        exp = oracle.profile(imps, clks, row["user_id"], H0 + 2 * HOUR_MS)
        assert row["impressions"] == exp["impressions"] and row["clicks"] == exp["clicks"]
        assert row["spend"] == pytest.approx(exp["spend"])
        assert row["impressions_1h"] == exp["impressions_1h"]
        assert row["distinct_campaigns"] == exp["distinct_campaigns"]

    # Hour 26 after a gap: the missing hours are folded on the way; the default retention
    # (30 days) deletes nothing, the deployment's 2 days at hour 50 the two oldest snapshots.
    meta26 = _materialize(lake, H0 + 26 * HOUR_MS)
    assert meta26["user_profiles"]["gap_hours_refolded"] == 24
    assert meta26["user_profiles"]["snapshots_deleted"] == 0
    assert lake.exists(profiles.snapshot_key(H0))
    monkeypatch.setenv("CLICKLAKE_RETENTION_DAYS", "2")
    meta50 = _materialize(lake, H0 + 50 * HOUR_MS)
    assert (meta50["user_profiles"]["snapshots_deleted"],
            meta50["user_profiles"]["retention_days"]) == (2, 2)
    assert not lake.exists(profiles.snapshot_key(H0))
    assert lake.exists(profiles.snapshot_key(H0 + 26 * HOUR_MS))
    snap26 = {r["user_id"]: r for r in lake.read_parquet(
        profiles.snapshot_key(H0 + 26 * HOUR_MS)).to_pylist()}
    exp = oracle.profile(imps, clks, "ann", H0 + 27 * HOUR_MS)
    assert (snap26["ann"]["impressions"], snap26["ann"]["impressions_24h"],
            snap26["ann"]["impressions_7d"]) == (exp["impressions"], exp["impressions_24h"],
                                                 exp["impressions_7d"]) == (3, 1, 3)


def test_a_backfill_range_folds_hour_by_hour_like_single_hour_runs(tmp_path):
    """One run over hours 0..3 (what a backfill launches) folds each hour into the one before:
    a materialization per hour with its own metadata, and the same tiles, snapshots and segment
    profiles as one single-hour run after another."""
    ranged, hourly = _raw_lake(tmp_path / "ranged"), _raw_lake(tmp_path / "hourly")
    hours = [H0 + i * HOUR_MS for i in range(4)]
    keys = [hour_partition_key(h) for h in hours]
    result = dg.materialize(
        profile_assets, resources={"lake": LakeResource(root=ranged.root)},
        tags={"dagster/asset_partition_range_start": keys[0],
              "dagster/asset_partition_range_end": keys[-1]})
    assert result.success
    for h in hours:
        _materialize(hourly, h)
    for asset in ("user_hour_tiles", "user_profiles", "segment_profiles"):
        assert [m.partition for m in result.asset_materializations_for_node(asset)] == keys
    meta = [{k: v.value for k, v in m.metadata.items()}
            for m in result.asset_materializations_for_node("user_profiles")]
    assert meta[0]["started_from"] == "empty history"
    for prev, cur in itertools.pairwise(meta):
        assert (cur["started_from"], cur["gap_hours_refolded"]) == (prev["as_of"], 0)
    assert meta[1]["users_touched"] == 3 and meta[2]["users_touched"] == 0
    for h in hours:
        for key in (tiles.tile_key(h), profiles.snapshot_key(h), segments.segment_key(h)):
            assert ranged.read_parquet(key).equals(hourly.read_parquet(key)), key


def test_segment_profiles_match_oracle(lake):
    _materialize(lake, H0)
    _materialize(lake, H0 + HOUR_MS)
    imp_t = _table(IMPS, IMPRESSIONS)
    by_id = dict(zip(imp_t["impression_id"].to_pylist(), countries(imp_t["ip"]).to_pylist(),
                     strict=True))  # (ids are unique in this lake)
    country_of = lambda row: by_id[row["impression_id"]]
    imps, clks = oracle.rows_of(imp_t), oracle.rows_of(_table(CLKS, CLICKS))
    table = lake.read_parquet(segments.segment_key(H0 + HOUR_MS))
    got = {(r["kind"], r["segment"]): (r["impressions_24h"], r["clicks_24h"])
           for r in table.to_pylist()}
    assert got == oracle.segments(imps, clks, country_of, H0 + 2 * HOUR_MS)
    # as of an instant inside hour 1: the profile of hour 0 plus hour 1 up to t.
    t = H0 + HOUR_MS + 3 * M
    keys = sorted(oracle.segments(imps, clks, country_of, H0 + 2 * HOUR_MS))
    res = segments.segments_as_of_lake(lake, [k for k, _ in keys], [s for _, s in keys],
                                       [t] * len(keys)).to_pylist()
    exp = oracle.segments(imps, clks, country_of, t)
    for (k, s), r in zip(keys, res, strict=True):
        assert (r["impressions_24h"], r["clicks_24h"]) == exp.get((k, s), (0, 0))


def test_lookup_cli(lake):
    _materialize(lake, H0)
    _materialize(lake, H0 + HOUR_MS)
    runner = CliRunner()
    base = ["lookup", "--root", lake.root]
    out = runner.invoke(main, [*base, "ann", "--as-of", iso(H0 + HOUR_MS), "--json"])
    assert out.exit_code == 0, out.output
    prof = json.loads(out.output)
    # The impression exactly at the instant is not history.
    assert (prof["impressions"], prof["clicks"], prof["campaigns"]) == (
        1, 1, {"c1": {"impressions": 1, "clicks": 1}})
    out = runner.invoke(main, [*base, "nobody", "--as-of", iso(H0 + HOUR_MS)])
    assert out.exit_code == 0 and "unknown user" in out.output
    out = runner.invoke(main, [*base, "ann", "--as-of", iso(H0 - HOUR_MS)])
    assert out.exit_code == 0 and "no history" in out.output
    out = runner.invoke(main, [*base, "ann", "--as-of", "yesterday-ish"])
    assert out.exit_code == 2 and "neither ISO-8601" in out.output
    out = runner.invoke(main, [*base, "ann", "--as-of", ""])  # an unset variable: not "now"
    assert out.exit_code == 2 and "--as-of" in out.output
    # The REST API's bounds: 9999-12-31 walked the lake an hour at a time (19 GB, then killed);
    # 20 digits or a negative epoch was an OverflowError traceback.
    for far, why in (("9999-12-31T00:00:00Z", "in the future"),
                     ("99999999999999999999", "in the future"),
                     ("-99999999999999999", "before 2000-01-01")):
        out = runner.invoke(main, [*base, "ann", f"--as-of={far}"])
        assert out.exit_code == 2 and why in out.output, (far, out.output)
    empty = runner.invoke(main, ["lookup", "--root", lake.root + "/nothing", "ann"])
    assert empty.exit_code == 1 and "materialize user_profiles first" in empty.output
    assert f"lake root: {lake.root}/nothing" in empty.output
    # the root from the environment, as `serve` takes it; "now" is hours past the lake's last
    # hour: one warning per stream, not one per hour
    now = runner.invoke(main, ["lookup", "ann"], env={"CLICKLAKE_ROOT": lake.root})
    assert now.exit_code == 0, now.output
    warnings = [line for line in now.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("hours from" in w for w in warnings), warnings


def _count_before(names: list, ms, imp, asked: str | None, t: int) -> tuple[int, int]:
    """(impressions, clicks) of the events of segment `asked` ("" for None) strictly before t."""
    mine = [j for j in range(len(names)) if names[j] == (asked or "") and ms[j] < t]
    return sum(imp[mine]), len(mine) - sum(imp[mine])


@pytest.mark.parametrize("native", [True, False], ids=["c-walk", "numpy"])
def test_segment_counts_of_an_hours_own_impressions_match_a_count(monkeypatch, native):
    # The instants are the first events (a labeled hour): the search-free path, ties included
    # (numpy; the C walk when built).
    monkeypatch.setattr(hashtables, "NATIVE", native and hashtables.NATIVE)
    rng = np.random.default_rng(0)
    f = 1000 * HOUR_MS
    for trial in range(200):
        n, nc = int(rng.integers(1, 40)), int(rng.integers(0, 20))
        t = np.sort(f + rng.integers(0, HOUR_MS if trial % 3 else 50, n))
        c_ms = np.sort(f + rng.integers(0, HOUR_MS, nc))
        words = [f"s{i}" for i in range(int(rng.integers(1, 6)))]
        asked = [None if rng.random() < 0.1 else words[rng.integers(len(words))] for _ in range(n)]
        q = pa.array(asked, pa.string())
        seg = pa.concat_arrays([q.fill_null(""), pa.array(
            [words[rng.integers(len(words))] for _ in range(nc)], pa.string())])
        ms = np.concatenate([t, c_ms])
        imp = np.r_[np.ones(n, np.int64), np.zeros(nc, np.int64)]
        got_i, got_c = segments._kind_as_of(None, (seg, ms, imp, 1 - imp), q, t, f)
        names = seg.to_pylist()
        for i in range(n):
            assert (got_i[i], got_c[i]) == _count_before(names, ms, imp, asked[i], t[i]), trial


@pytest.mark.parametrize("native", [True, False], ids=["c-walk", "numpy"])
def test_segment_counts_at_other_instants_match_a_count(monkeypatch, native):
    """Instants that are not the hour's own events (the searches), some at an event's very
    millisecond: only events strictly before count."""
    monkeypatch.setattr(hashtables, "NATIVE", native and hashtables.NATIVE)
    rng = np.random.default_rng(1)
    f = 1000 * HOUR_MS
    for trial in range(200):
        ne, n = int(rng.integers(0, 30)), int(rng.integers(1, 20))
        ms = np.sort(f + rng.integers(0, HOUR_MS if trial % 3 else 50, ne))
        words = [f"s{i}" for i in range(int(rng.integers(1, 5)))]
        seg = pa.array([words[rng.integers(len(words))] for _ in range(ne)], pa.string())
        imp = rng.integers(0, 2, ne)
        # half the instants on an event's millisecond, the rest anywhere in the hour
        t = np.sort(np.where(rng.random(n) < 0.5, ms[rng.integers(0, ne, n)] if ne else f,
                             f + rng.integers(1, HOUR_MS, n)))
        asked = [None if rng.random() < 0.1 else words[rng.integers(len(words))] for _ in range(n)]
        got_i, got_c = segments._kind_as_of(None, (seg, ms, imp, 1 - imp),
                                             pa.array(asked, pa.string()), t, f)
        names = seg.to_pylist()
        for i in range(n):
            assert (got_i[i], got_c[i]) == _count_before(names, ms, imp, asked[i], t[i]), trial


def test_a_raw_hour_never_built_is_a_gap_the_chains_refuse(tmp_path):
    """Raw hour 2 never built (deleted here), hours after it built: a snapshot, or the segment
    profile reading it, built over it would lack its events for good, and stay so once it is
    built (nothing refolds them). Before, it was read as an empty hour and the runs passed."""
    store = _raw_lake(tmp_path)
    _materialize(store, H0)
    _materialize(store, H0 + HOUR_MS)
    store.delete(raw.raw_key("clicks", H0 + 2 * HOUR_MS))
    for hour, asset in ((H0 + 3 * HOUR_MS, "user_profiles"), (H0 + 2 * HOUR_MS, "segment_profiles")):
        result = dg.materialize(profile_assets, partition_key=hour_partition_key(hour),
                                selection=[asset], raise_on_error=False,
                                resources={"lake": LakeResource(root=store.root)})
        assert not result.success
        [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        message = failure.step_failure_data.user_failure_data.description
        assert "raw_clicks 2025-11-25-02:00, never materialized" in message, message
        assert not store.exists((profiles.snapshot_key if asset == "user_profiles"
                                 else segments.segment_key)(hour))
    # the frontier is not a gap: a segment profile of the hour after the last raw one builds
    last = HOURS[-1] + HOUR_MS
    assert dg.materialize(profile_assets, partition_key=hour_partition_key(last),
                          selection=["segment_profiles"],
                          resources={"lake": LakeResource(root=store.root)}).success


def test_a_segment_profile_after_a_gap_counts_the_gaps_hours_from_raw(tmp_path):
    """Segment profiles of hours 1 to 4 never built, hour 5 asked for: its 24 h window took the
    missing hours as empty (2 impressions where the lake holds 6, nothing said). They are now
    counted from their raw hours, as user_profiles folds a gap: the same profile as built hour
    by hour."""
    imps = [_imp(10 + i, H0 + h * HOUR_MS + 7 * M * (i + 1), user, camp, "a.com", "8.8.8.8", 0.1)
            for i, (h, user, camp) in enumerate([(0, "ann", "c1"), (3, "bob", "c2"),
                                                 (3, "ann", "c1"), (4, "cy", "c1"),
                                                 (5, "ann", "c2"), (5, "bob", "c2")])]
    clks = [_clk(10, H0 + 4 * HOUR_MS + 40 * M, "cy", "c1", "i13")]

    def lake(name: str) -> Store:
        store = Store(str(tmp_path / name))
        for h in range(H0, H0 + 6 * HOUR_MS, HOUR_MS):
            for rows, spec, stream in ((imps, IMPRESSIONS, "impressions"),
                                       (clks, CLICKS, "clicks")):
                part = [r for r in rows if h <= r["ts"] < h + HOUR_MS]
                store.write_parquet(raw.raw_key(stream, h), _table(part, spec))
        return store

    def build(store: Store, first: int, last: int) -> dg.ExecuteInProcessResult:
        return dg.materialize(profile_assets, selection=["segment_profiles"],
                              resources={"lake": LakeResource(root=store.root)},
                              tags=_span(first, last))

    gapped, whole = lake("gapped"), lake("whole")
    assert build(gapped, H0, H0).success
    result = build(gapped, H0 + 5 * HOUR_MS, H0 + 5 * HOUR_MS)
    assert build(whole, H0, H0 + 5 * HOUR_MS).success
    [meta] = [{k: v.value for k, v in m.metadata.items()}
              for m in result.asset_materializations_for_node("segment_profiles")]
    assert (meta["gap_hours_from_raw"], meta["earlier_hours_found"]) == (4, 1)
    key = segments.segment_key(H0 + 5 * HOUR_MS)
    got = gapped.read_parquet(key)
    assert got.equals(whole.read_parquet(key))
    [glob] = got.filter(pc.equal(got["kind"], "global")).to_pylist()
    assert (glob["impressions_24h"], glob["clicks_24h"]) == (6, 1)
    for h in range(1, 5):  # the gap's hours are counted, not built
        assert not gapped.exists(segments.segment_key(H0 + h * HOUR_MS))


def test_a_chain_built_out_of_order_starts_at_the_lakes_history(tmp_path):
    """Hour 2's snapshot built before hours 0 and 1 (out of order, or rerun once retention
    deleted the snapshots before it) restarted history at hour 2: ann's impressions of hours 0
    and 1 were gone from it and every later snapshot. It folds them from raw now."""
    ordered, shuffled = _raw_lake(tmp_path / "ordered"), _raw_lake(tmp_path / "shuffled")
    for h in (H0, H0 + HOUR_MS, H0 + 2 * HOUR_MS):
        _materialize(ordered, h)
    meta2 = _materialize(shuffled, H0 + 2 * HOUR_MS)
    assert meta2["user_profiles"]["gap_hours_refolded"] == 2
    key = profiles.snapshot_key(H0 + 2 * HOUR_MS)
    assert shuffled.read_parquet(key).equals(ordered.read_parquet(key))


def _with_a_late_impression(store: Store, hour: int) -> None:
    """Raw `hour` rebuilt with one more impression (a file landed late, within the lateness)."""
    key = raw.raw_key("impressions", hour)
    table = store.read_parquet(key)
    late = table.slice(0, 1).set_column(0, table.schema.field(0), pa.array(["late-1"]))
    store.write_parquet(key, pa.concat_tables([table, late]))


def test_rebuilding_an_hour_refolds_the_snapshots_after_it(tmp_path):
    """Raw hour 1 rebuilt with a late impression after snapshots 0..26 were built: rebuilding
    hour 1 left snapshots 2.. folded on the old hour 1 (one impression short) and Dagster showed
    them fresh. They are folded again, each with a materialization of its own; in a backfill
    (whose later runs fold them) they are named stale instead."""
    scratch, rebuilt = _raw_lake(tmp_path / "scratch"), _raw_lake(tmp_path / "rebuilt")
    last = HOURS[-1]
    chain = [H0, H0 + HOUR_MS, last]  # 2..25 a gap, folded by the snapshot of 26
    for h in chain:
        _materialize(rebuilt, h)
    _with_a_late_impression(scratch, H0 + HOUR_MS)
    _with_a_late_impression(rebuilt, H0 + HOUR_MS)
    for h in chain:
        _materialize(scratch, h)
    result = dg.materialize(profile_assets, partition_key=hour_partition_key(H0 + HOUR_MS),
                            resources={"lake": LakeResource(root=rebuilt.root)})
    refolded = {m.partition: m.metadata["refolded_after"].value
                for m in result.asset_materializations_for_node("user_profiles")
                if "refolded_after" in m.metadata}
    assert refolded == {hour_partition_key(last): hour_partition_key(H0 + HOUR_MS)}
    assert "labeled_hours_on_old_snapshots" not in next(  # none built here
        m.metadata for m in result.asset_materializations_for_node("user_profiles")
        if m.partition == hour_partition_key(H0 + HOUR_MS))
    for h in chain:
        key = profiles.snapshot_key(h)
        assert rebuilt.read_parquet(key).equals(scratch.read_parquet(key)), h

    _with_a_late_impression(rebuilt, H0)  # again, hour 0, in a backfill run
    result = dg.materialize(profile_assets, partition_key=hour_partition_key(H0),
                            resources={"lake": LakeResource(root=rebuilt.root)},
                            tags={"dagster/backfill": "b1"})
    [meta] = [m.metadata for m in result.asset_materializations_for_node("user_profiles")]
    assert meta["later_snapshots_stale"].value == (
        "2 snapshots from 2025-11-25-01:00 to 2025-11-26-02:00: rematerialize user_profiles "
        "from 2025-11-25-01:00 (and what reads them)")


def test_a_snapshot_folds_raw_when_the_hours_tiles_predate_its_raw(tmp_path):
    """Raw hour 1 rebuilt (a late file landed) and then the snapshots from hour 1, but not its
    tiles: the snapshot folded the old tiles, and the chain after it lacked the late events."""
    from clicklake.assets.raw import raw_assets
    from clicklake.platform.simulate import generate

    start = 1_795_478_400_000  # 2026-11-24T00:00Z
    lake = LakeResource(root=str(tmp_path))
    store = lake.store()
    generate(store, start_ms=start, hours=4, users=80, seed=5)
    late = sorted(store.list(landing.hour_prefix("impressions", start + HOUR_MS)))[3]
    data = store.read_bytes(late)
    store.delete(late)  # not landed yet when the lake is first built
    hours = {"dagster/asset_partition_range_start": hour_partition_key(start),
             "dagster/asset_partition_range_end": hour_partition_key(start + 3 * HOUR_MS)}
    snaps = [a for a in profile_assets if a.key.path == ["user_profiles"]]
    with dg.instance_for_test() as instance:
        for group in (raw_assets, profile_assets):
            assert dg.materialize(group, tags=hours, resources={"lake": lake},
                                  instance=instance).success
        store.write_bytes(late, data)
        assert dg.materialize(raw_assets, partition_key=hour_partition_key(start + HOUR_MS),
                              resources={"lake": lake}, instance=instance).success
        assert dg.materialize(snaps, partition_key=hour_partition_key(start + HOUR_MS),
                              resources={"lake": lake}, instance=instance).success
    raw_total = sum(store.read_parquet(raw.raw_key("impressions", start + i * HOUR_MS)).num_rows
                    for i in range(3))
    snap = store.read_parquet(profiles.snapshot_key(start + 2 * HOUR_MS))
    assert sum(snap["impressions"].to_pylist()) == raw_total


def test_a_tile_that_read_raw_before_its_rebuild_is_stale_however_late_it_recorded(
        tmp_path, monkeypatch):
    """A tiles run read raw hour 1, then a raw rebuild (a late file) recorded, then the tiles run
    recorded: compared by the times they recorded, the tiles looked newer than raw and the
    snapshot folded them, missing the late file's events in every snapshot after."""
    from clicklake.assets import profiles as profile_module
    from clicklake.assets.raw import raw_assets
    from clicklake.platform.simulate import generate

    start = 1_795_478_400_000  # 2026-11-24T00:00Z
    h1 = start + HOUR_MS
    lake = LakeResource(root=str(tmp_path))
    store = lake.store()
    generate(store, start_ms=start, hours=4, users=80, seed=5)
    late = sorted(store.list(landing.hour_prefix("impressions", h1)))[3]
    data = store.read_bytes(late)
    store.delete(late)
    hours = {"dagster/asset_partition_range_start": hour_partition_key(start),
             "dagster/asset_partition_range_end": hour_partition_key(start + 3 * HOUR_MS)}
    tile_asset = [a for a in profile_assets if a.key.path == ["user_hour_tiles"]]
    snaps = [a for a in profile_assets if a.key.path == ["user_profiles"]]
    with dg.instance_for_test() as instance:
        for group in (raw_assets, profile_assets):
            assert dg.materialize(group, tags=hours, resources={"lake": lake},
                                  instance=instance).success
        old_raw = {s: raw.read_raw(store, s, h1) for s in ("impressions", "clicks")}
        read_at = profile_module._clock()  # the tiles run reads the old raw here ...
        store.write_bytes(late, data)
        assert dg.materialize(raw_assets, partition_key=hour_partition_key(h1),
                              resources={"lake": lake}, instance=instance).success
        with monkeypatch.context() as m:  # ... and records after the raw rebuild did
            m.setattr(profile_module, "_clock", lambda: read_at)
            m.setattr(profile_module, "_raw", lambda _s, stream, *_a: old_raw[stream])
            assert dg.materialize(tile_asset, partition_key=hour_partition_key(h1),
                                  resources={"lake": lake}, instance=instance).success
        run = dg.materialize(snaps, partition_key=hour_partition_key(h1),
                             resources={"lake": lake}, instance=instance)
    (meta,) = [m.metadata for m in run.asset_materializations_for_node("user_profiles")
               if m.partition == hour_partition_key(h1)]
    assert meta["stale_tiles_folded_from_raw"].value == hour_partition_key(h1)
    raw_total = sum(store.read_parquet(raw.raw_key("impressions", start + i * HOUR_MS)).num_rows
                    for i in range(3))
    snap = store.read_parquet(profiles.snapshot_key(start + 2 * HOUR_MS))
    assert sum(snap["impressions"].to_pylist()) == raw_total


def _lake_with_a_late_file(tmp_path, hours: int):
    """A generated lake of `hours` hours whose 4th impressions file of hour 1 is held back, to
    land late: (lake, store, the hours, (its key, its bytes))."""
    from clicklake.platform.simulate import generate

    start = 1_795_478_400_000
    hs = [start + i * HOUR_MS for i in range(hours)]
    lake = LakeResource(root=str(tmp_path))
    store = lake.store()
    generate(store, start_ms=start, hours=hours, users=80, seed=5)
    late = sorted(store.list(landing.hour_prefix("impressions", hs[1])))[3]
    data = store.read_bytes(late)
    store.delete(late)
    return lake, store, hs, (late, data)


def _dies_writing(dying_key: str, message: str):
    """`Store.write_parquet` as a run dying at the write of `dying_key` sees it."""
    real = Store.write_parquet

    def write(self, key, table, *args, **kwargs):
        if key == dying_key:
            raise ConnectionError(message)
        return real(self, key, table, *args, **kwargs)

    return write


def _span(first: int, last: int) -> dict:
    return {"dagster/asset_partition_range_start": hour_partition_key(first),
            "dagster/asset_partition_range_end": hour_partition_key(last)}


def _profile_asset(name: str) -> list:
    return [a for a in profile_assets if a.key.path == [name]]


@pytest.mark.parametrize("backfill", [False, True])
def test_a_refold_that_died_part_way_is_finished_by_the_chains_next_run(tmp_path, monkeypatch,
                                                                         backfill):
    """Rebuilding hour 1 refolds snapshots 2 and 3; a run that died writing 3 left it on the
    old chain (129 lifetime impressions where raw has 134) and nothing said so. The refold
    marks its start in the lake first and clears it once done; the chain's next run (here the
    next hour's) finds the mark and folds the rest again before its own hour. A backfill's run
    (as the automation's are) folded on the stale snapshot instead, and said nothing."""
    import pyarrow.compute as pc

    from clicklake.assets.raw import raw_assets

    lake, store, hs, (late, data) = _lake_with_a_late_file(tmp_path, 5)
    first4 = _span(hs[0], hs[3])
    pick, tiles_asset = _profile_asset("user_profiles"), _profile_asset("user_hour_tiles")

    def lifetime(h):
        return pc.sum(store.read_parquet(profiles.snapshot_key(h))["impressions"]).as_py()

    def raw_total(h):
        return sum(raw.read_raw(store, "impressions", x).num_rows for x in hs if x <= h)

    with dg.instance_for_test() as instance:
        res = {"resources": {"lake": lake}, "instance": instance}
        for group in (raw_assets, profile_assets):
            assert dg.materialize(group, tags=first4, **res).success
        store.write_bytes(late, data)
        one = {"partition_key": hour_partition_key(hs[1]), **res}
        assert dg.materialize(raw_assets, **one).success
        assert dg.materialize(tiles_asset, **one).success
        real = Store.write_parquet
        dies_at_the_last = _dies_writing(profiles.snapshot_key(hs[3]),
                                         "the run died refolding the last snapshot")
        monkeypatch.setattr(Store, "write_parquet", dies_at_the_last)
        assert not dg.materialize(pick, raise_on_error=False, **one).success
        monkeypatch.setattr(Store, "write_parquet", real)
        assert lifetime(hs[2]) == raw_total(hs[2]) and lifetime(hs[3]) < raw_total(hs[3])
        # marked from the run's own hour: its rewritten file's record is the old one still
        assert profiles.pending_refold(store) == hs[1]
        # A rerun of the stale hour itself that dies too leaves the mark for the next run.
        monkeypatch.setattr(Store, "write_parquet", dies_at_the_last)
        again = {"partition_key": hour_partition_key(hs[3]), **res}
        assert not dg.materialize(pick, raise_on_error=False, **again).success
        monkeypatch.setattr(Store, "write_parquet", real)
        assert profiles.pending_refold(store) == hs[1]
        nxt = {"partition_key": hour_partition_key(hs[4]), **res}
        assert dg.materialize(raw_assets, **nxt).success
        assert dg.materialize(tiles_asset, **nxt).success
        result = dg.materialize(pick, **nxt, **({"tags": {"dagster/backfill": "b1"}}
                                                 if backfill else {}))
        assert result.success
        assert [lifetime(h) for h in hs] == [raw_total(h) for h in hs]
        assert profiles.pending_refold(store) is None
        refolded = [e.materialization.partition for e in result.get_asset_materialization_events()]
        assert refolded == [hour_partition_key(h) for h in hs[1:]]


def test_a_resumed_refold_records_the_hours_the_dead_run_rewrote(tmp_path, monkeypatch):
    """Raw hour 1 was read early, so snapshots 1 on said `inputs_incomplete`; rebuilt once its
    window closed, the rerun of snapshot 1 died refolding snapshot 3. It had rewritten
    snapshot 1's file, but its record (and `inputs_incomplete`) stayed the old one, and the
    resumed refold started after it: every labeled hour from 2 on refused the snapshots until
    snapshot 1 was rerun by hand. The mark now starts at the run's own first hour."""
    import clicklake.assets.raw as raw_mod
    from clicklake.assets.raw import raw_assets

    lake, store, hs, (late, data) = _lake_with_a_late_file(tmp_path, 6)
    first5 = _span(hs[0], hs[4])
    pick, tiles_asset = _profile_asset("user_profiles"), _profile_asset("user_hour_tiles")
    with dg.instance_for_test() as instance:
        res = {"resources": {"lake": lake}, "instance": instance}
        assert dg.materialize(raw_assets, tags=first5, **res).success
        one = {"partition_key": hour_partition_key(hs[1]), **res}
        monkeypatch.setattr(raw_mod, "_clock", lambda: (hs[1] + 30 * 60_000) / 1000)
        assert dg.materialize(raw_assets, **one).success  # read early, inside its hour
        monkeypatch.undo()
        assert dg.materialize(profile_assets, tags=first5, **res).success
        store.write_bytes(late, data)
        assert dg.materialize(raw_assets, **one).success
        assert dg.materialize(tiles_asset, **one).success
        real = Store.write_parquet
        dies_at_3 = _dies_writing(profiles.snapshot_key(hs[3]), "the run died refolding snapshot 3")
        monkeypatch.setattr(Store, "write_parquet", dies_at_3)
        assert not dg.materialize(pick, raise_on_error=False, **one).success
        monkeypatch.setattr(Store, "write_parquet", real)
        nxt = {"partition_key": hour_partition_key(hs[5]), **res}
        assert dg.materialize(raw_assets, **nxt).success
        assert dg.materialize(tiles_asset, **nxt).success
        assert dg.materialize(pick, **nxt).success
        said = {}
        for h in hs:
            [record] = instance.fetch_materializations(dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("user_profiles"),
                asset_partitions=[hour_partition_key(h)]), limit=1).records
            said[h] = record.asset_materialization.metadata["inputs_incomplete"].value
        assert said == dict.fromkeys(hs, "none")
