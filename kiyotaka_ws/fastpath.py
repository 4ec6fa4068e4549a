"""The dispatcher's fast path: route and decode points of the documented shapes, cheaply.

``decode_point`` and ``RouteTable.handlers_for`` are the general path and the reference: they
accept every variant the protocol notes allow and word every error. This module only takes points
whose every field has exactly the documented type (strings, floats or ints, ``{seconds,
nanoseconds}`` timestamps) and answers "take the general path" (None) for anything else, so the
events, errors and counters are the general path's by construction; ``tests/test_fastpath.py``
checks that with hypothesis.

Five things make it fast:

- Routing is cached per ``RouteTable`` (immutable: a new table means a new ``FastPath``), keyed on
  every series field routing and the event's head read; a cache hit also vouches for their types
  and holds the head ready-made. The last two series of each symbol are remembered, so a frame
  interleaving many symbols costs what a single-symbol frame does (see ``FastPath``).
- Validation is exact-type checks inline, no helper call per field in the common case.
- Events are built by ``builder()``: see there.
- ``FastPath.run`` does a run of up to ``RUN_POINTS`` points in one loop, trades and liquidations
  (the busiest channels) without a decoder or builder call.
- ``FastPath.deliver`` does what ``run`` does and the dispatcher's delivery of each event in the
  same loop, for the points between a frame's first event and its last point (those two are
  sampled for the latency windows and go through the dispatcher's own loop, as does any point
  the general path must see): no list of hits between two loops.

Where a trade point's time goes (callgrind, instructions per point, 50 points per frame, brotli,
8 interleaved series, the real ``FrameDecoder`` and ``Dispatcher`` with the bench's counting
handler: ``python -m kiyotaka_ws._cli.bench_callgrind``, which prints the whole table): the client
28,120 against 29,320 for the ``json.loads`` loop and 14,940 for the ``orjson.loads`` loop (1.04x
and 0.53x; one series: 28,150, 1.03x and 0.52x; at 20 points per frame 1.01x and 1.00x). Of the
client's: brotli + orjson ~15,000 (the orjson loop's whole cost), the queue, batch and frame steps
~300, then in ``deliver`` the series ``==`` ~2,700 (string compares: the floor of an exact check;
a values tuple costs ~3,000, an ``itemgetter`` ~3,300), finding the symbol's remembered pair
~650, the event ~2,450 (allocating and freeing it ~940, its 13 slot stores ~830, the class swap
~680), reading and checking the trade's fields, the delivery and the handler call the rest
(~7,000, about 200 bytecodes). Before this round (the same tool): 29,540 (0.99x json) with 8
series and 30,630 (0.95x) with one; at 20 points per frame 0.97x and 0.93x. The tool leaves out
receiving the frames, which costs the bare loops more (websocket-client's ``recv``), so at 1 and
5 points per frame, where that cost is most of the work, its ratios (0.83x, 0.89x) are far below
the bench's.

The floor against the orjson loop: 0.8x of it leaves ~3,400 instructions per point beyond the
parse for routing, checks, the event and the handler call, and the event plus the series ``==``
alone take ~5,150, before any field is read or checked and any handler called. So 0.8x the
orjson loop is out of reach in pure Python with these events. Typed decoding (msgspec Structs)
parses for ~8,900 against orjson's ~12,600, but ``raw`` must be the point dict as received, so
dicts are parsed as well (~21,600 together): not used. msgspec's untyped decoder costs what
orjson does. A compiled helper was not tried: it would have to stay optional (this path kept
and checked equal to it), and no ``pip install`` may need a compiler, so wheels for every
platform: out of proportion for one round.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import attrs

from .channels import Channel
from .events import (
    SIDES,
    BookLevel,
    BookSnapshot,
    Event,
    FundingRate,
    Liquidation,
    OpenInterest,
    Trade,
    TradeAggregation,
    VolumeLevel,
    VolumeProfile,
)

CACHE_SIZE = 4096  # distinct series keys per table; past it the cache starts again (bounded memory)
_NUMBER_TYPES = frozenset((float, int))
_NS = 1_000_000_000
_INT_AS_FLOAT = 2**1023  # ints below this convert to float without OverflowError (larger: general path)


class _Fallback(Exception):
    """Internal: the point is not of a documented shape; the general path decides."""


# -- building frozen attrs events cheaply ----------------------------------------------------------
#
# A frozen attrs ``__init__`` sets every field through ``object.__setattr__`` (~1 us for a Trade).
# Instead, ``builder(Trade)`` fills a "twin": a subclass of ``Event`` with exactly Trade's own
# slots and the plain C-level ``__setattr__``, then assigns ``__class__ = Trade``. CPython allows
# that because both add the same slots to the same base, so the memory layout is identical; the
# result IS a Trade (eq, hash, repr, pickle, attrs.evolve, FrozenInstanceError all as usual), built
# in ~0.2 us. It is only used for classes whose ``__init__`` merely stores its arguments (no
# validators, converters, defaults computed or post-init), and a self-check at import compares it
# with the real ``__init__``; if anything does not hold, the builder calls the class instead.


_COMMON = ("channel", "exchange", "symbol", "coin", "normalized_symbol", "category")  # the cached head


def builder(cls: type) -> Callable[..., Any]:
    """A function ``(head, time_ns, raw, received_ns, *own fields) -> cls``: ``head`` holds the
    ``_COMMON`` fields, ``own`` the class's own attrs fields in order."""
    names = [field.name for field in attrs.fields(cls)]
    own = names[len(_COMMON) + 3:]
    slots = cls.__dict__.get("__slots__", ())
    plain = (cls.__bases__ == (Event,) and not {"__attrs_pre_init__", "__attrs_post_init__"} & set(dir(cls))
             and all(f.validator is None and f.converter is None and f.on_setattr in (None, attrs.setters.NO_OP)
                     for f in attrs.fields(cls))
             and names[:len(_COMMON) + 3] == [*_COMMON, "time_ns", "raw", "received_ns"]
             and [n for n in (*getattr(Event, "__slots__", ()), *slots) if n != "__weakref__"] == names)
    args = ", ".join(("head", "time_ns", "raw", "received_ns", *own))
    if plain:
        # Both attribute hooks must be object's for CPython to keep its fast generic setattr.
        twin = type(f"_{cls.__name__}Twin", (Event,), {"__slots__": slots, "__init__": object.__init__,
                                                          "__setattr__": object.__setattr__,
                                                          "__delattr__": object.__delattr__})
        targets = ", ".join(f"e.{name}" for name in _COMMON)
        body = "".join(f"    e.{name} = {name}\n" for name in ("time_ns", "raw", "received_ns", *own))
        source = f"def build({args}):\n    e = twin()\n    {targets} = head\n{body}    e.__class__ = cls\n    return e\n"
        scope: dict[str, Any] = {"twin": twin, "cls": cls}
        exec(source, scope)  # noqa: S102 - fixed source built from the class's own field names
        build: Callable[..., Any] = scope["build"]
        if _same_as_init(cls, build, own):
            build.twin = twin  # type: ignore[attr-defined]  # FastPath.run fills trades' twins inline
            return build
    scope = {"cls": cls}
    call = f"cls(*head, time_ns, {', '.join(own)}, raw=raw, received_ns=received_ns)"
    exec(f"def build({args}):\n    return {call}\n", scope)  # noqa: S102
    return scope["build"]  # type: ignore[no-any-return]


