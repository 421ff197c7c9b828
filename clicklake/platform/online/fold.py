"""Fold landing files into the online state, each file once, a micro-batch of files per atomic
commit (the commit records every file it folds).

A file's lines get the batch path's verdicts, reusing its functions: `events.parse_object`
(malformed, missing_field, bad_type, bad_value), `raw.Rules.verdict` on the file's key time
(future, late), then dedup by event id within its event hour (raw keeps the first copy by
(arrival, key, line); files fold in that order). A damaged gzip keeps the lines before the damage
and counts one `malformed`, as raw does. Nothing is dropped without a count.

A micro-batch gives the state folding its files one by one would (same order, same answers at
every instant the state keeps; when the retention horizon moves within the batch, what trimming
has given up can differ, never an answer), but reads each document once, writes it once, and
adds to each counter row once. Impressions are
deduplicated by the copies their index document already lists (it is read anyway); clicks and
predictions by a mark (event hour, stream letter + id) in the state's compact marks table.

Retention: documents and counters older than `horizon(watermark)` are purged after a batch, and a
read must be at or after the horizon (older instants are the lake's lookup table's job). Dedup
markers live as long, so a straggling file more than `RECENT_HOURS - lateness - 1` hours behind
the newest one could slip a duplicate past the horizon, and its impressions can no longer move
the segment counts of the clicks they would re-attribute (those events are trimmed): Firehose
delivers within minutes, and the sensor's retries stay within a few hours. The sensor folds a
file visible up to an hour, the allowed lateness and 15 minutes after its key time (as long as
the raw hour of that time waits for it, `watch.lookback_ms`): with more than an hour of
lateness, such a file's oldest events may lie under the horizon, and get that treatment.
"""

from __future__ import annotations

import gc
import math
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from itertools import islice, repeat
from operator import itemgetter

import orjson

from clicklake.platform import landing
from clicklake.platform.enrich import countries
from clicklake.platform.events import (
    DUPLICATE,
    MALFORMED,
    REASONS,
    SPECS,
    Rejected,
    fast_parser,
    parse_object,
    plain_rows,
)
from clicklake.platform.online import segment_state as seg
from clicklake.platform.online import user_head
from clicklake.platform.online import user_state as us
from clicklake.platform.online.state import Commit, Conflict, Fenced, FileRecord, StateStore
from clicklake.platform.raw import Rules
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, iso

DEFAULT_RULES = Rules()
RECENT_HOURS = 3  # event-level history kept beyond the allowed lateness
USER, IMPRESSION = "user", "imp"
HEAD = "head"  # user documents' heads (`user_head`), under the user's id
SEED, SEED_KEY = "seed", "mark"  # a state seeded from a snapshot says so here (`seed`)


class IncompleteSeed(RuntimeError):
    """The state's rebuild did not finish (a run died): from the user_profiles snapshot of hour
    `p` (`seed.rebuild_from_snapshot`), or from every landing file when `p` is None
    (`seed.refold_all`). It must be rebuilt again before anything is folded on top."""

    def __init__(self, p: int | None):
        what = ("from every landing file" if p is None else
                f"from the user_profiles snapshot of {iso(p)}")
        super().__init__(f"the online state's rebuild {what} did not finish: it must be "
                         "rebuilt again")
        self.p = p


class Rebuilt(RuntimeError):
    """The state was rebuilt (or a rebuild started) by another run while this one folded:
    nothing of the batch was applied. The files are folded by a later run."""


def seed_mark(state: StateStore) -> dict | None:
    """The mark of a rebuilt state: {"p": snapshot hour, "start": p + 1 h, "done": bool} of a
    state seeded from a snapshot (`seed`), {"refold": true, "done": false} while a refold of
    every landing file is under way (removed when it ends); None for a state folded from the
    landing files alone."""
    raw = state.get_docs(SEED, [SEED_KEY]).get(SEED_KEY)
    return None if raw is None else orjson.loads(raw)


def _seed_start(mark: dict | None, seeding: bool = False) -> int | None:
    """Where the folds of a state with `seed_mark` `mark` start (None: a state not seeded);
    `IncompleteSeed` when its rebuild did not finish, unless this is that rebuild's own fold."""
    if mark is None:
        return None
    if not mark["done"] and not seeding:
        raise IncompleteSeed(mark.get("p"))
    return mark.get("start")


