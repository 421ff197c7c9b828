"""`clicklake generate`: synthetic impression, click and prediction streams into a landing zone."""

from __future__ import annotations

import sys

import click

from clicklake.cli.params import CONTEXT, check_root, check_span, parse_start

DEFAULT_START = "2026-11-24T00:00:00Z"


@click.command(context_settings=CONTEXT)
@click.option("--root", default="data", show_default=True, envvar="CLICKLAKE_ROOT",
              help="Local folder or s3://bucket/prefix; files go under landing/ and truth/ "
                   "(env CLICKLAKE_ROOT).")
@click.option("--start", default=DEFAULT_START, show_default=True,
              help="First event hour (UTC), ISO-8601 or epoch ms; must be a whole hour.")
@click.option("--hours", default=6, show_default=True, type=click.IntRange(min=1))
@click.option("--users", default=10_000, show_default=True, type=click.IntRange(1, 100_000_000))
@click.option("--impressions", type=click.IntRange(0, 10_000_000_000), default=None,
              help="Total impressions [default: 0.42 x users x hours].")
@click.option("--seed", default=7, show_default=True, type=click.IntRange(min=0),
              help="Same seed and options give byte-identical files.")
@click.option("--clean", is_flag=True,
              help="No messy records (duplicates, broken lines, late and future events).")
@click.option("--replace", is_flag=True,
              help="Delete existing landing/ and truth/ files under the root first.")
@click.option("--s3-endpoint-url", default=None, envvar="CLICKLAKE_S3_ENDPOINT_URL",
              help="S3-compatible endpoint (MinIO, moto, LocalStack).")
@click.option("--s3-region", default=None, help="Region of the S3 bucket.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal].")
def generate(root: str, start: str, hours: int, users: int, impressions: int | None, seed: int,
             clean: bool, replace: bool, s3_endpoint_url: str | None, s3_region: str | None,
             progress: bool | None) -> None:
    """Write realistic synthetic ad streams in Kinesis Data Firehose's S3 layout.

    Users with skewed activity in 15 countries (real IP ranges), browsers and crawlers,
    campaigns and domains, time-of-day and recency effects, click farms, clicks after their
    impressions and a production model's predictions. Each impression's true click
    probability goes to truth/click_probability/ (the pipeline never reads it).
    """
    from tqdm import tqdm

    from clicklake.platform import landing
    from clicklake.platform.simulate import default_impressions
    from clicklake.platform.simulate import generate as run
    from clicklake.platform.storage import S3Options, Store
    from clicklake.platform.timeutil import iso

    start_ms = parse_start(start)
    check_span(start_ms, hours, "--hours")
    check_root(root)
    store = Store(root, S3Options(endpoint_url=s3_endpoint_url, region=s3_region))
    total = default_impressions(users, hours) if impressions is None else impressions

    try:
        existing = [k for p in (f"{landing.DEFAULT_PREFIX}/", "truth/click_probability/")
                    for k in store.list(p)]
    except OSError as exc:  # an unreachable S3 endpoint, a root that cannot be read
        raise click.ClickException(f"cannot read {store.uri('')}: {exc}") from None
    if existing and replace:
        for key in existing:
            store.delete(key)
        click.echo(f"deleted {len(existing)} existing files under {store.uri('')}", err=True)
    elif existing:
        click.echo(f"note: {len(existing)} files already under landing/ or truth/; files with "
                   "equal keys are overwritten, others stay (use --replace to start afresh)",
                   err=True)

    click.echo(f"generating {hours} h from {iso(start_ms)}: {users:,} users, {total:,} "
               f"impressions, seed {seed}{', clean' if clean else ''} → {store.uri('')}", err=True)
    with tqdm(total=total, unit="imp", unit_scale=True, desc="generate", file=sys.stderr,
              disable=None if progress is None else not progress) as bar:
        try:
            summary = run(store, start_ms=start_ms, hours=hours, users=users, impressions=total,
                          seed=seed, clean=clean, progress=bar.update)
        except MemoryError:
            raise click.ClickException(f"not enough memory for {users:,} users and {total:,} "
                                       "impressions: generate fewer, or in pieces of hours "
                                       "(one run per piece, each with its --start)") from None
        except OSError as exc:  # a full disk, a read-only folder, a file where a folder goes
            raise click.ClickException(f"cannot write under {store.uri('')}: {exc}") from None

    click.echo(f"{'stream':<12} {'events':>10} {'messy':>8} {'lines':>10} {'files':>6}")
    for s in landing.STREAMS:
        m = sum(summary.messy[s].values())
        click.echo(f"{s:<12} {summary.events[s]:>10,} {m:>8,} {summary.lines[s]:>10,} "
                   f"{summary.files[s]:>6,}")
    kinds = ", ".join(f"{k} {v:,}" for k, v in summary.messy_by_kind().items())
    click.echo(f"messy records by kind: {kinds if not clean else 'none (--clean)'}")
    click.echo(f"clicks more than 15 min after their impression: {summary.clicks_beyond_window:,}")
    click.echo(f"truth: {summary.truth_files} files under truth/click_probability/")
    click.echo(f"done in {summary.seconds:.1f} s")
