"""`StateStore` in one SQLite file (WAL): the embedded default, no server and no account.

A commit is one `BEGIN IMMEDIATE` transaction holding its files' records and every update, so a
process killed mid-batch leaves each file either wholly folded or not at all. WAL lets readers
(the REST API in another process) read while a fold writes. `synchronous=NORMAL` may lose the
last commits on a power cut, but never half of one: a lost file record goes with its updates, and
the file is simply folded again.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence

import orjson

from clicklake.platform.online.state import Commit, StateStore, chunks

# No index on hour / sk: each would double the cost of every write, and retention only has work
# to do when the horizon crosses an hour (`purge` remembers its last bounds in `meta`), when one
# scan of the namespace or table is cheap.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (ns TEXT NOT NULL, key TEXT NOT NULL, hour INTEGER NOT NULL,
    value BLOB NOT NULL, PRIMARY KEY (ns, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (tbl TEXT NOT NULL, pk TEXT NOT NULL, sk INTEGER NOT NULL,
    imp INTEGER NOT NULL, clk INTEGER NOT NULL, PRIMARY KEY (tbl, pk, sk)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
    arrival INTEGER NOT NULL, stats BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS files_arrival ON files (arrival);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
DROP INDEX IF EXISTS docs_hour;
DROP INDEX IF EXISTS counters_sk;
"""
_IN = 500  # keys per IN (...) query, well under SQLite's variable limit


