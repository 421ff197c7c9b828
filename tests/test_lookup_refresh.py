"""A long-lived lookup table (the API's time travel) sees a raw hour built after it first found
the hour missing, once refreshed (as the API's reload tick does): a refresh forgets the hours
it found missing."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from clicklake.platform import profiles, tiles
from clicklake.platform.lookup import LookupTable
from clicklake.platform.raw import Rules, build_raw_partition, write_raw_partition
from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, parse_instant

START = parse_instant("2026-11-24T00:00:00Z")


def test_a_raw_hour_built_after_it_was_found_missing_is_read_after_a_refresh(tmp_path):
    store = Store(str(tmp_path))
    generate(store, start_ms=START, hours=2, users=60, seed=2, clean=True)
    raw0 = {s: build_raw_partition(store, s, START, Rules()) for s in ("impressions", "clicks")}
    for part in raw0.values():
        write_raw_partition(store, part)
    tile = tiles.build_user_hour_tiles(raw0["impressions"].table, raw0["clicks"].table, START)
    store.write_parquet(profiles.snapshot_key(START), profiles.fold_snapshot(None, tile, START))

    second = START + HOUR_MS
    raw1 = build_raw_partition(store, "impressions", second, Rules())
    user = raw1.table["user_id"][0].as_py()
    t = np.array([second + HOUR_MS - 1], dtype=np.int64)
    table = LookupTable(store)
    before = table.as_of(pa.array([user]), t)["impressions"][0].as_py()
    assert ("impressions", second) in table.missing_raw_hours
    write_raw_partition(store, raw1)  # built now, after the table found it missing
    assert table.as_of(pa.array([user]), t)["impressions"][0].as_py() == before  # cached
    table.snapshot_hours(refresh=True)  # the API's reload tick: new hours are seen
    after = table.as_of(pa.array([user]), t)["impressions"][0].as_py()
    in_hour = sum(u == user for u in raw1.table["user_id"].to_pylist())
    assert in_hour > 0 and after == before + in_hour
