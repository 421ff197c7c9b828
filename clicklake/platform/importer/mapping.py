"""The column mapping of a user's log: which source columns become which event fields.

One mapping is built from a small YAML file, from command-line flags, or both (flags win), through
the same `mapping_from_dict`, so the two forms cannot drift apart. Keys of the YAML file are the
flag names with underscores (`--time-format` ↔ `time_format`); the clicks table of a two-table log
lives under a `clicks:` section.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields
from decimal import ROUND_FLOOR, Decimal, InvalidOperation, localcontext
from typing import Any

import yaml

# Named formats; anything containing "%" is taken as a strptime pattern (naive means UTC).
TIME_FORMATS = ("iso", "epoch_s", "epoch_ms", "yymmddhh")
DEFAULT_CLICK_DELAY_S = 30.0


class MappingError(ValueError):
    """A mapping that cannot be used; the message says what to fix."""


def _columns(value: Any, key: str) -> tuple[str, ...]:
    """One column, a comma-separated list, or a YAML list → a tuple of column names."""
    if value is None:
        return ()
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, list | tuple):
        parts = [str(p).strip() for p in value]
    else:
        raise MappingError(f"{key}: expected a column name or a list of names, got {value!r}")
    if not parts or any(not p for p in parts):
        raise MappingError(f"{key}: empty column name in {value!r}")
    return tuple(parts)


def _column(value: Any, key: str) -> str | None:
    cols = _columns(value, key)
    if len(cols) > 1:
        raise MappingError(f"{key}: takes a single column, got {', '.join(cols)}")
    return cols[0] if cols else None


def _time_format(value: Any, key: str) -> str | None:
    if value is None:
        return None
    fmt = str(value).strip()
    if fmt.lower() in TIME_FORMATS:
        return fmt.lower()
    if "%" in fmt:
        check_time_format(fmt, key)
        return fmt
    raise MappingError(
        f"{key}: {value!r} is not one of {', '.join(TIME_FORMATS)} or a strptime pattern with %"
    )


# strptime directives that give a time of day (or a whole instant)
_TIME_OF_DAY = ("%H", "%I", "%M", "%S", "%X", "%c", "%T", "%R", "%s")


def check_time_format(fmt: str, key: str) -> None:
    """Refuse %Z: strptime matches only UTC, GMT and this machine's zone names and drops the
    zone, so the instant would depend on the machine's TZ. Refuse a pattern without a time of
    day: strptime reads it as midnight, the silent guess a date alone gets refused for (a
    `bad_time` under `iso`)."""
    directives = fmt.split("%%")  # "%%Z" is a literal "%Z", not the directive
    if any("%Z" in part for part in directives):
        raise MappingError(
            f"{key}: {fmt!r} has %Z (a time zone name), which strptime matches only for UTC, "
            "GMT and this machine's zone and then ignores; use %z, a numeric offset such as "
            "-0500, +05:30 or Z (a time without an offset is UTC)"
        )
    if "%" in fmt and not any(d in part for part in directives for d in _TIME_OF_DAY):
        raise MappingError(
            f"{key}: {fmt!r} has no time of day (%H, %M, %S...): every event would be read "
            "at midnight, a guess; a log of hours is `yymmddhh`, one of dates cannot be placed "
            "in the hour its events happened"
        )


MAX_CLICK_DELAY_MS = 24 * 3_600_000  # far past any label window; keeps click times in range


def click_delay_ms(value: Any, key: str = "click_delay") -> int:
    """Seconds → whole ms, floored exactly: Decimal of the text (a float by its shortest repr,
    as written), since rounding 900.0009 s gave 900001 ms, past a 15-minute label window."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise MappingError(f"{key}: {value!r} is not a number")
    try:
        x = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise MappingError(f"{key}: {value!r} is not a number") from None
    if not x.is_finite():
        raise MappingError(f"{key}: {value!r} is not finite")
    if x > Decimal(MAX_CLICK_DELAY_MS) / 1000:
        raise MappingError(f"{key}: {value!r} s is more than a day (the label window is at "
                           "most an hour)")
    with localcontext() as ctx:  # exact: no rounding to the default 28 digits
        ctx.prec = len(x.as_tuple().digits) + 10
        ms = int(x.scaleb(3).to_integral_value(rounding=ROUND_FLOOR))
    if ms < 1:
        raise MappingError(f"{key}: {value!r} s is under 1 ms; a labelled click must follow its "
                           "impression by at least 1 ms (0.001 s)")
    return ms


def _number(value: Any, key: str) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise MappingError(f"{key}: {value!r} is not a number") from None
    if not math.isfinite(x):
        raise MappingError(f"{key}: {value!r} is not finite")
    return x


@dataclass(frozen=True)
class ClicksMapping:
    """The clicks table of a two-table log, joined to the impressions by `impression_id`."""

    time: str
    impression_id: str
    time_format: str | None = None  # None: the impressions' format
    id: str | None = None  # None: derived from the row
    user: tuple[str, ...] = ()  # empty: taken from the joined impression
    campaign: tuple[str, ...] = ()

    def columns(self) -> list[str]:
        cols = [self.time, self.impression_id, self.id, *self.user, *self.campaign]
        return list(dict.fromkeys(c for c in cols if c))


