"""Training engine: SageMaker CSV and manifest, metrics, in-process XGBoost, artifact, registry, gate."""

from clicklake.platform.training.artifact import load_booster, pack_model, unpack_model
from clicklake.platform.training.csvformat import (
    features_to_csv,
    read_sagemaker_csv,
    to_csv_bytes,
    write_sagemaker_csv,
)
from clicklake.platform.training.gate import GateResult, gate
from clicklake.platform.training.hyperparams import hyperparameters
from clicklake.platform.training.local import (
    feature_importance,
    predict,
    train_booster,
    train_local,
)
from clicklake.platform.training.manifest import FeatureManifest
from clicklake.platform.training.metrics import evaluate, spend_saved_at_click_retention
from clicklake.platform.training.registry import ModelRecord

__all__ = [
    "FeatureManifest",
    "GateResult",
    "ModelRecord",
    "evaluate",
    "feature_importance",
    "features_to_csv",
    "gate",
    "hyperparameters",
    "load_booster",
    "pack_model",
    "predict",
    "read_sagemaker_csv",
    "spend_saved_at_click_retention",
    "to_csv_bytes",
    "train_booster",
    "train_local",
    "unpack_model",
    "write_sagemaker_csv",
]
