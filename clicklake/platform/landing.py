"""The landing zone, laid out exactly as Kinesis Data Firehose writes to S3.

    landing/<stream>/YYYY/MM/DD/HH/<stream>-1-YYYY-MM-DD-HH-mm-ss-<uuid>.gz

Each object is gzip-compressed newline-delimited JSON. The folder hour and the timestamp in the
name are the UTC arrival time of the file; clicklake takes that timestamp as the arrival time of
every record in the file (the lateness and future rules are defined on it, by batch and online
paths alike).
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from datetime import datetime

from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, MINUTE_MS, floor_hour, to_datetime, to_ms

STREAMS = ("impressions", "clicks", "predictions")
DEFAULT_PREFIX = "landing"
# A file keyed at a time may become visible up to Firehose's buffer interval later: a raw hour
# is built once its landing window has closed and this much more has passed.
FIREHOSE_BUFFER_MS = 15 * MINUTE_MS

_NAME = re.compile(
    r"^(?P<stream>[A-Za-z0-9_.-]+?)-(?P<version>\d+)-"
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})-(?P<h>\d{2})-(?P<mi>\d{2})-(?P<s>\d{2})-"
    r"(?P<uuid>[0-9A-Za-z-]+)\.gz$"
)
_FOLDER = re.compile(r"(?P<y>\d{4})/(?P<mo>\d{2})/(?P<d>\d{2})/(?P<h>\d{2})/[^/]+$")


def firehose_key(stream: str, arrival_ms: int, file_uuid: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The object key Firehose would write for a file of `stream` that arrived at `arrival_ms`."""
    t = to_datetime(arrival_ms)
    return f"{prefix}/{stream}/{t:%Y/%m/%d/%H}/{stream}-1-{t:%Y-%m-%d-%H-%M-%S}-{file_uuid}.gz"


