"""`import_log`: a user's event log → impression and click streams in the landing zone.

Three steps, each with bounded memory: (1) stream the source rows through the converter and spill
good rows to Parquet chunks, bad rows to the rejects log; (2) dedupe, join and sort in DuckDB;
(3) write the sorted events into 5-minute Firehose buffer files. Every source row ends up counted
exactly once: as an impression, a duplicate, or a reject with its line number.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import orjson

from clicklake.platform import landing
from clicklake.platform.importer.convert import (
    CLICK_NOT_AFTER,
    CONFLICTING_ID,
    MAX_TS,
    MIN_TS,
    UNKNOWN_IMPRESSION,
    ClickConverter,
    ImpressionConverter,
    raw_text,
)
from clicklake.platform.importer.mapping import Mapping
from clicklake.platform.importer.readers import Problem, TableReader, open_table
from clicklake.platform.importer.staging import CLICK_STAGE, IMPRESSION_STAGE, Resolver, Spill
from clicklake.platform.importer.writer import (
    BUFFER_MS,
    MAX_LINES_PER_FILE,
    BufferWriter,
    file_key,
)
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, iso

WEEK_MS = 7 * 24 * HOUR_MS
REJECTS_PREFIX = "import-rejects"
MANIFESTS_PREFIX = "import-manifests"
FAILED_REJECTS_PREFIX = f"{REJECTS_PREFIX}/failed"  # rejects of a run that imported nothing
FIRST_REJECTS = 20
UPLOAD_CHUNK = 1 << 20


class ShiftError(ValueError):
    """--shift-to would move event times out of 2000-2099; nothing was written."""


class Progress(Protocol):
    def update(self, n: int) -> object: ...
    def close(self) -> object: ...


# (description, total, unit) -> a progress bar; tqdm fits this signature.
ProgressFactory = Callable[[str, int, str], Progress]


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _no_progress(desc: str, total: int, unit: str) -> Progress:
    return _NoProgress()


@dataclass
class ImportReport:
    source: str
    rows_read: int = 0  # data rows of the impressions table (blank lines excluded)
    click_rows_read: int = 0  # data rows of the clicks table
    blank_lines: int = 0
    skipped_before_header: int = 0
    impressions: int = 0
    clicks: int = 0
    duplicate_rows: int = 0
    duplicate_clicks: int = 0
    orphan_clicks: int = 0  # clicks-table rows kept although their impression is not in the log
    bad_rows: dict[str, int] = field(default_factory=dict)  # rows dropped, by reason
    rejected_clicks: dict[str, int] = field(default_factory=dict)  # click dropped, impression kept
    files_written: int = 0
    stale_files_removed: int = 0
    hours: list[int] = field(default_factory=list)  # event hours (epoch ms) holding imported events
    first_ts: int | None = None
    last_ts: int | None = None
    shift_ms: int = 0
    rejects_key: str = ""
    manifest_key: str = ""
    first_rejects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bad_row_count(self) -> int:
        return sum(self.bad_rows.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bad_row_count"] = self.bad_row_count
        return d


def default_source(impressions_path: str, clicks_path: str | None = None) -> str:
    """A tag naming this import: the file's stem plus a hash of the absolute input paths.

    Re-importing the same files gives the same tag (so the same landing keys); two different logs
    that share a file name do not overwrite each other.
    """
    paths = [os.path.abspath(impressions_path)] + ([os.path.abspath(clicks_path)] if clicks_path
                                                   else [])
    stem = os.path.basename(impressions_path).split(".")[0] or "log"
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)[:40]
    # the paths' bytes: a file name that is no UTF-8 (Latin-1, say) is a path all the same
    material = b"\x1f".join(os.fsencode(p) for p in paths)
    return f"{stem}-{hashlib.blake2b(material, digest_size=4).hexdigest()}"


class _Rejects:
    """All rejects to a scratch NDJSON file (any number), the first few kept for the summary."""

    def __init__(self, folder: str, keep: int):
        self.path = os.path.join(folder, "rejects.ndjson")
        self.f = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self.keep = keep
        self.first: list[dict[str, Any]] = []
        self.rows: Counter[str] = Counter()
        self.clicks: Counter[str] = Counter()
        self.preamble = 0

    def add(self, table: str, line: int, reason: str, detail: str, raw: str = "",
            dropped: str = "row") -> None:
        rec = {"table": table, "line": line, "reason": reason, "detail": detail,
               "dropped": dropped, "raw": raw}
        self.f.write(orjson.dumps(rec) + b"\n")
        if dropped == "row":
            self.rows[reason] += 1
        elif dropped == "click":
            self.clicks[reason] += 1
        else:
            self.preamble += 1
        if len(self.first) < self.keep:
            self.first.append(rec)

    def close(self) -> None:
        self.f.close()


def _scan(reader: TableReader, convert: Callable, spill: Spill, rejects: _Rejects, table: str,
          progress: ProgressFactory) -> int:
    """Pass 1 over one table; returns the number of data rows read."""
    for line_no, text in reader.preamble:
        rejects.add(table, line_no, "before_header", "skipped: not the header line", text,
                    dropped="preamble")
    bar = progress(f"read {table}", reader.total, reader.unit)
    seen, rows = 0, 0
    try:
        for item in reader.rows():
            if isinstance(item, Problem):
                rejects.add(table, item.line_no, item.reason, item.detail, item.raw)
                rows += 1
                continue
            rows += 1
            out = convert(*item)
            if isinstance(out, Problem):
                rejects.add(table, out.line_no, out.reason, out.detail, out.raw)
            else:
                spill.add(out)
            if rows % 4096 == 0:
                pos = reader.position()
                bar.update(pos - seen)
                seen = pos
        bar.update(reader.position() - seen)
    finally:
        bar.close()
        reader.close()
    spill.flush()
    return rows


def _event_line(names: tuple[str, ...], row: tuple, shift: int) -> tuple[int, bytes]:
    obj = {n: v for n, v in zip(names, row, strict=True) if v is not None}
    obj["ts"] = row[1] + shift
    return obj["ts"], orjson.dumps(obj)


def import_log(
    store: Store,
    mapping: Mapping,
    impressions_path: str,
    clicks_path: str | None = None,
    *,
    source: str | None = None,
    shift_to_ms: int | None = None,
    tmp_dir: str | None = None,
    memory_limit: str = "512MB",
    prefix: str = landing.DEFAULT_PREFIX,
    progress: ProgressFactory = _no_progress,
    keep_rejects: int = FIRST_REJECTS,
) -> ImportReport:
    """Import one log (and its clicks table, if the mapping has one) into `store`'s landing zone.

    Raises ReadError or MappingError for a file or mapping that cannot be used at all; bad rows
    never raise, they are counted and written to `import-rejects/<source>.ndjson`.
    """
    if (clicks_path is None) != (mapping.clicks is None):
        raise ValueError("a clicks file and a clicks mapping go together: give both or neither")
    source = source or default_source(impressions_path, clicks_path)
    report = ImportReport(source=source)
    with tempfile.TemporaryDirectory(prefix="clicklake-import-", dir=tmp_dir) as tmp:
        rejects = _Rejects(tmp, keep_rejects)
        try:
            resolver = _stage(mapping, impressions_path, clicks_path, tmp, rejects, report,
                              progress, memory_limit)
            try:
                _late_rejects(resolver, mapping, impressions_path, clicks_path, tmp, rejects)
                _write(store, resolver, mapping, source, prefix, shift_to_ms, rejects, report,
                       progress)
            finally:
                resolver.close()
        finally:
            rejects.close()
        report.bad_rows = dict(sorted(rejects.rows.items()))
        report.rejected_clicks = dict(sorted(rejects.clicks.items()))
        report.skipped_before_header = rejects.preamble
        report.first_rejects = rejects.first
        if report.impressions:
            report.rejects_key = f"{REJECTS_PREFIX}/{source}.ndjson"
            # written even when empty: replaces an old one
            store.write_file(report.rejects_key, rejects.path, UPLOAD_CHUNK)
            store.delete(f"{FAILED_REJECTS_PREFIX}/{source}.ndjson")
        else:
            # Nothing imported (a wrong mapping, as a rule): the earlier import of this source,
            # its manifest and its rejects file stay as they are; these rejects go aside.
            report.rejects_key = f"{FAILED_REJECTS_PREFIX}/{source}.ndjson"
            store.write_file(report.rejects_key, rejects.path, UPLOAD_CHUNK)
    return report


def _stage(mapping: Mapping, imp_path: str, clk_path: str | None, tmp: str, rejects: _Rejects,
           report: ImportReport, progress: ProgressFactory, memory_limit: str) -> Resolver:
    reader = open_table(imp_path, mapping.columns(), mapping.delimiter, tmp)
    conv = ImpressionConverter(mapping, reader.columns, imp_path)
    imp_spill = Spill(tmp, "imp", IMPRESSION_STAGE)
    report.rows_read = _scan(reader, conv.convert, imp_spill, rejects, "impressions", progress)
    report.blank_lines = reader.blank_lines
    clk_spill = None
    if clk_path is not None:
        c = mapping.clicks
        creader = open_table(clk_path, c.columns(), mapping.delimiter, tmp)
        cconv = ClickConverter(c, mapping.time_format, creader.columns, clk_path, mapping.delimiter)
        clk_spill = Spill(tmp, "clk", CLICK_STAGE)
        report.click_rows_read = _scan(creader, cconv.convert, clk_spill, rejects, "clicks",
                                       progress)
        report.blank_lines += creader.blank_lines

    r = Resolver(tmp, memory_limit)
    r.load("imp", "impression_id", imp_spill.files)
    report.duplicate_rows = r.duplicates("imp")
    if clk_spill is None:
        return r
    r.load("clk", "click_id", clk_spill.files)
    report.duplicate_clicks = r.duplicates("clk")
    r.join_clicks()
    report.orphan_clicks = r.count(
        "SELECT count(*) FROM clk_joined WHERE NOT matched "
        "AND user_id IS NOT NULL AND campaign_id IS NOT NULL"
    )
    return r


def _late_sql(table: str, two_tables: bool) -> str:
    """Rejects found after the sort, of one source table, by line: (line, reason, id, a, b)."""
    if table == "impressions":
        sql = ("SELECT line_no, 'conflicting_id' AS reason, impression_id AS ident, "
               "first_line AS a, NULL::BIGINT AS b FROM imp WHERE rn > 1 AND row_hash <> first_hash")
        if not two_tables:
            sql += ("\nUNION ALL SELECT line_no, 'click_not_after', impression_id, ts, click_ts "
                    "FROM imp WHERE rn = 1 AND click_ts IS NOT NULL AND click_ts <= ts")
    else:
        sql = ("SELECT line_no, 'conflicting_id' AS reason, click_id AS ident, first_line AS a, "
               "NULL::BIGINT AS b FROM clk WHERE rn > 1 AND row_hash <> first_hash\n"
               "UNION ALL SELECT line_no, 'click_not_after', impression_id, ts, imp_ts "
               "FROM clk_joined WHERE matched AND ts <= imp_ts\n"
               "UNION ALL SELECT line_no, 'unknown_impression', impression_id, NULL, NULL "
               "FROM clk_joined WHERE NOT matched AND (user_id IS NULL OR campaign_id IS NULL)")
    return f"SELECT * FROM ({sql}) ORDER BY line_no"


def _late_detail(table: str, reason: str, ident: str, a: int | None, b: int | None
                 ) -> tuple[str, str, str]:
    """(reason, detail, dropped) of a reject found after the sort."""
    if reason == "conflicting_id":
        what = "id" if table == "impressions" else "click id"
        return CONFLICTING_ID, f"{what} {ident} already used by a different row on line {a}", "row"
    if reason == "unknown_impression":
        detail = (f"impression {ident} is not in the log and the clicks table maps no "
                  "user/campaign")
        return UNKNOWN_IMPRESSION, detail, "row"
    if table == "impressions":
        detail = (f"click at {iso(b)} is not after impression {ident} at {iso(a)}; the "
                  "impression is kept without a click")
        return CLICK_NOT_AFTER, detail, "click"
    return CLICK_NOT_AFTER, f"click at {iso(a)} is not after impression {ident} at {iso(b)}", "row"


def _late_rejects(r: Resolver, mapping: Mapping, imp_path: str, clk_path: str | None, tmp: str,
                  rejects: _Rejects) -> None:
    """Reject the rows only the sort shows to be bad (a reused id, a click not after its
    impression, a click of an unknown impression), with their raw text."""
    two = clk_path is not None
    _late_table(r.rows(_late_sql("impressions", two)), "impressions", imp_path,
                mapping.columns(), mapping.delimiter, tmp, rejects)
    if clk_path is not None and mapping.clicks is not None:
        _late_table(r.rows(_late_sql("clicks", two)), "clicks", clk_path,
                    mapping.clicks.columns(), mapping.delimiter, tmp, rejects)


def _late_table(late: Iterator[tuple], table: str, path: str, needed: list[str], delimiter: str,
                tmp: str, rejects: _Rejects) -> None:
    """Merge one table's late rejects (by line) with a second read of its source, up to the last
    such line, for their raw text; memory holds one batch of each."""
    nxt = next(late, None)
    if nxt is None:
        return  # the usual case: no second read

    def emit(raw: str) -> tuple | None:
        reason, detail, dropped = _late_detail(table, *nxt[1:])
        rejects.add(table, nxt[0], reason, detail, raw, dropped=dropped)
        return next(late, None)

    reader = open_table(path, needed, delimiter, tmp)
    try:
        for item in reader.rows():
            if nxt is None:
                break
            if isinstance(item, Problem) or item[0] < nxt[0]:
                continue
            raw = raw_text(item[1], delimiter) if item[0] == nxt[0] else ""
            while nxt is not None and nxt[0] <= item[0]:
                nxt = emit(raw)
    finally:
        reader.close()
    while nxt is not None:  # not found again (the file changed meanwhile): no raw text
        nxt = emit("")


IMPRESSION_FIELDS = ("impression_id", "ts", "user_id", "campaign_id", "domain", "ip",
                     "user_agent", "cost")
CLICK_FIELDS = ("click_id", "ts", "impression_id", "user_id", "campaign_id")


def _write(store: Store, r: Resolver, mapping: Mapping, source: str, prefix: str,
           shift_to_ms: int | None, rejects: _Rejects, report: ImportReport,
           progress: ProgressFactory) -> None:
    imp_sql = (f"SELECT {', '.join(IMPRESSION_FIELDS)} FROM imp WHERE rn = 1 "
               "ORDER BY ts, impression_id")
    if mapping.clicks is None:
        clk_sql = ("SELECT click_id, click_ts AS ts, impression_id, user_id, campaign_id FROM imp "
                   "WHERE rn = 1 AND click_ts IS NOT NULL AND click_ts > ts")
    else:
        clk_sql = ("SELECT click_id, ts, impression_id, user_id, campaign_id FROM clk_joined "
                   "WHERE (matched AND ts > imp_ts) OR (NOT matched AND user_id IS NOT NULL "
                   "AND campaign_id IS NOT NULL)")
    lo, hi, n_imp = r.con.sql("SELECT min(ts), max(ts), count(*) FROM imp WHERE rn = 1").fetchall()[0]
    if not n_imp:
        # Nothing to import: no file written, none deleted, the manifest kept, so a failed
        # re-import (a wrong time format, say) leaves the earlier import of this source intact.
        return
    clo, chi, n_clk = r.con.sql(f"SELECT min(ts), max(ts), count(*) FROM ({clk_sql})").fetchall()[0]
    times = [t for t in (lo, hi, clo, chi) if t is not None]
    shift = 0
    if shift_to_ms is not None and times:
        # Whole weeks keep the hour of day and the weekday of every event.
        shift = -((min(times) - shift_to_ms) // WEEK_MS) * WEEK_MS
    report.shift_ms = shift
    if times:
        report.first_ts, report.last_ts = min(times) + shift, max(times) + shift
        # Checked after the shift, before any file: the raw layer refuses times outside 2000-2099.
        if shift and report.last_ts >= MAX_TS:
            latest = min(times) + (MAX_TS - 1 - max(times)) // WEEK_MS * WEEK_MS
            raise ShiftError(f"--shift-to {iso(shift_to_ms)} moves the last event to "
                             f"{iso(report.last_ts)}, past 2099 (event times from 2100 on are "
                             f"refused); this log spans {iso(min(times))} .. {iso(max(times))}: "
                             f"shift to {iso(latest)} or earlier")
        if shift and report.first_ts < MIN_TS:
            raise ShiftError(f"--shift-to {iso(shift_to_ms)} moves the first event to "
                             f"{iso(report.first_ts)}, before 2000 (refused as a bad time)")

    streams = (("impressions", imp_sql, IMPRESSION_FIELDS, n_imp),
               ("clicks", clk_sql + " ORDER BY ts, click_id", CLICK_FIELDS, n_clk))
    report.manifest_key = manifest_key(source, prefix)
    # Every file's key is named in the manifest before any is written: an import that dies
    # part way leaves no landing file its source's next import does not know to replace.
    _mark_pending(store, report.manifest_key, [
        k for stream, sql, _, _ in streams
        for k in _planned_keys(r, stream, sql, source, prefix, shift)])
    hours: set[int] = set()
    keys: list[str] = []
    for stream, sql, names, total in streams:
        w = BufferWriter(store, stream, source, prefix, BUFFER_MS, MAX_LINES_PER_FILE)
        bar = progress(f"write {stream}", int(total), "events")
        try:
            for batch in r.batches(sql):
                cols = [c.to_pylist() for c in batch.columns]
                for row in zip(*cols, strict=True):
                    w.add(*_event_line(names, row, shift))
                bar.update(batch.num_rows)
            w.close()
        finally:
            bar.close()
        hours |= w.hours
        keys += w.keys
        if stream == "impressions":
            report.impressions = w.events
        else:
            report.clicks = w.events
    report.hours = sorted(hours)
    report.files_written = len(keys)
    report.stale_files_removed = _replace_manifest(store, report.manifest_key, keys, mapping,
                                                   prefix)


def manifest_key(source: str, prefix: str = landing.DEFAULT_PREFIX) -> str:
    """Where a source's manifest lives: one per landing prefix, so an import into another
    prefix neither drops this one's files from its manifest (left, never replaced) nor replaces
    them (only files below the import's own prefix are ever deleted)."""
    if prefix == landing.DEFAULT_PREFIX:
        return f"{MANIFESTS_PREFIX}/{source}.json"
    return f"{MANIFESTS_PREFIX}/{prefix}/{source}.json"


def _planned_keys(r: Resolver, stream: str, sql: str, source: str, prefix: str,
                  shift: int) -> list[str]:
    """The keys `BufferWriter` will give this stream's files: one per buffer and part, named
    by the part's last event (a part is `MAX_LINES_PER_FILE` events of the buffer in order)."""
    parts = r.con.sql(
        f"SELECT buf, part, max(ts) FROM (SELECT ts, ts // {BUFFER_MS} * {BUFFER_MS} AS buf, "
        f"(row_number() OVER (PARTITION BY ts // {BUFFER_MS} ORDER BY ts) - 1) "
        f"// {MAX_LINES_PER_FILE} AS part FROM (SELECT ts + {shift} AS ts FROM ({sql}))) "
        "GROUP BY buf, part").fetchall()
    return [file_key(stream, source, prefix, buf, part, last) for buf, part, last in parts]


def _manifest(store: Store, key: str) -> dict:
    """A source's manifest as written, or an empty one (none yet, or unreadable)."""
    if not store.exists(key):
        return {}
    try:
        doc = orjson.loads(store.read_bytes(key))
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _listed(doc: dict, field_name: str) -> list[str]:
    keys = doc.get(field_name, [])
    return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []


def _mark_pending(store: Store, key: str, planned: list[str]) -> None:
    """Add the files about to be written to the manifest's pending keys, kept until an import
    of the source completes (a pending list left by an import that died is added to)."""
    doc = _manifest(store, key)
    pending = _listed(doc, "pending")
    known = set(pending)
    doc["pending"] = pending + [k for k in planned if k not in known]
    store.write_bytes(key, orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def _replace_manifest(store: Store, key: str, keys: list[str], mapping: Mapping,
                      prefix: str) -> int:
    """Record this import's files; delete files an earlier import of the same source wrote (or
    was writing when it died) but this one did not (the log shrank or moved in time), so a
    re-import fully replaces it."""
    removed = 0
    doc = _manifest(store, key)
    old = _listed(doc, "keys") + _listed(doc, "pending")
    if old:
        current = set(keys)
        for k in dict.fromkeys(old):
            # Only landing files are ever deleted, whatever the manifest says.
            if k not in current and k.startswith(prefix + "/") and store.exists(k):
                store.delete(k)
                removed += 1
    store.write_bytes(key, orjson.dumps({"mapping": asdict(mapping), "keys": keys},
                                        option=orjson.OPT_INDENT_2))
    return removed
