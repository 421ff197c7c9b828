"""The promotion rule: a model passes when its AUC clears a floor and is not worse than the
champion's by more than a tolerance."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed; empty when it passed


def gate(
    metrics: Mapping[str, float],
    champion_metrics: Mapping[str, float] | None,
    auc_floor: float,
    tolerance: float,
) -> GateResult:
    """Apply the rule to validation metrics (`auc` key); `champion_metrics` None = no champion."""
    reasons: list[str] = []
    value = metrics.get("auc")
    if value is None or math.isnan(float(value)):
        return GateResult(False, ["AUC is undefined (validation set lacks one of the classes)"])
    value = float(value)
    if value < auc_floor:
        reasons.append(f"AUC {value:.4f} is below the floor {auc_floor:.4f}")
    champ = None if champion_metrics is None else champion_metrics.get("auc")
    if champ is not None and not math.isnan(float(champ)) and value < float(champ) - tolerance:
        reasons.append(
            f"AUC {value:.4f} is worse than the champion's {float(champ):.4f} "
            f"by more than {tolerance:.4f}"
        )
    return GateResult(not reasons, reasons)
