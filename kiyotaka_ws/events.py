"""Typed events (frozen attrs classes with slots) and ``decode_point`` for every channel.

Decoding follows the protocol notes: every ``series`` field is optional, timestamps are
``{seconds, nanoseconds}`` or ``{s, ns}`` with missing parts meaning 0, a missing number means 0
(protobuf-JSON leaves zeros out) except the funding rates, which may be genuinely absent. Anything
of the wrong type raises ``DecodeError`` and nothing else.

Every event has ``channel``, ``exchange``, ``symbol``, ``coin``, ``normalized_symbol``,
``category``, ``time_ns`` (the exchange's time, or None), the properties ``timestamp`` (float
seconds) and ``datetime`` (UTC), and, out of equality, hashing and repr, ``raw`` (the point as
received) and ``received_ns`` (the local receive time: see ``kiyotaka_ws.latency``). Book and
volume-profile levels (``BookLevel``, ``VolumeLevel``: named tuples) run nearest to mid first.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any, Callable, NamedTuple

import attrs

from .channels import Channel, Side
from .errors import DecodeError

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
SIDES = {"BUY": Side.BUY, "SELL": Side.SELL}


class BookLevel(NamedTuple):
    """One price bucket of a book side."""

    price: float
    size: float


class VolumeLevel(NamedTuple):
    """One price bucket of a volume profile."""

    price: float
    buy_volume: float
    sell_volume: float


@attrs.frozen
class Event:
    """Fields every event has. ``raw`` (keyword-only) is the point dict as received;
    ``received_ns`` (keyword-only) the local wall-clock time (``time.time_ns()``) at which its frame
    was read, or the recorded receive time in a replay (None when unknown). Both are left out of
    equality, hashing and repr."""

    channel: Channel
    exchange: str | None
    symbol: str | None
    coin: str | None
    normalized_symbol: str | None
    category: str | None
    time_ns: int | None
    raw: dict[str, Any] | None = attrs.field(default=None, eq=False, repr=False, hash=False, kw_only=True)
    received_ns: int | None = attrs.field(default=None, eq=False, repr=False, hash=False, kw_only=True)

    @property
    def timestamp(self) -> float | None:
        """Seconds since the epoch, or None when the point had no timestamp."""
        return None if self.time_ns is None else self.time_ns / 1e9

    @property
    def datetime(self) -> _dt.datetime | None:
        """Timezone-aware UTC time (microsecond precision), or None."""
        if self.time_ns is None:
            return None
        return _EPOCH + _dt.timedelta(microseconds=self.time_ns // 1000)


@attrs.frozen
class Trade(Event):
    """One trade: ``side`` is the aggressor side (None when the server did not say)."""

    id: str
    price: float
    amount: float
    side: Side | None


@attrs.frozen
class TradeAggregation(Event):
    """Trades of one side batched over ``batchInterval``: OHLC prices, volume, first/last trade times."""

    open: float
    high: float
    low: float
    close: float
    volume: float
    side: Side | None
    first_time_ns: int | None
    last_time_ns: int | None


@attrs.frozen
class BookSnapshot(Event):
    """A full order-book snapshot bucketed by ``block_size``; ``bids``/``asks`` nearest to mid first."""

    bids: tuple[BookLevel, ...]
    asks: tuple[BookLevel, ...]
    block_size: float | None

    @property
    def best_bid(self) -> BookLevel | None:
        """The highest bid level, or None for an empty side."""
        return self.bids[0] if self.bids else None

    @property
    def best_ask(self) -> BookLevel | None:
        """The lowest ask level, or None for an empty side."""
        return self.asks[0] if self.asks else None

    @property
    def mid(self) -> float | None:
        """Midpoint of the best bid and ask, or None when a side is empty."""
        if not self.bids or not self.asks:
            return None
        return (self.bids[0].price + self.asks[0].price) / 2

    @property
    def spread(self) -> float | None:
        """Best ask minus best bid, or None when a side is empty."""
        if not self.bids or not self.asks:
            return None
        return self.asks[0].price - self.bids[0].price


@attrs.frozen
class Liquidation(Event):
    """One liquidation; ``side`` is passed through as the server sends it (BUY/SELL)."""

    id: str
    price: float
    amount: float
    side: Side | None


@attrs.frozen
class FundingRate(Event):
    """Current and predicted funding rate; either is None until the exchange publishes it."""

    rate: float | None
    predicted_rate: float | None


@attrs.frozen
class OpenInterest(Event):
    """Open interest as the exchange reports it (contracts or base asset, by exchange)."""

    open_interest: float


@attrs.frozen
class VolumeProfile(Event):
    """Traded volume per price bucket (the server picks ``block_size``)."""

    levels: tuple[VolumeLevel, ...]
    block_size: float | None


class _Malformed(Exception):
    """Internal: a field of the wrong shape; turned into DecodeError with an excerpt."""


def excerpt(payload: Any, limit: int = 120) -> str:
    """A short, printable start of a payload for error messages."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        text = repr(bytes(payload[:limit]))
    elif isinstance(payload, str):
        text = payload[:limit]
    else:
        try:
            text = json.dumps(payload, default=repr)[: limit + 1]
        except (TypeError, ValueError, RecursionError):
            text = repr(payload)[: limit + 1]
    return text if len(text) <= limit else text[:limit] + "..."


