"""The rules for sending many subscriptions to a server with limits: pure, no threads, no clock.

Layer: core (imports only the standard library and attrs). The session core (``session_core``,
whose ordered outbox packs the requests) owns a bucket per connection and passes the time in (``time.monotonic()`` seconds in production, a fake clock in
tests):

- ``TokenBucket``: at most ``rate`` requests per second with a small burst; ``take(now)`` says
  "send now" (0.0) or how many seconds to wait.
- ``classify(error)``: a JSON-RPC (or REST-style) error -> RATE_LIMITED (retry after a delay),
  SUBSCRIPTION_LIMIT (the connection is full: shard) or PERMANENT.
- ``settle_permanent(channels, rejection)``: a batch rejected PERMANENT -> the channels rejected
  for good and the requests to retry (the channels the error named apart, else the two halves),
  so bad channels are isolated in at most ``2 * bad * ceil(log2(n)) + 1`` requests.
  ``named``/``named_exactly``: which channels of a batch an error names.
- ``RateLimitBackoff``: the delay before re-sending rate-limited channels (``retry_after``
  honoured up to a cap, else exponential with full jitter) and the count of consecutive rate-limit
  failures, so the caller warns once after ``warn_after`` of them.

Bounds: the bucket and the backoff hold a few numbers.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Generic, TypeVar

import attrs

RATE_LIMITED, SUBSCRIPTION_LIMIT, PERMANENT = "RATE_LIMITED", "SUBSCRIPTION_LIMIT", "PERMANENT"

T = TypeVar("T")


# -- pacing -----------------------------------------------------------------------------------

class TokenBucket:
    """At most ``rate`` requests per second on average and ``burst`` at once.

    Over any window of ``t`` seconds at most ``rate * t + burst`` requests are let through. The
    bucket starts full at the first ``take``. A clock that steps back counts as no time passed.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if not rate > 0:
            raise ValueError(f"rate: expected a positive number, got {rate!r}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, min(5.0, self.rate))
        if self.burst < 1:
            raise ValueError(f"burst: expected a number >= 1, got {burst!r}")
        self._tokens = self.burst
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now

    def delay(self, now: float) -> float:
        """Seconds until a request may be sent (0.0: now), without taking anything."""
        self._refill(now)
        # a caller waking exactly when told gets its token despite float rounding
        return 0.0 if self._tokens >= 1.0 - 1e-9 else (1.0 - self._tokens) / self.rate

    def take(self, now: float) -> float:
        """Take a token for one request: 0.0 means "send it now" (the token is spent); otherwise
        the seconds to wait before asking again (nothing is spent)."""
        wait = self.delay(now)
        if wait == 0.0:
            self._tokens = max(0.0, self._tokens - 1.0)
        return wait


# -- rejections -------------------------------------------------------------------------------

@attrs.frozen
class Rejection:
    """What a server's error means for the channels of the request it answers.

    ``kind``: ``RATE_LIMITED`` (re-send after a delay, ``retry_after`` seconds when the server
    said), ``SUBSCRIPTION_LIMIT`` (the connection holds as many as it may; ``limit`` is the number
    the server named, if any) or ``PERMANENT``. ``too_large`` marks a PERMANENT rejection of the
    request's size (``TOO_MANY_CHANNELS``): its halves will pass. ``code``/``message``/``data``
    are the error's, as received.
    """

    kind: str
    code: Any = None
    message: str = ""
    data: Any = None
    retry_after: float | None = None
    limit: int | None = None
    too_large: bool = False


_SUBSCRIPTION_LIMIT_MARKS = ("SUBSCRIPTION_LIMIT", "SUBSCRIPTIONS_LIMIT", "TOO_MANY_SUBSCRIPTION",
                             "MAX_SUBSCRIPTIONS", "SUBSCRIPTION_COUNT_EXCEEDED")
_TOO_LARGE_MARKS = ("TOO_MANY_CHANNELS", "TOO_MANY_PARAMS", "TOO_MANY_STREAMS", "TOO_MANY_TOPICS")
_RATE_MARKS = ("RATE_LIMIT", "RATELIMIT", "TOO_MANY_REQUESTS", "TOO_MANY")


def _marks(text: str) -> str:
    """``text`` upper-cased with every run of other characters as one ``_``:
    "Too many subscriptions" -> "TOO_MANY_SUBSCRIPTIONS"."""
    return "_" + re.sub(r"[^A-Z0-9]+", "_", text.upper()) + "_"


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def _field(name: str, *places: Any) -> Any:
    spellings = (name, "retryAfter") if name == "retry_after" else (name,)
    for place in places:
        if isinstance(place, Mapping):
            for spelling in spellings:
                if spelling in place:
                    return place[spelling]
    return None


def classify(error: Any, siblings: Mapping[str, Any] | None = None) -> Rejection:
    """What ``error`` (a JSON-RPC error object ``{"code", "message", "data"?}``, or a REST-style
    string code) means. ``siblings`` are the other keys of the answer (``message``,
    ``retry_after`` next to a string ``error``).

    The checks, in order, on the code and message upper-cased with spaces as ``_``:
    1. ``SUBSCRIPTION_LIMIT`` (or ``TOO_MANY_SUBSCRIPTIONS`` and kin) -> SUBSCRIPTION_LIMIT;
       ``limit`` from ``data.limit`` or the first whole number in the message;
    2. ``TOO_MANY_CHANNELS`` (and kin) -> PERMANENT with ``too_large`` (not a rate limit: waiting
       would not help; its halves pass);
    3. code 429, ``RATE_LIMIT``, ``TOO_MANY_REQUESTS``, ``TOO_MANY``, or a ``retry_after`` field
       -> RATE_LIMITED;
    4. anything else -> PERMANENT.
    ``retry_after`` (or ``retryAfter``; seconds, a number or a numeric string, >= 0) is read from
    ``error.data``, then ``error``, then ``siblings``.
    """
    siblings = siblings or {}
    if isinstance(error, Mapping):
        code, message, data = error.get("code"), error.get("message"), error.get("data")
    else:
        code, message, data = error, siblings.get("message"), siblings.get("data")
    message = message if isinstance(message, str) else ("" if message is None else str(message))
    text = _marks(f"{code if isinstance(code, str) else ''} {message}")
    retry_after = _seconds(_field("retry_after", data, error, siblings))

    def made(kind: str, **more: Any) -> Rejection:
        return Rejection(kind, code, message, data, retry_after, **more)

    if any(mark in text for mark in _SUBSCRIPTION_LIMIT_MARKS):
        limit = _field("limit", data)
        if not (isinstance(limit, int) and not isinstance(limit, bool) and limit > 0):
            number = re.search(r"\d+", message)
            limit = int(number.group()) if number else None
        return made(SUBSCRIPTION_LIMIT, limit=limit)
    if any(mark in text for mark in _TOO_LARGE_MARKS):
        return made(PERMANENT, too_large=True)
    numeric = code if isinstance(code, int) and not isinstance(code, bool) else None
    if isinstance(code, str) and code.strip().isdigit():
        numeric = int(code)
    if numeric == 429 or any(f"_{mark}" in text for mark in _RATE_MARKS) or retry_after is not None:
        return made(RATE_LIMITED)
    return made(PERMANENT)


# -- isolating bad channels ---------------------------------------------------------------------

@attrs.frozen
class Settlement(Generic[T]):
    """What to do with a batch rejected PERMANENT: ``rejected`` channels are final (one
    ``SubscriptionError`` each); each tuple of ``retry`` is a request to send again (paced)."""

    rejected: tuple[T, ...]
    retry: tuple[tuple[T, ...], ...]


def _symbols(channel: Any) -> set[str]:
    if not isinstance(channel, Mapping):
        return set()
    return {v for k in ("symbol", "coin") if isinstance(v := channel.get(k), str) and v}


def named_exactly(channels: Sequence[T], rejection: Rejection) -> tuple[T, ...]:
    """The channels of the batch whose channel object the error carries: in ``data``
    (``channel``/``channels``, or ``data`` itself, a channel object or a list of them)."""
    data = rejection.data
    objects: list[Any] = []
    if isinstance(data, Mapping):
        for key in ("channel", "channels"):
            value = data.get(key)
            objects.extend(value if isinstance(value, list) else [value])
        objects.append(data)
    elif isinstance(data, list):
        objects.extend(data)
    return tuple(c for c in channels if any(_same(c, o) for o in objects))


def named(channels: Sequence[T], rejection: Rejection,
          symbols: Callable[[T], set[str]] = _symbols) -> tuple[T, ...]:
    """The channels of the batch the error names: ``named_exactly``, else those with a
    ``symbol``/``coin`` given in ``data``, else those with a symbol that is a whole word of the
    message (case-sensitive; ``_`` and ``-`` join words, so ``BTC`` is not in ``BTC-USDT``).
    ``symbols(channel)`` gives a channel's symbols (default: a channel object's ``symbol`` and
    ``coin``)."""
    hits = named_exactly(channels, rejection)
    if hits:
        return hits
    data = rejection.data
    words: set[str] = set()
    if isinstance(data, Mapping):
        words.update(v for k in ("symbol", "coin") if isinstance(v := data.get(k), str))
    if not words:
        words.update(re.findall(r"[A-Za-z0-9][A-Za-z0-9_./:-]*[A-Za-z0-9]|[A-Za-z0-9]", rejection.message))
    return tuple(c for c in channels if symbols(c) & words)


def _same(channel: Any, other: Any) -> bool:
    return other is not None and bool(channel == other)


def settle_permanent(channels: Sequence[T], rejection: Rejection,
                     symbols: Callable[[T], set[str]] = _symbols) -> Settlement[T]:
    """Split a batch rejected PERMANENT until its bad channels are isolated.

    - one channel: rejected for good;
    - the error carries exactly one of the batch's channel objects (``named_exactly``): that one
      is rejected, the others are retried together;
    - the error names some (not all) of the batch otherwise (``named``: by symbol, a guess): the
      named ones are retried together (alone, if one: a wrong guess costs one request, never a
      good channel), and the others together;
    - otherwise (named none or all, or ``too_large``): the two halves are retried.
    Each retried request that fails again is settled the same way, so ``b`` bad channels among
    ``n`` named by nothing take at most ``2 * b * ceil(log2(n)) + 1`` requests in all, and the
    good ones pass.
    """
    batch = tuple(channels)
    if len(batch) <= 1:
        return Settlement(batch, ())
    if not rejection.too_large:
        exact = named_exactly(batch, rejection)
        if len(exact) == 1:
            return Settlement(exact, (tuple(c for c in batch if c not in exact),))
        suspects = exact or named(batch, rejection, symbols)
        if suspects and len(suspects) < len(batch):
            return Settlement((), (suspects, tuple(c for c in batch if c not in suspects)))
    half = len(batch) // 2
    return Settlement((), (batch[:half], batch[half:]))


# -- rate-limit retries -----------------------------------------------------------------------

class RateLimitBackoff:
    """The delay before re-sending rate-limited channels, and a count of consecutive failures.

    ``failed(retry_after)``: the server's ``retry_after`` capped at ``maximum`` (plus up to 10 %
    jitter, so shards do not all come back at once), or without it full jitter in
    ``[initial, min(maximum, initial * 2**(failures-1))]``. ``succeeded()`` resets the count.
    ``warn_now`` is True right after the ``warn_after``-th consecutive failure (once per run), for
    a warning-level event; a rate limit is never a permanent rejection.
    """

    def __init__(self, initial: float = 0.5, maximum: float = 60.0, warn_after: int = 5,
                 rng: Callable[[], float] = random.random) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"initial/maximum: expected 0 < initial <= maximum, got {initial!r}, {maximum!r}")
        self.initial = initial
        self.maximum = maximum
        self.warn_after = warn_after
        self.rng = rng
        self.failures = 0

    def failed(self, retry_after: float | None = None) -> float:
        """Count a rate-limit rejection; the seconds to wait before re-sending."""
        self.failures += 1
        if retry_after is not None:
            base = min(self.maximum, max(0.0, retry_after))
            return min(self.maximum, base + 0.1 * base * self.rng())
        cap = min(self.maximum, self.initial * 2.0 ** min(self.failures - 1, 60))
        return self.initial + self.rng() * (cap - self.initial)

    def succeeded(self) -> None:
        """A request passed: the next failure starts over."""
        self.failures = 0

    @property
    def warn_now(self) -> bool:
        """True right after the ``warn_after``-th consecutive failure (once per run of failures)."""
        return self.failures == self.warn_after
