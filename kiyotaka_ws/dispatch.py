"""Delivery: the bounded event queue, the routing table and the dispatcher thread.

The reader puts each raw frame, tagged with its connection's number, into an ``EventQueue``; the
dispatcher thread takes bounded batches, decompresses a batch's frames back to back (see
``_inflate_ahead``), parses each frame, and routes, decodes and delivers its points: the points
between a frame's sampled first event and its last point in one loop (``FastPath.deliver``), the
others here, one at a time, or a run at a time (``FastPath.run``) when some handler conflates. It
calls handlers one at a time, in order. Answers to requests go back
to the family's session with their connection tag. The dispatcher thread is the only place in the
library that calls user code: event handlers in ``_deliver`` and the ``FastPath.deliver`` it calls
(inline, it is the hot path) and ``on_error``/``on_status`` in ``_invoke``; every call is wrapped and no library lock is held.

The promises are checked per call, not per point: each event handler is held as a
``Registration`` whose ``active`` flag ``unsubscribe()`` and ``stop()`` clear before they return,
read right before each call (one attribute read per call); ``on_error``/``on_status`` calls check
``finished`` (set before ``stop()`` returns). The race between that read and the call starting,
when ``unsubscribe()`` runs on another thread, is closed by ``wait_not_calling``.

Threads and the GIL (design, measured on 2 cores, Python 3.11). The reader and the dispatcher
share the GIL, and brotli releases it for the few microseconds a frame takes to decompress. A
thread that releases the GIL while another is busy in Python waits up to the switch interval
(5 ms) to get it back: 4 us per decompression alone, 1.6 ms next to a busy thread. So the
reader, which must keep the socket drained, does only pure-Python work (the answer window of
``session.py`` aside), and decompression sits here. Decompressed once per frame between
deliveries, though, each release woke a reader waiting for the GIL after its ``recv``; the
reader lost the race and, by CPython's rule, started its switch interval over, so it starved
while the dispatcher was busy: 400-5,000 futile wake-ups per 200,000-point run, the socket backed
up, loopback TCP stalled for 10-140 ms, runs at 20 and 50 points per frame were bimodal (0.84-1.10
times a bare ``json.loads`` loop), and the same process pinned to one core was fast and steady.
Hence ``_inflate_ahead``: a batch (up to ``BATCH_FRAMES`` frames, ``INFLATE_AHEAD_BYTES``) is
decompressed back to back before any of it is delivered, which leaves the GIL free once per batch
for a waiting reader. Reader context switches fell to 10-30 per run and the rounds agree.
Decompressing in the reader instead was measured too: 2.6-2.9 us per point at 20 points per
frame, worse, for the same reason the other way round.

Latency windows (``latency.py``): ``feed_latency``, ``queue_delay`` and ``handler_time`` are
sampled on the first event and the last point of each frame, so ``queue_delay`` shows the longest
wait inside a frame; that costs about 0.4 us per frame (clock reads and histogram updates), where
sampling every event had cost 0.4 us per point (20% of throughput at 50 points per frame).

Registering: the routing table is immutable and replaced on every change (copy-on-write per
key): 10,000 registrations on a running client take about 0.3 s.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from time import monotonic_ns as _monotonic_ns
from time import time_ns as _time_ns
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from .channels import ChannelSpec
from .errors import DecodeError, EventsDropped, HandlerError, KiyotakaError, ServerError
from .events import decode_point, excerpt
from .fastpath import FastPath
from .latency import SLOT_NS, Window
from .protocol import FrameDecoder, Kind, classify, error_details
from .threads import join_by

if TYPE_CHECKING:
    from .recording import Tap

log = logging.getLogger(__name__)  # a child of "kiyotaka_ws": configuring that one still applies

BLOCK, DROP_OLDEST, DROP_NEWEST = "block", "drop_oldest", "drop_newest"
OVERFLOW_POLICIES = (BLOCK, DROP_OLDEST, DROP_NEWEST)
BATCH_FRAMES = 64       # frames the dispatcher takes at once (they stay counted until the next take)
INFLATE_AHEAD_BYTES = 4 * 2**20  # decompressed bytes of a batch held ahead of delivery (see _inflate_ahead)
# Frames of fewer points are delivered a run at a time (FastPath.run and this module's loop): the
# calls that split a frame cost ~7,000 instructions, ~1,100 less per point delivered inline pays
# for them from about 7 points (callgrind, 5 points per frame, 8 series: 800 more per point).
INLINE_MIN_POINTS = 10
MAX_CONTROL_ITEMS = 1000  # statuses and errors waiting for the dispatcher; more are dropped (logged)
LOG_REPEAT_WINDOW = 60.0  # seconds during which an identical unhandled error is counted, not logged again

Handler = Callable[[Any], Any]


class Status(NamedTuple):
    """A ``ConnectionStatus`` on its way to the ``on_status`` handlers."""

    status: Any


class EventQueue:
    """A FIFO of raw frames bounded in frames AND bytes, with an overflow policy.

    Data items are ``(payload, binary, connection, received_ns)`` tuples, one per WebSocket message
    (``received_ns``: ``time.time_ns()`` when it was read, or the recorded time in a replay). A batch
    taken by the dispatcher stays counted until its next ``take``, so ``capacity`` and
    ``max_bytes`` bound everything between the reader and the handlers (one frame larger than
    ``max_bytes`` is let in when nothing else is queued). Under drop_oldest the frames of the batch
    in flight not yet claimed by the dispatcher (``claims``) are the oldest undelivered ones and go
    first, giving back their room at once; the newest frame is always let in, so when the only
    frames left counted are those the dispatcher has claimed, the bound is exceeded by the one
    newest frame (their memory is released when the batch ends, as for every batch). Control items (errors, statuses) are
    never dropped by the policy and are capped at ``MAX_CONTROL_ITEMS``. ``blocked`` tells the
    session that the reader waits on a full queue, so back-pressure is not mistaken for a dead
    socket.
    """

    def __init__(self, capacity: int, policy: str, max_bytes: int = 64 * 2**20) -> None:
        self.capacity = capacity
        self.policy = policy
        self.max_bytes = max_bytes
        self._items: collections.deque[Any] = collections.deque()
        self._frames = 0       # queued + taken but not yet done
        self._bytes = 0
        self._taken = (0, 0)   # (frames, bytes) of the batch being dispatched
        # The batch in flight's frames not yet claimed for delivery, as (position, size), oldest
        # first. The dispatcher claims each frame with ``popleft`` (atomic) before delivering it;
        # under drop_oldest the reader claims (drops) the oldest of them first, so each frame is
        # either delivered or dropped, never both.
        self.claims: collections.deque[tuple[int, int]] = collections.deque()
        self._controls = 0
        self._dropped = 0      # not yet reported
        self._data_closed = False
        self._closed = False
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self.blocked = False          # the reader waits for room (read by the session's timers too)
        self._taking = False          # the dispatcher waits for items
        self._drain_below = 0         # a source waits (wait_empty) for fewer frames than this
        self.dropped_total = 0
        # A sink beside the queue (the recorder): called with every frame offered, kept or not.
        # Called with (payload, binary, connection, received_ns): a replay's copy keeps recorded times.
        self.tap: Tap | None = None

    @property
    def depth(self) -> int:
        return self._frames

    @property
    def depth_bytes(self) -> int:
        return self._bytes

    def _full(self, size: int) -> bool:
        return self._frames >= self.capacity or (self._bytes + size > self.max_bytes and self._frames > 0)

    def put_frame(self, payload: bytes, binary: bool, connection: int = 0, received_ns: int | None = None) -> bool:
        """Queue one frame; True when it had to wait for room (policy "block"). ``received_ns``
        defaults to now (``time.time_ns()``)."""
        if received_ns is None:
            received_ns = _time_ns()
        tap = self.tap
        if tap is not None:
            tap(payload, binary, connection, received_ns)
        size = len(payload)
        waited = False
        with self._lock:
            if self._full(size) and not self._data_closed:
                if self.policy == BLOCK:
                    self.blocked = waited = True
                    try:
                        while self._full(size) and not self._data_closed:
                            self._not_full.wait()
                    finally:
                        self.blocked = False
                elif self.policy == DROP_NEWEST:
                    self._drop(1)
                    return waited
                else:
                    self._drop_oldest_until_fits(size)
            if self._data_closed:
                return waited
            self._items.append((payload, binary, connection, received_ns))
            self._frames += 1
            self._bytes += size
            if self._taking:  # notify() costs a microsecond even with nobody waiting: skip it then
                self._not_empty.notify()
        return waited

    def put_frames(self, frames: list[tuple[bytes, bool, int, int]]) -> None:
        """Queue ``(payload, binary, connection, received_ns)`` frames in order under one lock,
        waiting for room whatever the policy (for a source that must lose nothing, such as a replay)."""
        tap = self.tap
        if tap is not None:
            for payload, binary, connection, received_ns in frames:
                tap(payload, binary, connection, received_ns)
        with self._lock:
            items = self._items
            for item in frames:
                size = len(item[0])
                if self._full(size) and not self._data_closed:
                    if self._taking:  # what is queued already can go meanwhile
                        self._not_empty.notify()
                    self.blocked = True
                    try:
                        while self._full(size) and not self._data_closed:
                            self._not_full.wait()
                    finally:
                        self.blocked = False
                if self._data_closed:
                    return
                items.append(item)
                self._frames += 1
                self._bytes += size
            if self._taking:
                self._not_empty.notify()

    def put_control(self, item: Any) -> None:
        """An error (or a ``Status``) for the dispatcher to hand to the user's hooks."""
        with self._lock:
            if self._closed:
                return
            if self._controls >= MAX_CONTROL_ITEMS:
                log.debug("dropped a %s: %d control items already wait", type(item).__name__, self._controls)
                return
            self._controls += 1
            self._items.append(item)
            self._not_empty.notify()

    def put_status(self, status: Any) -> None:
        self.put_control(Status(status))

    def take(self) -> tuple[list[Any], int, bool]:
        """Block until something is queued or the queue closes; (batch, newly dropped, closed).

        Releases the previous batch's room: the caller has finished with it.
        """
        with self._lock:
            frames, size = self._taken
            self._frames -= frames
            self._bytes -= size
            self._taken = (0, 0)
            self.claims = claims = collections.deque[tuple[int, int]]()
            if self.blocked or self._frames < self._drain_below:
                self._not_full.notify_all()
            while not self._items and not self._dropped and not self._closed:
                self._taking = True
                try:
                    self._not_empty.wait()
                finally:
                    self._taking = False
            batch: list[Any] = []
            frames = size = 0
            items = self._items
            while items and frames < BATCH_FRAMES:
                item = items.popleft()
                if type(item) is tuple:
                    frames += 1
                    length = len(item[0])
                    size += length
                    claims.append((len(batch), length))
                else:
                    self._controls -= 1
                batch.append(item)
            self._taken = (frames, size)
            dropped, self._dropped = self._dropped, 0
            return batch, dropped, self._closed and not items

    def wait_empty(self, cancel: threading.Event, below: int = 1) -> None:
        """Block until fewer than ``below`` frames are queued (1: every queued frame has been
        handled, the dispatcher took its next batch), data is closed, or ``cancel`` is set
        (checked at least every 0.1 s)."""
        with self._lock:
            try:
                while self._frames >= below and not self._data_closed and not cancel.is_set():
                    self._drain_below = below
                    self._not_full.wait(0.1)
            finally:
                self._drain_below = 0

    def close_data(self) -> None:
        """Refuse further frames and wake a reader blocked on a full queue; controls still pass."""
        with self._lock:
            self._data_closed = True
            self._not_full.notify_all()

    def close(self) -> None:
        with self._lock:
            self._data_closed = self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def _drop(self, count: int) -> None:
        self._dropped += count
        self.dropped_total += count
        self._not_empty.notify()

    def _drop_oldest_until_fits(self, size: int) -> None:
        """Drop the oldest frames not yet delivered until ``size`` fits: first the unclaimed rest
        of the batch in flight, then queued frames (never controls). If it still does not fit, what
        holds the room is frames the dispatcher has claimed: the newest frame is let in all the same."""
        claims = self.claims
        while self._full(size):
            try:
                _, length = claims.popleft()  # atomic: the dispatcher claims with popleft too
            except IndexError:
                break
            frames, taken = self._taken
            self._taken = (frames - 1, taken - length)
            self._frames -= 1
            self._bytes -= length
            self._drop(1)
        items = self._items
        kept: list[Any] = []
        while self._full(size) and items:
            item = items.popleft()
            if type(item) is tuple:
                self._frames -= 1
                self._bytes -= len(item[0])
                self._drop(1)
            else:
                kept.append(item)
        items.extendleft(reversed(kept))


