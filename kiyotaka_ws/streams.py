"""``EventStream``: pull events from a client instead of registering a callback.

``client.events(...)`` registers the stream's own handler (it runs on the family's dispatcher
thread, like any handler) which appends each event to a buffer of at most ``maxsize`` events.
The consumer takes them with ``get()`` or by iterating. When the buffer is full the client's
``overflow`` policy applies: ``"block"`` makes the dispatcher wait for room (nothing is lost, but
the whole family waits, exactly as behind a slow handler); ``"drop_oldest"`` / ``"drop_newest"``
drop events and count them in ``dropped``. No lock is held while user code runs (the stream calls
none), and every wait ends when the consumer closes the stream or the client stops.

Two objects share one buffer: ``StreamFeed`` is the client's side (``put`` is the registered
handler, ``end`` is called at stop, failure or the end of a replay) and ``EventStream`` the
consumer's, so neither reaches into the other.
"""

from __future__ import annotations

import collections
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .dispatch import BLOCK, DROP_NEWEST
from .errors import ClientStoppedError, KiyotakaError
from .events import Event

if TYPE_CHECKING:
    from .client import Subscription

E = TypeVar("E", bound=Event)


class StreamFeed(Generic[E]):
    """The buffer behind an ``EventStream``: ``put`` from the dispatcher, ``get`` for the consumer."""

    def __init__(self, maxsize: int, policy: str) -> None:
        self.maxsize = maxsize
        self.policy = policy
        self.dropped = 0  # events dropped by the overflow policy
        self._items: collections.deque[E] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False   # by the consumer: no more events accepted
        self._ended = False    # by the client: no more events will come
        self._error: KiyotakaError | None = None

    # -- the client's side ------------------------------------------------------------------------

    def put(self, event: Any) -> None:
        """The stream's handler, on the dispatcher thread."""
        with self._cond:
            if self._closed or self._ended:
                return
            items = self._items
            if len(items) >= self.maxsize:
                if self.policy == BLOCK:
                    while len(items) >= self.maxsize and not (self._closed or self._ended):
                        self._cond.wait()
                    if self._closed or self._ended:
                        return
                elif self.policy == DROP_NEWEST:
                    self.dropped += 1
                    return
                else:
                    items.popleft()
                    self.dropped += 1
            items.append(event)
            self._cond.notify_all()

    def end(self, error: KiyotakaError | None = None) -> None:
        """No more events will come (the client stopped, failed, or its replay ended)."""
        with self._cond:
            self._ended = True
            if error is not None and self._error is None:
                self._error = error
            self._cond.notify_all()

    # -- the consumer's side ----------------------------------------------------------------------

    def get(self, timeout: float | None) -> E:
        """As ``EventStream.get``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._error is not None:
                    raise self._error
                if self._ended or self._closed:
                    raise ClientStoppedError("the event stream ended (client stopped or stream closed)")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no event within {timeout}s")
                self._cond.wait(remaining)
            event = self._items.popleft()
            if self.policy == BLOCK:
                self._cond.notify_all()  # room for a waiting dispatcher
            return event

    def close(self) -> None:
        """Accept no more events (those buffered can still be taken)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def qsize(self) -> int:
        return len(self._items)

    def describe(self) -> str:
        """``ended``, ``closed`` or ``open``, and the fill, for a repr."""
        state = "ended" if self._ended else "closed" if self._closed else "open"
        return f"{state} {len(self._items)}/{self.maxsize} dropped={self.dropped}"


class EventStream(Generic[E]):
    """A bounded buffer of events of one subscription, to iterate or ``get()`` from.

    Typed by the channel: ``client.events("TRADE", ...)`` is an ``EventStream[Trade]``.

    Use it as a context manager: leaving the ``with`` block unsubscribes. Iteration ends when
    the client stops (or the replay it comes from ends), after the buffered events; if the client
    failed (a rejected key, say) iteration raises that error instead.
    """

    def __init__(self, feed: StreamFeed[E], subscription: Subscription) -> None:
        self._feed = feed
        self.subscription = subscription

    @property
    def maxsize(self) -> int:
        """At most this many events wait in the stream."""
        return self._feed.maxsize

    @property
    def policy(self) -> str:
        """What happens when it is full: the client's ``overflow`` policy."""
        return self._feed.policy

    @property
    def dropped(self) -> int:
        """Events dropped by the overflow policy."""
        return self._feed.dropped

    def get(self, timeout: float | None = None) -> E:
        """The next event; waits up to ``timeout`` seconds (None: for ever).

        Raises ``TimeoutError`` when none came in time, ``ClientStoppedError`` once the stream is
        closed or the client stopped and the buffer is empty, or the client's fatal error.
        """
        return self._feed.get(timeout)

    def __iter__(self) -> EventStream[E]:
        return self

    def __next__(self) -> E:
        try:
            return self._feed.get(None)
        except ClientStoppedError:
            raise StopIteration from None

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the server to acknowledge the subscription (``Subscription.wait``)."""
        self.subscription.wait(timeout)

    def qsize(self) -> int:
        """Events waiting in the buffer."""
        return self._feed.qsize()

    def close(self) -> None:
        """Unsubscribe and stop accepting events (those buffered can still be taken). Idempotent."""
        self._feed.close()
        self.subscription.unsubscribe()

    def __enter__(self) -> EventStream[E]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EventStream {self._feed.describe()}>"
