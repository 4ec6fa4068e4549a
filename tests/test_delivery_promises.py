"""The delivery promises, held per call: unsubscribe() and stop() per handler call, conflation per
series, queue_delay on the worst wait of a frame, and drop_oldest keeping the newest frames even
when the batch in flight fills the queue (issues 19 and 26)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

from conftest import Collector, wait_until

from kiyotaka_ws import EventsDropped
from kiyotaka_ws.channels import Channel, make_spec
from kiyotaka_ws.dispatch import Conflated, Dispatcher, EventQueue, Hooks
from kiyotaka_ws.protocol import FrameDecoder
from kiyotaka_ws.testing import book_point, trade_point

EX, SYM = "X", "BTCUSDT"
T0 = 1_700_000_000_000_000_000


# -- 1. unsubscribe() holds per handler call ---------------------------------------------------------

def test_a_handler_unsubscribed_by_another_handler_of_the_same_point_is_not_called(server, make_client):
    client = make_client()
    second_calls: list[float] = []
    first_calls: list[float] = []
    subs: dict[str, Any] = {}

    def first(event: Any) -> None:
        first_calls.append(event.price)
        subs["second"].unsubscribe()  # returns before the second handler's turn on this very point

    client.on_trade(first, exchange=EX, symbol=SYM)
    subs["second"] = client.on_trade(lambda e: second_calls.append(e.price), exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    server.publish([trade_point(EX, SYM, price=i, amount=1) for i in range(20)])
    assert wait_until(lambda: len(first_calls) == 20)
    assert second_calls == []


def test_unsubscribe_from_another_thread_no_call_starts_after_it_returns(server, make_client):
    """Points stream through two handlers while another thread unsubscribes one of them: once
    unsubscribe() has returned, that handler never starts (nor is it still running)."""
    client = make_client()
    returned = threading.Event()
    late: list[float] = []
    running = threading.Event()
    calls = Collector()

    def watched(event: Any) -> None:
        if returned.is_set():
            late.append(event.price)
        running.set()
        time.sleep(0.002)  # a call is often in progress when unsubscribe() comes
        running.clear()

    client.on_trade(calls, exchange=EX, symbol=SYM)
    sub = client.on_trade(watched, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    for i in range(40):
        server.publish([trade_point(EX, SYM, price=i * 10 + j, amount=1) for j in range(10)])
    assert calls.wait_for(50)
    still_running: list[bool] = []

    def unsubscriber() -> None:
        sub.unsubscribe()
        still_running.append(running.is_set())
        returned.set()

    thread = threading.Thread(target=unsubscriber)
    thread.start()
    thread.join(10)
    assert calls.wait_for(400, timeout=20)
    assert late == [] and still_running == [False]


# -- 2. stop() holds per call, for every kind of callback --------------------------------------------

HANDLERS = 12


def _many_handlers(client: Any, returned: threading.Event, late: list[str], on_first: Any = None) -> Collector:
    first = Collector()

    def make(i: int) -> Any:
        def handler(event: Any) -> None:
            if returned.is_set():
                late.append(f"handler {i}")
            time.sleep(0.001)  # a point takes ~12 ms: stop() comes in the middle of one
            if i == 0:
                first(event)
                if on_first is not None:
                    on_first(event)
            if i == HANDLERS - 1:
                raise RuntimeError("and on_error after it")
        return handler

    for i in range(HANDLERS):
        client.on_trade(make(i), exchange=EX, symbol=SYM)
    client.on_error(lambda e: late.append("on_error") if returned.is_set() else None)
    client.on_status(lambda s: late.append("on_status") if returned.is_set() else None)
    return first


def test_no_callback_starts_after_stop_returns_from_another_thread(server, make_client):
    client = make_client()
    returned = threading.Event()
    late: list[str] = []
    first = _many_handlers(client, returned, late)
    client.start()
    assert client.wait_ready(5)
    for i in range(50):
        server.publish([trade_point(EX, SYM, price=i * 10 + j, amount=1) for j in range(10)])
    assert first.wait_for(5)

    def stopper() -> None:
        client.stop(0.0)  # the worst case: no time for the dispatcher to finish
        returned.set()

    thread = threading.Thread(target=stopper)
    thread.start()
    thread.join(10)
    time.sleep(0.3)  # give a broken dispatcher the chance to call something (nothing must come)
    assert late == []


def test_no_callback_starts_after_stop_returns_in_a_handler(server, make_client):
    client = make_client()
    returned = threading.Event()
    late: list[str] = []

    def stop_now(event: Any) -> None:
        client.stop()
        returned.set()  # still in handler 0: handlers 1.. of this point and on_error must not follow

    first = _many_handlers(client, returned, late, on_first=stop_now)
    client.start()
    assert client.wait_ready(5)
    server.publish([trade_point(EX, SYM, price=j, amount=1) for j in range(10)])
    assert first.wait_for(1)
    assert wait_until(lambda: returned.is_set())
    time.sleep(0.2)
    assert late == [] and len(first) == 1


# -- 4. conflation per series ------------------------------------------------------------------------

def _book_dispatcher() -> Dispatcher:
    return Dispatcher("book", EventQueue(100, "block"), Hooks(), FrameDecoder(2**24),
                      lambda *args: None, lambda error: None)


def _book(symbol: str, price: float, **extra: Any) -> dict[str, Any]:
    point = book_point(EX, symbol, bids=[(price, 1.0)], asks=[], block_size=10, time_ns=T0 + int(price))
    point["blockBookSnapshot"].update(extra)
    return point


def _spec(symbol: str) -> Any:
    return make_spec(Channel.BLOCK_BOOK_SNAPSHOT, exchange=EX, symbol=symbol, options={"block_size": 10})


def test_conflation_a_malformed_newer_snapshot_does_not_hide_the_last_good_one():
    got: list[Any] = []
    dispatcher = _book_dispatcher()
    dispatcher.routes = dispatcher.routes.updated(_spec("A"), (Conflated(got.append),))
    frames = [[_book("A", 1.0)], [_book("A", 2.0)], [_book("A", 3.0, bids="not a list")]]
    for points in frames:
        dispatcher.queue.put_frame(json.dumps({"points": points}).encode(), False)
    dispatcher.queue.close_data()
    dispatcher._dispatch()
    assert [e.bids[0].price for e in got] == [2.0] and dispatcher.decode_errors == 1


def test_conflation_a_handler_registered_mid_batch_gets_the_newest_of_its_series():
    got: list[Any] = []
    dispatcher = _book_dispatcher()
    dispatcher.routes = dispatcher.routes.updated(_spec("C"), (Conflated(lambda e: None),))  # batch conflates

    def register(event: Any) -> None:  # a plain handler on A registers a conflated one on B
        dispatcher.routes = dispatcher.routes.updated(_spec("B"), (Conflated(got.append),))

    dispatcher.routes = dispatcher.routes.updated(_spec("A"), (register,))
    for point in (_book("B", 1.0), _book("A", 0.0), _book("B", 2.0), _book("B", 3.0)):
        dispatcher.queue.put_frame(json.dumps({"points": [point]}).encode(), False)
    dispatcher.queue.close_data()
    dispatcher._dispatch()
    assert [e.bids[0].price for e in got] == [3.0]


# -- 9. queue_delay shows the worst wait of a frame --------------------------------------------------

def test_queue_delay_shows_the_lag_a_slow_handler_causes_inside_a_frame(server, make_client):
    client = make_client()
    got = Collector()

    def slow(event: Any) -> None:
        time.sleep(0.02)
        got(event)

    client.on_trade(slow, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    server.publish([trade_point(EX, SYM, price=i, amount=1) for i in range(15)])
    assert got.wait_for(15)
    delay = client.stats()["nonbook"].queue_delay
    assert delay is not None and delay.max >= 14 * 0.02 and delay.count == 2


# -- issue 26: drop_oldest keeps the newest, even when the batch in flight fills the queue ------------

def test_queue_drop_oldest_drops_the_undelivered_rest_of_the_batch_in_flight_first():
    queue = EventQueue(capacity=4, policy="drop_oldest")
    for i in range(4):
        queue.put_frame(bytes([i]), False)
    batch, _, _ = queue.take()
    assert len(batch) == 4
    assert queue.claims.popleft()[0] == 0  # the dispatcher holds frame 0
    for i in range(4, 10):
        queue.put_frame(bytes([i]), False)
    assert queue.depth == 4 and queue.dropped_total == 6  # 1, 2, 3 from the batch, then 4, 5, 6
    assert not queue.claims
    batch, dropped, _ = queue.take()
    assert [item[0][0] for item in batch] == [7, 8, 9] and dropped == 6


def test_queue_drop_oldest_lets_the_newest_in_when_only_the_frame_being_delivered_holds_the_room():
    queue = EventQueue(capacity=1, policy="drop_oldest")
    queue.put_frame(b"a", False)
    queue.take()
    queue.claims.popleft()  # being delivered
    queue.put_frame(b"b", False)
    queue.put_frame(b"c", False)
    assert queue.dropped_total == 1 and queue.depth == 2
    assert [item[0] for item in queue.take()[0]] == [b"c"]


def _big_trade(i: int) -> dict[str, Any]:
    return trade_point(EX, SYM, price=i, amount=1, id="x" * 10_000)


def test_drop_oldest_when_the_batch_in_flight_fills_the_queue_the_newest_is_delivered(server, make_client):
    """Frames of ~10 kB, max_queue_bytes 95 kB: the handler holds (small) frame 0 while 1..9 queue up; then it
    takes them as one batch (90 kB in flight) and blocks on frame 1 while 10..59 arrive."""
    client = make_client(compression=None, queue_size=1000, max_queue_bytes=95_000, overflow="drop_oldest")
    got, errors = Collector(), Collector()
    gates = {0: threading.Event(), 1: threading.Event()}
    entered = {0: threading.Event(), 1: threading.Event()}

    def handler(event: Any) -> None:
        price = int(event.price)
        if price in gates:
            entered[price].set()
            gates[price].wait(30)
        got(price)

    client.on_trade(handler, exchange=EX, symbol=SYM)
    client.on_error(errors)
    client.start()
    assert client.wait_ready(5)
    server.publish([trade_point(EX, SYM, price=0, amount=1)])  # a small frame 0
    assert entered[0].wait(5)
    for i in range(1, 10):
        server.publish([_big_trade(i)])
    assert wait_until(lambda: client.stats()["nonbook"].queue_depth == 10)
    gates[0].set()
    assert entered[1].wait(5)  # frames 1..9 are the batch in flight, 9 of 10 frames' worth of bytes
    for i in range(10, 60):
        server.publish([_big_trade(i)])
    stats = client.stats
    assert wait_until(lambda: stats()["nonbook"].queue_depth + stats()["nonbook"].dropped == 59)
    gates[1].set()
    assert wait_until(lambda: len(got) + stats()["nonbook"].dropped == 60)
    assert got.items[-1] == 59 and got.items == sorted(got.items)
    assert wait_until(lambda: sum(e.count for e in errors.of(EventsDropped)) == stats()["nonbook"].dropped > 0)


def test_drop_oldest_under_cpu_contention_always_delivers_the_newest(server, make_client):
    """The round-1 scenario (a handler blocks on point 0 of a 10-frame burst, 50 more arrive) while
    another process keeps a core busy: the newest point arrives every time."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for _ in range(3):
            client = make_client(queue_size=10, overflow="drop_oldest")
            got = Collector()
            gate, entered = threading.Event(), threading.Event()

            def handler(event: Any, gate: threading.Event = gate, entered: threading.Event = entered,
                        got: Collector = got) -> None:
                if event.price == 0:
                    entered.set()
                    gate.wait(30)
                got(event.price)

            client.on_trade(handler, exchange=EX, symbol=SYM)
            client.start()
            assert client.wait_ready(5)
            for i in range(10):
                server.publish([trade_point(EX, SYM, price=i, amount=1)])
            assert entered.wait(5)
            for i in range(10, 60):
                server.publish([trade_point(EX, SYM, price=i, amount=1)])
            stats = client.stats
            assert wait_until(lambda s=stats: s()["nonbook"].frames >= 60)
            gate.set()
            assert wait_until(lambda s=stats, g=got: len(g) + s()["nonbook"].dropped == 60)
            assert got.items[-1] == 59.0 and got.items == sorted(got.items)
            client.stop()
    finally:
        burner.kill()
        burner.wait(5)