def _same_as_init(cls: type, build: Callable[..., Any], own: list[str]) -> bool:
    head = tuple(object() for _ in _COMMON)
    time_ns, raw, received, values = object(), object(), object(), [object() for _ in own]
    try:
        made = build(head, time_ns, raw, received, *values)
        real = cls(*head, time_ns, *values, raw=raw, received_ns=received)
    except Exception:  # noqa: BLE001 - any surprise means: do not use the twin
        return False
    return type(made) is cls and all(getattr(made, f.name) is getattr(real, f.name) for f in attrs.fields(cls))


_new_trade = builder(Trade)
_new_trade_agg = builder(TradeAggregation)
_new_book = builder(BookSnapshot)
_new_liquidation = builder(Liquidation)
_new_funding = builder(FundingRate)
_new_open_interest = builder(OpenInterest)
_new_volume_profile = builder(VolumeProfile)


# -- exact-type field readers (rare cases raise _Fallback; callers inline the common case) -----------

def _float(value: Any) -> float:
    """A number field that is not a float: an int (converted), absent (0.0), or not ours."""
    if type(value) is int and -_INT_AS_FLOAT < value < _INT_AS_FLOAT:
        return float(value)
    if value is None:
        return 0.0
    raise _Fallback


def _time(ts: Any) -> int | None:
    if ts is None:
        return None
    if type(ts) is dict:
        seconds, nanos = ts.get("seconds"), ts.get("nanoseconds", 0)
        if type(seconds) is int and type(nanos) is int and 0 <= nanos < _NS:
            return seconds * _NS + nanos
    raise _Fallback  # {s, ns}, quoted integers, a missing "seconds": the general path's business


