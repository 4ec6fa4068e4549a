"""``KiyotakaClient``: the public facade. Owns the subscription registry and one pipeline per family.

The client's lock guards only its registry (specs, handlers, families); it is never held while
user code runs or while waiting on I/O. Each family's protocol state belongs to its session
(session.py); the client talks to it by message.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Mapping
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Literal,
    Protocol,
    TypeVar,
    overload,
)
from urllib.parse import urlsplit

from ._arguments import (
    CLIENT,
    EVENTS,
    EVENTS_REFUSED,
    FROM_NATS,
    REGIONS,
    REPLAY,
    STOP,
    Options,
)
from ._transport import BadArgument, ssl_context
from .channels import (
    BOOK,
    FAMILIES,
    NONBOOK,
    Channel,
    ChannelSpec,
    make_spec,
)
from .dispatch import (
    CONFLATABLE,
    Conflated,
    Dispatcher,
    EventQueue,
    Hooks,
    Registration,
    RouteTable,
    data_key,
)
from .errors import ClientStoppedError, ConfigurationError, KiyotakaError
from .events import (
    BookSnapshot,
    Event,
    FundingRate,
    Liquidation,
    OpenInterest,
    Trade,
    TradeAggregation,
    VolumeProfile,
)
from .protocol import FrameDecoder
from .recording import Recorder, RecordingError
from .session import Secret, Session
from .session_core import Overflow
from .shards import Shards
from .source import Sink, Source, WireSub
from .status import ConnectionStats, ConnectionStatus, RecorderStats, State
from .streams import EventStream, StreamFeed

if TYPE_CHECKING:
    from .replay import Player

log = logging.getLogger(__name__)  # a child of "kiyotaka_ws": configuring that one still applies

_PATHS = {BOOK: "/ws", NONBOOK: "/nonbook/ws"}
_RUN_FOREVER_STOP_TIMEOUT = 1.5  # Ctrl-C in run_forever() returns within 2 s in every state
UNSUBSCRIBE_WAIT = 5.0  # seconds unsubscribe() from another thread waits for a running call of its handler

F = TypeVar("F", bound=Callable[..., Any])
E = TypeVar("E")
# Handler types for the decorator forms: each keeps the decorated function's own type.
_TradeH = TypeVar("_TradeH", bound=Callable[[Trade], Any])
_TradeAggH = TypeVar("_TradeAggH", bound=Callable[[TradeAggregation], Any])
_BookH = TypeVar("_BookH", bound=Callable[[BookSnapshot], Any])
_LiquidationH = TypeVar("_LiquidationH", bound=Callable[[Liquidation], Any])
_FundingH = TypeVar("_FundingH", bound=Callable[[FundingRate], Any])
_OpenInterestH = TypeVar("_OpenInterestH", bound=Callable[[OpenInterest], Any])
_VolumeProfileH = TypeVar("_VolumeProfileH", bound=Callable[[VolumeProfile], Any])
_EventH = TypeVar("_EventH", bound=Callable[[Any], Any])
_ErrorH = TypeVar("_ErrorH", bound=Callable[[KiyotakaError], Any])
_StatusH = TypeVar("_StatusH", bound=Callable[[ConnectionStatus], Any])


class Subscription:
    """A handler registered for one channel spec. Returned by every ``on_*`` method."""

    def __init__(self, spec: ChannelSpec, handler: Callable[[Any], Any], wire: WireSub, conflate: bool,
                 unregister: Callable[[Subscription], None]) -> None:
        self._unregister = unregister  # the client's: forgets this handler
        self._spec = spec
        self._wire = wire
        self.handler = handler
        self.conflate = conflate  # only the newest snapshot of a series when the handler lags
        self.active = True

    @property
    def channel(self) -> Channel:
        """The subscribed channel."""
        return self._spec.channel

    @property
    def params(self) -> dict[str, str]:
        """The channel object sent on the wire."""
        return self._spec.wire()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the server acknowledged the subscription on the current connection.

        Returns or raises in every end state: returns once answered (or assumed: a server that
        never answers subscriptions counts as accepting them after ``subscribe_timeout``, as for
        ``wait_ready``) and once this subscription is unsubscribed (at once, even while waiting,
        from any thread); raises ``SubscriptionError`` if the server rejected it, the family's
        fatal error once it FAILED (that error wins over "stopped", even after ``stop()``),
        ``ClientStoppedError`` once the client is stopped, and ``TimeoutError`` on timeout (where
        ``wait_ready()`` returns False instead). The answer never waits behind a handler:
        ``wait()`` inside a handler works.
        """
        self._wire.wait(timeout, self._gone)

    def _gone(self) -> bool:
        return not self.active

    def unsubscribe(self) -> None:
        """Stop calling the handler; the last handler of a spec sends ``public/unsubscribe``. Idempotent.

        When it returns, the handler is not called again, not even for the other handlers' turn on
        the point being delivered. Called from another thread while the handler is running, it
        waits for that call to return (at most ``UNSUBSCRIBE_WAIT`` seconds, then it logs a warning
        and returns with that call still running). Called from a handler, it never waits.
        """
        self._unregister(self)

    def __repr__(self) -> str:
        state = self._wire.state if self.active else "unsubscribed"
        return f"<Subscription {self._spec} {state}>"


class _Sources(Protocol):
    """Makes each family's source: live sessions (``_LiveSources``), a recording (``replay.Player``)
    or a NATS relay's subjects (``nats.NatsSources``)."""

    def prepare(self) -> None: ...
    def check_record(self, path: str) -> None: ...
    def queue_policy(self, overflow: str) -> str: ...
    def make(self, family: str, queue: EventQueue) -> Source: ...
    def all_started(self) -> None: ...


