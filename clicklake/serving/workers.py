"""`clicklake serve` processes: the app built from the server's settings, in one process or in
N uvicorn worker processes sharing the listening socket.

One process stalled (descheduled on a busy machine, a collection, a slow read) holds up every
request queued behind it; with several workers the others keep answering. Each worker is a
fresh interpreter (uvicorn spawns them), so the settings reach it as JSON in an environment
variable (readable by this user only, as `CLICKLAKE_API_TOKEN` is; no file holds the token), and
each worker does its own startup work: model load, warm-up, `gc.freeze`.

The metrics of every worker live in a private directory (prometheus_client's multiprocess mode,
see `metrics.py`), created fresh per server start and removed when the server stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

from clicklake.serving.metrics import MULTIPROC_ENV, ready_marker

SETTINGS_ENV = "CLICKLAKE_SERVE_SETTINGS"
FACTORY = "clicklake.serving.workers:worker_app"
METRICS_DIR_PREFIX = "clicklake-serve-metrics-"


@dataclass
class ServeSettings:
    """What a worker needs to build the app (all JSON-ready)."""

    root: str
    lake_prefix: str = "lake"
    region: str | None = None
    source: str = "lake"  # "lake" or "online"
    online_db: str | None = None
    dynamodb_table: str | None = None
    model_backend: str = "local"  # "local" or "sagemaker"
    endpoint_name: str = "clicklake-ctr"
    token: str | None = None
    max_body: int = 16 * 1024
    reload_every: float = 30.0
    value_per_click: float | None = None
    farm_ctr: float | None = None
    farm_min_impressions: int | None = None
    farm_burst: int | None = None
    supervisor_pid: int | None = None  # a worker stops when this process is gone
    metrics_dir: str | None = None  # ... and removes this (the server's private directory)


def open_source(s: ServeSettings):
    """The online feature source of the settings (None for the lake source). Raises
    `StaleLayout` for an online store of an older layout."""
    from clicklake.serving.sources import open_online_source

    if s.source != "online":
        return None
    return open_online_source(s.online_db, s.dynamodb_table, s.region)


def build_app(s: ServeSettings):
    """The FastAPI app of the settings, its model loaded and warmed up. Returns (app, slot)."""
    from clicklake.platform.decision import DecisionPolicy
    from clicklake.resources.lake import LakeResource
    from clicklake.serving import ModelSlot, ServingConfig, lake_app

    store = LakeResource(root=s.root, lake_prefix=s.lake_prefix, region=s.region).store()
    sagemaker = None
    if s.model_backend == "sagemaker":
        from clicklake.resources.endpoint import SageMakerEndpoint

        # role_arn is needed only to deploy; scoring just invokes the endpoint.
        sagemaker = SageMakerEndpoint(role_arn="", endpoint_name=s.endpoint_name,
                                      region=s.region)
    slot = ModelSlot(store, s.lake_prefix, sagemaker)
    defaults = DecisionPolicy()
    policy = DecisionPolicy(
        default_value_per_click=_or(s.value_per_click, defaults.default_value_per_click),
        farm_ctr_24h=_or(s.farm_ctr, defaults.farm_ctr_24h),
        farm_min_impressions_24h=_or(s.farm_min_impressions, defaults.farm_min_impressions_24h),
        farm_burst_impressions_1h=_or(s.farm_burst, defaults.farm_burst_impressions_1h))
    config = ServingConfig(token=s.token or None, max_body_bytes=s.max_body,
                           reload_every_s=s.reload_every, policy=policy)
    return lake_app(store, s.lake_prefix, config, source=open_source(s), model=slot), slot


def _or(value, default):
    return default if value is None else value


def settle_gc() -> None:
    """Keep full garbage collections out of the request tail. Everything alive once the app is
    built (modules, the model, the feature source: ~200 k objects) lives as long as the process,
    yet each full collection walked all of it: 120-180 ms with every request waiting (measured).
    Frozen, those objects are skipped by every later collection."""
    import gc

    gc.collect()
    gc.freeze()


def worker_app():
    """uvicorn's app factory in each worker process: the app of the server's settings."""
    settings = ServeSettings(**json.loads(os.environ[SETTINGS_ENV]))
    if settings.supervisor_pid:
        _stop_with(settings.supervisor_pid, settings.metrics_dir)
    app, _ = build_app(settings)
    settle_gc()
    return app


def _remove_metrics_dir(path: str | None) -> None:
    """Remove the server's metrics directory, only if it is the private one it created (the
    one this worker's metrics go to, named as `run_workers` names it)."""
    if (path and path == os.environ.get(MULTIPROC_ENV)
            and os.path.basename(path).startswith(METRICS_DIR_PREFIX)):
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_metrics_dirs(parent: str | None = None) -> list[str]:
    """Remove the metrics directories of servers that are gone. A supervisor killed outright
    while a worker was still being spawned (before any of our code ran in it) leaves its
    directory behind: the next start sweeps it. Only this user's directories named by
    `run_workers` whose supervisor pid no longer exists."""
    parent = parent or tempfile.gettempdir()
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            pid = entry.name[len(METRICS_DIR_PREFIX):].split("-", 1)[0]
            if not (entry.name.startswith(METRICS_DIR_PREFIX) and pid.isdigit()
                    and entry.is_dir(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_uid == os.getuid()):
                continue
            try:
                os.kill(int(pid), 0)
                continue  # alive (or another user's process of that pid): not ours to judge
            except PermissionError:
                continue
            except ProcessLookupError:
                pass
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def _stop_with(supervisor_pid: int, metrics_dir: str | None, every_s: float = 1.0,
               grace_s: float = 20.0) -> None:
    """Stop this worker when the supervisor is gone (killed outright, it can neither stop its
    workers, which would keep the port, nor remove the metrics directory): a graceful SIGTERM
    first, then exit."""

    def watch() -> None:
        while os.getppid() == supervisor_pid:
            time.sleep(every_s)
        _remove_metrics_dir(metrics_dir)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    if os.getppid() != supervisor_pid:  # already gone while this worker started
        _remove_metrics_dir(metrics_dir)
        os._exit(1)
    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def bind_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """`n` listening sockets on one address, one per worker (SO_REUSEPORT): the kernel spreads
    new connections evenly over them. One socket shared by all workers was measured to give one
    worker ~90 % of the requests sent over 32 keep-alive connections (whichever woke first
    accepted the whole burst of connections), leaving the other nearly idle. Each socket stays
    open in the supervisor, so the connections queued on a worker's socket while it is replaced
    wait for its successor. Elsewhere than Linux (SO_REUSEPORT does not balance there), one
    socket shared by all.

    Raises OSError when the address is in use: a probe without SO_REUSEPORT is bound first,
    or a second server started by the same user would silently join this one's sockets."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    balanced = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
    if port and balanced:
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    sockets: list[socket.socket] = []
    try:
        for _ in range(n if balanced else 1):
            sock = socket.socket(family)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if balanced:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the others join the port the first got
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets if balanced else sockets * n


class Supervisor:
    """Starts one uvicorn worker process per socket and keeps it running until SIGTERM, SIGINT
    or SIGHUP; then stops them all (SIGTERM, SIGKILL after `stop_timeout_s`).

    A worker is ready once it has built its app, loaded the model, warmed up and run the app's
    startup: it then leaves a marker file in the metrics directory. One that dies before it is
    ready stops the server, with `error` set: the next would fail alike, and restarting it
    forever burnt a core while clients waited on its socket. One that dies, or stops answering
    the health ping, after it was ready is replaced on its socket after a backoff (doubling
    with each death in the last `window_s`), and more than `max_restarts` deaths within
    `window_s` stop the server too. One not ready `startup_timeout_s` after its start (a model
    read hanging on a stalled filesystem, say) is killed and stops the server: clients would
    otherwise wait on its socket with no error anywhere. A departed worker's live gauges are dropped, as
    prometheus_client requires (`mark_process_dead`).

    uvicorn's own supervisor (`workers=N`) shares one socket between the workers, which
    spread connections badly (see `bind_sockets`); its worker process class is reused."""

    def __init__(self, config, sockets: list[socket.socket], metrics_dir: str,
                 stop_timeout_s: float = 10.0, max_restarts: int = 5, window_s: float = 60.0,
                 backoff_s: float = 0.5, max_backoff_s: float = 10.0,
                 startup_timeout_s: float = 300.0) -> None:
        self.config, self.sockets, self.metrics_dir = config, sockets, metrics_dir
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.max_restarts, self.window_s = max_restarts, window_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.processes: list = []  # per socket: its worker, or None while waiting to restart
        self.ready: list[bool] = []
        self.started_at: list[float] = []
        self.restart_at: list[float] = []
        self.deaths: list[float] = []  # when workers that had been ready died
        self.error: str | None = None  # why the server stopped on its own
        self._stop = False

    def _start(self, i: int):
        from uvicorn.supervisors.multiprocess import Process

        process = Process(self.config, [self.sockets[i]])
        process.start()
        self.processes[i], self.ready[i] = process, False
        self.started_at[i] = time.monotonic()
        return process

    def _retire(self, process) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(process.pid, self.metrics_dir)
        with contextlib.suppress(OSError):
            os.remove(ready_marker(self.metrics_dir, process.pid))

    def _stop_for(self, error: str) -> None:
        self.error, self._stop = error, True  # said by the caller once all have stopped

    def _check(self, i: int, process) -> None:
        if not self.ready[i]:
            # Read from the marker the worker leaves, not from the health ping: a worker seen
            # serving from outside (it lists itself in /metrics after making the marker) and
            # killed at once must count as one that had started. Alive asked first: a marker
            # made just after would be missed.
            alive = process.process.is_alive()
            self.ready[i] = os.path.exists(ready_marker(self.metrics_dir, process.pid))
        if not self.ready[i]:
            # Starting (imports, model load): no answer is no hang yet, only death or the
            # startup timeout counts.
            late = time.monotonic() - self.started_at[i] > self.startup_timeout_s
            if alive and not late:
                return
            if alive:
                process.kill()
            process.join()
            self._retire(process)
            self._stop_for(
                f"worker {i} (pid {process.pid}) was not ready {self.startup_timeout_s:g} s "
                "after its start (model load, feature source, warm-up): killed" if alive else
                f"worker {i} (pid {process.pid}) exited with code {process.exitcode} before "
                "it was ready (its error is above)")
            return
        if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
            return
        process.kill()  # dead, or hung: not answering the ping
        process.join()
        self._retire(process)
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if t > now - self.window_s] + [now]
        if len(self.deaths) > self.max_restarts:
            self._stop_for(f"workers died {len(self.deaths)} times within {self.window_s:g} s "
                           f"(last: worker {i}, pid {process.pid}, exit code {process.exitcode})")
            return
        delay = min(self.backoff_s * 2 ** (len(self.deaths) - 1), self.max_backoff_s)
        print(f"clicklake serve: worker {i} (pid {process.pid}) died (exit code "
              f"{process.exitcode}); restarting it in {delay:g} s", file=sys.stderr, flush=True)
        self.processes[i], self.restart_at[i] = None, now + delay

    def run(self) -> None:
        def stop(signum, frame) -> None:
            self._stop = True

        previous = {sig: signal.signal(sig, stop)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        n = len(self.sockets)
        self.processes, self.ready = [None] * n, [False] * n
        self.started_at, self.restart_at = [0.0] * n, [0.0] * n
        try:
            for i in range(n):
                self._start(i)
            while not self._stop:
                time.sleep(0.5)
                for i, process in enumerate(self.processes):
                    if self._stop:
                        break
                    if process is not None:
                        self._check(i, process)
                    elif time.monotonic() >= self.restart_at[i]:
                        self._start(i)
        finally:
            running = [p for p in self.processes if p is not None]
            for process in running:
                if process.exitcode is None:
                    process.terminate()
            deadline = time.monotonic() + self.stop_timeout_s
            for process in running:
                process.process.join(max(deadline - time.monotonic(), 0))
                if process.exitcode is None:
                    process.kill()
                    process.join()
                self._retire(process)
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run_workers(settings: ServeSettings, workers: int, host: str, port: int, log_level: str,
                access_log: bool, startup_timeout_s: float = 300.0, *, max_head_bytes: int,
                request_timeout_s: float) -> str | None:
    """Serve with `workers` uvicorn worker processes until SIGTERM/SIGINT. Returns why the
    server stopped on its own (a worker failed to start or was not ready within
    `startup_timeout_s`, workers kept dying; their errors are on stderr), None when asked to
    stop. Raises OSError when the address cannot be bound. Each worker serves with
    `protocol.BoundedHttpTools` (`max_head_bytes`, `request_timeout_s`)."""
    from clicklake.serving.protocol import ServerConfig

    sockets = bind_sockets(host, port, workers)
    remove_stale_metrics_dirs()
    # private (mode 0700), named with this supervisor's pid so a later start can tell it is stale
    metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
    saved = {k: os.environ.get(k) for k in (SETTINGS_ENV, MULTIPROC_ENV)}
    # Inherited by the workers, which are spawned (fresh interpreters): prometheus_client reads
    # its variable when a worker first imports it.
    os.environ[SETTINGS_ENV] = json.dumps(
        asdict(settings) | {"supervisor_pid": os.getpid(), "metrics_dir": metrics_dir})
    os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        config = ServerConfig(FACTORY, factory=True, host=host, port=port, workers=workers,
                              log_level=log_level, access_log=access_log,
                              max_head_bytes=max_head_bytes, request_timeout_s=request_timeout_s)
        supervisor = Supervisor(config, sockets, metrics_dir,
                                startup_timeout_s=startup_timeout_s)
        supervisor.run()
        return supervisor.error
    finally:
        for sock in sockets:
            sock.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        with contextlib.suppress(OSError):
            shutil.rmtree(metrics_dir)
