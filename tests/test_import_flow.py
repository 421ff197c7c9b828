"""Imported logs run the whole flow: each public log shape → `clicklake import` → raw → lookup →
labeled impressions whose labels are exactly what the log says; one shape all the way to a
trained, gated and deployed model."""

from __future__ import annotations

import gzip
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clicklake.flow import run_flow
from clicklake.platform.importer import import_log, mapping_from_dict
from clicklake.platform.labeled import labeled_key
from clicklake.platform.timeutil import HOUR_MS, iso, parse_instant
from clicklake.resources.endpoint import LocalModelServer
from clicklake.resources.lake import LakeResource
from clicklake.resources.trainer import LocalTrainer

START = parse_instant("2026-11-20T00:00:00Z")
HOURS = 3
WINDOW = 15 * 60_000


def _events(n: int, seed: int):
    """(ts, user, campaign, click delay ms or None) with a signal: campaign c0 gets clicked."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ts = START + rng.randrange(HOURS * HOUR_MS // 1000) * 1000
        campaign = f"c{rng.randrange(4)}"
        p = 0.3 if campaign == "c0" else 0.03
        delay = rng.choice([20_000, 300_000, WINDOW, WINDOW + 60_000]) if rng.random() < p else None
        out.append((ts, f"u{rng.randrange(60)}", campaign, delay))
    return out


def _resources(root):
    return {"lake": LakeResource(root=root), "trainer": LocalTrainer(),
            "endpoint": LocalModelServer()}


def _labels(store, hours=HOURS):
    out = {}
    for h in range(hours - 1):
        table = store.read_parquet(labeled_key(START + h * HOUR_MS))
        out.update(zip(table["impression_id"].to_pylist(), table["label"].to_pylist(), strict=True))
    return out


def _in_labeled_hours(ts: int, hours: int = HOURS) -> bool:
    return START <= ts < START + (hours - 1) * HOUR_MS


def test_exposure_log_with_click_times_runs_the_whole_flow(tmp_path):
    events = _events(600, seed=1)
    lines = ["id,when,user,campaign,clicked_at"]
    for i, (ts, user, camp, delay) in enumerate(events):
        click = iso(ts + delay) if delay is not None else ""
        lines.append(f"e{i},{iso(ts)},{user},{camp},{click}")
    log = tmp_path / "exposures.csv"
    log.write_text("\n".join(lines) + "\n")
    root = str(tmp_path / "data")
    lake = LakeResource(root=root)
    m = mapping_from_dict({"time": "when", "id": "id", "user": "user", "campaign": "campaign",
                           "click_time": "clicked_at"})
    import_log(lake.store(), m, str(log))
    result = run_flow(_resources(root), START, HOURS, train=False)
    assert result.failed_checks == []
    expected = {f"e{i}": int(d is not None and 0 < d <= WINDOW)
                for i, (ts, _, _, d) in enumerate(events) if _in_labeled_hours(ts)}
    assert _labels(lake.store()) == expected


def test_avazu_like_log_trains_and_deploys_a_model(tmp_path):
    """0/1 labels with hour-level YYMMDDHH times, device ids as users, gzip CSV. Five hours: the
    first has no history, so campaign CTRs become learnable from the second on."""
    hours = 5
    rng = random.Random(5)
    lines = ["id,click,hour,site_id,app_id,device_id,device_ip,C1"]
    expected = {}
    for i in range(4000):
        hour = START + rng.randrange(hours) * HOUR_MS
        camp = str(1000 + rng.randrange(5))
        clicked = int(rng.random() < (0.35 if camp == "1000" else 0.02))
        stamp = iso(hour)
        yymmddhh = stamp[2:4] + stamp[5:7] + stamp[8:10] + stamp[11:13]
        lines.append(f"{i},{clicked},{yymmddhh},s{rng.randrange(9)},a,d{rng.randrange(300)},"
                     f"ip{rng.randrange(50)},{camp}")
        if _in_labeled_hours(hour, hours):
            expected[str(i)] = clicked  # the 30 s click delay is inside the label window
    log = tmp_path / "train.gz"
    log.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    root = str(tmp_path / "data")
    lake = LakeResource(root=root)
    m = mapping_from_dict({"time": "hour", "time_format": "yymmddhh", "id": "id",
                           "user": "device_id,device_ip", "campaign": "C1", "site": "site_id",
                           "label": "click", "click_delay": 30})
    import_log(lake.store(), m, str(log))
    result = run_flow(_resources(root), START, hours, train=True)
    assert result.failed_checks == []
    assert _labels(lake.store(), hours) == expected
    model = result.latest("click_model")
    assert model["auc"] > 0.75  # campaign 1000 is learnable
    assert result.latest("deployed_model")["model_id"] == model["model_id"]


@pytest.mark.parametrize("epoch_unit", ["epoch_ms", "epoch_s"])
def test_two_tables_joined_by_id_label_exactly(tmp_path, epoch_unit):
    events = _events(400, seed=2)
    scale = 1 if epoch_unit == "epoch_ms" else 1000
    imps = pa.table({
        "imp": [f"x{i}" for i in range(len(events))],
        "t": [ts // scale for ts, *_ in events],
        "device": [u for _, u, _, _ in events],
        "camp": [c for _, _, c, _ in events],
    })
    clicks = [(f"x{i}", (ts + d) // scale) for i, (ts, _, _, d) in enumerate(events)
              if d is not None]
    pq.write_table(imps, tmp_path / "imps.parquet")
    pq.write_table(pa.table({"imp": [c[0] for c in clicks], "t": [c[1] for c in clicks]}),
                   tmp_path / "clicks.parquet")
    root = str(tmp_path / "data")
    lake = LakeResource(root=root)
    m = mapping_from_dict({"time": "t", "time_format": epoch_unit, "id": "imp",
                           "user": "device", "campaign": "camp",
                           "clicks": {"time": "t", "impression_id": "imp"}})
    import_log(lake.store(), m, str(tmp_path / "imps.parquet"), str(tmp_path / "clicks.parquet"))
    result = run_flow(_resources(root), START, HOURS, train=False)
    assert result.failed_checks == []
    expected = {f"x{i}": int(d is not None and 0 < d <= WINDOW)
                for i, (ts, _, _, d) in enumerate(events) if _in_labeled_hours(ts)}
    assert _labels(lake.store()) == expected


def test_the_readme_path_import_then_demo_on_the_imported_landing_zone(tmp_path):
    from click.testing import CliRunner

    from clicklake.cli import main

    events = _events(300, seed=3)
    lines = ["when,user,campaign,clicked_at"]
    lines += [f"{iso(ts)},{u},{c},{iso(ts + d) if d is not None else ''}" for ts, u, c, d in events]
    log = tmp_path / "log.csv"
    log.write_text("\n".join(lines) + "\n")
    root = str(tmp_path / "data")
    runner = CliRunner()
    imported = runner.invoke(main, ["import", str(log), "--root", root, "--time", "when",
                                    "--user", "user", "--campaign", "campaign",
                                    "--click-time", "clicked_at", "--no-progress"])
    assert imported.exit_code == 0, imported.output
    demo = runner.invoke(main, ["demo", "--root", root, "--skip-generate"])
    assert demo.exit_code == 0, demo.output
    assert f"{HOURS} h from {iso(START)}" in demo.output
    labeled = sum(_in_labeled_hours(ts) for ts, *_ in events)
    assert f"Labeled impressions: {labeled} rows in {HOURS - 1} hours" in demo.output
    # Every labeled row goes to training or validation, its label with it.
    clicked = sum(int(d is not None and 0 < d <= WINDOW)
                  for ts, _, _, d in events if _in_labeled_hours(ts))
    split = re.search(r"Training set: ([\d,]+) rows \(([\d,]+) clicked\) to train, ([\d,]+) "
                      r"\(([\d,]+) clicked\) to validate", demo.output)
    assert split, demo.output
    train, train_clicked, valid, valid_clicked = (int(g.replace(",", "")) for g in split.groups())
    assert (train + valid, train_clicked + valid_clicked) == (labeled, clicked)
    assert valid > 0 and train > 0
    assert "rough figure" not in demo.output  # an imported log has no oracle to compare with
