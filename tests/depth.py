"""How many examples a property test tries: its own count times CLICKLAKE_TEST_DEPTH (1 unless
set; `make test-deep` sets 10), so a longer search for counterexamples needs no edit."""

from __future__ import annotations

import os


def examples(n: int) -> int:
    raw = os.environ.get("CLICKLAKE_TEST_DEPTH", "1")
    try:
        depth = int(raw)
    except ValueError:
        depth = 0
    if depth < 1:
        raise ValueError(f"CLICKLAKE_TEST_DEPTH must be a whole number >= 1, not {raw!r}")
    return n * depth
