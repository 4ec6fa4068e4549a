"""One connection's protocol session: a thread shell around the sans-I/O ``session_core``.

A family has one session per connection (shard; ``shards.Shards`` makes them, all feeding the
family's one queue and dispatcher); shards after the first put ``-<n>`` after the family in their
thread names. A full connection's ``Overflow`` goes to the shards' ``on_overflow``, and removed
subscriptions known to be off the connection (``Released``) to their ``on_released``.

Design. Each shard has a session and a reader thread; its family has one dispatcher:

* ``kiyotaka-ws-<family>-session`` (this module) runs the family's ``SessionCore``: it feeds it
  events (an answer, a socket's end, a registration, the time) and carries out the actions it
  returns (dial, send, ping, kill, post a status or an error, settle a subscription). Every rule
  (auth, replay, acks, timers, backoff, give-up, READY) lives in the core and is tested there with
  a fake clock; this thread decides nothing. It is the only thread that sends requests, so the
  server sees subscribe/unsubscribe in the order they were asked for, replays included.
* ``kiyotaka-ws-<family>-reader`` (one per connection, started and joined here) reads messages
  from its socket and puts the raw data frames, tagged with the connection's number, into the
  family's queue. Protocol answers (auth, subscribe, unsubscribe answers, errors without id) go
  straight to the session as ``_Answer`` messages tagged with their connection, never through
  the queue of user work: a blocked or slow callback never changes what the session concludes
  about the server. When its socket ends the reader posts ``_Ended`` to the session.
* ``kiyotaka-ws-<family>-dispatch`` (dispatch.py) decodes data frames and calls user code. An
  answer the reader could not tell from data (see below) still reaches the session from there.

How the reader tells answers from data, at no cost to streaming (``Session._read``): a text
frame without the bytes ``"points"`` is parsed on the reader (one ``bytes in`` check per text
frame); a binary (brotli) frame is decompressed on the reader only while requests await an
answer (``expecting``, a flag check per binary frame) and only when at most
``MAX_ANSWER_FRAME_BYTES``; found to be data, it is queued already decompressed (or as received
when a recorder taps the queue, so the recording keeps the frame as it came). Steady streaming
pays nothing more: the reader never decompresses outside those windows, because brotli releases
the GIL and a reader that does it per frame starves (see ``Dispatcher._inflate_ahead``).

Order: an answer may now be applied before data frames that preceded it on the same connection
are delivered. That is harmless: an ack only settles a subscription (its points are routed from
the moment it is registered, not from the ack), a rejection only ends one, and an answer from an
earlier connection is ignored by its connection tag. An id-less error is queued for ``on_error``
as a ``ServerError`` by the reader itself, in its place among the frames, and told to the session.

Liveness counts bytes (wire.py): before each ``tick`` the shell tells the core until when any
byte was read (``Heard.BYTES``: the ping timer), any byte of a data message, even one still
arriving (``Heard.DATA``: the stale timer), and until when the reader waited on a full queue
(``Heard.BACKLOG``). With the defaults (ping every 10 s, pong within 10 s) a dead link is noticed
at most 20 s after its last byte. READY needs something from the server on that connection (an
answer, a data frame or a pong: ``Heard.FRAME``/``PONG``): when the timers alone would declare
it, the core asks for a ping and READY waits for its pong (or any frame).

Other threads never touch the session's fields: they post messages to its inbox (``add``,
``remove``, ``answer``, ``stop``) and read immutable values (``state``, counters). The session
never calls user code: statuses and errors go to the dispatcher's queue. Request ids come from
one counter per client and are never reused; an answer is applied only to the request it
answers, on the connection that sent it, so nothing from an old connection touches a new one.
Measured: the core is off the data path (the reader and the dispatcher never call it), so a
frame costs what it did; the suite's time is unchanged by the split.
"""

from __future__ import annotations

import collections
import itertools
import logging
import random
import threading
import time
from typing import Any, Callable, NamedTuple

from . import protocol
from ._arguments import Options
from ._transport import Cancel, DialCancelled, DialError, HandshakeRejected, dial, wire
from ._version import __version__
from .channels import ChannelSpec
from .dispatch import EventQueue
from .errors import DecodeError, KiyotakaError, ServerError

# Backoff, answer_due, MAX_PENDING and MAX_RETRY_AFTER live in the core; older imports find them here.
from .session_core import (  # noqa: F401
    AUTH,
    MAX_PENDING,
    MAX_RETRY_AFTER,
    SUBSCRIBE,
    Action,
    Backoff,
    BucketPacer,
    Connect,
    GiveUp,
    Heard,
    Kill,
    Overflow,
    Ping,
    Released,
    Report,
    Send,
    SessionCore,
    SetState,
    Settle,
    answer_due,
    at_most,
)
from .source import WireSub
from .status import ConnectionStatus, State
from .threads import join_by

