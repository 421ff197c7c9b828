"""The serving sensor's planner (`online.watch.plan_tick`) over hand-made landing zones, with the
online store's record of folded files played by a set: failed runs' files asked again (and
given up after so many attempts), a backlog asked over several ticks without losing a file,
thousands of files landing late within the lookback, a key far in the future, a stream quiet
for a week (listings per tick), late files in older folders (the hourly sweep) and in folders
days or months old (the daily sweep, a month of one stream a tick; what it reports is kept
until folded or deleted), deleted files; and property tests over random landing orders, run
failures and tick times, over hours and over a week: every file is folded or reported late,
never both, never lost."""

from __future__ import annotations

import os

import orjson
import pytest
from depth import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clicklake.platform import landing
from clicklake.platform.online import watch
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS
from tests.landing_factory import MIN, H

T = H + 10 * HOUR_MS  # the ticks' clock, well after the files' key times


def _put(store: Store, stream: str, arrival_ms: int, tag: int) -> str:
    key = landing.firehose_key(stream, arrival_ms, f"00000000-0000-4000-8000-{tag:012d}")
    path = os.path.join(store.root, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()  # the planner reads keys only
    return key


class Zone:
    """A landing zone, an online store's folded set, and ticks whose runs end at once, folding
    what they were asked, or failing when told to."""

    def __init__(self, root: str | Store):
        self.store = root if isinstance(root, Store) else Store(root)
        self.folded: set[str] = set()
        self.cursor: dict = {}
        self.over: dict[str, bool | None] = {}  # run key -> over?

    def tick(self, now: int, fold: bool = True, **kw) -> watch.TickPlan:
        plan = watch.plan_tick(self.store, lambda keys: self.folded & set(keys), self.cursor,
                               now, run_over=lambda rk: self.over.get(rk), **kw)
        self.cursor, problem = watch.read_cursor(watch.dump_cursor(plan.cursor))  # as stored
        assert problem is None and self.cursor == plan.cursor  # read back as it was given
        for keys, rk in zip(plan.batches, plan.run_keys, strict=True):
            self.over[rk] = True  # the run ends at once: it folds its files, or fails
            if fold:
                self.folded |= {k for k in keys if self.store.exists(k)}
        return plan


def test_a_failed_runs_files_are_asked_again_then_given_up(tmp_path):
    z = Zone(str(tmp_path))
    k = _put(z.store, "clicks", H + MIN, 1)
    first = z.tick(T, fold=False)  # the run is launched, and fails
    assert first.batches == [[k]]
    z.over[first.run_keys[0]] = None  # not visible yet: wait
    assert z.tick(T + MIN, fold=False).batches == []
    z.over[first.run_keys[0]] = False  # queued or running: wait
    assert z.tick(T + 2 * MIN, fold=False).batches == []
    z.over[first.run_keys[0]] = True  # failed
    keys_seen, asked_at = {first.run_keys[0]}, T
    for attempt in range(2, watch.MAX_ATTEMPTS + 1):
        wait = watch.RETRY_BACKOFF_MS * 2 ** (attempt - 2)  # doubling with each attempt
        assert z.tick(asked_at + wait - 1, fold=False).batches == []
        plan = z.tick(asked_at + wait, fold=False)
        assert plan.batches == [[k]] and plan.retried == [k]
        assert plan.run_keys[0] not in keys_seen  # a new run key: Dagster would skip a used one
        keys_seen.add(plan.run_keys[0])
        asked_at += wait
    plan = z.tick(asked_at + 10 * HOUR_MS, fold=False)
    assert (plan.batches, plan.given_up) == ([], [k])
    assert z.cursor["runs"] == {} and z.cursor["streams"]["clicks"]["gone"] == [k]
    assert z.tick(T + 2 * HOUR_MS).batches == []  # given up: not asked again as a new file


def test_without_a_view_of_runs_a_request_is_retried_after_a_while(tmp_path):
    z = Zone(str(tmp_path))
    k = _put(z.store, "predictions", H + MIN, 1)
    assert z.tick(T, fold=False).batches == [[k]]
    z.over.clear()  # the run is unknown to the planner
    assert z.tick(T + watch.RETRY_AFTER_MS - 1, fold=False).batches == []
    assert z.tick(T + watch.RETRY_AFTER_MS, fold=True).batches == [[k]]
    assert z.tick(T + 2 * watch.RETRY_AFTER_MS).batches == []
    assert z.cursor["runs"] == {}


def test_thousands_of_files_landing_late_within_the_lookback_are_all_asked(tmp_path):
    z = Zone(str(tmp_path))
    newest = _put(z.store, "impressions", H + 59 * MIN, 0)
    assert z.tick(T).batches == [[newest]]
    late = [_put(z.store, "impressions", H + (i * 50 * MIN) // 6000, i + 1) for i in range(6000)]
    plan = z.tick(T + MIN)
    assert sorted(k for b in plan.batches for k in b) == sorted(late)
    assert plan.late == []


def test_a_backlog_is_asked_over_several_ticks_and_none_of_it_is_late(tmp_path):
    z = Zone(str(tmp_path))
    keys = [_put(z.store, s, H + i * MIN, i) for i in range(300) for s in ("clicks",)]
    keys += [_put(z.store, "predictions", H + i * 2 * MIN, 1000 + i) for i in range(100)]
    asked = []
    for n in range(10):
        plan = z.tick(T + n * MIN, max_files=40, max_runs=2)
        assert all(len(b) <= 40 for b in plan.batches) and len(plan.batches) <= 2
        assert plan.late == []
        asked += [k for b in plan.batches for k in b]
    assert sorted(asked) == sorted(keys)  # each once
    assert [landing.parse_key(k) for k in asked] == sorted(landing.parse_key(k) for k in asked)


@pytest.mark.parametrize("lateness_min", [0, 60, 90, 24 * 60])
def test_a_file_is_late_only_once_the_raw_hour_of_its_key_time_was_built(tmp_path,
                                                                           lateness_min):
    """A file visible some time after its key time (Firehose retrying a delivery) is folded
    while the raw hour of its key time is still to be built (the schedule builds hour H at
    H + 1 h + lateness + 15 min), and reported late after, as the raw layer has built that hour
    without it. A fixed hour after the key time reported one 75 min old as late, which the raw
    layer kept; judged from the key time instead of its hour, one keyed at 10:50 and visible at
    12:30 was folded, though raw 10:00 was built at 12:15 without it."""
    from clicklake.assets.raw import FIREHOSE_BUFFER_S
    from clicklake.platform.timeutil import floor_hour

    lateness = lateness_min * MIN
    lookback = watch.lookback_ms(lateness)
    z = Zone(str(tmp_path))
    newest = T + 30 * MIN  # the newest key seen when the straggler becomes visible
    _put(z.store, "clicks", newest, 1)
    z.tick(newest, lookback=lookback)
    # The raw hour built last before `newest` (hour + 1 h + lateness + 15 min <= newest), and
    # the next, still to be built
    built = floor_hour(newest - HOUR_MS - lateness - FIREHOSE_BUFFER_S * 1000)
    assert built + lookback <= newest < built + HOUR_MS + lookback
    on_time = _put(z.store, "clicks", built + HOUR_MS + 1000, 2)  # key times are in seconds
    plan = z.tick(newest + 1, lookback=lookback)
    assert plan.batches == [[on_time]] and plan.late == []
    late = _put(z.store, "clicks", built + HOUR_MS - 1000, 3)  # the hour built: at its end
    plan = z.tick(newest + 2, lookback=lookback)
    assert plan.batches == [] and plan.late == [late]
    if lateness_min == 60:  # with the defaults: raw 10:00 is built at 12:15
        assert lookback == watch.LOOKBACK_MS == 2 * HOUR_MS + 15 * MIN
        kept = _put(z.store, "clicks", newest - 75 * MIN, 4)  # 11:15 at 12:30: raw 11:00 open
        assert z.tick(newest + 3).batches == [[kept]]


def test_a_key_far_ahead_of_the_clock_waits_for_it_and_stalls_nothing(tmp_path):
    # Folded at once, it would move the store's watermark (and horizon) hours ahead, and its
    # key would move the listing window past every on-time file.
    z = Zone(str(tmp_path))
    ahead = _put(z.store, "clicks", T + 5 * HOUR_MS, 1)  # a producer with a clock hours ahead
    first = _put(z.store, "clicks", T - MIN, 2)
    assert z.tick(T).batches == [[first]]
    for i in range(1, 4 * 60):
        on_time = _put(z.store, "clicks", T + i * MIN - 30_000, 10 + i)
        plan = z.tick(T + i * MIN)
        assert plan.batches == [[on_time]] and plan.late == [], i
    assert z.tick(T + 5 * HOUR_MS).batches == [[ahead]]  # its time has come


def test_a_stream_quiet_for_a_week_costs_a_few_listings_a_tick(tmp_path, monkeypatch):
    z = Zone(str(tmp_path))
    for s in landing.STREAMS:
        _put(z.store, s, H, 1)
    z.tick(T)
    calls = []
    for name in ("list", "subdirs"):
        real = getattr(Store, name)
        monkeypatch.setattr(Store, name, lambda self, p, _r=real, _n=name: (
            calls.append(_n), _r(self, p))[1])
    z.tick(T + 7 * 24 * HOUR_MS)  # a week later, the hourly sweep included
    assert len(calls) <= 3 * 14, calls
    calls.clear()
    z.tick(T + 7 * 24 * HOUR_MS + MIN)  # and without the sweep
    assert len(calls) <= 3 * 7, calls


def test_late_files_in_older_folders_are_reported_once_by_the_hourly_sweep(tmp_path):
    z = Zone(str(tmp_path))
    _put(z.store, "impressions", H + 5 * HOUR_MS, 1)
    z.tick(T)
    z.tick(T + MIN)  # this hour's sweep: nothing
    old = _put(z.store, "impressions", H + HOUR_MS, 2)  # four hours behind, visible only now
    assert z.tick(T + 2 * MIN).late == []  # not listed until the next hour's sweep
    plan = z.tick(T + HOUR_MS)
    assert (plan.batches, plan.late) == ([], [old])
    assert z.tick(T + 2 * HOUR_MS).late == []  # once
    assert old not in z.folded


def test_a_file_deleted_before_it_was_folded_is_reported_and_forgotten(tmp_path):
    z = Zone(str(tmp_path))
    k = _put(z.store, "clicks", H, 1)
    z.tick(T, fold=False)
    os.remove(os.path.join(z.store.root, k))
    plan = z.tick(T + MIN)
    assert (plan.batches, plan.vanished) == ([], [k])
    assert z.cursor["runs"] == {}


@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.tuples(st.sampled_from(landing.STREAMS),
                                 st.integers(0, 5 * 60),  # key time, minutes after H
                                 st.integers(0, 90),  # visible this many minutes after it
                                 st.booleans()),  # its first run fails
                       min_size=1, max_size=40),
       step=st.sampled_from([1, 5, 15, 60]))
def test_every_file_is_folded_or_reported_late_never_both_never_lost(tmp_path_factory, events,
                                                                       step):
    z = Zone(str(tmp_path_factory.mktemp("zone")))
    pending = sorted((minute + delay, stream, minute, i, fails)
                     for i, (stream, minute, delay, fails) in enumerate(events))
    failing: set[str] = set()
    visible_when: dict[str, tuple[int, str | None]] = {}
    late, now = [], H
    while pending or now < H + 9 * 60 * MIN:
        while pending and H + pending[0][0] * MIN <= now:
            _, stream, minute, i, fails = pending.pop(0)
            key = _put(z.store, stream, H + minute * MIN, i)
            newest = z.cursor.get("streams", {}).get(stream, {}).get("newest")
            visible_when[key] = (now, newest)
            if fails:
                failing.add(key)
        plan = watch.plan_tick(z.store, lambda keys: z.folded & set(keys), z.cursor, now,
                               run_over=lambda rk: z.over.get(rk))
        z.cursor = watch.read_cursor(watch.dump_cursor(plan.cursor))[0]
        for keys, rk in zip(plan.batches, plan.run_keys, strict=True):
            z.over[rk] = True
            if any(k in failing for k in keys):  # the whole run fails, once per file
                failing -= set(keys)
                continue
            assert not z.folded & set(keys)  # never asked once folded
            z.folded |= set(keys)
        late += plan.late
        assert not plan.given_up
        now += step * MIN
    assert len(late) == len(set(late))  # reported once
    for key, (_, newest) in visible_when.items():
        assert (key in z.folded) != (key in late), key
        if newest is None or (landing.parse_key(key).arrival_ms
                              >= landing.parse_key(newest).arrival_ms - watch.LOOKBACK_MS):
            assert key in z.folded, key  # within the lookback of what the sensor had seen


def test_hour_folders_walk_only_what_exists_from_an_hour_on_local_and_on_s3(tmp_path,
                                                                           moto_endpoint,
                                                                           s3_bucket):
    from clicklake.platform.storage import S3Options

    hours = [H - 30 * 24 * HOUR_MS, H - HOUR_MS, H, H + 3 * HOUR_MS, H + 40 * 24 * HOUR_MS,
             H + 400 * 24 * HOUR_MS]  # other days, months and a year
    for store in (Store(str(tmp_path)),
                  Store(f"s3://{s3_bucket}/root", S3Options(endpoint_url=moto_endpoint))):
        for i, h in enumerate(hours):
            landing.write_file(store, landing.firehose_key("clicks", h + MIN, f"u-{i}"), [b"{}"])
        got = landing.hour_folders(store, "clicks", H + 5 * MIN)
        assert got == [landing.hour_prefix("clicks", h) for h in hours[2:]], store.root
        assert landing.hour_folders(store, "clicks", H + 500 * 24 * HOUR_MS) == []
        assert landing.hour_folders(store, "impressions", H) == []


def test_a_file_that_fails_every_run_takes_no_other_file_down_with_it(tmp_path):
    z = Zone(str(tmp_path))
    poison = _put(z.store, "clicks", H + MIN, 0)
    others = [_put(z.store, s, H + 2 * MIN + i, 1 + i)
              for i, s in enumerate(["clicks", "impressions"] * 30)]
    given_up, asked_after = [], []
    for n in range(80):  # the cursor passed on as plan_tick wrote it
        plan = watch.plan_tick(z.store, lambda keys: z.folded & set(keys), z.cursor,
                               T + n * 5 * MIN, run_over=lambda rk: z.over.get(rk), max_files=16)
        z.cursor = plan.cursor
        for keys, rk in zip(plan.batches, plan.run_keys, strict=True):
            z.over[rk] = True
            if poison not in keys:
                z.folded |= set(keys)
            elif given_up:
                asked_after.append(n)
        given_up += plan.given_up
    assert set(others) <= z.folded  # in ever smaller runs, apart from the poison
    assert given_up == [poison] and asked_after == []  # once, then never asked again


def test_a_late_file_is_reported_once_while_its_stream_goes_on_or_goes_quiet(tmp_path):
    for quiet in (False, True):
        z = Zone(str(tmp_path / str(quiet)))
        late, key = [], None
        _put(z.store, "impressions", H + 20 * MIN, 0)
        for n in range(1, 40 * 60, 7):  # a tick every 7 minutes for 40 hours
            now = H + 20 * MIN + n * MIN
            if not quiet or n < 3 * 60:
                _put(z.store, "impressions", now, n)
            if key is None and n > 3 * 60:  # three hours behind: late
                key = _put(z.store, "impressions", H + 25 * MIN, 10**6)
            late += z.tick(now).late
        assert late == [key], quiet


def test_runs_in_flight_bound_what_is_asked_and_the_cursor_stays_small(tmp_path):
    z = Zone(str(tmp_path))
    keys = [_put(z.store, "impressions", H + i * 6_000, i) for i in range(3000)]  # 5 hours
    first = z.tick(T, fold=False, max_files=500, max_runs=2)
    assert [len(b) for b in first.batches] == [500, 500]
    for rk in first.run_keys:
        z.over[rk] = False  # queued behind the pool
    for n in range(1, 5):  # while they wait, nothing more is asked
        assert z.tick(T + n * MIN, fold=False, max_files=500, max_runs=2).batches == []
    size = len(watch.dump_cursor(z.cursor))
    assert size < 20_000, size  # 1,000 keys in flight, compressed
    z.over[first.run_keys[0]] = True  # one ends, having folded its files
    z.folded |= set(first.batches[0])
    plan = z.tick(T + 10 * MIN, fold=False, max_files=500, max_runs=2)
    assert plan.batches == [keys[1000:1500]] and plan.late == []


def test_a_reset_cursor_starts_from_the_stores_watermark_and_folds_no_late_file(tmp_path):
    z = Zone(str(tmp_path))
    on_time = [_put(z.store, "clicks", H + i * 10 * MIN, i) for i in range(30)]  # 5 hours
    z.tick(T)
    assert set(on_time) <= z.folded
    late = _put(z.store, "clicks", H + HOUR_MS, 99)  # hours behind: late
    z.cursor = {}  # lost (reset by hand, unreadable)
    newest = landing.parse_key(on_time[-1]).arrival_ms
    plan = z.tick(T + MIN, watermark_ms=newest)
    assert plan.batches == [] and plan.late == [late]


def test_a_run_that_never_ends_is_given_its_files_back_after_a_while(tmp_path):
    z = Zone(str(tmp_path))
    k = _put(z.store, "clicks", H, 1)
    first = z.tick(T, fold=False)
    z.over[first.run_keys[0]] = False  # "started" for ever: its worker died unseen
    assert z.tick(T + watch.STUCK_MS - 1).batches == []
    assert z.tick(T + watch.STUCK_MS).batches == [[k]]


def test_a_run_waiting_in_the_queue_is_never_taken_as_dead(tmp_path):
    # Queued behind a rebuild holding the fold's one slot for hours: taken as dead after 2 h,
    # its files were asked again (a second run queued behind the first), and after the fifth
    # attempt given up, though nothing had failed.
    z = Zone(str(tmp_path))
    k = _put(z.store, "clicks", H, 1)
    first = z.tick(T, fold=False)
    z.over[first.run_keys[0]] = watch.QUEUED
    for hours in (1, 3, 12, 48):
        plan = z.tick(T + hours * HOUR_MS, fold=False)
        assert (plan.batches, plan.retried, plan.given_up) == ([], [], []), hours
    z.over[first.run_keys[0]] = True  # it ran at last, and failed: asked again
    assert z.tick(T + 49 * HOUR_MS).batches == [[k]]


def test_cursors_of_the_right_json_but_wrong_types_start_over():
    good = {"v": 3, "streams": {"clicks": {"newest": None, "late": "", "gone": "",
                                           "swept": None}}, "runs": {}}
    assert watch.read_cursor(orjson.dumps(good).decode())[1] is None
    for bad in ({**good, "runs": {"r": {"at": "x", "n": 1, "keys": ""}}},
                {**good, "runs": {"r": {"at": 1, "n": 1, "keys": "not base64 zlib"}}},
                {**good, "streams": {"clicks": {**good["streams"]["clicks"], "late": [1]}}},
                {**good, "streams": {"clicks": {**good["streams"]["clicks"], "newest": 7}}},
                {**good, "streams": []}):
        cursor, problem = watch.read_cursor(orjson.dumps(bad).decode())
        assert cursor == {} and "starting over" in problem, bad
    now = {**good, "v": 4, "streams": {"clicks": {**good["streams"]["clicks"],
                                                  "deep": [20417, "2025/11"]}}}
    assert watch.read_cursor(orjson.dumps(now).decode())[1] is None
    for deep in ("2025/11", [20417, 11], [None, None], [1]):
        bad = {**now, "streams": {"clicks": {**now["streams"]["clicks"], "deep": deep}}}
        cursor, problem = watch.read_cursor(orjson.dumps(bad).decode())
        assert cursor == {} and "starting over" in problem, deep
    # A later version's cursor (after a rollback), or any object naming a version: read as the
    # oldest form, it dropped the runs in flight (their files then reported late), silently.
    for other in ({**now, "v": 5}, {"v": 2}, {"v": "4"}):
        cursor, problem = watch.read_cursor(orjson.dumps(other).decode())
        assert cursor == {} and "cursor version" in problem, other


def test_an_outage_of_the_fold_gives_up_no_file(tmp_path):
    # Every run fails for 20 minutes (a bad deploy, the lake unreadable), then runs succeed:
    # with retries backing off, no file spends its attempts inside the outage.
    z = Zone(str(tmp_path))
    keys = []
    for n in range(120):  # a file a minute for two hours, a tick a minute
        now = T + n * MIN
        keys.append(_put(z.store, "clicks", now - 30_000, n))
        plan = z.tick(now, fold=n >= 20)
        assert plan.given_up == []
    assert set(keys[:-1]) <= z.folded


def test_a_file_deleted_after_the_window_moved_past_it_is_reported_deleted(tmp_path):
    z = Zone(str(tmp_path))
    k = _put(z.store, "clicks", T - MIN, 1)
    first = z.tick(T, fold=False)
    z.over[first.run_keys[0]] = False  # queued a long while
    _put(z.store, "clicks", T + 70 * MIN, 2)  # the stream goes on: the window passes k's hour
    z.tick(T + 70 * MIN)
    os.remove(os.path.join(z.store.root, k))
    z.over[first.run_keys[0]] = True  # it failed
    plan = z.tick(T + 80 * MIN)
    assert (plan.vanished, plan.given_up, plan.retried) == ([k], [], [])


def test_thousands_of_late_files_keep_the_cursor_small(tmp_path):
    z = Zone(str(tmp_path))
    for n in range(0, 6 * 60, 10):
        _put(z.store, "impressions", H + n * MIN, n)
        z.tick(H + n * MIN + 1)
    for i in range(3000):  # hours behind the newest key: all late
        _put(z.store, "impressions", H + HOUR_MS + i, 10_000 + i)
    plan = z.tick(H + 6 * HOUR_MS)
    assert len(plan.late) == 3000
    size = len(watch.dump_cursor(watch.plan_tick(
        z.store, lambda keys: z.folded & set(keys), z.cursor, H + 6 * HOUR_MS + MIN).cursor))
    assert size < 60_000, size


def test_retries_are_at_most_so_many_runs_a_tick_and_the_rest_wait(tmp_path):
    z = Zone(str(tmp_path))
    keys = [_put(z.store, "clicks", H + i * MIN, i) for i in range(20)]
    first = z.tick(T, fold=False, max_files=2, max_runs=10)  # 10 runs, all failing
    assert len(first.batches) == 10
    retried = []
    for n in range(1, 12):
        plan = z.tick(T + watch.RETRY_BACKOFF_MS + n * MIN, fold=True, max_files=2, max_runs=2)
        assert len(plan.batches) <= 2 and plan.given_up == []
        retried += plan.retried
    assert sorted(retried) == sorted(keys) and set(keys) <= z.folded


DAY = watch.DAY_MS


def _live(z: Zone, start: int, end: int, every: int = HOUR_MS, tag: int = 0) -> list:
    """Ticks from start to end, a file of each stream landing on time before each; the plans."""
    plans = []
    for i, now in enumerate(range(start, end, every)):
        for s in landing.STREAMS:
            _put(z.store, s, now - MIN, tag + i)
        plans.append(z.tick(now))
    return plans


def test_a_file_landing_days_late_is_reported_once_by_the_daily_sweep_and_kept_until_gone(
        tmp_path):
    z = Zone(str(tmp_path))
    _live(z, H, H + 5 * DAY)
    old = _put(z.store, "clicks", H + 2 * HOUR_MS, 10**6)  # four days behind, visible only now
    plans = _live(z, H + 5 * DAY, H + 8 * DAY, tag=10**5)  # three days of ticks, three sweeps
    assert [k for p in plans for k in p.late] == [old]  # reported once, on the next day
    assert old not in z.folded and old in z.cursor["streams"]["clicks"]["late"]
    reported_at = next(i for i, p in enumerate(plans) if p.late)
    day_of = (H + 5 * DAY + reported_at * HOUR_MS) // DAY
    assert day_of == (H + 5 * DAY) // DAY + 1  # the first tick of the next UTC day started it
    os.remove(os.path.join(z.store.root, old))  # deleted (the landing zone's expiry)
    _live(z, H + 8 * DAY, H + 9 * DAY + 3 * HOUR_MS, tag=2 * 10**5)
    assert z.cursor["streams"]["clicks"]["late"] == []  # the next sweep forgot it


def test_a_late_file_folded_by_a_rebuild_is_forgotten_and_a_given_up_one_is_not_reported(
        tmp_path):
    z = Zone(str(tmp_path))
    _live(z, H, H + 3 * DAY)
    late = _put(z.store, "impressions", H + HOUR_MS, 10**6)
    plans = _live(z, H + 3 * DAY, H + 4 * DAY + 6 * HOUR_MS, tag=10**5)
    assert [k for p in plans for k in p.late] == [late]
    z.folded.add(late)  # a rebuild folds every landing file
    _live(z, H + 4 * DAY + 6 * HOUR_MS, H + 5 * DAY + 6 * HOUR_MS, tag=2 * 10**5)
    assert z.cursor["streams"]["impressions"]["late"] == []
    # a file given up long ago stays reported as given up, not late, however old it gets
    poison = z.cursor["streams"]["impressions"]
    z.cursor["streams"]["impressions"] = poison | {"gone": [late]}
    z.folded.discard(late)
    plans = _live(z, H + 5 * DAY + 6 * HOUR_MS, H + 7 * DAY, tag=3 * 10**5)
    assert [k for p in plans for k in p.late] == []
    assert z.cursor["streams"]["impressions"]["gone"] == [late]


def test_the_daily_sweep_walks_months_back_one_stream_month_a_tick(tmp_path, monkeypatch):
    z = Zone(str(tmp_path))
    start = H - 100 * DAY  # files across four months
    for d in range(0, 100, 3):
        for s in landing.STREAMS:
            _put(z.store, s, start + d * DAY, d)
    z.tick(H)  # the first tick lists every stream whole: nothing is late
    assert z.folded and all(not z.tick(H + i * MIN).late for i in range(1, 20))
    oldest = _put(z.store, "predictions", start + HOUR_MS, 10**6)  # lands in the oldest month
    calls = []
    for name in ("list", "subdirs"):
        real = getattr(Store, name)
        monkeypatch.setattr(Store, name, lambda self, p, _r=real, _n=name: (
            calls.append((_n, p)), _r(self, p))[1])
    now = (H // DAY + 1) * DAY  # the next day: a new sweep (its first tick: the hourly one too)
    z.tick(now)
    late, ticks = [], 1
    while not late:
        calls.clear()
        late = z.tick(now + ticks * MIN).late
        ticks += 1
        months = [p for n, p in calls if n == "list" and p.count("/") == 4]
        assert len(months) <= 1, months  # one stream's month a tick
        assert len(calls) <= 3 * 5 + 3, calls  # each stream's recent folders, and the sweep's
    assert late == [oldest]
    assert ticks <= 3 * 5  # every month of the first two streams, then four of the third
    for i in range(3 * 5):  # the rest of the day: nothing more is listed nor reported
        calls.clear()
        assert z.tick(now + (ticks + i) * MIN).late == []
        assert len(calls) <= 3 * 5 + 3, calls
    assert len(calls) <= 3 * 5, calls  # the sweep is over for the day


def test_a_cursor_of_the_version_before_goes_on_and_sweeps_that_day(tmp_path):
    z = Zone(str(tmp_path))
    _live(z, H, H + 3 * DAY)
    stored = orjson.loads(watch.dump_cursor(z.cursor))
    stored["v"] = 3
    for e in stored["streams"].values():
        del e["deep"]
    cursor, problem = watch.read_cursor(orjson.dumps(stored).decode())
    assert problem is None and all(e["deep"] is None for e in cursor["streams"].values())
    assert cursor["streams"]["clicks"]["newest"] == z.cursor["streams"]["clicks"]["newest"]
    z.cursor = cursor
    old = _put(z.store, "clicks", H + HOUR_MS, 10**6)
    plans = _live(z, H + 3 * DAY, H + 3 * DAY + 6 * HOUR_MS, tag=10**5)
    assert [k for p in plans for k in p.late] == [old]


@settings(max_examples=examples(25), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.tuples(st.sampled_from(landing.STREAMS),
                                 st.integers(0, 6 * 24),  # key time, hours after H
                                 st.integers(0, 4 * 24)),  # visible this many hours after it
                       min_size=1, max_size=25))
def test_over_a_week_every_file_is_folded_or_reported_once_however_late(tmp_path_factory,
                                                                       events):
    z = Zone(str(tmp_path_factory.mktemp("zone")))
    pending = sorted((hour + delay, stream, hour, i)
                     for i, (stream, hour, delay) in enumerate(events))
    late: list[str] = []
    keys = []
    for now in range(H + 30 * MIN, H + 12 * DAY, HOUR_MS):
        while pending and H + pending[0][0] * HOUR_MS <= now:
            _, stream, hour, i = pending.pop(0)
            keys.append(_put(z.store, stream, H + hour * HOUR_MS + MIN, i))
        late += z.tick(now).late
    assert len(late) == len(set(late))
    for key in keys:
        assert (key in z.folded) != (key in late), key


def test_the_daily_sweep_finds_a_file_a_year_late_local_and_on_s3(tmp_path, moto_endpoint,
                                                                   s3_bucket):
    from clicklake.platform.storage import S3Options

    for store in (Store(str(tmp_path)),
                  Store(f"s3://{s3_bucket}/root", S3Options(endpoint_url=moto_endpoint))):
        z = Zone(store)
        for i, h in enumerate((H - 400 * DAY, H - 40 * DAY, H - 2 * DAY, H)):
            landing.write_file(store, landing.firehose_key("clicks", h, f"u-{i}"), [b"{}"])
        assert z.tick(H + MIN).late == [] and len(z.folded) == 4
        late = landing.firehose_key("clicks", H - 400 * DAY + HOUR_MS, "u-late")
        landing.write_file(store, late, [b"{}"])
        reported = [k for n in range(30) for k in z.tick(H + DAY + n * MIN).late]
        assert reported == [late] and late not in z.folded, store.root
