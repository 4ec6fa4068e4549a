"""KiyotakaClient end to end against FakeKiyotakaServer over loopback."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from conftest import Collector, client_threads, wait_until

from kiyotaka_ws import (
    AuthenticationError,
    BookSnapshot,
    Channel,
    ConfigurationError,
    ConnectionStatus,
    EventsDropped,
    FundingRate,
    HandlerError,
    KiyotakaClient,
    Liquidation,
    OpenInterest,
    ServerError,
    State,
    SubscriptionError,
    Trade,
    TradeAggregation,
    VolumeProfile,
)
from kiyotaka_ws.testing import FakeKiyotakaServer, book_point, series, trade_point

EX, SYM = "BINANCE_FUTURES", "BTCUSDT"


def seven_points():
    s = lambda kind, **kw: series(kind, EX, SYM, **kw)
    ts = {"seconds": 1769058900, "nanoseconds": 5}
    return [
        trade_point(EX, SYM, price=90000.5, amount=0.25, side="SELL", id="t1"),
        {"series": s("TRADE_AGG", side="BUY"), "tradeAggregation": {"open": 1, "high": 2, "low": 0.5, "close": 1.5,
                                                                    "volume": 9, "timestamp": ts}},
        book_point(EX, SYM, bids=[(89975, 1.0), (89950, 2.0)], asks=[(90000, 3.0)]),
        {"series": s("LIQUIDATION", side="SELL"), "liquidation": {"id": "l1", "price": 89000, "amount": 1.5,
                                                                  "timestamp": ts}},
        {"series": s("FUNDING_RATE"), "fundingRate": {"fundingRate": 0.0001, "timestamp": ts}},
        {"series": s("OPEN_INTEREST"), "openInterest": {"openInterest": 72450.32, "timestamp": ts}},
        {"series": s("VOLUME_PROFILE_AGG", blockSize=25), "volumeProfileAggregation": {"profile": [1, 2, 3, 4, 5, 6],
                                                                                      "timestamp": ts}},
    ]


@pytest.mark.parametrize("compression", ["brotli", None])
def test_all_seven_channels_end_to_end(server, make_client, compression, json_parser):
    client = make_client(compression=compression)
    got = Collector()
    subs = [
        client.on_trade(got, exchange=EX, symbol=SYM),
        client.on_trade_agg(got, exchange=EX, symbol=SYM, batch_interval="1s"),
        client.on_book(got, exchange=EX, symbol=SYM, block_size=25, max_depth=50, update_frequency="1s"),
        client.on_liquidation(got, exchange=EX, symbol=SYM),
        client.on_funding_rate(got, exchange=EX, symbol=SYM),
        client.on_open_interest(got, exchange=EX, symbol=SYM),
        client.on_volume_profile(got, exchange=EX, symbol=SYM, quote="USD"),
    ]
    client.start()
    assert client.wait_ready(5)
    for sub in subs:
        sub.wait(5)
    assert server.publish(seven_points()) == 2  # one frame per family
    assert got.wait_for(7)
    by_type = {type(e): e for e in got.items}
    assert by_type[Trade].price == 90000.5 and by_type[Trade].side == "SELL"
    assert by_type[TradeAggregation].close == 1.5
    assert by_type[BookSnapshot].best_bid.price == 89975 and by_type[BookSnapshot].spread == 25
    assert by_type[Liquidation].id == "l1"
    assert by_type[FundingRate].rate == 0.0001 and by_type[FundingRate].predicted_rate is None
    assert by_type[OpenInterest].open_interest == 72450.32
    assert by_type[VolumeProfile].levels[1].price == 4
    # packed: one request per family (max_channels_per_request=50)
    subscribed = {channel["type"]: (r, channel) for r in server.requests("public/subscribe")
                  for channel in r.message["params"]["channels"]}
    assert len(server.requests("public/subscribe")) == 2
    assert subscribed["BLOCK_BOOK_SNAPSHOT"][0].family == "book" and subscribed["TRADE"][0].family == "nonbook"
    assert all(r.message["params"].get("compression") == compression for r, _ in subscribed.values())
    assert subscribed["TRADE_AGG"][1]["batchInterval"] == "1s"
    assert server.wait_for(lambda s: s.open_connections() == 2)
    stats = client.stats()
    assert stats["nonbook"].events == 6 and stats["book"].events == 1 and stats["book"].state is State.READY


def test_routing_and_order_across_symbols_and_multi_point_frames(server, make_client, json_parser):
    client = make_client()
    btc, eth, anyx, spot = Collector(), Collector(), Collector(), Collector()
    client.on_trade(btc, exchange=EX, symbol="BTCUSDT")
    client.on_trade(eth, exchange=EX, symbol="ETHUSDT")
    client.on_trade(anyx, exchange="*", symbol="BTCUSDT")
    client.on_trade(spot, exchange="*", symbol="BTCUSDT", category="SPOT")
    client.start()
    assert client.wait_ready(5)
    n = 300
    for start in range(0, n, 30):  # frames of 30 points, symbols and exchanges interleaved
        points = []
        for i in range(start, start + 30):
            points.append(trade_point(EX, "BTCUSDT" if i % 2 else "ETHUSDT", price=i, amount=1, id=i))
            if i % 10 == 0:
                points.append(trade_point("BYBIT_SPOT", "BTCUSDT", price=i, amount=1, id=f"s{i}", category="SPOT"))
        server.publish(points)
    assert btc.wait_for(n // 2) and eth.wait_for(n // 2) and anyx.wait_for(n // 2 + n // 10)
    assert [e.price for e in btc.items] == [float(i) for i in range(1, n, 2)]
    assert [e.price for e in eth.items] == [float(i) for i in range(0, n, 2)]
    assert [e.id for e in spot.items] == [f"s{i}" for i in range(0, n, 10)]
    assert {e.exchange for e in anyx.items} == {EX, "BYBIT_SPOT"}


def test_grouped_book_routes_by_coin(server, make_client):
    client = make_client()
    got = Collector()
    client.on_book(got, exchange="*", symbol="BTC", block_size=25, group_by_coin=True)
    client.start()
    assert client.wait_ready(5)
    assert server.subscriptions("book")[0]["groupByType"] == "1"
    server.publish([book_point(EX, None, coin="BTC", bids=[(1, 1)], asks=[(2, 1)]),
                    book_point(EX, None, coin="ETH", bids=[(1, 1)], asks=[(2, 1)])])
    assert got.wait_for(1)
    assert wait_until(lambda: client.stats()["book"].frames >= 2)
    assert len(got) == 1 and got.items[0].coin == "BTC" and got.items[0].symbol is None


@pytest.mark.parametrize("fault", ["drop", "close"])
def test_resubscribes_after_drop_and_clean_close(server, make_client, fault):
    client = make_client()
    got, statuses = Collector(), Collector()
    client.on_status(statuses)
    client.on_trade(got, exchange=EX, symbol=SYM)
    client.on_liquidation(got, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    server.publish([trade_point(EX, SYM, price=1, amount=1)])
    assert got.wait_for(1)
    if fault == "drop":
        server.drop_connections()
    else:
        server.close_connections(1000, "maintenance")
    assert wait_until(lambda: any(s.state is State.DISCONNECTED for s in statuses.items))
    assert server.wait_for(lambda s: s.connection_count == 2 and len(s.subscriptions()) == 2)
    assert client.wait_ready(5)
    server.publish([trade_point(EX, SYM, price=2, amount=1)])
    assert got.wait_for(2) and got.items[-1].price == 2
    states = [s.state for s in statuses.items]
    gap = states.index(State.DISCONNECTED)
    assert State.READY in states[:gap] and State.READY in states[gap:]
    reason = next(s.reason for s in statuses.items if s.state is State.DISCONNECTED)
    assert ("maintenance" in reason) if fault == "close" else ("close frame" in reason)
    assert client.stats()["nonbook"].reconnects == 1
    assert len(server.requests("public/authenticate")) == 2


def test_rejected_key_is_fatal_without_retry_storm(server, make_client, caplog):
    caplog.set_level(logging.DEBUG, logger="kiyotaka_ws")
    client = make_client(api_key="wrong-key-123")
    errors, statuses = Collector(), Collector()
    client.on_error(errors)
    client.on_status(statuses)
    client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
    with pytest.raises(AuthenticationError):
        client.run_forever()
    assert errors.wait_for(1) and isinstance(errors.items[0], AuthenticationError)
    assert statuses.items[-1].state is State.FAILED and client.stats()["nonbook"].state is State.FAILED
    time.sleep(0.3)  # would be several reconnects at this backoff if it kept retrying
    assert server.connection_count == 1
    assert "wrong-key-123" not in caplog.text and "wrong-key-123" not in str(errors.items[0])
    assert not client_threads()


def test_close_1008_during_auth_is_a_rejected_key(make_client):
    with FakeKiyotakaServer(api_key="k", auth_reply="silent") as silent_bad:
        client = make_client(silent_bad, api_key="nope")
        client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
        with pytest.raises(AuthenticationError, match="1008"):
            client.run_forever()
        assert silent_bad.connection_count == 1


def test_rejected_subscription_leaves_others_alone(server, make_client):
    server.reject_symbol("DOGEUSDT")
    client = make_client()
    errors, good = Collector(), Collector()
    client.on_error(errors)
    bad = client.on_trade(lambda e: None, exchange=EX, symbol="DOGEUSDT")
    ok = client.on_trade(good, exchange=EX, symbol=SYM)
    client.start()
    with pytest.raises(SubscriptionError) as info:
        bad.wait(5)
    assert info.value.code == -32602 and info.value.message == "INVALID_SYMBOL"
    assert info.value.channel["symbol"] == "DOGEUSDT"
    ok.wait(5)
    assert client.wait_ready(5)
    assert errors.wait_for(1) and isinstance(errors.items[0], SubscriptionError)
    server.publish([trade_point(EX, SYM, price=1, amount=1)])
    assert good.wait_for(1)


def test_handler_exceptions_are_reported_and_isolated(server, make_client):
    client = make_client()
    errors, good = Collector(), Collector()
    client.on_error(errors)

    def boom(event):
        raise RuntimeError("handler bug")

    client.on_trade(boom, exchange=EX, symbol=SYM)
    client.on_trade(good, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    server.publish([trade_point(EX, SYM, price=i, amount=1) for i in range(3)])
    assert good.wait_for(3) and errors.wait_for(3)
    err = errors.items[0]
    assert isinstance(err, HandlerError) and isinstance(err.__cause__, RuntimeError)
    assert err.handler is boom and isinstance(err.event, Trade)
    assert client.stats()["nonbook"].handler_errors == 3 and client.stats()["nonbook"].state is State.READY


def test_errors_without_handler_are_logged(server, make_client, caplog):
    client = make_client()
    client.on_trade(lambda e: 1 / 0, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    server.publish([trade_point(EX, SYM, price=1, amount=1)])
    assert wait_until(lambda: "ZeroDivisionError" in caplog.text)


def test_server_error_frame_and_garbage_keep_the_connection(server, make_client, json_parser):
    client = make_client()
    errors, got = Collector(), Collector()
    client.on_error(errors)
    client.on_trade(got, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    server.send_error("INTERNAL_ERROR", message="oops", retry_after=3)
    server.publish_raw(b"\x99not brotli")
    server.publish_raw('{"points": [{"series": {"type": "TRADE", "symbol": "BTCUSDT", "exchange": "BINANCE_FUTURES"}, '
                       '"trade": {"price": "x"}}]}')
    server.publish([trade_point(EX, SYM, price=7, amount=1)])
    assert got.wait_for(1) and got.items[0].price == 7 and errors.wait_for(3)
    kinds = [type(e).__name__ for e in errors.items]
    assert kinds == ["ServerError", "DecodeError", "DecodeError"]
    assert isinstance(errors.items[0], ServerError) and errors.items[0].code == "INTERNAL_ERROR"
    assert client.stats()["nonbook"].decode_errors == 2 and client.stats()["nonbook"].reconnects == 0


def gated_trades(client, got):
    """Register a trade handler stuck until ``release`` is set, then recording into ``got``.

    Returns (entered, release): ``entered`` is set once the handler holds its first event.
    """
    entered, release = threading.Event(), threading.Event()

    def slow(event):
        entered.set()
        release.wait(30)  # released by the test; the bound only keeps a failing test from hanging
        got(event)

    client.on_trade(slow, exchange=EX, symbol=SYM)
    return entered, release


def test_overflow_block_loses_nothing(server, make_client):
    client = make_client(queue_size=10, overflow="block")
    got = Collector()
    _, release = gated_trades(client, got)
    client.start()
    assert client.wait_ready(5)
    for i in range(200):
        server.publish([trade_point(EX, SYM, price=i, amount=1)])
    assert wait_until(lambda: client.stats()["nonbook"].queue_depth >= 9)
    release.set()
    assert got.wait_for(200)
    assert [e.price for e in got.items] == [float(i) for i in range(200)]
    assert client.stats()["nonbook"].dropped == 0


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_overflow_drop_policies_report_and_keep_the_connection(server, make_client, policy):
    client = make_client(queue_size=5, overflow=policy)
    got, errors = Collector(), Collector()
    client.on_error(errors)
    entered, release = gated_trades(client, got)
    client.start()
    assert client.wait_ready(5)
    server.publish([trade_point(EX, SYM, price=0, amount=1)])
    assert entered.wait(5)  # the dispatcher holds frame 0 and nothing else
    for i in range(1, 100):
        server.publish([trade_point(EX, SYM, price=i, amount=1)])
    # Frame 0 is in the handler's batch (still counted: it holds room until it is done); frames
    # 1..99, read while the handler is stuck, are each either queued or dropped.
    assert wait_until(lambda: client.stats()["nonbook"].queue_depth + client.stats()["nonbook"].dropped == 100)
    release.set()
    assert wait_until(lambda: len(got) + client.stats()["nonbook"].dropped == 100)
    stats = client.stats()["nonbook"]
    # Drops are reported in aggregate as the dispatcher catches up; they add up to the counter.
    assert wait_until(lambda: sum(e.count for e in errors.of(EventsDropped)) == stats.dropped > 0)
    assert stats.reconnects == 0 and stats.state is State.READY
    prices = [e.price for e in got.items]
    assert prices == sorted(prices)
    if policy == "drop_oldest":
        assert prices[-1] == 99.0
    else:
        assert 99.0 not in prices


def test_stop_from_inside_a_handler(server, make_client):
    client = make_client()
    seen = Collector()

    def stopper(event):
        seen(event)
        client.stop()

    client.on_trade(stopper, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    server.publish([trade_point(EX, SYM, price=1, amount=1)])
    assert seen.wait_for(1)
    assert wait_until(lambda: not client_threads())
    assert client.stats()["nonbook"].state is State.STOPPED


def test_run_forever_returns_on_stop_from_another_thread(server, make_client):
    client = make_client()
    client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
    timer = threading.Timer(0.5, client.stop)
    timer.start()
    started = time.monotonic()
    client.run_forever()
    timer.join()
    assert time.monotonic() - started < 5 and not client_threads()


def test_register_after_start_opens_other_family_and_shares_wire_subscriptions(server, make_client):
    client = make_client()
    a, b = Collector(), Collector()
    sub_a = client.on_trade(a, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    assert server.open_connections("book") == 0  # no book subscription yet: no book connection
    sub_b = client.on_trade(b, exchange=EX, symbol=SYM)  # identical spec: no second wire subscription

    @client.on_book(exchange=EX, symbol=SYM, block_size="25")
    def on_book(snapshot):
        b(snapshot)

    assert callable(on_book)
    assert server.wait_for(lambda s: s.open_connections("book") == 1 and len(s.subscriptions("book")) == 1)
    assert client.wait_ready(5)
    assert len(server.requests("public/subscribe", "nonbook")) == 1
    server.publish([trade_point(EX, SYM, price=1, amount=1), book_point(EX, SYM, bids=[(1, 1)], asks=[(2, 2)])])
    assert a.wait_for(1) and b.wait_for(2)
    sub_a.unsubscribe()
    assert server.requests("public/unsubscribe") == []  # b still listens
    sub_b.unsubscribe()
    sub_b.unsubscribe()  # idempotent
    assert server.wait_for(lambda s: len(s.requests("public/unsubscribe")) == 1)
    assert server.requests("public/unsubscribe")[0].message["params"]["channels"] == [sub_a.params]
    server.publish([trade_point(EX, SYM, price=2, amount=1)])
    time.sleep(0.2)  # nothing may arrive: there is no handler left to wait on
    assert len(a) == 1


def test_silent_server_still_becomes_ready(make_client):
    with FakeKiyotakaServer(api_key="k", auth_reply="silent", subscribe_reply="silent") as quiet:
        client = make_client(quiet, api_key="k", auth_timeout=0.3, subscribe_timeout=0.5)
        got = Collector()
        sub = client.on_trade(got, exchange=EX, symbol=SYM)
        client.start()
        with pytest.raises(TimeoutError):
            sub.wait(0.1)
        assert client.wait_ready(5)
        sub.wait(1)  # settled by assumption after subscribe_timeout
        quiet.publish([trade_point(EX, SYM, price=1, amount=1)])
        assert got.wait_for(1)


def test_context_manager_stats_after_stop_and_repr(server, make_client):
    client = make_client(api_key="test-key")
    got = Collector()
    client.on_trade(got, exchange=EX, symbol=SYM)
    with client:
        assert client.wait_ready(5)
        server.publish([trade_point(EX, SYM, price=1, amount=1)])
        assert got.wait_for(1)
    stats = client.stats()
    assert stats["nonbook"].events == 1 and stats["nonbook"].state is State.STOPPED
    assert stats["book"].state is State.UNUSED and stats["book"].frames == 0  # never subscribed: never down
    assert "test-key" not in repr(client) and "***" in repr(client)
    assert not client_threads()


def test_api_key_never_logged(server, make_client, caplog):
    # The client's loggers at their most verbose (the fake server's own log is not the client's).
    caplog.set_level(logging.DEBUG, logger="kiyotaka_ws")
    caplog.set_level(logging.DEBUG, logger="websocket")
    client = make_client()
    client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    server.drop_connections()
    assert server.wait_for(lambda s: s.connection_count == 2)
    assert client.wait_ready(5)
    client.stop()
    assert caplog.text and "test-key" not in caplog.text


def test_configuration_errors_name_the_argument(monkeypatch):
    bad = {"region": "mars", "compression": "gzip", "reconnect": "yes", "backoff_initial": 0,
           "backoff_max": -1, "ping_interval": 0, "stale_timeout": float("nan"), "auth_timeout": -1,
           "queue_size": 0, "overflow": "explode", "max_frame_bytes": 10, "sslopt": [1],
           "proxy": "ftp://x", "book_url": "http://x", "nonbook_url": "ws://"}
    for name, value in bad.items():
        with pytest.raises(ConfigurationError, match=f"^{name}:"):
            KiyotakaClient("k", **{name: value})
    with pytest.raises(ConfigurationError, match="^api_key:"):
        KiyotakaClient("")
    client = KiyotakaClient("k")
    with pytest.raises(ConfigurationError, match="^handler:"):
        client.on_trade("not callable", exchange=EX, symbol=SYM)
    with pytest.raises(ValueError):  # ConfigurationError is a ValueError too
        client.on_book(print, exchange=EX, symbol=SYM, block_size=-5)
    monkeypatch.delenv("KIYOTAKA_API_KEY", raising=False)
    keyless = KiyotakaClient()
    keyless.on_trade(print, exchange=EX, symbol=SYM)
    with pytest.raises(ConfigurationError, match="KIYOTAKA_API_KEY"):
        keyless.start()
    monkeypatch.setenv("KIYOTAKA_API_KEY", "from-env")
    assert "from-env" not in repr(KiyotakaClient())


def test_urls_get_encoding_json():
    client = KiyotakaClient("k", region="europe", nonbook_url="ws://h:1/nonbook/ws?x=1")
    assert client._urls["book"] == "wss://eu-de3.ws.api.kiyotaka.ai/ws?encoding=json"
    assert client._urls["nonbook"] == "ws://h:1/nonbook/ws?x=1&encoding=json"


def test_generic_subscribe_and_status_type(server, make_client):
    client = make_client()
    got, statuses = Collector(), Collector()
    client.on_status(statuses)
    sub = client.subscribe("trade_agg", got, exchange=EX, symbol=SYM, params={"batchInterval": "5s"})
    assert sub.channel is Channel.TRADE_AGG and sub.params["batchInterval"] == "5s"
    client.start()
    sub.wait(5)
    assert isinstance(statuses.items[0], ConnectionStatus) and statuses.items[0].family == "nonbook"
