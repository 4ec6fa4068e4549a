"""Delivery: the bounded event queue, the routing table and the dispatcher thread.

The reader puts each raw frame into an ``EventQueue``; the dispatcher thread takes everything
queued under one lock, decompresses and parses each frame, decodes its points, routes them by
``series`` and calls handlers one at a time, in order. The dispatcher thread is the only place
in the library that calls user code: event handlers in ``_deliver`` (inline, it is the hot path)
and ``on_error``/``on_status`` in ``_invoke``, every call wrapped.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import (
    Any,
    Callable,
    NamedTuple,
)

from .channels import ChannelSpec
from .errors import DecodeError, EventsDropped, HandlerError, KiyotakaError
from .events import decode_point, excerpt
from .protocol import FrameDecoder

log = logging.getLogger("kiyotaka_ws.dispatch")

BLOCK, DROP_OLDEST, DROP_NEWEST = "block", "drop_oldest", "drop_newest"
OVERFLOW_POLICIES = (BLOCK, DROP_OLDEST, DROP_NEWEST)

Handler = Callable[[Any], Any]


class EventQueue:
    """A FIFO of raw frames bounded by ``capacity`` frames, with an overflow policy.

    Data items are ``(payload, binary)`` tuples, one per WebSocket message; control items (errors,
    statuses) are any other object and are never dropped nor bounded. ``blocked`` tells the
    connection's watchdog that the reader waits on a full queue, so back-pressure is not mistaken
    for a dead socket.
    """

    def __init__(self, capacity: int, policy: str) -> None:
        self.capacity = capacity
        self.policy = policy
        self._items: collections.deque[Any] = collections.deque()
        self._frames = 0
        self._dropped = 0  # not yet reported
        self._closed = False
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self.blocked = False
        self.dropped_total = 0

    @property
    def depth(self) -> int:
        return self._frames

    def put_frame(self, payload: bytes, binary: bool) -> bool:
        """Queue one frame; True when it had to wait for room (policy "block")."""
        waited = False
        with self._lock:
            if self._frames >= self.capacity and not self._closed:
                if self.policy == BLOCK:
                    self.blocked = waited = True
                    try:
                        while self._frames >= self.capacity and not self._closed:
                            self._not_full.wait()
                    finally:
                        self.blocked = False
                elif self.policy == DROP_NEWEST:
                    self._drop(1)
                    return waited
                else:
                    self._drop_oldest()
            if self._closed:
                return waited
            self._items.append((payload, binary))
            self._frames += 1
            self._not_empty.notify()
        return waited

    def put_control(self, item: Any) -> None:
        with self._lock:
            if not self._closed:
                self._items.append(item)
                self._not_empty.notify()

    def take_all(self) -> tuple[list[Any], int, bool]:
        """Block until something is queued or the queue closes; (items, newly dropped, closed)."""
        with self._lock:
            while not self._items and not self._dropped and not self._closed:
                self._not_empty.wait()
            items = list(self._items)
            self._items.clear()
            self._frames = 0
            dropped, self._dropped = self._dropped, 0
            self._not_full.notify_all()
            return items, dropped, self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def _drop(self, count: int) -> None:
        self._dropped += count
        self.dropped_total += count
        self._not_empty.notify()

    def _drop_oldest(self) -> None:
        for index, item in enumerate(self._items):
            if type(item) is tuple:  # the oldest frame; control items stay
                del self._items[index]
                self._frames -= 1
                self._drop(1)
                return


class _Route(NamedTuple):
    exchange: str
    category: str
    block_size: float | None
    handlers: tuple[Handler, ...]


class RouteTable:
    """Immutable routing table: series -> handlers. Replaced whole on every change."""

    def __init__(self, registrations: Iterable[tuple[ChannelSpec, Sequence[Handler]]] = ()) -> None:
        by_symbol: dict[tuple[str, str], list[_Route]] = {}
        by_coin: dict[tuple[str, str], list[_Route]] = {}
        for spec, handlers in registrations:
            if not handlers:
                continue
            block = spec.param("blockSize")
            route = _Route(spec.exchange, spec.category, float(block) if block else None, tuple(handlers))
            table = by_coin if spec.grouped else by_symbol
            table.setdefault((spec.channel.value, spec.symbol), []).append(route)
        self._by_symbol = {k: tuple(v) for k, v in by_symbol.items()}
        self._by_coin = {k: tuple(v) for k, v in by_coin.items()}

    def handlers_for(self, series: dict[str, Any]) -> tuple[Handler, ...]:
        kind = series.get("type")
        routes = self._by_symbol.get((kind, series.get("symbol")), ())
        if self._by_coin:
            routes += self._by_coin.get((kind, series.get("coin")), ())
        handlers: tuple[Handler, ...] = ()
        for route in routes:
            if route.exchange != "*" and route.exchange != series.get("exchange"):
                continue
            if route.category != "*" and route.category != series.get("category"):
                continue
            if route.block_size is not None:
                block = series.get("blockSize")
                if type(block) in (int, float) and block != route.block_size:
                    continue
            handlers = handlers + route.handlers if handlers else route.handlers
        return handlers


class Hooks:
    """The client-wide ``on_error`` and ``on_status`` handlers (tuples, replaced on change)."""

    def __init__(self) -> None:
        self.error: tuple[Handler, ...] = ()
        self.status: tuple[Handler, ...] = ()


class _Status(NamedTuple):
    status: Any


class Dispatcher:
    """One family's dispatcher thread: decode, route, call handlers one at a time."""

    def __init__(self, family: str, queue: EventQueue, hooks: Hooks, decoder: FrameDecoder,
                 on_message: Callable[[Any], None]) -> None:
        self.family = family
        self.queue = queue
        self.hooks = hooks
        self.decoder = decoder
        self.on_message = on_message  # answers and error frames go back to the connection
        self.routes = RouteTable()
        self.events = 0
        self.decode_errors = 0
        self.handler_errors = 0
        self.skipped = 0
        self._thread: threading.Thread | None = None

    # -- called from other threads --------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"kiyotaka-ws-{self.family}-dispatch")
            self._thread.start()

    def report_error(self, error: KiyotakaError) -> None:
        if threading.current_thread() is self._thread:
            self._error(error)  # raised while handling a frame: keep the server's order
        else:
            self.queue.put_control(error)

    def report_status(self, status: Any) -> None:
        if threading.current_thread() is self._thread:
            self._status(status)
        else:
            self.queue.put_control(_Status(status))

    def stop(self, deadline: float) -> bool:
        """Close the queue and join the thread (not when called from it). True when joined."""
        self.queue.close()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return thread is None
        thread.join(max(0.0, deadline - time.monotonic()))
        return not thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the dispatcher thread ----------------------------------------------------------------

    def _run(self) -> None:
        queue = self.queue
        while True:
            items, dropped, closed = queue.take_all()
            if dropped:
                self._error(EventsDropped(dropped, family=self.family))
            for item in items:
                if type(item) is tuple:
                    if not closed:  # on stop, pending data is discarded; errors and statuses still go out
                        self._frame(item)
                elif type(item) is _Status:
                    self._status(item.status)
                else:
                    self._error(item)
            if closed:
                return

    def _frame(self, item: tuple[bytes, bool]) -> None:
        try:
            message = self.decoder.decode(*item)
        except DecodeError as exc:
            self.decode_errors += 1
            self._error(exc)
            return
        points = message.get("points") if type(message) is dict else None
        if type(points) is list:
            self._deliver(points)
        else:
            self.on_message(message)

    def _deliver(self, points: list[Any]) -> None:
        for point in points:
            routes = self.routes  # one snapshot per point: an unsubscribe takes effect at once
            try:
                handlers = routes.handlers_for(point["series"])
            except (TypeError, KeyError, AttributeError):
                self.decode_errors += 1
                self._error(DecodeError("malformed point (no series object)", excerpt=excerpt(point)))
                continue
            if not handlers:
                self.skipped += 1
                continue
            try:
                event = decode_point(point)
            except DecodeError as exc:
                self.decode_errors += 1
                self._error(exc)
                continue
            if event is None:  # a type we do not know
                self.skipped += 1
                continue
            self.events += 1
            for handler in handlers:
                try:
                    handler(event)
                except BaseException as exc:  # noqa: BLE001 - nothing a handler does may kill this thread
                    self._handler_failed(handler, event, exc)

    def _status(self, status: Any) -> None:
        for handler in self.hooks.status:
            self._invoke(handler, status)

    def _error(self, error: KiyotakaError) -> None:
        if not self.hooks.error:
            log.error("%s (%s): %s", type(error).__name__, self.family, error,
                      exc_info=error.__cause__ is not None and error)
            return
        for handler in self.hooks.error:
            self._invoke(handler, error)

    def _invoke(self, handler: Handler, arg: Any) -> None:
        """Call an on_error/on_status handler; if it fails, log it (never report it: no recursion)."""
        try:
            handler(arg)
        except BaseException:  # nothing a handler does may kill this thread
            log.exception("kiyotaka_ws: %r raised while handling %s", handler, type(arg).__name__)

    def _handler_failed(self, handler: Handler, event: Any, exc: BaseException) -> None:
        self.handler_errors += 1
        name = getattr(handler, "__qualname__", repr(handler))
        error = HandlerError(f"handler {name} raised {type(exc).__name__}: {exc}", event=event, handler=handler)
        error.__cause__ = exc
        self._error(error)
