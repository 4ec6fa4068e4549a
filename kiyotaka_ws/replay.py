"""Replay: a recording as the source of a client's families, behind the same interface as ``Session``.

One ``Player`` per replaying client reads the recording on one thread, ``kiyotaka-ws-replay``,
and puts each frame, as it was received, into its family's ``EventQueue``: from there the frame
takes the live path (dispatcher: decompress, parse, route by series, decode, call handlers).
Each family gets a ``ReplaySource`` (what a ``Session`` is for a live family): it reports READY
when started and STOPPED at the end of the recording, settles subscriptions at once (there is no
server to answer them) and ignores answers found in the recording.

Order. Within a family, frames are handed over in recorded order (as live). Across families the
player hands a frame of one family over only once every earlier frame of the other family has
been handled (its queue is empty), so handlers see the whole recording in recorded receive order,
as if on one thread; this costs a thread switch at each change of family.

Pace. ``speed=None``: as fast as the handlers take it, and the queue never drops (whatever
``overflow``). ``speed=1.0``: the recorded gaps between frames, ``speed=10.0`` ten times shorter;
the queue's overflow policy then applies as live. A gap longer than the recording's own clock
allows (the wall clock stepped back) counts as none.

Gaps. Every frame not replayed is reported as ``EventsDropped`` to ``on_error``, as a frame
dropped live: the recorder's GAP records, and what the reader could not read (a torn or damaged
record, a segment deleted meanwhile). A recording still being written is read as a consistent
snapshot (``RecordingReader``): the replay ends where the file stood, never with a hole.

Output. ``replay(path, record=out)`` copies what it replays, with the recorded receive times;
``out`` may not be the recording replayed or one of its segments (``ConfigurationError`` naming
``record`` at ``start()``): the copy would read its own output for ever.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any, Callable

from .dispatch import BATCH_FRAMES as BATCH
from .dispatch import BLOCK, EventQueue
from .errors import ConfigurationError, EventsDropped, KiyotakaError
from .recording import DAMAGED, FRAME, GAP, PathLike, RecordingReader, recording_files
from .source import ExternalSource
from .status import State
from .threads import join_by

log = logging.getLogger(__name__)


def _identities(names: list[str]) -> set[Any]:
    """What tells files apart: the real path, and (st_dev, st_ino) of those that exist (hard links)."""
    found: set[Any] = set()
    for name in names:
        found.add(os.path.realpath(name))
        try:
            st = os.stat(name)
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return found


class ReplaySource(ExternalSource):
    """One family's source in a replaying client: READY at once, STOPPED at the end of the file."""

    def __init__(self, family: str, queue: EventQueue, player: Player) -> None:
        super().__init__(family, queue, player)


