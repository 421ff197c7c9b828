"""`clicklake lookup USER [--as-of T]`: one user's profile from the time-travel lookup table."""

from __future__ import annotations

import json
import time

import click
import pyarrow as pa

from clicklake.cli.params import CONTEXT, check_root, utf8
from clicklake.platform.lookup import LookupTable, SnapshotUnavailable
from clicklake.platform.storage import S3Options, Store
from clicklake.platform.timeutil import MAX_CLOCK_SKEW_MS, iso, parse_bounded_instant


def _plain(value):
    if hasattr(value, "timestamp"):
        return iso(round(value.timestamp() * 1000))
    return value


@click.command(context_settings=CONTEXT)
@click.argument("user", callback=lambda ctx, param, value: utf8(value, "USER"))
@click.option("--as-of", "as_of", default=None,
              help="Instant (ISO-8601, naive = UTC, or epoch ms); default: now.")
@click.option("--root", default="data", show_default=True, envvar="CLICKLAKE_ROOT",
              help="Local folder or s3://bucket/prefix holding the lake (env CLICKLAKE_ROOT; "
                   "`make demo` writes data/demo).")
@click.option("--lake-prefix", default="lake", show_default=True, envvar="CLICKLAKE_LAKE_PREFIX",
              help="Prefix of the lake below the root (env CLICKLAKE_LAKE_PREFIX).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--s3-endpoint-url", default=None, envvar="CLICKLAKE_S3_ENDPOINT_URL",
              help="S3-compatible endpoint (MinIO, moto, LocalStack) of an s3:// root.")
@click.option("--s3-region", default=None, help="Region of the S3 bucket.")
def lookup(user: str, as_of: str | None, root: str, lake_prefix: str, as_json: bool,
           s3_endpoint_url: str | None, s3_region: str | None) -> None:
    """Print USER's profile as of an instant: events with ts < T only."""
    now = int(time.time() * 1000)
    try:  # the REST API's bounds: a far-off instant walked the lake an hour at a time
        # Only an absent --as-of is now: an empty one is a mistake (an unset shell variable).
        t = parse_bounded_instant(as_of, MAX_CLOCK_SKEW_MS, now) if as_of is not None else now
    except ValueError as exc:
        raise click.BadParameter(f"{as_of[:40]!r}: {exc}", param_hint="--as-of") from None
    check_root(root)
    try:
        store = Store(root, S3Options(endpoint_url=s3_endpoint_url, region=s3_region))
    except ValueError as exc:  # pyarrow's ArrowInvalid: a malformed endpoint
        raise click.BadParameter(str(exc), param_hint="--s3-endpoint-url") from None
    table = LookupTable(store, lake_prefix)
    try:
        profile = table.profile(user, t)
    except SnapshotUnavailable as exc:
        raise click.ClickException(f"{exc} (lake root: {root}; --root or CLICKLAKE_ROOT picks "
                                   "another)") from None
    except (OSError, pa.ArrowInvalid) as exc:  # an unreachable S3 endpoint, an unreadable
        # root, a damaged partition (the error names its file)
        raise click.ClickException(f"cannot read the lake under {root}: {exc}") from None
    profile = {k: _plain(v) for k, v in profile.items()}
    profile["snapshot_as_of"] = (iso(profile["snapshot_as_of"])
                                 if profile["snapshot_as_of"] is not None else None)
    missing = sorted(table.missing_raw_hours)
    if as_json:
        profile["missing_raw_hours"] = [f"{s}@{iso(h)}" for s, h in missing]
        click.echo(json.dumps(profile, indent=2, sort_keys=False))
        return
    if profile["before_history"]:
        click.echo(f"{user}: no history as of {iso(t)} — the lake's history starts at "
                   f"{iso(table.history_start())}.")
        return
    if not profile["known"]:
        click.echo(f"{user}: unknown user as of {iso(t)} (no impressions or clicks before then).")
        return
    click.echo(f"{user} as of {iso(t)} (snapshot {profile['snapshot_as_of'] or 'none'} + raw events)")
    skip = {"user_id", "campaigns", "domains", "snapshot_as_of", "before_history"}
    width = max(len(k) for k in profile)
    for k, v in profile.items():
        if k not in skip:
            click.echo(f"  {k:<{width}}  {v}")
    click.echo(f"  {'domains':<{width}}  {', '.join(profile['domains']) or '-'}")
    click.echo("  campaigns (impressions / clicks):")
    for c, n in profile["campaigns"].items():
        click.echo(f"    {c:<{width - 2}}  {n['impressions']} / {n['clicks']}")
    _warn_missing(missing)


def _warn_missing(missing: list[tuple[str, int]]) -> None:
    """One warning per stream: an answer "now" past the lake's last hour lists every hour."""
    by_stream: dict[str, list[int]] = {}
    for s, h in missing:
        by_stream.setdefault(s, []).append(h)
    for s, hours in by_stream.items():
        span = iso(hours[0]) if len(hours) == 1 else (
            f"{len(hours)} hours from {iso(hours[0])} to {iso(hours[-1])}")
        click.echo(f"warning: raw {s} not materialized for {span}; counted as empty", err=True)
