"""The API server's HTTP protocol: uvicorn's httptools protocol with two bounds of its own.

uvicorn's httptools parser bounds neither a request's head (request line and headers: a header
without end grew until the worker had read it all; 256 MiB of it slowed `/healthz` on another
connection to 29 s) nor the time a client takes to send its request (a byte now and then held
the connection, and uvicorn's keep-alive timeout is reset by each byte). Here:

- a head longer than `max_head_bytes` is answered 431 and the connection closed (counted as it
  arrives while it is incomplete, and as parsed once complete: the request line and headers);
  what follows the head and is no body (a chunked body's framing and trailers) is bounded too;
- a request not received whole `request_timeout_s` after its first byte (or after the
  connection opened) is answered 408 while its head is still coming, or has its connection
  closed once the app is reading its body (the app then sees the client gone: counted as 499).

The bounds travel on the server's `ServerConfig` (pickled to worker processes with it).
"""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

_TOO_LARGE = b"Request header fields too large."


async def _head_too_large(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 431, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(_TOO_LARGE)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": _TOO_LARGE})


class ServerConfig(uvicorn.Config):
    """uvicorn's `Config` serving with `BoundedHttpTools` and its two bounds (their defaults
    are `clicklake serve`'s)."""

    def __init__(self, app, *, max_head_bytes: int, request_timeout_s: float, **kwargs):
        super().__init__(app, http=BoundedHttpTools, **kwargs)
        self.max_head_bytes = max_head_bytes
        self.request_timeout_s = request_timeout_s


def run_server(config: ServerConfig) -> bool:
    """Serve in this process until stopped (`uvicorn.run`'s steps for one worker, with the
    server's own config): False when the server never started (uvicorn itself exits with its
    startup failure code when the address is taken)."""
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return server.started


class BoundedHttpTools(HttpToolsProtocol):
    def __init__(self, config: ServerConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.max_head_bytes = config.max_head_bytes
        self.request_timeout_s = config.request_timeout_s
        # From the last request's end to the next one's headers: the head, whose bytes so far
        # are `_request_bytes`, the bytes received since the last request's end ...
        self._in_head = True
        self._request_bytes = 0
        self._body_bytes = 0  # ... of which the app was given these as body
        # When the request under way began, by the loop (its first byte, or the connection's
        # opening: a connection that sends nothing, or bytes that start no request, is timed
        # too); None between requests (uvicorn's keep-alive timeout closes idle connections).
        self._started: float | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._started = self.loop.time()
        _Sweeper.of(self.server_state, self.loop, self.request_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._started is None:
            self._started = self.loop.time()
        # counted whole: a read ending one part (the head, a request) may start the next
        self._request_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._in_head:
            if self._request_bytes > self.max_head_bytes:
                self._refuse(431, _TOO_LARGE.decode())
        elif self._request_bytes - self._body_bytes > self.max_head_bytes + 8 * self._body_bytes:
            # What is neither head nor body (a chunked body's framing, its trailers, which the
            # parser adds to the headers) grows without bound: allowed 8 bytes a body byte
            # (1-byte chunks take 6), and the head's bound.
            self.logger.warning("%s: %s", self.client, "Request framing or trailers too large.")
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_headers_complete(self) -> None:
        self._in_head = False
        # A head that came whole in one read was not counted above: its parsed size is.
        size = len(self.url) + 16 + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size <= self.max_head_bytes:
            super().on_headers_complete()
            return
        self.logger.warning("%s: %s", self.client, _TOO_LARGE.decode())
        # answered as uvicorn answers over its concurrency limit: the request's app replaced
        app, self.app = self.app, _head_too_large
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._started = None
        self._in_head = True  # the next request's head, if any
        self._request_bytes = self._body_bytes = 0

    def _timed_out(self) -> None:
        self._started = None
        if self.transport.is_closing():
            return
        if self._in_head:
            self._refuse(408, "Request not received in time.")
        else:  # the app is reading the body: it sees the client gone
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        self._started = None
        self.logger.warning("%s: %s", self.client, message)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined request's answer is still being written
            return
        body = message.encode("ascii")
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n", b"\r\n", body])
        self.transport.write(b"".join(content))
        self.transport.close()


class _Sweeper:
    """Times out the requests of a server's connections, every quarter of the timeout (at most
    every second): one timer for the server, none per request (a timer per request, created
    and cancelled, raised the predict p99 at 500 requests/s in each of five rounds, by 0.2-1.1
    ms). A request is cut between its timeout and a sweep later."""

    def __init__(self, state, loop: asyncio.AbstractEventLoop, timeout_s: float):
        self.state, self.loop = state, loop
        self.every = min(1.0, timeout_s / 4)
        loop.call_later(self.every, self.sweep)

    @classmethod
    def of(cls, state, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        """Started once per server (its state) and loop."""
        if getattr(state, "_clicklake_sweeper", None) is None:
            state._clicklake_sweeper = cls(state, loop, timeout_s)

    def sweep(self) -> None:
        try:
            now = self.loop.time()
            for conn in list(self.state.connections):
                started = getattr(conn, "_started", None)
                # (not while a request waits in the pipeline: uvicorn stops reading until the
                # answer before it is written, and that time is the server's, not the client's)
                if started is not None and now - started >= conn.request_timeout_s \
                        and not conn.pipeline:
                    try:
                        conn._timed_out()
                    except Exception:  # one connection's failure stops no other's timeouts
                        conn.logger.exception("timing out %s", conn.client)
        finally:
            self.loop.call_later(self.every, self.sweep)
