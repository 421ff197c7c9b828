"""Build tiny landing zones by hand for tests: events in Firehose files at chosen arrival times."""

from __future__ import annotations

import sqlite3

import orjson

from clicklake.platform import landing
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import parse_instant

H = parse_instant("2026-11-25T13:00:00Z")  # a fixed partition hour used across tests
MIN = 60_000


def impression(i: str, ts: int, user: str = "u1", campaign: str = "c1", **extra) -> bytes:
    return orjson.dumps({"impression_id": i, "ts": ts, "user_id": user, "campaign_id": campaign,
                         **extra})


def click(i: str, ts: int, imp: str | None, user: str = "u1", campaign: str = "c1") -> bytes:
    return orjson.dumps({"click_id": i, "ts": ts, "impression_id": imp, "user_id": user,
                         "campaign_id": campaign})


def prediction(i: str, ts: int, score, user: str = "u1") -> bytes:
    return orjson.dumps({"prediction_id": i, "ts": ts, "user_id": user, "model": "m1",
                         "score": score})


def land(store: Store, stream: str, arrival_ms: int, lines: list[bytes], tag: str = "0") -> str:
    key = landing.firehose_key(stream, arrival_ms, f"00000000-0000-4000-8000-{tag.zfill(12)}")
    landing.write_file(store, key, lines)
    return key


def old_layout_online_db(path: str) -> None:
    """An online SQLite store as an older clicklake wrote it (millisecond counter rows)."""
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE counters (tbl TEXT NOT NULL, pk TEXT NOT NULL, sk INTEGER NOT NULL,
            imp INTEGER NOT NULL, clk INTEGER NOT NULL, PRIMARY KEY (tbl, pk, sk)) WITHOUT ROWID;
        INSERT INTO counters VALUES ('seg_e', 'global', 1, 1, 0);""")
    old.close()
