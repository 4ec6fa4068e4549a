"""FakeKiyotakaServer over a real socket, driven by a plain websocket-client connection."""

from __future__ import annotations

import json
import time

import brotli
import pytest
import websocket
from conftest import wait_until

from kiyotaka_ws.testing import FakeKiyotakaServer, book_point, trade_point

TRADE_CHANNEL = {"type": "TRADE", "exchange": "BINANCE_FUTURES", "symbol": "BTCUSDT", "category": "*"}


def connect(server, path="/nonbook/ws", token="test-key"):
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}{path}?encoding=json", timeout=5)
    ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "public/authenticate", "params": {"token": token}}))
    return ws


def subscribe(ws, channel, req_id=2, compression=None):
    params = {"channels": [channel], "version": "v2"}
    if compression:
        params["compression"] = compression
    ws.send(json.dumps({"jsonrpc": "2.0", "id": req_id, "method": "public/subscribe", "params": params}))
    return json.loads(ws.recv())


def test_auth_subscribe_publish_plain(server):
    ws = connect(server)
    assert json.loads(ws.recv()) == {"jsonrpc": "2.0", "id": 1, "result": {"authenticated": True}}
    assert subscribe(ws, TRADE_CHANNEL)["result"] is not None
    other = trade_point("BINANCE_FUTURES", "ETHUSDT", price=1, amount=1)
    mine = trade_point("BINANCE_FUTURES", "BTCUSDT", price=2, amount=3, id=5)
    assert server.publish([other, mine]) == 1
    frame = json.loads(ws.recv())
    assert frame == {"points": [mine]}  # routed: only the matching point
    assert [r.method for r in server.received] == ["public/authenticate", "public/subscribe"]
    assert "test-key" not in repr(server.received)  # the token is masked in reprs
    ws.close()


def test_brotli_frames_and_unsubscribe(server):
    ws = connect(server)
    ws.recv()
    subscribe(ws, TRADE_CHANNEL, compression="brotli")
    server.publish([trade_point("BINANCE_FUTURES", "BTCUSDT", price=2, amount=3)])
    opcode, data = ws.recv_data()
    assert opcode == websocket.ABNF.OPCODE_BINARY
    assert json.loads(brotli.decompress(data))["points"][0]["trade"]["price"] == 2
    ws.send(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "public/unsubscribe",
                        "params": {"channels": [TRADE_CHANNEL]}}))
    assert json.loads(ws.recv())["id"] == 3
    assert server.subscriptions() == []
    assert server.publish([trade_point("BINANCE_FUTURES", "BTCUSDT", price=2, amount=3)]) == 0
    ws.close()


def test_book_family_and_grouped_routing(server):
    ws = connect(server, "/ws")
    ws.recv()
    subscribe(ws, {"type": "BLOCK_BOOK_SNAPSHOT", "exchange": "*", "symbol": "BTC", "category": "*",
                   "blockSize": "25", "groupByType": "1"})
    point = book_point("BYBIT", None, coin="BTC", bids=[(1, 2)], asks=[(3, 4)])
    assert server.publish([point], family="nonbook") == 0
    assert server.publish([point]) == 1
    assert json.loads(ws.recv())["points"][0]["blockBookSnapshot"]["bids"] == [1, 2]
    ws.close()


def test_bad_key_is_answered_and_closed(server):
    ws = connect(server, token="wrong")
    answer = json.loads(ws.recv())
    assert answer["id"] == 1 and answer["error"]["message"] == "INVALID_API_KEY"
    opcode, frame = ws.recv_data_frame(True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(frame.data[:2], "big") == 4001


def test_reject_symbol_and_silent_modes(server):
    server.reject_symbol("DOGEUSDT")
    ws = connect(server)
    ws.recv()
    answer = subscribe(ws, {**TRADE_CHANNEL, "symbol": "DOGEUSDT"})
    assert answer["error"] == {"code": -32602, "message": "INVALID_SYMBOL"}
    ws.close()
    with FakeKiyotakaServer(api_key="k", auth_reply="silent", subscribe_reply="silent") as quiet:
        ws = connect(quiet, token="k")
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "public/subscribe",
                            "params": {"channels": [TRADE_CHANNEL]}}))
        assert quiet.wait_subscribed(1)
        ws.settimeout(0.3)
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv()  # no answer to either request
        ws.close()


def test_faults(server):
    ws = connect(server)
    ws.recv()
    subscribe(ws, TRADE_CHANNEL)
    assert server.publish_raw(b"\x00\x01garbage") == 1
    assert ws.recv_data()[1] == b"\x00\x01garbage"
    assert server.send_error({"code": 500, "message": "boom"}) == 1
    assert json.loads(ws.recv()) == {"error": {"code": 500, "message": "boom"}}
    server.set_silent(True)
    assert server.publish([trade_point("BINANCE_FUTURES", "BTCUSDT", price=1, amount=1)]) == 0
    server.set_silent(False)
    server.close_connections(4002, "bye")
    opcode, frame = ws.recv_data_frame(True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(frame.data[:2], "big") == 4002
    ws2 = connect(server)
    ws2.recv()
    assert server.wait_for(lambda s: s.open_connections() == 1)
    assert server.drop_connections() == 1
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        ws2.recv()  # a reset, no close frame
    assert server.connection_count == 2


def test_restart_on_same_port_and_404():
    server = FakeKiyotakaServer().start()
    port = server.port
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=2)
    server.start()
    assert server.port == port
    connect(server).close()
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(f"ws://127.0.0.1:{port}/elsewhere", timeout=2)
    server.stop()


