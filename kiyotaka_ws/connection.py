"""One endpoint family's connection: supervise, authenticate, subscribe, read, keep alive, reconnect.

Two threads per family, both started and joined here:

* ``kiyotaka-ws-<family>-reader`` runs the supervisor loop (iterative, never recursive): connect,
  authenticate, replay the family's subscriptions, then receive -> decompress -> parse -> enqueue
  until the connection ends, then back off and start over. It never calls user code.
* ``kiyotaka-ws-<family>-watchdog`` owns every timer: it sends pings, and closes the socket when
  no pong comes, when no data comes for ``stale_timeout``, and settles subscriptions the server
  never answered. Time spent blocked on a full queue (``overflow="block"``) is back-pressure, not
  silence, so it never counts as a timeout.

Other threads only send through ``_send`` (serialised by websocket-client's send lock) or close
the socket.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import attrs
import websocket

from . import protocol
from .channels import ChannelSpec
from .dispatch import Dispatcher, EventQueue
from .errors import (
    AuthenticationError,
    DecodeError,
    KiyotakaError,
    ServerError,
    SubscriptionError,
)
from .status import ConnectionStatus, State

log = logging.getLogger("kiyotaka_ws.connection")

_READ_CHUNK = 65536
_AUTH_CLOSES_BEFORE_FATAL = 3  # consecutive closes during authentication = a rejected key


class Secret:
    """Holds the API key; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@attrs.frozen
class Options:
    """The connection settings of ``KiyotakaClient`` (validated there)."""

    compression: str | None = "brotli"
    reconnect: bool = True
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 10.0
    stale_timeout: float | None = None
    auth_timeout: float = 5.0
    subscribe_timeout: float = 10.0
    connect_timeout: float = 10.0
    max_frame_bytes: int = 16 * 2**20
    sslopt: dict[str, Any] | None = None
    proxy: tuple[str, str, int] | None = None  # (type, host, port)


class Backoff:
    """Exponential backoff with full jitter inside [initial, min(maximum, initial * 2**attempt)]."""

    def __init__(self, initial: float, maximum: float, rng: Callable[[], float] = random.random) -> None:
        self.initial = initial
        self.maximum = maximum
        self.rng = rng

    def delay(self, attempt: int) -> float:
        cap = min(self.maximum, self.initial * 2 ** min(attempt, 60))
        return self.initial + self.rng() * (cap - self.initial)


class WireSub:
    """The server's view of one channel spec on this family: pending, active or rejected."""

    PENDING, ACTIVE, ASSUMED, REJECTED = "pending", "active", "assumed", "rejected"

    def __init__(self, spec: ChannelSpec) -> None:
        self.spec = spec
        self.state = self.PENDING
        self.error: SubscriptionError | None = None
        self._cond = threading.Condition()

    def settle(self, state: str, error: SubscriptionError | None = None) -> None:
        with self._cond:
            self.state, self.error = state, error
            self._cond.notify_all()

    def reset(self) -> None:
        with self._cond:
            if self.state != self.REJECTED:
                self.state = self.PENDING

    def wait(self, timeout: float | None) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.state != self.PENDING, timeout):
                raise TimeoutError(f"no answer to the subscription {self.spec} within {timeout}s")
            if self.error is not None:
                raise self.error


class _Ended(Exception):
    """Internal: the connection ended; the message is the reason shown in status and logs."""


TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class _WebSocket(websocket.WebSocket):
    """websocket-client's socket (handshake, TLS, proxies, sending) with our own receive path.

    ``read_message`` parses frames straight out of a 64 KiB read buffer: one recv syscall for many
    frames instead of three per frame, and none of websocket-client's per-frame objects and locks.
    A frame's declared length is checked against the cap before its payload is read.
    """

    def __init__(self, max_frame_bytes: int, **options: Any) -> None:
        super().__init__(skip_utf8_validation=True, enable_multithread=True, **options)
        self.max_frame_bytes = max_frame_bytes
        self._buf = b""
        self._pos = 0
        self._fragments: list[bytes] = []
        self._first_opcode = 0
        self._fragmented_size = 0

    def read_message(self) -> tuple[int, bytes]:
        """The next message (fragments joined) or control frame, as (opcode, payload).

        Pings are answered here. Raises ``_Ended`` on a protocol violation or an oversized frame,
        and websocket-client's exceptions on a closed socket or a timeout (nothing read is lost).
        """
        fragments = self._fragments  # a message may span calls: control frames come between fragments
        while True:
            buf, pos = self._buf, self._pos
            if len(buf) - pos < 2:
                self._fill(2)
                continue
            b1, b2 = buf[pos], buf[pos + 1]
            size, head = b2 & 0x7F, 2
            if size == 126:
                head = 4
            elif size == 127:
                head = 10
            if len(buf) - pos < head:
                self._fill(head)
                continue
            if head == 4:
                size = int.from_bytes(buf[pos + 2:pos + 4], "big")
            elif head == 10:
                size = int.from_bytes(buf[pos + 2:pos + 10], "big")
            if b2 & 0x80 or b1 & 0x70:
                raise _Ended("protocol error: masked or extension frame from the server")
            if size > self.max_frame_bytes:
                raise _Ended(f"frame of {size} bytes exceeds max_frame_bytes={self.max_frame_bytes}")
            end = pos + head + size
            if len(buf) < end:
                self._fill(head + size)
                continue
            payload = buf[pos + head:end]
            self._pos = end
            opcode = b1 & 0x0F
            if opcode >= CLOSE:
                if opcode > PONG:
                    raise _Ended(f"protocol error: reserved opcode {opcode}")
                if opcode == PING:
                    self.pong(payload)
                return opcode, payload
            if opcode > BINARY or bool(opcode) == bool(fragments):
                raise _Ended(f"protocol error: unexpected opcode {opcode} (fragmented: {bool(fragments)})")
            if b1 & 0x80 and not fragments:
                return opcode, payload
            fragments.append(payload)
            self._fragmented_size += size
            if self._fragmented_size > self.max_frame_bytes:
                raise _Ended(f"message exceeds max_frame_bytes={self.max_frame_bytes}")
            if b1 & 0x80:
                message = b"".join(fragments)
                first_opcode = self._first_opcode
                fragments.clear()
                self._fragmented_size = 0
                return first_opcode, message
            if len(fragments) == 1:
                self._first_opcode = opcode

    def _fill(self, need: int) -> None:
        """Read until ``need`` bytes are buffered from the current position (one join at the end)."""
        parts = [self._buf[self._pos:]]
        have = len(parts[0])
        try:
            while have < need:
                chunk = self._recv(max(_READ_CHUNK, need - have))
                parts.append(chunk)
                have += len(chunk)
        finally:  # a timeout keeps what was read
            self._buf = b"".join(parts)
            self._pos = 0


