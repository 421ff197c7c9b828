"""Metadata helpers shared by assets: Arrow schema → Dagster column schema, counts."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name=f.name, type=str(f.type), description=None) for f in schema]
    )
