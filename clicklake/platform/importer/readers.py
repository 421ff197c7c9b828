"""Streaming readers for CSV and Parquet logs, plain or gzip-compressed.

Each reader yields `(line_no, values)` in the order of its `columns`, or a `Problem` for a row it
cannot split; it never loads the whole file. CSV line numbers are physical lines of the
(decompressed) text, ending in "\n", counting any preamble, so a user can open the file at that
line; Parquet rows are numbered from 1. Stray bytes before the header (a BOM, a banner, junk glued
to the first column name) are skipped and reported; blank lines are counted and skipped. A stray
CSV quote costs its own line only (see `CsvReader.rows`).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import shutil
import sys
import tempfile
import zlib
from collections import deque
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

# A record is built from physical lines (split on "\n" only, so line numbers match `sed -n Np`).
# A quoted field still open after this many lines, or a record past this many characters, is taken
# as a stray quote: its first line is rejected and reading resumes on the next line, so one stray
# `"` cannot swallow the rest of the file (nor hold it in memory).
MAX_RECORD_LINES = 100
MAX_RECORD_CHARS = 1 << 23  # also the longest physical line read at once


class _Runaway(Exception):
    """Raised from inside the CSV parser's input: the record being built ran past a limit."""


class _Lines:
    """Physical lines of the text as (line_no, text), with push-back; an over-long line comes as
    (line_no, None), drained without holding it."""

    def __init__(self, text: io.TextIOBase, line_no: int = 0):
        self.text, self.line_no = text, line_no
        self.pending: deque[tuple[int, str | None]] = deque()

    def next(self) -> tuple[int, str | None] | None:
        if self.pending:
            return self.pending.popleft()
        line = self.text.readline(MAX_RECORD_CHARS)
        if not line:
            return None
        self.line_no += 1
        if len(line) == MAX_RECORD_CHARS and not line.endswith(("\n", "\r")):
            while (rest := self.text.readline(MAX_RECORD_CHARS)) and not rest.endswith(
                    ("\n", "\r")):
                pass
            return self.line_no, None
        return self.line_no, line


class _Feed:
    """The CSV parser's input: lines of one record at a time, remembered in `taken`, so a record
    that goes wrong can be given back line by line."""

    def __init__(self, lines: _Lines):
        self.lines = lines
        self.taken: list[tuple[int, str]] = []
        self.chars = 0

    def __iter__(self) -> _Feed:
        return self

    def start(self) -> None:
        self.taken, self.chars = [], 0

    def __next__(self) -> str:
        # Checked before a line is read, so no line is lost when the record is abandoned.
        if len(self.taken) >= MAX_RECORD_LINES:
            raise _Runaway(f"still open after {len(self.taken)} lines")
        if self.chars > MAX_RECORD_CHARS:
            raise _Runaway(f"still open after {self.chars:,} characters")
        item = self.lines.next()
        if item is None:
            raise StopIteration
        if item[1] is None:
            self.lines.pending.appendleft(item)  # reported on its own by rows()
            raise _Runaway(f"line {item[0]} is longer than {MAX_RECORD_CHARS:,} characters")
        self.taken.append(item)  # type: ignore[arg-type]
        self.chars += len(item[1])
        return item[1]


def _line_end(path: str, gz: bool) -> str:
    """"\n", or "\r" for a file whose lines all end in a bare CR (classic Mac OS, Excel's "CSV
    (Macintosh)"), told by its first 64 KiB holding a CR and no LF."""
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            head = f.read(1 << 16)
    except (OSError, EOFError, zlib.error):
        return "\n"  # the real read reports it
    return "\r" if b"\r" in head and b"\n" not in head else "\n"


def _split(line: str, delimiter: str) -> list[str]:
    try:
        return [f.strip() for f in next(csv.reader([line], delimiter=delimiter), [])]
    except csv.Error:
        return []


def _match_header(line: str, needed: list[str], delimiter: str) -> list[str] | None:
    """The header's columns if `line` is the header line, else None.

    Junk glued before the first column name (a BOM, binary garbage: anything but letters, digits,
    `_`, the quote and the delimiter) is cut off, before the line is split so that a quoted
    header works, when what follows is a needed name that does not appear elsewhere. A first column
    that merely ends with a needed name (`click_time` for `time`) is not renamed.
    """
    cols = _split(line, delimiter)
    if set(needed) <= set(cols):
        return cols
    junk = re.match(f'[^\\w"{re.escape(delimiter)}]+', line)
    if junk:  # any cut within the run (a BOM before `@timestamp` keeps its `@`)
        for at in range(1, junk.end() + 1):
            cut = _split(line[at:], delimiter)
            if cut and cut[0] in needed and cut[0] not in cut[1:] and set(needed) <= set(cut):
                return cut
    return None


