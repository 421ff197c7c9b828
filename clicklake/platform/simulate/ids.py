"""Event ids that look random yet never collide.

An id is a counter passed through a bijection of 64-bit integers (multiply by an odd constant,
add a seeded offset, xor-shift), so ids are unique by construction and the same for a seed.
"""

from __future__ import annotations

import numpy as np

_MASK = (1 << 64) - 1


class IdSequence:
    def __init__(self, rng: np.random.Generator, prefix: str):
        self.prefix = prefix
        self._mul = np.uint64(int(rng.integers(1, 1 << 62)) * 2 + 1)  # odd: invertible mod 2^64
        self._add = np.uint64(int(rng.integers(0, 1 << 63)))
        self._next = 0

    def take(self, n: int) -> list[str]:
        """The next n ids."""
        k = np.arange(self._next, self._next + n, dtype=np.uint64)
        self._next += n
        with np.errstate(over="ignore"):
            x = k * self._mul + self._add
            x ^= x >> np.uint64(29)  # xor-shift is invertible too; it mixes the high bits down
        return [f"{self.prefix}{v:016x}" for v in x.tolist()]