class _LiveSources:
    """The Kiyotaka service: one ``Session`` per family."""

    def __init__(self, urls: dict[str, str], resolve_key: Callable[[], Secret], options: Options,
                 ids: itertools.count[int], on_fatal: Callable[[KiyotakaError], None],
                 rng: Callable[[], float]) -> None:
        self._urls = urls
        self._resolve_key = resolve_key
        self._options = options
        self._ids = ids
        self._on_fatal = on_fatal
        self._rng = rng

    def prepare(self) -> None:
        self._resolve_key()  # no key: ConfigurationError from start()

    def check_record(self, path: str) -> None:
        """Any path will do: nothing is read from a file."""

    def queue_policy(self, overflow: str) -> str:
        return overflow

    def all_started(self) -> None:
        """Each session runs by itself."""

    def make(self, family: str, queue: EventQueue) -> Shards:
        url, key, options = self._urls[family], self._resolve_key(), self._options

        def make_session(shard: int, on_overflow: Callable[[Session, Overflow], None],
                         on_released: Callable[[Session, tuple[WireSub, ...]], None],
                         on_state: Callable[[], None]) -> Session:
            return Session(family, url, key, options, queue, self._ids, self._on_fatal, self._rng,
                           shard=shard, on_overflow=on_overflow, on_released=on_released, on_state=on_state)

        return Shards(family, queue, make_session, options.max_subscriptions_per_connection)


class _Family:
    """One endpoint family's pipeline: source (session -> reader, or a recording) -> queue -> dispatcher."""

    def __init__(self, name: str, queue: EventQueue, source: Source, hooks: Hooks, max_frame_bytes: int) -> None:
        self.queue = queue
        self.session = source
        self.dispatcher = Dispatcher(name, self.queue, hooks, FrameDecoder(max_frame_bytes),
                                     on_answer=self.session.answer, on_died=self.session.fail)

    def start(self) -> None:
        self.dispatcher.start()
        self.session.start()

    def stats(self) -> ConnectionStats:
        session, disp = self.session, self.dispatcher
        return ConnectionStats(
            state=session.state, frames=session.frames, bytes=session.bytes, events=disp.events,
            decode_errors=disp.decode_errors, handler_errors=disp.handler_errors,
            dropped=self.queue.dropped_total, reconnects=session.reconnects, queue_depth=self.queue.depth,
            last_frame_age=session.last_frame_age, skipped=disp.skipped,
            feed_latency=disp.feed_latency.percentiles(), queue_delay=disp.queue_delay.percentiles(),
            handler_time=disp.handler_time.percentiles(), conflated=disp.conflated,
            requests_sent=session.requests_sent, shards=session.shards)


_running: weakref.WeakSet[KiyotakaClient] = weakref.WeakSet()


@atexit.register
def _stop_running_clients() -> None:
    """At interpreter exit, stop every client still running, so a script that ends without
    ``stop()`` leaves cleanly (its threads are daemons: nothing keeps the process alive)."""
    for client in list(_running):  # stop() takes a client out of the set as it begins
        client.stop(timeout=2.0)


