"""The testing kit's point builders: the documented wire shapes, decoded into the right events."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Collector

from kiyotaka_ws import (
    BookLevel,
    BookSnapshot,
    Channel,
    FundingRate,
    KiyotakaClient,
    Liquidation,
    OpenInterest,
    Side,
    Trade,
    TradeAggregation,
    VolumeLevel,
    VolumeProfile,
)
from kiyotaka_ws.events import decode_point
from kiyotaka_ws.testing import (
    FakeKiyotakaServer,
    book_point,
    funding_rate_point,
    liquidation_point,
    open_interest_point,
    series,
    trade_agg_point,
    trade_point,
    volume_profile_point,
)

EX, SYM = "BINANCE_FUTURES", "BTCUSDT"
T = 1_769_058_875_830_000_000  # the protocol notes' example time: seconds 1769058875, nanos 830000000
T0 = 1_769_058_900_000_000_000  # a whole second: protobuf-JSON leaves nanoseconds out


def _common(event: Any, channel: Channel, time_ns: int = T) -> None:
    assert event.channel is channel
    assert (event.exchange, event.symbol, event.coin, event.category) == (EX, SYM, "BTC", "PERPETUAL")
    assert event.time_ns == time_ns


def test_trade_point():
    point = trade_point(EX, SYM, price=90003, amount=0.002, side="BUY", id=7126482260, time_ns=T,
                        normalizedSymbol="BTC-USDT", inverse=False)
    assert point == {  # the documented TRADE example, key for key
        "series": {"type": "TRADE", "symbol": SYM, "exchange": EX, "normalizedSymbol": "BTC-USDT",
                   "category": "PERPETUAL", "side": "BUY", "coin": "BTC", "inverse": False},
        "trade": {"id": "7126482260", "price": 90003, "amount": 0.002,
                  "timestamp": {"seconds": 1769058875, "nanoseconds": 830000000}}}
    event = decode_point(point)
    assert isinstance(event, Trade)
    _common(event, Channel.TRADE)
    assert (event.id, event.price, event.amount, event.side) == ("7126482260", 90003.0, 0.002, Side.BUY)
    assert event.normalized_symbol == "BTC-USDT"


def test_trade_agg_point():
    point = trade_agg_point(EX, SYM, open=90003.0, high=90010.5, low=89998.1, close=90001.2, volume=1.734,
                            side="SELL", time_ns=T, first_time_ns=T + 1, last_time_ns=T + 2, session="0")
    assert set(point) == {"series", "tradeAggregation"}
    assert set(point["tradeAggregation"]) == {"open", "high", "low", "close", "volume", "timestamp",
                                              "firstTimestamp", "lastTimestamp"}
    assert point["series"]["session"] == "0" and point["series"]["side"] == "SELL"
    event = decode_point(point)
    assert isinstance(event, TradeAggregation)
    _common(event, Channel.TRADE_AGG)
    assert (event.open, event.high, event.low, event.close, event.volume) == (90003.0, 90010.5, 89998.1,
                                                                              90001.2, 1.734)
    assert (event.side, event.first_time_ns, event.last_time_ns) == (Side.SELL, T + 1, T + 2)
    defaults = decode_point(trade_agg_point(EX, SYM, open=1, high=2, low=0.5, close=1.5, volume=3, time_ns=T))
    assert isinstance(defaults, TradeAggregation)
    assert defaults.first_time_ns == defaults.last_time_ns == T and defaults.side is Side.BUY


def test_book_point():
    point = book_point(EX, SYM, bids=[(89975, 12.41), (89950, 8.03)], asks=[(90000, 9.12), (90025, 4.56)],
                       block_size=25, time_ns=T0)
    assert point["series"]["blockSize"] == 25
    assert point["blockBookSnapshot"] == {"bids": [89975, 12.41, 89950, 8.03], "asks": [90000, 9.12, 90025, 4.56],
                                          "timestamp": {"seconds": 1769058900}}
    event = decode_point(point)
    assert isinstance(event, BookSnapshot)
    _common(event, Channel.BLOCK_BOOK_SNAPSHOT, T0)
    assert event.bids == (BookLevel(89975.0, 12.41), BookLevel(89950.0, 8.03))
    assert event.asks == (BookLevel(90000.0, 9.12), BookLevel(90025.0, 4.56))
    assert (event.block_size, event.spread, event.mid) == (25.0, 25.0, 89987.5)
    grouped = decode_point(book_point(EX, None, coin="ETH", bids=[], asks=[], category=None))
    assert isinstance(grouped, BookSnapshot)
    assert (grouped.symbol, grouped.coin, grouped.category, grouped.best_bid) == (None, "ETH", None, None)


def test_liquidation_point():
    point = liquidation_point(EX, SYM, price=89750.5, amount=0.15, side="SELL", id="394820175", time_ns=T)
    assert set(point["liquidation"]) == {"id", "price", "amount", "timestamp"}
    event = decode_point(point)
    assert isinstance(event, Liquidation)
    _common(event, Channel.LIQUIDATION)
    assert (event.id, event.price, event.amount, event.side) == ("394820175", 89750.5, 0.15, Side.SELL)


def test_funding_rate_point():
    point = funding_rate_point(EX, SYM, rate=0.0001, predicted_rate=0.00012, time_ns=T0)
    assert point["fundingRate"] == {"fundingRate": 0.0001, "predictedFundingRate": 0.00012,
                                    "timestamp": {"seconds": 1769058900}}
    assert "side" not in point["series"]
    event = decode_point(point)
    assert isinstance(event, FundingRate)
    _common(event, Channel.FUNDING_RATE, T0)
    assert (event.rate, event.predicted_rate) == (0.0001, 0.00012)
    missing = funding_rate_point(EX, SYM, rate=None, time_ns=T0)  # not published yet: the keys are absent
    assert set(missing["fundingRate"]) == {"timestamp"}
    decoded = decode_point(missing)
    assert isinstance(decoded, FundingRate) and decoded.rate is None and decoded.predicted_rate is None


def test_open_interest_point():
    point = open_interest_point(EX, SYM, open_interest=72450.32, time_ns=T0)
    assert point["openInterest"] == {"openInterest": 72450.32, "timestamp": {"seconds": 1769058900}}
    event = decode_point(point)
    assert isinstance(event, OpenInterest)
    _common(event, Channel.OPEN_INTEREST, T0)
    assert event.open_interest == 72450.32


def test_volume_profile_point():
    point = volume_profile_point(EX, SYM, levels=[(89950, 1.25, 0.87), (89975, 3.41, 2.15)], block_size=25,
                                 time_ns=T0)
    assert point["series"]["blockSize"] == 25
    assert point["volumeProfileAggregation"] == {"profile": [89950, 1.25, 0.87, 89975, 3.41, 2.15],
                                                 "timestamp": {"seconds": 1769058900}}
    event = decode_point(point)
    assert isinstance(event, VolumeProfile)
    _common(event, Channel.VOLUME_PROFILE_AGG, T0)
    assert event.levels == (VolumeLevel(89950.0, 1.25, 0.87), VolumeLevel(89975.0, 3.41, 2.15))
    assert event.block_size == 25.0


@pytest.mark.parametrize(("symbol", "coin"), [("BTCUSDT", "BTC"), ("BTC-USDT-SWAP", "BTC"), ("XBTUSD", "XBT"),
                                             ("ETH_USDC", "ETH"), ("HYPE", "HYPE"), ("BTCF0:USTF0", "BTCF0")])
def test_series_guesses_the_coin(symbol: str, coin: str):
    assert series("TRADE", EX, symbol)["coin"] == coin
    assert series("TRADE", EX, symbol, coin="X")["coin"] == "X"


def test_every_builder_reaches_its_handler_through_the_fake_server():
    """End to end: each builder's point is routed by the fake server and the client to its handler."""
    points = [trade_point(EX, SYM, price=1, amount=1), trade_agg_point(EX, SYM, open=1, high=1, low=1, close=1,
                                                                      volume=1),
              liquidation_point(EX, SYM, price=1, amount=1), funding_rate_point(EX, SYM, rate=0.1),
              open_interest_point(EX, SYM, open_interest=5), volume_profile_point(EX, SYM, levels=[(1, 2, 3)]),
              book_point(EX, SYM, bids=[(1, 1)], asks=[(2, 1)])]
    got = Collector()
    with FakeKiyotakaServer(api_key="k") as server:
        client = KiyotakaClient(**server.client_kwargs())
        subs = [client.on_trade(got, exchange=EX, symbol=SYM), client.on_trade_agg(got, exchange=EX, symbol=SYM),
                client.on_liquidation(got, exchange=EX, symbol=SYM), client.on_funding_rate(got, exchange=EX, symbol=SYM),
                client.on_open_interest(got, exchange=EX, symbol=SYM),
                client.on_volume_profile(got, exchange=EX, symbol=SYM),
                client.on_book(got, exchange=EX, symbol=SYM, block_size=25)]
        with client:
            for sub in subs:
                sub.wait(5)
            server.publish(points)
            assert got.wait_for(7, timeout=5), got.items
    assert sorted(type(e).__name__ for e in got.items) == sorted(
        ["Trade", "TradeAggregation", "Liquidation", "FundingRate", "OpenInterest", "VolumeProfile", "BookSnapshot"])
