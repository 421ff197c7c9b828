"""One storage API over a local folder or an S3 prefix.

Both backends go through a pyarrow FileSystem, so the lake and the landing zone share one code
path; only the root differs ("data/lake" or "s3://bucket/prefix"). Writes are atomic: a temp file
plus rename on a local disk, a single object PUT on S3 (an object is visible only once complete).
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import re
import shutil
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clicklake.platform.timeutil import hive_hour_of

PARQUET_COMPRESSION = "zstd"

# The folders of a Hive hour partition (`timeutil.hive_hour_path`): zero-padded, so their names
# sort as their hours do.
_HIVE_DAY = re.compile(r"dt=\d{4}-\d{2}-\d{2}")
_HIVE_HOUR = re.compile(r"hour=\d{2}")
# A local write's temp file (`write_bytes`): `.<name>.tmp-<32 hex>` (`<name>.tmp-<32 hex>` before),
# never a key of its own.
_TEMP = re.compile(r"\.tmp-[0-9a-f]{32}$")
# Below this, pyarrow uploads an S3 object in one part (its parts are at least 5 MiB): an upload
# that fails publishes nothing.
S3_ONE_PART_BYTES = 5 << 20
# Where larger S3 objects are uploaded before their move into place (the deployment's
# lifecycle rule expires what a killed process left there).
S3_TEMP_PREFIX = ".tmp"


def s3_temp_key(key: str) -> str:
    """The temporary key of an upload of `key` (below the root): in a `.tmp/` folder of the
    key's top folder (`lake/.tmp/...` for `lake/raw/...`). Outside every data folder: S3's move
    is a copy then a delete, and a process killed between the two left a whole copy beside
    the object, which a reader listing that folder (a SageMaker channel, Athena) took for data.
    Within the top folder: the one the deployment's roles may write (`lake/*`, `dagster/*`)."""
    top, _, rest = key.lstrip("/").partition("/")
    folder = f"{top}/{S3_TEMP_PREFIX}" if rest else S3_TEMP_PREFIX
    return f"{folder}/{uuid.uuid4().hex}.tmp-{uuid.uuid4().hex}"  # `_TEMP`: hidden


@dataclass(frozen=True)
class S3Options:
    endpoint_url: str | None = None
    region: str | None = None


def check_s3_root(root: str) -> None:
    """ValueError when an s3:// root names no bucket ("s3://" or "s3:///x": the first folder
    below would be taken for the bucket)."""
    if not root[len("s3://"):].split("/", 1)[0]:
        raise ValueError(f"{root!r} names no bucket: s3://BUCKET[/prefix]")


