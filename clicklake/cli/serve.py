"""`clicklake serve`: the REST prediction API (FastAPI on uvicorn)."""

from __future__ import annotations

import click

from clicklake.cli.params import CONTEXT, FiniteFloat, check_root
from clicklake.platform.decision import DecisionPolicy

_DEFAULTS = DecisionPolicy()


def _token(value: str | None) -> str | None:
    from clicklake.serving.auth import check_token

    try:
        return check_token(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--token' / CLICKLAKE_API_TOKEN"
                                 ) from None


@click.command(context_settings=CONTEXT)
@click.option("--root", default="data", show_default=True, envvar="CLICKLAKE_ROOT",
              help="Local folder or s3://bucket/prefix holding the lake (env CLICKLAKE_ROOT).")
@click.option("--lake-prefix", default="lake", show_default=True, envvar="CLICKLAKE_LAKE_PREFIX",
              help="Prefix of the lake below the root (env CLICKLAKE_LAKE_PREFIX).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 0.0.0.0 exposes the API beyond this machine.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", envvar="CLICKLAKE_API_TOKEN", default=None, show_envvar=True,
              callback=lambda ctx, param, value: _token(value),
              help="Bearer token required on /v1/* and /metrics (visible ASCII, no spaces). "
              "Prefer the environment variable: a flag is visible to other users in the "
              "process list.")
@click.option("--source", type=click.Choice(["lake", "online"]), default="lake",
              show_default=True,
              help="Features from the lake (time-travel lookup, hourly fresh) or the online store.")
@click.option("--online-db", default=None, envvar="CLICKLAKE_ONLINE_DB",
              help="SQLite file of the online store (--source online; env CLICKLAKE_ONLINE_DB, "
              "default <root>/online/online.db for a local root).")
@click.option("--dynamodb-table", default=None, envvar="CLICKLAKE_DYNAMODB_TABLE",
              help="Read the online store from this DynamoDB table instead (--source online; "
              "env CLICKLAKE_DYNAMODB_TABLE).")
@click.option("--model", "model_backend", type=click.Choice(["local", "sagemaker"]),
              default="local", show_default=True,
              help="Score with the champion's booster in process, or its SageMaker endpoint.")
@click.option("--endpoint-name", default="clicklake-ctr", show_default=True,
              envvar="CLICKLAKE_ENDPOINT_NAME", show_envvar=True,
              help="SageMaker endpoint name (with --model sagemaker): the one the pipeline "
              "deploys to.")
@click.option("--region", default=None, envvar="AWS_REGION", show_envvar=True,
              help="AWS region (default: the boto3 chain).")
@click.option("--value-per-click", type=FiniteFloat(min=0),
              default=_DEFAULTS.default_value_per_click, show_default=True,
              help="USD a click within the label window (CLICKLAKE_LABEL_WINDOW_MINUTES, default "
              "15) is worth when a request does not say (the model's probability is of such a "
              "click).")
@click.option("--farm-ctr", type=FiniteFloat(0, 1, min_open=True),
              default=_DEFAULTS.farm_ctr_24h, show_default=True,
              help="click_farm: a user's 24 h CTR at or above this ...")
@click.option("--farm-min-impressions", type=click.IntRange(min=1),
              default=_DEFAULTS.farm_min_impressions_24h, show_default=True,
              help="... over at least this many impressions in 24 h.")
@click.option("--farm-burst", type=click.IntRange(min=1),
              default=_DEFAULTS.farm_burst_impressions_1h, show_default=True,
              help="click_farm: this many impressions of a user in the 1 h window.")
@click.option("--reload-every", type=FiniteFloat(min=0.5), default=30.0,
              show_default=True, help="Seconds between checks for a new champion model.")
@click.option("--max-body", type=click.IntRange(min=256), default=16 * 1024, show_default=True,
              help="Largest request body accepted, in bytes (413 beyond).")
# (64 KiB: an AWS Application Load Balancer's own limit on a request's headers)
@click.option("--max-header-bytes", type=click.IntRange(min=1024), default=64 * 1024,
              show_default=True,
              help="Largest request head (request line and headers) accepted, in bytes: 431 "
              "and the connection closed beyond.")
@click.option("--request-timeout", type=FiniteFloat(min=0.1), default=30.0,
              show_default=True,
              help="Seconds a client may take to send a request from its first byte: 408 while "
              "its headers are still coming, the connection closed once its body is being read.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              envvar="CLICKLAKE_API_WORKERS", show_envvar=True,
              help="Worker processes answering on the one port, each with its own model and "
              "feature source; /metrics sums them. On 2 shared cores 2 workers cost ~30 % more "
              "CPU per prediction and did not lower p99 beside a CPU hog (benchmarks/bench_api.py): "
              "use more than 1 where the server has cores to spare.")
@click.option("--startup-timeout", type=FiniteFloat(min=1), default=300.0,
              show_default=True,
              help="With --workers 2 or more: seconds a worker may take to be ready (model "
              "load, warm-up); a worker still starting then is killed and the server stops "
              "with exit code 1.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--access-log/--no-access-log", default=False, show_default=True)
