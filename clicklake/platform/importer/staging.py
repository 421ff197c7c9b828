"""Bounded-memory sort, dedupe and join of converted rows, through Parquet spills and DuckDB.

Why DuckDB: rows are converted in one streaming pass and spilled in fixed-size Parquet chunks; a
DuckDB database file in the scratch folder then deduplicates (a window over the id), sorts by time
and joins the clicks table to its impressions, all under a memory limit, spilling to disk as it
needs. A hand-written k-way merge would sort, but the dedupe and the join would need their own
external algorithms; hour buckets would break on one huge hour.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import astuple, fields

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from clicklake.platform.importer.convert import ClickRow, ImpressionRow

CHUNK_ROWS = 100_000
OUT_BATCH = 20_000

IMPRESSION_STAGE = pa.schema([
    ("line_no", pa.int64()), ("impression_id", pa.string()), ("ts", pa.int64()),
    ("user_id", pa.string()), ("campaign_id", pa.string()), ("domain", pa.string()),
    ("ip", pa.string()), ("user_agent", pa.string()), ("cost", pa.float64()),
    ("click_ts", pa.int64()), ("click_id", pa.string()), ("row_hash", pa.binary()),
])
CLICK_STAGE = pa.schema([
    ("line_no", pa.int64()), ("click_id", pa.string()), ("impression_id", pa.string()),
    ("ts", pa.int64()), ("user_id", pa.string()), ("campaign_id", pa.string()),
    ("row_hash", pa.binary()),
])
assert [f.name for f in fields(ImpressionRow)] == IMPRESSION_STAGE.names
assert [f.name for f in fields(ClickRow)] == CLICK_STAGE.names


class Spill:
    """Appends rows and writes them out every CHUNK_ROWS, so memory holds one chunk at most."""

    def __init__(self, folder: str, name: str, schema: pa.Schema, chunk_rows: int = CHUNK_ROWS):
        self.folder, self.name, self.schema, self.chunk_rows = folder, name, schema, chunk_rows
        self.rows: list[tuple] = []
        self.files: list[str] = []

    def add(self, row: ImpressionRow | ClickRow) -> None:
        self.rows.append(astuple(row))
        if len(self.rows) >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows and self.files:
            return
        cols = list(zip(*self.rows, strict=True)) if self.rows else [[]] * len(self.schema)
        table = pa.Table.from_arrays(
            [pa.array(c, type=f.type) for c, f in zip(cols, self.schema, strict=True)],
            schema=self.schema,
        )
        path = os.path.join(self.folder, f"{self.name}-{len(self.files):06d}.parquet")
        pq.write_table(table, path, compression="zstd")
        self.files.append(path)
        self.rows = []


def _quote(text: str) -> str:
    """A SQL string literal (SET takes no bound parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _files_sql(files: list[str]) -> str:
    return "[" + ", ".join(_quote(f) for f in files) + "]"


class Resolver:
    """DuckDB over the spilled chunks: dedupe, then sorted streams of kept events and rejects."""

    def __init__(self, folder: str, memory_limit: str = "512MB", threads: int | None = None):
        self.con = duckdb.connect(os.path.join(folder, "import.duckdb"))
        self.con.execute(f"SET memory_limit = {_quote(memory_limit)}")
        # The scratch folder comes from --tmp-dir or TMPDIR: any path, an apostrophe included.
        self.con.execute(f"SET temp_directory = {_quote(os.path.join(folder, 'duckdb-tmp'))}")
        self.con.execute("SET preserve_insertion_order = false")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")

    def close(self) -> None:
        self.con.close()

    def load(self, table: str, key: str, files: list[str]) -> None:
        """Rank rows per `key` by line: rank 1 is kept; later ranks are duplicates or conflicts."""
        self.con.execute(f"""
            CREATE OR REPLACE TABLE {table} AS
            SELECT *, row_number() OVER w AS rn,
                   first_value(row_hash) OVER w AS first_hash,
                   first_value(line_no) OVER w AS first_line
            FROM read_parquet({_files_sql(files)})
            WINDOW w AS (PARTITION BY {key} ORDER BY line_no)
        """)

    def count(self, sql: str) -> int:
        return int(self.con.sql(sql).fetchall()[0][0])

    def duplicates(self, table: str) -> int:
        """Rows identical to an earlier row with the same id."""
        return self.count(f"SELECT count(*) FROM {table} WHERE rn > 1 AND row_hash = first_hash")

    def join_clicks(self) -> None:
        """Attach each kept click of the clicks table to its kept impression (if any)."""
        self.con.execute("""
            CREATE OR REPLACE TABLE clk_joined AS
            SELECT c.line_no, c.click_id, c.impression_id, c.ts,
                   coalesce(c.user_id, i.user_id) AS user_id,
                   coalesce(c.campaign_id, i.campaign_id) AS campaign_id,
                   i.ts AS imp_ts, i.impression_id IS NOT NULL AS matched
            FROM clk c LEFT JOIN imp i ON i.impression_id = c.impression_id AND i.rn = 1
            WHERE c.rn = 1
        """)

    def batches(self, sql: str) -> Iterator[pa.RecordBatch]:
        reader = self.con.sql(sql).to_arrow_reader(OUT_BATCH)
        yield from reader

    def _rows(self, sql: str) -> Iterator[tuple]:
        for batch in self.batches(sql):
            cols = [c.to_pylist() for c in batch.columns]
            yield from zip(*cols, strict=True)

    def rows(self, sql: str) -> Iterator[tuple]:
        return self._rows(sql)
