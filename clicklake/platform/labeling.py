"""The click label (DESIGN §4.2): did a click for this impression come within the window after it?

`label = 1` iff a click for the impression has `t < click.ts <= t + window` (15 minutes by
default). A click names its impression by `impression_id`; a click without one is attributed to
the latest impression of the same user and campaign strictly before the click. A click at or
before its impression never labels it. Click ids count once, whichever hours they were read from.

Labeling hour H therefore needs the impressions of H (to label), the clicks up to
`end(H) + window`, and the impressions up to `end(H) + window` (a click without an id might belong
to a later impression than any in H).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_LABEL_WINDOW_MS = 15 * 60_000


def _ms(col) -> np.ndarray:
    return pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)


def attribute_clicks(impressions: pa.Table, clicks: pa.Table) -> pd.DataFrame:
    """Each distinct click with the impression it is for: columns click_id, click_ts,
    impression_id (None when unattributable)."""
    clk = pd.DataFrame({
        "click_id": clicks["click_id"].to_numpy(zero_copy_only=False),
        "click_ts": _ms(clicks["ts"]),
        "impression_id": clicks["impression_id"].to_numpy(zero_copy_only=False),
        "user_id": clicks["user_id"].to_numpy(zero_copy_only=False),
        "campaign_id": clicks["campaign_id"].to_numpy(zero_copy_only=False),
    })
    clk = clk.sort_values(["click_ts", "click_id"], kind="stable").drop_duplicates("click_id")
    named = clk[clk["impression_id"].notna()][["click_id", "click_ts", "impression_id"]]
    anon = clk[clk["impression_id"].isna()].drop(columns="impression_id").copy()
    if len(anon):
        imp = pd.DataFrame({
            "impression_id": impressions["impression_id"].to_numpy(zero_copy_only=False),
            "imp_ts": _ms(impressions["ts"]),
            "user_id": impressions["user_id"].to_numpy(zero_copy_only=False),
            "campaign_id": impressions["campaign_id"].to_numpy(zero_copy_only=False),
        }).sort_values(["imp_ts", "impression_id"], kind="stable")
        # Latest impression strictly before the click; among equal times the greatest id, so the
        # answer does not depend on input order.
        imp = imp.drop_duplicates(["user_id", "campaign_id", "imp_ts"], keep="last")
        for frame in (anon, imp):  # one key dtype on both sides, even for empty frames
            frame[["user_id", "campaign_id"]] = frame[["user_id", "campaign_id"]].astype("string")
        matched = pd.merge_asof(
            anon.sort_values("click_ts", kind="stable"),
            imp,
            left_on="click_ts",
            right_on="imp_ts",
            by=["user_id", "campaign_id"],
            allow_exact_matches=False,
            direction="backward",
        )
        named = pd.concat([named, matched[["click_id", "click_ts", "impression_id"]]])
    return named.reset_index(drop=True)


def label_impressions(
    impressions: pa.Table,
    clicks: pa.Table,
    window_ms: int = DEFAULT_LABEL_WINDOW_MS,
    context_impressions: pa.Table | None = None,
) -> pa.Table:
    """`impressions` plus `label` (int8) and `first_click_delay_ms` (null without a labeling click).

    `context_impressions` are extra impressions (e.g. of the next hour) that clicks without an id
    may be attributed to; they are not labeled themselves.
    """
    pool = impressions if context_impressions is None else pa.concat_tables(
        [impressions.select(["impression_id", "ts", "user_id", "campaign_id"]),
         context_impressions.select(["impression_id", "ts", "user_id", "campaign_id"])])
    attributed = attribute_clicks(pool, clicks)
    imp_ts = pd.Series(_ms(impressions["ts"]),
                       index=impressions["impression_id"].to_numpy(zero_copy_only=False))
    imp_ts = imp_ts[~imp_ts.index.duplicated()]
    attributed = attributed[attributed["impression_id"].isin(imp_ts.index)]
    delay = attributed["click_ts"].to_numpy() - imp_ts.reindex(attributed["impression_id"]).to_numpy()
    ok = (delay > 0) & (delay <= window_ms)
    first = pd.Series(delay[ok], index=attributed["impression_id"].to_numpy()[ok]).groupby(level=0).min()
    ids = impressions["impression_id"].to_numpy(zero_copy_only=False)
    first_delay = first.reindex(ids)
    has_click = first_delay.notna().to_numpy()
    delays = pa.array(first_delay.fillna(0).to_numpy().astype(np.int64), mask=~has_click)
    return impressions.append_column("label", pa.array(has_click.astype(np.int8))).append_column(
        "first_click_delay_ms", delays
    )
