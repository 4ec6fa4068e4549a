"""Backtest on a capture: record the live feed to a file, then run a strategy on it offline.

    python examples/backtest_replay.py --seconds 600               # record 10 min of the real service, then backtest
    python examples/backtest_replay.py --fake --seconds 3          # offline: record a local fake market
    python examples/backtest_replay.py --replay capture.kwsrec     # backtest an existing capture

The strategy is the same object live and in the backtest: it only sees `Trade` events. The
replay goes through the client's own decoding and routing, as fast as the strategy runs (pass
`--speed 1` to replay in real time).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from kiyotaka_ws import KiyotakaClient, Side, Trade
from kiyotaka_ws.testing import FakeKiyotakaServer, trade_point  # the "testing" extra

EXCHANGE, SYMBOL = "BINANCE_FUTURES", "BTCUSDT"


class Crossover:
    """Long when the fast moving average of trade prices is above the slow one, short below."""

    def __init__(self, fast: float = 0.2, slow: float = 0.02) -> None:
        self.fast_alpha, self.slow_alpha = fast, slow
        self.fast: float | None = None
        self.slow: float | None = None
        self.position = 0  # -1, 0, +1
        self.entry = 0.0
        self.pnl = 0.0
        self.trades = 0
        self.switches = 0

    def on_trade(self, trade: Trade) -> None:
        price = trade.price
        self.trades += 1
        if self.fast is None or self.slow is None:
            self.fast = self.slow = price
            return
        self.fast += self.fast_alpha * (price - self.fast)
        self.slow += self.slow_alpha * (price - self.slow)
        wanted = 1 if self.fast > self.slow else -1
        if self.trades > 50 and wanted != self.position:  # warm-up, then follow the signal
            if self.position:
                self.pnl += self.position * (price - self.entry)
            self.position, self.entry = wanted, price
            self.switches += 1

    def report(self, last_price: float | None) -> str:
        open_pnl = self.position * (last_price - self.entry) if self.position and last_price else 0.0
        return (f"backtest: {self.trades} trades, {self.switches} position changes, "
                f"PnL {self.pnl + open_pnl:+,.2f} per unit")


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


def backtest(path: str, speed: float | None) -> None:
    strategy = Crossover()
    last: list[float] = []
    replay = KiyotakaClient.replay(path, speed=speed)  # same handlers, same decoding, fed from the file
    replay.on_trade(strategy.on_trade, exchange=EXCHANGE, symbol=SYMBOL)
    replay.on_trade(lambda trade: last.append(trade.price), exchange=EXCHANGE, symbol=SYMBOL)
    replay.run_forever()  # returns at the end of the capture
    print(strategy.report(last[-1] if last else None))

    # The pull API on the same capture: no callback, just a loop.
    replay = KiyotakaClient.replay(path)
    volume = {Side.BUY: 0.0, Side.SELL: 0.0}
    with replay.events("TRADE", exchange=EXCHANGE, symbol=SYMBOL) as trades:
        replay.start()
        for trade in trades:  # ends at the end of the capture
            if trade.side is not None:
                volume[trade.side] += trade.amount
    replay.stop()
    print(f"pulled: buy volume {volume[Side.BUY]:.3f}, sell volume {volume[Side.SELL]:.3f}")


def fake_market() -> Iterator[list[dict[str, Any]]]:
    """A random walk of trades, for ever (only for --fake)."""
    rng, price, n = random.Random(7), 90_000.0, 0
    while True:
        batch = []
        for _ in range(5):
            price += rng.gauss(0, 4)
            n += 1
            batch.append(trade_point(EXCHANGE, SYMBOL, price=round(price, 1), amount=round(rng.uniform(0.001, 0.5), 3),
                                     side=rng.choice(["BUY", "SELL"]), id=n))
        yield batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fake", action="store_true", help="record a local fake server with a synthetic market")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to record (default 10)")
    parser.add_argument("--replay", metavar="PATH", help="backtest this capture instead of recording one")
    parser.add_argument("--out", metavar="PATH", help="where to record (default: a temporary file)")
    parser.add_argument("--speed", type=float, help="replay pace: 1 = real time (default: as fast as possible)")
    args = parser.parse_args()
    if args.replay:
        backtest(args.replay, args.speed)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = args.out or f"{folder}/capture.kwsrec"
        if args.fake:
            with FakeKiyotakaServer() as server:
                server.feed(fake_market(), interval=0.01)
                record(path, args.seconds, server.client_kwargs())
        else:
            record(path, args.seconds, {})  # the key comes from KIYOTAKA_API_KEY
        backtest(path, args.speed)


if __name__ == "__main__":
    main()
