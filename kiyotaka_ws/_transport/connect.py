"""The cancellable connection: TCP connect, TLS, and bounded byte I/O for the handshakes.

Design note
-----------
websocket-client creates its socket inside ``WebSocket.connect()``, so another thread has nothing
to shut down while a TCP connect, a proxy negotiation or a TLS handshake is in progress. Here the
socket is ours from the start and every phase after name resolution is **non-blocking**: each
wait goes through one ``selectors`` selector that watches the socket *and* the read end of a
wake-up ``socketpair``. ``Cancel.cancel()`` (any thread) sets a flag and writes one byte to the
wake-up pair, so whichever wait the dial is in (TCP connect, proxy negotiation, TLS handshake,
sending the upgrade, reading an answer) returns at once and the dial raises ``DialCancelled``.
The same waits carry the one overall deadline (the budget of the whole dial), so a peer that
trickles bytes forever is cut by the deadline.

The libraries that speak the handshakes (websocket-client's HTTP reader, socksio) never touch the
socket: they get bytes from ``Stream.recv``/``recv_exact``, which wait here. That is why
cancellation and the deadline hold in every phase, and why an answer's head is bounded (64 KiB,
100 lines: ``begin_head``) even though websocket-client's reader has no bound of its own.

The wake-up pair belongs to one dial: it is attached to the ``Cancel`` under its lock and detached
(under the same lock) before it is closed, so ``cancel()`` never writes to a closed or reused file
descriptor. A ``cancel()`` after the dial returned only sets the flag.

Limit: name resolution (``getaddrinfo``) cannot be interrupted. A ``cancel()`` during it takes
effect as soon as it returns. IP literals and ``localhost`` resolve at once; a slow DNS server
delays both the dial and its cancellation.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import ssl
import threading
import time
from typing import Any, NoReturn

from .errors import (
    BadHandshake,
    ConnectFailed,
    DialCancelled,
    DialTimeout,
    ProxyError,
    TLSFailed,
    one_line,
)
from .urls import host_port

__all__ = ["MAX_HEADER_BYTES", "MAX_HEADER_LINES", "Cancel", "Stream"]

MAX_HEADER_BYTES = 65536
MAX_HEADER_LINES = 100

_PHASES = {"resolve": "name resolution", "connect": "TCP connect", "proxy": "proxy negotiation",
           "tls": "TLS handshake", "upgrade": "WebSocket upgrade"}


class Cancel:
    """One per dial attempt, created by the caller. ``cancel()`` from any thread, any number of times,
    makes the dial raise ``DialCancelled`` promptly whatever it is doing (except inside name
    resolution, which cannot be interrupted: it takes effect right after)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._waker: socket.socket | None = None

    @property
    def cancelled(self) -> bool:
        """True once ``cancel()`` was called."""
        return self._cancelled

    def cancel(self) -> None:
        """Cancel the dial; safe from any thread, idempotent."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            self._poke_locked()

    def __repr__(self) -> str:
        return f"Cancel(cancelled={self._cancelled})"

    def _poke_locked(self) -> None:
        if self._waker is not None:
            try:
                self._waker.send(b"\0")
            except OSError:  # full (already poked) or closing: the flag is set either way
                pass

    def attach(self, waker: socket.socket) -> None:
        """Poke ``waker`` on cancel (one dial at a time)."""
        with self._lock:
            if self._waker is not None:
                raise RuntimeError("this Cancel is already in use by another dial")
            self._waker = waker
            if self._cancelled:
                self._poke_locked()

    def detach(self) -> None:
        """No poke after this returns."""
        with self._lock:
            self._waker = None


class _AttemptTimedOut(Exception):
    """One address of several took its share of the budget."""


class Stream:
    """The dial's socket plus its selector, wake-up pair, deadline and cancel check.

    ``recv``/``gettimeout`` make it the socket websocket-client's readers are given: ``recv``
    blocks (here, cancellably, until the deadline) and returns at least one byte; the end of the
    stream and every other failure are raised as typed ``DialError``s, which websocket-client lets
    through untouched.
    """

    def __init__(self, shown: str, cancel: Cancel, deadline: float) -> None:
        self.shown = shown
        self.cancel = cancel
        self.deadline = deadline
        self.phase = "resolve"
        self.sock: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._head_bytes = self._head_lines = -1  # -1: not reading a head

    # ---- lifecycle

    def _setup_waker(self) -> selectors.BaseSelector:
        if self._selector is None:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            self.cancel.attach(self._wake_w)
        return self._selector

    def _teardown_waker(self) -> None:
        if self._selector is not None:
            self.cancel.detach()  # under the Cancel's lock: no poke after this returns
            self._selector.close()
            self._selector = None
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._wake_r = self._wake_w = None

    def close(self) -> None:
        """Failure path: close everything, the socket included."""
        self._teardown_waker()
        if self.sock is not None:
            close_quietly(self.sock)
            self.sock = None

    def release(self) -> socket.socket:
        """Success path: close the helpers, hand over the socket in blocking mode."""
        sock = self.sock
        assert sock is not None
        self._unregister()
        self._teardown_waker()
        sock.setblocking(True)
        self.sock = None
        return sock

    # ---- failures

    def cancelled(self) -> NoReturn:
        raise DialCancelled(f"dial to {self.shown} cancelled during {_PHASES[self.phase]}", url=self.shown,
                            phase=self.phase)

    def timed_out(self) -> NoReturn:
        raise DialTimeout(f"dial to {self.shown} timed out during {_PHASES[self.phase]}", url=self.shown,
                          phase=self.phase)

    def check(self) -> None:
        if self.cancel.cancelled:
            self.cancelled()
        if time.monotonic() >= self.deadline:
            self.timed_out()

    def lost(self, exc: OSError | None) -> NoReturn:
        if self.cancel.cancelled:
            self.cancelled()
        what = f"connection closed during {_PHASES[self.phase]}" if exc is None else \
            f"connection lost during {_PHASES[self.phase]}: {strerror(exc)}"
        message = f"{self.shown}: {what}"
        if self.phase == "proxy":
            raise ProxyError(message, url=self.shown) from exc
        if self.phase == "upgrade":
            raise BadHandshake(message, url=self.shown, phase="upgrade") from exc
        if self.phase == "tls":
            raise TLSFailed(message, url=self.shown) from exc
        raise ConnectFailed(message, url=self.shown, phase=self.phase) from exc

    def malformed(self, what: str) -> NoReturn:
        """An answer (proxy or upgrade, by phase) we cannot use."""
        message = f"{self.shown}: {what} in the {'proxy' if self.phase == 'proxy' else 'upgrade'} answer"
        if self.phase == "proxy":
            raise ProxyError(message, url=self.shown)
        raise BadHandshake(message, url=self.shown, phase=self.phase)

    # ---- waiting

    def wait(self, events: int, until: float | None = None) -> None:
        """Wait until the socket is ready for ``events``, the wake-up pair is poked or the deadline."""
        assert self.sock is not None
        selector = self._setup_waker()
        end = self.deadline if until is None else min(until, self.deadline)
        self.check()
        key = selector.get_map().get(self.sock.fileno())
        if key is None:
            selector.register(self.sock.fileno(), events)
        elif key.events != events:
            selector.modify(self.sock.fileno(), events)
        selector.select(max(0.0, end - time.monotonic()))
        if self.cancel.cancelled:
            self.cancelled()
        if until is None and time.monotonic() >= self.deadline:
            self.timed_out()

    def _unregister(self) -> None:
        if self._selector is not None and self.sock is not None:
            try:
                self._selector.unregister(self.sock.fileno())
            except (KeyError, ValueError):
                pass

    # ---- phases

    def resolve(self, host: str, port: int, family: int = socket.AF_UNSPEC) -> list[tuple[Any, ...]]:
        """getaddrinfo (not interruptible; checked for cancel/deadline before and after)."""
        phase, self.phase = self.phase, "resolve"
        self.check()
        try:
            infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            self.check()
            raise ConnectFailed(f"cannot resolve {host!r}: {strerror(exc)}", url=self.shown,
                                phase="resolve") from exc
        self.check()
        self.phase = phase
        return infos

    def connect(self, host: str, port: int, *, to_proxy: bool) -> None:
        """TCP connect to ``host:port``, each address in turn; a proxy's failures are ``ProxyError``."""
        what = f"proxy {host_port(host, port)}" if to_proxy else host_port(host, port)
        try:
            infos = self.resolve(host, port)
        except ConnectFailed as exc:
            if to_proxy:
                raise ProxyError(f"cannot resolve proxy host {host!r}", url=self.shown) from exc.__cause__
            raise
        self.phase = "connect"
        self._setup_waker()
        last: OSError | None = None
        for i, (family, type_, proto, _, addr) in enumerate(infos):
            # An address that hangs must not eat the whole budget when others remain.
            left = len(infos) - i
            until = None if left == 1 else time.monotonic() + (self.deadline - time.monotonic()) / left
            try:
                self._connect_one(family, type_, proto, addr, until)
                return
            except _AttemptTimedOut:
                last = socket.timeout("timed out")
            except OSError as exc:
                last = exc
        message = f"cannot connect to {what}: {strerror(last) if last else 'no address'}"
        if to_proxy:
            raise ProxyError(message, url=self.shown) from last
        raise ConnectFailed(message, url=self.shown, phase="connect") from last

    def _connect_one(self, family: int, type_: int, proto: int, addr: Any, until: float | None) -> None:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            if family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._unregister()
            self.sock = sock
            err = sock.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                raise OSError(err, os.strerror(err))
            if err != 0:
                while True:
                    self.wait(selectors.EVENT_WRITE, until)
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    try:
                        sock.getpeername()
                        break
                    except OSError as exc:  # not connected yet (spurious wake-up or deadline of this attempt)
                        if exc.errno != errno.ENOTCONN:
                            raise
                        if until is not None and time.monotonic() >= until:
                            raise _AttemptTimedOut() from None
        except BaseException:
            self._unregister()
            self.sock = None
            sock.close()
            raise

    def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        self.phase = "tls"
        assert self.sock is not None
        self._unregister()
        try:
            tls = context.wrap_socket(self.sock, server_hostname=server_hostname, do_handshake_on_connect=False)
        except (ssl.SSLError, ValueError) as exc:
            raise TLSFailed(f"TLS setup for {self.shown} failed: {ssl_reason(exc)}", url=self.shown) from exc
        self.sock = tls
        while True:
            try:
                tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                self.wait(selectors.EVENT_READ)
            except ssl.SSLWantWriteError:
                self.wait(selectors.EVENT_WRITE)
            except ssl.SSLCertVerificationError as exc:
                raise TLSFailed(f"TLS handshake with {self.shown} failed: certificate not trusted: "
                                f"{one_line(exc.verify_message or ssl_reason(exc), 160)}",
                                url=self.shown, verify_failed=True) from exc
            except (ssl.SSLError, OSError) as exc:
                if self.cancel.cancelled:
                    self.cancelled()
                raise TLSFailed(f"TLS handshake with {self.shown} failed: {ssl_reason(exc)}",
                                url=self.shown) from exc

    # ---- bytes

    def send_all(self, data: bytes) -> None:
        assert self.sock is not None
        view = memoryview(data)
        while view:
            self.check()
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError):
                self.wait(selectors.EVENT_WRITE)
                continue
            except ssl.SSLWantReadError:
                self.wait(selectors.EVENT_READ)
                continue
            except OSError as exc:
                self.lost(exc)
            view = view[sent:]

    def begin_head(self) -> None:
        """Count what ``recv`` returns from now on against the bounds of one answer's head."""
        self._head_bytes = self._head_lines = 0

    def recv(self, limit: int) -> bytes:
        """At least one byte (at most ``limit``); the end of the stream is a typed failure."""
        assert self.sock is not None
        while True:
            self.check()
            try:
                data = self.sock.recv(limit)
                break
            except (BlockingIOError, ssl.SSLWantReadError):
                self.wait(selectors.EVENT_READ)
            except ssl.SSLWantWriteError:
                self.wait(selectors.EVENT_WRITE)
            except OSError as exc:
                self.lost(exc)
        if not data:
            self.lost(None)
        if self._head_bytes >= 0:
            self._head_bytes += len(data)
            self._head_lines += data.count(b"\n")
            if self._head_bytes > MAX_HEADER_BYTES:
                self.malformed(f"response headers too large (more than {MAX_HEADER_BYTES} bytes)")
            if self._head_lines > MAX_HEADER_LINES + 1:
                self.malformed(f"response headers too large (more than {MAX_HEADER_LINES} lines)")
        return data

    def gettimeout(self) -> float | None:
        """For websocket-client's reader: "blocking" (``recv`` waits here, cancellably, until the deadline)."""
        return None

    def recv_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.recv(n)
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)


def strerror(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return one_line(str(exc) or type(exc).__name__, 160)


def ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return strerror(exc)


def close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:  # pragma: no cover
        pass
