"""From capture to analysis: record the feed, export it to Parquet, compute 1-minute OHLCV bars in DuckDB.

    python examples/capture_to_bars.py --seconds 600             # record 10 min of the real service
    python examples/capture_to_bars.py --fake --seconds 3        # offline: a local fake market
    python examples/capture_to_bars.py --capture capture.kwsrec  # bars from an existing capture

Needs the analysis extra and DuckDB: pip install "kiyotaka-ws[analysis]" duckdb. The export is
what ``kiyotaka-ws export CAPTURE --out DIR`` does: one Parquet file per channel, a column per
event field, the values a handler would have got. The fake market's clock runs 250 times
faster than the wall clock, so a short run still spans several bars.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import duckdb

from kiyotaka_ws import KiyotakaClient
from kiyotaka_ws.analysis import export_capture
from kiyotaka_ws.testing import FakeKiyotakaServer, trade_point  # the "testing" extra

EXCHANGE, SYMBOL = "BINANCE_FUTURES", "BTCUSDT"

BARS = """
    SELECT time_bucket(INTERVAL 1 minute, time_ns) AS minute,
           arg_min(price, time_ns) AS open, max(price) AS high, min(price) AS low,
           arg_max(price, time_ns) AS close, sum(amount) AS volume, count(*) AS trades
    FROM read_parquet(?) WHERE symbol = ? GROUP BY minute ORDER BY minute
"""


def record(path: str, seconds: float, client_kwargs: dict[str, Any]) -> None:
    """Record TRADE for ``seconds`` into ``path`` (a handler is needed only to subscribe)."""
    client = KiyotakaClient(**client_kwargs, record=path)
    client.on_trade(lambda trade: None, exchange=EXCHANGE, symbol=SYMBOL)
    timer = threading.Timer(seconds, client.stop)
    timer.start()
    try:
        client.run_forever()
    finally:
        timer.cancel()
    print(f"recorded {seconds:g}s of {SYMBOL} trades to {path}")


def bars(capture: str, folder: str) -> None:
    stats = export_capture(capture, folder, channels=["TRADE"])
    print(f"exported {stats.points:,} trades to {folder}/trade.parquet")
    rows = duckdb.execute(BARS, [f"{folder}/trade.parquet", SYMBOL]).fetchall()
    print(f"{'minute (UTC)':<17} {'open':>10} {'high':>10} {'low':>10} {'close':>10} {'volume':>9} {'trades':>6}")
    for minute, open_, high, low, close, volume, trades in rows:
        print(f"{minute:%Y-%m-%d %H:%M} {open_:>10.1f} {high:>10.1f} {low:>10.1f} {close:>10.1f} "
              f"{volume:>9.3f} {trades:>6}")
    print(f"{len(rows)} one-minute bars")


def fake_market() -> Iterator[list[dict[str, Any]]]:
    """A random walk of trades on a clock 250 times faster than the wall clock (only for --fake)."""
    rng, price, n = random.Random(7), 90_000.0, 0
    clock = 1_767_225_600_000_000_000  # 2026-01-01 00:00 UTC
    while True:
        batch = []
        for _ in range(5):
            price += rng.gauss(0, 4)
            n += 1
            clock += 500_000_000  # 10 ms of recording, 5 trades: 2.5 s of market time
            batch.append(trade_point(EXCHANGE, SYMBOL, price=round(price, 1), amount=round(rng.uniform(0.001, 0.5), 3),
                                     side=rng.choice(["BUY", "SELL"]), id=n, time_ns=clock))
        yield batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fake", action="store_true", help="record a local fake server with a synthetic market")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to record (default 10)")
    parser.add_argument("--capture", metavar="PATH", help="use this capture instead of recording one")
    parser.add_argument("--out", metavar="DIR", help="where to write the Parquet files (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        capture = args.capture or f"{folder}/capture.kwsrec"
        if not args.capture and args.fake:
            with FakeKiyotakaServer() as server:
                server.feed(fake_market(), interval=0.01)
                record(capture, args.seconds, server.client_kwargs())
        elif not args.capture:
            record(capture, args.seconds, {})  # the key comes from KIYOTAKA_API_KEY
        bars(capture, args.out or folder)


if __name__ == "__main__":
    main()
