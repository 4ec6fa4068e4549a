"""Proxies: ``Proxy`` (parsed from a URL, password never shown) and ``negotiate`` over a ``Stream``.

Who does what:

* SOCKS4/4a/5/5h: the requests are built and the replies decoded by **socksio** (sans-I/O,
  pure Python, no dependencies; the SOCKS layer of httpcore/httpx). We do the I/O over the
  cancellable ``Stream`` and read each reply by its length (socksio decodes whole messages and
  does not frame them: 2 bytes for a method or RFC 1929 reply, 8 for SOCKS4, 4 + address + 2 for
  SOCKS5).
* HTTP CONNECT: the answer is read by websocket-client's HTTP reader (``head.read_head``, byte by
  byte, so nothing of the tunnel is read with it); the three-line request is written here, since
  websocket-client's own ``_tunnel`` neither brackets IPv6 literals, nor reports the status as a
  number, and it traces the ``Proxy-Authorization`` header when tracing is on.

Why not python-socks: its public sync API (3.2.1) always opens its own TCP connection
(``SyncProxy.connect`` calls ``connect_tcp``: blocking, not cancellable by ``stop()``); the
socket-owning ``_socket=`` argument was deprecated in 2.8 and removed in 3.0, and its connectors
(which could run over our stream) are private. It also
encodes credentials as ASCII and skips authentication when the password is empty.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
from typing import NoReturn
from urllib.parse import unquote, urlsplit

import attrs
from socksio import ProtocolError, socks4, socks5

from .connect import Stream
from .errors import BadArgument, ProxyError
from .head import read_head
from .urls import host_port, redact_url

__all__ = ["PROXY_SCHEMES", "Proxy", "negotiate"]

PROXY_SCHEMES = ("http", "socks4", "socks4a", "socks5", "socks5h")


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

        Raises ``BadArgument`` naming ``proxy``; the message never contains the password.
        """
        expected = f"proxy: expected 'scheme://[user:password@]host:port' with scheme one of {', '.join(PROXY_SCHEMES)}"
        if not isinstance(url, str):
            raise BadArgument(f"{expected}, got a {type(url).__name__}")
        shown = redact_url(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise BadArgument(f"{expected}, got {shown!r}") from None
        scheme = parts.scheme.lower()
        if scheme not in PROXY_SCHEMES or not parts.hostname or not port:
            raise BadArgument(f"{expected}, got {shown!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise BadArgument(f"{expected} (no path or query), got {shown!r}")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if password is not None and username is None:
            raise BadArgument(f"proxy: a password needs a user name, got {shown!r}")
        if scheme.startswith("socks5") and username is not None and (
                len(username.encode()) > 255 or len((password or "").encode()) > 255):
            raise BadArgument("proxy: SOCKS5 user name and password are limited to 255 bytes each")
        if scheme.startswith("socks4") and password:
            raise BadArgument(f"proxy: SOCKS4 has no passwords (only a user id), got {shown!r}")
        return cls(scheme, parts.hostname, port, username, password)

    def __repr__(self) -> str:
        password = "None" if self.password is None else "'***'"
        return (f"Proxy(scheme={self.scheme!r}, host={self.host!r}, port={self.port!r}, "
                f"username={self.username!r}, password={password})")

    def __str__(self) -> str:
        auth = ""
        if self.username is not None:
            auth = f"{self.username}:***@" if self.password is not None else f"{self.username}@"
        return f"{self.scheme}://{auth}{host_port(self.host, self.port)}"


def negotiate(stream: Stream, proxy: Proxy, host: str, port: int) -> None:
    """Ask the proxy, already connected on ``stream``, for a tunnel to ``host:port``."""
    stream.phase = "proxy"
    if proxy.scheme == "http":
        _http_connect(stream, proxy, host, port)
    elif proxy.scheme.startswith("socks4"):
        _socks4(stream, proxy, host, port)
    else:
        _socks5(stream, proxy, host, port)


def _http_connect(stream: Stream, proxy: Proxy, host: str, port: int) -> None:
    authority = host_port(host, port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.username is not None:
        token = base64.b64encode(f"{proxy.username}:{proxy.password or ''}".encode()).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
    status, reason, _ = read_head(stream)
    if 200 <= status < 300:
        return
    where = f"proxy {host_port(proxy.host, proxy.port)}"
    if status == 407:
        why = "rejected the credentials" if proxy.username is not None else "requires credentials"
        raise ProxyError(f"{where} {why} (407 {reason})".rstrip(), url=stream.shown, status=407)
    raise ProxyError(f"{where} refused CONNECT to {authority}: {status} {reason}".rstrip(), url=stream.shown,
                     status=status)


_SOCKS5_FAILURES = {
    socks5.SOCKS5ReplyCode.GENERAL_SERVER_FAILURE: "general failure",
    socks5.SOCKS5ReplyCode.CONNECTION_NOT_ALLOWED_BY_RULESET: "connection not allowed by ruleset",
    socks5.SOCKS5ReplyCode.NETWORK_UNREACHABLE: "network unreachable",
    socks5.SOCKS5ReplyCode.HOST_UNREACHABLE: "host unreachable",
    socks5.SOCKS5ReplyCode.CONNECTION_REFUSED: "connection refused",
    socks5.SOCKS5ReplyCode.TTL_EXPIRED: "TTL expired",
    socks5.SOCKS5ReplyCode.COMMAND_NOT_SUPPORTED: "command not supported",
    socks5.SOCKS5ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported",
}
_SOCKS4_FAILURES = {
    socks4.SOCKS4ReplyCode.REQUEST_REJECTED_OR_FAILED: "request rejected or failed",
    socks4.SOCKS4ReplyCode.CONNECTION_FAILED: "identd unreachable",
    socks4.SOCKS4ReplyCode.AUTHENTICATION_FAILED: "user id not confirmed by identd",
}
# The length of a SOCKS5 reply's address after its 4-byte head (a name: one length byte first).
_SOCKS5_ADDRESS_LENGTH = {socks5.SOCKS5AType.IPV4_ADDRESS: 4, socks5.SOCKS5AType.IPV6_ADDRESS: 16}


def _fail(stream: Stream, proxy: Proxy, what: str) -> NoReturn:
    raise ProxyError(f"{proxy.scheme} proxy {host_port(proxy.host, proxy.port)}: {what}", url=stream.shown)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolved(stream: Stream, host: str, port: int, family: int) -> str:
    """``host`` as an IP literal, resolved here (socks4, socks5) when it is a name."""
    return host if _is_ip(host) else str(stream.resolve(host, port, family)[0][4][0])


def _socks4(stream: Stream, proxy: Proxy, host: str, port: int) -> None:
    user = (proxy.username or "").encode()
    request: socks4.SOCKS4Request | socks4.SOCKS4ARequest
    if proxy.scheme == "socks4a" and not _is_ip(host):
        request = socks4.SOCKS4ARequest.from_address(socks4.SOCKS4Command.CONNECT, (host.encode("idna"), port), user)
    else:
        address = _resolved(stream, host, port, socket.AF_INET)
        if ":" in address:
            _fail(stream, proxy, "SOCKS4 cannot reach an IPv6 address")
        request = socks4.SOCKS4Request.from_address(socks4.SOCKS4Command.CONNECT, (address, port), user)
    connection = socks4.SOCKS4Connection(user)
    connection.send(request)
    stream.send_all(connection.data_to_send())
    try:
        reply = connection.receive_data(stream.recv_exact(8))
    except ProtocolError:
        _fail(stream, proxy, "not a SOCKS4 answer")
    if reply.reply_code != socks4.SOCKS4ReplyCode.REQUEST_GRANTED:
        _fail(stream, proxy, _SOCKS4_FAILURES[reply.reply_code])


def _socks5(stream: Stream, proxy: Proxy, host: str, port: int) -> None:
    connection = socks5.SOCKS5Connection()
    methods = [socks5.SOCKS5AuthMethod.NO_AUTH_REQUIRED]
    if proxy.username is not None:
        methods.append(socks5.SOCKS5AuthMethod.USERNAME_PASSWORD)
    connection.send(socks5.SOCKS5AuthMethodsRequest(methods))
    stream.send_all(connection.data_to_send())
    try:
        chosen = connection.receive_data(stream.recv_exact(2))
    except ProtocolError:
        _fail(stream, proxy, "not a SOCKS5 answer")
    assert isinstance(chosen, socks5.SOCKS5AuthReply)
    if chosen.method == socks5.SOCKS5AuthMethod.NO_ACCEPTABLE_METHODS:
        _fail(stream, proxy, "no acceptable authentication method" +
              ("" if proxy.username is not None else " (does it need credentials?)"))
    if chosen.method not in methods:
        _fail(stream, proxy, f"chose an authentication method we did not offer ({chosen.method[0]})")
    if chosen.method == socks5.SOCKS5AuthMethod.USERNAME_PASSWORD:
        assert proxy.username is not None
        connection.send(socks5.SOCKS5UsernamePasswordRequest(proxy.username.encode(), (proxy.password or "").encode()))
        stream.send_all(connection.data_to_send())
        verdict = connection.receive_data(stream.recv_exact(2))
        assert isinstance(verdict, socks5.SOCKS5UsernamePasswordReply)
        if not verdict.success:
            raise ProxyError(f"socks5 proxy {host_port(proxy.host, proxy.port)} rejected the credentials",
                             url=stream.shown)
    if proxy.scheme == "socks5":
        host = _resolved(stream, host, port, socket.AF_UNSPEC)
    elif not _is_ip(host):
        host = host.encode("idna").decode("ascii")
        if len(host) > 255:
            _fail(stream, proxy, "host name too long for SOCKS5")
    connection.send(socks5.SOCKS5CommandRequest.from_address(socks5.SOCKS5Command.CONNECT, (host, port)))
    stream.send_all(connection.data_to_send())
    head = stream.recv_exact(4)  # version, reply code, reserved, address type
    try:
        code = socks5.SOCKS5ReplyCode(head[1:2])
        if code != socks5.SOCKS5ReplyCode.SUCCEEDED:  # the rest of a failure reply is often cut short
            _fail(stream, proxy, _SOCKS5_FAILURES[code])
        atype = socks5.SOCKS5AType(head[3:4])
    except ValueError:
        _fail(stream, proxy, "not a SOCKS5 answer")
    length = _SOCKS5_ADDRESS_LENGTH.get(atype)
    if length is None:  # a name: its length byte, the name, the port
        size = stream.recv_exact(1)
        rest = size + stream.recv_exact(size[0] + 2)
    else:
        rest = stream.recv_exact(length + 2)
    try:
        connection.receive_data(head + rest)
    except ProtocolError:
        _fail(stream, proxy, "not a SOCKS5 answer")
