"""A user's profile counters "as of now" in a few hundred bytes: the head, written beside the
user's document (`user_state`) by every commit that rewrites it.

A read "now" asks for t after every event the user has: then each counter of
`lookup.PROFILE_SCHEMA` is a plain total (lifetime sums, last times, first time, distinct
campaigns and domains: every first time is before t) except the windows, which sum the tiles of
the hours [floor(t) - width, floor(t)] (the tile of floor(t) holds the partial hour, as every
event of it is before t). So the head keeps those totals and the tiles in hour order with
cumulative counts: a window is two bisections and a slice sum, whatever the history, and
decoding the head costs a fraction of the document (a week-long user's document carries every
campaign and domain it saw and a tile per hour with its last-event times: 14 KB at p99).

A read at t at or before the user's latest impression or click (`last`) gets None: the
document answers it (`user_state.profile_at`).

The profile's lists (per-campaign counts and domains) follow the head in the same stored value,
each on a line of its own (`encode`), so a read of the counters alone decodes none of them:
"now", every campaign and domain the user has is in them with its lifetime counts, so the lists
are the document's own, sorted once at the write instead of at every read. They are stored in
the profile's own JSON form, so a response can carry them as they are (`lists_from_head`
with `encoded`): decoding a week-long user's 170 campaigns and 200 domains into Python objects
costs more than the rest of the read. The windows' spend adds the tiles' spend in hour
order, not the document's order: equal within float rounding (the consistency tests' 1e-9).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from functools import partial
from itertools import accumulate, chain
from operator import is_not, itemgetter

import orjson

from clicklake.platform.online.user_state import PREDICTION_LOOKBACK_MS, pred_order
from clicklake.platform.profiles import WINDOWS_H
from clicklake.platform.timeutil import HOUR_MS

_i, _c, _s, _li, _lc = (itemgetter(k) for k in range(5))
_first_seen = itemgetter(2)  # of a campaign's [impressions, clicks, first ts]
_known = partial(is_not, None)
_WINDOW_KEYS = [(width, f"impressions_{name}", f"clicks_{name}", f"spend_{name}")
                for name, width in WINDOWS_H.items()]
# the head's fields, in order
(LAST, VALID, FIRST, LAST_IMP, LAST_CLICK, N, CAMPS, DOMS, BASE, HOURS, CUM_I, CUM_C,
 SPEND, AFTER, PRED) = range(15)  # AFTER, PRED: layout 5 on (a head of 4 ends at SPEND)


def _latest(times: Iterable[int | None], floor: int | None) -> int | None:
    """The greatest of `times` and `floor` that is not None (None when none is)."""
    found = max(filter(_known, times), default=None)
    return floor if found is None else found if floor is None else max(found, floor)


def head_of(doc: dict) -> list:
    """The head of a user document (`user_state` layout), as a JSON-ready list. Written with
    every document a commit rewrites: C-level passes over the tiles (a week-long user has ~170;
    a sort key and a loop in Python cost twice this)."""
    tiles = doc["tiles"]
    hours, vals = list(map(int, tiles)), list(tiles.values())
    ordered = sorted(hours)
    if hours != ordered:  # tiles are made in arrival order: a straggler's is out of hour order
        hours = ordered  # (unique: the sort compares hours only)
        vals = [v for _, v in sorted(zip(map(int, tiles), tiles.values()))]
    full = [v for v in vals if len(v) > 3]  # the others gave their times to `arch` (`trim`)
    li = _latest(map(_li, full), doc["arch"][0])
    lc = _latest(map(_lc, full), doc["arch"][1])
    base = hours[0] if hours else 0
    return [_latest((li,), lc), doc.get("h"), doc["first"], li, lc, doc["n"],
            len(doc["camps"]), len(doc["doms"]), base, [(h - base) // HOUR_MS for h in hours],
            list(accumulate(map(_i, vals), initial=0)),
            list(accumulate(map(_c, vals), initial=0)), list(map(_s, vals)), _after(doc),
            _latest_prediction(doc)]


def _latest_prediction(doc: dict) -> list | None:
    """The document's latest prediction [ts, id, score] by (ts, id), the earlier one kept on a
    tie, as `user_state.latest_prediction_at` keeps it; None when it has none."""
    preds, before = doc["preds"], doc.get("plast")
    return max(preds if before is None else [before, *preds], key=pred_order, default=None)


def lists_of(doc: dict) -> tuple[dict[str, dict[str, int]], list[str]]:
    """The profile's lists as of after every event of the document: (campaigns, domains) as
    `user_state.campaigns_at` and `domains_at` give them, in name order; they answer instants
    past the head's AFTER (`_after`)."""
    camps = doc["camps"]
    return ({n: {"impressions": camps[n][0], "clicks": camps[n][1]} for n in sorted(camps)},
            sorted(doc["doms"]))


