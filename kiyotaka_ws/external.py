"""``ExternalSource``: the part of a ``Source`` (source.py) that every non-socket source shares.

A family fed by something other than a Kiyotaka socket (a recording, NATS) offers the client the
same interface as a live ``Session``: ``start``, ``started``, ``add``, ``remove``, ``answer``,
``fail``, ``stop``, ``join``, and the read-only ``ready``, ``state``, ``fatal``, ``reconnects``,
``requests_sent``, ``frames``, ``bytes``, ``last_frame_age``. Its ``driver`` (the replay's player, the NATS
connection) owns the thread that feeds the queue and sets the state through ``set_state``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from .channels import ChannelSpec
from .dispatch import EventQueue
from .errors import KiyotakaError
from .source import WireSub
from .status import ConnectionStatus, State


class Driver(Protocol):
    """The thread behind one or more sources."""

    def start(self, source: Any) -> None: ...
    def stop(self) -> None: ...
    def join(self, deadline: float) -> bool: ...
    def fatal(self, error: KiyotakaError) -> None: ...


class ExternalSource:
    """One family's source when nothing is negotiated with a server. Subclasses say which state it
    starts in and what ``add``/``remove`` mean."""

    first_state = State.READY

    def __init__(self, family: str, queue: EventQueue, driver: Driver) -> None:
        self.family = family
        self.queue = queue
        self._driver = driver
        self._started = False
        self._ended = False
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.state = State.STOPPED
        self.fatal: KiyotakaError | None = None
        self.reconnects = 0
        self.requests_sent = 0  # nothing is sent to a server
        self.shards = 1         # one feed
        self.frames = 0
        self.bytes = 0
        self.last_rx: float | None = None  # time.monotonic() of the last frame

    @property
    def started(self) -> bool:
        return self._started

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        self.set_state(self.first_state)
        self._driver.start(self)

    def add(self, sub: WireSub) -> None:
        """No server to ask: a subscription is active at once (routing filters what arrives)."""
        sub.settle(WireSub.ACTIVE)

    def remove(self, spec: ChannelSpec) -> None:
        """Nothing to tell a server: the dispatcher's routes already forgot the spec."""

    def answer(self, conn: int, message: dict[str, Any]) -> None:
        """No requests are sent from here: nothing is answered."""

    def fail(self, error: KiyotakaError) -> None:
        """An internal thread died: the family fails, as a live one would."""
        self.end_with(error)
        self._driver.fatal(error)

    def end_with(self, error: KiyotakaError) -> None:
        """FAILED, with ``error`` reported to ``on_error`` and kept as ``fatal``."""
        self.fatal = error
        self.queue.put_control(error)
        self.end(State.FAILED, str(error))

    @staticmethod
    def end_all(sources: list[Any], error: KiyotakaError) -> None:
        """A driver's thread died: every source FAILED with ``error`` as ``fatal``, reported to
        ``on_error`` once (by the first one's dispatcher), not once per family."""
        for n, source in enumerate(sources):
            if n == 0:
                source.end_with(error)
            else:
                source.fatal = error
                source.end(State.FAILED, str(error))

    def stop(self) -> None:
        self._driver.stop()

    def join(self, deadline: float) -> bool:
        ok = self._driver.join(deadline)
        self.end(State.STOPPED)
        return ok

    @property
    def last_frame_age(self) -> float | None:
        last = self.last_rx
        return None if last is None else max(0.0, time.monotonic() - last)

    def end(self, state: State, reason: str | None = None) -> None:
        """STOPPED (the end, or stop()) or FAILED, once."""
        with self._lock:
            if self._ended or not self._started:
                return
            self._ended = True
        self.set_state(state, reason)

    def set_state(self, state: State, reason: str | None = None, attempt: int = 0) -> None:
        """Report ``state`` (READY sets ``ready``); from the driver's thread, the one writer."""
        self.state = state
        if state is State.READY:
            self.ready.set()
        else:
            self.ready.clear()
        self.queue.put_status(ConnectionStatus(self.family, state, attempt, reason))
