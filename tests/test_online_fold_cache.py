"""What bounds a fold's memory: the cache of decoded documents between one process's commits
(bounded, least recently committed out first) and the lines a commit holds; neither shows in the
state (a fold with a tiny cache, or tiny commits, writes what one with the defaults writes)."""

from __future__ import annotations

import pytest

from clicklake.platform.online import SqliteState, fold_files
from clicklake.platform.online import fold as fold_mod
from clicklake.platform.online.fold import IMPRESSION, USER, order_files, parse_file
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import parse_instant
from tests.online_helpers import generated


@pytest.fixture(scope="module")
def landing_zone(tmp_path_factory) -> Store:
    return generated(tmp_path_factory.mktemp("landing"), parse_instant("2026-11-22T00:00:00Z"),
                     hours=2, users=150, seed=5, messy_scale=5.0)


def test_a_small_cache_keeps_the_latest_documents_and_changes_nothing(landing_zone, tmp_path,
                                                                        monkeypatch):
    keys = [lf.key for lf, _ in order_files(landing_zone.list("landing/"))[0]]
    default = SqliteState(str(tmp_path / "default.db"))
    fold_files(default, landing_zone, keys, files_per_commit=4)

    monkeypatch.setattr(fold_mod, "CACHE_DOCS", 6)
    seen = []
    remember = fold_mod._Batch.remember

    def checked(batch):
        remember(batch)
        for ns, docs in ((USER, batch.users), (IMPRESSION, batch.imps)):
            hits = batch.cache[ns]
            assert len(hits) <= 6
            newest = list(docs)[-min(6, len(docs)):]  # this commit's last documents stay
            assert all(hits[k] is docs[k] for k in newest)
            seen.append(len(docs))

    monkeypatch.setattr(fold_mod._Batch, "remember", checked)
    small = SqliteState(str(tmp_path / "small.db"))
    fold_files(small, landing_zone, keys, files_per_commit=4)
    assert max(seen) > 6  # the cache overflowed within one commit, and across commits
    assert sum(n > 6 for n in seen) > 3
    assert small.dump() == default.dump()


def test_a_commit_holds_at_most_so_many_lines(landing_zone, tmp_path, monkeypatch):
    keys = [lf.key for lf, _ in order_files(landing_zone.list("landing/"))[0]]
    one = SqliteState(str(tmp_path / "one.db"))
    fold_files(one, landing_zone, keys, files_per_commit=len(keys))
    monkeypatch.setattr(fold_mod, "MAX_LINES_PER_COMMIT", 30)
    small = SqliteState(str(tmp_path / "small.db"))
    real, sizes = small.commit, []

    def counted(commit):
        sizes.append(sum(r.stats["lines"] for r in commit.files))
        return real(commit)

    small.commit = counted
    report = fold_files(small, landing_zone, keys, files_per_commit=len(keys))
    assert report.files == len(keys) and len(sizes) > 5
    largest = max_file_lines(landing_zone, keys)
    assert all(n < 30 + largest for n in sizes)
    assert sum(sizes) == report.lines
    assert small.dump() == one.dump()


def max_file_lines(store, keys) -> int:
    return max(parse_file(store.read_bytes(lf.key), st, lf.arrival_ms).lines
               for lf, st in order_files(keys)[0])