log = logging.getLogger(__name__)

MAX_ANSWER_FRAME_BYTES = 64 * 2**10  # a binary frame larger than this is never an answer we wait for
MAX_INBOX_ANSWERS = 10_000  # answers waiting for the session; a flood beyond this is dropped
_USER_AGENT = f"kiyotaka-ws/{__version__}"


class Secret:
    """Holds the API key; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


# -- messages to the session ----------------------------------------------------------------------

class _Add(NamedTuple):
    sub: WireSub


class _Remove(NamedTuple):
    spec: ChannelSpec


class _Answer(NamedTuple):
    conn: int
    message: dict[str, Any]


class _Ended(NamedTuple):
    conn: int
    error: BaseException


class _Stop(NamedTuple):
    pass


class _Shed(NamedTuple):
    capacity: int


class _Heard(NamedTuple):
    """The connection's first data message, or a pong, arrived: the server is there."""

    conn: int


class _Fail(NamedTuple):
    error: KiyotakaError


class _Link:
    """One connection: its number, socket and reader thread."""

    def __init__(self, number: int, ws: wire.WebSocket) -> None:
        self.number = number
        self.ws = ws
        self.unblocked_at = 0.0   # set by the reader: it last waited on a full queue until then
        self.pong_told = False    # set by the reader: its first pong was posted as _Heard
        self.reader: threading.Thread | None = None
        self.reader_done = False  # set by the session on the reader's _Ended


