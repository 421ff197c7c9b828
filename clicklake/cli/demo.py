"""`clicklake demo`: generate streams and run the whole pipeline through Dagster on the embedded
defaults (local folder lake, SQLite instance, in-process XGBoost)."""

from __future__ import annotations

import os
import shutil
import time

import click

from clicklake.cli.params import CONTEXT, check_root, parse_start
from clicklake.platform.landing import landed_hours
from clicklake.platform.timeutil import HOUR_MS, iso


def _landing_hours(store) -> tuple[int, int]:
    """(first hour, hours) of the landing zone's events. A generated zone's are its truth
    hours: its late records land hours after the last event hour, and the arrival hours made
    those empty hours the demo's validation hours (its training failed: "hold no labeled
    rows"). An imported zone has no truth: its files arrive in the hours of their events."""
    from clicklake.platform.simulate.truth import DEFAULT_PREFIX

    if not landed_hours(store, "impressions"):
        raise click.UsageError("no impression files in the landing zone: import or generate first")
    landed = landed_hours(store, "impressions")
    span = store.hive_span(f"{DEFAULT_PREFIX}/click_probability/")
    if span is None or span[0] < landed[0] or span[1] > landed[-1]:
        # no truth, or one a generated run left that the landed files do not cover (an import
        # replaced that run's zone: its hours held no labeled rows)
        span = (landed[0], landed[-1])
    return span[0], (span[1] - span[0]) // HOUR_MS + 1


MIN_HOURS = 3


def _checked_hours(start_ms: int, hours: int, where: str) -> None:
    """The demo's hours must be partitions that exist, and be over (Dagster partitions start at
    `PARTITIONS_START`; an hour still landing cannot be built)."""
    from clicklake.assets.partitions import PARTITIONS_START_MS

    end = start_ms + hours * HOUR_MS
    if start_ms < PARTITIONS_START_MS:
        raise click.UsageError(f"{where}: from {iso(start_ms)}, before the first hourly "
                               f"partition {iso(PARTITIONS_START_MS)} (for an old log: `clicklake "
                               "import --shift-to` moves it)")
    if end > time.time() * 1000:
        raise click.UsageError(f"{where}: until {iso(end)}, in the future: those hours cannot "
                               "be built yet")
    if hours < MIN_HOURS:
        raise click.UsageError(f"{where}: {hours} h, and the demo needs at least {MIN_HOURS}")


# Below this many validation clicks an AUC is a rough figure (its bootstrap standard error is
# ~0.01 at 1,000 positives and ~0.03 at 55, the default demo's): the summary says so.
FEW_VALIDATION_CLICKS = 1000


def _sum(materializations: list[dict], key: str) -> int:
    return sum(int(m.get(key, 0) or 0) for m in materializations)


@click.command(context_settings=CONTEXT)
@click.option("--root", default="data/demo", show_default=True,
              help="Local folder for the demo's landing zone and lake: its landing/, lake/ "
              "and truth/ are deleted first (only lake/ with --skip-generate).")
@click.option("--hours", default=6, show_default=True, type=click.IntRange(min=MIN_HOURS),
              help=f"Hours of traffic to generate (at least {MIN_HOURS}: the last hour is not "
              "labeled, and the model needs a training and a validation hour).")
@click.option("--users", default=5000, show_default=True, type=click.IntRange(1, 100_000_000),
              help="Distinct users.")
@click.option("--start", default="2026-11-24T00:00:00Z", show_default=True,
              help="First hour (UTC) of the generated streams.")
@click.option("--seed", default=7, show_default=True, type=click.IntRange(min=0))
@click.option("--serve/--no-serve", default=True, show_default=True,
              help="Fold the streams into the online store, start the REST API and send a few"
              " predictions.")
@click.option("--skip-generate", is_flag=True,
              help="Use the landing zone already under --root (e.g. from `clicklake import`);"
              " the hours are its events' (a generated zone's truth hours, an imported one's"
              " impression files' hours; --hours, --users, --start and --seed are then unused).")
