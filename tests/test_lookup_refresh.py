"""A long-lived lookup table (the API's time travel) sees a raw hour built after it first found
the hour missing, once refreshed (as the API's reload tick does): a refresh forgets the hours
it found missing, and what it read of a snapshot rewritten since. Its footers, each with its
file open, are bounded."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.platform import lookup, profiles, tiles
from clicklake.platform.lookup import LookupTable
from clicklake.platform.raw import Rules, build_raw_partition, write_raw_partition
from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, parse_instant

START = parse_instant("2026-11-24T00:00:00Z")


def _first_hour_built(tmp_path) -> Store:
    """Two generated hours, the first built (raw and its snapshot), the second not yet."""
    store = Store(str(tmp_path))
    generate(store, start_ms=START, hours=2, users=60, seed=2, clean=True)
    raw0 = {s: build_raw_partition(store, s, START, Rules()) for s in ("impressions", "clicks")}
    for part in raw0.values():
        write_raw_partition(store, part)
    tile = tiles.build_user_hour_tiles(raw0["impressions"].table, raw0["clicks"].table, START)
    store.write_parquet(profiles.snapshot_key(START), profiles.fold_snapshot(None, tile, START))
    return store


def test_a_raw_hour_built_after_it_was_found_missing_is_read_after_a_refresh(tmp_path):
    store = _first_hour_built(tmp_path)

    second = START + HOUR_MS
    raw1 = build_raw_partition(store, "impressions", second, Rules())
    user = raw1.table["user_id"][0].as_py()
    t = np.array([second + HOUR_MS - 1], dtype=np.int64)
    table = LookupTable(store)
    before = table.as_of(pa.array([user]), t)["impressions"][0].as_py()
    assert table.profile(user, int(t[0]))["impressions"] == before  # (one user: its index)
    assert ("impressions", second) in table.missing_raw_hours
    write_raw_partition(store, raw1)  # built now, after the table found it missing
    assert table.as_of(pa.array([user]), t)["impressions"][0].as_py() == before  # cached
    table.snapshot_hours(refresh=True)  # the API's reload tick: new hours are seen
    after = table.as_of(pa.array([user]), t)["impressions"][0].as_py()
    in_hour = sum(u == user for u in raw1.table["user_id"].to_pylist())
    assert in_hour > 0 and after == before + in_hour
    # by `profile` too (the API's ?as_of), which reads a per-user index of the hour: built on
    # the empty table, it kept answering without the hour's events
    assert table.profile(user, int(t[0]))["impressions"] == after


def _one_snapshot(store: Store) -> pa.Table:
    generate(store, start_ms=START, hours=1, users=60, seed=2, clean=True)
    raw = {s: build_raw_partition(store, s, START, Rules()) for s in ("impressions", "clicks")}
    tile = tiles.build_user_hour_tiles(raw["impressions"].table, raw["clicks"].table, START)
    snapshot = profiles.fold_snapshot(None, tile, START)
    store.write_parquet(profiles.snapshot_key(START), snapshot)
    return snapshot


def test_a_snapshot_rewritten_since_it_was_read_is_read_again_after_a_refresh(tmp_path):
    """A refold rewrites an hour's snapshot in place: the table forgets its footer (and the
    open file), its row groups and its columns, at the next refresh, not before."""
    store = Store(str(tmp_path))
    snapshot = _one_snapshot(store)
    user = snapshot["user_id"][0].as_py()
    table = LookupTable(store)
    assert list(table.snapshot_hours()) == [START]
    first = table.snapshot_rows(START, [user])["impressions"].to_pylist()
    columns = table.snapshot(START, ["user_id", "impressions"])
    footer = table._files[profiles.snapshot_key(START)][0]
    tenfold = snapshot.set_column(snapshot.schema.get_field_index("impressions"), "impressions",
                                  pc.multiply(snapshot["impressions"], 10))
    store.write_parquet(profiles.snapshot_key(START), tenfold)
    assert table.snapshot(START, ["user_id", "impressions"]) is columns  # cached until then
    table.snapshot_hours(refresh=True)
    assert footer.closed
    assert table.snapshot_rows(START, [user])["impressions"].to_pylist() == [first[0] * 10]
    assert table.snapshot(START, ["user_id", "impressions"])["impressions"].to_pylist() == [
        v * 10 for v in snapshot["impressions"].to_pylist()]
    kept = table._files[profiles.snapshot_key(START)][0]
    table.snapshot_hours(refresh=True)  # nothing rewritten: nothing forgotten
    assert table._files[profiles.snapshot_key(START)][0] is kept and not kept.closed


def test_the_footers_kept_are_bounded_and_those_dropped_are_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(lookup, "FOOTER_CACHE", 3)
    store = Store(str(tmp_path))
    snapshot = _one_snapshot(store)
    hours = [START + i * HOUR_MS for i in range(5)]
    for h in hours[1:]:  # the same rows under other hours' keys: five footers to read
        store.write_parquet(profiles.snapshot_key(h), snapshot)
    table = LookupTable(store)
    user = snapshot["user_id"][0].as_py()
    opened = []
    for h in hours:
        table.snapshot_rows(h, [user])
        opened.append(table._files[profiles.snapshot_key(h)][0])
    assert list(table._files) == [profiles.snapshot_key(h) for h in hours[2:]]
    assert [pf.closed for pf in opened] == [True, True, False, False, False]
    table.snapshot_rows(hours[2], [user])  # used again: the newest, the next to go is hours[3]
    table.snapshot_rows(hours[0], [user])
    assert list(table._files) == [profiles.snapshot_key(h) for h in (hours[4], hours[2], hours[0])]


def test_a_raw_hour_rebuilt_since_it_was_read_is_read_again_after_a_refresh(tmp_path):
    """A late file landed and its raw hour was rebuilt: a long-lived table (the API's time
    travel) kept answering from the rows it held until they fell out of its cache, while
    `clicklake lookup` read the new ones."""
    store = _first_hour_built(tmp_path)
    second = START + HOUR_MS
    raw1 = build_raw_partition(store, "impressions", second, Rules())
    write_raw_partition(store, raw1)
    user = raw1.table["user_id"][0].as_py()
    t = second + HOUR_MS - 1
    table = LookupTable(store)
    before = table.profile(user, t)["impressions"]
    assert table.as_of(pa.array([user]), np.array([t]))["impressions"][0].as_py() == before
    row = raw1.table.slice(0, 1).to_pylist()[0]  # the late file's impression of that user
    row.update(impression_id="late-1", ts=row["ts"] + dt.timedelta(seconds=1))
    raw1.table = pa.concat_tables([raw1.table, pa.Table.from_pylist([row],
                                                                    schema=raw1.table.schema)])
    write_raw_partition(store, raw1)  # rebuilt
    assert table.profile(user, t)["impressions"] == before  # held until a refresh
    table.snapshot_hours(refresh=True)
    assert table.profile(user, t)["impressions"] == before + 1
    assert table.as_of(pa.array([user]), np.array([t]))["impressions"][0].as_py() == before + 1
