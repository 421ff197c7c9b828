"""Segment counters online (hour rows + minute rows with their event logs): windows read at any
millisecond equal a brute-force count of the folded events with ts < t, however the events were
split into commits (several in one millisecond, clicks moved to another country by a later
impression, reads at exact minute and hour boundaries); minute logs are text any order of
commits gives the same canonical form; an online store of the older layout is refused until it
is rebuilt."""

from __future__ import annotations

import random

import pytest
from depth import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clicklake.platform.online import SqliteState, fold_files, fold_rows
from clicklake.platform.online.segment_state import (
    SegmentWindows,
    _SortedLog,
    count_before,
    window_24h,
)
from clicklake.platform.online.sqlite_state import StaleLayout
from clicklake.platform.online.state import canonical_log
from clicklake.platform.storage import Store
from tests.landing_factory import MIN, H, click, impression, land, old_layout_online_db

US_IP, DE_IP = "8.8.8.8", "46.4.0.1"


@pytest.mark.parametrize(("log", "offset", "want"), [
    ("", 0, 0), ("", 59_999, 0),
    ("00000,", 0, 0), ("00000,", 1, 1),
    ("00010,00005,00010,", 10, 1), ("00010,00005,00010,", 11, 3),
    ("00010,-00010,00020,", 15, 0), ("00010,-00010,00020,", 21, 1),
    ("-00030,00030,00030,", 31, 1), ("59999,", 59_999, 0), ("59999,", 60_000, 1),
])
def test_count_before_counts_net_entries_before_the_offset(log, offset, want):
    assert count_before(log, offset) == want


@pytest.mark.parametrize("seed", range(30))
def test_a_long_log_counts_as_the_brute_force(seed):
    """A busy segment's log (the global one holds every event of the minute) is compared as
    one array: the same count as entry by entry, at its entries' own offsets and the minute's
    ends, take-backs (the text path) included."""
    rng = random.Random(seed)
    offsets = [rng.randrange(0, 60_000) for _ in range(rng.choice([999, 1000, 5000]))]
    log = "".join(f"{o:05d}," for o in offsets)
    taken = log + f"-{offsets[0]:05d},"
    # scanned on its first read, sorted once for the next (a reader that asks again and again)
    kept = {text: _SortedLog(text) for text in (log, taken)}
    for offset in (0, 1, 60_000, *rng.sample(offsets, 5), 0):
        assert count_before(log, offset) == sum(o < offset for o in offsets), offset
        assert count_before(taken, offset) == (sum(o < offset for o in offsets)
                                               - (offsets[0] < offset))
        for text, sorted_log in kept.items():
            assert sorted_log.before(offset) == count_before(text, offset), offset
    array = kept[log].array  # sorted as milliseconds (numpy 1.x kept a uint8 product in 16 bits)
    assert array is None or (array.dtype.kind == "i" and 0 <= array[0] <= array[-1] < 60_000)


