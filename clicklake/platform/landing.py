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
from clicklake.platform.timeutil import HOUR_MS, to_datetime, to_ms

STREAMS = ("impressions", "clicks", "predictions")
DEFAULT_PREFIX = "landing"

_NAME = re.compile(
    r"^(?P<stream>[A-Za-z0-9_.-]+?)-(?P<version>\d+)-"
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})-(?P<h>\d{2})-(?P<mi>\d{2})-(?P<s>\d{2})-"
    r"(?P<uuid>[0-9A-Za-z-]+)\.gz$"
)
_FOLDER = re.compile(r"(?P<y>\d{4})/(?P<mo>\d{2})/(?P<d>\d{2})/(?P<h>\d{2})/[^/]+$")


def firehose_key(stream: str, arrival_ms: int, file_uuid: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The object key Firehose would write for a file of `stream` that arrived at `arrival_ms`."""
    t = to_datetime(arrival_ms)
    return (
        f"{prefix}/{stream}/{t:%Y/%m/%d/%H}/"
        f"{stream}-1-{t:%Y-%m-%d-%H-%M-%S}-{file_uuid}.gz"
    )


def hour_prefix(stream: str, hour_ms: int, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/{stream}/{to_datetime(hour_ms):%Y/%m/%d/%H}/"


@dataclass(frozen=True, order=True)
class LandingFile:
    """A landing object and its arrival time (ms). Ordered by arrival, then key."""

    arrival_ms: int
    key: str


def parse_key(key: str) -> LandingFile | None:
    """Arrival time from a Firehose object key; the folder hour when the name is not Firehose's."""
    name = key.rsplit("/", 1)[-1]
    m = _NAME.match(name)
    if m:
        dt = datetime(*(int(m[g]) for g in ("y", "mo", "d", "h", "mi", "s")))
        return LandingFile(to_ms(dt), key)
    f = _FOLDER.search(key)
    if f:
        return LandingFile(to_ms(datetime(*(int(f[g]) for g in ("y", "mo", "d", "h")))), key)
    return None


def list_hour(store: Store, stream: str, hour_ms: int, prefix: str = DEFAULT_PREFIX) -> list[LandingFile]:
    """Landing files of one arrival hour, in arrival order."""
    files = [parse_key(k) for k in store.list(hour_prefix(stream, hour_ms, prefix))]
    return sorted(f for f in files if f is not None)


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


def decode_lines(data: bytes) -> DecodedFile:
    """Lines of a landing object. A corrupt or truncated gzip keeps what could be read."""
    try:
        body = gzip.decompress(data)
        error = None
    except (OSError, EOFError, zlib.error) as exc:
        d = zlib.decompressobj(wbits=47)
        try:
            body = d.decompress(data)
        except zlib.error:
            body = b""
        # A partial last line from a truncated stream is not trusted.
        body = body[: body.rfind(b"\n") + 1] if body else b""
        error = f"unreadable gzip: {exc}"
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return DecodedFile(lines, error)


def read_lines(store: Store, key: str) -> DecodedFile:
    return decode_lines(store.read_bytes(key))


def write_file(store: Store, key: str, lines: list[bytes]) -> None:
    store.write_bytes(key, encode_lines(lines))
