"""NATS as a client's source (``KiyotakaClient.from_nats``): one ``NatsSource`` per family, one
connection (``NatsSources``) per client, on the private NATS thread (loop.py).

See ``kiyotaka_ws.nats`` for the subscriptions, the batching and what the bus is trusted with.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import threading
import time
from typing import Any, Callable

from .._arguments import Options
from .._transport import redact_url
from ..channels import Channel, ChannelSpec
from ..dispatch import EventQueue
from ..errors import (
    ConnectionFailedError,
    DecodeError,
    EventsDropped,
    KiyotakaError,
    SubscriptionError,
    gave_up,
)
from ..external import ExternalSource
from ..source import WireSub
from ..status import State
from .loop import Loop, check_available, connect
from .subjects import (
    STATUS_TOKEN,
    NatsSettings,
    escape_token,
    loads,
    status_subject,
    unescape_token,
)

__all__ = ["MAX_BATCH", "MAX_BATCH_BYTES", "NatsSettings", "NatsSource", "NatsSources", "check_available"]

log = logging.getLogger(__name__)

MAX_BATCH = 500           # points per frame handed to a consumer's queue
MAX_BATCH_BYTES = 2**20   # bytes of points per frame (a larger point goes alone)


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
            self.set_state(state, why)

    # -- data (loop thread) ---------------------------------------------------------------------------------

    def on_point(self, data: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.frames += 1
        self.bytes += len(data)
        try:
            whole = type(loads(data)) is dict  # one JSON object: joining it keeps every neighbour whole
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

    def __init__(self, settings: NatsSettings, options: Options, on_fatal: Callable[[KiyotakaError], None]) -> None:
        self.settings = settings
        self._options = options  # the client's: backoff, connect timeout, max_retries
        self._on_fatal = on_fatal  # the client is done: run_forever() raises the error
        self._sources: dict[str, NatsSource] = {}
        self._lock = threading.Lock()
        self._ops: collections.deque[tuple[Any, ...]] = collections.deque()
        self._loop: Loop | None = None
        self._stopping = threading.Event()
        self._wake: asyncio.Event | None = None
        self._stop_evt: asyncio.Event | None = None
        self.connection = 0
        self._nc: Any = None
        self._dead: KiyotakaError | None = None  # what ended the NATS thread

    # -- the source factory the client uses ------------------------------------------------------------

    def prepare(self) -> None:
        """Nothing to check (no key; the arguments were checked by ``from_nats``)."""

    def check_record(self, path: str) -> None:
        """Any path will do: nothing is read from a file."""

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
                self._loop = Loop(self._main, self._crashed)
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
        self._on_fatal(error)

    def _crashed(self, exc: BaseException) -> None:
        error = KiyotakaError(f"the NATS thread failed ({type(exc).__name__}: {exc})")
        with self._lock:
            self._dead = error  # a family starting later fails at once
            sources = [s for s in self._sources.values() if s.started]
        ExternalSource.end_all(sources, error)
        self._on_fatal(error)

    # -- the NATS thread ------------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()
        if self._stopping.is_set() and self._stop_evt is not None:
            self._stop_evt.set()

    def _source_of(self, subject: str) -> NatsSource | None:
        """The family source a subject belongs to (``<prefix>.<TYPE>...`` or ``<prefix>._status.<family>``)."""
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
        options = self._options
        loop = asyncio.get_running_loop()

        def failed(attempt: int, reason: str) -> None:
            for source in self._started_sources():
                source.set_state(State.DISCONNECTED, reason, attempt)
            if options.max_retries is not None and attempt > options.max_retries:
                error = ConnectionFailedError(f"nats: {gave_up(attempt, options.max_retries, reason)}",
                                              family="nats", url=redact_url(self.settings.servers[0]))
                for source in self._started_sources():
                    source.end_with(error)
                self._on_fatal(error)

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

        nc = await connect(self.settings, f"kiyotaka-ws consumer {socket.gethostname()}:{os.getpid()}",
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
            message = loads(data)
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
