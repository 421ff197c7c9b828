"""`fold.read_ahead`: landing objects read and decompressed ahead of the fold, on threads, handed
over in order; and a fold whose reads wait (as S3's GETs do) gives the same state."""

from __future__ import annotations

import random
import threading
import time

import pytest

from clicklake.platform import landing
from clicklake.platform.online import SqliteState, fold, fold_files
from clicklake.platform.online.fold import order_files, read_ahead
from clicklake.platform.online.state import Conflict
from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import parse_instant


def _no_read_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name.startswith("landing-read")]


class Recording(Store):
    """A local store whose reads sleep a random while (out of order on threads), record which
    keys were asked for, and fail for keys in `broken`."""

    def __init__(self, root: str, broken: frozenset[str] = frozenset(), seed: int = 0):
        super().__init__(root)
        self.asked: list[str] = []
        self.broken = broken
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def read_bytes(self, key: str) -> bytes:
        with self._lock:
            self.asked.append(key)
            pause = self._rng.random() * 0.004
        time.sleep(pause)
        if key in self.broken:
            raise PermissionError(f"denied: {key}")
        return super().read_bytes(key)


def _objects(store: Store, n: int) -> list[str]:
    keys = [f"landing/f{i:03d}.gz" for i in range(n)]
    for i, k in enumerate(keys):
        landing.write_file(store, k, [f'{{"i": {i}, "line": {j}}}'.encode() for j in range(i % 4)])
    return keys


@pytest.mark.parametrize(("ahead", "threads"), [(0, 1), (1, 1), (3, 2), (8, 4), (50, 8)])
def test_objects_come_in_order_paired_with_their_items_and_gone_ones_as_none(tmp_path, ahead,
                                                                            threads):
    store = Recording(str(tmp_path), seed=ahead)
    keys = _objects(store, 23)
    gone = {keys[0], keys[7], keys[22]}
    for k in gone:
        store.delete(k)
    items = [("item", i) for i in range(len(keys))]
    got = list(read_ahead(store, keys, items, ahead=ahead, threads=threads))
    assert [item for item, _ in got] == items
    for (_, i), decoded in got:
        if keys[i] in gone:
            assert decoded is None
        else:
            assert decoded == landing.decode_lines(store.read_bytes(keys[i]))
            assert len(decoded.lines) == i % 4
    assert sorted(store.asked[:len(keys)]) == sorted(keys)


@pytest.mark.parametrize("ahead", [0, 4])
def test_a_failing_read_raises_at_its_turn_after_the_objects_before_it(tmp_path, ahead):
    """The consumer is slow, so the failure is long known when the objects before it are
    handed over."""
    store = Recording(str(tmp_path), seed=1)
    keys = _objects(store, 12)
    store.broken = frozenset({keys[5]})
    seen = []
    with pytest.raises(PermissionError, match="f005"):
        for key, decoded in read_ahead(store, keys, ahead=ahead, threads=3):
            seen.append(key)
            assert decoded is not None
            time.sleep(0.02)
    assert seen == keys[:5]


def _settled(store: Recording) -> int:
    """How many reads were asked for, once no more are (the threads idle)."""
    n = -1
    while n != len(store.asked):
        n = len(store.asked)
        time.sleep(0.05)
    return n


@pytest.mark.parametrize(("ahead", "ahead_bytes", "window"), [
    (5, 64 << 20, 5),  # small objects: `ahead` of them
    (16, 2_500, 2),  # ~1 kB objects against a 2.5 kB budget: two
    (16, 10, 1),  # an object larger than the budget: one at a time, never none
])
def test_the_window_holds_ahead_objects_and_fewer_when_they_are_big(tmp_path, ahead, ahead_bytes,
                                                                    window):
    store = Recording(str(tmp_path), seed=3)
    keys = [f"landing/big{i:02d}.gz" for i in range(30)]
    for k in keys:
        landing.write_file(store, k, [b"x" * 99] * 10)  # 1,000 bytes decompressed
    landed = read_ahead(store, keys, ahead=ahead, threads=2, ahead_bytes=ahead_bytes)
    assert _settled(store) == 0  # nothing read before the first object is asked for
    for k in range(1, 6):
        assert next(landed)[0] == keys[k - 1]
        assert _settled(store) == k + window
    landed.close()


