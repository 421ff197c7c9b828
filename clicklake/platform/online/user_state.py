"""One user's online state as a plain document, and its answers "as of t".

The fold sees events in arrival order, but every answer is "as of t": only events with ts < t
count (DESIGN §4.1). So the document keeps totals of everything folded plus the recent events
themselves, and an answer at t takes the totals minus the events at or after t:

- `n` = [impressions, clicks, spend] of every folded event; `first` = earliest event time;
- `tiles` = hour (ms, as text) -> [impressions, clicks, spend, last impression ts, last click
  ts] for the last RING_HOURS (+ margin) hours: the sawtooth windows (DESIGN §4.3) sum the complete
  hours before floor(t) from here; a tile before the horizon keeps only its three counts, and
  `arch` the greatest last-event times of the others (`trim`);
- `ev` = every event since the retention horizon, exactly: impressions
  [ts, 0, id, campaign, domain, cost, country] and clicks [ts, 1, id, campaign, impression_id,
  segments, via] (`segments` = the click's impression-derived segments, country first, in
  `segment_state.IMPRESSION_KINDS` order; `via` 1 = they came from its impression_id, 0 =
  otherwise);
  the partial hour [floor(t), t) and the tail (ts >= t) come from here, so a read is exact for
  any t with floor(t) >= the horizon;
- `camps` = campaign -> [impressions, clicks, first ts]; `doms` = domain -> first ts (exact sets:
  distinct counts at t are the members first seen before t; a first time before the horizon is
  stored as 0, as every read's t is past it);
- `preds` = [ts, prediction_id, score] since the horizon, and `plast` the latest one before it
  (the feature reads 24 h back: the latest before t is one of these);
- `h` = the last horizon `trim` gave something up at (`valid_from`);

Reads must ask for t with floor(t) >= the horizon (`read.BeforeHorizon` otherwise): every
aggregate above relies on it.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from operator import itemgetter

from clicklake.platform.profiles import RING_HOURS, WINDOWS_H
from clicklake.platform.timeutil import HOUR_MS

PREDICTION_LOOKBACK_MS = 24 * HOUR_MS  # lake_feature_inputs reads raw predictions 24 h back
TILE_KEEP_MS = (RING_HOURS + 1) * HOUR_MS
_first = itemgetter(0)
_third = itemgetter(2)
_WINDOWS = tuple(WINDOWS_H.values())
if len(_WINDOWS) != 3:  # `profile_at` sums exactly three windows
    raise NotImplementedError(f"online reads know three windows, not {WINDOWS_H}")


def new_user() -> dict:
    return {"n": [0, 0, 0.0], "first": None, "arch": [None, None], "tiles": {}, "ev": [],
            "camps": {}, "doms": {}, "preds": []}


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _tile(doc: dict, ts: int) -> list:
    h = str(ts - ts % HOUR_MS)
    t = doc["tiles"].get(h)
    if t is None:
        t = doc["tiles"][h] = [0, 0, 0.0, None, None]
    elif len(t) < 5:  # shortened by `trim`: a straggling file's event
        t += [None, None]
    return t


def _touch(doc: dict, ts: int, campaign: str, imp: int, clk: int) -> None:
    doc["first"] = ts if doc["first"] is None else min(doc["first"], ts)
    c = doc["camps"].get(campaign)
    if c is None:
        doc["camps"][campaign] = [imp, clk, ts]
    else:
        c[0] += imp
        c[1] += clk
        c[2] = min(c[2], ts)


def add_impressions(users: dict[str, dict], rows: list[tuple], countries: list[str]) -> None:
    """Each impression row (`SPECS["impressions"].fields` order) into its user's document, in
    row order: totals, tile, first time, campaign, domain, and the event in `ev`. One call per
    batch (no call per row: this is the fold's hottest loop)."""
    hour_keys: dict[int, str] = {}  # a tile's key, made once per hour
    for (event_id, ts, user, campaign, domain, _ip, _ua, cost), country in zip(
            rows, countries, strict=True):
        doc = users[user]
        spend = 0.0 if cost is None else cost
        n = doc["n"]
        n[0] += 1
        n[2] += spend
        tiles = doc["tiles"]
        hour = ts - ts % HOUR_MS
        h = hour_keys.get(hour)
        if h is None:
            h = hour_keys[hour] = str(hour)
        t = tiles.get(h)
        if t is None:
            tiles[h] = [1, 0, 0.0 + spend, ts, None]
        else:
            t[0] += 1
            t[2] += spend
            if len(t) < 5:  # a tile `trim` shortened: a straggling file's event
                t += [None, None]
            if t[3] is None or ts > t[3]:
                t[3] = ts
        first = doc["first"]
        if first is None or ts < first:
            doc["first"] = ts
        camps = doc["camps"]
        c = camps.get(campaign)
        if c is None:
            camps[campaign] = [1, 0, ts]
        else:
            c[0] += 1
            if ts < c[2]:  # noqa: PLR1730 - a min() call per row costs 4x this test
                c[2] = ts
        if domain is not None:
            doms = doc["doms"]
            d = doms.get(domain)
            if d is None or ts < d:
                doms[domain] = ts
        doc["ev"].append([ts, 0, event_id, campaign, domain, cost, country])


def add_click(doc: dict, ts: int, event_id: str, campaign: str, impression_id: str | None,
              segments: list[str], via: int) -> None:
    doc["n"][1] += 1
    t = _tile(doc, ts)
    t[1] += 1
    t[4] = _max(t[4], ts)
    _touch(doc, ts, campaign, 0, 1)
    doc["ev"].append([ts, 1, event_id, campaign, impression_id, segments, via])


def add_predictions(users: dict[str, dict], rows: list[tuple]) -> None:
    """Each prediction row (`SPECS["predictions"].fields` order) into its user's `preds`, in row
    order (one call per batch, not per row)."""
    for event_id, ts, user, _model, score, _imp in rows:
        users[user]["preds"].append([ts, event_id, score])


def find_click(doc: dict, ts: int, event_id: str) -> list | None:
    for e in doc["ev"]:
        if e[1] == 1 and e[0] == ts and e[2] == event_id:
            return e
    return None


def latest_impression(doc: dict, lo: int, hi: int) -> list | None:
    """The impression with the greatest (ts, id) among lo <= ts < hi (the click-country rule)."""
    best = None
    for e in doc["ev"]:
        if e[1] == 0 and lo <= e[0] < hi and (best is None or (e[0], e[2]) > (best[0], best[2])):
            best = e
    return best


class EventIndex:
    """`find_click` and `latest_impression` over one user document's events in logarithmic
    time: its impressions sorted by (ts, id) and its clicks by (ts, id), kept in step with
    `ev` as events are appended to it (a scan per click was quadratic for a click farm: 8 k
    clicks on 16 k impressions took 14 s). Only appends are followed: a batch makes no other
    change to `ev` before its `trim`."""

    __slots__ = ("clicks", "ev", "imp_events", "imp_keys", "seen")

    def __init__(self, ev: list) -> None:
        self.ev, self.seen = ev, 0
        self.imp_keys: list[tuple[int, str]] = []
        self.imp_events: list[list] = []
        self.clicks: dict[tuple[int, str], list] = {}

    def _sync(self) -> None:
        ev, keys, events = self.ev, self.imp_keys, self.imp_events
        for e in ev[self.seen:]:
            if e[1] == 0:
                at = bisect_right(keys, (e[0], e[2]))  # a tie keeps the earlier one first
                keys.insert(at, (e[0], e[2]))
                events.insert(at, e)
            else:
                self.clicks.setdefault((e[0], e[2]), e)  # the first, as the scan finds it
        self.seen = len(ev)

    def find_click(self, ts: int, event_id: str) -> list | None:
        self._sync()
        return self.clicks.get((ts, event_id))

    def latest_impression(self, lo: int, hi: int) -> list | None:
        self._sync()
        i = bisect_left(self.imp_keys, (hi,)) - 1  # the greatest (ts, id) with ts < hi
        if i < 0 or self.imp_keys[i][0] < lo:
            return None
        # Equal (ts, id) keys (a duplicate): the scan keeps the first met, here the last key.
        first = bisect_left(self.imp_keys, self.imp_keys[i])
        return self.imp_events[first]


def trim(doc: dict, horizon_ms: int) -> None:
    """Drop, or fold into aggregates, what no read at t >= horizon needs. Such a read sees every
    event before the horizon as history, so of those it needs only sums and maxima:

    - events before the horizon are dropped (`ev`);
    - predictions before the horizon too, but the latest of them (`plast`, greatest (ts, id));
    - tiles before the horizon keep their counts (the windows sum them) but give their last-event
      times to `arch` (they are before any such t), and tiles older than the longest window go;
    - campaigns' and domains' first times before the horizon become 0 (only "before t" is read).

    The result depends only on the document and the horizon. The tiles, campaigns and domains are
    rewritten only when a tile with its times lies before the horizon, or the first (oldest)
    tile is past the longest window: checked in C, as most writes have nothing to give up (a
    steady user's week of tiles made a Python pass per write the fold's biggest loop). A first
    time before the horizon always comes with such a tile (its event's), so it is zeroed then."""
    ev, preds, tiles = doc["ev"], doc["preds"], doc["tiles"]
    gave_up = False
    if ev and min(map(_first, ev)) < horizon_ms:
        doc["ev"] = ev = [e for e in ev if e[0] >= horizon_ms]
        gave_up = True
    if preds and min(map(_first, preds)) < horizon_ms:
        old = [p for p in preds if p[0] < horizon_ms]
        if doc.get("plast") is not None:
            old.append(doc["plast"])
        doc["plast"] = max(old, key=pred_order)
        doc["preds"] = [p for p in preds if p[0] >= horizon_ms]
        gave_up = True
    if tiles:
        # Tiles at or after the horizon are full (5 items) and hold the hours of `ev`: more
        # full tiles than that means one before the horizon still has its times. Tiles are
        # made in time order but for a straggling file's: one out of order waits for the next
        # pass.
        full = (sum(map(len, tiles.values())) - 3 * len(tiles)) // 2
        keep = horizon_ms - TILE_KEEP_MS
        if full > len({e[0] - e[0] % HOUR_MS for e in ev}) or int(next(iter(tiles))) < keep:
            _trim_before(doc, horizon_ms, keep)
            gave_up = True
    if gave_up:  # the answers before this horizon are gone: say so (`valid_from`)
        doc["h"] = max(doc.get("h", horizon_ms), horizon_ms)


def valid_from(doc: dict) -> int | None:
    """The earliest hour this document answers for: the last horizon `trim` gave something up
    at (None: anything folded). A reader whose own horizon is older (it read the watermark
    before a fold committed this document) must not use it: `read.BeforeHorizon`."""
    return doc.get("h")


def _trim_before(doc: dict, horizon_ms: int, keep_ms: int) -> None:
    """`trim`'s pass over tiles, campaigns and domains."""
    for c in doc["camps"].values():
        if c[2] < horizon_ms:
            c[2] = 0
    doms = doc["doms"]
    for d, first in doms.items():
        if first < horizon_ms:
            doms[d] = 0
    arch_i, arch_c = doc["arch"]
    tiles = doc["tiles"]
    for h in list(tiles):
        hour = int(h)
        if hour >= horizon_ms:
            continue
        t = tiles[h]
        if len(t) > 3:
            arch_i, arch_c = _max(arch_i, t[3]), _max(arch_c, t[4])
            del t[3:]
        if hour < keep_ms:
            del tiles[h]
    doc["arch"] = [arch_i, arch_c]


pred_order = itemgetter(0, 1)  # predictions' order, (ts, id): a C-level key for `trim`'s max


# -- answers as of t -------------------------------------------------------------------------------


def profile_at(doc: dict, t: int) -> dict:
    """Counters with ts < t, named as `lookup.PROFILE_SCHEMA` (times in epoch ms, None = never).

    One pass over the events and one over the tiles (a week of them for a steady user: this is
    most of a profile read); each window's sums add the same values in the same order as a pass
    per window would, so spend is the same float."""
    f = t - t % HOUR_MS
    imp, clk, spend = doc["n"]
    cur_i = cur_c = 0
    cur_s = 0.0
    last_i = last_c = None
    for e in doc["ev"]:
        ts = e[0]
        if ts >= t:  # the tail: folded already, but not history at t
            if e[1] == 0:
                imp -= 1
                spend -= e[5] or 0.0
            else:
                clk -= 1
        elif ts >= f:  # the partial hour [floor(t), t)
            if e[1] == 0:
                cur_i += 1
                cur_s += e[5] or 0.0
                if last_i is None or ts > last_i:
                    last_i = ts
            else:
                cur_c += 1
                if last_c is None or ts > last_c:
                    last_c = ts
    if imp == 0:  # the total less the tail's costs leaves a rounding residue (even < 0)
        spend = 0.0
    first = doc["first"]
    out = {"first_ts": first if first is not None and first < t else None}
    # The three windows (`_WINDOWS`) summed in locals, each from the partial hour and then in
    # tile order (a list per window and an inner loop cost twice as much: this loop runs over a
    # week of tiles per read).
    lo1, lo2, lo3 = (f - width * HOUR_MS for width in _WINDOWS)
    i1 = i2 = i3 = cur_i
    c1 = c2 = c3 = cur_c
    s1 = s2 = s3 = cur_s
    tile_i, tile_c = doc["arch"]
    for h, v in doc["tiles"].items():
        h = int(h)
        if h >= f:
            continue
        if len(v) > 3:  # a tile before the horizon keeps only its counts (`trim`)
            if v[3] is not None and (tile_i is None or v[3] > tile_i):
                tile_i = v[3]
            if v[4] is not None and (tile_c is None or v[4] > tile_c):
                tile_c = v[4]
        if h >= lo1:
            i1 += v[0]
            c1 += v[1]
            s1 += v[2]
        if h >= lo2:
            i2 += v[0]
            c2 += v[1]
            s2 += v[2]
        if h >= lo3:
            i3 += v[0]
            c3 += v[1]
            s3 += v[2]
    out["last_impression_ts"] = tile_i if last_i is None else last_i
    out["last_click_ts"] = tile_c if last_c is None else last_c
    out["impressions"], out["clicks"], out["spend"] = imp, clk, spend
    for name, i, c, s in zip(WINDOWS_H, (i1, i2, i3), (c1, c2, c3), (s1, s2, s3), strict=True):
        out[f"impressions_{name}"], out[f"clicks_{name}"], out[f"spend_{name}"] = i, c, s
    # counted in C: a steady user has seen hundreds of campaigns and domains
    out["distinct_campaigns"] = sum(map(t.__gt__, map(_third, doc["camps"].values())))
    out["distinct_domains"] = sum(map(t.__gt__, doc["doms"].values()))
    return out


def user_campaign_at(doc: dict, campaign: str, t: int) -> tuple[int, int]:
    c = doc["camps"].get(campaign)
    if c is None:
        return 0, 0
    imp, clk = c[0], c[1]
    for e in doc["ev"]:
        if e[0] >= t and e[3] == campaign:
            if e[1] == 0:
                imp -= 1
            else:
                clk -= 1
    return imp, clk


def campaigns_at(doc: dict, t: int) -> dict[str, dict[str, int]]:
    """`user_campaign_at` of every campaign first seen before t, by name: one pass over the
    events for the tail to take off (not one per campaign)."""
    tail: dict[str, list[int]] = {}
    for e in doc["ev"]:
        if e[0] >= t:
            counts = tail.get(e[3])
            if counts is None:
                counts = tail[e[3]] = [0, 0]
            counts[e[1]] += 1
    out = {}
    camps = doc["camps"]
    for name in sorted(camps):
        c = camps[name]
        if c[2] < t:
            off = tail.get(name)
            out[name] = ({"impressions": c[0], "clicks": c[1]} if off is None else
                         {"impressions": c[0] - off[0], "clicks": c[1] - off[1]})
    return out


def domains_at(doc: dict, t: int) -> list[str]:
    return sorted(d for d, first in doc["doms"].items() if first < t)


def latest_prediction_at(doc: dict, t: int) -> tuple[float, float]:
    """(score, ts) of the latest prediction with floor(t) - 24 h <= ts < t, greatest id on ties;
    NaNs when none (the window `lake_feature_inputs` reads)."""
    lo = t - t % HOUR_MS - PREDICTION_LOOKBACK_MS
    best = doc.get("plast")  # the latest before the horizon, so before t
    if best is not None and best[0] < lo:
        best = None
    for p in doc["preds"]:
        if lo <= p[0] < t and (best is None or (p[0], p[1]) > (best[0], best[1])):
            best = p
    return (math.nan, math.nan) if best is None else (float(best[2]), float(best[0]))
