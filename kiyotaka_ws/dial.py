"""TEMPORARY stand-in for dial.py (replaced by the real module on merge)."""
from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import attrs
import websocket

from .errors import ConfigurationError


@attrs.frozen(repr=False)
class Proxy:
    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> Proxy:
        from urllib.parse import urlsplit
        parts = urlsplit(url) if isinstance(url, str) else None
        try:
            port = parts.port if parts else None
        except ValueError:
            port = None
        if parts is None or parts.scheme not in ("http", "socks4", "socks4a", "socks5", "socks5h") or not parts.hostname or not port:
            raise ConfigurationError("proxy: expected 'http://host:port' or 'socks5://host:port'")
        return cls(parts.scheme, parts.hostname, port, parts.username, parts.password)

class DialError(Exception):
    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url

class HandshakeRejected(DialError):
    def __init__(self, message: str, url: str, status: int, reason: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, url)
        self.status, self.reason, self.retry_after = status, reason, retry_after

class ProxyError(DialError):
    status: int | None = None

class DialCancelled(DialError):
    pass

class Cancel:
    def __init__(self) -> None:
        self.cancelled = False
        self.ws: Any = None
    def cancel(self) -> None:
        self.cancelled = True
        ws = self.ws
        if ws is not None and ws.sock is not None:
            try:
                ws.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def dial(url: str, *, timeout: float, cancel: Cancel, sslopt: dict[str, Any] | None = None,
         proxy: Proxy | None = None, headers: Sequence[str] = (), user_agent: str = "kiyotaka-ws") -> tuple[socket.socket, bytes]:
    ws = websocket.WebSocket(sslopt=sslopt, skip_utf8_validation=True)
    cancel.ws = ws
    kwargs: dict[str, Any] = {"timeout": timeout, "suppress_origin": True}
    if proxy:
        kwargs.update(proxy_type=proxy.scheme, http_proxy_host=proxy.host, http_proxy_port=proxy.port)
    try:
        ws.connect(url, **kwargs)
    except websocket.WebSocketBadStatusException as exc:
        raise HandshakeRejected(f"HTTP {exc.status_code}", url, exc.status_code) from None
    except Exception as exc:
        if cancel.cancelled:
            raise DialCancelled("cancelled", url) from None
        raise DialError(f"{type(exc).__name__}: {exc}", url) from exc
    if cancel.cancelled:
        ws.sock.close()
        raise DialCancelled("cancelled", url)
    sock = ws.sock
    sock.settimeout(None)
    return sock, b""