# Series types whose points are snapshots (each supersedes the previous of its series): the only
# ones a handler may ask to conflate. Trades, aggregated trades and liquidations never are.
CONFLATABLE = frozenset(("BLOCK_BOOK_SNAPSHOT", "VOLUME_PROFILE_AGG", "FUNDING_RATE", "OPEN_INTEREST"))


class Registration:
    """A handler as the routing table holds it. ``active`` is cleared by ``unsubscribe()`` and by
    ``stop()`` before they return, and the dispatcher reads it right before each call: the promise
    "not called after unsubscribe()/stop() returned" is kept per call, for one flag read."""

    __slots__ = ("active", "conflate", "fn")

    def __init__(self, fn: Handler, conflate: bool = False) -> None:
        self.fn = fn
        self.conflate = conflate  # only the newest snapshot of its series in a batch (see _conflate)
        self.active = True


class Conflated(Registration):
    """A ``conflate=True`` handler (see ``Dispatcher._conflate``)."""

    __slots__ = ()

    def __init__(self, fn: Handler) -> None:
        super().__init__(fn, conflate=True)


class _Route(NamedTuple):
    spec: ChannelSpec
    exchange: str
    category: str
    block_size: float | None
    handlers: tuple[Registration, ...]


# Parameters the data does not carry: two registrations differing only in them cannot be told apart.
_UNCARRIED = ("batchInterval", "maxDepth", "updateFrequency", "quote")


