"""The seam: what feeds a client (``Source``), what a subscription is on the wire (``WireSub``) and
what a client offers the extras and tools built on it (``Host``).

The client drives every family's source through ``Source``: a live ``Session`` (session.py), a
recording's ``ReplaySource`` (replay.py) or a NATS consumer's ``NatsSource`` (_nats/consumer.py),
the last two built on ``ExternalSource`` (external.py). A source puts frames, statuses and
errors into its family's queue; the client only starts and stops it, tells it about wire
subscriptions, hands it answers and reads its counters.

``Host`` is the client's side of the seam for what is built on a client rather than inside it
(the metrics server, the NATS relay, the command line): named, public methods instead of
private fields. ``KiyotakaClient`` implements it.

This module imports only the vocabulary (errors, channels, status), so any layer may use it.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol

from .channels import ChannelSpec
from .errors import KiyotakaError
from .status import RecorderStats, State

__all__ = ["Host", "Sink", "Source", "WireSub"]

# Takes every data frame's points (family, points) in place of delivery: the NATS relay.
Sink = Callable[[str, list[Any]], None]


class WireSub:
    """The server's view of one channel spec: pending, active, assumed, rejected, or ended.

    Written only by its family's source (and by the client at stop and unsubscribe); ``wait`` is
    for any thread. The first ``end`` wins: a family's fatal error is not replaced by "stopped".
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
        """No answer will ever come (client stopped, family failed): ``wait`` raises ``error``,
        unless it was rejected or ended already (the first reason stays)."""
        with self._cond:
            if self.error is None:
                self.error = error
            self._cond.notify_all()

    def wake(self) -> None:
        """Make every ``wait`` look at its ``gone`` condition again (a handler was unsubscribed)."""
        with self._cond:
            self._cond.notify_all()

    def wait(self, timeout: float | None, gone: Callable[[], bool] | None = None) -> None:
        """Until answered, rejected or ended, or ``gone()`` is true (then it returns)."""
        def over() -> bool:
            return self.state != self.PENDING or self.error is not None or (gone is not None and gone())

        with self._cond:
            if not self._cond.wait_for(over, timeout):
                raise TimeoutError(f"no answer to the subscription {self.spec} within {timeout}s")
            if gone is not None and gone():
                return
            if self.error is not None:
                raise self.error


class Ready(Protocol):
    """A source's readiness (``threading.Event`` has this shape): what ``wait_ready()`` waits on."""

    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class Source(Protocol):
    """What feeds one family's queue: a live family's ``Shards`` (its ``Session`` per connection),
    a recording's ``ReplaySource`` or a NATS consumer's ``NatsSource``. Counters and ``state``
    have one writer each (the source's threads); others only read them."""

    @property
    def ready(self) -> Ready: ...

    @property
    def state(self) -> State: ...
    @property
    def fatal(self) -> KiyotakaError | None: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def requests_sent(self) -> int: ...
    @property
    def frames(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def shards(self) -> int:
        """Connections (or feeds) the family is spread over."""
    @property
    def started(self) -> bool: ...
    @property
    def last_frame_age(self) -> float | None: ...
    def start(self) -> None: ...
    def add(self, sub: WireSub) -> None: ...
    def remove(self, spec: ChannelSpec) -> None: ...
    def answer(self, conn: int, message: dict[str, Any]) -> None: ...
    def fail(self, error: KiyotakaError) -> None: ...
    def stop(self) -> None: ...
    def join(self, deadline: float) -> bool: ...


class Host(Protocol):
    """What a client offers the extras and tools bound to it (``KiyotakaClient`` implements it)."""

    @property
    def done(self) -> bool:
        """True once ``stop()`` was called, a fatal error ended the client or its replay ended."""
    @property
    def fatal(self) -> KiyotakaError | None:
        """The error that ended the client (what ``run_forever()`` raises), or None."""
    def report_error(self, error: KiyotakaError, family: str | None = None) -> None:
        """A helper's failure: to ``on_error`` once, through ``family``'s dispatcher (else any)."""
    def add_stop_hook(self, hook: Callable[[float], bool]) -> None:
        """Have ``stop()`` call ``hook(deadline)``; ``ClientStoppedError`` once stopped."""
    def remove_stop_hook(self, hook: Callable[[float], bool]) -> None: ...
    def set_sink(self, sink: Sink | None) -> None:
        """Every data frame's points go to ``sink`` (in place of delivery), from the dispatchers."""
    def recording_stats(self) -> RecorderStats | None:
        """The recorder's counters (``record=``), or None without one."""
