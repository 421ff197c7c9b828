"""Online/offline consistency (DESIGN §4.4): the feature vector served online equals the labeled
dataset's row, impression by impression, with zero mismatches.

Two streams, each run through the batch flow (raw → profiles → segments → labeled hours):

- clean: every raw event is replayed through the online fold in event-time order, in small
  batches; before each impression exactly the events with ts < its time have been folded, and
  `OnlineFeatures.feature_inputs` → `compute_features` must equal its labeled row;
- messy (duplicates, malformed lines, late and future records): the real landing files are
  folded in arrival order, through the file path (verdicts, dedup, quarantine). Once every file
  that can still hold an accepted event of hour H has been folded (arrival < H + 1 h + lateness),
  each impression of H is read as of its own time, so the state also holds later events that the
  read must leave out, and clicks whose impression arrived after them.

Compared: every feature of `features.FEATURE_NAMES`, exact (NaN == NaN), except the spend-derived
ones, which must agree within 1e-9 (relative, absolute near 0): online and batch add the same
costs in a different order. Quarantine counts by reason must equal the raw partitions'.
"""

from __future__ import annotations

import math
from collections import Counter

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from clicklake.assets.serving import (
    CHECK_SAMPLE_USERS,
    online_matches_lookup,
    sample_users,
    serving_assets,
)
from clicklake.flow import run_flow
from clicklake.platform.events import SPECS
from clicklake.platform.features import CATEGORICAL, FEATURE_NAMES, compute_features
from clicklake.platform.labeled import labeled_key
from clicklake.platform.landing import parse_key
from clicklake.platform.lookup import LookupTable
from clicklake.platform.online import OnlineFeatures, SqliteState, fold_files, fold_rows
from clicklake.platform.raw import quarantine_key, raw_key
from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store
from clicklake.platform.tiles import ts_ms
from clicklake.platform.timeutil import HOUR_MS, parse_instant
from clicklake.resources.endpoint import LocalModelServer
from clicklake.resources.lake import LakeResource
from clicklake.resources.online_store import SqliteOnlineStore
from clicklake.resources.trainer import LocalTrainer

START = parse_instant("2026-11-20T00:00:00Z")
HOURS = 3
LABELED_HOURS = HOURS - 1  # the last hour has no next hour to label from


def _lake(tmp_path_factory, name: str, **gen) -> Store:
    root = str(tmp_path_factory.mktemp(name))
    store = Store(root)
    generate(store, start_ms=START, hours=HOURS, seed=5, **gen)
    run_flow({"lake": LakeResource(root=root), "trainer": LocalTrainer(),
              "endpoint": LocalModelServer(),
              "online_store": SqliteOnlineStore(path=f"{root}/unused-online.db")},
             START, HOURS, train=False)
    return store


@pytest.fixture(scope="module")
def clean_lake(tmp_path_factory) -> Store:
    return _lake(tmp_path_factory, "clean", users=300, clean=True)


@pytest.fixture(scope="module")
def messy_lake(tmp_path_factory) -> Store:
    return _lake(tmp_path_factory, "messy", users=1000, messy_scale=8.0)


def raw_rows(store: Store, stream: str) -> list[tuple]:
    """Raw rows of every hour as tuples in `SPECS[stream].fields` order (ts in epoch ms)."""
    t = pa.concat_tables([store.read_parquet(raw_key(stream, START + h * HOUR_MS))
                          for h in range(HOURS)])
    cols = [ts_ms(t[n]).tolist() if kind == "ts" else t[n].to_pylist()
            for n, kind in SPECS[stream].fields]
    return list(zip(*cols, strict=True))


def labeled_rows(store: Store) -> dict[str, dict]:
    t = pa.concat_tables([store.read_parquet(labeled_key(START + h * HOUR_MS))
                          for h in range(LABELED_HOURS)])
    return {r["impression_id"]: r for r in t.to_pylist()}


def mismatches(online: dict[str, np.ndarray], row: dict) -> list[str]:
    bad = []
    for name in FEATURE_NAMES:
        a, b = online[name][0], row[name]
        if name in CATEGORICAL:
            ok = a == b
        else:
            b = math.nan if b is None else b
            ok = (math.isnan(a) and math.isnan(b)) or a == b
            if not ok and "spend" in name:
                ok = abs(a - b) <= 1e-9 * max(1.0, abs(b))
        if not ok:
            bad.append(f"{name}: online {a!r} != labeled {b!r}")
    return bad