class KiyotakaClient:
    """Streams Kiyotaka market data to your handlers from background threads.

    Register handlers with the ``on_*`` methods, then ``start()`` (or ``run_forever()``, or use the
    client as a context manager). Each endpoint family (``book`` for order books, ``nonbook`` for
    everything else) gets one connection with a session thread (protocol, timers), a reader thread
    and a dispatcher thread that calls your handlers one at a time, in the order the server sent
    the points. Connections reconnect with backoff and restore every subscription by themselves.
    See the README for every argument.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        region: str = "singapore",
        book_url: str | None = None,
        nonbook_url: str | None = None,
        compression: str | None = "brotli",
        reconnect: bool = True,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        ping_interval: float | None = 10.0,
        ping_timeout: float | None = 10.0,
        stale_timeout: float | None = None,
        auth_timeout: float = 5.0,
        subscribe_timeout: float = 10.0,
        queue_size: int = 10_000,
        overflow: str = "block",
        max_frame_bytes: int = 16 * 2**20,
        sslopt: dict[str, Any] | None = None,
        proxy: str | None = None,
        max_retries: int | None = None,
        max_channels_per_request: int = 50,
        max_requests_per_second: float = 10.0,
        max_subscriptions_per_connection: int | None = None,
        max_queue_bytes: int = 64 * 2**20,
        connect_timeout: float = 10.0,
        send_timeout: float = 10.0,
        rng: Callable[[], float] | None = None,
        record: str | os.PathLike[str] | None = None,
        record_rotate_bytes: int | None = None,
        record_rotate_seconds: float | None = None,
    ) -> None:
        args = CLIENT.check(locals())  # ConfigurationError naming the first bad argument
        urls = {BOOK: _endpoint(book_url, region, BOOK), NONBOOK: _endpoint(nonbook_url, region, NONBOOK)}
        recorder = _recorder(record, record_rotate_bytes, record_rotate_seconds)

        self._api_key = Secret(api_key) if api_key is not None else None
        self._region = region
        self._urls = urls
        self._queue_size = queue_size
        self._max_queue_bytes = max_queue_bytes
        self._overflow = overflow
        self._rng = rng or random.random
        self._options = Options(
            compression=compression, reconnect=reconnect, backoff_initial=float(backoff_initial),
            backoff_max=float(backoff_max), ping_interval=ping_interval, ping_timeout=ping_timeout,
            stale_timeout=stale_timeout, auth_timeout=float(auth_timeout),
            subscribe_timeout=float(subscribe_timeout), connect_timeout=float(connect_timeout),
            send_timeout=float(send_timeout), max_frame_bytes=max_frame_bytes, max_retries=max_retries,
            max_channels_per_request=max_channels_per_request,
            max_requests_per_second=float(max_requests_per_second),
            max_subscriptions_per_connection=max_subscriptions_per_connection,
            sslopt=_tls(sslopt, urls), proxy=args["proxy"])
        self._hooks = Hooks()
        self._ids = itertools.count(1)  # request ids: never reused in this client's lifetime
        self._lock = threading.Lock()   # guards the registry below; never held around user code or I/O
        # Per spec, what the routing table holds for each of its subscriptions (a flag each, cleared
        # by unsubscribe() and stop()), and the server's view of the spec.
        self._registry: dict[ChannelSpec, list[Registration]] = {}
        self._wires: dict[ChannelSpec, WireSub] = {}
        self._data_keys: dict[tuple[Any, ...], ChannelSpec] = {}
        self._routes: dict[str, RouteTable] = {name: RouteTable() for name in FAMILIES}
        self._families: dict[str, _Family] = {}
        self._started = False
        self._stopping = False
        self._done = threading.Event()     # set by stop() or a fatal error: ends run_forever
        self._stopped = threading.Event()  # set when stop() has finished
        self._fatal: KiyotakaError | None = None
        self._final_stats: dict[str, ConnectionStats] | None = None
        self._sources: _Sources = _LiveSources(urls, self._resolve_key, self._options, self._ids, self._on_fatal,
                                               self._rng)
        self._recorder = recorder
        if recorder is not None:
            recorder.on_error = self.report_error
        self._streams: weakref.WeakSet[StreamFeed[Any]] = weakref.WeakSet()
        self._stop_hooks: list[Callable[[float], bool]] = []  # stop() calls them with its deadline
        self._sink: Sink | None = None  # set by a NATS relay

    # -- registering handlers -------------------------------------------------------------------
    #
    # Each method has two typed forms: with a handler it returns a Subscription; without one it
    # returns a decorator that registers the function and gives it back with its own type.

    @overload
    def on_trade(self, handler: None = None, *, exchange: str, symbol: str,
                 category: str = "*") -> Callable[[_TradeH], _TradeH]: ...
    @overload
    def on_trade(self, handler: Callable[[Trade], Any], *, exchange: str, symbol: str,
                 category: str = "*") -> Subscription: ...

    def on_trade(self, handler: Callable[[Trade], Any] | None = None, *, exchange: str, symbol: str,
                 category: str = "*") -> Any:
        """Every trade (``Trade``) of ``symbol`` on ``exchange`` (``"*"``: every exchange)."""
        return self._register(Channel.TRADE, handler, exchange, symbol, category)

    @overload
    def on_trade_agg(self, handler: None = None, *, exchange: str, symbol: str, category: str = "*",
                     batch_interval: str | None = None) -> Callable[[_TradeAggH], _TradeAggH]: ...
    @overload
    def on_trade_agg(self, handler: Callable[[TradeAggregation], Any], *, exchange: str, symbol: str,
                     category: str = "*", batch_interval: str | None = None) -> Subscription: ...

    def on_trade_agg(self, handler: Callable[[TradeAggregation], Any] | None = None, *, exchange: str,
                     symbol: str, category: str = "*", batch_interval: str | None = None) -> Any:
        """Per-side OHLCV batches of trades (``TradeAggregation``); ``batch_interval`` e.g. ``"1s"``."""
        return self._register(Channel.TRADE_AGG, handler, exchange, symbol, category,
                              {"batch_interval": batch_interval})

    @overload
    def on_book(self, handler: None = None, *, exchange: str, symbol: str, block_size: str | float,
                category: str = "*", max_depth: str | int | None = None, update_frequency: str | None = None,
                quote: str | None = None, group_by_coin: bool = False, conflate: bool = False) -> Callable[[_BookH], _BookH]: ...
    @overload
    def on_book(self, handler: Callable[[BookSnapshot], Any], *, exchange: str, symbol: str,
                block_size: str | float, category: str = "*", max_depth: str | int | None = None,
                update_frequency: str | None = None, quote: str | None = None,
                group_by_coin: bool = False, conflate: bool = False) -> Subscription: ...

    def on_book(self, handler: Callable[[BookSnapshot], Any] | None = None, *, exchange: str, symbol: str,
                block_size: str | float, category: str = "*", max_depth: str | int | None = None,
                update_frequency: str | None = None, quote: str | None = None,
                group_by_coin: bool = False, conflate: bool = False) -> Any:
        """Full order-book snapshots bucketed by ``block_size`` (``BookSnapshot``).

        With ``group_by_coin=True``, ``symbol`` is a coin (``"BTC"``) and the depth of all its
        markets is merged. With ``conflate=True``, a handler that falls behind gets only the newest
        snapshot of each series: of the snapshots taken together from the queue (up to 64 frames at
        a time), older ones of the same series are skipped and counted in ``stats()[...].conflated``
        (the same holds for ``on_volume_profile``, ``on_funding_rate``, ``on_open_interest`` and
        ``subscribe``).
        """
        return self._register(Channel.BLOCK_BOOK_SNAPSHOT, handler, exchange, symbol, category,
                              {"block_size": block_size, "max_depth": max_depth,
                               "update_frequency": update_frequency, "quote": quote,
                               "group_by_coin": group_by_coin}, conflate)

    @overload
    def on_liquidation(self, handler: None = None, *, exchange: str, symbol: str,
                       category: str = "*") -> Callable[[_LiquidationH], _LiquidationH]: ...
    @overload
    def on_liquidation(self, handler: Callable[[Liquidation], Any], *, exchange: str, symbol: str,
                       category: str = "*") -> Subscription: ...

    def on_liquidation(self, handler: Callable[[Liquidation], Any] | None = None, *, exchange: str,
                       symbol: str, category: str = "*") -> Any:
        """Every liquidation (``Liquidation``)."""
        return self._register(Channel.LIQUIDATION, handler, exchange, symbol, category)

    @overload
    def on_funding_rate(self, handler: None = None, *, exchange: str, symbol: str,
                        category: str = "*", conflate: bool = False) -> Callable[[_FundingH], _FundingH]: ...
    @overload
    def on_funding_rate(self, handler: Callable[[FundingRate], Any], *, exchange: str, symbol: str,
                        category: str = "*", conflate: bool = False) -> Subscription: ...

    def on_funding_rate(self, handler: Callable[[FundingRate], Any] | None = None, *, exchange: str,
                        symbol: str, category: str = "*", conflate: bool = False) -> Any:
        """Funding-rate snapshots (``FundingRate``; either rate may be None); ``conflate`` as for ``on_book``."""
        return self._register(Channel.FUNDING_RATE, handler, exchange, symbol, category, None, conflate)

    @overload
    def on_open_interest(self, handler: None = None, *, exchange: str, symbol: str,
                         category: str = "*", conflate: bool = False) -> Callable[[_OpenInterestH], _OpenInterestH]: ...
    @overload
    def on_open_interest(self, handler: Callable[[OpenInterest], Any], *, exchange: str, symbol: str,
                         category: str = "*", conflate: bool = False) -> Subscription: ...

    def on_open_interest(self, handler: Callable[[OpenInterest], Any] | None = None, *, exchange: str,
                         symbol: str, category: str = "*", conflate: bool = False) -> Any:
        """Open-interest snapshots (``OpenInterest``); ``conflate`` as for ``on_book``."""
        return self._register(Channel.OPEN_INTEREST, handler, exchange, symbol, category, None, conflate)

    @overload
    def on_volume_profile(self, handler: None = None, *, exchange: str, symbol: str, category: str = "*",
                          quote: str | None = None, update_frequency: str | None = None,
                          group_by_coin: bool = False, conflate: bool = False) -> Callable[[_VolumeProfileH], _VolumeProfileH]: ...
    @overload
    def on_volume_profile(self, handler: Callable[[VolumeProfile], Any], *, exchange: str, symbol: str,
                          category: str = "*", quote: str | None = None, update_frequency: str | None = None,
                          group_by_coin: bool = False, conflate: bool = False) -> Subscription: ...

    def on_volume_profile(self, handler: Callable[[VolumeProfile], Any] | None = None, *, exchange: str,
                          symbol: str, category: str = "*", quote: str | None = None,
                          update_frequency: str | None = None, group_by_coin: bool = False, conflate: bool = False) -> Any:
        """Live volume profiles (``VolumeProfile``); the server picks the bucket size; ``conflate`` as
        for ``on_book``."""
        return self._register(Channel.VOLUME_PROFILE_AGG, handler, exchange, symbol, category,
                              {"quote": quote, "update_frequency": update_frequency,
                               "group_by_coin": group_by_coin}, conflate)

    @overload
    def subscribe(self, channel: str | Channel, handler: None = None, *, exchange: str, symbol: str,
                  category: str = "*", params: Mapping[str, Any] | None = None, conflate: bool = False,
                  extra_params: Mapping[str, Any] | None = None) -> Callable[[_EventH], _EventH]: ...
    @overload
    def subscribe(self, channel: str | Channel, handler: Callable[[Any], Any], *, exchange: str, symbol: str,
                  category: str = "*", params: Mapping[str, Any] | None = None, conflate: bool = False,
                  extra_params: Mapping[str, Any] | None = None) -> Subscription: ...

    def subscribe(self, channel: str | Channel, handler: Callable[[Any], Any] | None = None, *,
                  exchange: str, symbol: str, category: str = "*",
                  params: Mapping[str, Any] | None = None, conflate: bool = False,
                  extra_params: Mapping[str, Any] | None = None) -> Any:
        """Any channel by name, with ``params``: the channel's parameters (``{"batchInterval": "1s"}``).

        ``params`` take wire names (``batchInterval``) or keyword names (``batch_interval``), each
        checked for this channel: a name the channel does not take is a ``ConfigurationError``.
        ``extra_params`` are wire fields this version does not know yet, sent as given (as strings).
        The handler gets the channel's event class (``Trade``, ``BookSnapshot``, ...); it is typed
        ``Any`` here because the channel is only known at run time. ``conflate=True`` (snapshot
        channels only: ``ConfigurationError`` for trades, aggregated trades and liquidations) as for
        ``on_book``.
        """
        spec = make_spec(channel, exchange=exchange, symbol=symbol, category=category, params=params,
                         extra_params=extra_params)
        return self._register_spec(spec, handler, conflate)

    def on_error(self, handler: _ErrorH) -> _ErrorH:
        """Call ``handler(error: KiyotakaError)`` for every error reported while streaming.

        Errors delivered to a handler are logged at DEBUG only. Without any error handler, errors
        are logged to the ``kiyotaka_ws`` logger tree (``kiyotaka_ws.client``) (identical ones rate-limited).
        Returns the handler unchanged, so it works as a decorator.
        """
        _check_handler(handler)
        with self._lock:
            self._hooks.error = self._hooks.error + (handler,)
        return handler

    def on_status(self, handler: _StatusH) -> _StatusH:
        """Call ``handler(status: ConnectionStatus)`` on every connection state change.

        Returns the handler unchanged, so it works as a decorator.
        """
        _check_handler(handler)
        with self._lock:
            self._hooks.status = self._hooks.status + (handler,)
        return handler

    # -- pulling events -------------------------------------------------------------------------

    @overload
    def events(self, channel: Literal[Channel.TRADE, "TRADE"], *, exchange: str, symbol: str, category: str = "*",
               maxsize: int = 10_000, extra_params: Mapping[str, Any] | None = None, **params: Any) -> EventStream[Trade]: ...
    @overload
    def events(self, channel: Literal[Channel.TRADE_AGG, "TRADE_AGG"], *, exchange: str, symbol: str, category: str = "*",
               maxsize: int = 10_000, extra_params: Mapping[str, Any] | None = None, **params: Any) -> EventStream[TradeAggregation]: ...
    @overload
    def events(self, channel: Literal[Channel.BLOCK_BOOK_SNAPSHOT, "BLOCK_BOOK_SNAPSHOT"], *, exchange: str, symbol: str, category: str = "*",
               maxsize: int = 10_000, extra_params: Mapping[str, Any] | None = None, **params: Any) -> EventStream[BookSnapshot]: ...
    @overload
    def events(self, channel: Literal[Channel.LIQUIDATION, "LIQUIDATION"], *, exchange: str, symbol: str, category: str = "*",
               maxsize: int = 10_000, extra_params: Mapping[str, Any] | None = None, **params: Any) -> EventStream[Liquidation]: ...
    @overload
    def events(self, channel: Literal[Channel.FUNDING_RATE, "FUNDING_RATE"], *, exchange: str, symbol: str, category: str = "*",
               maxsize: int = 10_000, extra_params: Mapping[str, Any] | None = None, **params: Any) -> EventStream[FundingRate]: ...
    @overload
    def events(self, channel: Literal[Channel.OPEN_INTEREST, "OPEN_INTEREST"], *, exchange: str, symbol: str, category: str = "*",
               maxsize: int = 10_000, extra_params: Mapping[str, Any] | None = None, **params: Any) -> EventStream[OpenInterest]: ...
    @overload
    def events(self, channel: Literal[Channel.VOLUME_PROFILE_AGG, "VOLUME_PROFILE_AGG"], *, exchange: str, symbol: str, category: str = "*",
               maxsize: int = 10_000, extra_params: Mapping[str, Any] | None = None, **params: Any) -> EventStream[VolumeProfile]: ...
    @overload
    def events(self, channel: str | Channel, *, exchange: str, symbol: str, category: str = "*",
               maxsize: int = 10_000, extra_params: Mapping[str, Any] | None = None, **params: Any) -> EventStream[Event]: ...

    def events(self, channel: str | Channel, *, exchange: str, symbol: str, category: str = "*",
               maxsize: int = 10_000, extra_params: Mapping[str, Any] | None = None, **params: Any) -> EventStream[Any]:
        """Subscribe and return an ``EventStream`` to pull the events from, instead of a handler.

        ``params`` are the channel's parameters by keyword name (``block_size=25``,
        ``update_frequency="1s"``, ``group_by_coin=True``) or as wire fields (``blockSize="25"``),
        checked for this channel; ``extra_params`` as for ``subscribe``.
        At most ``maxsize`` events wait in the stream; when it is full the client's ``overflow``
        policy applies (``"block"`` holds up the whole family, like a slow handler). Leaving the
        ``with`` block (or ``close()``) unsubscribes; iteration ends when the client stops or its
        replay ends.

        ```python
        with client.events("TRADE", exchange="BINANCE_FUTURES", symbol="BTCUSDT") as trades:
            for trade in trades:
                ...
        ```
        """
        EVENTS.check({"maxsize": maxsize})
        for name in EVENTS_REFUSED:
            if name in params:
                raise ConfigurationError(f"{name}: {EVENTS_REFUSED[name]}")
        spec = make_spec(channel, exchange=exchange, symbol=symbol, category=category, options=params,
                         extra_params=extra_params)
        feed: StreamFeed[Any] = StreamFeed(maxsize, self._sources.queue_policy(self._overflow))
        stream: EventStream[Any] = EventStream(feed, self._register_spec(spec, feed.put))
        with self._lock:
            self._streams.add(feed)
            if self._done.is_set():  # stopped, failed or replayed to the end meanwhile
                feed.end(self._fatal)
        return stream

    # -- replaying a recording ------------------------------------------------------------------

    @classmethod
    def replay(cls, path: str | os.PathLike[str], *, speed: float | None = None,
               **options: Any) -> KiyotakaClient:
        """A client fed from a recording (``record=``) instead of the service.

        Register the same handlers and ``run_forever()`` / ``start()`` / ``stop()`` as usual: every
        frame of the recording goes through the same decoding and routing as live (filters
        included), in recorded order, as fast as the handlers go (``speed=None``) or paced
        (``1.0``: the recorded gaps, ``10.0``: ten times faster). Each family reports READY at the
        start and STOPPED at the end of the recording, where ``run_forever()`` returns.
        ``options`` are ``KiyotakaClient`` arguments (``queue_size``, ``overflow``, ``record``...);
        no key is needed. Raises ``ConfigurationError`` if ``path`` is not a readable recording.
        """
        from .replay import Player

        REPLAY.check({"path": path, "speed": speed}, options)
        client = cls(None, **options)  # no key: nothing asks for one
        try:
            player: Player = Player(path, speed, on_end=client._on_end, on_fatal=client._on_fatal)
        except (OSError, RecordingError) as exc:
            raise ConfigurationError(f"path: cannot replay {os.fspath(path)!r}: {exc}") from None
        client._sources = player
        return client

    # -- consuming a NATS relay ----------------------------------------------------------------

    @classmethod
    def from_nats(cls, servers: str | list[str], *, subject_prefix: str = "kiyotaka", jetstream: bool = False,
                  start_time: Any = None, **options: Any) -> KiyotakaClient:
        """A client fed from NATS subjects written by a relay (``kiyotaka-ws relay``), not the service.

        The same registration API, events, statuses, ``stats()``, ``run_forever()`` and ``stop()``:
        each registration subscribes to its series' subject (``exchange="*"``: a wildcard), and
        the points go through the same decoding, routing, filters and overflow policy as live.
        ``servers``: one ``nats://`` URL or a list (a cluster). ``jetstream=True`` reads the
        relay's stream (``start_time``: a ``datetime``, or seconds since the epoch, to start from;
        default: new points only). ``options`` are ``KiyotakaClient`` arguments; no key is needed.
        Needs the ``nats`` extra: ``pip install "kiyotaka-ws[nats]"``. See the README,
        "Fan-out through NATS".
        """
        from ._nats.consumer import NatsSettings, NatsSources, check_available

        check_available()
        args = FROM_NATS.check({"servers": servers, "subject_prefix": subject_prefix, "jetstream": jetstream,
                                "start_time": start_time}, options)
        settings = NatsSettings(args["servers"], subject_prefix, jetstream, args["start_time"])
        client = cls(None, **options)  # no key: nothing asks for one
        client._sources = NatsSources(settings, client._options, client._on_fatal)
        return client

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the threads of every family that has subscriptions; returns at once. Idempotent."""
        with self._lock:
            if self._stopping:
                raise ClientStoppedError("this client was stopped; create a new KiyotakaClient to start again")
            if self._started:
                return
            self._sources.prepare()
            if self._recorder is not None:
                self._sources.check_record(self._recorder.path)  # a replay's own input is refused
                try:
                    self._recorder.open()
                except (OSError, RecordingError) as exc:
                    raise ConfigurationError(f"record: cannot record to {self._recorder.path!r}: {exc}") from None
            self._started = True
            _running.add(self)
            for spec in self._registry:
                family = self._family(spec.family)
                family.session.add(self._wires[spec])
            for family in self._families.values():
                family.start()
        self._sources.all_started()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once every open connection is READY; False when ``timeout`` seconds pass first.

        It never raises for a timeout (unlike ``Subscription.wait()``, which raises
        ``TimeoutError``): check the result. Also False after a fatal error, after ``stop()`` and on
        a client never started. A family without subscriptions opens no connection and is not
        waited for (its state is ``State.UNUSED``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if not self._started:
                return False
            sessions = [f.session for f in self._families.values() if f.session.started]
        for session in sessions:
            while not session.ready.is_set():
                if self._done.is_set():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                # Wake up now and then to notice a fatal error or stop (0.1 s at most per check).
                session.ready.wait(0.1 if remaining is None else min(remaining, 0.1))
        return not self._done.is_set()

    def run_forever(self) -> None:
        """``start()``, then block until ``stop()`` or Ctrl-C (which stops cleanly and returns).

        If a connection failed fatally (a rejected API key, a wrong URL, ``max_retries`` reached),
        stops the client and raises the error. A second Ctrl-C while stopping abandons the wait.
        """
        self.start()
        try:
            # Wait in slices: SIGINT may be delivered to another thread, and then only a wake-up
            # lets the main thread run Python's handler (an untimed wait can miss Ctrl-C).
            while not self._done.wait(0.2):
                pass
        except KeyboardInterrupt:
            log.info("interrupted; stopping")
        self.stop(timeout=_RUN_FOREVER_STOP_TIMEOUT)
        if self._fatal is not None:
            raise self._fatal

    def stop(self, timeout: float = 5.0) -> None:
        """Close the sockets and join every thread the client started, within ``timeout``.

        Idempotent; safe from any thread, handlers included. No handler starts after it returns;
        events not yet handled are discarded. Called from a handler, the calling dispatcher thread
        ends as soon as the handler returns. ``timeout`` is a number of seconds >= 0 (``None`` is a
        ``ConfigurationError``: there is no stop without a time limit).
        """
        STOP.check({"timeout": timeout})
        deadline = time.monotonic() + timeout
        with self._lock:
            first = not self._stopping
            self._stopping = True
            families = list(self._families.values())
            wires = [(self._wires[spec], spec.family) for spec in self._registry]
            for registrations in self._registry.values():  # no handler call starts from now on (checked per call)
                for registration in registrations:
                    registration.active = False
            streams = list(self._streams)
            hooks, self._stop_hooks = self._stop_hooks, []
        if not first:
            if not threading.current_thread().name.startswith("kiyotaka-ws-"):
                self._stopped.wait(max(0.0, deadline - time.monotonic()))
            return
        self._done.set()
        _running.discard(self)
        for family in families:  # first: no new event starts, and a reader blocked on a full queue wakes
            family.dispatcher.closing = True
            family.queue.close_data()
            family.session.stop()
        for feed in streams:  # a dispatcher waiting for room in a stream wakes up
            feed.end(self._fatal)
        joined = True
        for family in families:  # every join runs, whatever the others did
            joined = family.session.join(deadline) and joined
        if self._recorder is not None:  # the readers are done: write what is buffered, close the file
            joined = self._recorder.close(max(0.0, deadline - time.monotonic())) and joined
        for family in families:  # the sessions' last statuses are queued: let the dispatchers finish
            family.queue.close()
        for family in families:
            joined = family.dispatcher.join(deadline) and joined
        for family in families:
            family.dispatcher.finished = True
        for hook in hooks:  # library helpers bound to this client (the metrics server)
            try:
                joined = hook(deadline) and joined
            except Exception:  # a helper must not keep stop() from finishing
                log.exception("stop(): a stop hook failed")
        stopped = ClientStoppedError("the client was stopped")
        fatal = {family.dispatcher.family: family.session.fatal for family in families}
        for wire, family_name in wires:  # a family's fatal error wins over "stopped"
            wire.end(fatal.get(family_name) or stopped)
        self._final_stats = self.stats()
        self._stopped.set()
        if not joined and not threading.current_thread().name.startswith("kiyotaka-ws-"):
            log.warning("stop(): some threads did not finish within %.1fs (a handler still running?)", timeout)

    def __enter__(self) -> KiyotakaClient:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> dict[str, ConnectionStats]:
        """Counters per family, keyed ``"book"`` / ``"nonbook"``; final figures after ``stop()``.

        A family that has had no subscription since ``start()`` opened no connection: its state is
        ``State.UNUSED`` (``STOPPED`` before ``start()``), never a down state an alert would read.
        """
        if self._final_stats is not None:
            return dict(self._final_stats)
        families = dict(self._families)
        idle = ConnectionStats(state=State.UNUSED if self._started else State.STOPPED)
        return {name: families[name].stats() if name in families else idle for name in FAMILIES}

    def __repr__(self) -> str:
        states = ", ".join(f"{name}={stats.state.value}" for name, stats in self.stats().items())
        key = "'***'" if self._api_key is not None else "None"
        return f"KiyotakaClient(region={self._region!r}, api_key={key}, {states})"

    # -- for what is built on a client: the extras and tools (``source.Host``) --------------------

    @property
    def done(self) -> bool:
        """True once ``stop()`` was called, a fatal error ended the client or its replay ended
        (when ``run_forever()`` returns)."""
        return self._done.is_set()

    @property
    def fatal(self) -> KiyotakaError | None:
        """The error that ended the client (what ``run_forever()`` raises), or None."""
        return self._fatal

    def recording_stats(self) -> RecorderStats | None:
        """What the recorder (``record=``) wrote and dropped so far, or None without one."""
        return None if self._recorder is None else self._recorder.stats

    def report_error(self, error: KiyotakaError, family: str | None = None) -> None:
        """Report a helper's failure (the recorder, the metrics server, a relay's NATS thread) to
        ``on_error`` once, through ``family``'s dispatcher (else any); the client carries on."""
        with self._lock:
            families = dict(self._families)
        chosen = families.get(family) if family is not None else None
        if chosen is None and families:
            chosen = next(iter(families.values()))
        if chosen is not None:
            chosen.queue.put_control(error)
        else:
            log.error("%s", error)

    def add_stop_hook(self, hook: Callable[[float], bool]) -> None:
        """Have ``stop()`` call ``hook(deadline)`` (True: its threads are joined); raises
        ``ClientStoppedError`` when the client is already stopped."""
        with self._lock:
            if self._stopping:
                raise ClientStoppedError("this client was stopped; create a new KiyotakaClient")
            self._stop_hooks.append(hook)

    def remove_stop_hook(self, hook: Callable[[float], bool]) -> None:
        """Forget a hook given to ``add_stop_hook`` (no error if it is not there)."""
        with self._lock:
            if hook in self._stop_hooks:
                self._stop_hooks.remove(hook)

    def set_sink(self, sink: Sink | None) -> None:
        """Hand every data frame's points to ``sink(family, points)`` on the dispatcher threads,
        in place of delivery (the NATS relay); None: deliver again."""
        with self._lock:
            self._sink = sink
            for family in self._families.values():
                family.dispatcher.sink = sink

    # -- internals ------------------------------------------------------------------------------

    def _resolve_key(self) -> Secret:
        if self._api_key is None:
            env = os.environ.get("KIYOTAKA_API_KEY", "").strip()
            if not env:
                raise ConfigurationError("api_key: not given and KIYOTAKA_API_KEY is not set")
            self._api_key = Secret(env)
        return self._api_key

    def _family(self, name: str) -> _Family:
        """The family's pipeline, created on first use (call with the lock held, after start)."""
        family = self._families.get(name)
        if family is None:
            queue = EventQueue(self._queue_size, self._sources.queue_policy(self._overflow), self._max_queue_bytes)
            if self._recorder is not None:
                queue.tap = self._recorder.tap(name)
            family = self._families[name] = _Family(
                name, queue, self._sources.make(name, queue), self._hooks, self._options.max_frame_bytes)
            family.dispatcher.routes = self._routes[name]
            family.dispatcher.sink = self._sink
        return family

    def _on_fatal(self, error: KiyotakaError) -> None:
        if self._fatal is None:
            self._fatal = error
        self._done.set()
        self._end_streams(error)

    def _on_end(self) -> None:
        """The source ended by itself (a replay reached the end of its recording)."""
        self._done.set()
        self._end_streams(None)

    def _end_streams(self, error: KiyotakaError | None) -> None:
        with self._lock:
            streams = list(self._streams)
        for feed in streams:
            feed.end(error)

    def _register(self, channel: Channel, handler: Callable[[Any], Any] | None, exchange: Any, symbol: Any,
                  category: Any, options: dict[str, Any] | None = None, conflate: bool = False) -> Any:
        spec = make_spec(channel, exchange=exchange, symbol=symbol, category=category, options=options)
        return self._register_spec(spec, handler, conflate)

    def _register_spec(self, spec: ChannelSpec, handler: Callable[[Any], Any] | None, conflate: bool = False) -> Any:
        if type(conflate) is not bool:
            raise ConfigurationError(f"conflate: expected True or False, got {conflate!r}")
        if conflate and spec.channel.value not in CONFLATABLE:
            raise ConfigurationError(f"conflate: {spec.channel.value} points are not snapshots and are never "
                                     "conflated (only BLOCK_BOOK_SNAPSHOT, VOLUME_PROFILE_AGG, FUNDING_RATE "
                                     "and OPEN_INTEREST are)")
        if handler is None:
            def decorator(fn: F) -> F:
                self._register_spec(spec, fn, conflate)
                return fn
            return decorator
        _check_handler(handler)
        with self._lock:
            if self._stopping:
                raise ClientStoppedError("this client was stopped; create a new KiyotakaClient")
            key = data_key(spec)
            other = self._data_keys.get(key)
            if other is not None and other != spec:
                raise ConfigurationError(_conflict(spec, other))
            registrations = self._registry.setdefault(spec, [])
            new_wire = not registrations
            wire = self._wires[spec] = WireSub(spec) if new_wire else self._wires[spec]
            registration = Conflated(handler) if conflate else Registration(handler)
            sub = Subscription(spec, handler, wire, conflate,
                               functools.partial(self._unregister, spec=spec, registration=registration))
            registrations.append(registration)
            self._data_keys[key] = spec
            self._set_routes(spec, registrations)  # routes first: the first point after the ack is delivered
            if self._started:
                family = self._family(spec.family)
                if new_wire:
                    if family.session.fatal is not None:
                        wire.end(family.session.fatal)
                    family.session.add(wire)
                if not family.session.started:
                    family.start()
        return sub

    def _unregister(self, sub: Subscription, spec: ChannelSpec, registration: Registration) -> None:
        with self._lock:
            registration.active = False  # first: the dispatcher reads it before each call
            family = self._families.get(spec.family)
            if sub.active:
                sub.active = False
                self._wires[spec].wake()  # a wait() on it returns now (the wire's lock is a leaf: never held around ours)
                registrations = self._registry[spec]
                registrations[:] = [r for r in registrations if r is not registration]
                if not registrations:
                    del self._registry[spec]
                    del self._wires[spec]
                    self._data_keys.pop(data_key(spec), None)
                    if family is not None:
                        family.session.remove(spec)
                self._set_routes(spec, registrations)
        # Outside the lock: the running handler may be waiting for it (subscribe, stats...).
        if family is not None and not family.dispatcher.wait_not_calling(registration, UNSUBSCRIBE_WAIT):
            log.warning("unsubscribe(): %s still running after %.0fs; returning while it runs",
                        getattr(sub.handler, "__qualname__", "the handler"), UNSUBSCRIBE_WAIT)

    def _set_routes(self, spec: ChannelSpec, registrations: list[Registration]) -> None:
        routes = self._routes[spec.family] = self._routes[spec.family].updated(spec, tuple(registrations))
        family = self._families.get(spec.family)
        if family is not None:
            family.dispatcher.routes = routes


def _recorder(record: Any, rotate_bytes: int | None, rotate_seconds: float | None) -> Recorder | None:
    """The recorder for ``record`` (types checked by the table), its folder and file checked now;
    the file is opened by ``start()``."""
    if record is None:
        return None
    try:
        Recorder.check(record)
    except (OSError, RecordingError) as exc:
        raise ConfigurationError(f"record: cannot record to {os.fspath(record)!r}: {exc}") from None
    return Recorder(record, rotate_bytes=rotate_bytes, rotate_seconds=rotate_seconds)


def _tls(sslopt: Mapping[str, Any] | None, urls: dict[str, str]) -> dict[str, Any] | None:
    """Check ``sslopt`` now (a bad key is a ConfigurationError here, not a failed connect later)
    and build the TLS context once for every connect."""
    if not sslopt and not any(url.startswith("wss:") for url in urls.values()):
        return None
    try:
        return {"context": ssl_context(dict(sslopt or {}))}
    except BadArgument as exc:  # the transport's "sslopt: ..." message, as a ConfigurationError
        raise ConfigurationError(str(exc)) from exc.__cause__


def _conflict(spec: ChannelSpec, other: ChannelSpec) -> str:
    differ = sorted({k for k, _ in set(spec.extras) ^ set(other.extras)})
    return (f"{', '.join(differ)}: {spec} conflicts with the registered {other}; the data does not carry "
            f"{'these parameters' if len(differ) > 1 else 'this parameter'}, so their points could not be "
            "told apart. Register both handlers with the same settings")


def _check_handler(handler: Any) -> None:
    if not callable(handler):
        raise ConfigurationError(f"handler: expected a callable, got {type(handler).__name__}")


def _endpoint(url: str | None, region: str, family: str) -> str:
    """The family's endpoint: the region's, or ``url`` (checked by the table) with ``encoding=json``."""
    if url is None:
        return f"{REGIONS[region]}{_PATHS[family]}?encoding=json"
    parts = urlsplit(url)
    query = parts.query.split("&") if parts.query else []
    if not any(q.split("=", 1)[0] == "encoding" for q in query):
        url = f"{url}{'&' if parts.query else '?'}encoding=json"
    return url
