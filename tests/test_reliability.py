"""Faults, bad input, load and shutdown: the client recovers, reports and never hangs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import brotli
import pytest
from conftest import Collector, client_threads, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from kiyotaka_ws import DecodeError, KiyotakaClient, KiyotakaError, State
from kiyotaka_ws.events import decode_point
from kiyotaka_ws.protocol import FrameDecoder
from kiyotaka_ws.testing import FakeKiyotakaServer, book_point, trade_point

EX, SYM = "BINANCE_FUTURES", "BTCUSDT"


class BlackHoleProxy:
    """A loopback TCP proxy that can stop forwarding without closing anything (a half-open link)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.sockets: list = []
        self.threads = [threading.Thread(target=self._accept)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._serve(client)

    def _serve(self, client: socket.socket) -> None:
        self._bridge(client, socket.create_connection(("127.0.0.1", self.target_port)))

    def _bridge(self, client: socket.socket, upstream: socket.socket) -> None:
        """Pump bytes both ways between two sockets, in threads joined by close()."""
        self.sockets += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            thread = threading.Thread(target=self._pump, args=(src, dst))
            self.threads.append(thread)
            thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if not self.frozen.is_set():  # frozen: bytes vanish, nobody is told
                try:
                    dst.sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self.threads:
            thread.join(5)


def test_half_open_connection_is_detected_by_ping_timeout(server, make_client):
    proxy = BlackHoleProxy(server.port)
    try:
        client = make_client(nonbook_url=f"ws://127.0.0.1:{proxy.port}/nonbook/ws", ping_interval=0.2,
                             ping_timeout=0.4)
        statuses, got = Collector(), Collector()
        client.on_status(statuses)
        client.on_trade(got, exchange=EX, symbol=SYM)
        client.start()
        assert client.wait_ready(5)
        proxy.frozen.set()  # no FIN, no RST: only silence
        assert wait_until(lambda: any(s.state is State.DISCONNECTED for s in statuses.items), 5)
        reason = next(s.reason for s in statuses.items if s.state is State.DISCONNECTED)
        assert "no pong" in reason
        proxy.frozen.clear()
        assert client.wait_ready(5)
        assert server.wait_for(lambda s: len(s.subscriptions()) >= 1)
        server.publish([trade_point(EX, SYM, price=3, amount=1)])
        assert got.wait_for(1)
    finally:
        proxy.close()


def test_stale_timeout_reconnects_a_silent_server(server, make_client):
    client = make_client(stale_timeout=0.5, ping_interval=0.1, ping_timeout=1.0)
    statuses = Collector()
    client.on_status(statuses)
    client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    server.set_silent(True)  # still answers pings, sends no data: only stale_timeout can tell
    assert wait_until(lambda: any(s.state is State.DISCONNECTED for s in statuses.items), 5)
    assert "no data" in next(s.reason for s in statuses.items if s.state is State.DISCONNECTED)
    server.set_silent(False)
    assert client.wait_ready(5)


@pytest.mark.parametrize("code", [1000, 1001, 1011, 4000, 4010])
def test_close_codes_on_both_families_recover_everything(server, make_client, code):
    client = make_client()
    trades, books = Collector(), Collector()
    client.on_trade(trades, exchange=EX, symbol=SYM)
    client.on_book(books, exchange=EX, symbol=SYM, block_size=25)
    client.start()
    assert client.wait_ready(5)
    server.close_connections(code, f"code {code}")
    assert server.wait_for(lambda s: s.connection_count == 4 and len(s.subscriptions()) == 2)
    assert client.wait_ready(5)
    server.publish([trade_point(EX, SYM, price=1, amount=1, id="a"),
                    book_point(EX, SYM, bids=[(1, 1)], asks=[(2, 1)])])
    assert trades.wait_for(1) and books.wait_for(1)
    assert [e.id for e in trades.items] == ["a"]  # nothing twice
    stats = client.stats()
    assert stats["book"].reconnects == 1 and stats["nonbook"].reconnects == 1


def test_refused_at_start_then_server_appears_and_restarts():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = FakeKiyotakaServer(api_key="k", port=port)
    client = KiyotakaClient("k", book_url=server.book_url, nonbook_url=server.nonbook_url,
                            backoff_initial=0.05, backoff_max=0.2)
    got = Collector()
    client.on_trade(got, exchange=EX, symbol=SYM)
    try:
        client.start()
        assert wait_until(lambda: client.stats()["nonbook"].reconnects >= 2)  # refused, retrying
        server.start()
        assert client.wait_ready(5)
        server.stop()
        server.start()  # a restart on the same port
        assert server.wait_for(lambda s: len(s.subscriptions()) == 1)
        assert client.wait_ready(5)
        server.publish([trade_point(EX, SYM, price=1, amount=1)])
        assert got.wait_for(1)
    finally:
        client.stop()
        server.stop()


def test_late_auth_answer_and_late_acks(make_client):
    with FakeKiyotakaServer(api_key="k", reply_delay=0.4) as slow:
        client = make_client(slow, api_key="k", auth_timeout=0.1, subscribe_timeout=5)
        got = Collector()
        sub = client.on_trade(got, exchange=EX, symbol=SYM)
        client.start()
        sub.wait(5)  # the ack arrives late, after the late auth answer
        assert client.wait_ready(5) and sub._wire.state == "active"
        slow.publish([trade_point(EX, SYM, price=1, amount=1)])
        assert got.wait_for(1)


def test_load_block_policy_keeps_everything_in_order(server, make_client):
    client = make_client(queue_size=500)
    got = Collector()
    client.on_trade(got, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    total, per_frame = 20_000, 50
    for start in range(0, total, per_frame):
        server.publish([trade_point(EX, SYM, price=i, amount=1, id=i) for i in range(start, start + per_frame)])
    assert got.wait_for(total, timeout=60)
    assert [int(e.id) for e in got.items] == list(range(total))
    assert client.stats()["nonbook"].dropped == 0


# -- bad input never crashes anything ---------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25)
point_keys = st.sampled_from(["series", "trade", "tradeAggregation", "blockBookSnapshot", "liquidation",
                              "fundingRate", "openInterest", "volumeProfileAggregation"])
series_types = st.sampled_from(["TRADE", "TRADE_AGG", "BLOCK_BOOK_SNAPSHOT", "LIQUIDATION", "FUNDING_RATE",
                                "OPEN_INTEREST", "VOLUME_PROFILE_AGG", "NEW"])


@st.composite
def mutated_points(draw):
    kind = draw(series_types)
    series = draw(st.dictionaries(st.sampled_from(["symbol", "exchange", "coin", "side", "blockSize", "category"]),
                                  json_values, max_size=4))
    series["type"] = kind
    payload = draw(st.dictionaries(st.sampled_from(["id", "price", "amount", "timestamp", "bids", "asks", "profile",
                                                    "fundingRate", "openInterest", "open", "firstTimestamp"]),
                                   json_values, max_size=5))
    point = {"series": series, draw(point_keys): payload}
    if draw(st.booleans()):
        point[draw(point_keys)] = draw(json_values)
    return point


@settings(max_examples=400, deadline=None)
@given(mutated_points())
def test_decode_point_returns_events_or_raises_decode_error_only(point):
    try:
        decode_point(point)
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_random_frames_decode_or_raise_decode_error_only(data, binary):
    decoder = FrameDecoder(4096)
    for payload in (data, brotli.compress(data)):
        try:
            decoder.decode(payload, binary)
        except DecodeError:
            pass


def test_garbage_burst_over_the_socket_keeps_the_connection(server, make_client):
    client = make_client()
    errors, got = Collector(), Collector()
    client.on_error(errors)
    client.on_trade(got, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    bomb = brotli.compress(b"[" + b"0," * (20 * 2**20) + b"0]", quality=5)
    garbage = [b"\xff\xfe\xfd", "not json", "[1,2,3]", '{"points": 5}', '{"points": [1, "x", null]}',
               bomb, brotli.compress(b"\xff" * 100), json.dumps({"points": [{"series": {"type": "TRADE",
               "exchange": EX, "symbol": SYM}, "trade": {"price": [1]}}]}),
               json.dumps({"points": [{"series": {"type": "SOMETHING_NEW", "symbol": SYM}, "x": {}}]})]
    for item in garbage:
        server.publish_raw(item)
    server.publish([trade_point(EX, SYM, price=5, amount=1)])
    assert got.wait_for(1) and got.items[0].price == 5
    assert errors.wait_for(7)
    assert client.stats()["nonbook"].reconnects == 0 and client.stats()["nonbook"].state is State.READY


# -- shutdown ---------------------------------------------------------------------------------

def test_stop_while_backing_off_and_twice():
    client = KiyotakaClient("k", nonbook_url="ws://127.0.0.1:9/nonbook/ws", backoff_initial=5, backoff_max=10)
    client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
    client.start()
    assert wait_until(lambda: client.stats()["nonbook"].state is State.DISCONNECTED)
    started = time.monotonic()
    client.stop()
    client.stop()
    assert time.monotonic() - started < 2 and not client_threads()


def test_stop_while_a_handler_blocks(server, make_client):
    client = make_client()
    entered, release = threading.Event(), threading.Event()

    def stuck(event):
        entered.set()
        release.wait(10)

    client.on_trade(stuck, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    server.publish([trade_point(EX, SYM, price=1, amount=1)])
    assert entered.wait(5)
    stopper = threading.Thread(target=client.stop, kwargs={"timeout": 10})
    stopper.start()
    assert wait_until(lambda: client.stats()["nonbook"].state is State.STOPPED)  # socket side is down already
    release.set()
    stopper.join(5)
    assert not stopper.is_alive() and not client_threads()


def test_ctrl_c_during_run_forever_exits_promptly(server):
    code = f"""
import sys
from kiyotaka_ws import KiyotakaClient
client = KiyotakaClient("test-key", book_url={server.book_url!r}, nonbook_url={server.nonbook_url!r})
client.on_trade(lambda e: None, exchange="X", symbol="Y")
client.on_status(lambda s: print(s.state.value, flush=True))
client.run_forever()
print("returned cleanly", flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "CONNECTING"
        assert proc.stdout.readline().strip() == "READY"
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "returned cleanly" in out and time.monotonic() - started < 5


def test_fragments_pings_and_oversized_frames(server, make_client):
    client = make_client(max_frame_bytes=4096)
    errors, got, statuses = Collector(), Collector(), Collector()
    client.on_error(errors)
    client.on_status(statuses)
    client.on_trade(got, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    text = json.dumps({"points": [trade_point(EX, SYM, price=1, amount=1, id="frag")]})
    server.publish_raw([text[:10], text[10:50], text[50:]])  # one message in three fragments
    comp = brotli.compress(text.encode())
    server.publish_raw([comp[:5], comp[5:]])
    assert got.wait_for(2) and [e.id for e in got.items] == ["frag", "frag"]
    assert server.ping() == 1  # the client answers the server's pings
    server.publish_raw("x" * 5000)  # over max_frame_bytes on the wire: the connection is dropped
    assert wait_until(lambda: any(s.state is State.DISCONNECTED for s in statuses.items))
    assert "max_frame_bytes" in next(s.reason for s in statuses.items if s.state is State.DISCONNECTED)
    assert client.wait_ready(5)
    assert server.wait_for(lambda s: len(s.subscriptions()) == 1)
    server.publish([trade_point(EX, SYM, price=2, amount=1, id="after")])
    assert got.wait_for(3) and got.items[-1].id == "after"


def test_stop_while_connecting_cuts_the_handshake_short():
    listener = socket.create_server(("127.0.0.1", 0))  # TCP completes in the backlog; no HTTP answer ever
    port = listener.getsockname()[1]
    client = KiyotakaClient("k", nonbook_url=f"ws://127.0.0.1:{port}/nonbook/ws", connect_timeout=30)
    client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
    try:
        client.start()
        assert wait_until(lambda: client.stats()["nonbook"].state is State.CONNECTING)
        time.sleep(0.2)  # let it reach the upgrade request
        started = time.monotonic()
        client.stop()
        assert time.monotonic() - started < 2 and not client_threads()
    finally:
        listener.close()


def test_compressed_answers_and_reconnect_false(make_client):
    with FakeKiyotakaServer(api_key="k", compress_replies=True) as server:
        client = make_client(server, api_key="k", reconnect=False)
        got, statuses = Collector(), Collector()
        client.on_status(statuses)
        sub = client.on_trade(got, exchange=EX, symbol=SYM)
        client.start()
        sub.wait(5)  # the ack came brotli-compressed
        assert sub._wire.state == "active"
        server.publish([trade_point(EX, SYM, price=1, amount=1)])
        assert got.wait_for(1)
        server.drop_connections()
        with pytest.raises(KiyotakaError, match="reconnect=False"):
            client.run_forever()
        assert statuses.items[-1].state is State.FAILED and server.connection_count == 1


class ConnectProxy(BlackHoleProxy):
    """A minimal HTTP CONNECT proxy: reads the CONNECT request, then pumps bytes both ways."""

    def __init__(self) -> None:
        self.requests: list = []
        super().__init__(target_port=0)

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode()
        self.requests.append(line)
        host, port = line.split()[1].rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self._bridge(client, upstream)


def test_http_proxy(server, make_client):
    proxy = ConnectProxy()
    try:
        client = make_client(proxy=f"http://127.0.0.1:{proxy.port}")
        got = Collector()
        client.on_trade(got, exchange=EX, symbol=SYM)
        client.start()
        assert client.wait_ready(5)
        server.publish([trade_point(EX, SYM, price=1, amount=1)])
        assert got.wait_for(1)
        assert proxy.requests == [f"CONNECT 127.0.0.1:{server.port} HTTP/1.1"]
        client.stop()  # before the proxy goes, or it would reconnect into a closing proxy
    finally:
        proxy.close()
