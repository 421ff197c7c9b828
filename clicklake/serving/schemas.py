"""Request and response bodies of the REST API, with explicit limits on every field.

Unknown fields are refused (a typo such as `user_agnet` would otherwise silently change a
decision). Strings are length-capped and free of control characters; money is finite and
non-negative; `ts` is ISO-8601 (naive = UTC) or epoch milliseconds within a sane range.
"""

from __future__ import annotations

import ipaddress
import re
import time
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, field_validator

from clicklake.platform.timeutil import (
    MAX_CLOCK_SKEW_MS,
    bounded_instant,
    parse_bounded_instant,
)

MAX_FUTURE_MS = MAX_CLOCK_SKEW_MS  # clock skew tolerated between the caller and this server

# No control characters (C0, DEL, C1), line or paragraph separators, bidirectional marks,
# overrides and isolates, zero-width characters or byte order marks: ids end up in logs and in
# messages, where they could forge or hide text ("u1" and "u1" + zero-width space look alike).
_CONTROL_RANGES = ((0x00, 0x1F), (0x7F, 0x9F), (0x061C, 0x061C), (0x180E, 0x180E),
                   (0x200B, 0x200F), (0x2028, 0x2029), (0x202A, 0x202E), (0x2060, 0x2064),
                   (0x2066, 0x2069), (0xFEFF, 0xFEFF))
_CONTROL = re.compile("[" + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                                    for a, b in _CONTROL_RANGES) + "]")


def has_control_characters(value: str) -> bool:
    return _CONTROL.search(value) is not None


def _no_control(value: str) -> str:
    if has_control_characters(value):  # a plain message, not the character class's pattern
        raise ValueError("control characters (or invisible ones) are not allowed")
    return value


def _not_blank(value: str) -> str:
    if value.isspace():
        raise ValueError("blank")  # the raw layer refuses a blank id (missing_field)
    return value


Id = Annotated[StrictStr, Field(min_length=1, max_length=128), AfterValidator(_no_control),
               AfterValidator(_not_blank)]
Usd = Annotated[float, Field(ge=0, le=1_000_000, allow_inf_nan=False, strict=True)]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_ts(value: int | str, max_future_ms: int = MAX_FUTURE_MS, date_only: bool = True
             ) -> int:
    """Epoch ms from an int or a string (ISO-8601 or digits); ValueError with a message. A
    date alone is its midnight unless not `date_only`."""
    if isinstance(value, str):
        return parse_bounded_instant(value, max_future_ms, now_ms(), date_only=date_only)
    return bounded_instant(value, max_future_ms, now_ms())


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "user_id": "u0000042", "campaign_id": "cmp-0016", "ts": "2026-11-25T12:00:00Z",
        "domain": "news.example", "ip": "81.2.69.160",
        "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0 Safari/537.36",
        "cost": 0.004, "value_per_click": 0.5}]})

    user_id: Id
    campaign_id: Id
    impression_id: Id | None = None
    ts: int | str | None = Field(
        default=None, description="Impression time: ISO-8601 (naive = UTC) or epoch ms; "
        "default now. From 2000-01-01 to 5 minutes ahead of the server clock.")
    domain: Annotated[StrictStr, Field(max_length=253), AfterValidator(_no_control)] | None = None
    ip: Annotated[StrictStr, Field(max_length=45)] | None = Field(
        default=None, description="IPv4 or IPv6 address of the viewer (country lookup).")
    user_agent: Annotated[StrictStr, Field(max_length=2048),
                          AfterValidator(_no_control)] | None = None
    cost: Usd | None = Field(default=None, description="USD paid for this impression.")
    value_per_click: Usd | None = Field(
        default=None, description="USD a click within the label window (15 min) is worth: the "
        "model's probability is of such a click; default: the server's configured value.")

    @field_validator("impression_id", "domain", "ip", "user_agent", mode="before")
    @classmethod
    def _blank_is_absent(cls, v: object) -> object:
        # As the raw layer stores an optional field that is empty or blank: null. The features
        # then match the labeled rows' (a blank domain counted under its own empty segment,
        # the lake's impressions under "unknown").
        return None if isinstance(v, str) and (not v or v.isspace()) else v

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError("not an IPv4 or IPv6 address") from None
        if "%" in v:  # a scope id (fe80::1%eth0): a local interface's name, free text
            raise ValueError("an IPv6 scope id (%...) is not a viewer's address")
        return v  # as given: enrichment parses it the same way the lake path does

    @field_validator("ts", mode="before")
    @classmethod
    def _ts(cls, v: object) -> int | None:
        """One check for both forms, so an error names `ts` once with a plain message."""
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | str):
            # ValueError, not TypeError: pydantic turns only ValueError into a 422.
            raise ValueError("an ISO-8601 string or an integer of epoch milliseconds")  # noqa: TRY004
        # An impression's time, as the event contract reads one: no date alone for midnight
        # (a profile's ?as_of= may be a day, as `clicklake lookup --as-of` takes one).
        return parse_ts(v, date_only=False)

    def ts_ms(self) -> int:
        return now_ms() if self.ts is None else int(self.ts)


class ReasonOut(BaseModel):
    code: Literal["crawler_user_agent", "click_farm", "expected_value_below_cost"]
    message: str


class ModelOut(BaseModel):
    id: str = Field(description="Model id (its version: registry ids are unique and dated).")
    promoted_at: str
    backend: str


class PredictResponse(BaseModel):
    impression_id: str | None
    probability: float = Field(description="Click probability within the label window.")
    decision: Literal["serve", "skip"]
    reasons: list[ReasonOut]
    expected_value: float = Field(description="probability × value_per_click, USD.")
    value_per_click: float
    cost: float | None
    model: ModelOut
    ts: str = Field(description="The impression time used (ISO-8601 UTC).")
    features_as_of: str | None = Field(
        description="The feature source's watermark: events before it are in the features.")
    latency_ms: float = Field(description="Server time spent on this request.")


class ErrorOut(BaseModel):
    detail: str
    code: str | None = None
    errors: list[dict] | None = None


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    model: ModelOut | None
    source: str
    features_as_of: str | None
    model_error: str | None = None
    source_error: str | None = None  # the feature source cannot be read (e.g. a newer layout)
    # the source answers from a fallback: the lake's, while the online store is rebuilt
    source_notice: str | None = None


class CampaignCounts(BaseModel):
    impressions: int
    clicks: int


class ProfileOut(BaseModel):
    """A user's profile as of an instant: events with ts < as_of only."""

    model_config = ConfigDict(extra="allow")

    user_id: str
    as_of: str
    features_as_of: str | None
    source: Literal["online", "lake"]
    impressions: int | None = None
    clicks: int | None = None
    spend: float | None = None
    first_ts: str | None = None
    last_impression_ts: str | None = None
    last_click_ts: str | None = None
    campaigns: dict[str, CampaignCounts] | None = None
    domains: list[str] | None = None


def iso_or_none(value: datetime | int | None) -> str | None:
    from clicklake.platform.timeutil import iso

    if value is None:
        return None
    if isinstance(value, datetime):
        return iso(round(value.timestamp() * 1000))
    return iso(int(value))
