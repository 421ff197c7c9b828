"""The model the API scores with: the registry's champion (what `deployed_model` promoted).

Loaded once, with its feature manifest, into an immutable `LoadedModel`; `ModelSlot.refresh()`
re-reads the champion pointer (one small object) and swaps in the new model when the champion
changed. Requests read `slot.current` once, so a swap never mixes two models in one answer.

Backends: the in-process booster (what `LocalModelServer` loads; default) or the SageMaker endpoint the
`deployed_model` asset updates (sagemaker-runtime `invoke_endpoint`, text/csv). Either way the
manifest (feature order, categorical vocabularies) comes from the registry, so a request is
encoded exactly as the training CSV was. The endpoint's answer names the variant, so the model,
that computed it: one of another model than the request was encoded for (a deploy under way or
failed) is refused, and `ModelSlot.follow` loads that model.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from clicklake.platform.features import CATEGORICAL, FEATURE_NAMES, vocabulary_codes
from clicklake.platform.storage import Store
from clicklake.platform.training import registry
from clicklake.platform.training.artifact import load_booster
from clicklake.platform.training.manifest import FeatureManifest
from clicklake.resources.endpoint import SageMakerEndpoint, invoke_scores, variant_name


@dataclass(frozen=True)
class LoadedModel:
    model_id: str
    promoted_at: str
    backend: str  # "local" or "sagemaker:<endpoint name>"
    manifest: FeatureManifest
    columns: np.ndarray  # position in FEATURE_NAMES of each manifest feature, in manifest order
    predict_rows: Callable[[np.ndarray], np.ndarray]

    codes: dict[str, dict[str, int]]  # categorical -> value -> code, from features.vocabulary_codes

    @property
    def vocabularies(self) -> dict[str, list[str]]:
        return self.manifest.categorical

    def encode_one(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """`features.encode` for a single row, with the vocabularies turned into dicts once at
        load time (encode builds numpy string arrays per call: most of a request's encode cost).
        Equal to `encode(features, self.vocabularies)`: the codes come from `vocabulary_codes`."""
        row = np.empty((1, len(FEATURE_NAMES)), dtype=np.float64)
        for j, name in enumerate(FEATURE_NAMES):
            table = self.codes.get(name)
            if table is None and name in CATEGORICAL:
                table = {}
            if table is None:
                row[0, j] = features[name][0]
            else:
                row[0, j] = table.get(str(features[name][0]), 0)
        return row

    def predict(self, encoded: np.ndarray) -> np.ndarray:
        """Scores for rows encoded over `features.FEATURE_NAMES` (as `features.encode` makes)."""
        return self.predict_rows(encoded[:, self.columns])


def _codes(manifest: FeatureManifest) -> dict[str, dict[str, int]]:
    return {name: dict(zip(map(str, voc), vocabulary_codes(voc, voc).tolist(), strict=True))
            for name, voc in manifest.categorical.items() if name in CATEGORICAL}


def _columns(manifest: FeatureManifest) -> np.ndarray:
    unknown = [n for n in manifest.feature_names if n not in FEATURE_NAMES]
    if unknown:
        raise ValueError(f"the model needs features this code does not compute: {unknown}")
    return np.array([FEATURE_NAMES.index(n) for n in manifest.feature_names], dtype=np.int64)


def _score_rows(booster, rows: np.ndarray) -> np.ndarray:
    """`training.local.predict` without the per-call feature-name check: rows are put in the
    manifest's order by `LoadedModel.columns` and SageMaker-trained boosters carry no names, so
    the check only costs time (about 45 % of a one-row prediction, measured). Same scores."""
    x = np.asarray(rows, dtype=np.float32)
    return booster.inplace_predict(x, missing=np.nan, validate_features=False).astype(np.float64)


class BoosterScorer:
    """`_score_rows`, with a single row scored through the C function `inplace_predict` itself
    calls (`XGBoosterPredictFromDense`, same arguments, so the same float32 score), everything
    but the row's values prepared once: the row buffer and its array interface, the JSON
    arguments, and a proxy DMatrix. Given no proxy, XGBoost makes one per call and configures it
    by reading the cgroup CPU quota from /sys (eleven system calls); with the Python wrapper's
    own work that was ~80 us of a ~100 us one-row prediction (measured). Several rows, or an
    XGBoost whose internals moved, take `_score_rows`."""

    def __init__(self, booster):
        self.booster = booster
        self._lock = threading.Lock()  # one row buffer; requests score on one thread anyway
        self._call: Callable[[], float] | None = None
        try:
            self._call = self._prepare(booster)
        except (ImportError, AttributeError):  # an XGBoost without these internals
            self._call = None

    def _prepare(self, booster) -> Callable[[], float]:
        import ctypes

        from xgboost._data_utils import array_interface
        from xgboost.core import _LIB, _check_call, _ProxyDMatrix, c_bst_ulong, make_jcargs

        self._row = np.zeros((1, booster.num_features()), dtype=np.float32)
        self._proxy = _ProxyDMatrix()  # kept alive with the buffer it is handed
        interface = array_interface(self._row)
        args = make_jcargs(type=0, training=False, iteration_begin=0, iteration_end=0,
                           missing=np.nan, strict_shape=False, cache_id=0)
        shape, dims = ctypes.POINTER(c_bst_ulong)(), c_bst_ulong()
        preds = ctypes.POINTER(ctypes.c_float)()
        call = partial(_LIB.XGBoosterPredictFromDense, booster.handle, interface, args,
                       self._proxy.handle, ctypes.byref(shape), ctypes.byref(dims),
                       ctypes.byref(preds))

        def score() -> float:
            _check_call(call())
            if dims.value != 1 or shape[0] != 1:
                raise RuntimeError(f"one score expected, got shape {shape[:dims.value]}")
            return preds[0]  # the float32 score, exactly, as a Python float

        return score

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if self._call is None or rows.shape != self._row.shape:
            return _score_rows(self.booster, rows)
        with self._lock:
            self._row[...] = rows  # the float64 -> float32 cast np.asarray makes above
            return np.array([self._call()], dtype=np.float64)


ENDPOINT_CONNECT_TIMEOUT_S, ENDPOINT_READ_TIMEOUT_S = 2.0, 5.0


def _runtime_client(endpoint: SageMakerEndpoint):
    from botocore.config import Config

    # A request waits for this call: botocore's defaults (60 s timeouts, 5 attempts) would
    # hold it for minutes when the endpoint hangs. One retry, then the API answers 503.
    return endpoint._client("sagemaker-runtime", config=Config(
        connect_timeout=ENDPOINT_CONNECT_TIMEOUT_S, read_timeout=ENDPOINT_READ_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": 2}))


class SageMakerScorer:
    """Scores through a SageMaker endpoint with one long-lived sagemaker-runtime client (creating
    a boto3 client costs milliseconds, too much to pay per request). `variant`: the production
    variant of the model the rows are encoded for; an answer from another variant raises
    `ServedByAnotherModel` rather than giving scores computed with other vocabularies."""

    def __init__(self, endpoint: SageMakerEndpoint, variant: str | None = None, client=None):
        self.endpoint, self.variant = endpoint, variant
        self._client = client if client is not None else _runtime_client(endpoint)

    def for_model(self, model_id: str) -> SageMakerScorer:
        """A scorer of `model_id`'s rows, over this one's client (shared by every model)."""
        return SageMakerScorer(self.endpoint, variant_name(model_id), self._client)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return invoke_scores(self._client, self.endpoint.endpoint_name, rows, self.variant)


class NoModelOfVariant(LookupError):
    """The endpoint answers from a variant no registered model is deployed as."""


RELIST_EVERY_S = 10.0  # an unknown variant lists the registry at most this often


class ModelSlot:
    """Holds the current champion; `refresh()` follows the registry's pointer. On SageMaker,
    `follow(variant)` loads the model the endpoint answers from instead, when that differs (a
    deploy under way or failed): requests are encoded for the model that scores them."""

    def __init__(self, store: Store, lake_prefix: str = "lake",
                 sagemaker: SageMakerEndpoint | None = None):
        self.store, self.lake_prefix, self.sagemaker = store, lake_prefix, sagemaker
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self._scorer = SageMakerScorer(sagemaker) if sagemaker is not None else None
        self._lock = threading.Lock()
        # The champion `follow` left for the model the endpoint serves: `refresh` leaves it
        # be, rather than loading it back every check until the endpoint serves it.
        self._passed_over: str | None = None
        self._variants: dict[str, str] = {}  # variant -> registered model id, as last listed
        self._listed_at = -RELIST_EVERY_S

    @property
    def backend(self) -> str:
        return "local" if self.sagemaker is None else f"sagemaker:{self.sagemaker.endpoint_name}"

    def load(self, model_id: str, promoted_at: str = "") -> LoadedModel:
        manifest = registry.manifest_of(self.store, model_id, self.lake_prefix)
        columns = _columns(manifest)
        if self._scorer is not None:
            predict_rows = self._scorer.for_model(model_id)
        else:
            # The same booster LocalModelServer loads, but single-threaded: for one row, OpenMP
            # threads are pure overhead, and on a busy CPU a barrier waiting for a descheduled
            # sibling thread stalled requests by tens of milliseconds (measured).
            booster = load_booster(registry.artifact_of(self.store, model_id, self.lake_prefix))
            booster.set_param({"nthread": 1})
            predict_rows = BoosterScorer(booster)
        return LoadedModel(model_id, promoted_at, self.backend, manifest, columns, predict_rows,
                           _codes(manifest))

    def refresh(self) -> bool:
        """Load the champion when it differs from the current model; returns whether it changed.
        A champion that fails to load leaves the current model serving (and sets `last_error`)."""
        with self._lock:
            try:
                champ = registry.champion(self.store, self.lake_prefix)
                current = self.current
                loaded = current.model_id if current is not None else None
                if champ is not None and champ.model_id == loaded != self._passed_over and (
                        current.promoted_at != champ.created_at):
                    # followed on the endpoint before its promotion (deploy, then promote):
                    # the same model, now with its promotion
                    self.current = dataclasses.replace(current, promoted_at=champ.created_at)
                    self._passed_over, self.last_error = None, None
                    return True
                if champ is None or champ.model_id in (loaded, self._passed_over):
                    self.last_error = None
                    return False
                self.current = self.load(champ.model_id, champ.created_at)
                self._passed_over = None
                self.last_error = None
                return True
            except Exception as exc:  # noqa: BLE001 - keep serving the model we have
                self.last_error = f"{type(exc).__name__}: {exc}"
                return False

    def follow(self, variant: str) -> LoadedModel:
        """Load, as `current`, the registered model deployed as `variant` (the one the endpoint
        answered from), and return it: the champion, else any model of the registry.
        `NoModelOfVariant` when none is."""
        with self._lock:
            current = self.current
            if current is not None and variant_name(current.model_id) == variant:
                return current  # another request followed it first
            champ = registry.champion(self.store, self.lake_prefix)
            if champ is not None and variant_name(champ.model_id) == variant:
                self.current, self._passed_over = self.load(champ.model_id, champ.created_at), None
                return self.current
            model_id = self._model_of(variant)
            # Not the champion: promoted_at unknown (the history would have to be read whole).
            self.current = self.load(model_id)
            self._passed_over = champ.model_id if champ is not None else None
            return self.current

    def _model_of(self, variant: str) -> str:
        """The registered model deployed as `variant`; the registry is listed again on a miss
        (a model registered since), at most every `RELIST_EVERY_S` (requests wait on the lock)."""
        if variant not in self._variants and time.monotonic() - self._listed_at >= RELIST_EVERY_S:
            self._variants = {variant_name(m): m
                              for m in registry.model_ids(self.store, self.lake_prefix)}
            self._listed_at = time.monotonic()
        if variant not in self._variants:
            raise NoModelOfVariant(f"the endpoint serves variant {variant!r}, which no model of "
                                   "the registry is deployed as")
        return self._variants[variant]

