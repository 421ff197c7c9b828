"""Store: one API over a local folder and an S3 prefix (moto's HTTP server), with atomic writes."""

from __future__ import annotations

import builtins
import os
import re
import shutil

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from depth import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clicklake.platform import storage
from clicklake.platform.storage import S3Options, Store

TABLE = pa.table(
    {
        "id": pa.array(["a", "b", None], pa.string()),
        "ts": pa.array([1, 2, 3], pa.timestamp("ms", tz="UTC")),
        "x": pa.array([0.5, None, 2.0], pa.float64()),
    }
)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Store(str(tmp_path / "root"))
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return Store(f"s3://{bucket}/prefix", S3Options(endpoint_url=endpoint, region="us-east-1"))


def test_bytes_round_trip_and_overwrite(store):
    store.write_bytes("a/b/c.bin", b"\x00\x01hello")
    assert store.read_bytes("a/b/c.bin") == b"\x00\x01hello"
    store.write_bytes("a/b/c.bin", b"second")
    assert store.read_bytes("a/b/c.bin") == b"second"
    store.write_bytes("empty.bin", b"")
    assert store.read_bytes("empty.bin") == b""


def test_a_local_file_is_copied_in_chunks(store, tmp_path):
    src = tmp_path / "big.bin"
    data = bytes(range(256)) * 1000 + b"tail"
    src.write_bytes(data)
    store.write_bytes("d/f.bin", b"old")
    store.write_file("d/f.bin", str(src), chunk=4096)
    assert store.read_bytes("d/f.bin") == data
    assert store.list("d") == ["d/f.bin"]


@pytest.mark.parametrize("one_part_bytes", [1000, storage.S3_ONE_PART_BYTES])
def test_a_copy_that_fails_midway_publishes_nothing(store, tmp_path, monkeypatch,
                                                     one_part_bytes):
    """On S3 the upload stream publishes what it holds when closed after an error: an object of
    more than one part goes to a hidden temporary key, moved into place only once complete
    (the part size lowered here: 5 MiB); one of a single part is gathered whole first."""
    monkeypatch.setattr(storage, "S3_ONE_PART_BYTES", one_part_bytes)
    src = tmp_path / "big.bin"
    src.write_bytes(b"y" * 50_000)
    store.write_bytes("d/f.bin", b"old")
    real, copied = shutil.copyfileobj, []

    def fails_midway(fsrc, fdst, length=0):
        fdst.write(fsrc.read(20_000))
        copied.append(True)
        raise OSError("the disk went away")

    monkeypatch.setattr(shutil, "copyfileobj", fails_midway)
    with pytest.raises(OSError, match="went away"):
        store.write_file("d/f.bin", str(src))
    monkeypatch.setattr(shutil, "copyfileobj", real)
    assert copied and store.read_bytes("d/f.bin") == b"old"
    store.write_bytes("d/f.bin", b"z" * 5000)  # and whole writes go the same way
    assert store.read_bytes("d/f.bin") == b"z" * 5000
    assert store.list("d") == ["d/f.bin"]
    if store.is_s3:  # no object left behind, hidden or not (the temporaries' folder may stay)
        left = store.fs.get_file_info(pafs.FileSelector(store.path("d"), recursive=True))
        assert [i.base_name for i in left if i.type == pafs.FileType.File] == ["f.bin"]


def test_list_is_sorted_recursive_and_relative(store):
    for key in ["x/2/b", "x/1/a", "x/1/c", "y/z", "xx/other"]:
        store.write_bytes(key, key.encode())
    assert store.list("x") == ["x/1/a", "x/1/c", "x/2/b"]
    assert store.list("x/") == ["x/1/a", "x/1/c", "x/2/b"]
    assert store.list("x/1/") == ["x/1/a", "x/1/c"]
    assert store.list("y/z") == ["y/z"]  # a file prefix lists itself
    assert store.list("") == ["x/1/a", "x/1/c", "x/2/b", "xx/other", "y/z"]