def _num(obj: dict[str, Any], key: str) -> float:
    value = obj.get(key)
    kind = type(value)
    if kind is float:
        return value  # type: ignore[return-value]
    if kind is int:
        return float(value)  # type: ignore[arg-type]
    if value is None:
        return 0.0
    raise _Malformed(f"{key} must be a number, got {kind.__name__}")


def _opt_num(obj: dict[str, Any], key: str) -> float | None:
    return None if obj.get(key) is None else _num(obj, key)


def _id(obj: dict[str, Any]) -> str:
    value = obj.get("id")
    if type(value) is str:
        return value
    if type(value) is int:  # an id sent as a number is still unambiguous
        return str(value)
    if value is None:
        return ""
    raise _Malformed(f"id must be a string, got {type(value).__name__}")


def _int_part(ts: dict[str, Any], long: str, short: str) -> int:
    value = ts.get(long)
    if value is None:
        value = ts.get(short)
    kind = type(value)
    if kind is int:
        return value  # type: ignore[return-value]
    if value is None:
        return 0
    if kind is str and value.isdigit():  # protobuf-JSON may quote 64-bit integers
        return int(value)
    if kind is float and value.is_integer():
        return int(value)
    raise _Malformed(f"timestamp.{long} must be an integer, got {value!r}")


def _time_ns(payload: dict[str, Any], key: str = "timestamp") -> int | None:
    ts = payload.get(key)
    if ts is None:
        return None
    if type(ts) is not dict:
        raise _Malformed(f"{key} must be an object, got {type(ts).__name__}")
    seconds, nanos = ts.get("seconds"), ts.get("nanoseconds", 0)
    if type(seconds) is int and type(nanos) is int and 0 <= nanos < 1_000_000_000:
        return seconds * 1_000_000_000 + nanos  # the documented shape: the fast path
    nanos = _int_part(ts, "nanoseconds", "ns")
    if not 0 <= nanos < 1_000_000_000:
        raise _Malformed(f"{key}.nanoseconds out of range: {nanos}")
    return _int_part(ts, "seconds", "s") * 1_000_000_000 + nanos


def _side(series: dict[str, Any]) -> Side | None:
    value = series.get("side")
    if value is None:
        return None
    if type(value) is not str:
        raise _Malformed(f"side must be a string, got {type(value).__name__}")
    return SIDES.get(value)  # UNKNOWN_SIDE and future values: None


def _flat_numbers(payload: dict[str, Any], key: str, width: int) -> list[float]:
    values = payload.get(key)
    if values is None:
        return []
    if type(values) is not list:
        raise _Malformed(f"{key} must be a list, got {type(values).__name__}")
    if len(values) % width:
        raise _Malformed(f"{key} must hold groups of {width} numbers, got {len(values)} values")
    for value in values:
        kind = type(value)
        if kind is not float and kind is not int:
            raise _Malformed(f"{key} must hold numbers, got {kind.__name__}")
    return list(map(float, values))


def _levels(payload: dict[str, Any], key: str) -> tuple[BookLevel, ...]:
    flat = _flat_numbers(payload, key, 2)
    return tuple(map(BookLevel._make, zip(flat[0::2], flat[1::2])))


# Decoders build events positionally: the common fields, then the channel's own (faster than kwargs).
# The classes are called through these names because a type checker maps positions onto attrs
# fields in declaration order, which the keyword-only ``raw``/``received_ns`` do not follow.
_new_trade: Callable[..., Trade] = Trade
_new_trade_agg: Callable[..., TradeAggregation] = TradeAggregation
_new_book: Callable[..., BookSnapshot] = BookSnapshot
_new_liquidation: Callable[..., Liquidation] = Liquidation
_new_funding: Callable[..., FundingRate] = FundingRate
_new_open_interest: Callable[..., OpenInterest] = OpenInterest
_new_volume_profile: Callable[..., VolumeProfile] = VolumeProfile


def _trade(head: tuple[Any, ...], series: dict[str, Any], p: dict[str, Any], raw: Any, rx: int | None) -> Trade:
    return _new_trade(*head, _id(p), _num(p, "price"), _num(p, "amount"), _side(series), raw=raw, received_ns=rx)


