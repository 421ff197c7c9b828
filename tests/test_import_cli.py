"""`clicklake import` through click's CliRunner, the YAML and flag forms of a mapping, and the
row-level parsing rules (time formats, header detection, mapping validation)."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from click.testing import CliRunner
from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from clicklake.cli import main
from clicklake.platform.importer import MappingError, load_mapping_dict, mapping_from_dict, merge
from clicklake.platform.importer.convert import BadValue, parse_time
from clicklake.platform.importer.readers import ReadError, open_table
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import parse_instant

LOG = (
    "when,who,camp,clk\n"
    "2026-11-25T10:00:00Z,u1,c1,1\n"
    "2026-11-25T10:01:00Z,u2,c1,0\n"
    "2026-11-25T10:02:00Z,u2,c1,yes\n"  # line 4: bad label
)
YAML = """
time: when
user: who
campaign: camp
label: clk
click_delay: 20
"""
FLAGS = ["--time", "when", "--user", "who", "--campaign", "camp", "--label", "clk",
         "--click-delay", "20"]


def _landing(root) -> dict[str, bytes]:
    store = Store(str(root))
    return {k: store.read_bytes(k) for k in store.list("landing")}


def test_help_lists_the_mapping_flags():
    res = CliRunner().invoke(main, ["import", "--help"])
    assert res.exit_code == 0, res.output
    for flag in ("--time-format", "--label", "--click-time", "--clicks", "--mapping", "--root",
                 "--s3-endpoint-url", "--shift-to"):
        assert flag in res.output


def test_yaml_and_flags_give_the_same_landing_bytes(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    (tmp_path / "m.yaml").write_text(YAML)
    runner = CliRunner()
    a = runner.invoke(main, ["import", str(log), "--mapping", str(tmp_path / "m.yaml"),
                             "--root", str(tmp_path / "a"), "--no-progress"])
    b = runner.invoke(main, ["import", str(log), *FLAGS, "--root", str(tmp_path / "b"),
                             "--no-progress"])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    la, lb = _landing(tmp_path / "a"), _landing(tmp_path / "b")
    assert la == lb and len(la) == 2  # one impressions buffer, one clicks buffer
    assert "impressions                    2" in a.output
    assert "line 4: bad_value" in a.output


def test_flags_override_the_yaml_file(tmp_path):
    d = merge(load_mapping_dict(YAML), {"click_delay": 5, "user": None,
                                        "clicks": {"time": None}})
    m = mapping_from_dict(d)
    assert (m.user, m.click_delay_s, m.clicks) == (("who",), 5.0, None)


def test_cli_json_summary_and_exit_code_when_nothing_imports(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    res = CliRunner().invoke(main, ["import", str(log), *FLAGS, "--root", str(tmp_path / "d"),
                                    "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    assert '"bad_row_count": 1' in res.output and '"clicks": 1' in res.output
    res = CliRunner().invoke(main, ["import", str(log), *FLAGS, "--time-format", "epoch_s",
                                    "--root", str(tmp_path / "e"), "--no-progress"])
    assert res.exit_code == 1 and "no impression was imported" in res.output


def test_cli_rejects_an_unusable_mapping_with_a_clear_message(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    res = CliRunner().invoke(main, ["import", str(log), "--time", "when", "--user", "who",
                                    "--root", str(tmp_path / "x")])
    assert res.exit_code == 2 and "needs `campaign`" in res.output
    res = CliRunner().invoke(main, ["import", str(log), *FLAGS, "--time", "nope",
                                    "--root", str(tmp_path / "x"), "--no-progress"])
    assert res.exit_code == 1 and "no header line naming all of" in res.output


def test_cli_writes_to_s3(tmp_path, moto_endpoint, s3_bucket):
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    root = f"s3://{s3_bucket}/lake"
    res = CliRunner().invoke(main, ["import", str(log), *FLAGS, "--root", root,
                                    "--s3-endpoint-url", moto_endpoint, "--no-progress"])
    assert res.exit_code == 0, res.output
    from clicklake.platform.storage import S3Options

    store = Store(root, S3Options(endpoint_url=moto_endpoint))
    keys = store.list("landing")
    assert len(keys) == 2 and all(k.endswith(".gz") for k in keys)
    assert any(k.startswith("import-rejects/") for k in store.list("import-rejects"))


@pytest.mark.parametrize(("value", "fmt", "iso"), [
    ("2026-11-25T10:00:00Z", "iso", "2026-11-25T10:00:00Z"),
    ("2026-11-25 12:00:00+02:00", "iso", "2026-11-25T10:00:00Z"),
    ("2026-11-25T10:00:00.9999", "iso", "2026-11-25T10:00:00.999Z"),  # truncated, not rounded
    ("1795600800", "epoch_s", "2026-11-25T10:00:00Z"),
    (1795600800.5, "epoch_s", "2026-11-25T10:00:00.500Z"),
    ("1795600800000", "epoch_ms", "2026-11-25T10:00:00Z"),
    ("26112510", "yymmddhh", "2026-11-25T10:00:00Z"),
    (14102100, "yymmddhh", "2014-10-21T00:00:00Z"),
    # an integer column with a null reaches Parquet as doubles (pandas), or as decimals
    (26112510.0, "yymmddhh", "2026-11-25T10:00:00Z"),
    (Decimal(26112510), "yymmddhh", "2026-11-25T10:00:00Z"),
    ("25/11/2026 10:00", "%d/%m/%Y %H:%M", "2026-11-25T10:00:00Z"),
    # epoch fractions are truncated like ISO ones, not rounded into the next hour
    ("1748854799.9996", "epoch_s", "2025-06-02T08:59:59.999Z"),
    ("1748854799999.6", "epoch_ms", "2025-06-02T08:59:59.999Z"),
    (1748854799.9996, "epoch_s", "2025-06-02T08:59:59.999Z"),  # a Parquet double
    ("1748854799.0019999999999999999999999999", "epoch_s", "2025-06-02T08:59:59.001Z"),
    ("1.7488548e9", "epoch_s", "2025-06-02T09:00:00Z"),
])
def test_time_formats(value, fmt, iso):
    assert parse_time(value, fmt, "t") == parse_instant(iso)


@pytest.mark.parametrize(("value", "fmt", "reason"), [
    ("", "iso", "missing_field"),
    ("yesterday", "iso", "bad_time"),
    ("1795600800", "epoch_ms", "bad_time"),  # seconds read as ms: 1970, outside the range
    ("26132510", "yymmddhh", "bad_time"),  # month 13
    (26112510.5, "yymmddhh", "bad_time"),  # not a whole hour code
    ("nan", "epoch_s", "bad_time"),
    ("inf", "epoch_ms", "bad_time"),
    ("1e999999999", "epoch_s", "bad_time"),
    # a date without a time is not midnight (a forgotten --time-format yymmddhh, often)
    ("2025-06-02", "iso", "bad_time"),
    ("20121010", "iso", "bad_time"),
    ("2025-W23-1", "iso", "bad_time"),
])
def test_bad_times_get_a_reason(value, fmt, reason):
    with pytest.raises(BadValue) as exc:
        parse_time(value, fmt, "t")
    assert exc.value.reason == reason


@pytest.mark.parametrize(("d", "msg"), [
    ({"time": "t", "user": "u"}, "needs `campaign`"),
    ({"time": "t", "user": "u", "campaign": "c", "label": "l", "click_time": "k"}, "either"),
    ({"time": "t", "user": "u", "campaign": "c", "clicks": {"time": "x", "impression_id": "i"}},
     "needs the impressions' id"),
    ({"time": "t", "user": "u", "campaign": "c", "click_delay": 0}, "more than 0"),
    ({"time": "t", "user": "u", "campaign": "c", "time_format": "unix"}, "not one of"),
    ({"time": "t", "user": "u", "campaign": "c", "colour": "red"}, "unknown mapping key"),
    # a pattern without a time of day read every event at midnight (`iso` refuses a date)
    ({"time": "t", "user": "u", "campaign": "c", "time_format": "%d/%m/%Y"}, "no time of day"),
    ({"time": "t", "user": "u", "campaign": "c", "click_time": "k",
      "click_time_format": "%Y%m%d"}, "no time of day"),
])
def test_mapping_validation(d, msg):
    with pytest.raises(MappingError, match=msg):
        mapping_from_dict(d)


@pytest.mark.parametrize(("yaml_text", "msg"), [
    ("time: t\nuser: u\ncampaign: c\n1: x\n", "unknown mapping key\\(s\\): 1;"),
    ("time: t\nuser: u\ncampaign: c\nclicks:\n  time: t\n  impression_id: i\n  on: x\n",
     "unknown clicks key\\(s\\): True;"),  # YAML 1.1 reads `on` as a boolean
    ("time: t\nuser: u\ncampaign: c\nclicks: 5\n", "clicks: must be an object"),
    ("time: t\nuser: u\ncampaign: c\nclicks: abc\n", "clicks: must be an object"),
    # a key given twice: the last was taken, silently
    ("time: t\nuser: u\ncampaign: c\ntime: t2\n", "'time' is given twice"),
    ("time: t\nuser: u\ncampaign: c\nclicks:\n  time: a\n  time: b\n", "'time' is given twice"),
])
def test_a_mapping_file_with_keys_that_are_no_names_is_a_usage_error(tmp_path, yaml_text, msg):
    # each was a TypeError traceback (or an unhelpful "dictionary update sequence" message):
    # the CLI merges its own clicks flags into the file's
    (tmp_path / "log.csv").write_text(LOG)
    (tmp_path / "m.yaml").write_text(yaml_text)
    result = CliRunner().invoke(main, ["import", str(tmp_path / "log.csv"), "--mapping",
                                       str(tmp_path / "m.yaml"), "--root", str(tmp_path / "d")])
    assert isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert result.exit_code == 2 and re.search(msg, result.output), result.output



def test_header_is_found_after_a_banner_and_missing_columns_are_named(tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes(b"#report\n\xff\xfeweird\nts,user\n1,2\n")
    r = open_table(str(p), ["ts", "user"])
    assert r.columns == ["ts", "user"] and [n for n, _ in r.preamble] == [1, 2]
    assert list(r.rows()) == [(4, ["1", "2"])]
    r.close()
    with pytest.raises(ReadError, match="campaign"):
        open_table(str(p), ["ts", "campaign"])


def test_example_mappings_are_valid():
    from pathlib import Path

    files = sorted((Path(__file__).parents[1] / "examples" / "import").glob("*.yaml"))
    assert len(files) == 3
    for f in files:
        with open(f, encoding="utf-8") as fh:
            mapping_from_dict(load_mapping_dict(fh.read()))


def test_invalid_utf8_row_is_a_malformed_reject_with_its_line(tmp_path):
    from clicklake.platform.importer import import_log

    log = tmp_path / "log.csv"
    log.write_bytes(b"t,u,c\n2026-11-25T10:00:00Z,u\xff1,c1\n2026-11-25T10:00:00Z,u2,c1\n")
    r = import_log(Store(str(tmp_path / "d")), mapping_from_dict({"time": "t", "user": "u",
                                                                  "campaign": "c"}), str(log))
    assert (r.impressions, r.bad_rows) == (1, {"malformed": 1})
    assert r.first_rejects[0]["line"] == 2


@settings(max_examples=examples(300), deadline=None)
@given(st.integers(-10**17, 10**17), st.booleans(), st.sampled_from(["int", "str", "float"]))
def test_epoch_integers_take_the_fast_path_to_the_same_answer(n, seconds, kind):
    from decimal import Decimal

    from clicklake.platform.importer.convert import _epoch_ms

    value = {"int": n, "str": str(n), "float": float(n)}[kind]
    exact = int(Decimal(repr(value) if kind == "float" else value) * (1000 if seconds else 1))
    assert _epoch_ms(value, seconds) == exact


def test_the_deployments_landing_prefix_is_where_the_files_go(tmp_path):
    """A deployment whose template moved the landing prefix reads its landing files there: the
    importer wrote `landing/` whatever CLICKLAKE_LANDING_PREFIX said, out of the assets' sight."""
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    root = tmp_path / "d"
    res = CliRunner().invoke(main, ["import", str(log), *FLAGS, "--root", str(root),
                                    "--no-progress"],
                             env={"CLICKLAKE_LANDING_PREFIX": "incoming/firehose"})
    assert res.exit_code == 0, res.output
    assert f"({root}/incoming/firehose)" in res.output
    store = Store(str(root))
    assert store.list("incoming/firehose") and not store.list("landing")
    for bad in ("/abs", "../up", "a//b", ""):
        res = CliRunner().invoke(main, ["import", str(log), *FLAGS, "--root", str(root),
                                        "--landing-prefix", bad])
        assert res.exit_code == 2 and "--landing-prefix" in res.output, (bad, res.output)
