"""``Shards``: one family's channels spread over as many connections as the server's limit needs.

A live family is a ``Shards``: the ``Source`` the client drives (source.py), holding one ``Session``
per connection ("shard"; session.py), all feeding the family's one queue and dispatcher. A family
starts with one shard. Each holds at most ``capacity`` subscriptions: ``max_subscriptions_per_connection``
when given, lowered to what a server teaches when it refuses a subscribe as over its
per-connection limit (the session core's ``Overflow``: the connection keeps what it was granted;
the capacity is the server's stated ``limit``, but never below the most any connection held when
refused, which it is when the server states none). A removed channel keeps its room on its shard until that shard's core says every removal of it there is off the
connection (``Released``: the unsubscribe answered, never needed, forgotten unanswered, or the
connection lost); subscribed again before then, it goes back there, after its unsubscribes, so a
channel never has its data on two connections at once (its points would come twice, out of
order). Otherwise a subscription goes to the shard it last lived on when that has room, else to
the first shard with room, else to a new shard, which authenticates and subscribes by itself.
Channels handed back by a full connection go to another shard; a shard that handed a channel
back never gets it again.

Guarantees:
- Order per series is kept: a channel lives on one connection at a time, and one dispatcher
  delivers every shard's frames in the order each connection received them.
- Each shard reconnects and replays its own channels alone; the others carry on. Statuses carry the
  shard number (``ConnectionStatus.shard``); ``ready`` (``wait_ready()``) is set only while every
  shard is READY and every channel moved between shards is answered (``AllReady``); ``state`` is
  the least ready shard's.
- A shard emptied by unsubscribes stays open, first in line for the next subscriptions.
- A shard that gives up (its key refused, ``max_retries`` reached) fails the family, as an
  unsharded family fails: the other shards stop, every wait ends with that error.

Bounds: at most ``MAX_SHARDS`` connections per family; a subscription with no room left is
rejected with a ``SubscriptionError`` saying so (to its ``wait()`` and ``on_error``). The last shard
of at most ``MAX_REMEMBERED`` unsubscribed channels is remembered. A server lying about its limit
costs connections up to that bound, never a loop: a channel is never placed again on a shard that
handed it back (so it moves at most ``MAX_SHARDS`` times), a batch refused on an empty connection
is split in halves, and one channel refused alone there is rejected (session_core). The table of
refusals holds only registered channels. Removed channels whose unsubscribe is unsettled count
against their shard's capacity and are held at most until it is answered, forgotten (after
``max(60 s, 3 * subscribe_timeout)``) or the connection ends.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Collection, Hashable
from typing import Any, Callable

from .channels import ChannelSpec
from .dispatch import EventQueue
from .errors import KiyotakaError, SubscriptionError
from .session import Session
from .session_core import Overflow
from .source import WireSub
from .status import State

MAX_SHARDS = 64            # connections per family; 64 x 1,000 channels is far beyond any screener
MAX_REMEMBERED = 10_000    # unsubscribed channels whose last shard is remembered

# The family's state is its least ready shard's: worst first.
_RANK = {State.FAILED: 0, State.DISCONNECTED: 1, State.CONNECTING: 2, State.STOPPED: 3, State.READY: 4}

# Makes shard ``n``'s session, with the callbacks below (on_overflow, on_released, on_state).
MakeSession = Callable[[int, Callable[[Session, Overflow], None],
                        Callable[[Session, tuple[WireSub, ...]], None], Callable[[], None]], Session]


class AllReady:
    """A sharded family's ``ready``: every shard READY (set and cleared by the shards) and no
    channel moved between shards still unanswered. A moved channel goes to a shard that may be
    READY already (READY does not wait for channels added after it), so without the second
    condition ``wait_ready()`` returned while channels were on their way (measured: 4,900 of
    5,000 held). Moves are few and short: ``wait`` looks again every ``_RECHECK`` s meanwhile."""

    _RECHECK = 0.02

    def __init__(self, moving: Callable[[], bool]) -> None:
        self._shards = threading.Event()
        self._moving = moving

    def set(self) -> None:
        self._shards.set()

    def clear(self) -> None:
        self._shards.clear()

    def is_set(self) -> bool:
        return self._shards.is_set() and not self._moving()

    def wait(self, timeout: float | None = None) -> bool:
        if not self._shards.wait(timeout):
            return False
        if self.is_set():
            return True
        time.sleep(self._RECHECK if timeout is None else min(self._RECHECK, timeout))
        return self.is_set()


class Shards:
    """One family's connections; see the module docstring."""

    def __init__(self, family: str, queue: EventQueue, make_session: MakeSession, capacity: int | None) -> None:
        self.family = family
        self._queue = queue
        self._make_session = make_session
        self._lock = threading.Lock()  # guards everything below; never held around user code or I/O
        self._configured = capacity    # max_subscriptions_per_connection (None: not given)
        self._stated: int | None = None  # the limit the server last stated when refusing
        self._held_most = 0            # the most a connection held when refused as full
        self._capacity = capacity      # the smaller of the two: subscriptions per connection
        self._sessions: list[Session] = []
        self._subs: dict[Hashable, WireSub] = {}     # registered: spec -> its wire subscription
        self._home: dict[Hashable, int] = {}         # registered: spec -> its shard
        self._counts: list[int] = []                 # per shard: specs registered or leaving there
        # Removed subscriptions whose unsubscribe is not settled (spec -> shard -> those subs): the
        # spec keeps its room on that shard (counted once, registered there or not) until the
        # last is released, so subscribed again meanwhile the channel goes back there.
        self._leaving: dict[Hashable, dict[int, list[WireSub]]] = {}
        self._refused: dict[Hashable, set[int]] = {}  # registered: the shards that handed it back
        self._last_home: collections.OrderedDict[Hashable, int] = collections.OrderedDict()
        self._started = False
        self._stopping = False
        self._failed = False                         # a shard gave up: so did the family
        self._moving: set[WireSub] = set()           # moved by an overflow, not answered yet
        self.ready = AllReady(self._still_moving)    # every shard READY, every moved channel answered
        self._new_shard()

    # -- the Source interface ---------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    @property
    def shards(self) -> int:
        return len(self._sessions)

    @property
    def capacity(self) -> int | None:
        """Subscriptions per connection: given, learned from the server, or None (no limit met)."""
        return self._capacity

    def sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions)

    @property
    def state(self) -> State:
        sessions = self.sessions()
        return min((s.state for s in sessions), key=lambda state: _RANK.get(state, 3))

    @property
    def fatal(self) -> KiyotakaError | None:
        return next((s.fatal for s in self.sessions() if s.fatal is not None), None)

    @property
    def reconnects(self) -> int:
        return sum(s.reconnects for s in self.sessions())

    @property
    def requests_sent(self) -> int:
        return sum(s.requests_sent for s in self.sessions())

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.sessions())

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.sessions())

    @property
    def last_frame_age(self) -> float | None:
        ages = [age for s in self.sessions() if (age := s.last_frame_age) is not None]
        return min(ages) if ages else None

    def start(self) -> None:
        with self._lock:
            self._started = True
            for session in self._sessions:
                session.start()

    def add(self, sub: WireSub) -> None:
        """Place ``sub`` on a shard with room (a new one if need be) and subscribe there."""
        with self._lock:
            if self._stopping or sub.spec in self._subs:
                return
            placed = self._place(sub, frozenset())
        if not placed:
            self._no_room(sub)

    def remove(self, spec: ChannelSpec) -> None:
        with self._lock:
            sub = self._subs.pop(spec, None)
            if sub is None:
                return
            shard = self._home.pop(spec)
            self._refused.pop(spec, None)
            # its room stays taken (no count changes) until the shard says it is off
            self._leaving.setdefault(spec, {}).setdefault(shard, []).append(sub)
            self._sessions[shard].remove(spec)  # posted under the lock: after its add, in order

    def counts(self) -> list[int]:
        """Subscriptions per shard: registered, plus removed ones whose unsubscribe is not settled."""
        with self._lock:
            return list(self._counts)

    def answer(self, conn: int, message: dict[str, Any]) -> None:
        """An answer the dispatcher decoded: to the shard whose connection ``conn`` is (else none:
        an answer from a connection already gone changes nothing)."""
        for session in self.sessions():
            if session.conn == conn:
                session.answer(conn, message)
                return

    def fail(self, error: KiyotakaError) -> None:
        """The family's dispatcher died: the first shard gives up with ``error`` (told once), and
        with it the family (``_state_changed``: every wait ends); the others stop now (nothing
        would deliver their data, even if the first shard had ended already)."""
        sessions = self.sessions()
        sessions[0].fail(error)
        for session in sessions[1:]:
            session.stop()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True  # no shard is made after this
            sessions = list(self._sessions)
        for session in sessions:
            session.stop()

    def join(self, deadline: float) -> bool:
        joined = [session.join(deadline) for session in self.sessions()]  # every join runs
        return all(joined)

    # -- from the shards' session threads -----------------------------------------------------------

    def _overflow(self, source: Session, overflow: Overflow) -> None:
        """``source``'s connection is full: learn its capacity, place the channels elsewhere.

        The capacity is the server's stated ``limit`` when it gives one, else the most any
        connection held when refused: an honest server never refuses below its limit, so the
        largest held is the best floor; a server refusing ever lower (a liar) cannot shrink it.
        A stated limit below that floor is not the limit (a number in the message that says
        something else: "error 2"); the floor is.
        """
        homeless: list[WireSub] = []
        with self._lock:
            self._held_most = max(self._held_most, overflow.held)
            if overflow.limit is not None:  # a hand-back of unsent channels (shed) states nothing
                self._stated = overflow.limit
            learned = max(1, self._held_most, self._stated or 0)
            configured = self._configured
            before = self._capacity
            self._capacity = learned if configured is None else min(configured, learned)
            if self._capacity != before:  # shards over it hand back what they have not sent yet
                for shard, count in enumerate(self._counts):
                    if count > self._capacity:
                        self._sessions[shard].shed(self._capacity)
            moved: tuple[WireSub, ...] = overflow.subs if not self._stopping else ()  # stopping: stop() ends every wait
            for sub in moved:
                spec = sub.spec
                if self._subs.get(spec) is not sub or self._home.get(spec) != source.shard:
                    # Unsubscribed (or registered anew) meanwhile: nothing to move. Removed from
                    # here, it was never applied: it is off now (no unsubscribe will tell).
                    self._free(spec, source.shard, sub)
                    continue
                del self._subs[spec], self._home[spec]
                if source.shard not in self._leaving.get(spec, ()):
                    self._counts[source.shard] -= 1  # else its room there stays taken until released
                refused = self._refused.setdefault(spec, set())
                refused.add(source.shard)
                if self._place(sub, refused):
                    self._moving.add(sub)  # its new shard may be READY already: wait_ready waits for it
                else:
                    del self._refused[spec]  # no longer registered here: forgotten
                    homeless.append(sub)
        for sub in homeless:
            self._no_room(sub)

    def _released(self, source: Session, subs: tuple[WireSub, ...]) -> None:
        """``subs``, removed, are off ``source``'s connection: their room there is free again."""
        with self._lock:
            for sub in subs:
                self._free(sub.spec, source.shard, sub)

    def _free(self, spec: Hashable, shard: int, sub: WireSub) -> None:
        """``sub``, removed, is off ``shard`` (with the lock held): once no other removal of
        ``spec`` is unsettled there and it is not registered there again, its room is free."""
        on = self._leaving.get(spec)
        owed = on.get(shard) if on is not None else None
        if on is None or owed is None or not any(s is sub for s in owed):
            return  # not ours (already released)
        owed[:] = [s for s in owed if s is not sub]
        if owed:
            return
        del on[shard]
        if not on:
            del self._leaving[spec]
        if self._home.get(spec) == shard:
            return  # registered there again: it keeps its room as such
        self._counts[shard] -= 1
        self._last_home[spec] = shard
        self._last_home.move_to_end(spec)
        while len(self._last_home) > MAX_REMEMBERED:
            self._last_home.popitem(last=False)

    def _still_moving(self) -> bool:
        """Some channel moved by an overflow is registered and not answered yet (pruned here)."""
        with self._lock:
            self._moving = {sub for sub in self._moving if self._subs.get(sub.spec) is sub
                            and sub.state == WireSub.PENDING and sub.error is None}
            return bool(self._moving)

    def _state_changed(self) -> None:
        """A shard's state changed. One that gave up fails the family, as an unsharded family
        fails: the other shards stop (nothing more is delivered), every subscription's wait ends
        with the shard's error, and no shard is opened again."""
        with self._lock:
            if self._sessions and all(s.ready.is_set() for s in self._sessions):
                self.ready.set()
            else:
                self.ready.clear()
            error = next((s.fatal for s in self._sessions if s.fatal is not None), None)
            if error is None or self._failed:
                return
            self._failed = self._stopping = True
            others = [s for s in self._sessions if s.fatal is None]
            wires = list(self._subs.values())
        for session in others:
            session.stop()
        for wire in wires:
            wire.end(error)

    # -- placing (with the lock held) -----------------------------------------------------------------

    def _place(self, sub: WireSub, refused: Collection[int]) -> bool:
        """Register ``sub`` on a shard with room that never ``refused`` it, and tell its session;
        False: no room anywhere. Each refusal rules a shard out for good, so a channel moves at
        most ``MAX_SHARDS`` times, whatever a server says."""
        spec = sub.spec
        # Its unsubscribe may not be applied yet: back on that connection (in the room it kept),
        # where the subscribe follows the unsubscribe; never on a second connection.
        shard = next((n for n in self._leaving.get(spec, ()) if n not in refused), None)
        if shard is None:
            shard = self._room_for(spec, refused)
        if shard is None:
            return False
        self._subs[spec] = sub
        self._home[spec] = shard
        session = self._sessions[shard]
        session.add(sub)
        if self._started:
            session.start()
        return True

    def _room_for(self, spec: Hashable, refused: Collection[int]) -> int | None:
        """A shard with room for ``spec`` (its last, else the first, else a new one), its count
        taken; None: none left."""
        shard: int | None = self._last_home.pop(spec, None)
        if shard is None or shard in refused or not self._has_room(shard):
            shard = next((n for n in range(len(self._sessions)) if n not in refused and self._has_room(n)), None)
        if shard is None:
            if self._stopping or len(self._sessions) >= MAX_SHARDS:
                return None
            shard = self._new_shard()
        self._counts[shard] += 1
        return shard

    def _has_room(self, shard: int) -> bool:
        return self._capacity is None or self._counts[shard] < self._capacity

    def _new_shard(self) -> int:
        number = len(self._sessions)
        self._sessions.append(self._make_session(number, self._overflow, self._released, self._state_changed))
        self._counts.append(0)
        self.ready.clear()
        return number

    def _no_room(self, sub: WireSub) -> None:
        error = SubscriptionError(
            f"subscription {sub.spec} rejected: {self.family} has {MAX_SHARDS} connections of at most "
            f"{self._capacity} subscriptions each, all full", channel=sub.spec.wire())
        sub.settle(WireSub.REJECTED, error)
        self._queue.put_control(error)