def hour_prefix(stream: str, hour_ms: int, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/{stream}/{to_datetime(hour_ms):%Y/%m/%d/%H}/"


def hour_folders(store: Store, stream: str, since_ms: int, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """The stream's hour folders (`hour_prefix` form) that exist, from since_ms's hour on, in
    time order: a walk down years, months, days and hours that lists only the folders at or
    after since's, so its cost follows the folders that exist, not the hours elapsed (a stream
    quiet for a week costs a few listings, not one per hour)."""
    lo = f"{to_datetime(since_ms):%Y/%m/%d/%H}".split("/")
    out: list[str] = []

    def walk(path: str, level: int, bounded: bool) -> None:
        for name in store.subdirs(path):
            if bounded and name < lo[level]:
                continue
            if level == 3:
                out.append(f"{path}{name}/")
            else:
                walk(f"{path}{name}/", level + 1, bounded and name == lo[level])

    walk(f"{prefix}/{stream}/", 0, True)
    return out


@dataclass(frozen=True, order=True)
class LandingFile:
    """A landing object and its arrival time (ms). Ordered by arrival, then key."""

    arrival_ms: int
    key: str


def _ms(*parts: str) -> int | None:
    try:
        return to_ms(datetime(*(int(p) for p in parts)))
    except ValueError:  # e.g. month 13 or February 30: not a time
        return None


def parse_key(key: str) -> LandingFile | None:
    """Arrival time of a landing object, or None when its key says no time.

    The time in a Firehose object name (second precision) is the arrival time. A key whose name is
    not Firehose's arrives at the start of its folder hour. Should the name's time fall outside
    the folder hour, the folder wins: the folder decides which partitions list the file, and the
    arrival time must agree with it, or the file's rejected lines would belong to a partition
    that never reads it.
    """
    folder = _FOLDER.search(key)
    folder_ms = _ms(*(folder[g] for g in ("y", "mo", "d", "h"))) if folder else None
    m = _NAME.match(key.rsplit("/", 1)[-1])
    name_ms = _ms(*(m[g] for g in ("y", "mo", "d", "h", "mi", "s"))) if m else None
    if name_ms is not None and (folder_ms is None or floor_hour(name_ms) == folder_ms):
        return LandingFile(name_ms, key)
    if folder_ms is not None:
        return LandingFile(folder_ms, key)
    return None


def name_uuid(key: str) -> str | None:
    """The uuid of a Firehose object name (None for another name): a file renamed with
    another arrival time but the same uuid (a re-import's buffer, stamped anew) is the same."""
    m = _NAME.match(key.rsplit("/", 1)[-1])
    return m["uuid"] if m else None


def layout_file(key: str, prefix: str = DEFAULT_PREFIX) -> tuple[LandingFile, str] | None:
    """(file, stream) of a key laid out as Firehose writes, `<prefix>/<stream>/YYYY/MM/DD/HH/
    <name>` with a known stream; None for any other key. A file elsewhere under the prefix (a
    replay folder, a file beside the hour folders or below them) is in no hour folder the raw
    layer reads: the online fold must not count it either, or the two would disagree."""
    if not key.startswith(prefix + "/"):
        return None
    parts = key[len(prefix) + 1:].split("/")
    if len(parts) != 6 or parts[0] not in STREAMS:
        return None
    lf = parse_key(key)
    # parse_key takes the folder's hour over a name's that disagrees; a folder that is no
    # date leaves the name's, which is then in another folder.
    if lf is None or not key.startswith(hour_prefix(parts[0], floor_hour(lf.arrival_ms), prefix)):
        return None
    return lf, parts[0]


def list_hour(
    store: Store, stream: str, hour_ms: int, prefix: str = DEFAULT_PREFIX
) -> list[LandingFile]:
    """Landing files of one arrival hour, in arrival order (keys in folders below the hour's
    are not landing files: `layout_file`)."""
    files = [layout_file(k, prefix) for k in store.list(hour_prefix(stream, hour_ms, prefix))]
    return sorted(f[0] for f in files if f is not None)


def list_hours(
    store: Store, stream: str, first_hour_ms: int, last_hour_ms: int, prefix: str = DEFAULT_PREFIX
) -> list[LandingFile]:
    out: list[LandingFile] = []
    h = first_hour_ms
    while h <= last_hour_ms:
        out.extend(list_hour(store, stream, h, prefix))
        h += HOUR_MS
    return out


def encode_lines(lines: list[bytes]) -> bytes:
    """gzip NDJSON bytes for a landing object (mtime 0 so equal input gives equal bytes)."""
    body = b"".join(line + b"\n" for line in lines)
    return gzip.compress(body, compresslevel=6, mtime=0)


@dataclass
class DecodedFile:
    lines: list[bytes]
    error: str | None = None  # set when the object could not be fully decompressed
    tail: bytes = b""  # the unterminated text after the last newline of an unreadable object


def _salvage(data: bytes) -> tuple[bytes, str | None]:
    """Everything that decompresses before the first error, and what the error was (if any).

    Walks gzip members one by one; inside a member the input is fed in blocks, and the block that
    fails is replayed byte by byte from a copy of the decompressor, so no readable byte is lost.
    Zero padding after the last member is accepted, as gzip(1) does.
    """
    out: list[bytes] = []
    view = memoryview(data)
    pos = member = 0  # an offset, not a copied remainder: many small members stay linear
    while pos < len(data):
        member += 1
        # Named in the error, so a reader can tell which member is damaged and find it.
        where = f"member {member} (at byte {pos})"
        d = zlib.decompressobj(wbits=47)  # 32 + 15: gzip (or zlib) header, 32 KiB window
        while not d.eof and pos < len(data):
            block = view[pos : pos + 4096]
            before = d.copy()
            try:
                out.append(d.decompress(block))
            except zlib.error as exc:
                for b in range(len(block)):
                    try:
                        out.append(before.decompress(block[b : b + 1]))
                    except zlib.error:
                        break
                return b"".join(out), f"corrupt gzip: {where}: {exc}"
            pos += len(block)
        if not d.eof:
            return b"".join(out), f"truncated gzip: {where} ends before its end marker"
        # The next member starts inside the last block fed; every later byte is still to read.
        pos -= len(d.unused_data)
        if data[pos : pos + 1] == b"\x00" and data.count(b"\x00", pos) == len(data) - pos:
            break
    return b"".join(out), None


# Input fed per call after the first member (which is fed whole: most objects are one member),
# from 4 KiB at a member's start, doubling to 1 MiB: the bytes after a member's end are copied
# (`unused_data`), so they must stay few for a small member, while a big one takes few calls.
_GUNZIP_FIRST_BLOCK, _GUNZIP_MAX_BLOCK = 1 << 12, 1 << 20
_NOT_ZERO = re.compile(rb"[^\x00]")


def _gunzip(data: bytes) -> bytes:
    """`gzip.decompress(data)`, in time linear in the members: Python's copies the rest of
    the input after each member, so an object of many small members (a producer appending
    one per record) took quadratic time (16 k members of 1.7 MB: 2.4 s). Raises `zlib.error`
    or `EOFError` on damage, for `_salvage` to say where; zero padding between and after
    members is skipped, as gzip.decompress does."""
    out: list[bytes] = []
    view = memoryview(data)
    pos, end = 0, len(data)
    while pos < end:
        d = zlib.decompressobj(wbits=47)  # as `_salvage` reads a member
        size = _GUNZIP_FIRST_BLOCK if pos else end
        while not d.eof:
            if pos >= end:
                raise EOFError("a gzip member ends before its end marker")
            block = view[pos : pos + size]
            out.append(d.decompress(block))
            pos += len(block)
            size = min(2 * size, _GUNZIP_MAX_BLOCK)
        pos -= len(d.unused_data)  # the next member starts inside the last block fed
        nonzero = _NOT_ZERO.search(data, pos)
        pos = end if nonzero is None else nonzero.start()
    return b"".join(out)


def decode_lines(data: bytes) -> DecodedFile:
    """Lines of a landing object. A corrupt or truncated gzip keeps what could be read.

    From an unreadable object, every complete line before the damage is kept; the unterminated
    text after the last newline is not trusted as a record and is returned as `tail`, so the
    caller can show it in the one `malformed` row that reports the file.
    """
    try:
        body = _gunzip(data)
        error = None
        tail = b""
    except (EOFError, zlib.error):
        body, error = _salvage(data)
        tail = b""
        if error is not None:
            cut = body.rfind(b"\n") + 1
            body, tail = body[:cut], body[cut:]
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return DecodedFile(lines, error, tail)


def read_lines(store: Store, key: str) -> DecodedFile:
    return decode_lines(store.read_bytes(key))


def write_file(store: Store, key: str, lines: list[bytes]) -> None:
    store.write_bytes(key, encode_lines(lines))


def landed_hours(store: Store, stream: str, prefix: str = DEFAULT_PREFIX) -> list[int]:
    """Arrival hours (epoch ms, ascending) that hold at least one file of `stream`."""
    files = (layout_file(k, prefix) for k in store.list(f"{prefix}/{stream}/"))
    return sorted({floor_hour(f[0].arrival_ms) for f in files if f is not None})