def test_one_at_a_time_reads_in_the_callers_thread(tmp_path):
    store = Recording(str(tmp_path))
    keys = _objects(store, 5)
    threads = []
    plain_read = store.read_bytes
    store.read_bytes = lambda key: threads.append(threading.current_thread()) or plain_read(key)
    landed = read_ahead(store, keys, ahead=0)
    next(landed)
    assert threads == [threading.current_thread()]
    assert [k for k, _ in landed] == keys[1:]


def test_a_consumer_that_stops_waits_for_the_reads_under_way_and_starts_no_more(tmp_path):
    """Two threads, a window of six: when the consumer stops after the first object, the two
    reads under way (held until then) finish, and the four queued behind them never start."""
    store = Recording(str(tmp_path), seed=2)
    keys = _objects(store, 41)[1:]  # none empty: the first one's size opens the window to six
    gate = threading.Event()
    plain_read, started = store.read_bytes, []

    def held(key: str) -> bytes:
        started.append(key)
        if key != keys[0]:
            gate.wait(5)
        return plain_read(key)

    store.read_bytes = held
    landed = read_ahead(store, keys, ahead=6, threads=2)
    assert next(landed)[0] == keys[0]
    deadline = time.monotonic() + 5
    while len(started) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    # opened well after the close's cancels (a busy machine may delay them a while)
    threading.Timer(0.5, gate.set).start()
    landed.close()  # returns once the two held reads ended
    assert gate.is_set()
    assert sorted(started) == keys[:3]
    assert _no_read_threads()


def test_no_keys_read_nothing(tmp_path):
    assert list(read_ahead(Recording(str(tmp_path)), [])) == []


def _landing(tmp_path) -> tuple[Store, list[str]]:
    lake = Store(str(tmp_path / "lake"))
    generate(lake, start_ms=parse_instant("2026-03-01T00:00:00Z"), hours=2, users=60, seed=5)
    return lake, [lf.key for lf, _ in order_files(lake.list("landing/"))[0]]


def test_a_fold_with_slow_out_of_order_reads_gives_the_plain_folds_state(tmp_path, monkeypatch):
    """Reads finishing out of order on the threads change nothing: the same report and state
    as a fold reading one object at a time in its own thread, and a key deleted after its
    listing counted as missing."""
    lake, keys = _landing(tmp_path)
    gone = keys[len(keys) // 2]
    lake.delete(gone)
    slow = Recording(lake.root, seed=9)
    got = []
    for name, store, ahead in (("plain", lake, 0), ("ahead", slow, 8)):
        monkeypatch.setattr(fold, "READ_AHEAD", ahead)
        state = SqliteState(str(tmp_path / f"{name}.db"))
        report = fold_files(state, store, keys, files_per_commit=7)
        assert report.missing == [gone]
        assert report.files == len(keys) - 1
        report.seconds = 0.0
        got.append((report, state.dump()))
    assert got[0] == got[1]
    assert _no_read_threads()


def test_a_failing_read_fails_the_fold_at_its_file_with_the_commits_before_it(tmp_path):
    lake, keys = _landing(tmp_path)
    assert len(keys) > 25
    store = Recording(lake.root, broken=frozenset({keys[20]}), seed=4)
    state = SqliteState(str(tmp_path / "online.db"))
    with pytest.raises(PermissionError, match="denied"):
        fold_files(state, store, keys, files_per_commit=3)
    assert [k for k, _, _ in state.folded_files()] == keys[:18]  # six commits of three
    assert _no_read_threads()


def test_a_fold_failing_mid_run_leaves_no_read_running(tmp_path, monkeypatch):
    """Checked while the exception is still being handled (its traceback holds the fold's
    frames): the reads ahead are over by then, not when the frames are collected."""
    lake, keys = _landing(tmp_path)
    store = Recording(lake.root, seed=6)
    calls = []

    def failing_commit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Conflict("another writer")

    monkeypatch.setattr(fold, "_fold_commit", failing_commit)
    state = SqliteState(str(tmp_path / "online.db"))
    try:
        fold_files(state, store, keys, files_per_commit=2)
    except Conflict:
        asked = len(store.asked)
        assert _no_read_threads()
        time.sleep(0.05)
        assert len(store.asked) == asked
    else:
        pytest.fail("the fold did not fail")
    assert len(store.asked) <= 4 + fold.READ_AHEAD  # the two commits' files and the window
