"""Helpers the online store's tests share: a generated landing zone, answers compared within float
rounding, a reference state folded one part after another, and a commit that dies on cue."""

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