def _after(doc: dict) -> int | None:
    """The latest first-seen time of the document's campaigns and domains (None: it has none):
    the lists answer instants past it."""
    return max(chain(map(_first_seen, doc["camps"].values()), doc["doms"].values()),
               default=None)


def encode(doc: dict) -> bytes:
    """The stored value: the head, then the campaigns and the domains of `lists_of`, a line each
    (orjson writes no raw newline)."""
    return b"\n".join((orjson.dumps(head_of(doc)), *map(orjson.dumps, lists_of(doc))))


def split(raw: bytes) -> tuple[memoryview, tuple[memoryview, memoryview] | None]:
    """(head, (campaigns, domains)) of a stored value, views of it (orjson decodes them as they
    are: a week-long user's 16 KB are not copied for the counters alone); the lists None when
    the writer kept none this reader reads (layout 3: none; layout 4: one line of another
    form)."""
    view, cut = memoryview(raw), raw.find(b"\n")
    if cut < 0:
        return view, None
    mid = raw.find(b"\n", cut + 1)
    return view[:cut], None if mid < 0 else (view[cut + 1:mid], view[mid + 1:])


def lists_from_head(head: list, lists: tuple[memoryview, memoryview], t: int,
                    encoded: bool = False) -> tuple[dict[str, dict[str, int]], list[str]] | tuple[
                        orjson.Fragment, orjson.Fragment] | None:
    """`user_state.campaigns_at(doc, t)` and `domains_at(doc, t)` from the head and the lists
    `split` gives, for t after the document's last event (the caller checks that with
    `profile_from_head`); None when some campaign or domain is first seen at or after t (ask
    the document). `encoded`: the two as JSON text (`orjson.Fragment`, for a response)."""
    after = head[AFTER]
    if after is not None and t <= after:
        return None
    camps, doms = lists
    if encoded:
        return orjson.Fragment(bytes(camps)), orjson.Fragment(bytes(doms))
    return orjson.loads(camps), orjson.loads(doms)


def campaign_counts(camps: memoryview, campaign: str) -> tuple[int, int]:
    """`user_state.user_campaign_at(doc, campaign, t)` for t after the document's last event,
    from the campaigns' JSON text (`split`) without decoding it: decoding a week-long user's 170
    campaigns costs ~50 µs, finding one ~1. A key is found where it starts a member: after the
    object's `{` or a member's `,` (a quote inside a name is escaped, so preceded by a
    backslash), and followed by an object (an inner member's value is a number)."""
    text = bytes(camps)
    key = orjson.dumps(campaign) + b':{"impressions":'
    at = text.find(key)
    while at > 0 and text[at - 1] not in b"{,":
        at = text.find(key, at + 1)
    if at < 0:
        return 0, 0
    start = at + len(key)
    comma = text.index(b",", start)
    end = text.index(b"}", comma)
    return int(text[start:comma]), int(text[comma + len(b',"clicks":'):end])


def prediction_from_head(head: list, t: int) -> tuple[float, float] | None:
    """`user_state.latest_prediction_at(doc, t)` from the head, or None when t is at or before
    the user's latest prediction (ask the document)."""
    latest = head[PRED]
    if latest is not None and t <= latest[0]:
        return None
    if latest is None or latest[0] < t - t % HOUR_MS - PREDICTION_LOOKBACK_MS:
        return math.nan, math.nan
    return float(latest[2]), float(latest[0])


def profile_from_head(head: list, t: int) -> dict | None:
    """`user_state.profile_at(doc, t)` from the document's head, or None when t is at or before
    the user's latest impression or click (ask the document)."""
    last = head[LAST]
    if last is not None and t <= last:
        return None
    f = t - t % HOUR_MS
    imp, clk, spend = head[N]
    out = {"first_ts": head[FIRST], "last_impression_ts": head[LAST_IMP],
           "last_click_ts": head[LAST_CLICK], "impressions": imp, "clicks": clk, "spend": spend}
    hours, ci, cc, sp = head[HOURS], head[CUM_I], head[CUM_C], head[SPEND]
    top = (f - head[BASE]) // HOUR_MS
    b = bisect_right(hours, top)
    for width, imp_key, clk_key, spend_key in _WINDOW_KEYS:
        a = bisect_left(hours, top - width, 0, b)
        out[imp_key] = ci[b] - ci[a]
        out[clk_key] = cc[b] - cc[a]
        out[spend_key] = sum(sp[a:b], 0.0)
    out["distinct_campaigns"], out["distinct_domains"] = head[CAMPS], head[DOMS]
    return out


def valid_from(head: list) -> int | None:
    """The document's `user_state.valid_from` when the head was written."""
    return head[VALID]
