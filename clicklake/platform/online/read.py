"""Answers "as of t" from the online state: feature inputs for one impression, a user profile.

`feature_inputs` returns exactly what `labeled.lake_feature_inputs` gives for an impression at t
once every event with ts < t has been folded: same columns, dtypes and missing values (NaN for
"never" and "no score"), so `features.compute_features` sees one vector whichever path built it.
"""

from __future__ import annotations

import math
import time

import numpy as np
import orjson

from clicklake.platform.enrich import country_of, user_agent_of
from clicklake.platform.features import INPUT_COLUMNS
from clicklake.platform.online import segment_state as seg
from clicklake.platform.online import user_head
from clicklake.platform.online import user_state as us
from clicklake.platform.online.fold import DEFAULT_RULES, HEAD, USER, horizon_ms, seed_mark
from clicklake.platform.online.state import StateStore
from clicklake.platform.raw import Rules
from clicklake.platform.timeutil import HOUR_MS, iso

_WINDOW_SUFFIX = {"life": "", "1h": "_1h", "24h": "_24h", "7d": "_7d"}
LAYOUT_CHECK_S = 10.0  # how often a long-lived reader reads the store's layout record again


class BeforeHorizon(LookupError):
    """The instant is older than the online state keeps: ask the lake's lookup table."""


class Rebuilding(LookupError):
    """The online store is being rebuilt, or its rebuild died (`fold.seed_mark` unfinished): it
    holds only part of the history, so its answers would be wrong; ask the lake meanwhile."""