def test_list_versions_are_the_listed_keys_and_a_rewrite_shows(store):
    store.write_bytes("a/x.bin", b"one")
    store.write_bytes("a/b/y.bin", b"two")
    versions = store.list_versions("a/")
    assert sorted(versions) == store.list("a/") == ["a/b/y.bin", "a/x.bin"]
    assert versions["a/x.bin"][0] == 3
    store.write_bytes("a/x.bin", b"one, rewritten")
    after = store.list_versions("a/")
    assert after["a/x.bin"] != versions["a/x.bin"] and after["a/b/y.bin"] == versions["a/b/y.bin"]
    assert store.list_versions("missing/") == {}


def test_list_of_missing_prefix_is_empty(store):
    assert store.list("nothing/here/") == []
    assert store.list("nothing") == []
    store.write_bytes("some/file", b"1")
    assert store.list("some/fil") == []  # a prefix is a folder, not a string prefix


def test_exists_and_delete(store):
    assert not store.exists("k/v")
    store.write_bytes("k/v", b"1")
    assert store.exists("k/v")
    assert not store.exists("k")  # a folder is not a file
    store.delete("k/v")
    assert not store.exists("k/v")
    store.delete("k/v")  # deleting what is absent is a no-op
    assert store.list("k") == []


def test_parquet_round_trip_is_zstd_and_keeps_schema(store):
    n = store.write_parquet("lake/t/dt=2026-11-25/hour=13/part-0.parquet", TABLE)
    key = "lake/t/dt=2026-11-25/hour=13/part-0.parquet"
    assert n == len(store.read_bytes(key))
    back = store.read_parquet(key)
    # A single file is read as itself: the Hive folder names add no columns.
    assert back.schema == TABLE.schema
    assert back.equals(TABLE)
    assert store.read_parquet(key, columns=["x"]).column_names == ["x"]
    meta = store.parquet_file(key).metadata
    assert meta.num_rows == 3
    codecs = {
        meta.row_group(g).column(c).compression
        for g in range(meta.num_row_groups)
        for c in range(meta.num_columns)
    }
    assert codecs == {"ZSTD"}


def test_parquet_bytes_are_deterministic(store):
    store.write_parquet("a.parquet", TABLE)
    store.write_parquet("b.parquet", TABLE)
    assert store.read_bytes("a.parquet") == store.read_bytes("b.parquet")


def test_uri_and_path(tmp_path, moto_endpoint, s3_bucket):
    local = Store(str(tmp_path / "r"))
    assert local.uri("a/b") == os.path.join(str(tmp_path / "r"), "a/b")
    assert local.path("/a/b") == local.path("a/b")
    s3 = Store(f"s3://{s3_bucket}/p/", S3Options(endpoint_url=moto_endpoint))
    assert s3.is_s3 and s3.uri("a/b") == f"s3://{s3_bucket}/p/a/b"
    assert s3.path("") == f"{s3_bucket}/p"


def test_s3_objects_are_where_boto3_sees_them(moto_endpoint, s3_bucket):
    import boto3

    store = Store(f"s3://{s3_bucket}/root", S3Options(endpoint_url=moto_endpoint))
    store.write_bytes("landing/x.gz", b"abc")
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    listed = client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["root/landing/x.gz"]
    client.put_object(Bucket=s3_bucket, Key="root/landing/y.gz", Body=b"from boto3")
    assert store.list("landing") == ["landing/x.gz", "landing/y.gz"]
    assert store.read_bytes("landing/y.gz") == b"from boto3"


