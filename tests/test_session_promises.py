"""Issue 19, items 3, 5, 6, 7, 8: the session keeps its promises at every call.

Each test goes through the real client against a real server on loopback (the bundled fake, or a
raw socket server for what no well-behaved server does) and fails on the code before the fix.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from conftest import Collector, wait_until
from test_core import _RawServer

from kiyotaka_ws import ConnectionFailedError, KiyotakaClient, State, SubscriptionError
from kiyotaka_ws.testing import FakeKiyotakaServer, trade_point

EX, SYM = "BINANCE_FUTURES", "BTCUSDT"


def _outcome(fn, *args):
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001
        return exc
    return "returned"


# -- item 3 ----------------------------------------------------------------------------------------

def test_3_wait_returns_when_unsubscribed_while_the_answer_is_outstanding(make_client):
    """A wait() without timeout on a subscription unsubscribed before the server answered (from
    another thread, at the worst moment: the subscribe is on the wire) returns, and so does one
    still waiting when stop() runs."""
    with FakeKiyotakaServer(api_key="test-key", subscribe_reply="silent") as srv:
        client = make_client(srv, subscribe_timeout=60)
        first = client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
        second = client.on_trade(lambda e: None, exchange=EX, symbol="ETHUSDT")
        client.start()
        assert srv.wait_for(lambda s: sum(len(r.message["params"]["channels"])
                                          for r in s.requests("public/subscribe")) == 2)
        outcomes: list[object] = []
        waiters = [threading.Thread(target=lambda s=s: outcomes.append(_outcome(s.wait)), daemon=True)
                   for s in (first, second)]
        for waiter in waiters:
            waiter.start()
        time.sleep(0.1)  # both are inside wait()
        first.unsubscribe()
        waiters[0].join(2)
        assert not waiters[0].is_alive(), "wait() still blocked after unsubscribe()"
        assert outcomes == ["returned"]
        second.unsubscribe()
        client.stop()
        waiters[1].join(2)
        assert not waiters[1].is_alive(), "wait() still blocked after unsubscribe() and stop()"
        assert outcomes == ["returned", "returned"]
        assert first.wait() is None and second.wait() is None  # and at once afterwards


# -- item 5 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("compress_replies", [False, True], ids=["text-answers", "brotli-answers"])
def test_5_a_rejection_reaches_a_wait_blocked_in_a_handler(make_client, compress_replies):
    """A handler blocks in sub.wait() on a subscription the server rejects: the rejection is not
    queued behind that handler, so SubscriptionError arrives at once, not a success after
    subscribe_timeout."""
    with FakeKiyotakaServer(api_key="test-key", compress_replies=compress_replies) as srv:
        srv.reject_symbol("NOPE")
        client = make_client(srv, subscribe_timeout=30)
        outcome: list[object] = []
        took: list[float] = []

        def handler(event):
            if outcome:
                return
            bad = client.on_trade(lambda e: None, exchange=EX, symbol="NOPE")
            started = time.monotonic()
            outcome.append(_outcome(bad.wait))
            took.append(time.monotonic() - started)

        good = client.on_trade(handler, exchange=EX, symbol=SYM)
        client.start()
        good.wait(5)
        srv.publish([trade_point(EX, SYM, price=1.0, amount=1.0)])
        assert wait_until(lambda: outcome, timeout=8), "no answer reached the wait() in the handler"
        assert isinstance(outcome[0], SubscriptionError), outcome
        assert took[0] < 3.0, took


def test_5_wait_ready_in_on_status_sees_the_answers_at_once(make_client):
    """wait_ready() called from on_status (the dispatcher thread) returns as soon as the server
    answered, not after auth_timeout + subscribe_timeout."""
    with FakeKiyotakaServer(api_key="test-key") as srv:
        client = make_client(srv, auth_timeout=20, subscribe_timeout=20)
        took: list[float] = []

        def on_status(status):
            if status.state is State.CONNECTING and not took:
                started = time.monotonic()
                assert client.wait_ready(30)
                took.append(time.monotonic() - started)

        client.on_status(on_status)
        client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
        client.start()
        assert wait_until(lambda: took, timeout=10), "wait_ready() in on_status did not return"
        assert took[0] < 3.0, took


# -- item 6 ----------------------------------------------------------------------------------------

BIG_FRAME_BYTES = 2 * 2**20
RATE = 512 * 2**10  # bytes per second: the big frame takes ~4 s, far beyond every timeout below


def _slow_big_frame(conn: socket.socket, stop: threading.Event) -> None:
    """Send one ~2 MB data frame at 512 KiB/s, then stay open and silent."""
    point = trade_point(EX, SYM, price=90000.0, amount=0.5)
    body = {"points": [point], "pad": ""}
    pad = BIG_FRAME_BYTES - len(json.dumps(body))
    payload = json.dumps({"points": [point], "pad": "x" * pad}).encode()
    frame = bytes([0x81, 127]) + len(payload).to_bytes(8, "big") + payload
    chunk = 16 * 2**10
    started = time.monotonic()
    for sent in range(0, len(frame), chunk):
        if stop.is_set():
            return
        conn.sendall(frame[sent:sent + chunk])
        delay = started + (sent + chunk) / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    stop.wait(20)


def test_6_a_large_frame_on_a_slow_link_is_delivered_not_killed():
    """Bytes of a frame still arriving prove the link is alive: neither the ping timer (0.5 s)
    nor the stale timer (1 s) kills a 2 MB frame arriving over ~4 s."""
    server = _RawServer(_slow_big_frame)
    client = KiyotakaClient(api_key="k", nonbook_url=server.url, ping_interval=0.3, ping_timeout=0.5,
                            stale_timeout=1.0, auth_timeout=30, backoff_initial=0.05, backoff_max=0.1)
    got = Collector()
    statuses = Collector()
    client.on_status(statuses)
    client.on_trade(got, exchange=EX, symbol=SYM)
    try:
        client.start()
        assert got.wait_for(1, timeout=20), [s.reason for s in statuses.items]
        assert got.items[0].price == 90000.0
        assert server.connections == 1
        assert not [s for s in statuses.items if s.state is State.DISCONNECTED], statuses.items
    finally:
        client.stop()
        server.close()


# -- item 7 ----------------------------------------------------------------------------------------

def _silent_after_upgrade(conn: socket.socket, stop: threading.Event) -> None:
    stop.wait(20)  # reads nothing, sends nothing: not even a pong


def test_7_ready_needs_something_from_the_server():
    """A link silent from the upgrade on is never READY, however the timers run out; a server
    that answers nothing but pongs is."""
    server = _RawServer(_silent_after_upgrade)
    client = KiyotakaClient(api_key="k", nonbook_url=server.url, auth_timeout=0.1, subscribe_timeout=0.2,
                            ping_interval=5, ping_timeout=5, backoff_initial=0.05, backoff_max=0.1)
    statuses = Collector()
    client.on_status(statuses)
    client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
    try:
        client.start()
        assert client.wait_ready(1.5) is False
        assert not [s for s in statuses.items if s.state is State.READY], statuses.items
    finally:
        client.stop()
        server.close()
    with FakeKiyotakaServer(api_key="test-key", auth_reply="silent", subscribe_reply="silent") as srv:
        client = KiyotakaClient(**srv.client_kwargs(), auth_timeout=0.1, subscribe_timeout=0.2)
        client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
        try:
            client.start()
            assert client.wait_ready(3)  # the pong to the ping sent for the purpose proves it
        finally:
            client.stop()


# -- item 8 ----------------------------------------------------------------------------------------

def test_8_the_fatal_error_wins_over_stopped():
    """After HTTP 404 at the upgrade, run_forever() raises ConnectionFailedError, and so does every
    later Subscription.wait() (not ClientStoppedError), with or without a timeout."""
    with FakeKiyotakaServer(api_key="test-key") as srv:
        client = KiyotakaClient(api_key="test-key", nonbook_url=f"ws://127.0.0.1:{srv.port}/wrong/path")
        sub = client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
        with pytest.raises(ConnectionFailedError) as failed:
            client.run_forever()
        assert isinstance(_outcome(sub.wait), ConnectionFailedError)
        assert _outcome(sub.wait, 1.0) is failed.value


def test_5_no_silence_is_concluded_while_the_reader_waits_behind_a_handler():
    """The pure rule behind the auth and subscribe timeouts: while the reader waits on a full
    queue (a blocked handler), and for a whole timeout after it last did, an unanswered request
    is not concluded silent (the answer may be in the socket, unread)."""
    from kiyotaka_ws.session import answer_due

    assert answer_due(10.0, 10.0, 0.0, False, now=9.0) == 10.0
    assert answer_due(10.0, 10.0, 0.0, False, now=10.0) is None       # due: assumed
    assert answer_due(10.0, 10.0, 0.0, True, now=30.0) == 30.5        # blocked: never, look again soon
    assert answer_due(10.0, 10.0, 25.0, False, now=30.0) == 35.0      # unblocked at 25: a full timeout more
    assert answer_due(10.0, 10.0, 25.0, False, now=35.0) is None
