"""The one Definitions object of clicklake: assets, checks, schedules, sensors and resources."""

import dagster as dg

from clicklake.assets.labeled import labeled_assets
from clicklake.assets.profiles import profile_assets
from clicklake.assets.raw import raw_assets
from clicklake.assets.serving import serving_assets, serving_checks, serving_sensors
from clicklake.assets.training import training_assets
from clicklake.resources.backends import build_resources
from clicklake.run_history import prune_run_history_job, prune_run_history_schedule
from clicklake.schedules import hourly_automation, raw_hourly_job, raw_hourly_schedule

defs = dg.Definitions(
    assets=[*raw_assets, *profile_assets, *labeled_assets, *training_assets, *serving_assets],
    asset_checks=[*serving_checks],
    jobs=[raw_hourly_job, prune_run_history_job],
    schedules=[raw_hourly_schedule, prune_run_history_schedule],
    sensors=[*serving_sensors, hourly_automation],
    resources=build_resources(),  # CLICKLAKE_BACKEND: local (default) or aws
)
