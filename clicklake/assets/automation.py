"""When the hourly assets downstream of raw materialize by themselves: as soon as their inputs are
complete and every blocking check of those inputs passed.

`raw_hourly_schedule` builds hour H at H+2h15, when its landing window has closed; by then the
latest hourly partition is H+1 (and the latest labeled one H). Dagster's `eager()` looks at the
latest partition only, so it would never fire on what the schedule builds: here it looks back
`CATCH_UP` from the latest, which also lets the daemon catch up after a pause that short.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

CATCH_UP = timedelta(hours=24)


def when_inputs_complete() -> dg.AutomationCondition:
    """`eager()` over the last `CATCH_UP` of partitions, and only on inputs whose blocking checks
    passed (a raw hour failing its checks stops its tiles, snapshots and labeled hours)."""
    return (dg.AutomationCondition.eager().replace(
                "in_latest_time_window", dg.AutomationCondition.in_latest_time_window(CATCH_UP))
            & dg.AutomationCondition.all_deps_blocking_checks_passed()
            ).with_label(f"eager over the last {CATCH_UP / timedelta(hours=1):g} h, "
                         "blocking checks of inputs passed")
