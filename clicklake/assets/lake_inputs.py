"""Input hours an hourly asset reads from the lake's files must have been built: a partition never
materialized reads as an empty hour, and an output built on it would silently lack its events
(the lake then differs from a build from scratch, and nothing says so). Only gaps are refused:
hours before the lake's first raw hour are the history's start, and hours after its last are
the frontier (a backfill of hours up to H also targets segment profile H + 1, which reads raw
H + 1: built from what exists, it is built again by the automation once raw H + 1 is)."""

from __future__ import annotations

import dagster as dg

from clicklake.platform.profiles import snapshot_key
from clicklake.platform.raw import raw_key
from clicklake.platform.segments import segment_key
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import hour_partition_key


def raw_span(store: Store, prefix: str) -> tuple[int, int] | None:
    """The first and last hours of raw impressions in the lake (None: none yet)."""
    return store.hive_span(f"{prefix}/raw/impressions/")


_PROFILE_KEYS = {"user_profiles": snapshot_key, "segment_profiles": segment_key}


def require_built(store: Store, prefix: str, what: str, needs: list[tuple[str, int]],
                  span: tuple[int, int] | None = None) -> None:
    """Raise dg.Failure naming every input of `needs` — ("raw_<stream>", "user_profiles" or
    "segment_profiles", hour) — whose lake file is absent, but for hours outside the lake's raw
    hours (`span`, looked up when None)."""
    span = raw_span(store, prefix) if span is None else span
    missing = []
    for asset, hour in needs:
        if span is None or not span[0] <= hour <= span[1]:
            continue
        key = (_PROFILE_KEYS[asset](hour, prefix) if asset in _PROFILE_KEYS
               else raw_key(asset.removeprefix("raw_"), hour, prefix))
        if not store.exists(key):
            missing.append(f"{asset} {hour_partition_key(hour)}")
    if missing:
        retention = (" (a user snapshot may also have been deleted by the snapshot retention, "
                     "CLICKLAKE_RETENTION_DAYS: see docs/deploy.md on backfills longer "
                     "than it)" if any(m.startswith("user_profiles") for m in missing) else "")
        raise dg.Failure(f"{what} reads {', '.join(missing)}, never materialized{retention}: "
                         "built without them it would lack their events for good (the lake "
                         "would differ from a build from scratch). Materialize them first.")
