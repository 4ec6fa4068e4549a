"""A multi-channel bot: trades and the book on two threads, gap handling with on_status, errors reported.

    python examples/multi_channel_bot.py                     # the real service (key from KIYOTAKA_API_KEY)
    python examples/multi_channel_bot.py --fake --seconds 5  # offline: a fake server that drops the connection once

A DISCONNECTED followed by READY means events sent in between were missed (the service has no
replay): the bot reports the gap, and a real bot would re-sync there (e.g. fetch trades over REST).
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

from kiyotaka_ws import (
    BookSnapshot,
    ConnectionStatus,
    KiyotakaClient,
    KiyotakaError,
    State,
    Trade,
)
from kiyotaka_ws.testing import (  # the "testing" extra
    FakeKiyotakaServer,
    book_point,
    trade_point,
)

EXCHANGE, SYMBOL, BLOCK = "BINANCE_FUTURES", "BTCUSDT", 10.0


class Bot:
    def __init__(self) -> None:
        self.lock = threading.Lock()  # trades and books arrive on two different dispatcher threads
        self.mid: float | None = None
        self.trades = 0
        self.lost_at: dict[str, float] = {}  # family -> when it went DISCONNECTED
        self.gaps = 0

    def on_trade(self, trade: Trade) -> None:
        with self.lock:
            self.trades += 1
            if self.mid is not None and self.trades % 25 == 0:
                print(f"trade {trade.price:,.1f} vs mid {self.mid:,.1f}: {trade.price - self.mid:+.1f}")

    def on_book(self, book: BookSnapshot) -> None:
        with self.lock:
            self.mid = book.mid

    def on_status(self, status: ConnectionStatus) -> None:
        # Runs on the dispatcher of the family concerned; the lock guards state shared by both.
        with self.lock:
            if status.state is State.DISCONNECTED:
                self.lost_at.setdefault(status.family, time.monotonic())
                print(f"[lost] {status.family} ({status.reason}); reconnecting")
            elif status.state is State.READY and status.family in self.lost_at:
                down = time.monotonic() - self.lost_at.pop(status.family)
                self.gaps += 1
                print(f"[gap] {status.family} was down {down:.2f}s: events in between may be missing; re-syncing")

    def on_error(self, error: KiyotakaError) -> None:
        print(f"[error] {type(error).__name__}: {error}")


def setup(client: KiyotakaClient) -> Bot:
    bot = Bot()
    client.on_trade(bot.on_trade, exchange=EXCHANGE, symbol=SYMBOL)
    client.on_book(bot.on_book, exchange=EXCHANGE, symbol=SYMBOL, block_size=BLOCK)
    client.on_status(bot.on_status)
    client.on_error(bot.on_error)
    return bot


def fake_market(server: FakeKiyotakaServer, drop_after: float) -> Iterator[list[dict[str, Any]]]:
    """Trades and books for ever, and every connection cut once (only for --fake)."""
    rng, mid, started, dropped = random.Random(6), 90_000.0, time.monotonic(), False
    while True:
        mid += rng.gauss(0, 3)
        side = rng.choice(["BUY", "SELL"])
        points = [trade_point(EXCHANGE, SYMBOL, price=round(mid + (3 if side == "BUY" else -3), 1),
                              amount=round(rng.expovariate(20), 4), side=side, id=rng.getrandbits(40))]
        if rng.random() < 0.2:
            best_bid = (mid // BLOCK) * BLOCK
            points.append(book_point(EXCHANGE, SYMBOL, bids=[(best_bid - i * BLOCK, 1.0) for i in range(5)],
                                     asks=[(best_bid + (i + 1) * BLOCK, 1.0) for i in range(5)], block_size=BLOCK))
        yield points
        if not dropped and time.monotonic() - started >= drop_after:
            dropped = True
            server.drop_connections()  # a fault on purpose: a TCP reset of both connections


def run(client: KiyotakaClient, seconds: float | None) -> None:
    """Run until Ctrl-C (or for ``seconds``); a rejected key raises AuthenticationError."""
    timer = threading.Timer(seconds or 0, client.stop)
    if seconds:
        timer.start()
    try:
        client.run_forever()
    finally:
        timer.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fake", action="store_true", help="use a local fake server with a synthetic market")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    args = parser.parse_args()
    if not args.fake:
        client = KiyotakaClient()  # the key comes from KIYOTAKA_API_KEY
        setup(client)
        run(client, args.seconds)
        return
    with FakeKiyotakaServer() as server:
        client = KiyotakaClient(**server.client_kwargs(), backoff_initial=0.1)
        bot = setup(client)
        server.feed(fake_market(server, drop_after=min(1.0, (args.seconds or 3.0) / 3)), interval=0.02)
        run(client, args.seconds)
        print(f"{bot.trades} trades, {bot.gaps} gap(s) detected")


if __name__ == "__main__":
    main()
