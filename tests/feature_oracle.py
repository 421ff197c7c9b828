"""Brute-force oracle for the labeled dataset: every feature input, feature and label of one
impression recomputed from the kept raw rows with plain Python loops.

Rows are dicts with `ts` in epoch ms (`oracle.rows_of`), across ALL hours: the impressions,
clicks and predictions the raw layer kept. For an impression at `t`:

- history is every event with `ts < t` (DESIGN §4.1): user counters lifetime / 1 h / 24 h / 7 d
  over the sawtooth windows (§4.3), last impression and click times, distinct campaigns
  (impressions and clicks) and domains, this user's counts on this campaign, and the 24 h
  country / campaign / domain / global segment counters where a click takes its impression's
  country and domain by the rule of `segments` (reused from `oracle`; no domain is "unknown");
- the event itself gives country, device type, OS, browser and the crawler flag through the
  enrichment's single-value helpers (the REST path, a different code path from the batch one);
- the latest prediction is the user's prediction with the greatest `ts < t` (the greatest id
  among equal times);
- the label follows §4.2 with plain loops: distinct clicks by (id, event hour) as the raw layer
  keeps them (two hours' copies of an id are two events), a click without an impression
  id goes to the latest earlier impression of the same user and campaign, label 1 iff one of the
  impression's clicks has `t < click.ts <= t + window`.

`features_by_hand` writes the feature definitions of `features`' docstring out again, so the
oracle does not lean on `compute_features` for the arithmetic either.

The second half builds a small lake with the platform functions (landing → raw partitions →
tiles → snapshot chain → segment profiles), the system under test, without Dagster.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import oracle
import orjson

from clicklake.platform import features as F
from clicklake.platform import landing, profiles, raw, segments, tiles
from clicklake.platform.enrich import country_of, user_agent_of
from clicklake.platform.labeled import build_labeled_hour
from clicklake.platform.labeling import DEFAULT_LABEL_WINDOW_MS
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, floor_hour

NAN = float("nan")
STREAMS = ("impressions", "clicks", "predictions")
ID_FIELD = {"impressions": "impression_id", "clicks": "click_id", "predictions": "prediction_id"}


# -- the oracle ----------------------------------------------------------------------------------


def impression_country(imp: dict) -> str:
    return country_of(imp.get("ip"))


def latest_prediction(predictions: list[dict], user: str, t: int) -> tuple[float, float]:
    """(score, ts) of the user's latest prediction with ts < t; NaN, NaN when none."""
    best = None
    for p in predictions:
        if p["user_id"] != user or p["ts"] >= t:
            continue  # another user's, or not before t
        if best is None or (p["ts"], p["prediction_id"]) > (best["ts"], best["prediction_id"]):
            best = p
    return (NAN, NAN) if best is None else (float(best["score"]), float(best["ts"]))


def feature_inputs(imp: dict, impressions: list[dict], clicks: list[dict],
                   predictions: list[dict]) -> dict:
    """Every `features.INPUT_COLUMNS` value of impression `imp` (one dict of scalars)."""
    t, user, campaign = imp["ts"], imp["user_id"], imp["campaign_id"]
    p = oracle.profile(impressions, clicks, user, t)
    out: dict = {"ts_ms": t}
    suffix = {"life": "", "1h": "_1h", "24h": "_24h", "7d": "_7d"}
    for w, s in suffix.items():
        for m in ("impressions", "clicks", "spend"):
            out[f"user_{m}_{w}"] = float(p[f"{m}{s}"])
    for name, key in (("user_last_impression_ms", "last_impression_ts"),
                      ("user_last_click_ms", "last_click_ts")):
        out[name] = NAN if p[key] is None else float(p[key])
    out["user_distinct_campaigns"] = float(p["distinct_campaigns"])
    out["user_distinct_domains"] = float(p["distinct_domains"])
    uc_i, uc_c = oracle.user_campaign(impressions, clicks, user, campaign, t)
    out["uc_impressions"], out["uc_clicks"] = float(uc_i), float(uc_c)
    # each row's own country: an id may come back in another hour, from another address
    seg = oracle.segments(impressions, clicks, impression_country, t, hours=24)
    for kind, segment in (("country", impression_country(imp)), ("campaign", campaign),
                          ("domain", imp.get("domain") or "unknown"), ("global", "all")):
        i, c = seg.get((kind, segment), (0, 0))
        out[f"{kind}_impressions_24h"], out[f"{kind}_clicks_24h"] = float(i), float(c)
    out["country"] = impression_country(imp)
    ua = user_agent_of(imp.get("user_agent"))
    out["device_type"], out["os"], out["browser"] = ua.device_type, ua.os, ua.browser
    out["is_crawler"] = ua.is_crawler
    out["pred_score"], out["pred_ts_ms"] = latest_prediction(predictions, user, t)
    assert set(out) == set(F.INPUT_COLUMNS)
    return out


