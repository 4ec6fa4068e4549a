"""Recording, replay, NATS and metrics held to the core's bar (issue 20): files have one owner, a
live file replays without holes, the bus is not trusted, and no helper thread dies silently."""

from __future__ import annotations

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
from kiyotaka_ws.testing import FakeKiyotakaServer

# -- recordings have one owner ---------------------------------------------------------------------


def test_replay_onto_its_own_input_is_refused_and_leaves_it_untouched(tmp_path: Path) -> None:
    path = tmp_path / "cap.kwsrec"
    write(path, [("nonbook", frame([trade("BTCUSDT", i)]), True) for i in range(40)], rotate_bytes=1024)
    assert (tmp_path / "cap.kwsrec.1").exists()
    before = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    link = tmp_path / "alias.kwsrec"
    link.symlink_to(path)
    for target in (path, tmp_path / "cap.kwsrec.1", link, tmp_path / "." / "cap.kwsrec"):
        client = KiyotakaClient.replay(path, record=target)
        client.on_trade(lambda _: None, exchange="*", symbol="BTCUSDT")
        with pytest.raises(ConfigurationError, match="^record: .*being replayed"):
            client.start()
        client.stop()
    assert {p.name: p.stat().st_size for p in tmp_path.iterdir() if p.name != "alias.kwsrec"} == before


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
    # Not even a bare Recorder in this process gets the lock (flock is per open file).
    with pytest.raises(RecordingLocked):
        Recorder(path).open()
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
