"""`clicklake import`: a user's ad log → impression and click streams in the landing zone."""

from __future__ import annotations

import re
import sys

import click
import duckdb
import orjson

from clicklake.cli.params import CONTEXT, FiniteFloat, check_root, parse_start
from clicklake.platform.importer import (
    MappingError,
    ReadError,
    ShiftError,
    load_mapping_dict,
    mapping_from_dict,
    merge,
)
from clicklake.platform.importer import import_log as run_import
from clicklake.platform.storage import S3Options, Store
from clicklake.platform.timeutil import iso

FORMATS = ("iso, epoch_s, epoch_ms, yymmddhh or a strptime pattern such as '%d/%m/%Y %H:%M' "
           "(%z for a numeric offset; %Z, a zone name, is refused)")


def _tqdm(desc: str, total: int, unit: str):
    from tqdm import tqdm

    return tqdm(desc=desc, total=total or None, unit=unit, unit_scale=True, file=sys.stderr,
                leave=False)


@click.command("import", context_settings=CONTEXT)
@click.argument("log", type=click.Path(exists=True, dir_okay=False))
@click.option("--mapping", "mapping_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML file with the column mapping (keys = these flags with underscores); "
                   "flags given as well override it.")
@click.option("--time", help="Column of the impression time.")
@click.option("--time-format", help=f"Format of the time column: {FORMATS}. Default iso.")
@click.option("--user", help="User key column(s), comma-separated to combine several "
                             "(e.g. device_id,device_ip).")
@click.option("--campaign", help="Campaign column(s), comma-separated to combine several.")
@click.option("--site", help="Site column(s) → the event's domain (optional).")
@click.option("--id", "id_", help="Impression id column; without it ids are a hash of the row.")
@click.option("--ip", help="IP address column (optional).")
@click.option("--user-agent", help="User agent column (optional).")
@click.option("--cost", help="Cost column in USD per impression (optional).")
@click.option("--cost-scale", type=FiniteFloat(), help="Multiply cost by this (0.001 for a CPM column).")
@click.option("--click-time", help="Column with the click (or conversion) time; empty = none.")
@click.option("--click-time-format", help="Format of --click-time (default: --time-format).")
@click.option("--label", help="0/1 click label column; a 1 makes a click at time + delay.")
@click.option("--click-delay", type=FiniteFloat(),
              help="Seconds from impression to a labelled click, floored to whole ms (default 30; "
                   "0.001 to 86400; keep it inside the label window).")
@click.option("--delimiter", help="CSV field delimiter (default ','; 'tab' for TSV).")
@click.option("--clicks", "clicks_file", type=click.Path(exists=True, dir_okay=False),
              help="Separate clicks table (CSV or Parquet) joined to the impressions by id.")
@click.option("--clicks-time", help="Click time column of the clicks table.")
@click.option("--clicks-time-format", help="Its format (default: --time-format).")
@click.option("--clicks-impression-id", help="Column of the clicks table holding the impression id.")
@click.option("--clicks-id", help="Click id column (default: a hash of the row).")
@click.option("--clicks-user", help="User column(s) of the clicks table (default: the impression's).")
@click.option("--clicks-campaign", help="Campaign column(s) of the clicks table "
                                        "(default: the impression's).")
@click.option("--root", default="data", show_default=True, envvar="CLICKLAKE_ROOT",
              help="Data root: a folder or s3://bucket/prefix; files go to <root>/<landing prefix>/ "
                   "(env CLICKLAKE_ROOT).")
@click.option("--s3-endpoint-url", envvar="CLICKLAKE_S3_ENDPOINT_URL", show_envvar=True,
              help="S3 endpoint (MinIO, moto, LocalStack).")
@click.option("--landing-prefix", default="landing", show_default=True,
              envvar="CLICKLAKE_LANDING_PREFIX", show_envvar=True,
              help="Folder below the root the landing files go to: the deployment's landing "
              "prefix, where the raw assets and the sensor read.")
@click.option("--source", help="Name of this import in landing file names and the rejects file "
                               "(default: file name + hash of its path). Same source = replace. "
                               "Letters, digits, '.', '_' and '-', not starting with '.'.")
