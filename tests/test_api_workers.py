"""`clicklake serve --workers 2` on loopback: requests over fresh connections reach both worker
processes, every answer is the same API (token, validation, model version), /metrics summed over
the workers counts exactly the requests sent, a worker killed is replaced and its live gauges
dropped, and SIGTERM, SIGINT or the supervisor killed outright leave no process and no metrics
directory behind; a worker failing at startup stops the server."""

from __future__ import annotations

import json
import os
import shutil
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
from clicklake.serving.workers import METRICS_DIR_PREFIX, remove_stale_metrics_dirs

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
    family = families.get("clicklake_api_requests")  # absent until some request was counted
    return {s.labels["status"]: s.value for s in (family.samples if family else [])
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


def _spawn(lake: Store, workers: int, extra: tuple[str, ...] = (), env: dict | None = None
           ) -> tuple[subprocess.Popen, str]:
    """The server started (`env`: variables to set, or with None to remove)."""
    port = _free_port()
    env = {"PROMETHEUS_MULTIPROC_DIR": None, **(env or {})}
    env = {k: v for k, v in {**os.environ, "CLICKLAKE_API_TOKEN": TOKEN, **env}.items()
           if v is not None}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from clicklake.cli import main; main()", "serve", "--root",
         lake.root, "--port", str(port), "--workers", str(workers), *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _start(lake: Store, workers: int = 2, extra: tuple[str, ...] = (), env: dict | None = None):
    proc, url = _spawn(lake, workers, extra, env)
    deadline = time.monotonic() + 120
    while True:
        # Up when every worker serves: each lists itself in /metrics once its model is loaded
        # and warmed up (one process answers only then).
        try:
            families = _metrics(url)
            if workers == 1 or len(_worker_requests(families)) == workers:
                return proc, url
        except OSError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"the server exited:\n{proc.stderr.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            stop_process(proc, timeout=10)
            pytest.fail("the workers did not start within 120 s")
        time.sleep(0.2)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group: the server and all it started."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry))
    return out


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


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL", "SIGKILL while starting"])
def test_no_worker_outlives_the_server(lake, tmp_path, how):
    """SIGINT stops the workers like SIGTERM; a supervisor killed outright cannot, so each
    worker notices it is gone, removes the metrics directory and stops: whether it was serving
    or still loading its model (or not yet started: it finds the supervisor gone at once)."""
    env = {"TMPDIR": str(tmp_path)}  # where the server makes its metrics directory
    if how == "SIGKILL while starting":
        proc, url = _spawn(lake, 2, env=env)
    else:
        proc, url = _start(lake, env=env)
    try:  # a failed check must not leave the server running
        if how == "SIGKILL while starting":
            assert _wait(lambda: len(_children(proc.pid)) >= 2, 60)  # started, not serving
        else:
            status, body = _call(f"{url}/v1/predict", OK)
            assert status == 200, body
        [metrics_dir] = [p for p in tmp_path.iterdir() if p.name.startswith("clicklake-serve-")]
        os.kill(proc.pid, getattr(signal, how.split()[0]))
        code = proc.wait(timeout=30)
    finally:
        stop_process(proc, timeout=5)
    if how == "SIGINT":
        assert code == 0
    # every process the server started (its workers, their helpers) gone, and their files
    assert _wait(lambda: not _group(proc.pid), 40), _group(proc.pid)
    if how == "SIGKILL while starting":
        # A worker still being spawned (no code of ours running yet) dies with its pipe and
        # cannot remove the directory: the next server start sweeps it.
        _wait(lambda: not metrics_dir.exists(), 10)
        remove_stale_metrics_dirs(str(tmp_path))
    assert _wait(lambda: not metrics_dir.exists(), 10)
    assert list(tmp_path.iterdir()) == []


def test_a_start_sweeps_only_the_metrics_directories_of_dead_servers(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{METRICS_DIR_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-def"
    other = tmp_path / f"{METRICS_DIR_PREFIX}x-ghi"
    unrelated = tmp_path / f"elsewhere-{dead.pid}-abc"
    for d in (stale, live, other, unrelated):
        d.mkdir()
    (stale / "counter_1.db").write_bytes(b"x")
    assert remove_stale_metrics_dirs(str(tmp_path)) == [str(stale)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        d.name for d in (live, other, unrelated))


def _stops_with_exit_1(proc: subprocess.Popen, within_s: float) -> str:
    """Wait for a server that must stop on its own: exit code 1 within `within_s`, none of its
    processes left. Returns its stderr."""
    t0 = time.monotonic()
    try:
        code = proc.wait(timeout=within_s)
        err = proc.stderr.read().decode()
    finally:
        stop_process(proc, timeout=5)
    assert code == 1, err[-2000:]
    assert time.monotonic() - t0 < within_s
    assert _wait(lambda: not _group(proc.pid), 20), _group(proc.pid)
    return err


def test_a_worker_failing_at_startup_stops_the_server(lake, tmp_path):
    """Before it has served, a worker's failure would recur in its replacement: the server
    stops with its error, rather than restarting workers forever while clients wait."""
    no_aws = {"AWS_REGION": None, "AWS_DEFAULT_REGION": None, "AWS_PROFILE": None,
              "AWS_CONFIG_FILE": str(tmp_path / "none"),
              "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "TMPDIR": str(tmp_path)}
    # no region: build_app fails in each worker
    err = _stops_with_exit_1(_spawn(lake, 2, ("--model", "sagemaker"), env=no_aws)[0], 90)
    assert "no AWS region" in err and "before it was ready" in err
    assert err.count("Traceback") <= 2  # each worker once, none restarted
    assert list(tmp_path.iterdir()) == []  # the metrics directory removed


def test_a_worker_hanging_at_startup_stops_the_server_after_the_timeout(lake, tmp_path):
    """A worker whose model read never returns (here: the artifact is a FIFO nobody writes, as
    a stalled network filesystem would behave) is killed once --startup-timeout has passed,
    and the server stops with exit code 1 and says why, instead of waiting forever."""
    root = tmp_path / "lake"
    shutil.copytree(lake.root, root)
    store = Store(str(root))
    artifact = root / registry.artifact_key(registry.champion(store).model_id)
    artifact.unlink()
    os.mkfifo(artifact)
    err = _stops_with_exit_1(_spawn(store, 2, ("--startup-timeout", "4"),
                                    env={"TMPDIR": str(tmp_path)})[0], 60)
    assert "was not ready 4 s after its start" in err, err[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["lake"]  # the metrics directory removed


@pytest.mark.parametrize("workers", [1, 2])
def test_an_inherited_metrics_directory_is_left_alone(lake, tmp_path, workers):
    """PROMETHEUS_MULTIPROC_DIR set by the environment: one process keeps its metrics in
    memory, several use a private directory; neither writes into the inherited one."""
    inherited = tmp_path / "inherited"
    inherited.mkdir()
    proc, url = _start(lake, workers, env={"PROMETHEUS_MULTIPROC_DIR": str(inherited)})
    try:
        before = _predicts(_metrics(url)).get("200", 0)
        for i in range(5):
            assert _call(f"{url}/v1/predict", {**OK, "impression_id": f"imp-{i}"})[0] == 200
        families = _metrics(url)
        assert _predicts(families)["200"] - before == 5
        assert ("clicklake_api_worker_requests" in families) == (workers > 1)
        (fresh,) = families["clicklake_api_features_as_of_seconds"].samples
        assert fresh.value > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:  # uvicorn serving alone stops gracefully, then dies of the signal it got
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        finally:
            stop_process(proc, timeout=5)
    assert list(inherited.iterdir()) == []


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


@pytest.mark.parametrize("workers", [1, 2])
def test_the_servers_bounds_on_a_request_head_and_its_time_are_its_options(lake, workers):
    """`--max-header-bytes` and `--request-timeout` reach the protocol of the one process or of
    every worker (each a fresh interpreter, its config pickled)."""
    proc, url = _start(lake, workers, ("--max-header-bytes", "2048", "--request-timeout", "1"))
    port = int(url.rsplit(":", 1)[1])
    try:
        assert _call(f"{url}/healthz", token=None)[0] == 200
        for _ in range(2 * workers):  # fresh connections: each worker in turn, likely
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 4096
                             + b"\r\n\r\n")
                assert conn.recv(65536).startswith(b"HTTP/1.1 431 ")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # and nothing more
                start = time.monotonic()
                assert conn.recv(65536).startswith(b"HTTP/1.1 408 ")
                assert time.monotonic() - start < 5
    finally:
        stop_process(proc, timeout=10)
