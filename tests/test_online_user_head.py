"""The user's head (`user_head`) against the document it summarises: for every t after the user's
latest impression or click, `profile_from_head` equals `user_state.profile_at` (counts and times
exactly, spend within float rounding), on documents folded from random events and trimmed at
random horizons, at every window boundary; at or before that event it declines. Through the
fold and `OnlineFeatures.profile(lists=False)`: the same answers, a state without heads (an
older writer's) still answers, and a read racing a fold that moves the horizon is refused."""

from __future__ import annotations

import math
import random

import numpy as np
import orjson
import pytest
from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from clicklake.platform.online import OnlineFeatures, SqliteState, fold, fold_files
from clicklake.platform.online import user_head as uh
from clicklake.platform.online import user_state as us
from clicklake.platform.online.read import BeforeHorizon
from clicklake.platform.profiles import WINDOWS_H
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS
from tests.landing_factory import MIN, H, click, impression, land

T0 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR_MS
US_IP = "8.8.8.8"


def folded_doc(rng: random.Random) -> dict:
    """A document folded from random impressions and clicks over up to ~9 days (some in the
    same instant, some on hour bounds, out of order), trimmed at horizons moving forward."""
    doc = us.new_user()
    span = rng.choice([2, 30, 170, 220]) * HOUR_MS
    times = sorted(T0 + rng.choice([rng.randrange(span), rng.randrange(span // HOUR_MS) * HOUR_MS])
                   for _ in range(rng.randint(0, 80)))
    if rng.random() < 0.3:  # a few stragglers: folded after later events
        rng.shuffle(times)
    horizon = T0
    for n, ts in enumerate(times):
        camp = f"c{rng.randrange(12)}"
        if rng.random() < 0.75:
            cost = rng.choice([None, 0.0, rng.random() * 3, 1e-3 * rng.randrange(1000)])
            us.add_impressions({"u": doc}, [(f"i{n}", ts, "u", camp, rng.choice(
                [None, "a.com", "b.org", f"d{n}.net"]), US_IP, "ua", cost)], ["US"])
        else:
            us.add_click(doc, ts, f"k{n}", camp, None, ["US", "unknown"], 0)
        if rng.random() < 0.1:  # a write: trimmed at a horizon a few hours behind this event
            horizon = max(horizon, ts - ts % HOUR_MS - rng.randrange(1, 6) * HOUR_MS)
            us.trim(doc, horizon)
    return doc


def _same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k, v in want.items():
        if k.startswith("spend"):
            assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-12), k
        else:
            assert got[k] == v, k


@pytest.mark.parametrize("seed", range(60))
def test_the_head_answers_as_the_document_after_its_last_event(seed):
    rng = random.Random(seed)
    doc = folded_doc(rng)
    head = orjson.loads(orjson.dumps(uh.head_of(doc)))  # as stored
    events = [t for h, v in doc["tiles"].items() for t in v[3:] if t is not None]
    last = max([t for t in doc["arch"] if t is not None] + events, default=None)
    assert head[uh.LAST] == last
    start = T0 if last is None else last + 1
    instants = {start, start + 1, start + HOUR_MS, start + 400 * HOUR_MS}
    for h in doc["tiles"]:  # each tile entering and leaving each window
        for width in WINDOWS_H.values():
            instants |= {int(h) + (width + d) * HOUR_MS + e for d in (0, 1) for e in (-1, 0, 1)}
    for t in sorted(t for t in instants if t >= start):
        _same(uh.profile_from_head(head, t), us.profile_at(doc, t))
    if last is not None:  # at or before the last event: the document answers
        for t in (last, last - 1, T0):
            assert uh.profile_from_head(head, t) is None


def test_a_head_of_a_user_with_no_event_yet_answers_zeros():
    doc = us.new_user()
    us.add_predictions({"u": doc}, [("p1", T0, "u", "m", 0.5, None)])  # predictions only
    _same(uh.profile_from_head(uh.head_of(doc), T0 + 5), us.profile_at(doc, T0 + 5))


@pytest.fixture
def env(tmp_path):
    store = Store(str(tmp_path / "lake"))
    state = SqliteState(str(tmp_path / "online.db"))
    return store, state, OnlineFeatures(state)


def _counters(p: dict) -> dict:
    return {k: v for k, v in p.items() if k not in ("campaigns", "domains")}


def _folded(store, state, monkeypatch, first_campaign: str = "c1") -> list[str]:
    """u1's two impressions (the first on `first_campaign`) and a click on the second, folded;
    the list the state's reads then append their namespaces to."""
    land(store, "impressions", H + 50 * MIN, [
        impression("a", H - 30 * MIN, cost=0.5, campaign=first_campaign),
        impression("b", H + 10 * MIN, cost=0.25, domain="x.com")], "1")
    land(store, "clicks", H + 55 * MIN, [click("k", H + 20 * MIN, "b")], "2")
    fold_files(state, store, store.list("landing/"))
    reads: list[str] = []
    get = state.get_docs
    monkeypatch.setattr(state, "get_docs", lambda ns, keys: reads.append(ns) or get(ns, keys))
    return reads


def test_profile_without_lists_reads_the_head_now_and_the_document_before(env, monkeypatch):
    store, state, online = env
    reads = _folded(store, state, monkeypatch)
    online.check_layout()  # its periodic reads (layout, rebuild mark) done: the profile's alone
    for t in (H + 20 * MIN + 1, H + 61 * MIN, H + 3 * 60 * MIN):  # after the click: the head
        reads.clear()
        p = online.profile("u1", t, lists=False)
        assert reads == [fold.HEAD]
        assert p == _counters(online.profile("u1", t))
    assert online.profile("u1", H + 21 * MIN, lists=False)["clicks_1h"] == 1
    for t in (H + 10 * MIN, H + 20 * MIN):  # not after every event: the document answers
        reads.clear()
        p = online.profile("u1", t, lists=False)
        assert reads == [fold.HEAD, fold.USER]
        assert p == _counters(online.profile("u1", t))
    assert online.profile("nobody", H + 60 * MIN, lists=False) is None
    # a store an older clicklake folded has documents without heads: read from the documents
    want = online.profile("u1", H + 61 * MIN, lists=False)
    state.conn.execute("DELETE FROM docs WHERE ns=?", (fold.HEAD,))
    state.conn.commit()
    assert online.profile("u1", H + 61 * MIN, lists=False) == want


def test_a_head_read_racing_a_fold_that_moves_the_horizon_is_refused(tmp_path):
    path = str(tmp_path / "online.db")
    writer = SqliteState(path)
    h0 = fold.horizon_ms(H)
    imp = ("i1", h0 + 30 * MIN, "u1", "c1", None, US_IP, "curl/8", 0.5)
    fold.fold_rows(writer, "impressions", [imp], "f1", H + 5 * MIN)
    t = h0 + 40 * MIN  # after i1: the head answers
    assert OnlineFeatures(SqliteState(path)).profile("u1", t, lists=False)["impressions"] == 1

    class Raced(SqliteState):
        def get_docs(self, ns, keys):
            # between the reader's horizon check and its read, a fold an hour later trims u1
            later = ("i2", H + 100 * MIN, "u1", "c1", None, US_IP, "curl/8", 0.5)
            fold.fold_rows(writer, "impressions", [later], "f2", H + 105 * MIN)
            return super().get_docs(ns, keys)

    with pytest.raises(BeforeHorizon):
        OnlineFeatures(Raced(path)).profile("u1", t, lists=False)


@pytest.mark.parametrize("seed", range(60))
def test_the_heads_lists_answer_as_the_document_after_its_last_event(seed):
    rng = random.Random(seed)
    doc = folded_doc(rng)
    head_part, lists = uh.split(uh.encode(doc))  # as stored
    head = orjson.loads(head_part)
    firsts = [c[2] for c in doc["camps"].values()] + list(doc["doms"].values())
    assert head[uh.AFTER] == max(firsts, default=None)
    last = head[uh.LAST]
    start = T0 if last is None else last + 1
    for t in (start, start + 1, start + 500 * HOUR_MS):
        want = (us.campaigns_at(doc, t), us.domains_at(doc, t))
        assert uh.lists_from_head(head, lists, t) == want
        # as JSON text, for a response: the same values once decoded
        as_text = uh.lists_from_head(head, lists, t, encoded=True)
        assert all(isinstance(x, orjson.Fragment) for x in as_text)
        assert orjson.loads(orjson.dumps(list(as_text))) == list(want)
    after = head[uh.AFTER]
    if after is not None:  # a campaign or domain first seen at t is not in the lists yet
        assert uh.lists_from_head(head, lists, after) is None
        assert uh.lists_from_head(head, lists, after, encoded=True) is None
        assert after <= start


def test_a_head_without_lists_is_a_layout_3_head():
    doc = folded_doc(random.Random(3))
    stored = uh.encode(doc)
    assert bytes(uh.split(stored)[0]) == orjson.dumps(uh.head_of(doc))
    alone = orjson.dumps(uh.head_of(doc))
    head, lists = uh.split(alone)
    assert (bytes(head), lists) == (alone, None)


def test_a_head_of_layout_4_is_read_without_its_lists():
    """Layout 4 kept the lists on one line in another form: this reader takes its head and
    leaves the lists to the document."""
    doc = folded_doc(random.Random(5))
    camps = doc["camps"]
    names = sorted(camps)
    old_lists = [None, names, [camps[n][0] for n in names], [camps[n][1] for n in names],
                 sorted(doc["doms"])]
    old_head = uh.head_of(doc)[:uh.AFTER]
    stored = orjson.dumps(old_head) + b"\n" + orjson.dumps(old_lists)
    head, lists = uh.split(stored)
    assert (bytes(head), lists) == (orjson.dumps(old_head), None)


def test_profile_with_lists_reads_the_head_now_and_the_document_before(env, monkeypatch):
    store, state, online = env
    reads = _folded(store, state, monkeypatch, first_campaign="c2")
    online.check_layout()  # its periodic reads (layout, rebuild mark) done: the profile's alone
    now = H + 61 * MIN
    reads.clear()
    p = online.profile("u1", now)
    assert reads == [fold.HEAD]
    assert p["campaigns"] == {"c1": {"impressions": 1, "clicks": 1},
                              "c2": {"impressions": 1, "clicks": 0}}
    assert p["domains"] == ["x.com"]
    reads.clear()
    before = online.profile("u1", H + 10 * MIN)  # not after every event: the document
    assert reads == [fold.HEAD, fold.USER]
    assert before["campaigns"] == {"c2": {"impressions": 1, "clicks": 0}}
    # the same answer from the document alone, and from a head of layout 3 (no lists)
    heads = dict(state.conn.execute("SELECT key, value FROM docs WHERE ns=?", (fold.HEAD,)))
    state.conn.execute("DELETE FROM docs WHERE ns=?", (fold.HEAD,))
    state.conn.commit()
    assert online.profile("u1", now) == p
    state.conn.execute("INSERT INTO docs (ns, key, hour, value) VALUES (?, ?, 0, ?)",
                       (fold.HEAD, "u1", bytes(uh.split(heads["u1"])[0])))
    state.conn.commit()
    reads.clear()
    assert online.profile("u1", now) == p
    assert reads == [fold.HEAD, fold.USER]
    assert online.profile("u1", now, lists=False) == _counters(p)


def _decoded(profile: dict) -> dict:
    return {k: orjson.loads(orjson.dumps(v)) if isinstance(v, orjson.Fragment) else v
            for k, v in profile.items()}


def test_encoded_lists_are_the_lists_as_json_from_the_head_and_the_document(env, monkeypatch):
    store, state, online = env
    reads = _folded(store, state, monkeypatch, first_campaign="c2")
    online.check_layout()
    for t, path in ((H + 61 * MIN, [fold.HEAD]), (H + 10 * MIN, [fold.HEAD, fold.USER])):
        reads.clear()
        got = online.profile("u1", t, encoded=True)
        assert reads == path
        assert isinstance(got["campaigns"], orjson.Fragment)
        assert isinstance(got["domains"], orjson.Fragment)
        assert _decoded(got) == online.profile("u1", t)
    assert "campaigns" not in online.profile("u1", H + 61 * MIN, lists=False, encoded=True)


# Names that would fool a careless search of the campaigns' JSON text: quotes, backslashes,
# braces, colons, commas, the inner keys' own names, other names as prefixes and suffixes.
_NAME_PARTS = ['"', "\\", ":", "{", "}", ",", "c1", "impressions", "clicks", ":{", '":{"',
               '"impressions":', " ", "é", "\n", "\x00", "\u2028"]


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from(_NAME_PARTS), max_size=4).map("".join),
                          st.integers(0, 10**6), st.integers(0, 10**6)),
                max_size=12),
       st.lists(st.sampled_from(_NAME_PARTS), max_size=4).map("".join))
