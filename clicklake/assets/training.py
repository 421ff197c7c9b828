"""Training assets: the SageMaker-format training set, the trained click model (gated by a
blocking check) and the deployed model."""

import math

import dagster as dg
import numpy as np
import pyarrow.compute as pc
from pydantic import Field

from clicklake.assets.labeled import LABELED_KEY, labeled_hours_available, read_labeled_hour
from clicklake.platform.labeled import META_LABEL_WINDOW, labeled_key
from clicklake.platform.labeling import DEFAULT_LABEL_WINDOW_MS
from clicklake.platform.timeutil import hour_partition_key
from clicklake.platform.training import (
    evaluate,
    feature_importance,
    gate,
    hyperparameters,
    registry,
)
from clicklake.platform.training.artifact import load_booster
from clicklake.platform.training.csvformat import read_sagemaker_csv
from clicklake.platform.training.local import predict
from clicklake.platform.training.metrics import auc
from clicklake.platform.training_set import (
    build_training_set,
    latest_training_set,
    validation_matrix,
)
from clicklake.resources.endpoint import ModelEndpointResource
from clicklake.resources.lake import LakeResource
from clicklake.resources.trainer import TrainerResource


class TrainingSetConfig(dg.Config):
    window_hours: int = Field(default=24, ge=2, description="The latest labeled hours used.")
    validation_hours: int = Field(
        default=4, ge=1, description="The last of them held out for validation: at most a "
        "quarter of the hours used, and at least one (the run's log says when fewer are held "
        "out than asked).")


