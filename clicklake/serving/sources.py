"""Where the API gets feature inputs and profiles: any object with the `OnlineFeatures` read API.

The online store (`clicklake.platform.online`) is the production source: seconds fresh, one key
read per request. `LakeFeatures` answers the same questions from the lake alone (the time-travel
lookup table, segment profiles and raw predictions, through `labeled.lake_feature_inputs`, the
exact path the labeled dataset takes), so the API runs on a lake without an online store, and a
request for a past instant gets exactly the features the training row got.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from clicklake.platform.events import TS
from clicklake.platform.labeled import lake_feature_inputs
from clicklake.platform.lookup import LookupTable, SnapshotUnavailable
from clicklake.platform.online.state import StaleLayout
from clicklake.platform.profiles import snapshot_key
from clicklake.platform.segments import segment_key
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, iso


@runtime_checkable
class OnlineFeatures(Protocol):
    def feature_inputs(self, user_id: str, campaign_id: str, ts_ms: int, ip: str | None,
                       user_agent: str | None, domain: str | None = None
                       ) -> dict[str, np.ndarray]: ...

    def profile(self, user_id: str, ts_ms: int, lists: bool = True) -> dict | None: ...

    def watermark_ms(self) -> int | None: ...

    def check_layout(self) -> None:
        """Raise `StaleLayout` when a newer clicklake has written the store since it opened."""


def _latest_hour(store: Store, prefix: str) -> int | None:
    """The latest hour with a partition file under `prefix` (Hive `dt=/hour=` keys)."""
    latest = store.hive_latest(prefix, 1)
    return latest[-1] if latest else None


class LakeFeatures:
    """`OnlineFeatures` over the lake.

    The watermark is the end of the latest hour with both a user snapshot and a segment profile:
    the lake knows every event before it. A request at or after the watermark is answered with
    the state as of the watermark (the impression's own time still drives hour of day, recency
    and score age), which is what "now" means for a lake that is refreshed hourly. A request
    before the watermark is exact time travel. State at the watermark cannot change until the
    lake does, so those answers are memoised per (user, campaign, ip, user agent) in a bounded
    LRU; `refresh()` re-reads the watermark and the profile files' versions, and drops every
    cache when either changed (a refold rewrites the snapshots of hours already built).
    """

    # ~8 KB an entry (some forty one-value arrays): 10 k is ~80 MB a worker. 100 k, as before,
    # was ~750 MB a worker, filled within the hour by the traffic's (ip, user agent) variety.
    def __init__(self, store: Store, lake_prefix: str = "lake", cache_size: int = 10_000):
        self.store, self.lake_prefix, self.cache_size = store, lake_prefix, cache_size
        self._lock = threading.Lock()  # LookupTable's caches are not thread-safe
        self._memo: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()
        self.lookup = LookupTable(store, lake_prefix)
        self._watermark = self._read_watermark()
        self._versions = self._read_versions(self._watermark)

    def _read_watermark(self) -> int | None:
        p = self.lake_prefix
        user = _latest_hour(self.store, f"{p}/profiles/user/")
        seg = _latest_hour(self.store, f"{p}/profiles/segment/")
        if user is None or seg is None:
            return None
        return min(user, seg) + HOUR_MS

    def _read_versions(self, watermark: int | None) -> dict:
        """(size, mtime) of the user snapshot and the segment profile the watermark's answers
        read (of the hour before it): two stats, not a listing of every snapshot kept at every
        reload tick. Read outside the lock, compared by `refresh`."""
        if watermark is None:
            return {}
        keys = (snapshot_key(watermark - HOUR_MS, self.lake_prefix),
                segment_key(watermark - HOUR_MS, self.lake_prefix))
        return {k: self.store.list_versions(k).get(k) for k in keys}

    def refresh(self) -> bool:
        """Re-read the watermark and the versions of the profiles it answers from; returns
        whether either changed (then every cache is dropped). The watermark alone missed a
        refold rewriting the latest snapshot: "now" kept answering from the old one while time
        travel saw the new. (A refold of older hours only is seen when the watermark moves.)"""
        watermark = self._read_watermark()
        versions = self._read_versions(watermark)
        with self._lock:
            if watermark == self._watermark and versions == self._versions:
                return False
            self._watermark, self._versions = watermark, versions
            self._memo.clear()
            self.lookup = LookupTable(self.store, self.lake_prefix)
        return True

    def watermark_ms(self) -> int | None:
        return self._watermark

    def check_layout(self) -> None:
        """Nothing to check: the lake's Parquet carries its schema, not a documents' layout."""

    def _state_t(self, ts_ms: int) -> int:
        return ts_ms if self._watermark is None else min(ts_ms, self._watermark)

    def feature_inputs(self, user_id: str, campaign_id: str, ts_ms: int, ip: str | None,
                       user_agent: str | None, domain: str | None = None
                       ) -> dict[str, np.ndarray]:
        with self._lock:
            # The instant and the key under the lock: a request that read the watermark before a
            # `refresh` waited here, then stored its answer at the old watermark in the new
            # cache, under a key without time, for the hour until the next move.
            t = self._state_t(ts_ms)
            at_watermark = self._watermark is not None and t == self._watermark
            key = (user_id, campaign_id, ip, user_agent, domain) if at_watermark else None
            if key is not None and key in self._memo:
                self._memo.move_to_end(key)
                inputs = self._memo[key]
            else:
                if not at_watermark and t < (start := self.lookup.history_start()):
                    # scored as a user with no history, while a profile at the same instant
                    # answered "before history": the lake cannot answer for it
                    raise SnapshotUnavailable(f"the lake's history starts at {iso(start)}")
                impression = pa.table({
                    "ts": pa.array([t], pa.int64()).cast(TS),
                    "user_id": pa.array([user_id], pa.string()),
                    "campaign_id": pa.array([campaign_id], pa.string()),
                    "ip": pa.array([ip], pa.string()),
                    "user_agent": pa.array([user_agent], pa.string()),
                    "domain": pa.array([domain], pa.string()),
                })
                inputs = lake_feature_inputs(self.store, impression, self.lake_prefix,
                                             self.lookup)
                if key is not None:
                    self._memo[key] = inputs
                    while len(self._memo) > self.cache_size:
                        self._memo.popitem(last=False)
        return {**inputs, "ts_ms": np.array([ts_ms], dtype=np.int64)}

    def profile(self, user_id: str, ts_ms: int, lists: bool = True) -> dict | None:
        """The user's profile as of min(ts, watermark), None when the user has no history then
        (without the per-campaign counts and domains unless `lists`). Raises
        `lookup.SnapshotUnavailable` when no snapshot can answer for that instant."""
        with self._lock:
            row = self.lookup.profile(user_id, self._state_t(ts_ms))
        if not lists:
            row = {k: v for k, v in row.items() if k not in ("campaigns", "domains")}
        return row if row["known"] else None


class LazyLakeFeatures:
    """The lake's features behind another source, made on first use (most servers never need
    them) and re-reading the lake's watermark at most every `refresh_s`. Call it to get them."""

    def __init__(self, store: Store, lake_prefix: str = "lake", refresh_s: float = 30.0):
        self.store, self.lake_prefix, self.refresh_s = store, lake_prefix, refresh_s
        self._lock = threading.Lock()
        self._features: LakeFeatures | None = None
        self._read_at = 0.0

    def __call__(self) -> LakeFeatures:
        with self._lock:
            if self._features is None:
                self._features = LakeFeatures(self.store, self.lake_prefix)
                self._read_at = time.monotonic()
            elif time.monotonic() - self._read_at > self.refresh_s:  # new lake hours since?
                self._features.refresh()
                self._read_at = time.monotonic()
            return self._features


def open_online_source(sqlite_path: str | None = None, dynamodb_table: str | None = None,
                       region: str | None = None) -> OnlineFeatures:
    """The online store's read API: a DynamoDB table when one is named, else the SQLite file
    (`sqlite_path`, else `CLICKLAKE_ONLINE_DB`, else the resource's default path)."""
    from clicklake.resources.online_store import DynamoDbOnlineStore, SqliteOnlineStore

    if dynamodb_table:
        features = DynamoDbOnlineStore(table_name=dynamodb_table, region=region).features()
        features.state.check_readable()  # documents of a newer clicklake: refused, not misread
        return features
    features = SqliteOnlineStore(path=sqlite_path).features()
    if getattr(features.state, "stale", False):  # its reads would fail on every request
        raise StaleLayout(f"{features.state.path} holds an older online state layout: run "
                          "serving_lookup once (the sensor's next run, or `clicklake demo`) to "
                          "rebuild it from the landing zone")
    features.state.check_readable()
    return features
