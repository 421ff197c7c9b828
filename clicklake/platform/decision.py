"""Serve or skip an impression: the rules behind `POST /v1/predict`, as pure functions.

An impression is skipped when any rule fires; every firing rule is reported, so a caller sees all
the reasons at once:

- `crawler_user_agent`: the user agent is a crawler (enrichment's `is_crawler`, crawlerdetect).
  Nobody clicks for a bot, so its impressions are wasted spend.
- `click_farm`: the user's history looks like a click farm. Either a click-through rate over the
  last 24 h of at least `farm_ctr_24h` with at least `farm_min_impressions_24h` impressions (the
  minimum keeps one lucky click on a new user from counting), or a burst of at least
  `farm_burst_impressions_1h` impressions in the 1 h sawtooth window (the complete previous hour
  plus the current one so far). Counts are the user's *raw* counts before the impression, not the
  smoothed CTR features, so the thresholds read as plain rates.
- `expected_value_below_cost`: probability × value_per_click < cost (USD). A missing cost is 0,
  which this rule never flags. The probability is the model's: of a click within the label window
  (15 min), so `value_per_click` is what such a click is worth (on the synthetic streams ~7 % of
  clicks come later; their value is not counted).

Defaults fit the synthetic streams: humans rarely pass 25 % CTR, and farms click 20-45 % of
what they see, so the 24 h rate rule catches them (most of a farm's impressions once it has 12).
The burst rule is a guard for bursts beyond the synthetic farms (~10 impressions an hour, at most
~45): at 60 it fires on no farm and on a handful of the heaviest human hours. Tune them for real
traffic with `DecisionPolicy(...)` or the `clicklake serve` flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

SERVE, SKIP = "serve", "skip"
CRAWLER_USER_AGENT = "crawler_user_agent"
CLICK_FARM = "click_farm"
EXPECTED_VALUE_BELOW_COST = "expected_value_below_cost"
REASON_CODES = (CRAWLER_USER_AGENT, CLICK_FARM, EXPECTED_VALUE_BELOW_COST)


@dataclass(frozen=True)
class DecisionPolicy:
    # USD a click within the label window is worth, when a request does not say
    default_value_per_click: float = 0.50
    farm_ctr_24h: float = 0.25
    farm_min_impressions_24h: int = 12
    farm_burst_impressions_1h: int = 60

    def __post_init__(self) -> None:
        if not (np.isfinite(self.default_value_per_click) and self.default_value_per_click >= 0):
            raise ValueError("default_value_per_click must be a finite number >= 0")
        if not 0.0 < self.farm_ctr_24h <= 1.0:
            raise ValueError("farm_ctr_24h must be in (0, 1]")
        if self.farm_min_impressions_24h < 1 or self.farm_burst_impressions_1h < 1:
            raise ValueError("impression thresholds must be >= 1")


@dataclass(frozen=True)
class Reason:
    code: str
    message: str


@dataclass(frozen=True)
class Decision:
    decision: str  # SERVE or SKIP
    reasons: tuple[Reason, ...]
    expected_value: float  # probability × value_per_click, USD
    value_per_click: float


@dataclass(frozen=True)
class UserActivity:
    """The raw counts the click-farm rule reads, as of just before the impression."""

    impressions_24h: float
    clicks_24h: float
    impressions_1h: float

    @classmethod
    def from_inputs(cls, inputs: Mapping[str, np.ndarray], row: int = 0) -> UserActivity:
        """From `features.INPUT_COLUMNS` (what an online source or the lake returns)."""
        return cls(float(inputs["user_impressions_24h"][row]),
                   float(inputs["user_clicks_24h"][row]),
                   float(inputs["user_impressions_1h"][row]))


def click_farm_reason(activity: UserActivity, policy: DecisionPolicy) -> Reason | None:
    imp, clk = activity.impressions_24h, activity.clicks_24h
    if imp >= policy.farm_min_impressions_24h and clk / imp >= policy.farm_ctr_24h:
        return Reason(CLICK_FARM, f"user clicked {clk:.0f} of {imp:.0f} impressions in 24 h "
                      f"(CTR {clk / imp:.1%} >= {policy.farm_ctr_24h:.1%})")
    if activity.impressions_1h >= policy.farm_burst_impressions_1h:
        return Reason(CLICK_FARM, f"impression burst: {activity.impressions_1h:.0f} impressions "
                      f"in the 1 h window (the previous hour and this one so far; >= "
                      f"{policy.farm_burst_impressions_1h})")
    return None


def decide(probability: float, *, is_crawler: bool, activity: UserActivity,
           cost: float | None = None, value_per_click: float | None = None,
           policy: DecisionPolicy = DecisionPolicy()) -> Decision:
    """Serve unless a rule fires (module docstring); reasons in `REASON_CODES` order."""
    vpc = policy.default_value_per_click if value_per_click is None else float(value_per_click)
    ev = float(probability) * vpc
    reasons: list[Reason] = []
    if is_crawler:
        reasons.append(Reason(CRAWLER_USER_AGENT, "the user agent is a crawler"))
    farm = click_farm_reason(activity, policy)
    if farm is not None:
        reasons.append(farm)
    if cost is not None and ev < cost:
        reasons.append(Reason(EXPECTED_VALUE_BELOW_COST,
                              # shortest exact forms: the rule compares exact floats, and
                              # rounding made "0.002100 < 0.0021"
                              f"expected value {ev!r} USD ({float(probability)!r} × {vpc!r}) "
                              f"< cost {float(cost)!r} USD"))
    return Decision(SKIP if reasons else SERVE, tuple(reasons), ev, vpc)
