"""``dial``: a connected, upgraded WebSocket socket, cancellably, with typed failures.

The phases, each in its own module: TCP connect and TLS (``connect``, the project's own
non-blocking code, cancellable at every wait), the proxy (``proxy``: socksio for SOCKS, an HTTP
CONNECT whose answer websocket-client reads), the upgrade (``upgrade``: websocket-client).
``timeout`` is the budget of the whole dial; bad arguments raise ``BadArgument`` before any
traffic.

``sslopt`` (wss only) honours websocket-client's common keys (see ``tls.ssl_context``); without it
the context is ``ssl.create_default_context()``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from typing import Any

from .connect import Cancel, Stream, close_quietly
from .errors import BadArgument, DialCancelled
from .proxy import Proxy, negotiate
from .tls import ssl_context
from .upgrade import check_headers, upgrade
from .urls import parse_target

__all__ = ["dial"]


def dial(url: str, *, timeout: float, cancel: Cancel, sslopt: dict[str, Any] | None = None,
         proxy: Proxy | None = None, headers: Sequence[str] = (),
         user_agent: str | None = None) -> tuple[socket.socket, bytes]:
    """Connect (TCP, optional proxy, optional TLS for wss), do the WebSocket upgrade, and return
    ``(sock, leftover)``. ``leftover`` is always ``b""``: the upgrade answer is read byte by byte up
    to its end (see ``head``), so the server's first frames are still in the socket. (Kept in the
    signature for the frame reader, which takes bytes read ahead.)

    ``headers`` are extra request lines (``"Name: value"``), ``user_agent`` the ``User-Agent`` value
    (none by default). ``timeout`` is the total budget for the whole dial (name resolution included, though that part
    cannot be cut short). The socket comes back in blocking mode with no timeout and TCP_NODELAY set.
    Raises ``DialError`` subclasses (the OS or TLS exception is the ``__cause__``) and
    ``BadArgument`` for bad arguments. A ``cancel()`` that comes after ``dial`` returned only
    sets ``cancel.cancelled``; the caller owns the socket from then on.
    """
    target = parse_target(url)
    context = server_hostname = None
    if target.secure:
        context = ssl_context({} if sslopt is None else sslopt)
        server_hostname = (sslopt or {}).get("server_hostname") or target.host
    extra = check_headers(headers, user_agent)
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise BadArgument(f"timeout: expected a positive number of seconds, got {timeout!r}")
    deadline = time.monotonic() + float(timeout)
    if cancel.cancelled:
        raise DialCancelled(f"dial to {target.shown} cancelled", url=target.shown, phase="resolve")

    stream = Stream(target.shown, cancel, deadline)
    try:
        if proxy is None:
            stream.connect(target.host, target.port, to_proxy=False)
        else:
            stream.connect(proxy.host, proxy.port, to_proxy=True)
            negotiate(stream, proxy, target.host, target.port)
        if context is not None and server_hostname is not None:
            stream.start_tls(context, server_hostname)
        upgrade(stream, target, extra)
        sock = stream.release()
    except BaseException:
        stream.close()
        raise
    if cancel.cancelled:  # cancelled while we were finishing: honour it, the caller may be stopping
        close_quietly(sock)
        raise DialCancelled(f"dial to {target.shown} cancelled", url=target.shown, phase="upgrade")
    return sock, b""
