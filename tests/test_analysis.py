"""Recordings as tables: to_arrow / to_pandas / gaps and ``kiyotaka-ws export``, against captures made
by the real client recording from the fake server, and compared with what a replay delivers."""

from __future__ import annotations

import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import brotli
import pytest
from conftest import Collector, wait_until

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from kiyotaka_ws import (
    Channel,
    ConfigurationError,
    KiyotakaClient,
    analysis,
)
from kiyotaka_ws._cli.command import main
from kiyotaka_ws.recording import Recorder, RecordingReader, inspect_recording
from kiyotaka_ws.testing import (
    FakeKiyotakaServer,
    book_point,
    funding_rate_point,
    liquidation_point,
    open_interest_point,
    trade_agg_point,
    trade_point,
    volume_profile_point,
)

T0 = 1_700_000_000_000_000_000
MINUTE = 60 * 10**9


def _points(i: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Round ``i``: (nonbook points, book points), every channel, with the optional fields varied."""
    t = T0 + i * 7_000_000_001  # ~7 s apart: several minutes of bars
    nonbook = [
        trade_point("X", "BTCUSDT", price=100.0 + (i * 37 % 11), amount=0.5 + i % 3, side="SELL" if i % 3 else "BUY",
                    id=i, time_ns=t),
        trade_point("Y", "ETHUSDT", price=10.0 + i, amount=1, side="UNKNOWN_SIDE", id=f"e{i}", time_ns=t + 1),
        trade_agg_point("X", "BTCUSDT", open=1.0 + i, high=2.0 + i, low=0.5, close=1.5, volume=3.0 * i, time_ns=t,
                        first_time_ns=t - 5, last_time_ns=t - 1),
        liquidation_point("X", "BTCUSDT", price=99.5 + i, amount=2.0, side="BUY" if i % 2 else "SELL", id=i,
                          time_ns=t + 2, normalizedSymbol="BTC-USDT-PERP"),
        funding_rate_point("X", "BTCUSDT", rate=0.0001 * i if i % 2 else None,
                           predicted_rate=0.0002 if i % 3 else None, time_ns=t + 3, category=None),
        open_interest_point("X", "BTCUSDT", open_interest=1000 + i, time_ns=t + 4),
        volume_profile_point("X", "BTCUSDT", levels=[(100.0 + k, 1.0 * k, 2.0 * i) for k in range(i % 4)],
                             time_ns=t + 5),
    ]
    book = [book_point("X", "BTCUSDT", bids=[(100.0 - k, 1.0 + k) for k in range(i % 5)],
                       asks=[(101.0 + k, 2.0) for k in range(3)], block_size=10, time_ns=t + 6)]
    return nonbook, book


ROUNDS = 60
PER_ROUND = 8  # points per round


def _register_all(client: KiyotakaClient, sink: Any) -> list[Any]:
    return [client.on_trade(sink, exchange="*", symbol="BTCUSDT"),
            client.on_trade(sink, exchange="*", symbol="ETHUSDT"),
            client.on_trade_agg(sink, exchange="X", symbol="BTCUSDT", batch_interval="1s"),
            client.on_liquidation(sink, exchange="X", symbol="BTCUSDT"),
            client.on_funding_rate(sink, exchange="X", symbol="BTCUSDT"),
            client.on_open_interest(sink, exchange="X", symbol="BTCUSDT"),
            client.on_volume_profile(sink, exchange="X", symbol="BTCUSDT"),
            client.on_book(sink, exchange="X", symbol="BTCUSDT", block_size=10)]


@pytest.fixture(scope="module")
def capture(tmp_path_factory: Any) -> tuple[Path, list[Any]]:
    """A capture of all seven channels, recorded by the real client from the fake server, rotated
    into several segments; and the events its handlers got live."""
    path = tmp_path_factory.mktemp("capture") / "all.kwsrec"
    live = Collector()
    with FakeKiyotakaServer() as server:
        client = KiyotakaClient(**server.client_kwargs(), record=path, record_rotate_bytes=4096)
        subs = _register_all(client, live)
        with client:
            for sub in subs:
                sub.wait(5)
            for i in range(ROUNDS):
                nonbook, book = _points(i)
                server.publish(nonbook[:3])
                server.publish(nonbook[3:])
                server.publish(book)
            assert live.wait_for(ROUNDS * PER_ROUND, timeout=20)
    assert len(RecordingReader(path).files) >= 3  # rotated: the segments are read in order
    return path, live.items


def _replayed(path: Path) -> list[Any]:
    client = KiyotakaClient.replay(path)
    got = Collector()
    _register_all(client, got)
    client.run_forever()
    return got.items


def _as_row(event: Any, names: list[str]) -> dict[str, Any]:
    """An event's fields as the table holds them (levels as dicts, the side as its name)."""
    row: dict[str, Any] = {}
    for name in names:
        value = getattr(event, name)
        if name in ("bids", "asks", "levels"):
            value = [level._asdict() for level in value]
        elif name == "side" and value is not None:
            value = value.value
        row[name] = value
    return row


def _table_rows(table: Any) -> list[dict[str, Any]]:
    """Rows with every timestamp as integer nanoseconds (no rounding through datetime)."""
    arrays = [column.cast(pa.int64()) if pa.types.is_timestamp(column.type) else column
              for column in table.columns]
    return pa.Table.from_arrays(arrays, names=table.column_names).to_pylist()


def test_parquet_rows_equal_the_replayed_and_live_events_field_by_field(capture: Any, tmp_path: Path,
                                                                          capsys: Any) -> None:
    path, live = capture
    replayed = _replayed(path)
    for channel in Channel:  # live, the two families ran on their own threads: compare per channel
        assert [e for e in replayed if e.channel is channel] == [e for e in live if e.channel is channel]
    assert None not in [e.received_ns for e in replayed]
    assert main(["export", str(path), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"exported {ROUNDS * PER_ROUND:,} points" in out and "0 damaged" in out
    for channel in Channel:
        table = pq.read_table(tmp_path / f"{channel.value.lower()}.parquet")
        assert table.schema.equals(analysis.schema(channel))
        names = analysis.columns(channel)
        expected = [_as_row(e, names) for e in replayed if e.channel is channel]
        assert expected and _table_rows(table) == expected, channel  # every field, every row, in order
        assert _table_rows(analysis.to_arrow(path, channel)) == expected
    # Every event field has its column (channel and raw aside).
    for channel, cls in analysis.EVENT_CLASSES.items():
        import attrs
        assert {f.name for f in attrs.fields(cls)} - {"channel", "raw"} == set(analysis.columns(channel))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{c.value.lower()}.parquet" for c in Channel)


def test_duckdb_ohlcv_over_parquet_matches_bars_from_the_replayed_trades(capture: Any, tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    path, _ = capture
    assert main(["export", str(path), "--out", str(tmp_path), "--channel", "TRADE"], out=io.StringIO()) == 0
    bars = duckdb.sql(f"""
        SELECT symbol, epoch_ns(time_bucket(INTERVAL 1 minute, time_ns)) AS minute,
               arg_min(price, time_ns) AS open, max(price) AS high, min(price) AS low,
               arg_max(price, time_ns) AS close, sum(amount) AS volume, count(*) AS trades
        FROM '{tmp_path / "trade.parquet"}' GROUP BY ALL ORDER BY symbol, minute""").fetchall()
    expected: dict[tuple[str, int], list[Any]] = {}
    for trade in (e for e in _replayed(path) if e.channel is Channel.TRADE):
        key = (trade.symbol, trade.time_ns - trade.time_ns % MINUTE)
        bar = expected.setdefault(key, [trade.price, trade.price, trade.price, trade.price, 0.0, 0])
        bar[1], bar[2], bar[3] = max(bar[1], trade.price), min(bar[2], trade.price), trade.price
        bar[4] += trade.amount
        bar[5] += 1
    assert len(bars) == len(expected) >= 8
    for symbol, minute, *values in bars:
        want = expected[(symbol, minute)]
        assert values[:4] == want[:4] and math.isclose(values[4], want[4]) and values[5] == want[5]


def test_csv_export_and_pandas(capture: Any, tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    path, _ = capture
    assert main(["export", str(path), "--format", "csv", "--out", str(tmp_path), "--channel", "block_book_snapshot",
                 "--channel", "TRADE", "--symbol", "BTCUSDT"], out=io.StringIO()) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block_book_snapshot.csv", "trade.csv"]
    import pyarrow.csv as pcsv
    books = pcsv.read_csv(tmp_path / "block_book_snapshot.csv").to_pylist()
    replayed = [e for e in _replayed(path) if e.channel is Channel.BLOCK_BOOK_SNAPSHOT]
    assert [json.loads(row["bids"]) for row in books] == [[list(level) for level in e.bids] for e in replayed]
    assert pcsv.read_csv(tmp_path / "trade.csv").num_rows == ROUNDS  # ETHUSDT filtered out
    frame = analysis.to_pandas(path, "TRADE", exchange="Y")
    assert list(frame["symbol"].unique()) == ["ETHUSDT"] and frame["side"].isna().all()
    assert str(frame["time_ns"].dtype) == "datetime64[ns, UTC]"


def test_filters_by_exchange_symbol_and_time(capture: Any) -> None:
    import datetime as dt
    path, _ = capture
    assert analysis.to_arrow(path, Channel.TRADE, exchange="X").column("symbol").unique().to_pylist() == ["BTCUSDT"]
    start = dt.datetime.fromtimestamp((T0 + 10 * 7_000_000_001) / 1e9, tz=dt.timezone.utc)
    table = analysis.to_arrow(path, "trade", symbol="BTCUSDT", start=start, end=(T0 + 20 * 7_000_000_001) / 1e9)
    assert table.column("id").to_pylist() == [str(i) for i in range(10, 20)]
    assert analysis.to_arrow(path, "TRADE", symbol="NOPE").num_rows == 0
    for kwargs, named in [({"start": dt.datetime(2024, 1, 1)}, "start"), ({"end": "soon"}, "end"),
                          ({"exchange": 3}, "exchange"), ({"symbol": ""}, "symbol")]:
        with pytest.raises(ConfigurationError, match=named):
            analysis.to_arrow(path, "TRADE", **kwargs)
    with pytest.raises(ConfigurationError, match="channel"):
        analysis.to_arrow(path, "TRADES")
    with pytest.raises(ConfigurationError, match="path"):
        analysis.to_arrow(path.parent / "missing.kwsrec", "TRADE")


def _trade_frame(i: int, n: int = 10) -> bytes:
    points = [trade_point("X", "BTCUSDT", price=100.0 + i, amount=1.0, id=i * n + k, time_ns=T0 + i * n + k)
              for k in range(n)]
    return brotli.compress(json.dumps({"points": points}).encode(), quality=1)


def test_export_streams_in_row_groups_of_bounded_size(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "big.kwsrec"
    recorder = Recorder(path)
    recorder.open()
    tap = recorder.tap("nonbook")
    for i in range(200):
        tap(_trade_frame(i), True, 1)
    assert recorder.close(10)
    held: list[int] = []
    add = analysis._Batch.add
    monkeypatch.setattr(analysis._Batch, "add", lambda self, event: held.append(add(self, event)) or held[-1])
    stats = analysis.export_capture(path, tmp_path / "out", "parquet", ["TRADE"], rows=64)
    assert stats.points == 2000 and max(held) == 64  # never more than a row group held
    meta = pq.ParquetFile(tmp_path / "out" / "trade.parquet").metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sizes == [64] * 31 + [16]
    assert pq.read_table(tmp_path / "out" / "trade.parquet").column("id").to_pylist() == [str(i) for i in range(2000)]


def test_a_damaged_record_is_skipped_and_counted_as_replay_does(tmp_path: Path) -> None:
    path = tmp_path / "cap.kwsrec"
    recorder = Recorder(path)
    recorder.open()
    tap = recorder.tap("nonbook")
    for i in range(20):
        tap(_trade_frame(i), True, 1)
        time.sleep(0.001)
    assert recorder.close(10)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in a record in the middle
    path.write_bytes(bytes(data))
    client = KiyotakaClient.replay(path)
    got = Collector()
    client.on_trade(got, exchange="X", symbol="BTCUSDT")
    client.run_forever()
    table = analysis.to_arrow(path, "TRADE")
    assert 170 <= len(got.items) == table.num_rows < 200
    assert table.column("id").to_pylist() == [e.id for e in got.items]
    assert table.schema.metadata[b"kiyotaka_ws.damaged"] == b"1" == str(inspect_recording(path).torn).encode()


def test_bad_frames_and_points_cost_only_themselves_and_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "cap.kwsrec"
    recorder = Recorder(path)
    recorder.open()
    tap = recorder.tap("nonbook")
    good = trade_point("X", "BTCUSDT", price=1.0, amount=2.0, id=1, time_ns=T0)
    bad_price = trade_point("X", "BTCUSDT", price=1.0, amount=2.0, id=2, time_ns=T0)
    bad_price["trade"]["price"] = "1.0"
    unknown = {"series": {"type": "ORDER_FLOW", "exchange": "X", "symbol": "BTCUSDT"}, "orderFlow": {}}
    no_type = {"series": {"type": 7, "exchange": "X", "symbol": "BTCUSDT"}, "trade": {}}
    tap(json.dumps({"points": [good, bad_price, unknown, no_type, "nonsense", good]}).encode(), False, 1)
    tap(b"\x00not brotli", True, 1)
    tap(b'{"id": 1, "result": []}', False, 1)  # an answer: no data, no error (as replay)
    assert recorder.close(10)
    stats = analysis.CaptureStats()
    got = list(analysis.iter_events(path, [Channel.TRADE], stats))
    assert [e.id for e in got] == ["1", "1"]
    assert (stats.decode_errors, stats.unknown, stats.frames) == (4, 1, 3)
    meta = analysis.to_arrow(path, "TRADE").schema.metadata
    assert meta[b"kiyotaka_ws.decode_errors"] == b"4" and meta[b"kiyotaka_ws.unknown"] == b"1"


def test_gaps_table_lists_the_recorders_drops(tmp_path: Path) -> None:
    path = tmp_path / "cap.kwsrec"
    recorder = Recorder(path, max_buffer_frames=3)
    tap = recorder.tap("nonbook")  # not opened yet: nothing drains the buffer, as with a stuck disk
    for i in range(10):
        tap(_trade_frame(i, 1), True, 4)
    recorder.open()
    assert wait_until(lambda: recorder.stats.frames == 3)  # the disk is back: room again
    tap(_trade_frame(10, 1), True, 4)  # the gap is marked before the next frame kept
    assert recorder.close(10)
    table = analysis.gaps(path)
    assert table.drop(["time_ns"]).to_pylist() == [{"family": "nonbook", "connection": 4, "dropped": 7}]
    assert analysis.to_arrow(path, "TRADE").schema.metadata[b"kiyotaka_ws.dropped"] == b"7"


def test_export_without_pyarrow_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    err = io.StringIO()
    assert main(["export", str(tmp_path / "x.kwsrec"), "--out", str(tmp_path)], out=io.StringIO(), err=err) == 2
    assert err.getvalue().count("\n") == 1 and "kiyotaka-ws[analysis]" in err.getvalue()
    with pytest.raises(ConfigurationError, match=r"kiyotaka-ws\[analysis\]"):
        analysis.to_arrow(tmp_path / "x.kwsrec", "TRADE")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(capture: Any, tmp_path: Path) -> None:
    path, _ = capture
    quiet, tty = io.StringIO(), _Terminal()
    assert main(["export", str(path), "--out", str(tmp_path / "a")], out=io.StringIO(), err=quiet) == 0
    assert main(["export", str(path), "--out", str(tmp_path / "b")], out=io.StringIO(), err=tty) == 0
    assert quiet.getvalue() == ""
    assert tty.getvalue().startswith("\r[") and "100%" in tty.getvalue() and tty.getvalue().endswith("\n")


def test_a_failed_export_leaves_no_file_that_looks_whole(capture: Any, tmp_path: Path, monkeypatch: Any) -> None:
    path, _ = capture
    first = analysis.to_arrow(path, "TRADE").to_batches()[0]

    def broken(*args: Any, **kwargs: Any) -> Any:
        yield Channel.TRADE, first
        raise OSError("disk full")

    monkeypatch.setattr(analysis, "record_batches", broken)
    with pytest.raises(OSError, match="disk full"):
        analysis.export_capture(path, tmp_path, "parquet")
    assert list(tmp_path.iterdir()) == []
