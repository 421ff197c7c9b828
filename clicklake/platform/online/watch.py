"""Which landing files the serving sensor asks to fold on a tick, and what it reports.

The online store's own record of folded files decides what is still to do: each tick lists the
recent landing keys of every stream and asks the store which of them are folded. So a file is
never lost because a run failed or was never launched: it is still unfolded on the next tick,
and asked again once its run is over (or `RETRY_AFTER_MS` after the request when the sensor
cannot see the run), at most `MAX_ATTEMPTS` times.

Per stream the cursor keeps the newest key seen (`newest`), the keys asked and not yet folded
(`asked`: key -> [ms asked, attempts, run key]), and the late keys already reported (`late`):

- listed: the hour folders from the one holding `newest - LOOKBACK_MS` on (`landing.hour_folders`:
  a few listings whatever the gap; the whole stream on its first tick);
- a key in that window that is neither folded nor asked is asked, unless it sorts more than
  `LOOKBACK_MS` before `newest` as the tick found it: a file visible that long after its key
  time is past the allowed lateness, which the raw layer does not wait for either. Such a file
  is reported as late (once) and not folded. Once an hour the tick also lists the day before the
  window and reports the unfolded keys found there (a file may land in any older folder);
- an asked key the listing no longer shows (deleted) is dropped with a report.

The cursor stays small: keys leave it once folded (asked) or a day past the window (late).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from clicklake.platform import landing
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS

LOOKBACK_MS = HOUR_MS
RETRY_AFTER_MS = 10 * 60_000  # without a view of runs: a request this old has failed
MAX_ATTEMPTS = 5
SWEEP_MS = 24 * HOUR_MS  # how far before the window the hourly sweep looks for late files


@dataclass
class TickPlan:
    batches: list[list[str]] = field(default_factory=list)  # keys per run, in fold order
    run_keys: list[str] = field(default_factory=list)  # one per batch
    retried: list[str] = field(default_factory=list)  # asked before, not folded: asked again
    late: list[str] = field(default_factory=list)  # reported now, never folded
    vanished: list[str] = field(default_factory=list)  # asked, then deleted before folded
    given_up: list[str] = field(default_factory=list)  # asked MAX_ATTEMPTS times, never folded
    cursor: dict = field(default_factory=dict)


def read_cursor(text: str | None) -> tuple[dict, str | None]:
    """(cursor, problem): an unreadable cursor starts over (every unfolded key is asked on the
    next tick, which is safe: the store knows what is folded), with a message saying so."""
    if not text:
        return {}, None
    try:
        raw = orjson.loads(text)
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        return {s: _entry(raw[s]) for s in raw if s in landing.STREAMS}, None
    except (orjson.JSONDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return {}, f"unreadable sensor cursor ({exc}): starting over from the store's record"


def _entry(value) -> dict:
    """A stream's cursor entry, also from the earlier forms: the newest key alone, or
    {"keys": [...], "floor": key} (keys asked in the lookback; whether folded, the store says)."""
    if isinstance(value, str):
        return {"newest": value, "asked": {}, "late": []}
    if not isinstance(value, dict):
        raise TypeError(f"a stream entry is {type(value).__name__}")
    if "keys" in value:
        keys = [k for k in value.get("keys") or [] if isinstance(k, str)]
        floor = value.get("floor")
        newest = max(keys) if keys else floor if isinstance(floor, str) else None
        return {"newest": newest, "asked": {}, "late": []}
    newest = value.get("newest")
    asked = value.get("asked") or {}
    late = value.get("late") or []
    if not (newest is None or isinstance(newest, str)) or not isinstance(asked, dict):
        raise TypeError("a stream entry of unknown shape")
    return {"newest": newest,
            "asked": {k: list(v) for k, v in asked.items() if isinstance(v, list) and len(v) == 3},
            "late": [k for k in late if isinstance(k, str)]}


def _arrival(key: str) -> int | None:
    lf = landing.parse_key(key)
    return None if lf is None else lf.arrival_ms


def _listed(store: Store, stream: str, since_ms: int | None, prefix: str,
            before_ms: int | None = None) -> list[tuple[int, str]]:
    """(arrival, key) of the stream's landing keys in the hour folders from since_ms's on (all
    of them when None), and before before_ms's hour when given; keys that say no time left out."""
    if since_ms is None:
        keys = store.list(f"{prefix}/{stream}/")
    else:
        folders = landing.hour_folders(store, stream, since_ms, prefix)
        if before_ms is not None:
            end = landing.hour_prefix(stream, before_ms, prefix)
            folders = [f for f in folders if f < end]
        keys = [k for folder in folders for k in store.list(folder)]
    return [(a, k) for k in keys if (a := _arrival(k)) is not None]


