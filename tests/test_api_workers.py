"""`clicklake serve --workers 2` on loopback: requests over fresh connections reach both worker
processes, every answer is the same API (token, validation, model version), /metrics summed over
the workers counts exactly the requests sent, a worker killed is replaced and its live gauges
dropped, and SIGTERM, SIGINT or the supervisor killed outright leave no process and no metrics
directory behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from test_api import built_lake

from clicklake.cli.processes import stop_process
from clicklake.platform.storage import Store
from clicklake.platform.training import registry

TOKEN = "workers-token-0123456789"
OK = {"user_id": "u0000300", "campaign_id": "cmp-0016"}


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Store:
    return Store(built_lake(tmp_path_factory))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, body: dict | bytes | None = None, token: str | None = TOKEN
          ) -> tuple[int, dict | str]:
    """One request on a fresh connection (so the kernel picks a worker anew each time)."""
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def _metrics(url: str) -> dict:
    status, text = _call(f"{url}/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(text)}


def _worker_requests(families: dict) -> dict[int, float]:
    family = families.get("clicklake_api_worker_requests")
    return {int(s.labels["pid"]): s.value for s in family.samples} if family else {}


def _predicts(families: dict) -> dict[str, float]:
    return {s.labels["status"]: s.value for s in families["clicklake_api_requests"].samples
            if s.name.endswith("_total") and s.labels["route"] == "/v1/predict"}


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
    except OSError:
        return True


def _metrics_dir(pid: int) -> str:
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    return env[b"PROMETHEUS_MULTIPROC_DIR"].decode()


def _start(lake: Store, workers: int = 2, extra: tuple[str, ...] = ()):
    port = _free_port()
    env = {**os.environ, "CLICKLAKE_API_TOKEN": TOKEN}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from clicklake.cli import main; main()", "serve", "--root",
         lake.root, "--port", str(port), "--workers", str(workers), *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:  # up when every worker has built its app (each lists itself in /metrics)
        try:
            if len(_worker_requests(_metrics(url))) == workers:
                return proc, url
        except OSError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"the server exited:\n{proc.stderr.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            stop_process(proc, timeout=10)
            pytest.fail("the workers did not start within 120 s")
        time.sleep(0.2)


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_two_workers_share_requests_and_metrics_sum_exactly(lake):
    champion = registry.champion(lake).model_id
    proc, url = _start(lake)
    try:
        before = _metrics(url)
        workers = set(_worker_requests(before))
        assert len(workers) == 2 and all(_ppid(w) == proc.pid for w in workers)
        metrics_dir = _metrics_dir(next(iter(workers)))
        assert os.path.isdir(metrics_dir) and os.stat(metrics_dir).st_mode & 0o077 == 0

        n = 120
        for i in range(n):
            status, out = _call(f"{url}/v1/predict", {**OK, "impression_id": f"imp-{i}"})
            assert status == 200, out
            assert out["model"]["id"] == champion and out["impression_id"] == f"imp-{i}"
        # The same API in every worker: token, validation, body cap (fresh connections each).
        for _ in range(6):
            assert _call(f"{url}/v1/predict", OK, token=None)[0] == 401
            assert _call(f"{url}/v1/predict", OK, token="wrong")[0] == 401
            status, out = _call(f"{url}/v1/predict", {**OK, "cost": -1})
            assert status == 422 and out["code"] == "invalid_request"
            status, out = _call(f"{url}/v1/predict", b"x" * 20_000)
            assert status == 413 and out["code"] == "body_too_large"
        assert _call(f"{url}/healthz", token=None)[1]["model"]["id"] == champion

        after = _metrics(url)
        spread = _worker_requests(after)
        assert set(spread) == workers
        done = {w: spread[w] - _worker_requests(before)[w] for w in workers}
        # every request since `before`: the predictions, 24 refusals, /healthz, and the
        # /metrics call that read `before` (counted once it had answered)
        assert sum(done.values()) == n + 24 + 2
        assert all(v > 0 for v in done.values()), done  # both workers answered
        got = {k: v - _predicts(before).get(k, 0) for k, v in _predicts(after).items()}
        assert got == {"200": n, "401": 12, "422": 6, "413": 6}
        decisions = sum(s.value for s in after["clicklake_api_decisions"].samples
                        if s.name.endswith("_total"))
        assert decisions == n  # a decision per prediction, summed over the workers
        count = [s.value for s in after["clicklake_api_request_duration_seconds"].samples
                 if s.name.endswith("_count") and s.labels["route"] == "/v1/predict"]
        assert count == [n + 24]
        (model,) = [s for s in after["clicklake_api_model_info"].samples if s.value == 1]
        assert model.labels["id"] == champion and "pid" not in model.labels
        (fresh,) = after["clicklake_api_features_as_of_seconds"].samples
        assert fresh.value > 0 and "pid" not in fresh.labels

        # A worker killed outright is replaced; its live gauge goes, the counters stay.
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        assert _wait(lambda: len(set(_worker_requests(_metrics(url))) - workers) == 1, 60)
        replaced = _metrics(url)
        assert victim not in _worker_requests(replaced)
        assert _predicts(replaced)["200"] == _predicts(after)["200"]
        assert _call(f"{url}/v1/predict", OK)[0] == 200
        workers = set(_worker_requests(replaced))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0
        finally:
            stop_process(proc, timeout=5)
    assert all(_wait(lambda w=w: _gone(w), 10) for w in workers)
    assert not os.path.exists(metrics_dir)  # removed with the server


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_no_worker_outlives_the_server(lake, how):
    """SIGINT stops the workers like SIGTERM; a supervisor killed outright cannot, so each
    worker notices it is gone, removes the metrics directory and stops."""
    proc, url = _start(lake)
    workers = set(_worker_requests(_metrics(url)))
    metrics_dir = _metrics_dir(next(iter(workers)))
    assert _call(f"{url}/v1/predict", OK)[0] == 200
    os.kill(proc.pid, getattr(signal, how))
    try:
        code = proc.wait(timeout=30)
    finally:
        stop_process(proc, timeout=5)
    assert code == (0 if how == "SIGINT" else -signal.SIGKILL)
    assert all(_wait(lambda w=w: _gone(w), 30) for w in workers), workers
    assert _wait(lambda: not os.path.exists(metrics_dir), 10)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_online_store_of_an_older_layout_is_refused_with_its_message(tmp_path, workers):
    from clicklake.cli.serve import serve
    from tests.landing_factory import old_layout_online_db

    db = str(tmp_path / "online.db")
    old_layout_online_db(db)
    result = CliRunner().invoke(serve, ["--root", str(tmp_path / "lake"), "--source", "online",
                                        "--online-db", db, "--workers", workers])
    assert result.exit_code == 1
    assert "older online state layout" in result.output


def test_an_address_in_use_is_refused(lake):
    """Even by a listener that would let it share the port: the workers' sockets share theirs
    (SO_REUSEPORT), and a second server started by the same user must not silently take half
    of the first one's connections."""
    from clicklake.cli.serve import serve

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(serve, ["--root", lake.root, "--port", str(port),
                                            "--workers", "2"])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