def serve(root: str, lake_prefix: str, host: str, port: int, token: str | None, source: str,
          online_db: str | None, dynamodb_table: str | None, model_backend: str,
          endpoint_name: str, region: str | None, value_per_click: float, farm_ctr: float,
          farm_min_impressions: int, farm_burst: int, reload_every: float, max_body: int,
          max_header_bytes: int, request_timeout: float, workers: int, startup_timeout: float,
          log_level: str, access_log: bool) -> None:
    """Serve click predictions and serve/skip decisions over REST (uvicorn, --workers processes).

    \b
    POST /v1/predict                  impression -> probability, decision, reasons, model
    GET  /v1/users/{id}/profile       now, or ?as_of=ISO-8601|epoch-ms (time travel)
                                      ?lists=false: the counters alone (no campaign, domain lists)
    GET  /healthz                     model loaded + feature watermark (no token)
    GET  /metrics                     Prometheus text (summed over the workers)
    GET  /docs                        OpenAPI documentation

    The model is the registry's champion (what deployed_model promoted), followed as it changes.
    SIGTERM or SIGINT stops the server and its workers.
    """
    import os
    import sys

    check_root(root)  # a file, a dangling link, an s3:// root with no bucket: refused here
    # Neither path writes into a directory inherited from the environment (it would mix in
    # whatever other processes wrote there): one process keeps its metrics in memory, several
    # workers use a private directory of their own. Dropped before anything imports
    # prometheus_client, which picks its storage from it on import.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

    from uvicorn.main import STARTUP_FAILURE

    from clicklake.platform.online.state import StaleLayout
    from clicklake.platform.training import registry
    from clicklake.resources.lake import LakeResource
    from clicklake.serving import protocol
    from clicklake.serving.metrics import keep_in_process
    from clicklake.serving.workers import (
        ServeSettings,
        build_app,
        open_source,
        run_workers,
        settle_gc,
    )

    if source == "online" and not (online_db or dynamodb_table):
        from clicklake.resources.online_store import default_sqlite_path

        online_db = default_sqlite_path(root)  # beside the lake, where serving_lookup folds
    def empty_store(what: str) -> None:
        click.echo(f"warning: {what} (a wrong --root or --online-db?): every user is unknown "
                   "until serving_lookup folds landing files there", err=True)

    missing = source == "online" and not dynamodb_table and not os.path.exists(online_db)
    if missing:
        empty_store(f"no online store at {online_db} yet")
    settings = ServeSettings(
        root=root, lake_prefix=lake_prefix, region=region, source=source, online_db=online_db,
        dynamodb_table=dynamodb_table, model_backend=model_backend, endpoint_name=endpoint_name,
        token=token or None, max_body=max_body, reload_every=reload_every,
        value_per_click=value_per_click, farm_ctr=farm_ctr,
        farm_min_impressions=farm_min_impressions, farm_burst=farm_burst)
    # A store, lake or AWS setting that cannot be opened is refused with its message, not a
    # traceback (a file that is no SQLite database, a --root that is a file, no AWS region).
    import sqlite3

    from botocore.exceptions import BotoCoreError, ClientError

    unopenable = (StaleLayout, OSError, sqlite3.Error, ValueError, BotoCoreError, ClientError)
    if workers == 1:  # this process serves
        keep_in_process()  # even had prometheus_client been imported before the line above
        try:
            app, slot = build_app(settings)
        except unopenable as exc:
            raise click.ClickException(f"cannot serve: {exc}") from exc
        champion = slot.current.model_id if slot.current else None
        opened = app.state.source
    else:
        # Checked here, once, so a store the workers cannot read is refused with its message
        # rather than as N worker tracebacks; each worker then opens its own.
        try:
            opened = open_source(settings)
            store = LakeResource(root=root, lake_prefix=lake_prefix, region=region).store()
            champ = registry.champion(store, lake_prefix)
        except unopenable as exc:
            raise click.ClickException(f"cannot serve: {exc}") from exc
        champion = champ.model_id if champ else None
    if source == "online" and not missing and opened.watermark_ms() is None:
        # (opening it created the file a wrong --root named: said again at every start)
        empty_store(f"the online store at {dynamodb_table or online_db} holds no folded file yet")
    if champion is None:
        click.echo(f"warning: no champion model under {root}/{lake_prefix}/models yet; "
                   f"/v1/predict answers 503 until one is promoted", err=True)
    click.echo(f"clicklake API on http://{host}:{port} (docs at /docs; source {source}, "
               f"model {champion or 'none'}; token {'required' if token else 'not required'}; "
               f"{workers} worker{'s' if workers > 1 else ''})", err=True)
    if workers == 1:
        settle_gc()
        if not protocol.run_server(protocol.ServerConfig(
                app, host=host, port=port, log_level=log_level, access_log=access_log,
                max_head_bytes=max_header_bytes, request_timeout_s=request_timeout)):
            sys.exit(STARTUP_FAILURE)
        return
    try:
        error = run_workers(settings, workers, host, port, log_level, access_log,
                            startup_timeout, max_head_bytes=max_header_bytes,
                            request_timeout_s=request_timeout)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
    if error:
        raise click.ClickException(error)
