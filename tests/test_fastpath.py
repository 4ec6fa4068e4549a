"""The dispatcher's fast path yields exactly what the general path (``decode_point`` and
``RouteTable.handlers_for``) yields: the same events, errors and counters, for any point."""

from __future__ import annotations

import copy
import json
import math
import pickle
import weakref
from typing import Any

import attrs
import brotli
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_events import EXAMPLES, TRADE

from kiyotaka_ws import Channel, DecodeError, Side, Trade
from kiyotaka_ws import dispatch as dispatch_module
from kiyotaka_ws import fastpath as fastpath_module
from kiyotaka_ws.channels import make_spec
from kiyotaka_ws.dispatch import Dispatcher, EventQueue, Hooks, RouteTable
from kiyotaka_ws.events import Event, decode_point
from kiyotaka_ws.fastpath import CACHE_SIZE, RUN_POINTS, FastPath, builder
from kiyotaka_ws.protocol import FrameDecoder

# -- a dispatcher with recording handlers, and a way to force the general path --------------------


class Recorder:
    def __init__(self, name: str, log: list[Any]) -> None:
        self.name, self.log = name, log

    def __call__(self, event: Any) -> None:
        self.log.append((self.name, event))


# Registrations that exercise every routing rule: exchange "*", a category filter, block sizes
# (including 1, which a bool must never match), grouped by coin, and a handler-less series.
REGISTRATIONS = [
    ("TRADE", "X", "S", {}, {}),
    ("TRADE", "*", "S", {"category": "SPOT"}, {}),
    ("TRADE_AGG", "*", "S", {}, {}),
    ("LIQUIDATION", "X", "S", {}, {}),
    ("FUNDING_RATE", "*", "S", {"category": "PERPETUAL"}, {}),
    ("OPEN_INTEREST", "X", "S", {}, {}),
    ("BLOCK_BOOK_SNAPSHOT", "X", "S", {}, {"block_size": 25}),
    ("BLOCK_BOOK_SNAPSHOT", "*", "BTC", {}, {"block_size": 1, "group_by_coin": True}),
    ("VOLUME_PROFILE_AGG", "*", "BTC", {}, {"group_by_coin": True}),
    ("VOLUME_PROFILE_AGG", "X", "S", {}, {}),
]


def make_dispatcher(log: list[Any]) -> Dispatcher:
    errors: list[Any] = []
    hooks = Hooks()
    hooks.error = (errors.append,)
    dispatcher = Dispatcher("nonbook", EventQueue(10, "block"), hooks, FrameDecoder(1 << 20),
                            lambda *args: None, lambda error: None)
    routes = RouteTable()
    for i, (channel, exchange, symbol, kwargs, options) in enumerate(REGISTRATIONS):
        spec = make_spec(channel, exchange=exchange, symbol=symbol, options=options, **kwargs)
        routes = routes.updated(spec, (Recorder(f"h{i}", log), Recorder(f"h{i}b", log)))
    dispatcher.routes = routes
    dispatcher.errors_seen = errors  # type: ignore[attr-defined]
    return dispatcher


def signature(event: Any) -> tuple:
    """Everything that must match, types included (``1 == 1.0 == True``; ``nan != nan``)."""
    fields = tuple((f.name, type(getattr(event, f.name)).__name__, repr(getattr(event, f.name)))
                   for f in attrs.fields(type(event)) if f.name != "raw")
    return type(event).__name__, fields


def general_only(self: FastPath, points: list[Any], start: int, received_ns: Any = None,
                 stop: int | None = None) -> list[None]:
    """In place of ``FastPath.run``: every point takes the general path."""
    return [None] * len(points[start:start + RUN_POINTS if stop is None else min(stop, start + RUN_POINTS)])


def deliver_none(self: FastPath, points: list[Any], start: int, *args: Any) -> int:
    """In place of ``FastPath.deliver``: no point is taken (the dispatcher's loop sees each one)."""
    return start


