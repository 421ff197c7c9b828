"""`fold.read_ahead`: landing objects read and decompressed ahead of the fold, on threads, handed
over in order; and a fold whose reads wait (as S3's GETs do) gives the same state."""

from __future__ import annotations

import random
import threading
import time

import pytest

from clicklake.platform import landing
from clicklake.platform.online import SqliteState, fold, fold_files
from clicklake.platform.online.fold import read_ahead
from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import parse_instant


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


@pytest.mark.parametrize(("ahead", "threads"), [(1, 1), (3, 2), (8, 4), (50, 8)])
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


def test_a_failing_read_raises_at_its_turn_after_the_objects_before_it(tmp_path):
    store = Recording(str(tmp_path), seed=1)
    keys = _objects(store, 12)
    store.broken = frozenset({keys[5]})
    seen = []
    with pytest.raises(PermissionError, match="f005"):
        for key, decoded in read_ahead(store, keys, ahead=4, threads=3):
            seen.append(key)
            assert decoded is not None
    assert seen == keys[:5]


def test_a_consumer_that_stops_waits_for_the_reads_under_way_and_starts_no_more(tmp_path):
    """Two threads, a window of six: when the consumer stops after the first object, the two
    reads under way (held until then) finish, and the four queued behind them never start."""
    store = Recording(str(tmp_path), seed=2)
    keys = _objects(store, 40)
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
    threading.Timer(0.05, gate.set).start()
    landed.close()  # returns once the two held reads ended
    assert gate.is_set()
    assert sorted(started) == keys[:3]
    assert not [t for t in threading.enumerate() if t.name.startswith("landing-read")]


def test_no_keys_read_nothing(tmp_path):
    assert list(read_ahead(Recording(str(tmp_path)), [])) == []


def test_a_fold_with_slow_out_of_order_reads_gives_the_plain_folds_state(tmp_path, monkeypatch):
    """Reads finishing out of order on the threads change nothing: the same state as a fold
    reading one object at a time, and a key deleted after its listing counted as missing."""
    lake = Store(str(tmp_path / "lake"))
    generate(lake, start_ms=parse_instant("2026-03-01T00:00:00Z"), hours=2, users=60, seed=5)
    keys = lake.list("landing/")
    gone = keys[len(keys) // 2]
    slow = Recording(str(tmp_path / "lake"), seed=9)
    slow.delete(gone)
    states = []
    for name, store, (ahead, threads) in (("one", lake, (1, 1)), ("ahead", slow, (8, 4))):
        state = SqliteState(str(tmp_path / f"{name}.db"))
        monkeypatch.setattr(fold, "READ_AHEAD", ahead)
        monkeypatch.setattr(fold, "READ_THREADS", threads)
        report = fold_files(state, store, keys, files_per_commit=7)
        assert report.missing == [gone]
        assert report.files == len(keys) - 1
        states.append(state.dump())
    assert states[0] == states[1]
