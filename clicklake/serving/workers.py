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

from clicklake.serving.metrics import MULTIPROC_ENV

SETTINGS_ENV = "CLICKLAKE_SERVE_SETTINGS"
FACTORY = "clicklake.serving.workers:worker_app"


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
        _stop_with(settings.supervisor_pid)
    app, _ = build_app(settings)
    settle_gc()
    return app


def _stop_with(supervisor_pid: int, every_s: float = 1.0, grace_s: float = 20.0) -> None:
    """Stop this worker when the supervisor is gone (killed outright, it can neither stop its
    workers, which would keep the port, nor remove the metrics directory): a graceful SIGTERM
    first, then exit."""

    def watch() -> None:
        while os.getppid() == supervisor_pid:
            time.sleep(every_s)
        shutil.rmtree(os.environ.get(MULTIPROC_ENV) or "", ignore_errors=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    if os.getppid() != supervisor_pid:  # already gone while this worker started
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
    or SIGHUP; then stops them all (SIGTERM, SIGKILL after `stop_timeout_s`). A worker that
    dies or stops answering the health ping is replaced on its socket; one that failed before
    serving stops the server instead (the next would fail alike). A departed worker's live
    gauges are dropped, as prometheus_client requires (`mark_process_dead`).

    uvicorn's own supervisor (`workers=N`) shares one socket between the workers, which
    spread connections badly (see `bind_sockets`); its worker process class is reused."""

    def __init__(self, config, sockets: list[socket.socket], metrics_dir: str,
                 stop_timeout_s: float = 10.0) -> None:
        self.config, self.sockets, self.metrics_dir = config, sockets, metrics_dir
        self.stop_timeout_s = stop_timeout_s
        self.processes: list = []
        self.failed_at_startup = False
        self._stop = False

    def _start(self, i: int):
        from uvicorn.supervisors.multiprocess import Process

        process = Process(self.config, [self.sockets[i]])
        process.start()
        return process

    def _retire(self, process) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(process.pid, self.metrics_dir)

    def run(self) -> None:
        from uvicorn.config import STARTUP_FAILURE

        def stop(signum, frame) -> None:
            self._stop = True

        previous = {sig: signal.signal(sig, stop)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            self.processes = [self._start(i) for i in range(len(self.sockets))]
            while not self._stop:
                time.sleep(0.5)
                for i, process in enumerate(self.processes):
                    if self._stop or process.is_alive(
                            timeout=self.config.timeout_worker_healthcheck):
                        continue
                    process.kill()  # dead, or hung: not answering the ping
                    process.join()
                    self._retire(process)
                    if process.exitcode == STARTUP_FAILURE:
                        self.failed_at_startup = self._stop = True
                        break
                    self.processes[i] = self._start(i)
        finally:
            for process in self.processes:
                if process.exitcode is None:
                    process.terminate()
            deadline = time.monotonic() + self.stop_timeout_s
            for process in self.processes:
                process.process.join(max(deadline - time.monotonic(), 0))
                if process.exitcode is None:
                    process.kill()
                    process.join()
                self._retire(process)
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run_workers(settings: ServeSettings, workers: int, host: str, port: int, log_level: str,
                access_log: bool) -> bool:
    """Serve with `workers` uvicorn worker processes until SIGTERM/SIGINT. Returns False when
    a worker failed before serving (its error is on stderr). Raises OSError when the address
    cannot be bound."""
    from uvicorn import Config

    sockets = bind_sockets(host, port, workers)
    metrics_dir = tempfile.mkdtemp(prefix="clicklake-serve-metrics-")  # private: mode 0700
    saved = {k: os.environ.get(k) for k in (SETTINGS_ENV, MULTIPROC_ENV)}
    # Inherited by the workers, which are spawned (fresh interpreters): prometheus_client reads
    # its variable when a worker first imports it.
    os.environ[SETTINGS_ENV] = json.dumps(asdict(settings) | {"supervisor_pid": os.getpid()})
    os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        config = Config(FACTORY, factory=True, host=host, port=port, workers=workers,
                        log_level=log_level, access_log=access_log)
        supervisor = Supervisor(config, sockets, metrics_dir)
        supervisor.run()
        return not supervisor.failed_at_startup
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