def parquet_bytes(table: pa.Table, row_group_size: int | None = None,
                  use_dictionary: bool | list[str] = True) -> bytes:
    """`table` as the bytes of a zstd Parquet file, as `Store.write_parquet` writes it (Arrow
    encodes and compresses without the GIL: a caller may do this on a thread of its own)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=PARQUET_COMPRESSION, row_group_size=row_group_size,
                   use_dictionary=use_dictionary)
    return buf.getvalue()


@dataclass
class Store:
    """A root (local folder or s3://bucket/prefix) and the filesystem that serves it."""

    root: str
    s3: S3Options = field(default_factory=S3Options)

    def __post_init__(self) -> None:
        if self.root.startswith("s3://"):
            check_s3_root(self.root)
            self.is_s3 = True
            kwargs: dict = {}
            if self.s3.endpoint_url:
                scheme, _, host = self.s3.endpoint_url.partition("://")
                kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
            if self.s3.region:
                kwargs["region"] = self.s3.region
            self.fs: pafs.FileSystem = pafs.S3FileSystem(**kwargs)
            self.base = self.root[len("s3://") :].rstrip("/")
        else:
            self.is_s3 = False
            self.fs = pafs.LocalFileSystem()
            self.base = os.path.abspath(self.root)

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    def path(self, key: str) -> str:
        return posixpath.join(self.base, key.lstrip("/")) if key else self.base

    def uri(self, key: str) -> str:
        if self.is_s3:
            return "s3://" + self.path(key)
        return self.path(key)

    # -- bytes ---------------------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> None:
        self._publish(key, lambda out: out.write(data), len(data))

    def write_file(self, key: str, local_path: str, chunk: int = 1 << 20) -> None:
        """Copy a local file of any size to `key`, `chunk` bytes at a time (never whole in
        memory), as atomically as `write_bytes`."""
        with open(local_path, "rb") as src:
            self._publish(key, lambda out: shutil.copyfileobj(src, out, chunk),
                          os.fstat(src.fileno()).st_size)

    def _publish(self, key: str, write, size: int) -> None:
        """`write(stream)` of `size` bytes into `key`: a temp file renamed into place on a local
        root; one object on S3, visible once complete, and when it may take more than one part
        (pyarrow's stream cannot be aborted: closed after an error mid-upload, it publishes the
        parts it holds, apache/arrow#40502) written under a hidden temporary key, moved into
        place once whole."""
        path = self.path(key)
        if self.is_s3 and size < S3_ONE_PART_BYTES:
            # Gathered first (under 5 MiB): the stream's close, even after an error, uploads
            # whatever it holds as the whole object.
            gathered = io.BytesIO()
            write(gathered)
            with self.fs.open_output_stream(path, compression=None, metadata={}) as out:
                out.write(gathered.getbuffer())
            return
        if self.is_s3:
            tmp = self.path(s3_temp_key(key))
            try:
                with self.fs.open_output_stream(tmp, compression=None, metadata={}) as out:
                    write(out)
                self.fs.move(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    self.fs.delete_file(tmp)
                raise
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # `.<name>.tmp-<hex>`: hidden from our listings (`_TEMP`) and, by its leading dot,
        # from other readers of the Hive folders (Arrow datasets, Spark), which would have read
        # a file a killed process left here as part of the partition.
        folder, name = os.path.split(path)
        tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())  # the rename must never publish a file whose bytes are lost
            os.replace(tmp, path)
        except BaseException:
            # A failed write leaves the previous version in place and no temp file behind.
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise

    def read_bytes(self, key: str) -> bytes:
        with self.fs.open_input_stream(self.path(key), compression=None) as f:
            return f.read()

    def exists(self, key: str) -> bool:
        return self.fs.get_file_info(self.path(key)).type == pafs.FileType.File

    def delete(self, key: str) -> None:
        if self.exists(key):
            self.fs.delete_file(self.path(key))

    def list(self, prefix: str) -> list[str]:
        """Keys of all files below `prefix` (relative to the root), sorted; [] when absent."""
        return sorted(key for key, _ in self._files_below(prefix))

    def list_versions(self, prefix: str) -> dict[str, tuple[int, int | None]]:
        """Key -> (size, modification time in ns) of all files below `prefix`, from the same
        one listing as `list` (on S3 the LIST response carries both): a key rewritten since an
        earlier listing shows a new version (on S3 to the second: a rewrite of the same size
        within the same second does not show)."""
        return {key: (info.size, info.mtime_ns) for key, info in self._files_below(prefix)}

    def _files_below(self, prefix: str) -> list[tuple[str, pafs.FileInfo]]:
        base = self.path(prefix)
        info = self.fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            return []
        if info.type == pafs.FileType.File:
            return [(prefix, info)]
        sel = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        root = self.base + "/"
        return [(fi.path[len(root):], fi) for fi in self.fs.get_file_info(sel)
                if fi.type == pafs.FileType.File and not _TEMP.search(fi.base_name)]

    def subdirs(self, prefix: str) -> list[str]:
        """Names of the folders directly below `prefix`, sorted; [] when absent. One listing
        (on S3 a delimited LIST: common prefixes, not every key below them)."""
        sel = pafs.FileSelector(self.path(prefix), recursive=False, allow_not_found=True)
        return sorted(fi.base_name for fi in self.fs.get_file_info(sel)
                      if fi.type == pafs.FileType.Directory)

    def hive_span(self, prefix: str) -> tuple[int, int] | None:
        """The first and last hours (epoch ms) with a partition file directly below `prefix`
        (`dt=YYYY-MM-DD/hour=HH/part-0.parquet`, `timeutil.hive_hour_path`), None when none:
        from a listing of the day folders and of the days at each end (on S3: one delimited LIST
        and a LIST a day tried), not of every file: a run asking where the lake starts reads a
        few dozen names after a year, not 8,760 keys. It walks forward from the first day: for
        the last hours of a prefix whose early days a retention emptied (a local disk keeps
        their folders), `hive_latest` walks back from the last day instead."""
        base = prefix.strip("/")
        days = self._hive_days(base)
        listed = {}  # day -> its hours: a day at both ends (one day of data) is listed once

        def hours_of(day: str) -> list[int]:
            if day not in listed:
                listed[day] = self._day_hours(base, day)
            return listed[day]

        first = next((h[0] for d in days if (h := hours_of(d))), None)
        if first is None:
            return None
        return first, next(h[-1] for d in reversed(days) if (h := hours_of(d)))

    def hive_latest(self, prefix: str, n: int) -> list[int]:
        """The latest `n` partition hours below `prefix` (as `hive_span` finds them), ascending:
        the days listed from the last one back until they hold `n`."""
        base = prefix.strip("/")
        hours: list[int] = []
        for day in reversed(self._hive_days(base)):
            if len(hours) >= n:
                break
            hours = self._day_hours(base, day) + hours
        return hours[-n:] if n > 0 else []

    def _hive_days(self, base: str) -> list[str]:
        return [d for d in self.subdirs(base) if _HIVE_DAY.fullmatch(d)]

    def _day_hours(self, base: str, day: str) -> list[int]:
        """The hours of day folder `day` holding a partition file, ascending (one listing of
        the folder: on S3 a single LIST, not `list`'s probes of what the prefix is first)."""
        hours = []
        sel = pafs.FileSelector(self.path(f"{base}/{day}"), recursive=True, allow_not_found=True)
        root = self.base + "/"
        for info in self.fs.get_file_info(sel):
            if info.type != pafs.FileType.File:
                continue
            key = info.path[len(root):]
            parts = key.removeprefix(f"{base}/" if base else "").split("/")
            if parts[0] != day or len(parts) != 3 or parts[2] != "part-0.parquet" or \
                    not _HIVE_HOUR.fullmatch(parts[1]):
                continue
            try:
                ms = hive_hour_of(key)
            except ValueError:  # not a date (dt=2026-02-30, hour=24): not a partition
                continue
            if ms is not None:
                hours.append(ms)
        return sorted(hours)

    # -- parquet -------------------------------------------------------------------------------
    def write_parquet(self, key: str, table: pa.Table, row_group_size: int | None = None,
                      use_dictionary: bool | list[str] = True) -> int:
        """Write `table` atomically as zstd Parquet (`parquet_bytes`); returns the bytes written.
        `use_dictionary`: as pyarrow's (the columns to dictionary-encode, or all or none)."""
        data = parquet_bytes(table, row_group_size, use_dictionary)
        self.write_bytes(key, data)
        return len(data)

    def read_parquet(self, key: str, columns: list[str] | None = None) -> pa.Table:
        with _named(self.uri(key)):
            return pq.read_table(self.path(key), filesystem=self.fs, columns=columns)

    def footer(self, key: str) -> dict | None:
        """The schema metadata in the footer of the Parquet file at `key` ({} when it has none),
        None when there is no file: the footer alone is read."""
        if not self.exists(key):
            return None
        return self.parquet_file(key).schema_arrow.metadata or {}

    def parquet_file(self, key: str, read_dictionary: list[str] | None = None) -> pq.ParquetFile:
        """The Parquet file at `key`, its footer read. A damaged file (not Parquet, cut short,
        a garbled footer or data page) raises what Arrow raises, naming the file, at the open
        or at the read that meets the damage: Arrow's own messages name none, and a labeled
        range reads dozens of partitions."""
        source = self.fs.open_input_file(self.path(key))
        try:
            with _named(self.uri(key)):
                return _NamedParquetFile(source, self.uri(key), read_dictionary=read_dictionary)
        except BaseException:
            source.close()
            raise


@contextlib.contextmanager
def _named(uri: str):
    """Arrow's errors of a damaged file (`ArrowInvalid`, `OSError`) again, of the same type
    (a missing file's is still a `FileNotFoundError`), naming `uri` when their message does
    not."""
    try:
        yield
    except (pa.ArrowInvalid, OSError) as exc:
        if uri in str(exc):
            raise
        try:
            named = type(exc)(f"{uri}: {exc}")
        except Exception:  # noqa: BLE001 - a type that takes other arguments
            named = OSError(f"{uri}: {exc}")
        raise named from exc


class _NamedParquetFile(pq.ParquetFile):
    """`pq.ParquetFile` whose reads name the file in the errors of a damaged one (`_named`)."""

    def __init__(self, source, uri: str, **kwargs):
        super().__init__(source, **kwargs)
        self.uri = uri

    def read(self, *args, **kwargs):
        with _named(self.uri):
            return super().read(*args, **kwargs)

    def read_row_group(self, *args, **kwargs):
        with _named(self.uri):
            return super().read_row_group(*args, **kwargs)

    def read_row_groups(self, *args, **kwargs):
        with _named(self.uri):
            return super().read_row_groups(*args, **kwargs)

    def iter_batches(self, *args, **kwargs):
        with _named(self.uri):
            yield from super().iter_batches(*args, **kwargs)
