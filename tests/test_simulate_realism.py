"""What the synthetic streams look like: real country IP ranges, browser and crawler agents,
skewed activity, click farms and crawlers, prices, recency and time of day; plus the Firehose
buffer writer and the id sequences on hand-made inputs."""

from __future__ import annotations

import ipaddress

import iptocc
import numpy as np
import orjson
import pyarrow.compute as pc
import pytest
from crawlerdetect import CrawlerDetect
from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from clicklake.platform import landing
from clicklake.platform.simulate import clickmodel, generate, geo, read_truth
from clicklake.platform.simulate.ids import IdSequence
from clicklake.platform.simulate.useragents import BROWSERS, CRAWLERS
from clicklake.platform.simulate.writer import FirehoseWriter
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, MINUTE_MS, parse_instant

START = parse_instant("2026-11-24T00:00:00Z")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("realism")))
    summary = generate(store, start_ms=START, hours=6, users=5000, impressions=30_000, seed=4,
                       clean=True)
    rows = []
    for key in store.list("landing/impressions/"):
        rows += [orjson.loads(line) for line in landing.read_lines(store, key).lines]
    return store, summary, rows, read_truth(store)


def test_every_country_block_is_that_country():
    rng = np.random.default_rng(0)
    for c, code in enumerate(geo.COUNTRY_CODES):
        ips = geo.ip_text(geo.sample_ips(rng, np.full(3000, c)))
        assert set(iptocc.country_code(ips)) == {code}, code
        assert all(0 < int(ip.rsplit(".", 1)[1]) < 255 for ip in ips)
    for crawler in CRAWLERS:
        for cidr in crawler.cidrs:
            net = ipaddress.IPv4Network(cidr)
            assert set(iptocc.country_code([str(a) for a in net])) == {crawler.country}


def test_generated_ips_map_to_the_intended_country(run):
    _, _, rows, truth = run
    country = dict(zip(truth["impression_id"].to_pylist(), truth["country"].to_pylist(),
                       strict=True))
    with_ip = [r for r in rows if "ip" in r]
    looked_up = iptocc.country_code([r["ip"] for r in with_ip])
    assert looked_up == [country[r["impression_id"]] for r in with_ip]
    assert len(set(looked_up)) >= 12  # the audience is international


def test_crawlerdetect_flags_crawlers_and_not_browsers(run):
    detect = CrawlerDetect()
    assert not any(detect.isCrawler(b.ua) for b in BROWSERS)
    assert all(detect.isCrawler(c.ua) for c in CRAWLERS)
    _, _, rows, truth = run
    bot = dict(zip(truth["impression_id"].to_pylist(), truth["is_crawler"].to_pylist(),
                   strict=True))
    seen = {(r["user_agent"], bot[r["impression_id"]]) for r in rows if "user_agent" in r}
    assert all(detect.isCrawler(ua) == is_bot for ua, is_bot in seen)
    assert any(is_bot for _, is_bot in seen) and len(seen) > 20


def test_the_declared_device_os_browser_are_what_a_parser_reads():
    enrich = pytest.importorskip("clicklake.platform.enrich.user_agent")
    for b in BROWSERS:
        info = enrich.user_agent_of(b.ua)
        assert (info.device_type, info.os, info.browser) == (b.device, b.os, b.browser), b.ua


def test_click_rates_by_kind_of_user(run):
    _, _, _, truth = run
    clicked = truth["clicked"].to_numpy(zero_copy_only=False)
    crawler = truth["is_crawler"].to_numpy(zero_copy_only=False)
    farm = truth["is_click_farm"].to_numpy(zero_copy_only=False)
    human = ~crawler & ~farm
    assert 0.01 < clicked[human].mean() < 0.03
    assert clicked[farm].mean() > 0.15 and farm.sum() > 200  # few users, very many impressions
    assert clicked[crawler].sum() <= 1 and crawler.sum() > 500
    p = truth["p_click"].to_numpy()
    assert abs(p[human].mean() - clicked[human].mean()) < 0.005
    ratio = pc.divide(truth["p_label"], truth["p_click"]).to_numpy()
    assert np.allclose(ratio, clickmodel.within_window_share())
    assert 0.88 < clickmodel.within_window_share() < 0.96


