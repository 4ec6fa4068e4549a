"""Recording, replay, NATS and metrics held to the core's bar (issue 20): files have one owner, a
live file replays without holes, the bus is not trusted, and no helper thread dies silently."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Collector, wait_until
from test_recording import Clock, frame, trade, write

from kiyotaka_ws import (
    ConfigurationError,
    EventsDropped,
    KiyotakaClient,
    KiyotakaError,
    State,
)
from kiyotaka_ws.recording import Recorder, RecordingLocked, RecordingReader
from kiyotaka_ws.testing import FakeKiyotakaServer, trade_point

# -- recordings have one owner ---------------------------------------------------------------------


def test_replay_onto_its_own_input_is_refused_and_leaves_it_untouched(tmp_path: Path) -> None:
    path = tmp_path / "cap.kwsrec"
    write(path, [("nonbook", frame([trade("BTCUSDT", i)]), True) for i in range(40)], rotate_bytes=1024)
    assert (tmp_path / "cap.kwsrec.1").exists()
    before = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    link, hard = tmp_path / "alias.kwsrec", tmp_path / "hard.kwsrec"
    link.symlink_to(path)
    os.link(path, hard)
    for target in (path, tmp_path / "cap.kwsrec.1", link, hard, tmp_path / "." / "cap.kwsrec"):
        client = KiyotakaClient.replay(path, record=target)
        client.on_trade(lambda _: None, exchange="*", symbol="BTCUSDT")
        with pytest.raises(ConfigurationError, match="^record: .*being replayed"):
            client.start()
        client.stop()
    assert {p.name: p.stat().st_size for p in tmp_path.iterdir() if p.name not in ("alias.kwsrec", "hard.kwsrec")} == before


def test_a_copy_through_replay_keeps_the_recorded_receive_times(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.kwsrec", tmp_path / "dst.kwsrec"
    write(src, [("nonbook", frame([trade("BTCUSDT", i)]), True) for i in range(50)], gaps_ms=[250.0] * 50)
    client = KiyotakaClient.replay(src, record=dst)
    client.on_trade(lambda _: None, exchange="*", symbol="BTCUSDT")
    client.run_forever()
    original = [(r.time_ns, r.payload) for r in RecordingReader(src)]
    copy = [(r.time_ns, r.payload) for r in RecordingReader(dst)]
    assert copy == original and original[0][0] == Clock().now + 250_000_000


def test_a_second_recorder_on_the_same_path_is_refused_and_the_first_untouched(
        server: FakeKiyotakaServer, make_client: Any, tmp_path: Path) -> None:
    path = tmp_path / "cap.kwsrec"
    got = Collector()
    first = make_client(record=path, record_rotate_bytes=2048)
    sub = first.on_trade(got, exchange="X", symbol="BTCUSDT")
    first.start()
    sub.wait(5)
    second = make_client(record=path, record_rotate_bytes=2048)
    second.on_trade(lambda _: None, exchange="X", symbol="BTCUSDT")
    with pytest.raises(ConfigurationError, match="^record: .*another recorder"):
        second.start()
    # Not even a bare Recorder in this process gets the lock (flock is per open file), nor by a symlink.
    alias = tmp_path / "alias.kwsrec"
    alias.symlink_to(path)
    for other in (path, alias):
        with pytest.raises(RecordingLocked):
            Recorder(other).open()
    for i in range(200):
        server.publish([trade("BTCUSDT", i)])
    assert got.wait_for(200)
    first.stop()
    reader = RecordingReader(path)
    times = [r.time_ns for r in reader]
    ids = [int(p["trade"]["id"]) for r in RecordingReader(path) for p in _points(r)]
    assert ids == list(range(200)) and times == sorted(times) and len(reader.files) > 2
    third = Recorder(path)  # the owner is gone: the path is free again
    third.open()
    assert third.close(5)


def _points(record: Any) -> list[Any]:
    from kiyotaka_ws.protocol import FrameDecoder
    message = FrameDecoder(2**24).decode(record.payload, record.binary)
    return list(message.get("points", [])) if isinstance(message, dict) else []


# -- replaying a live recording --------------------------------------------------------------------

def test_replaying_a_recording_while_it_rotates_reads_a_prefix_without_holes(tmp_path: Path) -> None:
    path = tmp_path / "live.kwsrec"
    recorder = Recorder(path, rotate_bytes=1024)
    recorder.open()
    put = recorder.tap("nonbook")
    written = [0]
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set() and written[0] < 20_000:
            put(frame([trade("BTCUSDT", written[0])]), True, 1)
            written[0] += 1
            time.sleep(0.0005)

    for _ in range(300):
        put(frame([trade("BTCUSDT", written[0])]), True, 1)
        written[0] += 1
    assert wait_until(lambda: recorder.stats.frames == 300)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        got, errors = Collector(), Collector()
        client = KiyotakaClient.replay(path, queue_size=16)  # the reader keeps pace with the handler

        def slow(event: Any) -> None:  # the writer rotates many times while this replay runs
            got(event)
            time.sleep(0.002)

        client.on_trade(slow, exchange="*", symbol="BTCUSDT")
        client.on_error(errors)
        client.run_forever()
    finally:
        stop.set()
        thread.join()
        recorder.close(5)
    ids = [int(e.raw["trade"]["id"]) for e in got.items]
    assert len(ids) >= 300 and ids == list(range(len(ids))), "a hole in the replay"
    assert recorder.stats.files > 5
    # Whatever was left out is after the end (a prefix): a torn last record is reported, not hidden.
    assert all(isinstance(e, EventsDropped) for e in errors.items)


def test_a_damaged_record_or_a_deleted_segment_is_reported_as_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "cap.kwsrec"
    write(path, [("nonbook", frame([trade("BTCUSDT", i)]), True) for i in range(10)])
    data = bytearray(path.read_bytes())
    data[16 + 28 + 5] ^= 0xFF  # the first record's payload
    path.write_bytes(bytes(data))
    got, errors = Collector(), Collector()
    client = KiyotakaClient.replay(path)
    client.on_trade(got, exchange="*", symbol="BTCUSDT")
    client.on_error(errors)
    client.run_forever()
    assert len(got.items) == 9 and [type(e) for e in errors.items] == [EventsDropped]
    assert "damaged" in str(errors.items[0])


# -- helper threads are supervised -----------------------------------------------------------------

def test_an_unexpected_recorder_failure_is_reported_once_and_the_client_carries_on(
        server: FakeKiyotakaServer, make_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cap.kwsrec"

    def broken(self: Recorder, batch: Any) -> None:
        raise RuntimeError("a bug in the recorder")

    monkeypatch.setattr(Recorder, "_write", broken)
    got, errors = Collector(), Collector()
    client = make_client(record=path)
    sub = client.on_trade(got, exchange="X", symbol="BTCUSDT")
    client.on_error(errors)
    client.start()
    sub.wait(5)
    for i in range(20):
        server.publish([trade("BTCUSDT", i)])
    assert got.wait_for(20) and errors.wait_for(1)
    recorder = client._recorder
    assert wait_until(lambda: recorder.stats.error is not None)
    server.publish([trade("BTCUSDT", 20)])
    assert got.wait_for(21)  # the client carries on
    started = time.monotonic()
    client.stop(timeout=2.0)
    assert time.monotonic() - started < 2.0
    assert len(errors.items) == 1 and "a bug in the recorder" in str(errors.items[0])
    assert recorder.stats.error == "RuntimeError: a bug in the recorder" and recorder.stats.dropped >= 1
    monkeypatch.undo()
    again = Recorder(path)  # the lock went with the failed recorder
    again.open()
    assert again.close(5)


def test_an_unexpected_replay_failure_fails_every_family_and_is_reported_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiyotaka_ws.replay import Player

    path = tmp_path / "cap.kwsrec"
    write(path, [("nonbook", frame([trade("BTCUSDT", 1)]), True), ("book", frame([trade("BTCUSDT", 2)]), True)])

    def broken(self: Player, records: Any) -> None:
        raise RuntimeError("a bug in the player")

    monkeypatch.setattr(Player, "_play", broken)
    errors, statuses = Collector(), Collector()
    client = KiyotakaClient.replay(path)
    client.on_trade(lambda _: None, exchange="*", symbol="BTCUSDT")
    client.on_book(lambda _: None, exchange="X", symbol="BTCUSDT", block_size=10)
    client.on_error(errors)
    client.on_status(statuses)
    started = time.monotonic()
    with pytest.raises(KiyotakaError, match="a bug in the player"):
        client.run_forever()
    assert time.monotonic() - started < 3.0
    assert len(errors.items) == 1 and "a bug in the player" in str(errors.items[0])
    assert {f: s.state for f, s in client.stats().items()} == {"book": State.FAILED, "nonbook": State.FAILED}


# -- the metrics endpoint --------------------------------------------------------------------------

def _scrape(url: str, timeout: float = 3.0) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def test_idle_and_slow_scrapers_neither_block_a_scrape_nor_delay_stop(make_client: Any) -> None:
    import socket

    from kiyotaka_ws.metrics import MAX_SCRAPES, serve
    client = make_client()
    metrics = serve(client, 0)
    idle = [socket.create_connection(("127.0.0.1", metrics.port)) for _ in range(2)]
    slow = socket.create_connection(("127.0.0.1", metrics.port))
    slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
    try:
        started = time.monotonic()
        assert "kiyotaka_ws_events_total" in _scrape(metrics.url)  # served beside them, at once
        assert time.monotonic() - started < 2.0
        # More connections than slots: the extra ones are closed at once, not queued for ever.
        flood = [socket.create_connection(("127.0.0.1", metrics.port)) for _ in range(MAX_SCRAPES + 2)]
        flood[-1].settimeout(3.0)
        assert flood[-1].recv(1) == b""
        assert wait_until(lambda: len([t for t in threading.enumerate()
                                       if t.name == "kiyotaka-ws-metrics-scrape"]) <= MAX_SCRAPES)
        started = time.monotonic()
        client.stop(timeout=2.0)  # the idle, slow and flooding sockets are all still open
        assert time.monotonic() - started < 2.0
        assert not [t for t in threading.enumerate() if t.name.startswith("kiyotaka-ws-metrics")]
        for sock in flood:
            sock.close()
    finally:
        for sock in [*idle, slow]:
            sock.close()


def test_a_fault_on_the_metrics_thread_is_reported_once_and_stop_still_returns(
        server: FakeKiyotakaServer, make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiyotaka_ws import metrics as metrics_module
    client = make_client()
    errors = Collector()
    client.on_error(errors)
    sub = client.on_trade(lambda _: None, exchange="X", symbol="BTCUSDT")
    client.start()
    sub.wait(5)

    def broken(self: Any) -> None:
        raise RuntimeError("a bug in the metrics server")

    monkeypatch.setattr(metrics_module._Server, "handle_request", broken)
    metrics = metrics_module.serve(client, 0)
    assert errors.wait_for(1) and wait_until(lambda: metrics.error is not None)
    assert metrics.error == "RuntimeError: a bug in the metrics server"
    assert "metrics server" in str(errors.items[0]) and client.stats()["nonbook"].state is State.READY
    started = time.monotonic()
    client.stop(timeout=2.0)
    assert time.monotonic() - started < 2.0 and len(errors.items) == 1


# -- the NATS bus ----------------------------------------------------------------------------------

nats_tests = pytest.importorskip("test_nats")
NatsServer, FAST, make_relay = nats_tests.NatsServer, nats_tests.FAST, nats_tests.make_relay
nats_server, upstream, stop_later = nats_tests.nats_server, nats_tests.upstream, nats_tests.stop_later
EXCHANGES, SYMBOLS = ("BINANCE", "BYBIT", "*"), ("BTCUSDT", "ETH.USDT")


def _key(event: Any) -> tuple[str, str, str]:
    return event.exchange, event.symbol, event.raw["trade"]["id"]


def test_the_bus_delivers_what_a_direct_client_delivers_whatever_the_overlap(
        nats_server: Any, upstream: FakeKiyotakaServer, stop_later: Any) -> None:
    import random

    relay = make_relay(nats_server.url, upstream)
    for symbol in SYMBOLS:
        relay.subscribe("TRADE", exchange="*", symbol=symbol)
    stop_later(relay)
    relay.start()
    assert relay.wait_ready(5)
    rng = random.Random(20)
    for round_ in range(5):  # a random registration set each round, overlaps certain
        picks = [(rng.choice(EXCHANGES), rng.choice(SYMBOLS)) for _ in range(rng.randint(4, 9))]
        picks += [("*", picks[0][1]), (picks[0][0] if picks[0][0] != "*" else "BYBIT", picks[0][1])]
        direct = KiyotakaClient(**{**upstream.client_kwargs(), **FAST})
        consumer = KiyotakaClient.from_nats(nats_server.url, **FAST)
        stop_later(direct)
        stop_later(consumer)
        got: dict[str, list[Collector]] = {"direct": [], "bus": []}
        for name, client in (("direct", direct), ("bus", consumer)):
            subs = []
            for exchange, symbol in picks:
                got[name].append(Collector())
                subs.append(client.on_trade(got[name][-1], exchange=exchange, symbol=symbol))
            client.start()
            for sub in subs:
                sub.wait(5)
        for n in range(4):
            batch = [trade_point(exchange, symbol, price=1.0, amount=1.0, id=f"{round_}-{n}-{exchange}")
                     for exchange in ("BINANCE", "BYBIT", "OKX") for symbol in SYMBOLS]
            upstream.publish(batch)
        expected = [sum(1 for e in ("BINANCE", "BYBIT", "OKX") if ex in ("*", e)) * 4 for ex, _ in picks]
        for collectors in got.values():
            for collector, count in zip(collectors, expected):
                assert collector.wait_for(count), (round_, picks)
        wanted = {symbol: {ex for ex, sym in picks if sym == symbol} for symbol in SYMBOLS}
        arriving = sum(4 for symbol, mine in wanted.items() for e in ("BINANCE", "BYBIT", "OKX")
                       if "*" in mine or e in mine)  # bus messages the consumer should take, once each

        def arrived(client: KiyotakaClient = consumer, arriving: int = arriving) -> bool:
            return client.stats()["nonbook"].frames >= arriving

        assert wait_until(arrived)
        consumer.stop()
        direct.stop()
        assert consumer.stats()["nonbook"].frames == arriving
        for n, (live, bus) in enumerate(zip(got["direct"], got["bus"])):
            assert [_key(e) for e in bus.items] == [_key(e) for e in live.items], (round_, picks[n])
        stats = consumer.stats()["nonbook"]
        assert stats.decode_errors == 0 and stats.skipped == 0


def _publish_raw(url: str, messages: list[tuple[str, bytes]]) -> None:
    import asyncio

    import nats

    async def run() -> None:
        nc = await nats.connect(url)
        for subject, data in messages:
            await nc.publish(subject, data)
        await nc.flush()
        await nc.close()

    asyncio.run(run())


def test_a_malformed_bus_message_costs_only_itself(nats_server: Any, stop_later: Any) -> None:
    import json

    from kiyotaka_ws import DecodeError
    from kiyotaka_ws.nats import series_subject

    consumer = KiyotakaClient.from_nats(nats_server.url, **FAST)
    stop_later(consumer)
    got, errors = Collector(), Collector()
    sub = consumer.on_trade(got, exchange="*", symbol="BTCUSDT")
    consumer.on_error(errors)
    consumer.start()
    sub.wait(5)
    assert consumer.wait_ready(5)
    points = [trade_point("BINANCE", "BTCUSDT", price=1.0, amount=1.0, id=str(i)) for i in range(6)]
    subject = series_subject("kiyotaka", points[0]["series"])
    bad = [b"not json", b"42", b'{"series":', b'{"series":{}}]},{"x":[1', b"\xff\xfe"]
    messages: list[tuple[str, bytes]] = []
    for point, junk in zip(points, [*bad, None]):
        messages.append((subject, json.dumps(point).encode()))
        if junk is not None:
            messages.append((subject, junk))
    messages.append(("kiyotaka._status.nonbook", b'{"kind":"dropped","count":"many"}'))
    messages.append(("kiyotaka._status.nonbook", b"\x00garbage"))
    _publish_raw(nats_server.url, messages)
    assert got.wait_for(6) and [e.raw["trade"]["id"] for e in got.items] == [str(i) for i in range(6)]
    assert wait_until(lambda: len(errors.items) >= 7)
    assert all(isinstance(e, DecodeError) for e in errors.items), errors.items
    stats = consumer.stats()["nonbook"]
    assert stats.events == 6 and stats.decode_errors == 7 and stats.state is State.READY


def test_a_point_the_bus_cannot_carry_is_counted_reported_and_the_relay_goes_on(
        tmp_path: Path, upstream: FakeKiyotakaServer, stop_later: Any) -> None:
    conf = tmp_path / "small.conf"
    conf.write_text("max_payload: 2048\n")
    server = NatsServer(tmp_path)
    server.args += ["-c", str(conf)]
    server.start()
    stop_later(type("Killer", (), {"stop": lambda self: server.kill()})())
    relay = make_relay(server.url, upstream)
    relay.subscribe("TRADE", exchange="*", symbol="BTCUSDT")
    relay_errors = Collector()
    relay.on_error(relay_errors)
    stop_later(relay)
    consumer = KiyotakaClient.from_nats(server.url, **FAST)
    stop_later(consumer)
    got, errors = Collector(), Collector()
    sub = consumer.on_trade(got, exchange="*", symbol="BTCUSDT")
    consumer.on_error(errors)
    relay.start()
    consumer.start()
    sub.wait(5)
    assert relay.wait_ready(5) and consumer.wait_ready(5)
    small = [trade_point("X", "BTCUSDT", price=1.0, amount=1.0, id=str(i)) for i in range(3)]
    huge = trade_point("X", "BTCUSDT", price=1.0, amount=1.0, id="x" * 5000)
    upstream.publish([small[0], huge, small[1]])
    upstream.publish([huge])
    upstream.publish([small[2]])
    assert got.wait_for(3) and [e.raw["trade"]["id"] for e in got.items] == ["0", "1", "2"]
    assert relay_errors.wait_for(2) and all("max_payload (2048)" in str(e) for e in relay_errors.items)
    assert errors.wait_for(2) and all(isinstance(e, EventsDropped) for e in errors.items)  # announced
    stats = relay.stats()
    assert stats.oversized == 2 and stats.state is State.READY and stats.published >= 3


def test_a_fault_on_the_relays_nats_thread_is_reported_once_and_the_state_says_failed(
        nats_server: Any, upstream: FakeKiyotakaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiyotaka_ws.nats import Relay

    def broken(self: Relay, count: int) -> Any:
        raise RuntimeError("a bug in the relay")

    relay = make_relay(nats_server.url, upstream)
    relay.subscribe("TRADE", exchange="*", symbol="BTCUSDT")
    errors = Collector()
    relay.on_error(errors)
    monkeypatch.setattr(Relay, "_take", broken)
    started = time.monotonic()
    with pytest.raises(KiyotakaError, match="a bug in the relay"):
        relay.run_forever()
    assert time.monotonic() - started < 5.0
    assert relay.stats().state is State.STOPPED  # after stop()
    assert len(errors.items) == 1 and "a bug in the relay" in str(errors.items[0])


def test_relay_stats_say_failed_while_the_nats_thread_is_dead(
        nats_server: Any, upstream: FakeKiyotakaServer, stop_later: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiyotaka_ws.nats import Relay

    calls = [0]
    take = Relay._take

    def broken_later(self: Relay, count: int) -> Any:
        calls[0] += 1
        if calls[0] > 3:
            raise RuntimeError("a bug in the relay")
        return take(self, count)

    monkeypatch.setattr(Relay, "_take", broken_later)
    relay = make_relay(nats_server.url, upstream)
    relay.subscribe("TRADE", exchange="*", symbol="BTCUSDT")
    errors = Collector()
    relay.on_error(errors)
    stop_later(relay)
    relay.start()
    assert errors.wait_for(1) and wait_until(lambda: relay.stats().state is State.FAILED)
    assert not relay.wait_ready(0.5)
    started = time.monotonic()
    relay.stop(timeout=2.0)
    assert time.monotonic() - started < 2.0 and len(errors.items) == 1


def test_a_fault_on_the_consumers_nats_thread_fails_every_family_once(
        nats_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiyotaka_ws._nats import consumer

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the consumer")

    monkeypatch.setattr(consumer, "connect", broken)
    consumer = KiyotakaClient.from_nats(nats_server.url, **FAST)
    errors = Collector()
    consumer.on_error(errors)
    consumer.on_trade(lambda _: None, exchange="*", symbol="BTCUSDT")
    consumer.on_book(lambda _: None, exchange="X", symbol="BTCUSDT", block_size=10)
    started = time.monotonic()
    with pytest.raises(KiyotakaError, match="a bug in the consumer"):
        consumer.run_forever()
    assert time.monotonic() - started < 5.0
    assert len(errors.items) == 1 and "a bug in the consumer" in str(errors.items[0])
    assert {f: s.state for f, s in consumer.stats().items()} == {"book": State.FAILED, "nonbook": State.FAILED}


def test_a_recorder_in_another_process_owns_the_path(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "cap.kwsrec"
    code = ("import sys; from kiyotaka_ws.recording import Recorder; r = Recorder(sys.argv[1]); "
            "r.open(); print('open', flush=True); sys.stdin.read(); r.close(5)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        client = KiyotakaClient("k", record=path)
        client.on_trade(lambda _: None, exchange="X", symbol="BTCUSDT")
        with pytest.raises(ConfigurationError, match="^record: .*another recorder"):
            client.start()  # refused before any connection is made
        client.stop()
    finally:
        holder.communicate("", timeout=10)
    mine = Recorder(path)  # the other process ended: free
    mine.open()
    assert mine.close(5)