def _shown(text: str) -> str:
    """A line as it goes into the rejects file: no line end, cut short, undecodable bytes as �."""
    text = text.rstrip("\r\n")[:RAW_KEEP]
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class CsvReader(TableReader):
    @classmethod
    def open(cls, path: str, needed: list[str], delimiter: str, gz: bool) -> CsvReader:
        newline = _line_end(path, gz)
        raw = open(path, "rb")  # noqa: SIM115 - closed by close()
        binary = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        # surrogateescape keeps undecodable bytes visible so such rows are rejected, not mangled.
        # newline="\n": lines end at "\n" only, as `wc -l` and `sed` count them; a bare CR
        # stays inside its line (the CSV parser refuses it outside quotes).
        text = io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape",
                                newline=newline)
        reader = cls(path, [], "B", os.path.getsize(path))
        reader._raw, reader._text, reader._delimiter = raw, text, delimiter
        reader._lines = _Lines(text)
        try:
            reader._find_header(needed)
        except BaseException:
            reader.close()
            raise
        return reader

    def _find_header(self, needed: list[str]) -> None:
        seen: list[str] = []
        while self._lines.line_no < MAX_PREAMBLE_LINES:
            try:
                item = self._lines.next()
            except (OSError, EOFError, zlib.error) as exc:
                raise ReadError(f"{self.path}: unreadable before the header: {exc}") from None
            if item is None:
                break
            line_no, line = item
            if line is None:
                self.preamble.append((line_no, f"(a line over {MAX_RECORD_CHARS:,} characters)"))
                seen.append("(an over-long line)")
                continue
            cols = _match_header(line, needed, self._delimiter)
            if cols is not None:
                twice = sorted({c for c in needed if cols.count(c) > 1})
                if twice:  # the first was read, silently: a wrong user, or every time wrong
                    raise ReadError(f"{self.path}: the header names {', '.join(twice)} more "
                                    "than once: which column the mapping means is unknown")
                self.columns = cols
                return
            if line.strip():
                self.preamble.append((line_no, _shown(line)))
            seen.append(line.rstrip("\r\n")[:200])
        first = next((s for s in seen if s.strip()), "")
        hint = ""
        if any("\r" in s for s in seen):
            hint = "; some of its lines end in a bare CR (\\r): give them \\n line ends"
        raise ReadError(
            f"{self.path}: no header line naming all of {', '.join(needed)} in the first "
            f"{self._lines.line_no} lines (first non-blank line: {first[:200]!r}); check the "
            f"mapping's column names and the delimiter{hint}"
        )

    def rows(self) -> Iterator[tuple[int, list[str]] | Problem]:
        """Records of one or more physical lines. A record that goes wrong while a quoted field
        spans lines (never closed, closed mid-field, too long, the wrong width, or holding a line
        that is a row of its own) is a stray quote: its first line is `malformed` and its other
        lines are read again as records, so the rows after a stray quote are not lost."""
        lines, width, delim = self._lines, len(self.columns), self._delimiter
        feed = _Feed(lines)
        # strict: a quote closed in the middle of a field ("a"b) or never closed is an error,
        # not a silently merged value.
        reader = csv.reader(feed, delimiter=delim, strict=True)

        def stray(why: str) -> Problem:
            """The record's first line is bad; its other lines are read again as records."""
            first, *rest = feed.taken
            lines.pending.extendleft(reversed(rest))
            return Problem(first[0], "malformed", "a quoted field opened on this line is not "
                           f"closed properly ({why}); reading resumes on the next line",
                           _shown(first[1]))

        while True:
            feed.start()
            try:
                fields = next(reader)
            except StopIteration:
                return
            except _Runaway as exc:
                if feed.taken:
                    yield stray(str(exc))
                else:  # an over-long line where a record starts
                    line_no, _ = lines.next()  # type: ignore[misc]
                    yield Problem(line_no, "malformed",
                                  f"line longer than {MAX_RECORD_CHARS:,} characters")
                continue
            except csv.Error as exc:
                msg, eof = str(exc), "unexpected end of data" in str(exc)
                if "new-line character" in msg:
                    msg = "a carriage return (\\r) inside an unquoted field"
                if len(feed.taken) > 1:
                    yield stray("the file ends inside it" if eof
                                else f"line {feed.taken[-1][0]}: {msg}")
                elif feed.taken:
                    yield Problem(feed.taken[0][0], "malformed",
                                  "CSV: the file ends inside a quoted field" if eof
                                  else f"CSV: {msg}", _shown(feed.taken[0][1]))
                else:  # not seen: the parser reads a line before it can fail
                    yield Problem(lines.line_no, "malformed", f"CSV: {msg}")
                continue
            except (OSError, EOFError, zlib.error) as exc:
                yield Problem(lines.line_no + 1, "malformed",
                              f"file ends in unreadable bytes: {exc}")
                return
            line_no, first = feed.taken[0]
            if len(feed.taken) == 1 and not first.strip() and delim not in first:
                self.blank_lines += 1  # only a truly empty (or whitespace) line is blank
                continue
            if len(fields) != width:
                if len(feed.taken) > 1:
                    yield stray(f"the record it makes has {len(fields)} fields, not {width}")
                else:
                    yield Problem(line_no, "malformed",
                                  f"expected {width} fields, found {len(fields)}", _shown(first))
                continue
            if len(feed.taken) > 1:
                # A stray quote closed by another one further down (`"best shoes` ... `12"`)
                # makes a record of the right width out of several rows: a line inside it that
                # is a full row on its own gives it away. Real multi-line text rarely is one.
                row_like = next((n for n, text in feed.taken[1:]
                                 if len(_split(text, delim)) == width), None)
                if row_like is not None:
                    yield stray(f"line {row_like} inside it looks like a row of its own")
                    continue
            yield line_no, fields

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
