"""Times the importer must not guess: zone names (%Z), landing arrival stamps under every raw
setting, --shift-to past 2100, Parquet dates without a time, and the exact labelled click
delay."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_import_shapes import landed

from clicklake.cli import main
from clicklake.platform import landing
from clicklake.platform.importer import MappingError, ShiftError, import_log, mapping_from_dict
from clicklake.platform.importer.convert import BadValue, parse_time
from clicklake.platform.raw import Rules, build_raw_partition
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, MINUTE_MS, parse_instant

H10 = parse_instant("2026-11-25T10:00:00Z")
BASE = {"time": "t", "user": "u", "campaign": "c"}
WEEK_MS = 7 * 24 * HOUR_MS
Y2100 = parse_instant("2100-01-01T00:00:00Z")


def csv_log(tmp_path, rows: list[str], header: str = "t,u,c") -> str:
    path = tmp_path / "log.csv"
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return str(path)


# -- 1. %Z: strptime matches only UTC, GMT and this machine's zone names, and drops the zone ----

@pytest.mark.parametrize("mapping", [
    {**BASE, "time_format": "%Y-%m-%d %H:%M:%S %Z"},
    {**BASE, "click_time": "k", "click_time_format": "%d/%m/%Y %H:%M %Z"},
    {**BASE, "id": "i", "clicks": {"time": "t", "impression_id": "i",
                                   "time_format": "%Y-%m-%dT%H:%M:%S%Z"}},
])
def test_a_time_zone_name_in_a_time_format_is_refused(mapping):
    with pytest.raises(MappingError, match="use %z, a numeric offset"):
        mapping_from_dict(mapping)


def test_a_literal_percent_z_and_a_numeric_offset_are_accepted():
    m = mapping_from_dict({**BASE, "time_format": "%Y-%m-%d %H:%M %%Z"})  # "%%" is a literal %
    assert parse_time("2026-11-25 10:00 %Z", m.time_format, "t") == H10
    assert parse_time("2026-11-25 05:00 -0500", "%Y-%m-%d %H:%M %z", "t") == H10


def test_cli_refuses_a_zone_name_format_whatever_the_machine_zone(tmp_path):
    log = csv_log(tmp_path, ["2026-11-25 10:00:00 EST,u1,c1"])
    res = CliRunner().invoke(main, ["import", log, "--time", "t", "--user", "u",
                                    "--campaign", "c", "--time-format", "%Y-%m-%d %H:%M:%S %Z",
                                    "--root", str(tmp_path / "d"), "--no-progress"])
    assert res.exit_code == 2 and "use %z, a numeric offset" in res.output, res.output
    assert not (tmp_path / "d").exists()


# -- 2. landing arrival: never late, never future, for every allowed raw setting ---------------

SETTINGS = [Rules(allowed_lateness_ms=lat * MINUTE_MS, future_tolerance_ms=tol * MINUTE_MS)
            for lat in (0, 60, 10080) for tol in (0, 1, 4, 15, 1440)]


@pytest.mark.parametrize("rules", SETTINGS)
def test_every_imported_event_is_on_time_under_every_raw_setting(tmp_path, rules):
    times = ["10:00:30", "10:03:00", "10:04:59.999", "10:55:00", "10:59:59"]
    log = csv_log(tmp_path, [f"2026-11-25T{t}Z,u{i},c1" for i, t in enumerate(times)])
    store = Store(str(tmp_path / "d"))
    r = import_log(store, mapping_from_dict(BASE), log)
    assert (r.impressions, r.hours) == (5, [H10])
    part = build_raw_partition(store, "impressions", H10, rules)
    assert (part.kept, part.quarantine.num_rows) == (5, 0)


def test_a_file_is_stamped_at_its_last_event_rounded_up_to_the_second(tmp_path):
    log = csv_log(tmp_path, ["2026-11-25T10:00:30Z,u1,c1", "2026-11-25T10:04:59.001Z,u2,c1",
                             "2026-11-25T10:07:00Z,u3,c1", "2026-11-25T10:59:59.500Z,u4,c1"])
    store = Store(str(tmp_path / "d"))
    import_log(store, mapping_from_dict(BASE), log)
    stamps = sorted(landing.parse_key(k).arrival_ms for k in store.list("landing/impressions"))
    # the last second of an hour is the latest stamp: the next hour's would make it late
    assert stamps == [H10 + 5 * MINUTE_MS, H10 + 7 * MINUTE_MS, H10 + HOUR_MS - 1000]


# -- 3. --shift-to must keep every shifted time inside 2000-2099 -------------------------------

def _end_of_century_log(tmp_path, last_offset_ms: int) -> tuple[str, int]:
    """A first event on H10 and a last one `last_offset_ms` later, and the --shift-to that puts
    the first one on the Wednesday 10:00 of the last whole week before 2100."""
    first = H10
    target = first + ((Y2100 - first) // WEEK_MS) * WEEK_MS  # shifted first event, exactly
    last = first + (Y2100 - target) + last_offset_ms
    return csv_log(tmp_path, [f"{first},u1,c1", f"{last},u2,c1"]), target


@pytest.mark.parametrize(("offset", "refused"), [(0, True), (-1, False)])
def test_shift_to_refuses_a_last_time_at_or_after_2100(tmp_path, offset, refused):
    log, target = _end_of_century_log(tmp_path, offset)
    mapping = mapping_from_dict({**BASE, "time_format": "epoch_ms"})
    store = Store(str(tmp_path / "d"))
    if refused:
        with pytest.raises(ShiftError, match="last event to 2100-01-01T00:00:00.000Z, past 2099"):
            import_log(store, mapping, log, shift_to_ms=target)
        assert store.list("landing") == []
        return
    r = import_log(store, mapping, log, shift_to_ms=target)
    assert (r.first_ts, r.last_ts) == (target, Y2100 - 1)
    part = build_raw_partition(store, "impressions", Y2100 - HOUR_MS)
    assert (part.kept, part.quarantine.num_rows) == (1, 0)


def test_shift_to_refuses_a_first_time_before_2000(tmp_path):
    log = csv_log(tmp_path, ["2026-11-25T10:00:00Z,u1,c1"])
    with pytest.raises(ShiftError, match="before 2000"):
        import_log(Store(str(tmp_path / "d")), mapping_from_dict(BASE), log,
                   shift_to_ms=parse_instant("1999-12-29T00:00:00Z"))  # a Wednesday


def test_cli_shift_past_2100_is_a_usage_error_and_writes_nothing(tmp_path):
    log = csv_log(tmp_path, ["2026-11-25T10:00:00Z,u1,c1", "2026-12-20T10:00:00Z,u1,c1"])
    res = CliRunner().invoke(main, ["import", log, "--time", "t", "--user", "u", "--campaign",
                                    "c", "--shift-to", "2099-12-20", "--root",
                                    str(tmp_path / "d"), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "--shift-to" in res.output and "2100" in res.output
    assert Store(str(tmp_path / "d")).list("landing") == []


# -- 4. a Parquet date (no time of day) is a bad_time, as a CSV date is ------------------------

def test_a_date_value_is_a_date_without_a_time_not_midnight():
    with pytest.raises(BadValue, match="is a date without a time") as exc:
        parse_time(dt.date(2026, 11, 25), "iso", "t")
    assert exc.value.reason == "bad_time"
    assert parse_time(dt.datetime(2026, 11, 25, 10), "iso", "t") == H10  # a datetime is a date


@pytest.mark.parametrize("kind", [pa.date32(), pa.date64()])
def test_a_parquet_date_column_rejects_its_rows_as_bad_time(tmp_path, kind):
    day = dt.date(2026, 11, 25)
    table = pa.table({"t": pa.array([day], kind), "u": ["u1"], "c": ["c1"]})
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    r = import_log(Store(str(tmp_path / "d")), mapping_from_dict(BASE), str(path))
    assert (r.impressions, r.bad_rows) == (0, {"bad_time": 1})
    assert r.first_rejects[0]["detail"] == "t: '2026-11-25' is a date without a time (format iso)"


# -- 5. --click-delay is floored to whole ms, exactly, and must be at least 1 ms ---------------

@pytest.mark.parametrize(("delay", "ms"), [
    (900.0009, 900_000),  # rounding gave 900001: past a 15-minute label window
    ("900.0009", 900_000),
    (30, 30_000),
    (0.001, 1),
    ("0.0019999999999999999999", 1),  # the text, not the nearest float (0.002)
])
def test_a_labelled_click_is_the_delay_floored_to_the_millisecond(tmp_path, delay, ms):
    log = csv_log(tmp_path, ["2026-11-25T10:00:00Z,u1,c1,1"], header="t,u,c,l")
    store = Store(str(tmp_path / "d"))
    r = import_log(store, mapping_from_dict({**BASE, "label": "l", "click_delay": delay}), log)
    assert r.clicks == 1 and [e["ts"] for e in landed(store, "clicks")] == [H10 + ms]


def test_a_labelled_click_falling_after_2099_rejects_its_row(tmp_path):
    # The impression at 2099-12-31T23:59:59.999 is in range, its click 30 s later is not: the
    # import counted the click, the raw layer refused it later (bad_value), and the impression
    # stayed labeled 0. The row is refused now, as a bad click time refuses it.
    log = csv_log(tmp_path, [f"{Y2100 - 1},u5,c1,1", f"{Y2100 - 31_000},u5,c1,1"],
                  header="t,u,c,l")
    store = Store(str(tmp_path / "d"))
    r = import_log(store, mapping_from_dict({**BASE, "time_format": "epoch_ms", "label": "l",
                                             "click_delay": 30}), log)
    assert (r.impressions, r.clicks, r.bad_rows) == (1, 1, {"bad_time": 1})
    assert r.first_rejects[0]["detail"] == ("l: the click it stands for, 30 s after the "
                                            "impression, falls after 2099")
    assert [e["ts"] for e in landed(store, "clicks")] == [Y2100 - 1_000]


@pytest.mark.parametrize(("delay", "msg"), [
    (0.0004, "at least 1 ms"), ("0.0009999", "at least 1 ms"), (1e-9, "at least 1 ms"),
    (86_400.001, "more than a day"), (1e20, "more than a day"),  # 1e20 crashed the writer
])
def test_a_click_delay_under_one_millisecond_or_over_a_day_is_refused(delay, msg):
    with pytest.raises(MappingError, match=msg):
        mapping_from_dict({**BASE, "label": "l", "click_delay": delay})


def test_cli_refuses_a_click_delay_under_one_millisecond(tmp_path):
    log = csv_log(tmp_path, ["2026-11-25T10:00:00Z,u1,c1,1"], header="t,u,c,l")
    res = CliRunner().invoke(main, ["import", log, "--time", "t", "--user", "u", "--campaign",
                                    "c", "--label", "l", "--click-delay", "0.0004", "--root",
                                    str(tmp_path / "d"), "--no-progress"])
    assert res.exit_code == 2 and "at least 1 ms" in res.output, res.output
