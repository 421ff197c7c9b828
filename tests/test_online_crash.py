"""Exactly-once folding (DESIGN §4.5) under a real crash: a subprocess folding a landing zone into
SQLite is SIGKILLed with a file's transaction open; the rerun folds the rest and the whole state
(every document, counter and file record) equals one clean fold. Re-folding is a no-op."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from clicklake.platform.online import SqliteState, fold_files
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import parse_instant
from tests.online_helpers import generated

START = parse_instant("2026-11-22T00:00:00Z")

# The child wraps its connection so that the (N+1)-th COMMIT never happens: it SIGKILLs itself
# with that file's writes made and uncommitted, which is what a crash mid-batch leaves behind.
CHILD = textwrap.dedent("""
    import os, signal, sys
    from clicklake.platform.online import SqliteState, fold_files
    from clicklake.platform.storage import Store

    class DieAtCommit:
        def __init__(self, conn, commits):
            self.conn, self.commits = conn, commits
        def execute(self, sql, *args):
            if sql == "COMMIT" and self.conn.in_transaction:
                if self.commits == 0:
                    os.kill(os.getpid(), signal.SIGKILL)
                self.commits -= 1
            return self.conn.execute(sql, *args)
        def __getattr__(self, name):
            return getattr(self.conn, name)

    root, db, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    per_commit = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    state = SqliteState(db)
    state.conn = DieAtCommit(state.conn, n)
    store = Store(root)
    fold_files(state, store, store.list("landing/"), files_per_commit=per_commit)
    print("finished without dying")
""")


@pytest.fixture(scope="module")
def landing_zone(tmp_path_factory) -> Store:
    return generated(tmp_path_factory.mktemp("landing"), START,
                     hours=2, users=300, seed=3, messy_scale=5.0)


@pytest.mark.parametrize("die_after", [0, 7, 23])
def test_sigkill_mid_batch_then_rerun_equals_one_clean_fold(landing_zone, tmp_path, die_after):
    keys = landing_zone.list("landing/")
    clean = SqliteState(str(tmp_path / "clean.db"))
    fold_files(clean, landing_zone, keys)
    expected = clean.dump()

    db = str(tmp_path / "crashed.db")
    proc = subprocess.run([sys.executable, "-c", CHILD, landing_zone.root, db, str(die_after)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    crashed = SqliteState(db)
    assert len(crashed.folded_files()) == die_after  # whole files only, nothing of the next
    report = fold_files(crashed, landing_zone, keys)
    assert (report.files, report.skipped) == (len(keys) - die_after, die_after)
    assert crashed.dump() == expected
    again = fold_files(crashed, landing_zone, keys)
    assert (again.files, again.events_total) == (0, 0)
    assert crashed.dump() == expected
    assert len(keys) > 30 and sum(f[2]["events"] for f in crashed.folded_files()) > 400


@pytest.mark.parametrize("die_after", [0, 2])
def test_sigkill_mid_micro_batch_loses_the_whole_batch_and_the_rerun_refolds_it(
        landing_zone, tmp_path, die_after):
    """Micro-batches of 8 files per commit: a kill inside the third commit leaves exactly the
    files of the commits before it; the rerun equals one clean batched fold."""
    keys = landing_zone.list("landing/")
    per_commit = 8
    clean = SqliteState(str(tmp_path / "clean.db"))
    first = fold_files(clean, landing_zone, keys, files_per_commit=per_commit)
    expected = clean.dump()
    assert first.files == len(keys)

    db = str(tmp_path / "crashed.db")
    proc = subprocess.run([sys.executable, "-c", CHILD, landing_zone.root, db, str(die_after),
                           str(per_commit)], check=False, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    crashed = SqliteState(db)
    assert len(crashed.folded_files()) == die_after * per_commit  # whole batches only
    report = fold_files(crashed, landing_zone, keys, files_per_commit=per_commit)
    assert (report.files, report.skipped) == (len(keys) - die_after * per_commit,
                                              die_after * per_commit)
    assert crashed.dump() == expected
    assert fold_files(crashed, landing_zone, keys, files_per_commit=per_commit).files == 0
    assert crashed.dump() == expected
