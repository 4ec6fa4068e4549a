"""Point decoding: every example frame of the protocol notes, and malformed points of every kind."""

from __future__ import annotations

import datetime as dt

import pytest

from kiyotaka_ws import (
    BookLevel,
    BookSnapshot,
    Channel,
    DecodeError,
    FundingRate,
    Liquidation,
    OpenInterest,
    Side,
    Trade,
    TradeAggregation,
    VolumeLevel,
    VolumeProfile,
)
from kiyotaka_ws.events import decode_point

TRADE = {"series": {"type": "TRADE", "symbol": "BTCUSDT", "exchange": "BINANCE_FUTURES",
                    "normalizedSymbol": "BTC-USDT", "category": "PERPETUAL", "side": "BUY", "coin": "BTC",
                    "inverse": False},
         "trade": {"id": "7126482260", "price": 90003, "amount": 0.002,
                   "timestamp": {"seconds": 1769058875, "nanoseconds": 830000000}}}
TRADE_AGG = {"series": {"type": "TRADE_AGG", "symbol": "BTCUSDT", "exchange": "BINANCE_FUTURES",
                        "normalizedSymbol": "BTC-USDT", "category": "PERPETUAL", "session": "0", "side": "SELL",
                        "coin": "BTC", "inverse": False},
             "tradeAggregation": {"open": 90003.0, "high": 90010.5, "low": 89998.1, "close": 90001.2,
                                  "volume": 1.734,
                                  "timestamp": {"seconds": 1769058875, "nanoseconds": 800000000},
                                  "firstTimestamp": {"seconds": 1769058875, "nanoseconds": 812000000},
                                  "lastTimestamp": {"seconds": 1769058875, "nanoseconds": 991000000}}}
BOOK = {"series": {"type": "BLOCK_BOOK_SNAPSHOT", "symbol": "BTCUSDT", "exchange": "BINANCE_FUTURES",
                   "normalizedSymbol": "BTC-USDT", "coin": "BTC", "blockSize": 25, "inverse": False},
        "blockBookSnapshot": {"bids": [89975, 12.41, 89950, 8.03, 89925, 15.77],
                              "asks": [90000, 9.12, 90025, 4.56, 90050, 11.30],
                              "timestamp": {"seconds": 1769058900}}}
LIQUIDATION = {"series": {"type": "LIQUIDATION", "symbol": "BTCUSDT", "exchange": "BINANCE_FUTURES",
                          "normalizedSymbol": "BTC-USDT", "category": "PERPETUAL", "side": "SELL", "coin": "BTC",
                          "inverse": False},
               "liquidation": {"id": "394820175", "price": 89750.5, "amount": 0.15,
                               "timestamp": {"seconds": 1769058900, "nanoseconds": 420000000}}}
FUNDING = {"series": {"type": "FUNDING_RATE", "symbol": "BTCUSDT", "exchange": "BINANCE_FUTURES",
                      "normalizedSymbol": "BTC-USDT", "category": "PERPETUAL", "coin": "BTC", "inverse": False},
           "fundingRate": {"fundingRate": 0.0001, "predictedFundingRate": 0.00012,
                           "timestamp": {"seconds": 1769058900}}}
OPEN_INTEREST = {"series": {"type": "OPEN_INTEREST", "symbol": "BTCUSDT", "exchange": "BINANCE_FUTURES",
                            "normalizedSymbol": "BTC-USDT", "category": "PERPETUAL", "coin": "BTC", "inverse": False},
                 "openInterest": {"openInterest": 72450.32, "timestamp": {"seconds": 1769058900}}}
VOLUME_PROFILE = {"series": {"type": "VOLUME_PROFILE_AGG", "symbol": "BTCUSDT", "exchange": "BINANCE_FUTURES",
                             "coin": "BTC", "category": "PERPETUAL", "blockSize": 25},
                  "volumeProfileAggregation": {"profile": [89950, 1.25, 0.87, 89975, 3.41, 2.15, 90000, 5.67, 4.32,
                                                           90025, 2.89, 3.01, 90050, 1.54, 1.10],
                                               "timestamp": {"seconds": 1769058900}}}
EXAMPLES = [TRADE, TRADE_AGG, BOOK, LIQUIDATION, FUNDING, OPEN_INTEREST, VOLUME_PROFILE]


def test_trade_example():
    ev = decode_point(TRADE)
    assert isinstance(ev, Trade)
    assert (ev.channel, ev.exchange, ev.symbol, ev.coin) == (Channel.TRADE, "BINANCE_FUTURES", "BTCUSDT", "BTC")
    assert (ev.normalized_symbol, ev.category) == ("BTC-USDT", "PERPETUAL")
    assert (ev.id, ev.price, ev.amount, ev.side) == ("7126482260", 90003.0, 0.002, Side.BUY)
    assert ev.time_ns == 1769058875_830000000
    assert ev.timestamp == pytest.approx(1769058875.83)
    assert ev.datetime == dt.datetime(2026, 1, 22, 5, 14, 35, 830000, tzinfo=dt.timezone.utc)
    assert ev.raw is TRADE
    assert isinstance(ev.price, float)


def test_trade_agg_example():
    ev = decode_point(TRADE_AGG)
    assert isinstance(ev, TradeAggregation)
    assert (ev.open, ev.high, ev.low, ev.close, ev.volume) == (90003.0, 90010.5, 89998.1, 90001.2, 1.734)
    assert ev.side is Side.SELL
    assert ev.time_ns == 1769058875_800000000
    assert (ev.first_time_ns, ev.last_time_ns) == (1769058875_812000000, 1769058875_991000000)