def _flat(values: Any, width: int) -> list[float]:
    if values is None:
        return []
    if type(values) is not list or len(values) % width or not _NUMBER_TYPES.issuperset(map(type, values)):
        raise _Fallback
    try:
        return list(map(float, values))
    except OverflowError:
        raise _Fallback from None


def _opt_float(value: Any) -> float | None:
    if type(value) is float or value is None:
        return value
    return _float(value)


# -- one decoder per channel: (head, point) -> event ----------------------------------------------
#
# ``head`` comes from the route cache: ((channel, exchange, symbol, coin, normalized_symbol,
# category), side, block_size), each already checked and converted. The documented timestamp is
# read inline (it is on every point); anything else about it goes through ``_time``.

_Head = tuple[tuple[Channel, Any, Any, Any, Any, Any], Any, Any]


# Trades and liquidations, the busiest channels, are decoded inline by ``FastPath.run``: their
# cache entries hold (payload key, builder, twin or None, class) where the others hold a decoder
# function; with a twin (see ``builder``) the event is filled inline too (~560 instructions per
# point less than calling the builder), else the builder is called.
_TRADE_LIKE = {"TRADE": ("trade", _new_trade, getattr(_new_trade, "twin", None), Trade),
               "LIQUIDATION": ("liquidation", _new_liquidation, getattr(_new_liquidation, "twin", None), Liquidation)}
assert [f.name for f in attrs.fields(Trade)] == [f.name for f in attrs.fields(Liquidation)]  # one inline fill for both


def _trade_agg(head: _Head, point: dict[str, Any], rx: int | None) -> Event:
    p = point.get("tradeAggregation")
    if type(p) is not dict:
        raise _Fallback
    ohlcv = [p.get("open"), p.get("high"), p.get("low"), p.get("close"), p.get("volume")]
    for i, value in enumerate(ohlcv):
        if type(value) is not float:
            ohlcv[i] = _float(value)
    common, side, _ = head
    return _new_trade_agg(common, _time(p.get("timestamp")), point, rx, *ohlcv, side,  # type: ignore[no-any-return]
                          _time(p.get("firstTimestamp")), _time(p.get("lastTimestamp")))


def _book(head: _Head, point: dict[str, Any], rx: int | None) -> Event:
    p = point.get("blockBookSnapshot")
    if type(p) is not dict:
        raise _Fallback
    bids, asks = _flat(p.get("bids"), 2), _flat(p.get("asks"), 2)
    common, _, block = head
    return _new_book(common, _time(p.get("timestamp")), point, rx,  # type: ignore[no-any-return]
                     tuple(map(BookLevel._make, zip(bids[0::2], bids[1::2]))),
                     tuple(map(BookLevel._make, zip(asks[0::2], asks[1::2]))), block)


def _funding(head: _Head, point: dict[str, Any], rx: int | None) -> Event:
    p = point.get("fundingRate")
    if type(p) is not dict:
        raise _Fallback
    return _new_funding(head[0], _time(p.get("timestamp")), point, rx,  # type: ignore[no-any-return]
                        _opt_float(p.get("fundingRate")),
                        _opt_float(p.get("predictedFundingRate")))


def _open_interest(head: _Head, point: dict[str, Any], rx: int | None) -> Event:
    p = point.get("openInterest")
    if type(p) is not dict:
        raise _Fallback
    value = p.get("openInterest")
    if type(value) is not float:
        value = _float(value)
    return _new_open_interest(head[0], _time(p.get("timestamp")), point, rx, value)  # type: ignore[no-any-return]


def _volume_profile(head: _Head, point: dict[str, Any], rx: int | None) -> Event:
    p = point.get("volumeProfileAggregation")
    if type(p) is not dict:
        raise _Fallback
    flat = _flat(p.get("profile"), 3)
    common, _, block = head
    return _new_volume_profile(common, _time(p.get("timestamp")), point, rx,  # type: ignore[no-any-return]
                               tuple(map(VolumeLevel._make, zip(flat[0::3], flat[1::3], flat[2::3]))), block)


