"""Trade tape: every BTCUSDT trade on Binance USDT-M futures, one line each.

    python examples/trade_tape.py                    # the real service (key from KIYOTAKA_API_KEY)
    python examples/trade_tape.py --fake --seconds 5 # offline: a local fake server with synthetic trades
"""

from __future__ import annotations

import argparse
import random
import threading
from collections.abc import Iterator
from typing import Any

from kiyotaka_ws import KiyotakaClient, Trade
from kiyotaka_ws.testing import FakeKiyotakaServer, trade_point  # the "testing" extra

EXCHANGE, SYMBOL = "BINANCE_FUTURES", "BTCUSDT"


def setup(client: KiyotakaClient) -> None:
    @client.on_trade(exchange=EXCHANGE, symbol=SYMBOL)
    def tape(trade: Trade) -> None:
        # Runs on the nonbook dispatcher thread, one trade at a time, in server order.
        print(f"{trade.datetime:%H:%M:%S.%f} {trade.side:<4} {trade.amount:>10.4f} @ {trade.price:,.1f}")


def fake_market() -> Iterator[list[dict[str, Any]]]:
    """A random walk of trades, for ever (only for --fake)."""
    rng, price = random.Random(1), 90_000.0
    while True:
        price += rng.gauss(0, 5)
        yield [trade_point(EXCHANGE, SYMBOL, price=round(price, 1), amount=round(rng.expovariate(20), 4),
                                    side=rng.choice(["BUY", "SELL"]), id=rng.getrandbits(40))]


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
        server.feed(fake_market(), interval=0.05)
        run(client, args.seconds)


if __name__ == "__main__":
    main()