class Connection:
    """Supervises one endpoint family. Owns its socket, its wire subscriptions and their acks."""

    def __init__(self, family: str, url: str, key: Secret, options: Options, queue: EventQueue,
                 dispatcher: Dispatcher, on_fatal: Callable[[KiyotakaError], None],
                 rng: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.family = family
        self.url = url
        self._key = key
        self.options = options
        self._queue = queue
        self._dispatcher = dispatcher
        self._on_fatal = on_fatal
        self._clock = clock
        self._backoff = Backoff(options.backoff_initial, options.backoff_max, rng)
        self._decoder = protocol.FrameDecoder(options.max_frame_bytes)

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # wakes the watchdog
        self._stopping = threading.Event()
        self.ready = threading.Event()
        self._subs: dict[ChannelSpec, WireSub] = {}
        # Per-connection state, reset on every connect (guarded by _lock).
        self._ws: _WebSocket | None = None
        self._connecting: _WebSocket | None = None  # between TCP connect and the upgrade answer
        self._ids: Iterator[int] = itertools.count(1)
        self._pending: dict[int, tuple[str, ChannelSpec | None, float]] = {}
        self._live = False          # authenticated: subscriptions go out at once
        self._end_reason: str | None = None
        self._ping_sent: float | None = None
        self._connected_at = 0.0
        self._auth_closes = 0  # consecutive closes during authentication
        self._failed = False

        self.state = State.STOPPED
        self.frames = 0
        self.bytes = 0
        self.frame_errors = 0
        self.reconnects = 0
        self.last_rx: float | None = None    # any frame, pongs included
        self._last_data = 0.0                   # data or answers, for stale_timeout
        self._threads: list[threading.Thread] = []

    # -- control, from any thread ---------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        self._threads = [
            threading.Thread(target=self._supervise, name=f"kiyotaka-ws-{self.family}-reader"),
            threading.Thread(target=self._watch, name=f"kiyotaka-ws-{self.family}-watchdog"),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def started(self) -> bool:
        return bool(self._threads)

    def stop(self, deadline: float) -> bool:
        """Close the socket, stop both threads and join them by ``deadline``. True when joined."""
        self._stopping.set()
        with self._wake:
            ws, connecting = self._ws, self._connecting
            self._wake.notify_all()
        if ws is not None:
            _abort(ws, polite=True)
        if connecting is not None:
            _abort(connecting, polite=False)
        me = threading.current_thread()
        for thread in self._threads:
            if thread is not me:
                thread.join(max(0.0, deadline - time.monotonic()))
        joined = not any(t.is_alive() for t in self._threads if t is not me)
        if self.state is not State.FAILED:
            self._set_state(State.STOPPED)
        return joined

    def add(self, sub: WireSub) -> None:
        """Register a wire subscription; sent at once when the connection is live."""
        with self._lock:
            if sub.spec in self._subs:
                return
            self._subs[sub.spec] = sub
            request = self._request_locked("subscribe", sub.spec) if self._live else None
        if request:
            self._send(request)

    def remove(self, spec: ChannelSpec) -> None:
        """Forget a wire subscription; ``public/unsubscribe`` goes out when the connection is live."""
        with self._lock:
            sub = self._subs.pop(spec, None)
            request = None
            if sub is not None and sub.state != WireSub.REJECTED and self._live:
                request = self._request_locked("unsubscribe", spec)
        if request:
            self._send(request)

    @property
    def last_frame_age(self) -> float | None:
        return None if self.last_rx is None else max(0.0, self._clock() - self.last_rx)

    # -- requests -----------------------------------------------------------------------------

    def _request_locked(self, kind: str, spec: ChannelSpec | None) -> tuple[Any, int, str]:
        """Register a request of the current connection; (socket, id, text) to send outside the lock."""
        req_id = next(self._ids)
        self._pending[req_id] = (kind, spec, self._clock())
        if kind == "subscribe":
            assert spec is not None
            text = protocol.subscribe(req_id, [spec.wire()], self.options.compression)
            self._wake.notify_all()  # the watchdog times the answer
        elif kind == "unsubscribe":
            assert spec is not None
            text = protocol.unsubscribe(req_id, [spec.wire()])
        else:
            text = protocol.authenticate(req_id, self._key.reveal())
        return self._ws, req_id, text

    def _send(self, request: tuple[Any, int, str]) -> None:
        ws, _, text = request
        try:
            ws.send(text)
        except Exception as exc:  # noqa: BLE001 - the reader sees the dead socket and reconnects
            log.debug("%s: send failed (%s); the reconnect will replay subscriptions", self.family, exc)

    # -- the reader thread ----------------------------------------------------------------------

    def _supervise(self) -> None:
        attempt = 0
        reason: str | None = None
        while not self._stopping.is_set():
            self._set_state(State.CONNECTING, attempt, reason)
            ws: _WebSocket | None = None
            try:
                ws = self._connect()
                if ws is None:
                    break
                self._authenticate(ws)
                self._replay()
                self._read(ws)
            except AuthenticationError as exc:
                self._close(ws)
                self._fail(exc)
                return
            except Exception as exc:  # noqa: BLE001 - any end of a connection leads to a reconnect
                reason = self._end_reason or _describe(exc)
            finally:
                up_for = self._clock() - self._connected_at if ws is not None else 0.0
                self._close(ws)
            if self._stopping.is_set():
                break
            if not self.options.reconnect:
                self._fail(KiyotakaError(f"{self.family} connection lost ({reason}) and reconnect=False"))
                return
            # A connection that stayed up long enough resets the backoff.
            if up_for >= min(self.options.backoff_max, 10.0):
                attempt = 0
            delay = self._backoff.delay(attempt)
            attempt += 1
            self.reconnects += 1
            log.warning("%s connection lost (%s); reconnecting in %.2fs (attempt %d)",
                        self.family, reason, delay, attempt)
            self._set_state(State.DISCONNECTED, attempt, reason)
            if self._stopping.wait(delay):
                break

    def _connect(self) -> _WebSocket | None:
        options = self.options
        ws = _WebSocket(options.max_frame_bytes, sslopt=options.sslopt)
        kwargs: dict[str, Any] = {"timeout": options.connect_timeout, "suppress_origin": True}
        if options.proxy:
            kwargs.update(proxy_type=options.proxy[0], http_proxy_host=options.proxy[1],
                          http_proxy_port=options.proxy[2])
        log.info("%s: connecting to %s", self.family, _safe_url(self.url))
        with self._lock:
            self._connecting = ws  # stop() can cut the upgrade handshake short
        try:
            ws.connect(self.url, **kwargs)
        finally:
            with self._lock:
                self._connecting = None
        now = self._clock()
        with self._wake:
            if self._stopping.is_set():
                _abort(ws, polite=True)
                ws.shutdown()
                return None
            self._ws = ws
            self._ids = itertools.count(1)
            self._pending.clear()
            self._end_reason = None
            self._ping_sent = None
            self._connected_at = self.last_rx = self._last_data = now
            self._wake.notify_all()
        return ws

    def _authenticate(self, ws: _WebSocket) -> None:
        """Send the key and wait up to auth_timeout for an answer (none at all is fine).

        A server that closes during authentication several times in a row rejects the key.
        """
        with self._lock:
            _, auth_id, text = self._request_locked("auth", None)
        ws.send(text)
        deadline = self._clock() + self.options.auth_timeout
        try:
            while True:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    log.info("%s: no answer to authentication within %.1fs; going on", self.family,
                             self.options.auth_timeout)
                    break
                ws.settimeout(remaining)
                try:
                    opcode, payload = ws.read_message()
                except websocket.WebSocketTimeoutException:
                    continue
                if opcode == CLOSE:
                    self._auth_closes += 1
                    code, reason = _close_info(payload)
                    if self._auth_closes >= _AUTH_CLOSES_BEFORE_FATAL:
                        raise AuthenticationError(
                            f"the server closed the {self.family} connection during authentication "
                            f"{self._auth_closes} times in a row (last close {code} {reason!r}): the API "
                            "key was probably rejected")
                    raise _Ended(f"closed by the server during authentication ({code} {reason})")
                if self._is_answer_to(auth_id, opcode, payload):
                    self.frames += 1
                    self.bytes += len(payload)
                    self._on_response(self._decoder.decode(payload, opcode == BINARY))
                    log.info("%s: authenticated", self.family)  # _on_response raised if it was an error
                    break
                self._on_frame(opcode, payload)
            self._auth_closes = 0
        finally:
            if ws.sock is not None:
                ws.settimeout(None)

    def _is_answer_to(self, req_id: int, opcode: int, payload: bytes) -> bool:
        if opcode != TEXT and opcode != BINARY:
            return False
        try:
            message = self._decoder.decode(payload, opcode == BINARY)
        except DecodeError:
            return False
        return protocol.classify(message) is protocol.Kind.RESPONSE and message.get("id") == req_id

    def _replay(self) -> None:
        """Send every registered subscription again (one request each, so acks map 1:1)."""
        with self._lock:
            self._live = True
            specs = [s.spec for s in self._subs.values() if s.state != WireSub.REJECTED]
            for sub in self._subs.values():
                sub.reset()
            requests = [self._request_locked("subscribe", spec) for spec in specs]
        for request in requests:
            self._send(request)
        if requests:
            log.info("%s: subscribing to %d channel(s)", self.family, len(requests))
        self._check_ready()

    def _read(self, ws: _WebSocket) -> None:
        read = ws.read_message
        on_frame = self._on_frame
        while not self._stopping.is_set():
            opcode, payload = read()
            if opcode == CLOSE:
                code, text = _close_info(payload)
                with contextlib.suppress(Exception):
                    ws.send_close()  # answer the close handshake
                raise _Ended(f"closed by the server ({code} {text})".rstrip())
            on_frame(opcode, payload)

    def _on_frame(self, opcode: int, payload: bytes) -> None:
        """The reader's whole share of a frame: clocks, counters, and the raw payload into the queue.

        Decompressing and parsing happen on the dispatcher thread: brotli releases the GIL, and a
        thread that releases it while another is busy waits up to the 5 ms switch interval to get
        it back. The reader, which must keep the socket drained, does only pure-Python work.
        """
        now = self._clock()
        self.last_rx = now
        if opcode != TEXT and opcode != BINARY:
            return  # pong, or a ping (already answered)
        self._last_data = now
        self.frames += 1
        self.bytes += len(payload)
        if self._queue.put_frame(payload, opcode == BINARY):
            # We waited on a full queue: what we read next is the backlog, not a late pong.
            self.last_rx = self._last_data = self._clock()

    def handle_message(self, message: Any) -> None:
        """A decoded message that is not data: an answer or an error (runs on the dispatcher thread)."""
        kind = protocol.classify(message)
        if kind is protocol.Kind.RESPONSE:
            try:
                self._on_response(message)
            except AuthenticationError as exc:  # a late answer to authenticate
                self._fail(exc)
        elif kind is protocol.Kind.ERROR:
            code, text, data = protocol.error_details(message)
            self._dispatcher.report_error(ServerError(f"server error {code}: {text}", code=code, data=data))
        else:
            self.frame_errors += 1
            self._dispatcher.report_error(
                DecodeError("unexpected message shape", excerpt=protocol.excerpt(message)))

    def _on_response(self, message: dict[str, Any]) -> None:
        with self._lock:
            entry = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
            sub = self._subs.get(entry[1]) if entry and entry[1] is not None else None
        if entry is None:
            log.debug("%s: answer to no pending request (id %r)", self.family, message.get("id"))
            return
        kind, spec = entry[0], entry[1]
        failed = "error" in message
        if kind == "auth":
            if failed:
                code, text, _ = protocol.error_details(message)
                raise AuthenticationError(f"API key rejected by the server ({code}: {text})")
        elif kind == "subscribe" and sub is not None:
            if failed:
                code, text, _ = protocol.error_details(message)
                error = SubscriptionError(f"subscription {spec} rejected ({code}: {text})",
                                          channel=spec.wire() if spec else None, code=code, server_message=text)
                log.warning("%s: %s", self.family, error)
                sub.settle(WireSub.REJECTED, error)
                self._dispatcher.report_error(error)
            else:
                log.info("%s: subscribed to %s", self.family, spec)
                sub.settle(WireSub.ACTIVE)
            self._check_ready()
        elif kind == "unsubscribe" and failed:
            log.warning("%s: unsubscribe from %s failed: %s", self.family, spec, message.get("error"))

    def _check_ready(self) -> None:
        with self._lock:
            self._mark_ready_locked()

    def _mark_ready_locked(self) -> None:
        """READY once live and no replayed or new subscription awaits its answer."""
        if not self._live or self.state is State.READY:
            return
        if any(kind == "subscribe" for kind, _, _ in self._pending.values()):
            return
        self._set_state(State.READY)

    def _close(self, ws: _WebSocket | None) -> None:
        with self._wake:
            self._ws = None
            self._live = False
            self._pending.clear()
            self.ready.clear()
            self._wake.notify_all()
        if ws is not None:
            _abort(ws, polite=False)
            ws.shutdown()  # the reader owns the socket: only it closes the file descriptor

    def _fail(self, error: KiyotakaError) -> None:
        """Give up for good (rejected key, or a loss with reconnect=False). Safe from any thread."""
        with self._wake:
            if self._failed:
                return
            self._failed = True
            self._stopping.set()
            ws = self._ws
            self._wake.notify_all()
        log.error("%s: %s; giving up", self.family, error)
        self._dispatcher.report_error(error)
        self._set_state(State.FAILED, reason=str(error))
        if ws is not None:
            _abort(ws, polite=True)
        self._on_fatal(error)

    def _set_state(self, state: State, attempt: int = 0, reason: str | None = None) -> None:
        self.state = state
        if state is State.READY:
            self.ready.set()
        self._dispatcher.report_status(ConnectionStatus(self.family, state, attempt, reason))

    # -- the watchdog thread --------------------------------------------------------------------

    def _watch(self) -> None:
        with self._wake:
            while not self._stopping.is_set():
                now = self._clock()
                wake_at = self._check_timers_locked(now)
                self._wake.wait(None if wake_at is None else max(0.0, wake_at - now))

    def _check_timers_locked(self, now: float) -> float | None:
        """Act on every timer that is due; return when the next one is (None: nothing to time)."""
        options = self.options
        ws = self._ws
        if ws is None:
            return None
        deadlines: list[float] = []
        blocked = self._queue.blocked
        # A ping is outstanding until any frame arrives after it; no new ping restarts its clock.
        outstanding = self._ping_sent is not None and (self.last_rx or 0) < self._ping_sent
        if options.ping_interval and not outstanding:
            last_ping = self._ping_sent if self._ping_sent is not None else self._connected_at
            if now >= last_ping + options.ping_interval:
                self._ping_sent = last_ping = now
                outstanding = True
                with contextlib.suppress(Exception):  # a dead socket: the reader sees it and reconnects
                    ws.ping()
            deadlines.append(last_ping + options.ping_interval)
        if options.ping_timeout and outstanding:
            due = self._ping_sent + options.ping_timeout  # type: ignore[operator]
            if now >= due and not blocked:
                self._kill_locked(ws, f"no pong within {options.ping_timeout}s")
                return None
            deadlines.append(due)
        if options.stale_timeout:
            due = self._last_data + options.stale_timeout
            if now >= due and not blocked:
                self._kill_locked(ws, f"no data for {options.stale_timeout}s")
                return None
            deadlines.append(due)
        for req_id, (kind, spec, sent) in list(self._pending.items()):
            if kind != "subscribe":
                continue
            due = sent + options.subscribe_timeout
            if now >= due:
                del self._pending[req_id]
                sub = self._subs.get(spec) if spec is not None else None
                if sub is not None and sub.state == WireSub.PENDING:
                    log.warning("%s: no answer to the subscription %s within %.1fs; assuming it is active",
                                self.family, spec, options.subscribe_timeout)
                    sub.settle(WireSub.ASSUMED)
            else:
                deadlines.append(due)
        self._mark_ready_locked()
        if blocked:  # re-check soon: the reader may unblock at any time
            deadlines.append(now + 0.5)
        return min(deadlines) if deadlines else None

    def _kill_locked(self, ws: _WebSocket, reason: str) -> None:
        """Shut the socket down so the reader wakes up and reconnects, giving ``reason``."""
        log.warning("%s: %s; closing the connection", self.family, reason)
        self._end_reason = reason
        self._ws = None
        _abort(ws, polite=False)


def _abort(ws: websocket.WebSocket, polite: bool) -> None:
    """Shut the socket down so a reader blocked in recv wakes up. Safe from any thread, idempotent;
    closing the file descriptor is left to the reader (no fd reuse races)."""
    sock = ws.sock
    if sock is None:
        return
    if polite:
        with contextlib.suppress(Exception):  # best effort: the socket may already be gone
            sock.settimeout(1.0)
            ws.send_close()
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _close_info(data: bytes) -> tuple[int | None, str]:
    if len(data) < 2:
        return None, ""
    return int.from_bytes(data[:2], "big"), data[2:].decode("utf-8", "replace")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _Ended):
        return str(exc)
    if isinstance(exc, websocket.WebSocketConnectionClosedException):
        return "connection closed without a close frame"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _safe_url(url: str) -> str:
    """The URL without its query (which could carry credentials in a proxy setup)."""
    return url.split("?", 1)[0]
