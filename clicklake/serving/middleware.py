"""Pure ASGI middleware (cheaper per request than Starlette's BaseHTTPMiddleware): a request body
cap enforced before anything parses the body, and per-route request metrics."""

from __future__ import annotations

import time

import orjson
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clicklake.serving.metrics import ApiMetrics


async def _send_error(send: Send, status: int, detail: str, code: str) -> None:
    body = orjson.dumps({"detail": detail, "code": code})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


CLIENT_GONE = "clicklake.client_gone"  # scope key: the client left before it was answered
CLIENT_CLOSED = 499  # the status counted for it (nginx's "client closed request"); never sent


def client_gone(scope: Scope) -> None:
    """Mark the request as abandoned by its client: `RequestMetrics` counts it as 499, not as
    a server error."""
    scope[CLIENT_GONE] = True


class BodyLimit:
    """413 for a body over `max_bytes`: at once from Content-Length, else while it streams in.
    The body is read here in full (it is small by construction) and replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body larger than {self.max_bytes} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or len(value) > 18
                                              or int(value) > self.max_bytes):
                return await _send_error(send, 413, message, "body_too_large")
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                client_gone(scope)
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _send_error(send, 413, message, "body_too_large")
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class RequestMetrics:
    """Counts every response by route template (not raw path: bounded label values) and status,
    and times it to the start of the response. Outermost, so 413s and 401s are counted too.

    A response is counted before it is sent: a client that has its answer and then reads
    /metrics (from any worker) sees it counted. Counted after the body, it could be missed by
    that read (seen: a test's predict count one short under load)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        counted = False

        def count(status: int) -> None:
            nonlocal counted
            counted = True
            self.metrics.observe_request(scope["method"], _route_of(scope), status,
                                         time.perf_counter() - start)

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start" and not counted:
                count(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if not counted:  # failed before answering, or the client left first
                count(CLIENT_CLOSED if scope.get(CLIENT_GONE) else 500)


def _route_of(scope: Scope) -> str:
    """The matched route's template; for a request answered before routing (a 413), the route
    it would have reached; "unmatched" for paths no route knows (bounded label values)."""
    route = scope.get("route")
    if route is None:
        router = getattr(scope.get("app"), "router", None)
        for candidate in getattr(router, "routes", ()):
            if candidate.matches(scope)[0] != Match.NONE:
                route = candidate
                break
    return getattr(route, "path", None) or "unmatched"
