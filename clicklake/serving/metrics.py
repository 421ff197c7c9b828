"""Prometheus metrics of the API, in a registry of its own (one per app, so tests and several
apps in one process never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Sub-millisecond to a second: the target is p99 <= 10 ms, so the buckets are dense below it.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5)


class ApiMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("clicklake_api_requests", "HTTP requests by route and status.",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("clicklake_api_request_duration_seconds",
                                 "Server time per request, by route.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.decisions = Counter("clicklake_api_decisions", "Serve/skip decisions.",
                                 ["decision"], registry=r)
        self.reasons = Counter("clicklake_api_skip_reasons", "Reasons given for skips.",
                               ["reason"], registry=r)
        self.model = Info("clicklake_api_model", "The model being served.", registry=r)
        self.model_reloads = Counter("clicklake_api_model_reloads",
                                     "Times a new champion was loaded.", registry=r)
        self.features_as_of = Gauge("clicklake_api_features_as_of_seconds",
                                    "Watermark of the feature source (Unix time).", registry=r)
        self.probability = Histogram("clicklake_api_click_probability",
                                     "Predicted click probabilities.", registry=r,
                                     buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
