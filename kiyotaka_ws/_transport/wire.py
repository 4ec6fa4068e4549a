"""RFC 6455 client-side framing over an already upgraded socket (knows nothing of Kiyotaka).

Design:

* Receive: frames are parsed straight out of a read buffer (one ``recv`` of up to 64 KiB serves many
  frames). A frame's header is validated before its payload is read, so nothing unbounded is ever
  buffered: the buffer holds at most one frame (<= ``max_message_bytes``) plus one read chunk, control
  payloads are <= 125 bytes, and a fragmented message is accumulated in one ``bytearray`` (no
  per-fragment objects) capped by ``max_message_bytes`` and ``max_fragments``.
* Text is validated as strict UTF-8: ``bytes.isascii()`` for the common ASCII JSON frame, a full decode
  otherwise, and an incremental decoder across fragments so a bad fragment fails at once.
* Timeouts: the socket stays in blocking-with-timeout mode (timeout = ``send_timeout``). The reader
  treats ``socket.timeout`` as "nothing yet" and calls ``recv`` again (no data is lost: a timed-out
  ``recv`` consumed nothing, and OpenSSL keeps a partial record). Every send has a deadline: it polls
  for writability with the time left and sends what the kernel takes, so a peer that stops reading
  gives ``SendTimeout`` instead of a hang. A send that timed out may have left half a frame on the
  wire, so the sending side is then dead for good.
* Threads: one reader calls ``read_message`` (and answers pings from it); any thread may send. Sends
  are serialised by a lock that guards nothing else and is itself acquired with a timeout.
"""

from __future__ import annotations

import codecs
import os
import select
import socket
import struct
import threading
import time
from typing import Callable, NoReturn

__all__ = [
    "BINARY",
    "CLOSE",
    "DEFAULT_MAX_FRAGMENTS",
    "PING",
    "PONG",
    "TEXT",
    "ConnectionClosed",
    "ProtocolError",
    "SendTimeout",
    "WebSocket",
    "WireError",
]

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA

# A message in more pieces than this is hostile or broken: each fragment costs a header parse, and
# zero-length fragments would otherwise cost CPU without ever reaching the byte cap.
DEFAULT_MAX_FRAGMENTS = 4096

_READ_CHUNK = 65536
_MAX_CONTROL_PAYLOAD = 125
_CLOSE_TIMEOUT_CAP = 1.0  # closing is a courtesy: never wait long for a peer that may be gone

_PROTOCOL_ERROR, _NO_STATUS, _INVALID_DATA, _TOO_BIG = 1002, 1005, 1007, 1009


def _valid_close_code(code: int) -> bool:
    """Codes a peer may put on the wire (RFC 6455 §7.4; 1012-1014 are registered and sent by servers)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class WireError(Exception):
    """Base of every error this module raises; ``str()`` is a one-line human reason."""


class ProtocolError(WireError):
    """We failed the connection (1002 protocol error, 1007 invalid data, 1009 too big).

    A close frame with ``code`` has already been attempted.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"protocol error {code}: {reason}")
        self.code = code
        self.reason = reason


class ConnectionClosed(WireError):
    """The peer closed: ``code``/``reason`` from its close frame, or ``code`` None on EOF or a socket error.

    A close frame without a code gives 1005 (RFC 6455 §7.1.5); we echo 1000 for it.
    """

    def __init__(self, code: int | None, reason: str) -> None:
        if code is None:
            text = f"connection lost: {reason}"
        else:
            text = f"closed by the peer ({code}{' ' + repr(reason) if reason else ''})"
        super().__init__(text)
        self.code = code
        self.reason = reason


class SendTimeout(WireError):
    """A send could not complete in time: the peer stopped reading (treat the link as dead)."""