class OnlineFeatures:
    """Reads over a `StateStore` (SQLite file or DynamoDB table). Cheap to create."""

    def __init__(self, state: StateStore, rules: Rules = DEFAULT_RULES):
        self.state, self.rules = state, rules
        self._layout_due = 0.0  # time.monotonic() of the next layout check
        self._rebuilding: str | None = None
        self._horizon: tuple[int | None, int] = (None, horizon_ms(None, rules))
        self._segments = seg.SegmentWindows(state)

    def check_layout(self) -> None:
        """Raise `StaleLayout` once a writer of a newer clicklake has recorded its documents'
        layout: a server started before it cannot read them (it would fail on them, or misread
        them); `Rebuilding` while the store is being rebuilt. A read checks at most every
        `LAYOUT_CHECK_S` seconds (two small key reads)."""
        now = time.monotonic()
        if now >= self._layout_due:
            self.state.check_readable()
            mark = seed_mark(self.state)
            self._rebuilding = None if mark is None or mark["done"] else (
                "the online store is being rebuilt "
                + ("from every landing file" if mark.get("p") is None else
                   f"from the user_profiles snapshot of {iso(mark['p'])}")
                + " (or that rebuild died: the next serving_lookup run redoes it); it holds "
                "part of the history until then")
            self._layout_due = now + LAYOUT_CHECK_S
        if self._rebuilding is not None:
            raise Rebuilding(self._rebuilding)

    def watermark_ms(self) -> int | None:
        """Max arrival (key time) of the landing files folded so far."""
        return self.state.watermark_ms()

    def horizon_ms(self) -> int:
        """Earliest instant answered exactly (event-level history starts here)."""
        wm = self.state.watermark_ms()
        if wm != self._horizon[0]:  # a read's own cost is a few microseconds: keep it once
            self._horizon = (wm, horizon_ms(wm, self.rules))
        return self._horizon[1]

    def _check(self, t: int, h: int | None = None, whose: str = "the online") -> None:
        """Raise BeforeHorizon for an instant whose hour is before horizon `h` (default: the
        state's, from its watermark)."""
        h = self.horizon_ms() if h is None else h
        if t - t % HOUR_MS < h:
            raise BeforeHorizon(
                f"{iso(t)} is before {whose} horizon {iso(h)}: the online store answers from "
                f"there on; earlier instants are the lake's time-travel lookup table's")

    def _doc(self, user_id: str, t: int) -> dict | None:
        """The user's document, checked against t: a fold that committed after `_check` read
        the watermark may have trimmed it at a later horizon (more so on DynamoDB, where the
        watermark moves after a commit's documents)."""
        raw = self.state.get_docs(USER, [user_id]).get(user_id)
        if raw is None:
            return None
        doc = orjson.loads(raw)
        self._check_user(user_id, t, us.valid_from(doc))
        return doc

    def _check_user(self, user_id: str, t: int, valid_from: int | None) -> None:
        if valid_from is not None:
            self._check(t, valid_from, f"{user_id}'s state's")

    def _head(self, user_id: str, t: int, raw: bytes) -> tuple[list, tuple | None]:
        """The user's stored head, decoded and checked against t as `_doc` checks the
        document, and its lists (`user_head.split`: None when it has none of this layout)."""
        head_part, lists = user_head.split(raw)
        head = orjson.loads(head_part)
        self._check_user(user_id, t, user_head.valid_from(head))
        return head, lists

    def profile(self, user_id: str, ts_ms: int, lists: bool = True, encoded: bool = False
                ) -> dict | None:
        """The user's counters with event ts < ts_ms (`lookup.PROFILE_SCHEMA` names, times in
        epoch ms or None), plus per-campaign counts and domains unless `lists` is false; None
        for an unknown user (no event folded at all). Raises BeforeHorizon for instants the
        state no longer holds, `StaleLayout` once a newer clicklake has written the store.
        `encoded`: the lists as JSON text (`orjson.Fragment`s, for `orjson.dumps` to write into
        a response as they are), not as Python objects.

        A read after the user's latest event (a read "now") comes from the user's head
        (`user_head`), a fraction of the document to fetch and decode; the lists follow the
        head in the same value, in their JSON form, and are decoded only when asked for."""
        self.check_layout()
        self._check(ts_ms)
        raw = self.state.get_docs(HEAD, [user_id]).get(user_id)
        if raw is not None:
            out = self._from_head(user_id, ts_ms, raw, lists, encoded)
            if out is not None:
                return out
        doc = self._doc(user_id, ts_ms)
        if doc is None:
            return None
        out = self._profile(user_id, ts_ms, us.profile_at(doc, ts_ms))
        if lists:
            found = us.campaigns_at(doc, ts_ms), us.domains_at(doc, ts_ms)
            if encoded:
                found = tuple(orjson.Fragment(orjson.dumps(x)) for x in found)
            out["campaigns"], out["domains"] = found
        return out

    def _from_head(self, user_id: str, ts_ms: int, raw: bytes, lists: bool, encoded: bool
                   ) -> dict | None:
        """`profile` from the user's stored head, None when the document must answer (t not
        after the user's events, or lists asked of a head written without them)."""
        head, lists_part = self._head(user_id, ts_ms, raw)
        if lists and lists_part is None:
            return None
        counters = user_head.profile_from_head(head, ts_ms)
        if counters is None:
            return None
        found = (user_head.lists_from_head(head, lists_part, ts_ms, encoded) if lists
                 else None)
        if lists and found is None:
            return None
        out = self._profile(user_id, ts_ms, counters)
        if found is not None:
            out["campaigns"], out["domains"] = found
        return out

    def _inputs_from_head(self, user_id: str, campaign_id: str, ts_ms: int
                          ) -> tuple[dict, tuple[int, int], tuple[float, float]] | None:
        """The user's part of `feature_inputs` (`user_state.profile_at`, `user_campaign_at`,
        `latest_prediction_at`) from the user's head, or None when the document must answer: t
        not after the user's latest impression, click and prediction, or no head of this layout.
        A read "now" then never decodes the document, whose events since the horizon run to
        megabytes for a bot."""
        raw = self.state.get_docs(HEAD, [user_id]).get(user_id)
        if raw is None:
            return None
        head, lists = self._head(user_id, ts_ms, raw)
        if lists is None:
            return None
        counters = user_head.profile_from_head(head, ts_ms)
        prediction = user_head.prediction_from_head(head, ts_ms)
        if counters is None or prediction is None:
            return None
        return counters, user_head.campaign_counts(lists[0], campaign_id), prediction

    @staticmethod
    def _profile(user_id: str, ts_ms: int, counters: dict) -> dict:
        out = {"user_id": user_id, "t": ts_ms}
        out.update(counters)
        out["known"] = out["first_ts"] is not None
        return out

    def feature_inputs(self, user_id: str, campaign_id: str, ts_ms: int, ip: str | None,
                       user_agent: str | None, domain: str | None = None
                       ) -> dict[str, np.ndarray]:
        """`features.INPUT_COLUMNS` as length-1 arrays for an impression at ts_ms (`domain`: the
        impression's domain, for the per-domain segment counters; None = unknown)."""
        self.check_layout()
        self._check(ts_ms)
        now = self._inputs_from_head(user_id, campaign_id, ts_ms)
        if now is None:
            doc = self._doc(user_id, ts_ms) or us.new_user()
            now = (us.profile_at(doc, ts_ms), us.user_campaign_at(doc, campaign_id, ts_ms),
                   us.latest_prediction_at(doc, ts_ms))
        p, uc, (score, pred_ts) = now
        out: dict[str, np.ndarray] = {"ts_ms": np.array([ts_ms], dtype=np.int64)}
        for w, suffix in _WINDOW_SUFFIX.items():
            for m in ("impressions", "clicks", "spend"):
                out[f"user_{m}_{w}"] = np.array([p[f"{m}{suffix}"]], dtype=np.float64)
        for name, key in (("user_last_impression_ms", "last_impression_ts"),
                          ("user_last_click_ms", "last_click_ts")):
            out[name] = np.array([math.nan if p[key] is None else p[key]], dtype=np.float64)
        out["user_distinct_campaigns"] = np.array([p["distinct_campaigns"]], dtype=np.float64)
        out["user_distinct_domains"] = np.array([p["distinct_domains"]], dtype=np.float64)
        out["uc_impressions"] = np.array([uc[0]], dtype=np.float64)
        out["uc_clicks"] = np.array([uc[1]], dtype=np.float64)
        country = country_of(ip)
        own = {"global": "all", "country": country, "campaign": campaign_id,
               "domain": seg.UNKNOWN if domain is None else domain}
        pairs = [(kind, own[kind]) for kind in seg.KINDS]
        windows = self._segments.windows_24h(pairs, ts_ms)
        wm = self._horizon[0]  # as `_check` read it
        if wm is not None and ts_ms < wm - wm % HOUR_MS:
            # An instant before the watermark's hour: a fold committing since `_check` may have
            # moved the horizon past it and purged the segment rows just read (the user part
            # is guarded by its document's `valid_from`; the segments have none). The watermark
            # is committed before the purge on both backends, so a fresh check sees any purge
            # that could have hit the read. "Now" reads skip it (no extra round trip).
            self._check(ts_ms)
        for (kind, _), (imps, clks) in zip(pairs, windows, strict=True):
            out[f"{kind}_impressions_24h"] = np.array([imps], dtype=np.float64)
            out[f"{kind}_clicks_24h"] = np.array([clks], dtype=np.float64)
        ua = user_agent_of(user_agent)
        out["country"] = np.array([country], dtype=object)
        out["device_type"] = np.array([ua.device_type], dtype=object)
        out["os"] = np.array([ua.os], dtype=object)
        out["browser"] = np.array([ua.browser], dtype=object)
        out["is_crawler"] = np.array([ua.is_crawler], dtype=bool)
        out["pred_score"] = np.array([score], dtype=np.float64)
        out["pred_ts_ms"] = np.array([pred_ts], dtype=np.float64)
        return {c: out[c] for c in INPUT_COLUMNS}