def test_event_time_replay_matches_labeled_rows(clean_lake, tmp_path):
    labeled = labeled_rows(clean_lake)
    events = sorted(((r[1], s, r) for s in SPECS for r in raw_rows(clean_lake, s)),
                    key=lambda e: e[0])
    state = SqliteState(str(tmp_path / "online.db"))
    online = OnlineFeatures(state)
    folded, batches, compared, failures = 0, 0, 0, {}
    for t, stream, imp in events:
        if stream != "impressions" or imp[0] not in labeled:
            continue
        batch: dict[str, list[tuple]] = {}
        while folded < len(events) and events[folded][0] < t:
            batch.setdefault(events[folded][1], []).append(events[folded][2])
            folded += 1
        for s, rows in batch.items():
            batches += 1
            assert fold_rows(state, s, rows, f"replay/{batches:06d}", max(r[1] for r in rows))
        vector = compute_features(online.feature_inputs(imp[2], imp[3], t, imp[5], imp[6],
                                                        domain=imp[4]))
        compared += 1
        bad = mismatches(vector, labeled[imp[0]])
        if bad:
            failures[imp[0]] = bad
    assert compared == len(labeled) > 200
    assert batches > 200  # small batches, not one big fold
    assert failures == {}


def test_arrival_order_fold_of_messy_files_matches_labeled_rows(messy_lake, tmp_path):
    store = messy_lake
    labeled = labeled_rows(store)
    impressions = [r for r in raw_rows(store, "impressions") if r[0] in labeled]
    keys = sorted(store.list("landing/"), key=parse_key)
    state = SqliteState(str(tmp_path / "online.db"))
    compared, failures = 0, {}
    for h in range(LABELED_HOURS):
        hour = START + h * HOUR_MS
        # Every accepted event with ts < t (t in this hour) arrives before hour + 2 h.
        fold_files(state, store, [k for k in keys if parse_key(k).arrival_ms < hour + 2 * HOUR_MS])
        online = OnlineFeatures(state)
        assert online.watermark_ms() > hour + HOUR_MS  # later events are folded too
        for imp in impressions:
            if hour <= imp[1] < hour + HOUR_MS:
                vector = compute_features(online.feature_inputs(imp[2], imp[3], imp[1], imp[5],
                                                                imp[6], domain=imp[4]))
                compared += 1
                bad = mismatches(vector, labeled[imp[0]])
                if bad:
                    failures[imp[0]] = bad
    assert compared == len(labeled) > 500
    assert failures == {}

    fold_files(state, store, keys)
    assert len(state.folded_files()) == len(keys)
    online_q: Counter = Counter()
    later_dups = 0
    for key, arrival, stats in state.folded_files():
        q = Counter(stats["quarantined"])
        if arrival >= START + HOURS * HOUR_MS:  # owned by raw partitions the flow did not build
            later_dups += q["duplicate"]
            continue
        online_q.update(q)
    raw_q: Counter = Counter()
    for s in SPECS:
        for h in range(HOURS):
            raw_q.update(store.read_parquet(quarantine_key(s, START + h * HOUR_MS))["reason"]
                         .to_pylist())
    # Duplicates belong to their event hour in raw, to their file online: compare totals.
    assert online_q["duplicate"] + later_dups == raw_q["duplicate"] > 20
    del online_q["duplicate"], raw_q["duplicate"]
    assert online_q == raw_q
    assert {"late", "future", "malformed", "bad_type"} <= set(raw_q)


def test_online_matches_lookup_check_passes_then_catches_a_tampered_state(messy_lake, tmp_path):
    """The asset check on the messy stream: the serving_lookup asset folds every landing file,
    sampled users' online profiles equal the lookup table's at the comparison instant; one extra
    click for a sampled user makes it fail."""
    lake = LakeResource(root=messy_lake.root)
    online = SqliteOnlineStore(path=str(tmp_path / "online.db"))
    result = dg.materialize(serving_assets, resources={"lake": lake, "online_store": online})
    assert result.success
    check = online_matches_lookup(lake=lake, online_store=online)
    assert check.passed, check.metadata
    assert check.metadata["compared_users"].value == CHECK_SAMPLE_USERS
    at = parse_instant(check.metadata["at"].value)
    assert START < at <= START + HOURS * HOUR_MS

    victim = sample_users(LookupTable(messy_lake), at)[0]
    assert fold_rows(online.state(), "clicks", [("tamper", at - 60_000, victim, "c-x", None)],
                     "tamper/1", at - 60_000)
    bad = online_matches_lookup(lake=lake, online_store=online)
    assert not bad.passed
    assert bad.metadata["mismatches"].value >= 2  # clicks, clicks_1h, ...
