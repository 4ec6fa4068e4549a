"""Recordings: the capture file format, the recorder sink, the reader and ``inspect_recording``.

File format, version 1 (all integers little-endian)::

    file header (16 bytes):  b"KWSREC\\r\\n"  u16 version (=1)  u16 flags (=0)  u32 reserved (=0)
    then records, each a 28-byte header followed by its payload:
      4s  sync     b"\\x1eKWR"      (lets a reader find the next record after a damaged one)
      u32 length   payload bytes stored
      u32 crc      CRC-32 of the 16 header bytes that follow it, then of the payload
      i64 time_ns  local receive time (time.time_ns(), nanoseconds since the epoch)
      u32 conn     the connection the frame came on (a new number after each reconnect)
      u8  kind     0 FRAME: one WebSocket message as received; 1 GAP: the recorder dropped
                   frames here (payload: u64 count)
      u8  family   0 book, 1 nonbook
      u8  flags    bit 0: a binary frame (else text); bit 1: the payload was brotli-compressed by
                   the recorder (text frames; decompress to get the bytes as received)
      u8  reserved 0

Binary frames (what the service sends with ``compression="brotli"``) are stored exactly as
received: they are brotli already. Text frames are brotli-compressed on the recorder's thread.
Replay hands the original bytes to the same decoding as a live connection.

The file is append-only: a recorder opening an existing file checks its header and appends. A
record is written with one ``write()``; a process killed mid-write leaves at most one torn record,
which the reader skips (a truncated record at the end, or a damaged one in the middle: it resyncs
on the next ``sync`` word whose CRC holds). Nothing is ever rewritten.

Rotation (``rotate_bytes`` / ``rotate_seconds``): the live file always has the given path; a full
segment is renamed ``<path>.1``, ``<path>.2``, ... (oldest first) and a new ``<path>`` begins.
Readers given ``<path>`` read ``<path>.1 ... <path>.N`` then ``<path>``. Segments are never deleted.

Ownership. A recorder holds an exclusive lock on ``<path>.lock`` (a sidecar covering ``<path>``
and its rotated segments) from ``open()`` to ``close()``: a second recorder on the same path, in
this process or another, is refused (``RecordingLocked``). The lock is ``fcntl.flock`` on POSIX
(per open file: two recorders in one process exclude each other too) and ``msvcrt.locking`` on
Windows; the lock file is left in place (removing it would let a third recorder lock a new file
while the second still holds the old one). A lock on a network file system is only as good as
the file system's ``flock``.

Reading a live recording. ``RecordingReader`` reads a consistent snapshot: it opens ``<path>``
first, then lists the rotated segments; if ``<path>`` was rotated meanwhile, the open file is the
newest segment and the new ``<path>`` is left out. So a reader sees a prefix of the recording (up
to the moment it started, plus whatever was appended to the file it holds), never a recording
with a hole: rotated segments are never renamed again. What it cannot read (a record torn at the
end while the writer is mid-write, damage, a segment deleted under it) is yielded as a ``DAMAGED``
record by ``raw(damage=True)`` (the replay reports it as ``EventsDropped``).

Cost on the hot path: the reader only stamps each frame into its family's bounded buffer
(``MAX_BUFFER_FRAMES`` frames, ``MAX_BUFFER_BYTES``; about 0.3 us per frame, no lock); the
``kiyotaka-ws-recorder`` thread writes at least every ``FLUSH_INTERVAL`` (about 1 us of CPU per
frame: header, CRC, write). A full buffer drops and counts frames (a GAP record marks the place),
never blocks the reader. A write error (or any unexpected exception on the recorder's thread)
ends the recording, is reported once through ``on_error`` and kept in its stats; the client
carries on. ``stop()`` writes what is buffered and closes the file. A path that exists but is not
a recording is refused when the client is built (``ConfigurationError``). Figures: ``kiyotaka-ws bench --recording`` (CHANGELOG).
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import logging
import operator
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any, Callable, NamedTuple, Protocol, Union

import attrs
import brotli  # type: ignore[import-untyped]

from .channels import BOOK, NONBOOK
from .errors import KiyotakaError
from .status import RecorderStats

__all__ = [
    "FORMAT_VERSION",
    "MAX_BUFFER_BYTES",
    "MAX_BUFFER_FRAMES",
    "Record",
    "Recorder",
    "RecorderStats",
    "RecordingError",
    "RecordingInfo",
    "RecordingLocked",
    "RecordingReader",
    "inspect_recording",
    "recording_files",
]

PathLike = Union[str, "os.PathLike[str]"]

FORMAT_VERSION = 1
MAGIC = b"KWSREC\r\n"
_FILE_HEADER = struct.Struct("<8sHHI")
SYNC = b"\x1eKWR"
_HEADER = struct.Struct("<4sIIqIBBBB")
_HEAD, _TAIL = struct.Struct("<4sII"), struct.Struct("<qIBBBB")  # the header in two: the CRC covers _TAIL
HEADER_SIZE = _HEADER.size  # 28
FRAME, GAP, DAMAGED = 0, 1, 2  # DAMAGED: only from raw(damage=True), never in a file
_BINARY, _RECOMPRESSED = 1, 2
FAMILY_CODES = {BOOK: 0, NONBOOK: 1}
FAMILY_NAMES = {code: name for name, code in FAMILY_CODES.items()}
MAX_RECORD_BYTES = 256 * 2**20   # a larger length can only be damage
MAX_BUFFER_BYTES = 32 * 2**20    # frames waiting for the recorder's thread, the batch being written included
MAX_BUFFER_FRAMES = 100_000
FLUSH_INTERVAL = 0.1             # the recorder writes (and flushes to the OS) at least this often
_TEXT_QUALITY = 4                # brotli quality for text frames (as the fake server uses)
_CHUNK = 1 << 20
_WRITE_RECORDS = 256             # records per write() while writing a batch
_CLOSED, _FAILED = 1, 2
_TIME = operator.itemgetter(1)
log = logging.getLogger(__name__)


class RecordingError(KiyotakaError, ValueError):
    """A file that is not a recording of a version this library reads."""


class Tap(Protocol):
    """What a family's reader calls with each frame it receives (``Recorder.tap``)."""

    def __call__(self, payload: bytes, binary: bool, connection: int, received_ns: int | None = None) -> None: ...


