"""Liquidation alerts: report liquidations worth more than a notional threshold on every exchange.

    python examples/liquidation_alerts.py --fake --seconds 10
"""

from _runner import run

from kiyotaka_ws import KiyotakaClient, Liquidation

THRESHOLD_USD = 10_000


def setup(client: KiyotakaClient) -> None:
    @client.on_liquidation(exchange="*", symbol="BTCUSDT")  # "*": every exchange
    def alert(liq: Liquidation) -> None:
        notional = liq.price * liq.amount
        if notional >= THRESHOLD_USD:
            # series.side is passed through as sent (BUY/SELL); the docs do not say which party it names.
            print(f"LIQUIDATION {liq.exchange} {liq.symbol} {liq.side} {liq.amount} @ {liq.price:,.1f} "
                  f"= ${notional:,.0f}")


if __name__ == "__main__":
    run(__doc__, setup)