@dg.asset(
    # One of training_set and click_model at a time: a set rebuilt under its id while a model
    # read it mixed two sets' hours (it validated on hours it trained on).
    pool="training",
    deps=[LABELED_KEY],
    group_name="training",
    kinds={"csv", "s3"},
    description="The latest labeled hours as SageMaker built-in XGBoost CSV (label first, no header,"
    " numeric), split by time — the last hours are validation — plus the feature manifest.",
)
def training_set(context: dg.AssetExecutionContext, config: TrainingSetConfig, lake: LakeResource):
    store = lake.store()
    hours = labeled_hours_available(store, lake.lake_prefix, last=config.window_hours)
    validation = min(config.validation_hours, max(1, len(hours) // 4))
    if validation < config.validation_hours:
        context.log.warning(f"{validation} validation hours of the {config.validation_hours} "
                            f"asked: a quarter of the {len(hours)} labeled hours, at least one")
    try:
        ts, stats = build_training_set(
            store, hours, validation,
            read_hour=lambda h, cols: read_labeled_hour(store, h, cols, lake.lake_prefix),
            label_window_s=_one_label_window_s(store, lake.lake_prefix, hours) if hours
            else DEFAULT_LABEL_WINDOW_MS // 1000,
            prefix=lake.lake_prefix, progress=context.log.info,
        )
    except ValueError as exc:  # too few hours, or a split without rows: said, not a traceback
        raise dg.Failure(f"no training set: {exc}") from None
    return dg.MaterializeResult(metadata={
        "set_id": ts.set_id,
        "path": dg.MetadataValue.path(store.uri(ts.root)),
        "train_hours": f"{ts.manifest.train_hours[0]} .. {ts.manifest.train_hours[-1]}",
        "validation_hours": f"{ts.manifest.validation_hours[0]} .. {ts.manifest.validation_hours[-1]}",
        "features": len(ts.manifest.feature_names),
        "vocabulary_sizes": {k: len(v) for k, v in ts.manifest.categorical.items()},
        **stats,
        "dagster/row_count": stats["train_rows"] + stats["validation_rows"],
    })


def _label_window_s(store, prefix: str, hour_ms: int) -> int:
    """The label window the hour was built with (its Parquet footer, not its rows)."""
    meta = store.parquet_file(labeled_key(hour_ms, prefix)).schema_arrow.metadata or {}
    return int(meta.get(META_LABEL_WINDOW, DEFAULT_LABEL_WINDOW_MS)) // 1000


def _one_label_window_s(store, prefix: str, hours: list[int]) -> int:
    """The label window all `hours` were built with; a Failure naming them when they differ
    (a model would learn two definitions of a click under one manifest)."""
    by_window: dict[int, list[int]] = {}
    for h in hours:
        by_window.setdefault(_label_window_s(store, prefix, h), []).append(h)
    if len(by_window) > 1:
        said = "; ".join(f"{w // 60} min: {', '.join(hour_partition_key(h) for h in hs[:4])}"
                         + (f" and {len(hs) - 4} more" if len(hs) > 4 else "")
                         for w, hs in sorted(by_window.items()))
        raise dg.Failure(f"the labeled hours were built with different label windows ({said}): "
                         "rematerialize the odd ones with the deployment's "
                         "CLICKLAKE_LABEL_WINDOW_MINUTES")
    return next(iter(by_window))


class ClickModelConfig(dg.Config):
    # Shallow trees, more rounds: clicks are rare and noisy, deep trees overfit them.
    num_round: int = 400
    max_depth: int = 4
    eta: float = 0.05
    min_child_weight: float = 20
    auc_floor: float = 0.6
    champion_tolerance: float = 0.01


@dg.asset(
    # with training_set (see there)
    pool="training",
    deps=[training_set],
    group_name="training",
    kinds={"xgboost"},
    description="An XGBoost click model trained on the latest training set by the trainer resource"
    " (in-process by default, a SageMaker training job on AWS), registered in the lake's model"
    " registry with its validation metrics.",
    check_specs=[dg.AssetCheckSpec(
        "model_gate", asset="click_model", blocking=True,
        description="AUC above the floor and not worse than the champion's by more than the"
        " tolerance; a failing model is never deployed.")],
)
def click_model(context: dg.AssetExecutionContext, config: ClickModelConfig, lake: LakeResource,
                trainer: TrainerResource):
    store = lake.store()
    ts = latest_training_set(store, lake.lake_prefix)
    if not 0.0 < ts.train_base_rate < 1.0:
        raise dg.Failure(f"training set {ts.set_id} has {ts.stats.get('train_clicks', '?')} "
                         f"clicks in {ts.stats.get('train_rows', '?')} training rows: a click "
                         "model needs rows of both kinds (more hours or more users)")
    hp = hyperparameters(ts.train_base_rate, num_round=config.num_round,
                         max_depth=config.max_depth, eta=config.eta,
                         min_child_weight=config.min_child_weight)
    context.log.info(f"training on {ts.set_id}: {ts.stats}")
    result = trainer.train(
        store.uri(ts.train_prefix), store.uri(ts.validation_prefix),
        store.uri(f"{lake.lake_prefix}/training_jobs"), hp,
    )
    booster = load_booster(result.artifact)
    val_keys = store.list(ts.validation_prefix)
    y, x = read_sagemaker_csv([store.read_bytes(k) for k in val_keys], ts.manifest.n_features)
    p = predict(booster, x)
    rows = store.read_parquet(f"{ts.root}/validation_rows.parquet")
    cost = rows["cost"].to_numpy(zero_copy_only=False).astype(np.float64)
    metrics = evaluate(y, p, cost, _oracle(store, rows))
    metrics["train_seconds"] = result.seconds
    metrics["train_rows_per_s"] = ts.stats["train_rows"] / result.seconds if result.seconds else 0.0
    model_id = result.job_name
    registry.register(store, model_id, result.artifact, ts.manifest, metrics, lake.lake_prefix)
    importance = feature_importance(booster, ts.manifest.feature_names)
    top = dict(sorted(importance.items(), key=lambda kv: -kv[1])[:15])
    yield dg.MaterializeResult(metadata={
        "model_id": model_id,
        "training_set": ts.set_id,
        "artifact": dg.MetadataValue.path(store.uri(registry.artifact_key(model_id, lake.lake_prefix))),
        **{k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))},
        "feature_importance_gain": top,
        "hyperparameters": hp,
    })
    champ = registry.champion(store, lake.lake_prefix)
    champion_auc = _champion_auc(context, store, lake.lake_prefix, champ, ts, y, x)
    verdict = gate(metrics, None if champ is None else {"auc": champion_auc}, config.auc_floor,
                   config.champion_tolerance)
    if verdict.passed:
        registry.passed(store, model_id, "model_gate", lake.lake_prefix)
    else:
        registry.reject(store, model_id, "; ".join(verdict.reasons), lake.lake_prefix)
    yield dg.AssetCheckResult(
        check_name="model_gate", passed=verdict.passed,
        description="; ".join(verdict.reasons) or "passed",
        metadata={"auc": metrics["auc"], "auc_floor": config.auc_floor,
                  "champion": champ.model_id if champ else "none",
                  "champion_auc": champion_auc if champ else float("nan"),
                  "champion_auc_recorded": (champ.metrics.get("auc", float("nan")) if champ
                                            else float("nan"))},
    )