def _trade_agg(head: tuple[Any, ...], series: dict[str, Any], p: dict[str, Any], raw: Any, rx: int | None) -> TradeAggregation:
    return _new_trade_agg(*head, _num(p, "open"), _num(p, "high"), _num(p, "low"), _num(p, "close"),
                            _num(p, "volume"), _side(series), _time_ns(p, "firstTimestamp"),
                            _time_ns(p, "lastTimestamp"), raw=raw, received_ns=rx)


def _book(head: tuple[Any, ...], series: dict[str, Any], p: dict[str, Any], raw: Any, rx: int | None) -> BookSnapshot:
    return _new_book(*head, _levels(p, "bids"), _levels(p, "asks"), _opt_num(series, "blockSize"), raw=raw, received_ns=rx)


def _liquidation(head: tuple[Any, ...], series: dict[str, Any], p: dict[str, Any], raw: Any, rx: int | None) -> Liquidation:
    return _new_liquidation(*head, _id(p), _num(p, "price"), _num(p, "amount"), _side(series), raw=raw, received_ns=rx)


def _funding(head: tuple[Any, ...], series: dict[str, Any], p: dict[str, Any], raw: Any, rx: int | None) -> FundingRate:
    return _new_funding(*head, _opt_num(p, "fundingRate"), _opt_num(p, "predictedFundingRate"), raw=raw, received_ns=rx)


def _open_interest(head: tuple[Any, ...], series: dict[str, Any], p: dict[str, Any], raw: Any, rx: int | None) -> OpenInterest:
    return _new_open_interest(*head, _num(p, "openInterest"), raw=raw, received_ns=rx)


def _volume_profile(head: tuple[Any, ...], series: dict[str, Any], p: dict[str, Any], raw: Any, rx: int | None) -> VolumeProfile:
    flat = _flat_numbers(p, "profile", 3)
    levels = tuple(map(VolumeLevel._make, zip(flat[0::3], flat[1::3], flat[2::3])))
    return _new_volume_profile(*head, levels, _opt_num(series, "blockSize"), raw=raw, received_ns=rx)


_Decoder = Callable[[tuple[Any, ...], dict[str, Any], dict[str, Any], Any, "int | None"], Event]

# series.type -> (channel, payload key, decoder)
_DECODERS: dict[str, tuple[Channel, str, _Decoder]] = {
    "TRADE": (Channel.TRADE, "trade", _trade),
    "TRADE_AGG": (Channel.TRADE_AGG, "tradeAggregation", _trade_agg),
    "BLOCK_BOOK_SNAPSHOT": (Channel.BLOCK_BOOK_SNAPSHOT, "blockBookSnapshot", _book),
    "LIQUIDATION": (Channel.LIQUIDATION, "liquidation", _liquidation),
    "FUNDING_RATE": (Channel.FUNDING_RATE, "fundingRate", _funding),
    "OPEN_INTEREST": (Channel.OPEN_INTEREST, "openInterest", _open_interest),
    "VOLUME_PROFILE_AGG": (Channel.VOLUME_PROFILE_AGG, "volumeProfileAggregation", _volume_profile),
}


def decode_point(point: Any, received_ns: int | None = None) -> Event | None:
    """Decode one point of a ``points`` frame into its event (``received_ns``: its frame's receive time).

    Returns None for a point of an unknown type (the caller counts and skips it). Raises
    ``DecodeError`` with an excerpt for anything malformed, and never anything else.
    """
    try:
        series = point["series"]
        kind = series["type"]
        entry = _DECODERS.get(kind)
        if entry is None:
            if type(kind) is not str:
                raise _Malformed(f"series.type must be a string, got {type(kind).__name__}")
            return None
        channel, payload_key, decoder = entry
        payload = point[payload_key]
        if type(payload) is not dict:
            raise _Malformed(f"{payload_key} must be an object, got {type(payload).__name__}")
        get = series.get
        head = (channel, get("exchange"), get("symbol"), get("coin"), get("normalizedSymbol"), get("category"))
        for value in head[1:]:
            if value is not None and type(value) is not str:
                raise _Malformed(f"series fields must be strings, got {value!r}")
        return decoder((*head, _time_ns(payload)), series, payload, point, received_ns)
    except _Malformed as exc:
        raise DecodeError(f"malformed point ({exc})", excerpt=excerpt(point)) from None
    except KeyError as exc:
        raise DecodeError(f"malformed point (missing {exc})", excerpt=excerpt(point)) from None
    except (TypeError, AttributeError, ValueError, OverflowError) as exc:
        raise DecodeError(f"malformed point ({type(exc).__name__}: {exc})", excerpt=excerpt(point)) from None
