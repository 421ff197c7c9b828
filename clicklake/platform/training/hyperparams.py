"""One hyperparameter set for both trainers, in SageMaker's form (every value a string).

The SageMaker job receives the dict as is; the in-process trainer turns the same strings into
`xgboost.train` arguments, so a model trained locally and one trained on SageMaker differ only by
the machine they ran on.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULTS: dict[str, str] = {
    "objective": "binary:logistic",
    "eval_metric": "auc,logloss",
    "num_round": "200",
    "max_depth": "6",
    "eta": "0.1",
    "subsample": "0.8",
    "colsample_bytree": "0.8",
    "min_child_weight": "5",
    "lambda": "1",
    "tree_method": "hist",
    "max_bin": "256",
    "seed": "7",
}

# Keys the SageMaker container handles itself rather than passing to the booster.
_ROUND_KEYS = {"num_round", "early_stopping_rounds"}
# Container-only settings that have no meaning in-process.
_UNSUPPORTED_LOCALLY = {
    "csv_weights",
    "_kfold",
    "_num_cv_round",
    "_tuning_objective_metric",
    "save_model_on_termination",
}


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def hyperparameters(base_score: float, **overrides: object) -> dict[str, str]:
    """The defaults with `base_score` set explicitly (the training base rate) and any overrides.

    base_score is always explicit: XGBoost >= 3.1 estimates and stores it differently from older
    builds when left unset, and an explicit value keeps the local and the SageMaker model equal.
    """
    if not 0.0 < base_score < 1.0:
        raise ValueError(f"base_score must be in (0, 1) for binary:logistic, got {base_score}")
    hp = dict(DEFAULTS)
    hp["base_score"] = _fmt(float(base_score))
    hp.update({k: _fmt(v) for k, v in overrides.items() if v is not None})
    return hp


def to_xgboost(hp: Mapping[str, str]) -> tuple[dict[str, object], int, int | None]:
    """SageMaker-form hyperparameters -> (xgboost params, num_round, early_stopping_rounds)."""
    unsupported = _UNSUPPORTED_LOCALLY & set(hp)
    if unsupported:
        raise ValueError(f"not supported by the in-process trainer: {sorted(unsupported)}")
    if "num_round" not in hp:
        raise ValueError("num_round is required (as for SageMaker's XGBoost)")
    if "base_score" not in hp:
        raise ValueError("base_score must be set explicitly")
    params: dict[str, object] = {k: v for k, v in hp.items() if k not in _ROUND_KEYS}
    if "eval_metric" in params:
        params["eval_metric"] = [
            m.strip() for m in str(params["eval_metric"]).split(",") if m.strip()
        ]
    esr = hp.get("early_stopping_rounds")
    return params, int(hp["num_round"]), int(esr) if esr else None
