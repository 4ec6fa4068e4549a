"""The sans-I/O session core: every protocol rule of one endpoint family, with no thread, socket or clock.

In the manner of websockets' ``protocol.py``: the core takes *events* (a method call each, the time
passed in as ``now``) and returns *actions* (a list of small frozen values) for a shell to carry out.
``session.py`` is that shell: it dials, reads and writes sockets, runs the threads and posts
statuses; it decides nothing. Everything decided lives here and is tested with a fake clock, in
milliseconds (tests/test_session_core.py).

Events (each returns ``list[Action]``; after a stop or a give-up every event returns ``[]``)::

    start(now)                          -> SetState(CONNECTING), Connect
    connected(conn, now)                -> Send(auth)                    a socket is up, numbered conn
    failed_to_connect(now, reason, status=, retry_after=, retryable=)    the dial or the upgrade failed
    lost(conn, now, reason, close_code=, close_reason=)                  conn's reader ended
    heard(conn, kind, at, now)          -> maybe SetState(READY)         Heard.FRAME/PONG/BYTES/DATA/BACKLOG
    answer(conn, message, now)          -> Settle, Report, SetState(READY), GiveUp ...
    io_failed(conn, reason, now)        -> Kill                          a send or a ping raised
    add(sub, now) / remove(spec, now)   -> Send(subscribe / unsubscribe) through the outbox
    shed(capacity, now)                 -> Overflow                      unsent subscribes beyond capacity
    tick(now, reader_blocked=False)     -> Ping, Kill, Settle(ASSUMED), SetState, Connect ...
    fail(error, now) / stop(now)        -> GiveUp / SetState(STOPPED)

After every ``tick`` the core's ``wake_at`` says when it wants the next one (None: only an event can
change anything); ``expecting`` says whether requests await an answer (the reader then looks into
small binary frames for answers); ``reconnects`` counts the backoffs.

Actions: ``Connect()``, ``Send(conn, Request)``, ``Ping(conn)``, ``Kill(conn, reason)``,
``SetState(state, attempt, reason)``, ``Settle(sub, state, error)``, ``Report(error)`` (to
``on_error``), ``Overflow(subs, held, limit)`` (a full connection hands subscriptions back),
``Released(subs)`` (removed subscriptions are off the connection: unsubscribe answered, never
needed, forgotten unanswered, or the connection lost; sharded cores only), ``GiveUp(error, subs)``
(the family fails for good: end every ``subs``' wait).

The outbox. Subscribes and unsubscribes are *intents* queued in one ordered outbox per family,
drained onto the current connection by ``_flush``: a ``Packer`` packs the head of the queue into
requests of one method (``at_most(max_channels_per_request)``; ``one_per_request`` by default) and
a ``Pacer`` says whether a request may go now (``BucketPacer(max_requests_per_second)``: a token
bucket per connection, burst ``min(5, rate)``; ``Unpaced`` by default). The session passes both
from the client's arguments. A queued subscribe whose spec is removed before it went out is
dropped with its unsubscribe, so an unsubscribe never overtakes its subscribe and a removed spec is
never sent again. A replay after a reconnect goes through the same outbox.

An authentication refused as a rate limit (``pacing.classify``: many shards reconnecting at
once) is no rejected key: the connection ends and the next waits at least its ``retry_after``
(counted by ``max_retries``); any other refusal of the key gives up.

Answers (``_on_subscribe_answer``), settled per subscription (``pacing.classify``):
- a rate limit (429, ``RATE_LIMIT``/``TOO_MANY_REQUESTS``/``TOO_MANY``, a ``retry_after``): every
  request on the connection is held for ``pacing.RateLimitBackoff`` (``retry_after`` honoured up
  to 60 s) and the request's subscriptions go again, as they were, before the outbox (*retries*,
  in the order of the requests they come from). Answers to requests sent before the hold began
  are the same burst: they count no new failure. After 5 failures in a row one ``Report(
  RateLimited)`` (a warning); the subscriptions stay PENDING, never rejected for it. An
  unsubscribe is retried the same way unless its spec was registered anew.
- a subscription limit (``sharded`` cores, which ``shards.Shards`` makes): the connection holds
  what it was granted; ``Overflow(subs, held, limit)`` hands the batch back to be placed on another
  connection (the core forgets it: nothing was applied). Refused while the connection holds
  nothing, a batch is split in halves; a channel refused alone on an empty connection is
  rejected. An unsharded core rejects each channel of the batch. A server that closes the
  connection instead, its close reason saying so, teaches the same: the subscriptions not yet
  granted are handed back, the next connection replays the granted ones (none granted yet:
  the close is only a close). Once the family knows the limit, ``shed(capacity)`` hands back the
  subscribes beyond it not yet sent, so they are not sent only to be refused.
- anything else: ``pacing.settle_permanent`` splits a batch until each bad channel is alone (one
  ``SubscriptionError`` each); the parts go again as retries, the good ones end ACTIVE. One bad
  channel in a batch of ``n`` costs at most ``2 * ceil(log2(n))`` more requests.
A subscription removed while its subscribe waits as a retry needs no unsubscribe (never applied).
READY waits for an empty outbox and no retries; ``requests_sent`` counts every request.
Measured (tests/test_session_core.py, fake clock): 1,000 channels at 10 req/s, 50 per request:
20 requests, the last at 1.5 s.

Bounds: ``MAX_PENDING`` requests await an answer (the oldest are forgotten past it); a request
never answered is forgotten after ``max(60 s, 3 * subscribe_timeout)``; Retry-After is honoured up
to ``MAX_RETRY_AFTER``; the outbox holds at most one intent per registered spec plus one per
removed spec, since every intent for a removed spec still queued is dropped; retries hold at most
one entry per registered subscription plus the unsubscribes in flight (bounded by ``MAX_PENDING``).
"""

