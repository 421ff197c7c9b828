"""The model registry in the lake: register, promote, reject, champion and history, on a local
folder and on S3 (moto's server over real HTTP)."""

from __future__ import annotations

import math

import orjson
import pytest

from clicklake.platform.storage import S3Options, Store
from clicklake.platform.training import registry
from clicklake.platform.training.artifact import pack_model
from clicklake.platform.training.manifest import FeatureManifest

MANIFEST = FeatureManifest(feature_names=["a", "b"], categorical={"b": ["x", "y"]})


def _round_trip(store: Store) -> None:
    assert registry.champion(store) is None and registry.history(store) == []
    art1, art2 = pack_model(b"model-one"), pack_model(b"model-two")
    registry.register(store, "m1", art1, MANIFEST, {"auc": 0.71, "pr_auc": math.nan})
    registry.register(store, "m2", art2, MANIFEST, {"auc": 0.64})
    with pytest.raises(ValueError, match="already"):
        registry.register(store, "m1", art1, MANIFEST, {"auc": 0.71})
    assert registry.champion(store) is None  # registered is not served

    registry.promote(store, "m1")
    registry.reject(store, "m2", "AUC 0.6400 is below the floor 0.6500")
    champ = registry.champion(store)
    assert champ is not None and champ.model_id == "m1" and champ.metrics["auc"] == 0.71
    assert math.isnan(champ.metrics["pr_auc"])  # NaN survives the JSON round trip as null
    assert registry.artifact_of(store, "m1") == art1
    assert registry.manifest_of(store, "m2") == MANIFEST
    assert store.exists("lake/models/m1/model.tar.gz")
    assert store.exists("lake/models/m1/metrics.json")
    assert store.exists("lake/models/m1/manifest.json")
    assert sorted(registry.model_ids(store)) == ["m1", "m2"]  # not history/, not a bare file

    events = [(r.model_id, r.status, r.reason) for r in registry.history(store)]
    assert events == [
        ("m1", "registered", ""),
        ("m2", "registered", ""),
        ("m1", "promoted", ""),
        ("m2", "rejected", "AUC 0.6400 is below the floor 0.6500"),
    ]
    with pytest.raises(ValueError, match="rejected"):
        registry.promote(store, "m2")  # a gate's rejection stands unless overridden
    assert registry.champion(store).model_id == "m1"
    registry.promote(store, "m2", reason="manual override", force=True)
    assert registry.champion(store).model_id == "m2"
    assert registry.history(store)[-1].reason == "manual override"
    # the champion promoted again (a rerun of the deployment): it keeps its predecessor
    promoted = registry.champion(store)
    registry.promote(store, "m2")
    pointer = orjson.loads(store.read_bytes("lake/models/champion.json"))
    assert pointer["previous"] == "m1" and registry.champion(store) == promoted
    assert [r.status for r in registry.history(store)].count("promoted") == 2
    registry.promote(store, "m1")  # another champion since
    with pytest.raises(ValueError, match="rejected"):  # the override did not undo the verdict
        registry.promote(store, "m2")
    with pytest.raises(KeyError):
        registry.promote(store, "nope")
    with pytest.raises(ValueError):
        registry.register(store, "../escape", art1, MANIFEST, {})


def test_registry_on_local_folder(tmp_path):
    _round_trip(Store(str(tmp_path)))


def test_registry_on_s3(moto_endpoint, s3_bucket):
    _round_trip(
        Store(f"s3://{s3_bucket}/root", S3Options(endpoint_url=moto_endpoint, region="us-east-1"))
    )


def test_a_promotion_whose_history_record_was_lost_is_recorded_by_the_rerun(tmp_path,
                                                                            monkeypatch):
    """The pointer is written, then the history record: a run that died in between left the
    champion moved with no promotion in the (append-only) history, and its rerun, finding the
    champion already that model, wrote none."""
    store = Store(str(tmp_path))
    registry.register(store, "m1", pack_model(b"one"), MANIFEST, {"auc": 0.7})
    real = store.write_bytes

    def dies_after_the_pointer(key, data):
        if "/history/" in key and key.endswith("-promoted.json"):
            raise ConnectionError("the run died")
        return real(key, data)

    monkeypatch.setattr(store, "write_bytes", dies_after_the_pointer)
    with pytest.raises(ConnectionError):
        registry.promote(store, "m1")
    monkeypatch.setattr(store, "write_bytes", real)
    assert registry.champion(store).model_id == "m1"
    registry.promote(store, "m1")
    registry.promote(store, "m1")  # and once only
    assert [(r.model_id, r.status) for r in registry.history(store)] == [
        ("m1", "registered"), ("m1", "promoted")]
