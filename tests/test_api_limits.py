"""The API server's own bounds on what a client sends (`serving.protocol`): a request head over
`max_head_bytes` is refused 431, a request not received within `request_timeout_s` of its first
byte gets 408 (head) or its connection closed (body), and neither bound touches a request that
keeps within it, on one connection or several."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn

from clicklake.serving.protocol import ServerConfig

MAX_HEAD = 4096
TIMEOUT_S = 1.0


class _App:
    """Answers 200 with the length of the body it read; `slow` requests sleep after reading it;
    records whether each request saw its client gone."""

    def __init__(self):
        self.disconnected = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body, gone = b"", False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
                break
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.disconnected.append(gone)
        if gone:
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(TIMEOUT_S * 1.5)
        answer = str(len(body)).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def server():
    app = _App()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(ServerConfig(app, host="127.0.0.1", port=port, log_level="critical",
                                      max_head_bytes=MAX_HEAD, request_timeout_s=TIMEOUT_S))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield app, port
    srv.should_exit = True
    thread.join(10)


def _connect(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    _unread.clear()  # (ids of closed connections may come again)
    conn.settimeout(10)
    return conn


def _request(path: str = "/", header_bytes: int = 0, body: bytes = b"") -> bytes:
    filler = f"X-Filler: {'a' * header_bytes}\r\n" if header_bytes else ""
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\n{filler}Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body


_unread: dict[int, bytes] = {}  # by connection: what a read brought past the response asked for


def _response(conn: socket.socket) -> tuple[int, bytes, bool]:
    """(status, body, whether the server closed the connection after it) of one response."""
    data = _unread.pop(id(conn), b"")
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers["content-length"])
    while len(rest) < length:
        rest += conn.recv(65536)
    _unread[id(conn)] = rest[length:]
    return int(lines[0].split()[1]), rest[:length], headers.get("connection") == "close"


def _closed(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


def test_requests_within_the_bounds_are_served_on_one_connection(server):
    """Each request's head is counted on its own: three heads of 3 KiB on one connection (9 KiB
    together, over the 4 KiB bound) are each served."""
    _, port = server
    with _connect(port) as conn:
        for n in range(3):
            conn.sendall(_request(header_bytes=3000, body=b"x" * n))
            assert _response(conn) == (200, str(n).encode(), False)


def test_a_head_over_the_bound_is_refused_431_and_its_connection_closed(server):
    _, port = server
    with _connect(port) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nX-Filler: ")
        for _ in range(10):  # a header without end, 1 KiB at a time
            try:
                conn.sendall(b"a" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.01)
        status, body, close = _response(conn)
        assert (status, close) == (431, True) and b"too large" in body
        assert _closed(conn)
    with _connect(port) as conn:  # the server goes on serving
        conn.sendall(_request(header_bytes=MAX_HEAD // 2))
        assert _response(conn)[0] == 200


@pytest.mark.parametrize("body", [b"", b"a body the app never reads"])
def test_a_head_over_the_bound_arriving_whole_is_refused_431(server, body):
    """A head read in one piece is complete before it is counted: its parsed size is. The app
    never sees the request, and what followed the head is not taken for another request."""
    app, port = server
    seen = len(app.disconnected)
    with _connect(port) as conn:
        conn.sendall(_request(header_bytes=MAX_HEAD, body=body))
        status, answer, close = _response(conn)
        assert (status, close) == (431, True) and b"too large" in answer
        assert _closed(conn)
    assert len(app.disconnected) == seen


def test_a_head_trickling_in_gets_408_at_the_timeout(server):
    """A byte every 0.2 s (each resetting uvicorn's keep-alive timer) is answered 408 once the
    request's first byte is `request_timeout_s` old."""
    _, port = server
    with _connect(port) as conn:
        start = time.monotonic()
        for byte in b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 100:
            try:
                conn.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            conn.settimeout(0.2)
            try:
                if conn.recv(1, socket.MSG_PEEK):
                    break
            except TimeoutError:
                continue
        conn.settimeout(10)
        status, body, close = _response(conn)
        assert (status, close) == (408, True) and b"in time" in body
        assert TIMEOUT_S <= time.monotonic() - start < TIMEOUT_S + 2


def test_a_body_trickling_in_has_its_connection_closed_and_the_app_sees_it_gone(server):
    app, port = server
    with _connect(port) as conn:
        start = time.monotonic()  # before the request's first byte, as the server's clock
        conn.sendall(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        assert _closed(conn)
        assert TIMEOUT_S <= time.monotonic() - start < TIMEOUT_S + 2
    deadline = time.monotonic() + 5
    while not app.disconnected or not app.disconnected[-1]:
        assert time.monotonic() < deadline, "the app did not see its client gone"
        time.sleep(0.02)


def test_a_slow_answer_is_not_cut_by_the_request_timeout(server):
    """The timeout bounds the client's sending, not the app's answer: once the request is in,
    an answer taking longer than the timeout is still sent, and the connection kept."""
    _, port = server
    with _connect(port) as conn:
        request = _request("/slow", body=b"abc")
        conn.sendall(request[:-3])  # in two reads: the request's timer is started
        time.sleep(TIMEOUT_S / 4)
        conn.sendall(request[-3:])
        assert _response(conn) == (200, b"3", False)
        conn.sendall(_request(body=b"ab"))
        assert _response(conn) == (200, b"2", False)


def test_a_chunked_bodys_trailers_without_end_have_the_connection_closed(server):
    """After the head, what is neither head nor body (chunk framing, trailers: the parser adds
    trailers to the request's headers) is bounded too, long before the timeout; while a body in
    1-byte chunks (6 bytes of framing each) with a trailer is served."""
    _, port = server
    chunked = b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    with _connect(port) as conn:
        conn.sendall(chunked + b"1\r\na\r\n" * 150)  # in two reads: counted between them
        time.sleep(0.05)
        conn.sendall(b"1\r\na\r\n" * 150 + b"0\r\nX-Trailer: ok\r\n\r\n")
        assert _response(conn) == (200, b"300", False)
    with _connect(port) as conn:
        start = time.monotonic()
        conn.sendall(chunked + b"1\r\na\r\n0\r\nX-Trailer: ")
        for _ in range(4 * MAX_HEAD // 1024):
            try:
                conn.sendall(b"a" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                break
        assert _closed(conn)
        assert time.monotonic() - start < TIMEOUT_S * 0.8  # by the bound, not the sweep


@pytest.mark.parametrize("after_a_request", [False, True])
def test_a_connection_starting_no_request_gets_408_at_the_timeout(server, after_a_request):
    """Nothing sent on a new connection, or bytes that begin no request (the parser skips a
    CRLF) after a request was served: timed from the connection's opening, or that byte (uvicorn
    cancels its keep-alive timer on any byte)."""
    _, port = server
    with _connect(port) as conn:
        if after_a_request:
            conn.sendall(_request(body=b"a"))
            assert _response(conn) == (200, b"1", False)
        start = time.monotonic()
        conn.sendall(b"\r\n" if after_a_request else b"")
        status, _, close = _response(conn)
        assert (status, close) == (408, True)
        assert TIMEOUT_S <= time.monotonic() - start + 0.05 < TIMEOUT_S + 2


def test_a_request_queued_behind_a_slow_answer_is_not_timed_out(server):
    """Pipelined behind an answer slower than the timeout, a request whose body comes in a
    second read waits unread (uvicorn stops reading until the answer before it is written):
    that time is the server's, and both are answered."""
    _, port = server
    with _connect(port) as conn:
        second = _request(body=b"ab")
        conn.sendall(_request("/slow", body=b"abc"))
        time.sleep(TIMEOUT_S / 5)  # the first is being answered: the second is queued
        conn.sendall(second[:-2])
        time.sleep(TIMEOUT_S / 20)
        conn.sendall(second[-2:])
        assert _response(conn) == (200, b"3", False)
        assert _response(conn) == (200, b"2", False)