def _champion_auc(context, store, prefix: str, champ, ts, y: np.ndarray, x: np.ndarray) -> float:
    """The champion's AUC on this training set's validation rows, so the gate compares both
    models on the same rows: its recorded AUC was measured on older hours, which may have been
    easier or harder. The recorded one when it cannot be scored here (it reads features this
    version no longer computes, or its artifact is gone)."""
    if champ is None:
        return float("nan")
    recorded = float(champ.metrics.get("auc", float("nan")))
    try:
        manifest = registry.manifest_of(store, champ.model_id, prefix)
        if manifest.feature_names != ts.manifest.feature_names:
            context.log.warning(f"champion {champ.model_id} reads other features: the gate uses "
                                f"its recorded AUC {recorded:.4f}")
            return recorded
        booster = load_booster(registry.artifact_of(store, champ.model_id, prefix))
    except Exception as exc:  # noqa: BLE001 - gone, truncated or of another layout: the
        # challenger is already registered, and must get its verdict all the same
        context.log.warning(f"champion {champ.model_id} cannot be scored ("
                            f"{type(exc).__name__}: {exc}): the gate uses its recorded AUC "
                            f"{recorded:.4f}")
        return recorded
    seen = sorted(set(manifest.train_hours) & set(ts.manifest.validation_hours))
    if seen:
        # The split moved back (more validation hours asked, a labeled hour removed): scored
        # on rows it trained on, the champion looks far better than it is, and a good model
        # was rejected against that in-sample AUC.
        context.log.warning(f"champion {champ.model_id} trained on {len(seen)} of these "
                            f"validation hours ({seen[0]} .. {seen[-1]}): the gate uses its "
                            f"recorded AUC {recorded:.4f}")
        return recorded
    if manifest.categorical != ts.manifest.categorical:  # its own codes for the categoricals
        try:
            y_again, x = validation_matrix(
                store, ts, manifest.categorical,
                lambda h, cols: read_labeled_hour(store, h, cols, prefix))
        except (FileNotFoundError, KeyError):  # a validation hour removed since
            y_again = None
        if y_again is None or not np.array_equal(y_again, y):
            # a validation hour was rebuilt (or removed) since the training set was made
            context.log.warning(f"the validation hours changed since the training set was "
                                f"made: the gate uses the champion's recorded AUC {recorded:.4f}")
            return recorded
    value = auc(y, predict(booster, x))
    context.log.info(f"champion {champ.model_id}: AUC {value:.4f} on these validation rows "
                     f"(recorded {recorded:.4f})")
    return value


def _oracle(store, rows):
    """The generator's true click probabilities for the validation rows (synthetic data only)."""
    from clicklake.platform.simulate import read_truth

    truth = read_truth(store)
    if truth.num_rows == 0:
        return None
    ids = truth["impression_id"].combine_chunks()
    if pc.count_distinct(ids).as_py() != len(ids):
        return None  # runs that repeated ids: which impression's probability is unknown
    at = pc.index_in(rows["impression_id"], value_set=ids)
    if at.null_count:
        return None  # not (all) generated by us: no oracle
    return truth["p_click"].take(at).to_numpy().astype(np.float64)


@dg.asset(
    deps=[click_model],
    group_name="training",
    kinds={"xgboost"},
    description="The model the REST API serves: the click model trained in the same run (else"
    " the newest), once it has passed its gate, deployed by the endpoint resource and promoted to champion in the lake's registry."
    " A newest model that failed its gate is not deployed (the run fails, naming the reason):"
    " the champion before it keeps serving.",
)
def deployed_model(context: dg.AssetExecutionContext, lake: LakeResource,
                   endpoint: ModelEndpointResource):
    store = lake.store()
    model_id = _model_to_deploy(context)
    verdict = registry.gate_verdict(store, model_id, lake.lake_prefix)
    if verdict is None:  # its click_model run died between training and the gate
        raise dg.Failure(f"model {model_id} has no gate verdict (its click_model run did not "
                         "reach model_gate): materialize click_model again")
    if verdict.status != registry.PASSED:
        raise dg.Failure(f"model {model_id} failed its gate: {verdict.reason}")
    # Deployed first, promoted once it serves: the REST API follows the champion and encodes
    # with its vocabularies, so a deploy that fails (or is still rolling out) must not move it.
    deployment = endpoint.deploy(store, model_id, lake.lake_prefix)
    record = registry.promote(store, model_id, lake.lake_prefix, reason="passed model_gate")
    return dg.MaterializeResult(metadata={
        "model_id": model_id, "target": deployment.target, "promoted_at": record.created_at,
        "auc": record.metrics.get("auc", float("nan")), **{k: str(v) for k, v in deployment.details.items()},
    })


def _model_to_deploy(context: dg.AssetExecutionContext) -> str:
    """The click model this run trained when it trained one, else the latest materialized: a
    click_model run landing between this run's gate and its deploy must not have its model
    deployed under this run's verdict, nor this run's gated model skipped."""
    key = dg.AssetKey("click_model")
    ours = [e.asset_materialization for e in context.instance.all_logs(
        context.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        if e.asset_materialization is not None and e.asset_materialization.asset_key == key]
    if ours:
        return ours[-1].metadata["model_id"].value
    event = context.instance.get_latest_materialization_event(key)
    if event is None:
        raise dg.Failure("click_model has never been materialized")
    return event.asset_materialization.metadata["model_id"].value


training_assets = [training_set, click_model, deployed_model]