from __future__ import annotations

import enum
import logging
import random
from collections import deque
from collections.abc import Hashable, Iterator, Sequence
from typing import Any, Callable, Protocol, Union

import attrs

from . import pacing, protocol
from ._transport import redact_url
from .errors import (
    AuthenticationError,
    ConnectionFailedError,
    KiyotakaError,
    RateLimited,
    SubscriptionError,
    gave_up,
)
from .source import WireSub
from .status import State

log = logging.getLogger(__name__)

MAX_PENDING = 10_000        # requests awaiting an answer; the oldest are forgotten past this
MAX_RETRY_AFTER = 3600.0    # a server's Retry-After is honoured up to an hour
BLOCKED_RECHECK = 0.5       # while the reader waits on a full queue, look again this often
STABLE_AFTER = 10.0         # a connection up this long (or backoff_max, if smaller) resets the backoff
_REJECTED_KEY_CLOSE_CODES = frozenset({1008, 3000})  # plus 4000-4999: "a close that rejects the key"

# The states of a wire subscription: ``WireSub``'s (the seam, source.py).
PENDING, ACTIVE, ASSUMED, REJECTED = WireSub.PENDING, WireSub.ACTIVE, WireSub.ASSUMED, WireSub.REJECTED
AUTH, SUBSCRIBE, UNSUBSCRIBE = "auth", "subscribe", "unsubscribe"


class Sub(Protocol):
    """What the core needs of a wire subscription: its spec (hashable, with ``wire()``)."""

    @property
    def spec(self) -> Any: ...


class Heard(enum.Enum):
    """What the server sent on a connection, and until when (``heard(conn, kind, at, now)``)."""

    FRAME = "frame"      # a complete message: the server is there (READY may be declared)
    PONG = "pong"        # a pong: the server is there, and every byte until ``at`` answers a ping
    BYTES = "bytes"      # any byte read until ``at`` (partial frames too): the link lives
    DATA = "data"        # bytes of a data message until ``at``: the stream lives (stale timer)
    BACKLOG = "backlog"  # the reader waited on a full queue until ``at``: what follows is backlog


# -- actions ---------------------------------------------------------------------------------------

@attrs.frozen
class Request:
    """One request to send: the shell renders it (the auth request with the key it holds)."""

    id: int
    method: str                                   # AUTH | SUBSCRIBE | UNSUBSCRIBE
    specs: tuple[Any, ...] = ()                   # the channels (several, once a packer batches)


@attrs.frozen
class Connect:
    """Dial now; answer with ``connected`` or ``failed_to_connect``."""


@attrs.frozen
class Send:
    """Send ``request`` on connection ``conn`` (with the send timeout; a failure: ``io_failed``)."""

    conn: int
    request: Request


@attrs.frozen
class Ping:
    """Send a ping on ``conn`` (a failure: ``io_failed``)."""

    conn: int


@attrs.frozen
class Kill:
    """End the connection (abort its socket); its reader then reports ``lost``."""

    conn: int
    reason: str


@attrs.frozen
class SetState:
    """Post a ``ConnectionStatus`` (and set or clear ``ready``)."""

    state: State
    attempt: int = 0
    reason: str | None = None


@attrs.frozen
class Settle:
    """Settle a wire subscription: ``sub.settle(state, error)`` wakes its waiters."""

    sub: Any
    state: str
    error: KiyotakaError | None = None


@attrs.frozen
class Report:
    """An error for ``on_error`` (the family goes on)."""

    error: KiyotakaError


@attrs.frozen
class Overflow:
    """``subs`` do not fit on this connection, which holds ``held`` subscriptions (and at most
    ``limit``, when the server said so): the core has forgotten them (no unsubscribe is due: the
    server applied none); the owner of the shards places them on another connection."""

    subs: tuple[Any, ...]
    held: int
    limit: int | None = None


@attrs.frozen
class GiveUp:
    """The family fails for good with ``error``; every wait on ``subs`` ends with it."""

    error: KiyotakaError
    subs: tuple[Any, ...]


@attrs.frozen
class Released:
    """``subs``, removed, are off this connection for sure (sharded cores only): their unsubscribe
    was answered, was never needed (never sent, never applied), was forgotten unanswered, or the
    connection is gone. Until then the owner of the shards keeps their room on this connection, so
    a channel subscribed again goes back here, after its unsubscribe, never to a second connection."""

    subs: tuple[Any, ...]


Action = Union[Connect, Send, Ping, Kill, SetState, Settle, Report, Overflow, Released, GiveUp]


# -- pure rules ------------------------------------------------------------------------------------

class Backoff:
    """Exponential backoff with full jitter inside [initial, min(maximum, initial * 2**attempt)]."""

    def __init__(self, initial: float, maximum: float, rng: Callable[[], float] = random.random) -> None:
        self.initial = initial
        self.maximum = maximum
        self.rng = rng

    def delay(self, attempt: int) -> float:
        cap = min(self.maximum, self.initial * 2.0 ** min(attempt, 60))
        return self.initial + self.rng() * (cap - self.initial)