def data_key(spec: ChannelSpec) -> tuple[Any, ...]:
    """What identifies a spec's points in the data (everything but the uncarried parameters)."""
    return (spec.channel, spec.exchange, spec.symbol, spec.category,
            tuple(kv for kv in spec.extras if kv[0] not in _UNCARRIED))


class RouteTable:
    """Immutable routing table: series -> handlers. ``updated`` returns a changed copy.

    Per-symbol points (with a ``symbol``) go to per-symbol registrations only; grouped points (no
    ``symbol``, a ``coin``) to ``group_by_coin`` registrations only. A category filter matches a
    series with that category or with none. Copying is per key, so registering thousands of
    handlers on a running client stays linear.
    """

    def __init__(self, by_symbol: dict[tuple[Any, Any], tuple[_Route, ...]] | None = None,
                 by_coin: dict[tuple[Any, Any], tuple[_Route, ...]] | None = None, conflating: int = 0) -> None:
        self._by_symbol = by_symbol if by_symbol is not None else {}
        self._by_coin = by_coin if by_coin is not None else {}
        self.conflating = conflating  # how many ``Conflated`` handlers the table holds

    def updated(self, spec: ChannelSpec, handlers: tuple[Handler | Registration, ...]) -> RouteTable:
        """A copy where ``spec`` routes to ``handlers`` (none: the spec is gone); a plain callable
        is held as a ``Registration`` of its own."""
        registrations = tuple(h if isinstance(h, Registration) else Registration(h) for h in handlers)
        table = dict(self._by_coin if spec.grouped else self._by_symbol)
        key = (spec.channel.value, spec.symbol)
        old = table.get(key, ())
        routes = tuple(r for r in old if r.spec != spec)
        conflating = (self.conflating + _conflated(registrations)
                      - sum(_conflated(r.handlers) for r in old if r.spec == spec))
        if registrations:
            block = spec.param("blockSize")
            routes += (_Route(spec, spec.exchange, spec.category, float(block) if block else None, registrations),)
        if routes:
            table[key] = routes
        else:
            table.pop(key, None)
        if spec.grouped:
            return RouteTable(self._by_symbol, table, conflating)
        return RouteTable(table, self._by_coin, conflating)

    def handlers_for(self, series: dict[str, Any]) -> tuple[Registration, ...]:
        symbol = series.get("symbol")
        if symbol is not None:
            routes = self._by_symbol.get((series.get("type"), symbol), ())
        else:
            routes = self._by_coin.get((series.get("type"), series.get("coin")), ())
        if not routes:
            return ()
        handlers: tuple[Registration, ...] = ()
        for route in routes:
            if route.exchange != "*" and route.exchange != series.get("exchange"):
                continue
            if route.category != "*":
                category = series.get("category")
                if category is not None and category != route.category:
                    continue
            if route.block_size is not None:
                block = series.get("blockSize")
                if type(block) in (int, float) and block != route.block_size:
                    continue
            handlers = handlers + route.handlers if handlers else route.handlers
        return handlers


