"""One endpoint family's protocol session: the single owner of that family's protocol state.

Design. Each family has three threads:

* ``kiyotaka-ws-<family>-session`` (this module) owns, alone, everything about the protocol:
  the connection state machine (dial, authenticate, replay, READY, backoff, give up), request
  ids, pending requests, the wire subscriptions and their states, every timer (ping, pong,
  stale data, auth and subscribe timeouts) and every request sent. It is the only thread that
  sends requests, so the server sees subscribe/unsubscribe in the order they were asked for,
  replays included.
* ``kiyotaka-ws-<family>-reader`` (one per connection, started and joined here) only reads
  messages from its socket and puts the raw frames, tagged with the connection's number, into
  the family's queue. When its socket ends it posts ``_Ended`` to the session.
* ``kiyotaka-ws-<family>-dispatch`` (dispatch.py) decodes frames and calls user code; answers to
  requests come back to the session as ``_Answer`` messages tagged with their connection.

Other threads never touch the session's fields: they post messages to its inbox (``add``,
``remove``, ``answer``, ``stop``) and read immutable values (``state``, counters). The session
never calls user code: statuses and errors go to the dispatcher's queue. Request ids come from
one counter per client and are never reused; an answer is applied only to the request it
answers, on the connection that sent it, so nothing from an old connection touches a new one.
"""

from __future__ import annotations

import collections
import itertools
import logging
import random
import threading
import time
from typing import Any, Callable, NamedTuple

import attrs

from . import protocol, wire
from ._transport import Cancel, DialCancelled, DialError, HandshakeRejected, Proxy, dial
from ._version import __version__
from .channels import ChannelSpec
from .dispatch import EventQueue
from .errors import (
    AuthenticationError,
    ConnectionFailedError,
    KiyotakaError,
    SubscriptionError,
    gave_up,
)
from .status import ConnectionStatus, State
from .threads import join_by

log = logging.getLogger("kiyotaka_ws.session")

MAX_PENDING = 10_000        # requests awaiting an answer; the oldest are forgotten past this
MAX_INBOX_ANSWERS = 10_000  # answers waiting for the session; a flood beyond this is dropped
MAX_RETRY_AFTER = 3600.0    # a server's Retry-After is honoured up to an hour
_USER_AGENT = f"kiyotaka-ws/{__version__}"
_REJECTED_KEY_CLOSE_CODES = frozenset({1008, 3000})  # plus 4000-4999: "a close that rejects the key"


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


@attrs.frozen
class Options:
    """The connection settings of ``KiyotakaClient`` (validated there)."""

    compression: str | None = "brotli"
    reconnect: bool = True
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 10.0
    stale_timeout: float | None = None
    auth_timeout: float = 5.0
    subscribe_timeout: float = 10.0
    connect_timeout: float = 10.0
    send_timeout: float = 10.0
    max_frame_bytes: int = 16 * 2**20
    max_retries: int | None = None
    sslopt: dict[str, Any] | None = None
    proxy: Proxy | None = None


class Backoff:
    """Exponential backoff with full jitter inside [initial, min(maximum, initial * 2**attempt)]."""

    def __init__(self, initial: float, maximum: float, rng: Callable[[], float] = random.random) -> None:
        self.initial = initial
        self.maximum = maximum
        self.rng = rng

    def delay(self, attempt: int) -> float:
        cap = min(self.maximum, self.initial * 2.0 ** min(attempt, 60))
        return self.initial + self.rng() * (cap - self.initial)


class WireSub:
    """The server's view of one channel spec: pending, active, assumed, rejected, or ended.

    Written only by its family's session (and by the client at stop); ``wait`` is for any thread.
    """

    PENDING, ACTIVE, ASSUMED, REJECTED = "pending", "active", "assumed", "rejected"

    def __init__(self, spec: ChannelSpec) -> None:
        self.spec = spec
        self.state = self.PENDING
        self.error: KiyotakaError | None = None  # the rejection, or why waiting is over for good
        self._cond = threading.Condition()

    def settle(self, state: str, error: KiyotakaError | None = None) -> None:
        with self._cond:
            self.state, self.error = state, error
            self._cond.notify_all()

    def end(self, error: KiyotakaError) -> None:
        """No answer will ever come (client stopped, family failed): ``wait`` raises ``error``."""
        with self._cond:
            if self.state != self.REJECTED:
                self.error = error
            self._cond.notify_all()

    def wait(self, timeout: float | None) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.state != self.PENDING or self.error is not None, timeout):
                raise TimeoutError(f"no answer to the subscription {self.spec} within {timeout}s")
            if self.error is not None:
                raise self.error


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


