"""A multi-channel bot: trades and book on two threads, gap handling with on_status, errors logged.

    python examples/multi_channel_bot.py --fake --seconds 10
"""

import threading

from _runner import run

from kiyotaka_ws import (
    BookSnapshot,
    ConnectionStatus,
    KiyotakaClient,
    KiyotakaError,
    State,
    Trade,
)


class Bot:
    def __init__(self) -> None:
        self.lock = threading.Lock()  # trades and books arrive on two different dispatcher threads
        self.mid = None
        self.trades = 0
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
        if status.state is State.DISCONNECTED:
            with self.lock:
                self.gaps += 1
            print(f"[gap] {status.family} lost ({status.reason}); events may be missed until READY")
        elif status.state is State.READY and self.gaps:
            # Back after a gap: a real bot would re-sync here (e.g. fetch recent trades over REST).
            print(f"[resync] {status.family} READY again")

    def on_error(self, error: KiyotakaError) -> None:
        print(f"[error] {type(error).__name__}: {error}")


def setup(client: KiyotakaClient) -> None:
    bot = Bot()
    client.on_trade(bot.on_trade, exchange="BINANCE_FUTURES", symbol="BTCUSDT")
    client.on_book(bot.on_book, exchange="BINANCE_FUTURES", symbol="BTCUSDT", block_size=10)
    client.on_status(bot.on_status)
    client.on_error(bot.on_error)


if __name__ == "__main__":
    run(__doc__, setup)
