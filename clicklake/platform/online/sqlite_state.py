"""`StateStore` in one SQLite file (WAL): the embedded default, no server and no account.

A commit is one `BEGIN IMMEDIATE` transaction holding its files' records and every update, so a
process killed mid-batch leaves each file either wholly folded or not at all; it is refused
(`Conflict`) when any other connection committed after the batch began reading (a fold, a
retention purge, a rebuild: each costs a refold of the batch), so two fold runs side by side never
overwrite each other's updates. WAL lets readers
(the REST API in another process) read while a fold writes. `synchronous=NORMAL` may lose the
last commits on a power cut, but never half of one: a lost file record goes with its updates, and
the file is simply folded again.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Sequence

import orjson

from clicklake.platform.online.state import (
    DOCS_LAYOUT,
    Cell,
    Commit,
    Conflict,
    Fenced,
    StaleLayout,
    StateStore,
    canonical_log,
    check_docs_layout,
    chunks,
)

# No index on hour / sk: each would double the cost of every write, and retention only has work
# to do when the horizon crosses an hour (`purge` remembers its last bounds in `meta`), when one
# scan of the namespace or table is cheap. Marks lead with their hour: a range delete purges them.
#
# Documents and counter rows are ordinary rowid tables with a unique index on their key, not
# WITHOUT ROWID tables: a bot's document or a busy minute's event log runs to megabytes, and in a
# WITHOUT ROWID table such a row can become a divider key of the B-tree's inner pages, which
# SQLite then reads whole for every comparison against it: every other write slowed from 40 ms
# a commit to seconds (measured). The index holds the keys alone; the same fold and reads cost
# the same (measured). An older store is moved over by its first writer (`_rowid_tables`).
_TABLE_COLUMNS = {
    "docs": """(ns TEXT NOT NULL, key TEXT NOT NULL, hour INTEGER NOT NULL,
    value BLOB NOT NULL, UNIQUE (ns, key))""",
    "counters": """(tbl TEXT NOT NULL, pk TEXT NOT NULL, sk INTEGER NOT NULL,
    imp INTEGER NOT NULL, clk INTEGER NOT NULL, ilog TEXT NOT NULL, clog TEXT NOT NULL,
    UNIQUE (tbl, pk, sk))""",
}
_SCHEMA = "".join(f"CREATE TABLE IF NOT EXISTS {table} {columns};\n"
                  for table, columns in _TABLE_COLUMNS.items()) + """