def answer_due(deadline: float, timeout: float, unblocked_at: float, blocked: bool, now: float) -> float | None:
    """When the silence of a request awaiting an answer may be concluded (None: now).

    Never while the reader waits on a full queue (behind a slow handler), and not before
    ``timeout`` after it last did: the answer may still be in the socket, unread. So a blocked
    handler never makes the session assume a subscription the server rejected.
    """
    if blocked:
        return now + BLOCKED_RECHECK  # look again soon: the reader may unblock at any time
    due = max(deadline, unblocked_at + timeout)
    return None if now >= due else due


def rejects_key(code: int | None) -> bool:
    """A close code that, during authentication, means the key was refused."""
    return code is not None and (code in _REJECTED_KEY_CLOSE_CODES or 4000 <= code <= 4999)


def _classify(answer: dict[str, Any]) -> pacing.Rejection:
    """What an error answer means (rate limit, subscription limit, or a rejection on the merits)."""
    return pacing.classify(answer.get("error"), {k: v for k, v in answer.items() if k != "error"})


# -- the outbox seam ---------------------------------------------------------------------------------

@attrs.frozen
class Intent:
    """A subscribe or unsubscribe waiting in the outbox."""

    method: str   # SUBSCRIBE | UNSUBSCRIBE
    sub: Any


class Packer(Protocol):
    """Takes intents from the head of the outbox (in order) and says how many go in the next request.

    The request holds ``intents[:n]``; they all have the same method. Must return 1 or more.
    """

    def __call__(self, intents: Sequence[Intent]) -> int: ...


def one_per_request(intents: Sequence[Intent]) -> int:
    """One channel per request."""
    return 1


def at_most(max_channels: int) -> Packer:
    """Pack up to ``max_channels`` intents of one method into a request."""
    def packer(intents: Sequence[Intent]) -> int:
        return min(max_channels, len(intents))
    return packer


class Pacer(Protocol):
    """Request pacing on one connection: ``take(now)`` spends a token (False: none yet);
    ``ready_at(now)`` says when the next one is; ``reset(now)`` starts a new connection."""

    def take(self, now: float) -> bool: ...

    def ready_at(self, now: float) -> float: ...

    def reset(self, now: float) -> None: ...


class Unpaced:
    """No pacing: every request goes at once."""

    def take(self, now: float) -> bool:
        return True

    def ready_at(self, now: float) -> float:
        return now

    def reset(self, now: float) -> None:
        return None


class BucketPacer:
    """At most ``rate`` requests per second per connection (``pacing.TokenBucket``, its small
    burst included); a new connection starts with a full bucket."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._bucket = pacing.TokenBucket(rate)

    def take(self, now: float) -> bool:
        return self._bucket.take(now) == 0.0

    def ready_at(self, now: float) -> float:
        return now + self._bucket.delay(now)

    def reset(self, now: float) -> None:
        self._bucket = pacing.TokenBucket(self.rate)


# -- the core ----------------------------------------------------------------------------------------

@attrs.frozen
class Settings:
    """The rules' parameters (``_arguments.Options`` extends it with the shell's; the client validates both)."""

    reconnect: bool = True
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    ping_interval: float | None = 10.0
    ping_timeout: float | None = 10.0
    stale_timeout: float | None = None
    auth_timeout: float = 5.0
    subscribe_timeout: float = 10.0
    max_retries: int | None = None


@attrs.define
class _Pending:
    method: str
    subs: tuple[Any, ...]
    conn: int
    sent: float
    key: tuple[int, ...] = ()  # its place in the user's order (a retry keeps its request's)


@attrs.frozen
class _Retry:
    """A request to send again as it is (rate-limited, or a half of a rejected batch), before the
    outbox, in the order of ``key``: the first request's id, then the index of each split."""

    key: tuple[int, ...]
    method: str
    subs: tuple[Any, ...]


@attrs.define
class _Conn:
    """The current connection, as the core sees it."""

    number: int
    connected_at: float
    last_rx: float            # any byte until then
    data_rx: float            # data bytes until then
    unblocked_at: float = 0.0 # the reader waited on a full queue until then
    heard: bool = False       # a message, an answer or a pong came: the server is there
    proof_asked: bool = False # a ping went out so that READY can be proven
    live: bool = False        # authenticated (or past auth_timeout): requests go out at once
    ping_sent: float | None = None
    auth_deadline: float | None = None
    killed: str | None = None # why the core ended it (the reason its loss reports)
    reached_ready: bool = False
    retry_after: float = 0.0  # the next connection waits at least this (authentication rate-limited)


