"""Funding and open-interest watcher: print each change with its delta.

    python examples/funding_oi_watcher.py --fake --seconds 10
"""
from __future__ import annotations

from _runner import run

from kiyotaka_ws import FundingRate, KiyotakaClient, OpenInterest


def setup(client: KiyotakaClient) -> None:
    last: dict[str, float | None] = {"oi": None}

    @client.on_funding_rate(exchange="BINANCE_FUTURES", symbol="BTCUSDT")
    def funding(fr: FundingRate) -> None:
        # Either rate may be missing until the exchange publishes it.
        rate = "n/a" if fr.rate is None else f"{fr.rate:.4%}"
        predicted = "n/a" if fr.predicted_rate is None else f"{fr.predicted_rate:.4%}"
        print(f"funding {rate} (next {predicted})")

    @client.on_open_interest(exchange="BINANCE_FUTURES", symbol="BTCUSDT")
    def open_interest(oi: OpenInterest) -> None:
        # Both handlers run on the same (nonbook) dispatcher thread: no lock needed for `last`.
        delta = "" if last["oi"] is None else f" ({oi.open_interest - last['oi']:+,.2f})"
        last["oi"] = oi.open_interest
        print(f"open interest {oi.open_interest:,.2f}{delta}")


if __name__ == "__main__":
    run(__doc__, setup)
