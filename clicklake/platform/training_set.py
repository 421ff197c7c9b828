"""Labeled hours → a SageMaker built-in XGBoost training set, streamed one hour at a time.

The split is by time: the last `validation_hours` of the window are validation, never a random
split (a random split leaks the future into training). Categorical vocabularies are learned on
the training hours only and stored in the manifest, so the REST API encodes requests the same way.

Layout below `<prefix>/training_sets/<set_id>/`:
    train/part-<hour>.csv, validation/part-<hour>.csv   label in column 0, no header, numeric
    manifest.json                                       feature names, vocabularies, hours
    validation_rows.parquet                             impression_id, label, cost of validation
                                                        rows, in CSV order (for evaluation)
and `<prefix>/training_sets/latest.json` names the newest set.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson
import pyarrow as pa

from clicklake.platform.features import CATEGORICAL, FEATURE_NAMES, build_vocabulary, encode
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import hour_partition_key, parse_hour_partition_key, to_datetime
from clicklake.platform.training.csvformat import write_sagemaker_csv
from clicklake.platform.training.manifest import FeatureManifest

MIN_CATEGORY_COUNT = 5  # rarer values encode as "other" (code 0): too few rows to learn from


@dataclass(frozen=True)
class TrainingSet:
    set_id: str
    root: str  # key prefix of the set below the store root
    manifest: FeatureManifest
    stats: dict[str, int]

    @property
    def train_prefix(self) -> str:
        return f"{self.root}/train/"

    @property
    def validation_prefix(self) -> str:
        return f"{self.root}/validation/"

    @property
    def train_base_rate(self) -> float:
        rows = self.stats.get("train_rows", 0)
        return self.stats.get("train_clicks", 0) / rows if rows else float("nan")


def set_root(set_id: str, prefix: str = "lake") -> str:
    return f"{prefix}/training_sets/{set_id}"


def _matrix(table: pa.Table, vocabularies: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    features = {name: table[name].to_numpy(zero_copy_only=False) for name in FEATURE_NAMES}
    return table["label"].to_numpy().astype(np.float64), encode(features, vocabularies)


def build_training_set(
    store: Store,
    hours: list[int],
    validation_hours: int,
    read_hour: Callable[[int, list[str] | None], pa.Table],
    label_window_s: int,
    prefix: str = "lake",
    set_id: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[TrainingSet, dict[str, int]]:
    """Write the training set of `hours` (ascending); `read_hour(hour_ms, columns)` reads one
    labeled hour. Memory holds one hour at a time."""
    if len(hours) < 2 or not 0 < validation_hours < len(hours):
        raise ValueError(
            f"need at least one training and one validation hour: {len(hours)} hours available, "
            f"{validation_hours} for validation"
        )
    hours = sorted(hours)
    train_h, valid_h = hours[:-validation_hours], hours[-validation_hours:]
    set_id = set_id or f"ts-{to_datetime(hours[-1]):%Y%m%dT%H}-{len(hours)}h"
    root = set_root(set_id, prefix)

    counts: dict[str, dict[str, int]] = {c: {} for c in CATEGORICAL}
    for h in train_h:
        part = read_hour(h, list(CATEGORICAL))
        for c in CATEGORICAL:
            values, n = np.unique(part[c].to_numpy(zero_copy_only=False).astype(str),
                                  return_counts=True)
            for v, k in zip(values, n, strict=True):
                counts[c][v] = counts[c].get(v, 0) + int(k)
    vocabularies = {c: build_vocabulary(
        [v for v, k in counts[c].items() if k >= MIN_CATEGORY_COUNT]) for c in CATEGORICAL}

    stats = {"train_rows": 0, "validation_rows": 0, "train_clicks": 0, "validation_clicks": 0}
    validation_rows: list[pa.Table] = []
    # A set rebuilt under the same id (same last hour and hour count, another split, an hour
    # filled in since) must not keep the parts of the earlier build: a stale validation part
    # would be a training hour, and would not match validation_rows.parquet. The manifest goes
    # first and comes back last: a build that dies in between leaves a set without one, which
    # `latest_training_set` refuses, not the old manifest over a mix of old and new parts.
    for key in (f"{root}/manifest.json", f"{root}/validation_rows.parquet"):
        if store.exists(key):
            store.delete(key)
    for split in ("train", "validation"):
        for key in store.list(f"{root}/{split}/"):
            store.delete(key)
    for h in hours:
        split = "validation" if h in valid_h else "train"
        table = read_hour(h, None)
        y, x = _matrix(table, vocabularies)
        # An hour without rows (a quiet hour, a gap in an imported log) writes no part: SageMaker's
        # XGBoost container reads every file's first line to find the delimiter, and an empty
        # file failed the training job ("Could not determine delimiter").
        if len(y):
            buf = io.BytesIO()
            write_sagemaker_csv([(y, x)], buf)
            store.write_bytes(
                f"{root}/{split}/part-{hour_partition_key(h).replace(':', '')}.csv",
                buf.getvalue())
        stats[f"{split}_rows"] += len(y)
        stats[f"{split}_clicks"] += int(y.sum())
        if split == "validation":
            validation_rows.append(table.select(["impression_id", "label", "cost"]))
        if progress:
            progress(f"{split} hour {hour_partition_key(h)}: {len(y)} rows")
    for split, part_hours in (("train", train_h), ("validation", valid_h)):
        if not stats[f"{split}_rows"]:
            raise ValueError(f"the {split} hours ({hour_partition_key(part_hours[0])} .. "
                             f"{hour_partition_key(part_hours[-1])}) hold no labeled rows: "
                             f"nothing to {'train' if split == 'train' else 'validate'} on")
    manifest = FeatureManifest(
        feature_names=list(FEATURE_NAMES),
        categorical=vocabularies,
        label_window_s=label_window_s,
        source_partitions=[hour_partition_key(h) for h in hours],
        train_hours=[hour_partition_key(h) for h in train_h],
        validation_hours=[hour_partition_key(h) for h in valid_h],
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        train_rows=stats["train_rows"],
        validation_rows=stats["validation_rows"],
        train_clicks=stats["train_clicks"],
        validation_clicks=stats["validation_clicks"],
    )
    store.write_parquet(f"{root}/validation_rows.parquet", pa.concat_tables(validation_rows))
    store.write_bytes(f"{root}/manifest.json", manifest.to_json())
    store.write_bytes(f"{prefix}/training_sets/latest.json",
                      orjson.dumps({"set_id": set_id, "root": root, "stats": stats}))
    return TrainingSet(set_id, root, manifest, stats), stats


def latest_training_set(store: Store, prefix: str = "lake") -> TrainingSet:
    key = f"{prefix}/training_sets/latest.json"
    if not store.exists(key):
        raise FileNotFoundError("no training set yet: materialize training_set first")
    pointer = orjson.loads(store.read_bytes(key))
    manifest_key = f"{pointer['root']}/manifest.json"
    if not store.exists(manifest_key):
        raise FileNotFoundError(f"training set {pointer['set_id']} has no manifest: its last "
                                "build did not finish; materialize training_set again")
    manifest = FeatureManifest.from_json(store.read_bytes(manifest_key))
    # The counts come from the manifest, written last with the parts: a rebuild under the same
    # id that died before the pointer left the previous build's counts there (another base
    # rate, so another model).
    stats = {"train_rows": manifest.train_rows, "validation_rows": manifest.validation_rows,
             "train_clicks": manifest.train_clicks,
             "validation_clicks": manifest.validation_clicks}
    if manifest.train_clicks is None or manifest.validation_clicks is None:  # an older manifest
        held = pointer.get("stats", {})
        if any(held.get(k) != stats[k] for k in ("train_rows", "validation_rows")):
            raise FileNotFoundError(
                f"training set {pointer['set_id']}: its pointer's counts are not its manifest's "
                "(a rebuild died before the pointer); materialize training_set again")
        stats.update(train_clicks=held.get("train_clicks", 0),
                     validation_clicks=held.get("validation_clicks", 0))
    return TrainingSet(pointer["set_id"], pointer["root"], manifest, stats)


def validation_matrix(store: Store, ts: TrainingSet, vocabularies: dict[str, list[str]],
                      read_hour: Callable[[int, list[str] | None], pa.Table]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(labels, matrix) of the training set's validation hours encoded with `vocabularies` (another
    model's, to score it on the same rows), read back from the labeled hours."""
    parts = [_matrix(read_hour(parse_hour_partition_key(h), None), vocabularies)
             for h in ts.manifest.validation_hours]
    return (np.concatenate([y for y, _ in parts]),
            np.concatenate([x for _, x in parts]) if parts else np.empty((0, len(FEATURE_NAMES))))
