"""The side file of true click probabilities, one Parquet file per event hour.

It records, for every good impression, what the simulation knew: the probability of a click at
all (`p_click`), of a click within the label window (`p_label`), whether and when it was
clicked, and whether the user was a crawler or a click farm. The pipeline never reads it; tests
and benchmarks use it for the oracle AUC and to check labels.
"""

from __future__ import annotations

import pyarrow as pa

from clicklake.platform.storage import Store
from clicklake.platform.timeutil import hive_hour_path

DEFAULT_PREFIX = "truth"
TS = pa.timestamp("ms", tz="UTC")

TRUTH_SCHEMA = pa.schema(
    [
        pa.field("impression_id", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("campaign_id", pa.string(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("p_click", pa.float64(), nullable=False),
        pa.field("p_label", pa.float64(), nullable=False),
        pa.field("clicked", pa.bool_(), nullable=False),
        pa.field("click_ts", TS),
        pa.field("is_crawler", pa.bool_(), nullable=False),
        pa.field("is_click_farm", pa.bool_(), nullable=False),
    ]
)


def truth_key(hour_ms: int, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/click_probability/{hive_hour_path(hour_ms)}/part-0.parquet"


def write_truth(store: Store, hour_ms: int, table: pa.Table, prefix: str = DEFAULT_PREFIX) -> None:
    store.write_parquet(truth_key(hour_ms, prefix), table.cast(TRUTH_SCHEMA))


def read_truth(store: Store, prefix: str = DEFAULT_PREFIX) -> pa.Table:
    """Every truth row under the store, in event-hour order (empty table when there is none)."""
    keys = [k for k in store.list(f"{prefix}/click_probability/") if k.endswith(".parquet")]
    if not keys:
        return TRUTH_SCHEMA.empty_table()
    return pa.concat_tables([store.read_parquet(k).cast(TRUTH_SCHEMA) for k in keys])
