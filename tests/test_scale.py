"""Thousands of subscriptions through the real client against a fake server enforcing limits (issue 23).

The server allows 10 control requests/s per connection (a token bucket, burst 5) and 50 channels
per request, and rejects any batch holding the bad symbol without naming it. The client (default
``max_channels_per_request=50``, ``max_requests_per_second=10``) must end READY with every good
channel held and delivering, the bad one rejected once, and no rate limit reported, at start and
after the server resets every connection.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from kiyotaka_ws import KiyotakaClient, RateLimited, SubscriptionError
from kiyotaka_ws.errors import KiyotakaError
from kiyotaka_ws.testing import FakeKiyotakaServer, trade_point

EX = "BINANCE"
BAD = "S0613USDT"


class Counter:
    """Trades delivered per symbol, and every error reported."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: dict[str, int] = {}
        self.errors: list[KiyotakaError] = []

    def trade(self, trade: Any) -> None:
        with self.lock:
            self.got[trade.symbol] = self.got.get(trade.symbol, 0) + 1

    def error(self, error: KiyotakaError) -> None:
        with self.lock:
            self.errors.append(error)

    def delivered(self) -> int:
        with self.lock:
            return sum(self.got.values())

    def reaches(self, count: int) -> Callable[[Any], bool]:
        """A predicate for ``server.wait_for``: ``count`` trades delivered in all."""
        return lambda _: self.delivered() == count


def test_a_thousand_channels_with_a_bad_symbol_at_ten_requests_a_second() -> None:
    symbols = [f"S{i:04d}USDT" for i in range(1000)]
    good = [s for s in symbols if s != BAD]
    with FakeKiyotakaServer(max_requests_per_second=10.0, max_channels_per_request=50) as server:
        server.reject_symbol(BAD)
        counter = Counter()
        client = KiyotakaClient(**server.client_kwargs(), compression=None, backoff_initial=0.1, backoff_max=0.5)
        client.on_error(counter.error)
        for symbol in symbols:
            client.on_trade(counter.trade, exchange=EX, symbol=symbol)
        try:
            client.start()
            for round_ in (1, 2):
                assert client.wait_ready(20), round_
                assert server.wait_for(lambda s: len(s.subscriptions()) == len(good), timeout=20), round_
                assert {c["symbol"] for c in server.subscriptions()} == set(good)
                server.publish([trade_point(EX, s, price=1.0, amount=1.0) for s in symbols])
                assert server.wait_for(counter.reaches(round_ * len(good)), timeout=10), round_
                with counter.lock:
                    errors = list(counter.errors)
                assert not [e for e in errors if isinstance(e, RateLimited)]
                assert [e.channel["symbol"] for e in errors if isinstance(e, SubscriptionError)  # type: ignore[index]
                        ] == [BAD], errors
                assert server.max_burst(1.0) <= 16  # the server's own limit: 10 a second, a burst of 5
                if round_ == 1:
                    sent = client.stats()["nonbook"].requests_sent
                    assert 21 <= sent <= 60  # auth, 20 packed batches, a bisection of one of them
                    assert server.drop_connections() == 1
                    assert server.wait_for(lambda s: s.connection_count == 2, timeout=10)
        finally:
            client.stop(5)


def test_a_client_faster_than_the_server_is_rate_limited_and_loses_nothing() -> None:
    """Paced at 100 requests/s against a server allowing 10 and 5 channels per request: many 429s,
    each batch sent again after the server's retry_after; none becomes a SubscriptionError."""
    symbols = [f"S{i:04d}USDT" for i in range(200)]
    bad = symbols[77]
    good = [s for s in symbols if s != bad]
    with FakeKiyotakaServer(max_requests_per_second=10.0, max_channels_per_request=5) as server:
        server.reject_symbol(bad)
        counter = Counter()
        client = KiyotakaClient(**server.client_kwargs(), compression=None, max_requests_per_second=100.0,
                                max_channels_per_request=5)
        client.on_error(counter.error)
        for symbol in symbols:
            client.on_trade(counter.trade, exchange=EX, symbol=symbol)
        try:
            client.start()
            assert client.wait_ready(30)
            assert server.wait_for(lambda s: len(s.subscriptions()) == len(good), timeout=5)
            assert server.rejections().get(429, 0) > 0  # the rate limit was hit, and retried
            with counter.lock:
                errors = list(counter.errors)
            assert [e.channel["symbol"] for e in errors if isinstance(e, SubscriptionError)  # type: ignore[index]
                    ] == [bad], errors
            assert all(isinstance(e, (SubscriptionError, RateLimited)) for e in errors), errors
        finally:
            client.stop(5)
