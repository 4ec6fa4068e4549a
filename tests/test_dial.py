"""``kiyotaka_ws._transport``: real sockets on 127.0.0.1 only (servers, proxies and TLS made here), no mocks."""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import logging
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any, Callable

import pytest
from websockets.sync.server import ServerConnection, serve

from kiyotaka_ws._transport import (
    BadArgument,
    BadHandshake,
    Cancel,
    ConnectFailed,
    DialCancelled,
    DialError,
    DialTimeout,
    HandshakeRejected,
    Proxy,
    ProxyError,
    TLSFailed,
    dial,
    redact_url,
)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CANCEL_LATENCY = 0.3  # the brief's bound for the tests; the dial itself aims at < 0.1 s


# ------------------------------------------------------------------------------------------------
# Helpers: frames, servers, proxies


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked, final client frame."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_exact(sock: socket.socket, n: int, buf: bytearray) -> bytes:
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError
        buf += chunk
    out = bytes(buf[:n])
    del buf[:n]
    return out


def read_frame(sock: socket.socket, leftover: bytes = b"") -> tuple[int, bytes]:
    """One unmasked server frame -> (opcode, payload)."""
    buf = bytearray(leftover)
    b0, b1 = read_exact(sock, 2, buf)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(sock, 2, buf))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(sock, 8, buf))[0]
    assert not b1 & 0x80, "server frames are not masked"
    return b0 & 0x0F, read_exact(sock, n, buf)


def accept_key(request: bytes) -> str:
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            return base64.b64encode(hashlib.sha1(value.strip() + GUID).digest()).decode()
    raise AssertionError("no Sec-WebSocket-Key in the request")