_Decoder = Callable[[_Head, "dict[str, Any]", "int | None"], Event]
# series.type -> (channel, decoder (or _TRADE_LIKE's pair), whether the event carries series.blockSize)
_FAST_DECODERS: dict[str, tuple[Channel, Any, bool]] = {
    "TRADE": (Channel.TRADE, _TRADE_LIKE["TRADE"], False),
    "TRADE_AGG": (Channel.TRADE_AGG, _trade_agg, False),
    "BLOCK_BOOK_SNAPSHOT": (Channel.BLOCK_BOOK_SNAPSHOT, _book, True),
    "LIQUIDATION": (Channel.LIQUIDATION, _TRADE_LIKE["LIQUIDATION"], False),
    "FUNDING_RATE": (Channel.FUNDING_RATE, _funding, False),
    "OPEN_INTEREST": (Channel.OPEN_INTEREST, _open_interest, False),
    "VOLUME_PROFILE_AGG": (Channel.VOLUME_PROFILE_AGG, _volume_profile, True),
}

# The series fields routing or the event's head read, in key order.
_KEY_FIELDS = ("type", "symbol", "coin", "exchange", "category", "normalizedSymbol", "side", "blockSize")
# (handlers: dispatch.Registration, then for a trade or a liquidation its payload key, twin (or None)
# and class, else three Nones, then the head's common fields and side, the decoder (a trade's:
# its builder) and the head): one flat tuple, unpacked once per point.
_Entry = tuple[tuple[Any, ...], Any, Any, Any, Any, Any, Any, _Head]
# A remembered series is compared key by key in this order, then its other keys: the fields that
# tell a symbol's series apart first, so that a miss costs one key, not most of them.
_COMPARE_ORDER = ("side", "type", "exchange", "category", "blockSize")
_Hit = Optional[Union[tuple[tuple[Any, ...], Event], tuple[()]]]  # see FastPath.route
RUN_POINTS = 64  # points decoded ahead of their delivery by one FastPath.run
_NOTHING_RECENT = (None, None, None, None)  # a symbol with no series remembered (a series dict is never None)


