"""Settings of a whole deployment: one value for every run, tick and server, from the environment.

Raw hours, the online fold, the API's horizon, the labeled hours and the snapshot retention
must agree on these: an event kept by one raw hour and quarantined by its neighbour, or folded
online but not in the lake, breaks the invariants of DESIGN §4. A per-run setting could not
promise that (the schedule's and the automation's runs would use the default), so they are
read from the environment each time they are used, by Dagster's runs, sensors and schedules and
by `clicklake serve` alike; the assets record the values they used in their metadata.

| variable | default | range |
|---|---|---|
| `CLICKLAKE_ALLOWED_LATENESS_MINUTES` | 60 | 0 to 10080 (a week) |
| `CLICKLAKE_FUTURE_TOLERANCE_MINUTES` | 15 | 0 to 1440 |
| `CLICKLAKE_LABEL_WINDOW_MINUTES` | 15 | 1 to 60 (a labeled hour reads the next hour's clicks only) |
| `CLICKLAKE_RETENTION_DAYS` | 30 | 2 to 36500 (hourly user snapshots kept) |
| `CLICKLAKE_RUN_HISTORY_DAYS` | 14 | 2 to 36500 (the landing sensor's finished runs kept) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from clicklake.platform.labeling import DEFAULT_LABEL_WINDOW_MS
from clicklake.platform.profiles import DEFAULT_RETENTION_DAYS
from clicklake.platform.raw import DEFAULT_FUTURE_TOLERANCE_MS, DEFAULT_LATENESS_MS, Rules
from clicklake.platform.timeutil import MINUTE_MS


@dataclass(frozen=True)
class Settings:
    allowed_lateness_minutes: int = DEFAULT_LATENESS_MS // MINUTE_MS
    future_tolerance_minutes: int = DEFAULT_FUTURE_TOLERANCE_MS // MINUTE_MS
    label_window_minutes: int = DEFAULT_LABEL_WINDOW_MS // MINUTE_MS
    retention_days: int = DEFAULT_RETENTION_DAYS
    run_history_days: int = 14

    def rules(self) -> Rules:
        """The raw layer's rules (what is late, what is in the future) under these settings."""
        return Rules(allowed_lateness_ms=self.allowed_lateness_minutes * MINUTE_MS,
                     future_tolerance_ms=self.future_tolerance_minutes * MINUTE_MS)

    @property
    def label_window_ms(self) -> int:
        return self.label_window_minutes * MINUTE_MS


# variable -> (field, lowest, highest); a retention under 2 days would delete the snapshots the
# automation's day of catch-up still reads, and the sensor runs a lost sensor cursor is rebuilt
# from (the last 24 hours')
VARIABLES = {
    "CLICKLAKE_ALLOWED_LATENESS_MINUTES": ("allowed_lateness_minutes", 0, 7 * 24 * 60),
    "CLICKLAKE_FUTURE_TOLERANCE_MINUTES": ("future_tolerance_minutes", 0, 24 * 60),
    "CLICKLAKE_LABEL_WINDOW_MINUTES": ("label_window_minutes", 1, 60),
    "CLICKLAKE_RETENTION_DAYS": ("retention_days", 2, 36_500),
    "CLICKLAKE_RUN_HISTORY_DAYS": ("run_history_days", 2, 36_500),
}


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The deployment's settings from `environ` (default: the process's environment); ValueError
    naming the variable for a value that is not a whole number in its range."""
    environ = os.environ if environ is None else environ
    values = {}
    for name, (field, lo, hi) in VARIABLES.items():
        text = environ.get(name, "").strip()
        if not text:
            continue  # the default
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{name}={text[:40]!r}: a whole number expected") from None
        if not lo <= value <= hi:
            raise ValueError(f"{name}={value}: must be from {lo} to {hi}")
        values[field] = value
    return Settings(**values)