def run(points: list[Any], general: bool, monkeypatch: pytest.MonkeyPatch, inline_min: int = 3) -> tuple:
    """Deliver ``points`` as one frame; ``inline_min``: the shortest frame ``FastPath.deliver`` takes
    part in (``dispatch.INLINE_MIN_POINTS``, lowered so that short frames test it too)."""
    log: list[Any] = []
    dispatcher = make_dispatcher(log)
    with monkeypatch.context() as patch:
        patch.setattr(dispatch_module, "INLINE_MIN_POINTS", inline_min)
        if general:
            patch.setattr(FastPath, "run", general_only)
            patch.setattr(FastPath, "deliver", deliver_none)
        dispatcher._deliver(points, 1_700_000_000_123_456_789)  # received_ns: carried by both paths
    delivered = [(name, signature(event), id(event.raw)) for name, event in log]
    errors = [(type(e).__name__, str(e), e.excerpt) for e in dispatcher.errors_seen]  # type: ignore[attr-defined]
    return delivered, errors, (dispatcher.events, dispatcher.skipped, dispatcher.decode_errors)


# -- strategies: the documented shapes, each field sometimes of the wrong type or missing ---------

ODD = (st.none() | st.booleans() | st.sampled_from([0, 1, 25, -3, 2**64, 2**1030, 0.0, 1.0, 25.0, math.nan,
                                                     math.inf, "", "25", "x", "12"])
       | st.lists(st.integers(0, 3), max_size=2) | st.just({"a": 1}))


def maybe(good: st.SearchStrategy, odd_weight: int = 30) -> st.SearchStrategy:
    """Mostly the documented value, sometimes anything a JSON parser could produce."""
    return rarely(odd_weight).flatmap(lambda odd: ODD if odd else good)


def rarely(n: int) -> st.SearchStrategy:
    """True about once in ``n + 1`` draws (shrinking towards False)."""
    return st.sampled_from([False] * n + [True])


STRINGS = {"type": st.sampled_from(["TRADE", "TRADE_AGG", "BLOCK_BOOK_SNAPSHOT", "LIQUIDATION", "FUNDING_RATE",
                                    "OPEN_INTEREST", "VOLUME_PROFILE_AGG", "NEW_THING"]),
           "symbol": st.sampled_from(["S", "S", "S", "T"]), "coin": st.sampled_from(["BTC", "ETH"]),
           "exchange": st.sampled_from(["X", "X", "X", "Y"]), "category": st.sampled_from(["SPOT", "PERPETUAL"]),
           "normalizedSymbol": st.just("S-USD"), "side": st.sampled_from(["BUY", "SELL", "UNKNOWN_SIDE"]),
           "blockSize": st.sampled_from([25, 25.0, 1, 1.0, 0.5, True, False, "25"])}
PAYLOAD_KEYS = {"TRADE": "trade", "TRADE_AGG": "tradeAggregation", "BLOCK_BOOK_SNAPSHOT": "blockBookSnapshot",
                "LIQUIDATION": "liquidation", "FUNDING_RATE": "fundingRate", "OPEN_INTEREST": "openInterest",
                "VOLUME_PROFILE_AGG": "volumeProfileAggregation", "NEW_THING": "newThing"}
NUMBER = st.floats(allow_nan=False, width=64) | st.integers(-(10**6), 10**6)
TIMESTAMP = rarely(8).flatmap(lambda odd: st.fixed_dictionaries(
    {}, optional={"seconds": maybe(st.integers(0, 2**40)), "nanoseconds": maybe(st.integers(0, 999_999_999)),
                  "s": maybe(st.integers(0, 99)), "ns": maybe(st.integers(0, 99))}) if odd else st.fixed_dictionaries(
    {"seconds": maybe(st.integers(0, 2**40))}, optional={"nanoseconds": maybe(st.integers(0, 999_999_999))}))
FLAT = st.lists(maybe(NUMBER, 60), max_size=7)
PAYLOAD_FIELDS = {"id": maybe(st.text(max_size=4)), "price": maybe(NUMBER), "amount": maybe(NUMBER),
                  "open": maybe(NUMBER), "high": maybe(NUMBER), "low": maybe(NUMBER), "close": maybe(NUMBER),
                  "volume": maybe(NUMBER), "timestamp": maybe(TIMESTAMP), "firstTimestamp": maybe(TIMESTAMP),
                  "lastTimestamp": maybe(TIMESTAMP), "bids": maybe(FLAT), "asks": maybe(FLAT),
                  "profile": maybe(FLAT), "fundingRate": maybe(NUMBER), "predictedFundingRate": maybe(NUMBER),
                  "openInterest": maybe(NUMBER)}