def test_canonical_log_nets_and_sorts():
    assert canonical_log("00020,00010,-00020,00010,") == "00010,00010,"
    assert canonical_log("-00005,") == "-00005,"
    assert canonical_log("") == ""


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), commits=st.integers(1, 6))
def test_windows_equal_brute_force_at_every_instant(tmp_path_factory, seed, commits):
    """Impressions and clicks packed into a few minutes (many in one millisecond), folded in
    random commits; global and campaign windows at random instants (and at minute and hour
    boundaries) equal counting the events with ts < t."""
    rng = random.Random(seed)
    base = H + 58 * MIN  # the events straddle an hour boundary
    imps = [(f"i{n}", base + rng.randrange(0, 4 * MIN, rng.choice([1, 997, 15_000])),
             f"u{rng.randrange(5)}", rng.choice(["c1", "c2"])) for n in range(60)]
    clks = [(f"k{n}", base + rng.randrange(0, 4 * MIN, rng.choice([1, 1_000])),
             f"u{rng.randrange(5)}", rng.choice(["c1", "c2"]), rng.choice([None, "i3"]))
            for n in range(25)]
    state = SqliteState(str(tmp_path_factory.mktemp("seg") / "online.db"))
    rows = [("impressions", (i, ts, u, c, None, US_IP, None, None)) for i, ts, u, c in imps]
    rows += [("clicks", (k, ts, u, c, iid)) for k, ts, u, c, iid in clks]
    rng.shuffle(rows)
    arrival = base + 5 * MIN
    instants = [base, base + 2 * MIN, H + 60 * MIN, base + 4 * MIN + 1]
    instants += [rng.choice(imps)[1] + rng.choice([0, 1]) for _ in range(6)]
    instants += [rng.choice(clks)[1] + rng.choice([0, 1]) for _ in range(4)]
    pairs = [("global", "all"), ("campaign", "c1"), ("campaign", "c2"), ("country", "US"),
             ("country", "unknown")]
    # Readers that keep what they read, asked between the commits: one on the writer's own
    # connection, one on a connection of its own (as the API's)
    kept = [SegmentWindows(state), SegmentWindows(SqliteState(state.path))]
    for n in range(commits):
        part = rows[n::commits]
        for stream in ("clicks", "impressions"):
            batch = [r for s, r in part if s == stream]
            if batch:
                fold_rows(state, stream, batch, f"{stream}-{seed}-{n}", arrival)
        for t in instants:
            want = [window_24h(state, kind, seg, t) for kind, seg in pairs]
            assert all(reader.windows_24h(pairs, t) == want for reader in kept), (n, t - base)
    for t in instants:
        for kind, seg, pick in (("global", "all", lambda c: True),
                                ("campaign", "c1", lambda c: c == "c1")):
            want = (sum(1 for _, ts, _, c in imps if ts < t and pick(c)),
                    sum(1 for _, ts, _, c, _ in clks if ts < t and pick(c)))
            assert window_24h(state, kind, seg, t) == want, (kind, t - base)


def test_a_moved_click_leaves_its_minute_log_and_reads_stay_exact(tmp_path):
    """A click at 12 min + 500 ms folded before its impression counts as unknown inside its
    minute; the impression moves it to DE, at every instant of the minute."""
    store = Store(str(tmp_path / "lake"))
    state = SqliteState(str(tmp_path / "online.db"))
    ts = H + 12 * MIN + 500
    land(store, "clicks", H + 20 * MIN, [click("k1", ts, "i-de")], "1")
    fold_files(state, store, store.list("landing/"))
    assert window_24h(state, "country", "unknown", ts + 1) == (0, 1)
    land(store, "impressions", H + 25 * MIN, [impression("i-de", ts - 400, ip=DE_IP)], "2")
    fold_files(state, store, store.list("landing/"))
    for t, want in ((ts - 400, (0, 0)), (ts - 399, (1, 0)), (ts, (1, 0)), (ts + 1, (1, 1)),
                    (H + 13 * MIN, (1, 1))):
        assert window_24h(state, "country", "DE", t) == want, t - ts
        assert window_24h(state, "country", "unknown", t) == (0, 0)


def test_an_older_layout_is_refused_until_rebuilt(tmp_path):
    path = str(tmp_path / "online.db")
    old_layout_online_db(path)
    store = Store(str(tmp_path / "lake"))
    land(store, "impressions", H + 5 * MIN, [impression("a", H + MIN)], "1")
    state = SqliteState(path)
    with pytest.raises(StaleLayout):
        fold_files(state, store, store.list("landing/"))
    state.clear()  # what a rebuild does first
    assert fold_files(state, store, store.list("landing/")).events_total == 1
    assert window_24h(state, "global", "all", H + 2 * MIN) == (1, 0)