def read_head(conn: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


class RawServer:
    """Accepts on 127.0.0.1:0 and runs ``handler(conn)`` per connection in its own thread.

    Use as ``with closing(RawServer(handler)) as server``.
    """

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, name="test-raw-accept", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            thread = threading.Thread(target=self._run, args=(conn,), name="test-raw-conn", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError, EOFError):
            self.handler(conn)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(2)
        for thread in self._threads:
            thread.join(2)
        for conn in self._conns:
            conn.close()


def bridge(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side ends."""
    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    other = threading.Thread(target=pump, args=(b, a), name="test-bridge", daemon=True)
    other.start()
    pump(a, b)
    other.join(2)
    b.close()


def http_proxy(user: str, password: str) -> RawServer:
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def handle(conn: socket.socket) -> None:
        head = read_head(conn)
        server.requests.append(head)
        lines = head.decode("latin-1").split("\r\n")
        method, authority, _ = lines[0].split(" ")
        auth = [v.strip() for n, _, v in (ln.partition(":") for ln in lines[1:]) if n.lower() == "proxy-authorization"]
        if method != "CONNECT" or auth != [expected]:
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b"Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
            return
        host, _, port = authority.rpartition(":")
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=2)
        except OSError:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        upstream.settimeout(None)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        bridge(conn, upstream)

    server = RawServer(handle)
    return server


def socks5_proxy(user: str, password: str, *, stall: bool = False) -> RawServer:
    def handle(conn: socket.socket) -> None:
        buf = bytearray()
        version, nmethods = read_exact(conn, 2, buf)
        methods = read_exact(conn, nmethods, buf)
        if stall:
            server.requests.append(b"stalled")
            conn.recv(1)  # never answers; ends when the client goes away
            return
        if version != 5 or 2 not in methods:
            conn.sendall(b"\x05\xff")
            return
        conn.sendall(b"\x05\x02")
        _, ulen = read_exact(conn, 2, buf)
        got_user = read_exact(conn, ulen, buf).decode()
        got_password = read_exact(conn, read_exact(conn, 1, buf)[0], buf).decode()
        if (got_user, got_password) != (user, password):
            conn.sendall(b"\x01\x01")
            return
        conn.sendall(b"\x01\x00")
        _, cmd, _, atyp = read_exact(conn, 4, buf)
        if atyp == 1:
            host = socket.inet_ntoa(read_exact(conn, 4, buf))
        elif atyp == 3:
            host = read_exact(conn, read_exact(conn, 1, buf)[0], buf).decode()
        else:
            host = socket.inet_ntop(socket.AF_INET6, read_exact(conn, 16, buf))
        port = struct.unpack("!H", read_exact(conn, 2, buf))[0]
        server.requests.append(f"{cmd} {atyp} {host}:{port}".encode())
        try:
            upstream = socket.create_connection((host, port), timeout=2)
        except OSError:
            conn.sendall(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")
            return
        upstream.settimeout(None)
        conn.sendall(b"\x05\x00\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", port))
        bridge(conn, upstream)

    server = RawServer(handle)
    return server


def socks4_proxy(user: str) -> RawServer:
    def until_nul(conn: socket.socket, buf: bytearray) -> bytes:
        out = b""
        while True:
            c = read_exact(conn, 1, buf)
            if c == b"\0":
                return out
            out += c

    def handle(conn: socket.socket) -> None:
        buf = bytearray()
        _, _, port, ip = struct.unpack("!BBH4s", read_exact(conn, 8, buf))
        userid = until_nul(conn, buf).decode()
        host = until_nul(conn, buf).decode() if ip[:3] == b"\0\0\0" else socket.inet_ntoa(ip)
        server.requests.append(f"{userid} {host}:{port}".encode())
        if userid != user:
            conn.sendall(b"\x00\x5b" + b"\0" * 6)
            return
        upstream = socket.create_connection((host, port))
        conn.sendall(b"\x00\x5a" + b"\0" * 6)
        bridge(conn, upstream)

    server = RawServer(handle)
    return server


def http_answer(response: bytes) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(response)
        conn.recv(1)
    return handle


def silent(conn: socket.socket) -> None:
    conn.recv(65536)  # reads the request (if any) and never answers
    conn.recv(1)


@contextlib.contextmanager
def ws_server(ssl_context: ssl.SSLContext | None = None) -> Iterator[int]:
    """A websockets echo server on 127.0.0.1; yields its port."""
    def echo(ws: ServerConnection) -> None:
        for message in ws:
            ws.send(message)

    with serve(echo, "127.0.0.1", 0, ssl=ssl_context, compression=None) as server:
        thread = threading.Thread(target=server.serve_forever, name="test-ws-server", daemon=True)
        thread.start()
        try:
            yield server.socket.getsockname()[1]
        finally:
            server.shutdown()
            thread.join(5)


def echo_roundtrip(sock: socket.socket, leftover: bytes = b"") -> None:
    assert leftover == b""
    sock.settimeout(5)
    sock.sendall(client_frame(b"hello"))
    assert read_frame(sock) == (1, b"hello")


@contextlib.contextmanager
def syn_hanging_port() -> Iterator[int]:
    """A listener whose backlog is full and never accepted: a SYN to it goes unanswered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    try:
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


def cancel_after(delay: float, cancel: Cancel) -> tuple[threading.Thread, list[float]]:
    when: list[float] = []

    def run() -> None:
        time.sleep(delay)
        when.append(time.monotonic())
        cancel.cancel()

    thread = threading.Thread(target=run, name="test-canceller", daemon=True)
    thread.start()
    return thread, when


def dial_and_cancel(url: str, delay: float = 0.2, **kwargs: Any) -> DialCancelled:
    cancel = Cancel()
    thread, when = cancel_after(delay, cancel)
    with pytest.raises(DialCancelled) as info:
        dial(url, timeout=10, cancel=cancel, **kwargs)
    latency = time.monotonic() - when[0]
    thread.join()
    assert latency < CANCEL_LATENCY, f"cancel took {latency:.3f}s"
    assert cancel.cancelled
    return info.value


# ------------------------------------------------------------------------------------------------
# Success


def test_dial_upgrades_against_a_real_server() -> None:
    with ws_server() as port:
        sock, leftover = dial(f"ws://127.0.0.1:{port}/ws?encoding=json", timeout=5, cancel=Cancel())
        with sock:
            assert sock.gettimeout() is None
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            echo_roundtrip(sock, leftover)


def test_dial_returns_bytes_read_past_the_101() -> None:
    frame = b"\x81\x05first"

    def handle(conn: socket.socket) -> None:
        request = read_head(conn)
        server.requests.append(request)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept_key(request).encode() + b"\r\n\r\n" + frame)
        conn.recv(1)

    with closing(RawServer(handle)) as server:
        sock, leftover = dial(f"ws://127.0.0.1:{server.port}/p/a?x=1&y=2", timeout=5, cancel=Cancel(),
                              headers=["X-Test: yes"], user_agent="ua/1")
        with sock:
            sock.settimeout(5)
            assert read_frame(sock, leftover) == (1, b"first")
        request = server.requests[0].decode()
        lines = request.split("\r\n")
        assert lines[0] == "GET /p/a?x=1&y=2 HTTP/1.1"
        assert f"Host: 127.0.0.1:{server.port}" in lines
        assert {"Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13", "X-Test: yes",
                "User-Agent: ua/1"} <= set(lines)
        assert not any(line.lower().startswith("origin") for line in lines)
        key = next(line.split(": ", 1)[1] for line in lines if line.startswith("Sec-WebSocket-Key"))
        assert len(base64.b64decode(key)) == 16


# ------------------------------------------------------------------------------------------------
# TCP: refused, hanging, cancelled, timeout


def test_refused_port_is_a_quick_connect_failure() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    start = time.monotonic()
    with pytest.raises(ConnectFailed) as info:
        dial(f"ws://127.0.0.1:{port}/ws?apikey=nope", timeout=5, cancel=Cancel())
    assert time.monotonic() - start < 1
    assert "refused" in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert info.value.url == f"ws://127.0.0.1:{port}/ws"
    assert "apikey" not in str(info.value)


def test_cancel_during_tcp_connect() -> None:
    with syn_hanging_port() as port:
        exc = dial_and_cancel(f"ws://127.0.0.1:{port}/")
    assert exc.phase == "connect"


def test_cancel_before_dial_and_idempotent() -> None:
    cancel = Cancel()
    cancel.cancel()
    cancel.cancel()
    with pytest.raises(DialCancelled):
        dial("ws://127.0.0.1:9/", timeout=5, cancel=cancel)


def test_cancel_during_upgrade_with_a_silent_server() -> None:
    with closing(RawServer(silent)) as server:
        exc = dial_and_cancel(f"ws://127.0.0.1:{server.port}/")
    assert exc.phase == "upgrade"


@pytest.mark.parametrize("phase", ["connect", "upgrade"])
def test_total_timeout_is_honoured(phase: str) -> None:
    with contextlib.ExitStack() as stack:
        if phase == "connect":
            port = stack.enter_context(syn_hanging_port())
        else:
            port = stack.enter_context(closing(RawServer(silent))).port
        start = time.monotonic()
        with pytest.raises(DialTimeout) as info:
            dial(f"ws://127.0.0.1:{port}/", timeout=0.7, cancel=Cancel())
        elapsed = time.monotonic() - start
    assert abs(elapsed - 0.7) < 0.5, elapsed
    assert info.value.phase == phase


def test_trickling_headers_are_cut_by_the_timeout() -> None:
    def handle(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\n")
        for i in range(1000):
            conn.sendall(f"X-{i}: y\r\n".encode())
            time.sleep(0.05)

    with closing(RawServer(handle)) as server:
        start = time.monotonic()
        with pytest.raises(DialTimeout):
            dial(f"ws://127.0.0.1:{server.port}/", timeout=0.6, cancel=Cancel())
        assert abs(time.monotonic() - start - 0.6) < 0.5


# ------------------------------------------------------------------------------------------------
# Upgrade answers


@pytest.mark.parametrize(("status", "extra", "retry_after", "retryable"), [
    (401, "", None, False),
    (403, "", None, False),
    (404, "", None, False),
    (429, "Retry-After: 7\r\n", 7.0, True),
    (503, "Retry-After: {date}\r\n", 30.0, True),
    (503, "Retry-After: soon\r\n", None, True),
])
def test_non_101_answers_are_rejections(status: int, extra: str, retry_after: float | None, retryable: bool) -> None:
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    response = (f"HTTP/1.1 {status} Some Reason\r\n{extra.format(date=date)}Content-Length: 5\r\n\r\nnope!").encode()
    with closing(RawServer(http_answer(response))) as server, pytest.raises(HandshakeRejected) as info:
        dial(f"ws://127.0.0.1:{server.port}/ws?key=abc", timeout=5, cancel=Cancel())
    exc = info.value
    assert exc.status == status
    assert exc.reason == "Some Reason"
    assert exc.retryable is retryable
    if retry_after is None:
        assert exc.retry_after is None
    else:
        assert exc.retry_after is not None and abs(exc.retry_after - retry_after) < 2
    assert "\n" not in str(exc) and "abc" not in str(exc)


def good_101(request: bytes, extra: bytes = b"", accept: str | None = None) -> bytes:
    accept = accept_key(request) if accept is None else accept
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept.encode() + b"\r\n" + extra + b"\r\n")


@pytest.mark.parametrize(("answer", "needle"), [
    (lambda r: good_101(r, accept=base64.b64encode(b"x" * 20).decode()), "Sec-WebSocket-Accept"),
    (lambda r: good_101(r, b"Sec-WebSocket-Extensions: permessage-deflate\r\n"), "extension"),
    (lambda r: good_101(r, b"Sec-WebSocket-Protocol: chat\r\n"), "subprotocol"),
    (lambda r: good_101(r).replace(b"Upgrade: websocket", b"Upgrade: h2c"), "Upgrade"),
    (lambda r: b"SSH-2.0-OpenSSH\r\n\r\n", "status line"),
    (lambda r: b"\r\n\r\n", "status line"),
    (lambda r: good_101(r, b"X-Bad: \xff\r\n"), "malformed header line"),
    (lambda r: good_101(r, b"no colon here\r\n"), "malformed header line"),
])
def test_invalid_101_answers(answer: Callable[[bytes], bytes], needle: str) -> None:
    def handle(conn: socket.socket) -> None:
        conn.sendall(answer(read_head(conn)))
        conn.recv(1)

    with closing(RawServer(handle)) as server, pytest.raises(BadHandshake) as info:
        dial(f"ws://127.0.0.1:{server.port}/", timeout=5, cancel=Cancel())
    assert needle in str(info.value)


@pytest.mark.parametrize("shape", ["long", "many"])
def test_endless_headers_are_capped(shape: str) -> None:
    def handle(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\n")
        line = b"X-Junk: " + b"a" * 1000 + b"\r\n" if shape == "long" else b"X: 1\r\n"
        for _ in range(100000):
            conn.sendall(line * 50)

    with closing(RawServer(handle)) as server:
        start = time.monotonic()
        with pytest.raises(BadHandshake) as info:
            dial(f"ws://127.0.0.1:{server.port}/", timeout=10, cancel=Cancel())
        assert time.monotonic() - start < 2
    assert "too large" in str(info.value)


def test_connection_closed_during_upgrade() -> None:
    def handle(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 101 Swi")
        conn.shutdown(socket.SHUT_RDWR)

    with closing(RawServer(handle)) as server, pytest.raises(BadHandshake, match="closed"):
        dial(f"ws://127.0.0.1:{server.port}/", timeout=5, cancel=Cancel())


# ------------------------------------------------------------------------------------------------
# Proxies


def test_http_proxy_with_credentials() -> None:
    with ws_server() as port, closing(http_proxy("user", "s3:cr/et")) as proxy_server:
        proxy = Proxy.parse(f"http://user:s3%3Acr%2Fet@127.0.0.1:{proxy_server.port}")
        sock, leftover = dial(f"ws://127.0.0.1:{port}/ws", timeout=5, cancel=Cancel(), proxy=proxy)
        with sock:
            echo_roundtrip(sock, leftover)
        assert proxy_server.requests[0].startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n".encode())


def test_http_proxy_wrong_or_missing_password_is_407() -> None:
    with ws_server() as port, closing(http_proxy("user", "secret")) as proxy_server:
        for url in (f"http://user:wrong@127.0.0.1:{proxy_server.port}", f"http://127.0.0.1:{proxy_server.port}"):
            proxy = Proxy.parse(url)
            with pytest.raises(ProxyError) as info:
                dial(f"ws://127.0.0.1:{port}/ws", timeout=5, cancel=Cancel(), proxy=proxy)
            assert info.value.status == 407
            assert info.value.retryable is False
            assert "wrong" not in str(info.value) and "wrong" not in repr(info.value)


def test_http_proxy_password_never_shows() -> None:
    with ws_server() as port, closing(http_proxy("user", "secret")) as proxy_server:
        proxy = Proxy.parse(f"http://user:secret@127.0.0.1:{proxy_server.port}")
        assert "secret" not in repr(proxy) and "secret" not in str(proxy)
        sock, _ = dial(f"ws://127.0.0.1:{port}/ws", timeout=5, cancel=Cancel(), proxy=proxy)
        sock.close()
        texts = [repr(proxy), str(proxy)]
        # Failures through this proxy: 407 (wrong user), 502 (refused target).
        cases = [(Proxy.parse(f"http://other:secret@127.0.0.1:{proxy_server.port}"), f"ws://127.0.0.1:{port}/"),
                 (proxy, "ws://127.0.0.1:1/")]
        for (p, url), status in zip(cases, (407, 502)):
            with pytest.raises(ProxyError) as info:
                dial(url, timeout=5, cancel=Cancel(), proxy=p)
            assert info.value.status == status
            texts += [str(info.value), repr(info.value), repr(info.value.__cause__)]
        with pytest.raises(BadArgument) as bad:
            Proxy.parse("http://user:secret@127.0.0.1:notaport")
        texts.append(str(bad.value))
    assert not [t for t in texts if "secret" in t], texts


def test_proxy_unreachable_is_a_proxy_error() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ProxyError, match="cannot connect to proxy"):
        dial("ws://127.0.0.1:1/", timeout=5, cancel=Cancel(), proxy=Proxy.parse(f"http://127.0.0.1:{port}"))


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
def test_socks5_proxy_with_credentials(scheme: str) -> None:
    with ws_server() as port, closing(socks5_proxy("alice", "pa ss")) as proxy_server:
        proxy = Proxy.parse(f"{scheme}://alice:pa%20ss@127.0.0.1:{proxy_server.port}")
        sock, leftover = dial(f"ws://localhost:{port}/ws", timeout=5, cancel=Cancel(), proxy=proxy)
        with sock:
            echo_roundtrip(sock, leftover)
        # socks5 resolves locally (an address goes to the proxy), socks5h lets the proxy resolve the name
        assert proxy_server.requests[0].split()[1] == (b"3" if scheme == "socks5h" else b"1")


def test_socks5_wrong_password() -> None:
    with closing(socks5_proxy("alice", "right")) as proxy_server:
        proxy = Proxy.parse(f"socks5://alice:wrong@127.0.0.1:{proxy_server.port}")
        with pytest.raises(ProxyError, match="rejected the credentials") as info:
            dial("ws://127.0.0.1:9/", timeout=5, cancel=Cancel(), proxy=proxy)
    assert "wrong" not in str(info.value)


def test_socks5_failure_reply() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with closing(socks5_proxy("a", "b")) as proxy_server:
        proxy = Proxy.parse(f"socks5://a:b@127.0.0.1:{proxy_server.port}")
        with pytest.raises(ProxyError, match="connection refused"):
            dial(f"ws://127.0.0.1:{port}/", timeout=5, cancel=Cancel(), proxy=proxy)


@pytest.mark.parametrize(("scheme", "sent"), [("socks4", "127.0.0.1"), ("socks4a", "localhost")])
def test_socks4_proxies(scheme: str, sent: str) -> None:
    with ws_server() as port, closing(socks4_proxy("me")) as proxy_server:
        sock, leftover = dial(f"ws://localhost:{port}/", timeout=5, cancel=Cancel(),
                              proxy=Proxy.parse(f"{scheme}://me@127.0.0.1:{proxy_server.port}"))
        with sock:
            echo_roundtrip(sock, leftover)
        assert proxy_server.requests == [f"me {sent}:{port}".encode()]
        with pytest.raises(ProxyError, match="rejected"):
            dial(f"ws://localhost:{port}/", timeout=5, cancel=Cancel(),
                 proxy=Proxy.parse(f"{scheme}://you@127.0.0.1:{proxy_server.port}"))


def test_cancel_during_http_connect() -> None:
    with closing(RawServer(silent)) as proxy_server:
        exc = dial_and_cancel("ws://127.0.0.1:9/", proxy=Proxy.parse(f"http://u:p@127.0.0.1:{proxy_server.port}"))
    assert exc.phase == "proxy"


def test_cancel_during_socks_negotiation() -> None:
    with closing(socks5_proxy("a", "b", stall=True)) as proxy_server:
        proxy = Proxy.parse(f"socks5://a:b@127.0.0.1:{proxy_server.port}")
        exc = dial_and_cancel("ws://127.0.0.1:9/", proxy=proxy)
        assert proxy_server.requests == [b"stalled"]
    assert exc.phase == "proxy"


# ------------------------------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture
def server_tls(certificate: tuple[str, str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def test_wss_with_ca_certs(certificate: tuple[str, str], server_tls: ssl.SSLContext) -> None:
    with ws_server(server_tls) as port:
        for host in ("127.0.0.1", "localhost"):
            sock, leftover = dial(f"wss://{host}:{port}/ws", timeout=5, cancel=Cancel(),
                                  sslopt={"ca_certs": certificate[0]})
            with sock:
                assert isinstance(sock, ssl.SSLSocket)
                echo_roundtrip(sock, leftover)


def test_wss_default_verification_rejects_self_signed(server_tls: ssl.SSLContext) -> None:
    with ws_server(server_tls) as port, pytest.raises(TLSFailed) as info:
        dial(f"wss://127.0.0.1:{port}/ws", timeout=5, cancel=Cancel())
    assert info.value.verify_failed and not info.value.retryable
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)


def test_wss_cert_none_and_context(server_tls: ssl.SSLContext, certificate: tuple[str, str]) -> None:
    context = ssl.create_default_context(cafile=certificate[0])
    with ws_server(server_tls) as port:
        for sslopt in ({"cert_reqs": ssl.CERT_NONE}, {"context": context}):
            sock, leftover = dial(f"wss://127.0.0.1:{port}/", timeout=5, cancel=Cancel(), sslopt=sslopt)
            with sock:
                echo_roundtrip(sock, leftover)


def test_wss_through_http_proxy(certificate: tuple[str, str], server_tls: ssl.SSLContext) -> None:
    with ws_server(server_tls) as port, closing(http_proxy("u", "p")) as proxy_server:
        proxy = Proxy.parse(f"http://u:p@127.0.0.1:{proxy_server.port}")
        sock, leftover = dial(f"wss://localhost:{port}/", timeout=5, cancel=Cancel(), proxy=proxy,
                              sslopt={"ca_certs": certificate[0]})
        with sock:
            echo_roundtrip(sock, leftover)


def test_cancel_during_tls_handshake_and_timeout() -> None:
    with closing(RawServer(silent)) as server:
        exc = dial_and_cancel(f"wss://127.0.0.1:{server.port}/")
        assert exc.phase == "tls"
        with pytest.raises(DialTimeout) as info:
            dial(f"wss://127.0.0.1:{server.port}/", timeout=0.5, cancel=Cancel())
        assert info.value.phase == "tls"


def test_unknown_sslopt_key_is_a_configuration_error() -> None:
    with pytest.raises(BadArgument, match="sslopt"):
        dial("wss://127.0.0.1:9/", timeout=1, cancel=Cancel(), sslopt={"ssl_version": 2})


# ------------------------------------------------------------------------------------------------
# Proxy.parse and argument checks


@pytest.mark.parametrize(("url", "expected"), [
    ("http://h:3128", ("http", "h", 3128, None, None)),
    ("http://us%40er:p%3Aw%2Fd@proxy.example:8080", ("http", "proxy.example", 8080, "us@er", "p:w/d")),
    ("socks4://id@10.0.0.1:1080", ("socks4", "10.0.0.1", 1080, "id", None)),
    ("socks4a://h:1080", ("socks4a", "h", 1080, None, None)),
    ("socks5://u:p@[::1]:1080", ("socks5", "::1", 1080, "u", "p")),
    ("SOCKS5H://u:@h:1", ("socks5h", "h", 1, "u", "")),
])
def test_proxy_parse(url: str, expected: tuple[Any, ...]) -> None:
    proxy = Proxy.parse(url)
    assert (proxy.scheme, proxy.host, proxy.port, proxy.username, proxy.password) == expected


@pytest.mark.parametrize("url", [
    "https://u:hunter2@h:443", "ftp://h:21", "http://h", "http://:3128", "http://u:hunter2@h:99999",
    "hunter2", "http://u:hunter2@h:1/path", "socks4://u:hunter2@h:1080", "http://:hunter2@h:1",
    "http://u:hunter2/x@h:1",
])
def test_proxy_parse_rejects(url: str) -> None:
    with pytest.raises(BadArgument) as info:
        Proxy.parse(url)
    assert str(info.value).startswith("proxy:")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("url", [
    "http://u:hunter2@h:1", "http://u:hunter2/x@h:1/p", "http://u:hun?ter2@h:1", "http://u:hun#ter2@h:1",
    "socks5://u:p@ss:hunter2@h:1", "ws://h:1/path?apikey=hunter2", "ws://h:1/p#hunter2", "hunter2",
])
def test_the_one_url_redactor_never_shows_a_secret(url: str) -> None:
    shown = redact_url(url)
    assert "hunter2" not in shown
    if "@" in url:
        assert "***@" in shown


def test_proxy_repr_hides_password() -> None:
    proxy = Proxy.parse("socks5://me:topsecret@h:1080")
    assert "topsecret" not in repr(proxy) and "topsecret" not in str(proxy)
    assert str(proxy) == "socks5://me:***@h:1080"


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"url": "http://h/"}, "url"),
    ({"url": "ws:///x"}, "url"),
    ({"timeout": 0}, "timeout"),
    ({"headers": ["X-Evil: a\r\nHost: b"]}, "headers"),
    ({"headers": "X: 1"}, "headers"),
    ({"user_agent": "a\r\nX: y"}, "user_agent"),
    ({"url": "wss://127.0.0.1:9/", "sslopt": ["context"]}, "sslopt"),
])
def test_bad_arguments(kwargs: dict[str, Any], name: str) -> None:
    args: dict[str, Any] = {"url": "ws://127.0.0.1:9/", "timeout": 1, "cancel": Cancel(), **kwargs}
    with pytest.raises(BadArgument, match=f"^{name}:"):
        dial(**args)