FIELDS_OF = {"TRADE": ("id", "price", "amount", "timestamp"), "LIQUIDATION": ("id", "price", "amount", "timestamp"),
             "TRADE_AGG": ("open", "high", "low", "close", "volume", "timestamp", "firstTimestamp", "lastTimestamp"),
             "BLOCK_BOOK_SNAPSHOT": ("bids", "asks", "timestamp"), "OPEN_INTEREST": ("openInterest", "timestamp"),
             "FUNDING_RATE": ("fundingRate", "predictedFundingRate", "timestamp"),
             "VOLUME_PROFILE_AGG": ("profile", "timestamp"), "NEW_THING": ("timestamp",)}


@st.composite
def points(draw: Any) -> Any:
    if draw(rarely(40)):
        return draw(ODD | st.just({}) | st.just({"series": None}) | st.just({"series": []}))
    series = {name: draw(maybe(value)) for name, value in STRINGS.items() if not draw(rarely(12))}
    series["inverse"] = draw(st.booleans())
    if series.get("type") not in ("BLOCK_BOOK_SNAPSHOT", "VOLUME_PROFILE_AGG") and not draw(rarely(8)):
        series.pop("blockSize", None)
    kind = series.get("type")
    kind = kind if type(kind) is str and kind in PAYLOAD_KEYS else "TRADE"
    payload = {name: draw(PAYLOAD_FIELDS[name]) for name in FIELDS_OF[kind] if not draw(rarely(15))}
    key = PAYLOAD_KEYS[kind]
    if draw(rarely(30)):
        return {"series": series}  # the payload missing
    return {"series": series, key: draw(ODD) if draw(rarely(30)) else payload}


@st.composite
def frames(draw: Any) -> list[Any]:
    """Points as a frame brings them: runs that repeat a series (the fast path's best case), with
    a copy whose ``side`` or ``blockSize`` differs, mixed with unrelated points."""
    out: list[Any] = []
    for point in draw(st.lists(points(), min_size=1, max_size=6)):
        out.append(point)
        if type(point) is dict and type(point.get("series")) is dict and draw(st.booleans()):
            twin = copy.deepcopy(point)
            twin["series"]["side"] = draw(maybe(STRINGS["side"]))
            if draw(st.booleans()):  # the look-alikes: True == 1 == 1.0, False == 0
                twin["series"]["blockSize"] = draw(st.sampled_from([True, 1, 1.0, False, 0, 25, True]))
            out.extend([twin, copy.deepcopy(point)])
    return out


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(frame=frames())
def test_fast_path_matches_the_general_path(frame, monkeypatch):
    assert run(frame, general=False, monkeypatch=monkeypatch) == run(frame, general=True, monkeypatch=monkeypatch)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(frame=frames(), run_points=st.sampled_from([1, 2, 3]), inline_min=st.sampled_from([1, 3, 10**9]))
def test_fast_path_matches_the_general_path_across_runs(frame, run_points, inline_min, monkeypatch):
    """The same, with frames cut into many runs (``FastPath.run`` decodes one run ahead), and with
    ``FastPath.deliver`` taking part in every frame, most, or none."""
    with monkeypatch.context() as patch:
        patch.setattr(fastpath_module, "RUN_POINTS", run_points)
        fast = run(frame, general=False, monkeypatch=monkeypatch, inline_min=inline_min)
    assert fast == run(frame, general=True, monkeypatch=monkeypatch)