def test_book_example():
    ev = decode_point(BOOK)
    assert isinstance(ev, BookSnapshot)
    assert ev.bids == (BookLevel(89975, 12.41), BookLevel(89950, 8.03), BookLevel(89925, 15.77))
    assert ev.asks[0] == BookLevel(90000, 9.12) and len(ev.asks) == 3
    assert ev.best_bid == (89975.0, 12.41) and ev.best_ask.price == 90000.0
    assert ev.mid == 89987.5 and ev.spread == 25.0
    assert ev.block_size == 25.0 and ev.category is None
    assert ev.time_ns == 1769058900 * 10**9  # nanoseconds missing: 0


def test_liquidation_funding_oi_examples():
    liq = decode_point(LIQUIDATION)
    assert isinstance(liq, Liquidation)
    assert (liq.id, liq.price, liq.amount, liq.side) == ("394820175", 89750.5, 0.15, Side.SELL)
    fr = decode_point(FUNDING)
    assert isinstance(fr, FundingRate) and (fr.rate, fr.predicted_rate) == (0.0001, 0.00012)
    oi = decode_point(OPEN_INTEREST)
    assert isinstance(oi, OpenInterest) and oi.open_interest == 72450.32


def test_volume_profile_example():
    ev = decode_point(VOLUME_PROFILE)
    assert isinstance(ev, VolumeProfile)
    assert len(ev.levels) == 5 and ev.levels[0] == VolumeLevel(89950, 1.25, 0.87)
    assert ev.levels[-1].sell_volume == 1.10 and ev.block_size == 25.0
    assert ev.normalized_symbol is None  # absent from this example's series


def test_events_are_frozen_hashable_and_raw_is_left_out():
    a, b = decode_point(TRADE), decode_point({**TRADE, "extra": 1})
    assert a == b and hash(a) == hash(b) and "raw" not in repr(a)
    with pytest.raises(AttributeError):
        a.price = 1.0  # type: ignore[misc]


def test_optional_parts():
    fr = decode_point({"series": {"type": "FUNDING_RATE"}, "fundingRate": {}})
    assert fr.rate is None and fr.predicted_rate is None and fr.time_ns is None
    assert fr.timestamp is None and fr.datetime is None and fr.exchange is None
    trade = decode_point({"series": {"type": "TRADE", "side": "UNKNOWN_SIDE"},
                          "trade": {"timestamp": {"s": 5, "ns": 7}}})
    assert trade.side is None and trade.price == 0.0 and trade.time_ns == 5_000_000_007 and trade.id == ""
    grouped = decode_point({"series": {"type": "BLOCK_BOOK_SNAPSHOT", "coin": "BTC"}, "blockBookSnapshot": {}})
    assert grouped.symbol is None and grouped.bids == () and grouped.best_bid is None and grouped.mid is None
    assert decode_point({"series": {"type": "TRADE"}, "trade": {"id": 42}}).id == "42"
    assert decode_point({"series": {"type": "TRADE"}, "trade": {"timestamp": {"seconds": "12"}}}).time_ns == 12 * 10**9


def test_unknown_type_is_skipped():
    assert decode_point({"series": {"type": "NEW_THING"}, "newThing": {}}) is None


MALFORMED = [
    None, 1, "text", [], {}, {"series": None}, {"series": []}, {"series": {}}, {"series": {"type": 5}},
    {"series": {"type": "TRADE"}},                                    # payload missing
    {"series": {"type": "TRADE"}, "trade": []},                       # payload not an object
    {"series": {"type": "TRADE"}, "trade": {"price": "1"}},           # number as string
    {"series": {"type": "TRADE"}, "trade": {"price": True}},          # bool is not a number
    {"series": {"type": "TRADE"}, "trade": {"id": 1.5}},
    {"series": {"type": "TRADE", "side": 1}, "trade": {}},
    {"series": {"type": "TRADE", "exchange": 3}, "trade": {}},
    {"series": {"type": "TRADE"}, "trade": {"timestamp": 5}},
    {"series": {"type": "TRADE"}, "trade": {"timestamp": {"seconds": "x"}}},
    {"series": {"type": "TRADE"}, "trade": {"timestamp": {"seconds": 1, "nanoseconds": 2 * 10**9}}},
    {"series": {"type": "BLOCK_BOOK_SNAPSHOT"}, "blockBookSnapshot": {"bids": [1, 2, 3]}},
    {"series": {"type": "BLOCK_BOOK_SNAPSHOT"}, "blockBookSnapshot": {"bids": [1, "2"]}},
    {"series": {"type": "BLOCK_BOOK_SNAPSHOT"}, "blockBookSnapshot": {"asks": {"1": 2}}},
    {"series": {"type": "BLOCK_BOOK_SNAPSHOT", "blockSize": "25"}, "blockBookSnapshot": {}},
    {"series": {"type": "VOLUME_PROFILE_AGG"}, "volumeProfileAggregation": {"profile": [1, 2]}},
    {"series": {"type": "FUNDING_RATE"}, "fundingRate": {"fundingRate": []}},
    {"series": {"type": "OPEN_INTEREST"}, "openInterest": {"openInterest": {}}},
    {"series": {"type": "TRADE_AGG"}, "tradeAggregation": {"firstTimestamp": []}},
]


@pytest.mark.parametrize("point", MALFORMED)
def test_malformed_points_raise_decode_error_only(point):
    with pytest.raises(DecodeError) as info:
        decode_point(point)
    assert isinstance(info.value.excerpt, str) and len(info.value.excerpt) <= 123


def test_excerpt_is_short():
    with pytest.raises(DecodeError) as info:
        decode_point({"series": {"type": "TRADE"}, "trade": {"price": "x" * 10_000}})
    assert len(info.value.excerpt) <= 123 and info.value.excerpt.endswith("...")
