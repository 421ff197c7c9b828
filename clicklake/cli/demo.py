"""`clicklake demo`: generate streams and run the pipeline through Dagster on the embedded defaults."""

from __future__ import annotations

import os
import shutil
import time

import click

from clicklake.platform.timeutil import HOUR_MS, hour_partition_key, parse_instant


@click.command()
@click.option("--root", default="data/demo", show_default=True,
              help="Local folder for the demo's landing zone and lake (wiped first).")
@click.option("--hours", default=6, show_default=True, help="Hours of traffic to generate.")
@click.option("--users", default=5000, show_default=True, help="Distinct users.")
@click.option("--start", default="2026-11-24T00:00:00Z", show_default=True,
              help="First hour (UTC) of the generated streams.")
@click.option("--seed", default=7, show_default=True)
def demo(root: str, hours: int, users: int, start: str, seed: int) -> None:
    """Generate HOURS of synthetic streams, materialize every hourly partition through Dagster
    (recorded in the instance under DAGSTER_HOME when it is set, so `make dev` shows the runs),
    and print what was kept and quarantined."""
    import dagster as dg

    from clicklake.definitions import defs
    from clicklake.platform.simulate import generate
    from clicklake.platform.storage import Store
    from clicklake.resources.lake import LakeResource

    if root.startswith("s3://"):
        raise click.UsageError("the demo runs on a local folder; use the Dagster UI for S3")
    if os.path.isdir(root):
        shutil.rmtree(root)
    start_ms = parse_instant(start)
    t0 = time.perf_counter()
    click.echo(f"Generating {hours} h of streams for {users} users into {root}/landing ...")
    summary = generate(Store(root), start_ms=start_ms, hours=hours, users=users, seed=seed)
    click.echo(f"  generated in {time.perf_counter() - t0:.1f} s: {summary.to_dict()['events']}")

    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else None
    lake = LakeResource(root=root)
    assets = list(defs.assets)
    totals: dict[str, dict[str, int]] = {}
    partition_keys = [hour_partition_key(start_ms + i * HOUR_MS) for i in range(hours)]
    with click.progressbar(partition_keys, label="Materializing hourly partitions",
                           item_show_func=lambda k: k or "") as keys:
        for key in keys:
            result = dg.materialize(assets, partition_key=key, instance=instance,
                                    resources={"lake": lake}, tags={"clicklake/demo": "true"})
            for event in result.get_asset_materialization_events():
                mat = event.step_materialization_data.materialization
                name = mat.asset_key.to_user_string()
                meta = {k: v.value for k, v in mat.metadata.items()}
                agg = totals.setdefault(name, {})
                for k, v in meta.items():
                    if k == "rows_kept" or k.startswith("quarantined_"):
                        agg[k] = agg.get(k, 0) + int(v)
            failed = [c for c in result.get_asset_check_evaluations() if not c.passed]
            if failed:
                raise click.ClickException(f"checks failed in {key}: {failed}")

    click.echo("\nRaw layer (all partitions):")
    click.echo(f"  {'asset':<18}{'kept':>10}  quarantined by reason")
    for name, agg in sorted(totals.items()):
        reasons = ", ".join(f"{k.removeprefix('quarantined_')} {v}" for k, v in agg.items()
                            if k.startswith("quarantined_") and v)
        click.echo(f"  {name:<18}{agg.get('rows_kept', 0):>10}  {reasons or '-'}")
    click.echo(f"\nDone in {time.perf_counter() - t0:.1f} s. Lake: {root}/lake  "
               f"(browse the runs with `make dev`).")
