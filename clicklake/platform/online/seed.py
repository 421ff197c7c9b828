"""Rebuild the online state from the lake's hourly user profile snapshot instead of every landing
file: a landing zone whose old files have expired can still be rebuilt, and a long history costs
one snapshot read instead of a refold of every event.

The seed is the state an arrival-order fold would hold, for every read it can still answer, once
the events of hours up to P (the snapshot's hour) were folded and their hours had fallen behind
the horizon, so that only their sums are kept (`user_state.trim`). With S = P + 1 h:

- per user (the snapshot's row): lifetime totals, first time, last impression and click times
  (`arch`), the snapshot's ring of hourly tiles as three-count tiles, per-campaign lifetime counts
  and the domains (first times 0: before every read), the latest prediction of the 24 hours
  before S (`plast`), and the document valid from S;
- hour P's raw impressions as events of their users (`ev`) and in the impression index: a click
  of hour S takes its segments from an impression of its own hour or the hour before (the fold
  keeps them until the horizon passes them, as it would have);
- the segment counters of the 24 hours before S, from the segment profiles (`hour_*` counts);
- a record of every landing file that cannot hold an event at or after S (arrival before
  S - future tolerance), so the sensor neither asks for them nor reports them late.

Then the landing files from there on are folded from S on: their events before S are in the
snapshot already, so they are left out and counted as `in_snapshot`. The state records the seed
(`fold.seed_mark`) before anything is read, and marks it done once that fold is over: every later
fold leaves out events before S too, and a rebuild that did not finish (a run died while seeding or
folding) refuses any fold until it is seeded again (`IncompleteSeed`): the sensor would not ask
for files it already passed, so resuming is the next seed's job.

From the horizon on, the answers equal those of the state that folded every landing file (sums of
spend within float rounding: the same costs added in another order), provided the lake holds what
the batch path holds: the snapshot chain starts no later than the landing zone's events, and the
raw partitions were built once their landing windows had closed, with the fold's lateness rules.
`check_seed` checks what the lake shows (the chain's start, every input partition); the
`serving_lookup` asset also checks the materializations of the last day's raw partitions and of
the snapshot. Older raw partitions built too early are trusted as the batch path trusts them: the
seeded state then agrees with the lake rather than with a refold.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.platform import landing
from clicklake.platform.enrich import countries
from clicklake.platform.lookup import LookupTable, NoSnapshots
from clicklake.platform.online import segment_state as seg
from clicklake.platform.online import user_head
from clicklake.platform.online import user_state as us
from clicklake.platform.online.fold import (
    DEFAULT_RULES,
    HEAD,
    IMPRESSION,
    SEED,
    SEED_KEY,
    USER,
    FoldReport,
    Rebuilt,
    fold_files,
    horizon_ms,
    order_files,
    parse_file,
)
from clicklake.platform.online.state import Commit, Fenced, StateStore
from clicklake.platform.profiles import pending_refold, snapshot_key
from clicklake.platform.raw import Rules, raw_key, read_raw
from clicklake.platform.segments import read_segment_profile, segment_key
from clicklake.platform.storage import Store
from clicklake.platform.tiles import ts_ms
from clicklake.platform.timeutil import HOUR_MS, iso

SEED_STREAM = "seed"  # the stream named in the seed commits' own records
USERS_PER_COMMIT = 5_000
FILES_PER_COMMIT = 2_000
_SNAPSHOT_COLUMNS = ["user_id", "first_ts", "last_impression_ts", "last_click_ts", "impressions",
                     "clicks", "spend", "campaigns", "campaign_impressions", "campaign_clicks",
                     "domains", "recent_hours", "recent_impressions", "recent_clicks",
                     "recent_spend"]


@dataclass
class SeedReport:
    hour_ms: int  # the snapshot's partition hour P (the state starts at P + 1 h)
    users: int = 0
    impressions: int = 0  # hour P's, kept as events and in the impression index
    segment_rows: int = 0
    files_in_snapshot: int = 0  # landing files recorded without being read
    seconds: float = 0.0  # the seed's own time, before the fold
    fold: FoldReport = field(default_factory=FoldReport)  # the landing files folded after


class SeedUnavailable(LookupError):
    """No snapshot can seed the state (the message says why): fold every landing file."""


@dataclass
class _LakeView:
    """What choosing and checking a seed look at: the landing files, the snapshot chain's
    hours and start, the horizon of the newest file, and the files' events before the chain."""

    hours: list[int]
    history: int
    horizon: int
    early: dict[str, int | None]
    refold_from: int | None  # the first snapshot a pending refold has yet to reach


