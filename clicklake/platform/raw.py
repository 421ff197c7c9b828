"""Landing hours → one raw hourly partition (by event time) plus its quarantine rows.

Partition H keeps the events with `ts` in [H, H+1h) whose landing file arrived before
H+1h + allowed_lateness and no earlier than ts - future_tolerance, one row per event id. It reads
every arrival hour that can hold such events: from floor(H - future_tolerance) (a record may be
stamped slightly ahead of its file) to floor(H+1h + lateness - 1 ms).

Each rejected line is quarantined by exactly one partition, so reruns and neighbours never count
it twice: a line without a usable time, a `future` line and a `late` line belong to the
partition of its file's arrival hour; a `duplicate` belongs to the partition of its event hour.
An unreadable (corrupt or truncated) gzip object gives one `malformed` row, owned by its arrival
hour, whose `line_no` is the first line that could not be read and whose `raw` is the unterminated
text after the last complete line; the complete lines before the damage are used as usual.

Duplicates: among the accepted copies of an event id in hour H, the first by (file arrival, key,
line number) is kept and the others are `duplicate`. An id is unique per event hour: two copies
stamped in different hours are two events (a partition cannot see every hour of the landing zone).
Blank lines carry no record and are skipped; every other line is kept or quarantined.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import repeat

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.platform import landing
from clicklake.platform.events import (
    DUPLICATE,
    FUTURE,
    LATE,
    MALFORMED,
    QUARANTINE_SCHEMA,
    REASONS,
    SPECS,
    Rejected,
    StreamSpec,
    event_id_of_object,
    event_ms,
    parse_object,
    plain_rows,
)
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, MINUTE_MS, floor_hour, hive_hour_path, iso

DEFAULT_LATENESS_MS = HOUR_MS
DEFAULT_FUTURE_TOLERANCE_MS = 15 * MINUTE_MS  # Firehose buffers up to 15 min after the key time
RAW_MAX_LINE = 4096  # raw text kept per quarantine row


@dataclass(frozen=True)
class Rules:
    allowed_lateness_ms: int = DEFAULT_LATENESS_MS
    future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS

    def __post_init__(self) -> None:
        if self.allowed_lateness_ms < 0 or self.future_tolerance_ms < 0:
            raise ValueError(f"lateness and future tolerance must be >= 0, got {self}")

    def arrival_hours(self, hour_ms: int) -> tuple[int, int]:
        """First and last arrival hour whose files may hold events of partition `hour_ms`."""
        first = floor_hour(hour_ms - self.future_tolerance_ms)
        last = floor_hour(hour_ms + HOUR_MS + self.allowed_lateness_ms - 1)
        return first, last

    def verdict(self, ts_ms: int, arrival_ms: int) -> str | None:
        """FUTURE, LATE or None (acceptable) for an event time seen in a file of `arrival_ms`."""
        if ts_ms > arrival_ms + self.future_tolerance_ms:
            return FUTURE
        if arrival_ms >= floor_hour(ts_ms) + HOUR_MS + self.allowed_lateness_ms:
            return LATE
        return None


@dataclass
class RawPartition:
    stream: str
    hour_ms: int
    table: pa.Table
    quarantine: pa.Table
    files_read: int
    lines_read: int
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    # The files that gave it a kept or a quarantine row, in arrival order: those a rebuild
    # must find again (one read but holding nothing of the hour, such as the hour before's, read
    # for the future tolerance, can expire with no loss: recording every file read refused the
    # rebuild of each day's first hour once the day before had expired)
    landing_keys: list[str] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return self.table.num_rows


def raw_key(stream: str, hour_ms: int, lake_prefix: str = "lake") -> str:
    return f"{lake_prefix}/raw/{stream}/{hive_hour_path(hour_ms)}/part-0.parquet"


def quarantine_key(stream: str, hour_ms: int, lake_prefix: str = "lake") -> str:
    return f"{lake_prefix}/quarantine/{stream}/{hive_hour_path(hour_ms)}/part-0.parquet"


def build_raw_partition(
    store: Store,
    stream: str,
    hour_ms: int,
    rules: Rules = Rules(),
    landing_prefix: str = landing.DEFAULT_PREFIX,
) -> RawPartition:
    """Read the landing files that can hold hour `hour_ms` and split them into kept and quarantined."""
    spec = SPECS[stream]
    id_at, ts_at = spec.fields.index((spec.id_field, "id")), spec.fields.index(("ts", "ts"))
    first, last = rules.arrival_hours(hour_ms)
    files = landing.list_hours(store, stream, first, last, landing_prefix)
    kept: dict[str, tuple] = {}
    quarantine: list[tuple] = []
    lines_read = 0
    used: set[str] = set()  # files giving the partition a row (`landing_keys`)

    def reject(reason, detail, line, lf, no, event_id=None, ts=None):
        raw = line[:RAW_MAX_LINE].decode("utf-8", "replace")
        quarantine.append((reason, detail, event_id, ts, lf.key, no, lf.arrival_ms, raw))
        used.add(lf.key)

    for lf in files:
        owns_arrival = floor_hour(lf.arrival_ms) == hour_ms
        decoded = landing.read_lines(store, lf.key)
        # Plain lines are read into rows in C (`plain_rows`: exactly parse_object's rows);
        # the others, and every line without the extension, take orjson and parse_object.
        plain = plain_rows(spec, decoded.lines)
        got = plain[0] if plain is not None else repeat(None)
        for no, (line, row) in enumerate(zip(decoded.lines, got), start=1):
            if row is False or (row is None and (not line or line.isspace())):
                continue  # blank lines carry no record
            lines_read += 1
            if row is None:
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    if owns_arrival:
                        reject(MALFORMED, f"invalid JSON: {exc}", line, lf, no)
                    continue
                if not owns_arrival:
                    # Only an accepted event of hour H matters here; whatever else this file
                    # holds belongs to the partition of its arrival hour. Checking the time
                    # first skips the full validation of the lines of other hours.
                    try:
                        if floor_hour(event_ms(obj["ts"])) != hour_ms:
                            continue
                    except (Rejected, KeyError, TypeError, IndexError):
                        continue
                try:
                    row = parse_object(spec, obj)
                except Rejected as rej:
                    if owns_arrival:
                        reject(rej.reason, rej.detail, line, lf, no,
                               event_id_of_object(obj, spec))
                    continue
            event_id, ts = row[id_at], row[ts_at]
            verdict = rules.verdict(ts, lf.arrival_ms)
            if verdict is not None:
                if owns_arrival:
                    detail = f"ts {iso(ts)} in a file that arrived at {iso(lf.arrival_ms)}"
                    reject(verdict, detail, line, lf, no, event_id, ts)
                continue
            if floor_hour(ts) != hour_ms:
                continue
            if event_id in kept:
                first_key, first_no = kept[event_id][-2:]
                reject(
                    DUPLICATE,
                    f"first seen in {first_key} line {first_no}",
                    line,
                    lf,
                    no,
                    event_id,
                    ts,
                )
                continue
            kept[event_id] = (*row, lf.arrival_ms, lf.key, no)
            used.add(lf.key)
        if decoded.error and owns_arrival:
            reject(MALFORMED, decoded.error, decoded.tail, lf, len(decoded.lines) + 1)

    table = _rows_to_table(spec, list(kept.values()))
    qtable = pa.Table.from_pylist(
        [dict(zip(QUARANTINE_SCHEMA.names, q, strict=True)) for q in quarantine],
        schema=QUARANTINE_SCHEMA,
    )
    counts = Counter(q[0] for q in quarantine)
    return RawPartition(
        stream=stream,
        hour_ms=hour_ms,
        table=table,
        quarantine=qtable,
        files_read=len(files),
        lines_read=lines_read,
        quarantined_by_reason={r: counts.get(r, 0) for r in REASONS},
        landing_keys=[lf.key for lf in files if lf.key in used],
    )


def _rows_to_table(spec: StreamSpec, rows: list[tuple]) -> pa.Table:
    schema = spec.schema
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in range(len(schema))]
    arrays = [pa.array(columns[i], type=f.type) for i, f in enumerate(schema)]
    table = pa.Table.from_arrays(arrays, schema=schema)
    # A stable order makes every re-materialization byte-for-byte the same.
    return table.take(pc.sort_indices(table, [("ts", "ascending"), (spec.id_field, "ascending")]))


# A raw partition's footer: the landing keys it was built from (`lost_landing_files`)
META_LANDING_KEYS = b"clicklake.landing_keys"
META_LISTED_AT = b"clicklake.listed_at"  # (epoch s, lateness minutes): `write_raw_partition`


def write_raw_partition(store: Store, part: RawPartition, lake_prefix: str = "lake",
                        listed: tuple[float, int] | None = None) -> None:
    """`listed`: (epoch seconds the landing files were listed, the allowed lateness in minutes
    then), kept in the file's footer (`listed_at`; the raw asset gives it when the listing came
    before the hour's landing window closed): that the hour may lack events is known from the
    file itself, even without the run's record."""
    extra = {} if listed is None else {META_LISTED_AT: orjson.dumps(list(listed))}
    table = part.table.replace_schema_metadata({
        **(part.table.schema.metadata or {}),
        META_LANDING_KEYS: orjson.dumps(sorted(part.landing_keys)), **extra})
    store.write_parquet(raw_key(part.stream, part.hour_ms, lake_prefix), table)
    store.write_parquet(quarantine_key(part.stream, part.hour_ms, lake_prefix), part.quarantine)