class RecordingLocked(RecordingError):
    """Another recorder (in this process or another) owns the recording."""


class _PathLock:
    """An exclusive, non-blocking lock on ``<path>.lock``, held while the file stays open."""

    def __init__(self, path: str) -> None:
        self.name = path + ".lock"
        self._file: Any = None

    def acquire(self) -> None:
        file = open(self.name, "a+b")  # noqa: SIM115 - held until release()
        try:
            if os.name == "nt":  # pragma: no cover - Windows
                import msvcrt
                file.seek(0)
                msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
            else:
                import fcntl
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.close()
            raise RecordingLocked(f"{self.name[:-5]}: another recorder is writing this recording") from None
        self._file = file

    def release(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()  # closing the file releases the lock (both flock and msvcrt)


class Record(NamedTuple):
    """One record of a recording, as read back."""

    kind: int            # FRAME or GAP
    time_ns: int         # local receive time (nanoseconds since the epoch)
    family: str          # "book" / "nonbook"
    connection: int
    binary: bool         # the frame's opcode: binary (True) or text
    payload: bytes       # the frame exactly as received (FRAME); b"" for GAP
    dropped: int = 0     # GAP: frames the recorder dropped just before this point


def recording_files(path: PathLike) -> list[str]:
    """The files of a recording, oldest first: ``<path>.1 ... <path>.N`` (rotated), then ``<path>``."""
    base = os.fspath(path)
    folder, name = os.path.split(base)
    numbered: list[tuple[int, str]] = []
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        entries = []
    for entry in entries:
        if entry.startswith(name + ".") and entry[len(name) + 1:].isdigit():
            numbered.append((int(entry[len(name) + 1:]), os.path.join(folder, entry)))
    files = [p for _, p in sorted(numbered)]
    if os.path.exists(base):
        files.append(base)
    return files


def _check_header(head: bytes, path: str) -> None:
    """Refuse a file that is not a recording this library reads. A header shorter than 16 bytes
    (a file just created, or torn by a crash) passes only while it is the start of ours: a short
    file of anything else is not a recording, to be read as empty or overwritten."""
    if len(head) < _FILE_HEADER.size:
        if not _FILE_HEADER.pack(MAGIC, FORMAT_VERSION, 0, 0).startswith(head):
            raise RecordingError(f"{path}: not a kiyotaka-ws recording")
        return
    magic, version, _flags, _reserved = _FILE_HEADER.unpack(head)
    if magic != MAGIC:
        raise RecordingError(f"{path}: not a kiyotaka-ws recording")
    if version != FORMAT_VERSION:
        raise RecordingError(f"{path}: recording format version {version}; this library reads {FORMAT_VERSION}")


# -- writing ---------------------------------------------------------------------------------------

class _Lane:
    """One family's buffer in a recorder. Each counter has one writer, so no lock is needed: the
    family's reader (the tap) writes ``added_*``, ``gap`` and ``dropped``; the recorder's thread
    writes ``removed_*``. Their differences are what the buffer holds."""

    __slots__ = ("added_bytes", "added_frames", "code", "dropped", "gap", "items", "removed_bytes",
                 "removed_frames")

    def __init__(self, code: int) -> None:
        self.code = code
        self.items: collections.deque[tuple[Any, ...]] = collections.deque()
        self.added_frames = self.added_bytes = 0
        self.removed_frames = self.removed_bytes = 0
        self.gap = 0      # frames dropped since the last one kept
        self.dropped = 0  # frames dropped in all


class Recorder:
    """A sink appending raw frames to a recording from its own thread, ``kiyotaka-ws-recorder``.

    ``tap(family)`` returns the function the family's reader calls for every frame it receives
    (through the family's ``EventQueue``): it only timestamps the frame and appends it to the
    family's buffer, bounded by ``max_buffer_frames`` frames and ``max_buffer_bytes`` bytes per
    family (the batch being written included), without a lock. It never blocks and never
    compresses: when the buffer is full (the disk cannot keep up) the frame is dropped and counted,
    and a GAP record marks the place in the file. The recorder's thread wakes every
    ``FLUSH_INTERVAL`` seconds (or when a buffer is half full), merges the families' frames in
    receive-time order, encodes them, writes them and flushes them to the OS. Any exception on
    that thread (a write error or anything unexpected) ends the recording: reported once through
    ``on_error``, kept in ``stats.error``; what was buffered and later frames count as dropped;
    the client carries on. ``open()`` takes the recording's lock (see the module doc).
    """

    def __init__(self, path: PathLike, *, rotate_bytes: int | None = None, rotate_seconds: float | None = None,
                 max_buffer_bytes: int = MAX_BUFFER_BYTES, max_buffer_frames: int = MAX_BUFFER_FRAMES,
                 on_error: Callable[[KiyotakaError], None] | None = None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.path = os.fspath(path)
        self.clock = clock  # the receive time stamped on each frame (nanoseconds since the epoch)
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.max_buffer_bytes = max_buffer_bytes
        self.max_buffer_frames = max_buffer_frames
        self.on_error = on_error
        self._stats = RecorderStats()  # written by the recorder's thread
        self._lanes = {family: _Lane(code) for family, code in FAMILY_CODES.items()}
        self._refuse = 0       # 0: accept frames; _CLOSED: ignore them; _FAILED: count them as dropped
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: Any = None
        self._segment_bytes = 0
        self._segment_started = 0.0
        self._lock = _PathLock(os.path.realpath(self.path))  # one lock whatever the alias (symlinks)

    @property
    def stats(self) -> RecorderStats:
        """Frames and bytes written, frames dropped, files written to, the error that ended it."""
        stats = self._stats
        return attrs.evolve(stats, dropped=stats.lost + sum(lane.dropped for lane in self._lanes.values()))

    @staticmethod
    def check(path: PathLike) -> None:
        """Raise ``RecordingError`` (or ``OSError``) now if ``path`` cannot be a recording to append to."""
        base = os.fspath(path)
        folder = os.path.dirname(base) or "."
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no such directory: {folder!r}")
        if os.path.isdir(base):
            raise IsADirectoryError(f"{base!r} is a directory")
        if os.path.isfile(base):  # a regular file: a device (/dev/full, a FIFO) has no header to check
            with open(base, "rb") as f:
                _check_header(f.read(_FILE_HEADER.size), base)

    def open(self) -> None:
        """Lock the recording, open (or create) the file and start the thread. Raises ``OSError`` /
        ``RecordingError`` (``RecordingLocked`` when another recorder owns the path)."""
        if self._thread is not None:
            return
        self._lock.acquire()
        try:
            self._open_segment()
        except BaseException:
            self._lock.release()
            raise
        self._thread = threading.Thread(target=self._run, name="kiyotaka-ws-recorder", daemon=True)
        self._thread.start()

    def tap(self, family: str) -> Tap:
        """The function a family's reader calls with each frame: ``put(payload, binary, connection,
        received_ns)``; ``received_ns`` (the frame's receive time: recorded, in a replay) defaults to
        ``clock()``."""
        lane = self._lanes[family]
        code, append, clock, wake = lane.code, lane.items.append, self.clock, self._wake
        max_frames, max_bytes, half = self.max_buffer_frames, self.max_buffer_bytes, self.max_buffer_bytes // 2

        def put(payload: bytes, binary: bool, connection: int, received_ns: int | None = None) -> None:
            if self._refuse:
                if self._refuse == _FAILED:
                    lane.dropped += 1
                return
            held = lane.added_bytes - lane.removed_bytes + len(payload)
            if held > max_bytes or lane.added_frames - lane.removed_frames >= max_frames:
                lane.gap += 1
                lane.dropped += 1
                return
            now = clock() if received_ns is None else received_ns
            if lane.gap:
                append((GAP, now, code, connection, False, lane.gap))
                lane.gap = 0
            append((FRAME, now, code, connection, binary, payload))
            lane.added_frames += 1
            lane.added_bytes = held
            if held > half:
                wake.set()

        return put

    def close(self, timeout: float = 5.0) -> bool:
        """Accept no more frames, write what is buffered, close the file; True if the thread ended."""
        if not self._refuse:
            self._refuse = _CLOSED
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is None:
            return True
        if thread is not threading.current_thread():
            thread.join(max(0.0, timeout))
        return not thread.is_alive()

    # -- the recorder's thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(FLUSH_INTERVAL)
                self._wake.clear()
                stopping = self._stop.is_set()
                self._write_batch()
                if stopping:
                    break
        except BaseException as exc:  # anything at all: the recording ends, reported once
            log.debug("the recorder failed", exc_info=True)
            self._fail(exc)
            self._discard()
        finally:
            file, self._file = self._file, None
            if file is not None:
                try:
                    file.close()
                except Exception as exc:  # noqa: BLE001 - reported; the lock is released all the same
                    self._fail(exc)
            self._lock.release()

    def _discard(self) -> None:
        """After a failure: count what is buffered as lost and free it."""
        for lane in self._lanes.values():
            items = lane.items
            for _ in range(len(items)):
                item = items.popleft()
                if item[0] == FRAME:
                    self._stats.lost += 1
                    lane.removed_frames += 1
                    lane.removed_bytes += len(item[5])

    def _write_batch(self) -> None:
        parts: list[tuple[_Lane, list[tuple[Any, ...]]]] = []
        for lane in self._lanes.values():
            items = lane.items
            count = len(items)  # the taps append at the right end meanwhile: take only these
            if count:
                parts.append((lane, [items.popleft() for _ in range(count)]))
        if not parts:
            return
        if len(parts) == 1:
            batch = parts[0][1]
        else:  # the families in receive order
            batch = list(heapq.merge(*(part for _, part in parts), key=_TIME))
        if not self._failed:
            try:
                self._write(batch)
            except Exception as exc:  # noqa: BLE001 - a disk error or a bug: either ends the recording
                self._fail(exc)
        if self._failed:  # (this batch may be in the file in part; counted as lost all the same)
            self._stats.lost += sum(1 for item in batch if item[0] == FRAME)
        for lane, part in parts:  # room again, now that they are written
            frames = [item[5] for item in part if item[0] == FRAME]
            lane.removed_bytes += sum(map(len, frames))
            lane.removed_frames += len(frames)

    def _write(self, batch: list[tuple[Any, ...]]) -> None:
        head, tail_of, crc32 = _HEAD.pack, _TAIL.pack, zlib.crc32
        rotating = self.rotate_bytes is not None or self.rotate_seconds is not None
        chunks: list[bytes] = []
        add = chunks.append
        pending = kept = 0
        for kind, time_ns, code, connection, binary, data in batch:
            if kind == GAP:
                payload, flags = struct.pack("<Q", data), 0
            elif binary:
                payload, flags = data, _BINARY
            else:
                raw = data.encode() if isinstance(data, str) else data
                payload, flags = brotli.compress(raw, quality=_TEXT_QUALITY), _RECOMPRESSED
            tail = tail_of(time_ns, connection, kind, code, flags, 0)
            add(head(SYNC, len(payload), crc32(payload, crc32(tail))))
            add(tail)
            add(payload)
            pending += HEADER_SIZE + len(payload)
            if rotating and self._due_rotation(pending):
                self._flush(chunks, pending)
                chunks, pending = [], 0
                add = chunks.append
                self._rotate()
            elif len(chunks) >= _WRITE_RECORDS * 3:
                # write() releases the GIL: a dispatcher waiting for it gets it back within ~0.5 ms
                self._flush(chunks, pending)
                chunks, pending = [], 0
                add = chunks.append
        if chunks:
            self._flush(chunks, pending)
        self._file.flush()
        kept = sum(1 for item in batch if item[0] == FRAME)
        self._stats.frames += kept

    def _flush(self, chunks: list[bytes], size: int) -> None:
        self._file.write(b"".join(chunks))
        self._segment_bytes += size
        self._stats.bytes += size

    def _due_rotation(self, pending: int) -> bool:
        if self.rotate_bytes is not None and self._segment_bytes + pending >= self.rotate_bytes:
            return True
        return self.rotate_seconds is not None and time.monotonic() - self._segment_started >= self.rotate_seconds

    def _open_segment(self) -> None:
        self.check(self.path)
        file = open(self.path, "ab")  # noqa: SIM115 - owned by the recorder's thread until close
        try:
            size = file.tell()
            if size < _FILE_HEADER.size:  # new, or a header torn by a crash: start it again
                if size:
                    file.truncate(0)
                file.write(_FILE_HEADER.pack(MAGIC, FORMAT_VERSION, 0, 0))
                size = _FILE_HEADER.size
        except OSError:
            file.close()
            raise
        self._file = file
        self._segment_bytes = size
        self._segment_started = time.monotonic()
        self._stats.files += 1

    def _rotate(self) -> None:
        self._file.close()
        self._file = None
        files = recording_files(self.path)
        last = 0
        for name in files[:-1]:
            last = max(last, int(name.rsplit(".", 1)[1]))
        os.replace(self.path, f"{self.path}.{last + 1}")
        self._open_segment()

    @property
    def _failed(self) -> bool:
        return self._refuse == _FAILED

    def _fail(self, exc: BaseException) -> None:
        if self._failed:
            return
        self._refuse = _FAILED  # nothing more can be written: drop (and count) instead of buffering
        self._stats.error = f"{type(exc).__name__}: {exc}"
        if self.on_error is not None:
            self.on_error(KiyotakaError(f"recording to {self.path} stopped: {exc}"))


# -- reading ---------------------------------------------------------------------------------------

class RecordingReader:
    """Iterates the records of a recording (all its rotated segments, oldest first).

    Damage never ends a read: a record torn by a crash (at the end of a file) or damaged in the
    middle is skipped, counted in ``torn`` and ``skipped_bytes``. A file whose header is not a
    recording's raises ``RecordingError``; a missing recording raises ``FileNotFoundError``.
    Each iteration reads a consistent snapshot of a recording still being written (module doc);
    ``files`` lists the files found when the reader was made.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self.files = recording_files(path)
        if not self.files:
            raise FileNotFoundError(f"no recording at {os.fspath(path)!r}")
        for name in self.files:
            with open(name, "rb") as f:
                _check_header(f.read(_FILE_HEADER.size), name)
        self.torn = 0
        self.skipped_bytes = 0
        self.missing = 0  # rotated segments deleted before they could be read

    def __iter__(self) -> Iterator[Record]:
        make = Record._make
        for item in self.raw():
            yield make(item)

    def raw(self, damage: bool = False) -> Iterator[tuple[int, int, str, int, bool, bytes, int]]:
        """The records as plain tuples (the fields of ``Record``): the replay's fast path. With
        ``damage=True``, each stretch that could not be read (torn, damaged, a segment deleted
        meanwhile) is a ``DAMAGED`` record (family and time: those of the record before it;
        ``dropped``: 1, as at least one frame is lost there)."""
        last: list[Any] = [0, NONBOOK]  # time_ns and family of the last record read
        for name, opened in self._snapshot():
            if opened is None:
                self.missing += 1
                if damage:
                    yield DAMAGED, last[0], last[1], 0, False, b"", 1
                continue
            yield from self._read_file(name, opened, damage, last)

    def _snapshot(self) -> Iterator[tuple[str, Any]]:
        """The files to read, oldest first, opened in turn: ``<path>`` first of all, then the rotated
        segments listed; a segment that is the file opened as ``<path>`` (rotated meanwhile) takes
        its place, and the newer ``<path>`` is left out (a later reader gets it)."""
        live: Any = None
        with contextlib.suppress(FileNotFoundError):
            live = open(self.path, "rb")  # noqa: SIM115 - handed to _read_file, which closes it
        try:
            live_id = None if live is None else _identity(os.fstat(live.fileno()))
            for name in recording_files(self.path):
                if name == self.path:
                    continue
                try:
                    if live is not None and _identity(os.stat(name)) == live_id:
                        opened, live = live, None
                        yield name, opened
                        return  # anything newer than the file held was rotated after this read began
                    opened = open(name, "rb")  # noqa: SIM115 - closed by _read_file
                except FileNotFoundError:
                    yield name, None
                    continue
                yield name, opened
            if live is not None:
                opened, live = live, None
                yield self.path, opened
        finally:
            if live is not None:
                live.close()

    def _read_file(self, name: str, file: Any, damage: bool,
                   last: list[Any]) -> Iterator[tuple[int, int, str, int, bool, bytes, int]]:
        unpack, crc32, size, families = _HEADER.unpack_from, zlib.crc32, HEADER_SIZE, FAMILY_NAMES
        with file as f:
            if len(f.read(_FILE_HEADER.size)) < _FILE_HEADER.size:
                return  # empty, or a header torn by a crash: nothing in it
            buf = b""
            pos = 0
            eof = False
            damaged = False  # inside a damaged stretch (counted once)
            while True:
                if len(buf) - pos < size and not eof:
                    buf, eof = self._fill(f, buf[pos:], size)
                    pos = 0
                if len(buf) - pos < size:
                    break
                sync, length, crc, time_ns, conn, kind, code, flags, _ = unpack(buf, pos)
                end = pos + size + length
                good = sync == SYNC and length <= MAX_RECORD_BYTES and code in families and kind <= GAP
                if good and len(buf) < end and not eof:
                    buf, eof = self._fill(f, buf[pos:], end - pos)
                    end -= pos
                    pos = 0
                # cut short (a torn record, or damage claiming a long length), or a bad checksum
                if good and len(buf) >= end:
                    payload = buf[pos + size:end]
                    good = crc32(payload, crc32(buf[pos + 12:pos + size])) == crc
                else:
                    good = False
                if not good:
                    if not damaged:
                        self.torn += 1
                        damaged = True
                        if damage:
                            yield DAMAGED, last[0], last[1], 0, False, b"", 1
                    found = buf.find(SYNC, pos + 1)
                    if found < 0:  # keep the last bytes: a sync word may straddle the next read
                        found = max(pos + 1, len(buf) - len(SYNC) + 1)
                    self.skipped_bytes += found - pos
                    pos = found
                    continue
                damaged = False
                pos = end
                last[0], last[1] = time_ns, families[code]
                if kind == GAP:
                    count = struct.unpack("<Q", payload)[0] if length == 8 else 0
                    yield GAP, time_ns, families[code], conn, False, b"", count
                    continue
                if flags & _RECOMPRESSED:
                    try:
                        payload = brotli.decompress(payload)
                    except brotli.error:
                        self.torn += 1
                        if damage:
                            yield DAMAGED, time_ns, families[code], conn, False, b"", 1
                        continue
                yield FRAME, time_ns, families[code], conn, flags & _BINARY == _BINARY, payload, 0
            if len(buf) > pos:  # bytes that make no whole record: torn
                if not damaged:
                    self.torn += 1
                    if damage:
                        yield DAMAGED, last[0], last[1], 0, False, b"", 1
                self.skipped_bytes += len(buf) - pos

    @staticmethod
    def _fill(f: Any, buf: bytes, need: int) -> tuple[bytes, bool]:
        """``buf`` with more of the file, until it holds ``need`` bytes; and whether the file ended."""
        parts = [buf]
        have = len(buf)
        while have < need:
            chunk = f.read(max(_CHUNK, need - have))
            if not chunk:
                return b"".join(parts), True
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts), False


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


# -- inspecting ------------------------------------------------------------------------------------

@attrs.define
class RecordingInfo:
    """What a recording holds (``inspect_recording``)."""

    files: list[str] = attrs.Factory(list)
    version: int = FORMAT_VERSION
    frames: dict[str, int] = attrs.Factory(dict)          # per family
    bytes: dict[str, int] = attrs.Factory(dict)           # stored payload bytes per family
    data_frames: int = 0
    other_frames: int = 0       # answers, server errors, undecodable frames
    points: int = 0
    series: dict[tuple[str, str, str], int] = attrs.Factory(dict)  # (channel, exchange, symbol or coin) -> points
    channels: list[dict[str, str]] = attrs.Factory(list)  # wire channel objects that match every point
    connections: int = 0
    dropped: int = 0            # frames the recorder dropped (GAP records)
    torn: int = 0               # damaged or torn records skipped
    skipped_bytes: int = 0
    first_ns: int | None = None
    last_ns: int | None = None

    @property
    def duration(self) -> float:
        """Seconds between the first and the last record."""
        if self.first_ns is None or self.last_ns is None:
            return 0.0
        return (self.last_ns - self.first_ns) / 1e9


def inspect_recording(path: PathLike, max_frame_bytes: int = 64 * 2**20) -> RecordingInfo:
    """Read a whole recording and summarise it (decoding every frame)."""
    from .protocol import FrameDecoder

    reader = RecordingReader(path)
    decoder = FrameDecoder(max_frame_bytes)
    info = RecordingInfo(files=list(reader.files))
    connections: set[tuple[str, int]] = set()
    seen: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    for record in reader:
        if info.first_ns is None:
            info.first_ns = record.time_ns
        info.first_ns = min(info.first_ns, record.time_ns)
        info.last_ns = max(info.last_ns or record.time_ns, record.time_ns)
        if record.kind == GAP:
            info.dropped += record.dropped
            continue
        connections.add((record.family, record.connection))
        info.frames[record.family] = info.frames.get(record.family, 0) + 1
        info.bytes[record.family] = info.bytes.get(record.family, 0) + len(record.payload)
        try:
            message = decoder.decode(record.payload, record.binary)
        except KiyotakaError:
            info.other_frames += 1
            continue
        points = message.get("points") if isinstance(message, dict) else None
        if not isinstance(points, list):
            info.other_frames += 1
            continue
        info.data_frames += 1
        for point in points:
            series = point.get("series") if isinstance(point, dict) else None
            if not isinstance(series, dict):
                continue
            grouped = series.get("symbol") is None
            key = (str(series.get("type")), str(series.get("exchange")),
                   str(series.get("coin") if grouped else series.get("symbol")))
            info.series[key] = info.series.get(key, 0) + 1
            info.points += 1
            channel = {"type": key[0], "exchange": key[1], "symbol": key[2]}
            if key[0] == "BLOCK_BOOK_SNAPSHOT" and type(series.get("blockSize")) in (int, float):
                channel["blockSize"] = f"{series['blockSize']:g}"
            if grouped:
                channel["groupByType"] = "1"
            seen.setdefault(tuple(sorted(channel.items())), channel)
    info.connections = len(connections)
    info.channels = list(seen.values())
    info.torn = reader.torn
    info.skipped_bytes = reader.skipped_bytes
    return info
