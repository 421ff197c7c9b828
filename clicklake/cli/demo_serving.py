"""The serving half of `clicklake demo`: fold the landing zone into the online store through
the `serving_lookup` asset, start `clicklake serve` on loopback, send a few real predictions
the way curl would, and stop the server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import click

from clicklake.cli.processes import stop_process

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def fold_online_store(root: str, instance, tags: dict) -> dict:
    import dagster as dg

    from clicklake.assets.serving import serving_lookup
    from clicklake.resources.lake import LakeResource
    from clicklake.resources.online_store import SqliteOnlineStore

    result = dg.materialize(
        [serving_lookup], instance=instance, tags=tags,
        resources={"lake": LakeResource(root=root),
                   "online_store": SqliteOnlineStore(path=online_db(root))},
        run_config={"ops": {"serving_lookup": {"config": {"rebuild": True}}},
                    "loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}


def online_db(root: str) -> str:
    return os.path.join(root, "online", "online.db")


def _without_serve_settings(env) -> dict[str, str]:
    """`env` without the variables `clicklake serve` reads its options from."""
    from clicklake.cli.serve import serve

    names = {p.envvar for p in serve.params if isinstance(p.envvar, str)}
    return {k: v for k, v in env.items() if k not in names}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


CANDIDATES = 20  # the hour's last users tried for one the API serves
START_TIMEOUT_S = 90  # for the server to answer /healthz with 200


def sample_requests(root: str, last_hour_ms: int, ts_ms: int) -> list[dict]:
    """Impressions at `ts_ms` of the last raw hour's last users (up to `CANDIDATES`, the
    latest first), as the API takes them: each user's with its own context and cost."""
    from clicklake.platform import raw
    from clicklake.platform.storage import Store
    from clicklake.platform.timeutil import iso

    rows = raw.read_raw(Store(root), "impressions", last_hour_ms).to_pylist()
    if not rows:
        raise click.ClickException(f"no impressions in {iso(last_hour_ms)} to send")
    # Rows with every context field when there are some (an import may map no ip or agent).
    full = [r for r in reversed(rows) if r["ip"] and r["user_agent"] and r["domain"]]
    out = []
    for row in (full or list(reversed(rows)))[:CANDIDATES]:
        body = {"user_id": row["user_id"], "campaign_id": row["campaign_id"], "ts": iso(ts_ms),
                "cost": row["cost"] or 0.002}
        body.update({k: row[k] for k in ("domain", "ip", "user_agent") if row[k]})
        out.append(body)
    return out


@contextlib.contextmanager
def _stops_on_signals():
    """SIGTERM and SIGHUP (a closed terminal, `timeout`, a cancelled job) end the demo through
    its `finally`, which stops the server: by default they ended it at once, and the server,
    in a session of its own, kept running and holding its port."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _show(url: str, title: str, body: dict) -> tuple[int, dict]:
    click.echo(f"\n# {title}\n$ curl -s -X POST {url}/v1/predict "
               f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'")
    status, answer = _call(f"{url}/v1/predict", body)
    keep = {k: answer.get(k) for k in ("probability", "decision", "reasons", "model",
                                       "expected_value", "latency_ms", "detail") if k in answer}
    click.echo(f"HTTP {status} {json.dumps(keep)}")
    return status, answer


def _predictions(url: str, root: str, last_hour_ms: int, ts_ms: int) -> None:
    """Three predictions: a real user the API serves (the first of the hour's last users it
    serves: a crawler's or a click farm's impression among them would be skipped), the same
    from a crawler, and the same priced at twice its expected value at the default click
    value (skipped as below cost)."""
    from clicklake.platform.decision import DecisionPolicy

    candidates = sample_requests(root, last_hour_ms, ts_ms)
    chosen, tried = candidates[0], 0
    for body in candidates:
        tried += 1
        status, answer = _call(f"{url}/v1/predict", {**body, "value_per_click": 2.0})
        if status == 200 and answer.get("decision") == "serve":
            chosen = body
            break
    else:
        click.echo(f"\n(none of the hour's last {tried} users is served at $2 a click: the "
                   "first is shown)")
    status, answer = _show(url, "a real user's next impression, for an advertiser paying $2 a "
                           f"click (the hour's latest user served, of {tried} tried)",
                           {**chosen, "value_per_click": 2.0})
    _show(url, "the same, from a crawler", {**chosen, "value_per_click": 2.0,
                                            "user_agent": GOOGLEBOT})
    vpc = DecisionPolicy().default_value_per_click
    probability = answer.get("probability") if status == 200 else None
    if probability:
        cost = float(f"{2 * probability * vpc:.6g}")
        _show(url, f"the same, at the default ${vpc:g} a click and a cost of twice its expected "
              "value", {**chosen, "cost": cost})
    else:
        _show(url, f"the same, at the default ${vpc:g} a click", chosen)


def serve_and_predict(root: str, last_hour_ms: int, ts_ms: int) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "clicklake", "serve", "--root", root, "--lake-prefix", "lake",
           "--source", "online", "--online-db", online_db(root), "--port", str(port)]
    click.echo(f"\n$ clicklake serve --root {root} --source online --port {port} &")
    # A session of its own: should it not stop in time, it is killed with its worker processes.
    # Without serve's own settings from the environment: a deployment's token made every demo
    # call a 401, its DynamoDB table took the place of the demo's store. Its log to a file: a
    # pipe nobody reads while it runs would fill and block it.
    with _stops_on_signals(), tempfile.TemporaryFile() as log:
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log,
                                  start_new_session=True,
                                  env=_without_serve_settings(os.environ))
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    status, health = _call(f"{url}/healthz", timeout=2)
                    if status == 200:
                        break
                except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    # stopped first: a server still running (up, but never healthy) would
                    # never end its log, and reading it to the end waited for good
                    stop_process(server, timeout=15)
                    log.seek(0)
                    err = log.read().decode(errors="replace")
                    raise click.ClickException(f"the API did not start:\n{err[-2000:]}")
                time.sleep(0.3)
            click.echo(f"$ curl -s {url}/healthz\n{json.dumps(health)}")
            _predictions(url, root, last_hour_ms, ts_ms)
        finally:
            stop_process(server, timeout=15)
            click.echo("\nAPI stopped.")
