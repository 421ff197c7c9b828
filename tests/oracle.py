"""Brute-force oracle: profiles and segment counts recomputed from raw rows with plain Python.

Rows are dicts with `ts` as int epoch ms (use `rows_of(table)` for a raw Arrow table). Nothing
here is clever on purpose: every answer is one pass over all rows with the definitions of
DESIGN §4-5 written out literally, so the fast paths can be checked against it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pyarrow as pa

HOUR = 3_600_000
WINDOWS = {"1h": 1, "24h": 24, "7d": 168}


def _ms(v) -> int | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return round(v.timestamp() * 1000)
    return int(v)


def rows_of(table: pa.Table) -> list[dict]:
    """Raw Arrow rows as dicts with times in epoch ms."""
    out = []
    for r in table.to_pylist():
        r = dict(r)
        for k in ("ts", "arrived_at"):
            if k in r:
                r[k] = _ms(r[k])
        out.append(r)
    return out


def in_window(ts: int, t: int, hours: int) -> bool:
    """Sawtooth: the `hours` complete hours before floor_hour(t), plus [floor_hour(t), t)."""
    return t - t % HOUR - hours * HOUR <= ts < t


def profile(impressions: list[dict], clicks: list[dict], user: str, t: int) -> dict:
    imps = [r for r in impressions if r["user_id"] == user and r["ts"] < t]
    clks = [r for r in clicks if r["user_id"] == user and r["ts"] < t]
    out: dict = {
        "known": bool(imps or clks),
        "first_ts": min([r["ts"] for r in imps + clks], default=None),
        "last_impression_ts": max([r["ts"] for r in imps], default=None),
        "last_click_ts": max([r["ts"] for r in clks], default=None),
        "impressions": len(imps),
        "clicks": len(clks),
        "spend": sum(r["cost"] or 0.0 for r in imps),
    }
    for name, hours in WINDOWS.items():
        wi = [r for r in imps if in_window(r["ts"], t, hours)]
        out[f"impressions_{name}"] = len(wi)
        out[f"clicks_{name}"] = sum(1 for r in clks if in_window(r["ts"], t, hours))
        out[f"spend_{name}"] = sum(r["cost"] or 0.0 for r in wi)
    out["distinct_campaigns"] = len({r["campaign_id"] for r in imps + clks})
    out["distinct_domains"] = len({r["domain"] for r in imps if r["domain"] is not None})
    return out


def profile_lists(impressions: list[dict], clicks: list[dict], user: str, t: int) -> dict:
    """The profile's lists at t: {campaign: {"impressions", "clicks"}} of every campaign of the
    user's impressions and clicks with ts < t, and the sorted domains of its impressions."""
    camps = {r["campaign_id"] for r in impressions + clicks
             if r["user_id"] == user and r["ts"] < t}
    counts = {c: user_campaign(impressions, clicks, user, c, t) for c in sorted(camps)}
    return {"campaigns": {c: {"impressions": i, "clicks": k} for c, (i, k) in counts.items()},
            "domains": sorted({r["domain"] for r in impressions if r["user_id"] == user
                               and r["ts"] < t and r["domain"] is not None})}


def user_campaign(impressions: list[dict], clicks: list[dict], user: str, campaign: str,
                  t: int) -> tuple[int, int]:
    """(impressions, clicks) of `user` on `campaign` with ts < t."""
    i = sum(1 for r in impressions
            if r["user_id"] == user and r["campaign_id"] == campaign and r["ts"] < t)
    c = sum(1 for r in clicks if r["user_id"] == user and r["campaign_id"] == campaign and r["ts"] < t)
    return i, c


def click_impression(click: dict, impressions: list[dict]) -> dict | None:
    """The impression a click takes its country and domain from: its impression (by id) if that
    impression is in the click's hour or the hour before, else the user's latest impression with
    ts < click ts in those hours, else None."""
    lo = click["ts"] - click["ts"] % HOUR - HOUR
    near = [r for r in impressions if lo <= r["ts"] < click["ts"] - click["ts"] % HOUR + HOUR]
    if click.get("impression_id") is not None:
        for r in near:
            if r["impression_id"] == click["impression_id"]:
                return r
    earlier = [r for r in near if r["user_id"] == click["user_id"] and r["ts"] < click["ts"]]
    if earlier:
        return max(earlier, key=lambda r: (r["ts"], r["impression_id"]))
    return None


def click_country(click: dict, impressions: list[dict], country_of: Callable[[dict], str]
                  ) -> str:
    """Country of a click (`click_impression`'s), 'unknown' without one. `country_of` gives an
    impression row's country: per row, not per id (an id may come back in another hour, from
    another address)."""
    imp = click_impression(click, impressions)
    return "unknown" if imp is None else country_of(imp)


def click_domain(click: dict, impressions: list[dict]) -> str:
    imp = click_impression(click, impressions)
    return "unknown" if imp is None or imp.get("domain") is None else imp["domain"]


def segments(impressions: list[dict], clicks: list[dict], country_of: Callable[[dict], str],
             t: int,
             hours: int = 24) -> dict[tuple[str, str], tuple[int, int]]:
    """{(kind, segment): (impressions, clicks)} over the sawtooth window at t; kinds are
    'global', 'country', 'campaign', 'domain'."""
    out: dict[tuple[str, str], list[int]] = {}

    def add(key, i, c):
        acc = out.setdefault(key, [0, 0])
        acc[0] += i
        acc[1] += c

    for r in impressions:
        if in_window(r["ts"], t, hours):
            add(("global", "all"), 1, 0)
            add(("country", country_of(r)), 1, 0)
            add(("campaign", r["campaign_id"]), 1, 0)
            add(("domain", r.get("domain") or "unknown"), 1, 0)
    for r in clicks:
        if in_window(r["ts"], t, hours):
            add(("global", "all"), 0, 1)
            add(("country", click_country(r, impressions, country_of)), 0, 1)
            add(("campaign", r["campaign_id"]), 0, 1)
            add(("domain", click_domain(r, impressions)), 0, 1)
    return {k: (v[0], v[1]) for k, v in out.items()}
