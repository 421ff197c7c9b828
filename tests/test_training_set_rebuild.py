"""A training set rebuilt under the same id (another validation split over the same hours) holds
exactly the new split's parts: none of the earlier build's stay behind; a rebuild that dies
half-way leaves a set that is refused, not the old manifest over a mix of parts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from clicklake.platform.features import CATEGORICAL, FEATURE_NAMES
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, hour_partition_key, parse_instant
from clicklake.platform.training.csvformat import read_sagemaker_csv
from clicklake.platform.training_set import build_training_set, latest_training_set

START = parse_instant("2025-11-25T10:00:00Z")
HOURS = [START + i * HOUR_MS for i in range(8)]


def _hour(hour_ms: int, columns: list[str] | None) -> pa.Table:
    rng = np.random.default_rng(hour_ms // HOUR_MS)
    n = 25
    data = {name: pa.array([f"v{int(x)}" for x in rng.integers(0, 3, n)]) if name in CATEGORICAL
            else pa.array(rng.random(n)) for name in FEATURE_NAMES}
    data["label"] = pa.array(rng.integers(0, 2, n).astype(np.int8))
    data["impression_id"] = pa.array([f"{hour_ms}-{i}" for i in range(n)])
    data["cost"] = pa.array(rng.random(n))
    table = pa.table(data)
    return table.select(columns) if columns else table


def test_a_rebuild_with_another_split_keeps_no_stale_part(tmp_path):
    store = Store(str(tmp_path))
    for validation in (4, 2):
        ts, stats = build_training_set(store, HOURS, validation, _hour, 900, set_id="ts-same")
    parts = {split: sorted(k.rsplit("/", 1)[1] for k in store.list(f"{ts.root}/{split}/"))
             for split in ("train", "validation")}
    name = lambda h: f"part-{hour_partition_key(h).replace(':', '')}.csv"
    assert parts == {"train": [name(h) for h in HOURS[:6]],
                     "validation": [name(h) for h in HOURS[6:]]}
    y, _ = read_sagemaker_csv([store.read_bytes(k) for k in store.list(ts.validation_prefix)],
                              ts.manifest.n_features)
    rows = store.read_parquet(f"{ts.root}/validation_rows.parquet")
    assert len(y) == rows.num_rows == stats["validation_rows"] == 50


def test_a_rebuild_that_died_is_refused_until_built_again(tmp_path, monkeypatch):
    """Before, the old manifest (its split, its vocabularies) stayed over the new build's first
    parts and the old build's remaining ones: a model trained from `latest_training_set` then
    read validation hours as training ones."""
    store = Store(str(tmp_path))
    build_training_set(store, HOURS, 4, _hour, 900, set_id="ts-same")
    real, parts = store.write_bytes, []

    def write_bytes(key, data):
        if "/part-" in key:
            parts.append(key)
            if len(parts) == 3:
                raise ConnectionError("the run's worker went away")
        return real(key, data)

    monkeypatch.setattr(store, "write_bytes", write_bytes)
    with pytest.raises(ConnectionError):
        build_training_set(store, HOURS, 2, _hour, 900, set_id="ts-same")
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="ts-same has no manifest: its last build did not"):
        latest_training_set(store)
    ts, _ = build_training_set(store, HOURS, 2, _hour, 900, set_id="ts-same")
    assert latest_training_set(store).manifest.validation_hours == ts.manifest.validation_hours
    assert len(ts.manifest.validation_hours) == 2


def test_a_rebuild_that_died_before_its_pointer_gives_its_own_counts(tmp_path, monkeypatch):
    """The row and click counts came from the pointer, written after the manifest: a rebuild
    under the same id (another split) that died between the two left a complete set with the
    previous build's counts, so click_model took another base rate (0.58 for 0.54) and trained
    another model. The counts are the manifest's, and those of the CSV parts."""
    store = Store(str(tmp_path))
    build_training_set(store, HOURS, 4, _hour, 900, set_id="ts-same")
    real = store.write_bytes

    def dies_at_the_pointer(key, data):
        if key.endswith("training_sets/latest.json"):
            raise ConnectionError("the worker died")
        return real(key, data)

    monkeypatch.setattr(store, "write_bytes", dies_at_the_pointer)
    with pytest.raises(ConnectionError):
        build_training_set(store, HOURS, 2, _hour, 900, set_id="ts-same")
    monkeypatch.setattr(store, "write_bytes", real)
    ts = latest_training_set(store)
    y, _ = read_sagemaker_csv([store.read_bytes(k) for k in store.list(ts.train_prefix)],
                              ts.manifest.n_features)
    assert (ts.stats["train_rows"], ts.stats["train_clicks"]) == (len(y), int(y.sum()))
    assert len(ts.manifest.train_hours) == 6