def _view(store: Store, keys: Iterable[str], rules: Rules, lake_prefix: str,
          landing_prefix: str) -> _LakeView:
    files, _ = order_files(keys, landing_prefix)
    if not files:
        raise SeedUnavailable("the landing zone holds no file")
    lookup = LookupTable(store, lake_prefix)
    hours = lookup.snapshot_hours(refresh=True).tolist()
    if not hours:
        raise SeedUnavailable(f"no user_profiles snapshot under {lake_prefix}/profiles/user/")
    history = lookup.history_start()
    return _LakeView(hours, history, horizon_ms(max(lf.arrival_ms for lf, _ in files), rules),
                     _before_history(store, files, history, rules),
                     pending_refold(store, lake_prefix))


def seed_hour(store: Store, keys: Iterable[str], rules: Rules = DEFAULT_RULES,
              lake_prefix: str = "lake", landing_prefix: str = landing.DEFAULT_PREFIX) -> int:
    """The latest snapshot hour P that can seed the state for `keys` (the landing files), by
    `check_seed`. Raises `SeedUnavailable` saying why none can."""
    view = _view(store, keys, rules, lake_prefix, landing_prefix)
    usable = sorted((h for h in view.hours if h + HOUR_MS <= view.horizon), reverse=True)
    if not usable:
        raise SeedUnavailable(f"no user_profiles snapshot ends before the online horizon "
                              f"{iso(view.horizon)}")
    why = None
    for p in usable:
        try:
            _check(store, p, view, lake_prefix)
            return p
        except SeedUnavailable as exc:
            why = why or exc
    raise why


def check_seed(store: Store, keys: Iterable[str], p: int, rules: Rules = DEFAULT_RULES,
               lake_prefix: str = "lake", landing_prefix: str = landing.DEFAULT_PREFIX) -> None:
    """Raise `SeedUnavailable` unless snapshot `p` can seed the state for `keys` exactly: it
    exists and ends at or before the horizon of the newest file; the snapshot chain starts
    no later than the files' impressions and clicks (the few files that could hold older ones
    are read), and than their predictions of the 24 hours before its end; and every lake input
    of `_seed` is there (raw impressions of p; raw predictions and segment profiles of the 24
    hours before its end, from the history's start on)."""
    view = _view(store, keys, rules, lake_prefix, landing_prefix)
    if p + HOUR_MS > view.horizon:
        raise SeedUnavailable(f"the snapshot of {iso(p)} ends after the online horizon")
    if p not in view.hours:
        raise SeedUnavailable(f"no user_profiles snapshot of {iso(p)}")
    _check(store, p, view, lake_prefix)


