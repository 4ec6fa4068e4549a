"""FakeKiyotakaServer over a real socket, driven by a plain websocket-client connection."""

from __future__ import annotations

import json

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
