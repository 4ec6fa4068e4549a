"""Order-book spread monitor: best bid/ask, spread and depth near the mid, once per snapshot.

    python examples/spread_monitor.py --fake --seconds 10
"""

from _runner import run

from kiyotaka_ws import BookSnapshot, KiyotakaClient

WIDE_SPREAD = 25.0


def setup(client: KiyotakaClient) -> None:
    # block_size is the price bucket (GET /v1/block-sizes gives the finest; 5x that is "HD").
    @client.on_book(exchange="BINANCE_FUTURES", symbol="BTCUSDT", block_size=10, max_depth=50,
                    update_frequency="1s")
    def monitor(book: BookSnapshot) -> None:
        if book.best_bid is None or book.best_ask is None:
            return
        depth_bid = sum(level.size for level in book.bids[:5])
        depth_ask = sum(level.size for level in book.asks[:5])
        flag = "  <-- wide" if (book.spread or 0) > WIDE_SPREAD else ""
        print(f"bid {book.best_bid.price:,.1f}  ask {book.best_ask.price:,.1f}  spread {book.spread:,.1f}  "
              f"depth(5) {depth_bid:.2f}/{depth_ask:.2f}{flag}")


if __name__ == "__main__":
    run(__doc__, setup)
