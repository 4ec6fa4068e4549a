"""Round 3 observability: ``received_ns`` on events, latency percentiles in ``stats()``,
conflation of snapshot channels, the Prometheus exporter and ``stream --stats``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import brotli
from conftest import Collector

from kiyotaka_ws import KiyotakaClient, Trade
from kiyotaka_ws.channels import Channel
from kiyotaka_ws.events import decode_point
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
