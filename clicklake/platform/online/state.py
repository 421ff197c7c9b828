"""The online store's storage contract: a few keyed tables any key-value database can hold.

The fold (`fold.py`) and the read (`read.py`) speak only to `StateStore`; SQLite (`sqlite_state`)
and DynamoDB (the `online_store` resource) implement it. Four kinds of data:

- documents: `(namespace, key) -> bytes`, replaced whole (per-user state, the impression index).
  Each carries an `hour` (epoch ms) that retention purges by;
- counters: `(table, pk, sk) -> (impressions, clicks, impression log, click log)`: the counts are
  added to and summed over an `sk` range; the logs are text, appended to (segment tiles per hour
  and per minute; a minute's logs list its events, so a read inside the minute stays exact:
  `segment_state`);
- marks: `(hour, key)` present or not, added and never changed (dedup of clicks and predictions
  by event id within the event hour), purged by hour;
- file records: one per folded landing file, written in the SAME atomic commit as the file's
  updates, so a file is folded exactly once however often a crashed run is repeated. A commit may
  hold a micro-batch of many files: their records and their combined updates land together.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

LAYOUT = 2  # 2: minute rows with event logs (1 had millisecond rows, and markers as documents)


# The user documents' own layout, recorded by each backend beside its data: 2 = trimmed to
# aggregates before the horizon (`plast`, tiles of three counts, `h`), which the readers of
# 1 (untrimmed; no record) cannot read; 3 = each document written with its head (`user_head`),
# which a writer of 2 would leave stale (a document without a head is read from the document);
# 4 = the head's value carries the profile's lists after a newline, which readers of 3 cannot
# decode (a head of 3 without them is still read: the lists then come from the document);
# 5 = the lists are two lines in the profile's JSON form, which readers of 4 cannot decode (a
# head of 4 is still read, its lists from the document). A store recording a newer one than
# this code knows is refused by its writers and readers alike (`check_docs_layout`).
DOCS_LAYOUT = 5


def check_docs_layout(found: int | None, where: str) -> None:
    if found is not None and found > DOCS_LAYOUT:
        raise StaleLayout(f"{where} holds user documents of layout {found}, written by a newer "
                          f"clicklake (this one reads up to {DOCS_LAYOUT}): upgrade it, or "
                          "rebuild the store")


class Conflict(RuntimeError):
    """Another writer committed after a batch read the state it rewrites (its documents would
    overwrite that writer's): nothing was applied; fold the batch again from a fresh read."""


class Fenced(Conflict):
    """The document a commit expects (`Commit.expect`: the rebuild mark its run read) holds
    something else: another run rebuilt the store, or is rebuilding it. Nothing was applied."""


class StaleLayout(RuntimeError):
    """The store holds an older layout of the online state: rebuild it (serving_lookup with
    `rebuild: true` clears it and refolds every landing file)."""


@dataclass(frozen=True)
class FileRecord:
    key: str
    arrival_ms: int
    stats: dict


@dataclass
class Commit:
    """Everything a micro-batch of landing files (or one replayed batch) changes, and their file
    records, applied atomically."""

    files: list[FileRecord] = field(default_factory=list)
    # namespace -> key -> (hour_ms for retention, new bytes); bytes None deletes the document
    docs: dict[str, dict[str, tuple[int, bytes | None]]] = field(default_factory=dict)
    # table -> (pk, sk) -> [delta impressions, delta clicks, impression log, click log] (the
    # logs are text appended to the stored ones; "" = nothing to append)
    counters: dict[str, dict[tuple[str, int], list]] = field(default_factory=dict)
    # hour_ms -> keys marked in that hour
    marks: dict[int, list[str]] = field(default_factory=dict)
    # `StateStore.cache_token()` before the batch read anything: a backend that gives tokens
    # refuses the commit (`Conflict`) when another writer has committed since
    read_token: object | None = None
    # (namespace, key, bytes or None: absent) that document must hold when the commit lands,
    # checked in its first transaction (`Fenced` otherwise): a run's rebuild mark, so a run
    # that another rebuild overtook writes nothing on the rebuilt store
    expect: tuple[str, str, bytes | None] | None = None

    @property
    def file_key(self) -> str:
        """The commit's name: its first file's key."""
        return self.files[0].key

    @property
    def arrival_ms(self) -> int:
        return max(f.arrival_ms for f in self.files)

    def record(self, key: str, arrival_ms: int, stats: dict) -> None:
        self.files.append(FileRecord(key, arrival_ms, stats))

    def put(self, ns: str, key: str, hour_ms: int, value: bytes | None) -> None:
        self.docs.setdefault(ns, {})[key] = (hour_ms, value)

    def add(self, table: str, pk: str, sk: int, d_imp: int, d_clk: int, imp_log: str = "",
            clk_log: str = "") -> None:
        cell = self.counters.setdefault(table, {}).setdefault((pk, sk), [0, 0, "", ""])
        cell[0] += d_imp
        cell[1] += d_clk
        cell[2] += imp_log
        cell[3] += clk_log

    def mark(self, hour_ms: int, key: str) -> None:
        self.marks.setdefault(hour_ms, []).append(key)

    def size(self) -> int:
        return (sum(map(len, self.docs.values())) + sum(map(len, self.counters.values()))
                + sum(map(len, self.marks.values())))


Cell = tuple[int, int, str, str]  # (impressions, clicks, impression log, click log)


def canonical_log(log: str) -> str:
    """A counter log as a sorted multiset of its net entries ("-x," cancels one "x,"): equal
    for equal states however the entries were split across commits."""
    if not log:
        return ""
    net: dict[str, int] = {}
    for tok in log.split(",")[:-1]:
        if tok[0] == "-":
            net[tok[1:]] = net.get(tok[1:], 0) - 1
        else:
            net[tok] = net.get(tok, 0) + 1
    return "".join((f"{t}," if n > 0 else f"-{t},") * abs(n) for t, n in sorted(net.items()))


class StateStore(ABC):
    """Abstract online state. Implementations must make `commit` atomic and idempotent per file."""

    @abstractmethod
    def get_docs(self, ns: str, keys: Sequence[str]) -> dict[str, bytes]:
        """The documents that exist among `keys`."""

    @abstractmethod
    def sum_counters(self, table: str, pk: str, lo: int, hi: int) -> tuple[int, int]:
        """Sums of (impressions, clicks) over rows of `pk` with lo <= sk < hi."""

    def cache_token(self) -> object | None:
        """A value that stays equal while no OTHER writer commits (this object's own commits
        keep it), letting the fold keep its last documents decoded in memory and `commit`
        refuse a batch read before another writer's commit; None (the default) = unknown: no
        caching, and one writer at a time is the deployment's job (the `online_fold` pool, limited
        to one run by `deploy/dagster.yaml`)."""
        return None

    def read_version(self) -> object | None:
        """A value that changes whenever a write to the state completes, by any writer (this
        object's own writes included), and that is not given while one is under way, for
        readers to keep what they read until it changes (rows older than any read from the
        horizon on may go without it: a purge); None (the default, or while a write is under
        way) = read every time."""
        return None

    def sum_ranges(self, ranges: Sequence[tuple[str, str, int, int]]) -> list[tuple[int, int]]:
        """`sum_counters` of each (table, pk, lo, hi); a backend may answer them in one trip."""
        return [self.sum_counters(t, pk, lo, hi) if hi > lo else (0, 0)
                for t, pk, lo, hi in ranges]

    @abstractmethod
    def get_cells(self, cells: Sequence[tuple[str, str, int]]) -> list[Cell | None]:
        """The counter rows (table, pk, sk) with their logs; None where a row does not exist."""

    def sum_ranges_and_cells(self, ranges: Sequence[tuple[str, str, int, int]],
                             cells: Sequence[tuple[str, str, int]]
                             ) -> tuple[list[tuple[int, int]], list[Cell | None]]:
        """`sum_ranges` and `get_cells` together (a backend may answer both in one trip)."""
        return self.sum_ranges(ranges), self.get_cells(cells)

    @abstractmethod
    def marked(self, marks: Sequence[tuple[int, str]]) -> set[tuple[int, str]]:
        """The (hour, key) marks among `marks` that exist."""

    @abstractmethod
    def is_folded(self, file_key: str) -> bool: ...

    def folded(self, file_keys: Sequence[str]) -> set[str]:
        """The keys among `file_keys` already folded (a backend may answer in one trip)."""
        return {k for k in file_keys if self.is_folded(k)}

    def recover(self) -> list[FileRecord]:
        """Finish a commit a crashed run left half applied (backends whose commit is not one
        transaction); returns the records of the files it completed."""
        return []

    @abstractmethod
    def commit(self, commit: Commit) -> bool:
        """Apply `commit` and record its files, atomically. False (and no change) when any of
        them was already folded; `Conflict` (and no change of its own) when `commit.read_token`
        is not None and another writer committed after it was taken, or when a commit another
        writer left unfinished was finished first (`recover`): either way the batch is folded
        again from a fresh read; `Fenced` (and no change) when the document `commit.expect`
        names holds anything else."""

    @abstractmethod
    def watermark_ms(self) -> int | None:
        """Max arrival time of the files folded so far."""

    @abstractmethod
    def purge(self, docs_before: dict[str, int], counters_before: dict[str, int],
              marks_before: int | None = None) -> int:
        """Retention: drop documents of a namespace whose hour < the bound, counter rows of a
        table whose sk < the bound, marks whose hour < `marks_before`. Returns rows dropped."""

    @abstractmethod
    def folded_files(self) -> list[tuple[str, int, dict]]:
        """(file key, arrival ms, stats) of every folded file, in fold order."""

    @abstractmethod
    def dump(self) -> dict:
        """Every document, counter (logs by `canonical_log`) and mark, in a canonical form
        (tests compare whole states)."""

    @abstractmethod
    def clear(self, keep: tuple[str, str, int, bytes] | None = None) -> None:
        """Forget everything (a rebuild starts here). `keep`: a document (namespace, key, hour,
        value), the rebuild's mark, that the store holds from before anything is forgotten on:
        a run dying anywhere in the clear, or after it, leaves a store holding the mark (and
        whatever the clear has not deleted yet), never one without it."""

    def check_readable(self) -> None:
        """Raise `StaleLayout` when this code cannot read the store (an older table layout, or
        documents of a newer layout); the default: nothing to check."""

    def close(self) -> None:
        pass


def chunks(items: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