def landing_gap(store: Store, keys: Iterable[str], rules: Rules = DEFAULT_RULES,
                lake_prefix: str = "lake", landing_prefix: str = landing.DEFAULT_PREFIX
                ) -> str | None:
    """Why folding the landing files `keys` from scratch would not rebuild the lake's history
    (the files of its first hours have expired: the landing zone's retention), or None when it
    would, or the lake has no snapshot to say where its history starts."""
    try:
        history = LookupTable(store, lake_prefix).history_start()
    except NoSnapshots:
        return None
    files, _ = order_files(keys, landing_prefix)
    first = min((lf.arrival_ms for lf, _ in files), default=None)
    # A file of the history's first hour arrives before its end plus the allowed lateness
    # (raw's rule); hours before the first file that hold no event (a chain started on empty
    # hours) lose nothing.
    covered = history + HOUR_MS + rules.allowed_lateness_ms
    if first is not None and first < covered:
        return None
    h = history
    while h < (covered if first is None else first - first % HOUR_MS):
        if any(store.exists(k) and store.parquet_file(k).metadata.num_rows
               for k in (raw_key(s, h, lake_prefix) for s in ("impressions", "clicks"))):
            break
        h += HOUR_MS
    else:
        return None
    oldest = "holds no file" if first is None else f"starts at {iso(first)}"
    return (f"the landing zone {oldest}, while the lake's history starts at {iso(history)}: "
            "the files before have expired (or were deleted), and a refold of those left "
            "would lose their events")


def _before_history(store: Store, files: list, history: int, rules: Rules
                    ) -> dict[str, int | None]:
    """Per stream, the latest accepted event time before `history` in the landing files (None:
    none). Only a file that arrived before history + 1 h + lateness can hold one (raw's rule):
    those few are read; one deleted since the listing holds nothing any more."""
    out: dict[str, int | None] = dict.fromkeys(landing.STREAMS)
    for lf, stream in files:
        if lf.arrival_ms >= history + HOUR_MS + rules.allowed_lateness_ms:
            continue
        try:
            data = store.read_bytes(lf.key)
        except FileNotFoundError:
            continue
        older = [r[1] for r in parse_file(data, stream, lf.arrival_ms, rules).rows
                 if r[1] < history]
        if older:
            out[stream] = max(older + [out[stream] or older[0]])
    return out


def _check(store: Store, p: int, view: _LakeView, lake_prefix: str) -> None:
    s, history, early = p + HOUR_MS, view.history, view.early
    pending = view.refold_from
    if pending is not None and p >= pending:
        raise SeedUnavailable(
            f"the user_profiles snapshots from {iso(pending)} are being refolded (a refold "
            "that did not finish: the chain's next run finishes it); the snapshot of "
            f"{iso(p)} may lack events")
    for stream in ("impressions", "clicks"):
        if early[stream] is not None:
            raise SeedUnavailable(
                f"the user_profiles chain starts at {iso(history)}, but landing files hold "
                f"{stream} from before it (up to {iso(early[stream])}): those are in no snapshot")
    if early["predictions"] is not None and early["predictions"] >= s - us.PREDICTION_LOOKBACK_MS:
        raise SeedUnavailable(
            f"landing files hold predictions from before the lake's history ({iso(history)}) "
            f"that the snapshot of {iso(p)} would still read (up to "
            f"{iso(early['predictions'])})")
    missing = [] if store.exists(raw_key("impressions", p, lake_prefix)) else [
        f"raw_impressions {iso(p)}"]
    for h in range(max(history, s - us.PREDICTION_LOOKBACK_MS), s, HOUR_MS):
        if not store.exists(raw_key("predictions", h, lake_prefix)):
            missing.append(f"raw_predictions {iso(h)}")
        if not store.exists(segment_key(h, lake_prefix)):
            missing.append(f"segment_profiles {iso(h)}")
    if missing:
        raise SeedUnavailable(f"the snapshot of {iso(p)} lacks {', '.join(missing[:4])}"
                              f"{' ...' if len(missing) > 4 else ''}")


