"""``dial``: open a connected, upgraded WebSocket socket, cancellably, with typed failures.

Design note
-----------
websocket-client creates its socket inside ``WebSocket.connect()``, so another thread has nothing
to shut down while a TCP connect, a proxy negotiation or a TLS handshake is in progress. Here the
socket is ours from the start and every phase after name resolution is **non-blocking**: each
wait goes through one ``selectors`` selector that watches the socket *and* the read end of a
wake-up ``socketpair``. ``Cancel.cancel()`` (any thread) sets a flag and writes one byte to the
wake-up pair, so whichever wait the dial is in (TCP connect, HTTP CONNECT / SOCKS negotiation, TLS
handshake, sending the upgrade, reading its answer) returns at once and the dial raises
``DialCancelled``. The same waits carry the one overall deadline (``timeout`` is the budget of the
whole dial), so a server that trickles bytes forever is cut by the deadline, and the answer headers
are read into a bounded buffer (64 KiB, 100 lines).

The wake-up pair belongs to one ``dial`` call: it is attached to the ``Cancel`` under its lock and
detached (under the same lock) before it is closed, so ``cancel()`` never writes to a closed or
reused file descriptor. A ``cancel()`` after ``dial`` returned only sets the flag.

Limit: name resolution (``getaddrinfo``) cannot be interrupted. It runs before each cancellable
wait (the target or proxy host first; with ``socks4``/``socks5`` proxies the target is also
resolved locally before the request); a ``cancel()`` during it takes effect as soon as it returns. IP literals and
``localhost`` resolve at once; a slow DNS server delays both the dial and its cancellation.

Failures are ``DialError`` subclasses with a one-line message that never holds a password, header
value or URL query; ``retryable`` tells a permanent failure (rejected key, wrong URL, proxy
credentials refused, certificate not trusted) from a transient one. Bad arguments (URL, proxy,
``sslopt``, headers) raise ``ConfigurationError`` before any network traffic.

``sslopt`` (wss only) honours websocket-client's common keys: ``context`` (used as is),
``cert_reqs``, ``check_hostname``, ``ca_certs``, ``ca_cert_path``, ``certfile``, ``keyfile``,
``password``, ``server_hostname``, ``ciphers`` (and the ``WEBSOCKET_CLIENT_CA_BUNDLE`` variable);
any other key is a ``ConfigurationError``. Without ``sslopt`` it is ``ssl.create_default_context()``.

SOCKS4/4a/5/5h and HTTP CONNECT are implemented here (RFC 1928/1929 and RFC 9110 CONNECT are
short) over the already-connected, cancellable socket; no optional dependency is needed.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import errno
import hashlib
import ipaddress
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, NoReturn
from urllib.parse import unquote, urlsplit

import attrs

from ._version import __version__
from .errors import ConfigurationError, KiyotakaError

__all__ = [
    "BadHandshake",
    "Cancel",
    "ConnectFailed",
    "DialCancelled",
    "DialError",
    "DialTimeout",
    "HandshakeRejected",
    "Proxy",
    "ProxyError",
    "TLSFailed",
    "dial",
]

PROXY_SCHEMES = ("http", "socks4", "socks4a", "socks5", "socks5h")
MAX_HEADER_BYTES = 65536
MAX_HEADER_LINES = 100
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_SSLOPT_KEYS = frozenset({"context", "cert_reqs", "check_hostname", "ca_certs", "ca_cert_path", "certfile",
                          "keyfile", "password", "server_hostname", "ciphers"})
# 4xx answers that say "later", not "never".
_TRANSIENT_4XX = frozenset({408, 425, 429})


# --------------------------------------------------------------------------------------------
# Errors


class DialError(KiyotakaError):
    """The dial failed. ``str()`` is one line without secrets; ``url`` is the target without its query.

    ``phase`` is where it failed (``"resolve"``, ``"connect"``, ``"proxy"``, ``"tls"``, ``"upgrade"``);
    ``retryable`` is False for failures that retrying the same configuration will not fix.
    """

    retryable: bool = True

    def __init__(self, message: str, *, url: str, phase: str = "") -> None:
        super().__init__(_one_line(message))
        self.url = url
        self.phase = phase


class ConnectFailed(DialError):
    """The target could not be resolved or the TCP connection failed (refused, unreachable, reset)."""


class DialTimeout(DialError):
    """The overall ``timeout`` ran out; ``phase`` tells where."""


class TLSFailed(DialError):
    """The TLS handshake failed; ``verify_failed`` is True when the certificate was not trusted."""

    def __init__(self, message: str, *, url: str, verify_failed: bool = False) -> None:
        super().__init__(message, url=url, phase="tls")
        self.verify_failed = verify_failed
        self.retryable = not verify_failed


class BadHandshake(DialError):
    """The server's answer to the upgrade is not a valid WebSocket upgrade (bad accept key, an
    extension or subprotocol we did not ask for, malformed or oversized headers, closed early)."""


class HandshakeRejected(DialError):
    """The server answered the upgrade with a non-101 status.

    401/403: the server rejects us (key); 400/404/410: wrong URL; 429/5xx: retry later, after
    ``retry_after`` seconds when the server said so (``Retry-After`` delta-seconds or HTTP-date).
    """

    def __init__(self, message: str, *, url: str, status: int, reason: str,
                 retry_after: float | None) -> None:
        super().__init__(message, url=url, phase="upgrade")
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        self.retryable = not (400 <= status < 500 and status not in _TRANSIENT_4XX)


class ProxyError(DialError):
    """The proxy failed us: could not be reached, refused the CONNECT (``status``, e.g. 407 for
    missing or wrong credentials) or answered a SOCKS request with a failure (``status`` None)."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message, url=url, phase="proxy")
        self.status = status
        self.retryable = status != 407


