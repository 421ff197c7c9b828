"""The data checks every raw partition must pass (run with Great Expectations in `quality`)."""

from __future__ import annotations

import pandas as pd

from clicklake.platform.events import SPECS
from clicklake.platform.quality import CheckSpec
from clicklake.platform.timeutil import HOUR_MS


def raw_check_specs(stream: str, hour_ms: int) -> list[CheckSpec]:
    spec = SPECS[stream]
    start = pd.Timestamp(hour_ms, unit="ms", tz="UTC")
    end = pd.Timestamp(hour_ms + HOUR_MS, unit="ms", tz="UTC")
    checks = [
        CheckSpec(
            "ids_present_and_unique",
            f"Every row has a {spec.id_field}, user_id and ts, and no {spec.id_field} appears twice.",
            (("not_null", spec.id_field), ("unique", spec.id_field), ("not_null", "user_id"),
             ("not_null", "ts")),
        ),
        CheckSpec(
            "ts_in_partition",
            "Every event time lies inside the partition's hour [start, end).",
            (("in_window", "ts", start, end),),
        ),
    ]
    if stream == "impressions":
        checks.append(CheckSpec("cost_non_negative", "cost is null or >= 0 USD.",
                                (("between", "cost", 0, None),)))
    if stream == "predictions":
        checks.append(CheckSpec("score_in_unit_interval", "score lies in [0, 1].",
                                (("between", "score", 0, 1),)))
    return checks


def raw_check_names(stream: str) -> list[tuple[str, str]]:
    """(name, description) of the checks of `stream`, for declaring them before any run."""
    return [(c.name, c.description) for c in raw_check_specs(stream, 0)]
