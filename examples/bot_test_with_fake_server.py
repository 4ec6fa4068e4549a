"""How to test a bot with FakeKiyotakaServer: real sockets, deterministic data, injected faults.

    python examples/bot_test_with_fake_server.py     (prints "ok" when every check passes)

The same code works as a pytest test; it is a script here so it runs on its own.
"""

import threading

from kiyotaka_ws import KiyotakaClient, Trade
from kiyotaka_ws.testing import FakeKiyotakaServer, trade_point


class VwapBot:
    """The bot under test: a running volume-weighted average price."""

    def __init__(self) -> None:
        self.notional = 0.0
        self.volume = 0.0
        self.seen = threading.Condition()

    def on_trade(self, trade: Trade) -> None:
        with self.seen:
            self.notional += trade.price * trade.amount
            self.volume += trade.amount
            self.seen.notify_all()

    def wait_volume(self, volume: float, timeout: float = 5.0) -> bool:
        with self.seen:
            return self.seen.wait_for(lambda: self.volume >= volume, timeout)

    @property
    def vwap(self) -> float:
        return self.notional / self.volume


def main() -> None:
    with FakeKiyotakaServer(api_key="test") as server:
        bot = VwapBot()
        client = KiyotakaClient(**server.client_kwargs(), backoff_initial=0.05)
        sub = client.on_trade(bot.on_trade, exchange="BINANCE_FUTURES", symbol="BTCUSDT")
        with client:
            sub.wait(5)
            server.publish([trade_point("BINANCE_FUTURES", "BTCUSDT", price=100.0, amount=1.0),
                            trade_point("BINANCE_FUTURES", "BTCUSDT", price=200.0, amount=3.0)])
            assert bot.wait_volume(4.0)
            assert bot.vwap == 175.0

            # A fault: the connection drops; the client reconnects and resubscribes by itself.
            server.drop_connections()
            assert server.wait_for(lambda s: s.connection_count == 2 and len(s.subscriptions()) == 1)
            assert client.wait_ready(5)
            server.publish([trade_point("BINANCE_FUTURES", "BTCUSDT", price=300.0, amount=4.0)])
            assert bot.wait_volume(8.0)
            assert bot.vwap == 237.5
    print("ok")


if __name__ == "__main__":
    main()
