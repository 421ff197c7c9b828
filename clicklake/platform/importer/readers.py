"""Streaming readers for CSV and Parquet logs, plain or gzip-compressed.

Each reader yields `(line_no, values)` in the order of its `columns`, or a `Problem` for a row it
cannot split; it never loads the whole file. CSV line numbers are physical lines of the
(decompressed) text, counting any preamble, so a user can open the file at that line; Parquet rows
are numbered from 1. Stray bytes before the header (a BOM, a banner, junk glued to the first column
name) are skipped and reported; blank lines are counted and skipped.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MAX_PREAMBLE_LINES = 1000  # how far to look for the header line
RAW_KEEP = 1000  # characters of a bad row kept for the rejects file

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long user agents are not errors


class ReadError(ValueError):
    """The file as a whole cannot be read (wrong format, no header): the message says why."""


@dataclass
class Problem:
    line_no: int
    reason: str
    detail: str
    raw: str = ""


@dataclass(frozen=True)
class OutOfRange:
    """A typed Parquet value Python cannot hold (a timestamp or date past year 9999 or before
    year 1), kept as its raw number so the row can be rejected with a reason instead of crashing
    the import; `str` is stable, so it can take part in a row's hash like any other value."""

    type: str
    value: int | None

    def __str__(self) -> str:
        return f"{self.value} ({self.type}, out of range)"


