"""The data checks of a labeled hour (run with Great Expectations in `quality`)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.compute as pc

from clicklake.platform.features import CATEGORICAL, WINDOWS
from clicklake.platform.quality import CheckSpec

# Below this many rows a label rate says little, so its bounds are not enforced.
LABEL_RATE_MIN_ROWS = 500

ALWAYS_DEFINED = (
    *(f"user_{m}_{w}" for w in WINDOWS for m in ("impressions", "clicks", "spend")),
    *(f"user_ctr_{w}" for w in WINDOWS),
    "uc_impressions", "uc_clicks", "uc_ctr", "country_ctr_24h", "campaign_ctr_24h",
    "domain_ctr_24h", "global_ctr_24h", "country_lift_24h", "campaign_lift_24h", "domain_lift_24h", "is_crawler", "hour_of_day",
    "day_of_week", *CATEGORICAL,
)


def labeled_check_specs(rows: int, label_rate: tuple[float, float]) -> list[CheckSpec]:
    checks = [
        CheckSpec("impression_ids_unique", "No impression id twice, none missing.",
                  (("not_null", "impression_id"), ("unique", "impression_id"))),
        CheckSpec("required_features_present",
                  "Every feature defined for all impressions is non-null.",
                  tuple(("not_null", c) for c in ("ts", "user_id", "label", *ALWAYS_DEFINED))),
        CheckSpec("feature_ranges_sane", "Counts >= 0, a user's CTRs >= 0, segment CTRs and "
                  "scores in [0, 1], calendar fields in range, times since last events > 0.",
                  (*(("between", f"user_{m}_{w}", 0, None) for w in WINDOWS
                     for m in ("impressions", "clicks", "spend")),
                   # A user's window can hold more clicks than impressions (the impressions of
                   # its first clicks fell before it; a click farm): its smoothed CTR then
                   # passes 1, rightly. Segments' windows hold too many events for that.
                   *(("between", f"user_ctr_{w}", 0, None) for w in WINDOWS),
                   ("between", "uc_ctr", 0, None), ("between", "country_ctr_24h", 0, 1),
                   ("between", "campaign_ctr_24h", 0, 1), ("between", "domain_ctr_24h", 0, 1),
                   ("between", "global_ctr_24h", 0, 1),
                   ("between", "pred_score", 0, 1), ("between", "pred_age_s", 0, None),
                   ("between", "hour_of_day", 0, 23), ("between", "day_of_week", 0, 6),
                   ("between", "secs_since_last_impression", 0.001, None),
                   ("between", "secs_since_last_click", 0.001, None),
                   ("between", "label", 0, 1))),
    ]
    if rows >= LABEL_RATE_MIN_ROWS:
        lo, hi = label_rate
        checks.append(CheckSpec("label_rate_within_bounds",
                                f"The share of clicked impressions lies in [{lo}, {hi}] (not "
                                f"enforced below {LABEL_RATE_MIN_ROWS} rows).",
                                (("mean_between", "label", lo, hi),)))
    return checks


# The label rate's bounds unless the run's config says otherwise (`LabeledConfig`).
DEFAULT_LABEL_RATE = (0.0005, 0.3)

# (name, description) of every check, for declaring them before any run (the UI shows these).
LABELED_CHECKS = tuple((c.name, c.description)
                       for c in labeled_check_specs(LABEL_RATE_MIN_ROWS, DEFAULT_LABEL_RATE))


def check_and_write(store, key: str, table, label_rate: tuple[float, float]
                    ) -> tuple[dict, list[str], int]:
    """A labeled hour checked, then written to `key` when every check passed (else an earlier
    copy there is deleted: training reads every labeled file): its outcomes by check name, the
    checks failed, the bytes written. What the asset does with each hour it builds, and what
    the benchmark times beside the build. The Parquet is encoded on a thread while the checks
    run (Arrow's encoding without the GIL on the second core, Great Expectations' Python on
    this one); only written once they pass (a failing hour's encoding is waited for, unused)."""
    from clicklake.platform.labeled import text_columns
    from clicklake.platform.quality import checked_frame, run_checks  # GX: on first use
    from clicklake.platform.storage import parquet_bytes

    specs = labeled_check_specs(table.num_rows, label_rate)
    with ThreadPoolExecutor(1, thread_name_prefix="labeled-encode") as pool:
        encoded = pool.submit(parquet_bytes, table, use_dictionary=text_columns(table))
        outcomes = {o.name: o for o in run_checks(checked_frame(table, specs), specs)}
        failed = sorted(name for name, o in outcomes.items() if not o.passed)
        if failed:
            store.delete(key)
            return outcomes, failed, 0
        data = encoded.result()
    store.write_bytes(key, data)
    return outcomes, failed, len(data)


def hour_summary(table) -> dict:
    """What a labeled hour's metadata says of its rows: the label rate, the clicked impressions,
    the distinct users, the rows with a prediction score (the asset's, and the benchmark's)."""
    labels = table["label"].to_numpy()
    return {
        "label_rate": float(labels.mean()) if len(labels) else 0.0,
        "clicked_impressions": int(labels.sum()),
        "users": pc.count_distinct(table["user_id"]).as_py(),
        "with_prediction_score": int(np.isfinite(table["pred_score"].to_numpy(
            zero_copy_only=False)).sum()),
    }
