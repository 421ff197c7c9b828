"""The model registry in the lake: artifacts, a champion pointer and an append-only history.

Layout below `<prefix>/models/` (a local folder or S3, through `Store`):

    <model_id>/model.tar.gz      the artifact, as SageMaker writes it
    <model_id>/manifest.json     the feature manifest it was trained with
    <model_id>/metrics.json      its validation metrics
    champion.json                {"model_id", "promoted_at", "previous"}: the model being served
    history/<ns>-<model_id>-<status>.json   one immutable event per registration/decision

History events are separate objects rather than one appended file, so writing one never rewrites
another (S3 has no append) and two writers cannot lose each other's events.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

import orjson

from clicklake.platform.storage import Store
from clicklake.platform.timeutil import iso
from clicklake.platform.training.artifact import ARTIFACT_NAME
from clicklake.platform.training.manifest import FeatureManifest

REGISTERED, PASSED, PROMOTED, REJECTED = "registered", "passed", "promoted", "rejected"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ModelRecord:
    model_id: str
    created_at: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    artifact_key: str = ""


def _root(prefix: str) -> str:
    return f"{prefix.strip('/')}/models" if prefix else "models"


def _key(prefix: str, model_id: str, name: str) -> str:
    return f"{_root(prefix)}/{model_id}/{name}"


def _dumps(obj: object) -> bytes:
    # NaN is not JSON: metrics that are undefined are stored as null.
    def clean(v: object) -> object:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return orjson.dumps(clean(obj), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def _metrics_from(raw: dict) -> dict[str, float]:
    return {k: (math.nan if v is None else float(v)) for k, v in raw.items()}


def _event(
    store: Store, prefix: str, model_id: str, status: str, reason: str, metrics: dict
) -> ModelRecord:
    now_ns = time.time_ns()
    record = ModelRecord(
        model_id=model_id,
        created_at=iso(now_ns // 1_000_000),
        status=status,
        metrics=metrics,
        reason=reason,
        artifact_key=_key(prefix, model_id, ARTIFACT_NAME),
    )
    key = f"{_root(prefix)}/history/{now_ns:020d}-{model_id}-{status}.json"
    store.write_bytes(key, _dumps(record.__dict__))
    return record


def artifact_key(model_id: str, prefix: str = "lake") -> str:
    """Key (below the store root) of a registered model's model.tar.gz."""
    return _key(prefix, model_id, ARTIFACT_NAME)


def register(
    store: Store,
    model_id: str,
    artifact: bytes,
    manifest: FeatureManifest,
    metrics: dict[str, float],
    prefix: str = "lake",
) -> ModelRecord:
    """Store a trained model with its manifest and metrics; it is not served until promoted."""
    if not _ID.match(model_id):
        raise ValueError(f"invalid model id {model_id!r}: letters, digits, '.', '_', '-'")
    if store.exists(_key(prefix, model_id, ARTIFACT_NAME)):
        raise ValueError(f"model {model_id!r} is already registered")
    # Artifact last: its presence is what marks a model as registered.
    store.write_bytes(_key(prefix, model_id, "manifest.json"), manifest.to_json())
    store.write_bytes(_key(prefix, model_id, "metrics.json"), _dumps(metrics))
    store.write_bytes(_key(prefix, model_id, ARTIFACT_NAME), artifact)
    return _event(store, prefix, model_id, REGISTERED, "", metrics)


def _require(store: Store, model_id: str, prefix: str) -> None:
    if not store.exists(_key(prefix, model_id, ARTIFACT_NAME)):
        raise KeyError(f"model {model_id!r} is not registered")


def metrics_of(store: Store, model_id: str, prefix: str = "lake") -> dict[str, float]:
    return _metrics_from(orjson.loads(store.read_bytes(_key(prefix, model_id, "metrics.json"))))


def manifest_of(store: Store, model_id: str, prefix: str = "lake") -> FeatureManifest:
    return FeatureManifest.from_json(store.read_bytes(_key(prefix, model_id, "manifest.json")))


