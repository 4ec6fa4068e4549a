"""Order-book spread monitor: best bid/ask, spread and depth near the mid, once per snapshot.

    python examples/spread_monitor.py                     # the real service (key from KIYOTAKA_API_KEY)
    python examples/spread_monitor.py --fake --seconds 5  # offline: a local fake server with synthetic books
"""

from __future__ import annotations

import argparse
import random
import threading
from collections.abc import Iterator
from typing import Any

from kiyotaka_ws import BookSnapshot, KiyotakaClient
from kiyotaka_ws.testing import FakeKiyotakaServer, book_point  # the "testing" extra

EXCHANGE, SYMBOL = "BINANCE_FUTURES", "BTCUSDT"

WIDE_SPREAD = 25.0
BLOCK = 10.0


def setup(client: KiyotakaClient) -> None:
    # block_size is the price bucket (GET /v1/block-sizes gives the finest; 5x that is "HD").
    @client.on_book(exchange=EXCHANGE, symbol=SYMBOL, block_size=BLOCK, max_depth=50, update_frequency="1s")
    def monitor(book: BookSnapshot) -> None:
        if book.best_bid is None or book.best_ask is None or book.spread is None:
            return
        depth_bid = sum(level.size for level in book.bids[:5])
        depth_ask = sum(level.size for level in book.asks[:5])
        flag = "  <-- wide" if book.spread > WIDE_SPREAD else ""
        print(f"bid {book.best_bid.price:,.1f}  ask {book.best_ask.price:,.1f}  spread {book.spread:,.1f}  "
              f"depth(5) {depth_bid:.2f}/{depth_ask:.2f}{flag}")


def fake_market() -> Iterator[list[dict[str, Any]]]:
    """Random order books, for ever (only for --fake)."""
    rng, mid = random.Random(2), 90_000.0
    while True:
        mid += rng.gauss(0, 8)
        best_bid = (mid // BLOCK) * BLOCK
        gap = BLOCK * rng.choice([1, 1, 1, 2, 3])  # now and then the book thins out
        bids = [(best_bid - i * BLOCK, round(rng.uniform(0.5, 6), 3)) for i in range(10)]
        asks = [(best_bid + gap + i * BLOCK, round(rng.uniform(0.5, 6), 3)) for i in range(10)]
        yield [book_point(EXCHANGE, SYMBOL, bids=bids, asks=asks, block_size=BLOCK)]


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
        client = KiyotakaClient(**server.client_kwargs())
        setup(client)
        server.feed(fake_market(), interval=0.1)
        run(client, args.seconds)


if __name__ == "__main__":
    main()