class _Fail(NamedTuple):
    error: KiyotakaError


class _Pending(NamedTuple):
    kind: str                # "auth" | "subscribe" | "unsubscribe"
    sub: WireSub | None
    conn: int
    sent: float


class _Link:
    """One connection: its number, socket and reader thread. Fields written by its reader only."""

    def __init__(self, number: int, ws: wire.WebSocket, now: float) -> None:
        self.number = number
        self.ws = ws
        self.connected_at = now
        self.last_data = now      # data frames, for stale_timeout
        self.unblocked_at = 0.0   # the reader last waited on a full queue until then
        self.reader: threading.Thread | None = None
        self.reader_done = False            # set by the session on the reader's _Ended
        self.end_reason: str | None = None  # set by the session when it kills the link


class _GiveUp(Exception):
    """Internal: the family fails for good with ``error``."""

    def __init__(self, error: KiyotakaError) -> None:
        super().__init__(str(error))
        self.error = error


class Session:
    """Owns one endpoint family's protocol state; see the module docstring."""

    def __init__(self, family: str, url: str, key: Secret, options: Options, queue: EventQueue,
                 ids: itertools.count[int], on_fatal: Callable[[KiyotakaError], None],
                 rng: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.family = family
        self.url = url
        self._key = key
        self.options = options
        self._queue = queue
        self._ids = ids
        self._on_fatal = on_fatal
        self._clock = clock
        self._backoff = Backoff(options.backoff_initial, options.backoff_max, rng)

        # The inbox: the only way in. Guarded by _inbox_cond; nothing else is shared.
        self._inbox: collections.deque[Any] = collections.deque()
        self._inbox_answers = 0
        self._inbox_cond = threading.Condition(threading.Lock())
        self._stopping = threading.Event()
        self._cancel: Cancel | None = None
        self._link: _Link | None = None  # written by the session thread; read by stop() to abort
        self._thread: threading.Thread | None = None
        self._orphans: dict[int, _Link] = {}  # ended links whose reader has not reported yet

        # Owned by the session thread.
        self._subs: dict[ChannelSpec, WireSub] = {}
        self._pending: dict[int, _Pending] = {}      # in send order: the oldest first
        self._awaiting: dict[int, WireSub] = {}      # subscribes not yet answered nor timed out
        self._live = False                           # authenticated: subscriptions go out at once
        self._auth_deadline: float | None = None
        self._ping_sent: float | None = None

        # Read by other threads (single writer each).
        self.ready = threading.Event()
        self.state = State.STOPPED
        self.reconnects = 0
        self.frames = 0
        self.bytes = 0
        self.last_rx: float | None = None
        self.fatal: KiyotakaError | None = None

    # -- from any thread --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"kiyotaka-ws-{self.family}-session",
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

    # -- the session thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._supervise()
        except _GiveUp as exc:
            self._give_up(exc.error)
        except BaseException as exc:
            log.exception("%s: internal error in the session", self.family)
            self._give_up(KiyotakaError(f"{self.family}: internal error ({type(exc).__name__}: {exc!r})"))
        finally:
            self._close_link(polite=True)
            self.ready.clear()
            if self.state is not State.FAILED:
                self._set_state(State.STOPPED)
            for link in self._orphans.values():  # awake: sockets shut down, stop() closed the queue to data
                if link.reader is not None:
                    link.reader.join(2.0)
                link.ws.close_socket()
            self._orphans.clear()

    def _supervise(self) -> None:
        attempt = 0      # for the backoff: reset once a connection stayed up
        failures = 0     # consecutive attempts that never reached READY, for max_retries
        reason: str | None = None
        options = self.options
        while not self._stopping.is_set():
            self._set_state(State.CONNECTING, attempt, reason)
            retry_after = 0.0
            up_for = 0.0
            try:
                link = self._connect()
                if link is None:
                    return
                reached_ready, reason, up_for = self._serve(link)
            except HandshakeRejected as exc:
                reason, reached_ready = self._classify_rejection(exc), False
                retry_after = min(exc.retry_after or 0.0, MAX_RETRY_AFTER)
            except DialCancelled:
                return
            except DialError as exc:
                if not exc.retryable:  # a proxy refusing our credentials, an untrusted certificate
                    raise _GiveUp(ConnectionFailedError(
                        f"{self.family}: {exc}", family=self.family, status=getattr(exc, "status", None),
                        url=self.url)) from None
                reason, reached_ready = str(exc), False
            if self._stopping.is_set():
                return
            failures = 0 if reached_ready else failures + 1
            if not options.reconnect:
                raise _GiveUp(ConnectionFailedError(
                    f"{self.family} connection lost ({reason}) and reconnect=False",
                    family=self.family, url=self.url))
            if options.max_retries is not None and failures > options.max_retries:
                raise _GiveUp(ConnectionFailedError(
                    f"{self.family}: {gave_up(failures, options.max_retries, reason)}",
                    family=self.family, url=self.url))
            if up_for >= min(options.backoff_max, 10.0):
                attempt = 0
            delay = max(self._backoff.delay(attempt), retry_after)
            attempt += 1
            self.reconnects += 1
            log.info("%s: connection lost (%s); reconnecting in %.2fs (attempt %d)",
                     self.family, reason, delay, attempt)
            self._set_state(State.DISCONNECTED, attempt, reason)
            self._idle(self._clock() + delay)

    def _classify_rejection(self, exc: HandshakeRejected) -> str:
        """Raise ``_GiveUp`` for a permanent HTTP answer to the upgrade; the reason otherwise."""
        if exc.status in (401, 403):
            raise _GiveUp(AuthenticationError(f"API key rejected: HTTP {exc.status} from {_safe_url(self.url)}"))
        if exc.status in (400, 404, 410):
            raise _GiveUp(ConnectionFailedError(
                f"HTTP {exc.status} from {_safe_url(self.url)}: wrong URL?",
                family=self.family, status=exc.status, url=self.url))
        return f"HTTP {exc.status} {exc.reason}".rstrip()

    def _connect(self) -> _Link | None:
        options = self.options
        cancel = Cancel()
        self._cancel = cancel
        if self._stopping.is_set():  # stop() may have missed this Cancel: look again after storing it
            return None
        log.info("%s: connecting to %s", self.family, _safe_url(self.url))
        sock, leftover = dial(self.url, timeout=options.connect_timeout, cancel=cancel,
                              sslopt=options.sslopt, proxy=options.proxy, user_agent=_USER_AGENT)
        ws = wire.WebSocket(sock, max_message_bytes=options.max_frame_bytes, send_timeout=options.send_timeout,
                            leftover=leftover, clock=self._clock)
        link = _Link(next(self._link_numbers), ws, self._clock())
        self._link = link
        if self._stopping.is_set():
            self._close_link(polite=True)
            return None
        link.reader = threading.Thread(target=self._read, args=(link,), daemon=True,
                                       name=f"kiyotaka-ws-{self.family}-reader")
        link.reader.start()
        log.info("%s: connected", self.family)
        return link

    _link_numbers = itertools.count(1)  # connection numbers: unique in the process

    def _idle(self, until: float) -> None:
        """Back off until ``until``, still taking registrations (answers here are all stale)."""
        while not self._stopping.is_set():
            message = self._take(until)
            if message is None:
                return
            self._handle(message, None)

    # -- one connection ---------------------------------------------------------------------------

    def _serve(self, link: _Link) -> tuple[bool, str, float]:
        """Run one connection until it ends: (reached READY, why it ended, seconds it was up)."""
        reached_ready = False
        self._ping_sent = None
        self._auth_deadline = self._clock() + self.options.auth_timeout
        self._send(link, "auth", None)
        try:
            while True:
                now = self._clock()
                wake_at = self._check_timers(link, now)
                message = self._take(wake_at)
                if message is None:
                    continue
                if type(message) is _Ended:
                    if message.conn == link.number:
                        link.reader_done = True
                        return reached_ready, self._end_reason(link, message.error), self._clock() - link.connected_at
                    self._handle(message, link)
                    continue
                if type(message) is _Stop:
                    return reached_ready, "stopped", 0.0
                self._handle(message, link)
                reached_ready = reached_ready or self.state is State.READY
        finally:
            self._close_link(polite=self._stopping.is_set())
            self._live = False
            self._auth_deadline = None
            self._pending.clear()
            self._awaiting.clear()
            self.ready.clear()

    def _end_reason(self, link: _Link, error: BaseException) -> str:
        """Why the link ended; a close during authentication that rejects the key is fatal."""
        if isinstance(error, wire.ConnectionClosed) and not self._live and _rejects_key(error.code):
            raise _GiveUp(AuthenticationError(
                f"the server closed the {self.family} connection during authentication "
                f"(close {error.code} {error.reason!r}): API key rejected"))
        if link.end_reason is not None:
            return link.end_reason
        # wire.py knows no Kiyotaka names: say which of the user's settings a 1009 refers to.
        return (str(error) or type(error).__name__).replace("max_message_bytes", "max_frame_bytes")

    def _handle(self, message: Any, link: _Link | None) -> None:
        kind = type(message)
        if kind is _Add:
            sub = message.sub
            if sub.spec not in self._subs:
                self._subs[sub.spec] = sub
                if self._live and link is not None:
                    self._send(link, "subscribe", sub)
        elif kind is _Remove:
            sub = self._subs.pop(message.spec, None)
            if sub is None:
                return
            for req_id in [i for i, s in self._awaiting.items() if s is sub]:
                del self._awaiting[req_id]
            if self._live and link is not None and sub.state != WireSub.REJECTED:
                self._send(link, "unsubscribe", sub)
            self._check_ready()
        elif kind is _Answer:
            if link is not None and message.conn == link.number:
                self._on_answer(link, message.message)
            else:
                log.debug("%s: ignored an answer from an earlier connection", self.family)
        elif kind is _Ended:  # the reader of a link given up earlier: now its socket can close
            orphan = self._orphans.pop(message.conn, None)
            if orphan is not None:
                orphan.ws.close_socket()
        elif kind is _Fail:
            raise _GiveUp(message.error)
        elif kind is _Stop:
            pass

    def _send(self, link: _Link, kind: str, sub: WireSub | None) -> None:
        """Send one request on ``link`` and remember it until answered or expired."""
        req_id = next(self._ids)
        if kind == "subscribe":
            assert sub is not None
            text = protocol.subscribe(req_id, [sub.spec.wire()], self.options.compression)
            self._awaiting[req_id] = sub
        elif kind == "unsubscribe":
            assert sub is not None
            text = protocol.unsubscribe(req_id, [sub.spec.wire()])
        else:
            text = protocol.authenticate(req_id, self._key.reveal())
        self._pending[req_id] = _Pending(kind, sub, link.number, self._clock())
        while len(self._pending) > MAX_PENDING:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            self._awaiting.pop(oldest, None)
        try:
            link.ws.send_text(text)
        except wire.WireError as exc:  # the peer stopped reading, or the socket is gone
            self._kill(link, f"send failed ({exc})")

    def _on_answer(self, link: _Link, message: dict[str, Any]) -> None:
        req_id = message.get("id")
        entry = self._pending.pop(req_id, None) if type(req_id) is int else None
        if entry is None:
            log.debug("%s: an answer to no pending request (id %r)", self.family, req_id)
            return
        failed = "error" in message
        if entry.kind == "auth":
            if failed:
                code, text, _ = protocol.error_details(message)
                raise _GiveUp(AuthenticationError(f"API key rejected by the server ({code}: {text})"))
            if not self._live:
                log.info("%s: authenticated", self.family)
                self._go_live(link)
        elif entry.kind == "subscribe":
            sub = entry.sub
            assert sub is not None
            self._awaiting.pop(req_id, None)  # type: ignore[arg-type]
            if self._subs.get(sub.spec) is not sub:
                return  # removed since (and maybe registered anew): this answer is not for it
            if failed:
                code, text, _ = protocol.error_details(message)
                error = SubscriptionError(f"subscription {sub.spec} rejected ({code}: {text})",
                                          channel=sub.spec.wire(), code=code, server_message=text)
                sub.settle(WireSub.REJECTED, error)
                self._queue.put_control(error)
            else:
                log.debug("%s: subscribed to %s", self.family, sub.spec)
                sub.settle(WireSub.ACTIVE)
            self._check_ready()
        elif failed:  # an unsubscribe the server refused: nothing to undo, but say so
            log.info("%s: unsubscribe from %s failed: %s", self.family,
                     entry.sub.spec if entry.sub else "?", protocol.error_details(message)[1])

    def _go_live(self, link: _Link) -> None:
        """Authenticated (or no answer within auth_timeout): replay every subscription, in order."""
        self._live = True
        self._auth_deadline = None
        replay = [sub for sub in self._subs.values() if sub.state != WireSub.REJECTED]
        for sub in replay:
            sub.settle(WireSub.PENDING)
            self._send(link, "subscribe", sub)
        if replay:
            log.info("%s: subscribing to %d channel(s)", self.family, len(replay))
        self._check_ready()

    def _check_ready(self) -> None:
        if self._live and not self._awaiting and self.state is not State.READY:
            self._set_state(State.READY)

    def _check_timers(self, link: _Link, now: float) -> float | None:
        """Act on every timer that is due; return when the next one is (None: nothing to time)."""
        options = self.options
        deadlines: list[float] = []
        if self._auth_deadline is not None:
            if now >= self._auth_deadline:
                log.info("%s: no answer to authentication within %.1fs; going on", self.family, options.auth_timeout)
                self._go_live(link)
            else:
                deadlines.append(self._auth_deadline)
        # Subscribe answers not come within subscribe_timeout are assumed; a late one still counts.
        while self._awaiting:
            req_id, sub = next(iter(self._awaiting.items()))
            due = self._pending[req_id].sent + options.subscribe_timeout if req_id in self._pending else now
            if now < due:
                deadlines.append(due)
                break
            del self._awaiting[req_id]
            if sub.state == WireSub.PENDING:
                log.info("%s: no answer to the subscription %s within %.1fs; assuming it is active",
                         self.family, sub.spec, options.subscribe_timeout)
                sub.settle(WireSub.ASSUMED)
            self._check_ready()
        # Forget requests never answered (late answers are kept for a while, then the table sheds them).
        horizon = max(60.0, 3 * options.subscribe_timeout)
        while self._pending:
            req_id, entry = next(iter(self._pending.items()))
            if now < entry.sent + horizon:
                deadlines.append(entry.sent + horizon)
                break
            del self._pending[req_id]
            self._awaiting.pop(req_id, None)
        ws = link.ws
        blocked = self._queue.blocked
        heard = max(ws.last_rx, link.unblocked_at)  # waiting on a full queue is back-pressure, not silence
        self.last_rx = ws.last_rx
        if options.ping_interval:
            outstanding = self._ping_sent is not None and heard < self._ping_sent
            if not outstanding:
                last_ping = self._ping_sent if self._ping_sent is not None else link.connected_at
                if now >= last_ping + options.ping_interval:
                    self._ping_sent = last_ping = now
                    outstanding = True
                    try:
                        ws.ping()
                    except wire.WireError as exc:
                        self._kill(link, f"ping failed ({exc})")
                        return None
                deadlines.append(last_ping + options.ping_interval)
            if options.ping_timeout and outstanding:
                due = self._ping_sent + options.ping_timeout  # type: ignore[operator]
                if now >= due and not blocked:
                    self._kill(link, f"no pong within {options.ping_timeout}s")
                    return None
                deadlines.append(due)
        if options.stale_timeout:
            due = max(link.last_data, link.unblocked_at) + options.stale_timeout
            if now >= due and not blocked:
                self._kill(link, f"no data for {options.stale_timeout}s")
                return None
            deadlines.append(due)
        if blocked:  # re-check soon: the reader may unblock at any time
            deadlines.append(now + 0.5)
        return min(deadlines) if deadlines else None

    def _kill(self, link: _Link, reason: str) -> None:
        """End the link so its reader wakes up and reports; the reason shows in the status."""
        if link.end_reason is None:
            log.info("%s: %s; closing the connection", self.family, reason)
            link.end_reason = reason
        link.ws.abort()

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

    def _give_up(self, error: KiyotakaError) -> None:
        self.fatal = error
        self._stopping.set()
        log.info("%s: giving up: %s", self.family, error)
        self._queue.put_control(error)
        self._set_state(State.FAILED, reason=str(error))
        for sub in self._subs.values():
            sub.end(error)
        self._on_fatal(error)

    def _set_state(self, state: State, attempt: int = 0, reason: str | None = None) -> None:
        self.state = state
        if state is State.READY:
            self.ready.set()
            log.info("%s: ready", self.family)
        else:
            self.ready.clear()
        self._queue.put_status(ConnectionStatus(self.family, state, attempt, reason))

    # -- the reader thread ------------------------------------------------------------------------

    def _read(self, link: _Link) -> None:
        """Receive messages and queue their raw payloads; never decodes, never calls user code."""
        read, put, clock, number = link.ws.read_message, self._queue.put_frame, self._clock, link.number
        error: BaseException
        try:
            while True:
                opcode, payload = read()
                link.last_data = clock()
                self.frames += 1
                self.bytes += len(payload)
                if put(payload, opcode == wire.BINARY, number):
                    link.unblocked_at = clock()  # we waited on a full queue: what follows is backlog
        except BaseException as exc:  # noqa: BLE001 - every end of a reader is reported to the session
            error = exc
        self._post(_Ended(number, error))  # its last act: after this it never touches the socket


def _rejects_key(code: int | None) -> bool:
    """A close code that, during authentication, means the key was refused."""
    return code is not None and (code in _REJECTED_KEY_CLOSE_CODES or 4000 <= code <= 4999)


def _safe_url(url: str) -> str:
    """The URL without its query (which could carry credentials in a proxy setup)."""
    return url.split("?", 1)[0]