class DialCancelled(DialError):
    """``Cancel.cancel()`` was called before the dial completed."""


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Proxy


@attrs.frozen(repr=False)
class Proxy:
    """A proxy to dial through. ``repr``/``str`` never show the password.

    ``http`` (CONNECT, ``Proxy-Authorization: Basic`` when credentials are given), ``socks4``
    (user id only; the target is resolved locally, IPv4), ``socks4a`` (the proxy resolves),
    ``socks5`` (resolved locally), ``socks5h`` (the proxy resolves); SOCKS5 uses username/password
    authentication (RFC 1929) when credentials are given.
    """

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> Proxy:
        """Parse ``scheme://[user[:password]@]host:port``; credentials are URL-decoded.

        Raises ``ConfigurationError`` naming ``proxy``; the message never contains the password.
        """
        expected = f"proxy: expected 'scheme://[user:password@]host:port' with scheme one of {', '.join(PROXY_SCHEMES)}"
        if not isinstance(url, str):
            raise ConfigurationError(f"{expected}, got a {type(url).__name__}")
        shown = _redact_url(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ConfigurationError(f"{expected}, got {shown!r}") from None
        scheme = parts.scheme.lower()
        if scheme not in PROXY_SCHEMES or not parts.hostname or not port:
            raise ConfigurationError(f"{expected}, got {shown!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigurationError(f"{expected} (no path or query), got {shown!r}")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if password is not None and username is None:
            raise ConfigurationError(f"proxy: a password needs a user name, got {shown!r}")
        if scheme.startswith("socks5") and username is not None and (
                len(username.encode()) > 255 or len((password or "").encode()) > 255):
            raise ConfigurationError("proxy: SOCKS5 user name and password are limited to 255 bytes each")
        if scheme.startswith("socks4") and password:
            raise ConfigurationError(f"proxy: SOCKS4 has no passwords (only a user id), got {shown!r}")
        return cls(scheme, parts.hostname, port, username, password)

    def __repr__(self) -> str:
        password = "None" if self.password is None else "'***'"
        return (f"Proxy(scheme={self.scheme!r}, host={self.host!r}, port={self.port!r}, "
                f"username={self.username!r}, password={password})")

    def __str__(self) -> str:
        auth = ""
        if self.username is not None:
            auth = f"{self.username}:***@" if self.password is not None else f"{self.username}@"
        return f"{self.scheme}://{auth}{_host_port(self.host, self.port)}"


def _redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL, not shown>"
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------------------------
# Cancellation


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

    def _attach(self, waker: socket.socket) -> None:
        with self._lock:
            if self._waker is not None:
                raise RuntimeError("this Cancel is already in use by another dial")
            self._waker = waker
            if self._cancelled:
                self._poke_locked()

    def _detach(self) -> None:
        with self._lock:
            self._waker = None


# --------------------------------------------------------------------------------------------
# The dial


@attrs.frozen
class _Target:
    secure: bool
    host: str
    port: int
    resource: str
    shown: str  # the URL without query or credentials, for messages


def dial(url: str, *, timeout: float, cancel: Cancel, sslopt: dict[str, Any] | None = None,
         proxy: Proxy | None = None, headers: Sequence[str] = (),
         user_agent: str = f"kiyotaka-ws/{__version__}") -> tuple[socket.socket, bytes]:
    """Connect (TCP, optional proxy, optional TLS for wss), do the WebSocket upgrade, and return
    ``(sock, leftover)``: ``leftover`` holds any bytes read past the end of the 101 answer's headers.

    ``timeout`` is the total budget for the whole dial (name resolution included, though that part
    cannot be cut short). The socket comes back in blocking mode with no timeout and TCP_NODELAY set.
    Raises ``DialError`` subclasses (the OS or TLS exception is the ``__cause__``) and
    ``ConfigurationError`` for bad arguments. A ``cancel()`` that comes after ``dial`` returned only
    sets ``cancel.cancelled``; the caller owns the socket from then on.
    """
    target = _parse_target(url)
    context = server_hostname = None
    if target.secure:
        context = ssl_context({} if sslopt is None else sslopt)
        server_hostname = (sslopt or {}).get("server_hostname") or target.host
    extra = _check_headers(headers, user_agent)
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigurationError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    deadline = time.monotonic() + float(timeout)
    if cancel.cancelled:
        raise DialCancelled(f"dial to {target.shown} cancelled", url=target.shown, phase="resolve")

    io = _Io(target.shown, cancel, deadline)
    try:
        if proxy is None:
            io.connect(target.host, target.port, via=None)
        else:
            io.connect(proxy.host, proxy.port, via=proxy)
            _negotiate_proxy(io, proxy, target)
        if context is not None and server_hostname is not None:
            io.start_tls(context, server_hostname)
        sock, leftover = _upgrade(io, target, extra)
    except BaseException:
        io.close()
        raise
    io.release()
    if cancel.cancelled:  # cancelled while we were finishing: honour it, the caller may be stopping
        _close_quietly(sock)
        raise DialCancelled(f"dial to {target.shown} cancelled", url=target.shown, phase="upgrade")
    return sock, leftover


def _parse_target(url: str) -> _Target:
    expected = "url: expected a ws:// or wss:// URL"
    if not isinstance(url, str):
        raise ConfigurationError(f"{expected}, got a {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"{expected}, got {_redact_url(url.partition('?')[0])!r}") from None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("ws", "wss") or not host:
        raise ConfigurationError(f"{expected}, got {_redact_url(url.partition('?')[0])!r}")
    secure = scheme == "wss"
    default_port = 443 if secure else 80
    port = port or default_port
    path = parts.path or "/"
    if any(c in path + parts.query for c in " \r\n\t"):
        raise ConfigurationError("url: the path and query must be URL-encoded (no spaces or line breaks)")
    resource = f"{path}?{parts.query}" if parts.query else path
    netloc = host if port == default_port else _host_port(host, port)
    if ":" in host and port == default_port:
        netloc = f"[{host}]"
    return _Target(secure, host, port, resource, f"{scheme}://{netloc}{path}")


def _check_headers(headers: Sequence[str], user_agent: str) -> list[str]:
    if isinstance(headers, (str, bytes)):
        raise ConfigurationError("headers: expected a sequence of 'Name: value' strings, got a single string")
    if not isinstance(user_agent, str) or "\r" in user_agent or "\n" in user_agent:
        raise ConfigurationError("user_agent: expected a string without line breaks")
    out = []
    for line in headers:
        name, colon, _ = line.partition(":") if isinstance(line, str) else (type(line).__name__, "", "")
        if not colon or not name.strip() or name != name.strip() or "\r" in line or "\n" in line:
            raise ConfigurationError(f"headers: expected 'Name: value' without line breaks, got one named {name!r}")
        out.append(line)
    out.append(f"User-Agent: {user_agent}")
    return out


def ssl_context(sslopt: dict[str, Any]) -> ssl.SSLContext:
    """An SSLContext honouring websocket-client's common ``sslopt`` keys; unknown keys are an error
    (a silently ignored security option is worse than a clear message)."""
    if not isinstance(sslopt, dict):
        raise ConfigurationError(f"sslopt: expected a dict, got a {type(sslopt).__name__}")
    unknown = sorted(set(sslopt) - _SSLOPT_KEYS)
    if unknown:
        raise ConfigurationError(f"sslopt: unsupported keys {unknown}; supported: {sorted(_SSLOPT_KEYS)}")
    given = sslopt.get("context")
    if given is not None:
        if not isinstance(given, ssl.SSLContext):
            raise ConfigurationError("sslopt: 'context' must be an ssl.SSLContext")
        return given
    cafile = sslopt.get("ca_certs")
    capath = sslopt.get("ca_cert_path")
    bundle = os.environ.get("WEBSOCKET_CLIENT_CA_BUNDLE")  # as websocket-client does
    if bundle and cafile is None and capath is None:
        if os.path.isfile(bundle):
            cafile = bundle
        elif os.path.isdir(bundle):
            capath = bundle
    try:
        context = ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigurationError(f"sslopt: cannot load the CA certificates: {exc}") from exc
    cert_reqs = sslopt.get("cert_reqs", ssl.CERT_REQUIRED)
    check_hostname = sslopt.get("check_hostname")
    if cert_reqs == ssl.CERT_NONE:
        if check_hostname:
            raise ConfigurationError("sslopt: check_hostname cannot be enabled when cert_reqs is CERT_NONE")
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = True if check_hostname is None else bool(check_hostname)
        context.verify_mode = cert_reqs
    if sslopt.get("certfile"):
        try:
            context.load_cert_chain(sslopt["certfile"], sslopt.get("keyfile"), sslopt.get("password"))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigurationError(f"sslopt: cannot load the client certificate: {type(exc).__name__}") from exc
    if sslopt.get("ciphers"):
        try:
            context.set_ciphers(sslopt["ciphers"])
        except ssl.SSLError as exc:
            raise ConfigurationError("sslopt: no usable cipher in 'ciphers'") from exc
    return context


class _Io:
    """The dial's socket plus its selector, wake-up pair, deadline and cancel check."""

    def __init__(self, shown: str, cancel: Cancel, deadline: float) -> None:
        self.shown = shown
        self.cancel = cancel
        self.deadline = deadline
        self.phase = "resolve"
        self.sock: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    # ---- lifecycle

    def _setup_waker(self) -> selectors.BaseSelector:
        if self._selector is None:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            self.cancel._attach(self._wake_w)
        return self._selector

    def _teardown_waker(self) -> None:
        if self._selector is not None:
            self.cancel._detach()  # under the Cancel's lock: no poke after this returns
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
            _close_quietly(self.sock)
            self.sock = None

    def release(self) -> None:
        """Success path: close the helpers, keep the socket."""
        self._teardown_waker()

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
        try:
            selector.select(max(0.0, end - time.monotonic()))
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for safety
            pass
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
        self.phase = "resolve"
        self.check()
        try:
            infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            self.check()
            raise ConnectFailed(f"cannot resolve {host!r}: {_strerror(exc)}", url=self.shown,
                                phase="resolve") from exc
        self.check()
        return infos

    def connect(self, host: str, port: int, *, via: Proxy | None) -> None:
        what = f"proxy {_host_port(host, port)}" if via is not None else _host_port(host, port)
        try:
            infos = self.resolve(host, port)
        except ConnectFailed as exc:
            if via is not None:
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
        message = f"cannot connect to {what}: {_strerror(last) if last else 'no address'}"
        if via is not None:
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
            raise TLSFailed(f"TLS setup for {self.shown} failed: {_ssl_reason(exc)}", url=self.shown) from exc
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
                                f"{_one_line(exc.verify_message or _ssl_reason(exc), 160)}",
                                url=self.shown, verify_failed=True) from exc
            except (ssl.SSLError, OSError) as exc:
                if self.cancel.cancelled:
                    self.cancelled()
                raise TLSFailed(f"TLS handshake with {self.shown} failed: {_ssl_reason(exc)}",
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

    def recv_some(self, limit: int = 65536, *, peek: bool = False) -> bytes:
        """At least one byte, or b"" at end of stream (``peek``: leave them in the socket; plain sockets only)."""
        assert self.sock is not None
        while True:
            self.check()
            try:
                return self.sock.recv(limit, socket.MSG_PEEK) if peek else self.sock.recv(limit)
            except (BlockingIOError, ssl.SSLWantReadError):
                self.wait(selectors.EVENT_READ)
            except ssl.SSLWantWriteError:
                self.wait(selectors.EVENT_WRITE)
            except OSError as exc:
                self.lost(exc)

    def recv_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.recv_some(n)
            if not chunk:
                self.lost(None)
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def lost(self, exc: OSError | None) -> NoReturn:
        if self.cancel.cancelled:
            self.cancelled()
        what = f"connection closed during {_PHASES[self.phase]}" if exc is None else \
            f"connection lost during {_PHASES[self.phase]}: {_strerror(exc)}"
        message = f"{self.shown}: {what}"
        if self.phase == "proxy":
            raise ProxyError(message, url=self.shown) from exc
        if self.phase == "upgrade":
            raise BadHandshake(message, url=self.shown, phase="upgrade") from exc
        if self.phase == "tls":
            raise TLSFailed(message, url=self.shown) from exc
        raise ConnectFailed(message, url=self.shown, phase=self.phase) from exc

    def read_head(self, *, exact: bool) -> tuple[str, list[tuple[str, str]], bytes]:
        """Read an HTTP response head, bounded in bytes and lines: (status line, fields, leftover).

        ``exact`` consumes nothing past the head (peeks first): for proxy answers on a plain socket.
        """
        buf = bytearray()
        lines = 0
        while True:
            if len(buf) >= MAX_HEADER_BYTES:
                self.too_big(f"more than {MAX_HEADER_BYTES} bytes")
            chunk = self.recv_some(MAX_HEADER_BYTES - len(buf), peek=exact)
            if not chunk:
                self.lost(None)
            start = len(buf)
            combined = buf + chunk
            end = combined.find(b"\r\n\r\n", max(0, start - 3))
            if exact:  # consume exactly what belongs to the head
                take = len(chunk) if end < 0 else end + 4 - start
                buf += self.recv_exact(take)
            else:
                buf = combined
            lines += buf.count(b"\r\n", max(0, start - 1), end + 2 if end >= 0 else len(buf))
            if lines > MAX_HEADER_LINES + 1:
                self.too_big(f"more than {MAX_HEADER_LINES} lines")
            if end >= 0:
                break
        head, leftover = bytes(buf[:end]), bytes(buf[end + 4:])
        text = head.decode("latin-1").split("\r\n")
        fields = []
        for line in text[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                self.malformed("a malformed header line")
            fields.append((name.lower(), value.strip(" \t")))
        return text[0], fields, leftover

    def too_big(self, what: str) -> NoReturn:
        self.malformed(f"response headers too large ({what})")

    def malformed(self, what: str) -> NoReturn:
        message = f"{self.shown}: {what} in the {'proxy' if self.phase == 'proxy' else 'upgrade'} answer"
        if self.phase == "proxy":
            raise ProxyError(message, url=self.shown)
        raise BadHandshake(message, url=self.shown, phase=self.phase)


class _AttemptTimedOut(Exception):
    """One address of several took its share of the budget."""


_PHASES = {"resolve": "name resolution", "connect": "TCP connect", "proxy": "proxy negotiation",
           "tls": "TLS handshake", "upgrade": "WebSocket upgrade"}


def _strerror(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return _one_line(str(exc) or type(exc).__name__, 160)


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return _strerror(exc)


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:  # pragma: no cover
        pass


def _status(line: str) -> tuple[int, str] | None:
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (len(parts[1]) == 3 and parts[1].isdigit()):
        return None
    reason = parts[2] if len(parts) == 3 else ""
    return int(parts[1]), "".join(c for c in reason if c.isprintable())[:100]


# --------------------------------------------------------------------------------------------
# Proxies


def _negotiate_proxy(io: _Io, proxy: Proxy, target: _Target) -> None:
    io.phase = "proxy"
    if proxy.scheme == "http":
        _http_connect(io, proxy, target)
    elif proxy.scheme.startswith("socks4"):
        _socks4(io, proxy, target)
    else:
        _socks5(io, proxy, target)


def _http_connect(io: _Io, proxy: Proxy, target: _Target) -> None:
    authority = _host_port(target.host, target.port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.username is not None:
        token = base64.b64encode(f"{proxy.username}:{proxy.password or ''}".encode()).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    io.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
    status_line, _, _ = io.read_head(exact=True)
    parsed = _status(status_line)
    if parsed is None:
        io.malformed("not an HTTP status line")
    status, reason = parsed
    if 200 <= status < 300:
        return
    where = f"proxy {_host_port(proxy.host, proxy.port)}"
    if status == 407:
        why = "rejected the credentials" if proxy.username is not None else "requires credentials"
        raise ProxyError(f"{where} {why} (407 {reason})".rstrip(), url=io.shown, status=407)
    raise ProxyError(f"{where} refused CONNECT to {authority}: {status} {reason}".rstrip(), url=io.shown,
                     status=status)


_SOCKS5_REPLIES = {1: "general failure", 2: "connection not allowed by ruleset", 3: "network unreachable",
                   4: "host unreachable", 5: "connection refused", 6: "TTL expired", 7: "command not supported",
                   8: "address type not supported"}
_SOCKS4_REPLIES = {0x5B: "request rejected or failed", 0x5C: "identd unreachable",
                   0x5D: "user id not confirmed by identd"}


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _local_address(io: _Io, host: str, port: int, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = _ip(host)
    if ip is None:
        phase = io.phase
        infos = io.resolve(host, port, family)
        io.phase = phase
        ip = ipaddress.ip_address(infos[0][4][0])
    return ip


def _socks_fail(io: _Io, proxy: Proxy, what: str) -> NoReturn:
    raise ProxyError(f"{proxy.scheme} proxy {_host_port(proxy.host, proxy.port)}: {what}", url=io.shown)


def _socks4(io: _Io, proxy: Proxy, target: _Target) -> None:
    user = (proxy.username or "").encode()
    port = target.port.to_bytes(2, "big")
    ip = _ip(target.host)
    if proxy.scheme == "socks4a" and ip is None:
        request = b"\x04\x01" + port + b"\x00\x00\x00\x01" + user + b"\x00" + target.host.encode("idna") + b"\x00"
    else:
        addr = _local_address(io, target.host, target.port, socket.AF_INET)
        if addr.version != 4:
            _socks_fail(io, proxy, "SOCKS4 cannot reach an IPv6 address")
        request = b"\x04\x01" + port + addr.packed + user + b"\x00"
    io.send_all(request)
    reply = io.recv_exact(8)
    if reply[0] != 0:
        _socks_fail(io, proxy, "not a SOCKS4 answer")
    if reply[1] != 0x5A:
        _socks_fail(io, proxy, _SOCKS4_REPLIES.get(reply[1], f"failure code {reply[1]:#x}"))


def _socks5(io: _Io, proxy: Proxy, target: _Target) -> None:
    methods = b"\x00\x02" if proxy.username is not None else b"\x00"
    io.send_all(b"\x05" + bytes([len(methods)]) + methods)
    version, method = io.recv_exact(2)
    if version != 5:
        _socks_fail(io, proxy, "not a SOCKS5 answer")
    if method == 2 and proxy.username is not None:
        user, password = proxy.username.encode(), (proxy.password or "").encode()
        io.send_all(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        _, status = io.recv_exact(2)
        if status != 0:
            raise ProxyError(f"socks5 proxy {_host_port(proxy.host, proxy.port)} rejected the credentials",
                             url=io.shown)
    elif method == 0xFF:
        _socks_fail(io, proxy, "no acceptable authentication method" +
                    ("" if proxy.username is not None else " (does it need credentials?)"))
    elif method != 0:
        _socks_fail(io, proxy, f"chose an authentication method we did not offer ({method})")
    ip = _ip(target.host)
    if ip is None and proxy.scheme == "socks5":
        ip = _local_address(io, target.host, target.port, socket.AF_UNSPEC)
    if ip is None:
        name = target.host.encode("idna")
        if len(name) > 255:
            _socks_fail(io, proxy, "host name too long for SOCKS5")
        address = b"\x03" + bytes([len(name)]) + name
    else:
        address = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
    io.send_all(b"\x05\x01\x00" + address + target.port.to_bytes(2, "big"))
    version, rep, _, atyp = io.recv_exact(4)
    if version != 5:
        _socks_fail(io, proxy, "not a SOCKS5 answer")
    if rep != 0:
        _socks_fail(io, proxy, _SOCKS5_REPLIES.get(rep, f"failure code {rep}"))
    if atyp == 1:
        io.recv_exact(4 + 2)
    elif atyp == 4:
        io.recv_exact(16 + 2)
    elif atyp == 3:
        io.recv_exact(io.recv_exact(1)[0] + 2)
    else:
        _socks_fail(io, proxy, f"unknown address type {atyp} in the answer")


# --------------------------------------------------------------------------------------------
# The upgrade


def _upgrade(io: _Io, target: _Target, extra: list[str]) -> tuple[socket.socket, bytes]:
    io.phase = "upgrade"
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    default_port = 443 if target.secure else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != default_port:
        host = f"{host}:{target.port}"
    lines = [f"GET {target.resource} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", *extra]
    io.send_all(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
    status_line, fields, leftover = io.read_head(exact=False)
    parsed = _status(status_line)
    if parsed is None:
        io.malformed("not an HTTP status line")
    status, reason = parsed
    values: dict[str, str] = {}
    for name, value in fields:
        values[name] = f"{values[name]}, {value}" if name in values else value
    if status != 101:
        retry_after = _retry_after(values.get("retry-after"))
        after = f"; retry after {retry_after:.0f}s" if retry_after is not None else ""
        raise HandshakeRejected(f"{target.shown} rejected the WebSocket upgrade: {status} {reason}{after}",
                                url=target.shown, status=status, reason=reason, retry_after=retry_after)

    def bad(what: str) -> NoReturn:
        raise BadHandshake(f"{target.shown}: invalid WebSocket upgrade answer: {what}", url=target.shown,
                           phase="upgrade")

    if values.get("upgrade", "").strip().lower() != "websocket":
        bad("no 'Upgrade: websocket'")
    if "upgrade" not in [t.strip().lower() for t in values.get("connection", "").split(",")]:
        bad("no 'Connection: Upgrade'")
    expected = base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")
    if values.get("sec-websocket-accept", "").strip() != expected:
        bad("wrong Sec-WebSocket-Accept")
    if values.get("sec-websocket-extensions", "").strip():
        bad("an extension we did not ask for")
    if values.get("sec-websocket-protocol", "").strip():
        bad("a subprotocol we did not ask for")
    sock = io.sock
    assert sock is not None
    io._unregister()
    sock.setblocking(True)
    return sock, leftover


def _retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date (never negative); None if absent
    or unparsable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:  # pragma: no cover - older Pythons
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now())
