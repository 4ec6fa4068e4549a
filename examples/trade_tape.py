"""Trade tape: every BTCUSDT trade on Binance USDT-M futures, one line each.

    python examples/trade_tape.py --fake --seconds 10
"""

from _runner import run

from kiyotaka_ws import KiyotakaClient, Trade


def setup(client: KiyotakaClient) -> None:
    @client.on_trade(exchange="BINANCE_FUTURES", symbol="BTCUSDT")
    def tape(trade: Trade) -> None:
        # Runs on the nonbook dispatcher thread, one trade at a time, in server order.
        print(f"{trade.datetime:%H:%M:%S.%f} {trade.side:<4} {trade.amount:>10.4f} @ {trade.price:,.1f}")


if __name__ == "__main__":
    run(__doc__, setup)
