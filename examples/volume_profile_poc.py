"""Volume-profile point of control: the price bucket with the most traded volume.

    python examples/volume_profile_poc.py --fake --seconds 10
"""

from _runner import run

from kiyotaka_ws import KiyotakaClient, VolumeProfile


def setup(client: KiyotakaClient) -> None:
    @client.on_volume_profile(exchange="BINANCE_FUTURES", symbol="BTCUSDT", quote="USD", update_frequency="1s")
    def poc(profile: VolumeProfile) -> None:
        if not profile.levels:
            return
        top = max(profile.levels, key=lambda lv: lv.buy_volume + lv.sell_volume)
        total = sum(lv.buy_volume + lv.sell_volume for lv in profile.levels)
        imbalance = (top.buy_volume - top.sell_volume) / (top.buy_volume + top.sell_volume)
        print(f"POC {top.price:,.0f} (bucket {profile.block_size}): {top.buy_volume + top.sell_volume:.2f} "
              f"of {total:.2f}, buy/sell imbalance {imbalance:+.0%}")


if __name__ == "__main__":
    run(__doc__, setup)