def listed_at(store: Store, stream: str, hour_ms: int, lake_prefix: str = "lake"
              ) -> tuple[float, int] | None:
    """(epoch seconds, lateness minutes) the stored partition's footer says its landing files
    were listed at (`write_raw_partition`); None when not built or not said."""
    meta = store.footer(raw_key(stream, hour_ms, lake_prefix))
    if not meta or META_LISTED_AT not in meta:
        return None
    at, lateness = orjson.loads(meta[META_LISTED_AT])
    return float(at), int(lateness)


def lost_landing_files(store: Store, stream: str, hour_ms: int, rules: Rules = Rules(),
                       landing_prefix: str = landing.DEFAULT_PREFIX,
                       lake_prefix: str = "lake") -> list[str] | None:
    """The landing files the stored raw partition of `hour_ms` was built from that a rebuild
    under `rules` would read but are gone (the landing zone's retention expired them, or they
    were deleted): rebuilt, the hour would lose their events. Files outside `rules`' arrival
    hours (a lower lateness since) are not asked for. [] when none is lost or nothing is
    stored; None when the partition predates the record (an older clicklake wrote it) and
    holds rows while no landing file of its hours is left."""
    key = raw_key(stream, hour_ms, lake_prefix)
    if not store.exists(key):
        return []
    first, last = rules.arrival_hours(hour_ms)
    now = {lf.key for lf in landing.list_hours(store, stream, first, last, landing_prefix)}
    footer = store.parquet_file(key)
    recorded = (footer.schema_arrow.metadata or {}).get(META_LANDING_KEYS)
    if recorded is None:
        return None if not now and footer.metadata.num_rows else []
    # A file replaced under another name with its uuid (an import run again, whose files are
    # stamped with their last event's time since) is there still.
    uuids = {u for k in now if (u := landing.name_uuid(k)) is not None}
    lost = []
    for k in orjson.loads(recorded):
        lf = landing.parse_key(k)
        if (lf is not None and first <= floor_hour(lf.arrival_ms) <= last and k not in now
                and landing.name_uuid(k) not in uuids):
            lost.append(k)
    return lost


def read_raw(store: Store, stream: str, hour_ms: int, lake_prefix: str = "lake",
             missing_ok: bool = False, columns: list[str] | None = None) -> pa.Table:
    """A raw partition (only `columns`, when given); with `missing_ok`, a partition never
    materialized reads as empty."""
    key = raw_key(stream, hour_ms, lake_prefix)
    if missing_ok and not store.exists(key):
        empty = SPECS[stream].schema.empty_table()
        return empty if columns is None else empty.select(columns)
    return store.read_parquet(key, columns=columns)
