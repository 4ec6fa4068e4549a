"""The exception hierarchy. Every error the library reports is a ``KiyotakaError``."""

from __future__ import annotations

from typing import Any, Callable


class KiyotakaError(Exception):
    """Base class of every error raised or reported by kiyotaka_ws."""


class ConfigurationError(KiyotakaError, ValueError):
    """A bad argument: the message names the argument and what is accepted."""


class AuthenticationError(KiyotakaError):
    """The server rejected the API key. Fatal: the client stops retrying it."""


class SubscriptionError(KiyotakaError):
    """The server rejected a subscription.

    ``channel`` is the wire channel object (a dict), ``code`` and ``message`` what the server said.
    """

    def __init__(self, message: str, *, channel: dict[str, Any] | None = None,
                 code: Any = None, server_message: str | None = None) -> None:
        super().__init__(message)
        self.channel = channel
        self.code = code
        self.message = server_message if server_message is not None else message


class ServerError(KiyotakaError):
    """An error frame from the server that answers no request of ours."""

    def __init__(self, message: str, *, code: Any = None, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


class RateLimited(KiyotakaError):
    """A warning, not a failure: the server kept refusing requests as too many (a rate limit).

    Passed to ``on_error`` once after ``failures`` rate-limit rejections in a row on ``family``;
    the channels are never rejected for it: the session keeps re-sending them after a backoff that
    honours the server's ``retry_after`` (seconds, or None when it gave none).
    """

    def __init__(self, message: str, *, family: str = "", failures: int = 0,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.family = family
        self.failures = failures
        self.retry_after = retry_after


class DecodeError(KiyotakaError):
    """A frame or point that could not be decoded; ``excerpt`` shows its start."""

    def __init__(self, message: str, *, excerpt: str = "") -> None:
        super().__init__(f"{message}: {excerpt}" if excerpt else message)
        self.excerpt = excerpt


class HandlerError(KiyotakaError):
    """A user handler raised; the original exception is ``__cause__``."""

    def __init__(self, message: str, *, event: Any = None,
                 handler: Callable[..., Any] | None = None) -> None:
        super().__init__(message)
        self.event = event
        self.handler = handler


class EventsDropped(KiyotakaError):
    """The queue was full and the overflow policy dropped ``count`` frames (each one or more events)."""

    def __init__(self, count: int, *, family: str = "", reason: str = "queue full (handlers too slow)") -> None:
        where = f" on {family}" if family else ""
        super().__init__(f"{count} frames of events dropped{where}: {reason}")
        self.count = count
        self.family = family


class ConnectionFailedError(KiyotakaError):
    """An endpoint family gave up for good.

    Raised (and passed to ``on_error``) when the server answered the WebSocket upgrade with HTTP
    400, 404 or 410 (a wrong URL), when the ``max_retries`` retries after a failed attempt failed
    too (``max_retries + 1`` failed attempts in a row, see ``gave_up``), or when the connection
    was lost with ``reconnect=False``. ``family`` is ``"book"`` or ``"nonbook"``,
    ``status`` the HTTP status of the answer (or None), and ``url`` the endpoint without its query
    string, credentials shown as ``***@`` (it never holds the key): the library redacts it where it
    raises the error (``redact_url``), since this module, the vocabulary, imports nothing of the
    transport that knows URLs.
    """

    def __init__(self, message: str, *, family: str = "", status: int | None = None,
                 url: str | None = None) -> None:
        self.family = family
        self.status = status
        self.url = url
        super().__init__(message)


def gave_up(failures: int, max_retries: int, last: str | None) -> str:
    """How a give-up after ``max_retries`` reads, everywhere: ``max_retries=N`` retries N times
    after a failed attempt, so the family gives up at the (N+1)th failed attempt in a row::

        gave up after 3 failed attempts in a row (max_retries=2); last: connection refused
    """
    attempts = "1 failed attempt" if failures == 1 else f"{failures} failed attempts in a row"
    return f"gave up after {attempts} (max_retries={max_retries}); last: {last}"


class ClientStoppedError(KiyotakaError):
    """The client was stopped: raised by ``Subscription.wait()`` once it is, and by registering a
    handler or calling ``start()`` on a stopped client (create a new ``KiyotakaClient`` instead)."""
