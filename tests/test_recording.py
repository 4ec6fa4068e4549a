"""Record, replay and pull: the file format, live -> file -> replay round trips, pacing, crashes,
FakeKiyotakaServer.play, EventStream and the record/replay/inspect commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import brotli
import pytest
from conftest import Collector, wait_until

from kiyotaka_ws import (
    AuthenticationError,
    BookSnapshot,
    ClientStoppedError,
    ConfigurationError,
    EventsDropped,
    EventStream,
    KiyotakaClient,
    State,
    Trade,
)
from kiyotaka_ws._cli.command import main
from kiyotaka_ws.protocol import FrameDecoder
from kiyotaka_ws.recording import (
    GAP,
    Recorder,
    RecordingError,
    RecordingReader,
    inspect_recording,
)
from kiyotaka_ws.testing import FakeKiyotakaServer, book_point, trade_point

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000_000_000_000


def frame(points: list[dict[str, Any]], binary: bool = True) -> bytes:
    text = json.dumps({"points": points}, separators=(",", ":")).encode()
    return brotli.compress(text, quality=4) if binary else text


def trade(symbol: str, i: int, exchange: str = "X") -> dict[str, Any]:
    return trade_point(exchange, symbol, price=100.0 + i, amount=1.0, id=i, time_ns=T0 + i)


def book(i: int) -> dict[str, Any]:
    return book_point("X", "BTCUSDT", bids=[(100.0 + i, 1.0)], asks=[(110.0 + i, 2.0)], block_size=10, time_ns=T0 + i)


class Clock:
    """A settable receive-time clock for the recorder (nanoseconds)."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def write(path: Path, frames: list[tuple[str, bytes, bool]], *, gaps_ms: list[float] | None = None,
          **options: Any) -> Recorder:
    """Write ``(family, payload, binary)`` frames through a real Recorder, with chosen receive times."""
    clock = Clock()
    recorder = Recorder(path, clock=clock, **options)
    recorder.open()
    taps = {"book": recorder.tap("book"), "nonbook": recorder.tap("nonbook")}
    for n, (family, payload, binary) in enumerate(frames):
        if gaps_ms is not None:
            clock.now += int(gaps_ms[n] * 1e6)
        taps[family](payload, binary, 1)
    assert recorder.close(5)
    return recorder


def decoded(path: Path) -> list[Any]:
    decoder = FrameDecoder(2**24)
    return [decoder.decode(r.payload, r.binary) for r in RecordingReader(path) if r.kind != GAP]


# -- the file format -------------------------------------------------------------------------------

def test_format_round_trip_text_and_binary(tmp_path: Path) -> None:
    path = tmp_path / "cap.kwsrec"
    frames = [("nonbook", frame([trade("BTCUSDT", i)], binary=i % 2 == 0), i % 2 == 0) for i in range(20)]
    write(path, frames, gaps_ms=[1.0] * 20)
    records = list(RecordingReader(path))
    assert [(r.family, r.payload, r.binary) for r in records] == frames  # as received, byte for byte
    assert [r.time_ns - T0 for r in records] == [int(1e6) * (i + 1) for i in range(20)]
    assert path.read_bytes()[:8] == b"KWSREC\r\n"
    text = frame([trade("BTCUSDT", 1)] * 50, binary=False)
    write(tmp_path / "text.kwsrec", [("nonbook", text, False)])
    assert (tmp_path / "text.kwsrec").stat().st_size < len(text) // 3  # text frames are stored compressed


def test_a_torn_or_damaged_record_is_skipped_never_fatal(tmp_path: Path) -> None:
    path = tmp_path / "cap.kwsrec"
    frames = [("nonbook", frame([trade("BTCUSDT", i)]), True) for i in range(5)]
    write(path, frames)
    whole = path.read_bytes()
    last = len(whole) - (28 + len(frames[-1][1]))
    for cut in range(last, len(whole)):  # a crash at every byte of the last record's write
        path.write_bytes(whole[:cut])
        reader = RecordingReader(path)
        assert [r.payload for r in reader] == [f[1] for f in frames[:4]]
        assert reader.torn == (1 if cut > last else 0)
    # Appending after a torn tail (a new run on the same file): the torn record is skipped, both runs read.
    path.write_bytes(whole[: last + 10])
    write(path, [("book", frame([book(1)]), True)])
    assert [r.payload for r in RecordingReader(path)] == [f[1] for f in frames[:4]] + [frame([book(1)])]
    # A damaged byte in the middle: that record only.
    damaged = bytearray(whole)
    damaged[16 + 28 + 5] ^= 0xFF
    path.write_bytes(bytes(damaged))
    reader = RecordingReader(path)
    assert [r.payload for r in reader] == [f[1] for f in frames[1:]] and reader.torn == 1
    # A header torn by a crash: an empty recording; something else: refused.
    path.write_bytes(b"KWSR")
    assert list(RecordingReader(path)) == []
    path.write_bytes(b"not a recording at all")
    with pytest.raises(RecordingError):
        RecordingReader(path)
    with pytest.raises(ConfigurationError, match="record"):
        KiyotakaClient("k", record=path)


