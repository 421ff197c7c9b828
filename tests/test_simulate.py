"""The synthetic stream generator: Firehose layout, determinism, the raw layer's view of its
messy records, clicks after impressions, and the CLI."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from clicklake.platform import landing
from clicklake.platform.events import SPECS, Rejected, parse_line
from clicklake.platform.raw import Rules, build_raw_partition
from clicklake.platform.simulate import MESSY_KINDS, generate, read_truth
from clicklake.platform.storage import S3Options, Store
from clicklake.platform.timeutil import HOUR_MS, MINUTE_MS, floor_hour, parse_instant

START = parse_instant("2026-11-24T00:00:00Z")
KEY = re.compile(
    r"^landing/(?P<stream>impressions|clicks|predictions)/(?P<y>\d{4})/(?P<mo>\d{2})/(?P<d>\d{2})/"
    r"(?P<h>\d{2})/(?P=stream)-1-(?P=y)-(?P=mo)-(?P=d)-(?P=h)-\d{2}-\d{2}-"
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.gz$"
)


def _run(root, **kw):
    args = {"start_ms": START, "hours": 3, "users": 600, "seed": 11, "clean": False}
    args.update(kw)
    return generate(Store(str(root)), **args)


def _files(store: Store, stream: str) -> list[landing.LandingFile]:
    return sorted(landing.parse_key(k) for k in store.list(f"landing/{stream}/"))


def _records(store: Store, stream: str) -> list[tuple]:
    """Every line of a stream parsed, with the arrival time of its file."""
    spec = SPECS[stream]
    out = []
    for lf in _files(store, stream):
        for line in landing.read_lines(store, lf.key).lines:
            out.append((*parse_line(spec, line), lf.arrival_ms))
    return out


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    return Store(str(root)), _run(root, clean=True, users=2000, hours=4)


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    return Store(str(root)), _run(root, messy_scale=3.0, users=2000, hours=3)


def test_keys_follow_the_firehose_layout(clean_run):
    store, summary = clean_run
    keys = store.list("landing/")
    assert keys and all(KEY.match(k) for k in keys), [k for k in keys if not KEY.match(k)][:3]
    assert len(set(keys)) == len(keys)
    assert sum(summary.files.values()) == len(keys)
    for stream in landing.STREAMS:
        files = _files(store, stream)
        assert len(files) == summary.files[stream]
        for lf in files:  # the folder hour is the hour of the key's arrival time
            assert lf.key.split("/")[5] == f"{(lf.arrival_ms // HOUR_MS) % 24:02d}"


def test_records_sit_between_their_file_and_the_next(clean_run):
    """Arrival = event time + a few seconds (at most 2 min), so every event time is before the
    next file's key time and at most 2 min before its own file's key time."""
    store, _ = clean_run
    for stream in landing.STREAMS:
        files = _files(store, stream)
        keys = [f.arrival_ms for f in files]
        assert keys == sorted(keys)
        for i, lf in enumerate(files):
            ts = [parse_line(SPECS[stream], line)[1]
                  for line in landing.read_lines(store, lf.key).lines]
            assert ts
            assert min(ts) >= lf.arrival_ms - 2 * MINUTE_MS - 1000
            if i + 1 < len(files):
                assert max(ts) < keys[i + 1]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b, c = (Store(str(tmp_path / n)) for n in "abc")
    for store, seed in ((a, 5), (b, 5), (c, 6)):
        generate(store, start_ms=START, hours=2, users=300, seed=seed, clean=False)
    keys = a.list("")
    assert keys == b.list("") and len(keys) > 10
    assert all(a.read_bytes(k) == b.read_bytes(k) for k in keys if k.startswith("landing/"))
    assert read_truth(a).equals(read_truth(b))
    assert set(c.list("landing/")).isdisjoint(keys)


def test_clean_run_has_only_good_records(clean_run):
    store, summary = clean_run
    assert summary.messy_by_kind() == dict.fromkeys(MESSY_KINDS, 0)
    for stream in landing.STREAMS:
        rows = _records(store, stream)  # parse_line raises on any bad line
        assert len(rows) == summary.events[stream] == summary.lines[stream]
        assert len({r[0] for r in rows}) == len(rows)
    imps = _records(store, "impressions")
    # Real logs lack optional fields now and then, but not often.
    for i, name in enumerate(n for n, _ in SPECS["impressions"].fields):
        if name in ("domain", "ip", "user_agent", "cost"):
            share = sum(r[i] is None for r in imps) / len(imps)
            assert 0.01 < share < 0.06, (name, share)


def test_both_time_formats_occur(clean_run):
    store, _ = clean_run
    lf = _files(store, "impressions")[5]
    kinds = Counter(type(orjson.loads(line)["ts"]).__name__
                    for line in landing.read_lines(store, lf.key).lines)
    assert kinds["str"] > 0 and kinds["int"] > 0


def test_raw_layer_quarantines_exactly_the_messy_records(messy_run):
    """Every messy kind maps to one quarantine reason and every quarantined line is owned by one
    partition, so summing partitions over all arrival hours gives exactly the injected counts;
    and the raw tables keep exactly the good events."""
    store, summary = messy_run
    assert all(v > 0 for v in summary.messy["impressions"].values()), summary.messy
    first = floor_hour(summary.first_arrival_ms) - HOUR_MS
    last = floor_hour(summary.last_arrival_ms)
    truth_ids = set(read_truth(store)["impression_id"].to_pylist())
    for stream in landing.STREAMS:
        counts: Counter[str] = Counter()
        kept_ids: list[str] = []
        for h in range(first, last + HOUR_MS, HOUR_MS):
            part = build_raw_partition(store, stream, h, Rules())
            counts.update({k: v for k, v in part.quarantined_by_reason.items() if v})
            kept_ids += part.table[SPECS[stream].id_field].to_pylist()
        expected = {k: v for k, v in summary.messy[stream].items() if v}
        assert dict(counts) == expected, stream
        assert len(kept_ids) == len(set(kept_ids)) == summary.events[stream]
        if stream == "impressions":
            assert set(kept_ids) == truth_ids
        assert summary.lines[stream] == summary.events[stream] + sum(expected.values())


def test_clicks_follow_their_impressions(clean_run):
    store, summary = clean_run
    imps = {r[0]: r for r in _records(store, "impressions")}
    clicks = _records(store, "clicks")
    assert len(clicks) > 50
    truth = read_truth(store)
    # Which impression each click really came from (the truth knows it by click time).
    source = {(u, c, t): i for i, u, c, t in zip(
        truth["impression_id"].to_pylist(), truth["user_id"].to_pylist(),
        truth["campaign_id"].to_pylist(), truth["click_ts"].cast("int64").to_pylist(),
        strict=True) if t is not None}
    by_user_campaign: dict[tuple, list] = {}
    for r in imps.values():
        by_user_campaign.setdefault((r[2], r[3]), []).append(r)
    delays = []
    no_id = 0
    for click_id, ts, user, campaign, imp_id, _arrived in clicks:
        if imp_id is None:
            no_id += 1
            # Attributed to the latest earlier impression of the same user and campaign, which
            # is exactly the one it came from.
            earlier = [r for r in by_user_campaign[(user, campaign)] if r[1] < ts]
            latest = max(earlier, key=lambda r: r[1])
            assert sum(r[1] == latest[1] for r in earlier) == 1
            assert latest[0] == source[(user, campaign, ts)], click_id
            continue
        assert source[(user, campaign, ts)] == imp_id
        imp = imps[imp_id]
        assert (imp[2], imp[3]) == (user, campaign)
        assert ts > imp[1]
        delays.append(ts - imp[1])
    delays = np.array(delays)
    beyond = (delays > 15 * MINUTE_MS).mean()
    assert 0.02 < beyond < 0.15, beyond
    assert 20_000 < np.median(delays) < 120_000
    assert 0.02 * len(clicks) < no_id < 0.1 * len(clicks)
    assert truth.num_rows == summary.events["impressions"]
    assert sum(truth["clicked"].to_pylist()) == len(clicks)


def test_predictions_come_just_before_their_impressions(clean_run):
    store, _summary = clean_run
    imps = {r[0]: r for r in _records(store, "impressions")}
    preds = _records(store, "predictions")
    share = len(preds) / len(imps)
    assert 0.9 < share < 0.99
    linked = [p for p in preds if p[5] is not None]
    assert 0.75 < len(linked) / len(preds) < 0.95
    for _pid, ts, user, model, score, imp_id, _a in linked:
        assert 2 <= imps[imp_id][1] - ts <= 40 and imps[imp_id][2] == user
        assert model == "ctr-v1" and 0.0 <= score <= 1.0
    # The score ranks impressions like the true probability does, though imperfectly.
    truth = read_truth(store)
    p_of = dict(zip(truth["impression_id"].to_pylist(), truth["p_click"].to_pylist(), strict=True))
    p = np.array([p_of[x[5]] for x in linked])
    s = np.array([x[4] for x in linked])
    rho = np.corrcoef(np.argsort(np.argsort(p)), np.argsort(np.argsort(s)))[0, 1]
    assert 0.5 < rho < 0.99, rho


def test_cli_help_and_run(tmp_path):
    from clicklake.cli import main

    runner = CliRunner()
    help_ = runner.invoke(main, ["generate", "--help"])
    assert help_.exit_code == 0 and "--s3-endpoint-url" in help_.output
    root = tmp_path / "cli"
    res = runner.invoke(main, ["generate", "--root", str(root), "--hours", "2", "--users",
                               "300", "--seed", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "impressions" in res.output and "messy records by kind" in res.output
    again = Store(str(tmp_path / "api"))
    summary = generate(again, start_ms=START, hours=2, users=300, impressions=None, seed=3,
                       clean=False)
    assert f"{summary.events['impressions']:,}" in res.output
    assert Store(str(root)).list("landing/") == again.list("landing/")
    bad = runner.invoke(main, ["generate", "--root", str(root), "--start", "2026-11-24T00:30"])
    assert bad.exit_code == 2 and "whole UTC hour" in bad.output
    replaced = runner.invoke(main, ["generate", "--root", str(root), "--hours", "1", "--users",
                                    "100", "--replace", "--clean", "--no-progress"])
    assert replaced.exit_code == 0, replaced.output
    fresh = Store(str(tmp_path / "fresh"))
    generate(fresh, start_ms=START, hours=1, users=100, seed=7, clean=True)
    assert Store(str(root)).list("") == fresh.list("")  # nothing of the first run is left


def test_generates_into_s3(moto_endpoint, s3_bucket):
    store = Store(f"s3://{s3_bucket}/lake", S3Options(endpoint_url=moto_endpoint))
    summary = generate(store, start_ms=START, hours=1, users=200, seed=2, clean=True)
    keys = store.list("landing/")
    assert len(keys) == sum(summary.files.values()) and all(KEY.match(k) for k in keys)
    assert len(read_truth(store)) == summary.events["impressions"]


def test_cli_writes_into_s3_through_an_endpoint(moto_endpoint, s3_bucket):
    from clicklake.cli import main

    res = CliRunner().invoke(main, ["generate", "--root", f"s3://{s3_bucket}/demo", "--hours",
                                    "1", "--users", "150", "--clean", "--no-progress",
                                    "--s3-endpoint-url", moto_endpoint])
    assert res.exit_code == 0, res.output
    store = Store(f"s3://{s3_bucket}/demo", S3Options(endpoint_url=moto_endpoint))
    keys = store.list("landing/")
    assert keys and all(KEY.match(k) for k in keys)
    assert f"{read_truth(store).num_rows:,}" in res.stdout


@pytest.mark.parametrize("kw", [{"hours": 0}, {"users": 0}, {"impressions": -1},
                                {"start_ms": START + 1}])
def test_bad_arguments_are_refused(tmp_path, kw):
    with pytest.raises(ValueError):
        _run(tmp_path, **kw)


def test_parse_line_rejects_what_messy_reports(messy_run):
    """Cross-check without the raw layer: lines that fail to parse are exactly the malformed,
    missing_field, bad_type and bad_value records."""
    store, summary = messy_run
    for stream in landing.STREAMS:
        reasons: Counter[str] = Counter()
        for lf in _files(store, stream):
            for line in landing.read_lines(store, lf.key).lines:
                try:
                    parse_line(SPECS[stream], line)
                except Rejected as rej:
                    reasons[rej.reason] += 1
        expected = {k: v for k, v in summary.messy[stream].items()
                    if v and k in ("malformed", "missing_field", "bad_type", "bad_value")}
        assert dict(reasons) == expected


def test_progress_counts_every_impression_and_the_summary_is_json(tmp_path):
    seen: list[int] = []
    s = generate(Store(str(tmp_path)), start_ms=START, hours=3, users=200, impressions=500,
                 seed=2, progress=seen.append)
    assert len(seen) == 3 and sum(seen) == 500
    d = orjson.loads(orjson.dumps(s.as_dict()))
    assert d["events"]["impressions"] == 500 and d["messy_by_kind"] == s.messy_by_kind()
    assert d["files"] == s.files and d["seconds"] > 0


def test_cli_progress_bar_goes_to_stderr(tmp_path):
    from clicklake.cli import main

    res = CliRunner().invoke(main, ["generate", "--root", str(tmp_path), "--hours", "2",
                                    "--users", "100", "--impressions", "300", "--progress"])
    assert res.exit_code == 0, res.output
    assert "300/300" in res.stderr and "300/300" not in res.stdout
    assert "done in" in res.stdout


@pytest.mark.parametrize(("users", "impressions"), [(5, 0), (1, 50)])
def test_tiny_populations_work(tmp_path, users, impressions):
    store = Store(str(tmp_path))
    s = generate(store, start_ms=START, hours=2, users=users, impressions=impressions, seed=1)
    assert s.events["impressions"] == impressions == read_truth(store).num_rows
    assert len(store.list("landing/")) == sum(s.files.values())
    assert (s.first_arrival_ms is None) == (impressions == 0)


def _ids(store: Store, stream: str) -> list[str]:
    out = []
    for key in store.list(f"landing/{stream}/"):
        for line in landing.decode_lines(store.read_bytes(key)).lines:
            try:
                out.append(orjson.loads(line)[SPECS[stream].fields[0][0]])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                pass  # a messy line
    return out


def test_runs_of_other_hours_into_one_root_do_not_repeat_ids(tmp_path):
    """The README adds an hour after the demo with the same seed: its ids drew on the seed alone,
    so 4,172 of 4,200 impressions of the new hour repeated the demo's ids (the raw layer saw
    duplicates, the oracle's join read other impressions' probabilities)."""
    store = Store(str(tmp_path))
    generate(store, start_ms=START, hours=2, users=300, seed=7, clean=True)
    first = {s: set(_ids(store, s)) for s in landing.STREAMS}
    later = Store(str(tmp_path / "later"))
    generate(later, start_ms=START + 2 * HOUR_MS, hours=2, users=300, seed=7, clean=True)
    for s in landing.STREAMS:
        again = set(_ids(later, s))
        assert again and not first[s] & again, s


@pytest.mark.parametrize(("args", "says"), [
    (["--seed", "-1"], "--seed"),
    (["--start", "2099-12-31T23:00:00Z", "--hours", "2"], "run past 2100"),
])
def test_generate_refuses_what_it_cannot_generate(tmp_path, args, says):
    from clicklake.cli import main

    res = CliRunner().invoke(main, ["generate", "--root", str(tmp_path), "--users", "10",
                                    *args])
    assert res.exit_code == 2 and says in res.output
    assert not (tmp_path / "landing").exists()


def test_the_demo_refuses_a_negative_seed_before_deleting_anything(tmp_path):
    from clicklake.cli import main

    generate(Store(str(tmp_path)), start_ms=START, hours=1, users=20, seed=1, clean=True)
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    res = CliRunner().invoke(main, ["demo", "--root", str(tmp_path), "--seed", "-1",
                                    "--no-serve"])
    assert res.exit_code == 2 and "--seed" in res.output
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == before


def test_no_oracle_over_truth_files_that_repeat_ids(tmp_path):
    """Truth files of runs that repeated ids: which impression's probability the validation
    rows have is unknown, so the model's oracle AUC is left out rather than computed on others'."""
    from clicklake.assets.training import _oracle
    from clicklake.platform.simulate.truth import truth_key

    store = Store(str(tmp_path))
    generate(store, start_ms=START, hours=1, users=50, seed=1, clean=True)
    truth = read_truth(store)
    rows = truth.select(["impression_id"])
    assert _oracle(store, rows).tolist() == truth["p_click"].to_pylist()
    store.write_parquet(truth_key(START + 5 * HOUR_MS), truth)
    assert _oracle(store, rows) is None


def test_a_later_run_into_the_same_root_names_its_files_anew(tmp_path):
    """The README adds an hour after the demo into the same root: its files repeated the first
    run's uuids (a file's identity in the raw layer's records), as its ids once did."""
    from clicklake.platform import landing
    from clicklake.platform.simulate import generate
    from clicklake.platform.storage import Store
    from clicklake.platform.timeutil import HOUR_MS, parse_instant

    store = Store(str(tmp_path))
    start = parse_instant("2026-11-24T00:00:00Z")
    generate(store, start_ms=start, hours=2, users=100, seed=7)
    first = {landing.name_uuid(k) for k in store.list("landing")}
    generate(store, start_ms=start + 2 * HOUR_MS, hours=1, users=100, seed=7)
    later = {landing.name_uuid(k) for k in store.list("landing")} - first
    assert later and len(store.list("landing")) == len(first) + len(later)
