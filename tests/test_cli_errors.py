"""Bad arguments and unusable places get a usage error or a message naming the problem, never
a traceback: serve's store and AWS settings, import's source, scratch folder, memory cap and
shift, and a --root that is a file (each was a traceback; --source could write outside the
root)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from clicklake.cli import main


def _invoke(args: list[str], env: dict | None = None):
    result = CliRunner().invoke(main, args, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.output, result.exception)
    return result


@pytest.fixture
def places(tmp_path):
    (tmp_path / "notdb.txt").write_text("not a database")
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    log = tmp_path / "log.csv"
    log.write_text("when,user,campaign\n2026-11-24T01:00:00Z,u1,c1\n")
    return tmp_path


@pytest.mark.parametrize(("args", "message"), [
    (["--source", "online", "--online-db", "{p}/notdb.txt"], "file is not a database"),
    (["--source", "online", "--online-db", "{p}/adir"], "unable to open database file"),
    (["--model", "sagemaker"], "no AWS region"),
    (["--source", "online", "--dynamodb-table", "t"], "region"),
    (["--source", "online", "--online-db", "{p}/notdb.txt", "--workers", "2"],
     "file is not a database"),
])
def test_serve_refuses_what_it_cannot_open(places, args, message, monkeypatch):
    from clicklake.serving import protocol, workers

    def started(*_, **__):
        raise AssertionError("the server started")

    monkeypatch.setattr(protocol, "run_server", started)
    monkeypatch.setattr(workers, "run_workers", started)
    args = [a.format(p=places) for a in args]
    result = _invoke(["serve", "--root", str(places / "lake"), *args],
                     env={"AWS_REGION": None, "AWS_DEFAULT_REGION": None})
    assert result.exit_code == 1 and "cannot serve" in result.output, result.output
    assert message in result.output, result.output


def test_serve_refuses_a_token_no_request_could_carry(places, monkeypatch):
    from clicklake.serving import protocol

    monkeypatch.setattr(protocol, "run_server", lambda *_, **__: pytest.fail("the server started"))
    result = _invoke(["serve", "--root", str(places / "lake")],
                     env={"CLICKLAKE_API_TOKEN": "s3cret\n"})  # a secret file's last newline
    assert result.exit_code == 2, result.output
    assert "CLICKLAKE_API_TOKEN" in result.output and "visible ASCII" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--source", "../../evil"], "letters, digits"),
    (["--source", "a/b c"], "letters, digits"),
    # a name the file system refused once the landing files were written (left unmanaged)
    (["--source", "s" * 101], "at most 100"),
    (["--source", "é" * 51], "at most 100"),
    (["--tmp-dir", "/nonexistent/x"], "does not exist"),
    (["--memory-limit", "lots"], "not a size"),
    (["--memory-limit", "0"], "not a size"),
    (["--memory-limit", "1000%"], "--memory-limit"),  # the right shape, refused by DuckDB:
    (["--memory-limit", "99999999TB"], "--memory-limit"),  # tracebacks once the work began
    (["--shift-to", "99999999999999999999"], "between 2000 and 2100"),
    (["--shift-to", "garbage"], "Invalid value for --shift-to"),
    (["--root", "{p}/afile"], "is a file"),
    (["--root", "{p}/afile/sub"], "is a file"),
])
def test_import_refuses_bad_options_before_writing(places, args, message):
    args = [a.format(p=places) for a in args]
    root = places / "imp"
    result = _invoke(["import", str(places / "log.csv"), "--time", "when", "--user", "user",
                      "--campaign", "campaign", "--no-progress", "--root", str(root), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (places / "evil.ndjson").exists() and not root.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--root", "{p}/afile"], "is a file"),
    (["--start", "99999999999999999999"], "between 2000 and 2100"),
])
def test_generate_refuses_bad_options(places, args, message):
    args = [a.format(p=places) for a in args]
    result = _invoke(["generate", "--root", str(places / "g"), "--hours", "1", "--users", "5",
                      *args])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize("limit", ["1G", "512MB", "2.5GB", "512MiB", "50%", "100000000B"])
def test_import_takes_the_memory_limits_duckdb_takes(places, limit):
    result = _invoke(["import", str(places / "log.csv"), "--time", "when", "--user", "user",
                      "--campaign", "campaign", "--no-progress", "--root", str(places / "imp"),
                      "--memory-limit", limit])
    assert result.exit_code == 0, result.output


def test_import_says_when_the_memory_limit_is_too_small(places):
    result = _invoke(["import", str(places / "log.csv"), "--time", "when", "--user", "user",
                      "--campaign", "campaign", "--no-progress", "--root", str(places / "imp"),
                      "--memory-limit", "1000000B"])
    assert result.exit_code == 1 and "needs more than --memory-limit 1000000B" in result.output


def test_import_takes_back_the_source_name_it_made(places):
    """The default source keeps a file name's letters, of any script: passing it back (to
    replace that import) must be accepted."""
    log = places / "données.csv"
    log.write_text((places / "log.csv").read_text())
    args = ["import", str(log), "--time", "when", "--user", "user", "--campaign", "campaign",
            "--no-progress", "--root", str(places / "imp"), "--json"]
    first = _invoke(args)
    assert first.exit_code == 0, first.output
    import json

    source = json.loads(first.output)["source"]
    assert source.startswith("données-")
    again = _invoke([*args, "--source", source])
    assert again.exit_code == 0, again.output


def test_lookup_reads_an_s3_root_through_the_endpoint_it_is_given(monkeypatch):
    """It went to AWS whatever CLICKLAKE_S3_ENDPOINT_URL said, and an unreachable endpoint gave
    a traceback."""
    monkeypatch.setenv("CLICKLAKE_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    result = CliRunner().invoke(main, ["lookup", "u1", "--root", "s3://bkt/p",
                                       "--s3-region", "us-east-1"])
    assert result.exit_code == 1, result.output
    assert "cannot read the lake under s3://bkt/p" in result.output
    assert "127.0.0.1" in result.output and "amazonaws" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_lookup_of_a_damaged_snapshot_names_the_file_without_a_traceback(tmp_path):
    from clicklake.platform import profiles
    from clicklake.platform.storage import Store
    from tests.test_lookup_refresh import START, _one_snapshot

    store = Store(str(tmp_path))
    user = _one_snapshot(store)["user_id"][0].as_py()
    key = profiles.snapshot_key(START)
    store.write_bytes(key, store.read_bytes(key)[:200])  # cut short
    result = CliRunner().invoke(main, ["lookup", user, "--root", str(tmp_path),
                                       "--as-of", "2026-11-24T00:59:00Z"])
    assert result.exit_code == 1, result.output
    assert f"cannot read the lake under {tmp_path}: {store.uri(key)}: " in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_lookup_refuses_a_malformed_s3_endpoint():
    result = CliRunner().invoke(main, ["lookup", "u1", "--root", "s3://bkt/p",
                                       "--s3-endpoint-url", "ftp://minio:9000"])
    assert result.exit_code == 2 and "--s3-endpoint-url" in result.output, result.output
    assert "Invalid S3 connection scheme" in result.output


def test_an_instants_error_quotes_at_most_40_characters():
    out = CliRunner().invoke(main, ["generate", "--start", "x" * 5000, "--root", "unused"])
    assert out.exit_code == 2 and "x" * 40 in out.output and "x" * 41 not in out.output


def test_serve_takes_the_deployments_endpoint_name_and_region(places, monkeypatch):
    """The pipeline deploys to CLICKLAKE_ENDPOINT_NAME in AWS_REGION: serve read neither, and
    scored on another endpoint (every predict a 503) or found no region."""
    from clicklake.serving import workers

    seen = {}

    def build_app(settings):
        seen["settings"] = settings
        raise ValueError("stop here")

    monkeypatch.setattr(workers, "build_app", build_app)
    result = _invoke(["serve", "--root", str(places / "lake"), "--model", "sagemaker"],
                     env={"CLICKLAKE_ENDPOINT_NAME": "prod-ctr", "AWS_REGION": "eu-west-1",
                          "AWS_DEFAULT_REGION": None})
    assert "stop here" in result.output, result.output
    assert (seen["settings"].endpoint_name, seen["settings"].region) == ("prod-ctr", "eu-west-1")


@pytest.mark.parametrize("command", [
    ["generate", "--hours", "1", "--users", "5"],
    ["lookup", "u1"],
    ["serve"],
    ["demo", "--no-serve"],
])
@pytest.mark.parametrize(("root", "message"), [
    ("s3://", "names no bucket"),
    ("s3:///x", "names no bucket"),
    ("{p}/dangling", "which does not exist"),
    ("{p}/afile", "is a file"),
])
def test_every_command_refuses_a_root_it_cannot_use(places, monkeypatch, command, root,
                                                    message):
    """An s3:// root without a bucket wrote to a bucket named after the first folder ('landing')
    or gave a traceback; a dangling link a FileNotFoundError traceback; serve and lookup took a
    file for a root."""
    import os

    from clicklake.serving import protocol

    monkeypatch.setattr(protocol, "run_server", lambda *_, **__: pytest.fail("the server started"))
    os.symlink(places / "missing-target", places / "dangling")
    if root.startswith("s3") and command[0] == "demo":
        message = "local folder"  # the demo refuses S3 as such
    result = _invoke([*command, "--root", root.format(p=places)])
    assert result.exit_code == 2 and message in result.output, result.output


def test_serve_refuses_port_0_whose_real_port_it_never_said(places):
    result = _invoke(["serve", "--root", str(places / "lake"), "--port", "0"])
    assert result.exit_code == 2 and "--port" in result.output, result.output


def test_generate_says_what_it_cannot_write(places):
    """A write error mid-run (here: a file where the truth folder goes) was a traceback."""
    (places / "g").mkdir()
    (places / "g" / "truth").write_text("")
    result = _invoke(["generate", "--root", str(places / "g"), "--hours", "1", "--users", "5"])
    assert result.exit_code == 1 and "cannot write under" in result.output, result.output


def test_serve_says_so_at_every_start_on_an_online_store_never_folded(places, monkeypatch):
    """Its first start on a wrong --root warned, then created the store there: every later
    start served that empty store with no word, every user unknown."""
    from clicklake.serving import protocol

    monkeypatch.setattr(protocol, "run_server", lambda *_, **__: True)
    args = ["serve", "--root", str(places / "typo"), "--source", "online"]
    first, second = _invoke(args), _invoke(args)
    assert first.exit_code == second.exit_code == 0, (first.output, second.output)
    assert "no online store at" in first.output
    assert "holds no folded file yet" in second.output, second.output


def test_arguments_that_are_no_utf8_are_refused_or_taken_as_paths(places):
    """A Latin-1 byte in an argument (surrogate-escaped by Python) gave UnicodeEncodeError
    tracebacks: as a user id or a root it is refused; as a log's file name it is a path."""
    bad = "u\udcff"
    result = _invoke(["lookup", bad, "--root", str(places / "lake")])
    assert result.exit_code == 2 and "not UTF-8" in result.output, result.output
    result = _invoke(["generate", "--root", str(places / bad), "--hours", "1", "--users", "5"])
    assert result.exit_code == 2 and "not UTF-8" in result.output, result.output
    from clicklake.platform.importer.run import default_source

    assert default_source(str(places / f"log{bad}.csv")).startswith("logu_-")
