"""The relay: a client whose points go to NATS subjects instead of handlers (``kiyotaka_ws.nats.Relay``).

The client's dispatchers hand every data frame's points to the relay's sink, which puts them in
a bounded buffer; the private NATS thread (loop.py) publishes it. See ``kiyotaka_ws.nats``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any, Callable

import attrs

from .._arguments import RELAY, STOP
from ..client import KiyotakaClient, Subscription
from ..errors import ClientStoppedError, EventsDropped, KiyotakaError
from ..status import ConnectionStats, ConnectionStatus, State
from .loop import Loop, check_available, connect, sleep_or
from .subjects import (
    NatsSettings,
    dumps,
    series_subject,
    status_message,
    status_subject,
)

__all__ = ["HEARTBEAT", "PUBLISH_BATCH", "Relay", "RelayStats"]

log = logging.getLogger(__name__)

PUBLISH_BATCH = 1000      # points the relay publishes per turn of its loop
HEARTBEAT = 5.0           # seconds between the relay's status heartbeats
_SUBJECT_CACHE = 100_000  # series -> subject entries kept by the relay


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
        self.client.set_sink(self._sink)
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
        self._loop: Loop | None = None
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
                raise ClientStoppedError("this relay was stopped; create a new Relay")
            if self._loop is not None:
                return
            self._loop = Loop(self._main, self._crashed)
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
            while not self._done.wait(0.2) and not self.client.done:
                pass
        except KeyboardInterrupt:
            log.info("interrupted; stopping")
        self.stop(timeout=1.5)
        fatal = self._fatal or self.client.fatal
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
                data = dumps(point)  # (orjson refuses some values the stdlib parser accepts)
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
        self._push([(status.family, status_subject(self.settings.prefix, status.family), status_message(status))])

    def _on_upstream_error(self, error: KiyotakaError) -> None:
        if isinstance(error, EventsDropped) and error.family:
            message = dumps({"kind": "dropped", "family": error.family, "count": error.count,
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
            self.client.report_error(error)  # to on_error from a dispatcher, as upstream errors
        self._done.set()

    def _too_big(self, family: str, size: int, limit: int) -> None:
        """A point the bus cannot carry: counted, reported (and so announced to consumers)."""
        self._oversized += 1
        self.client.report_error(EventsDropped(
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

        nc = await connect(self.settings, f"kiyotaka-ws relay {socket.gethostname()}:{os.getpid()}",
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
            await nc.publish(subject, status_message(gap))
            await nc.publish(subject, status_message(status))
        for family, count in dropped.items():
            await nc.publish(status_subject(prefix, family), dumps({
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
                await sleep_or(self._wake, 0.1)
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
                                         status_message(status, heartbeat=True))
                self._wake.clear()
                if self._idle:
                    await sleep_or(self._wake, next_beat - now)
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