def _conflated(handlers: tuple[Any, ...]) -> int:
    return sum(type(h) is Conflated or (isinstance(h, Registration) and h.conflate) for h in handlers)


def series_key(series: Any) -> tuple[Any, ...] | None:
    """What tells one series from another for conflation (the fields routing reads); None when the
    point has no series object or a field is unhashable (never conflated)."""
    if type(series) is not dict:
        return None
    get = series.get
    key = (get("type"), get("symbol"), get("coin"), get("exchange"), get("category"), get("normalizedSymbol"),
           get("side"), get("blockSize"))
    try:
        hash(key)
    except TypeError:
        return None
    return key


class Hooks:
    """The client-wide ``on_error`` and ``on_status`` handlers (tuples, replaced on change)."""

    def __init__(self) -> None:
        self.error: tuple[Handler, ...] = ()
        self.status: tuple[Handler, ...] = ()


class _RepeatFilter:
    """Rate-limits identical error log lines: within a window, the 1st, 10th, 100th, ... are logged."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (window start, count in window)
        self._clock = clock

    def admit(self, key: str) -> int:
        """How many identical lines this window holds if this one is to be logged, else 0."""
        now = self._clock()
        start, count = self._seen.get(key, (now, 0))
        if now - start >= LOG_REPEAT_WINDOW:
            start, count = now, 0
        count += 1
        if len(self._seen) >= 256 and key not in self._seen:  # bounded: forget every window
            self._seen.clear()
        self._seen[key] = (start, count)
        return count if count == 10 ** (len(str(count)) - 1) else 0


class Dispatcher:
    """One family's dispatcher thread: decode, route, call handlers one at a time."""

    def __init__(self, family: str, queue: EventQueue, hooks: Hooks, decoder: FrameDecoder,
                 on_answer: Callable[[int, Any], None], on_died: Callable[[KiyotakaError], None]) -> None:
        self.family = family
        self.queue = queue
        self.hooks = hooks
        self.decoder = decoder
        self.on_answer = on_answer  # answers go back to the session, with their connection
        self.on_died = on_died
        self.routes = RouteTable()
        self.events = 0
        self.decode_errors = 0
        self.handler_errors = 0
        self.skipped = 0
        self.conflated = 0
        # During a batch with conflated handlers: series key -> (item, point) position of its newest
        # well-formed point in the batch; ``_at``: the position of the item being delivered.
        self._pending: dict[tuple[Any, ...], tuple[int, int]] | None = None
        self._at = 0
        # The handlers of the point being delivered (None between frames): read by unsubscribe()
        # on another thread to wait for a call it may have raced (see ``wait_not_calling``).
        self.calling: tuple[Registration, ...] | None = None
        # Latency windows (see latency.py): written by this thread only.
        self.feed_latency = Window()   # received_ns - event.time_ns, once per event
        self.queue_delay = Window()    # first handler's start - received_ns, first and last event of a frame
        self.handler_time = Window()   # each handler call
        self._rotate_at = 0            # time.monotonic_ns() when they rotate next
        # A sink in place of delivery (the NATS relay): gets every data frame's points, in order,
        # and they are not decoded into events. None: points go to the handlers.
        self.sink: Callable[[str, list[Any]], None] | None = None
        self.closing = False   # set by stop(): no further event is delivered
        self.finished = False  # set when stop() returns: no user code at all any more
        self._repeats = _RepeatFilter()
        self._thread: threading.Thread | None = None

    # -- called from other threads --------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"kiyotaka-ws-{self.family}-dispatch",
                                            daemon=True)
            self._thread.start()

    def join(self, deadline: float) -> bool:
        return join_by(self._thread, deadline)

    def wait_not_calling(self, registration: Registration, timeout: float) -> bool:
        """After ``registration.active`` was cleared: wait until no call of it is in progress
        (False if one still is after ``timeout``). Returns at once on a library thread (a handler
        calling unsubscribe(): waiting there could deadlock two families' dispatchers).

        Why it is enough: the dispatcher writes ``calling`` before it reads ``active``, and the
        unsubscriber writes ``active`` before it reads ``calling``; so either the dispatcher sees
        the flag cleared and never calls, or the unsubscriber sees the point in ``calling`` and
        waits until the dispatcher has moved on (the routes were replaced first: the handlers of
        later points are other tuples).
        """
        calling = self.calling
        if calling is None or registration not in calling or threading.current_thread().name.startswith("kiyotaka-ws-"):
            return True
        deadline = time.monotonic() + timeout
        pause = 0.0001
        while self.calling is calling:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.005)
        return True

    # -- the dispatcher thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._dispatch():
                pass
        except BaseException as exc:
            if not self.closing:
                log.exception("%s: the dispatcher failed", self.family)
                self.on_died(KiyotakaError(f"{self.family}: the dispatcher thread failed ({_describe(exc)})"))

    def _dispatch(self) -> bool:
        """Handle one batch; False once the queue is closed and drained."""
        items, dropped, closed = self.queue.take()
        now = _monotonic_ns()
        if now >= self._rotate_at:  # the latency windows' current slot is full: start the next
            self.feed_latency.rotate(now)
            self.queue_delay.rotate(now)
            self.handler_time.rotate(now)
            self._rotate_at = now + SLOT_NS
        if dropped:
            self._error(EventsDropped(dropped, family=self.family))
        self._pending = None
        if len(items) > 1 and not self.closing:
            items = self._inflate_ahead(items)
        if self.routes.conflating and self.sink is None:
            items = self._predecode(items)
        claims = self.queue.claims  # this batch's frames not yet claimed (see EventQueue.claims)
        claimed = -1  # the position of the last frame claimed here
        for position, item in enumerate(items):
            if self.finished:
                return False
            try:
                if type(item) is tuple:
                    if position > claimed:
                        try:
                            claimed = claims.popleft()[0]
                        except IndexError:  # the rest were dropped (drop_oldest) by the reader
                            claimed = len(items)
                    if position != claimed:  # dropped while in flight: counted in the queue's dropped
                        continue
                    if not self.closing:  # on stop, pending data is discarded
                        self._at = position
                        self._frame(item)
                elif type(item) is Status:
                    for handler in self.hooks.status:
                        self._invoke(handler, item.status)
                else:
                    if type(item) is DecodeError:  # a malformed message a source found (a bus's)
                        self.decode_errors += 1
                    self._error(item)
            except Exception:  # a bug in one item must not end delivery
                log.exception("%s: internal error while dispatching", self.family)
        return not closed

    def _inflate_ahead(self, items: list[Any]) -> list[Any]:
        """Decompress the batch's brotli frames, all of them, before delivering any.

        Why: brotli releases the GIL for a few microseconds per frame. Spread between deliveries,
        each release wakes a reader waiting for the GIL, which then loses the race and, by
        CPython's rule, starts its switch interval again: the reader starves while the dispatcher
        is busy, the socket backs up and TCP stalls (measured: thousands of futile wake-ups and up
        to 25% of throughput on 2 cores). Back to back, the releases leave the GIL free long enough
        for a waiting reader to take it, once per batch. Bounded by ``INFLATE_AHEAD_BYTES`` beyond
        one frame; a frame that fails stays as it was and fails again, in order, at delivery.
        """
        inflate = self.decoder.inflate
        budget = INFLATE_AHEAD_BYTES
        out: list[Any] = []
        for item in items:
            if budget > 0 and type(item) is tuple and item[1]:
                try:
                    text = inflate(item[0])
                except DecodeError:
                    pass
                else:
                    budget -= len(text)
                    item = (text, False, item[2], item[3])
            out.append(item)
        return out

    def _predecode(self, items: list[Any]) -> list[Any]:
        """Decode a batch's frames ahead (for conflation) and find the newest point of each series.

        Data items become ``(payload, binary, connection, received_ns, message or DecodeError)``;
        ``_pending`` maps each snapshot series to the position (item, point) of its newest
        well-formed point in the batch (a point that will not decode is not a newer snapshot), so
        that ``_conflate`` can tell, for each point, whether a newer one follows. Positions, not
        counts: a conflated handler registered mid-batch still gets the newest of each series.
        """
        pending: dict[tuple[Any, ...], tuple[int, int]] = {}
        out: list[Any] = []
        for position, item in enumerate(items):
            if type(item) is not tuple:
                out.append(item)
                continue
            try:
                message: Any = self.decoder.decode(item[0], item[1])
            except DecodeError as exc:
                message = exc
            out.append((*item, message))
            points = message.get("points") if type(message) is dict else None
            if type(points) is not list:
                continue
            for index, point in enumerate(points):
                series = point.get("series") if type(point) is dict else None
                if type(series) is dict and series.get("type") in CONFLATABLE:
                    key = series_key(series)
                    if key is None:
                        continue
                    try:
                        if decode_point(point, None) is None:
                            continue
                    except DecodeError:
                        continue
                    pending[key] = (position, index)
        self._pending = pending
        return out

    def _conflate(self, handlers: tuple[Registration, ...], point: Any, index: int,
                  pending: dict[tuple[Any, ...], tuple[int, int]]) -> tuple[Registration, ...]:
        """The handlers to call for this snapshot point (``index`` in the item being delivered):
        without the conflated ones when a newer well-formed point of its series is in the same
        batch (each skipped call counted in ``conflated``)."""
        key = series_key(point.get("series")) if type(point) is dict else None
        newest = pending.get(key) if key is not None else None
        if newest is None or newest <= (self._at, index):  # the newest of its series in this batch
            return handlers
        kept = tuple(h for h in handlers if not h.conflate)
        self.conflated += len(handlers) - len(kept)
        return kept

    def _frame(self, item: tuple[Any, ...]) -> None:
        if len(item) == 5:  # decoded ahead by _predecode
            message = item[4]
            if isinstance(message, DecodeError):
                self.decode_errors += 1
                self._error(message)
                return
        else:
            try:
                message = self.decoder.decode(item[0], item[1])
            except DecodeError as exc:
                self.decode_errors += 1
                self._error(exc)
                return
        points = message.get("points") if type(message) is dict else None
        if type(points) is list:
            sink = self.sink
            if sink is not None:
                sink(self.family, points)
                return
            self._deliver(points, item[3])
            return
        kind = classify(message)
        if kind is Kind.RESPONSE:
            self.on_answer(item[2], message)
        elif kind is Kind.ERROR:
            code, text, data = error_details(message)
            self._error(ServerError(f"server error {code}: {text}", code=code, data=data))
        else:
            self.decode_errors += 1
            self._error(DecodeError("unexpected message shape", excerpt=excerpt(message)))

    def _deliver(self, points: list[Any], received_ns: int | None = None) -> None:
        try:
            self._deliver_points(points, received_ns)
        finally:
            self.calling = None

    def _deliver_points(self, points: list[Any], received_ns: int | None) -> None:
        fast: FastPath | None = getattr(self, "_fastpath", None)  # the cache for one RouteTable
        clock = _time_ns
        pending = self._pending  # None unless some handler conflates
        # Latencies are measured on the first event of each frame and on its last point (the one
        # that waited longest): a cost per frame, not per event. ``next_point < sample`` is the one
        # test per point: 0 until the first event is sampled, then ``count``.
        sample = 0
        next_point, count = 0, len(points)
        handlers: tuple[Registration, ...]
        event: Any
        # FastPath.deliver for the points between the sampled ones: only without conflation, and
        # in frames long enough to pay for the extra calls (see INLINE_MIN_POINTS).
        inline = pending is None and count >= INLINE_MIN_POINTS
        while next_point < count:
            routes = self.routes
            if fast is None or fast.routes is not routes:  # a new table: a new cache
                fast = self._fastpath = FastPath(routes)
            stop = None
            if inline:  # this loop takes one point at a time, FastPath.deliver the rest
                if sample:
                    # Between the sampled events: routed, decoded and delivered in one loop, up to
                    # the first point that needs this loop (the general path, the last point, a
                    # handler that stopped the client or changed the routes).
                    next_point = fast.deliver(points, next_point, count - 1, received_ns, self)
                    if self.closing:
                        return
                    if self.routes is not routes:
                        continue
                stop = next_point + 1
            hits = fast.run(points, next_point, received_ns, stop)  # decoded ahead, a run at a time
            for hit in hits:
                if self.closing:
                    return
                if self.routes is not routes:  # a handler changed them: route the rest again, at once
                    break
                point = points[next_point]
                next_point += 1
                if hit:
                    handlers, event = hit
                elif hit is not None:  # nobody listens
                    self.skipped += 1
                    continue
                else:  # not a documented shape: the general path words the error or takes the variant
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
                        event = decode_point(point, received_ns)
                    except DecodeError as exc:
                        self.decode_errors += 1
                        self._error(exc)
                        continue
                    if event is None:  # a type we do not know
                        self.skipped += 1
                        continue
                if pending is not None and _conflated(handlers):
                    handlers = self._conflate(handlers, point, next_point - 1, pending)
                    if not handlers:
                        continue
                self.events += 1
                self.calling = handlers  # before the flags are read: see wait_not_calling
                if next_point < sample:
                    for handler in handlers:
                        if handler.active:  # per call: unsubscribe()/stop() may have run meanwhile
                            try:
                                handler.fn(event)
                            except BaseException as exc:  # noqa: BLE001 - nothing a handler does may kill this thread
                                self.handler_failed(handler.fn, event, exc)
                    continue
                sample = count
                start = clock()
                if received_ns is not None:
                    if event.time_ns is not None:
                        self.feed_latency.add(received_ns - event.time_ns)
                    self.queue_delay.add(start - received_ns)
                for handler in handlers:
                    if handler.active:
                        try:
                            handler.fn(event)
                        except BaseException as exc:  # noqa: BLE001 - nothing a handler does may kill this thread
                            self.handler_failed(handler.fn, event, exc)
                        end = clock()
                        self.handler_time.add(end - start)
                        start = end

    def _error(self, error: KiyotakaError) -> None:
        if self.hooks.error:
            log.debug("%s (%s): %s", type(error).__name__, self.family, error)
            for handler in self.hooks.error:
                self._invoke(handler, error)
            return
        text = _describe(error, with_type=False)
        count = self._repeats.admit(f"{type(error).__name__}:{text[:200]}")
        if count:
            more = f" ({count} times in {LOG_REPEAT_WINDOW:.0f}s; repeats are counted, not logged)" if count > 1 else ""
            level = logging.ERROR if isinstance(error, HandlerError) else logging.WARNING
            log.log(level, "%s (%s): %s%s", type(error).__name__, self.family, text, more,
                    exc_info=count == 1 and error.__cause__ is not None and error)

    def _invoke(self, handler: Handler, arg: Any) -> None:
        """Call an on_error/on_status handler; if it fails, log it (never report it: no recursion).
        Nothing is called once stop() has returned (``finished``), checked per call."""
        if self.finished:
            return
        try:
            handler(arg)
        except BaseException as exc:  # noqa: BLE001 - nothing a handler does may kill this thread
            log.error("kiyotaka_ws: %s raised %s while handling %s", _name(handler), _describe(exc),
                      type(arg).__name__)

    def handler_failed(self, handler: Handler, event: Any, exc: BaseException) -> None:
        """A handler raised ``exc`` on ``event``: counted and reported (``FastPath.deliver`` too)."""
        self.handler_errors += 1
        error = HandlerError(f"handler {_name(handler)} raised {_describe(exc)}", event=event, handler=handler)
        error.__cause__ = exc
        self._error(error)


def _name(handler: Any) -> str:
    try:
        return str(getattr(handler, "__qualname__", None) or repr(handler))
    except Exception:  # noqa: BLE001 - a hostile __repr__
        return type(handler).__name__


def _describe(exc: BaseException, with_type: bool = True) -> str:
    """``Type: message`` even when the exception's ``__str__`` itself raises."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a hostile __str__
        text = "<unprintable>"
    return f"{type(exc).__name__}: {text}" if with_type else text

