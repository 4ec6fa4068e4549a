"""The transport: a connected, upgraded WebSocket socket, and nothing of Kiyotaka.

``dial`` (``dial.py``) runs the phases: ``connect.py`` (cancellable TCP connect and TLS, the
bounded byte stream the handshakes read from), ``proxy.py`` (HTTP CONNECT, SOCKS4/4a/5/5h via
socksio), ``upgrade.py`` (the WebSocket upgrade via websocket-client), ``head.py`` (one HTTP answer
head via websocket-client's reader), ``tls.py`` (``sslopt``), ``urls.py`` (target parsing and the
one URL redactor), ``errors.py`` (the failure tree). The framing after the upgrade is ``wire.py``.

This package imports nothing from ``kiyotaka_ws`` outside itself: its failures are its own
(``DialError``, ``BadArgument``) and its callers map them.
"""

from .connect import MAX_HEADER_BYTES, MAX_HEADER_LINES, Cancel
from .dial import dial
from .errors import (
    BadArgument,
    BadHandshake,
    ConnectFailed,
    DialCancelled,
    DialError,
    DialTimeout,
    HandshakeRejected,
    ProxyError,
    TLSFailed,
    one_line,
)
from .proxy import PROXY_SCHEMES, Proxy
from .tls import ssl_context
from .urls import redact_url

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_HEADER_LINES",
    "PROXY_SCHEMES",
    "BadArgument",
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
    "one_line",
    "redact_url",
    "ssl_context",
]