def test_the_24_hour_window_drops_the_hour_it_passes(tmp_path):
    """The window at t holds the hours from floor(t) - 24 h: an impression of hour H counts until
    hour H + 24 h ends and not in hour H + 25 h (the other tests' streams span a few hours only,
    and never reach the window's far edge)."""
    store = Store(str(tmp_path / "lake"))
    state = SqliteState(str(tmp_path / "online.db"))
    day = 24 * 60 * MIN
    land(store, "impressions", H + 6 * MIN, [impression("old", H + 5 * MIN)], "1")
    land(store, "impressions", H + day + 6 * MIN, [impression("new", H + day + 5 * MIN)], "2")
    fold_files(state, store, store.list("landing/"))
    assert window_24h(state, "global", "all", H + day + 30 * MIN) == (2, 0)
    assert window_24h(state, "global", "all", H + day + 60 * MIN - 1) == (2, 0)
    assert window_24h(state, "global", "all", H + day + 61 * MIN) == (1, 0)


def test_kept_windows_are_dropped_by_a_clear_and_shared_by_threads(tmp_path):
    """A reader's kept rows go with a rebuild's `clear` on its own connection (dropping the
    tables changes no row); threads sharing one reader take turns, so none counts a busy log
    while another sorts it."""
    from threads import run_together

    from clicklake.platform.timeutil import MINUTE_MS

    state = SqliteState(str(tmp_path / "online.db"))
    m = H + 30 * MINUTE_MS
    n = 30_000
    rows = [(f"i{k}", m + k * MINUTE_MS // n, f"u{k % 500}", "hot", "d.com", US_IP, None, None)
            for k in range(n)]
    fold_rows(state, "impressions", rows, "busy", m + MINUTE_MS + 5_000)
    t = m + 59_000
    pairs = [("global", "all"), ("campaign", "hot")]
    want = [window_24h(state, kind, seg, t) for kind, seg in pairs]
    assert want[0][0] == sum(1 for r in rows if r[1] < t)
    wrong = []
    for _ in range(8):
        reader = SegmentWindows(SqliteState(state.path))
        assert reader.windows_24h(pairs, t) == want  # the first read scans; the next sort

        def read(reader=reader) -> None:
            got = reader.windows_24h(pairs, t)
            if got != want:
                wrong.append(got)

        run_together(*[read] * 4)
    assert wrong == []
    kept = SegmentWindows(state)
    assert kept.windows_24h(pairs, t) == want
    state.clear()
    assert kept.windows_24h(pairs, t) == [(0, 0), (0, 0)]


def test_a_click_naming_an_impression_of_the_next_hour_takes_the_lakes_country(tmp_path):
    """A click may name only an impression of its own hour or the hour before (the lake's
    rule); one naming an impression of the next hour takes its country from the user's latest
    earlier impression instead, online as in the lake (the oracle's `click_country`)."""
    import oracle

    from clicklake.platform.enrich import country_of

    us_ip, de_ip = "8.8.8.8", "46.4.0.1"
    store = Store(str(tmp_path / "lake"))
    state = SqliteState(str(tmp_path / "online.db"))
    land(store, "impressions", H + 10 * MIN, [impression("i-us", H + 5 * MIN, ip=us_ip)], "1")
    # the named impression arrives, and is folded, before the click
    land(store, "impressions", H + 70 * MIN, [impression("i-de", H + 65 * MIN, ip=de_ip)], "2")
    land(store, "clicks", H + 75 * MIN, [click("k1", H + 50 * MIN, "i-de")], "3")
    fold_files(state, store, store.list("landing/"))
    imps = [{"impression_id": "i-us", "ts": H + 5 * MIN, "user_id": "u1", "ip": us_ip},
            {"impression_id": "i-de", "ts": H + 65 * MIN, "user_id": "u1", "ip": de_ip}]
    clk = {"click_id": "k1", "ts": H + 50 * MIN, "impression_id": "i-de", "user_id": "u1"}
    assert oracle.click_country(clk, imps, lambda r: country_of(r["ip"])) == "US"
    t = H + 80 * MIN
    assert window_24h(state, "country", "US", t) == (1, 1)
    assert window_24h(state, "country", "DE", t) == (1, 0)