@dataclass
class TableReader:
    """Common face of the readers: columns, a row iterator, and progress in `unit`s of `total`."""

    path: str
    columns: list[str]
    unit: str
    total: int
    preamble: list[tuple[int, str]] = field(default_factory=list)  # skipped lines before header
    blank_lines: int = 0

    def rows(self) -> Iterator[tuple[int, list[Any]] | Problem]:  # pragma: no cover - abstract
        raise NotImplementedError

    def position(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def open_table(path: str, needed: list[str], delimiter: str = ",", tmp_dir: str | None = None
               ) -> TableReader:
    """Open a CSV or Parquet log (gzip or not, found by magic bytes) whose header holds `needed`."""
    if not os.path.isfile(path):
        raise ReadError(f"{path}: no such file")
    gz = _is_gzip(path)
    if gz:
        with gzip.open(path, "rb") as f:
            try:
                magic = f.read(4)
            except (OSError, EOFError, zlib.error) as exc:
                raise ReadError(f"{path}: unreadable gzip: {exc}") from None
    else:
        with open(path, "rb") as f:
            magic = f.read(4)
    if magic == b"PAR1":
        return ParquetReader.open(path, needed, gz, tmp_dir)
    return CsvReader.open(path, needed, delimiter, gz)


# -- CSV ---------------------------------------------------------------------------------------


def _match_header(fields: list[str], needed: list[str]) -> list[str] | None:
    """The header's columns if `fields` is the header line, else None.

    Junk glued before the first column name (a BOM, binary garbage) is cut off when the rest of
    the first field is a needed name that does not appear elsewhere.
    """
    cols = [f.strip() for f in fields]
    if cols and cols[0]:
        first = cols[0]
        if first not in needed:
            for name in sorted(needed, key=len, reverse=True):
                if first.endswith(name) and name not in cols[1:]:
                    cols[0] = name
                    break
    return cols if set(needed) <= set(cols) else None


class CsvReader(TableReader):
    @classmethod
    def open(cls, path: str, needed: list[str], delimiter: str, gz: bool) -> CsvReader:
        raw = open(path, "rb")  # noqa: SIM115 - closed by close()
        binary = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        # surrogateescape keeps undecodable bytes visible so such rows are rejected, not mangled.
        text = io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape", newline="")
        reader = cls(path, [], "B", os.path.getsize(path))
        reader._raw, reader._text, reader._delimiter = raw, text, delimiter
        try:
            reader._find_header(needed)
        except BaseException:
            reader.close()
            raise
        return reader

    def _find_header(self, needed: list[str]) -> None:
        line_no = 0
        seen: list[str] = []
        while line_no < MAX_PREAMBLE_LINES:
            try:
                line = self._text.readline()
            except (OSError, EOFError, zlib.error) as exc:
                raise ReadError(f"{self.path}: unreadable before the header: {exc}") from None
            if not line:
                break
            line_no += 1
            try:
                fields = next(csv.reader([line], delimiter=self._delimiter), [])
            except csv.Error:
                fields = []
            cols = _match_header(fields, needed)
            if cols is not None:
                self.columns, self._offset = cols, line_no
                return
            if line.strip():
                self.preamble.append((line_no, line.rstrip("\r\n")[:RAW_KEEP]))
            seen.append(line.rstrip("\r\n")[:200])
        first = next((s for s in seen if s.strip()), "")
        raise ReadError(
            f"{self.path}: no header line naming all of {', '.join(needed)} in the first "
            f"{line_no} lines (first non-blank line: {first[:200]!r}); check the mapping's "
            "column names and the delimiter"
        )

    def rows(self) -> Iterator[tuple[int, list[str]] | Problem]:
        reader = csv.reader(self._text, delimiter=self._delimiter)
        width = len(self.columns)
        prev = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                start = self._offset + prev + 1
                prev = reader.line_num
                yield Problem(start, "malformed", f"CSV: {exc}")
                continue
            except (OSError, EOFError, zlib.error) as exc:
                yield Problem(self._offset + reader.line_num + 1, "malformed",
                              f"file ends in unreadable bytes: {exc}")
                return
            start = self._offset + prev + 1
            prev = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                self.blank_lines += reader.line_num - (start - self._offset) + 1
                continue
            if len(fields) != width:
                raw = self._delimiter.join(fields)[:RAW_KEEP]
                yield Problem(start, "malformed", f"expected {width} fields, found {len(fields)}",
                              raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
                continue
            yield start, fields

    def position(self) -> int:
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        try:
            self._text.close()
        finally:
            self._raw.close()


# -- Parquet -----------------------------------------------------------------------------------


class ParquetReader(TableReader):
    BATCH = 16_384

    @classmethod
    def open(cls, path: str, needed: list[str], gz: bool, tmp_dir: str | None) -> ParquetReader:
        tmp_path = None
        if gz:
            # Parquet needs random access: a gzip-wrapped file is unpacked to a temporary copy.
            fd, tmp_path = tempfile.mkstemp(suffix=".parquet", dir=tmp_dir)
            try:
                with os.fdopen(fd, "wb") as out, gzip.open(path, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            except (OSError, EOFError, zlib.error) as exc:
                os.unlink(tmp_path)
                raise ReadError(f"{path}: unreadable gzip: {exc}") from None
        try:
            pf = pq.ParquetFile(tmp_path or path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad footer
            if tmp_path:
                os.unlink(tmp_path)
            raise ReadError(f"{path}: not a readable Parquet file: {exc}") from None
        columns = list(pf.schema_arrow.names)
        missing = [c for c in needed if c not in columns]
        if missing:
            if tmp_path:
                os.unlink(tmp_path)
            raise ReadError(
                f"{path}: column(s) {', '.join(missing)} not in the file (it has: "
                f"{', '.join(columns)})"
            )
        reader = cls(path, columns, "rows", pf.metadata.num_rows)
        reader._pf, reader._tmp, reader._done = pf, tmp_path, 0
        return reader

    def rows(self) -> Iterator[tuple[int, list[Any]] | Problem]:
        row_no = 0
        batches = self._pf.iter_batches(batch_size=self.BATCH)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - a corrupt page ends the file, reported
                yield Problem(row_no + 1, "malformed", f"unreadable Parquet data: {exc}")
                return
            cols = [_pylist(c) for c in batch.columns]
            for i in range(batch.num_rows):
                row_no += 1
                yield row_no, [c[i] for c in cols]
            self._done = row_no

    def position(self) -> int:
        return self._done

    def close(self) -> None:
        self._pf = None
        if self._tmp and os.path.exists(self._tmp):
            os.unlink(self._tmp)


def _pylist(column: pa.Array) -> list[Any]:
    """A batch column as Python values; a value Python cannot hold becomes an `OutOfRange`."""
    try:
        return column.to_pylist()
    except (OverflowError, ValueError):
        # Rare: only this column of this batch goes cell by cell, to find the bad values.
        return [_cell(scalar, column.type) for scalar in column]


def _cell(scalar: pa.Scalar, type_: pa.DataType) -> Any:
    try:
        return scalar.as_py()
    except (OverflowError, ValueError):
        raw = getattr(scalar, "value", None)
        return OutOfRange(str(type_), raw if isinstance(raw, int) else None)
