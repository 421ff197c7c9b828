"""`clicklake demo` refuses what it cannot run before deleting or generating anything, says so
when a step of the pipeline failed (it printed "Done" with exit code 0), and sends predictions
for a landing zone whose impressions carry no ip, user agent or domain (an import's)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from click.testing import CliRunner

from clicklake.cli import main


@pytest.mark.parametrize(("args", "message"), [
    (["--start", "garbage"], "Invalid value for --start"),
    (["--start", "2026-11-24T00:30:00Z"], "not a whole UTC hour"),
    (["--start", "2024-06-01T00:00:00Z"], "before the first hourly partition"),
    (["--start", "2099-01-01T00:00:00Z"], "in the future"),
    (["--start", "2999-01-01T00:00:00Z"], "not between 2000 and 2100"),
    (["--hours", "2"], "not in the range x>=3"),
    (["--users", "0"], "not in the range 1<=x<=100000000"),
])
def test_bad_arguments_are_refused_before_anything_is_deleted(tmp_path, args, message):
    kept = tmp_path / "landing" / "keep.txt"
    kept.parent.mkdir()
    kept.write_text("an earlier demo's file")
    result = CliRunner().invoke(main, ["demo", "--root", str(tmp_path), "--no-serve", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert kept.exists()


def test_a_root_that_is_a_file_is_refused(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    result = CliRunner().invoke(main, ["demo", "--root", str(afile)])
    assert result.exit_code == 2 and "is a file" in result.output


def test_a_failed_step_fails_the_demo_with_its_reason(tmp_path):
    """3 hours of 50 users hold no click: the model cannot be trained. The demo said "Done"."""
    result = CliRunner().invoke(main, ["demo", "--root", str(tmp_path), "--hours", "3",
                                       "--users", "50", "--no-serve"])
    assert result.exit_code == 1, result.output
    assert "the pipeline failed at click_model: training set" in result.output
    assert "a click model needs rows of both kinds" in result.output
    assert "Done in" not in result.output


def test_a_model_without_validation_clicks_is_summarized(tmp_path):
    """150 users x 3 h, seed 6: 2 training clicks, none in the validation hour, so the AUC and
    the spend saved are undefined (not recorded). The summary crashed on them (KeyError)."""
    result = CliRunner().invoke(main, ["demo", "--root", str(tmp_path), "--hours", "3",
                                       "--users", "150", "--seed", "6", "--no-serve"])
    assert "61 (0 clicked) to validate" in result.output, result.output
    assert ("validation AUC n/a (no validation click); spend saved at 95 % click retention n/a"
            in result.output)
    assert "Not deployed: the model failed its gate" in result.output
    assert result.exit_code == 0, result.output


def test_sample_requests_of_impressions_without_context(monkeypatch):
    from clicklake.cli import demo_serving
    from clicklake.platform import raw

    table = pa.table({"user_id": ["u1", "u2"], "campaign_id": ["c1", "c2"],
                      "ip": [None, None], "user_agent": [None, None], "domain": [None, None],
                      "cost": [None, 0.5]})
    monkeypatch.setattr(raw, "read_raw", lambda *_: table)
    requests = demo_serving.sample_requests("unused", 0, 3_600_000)
    first = requests[0]
    assert (first["user_id"], first["cost"]) == ("u2", 0.5)
    assert [r["user_id"] for r in requests] == ["u2", "u1"]  # the latest first
    assert not {"ip", "domain", "user_agent"} & set(first)


def test_skip_generate_checks_the_landing_zone_before_deleting_the_lake(tmp_path):
    from clicklake.platform.simulate import generate
    from clicklake.platform.storage import Store
    from clicklake.platform.timeutil import parse_instant

    generate(Store(str(tmp_path)), start_ms=parse_instant("2026-11-24T00:00:00Z"), hours=2,
             users=20, seed=1)
    marker = tmp_path / "lake" / "marker"
    marker.parent.mkdir()
    marker.write_text("an earlier build")
    result = CliRunner().invoke(main, ["demo", "--root", str(tmp_path), "--skip-generate",
                                       "--no-serve"])
    assert result.exit_code == 2 and "needs at least 3" in result.output, result.output
    assert marker.exists()



def test_skip_generate_takes_a_generated_zones_event_hours_not_its_late_arrivals(tmp_path):
    # The generator's late records land hours after its last event hour: taken from the arrival
    # hours, those empty hours became the demo's validation hours, and its training failed.
    from clicklake.cli.demo import _landing_hours
    from clicklake.platform.landing import landed_hours
    from clicklake.platform.simulate import generate
    from clicklake.platform.storage import Store
    from clicklake.platform.timeutil import HOUR_MS, parse_instant

    start, store = parse_instant("2026-11-24T00:00:00Z"), Store(str(tmp_path))
    generate(store, start_ms=start, hours=4, users=300, seed=1)
    arrivals = landed_hours(store, "impressions")
    assert arrivals[-1] > start + 3 * HOUR_MS  # late records arrive after the last event hour
    assert _landing_hours(store) == (start, 4)


def test_the_closing_hint_names_the_root_make_dev_must_show(tmp_path, monkeypatch):
    """`make dev` shows CLICKLAKE_ROOT (data/demo by default): a demo on another root must say
    so, or the UI opens on the demo lake's runs and the sensor watches the wrong landing zone."""
    from clicklake.cli.demo import _dev_command

    monkeypatch.chdir(tmp_path)
    assert _dev_command("data/demo") == _dev_command(str(tmp_path / "data/demo")) == "make dev"
    assert _dev_command("data/mine") == "CLICKLAKE_ROOT=data/mine make dev"


def test_sigterm_and_sighup_end_the_demo_through_its_clean_up():
    """The demo's server runs in a session of its own: SIGTERM or SIGHUP ended the demo at once,
    skipping the `finally` that stops the server, which then kept running and its port."""
    import os
    import signal

    from clicklake.cli.demo_serving import _stops_on_signals

    before = signal.getsignal(signal.SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        cleaned = []
        with pytest.raises(SystemExit) as stopped, _stops_on_signals():
            try:
                os.kill(os.getpid(), sig)
            finally:
                cleaned.append(sig)
        assert cleaned == [sig] and stopped.value.code == 128 + sig
    assert signal.getsignal(signal.SIGTERM) is before


def test_skip_generate_ignores_a_truth_the_landing_zone_does_not_cover(tmp_path):
    """A generated run's truth left beside an imported landing zone of other dates: its hours
    were taken for the demo's, which then held no labeled rows."""
    from clicklake.cli.demo import _landing_hours
    from clicklake.platform.simulate import generate
    from clicklake.platform.storage import Store
    from clicklake.platform.timeutil import HOUR_MS, parse_instant

    old, new = Store(str(tmp_path / "old")), Store(str(tmp_path / "new"))
    generate(old, start_ms=parse_instant("2026-11-24T00:00:00Z"), hours=3, users=50, seed=1)
    start = parse_instant("2026-11-20T00:00:00Z")
    generate(new, start_ms=start, hours=3, users=50, seed=1)
    for key in new.list("truth"):
        new.delete(key)  # an imported zone: no truth of its own ...
    for key in old.list("truth"):
        new.write_bytes(key, old.read_bytes(key))  # ... but a generated run's, left behind
    first, hours = _landing_hours(new)
    assert first == start and hours >= 3 and first + hours * HOUR_MS > start + 2 * HOUR_MS