@dataclass(frozen=True)
class Mapping:
    """How one impressions table (and optionally a clicks table) maps onto clicklake events."""

    time: str
    user: tuple[str, ...]
    campaign: tuple[str, ...]
    time_format: str = "iso"
    site: tuple[str, ...] = ()
    id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    cost: str | None = None
    cost_scale: float = 1.0
    click_time: str | None = None
    click_time_format: str | None = None  # None: same as time_format
    label: str | None = None
    click_delay_s: float = DEFAULT_CLICK_DELAY_S
    delimiter: str = ","
    clicks: ClicksMapping | None = None

    def columns(self) -> list[str]:
        """Source columns of the impressions table that the mapping reads."""
        cols = [self.time, *self.user, *self.campaign, *self.site, self.id, self.ip,
                self.user_agent, self.cost, self.click_time, self.label]
        return list(dict.fromkeys(c for c in cols if c))


_TOP_KEYS = {f.name for f in fields(Mapping)} | {"click_delay"}
_TOP_KEYS -= {"click_delay_s"}
_CLICK_KEYS = {f.name for f in fields(ClicksMapping)}


def mapping_from_dict(d: dict[str, Any]) -> Mapping:
    """Validate a plain dict (from YAML or flags) into a Mapping; MappingError says what is wrong."""
    if not isinstance(d, dict):
        raise MappingError("a mapping must be a YAML object of key: value pairs")
    # (keys as YAML reads them: 1, or on/off/yes/no read as booleans, are no names)
    unknown = sorted(map(repr, set(d) - _TOP_KEYS))
    if unknown:
        raise MappingError(
            f"unknown mapping key(s): {', '.join(unknown)}; known: {', '.join(sorted(_TOP_KEYS))}"
        )
    for key in ("time", "user", "campaign"):
        if not d.get(key):
            raise MappingError(f"the mapping needs `{key}` (the source column of the event {key})")
    clicks = None
    if d.get("clicks") is not None:
        clicks = _clicks_from_dict(d["clicks"])
    label, click_time = _column(d.get("label"), "label"), _column(d.get("click_time"), "click_time")
    if label and click_time:
        raise MappingError("give either `label` (0/1 column) or `click_time`, not both")
    if clicks and (label or click_time):
        raise MappingError("a clicks table replaces `label`/`click_time`: give one source of clicks")
    ident = _column(d.get("id"), "id")
    if clicks and not ident:
        raise MappingError("joining a clicks table needs the impressions' id column (`id`)")
    delay = _number(d.get("click_delay"), "click_delay")
    if delay is not None and delay <= 0:
        raise MappingError("click_delay: must be more than 0 seconds (a click follows its impression)")
    if delay is not None:
        # stored as whole ms in seconds, so the converter's exact floor gives the same ms
        delay = click_delay_ms(d["click_delay"]) / 1000
    scale = _number(d.get("cost_scale"), "cost_scale")
    if scale is not None and scale < 0:
        raise MappingError("cost_scale: must not be negative")
    delimiter = d.get("delimiter", ",")
    delimiter = "\t" if delimiter in ("\\t", "tab") else delimiter
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise MappingError(f"delimiter: must be one character, got {delimiter!r}")
    return Mapping(
        time=_column(d["time"], "time"),
        user=_columns(d["user"], "user"),
        campaign=_columns(d["campaign"], "campaign"),
        time_format=_time_format(d.get("time_format"), "time_format") or "iso",
        site=_columns(d.get("site"), "site"),
        id=ident,
        ip=_column(d.get("ip"), "ip"),
        user_agent=_column(d.get("user_agent"), "user_agent"),
        cost=_column(d.get("cost"), "cost"),
        cost_scale=1.0 if scale is None else scale,
        click_time=click_time,
        click_time_format=_time_format(d.get("click_time_format"), "click_time_format"),
        label=label,
        click_delay_s=DEFAULT_CLICK_DELAY_S if delay is None else delay,
        delimiter=delimiter,
        clicks=clicks,
    )


def _clicks_from_dict(d: Any) -> ClicksMapping:
    if not isinstance(d, dict):
        raise MappingError("clicks: must be an object with at least `time` and `impression_id`")
    unknown = sorted(map(repr, set(d) - _CLICK_KEYS))
    if unknown:
        raise MappingError(
            f"unknown clicks key(s): {', '.join(unknown)}; known: {', '.join(sorted(_CLICK_KEYS))}"
        )
    for key in ("time", "impression_id"):
        if not d.get(key):
            raise MappingError(f"clicks: needs `{key}`")
    return ClicksMapping(
        time=_column(d["time"], "clicks.time"),
        impression_id=_column(d["impression_id"], "clicks.impression_id"),
        time_format=_time_format(d.get("time_format"), "clicks.time_format"),
        id=_column(d.get("id"), "clicks.id"),
        user=_columns(d.get("user"), "clicks.user"),
        campaign=_columns(d.get("campaign"), "clicks.campaign"),
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader refusing a key given twice in one mapping: PyYAML keeps the last silently
    (`time: ts` then `time: ts2` read ts2)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                twice = key in seen
            except TypeError:  # an unhashable key: refused below as not a plain key
                twice = False
            if twice:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice", key_node.start_mark)
            with contextlib.suppress(TypeError):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_mapping_dict(text: str) -> dict[str, Any]:
    """Parse the YAML text of a mapping file into a plain dict (MappingError when it is not one)."""
    try:
        d = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise MappingError(f"mapping file is not valid YAML: {exc}") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise MappingError("a mapping file must hold key: value pairs")
    return d


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` (flags) on top of `base` (YAML); None means "not given"; `clicks` merges by key."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "clicks" and isinstance(value, dict):
            if not isinstance(out.get("clicks") or {}, dict):
                continue  # the YAML's is not an object: `_clicks_from_dict` says so
            sub = dict(out.get("clicks") or {})
            sub.update({k: v for k, v in value.items() if v is not None})
            if sub:
                out["clicks"] = sub
            continue
        out[key] = value
    return out