def test_local_write_leaves_no_temp_file(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("d/f.bin", b"1")
    store.write_parquet("d/t.parquet", TABLE)
    assert sorted(os.listdir(tmp_path / "d")) == ["f.bin", "t.parquet"]


def test_failed_local_write_keeps_old_content_and_no_temp(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    store.write_bytes("d/f.bin", b"old content")
    real_open = builtins.open

    class Exploding:
        """A file whose write puts half the bytes on disk, then fails (a full disk, a crash)."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(28, "No space left on device")

    def failing_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Exploding(f) if ".tmp-" in str(path) else f

    monkeypatch.setattr(builtins, "open", failing_open)
    with pytest.raises(OSError, match="No space"):
        store.write_bytes("d/f.bin", b"new content, much longer than the old one")
    with pytest.raises(OSError, match="No space"):
        store.write_parquet("d/t.parquet", TABLE)
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 10_000)
    with pytest.raises(OSError, match="No space"):
        store.write_file("d/f.bin", str(src), chunk=1000)
    monkeypatch.undo()
    os.remove(src)
    assert store.read_bytes("d/f.bin") == b"old content"
    assert os.listdir(tmp_path / "d") == ["f.bin"]
    assert store.list("d") == ["d/f.bin"]


def test_failed_rename_keeps_old_content_and_no_temp(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    store.write_bytes("f.bin", b"old")

    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        store.write_bytes("f.bin", b"new")
    monkeypatch.undo()
    assert store.read_bytes("f.bin") == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_list_hides_temp_files_of_writes_in_flight(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("d/a", b"1")
    (tmp_path / "d" / f"b.tmp-{'0123abcd' * 4}").write_bytes(b"partial")  # write_bytes' name
    assert store.list("d") == ["d/a"]


def test_keys_that_merely_contain_tmp_are_listed(store):
    """Only a local write's own temp file is hidden: a key that happens to hold ".tmp-" is a
    key like any other (on S3 nothing is hidden: its writes make no temp files)."""
    keys = ["exports/report.tmp-2026.csv", "lake/scratch.tmp-dir/part.parquet", "lake/ok.csv"]
    for key in keys:
        store.write_bytes(key, b"x")
    assert store.list("") == sorted(keys)


def test_read_of_missing_key_raises(store):
    with pytest.raises((FileNotFoundError, OSError)):
        store.read_bytes("missing/key")
    with pytest.raises((FileNotFoundError, OSError)):
        pq.read_table(store.path("missing.parquet"), filesystem=store.fs)


def _damaged(data: bytes, damage: str) -> bytes:
    footer = int.from_bytes(data[-8:-4], "little")  # the footer's length, before "PAR1"
    body = len(data) - 8 - footer
    if damage == "not parquet":
        return b"no footer here"
    if damage == "cut short":
        return data[:len(data) // 2]
    if damage == "garbled footer":  # its magic bytes intact
        return data[:body] + b"\xff" * footer + data[-8:]
    # a stretch of the compressed values, inside a page
    return data[:body // 4] + bytes(b ^ 0x5A for b in data[body // 4:body // 2]) + data[body // 2:]


@pytest.mark.parametrize(("damage", "at"), [
    ("not parquet", "open"), ("cut short", "open"), ("garbled footer", "open"),
    ("garbled page", "read")])
def test_a_damaged_parquet_file_is_named_in_the_error(store, damage, at):
    """Arrow's errors name no file: a run reading many partitions must say which one, whether
    the damage shows when the file is opened or when the page is read."""
    key = "raw/part.parquet"
    store.write_parquet(key, pa.table({"v": [f"value-{i}" for i in range(20_000)]}))
    store.write_bytes(key, _damaged(store.read_bytes(key), damage))
    with pytest.raises((pa.ArrowInvalid, OSError)) as caught:
        if at == "open":
            store.parquet_file(key)
        else:
            pf = store.parquet_file(key)
            pf.read()
    assert str(caught.value).startswith(f"{store.uri(key)}: ")
    assert not isinstance(caught.value, FileNotFoundError)
    with pytest.raises((pa.ArrowInvalid, OSError), match=re.escape(key)):
        store.read_parquet(key)
    if at == "read":  # and read by row group, or in batches
        with pytest.raises(OSError, match=f"^{re.escape(store.uri(key))}: "):
            store.parquet_file(key).read_row_group(0)
        with pytest.raises(OSError, match=f"^{re.escape(store.uri(key))}: "):
            list(store.parquet_file(key).iter_batches())
    store.write_parquet(key, pa.table({"v": ["a", "b"]}))  # a good file reads as before
    assert store.parquet_file(key, read_dictionary=["v"]).read()["v"].type == pa.dictionary(
        pa.int32(), pa.string())


def test_a_missing_parquet_file_stays_file_not_found(store):
    with pytest.raises(FileNotFoundError):
        store.parquet_file("raw/missing.parquet")
    with pytest.raises(FileNotFoundError, match=re.escape("raw/missing.parquet")):
        store.read_parquet("raw/missing.parquet")


def test_an_s3_move_killed_halfway_leaves_nothing_in_the_data_folder(moto_endpoint, s3_bucket,
                                                                     monkeypatch):
    """S3's move is a copy, then a delete: a process killed between the two left a whole copy
    of the object beside it (`<key>.tmp-<hex>`), hidden from `Store.list` but not from a
    reader listing the folder itself (a SageMaker channel read a training hour twice). The
    temporary key is outside every data prefix now (the deployment expires it)."""
    store = Store(f"s3://{s3_bucket}", S3Options(endpoint_url=moto_endpoint, region="us-east-1"))
    monkeypatch.setattr(storage, "S3_ONE_PART_BYTES", 1000)

    class Killed(BaseException):
        pass

    class DiesAfterTheCopy:
        def __init__(self, fs):
            self.fs = fs

        def __getattr__(self, name):
            return getattr(self.fs, name)

        def move(self, src, dest):
            self.fs.copy_file(src, dest)
            raise Killed  # the delete of `src` never happens

        def delete_file(self, path):
            raise Killed  # nor any clean-up: the process is gone

    real = store.fs
    store.fs = DiesAfterTheCopy(real)
    with pytest.raises(Killed):
        store.write_bytes("lake/training_sets/s/train/part-1.csv", b"1,0\n" * 1000)
    store.fs = real
    folder = real.get_file_info(pafs.FileSelector(store.path("lake/training_sets/s/train"),
                                                  recursive=True))
    assert [i.base_name for i in folder] == ["part-1.csv"]
    left = real.get_file_info(pafs.FileSelector(store.path(f"lake/{storage.S3_TEMP_PREFIX}")))
    assert len(left) == 1 and store.list("") == ["lake/training_sets/s/train/part-1.csv"]


def _hour(day: int, hour: int) -> int:
    from clicklake.platform.timeutil import HOUR_MS

    return 1_795_478_400_000 + (day * 24 + hour) * HOUR_MS  # 2026-11-24T00:00Z + day, hour


def test_hive_span_is_the_ends_of_the_listed_partitions(store):
    """The first and last partition hours from folder listings at the two ends equal the ends
    of every key listed, past folders that hold no partition file."""
    from clicklake.platform.timeutil import hive_hour_path, hive_hours

    p = "lake/raw/impressions"
    assert store.hive_span(p) is None
    store.write_bytes(f"{p}/dt=2026-11-24/hour=03/notes.txt", b"x")  # no partition file yet
    store.write_bytes(f"{p}/README", b"x")
    assert store.hive_span(p) is None
    for day, hour in [(1, 5), (1, 17), (2, 0), (3, 23), (3, 2)]:
        store.write_bytes(f"{p}/{hive_hour_path(_hour(day, hour))}/part-0.parquet", b"x")
    store.write_bytes(f"{p}/dt=2026-11-28/hour=07/other.parquet", b"x")  # after the last one
    store.write_bytes(f"{p}/dt=2026-11-28/hour=x7/part-0.parquet", b"x")
    store.write_bytes(f"{p}/dt=someday/hour=01/part-0.parquet", b"x")
    store.write_bytes(f"{p}/other/dt=2026-11-29/hour=01/part-0.parquet", b"x")  # not directly below
    want = hive_hours(k for k in store.list(p) if "/other/" not in k)
    assert (want[0], want[-1]) == (_hour(1, 5), _hour(3, 23))
    assert store.hive_span(p) == (want[0], want[-1])
    assert store.hive_span(p + "/") == store.hive_span("/" + p) == (want[0], want[-1])
    assert store.hive_latest(p, 4) == want[-4:] == [_hour(1, 17), _hour(2, 0), _hour(3, 2),
                                                     _hour(3, 23)]


def test_hive_span_skips_folders_that_are_no_date(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("p/dt=2026-02-30/hour=01/part-0.parquet", b"x")  # no such day
    store.write_bytes("p/dt=2026-11-24/hour=24/part-0.parquet", b"x")  # no such hour
    assert store.hive_span("p") is None
    store.write_bytes("p/dt=2026-11-25/hour=00/part-0.parquet", b"x")
    assert store.hive_span("p") == (_hour(1, 0), _hour(1, 0))


@settings(max_examples=examples(40), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.sets(st.tuples(st.integers(0, 40), st.integers(0, 23)), max_size=12),
       decoys=st.sets(st.tuples(st.integers(0, 40), st.integers(0, 23)), max_size=6))
def test_hive_span_equals_the_listing_oracle(tmp_path_factory, parts, decoys):
    """Random partition hours and hour folders holding other files only."""
    from clicklake.platform.timeutil import hive_hour_path, hive_hours

    store = Store(str(tmp_path_factory.mktemp("span")))
    for day, hour in parts:
        store.write_bytes(f"p/{hive_hour_path(_hour(day, hour))}/part-0.parquet", b"x")
    for day, hour in decoys:
        store.write_bytes(f"p/{hive_hour_path(_hour(day, hour))}/part-1.parquet", b"x")
    want = hive_hours(store.list("p"))
    assert store.hive_span("p") == ((want[0], want[-1]) if want else None)
    for n in (0, 1, 3, 30):
        assert store.hive_latest("p", n) == (want[-n:] if n else [])


def test_hive_ends_past_days_a_retention_emptied(store):
    """Deleting a partition's file (as the snapshot retention does) leaves its folders on a
    local disk: the ends are still the hours with files."""
    from clicklake.platform.timeutil import hive_hour_path

    p = "lake/profiles/user"
    for day in range(6):
        store.write_bytes(f"{p}/{hive_hour_path(_hour(day, 12))}/part-0.parquet", b"x")
    for day in range(4):
        store.delete(f"{p}/{hive_hour_path(_hour(day, 12))}/part-0.parquet")
    assert store.hive_span(p) == (_hour(4, 12), _hour(5, 12))
    assert store.hive_latest(p, 1) == [_hour(5, 12)]
    assert store.hive_latest(p, 9) == [_hour(4, 12), _hour(5, 12)]


def test_a_temp_file_a_killed_write_left_is_hidden_from_hive_readers(tmp_path, monkeypatch):
    """A process killed just before its rename leaves its temp file in the partition folder:
    our listings skipped it, but an Arrow dataset (or Spark) over the Hive folders read it as
    part of the partition, counting its rows twice."""
    import os
    import re

    import pyarrow.dataset as ds

    store = Store(str(tmp_path))
    real = os.replace

    def leaves_a_copy(src, dst):  # a second writer of the same key, killed before its rename
        folder, name = os.path.split(src)
        os.link(src, os.path.join(folder, re.sub(r"[0-9a-f]{32}$", "f" * 32, name)))
        real(src, dst)

    monkeypatch.setattr(os, "replace", leaves_a_copy)
    store.write_parquet("lake/raw/x/dt=2026-11-25/hour=09/part-0.parquet",
                        pa.table({"a": [1, 2, 3]}))
    monkeypatch.setattr(os, "replace", real)
    assert len(os.listdir(tmp_path / "lake/raw/x/dt=2026-11-25/hour=09")) == 2
    assert store.list("lake/raw/x") == ["lake/raw/x/dt=2026-11-25/hour=09/part-0.parquet"]
    assert ds.dataset(str(tmp_path / "lake/raw/x"), format="parquet",
                      partitioning="hive").count_rows() == 3
