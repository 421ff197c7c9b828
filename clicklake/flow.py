"""Run the whole asset graph over a range of hours, in the order the graph needs: ranged runs
of the raw and lookup assets (the profile chains fold hour by hour inside theirs), one of the labeled
hours (each needs its next hour), then the training set, model and deployment. Used by
`clicklake demo` and tests; in production the schedule, sensors and backfills in the Dagster UI do
the same (a backfill splits the same ranges into runs by each asset's backfill policy)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from clicklake.definitions import defs
from clicklake.platform.timeutil import HOUR_MS, hour_partition_key

# Hourly assets in two runs, as a backfill splits them by backfill policy: independent hours,
# then the two chains that fold their range hour after hour.
HOURLY = ["raw_impressions", "raw_clicks", "raw_predictions", "user_hour_tiles"]
CHAINS = ["user_profiles", "segment_profiles"]
LAGGED = ["labeled_impressions", "prediction_outcomes"]
TRAINING = ["training_set", "click_model", "deployed_model"]
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@dataclass
class FlowResult:
    materializations: dict[str, list[dict]] = field(default_factory=dict)  # asset -> metadata
    failed_checks: list[str] = field(default_factory=list)
    failed_steps: dict[str, str] = field(default_factory=dict)  # step -> its error's message

    def add(self, result: dg.ExecuteInProcessResult) -> None:
        for event in result.get_asset_materialization_events():
            mat = event.step_materialization_data.materialization
            meta = {k: v.value for k, v in mat.metadata.items()}
            meta["partition"] = mat.partition
            self.materializations.setdefault(mat.asset_key.to_user_string(), []).append(meta)
        self.failed_checks += [f"{c.asset_key.to_user_string()}:{c.check_name}"
                               for c in result.get_asset_check_evaluations() if not c.passed]
        for event in result.get_step_failure_events():
            line = (event.step_failure_data.error.message.strip().splitlines() or [""])[0]
            kind, _, text = line.partition(": ")  # "dagster....Failure: the reason"
            self.failed_steps[event.step_key] = text if text and " " not in kind else line

    def crashed(self) -> dict[str, str]:
        """Failed steps but those of an asset whose blocking check failed (the check says why:
        a model below its gate is an outcome, not a crash)."""
        checked = {c.split(":")[0] for c in self.failed_checks}
        return {step: msg for step, msg in self.failed_steps.items() if step not in checked}

    def latest(self, asset: str) -> dict:
        return self.materializations.get(asset, [{}])[-1]


def run_flow(resources: dict, start_ms: int, hours: int, instance: dg.DagsterInstance | None = None,
             train: bool = True, progress: Callable[[str], None] | None = None,
             tags: dict | None = None, log_level: str = "WARNING",
             model_config: dict | None = None) -> FlowResult:
    """`model_config` overrides `click_model`'s config (e.g. a lower `auc_floor` for a tiny
    stream whose model only has to exist)."""
    assets = list(defs.assets)
    out = FlowResult()
    # One instance for the whole flow: later steps read what earlier runs recorded.
    instance = instance or dg.DagsterInstance.ephemeral()

    def run(selection: list[str], hours: list[str] | None, raise_on_error: bool = True,
            ops: dict | None = None) -> None:
        """One run over `hours` (first..last partition key, a ranged run as a backfill makes it);
        None = unpartitioned."""
        if progress:
            label = "unpartitioned" if not hours else (
                hours[0] if len(hours) == 1 else f"{hours[0]} .. {hours[-1]} ({len(hours)} hours)")
            progress(f"{label}: {', '.join(selection)}")
        chosen = [a for a in assets if {k.to_user_string() for k in a.keys} & set(selection)]
        ranged = {RANGE_START: hours[0], RANGE_END: hours[-1]} if hours else {}
        result = dg.materialize(
            chosen, resources=resources, instance=instance, tags={**(tags or {}), **ranged},
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}},
                        **({"ops": ops} if ops else {})},
            raise_on_error=raise_on_error,
        )
        out.add(result)

    keys = [hour_partition_key(start_ms + i * HOUR_MS) for i in range(hours)]
    if keys:
        run(HOURLY, keys)
        run(CHAINS, keys)
    if len(keys) > 1:  # the last hour has no complete next hour yet
        run(LAGGED, keys[:-1])
    if train:
        # A model that fails its gate is an outcome, not a crash: the blocking check stops
        # deployed_model and FlowResult.failed_checks says why.
        run(TRAINING, None, raise_on_error=False,
            ops={"click_model": {"config": model_config}} if model_config else None)
    return out