def _ctr(clicks: float, impressions: float) -> float:
    return (clicks + F.PRIOR_CTR * F.PRIOR_STRENGTH) / (impressions + F.PRIOR_STRENGTH)


def features_by_hand(x: dict) -> dict:
    """The feature vector of one row of inputs, from the definitions in `features`' docstring."""
    t = x["ts_ms"]
    out: dict = {}
    for w in F.WINDOWS:
        for m in ("impressions", "clicks", "spend"):
            out[f"user_{m}_{w}"] = float(x[f"user_{m}_{w}"])
        out[f"user_ctr_{w}"] = _ctr(x[f"user_clicks_{w}"], x[f"user_impressions_{w}"])
    # NaN (never) propagates: no last event, no "seconds since".
    out["secs_since_last_impression"] = (t - x["user_last_impression_ms"]) / 1000.0
    out["secs_since_last_click"] = (t - x["user_last_click_ms"]) / 1000.0
    for name in ("user_distinct_campaigns", "user_distinct_domains", "uc_impressions",
                 "uc_clicks"):
        out[name] = float(x[name])
    out["uc_ctr"] = _ctr(x["uc_clicks"], x["uc_impressions"])
    for s in F.SEGMENTS:
        out[f"{s}_ctr_24h"] = _ctr(x[f"{s}_clicks_24h"], x[f"{s}_impressions_24h"])
    for s in F.SEGMENTS:
        if s != "global":
            out[f"{s}_lift_24h"] = out[f"{s}_ctr_24h"] / out["global_ctr_24h"]
    out["is_crawler"] = 1.0 if x["is_crawler"] else 0.0
    when = datetime.fromtimestamp(t // 1000, UTC)
    out["hour_of_day"] = float(when.hour)
    out["day_of_week"] = float(when.weekday())  # Monday = 0
    age = t - x["pred_ts_ms"]
    fresh = not math.isnan(age) and age <= F.PREDICTION_MAX_AGE_MS
    out["pred_score"] = float(x["pred_score"]) if fresh else NAN
    out["pred_age_s"] = age / 1000.0 if fresh else NAN
    for c in F.CATEGORICAL:
        out[c] = x[c]
    assert set(out) == set(F.FEATURE_NAMES)
    return out


def attributed_impression(click: dict, impressions: list[dict]) -> str | None:
    """The impression a click is for: its impression_id, or else the latest impression of the
    same user and campaign strictly before the click (the greatest id among equal times)."""
    if click.get("impression_id") is not None:
        return click["impression_id"]
    earlier = [r for r in impressions if r["user_id"] == click["user_id"]
               and r["campaign_id"] == click["campaign_id"] and r["ts"] < click["ts"]]
    if not earlier:
        return None
    return max(earlier, key=lambda r: (r["ts"], r["impression_id"]))["impression_id"]


def label(imp: dict, impressions: list[dict], clicks: list[dict],
          window_ms: int = DEFAULT_LABEL_WINDOW_MS) -> tuple[int, int | None]:
    """(label, delay of the first labeling click in ms or None) of impression `imp`."""
    seen: set[tuple[str, int]] = set()
    delays = []
    for c in sorted(clicks, key=lambda c: (c["ts"], c["click_id"])):
        key = (c["click_id"], floor_hour(c["ts"]))  # one event per id and hour, as in raw
        if key in seen:
            continue
        seen.add(key)
        if attributed_impression(c, impressions) != imp["impression_id"]:
            continue
        if imp["ts"] < c["ts"] <= imp["ts"] + window_ms:
            delays.append(c["ts"] - imp["ts"])
    return (1, min(delays)) if delays else (0, None)


def labeled_rows(hour_ms: int, impressions: list[dict], clicks: list[dict],
                 predictions: list[dict], window_ms: int = DEFAULT_LABEL_WINDOW_MS
                 ) -> dict[str, dict]:
    """impression_id → the expected labeled row (passthrough, label, delay, every feature) of
    each impression of hour `hour_ms`."""
    out = {}
    for imp in impressions:
        if floor_hour(imp["ts"]) != hour_ms:
            continue
        x = feature_inputs(imp, impressions, clicks, predictions)
        lab, delay = label(imp, impressions, clicks, window_ms)
        row = {k: imp.get(k) for k in ("impression_id", "ts", "user_id", "campaign_id", "domain",
                                       "cost")}
        row.update(label=lab, first_click_delay_ms=delay, **features_by_hand(x))
        out[imp["impression_id"]] = row
    return out


def same(a, b) -> bool:
    """Exact equality where NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def mismatches(expected: dict[str, dict], table_rows: list[dict]) -> list[str]:
    """Every difference between the oracle's rows and a labeled table's rows (as dicts with ts in
    epoch ms), one line each; empty when they agree exactly."""
    out = []
    got = {r["impression_id"]: r for r in table_rows}
    if len(got) != len(table_rows):
        out.append(f"duplicate impression ids in the labeled table: {len(table_rows)} rows, "
                   f"{len(got)} ids")
    for iid in sorted(set(expected) ^ set(got)):
        out.append(f"{iid}: {'missing from the table' if iid in expected else 'unexpected row'}")
    for iid in sorted(set(expected) & set(got)):
        e, g = expected[iid], got[iid]
        for k, v in e.items():
            gv = g[k]
            if isinstance(v, float) and gv is None:
                gv = NAN
            if not same(v, gv):
                out.append(f"{iid}.{k}: expected {v!r}, got {gv!r}")
    return out


# -- a small lake, built with the platform functions (the system under test) --------------------


def land(store: Store, deliveries: list[tuple[str, dict, int]]) -> None:
    """Write (stream, event, arrival_ms) deliveries as Firehose files, one per stream and
    arrival second, in order of arrival."""
    files: dict[tuple[str, int], list[bytes]] = {}
    for stream, ev, arrival in deliveries:
        arrival = int(math.ceil(arrival / 1000) * 1000)  # keys have second resolution
        files.setdefault((stream, arrival), []).append(orjson.dumps(ev))
    for n, ((stream, arrival), lines) in enumerate(sorted(files.items())):
        landing.write_file(store, landing.firehose_key(stream, arrival, f"{n:08d}"), lines)


def kept_by_raw_rules(deliveries: list[tuple[str, dict, int]],
                      lateness_ms: int = raw.DEFAULT_LATENESS_MS) -> dict[str, list[dict]]:
    """What the raw layer keeps, by its documented rules: an event (id, hour) counts once iff any
    copy arrived before the end of its hour + the allowed lateness (and not ahead of its time by
    more than the future tolerance)."""
    kept: dict[tuple[str, str, int], dict] = {}
    for stream, ev, arrival in deliveries:
        arrival = int(math.ceil(arrival / 1000) * 1000)
        ok = (floor_hour(ev["ts"]) + HOUR_MS + lateness_ms > arrival
              >= ev["ts"] - raw.DEFAULT_FUTURE_TOLERANCE_MS)
        key = (stream, ev[ID_FIELD[stream]], floor_hour(ev["ts"]))
        if ok and key not in kept:
            kept[key] = ev
    out: dict[str, list[dict]] = {s: [] for s in STREAMS}
    for (stream, _, _), ev in kept.items():
        row = {f: None for f, _ in raw.SPECS[stream].fields}
        row.update(ev)
        out[stream].append(row)
    return out


def build_lake(store: Store, hours: list[int]) -> None:
    """Raw partitions of every hour from the landing zone, then hour tiles, the snapshot chain and
    segment profiles, hour by hour as the assets chain them."""
    for h in hours:
        for stream in STREAMS:
            raw.write_raw_partition(store, raw.build_raw_partition(store, stream, h))
    snap, snap_id = None, ""
    for h in hours:
        # stamped and linked as the assets write them: a labeled range folds these tiles
        tile = tiles.stamped(tiles.build_user_hour_tiles(raw.read_raw(store, "impressions", h),
                                                         raw.read_raw(store, "clicks", h), h))
        store.write_parquet(tiles.tile_key(h), tile)
        snap, snap_id = profiles.fold_linked(snap, snap_id, tile, h)
        store.write_parquet(profiles.snapshot_key(h), snap)
        events = segments.hour_segment_events(store, h)
        previous = [p for g in range(h - (segments.WINDOW_HOURS - 1) * HOUR_MS, h, HOUR_MS)
                    if (p := segments.read_segment_profile(store, g)) is not None]
        store.write_parquet(segments.segment_key(h), segments.segment_profile(events, previous, h))


def labeled_table_rows(store: Store, hour_ms: int,
                       window_ms: int = DEFAULT_LABEL_WINDOW_MS) -> list[dict]:
    """`build_labeled_hour` as row dicts, times in epoch ms."""
    return oracle.rows_of(build_labeled_hour(store, hour_ms, window_ms))


def check_hours(store: Store, hours: list[int], kept: dict[str, list[dict]],
                window_ms: int = DEFAULT_LABEL_WINDOW_MS) -> list[str]:
    """All mismatches between `build_labeled_hour` and the oracle over the labeled `hours`."""
    out = []
    for h in hours:
        expected = labeled_rows(h, kept["impressions"], kept["clicks"], kept["predictions"],
                                window_ms)
        out += [f"hour {h}: {m}" for m in mismatches(expected, labeled_table_rows(store, h,
                                                                                  window_ms))]
    return out
