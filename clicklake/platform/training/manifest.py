"""The feature manifest: what a training set's CSV columns mean, stored beside the CSV and the model.

SageMaker's CSV is numeric and headerless, so the manifest is the only place that says which
feature sits in which column and how categorical values were encoded; the REST API encodes requests
with the same vocabularies, so training and serving agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import orjson

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class FeatureManifest:
    feature_names: list[str]
    categorical: dict[str, list[str]] = field(default_factory=dict)
    label_window_s: int = 900
    source_partitions: list[str] = field(default_factory=list)
    train_hours: list[str] = field(default_factory=list)
    validation_hours: list[str] = field(default_factory=list)
    created_at: str = ""  # ISO-8601 UTC
    train_rows: int = 0
    validation_rows: int = 0
    # None in a manifest written before they were recorded here (its pointer held them).
    train_clicks: int | None = None
    validation_clicks: int | None = None
    version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError("feature names must be unique")
        unknown = set(self.categorical) - set(self.feature_names)
        if unknown:
            raise ValueError(f"vocabularies for unknown features: {sorted(unknown)}")

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes | str) -> FeatureManifest:
        raw = orjson.loads(data)
        version = raw.get("version", MANIFEST_VERSION)
        if version > MANIFEST_VERSION:
            raise ValueError(
                f"manifest version {version} is newer than this code ({MANIFEST_VERSION})"
            )
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})
