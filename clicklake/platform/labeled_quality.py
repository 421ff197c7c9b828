"""The data checks of a labeled hour (run with Great Expectations in `quality`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.platform.features import CATEGORICAL, WINDOWS
from clicklake.platform.quality import CheckOutcome, CheckSpec

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


class HourChecked(NamedTuple):
    key: str
    table: pa.Table
    outcomes: dict[str, CheckOutcome]  # by check name
    failed: list[str]  # the checks failed, sorted
    nbytes: int  # written; 0 when not


# Consecutive hours are validated together up to about this many rows (`checked_hours`): Great
# Expectations' cost is mostly per expectation and per validation, not per row (an hour of ~40 k
# rows took ~60 ms alone, ~35 ms in fours: measured), while each row held until its group is
# checked costs ~0.7 KB (its table, its rows of the group's frame, its share of the file).
CHECK_GROUP_ROWS = 80_000

# The column of a group's frame carrying each row's hour's label rate (NaN where the hour has too
# few rows for it to be enforced): the hours' `mean_between` checks as one range check.
_HOUR_LABEL_RATE = "__clicklake_hour_label_rate"


def checked_hours(store, hours: Iterable[tuple[str, pa.Table]], label_rate: tuple[float, float],
                  group_rows: int = CHECK_GROUP_ROWS,
                  before_write: Callable[[str], None] | None = None) -> Iterator[HourChecked]:
    """Each labeled hour of `hours` (its key, its table) checked, then written to its key when
    every check passed (else an earlier copy there is deleted: training reads every labeled
    file); yielded in order, a group at a time. What the asset does with the hours it builds,
    and what the benchmark times beside the build.

    Consecutive hours are validated together, as one frame, until the group holds `group_rows`
    rows (1: each hour alone): each check's expectations then pass for the group only if they
    pass for every hour of it (every value non-null and in range, every id once; each hour's
    label rate carried as a column), and a group that fails anything is validated again hour by
    hour, so each hour's outcomes and counts are exactly its own validation's. When `hours`
    raises, the hours it gave before are checked, written and yielded, then its error raised.
    `before_write(key)` is called just before each hour is written or its copy deleted: it may
    raise to refuse the hour (its inputs changed while it waited in its group); the hours of
    the group before it are written, the rest not.
    Each hour's Parquet is encoded on a thread as it arrives (Arrow's encoding without the GIL
    on the second core, Great Expectations' Python on this one)."""
    from clicklake.platform.labeled import text_columns
    from clicklake.platform.storage import parquet_bytes

    with ThreadPoolExecutor(1, thread_name_prefix="labeled-encode") as pool:
        group: list = []
        rows = 0
        try:
            for key, table in hours:
                group.append((key, table, pool.submit(
                    parquet_bytes, table, use_dictionary=text_columns(table))))
                rows += table.num_rows
                if rows >= group_rows:
                    full, group, rows = group, [], 0
                    yield from _checked_group(store, full, label_rate, before_write)
                    del full  # its tables are not held while the next group is built
        except Exception:
            # `hours` raised (a build refused an hour): the hours before it are checked and
            # written still, as when each hour was written as it came.
            if group:
                yield from _checked_group(store, group, label_rate, before_write)
            raise
        if group:
            yield from _checked_group(store, group, label_rate, before_write)


def _checked_group(store, group: list, label_rate: tuple[float, float],
                   before_write: Callable[[str], None] | None = None) -> list[HourChecked]:
    """A group's hours checked, each written or its earlier copy deleted (all before any is
    reported)."""
    done = []
    for (key, table, encoded), outcomes in zip(
            group, _group_outcomes([t for _, t, _ in group], label_rate), strict=True):
        if before_write is not None:
            before_write(key)
        failed = sorted(name for name, o in outcomes.items() if not o.passed)
        if failed:  # its encoding is waited for, unused (leaving the pool)
            store.delete(key)
            nbytes = 0
        else:
            data = encoded.result()
            store.write_bytes(key, data)
            nbytes = len(data)
        done.append(HourChecked(key, table, outcomes, failed, nbytes))
    return done


def _group_outcomes(tables: list[pa.Table], label_rate: tuple[float, float]
                    ) -> list[dict[str, CheckOutcome]]:
    """Each table's outcomes by check name, as `run_checks` of its own checks gives them."""
    from clicklake.platform.quality import checked_frame, run_checks

    own = [labeled_check_specs(t.num_rows, label_rate) for t in tables]
    if len(tables) > 1 and all(t.schema.equals(tables[0].schema) for t in tables):
        # The checks of every row, not those of an hour's label rate (a mean of its own rows).
        specs = labeled_check_specs(0, label_rate)
        df = checked_frame(pa.concat_tables(tables), specs)
        # (an hour's own checks say whether its label rate is enforced: a check more)
        rates = [_label_rate(t) if len(s) > len(specs) else math.nan
                 for t, s in zip(tables, own, strict=True)]
        if not all(math.isnan(r) for r in rates):
            df[_HOUR_LABEL_RATE] = np.repeat(rates, [t.num_rows for t in tables])
            specs = [*specs, CheckSpec("label_rates", "", (("between", _HOUR_LABEL_RATE,
                                                             *label_rate),))]
        if all(o.passed for o in run_checks(df, specs)):
            return [{c.name: CheckOutcome(c.name, True, c.description) for c in s} for s in own]
    return [{o.name: o for o in run_checks(checked_frame(t, s), s)}
            for t, s in zip(tables, own, strict=True)]


def _label_rate(table: pa.Table) -> float:
    """The hour's label rate as its own `mean_between` check computes it (the mean of the label
    column of its checked frame, by pandas)."""
    from clicklake.platform.quality import checked_frame

    spec = CheckSpec("label_rate", "", (("mean_between", "label", 0, 1),))
    return float(checked_frame(table.select(["label"]), [spec])["label"].mean())


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