def rebuild_from_snapshot(state: StateStore, store: Store, keys: Iterable[str], p: int,
                          rules: Rules = DEFAULT_RULES, lake_prefix: str = "lake",
                          landing_prefix: str = landing.DEFAULT_PREFIX,
                          files_per_commit: int = FILES_PER_COMMIT) -> SeedReport:
    """Clear `state`, seed it from snapshot `p` (see the module docstring) and fold the landing
    files of `keys` that may hold events at or after p + 1 h. `p` must end at or before the
    horizon of the newest file (`seed_hour` picks the latest such snapshot whose inputs exist)."""
    s = p + HOUR_MS
    files, _ = order_files(keys, landing_prefix)
    newest = max((lf.arrival_ms for lf, _ in files), default=None)
    if newest is None or s > horizon_ms(newest, rules):
        raise ValueError(f"the snapshot of {iso(p)} ends after the online horizon of the "
                         "landing files: reads from the horizon on would miss its events")
    t0 = time.perf_counter()
    cut = s - rules.future_tolerance_ms  # a file that arrived before it holds only ts < s
    unread = [(lf.key, lf.arrival_ms, {"stream": stream, "lines": 0, "events": 0,
                                       "quarantined": {}, "unread": True})
              for lf, stream in files if lf.arrival_ms < cut]
    report = SeedReport(p, files_in_snapshot=len(unread))
    # Marked unfinished with the clear, before anything is read: a run that dies from here on
    # leaves a state that refuses every fold but the next rebuild's (`fold.IncompleteSeed`).
    run = uuid.uuid4().hex
    state.clear(keep=(SEED, SEED_KEY, s, _mark(p, False, run)))
    _commit(state, _seed_commit(p, "start", run))
    _seed(state, store, p, lake_prefix, report, unread, run)
    report.seconds = time.perf_counter() - t0
    report.fold = fold_files(state, store, [lf.key for lf, _ in files if lf.arrival_ms >= cut],
                             rules, landing_prefix, files_per_commit,
                             seeding=orjson.loads(_mark(p, False, run)))
    _commit(state, _seed_commit(p, "done", run, done=True))  # only now may other runs fold
    return report


def _seed_commit(p: int, name: str, run: str, done: bool = False) -> Commit:
    """A commit of the seed of snapshot p by rebuild `run`, named `name`, applied only while
    the store holds that rebuild's mark; with `done`, it marks the seed done."""
    s = p + HOUR_MS
    commit = Commit(expect=(SEED, SEED_KEY, _mark(p, False, run)))
    commit.record(f"{SEED_STREAM}/user_profiles/{iso(p)}/{name}", s - 1,
                  {"stream": SEED_STREAM, "lines": 0, "events": 0, "quarantined": {}})
    if done:
        commit.put(SEED, SEED_KEY, s, _mark(p, True, run))
    return commit


def _mark(p: int, done: bool, run: str) -> bytes:
    """The seed mark (`fold.seed_mark`) of rebuild `run` (its own id: a run another rebuild
    overtook commits nothing more, `fold.Rebuilt`)."""
    return orjson.dumps({"p": p, "start": p + HOUR_MS, "done": done, "run": run})


def refold_mark(run: str) -> bytes:
    """The mark of refold `run` while it is under way (its own id, as `_mark`'s)."""
    return orjson.dumps({"refold": True, "done": False, "run": run})


def refold_all(state: StateStore, store: Store, keys: Iterable[str],
               rules: Rules = DEFAULT_RULES, landing_prefix: str = landing.DEFAULT_PREFIX,
               files_per_commit: int = FILES_PER_COMMIT) -> FoldReport:
    """Clear `state` and fold every landing file of `keys` again: the state of an incremental
    fold of them. Marked unfinished with the clear and unmarked by its last commit: a run that
    dies in between leaves a state that refuses every fold (`fold.IncompleteSeed` with no
    snapshot) until a rebuild, not a partial state that later folds would go on from (the
    files it had not reached yet were never asked again)."""
    run = uuid.uuid4().hex
    state.clear(keep=(SEED, SEED_KEY, 0, refold_mark(run)))
    report = fold_files(state, store, keys, rules, landing_prefix, files_per_commit,
                        seeding=orjson.loads(refold_mark(run)))
    if report.watermark_ms is None:  # nothing folded: the store is empty but for the mark
        state.clear()
        return report
    done = Commit(expect=(SEED, SEED_KEY, refold_mark(run)))
    done.record(f"{SEED_STREAM}/refold/{iso(report.watermark_ms)}/{run}",
                report.watermark_ms, {"stream": SEED_STREAM, "lines": 0, "events": 0,
                                      "quarantined": {}})
    done.put(SEED, SEED_KEY, 0, None)
    _commit(state, done)
    return report


