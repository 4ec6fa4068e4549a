"""``FakeKiyotakaServer``: a real WebSocket server on loopback that speaks the Kiyotaka protocol.

Use it to test a bot without the network or a key::

    from kiyotaka_ws import KiyotakaClient
    from kiyotaka_ws.testing import FakeKiyotakaServer, trade_point

    with FakeKiyotakaServer(api_key="k") as server:
        client = KiyotakaClient("k", book_url=server.book_url, nonbook_url=server.nonbook_url)
        sub = client.on_trade(print, exchange="BINANCE_FUTURES", symbol="BTCUSDT")
        with client:
            sub.wait(5)
            server.publish([trade_point("BINANCE_FUTURES", "BTCUSDT", price=90000.0, amount=0.1)])

Both endpoint families share one port (``/ws`` and ``/nonbook/ws``). The server checks the key,
answers ``public/authenticate`` / ``public/subscribe`` / ``public/unsubscribe`` (or stays silent,
or rejects, as configured), sends brotli or plain frames as each client asked, routes published
points to the subscribers whose channels match their ``series``, records every message it gets,
and injects faults: abrupt drops, close codes, raw bytes, silence, rejected symbols.

Limits mode (each off by default, as the server was before): ``max_requests_per_second`` (a
token bucket per connection with a burst of ``min(5, rate)``, as ``kiyotaka_ws.pacing`` paces the
client), ``max_channels_per_request`` and ``max_subscriptions_per_connection``. A request over a
limit is rejected whole, nothing of it applied, with a JSON-RPC error::

    rate:           {"code": 429, "message": "TOO_MANY_REQUESTS", "data": {"retry_after": <s>}}
    channels:       {"code": -32602, "message": "TOO_MANY_CHANNELS: at most N channels per request",
                     "data": {"max_channels_per_request": N}}
    subscriptions:  {"code": 4290, "message": "SUBSCRIPTION_LIMIT: at most N subscriptions per connection",
                     "data": {"limit": N}}

checked in that order (then ``reject_symbol``, whose error names no channel and rejects the whole
batch). Control requests (subscribe, unsubscribe, unsubscribe_all; not authenticate) count
against the rate, rejected ones included; ``request_counts()``, ``max_burst()`` and
``rejections()`` say what the server saw.

A point builder for each channel makes points exactly as the service sends them:
``trade_point``, ``trade_agg_point``, ``book_point``, ``liquidation_point``,
``funding_rate_point``, ``open_interest_point`` and ``volume_profile_point``.
Needs the ``testing`` extra (``websockets``).

More of the kit: ``client_kwargs()`` (the key and URLs for a ``KiyotakaClient``), ``feed(batches,
interval)`` publishes from a generator in the background (stopped with the server), ``play(path)``
serves a recording, ``stop()`` then ``start()`` restarts on the same port; faults
``drop_connections()`` (TCP reset), ``close_connections(code)``, ``publish_raw(bytes)``,
``send_error(...)``, ``set_silent()``, ``reject_symbol()``; what clients sent is in ``received``,
``requests(method)`` and ``subscriptions()``. Point builders take the exchange, the symbol and the
channel's values as keywords (``time_ns`` defaults to now) and extra ``series`` fields by wire
name (``normalizedSymbol="BTC-USDT"``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Callable

import brotli  # type: ignore[import-untyped]

try:
    from websockets.exceptions import ConnectionClosed
    from websockets.http11 import Response
    from websockets.sync.server import Server, ServerConnection, serve
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("kiyotaka_ws.testing needs the 'testing' extra: pip install 'kiyotaka-ws[testing]'") from exc


from .channels import BOOK, NONBOOK
from .pacing import TokenBucket

__all__ = [
    "FakeKiyotakaServer",
    "Received",
    "book_point",
    "funding_rate_point",
    "liquidation_point",
    "open_interest_point",
    "series",
    "trade_agg_point",
    "trade_point",
    "volume_profile_point",
]

_PATHS = {"/ws": BOOK, "/nonbook/ws": NONBOOK}
ANSWER, SILENT, REJECT = "answer", "silent", "reject"
_CONTROL = ("public/subscribe", "public/unsubscribe", "public/unsubscribe_all")
RATE_LIMITED_ERROR, TOO_MANY_CHANNELS_ERROR, SUBSCRIPTION_LIMIT_ERROR = 429, -32602, 4290


class Received:
    """One message a client sent: its endpoint family, connection number and the parsed JSON."""

    __slots__ = ("connection", "family", "message")

    def __init__(self, family: str, connection: int, message: Any) -> None:
        self.family = family
        self.connection = connection
        self.message = message

    @property
    def method(self) -> str | None:
        """The JSON-RPC method of the message, if it has one."""
        return self.message.get("method") if isinstance(self.message, dict) else None

    def __repr__(self) -> str:
        shown = dict(self.message) if isinstance(self.message, dict) else self.message
        if isinstance(shown, dict) and "params" in shown and "token" in (shown["params"] or {}):
            shown["params"] = {**shown["params"], "token": "***"}
        return f"Received({self.family!r}, #{self.connection}, {shown!r})"


class _Session:
    """One client connection as the server sees it."""

    def __init__(self, number: int, family: str, conn: ServerConnection, bucket: TokenBucket | None) -> None:
        self.number = number
        self.family = family
        self.conn = conn
        self.bucket = bucket
        self.authenticated = False
        self.brotli = False
        # keyed by their canonical JSON: a subscribe or unsubscribe costs O(its channels), not
        # O(all channels held), so 10,000 subscriptions take seconds, not minutes
        self.channels: dict[str, dict[str, Any]] = {}


def _channel_key(channel: dict[str, Any]) -> str:
    return json.dumps(channel, sort_keys=True, default=repr)


def _wanted(by_symbol: dict[Any, list[dict[str, Any]]], series: Any) -> bool:
    """Some channel of ``by_symbol`` (channels keyed by their ``symbol``) matches ``series``."""
    if not isinstance(series, dict):
        return False
    keys = {series.get("symbol"), series.get("coin")}
    return any(_matches(c, series) for key in keys if isinstance(key, str) for c in by_symbol.get(key, ()))


def _matches(channel: dict[str, Any], series: dict[str, Any]) -> bool:
    if channel.get("type") != series.get("type"):
        return False
    if channel.get("exchange") not in ("*", series.get("exchange")):
        return False
    if series.get("category") is not None and channel.get("category", "*") not in ("*", series["category"]):
        return False
    key = "coin" if channel.get("groupByType") == "1" else "symbol"
    return channel.get("symbol") == series.get(key)


class FakeKiyotakaServer:
    """An in-process Kiyotaka WebSocket server on loopback for tests and demos.

    ``auth_reply`` / ``subscribe_reply``: ``"answer"`` (JSON-RPC result or error), ``"silent"``
    (no answer at all), or ``"reject"`` (an error answer for every request). ``reply_delay``
    delays every answer (a slow server). ``compress_replies`` brotli-compresses answers too when
    the client asked for brotli. ``port=0`` picks a free port; after a ``stop()``, ``start()``
    listens on the same port again (a server restart).

    ``max_requests_per_second``, ``max_channels_per_request``, ``max_subscriptions_per_connection``
    (None: no limit) enforce limits per connection, as the module docstring describes.
    """

    def __init__(self, api_key: str | None = "test-key", *, host: str = "127.0.0.1", port: int = 0,
                 auth_reply: str = ANSWER, subscribe_reply: str = ANSWER, reply_delay: float = 0.0,
                 compress_replies: bool = False, max_requests_per_second: float | None = None,
                 max_channels_per_request: int | None = None,
                 max_subscriptions_per_connection: int | None = None) -> None:
        for name, value in (("auth_reply", auth_reply), ("subscribe_reply", subscribe_reply)):
            if value not in (ANSWER, SILENT, REJECT):
                raise ValueError(f"{name}: expected 'answer', 'silent' or 'reject', got {value!r}")
        if max_requests_per_second is not None and not max_requests_per_second > 0:
            raise ValueError(f"max_requests_per_second: expected a positive number or None, "
                             f"got {max_requests_per_second!r}")
        for name, limit in (("max_channels_per_request", max_channels_per_request),
                            ("max_subscriptions_per_connection", max_subscriptions_per_connection)):
            if limit is not None and not (isinstance(limit, int) and limit >= 1):
                raise ValueError(f"{name}: expected a whole number >= 1 or None, got {limit!r}")
        self.max_requests_per_second = max_requests_per_second
        self.max_channels_per_request = max_channels_per_request
        self.max_subscriptions_per_connection = max_subscriptions_per_connection
        self.api_key = api_key
        self.host = host
        self.auth_reply = auth_reply
        self.subscribe_reply = subscribe_reply
        self.reply_delay = reply_delay
        self.compress_replies = compress_replies
        self._port = port
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._sessions: dict[int, _Session] = {}
        self._received: list[Received] = []
        self._rejected_symbols: dict[str, tuple[int, str]] = {}
        # connection number -> arrival times of its control requests (monotonic seconds)
        self._request_times: dict[int, list[float]] = {}
        self._rejections: dict[int, int] = {}  # error code -> how many requests it rejected
        self._connections = 0
        self._silent = False
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._feeds: list[tuple[threading.Thread, threading.Event]] = []

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeKiyotakaServer:
        """Listen and serve in a background thread. Returns self."""
        if self._server is not None:
            return self
        self._server = serve(self._handle, self.host, self._port, compression=None, ping_interval=None,
                             max_size=None, close_timeout=2, process_request=self._check_path,
                             server_header=None)
        self._port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=f"fake-kiyotaka-{self._port}")
        self._thread.start()
        return self

    def feed(self, batches: Iterable[Sequence[dict[str, Any]]], interval: float = 0.1,
             family: str | None = None) -> None:
        """Publish each batch of points from ``batches`` (a generator, say), one every ``interval``
        seconds, from a background thread, until it is exhausted or the server stops."""
        done = threading.Event()

        def run() -> None:
            for points in batches:
                if done.wait(interval):
                    return
                self.publish(points, family)

        thread = threading.Thread(target=run, name=f"fake-kiyotaka-feed-{self._port}", daemon=True)
        self._feeds.append((thread, done))
        thread.start()

    def stop(self) -> None:
        """Stop the feeds, close every connection (1001 going away) and stop listening. Idempotent."""
        feeds, self._feeds = self._feeds, []
        for thread, done in feeds:
            done.set()
        for thread, _ in feeds:
            if thread is not threading.current_thread():
                thread.join()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> FakeKiyotakaServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port it listens on (kept across a stop and start)."""
        return self._port

    @property
    def book_url(self) -> str:
        """The book endpoint, for ``KiyotakaClient(book_url=...)``."""
        return f"ws://{self.host}:{self._port}/ws?encoding=json"

    @property
    def nonbook_url(self) -> str:
        """The nonbook endpoint, for ``KiyotakaClient(nonbook_url=...)``."""
        return f"ws://{self.host}:{self._port}/nonbook/ws?encoding=json"

    def client_kwargs(self) -> dict[str, Any]:
        """``book_url``/``nonbook_url`` (and the key) to pass to ``KiyotakaClient``."""
        # A server without a key accepts any: hand the client one so it has something to send.
        return {"api_key": self.api_key or "any-key", "book_url": self.book_url, "nonbook_url": self.nonbook_url}

    # -- what clients did ---------------------------------------------------------------------

    @property
    def received(self) -> list[Received]:
        """Every message clients sent, in arrival order (a copy)."""
        with self._lock:
            return list(self._received)

    def requests(self, method: str, family: str | None = None) -> list[Received]:
        """The received requests with this ``method`` (e.g. ``"public/subscribe"``), in order."""
        return [r for r in self.received if r.method == method and family in (None, r.family)]

    @property
    def connection_count(self) -> int:
        """How many connections were accepted since the server was created."""
        with self._lock:
            return self._connections

    def open_connections(self, family: str | None = None) -> int:
        """How many client connections are open now (of one family, or all)."""
        with self._lock:
            return sum(1 for s in self._sessions.values() if family in (None, s.family))

    def subscriptions(self, family: str | None = None) -> list[dict[str, Any]]:
        """The channel objects currently subscribed on open connections."""
        with self._lock:
            return [dict(c) for s in self._sessions.values() if family in (None, s.family) for c in s.channels.values()]

    def wait_for(self, predicate: Callable[[FakeKiyotakaServer], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate(server)`` holds (checked whenever something happens)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                self._lock.release()
                try:
                    if predicate(self):
                        return True
                finally:
                    self._lock.acquire()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.05))

    def wait_subscribed(self, count: int = 1, family: str | None = None, timeout: float = 5.0) -> bool:
        """Wait until open connections hold at least ``count`` subscribed channels."""
        return self.wait_for(lambda _: self._subscribed_count(family) >= count, timeout)

    def _subscribed_count(self, family: str | None) -> int:
        with self._lock:
            return sum(len(s.channels) for s in self._sessions.values() if family in (None, s.family))

    # -- sending ------------------------------------------------------------------------------

    def publish(self, points: Sequence[dict[str, Any]], family: str | None = None) -> int:
        """Send ``points`` in one frame per subscriber, each getting the points its channels match.

        Returns the number of frames sent. Nothing is sent while the server is silent.
        """
        sent = 0
        for session in self._live_sessions(family, authenticated=True):
            by_symbol: dict[Any, list[dict[str, Any]]] = {}  # a channel matches only its symbol's (or coin's) points
            for channel in list(session.channels.values()):
                by_symbol.setdefault(channel.get("symbol"), []).append(channel)
            mine = [p for p in points if _wanted(by_symbol, p.get("series", {}))]
            if mine and self._send(session, {"points": mine}):
                sent += 1
        return sent

    def play(self, path: str | os.PathLike[str], *, speed: float | None = None) -> None:
        """Send a recording (``KiyotakaClient(record=...)``) to the connected clients; returns at its end.

        Each recorded data frame goes to the clients of the family it was recorded on, to those
        subscribed to at least one of its points: as recorded, byte for byte, when the client
        subscribed to every point in it with the framing it was recorded in (brotli or text);
        otherwise re-encoded with only the points that client subscribed to (as ``publish``).
        Answers and errors in the recording are not sent. ``speed=None`` sends as fast as the
        sockets take it; ``1.0`` keeps the recorded gaps, ``10.0`` makes them ten times shorter.
        Subscribe first (``Subscription.wait()``): nothing is sent to clients not yet subscribed.
        """
        from .errors import DecodeError
        from .protocol import FrameDecoder
        from .recording import FRAME, RecordingReader

        if speed is not None and not speed > 0:
            raise ValueError(f"speed: expected a positive number or None, got {speed!r}")
        decoder = FrameDecoder(2**31)
        origin: tuple[float, int] | None = None
        for record in RecordingReader(path):
            if record.kind != FRAME:
                continue
            try:
                message = decoder.decode(record.payload, record.binary)
            except DecodeError:
                continue
            points = message.get("points") if isinstance(message, dict) else None
            if not isinstance(points, list):
                continue
            if speed is not None:
                if origin is None:
                    origin = (time.monotonic(), record.time_ns)
                wait = origin[0] + (record.time_ns - origin[1]) / 1e9 / speed - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            for session in self._live_sessions(record.family, authenticated=True):
                mine = [p for p in points if any(_matches(c, p.get("series", {})) for c in session.channels.values())]
                if not mine:
                    continue
                if len(mine) == len(points) and session.brotli == record.binary:
                    self._send_frame(session, record.payload if record.binary else record.payload.decode())
                else:
                    self._send(session, {"points": mine})

    def publish_raw(self, data: bytes | str | list[bytes] | list[str], family: str | None = None) -> int:
        """Send ``data`` as is to every open connection: ``bytes`` as a binary frame, ``str`` as text,
        a list as one message fragmented into those parts."""
        return sum(1 for s in self._live_sessions(family) if self._send_frame(s, data))

    def ping(self, timeout: float = 5.0) -> int:
        """Ping every open connection; returns how many answered with a pong within ``timeout``."""
        waiters = []
        for session in self._live_sessions(None):
            with contextlib.suppress(ConnectionClosed, RuntimeError):
                waiters.append(session.conn.ping())
        deadline = time.monotonic() + timeout
        return sum(1 for w in waiters if w.wait(max(0.0, deadline - time.monotonic())))

    def send_error(self, error: Any, family: str | None = None, **extra: Any) -> int:
        """Send an error frame that answers no request (no ``id``)."""
        return sum(1 for s in self._live_sessions(family) if self._send(s, {"error": error, **extra}))

    # -- faults -------------------------------------------------------------------------------

    def drop_connections(self, family: str | None = None, numbers: Collection[int] | None = None) -> int:
        """Cut connections abruptly: a TCP reset, no close frame. ``numbers``: only those
        connections (as ``subscription_counts`` numbers them)."""
        sessions = [s for s in self._live_sessions(family) if numbers is None or s.number in numbers]
        for session in sessions:
            sock = session.conn.socket
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            session.conn.close_socket()
        return len(sessions)

    def close_connections(self, code: int = 1000, reason: str = "", family: str | None = None) -> int:
        """Close connections cleanly with a close frame of ``code``."""
        sessions = self._live_sessions(family)
        for session in sessions:
            session.conn.close(code, reason)
        return len(sessions)

    def subscription_counts(self, family: str | None = None) -> dict[int, int]:
        """Channels held per open connection, by connection number (a sharded client's shards)."""
        with self._lock:
            return {s.number: len(s.channels) for s in self._sessions.values() if family in (None, s.family)}

    def request_counts(self) -> dict[int, int]:
        """Control requests (subscribe, unsubscribe, unsubscribe_all) per connection number,
        rejected ones included, since the server was created."""
        with self._lock:
            return {number: len(times) for number, times in self._request_times.items()}

    def max_burst(self, window: float = 1.0) -> int:
        """The most control requests one connection sent within any ``window`` seconds."""
        with self._lock:
            series = [list(times) for times in self._request_times.values()]
        most = 0
        for times in series:
            start = 0
            for end, at in enumerate(times):
                while at - times[start] > window:
                    start += 1
                most = max(most, end - start + 1)
        return most

    def rejections(self) -> dict[int, int]:
        """How many control requests each limit rejected, by error code (429 rate, -32602 channels
        per request, 4290 subscriptions per connection)."""
        with self._lock:
            return dict(self._rejections)

    def set_silent(self, silent: bool = True) -> None:
        """While silent the server sends nothing: no data, no answers (pongs still go out)."""
        self._silent = silent

    def reject_symbol(self, symbol: str, code: int = -32602, message: str = "INVALID_SYMBOL") -> None:
        """Answer subscriptions to ``symbol`` with a JSON-RPC error."""
        with self._lock:
            self._rejected_symbols[symbol] = (code, message)

    # -- internals ----------------------------------------------------------------------------

    def _check_path(self, conn: ServerConnection, request: Any) -> Response | None:
        if request.path.split("?", 1)[0] not in _PATHS:
            return conn.respond(404, "unknown endpoint\n")
        return None

    def _live_sessions(self, family: str | None, authenticated: bool = False) -> list[_Session]:
        with self._lock:
            return [s for s in self._sessions.values()
                    if family in (None, s.family) and (s.authenticated or not authenticated)]

    def _send(self, session: _Session, message: dict[str, Any], compress: bool = True) -> bool:
        text = json.dumps(message, separators=(",", ":"))
        if compress and session.brotli:
            return self._send_frame(session, brotli.compress(text.encode(), quality=4))
        return self._send_frame(session, text)

    def _send_frame(self, session: _Session, data: Any) -> bool:
        if self._silent:
            return False
        try:
            session.conn.send(data)
            return True
        except (ConnectionClosed, OSError, RuntimeError):
            return False

    def _reply(self, session: _Session, req_id: Any, *, result: Any = None,
               error: dict[str, Any] | None = None) -> None:
        if self.reply_delay:
            time.sleep(self.reply_delay)
        answer: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id}
        if error is not None:
            answer["error"] = error
        else:
            answer["result"] = result
        self._send(session, answer, compress=self.compress_replies)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _handle(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        family = _PATHS[conn.request.path.split("?", 1)[0]]
        with self._lock:
            self._connections += 1
            bucket = None if self.max_requests_per_second is None else TokenBucket(self.max_requests_per_second)
            session = _Session(self._connections, family, conn, bucket)
            self._sessions[session.number] = session
        self._notify()
        try:
            for frame in conn:
                try:
                    message = json.loads(frame)
                except ValueError:
                    message = {"unparsed": frame if isinstance(frame, str) else repr(frame)}
                with self._lock:
                    self._received.append(Received(family, session.number, message))
                self._notify()
                if isinstance(message, dict) and not self._silent and not self._answer(session, message):
                    break
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._sessions.pop(session.number, None)
            self._notify()

    def _answer(self, session: _Session, message: dict[str, Any]) -> bool:
        """Act on one request; False when the connection must end."""
        method, req_id = message.get("method"), message.get("id")
        params = message.get("params") or {}
        if method == "public/authenticate":
            good = self.api_key is None or params.get("token") == self.api_key
            if good and self.auth_reply != REJECT:
                session.authenticated = True
                if self.auth_reply == ANSWER and req_id is not None:
                    self._reply(session, req_id, result={"authenticated": True})
                return True
            if self.auth_reply == SILENT or req_id is None:
                session.conn.close(1008, "invalid api key")
            else:
                self._reply(session, req_id, error={"code": 401, "message": "INVALID_API_KEY"})
                session.conn.close(4001, "invalid api key")
            return False
        if method in ("public/subscribe", "public/unsubscribe", "public/unsubscribe_all"):
            self._change_subscriptions(session, method, req_id, params)
            return True
        if req_id is not None:
            self._reply(session, req_id, error={"code": -32601, "message": f"unknown method {method!r}"})
        return True

    def _change_subscriptions(self, session: _Session, method: str, req_id: Any, params: dict[str, Any]) -> None:
        if not session.authenticated:
            self._reply(session, req_id, error={"code": 401, "message": "not authenticated"})
            return
        channels = [c for c in params.get("channels") or [] if isinstance(c, dict)]
        over = self._over_limit(session, method, channels)
        if over is not None:
            with self._lock:
                self._rejections[over["code"]] = self._rejections.get(over["code"], 0) + 1
            if self.subscribe_reply != SILENT:
                self._reply(session, req_id, error=over)
            return
        if method == "public/subscribe":
            session.brotli = params.get("compression") == "brotli"
            rejected = self._rejection(channels)
            if self.subscribe_reply == REJECT or rejected:
                code, text = rejected or (-32000, "subscription rejected")
                if self.subscribe_reply != SILENT:
                    self._reply(session, req_id, error={"code": code, "message": text})
                return
            with self._lock:
                for channel in channels:
                    session.channels.setdefault(_channel_key(channel), channel)
        else:
            with self._lock:
                if method.endswith("_all"):
                    session.channels.clear()
                for channel in channels:
                    session.channels.pop(_channel_key(channel), None)
        self._notify()
        if self.subscribe_reply == ANSWER:
            self._reply(session, req_id, result={"channels": channels})

    def _over_limit(self, session: _Session, method: str, channels: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The error for a control request over a limit (nothing of it applied), or None."""
        now = time.monotonic()
        with self._lock:
            self._request_times.setdefault(session.number, []).append(now)
        if session.bucket is not None:
            wait = session.bucket.take(now)
            if wait > 0:
                return {"code": RATE_LIMITED_ERROR, "message": "TOO_MANY_REQUESTS",
                        "data": {"retry_after": round(wait, 3)}}
        most = self.max_channels_per_request
        if most is not None and len(channels) > most:
            return {"code": TOO_MANY_CHANNELS_ERROR, "message": f"TOO_MANY_CHANNELS: at most {most} channels per request",
                    "data": {"max_channels_per_request": most}}
        limit = self.max_subscriptions_per_connection
        if limit is not None and method == "public/subscribe":
            with self._lock:
                new = {_channel_key(c) for c in channels} - session.channels.keys()
                held = len(session.channels)
            if held + len(new) > limit:
                return {"code": SUBSCRIPTION_LIMIT_ERROR,
                        "message": f"SUBSCRIPTION_LIMIT: at most {limit} subscriptions per connection",
                        "data": {"limit": limit}}
        return None

    def _rejection(self, channels: list[dict[str, Any]]) -> tuple[int, str] | None:
        with self._lock:
            for channel in channels:
                if channel.get("symbol") in self._rejected_symbols:
                    return self._rejected_symbols[channel["symbol"]]
        return None


# -- point builders (for tests and the demo) -------------------------------------------------
#
# Each builder returns one point exactly as the service sends it inside a ``{"points": [...]}``
# frame (see the protocol notes, section 5): a ``series`` object and one payload object whose key
# depends on the type. Pass the points to ``FakeKiyotakaServer.publish()``. Extra keyword
# arguments go into ``series`` as they are (wire names: ``normalizedSymbol="BTC-USDT"``,
# ``inverse=False``, ``category="SPOT"``; ``category=None`` leaves it out).

_QUOTES = ("USDT", "USDC", "BUSD", "USD", "EUR", "KRW", "BTC", "ETH")


def _coin_of(symbol: str | None) -> str:
    """A best guess at the base coin of a raw symbol: ``BTCUSDT``, ``BTC-USDT-SWAP``, ``XBTUSD``."""
    if not symbol:
        return ""
    for sep in ("-", "_", ":"):
        if sep in symbol:
            return symbol.split(sep, 1)[0]
    for quote in _QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)]
    return symbol


def series(channel: str, exchange: str, symbol: str | None, *, coin: str | None = None,
           category: str | None = "PERPETUAL", **extra: Any) -> dict[str, Any]:
    """A ``series`` object as the server sends it.

    ``symbol=None`` leaves ``symbol`` out (as in coin-grouped streams, keyed by ``coin``). ``coin``
    defaults to the base coin guessed from ``symbol``; ``category=None`` leaves it out. ``extra``
    holds further wire fields (``side``, ``blockSize``, ``normalizedSymbol``, ``inverse``, ...).
    """
    out: dict[str, Any] = {"type": channel, "exchange": exchange}
    if symbol is not None:
        out["symbol"] = symbol
    out["coin"] = coin or _coin_of(symbol)
    if category is not None:
        out["category"] = category
    out.update(extra)
    return out


def _timestamp(time_ns: int | None) -> dict[str, int]:
    """``{"seconds", "nanoseconds"}``; like protobuf-JSON, a zero ``nanoseconds`` is left out."""
    ns = time.time_ns() if time_ns is None else time_ns
    seconds, nanos = divmod(ns, 1_000_000_000)
    return {"seconds": seconds, "nanoseconds": nanos} if nanos else {"seconds": seconds}


def trade_point(exchange: str, symbol: str, *, price: float, amount: float, side: str = "BUY",
                id: str | int = "1", time_ns: int | None = None, **series_extra: Any) -> dict[str, Any]:
    """A TRADE point: ``trade.{id, price, amount, timestamp}``, the aggressor ``side`` in ``series``.

    ``time_ns`` (nanoseconds since the epoch) defaults to now.
    """
    return {"series": series("TRADE", exchange, symbol, side=side, **series_extra),
            "trade": {"id": str(id), "price": price, "amount": amount, "timestamp": _timestamp(time_ns)}}


def trade_agg_point(exchange: str, symbol: str, *, open: float, high: float, low: float, close: float,
                    volume: float, side: str = "BUY", time_ns: int | None = None,
                    first_time_ns: int | None = None, last_time_ns: int | None = None,
                    **series_extra: Any) -> dict[str, Any]:
    """A TRADE_AGG point: one side's OHLCV batch in ``tradeAggregation``.

    ``first_time_ns`` / ``last_time_ns`` (the batch's first and last trade) default to ``time_ns``,
    which defaults to now.
    """
    ns = time.time_ns() if time_ns is None else time_ns
    return {"series": series("TRADE_AGG", exchange, symbol, side=side, **series_extra),
            "tradeAggregation": {"open": open, "high": high, "low": low, "close": close, "volume": volume,
                                 "timestamp": _timestamp(ns),
                                 "firstTimestamp": _timestamp(ns if first_time_ns is None else first_time_ns),
                                 "lastTimestamp": _timestamp(ns if last_time_ns is None else last_time_ns)}}


def book_point(exchange: str, symbol: str | None, *, bids: Sequence[tuple[float, float]],
               asks: Sequence[tuple[float, float]], block_size: float = 25, time_ns: int | None = None,
               **series_extra: Any) -> dict[str, Any]:
    """A BLOCK_BOOK_SNAPSHOT point (``bids``/``asks`` as (price, size) pairs, nearest to mid first).

    On the wire each side is a flat ``[price, size, price, size, ...]`` list and ``block_size``
    goes into ``series.blockSize``. For a coin-grouped stream pass ``symbol=None, coin="BTC"``.
    """
    return {"series": series("BLOCK_BOOK_SNAPSHOT", exchange, symbol, blockSize=block_size, **series_extra),
            "blockBookSnapshot": {"bids": [v for level in bids for v in level],
                                  "asks": [v for level in asks for v in level],
                                  "timestamp": _timestamp(time_ns)}}


def liquidation_point(exchange: str, symbol: str, *, price: float, amount: float, side: str = "SELL",
                      id: str | int = "1", time_ns: int | None = None, **series_extra: Any) -> dict[str, Any]:
    """A LIQUIDATION point: ``liquidation.{id, price, amount, timestamp}``, ``side`` in ``series``."""
    return {"series": series("LIQUIDATION", exchange, symbol, side=side, **series_extra),
            "liquidation": {"id": str(id), "price": price, "amount": amount, "timestamp": _timestamp(time_ns)}}


def funding_rate_point(exchange: str, symbol: str, *, rate: float | None, predicted_rate: float | None = None,
                       time_ns: int | None = None, **series_extra: Any) -> dict[str, Any]:
    """A FUNDING_RATE point: ``fundingRate.{fundingRate, predictedFundingRate, timestamp}``.

    A rate given as None is left out, as the service does before the exchange publishes it.
    """
    payload: dict[str, Any] = {}
    if rate is not None:
        payload["fundingRate"] = rate
    if predicted_rate is not None:
        payload["predictedFundingRate"] = predicted_rate
    payload["timestamp"] = _timestamp(time_ns)
    return {"series": series("FUNDING_RATE", exchange, symbol, **series_extra), "fundingRate": payload}


def open_interest_point(exchange: str, symbol: str, *, open_interest: float, time_ns: int | None = None,
                        **series_extra: Any) -> dict[str, Any]:
    """An OPEN_INTEREST point: ``openInterest.{openInterest, timestamp}``."""
    return {"series": series("OPEN_INTEREST", exchange, symbol, **series_extra),
            "openInterest": {"openInterest": open_interest, "timestamp": _timestamp(time_ns)}}


def volume_profile_point(exchange: str, symbol: str | None, *, levels: Sequence[tuple[float, float, float]],
                         block_size: float = 25, time_ns: int | None = None,
                         **series_extra: Any) -> dict[str, Any]:
    """A VOLUME_PROFILE_AGG point: ``levels`` as (price, buy_volume, sell_volume) triplets.

    On the wire the profile is a flat ``[price, buy, sell, price, buy, sell, ...]`` list and the
    bucket size the server chose is ``series.blockSize``.
    """
    return {"series": series("VOLUME_PROFILE_AGG", exchange, symbol, blockSize=block_size, **series_extra),
            "volumeProfileAggregation": {"profile": [v for level in levels for v in level],
                                         "timestamp": _timestamp(time_ns)}}