@click.option("--shift-to", help="Move all times by whole weeks so the first event falls on or "
                                 "after this instant (ISO), keeping hour of day and weekday; "
                                 "refused if the last event would reach 2100.")
@click.option("--tmp-dir", type=click.Path(file_okay=False, exists=True),
              help="Scratch folder for the sort (an existing one).")
@click.option("--memory-limit", default="512MB", show_default=True,
              help="Memory cap of the external sort (DuckDB): a size such as 512MB, 1G or 2GiB, "
              "or a share of RAM such as 50%.")
@click.option("--show-rejects", default=20, show_default=True,
              help="How many bad rows to print.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars on stderr [default: when stderr is a terminal].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def import_log_cmd(log, mapping_file, time, time_format, user, campaign, site, id_, ip, user_agent,
                   cost, cost_scale, click_time, click_time_format, label, click_delay, delimiter,
                   clicks_file, clicks_time, clicks_time_format, clicks_impression_id, clicks_id,
                   clicks_user, clicks_campaign, root, s3_endpoint_url, landing_prefix, source,
                   shift_to, tmp_dir,
                   memory_limit, show_rejects, progress, as_json):
    """Import an ad log LOG (CSV or Parquet, plain or gzip) into the landing zone.

    \b
    Shapes it takes:
      one row per impression with an optional click/conversion time column (--click-time)
      one row per impression with a 0/1 label and an hour-level YYMMDDHH time (--label)
      impressions plus a separate clicks table joined by id (--clicks FILE)
    Each event lands in the Firehose file of its own event time, so the raw assets take all of
    it; re-importing the same source rewrites the same files (no duplicates).

    \b
    Example:
      clicklake import train.gz --time hour --time-format yymmddhh --id id \\
        --user device_id,device_ip,device_model --campaign C17 --site site_id,app_id --label click
    """
    flags = {
        "time": time, "time_format": time_format, "user": user, "campaign": campaign,
        "site": site, "id": id_, "ip": ip, "user_agent": user_agent, "cost": cost,
        "cost_scale": cost_scale, "click_time": click_time,
        "click_time_format": click_time_format, "label": label, "click_delay": click_delay,
        "delimiter": delimiter,
        "clicks": {"time": clicks_time, "time_format": clicks_time_format,
                   "impression_id": clicks_impression_id, "id": clicks_id,
                   "user": clicks_user, "campaign": clicks_campaign},
    }
    try:
        base = {}
        if mapping_file:
            with open(mapping_file, encoding="utf-8") as f:
                base = load_mapping_dict(f.read())
        mapping = mapping_from_dict(merge(base, flags))
        if clicks_file and mapping.clicks is None:
            raise MappingError("--clicks needs --clicks-time and --clicks-impression-id "
                               "(or a clicks: section in the mapping file)")
        if mapping.clicks is not None and not clicks_file:
            raise MappingError("the mapping describes a clicks table: pass it with --clicks FILE")
    except (MappingError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    shift_ms = parse_start(shift_to, "--shift-to", whole_hour=False) if shift_to else None
    if source is not None and not _SOURCE.fullmatch(source):
        # it names files under <root>/landing and <root>/import-*: no path of its own
        raise click.BadParameter(f"{source!r}: letters, digits, '.', '_' and '-' only, not "
                                 "starting with '.'", param_hint="--source")
    if source is not None and len(source.encode()) > MAX_SOURCE_BYTES:
        # in file names (its manifest, its rejects): too long, the run failed once its landing
        # files were written, leaving them to no manifest
        raise click.BadParameter(f"{len(source.encode())} bytes: at most {MAX_SOURCE_BYTES}",
                                 param_hint="--source")
    if not _MEMORY.fullmatch(memory_limit.strip()):
        raise click.BadParameter(f"{memory_limit!r} is not a size such as 512MB, 1G or 2GiB, "
                                 "nor a share such as 50%",
                                 param_hint="--memory-limit")
    try:  # sizes of the right shape DuckDB refuses still (1000%, 99999999TB): before any work
        duckdb.connect().execute(f"SET memory_limit = '{memory_limit.strip()}'")
    except duckdb.Error as exc:
        raise click.BadParameter(f"{memory_limit!r}: {str(exc).splitlines()[0]}",
                                 param_hint="--memory-limit") from None
    if not re.fullmatch(r"[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*", landing_prefix) or any(
            part in (".", "..") for part in landing_prefix.split("/")):
        raise click.BadParameter(f"{landing_prefix!r} is not a folder below the root (letters, "
                                 "digits, '_', '.', '=', '-', parts joined by '/')",
                                 param_hint="--landing-prefix")
    check_root(root)
    store = Store(root, S3Options(endpoint_url=s3_endpoint_url))
    try:
        report = run_import(store, mapping, log, clicks_file, source=source,
                            prefix=landing_prefix,
                            shift_to_ms=shift_ms, tmp_dir=tmp_dir, memory_limit=memory_limit,
                            progress=_tqdm if (sys.stderr.isatty() if progress is None
                                               else progress) else _no_bar,
                            keep_rejects=max(0, show_rejects))
    except ShiftError as exc:  # found once the times are known; nothing was written
        raise click.BadParameter(str(exc).removeprefix("--shift-to "),
                                 param_hint="--shift-to") from None
    except (ReadError, MappingError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # the root cannot be written (an unreachable S3 endpoint, say)
        raise click.ClickException(f"cannot write under {store.uri('')}: {exc}") from None
    except duckdb.OutOfMemoryException as exc:
        raise click.ClickException(f"the external sort needs more than --memory-limit "
                                   f"{memory_limit}: {str(exc).splitlines()[0]}") from None
    if as_json:
        click.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        _print_summary(report, store, landing_prefix)
    if report.impressions == 0:
        raise click.ClickException(
            f"no impression was imported, so nothing under {landing_prefix}/ changed (an "
            f"earlier import of source {report.source} stays as it was): check the mapping and "
            "the rejects in "
            f"{store.uri(report.rejects_key)}")


def _no_bar(desc: str, total: int, unit: str):
    from clicklake.platform.importer.run import _NoProgress

    return _NoProgress()


def _print_summary(r, store: Store, landing_prefix: str = "landing") -> None:
    echo = click.echo
    echo(f"source {r.source}")
    echo(f"rows read           {r.rows_read:>12,}" + (f"  (+{r.click_rows_read:,} click rows)"
                                                       if r.click_rows_read else ""))
    echo(f"impressions         {r.impressions:>12,}")
    echo(f"clicks              {r.clicks:>12,}" + (f"  ({r.orphan_clicks:,} without their "
                                                    "impression)" if r.orphan_clicks else ""))
    echo(f"duplicates          {r.duplicate_rows + r.duplicate_clicks:>12,}")
    echo(f"bad rows            {r.bad_row_count:>12,}")
    for reason, n in r.bad_rows.items():
        echo(f"  {reason:<26}{n:>10,}")
    if r.rejected_clicks:
        echo("clicks dropped (impression kept)")
        for reason, n in r.rejected_clicks.items():
            echo(f"  {reason:<26}{n:>10,}")
    if r.blank_lines or r.skipped_before_header:
        echo(f"skipped: {r.blank_lines:,} blank line(s), {r.skipped_before_header:,} line(s) "
             "before the header")
    echo(f"files written       {r.files_written:>12,}  ({store.uri(landing_prefix)})")
    if r.stale_files_removed:
        echo(f"stale files removed {r.stale_files_removed:>12,}  (from the previous import)")
    if r.first_ts is not None:
        shift = f"  (shifted by {r.shift_ms // 86_400_000} days)" if r.shift_ms else ""
        echo(f"event time          {iso(r.first_ts)} .. {iso(r.last_ts)}{shift}")
    if r.first_rejects:
        echo(f"first bad rows (all in {store.uri(r.rejects_key)}):")
        for rec in r.first_rejects:
            echo(f"  {rec['table']} line {rec['line']}: {rec['reason']}: {rec['detail']}")


# Letters and digits of any script (the default source keeps a file name's), '_', '-', '.'
# but first: no path of its own.
_SOURCE = re.compile(r"[\w-][\w.-]*")
MAX_SOURCE_BYTES = 100
# What DuckDB's memory_limit takes: a size (1G, 512MB, 2GiB, 1000000B) or a share of RAM.
_MEMORY = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B?|B|%)", re.IGNORECASE)
import_log = import_log_cmd  # the name the command registry points at
