"""Liquidation alerts: report liquidations worth more than a notional threshold on every exchange.

    python examples/liquidation_alerts.py                     # the real service (key from KIYOTAKA_API_KEY)
    python examples/liquidation_alerts.py --fake --seconds 5  # offline: a local fake server
"""

from __future__ import annotations

import argparse
import random
import threading
from collections.abc import Iterator
from typing import Any

from kiyotaka_ws import KiyotakaClient, Liquidation
from kiyotaka_ws.testing import (  # the "testing" extra
    FakeKiyotakaServer,
    liquidation_point,
)

EXCHANGE, SYMBOL = "BINANCE_FUTURES", "BTCUSDT"

THRESHOLD_USD = 10_000


def setup(client: KiyotakaClient) -> None:
    @client.on_liquidation(exchange="*", symbol=SYMBOL)  # "*": every exchange
    def alert(liq: Liquidation) -> None:
        notional = liq.price * liq.amount
        if notional >= THRESHOLD_USD:
            # series.side is passed through as sent (BUY/SELL); the docs do not say which party it names.
            print(f"LIQUIDATION {liq.exchange} {liq.symbol} {liq.side} {liq.amount} @ {liq.price:,.1f} "
                  f"= ${notional:,.0f}")


def fake_market() -> Iterator[list[dict[str, Any]]]:
    """Liquidations of every size on two exchanges, for ever (only for --fake)."""
    rng, price = random.Random(4), 90_000.0
    while True:
        price += rng.gauss(0, 10)
        exchange = rng.choice([EXCHANGE, "BYBIT"])
        yield [liquidation_point(exchange, SYMBOL, price=round(price, 1), amount=round(rng.uniform(0.01, 2), 3),
                                          side=rng.choice(["BUY", "SELL"]), id=rng.getrandbits(32))]


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