class SqliteState(StateStore):
    def __init__(self, path: str):
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        # Autocommit mode: transactions are explicit, so a commit is exactly one BEGIN..COMMIT.
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                    timeout=60)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        # A fold touches rows all over the file: keep the hot pages in memory.
        self.conn.execute("PRAGMA cache_size=-262144")
        self.conn.execute("PRAGMA mmap_size=1073741824")
        self.conn.execute("PRAGMA wal_autocheckpoint=10000")
        self.conn.executescript(_SCHEMA)
        self._wm: tuple[int, int | None] | None = None  # (data_version, watermark) when read

    def _changed(self) -> None:
        self._wm = None

    def __repr__(self) -> str:
        return f"SqliteState({self.path!r})"

    def get_docs(self, ns: str, keys: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        if len(keys) == 1:  # the REST path: one prepared primary-key read
            row = self.conn.execute("SELECT value FROM docs WHERE ns=? AND key=?",
                                    (ns, keys[0])).fetchone()
            return {keys[0]: row[0]} if row else out
        for part in chunks(list(dict.fromkeys(keys)), _IN):
            q = f"SELECT key, value FROM docs WHERE ns=? AND key IN ({','.join('?' * len(part))})"
            out.update(self.conn.execute(q, (ns, *part)).fetchall())
        return out

    def sum_counters(self, table: str, pk: str, lo: int, hi: int) -> tuple[int, int]:
        row = self.conn.execute(
            "SELECT coalesce(sum(imp), 0), coalesce(sum(clk), 0) FROM counters "
            "WHERE tbl=? AND pk=? AND sk>=? AND sk<?", (table, pk, lo, hi)).fetchone()
        return int(row[0]), int(row[1])

    def cache_token(self) -> object | None:
        # Unchanged by this connection's own commits, changed by any other connection's.
        return (id(self.conn), self.conn.execute("PRAGMA data_version").fetchone()[0])

    def sum_ranges(self, ranges: Sequence[tuple[str, str, int, int]]) -> list[tuple[int, int]]:
        """Every range in one statement (one round trip through the SQLite VM)."""
        q = " UNION ALL ".join(
            f"SELECT {i}, coalesce(sum(imp), 0), coalesce(sum(clk), 0) FROM counters "
            "WHERE tbl=? AND pk=? AND sk>=? AND sk<?" for i in range(len(ranges)))
        rows = self.conn.execute(q, [v for r in ranges for v in r]).fetchall()
        rows.sort()
        return [(int(r[1]), int(r[2])) for r in rows]

    def is_folded(self, file_key: str) -> bool:
        return self.conn.execute("SELECT 1 FROM files WHERE key=?", (file_key,)).fetchone() is not None

    def folded(self, file_keys: Sequence[str]) -> set[str]:
        out: set[str] = set()
        for part in chunks(list(dict.fromkeys(file_keys)), _IN):
            q = f"SELECT key FROM files WHERE key IN ({','.join('?' * len(part))})"
            out.update(k for (k,) in self.conn.execute(q, part))
        return out

    def commit(self, commit: Commit) -> bool:
        self._changed()
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            if self.folded([f.key for f in commit.files]):
                c.execute("ROLLBACK")
                return False
            for ns, docs in commit.docs.items():
                puts = [(ns, k, h, v) for k, (h, v) in docs.items() if v is not None]
                dels = [(ns, k) for k, (_, v) in docs.items() if v is None]
                c.executemany("INSERT OR REPLACE INTO docs VALUES (?,?,?,?)", puts)
                c.executemany("DELETE FROM docs WHERE ns=? AND key=?", dels)
            for table, cells in commit.counters.items():
                c.executemany(
                    "INSERT INTO counters VALUES (?,?,?,?,?) ON CONFLICT (tbl, pk, sk) DO UPDATE "
                    "SET imp = imp + excluded.imp, clk = clk + excluded.clk",
                    [(table, pk, sk, d[0], d[1]) for (pk, sk), d in cells.items()
                     if d[0] or d[1]])
            c.executemany("INSERT INTO files (key, arrival, stats) VALUES (?,?,?)",
                          [(f.key, f.arrival_ms, orjson.dumps(f.stats)) for f in commit.files])
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return True

    def watermark_ms(self) -> int | None:
        # `PRAGMA data_version` changes when another connection commits (this one's own commits
        # reset the cache in `_changed`), so the max(arrival) query runs once per fold, not per
        # read.
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if self._wm is not None and self._wm[0] == version:
            return self._wm[1]
        row = self.conn.execute("SELECT max(arrival) FROM files").fetchone()
        wm = None if row[0] is None else int(row[0])
        self._wm = (version, wm)
        return wm

    def purge(self, docs_before: dict[str, int], counters_before: dict[str, int]) -> int:
        bounds = orjson.dumps([sorted(docs_before.items()), sorted(counters_before.items())])
        row = self.conn.execute("SELECT v FROM meta WHERE k='purged'").fetchone()
        if row is not None and bytes(row[0]) == bounds:
            return 0  # the horizon has not moved since: nothing new to drop
        self._changed()
        self._fold_cache = None  # the fold's decoded documents may be gone
        c = self.conn
        n = 0
        c.execute("BEGIN IMMEDIATE")
        try:
            for ns, hour in docs_before.items():
                n += c.execute("DELETE FROM docs WHERE ns=? AND hour<?", (ns, hour)).rowcount
            for table, sk in counters_before.items():
                n += c.execute("DELETE FROM counters WHERE tbl=? AND sk<?", (table, sk)).rowcount
            c.execute("INSERT OR REPLACE INTO meta VALUES ('purged', ?)", (bounds,))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return n

    def folded_files(self) -> list[tuple[str, int, dict]]:
        rows = self.conn.execute("SELECT key, arrival, stats FROM files ORDER BY seq").fetchall()
        return [(k, int(a), orjson.loads(s)) for k, a, s in rows]

    def dump(self) -> dict:
        docs = self.conn.execute("SELECT ns, key, hour, value FROM docs ORDER BY ns, key").fetchall()
        counters = self.conn.execute(
            "SELECT tbl, pk, sk, imp, clk FROM counters WHERE imp != 0 OR clk != 0 "
            "ORDER BY tbl, pk, sk").fetchall()
        files = self.conn.execute("SELECT key, arrival, stats FROM files ORDER BY key").fetchall()
        return {"docs": [(ns, k, h, bytes(v)) for ns, k, h, v in docs],
                "counters": [tuple(r) for r in counters],
                "files": [(k, a, bytes(s)) for k, a, s in files]}

    def clear(self) -> None:
        self._changed()
        self._fold_cache = None  # the fold's decoded documents may be gone
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        for table in ("docs", "counters", "files", "meta"):
            c.execute(f"DELETE FROM {table}")
        c.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()