def test_activity_is_heavy_tailed(run):
    _, _, rows, _ = run
    per_user = np.sort(np.unique([r["user_id"] for r in rows], return_counts=True)[1])[::-1]
    top = per_user[: max(1, len(per_user) // 100)].sum() / per_user.sum()
    assert top > 0.08  # the top 1 % of users see more than 8 % of the impressions
    assert np.median(per_user) <= 4


def test_campaigns_and_domains_are_skewed(run):
    _, _, rows, _ = run
    for field, n_min in (("campaign_id", 200), ("domain", 1000)):
        counts = np.sort(np.unique([r[field] for r in rows if field in r],
                                   return_counts=True)[1])[::-1]
        assert len(counts) > n_min
        assert counts[:10].sum() / counts.sum() > 0.1


def test_costs_are_cpm_like(run):
    _, _, rows, _ = run
    cost = np.array([r["cost"] for r in rows if "cost" in r])
    assert cost.min() >= 0.0005 and cost.max() <= 0.02
    assert 0.001 < np.median(cost) < 0.01


def test_time_of_day_moves_traffic_and_click_rate():
    us = geo.COUNTRY_CODES.index("US")
    traffic = np.array([clickmodel.traffic_by_country(h)[us] for h in range(24)])
    assert traffic.max() / traffic.min() > 3
    assert traffic[1] > traffic[13]  # 20:00 in New York beats 08:00
    ctr = np.array([clickmodel.ctr_time_effect(h)[us] for h in range(24)])
    assert ctr.argmax() == (21 + 5) % 24


def test_a_recent_click_raises_the_click_probability(run):
    assert clickmodel.recency_effect(np.array([np.inf]))[0] == 0.0
    eff = clickmodel.recency_effect(np.array([0.0, MINUTE_MS, HOUR_MS, 24 * HOUR_MS]))
    assert np.all(np.diff(eff) < 0) and eff[0] > 1.0
    # In the data: a human's p right after their own click is higher than their usual p.
    _, _, _, truth = run
    t = truth.filter(pc.invert(pc.or_(truth["is_crawler"], truth["is_click_farm"])))
    t = t.sort_by([("user_id", "ascending"), ("ts", "ascending")])
    user = t["user_id"].to_pylist()
    ts = t["ts"].cast("int64").to_numpy()
    cts = t["click_ts"].cast("int64").fill_null(-1).to_numpy()
    p = t["p_click"].to_numpy()
    after, other = [], []
    for i in range(1, len(user)):
        recent = user[i] == user[i - 1] and 0 <= ts[i] - cts[i - 1] < 10 * MINUTE_MS \
            and cts[i - 1] > 0
        (after if recent else other).append(p[i])
    assert len(after) > 10 and np.mean(after) > 2 * np.mean(other)


def _read(store, key):
    return landing.read_lines(store, key).lines


def test_writer_cuts_objects_by_interval_and_size(tmp_path):
    store = Store(str(tmp_path))
    w = FirehoseWriter(store, "clicks", np.random.default_rng(0), interval_ms=5 * MINUTE_MS,
                       max_bytes=20)
    t0 = START
    arrivals = np.array([t0 + 9_000, t0 + 1_500, t0 + 301_000, t0 + 2_000, t0 + 2_500,
                         t0 + 2_700, t0 + 3_100, t0 + 11 * MINUTE_MS])
    lines = [f'{{"n":{i}}}'.encode() for i in range(len(arrivals))]  # 8 bytes with the newline
    w.add(arrivals[:4], lines[:4])
    w.add(arrivals[4:], lines[4:])
    w.flush(t0 + 10 * MINUTE_MS)  # the 11th-minute record waits
    keys = list(w.keys)
    got = [_read(store, k) for k in keys]
    # In arrival order: 1.5 s, 2.0 s, 2.5 s, 2.7 s | 3.1 s, 9 s | (next interval) 301 s.
    # Three lines pass 20 bytes, but the cut waits for the second to change (2.7 s → 3.1 s),
    # so the next object's key time (whole seconds) is after all records of this one.
    assert got == [[b'{"n":1}', b'{"n":3}', b'{"n":4}', b'{"n":5}'], [b'{"n":6}', b'{"n":0}'],
                   [b'{"n":2}']]
    stamps = [landing.parse_key(k).arrival_ms - t0 for k in keys]
    assert stamps == [1_000, 3_000, 301_000]
    w.close()
    assert len(w.keys) == 4 and _read(store, w.keys[-1]) == [b'{"n":7}']
    assert w.lines_written == 8


@settings(max_examples=examples(30), deadline=None)
@given(st.integers(0, 2**32), st.lists(st.integers(0, 3000), min_size=1, max_size=6))
def test_ids_never_repeat_and_replay_the_same(seed, chunks):
    a = IdSequence(np.random.default_rng(seed), "x-")
    b = IdSequence(np.random.default_rng(seed), "x-")
    ids = [i for n in chunks for i in a.take(n)]
    assert len(set(ids)) == len(ids) == sum(chunks)
    assert ids == b.take(sum(chunks))
    assert all(len(i) == 18 for i in ids)


def test_hour_counts_follow_the_day(run):
    _, summary, rows, truth = run
    assert truth.num_rows == summary.events["impressions"] == len(rows) == 30_000
    hours = (truth["ts"].cast("int64").to_numpy() - START) // HOUR_MS
    assert set(np.unique(hours)) == set(range(6))
    # 00:00-06:00 UTC: evening in the Americas turning to night, Europe's night: traffic falls
    # (flat traffic gives 5,138 ... 4,872 here; the day's curve 5,591 ... 4,446)
    counts = np.bincount(hours, minlength=6)
    assert counts[0] > 1.15 * counts[5], counts.tolist()
