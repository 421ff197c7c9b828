"""When the hourly assets downstream of raw materialize by themselves: as soon as their inputs are
complete.

`raw_hourly_schedule` builds hour H at H+2h15 (with the default lateness of 1 h), when its
landing window has closed; by then the latest hourly partition is H+1 (and the latest labeled
one H). Dagster's `eager()` looks at the latest partition only, so it would never fire on what
the schedule builds: here it looks back `CATCH_UP` from the latest, which also lets the daemon
catch up after a pause that short. A lateness of a day or more delays the schedule as much:
the look-back grows with it (read from the deployment's settings when the definitions load),
or the hours the schedule builds would fall outside it and nothing would follow them.

A raw hour that failed its blocking checks is refused by the runs built on it (`checks.
require_inputs_passed`, from the hour's own materialization): Dagster's
`all_deps_blocking_checks_passed` reads one result per check and asset, the latest of any hour,
so it released a bad hour once a later one passed, and held back every good hour while the
latest had failed.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from clicklake.platform.settings import settings

# 22 h of catch-up beyond the schedule's delay (1 h + the lateness): a day with the default
CATCH_UP = timedelta(hours=max(24, 22 + 1 + -(-settings().allowed_lateness_minutes // 60)))


def when_inputs_complete() -> dg.AutomationCondition:
    """`eager()` over the last `CATCH_UP` of partitions."""
    return dg.AutomationCondition.eager().replace(
        "in_latest_time_window", dg.AutomationCondition.in_latest_time_window(CATCH_UP)
    ).with_label(f"eager over the last {CATCH_UP / timedelta(hours=1):g} h")