def test_a_manifest_without_counts_takes_the_pointers_only_when_they_agree(tmp_path):
    """A set built before the manifest held its click counts: the pointer's are taken when its
    row counts are the manifest's; otherwise the set is refused, to be built again."""
    import orjson

    store = Store(str(tmp_path))
    ts, stats = build_training_set(store, HOURS, 2, _hour, 900, set_id="ts-old")
    key = f"{ts.root}/manifest.json"
    old = orjson.loads(store.read_bytes(key))
    del old["train_clicks"], old["validation_clicks"]
    store.write_bytes(key, orjson.dumps(old))
    assert latest_training_set(store).stats == stats
    old["train_rows"] += 1
    store.write_bytes(key, orjson.dumps(old))
    with pytest.raises(FileNotFoundError, match="materialize training_set again"):
        latest_training_set(store)


def test_an_hour_without_rows_writes_no_part_and_a_split_without_rows_is_refused(tmp_path):
    # SageMaker's XGBoost container reads each file's first line to find the delimiter: an
    # empty part (a quiet hour, a gap in an imported log) failed the training job.
    store = Store(str(tmp_path))
    quiet = {HOURS[2], HOURS[7]}

    def hour(hour_ms: int, columns: list[str] | None) -> pa.Table:
        table = _hour(hour_ms, columns)
        return table.slice(0, 0) if hour_ms in quiet else table

    ts, stats = build_training_set(store, HOURS, 2, hour, 900, set_id="ts-quiet")
    written = {k.rsplit("/", 1)[1] for split in ("train", "validation")
               for k in store.list(f"{ts.root}/{split}/")}
    assert written == {f"part-{hour_partition_key(h).replace(':', '')}.csv"
                       for h in HOURS if h not in quiet}
    assert all(store.read_bytes(f"{ts.root}/{split}/{name}") for split in ("train", "validation")
               for name in written if store.exists(f"{ts.root}/{split}/{name}"))
    assert ts.manifest.source_partitions == [hour_partition_key(h) for h in HOURS]
    assert (stats["train_rows"], stats["validation_rows"]) == (5 * 25, 25)
    quiet |= {HOURS[6]}
    with pytest.raises(ValueError, match="validation hours .* hold no labeled rows"):
        build_training_set(store, HOURS, 2, hour, 900, set_id="ts-quiet")


def test_vocabularies_come_from_training_hours_seen_at_least_the_minimum(tmp_path):
    """A categorical value enters the manifest's vocabulary only if the training hours hold it
    at least MIN_CATEGORY_COUNT times: not one seen once short of it, nor one seen only in the
    validation hours (that would leak them into training)."""
    from clicklake.platform.training_set import MIN_CATEGORY_COUNT

    h0 = parse_instant("2026-11-25T13:00:00Z")
    hours = [h0 + k * HOUR_MS for k in range(3)]

    def hour(h, columns):
        if h == hours[-1]:  # validation
            countries = ["ZZ"] * 20
        elif h == hours[0]:
            countries = (["DE"] * MIN_CATEGORY_COUNT + ["FR"] * (MIN_CATEGORY_COUNT - 1)
                         + ["US"] * 3)
        else:
            countries = ["US"] * 3
        n = len(countries)
        data = {c: pa.array(countries if c == "country" else ["x"] * n) for c in CATEGORICAL}
        data.update({f: pa.array(np.zeros(n)) for f in FEATURE_NAMES if f not in CATEGORICAL})
        data.update(label=pa.array(np.arange(n) % 2, pa.int8()),
                    impression_id=pa.array([f"{h}-{i}" for i in range(n)]),
                    cost=pa.array(np.zeros(n)))
        table = pa.table(data)
        return table.select(columns) if columns else table

    ts, _ = build_training_set(Store(str(tmp_path)), hours, 1, hour, 900, set_id="ts-voc")
    assert ts.manifest.categorical["country"] == ["DE", "US"]