def test_one_campaigns_counts_are_found_in_the_text_as_decoded(camps, absent):
    doc = us.new_user()
    doc["camps"] = {name: [imp, clk, T0] for name, imp, clk in camps}
    _, stored = uh.split(uh.encode(doc))
    text = stored[0]
    assert orjson.loads(text) == uh.lists_of(doc)[0]
    for name in {*doc["camps"], absent}:
        want = tuple(doc["camps"][name][:2]) if name in doc["camps"] else (0, 0)
        assert uh.campaign_counts(text, name) == want, name


@pytest.mark.parametrize("seed", range(60))
def test_the_heads_latest_prediction_answers_as_the_document_after_it(seed):
    rng = random.Random(seed)
    doc = us.new_user()
    times = [T0 + rng.randrange(60 * HOUR_MS) for _ in range(rng.randint(0, 20))]
    times += rng.sample(times, min(len(times), 3))  # ties on ts, with other ids and scores
    horizon = T0
    for n, ts in enumerate(times):
        us.add_predictions({"u": doc}, [(f"p{rng.randrange(5)}{n}", ts, "u", "m", rng.random(),
                                         None)])
        if rng.random() < 0.2:
            horizon = max(horizon, ts - ts % HOUR_MS - rng.randrange(0, 30) * HOUR_MS)
            us.trim(doc, horizon)
    head = orjson.loads(orjson.dumps(uh.head_of(doc)))
    latest = max(times, default=None)
    start = T0 if latest is None else latest + 1
    for t in (start, start + 1, start + 23 * HOUR_MS, start + 24 * HOUR_MS, start + 25 * HOUR_MS,
              start + 400 * HOUR_MS):
        got, want = uh.prediction_from_head(head, t), us.latest_prediction_at(doc, t)
        assert got == want or all(map(math.isnan, got + want)), t
    if latest is not None:
        assert uh.prediction_from_head(head, latest) is None