def test_rotation_by_size_and_by_time(tmp_path: Path) -> None:
    path = tmp_path / "cap.kwsrec"
    frames = [("nonbook", frame([trade("BTCUSDT", i)]), True) for i in range(40)]
    recorder = Recorder(path, rotate_bytes=2048)
    recorder.open()
    tap = recorder.tap("nonbook")
    for _, payload, binary in frames:
        tap(payload, binary, 1)
        time.sleep(0.003)  # several batches
    recorder.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) >= 3 and "cap.kwsrec.1" in names and "cap.kwsrec" in names
    assert all(p.stat().st_size <= 2048 + 200 for p in tmp_path.iterdir())
    reader = RecordingReader(path)
    assert [r.payload for r in reader] == [f[1] for f in frames] and reader.files[-1] == str(path)
    timed = tmp_path / "t" / "cap.kwsrec"
    timed.parent.mkdir()
    recorder = Recorder(timed, rotate_seconds=0.05)
    recorder.open()
    tap = recorder.tap("book")
    for i in range(3):
        tap(frame([book(i)]), True, 1)
        time.sleep(0.25)
    recorder.close()
    assert len(list(timed.parent.iterdir())) >= 2 and len(list(RecordingReader(timed))) == 3


def test_a_full_recorder_buffer_drops_counts_and_marks_the_gap(tmp_path: Path) -> None:
    path = tmp_path / "cap.kwsrec"
    recorder = Recorder(path, max_buffer_frames=3)
    tap = recorder.tap("nonbook")  # not opened yet: nothing drains the buffer, as with a stuck disk
    started = time.perf_counter()
    for i in range(10):
        tap(frame([trade("BTCUSDT", i)]), True, 1)
    assert time.perf_counter() - started < 1.0  # never blocks the reader
    recorder.open()
    assert wait_until(lambda: recorder.stats.frames == 3)  # the disk is back: room again
    tap(frame([trade("BTCUSDT", 10)]), True, 1)
    recorder.close()
    assert recorder.stats.dropped == 7 and recorder.stats.frames == 4
    kinds = [(r.kind, r.dropped) for r in RecordingReader(path)]
    assert kinds == [(0, 0)] * 3 + [(GAP, 7), (0, 0)]
    assert inspect_recording(path).dropped == 7
    client = KiyotakaClient.replay(path)
    got, errors = Collector(), Collector()
    client.on_trade(got, exchange="X", symbol="BTCUSDT")
    client.on_error(errors)
    client.run_forever()
    assert [t.id for t in got.items] == ["0", "1", "2", "10"]
    assert [(type(e), e.count) for e in errors.items] == [(EventsDropped, 7)]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failing_disk_ends_the_recording_not_the_client(server: FakeKiyotakaServer, make_client: Any) -> None:
    client = make_client(record="/dev/full")  # every write fails with ENOSPC
    got, errors = Collector(), Collector()
    sub = client.on_trade(got, exchange="X", symbol="BTCUSDT")
    client.on_error(errors)
    with client:
        sub.wait(5)
        for i in range(5):
            server.publish([trade("BTCUSDT", i)])
            time.sleep(0.05)
        assert got.wait_for(5) and errors.wait_for(1)
        server.publish([trade("BTCUSDT", 5)])
        assert got.wait_for(6)  # the client carries on
    assert "recording to /dev/full stopped" in str(errors.items[0]) and len(errors.items) == 1


# -- live -> recording -> replay ---------------------------------------------------------------------

