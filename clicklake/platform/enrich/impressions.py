"""Impressions enriched with country and user-agent columns."""

from __future__ import annotations

import pyarrow as pa

from clicklake.platform.enrich.country import countries
from clicklake.platform.enrich.user_agent import user_agent_fields

ENRICHED_COLUMNS = ("country", "device_type", "os", "browser", "is_crawler")


def enrich_impressions(table: pa.Table) -> pa.Table:
    """`table` plus `country`, `device_type`, `os`, `browser` and `is_crawler`.

    Reads the optional `ip` and `user_agent` columns; when one is absent or all null its outputs
    are "unknown" (and `is_crawler` False). Existing columns of those names are replaced, so
    enriching twice gives the same table.
    """
    n = table.num_rows
    ips = table.column("ip") if "ip" in table.column_names else pa.nulls(n, pa.string())
    uas = (table.column("user_agent") if "user_agent" in table.column_names
           else pa.nulls(n, pa.string()))
    ua_fields = user_agent_fields(uas)
    out = table.drop_columns([c for c in ENRICHED_COLUMNS if c in table.column_names])
    out = out.append_column("country", countries(ips))
    for name in ua_fields.column_names:
        out = out.append_column(name, ua_fields.column(name))
    return out
