"""Prometheus metrics of the API.

One server process (`clicklake serve --workers 1`, tests): the metrics live in a registry of
their own, one per app, so tests and several apps in one process never share counters.

Several worker processes (`--workers N`): each worker writes its values to memory-mapped files
in the server's private `PROMETHEUS_MULTIPROC_DIR` (prometheus_client's multiprocess mode, chosen
when the library is imported, so the variable is set before the workers start), and `/metrics`,
whichever worker answers it, merges every worker's files: counters and histograms are summed
over the workers (over dead ones too, so they never go backwards when a worker is replaced),
gauges are merged as their `multiprocess_mode` says.
"""

from __future__ import annotations

import os
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Sub-millisecond to a second: the target is p99 <= 10 ms, so the buckets are dense below it.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5)


def multiprocess_dir() -> str | None:
    """The multiprocess directory when prometheus_client runs in multiprocess mode, else None.
    Raises when the variable is set but the library was imported before it was (its values
    would then stay in this process and /metrics would silently miss them)."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError(f"{MULTIPROC_ENV} was set after prometheus_client was imported: "
                           "set it before the worker process starts")
    return path


def ready_marker(directory: str, pid: int) -> str:
    """The file a worker creates in the multiprocess directory once it serves (not a `.db`:
    the exposition reads those only)."""
    return os.path.join(directory, f"ready_{pid}")


def keep_in_process() -> None:
    """Make this process's metrics plain in-memory values, whatever the environment says: for
    a server answering alone. prometheus_client picks its storage when first imported, so an
    inherited `PROMETHEUS_MULTIPROC_DIR` would otherwise put them in files there (mixed with
    whatever other processes wrote), or, the variable removed after the import, fail to create
    any (TypeError)."""
    os.environ.pop(MULTIPROC_ENV, None)
    from prometheus_client import values

    if getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MutexValue


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ApiMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, multiprocess: bool | None = None) -> None:
        """`multiprocess`: None = as the environment says (`PROMETHEUS_MULTIPROC_DIR`)."""
        self.multiprocess_dir = multiprocess_dir() if multiprocess in (None, True) else None
        if multiprocess and self.multiprocess_dir is None:
            raise RuntimeError(f"multiprocess metrics need {MULTIPROC_ENV}")
        self.multiprocess = self.multiprocess_dir is not None
        # In multiprocess mode the values live in the files; the registry only holds the
        # metric objects, and the exposition reads the files of every worker instead.
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("clicklake_api_requests", "HTTP requests by route and status.",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("clicklake_api_request_duration_seconds",
                                 "Server time per request until its response starts, by route.",
                                 ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.decisions = Counter("clicklake_api_decisions", "Serve/skip decisions.",
                                 ["decision"], registry=r)
        self.reasons = Counter("clicklake_api_skip_reasons", "Reasons given for skips.",
                               ["reason"], registry=r)
        # A gauge at 1 per model rather than an Info (which multiprocess mode does not support):
        # the same exposition. Across workers, the max over live ones: every model some worker
        # serves (two during a champion change, until each worker has reloaded).
        self.model = Gauge("clicklake_api_model_info", "The model being served.",
                           ["id", "promoted_at", "backend"], registry=r,
                           multiprocess_mode="livemax")
        self._model_labels: tuple[str, str, str] | None = None
        self.model_reloads = Counter("clicklake_api_model_reloads",
                                     "Times a new champion was loaded (by each worker).",
                                     registry=r)
        self.model_errors = Counter("clicklake_api_model_errors",
                                    "Predictions the remote model endpoint failed (503).",
                                    registry=r)
        # The stalest worker's watermark: a freshness alert must see a worker left behind.
        # Made when the first watermark is known (`set_features_as_of`): a gauge exists with 0
        # from its creation, and a worker still starting would pull the minimum down to 0.
        self.features_as_of: Gauge | None = None
        self.probability = Histogram("clicklake_api_click_probability",
                                     "Predicted click probabilities.", registry=r,
                                     buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0))
        # Per live worker (a `pid` label each): how the load spreads over the workers. Only with
        # several: one process has nothing to compare, and the total is `requests` above. Made
        # by `ready`, so a worker is listed once it serves (what a caller waiting for every
        # worker needs), not from the moment it starts loading its model.
        self.worker_requests: Gauge | None = None
        self._lock = threading.Lock()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        # Bounded label values: any other method a client makes up counts as "other".
        method = method if method in _METHODS else "other"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if self.worker_requests is not None:
            self.worker_requests.inc()

    def ready(self) -> None:
        """This process has finished starting (model loaded, warmed up) and serves: it says so
        to the supervisor (the marker), then lists itself in `worker_requests` (in this order,
        so a worker seen serving from outside is one the supervisor knows to have started)."""
        with self._lock:
            if self.multiprocess and self.worker_requests is None:
                with open(ready_marker(self.multiprocess_dir, os.getpid()), "w"):
                    pass
                self.worker_requests = Gauge(
                    "clicklake_api_worker_requests",
                    "Requests answered by each live worker process since it started.",
                    registry=self.registry, multiprocess_mode="liveall")

    def set_features_as_of(self, seconds: float) -> None:
        with self._lock:
            if self.features_as_of is None:
                self.features_as_of = Gauge(
                    "clicklake_api_features_as_of_seconds",
                    "Watermark of the feature source (Unix time).", registry=self.registry,
                    multiprocess_mode="livemin")
        self.features_as_of.set(seconds)

    def set_model(self, model_id: str, promoted_at: str, backend: str) -> None:
        labels = (model_id, promoted_at, backend)
        old, self._model_labels = self._model_labels, labels
        if old is not None and old != labels:
            if self.multiprocess:  # labels cannot be removed in multiprocess mode
                self.model.labels(*old).set(0)
            else:
                self.model.remove(*old)
        self.model.labels(*labels).set(1)

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)
        return generate_latest(merged)