def _record_live(server: FakeKiyotakaServer, make_client: Any, path: Path) -> tuple[list[Any], list[Any]]:
    trades, books = Collector(), Collector()
    client = make_client(record=path)
    subs = [client.on_trade(trades, exchange="*", symbol="BTCUSDT"),
            client.on_trade(trades, exchange="*", symbol="ETHUSDT"),
            client.on_book(books, exchange="X", symbol="BTCUSDT", block_size=10)]
    with client:
        for sub in subs:
            sub.wait(5)
        n = 0
        for burst in range(4):  # several of the recorder's batches
            for _ in range(25):
                server.publish([trade("BTCUSDT", n), trade("ETHUSDT", n, exchange="Y")])
                server.publish([book(n)])
                n += 1
            time.sleep(0.12)
        assert trades.wait_for(2 * n) and books.wait_for(n)
    return trades.items, books.items


def test_replay_delivers_what_was_delivered_live_one_by_one(server: FakeKiyotakaServer, make_client: Any,
                                                            tmp_path: Path) -> None:
    path = tmp_path / "live.kwsrec"
    live_trades, live_books = _record_live(server, make_client, path)
    client = KiyotakaClient.replay(path)
    trades, books, both, statuses = Collector(), Collector(), Collector(), Collector()
    client.on_trade(trades, exchange="*", symbol="BTCUSDT")
    client.on_trade(trades, exchange="*", symbol="ETHUSDT")
    client.on_book(books, exchange="X", symbol="BTCUSDT", block_size=10)
    for kind in ("BTCUSDT", "ETHUSDT"):
        client.on_trade(both, exchange="*", symbol=kind)
    client.on_book(both, exchange="X", symbol="BTCUSDT", block_size=10)
    client.on_status(statuses)
    client.run_forever()  # returns at the end of the recording
    assert trades.items == live_trades and books.items == live_books  # events compare by value, one by one
    assert all(a.raw == b.raw for a, b in zip(trades.items, live_trades))
    assert [(s.family, s.state) for s in statuses.items if s.family == "nonbook"] == [
        ("nonbook", State.READY), ("nonbook", State.STOPPED)]
    assert [s.state for s in statuses.items if s.family == "book"] == [State.READY, State.STOPPED]
    # Across families: the recorded receive order.
    expected = [(p["series"]["type"], p["series"]["symbol"], p.get("trade", p.get("blockBookSnapshot"))["timestamp"])
                for m in decoded(path) if "points" in m for p in m["points"]]
    assert [(e.channel.value, e.symbol, e.raw.get("trade", e.raw.get("blockBookSnapshot"))["timestamp"])
            for e in both.items] == expected
    stats = client.stats()
    assert stats["nonbook"].state is State.STOPPED and stats["nonbook"].events == 2 * len(live_books)


def test_replay_filters_like_live_and_feeds_a_pull_stream(tmp_path: Path) -> None:
    path = tmp_path / "cap.kwsrec"
    write(path, [("nonbook", frame([trade("BTCUSDT", i), trade("ETHUSDT", i)]), True) for i in range(30)])
    client = KiyotakaClient.replay(path)
    btc = Collector()
    client.on_trade(btc, exchange="X", symbol="BTCUSDT")
    with client.events("TRADE", exchange="*", symbol="ETHUSDT", maxsize=4) as eth:
        assert isinstance(eth, EventStream)
        client.start()
        pulled = list(eth)  # ends at the end of the recording; "block": nothing lost with maxsize 4
    client.stop()
    assert [t.symbol for t in btc.items] == ["BTCUSDT"] * 30
    assert [t.id for t in pulled] == [str(i) for i in range(30)] and eth.dropped == 0