def horizon_ms(watermark_ms: int | None, rules: Rules = DEFAULT_RULES) -> int:
    """Earliest instant the online state answers for: event-level rows are kept from here on."""
    if watermark_ms is None:
        return -(2**62)
    lateness_h = -(-rules.allowed_lateness_ms // HOUR_MS)
    return watermark_ms - watermark_ms % HOUR_MS - (lateness_h + RECENT_HOURS) * HOUR_MS


@dataclass
class ParsedFile:
    stream: str
    rows: list[tuple]  # accepted rows (spec.fields order), before dedup
    lines: int = 0
    quarantined: Counter = field(default_factory=Counter)
    countries: list[str] | None = None  # impressions: each row's IP country (`add_countries`)
    in_snapshot: int = 0  # accepted rows before a seeded state's start (`seed`): left out


def _since(p: ParsedFile, since_ms: int, arrival_ms: int, rules: Rules) -> None:
    """Leave out `p`'s rows with ts < since_ms (a state seeded from a snapshot holds them)."""
    lo = arrival_ms - HOUR_MS - rules.allowed_lateness_ms
    if lo - lo % HOUR_MS + HOUR_MS >= since_ms:
        return  # the file's accepted rows are all at or after it (raw's lateness rule)
    if all(r[1] >= since_ms for r in p.rows):
        return
    keep = [i for i, r in enumerate(p.rows) if r[1] >= since_ms]
    p.in_snapshot += len(p.rows) - len(keep)
    p.rows = [p.rows[i] for i in keep]
    if p.countries is not None:
        p.countries = [p.countries[i] for i in keep]


def stream_of_key(key: str, prefix: str = landing.DEFAULT_PREFIX) -> str | None:
    parts = key[len(prefix) + 1:].split("/") if key.startswith(prefix + "/") else []
    return parts[0] if parts and parts[0] in SPECS else None


def parse_file(data: bytes | landing.DecodedFile, stream: str, arrival_ms: int,
               rules: Rules = DEFAULT_RULES) -> ParsedFile:
    """Accepted rows and quarantine counts of one landing object (raw's rules, line by line):
    its bytes, or its `landing.decode_lines` (decoded ahead, `read_ahead`).

    Plain lines take `events.plain_rows` (C) or `events.fast_parser` and a range test of ts
    against the file's bounds; a line either check is not sure of goes through `parse_object`
    and `Rules.verdict`, so every verdict is theirs."""
    spec = SPECS[stream]
    # Neither future nor late: ts <= arrival + tolerance, and floor_hour(ts) + 1 h + lateness >
    # arrival, i.e. ts >= floor_hour(arrival - 1 h - lateness) + 1 h.
    hi = arrival_ms + rules.future_tolerance_ms
    lo = arrival_ms - HOUR_MS - rules.allowed_lateness_ms
    lo = lo - lo % HOUR_MS + HOUR_MS
    decoded = data if isinstance(data, landing.DecodedFile) else landing.decode_lines(data)
    out = ParsedFile(stream, [])
    plain = plain_rows(spec, decoded.lines, lo, hi)
    if plain is not None and not plain[1] and not plain[2]:  # the usual file: a row per line
        out.rows, out.lines = plain[0], len(plain[0])
    else:
        rows, q = out.rows, out.quarantined
        exact = _line_parser(spec, lo, hi, arrival_ms, rules)
        got = plain[0] if plain is not None else repeat(None)
        for line, row in zip(decoded.lines, got):
            if row is False or (row is None and (not line or line.isspace())):
                continue  # blank
            out.lines += 1
            if row is None:
                row = exact(line, q)
                if row is None:
                    continue
            rows.append(row)
    if decoded.error:
        out.quarantined[MALFORMED] += 1
    return out


def _line_parser(spec, lo: int, hi: int, arrival_ms: int, rules: Rules):
    """A function: (line, quarantine counter) -> the line's accepted row, or None after
    counting its quarantine reason (`fast_parser` first, `parse_object` when it is not sure)."""
    ts_at = spec.fields.index(("ts", "ts"))
    fast, loads = fast_parser(spec), orjson.loads

    def row_of(line: bytes, quarantined: Counter) -> tuple | None:
        try:
            obj = loads(line)
        except orjson.JSONDecodeError:
            quarantined[MALFORMED] += 1
            return None
        row = fast(obj)
        if row is None:
            try:
                row = parse_object(spec, obj)
            except Rejected as rej:
                quarantined[rej.reason] += 1
                return None
        ts = row[ts_at]
        if not lo <= ts <= hi:
            verdict = rules.verdict(ts, arrival_ms)
            if verdict is not None:
                quarantined[verdict] += 1
                return None
        return row

    return row_of


def parse_file_exact(data: bytes, stream: str, arrival_ms: int, rules: Rules = DEFAULT_RULES
                     ) -> ParsedFile:
    """`parse_file` without the fast path: every line through `parse_object` and
    `Rules.verdict` (the oracle the fast path is tested against, and the benchmark's baseline)."""
    spec = SPECS[stream]
    ts_at = spec.fields.index(("ts", "ts"))
    decoded = landing.decode_lines(data)
    out = ParsedFile(stream, [])
    for line in decoded.lines:
        if not line or line.isspace():
            continue
        out.lines += 1
        try:
            row = parse_object(spec, orjson.loads(line))
        except orjson.JSONDecodeError:
            out.quarantined[MALFORMED] += 1
            continue
        except Rejected as rej:
            out.quarantined[rej.reason] += 1
            continue
        verdict = rules.verdict(row[ts_at], arrival_ms)
        if verdict is not None:
            out.quarantined[verdict] += 1
            continue
        out.rows.append(row)
    if decoded.error:
        out.quarantined[MALFORMED] += 1
    return out


def add_countries(parsed: Sequence[ParsedFile]) -> None:
    """The countries of the impressions' IPs of parsed files: one `countries` call for them all
    (~0.5 ms a call, whatever its size: one per impression file cost 5% of a fold)."""
    imps = [p for p in parsed if p.stream == "impressions" and p.rows]
    if imps:
        ip_at = SPECS["impressions"].fields.index(("ip", "str"))
        found = countries([r[ip_at] for p in imps for r in p.rows]).to_pylist()
        start = 0
        for p in imps:
            p.countries = found[start:start + len(p.rows)]
            start += len(p.rows)


CACHE_DOCS = 200_000  # decoded documents kept per namespace between one process's commits
# A commit's lines at most, whatever its files: its documents and rows stay in memory until it
# lands. A refold of 4 M events in commits of 2,000 files peaked at 6.4 GiB; with this bound at
# 3.3 GiB, 13 % slower (a commit of 1 M lines holds ~2.5 GiB; the document cache little: 3.1 GiB
# at a quarter of its size). Smaller bounds cost more speed than they save (500 k: 2.8 GiB, 30 %
# slower): each commit rewrites the documents of every user it touches.
MAX_LINES_PER_COMMIT = 1_000_000


def _cache_of(state: StateStore, token: object | None) -> dict[str, dict] | None:
    """The decoded documents this process committed last (LRU per namespace), valid while no
    other writer committed since (`token`: `StateStore.cache_token`, None when the backend
    cannot say)."""
    if token is None:
        return None
    cache = getattr(state, "_fold_cache", None)
    if cache is None or cache[0] != token:
        cache = (token, {USER: {}, IMPRESSION: {}})
        state._fold_cache = cache
    return cache[1]


def drop_cache(state: StateStore) -> None:
    state._fold_cache = None


def _load(state: StateStore, ns: str, keys: Iterable[str], into: dict, new,
          cache: dict | None) -> None:
    missing = [k for k in dict.fromkeys(keys) if k not in into]
    if not missing:
        return
    if cache is not None and cache[ns]:
        hits = cache[ns]
        rest = []
        for k in missing:
            doc = hits.pop(k, None)  # taken out: the batch mutates it, and puts it back
            if doc is None:
                rest.append(k)
            else:
                into[k] = doc
        missing = rest
        if not missing:
            return
    found = state.get_docs(ns, missing)
    for k in missing:
        into[k] = orjson.loads(found[k]) if k in found else new()


def _new_imp() -> dict:
    return {"at": [], "refs": []}  # copies [hour, segments]; clicks naming it [user, ts, click_id]


def _encode(doc: dict) -> bytes:
    """`orjson.dumps(doc)` copied into bytes of its own size: orjson's result keeps the buffer
    it grew in (>= 1 KiB), and a batch keeping ~20 k of them fragmented the heap until each
    new one cost ~4 us in malloc; with the copy, ~0.5 us (measured on a sensor run's documents)."""
    return memoryview(orjson.dumps(doc)).tobytes()


INDEXED_EVENTS = 64  # from this many events in a user document, its lookups use an index


class _Batch:
    """The documents one commit reads and rewrites, and the attribution rule over them."""

    def __init__(self, state: StateStore, commit: Commit):
        self.state, self.commit = state, commit
        self.users: dict[str, dict] = {}
        self.imps: dict[str, dict] = {}
        self.segments = seg.Deltas()
        self.cache = _cache_of(state, commit.read_token)
        # users of `users` with a click: the impressions' re-attribution pass skips the others
        # (testing each impression's user document cost more than the pass, once per batch)
        self.clickers: set[str] = set()
        self._indexes: dict[str, us.EventIndex] = {}  # of users with many events

    def index(self, user: str) -> us.EventIndex | None:
        """The user's `EventIndex` when its document holds many events (None: a scan is
        cheaper), kept for the batch."""
        ev = self.users[user]["ev"]
        if len(ev) < INDEXED_EVENTS:
            return None
        idx = self._indexes.get(user)
        if idx is None or idx.ev is not ev:
            idx = self._indexes[user] = us.EventIndex(ev)
        return idx

    def load_users(self, ids: Iterable[str]) -> None:
        users = self.users
        before = len(users)
        _load(self.state, USER, ids, users, us.new_user, self.cache)
        if len(users) > before:  # the new ones come last (insertion order)
            self.clickers.update(u for u, d in islice(users.items(), before, None) if d["n"][1])

    def load_imps(self, ids: Iterable[str]) -> None:
        _load(self.state, IMPRESSION, ids, self.imps, _new_imp, self.cache)

    def remember(self) -> None:
        """After a successful commit: the batch's documents are the stored ones."""
        if self.cache is None:
            return
        for ns, docs in ((USER, self.users), (IMPRESSION, self.imps)):
            hits = self.cache[ns]
            hits.update(docs)
            excess = len(hits) - CACHE_DOCS
            if excess > 0:  # the least recently committed go
                # Copied, not deleted one by one from the front: each `next(iter(hits))` then
                # walked past every slot freed before it (quadratic: 14 s of a 41 s sensor run
                # of 1 M events, whose 500 k impression documents overflowed the cache).
                self.cache[ns] = dict(islice(hits.items(), excess, None))

    def attribute(self, user: str, ts: int, impression_id: str | None) -> tuple[list[str], int]:
        """(impression-derived segments, via) of a click by the rule in `segment_state`'s
        docstring: its country, its domain, ... (`segment_state.IMPRESSION_KINDS` order)."""
        f = ts - ts % HOUR_MS
        lo, hi = f - HOUR_MS, f + HOUR_MS
        if impression_id is not None:
            hours = [a for a in self.imps[impression_id]["at"] if lo <= a[0] < hi]
            if hours:
                return min(hours)[1], 1
        idx = self.index(user)
        best = (idx.latest_impression(lo, ts) if idx is not None
                else us.latest_impression(self.users[user], lo, ts))
        if best is None:
            return list(seg.UNKNOWN_VALUES), 0
        return seg.impression_values(best[6], best[4]), 0

    def finish(self, horizon: int) -> None:
        dumps, first = _encode, itemgetter(0)
        out = self.commit.docs.setdefault(USER, {})
        heads = self.commit.docs.setdefault(HEAD, {})
        for uid, doc in self.users.items():
            us.trim(doc, horizon)
            last = max(map(first, doc["ev"]), default=doc["first"] or 0)
            hour = last - last % HOUR_MS
            out[uid] = (hour, dumps(doc))
            heads[uid] = (hour, user_head.encode(doc))
        out = self.commit.docs.setdefault(IMPRESSION, {})
        for iid, doc in self.imps.items():
            at, refs = doc["at"], doc["refs"]
            if refs:
                hour = max([a[0] for a in at] + [r[1] - r[1] % HOUR_MS for r in refs])
            elif at:
                hour = at[0][0] if len(at) == 1 else max(map(first, at))
            else:
                continue
            out[iid] = (hour, dumps(doc))
        self.segments.write(self.commit)


def _fold_impressions(b: _Batch, rows: list[tuple], country: list[str] | None) -> None:
    # impression fields: impression_id, ts, user_id, campaign_id, domain, ip, user_agent, cost
    iids, tss, uids, camps, domains, ips = list(zip(*rows))[:6]
    if country is None:
        country = countries(ips).to_pylist()
    users, imps = b.users, b.imps
    values = seg.impression_values_of(country, domains)
    us.add_impressions(users, rows, country)
    b.segments.add_impressions(tss, camps, values)
    # Clicks folded before their impression may now belong to another country (domain, ...).
    todo: dict[tuple[str, int, str], None] = {}
    for iid, ts, v in zip(iids, tss, values, strict=True):
        doc = imps[iid]
        f = ts - ts % HOUR_MS
        doc["at"].append([f, v])
        if doc["refs"]:
            for user, t, cid in doc["refs"]:
                if f <= t < f + 2 * HOUR_MS:
                    todo[(user, t, cid)] = None
    # A click attributed to "the user's latest impression" (via 0) may now have a later one:
    # the clicks of each user with any are scanned once (most users have none: skipped).
    clicked = b.clickers.intersection(uids)
    if clicked:
        by_user: dict[str, list[int]] = {}
        for user, ts in zip(uids, tss, strict=True):
            if user in clicked:
                by_user.setdefault(user, []).append(ts)
        for user, times in by_user.items():
            # A click after one of the times t, before the end of the hour after t's: some t
            # in [floor_hour(click - 2 h) + 1 h, click) (sorted times: no scan per click).
            times.sort()
            for e in users[user]["ev"]:
                if e[1] == 1 and e[6] == 0:
                    m = e[0] - 2 * HOUR_MS
                    m = m - m % HOUR_MS + HOUR_MS
                    if bisect_left(times, m) < bisect_left(times, e[0]):
                        todo[(user, e[0], e[2])] = None
    if not todo:
        return
    b.load_users(u for u, _, _ in todo)
    for user, ts, cid in todo:
        idx = b.index(user)
        e = idx.find_click(ts, cid) if idx is not None else us.find_click(b.users[user], ts, cid)
        if e is None:
            # Trimmed past the horizon: its profile hour is no longer read, but its segment
            # counts still are (24 h windows), and keep the old attribution. Only a file folded
            # more than RECENT_HOURS behind the newest lands here (see the module docstring).
            continue
        if e[4] is not None:
            b.load_imps([e[4]])
        values, via = b.attribute(user, ts, e[4])
        if values != e[5]:
            b.segments.move_click(ts, e[5], values)
        e[5], e[6] = values, via


def _fold_clicks(b: _Batch, rows: list[tuple], _countries: None = None) -> None:
    # click fields: click_id, ts, user_id, campaign_id, impression_id
    for cid, ts, user, camp, iid in rows:
        values, via = b.attribute(user, ts, iid)
        us.add_click(b.users[user], ts, cid, camp, iid, values, via)
        b.clickers.add(user)
        if iid is not None:
            b.imps[iid]["refs"].append([user, ts, cid])
        b.segments.add_click(ts, camp, values)


def _fold_predictions(b: _Batch, rows: list[tuple], _countries: None = None) -> None:
    # prediction fields: prediction_id, ts, user_id, model, score, impression_id
    us.add_predictions(b.users, rows)


_FOLD = {"impressions": _fold_impressions, "clicks": _fold_clicks,
         "predictions": _fold_predictions}


@dataclass
class LandedFile:
    """A landing file to fold: its key, arrival time and parsed content."""

    key: str
    arrival_ms: int
    parsed: ParsedFile


def _marks(stream: str, rows: list[tuple]) -> list[tuple[int, str]]:
    """Dedup mark of each row: (event hour, stream letter + ":" + event id)."""
    letter = stream[0] + ":"
    return [(r[1] - r[1] % HOUR_MS, f"{letter}{r[0]}") for r in rows]


MAX_CONFLICTS = 20  # batches refused in a row because other writers kept committing


_ANY_MARK = object()


def fold_batch(state: StateStore, files: Sequence[LandedFile], rules: Rules = DEFAULT_RULES,
               report: FoldReport | None = None, mark: dict | None | object = _ANY_MARK
               ) -> list[FileRecord] | None:
    """Fold parsed landing files (in fold order) as ONE atomic commit that records every one of
    them: the same state as folding them one by one, with each document read and written once
    and each counter row added to once. Returns the files' records, or None (nothing changed)
    when any of them was already folded. A batch that another writer's commit overtook (a
    second fold run on the same store: `Conflict`) is folded again from a fresh read (counted
    in `report.conflicts`). `mark`: the `seed_mark` the run's files were parsed under; when
    the state's differs (another run rebuilt it, or is rebuilding it), `Rebuilt`."""
    for _ in range(MAX_CONFLICTS):
        if not files or state.folded([f.key for f in files]):
            return None
        # taken before anything is read: the commit is refused if another writer commits after
        commit = Commit(read_token=state.cache_token())
        rebuilt = Rebuilt(f"{state!r} was rebuilt, or is being rebuilt, by another run since "
                          f"this one started: nothing of its batch of {len(files)} files was "
                          "applied")
        if mark is not _ANY_MARK:
            if seed_mark(state) != mark:
                drop_cache(state)
                raise rebuilt
            # and checked again as the commit lands (a rebuild may start in between)
            commit.expect = (SEED, SEED_KEY, None if mark is None else orjson.dumps(mark))
        b = _Batch(state, commit)
        _fold_files(b, files)
        arrival = max(f.arrival_ms for f in files)
        b.finish(horizon_ms(max(state.watermark_ms() or arrival, arrival), rules))
        try:
            done = state.commit(commit)
        except Fenced as exc:
            drop_cache(state)
            raise rebuilt from exc
        except Conflict:
            drop_cache(state)
            if report is not None:
                report.conflicts += 1
            continue
        except BaseException:
            drop_cache(state)
            raise
        if not done:  # another writer folded one of them: our documents are not the stored ones
            drop_cache(state)
            return None
        b.remember()
        return commit.files
    raise Conflict(f"{state!r}: other writers committed before each of {MAX_CONFLICTS} attempts "
                   f"to fold {len(files)} files; nothing of them was applied")


def _fold_files(b: _Batch, files: Sequence[LandedFile]) -> None:
    """Fold the batch's files into `b`, in order."""
    commit = b.commit
    parsed = [f.parsed for f in files]
    # Impressions are deduplicated by the copies their index document lists; clicks and
    # predictions by a mark per (event hour, stream letter + id).
    keyed = [[] if p.stream == "impressions" else _marks(p.stream, p.rows) for p in parsed]
    every = [k for keys in keyed for k in keys]
    seen: set = b.state.marked(every) if every else set()
    # One read per namespace for the batch: every document the rows name (the `_fold_*`
    # functions count on it; only re-attributions load more).
    b.load_users(r[2] for p in parsed for r in p.rows)
    b.load_imps(r[0] for p in parsed if p.stream == "impressions" for r in p.rows)
    b.load_imps(r[4] for p in parsed if p.stream == "clicks" for r in p.rows
                if r[4] is not None)
    for f, p, keys in zip(files, parsed, keyed, strict=True):
        fresh: list[tuple] = []
        fresh_countries: list[str] | None = None
        dups = 0
        if p.stream == "impressions":
            imps = b.imps
            dropped: list[int] = []
            for i, r in enumerate(p.rows):
                ts = r[1]
                h = ts - ts % HOUR_MS
                k = (r[0], h)
                if k in seen:
                    dropped.append(i)
                    continue
                at = imps[r[0]]["at"]
                if at and any(a[0] == h for a in at):
                    dropped.append(i)
                    continue
                seen.add(k)
                fresh.append(r)
            dups = len(dropped)
            if p.countries is not None:
                fresh_countries = p.countries
                if dropped:
                    gone = set(dropped)
                    fresh_countries = [c for i, c in enumerate(p.countries) if i not in gone]
        else:
            marks = commit.marks
            for r, k in zip(p.rows, keys, strict=True):
                if k in seen:
                    dups += 1
                    continue
                seen.add(k)
                fresh.append(r)
                hour_marks = marks.get(k[0])
                if hour_marks is None:
                    marks[k[0]] = [k[1]]
                else:
                    hour_marks.append(k[1])
        if fresh:
            _FOLD[p.stream](b, fresh, fresh_countries)
        q = Counter(p.quarantined)
        if dups:
            q[DUPLICATE] += dups
        stats = {"stream": p.stream, "lines": p.lines, "events": len(fresh),
                 "quarantined": {r: q[r] for r in REASONS if q.get(r, 0)}}
        if p.in_snapshot:
            stats["in_snapshot"] = p.in_snapshot
        commit.record(f.key, f.arrival_ms, stats)


def fold_rows(state: StateStore, stream: str, rows: list[tuple], file_key: str, arrival_ms: int,
              quarantined: Counter | None = None, lines: int | None = None,
              rules: Rules = DEFAULT_RULES) -> dict | None:
    """Fold accepted rows (in `SPECS[stream].fields` order) as one atomic commit recorded under
    `file_key`. Returns the commit's stats, or None when `file_key` was already folded."""
    q = Counter(quarantined or {})
    parsed = ParsedFile(stream, list(rows), len(rows) + sum(q.values()) if lines is None
                        else lines, q)
    mark = seed_mark(state)
    since = _seed_start(mark)
    if since is not None:
        _since(parsed, since, arrival_ms, rules)
    records = fold_batch(state, [LandedFile(file_key, arrival_ms, parsed)], rules, mark=mark)
    return None if records is None else records[0].stats


@dataclass
class FoldReport:
    files: int = 0  # folded now
    skipped: int = 0  # folded before (a rerun) or not a landing key
    lines: int = 0
    events: Counter = field(default_factory=Counter)  # by stream
    quarantined: Counter = field(default_factory=Counter)  # by reason
    watermark_ms: int | None = None
    seconds: float = 0.0
    purged: int = 0
    missing: list[str] = field(default_factory=list)  # listed or asked, gone when read
    conflicts: int = 0  # commits refused: another writer committed after their batch read
    in_snapshot: int = 0  # accepted events left out: before a seeded state's start

    @property
    def events_total(self) -> int:
        return sum(self.events.values())

    @property
    def events_per_second(self) -> float:
        return self.events_total / self.seconds if self.seconds > 0 else math.nan


def order_files(keys: Iterable[str], prefix: str = landing.DEFAULT_PREFIX
                ) -> tuple[list[tuple[landing.LandingFile, str]], list[str]]:
    """Landing keys in fold order (arrival, key) with their stream; and the keys that are not
    landing files of a known stream, in the hour folders the raw layer reads
    (`landing.layout_file`). A key listed twice is folded once."""
    good, bad = [], []
    for k in dict.fromkeys(keys):
        found = landing.layout_file(k, prefix)
        if found is None:
            bad.append(k)
        else:
            good.append(found)
    return sorted(good), bad


def fold_files(state: StateStore, store: Store, keys: Iterable[str], rules: Rules = DEFAULT_RULES,
               prefix: str = landing.DEFAULT_PREFIX, files_per_commit: int = 1,
               seeding: dict | None = None) -> FoldReport:
    """Fold landing files in arrival order, in atomic commits of `files_per_commit` files (a
    micro-batch: the sensor's runs fold all their files in one), fewer when they hold more than
    `MAX_LINES_PER_COMMIT` lines (memory stays bounded); then purge what fell behind the
    retention horizon. On a state `seed`ed from a snapshot only the events at or after its end
    are folded (the seed holds the earlier ones; counted as `in_snapshot`). Raises
    `IncompleteSeed` on a state whose seeding did not finish: it must be seeded again before
    anything is folded on top (`seeding`: this fold is a rebuild's own, which finishes it: the
    rebuild's mark, which its commits expect; not the state's, which another rebuild may have
    replaced since)."""
    t0 = time.perf_counter()
    report = FoldReport()
    for rec in state.recover():  # a crashed run's half-applied commit, finished from its intent
        report.files += 1
        _count(report, rec.stats)
    # a commit finding another mark is refused (`Rebuilt`)
    mark = seed_mark(state) if seeding is None else seeding
    since_ms = _seed_start(mark, seeding is not None)
    files, bad = order_files(keys, prefix)
    report.skipped += len(bad)
    done = state.folded([lf.key for lf, _ in files])
    todo = [(lf, stream) for lf, stream in files if lf.key not in done]
    report.skipped += len(files) - len(todo)
    with _no_gc():
        step = max(1, files_per_commit)
        pending: list[tuple[landing.LandingFile, ParsedFile]] = []
        lines = 0
        # closed on the way out, an exception included: the reads under way end first
        with closing(read_ahead(store, [lf.key for lf, _ in todo], todo, READ_AHEAD,
                                READ_THREADS, READ_AHEAD_BYTES)) as landed:
            for (lf, stream), decoded in landed:
                if decoded is None:  # deleted since it was listed: nothing to fold, not recorded
                    report.missing.append(lf.key)
                    continue
                parsed = parse_file(decoded, stream, lf.arrival_ms, rules)
                pending.append((lf, parsed))
                lines += parsed.lines
                if len(pending) >= step or lines >= MAX_LINES_PER_COMMIT:
                    _fold_commit(state, pending, rules, report, since_ms, mark)
                    pending, lines = [], 0
        if pending:
            _fold_commit(state, pending, rules, report, since_ms, mark)
        del pending
        report.watermark_ms = state.watermark_ms()
        report.purged = purge(state, report.watermark_ms, rules)  # also drops the doc cache
    report.seconds = time.perf_counter() - t0
    return report


READ_THREADS = 8  # landing objects read at once (S3: each GET waits tens of ms for its first byte)
READ_AHEAD = 16  # objects read and decompressed ahead of the one being parsed, at most
# ... and fewer when they are big: about this many decompressed bytes held ahead (a Firehose
# object is a few MB once decompressed; an importer's part tens of MB)
READ_AHEAD_BYTES = 64 << 20


def _read_decoded(store: Store, key: str) -> tuple[landing.DecodedFile | None, int]:
    """The object's `landing.decode_lines` (None when the key is gone) and its decompressed
    size."""
    try:
        data = store.read_bytes(key)
    except FileNotFoundError:
        return None, 0
    decoded = landing.decode_lines(data)
    return decoded, sum(map(len, decoded.lines)) + len(decoded.lines)


def read_ahead(store: Store, keys: Sequence[str], items: Sequence | None = None,
               ahead: int = READ_AHEAD, threads: int = READ_THREADS,
               ahead_bytes: int = READ_AHEAD_BYTES
               ) -> Iterator[tuple[object, landing.DecodedFile | None]]:
    """(item, its object's `landing.decode_lines`, None when the key is gone) for each key, in
    order (`items`: what to pair them with, the keys by default), read and decompressed ahead
    on `threads` threads: the reads and the inflate release the GIL, so the GETs' waits and
    the gunzip overlap the parse and the fold. At most `ahead` objects are ahead, fewer when
    the largest one seen so far says `ahead_bytes` would not hold them (two until one is seen);
    `ahead` 0: one at a time, in the caller's thread. Anything else a read raises is raised
    when its key's turn comes, as a plain loop would; the reads still under way when the
    consumer stops are waited for, the others not started."""
    items = keys if items is None else items
    pairs = zip(items, keys, strict=True)
    if ahead <= 0:
        for item, key in pairs:
            yield item, _read_decoded(store, key)[0]
        return
    if not keys:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(threads, ahead, len(keys))),
                            thread_name_prefix="landing-read") as pool:
        window: deque = deque()
        largest = 0

        def fill() -> None:
            room = min(ahead, 2) if largest == 0 else max(1, min(ahead, ahead_bytes // largest))
            while len(window) < room:
                nxt = next(pairs, None)
                if nxt is None:
                    return
                window.append((nxt[0], pool.submit(_read_decoded, store, nxt[1])))

        try:
            fill()
            while window:
                item, fut = window.popleft()
                decoded, size = fut.result()
                largest = max(largest, size)
                fill()
                yield item, decoded
        finally:
            for _, fut in window:
                fut.cancel()


def _fold_commit(state: StateStore, files: list[tuple[landing.LandingFile, ParsedFile]],
                 rules: Rules, report: FoldReport, since_ms: int | None = None,
                 mark: dict | None | object = _ANY_MARK) -> None:
    """Fold parsed `files` as one commit and count them in `report`. The batch's objects die
    when this returns (before the cyclic collector is enabled again)."""
    add_countries([p for _, p in files])
    if since_ms is not None:
        for lf, p in files:
            _since(p, since_ms, lf.arrival_ms, rules)
    batch = [LandedFile(lf.key, lf.arrival_ms, p) for lf, p in files]
    records = fold_batch(state, batch, rules, report, mark)
    if records is None and len(batch) > 1:  # another writer took some: fold the rest
        records = [r for f in batch for r in fold_batch(state, [f], rules, report, mark) or []]
    if not records:
        report.skipped += len(batch)
        return
    report.files += len(records)
    report.skipped += len(batch) - len(records)
    for rec in records:
        _count(report, rec.stats)


@contextmanager
def _no_gc():
    """A batch allocates a few objects per event and frees them together, without cycles: the
    cyclic collector would only rescan the growing heap, again and again (it cost ~40% of a
    fold). Reference counting still frees everything. The collector is enabled again only
    after the batches' objects and the document cache are gone: enabled over them, its next
    young collection would still scan them all once (~50 ms a sensor run)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _count(report: FoldReport, stats: dict) -> None:
    report.lines += stats["lines"]
    report.events[stats["stream"]] += stats["events"]
    report.quarantined.update(stats["quarantined"])
    report.in_snapshot += stats.get("in_snapshot", 0)


def purge(state: StateStore, watermark_ms: int | None, rules: Rules = DEFAULT_RULES) -> int:
    if watermark_ms is None:
        return 0
    h = horizon_ms(watermark_ms, rules)
    drop_cache(state)
    return state.purge({IMPRESSION: h - 2 * HOUR_MS},
                       {seg.MINUTE_TABLE: h, seg.HOUR_TABLE: h - (seg.WINDOW_HOURS + 1) * HOUR_MS},
                       h - HOUR_MS)