def test_feed_publishes_in_the_background_until_the_server_stops():
    import threading

    from kiyotaka_ws import KiyotakaClient

    got = []
    with FakeKiyotakaServer(api_key="k") as server:
        client = KiyotakaClient(**server.client_kwargs())
        client.on_trade(got.append, exchange="X", symbol="Y")
        with client:
            assert client.wait_ready(5)
            server.feed(([trade_point("X", "Y", price=i, amount=1)] for i in range(1_000_000)), interval=0.001)
            assert wait_until(lambda: len(got) >= 20)
    assert not [t for t in threading.enumerate() if t.name.startswith("fake-kiyotaka-feed")]
    assert [e.price for e in got] == sorted(e.price for e in got)


# -- limits mode --------------------------------------------------------------------------------


def request(ws, method, channels, req_id):
    ws.send(json.dumps({"jsonrpc": "2.0", "id": req_id, "method": method,
                        "params": {"channels": channels, "version": "v2"}}))
    answer = json.loads(ws.recv())
    assert answer["id"] == req_id
    return answer


def trades(*symbols):
    return [{**TRADE_CHANNEL, "symbol": s} for s in symbols]


def test_limits_are_off_by_default(server):
    ws = connect(server)
    ws.recv()
    for i in range(20):
        assert "result" in request(ws, "public/subscribe", trades(*(f"S{i}-{j}" for j in range(60))), 10 + i)
    assert server.wait_subscribed(1200)
    assert server.request_counts() == {1: 20} and server.rejections() == {}
    assert server.max_burst() == 20 and server.max_burst(window=0.0) == 1
    ws.close()


def test_a_request_over_the_rate_is_refused_with_429_and_retry_after():
    with FakeKiyotakaServer(max_requests_per_second=1.0) as limited:
        ws = connect(limited)
        ws.recv()
        assert "result" in request(ws, "public/subscribe", trades("A"), 2)
        refused = request(ws, "public/subscribe", trades("B"), 3)
        assert refused["error"]["code"] == 429 and refused["error"]["message"] == "TOO_MANY_REQUESTS"
        retry_after = refused["error"]["data"]["retry_after"]
        assert 0 < retry_after <= 1.0
        assert [c["symbol"] for c in limited.subscriptions()] == ["A"]  # nothing of it applied
        time.sleep(retry_after + 0.05)   # what the server asked for, not a guess
        assert "result" in request(ws, "public/subscribe", trades("B"), 4)
        assert limited.request_counts() == {1: 3} and limited.rejections() == {429: 1}
        # the rate is per connection: a second one has its own bucket
        other = connect(limited)
        other.recv()
        assert "result" in request(other, "public/unsubscribe", trades("X"), 2)
        ws.close()
        other.close()


def test_a_request_with_too_many_channels_is_refused_whole():
    with FakeKiyotakaServer(max_channels_per_request=3) as limited:
        ws = connect(limited)
        ws.recv()
        refused = request(ws, "public/subscribe", trades("A", "B", "C", "D"), 2)
        assert refused["error"] == {"code": -32602, "message": "TOO_MANY_CHANNELS: at most 3 channels per request",
                                    "data": {"max_channels_per_request": 3}}
        assert limited.subscriptions() == []
        assert "result" in request(ws, "public/subscribe", trades("A", "B", "C"), 3)
        assert "error" in request(ws, "public/unsubscribe", trades("A", "B", "C", "D"), 4)
        assert len(limited.subscriptions()) == 3
        ws.close()


def test_a_subscribe_over_the_connection_limit_is_refused_whole():
    with FakeKiyotakaServer(max_subscriptions_per_connection=3) as limited:
        ws = connect(limited)
        ws.recv()
        assert "result" in request(ws, "public/subscribe", trades("A", "B"), 2)
        refused = request(ws, "public/subscribe", trades("B", "C", "D"), 3)   # B is held: 2 new
        assert refused["error"] == {"code": 4290, "message": "SUBSCRIPTION_LIMIT: at most 3 subscriptions per connection",
                                    "data": {"limit": 3}}
        assert sorted(c["symbol"] for c in limited.subscriptions()) == ["A", "B"]
        assert "result" in request(ws, "public/subscribe", trades("B", "C"), 4)   # exactly full
        assert "result" in request(ws, "public/unsubscribe", trades("A"), 5)
        assert "result" in request(ws, "public/subscribe", trades("D"), 6)     # room again
        other = connect(limited)   # the limit is per connection
        other.recv()
        assert "result" in request(other, "public/subscribe", trades("E", "F", "G"), 2)
        assert limited.rejections() == {4290: 1}
        ws.close()
        other.close()


def test_a_rejected_symbol_rejects_its_whole_batch_without_naming_it(server):
    server.reject_symbol("BAD")
    ws = connect(server)
    ws.recv()
    refused = request(ws, "public/subscribe", trades("A", "BAD", "C"), 2)
    assert refused["error"] == {"code": -32602, "message": "INVALID_SYMBOL"}
    assert server.subscriptions() == []
    assert "result" in request(ws, "public/subscribe", trades("A", "C"), 3)
    ws.close()


def test_limits_are_checked_before_a_bad_symbol_and_bad_limits_are_refused():
    with FakeKiyotakaServer(max_channels_per_request=1) as limited:
        limited.reject_symbol("BAD")
        ws = connect(limited)
        ws.recv()
        assert request(ws, "public/subscribe", trades("A", "BAD"), 2)["error"]["code"] == -32602
        assert limited.rejections() == {-32602: 1}
        ws.close()
    for bad in ({"max_requests_per_second": 0}, {"max_channels_per_request": 0},
                {"max_subscriptions_per_connection": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FakeKiyotakaServer(**bad)

