"""Round 3 observability: ``received_ns`` on events, latency percentiles in ``stats()``,
conflation of snapshot channels, the Prometheus exporter and ``stream --stats``."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import attrs
import brotli
import pytest
from conftest import Collector, wait_until

from kiyotaka_ws import (
    BookSnapshot,
    ClientStoppedError,
    ConfigurationError,
    KiyotakaClient,
    Percentiles,
    Trade,
)
from kiyotaka_ws.channels import Channel, make_spec
from kiyotaka_ws.dispatch import Conflated, Dispatcher, EventQueue, Hooks
from kiyotaka_ws.events import decode_point
from kiyotaka_ws.latency import (
    BUCKETS,
    SLOT_SECONDS,
    SLOTS,
    Window,
    bucket,
    upper_bound,
)
from kiyotaka_ws.protocol import FrameDecoder
from kiyotaka_ws.recording import RecordingReader
from kiyotaka_ws.testing import FakeKiyotakaServer, book_point, trade_point

T0 = 1_700_000_000_000_000_000


def trade(i: int, time_ns: int = T0) -> dict[str, Any]:
    return trade_point("X", "BTCUSDT", price=100.0 + i, amount=1.0, id=i, time_ns=time_ns + i)


def book(i: int) -> dict[str, Any]:
    return book_point("X", "BTCUSDT", bids=[(100.0 + i, 1.0)], asks=[(110.0 + i, 2.0)], block_size=10,
                      time_ns=T0 + i)


# -- received_ns -----------------------------------------------------------------------------------

def test_received_ns_is_keyword_only_and_out_of_equality_hash_and_repr() -> None:
    a = decode_point(trade(1), 5)
    b = decode_point(trade(1), 6)
    assert a is not None and b is not None
    assert (a.received_ns, b.received_ns) == (5, 6)
    assert a == b and hash(a) == hash(b) and repr(a) == repr(b) and "received_ns" not in repr(a)
    assert decode_point(trade(1)).received_ns is None  # type: ignore[union-attr]
    field = attrs.fields(Trade).received_ns
    assert field.kw_only and not field.eq and not field.repr and field.hash is False
    made = Trade(Channel.TRADE, "X", "S", None, None, None, 1, "1", 1.0, 1.0, None, received_ns=7)
    assert made.received_ns == 7


def test_live_events_carry_the_local_receive_time(server: FakeKiyotakaServer, make_client: Any) -> None:
    client = make_client()
    got = Collector()
    sub = client.on_trade(got, exchange="X", symbol="BTCUSDT")
    with client:
        sub.wait(5)
        before = time.time_ns()
        server.publish([trade(1), trade(2)])
        assert got.wait_for(2)
        after = time.time_ns()
    first, second = got.items
    assert before <= first.received_ns <= after
    assert first.received_ns == second.received_ns  # one frame, one receive time


def test_a_replay_stamps_the_recorded_receive_time(server: FakeKiyotakaServer, make_client: Any,
                                                   tmp_path: Path) -> None:
    path = tmp_path / "rx.kwsrec"
    client = make_client(record=path)
    live = Collector()
    sub = client.on_trade(live, exchange="X", symbol="BTCUSDT")
    with client:
        sub.wait(5)
        for i in range(3):
            server.publish([trade(i)])
            assert live.wait_for(i + 1)
    recorded = [r.time_ns for r in RecordingReader(path) if b"points" in _plain(r.payload, r.binary)]
    assert len(recorded) == 3
    for speed in (None, 1000.0):
        replayed = Collector()
        player = KiyotakaClient.replay(path, speed=speed)
        player.on_trade(replayed, exchange="X", symbol="BTCUSDT")
        player.run_forever()
        assert [e.received_ns for e in replayed.items] == recorded


def _plain(payload: bytes, binary: bool) -> bytes:
    return brotli.decompress(payload) if binary else payload


# -- latency windows and stats() -------------------------------------------------------------------

def test_window_percentiles_are_bucket_bounds_within_25_percent() -> None:
    window = Window()
    now = 10**12
    window.rotate(now)
    assert window.percentiles(now) is None
    for us in range(1, 1001):  # 1 us .. 1 ms, uniform
        window.add(us * 1000)
    got = window.percentiles(now)
    assert got is not None and got.count == 1000
    for value, exact in ((got.p50, 500e-6), (got.p90, 900e-6), (got.p99, 990e-6)):
        assert exact <= value <= exact * 1.25, (value, exact)
    assert got.max == 1000e-6
    window.add(-5)  # clock skew: counted, in the lowest bucket
    window.add(2**62)  # huge: counted, in range
    assert window.percentiles(now).count == 1002  # type: ignore[union-attr]
    for i in range(1000, 2**62, 2**55 + 12345):
        assert bucket(i) < BUCKETS and i < upper_bound(bucket(i))
    window.add(2**100)  # a bogus exchange time: the last bucket, no IndexError
    assert bucket(2**100) == BUCKETS - 1


def test_window_slides_old_slots_out() -> None:
    window = Window()
    t = 10**12
    window.rotate(t)
    window.add(5_000_000)
    t += int(SLOT_SECONDS * 1e9)
    window.rotate(t)  # a new slot: the old one still counts
    window.add(1_000_000)
    got = window.percentiles(t)
    assert got is not None and (got.count, got.max) == (2, 0.005)
    later = t + int((SLOTS - 1) * SLOT_SECONDS * 1e9) + 1  # the first slot is now older than the window
    got = window.percentiles(later)
    assert got is not None and (got.count, got.max) == (1, 0.001)
    assert window.percentiles(later + int(SLOTS * SLOT_SECONDS * 1e9)) is None  # idle: nothing recent


def test_stats_report_latency_percentiles(server: FakeKiyotakaServer, make_client: Any) -> None:
    client = make_client()
    got = Collector()

    def slow(event: Trade) -> None:
        time.sleep(0.02)
        got(event)

    sub = client.on_trade(slow, exchange="X", symbol="BTCUSDT")
    with client:
        sub.wait(5)
        stats = client.stats()["nonbook"]
        assert (stats.feed_latency, stats.queue_delay, stats.handler_time) == (None, None, None)
        sent = time.time_ns() - 2_000_000_000  # exchange time 2 s before now: feed latency ~2 s
        for i in range(5):  # one frame each: latencies are sampled on the first event of a frame
            server.publish([trade(i, sent)])
        assert got.wait_for(5)
        stats = client.stats()["nonbook"]
    for each in (stats.feed_latency, stats.queue_delay, stats.handler_time):
        assert isinstance(each, Percentiles) and each.count == 5
        assert each.p50 <= each.p90 <= each.p99 <= each.max
    assert stats.feed_latency is not None and 2.0 <= stats.feed_latency.p50 < 2.0 * 1.25
    assert stats.handler_time is not None and 0.02 <= stats.handler_time.p50 <= 0.2
    # the 5th event waited for the four handler calls before it, in the queue
    assert stats.queue_delay is not None and stats.queue_delay.max >= 0.08
    assert client.stats()["nonbook"].handler_time == stats.handler_time  # kept after stop()


def test_a_bogus_exchange_time_is_counted_not_fatal(server: FakeKiyotakaServer, make_client: Any) -> None:
    client = make_client()
    got, errors = Collector(), Collector()
    sub = client.on_trade(got, exchange="X", symbol="BTCUSDT")
    client.on_error(errors)
    with client:
        sub.wait(5)
        server.publish([trade(0, -(2**80))])  # feed latency of +-2**80 ns, one frame each (sampled per frame)
        server.publish([trade(1, 2**80)])
        assert got.wait_for(2)
        stats = client.stats()["nonbook"]
    assert errors.items == [] and stats.feed_latency is not None and stats.feed_latency.count == 2


# -- conflation ------------------------------------------------------------------------------------

def test_a_lagging_conflated_handler_gets_the_newest_book_and_counts_the_rest(
        server: FakeKiyotakaServer, make_client: Any) -> None:
    client = make_client()
    release, entered = threading.Event(), threading.Event()
    conflated, every = Collector(), Collector()

    def blocked(event: BookSnapshot) -> None:
        entered.set()
        assert release.wait(10)
        conflated(event)

    sub = client.on_book(blocked, exchange="X", symbol="BTCUSDT", block_size=10, conflate=True)
    client.on_book(every, exchange="X", symbol="BTCUSDT", block_size=10)  # same spec, not conflated
    with client:
        sub.wait(5)
        server.publish([book(0)])
        assert entered.wait(5)  # the handler is stuck on book 0
        for i in range(1, 51):
            server.publish([book(i)])  # one frame each
        assert wait_until(lambda: client.stats()["book"].queue_depth == 51)  # book 0's batch + 50 waiting
        release.set()
        assert every.wait_for(51)
        assert wait_until(lambda: conflated.items and conflated.items[-1].bids[0].price == 150.0)
        stats = client.stats()["book"]
    prices = [e.bids[0].price for e in conflated.items]
    assert prices[0] == 100.0 and prices[-1] == 150.0 and len(prices) < 10
    assert prices == sorted(prices)  # in order, none twice
    assert len(prices) + stats.conflated == 51  # delivered + conflated == published
    assert [e.bids[0].price for e in every.items] == [100.0 + i for i in range(51)]
    assert stats.events == 51  # events decoded and delivered (to one handler at least)
    assert stats.handler_time is not None and stats.handler_time.count == 51 + len(prices)  # handler calls


def test_conflation_keeps_series_apart_and_is_refused_for_trades(make_client: Any) -> None:
    client = make_client()
    for register in (client.on_trade, client.on_liquidation, client.on_trade_agg):
        with pytest.raises(TypeError, match="conflate"):  # not even a parameter there
            register(print, exchange="X", symbol="BTCUSDT", conflate=True)  # type: ignore[call-overload]
    for channel in ("TRADE", "TRADE_AGG", "LIQUIDATION"):
        with pytest.raises(ConfigurationError, match="conflate"):
            client.subscribe(channel, print, exchange="X", symbol="BTCUSDT", conflate=True)
    with pytest.raises(ConfigurationError, match="conflate"):
        client.on_book(print, exchange="X", symbol="BTCUSDT", block_size=10, conflate=1)  # type: ignore[arg-type]
    assert client.subscribe("OPEN_INTEREST", print, exchange="X", symbol="BTCUSDT", conflate=True).conflate


def test_one_batch_delivers_the_last_point_of_each_series() -> None:
    got: list[Any] = []
    dispatcher = Dispatcher("book", EventQueue(100, "block"), Hooks(), FrameDecoder(2**24),
                            lambda *args: None, lambda error: None)
    for symbol in ("A", "B"):
        spec = make_spec(Channel.BLOCK_BOOK_SNAPSHOT, exchange="X", symbol=symbol,
                         options={"block_size": 10})
        dispatcher.routes = dispatcher.routes.updated(spec, (Conflated(got.append),))
    points = [book_point("X", symbol, bids=[(float(i), 1.0)], asks=[], block_size=10, time_ns=T0 + i)
              for i in range(6) for symbol in ("A", "B")]
    for point in points[:-2]:  # ten frames in one batch, then one more (a batch of its own)
        dispatcher.queue.put_frame(json.dumps({"points": [point]}).encode(), False)
    dispatcher.queue.close_data()
    dispatcher._dispatch()
    assert [(e.symbol, e.bids[0].price) for e in got] == [("A", 4.0), ("B", 4.0)]
    assert dispatcher.conflated == 8
    dispatcher.queue.put_frame(json.dumps({"points": points[-2:]}).encode(), False)  # refused: closed
    assert dispatcher.events == 2


# -- Prometheus ------------------------------------------------------------------------------------

def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_are_served_over_http_and_stop_with_the_client(
        server: FakeKiyotakaServer, make_client: Any) -> None:
    from kiyotaka_ws.metrics import serve
    client = make_client()
    got = Collector()
    sub = client.on_trade(got, exchange="X", symbol="BTCUSDT")
    metrics = serve(client, 0)
    assert metrics.port > 0 and metrics.url.startswith("http://127.0.0.1:")
    assert any(t.name == "kiyotaka-ws-metrics" for t in threading.enumerate())
    before = scrape(metrics.url)
    nonbook = frozenset({("family", "nonbook")})
    assert before[("kiyotaka_ws_frames_total", nonbook)] == 0
    assert before[("kiyotaka_ws_state", frozenset({("family", "nonbook"), ("state", "STOPPED")}))] == 1
    assert not any(name.startswith("kiyotaka_ws_feed_latency") for name, _ in before)  # no event yet
    with client:
        sub.wait(5)
        for i in range(3):  # one frame each: latencies are sampled per frame
            server.publish([trade(i, time.time_ns() - 1_000_000_000)])
        assert got.wait_for(3)
        samples = scrape(metrics.url)
        assert samples[("kiyotaka_ws_events_total", nonbook)] == 3
        assert samples[("kiyotaka_ws_frames_total", nonbook)] >= 1
        for name in ("dropped", "reconnects", "decode_errors", "handler_errors", "conflated"):
            assert samples[(f"kiyotaka_ws_{name}_total", nonbook)] == 0
        assert samples[("kiyotaka_ws_state", frozenset({("family", "nonbook"), ("state", "READY")}))] == 1
        assert samples[("kiyotaka_ws_state", frozenset({("family", "nonbook"), ("state", "STOPPED")}))] == 0
        assert samples[("kiyotaka_ws_queue_depth", nonbook)] >= 0
        assert samples[("kiyotaka_ws_shards", nonbook)] == 1
        assert samples[("kiyotaka_ws_requests_total", nonbook)] == 2  # authenticate, subscribe
        assert 0 <= samples[("kiyotaka_ws_last_frame_age_seconds", nonbook)] < 5
        feed = samples[("kiyotaka_ws_feed_latency_seconds", nonbook | {("quantile", "0.5")})]
        assert 1.0 <= feed < 1.25 * 1.5
        assert samples[("kiyotaka_ws_feed_latency_seconds_count", nonbook)] == 3
        assert samples[("kiyotaka_ws_handler_time_seconds_count", nonbook)] == 3
        assert samples[("kiyotaka_ws_queue_delay_max_seconds", nonbook)] >= 0
    # client.stop() stopped the server and joined its thread (the fixture checks no thread is left)
    assert not any(t.name == "kiyotaka-ws-metrics" for t in threading.enumerate())
    with pytest.raises(OSError):
        scrape(metrics.url)
    metrics.stop()  # idempotent


def test_metrics_register_and_a_handle_stops_the_server(make_client: Any) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from kiyotaka_ws.metrics import register, serve
    client = make_client()
    registry = CollectorRegistry()
    collector = register(client, registry)
    text = generate_latest(registry).decode()
    assert 'kiyotaka_ws_events_total{family="book"} 0.0' in text
    registry.unregister(collector)
    with serve(client, 0) as metrics:
        assert scrape(metrics.url)
    assert not any(t.name == "kiyotaka-ws-metrics" for t in threading.enumerate())
    client.stop()
    with pytest.raises(ClientStoppedError):
        serve(client, 0)


# -- kiyotaka-ws stream --stats --------------------------------------------------------------------

def test_stream_stats_prints_a_line_per_interval(capsys: Any) -> None:
    from kiyotaka_ws._cli.command import main
    with FakeKiyotakaServer(api_key="k") as server:
        stop = threading.Event()

        def publish() -> None:
            i = 0
            while not stop.wait(0.02):
                server.publish([trade(i, time.time_ns())])
                i += 1

        publisher = threading.Thread(target=publish)
        publisher.start()
        try:
            code = main(["stream", "TRADE", "--exchange", "X", "--symbol", "BTCUSDT", "--url", server.nonbook_url,
                         "--api-key", "k", "--json", "--seconds", "1.5", "--stats", "0.3"])
        finally:
            stop.set()
            publisher.join()
    assert code == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if " stats " in line]
    assert 3 <= len(lines) <= 5, lines
    last = lines[-1]
    assert last.startswith("kiyotaka-ws: stats nonbook: ") and "events/s" in last and "frames/s" in last
    assert "feed latency p50 " in last and "queue delay p50 " in last and " p99 " in last
    assert "dropped 0, reconnects 0, conflated 0" in last
    rate = float(last.split(": ")[2].split(" events/s")[0].replace(",", ""))
    assert 5 <= rate <= 100  # ~50 trades/s published


def test_stats_line_wording() -> None:
    from kiyotaka_ws import ConnectionStats
    from kiyotaka_ws._cli.command import stats_line
    before = ConnectionStats(events=100, frames=10)
    now = ConnectionStats(events=1100, frames=110, dropped=2, reconnects=1, conflated=3, queue_depth=4,
                          feed_latency=Percentiles(0.0123, 0.02, 0.0456, 0.05, 10))
    assert stats_line("nonbook", before, now, 2.0) == (
        "kiyotaka-ws: stats nonbook: 500 events/s, 50 frames/s; feed latency p50 12.3 ms p99 45.6 ms; "
        "dropped 2, reconnects 1, conflated 3, queue 4")


def test_latencies_are_sampled_once_per_frame(server: FakeKiyotakaServer, make_client: Any) -> None:
    """A frame of many points costs two measurements (its first event and its last point, the one
    that waited longest): count follows frames, events still all arrive."""
    client = make_client()
    got = Collector()
    client.on_trade(got, exchange="X", symbol="BTCUSDT")
    client.start()
    assert client.wait_ready(5)
    server.publish([trade(i) for i in range(50)])
    server.publish([trade(i) for i in range(50)])
    assert got.wait_for(100)
    assert wait_until(lambda: (client.stats()["nonbook"].queue_delay or Percentiles(0, 0, 0, 0, 0)).count == 4)
    stats = client.stats()["nonbook"]
    assert stats.events == 100 and stats.handler_time is not None and stats.handler_time.count == 4