def _mask(key: bytes, payload: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``key``: one big-int XOR, linear and fast in C."""
    size = len(payload)
    if not size:
        return b""
    repeated = (key * ((size + 3) // 4))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(size, "little")


def _frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0xFE, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0xFF, size)
    key = os.urandom(4)
    return header + key + _mask(key, payload)


def _close_payload(code: int, reason: str) -> bytes:
    """Code plus reason cut to fit 125 bytes without splitting a UTF-8 sequence."""
    encoded = reason.encode("utf-8")[:_MAX_CONTROL_PAYLOAD - 2]
    return code.to_bytes(2, "big") + encoded.decode("utf-8", "ignore").encode("utf-8")


class WebSocket:
    """One upgraded client connection: a single reader thread reads, any thread sends.

    ``max_message_bytes`` caps a message (fragments summed), ``max_fragments`` the frames of one
    message; beyond either the connection fails with 1009. ``send_timeout`` bounds every send (close
    frames get at most 1 s). ``leftover`` is what was read past the HTTP upgrade response. The socket's
    timeout is owned by this object from now on.
    """

    def __init__(self, sock: socket.socket, *, max_message_bytes: int, max_fragments: int = DEFAULT_MAX_FRAGMENTS,
                 send_timeout: float = 10.0, leftover: bytes = b"",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_message_bytes < 1 or max_fragments < 1 or send_timeout <= 0:
            raise ValueError("max_message_bytes, max_fragments and send_timeout must be positive")
        self._sock = sock
        self._max_message_bytes = max_message_bytes
        self._max_fragments = max_fragments
        self._send_timeout = send_timeout
        self._close_timeout = min(send_timeout, _CLOSE_TIMEOUT_CAP)
        self._clock = clock
        sock.settimeout(send_timeout)  # bounds each blocking call; the reader just loops on a timeout
        # Liveness, written by the reader: the monotonic time of the last byte received (any
        # frame, pongs included) and of the last byte of a data message (complete or not).
        self.last_rx: float = clock()
        self.data_rx: float = self.last_rx
        # Called by the reader on each pong (rare: one per ping sent); must not block.
        self.on_pong: Callable[[], None] | None = None
        # Reader state (only the reader thread touches it).
        self._buf = bytes(leftover)
        self._pos = 0
        self._message_opcode = 0        # opcode of the fragmented message in progress, 0 when none
        self._message = bytearray()
        self._fragment_count = 0
        self._utf8: codecs.IncrementalDecoder | None = None
        self._ended: WireError | None = None  # raised again by every later read_message
        # Sender state (guarded by _send_lock, which guards nothing else).
        self._send_lock = threading.Lock()
        self._close_sent = False
        self._send_broken = False       # a send failed part-way: the stream may hold half a frame
        self._aborted = False

    # -- receiving (the reader thread only) --------------------------------------------------------

    def read_message(self) -> tuple[int, bytes]:
        """Block until the next complete data message: (TEXT or BINARY, payload).

        Pings are answered here; pongs call ``on_pong``; every byte read refreshes ``last_rx``.
        Raises ``ConnectionClosed`` (the peer closed, or the socket failed), ``ProtocolError`` (we
        failed the connection) or ``SendTimeout`` (a pong could not be sent); once raised, every
        later call raises the same.
        """
        if self._ended is not None:
            raise self._ended
        try:
            return self._read_message()
        except WireError as exc:
            self._ended = exc
            raise

    def _read_message(self) -> tuple[int, bytes]:
        max_bytes = self._max_message_bytes
        while True:
            buf, pos = self._buf, self._pos
            available = len(buf) - pos
            if available < 2:
                self._fill(2)
                continue
            b1, b2 = buf[pos], buf[pos + 1]
            size = b2 & 0x7F
            if size < 126:
                head = 2
            elif size == 126:
                head = 4
                if available < 4:
                    self._fill(4)
                    continue
                size = int.from_bytes(buf[pos + 2:pos + 4], "big")
            else:
                head = 10
                if available < 10:
                    self._fill(10)
                    continue
                size = int.from_bytes(buf[pos + 2:pos + 10], "big")
                if size >> 63:
                    self._fail(_PROTOCOL_ERROR, "64-bit frame length with the most significant bit set")
            if (b1 == 0x81 or b1 == 0x82) and b2 < 0x80 and not self._message_opcode:
                # The common case, kept short: a whole unmasked text or binary message in one frame.
                if size > max_bytes:
                    self._fail(_TOO_BIG, f"{size}-byte frame exceeds max_message_bytes={max_bytes}")
                end = pos + head + size
                if len(buf) < end:
                    self._fill(head + size, data=True)
                    continue
                payload = buf[pos + head:end]
                self._pos = end
                self.data_rx = self.last_rx
                if b1 == 0x82 or payload.isascii():
                    return b1 & 0x0F, payload
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError as exc:
                    self._fail(_INVALID_DATA, f"text message is not valid UTF-8 ({exc.reason})")
                return TEXT, payload
            # Anything else: judge the header before reading the payload, so nothing unbounded is buffered.
            if b1 & 0x70:
                self._fail(_PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
            if b2 & 0x80:
                self._fail(_PROTOCOL_ERROR, "masked frame from the server")
            opcode = b1 & 0x0F
            final = b1 & 0x80
            if opcode >= CLOSE:
                if opcode > PONG:
                    self._fail(_PROTOCOL_ERROR, f"reserved control opcode {opcode:#x}")
                if size > _MAX_CONTROL_PAYLOAD:
                    self._fail(_PROTOCOL_ERROR, f"control frame with a {size}-byte payload (max 125)")
                if not final:
                    self._fail(_PROTOCOL_ERROR, "fragmented control frame")
            elif opcode:
                if opcode > BINARY:
                    self._fail(_PROTOCOL_ERROR, f"reserved data opcode {opcode:#x}")
                if self._message_opcode:
                    self._fail(_PROTOCOL_ERROR, "new data frame while a fragmented message is open")
                if size > max_bytes:
                    self._fail(_TOO_BIG, f"{size}-byte frame exceeds max_message_bytes={max_bytes}")
            else:
                if not self._message_opcode:
                    self._fail(_PROTOCOL_ERROR, "continuation frame with no message started")
                if self._fragment_count >= self._max_fragments:
                    self._fail(_TOO_BIG, f"message in more than max_fragments={self._max_fragments} frames")
                if len(self._message) + size > max_bytes:
                    self._fail(_TOO_BIG, f"fragmented message exceeds max_message_bytes={max_bytes}")
            end = pos + head + size
            if len(buf) < end:
                self._fill(head + size, data=opcode < CLOSE)
                continue
            payload = buf[pos + head:end]
            self._pos = end

            if opcode < CLOSE:  # a fragment (whole messages took the fast path)
                self.data_rx = self.last_rx
                message = self._fragment(opcode, payload, final)
                if message is not None:
                    return message
            elif opcode == PING:
                if not self._close_sent:  # after our close frame nothing else may go out
                    self._send_frame(PONG, payload, self._send_timeout)
            elif opcode == CLOSE:
                self._on_close(payload)
            elif self.on_pong is not None:  # a pong: its bytes already refreshed last_rx
                self.on_pong()

    def _fragment(self, opcode: int, payload: bytes, final: int) -> tuple[int, bytes] | None:
        """Add one frame of a fragmented message; the whole message once the final one arrived."""
        if opcode:  # the first frame
            self._message_opcode = opcode
            self._message += payload
            self._fragment_count = 1
            if opcode == TEXT:
                self._utf8 = codecs.getincrementaldecoder("utf-8")()
        else:
            self._message += payload
            self._fragment_count += 1
        if self._utf8 is not None:
            try:
                self._utf8.decode(payload, bool(final))  # fails on the first bad fragment, not at the end
            except UnicodeDecodeError as exc:
                self._fail(_INVALID_DATA, f"text message is not valid UTF-8 ({exc.reason})")
        if not final:
            return None
        message = (self._message_opcode, bytes(self._message))
        self._message = bytearray()  # drop the big buffer rather than keep its capacity
        self._message_opcode = self._fragment_count = 0
        self._utf8 = None
        return message

    def _on_close(self, payload: bytes) -> NoReturn:
        """Validate the peer's close frame, echo it (unless we closed first), and end with ConnectionClosed."""
        code = _NO_STATUS  # an empty close frame carries no code: RFC 6455 §7.1.5 reports it as 1005
        reason = ""
        if len(payload) == 1:
            self._fail(_PROTOCOL_ERROR, "close frame with a 1-byte payload")
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if not _valid_close_code(code):
                self._fail(_PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._fail(_INVALID_DATA, "close reason is not valid UTF-8")
        self.close(1000 if code == _NO_STATUS else code)
        raise ConnectionClosed(code, reason)

    def _fail(self, code: int, reason: str) -> NoReturn:
        """Fail the connection: a close frame with ``code`` (short timeout), then ProtocolError."""
        self.close(code, reason)
        raise ProtocolError(code, reason)

    def _fill(self, need: int, data: bool = False) -> None:
        """Read until ``need`` bytes are buffered from the current position (one join at the end).

        Every chunk read refreshes ``last_rx`` (and ``data_rx`` while a data frame's payload is
        being read): liveness counts bytes, so a large frame arriving slowly keeps its link alive.
        One clock read per ``recv`` (up to 64 KiB), never per frame.
        """
        parts = [self._buf[self._pos:]]
        have = len(parts[0])
        recv, clock = self._sock.recv, self._clock
        try:
            while have < need:
                try:
                    chunk = recv(max(_READ_CHUNK, need - have))
                except socket.timeout:
                    continue  # nothing yet: the timeout exists for the senders' sake
                except OSError as exc:
                    raise ConnectionClosed(None, f"socket error: {exc}") from exc
                if not chunk:
                    raise ConnectionClosed(None, "aborted locally" if self._aborted
                                           else "the peer closed the TCP connection without a close frame")
                parts.append(chunk)
                have += len(chunk)
                self.last_rx = now = clock()
                if data:
                    self.data_rx = now
        finally:
            self._buf = b"".join(parts)
            self._pos = 0

    # -- sending (any thread) -----------------------------------------------------------------------

    def send_text(self, text: str | bytes) -> None:
        """Send one text message (bytes are taken as already valid UTF-8). Raises SendTimeout on timeout."""
        self._send_frame(TEXT, text.encode("utf-8") if isinstance(text, str) else text, self._send_timeout)

    def send_binary(self, data: bytes) -> None:
        """Send one binary message. Raises SendTimeout on timeout."""
        self._send_frame(BINARY, data, self._send_timeout)

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping (payload at most 125 bytes). Raises SendTimeout on timeout."""
        if len(payload) > _MAX_CONTROL_PAYLOAD:
            raise ValueError("a ping payload is at most 125 bytes")
        self._send_frame(PING, payload, self._send_timeout)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame, once (later calls do nothing), waiting at most 1 s. Never raises."""
        try:
            self._send_frame(CLOSE, _close_payload(code, reason), self._close_timeout)
        except Exception:  # noqa: BLE001, S110 - closing is best effort; the reader sees the end anyway
            pass

    def abort(self) -> None:
        """Shut the socket down both ways, waking a reader blocked in recv. Does not close the fd. Never raises."""
        self._aborted = True
        try:
            # The plain socket's shutdown: SSLSocket.shutdown would also drop its SSL object under a
            # reader that may be inside SSL_read right now.
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        except Exception:  # noqa: BLE001, S110 - already shut down or closed
            pass

    def close_socket(self) -> None:
        """Close the file descriptor (the reader's owner, once read_message has returned or raised)."""
        try:
            self._sock.close()
        except OSError:
            pass

    def _send_frame(self, opcode: int, payload: bytes, timeout: float) -> None:
        frame = _frame(opcode, payload)  # masking happens outside the lock
        deadline = time.monotonic() + timeout
        if not self._send_lock.acquire(timeout=timeout):
            raise SendTimeout(f"another send held the link for {timeout:g}s: the peer is not reading")
        try:
            if self._send_broken:
                raise SendTimeout("an earlier send timed out or failed part-way: the link is dead")
            if self._close_sent:
                if opcode == CLOSE:
                    return  # idempotent
                raise WireError("the close frame was already sent: no more frames may follow")
            if opcode == CLOSE:
                self._close_sent = True
            self._send_all(frame, deadline, timeout)
        finally:
            self._send_lock.release()

    def _send_all(self, frame: bytes, deadline: float, timeout: float) -> None:
        """Write the whole frame by ``deadline`` (called with the send lock held)."""
        sock = self._sock
        view = memoryview(frame)
        sent, total = 0, len(frame)
        try:
            while sent < total:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not _wait_writable(sock, remaining):
                    raise SendTimeout(f"could not send {total - sent} of {total} bytes within {timeout:g}s: "
                                      "the peer is not reading")
                try:
                    sent += sock.send(view[sent:])
                except socket.timeout as exc:  # ssl: writable socket, but the record still did not fit
                    raise SendTimeout(f"send timed out after {timeout:g}s: the peer is not reading") from exc
        except SendTimeout:
            self._send_broken = True
            raise
        except (OSError, ValueError) as exc:  # ValueError: the socket was already closed (fd -1)
            self._send_broken = True
            raise ConnectionClosed(None, f"send failed: {exc}") from exc


def _wait_writable(sock: socket.socket, timeout: float) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        return bool(poller.poll(timeout * 1000.0))
    return bool(select.select([], [sock], [], timeout)[1])  # Windows