def artifact_of(store: Store, model_id: str, prefix: str = "lake") -> bytes:
    return store.read_bytes(_key(prefix, model_id, ARTIFACT_NAME))


def promote(store: Store, model_id: str, prefix: str = "lake", reason: str = "",
            force: bool = False) -> ModelRecord:
    """Make `model_id` the champion (the pointer is one atomic write) and record it in history.
    A model whose latest record is a rejection is refused unless `force` (a manual override,
    with its `reason`); the champion promoted again is left as it is (its `previous` kept)."""
    _require(store, model_id, prefix)
    current = champion(store, prefix)
    if current is not None and current.model_id == model_id:
        # Promoted again (a rerun of the deployment): nothing changes, unless the run that
        # moved the pointer died before its history record, which is written now.
        if not any(r.model_id == model_id and r.status == PROMOTED
                   and r.created_at >= current.created_at for r in history(store, prefix)):
            _event(store, prefix, model_id, PROMOTED, reason, current.metrics)
        return current
    verdict = gate_verdict(store, model_id, prefix)
    if verdict is not None and verdict.status == REJECTED and not force:
        raise ValueError(f"model {model_id!r} was rejected ({verdict.reason}): promote it with "
                         "force=True to override")
    now = iso(time.time_ns() // 1_000_000)
    pointer = {
        "model_id": model_id,
        "promoted_at": now,
        "previous": current.model_id if current else None,
    }
    store.write_bytes(f"{_root(prefix)}/champion.json", _dumps(pointer))
    return _event(store, prefix, model_id, PROMOTED, reason, metrics_of(store, model_id, prefix))


def passed(store: Store, model_id: str, reason: str = "", prefix: str = "lake") -> ModelRecord:
    """Record that `model_id` passed the gate: the only models a deployment promotes."""
    _require(store, model_id, prefix)
    return _event(store, prefix, model_id, PASSED, reason, metrics_of(store, model_id, prefix))


def gate_verdict(store: Store, model_id: str, prefix: str = "lake") -> ModelRecord | None:
    """The model's latest gate verdict, a PASSED or REJECTED record (None: never gated, e.g.
    its run died between training and the gate). A manual promotion does not change it."""
    verdicts = [r for r in history(store, prefix)
                if r.model_id == model_id and r.status in (PASSED, REJECTED)]
    return verdicts[-1] if verdicts else None


def reject(store: Store, model_id: str, reason: str, prefix: str = "lake") -> ModelRecord:
    """Record that `model_id` failed the gate (it stays stored, for inspection)."""
    _require(store, model_id, prefix)
    return _event(store, prefix, model_id, REJECTED, reason, metrics_of(store, model_id, prefix))


def champion(store: Store, prefix: str = "lake") -> ModelRecord | None:
    """The model being served, or None before the first promotion."""
    key = f"{_root(prefix)}/champion.json"
    if not store.exists(key):
        return None
    pointer = orjson.loads(store.read_bytes(key))
    model_id = pointer["model_id"]
    return ModelRecord(
        model_id=model_id,
        created_at=pointer["promoted_at"],
        status=PROMOTED,
        metrics=metrics_of(store, model_id, prefix),
        artifact_key=_key(prefix, model_id, ARTIFACT_NAME),
    )


def model_ids(store: Store, prefix: str = "lake") -> list[str]:
    """Ids of the registered models: those with an artifact (what marks one registered)."""
    root = _root(prefix)
    out = []
    for key in store.list(f"{root}/"):
        model_id, _, name = key[len(root) + 1:].partition("/")
        if name == ARTIFACT_NAME:
            out.append(model_id)
    return out


def history(store: Store, prefix: str = "lake") -> list[ModelRecord]:
    """Every registration, promotion and rejection, oldest first."""
    out = []
    for key in store.list(f"{_root(prefix)}/history"):
        if not key.endswith(".json"):
            continue
        raw = orjson.loads(store.read_bytes(key))
        raw["metrics"] = _metrics_from(raw.get("metrics") or {})
        out.append(ModelRecord(**raw))
    return out