class FastPath:
    """Routes and decodes points for one ``RouteTable`` (``routes``), which never changes.

    The cache maps the tuple of a series' ``_KEY_FIELDS`` to its entry (``_Entry``). A key is
    cached only when its strings are strings (or None) and its ``blockSize`` a float, an int or
    None: a non-string never equals a string, so a hit vouches for every field of the key. The one
    look-alike is a bool ``blockSize`` (``True == 1``), refused on every lookup.

    Before that, a point's series is compared (``==``, in C) with the last two series seen OF ITS
    SYMBOL (``series.get("symbol")``; None for grouped series): the points of one series usually
    differ only in ``side``, so most points skip the key, however many series a frame interleaves.
    The symbol only picks the candidates; ``==`` on whole dicts decides, so a hit is exact
    provided no remembered ``blockSize`` equals a bool (0 or 1): such series are not remembered.

    The remembered copy keeps its keys in ``_COMPARE_ORDER`` and sits on the left of ``==``
    (``dict.__eq__`` walks the left operand's keys): two series of a symbol usually differ in
    ``side`` only, and a miss then costs one key, not six (~730 instructions per point less with
    one series whose sides alternate).

    Measured (callgrind, instructions per trade point in ``run``, 50 points per frame): 13,000 for
    one series and 12,100 for eight interleaved; with the last two series seen overall it was
    12,300 and 18,800 (eight interleaved series missed on every point). An exact key per point
    costs more than the ``==`` it would save: ``tuple(series.items())`` ~7,000 and the values
    tuple with a check ~6,100, against ~2,700 for ``==`` and ~650 for finding the symbol's pair.
    """

    def __init__(self, routes: Any) -> None:
        self.routes = routes
        self._entries: dict[tuple[Any, ...], _Entry | None] = {}
        # symbol -> [series, entry, series, entry, the slot the next remembered series replaces]
        self._recent: dict[Any, list[Any]] = {}

    def route(self, point: Any, received_ns: int | None = None) -> _Hit:
        """``(handlers, event)``; ``()`` when no handler listens (the point is skipped undecoded,
        as on the general path); None when the general path must decide."""
        return self.run([point], 0, received_ns)[0]

    def run(self, points: list[Any], start: int, received_ns: int | None = None, stop: int | None = None,
            ns: int = _NS) -> list[_Hit]:
        """What ``route`` answers for each of ``points[start:stop]`` (``stop``: at most ``start +
        RUN_POINTS``), in one loop (a call per point less, two for trades)."""
        recent_of = self._recent
        lookup = self._lookup
        none: Any = _NOTHING_RECENT
        hits: list[_Hit] = []
        append = hits.append
        end = start + RUN_POINTS if stop is None else min(stop, start + RUN_POINTS)
        for point in points[start:end]:
            try:
                series = point["series"]
                recent = recent_of[series["symbol"]]  # JSON gives dicts: only they take a str index
            except KeyError:  # no series (``point`` is a dict), no symbol (grouped), or none remembered
                if type(series := point.get("series")) is not dict:
                    append(None)
                    continue
                recent = recent_of.get(series.get("symbol"), none)  # hashable: it was looked up, or absent
            except (TypeError, AttributeError):  # not an object, a series not an object, an unhashable symbol
                append(None)
                continue
            # The remembered copy on the left: its keys, ``side`` first, set the order compared in.
            if recent[0] == series:
                entry = recent[1]
            elif recent[2] == series:
                entry = recent[3]
            else:
                entry = lookup(series)
                if entry is None:
                    append(None)
                    continue
            handlers, payload_key, twin, cls, common, side, decode, head = entry
            if not handlers:
                append(())
                continue
            if payload_key is None:
                try:
                    append((handlers, decode(head, point, received_ns)))
                except _Fallback:
                    append(None)
                continue
            # A trade or a liquidation: subscripts (a missing key or a non-object raises, and the
            # general path decides) and the documented {seconds, nanoseconds} timestamp inline.
            try:
                p = point[payload_key]
                id_ = p["id"]  # one statement each: a tuple of four costs ~280 instructions more
                price = p["price"]
                amount = p["amount"]
                ts = p["timestamp"]
                seconds = ts["seconds"]
                try:
                    nanos = ts["nanoseconds"]
                except KeyError:  # protobuf-JSON leaves a zero out
                    nanos = 0
                if type(id_) is not str or type(seconds) is not int or type(nanos) is not int or not 0 <= nanos < ns:
                    raise _Fallback
                if type(price) is not float:
                    price = _float(price)
                if type(amount) is not float:
                    amount = _float(amount)
            except (KeyError, TypeError, AttributeError, _Fallback):
                append(None)
                continue
            if twin is None:
                append((handlers, decode(common, seconds * ns + nanos, point, received_ns, id_, price, amount, side)))
                continue
            e = twin()  # what ``builder`` does, inline: the busiest channels
            e.channel, e.exchange, e.symbol, e.coin, e.normalized_symbol, e.category = common
            e.time_ns = seconds * ns + nanos
            e.raw = point
            e.received_ns = received_ns
            e.id = id_
            e.price = price
            e.amount = amount
            e.side = side
            e.__class__ = cls
            append((handlers, e))
        return hits

    def deliver(self, points: list[Any], start: int, stop: int, received_ns: int | None, into: Any,
                ns: int = _NS) -> int:
        """Route, decode and deliver ``points[start:stop]`` in one loop: ``run`` and the
        dispatcher's delivery of each hit (``into``: the ``Dispatcher``; its flags, counters and
        failure hook) without the list of hits between them (~1,100 instructions per trade point
        less). Returns the position of the first point not taken: ``stop``, one ``run`` answers
        None for (the dispatcher's general path takes it), or the one after a handler that
        stopped the client or changed the routes. Same route and decode as ``run``, line for line;
        ``tests/test_fastpath.py`` checks both against the general path. ``into.events`` grows
        once per call (a handler reading ``stats()`` sees it up to a frame behind)."""
        routes = self.routes
        recent_of = self._recent
        lookup = self._lookup
        none: Any = _NOTHING_RECENT
        position = start - 1
        delivered = 0
        last_seconds: Any = None  # seconds * ns, computed once per second seen (trades of a frame mostly share it)
        base = 0
        try:
            for position, point in enumerate(points[start:stop], start):
                try:
                    series = point["series"]
                    recent = recent_of[series["symbol"]]
                except KeyError:
                    if type(series := point.get("series")) is not dict:
                        return position
                    recent = recent_of.get(series.get("symbol"), none)
                except (TypeError, AttributeError):
                    return position
                if recent[0] == series:
                    entry = recent[1]
                elif recent[2] == series:
                    entry = recent[3]
                else:
                    entry = lookup(series)
                    if entry is None:
                        return position
                handlers, payload_key, twin, cls, common, side, decode, head = entry
                if not handlers:
                    into.skipped += 1
                    continue
                if payload_key is None:
                    try:
                        e = decode(head, point, received_ns)
                    except _Fallback:
                        return position
                else:
                    try:
                        p = point[payload_key]
                        id_ = p["id"]
                        price = p["price"]
                        amount = p["amount"]
                        ts = p["timestamp"]
                        seconds = ts["seconds"]
                        try:
                            nanos = ts["nanoseconds"]
                        except KeyError:
                            nanos = 0
                        if type(id_) is not str or type(seconds) is not int or type(nanos) is not int \
                                or not 0 <= nanos < ns:
                            raise _Fallback
                        if type(price) is not float:
                            price = _float(price)
                        if type(amount) is not float:
                            amount = _float(amount)
                    except (KeyError, TypeError, AttributeError, _Fallback):
                        return position
                    if twin is None:
                        e = decode(common, seconds * ns + nanos, point, received_ns, id_, price, amount, side)
                    else:
                        e = twin()
                        e.channel, e.exchange, e.symbol, e.coin, e.normalized_symbol, e.category = common
                        if seconds != last_seconds:
                            last_seconds = seconds
                            base = seconds * ns
                        e.time_ns = base + nanos
                        e.raw = point
                        e.received_ns = received_ns
                        e.id = id_
                        e.price = price
                        e.amount = amount
                        e.side = side
                        e.__class__ = cls
                # What Dispatcher._deliver_points does for a hit between a frame's sampled events.
                delivered += 1  # added to into.events once per call (see the finally)
                into.calling = handlers  # before the flags are read: see Dispatcher.wait_not_calling
                for handler in handlers:
                    if handler.active:  # per call: unsubscribe()/stop() may have run meanwhile
                        try:
                            handler.fn(e)
                        except BaseException as exc:  # noqa: BLE001 - nothing a handler does may kill the dispatcher
                            into.handler_failed(handler.fn, e, exc)
                if into.closing or into.routes is not routes:
                    return position + 1
            return position + 1
        finally:
            into.events += delivered

    def _lookup(self, series: dict[str, Any]) -> _Entry | None:
        get = series.get  # the _KEY_FIELDS, spelled out: faster than map()
        key = (get("type"), get("symbol"), get("coin"), get("exchange"), get("category"), get("normalizedSymbol"),
               get("side"), get("blockSize"))
        block = key[7]
        if block is True or block is False:
            return None
        try:
            entry = self._entries[key]
        except KeyError:
            entry = self._add(key, series)
        except TypeError:  # an unhashable field
            return None
        if entry is not None and (block is None or (block != 0 and block != 1)):
            recent = self._recent.get(key[1])  # cached: a str or None
            if recent is None:
                if len(self._recent) >= CACHE_SIZE:
                    self._recent.clear()
                recent = self._recent[key[1]] = [None, None, None, None, 0]
            slot = recent[4]
            # A copy (a handler may change ``event.raw["series"]``), its keys in _COMPARE_ORDER.
            recent[slot] = {**{k: series[k] for k in _COMPARE_ORDER if k in series}, **series}
            recent[slot + 1] = entry
            recent[4] = 2 - slot
        return entry

    def _add(self, key: tuple[Any, ...], series: dict[str, Any]) -> _Entry | None:
        kind, symbol, coin, exchange, category, nsym, side, block = key
        found = _FAST_DECODERS.get(kind) if type(kind) is str else None
        if found is None or not all(v is None or type(v) is str for v in key[1:7]):
            return None  # not cached: only keys of checked strings may vouch for their fields
        if block is not None and type(block) is not float and type(block) is not int:
            return None
        channel, decode, with_block = found
        try:
            block_size = _opt_float(block) if with_block else None
        except _Fallback:
            return None
        if len(self._entries) >= CACHE_SIZE:
            self._entries.clear()
        common = (channel, exchange, symbol, coin, nsym, category)
        head: _Head = (common, SIDES.get(side), block_size)
        handlers = self.routes.handlers_for(series)
        if type(decode) is tuple:  # a trade or a liquidation: run() fills its event inline
            payload_key, new, twin, cls = decode
            entry: _Entry = (handlers, payload_key, twin, cls, common, head[1], new, head)
        else:
            entry = (handlers, None, None, None, common, head[1], decode, head)
        self._entries[key] = entry
        return entry
