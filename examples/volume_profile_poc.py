"""Volume-profile point of control: the price bucket with the most traded volume.

    python examples/volume_profile_poc.py                     # the real service (key from KIYOTAKA_API_KEY)
    python examples/volume_profile_poc.py --fake --seconds 5  # offline: a local fake server
"""

from __future__ import annotations

import argparse
import random
import threading
from collections.abc import Iterator
from typing import Any

from kiyotaka_ws import KiyotakaClient, VolumeProfile
from kiyotaka_ws.testing import (  # the "testing" extra
    FakeKiyotakaServer,
    volume_profile_point,
)

EXCHANGE, SYMBOL = "BINANCE_FUTURES", "BTCUSDT"


def setup(client: KiyotakaClient) -> None:
    @client.on_volume_profile(exchange=EXCHANGE, symbol=SYMBOL, quote="USD", update_frequency="1s")
    def poc(profile: VolumeProfile) -> None:
        if not profile.levels:
            return
        top = max(profile.levels, key=lambda lv: lv.buy_volume + lv.sell_volume)
        total = sum(lv.buy_volume + lv.sell_volume for lv in profile.levels)
        imbalance = (top.buy_volume - top.sell_volume) / (top.buy_volume + top.sell_volume)
        print(f"POC {top.price:,.0f} (bucket {profile.block_size}): {top.buy_volume + top.sell_volume:.2f} "
              f"of {total:.2f}, buy/sell imbalance {imbalance:+.0%}")


def fake_market() -> Iterator[list[dict[str, Any]]]:
    """Volume profiles around a drifting price, for ever (only for --fake)."""
    rng, mid, bucket = random.Random(5), 90_000.0, 25.0
    while True:
        mid += rng.gauss(0, 10)
        base = (mid // bucket) * bucket
        levels = [(base + i * bucket, round(rng.uniform(0.5, 1.5) * 10 / (1 + abs(i)), 3),
                   round(rng.uniform(0.5, 1.5) * 10 / (1 + abs(i)), 3)) for i in range(-8, 9)]
        yield [volume_profile_point(EXCHANGE, SYMBOL, levels=levels, block_size=bucket)]


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
