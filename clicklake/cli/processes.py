"""Child processes the CLI (and its tests) start: the API server, the daemon, the web UI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """Ask a child to stop (SIGTERM), and kill it if it has not within `timeout` seconds. A
    child started in a session of its own (`start_new_session=True`) is then killed with its
    whole process group, so nothing it started (the API server's workers) outlives it."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        own_group = False
        with contextlib.suppress(OSError):
            own_group = os.getpgid(proc.pid) == proc.pid
        if own_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(timeout=timeout)
