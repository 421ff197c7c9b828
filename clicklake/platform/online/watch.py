"""Which landing files the serving sensor asks to fold on a tick, and what it reports.

The online store's own record of folded files decides what is still to do: each tick lists the
recent landing keys of every stream and asks the store which of them are folded. So a file is
never lost because a run failed or was never launched: it is still unfolded on the next tick,
and asked again once its run is over (or `RETRY_AFTER_MS` after the request when the sensor
cannot see the run), after a back-off that doubles with each attempt (an outage of the fold does
not spend them all in minutes), at most `MAX_ATTEMPTS` times, in ever smaller runs (a file that
fails every run it is in cannot take the others down with it), at most `max_runs` retry runs a
tick.

Per stream:
- listed: the hour folders from the one holding `newest - lookback` on (`landing.hour_folders`:
  a few listings whatever the gap; the whole stream on its first tick);
- a listed key neither folded, asked, nor reported is asked, unless the hour of its key time
  starts more than the lookback (`lookback_ms`: an hour, the allowed lateness and Firehose's
  buffer) before `newest` as the tick found it: the raw hour of its key time was built then
  (its landing window closed, plus the buffer), so the raw layer does not hold the file's events
  of that hour either (nor of earlier hours, built before). Such a file is reported as late
  (once) and not folded. Once an hour the tick also lists the day before the
  window and reports the unfolded keys found there (a file may land in any older folder), and
  once a day the older folders are swept too, a month of one stream a tick (`_deep_step`), from
  the newest month back to the oldest, for files that landed even later: nothing unfolded is
  left unreported, however old its folder;
- a key whose time is ahead of the clock (more than the raw layer's future tolerance) waits for
  the clock: folded, it would move the store's watermark, and so its horizon, into the future;
- an asked key the listing no longer shows (deleted) is dropped with a report.

At most `max_runs` runs are in flight: a backlog is asked over several ticks, oldest first.

The cursor: per stream the newest key seen, the late and given-up keys reported (kept until the
daily sweep finds them folded, by a rebuild, or deleted: so each is reported once, however
long it stays), the hour of the last sweep, the daily sweep's day and the month it reached; and
per run in flight its request time, attempt and keys. `plan_tick` takes and gives it with plain
key lists; `dump_cursor` stores the lists compressed (keys share long prefixes: ~10 bytes a key)
and `read_cursor` reads them back. A sensor without its cursor rebuilds the runs part from its
runs' records (`cursor_from_runs`).
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson

from clicklake.platform import landing
from clicklake.platform.online.fold import stream_of_key
from clicklake.platform.raw import DEFAULT_FUTURE_TOLERANCE_MS, DEFAULT_LATENESS_MS
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, floor_hour, to_datetime


def lookback_ms(allowed_lateness_ms: int) -> int:
    """How long after the start of its key time's hour a file may become visible and still be
    folded: until the raw hour of its key time is built (the hour, the allowed lateness,
    Firehose's buffer). A fixed hour after the key time reported files as late whose events the
    raw layer kept (one visible 75 min after its key time, with the default hour of lateness)."""
    return HOUR_MS + allowed_lateness_ms + landing.FIREHOSE_BUFFER_MS


LOOKBACK_MS = lookback_ms(DEFAULT_LATENESS_MS)
RETRY_AFTER_MS = 10 * 60_000  # without a view of the run: a request this old has failed
MAX_ATTEMPTS = 5
RETRY_BACKOFF_MS = 5 * 60_000  # attempt n is asked at least 5 min * 2**(n - 1) after attempt n-1
STUCK_MS = 2 * HOUR_MS  # a run still starting or running this long after its request is dead
# `run_over`'s answer for a run waiting in the run queue: never taken as dead, however long it
# waits (behind a rebuild holding the fold's one slot, say): a retry would only queue behind it
QUEUED = "queued"
SWEEP_MS = 24 * HOUR_MS  # how far before the window the hourly sweep looks for late files
DAY_MS = 24 * HOUR_MS  # the daily sweep of older folders starts once a UTC day
AHEAD_MS = DEFAULT_FUTURE_TOLERANCE_MS  # keys further ahead of the clock wait for it
RETRY_SHRINK = 16  # attempt n runs at most max_files // 16 ** (n - 1) files (1 from the 4th)
_VERSION = 4


@dataclass
class TickPlan:
    batches: list[list[str]] = field(default_factory=list)  # keys per run, in fold order
    run_keys: list[str] = field(default_factory=list)  # one per batch
    retried: list[str] = field(default_factory=list)  # asked before, not folded: asked again
    late: list[str] = field(default_factory=list)  # reported now, never folded
    vanished: list[str] = field(default_factory=list)  # asked, then deleted before folded
    given_up: list[str] = field(default_factory=list)  # asked MAX_ATTEMPTS times, never folded
    cursor: dict = field(default_factory=dict)


def _pack(keys: list[str]) -> str:
    if not keys:
        return ""
    return base64.b64encode(zlib.compress("\n".join(keys).encode(), 6)).decode()


def _unpack(text: str) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"packed keys are {type(text).__name__}")
    return zlib.decompress(base64.b64decode(text)).decode().split("\n") if text else []


def _stream_entry(newest=None, late=(), gone=(), swept=None, deep=None) -> dict:
    """A stream's cursor entry (late and given-up keys as lists; `deep`: the daily sweep's
    [day, month reached (None: that day's sweep is done)], None before the first)."""
    return {"newest": newest, "late": list(late), "gone": list(gone), "swept": swept,
            "deep": deep}


def dump_cursor(cursor: dict) -> str:
    """The cursor `plan_tick` gave, as the sensor stores it: every key list compressed."""
    return orjson.dumps({
        "v": _VERSION,
        "streams": {s: e | {"late": _pack(e["late"]), "gone": _pack(e["gone"])}
                    for s, e in cursor.get("streams", {}).items()},
        "runs": {rk: r | {"keys": _pack(r["keys"])} for rk, r in cursor.get("runs", {}).items()},
    }).decode()


def read_cursor(text: str | None) -> tuple[dict, str | None]:
    """(cursor, problem): `dump_cursor`'s text read back, key lists unpacked. An unreadable
    cursor starts over (every unfolded key is asked on the next tick, which is safe: the store
    knows what is folded), with a message saying so. Earlier forms (per stream: the newest key
    alone, or {"keys": [...], "floor": key}) go on from their newest key."""
    if not text:
        return {}, None
    try:
        raw = orjson.loads(text)
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        if raw.get("v") in (3, _VERSION):  # 3: no daily sweep yet
            streams = {s: _stream_entry(_str_or_none(e["newest"]), _unpack(e["late"]),
                                        _unpack(e["gone"]), e["swept"] and int(e["swept"]),
                                        _deep_state(e.get("deep")))
                       for s, e in raw["streams"].items() if s in landing.STREAMS}
            runs = {str(rk): {"at": int(r["at"]), "n": int(r["n"]), "keys": _unpack(r["keys"])}
                    for rk, r in raw["runs"].items()}
            return {"v": _VERSION, "streams": streams, "runs": runs}, None
        if "v" in raw:  # another version's (a rollback), or not ours: its runs are unknown
            raise ValueError(f"cursor version {raw['v']!r}, not {_VERSION}")
        return {"v": _VERSION, "streams": {s: _legacy(raw[s]) for s in raw
                                           if s in landing.STREAMS}, "runs": {}}, None
    except (ValueError, TypeError, KeyError, AttributeError, zlib.error) as exc:
        return {}, f"unreadable sensor cursor ({exc!r}): starting over from the store's record"


def cursor_from_runs(runs: Iterable[tuple[str, int, int, list[str]]]) -> dict:
    """A cursor for a sensor that lost its own (reset by hand, unreadable): the runs it asked
    for, as its run records tell them ((run key, request time, attempt, keys)), each key in the
    latest run that asked for it. Its streams start afresh, from the store's watermark, but
    files of runs still queued or running wait for them, and those of failed runs are asked
    again, instead of both being reported late."""
    latest: dict[str, tuple[int, int, str]] = {}
    for run_key, at, attempt, keys in runs:
        for k in keys:
            if k not in latest or (at, attempt) > latest[k][:2]:
                latest[k] = (at, attempt, run_key)
    out: dict[str, dict] = {}
    for k, (at, attempt, run_key) in sorted(latest.items()):
        out.setdefault(run_key, {"at": at, "n": attempt, "keys": []})["keys"].append(k)
    return {"v": _VERSION, "streams": {}, "runs": out}


def _deep_state(value) -> list | None:
    if value is None:
        return None
    day, month = value
    return [int(day), _str_or_none(month)]


def _str_or_none(value) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"a key is {type(value).__name__}")
    return value


def _legacy(value) -> dict:
    if isinstance(value, str):
        return _stream_entry(value)
    if not isinstance(value, dict):
        raise TypeError(f"a stream entry is {type(value).__name__}")
    if isinstance(value.get("newest"), str):  # {"newest": key, "asked": ..., ...}
        return _stream_entry(value["newest"])
    keys = [k for k in value.get("keys") or [] if isinstance(k, str)]
    floor = value.get("floor")
    return _stream_entry(max(keys) if keys else floor if isinstance(floor, str) else None)


def _arrival(key: str) -> int | None:
    lf = landing.parse_key(key)
    return None if lf is None else lf.arrival_ms


def _listed(store: Store, stream: str, since_ms: int | None, prefix: str,
            before_ms: int | None = None) -> list[tuple[int, str]]:
    """(arrival, key) of the stream's landing keys in the hour folders from since_ms's on (all
    of them when None), and before before_ms's hour when given; keys that are no landing file
    (`landing.layout_file`) left out."""
    if since_ms is None:
        keys = store.list(f"{prefix}/{stream}/")
    else:
        folders = landing.hour_folders(store, stream, since_ms, prefix)
        if before_ms is not None:
            end = landing.hour_prefix(stream, before_ms, prefix)
            folders = [f for f in folders if f < end]
        keys = [k for folder in folders for k in store.list(folder)]
    # Only keys in the hour folders the raw layer reads: the fold skips any other.
    return [(f[0].arrival_ms, k) for k in keys if (f := landing.layout_file(k, prefix))
            is not None]


@dataclass
class _Stream:
    """One stream on one tick."""

    entry: dict  # its cursor entry
    since: int | None  # keys before this are late (None: nothing seen, none is)
    window: int | None  # the first hour folder listed (None: the whole stream)
    listed: list[tuple[int, str]]  # (arrival, key) from the window on
    swept: list[tuple[int, str]]  # the day before the window, on the hourly sweep
    sweep: bool  # this tick is the hour's sweep
    late: set[str] = field(default_factory=set)  # reported late, before or now
    gone: set[str] = field(default_factory=set)  # given up, before or now


def _look(store: Store, entry: dict, stream: str, now_ms: int, prefix: str,
          watermark_ms: int | None, lookback: int) -> _Stream:
    newest = entry["newest"]
    newest_ms = watermark_ms if newest is None else _arrival(newest)
    since = None if newest_ms is None else newest_ms - lookback
    window = None if since is None else floor_hour(since)
    sweep = window is not None and entry["swept"] != now_ms // HOUR_MS
    return _Stream(entry, since, window, _listed(store, stream, since, prefix),
                   _listed(store, stream, window - SWEEP_MS, prefix, before_ms=window)
                   if sweep else [], sweep, set(entry["late"]), set(entry["gone"]))


def _month(ms: int) -> str:
    return f"{to_datetime(ms):%Y/%m}"


@dataclass
class _Deep:
    """One step of a stream's daily sweep of the folders older than the hourly sweep's."""

    before: int  # it answers for keys of arrival before this (the hourly sweep's first hour)
    month: str | None  # the month listed ("YYYY/MM"); None: no month left, the sweep is done
    upper: str | None  # the month the step before listed (None: this is the sweep's first)
    listed: list[tuple[int, str]]  # (arrival, key) of `month`, arrival before `before`
    state: list  # the cursor's `deep` after this step

    def covers(self, arrival: int | None) -> bool:
        """Whether every key of this arrival that exists was listed by this step: in its month,
        or in the months between it and the month before, which have no folder."""
        if arrival is None or arrival >= self.before:
            return False
        m = _month(arrival)
        return (self.month is None or m >= self.month) and (self.upper is None or m < self.upper)


def _deep_due(entry: dict, today: int) -> bool:
    day, reached = entry.get("deep") or (None, None)
    return reached is not None or day != today


def _deep_step(store: Store, stream: str, entry: dict, before: int, today: int,
               prefix: str) -> _Deep:
    """The next month of the stream's daily sweep: the newest month folder before `before`
    (its first step) or before the month the step before listed. A few listings: the years,
    the months of the newest years, and one month's keys."""
    day, reached = entry.get("deep") or (None, None)
    if reached is None:
        day = today  # a new sweep, from the newest month
    top = reached or _month(before - 1)
    root = f"{prefix}/{stream}/"
    for year in reversed([y for y in store.subdirs(root) if len(y) == 4 and y.isdigit()
                          and y <= top[:4]]):
        months = [f"{year}/{m}" for m in store.subdirs(f"{root}{year}/")
                  if len(m) == 2 and m.isdigit()]
        months = [m for m in months if (m < top if reached else m <= top)]
        if months:
            month = months[-1]
            listed = [(f[0].arrival_ms, k) for k in store.list(f"{root}{month}/")
                      if (f := landing.layout_file(k, prefix)) is not None
                      and f[0].arrival_ms < before]
            return _Deep(before, month, reached, listed, [day, month])
    return _Deep(before, None, reached, [], [day, None])


def plan_tick(store: Store, folded: Callable[[list[str]], set[str]], cursor: dict, now_ms: int,
              prefix: str = landing.DEFAULT_PREFIX, max_files: int = 2000, max_runs: int = 4,
              run_over: Callable[[str], bool | str | None] | None = None,
              watermark_ms: int | None = None, lookback: int = LOOKBACK_MS) -> TickPlan:
    """The runs to request and what to report on a tick at `now_ms` (see the module docstring).
    `folded(keys)`: the keys the online store has folded; `run_over(run_key)`: whether the run
    asked for some keys can no longer fold them (None, or no `run_over`: unknown, and
    `RETRY_AFTER_MS` after the request decides). `cursor`: as `read_cursor` or the last tick's
    plan gives it (`plan.cursor`: store it with `dump_cursor`). At most `max_runs` runs of new
    keys in flight
    (the oldest keys first, the rest on later ticks); retries besides. `watermark_ms`: the
    store's (its newest folded key time): where a stream the cursor does not know (a reset
    cursor) starts, so files reported late before are not folded now. `lookback`:
    `lookback_ms` of the deployment's allowed lateness."""
    plan = TickPlan()
    runs_in = cursor.get("runs", {})
    run_files = {rk: run["keys"] for rk, run in runs_in.items()}
    streams = {s: _look(store, cursor.get("streams", {}).get(s) or _stream_entry(), s, now_ms,
                        prefix, watermark_ms, lookback) for s in landing.STREAMS}
    # One stream's month of the daily sweep a tick: its listing and `folded` query stay small
    # whatever the age of the landing zone (a year of 5-minute files is ~9 k keys a month).
    deep: dict[str, _Deep] = {}
    today = now_ms // DAY_MS
    for s, st in streams.items():
        if st.window is not None and _deep_due(st.entry, today):
            deep[s] = _deep_step(store, s, st.entry, st.window - SWEEP_MS, today, prefix)
            break
    every = [k for st in streams.values() for _, k in st.listed + st.swept]
    every += [k for d in deep.values() for _, k in d.listed]
    done = folded(list(dict.fromkeys(every + [k for ks in run_files.values() for k in ks])))

    # Runs asked before: keys folded are done; the rest wait for their run, or are asked again.
    in_flight: dict[str, list[str]] = {}
    candidates: list[tuple[int, int, str, str]] = []  # (attempt, arrival, key, its run's key)
    shown = {k for st in streams.values() for _, k in st.listed}
    for rk, run in runs_in.items():
        left = []
        for k in run_files[rk]:
            st, a = streams.get(stream_of_key(k, prefix)), _arrival(k)
            # A key no landing file (asked before the fold read only the hour folders'): the
            # fold skips it, so asking again would only fail.
            if k in done or landing.layout_file(k, prefix) is None:
                continue
            if k not in shown and (st is None or st.window is None or a is None
                                   or a >= st.window):
                plan.vanished.append(k)  # deleted before it was folded
            else:
                left.append(k)
        if not left:
            continue
        status, age = run_over(rk) if run_over is not None else None, now_ms - run["at"]
        # Over (or unknown for RETRY_AFTER_MS, or running for STUCK_MS: its worker died; not
        # queued, which waits its turn), and then a back-off that doubles with each attempt: an
        # outage of the fold must not spend every attempt in minutes.
        wait = RETRY_BACKOFF_MS * 2 ** (run["n"] - 1)
        over = age >= RETRY_AFTER_MS if status is None else status is True
        stuck = age >= STUCK_MS and status != QUEUED
        if not ((over or stuck) and age >= wait):
            in_flight[rk] = left
            continue
        for k in left:
            if k not in shown and not store.exists(k):  # older than the window, and deleted
                plan.vanished.append(k)
            elif run["n"] >= MAX_ATTEMPTS:
                plan.given_up.append(k)
                if (st := streams.get(stream_of_key(k, prefix))) is not None:
                    st.gone.add(k)
            else:
                candidates.append((run["n"] + 1, _arrival(k) or 0, k, rk))
    # At most max_runs retry runs a tick (files of a run that failed are asked in ever smaller
    # runs); the others wait in their run for the next tick.
    retries: list[tuple[int, list[str]]] = []
    candidates.sort()
    i = 0
    while i < len(candidates):
        attempt = candidates[i][0]
        size = max(1, max_files // RETRY_SHRINK ** (attempt - 1))
        chunk = [c for c in candidates[i:i + size] if c[0] == attempt]
        i += len(chunk)
        if len(retries) < max_runs:
            retries.append((attempt, [k for _, _, k, _ in chunk]))
            plan.retried += [k for _, _, k, _ in chunk]
        else:
            for _, _, k, rk in chunk:
                in_flight.setdefault(rk, []).append(k)
    busy = {k for keys in in_flight.values() for k in keys} | set(plan.retried) | done

    for s, d in deep.items():
        st = streams[s]
        # Reported keys are forgotten once folded (a rebuild) or deleted, not before: the
        # daily sweep would report them again.
        there = {k for _, k in d.listed if k not in done}
        st.late = {k for k in st.late if k in there or not d.covers(_arrival(k))}
        st.gone = {k for k in st.gone if k in there or not d.covers(_arrival(k))}

    new: list[tuple[int, str]] = []
    for s, st in streams.items():
        for a, k in st.listed:
            if k in busy or k in st.late or k in st.gone or a > now_ms + AHEAD_MS:
                continue  # (ahead of the clock: waits for it)
            # late once the raw hour of its key time is built: that hour's start + lookback
            if st.since is not None and floor_hour(a) < st.since:
                plan.late.append(k)
                st.late.add(k)
            else:
                new.append((a, k))
        for _, k in st.swept + (deep[s].listed if s in deep else []):  # all before the window
            if k not in busy and k not in st.late and k not in st.gone:
                plan.late.append(k)
                st.late.add(k)
    new.sort()
    room = max(0, max_runs - len(in_flight)) * max_files
    kept, cutoff = new[:room], None
    if len(kept) < len(new):  # the rest on later ticks: `newest` stays at the last one asked
        cutoff = kept[-1] if kept else (new[0][0] - 1, "")

    out_streams = {}
    for stream, st in streams.items():
        seen = [(a, k) for a, k in st.listed
                if a <= now_ms + AHEAD_MS and (cutoff is None or (a, k) <= cutoff)]
        if st.entry["newest"] is not None:
            seen.append((_arrival(st.entry["newest"]) or 0, st.entry["newest"]))
        top = max(seen, default=None)
        out_streams[stream] = _stream_entry(
            None if top is None else top[1], sorted(st.late), sorted(st.gone),
            now_ms // HOUR_MS if st.sweep else st.entry["swept"],
            deep[stream].state if stream in deep else st.entry.get("deep"))

    out_runs = {rk: runs_in[rk] | {"keys": keys} for rk, keys in in_flight.items()}
    fresh = [(1, [k for _, k in kept[i:i + max_files]]) for i in range(0, len(kept), max_files)]
    for attempt, keys in fresh + retries:
        run_key = "fold-" + hashlib.sha256("\n".join(
            keys if attempt == 1 else [*keys, f"#{attempt}"]).encode()).hexdigest()[:16]
        plan.batches.append(keys)
        plan.run_keys.append(run_key)
        out_runs[run_key] = {"at": now_ms, "n": attempt, "keys": keys}
    plan.cursor = {"v": _VERSION, "streams": out_streams, "runs": out_runs}
    return plan