class Player:
    """Reads a recording on its own thread and feeds the families' queues (see the module doc)."""

    def __init__(self, path: PathLike, speed: float | None, on_end: Callable[[], None],
                 on_fatal: Callable[[KiyotakaError], None]) -> None:
        self.reader = RecordingReader(path)  # checks the files now: a bad path fails at replay()
        self.speed = speed
        self._on_end = on_end
        self._on_fatal = on_fatal
        self._sources: dict[str, ReplaySource] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.finished = False
        self.skipped = 0  # frames of families nobody registered for

    # -- the source factory the client uses -----------------------------------------------------------

    def prepare(self) -> None:
        """Called by ``start()``: nothing to check (no key, the files were checked at ``replay()``)."""

    def check_record(self, path: str) -> None:
        """Refuse to record onto the recording being replayed (or one of its segments)."""
        mine = _identities([*recording_files(self.reader.path), self.reader.path])
        if mine & _identities([*recording_files(path), path]):
            raise ConfigurationError(f"record: {path!r} is the recording being replayed (or part of it); "
                                     "record the copy to another path")

    def queue_policy(self, overflow: str) -> str:
        """As fast as possible loses nothing; a paced replay keeps the client's policy."""
        return BLOCK if self.speed is None else overflow

    def make(self, family: str, queue: EventQueue) -> ReplaySource:
        source = ReplaySource(family, queue, self)
        with self._lock:
            self._sources[family] = source
        return source

    # -- from the sources -----------------------------------------------------------------------------

    def all_started(self) -> None:
        """``start()`` has started every family: play (with no family at all, end at once)."""
        with self._lock:
            if self._thread is not None or self.finished:
                return
            if not self._sources:
                self.finished = True
            else:
                self._thread = threading.Thread(target=self._run, name="kiyotaka-ws-replay", daemon=True)
                self._thread.start()
                return
        self._on_end()  # nothing registered: nothing to replay

    def start(self, source: ReplaySource) -> None:
        """A family started; one registered after the end of the recording ends at once."""
        with self._lock:
            if self.finished or self._stopping.is_set():
                source.end(State.STOPPED)

    def stop(self) -> None:
        self._stopping.set()

    def join(self, deadline: float) -> bool:
        return join_by(self._thread, deadline)

    def fatal(self, error: KiyotakaError) -> None:
        self._stopping.set()
        self._on_fatal(error)

    # -- the player's thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._play(self.reader.raw(damage=True))
        except BaseException as exc:  # anything at all: reported once, every family FAILED
            log.debug("replay failed", exc_info=True)
            error = KiyotakaError(f"replay of {self.reader.path} failed ({type(exc).__name__}: {exc})")
            with self._lock:
                self.finished = True
                sources = list(self._sources.values())
            ExternalSource.end_all(sources, error)
            self._on_fatal(error)
            return
        ended = not self._stopping.is_set()
        with self._lock:
            self.finished = True
            sources = list(self._sources.values())
        if ended:  # the end of the recording: every handler has run; now the last statuses
            for source in sources:
                source.queue.wait_empty(self._stopping)
        for source in sources:
            source.end(State.STOPPED)
        if ended and not self._stopping.is_set():
            self._on_end()

    def _play(self, records: Iterable[tuple[int, int, str, int, bool, bytes, int]]) -> None:
        stopping = self._stopping
        speed = self.speed
        clock = time.monotonic
        sources = self._sources
        origin_wall: float | None = None
        origin_rec = 0
        last_rec = 0
        previous: ReplaySource | None = None
        pending: list[tuple[bytes, bool, int, int]] = []  # unpaced: frames handed over 64 at a time
        size = 0
        for kind, time_ns, family, connection, binary, payload, dropped in records:
            source = sources.get(family)
            if kind == DAMAGED and (source is None or not source._started):  # a guess: tell someone
                source = next((s for s in sources.values() if s._started), None)
            if source is None or not source._started:
                self.skipped += 1
                continue
            if speed is None:
                if source is previous and kind == FRAME:
                    pending.append((payload, binary, connection, time_ns))
                    size += len(payload)
                    if len(pending) >= BATCH:
                        self._hand_over(source, pending, size)
                        pending, size = [], 0
                        if stopping.is_set():
                            return
                    continue
                if pending:
                    assert previous is not None
                    self._hand_over(previous, pending, size)
                    pending, size = [], 0
            else:
                if origin_wall is None:
                    origin_wall, origin_rec, last_rec = clock(), time_ns, time_ns
                if time_ns < last_rec:  # the wall clock stepped back: no gap
                    origin_rec += time_ns - last_rec
                last_rec = time_ns
                wait = origin_wall + (time_ns - origin_rec) / 1e9 / speed - clock()
                if wait > 0 and stopping.wait(wait):
                    return
            if previous is not source:
                if previous is not None:  # keep the recorded order across families
                    previous.queue.wait_empty(stopping)
                previous = source
            if stopping.is_set():
                return
            if kind != FRAME:
                source.queue.put_control(EventsDropped(
                    dropped, family=source.family,
                    reason="the recorder dropped them (disk too slow)" if kind == GAP else
                    "a torn or damaged record in the recording (at least one frame), or a segment deleted"))
                continue
            if speed is None:
                pending.append((payload, binary, connection, time_ns))
                size += len(payload)
                continue
            source.frames += 1
            source.bytes += len(payload)
            source.last_rx = clock()
            source.queue.put_frame(payload, binary, connection, time_ns)
        if pending and previous is not None:
            self._hand_over(previous, pending, size)

    def _hand_over(self, source: ReplaySource, frames: list[tuple[bytes, bool, int, int]], size: int) -> None:
        """Unpaced: queue a run of frames of one family, refilling the queue in bursts."""
        queue = source.queue
        if queue.depth + len(frames) > queue.capacity:
            # Refill from a quarter full: a player always ready to run would take the GIL each time
            # the dispatcher releases it (brotli), and make it wait up to the switch interval.
            queue.wait_empty(self._stopping, below=max(1, queue.capacity // 4))
        source.frames += len(frames)
        source.bytes += size
        source.last_rx = time.monotonic()
        queue.put_frames(frames)
