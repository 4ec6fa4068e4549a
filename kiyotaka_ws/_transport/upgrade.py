"""The WebSocket upgrade, done by websocket-client over our ``Stream``.

websocket-client builds the request and its ``Sec-WebSocket-Key`` (``_handshake._get_handshake_headers``),
reads and parses the answer's head (``_http.read_headers``, via ``head.read_head``) and checks the
``Upgrade``, ``Connection`` and ``Sec-WebSocket-Accept`` fields (``_handshake._validate``). Here:
the bounded, cancellable I/O (``Stream``), the typed failures (``HandshakeRejected`` with status,
reason and ``Retry-After``; ``BadHandshake`` naming what is wrong) and the refusal of an extension
or subprotocol we did not ask for (websocket-client does not check those).

Not ``websocket.WebSocket.connect(socket=...)``/``_handshake.handshake``: on a non-101 answer
they read the body up to any ``Content-Length`` (a stall until the deadline, or an endless read);
on a redirect ``connect`` opens a new socket of its own (not ours: not cancellable, not through
the proxy); and on a failed check they say only "Invalid WebSocket Header". These are private
functions of websocket-client, with the same signatures from 1.6.0 to 1.9.2 (the tests pin the
behaviour). websocket-client's global cookie jar is never filled by this path (only its
``handshake_response`` adds to it), so no cookie is sent unless other code in the process used
websocket-client's own handshake against the same host.
"""

from __future__ import annotations

import datetime
import email.utils
import time
from collections.abc import Sequence
from typing import Callable, NoReturn

from websocket._handshake import _get_handshake_headers, _validate

from .connect import Stream
from .errors import BadArgument, BadHandshake, HandshakeRejected
from .head import read_head
from .urls import Target

__all__ = ["check_headers", "retry_after", "upgrade"]


def check_headers(headers: Sequence[str], user_agent: str | None) -> list[str]:
    """The extra request header lines, ``User-Agent`` (if any) last; ``BadArgument`` for line breaks."""
    if isinstance(headers, (str, bytes)):
        raise BadArgument("headers: expected a sequence of 'Name: value' strings, got a single string")
    if user_agent is not None and (not isinstance(user_agent, str) or "\r" in user_agent or "\n" in user_agent):
        raise BadArgument("user_agent: expected a string without line breaks")
    out = []
    for line in headers:
        name, colon, _ = line.partition(":") if isinstance(line, str) else (type(line).__name__, "", "")
        if not colon or not name.strip() or name != name.strip() or "\r" in line or "\n" in line:
            raise BadArgument(f"headers: expected 'Name: value' without line breaks, got one named {name!r}")
        out.append(line)
    if user_agent is not None:
        out.append(f"User-Agent: {user_agent}")
    return out


def upgrade(stream: Stream, target: Target, extra: list[str]) -> None:
    """Send the upgrade request and check the 101 answer; nothing past its head is read."""
    stream.phase = "upgrade"
    scheme = "wss" if target.secure else "ws"
    options = {"host": target.host_header, "suppress_origin": True, "header": extra}
    lines, key = _get_handshake_headers(target.resource, f"{scheme}://{target.host_header}", target.host,
                                        target.port, options)
    stream.send_all("\r\n".join(lines).encode("utf-8"))
    status, reason, fields = read_head(stream)
    if status != 101:
        after = retry_after(fields.get("retry-after"))
        shown_after = f"; retry after {after:.0f}s" if after is not None else ""
        raise HandshakeRejected(f"{target.shown} rejected the WebSocket upgrade: {status} {reason}{shown_after}",
                                url=target.shown, status=status, reason=reason, retry_after=after)

    def bad(what: str) -> NoReturn:
        raise BadHandshake(f"{target.shown}: invalid WebSocket upgrade answer: {what}", url=target.shown,
                           phase="upgrade")

    valid, _ = _validate(fields, key, None)
    if not valid:  # say which check failed
        if fields.get("upgrade", "").strip().lower() != "websocket":
            bad("no 'Upgrade: websocket'")
        if "upgrade" not in [t.strip().lower() for t in fields.get("connection", "").split(",")]:
            bad("no 'Connection: Upgrade'")
        bad("wrong Sec-WebSocket-Accept")
    if fields.get("sec-websocket-extensions", "").strip():
        bad("an extension we did not ask for")
    if fields.get("sec-websocket-protocol", "").strip():
        bad("a subprotocol we did not ask for")


def retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
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