CREATE TABLE IF NOT EXISTS marks (hour INTEGER NOT NULL, key TEXT NOT NULL,
    PRIMARY KEY (hour, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
    arrival INTEGER NOT NULL, stats BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS files_arrival ON files (arrival);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
DROP INDEX IF EXISTS docs_hour;
DROP INDEX IF EXISTS counters_sk;
"""
_IN = 500  # keys per IN (...) query, well under SQLite's variable limit
_TABLES = ("docs", "counters", "marks", "files", "meta")


__all__ = ["SqliteState", "StaleLayout", "UnusableStore"]


class UnusableStore(OSError):
    """The store's file cannot be opened or created where it is configured."""


class SqliteState(StateStore):
    def __init__(self, path: str):
        self.path = path
        try:
            self._open()
        except (OSError, sqlite3.Error) as exc:
            # Named, with its setting: the bare errors were "File exists" for a parent that is
            # a file, "unable to open database file" for a folder, naming no path.
            raise UnusableStore(f"the online store {os.path.abspath(path)} cannot be opened "
                                f"({type(exc).__name__}: {exc}): set CLICKLAKE_ONLINE_DB or "
                                "the online store resource's path") from exc

    def _open(self) -> None:
        path = self.path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        # Autocommit mode: transactions are explicit, so a commit is exactly one BEGIN..COMMIT.
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                    timeout=60)
        # 16 KiB pages (a new file only: an existing one keeps its size): most user documents
        # then fit in a leaf page instead of spilling to overflow pages, and a fold's writes
        # touch fewer pages (-20% of its SQLite time, measured).
        self.conn.execute("PRAGMA page_size=16384")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        # A fold touches rows all over the file: keep the hot pages in memory.
        self.conn.execute("PRAGMA cache_size=-262144")
        self.conn.execute("PRAGMA mmap_size=1073741824")
        # Checkpoint once the WAL passes 2500 pages (~40 MB, as 10000 pages of 4 KiB did).
        self.conn.execute("PRAGMA wal_autocheckpoint=2500")
        self.conn.executescript(_SCHEMA)
        self._wm: tuple[int, int | None] | None = None  # (data_version, watermark) when read
        # Counters without logs (millisecond rows instead): an older layout, refused by
        # commits until a `clear` (a rebuild) recreates the tables.
        columns = {r[1] for r in self.conn.execute("PRAGMA table_info(counters)")}
        self.stale = "ilog" not in columns
        self._docs_marked = False  # DOCS_LAYOUT recorded by this connection
        self._rowid_checked = False  # `_rowid_tables` done by this connection
        self._cleared = 0  # `clear`s made (`read_version`)

    def _check_layout(self) -> None:
        if self.stale:
            raise StaleLayout(f"{self.path} holds an older online state layout: rebuild it")

    def check_readable(self) -> None:
        self._check_layout()
        row = self.conn.execute("SELECT v FROM meta WHERE k='docs_layout'").fetchone()
        check_docs_layout(None if row is None else int(row[0]), self.path)

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

    def get_cells(self, cells: Sequence[tuple[str, str, int]]) -> list[Cell | None]:
        return self.sum_ranges_and_cells([], cells)[1]

    def sum_ranges_and_cells(self, ranges: Sequence[tuple[str, str, int, int]],
                             cells: Sequence[tuple[str, str, int]]
                             ) -> tuple[list[tuple[int, int]], list[Cell | None]]:
        """Every range and cell in one statement (one round trip through the SQLite VM)."""
        if not ranges and not cells:
            return [], []
        self._check_layout()
        rows = self.conn.execute(_ranges_and_cells_sql(len(ranges), len(cells)),
                                 [v for r in (*ranges, *cells) for v in r]).fetchall()
        sums: list[tuple[int, int]] = [(0, 0)] * len(ranges)
        found: list[Cell | None] = [None] * len(cells)
        n = len(ranges)
        for i, imp, clk, ilog, clog in rows:
            if i < n:
                sums[i] = (int(imp), int(clk))
            else:
                found[i - n] = (imp, clk, ilog, clog)
        return sums, found

    def marked(self, marks: Sequence[tuple[int, str]]) -> set[tuple[int, str]]:
        by_hour: dict[int, list[str]] = {}
        for hour, key in marks:
            by_hour.setdefault(hour, []).append(key)
        out: set[tuple[int, str]] = set()
        for hour, keys in by_hour.items():
            for part in chunks(list(dict.fromkeys(keys)), _IN):
                q = f"SELECT key FROM marks WHERE hour=? AND key IN ({','.join('?' * len(part))})"
                out.update((hour, k) for (k,) in self.conn.execute(q, (hour, *part)))
        return out

    def cache_token(self) -> object | None:
        # Unchanged by this connection's own commits, changed by any other connection's.
        return (id(self.conn), self.conn.execute("PRAGMA data_version").fetchone()[0])

    def read_version(self) -> object | None:
        # data_version: other connections' commits; total_changes: this one's row writes,
        # whatever made them; _cleared: this object's `clear`s (dropping tables changes no row)
        return (id(self.conn), self.conn.execute("PRAGMA data_version").fetchone()[0],
                self.conn.total_changes, self._cleared)

    def sum_ranges(self, ranges: Sequence[tuple[str, str, int, int]]) -> list[tuple[int, int]]:
        return self.sum_ranges_and_cells(ranges, [])[0]

    def is_folded(self, file_key: str) -> bool:
        return self.conn.execute("SELECT 1 FROM files WHERE key=?", (file_key,)).fetchone() is not None

    def folded(self, file_keys: Sequence[str]) -> set[str]:
        out: set[str] = set()
        for part in chunks(list(dict.fromkeys(file_keys)), _IN):
            q = f"SELECT key FROM files WHERE key IN ({','.join('?' * len(part))})"
            out.update(k for (k,) in self.conn.execute(q, part))
        return out

    def _rowid_tables(self) -> None:
        """Move `docs` and `counters` of an older store out of WITHOUT ROWID tables (see
        `_TABLE_COLUMNS`), in one transaction; checked once per connection, by writers."""
        c = self.conn

        def old_tables() -> list[str]:
            return [table for table in _TABLE_COLUMNS if "WITHOUT ROWID" in c.execute(
                "SELECT sql FROM sqlite_master WHERE type='table' AND name=?",
                (table,)).fetchone()[0].upper()]

        if old_tables():
            c.execute("BEGIN IMMEDIATE")
            try:
                for table in old_tables():  # again: another writer may have moved them since
                    c.execute(f"CREATE TABLE {table}_rowid {_TABLE_COLUMNS[table]}")
                    c.execute(f"INSERT INTO {table}_rowid SELECT * FROM {table}")
                    c.execute(f"DROP TABLE {table}")
                    c.execute(f"ALTER TABLE {table}_rowid RENAME TO {table}")
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        self._rowid_checked = True

    def commit(self, commit: Commit) -> bool:
        self._check_layout()
        self._changed()
        if not self._rowid_checked:
            self._rowid_tables()
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            if commit.expect is not None:  # first: a rebuild since may have folded its files
                ns, key, value = commit.expect
                row = c.execute("SELECT value FROM docs WHERE ns=? AND key=?",
                                (ns, key)).fetchone()
                if (None if row is None else bytes(row[0])) != value:
                    raise Fenced(f"{self.path}: {ns}/{key} is no longer what the commit "
                                 "expects (another run rebuilt the store, or is rebuilding it)")
            if self.folded([f.key for f in commit.files]):
                c.execute("ROLLBACK")
                return False
            if commit.read_token is not None and commit.read_token != self.cache_token():
                # Another connection (a second fold run) committed after this batch read its
                # documents: writing them would undo that commit's changes to them.
                raise Conflict(f"{self.path} changed after the batch read it")
            # Checked inside every transaction (a writer of an older layout may commit between
            # two of ours), recorded by this connection's first.
            self.check_readable()
            if not self._docs_marked:
                c.execute("INSERT OR REPLACE INTO meta VALUES ('docs_layout', ?)",
                          (DOCS_LAYOUT,))
            for ns, docs in commit.docs.items():
                puts = [(ns, k, h, v) for k, (h, v) in docs.items() if v is not None]
                c.executemany("INSERT OR REPLACE INTO docs VALUES (?,?,?,?)", puts)
                if len(puts) < len(docs):
                    c.executemany("DELETE FROM docs WHERE ns=? AND key=?",
                                  [(ns, k) for k, (_, v) in docs.items() if v is None])
            for table, cells in commit.counters.items():
                c.executemany(
                    "INSERT INTO counters VALUES (?,?,?,?,?,?,?) ON CONFLICT (tbl, pk, sk) DO "
                    "UPDATE SET imp = imp + excluded.imp, clk = clk + excluded.clk, "
                    "ilog = ilog || excluded.ilog, clog = clog || excluded.clog",
                    [(table, pk, sk, *d) for (pk, sk), d in cells.items()
                     if d[0] or d[1] or d[2] or d[3]])
            for hour, keys in commit.marks.items():
                c.executemany("INSERT OR IGNORE INTO marks VALUES (?,?)",
                              [(hour, k) for k in keys])
            c.executemany("INSERT INTO files (key, arrival, stats) VALUES (?,?,?)",
                          [(f.key, f.arrival_ms, orjson.dumps(f.stats)) for f in commit.files])
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        self._docs_marked = True
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

    def purge(self, docs_before: dict[str, int], counters_before: dict[str, int],
              marks_before: int | None = None) -> int:
        bounds = orjson.dumps([sorted(docs_before.items()), sorted(counters_before.items()),
                               marks_before])
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
            if marks_before is not None:
                n += c.execute("DELETE FROM marks WHERE hour<?", (marks_before,)).rowcount
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
            "SELECT tbl, pk, sk, imp, clk, ilog, clog FROM counters ORDER BY tbl, pk, sk")
        marks = self.conn.execute("SELECT hour, key FROM marks ORDER BY hour, key").fetchall()
        files = self.conn.execute("SELECT key, arrival, stats FROM files ORDER BY key").fetchall()
        cells = [(t, pk, sk, i, c, canonical_log(il), canonical_log(cl))
                 for t, pk, sk, i, c, il, cl in counters]
        return {"docs": [(ns, k, h, bytes(v)) for ns, k, h, v in docs],
                "counters": [r for r in cells if any(r[3:])],
                "marks": [tuple(r) for r in marks],
                "files": [(k, a, bytes(s)) for k, a, s in files]}

    def clear(self, keep: tuple[str, str, int, bytes] | None = None) -> None:
        self._changed()
        self._fold_cache = None  # the fold's decoded documents may be gone
        # Dropped, not emptied, in one transaction with `keep`'s insert: a rebuild also
        # upgrades an older layout.
        drops = "".join(f"DROP TABLE IF EXISTS {table};" for table in _TABLES)
        self.conn.executescript(f"BEGIN IMMEDIATE;{drops}{_SCHEMA}")
        try:
            if keep is not None:
                self.conn.execute("INSERT INTO docs VALUES (?,?,?,?)", keep)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.stale = False
        self._docs_marked = False
        self._cleared += 1

    def close(self) -> None:
        self.conn.close()


@functools.lru_cache(maxsize=64)
def _ranges_and_cells_sql(n_ranges: int, n_cells: int) -> str:
    """Range sums first (row i = range i), then the cells that exist (row n_ranges + j)."""
    parts = [f"SELECT {i}, coalesce(sum(imp), 0), coalesce(sum(clk), 0), NULL, NULL "
             "FROM counters WHERE tbl=? AND pk=? AND sk>=? AND sk<?" for i in range(n_ranges)]
    parts += [f"SELECT {n_ranges + j}, imp, clk, ilog, clog FROM counters "
              "WHERE tbl=? AND pk=? AND sk=?" for j in range(n_cells)]
    return " UNION ALL ".join(parts)
