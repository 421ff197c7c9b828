"""The C hash tables (`hashtables`) against dicts, and against the numpy paths they replace:
`KeyCounts` vs `profiles._KeySet`, `StringTable` (through `tiles.Interner`) vs the hashed,
sorted-array interner. Keys are drawn from small ranges so that probe sequences collide, and
batches are long enough for the tables to grow several times."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from clicklake.platform import hashtables, profiles, tiles


def test_the_c_module_is_built():
    # The build is optional (the numpy paths answer alike), but this package is meant to have it:
    # a silently failed build would leave the fast path untested and unused.
    assert hashtables.NATIVE


keys_batches = st.lists(st.tuples(st.lists(st.integers(0, 3000), max_size=1500),
                                  st.lists(st.integers(-1, 3500), max_size=300)),
                        min_size=1, max_size=6)


@settings(max_examples=examples(40), deadline=None)
@given(batches=keys_batches)
def test_key_counts_equal_the_sorted_key_set_and_a_dict(batches):
    fast, slow, oracle = hashtables.KeyCounts(2), profiles._KeySet(2), {}
    for i, (adds, probes) in enumerate(batches):
        keys = np.array(list(dict.fromkeys(adds)), np.int64)  # distinct, in order
        add = [np.arange(len(keys), dtype=np.int64) + i, np.full(len(keys), i + 1, np.int64)]
        new_fast, new_slow = fast.upsert(keys, add), slow.upsert(keys, add)
        want_new = [int(k) not in oracle for k in keys]
        for k, a, b in zip(keys.tolist(), add[0].tolist(), add[1].tolist(), strict=True):
            old = oracle.get(k, (0, 0))
            oracle[k] = (old[0] + a, old[1] + b)
        assert new_fast.tolist() == new_slow.tolist() == want_new
        assert len(fast) == len(slow) == len(oracle)
        q = np.array(probes, np.int64)
        ok = q % 7 != 3  # some keys ruled out by the caller
        for hit, counts in (fast.find(q, ok), slow.find(q, ok)):
            assert hit.tolist() == [k in oracle and o for k, o in zip(q.tolist(), ok, strict=True)]
            assert [tuple(c) for c in zip(*counts, strict=True)] == [
                oracle[k] if h else (0, 0) for k, h in zip(q.tolist(), hit, strict=True)]
    whole = np.array(list(oracle), np.int64)
    counts = [np.array([oracle[k][j] for k in oracle], np.int64) for j in (0, 1)]
    again = hashtables.KeyCounts.of(whole, counts)
    hit, got = again.find(whole)
    assert hit.all() and all(np.array_equal(g, c) for g, c in zip(got, counts, strict=True))


def test_int_table_values_go_in_the_order_keys_are_met():
    t = hashtables.IntTable()
    assert t.add(np.array([9, 4, 9, 7])).tolist() == [0, 1, 0, 2]
    assert t.add(np.array([7, 5])).tolist() == [2, 3]
    assert t.find(np.array([5, 6, 9])).tolist() == [3, -1, 0]
    big = np.arange(10_000, 60_000, 7)
    assert np.array_equal(t.add(big), np.arange(4, 4 + len(big)))  # grown past 1,024 slots
    assert np.array_equal(t.find(big[::-1]), np.arange(4, 4 + len(big))[::-1])
    size = len(t)
    with pytest.raises(ValueError, match="INT64_MIN"):  # refused before anything is added
        t.add(np.array([123, 124, np.iinfo(np.int64).min]))
    assert len(t) == size and t.find(np.array([123, 124])).tolist() == [-1, -1]
    assert t.add(np.array([124, 123])).tolist() == [size, size + 1]
    with pytest.raises(TypeError, match="integers"):
        hashtables._hashkeys.int_find(t._keys, t._vals, np.zeros(3), np.zeros(3, np.int64))


@pytest.mark.parametrize("keys", [np.array([5, 6], ">i8"), np.zeros(2, np.complex64)],
                         ids=["big-endian", "complex"])
def test_buffers_of_another_byte_order_or_kind_are_refused(keys):
    """Before, the C functions read them as native int64: wrong codes, no error (and an index
    of another byte order scattered into the wrong slot)."""
    t = hashtables.IntTable()
    t.add(np.array([5, 6]))
    with pytest.raises(TypeError, match="integers of 8 bytes"):
        hashtables._hashkeys.int_find(t._keys, t._vals, keys, np.empty(2, np.int64))
    with pytest.raises(TypeError):
        hashtables._hashkeys.scatter_add(np.zeros(3), np.array([1 << 24], ">i4"), np.ones(1))


def test_rehash_into_a_full_table_is_refused():
    """Before, it probed for a free slot forever, without the GIL (no Ctrl-C)."""
    full = np.arange(4, dtype=np.int64)
    old = np.array([99, np.iinfo(np.int64).min])
    with pytest.raises(ValueError, match="no free slot"):
        hashtables._hashkeys.rehash(full, np.zeros(4, np.int32), old, np.zeros(2, np.int32),
                                    False)


def test_an_int_insert_into_a_full_table_leaves_it_as_it_was():
    """A table with no room for every new key refuses the call, and the keys it had already
    placed are taken back: a retry into a larger table gives each key a value of its own."""
    empty = np.iinfo(np.int64).min
    keys, values = np.full(4, empty, np.int64), np.zeros(4, np.int32)
    assert hashtables._hashkeys.int_insert(keys, values, np.array([7], np.int64),
                                           np.empty(1, np.int64), 0) == 1
    before = keys.copy()
    with pytest.raises(ValueError, match="full"):
        hashtables._hashkeys.int_insert(keys, values, np.array([10, 7, 20, 30, 40], np.int64),
                                        np.empty(5, np.int64), 1)
    assert keys.tolist() == before.tolist()
    big_keys, big_values = np.full(16, empty, np.int64), np.zeros(16, np.int32)
    hashtables._hashkeys.rehash(big_keys, big_values, keys, values, False)
    out = np.empty(5, np.int64)
    assert hashtables._hashkeys.int_insert(big_keys, big_values,
                                           np.array([10, 7, 20, 30, 40], np.int64), out, 1) == 5
    assert out.tolist() == [1, 0, 2, 3, 4]


def test_a_failed_string_insert_leaves_the_table_as_it_was(monkeypatch):
    """Between the C call that gives new strings their codes and the append of the strings,
    a failure (here a MemoryError) takes the new codes back: later calls neither read past the
    known strings nor give two strings one code."""
    table = hashtables.StringTable()
    assert table.codes(pa.array(["a", "b"])).tolist() == [0, 1]

    def no_memory(arrays):
        raise MemoryError

    monkeypatch.setattr(hashtables.pa, "concat_arrays", no_memory)
    with pytest.raises(MemoryError):
        table.codes(pa.array(["c", "a", "d"]))
    monkeypatch.undo()
    assert table.codes(pa.array(["d", "c", "x"]), add=False).tolist() == [-1, -1, -1]
    assert table.codes(pa.array(["d", "a", "c"])).tolist() == [2, 0, 3]
    assert table.known.to_pylist() == ["a", "b", "d", "c"]
    # An interrupt right as the C call returns (before the append): taken back alike.
    real = hashtables._hashkeys.str_index

    def interrupted(*args):
        real(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(hashtables._hashkeys, "str_index", interrupted)
    with pytest.raises(KeyboardInterrupt):
        table.codes(pa.array(["y", "z"]))
    monkeypatch.undo()
    assert table.codes(pa.array(["z", "y", "a"])).tolist() == [4, 5, 0]
    assert table.known.to_pylist() == ["a", "b", "d", "c", "z", "y"]
    # large_string columns (64-bit offsets) are read as strings, not as misread offsets
    assert table.codes(pa.array(["c", "zz"], pa.large_string())).tolist() == [3, 6]


words = st.one_of(st.none(), st.text(max_size=12), st.text(min_size=60, max_size=90),
                  st.sampled_from(["", "a", "ab", "abcdefgh", "abcdefgh\x00"]))


@pytest.fixture(params=["c", "numpy"])
def interner_path(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setattr(hashtables, "NATIVE", False)
    return request.param


@settings(max_examples=examples(40), deadline=None)
@given(batches=st.lists(st.lists(words, max_size=400), min_size=1, max_size=5),
       cut=st.integers(0, 3))
def test_both_interners_code_like_a_dict(batches, cut):
    for native in (True, False):
        hashtables_native = hashtables.NATIVE
        hashtables.NATIVE = native and hashtables_native
        try:
            interner = tiles.Interner()
        finally:
            hashtables.NATIVE = hashtables_native
        seen: dict[str, int] = {}
        for batch in batches:
            arr = pa.array(batch, pa.string()).slice(min(cut, len(batch)))  # offset != 0
            values = batch[min(cut, len(batch)):]
            probe = interner.codes(arr, add=False)
            assert probe.tolist() == [-1 if v is None else seen.get(v, -1) for v in values]
            got = interner.codes(arr)
            assert got.tolist() == [-1 if v is None else seen.setdefault(v, len(seen))
                                    for v in values]
            assert len(interner) == len(seen)


def test_a_dictionary_with_repeated_values_gets_one_code_per_string(interner_path):
    """Parquet files of other writers may repeat a value in a dictionary: one string, one code
    (the C table compares each new string with those added in the same call; the numpy
    interner encodes such a dictionary again: it gave each copy a code of its own)."""
    interner = tiles.Interner()
    arr = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2, 2, None]),
                                         pa.array(["x", "y", "x"]))
    assert interner.codes(arr).tolist() == [0, 1, 0, 0, -1]
    assert interner.codes(pa.array(["y", "x", "z"])).tolist() == [1, 0, 2]


def test_a_null_in_a_dictionary_is_a_null(interner_path):
    """Arrow lets a dictionary hold a null itself: a value pointing at it has no code, like a
    null index (the C path refused the call; the numpy one coded the null as a string)."""
    interner = tiles.Interner()
    arr = pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 2], pa.int32()),
                                         pa.array(["a", None, "b"]))
    assert interner.codes(arr).tolist() == [0, -1, -1, 1]
    assert interner.codes(pa.array(["b", "a"])).tolist() == [1, 0]


def test_string_table_grows_and_keeps_its_codes(interner_path):
    interner = tiles.Interner()
    first = pa.array([f"user-{i:06d}" for i in range(5000)])
    assert np.array_equal(interner.codes(first), np.arange(5000))
    more = pa.array([f"user-{i:06d}" for i in range(2500, 9000)])
    assert np.array_equal(interner.codes(more), np.arange(2500, 9000))
    assert interner.codes(pa.array(["user-000042", "nobody"]), add=False).tolist() == [42, -1]


def test_threads_sharing_an_interner_get_one_code_per_string(interner_path):
    """A labeled range interns each next hour's users on a second thread while the hour being
    built interns on the first: overlapping batches from two threads, growing the table
    several times, still give each string one code, the same in every thread."""
    from threads import run_together

    interner = tiles.Interner()
    batches = [pa.array([f"u{(k * 7919 + i) % 60_000}" for i in range(20_000)])
               for k in range(6)]
    got: dict[int, list[np.ndarray]] = {0: [], 1: []}
    sizes: dict[int, list[int]] = {0: [], 1: []}

    def run(which: int) -> None:
        for b in (batches if which == 0 else batches[::-1]):
            got[which].append(interner.codes(b))
            sizes[which].append(len(interner))  # what callers size their arrays by

    run_together(lambda: run(0), lambda: run(1))
    for which in (0, 1):  # never below a code handed out before
        assert all(n > int(c.max()) for n, c in zip(sizes[which], got[which], strict=True))
    code_of: dict[str, int] = {}
    for which, order in ((0, batches), (1, batches[::-1])):
        for b, codes in zip(order, got[which], strict=True):
            for word, code in zip(b.to_pylist(), codes.tolist(), strict=True):
                assert code_of.setdefault(word, code) == code
    assert sorted(code_of.values()) == list(range(len(interner)))
    assert interner.codes(pa.array(list(code_of)), add=False).tolist() == list(code_of.values())


@settings(max_examples=examples(60), deadline=None)
@given(data=st.data(), n_users=st.integers(1, 6), nc=st.integers(1, 4), nd=st.integers(1, 3),
       span=st.integers(1, 40), with_campaigns=st.booleans())
def test_one_pass_hour_equals_the_timeline_searches(data, n_users, nc, nd, span,
                                                    with_campaigns):
    """`lookup._since_start_native` (one C pass in time order) against `_since_start_numpy`
    (sorted timelines and binary searches): every output equal, ties at equal instants,
    users nobody asked about (-1) and events without a domain included. Costs are binary
    fractions, so spend sums are exact in either order."""
    from clicklake.platform import lookup

    def events(n, with_dom):
        user = np.array(data.draw(st.lists(st.integers(-1, n_users - 1), min_size=n,
                                           max_size=n)), np.int64)
        ms = np.array(data.draw(st.lists(st.integers(0, span - 1), min_size=n, max_size=n)),
                      np.int64) + 1000
        camp = np.array(data.draw(st.lists(st.integers(0, nc - 1), min_size=n, max_size=n)),
                        np.int64)
        dom = np.array(data.draw(st.lists(st.integers(-1, nd - 1), min_size=n, max_size=n)),
                       np.int64) if with_dom else None
        return user, ms, camp, dom

    mi, mc, n = (data.draw(st.integers(0, 25)) for _ in range(3))
    iu, ims, icamp, idom = events(mi, True)
    cu, cms, ccamp, _ = events(mc, False)
    cost = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.25, 1.5, 3.0]), min_size=mi,
                                       max_size=mi)), np.float64)
    hour = lookup._HourEvents(1000, span + 1, iu, ims, icamp, idom, cost, cu, cms, ccamp, nc, nd)
    qcode = np.array(data.draw(st.lists(st.integers(0, n_users - 1), min_size=n, max_size=n)),
                     np.int64)
    t = np.array(data.draw(st.lists(st.integers(0, span), min_size=n, max_size=n)),
                 np.int64) + 1000
    q_key = qcode * nc + np.array(data.draw(st.lists(st.integers(0, nc - 1), min_size=n,
                                                     max_size=n)), np.int64) \
        if with_campaigns else None
    held_c = set(data.draw(st.lists(st.integers(0, n_users * nc - 1), max_size=8)))
    held_d = set(data.draw(st.lists(st.integers(0, n_users * nd - 1), max_size=8)))

    def known(held):
        return lambda keys: np.array([int(k) in held for k in keys], bool)

    args = (hour, qcode, t, q_key, known(held_c), known(held_d))
    fast, slow = lookup._since_start_native(*args), lookup._since_start_numpy(*args)
    assert set(fast) >= set(slow)
    for name, want in slow.items():
        assert np.array_equal(fast[name], want), (name, fast[name], want)


@settings(max_examples=examples(60), deadline=None)
@given(data=st.data(), ncodes=st.integers(1, 5))
def test_walks_as_of_equal_brute_force(data, ncodes):
    """`sums_as_of` and `latest_as_of` against a loop over every (query, event) pair: events at
    exactly t are not seen, ties at one instant go to the greatest rank, then the later event."""
    m, n = data.draw(st.integers(0, 30)), data.draw(st.integers(0, 20))

    def ints(lo, hi, k):
        return np.array(data.draw(st.lists(st.integers(lo, hi), min_size=k, max_size=k)),
                        np.int64)

    e_code, e_ms, w1, w2, rank = (ints(0, ncodes - 1, m), ints(0, 12, m), ints(0, 3, m),
                                  ints(0, 3, m), ints(0, 2, m))
    score = np.arange(m, dtype=np.float64) / 7
    q_code, q_t = ints(-1, ncodes - 1, n), ints(0, 13, n)
    s1, s2 = hashtables.sums_as_of(q_code, q_t, e_code, e_ms, w1, w2, ncodes)
    got_score, got_when = hashtables.latest_as_of(q_code, q_t, e_code, e_ms, rank, score, ncodes)
    for k in range(n):
        seen = [e for e in range(m) if e_code[e] == q_code[k] and e_ms[e] < q_t[k]]
        assert (s1[k], s2[k]) == (sum(w1[e] for e in seen), sum(w2[e] for e in seen))
        if not seen:
            assert np.isnan(got_score[k]) and np.isnan(got_when[k])
            continue
        best = max(seen, key=lambda e: (e_ms[e], rank[e], e))
        assert (got_score[k], got_when[k]) == (score[best], float(e_ms[best]))