def test_paced_replay_keeps_the_recorded_gaps(tmp_path: Path) -> None:
    path = tmp_path / "paced.kwsrec"
    gaps_ms = [0, 30, 5, 60, 1, 40, 20, 80, 10, 50]
    write(path, [("nonbook", frame([trade("BTCUSDT", i)]), True) for i in range(len(gaps_ms))], gaps_ms=gaps_ms)
    for speed in (1.0, 4.0):
        arrivals: list[float] = []
        client = KiyotakaClient.replay(path, speed=speed)
        client.on_trade(lambda _, arrivals=arrivals: arrivals.append(time.monotonic()), exchange="X",
                        symbol="BTCUSDT")
        client.run_forever()
        measured = [(b - a) * 1000 for a, b in zip(arrivals, arrivals[1:])]
        expected = [g / speed for g in gaps_ms[1:]]
        errors = sorted(abs(m - e) for m, e in zip(measured, expected))
        print(f"speed {speed}: inter-arrival errors {[round(e, 1) for e in errors]} ms")
        assert len(arrivals) == len(gaps_ms)
        # The median gap error, not the worst: one scheduling hiccup on a busy machine is not a
        # pacing fault, while an unpaced replay errs by the whole gap (30-80 ms) almost every time.
        assert errors[len(errors) // 2] < 15
        total, expected_total = sum(measured), sum(expected)
        assert expected_total * 0.9 <= total < expected_total + 2000


def test_replay_errors_and_lifecycle(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="path"):
        KiyotakaClient.replay(tmp_path / "missing.kwsrec")
    (tmp_path / "junk").write_bytes(b"x" * 100)
    with pytest.raises(ConfigurationError, match="not a kiyotaka-ws recording"):
        KiyotakaClient.replay(tmp_path / "junk")
    path = tmp_path / "cap.kwsrec"
    write(path, [("nonbook", frame([trade("BTCUSDT", i)]), True) for i in range(5)], gaps_ms=[100] * 5)
    with pytest.raises(ConfigurationError, match="speed"):
        KiyotakaClient.replay(path, speed=0)
    nothing = KiyotakaClient.replay(path)
    nothing.run_forever()  # nothing registered: nothing to replay, returns at once
    client = KiyotakaClient.replay(path, speed=1.0)  # stop() in the middle of a paced replay
    sub = client.on_trade(lambda _: None, exchange="X", symbol="BTCUSDT")
    client.start()
    sub.wait(1)
    assert client.wait_ready(1)
    started = time.monotonic()
    client.stop()
    assert time.monotonic() - started < 1.0 and client.stats()["nonbook"].state is State.STOPPED
    with pytest.raises(ClientStoppedError):
        client.start()


# The subprocess's third write stops half way (as if the disk stalled there) and says so: the kill
# then lands in the middle of a record, for certain.
_TORN_WRITE = """
from kiyotaka_ws import recording
_flush, _calls = recording.Recorder._flush, [0]
def _torn_flush(self, chunks, size):
    _calls[0] += 1
    if _calls[0] == 3:
        data = b"".join(chunks)
        self._file.write(data[: len(data) // 2 + 7])
        self._file.flush()
        print("torn", flush=True)
        time.sleep(60)
    _flush(self, chunks, size)
recording.Recorder._flush = _torn_flush
"""


@pytest.mark.parametrize("mid_write", [False, True], ids=["anywhere", "mid-write"])
def test_a_recorder_killed_by_sigkill_still_replays(server: FakeKiyotakaServer, tmp_path: Path,
                                                    mid_write: bool) -> None:
    path = tmp_path / "crash.kwsrec"
    script = "import time\n" + (_TORN_WRITE if mid_write else "") + textwrap.dedent(f"""
        from kiyotaka_ws import KiyotakaClient
        client = KiyotakaClient("test-key", nonbook_url={server.nonbook_url!r}, record={str(path)!r})
        sub = client.on_trade(lambda t: None, exchange="*", symbol="BTCUSDT")
        client.start()
        sub.wait(10)
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines: list[str] = []
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
        reader.start()
        big = [trade("BTCUSDT", i) for i in range(200)]  # large frames: a write is likely under way
        deadline = time.monotonic() + 20
        while (not lines if mid_write else path.stat().st_size < 300_000) and time.monotonic() < deadline:
            server.publish(big)
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
    assert not mid_write or lines == ["torn\n"]
    reader_ = RecordingReader(path)
    frames = sum(1 for _ in reader_)
    assert frames > 0 and reader_.torn == (1 if mid_write else reader_.torn)
    got = Collector()
    client = KiyotakaClient.replay(path)
    client.on_trade(got, exchange="X", symbol="BTCUSDT")
    client.run_forever()  # never a failed replay
    assert len(got) >= 200 and len(got) % 200 == 0  # whole frames only
    assert client.stats()["nonbook"].state is State.STOPPED


# -- FakeKiyotakaServer.play ---------------------------------------------------------------------------

def test_fake_server_plays_a_recording_to_subscribers(server: FakeKiyotakaServer, make_client: Any,
                                                      tmp_path: Path) -> None:
    path = tmp_path / "cap.kwsrec"
    write(path, [("nonbook", frame([trade("BTCUSDT", i), trade("ETHUSDT", i)]), True) for i in range(20)]
          + [("book", frame([book(i)]), True) for i in range(5)], gaps_ms=[2] * 25)
    brotli_client, plain_client = make_client(), make_client(compression=None)
    btc, eth, books = Collector(), Collector(), Collector()
    subs = [brotli_client.on_trade(btc, exchange="*", symbol="BTCUSDT"),
            brotli_client.on_trade(btc, exchange="*", symbol="ETHUSDT"),
            plain_client.on_trade(eth, exchange="*", symbol="ETHUSDT"),
            plain_client.on_book(books, exchange="X", symbol="BTCUSDT", block_size=10)]
    with brotli_client, plain_client:
        for sub in subs:
            sub.wait(5)
        server.play(path, speed=10.0)
        assert btc.wait_for(40) and eth.wait_for(20) and books.wait_for(5)
    assert [(t.symbol, t.id) for t in btc.items] == [(s, str(i)) for i in range(20) for s in ("BTCUSDT", "ETHUSDT")]
    assert [t.id for t in eth.items] == [str(i) for i in range(20)] and all(t.symbol == "ETHUSDT" for t in eth.items)
    assert [b.best_bid.price for b in books.items if isinstance(b, BookSnapshot)] == [100.0 + i for i in range(5)]


# -- EventStream ----------------------------------------------------------------------------------------

def test_event_stream_get_iterate_and_unsubscribe(server: FakeKiyotakaServer, make_client: Any) -> None:
    client = make_client()
    with client:
        with client.events("TRADE", exchange="X", symbol="BTCUSDT") as stream:
            stream.wait(5)
            with pytest.raises(TimeoutError):
                stream.get(timeout=0.05)
            server.publish([trade("BTCUSDT", i) for i in range(3)])
            first = stream.get(timeout=5)
            assert isinstance(first, Trade) and first.id == "0"
            assert [next(stream).id, stream.get(5).id] == ["1", "2"]
        assert wait_until(lambda: server.requests("public/unsubscribe"))
        with pytest.raises(ClientStoppedError):
            stream.get(0.01)
        book_stream = client.events("BLOCK_BOOK_SNAPSHOT", exchange="X", symbol="BTCUSDT", block_size=10)
        book_stream.wait(5)
        server.publish([book(1)])
        assert book_stream.get(5).best_bid.price == 101.0
        ender = threading.Timer(0.2, client.stop)
        ender.start()
        assert list(book_stream) == []  # iteration ends when the client stops
        ender.join()


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_event_stream_drop_policies_count(server: FakeKiyotakaServer, make_client: Any, policy: str) -> None:
    client = make_client(overflow=policy)
    with client:
        stream = client.events("TRADE", exchange="X", symbol="BTCUSDT", maxsize=3)
        stream.wait(5)
        server.publish([trade("BTCUSDT", i) for i in range(10)])
        assert wait_until(lambda: stream.dropped == 7)
        ids = [stream.get(1).id for _ in range(3)]
    assert ids == (["0", "1", "2"] if policy == "drop_newest" else ["7", "8", "9"])


def test_a_blocked_stream_back_pressures_but_never_deadlocks_stop(server: FakeKiyotakaServer,
                                                                   make_client: Any) -> None:
    client = make_client()
    others = Collector()
    client.on_trade(others, exchange="X", symbol="ETHUSDT")
    client.start()
    stream = client.events("TRADE", exchange="X", symbol="BTCUSDT", maxsize=2)
    stream.wait(5)
    assert client.wait_ready(5)
    server.publish([trade("BTCUSDT", i) for i in range(5)])
    server.publish([trade("ETHUSDT", 1)])
    time.sleep(0.3)
    assert stream.qsize() == 2 and len(others) == 0  # the family waits for the consumer
    assert stream.get(1).id == "0"
    started = time.monotonic()
    client.stop()
    assert time.monotonic() - started < 2.0


def test_events_arguments_are_checked(make_client: Any) -> None:
    client = make_client()
    with pytest.raises(ConfigurationError, match="maxsize"):
        client.events("TRADE", exchange="X", symbol="Y", maxsize=0)
    with pytest.raises(ConfigurationError, match="block_size"):
        client.events("BLOCK_BOOK_SNAPSHOT", exchange="X", symbol="Y")


def test_record_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="record_rotate_bytes"):
        KiyotakaClient("k", record_rotate_bytes=2**20)
    with pytest.raises(ConfigurationError, match="record_rotate_seconds"):
        KiyotakaClient("k", record=tmp_path / "r.kwsrec", record_rotate_seconds=0)
    with pytest.raises(ConfigurationError, match="no such directory"):
        KiyotakaClient("k", record=tmp_path / "missing" / "r.kwsrec")
    assert not (tmp_path / "r.kwsrec").exists()  # nothing is created before start()


def test_a_stream_raises_the_clients_fatal_error(server: FakeKiyotakaServer, make_client: Any) -> None:
    client = make_client(api_key="wrong-key")
    stream = client.events("TRADE", exchange="X", symbol="BTCUSDT")
    client.start()
    with pytest.raises(AuthenticationError):
        stream.get(timeout=5)
    with pytest.raises(AuthenticationError):
        next(stream)


# -- the command line ---------------------------------------------------------------------------------

def test_cli_record_inspect_replay(server: FakeKiyotakaServer, tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "cli.kwsrec"

    def publish() -> None:
        server.wait_subscribed(2)
        for i in range(10):
            server.publish([trade("BTCUSDT", i)])
            server.publish([book(i)])
            time.sleep(0.02)

    feeder = threading.Thread(target=publish)
    feeder.start()
    code = main(["record", "TRADE", "--exchange", "X", "--symbol", "BTCUSDT",
                 "--sub", "BLOCK_BOOK_SNAPSHOT:X:BTCUSDT:block_size=10", "--out", str(path),
                 "--book-url", server.book_url, "--nonbook-url", server.nonbook_url, "--api-key", "test-key",
                 "--seconds", "1.5"])
    feeder.join()
    err = capsys.readouterr().err
    assert code == 0 and "recorded" in err.splitlines()[-1], err
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["points"] == 20 and info["frames"]["book"] >= 10 and info["version"] == 1
    assert {(s["channel"], s["points"]) for s in info["series"]} == {("TRADE", 10), ("BLOCK_BOOK_SNAPSHOT", 10)}
    assert main(["inspect", str(path)]) == 0
    assert "TRADE" in capsys.readouterr().out
    assert main(["replay", str(path), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["channel"] for x in lines].count("BLOCK_BOOK_SNAPSHOT") == 10 and len(lines) == 20
    assert main(["replay", str(path), "--sub", "TRADE:X:BTCUSDT", "--speed", "100"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 10


@pytest.mark.parametrize(("args", "named"), [
    (["record", "--out", "x.kwsrec"], "nothing to record"),
    (["record", "TRADE", "--out", "x.kwsrec"], "--exchange"),
    (["record", "--sub", "TRADE:X", "--out", "x.kwsrec"], "--sub"),
    (["record", "--sub", "NOPE:X:Y", "--out", "x.kwsrec"], "NOPE"),
    (["record", "--sub", "BLOCK_BOOK_SNAPSHOT:X:Y", "--out", "x.kwsrec"], "block_size"),
    (["record", "--sub", "TRADE:X:Y", "--out", "/no/such/dir/x.kwsrec"], "--out"),
    (["replay", "/no/such/file"], "cannot read"),
    (["inspect", "/no/such/file"], "cannot read"),
    (["replay", "x.kwsrec", "--speed", "0"], "--speed"),
])
def test_cli_usage_errors_exit_2_with_one_line(capsys: Any, monkeypatch: Any, args: list[str], named: str) -> None:
    monkeypatch.delenv("KIYOTAKA_API_KEY", raising=False)
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiyotaka-ws: error: ") and named in lines[0], captured.err
    assert "KIYOTAKA_API_KEY" not in lines[0]


def test_a_short_file_that_is_not_a_recording_is_refused_not_read_as_empty_or_overwritten(tmp_path: Path) -> None:
    """A file shorter than the 16-byte header passes only while it is the start of ours (a file just
    created, or a header torn by a crash); anything else is refused, and a recorder never truncates it."""
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"hello\n")
    with pytest.raises(ConfigurationError, match="not a kiyotaka-ws recording"):
        KiyotakaClient.replay(junk)
    with pytest.raises(ConfigurationError, match="record"):
        KiyotakaClient(api_key="k", record=junk).start()
    assert junk.read_bytes() == b"hello\n"
    torn = tmp_path / "torn.kwsrec"
    torn.write_bytes(b"KWSREC")  # a recorder's header cut short: an empty recording
    assert list(RecordingReader(torn)) == []
