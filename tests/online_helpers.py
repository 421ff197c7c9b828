"""Helpers the online store's tests share: a generated landing zone, answers compared within float
rounding, a reference state folded one part after another, a commit that dies on cue, and two
writers on one store (a batch overtaken by another writer's commit; documents kept decoded that
another writer's commit made stale)."""

from __future__ import annotations

import math
from collections.abc import Callable

from clicklake.platform.online import SqliteState, fold_files
from clicklake.platform.online.state import Commit
from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store


def generated(folder, start_ms: int, **gen) -> Store:
    """A store in `folder` holding a generated landing zone (`simulate.generate`'s arguments)."""
    store = Store(str(folder))
    generate(store, start_ms=start_ms, **gen)
    return store


def built_lake(folder, start_ms: int, hours: int, **gen) -> Store:
    """`generated` landing files of `hours` and the lake built from them for every one of them
    (raw, tiles, user and segment snapshots): what a seed of the online store reads."""
    from feature_oracle import build_lake

    store = generated(folder, start_ms, hours=hours, **gen)
    build_lake(store, [start_ms + i * 3_600_000 for i in range(hours)])
    return store


def folded(path: str, store: Store, files_per_commit: int = 10) -> SqliteState:
    """A SQLite online store at `path` with every landing file of `store` folded."""
    state = SqliteState(path)
    fold_files(state, store, store.list("landing/"), files_per_commit=files_per_commit)
    return state


def close_enough(a, b) -> bool:
    """Equal answers, NaN equal to NaN; floats within 1e-9 (sums of spend added in another
    order differ in their last bits)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close_enough(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close_enough(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9,
                                                                   abs_tol=1e-12)
    return a == b


def folded_in_order(store: Store, path: str, parts: list[list[str]]) -> SqliteState:
    """A state folding the landing keys of each part in turn, a part a commit."""
    state = SqliteState(path)
    for part in parts:
        fold_files(state, store, part, files_per_commit=max(1, len(part)))
    return state


def overtaken_fold(a, b, store: Store, first: list[str], mine: list[str], theirs: list[str],
                   when: str, reference: str) -> None:
    """Writer `a` folds `first`, then `mine` as one batch, which writer `b` (on the same store)
    overtakes once by folding `theirs` as one commit `when`: "before its commit", "between its
    reads" (after its user documents are read), or "just before its intent" (DynamoDB: inside
    `commit`, after its recovery and folded checks). Asserts that both folded all their files,
    that `a`'s batch was refused once and folded again, and that the state equals folding the
    parts one writer at a time, theirs before mine (into a SQLite file at `reference`)."""
    fold_files(a, store, first, files_per_commit=len(first))
    overtaken = []

    def theirs_once():
        if not overtaken:
            overtaken.append(fold_files(b, store, theirs, files_per_commit=len(theirs)))

    if when == "before its commit":
        real_commit = a.commit
        a.commit = lambda commit: (theirs_once(), real_commit(commit))[1]
    elif when == "just before its intent":
        real_intent = a._write_intent
        a._write_intent = lambda *args, **kw: (theirs_once(), real_intent(*args, **kw))[1]
    else:
        assert when == "between its reads", when
        real_get = a.get_docs

        def get_docs(ns, ids):
            found = real_get(ns, ids)
            if ns == "user":  # the batch's documents
                theirs_once()
            return found

        a.get_docs = get_docs
    report = fold_files(a, store, mine, files_per_commit=len(mine))
    assert overtaken[0].files == len(theirs) and report.files == len(mine)
    assert report.conflicts == 1
    expected = folded_in_order(store, reference, [first, theirs, mine])
    assert a.dump() == expected.dump()


def stale_cache_fold(a, b, store: Store, ours: list[str], theirs: list[str], step: int,
                     reference: str) -> None:
    """Writer `a` folds `ours` in commits of `step` files, keeping each commit's documents
    decoded for the next; writer `b` commits `theirs` right after `a`'s first commit, making them
    stale. Asserts that no batch was refused and that the state equals the parts folded one
    writer at a time (into a SQLite file at `reference`): `a` read the documents again."""
    real, done = a.commit, []

    def then_theirs(commit):
        ok = real(commit)
        if not done:  # after this run's first commit, before its second batch reads
            done.append(fold_files(b, store, theirs, files_per_commit=len(theirs)))
        return ok

    a.commit = then_theirs
    report = fold_files(a, store, ours, files_per_commit=step)
    assert report.files == len(ours) and report.conflicts == 0 and done
    parts = [ours[:step], theirs] + [ours[i:i + step] for i in range(step, len(ours), step)]
    assert a.dump() == folded_in_order(store, reference, parts).dump()


def die_at(state, n: int, counts: Callable[[Commit], bool] = lambda _: True) -> None:
    """Make `state`'s n-th commit among those `counts` says yes to raise ConnectionError (a run
    whose worker went away) before anything of it is written."""
    real, seen = state.commit, []

    def commit(c: Commit) -> bool:
        if counts(c):
            seen.append(c)
            if len(seen) == n:
                raise ConnectionError("the run's worker went away")
        return real(c)

    state.commit = commit


def unrun(mark: dict) -> dict:
    """A rebuild mark without its run's id (a fresh one each rebuild)."""
    assert isinstance(mark.get("run"), str) and mark["run"]
    return {k: v for k, v in mark.items() if k != "run"}