def plan_tick(store: Store, folded: Callable[[list[str]], set[str]], cursor: dict, now_ms: int,
              prefix: str = landing.DEFAULT_PREFIX, max_files: int = 2000,
              max_runs: int = 10, run_over: Callable[[str], bool | None] | None = None
              ) -> TickPlan:
    """The runs to request and what to report on a tick at `now_ms` (see the module docstring).
    `folded(keys)`: the keys the online store has folded; `run_over(run_key)`: whether the run
    asked for a key can no longer fold it (None, or no `run_over`: unknown, and
    `RETRY_AFTER_MS` after the request decides). At most `max_runs`
    runs of new keys (the oldest first; the rest on the next ticks), retries besides."""
    plan = TickPlan()
    new: list[tuple[int, str, str]] = []  # (arrival, key, stream): asked for the first time
    retries: list[tuple[int, str, int]] = []  # (arrival, key, attempt)
    streams: dict[str, tuple] = {}
    for stream in landing.STREAMS:
        entry = cursor.get(stream) or {"newest": None, "asked": {}, "late": []}
        newest, asked, late = entry["newest"], dict(entry["asked"]), set(entry["late"])
        newest_ms = None if newest is None else _arrival(newest)
        since = None if newest_ms is None else newest_ms - LOOKBACK_MS
        listed = _listed(store, stream, since, prefix)
        window = None if since is None else since - since % HOUR_MS
        swept: list[tuple[int, str]] = []
        sweep = window is not None and entry.get("swept") != now_ms // HOUR_MS
        if sweep:  # hourly: files landed in folders older than the window
            swept = _listed(store, stream, window - SWEEP_MS, prefix, before_ms=window)
        done = folded([k for _, k in listed + swept] + list(asked))
        for k in [k for k in asked if k in done]:
            del asked[k]
        shown = {k for _, k in listed}
        for a, k in listed:
            if k in done or k in late or k in asked:
                continue
            if since is not None and a < since:
                late.add(k)
                plan.late.append(k)
            else:
                new.append((a, k, stream))
        for a, k in swept:
            if k not in done and k not in late and k not in asked:
                late.add(k)
                plan.late.append(k)
        for k, (at, attempts, run_key) in list(asked.items()):
            a = _arrival(k)
            if k not in shown and (window is None or a is None or a >= window):
                del asked[k]  # deleted before it was folded
                plan.vanished.append(k)
                continue
            over = run_over(run_key) if run_over is not None and run_key else None
            if over is None:  # no view of that run (none yet, or no run view at all)
                over = now_ms - at >= RETRY_AFTER_MS
            if not over:
                continue
            if attempts >= MAX_ATTEMPTS:
                del asked[k]
                plan.given_up.append(k)
                continue
            asked[k] = [now_ms, attempts + 1, ""]
            retries.append((a or 0, k, attempts + 1))
            plan.retried.append(k)
        streams[stream] = (newest, asked, late, listed, sweep, entry.get("swept"))
    new.sort()
    kept = new[:max_runs * max_files]
    cutoff = (kept[-1][0], kept[-1][1]) if len(kept) < len(new) else None
    asks = sorted([(a, k, 1) for a, k, _ in kept] + retries)
    for stream, (newest, asked, late, listed, sweep, swept_at) in streams.items():
        for a, k, s in kept:
            if s == stream:
                asked[k] = [now_ms, 1, ""]
        # the newest key seen, but not past the last one asked when some wait for later ticks
        seen = [(a, k) for a, k in listed if cutoff is None or (a, k) <= cutoff]
        if newest is not None:
            seen.append((_arrival(newest) or 0, newest))
        top = max(seen, default=None)
        floor_ms = None if top is None else top[0] - LOOKBACK_MS - SWEEP_MS
        plan.cursor[stream] = {
            "newest": None if top is None else top[1], "asked": asked,
            "late": sorted(k for k in late if floor_ms is None or (_arrival(k) or 0) >= floor_ms),
            "swept": now_ms // HOUR_MS if sweep else swept_at}
    # Retries run apart from new files, by attempt: a file that fails its runs cannot take the
    # others down with it for long.
    groups: dict[int, list[tuple[int, str, int]]] = {}
    for ask in asks:
        groups.setdefault(ask[2], []).append(ask)
    chunks = [g[i:i + max_files] for _, g in sorted(groups.items())
              for i in range(0, len(g), max_files)]
    for batch in chunks:
        keys = [k for _, k, _ in batch]
        run_key = "fold-" + hashlib.sha256("\n".join(
            k if n == 1 else f"{k}#{n}" for _, k, n in batch).encode()).hexdigest()[:16]
        plan.batches.append(keys)
        plan.run_keys.append(run_key)
        for entry in plan.cursor.values():
            for k in keys:
                if k in entry["asked"]:
                    entry["asked"][k][2] = run_key
    return plan