def test_error_hierarchy() -> None:
    from kiyotaka_ws.errors import KiyotakaError

    for cls in (ConnectFailed, DialTimeout, TLSFailed, BadHandshake, HandshakeRejected, ProxyError, DialCancelled):
        assert issubclass(cls, DialError)
    # The transport knows nothing of Kiyotaka: the session maps its failures, the client its bad arguments.
    assert not issubclass(DialError, KiyotakaError) and issubclass(BadArgument, ValueError)
    exc = HandshakeRejected("a\nb", url="ws://h/", status=503, reason="x", retry_after=None)
    assert str(exc) == "a b" and exc.retryable and exc.url == "ws://h/"


# -- through the client ----------------------------------------------------------------------------

def test_client_streams_through_an_authenticating_proxy(caplog: pytest.LogCaptureFixture) -> None:
    from kiyotaka_ws import KiyotakaClient
    from kiyotaka_ws.errors import ConnectionFailedError
    from kiyotaka_ws.testing import FakeKiyotakaServer, trade_point

    caplog.set_level(logging.DEBUG, logger="kiyotaka_ws")
    with FakeKiyotakaServer(api_key="k") as fake, closing(http_proxy("trader", "s3cret-pw")) as proxy:
        got: list[Any] = []
        client = KiyotakaClient(**fake.client_kwargs(), proxy=f"http://trader:s3cret-pw@127.0.0.1:{proxy.port}")
        client.on_trade(got.append, exchange="X", symbol="Y")
        with client:
            assert client.wait_ready(5)
            fake.publish([trade_point("X", "Y", price=1, amount=1)])
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                time.sleep(0.01)
        assert got and got[0].price == 1
        assert b"Proxy-Authorization: Basic" in proxy.requests[0]
        wrong = KiyotakaClient(**fake.client_kwargs(), proxy=f"http://trader:nope-pw@127.0.0.1:{proxy.port}")
        wrong.on_trade(got.append, exchange="X", symbol="Y")
        with pytest.raises(ConnectionFailedError, match="407") as info:
            wrong.run_forever()
        assert "nope-pw" not in str(info.value) and "nope-pw" not in repr(wrong)
    assert "s3cret-pw" not in caplog.text and "nope-pw" not in caplog.text