def demo(root: str, hours: int, users: int, start: str, seed: int, serve: bool,
         skip_generate: bool) -> None:
    """Generate HOURS of synthetic streams (or use an imported landing zone), materialize the
    whole asset graph through Dagster in order — raw → tiles → profiles → labeled → training set →
    model → gate → deployment — and print a summary. Runs are recorded in the instance under
    DAGSTER_HOME when it is set, so `make dev` (which keeps a DAGSTER_HOME set before it, with
    CLICKLAKE_ROOT for a root other than data/demo) shows them."""
    import dagster as dg

    from clicklake.flow import run_flow
    from clicklake.platform.simulate import generate
    from clicklake.platform.storage import Store
    from clicklake.resources.endpoint import LocalModelServer
    from clicklake.resources.lake import LakeResource
    from clicklake.resources.trainer import LocalTrainer

    if root.startswith("s3://"):
        raise click.UsageError("the demo runs on a local folder; use the Dagster UI for S3")
    check_root(root)
    t0 = time.perf_counter()
    if not skip_generate:
        start_ms = parse_start(start)
        _checked_hours(start_ms, hours, "--start and --hours")
        for sub in ("landing", "lake", "truth"):
            shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
        click.echo(f"Generating {hours} h of streams for {users} users into {root}/landing ...")
        try:
            summary = generate(Store(root), start_ms=start_ms, hours=hours, users=users,
                               seed=seed)
        except OSError as exc:  # a full disk, a read-only folder
            raise click.ClickException(f"cannot write under {root}: {exc}") from None
        except MemoryError:
            raise click.ClickException(f"not enough memory for {users:,} users: fewer, or "
                                       "`clicklake generate` in pieces of hours") from None
        click.echo(f"  {summary.to_dict()['events']} in {time.perf_counter() - t0:.1f} s")
    else:
        start_ms, hours = _landing_hours(Store(root))  # checked before anything is deleted
        _checked_hours(start_ms, hours, f"the landing zone under {root}")
        shutil.rmtree(os.path.join(root, "lake"), ignore_errors=True)
        click.echo(f"Using the landing zone under {root}: {hours} h from {iso(start_ms)}")

    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else None
    resources = {"lake": LakeResource(root=root), "trainer": LocalTrainer(),
                 "endpoint": LocalModelServer()}
    click.echo("Materializing the asset graph through Dagster:")
    result = run_flow(resources, start_ms, hours, instance=instance,
                      progress=lambda msg: click.echo(f"  {msg}"), tags={"clicklake/demo": "true"})
    gate = [c for c in result.failed_checks if c == "click_model:model_gate"]
    other = [c for c in result.failed_checks if c not in gate]
    if other:
        raise click.ClickException(f"asset checks failed: {', '.join(other)}")
    if crashed := result.crashed():
        raise click.ClickException("the pipeline failed at " + "; ".join(
            f"{step}: {message}" for step, message in crashed.items()))

    m = result.materializations
    click.echo("\nRaw layer (all partitions):")
    click.echo(f"  {'asset':<18}{'kept':>10}  quarantined by reason")
    for name in ("raw_impressions", "raw_clicks", "raw_predictions"):
        rows = m.get(name, [])
        reasons = {k.removeprefix("quarantined_"): _sum(rows, k) for k in (rows[0] if rows else {})
                   if k.startswith("quarantined_")}
        text = ", ".join(f"{r} {n}" for r, n in reasons.items() if n) or "-"
        click.echo(f"  {name:<18}{_sum(rows, 'rows_kept'):>10}  {text}")
    labeled = m.get("labeled_impressions", [])
    click.echo(f"\nLabeled impressions: {_sum(labeled, 'dagster/row_count')} rows in "
               f"{len(labeled)} hours, {_sum(labeled, 'clicked_impressions')} clicked")
    ts = result.latest("training_set")
    if ts:
        click.echo(f"Training set: {ts.get('train_rows', 0):,} rows ({ts.get('train_clicks', 0):,}"
                   f" clicked) to train, {ts.get('validation_rows', 0):,}"
                   f" ({ts.get('validation_clicks', 0):,} clicked) to validate")
    model = result.latest("click_model")
    if model:
        # metrics undefined on these rows (no validation click, no cost) are not recorded
        oracle, auc, saved = model.get("oracle_auc"), model.get("auc"), model.get("spend_saved")
        click.echo(f"Model {model['model_id']}: validation AUC "
                   + (f"{auc:.4f}" if auc is not None else "n/a (no validation click)")
                   + (f" vs oracle {oracle:.4f} (ratio {model['auc_to_oracle']:.3f})"
                      if oracle and auc is not None else "")
                   + "; spend saved at 95 % click retention "
                   + (f"{saved:.1%}" if saved is not None else "n/a")
                   + f"; trained in {model['train_seconds']:.1f} s"
                   f" ({model['train_rows_per_s']:,.0f} rows/s)")
        clicks = int(ts.get("validation_clicks", 0) or 0) if ts else 0
        if oracle and clicks < FEW_VALIDATION_CLICKS:
            click.echo(f"  (an AUC over {clicks:,} clicks is a rough figure, and so few are little"
                       " to learn from: the 0.97 x oracle target is measured by `make bench` on"
                       " 50 k users x 36 h; `clicklake demo --hours 36 --users 50000` trains"
                       " on that much, in a minute or two)")
    deployed = result.latest("deployed_model")
    if deployed:
        click.echo(f"Deployed: {deployed['model_id']} ({deployed['target']})")
    elif gate:
        click.echo("Not deployed: the model failed its gate (see the model_gate check in the UI)"
                   + ("; the API is not started: it has no model to serve." if serve else "."))
    if serve and deployed:
        from clicklake.cli.demo_serving import fold_online_store, serve_and_predict

        folded = fold_online_store(root, instance, {"clicklake/demo": "true"})
        click.echo(f"\nOnline store: {folded.get('events_folded', '?')} events from "
                   f"{folded.get('files_folded', '?')} files folded by serving_lookup "
                   f"({folded.get('fold_events_per_s', 0):,.0f} events/s)")
        last_hour = start_ms + (hours - 1) * HOUR_MS
        serve_and_predict(root, last_hour, int(folded.get("watermark_ms") or last_hour + HOUR_MS))
    click.echo(f"\nDone in {time.perf_counter() - t0:.1f} s. Lake: {root}/lake"
               + (f"  (browse the runs and assets with `{_dev_command(root)}`)."
                  if instance is not None else
                  "  (the runs went to a throwaway Dagster instance: set DAGSTER_HOME, as "
                  "`make demo` does, to browse them with `make dev`)."))


def _dev_command(root: str) -> str:
    """How to open the UI on this run's lake: `make dev` shows CLICKLAKE_ROOT (data/demo)."""
    import os

    default = os.path.abspath("data/demo")
    return "make dev" if os.path.abspath(root) == default else f"CLICKLAKE_ROOT={root} make dev"
