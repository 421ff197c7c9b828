"""`tiles.lex_order` is `np.lexsort` with the keys in reading order: the same stable order, whether
the keys pack into one int64 (the fast path) or not (lexsort itself)."""

import numpy as np
import pytest

from clicklake.platform.tiles import lex_order


@pytest.mark.parametrize("seed", range(20))
def test_same_order_as_lexsort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(30):
        n = int(rng.integers(0, 300))
        keys = [rng.integers(int(rng.integers(-5, 1)), int(rng.integers(1, 6)), n)
                for _ in range(int(rng.integers(1, 4)))]
        if seed % 2:  # a first key far too wide to pack (2**63 to 2**64 in all): lexsort's path
            keys[0] = keys[0] * 2**61
        assert lex_order(*keys).tolist() == np.lexsort(keys[::-1]).tolist()


def test_ties_keep_input_order() -> None:
    assert lex_order(np.array([2, 1, 2, 1]), np.array([0, 0, 0, 0])).tolist() == [1, 3, 0, 2]


def test_empty_and_wide_keys() -> None:
    assert lex_order(np.zeros(0, np.int64)).tolist() == []
    near = np.array([0, 2**61, 2**61 - 1, 3], np.int64)  # packed span 2**61 * 4: past int64
    assert lex_order(near).tolist() == np.lexsort([near]).tolist() == [0, 3, 2, 1]
    assert lex_order(near, np.arange(4)).tolist() == np.lexsort([np.arange(4), near]).tolist()
    wide = np.array([2**62, -(2**62), 0], np.int64)
    assert lex_order(wide, np.array([1, 2, 3])).tolist() == [1, 2, 0]
