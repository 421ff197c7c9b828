"""The user's latest prediction score strictly before an instant (a DESIGN §5 feature input).

Both forms are numpy: users become integer codes, predictions are sorted once by
(user, ts, prediction_id) keeping the last of each (user, ts), and every query is one binary
search. `latest_scores_lake` reads the raw prediction hours itself, newest first, only the
columns it needs and only until every query is answered, keeping the rows of the users asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clicklake.platform import hashtables
from clicklake.platform.raw import raw_key
from clicklake.platform.storage import Store
from clicklake.platform.tiles import Interner, lex_order, search_sorted
from clicklake.platform.timeutil import HOUR_MS


def _codes(values, value_set: pa.Array) -> np.ndarray:
    return pc.index_in(values, value_set=value_set).fill_null(-1).to_numpy(
        zero_copy_only=False).astype(np.int64)


def _ms(col) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False)


def _id_rank(ids: pa.Array | pa.ChunkedArray | None, n: int) -> np.ndarray:
    """Rank of each prediction id in string order (0 for all when ids are not needed)."""
    if ids is None:
        return np.zeros(n, np.int64)
    order = pc.sort_indices(ids).to_numpy()
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return rank


def _answer(p_code: np.ndarray, p_ts: np.ndarray, p_rank: np.ndarray, p_score: np.ndarray,
            q_code: np.ndarray, q_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(q_ts)
    score, when = np.full(n, np.nan), np.full(n, np.nan)
    keep = p_code >= 0
    if not keep.any() or n == 0:
        return score, when
    if hashtables.NATIVE:  # one walk in time order (the numpy sort and search below otherwise)
        ncodes = 1 + max(int(p_code.max()), int(q_code.max()))
        return hashtables.latest_as_of(q_code, q_ts, p_code[keep], p_ts[keep], p_rank[keep],
                                       p_score[keep], ncodes)
    # Before the earliest query only each user's latest instant can be an answer: drop the
    # rest before sorting (typically most of a day of predictions).
    early = keep & (p_ts < q_ts.min())
    if early.any():
        best = np.full(int(p_code.max()) + 1, np.iinfo(np.int64).min)
        np.maximum.at(best, p_code[early], p_ts[early])
        keep &= ~early | (p_ts == best[np.maximum(p_code, 0)])
    p_code, p_ts, p_rank, p_score = p_code[keep], p_ts[keep], p_rank[keep], p_score[keep]
    # Sorted by (user, ts, id): the last row of each (user, ts) run is the greatest id there.
    order = lex_order(p_code, p_ts, p_rank)
    p_code, p_ts, p_score = p_code[order], p_ts[order], p_score[order]
    base = int(min(p_ts.min(), q_ts.min()))
    span = int(max(p_ts.max(), q_ts.max())) - base + 1
    key = p_code * span + (p_ts - base)
    at = search_sorted(key, q_code * span + (q_ts - base)) - 1
    ok = (q_code >= 0) & (at >= 0)
    ok[ok] &= p_code[at[ok]] == q_code[ok]
    score[ok], when[ok] = p_score[at[ok]], p_ts[at[ok]].astype(np.float64)
    return score, when


def latest_scores(predictions: pa.Table, user_ids: np.ndarray, ts_ms: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """For each (user, t): (score, prediction ts) of the user's latest prediction with ts < t,
    NaN when none. Among predictions at the same instant the greatest prediction_id wins, so the
    answer does not depend on input order."""
    n = len(ts_ms)
    if predictions.num_rows == 0 or n == 0:
        return np.full(n, np.nan), np.full(n, np.nan)
    users = pc.unique(pa.array(np.asarray(user_ids, dtype=object), pa.string()))
    q_code = _codes(pa.array(np.asarray(user_ids, dtype=object), pa.string()), users)
    p_code = _codes(predictions["user_id"].cast(pa.string()), users)
    return _answer(p_code, _ms(predictions["ts"]), _id_rank(predictions["prediction_id"],
                                                          predictions.num_rows),
                   predictions["score"].to_numpy(zero_copy_only=False).astype(np.float64),
                   q_code, np.asarray(ts_ms, dtype=np.int64))


def latest_scores_lake(store: Store, user_ids: pa.Array, ts_ms: np.ndarray, max_age_ms: int,
                       lake_prefix: str = "lake") -> tuple[np.ndarray, np.ndarray]:
    """`latest_scores` over the raw prediction hours that can hold a score at most `max_age_ms`
    old (from the hour of `max_age_ms` before the earliest t to the hour of the latest t); a
    missing hour reads as empty. Older scores may be left out, so callers must treat a score
    older than `max_age_ms` as missing (features.compute_features does).

    Hours are searched newest first, and a query found in one hour is done: raw hours are by
    event time, so an older hour cannot hold a later prediction. Most users have a prediction
    in the impression's own hour, so the older hours are read for the few left - their user
    column first, the rest only where one of those users appears."""
    t = np.asarray(ts_ms, dtype=np.int64)
    n = len(t)
    score, when = np.full(n, np.nan), np.full(n, np.nan)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    users = user_ids.combine_chunks() if isinstance(user_ids, pa.ChunkedArray) else user_ids
    users = users.cast(pa.string())
    first = int(t.min()) - int(t.min()) % HOUR_MS - max_age_ms
    last = int(t.max()) - int(t.max()) % HOUR_MS
    first -= first % HOUR_MS
    pending = np.arange(n)
    for h in range(last, first - 1, -HOUR_MS):
        key = raw_key("predictions", h, lake_prefix)
        if not len(pending):
            break
        if not store.exists(key):
            continue
        pf = store.parquet_file(key)
        asked = users.take(pa.array(pending)) if len(pending) < n else users
        uniq = pc.unique(asked)
        if len(pending) > n // 4:  # most queries still open: one read of the three columns
            part = pf.read(columns=["user_id", "ts", "score"], use_threads=False)
            code = _codes(part["user_id"], uniq)
            rows = np.flatnonzero(code >= 0)
            part = part.take(pa.array(rows))
        else:
            code = _codes(pf.read(columns=["user_id"], use_threads=False)["user_id"], uniq)
            rows = np.flatnonzero(code >= 0)
            if not len(rows):
                continue
            part = pf.read(columns=["ts", "score"], use_threads=False).take(pa.array(rows))
        if not len(rows):
            continue
        p_code, p_ts = code[rows], _ms(part["ts"])
        p_score = part["score"].to_numpy(zero_copy_only=False).astype(np.float64)
        # Ids break ties of one user at one instant: read them only when there are such.
        k = np.sort(p_code * (int(p_ts.max()) - int(p_ts.min()) + 1) + (p_ts - int(p_ts.min())))
        rank = (_id_rank(pf.read(columns=["prediction_id"])["prediction_id"].take(
            pa.array(rows)), len(rows)) if (k[1:] == k[:-1]).any() else np.zeros(len(rows),
                                                                                   np.int64))
        s, w = _answer(p_code, p_ts, rank, p_score, _codes(asked, uniq), t[pending])
        found = ~np.isnan(w)
        score[pending[found]], when[pending[found]] = s[found], w[found]
        pending = pending[~found]
    return score, when


_NO_TS = np.iinfo(np.int64).min


def _tie_rank(pf: pq.ParquetFile | None, code: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """The prediction id rank of a raw prediction hour's rows (`_id_rank`), read only when
    ids are needed: when one user (`code`, the hour's user codes) has two predictions at one
    instant; zeros otherwise."""
    rank = np.zeros(len(ts), np.int64)
    if len(ts) and pf is not None:
        k = np.sort(code * (int(ts.max()) - int(ts.min()) + 1) + (ts - int(ts.min())))
        if (k[1:] == k[:-1]).any():
            rank = _id_rank(pf.read(columns=["prediction_id"],
                                    use_threads=False)["prediction_id"], len(ts))
    return rank


class CarriedScores:
    """Each user's latest prediction (ts, score) strictly before `as_of` (an hour boundary), on
    user codes, carried from hour to hour: a range of labeled hours reads each prediction hour
    once instead of searching the day before every labeled hour.

    `answer(hour)` gives what `latest_scores_lake` gives for instants of that hour: the latest
    prediction of the hour itself before t, else the carried one when it is not older than the
    first hour `latest_scores_lake` reads; then the hour is folded in."""

    def __init__(self, store: Store, users: Interner, first_hour_ms: int, max_age_ms: int,
                 lake_prefix: str = "lake"):
        self.store, self.users, self.lake_prefix = store, users, lake_prefix
        self.max_age_ms = max_age_ms
        self.ts = np.zeros(0, np.int64)
        self.score = np.zeros(0, np.float64)
        self.as_of = self._first_read(first_hour_ms)
        # The day before, read first and coded in one pass, then folded oldest first.
        days = [self.read_hour(self.store, h, self.lake_prefix)
                for h in range(self.as_of, first_hour_ms, HOUR_MS)]
        if days:
            codes = self.users.codes(pa.concat_arrays([d[0] for d in days]))  # one lookup
            self._grow()
            at = 0
            for h, (ids, ts, score, pf) in zip(range(self.as_of, first_hour_ms, HOUR_MS),
                                               days, strict=True):
                code = codes[at:at + len(ids)]
                self._fold(code, ts, score, _latest_rows(code, ts, _tie_rank(pf, code, ts)), h)
                at += len(ids)
        self.as_of = first_hour_ms

    def _first_read(self, hour_ms: int) -> int:
        first = hour_ms - max(self.max_age_ms, 0)
        return first - first % HOUR_MS

    def _grow(self) -> None:
        n = len(self.users)
        if n > len(self.ts):
            extra = n - len(self.ts) + max(n // 2, 1024)
            self.ts = np.concatenate([self.ts, np.full(extra, _NO_TS)])
            self.score = np.concatenate([self.score, np.full(extra, np.nan)])

    @staticmethod
    def read_hour(store: Store, hour_ms: int, lake_prefix: str = "lake"
                  ) -> tuple[pa.Array, np.ndarray, np.ndarray, pq.ParquetFile | None]:
        """(user ids, ts, score, the file for `_tie_rank`) of a raw prediction hour (empty
        when missing)."""
        key = raw_key("predictions", hour_ms, lake_prefix)
        if not store.exists(key):
            return pa.array([], pa.string()), np.zeros(0, np.int64), np.zeros(0), None
        pf = store.parquet_file(key)
        part = pf.read(columns=["user_id", "ts", "score"], use_threads=False)
        users = part["user_id"].combine_chunks().cast(pa.string())
        score = part["score"].to_numpy(zero_copy_only=False).astype(np.float64)
        return users, _ms(part["ts"]), score, pf

    def _fold(self, code, ts, score, latest: np.ndarray, hour_ms: int) -> None:
        """Fold a prediction hour in: `latest`, its rows `_latest_rows` keeps."""
        self.ts[code[latest]], self.score[code[latest]] = ts[latest], score[latest]
        self.as_of = hour_ms + HOUR_MS

    @staticmethod
    def prepare(read: tuple, users: Interner, user_codes: np.ndarray, ts_ms: np.ndarray
                ) -> PreparedScores:
        """What `answer` computes from the hour's predictions (`read_hour`) and queries alone,
        before the carried state is at that hour: a range prepares it on its second thread."""
        p_users, p_ts, p_score, pf = read
        code = users.codes(p_users)
        rank = _tie_rank(pf, code, p_ts)
        q = np.asarray(user_codes, np.int64)
        score, when = _answer(code, p_ts, rank, p_score, q, np.asarray(ts_ms, np.int64))
        return PreparedScores(code, p_ts, p_score, _latest_rows(code, p_ts, rank), q, score,
                              when)

    def answer(self, hour_ms: int, user_codes: np.ndarray | None, ts_ms: np.ndarray,
               prepared: PreparedScores | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(score, prediction ts) per query as `latest_scores_lake` answers it, for instants
        all in hour `hour_ms` (the hour right after the carried state); folds the hour in.
        `prepared`: `prepare` of that hour with these queries (`user_codes` may then be None),
        when the caller has made it (ahead, on another thread)."""
        if self.as_of != hour_ms:
            raise ValueError(f"carried scores are as of {self.as_of}, not {hour_ms}")
        t = np.asarray(ts_ms, np.int64)
        if len(t) and (t.min() < hour_ms or t.max() >= hour_ms + HOUR_MS):
            raise ValueError("instants outside the hour")
        if prepared is None:
            prepared = self.prepare(self.read_hour(self.store, hour_ms, self.lake_prefix),
                                    self.users, user_codes, t)
        elif len(prepared.q) != len(t) or (user_codes is not None and user_codes is not prepared.q
                                          and not np.array_equal(user_codes, prepared.q)):
            raise ValueError("prepared for other queries")
        q, score, when = prepared.q, prepared.score.copy(), prepared.when.copy()
        self._grow()
        rest = np.flatnonzero(np.isnan(when) & (q >= 0))
        old = self.ts[q[rest]]
        ok = (old != _NO_TS) & (old >= self._first_read(hour_ms))
        score[rest[ok]], when[rest[ok]] = self.score[q[rest[ok]]], old[ok].astype(np.float64)
        self._fold(prepared.code, prepared.ts, prepared.p_score, prepared.latest, hour_ms)
        return score, when


@dataclass
class PreparedScores:
    """`CarriedScores.prepare`: one prediction hour against one hour's queries."""

    code: np.ndarray  # the predictions' user codes
    ts: np.ndarray
    p_score: np.ndarray
    latest: np.ndarray  # the rows `_fold` keeps: each user's latest (ts, then id)
    q: np.ndarray  # the queries' user codes
    score: np.ndarray  # the answers from the hour's own predictions (NaN: none before t)
    when: np.ndarray


def _latest_rows(code: np.ndarray, ts: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """The row of each user's latest prediction (latest ts, then greatest id rank)."""
    if not len(code):
        return np.zeros(0, np.int64)
    order = lex_order(code, ts, rank)
    last = np.ones(len(order), bool)  # the last row of each user: latest ts, then id
    last[:-1] = code[order][1:] != code[order][:-1]
    return order[last]
