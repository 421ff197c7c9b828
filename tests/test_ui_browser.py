"""The Dagster web UI on this project, in a real browser.

One raw partition is materialized into a temporary instance, `dagster-webserver` serves the
definitions on a free loopback port, and headless Chromium (Debian's, driven by Playwright) opens
the global asset graph, where every asset of the definitions must be shown, then the materialized
partition's page, where its metadata (rows_kept) must be shown. Screenshots are saved to
test-artifacts/.

Chromium comes from Debian's packages (`.ci/run` installs it); without it the test fails under CI
and skips elsewhere.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from clicklake.cli.processes import stop_process
from clicklake.definitions import defs
from clicklake.platform.simulate import generate
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import parse_instant
from clicklake.resources.lake import LakeResource

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
START = parse_instant("2026-11-24T10:00:00Z")
PARTITION = "2026-11-24-10:00"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium not found: .ci/run must install Debian's chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def webserver(tmp_path, monkeypatch):
    """A materialized raw partition and the web UI on it; yields (base URL, rows_kept)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({"telemetry": {"enabled": False}}))
    root = tmp_path / "data"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("CLICKLAKE_ROOT", str(root))
    generate(Store(str(root)), start_ms=START, hours=2, users=40, seed=5)
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize([defs.get_assets_def("raw_impressions")], partition_key=PARTITION,
                                resources={"lake": LakeResource()}, instance=instance)
    assert result.success
    kept = result.asset_materializations_for_node("raw_impressions")[0].metadata["rows_kept"].value

    port = _free_port()
    log = open(tmp_path / "webserver.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
         "-m", "clicklake.definitions"],
        cwd=ROOT, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "webserver.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "web UI did not answer within 120 s"
            time.sleep(0.5)
        yield url, kept
    finally:
        stop_process(proc, timeout=30)
        log.close()


def test_asset_graph_and_partition_metadata_in_chromium(webserver, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)

    url, kept = webserver
    chromium = _chromium()
    assets = sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys())
    assert {"raw_impressions", "user_profiles", "labeled_impressions", "deployed_model"} <= set(
        assets)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True, args=FLAGS,
            viewport={"width": 1800, "height": 1400})
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)
            # The global lineage opens with each group collapsed: expand one group at a time
            # (the view centres on it) and require every asset of that group on the graph.
            groups: dict[str, list[str]] = {}
            graph = defs.resolve_asset_graph()
            for key in graph.get_all_asset_keys():
                groups.setdefault(graph.get(key).group_name, []).append(key.to_user_string())
            assert sorted(a for names in groups.values() for a in names) == assets
            for group, names in sorted(groups.items()):
                page.goto(f"{url}/asset-groups")
                skip = page.get_by_role("button", name="Skip")  # first-visit community dialog
                page.get_by_text("Global asset lineage").wait_for()
                page.wait_for_timeout(1500)
                if skip.count():
                    skip.click()
                page.get_by_text(group, exact=True).last.click()
                for name in names:
                    expect(page.get_by_text(name, exact=True).first).to_be_visible()
                page.screenshot(path=str(ARTIFACTS / f"ui-asset-graph-{group}.png"))

            page.goto(f"{url}/assets/raw_impressions?view=partitions&partition={PARTITION}")
            expect(page.get_by_text("rows_kept", exact=True).first).to_be_visible()
            row = page.get_by_role("row").filter(has_text="rows_kept").first
            expect(row).to_contain_text(f"{kept:,}" if kept >= 1000 else str(kept))
            page.screenshot(path=str(ARTIFACTS / "ui-partition.png"), full_page=True)
        finally:
            context.close()