class SessionCore:
    """One family's protocol state and rules; see the module docstring for events and actions."""

    def __init__(self, family: str, url: str, settings: Settings, ids: Iterator[int],
                 rng: Callable[[], float] = random.random, packer: Packer = one_per_request,
                 pacer: Pacer | None = None, sharded: bool = False) -> None:
        self.family = family
        self.url = url
        self.settings = settings
        self._ids = ids
        self._backoff = Backoff(settings.backoff_initial, settings.backoff_max, rng)
        self._packer = packer
        self._pacer: Pacer = pacer if pacer is not None else Unpaced()
        self._sharded = sharded  # a subscription limit moves channels to another connection

        self._subs: dict[Hashable, Any] = {}          # registered, in registration order
        self._sub_state: dict[Hashable, str] = {}      # their states, as settled
        self._outbox: deque[Intent] = deque()         # in the order asked for
        self._retries: list[_Retry] = []              # sorted by key; sent before the outbox
        self._rate = pacing.RateLimitBackoff(rng=rng) # delays after rate-limit rejections
        self._hold_until = 0.0     # rate-limited: no request goes before then
        self._held_since = float("-inf")  # when the last rate-limit failure was counted
        self._pending: dict[int, _Pending] = {}       # in send order: the oldest first
        self._awaiting: dict[int, list[Any]] = {}     # subscribes not yet answered nor timed out
        self._conn: _Conn | None = None
        self._expect_until = 0.0
        self._attempt = 0          # for the backoff: reset once a connection stayed up
        self._failures = 0         # consecutive attempts that never reached READY (max_retries)
        self._reason: str | None = None
        self._retry_at: float | None = None   # backing off until then
        self._dialing = False

        self.state = State.STOPPED
        self.done = False          # stopped or failed: every event is ignored
        self.failed: KiyotakaError | None = None
        self.expecting = False
        self.reconnects = 0
        self.requests_sent = 0
        self.wake_at: float | None = None

    # -- read-only views (for the shell and the tests) --------------------------------------------

    @property
    def conn(self) -> int | None:
        return None if self._conn is None else self._conn.number

    @property
    def shown_url(self) -> str:
        """The URL as logs may show it (without its query)."""
        return redact_url(self.url)

    @property
    def dialing(self) -> bool:
        """A ``Connect`` went out and neither ``connected`` nor ``failed_to_connect`` came back."""
        return self._dialing

    @property
    def pending_count(self) -> int:
        """Requests awaiting an answer (at most ``MAX_PENDING``); safe to read from any thread."""
        return len(self._pending)

    @property
    def pending_ids(self) -> list[int]:
        return list(self._pending)

    @property
    def outbox(self) -> list[Intent]:
        return list(self._outbox)

    @property
    def retries(self) -> list[tuple[str, tuple[Any, ...]]]:
        """Requests waiting to be sent again (method, subscriptions), in order."""
        return [(r.method, r.subs) for r in self._retries]

    def subs(self) -> list[Any]:
        return list(self._subs.values())

    def sub_state(self, spec: Hashable) -> str | None:
        return self._sub_state.get(spec)

    # -- events -------------------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        if self.done or self._dialing or self._conn is not None:
            return []
        return self._dial()

    def connected(self, conn: int, now: float) -> list[Action]:
        if self.done:
            return []
        self._dialing = False
        c = self._conn = _Conn(conn, now, now, now)
        c.auth_deadline = now + self.settings.auth_timeout
        self._pacer.reset(now)
        out: list[Action] = []
        self._send(out, c, AUTH, (), now)
        return out

    def failed_to_connect(self, now: float, reason: str, *, status: int | None = None,
                          retry_after: float | None = None, retryable: bool = True,
                          rejected: bool = False) -> list[Action]:
        """The dial failed: ``rejected`` when the server answered the upgrade with HTTP ``status``
        (``retry_after`` from its header); ``retryable=False`` for a failure no retry can mend."""
        if self.done:
            return []
        self._dialing = False
        if rejected:
            if status in (401, 403):
                return self._give_up(AuthenticationError(f"API key rejected: HTTP {status} from {redact_url(self.url)}"))
            if status in (400, 404, 410):
                return self._give_up(ConnectionFailedError(
                    f"HTTP {status} from {redact_url(self.url)}: wrong URL?",
                    family=self.family, status=status, url=redact_url(self.url)))
        elif not retryable:
            return self._give_up(ConnectionFailedError(
                f"{self.family}: {reason}", family=self.family, status=status, url=redact_url(self.url)))
        delay_floor = min(retry_after or 0.0, MAX_RETRY_AFTER) if rejected else 0.0
        return self._after_attempt(now, reason, False, 0.0, delay_floor)

    def lost(self, conn: int, now: float, reason: str, close_code: int | None = None,
             close_reason: str | None = None) -> list[Action]:
        """``conn``'s reader ended: ``reason`` for the logs, the peer's ``close_code`` and
        ``close_reason`` when it sent a close frame."""
        c = self._conn
        if self.done or c is None or conn != c.number:
            return []  # an earlier connection's reader: nothing of it is current
        if not c.live and rejects_key(close_code):
            self._drop_conn()
            return self._give_up(AuthenticationError(
                f"the server closed the {self.family} connection during authentication "
                f"(close {close_code} {reason!r}): API key rejected"))
        if c.killed is not None:
            reason = c.killed
        out: list[Action] = []
        if self._sharded and c.live and close_reason:
            self._closed_as_full(out, close_reason)
        self._release(out, self._drop_conn())  # the server forgot the connection's subscriptions
        return out + self._after_attempt(now, reason, c.reached_ready, now - c.connected_at, c.retry_after)

    def heard(self, conn: int, kind: Heard, at: float, now: float) -> list[Action]:
        c = self._conn
        if self.done or c is None or conn != c.number:
            return []
        if kind is Heard.DATA:
            c.data_rx = max(c.data_rx, at)
            c.last_rx = max(c.last_rx, at)
        elif kind is Heard.BACKLOG:
            c.unblocked_at = max(c.unblocked_at, at)
        else:
            c.last_rx = max(c.last_rx, at)
        out: list[Action] = []
        if kind is Heard.FRAME or kind is Heard.PONG:
            c.heard = True
            self._check_ready(out, c, now)
        return out

    def answer(self, conn: int, message: dict[str, Any], now: float) -> list[Action]:
        c = self._conn
        if self.done or c is None or conn != c.number:
            log.debug("%s: ignored an answer from an earlier connection", self.family)
            return []
        c.heard = True
        out: list[Action] = []
        if message.get("id") is not None:  # an id-less error only proves the server is there
            self._on_answer(out, c, message, now)
            if not self._pending:
                # Nothing awaits an answer: the reader stops looking into binary frames now, not
                # when the window of the last request ends (up to 10 s of streaming with the
                # brotli work on the reader, which the dispatcher's docstring measured slower).
                self.expecting = False
        if not self.done:
            self._check_ready(out, c, now)
        return out

    def io_failed(self, conn: int, reason: str, now: float) -> list[Action]:
        c = self._conn
        if self.done or c is None or conn != c.number:
            return []
        return self._kill(c, reason)

    def add(self, sub: Any, now: float) -> list[Action]:
        if self.done or sub.spec in self._subs:
            return []
        self._subs[sub.spec] = sub
        self._sub_state[sub.spec] = PENDING
        out: list[Action] = []
        c = self._conn
        if c is not None and c.live:
            self._outbox.append(Intent(SUBSCRIBE, sub))
            self._flush(out, c, now)
        return out

    def remove(self, spec: Hashable, now: float) -> list[Action]:
        if self.done:
            return []
        sub = self._subs.pop(spec, None)
        state = self._sub_state.pop(spec, None)
        if sub is None:
            return []
        for req_id in list(self._awaiting):
            waiting = [s for s in self._awaiting[req_id] if s is not sub]
            if waiting:
                self._awaiting[req_id] = waiting
            else:
                del self._awaiting[req_id]
        queued = [i for i in self._outbox if i.sub is sub]
        retried = [r for r in self._retries if sub in r.subs]
        out: list[Action] = []
        c = self._conn
        if retried:  # its subscribe was refused and waits to go again: it need not be undone
            self._retries = [r if r not in retried else attrs.evolve(r, subs=tuple(s for s in r.subs if s is not sub))
                             for r in self._retries]
            self._retries = [r for r in self._retries if r.subs]
        if queued or retried:  # its subscribe never went out (or was not applied): neither goes now
            self._outbox = deque(i for i in self._outbox if i.sub is not sub)
            self._release(out, (sub,))
        elif c is not None and c.live and state != REJECTED:
            self._outbox.append(Intent(UNSUBSCRIBE, sub))
            self._flush(out, c, now)
        else:  # not applied, or no connection (the replay leaves it out)
            self._release(out, (sub,))
        if c is not None:
            self._check_ready(out, c, now)
        return out

    def shed(self, capacity: int, now: float) -> list[Action]:
        """The family learned that a connection holds ``capacity``: hand back (``Overflow``, the
        newest first to go) the subscriptions registered here beyond it whose subscribe has not
        gone out, rather than send them only to be refused. Those sent stay: their answers decide.
        Measured (``bench --subscriptions 5000``): READY in ~2 s, not ~10 s of refused requests."""
        registered = sum(1 for state in self._sub_state.values() if state != REJECTED)
        if self.done or not self._sharded or registered <= capacity:
            return []
        c = self._conn
        live = c is not None and c.live
        queued = {id(i.sub) for i in self._outbox if i.method == SUBSCRIBE}
        shed: list[Any] = []
        for spec, sub in reversed(list(self._subs.items())):
            if len(shed) == registered - capacity:
                break
            # not live: the replay sends every PENDING one; live: only those still in the outbox
            if self._sub_state[spec] == PENDING and (not live or id(sub) in queued):
                shed.append(sub)
        if not shed:
            return []
        shed.reverse()
        gone = {id(sub) for sub in shed}
        for sub in shed:
            del self._subs[sub.spec], self._sub_state[sub.spec]
        self._outbox = deque(i for i in self._outbox if id(i.sub) not in gone)
        log.info("%s: %d channel(s) beyond the %d a connection holds go to another", self.family, len(shed), capacity)
        out: list[Action] = [Overflow(tuple(shed), 0)]
        if c is not None:
            self._check_ready(out, c, now)
        return out

    def fail(self, error: KiyotakaError, now: float) -> list[Action]:
        """An internal thread died: give up with ``error``."""
        if self.done:
            return []
        return self._give_up(error)

    def stop(self, now: float) -> list[Action]:
        if self.done:
            return []
        self.done = True
        self._drop_conn()
        self.wake_at = None
        return self._set_state(State.STOPPED)

    def tick(self, now: float, reader_blocked: bool = False) -> list[Action]:
        """Act on every timer due at ``now``; ``wake_at`` is then when the next one is."""
        out: list[Action] = []
        self.wake_at = None
        if self.done:
            return out
        c = self._conn
        if c is None:
            if self._retry_at is not None:
                if now >= self._retry_at:
                    self._retry_at = None
                    out += self._dial()
                else:
                    self.wake_at = self._retry_at
            return out
        if c.killed is not None:
            return out  # its reader reports its end soon: no timer of it matters now
        deadlines: list[float] = []
        self._check_timers(out, c, now, reader_blocked, deadlines)
        if self._conn is c and c.killed is None and not self.done:
            self.wake_at = min(deadlines) if deadlines else None
        return out

    # -- the connection's rules ---------------------------------------------------------------------

    def _check_timers(self, out: list[Action], c: _Conn, now: float, blocked: bool,
                      deadlines: list[float]) -> None:
        s = self.settings
        if c.auth_deadline is not None:
            due = answer_due(c.auth_deadline, s.auth_timeout, c.unblocked_at, blocked, now)
            if due is None:
                log.info("%s: no answer to authentication within %.1fs; going on", self.family, s.auth_timeout)
                self._go_live(out, c, now)
            else:
                deadlines.append(due)
        # Subscribe answers not come within subscribe_timeout are assumed; a late one still counts.
        while self._awaiting:
            req_id, subs = next(iter(self._awaiting.items()))
            entry = self._pending.get(req_id)
            sent = entry.sent if entry is not None else now - s.subscribe_timeout
            due = answer_due(sent + s.subscribe_timeout, s.subscribe_timeout, c.unblocked_at, blocked, now)
            if due is not None:
                deadlines.append(due)
                break
            del self._awaiting[req_id]
            for late in subs:
                if self._is_current(late) and self._sub_state[late.spec] == PENDING:
                    log.info("%s: no answer to the subscription %s within %.1fs; assuming it is active",
                             self.family, late.spec, s.subscribe_timeout)
                    self._settle(out, late, ASSUMED)
            self._check_ready(out, c, now)
            if c.killed is not None:
                return
        # Forget requests never answered (late answers are kept for a while, then the table sheds them).
        horizon = max(60.0, 3 * s.subscribe_timeout)
        while self._pending:
            req_id, entry = next(iter(self._pending.items()))
            if now < entry.sent + horizon:
                deadlines.append(entry.sent + horizon)
                break
            del self._pending[req_id]
            self._awaiting.pop(req_id, None)
            if entry.method == UNSUBSCRIBE:
                self._release(out, entry.subs)  # never answered: it may as well be applied
        if self.expecting:
            if now >= self._expect_until:
                self.expecting = False  # the reader stops looking into binary frames for answers
            else:
                deadlines.append(self._expect_until)
        if self._outbox or self._retries:
            self._flush(out, c, now)
            if self._outbox or self._retries:
                deadlines.append(max(self._hold_until, self._pacer.ready_at(now)))
        heard = max(c.last_rx, c.unblocked_at)  # waiting on a full queue is back-pressure, not silence
        if s.ping_interval:
            outstanding = c.ping_sent is not None and heard < c.ping_sent
            if not outstanding:
                last_ping = c.ping_sent if c.ping_sent is not None else c.connected_at
                if now >= last_ping + s.ping_interval:
                    c.ping_sent = last_ping = now
                    outstanding = True
                    out.append(Ping(c.number))
                deadlines.append(last_ping + s.ping_interval)
            if s.ping_timeout and outstanding:
                assert c.ping_sent is not None
                due = c.ping_sent + s.ping_timeout
                if now >= due and not blocked:
                    out += self._kill(c, f"no pong within {s.ping_timeout}s")
                    return
                deadlines.append(due)
        if s.stale_timeout:
            due = max(c.data_rx, c.unblocked_at) + s.stale_timeout  # bytes of data, even partial
            if now >= due and not blocked:
                out += self._kill(c, f"no data for {s.stale_timeout}s")
                return
            deadlines.append(due)
        if blocked:  # re-check soon: the reader may unblock at any time
            deadlines.append(now + BLOCKED_RECHECK)

    def _on_answer(self, out: list[Action], c: _Conn, message: dict[str, Any], now: float) -> None:
        req_id = message.get("id")
        entry = self._pending.pop(req_id, None) if type(req_id) is int else None
        if entry is None or entry.conn != c.number:
            log.debug("%s: an answer to no pending request (id %r)", self.family, req_id)
            return
        failed = "error" in message
        if entry.method == AUTH:
            if failed:
                code, text, _ = protocol.error_details(message)
                rejection = _classify(message)
                if rejection.kind == pacing.RATE_LIMITED:  # too many at once (shards reconnecting): not the key
                    c.retry_after = min(rejection.retry_after or 0.0, MAX_RETRY_AFTER)
                    out += self._kill(c, f"authentication refused as too many requests ({code}: {text})")
                    return
                out += self._give_up(AuthenticationError(f"API key rejected by the server ({code}: {text})"))
                return
            if not c.live:
                log.info("%s: authenticated", self.family)
                self._go_live(out, c, now)
        elif entry.method == SUBSCRIBE:
            self._awaiting.pop(req_id, None)  # type: ignore[arg-type]
            self._on_subscribe_answer(out, entry, message if failed else None, now)
        elif failed:
            if _classify(message).kind == pacing.RATE_LIMITED:
                # not applied: send it again, for the specs not registered anew since (those
                # are wanted on the server after all)
                gone = tuple(sub for sub in entry.subs if sub.spec not in self._subs)
                self._rate_limited(out, entry, gone, _classify(message), now)
                self._release(out, [sub for sub in entry.subs if sub not in gone])  # held on as wanted
            else:  # an unsubscribe the server refused: nothing to undo, but say so
                log.info("%s: unsubscribe from %s failed: %s", self.family,
                         [sub.spec for sub in entry.subs], protocol.error_details(message)[1])
                self._release(out, entry.subs)
        else:
            self._rate.succeeded()
            self._release(out, entry.subs)

    def _on_subscribe_answer(self, out: list[Action], entry: _Pending, answer: dict[str, Any] | None,
                             now: float) -> None:
        """Settle every subscription of an answered subscribe, per channel.

        A rate limit sends the batch again after a backoff (``_rate_limited``); a subscription
        limit rejects each channel (the connection is full); any other rejection of several
        channels is split (``pacing.settle_permanent``) and the parts sent again, until each bad
        channel is alone and rejected by itself.
        """
        current = tuple(sub for sub in entry.subs if self._is_current(sub))  # others: removed since
        if answer is None:
            self._rate.succeeded()
            for sub in current:
                log.debug("%s: subscribed to %s", self.family, sub.spec)
                self._settle(out, sub, ACTIVE)
            return
        rejection = _classify(answer)
        if rejection.kind == pacing.RATE_LIMITED:
            self._rate_limited(out, entry, current, rejection, now)
            return
        self._rate.succeeded()  # the server answered on its merits: not rate-limited
        code, text, _ = protocol.error_details(answer)
        bad: tuple[Any, ...]
        parts: tuple[tuple[Any, ...], ...]
        if rejection.kind == pacing.SUBSCRIPTION_LIMIT:
            held = sum(1 for state in self._sub_state.values() if state in (ACTIVE, ASSUMED))
            if self._sharded and held:
                # The connection is full: it holds what it was granted; the batch goes elsewhere.
                for sub in current:
                    del self._subs[sub.spec], self._sub_state[sub.spec]
                log.info("%s: the connection is full (%s: %s); moving %d channel(s) to another",
                         self.family, code, text, len(current))
                out.append(Overflow(current, held, rejection.limit))
                return
            # Refused on an empty connection: the batch is larger than a connection holds, so
            # its halves go again; one channel refused by itself is rejected (no shard helps).
            bad = current if len(current) == 1 or not self._sharded else ()
            parts = () if bad else (current[:len(current) // 2], current[len(current) // 2:])
        else:
            wires = [sub.spec.wire() for sub in current]
            by_wire = {id(w): sub for w, sub in zip(wires, current)}
            settlement = pacing.settle_permanent(wires, rejection)
            bad = tuple(by_wire[id(w)] for w in settlement.rejected)
            parts = tuple(tuple(by_wire[id(w)] for w in part) for part in settlement.retry)
        for sub in bad:
            error = SubscriptionError(f"subscription {sub.spec} rejected ({code}: {text})",
                                      channel=sub.spec.wire(), code=code, server_message=text)
            self._settle(out, sub, REJECTED, error)
            out.append(Report(error))
        if parts:
            log.info("%s: a batch of %d channel(s) was rejected (%s: %s); splitting it",
                     self.family, len(current), code, text)
        for index, part in enumerate(parts):
            self._retry(_Retry(entry.key + (index,), SUBSCRIBE, part))

    def _closed_as_full(self, out: list[Action], close_reason: str) -> None:
        """The server closed the connection saying it is over its subscription limit: the next
        connection replays only what this one was granted; the rest is handed back (``Overflow``)
        for another. Nothing granted yet: nothing to learn, the close is only a close."""
        rejection = pacing.classify(None, {"message": close_reason})
        held = sum(1 for state in self._sub_state.values() if state in (ACTIVE, ASSUMED))
        if rejection.kind != pacing.SUBSCRIPTION_LIMIT or not held:
            return
        moved = tuple(sub for spec, sub in self._subs.items() if self._sub_state[spec] == PENDING)
        for sub in moved:
            del self._subs[sub.spec], self._sub_state[sub.spec]
        log.info("%s: the server closed the connection as full (%s); moving %d channel(s) to another",
                 self.family, close_reason, len(moved))
        out.append(Overflow(moved, held, rejection.limit))

    def _rate_limited(self, out: list[Action], entry: _Pending, subs: tuple[Any, ...],
                      rejection: pacing.Rejection, now: float) -> None:
        """``entry`` was refused as one request too many: hold every request on this connection
        for a backoff (``retry_after`` honoured) and send ``subs`` again, in their place. Answers
        to requests sent before the hold began are the same burst: they extend nothing."""
        if entry.sent >= self._held_since:
            delay = self._rate.failed(rejection.retry_after)
            self._held_since = now
            self._hold_until = max(self._hold_until, now + delay)
            log.info("%s: rate-limited (%s); sending again in %.2fs", self.family, rejection.message, delay)
            if self._rate.warn_now:
                out.append(Report(RateLimited(
                    f"{self.family}: {self._rate.failures} requests in a row refused as too many "
                    f"({rejection.code}: {rejection.message}); still retrying",
                    family=self.family, failures=self._rate.failures, retry_after=rejection.retry_after)))
        if subs:
            self._retry(_Retry(entry.key, entry.method, subs))

    def _retry(self, retry: _Retry) -> None:
        """Queue ``retry`` before the outbox, in the order of the requests it comes from."""
        index = len(self._retries)
        while index > 0 and self._retries[index - 1].key > retry.key:
            index -= 1
        self._retries.insert(index, retry)

    def _go_live(self, out: list[Action], c: _Conn, now: float) -> None:
        """Authenticated (or no answer within auth_timeout): replay every subscription, in order."""
        c.live = True
        c.auth_deadline = None
        replay = [sub for spec, sub in self._subs.items() if self._sub_state[spec] != REJECTED]
        for sub in replay:
            self._settle(out, sub, PENDING)
        self._outbox = deque(Intent(SUBSCRIBE, sub) for sub in replay)  # what a lost link had queued is moot
        self._retries.clear()
        if replay:
            log.info("%s: subscribing to %d channel(s)", self.family, len(replay))
        self._flush(out, c, now)
        self._check_ready(out, c, now)

    def _flush(self, out: list[Action], c: _Conn, now: float) -> None:
        """Send what the outbox holds, in order, as the packer groups it and the pacer allows."""
        while (self._retries or self._outbox) and c.killed is None and now >= self._hold_until \
                and self._pacer.take(now):
            if self._retries:
                retry = self._retries.pop(0)
                self._send(out, c, retry.method, retry.subs, now, retry.key)
                continue
            head = list(self._outbox)
            run = 1
            while run < len(head) and head[run].method == head[0].method:
                run += 1
            n = max(1, min(run, self._packer(head[:run])))
            batch = [self._outbox.popleft() for _ in range(n)]
            self._send(out, c, batch[0].method, tuple(i.sub for i in batch), now)

    def _send(self, out: list[Action], c: _Conn, method: str, subs: tuple[Any, ...], now: float,
              key: tuple[int, ...] | None = None) -> None:
        """Send one request on ``c`` and remember it until answered or expired."""
        req_id = next(self._ids)
        if method == SUBSCRIBE:
            self._awaiting[req_id] = list(subs)
        self._pending[req_id] = _Pending(method, subs, c.number, now, key if key is not None else (req_id,))
        self.requests_sent += 1
        s = self.settings
        self._expect_until = max(self._expect_until, now + max(s.auth_timeout, s.subscribe_timeout))
        self.expecting = True
        while len(self._pending) > MAX_PENDING:
            oldest = next(iter(self._pending))
            evicted = self._pending.pop(oldest)
            if evicted.method == UNSUBSCRIBE:
                self._release(out, evicted.subs)
            self._awaiting.pop(oldest, None)
        out.append(Send(c.number, Request(req_id, method, tuple(sub.spec for sub in subs))))

    def _check_ready(self, out: list[Action], c: _Conn, now: float) -> None:
        """READY once authenticated (or past auth_timeout), every subscription answered (or past
        subscribe_timeout), and something came from the server on ``c``: when only the timers
        say so, a ping goes out and READY waits for its pong (or any frame)."""
        if self._conn is not c or not c.live or self._awaiting or self._outbox or self._retries \
                or self.state is State.READY or c.killed is not None:
            return
        if c.heard:
            c.reached_ready = True
            log.info("%s: ready", self.family)
            out += self._set_state(State.READY)
        elif not c.proof_asked:
            c.proof_asked = True
            log.info("%s: nothing heard from the server yet; READY waits for a pong", self.family)
            c.ping_sent = now  # the ping timer kills the link if no byte answers it
            out.append(Ping(c.number))

    def _kill(self, c: _Conn, reason: str) -> list[Action]:
        if c.killed is not None:
            return []
        log.info("%s: %s; closing the connection", self.family, reason)
        c.killed = reason
        return [Kill(c.number, reason)]

    # -- between connections ------------------------------------------------------------------------

    def _dial(self) -> list[Action]:
        self._dialing = True
        return self._set_state(State.CONNECTING, self._attempt, self._reason) + [Connect()]

    def _drop_conn(self) -> list[Any]:
        """The connection is gone: what awaited an answer on it never gets one. Returns the
        subscriptions whose unsubscribe was queued or unanswered (the server dropped them all)."""
        leaving = [sub for entry in self._pending.values() if entry.method == UNSUBSCRIBE for sub in entry.subs]
        leaving += [i.sub for i in self._outbox if i.method == UNSUBSCRIBE]
        leaving += [sub for r in self._retries if r.method == UNSUBSCRIBE for sub in r.subs]
        self._conn = None
        self._pending.clear()
        self._awaiting.clear()
        self._outbox.clear()
        self._retries.clear()
        self.expecting = False
        return leaving

    def _after_attempt(self, now: float, reason: str, reached_ready: bool, up_for: float,
                       delay_floor: float) -> list[Action]:
        """A connection ended (or never began): back off, or give up."""
        s = self.settings
        self._reason = reason
        self._failures = 0 if reached_ready else self._failures + 1
        if not s.reconnect:
            return self._give_up(ConnectionFailedError(
                f"{self.family} connection lost ({reason}) and reconnect=False", family=self.family, url=redact_url(self.url)))
        if s.max_retries is not None and self._failures > s.max_retries:
            return self._give_up(ConnectionFailedError(
                f"{self.family}: {gave_up(self._failures, s.max_retries, reason)}", family=self.family, url=redact_url(self.url)))
        if up_for >= min(s.backoff_max, STABLE_AFTER):
            self._attempt = 0
        delay = max(self._backoff.delay(self._attempt), delay_floor)
        self._attempt += 1
        self.reconnects += 1
        log.info("%s: connection lost (%s); reconnecting in %.2fs (attempt %d)",
                 self.family, reason, delay, self._attempt)
        self._retry_at = now + delay
        self.wake_at = self._retry_at
        return self._set_state(State.DISCONNECTED, self._attempt, reason)

    def _give_up(self, error: KiyotakaError) -> list[Action]:
        self.done = True
        self.failed = error
        self.wake_at = None
        subs = tuple(self._subs.values())
        self._drop_conn()
        self.state = State.FAILED
        return [GiveUp(error, subs)]

    def _release(self, out: list[Action], subs: Sequence[Any]) -> None:
        """``subs`` are off the connection (a sharded core says so: ``Released``)."""
        if self._sharded and subs:
            out.append(Released(tuple(subs)))

    def _is_current(self, sub: Any) -> bool:
        """``sub`` is still registered (not removed, nor replaced by a new registration)."""
        return self._subs.get(sub.spec, None) is sub

    def _settle(self, out: list[Action], sub: Any, state: str, error: KiyotakaError | None = None) -> None:
        self._sub_state[sub.spec] = state
        out.append(Settle(sub, state, error))

    def _set_state(self, state: State, attempt: int = 0, reason: str | None = None) -> list[Action]:
        self.state = state
        return [SetState(state, attempt, reason)]