class Session:
    """Runs one endpoint family's ``SessionCore`` on a thread; see the module docstring."""

    def __init__(self, family: str, url: str, key: Secret, options: Options, queue: EventQueue,
                 ids: itertools.count[int], on_fatal: Callable[[KiyotakaError], None],
                 rng: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic, *, shard: int = 0,
                 on_overflow: Callable[[Session, Overflow], None] | None = None,
                 on_released: Callable[[Session, tuple[WireSub, ...]], None] | None = None,
                 on_state: Callable[[], None] | None = None) -> None:
        self.family = family
        self.shard = shard  # its number among the family's connections (shards.py); 0 unsharded
        self.label = family if shard == 0 else f"{family}-{shard}"  # in thread names
        self.url = url
        self._key = key
        self.options = options
        self._queue = queue
        self._on_fatal = on_fatal
        self._on_overflow = on_overflow
        self._on_released = on_released
        self._on_state = on_state
        self._clock = clock
        self._core = SessionCore(family, url, options, ids, rng,
                                 packer=at_most(options.max_channels_per_request),
                                 pacer=BucketPacer(options.max_requests_per_second),
                                 sharded=on_overflow is not None)

        # The inbox: the only way in. Guarded by _inbox_cond; nothing else is shared.
        self._inbox: collections.deque[Any] = collections.deque()
        self._inbox_answers = 0
        self._inbox_cond = threading.Condition(threading.Lock())
        self._stopping = threading.Event()
        self._cancel: Cancel | None = None
        self._link: _Link | None = None  # written by the session thread; read by stop() to abort
        self._thread: threading.Thread | None = None
        self._orphans: dict[int, _Link] = {}  # ended links whose reader has not reported yet
        self._decoder = protocol.FrameDecoder(options.max_frame_bytes)  # the reader's, for answers

        # Read by other threads (single writer each).
        self.ready = threading.Event()
        self.state = State.STOPPED
        self.reconnects = 0
        self.requests_sent = 0
        self.frames = 0
        self.bytes = 0
        self.last_rx: float | None = None
        self.fatal: KiyotakaError | None = None
        # Written by the session thread, read by the reader per binary frame: requests await an
        # answer, so small binary frames are decompressed on the reader to find answers.
        self.expecting = False

    # -- from any thread --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"kiyotaka-ws-{self.label}-session",
                                            daemon=True)
            self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def add(self, sub: WireSub) -> None:
        """Register a wire subscription: sent at once when live, and on every reconnect."""
        self._post(_Add(sub))

    def remove(self, spec: ChannelSpec) -> None:
        """Forget a wire subscription: ``public/unsubscribe`` goes out when live; never re-sent."""
        self._post(_Remove(spec))

    def shed(self, capacity: int) -> None:
        """A connection holds ``capacity``: hand back unsent subscribes beyond it (``Overflow``)."""
        self._post(_Shed(capacity))

    def answer(self, conn: int, message: dict[str, Any]) -> None:
        """An answer decoded by the dispatcher, tagged with the connection that received it."""
        with self._inbox_cond:
            if self._inbox_answers >= MAX_INBOX_ANSWERS:
                return  # a flood of answers: nothing we asked for can be that many
            self._inbox_answers += 1
            self._inbox.append(_Answer(conn, message))
            self._inbox_cond.notify()

    def fail(self, error: KiyotakaError) -> None:
        """Give up for good with ``error`` (an internal thread died)."""
        self._post(_Fail(error))

    def stop(self) -> None:
        """Begin stopping: cut a dial or a connection short. ``join`` waits for the end."""
        self._stopping.set()
        cancel, link = self._cancel, self._link
        if cancel is not None:
            cancel.cancel()
        if link is not None:
            link.ws.abort()
        self._post(_Stop())

    def join(self, deadline: float) -> bool:
        return join_by(self._thread, deadline)

    @property
    def conn(self) -> int | None:
        """The current connection's number (answers are tagged with it), or None between connections."""
        link = self._link
        return None if link is None else link.number

    @property
    def last_frame_age(self) -> float | None:
        link = self._link
        last = link.ws.last_rx if link is not None else self.last_rx
        return None if last is None else max(0.0, self._clock() - last)

    def _post(self, message: Any) -> None:
        with self._inbox_cond:
            self._inbox.append(message)
            self._inbox_cond.notify()

    def _take(self, deadline: float | None) -> Any:
        """The next inbox message, or None at ``deadline``."""
        with self._inbox_cond:
            while not self._inbox:
                timeout = None if deadline is None else deadline - self._clock()
                if timeout is not None and timeout <= 0:
                    return None
                self._inbox_cond.wait(timeout)
            message = self._inbox.popleft()
            if type(message) is _Answer:
                self._inbox_answers -= 1
            return message

    # -- the session thread: events to the core -----------------------------------------------------

    def _run(self) -> None:
        try:
            self._do(self._core.start(self._clock()))
            self._serve()
        except BaseException as exc:
            log.exception("%s: internal error in the session", self.family)
            error = KiyotakaError(f"{self.family}: internal error ({type(exc).__name__}: {exc!r})")
            if self.fatal is None:
                self._core.fail(error, self._clock())
                self._give_up(error, tuple(self._core.subs()))
        finally:
            self._close_link(polite=True)
            self.ready.clear()
            self._core.stop(self._clock())
            if self.state is not State.FAILED:
                self._set_state(State.STOPPED)
            for link in self._orphans.values():  # awake: sockets shut down, stop() closed the queue to data
                if link.reader is not None:
                    link.reader.join(2.0)
                link.ws.close_socket()
            self._orphans.clear()

    def _serve(self) -> None:
        """Until stopped or given up: tell the core the time and what came, do what it says."""
        core = self._core
        while not core.done and not self._stopping.is_set():
            now = self._clock()
            link = self._link
            if link is not None:
                ws = link.ws
                self.last_rx = ws.last_rx
                core.heard(link.number, Heard.BYTES, ws.last_rx, now)
                core.heard(link.number, Heard.DATA, ws.data_rx, now)
                core.heard(link.number, Heard.BACKLOG, link.unblocked_at, now)
            self._do(core.tick(now, self._queue.blocked))
            if core.done or self._stopping.is_set():
                return
            message = self._take(core.wake_at)
            if message is None:
                continue
            if type(message) is _Stop:
                return
            self._handle(message)

    def _handle(self, message: Any) -> None:
        kind, core, now = type(message), self._core, self._clock()
        if kind is _Add:
            self._do(core.add(message.sub, now))
        elif kind is _Remove:
            self._do(core.remove(message.spec, now))
        elif kind is _Answer:
            self._do(core.answer(message.conn, message.message, now))
        elif kind is _Shed:
            self._do(core.shed(message.capacity, now))
        elif kind is _Heard:
            self._do(core.heard(message.conn, Heard.FRAME, now, now))
        elif kind is _Ended:
            self._ended(message.conn, message.error, now)
        elif kind is _Fail:
            self._do(core.fail(message.error, now))

    def _ended(self, conn: int, error: BaseException, now: float) -> None:
        link = self._link
        if link is None or link.number != conn:  # the reader of a link given up earlier: now its socket can close
            orphan = self._orphans.pop(conn, None)
            if orphan is not None:
                orphan.ws.close_socket()
            return
        link.reader_done = True
        self._close_link(polite=self._stopping.is_set())
        if self._stopping.is_set():
            return
        code = error.code if isinstance(error, wire.ConnectionClosed) else None
        close_reason = error.reason if isinstance(error, wire.ConnectionClosed) and code is not None else None
        # wire.py knows no Kiyotaka names: say which of the user's settings a 1009 refers to.
        reason = (str(error) or type(error).__name__).replace("max_message_bytes", "max_frame_bytes")
        self._do(self._core.lost(conn, now, reason, code, close_reason))

    # -- the session thread: actions from the core --------------------------------------------------

    def _do(self, actions: list[Action]) -> None:
        """Carry out ``actions`` in order (and what carrying them out makes the core say)."""
        todo = collections.deque(actions)
        while todo:
            action = todo.popleft()
            if isinstance(action, Send):
                todo.extend(self._send(action))
            elif isinstance(action, Settle):
                action.sub.settle(action.state, action.error)
            elif isinstance(action, SetState):
                self._set_state(action.state, action.attempt, action.reason)
            elif isinstance(action, Ping):
                todo.extend(self._ping(action.conn))
            elif isinstance(action, Kill):
                link = self._link
                if link is not None and link.number == action.conn:
                    link.ws.abort()  # its reader wakes up and reports _Ended
            elif isinstance(action, Report):
                self._queue.put_control(action.error)
            elif isinstance(action, Overflow):
                assert self._on_overflow is not None  # only a sharded core hands subscriptions back
                self._on_overflow(self, action)
            elif isinstance(action, Released):
                if self._on_released is not None:
                    self._on_released(self, action.subs)
            elif isinstance(action, Connect):
                todo.extend(self._connect())
            elif isinstance(action, GiveUp):
                self._close_link(polite=False)
                self._give_up(action.error, action.subs)
        self.expecting = self._core.expecting
        self.reconnects = self._core.reconnects
        self.requests_sent = self._core.requests_sent

    def _connect(self) -> list[Action]:
        """Dial; the core hears how it went."""
        options, core = self.options, self._core
        cancel = Cancel()
        self._cancel = cancel
        if self._stopping.is_set():  # stop() may have missed this Cancel: look again after storing it
            return []
        log.info("%s: connecting to %s", self.family, core.shown_url)
        try:
            sock, leftover = dial(self.url, timeout=options.connect_timeout, cancel=cancel,
                                  sslopt=options.sslopt, proxy=options.proxy, user_agent=_USER_AGENT)
        except HandshakeRejected as exc:
            return core.failed_to_connect(self._clock(), f"HTTP {exc.status} {exc.reason}".rstrip(),
                                          status=exc.status, retry_after=exc.retry_after, rejected=True)
        except DialCancelled:
            return []
        except DialError as exc:  # not retryable: a proxy refusing our credentials, an untrusted certificate
            if self._stopping.is_set():
                return []
            return core.failed_to_connect(self._clock(), str(exc), status=getattr(exc, "status", None),
                                          retryable=exc.retryable)
        ws = wire.WebSocket(sock, max_message_bytes=options.max_frame_bytes, send_timeout=options.send_timeout,
                            leftover=leftover, clock=self._clock)
        link = _Link(next(self._link_numbers), ws)
        ws.on_pong = lambda: self._heard_pong(link)
        self._link = link
        if self._stopping.is_set():
            self._close_link(polite=True)
            return []
        link.reader = threading.Thread(target=self._read, args=(link,), daemon=True,
                                       name=f"kiyotaka-ws-{self.label}-reader")
        link.reader.start()
        log.info("%s: connected", self.family)
        return core.connected(link.number, self._clock())

    _link_numbers = itertools.count(1)  # connection numbers: unique in the process

    def _send(self, action: Send) -> list[Action]:
        link = self._link
        if link is None or link.number != action.conn:
            return []
        request = action.request
        channels = [spec.wire() for spec in request.specs]
        if request.method == AUTH:
            text = protocol.authenticate(request.id, self._key.reveal())
        elif request.method == SUBSCRIBE:
            text = protocol.subscribe(request.id, channels, self.options.compression)
        else:
            text = protocol.unsubscribe(request.id, channels)
        self.expecting = True  # before it goes: its answer may come at once
        try:
            link.ws.send_text(text)
        except wire.WireError as exc:  # the peer stopped reading, or the socket is gone
            return self._core.io_failed(link.number, f"send failed ({exc})", self._clock())
        return []

    def _ping(self, conn: int) -> list[Action]:
        link = self._link
        if link is None or link.number != conn:
            return []
        try:
            link.ws.ping()
        except wire.WireError as exc:
            return self._core.io_failed(conn, f"ping failed ({exc})", self._clock())
        return []

    def _close_link(self, polite: bool) -> None:
        """End the current link. Only this thread closes sockets, and only once the link's reader
        has reported its end (no thread can then be using the descriptor, so it cannot be reused
        under anyone). A reader still busy (waiting for room in a full queue, say) is not waited
        for: its link is kept until its ``_Ended`` arrives, or until the session ends."""
        link = self._link
        if link is None:
            return
        self._link = None
        if polite:
            link.ws.close(1000)
        link.ws.abort()
        if link.reader is None or link.reader_done:
            link.ws.close_socket()
        else:
            self._orphans[link.number] = link

    def _give_up(self, error: KiyotakaError, subs: tuple[WireSub, ...]) -> None:
        self.fatal = error
        self._stopping.set()
        reason = str(error)  # often "<family>: ..." already: say the family once
        log.info("%s: giving up: %s", self.family, reason.removeprefix(f"{self.family}: "))
        self._queue.put_control(error)
        self._set_state(State.FAILED, reason=str(error))
        for sub in subs:
            sub.end(error)
        self._on_fatal(error)

    def _set_state(self, state: State, attempt: int = 0, reason: str | None = None) -> None:
        self.state = state
        if state is State.READY:
            self.ready.set()
        else:
            self.ready.clear()
        self._queue.put_status(ConnectionStatus(self.family, state, attempt, reason, self.shard))
        if self._on_state is not None:
            self._on_state()


    # -- the reader thread ------------------------------------------------------------------------

    def _read(self, link: _Link) -> None:
        """Receive messages: answers to the session, data (raw) to the queue; never calls user code.

        Per data frame this adds one ``b'"points"' in payload`` on text frames and one flag check
        on binary frames to what the loop did before (see the module docstring).
        """
        read, put, clock, number = link.ws.read_message, self._queue.put_frame, self._clock, link.number
        error: BaseException
        try:
            opcode, payload = read()
            self._post(_Heard(number))  # the first message proves the server is there (READY needs it)
            while True:
                self.frames += 1
                self.bytes += len(payload)
                binary = opcode == wire.BINARY
                queued: bytes | None = payload
                if binary:
                    if self.expecting and len(payload) <= MAX_ANSWER_FRAME_BYTES:
                        queued, binary = self._look_into(payload, number)
                elif b'"points"' not in payload:
                    queued = self._answer_or(payload, payload, False, number)
                if queued is not None and put(queued, binary, number):
                    link.unblocked_at = clock()  # we waited on a full queue: what follows is backlog
                opcode, payload = read()
        except BaseException as exc:  # noqa: BLE001 - every end of a reader is reported to the session
            error = exc
        self._post(_Ended(number, error))  # its last act: after this it never touches the socket

    def _heard_pong(self, link: _Link) -> None:
        """On the reader: the link's first pong tells the session once (a pong flood posts nothing more)."""
        if not link.pong_told:
            link.pong_told = True
            self._post(_Heard(link.number))

    def _look_into(self, payload: bytes, number: int) -> tuple[bytes | None, bool]:
        """A small binary frame while answers are awaited: decompress it here; (what to queue, binary).

        Data is queued decompressed (the dispatcher does not do the work again), or as received
        when a recorder taps the queue (it records frames as they came).
        """
        try:
            text = self._decoder.inflate(payload)
        except DecodeError:
            return payload, True  # the dispatcher reports it, in order
        keep_raw = self._queue.tap is not None
        if b'"points"' in text:
            return (payload, True) if keep_raw else (text, False)
        queued = self._answer_or(text, payload, True, number)
        if queued is None:
            return None, True
        return (payload, True) if keep_raw else (queued, False)

    def _answer_or(self, text: bytes, received: bytes, binary: bool, number: int) -> bytes | None:
        """Hand ``text`` to the session if it is an answer or an id-less error (None: consumed);
        else return it for the queue (data in an unusual form, or junk the dispatcher reports)."""
        try:
            message = self._decoder.decode(text, False)
        except DecodeError:
            return text
        kind = protocol.classify(message)
        if kind is not protocol.Kind.RESPONSE and kind is not protocol.Kind.ERROR:
            return text
        tap = self._queue.tap
        if tap is not None:  # a recording holds every frame received, answers included
            tap(received, binary, number)
        if kind is protocol.Kind.ERROR:  # to on_error in its place among the frames, then to the session
            code, reason, data = protocol.error_details(message)
            self._queue.put_control(ServerError(f"server error {code}: {reason}", code=code, data=data))
        self.answer(number, message)
        return None
