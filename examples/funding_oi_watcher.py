"""Funding and open-interest watcher: print each change with its delta.

    python examples/funding_oi_watcher.py                     # the real service (key from KIYOTAKA_API_KEY)
    python examples/funding_oi_watcher.py --fake --seconds 5  # offline: a local fake server
"""

from __future__ import annotations

import argparse
import random
import threading
from collections.abc import Iterator
from typing import Any

from kiyotaka_ws import FundingRate, KiyotakaClient, OpenInterest
from kiyotaka_ws.testing import (  # the "testing" extra
    FakeKiyotakaServer,
    funding_rate_point,
    open_interest_point,
)

EXCHANGE, SYMBOL = "BINANCE_FUTURES", "BTCUSDT"


def setup(client: KiyotakaClient) -> None:
    last: dict[str, float | None] = {"oi": None}

    @client.on_funding_rate(exchange=EXCHANGE, symbol=SYMBOL)
    def funding(fr: FundingRate) -> None:
        # Either rate may be missing until the exchange publishes it.
        rate = "n/a" if fr.rate is None else f"{fr.rate:.4%}"
        predicted = "n/a" if fr.predicted_rate is None else f"{fr.predicted_rate:.4%}"
        print(f"funding {rate} (next {predicted})")

    @client.on_open_interest(exchange=EXCHANGE, symbol=SYMBOL)
    def open_interest(oi: OpenInterest) -> None:
        # Both handlers run on the same (nonbook) dispatcher thread: no lock needed for `last`.
        previous = last["oi"]
        delta = "" if previous is None else f" ({oi.open_interest - previous:+,.2f})"
        last["oi"] = oi.open_interest
        print(f"open interest {oi.open_interest:,.2f}{delta}")


def fake_market() -> Iterator[list[dict[str, Any]]]:
    """Funding rates and open interest, for ever (only for --fake)."""
    rng, oi, tick = random.Random(3), 72_450.0, 0
    while True:
        tick += 1
        oi += rng.gauss(0, 40)
        points = [open_interest_point(EXCHANGE, SYMBOL, open_interest=round(oi, 2))]
        if tick % 5 == 1:
            rate = 0.0001 + rng.gauss(0, 0.00002)
            # The predicted rate is left out now and then, as exchanges do before publishing it.
            predicted = None if tick % 3 == 0 else rate * 1.1
            points.append(funding_rate_point(EXCHANGE, SYMBOL, rate=rate, predicted_rate=predicted))
        yield points


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