def _commit(state: StateStore, commit: Commit) -> None:
    try:
        done = state.commit(commit)
    except Fenced as exc:
        raise Rebuilt(f"{state!r} is being rebuilt by another run since this rebuild started: "
                      "it stopped, and left the store to that rebuild") from exc
    if not done:
        raise RuntimeError(f"{state!r} already holds {commit.file_key}: clear it")


def _seed(state: StateStore, store: Store, p: int, lake_prefix: str, report: SeedReport,
          unread: list[tuple[str, int, dict]], run: str) -> None:
    """Write the seed in commits of about USERS_PER_COMMIT items, each applied as it is made."""
    s = p + HOUR_MS
    events, index = _hour_impressions(store, p, lake_prefix)
    report.impressions = len(index)
    plast = _latest_predictions(store, s, lake_prefix)
    made = 0
    commit = _seed_commit(p, "0", run)

    def flush(full: bool = True) -> None:
        nonlocal commit, made
        if full and commit.size() < USERS_PER_COMMIT:
            return
        _commit(state, commit)
        made += 1
        commit = _seed_commit(p, str(made), run)

    for (kind_pk, hour), (imps, clks) in _segment_hours(store, s, lake_prefix).items():
        commit.add(seg.HOUR_TABLE, kind_pk, hour, imps, clks)
        report.segment_rows += 1
        flush()
    for iid, (hour, values) in index.items():
        commit.put(IMPRESSION, iid, hour, orjson.dumps({"at": [[hour, values]], "refs": []}))
        flush()
    pf = store.parquet_file(snapshot_key(p, lake_prefix))
    for g in range(pf.num_row_groups):
        part = pf.read_row_group(g, columns=_SNAPSHOT_COLUMNS, use_threads=False)
        for start in range(0, part.num_rows, USERS_PER_COMMIT // 2):
            for uid, doc in _documents(part.slice(start, USERS_PER_COMMIT // 2), s, events,
                                       plast):
                _put_user(commit, uid, doc)
                plast.pop(uid, None)
                report.users += 1
            flush()
    # Users with predictions only (no impression nor click yet): their latest score counts.
    for uid, latest in plast.items():
        doc = us.new_user()
        doc["plast"], doc["h"] = latest, s
        _put_user(commit, uid, doc)
        report.users += 1
        flush()
    flush(full=False)
    for i in range(0, len(unread), FILES_PER_COMMIT):
        for key, arrival, stats in unread[i:i + FILES_PER_COMMIT]:
            commit.record(key, arrival, stats)
        flush(full=False)


def _put_user(commit: Commit, uid: str, doc: dict) -> None:
    last = max(filter(None, doc["arch"]), default=doc["first"] or doc["plast"][0])
    hour = last - last % HOUR_MS
    commit.put(USER, uid, hour, orjson.dumps(doc))
    commit.put(HEAD, uid, hour, user_head.encode(doc))


def _documents(rows: pa.Table, s: int, events: dict[str, list[list]],
               plast: dict[str, list]) -> Iterable[tuple[str, dict]]:
    """(user, document) of each snapshot row, as of s (the `user_state` layout)."""
    keep = s - us.TILE_KEEP_MS
    cols = {name: rows[name] for name in rows.column_names}
    times = {name: _ms_or_none(cols[name]) for name in
             ("first_ts", "last_impression_ts", "last_click_ts")}
    plain = {name: cols[name].to_pylist() for name in
             ("user_id", "impressions", "clicks", "spend", "campaigns", "campaign_impressions",
              "campaign_clicks", "domains", "recent_hours", "recent_impressions",
              "recent_clicks", "recent_spend")}
    for i, uid in enumerate(plain["user_id"]):
        ring = sorted(zip(plain["recent_hours"][i], plain["recent_impressions"][i],
                          plain["recent_clicks"][i], plain["recent_spend"][i], strict=True))
        doc = {"n": [plain["impressions"][i], plain["clicks"][i], plain["spend"][i]],
               "first": times["first_ts"][i],
               "arch": [times["last_impression_ts"][i], times["last_click_ts"][i]],
               "tiles": {str(h * HOUR_MS): [ti, tc, ts] for h, ti, tc, ts in ring
                         if h * HOUR_MS >= keep},
               "ev": events.get(uid, []),
               "camps": {c: [ci, cc, 0] for c, ci, cc in zip(
                   plain["campaigns"][i], plain["campaign_impressions"][i],
                   plain["campaign_clicks"][i], strict=True)},
               "doms": dict.fromkeys(plain["domains"][i], 0),
               "preds": [],
               "h": s}
        if uid in plast:
            doc["plast"] = plast[uid]
        yield uid, doc


def _ms_or_none(col) -> list[int | None]:
    """Epoch ms of a timestamp[ms] column, None for null."""
    return pc.cast(col, pa.int64()).to_pylist()


def _hour_impressions(store: Store, p: int, lake_prefix: str
                      ) -> tuple[dict[str, list[list]], dict[str, tuple[int, list[str]]]]:
    """Hour p's raw impressions: per user its `ev` entries, and per impression id its index
    entry (hour, impression-derived segments)."""
    imp = read_raw(store, "impressions", p, lake_prefix)
    country = countries(imp["ip"]).to_pylist()
    cols = {n: imp[n].to_pylist() for n in ("impression_id", "user_id", "campaign_id",
                                             "domain", "cost")}
    ts = ts_ms(imp["ts"]).tolist()
    events: dict[str, list[list]] = {}
    index: dict[str, tuple[int, list[str]]] = {}
    for i, iid in enumerate(cols["impression_id"]):
        domain = cols["domain"][i]
        events.setdefault(cols["user_id"][i], []).append(
            [ts[i], 0, iid, cols["campaign_id"][i], domain, cols["cost"][i], country[i]])
        index.setdefault(iid, (p, seg.impression_values(country[i], domain)))
    return events, index


def _latest_predictions(store: Store, s: int, lake_prefix: str) -> dict[str, list]:
    """Per user, the latest prediction [ts, id, score] of the 24 hours before s (greatest id on
    ties), as `user_state` keeps it in `plast`."""
    parts = [read_raw(store, "predictions", h, lake_prefix, missing_ok=True,
                      columns=["prediction_id", "ts", "user_id", "score"])
             for h in range(s - us.PREDICTION_LOOKBACK_MS, s, HOUR_MS)]
    table = pa.concat_tables(parts)
    out: dict[str, list] = {}
    for pid, t, u, score in zip(table["prediction_id"].to_pylist(), ts_ms(table["ts"]).tolist(),
                                table["user_id"].to_pylist(), table["score"].to_pylist(),
                                strict=True):
        best, new = out.get(u), [t, pid, score]
        if best is None or us.pred_order(new) > us.pred_order(best):
            out[u] = new
    return out


def _segment_hours(store: Store, s: int, lake_prefix: str
                   ) -> dict[tuple[str, int], tuple[int, int]]:
    """(segment pk, hour) -> (impressions, clicks) of the 24 hours before s."""
    out: dict[tuple[str, int], tuple[int, int]] = {}
    for h in range(s - seg.WINDOW_HOURS * HOUR_MS, s, HOUR_MS):
        prof = read_segment_profile(store, h, lake_prefix)
        if prof is None:
            continue
        for kind, segment, imps, clks in zip(*(prof[c].to_pylist() for c in (
                "kind", "segment", "hour_impressions", "hour_clicks")), strict=True):
            if imps or clks:
                out[(seg.segment_pk(kind, segment), h)] = (imps, clks)
    return out
