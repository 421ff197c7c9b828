"""The one Definitions object of clicklake: assets, checks, schedules, sensors and resources."""

from __future__ import annotations

import dagster as dg

from clicklake.assets.raw import raw_assets
from clicklake.resources.lake import LakeResource
from clicklake.schedules import raw_hourly_job, raw_hourly_schedule

defs = dg.Definitions(
    assets=[*raw_assets],
    jobs=[raw_hourly_job],
    schedules=[raw_hourly_schedule],
    resources={"lake": LakeResource()},
)