def _same_inputs(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k, v in want.items():
        if v.dtype.kind == "f":
            np.testing.assert_allclose(got[k], v, rtol=1e-12, atol=1e-12, err_msg=k)
        else:
            np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_feature_inputs_read_the_head_now_and_the_document_before(env, monkeypatch):
    store, state, online = env
    reads = _folded(store, state, monkeypatch)
    fold.fold_rows(state, "predictions", [("p1", H + 30 * MIN, "u1", "m", 0.25, "b")],
                   "replay/p1", H + 56 * MIN)
    online.check_layout()
    instants = (H + 10 * MIN, H + 20 * MIN, H + 30 * MIN, H + 30 * MIN + 1, H + 61 * MIN,
                H + 3 * 60 * MIN)
    got = {}
    for t in instants:
        for campaign in ("c1", "c2"):
            reads.clear()
            got[t, campaign] = online.feature_inputs("u1", campaign, t, US_IP, "curl/8", "x.com")
            user_reads = [ns for ns in reads if ns in (fold.HEAD, fold.USER)]
            # after every impression, click and prediction the head answers; before, the document
            assert user_reads == ([fold.HEAD] if t > H + 30 * MIN else [fold.HEAD, fold.USER]), t
    assert got[H + 61 * MIN, "c1"]["pred_score"][0] == 0.25
    assert got[H + 61 * MIN, "c1"]["uc_impressions"][0] == 2
    assert got[H + 61 * MIN, "c2"]["uc_impressions"][0] == 0
    state.conn.execute("DELETE FROM docs WHERE ns=?", (fold.HEAD,))  # the documents alone
    state.conn.commit()
    for (t, campaign), inputs in got.items():
        _same_inputs(inputs, online.feature_inputs("u1", campaign, t, US_IP, "curl/8", "x.com"))
