"""Run test callables on threads side by side: started together, all joined, and the first
exception one of them raised raised again in the test's own thread (a thread's exception is
otherwise only printed)."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_together(*targets: Callable[[], object]) -> None:
    raised: list[BaseException] = []

    def guarded(fn: Callable[[], object]) -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread
            raised.append(e)

    threads = [threading.Thread(target=guarded, args=(fn,)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if raised:
        raise raised[0]
