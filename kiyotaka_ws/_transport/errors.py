"""The transport's failures: one tree, one-line messages, no secrets.

```
ValueError
 └── BadArgument            a bad argument ("name: what was expected"), before any traffic
Exception
 └── DialError              the dial failed; .url (no query, no credentials), .phase, .retryable
      ├── ConnectFailed     name resolution or TCP connect
      ├── DialTimeout       the whole dial's budget ran out
      ├── TLSFailed         .verify_failed: the certificate was not trusted
      ├── BadHandshake      the upgrade answer is not a valid WebSocket upgrade
      ├── HandshakeRejected a non-101 answer: .status, .reason, .retry_after
      ├── ProxyError        the proxy failed us: .status (an HTTP status, or None for SOCKS)
      └── DialCancelled     Cancel.cancel() was called
```

They know nothing of Kiyotaka: the session maps them to its own errors (``AuthenticationError``,
``ConnectionFailedError``) and the client maps ``BadArgument`` to ``ConfigurationError``.
"""

from __future__ import annotations

__all__ = ["BadArgument", "BadHandshake", "ConnectFailed", "DialCancelled", "DialError", "DialTimeout",
           "HandshakeRejected", "ProxyError", "TLSFailed", "one_line"]

# 4xx answers that say "later", not "never".
_TRANSIENT_4XX = frozenset({408, 425, 429})


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line (runs of whitespace made one space), cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class BadArgument(ValueError):
    """A bad argument; the message starts with the argument's name and never holds a password."""


class DialError(Exception):
    """The dial failed. ``str()`` is one line without secrets; ``url`` is the target without its query.

    ``phase`` is where it failed (``"resolve"``, ``"connect"``, ``"proxy"``, ``"tls"``, ``"upgrade"``);
    ``retryable`` is False for failures that retrying the same configuration will not fix.
    """

    retryable: bool = True

    def __init__(self, message: str, *, url: str, phase: str = "") -> None:
        super().__init__(one_line(message))
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