@st.composite
def interleaved_frames(draw: Any) -> list[Any]:
    """Points of several series interleaved in one frame (a multi-symbol stream): a few series,
    some grouped by coin (no symbol), each point a copy of one of them, sides varying."""
    series_points = draw(st.lists(points(), min_size=2, max_size=8))
    for point in series_points:
        if type(point) is dict and type(point.get("series")) is dict and draw(rarely(3)):
            point["series"].pop("symbol", None)  # grouped: routed by coin
    out = []
    for index in draw(st.lists(st.integers(0, len(series_points) - 1), min_size=1, max_size=40)):
        point = copy.deepcopy(series_points[index])
        if type(point) is dict and type(point.get("series")) is dict and draw(rarely(2)):
            point["series"]["side"] = draw(STRINGS["side"])
        out.append(point)
    return out


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(frame=interleaved_frames(), run_points=st.sampled_from([1, 3, 64]))
def test_fast_path_matches_the_general_path_with_interleaved_series(frame, run_points, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(fastpath_module, "RUN_POINTS", run_points)
        fast = run(frame, general=False, monkeypatch=monkeypatch)
    assert fast == run(frame, general=True, monkeypatch=monkeypatch)


def test_interleaved_series_hit_the_cache(monkeypatch):
    """Routing does not depend on how series interleave: once each series (and side) has been
    seen, eight series interleaved point by point take no further key lookup."""
    routes = RouteTable()
    for k in range(8):
        routes = routes.updated(make_spec("TRADE", exchange="X", symbol=f"S{k}"), (print,))
    fast = FastPath(routes)
    frame = []
    for i in range(160):
        point = copy.deepcopy(TRADE)
        point["series"].update(exchange="X", symbol=f"S{i % 8}", side="BUY" if i // 8 % 2 else "SELL")
        frame.append(point)
    lookups = []
    original = FastPath._lookup
    monkeypatch.setattr(FastPath, "_lookup", lambda self, series: lookups.append(1) or original(self, series))
    assert all(fast.run(frame, start) for start in range(0, len(frame), RUN_POINTS))
    assert len(lookups) == 16  # 8 symbols x 2 sides, each once


def test_documented_examples_take_the_fast_path():
    """Every documented example is decoded by the fast path itself, to the general path's event."""
    for example in EXAMPLES:
        series = example["series"]
        spec = make_spec(series["type"], exchange="*", symbol=series["symbol"],
                         options={"block_size": 25} if series["type"] == "BLOCK_BOOK_SNAPSHOT" else {})
        hit = FastPath(RouteTable().updated(spec, (print,))).route(example)
        assert hit, series["type"]
        assert signature(hit[1]) == signature(decode_point(example)) and hit[1].raw is example


def test_differential_test_can_fail(monkeypatch):
    """A fast path that differs (here: a price off by one) is caught by the comparison."""
    frame = [copy.deepcopy(TRADE) for _ in range(3)]
    for point in frame:
        point["series"]["exchange"], point["series"]["symbol"] = "X", "S"
    original = fastpath_module._new_trade
    off_by_one = ("trade", lambda *a: original(*a[:5], a[5] + 1, *a[6:]), None, Trade)  # (head, time_ns, raw, rx, id, price, ...)
    monkeypatch.setitem(fastpath_module._FAST_DECODERS, "TRADE", (Channel.TRADE, off_by_one, False))
    assert run(frame, general=False, monkeypatch=monkeypatch) != run(frame, general=True, monkeypatch=monkeypatch)


def trade_points(count: int, symbols: tuple[str, ...] = ("S",)) -> list[Any]:
    frame = []
    for i in range(count):
        point = copy.deepcopy(TRADE)
        point["series"].update(exchange="X", symbol=symbols[i % len(symbols)], side="BUY" if i % 2 else "SELL")
        point["trade"]["id"] = str(i)
        frame.append(point)
    return frame


def deliver_with(script: Any, frame: list[Any], general: bool, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """Deliver ``frame`` to one handler per symbol that logs each event's id and runs
    ``script(dispatcher, log)`` after each call; what was called, reported and counted."""
    log: list[Any] = []
    errors: list[Any] = []
    hooks = Hooks()
    hooks.error = (errors.append,)
    dispatcher = Dispatcher("nonbook", EventQueue(10, "block"), hooks, FrameDecoder(1 << 20),
                            lambda *args: None, lambda error: None)

    def handler(event: Any) -> None:
        log.append(("first", event.id))
        script(dispatcher, log)

    for symbol in sorted({p["series"]["symbol"] for p in frame}):
        dispatcher.routes = dispatcher.routes.updated(make_spec("TRADE", exchange="X", symbol=symbol), (handler,))
    with monkeypatch.context() as patch:
        if general:
            patch.setattr(FastPath, "run", general_only)
            patch.setattr(FastPath, "deliver", deliver_none)
        dispatcher._deliver(frame, 1)
    return log, [str(e) for e in errors], (dispatcher.events, dispatcher.skipped, dispatcher.handler_errors)


def test_inline_delivery_keeps_the_promises_per_call(monkeypatch):
    """``FastPath.deliver`` (the points between a frame's first and last) does per point what the
    dispatcher's loop does: a handler that raises costs only that call; one that adds a handler
    has it called from the very next point; one that stops (``closing``, handlers inactive)
    gets no further call; an unsubscribed handler is not called. Single and interleaved series."""

    def raises(dispatcher: Any, log: list[Any]) -> None:
        if len(log) == 4:
            raise ValueError("boom")

    def adds(dispatcher: Any, log: list[Any]) -> None:
        if len(log) == 4:
            second = Recorder("second", log)
            spec = make_spec("TRADE", exchange="X", symbol="S")
            dispatcher.routes = dispatcher.routes.updated(spec, (*dispatcher.routes.handlers_for(
                {"type": "TRADE", "symbol": "S", "exchange": "X"}), second))

    def stops(dispatcher: Any, log: list[Any]) -> None:
        if len(log) == 5:
            dispatcher.closing = True

    def unsubscribes(dispatcher: Any, log: list[Any]) -> None:
        if len(log) == 3:
            for registration in dispatcher.routes.handlers_for({"type": "TRADE", "symbol": "T", "exchange": "X"}):
                registration.active = False

    for symbols in (("S",), ("S", "T")):
        frame = trade_points(12, symbols)
        results = {name: deliver_with(script, frame, False, monkeypatch)
                   for name, script in [("raises", raises), ("adds", adds), ("stops", stops),
                                        ("unsubscribes", unsubscribes)]}
        for name, script in [("raises", raises), ("adds", adds), ("stops", stops), ("unsubscribes", unsubscribes)]:
            assert results[name] == deliver_with(script, frame, True, monkeypatch), (name, symbols)
        log, errors, counters = results["raises"]
        assert len(log) == 12 and counters == (12, 0, 1) and "boom" in errors[0]
        assert [name for name, _ in results["stops"][0]] == ["first"] * 5
        if symbols == ("S",):
            seen = [(name, getattr(item, "id", item)) for name, item in results["adds"][0]]
            assert seen[4:6] == [("first", "4"), ("second", "4")] and len(seen) == 4 + 2 * 8
        else:
            assert [i for _, i in results["unsubscribes"][0]] == ["0", "1", "2", "4", "6", "8", "10"]


# -- the events built by the fast path keep the public contract -------------------------------------


def fast_trade() -> Trade:
    point = copy.deepcopy(TRADE)
    spec = make_spec("TRADE", exchange="*", symbol=point["series"]["symbol"])
    hit = FastPath(RouteTable().updated(spec, (print,))).route(point)
    assert hit
    return hit[1]  # type: ignore[return-value]


def test_fast_events_keep_the_events_contract():
    event = fast_trade()
    reference = decode_point(TRADE)
    assert type(event) is Trade and isinstance(event, Event)
    assert event == reference and hash(event) == hash(reference) and repr(event) == repr(reference)
    assert event == Trade(*[getattr(event, f.name) for f in attrs.fields(Trade) if f.name not in ("raw", "received_ns")])
    assert "raw" not in repr(event) and event.raw == TRADE
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.price = 1.0  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        del event.price  # type: ignore[misc]
    assert not hasattr(event, "__dict__") and weakref.ref(event)() is event
    copied = pickle.loads(pickle.dumps(event))
    assert copied == event and type(copied) is Trade and copied.raw == event.raw
    moved = attrs.evolve(event, price=1.5)
    assert type(moved) is Trade and moved.price == 1.5 and moved.id == event.id and moved.raw is event.raw
    assert attrs.asdict(event, recurse=False)["side"] is Side.BUY and event.channel is Channel.TRADE
    assert copy.copy(event) == event and copy.deepcopy(event) == event


def test_builder_uses_init_for_classes_that_need_it():
    """A class whose __init__ does more than store (here a validator) is built by calling it."""

    @attrs.frozen
    class Checked(Event):
        value: int = attrs.field(validator=attrs.validators.instance_of(int))

    build = builder(Checked)
    head = (Channel.TRADE, None, None, None, None, None)
    checked = build(head, None, None, 7, 3)
    assert (checked.value, checked.received_ns) == (3, 7)
    with pytest.raises(TypeError):
        build(head, None, None, None, "not an int")
    trade = builder(Trade)(head, 5, {}, 9, "1", 1.0, 2.0, None)
    assert type(trade) is Trade and trade == Trade(*head, 5, "1", 1.0, 2.0, None) and trade.raw == {}
    assert trade.received_ns == 9


# -- the cache ------------------------------------------------------------------------------------


def test_cache_is_bounded_and_per_table():
    routes = RouteTable().updated(make_spec("TRADE", exchange="*", symbol="S"), (print,))
    fast = FastPath(routes)
    for i in range(CACHE_SIZE + 10):
        point = {"series": {"type": "TRADE", "symbol": "S", "exchange": f"E{i}"},
                 "trade": {"id": "1", "price": 1.0, "amount": 1.0, "timestamp": {"seconds": 1}}}
        assert fast.route(point)
    assert len(fast._entries) <= CACHE_SIZE


@pytest.mark.parametrize(("size", "at"), [(3, 1), (150, 1), (150, 64), (150, 100), (150, 150)])
def test_a_handler_changing_the_routes_mid_frame_takes_effect_at_once(size: int, at: int) -> None:
    """Points are decoded a run (``RUN_POINTS``) ahead; a change of routes still counts from the
    very next point, inside a run or across one."""
    log: list[Any] = []
    dispatcher = make_dispatcher(log)
    point = copy.deepcopy(TRADE)
    point["series"].update(exchange="X", symbol="S")

    def unsubscribe_at(event: Any) -> None:
        log.append(event)
        if len(log) == at:
            dispatcher.routes = RouteTable()

    dispatcher.routes = RouteTable().updated(make_spec("TRADE", exchange="X", symbol="S"), (unsubscribe_at,))
    dispatcher._deliver([copy.deepcopy(point) for _ in range(size)])
    assert len(log) == at and dispatcher.events == at and dispatcher.skipped == size - at


@pytest.mark.parametrize("at", [1, 64, 100])
def test_a_handler_adding_a_handler_mid_frame_is_called_from_the_next_point(at: int) -> None:
    """The other direction: a registration made by a handler (a new table) counts at once."""
    first: list[Any] = []
    second: list[Any] = []
    dispatcher = make_dispatcher([])
    point = copy.deepcopy(TRADE)
    point["series"].update(exchange="X", symbol="S")
    spec = make_spec("TRADE", exchange="X", symbol="S")

    def subscribe_at(event: Any) -> None:
        first.append(event)
        if len(first) == at:
            dispatcher.routes = dispatcher.routes.updated(spec, (subscribe_at, second.append))

    dispatcher.routes = RouteTable().updated(spec, (subscribe_at,))
    dispatcher._deliver([copy.deepcopy(point) for _ in range(150)])
    assert len(first) == 150 and len(second) == 150 - at and dispatcher.events == 150


def test_stop_from_a_handler_mid_run_starts_no_further_handler() -> None:
    """Points are decoded a run ahead, but none of them is delivered once stop() has begun."""
    got: list[Any] = []
    dispatcher = make_dispatcher([])
    point = copy.deepcopy(TRADE)
    point["series"].update(exchange="X", symbol="S")

    def stop_at_70(event: Any) -> None:
        got.append(event)
        if len(got) == 70:
            dispatcher.closing = True  # what stop() sets first

    dispatcher.routes = RouteTable().updated(make_spec("TRADE", exchange="X", symbol="S"), (stop_at_70,))
    dispatcher._deliver([copy.deepcopy(point) for _ in range(150)])
    assert len(got) == 70 and dispatcher.events == 70


def test_a_handler_changing_raw_does_not_change_routing():
    """The series remembered for the next point is a copy: mutating ``event.raw`` is harmless."""
    got: list[Any] = []

    def meddle(event: Any) -> None:
        got.append(event.symbol)
        event.raw["series"]["symbol"] = "T"

    routes = RouteTable().updated(make_spec("TRADE", exchange="X", symbol="S"), (meddle,))
    dispatcher = make_dispatcher([])
    dispatcher.routes = routes
    point = copy.deepcopy(TRADE)
    point["series"].update(exchange="X", symbol="S")
    other = copy.deepcopy(point)
    other["series"]["symbol"] = "T"
    dispatcher._deliver([point, other])
    assert got == ["S"] and dispatcher.skipped == 1


# -- whole frames, under both parsers ----------------------------------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=frames(), compress=st.booleans())
def test_frames_match_under_each_parser(frame, compress, json_parser, monkeypatch):
    """Through ``_frame`` (parse, then route and decode) the fast path matches the general path."""
    try:
        payload = json.dumps({"points": frame}, allow_nan=False).encode()
    except (ValueError, OverflowError):
        return  # NaN and infinities are not JSON
    if compress:
        payload = brotli.compress(payload)
    results = []
    for general in (False, True):
        log: list[Any] = []
        dispatcher = make_dispatcher(log)
        with monkeypatch.context() as patch:
            if general:
                patch.setattr(FastPath, "run", general_only)
            patch.setattr(FastPath, "deliver", deliver_none)
            dispatcher._frame((payload, compress, 1, 1_700_000_000_123_456_789))
        results.append(([(name, signature(event)) for name, event in log],
                        [(type(e).__name__, str(e)) for e in dispatcher.errors_seen],  # type: ignore[attr-defined]
                        (dispatcher.events, dispatcher.skipped, dispatcher.decode_errors)))
    assert results[0] == results[1]


def test_malformed_frame_points_report_the_same_errors(json_parser):
    log: list[Any] = []
    dispatcher = make_dispatcher(log)
    bad = {"series": {"type": "TRADE", "exchange": "X", "symbol": "S"}, "trade": {"price": "x"}}
    dispatcher._frame((json.dumps({"points": [bad, 5, {"series": 3}]}).encode(), False, 1, 0))
    assert dispatcher.decode_errors == 3 and not log
    errors = dispatcher.errors_seen  # type: ignore[attr-defined]
    assert all(isinstance(e, DecodeError) for e in errors) and "price must be a number" in str(errors[0])


# -- a batch is decompressed ahead of its delivery (see Dispatcher._inflate_ahead) ------------------

def trade_frame(trade_id: str) -> bytes:
    point = {"series": {"type": "TRADE", "exchange": "X", "symbol": "S"},
             "trade": {"id": trade_id, "price": 1.0, "amount": 2.0, "timestamp": {"seconds": 1}}}
    return json.dumps({"points": [point]}).encode()


def test_a_batch_is_inflated_ahead_and_delivered_in_order_with_its_errors_in_place() -> None:
    log: list[Any] = []
    dispatcher = make_dispatcher(log)
    dispatcher.hooks.error = (log.append,)
    frames = [(brotli.compress(trade_frame("1")), True), (b"\x8b\x00 not brotli", True),
              (brotli.compress(trade_frame("2")), True), (trade_frame("3"), True),  # plain JSON, binary
              (trade_frame("4"), False)]
    items = [(payload, binary, 1, 0) for payload, binary in frames]
    ahead = dispatcher._inflate_ahead(items)
    assert [item[:2] for item in ahead] == [(trade_frame("1"), False), frames[1], (trade_frame("2"), False),
                                            (trade_frame("3"), False), (trade_frame("4"), False)]
    for payload, binary in frames:
        dispatcher.queue.put_frame(payload, binary, 1)
    dispatcher.queue.close_data()
    dispatcher._dispatch()
    seen = [entry[1].id if type(entry) is tuple else type(entry).__name__ for entry in log
            if type(entry) is not tuple or entry[0] == "h0"]
    assert seen == ["1", "DecodeError", "2", "3", "4"]
    assert dispatcher.events == 4 and dispatcher.decode_errors == 1


def test_inflating_ahead_holds_a_bounded_number_of_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from kiyotaka_ws import dispatch
    monkeypatch.setattr(dispatch, "INFLATE_AHEAD_BYTES", 5000)
    dispatcher = make_dispatcher([])
    big = json.dumps({"points": [], "pad": "x" * 3000}).encode()
    items = [(brotli.compress(big), True, 1, 0)] * 4
    ahead = dispatcher._inflate_ahead(items)
    assert [binary for _, binary, _, _ in ahead] == [False, False, True, True]  # 6,000 bytes ahead, then none
